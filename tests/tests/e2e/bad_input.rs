//! Bad input over real sockets on the c2s port, each case with the rule (RFC 6120, RFC 6121,
//! RFC 7622, XML 1.0) that fixes the expected answer. Every case ends by checking that two
//! bystanders, alice and bob, still work: each pings the server and a message goes from one to
//! the other. Bad input is sent by a third account, mallory, or by an unauthenticated
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use canto_core::Config;
use canto_stanza::FullJid;
use canto_tests::*;
use canto_xml::Element;
use tokio::io::AsyncWriteExt;

const ALICE: (&str, &str) = ("alice", "wonderland");
const BOB: (&str, &str) = ("bob", "builder");
const MALLORY: (&str, &str) = ("mallory", "mischief");

/// A server with two logged-in bystanders whose sessions must survive every bad input.
struct World {
    s: TestServer,
    alice: Client,
    bob: Client,
}

impl World {
    async fn new() -> World {
        World::with_config(test_config()).await
    }

    async fn with_config(config: Config) -> World {
        let s = TestServer::with_config(config).await;
        for (u, p) in [ALICE, BOB, MALLORY] {
            s.add_user(u, p).await;
        }
        let alice = s.login(ALICE.0, ALICE.1, "home").await;
        let bob = s.login(BOB.0, BOB.1, "phone").await;
        World { s, alice, bob }
    }

    /// Mallory, logged in and bound.
    async fn mallory(&self) -> Client {
        self.s.login(MALLORY.0, MALLORY.1, "lair").await
    }

    /// The bystanders still work: bad input on one stream never disturbs other users' sessions.
    async fn check(&mut self) {
        assert_alive(&mut self.alice).await;
        assert_alive(&mut self.bob).await;
        assert_message_flows(&mut self.alice, &mut self.bob).await;
        assert_message_flows(&mut self.bob, &mut self.alice).await;
    }

    /// Bob received nothing (a bad stanza leaked nothing to its addressee).
    async fn bob_got_nothing(&mut self) {
        assert!(
            self.bob.quiet().await,
            "bob received {:?}",
            self.bob.next().await
        );
    }

    async fn stop(mut self) {
        self.check().await;
        self.s.stop().await;
    }
}

/// Waits (up to 5 s) until no session is bound to `jid`.
async fn wait_session_gone(s: &TestServer, jid: &str) {
    let full = FullJid::new(jid).unwrap_or_else(|e| panic!("{jid}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.running.server.sessions.get(&full).is_some() {
        assert!(
            Instant::now() < deadline,
            "{jid} still in the session table"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh connection sends `input` as its very first bytes; the stream must end with a stream
/// error whose condition is one of `expected`, preceded by the server's header (RFC 6120
/// §4.9.1.2). The bystanders must still work afterwards.
async fn pre_auth_case(input: &[u8], expected: &[&str]) -> StreamEnd {
    let mut w = World::new().await;
    let mut c = w.s.connect().await;
    c.send_raw(input).await;
    let end = c.stream_end().await;
    let header = end
        .header
        .as_ref()
        .unwrap_or_else(|| panic!("no stream header before the error: {end:?}"));
    assert!(
        header.is("stream", canto_stanza::ns::STREAMS),
        "header {header}"
    );
    let cond = end.condition.clone().unwrap_or_default();
    assert!(
        expected.contains(&cond.as_str()),
        "expected one of {expected:?}, got {end:?}"
    );
    assert_eq!(end.closed, Closed::Error(cond), "{end:?}");
    w.bob_got_nothing().await;
    w.stop().await;
    end
}

/// [`pre_auth_case`] with a valid stream header first.
async fn after_header_case(tail: &[u8], expected: &[&str]) -> StreamEnd {
    let mut input = header(HOST).into_bytes();
    input.extend_from_slice(tail);
    pre_auth_case(&input, expected).await
}

/// Mallory (bound) sends `input`; her stream must end with a stream error `expected`, her
/// session must leave the routing table, and the bystanders must still work.
async fn bound_case(input: &[u8], expected: &str) -> StreamEnd {
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    let jid = m.full_jid();
    m.send_raw(input).await;
    let end = m.stream_end().await;
    assert_eq!(end.closed, Closed::Error(expected.into()), "{end:?}");
    wait_session_gone(&w.s, &jid).await;
    w.bob_got_nothing().await;
    w.stop().await;
    end
}

// ------------------------------------------------------------------------------------------------
// Stream level, before authentication (RFC 6120 §4.9, §11; budgets per §13.12)
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctype_with_internal_entity_is_restricted_xml() {
    // RFC 6120 §11.1: no DTD, so no entity is ever expanded; §4.9.3.18 restricted-xml.
    let mut input = b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a 'x'>]>".to_vec();
    input.extend_from_slice(header(HOST).as_bytes());
    pre_auth_case(&input, &["restricted-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_entity_is_restricted_xml() {
    // RFC 6120 §11.1, §4.9.3.18: an external entity is refused unread (no file access).
    let mut input =
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>".to_vec();
    input.extend_from_slice(header(HOST).as_bytes());
    pre_auth_case(&input, &["restricted-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_entity_reference_is_refused() {
    // RFC 6120 §11.1 (no entity other than the five predefined ones): restricted-xml, or
    // not-well-formed for an undeclared entity (XML 1.0 §4.1, WFC: Entity Declared). Nothing is
    // delivered.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>&lol9;</body></message>",
        &["restricted-xml", "not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_is_restricted_xml() {
    // RFC 6120 §11.1: no comments; §4.9.3.18 restricted-xml.
    after_header_case(b"<!-- hi -->", &["restricted-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_instruction_is_restricted_xml() {
    // RFC 6120 §11.1: no processing instructions; §4.9.3.18 restricted-xml.
    after_header_case(b"<?pi data?>", &["restricted-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_1_1_declaration_is_refused() {
    // RFC 6120 §11.1 (XML 1.0 only): unsupported-version (§4.9.3.25) or restricted-xml
    // (§4.9.3.18) are both accepted.
    let input = header(HOST).replace("version='1.0'?>", "version='1.1'?>");
    assert!(input.starts_with("<?xml version='1.1'?>"));
    pre_auth_case(input.as_bytes(), &["unsupported-version", "restricted-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_8859_1_declaration_is_unsupported_encoding() {
    // RFC 6120 §11.6 (UTF-8 only), §4.9.3.22 unsupported-encoding.
    let input = header(HOST).replace(
        "<?xml version='1.0'?>",
        "<?xml version='1.0' encoding='ISO-8859-1'?>",
    );
    pre_auth_case(input.as_bytes(), &["unsupported-encoding"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf16_stream_is_unsupported_encoding() {
    // RFC 6120 §11.6, §4.9.3.22: a UTF-16 BOM and a UTF-16 header.
    let mut input = vec![0xFE, 0xFF];
    for u in header(HOST).encode_utf16() {
        input.extend_from_slice(&u.to_be_bytes());
    }
    pre_auth_case(&input, &["unsupported-encoding"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_xml_declaration_is_refused() {
    // XML 1.0 §2.8: the declaration only at the very start, so a second one is not-well-formed
    // (RFC 6120 §4.9.3.13); restricted-xml (§4.9.3.18: read as a processing instruction) is
    // accepted too.
    after_header_case(
        b"<?xml version='1.0'?>",
        &["not-well-formed", "restricted-xml"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_text_is_unsupported_encoding() {
    // RFC 6120 §4.9.3.22: "improperly encoded" streams (violating UTF-8) are
    // unsupported-encoding. Invalid UTF-8 is how the 2022 Zoom stanza smuggling worked: a client
    // that decoded it differently from the server saw stanzas the server never saw.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>\xC0\xAF</body></message>",
        &["unsupported-encoding"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_name_is_unsupported_encoding() {
    // RFC 6120 §4.9.3.22: invalid UTF-8 in an element name (the Expat CVE-2022-25235 class).
    after_header_case(b"<mess\xE0\x80age/>", &["unsupported-encoding"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_nul_byte_is_not_well_formed() {
    // XML 1.0 §2.2: NUL is not a Char; RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>a\0b</body></message>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_ref_to_nul_is_not_well_formed() {
    // XML 1.0 §4.1 (WFC: Legal Character); RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>&#0;</body></message>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_ref_to_escape_is_not_well_formed() {
    // XML 1.0 §2.2: U+001B is not a Char; RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>&#x1B;</body></message>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_ref_to_lone_surrogate_is_not_well_formed() {
    // XML 1.0 §2.2: surrogates are not Chars; RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone'><body>&#xD800;</body></message>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_gets_a_header_then_not_well_formed() {
    // RFC 6120 §4.9.1.2: the server sends a header before the error (pre_auth_case asserts it),
    // §4.9.3.13 not-well-formed.
    let end = pre_auth_case(
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &["not-well-formed"],
    )
    .await;
    // No features: the client never opened a stream.
    assert!(end.elements.is_empty(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_stream_namespace_is_invalid_namespace() {
    // RFC 6120 §4.8.1: the stream namespace is fixed; §4.9.3.10 invalid-namespace.
    let input = header(HOST).replace("http://etherx.jabber.org/streams", "http://wrong");
    pre_auth_case(input.as_bytes(), &["invalid-namespace"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_content_namespace_on_c2s_is_invalid_namespace() {
    // RFC 6120 §4.8.2, §4.9.3.10.
    let input = header(HOST).replace("xmlns='jabber:client'", "xmlns='jabber:server'");
    pre_auth_case(input.as_bytes(), &["invalid-namespace"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_namespace_is_invalid_namespace() {
    // RFC 6120 §4.9.3.10 (ejabberd answers invalid-xml here; the RFC names invalid-namespace).
    let input = header(HOST).replace("xmlns='jabber:client'", "xmlns='wrong'");
    pre_auth_case(input.as_bytes(), &["invalid-namespace"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_other_than_stream_is_invalid_namespace() {
    // RFC 6120 §4.9.3.10.
    pre_auth_case(
        b"<?xml version='1.0'?><foo xmlns='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
        &["invalid-namespace"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_is_unsupported_version() {
    // RFC 6120 §4.7.5, §4.9.3.25: only version 1.0 is spoken.
    let input = header(HOST).replace("version='1.0'>", "version='2.0'>");
    pre_auth_case(input.as_bytes(), &["unsupported-version"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_without_to_is_improper_addressing() {
    // RFC 6120 §4.9.3.7 (Prosody and ejabberd require `to`).
    let input = header(HOST).replace(" to='localhost'", "");
    pre_auth_case(input.as_bytes(), &["improper-addressing"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_host_unknown() {
    // RFC 6120 §4.9.3.6: the server does not serve that domain.
    pre_auth_case(header("unknown.test").as_bytes(), &["host-unknown"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_matched_case_insensitively() {
    // RFC 7622 §3.2 (the domainpart is case-folded).
    let w = World::new().await;
    let mut c = w.s.connect().await;
    let h = c
        .send_header(&header("LocalHost"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(h.attr("from"), Some(HOST), "{h}");
    let f = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.is("features", canto_stanza::ns::STREAMS), "{f}");
    assert!(
        f.has_child("starttls", canto_stanza::ns::TLS),
        "STARTTLS offered: {f}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_xml_lang_is_invalid_xml() {
    // RFC 6120 §4.7.4 (a language tag, BCP 47), §4.9.3.11 (ejabberd's suite has this case).
    let input = header(HOST).replace(
        " version='1.0'>",
        &format!(" version='1.0' xml:lang='{}'>", "x".repeat(36)),
    );
    pre_auth_case(input.as_bytes(), &["invalid-xml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_before_auth_is_not_authorized_and_not_delivered() {
    // RFC 6120 §4.9.3.12 (not-authorized before authentication).
    let end = after_header_case(
        b"<message to='bob@localhost/phone' type='chat'><body>x</body></message>",
        &["not-authorized"],
    )
    .await;
    // Only the features came back.
    assert_eq!(end.elements.len(), 1, "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_before_auth_is_not_authorized_and_leaks_nothing() {
    // RFC 6120 §4.9.3.12: no roster or other data may leak.
    let end = after_header_case(
        b"<iq type='get' id='1' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>",
        &["not-authorized"],
    )
    .await;
    assert!(
        end.elements
            .iter()
            .all(|e| e.is("features", canto_stanza::ns::STREAMS)),
        "only features may arrive: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_top_level_element_is_unsupported_stanza_type() {
    // RFC 6120 §4.9.3.24: a first-level element the stream does not know.
    after_header_case(b"<foo xmlns='urn:x'/>", &["unsupported-stanza-type"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_element_budget_is_policy_violation() {
    // RFC 6120 §4.9.3.14 (policy-violation), §13.12 (limits). The pre-auth budget (10 KiB, 32
    // elements) is close to ejabberd's (8 KiB, 32 elements, added in 2026 after unauthenticated
    // memory-exhaustion reports against Prosody and Twisted).
    let mut tail = b"<iq>".to_vec();
    for _ in 0..100_000 {
        tail.extend_from_slice(b"<a/>");
    }
    after_header_case(&tail, &["policy-violation"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_byte_budget_is_policy_violation_with_stanza_too_big() {
    // RFC 6120 §13.12, §4.9.3.14: a buffer over the pre-auth budget (10 KiB) is never kept
    // before authentication.
    let mut tail = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>".to_vec();
    tail.extend(std::iter::repeat_n(b'A', 64 * 1024));
    let end = after_header_case(&tail, &["policy-violation"]).await;
    assert!(
        end.app
            .as_ref()
            .is_some_and(|a| a.is("stanza-too-big", "urn:xmpp:errors")),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_deep_nesting_is_policy_violation() {
    // RFC 6120 §4.9.3.14, §13.12: no stack overflow in parse or drop (a recursive Drop of a deep
    // tree is the classic crash).
    after_header_case(&b"<a>".repeat(100_000), &["policy-violation"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_attribute_is_not_well_formed() {
    // XML 1.0 §3.1 (WFC: Unique Att Spec); RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone' to='alice@localhost/home'/>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_prefix_is_not_well_formed() {
    // Namespaces in XML 1.0 §5 (namespace constraint: prefix declared); RFC 6120 §4.9.3.13,
    // §11.4.
    after_header_case(b"<foo:bar/>", &["not-well-formed"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_end_tag_is_not_well_formed() {
    // XML 1.0 §3 (WFC: Element Type Match); RFC 6120 §4.9.3.13.
    after_header_case(
        b"<message to='bob@localhost/phone'><body></message>",
        &["not-well-formed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_by_the_absolute_auth_deadline() {
    // RFC 6120 §4.9.3.4 connection-timeout; XEP-0205 §4.3 (unauthenticated connections). The
    // timer is an absolute deadline, not an idle timer, so trickled bytes (slowloris) do not
    // extend it.
    let mut config = test_config();
    config.c2s.auth_timeout = 2;
    let w = World::with_config(config).await;
    let started = Instant::now();
    let mut c = w.s.connect().await;
    c.open(HOST).await;
    let mut writer = c.take_writer();
    let trickled = Arc::new(AtomicUsize::new(0));
    let count = trickled.clone();
    let trickle = tokio::spawn(async move {
        // A stanza that never ends, one byte every 100 ms.
        let slow = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>".repeat(10);
        for b in slow {
            if writer.write_all(&[b]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let end = c.stream_end().await;
    let took = started.elapsed();
    assert_eq!(
        end.closed,
        Closed::Error("connection-timeout".into()),
        "{end:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
    // Bytes were arriving the whole time (≈ one per 100 ms for ~2 s).
    assert!(trickled.load(Ordering::Relaxed) >= 10, "{trickled:?}");
    trickle.abort();
    w.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Stream level, after authentication
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_stanza_is_refused_before_it_is_all_sent() {
    // RFC 6120 §4.9.3.14, §13.12; XEP-0205 §4.5: policy-violation with <stanza-too-big
    // xmlns='urn:xmpp:errors'/> (XEP-0182) as soon as 256 KiB pass, before the rest is read, as
    // Prosody does.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    let jid = m.full_jid();
    let mut writer = m.take_writer();
    let total = 10 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let sent2 = sent.clone();
    let writer_task = tokio::spawn(async move {
        if writer
            .write_all(b"<message to='bob@localhost/phone'><body>")
            .await
            .is_err()
        {
            return;
        }
        let chunk = vec![b'a'; 64 * 1024];
        while sent2.load(Ordering::Relaxed) < total {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            sent2.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        // The closing tags are withheld until the reader has seen the stream end, so an error
        // that arrives at all was sent while the stanza was unfinished.
        let _ = finish_rx.await;
        let _ = writer.write_all(b"</body></message>").await;
    });
    let end = m.stream_end().await;
    let _ = finish_tx.send(());
    assert!(sent.load(Ordering::Relaxed) >= 256 * 1024, "{sent:?}");
    assert_eq!(
        end.closed,
        Closed::Error("policy-violation".into()),
        "{end:?}"
    );
    assert!(
        end.app
            .as_ref()
            .is_some_and(|a| a.is("stanza-too-big", "urn:xmpp:errors")),
        "{end:?}"
    );
    writer_task.abort();
    wait_session_gone(&w.s, &jid).await;
    w.bob_got_nothing().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_after_auth_is_policy_violation() {
    // RFC 6120 §4.9.3.14, §13.12: the depth budget.
    let mut input = b"<message to='bob@localhost/phone'>".to_vec();
    input.extend_from_slice(&b"<a>".repeat(100_000));
    bound_case(&input, "policy-violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_attributes_is_policy_violation() {
    // RFC 6120 §4.9.3.14, §13.12: the attribute budget.
    let mut input = String::from("<message to='bob@localhost/phone'");
    for i in 0..10_000 {
        input.push_str(&format!(" a{i}='x'"));
    }
    input.push_str("><body>x</body></message>");
    bound_case(input.as_bytes(), "policy-violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_namespace_declarations_is_policy_violation() {
    // RFC 6120 §4.9.3.14, §13.12: xmlns:pN declarations count against the attribute budget too.
    let mut input = String::from("<message to='bob@localhost/phone'");
    for i in 0..10_000 {
        input.push_str(&format!(" xmlns:p{i}='urn:p{i}'"));
    }
    input.push_str("><body>x</body></message>");
    bound_case(input.as_bytes(), "policy-violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_after_auth_is_not_well_formed() {
    // RFC 6120 §4.9.3.13 (XML 1.0 §3, WFC: Element Type Match) on an authenticated stream.
    bound_case(
        b"<message to='bob@localhost/phone'><body>x</message>",
        "not-well-formed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_stanza_then_fin_delivers_nothing_and_destroys_the_session() {
    // A stanza is routed only once it is complete, so nothing of the partial one is delivered;
    // the connection's end destroys the session and unavailable presence goes out (RFC 6121
    // §4.5.2: to the account's other available resources; contacts once rosters exist).
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    let mut m2 = w.s.login(MALLORY.0, MALLORY.1, "den").await;
    // m2 is available first (the ping's answer proves the presence was handled), so m's
    // initial presence reaches it.
    m2.send("<presence/>").await;
    assert_alive(&mut m2).await;
    m.send("<presence/>").await;
    let jid = m.full_jid();
    let p = m2
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(jid.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), None);
    m.send("<message to='bob@localhost/phone' type='chat'><body>hi")
        .await;
    m.shutdown_write().await;
    let gone = m2
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(jid.as_str()))
        .await
        .unwrap_or_else(|e| panic!("no unavailable presence: {e:#}"));
    assert_eq!(gone.attr("type"), Some("unavailable"), "{gone}");
    wait_session_gone(&w.s, &jid).await;
    w.bob_got_nothing().await;
    assert_alive(&mut m2).await;
    w.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Stanza level, authenticated: the stream stays open (RFC 6120 §8.3 stanza errors)
// ------------------------------------------------------------------------------------------------

/// Mallory sends `xml` and gets an error stanza back (the first stanza she receives);
/// returns it after checking condition and type.
async fn expect_stanza_error(m: &mut Client, xml: &str, condition: &str, kind: &str) -> Element {
    m.send(xml).await;
    let r = m
        .wait_for(|e| e.attr("type") == Some("error"))
        .await
        .unwrap_or_else(|e| panic!("{xml}: {e:#}"));
    assert_eq!(
        error_condition(&r).as_deref(),
        Some(condition),
        "{xml} -> {r}"
    );
    assert_eq!(error_type(&r).as_deref(), Some(kind), "{xml} -> {r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_without_id_is_bad_request() {
    // RFC 6120 §8.1.3 / §8.2.3: an IQ needs an id; §8.3.3.1 bad-request.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(
        &mut m,
        "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        "bad-request",
        "modify",
    )
    .await;
    assert_eq!(r.name(), "iq");
    assert_eq!(r.attr("to"), Some(m.full_jid().as_str()));
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_with_bogus_type_is_bad_request() {
    // RFC 6120 §8.2.3 (type is one of get/set/result/error); §8.3.3.1 bad-request.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(
        &mut m,
        "<iq type='bogus' id='b1'/>",
        "bad-request",
        "modify",
    )
    .await;
    assert_eq!(r.attr("id"), Some("b1"));
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_with_two_payloads_is_bad_request() {
    // RFC 6120 §8.2.3: a get or set contains exactly one payload; §8.3.3.1 bad-request.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(
        &mut m,
        "<iq type='set' id='b2'><query xmlns='jabber:iq:roster'/><query xmlns='jabber:iq:private'/></iq>",
        "bad-request",
        "modify",
    )
    .await;
    assert_eq!(r.attr("id"), Some("b2"));
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_without_payload_is_bad_request() {
    // RFC 6120 §8.2.3: a get with no payload; §8.3.3.1 bad-request.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(&mut m, "<iq type='get' id='b3'/>", "bad-request", "modify").await;
    assert_eq!(r.attr("id"), Some("b3"));
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_with_unknown_payload_to_server_is_service_unavailable() {
    // RFC 6120 §8.4: an unhandled namespace is service-unavailable.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(
        &mut m,
        "<iq type='get' id='b4' to='localhost'><x xmlns='urn:unknown'/></iq>",
        "service-unavailable",
        "cancel",
    )
    .await;
    assert_eq!(r.attr("id"), Some("b4"));
    assert_eq!(r.attr("from"), Some(HOST));
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_iq_result_and_error_get_no_reply() {
    // RFC 6120 §8.2.3: result and error are never answered.
    let w = World::new().await;
    let mut m = w.mallory().await;
    for xml in [
        "<iq type='result' id='zz' to='localhost'/>",
        "<iq type='error' id='zz' to='localhost'/>",
        "<iq type='result' id='zz'/>",
        "<iq type='error' id='zz'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        "<iq type='result' id='zz' to='nobody@localhost'/>",
        "<iq type='result' id='zz' to='bob@localhost/gone'/>",
        "<iq type='result' id='zz' to='localhost/res'/>",
        "<iq type='result' id='zz' to='someone@remote.example'/>",
        "<iq type='error' id='zz' to='someone@remote.example'/>",
    ] {
        m.send(xml).await;
        assert!(m.quiet().await, "{xml}: {:?}", m.next().await);
    }
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_with_bogus_type_is_bad_request() {
    // RFC 6121 §4.7.1 (the presence types are fixed); RFC 6120 §8.3.3.1 bad-request.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    expect_stanza_error(
        &mut m,
        "<presence type='bogus' to='bob@localhost'/>",
        "bad-request",
        "modify",
    )
    .await;
    w.bob_got_nothing().await;
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_with_bogus_type_is_delivered_as_normal() {
    // RFC 6121 §5.2.2: an unknown message type is handled as normal.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    m.send("<message type='bogus' to='bob@localhost/phone'><body>odd</body></message>")
        .await;
    let got = w
        .bob
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.attr("from"), Some(m.full_jid().as_str()));
    assert_eq!(
        got.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some("odd")
    );
    assert!(m.quiet().await, "no error: {:?}", m.next().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_from_is_invalid_from_and_not_delivered() {
    // RFC 6120 §8.1.2.1, §4.9.3.9 invalid-from (as ejabberd; Prosody re-stamps `from`): never
    // delivered with bob's from.
    let end = bound_case(
        b"<message from='bob@localhost/phone' to='alice@localhost/home' type='chat'><body>forged</body></message>",
        "invalid-from",
    )
    .await;
    assert!(end.elements.is_empty(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_from_does_not_reach_the_addressee() {
    // RFC 6120 §8.1.2.1: the addressee (alice here) receives nothing.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    m.send("<message from='bob@localhost/phone' to='alice@localhost/home' type='chat'><body>forged</body></message>")
        .await;
    assert_eq!(m.closed().await, Closed::Error("invalid-from".into()));
    assert!(
        w.alice.quiet().await,
        "alice got {:?}",
        w.alice.next().await
    );
    // Her own bare JID as `from` is fine, and is restamped to her full JID.
    let mut m = w.mallory().await;
    m.send("<message from='mallory@localhost' to='alice@localhost/home' type='chat'><body>own</body></message>")
        .await;
    let got = w
        .alice
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.attr("from"), Some("mallory@localhost/lair"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_to_a_nonexistent_account() {
    // RFC 6121 §8.5.1: no such user. Message and iq get service-unavailable, presence is
    // silently dropped.
    let w = World::new().await;
    let mut m = w.mallory().await;
    let r = expect_stanza_error(
        &mut m,
        "<message to='nobody@localhost' type='chat' id='n1'><body>x</body></message>",
        "service-unavailable",
        "cancel",
    )
    .await;
    assert_eq!(r.name(), "message");
    assert_eq!(r.attr("id"), Some("n1"));
    assert_eq!(r.attr("from"), Some("nobody@localhost"));
    let r = expect_stanza_error(
        &mut m,
        "<iq to='nobody@localhost' type='get' id='n2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
        "cancel",
    )
    .await;
    assert_eq!(r.attr("id"), Some("n2"));
    // Full JID of a nonexistent account: the same.
    expect_stanza_error(
        &mut m,
        "<message to='nobody@localhost/res' type='chat'><body>x</body></message>",
        "service-unavailable",
        "cancel",
    )
    .await;
    for p in [
        "<presence to='nobody@localhost'/>",
        "<presence to='nobody@localhost' type='subscribe'/>",
        "<presence to='nobody@localhost/res'/>",
    ] {
        m.send(p).await;
        assert!(m.quiet().await, "{p}: {:?}", m.next().await);
    }
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_to_an_offline_full_jid() {
    // RFC 6121 §8.5.3.2: the resource is not connected.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    // Bob's only resource has sent no presence: not available. Chat is handled as for the bare
    // JID (§8.5.3.2.1): no available resource, so it is stored offline (§8.5.2.2.1, XEP-0160)
    // and the sender gets no error.
    m.send("<message to='bob@localhost/ghost' type='chat'><body>x</body></message>")
        .await;
    assert!(m.quiet().await, "chat must be stored, not bounced");
    let stored =
        w.s.running
            .server
            .offline_messages(
                &canto_stanza::BareJid::new("bob@localhost").unwrap_or_else(|e| panic!("{e}")),
            )
            .await;
    assert_eq!(stored.len(), 1);
    // normal (also without a type) is bounced, not stored: only chat falls back (§8.5.3.2.1).
    for t in [" type='normal'", ""] {
        expect_stanza_error(
            &mut m,
            &format!("<message to='bob@localhost/ghost'{t}><body>x</body></message>"),
            "service-unavailable",
            "cancel",
        )
        .await;
    }
    // groupchat: service-unavailable; headline: dropped (§8.5.3.2.1).
    expect_stanza_error(
        &mut m,
        "<message to='bob@localhost/ghost' type='groupchat'><body>x</body></message>",
        "service-unavailable",
        "cancel",
    )
    .await;
    m.send("<message to='bob@localhost/ghost' type='headline'><body>x</body></message>")
        .await;
    assert!(m.quiet().await, "{:?}", m.next().await);
    // iq: service-unavailable (§8.5.3.2.2).
    expect_stanza_error(
        &mut m,
        "<iq to='bob@localhost/ghost' type='get' id='o1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
        "cancel",
    )
    .await;
    w.bob_got_nothing().await;

    // Once bob is available, chat to the offline resource reaches his available one.
    w.bob.send("<presence/>").await;
    assert_alive(&mut w.bob).await;
    m.send("<message to='bob@localhost/ghost' type='chat'><body>as bare</body></message>")
        .await;
    // The two stored messages came first (with a delay stamp), then this one.
    let got = w
        .bob
        .wait_for(|e| e.name() == "message" && !e.has_child("delay", canto_stanza::ns::DELAY))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        got.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some("as bare")
    );
    assert_eq!(got.attr("from"), Some(m.full_jid().as_str()));
    // Groupchat and headline still are not.
    m.send("<message to='bob@localhost/ghost' type='headline'><body>x</body></message>")
        .await;
    expect_stanza_error(
        &mut m,
        "<message to='bob@localhost/ghost' type='groupchat'><body>x</body></message>",
        "service-unavailable",
        "cancel",
    )
    .await;
    w.bob_got_nothing().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_stanzas_to_a_nonexistent_account_are_dropped() {
    // RFC 6120 §8.3.1: an error is never answered with an error.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    for xml in [
        "<message to='nobody@localhost' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        "<message to='nobody@localhost/x' type='error'/>",
        "<message to='bob@localhost/ghost' type='error'/>",
        "<iq to='nobody@localhost' type='error' id='e1'/>",
        "<presence to='nobody@localhost' type='error'/>",
        "<message to='nobody@remote.example' type='error'/>",
    ] {
        m.send(xml).await;
        assert!(m.quiet().await, "{xml}: {:?}", m.next().await);
    }
    w.bob_got_nothing().await;
    assert_alive(&mut m).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_jid_parts_are_jid_malformed() {
    // RFC 7622 §3.1: each part is 1 to 1023 octets; RFC 1035 §2.3.4: a label is at most 63.
    // RFC 6120 §8.3.3.8 jid-malformed.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    let long = "a".repeat(1024);
    for to in [
        format!("{long}@localhost"),
        format!("bob@localhost/{long}"),
        format!("bob@{}.localhost", "x".repeat(64)),
        format!("bob@{}", vec!["abcdefgh"; 120].join(".")),
    ] {
        expect_stanza_error(
            &mut m,
            &format!("<message to='{to}' type='chat'><body>x</body></message>"),
            "jid-malformed",
            "modify",
        )
        .await;
    }
    // 1023 octets is fine: an unknown account, not a malformed JID.
    expect_stanza_error(
        &mut m,
        &format!(
            "<message to='{}@localhost' type='chat'><body>x</body></message>",
            "a".repeat(1023)
        ),
        "service-unavailable",
        "cancel",
    )
    .await;
    w.bob_got_nothing().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_or_empty_localparts_are_jid_malformed() {
    // RFC 7622 §3.3.1 (localpart: no " & ' / : < > @ or space), §3.1 (no empty part);
    // RFC 6120 §8.3.3.8.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    for to in [
        "a&quot;b@localhost",
        "a b@localhost",
        "a:b@localhost",
        "a&lt;b@localhost",
        "a&amp;b@localhost",
        "@localhost",
        "bob@localhost/",
        "bob@",
    ] {
        expect_stanza_error(
            &mut m,
            &format!("<message to='{to}' type='chat'><body>x</body></message>"),
            "jid-malformed",
            "modify",
        )
        .await;
    }
    // The same check applies to iq and presence.
    expect_stanza_error(
        &mut m,
        "<iq to='a b@localhost' type='get' id='j1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "jid-malformed",
        "modify",
    )
    .await;
    w.bob_got_nothing().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_rule_violation_is_jid_malformed() {
    // RFC 7622 §3.3.2 / RFC 5893 (Bidi Rule): mixed right-to-left and left-to-right;
    // RFC 6120 §8.3.3.8.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    expect_stanza_error(
        &mut m,
        "<message to='\u{05D0}a1@localhost' type='chat'><body>x</body></message>",
        "jid-malformed",
        "modify",
    )
    .await;
    w.bob_got_nothing().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_and_width_variants_reach_the_same_account() {
    // RFC 7622 §3.3 (localpart: UsernameCaseMapped, width-mapped), §3.2 (domain case-folded):
    // all these spellings name bob.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    for to in [
        "Bob@LocalHost/phone",
        "BOB@localhost/phone",
        "\u{FF22}\u{FF2F}\u{FF22}@localhost/phone",
    ] {
        m.send(&format!(
            "<message to='{to}' type='chat'><body>{to}</body></message>"
        ))
        .await;
        let got = w
            .bob
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{to}: {e:#}"));
        assert_eq!(
            got.get_child("body", canto_stanza::ns::CLIENT)
                .map(|b| b.text())
                .as_deref(),
            Some(to)
        );
        // Delivered with the normalized address.
        assert_eq!(got.attr("to"), Some("bob@localhost/phone"), "{to}");
    }
    assert!(m.quiet().await, "{:?}", m.next().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_case_is_preserved() {
    // RFC 7622 §3.4 (resourcepart: OpaqueString, no case mapping): /Balcony is not /balcony.
    let w = World::new().await;
    let mut b = w.s.login(BOB.0, BOB.1, "Balcony").await;
    assert_eq!(b.jid.as_deref(), Some("bob@localhost/Balcony"));
    let mut m = w.mallory().await;
    // An IQ to the exact full JID reaches that session, which answers it.
    m.send("<iq to='bob@localhost/Balcony' type='get' id='c1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = b
        .wait_for(|e| e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.attr("to"), Some("bob@localhost/Balcony"));
    assert_eq!(got.attr("from"), Some("mallory@localhost/lair"));
    b.send("<iq to='mallory@localhost/lair' type='result' id='c1'/>")
        .await;
    let r = m
        .wait_for(|e| e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("bob@localhost/Balcony"));
    // The lowercased resource is another, unconnected, resource (RFC 6121 §8.5.3.2.2).
    expect_stanza_error(
        &mut m,
        "<iq to='bob@localhost/balcony' type='get' id='c2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
        "cancel",
    )
    .await;
    assert!(b.quiet().await, "{:?}", b.next().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_with_control_or_bidi_override_is_bad_request() {
    // RFC 6120 §7.7.2.1: a resource that fails the profile is bad-request (modify);
    // RFC 7622 §3.4 (OpaqueString: no controls).
    let w = World::new().await;
    for bad in ["a\u{202E}b", "a\u{85}b", "x\u{9}y"] {
        let mut c = w.s.login_unbound(HOST, MALLORY.0, MALLORY.1).await;
        c.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{bad}</resource></bind></iq>"
        ))
        .await;
        let r = c
            .wait_for(|e| e.name() == "iq")
            .await
            .unwrap_or_else(|e| panic!("{bad:?}: {e:#}"));
        assert_eq!(r.attr("type"), Some("error"), "{bad:?}: {r}");
        assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
        assert_eq!(error_type(&r).as_deref(), Some("modify"), "{r}");
        // The stream stays open: a good resource binds afterwards.
        let jid = c.bind(Some("ok")).await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(jid, "mallory@localhost/ok");
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_markup_in_a_body_stays_text() {
    // RFC 6120 §11.1: the server re-serializes from the parsed tree (never forwards the bytes a
    // client sent, ARCHITECTURE.md "Bad input and limits"), so escaped markup in text is
    // delivered as exactly one message with the same text.
    let mut w = World::new().await;
    let mut m = w.mallory().await;
    let text = "</body></message><iq type='set' id='x'><query xmlns='jabber:iq:roster'/></iq><message><body>";
    m.send(&format!(
        "<message to='bob@localhost/phone' type='chat'><body>{}</body></message>",
        canto_xml::escape(text)
    ))
    .await;
    let got = w
        .bob
        .wait_for(|_| true)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.name(), "message", "{got}");
    // One body, and nothing else from the sender (MAM adds its own XEP-0359 stanza-id).
    assert_eq!(
        got.children()
            .filter(|c| !c.is("stanza-id", "urn:xmpp:sid:0"))
            .count(),
        1,
        "{got}"
    );
    assert_eq!(
        got.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some(text)
    );
    // Exactly one element arrived.
    w.bob_got_nothing().await;
    w.stop().await;
}
