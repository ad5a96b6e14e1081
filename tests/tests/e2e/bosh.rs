//! BOSH (XEP-0124, XEP-0206) at /http-bind over plain HTTP: session creation, login, request ids,
//! hold/wait, inactivity, pause, terminate and the limits. The client is a few lines of
//! HTTP/1.1 over a TcpStream (one request per connection).
use std::net::SocketAddr;
use std::time::Duration;

use canto_tests::*;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "http://jabber.org/protocol/httpbind";

/// One HTTP/1.1 request; returns the status and the body.
async fn http(addr: SocketAddr, method: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let head = format!(
        "{method} /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    // A body over the limit may be refused before it is all read: ignore a reset here.
    let _ = s.write_all(body).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp))
        .await
        .unwrap_or_else(|_| panic!("no HTTP response within 30 s"));
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A response `<body/>` with its children.
fn parse(s: &str) -> Element {
    let mut p = StreamParser::new(Limits::AUTHENTICATED);
    let mut events = Vec::new();
    p.feed(s.as_bytes(), &mut events)
        .unwrap_or_else(|e| panic!("bad XML {e}: {s}"));
    let mut root = None;
    for ev in events {
        match ev {
            StreamEvent::Header(h) => root = Some(h),
            StreamEvent::Stanza(el) => {
                if let Some(r) = &mut root {
                    r.push_child(el);
                }
            }
            StreamEvent::Close => {}
        }
    }
    let root = root.unwrap_or_else(|| panic!("no body in {s:?}"));
    assert!(root.is("body", NS), "not a BOSH body: {s}");
    assert!(p.is_closed(), "incomplete body: {s}");
    root
}

async fn post(addr: SocketAddr, body: &str) -> Element {
    let (status, text) = http(addr, "POST", body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    parse(&text)
}

fn condition(b: &Element) -> Option<(&str, &str)> {
    Some((b.attr("type")?, b.attr("condition").unwrap_or("")))
}

struct Bosh {
    addr: SocketAddr,
    sid: String,
    rid: u64,
}

impl Bosh {
    /// Creates a session with `attrs` (wait, hold, ...); returns the creation response.
    async fn create(addr: SocketAddr, attrs: &str) -> (Bosh, Element) {
        let rid = 1_000_000 + u64::from(rand::random::<u16>());
        let b = post(
            addr,
            &format!(
                "<body rid='{rid}' to='localhost' xml:lang='en' ver='1.6' xmpp:version='1.0' {attrs} \
                 xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
        )
        .await;
        let sid = b
            .attr("sid")
            .unwrap_or_else(|| panic!("no sid in {b}"))
            .to_string();
        (Bosh { addr, sid, rid }, b)
    }

    fn body(&self, rid: u64, attrs: &str, payload: &str) -> String {
        format!(
            "<body rid='{rid}' sid='{}' {attrs} xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>",
            self.sid
        )
    }

    /// The next request.
    async fn req(&mut self, attrs: &str, payload: &str) -> Element {
        self.rid += 1;
        post(self.addr, &self.body(self.rid, attrs, payload)).await
    }

    /// A request with a given rid, in a task of its own.
    fn spawn(&self, rid: u64, attrs: &str, payload: &str) -> tokio::task::JoinHandle<Element> {
        let addr = self.addr;
        let body = self.body(rid, attrs, payload);
        tokio::spawn(async move { post(addr, &body).await })
    }

    /// Polls until an element matching `pred` arrives (at most `tries` requests).
    async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        for _ in 0..10 {
            let b = self.req("", "").await;
            assert!(b.attr("type").is_none(), "session ended: {b}");
            if let Some(e) = b.children().find(|e| pred(e)) {
                return e.clone();
            }
        }
        panic!("nothing matching within 10 requests");
    }

    /// PLAIN, restart, bind `resource`: a logged-in session.
    async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Bosh {
        let (mut b, created) = Bosh::create(addr, "wait='1' hold='1'").await;
        let features = created
            .get_child("features", "http://etherx.jabber.org/streams")
            .cloned();
        let features = match features {
            Some(f) => f,
            None => b.wait_for(|e| e.name() == "features").await,
        };
        let mechs = features
            .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .map(|m| m.children().map(|c| c.text()).collect::<Vec<_>>())
            .unwrap_or_default();
        assert!(mechs.iter().any(|m| m == "PLAIN"), "{features}");
        use base64::Engine;
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let r = b
            .req(
                "",
                &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"),
            )
            .await;
        assert!(
            r.get_child("success", "urn:ietf:params:xml:ns:xmpp-sasl")
                .is_some(),
            "{r}"
        );
        // XEP-0206 §5: the restart, answered with the new stream's features.
        let r = b.req("xmpp:restart='true' to='localhost'", "").await;
        let f = r
            .get_child("features", "http://etherx.jabber.org/streams")
            .unwrap_or_else(|| panic!("no features after restart: {r}"));
        assert!(
            f.get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
                .is_some(),
            "{f}"
        );
        let r = b
            .req(
                "",
                &format!("<iq type='set' id='bind1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"),
            )
            .await;
        let jid = r
            .children()
            .find(|e| e.attr("id") == Some("bind1"))
            .and_then(|iq| iq.get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"))
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {r}"));
        assert_eq!(jid, format!("{user}@localhost/{resource}"));
        b
    }
}

fn plain_config() -> canto_core::Config {
    let mut c = test_config();
    c.c2s.require_encryption = false;
    c
}

async fn server(c: canto_core::Config) -> (TestServer, SocketAddr) {
    let s = TestServer::with_config(c).await;
    let addr = s.running.http_addrs[0];
    (s, addr)
}

/// Waits until the server has `n` sessions.
async fn sessions_become(s: &TestServer, n: usize, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    while s.running.server.sessions.count() != n {
        assert!(
            tokio::time::Instant::now() < until,
            "still {} sessions, expected {n}",
            s.running.server.sessions.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_login_messages_and_presence() {
    let (s, addr) = server(plain_config()).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    let (_, created) = Bosh::create(addr, "wait='1' hold='1'").await;
    // XEP-0124 §7.1, XEP-0206 §5: the creation response's attributes.
    for a in [
        "sid",
        "wait",
        "requests",
        "hold",
        "inactivity",
        "polling",
        "ver",
        "from",
        "authid",
    ] {
        assert!(created.attr(a).is_some(), "no {a} in {created}");
    }
    assert_eq!(created.attr("wait"), Some("1"));
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("requests"), Some("2"));
    assert_eq!(created.attr("from"), Some("localhost"));
    assert_eq!(created.attr("{urn:xmpp:xbosh}version"), Some("1.0"));
    let mut a = Bosh::login(addr, "alice", "wonderland", "web").await;
    let mut b = s.login("bob", "builder", "phone").await;
    // Presence from BOSH: the session is available (an IQ works, presence is accepted).
    let r = a
        .req("", "<presence xmlns='jabber:client'/><iq type='get' id='p1' to='localhost' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = match r.children().find(|e| e.attr("id") == Some("p1")) {
        Some(p) => p.clone(),
        None => a.wait_for(|e| e.attr("id") == Some("p1")).await,
    };
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    // BOSH → TCP; a stanza without xmlns inherits the body's namespace and is taken as
    // jabber:client (XEP-0206 §6).
    a.req(
        "",
        "<message to='bob@localhost/phone' type='chat'><body>hi bob</body></message>",
    )
    .await;
    let m = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("from"), Some("alice@localhost/web"));
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hi bob")
    );
    // TCP → BOSH: a held request is answered with it.
    b.send("<message to='alice@localhost/web' type='chat'><body>hi alice</body></message>")
        .await;
    let m = a.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(m.ns(), "jabber:client");
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hi alice")
    );
    // Directed presence to bob arrives at bob.
    a.req(
        "",
        "<presence xmlns='jabber:client' to='bob@localhost/phone'/>",
    )
    .await;
    let p = b
        .wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("from"), Some("alice@localhost/web"));
    // Terminate (XEP-0124 §13): the unavailable presence is handled, then the session ends.
    let r = a
        .req(
            "type='terminate'",
            "<presence type='unavailable' xmlns='jabber:client'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("terminate"), "{r}");
    let p = b
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("from"), Some("alice@localhost/web"));
    sessions_become(&s, 1, Duration::from_secs(5)).await;
    // The session is gone: its sid is unknown now.
    let r = a.req("", "").await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_unknown_sid_is_item_not_found() {
    let (s, addr) = server(plain_config()).await;
    let r = post(
        addr,
        &format!("<body rid='5' sid='nosuchsession' xmlns='{NS}'/>"),
    )
    .await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_creation_errors() {
    let (s, addr) = server(plain_config()).await;
    let r = post(
        addr,
        &format!("<body rid='5' to='nowhere.example' xmlns='{NS}'/>"),
    )
    .await;
    assert_eq!(condition(&r), Some(("terminate", "host-unknown")), "{r}");
    let r = post(addr, &format!("<body rid='5' xmlns='{NS}'/>")).await;
    assert_eq!(
        condition(&r),
        Some(("terminate", "improper-addressing")),
        "{r}"
    );
    let r = post(addr, &format!("<body to='localhost' xmlns='{NS}'/>")).await;
    assert_eq!(condition(&r), Some(("terminate", "bad-request")), "{r}");
    // wait and hold are clamped to the server's limits.
    let (_, c) = Bosh::create(addr, "wait='100000' hold='9'").await;
    assert_eq!(c.attr("wait"), Some("120"));
    assert_eq!(c.attr("hold"), Some("1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_rid_outside_the_window_ends_the_session() {
    let (s, addr) = server(plain_config()).await;
    let (b, _) = Bosh::create(addr, "wait='1'").await;
    // requests = 2: the window is rid+1 ..= rid+2.
    let r = post(addr, &b.body(b.rid + 3, "", "")).await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    let r = post(addr, &b.body(b.rid + 1, "", "")).await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_repeated_rid_gets_the_same_response() {
    let (s, addr) = server(plain_config()).await;
    let (mut b, _) = Bosh::create(addr, "wait='1'").await;
    let first = b
        .req(
            "",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='NOSUCH'/>",
        )
        .await;
    assert!(first.children().count() > 0, "{first}");
    // XEP-0124 §14.3: the response was lost; the same rid again gets it again.
    let again = post(addr, &b.body(b.rid, "", "")).await;
    assert_eq!(again, first);
    // A rid older than the cached responses ends the session.
    b.req("", "").await;
    b.req("", "").await;
    let r = post(addr, &b.body(b.rid - 2, "", "")).await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_out_of_order_rids_are_processed_in_order() {
    let mut c = plain_config();
    c.limits.auth_failures_before_delay = 100;
    let (s, addr) = server(c).await;
    let (mut b, _) = Bosh::create(addr, "wait='1' hold='1'").await;
    // rid+2 first: buffered until rid+1 comes (XEP-0124 §14.2). Two SASL attempts that fail
    // differently show the order the engine saw them in.
    let late = b.spawn(
        b.rid + 2,
        "",
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!late.is_finished(), "rid+2 must wait for rid+1");
    let early = b.spawn(
        b.rid + 1,
        "",
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='NOSUCH'/>",
    );
    let mut bodies = vec![
        early.await.unwrap_or_else(|e| panic!("{e}")),
        late.await.unwrap_or_else(|e| panic!("{e}")),
    ];
    b.rid += 2;
    let failures = |bodies: &[Element]| -> Vec<String> {
        bodies
            .iter()
            .flat_map(|r| {
                r.children()
                    .filter(|e| e.name() == "failure")
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .map(|f| {
                f.children()
                    .next()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    for _ in 0..3 {
        if failures(&bodies).len() >= 2 {
            break;
        }
        bodies.push(b.req("", "").await);
    }
    assert_eq!(
        failures(&bodies),
        vec!["invalid-mechanism", "not-authorized"]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_overactive_client_is_a_policy_violation() {
    let (s, addr) = server(plain_config()).await;
    let (b, _) = Bosh::create(addr, "wait='5' hold='1'").await;
    // rid+1 held, rid+3 buffered (early): rid+2 is a third simultaneous request with
    // requests = 2 (XEP-0124 §11).
    let held = b.spawn(b.rid + 1, "", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = b.spawn(b.rid + 3, "", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(addr, &b.body(b.rid + 2, "", "")).await;
    assert_eq!(
        condition(&r),
        Some(("terminate", "policy-violation")),
        "{r}"
    );
    for h in [held, early] {
        let r = h.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.attr("type"), Some("terminate"), "{r}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_polling_too_fast_is_a_policy_violation() {
    let (s, addr) = server(plain_config()).await;
    let (mut b, c) = Bosh::create(addr, "wait='5' hold='0'").await;
    assert_eq!(c.attr("hold"), Some("0"));
    assert_eq!(c.attr("requests"), Some("1"));
    let r = b.req("", "").await;
    assert!(r.attr("type").is_none(), "{r}");
    let r = b.req("", "").await;
    assert_eq!(
        condition(&r),
        Some(("terminate", "policy-violation")),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_http_errors() {
    let mut c = plain_config();
    c.http.max_request_body = 64 * 1024;
    c.c2s.max_stanza_size = 64 * 1024;
    let (s, addr) = server(c).await;
    // Oversized: 413.
    let big = format!(
        "<body rid='1' to='localhost' xmlns='{NS}'>{}</body>",
        "<a/>".repeat(20_000)
    );
    let (status, _) = http(addr, "POST", big.as_bytes()).await;
    assert_eq!(status, 413);
    // Malformed, or not a BOSH body: 400 (XEP-0124 §17.1).
    for bad in [
        "<body rid='1' to='localhost' xmlns='http://jabber.org/protocol/httpbind'>".to_string(),
        "<nobody rid='1' to='localhost' xmlns='http://jabber.org/protocol/httpbind'/>".into(),
        "<body rid='1' xmlns='jabber:client'/>".into(),
        "not xml".into(),
        format!("<body rid='1' to='localhost' xmlns='{NS}'><a></b></body>"),
    ] {
        let (status, text) = http(addr, "POST", bad.as_bytes()).await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
    let (status, _) = http(addr, "GET", b"").await;
    assert_eq!(status, 405);
    assert_eq!(s.running.server.sessions.count(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_empty_response_after_wait() {
    let (s, addr) = server(plain_config()).await;
    let (mut b, _) = Bosh::create(addr, "wait='1' hold='1'").await;
    let t = tokio::time::Instant::now();
    let r = b.req("", "").await;
    let took = t.elapsed();
    assert!(r.attr("type").is_none() && r.children().count() == 0, "{r}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // hold = 1: a second request answers the first at once.
    let first = b.spawn(b.rid + 1, "", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = tokio::time::Instant::now();
    let second = b.spawn(b.rid + 2, "", "");
    let r = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert!(r.attr("type").is_none(), "{r}");
    let r = second.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.attr("type").is_none(), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_inactivity_ends_the_session() {
    let mut c = plain_config();
    c.http.bosh_max_inactivity = 2;
    let (s, addr) = server(c).await;
    s.add_user("alice", "wonderland").await;
    let mut a = Bosh::login(addr, "alice", "wonderland", "web").await;
    a.req("", "<presence xmlns='jabber:client'/>").await;
    assert_eq!(s.running.server.sessions.count(), 1);
    // No request for longer than `inactivity` (XEP-0124 §8): the session ends.
    sessions_become(&s, 0, Duration::from_secs(8)).await;
    let r = a.req("", "").await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_pause_extends_inactivity() {
    let mut c = plain_config();
    c.http.bosh_max_inactivity = 1;
    c.http.bosh_max_pause = 4;
    let (s, addr) = server(c).await;
    let (mut b, created) = Bosh::create(addr, "wait='5' hold='1'").await;
    assert_eq!(created.attr("maxpause"), Some("4"));
    // XEP-0124 §10: answered at once; the session may then be idle for the pause.
    let t = tokio::time::Instant::now();
    let r = b.req("pause='3'", "").await;
    assert!(t.elapsed() < Duration::from_secs(2), "{r}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let held = b.spawn(b.rid + 1, "", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Resumed: the request is held like any other, not refused.
    assert!(!held.is_finished());
    let r = held.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.attr("type").is_none(), "{r}");
    b.rid += 1;
    // Without a pause, `inactivity` (1 s) applies again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = b.req("", "").await;
    assert_eq!(condition(&r), Some(("terminate", "item-not-found")), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_max_sessions() {
    let mut c = plain_config();
    c.http.bosh_max_sessions = 1;
    let (s, addr) = server(c).await;
    let (mut b, _) = Bosh::create(addr, "wait='1'").await;
    let r = post(
        addr,
        &format!("<body rid='7' to='localhost' xmlns='{NS}'/>"),
    )
    .await;
    assert_eq!(
        condition(&r),
        Some(("terminate", "service-unavailable")),
        "{r}"
    );
    // Once the first ends, there is room again.
    let r = b.req("type='terminate'", "").await;
    assert_eq!(r.attr("type"), Some("terminate"), "{r}");
    let (_, c2) = Bosh::create(addr, "wait='1'").await;
    assert!(c2.attr("type").is_none(), "{c2}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_queued_bytes_are_bounded() {
    let mut c = plain_config();
    c.http.bosh_max_queued_bytes = 8 * 1024;
    let (s, addr) = server(c).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    let mut a = Bosh::login(addr, "alice", "wonderland", "web").await;
    let mut b = s.login("bob", "builder", "phone").await;
    // alice stops fetching; bob sends her more than the queue may hold.
    let text = "x".repeat(1000);
    for _ in 0..20 {
        b.send(&format!(
            "<message to='alice@localhost/web' type='chat'><body>{text}</body></message>"
        ))
        .await;
    }
    sessions_become(&s, 1, Duration::from_secs(5)).await;
    let r = a.req("", "").await;
    assert_eq!(
        condition(&r),
        Some(("terminate", "policy-violation")),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_sessions_count_against_the_per_address_limit() {
    // One client (even over one keep-alive connection) cannot fill bosh_max_sessions: each
    // session takes a per-address slot (limits.max_connections_per_ip).
    let mut c = plain_config();
    c.limits.max_connections_per_ip = 3;
    c.limits.connection_limit_exempt = Vec::new();
    let (s, addr) = server(c).await;
    let mut made = 0;
    let mut refused = None;
    for rid in 1..=5 {
        let r = post(
            addr,
            &format!("<body rid='{rid}' to='localhost' wait='1' xmlns='{NS}'/>"),
        )
        .await;
        if r.attr("type") == Some("terminate") {
            refused = Some(r);
            break;
        }
        made += 1;
    }
    // Each request is one HTTP connection of its own (closed after the answer): at most 3
    // addresses' worth of sessions, then policy-violation.
    assert!(made <= 3, "{made} sessions from one address");
    let r = refused.unwrap_or_else(|| panic!("no session was refused"));
    assert_eq!(
        condition(&r),
        Some(("terminate", "policy-violation")),
        "{r}"
    );
    s.stop().await;
}
