//! Tests of the engine over the in-memory adapter and over a message-framed test transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_proto::sasl::{ChannelBindings, Credentials, encode_payload};
use canto_stanza::{FullJid, ns};
use canto_xml::{Element, Limits, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::transport::{ReadError, Transport};
use super::{C2sContext, engine, fuzz_context, memory_config, serve_memory};

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
        let mut c = Client::authenticated(ctx).await;
        c.send(&format!(
            "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
        c.until("</iq>").await;
        c.send("<presence/>").await;
        c
    }

    /// SASL PLAIN as user/pencil and the restarted stream's features.
    async fn authenticated(ctx: &Arc<C2sContext>) -> Client {
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
        c
    }
}

async fn context() -> Arc<C2sContext> {
    // No modules: presence broadcast and session destruction are core's.
    context_with(Vec::new()).await
}

/// A context with the named modules of `canto_modules` loaded and the account user/pencil.
async fn context_with(modules: Vec<String>) -> Arc<C2sContext> {
    let config = canto_core::Config {
        modules,
        ..memory_config()
    };
    let ctx = fuzz_context(config, &canto_modules::all()).unwrap_or_else(|e| panic!("{e}"));
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

/// A message-framed transport shaped like WebSocket's (RFC 7395): the client's stream events
/// arrive whole, one per message (no XML parser here); every write leaves as one message (a
/// write can carry several elements; RFC 7395 §3.3.3 wants one per message, which a real
/// adapter gets by splitting at element ends); the stream opens and closes with `<open/>` and
/// `<close/>` (§3.4, §3.6); no STARTTLS, and secure by construction (as over `wss:`).
struct Framed {
    inbound: mpsc::UnboundedReceiver<StreamEvent>,
    outbound: mpsc::UnboundedSender<Vec<u8>>,
}

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

impl Transport for Framed {
    async fn read(
        &mut self,
        _max: usize,
        events: &mut Vec<StreamEvent>,
    ) -> Result<usize, ReadError> {
        let ev = self
            .inbound
            .recv()
            .await
            .ok_or(ReadError::Gone("test transport closed"))?;
        events.push(ev);
        Ok(1)
    }

    fn input_closed(&self) -> bool {
        false
    }

    fn restart(&mut self, _limits: Option<Limits>) {}

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.outbound
            .send(data.to_vec())
            .map_err(|_| std::io::Error::other("test client gone"))
    }

    async fn shutdown(&mut self) {}

    fn write_open(&self, out: &mut Vec<u8>, host: &str, stream_id: &str) {
        out.extend_from_slice(
            format!(
                "<open xmlns='{FRAMING}' from='{host}' id='{stream_id}' version='1.0' xml:lang='en'/>"
            )
            .as_bytes(),
        );
    }

    fn write_close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("<close xmlns='{FRAMING}'/>").as_bytes());
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn can_starttls(&self) -> bool {
        false
    }

    async fn start_tls(&mut self, _deadline: Instant) -> Result<ChannelBindings, &'static str> {
        Err("no TLS on this transport")
    }
}

/// Collects the server's messages until one contains `pat`; returns them concatenated.
async fn until_message(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, pat: &str) -> String {
    let mut seen = String::new();
    loop {
        let m = timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {pat:?} within 5 s; got {seen:?}"))
            .unwrap_or_else(|| panic!("transport closed before {pat:?}; got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&m));
        if seen.contains(pat) {
            return seen;
        }
    }
}

/// The stream open a message-framed client sends, as stream event (what the adapter parsed).
fn open_event() -> StreamEvent {
    StreamEvent::Header(
        Element::new("stream", ns::STREAMS)
            .with_attr("xmlns", ns::CLIENT)
            .with_attr("to", "localhost")
            .with_attr("version", "1.0"),
    )
}

/// The engine negotiates SASL PLAIN and binding over a transport that is not a byte stream
/// and has no STARTTLS: the seam between engine and transport is transport independent. Ids
/// come from the injected source.
#[tokio::test]
async fn the_engine_negotiates_over_a_message_framed_transport() {
    let mut ctx = context().await;
    Arc::get_mut(&mut ctx)
        .unwrap_or_else(|| panic!("the context is shared"))
        .ids = || 7;
    let (in_tx, inbound) = mpsc::unbounded_channel();
    let (outbound, mut out) = mpsc::unbounded_channel();
    let peer: SocketAddr = "192.0.2.1:5222".parse().unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(engine::serve(
        ctx.clone(),
        Framed { inbound, outbound },
        peer,
        false,
    ));
    let send = |ev: StreamEvent| in_tx.send(ev).unwrap_or_else(|_| panic!("engine gone"));
    send(open_event());
    let first = until_message(&mut out, "</stream:features>").await;
    assert!(
        first.starts_with(&format!(
            "<open xmlns='{FRAMING}' from='localhost' id='0000000000000007'"
        )),
        "{first}"
    );
    assert!(!first.contains("<stream:stream"), "{first}");
    assert!(!first.contains("starttls"), "no STARTTLS offered: {first}");
    assert!(first.contains("<mechanism>PLAIN</mechanism>"), "{first}");
    send(StreamEvent::Stanza(
        Element::new("auth", ns::SASL)
            .with_attr("mechanism", "PLAIN")
            .with_text(encode_payload(b"\0user\0pencil")),
    ));
    until_message(&mut out, "<success").await;
    // RFC 6120 §6.4.6: a new stream after SASL success (RFC 7395 §3.5: a new <open/>).
    send(open_event());
    let second = until_message(&mut out, "</stream:features>").await;
    assert!(
        second.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{second}"
    );
    // RFC 6120 §7.6: a server-generated resource, from the injected id source.
    send(StreamEvent::Stanza(
        Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "b")
            .with_child(Element::new("bind", ns::BIND)),
    ));
    until_message(&mut out, "<jid>user@localhost/canto-0000000000000007</jid>").await;
    let jid =
        FullJid::new("user@localhost/canto-0000000000000007").unwrap_or_else(|e| panic!("{e}"));
    assert!(ctx.server.sessions.get(&jid).is_some(), "bound");
    // The client closes: the engine answers in the transport's framing and ends the session.
    send(StreamEvent::Close);
    until_message(&mut out, &format!("<close xmlns='{FRAMING}'/>")).await;
    timeout(Duration::from_secs(5), task)
        .await
        .unwrap_or_else(|_| panic!("the engine did not end"))
        .unwrap_or_else(|e| panic!("engine: {e}"));
    assert_eq!(ctx.server.sessions.count(), 0);
}

/// The guard also ends the session's XEP-0198 registration: a resumption of the panicked
/// session is refused at once with the `h` it ended with (XEP-0198 §5), instead of waiting for
/// a live connection that is gone to hand the session over, and the registry keeps nothing.
#[tokio::test]
async fn a_panic_also_ends_the_stream_management_registration() {
    let ctx = context_with(vec!["smacks".into()]).await;
    let mut a = Client::login(&ctx, "a").await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    a.until("<enabled").await;
    let attrs = a.until("/>").await;
    let id = attrs
        .split("id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no resumption id in {attrs}"))
        .to_string();
    a.send(&format!("<panic xmlns='{PANIC_NS}'/>")).await;
    let r = timeout(Duration::from_secs(5), &mut a.task)
        .await
        .unwrap_or_else(|_| panic!("the task did not end"));
    assert!(r.is_err_and(|e| e.is_panic()), "the task panicked");
    assert_eq!(ctx.server.sessions.count(), 0, "no ghost session");
    let mut c = Client::authenticated(&ctx).await;
    let asked = tokio::time::Instant::now();
    c.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    c.until("<failed").await;
    let failed = c.until("</failed>").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answered at once, not after waiting for a takeover"
    );
    assert!(failed.contains("h='0'"), "the ended session's h: {failed}");
    assert!(failed.contains("item-not-found"), "{failed}");
}
