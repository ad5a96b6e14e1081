//! Server-to-server federation (RFC 6120, XEP-0220 dialback, XEP-0368 direct TLS):
//! listeners, outgoing connections, authentication of peers, routing (docs/federation.md).
//!
//! - [`S2s`] is the core's [`RemoteRouter`]: one outgoing stream per (local domain, remote
//!   domain) pair, created on the first stanza, with a bounded queue while it is set up;
//!   stanzas it cannot deliver go back to the core ([`Server::bounce_remote`]).
//! - `outgoing.rs`: DNS (`dns.rs`), TCP with happy eyeballs, STARTTLS or direct TLS, the peer's
//!   certificate (`verify.rs`), then SASL EXTERNAL or dialback.
//! - `incoming.rs`: the receiving side: features, STARTTLS, SASL EXTERNAL, dialback (asking
//!   the originating domain's authoritative server over a connection of its own, and answering
//!   such questions), then stanzas whose `from` and `to` the stream authenticated.

pub mod dns;
mod incoming;
mod outgoing;
mod stream;
pub mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_core::Server;
use canto_core::config::ReadLimit;
use canto_core::remote::RemoteRouter;
use canto_stanza::Condition;
use canto_xml::Element;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::tls::CertStore;

/// A bound s2s listener and whether it speaks direct TLS (XEP-0368).
pub struct S2sListener {
    socket: TcpListener,
    direct_tls: bool,
}

impl S2sListener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether the listener speaks direct TLS.
    pub fn is_direct_tls(&self) -> bool {
        self.direct_tls
    }
}

/// Binds `[s2s] listen` and `direct_tls_listen`.
pub async fn bind(config: &canto_core::Config) -> std::io::Result<Vec<S2sListener>> {
    let mut out = Vec::new();
    for (list, direct_tls) in [
        (&config.s2s.listen, false),
        (&config.s2s.direct_tls_listen, true),
    ] {
        for a in list {
            let socket = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            out.push(S2sListener { socket, direct_tls });
        }
    }
    Ok(out)
}

/// The dialback secret (XEP-0185 §3): 32 random bytes in `data_dir/dialback.secret`, made on
/// first start (mode 0600), so keys stay valid across restarts and are never guessable.
pub fn dialback_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("dialback.secret");
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 32 => return Ok(b),
        Ok(_) | Err(_) => {}
    }
    std::fs::create_dir_all(data_dir)?;
    let mut secret = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&secret)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(secret)
}

/// One outgoing route's queue.
struct Route {
    tx: mpsc::UnboundedSender<Queued>,
    /// Bytes queued and not yet written (`s2s.max_queued_bytes`).
    queued: Arc<AtomicUsize>,
}

/// A stanza waiting for its stream: the element (for a bounce) and its bytes.
pub(crate) struct Queued {
    pub(crate) el: Element,
    pub(crate) bytes: Vec<u8>,
}

/// Federation: the [`RemoteRouter`] and everything s2s connections share.
pub struct S2s {
    pub(crate) server: Arc<Server>,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) resolver: Arc<dyn dns::Resolver>,
    pub(crate) verifier: Arc<verify::Verifier>,
    pub(crate) secret: Vec<u8>,
    routes: Mutex<HashMap<(String, String), Route>>,
    /// Authenticated incoming streams per remote domain (`s2s.max_connections_per_domain`).
    incoming: Mutex<HashMap<String, usize>>,
    /// How each remote domain last authenticated an incoming stream (logs, tests).
    methods: Mutex<HashMap<String, &'static str>>,
    /// Outgoing TCP connections made (tests: XEP-0288 saves them).
    pub(crate) connects: AtomicUsize,
    pub(crate) shutdown: watch::Receiver<bool>,
    me: std::sync::Weak<S2s>,
}

impl S2s {
    /// Federation for `server`: DNS through `resolver`, peers' certificates checked by
    /// `verifier`, dialback keys from `secret`.
    pub fn new(
        server: Arc<Server>,
        certs: Arc<CertStore>,
        resolver: Arc<dyn dns::Resolver>,
        verifier: Arc<verify::Verifier>,
        secret: Vec<u8>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<S2s> {
        Arc::new_cyclic(|me| S2s {
            server,
            certs,
            resolver,
            verifier,
            secret,
            routes: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            methods: Mutex::new(HashMap::new()),
            connects: AtomicUsize::new(0),
            shutdown,
            me: me.clone(),
        })
    }

    /// Starts accepting on `listeners`; `alive` is held by every connection (shutdown waits).
    pub fn start(self: &Arc<Self>, listeners: Vec<S2sListener>, alive: mpsc::Sender<()>) {
        for l in listeners {
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, direct_tls = l.direct_tls, "listening for servers");
            }
            let me = self.clone();
            let alive = alive.clone();
            let mut stop = self.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.socket.accept() => match r {
                            Ok((tcp, peer)) => {
                                let _ = tcp.set_nodelay(true);
                                let me = me.clone();
                                let alive = alive.clone();
                                tokio::spawn(async move {
                                    incoming::serve(me, stream::S2sIo::Plain(tcp), peer.to_string(), l.direct_tls).await;
                                    drop(alive);
                                });
                            }
                            Err(e) => {
                                warn!(error = %e, "s2s accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
            });
        }
    }

    /// Serves one incoming stream over an in-memory pipe (the fuzzer): no TLS, so only what
    /// `s2s.require_encryption = false` allows.
    pub async fn serve_memory(self: &Arc<Self>, io: tokio::io::DuplexStream) {
        incoming::serve(
            self.clone(),
            stream::S2sIo::Memory(io),
            "memory".into(),
            false,
        )
        .await;
    }

    pub(crate) fn config(&self) -> Arc<canto_core::Config> {
        self.server.config()
    }

    pub(crate) fn read_limit(&self) -> ReadLimit {
        let c = self.config();
        let rate = canto_core::config::parse_rate(&c.s2s.rate)
            .ok()
            .flatten()
            .unwrap_or(u64::MAX / 4);
        let burst = canto_core::config::parse_burst(&c.s2s.burst).unwrap_or(Duration::from_secs(2));
        ReadLimit {
            bytes_per_second: rate,
            burst,
        }
    }

    /// Whether `domain` is served here in a way another server may address: a host, a
    /// hosted service, or an external component.
    pub(crate) fn is_local(&self, domain: &str) -> bool {
        self.server.serves(domain) || self.server.modules().service(domain).is_some()
    }

    /// Counts an authenticated incoming stream from `domain`; false when over the limit.
    pub(crate) fn incoming_acquire(&self, domain: &str) -> bool {
        let max = self.config().s2s.max_connections_per_domain;
        let Ok(mut m) = self.incoming.lock() else {
            return false;
        };
        let n = m.entry(domain.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn incoming_release(&self, domain: &str) {
        if let Ok(mut m) = self.incoming.lock()
            && let Some(n) = m.get_mut(domain)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(domain);
            }
        }
    }

    /// Records that `remote` authenticated an incoming stream with `method` (`EXTERNAL`,
    /// `dialback`), for the log, metrics and tests.
    pub(crate) fn authenticated(&self, remote: &str, method: &'static str) {
        metrics::counter!(canto_core::metrics::S2S_AUTHENTICATIONS, "method" => method)
            .increment(1);
        if let Ok(mut m) = self.methods.lock() {
            m.insert(remote.to_string(), method);
        }
    }

    /// Outgoing TCP connections made so far (streams and dialback callbacks).
    pub fn outgoing_connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    /// How `remote` last authenticated a stream to this server, if it did.
    pub fn auth_method(&self, remote: &str) -> Option<&'static str> {
        self.methods.lock().ok()?.get(remote).copied()
    }

    /// Incoming streams authenticated per remote domain, for `canto` status and tests.
    pub fn incoming_counts(&self) -> HashMap<String, usize> {
        self.incoming.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Remote domains with an outgoing route (connected or being set up), per local domain.
    pub fn outgoing_routes(&self) -> Vec<(String, String)> {
        self.routes
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Bounces `q` to its sender with `cond` (RFC 6120 §8.3.3.16, §8.3.3.17).
    pub(crate) fn bounce(&self, q: Queued, cond: Condition) {
        let server = self.server.clone();
        tokio::spawn(async move { server.bounce_remote(q.el, cond).await });
    }

    /// The route for (local, remote) ended: forget it if it is still the one with `queued`.
    pub(crate) fn remove_route(&self, local: &str, remote: &str, queued: &Arc<AtomicUsize>) {
        if let Ok(mut m) = self.routes.lock() {
            let key = (local.to_string(), remote.to_string());
            if m.get(&key).is_some_and(|r| Arc::ptr_eq(&r.queued, queued)) {
                m.remove(&key);
            }
        }
    }

    fn enqueue(&self, local: &str, remote: &str, q: Queued) {
        let max = self.config().s2s.max_queued_bytes;
        let size = q.bytes.len();
        let Ok(mut m) = self.routes.lock() else {
            self.bounce(q, Condition::InternalServerError);
            return;
        };
        let key = (local.to_ascii_lowercase(), remote.to_ascii_lowercase());
        let route = m.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            if let Some(me) = self.me.upgrade() {
                tokio::spawn(outgoing::run(
                    me,
                    key.0.clone(),
                    key.1.clone(),
                    rx,
                    queued.clone(),
                ));
            }
            Route { tx, queued }
        });
        // Issue 14 / RFC 6120 §13.12: a bounded queue per remote domain; beyond it the sender
        // learns at once (resource-constraint, RFC 6120 §8.3.3.18).
        if route.queued.load(Ordering::Relaxed) + size > max {
            drop(m);
            canto_core::metrics::queue_drop(canto_core::metrics::DROP_S2S_QUEUE);
            self.bounce(q, Condition::ResourceConstraint);
            return;
        }
        route.queued.fetch_add(size, Ordering::Relaxed);
        if let Err(e) = route.tx.send(q) {
            // The route's task has ended: a new one is made by the next stanza.
            route.queued.fetch_sub(size, Ordering::Relaxed);
            m.remove(&key);
            drop(m);
            self.bounce(e.0, Condition::RemoteServerNotFound);
        }
    }

    /// XEP-0288: makes an incoming bidirectional stream the route for (local, remote), unless
    /// a route exists already (an outgoing stream, or one being set up, keeps it). Returns the
    /// route's queue for the stream's task to write.
    pub(crate) fn attach_route(
        &self,
        local: &str,
        remote: &str,
    ) -> Option<(mpsc::UnboundedReceiver<Queued>, Arc<AtomicUsize>)> {
        let mut m = self.routes.lock().ok()?;
        let key = (local.to_ascii_lowercase(), remote.to_ascii_lowercase());
        if m.contains_key(&key) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        m.insert(
            key,
            Route {
                tx,
                queued: queued.clone(),
            },
        );
        Some((rx, queued))
    }

    /// Stanzas left in a route whose connection ended after it was established: they go to a
    /// fresh route (one more connection), in order.
    pub(crate) fn requeue(&self, local: &str, remote: &str, left: Vec<Queued>) {
        for q in left {
            self.enqueue(local, remote, q);
        }
    }
}

impl RemoteRouter for S2s {
    fn send(&self, from_domain: &str, to_domain: &str, stanza: Element) {
        let mut bytes = Vec::with_capacity(256);
        stanza.write_to(&mut bytes, canto_stanza::ns::CLIENT);
        self.enqueue(from_domain, to_domain, Queued { el: stanza, bytes });
    }
}
