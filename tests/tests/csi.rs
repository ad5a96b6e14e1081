//! XEP-0352 Client State Indication over real sockets: while a client is inactive, presence
//! updates and bare chat states wait; messages with a body and IQs do not; `<active/>` flushes
//! what waited, in order.

use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;

const CSI: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

async fn server() -> TestServer {
    let s = TestServer::start().await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s
}

#[tokio::test]
async fn inactive_client_gets_presence_and_chat_states_late_and_in_order() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut phone = s.login("bob", "builder", "phone").await;
    let f = phone
        .features
        .clone()
        .unwrap_or_else(|| panic!("no features"));
    assert!(f.has_child("csi", CSI), "{f}");
    let mut laptop = s.login("bob", "builder", "laptop").await;
    phone.send("<presence/>").await;
    laptop.send("<presence/>").await;
    assert_alive(&mut laptop).await;
    assert_alive(&mut phone).await;
    // Whatever initial presence brought, skip it.
    while !phone.nothing_within(Duration::from_millis(300)).await {
        let _ = phone.next().await;
    }

    phone.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_alive(&mut phone).await; // IQs still answered at once
    laptop.send("<presence><show>away</show></presence>").await;
    assert_alive(&mut laptop).await;
    a.send(&format!(
        "<message to='{}' type='chat'><composing xmlns='{CHATSTATES}'/></message>",
        phone.full_jid()
    ))
    .await;
    assert_alive(&mut a).await;
    assert!(
        phone.nothing_within(Duration::from_millis(500)).await,
        "held stanzas leaked while inactive"
    );

    // Active: both arrive, in the order they were routed.
    phone.send(&format!("<active xmlns='{CSI}'/>")).await;
    let p = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        p.is("presence", ns::CLIENT) && p.has_child("show", ns::CLIENT),
        "{p}"
    );
    let m = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        m.is("message", ns::CLIENT) && m.has_child("composing", CHATSTATES),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn inactive_client_gets_messages_with_a_body_and_iqs_at_once() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_alive(&mut b).await;
    a.send(&format!(
        "<message to='{}' type='chat'><composing xmlns='{CHATSTATES}'/></message>",
        b.full_jid()
    ))
    .await;
    a.send(&format!(
        "<message to='{}' type='chat'><body>hi</body><active xmlns='{CHATSTATES}'/></message>",
        b.full_jid()
    ))
    .await;
    // The message with a body comes at once, the chat state that waited just before it.
    let m1 = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(m1.has_child("composing", CHATSTATES), "{m1}");
    let m2 = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(m2.has_child("body", ns::CLIENT), "{m2}");
    // An IQ from another entity is delivered at once too.
    a.send(&format!(
        "<iq type='get' id='p1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        b.full_jid()
    ))
    .await;
    let iq = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(iq.is("iq", ns::CLIENT), "{iq}");
    s.stop().await;
}

#[tokio::test]
async fn csi_max_held_bounds_what_waits() {
    let mut config = test_config();
    config.csi.max_held = 2;
    let s = TestServer::with_config(config).await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut b = s.login("bob", "builder", "phone").await;
    b.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_alive(&mut b).await;
    let to = b.full_jid();
    let state = |n: u32| {
        format!(
            "<message to='{to}' type='chat' id='s{n}'><composing xmlns='{CHATSTATES}'/></message>"
        )
    };
    a.send(&state(1)).await;
    a.send(&state(2)).await;
    assert_alive(&mut a).await;
    assert!(
        b.nothing_within(Duration::from_millis(300)).await,
        "two chat states should wait (csi.max_held = 2)"
    );
    // A third that could wait does not fit: everything goes out, in order.
    a.send(&state(3)).await;
    for want in ["s1", "s2", "s3"] {
        let m = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(m.attr("id"), Some(want), "{m}");
    }
    s.stop().await;
}
