//! The session model over real sockets (RFC 6120 §7, RFC 6121 §4): binding, conflicts, limits,
//! and that every way a session ends goes through `destroy_session`.

use std::time::{Duration, Instant};

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

async fn server() -> TestServer {
    server_with(test_config()).await
}

async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s
}

/// Authenticates alice over STARTTLS and restarts the stream, ready to bind.
async fn authenticated(s: &TestServer) -> Client {
    let mut c = s.connect_tls().await;
    c.auth_scram(
        canto_proto::sasl::HashAlgo::Sha256,
        "alice",
        "wonderland",
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("auth: {e:#}"));
    c.open(HOST).await;
    c
}

/// Sends a bind request with `inner` as the content of `<bind/>` and returns the reply.
async fn bind_raw(c: &mut Client, inner: &str) -> Element {
    c.iq(&format!(
        "<iq type='set' id='{{id}}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind></iq>"
    ))
    .await
    .unwrap_or_else(|e| panic!("bind: {e:#}"))
}

fn error_type(e: &Element) -> Option<String> {
    e.get_child("error", ns::CLIENT)
        .and_then(|e| e.attr("type"))
        .map(str::to_string)
}

/// Sends initial presence and waits for the server to have processed it (a ping round trip).
async fn go_available(c: &mut Client) {
    c.send("<presence/>").await;
    let pong = c
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pong.attr("type"), Some("result"));
}

fn is_unavailable_from(e: &Element, from: &str) -> bool {
    e.is("presence", ns::CLIENT)
        && e.attr("type") == Some("unavailable")
        && e.attr("from") == Some(from)
}

/// Sends `watch` a marker message from `from` and returns everything `watch` receives up to
/// and including it. Stanzas are queued in order, so anything the server had already queued for
/// `watch` shows up before the marker: no waiting for "nothing to arrive".
async fn drain_until_marker(from: &mut Client, watch: &mut Client) -> Vec<Element> {
    let marker = format!("marker-{}", rand::random::<u32>());
    let to = watch.jid.clone().unwrap_or_default();
    from.send(&format!(
        "<message to='{to}' type='chat'><body>{marker}</body></message>"
    ))
    .await;
    let mut seen = Vec::new();
    loop {
        let e = watch.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        let done = e.name() == "message"
            && e.get_child("body", ns::CLIENT).map(|b| b.text()) == Some(marker.clone());
        seen.push(e);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_and_server_generated_resources() {
    let s = server().await;
    // RFC 6120 §7.7: the client's resource is kept as given (resourceprep keeps case).
    let mut a = authenticated(&s).await;
    let jid = a
        .bind(Some("Phone"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(jid, "alice@localhost/Phone");
    assert!(s.is_bound("alice@localhost/Phone"));
    // RFC 6120 §7.6: no <resource/> (or an empty one) gets a server-generated, unique one.
    let mut generated = Vec::new();
    let mut conns = Vec::new();
    for inner in ["", "<resource/>", ""] {
        let mut c = authenticated(&s).await;
        let r = bind_raw(&mut c, inner).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let jid = r
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("no jid in {r}"));
        let resource = jid
            .strip_prefix("alice@localhost/")
            .unwrap_or_else(|| panic!("{jid} is not one of alice's full JIDs"));
        assert!(resource.len() >= 8, "guessable resource {resource:?}");
        assert!(s.is_bound(&jid));
        generated.push(jid);
        conns.push(c);
    }
    generated.sort();
    generated.dedup();
    assert_eq!(
        generated.len(),
        3,
        "generated resources repeat: {generated:?}"
    );
    assert_eq!(s.running.server.sessions.count(), 4);
    drop(conns);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resources_are_bad_request_and_the_stream_stays_usable() {
    let s = server().await;
    let mut c = authenticated(&s).await;
    // RFC 6120 §7.7.2.1, RFC 7622 §3.4: a resource that fails the OpaqueString profile is
    // bad-request (type modify). Bidi overrides and control characters are such cases.
    for bad in ["evil\u{202E}txt", "tab\there", "nl\nhere", "c1\u{85}ctl"] {
        let r = bind_raw(
            &mut c,
            &format!("<resource>{}</resource>", canto_xml::escape(bad)),
        )
        .await;
        assert_eq!(r.attr("type"), Some("error"), "{bad:?}: {r}");
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("bad-request"),
            "{bad:?}"
        );
        assert_eq!(error_type(&r).as_deref(), Some("modify"), "{bad:?}");
    }
    assert_eq!(s.running.server.sessions.count(), 0);
    let jid = c
        .bind(Some("good"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(jid, "alice@localhost/good");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_bind_is_not_allowed_and_legacy_session_is_a_no_op() {
    let s = server().await;
    let mut c = authenticated(&s).await;
    // RFC 3921 §3 / RFC 6121 Appendix E: <session/> is answered with a result, before binding…
    let r = c
        .iq("<iq type='set' id='{id}'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    c.bind(Some("one"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // …and after.
    let r = c
        .iq("<iq type='set' id='{id}'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // RFC 6120 §7.7.2.3 (one resource per stream here): a second bind is refused.
    let r = bind_raw(&mut c, "<resource>two</resource>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
    assert!(s.is_bound("alice@localhost/one"));
    assert!(!s.is_bound("alice@localhost/two"));
    let mut b = s.login("bob", "builder", "b").await;
    assert_session_works(&mut c, &mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_conflict_kicks_the_old_session_only() {
    let s = server().await;
    let mut bob = s.login("bob", "builder", "b").await;
    let mut old = s.login("alice", "wonderland", "home").await;
    let old_id = s.session_id("alice@localhost/home");
    let mut new = s.login("alice", "wonderland", "home").await;
    let new_id = s.session_id("alice@localhost/home");
    assert_ne!(old_id, new_id);
    // RFC 6120 §7.7.2.2: the new session wins, the old stream ends with <conflict/>.
    assert_eq!(old.expect_stream_error().await, "conflict");
    // The old connection's destroy ran by now or will; it must not remove the new session.
    let server = s.running.server.clone();
    assert!(
        poll_until(WAIT, || {
            server.sessions.all().iter().all(|h| Some(h.id()) != old_id)
        })
        .await
    );
    assert_eq!(s.session_id("alice@localhost/home"), new_id);
    // Messages to the full JID reach the new connection.
    assert_session_works(&mut bob, &mut new).await;
    assert_session_works(&mut new, &mut bob).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_account_are_capped() {
    let mut config = test_config();
    config.c2s.max_sessions_per_account = 2;
    let s = server_with(config).await;
    let _one = s.login("alice", "wonderland", "one").await;
    let two = s.login("alice", "wonderland", "two").await;
    let mut third = authenticated(&s).await;
    // RFC 6120 §7.6.2.1: resource-constraint (type wait) beyond the cap.
    let r = bind_raw(&mut third, "<resource>three</resource>").await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("resource-constraint"),
        "{r}"
    );
    assert_eq!(error_type(&r).as_deref(), Some("wait"));
    assert!(!s.is_bound("alice@localhost/three"));
    // Replacing an existing resource is not a new session: allowed at the cap.
    let mut again = s.login("alice", "wonderland", "one").await;
    // Other accounts are not affected.
    let mut bob = s.login("bob", "builder", "b").await;
    assert_session_works(&mut bob, &mut again).await;
    // Once a slot frees up, the waiting connection can bind (the stream stayed usable).
    drop(two);
    assert!(poll_until(WAIT, || !s.is_bound("alice@localhost/two")).await);
    let jid = third
        .bind(Some("three"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(jid, "alice@localhost/three");
    s.stop().await;
}

/// How a test ends alice's "end" session.
#[derive(Clone, Copy, Debug)]
enum Ending {
    ClientClose,
    TcpDrop,
    Conflict,
    StreamError,
}

async fn ending(how: Ending, available: bool) {
    let s = server().await;
    let mut bob = s.login("bob", "builder", "b").await;
    let mut watch = s.login("alice", "wonderland", "watch").await;
    go_available(&mut watch).await;
    let mut end = s.login("alice", "wonderland", "end").await;
    if available {
        go_available(&mut end).await;
    }
    let end_jid = "alice@localhost/end";
    let end_id = s.session_id(end_jid);
    let mut replacement = None;
    match how {
        Ending::ClientClose => {
            end.send("</stream:stream>").await;
            // RFC 6120 §4.4: the server closes its stream in turn.
            assert_eq!(end.closed().await, Closed::Clean);
        }
        Ending::TcpDrop => drop(end),
        Ending::Conflict => {
            replacement = Some(s.login("alice", "wonderland", "end").await);
            assert_eq!(end.expect_stream_error().await, "conflict");
        }
        Ending::StreamError => {
            // RFC 6120 §8.1.2.1: a forged from is a stream error (invalid-from).
            end.send("<message from='bob@localhost/b' to='alice@localhost/watch'><body>x</body></message>")
                .await;
            assert_eq!(end.expect_stream_error().await, "invalid-from");
        }
    }
    // The session leaves the routing table (a replacement has another id).
    let server = s.running.server.clone();
    assert!(
        poll_until(WAIT, || server
            .sessions
            .all()
            .iter()
            .all(|h| Some(h.id()) != end_id))
        .await,
        "{how:?}: session still in the table"
    );
    // RFC 6121 §4.5.2: the server sends unavailable presence on the user's behalf to the
    // account's other available resources — once, and only if the session was available.
    let seen = drain_until_marker(&mut bob, &mut watch).await;
    let unavailable = seen
        .iter()
        .filter(|e| is_unavailable_from(e, end_jid))
        .count();
    assert_eq!(
        unavailable,
        usize::from(available),
        "{how:?}, available={available}: {seen:?}"
    );
    // The forged message was never delivered.
    assert!(
        !seen
            .iter()
            .any(|e| e.name() == "message" && e.attr("from") != bob.jid.as_deref()),
        "{seen:?}"
    );
    if let Some(mut r) = replacement {
        assert_session_works(&mut bob, &mut r).await;
    }
    assert_session_works(&mut watch, &mut bob).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_destroys_the_session() {
    ending(Ending::ClientClose, true).await;
    ending(Ending::ClientClose, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_drop_destroys_the_session() {
    ending(Ending::TcpDrop, true).await;
    ending(Ending::TcpDrop, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_destroys_the_old_session() {
    ending(Ending::Conflict, true).await;
    ending(Ending::Conflict, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_error_destroys_the_session() {
    ending(Ending::StreamError, true).await;
    ending(Ending::StreamError, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_is_already_available_is_not_reported_unavailable() {
    let s = server().await;
    let mut bob = s.login("bob", "builder", "b").await;
    let mut watch = s.login("alice", "wonderland", "watch").await;
    go_available(&mut watch).await;
    let mut old = s.login("alice", "wonderland", "home").await;
    go_available(&mut old).await;
    // The replacement binds and sends initial presence in one write: the server handles both
    // before the old connection task has run its destroy.
    let mut new = authenticated(&s).await;
    new.send(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>home</resource></bind></iq><presence/>",
    )
    .await;
    let r = new
        .wait_for(|e| e.attr("id") == Some("bind1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    new.jid = Some("alice@localhost/home".into());
    assert_eq!(old.expect_stream_error().await, "conflict");
    let new_id = s.session_id("alice@localhost/home");
    let server = s.running.server.clone();
    assert!(
        poll_until(WAIT, || server.sessions.count() == 3
            && server.sessions.all().iter().any(|h| Some(h.id()) == new_id))
        .await
    );
    // alice/home is online and available (the new connection). Whatever watch saw, the last
    // presence from alice/home must not be "unavailable" (RFC 6121 §4.5.2 applies to the old
    // session's end, which must not hide the new one).
    let seen = drain_until_marker(&mut bob, &mut watch).await;
    let last = seen
        .iter()
        .rev()
        .find(|e| e.is("presence", ns::CLIENT) && e.attr("from") == Some("alice@localhost/home"));
    assert!(
        last.is_none_or(|p| p.attr("type") != Some("unavailable")),
        "watch believes alice/home is offline: {seen:?}"
    );
    assert_session_works(&mut bob, &mut new).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_not_a_slow_reader() {
    let mut config = test_config();
    config.c2s.max_send_queue = 8;
    let s = server_with(config).await;
    let mut a = s.login("alice", "wonderland", "a").await;
    let mut b = s.login("bob", "builder", "b").await;
    // 200 pings in one write: far more answers than the queue holds, all produced by alice's
    // own connection while it reads. She reads them all afterwards; she is not a slow reader.
    let burst: String = (0..200)
        .map(|i| {
            format!(
                "<iq type='get' id='burst{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
        })
        .collect();
    a.send(&burst).await;
    for i in 0..200 {
        let id = format!("burst{i}");
        let r = a
            .next()
            .await
            .unwrap_or_else(|e| panic!("answer {i}: {e:#}"));
        // RFC 6120 §8.2.3: every get is answered; order is preserved on one stream.
        assert_eq!(r.attr("id"), Some(id.as_str()), "{r}");
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }
    assert!(s.is_bound("alice@localhost/a"));
    assert_session_works(&mut a, &mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_connection() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "a").await;
    let mut b = s.login("bob", "builder", "b").await;
    // Not yet encrypted.
    let mut plain = s.connect().await;
    plain.open(HOST).await;
    // In the middle of SASL.
    let mut mid = s.connect_tls().await;
    let ch = mid
        .auth_raw(
            "SCRAM-SHA-256",
            Some(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "n,,n=alice,r=abcdefgh",
            )),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ch.is("challenge", ns::SASL), "{ch}");
    let server = s.running.server.clone();
    let t = Instant::now();
    s.stop().await;
    // RFC 6120 §4.9.3.17: system-shutdown on every stream.
    for (name, c) in [
        ("alice", &mut a),
        ("bob", &mut b),
        ("plaintext", &mut plain),
        ("mid-SASL", &mut mid),
    ] {
        assert_eq!(
            c.closed().await,
            Closed::Error("system-shutdown".into()),
            "{name}"
        );
    }
    // Every connection finished within the grace period, and every session was destroyed.
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(server.sessions.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_and_the_sender_is_fine() {
    let mut config = test_config();
    config.c2s.max_send_queue = 8;
    let s = server_with(config).await;
    let mut bob = s.login("bob", "builder", "b").await;
    // alice connects with a small receive buffer, logs in, then never reads again.
    let mut slow = Client::connect_small_rcvbuf(s.addr, s.cert_pem_path(), 4096).await;
    slow.open(HOST).await;
    slow.starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    slow.open(HOST).await;
    slow.finish_login("alice", "wonderland", "slow").await;
    let slow_jid = "alice@localhost/slow";
    let body = "x".repeat(1000);
    let started = Instant::now();
    let mut slowest_ping = Duration::ZERO;
    // bob sends 5,000 messages, a few at a time with a ping in between, so that alice's queue
    // fills because she does not read, not merely because of one burst. Every ping must come
    // back quickly: alice's problem must not become bob's.
    for batch in 0..1250 {
        let mut chunk = String::new();
        for i in 0..4 {
            chunk.push_str(&format!(
                "<message to='{slow_jid}' type='chat' id='f{batch}-{i}'><body>{body}</body></message>"
            ));
        }
        let id = format!("p{batch}");
        chunk.push_str(&format!(
            "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        let t = Instant::now();
        bob.send(&chunk).await;
        // Errors for messages sent after alice is gone (service-unavailable) are skipped.
        bob.wait_for(|e| e.attr("id") == Some(id.as_str()))
            .await
            .unwrap_or_else(|e| panic!("bob's ping {batch}: {e:#}"));
        slowest_ping = slowest_ping.max(t.elapsed());
    }
    // A full queue disconnects the slow reader, promptly — not after c2s.send_timeout (180 s by
    // default) — so its memory stays bounded and senders never wait for it (ARCHITECTURE.md,
    // "Delivery and slow readers").
    assert!(
        poll_until(WAIT, || !s.is_bound(slow_jid)).await,
        "slow reader still bound after {:?}",
        started.elapsed()
    );
    assert!(slowest_ping < Duration::from_secs(2), "{slowest_ping:?}");
    // bob is fine: his session answers and can talk to someone else.
    let mut other = s.login("alice", "wonderland", "other").await;
    assert_session_works(&mut bob, &mut other).await;
    // When alice reads again, the stream ends (policy-violation if the server could still
    // write it, else just the end of the connection).
    match slow.closed().await {
        Closed::Error(e) => assert_eq!(e, "policy-violation"),
        Closed::Eof => {}
        Closed::Clean => panic!("slow reader closed cleanly"),
    }
    s.stop().await;
}
