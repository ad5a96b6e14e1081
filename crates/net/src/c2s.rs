//! One task per client connection. It owns the socket, drives negotiation (STARTTLS, SASL,
//! binding) with the pieces in `canto-proto`, then hands stanzas to the router and writes what
//! the session's queue receives.
//!
//! Session life cycle (session.txt): the connection starts `c2s_unauthed`
//! ([`Phase::Unauthenticated`]), becomes `c2s` after SASL ([`Phase::Authenticated`]) and a
//! connected resource after binding ([`Phase::Bound`]). However the connection ends — client
//! close, network loss, conflict, shutdown, stream error — [`Conn::finish`] runs, and for a bound
//! session that calls `Server::destroy_session`, the only way out of the routing table. A task
//! that never gets there (a panic, a cancelled future) is caught by `Conn`'s `Drop`, which
//! destroys the session all the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_core::sm::{Hibernated, ResumeLookup};
use canto_core::{Closer, Outbound, Server, SessionHandle};
use canto_proto::c2s::{
    BindRequest, STREAM_CLOSE, Stage, bind_result, check_header, features, offered_mechanisms,
    parse_bind, response_header, sasl_failure,
};
use canto_proto::sasl::{
    ChannelBindings, Mechanism, SaslServer, Step, decode_payload, encode_payload,
};
use canto_proto::sm::{self as smp, SmError, SmState};
use canto_stanza::stanza::{error_reply, iq_result};
use canto_stanza::{Condition, FullJid, StanzaError, StreamCondition, StreamError, ns};
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::io::Io;
use crate::limits::{ConnectionCounter, ReadBucket};
use crate::tls::CertStore;

/// Shared by all client connections.
pub struct C2sContext {
    /// The server.
    pub server: Arc<Server>,
    /// Certificates (for channel binding and reload).
    pub certs: Arc<CertStore>,
    /// TLS acceptor built from the certificate store.
    pub acceptor: TlsAcceptor,
    /// Turns true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Open connections per address (`limits.max_connections_per_ip`).
    pub connections: Arc<ConnectionCounter>,
    /// The `<c/>` element (XEP-0115) for stream features, computed once from the modules.
    pub caps: Element,
}

/// XEP-0115 §6.3: the server's entity capabilities from its disco#info identities and features.
fn caps_element(server: &Server) -> Element {
    let m = server.modules();
    let ids: Vec<canto_proto::caps::Identity<'_>> = m
        .identities()
        .iter()
        .map(|i| (i.category, i.kind, "", i.name.as_str()))
        .collect();
    let feats: Vec<&str> = m.features().iter().map(String::as_str).collect();
    // The XEP-0157 contact form is part of disco#info when configured (see module disco).
    let c = &server.config().contact;
    let fields: Vec<(&str, Vec<&str>)> = [
        ("abuse-addresses", &c.abuse),
        ("admin-addresses", &c.admin),
        ("feedback-addresses", &c.feedback),
        ("sales-addresses", &c.sales),
        ("security-addresses", &c.security),
        ("status-addresses", &c.status),
        ("support-addresses", &c.support),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k, v.iter().map(String::as_str).collect()))
    .collect();
    let forms = if fields.is_empty() {
        Vec::new()
    } else {
        vec![("http://jabber.org/network/serverinfo", fields)]
    };
    Element::new("c", "http://jabber.org/protocol/caps")
        .with_attr("hash", "sha-1")
        .with_attr("node", canto_proto::caps::NODE)
        .with_attr(
            "ver",
            canto_proto::caps::ver_with_forms(&ids, &feats, &forms),
        )
}

impl C2sContext {
    /// The context every connection shares. `shutdown` turning true ends every connection with
    /// `<system-shutdown/>` (a dropped sender does not).
    pub fn new(
        server: Arc<Server>,
        certs: Arc<CertStore>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<C2sContext> {
        let acceptor = TlsAcceptor::from(certs.server_config());
        let caps = caps_element(&server);
        Arc::new(C2sContext {
            server,
            certs,
            acceptor,
            shutdown,
            connections: Arc::default(),
            caps,
        })
    }
}

/// Where negotiation stands (session.txt: `type`, `username`, `full_jid`).
enum Phase {
    /// `c2s_unauthed`.
    Unauthenticated {
        sasl: Option<SaslServer>,
        failures: u32,
    },
    /// `c2s`, authenticated as `username`, not bound yet.
    Authenticated { username: String },
    /// A connected resource.
    Bound {
        handle: SessionHandle,
        rx: mpsc::Receiver<Outbound>,
    },
}

/// How a connection ended.
enum End {
    /// The peer closed TCP or the socket failed.
    Gone(&'static str),
    /// The client sent `</stream:stream>`.
    ClientClosed,
    /// We end the stream with an error.
    Error(StreamError),
    /// A close was requested (conflict, slow reader) while a write to the client was blocked:
    /// the stream is mid-stanza, so nothing more is written before the socket is closed.
    Abandoned(StreamError),
}

/// What handling an element asks of the main loop.
enum Flow {
    Continue,
    StartTls,
}

struct Conn {
    ctx: Arc<C2sContext>,
    io: Io,
    peer: SocketAddr,
    parser: StreamParser,
    phase: Phase,
    /// Host of the first stream header; restarts must name the same one (CVE-2018-10847).
    host: Option<String>,
    header_sent: bool,
    starttls_available: bool,
    cb: ChannelBindings,
    out: Vec<u8>,
    closer: Arc<Closer>,
    id: u64,
    stream_id: String,
    /// The `xml:lang` of the client's current stream header (RFC 6120 §4.7.4).
    lang: Option<String>,
    /// The account the SASL exchange in progress names, once known (per-account throttling).
    auth_user: Option<String>,
    /// XEP-0198 stream management, once enabled (or resumed).
    sm: Option<SmConn>,
    /// XEP-0352: `Some` while the client says it is inactive, holding what can wait.
    csi: Option<CsiHold>,
}

/// `urn:xmpp:csi:0`
const CSI_NS: &str = ns::CSI;

/// What an inactive client's connection holds back (XEP-0352).
struct CsiHold {
    held: std::collections::VecDeque<Arc<Element>>,
    /// `[csi] max_held`: one more and everything held is sent (bounds memory).
    max: usize,
}

/// XEP-0352 §5 leaves the choice to the server; like Prosody's mod_csi_simple, what can wait
/// is presence updates (not subscription handling or errors) and messages that carry nothing
/// but chat states (XEP-0085). Messages with a body, their carbons, IQs and anything else go
/// out at once.
fn can_wait(el: &Element) -> bool {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    match el.name() {
        "presence" => matches!(el.attr("type"), None | Some("unavailable")),
        "message" => {
            el.attr("type") != Some("error")
                && el.children().next().is_some()
                && el.children().all(|c| {
                    c.ns() == CHATSTATES
                        // XEP-0280 copies of a chat state alone can wait too.
                        || (c.ns() == "urn:xmpp:carbons:2"
                            && c.children().all(|f| {
                                f.children()
                                    .filter(|m| m.name() == "message")
                                    .all(|m| m.children().all(|x| x.ns() == CHATSTATES))
                            }))
                })
        }
        _ => false,
    }
}

/// A connection's XEP-0198 state.
struct SmConn {
    state: SmState,
    /// The resumption id, when the client asked for resumption.
    resume_id: Option<String>,
    /// An `<r/>` is out and its `<a/>` has not come back yet.
    ack_requested: bool,
    /// `[stream_management] max_unacked` when enabled.
    max_unacked: usize,
    /// `[stream_management] request_ack_after` when enabled.
    request_after: usize,
    /// The client asked for an ack (`<r/>`) and our `<a/>` is not written yet: it goes out
    /// with the next write, and on its own by this time at the latest.
    answer_by: Option<Instant>,
    /// `[stream_management] answer_delay_ms`.
    answer_delay: Duration,
}

impl SmConn {
    fn new(state: SmState, resume_id: Option<String>, config: &canto_core::Config) -> SmConn {
        SmConn {
            state,
            resume_id,
            ack_requested: false,
            // A full offline store delivered at login (XEP-0160) comes on top: it is written
            // before the client can acknowledge anything, and must not lock the account out.
            max_unacked: config.stream_management.max_unacked + config.offline.max_messages,
            request_after: config.stream_management.request_ack_after,
            answer_by: None,
            answer_delay: Duration::from_millis(config.stream_management.answer_delay_ms),
        }
    }
}

/// XEP-0198 §4: `<a h/>` with what we handled so far; a nonza, not counted, written as bytes.
fn write_answer(out: &mut Vec<u8>, sm: &mut SmConn) {
    sm.answer_by = None;
    let h = sm.state.handled();
    out.extend_from_slice(format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>").as_bytes());
}

/// Serializes a stanza from the session's queue, recording it as unacknowledged when stream
/// management is on (XEP-0198 §4). A free function so the queue can stay borrowed.
fn write_stanza(
    out: &mut Vec<u8>,
    sm: &mut Option<SmConn>,
    csi: &mut Option<CsiHold>,
    el: Arc<Element>,
) {
    if let Some(hold) = csi {
        if can_wait(&el) && hold.held.len() < hold.max {
            hold.held.push_back(el);
            return;
        }
        // Something that cannot wait: what was held goes first, in order.
        for h in hold.held.drain(..) {
            write_one(out, sm, h);
        }
    }
    write_one(out, sm, el);
}

fn write_one(out: &mut Vec<u8>, sm: &mut Option<SmConn>, el: Arc<Element>) {
    let start = out.len();
    el.write_to(out, ns::CLIENT);
    if let Some(sm) = sm {
        // The bytes just written are what the unacknowledged queue keeps: serialized once.
        sm.state.sent_serialized(&out[start..]);
    }
}

/// Whether a top-level `jabber:client` element is a stanza XEP-0198 counts.
fn is_stanza(el: &Element) -> bool {
    el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq")
}

/// Serves one accepted TCP connection; `direct_tls` for XEP-0368 listeners. `alive` is held
/// until the connection has fully ended, so shutdown can wait for every connection.
///
/// A connection beyond `limits.max_connections_per_ip` from its address is refused first:
/// on a STARTTLS listener it gets a stream header and a `<policy-violation/>` stream error
/// (RFC 6120 §4.9.3.16, §4.9.1.1: a header precedes the error); on a direct TLS listener the
/// TCP connection is closed without a TLS handshake (refusing must cost less than serving).
pub async fn serve_connection(
    ctx: Arc<C2sContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    alive: mpsc::Sender<()>,
) {
    let config = ctx.server.config();
    let max = if config.limits.connection_limit_exempt(peer.ip()) {
        0
    } else {
        config.limits.max_connections_per_ip
    };
    drop(config);
    let Some(slot) = ctx.connections.acquire(peer.ip(), max) else {
        debug!(%peer, max, "too many connections from this address; refused");
        refuse(&ctx, tcp, direct_tls).await;
        drop(alive);
        return;
    };
    let _ = tcp.set_nodelay(true);
    serve_io(ctx, Io::Plain(tcp), peer, direct_tls, !direct_tls).await;
    drop(slot);
    drop(alive);
}

/// Runs the whole connection task over an in-memory pipe (`tokio::io::duplex`), as if `peer`
/// had connected to a STARTTLS listener that has no TLS: `<starttls/>` is answered with
/// `<failure/>`, so configure `c2s.require_encryption = false` to offer SASL. Everything else —
/// negotiation, limits, routing, session destruction — is the code a TCP client meets. The
/// caller must keep reading its end, or the server's writes block as on a full socket. Not
/// counted against `limits.max_connections_per_ip`. For fuzzing and tests.
pub async fn serve_memory(ctx: Arc<C2sContext>, stream: DuplexStream, peer: SocketAddr) {
    serve_io(ctx, Io::Memory(stream), peer, false, false).await;
}

async fn serve_io(
    ctx: Arc<C2sContext>,
    io: Io,
    peer: SocketAddr,
    direct_tls: bool,
    starttls_available: bool,
) {
    let id = ctx.server.sessions.next_id();
    let span = info_span!("c2s", id, %peer, jid = tracing::field::Empty);
    async move {
        let config = ctx.server.config();
        let mut conn = Conn {
            io,
            peer,
            parser: StreamParser::new(unauth_limits(&config)),
            phase: Phase::Unauthenticated {
                sasl: None,
                failures: 0,
            },
            host: None,
            header_sent: false,
            starttls_available,
            cb: ChannelBindings::default(),
            out: Vec::new(),
            closer: Closer::new(),
            id,
            stream_id: String::new(),
            lang: None,
            auth_user: None,
            sm: None,
            csi: None,
            ctx,
        };
        let deadline = Instant::now() + Duration::from_secs(config.c2s.auth_timeout);
        drop(config);
        let end = if direct_tls {
            match conn.start_tls(deadline).await {
                Ok(()) => conn.run(deadline).await,
                Err(e) => e,
            }
        } else {
            conn.run(deadline).await
        };
        conn.finish(end).await;
    }
    .instrument(span)
    .await
}

/// Refuses a connection over the per-address cap (see [`serve_connection`]).
async fn refuse(ctx: &C2sContext, mut tcp: TcpStream, direct_tls: bool) {
    if direct_tls {
        return;
    }
    let host = ctx
        .server
        .config()
        .hosts
        .first()
        .cloned()
        .unwrap_or_default();
    let mut out = response_header(&host, "error");
    StreamError::new(StreamCondition::PolicyViolation)
        .with_text("too many connections from your address")
        .to_element()
        .write_to(&mut out, ns::CLIENT);
    out.extend_from_slice(STREAM_CLOSE);
    let _ = timeout(Duration::from_secs(1), async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await?;
        // Read (and discard) what the client sends until it closes, briefly: closing a socket
        // with unread data resets it, and the reset can destroy the error before it is read.
        let mut sink = [0u8; 1024];
        let mut budget = 16 * 1024;
        while budget > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => budget -= n.min(budget),
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// A configuration for running connections in memory ([`serve_memory`], [`fuzz_context`]):
/// one host `localhost`, memory storage, no listeners, SASL without TLS, no read rate limit and
/// no authentication back-off (a fuzzer fails logins thousands of times from one address).
#[doc(hidden)]
pub fn memory_config() -> canto_core::Config {
    let mut c = canto_core::Config {
        hosts: vec!["localhost".into()],
        ..canto_core::Config::default()
    };
    c.c2s.listen = Vec::new();
    c.c2s.direct_tls_listen = Vec::new();
    c.c2s.require_encryption = false;
    c.storage.backend = "memory".into();
    c.admin_socket = std::path::PathBuf::new();
    c.limits.c2s.rate = "unlimited".into();
    c.limits.auth_failures_before_delay = u32::MAX;
    c.limits.auth_failures_per_account_before_delay = u32::MAX;
    c
}

/// A [`C2sContext`] for [`serve_memory`] without files or sockets: a [`Server`] on memory
/// storage with `modules` loaded (pass `canto_modules::all()`; this crate cannot name them),
/// and certificates generated in memory. Create accounts through `ctx.server.storage.accounts`.
#[doc(hidden)]
pub fn fuzz_context(
    config: canto_core::Config,
    modules: &[Arc<dyn canto_core::Module>],
) -> Result<Arc<C2sContext>, String> {
    let certs = CertStore::ephemeral(&config.hosts).map_err(|e| e.to_string())?;
    let server = Server::new(config, canto_storage::Storage::memory(), modules)?;
    // The sender is dropped: nothing ever shuts these connections down but their peer.
    let (_, shutdown) = watch::channel(false);
    Ok(C2sContext::new(server, certs, shutdown))
}

fn unauth_limits(config: &canto_core::Config) -> Limits {
    Limits {
        max_stanza_bytes: config.c2s.max_stanza_size_unauthenticated,
        max_depth: Limits::UNAUTHENTICATED
            .max_depth
            .min(config.c2s.max_stanza_depth),
        max_elements: Limits::UNAUTHENTICATED.max_elements,
        max_attrs: Limits::UNAUTHENTICATED
            .max_attrs
            .min(config.c2s.max_attributes),
    }
}

fn auth_limits(config: &canto_core::Config) -> Limits {
    Limits {
        max_stanza_bytes: config.c2s.max_stanza_size,
        max_depth: config.c2s.max_stanza_depth,
        max_elements: config.c2s.max_stanza_elements,
        max_attrs: config.c2s.max_attributes,
    }
}

/// Output size at which a connection writes before handling more of what it read.
const FLUSH_AT: usize = 64 * 1024;

/// How long a blocked write may still take once the session has been told to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn stream_error(c: StreamCondition) -> End {
    End::Error(StreamError::new(c))
}

/// XEP-0198 §4: an ack for more than was sent.
fn handled_count_too_high(h: u32, send_count: u32) -> End {
    End::Error(
        StreamError::new(StreamCondition::UndefinedCondition)
            .with_text("you acknowledged more stanzas than were sent")
            .with_app(smp::handled_count_too_high(h, send_count)),
    )
}

/// How long a resumption waits for the old connection to hand its session over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Conn {
    /// The main loop: read and parse, write queued stanzas, and watch for the close signal,
    /// shutdown and the authentication deadline.
    async fn run(&mut self, deadline: Instant) -> End {
        let mut buf = [0u8; 4096];
        let mut shutdown = self.ctx.shutdown.clone();
        let mut events = Vec::new();
        let config = self.ctx.server.config();
        // limits.c2s: Prosody's mod_limits counts bytes after TLS ("bytes/in" filter); so do we.
        let mut bucket = config
            .limits
            .c2s
            .limit()
            .map(|l| ReadBucket::new(l, Instant::now()));
        let idle_after = Duration::from_secs(config.c2s.idle_timeout.max(1));
        let ping_wait = Duration::from_secs(config.c2s.ping_timeout.max(1));
        drop(config);
        // Idle detection without a timer per read: reads only move `last_read`; the one timer
        // re-arms itself from it when it fires early.
        let mut last_read = Instant::now();
        let mut ping_sent = false;
        let idle = tokio::time::sleep_until(last_read + idle_after);
        tokio::pin!(idle);
        loop {
            if *shutdown.borrow() {
                return stream_error(StreamCondition::SystemShutdown);
            }
            let bound = matches!(self.phase, Phase::Bound { .. });
            // How much the rate limit lets us read now; 0 pauses reading until `resume`.
            let (allowed, resume) = match &mut bucket {
                Some(b) => (b.allowance(Instant::now()).min(buf.len()), b.ready_at()),
                None => (buf.len(), deadline),
            };
            let answer_by = self.sm.as_ref().and_then(|sm| sm.answer_by);
            let rx = match &mut self.phase {
                Phase::Bound { rx, .. } => Some(rx),
                _ => None,
            };
            tokio::select! {
                r = self.io.read(&mut buf[..allowed]), if allowed > 0 => {
                    let n = match r {
                        Ok(0) => return End::Gone("connection closed by peer"),
                        Ok(n) => n,
                        Err(_) => return End::Gone("read error"),
                    };
                    if let Some(b) = &mut bucket {
                        b.consume(n);
                    }
                    // Any byte proves the client alive (a whitespace keepalive, a ping answer).
                    last_read = Instant::now();
                    ping_sent = false;
                    events.clear();
                    if let Err(e) = self.parser.feed(&buf[..n], &mut events) {
                        return End::Error(e.into());
                    }
                    for ev in std::mem::take(&mut events) {
                        match self.handle_event(ev).await {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::StartTls) => {
                                // RFC 6120 §5.4.3.3: whatever the client pipelined after
                                // <starttls/> is discarded with the rest of this read.
                                if let Err(e) = self.start_tls(deadline).await {
                                    return e;
                                }
                                break;
                            }
                            Err(end) => return end,
                        }
                        // The replies this stanza produced went to the session's own queue.
                        // Move them out now: a client sending a burst of requests must not
                        // overflow its queue with its own answers while we keep reading (that
                        // is not a slow reader). Writing when enough is pending pushes back on
                        // a client that sends but does not read.
                        self.drain_queue();
                        if self.out.len() >= FLUSH_AT
                            && let Err(e) = self.flush().await
                        {
                            return e;
                        }
                    }
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                    if self.parser.is_closed() {
                        return End::ClientClosed;
                    }
                }
                Some(out) = async { match rx { Some(rx) => rx.recv().await, None => None } } => {
                    self.write_outbound(out);
                    // Batch whatever else is queued into the same write.
                    if let Phase::Bound { rx, .. } = &mut self.phase {
                        let mut n = 0;
                        while n < 64 {
                            match rx.try_recv() {
                                Ok(Outbound::Stanza(el)) => write_stanza(&mut self.out, &mut self.sm, &mut self.csi, el),
                                Err(_) => break,
                            }
                            n += 1;
                        }
                    }
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                }
                // An ack answer that found no stanzas to go out with (XEP-0198 §4).
                _ = sleep_until(answer_by.unwrap_or(deadline)), if answer_by.is_some() => {
                    if let Some(sm) = &mut self.sm {
                        write_answer(&mut self.out, sm);
                    }
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                }
                reason = self.closer.closed() => return End::Error(reason),
                Ok(()) = shutdown.changed() => return stream_error(StreamCondition::SystemShutdown),
                _ = sleep_until(deadline), if !bound => {
                    // An absolute deadline, not an idle timer: trickling bytes does not extend it.
                    return End::Error(StreamError::new(StreamCondition::ConnectionTimeout)
                        .with_text("authentication took too long"));
                }
                // Over the read rate: nothing is read (the client's bytes wait in the socket)
                // until the bucket has refilled; writes to this client carry on meanwhile.
                _ = sleep_until(resume), if allowed == 0 => {}
                // Not while throttled: then the silence is ours, not the client's.
                () = &mut idle, if bound && allowed > 0 => {
                    let now = Instant::now();
                    if ping_sent {
                        // Nothing at all since the ping (RFC 6120 §4.9.3.4).
                        return End::Error(StreamError::new(StreamCondition::ConnectionTimeout)
                            .with_text("no answer to a ping"));
                    }
                    let due = last_read + idle_after;
                    if now < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    // XEP-0199 §4.2: a server-to-client ping. A whitespace keepalive would only
                    // show the TCP connection open; an answer shows the client alive.
                    self.send_ping();
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                    ping_sent = true;
                    idle.as_mut().reset(now + ping_wait);
                }
            }
        }
    }

    /// Serializes whatever the session's queue holds into the output buffer (at most one
    /// queue's worth).
    fn drain_queue(&mut self) {
        if let Phase::Bound { rx, .. } = &mut self.phase {
            for _ in 0..rx.max_capacity() {
                match rx.try_recv() {
                    Ok(Outbound::Stanza(el)) => {
                        write_stanza(&mut self.out, &mut self.sm, &mut self.csi, el)
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Queues a XEP-0199 ping to the bound client.
    fn send_ping(&mut self) {
        let Phase::Bound { handle, .. } = &self.phase else {
            return;
        };
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", format!("c2s-ping-{:016x}", rand::random::<u64>()))
            .with_attr("from", self.host.clone().unwrap_or_default())
            .with_attr("to", handle.jid().to_string())
            .with_child(Element::new("ping", ns::PING));
        self.send(&ping);
    }

    fn write_outbound(&mut self, out: Outbound) {
        match out {
            Outbound::Stanza(el) => write_stanza(&mut self.out, &mut self.sm, &mut self.csi, el),
        }
    }

    fn send(&mut self, el: &Element) {
        let start = self.out.len();
        el.write_to(&mut self.out, ns::CLIENT);
        // Stanzas the connection itself sends (pings, answers to the session request) count
        // too (XEP-0198 §4).
        if let Some(sm) = &mut self.sm
            && is_stanza(el)
        {
            sm.state.sent_serialized(&self.out[start..]);
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if let Phase::Bound { handle, rx } = &self.phase
            && rx.is_empty()
        {
            handle.queue_drained();
        }
        if self.out.is_empty() {
            return Ok(());
        }
        if let Some(sm) = &mut self.sm {
            // A pending answer to the client's <r/> rides along with what is written anyway.
            if sm.answer_by.is_some() {
                write_answer(&mut self.out, sm);
            }
            let pending = sm.state.pending();
            if pending > sm.max_unacked {
                // A client that does not acknowledge would make us hold its stanzas forever.
                return Err(End::Error(
                    StreamError::new(StreamCondition::PolicyViolation)
                        .with_text("too many unacknowledged stanzas"),
                ));
            }
            // XEP-0198 §4: ask for an ack once enough is unacknowledged — at most one <r/> per
            // write, and none while one is outstanding, so acks cost little throughput.
            if pending >= sm.request_after && !sm.ack_requested {
                sm.ack_requested = true;
                // Nonzas written as bytes: no element to build on this hot path.
                self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
            }
        }
        let limit = Duration::from_secs(self.ctx.server.config().c2s.send_timeout);
        let data = std::mem::take(&mut self.out);
        let io = &mut self.io;
        let closer = &self.closer;
        let mut shutdown = self.ctx.shutdown.clone();
        // A client that does not read blocks this write. Meanwhile its queue fills and the
        // session is asked to close (slow reader, conflict) or the server shuts down: those must
        // not wait for send_timeout.
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
                    // A client that is merely slow gets the stanza in flight finished and then a
                    // proper stream error; one that does not read at all is abandoned mid-write.
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
        // Keep the buffer's allocation only while it is small.
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

    /// Upgrades the transport to TLS (STARTTLS after `<proceed/>`, or direct TLS at once).
    async fn start_tls(&mut self, deadline: Instant) -> Result<(), End> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Closed) else {
            return Err(End::Gone("TLS on a non-TCP transport"));
        };
        let tls = match tokio::time::timeout_at(deadline, self.ctx.acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return Err(End::Gone("TLS handshake failed"));
            }
            Err(_) => return Err(End::Gone("TLS handshake timed out")),
        };
        let (_, conn) = tls.get_ref();
        // RFC 9266: tls-exporter is defined for TLS 1.3 (and 1.2 with EMS, which we skip).
        let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok()
                .map(|k| k.to_vec())
        } else {
            None
        };
        let sni = conn.server_name().map(str::to_string);
        self.cb = ChannelBindings {
            tls_exporter: exporter,
            tls_server_end_point: self.ctx.certs.end_point_hash(sni.as_deref()),
        };
        self.io = Io::Tls(Box::new(tls));
        self.starttls_available = false;
        // RFC 6120 §5.4.3.3: a fresh stream follows; no header has been sent on it yet.
        self.parser.reset();
        self.header_sent = false;
        Ok(())
    }

    async fn handle_event(&mut self, ev: StreamEvent) -> Result<Flow, End> {
        match ev {
            StreamEvent::Header(h) => {
                self.open_stream(&h)?;
                Ok(Flow::Continue)
            }
            StreamEvent::Close => Err(End::ClientClosed),
            StreamEvent::Stanza(el) => self.handle_element(el).await,
        }
    }

    /// A stream header arrived: check it, answer with ours and the features of this stage.
    fn open_stream(&mut self, h: &Element) -> Result<(), End> {
        let server = self.ctx.server.clone();
        let header = check_header(h, |d| server.serves(d)).map_err(End::Error)?;
        if let Some(prev) = &self.host {
            // CVE-2018-10847: a restart must not switch hosts after authentication.
            if *prev != header.host {
                return Err(stream_error(StreamCondition::NotAuthorized));
            }
        }
        self.host = Some(header.host.clone());
        self.lang = header.lang;
        self.stream_id = format!("{:016x}", rand::random::<u64>());
        self.out
            .extend_from_slice(&response_header(&header.host, &self.stream_id));
        self.header_sent = true;
        let config = self.ctx.server.config();
        let stage = match self.phase {
            Phase::Unauthenticated { .. } => Stage::Unauthenticated {
                tls: self.io.is_tls(),
                starttls_available: self.starttls_available,
                require_encryption: config.c2s.require_encryption,
            },
            Phase::Authenticated { .. } | Phase::Bound { .. } => Stage::Authenticated,
        };
        let mut f = features(stage, &self.cb);
        if matches!(stage, Stage::Authenticated) {
            // XEP-0198 §2 and XEP-0352 §2: offered after authentication, by their modules.
            for sf in self.ctx.server.modules().stream_features() {
                f.push_child(sf.clone());
            }
        }
        if matches!(self.phase, Phase::Unauthenticated { .. }) && self.registration_open() {
            // XEP-0077 §4: registration is offered as a stream feature.
            f.push_child(Element::new("register", canto_proto::register::NS_FEATURE));
        }
        // XEP-0115 §6.3: the server's capabilities, so clients can cache its disco#info.
        f.push_child(self.ctx.caps.clone());
        self.send(&f);
        Ok(())
    }

    async fn handle_element(&mut self, el: Element) -> Result<Flow, End> {
        if !self.header_sent {
            return Err(stream_error(StreamCondition::NotWellFormed));
        }
        // Only when offered (modules `smacks` and `csi`); otherwise these are unknown
        // top-level elements like any other.
        let offered = |ns: &str| self.ctx.server.modules().offers_stream_feature(ns);
        if el.ns() == smp::NS
            && !matches!(self.phase, Phase::Unauthenticated { .. })
            && offered(smp::NS)
        {
            return self.stream_management(el).await.map(|()| Flow::Continue);
        }
        if el.ns() == CSI_NS && matches!(self.phase, Phase::Bound { .. }) && offered(CSI_NS) {
            // XEP-0352 §3 (nonzas: not counted by XEP-0198).
            match el.name() {
                "inactive" => {
                    if self.csi.is_none() {
                        self.csi = Some(CsiHold {
                            held: Default::default(),
                            max: self.ctx.server.config().csi.max_held,
                        });
                    }
                }
                "active" => {
                    // Everything held, in order, in this write.
                    self.drain_queue();
                    if let Some(hold) = self.csi.take() {
                        for h in hold.held {
                            write_one(&mut self.out, &mut self.sm, h);
                        }
                    }
                }
                _ => return Err(stream_error(StreamCondition::UnsupportedStanzaType)),
            }
            return Ok(Flow::Continue);
        }
        match &self.phase {
            Phase::Unauthenticated { .. } => self.unauthenticated(el).await,
            Phase::Authenticated { .. } => self.authenticated(el).map(|()| Flow::Continue),
            Phase::Bound { .. } => self.bound(el).await.map(|()| Flow::Continue),
        }
    }

    /// Before authentication only STARTTLS and SASL are allowed: unauthenticated sessions
    /// route nothing.
    async fn unauthenticated(&mut self, el: Element) -> Result<Flow, End> {
        match (el.ns(), el.name()) {
            (ns::TLS, "starttls") => {
                if self.io.is_tls() || !self.starttls_available {
                    // RFC 6120 §5.4.2.2: failure, then close.
                    self.send(&Element::new("failure", ns::TLS));
                    self.out.extend_from_slice(STREAM_CLOSE);
                    return Err(End::Gone("STARTTLS refused"));
                }
                self.send(&Element::new("proceed", ns::TLS));
                self.flush().await?;
                Ok(Flow::StartTls)
            }
            (ns::SASL, "auth") => {
                self.sasl_auth(&el).await?;
                Ok(Flow::Continue)
            }
            (ns::SASL, "response") => {
                let step = match &mut self.phase {
                    Phase::Unauthenticated { sasl: Some(s), .. } => {
                        match decode_payload(&el.text()) {
                            Ok(data) => s.respond(&data),
                            Err(f) => Step::Failure(f),
                        }
                    }
                    // Prosody: "Out of order SASL element".
                    _ => Step::Failure(canto_proto::sasl::SaslFailure::NotAuthorized),
                };
                self.sasl_step(step).await?;
                Ok(Flow::Continue)
            }
            (ns::SASL, "abort") => {
                // RFC 6120 §6.4.4
                if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
                    *sasl = None;
                }
                self.auth_user = None;
                self.send(&sasl_failure("aborted"));
                Ok(Flow::Continue)
            }
            (ns::CLIENT, "iq")
                if self.registration_open() && el.has_child("query", canto_proto::register::NS) =>
            {
                self.register(&el).await;
                Ok(Flow::Continue)
            }
            (ns::CLIENT, "message" | "presence" | "iq") => {
                Err(stream_error(StreamCondition::NotAuthorized))
            }
            _ => Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// XEP-0077 is enabled (module `register`) and the stream may carry credentials: on TLS,
    /// or in plaintext only where the configuration allows SASL in plaintext too.
    fn registration_open(&self) -> bool {
        self.ctx.server.modules().loaded().contains(&"register")
            && (self.io.is_tls() || !self.ctx.server.config().c2s.require_encryption)
    }

    /// XEP-0077 §3.1: registration before authentication (get: the form; set: the account).
    async fn register(&mut self, el: &Element) {
        use canto_proto::register::{RegisterSet, form, parse_set};
        let Some(query) = el.get_child("query", canto_proto::register::NS) else {
            return;
        };
        let reply = match canto_stanza::IqType::of(el) {
            Some(canto_stanza::IqType::Get) => iq_result(el, Some(form())),
            Some(canto_stanza::IqType::Set) => match parse_set(query) {
                Ok(RegisterSet::Credentials { username, password }) => {
                    let host = self.host.clone().unwrap_or_default();
                    match self
                        .ctx
                        .server
                        .register_account(&host, &username, &password, self.peer.ip())
                        .await
                    {
                        Ok(jid) => {
                            info!(%jid, "account registered in band");
                            iq_result(el, None)
                        }
                        Err(e) => error_reply(el, &e),
                    }
                }
                // §3.2: cancelling needs an account: not before authentication.
                Ok(RegisterSet::Remove) => {
                    error_reply(el, &StanzaError::new(Condition::NotAuthorized))
                }
                Err(e) => error_reply(el, &e),
            },
            _ => error_reply(el, &StanzaError::new(Condition::BadRequest)),
        };
        self.send(&reply);
    }

    async fn sasl_auth(&mut self, el: &Element) -> Result<(), End> {
        let config = self.ctx.server.config();
        let tls = self.io.is_tls();
        let offered = offered_mechanisms(tls, config.c2s.require_encryption, &self.cb);
        let mech = el.attr("mechanism").and_then(Mechanism::from_name);
        let Some(mech) = mech.filter(|m| offered.contains(m)) else {
            // RFC 6120 §6.4.5 and §6.5.4; Prosody says encryption-required before TLS.
            let cond = if !tls && config.c2s.require_encryption {
                "encryption-required"
            } else {
                "invalid-mechanism"
            };
            self.send(&sasl_failure(cond));
            return Ok(());
        };
        // RFC 6120 §6.4.2: no text is no initial response; "=" is an empty one.
        let initial = if el.nodes().is_empty() {
            None
        } else {
            match decode_payload(&el.text()) {
                Ok(d) => Some(d),
                Err(f) => return self.sasl_step(Step::Failure(f)).await,
            }
        };
        let host = self.host.clone().unwrap_or_default();
        self.auth_user = None;
        let plus_offered = offered.iter().any(|m| m.is_plus());
        let (s, step) = SaslServer::start(
            mech,
            &host,
            self.cb.clone(),
            plus_offered,
            initial.as_deref(),
        );
        if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
            *sasl = Some(s);
        }
        self.sasl_step(step).await
    }

    /// Carries a SASL step out: look up credentials, send a challenge, succeed or fail.
    async fn sasl_step(&mut self, mut step: Step) -> Result<(), End> {
        loop {
            match step {
                Step::NeedCredentials { username } => {
                    let host = self.host.clone().unwrap_or_default();
                    self.auth_user = Some(format!("{username}@{host}"));
                    let creds = match self
                        .ctx
                        .server
                        .storage
                        .accounts
                        .credentials(&host, &username)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "credential lookup failed");
                            step =
                                Step::Failure(canto_proto::sasl::SaslFailure::TemporaryAuthFailure);
                            continue;
                        }
                    };
                    let Phase::Unauthenticated { sasl, .. } = &mut self.phase else {
                        return Err(stream_error(StreamCondition::InternalServerError));
                    };
                    let Some(mut s) = sasl.take() else {
                        return Err(stream_error(StreamCondition::InternalServerError));
                    };
                    // PLAIN pays a key derivation here: keep it off the reactor threads.
                    let (s, next) = if s.mechanism() == Mechanism::Plain {
                        tokio::task::spawn_blocking(move || {
                            let next = s.credentials(creds.as_ref());
                            (s, next)
                        })
                        .await
                        .map_err(|_| stream_error(StreamCondition::InternalServerError))?
                    } else {
                        let next = s.credentials(creds.as_ref());
                        (s, next)
                    };
                    if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
                        *sasl = Some(s);
                    }
                    step = next;
                }
                Step::Challenge(data) => {
                    self.send(
                        &Element::new("challenge", ns::SASL).with_text(encode_payload(&data)),
                    );
                    return Ok(());
                }
                Step::Success {
                    username,
                    additional_data,
                } => {
                    let mut success = Element::new("success", ns::SASL);
                    if let Some(d) = additional_data {
                        success.push_text(encode_payload(&d));
                    }
                    self.send(&success);
                    info!(username, "authenticated");
                    self.phase = Phase::Authenticated { username };
                    // RFC 6120 §6.4.6: the client restarts the stream.
                    let config = self.ctx.server.config();
                    self.parser = StreamParser::new(auth_limits(&config));
                    self.header_sent = false;
                    return Ok(());
                }
                Step::Failure(f) => {
                    // Per address and, when the attempt named one, per account.
                    let account = self.auth_user.take();
                    let delay = self
                        .ctx
                        .server
                        .auth_failed_for(self.peer.ip(), account.as_deref());
                    if !delay.is_zero() {
                        self.flush().await?;
                        tokio::time::sleep(delay).await;
                    }
                    self.send(&sasl_failure(f.condition()));
                    let retries = self.ctx.server.config().limits.auth_retries;
                    if let Phase::Unauthenticated { sasl, failures } = &mut self.phase {
                        *sasl = None;
                        *failures += 1;
                        // RFC 6120 §6.4.5: a limited number of retries, then the connection ends.
                        if *failures >= retries {
                            return Err(End::Error(
                                StreamError::new(StreamCondition::PolicyViolation)
                                    .with_text("too many failed authentication attempts"),
                            ));
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Authenticated, not bound: resource binding (RFC 6120 §7) and the legacy session request.
    fn authenticated(&mut self, el: Element) -> Result<(), End> {
        if !el.is("iq", ns::CLIENT) {
            return Err(match (el.ns(), el.name()) {
                (ns::CLIENT, _) => stream_error(StreamCondition::NotAuthorized),
                (ns::TLS, _) | (ns::SASL, _) => stream_error(StreamCondition::PolicyViolation),
                _ => stream_error(StreamCondition::UnsupportedStanzaType),
            });
        }
        if el.has_child("session", ns::SESSION) {
            // RFC 3921 §3: accepted as a no-op for old clients.
            self.send(&iq_result(&el, None));
            return Ok(());
        }
        let req = match parse_bind(&el) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(stream_error(StreamCondition::NotAuthorized)),
            Err(e) => {
                self.send(&error_reply(&el, &e));
                return Ok(());
            }
        };
        let Phase::Authenticated { username } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let host = self.host.clone().unwrap_or_default();
        let resource = match req {
            BindRequest::Resource(r) => r,
            // RFC 6120 §7.6: a server-generated resource, unique and unguessable.
            BindRequest::Generate => format!("canto-{:016x}", rand::random::<u64>()),
        };
        let jid = match FullJid::new(&format!("{username}@{host}/{resource}")) {
            Ok(j) => j,
            Err(_) => {
                self.send(&error_reply(&el, &StanzaError::new(Condition::BadRequest)));
                return Ok(());
            }
        };
        let config = self.ctx.server.config();
        // Room for a full offline store on top of the live queue (XEP-0160 delivery at
        // initial presence must not look like a slow reader).
        let live = config.c2s.max_send_queue;
        let (tx, rx) = mpsc::channel(live + config.offline.max_messages);
        let bound = match self.ctx.server.sessions.bind(
            self.id,
            jid.clone(),
            (tx, live),
            self.closer.clone(),
            config.c2s.max_sessions_per_account,
        ) {
            Ok(b) => b,
            Err(e) => {
                self.send(&error_reply(&el, &e));
                return Ok(());
            }
        };
        if let Some(old) = bound.replaced {
            // RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>. It is
            // destroyed here, before this connection handles anything else: its unavailable
            // presence must reach the account's other resources before whatever the new session
            // sends (initial presence may be pipelined right after the bind). The old task's own
            // destroy then finds nothing left to do.
            self.ctx
                .server
                .destroy_session(&old, "replaced by a new connection");
            old.close(
                StreamError::new(StreamCondition::Conflict)
                    .with_text("replaced by a new connection"),
            );
        }
        tracing::Span::current().record("jid", tracing::field::display(&jid));
        info!("resource bound");
        self.send(&iq_result(&el, Some(bind_result(&jid.to_string()))));
        self.phase = Phase::Bound {
            handle: bound.handle,
            rx,
        };
        Ok(())
    }

    /// A connected resource: everything in `jabber:client` goes to the router.
    async fn bound(&mut self, mut el: Element) -> Result<(), End> {
        let Phase::Bound { handle, .. } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let handle = handle.clone();
        #[cfg(test)]
        if el.is("panic", tests::PANIC_NS) {
            panic!("a handler panicked (test)");
        }
        if let Some(sm) = &mut self.sm
            && is_stanza(&el)
        {
            // XEP-0198 §4: every stanza received counts, whatever becomes of it.
            sm.state.received();
        }
        if el.is("iq", ns::CLIENT) {
            if el.has_child("session", ns::SESSION) && el.attr("to").is_none() {
                // RFC 3921 §3 compatibility.
                self.send(&iq_result(&el, None));
                return Ok(());
            }
            if el.has_child("bind", ns::BIND) {
                // RFC 6120 §7.7.2.3: one resource per stream.
                self.send(&error_reply(&el, &StanzaError::new(Condition::NotAllowed)));
                return Ok(());
            }
        }
        match (el.ns(), el.name()) {
            (ns::CLIENT, _) => {
                // RFC 6120 §4.7.4: a stanza without xml:lang is in the stream's default
                // language, and the server adds it when routing one (and so archives it).
                if let Some(lang) = &self.lang
                    && is_stanza(&el)
                    && el.attr("xml:lang").is_none()
                {
                    el.set_attr("xml:lang", lang.as_str());
                }
                self.ctx
                    .server
                    .route_from_client(&handle, el)
                    .await
                    .map_err(End::Error)
            }
            (ns::TLS, _) | (ns::SASL, _) => Err(stream_error(StreamCondition::PolicyViolation)),
            _ => Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// Ends the connection: the closing bytes, then the session's destruction.
    async fn finish(&mut self, end: End) {
        let reason = match &end {
            End::Gone(why) => *why,
            End::ClientClosed => "client closed the stream",
            End::Error(e) | End::Abandoned(e) => e.condition.as_str(),
        };
        // XEP-0198 §5: only a lost connection (or one that stopped answering) hibernates.
        let lost = matches!(&end, End::Gone(_))
            || matches!(&end, End::Error(e) if e.condition == StreamCondition::ConnectionTimeout);
        // Nothing can be written after an abandoned write, not even TLS close_notify.
        let abandoned = matches!(end, End::Abandoned(_));
        match end {
            End::Gone(_) => {}
            End::Abandoned(e) => {
                debug!(condition = e.condition.as_str(), text = ?e.text, "stream abandoned mid-write");
                self.out.clear();
            }
            End::ClientClosed => self.out.extend_from_slice(STREAM_CLOSE),
            End::Error(e) => {
                if !self.header_sent {
                    // RFC 6120 §4.9.1.1: a header before the error.
                    let host = self.host.clone().unwrap_or_else(|| {
                        self.ctx
                            .server
                            .config()
                            .hosts
                            .first()
                            .cloned()
                            .unwrap_or_default()
                    });
                    self.out.extend_from_slice(&response_header(&host, "error"));
                }
                debug!(condition = e.condition.as_str(), text = ?e.text, "stream error");
                e.to_element().write_to(&mut self.out, ns::CLIENT);
                self.out.extend_from_slice(STREAM_CLOSE);
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
        let phase = std::mem::replace(
            &mut self.phase,
            Phase::Unauthenticated {
                sasl: None,
                failures: 0,
            },
        );
        let Phase::Bound { handle, rx } = phase else {
            debug!(reason, "connection closed before binding");
            return;
        };
        let server = self.ctx.server.clone();
        // XEP-0352: what an inactive client had held back counts as sent and unacknowledged,
        // so a resumption replays it (and the counters stay right).
        if let (Some(sm), Some(hold)) = (&mut self.sm, self.csi.take()) {
            for el in hold.held {
                sm.state.sent(el);
            }
        }
        match self.sm.take() {
            // XEP-0198 §5: a resumable session whose connection was lost (not closed by the
            // client, not ended by us) waits for its client; so does one a new connection is
            // taking over.
            Some(SmConn {
                state,
                resume_id: Some(id),
                ..
            }) if lost || server.sm.takeover_requested(&id) => {
                server.hibernate(
                    &id,
                    Hibernated {
                        handle,
                        rx,
                        sm: state,
                        closer: self.closer.clone(),
                    },
                );
            }
            Some(SmConn {
                state, resume_id, ..
            }) => {
                if let Some(id) = resume_id {
                    server.sm_ended(&id, &handle, &state);
                }
                server.destroy_session(&handle, reason);
                server.reroute_unacked(&handle, state, rx).await;
            }
            None => server.destroy_session(&handle, reason),
        }
    }

    /// XEP-0198 elements after authentication. Which ones each phase accepts is decided here.
    async fn stream_management(&mut self, el: Element) -> Result<(), End> {
        let bound = matches!(self.phase, Phase::Bound { .. });
        match el.name() {
            "enable" => {
                // XEP-0198 §3: only after binding, and once.
                let Phase::Bound { handle, .. } = &self.phase else {
                    self.send(&smp::failed("unexpected-request", None));
                    return Ok(());
                };
                if self.sm.is_some() {
                    self.send(&smp::failed("unexpected-request", None));
                    return Ok(());
                }
                // `resume_timeout = 0`: resumption is not offered (XEP-0198 §3 lets the
                // server decline it; the session is then enabled without an id).
                let max = self.ctx.server.resume_timeout().as_secs();
                let resume_id = (smp::wants_resume(&el) && max > 0).then(|| {
                    self.ctx
                        .server
                        .sm
                        .register(handle.jid().to_bare(), self.closer.clone())
                });
                self.send(&smp::enabled(resume_id.as_deref().map(|id| (id, max))));
                let config = self.ctx.server.config();
                self.sm = Some(SmConn::new(SmState::new(), resume_id, &config));
                Ok(())
            }
            "r" if bound => {
                // XEP-0198 §4: answer with what we handled — with the next stanzas written, or
                // after `answer_delay_ms` at the latest: an answer of its own costs a write (a
                // packet, a wakeup on both sides) per <r/>. The h then counts what we handled
                // by the time it is written, which the client's <r/> asked for too.
                let Some(sm) = &mut self.sm else {
                    return Err(stream_error(StreamCondition::UnsupportedStanzaType));
                };
                if sm.answer_delay.is_zero() {
                    write_answer(&mut self.out, sm);
                } else if sm.answer_by.is_none() {
                    sm.answer_by = Some(Instant::now() + sm.answer_delay);
                }
                Ok(())
            }
            "a" if bound => {
                let Some(sm) = &mut self.sm else {
                    return Err(stream_error(StreamCondition::UnsupportedStanzaType));
                };
                // An <a/> without a usable h acknowledges nothing (Prosody ignores it too).
                let Some(h) = smp::parse_h(&el) else {
                    return Ok(());
                };
                sm.ack_requested = false;
                match sm.state.acknowledge(h) {
                    Ok(()) => Ok(()),
                    Err(SmError::HandledCountTooHigh { h, send_count }) => {
                        Err(handled_count_too_high(h, send_count))
                    }
                }
            }
            "resume" if !bound => self.resume(&el).await,
            "resume" => {
                self.send(&smp::failed("unexpected-request", None));
                Ok(())
            }
            _ => Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// XEP-0198 §5: `<resume previd h/>` instead of binding.
    async fn resume(&mut self, el: &Element) -> Result<(), End> {
        let Phase::Authenticated { username } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let host = self.host.clone().unwrap_or_default();
        let bare = canto_stanza::BareJid::new(&format!("{username}@{host}"));
        let (Ok(bare), Some(previd), Some(h)) = (bare, el.attr("previd"), smp::parse_h(el)) else {
            self.send(&smp::failed("item-not-found", None));
            return Ok(());
        };
        let previd = previd.to_string();
        let server = self.ctx.server.clone();
        // If the old connection is still there it is told to close; wait for it to hand over.
        let give_up = Instant::now() + TAKEOVER_WAIT;
        let state = loop {
            match server.sm.begin_resume(&previd, &bare) {
                ResumeLookup::Ready(s) => break s,
                ResumeLookup::Wait if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // XEP-0198 §5: unknown or expired; `h` tells the client which of its stanzas
                // the ended session handled.
                ResumeLookup::NotFound { h } => {
                    self.send(&smp::failed("item-not-found", h));
                    return Ok(());
                }
                ResumeLookup::Wait => {
                    self.send(&smp::failed("item-not-found", None));
                    return Ok(());
                }
            }
        };
        let Hibernated {
            handle,
            rx,
            sm,
            closer,
        } = *state;
        // A bind of the same full JID may have replaced the hibernating session meanwhile:
        // then it is over.
        if server.sessions.get(handle.jid()).map(|s| s.id()) != Some(handle.id()) {
            let h = sm.handled();
            server.sm_ended(&previd, &handle, &sm);
            server.destroy_session(&handle, "replaced while hibernating");
            server.reroute_unacked(&handle, sm, rx).await;
            self.send(&smp::failed("item-not-found", Some(h)));
            return Ok(());
        }
        // The session's closer goes on serving this connection; a close the old connection
        // was asked for is not this one's.
        closer.clear();
        self.closer = closer;
        server.sm.revive(&previd, bare, self.closer.clone());
        tracing::Span::current().record("jid", tracing::field::display(handle.jid()));
        self.phase = Phase::Bound { handle, rx };
        let mut sm = SmConn::new(sm, Some(previd.clone()), &server.config());
        let acked = sm.state.acknowledge(h);
        let handled = sm.state.handled();
        let replay = sm.state.replay();
        self.sm = Some(sm);
        if let Err(SmError::HandledCountTooHigh { h, send_count }) = acked {
            return Err(handled_count_too_high(h, send_count));
        }
        info!(replayed = replay.len(), "session resumed");
        self.send(&smp::resumed(&previd, handled));
        // What the client did not acknowledge, again, in order, keeping its numbers; what was
        // queued meanwhile follows through the session's queue.
        for el in replay {
            el.write_to(&mut self.out, ns::CLIENT);
        }
        Ok(())
    }
}

/// The teardown guard: a connection task that never reached the end of [`Conn::finish`] — it
/// panicked (a module's handler, say) or was dropped mid-await — still ends its session here,
/// so no ghost stays in the routing table, available to its contacts forever. `finish` takes
/// the bound phase out first, so after it this finds nothing to do. Everything here is
/// synchronous (safe while unwinding); what needs storage (re-routing what the client never
/// acknowledged, XEP-0198 §5) goes to a task of its own.
impl Drop for Conn {
    fn drop(&mut self) {
        let phase = std::mem::replace(
            &mut self.phase,
            Phase::Unauthenticated {
                sasl: None,
                failures: 0,
            },
        );
        let Phase::Bound { handle, rx } = phase else {
            // Not bound: nothing is in the routing table. An `<enable/>` needs a bound session,
            // so no XEP-0198 registry entry either. (The per-address connection slot and the
            // shutdown `alive` sender are dropped with the task's other locals.)
            return;
        };
        // destroy_session and the SM registry spawn tasks: only inside a runtime (a runtime
        // being dropped drops its tasks without one).
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let reason = if std::thread::panicking() {
            "connection task panicked"
        } else {
            "connection task ended early"
        };
        warn!(jid = %handle.jid(), reason, "session torn down by the guard");
        let server = self.ctx.server.clone();
        // As in `finish`: what CSI held back counts as sent and unacknowledged.
        if let (Some(sm), Some(hold)) = (&mut self.sm, self.csi.take()) {
            for el in hold.held {
                sm.state.sent(el);
            }
        }
        match self.sm.take() {
            Some(SmConn {
                state, resume_id, ..
            }) => {
                if let Some(id) = resume_id {
                    server.sm_ended(&id, &handle, &state);
                }
                server.destroy_session(&handle, reason);
                rt.spawn(async move { server.reroute_unacked(&handle, state, rx).await });
            }
            None => server.destroy_session(&handle, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canto_proto::sasl::Credentials;
    use tokio::io::{ReadHalf, WriteHalf};

    /// A top-level element that makes the connection task panic where a handler would run
    /// (tests only).
    pub(super) const PANIC_NS: &str = "urn:canto:test:panic";

    /// A raw client over the in-memory transport.
    struct Client {
        rd: ReadHalf<DuplexStream>,
        wr: WriteHalf<DuplexStream>,
        seen: String,
        task: tokio::task::JoinHandle<()>,
    }

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    impl Client {
        fn connect(ctx: &Arc<C2sContext>) -> Client {
            let (client, server_end) = tokio::io::duplex(64 * 1024);
            let peer = "192.0.2.1:5222".parse().unwrap_or_else(|e| panic!("{e}"));
            let task = tokio::spawn(serve_memory(ctx.clone(), server_end, peer));
            let (rd, wr) = tokio::io::split(client);
            Client {
                rd,
                wr,
                seen: String::new(),
                task,
            }
        }

        async fn send(&mut self, s: &str) {
            self.wr
                .write_all(s.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("write: {e}"));
        }

        /// Reads until `pat` has arrived; returns everything up to its end and forgets it.
        async fn until(&mut self, pat: &str) -> String {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(i) = self.seen.find(pat) {
                    let rest = self.seen.split_off(i + pat.len());
                    return std::mem::replace(&mut self.seen, rest);
                }
                let n = timeout(Duration::from_secs(5), self.rd.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("no {pat:?} within 5 s; got {:?}", self.seen))
                    .unwrap_or_else(|e| panic!("read: {e}"));
                assert!(n > 0, "closed before {pat:?}; got {:?}", self.seen);
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }

        /// SASL PLAIN as user/pencil, binds `resource`, sends initial presence.
        async fn login(ctx: &Arc<C2sContext>, resource: &str) -> Client {
            let mut c = Client::connect(ctx);
            c.send(HEADER).await;
            c.until("features>").await;
            let creds = encode_payload(b"\0user\0pencil");
            c.send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
            ))
            .await;
            c.until("success").await;
            c.send(HEADER).await;
            c.until("features>").await;
            c.send(&format!(
                "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{resource}</resource></bind></iq>"
            ))
            .await;
            c.until("</iq>").await;
            c.send("<presence/>").await;
            c
        }
    }

    async fn context() -> Arc<C2sContext> {
        // No modules: presence broadcast and session destruction are core's.
        let config = canto_core::Config {
            modules: Vec::new(),
            ..memory_config()
        };
        let ctx = fuzz_context(config, &[]).unwrap_or_else(|e| panic!("{e}"));
        ctx.server
            .storage
            .accounts
            .create(
                "localhost",
                "user",
                &Credentials::from_password("pencil", 32),
            )
            .await
            .unwrap_or_else(|e| panic!("account: {e}"));
        ctx
    }

    /// A panic in a connection task skips `finish`; the guard still destroys the session: it
    /// leaves the routing table and the account's other resource gets its unavailable
    /// presence (RFC 6121 §4.5.2).
    #[tokio::test]
    async fn a_panicking_connection_task_still_ends_its_session() {
        let ctx = context().await;
        let mut a = Client::login(&ctx, "a").await;
        let mut b = Client::login(&ctx, "b").await;
        // Both available: a sees b's initial presence (RFC 6121 §4.2.2: to the user's own
        // available resources).
        a.until("from='user@localhost/b'").await;
        assert_eq!(ctx.server.sessions.count(), 2);
        a.send(&format!("<panic xmlns='{PANIC_NS}'/>")).await;
        let r = timeout(Duration::from_secs(5), &mut a.task)
            .await
            .unwrap_or_else(|_| panic!("the task did not end"));
        assert!(r.is_err_and(|e| e.is_panic()), "the task panicked");
        let got = b.until("from='user@localhost/a'").await;
        let tail = b.until("/>").await;
        assert!(
            format!("{got}{tail}").contains("type='unavailable'"),
            "unavailable from the panicked resource: {got}{tail}"
        );
        assert_eq!(ctx.server.sessions.count(), 1, "only b is left");
        let jid = FullJid::new("user@localhost/a").unwrap_or_else(|e| panic!("{e}"));
        assert!(ctx.server.sessions.get(&jid).is_none());
    }
}
