//! External components (XEP-0114) over real sockets: the handshake (accepted; a wrong secret,
//! an unknown domain, a wrong namespace and a second connection refused with their stream
//! errors), messages each way between a user and JIDs at the component, a user's IQ answered
//! by the component, disco#items on the host listing it, the `from` rule (a component sending
//! as another domain is closed with `invalid-from`), stanza errors back to the component, and
//! the server's answer while no component is connected. The test component is the raw test
//! client speaking `jabber:component:accept`; its handshake digest is computed here with the
//! `sha1` crate, not with the server's code. The slixmpp component flow is in slixmpp.rs.
use std::path::PathBuf;

use canto_core::Config;
use canto_core::config::ComponentConfig;
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;
use sha1::Digest;

const GW: &str = "gw.localhost";
const SECRET: &str = "gw-secret";
/// XEP-0114's stream namespace.
const ACCEPT: &str = "jabber:component:accept";

fn config() -> Config {
    let mut c = test_config();
    c.component.listen = vec!["127.0.0.1:0".into()];
    c.components.insert(
        GW.into(),
        ComponentConfig {
            secret: SECRET.into(),
            parent: String::new(),
            name: "Test gateway".into(),
        },
    );
    c
}

async fn server() -> TestServer {
    let s = TestServer::with_config(config()).await;
    s.add_user("alice", "alicepw").await;
    s
}

fn component_addr(s: &TestServer) -> std::net::SocketAddr {
    s.running.component_addrs[0]
}

fn header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ACCEPT}' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>"
    )
}

/// XEP-0114 §3: lowercase hex of SHA-1(stream id ‖ secret).
fn digest(stream_id: &str, secret: &str) -> String {
    let d = sha1::Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a component stream for `domain`; returns the client and the server's header.
async fn open(s: &TestServer, domain: &str) -> (Client, Element) {
    let mut c = Client::connect(component_addr(s), PathBuf::new()).await;
    let h = c
        .send_header(&header(domain))
        .await
        .unwrap_or_else(|e| panic!("component header: {e:#}"));
    (c, h)
}

/// A connected, authenticated component.
async fn connect(s: &TestServer) -> Client {
    let (mut c, h) = open(s, GW).await;
    let id = h.attr("id").unwrap_or_default().to_string();
    c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
        .await;
    let ok = c
        .next()
        .await
        .unwrap_or_else(|e| panic!("handshake answer: {e:#}"));
    assert!(
        ok.is("handshake", ACCEPT) && ok.text().is_empty(),
        "XEP-0114 §3: an empty <handshake/>, got {ok}"
    );
    c
}

fn body(el: &Element, stanza_ns: &str) -> Option<String> {
    el.get_child("body", stanza_ns).map(|b| b.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_messages_both_ways() {
    let s = server().await;
    let (mut comp, h) = open(&s, GW).await;
    // XEP-0114 §3: the server's header is from the component's domain, with a stream id.
    assert_eq!(h.attr("from"), Some(GW));
    assert_eq!(h.attr("xmlns"), Some(ACCEPT));
    let id = h.attr("id").unwrap_or_default().to_string();
    assert!(id.len() >= 16, "a fresh stream id: {id:?}");
    // Uppercase hex is accepted too (Prosody compares lowercased).
    comp.send(&format!(
        "<handshake>{}</handshake>",
        digest(&id, SECRET).to_uppercase()
    ))
    .await;
    let ok = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ok.is("handshake", ACCEPT), "{ok}");

    let mut alice = s.login("alice", "alicepw", "r").await;
    // User -> a JID at the component: delivered in the component's namespace, stamped.
    alice
        .send(&format!(
            "<message to='bot@{GW}' type='chat' id='m1'><body>hello</body></message>"
        ))
        .await;
    let m = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(m.is("message", ACCEPT), "{m}");
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    assert_eq!(m.attr("to"), Some(&*format!("bot@{GW}")));
    assert_eq!(body(&m, ACCEPT).as_deref(), Some("hello"));

    // Component -> user, from any JID at its domain (a full JID too).
    comp.send(&format!(
        "<message from='bot@{GW}/x' to='alice@localhost/r' type='chat'><body>hi alice</body></message>"
    ))
    .await;
    let m = alice
        .wait_for(|e| e.is("message", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("from"), Some(&*format!("bot@{GW}/x")));
    assert_eq!(body(&m, ns::CLIENT).as_deref(), Some("hi alice"));

    // From the component's own domain, to the bare JID of an available user (RFC 6121
    // §8.5.2.1.1).
    alice.send("<presence/>").await;
    alice.sync().await;
    comp.send(&format!(
        "<message from='{GW}' to='alice@localhost'><body>to the bare JID</body></message>"
    ))
    .await;
    let m = alice
        .wait_for(|e| e.is("message", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("from"), Some(GW));
    assert_eq!(body(&m, ns::CLIENT).as_deref(), Some("to the bare JID"));

    // Presence from the user is the component's too (a gateway sees its users come online).
    alice.send(&format!("<presence to='bot@{GW}'/>")).await;
    let p = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.is("presence", ACCEPT), "{p}");
    assert_eq!(p.attr("from"), Some("alice@localhost/r"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_iq_is_answered_by_the_component_and_the_host_lists_it() {
    let s = server().await;
    let mut comp = connect(&s).await;
    let mut alice = s.login("alice", "alicepw", "r").await;
    alice
        .send(&format!(
            "<iq type='get' id='v1' to='{GW}'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await;
    let req = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(req.is("iq", ACCEPT), "{req}");
    assert_eq!(req.attr("id"), Some("v1"));
    assert_eq!(req.attr("from"), Some("alice@localhost/r"));
    assert!(req.has_child("query", "jabber:iq:version"));
    comp.send(&format!(
        "<iq type='result' id='v1' from='{GW}' to='alice@localhost/r'>\
         <query xmlns='jabber:iq:version'><name>test gateway</name><version>1</version></query></iq>"
    ))
    .await;
    let r = alice
        .wait_for(|e| e.is("iq", ns::CLIENT) && e.attr("id") == Some("v1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some(GW));
    let name = r
        .get_child("query", "jabber:iq:version")
        .and_then(|q| q.get_child("name", "jabber:iq:version"))
        .map(|n| n.text());
    assert_eq!(name.as_deref(), Some("test gateway"));

    // XEP-0030 §4: the parent host (the first host) lists the component with its name.
    let items = alice
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let item = items
        .get_child("query", ns::DISCO_ITEMS)
        .and_then(|q| q.children().find(|i| i.attr("jid") == Some(GW)).cloned())
        .unwrap_or_else(|| panic!("not listed: {items}"));
    assert_eq!(item.attr("name"), Some("Test gateway"));

    // The component asks the server something (a ping to the host) and gets the answer.
    comp.send(&format!(
        "<iq type='get' id='p1' from='{GW}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let pong = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(pong.is("iq", ACCEPT), "{pong}");
    assert_eq!(pong.attr("type"), Some("result"));
    assert_eq!(pong.attr("id"), Some("p1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_not_authorized() {
    let s = server().await;
    let (mut comp, h) = open(&s, GW).await;
    let id = h.attr("id").unwrap_or_default().to_string();
    comp.send(&format!("<handshake>{}</handshake>", digest(&id, "wrong")))
        .await;
    // XEP-0114 §3: not-authorized, and the stream is closed.
    assert_eq!(comp.expect_stream_error().await, "not-authorized");
    // Something that is no handshake at all is refused the same way.
    let (mut comp, _) = open(&s, GW).await;
    comp.send(&format!(
        "<message from='{GW}' to='alice@localhost'><body>x</body></message>"
    ))
    .await;
    assert_eq!(comp.expect_stream_error().await, "not-authorized");
    // The component is still free for the right secret.
    let _ok = connect(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domain_and_wrong_namespace_are_refused() {
    let s = server().await;
    // XEP-0114 §3: host-unknown for a component this server does not serve, after a header.
    let mut c = Client::connect(component_addr(&s), PathBuf::new()).await;
    c.send(&header("nope.localhost")).await;
    let end = c.stream_end().await;
    assert!(end.header.is_some(), "RFC 6120 §4.9.1.2: a header first");
    assert_eq!(end.condition.as_deref(), Some("host-unknown"));
    // A host is no component either.
    let mut c = Client::connect(component_addr(&s), PathBuf::new()).await;
    c.send(&header("localhost")).await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");
    // A client stream on the component port: invalid-namespace.
    let mut c = Client::connect(component_addr(&s), PathBuf::new()).await;
    c.send(&canto_tests::header(GW)).await;
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
    // No `to`: improper-addressing (as Prosody).
    let mut c = Client::connect(component_addr(&s), PathBuf::new()).await;
    c.send(&format!(
        "<stream:stream xmlns='{ACCEPT}' xmlns:stream='http://etherx.jabber.org/streams'>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "improper-addressing");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_gets_conflict_and_the_first_stays() {
    let s = server().await;
    let mut first = connect(&s).await;
    let (mut second, h) = open(&s, GW).await;
    let id = h.attr("id").unwrap_or_default().to_string();
    second
        .send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
        .await;
    // XEP-0114 §3 names conflict; Prosody turns the new connection away.
    assert_eq!(second.expect_stream_error().await, "conflict");
    // The first one still gets the component's stanzas.
    let mut alice = s.login("alice", "alicepw", "r").await;
    alice
        .send(&format!(
            "<message to='bot@{GW}'><body>still there?</body></message>"
        ))
        .await;
    let m = first.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m, ACCEPT).as_deref(), Some("still there?"));
    // Once it closes its stream, another connection may take its place.
    first.send("</stream:stream>").await;
    let _ = first.closed().await;
    let mut third = None;
    for _ in 0..50 {
        let (mut c, h) = open(&s, GW).await;
        let id = h.attr("id").unwrap_or_default().to_string();
        c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
            .await;
        match c.next().await {
            Ok(e) if e.is("handshake", ACCEPT) => {
                third = Some(c);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(third.is_some(), "the component could not reconnect");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_as_another_domain_is_invalid_from_and_closes_the_component() {
    let s = server().await;
    let mut alice = s.login("alice", "alicepw", "r").await;
    let mut comp = connect(&s).await;
    // XEP-0114 §3: the 'from' domain MUST be the component's; a host's user is not.
    comp.send(
        "<message from='alice@localhost' to='alice@localhost/r'><body>forged</body></message>",
    )
    .await;
    assert_eq!(comp.expect_stream_error().await, "invalid-from");
    // Nothing reached alice.
    assert!(alice.quiet().await, "a forged message was delivered");
    // A subdomain of the component is another domain too; so is no from at all.
    for from in [format!(" from='x.{GW}'"), String::new()] {
        let mut comp = connect_retrying(&s).await;
        comp.send(&format!(
            "<message{from} to='alice@localhost/r'><body>x</body></message>"
        ))
        .await;
        assert_eq!(comp.expect_stream_error().await, "invalid-from", "{from}");
    }
    assert!(alice.quiet().await);
    s.stop().await;
}

/// [`connect`], retried while the previous connection is still being torn down.
async fn connect_retrying(s: &TestServer) -> Client {
    for _ in 0..50 {
        let (mut c, h) = open(s, GW).await;
        let id = h.attr("id").unwrap_or_default().to_string();
        c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
            .await;
        match c.next().await {
            Ok(e) if e.is("handshake", ACCEPT) => return c,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("the component could not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanza_errors_come_back_to_the_component() {
    let s = server().await;
    let mut comp = connect(&s).await;
    // XEP-0114 §3: a stanza needs a 'to'; bad-request, as Prosody answers, and the stream
    // stays open.
    comp.send(&format!(
        "<iq type='get' id='q1' from='{GW}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let e = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.is("iq", ACCEPT), "{e}");
    assert_eq!(e.attr("type"), Some("error"));
    let cond = e
        .get_child("error", ACCEPT)
        .and_then(|err| {
            err.children()
                .find(|c| c.ns() == ns::STANZAS && c.name() != "text")
        })
        .map(|c| c.name().to_string());
    assert_eq!(cond.as_deref(), Some("bad-request"));
    // To an account that does not exist: service-unavailable from the router (RFC 6121
    // §8.5.1), back to the component's JID.
    comp.send(&format!(
        "<iq type='get' id='q2' from='u@{GW}' to='nobody@localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let e = comp.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(e.attr("id"), Some("q2"));
    assert_eq!(e.attr("to"), Some(&*format!("u@{GW}")));
    assert!(
        e.get_child("error", ACCEPT)
            .is_some_and(|err| err.has_child("service-unavailable", ns::STANZAS)),
        "{e}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_component_is_answered_for() {
    let s = server().await;
    let mut alice = s.login("alice", "alicepw", "r").await;
    // Never connected: an IQ gets Prosody's answer, remote-server-timeout (type wait) with
    // <not-connected/>, from the address it was sent to.
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{GW}'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("error"));
    assert_eq!(r.attr("from"), Some(GW));
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("remote-server-timeout")
    );
    assert_eq!(error_type(&r).as_deref(), Some("wait"));
    assert!(
        r.get_child("error", ns::CLIENT)
            .is_some_and(|e| e.has_child("not-connected", canto_core::component::NS_NOT_CONNECTED)),
        "{r}"
    );
    // A message too; an unavailable presence is not answered.
    alice
        .send(&format!(
            "<presence type='unavailable' to='bot@{GW}'/><message to='bot@{GW}' id='m9'><body>anyone?</body></message>"
        ))
        .await;
    let m = alice
        .wait_for(|e| e.is("message", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("id"), Some("m9"));
    assert_eq!(
        error_condition(&m).as_deref(),
        Some("remote-server-timeout")
    );
    assert!(alice.quiet().await);
    // disco#info on the domain: the configured name, as Prosody answers for a named component.
    let info = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{GW}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(info.attr("type"), Some("result"), "{info}");
    // Connected, then gone: answered again.
    let mut comp = connect(&s).await;
    comp.send("</stream:stream>").await;
    let _ = comp.closed().await;
    let mut answered = None;
    for _ in 0..50 {
        let r = alice
            .iq(&format!(
                "<iq type='get' id='{{id}}' to='{GW}'><query xmlns='jabber:iq:version'/></iq>"
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        if r.attr("type") == Some("error") {
            answered = error_condition(&r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered.as_deref(), Some("remote-server-timeout"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_component_stream() {
    let s = server().await;
    let mut comp = connect(&s).await;
    let stop = tokio::spawn(async move { s.stop().await });
    assert_eq!(comp.expect_stream_error().await, "system-shutdown");
    let _ = stop.await;
}

/// The `canto_connections{kind="component"}` sample of a scrape of `/metrics`.
async fn component_gauge(addr: std::net::SocketAddr) -> f64 {
    let raw = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    raw.lines()
        .find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            (series == "canto_connections{kind=\"component\"}").then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_connections_are_in_the_connections_gauge() {
    let mut config = config();
    config.metrics.listen = "127.0.0.1:0".into();
    let s = TestServer::with_config(config).await;
    let maddr = s
        .running
        .metrics_addr
        .unwrap_or_else(|| panic!("metrics listener"));
    // Gauges are process-global: compare with the value before.
    let before = component_gauge(maddr).await;
    let mut comp = connect(&s).await;
    assert_eq!(component_gauge(maddr).await, before + 1.0);
    comp.send("</stream:stream>").await;
    let _ = comp.closed().await;
    let mut back = false;
    for _ in 0..50 {
        if component_gauge(maddr).await == before {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(back, "the gauge counts the closed connection out");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stanzas_are_a_policy_violation() {
    let s = server().await;
    // Before the handshake, the unauthenticated budget (c2s.max_stanza_size_unauthenticated).
    let (mut c, _) = open(&s, GW).await;
    c.send(&format!("<handshake>{}</handshake>", "a".repeat(20 * 1024)))
        .await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    // Afterwards, s2s.max_stanza_size (512 KiB by default): 100 KiB passes, 600 KiB does not.
    let mut alice = s.login("alice", "alicepw", "r").await;
    let mut comp = connect(&s).await;
    let big = "x".repeat(100 * 1024);
    comp.send(&format!(
        "<message from='bot@{GW}' to='alice@localhost/r'><body>{big}</body></message>"
    ))
    .await;
    let m = alice
        .wait_for(|e| e.is("message", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m, ns::CLIENT).map(|b| b.len()), Some(big.len()));
    let huge = "x".repeat(600 * 1024);
    comp.send(&format!(
        "<message from='bot@{GW}' to='alice@localhost/r'><body>{huge}</body></message>"
    ))
    .await;
    assert_eq!(comp.expect_stream_error().await, "policy-violation");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_answered_without_overflowing_the_queue() {
    // More requests at once than the queue holds (c2s.max_send_queue): the answers are moved
    // out as they come, so a component that reads is never taken for a slow reader.
    let s = server().await;
    let mut comp = connect(&s).await;
    let n = 3000;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<iq type='get' id='b{i}' from='{GW}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
    }
    comp.send(&burst).await;
    for i in 0..n {
        let r = comp
            .next()
            .await
            .unwrap_or_else(|e| panic!("answer {i}: {e:#}"));
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }
    s.stop().await;
}

/// RFC 6121 §3 with a contact at a component (a gateway's contact): the user's side of the
/// subscription runs (roster item with `ask`, then `to` when the gateway approves), and the
/// component gets the request; a message the component sends is archived for the user
/// (XEP-0313 §4) with the archive's stanza-id, as one from any other contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_contacts_get_roster_items_and_their_messages_are_archived() {
    let s = server().await;
    let mut comp = connect(&s).await;
    let mut alice = s.login("alice", "alicepw", "r").await;
    let _ = alice
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("roster: {e:#}"));
    alice
        .send(&format!("<presence to='bob@{GW}' type='subscribe'/>"))
        .await;
    let push = alice
        .wait_for(|e| e.name() == "iq" && e.attr("type") == Some("set"))
        .await
        .unwrap_or_else(|e| panic!("no roster push: {e:#}"));
    let item = push
        .children()
        .flat_map(|q| q.children())
        .next()
        .unwrap_or_else(|| panic!("no item: {push}"));
    assert_eq!(item.attr("jid"), Some(&*format!("bob@{GW}")));
    assert_eq!(item.attr("ask"), Some("subscribe"), "{push}");
    let p = comp
        .wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("subscribe"), "{p}");
    assert_eq!(p.attr("from"), Some("alice@localhost"), "{p}");
    comp.send(&format!(
        "<presence from='bob@{GW}' to='alice@localhost' type='subscribed'/>"
    ))
    .await;
    let push = alice
        .wait_for(|e| {
            e.name() == "iq"
                && e.children()
                    .flat_map(|q| q.children())
                    .any(|i| i.attr("subscription") == Some("to"))
        })
        .await
        .unwrap_or_else(|e| panic!("no push with subscription=to: {e:#}"));
    assert!(push.to_string().contains(GW), "{push}");

    comp.send(&format!(
        "<message from='bob@{GW}' to='alice@localhost/r' type='chat' id='g1'><body>from the gateway</body></message>"
    ))
    .await;
    let m = alice
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("g1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let sid = m
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .unwrap_or_else(|| panic!("no stanza-id: {m}"));
    assert_eq!(sid.attr("by"), Some("alice@localhost"));
    alice
        .send("<iq type='set' id='mq'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
        .await;
    let mut archived = Vec::new();
    loop {
        let e = alice.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.attr("id") == Some("mq") {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            break;
        }
        archived.push(e);
    }
    assert!(
        archived
            .iter()
            .any(|e| e.to_string().contains("from the gateway")),
        "not in the archive: {archived:?}"
    );
    s.stop().await;
}
