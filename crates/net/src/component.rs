//! External components (XEP-0114, `jabber:component:accept`): the listeners on
//! `[component] listen` and one task per connection (docs/components.md).
//!
//! A connection: the component's stream header names the component's domain (`to`); the server
//! answers with its header and a fresh stream id; the component proves the shared secret with
//! `<handshake>` (hex SHA-1 of the stream id and the secret, `canto_proto::component`); the
//! server answers an empty `<handshake/>` and the connection becomes the component
//! (`canto_core::component`: one connection per component). Then stanzas flow both ways: the
//! component's through `Server::route_from_component`, which holds it to its own domain, and
//! the router's to it through the component's bounded queue.
//!
//! Limits: the handshake must be done within `c2s.auth_timeout`, under the unauthenticated
//! stanza budget (`c2s.max_stanza_size_unauthenticated`); afterwards a stanza may be
//! `s2s.max_stanza_size` bytes (Prosody's `component_stanza_size_limit` defaults to its s2s
//! limit too) within c2s's depth, element and attribute budgets; the queue towards the
//! component holds `c2s.max_send_queue` stanzas (full: `policy-violation`, as a slow client);
//! a write may take `c2s.send_timeout`. A component is trusted software on a private address:
//! there is no read rate limit and no idle ping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_core::component::{Attachment, Component};
use canto_core::{Closer, Server};
use canto_proto::component::{NS, check_header, response_header, verify_handshake};
use canto_stanza::{StreamCondition, StreamError, ns};
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{Listener, Network};

/// Binds every `[component] listen` address.
pub async fn bind(config: &canto_core::Config) -> std::io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for a in &config.component.listen {
        out.push(Listener::bind(a, false).await?);
    }
    Ok(out)
}

impl Network {
    /// Accepts external component connections on `listeners` (from [`bind`]) until shutdown;
    /// shutdown waits for them as for clients.
    pub fn start_components(&self, listeners: Vec<Listener>) {
        for l in listeners {
            let server = self.server.clone();
            let mut stop = self.shutdown.subscribe();
            let Some(alive) = self.alive_tx.clone() else {
                return;
            };
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, "listening for external components");
            }
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.socket.accept() => match r {
                            Ok((tcp, peer)) => {
                                let _ = tcp.set_nodelay(true);
                                let conn = serve(server.clone(), tcp, peer, stop.clone());
                                let alive = alive.clone();
                                tokio::spawn(async move {
                                    conn.await;
                                    drop(alive);
                                });
                            }
                            Err(e) => {
                                // Out of file descriptors and the like: back off, don't spin.
                                warn!(error = %e, "accept failed (component listener)");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
            });
        }
    }
}

/// How a component connection ended.
enum End {
    /// The peer closed TCP or the socket failed.
    Gone(&'static str),
    /// The component sent `</stream:stream>` (or a stream error of its own).
    PeerClosed,
    /// We end the stream with this error.
    Error(StreamError),
    /// A close was asked for while a write to the component was blocked: the stream is
    /// mid-element, nothing more is written.
    Abandoned(StreamError),
}

fn stream_error(c: StreamCondition) -> End {
    End::Error(StreamError::new(c))
}

/// The most read at once.
const READ_CHUNK: usize = 4096;

/// Stanzas written in one batch before the connection reads again.
const WRITE_BATCH: usize = 64;

/// Output size at which the connection writes before handling more of what it read.
const FLUSH_AT: usize = 64 * 1024;

/// How long a blocked write may still take once the connection is asked to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One component connection over any byte stream.
struct Conn<S> {
    server: Arc<Server>,
    io: S,
    parser: StreamParser,
    buf: Box<[u8; READ_CHUNK]>,
    out: Vec<u8>,
    /// The domain the header named, once it did (for the error header and logs).
    domain: Option<String>,
    header_sent: bool,
    closer: Arc<Closer>,
    shutdown: watch::Receiver<bool>,
}

/// Serves one component connection to its end (generic over the byte stream: TCP, or an
/// in-memory pipe in tests).
pub async fn serve<S>(server: Arc<Server>, io: S, peer: SocketAddr, shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let span = info_span!("component", %peer, domain = tracing::field::Empty);
    async move {
        // Counted in the connections gauge while the task runs (a guard: a panic counts out).
        let _counted = canto_core::metrics::connection("component");
        info!("component connection");
        let config = server.config();
        let deadline = Instant::now() + Duration::from_secs(config.c2s.auth_timeout.max(1));
        let unauth = Limits {
            max_stanza_bytes: config.c2s.max_stanza_size_unauthenticated,
            ..Limits::UNAUTHENTICATED
        };
        drop(config);
        let mut conn = Conn {
            server: server.clone(),
            io,
            parser: StreamParser::new(unauth),
            buf: Box::new([0u8; READ_CHUNK]),
            out: Vec::new(),
            domain: None,
            header_sent: false,
            closer: Closer::new(),
            shutdown,
        };
        let end = match conn.negotiate(deadline, peer).await {
            Ok((attachment, mut rx, pending)) => {
                let end = conn.run(attachment.domain(), &mut rx, pending).await;
                // Detached before the goodbye is written: stanzas for the component meanwhile
                // get the not-connected answer, and so do those it never got.
                attachment.finish(&server, rx).await;
                end
            }
            Err(end) => end,
        };
        conn.finish(end).await;
    }
    .instrument(span)
    .await
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Reads and parses what is there; the events go to `events`.
    async fn read(&mut self, events: &mut Vec<StreamEvent>) -> Result<(), End> {
        let n = match self.io.read(&mut self.buf[..]).await {
            Ok(0) => return Err(End::Gone("connection closed by peer")),
            Ok(n) => n,
            Err(_) => return Err(End::Gone("read error")),
        };
        self.parser
            .feed(&self.buf[..n], events)
            .map_err(|e| End::Error(e.into()))
    }

    /// The stream header and the handshake (XEP-0114 §3), by `deadline`. Returns the hold on
    /// the component, its queue, and the events read after the handshake.
    async fn negotiate(
        &mut self,
        deadline: Instant,
        peer: SocketAddr,
    ) -> Result<(Attachment, mpsc::Receiver<Arc<Element>>, Vec<StreamEvent>), End> {
        let mut events = Vec::new();
        let mut component: Option<(Arc<Component>, String)> = None;
        let mut shutdown = self.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return Err(stream_error(StreamCondition::SystemShutdown));
            }
            tokio::select! {
                r = self.read(&mut events) => r?,
                _ = sleep_until(deadline) => {
                    // An absolute deadline: trickling bytes does not extend it.
                    return Err(End::Error(StreamError::new(StreamCondition::ConnectionTimeout)
                        .with_text("the handshake took too long")));
                }
                Ok(()) = shutdown.changed() => {
                    return Err(stream_error(StreamCondition::SystemShutdown));
                }
            }
            let mut it = std::mem::take(&mut events).into_iter();
            while let Some(ev) = it.next() {
                match ev {
                    StreamEvent::Header(h) => {
                        let domain = check_header(&h).map_err(End::Error)?;
                        tracing::Span::current().record("domain", domain.as_str());
                        self.domain = Some(domain.clone());
                        // XEP-0114 §3: a component this server does not serve is refused
                        // (host-unknown), after a header of ours (RFC 6120 §4.9.1.2).
                        let Some(c) = self.server.component(&domain) else {
                            info!(%domain, "no such component configured");
                            return Err(End::Error(
                                StreamError::new(StreamCondition::HostUnknown)
                                    .with_text("no external component of that name"),
                            ));
                        };
                        let stream_id = format!("{:032x}", rand::random::<u128>());
                        self.out
                            .extend_from_slice(&response_header(&domain, &stream_id));
                        self.header_sent = true;
                        self.flush().await?;
                        component = Some((c, stream_id));
                    }
                    StreamEvent::Close => return Err(End::PeerClosed),
                    StreamEvent::Stanza(el) => {
                        let Some((c, stream_id)) = &component else {
                            return Err(stream_error(StreamCondition::NotWellFormed));
                        };
                        let (attachment, rx) = self.handshake(c, stream_id, &el, peer).await?;
                        return Ok((attachment, rx, it.collect()));
                    }
                }
            }
        }
    }

    /// The component's first element after the headers: it must be a `<handshake/>` proving
    /// the secret (XEP-0114 §3), and no other connection may be the component.
    async fn handshake(
        &mut self,
        component: &Arc<Component>,
        stream_id: &str,
        el: &Element,
        peer: SocketAddr,
    ) -> Result<(Attachment, mpsc::Receiver<Arc<Element>>), End> {
        let config = self.server.config();
        let ok = component
            .secret(&config)
            .is_some_and(|secret| verify_handshake(el, stream_id, secret));
        if !ok {
            // XEP-0114 §3: invalid credentials close the stream with not-authorized. Repeated
            // failures from one address wait longer, as SASL failures do (XEP-0205).
            warn!(component = component.domain(), "component handshake failed");
            let delay = self.server.auth_failed(peer.ip());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            return Err(End::Error(
                StreamError::new(StreamCondition::NotAuthorized)
                    .with_text("the handshake does not match the secret"),
            ));
        }
        let queue = config.c2s.max_send_queue;
        // Authenticated: stanzas now get the component budget (Prosody's component limit
        // defaults to its s2s one).
        self.parser.set_limits(Limits {
            max_stanza_bytes: config.s2s.max_stanza_size,
            max_depth: config.c2s.max_stanza_depth,
            max_elements: config.c2s.max_stanza_elements,
            max_attrs: config.c2s.max_attributes,
        });
        drop(config);
        let Ok((attachment, rx)) = component.attach(queue, self.closer.clone()) else {
            // XEP-0114 §3 names conflict; Prosody turns the new connection away by default.
            warn!(
                component = component.domain(),
                "a second connection for a connected component; refused"
            );
            return Err(End::Error(
                StreamError::new(StreamCondition::Conflict)
                    .with_text("the component is connected already"),
            ));
        };
        // XEP-0114 §3: an empty <handshake/> says the credentials are accepted.
        Element::new("handshake", NS).write_to(&mut self.out, NS);
        self.flush().await?;
        Ok((attachment, rx))
    }

    /// The connected component: its stanzas to the router, the router's to it.
    async fn run(
        &mut self,
        domain: &str,
        rx: &mut mpsc::Receiver<Arc<Element>>,
        pending: Vec<StreamEvent>,
    ) -> End {
        if let Err(end) = self.handle_events(domain, pending, rx).await {
            return end;
        }
        let mut shutdown = self.shutdown.clone();
        let closer = self.closer.clone();
        let mut events = Vec::new();
        loop {
            if *shutdown.borrow() {
                return stream_error(StreamCondition::SystemShutdown);
            }
            tokio::select! {
                r = self.read(&mut events) => {
                    if let Err(end) = r {
                        return end;
                    }
                    if let Err(end) = self.handle_events(domain, std::mem::take(&mut events), rx).await {
                        return end;
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
                Some(el) = rx.recv() => {
                    el.write_to(&mut self.out, ns::CLIENT);
                    // Batch whatever else is queued into the same write.
                    for _ in 1..WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(el) => el.write_to(&mut self.out, ns::CLIENT),
                            Err(_) => break,
                        }
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
                reason = closer.closed() => return End::Error(reason),
                Ok(()) = shutdown.changed() => return stream_error(StreamCondition::SystemShutdown),
            }
        }
    }

    /// Handles what the component sent. After each stanza, what its queue holds (answers to
    /// it, above all) is moved into the output, and written once enough is pending: a component
    /// sending a burst of requests must not fill its own queue with the answers (that is no
    /// slow reader), and one that sends without reading is pushed back on.
    async fn handle_events(
        &mut self,
        domain: &str,
        events: Vec<StreamEvent>,
        rx: &mut mpsc::Receiver<Arc<Element>>,
    ) -> Result<(), End> {
        for ev in events {
            match ev {
                StreamEvent::Stanza(el) if el.is("error", ns::STREAMS) => {
                    // RFC 6120 §4.9: the component ends the stream with an error of its own.
                    let condition = el
                        .children()
                        .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_string());
                    info!(?condition, "the component sent a stream error");
                    return Err(End::PeerClosed);
                }
                StreamEvent::Stanza(el) => {
                    self.server
                        .route_from_component(domain, el)
                        .await
                        .map_err(End::Error)?;
                    for _ in 0..rx.max_capacity() {
                        match rx.try_recv() {
                            Ok(el) => el.write_to(&mut self.out, ns::CLIENT),
                            Err(_) => break,
                        }
                    }
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                StreamEvent::Close => return Err(End::PeerClosed),
                // The parser reports one header per stream; this one has no restarts.
                StreamEvent::Header(_) => return Err(stream_error(StreamCondition::NotWellFormed)),
            }
        }
        Ok(())
    }

    /// Writes what is buffered, within `c2s.send_timeout`; a close request or shutdown while
    /// the component does not read abandons the write (after a short grace).
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = Duration::from_secs(self.server.config().c2s.send_timeout);
        let data = std::mem::take(&mut self.out);
        let io = &mut self.io;
        let closer = self.closer.clone();
        let mut shutdown = self.shutdown.clone();
        let r = {
            let write = timeout(limit, async {
                io.write_all(&data).await?;
                io.flush().await
            });
            tokio::pin!(write);
            tokio::select! {
                biased;
                r = &mut write => r,
                reason = closer.closed() => {
                    return match timeout(CLOSE_GRACE, &mut write).await {
                        Ok(Ok(Ok(()))) => Err(End::Error(reason)),
                        _ => Err(End::Abandoned(reason)),
                    };
                }
                Ok(()) = async { shutdown.wait_for(|down| *down).await.map(|_| ()) } => {
                    return Err(End::Abandoned(StreamError::new(StreamCondition::SystemShutdown)));
                }
            }
        };
        if data.capacity() <= 16 * 1024 {
            self.out = data;
            self.out.clear();
        }
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone("write error")),
            Err(_) => Err(End::Gone("send timeout")),
        }
    }

    /// The goodbye: a stream error (after a header if none was sent, RFC 6120 §4.9.1.2) or
    /// the close tag, then the socket is shut.
    async fn finish(&mut self, end: End) {
        let reason = match &end {
            End::Gone(why) => (*why).to_string(),
            End::PeerClosed => "component closed the stream".into(),
            End::Error(e) | End::Abandoned(e) => e.condition.as_str().to_string(),
        };
        let abandoned = matches!(end, End::Abandoned(_));
        match end {
            End::Gone(_) => {}
            End::Abandoned(_) => self.out.clear(),
            End::PeerClosed => self.out.extend_from_slice(b"</stream:stream>"),
            End::Error(e) => {
                if !self.header_sent {
                    let from = self.domain.clone().unwrap_or_else(|| {
                        let config = self.server.config();
                        config.hosts.first().cloned().unwrap_or_default()
                    });
                    self.out.extend_from_slice(&response_header(&from, "error"));
                }
                debug!(condition = e.condition.as_str(), text = ?e.text, "stream error");
                e.to_element().write_to(&mut self.out, NS);
                self.out.extend_from_slice(b"</stream:stream>");
            }
        }
        if !self.out.is_empty() {
            let data = std::mem::take(&mut self.out);
            let _ = timeout(Duration::from_secs(5), async {
                self.io.write_all(&data).await?;
                self.io.flush().await
            })
            .await;
        }
        if !abandoned {
            let _ = timeout(Duration::from_secs(1), self.io.shutdown()).await;
        }
        info!(reason, "component connection closed");
    }
}
