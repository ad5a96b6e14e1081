//! STARTTLS, direct TLS and SASL over real sockets (RFC 6120 §5, §6; PLAIN RFC 4616, SCRAM
//! RFC 5802 / RFC 7677, channel binding RFC 9266; XEP-0368). After every bad case a pair of
//! already logged-in "witness" users must still work.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use canto_proto::sasl::HashAlgo;
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

/// Every SASL mechanism, in the order RFC 6120 §6.4.1 wants (strongest first).
const ALL_MECHS: [&str; 5] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
];

/// A server with alice, bob and two logged-in witnesses. The per-address back-off is pushed out
/// of reach so tests with several deliberate failures stay fast (the back-off has its own test).
async fn server() -> (TestServer, Client, Client) {
    let mut c = test_config();
    c.limits.auth_failures_before_delay = 1000;
    server_with(c).await
}

async fn server_with(config: canto_core::Config) -> (TestServer, Client, Client) {
    let s = TestServer::with_config(config).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s.add_user("w1", "witness-one").await;
    s.add_user("w2", "witness-two").await;
    let w1 = s.login("w1", "witness-one", "w").await;
    let w2 = s.login("w2", "witness-two", "w").await;
    (s, w1, w2)
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    B64.encode(format!("{authzid}\0{user}\0{password}"))
}

/// `<auth/>` on a fresh STARTTLS connection; returns the answer and the connection.
async fn auth_once(s: &TestServer, mech: &str, payload: &str) -> (Element, Client) {
    let mut c = s.connect_tls().await;
    let e = c
        .auth_raw(mech, Some(payload))
        .await
        .unwrap_or_else(|e| panic!("{mech}: {e:#}"));
    (e, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_tls_only_required_starttls_is_offered_and_auth_is_refused() {
    let (s, mut w1, mut w2) = server().await;
    let mut c = s.connect().await;
    c.open(HOST).await;
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    // RFC 6120 §5.3.1, §5.4.1: STARTTLS is mandatory-to-negotiate and says so.
    let st = f
        .get_child("starttls", ns::TLS)
        .unwrap_or_else(|| panic!("no starttls in {f}"));
    assert!(st.has_child("required", ns::TLS), "{f}");
    // RFC 6120 §13.8 / §6.4.1: no mechanism is offered on a stream that must be encrypted first.
    assert!(!f.has_child("mechanisms", ns::SASL), "{f}");
    assert!(c.mechanisms().is_empty());
    // RFC 6120 §6.5.4: SASL before TLS is encryption-required, PLAIN or SCRAM alike.
    for (mech, payload) in [
        ("PLAIN", plain("", "alice", "wonderland")),
        ("SCRAM-SHA-256", B64.encode("n,,n=alice,r=abcdefgh")),
    ] {
        let e = c
            .auth_raw(mech, Some(&payload))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            sasl_failure_condition(&e).as_deref(),
            Some("encryption-required"),
            "{mech}: {e}"
        );
    }
    // The refusal left the connection usable: STARTTLS, then everything is offered, strongest
    // first (RFC 6120 §6.4.1), with the channel-binding types (XEP-0440).
    c.starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    c.open(HOST).await;
    assert_eq!(c.mechanisms(), ALL_MECHS);
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    assert!(
        !f.has_child("starttls", ns::TLS),
        "STARTTLS offered twice: {f}"
    );
    let cb: Vec<String> = f
        .get_child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .map(|e| {
            e.children()
                .filter_map(|c| c.attr("type").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(cb.iter().any(|t| t == "tls-exporter"), "{f}");
    c.finish_login("alice", "wonderland", "r").await;
    assert_eq!(c.jid.as_deref(), Some("alice@localhost/r"));
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_encryption_plain_and_scram_work_in_plaintext() {
    let mut config = test_config();
    config.c2s.require_encryption = false;
    let (s, mut w1, mut w2) = server_with(config).await;
    let mut c = s.connect().await;
    c.open(HOST).await;
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    // STARTTLS is still offered, but not required (RFC 6120 §5.3.1).
    let st = f
        .get_child("starttls", ns::TLS)
        .unwrap_or_else(|| panic!("{f}"));
    assert!(!st.has_child("required", ns::TLS), "{f}");
    // No channel binding without TLS: no -PLUS (RFC 5802 §6).
    assert_eq!(c.mechanisms(), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]);
    c.auth_plain("", "alice", "wonderland")
        .await
        .unwrap_or_else(|e| panic!("PLAIN in plaintext: {e:#}"));
    c.open(HOST).await;
    let jid = c
        .bind(Some("plain"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(jid, "alice@localhost/plain");

    // SCRAM in plaintext too, with the server signature checked by the client.
    let mut d = s.connect().await;
    d.open(HOST).await;
    d.auth_scram(HashAlgo::Sha1, "bob", "builder", None)
        .await
        .unwrap_or_else(|e| panic!("SCRAM-SHA-1 in plaintext: {e:#}"));
    d.open(HOST).await;
    d.bind(Some("scram"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_session_works(&mut c, &mut d).await;

    // RFC 5802 §6: "y" (client could bind, thinks the server cannot) is fine when no -PLUS was
    // offered: the exchange continues with a challenge.
    let mut e = s.connect().await;
    e.open(HOST).await;
    let ch = e
        .auth_raw("SCRAM-SHA-256", Some(&B64.encode("y,,n=alice,r=abcdefgh")))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ch.is("challenge", ns::SASL), "{ch}");
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_after_starttls_are_never_processed() {
    let (s, mut w1, mut w2) = server().await;
    let mut c = s.connect().await;
    c.open(HOST).await;
    // RFC 6120 §5.4.3.3: data after <starttls/> and before the handshake must be discarded.
    // Both stanzas in one write with <starttls/>: if processed, the iq would be answered (or end
    // the stream with not-authorized) and w2 would get the message.
    c.send(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
         <iq type='get' id='piped' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>\
         <message to='w2@localhost/w' type='chat'><body>piped</body></message>",
    )
    .await;
    let p = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.is("proceed", ns::TLS), "{p}");
    match c.upgrade_tls().await {
        Err(_) => {
            // The handshake failed on the stray bytes: also acceptable, as long as the
            // server is fine.
        }
        Ok(()) => {
            c.open(HOST).await;
            c.finish_login("alice", "wonderland", "piped").await;
            let id = c.id();
            c.send(&format!(
                "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
            loop {
                let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
                assert_ne!(e.attr("id"), Some("piped"), "pipelined iq answered: {e}");
                if e.attr("id") == Some(id.as_str()) {
                    break;
                }
            }
        }
    }
    // w2's first message must be w1's, not the pipelined one.
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_on_an_encrypted_stream_fails_and_closes() {
    let (s, mut w1, mut w2) = server().await;
    // RFC 6120 §5.4.2.2: <failure xmlns='…xmpp-tls'/>, then the stream is closed.
    let mut c = s.connect_tls().await;
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let f = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.is("failure", ns::TLS), "{f}");
    assert_eq!(c.closed().await, Closed::Clean);

    // The same on the direct TLS port (XEP-0368), where STARTTLS is never offered.
    let mut d = Client::connect_direct_tls(s.tls_addr, s.cert_pem_path())
        .await
        .unwrap_or_else(|e| panic!("direct TLS: {e:#}"));
    d.open(HOST).await;
    d.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let f = d.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.is("failure", ns::TLS), "{f}");
    assert_eq!(d.closed().await, Closed::Clean);

    // After authentication and binding it ends the stream too, and the session is destroyed.
    let mut a = s.login("alice", "wonderland", "x").await;
    a.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_ne!(a.closed().await, Closed::Eof, "no goodbye on the stream");
    assert!(poll_until(WAIT, || !s.is_bound("alice@localhost/x")).await);
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_offers_no_starttls_and_logs_in() {
    let (s, mut w1, _w2) = server().await;
    let mut c = Client::connect_direct_tls(s.tls_addr, s.cert_pem_path())
        .await
        .unwrap_or_else(|e| panic!("direct TLS: {e:#}"));
    c.open(HOST).await;
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    // XEP-0368 §3: the stream is already encrypted.
    assert!(!f.has_child("starttls", ns::TLS), "{f}");
    assert_eq!(c.mechanisms(), ALL_MECHS);
    // Channel binding works on direct TLS as well (RFC 9266 tls-exporter).
    c.auth_scram_cb(HashAlgo::Sha256, "alice", "wonderland", true, None)
        .await
        .unwrap_or_else(|e| panic!("SCRAM-SHA-256-PLUS: {e:#}"));
    c.open(HOST).await;
    c.bind(Some("direct"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_session_works(&mut c, &mut w1).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scram_variant_succeeds_with_a_verified_server_signature() {
    let (s, mut w1, _w2) = server().await;
    // RFC 5802 §5, RFC 7677, RFC 9266: the client checks v= (auth_scram_cb bails on a
    // mismatch), so success here means the server proved it knows the password too.
    for (i, (algo, plus)) in [
        (HashAlgo::Sha1, false),
        (HashAlgo::Sha256, false),
        (HashAlgo::Sha256, true),
        (HashAlgo::Sha1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = s.connect_tls().await;
        assert!(c.exporter.is_some(), "TLS 1.3 exporter expected");
        c.auth_scram_cb(algo, "alice", "wonderland", plus, None)
            .await
            .unwrap_or_else(|e| panic!("{algo:?} plus={plus}: {e:#}"));
        c.open(HOST).await;
        let jid = c
            .bind(Some(&format!("v{i}")))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(jid, format!("alice@localhost/v{i}"));
        assert_session_works(&mut c, &mut w1).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_succeeds_with_no_or_own_authzid() {
    let (s, mut w1, _w2) = server().await;
    for (authzid, res) in [
        ("", "a"),
        ("alice@localhost", "b"),
        ("Alice@LOCALHOST", "c"),
    ] {
        let mut c = s.connect_tls().await;
        // RFC 4616 §2, RFC 6120 §6.3.8: an authzid equal to the account's own bare JID is fine.
        c.auth_plain(authzid, "alice", "wonderland")
            .await
            .unwrap_or_else(|e| panic!("authzid {authzid:?}: {e:#}"));
        c.open(HOST).await;
        let jid = c.bind(Some(res)).await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(jid, format!("alice@localhost/{res}"));
        assert_session_works(&mut c, &mut w1).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_with_another_accounts_authzid_never_binds_as_it() {
    let (s, mut w1, mut w2) = server().await;
    let (e, mut c) = auth_once(&s, "PLAIN", &plain("bob@localhost", "alice", "wonderland")).await;
    // RFC 6120 §6.5.6: proxy authorization is refused.
    assert_eq!(
        sasl_failure_condition(&e).as_deref(),
        Some("invalid-authzid"),
        "{e}"
    );
    // The stream is still unauthenticated: binding (as anyone) is a stream error (RFC 6120 §7.2).
    c.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>stolen</resource></bind></iq>",
    )
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    assert!(!s.is_bound("bob@localhost/stolen"));
    assert!(!s.is_bound("alice@localhost/stolen"));
    assert!(
        s.running
            .server
            .sessions
            .resources(&full_jid("bob@localhost/x").to_bare())
            .is_empty()
    );
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_failures_name_the_right_condition() {
    let (s, mut w1, mut w2) = server().await;
    for (payload, want, why) in [
        // RFC 6120 §6.5.5 (incorrect-encoding): not base64.
        ("@@@".to_string(), "incorrect-encoding", "bad base64"),
        // RFC 6120 §6.5.8, RFC 4616 §2: no NUL separators.
        (
            B64.encode("alicewonderland"),
            "malformed-request",
            "no NULs",
        ),
        (
            B64.encode("\0alice\0wonder\0land"),
            "malformed-request",
            "four fields",
        ),
        // RFC 6120 §6.5.10: wrong password and unknown account look the same.
        (
            plain("", "alice", "wrong"),
            "not-authorized",
            "wrong password",
        ),
        (
            plain("", "nobody", "wonderland"),
            "not-authorized",
            "unknown user",
        ),
    ] {
        let (e, mut c) = auth_once(&s, "PLAIN", &payload).await;
        assert_eq!(
            sasl_failure_condition(&e).as_deref(),
            Some(want),
            "{why}: {e}"
        );
        // A failure is not the end of the connection (RFC 6120 §6.4.5): a retry works.
        c.auth_plain("", "bob", "builder")
            .await
            .unwrap_or_else(|e| panic!("retry after {why}: {e:#}"));
        assert_session_works(&mut w1, &mut w2).await;
    }
    s.stop().await;
}

/// Flips one bit of the proof in a client-final message.
fn bad_proof(client_final: String) -> String {
    let (head, proof) = client_final
        .rsplit_once(",p=")
        .unwrap_or_else(|| panic!("no proof in {client_final}"));
    let mut p = B64.decode(proof).unwrap_or_default();
    p[0] ^= 1;
    format!("{head},p={}", B64.encode(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_tampering_is_not_authorized_and_reveals_no_server_final() {
    let (s, mut w1, mut w2) = server().await;
    type Tamper = fn(String) -> String;
    let cases: [(&str, bool, Tamper); 4] = [
        // RFC 5802 §5.1: wrong ClientProof.
        ("wrong proof", false, bad_proof),
        // RFC 5802 §5.1: the nonce must be exactly the server's.
        ("changed nonce", false, |m| m.replacen(",r=", ",r=x", 1)),
        ("truncated nonce", false, |m| {
            let (c, rest) = m.split_once(",r=").unwrap_or_default();
            let (_, proof) = rest.split_once(',').unwrap_or_default();
            format!("{c},r=short,{proof}")
        }),
        // RFC 5802 §6, RFC 9266: -PLUS with channel-binding data of another TLS connection.
        ("foreign channel binding", true, |m| {
            let (_, rest) = m.split_once(',').unwrap_or_default();
            let mut cb = b"p=tls-exporter,,".to_vec();
            cb.extend_from_slice(&[7u8; 32]);
            format!("c={},{rest}", B64.encode(cb))
        }),
    ];
    for (why, plus, tamper) in cases {
        let mut c = s.connect_tls().await;
        let tamper: &dyn Fn(String) -> String = &tamper;
        let r = c
            .auth_scram_cb(HashAlgo::Sha256, "alice", "wonderland", plus, Some(tamper))
            .await;
        // A failure, not a <success/> carrying v= (auth_scram_cb would have returned Ok or a
        // signature mismatch).
        let err = r.err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("sasl failure: not-authorized"),
            "{why}"
        );
        assert_session_works(&mut w1, &mut w2).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_downgrade_and_bad_channel_binding_requests_fail() {
    let (s, mut w1, mut w2) = server().await;
    for (mech, first, want, why) in [
        // RFC 5802 §6: "y" with a non-PLUS mechanism while -PLUS was offered = downgrade attack.
        (
            "SCRAM-SHA-256",
            "y,,n=alice,r=abcdefgh",
            "not-authorized",
            "y with PLUS offered",
        ),
        (
            "SCRAM-SHA-1",
            "y,,n=alice,r=abcdefgh",
            "not-authorized",
            "y with PLUS offered",
        ),
        // A binding request with a mechanism that carries none.
        (
            "SCRAM-SHA-256",
            "p=tls-exporter,,n=alice,r=abcdefgh",
            "not-authorized",
            "p= on a non-PLUS mechanism",
        ),
        // tls-unique is not defined for TLS 1.3 (RFC 9266 §3): unsupported binding type.
        (
            "SCRAM-SHA-256-PLUS",
            "p=tls-unique,,n=alice,r=abcdefgh",
            "not-authorized",
            "tls-unique",
        ),
    ] {
        let (e, _c) = auth_once(&s, mech, &B64.encode(first)).await;
        assert_eq!(
            sasl_failure_condition(&e).as_deref(),
            Some(want),
            "{why}: {e}"
        );
        assert_session_works(&mut w1, &mut w2).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_mechanism_stray_response_and_abort() {
    let (s, mut w1, mut w2) = server().await;
    let mut c = s.connect_tls().await;
    // RFC 6120 §6.5.7: a mechanism not offered. Names are case-sensitive (RFC 4422 §3.1).
    for mech in ["DIGEST-MD5", "ANONYMOUS", "X-FOO", "scram-sha-256"] {
        let e = c
            .auth_raw(mech, Some("="))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            sasl_failure_condition(&e).as_deref(),
            Some("invalid-mechanism"),
            "{mech}: {e}"
        );
    }
    // RFC 6120 §6.4.4: <abort/> in the middle of an exchange.
    let ch = c
        .auth_raw("SCRAM-SHA-256", Some(&B64.encode("n,,n=alice,r=abcdefgh")))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ch.is("challenge", ns::SASL), "{ch}");
    c.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await;
    let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        sasl_failure_condition(&e).as_deref(),
        Some("aborted"),
        "{e}"
    );
    // The aborted exchange is gone: a <response/> now is out of order (Prosody: not-authorized).
    c.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>")
        .await;
    let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        sasl_failure_condition(&e).as_deref(),
        Some("not-authorized"),
        "{e}"
    );
    // And on a fresh connection with no <auth/> at all.
    let mut d = s.connect_tls().await;
    d.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>")
        .await;
    let e = d.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        sasl_failure_condition(&e).as_deref(),
        Some("not-authorized"),
        "{e}"
    );
    // None of that used up the connection: a proper login still works on it.
    c.finish_login("alice", "wonderland", "after-abort").await;
    assert_session_works(&mut c, &mut w1).await;
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_third_failure_ends_the_stream_with_policy_violation() {
    let (s, mut w1, mut w2) = server().await;
    assert_eq!(s.running.server.config().limits.auth_retries, 3);
    let mut c = s.connect_tls().await;
    for i in 1..=3 {
        let e = c
            .auth_raw("PLAIN", Some(&plain("", "alice", "guess")))
            .await
            .unwrap_or_else(|e| panic!("attempt {i}: {e:#}"));
        assert_eq!(
            sasl_failure_condition(&e).as_deref(),
            Some("not-authorized"),
            "{e}"
        );
    }
    // RFC 6120 §6.4.5: a limited number of retries, then the connection is closed.
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

async fn timed_plain_failure(c: &mut Client) -> Duration {
    let t = Instant::now();
    let e = c
        .auth_raw("PLAIN", Some(&plain("", "alice", "guess")))
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
async fn failures_from_one_address_are_slowed_but_others_can_still_log_in() {
    let mut config = test_config();
    config.limits.auth_failures_before_delay = 1;
    config.limits.auth_max_delay_ms = 400;
    let (s, mut w1, mut w2) = server_with(config).await;
    let mut c = s.connect_tls().await;
    // First failure: within the allowance, answered at once.
    let first = timed_plain_failure(&mut c).await;
    // Second: 200 ms added. The back-off is per address (XEP-0205 §3 prefers per-address limits
    // to locking accounts), a milder form of ejabberd's mod_fail2ban (20 failures, then a 1 h
    // ban) and of Prosody's community mod_limit_auth (a per-address tarpit).
    let second = timed_plain_failure(&mut c).await;
    assert!(
        second >= Duration::from_millis(150),
        "second failure after {second:?} (first {first:?})"
    );
    // The count is per address, not per connection: a new connection is slowed more (capped at
    // auth_max_delay_ms).
    let mut d = s.connect_tls().await;
    let third = timed_plain_failure(&mut d).await;
    assert!(
        third >= Duration::from_millis(350),
        "third failure after {third:?}"
    );
    assert!(third < Duration::from_secs(3), "cap ignored: {third:?}");

    // Another user on the same machine is not locked out: a correct login goes through
    // undelayed (only failures are slowed) and works.
    let t = Instant::now();
    let mut b = s.connect_tls().await;
    b.auth_scram(HashAlgo::Sha256, "bob", "builder", None)
        .await
        .unwrap_or_else(|e| panic!("bob after the failures: {e:#}"));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(350),
        "success delayed: {took:?}"
    );
    b.open(HOST).await;
    b.bind(Some("b")).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_session_works(&mut b, &mut w1).await;
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_on_another_host_after_auth_is_not_authorized() {
    let (s, mut w1, mut w2) = server().await;
    s.add_user_on(HOST2, "alice", "other-password").await;
    let mut c = s.connect_tls().await;
    c.auth_scram(HashAlgo::Sha256, "alice", "wonderland", None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // CVE-2018-10847: authenticated as alice@localhost, the restart names example.test.
    c.restart(HOST2).await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    assert!(
        s.running
            .server
            .sessions
            .resources(&full_jid("alice@example.test/x").to_bare())
            .is_empty()
    );
    // The same host is fine.
    let mut d = s.connect_tls().await;
    d.finish_login("alice", "wonderland", "same-host").await;
    assert_session_works(&mut d, &mut w1).await;
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}

/// A SCRAM exchange at `user` with `password` on a fresh connection: the salt and iteration
/// count the server offered, and its answer to the client-final message.
async fn scram_attempt(
    s: &TestServer,
    algo: HashAlgo,
    user: &str,
    password: &str,
) -> (Vec<u8>, u32, Element) {
    let mech = match algo {
        HashAlgo::Sha1 => "SCRAM-SHA-1",
        HashAlgo::Sha256 => "SCRAM-SHA-256",
    };
    let mut c = s.connect_tls().await;
    let bare = format!("n={user},r=clientnonce");
    let ch = c
        .auth_raw(mech, Some(&B64.encode(format!("n,,{bare}"))))
        .await
        .unwrap_or_else(|e| panic!("{mech}: {e:#}"));
    assert!(ch.is("challenge", ns::SASL), "{ch}");
    let sf = String::from_utf8(B64.decode(ch.text().trim()).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut nonce, mut salt, mut iters) = ("", Vec::new(), 0);
    for attr in sf.split(',') {
        if let Some(v) = attr.strip_prefix("r=") {
            nonce = v;
        } else if let Some(v) = attr.strip_prefix("s=") {
            salt = B64.decode(v).unwrap_or_default();
        } else if let Some(v) = attr.strip_prefix("i=") {
            iters = v.parse().unwrap_or_else(|e| panic!("{sf}: {e}"));
        }
    }
    let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
    let auth_message = format!("{bare},{sf},{without_proof}");
    let (proof, _) = scram_client_proof(algo, password, &salt, iters, auth_message.as_bytes());
    let client_final = format!("{without_proof},p={}", B64.encode(proof));
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client_final)
    ))
    .await;
    let answer = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    (salt, iters, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_account_looks_like_a_real_one_with_a_wrong_password() {
    let mut config = test_config();
    config.limits.auth_failures_before_delay = 1000;
    config.limits.scram_iterations = 5000;
    let (s, mut w1, mut w2) = server_with(config).await;
    let creds = canto_proto::sasl::Credentials::from_password("pc", 5000);
    s.storage
        .accounts
        .create(HOST, "carol", &creds)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for algo in [HashAlgo::Sha1, HashAlgo::Sha256] {
        let (real_salt, real_iters, wrong) = scram_attempt(&s, algo, "carol", "nope").await;
        assert_eq!(real_salt, creds.keys(algo).salt);
        let (salt, iters, unknown) = scram_attempt(&s, algo, "nobody", "pc").await;
        // The iteration count real accounts get, a salt of the same length …
        assert_eq!((iters, real_iters), (5000, 5000), "{algo:?}");
        assert_eq!(salt.len(), real_salt.len(), "{algo:?}");
        // … the same failure as a wrong password …
        assert_eq!(
            sasl_failure_condition(&wrong).as_deref(),
            Some("not-authorized")
        );
        assert_eq!(unknown.to_string(), wrong.to_string(), "{algo:?}");
        // … and the same salt on the next attempt, as a stored one would be.
        let (again, _, _) = scram_attempt(&s, algo, "nobody", "other").await;
        assert_eq!(again, salt, "{algo:?}");
    }
    assert_session_works(&mut w1, &mut w2).await;
    s.stop().await;
}
