//! The session engine: one per client connection, whatever the transport. It drives
//! negotiation (STARTTLS where the transport has it, SASL, binding: [`super::negotiation`]),
//! hands stanzas to the router, writes what the session's queue receives (with XEP-0198,
//! [`super::sm`], and XEP-0352, [`super::csi`]) and ends the session. It consumes stream events
//! and emits bytes through a [`Transport`]; it never touches a socket or a parser.
//!
//! Session life cycle (Prosody's session.txt): the connection starts `c2s_unauthed`
//! ([`Phase::Unauthenticated`]), becomes `c2s` after SASL ([`Phase::Authenticated`]) and a
//! connected resource after binding ([`Phase::Bound`]). However the connection ends — client
//! close, network loss, conflict, shutdown, stream error — [`Conn::finish`] runs, and for a bound
//! session that calls `Server::destroy_session`, the only way out of the routing table. A task
//! that never gets there (a panic, a cancelled future) is caught by `Conn`'s `Drop`, which
//! destroys the session all the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_core::sm::Hibernated;
use canto_core::{Closer, Outbound, SessionHandle};
use canto_proto::c2s::{Stage, check_header, features};
use canto_proto::sasl::{ChannelBindings, SaslServer};
use canto_proto::sm as smp;
use canto_stanza::stanza::{error_reply, iq_result};
use canto_stanza::{Condition, StanzaError, StreamCondition, StreamError, ns};
use canto_xml::{Element, StreamEvent};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info_span, warn};

use super::C2sContext;
use super::csi::{CSI_NS, CsiHold, write_stanza};
use super::sm::{SmConn, write_answer};
use super::transport::{ReadError, Transport};
use crate::limits::ReadBucket;

/// Where negotiation stands (session.txt: `type`, `username`, `full_jid`).
pub(super) enum Phase {
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
pub(super) enum End {
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
pub(super) enum Flow {
    Continue,
    StartTls,
}

/// One connection's session state over its transport `T`.
pub(super) struct Conn<T: Transport> {
    pub(super) ctx: Arc<C2sContext>,
    pub(super) t: T,
    pub(super) peer: SocketAddr,
    pub(super) phase: Phase,
    /// Host of the first stream header; restarts must name the same one (CVE-2018-10847).
    pub(super) host: Option<String>,
    pub(super) header_sent: bool,
    /// Channel-binding data from the transport's TLS, once there is TLS.
    pub(super) cb: ChannelBindings,
    /// What goes to the client next: complete top-level elements, serialized once.
    pub(super) out: Vec<u8>,
    pub(super) closer: Arc<Closer>,
    pub(super) id: u64,
    pub(super) stream_id: String,
    /// The `xml:lang` of the client's current stream header (RFC 6120 §4.7.4).
    pub(super) lang: Option<String>,
    /// The account the SASL exchange in progress names, once known (per-account throttling).
    pub(super) auth_user: Option<String>,
    /// XEP-0198 stream management, once enabled (or resumed).
    pub(super) sm: Option<SmConn>,
    /// XEP-0352: `Some` while the client says it is inactive, holding what can wait.
    pub(super) csi: Option<CsiHold>,
}

/// Whether a top-level `jabber:client` element is a stanza XEP-0198 counts.
pub(super) fn is_stanza(el: &Element) -> bool {
    el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq")
}

/// Runs a connection's session over `t` to its end; `tls_first`: start TLS before anything
/// else (a direct TLS listener, XEP-0368).
///
/// Not an `async fn`: the connection's state is built here and boxed, so the task's future —
/// allocated for the connection's whole life, idle or not — holds a pointer to it rather than
/// a copy of the transport in its arguments and another inside the state (that made every
/// task 6.4 KB instead of 3.7 KB).
pub(super) fn serve<T: Transport>(
    ctx: Arc<C2sContext>,
    t: T,
    peer: SocketAddr,
    tls_first: bool,
) -> impl std::future::Future<Output = ()> {
    let id = ctx.server.sessions.next_id();
    let span = info_span!("c2s", id, %peer, jid = tracing::field::Empty);
    let config = ctx.server.config();
    let deadline = Instant::now() + Duration::from_secs(config.c2s.auth_timeout);
    drop(config);
    let kind = t.kind();
    let mut conn = Box::new(Conn {
        t,
        peer,
        phase: Phase::Unauthenticated {
            sasl: None,
            failures: 0,
        },
        host: None,
        header_sent: false,
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
    });
    async move {
        // Counted while the engine runs; a guard, so a panic or a cancelled task counts out.
        let _counted = canto_core::metrics::connection(kind);
        // The TLS handshake and the teardown run once per connection: boxed, so the task's
        // state is not sized by them.
        let end = if tls_first {
            match Box::pin(conn.start_tls(deadline)).await {
                Ok(()) => conn.run(deadline).await,
                Err(e) => e,
            }
        } else {
            conn.run(deadline).await
        };
        Box::pin(conn.finish(end)).await;
    }
    .instrument(span)
}

/// The most a connection reads at once.
const READ_CHUNK: usize = 4096;

/// Output size at which a connection writes before handling more of what it read.
const FLUSH_AT: usize = 64 * 1024;

/// How long a blocked write may still take once the session has been told to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) fn stream_error(c: StreamCondition) -> End {
    End::Error(StreamError::new(c))
}

impl<T: Transport> Conn<T> {
    /// The main loop: read and parse, write queued stanzas, and watch for the close signal,
    /// shutdown and the authentication deadline.
    pub(super) async fn run(&mut self, deadline: Instant) -> End {
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
                Some(b) => (b.allowance(Instant::now()).min(READ_CHUNK), b.ready_at()),
                None => (READ_CHUNK, deadline),
            };
            let answer_by = self.sm.as_ref().and_then(|sm| sm.answer_by);
            let rx = match &mut self.phase {
                Phase::Bound { rx, .. } => Some(rx),
                _ => None,
            };
            tokio::select! {
                r = self.t.read(allowed, &mut events), if allowed > 0 => {
                    let n = match r {
                        Ok(n) => n,
                        Err(ReadError::Gone(why)) => return End::Gone(why),
                        Err(ReadError::Stream(e)) => return End::Error(e),
                    };
                    if let Some(b) = &mut bucket {
                        b.consume(n);
                    }
                    // Any byte proves the client alive (a whitespace keepalive, a ping answer).
                    last_read = Instant::now();
                    ping_sent = false;
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
                    if self.t.input_closed() {
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
    pub(super) fn drain_queue(&mut self) {
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
    pub(super) fn send_ping(&mut self) {
        let Phase::Bound { handle, .. } = &self.phase else {
            return;
        };
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", format!("c2s-ping-{:016x}", (self.ctx.ids)()))
            .with_attr("from", self.host.clone().unwrap_or_default())
            .with_attr("to", handle.jid().to_string())
            .with_child(Element::new("ping", ns::PING));
        self.send(&ping);
    }

    pub(super) fn write_outbound(&mut self, out: Outbound) {
        match out {
            Outbound::Stanza(el) => write_stanza(&mut self.out, &mut self.sm, &mut self.csi, el),
        }
    }

    pub(super) fn send(&mut self, el: &Element) {
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

    pub(super) async fn flush(&mut self) -> Result<(), End> {
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
        let io = &mut self.t;
        let closer = &self.closer;
        let mut shutdown = self.ctx.shutdown.clone();
        // A client that does not read blocks this write. Meanwhile its queue fills and the
        // session is asked to close (slow reader, conflict) or the server shuts down: those must
        // not wait for send_timeout.
        let r = {
            let write = timeout(limit, io.write(&data));
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
    pub(super) async fn start_tls(&mut self, deadline: Instant) -> Result<(), End> {
        self.cb = self.t.start_tls(deadline).await.map_err(End::Gone)?;
        // RFC 6120 §5.4.3.3: a fresh stream follows; no header has been sent on it yet.
        self.t.restart(None);
        self.header_sent = false;
        Ok(())
    }

    pub(super) async fn handle_event(&mut self, ev: StreamEvent) -> Result<Flow, End> {
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
    pub(super) fn open_stream(&mut self, h: &Element) -> Result<(), End> {
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
        self.stream_id = format!("{:016x}", (self.ctx.ids)());
        self.t
            .write_open(&mut self.out, &header.host, &self.stream_id);
        self.header_sent = true;
        let config = self.ctx.server.config();
        let stage = match self.phase {
            Phase::Unauthenticated { .. } => Stage::Unauthenticated {
                tls: self.t.is_secure(),
                starttls_available: self.t.can_starttls(),
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
        f.push_child((*self.ctx.server.caps()).clone());
        self.send(&f);
        Ok(())
    }

    pub(super) async fn handle_element(&mut self, el: Element) -> Result<Flow, End> {
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
            // Boxed, like negotiation below: rare paths whose futures would otherwise make every
            // connection's task as large as the largest of them, idle sessions included.
            return Box::pin(self.stream_management(el))
                .await
                .map(|()| Flow::Continue);
        }
        if el.ns() == CSI_NS && matches!(self.phase, Phase::Bound { .. }) && offered(CSI_NS) {
            return self.csi_element(&el).map(|()| Flow::Continue);
        }
        match &self.phase {
            // Negotiation is boxed: a connection task's state is allocated for its whole life at
            // the size of its largest branch. The bound path stays inline (messages are the hot
            // path); the router boxes its own large, rarer branches (presence, IQ).
            Phase::Unauthenticated { .. } => Box::pin(self.unauthenticated(el)).await,
            Phase::Authenticated { .. } => Box::pin(self.authenticated(el))
                .await
                .map(|()| Flow::Continue),
            Phase::Bound { .. } => self.bound(el).await.map(|()| Flow::Continue),
        }
    }

    /// A connected resource: everything in `jabber:client` goes to the router.
    pub(super) async fn bound(&mut self, mut el: Element) -> Result<(), End> {
        let Phase::Bound { handle, .. } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let handle = handle.clone();
        #[cfg(test)]
        if el.is("panic", super::tests::PANIC_NS) {
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
                // Inline, not boxed: boxing this future (the largest branch, which sizes every
                // connection task for its whole life: 6.4 KB inline, 4.9 KB boxed) made idle
                // sessions 1.3 KiB smaller but cost ~20 % of flood CPU per message in
                // bench/compare.sh (docs/benchmarks.md, issue 10 measurements).
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
    pub(super) async fn finish(&mut self, end: End) {
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
            End::ClientClosed => self.t.write_close(&mut self.out),
            End::Error(e) => {
                if !self.header_sent {
                    // RFC 6120 §4.9.1.2: a header before the error.
                    let host = self.host.clone().unwrap_or_else(|| {
                        self.ctx
                            .server
                            .config()
                            .hosts
                            .first()
                            .cloned()
                            .unwrap_or_default()
                    });
                    self.t.write_open(&mut self.out, &host, "error");
                }
                debug!(condition = e.condition.as_str(), text = ?e.text, "stream error");
                e.to_element().write_to(&mut self.out, ns::CLIENT);
                self.t.write_close(&mut self.out);
            }
        }
        if !self.out.is_empty() {
            let data = std::mem::take(&mut self.out);
            let _ = timeout(Duration::from_secs(5), self.t.write(&data)).await;
        }
        if !abandoned {
            self.t.shutdown().await;
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
        self.count_held_as_sent();
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
            sm => {
                if let Some(state) = end_session(&server, &handle, sm, reason) {
                    server.reroute_unacked(&handle, state, rx).await;
                }
            }
        }
    }

    /// XEP-0352: what an inactive client had held back counts as sent and unacknowledged, so
    /// a resumption replays it, re-routing sends it on, and the counters stay right.
    fn count_held_as_sent(&mut self) {
        if let (Some(sm), Some(hold)) = (&mut self.sm, self.csi.take()) {
            for el in hold.held {
                sm.state.sent(el);
            }
        }
    }
}

/// Ends a bound session that will not hibernate, for [`Conn::finish`] and the teardown guard:
/// its XEP-0198 id is remembered as ended (a late `<resume/>` gets `<failed h/>`), then
/// [`canto_core::Server::destroy_session`]. Returns the stream-management state whose
/// unacknowledged stanzas the caller re-routes.
fn end_session(
    server: &Arc<canto_core::Server>,
    handle: &canto_core::SessionHandle,
    sm: Option<SmConn>,
    reason: &str,
) -> Option<canto_proto::sm::SmState> {
    let state = sm.map(
        |SmConn {
             state, resume_id, ..
         }| {
            if let Some(id) = resume_id {
                server.sm_ended(&id, handle, &state);
            }
            state
        },
    );
    server.destroy_session(handle, reason);
    state
}

/// The teardown guard: a connection task that never reached the end of [`Conn::finish`] — it
/// panicked (a module's handler, say) or was dropped mid-await — still ends its session here,
/// so no ghost stays in the routing table, available to its contacts forever. `finish` takes
/// the bound phase out first, so after it this finds nothing to do. Everything here is
/// synchronous (safe while unwinding); what needs storage (re-routing what the client never
/// acknowledged, XEP-0198 §5) goes to a task of its own.
impl<T: Transport> Drop for Conn<T> {
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
        self.count_held_as_sent();
        if let Some(state) = end_session(&server, &handle, self.sm.take(), reason) {
            rt.spawn(async move { server.reroute_unacked(&handle, state, rx).await });
        }
    }
}
