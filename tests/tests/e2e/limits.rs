//! Abuse limits over real sockets (issue 4, item 4): the per-connection read rate, connections
//! per address, idle clients pinged and closed, failed logins throttled per account; and the
//! in-memory transport the fuzzer drives.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use canto_proto::sasl::Credentials;
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::{Element, StreamEvent};
use tokio::io::AsyncWriteExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s
}

fn body_of(e: &Element) -> Option<String> {
    e.get_child("body", ns::CLIENT).map(|b| b.text())
}

/// `alice` sends ~100 KB: 100 messages of 1 KB to herself, then a ping. Returns how long until
/// the ping's answer, after checking every message came back, in order, intact. Alice reads her
/// own messages as they are routed, so progress is visible; `progress_at` is how many had come
/// back after that much time.
async fn send_100kb(alice: &mut Client, progress_at: Duration) -> (Duration, usize) {
    let me = alice.full_jid();
    let filler = "x".repeat(1000);
    let mut data = String::new();
    for i in 0..100 {
        data.push_str(&format!(
            "<message to='{me}' type='chat' id='m{i}'><body>{i} {filler}</body></message>"
        ));
    }
    data.push_str("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(data.len() > 100_000);
    // A separate writer: the whole 100 KB is handed to the socket at once; only the server's
    // reading paces it.
    let mut w = alice.take_writer();
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(data.as_bytes()).await;
        let _ = w.flush().await;
        w
    });
    let mut seen = 0;
    let mut progress = None;
    loop {
        let e = alice
            .next()
            .await
            .unwrap_or_else(|e| panic!("after {seen} messages: {e:#}"));
        if progress.is_none() && t.elapsed() >= progress_at {
            progress = Some(seen);
        }
        if e.is("iq", ns::CLIENT) && e.attr("id") == Some("done") {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            break;
        }
        assert!(e.is("message", ns::CLIENT), "{e}");
        // Nothing is dropped or reordered by the throttling.
        let want = format!("{seen} {filler}");
        assert_eq!(body_of(&e).as_deref(), Some(want.as_str()));
        seen += 1;
    }
    let took = t.elapsed();
    assert_eq!(seen, 100);
    let _ = writer.await;
    (took, progress.unwrap_or(seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_is_slowed_to_the_configured_rate_and_others_are_unaffected() {
    let mut config = test_config();
    config.limits.c2s.rate = "10kb/s".into();
    config.limits.c2s.burst = "1s".into();
    let s = server_with(config.clone()).await;
    let mut alice = s.login("alice", "wonderland", "flood").await;
    let mut bob = s.login("bob", "builder", "calm").await;
    // bob pings every 100 ms while alice's 100 KB is read at 10 kB/s.
    let pinger = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut n = 0;
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            let t = Instant::now();
            let r = bob
                .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
                .await
                .unwrap_or_else(|e| panic!("bob's ping: {e:#}"));
            assert_eq!(r.attr("type"), Some("result"));
            worst = worst.max(t.elapsed());
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (worst, n, bob)
    });
    let (took, after_3s) = send_100kb(&mut alice, Duration::from_secs(3)).await;
    // A full bucket of 10,000 bytes, then 10,000 bytes a second: the ~101 KB take about 9 s.
    // (Both bounds are generous; unthrottled this takes well under a second.)
    assert!(took >= Duration::from_secs(7), "read too fast: {took:?}");
    assert!(took < Duration::from_secs(20), "read too slowly: {took:?}");
    // Gradual, not all at the end: after 3 s about 40 of the 100 messages are through.
    assert!(
        (10..=70).contains(&after_3s),
        "{after_3s} messages after 3 s"
    );
    let (worst, n, mut bob) = pinger.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 10, "bob pinged only {n} times");
    assert!(
        worst < Duration::from_millis(500),
        "bob's slowest ping {worst:?}"
    );
    // alice (who can only read now: her writer was handed off) still gets bob's messages.
    assert_session_works(&mut bob, &mut alice).await;

    // "unlimited" turns it off (for connections made after a reload, as SIGHUP would).
    config.limits.c2s.rate = "unlimited".into();
    s.running
        .server
        .reload_config(config)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut fast = s.login("alice", "wonderland", "fast").await;
    let (took, _) = send_100kb(&mut fast, Duration::from_secs(60)).await;
    assert!(took < Duration::from_secs(3), "unlimited took {took:?}");
    s.stop().await;
}

/// Opens a stream from `source`; `Ok` when the server answers with features, `Err(condition)`
/// when it refuses with a stream error.
async fn try_open(s: &TestServer, source: IpAddr) -> Result<Client, String> {
    let mut c = Client::connect_from_ip(s.addr, source, s.cert_pem_path()).await;
    c.send(&header(HOST)).await;
    let mut saw_header = false;
    loop {
        match c.next_event().await {
            Ok(StreamEvent::Header(_)) => saw_header = true,
            Ok(StreamEvent::Stanza(e)) if e.is("features", ns::STREAMS) => return Ok(c),
            Ok(StreamEvent::Stanza(e)) if e.is("error", ns::STREAMS) => {
                // RFC 6120 §4.9.1.2: a stream header precedes the error.
                assert!(saw_header, "stream error without a header");
                let cond = e
                    .children()
                    .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
                    .map(|c| c.name().to_string())
                    .unwrap_or_default();
                // And the stream is closed after it.
                assert!(matches!(c.next_event().await, Ok(StreamEvent::Close)));
                return Err(cond);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 3;
    config.limits.connection_limit_exempt = vec!["127.0.0.3/32".into()];
    let s = server_with(config).await;
    let a = ip("127.0.0.1");
    // bob's session is one of the three connections from 127.0.0.1.
    let mut bob = s.login("bob", "builder", "b").await;
    let mut open = Vec::new();
    for i in 0..2 {
        open.push(
            try_open(&s, a)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    // The fourth from the same address: policy-violation (RFC 6120 §4.9.3.14).
    assert_eq!(
        try_open(&s, a).await.err().as_deref(),
        Some("policy-violation")
    );
    // A direct TLS connection counts against the same cap and is closed before any handshake.
    let refused = Client::connect_direct_tls(s.tls_addr, s.cert_pem_path()).await;
    assert!(refused.is_err(), "direct TLS over the cap was served");
    // Another address is not affected; an exempt one has no cap.
    let other = try_open(&s, ip("127.0.0.2"))
        .await
        .unwrap_or_else(|e| panic!("127.0.0.2: {e}"));
    let mut exempt = Vec::new();
    for i in 0..5 {
        exempt.push(
            try_open(&s, ip("127.0.0.3"))
                .await
                .unwrap_or_else(|e| panic!("exempt connection {i}: {e}")),
        );
    }
    // One of the three leaves: a new connection from the address is accepted again.
    let mut leaving = open.remove(0);
    leaving.send("</stream:stream>").await;
    assert_eq!(leaving.closed().await, Closed::Clean);
    drop(leaving);
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match try_open(&s, a).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e, "policy-violation");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    };
    // The cap is full again…
    assert_eq!(
        try_open(&s, a).await.err().as_deref(),
        Some("policy-violation")
    );
    // …and the new one is a full connection: log in over it and talk to bob.
    again
        .starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    again.open(HOST).await;
    again.finish_login("alice", "wonderland", "again").await;
    assert_session_works(&mut again, &mut bob).await;
    drop((open, other, exempt));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_from_the_cap_by_default() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 2;
    let s = server_with(config).await;
    let mut conns = Vec::new();
    for i in 0..6 {
        conns.push(
            try_open(&s, ip("127.0.0.1"))
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    s.stop().await;
}

fn is_server_ping(e: &Element, to: &str) -> bool {
    e.is("iq", ns::CLIENT)
        && e.attr("type") == Some("get")
        && e.attr("from") == Some(HOST)
        && e.attr("to") == Some(to)
        && e.has_child("ping", ns::PING)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_pinged_and_the_silent_one_is_closed() {
    let mut config = test_config();
    config.c2s.idle_timeout = 2;
    config.c2s.ping_timeout = 1;
    let s = server_with(config).await;
    let mut good = s.login("alice", "wonderland", "good").await;
    let mut silent = s.login("alice", "wonderland", "silent").await;
    let mut chatty = s.login("bob", "builder", "chatty").await;
    for c in [&mut good, &mut silent] {
        c.send("<presence/>").await;
        assert_alive(c).await;
    }
    let silent_jid = silent.full_jid();
    let quiet_since = Instant::now();
    // silent reads (its socket is drained) but never sends a byte.
    let silent_task =
        tokio::spawn(async move { (silent.stream_end().await, quiet_since.elapsed()) });
    // chatty sends a whitespace keepalive every 500 ms: any byte resets the idle timer, so it
    // is never pinged.
    let chatty_task = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_millis(4500);
        let mut pinged = false;
        while Instant::now() < end {
            chatty.send(" ").await;
            if !chatty.nothing_within(Duration::from_millis(500)).await {
                let e = chatty.next().await.unwrap_or_else(|e| panic!("{e:#}"));
                pinged |= e.has_child("ping", ns::PING);
            }
        }
        (pinged, chatty)
    });
    // good answers every ping and sees silent go unavailable.
    let good_jid = good.full_jid();
    let mut pings = 0;
    let mut unavailable_after = None;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(5500) || unavailable_after.is_none() {
        if good.nothing_within(Duration::from_millis(200)).await {
            continue;
        }
        let e = good.next().await.unwrap_or_else(|e| panic!("good: {e:#}"));
        if is_server_ping(&e, &good_jid) {
            pings += 1;
            let id = e.attr("id").unwrap_or_default().to_string();
            // XEP-0199 §4.2: the client answers with a result.
            good.send(&format!("<iq type='result' id='{id}' to='{HOST}'/>"))
                .await;
        } else if e.is("presence", ns::CLIENT)
            && e.attr("type") == Some("unavailable")
            && e.attr("from") == Some(silent_jid.as_str())
        {
            unavailable_after = Some(t.elapsed());
        }
        assert!(t.elapsed() < WAIT, "silent never went unavailable");
    }
    // Pinged about every 2 s of silence (at ~2 s and ~4 s), answered, still here.
    assert!(pings >= 2, "good was pinged {pings} times");
    assert!(s.is_bound(&good_jid));
    assert_alive(&mut good).await;

    let (end, silent_for) = silent_task.await.unwrap_or_else(|e| panic!("{e}"));
    // A ping first, then connection-timeout (RFC 6120 §4.9.3.4) a ping_timeout later.
    assert!(
        end.elements.iter().any(|e| is_server_ping(e, &silent_jid)),
        "no ping before the close: {:?}",
        end.elements
    );
    assert_eq!(end.closed, Closed::Error("connection-timeout".into()));
    assert!(silent_for >= Duration::from_millis(2800), "{silent_for:?}");
    assert!(silent_for < Duration::from_secs(7), "{silent_for:?}");
    // The session ended through destroy_session: out of the table, unavailable broadcast.
    assert!(!s.is_bound(&silent_jid));
    assert!(unavailable_after.is_some());

    let (pinged, mut chatty) = chatty_task.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!pinged, "a client sending keepalives was pinged");
    assert_alive(&mut chatty).await;
    s.stop().await;
}

async fn timed_plain_failure_from(s: &TestServer, source: IpAddr, user: &str) -> Duration {
    let mut c = Client::connect_from_ip(s.addr, source, s.cert_pem_path()).await;
    c.open(HOST).await;
    let raw = format!("\0{user}\0not-the-password");
    let t = Instant::now();
    let e = c
        .auth_raw(
            "PLAIN",
            Some(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                raw,
            )),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        sasl_failure_condition(&e).as_deref(),
        Some("not-authorized"),
        "{e}"
    );
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_at_one_account_are_slowed_from_any_address() {
    let mut config = test_config();
    config.c2s.require_encryption = false;
    config.limits.auth_failures_before_delay = 1000;
    config.limits.auth_failures_per_account_before_delay = 2;
    config.limits.auth_max_delay_ms = 1000;
    let s = server_with(config).await;
    let mut w1 = s.login("bob", "builder", "w1").await;
    let mut w2 = s.login("bob", "builder", "w2").await;
    // Each guess at alice from a fresh address (distributed guessing): the per-address count
    // never grows, the per-account one does.
    let mut times = Vec::new();
    for i in 0..4 {
        times.push(timed_plain_failure_from(&s, ip(&format!("127.0.1.{}", i + 1)), "alice").await);
    }
    assert!(times[0] < Duration::from_millis(200), "{times:?}");
    assert!(times[1] < Duration::from_millis(200), "{times:?}");
    assert!(times[2] >= Duration::from_millis(200), "{times:?}");
    assert!(times[3] >= Duration::from_millis(400), "{times:?}");
    // Another account is not slowed by alice's record, even from an address alice's guesses
    // came from.
    let other = timed_plain_failure_from(&s, ip("127.0.1.1"), "bob").await;
    assert!(
        other < Duration::from_millis(200),
        "bob's failure {other:?}"
    );
    // An account that does not exist is counted the same way (no timing tells it apart).
    let mut ghost = Vec::new();
    for i in 0..3 {
        ghost.push(timed_plain_failure_from(&s, ip(&format!("127.0.2.{}", i + 1)), "nobody").await);
    }
    assert!(ghost[2] >= Duration::from_millis(200), "{ghost:?}");
    // alice's own correct password is not delayed…
    let t = Instant::now();
    let mut c = Client::connect_from_ip(s.addr, ip("127.0.1.9"), s.cert_pem_path()).await;
    c.open(HOST).await;
    c.auth_plain("", "alice", "wonderland")
        .await
        .unwrap_or_else(|e| panic!("alice: {e:#}"));
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    c.open(HOST).await;
    c.bind(Some("ok")).await.unwrap_or_else(|e| panic!("{e:#}"));
    // …and does not wipe the record: the next guess waits longer still (fifth failure: 800 ms).
    let next = timed_plain_failure_from(&s, ip("127.0.1.10"), "alice").await;
    assert!(
        next >= Duration::from_millis(800),
        "after a success: {next:?}"
    );
    assert_session_works(&mut c, &mut w1).await;
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

/// A client over `tokio::io::duplex`, served by `canto_net::serve_memory`.
fn memory_client(ctx: &std::sync::Arc<canto_net::C2sContext>) -> Client {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(canto_net::serve_memory(ctx.clone(), theirs, peer));
    Client::over_stream(Box::new(ours))
}

fn memory_context() -> std::sync::Arc<canto_net::C2sContext> {
    canto_net::c2s::fuzz_context(canto_net::c2s::memory_config(), &canto_modules::all())
        .unwrap_or_else(|e| panic!("context: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_runs_a_plain_login_and_a_ping() {
    let ctx = memory_context();
    ctx.server
        .storage
        .accounts
        .create(
            HOST,
            "alice",
            &Credentials::from_password("wonderland", 4096),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = memory_client(&ctx);
    c.open(HOST).await;
    // No TLS on a pipe: no STARTTLS offered, SASL (PLAIN too) offered in the clear.
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    assert!(!f.has_child("starttls", ns::TLS), "{f}");
    assert!(c.mechanisms().iter().any(|m| m == "PLAIN"), "{f}");
    c.auth_plain("", "alice", "wonderland")
        .await
        .unwrap_or_else(|e| panic!("auth: {e:#}"));
    c.open(HOST).await;
    let jid = c
        .bind(Some("pipe"))
        .await
        .unwrap_or_else(|e| panic!("bind: {e:#}"));
    assert_eq!(jid, "alice@localhost/pipe");
    assert!(ctx.server.sessions.get(&full_jid(&jid)).is_some());
    let pong = c
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("ping: {e:#}"));
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    c.send("</stream:stream>").await;
    assert_eq!(c.closed().await, Closed::Clean);
    // Ended through destroy_session like a socket.
    assert!(poll_until(WAIT, || ctx.server.sessions.get(&full_jid(&jid)).is_none()).await);

    // STARTTLS on the pipe is refused as on a listener without TLS (RFC 6120 §5.4.2.2).
    let mut c = memory_client(&ctx);
    c.open(HOST).await;
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.is("failure", ns::TLS), "{e}");
    assert_eq!(c.closed().await, Closed::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bytes_over_the_memory_transport_always_end() {
    let ctx = memory_context();
    let inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\x00\xff\xfe garbage".to_vec(),
        header(HOST).into_bytes(),
        format!("{}<iq type='get'/>", header(HOST)).into_bytes(),
        format!(
            "{}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
            header(HOST)
        )
        .into_bytes(),
        format!("{}<a><b><c>", header(HOST)).into_bytes(),
        format!("{}{}", header(HOST), "<x/>".repeat(10_000)).into_bytes(),
        (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    ];
    for input in inputs {
        let (mut ours, theirs) = tokio::io::duplex(4096);
        let peer: SocketAddr = "192.0.2.8:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(canto_net::serve_memory(ctx.clone(), theirs, peer));
        let (mut r, mut w) = tokio::io::split(&mut ours);
        let write = async {
            let _ = w.write_all(&input).await;
            let _ = w.shutdown().await;
        };
        let read = async {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut sink).await;
        };
        let all = async {
            tokio::join!(write, read);
        };
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .unwrap_or_else(|_| panic!("hung on {} bytes", input.len()));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("task did not end"))
            .unwrap_or_else(|e| panic!("task panicked: {e}"));
    }
    assert_eq!(ctx.server.sessions.count(), 0);
}
