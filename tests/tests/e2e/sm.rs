//! XEP-0198 Stream Management over real sockets: enabling, counters, ack requests, errors,
//! resumption after a lost connection, and what becomes of unacknowledged messages when a
//! session ends unresumed.

use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const SM: &str = "urn:xmpp:sm:3";

async fn server() -> TestServer {
    server_with(test_config()).await
}

async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s
}

/// A configuration whose resumable sessions wait one second.
fn short_resume() -> canto_core::Config {
    let mut c = test_config();
    c.stream_management.resume_timeout = 1;
    c
}

/// Sends `<enable/>` and returns `<enabled/>`.
async fn enable(c: &mut Client, resume: bool) -> Element {
    let attr = if resume { " resume='true'" } else { "" };
    c.send(&format!("<enable xmlns='{SM}'{attr}/>")).await;
    let e = c
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("enable: {e:#}"));
    assert_eq!(e.name(), "enabled", "{e}");
    e
}

/// Reads until `n` messages arrived (skipping `<r/>` and anything else); returns their bodies.
async fn bodies(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("after {out:?}: {e:#}"));
        if e.is("message", ns::CLIENT)
            && let Some(b) = e.get_child("body", ns::CLIENT)
        {
            out.push(b.text());
        }
    }
    out
}

/// Asks for an ack and returns the server's `h` — also a barrier: everything sent before has
/// been handled.
async fn ask_h(c: &mut Client) -> u32 {
    c.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = c
        .wait_for(|e| e.is("a", SM))
        .await
        .unwrap_or_else(|e| panic!("no <a/>: {e:#}"));
    a.attr("h")
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("bad <a/>: {a}"))
}

async fn send_msgs(from: &mut Client, to: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        from.send(&format!(
            "<message to='{to}' type='chat' id='m{i}'><body>m{i}</body></message>"
        ))
        .await;
    }
    // Barrier: the router handled them before we go on.
    assert_alive(from).await;
}

#[tokio::test]
async fn sm_is_advertised_and_enables_with_and_without_resumption() {
    let s = server().await;
    let mut c = s.login_unbound(HOST, "alice", "wonderland").await;
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    assert!(f.has_child("sm", SM), "{f}");
    // XEP-0198 §3: before binding, enable fails with unexpected-request.
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let e = c
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.is("failed", SM), "{e}");
    assert!(e.has_child("unexpected-request", ns::STANZAS), "{e}");
    c.bind(Some("r1")).await.unwrap_or_else(|e| panic!("{e:#}"));
    let e = enable(&mut c, false).await;
    assert!(e.attr("id").is_none() && e.attr("resume").is_none(), "{e}");
    // Twice is an error.
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let e = c
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.is("failed", SM), "{e}");

    let mut b = s.login("bob", "builder", "r1").await;
    let e = enable(&mut b, true).await;
    assert_eq!(e.attr("resume"), Some("true"), "{e}");
    assert!(e.attr("id").is_some_and(|id| id.len() >= 32), "{e}");
    assert!(
        e.attr("max").is_some_and(|m| m.parse::<u64>().is_ok()),
        "{e}"
    );
    assert_alive(&mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn r_is_answered_with_the_count_of_inbound_stanzas() {
    let s = server().await;
    let mut c = s.login("alice", "wonderland", "r1").await;
    enable(&mut c, false).await;
    assert_eq!(ask_h(&mut c).await, 0);
    for _ in 0..3 {
        assert_alive(&mut c).await;
    }
    c.send("<presence/>").await;
    assert_eq!(ask_h(&mut c).await, 4);
    s.stop().await;
}

#[tokio::test]
async fn an_ack_answer_goes_out_with_the_next_stanzas_or_after_answer_delay_ms() {
    let mut config = test_config();
    config.stream_management.answer_delay_ms = 1000;
    let s = server_with(config).await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "r1").await;
    enable(&mut b, false).await;
    b.send(&format!(
        "<message to='{}' type='chat'><body>hi</body></message>",
        a.full_jid()
    ))
    .await;
    // Nothing else to write to bob: the answer waits rather than go out alone...
    b.send(&format!("<r xmlns='{SM}'/>")).await;
    let asked = std::time::Instant::now();
    assert!(
        b.nothing_within(Duration::from_millis(300)).await,
        "answered in a write of its own"
    );
    // ...and goes out right behind the next stanza written to bob, counting his message
    // (XEP-0198 §4).
    send_msgs(&mut a, &b.full_jid(), 1..=1).await;
    assert_eq!(bodies(&mut b, 1).await, ["m1"]);
    let ack = b.next().await.unwrap_or_else(|e| panic!("no <a/>: {e:#}"));
    assert!(ack.is("a", SM), "{ack}");
    assert_eq!(ack.attr("h"), Some("1"));
    assert!(asked.elapsed() < Duration::from_millis(900));
    // With nothing to go with, it is written on its own once the delay is over.
    b.send(&format!("<r xmlns='{SM}'/>")).await;
    let asked = std::time::Instant::now();
    let ack = b
        .wait_for(|e| e.is("a", SM))
        .await
        .unwrap_or_else(|e| panic!("no <a/>: {e:#}"));
    assert_eq!(ack.attr("h"), Some("1"));
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    s.stop().await;

    // answer_delay_ms = 0: answered at once.
    let mut config = test_config();
    config.stream_management.answer_delay_ms = 0;
    let s = server_with(config).await;
    let mut b = s.login("bob", "builder", "r1").await;
    enable(&mut b, false).await;
    b.send(&format!("<r xmlns='{SM}'/>")).await;
    assert!(
        !b.nothing_within(Duration::from_millis(500)).await,
        "not answered at once"
    );
    s.stop().await;
}

#[tokio::test]
async fn server_requests_acks_and_accepts_them() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "r1").await;
    enable(&mut b, false).await;
    let to = b.full_jid();
    send_msgs(&mut a, &to, 1..=6).await;
    // After enough unacknowledged stanzas the server asks (XEP-0198 §4).
    b.wait_for(|e| e.is("r", SM))
        .await
        .unwrap_or_else(|e| panic!("no <r/>: {e:#}"));
    // All six acknowledged: fine, and the session goes on.
    b.send(&format!("<a xmlns='{SM}' h='6'/>")).await;
    assert_alive(&mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn handled_count_too_high_is_a_stream_error() {
    let s = server().await;
    let mut c = s.login("alice", "wonderland", "r1").await;
    enable(&mut c, false).await;
    assert_alive(&mut c).await; // one stanza (the ping result) sent to the client
    c.send(&format!("<a xmlns='{SM}' h='5'/>")).await;
    assert_eq!(c.expect_stream_error().await, "undefined-condition");
    s.stop().await;
}

#[tokio::test]
async fn resumption_after_a_lost_connection_delivers_every_message_exactly_once() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    let id = enable(&mut b, true)
        .await
        .attr("id")
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no id"));
    let to = b.full_jid();
    send_msgs(&mut a, &to, 1..=6).await;
    assert_eq!(
        bodies(&mut b, 6).await,
        ["m1", "m2", "m3", "m4", "m5", "m6"]
    );
    // Bob acknowledges only three, then the network drops him (no </stream:stream>).
    b.send(&format!("<a xmlns='{SM}' h='3'/>")).await;
    assert_eq!(ask_h(&mut b).await, 0);
    drop(b);
    // Alice keeps talking during the gap.
    send_msgs(&mut a, &to, 7..=9).await;
    assert!(
        s.is_bound(&to),
        "the hibernating session keeps its routing entry"
    );

    let mut b = s.login_unbound(HOST, "bob", "builder").await;
    b.send(&format!("<resume xmlns='{SM}' previd='{id}' h='3'/>"))
        .await;
    let r = b
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.is("resumed", SM), "{r}");
    assert_eq!(r.attr("previd"), Some(id.as_str()));
    assert_eq!(r.attr("h"), Some("0"));
    b.jid = Some(to.clone());
    assert_eq!(
        bodies(&mut b, 6).await,
        ["m4", "m5", "m6", "m7", "m8", "m9"],
        "unacknowledged ones replayed, then the gap's"
    );
    // None twice (what was sent before the sync ping's answer is in front of it).
    b.sync().await;
    loop {
        if b.nothing_within(SETTLE).await {
            break;
        }
        let e = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(e.is("r", SM), "unexpected after resumption: {e}");
    }
    // The counters carried over: all nine and the sync ping's answer acknowledged is exactly
    // right.
    b.send(&format!("<a xmlns='{SM}' h='10'/>")).await;
    assert_alive(&mut b).await;
    // Same full JID, same session: messages still flow.
    assert_message_flows(&mut a, &mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn resumption_with_an_unknown_id_is_item_not_found() {
    let s = server().await;
    let mut c = s.login_unbound(HOST, "alice", "wonderland").await;
    c.send(&format!("<resume xmlns='{SM}' previd='nonsense' h='0'/>"))
        .await;
    let f = c
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.is("failed", SM), "{f}");
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");
    // The connection can still bind.
    c.bind(Some("r1")).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_alive(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn resuming_another_users_session_is_item_not_found() {
    let s = server().await;
    let mut b = s.login("bob", "builder", "r1").await;
    let id = enable(&mut b, true)
        .await
        .attr("id")
        .map(str::to_string)
        .unwrap_or_default();
    drop(b);
    let mut c = s.login_unbound(HOST, "alice", "wonderland").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let f = c
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");
    s.stop().await;
}

#[tokio::test]
async fn hibernation_timeout_moves_unacked_messages_to_offline_storage() {
    let s = server_with(short_resume()).await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send("<presence/>").await;
    let enabled = enable(&mut b, true).await;
    // XEP-0198 §3: `max` is the configured resume_timeout.
    assert_eq!(enabled.attr("max"), Some("1"), "{enabled}");
    let id = enabled.attr("id").map(str::to_string).unwrap_or_default();
    // Two stanzas the server handles from bob: the late <resume/> learns h = 2.
    b.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(ask_h(&mut b).await, 2);
    let to = b.full_jid();
    send_msgs(&mut a, &to, 1..=3).await;
    assert_eq!(bodies(&mut b, 3).await, ["m1", "m2", "m3"]);
    // The two ping results and m1.
    b.send(&format!("<a xmlns='{SM}' h='3'/>")).await;
    ask_h(&mut b).await;
    drop(b);
    send_msgs(&mut a, &to, 4..=4).await;
    // The session ends when hibernation times out.
    assert!(
        poll_until(WAIT, || !s.is_bound(&to)).await,
        "hibernation never timed out"
    );
    // Too late to resume; XEP-0198 §5: <failed/> says how many of bob's stanzas were handled.
    let mut b = s.login_unbound(HOST, "bob", "builder").await;
    b.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    let f = b
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");
    assert_eq!(f.attr("h"), Some("2"), "{f}");
    // A new session gets them from offline storage, with a delay stamp.
    b.bind(Some("laptop"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence/>").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = b
            .wait_for(|e| e.is("message", ns::CLIENT))
            .await
            .unwrap_or_else(|e| panic!("after {got:?}: {e:#}"));
        assert!(m.has_child("delay", ns::DELAY), "no delay stamp: {m}");
        got.push(
            m.get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
        );
    }
    assert_eq!(got, ["m2", "m3", "m4"]);
    // Only presence may follow (own presence comes after the stored messages): no duplicates.
    b.sync().await;
    while !b.nothing_within(SETTLE).await {
        let e = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(e.name(), "message", "duplicate delivery: {e}");
    }
    s.stop().await;
}

#[tokio::test]
async fn unacked_messages_of_an_ended_session_go_to_another_resource() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b1 = s.login("bob", "builder", "phone").await;
    let mut b2 = s.login("bob", "builder", "laptop").await;
    b1.send("<presence/>").await;
    b2.send("<presence/>").await;
    assert_alive(&mut b1).await;
    assert_alive(&mut b2).await;
    enable(&mut b1, false).await;
    let to = b1.full_jid();
    send_msgs(&mut a, &to, 1..=2).await;
    assert_eq!(bodies(&mut b1, 2).await, ["m1", "m2"]);
    // Without resumption, a clean close ends the session: the unacknowledged go elsewhere.
    b1.send("</stream:stream>").await;
    assert_eq!(bodies(&mut b2, 2).await, ["m1", "m2"]);
    s.stop().await;
}

#[tokio::test]
async fn resumption_while_the_old_connection_is_still_open_closes_it() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut old = s.login("bob", "builder", "phone").await;
    let id = enable(&mut old, true)
        .await
        .attr("id")
        .map(str::to_string)
        .unwrap_or_default();
    let to = old.full_jid();
    send_msgs(&mut a, &to, 1..=3).await;
    assert_eq!(bodies(&mut old, 3).await, ["m1", "m2", "m3"]);
    old.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    ask_h(&mut old).await;
    // The client believes the old connection dead and resumes on a new one (XEP-0198 §5).
    let mut b = s.login_unbound(HOST, "bob", "builder").await;
    b.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    let r = b
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.is("resumed", SM), "{r}");
    b.jid = Some(to.clone());
    assert_eq!(bodies(&mut b, 2).await, ["m2", "m3"]);
    assert_eq!(old.expect_stream_error().await, "conflict");
    assert!(s.is_bound(&to));
    assert_message_flows(&mut a, &mut b).await;
    s.stop().await;
}

/// Reads messages until `n` with a body arrived; checks each carries a delay stamp.
async fn offline_bodies(c: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = c
            .wait_for(|e| e.is("message", ns::CLIENT))
            .await
            .unwrap_or_else(|e| panic!("after {got:?}: {e:#}"));
        assert!(m.has_child("delay", ns::DELAY), "no delay stamp: {m}");
        got.push(
            m.get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
        );
    }
    got
}

/// Asserts nothing but presence follows: no message delivered twice.
async fn no_more_messages(c: &mut Client) {
    c.sync().await;
    while !c.nothing_within(SETTLE).await {
        let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(e.name(), "message", "duplicate delivery: {e}");
    }
}

#[tokio::test]
async fn a_full_queue_while_hibernating_ends_the_session_into_offline_storage_in_order() {
    let mut config = test_config();
    config.c2s.max_send_queue = 4;
    let s = server_with(config).await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send("<presence/>").await;
    let id = enable(&mut b, true)
        .await
        .attr("id")
        .map(str::to_string)
        .unwrap_or_default();
    let to = b.full_jid();
    send_msgs(&mut a, &to, 1..=2).await;
    assert_eq!(bodies(&mut b, 2).await, ["m1", "m2"]);
    drop(b);
    assert!(
        poll_until(WAIT, || s.running.server.sm.hibernating() == 1).await,
        "never hibernated"
    );
    // Four fit in the queue; the fifth overflows it: the session ends at once (not after the
    // five-minute resume timeout) and everything goes to offline storage, oldest first.
    send_msgs(&mut a, &to, 3..=9).await;
    assert!(
        poll_until(WAIT, || !s.is_bound(&to)).await,
        "a full queue did not end the hibernating session"
    );
    assert_eq!(s.running.server.sm.hibernating(), 0);
    let mut b = s.login_unbound(HOST, "bob", "builder").await;
    b.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let f = b
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");
    b.bind(Some("laptop"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence/>").await;
    let want: Vec<String> = (1..=9).map(|i| format!("m{i}")).collect();
    assert_eq!(offline_bodies(&mut b, 9).await, want);
    no_more_messages(&mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn shutdown_moves_hibernating_sessions_messages_to_offline_storage() {
    let storage = canto_storage::Storage::memory();
    let s = TestServer::with_storage(test_config(), storage.clone()).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send("<presence/>").await;
    enable(&mut b, true).await;
    let to = b.full_jid();
    drop(b);
    assert!(
        poll_until(WAIT, || s.running.server.sm.hibernating() == 1).await,
        "never hibernated"
    );
    send_msgs(&mut a, &to, 1..=3).await;
    // SIGTERM's path: connections end, then hibernating sessions do — not lost with the process.
    s.stop().await;
    let s = TestServer::with_storage(test_config(), storage).await;
    let mut b = s.login("bob", "builder", "laptop").await;
    b.send("<presence/>").await;
    assert_eq!(offline_bodies(&mut b, 3).await, ["m1", "m2", "m3"]);
    no_more_messages(&mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn resume_timeout_zero_enables_without_resumption() {
    let mut config = test_config();
    config.stream_management.resume_timeout = 0;
    let s = server_with(config).await;
    let mut b = s.login("bob", "builder", "phone").await;
    let e = enable(&mut b, true).await;
    // XEP-0198 §3: the server may decline resumption; then no id and no resume='true'.
    assert_eq!(e.attr("id"), None, "{e}");
    assert_eq!(e.attr("resume"), None, "{e}");
    // Acks still work.
    b.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(ask_h(&mut b).await, 1);
    s.stop().await;
}

#[tokio::test]
async fn request_ack_after_and_max_unacked_come_from_the_configuration() {
    let mut config = test_config();
    config.stream_management.request_ack_after = 1;
    config.stream_management.max_unacked = 3;
    // The limit is max_unacked + offline.max_messages.
    config.offline.max_messages = 1;
    let s = server_with(config).await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    enable(&mut b, false).await;
    let to = b.full_jid();
    // One unacknowledged stanza is enough for an <r/>.
    send_msgs(&mut a, &to, 1..=1).await;
    b.wait_for(|e| e.is("r", SM))
        .await
        .unwrap_or_else(|e| panic!("no <r/> after one stanza: {e:#}"));
    // Never acknowledging: beyond three unacknowledged the session is closed.
    send_msgs(&mut a, &to, 2..=5).await;
    assert_eq!(b.expect_stream_error().await, "policy-violation");
    s.stop().await;
}

#[tokio::test]
async fn unacked_messages_are_not_rerouted_to_a_resource_that_got_their_carbons() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut phone = s.login("bob", "builder", "phone").await;
    let mut laptop = s.login("bob", "builder", "laptop").await;
    phone.send("<presence/>").await;
    laptop.send("<presence/>").await;
    let r = laptop
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_alive(&mut phone).await;
    enable(&mut phone, false).await;
    let to = phone.full_jid();
    send_msgs(&mut a, &to, 1..=2).await;
    assert_eq!(bodies(&mut phone, 2).await, ["m1", "m2"]);
    // The laptop saw both as XEP-0280 <received/> copies.
    for want in ["m1", "m2"] {
        let c = laptop
            .wait_for(|e| e.is("message", ns::CLIENT))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let body = c
            .get_child("received", "urn:xmpp:carbons:2")
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .and_then(|m| m.get_child("body", ns::CLIENT))
            .map(|b| b.text());
        assert_eq!(body.as_deref(), Some(want), "{c}");
    }
    // The phone ends without acknowledging: the laptop already has them, no second copy.
    phone.send("</stream:stream>").await;
    assert!(poll_until(WAIT, || !s.is_bound(&to)).await);
    laptop.sync().await;
    while !laptop.nothing_within(SETTLE).await {
        let e = laptop.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            !(e.is("message", ns::CLIENT) && e.has_child("body", ns::CLIENT)),
            "re-routed twice: {e}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn without_the_smacks_and_csi_modules_neither_is_offered_nor_accepted() {
    let mut config = test_config();
    config.modules.retain(|m| m != "smacks" && m != "csi");
    let s = server_with(config).await;
    let c = s.login_unbound(HOST, "bob", "builder").await;
    let f = c.features.clone().unwrap_or_else(|| panic!("no features"));
    assert!(!f.has_child("sm", SM), "{f}");
    assert!(!f.has_child("csi", "urn:xmpp:csi:0"), "{f}");
    drop(c);
    // An element of a feature not offered is an unknown top-level element (RFC 6120 §4.9.3.23).
    let mut b = s.login("bob", "builder", "phone").await;
    b.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    assert_eq!(b.expect_stream_error().await, "unsupported-stanza-type");
    let mut b = s.login("bob", "builder", "laptop").await;
    b.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    assert_eq!(b.expect_stream_error().await, "unsupported-stanza-type");
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_account_ends_its_hibernating_session_and_keeps_nothing() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send("<presence/>").await;
    enable(&mut b, true).await;
    let to = b.full_jid();
    send_msgs(&mut a, &to, 1..=2).await;
    assert_eq!(bodies(&mut b, 2).await, ["m1", "m2"]);
    drop(b);
    assert!(
        poll_until(WAIT, || s.running.server.sm.hibernating() == 1).await,
        "never hibernated"
    );
    send_msgs(&mut a, &to, 3..=3).await;
    let bob = canto_stanza::BareJid::new("bob@localhost").unwrap_or_else(|e| panic!("{e}"));
    let existed = s
        .running
        .server
        .delete_account(&bob)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(existed);
    assert_eq!(s.running.server.sm.hibernating(), 0);
    assert!(!s.is_bound(&to));
    // Neither the unacknowledged nor the queued messages outlive the account. The deletion
    // has returned and nothing hibernates: SETTLE only gives a wrong late write its chance.
    tokio::time::sleep(SETTLE).await;
    let left = s
        .storage
        .archive
        .count("offline", HOST, "bob", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, 0);
    s.stop().await;
}

#[tokio::test]
async fn a_full_offline_store_fits_in_the_unacknowledged_queue() {
    // Mobile clients enable stream management before initial presence: the offline messages
    // then arrive unacknowledged, all at once. More of them than max_unacked must not close
    // the session (and lock the account out on every login).
    let mut config = test_config();
    config.stream_management.max_unacked = 10;
    config.offline.max_messages = 40;
    let s = server_with(config).await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    for i in 1..=40 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    assert_alive(&mut a).await;
    let mut b = s.login("bob", "builder", "phone").await;
    enable(&mut b, true).await;
    b.send("<presence/>").await;
    let want: Vec<String> = (1..=40).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&mut b, 40).await, want);
    // Acknowledged, the session goes on.
    let h = ask_h(&mut b).await;
    assert_eq!(h, 1, "the presence");
    b.send(&format!("<a xmlns='{SM}' h='41'/>")).await;
    assert_alive(&mut b).await;
    s.stop().await;
}
