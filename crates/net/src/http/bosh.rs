//! BOSH (XEP-0124) carrying XMPP (XEP-0206) at `/http-bind`. A BOSH session is one c2s engine
//! task over [`BoshTransport`], so SASL, binding, XEP-0198, XEP-0352, limits and teardown are
//! those of TCP; this file only does the binding: the `<body/>` wrapper, request ids, held
//! requests, timers and terminal conditions. The behaviour contract is docs/bosh.md.
//!
//! How the two sides meet, per session ([`Session`], one mutex):
//! * in: each accepted request's payload (the children of its `<body/>`) goes to the engine, in
//!   `rid` order (XEP-0124 §14.2), over a channel the transport's `read` awaits;
//! * out: the engine's writes are cut into self-contained elements (`framing.rs`) and queued;
//!   a held request is answered with everything queued (one batch per response, §7/§11);
//! * the stream open and close the engine writes in "this transport's framing" are markers in
//!   the output: the open makes the first response a session-creation response (§7.1,
//!   XEP-0206 §5), the close makes the next response `type='terminate'` (§13, XEP-0206 §7).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canto_proto::sasl::ChannelBindings;
use canto_stanza::ns;
use canto_xml::{Element, Limits, StreamEvent, StreamParser, XmlError, escape};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::{ConnInfo, HttpContext};
use crate::c2s::transport::{ReadError, Transport};
use crate::c2s::{self, unauth_limits};
use crate::limits::ConnectionSlot;

/// XEP-0124 §4: the namespace of `<body/>`.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 §5: the namespace of `xmpp:version` and `xmpp:restart`.
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// The protocol version we implement (XEP-0124 §7.1 `ver`).
const VERSION: (u32, u32) = (1, 11);
/// Shortest interval between two empty requests of a polling session (hold 0), seconds
/// (XEP-0124 §7.1 `polling`, §11).
const POLLING: u64 = 2;
/// The engine's stream open and close, in this transport's "framing": markers the transport
/// takes out of the output (our serializer never writes these names).
const OPEN_MARK: &[u8] = b"<stream:stream/>";
const CLOSE_MARK: &[u8] = b"<stream:close/>";
/// Bytes of the start of a request fed before its root is known (the root's attributes then
/// decide the limits of the rest).
const ROOT_CHUNK: usize = 256;
/// How often the reaper looks at the sessions.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long a waiting request whose client went away may stay held before the reaper answers
/// it (into the response cache, for a retry).
const ABANDONED_GRACE: Duration = Duration::from_secs(1);

/// The BOSH sessions, by `sid`.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.lock().get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.lock().values().cloned().collect()
    }

    /// Adds `s` unless `max` sessions are open (`bosh_max_sessions`).
    fn insert(&self, s: Arc<Session>, max: usize) -> bool {
        let mut map = self.lock();
        if map.len() >= max {
            return false;
        }
        map.insert(s.sid.clone(), s);
        true
    }
}

/// One BOSH session.
pub struct Session {
    sid: String,
    st: Mutex<SessionState>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a request carries for the engine (XEP-0124 §4, XEP-0206 §5).
#[derive(Default)]
struct Payload {
    /// `xmpp:restart='true'` (XEP-0206 §5), or the session creation: a stream header first.
    restart: bool,
    /// `type='terminate'` (XEP-0124 §13): a stream close after the children.
    terminate: bool,
    /// `pause` seconds (XEP-0124 §10).
    pause: Option<u64>,
    children: Vec<Element>,
    bytes: usize,
}

impl Payload {
    fn is_empty_poll(&self) -> bool {
        !self.restart && !self.terminate && self.pause.is_none() && self.children.is_empty()
    }
}

/// What goes to the engine: the events of one request, and its size (read-rate accounting).
struct Input {
    events: Vec<StreamEvent>,
    bytes: usize,
}

/// A processed request waiting for its response (XEP-0124 §7 `hold`).
struct Waiter {
    rid: u64,
    tx: oneshot::Sender<Bytes>,
    deadline: Instant,
}

/// A request that arrived before a lower `rid` (XEP-0124 §14.2): buffered, unprocessed.
struct Early {
    payload: Payload,
    tx: oneshot::Sender<Bytes>,
    deadline: Instant,
}

/// The limits the session creation agreed on (XEP-0124 §7.1).
#[derive(Clone, Copy)]
struct Params {
    wait: Duration,
    hold: usize,
    requests: usize,
    inactivity: Duration,
    maxpause: u64,
    ver: (u32, u32),
    secure: bool,
}

struct SessionState {
    p: Params,
    host: String,
    lang: Option<String>,
    creation_rid: u64,
    /// The engine's current stream id (`authid`, XEP-0206 §5).
    stream_id: String,
    /// The engine has opened its stream (the creation response can go).
    opened: bool,
    /// The `rid` expected next: every lower one has been processed.
    next_rid: u64,
    early: BTreeMap<u64, Early>,
    held: VecDeque<Waiter>,
    /// The last `requests` responses, for a client that lost one (XEP-0124 §14.3).
    answered: VecDeque<(u64, Bytes)>,
    /// Self-contained elements for the client.
    out: Vec<u8>,
    max_queued: usize,
    /// Parser limits of the engine's current stream (restarts raise them).
    limits: Limits,
    /// To the engine; `None` once the session is ending (the engine's read then ends).
    engine: Option<mpsc::UnboundedSender<Input>>,
    /// Bytes sent to the engine and not read yet.
    inbound: Arc<AtomicUsize>,
    /// The session is ending: the next responses are `type='terminate'` with this condition
    /// (XEP-0124 §17.2).
    end: Option<Option<&'static str>>,
    /// A terminal body has gone out (or been given to a request).
    delivered: bool,
    /// When the last request arrived or the last held one was answered (§8 `inactivity`).
    last_active: Instant,
    /// `pause` in force until the next request (§10).
    pause: Option<Duration>,
    /// The last empty request of a polling session (§11).
    last_poll: Option<Instant>,
}

/// What a request gets at once, or the channel its answer comes on.
enum Accept {
    Now(Bytes),
    Wait(oneshot::Receiver<Bytes>, Instant),
}

impl SessionState {
    /// The response to request `rid`: the queued output, with the creation attributes
    /// (XEP-0124 §7.1, XEP-0206 §5) on the creation request's and `type='terminate'` once the
    /// session is ending.
    fn compose(&mut self, sid: &str, rid: u64) -> Bytes {
        let mut b = Vec::with_capacity(self.out.len() + 512);
        b.extend_from_slice(b"<body xmlns='");
        b.extend_from_slice(NS_HTTPBIND.as_bytes());
        b.push(b'\'');
        let mut stream_decl = false;
        if rid == self.creation_rid {
            let p = self.p;
            b.extend_from_slice(
                format!(
                    " sid='{sid}' wait='{}' requests='{}' hold='{}' inactivity='{}' \
                     polling='{POLLING}' ver='{}.{}' from='{}' authid='{}' secure='{}' \
                     xmpp:version='1.0' xmlns:xmpp='{NS_XBOSH}'",
                    p.wait.as_secs(),
                    p.requests,
                    p.hold,
                    p.inactivity.as_secs(),
                    p.ver.0,
                    p.ver.1,
                    escape(&self.host),
                    escape(&self.stream_id),
                    p.secure,
                )
                .as_bytes(),
            );
            if p.maxpause > 0 {
                b.extend_from_slice(format!(" maxpause='{}'", p.maxpause).as_bytes());
            }
            stream_decl = true;
        }
        if let Some(condition) = self.end {
            b.extend_from_slice(b" type='terminate'");
            if let Some(c) = condition {
                b.extend_from_slice(format!(" condition='{c}'").as_bytes());
            }
            stream_decl = true;
            self.delivered = true;
        }
        if stream_decl {
            b.extend_from_slice(b" xmlns:stream='http://etherx.jabber.org/streams'");
        }
        if self.out.is_empty() {
            b.extend_from_slice(b"/>");
        } else {
            b.push(b'>');
            b.append(&mut self.out);
            b.extend_from_slice(b"</body>");
        }
        if self.out.capacity() > 16 * 1024 {
            self.out = Vec::new();
        }
        Bytes::from(b)
    }

    /// Answers `w` and keeps the answer for a retry (XEP-0124 §14.3).
    fn answer(&mut self, sid: &str, w: Waiter) {
        let body = self.compose(sid, w.rid);
        self.answered.push_back((w.rid, body.clone()));
        while self.answered.len() > self.p.requests {
            self.answered.pop_front();
        }
        let _ = w.tx.send(body);
        if self.held.is_empty() && self.early.is_empty() {
            self.last_active = Instant::now();
        }
    }

    /// Answers what can be answered: everything once the session is ending; else the oldest
    /// held requests beyond `hold` (XEP-0124 §11) and, when there is output, the oldest one.
    fn pump(&mut self, sid: &str) {
        if self.end.is_some() {
            while let Some(w) = self.held.pop_front() {
                self.answer(sid, w);
            }
            for (rid, e) in std::mem::take(&mut self.early) {
                let body = self.compose(sid, rid);
                let _ = e.tx.send(body);
            }
            return;
        }
        while let Some(first) = self.held.front() {
            let ready = !self.out.is_empty() && (first.rid != self.creation_rid || self.opened);
            if !ready && self.held.len() <= self.p.hold {
                break;
            }
            if let Some(w) = self.held.pop_front() {
                self.answer(sid, w);
            }
        }
    }

    /// Ends the session from our side with `condition` (XEP-0124 §17.2): every waiting request
    /// is answered with the terminal body, the engine's input ends (its read sees the session
    /// gone), and the body for the request at hand is returned.
    fn terminate(&mut self, sid: &str, rid: u64, condition: &'static str) -> Bytes {
        debug!(sid, condition, "BOSH session terminated");
        self.out.clear();
        self.end = Some(Some(condition));
        self.engine = None;
        self.pump(sid);
        self.compose(sid, rid)
    }

    /// A request for this session arrived (XEP-0124 §14 request ids, §11 overactivity).
    fn accept(&mut self, sid: &str, rid: u64, payload: Payload, now: Instant) -> Accept {
        if self.end.is_some() {
            return Accept::Now(self.compose(sid, rid));
        }
        self.last_active = now;
        self.pause = None;
        if rid < self.next_rid {
            // §14.3: a request already received. A retransmission of one still waiting takes
            // its place; one already answered gets the same response again.
            if let Some(w) = self.held.iter_mut().find(|w| w.rid == rid) {
                let (tx, rx) = oneshot::channel();
                w.tx = tx;
                return Accept::Wait(rx, w.deadline);
            }
            if let Some((_, body)) = self.answered.iter().find(|(r, _)| *r == rid) {
                return Accept::Now(body.clone());
            }
            return Accept::Now(self.terminate(sid, rid, "item-not-found"));
        }
        // §14.3: beyond the window of `requests` rids after the last one processed.
        if rid - self.next_rid >= self.p.requests as u64 {
            return Accept::Now(self.terminate(sid, rid, "item-not-found"));
        }
        if let Some(e) = self.early.get_mut(&rid) {
            let (tx, rx) = oneshot::channel();
            e.tx = tx;
            return Accept::Wait(rx, e.deadline);
        }
        // §11: more simultaneous requests than `requests`.
        if self.held.len() + self.early.len() >= self.p.requests {
            return Accept::Now(self.terminate(sid, rid, "policy-violation"));
        }
        // §11: a polling session (hold 0) polling faster than `polling` seconds.
        if self.p.hold == 0 && payload.is_empty_poll() {
            if let Some(t) = self.last_poll
                && now.duration_since(t) < Duration::from_secs(POLLING)
            {
                return Accept::Now(self.terminate(sid, rid, "policy-violation"));
            }
            self.last_poll = Some(now);
        }
        let (tx, rx) = oneshot::channel();
        let deadline = now + self.p.wait;
        if rid != self.next_rid {
            // §14.2: processed once the rids before it have been.
            self.early.insert(
                rid,
                Early {
                    payload,
                    tx,
                    deadline,
                },
            );
            return Accept::Wait(rx, deadline);
        }
        let mut pausing = self.process(rid, payload, tx, deadline);
        while let Some(e) = self.early.remove(&self.next_rid) {
            let rid = self.next_rid;
            pausing |= self.process(rid, e.payload, e.tx, e.deadline);
        }
        if self.inbound.load(Ordering::Relaxed) > self.max_queued {
            // The engine is not keeping up with this client: bounded like the output.
            return Accept::Now(self.terminate(sid, rid, "policy-violation"));
        }
        if pausing {
            // §10: every pending request is answered at once, the pausing one included.
            while let Some(w) = self.held.pop_front() {
                self.answer(sid, w);
            }
        }
        self.pump(sid);
        Accept::Wait(rx, deadline)
    }

    /// Hands the payload of the request `rid` (the next in order) to the engine and holds the
    /// request. Returns whether it asks for a pause.
    fn process(
        &mut self,
        rid: u64,
        p: Payload,
        tx: oneshot::Sender<Bytes>,
        deadline: Instant,
    ) -> bool {
        self.next_rid = rid.saturating_add(1);
        self.held.push_back(Waiter { rid, tx, deadline });
        let mut events = Vec::with_capacity(p.children.len() + 2);
        if p.restart {
            events.push(StreamEvent::Header(self.header()));
        }
        events.extend(p.children.into_iter().map(StreamEvent::Stanza));
        if p.terminate {
            events.push(StreamEvent::Close);
        }
        // §10: only when a pause was offered; the longest is `maxpause`.
        let pausing = self.p.maxpause > 0 && p.pause.is_some();
        self.pause = p
            .pause
            .filter(|_| pausing)
            .map(|s| Duration::from_secs(s.min(self.p.maxpause)));
        if !events.is_empty()
            && let Some(engine) = &self.engine
        {
            self.inbound.fetch_add(p.bytes, Ordering::Relaxed);
            let _ = engine.send(Input {
                events,
                bytes: p.bytes,
            });
        }
        pausing
    }

    /// The stream header the engine sees at creation and restarts (XEP-0206 §5: the same `to`).
    fn header(&self) -> Element {
        let mut h = Element::new("stream", ns::STREAMS)
            .with_attr("xmlns", ns::CLIENT)
            .with_attr("to", self.host.as_str())
            .with_attr("version", "1.0");
        if let Some(l) = &self.lang {
            h.set_attr("xml:lang", l.as_str());
        }
        h
    }
}

/// The engine's transport for one BOSH session.
pub struct BoshTransport {
    ctx: Arc<HttpContext>,
    session: Arc<Session>,
    rx: mpsc::UnboundedReceiver<Input>,
    inbound: Arc<AtomicUsize>,
    closed: bool,
    secure: bool,
    cb: ChannelBindings,
}

impl Transport for BoshTransport {
    fn kind(&self) -> &'static str {
        "bosh"
    }

    async fn read(
        &mut self,
        _max: usize,
        events: &mut Vec<StreamEvent>,
    ) -> Result<usize, ReadError> {
        // Cancel-safe: a message stays in the channel until received.
        let Some(input) = self.rx.recv().await else {
            return Err(ReadError::Gone("BOSH session ended"));
        };
        self.inbound.fetch_sub(input.bytes, Ordering::Relaxed);
        if input.events.iter().any(|e| matches!(e, StreamEvent::Close)) {
            self.closed = true;
        }
        events.extend(input.events);
        Ok(input.bytes.max(1))
    }

    fn input_closed(&self) -> bool {
        self.closed
    }

    fn restart(&mut self, limits: Option<Limits>) {
        if let Some(l) = limits {
            self.session.lock().limits = l;
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let sid = self.session.sid.as_str();
        let mut guard = self.session.lock();
        let st = &mut *guard;
        if st.end.is_some() {
            // Ending from our side: nothing more reaches the client.
            return Ok(());
        }
        let (mut open, mut close, mut error) = (false, false, false);
        let out = &mut st.out;
        let whole = super::framing::for_each_element(data, |el| {
            if el.starts_with(b"<stream:stream ") {
                open = true;
            } else if el.starts_with(b"<stream:close ") {
                close = true;
            } else {
                error |= el.starts_with(b"<stream:error ");
                out.extend_from_slice(&el);
            }
        });
        st.opened |= open;
        let mut result = Ok(());
        if st.out.len() > st.max_queued {
            // The client stopped fetching (a slow reader): the session ends.
            st.out.clear();
            st.end = Some(Some("policy-violation"));
            st.engine = None;
            result = Err(std::io::Error::other(
                "BOSH output over http.bosh_max_queued_bytes",
            ));
        } else if close {
            // XEP-0124 §13, XEP-0206 §7: the stream's end is the session's.
            st.end = Some(error.then_some("remote-stream-error"));
            st.engine = None;
        } else if !whole {
            result = Err(std::io::Error::other("output was not complete elements"));
        }
        st.pump(sid);
        let delivered = st.delivered;
        drop(guard);
        if delivered {
            self.ctx.bosh.remove(sid);
        }
        result
    }

    async fn shutdown(&mut self) {}

    fn write_open(&self, out: &mut Vec<u8>, _host: &str, stream_id: &str) {
        self.session.lock().stream_id = stream_id.to_string();
        out.extend_from_slice(OPEN_MARK);
    }

    fn write_close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(CLOSE_MARK);
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn can_starttls(&self) -> bool {
        // XEP-0206 §4: TLS is the HTTP connection's (https), never STARTTLS.
        false
    }

    async fn start_tls(&mut self, _deadline: Instant) -> Result<ChannelBindings, &'static str> {
        if self.secure {
            Ok(self.cb.clone())
        } else {
            Err("no TLS on this BOSH session")
        }
    }
}

/// When the engine task ends however it ends (a panic included), the session does too.
struct EngineDone {
    ctx: Arc<HttpContext>,
    session: Arc<Session>,
}

impl Drop for EngineDone {
    fn drop(&mut self) {
        let mut st = self.session.lock();
        if st.end.is_none() {
            st.out.clear();
            st.end = Some(Some("internal-server-error"));
        }
        st.engine = None;
        st.pump(&self.session.sid);
        let delivered = st.delivered;
        drop(st);
        if delivered {
            self.ctx.bosh.remove(&self.session.sid);
        }
    }
}

/// A terminal body outside any session (XEP-0124 §17.2).
fn terminal(condition: &str) -> Bytes {
    Bytes::from(format!(
        "<body xmlns='{NS_HTTPBIND}' type='terminate' condition='{condition}'/>"
    ))
}

/// Why a request was refused at the HTTP level.
type HttpError = (StatusCode, &'static str);

/// `/http-bind`.
pub(super) async fn handle(
    State(ctx): State<Arc<HttpContext>>,
    Extension(info): Extension<ConnInfo>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST, OPTIONS")],
            "This is a BOSH endpoint (XEP-0124, XEP-0206): POST <body/> elements here\n",
        )
            .into_response();
    }
    let (max, limit) = {
        let config = ctx.c2s.server.config();
        (
            config.http.max_request_body,
            Duration::from_secs(config.http.request_timeout),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    let data = match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response(),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            let over = inner.is::<http_body_util::LengthLimitError>()
                || std::error::Error::source(&*inner)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if over {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
            } else {
                (StatusCode::BAD_REQUEST, "request body unreadable\n").into_response()
            };
        }
        Ok(Ok(b)) => b,
    };
    match request(&ctx, info.client, info.secure, &info.cb, &data).await {
        // A response carries stanzas other users wrote: never let a browser that is tricked
        // into loading it run any of it on our origin (nosniff, and a sandbox with no sources).
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/xml; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; sandbox",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err((status, text)) => (status, text).into_response(),
    }
}

/// One BOSH request for the fuzzer: `data` posted to `/http-bind` from `192.0.2.1` over plain
/// HTTP. Returns the HTTP status and body.
#[doc(hidden)]
pub async fn fuzz_request(ctx: &Arc<HttpContext>, data: &[u8]) -> (u16, Bytes) {
    let peer: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 5280));
    let cb = ChannelBindings::default();
    match request(ctx, peer, false, &cb, data).await {
        Ok(b) => (200, b),
        Err((s, t)) => (s.as_u16(), Bytes::from_static(t.as_bytes())),
    }
}

/// A parsed request: the `<body/>` (attributes only), its children, and the session its `sid`
/// names if there is one.
type Parsed = (Element, Vec<Element>, Option<Arc<Session>>);

/// Parses a request body.
fn parse(data: &[u8], ctx: &HttpContext) -> Result<Parsed, HttpError> {
    let bad = |_: XmlError| {
        (
            StatusCode::BAD_REQUEST,
            "not a BOSH <body/> (XEP-0124 §17.1)\n",
        )
    };
    let config = ctx.c2s.server.config();
    let mut first = unauth_limits(&config);
    // The root's own attributes (a session creation has a dozen) count against max_attrs.
    first.max_attrs = first.max_attrs.max(32);
    drop(config);
    let mut parser = StreamParser::new(first);
    let mut events = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && events.is_empty() {
        let n = rest.len().min(ROOT_CHUNK);
        parser.feed(&rest[..n], &mut events).map_err(bad)?;
        rest = &rest[n..];
    }
    let root = match events.first() {
        Some(StreamEvent::Header(h)) if h.is("body", NS_HTTPBIND) => h.clone(),
        _ => return Err(bad(XmlError::BadFormat("not a body"))),
    };
    // The rest is parsed under the limits of the session's stream (a stanza in a BOSH body is
    // bounded as on TCP).
    let session = root.attr("sid").and_then(|sid| ctx.bosh.get(sid));
    if let Some(s) = &session {
        let mut l = s.lock().limits;
        l.max_attrs = l.max_attrs.max(first.max_attrs);
        parser.set_limits(l);
    }
    parser.feed(rest, &mut events).map_err(bad)?;
    if !parser.is_closed() {
        return Err(bad(XmlError::NotWellFormed("incomplete body")));
    }
    let mut children = Vec::new();
    for ev in events.into_iter().skip(1) {
        if let StreamEvent::Stanza(mut el) = ev {
            // XEP-0206 §6: stanzas are jabber:client; one that inherited the body's namespace
            // is taken as such (as Prosody does).
            client_ns(&mut el);
            children.push(el);
        }
    }
    Ok((root, children, session))
}

/// Elements in the httpbind namespace (inherited from `<body/>`) are `jabber:client`.
fn client_ns(el: &mut Element) {
    if el.ns() == NS_HTTPBIND {
        el.set_ns(ns::CLIENT);
    }
    for c in el.children_mut() {
        client_ns(c);
    }
}

/// The number in attribute `name`.
fn number(root: &Element, name: &str) -> Option<u64> {
    root.attr(name)?.trim().parse().ok()
}

/// Handles one request body.
async fn request(
    ctx: &Arc<HttpContext>,
    client: SocketAddr,
    secure: bool,
    cb: &ChannelBindings,
    data: &[u8],
) -> Result<Bytes, HttpError> {
    let (root, children, session) = parse(data, ctx)?;
    // XEP-0124 §14.1: every request has a rid.
    let Some(rid) = number(&root, "rid") else {
        return Ok(match (root.attr("sid"), session) {
            (_, Some(s)) => {
                let body = s.lock().terminate(&s.sid, u64::MAX, "bad-request");
                ctx.bosh.remove(&s.sid);
                body
            }
            _ => terminal("bad-request"),
        });
    };
    let payload = Payload {
        restart: root.attr(&format!("{{{NS_XBOSH}}}restart")) == Some("true"),
        terminate: root.attr("type") == Some("terminate"),
        pause: number(&root, "pause"),
        bytes: data.len(),
        children,
    };
    let session = match (root.attr("sid"), session) {
        (Some(_), Some(s)) => s,
        // XEP-0124 §17.2 (item-not-found), with HTTP 200 as §17.1 prefers to the legacy 404.
        (Some(_), None) => return Ok(terminal("item-not-found")),
        (None, _) => match create(ctx, client, secure, cb, &root, rid) {
            Ok(s) => s,
            Err(condition) => return Ok(terminal(condition)),
        },
    };
    let payload = if root.attr("sid").is_none() {
        // The creation request opens the stream (XEP-0206 §5).
        Payload {
            restart: true,
            terminate: false,
            pause: None,
            ..payload
        }
    } else {
        payload
    };
    Ok(exchange(ctx, &session, rid, payload).await)
}

/// Puts a request to the session and waits for its response (XEP-0124 §7 `wait`).
async fn exchange(ctx: &Arc<HttpContext>, s: &Arc<Session>, rid: u64, payload: Payload) -> Bytes {
    let sid = s.sid.as_str();
    let accepted = {
        let mut st = s.lock();
        let a = st.accept(sid, rid, payload, Instant::now());
        (a, st.delivered)
    };
    let (mut rx, deadline) = match accepted {
        (Accept::Now(body), delivered) => {
            if delivered {
                ctx.bosh.remove(sid);
            }
            return body;
        }
        (Accept::Wait(rx, deadline), _) => (rx, deadline),
    };
    let body = match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(Ok(body)) => body,
        // A retransmission of this rid took over (XEP-0124 §14.3): the answer goes there; this
        // request gets an empty body (not a terminal one, which would end a healthy session if
        // its client still read it).
        Ok(Err(_)) => Bytes::from(format!("<body xmlns='{NS_HTTPBIND}'/>")),
        Err(_) => {
            let mut st = s.lock();
            if let Ok(body) = rx.try_recv() {
                body
            } else if let Some(i) = st.held.iter().position(|w| w.rid == rid) {
                // §7.1 `wait`: an empty response.
                match st.held.remove(i) {
                    Some(w) => {
                        st.answer(sid, w);
                        rx.try_recv().unwrap_or_else(|_| terminal("item-not-found"))
                    }
                    None => terminal("item-not-found"),
                }
            } else if st.early.contains_key(&rid) {
                // §14.3: the rids before it never came within `wait`: they are lost.
                st.terminate(sid, rid, "item-not-found")
            } else {
                terminal("item-not-found")
            }
        }
    };
    if s.lock().delivered {
        ctx.bosh.remove(sid);
    }
    body
}

/// XEP-0124 §7.1: a session creation request. Returns the session (its engine started) or the
/// terminal condition refusing it.
fn create(
    ctx: &Arc<HttpContext>,
    client: SocketAddr,
    secure: bool,
    cb: &ChannelBindings,
    root: &Element,
    rid: u64,
) -> Result<Arc<Session>, &'static str> {
    let config = ctx.c2s.server.config();
    let h = &config.http;
    // §17.2 improper-addressing / host-unknown: `to` names the XMPP service.
    let to = root.attr("to").ok_or("improper-addressing")?;
    let host = canto_stanza::jid::normalize_domain(to)
        .filter(|d| ctx.c2s.server.serves(d))
        .ok_or("host-unknown")?;
    let lang = root.attr("xml:lang").map(str::to_string);
    // §7.1: what the client asks for, within our limits.
    let wait = number(root, "wait")
        .unwrap_or(h.bosh_max_wait)
        .clamp(1, h.bosh_max_wait);
    let hold = number(root, "hold")
        .unwrap_or(1)
        .min(u64::from(h.bosh_max_hold)) as usize;
    let ver = root
        .attr("ver")
        .and_then(|v| {
            let (a, b) = v.trim().split_once('.')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        })
        .map_or(VERSION, |v| v.min(VERSION));
    let params = Params {
        wait: Duration::from_secs(wait),
        hold,
        // §7.1: `requests` SHOULD be one more than `hold`.
        requests: hold + 1,
        inactivity: Duration::from_secs(h.bosh_max_inactivity),
        maxpause: h.bosh_max_pause,
        ver,
        secure,
    };
    // Every session counts against `limits.max_connections_per_ip` for the real client's
    // address (behind a trusted proxy, the address the proxy names).
    // Directly connected clients too: one keep-alive connection could otherwise create
    // sessions without end and fill `bosh_max_sessions` for everyone.
    let slot: Option<ConnectionSlot> = {
        let max = if config.limits.connection_limit_exempt(client.ip()) {
            0
        } else {
            config.limits.max_connections_per_ip
        };
        ctx.c2s
            .connections
            .acquire(client.ip(), max)
            .ok_or("policy-violation")?
    };
    let max_sessions = h.bosh_max_sessions;
    let max_queued = h.bosh_max_queued_bytes;
    let limits = unauth_limits(&config);
    drop(config);
    let ids = ctx.c2s.ids;
    let sid = format!("{:016x}{:016x}", ids(), ids());
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = Arc::new(AtomicUsize::new(0));
    let session = Arc::new(Session {
        sid,
        st: Mutex::new(SessionState {
            p: params,
            host,
            lang,
            creation_rid: rid,
            stream_id: String::new(),
            opened: false,
            next_rid: rid,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            answered: VecDeque::new(),
            out: Vec::new(),
            max_queued,
            limits,
            engine: Some(tx),
            inbound: inbound.clone(),
            end: None,
            delivered: false,
            last_active: Instant::now(),
            pause: None,
            last_poll: None,
        }),
    });
    // XEP-0124 §17.2 has no condition for a full server; `service-unavailable` (as documented
    // for `http.bosh_max_sessions`) says what it is.
    if !ctx.bosh.insert(session.clone(), max_sessions) {
        return Err("service-unavailable");
    }
    let transport = BoshTransport {
        ctx: ctx.clone(),
        session: session.clone(),
        rx,
        inbound,
        closed: false,
        secure,
        cb: cb.clone(),
    };
    let done = EngineDone {
        ctx: ctx.clone(),
        session: session.clone(),
    };
    let alive = ctx.alive();
    let c2s_ctx = ctx.c2s.clone();
    debug!(sid = session.sid, %client, "BOSH session created");
    tokio::spawn(async move {
        // A secure session starts encrypted, like a direct TLS connection: the engine takes
        // the channel-binding data at once (`start_tls` does no handshake here).
        c2s::serve_transport(c2s_ctx, transport, client, secure).await;
        drop(done);
        drop(slot);
        drop(alive);
    });
    Ok(session)
}

/// Ends sessions nobody is using (XEP-0124 §8 `inactivity`, §10 `pause`) and answers requests
/// whose client went away (so a retry finds the answer, §14.3). Spawned once by `http::start`.
#[doc(hidden)]
pub async fn reaper(ctx: Arc<HttpContext>) {
    let mut stop = ctx.c2s.shutdown.clone();
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => reap(&ctx, Instant::now()),
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
    }
}

fn reap(ctx: &HttpContext, now: Instant) {
    for s in ctx.bosh.all() {
        let sid = s.sid.as_str();
        let mut st = s.lock();
        // Held requests whose client is gone, or whose handler missed its deadline.
        let held = std::mem::take(&mut st.held);
        for w in held {
            if w.tx.is_closed() || now >= w.deadline + ABANDONED_GRACE {
                st.answer(sid, w);
            } else {
                st.held.push_back(w);
            }
        }
        if st
            .early
            .values()
            .any(|e| now >= e.deadline + ABANDONED_GRACE)
        {
            let _ = st.terminate(sid, 0, "item-not-found");
        }
        let idle = st.held.is_empty() && st.early.is_empty();
        let limit = st.pause.unwrap_or(st.p.inactivity);
        if idle && now.duration_since(st.last_active) > limit {
            if st.end.is_none() {
                // §8: the client is gone; the engine's read ends (a resumable session
                // hibernates, XEP-0198 §5, as for a lost TCP connection).
                debug!(sid, "BOSH session inactive");
                st.end = Some(None);
                st.engine = None;
            }
            st.delivered = true;
        }
        let gone = st.delivered;
        drop(st);
        if gone {
            ctx.bosh.remove(sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(next_rid: u64, hold: usize) -> (SessionState, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let st = SessionState {
            p: Params {
                wait: Duration::from_secs(60),
                hold,
                requests: hold + 1,
                inactivity: Duration::from_secs(60),
                maxpause: 120,
                ver: VERSION,
                secure: false,
            },
            host: "localhost".into(),
            lang: None,
            creation_rid: next_rid - 1,
            stream_id: "s1".into(),
            opened: true,
            next_rid,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            answered: VecDeque::new(),
            out: Vec::new(),
            max_queued: 1 << 20,
            limits: Limits::AUTHENTICATED,
            engine: Some(tx),
            inbound: Arc::default(),
            end: None,
            delivered: false,
            last_active: Instant::now(),
            pause: None,
            last_poll: None,
        };
        (st, rx)
    }

    fn msg(id: &str) -> Payload {
        Payload {
            children: vec![Element::new("message", ns::CLIENT).with_attr("id", id)],
            bytes: 10,
            ..Payload::default()
        }
    }

    fn ids(rx: &mut mpsc::UnboundedReceiver<Input>) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(i) = rx.try_recv() {
            for e in i.events {
                if let StreamEvent::Stanza(el) = e {
                    v.push(el.attr("id").unwrap_or_default().to_string());
                }
            }
        }
        v
    }

    fn now_body(a: Accept) -> String {
        match a {
            Accept::Now(b) => String::from_utf8_lossy(&b).into_owned(),
            Accept::Wait(..) => panic!("expected an immediate answer"),
        }
    }

    #[tokio::test]
    async fn rids_are_processed_in_order_within_the_window() {
        let (mut st, mut rx) = state(11, 1);
        let now = Instant::now();
        // 12 is early: buffered, not processed.
        let Accept::Wait(mut r12, _) = st.accept("s", 12, msg("b"), now) else {
            panic!("12 should wait");
        };
        assert!(ids(&mut rx).is_empty());
        // 11 fills the gap: both go to the engine in order; with hold 1 the older is answered.
        let Accept::Wait(mut r11, _) = st.accept("s", 11, msg("a"), now) else {
            panic!("11 should wait");
        };
        assert_eq!(ids(&mut rx), vec!["a", "b"]);
        assert_eq!(st.next_rid, 13);
        assert!(r11.try_recv().is_ok());
        assert!(r12.try_recv().is_err(), "12 is the one held");
        // A repeat of 11 gets the same (cached) answer.
        let again = now_body(st.accept("s", 11, Payload::default(), now));
        assert!(again.starts_with("<body"), "{again}");
        assert!(st.end.is_none());
        // 15 is beyond 13 + requests - 1 = 14: item-not-found.
        let far = now_body(st.accept("s", 15, Payload::default(), now));
        assert!(far.contains("condition='item-not-found'"), "{far}");
        assert!(st.delivered);
    }

    #[tokio::test]
    async fn a_repeated_rid_beyond_the_cache_ends_the_session() {
        let (mut st, _rx) = state(11, 1);
        let now = Instant::now();
        for rid in 11..16 {
            let _ = st.accept("s", rid, Payload::default(), now);
        }
        assert!(st.end.is_none());
        // Only the last `requests` (2) answers are kept: 11 is gone.
        let old = now_body(st.accept("s", 11, Payload::default(), now));
        assert!(old.contains("condition='item-not-found'"), "{old}");
    }

    #[tokio::test]
    async fn too_many_simultaneous_requests_are_a_policy_violation() {
        let (mut st, _rx) = state(11, 1);
        let now = Instant::now();
        let _a = st.accept("s", 11, Payload::default(), now);
        let _b = st.accept("s", 13, Payload::default(), now);
        // 11 held, 13 early: a third pending request is one more than `requests`.
        let c = now_body(st.accept("s", 12, Payload::default(), now));
        assert!(c.contains("condition='policy-violation'"), "{c}");
    }
}
