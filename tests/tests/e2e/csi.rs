//! XEP-0352 Client State Indication over real sockets: while a client is inactive, presence
//! updates and bare chat states wait; messages with a body and IQs do not; `<active/>` flushes
//! what waited, in order.

use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;

const CSI: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// How long an inactive client is watched for stanzas that should wait. Its own ping would
/// flush them (an IQ cannot wait), so no sync round trip here: the senders' round trips have
/// already put the stanzas in its queue, and its session takes them from there at once.
const HELD: Duration = Duration::from_millis(200);

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
    phone.drain().await;

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
        phone.nothing_within(HELD).await,
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
        b.nothing_within(HELD).await,
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

async fn drain(c: &mut Client) {
    c.drain().await;
}

fn show(e: &canto_xml::Element) -> Option<String> {
    e.get_child("show", ns::CLIENT).map(|s| s.text())
}

#[tokio::test]
async fn only_the_inactive_resource_waits_and_urgent_stanzas_flush_it_in_order() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut phone = s.login("bob", "builder", "phone").await;
    let mut laptop = s.login("bob", "builder", "laptop").await;
    phone.send("<presence/>").await;
    laptop.send("<presence/>").await;
    drain(&mut phone).await;
    drain(&mut laptop).await;
    phone.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_alive(&mut phone).await;

    // Directed presence and a bare chat state to bob's bare JID reach both resources: the
    // active laptop at once, the inactive phone not yet (XEP-0352 §5).
    a.send("<presence to='bob@localhost'><show>away</show></presence>")
        .await;
    a.send(&format!(
        "<message to='bob@localhost' type='chat'><composing xmlns='{CHATSTATES}'/></message>"
    ))
    .await;
    let p = laptop
        .wait_for(|e| e.is("presence", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(show(&p).as_deref(), Some("away"), "{p}");
    laptop
        .wait_for(|e| e.has_child("composing", CHATSTATES))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        phone.nothing_within(HELD).await,
        "held stanzas leaked while inactive"
    );
    // A subscription request is no mere presence update: it comes at once, after what waited,
    // in the order routed.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let first = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(show(&first).as_deref(), Some("away"), "{first}");
    let second = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(second.has_child("composing", CHATSTATES), "{second}");
    let third = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(third.attr("type"), Some("subscribe"), "{third}");
    // Still inactive: the next updates wait again, and <active/> delivers them in order.
    a.send("<presence to='bob@localhost'><show>dnd</show></presence>")
        .await;
    a.send(&format!(
        "<message to='bob@localhost/phone' type='chat'><paused xmlns='{CHATSTATES}'/></message>"
    ))
    .await;
    a.send("<presence to='bob@localhost'><show>xa</show></presence>")
        .await;
    assert_alive(&mut a).await;
    assert!(phone.nothing_within(HELD).await);
    phone.send(&format!("<active xmlns='{CSI}'/>")).await;
    let got: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(phone.next().await.unwrap_or_else(|e| panic!("{e:#}")));
        }
        v
    };
    assert_eq!(show(&got[0]).as_deref(), Some("dnd"), "{got:?}");
    assert!(got[1].has_child("paused", CHATSTATES), "{got:?}");
    assert_eq!(show(&got[2]).as_deref(), Some("xa"), "{got:?}");
    // Active again: presence comes straight through.
    a.send("<presence to='bob@localhost'/>").await;
    let p = phone
        .wait_for(|e| e.is("presence", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(show(&p), None, "{p}");
    s.stop().await;
}

#[tokio::test]
async fn carbons_and_errors_to_an_inactive_resource() {
    let s = server().await;
    let mut a = s.login("alice", "wonderland", "r1").await;
    let mut phone = s.login("bob", "builder", "phone").await;
    let mut laptop = s.login("bob", "builder", "laptop").await;
    let r = phone
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    phone.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_alive(&mut phone).await;
    // The laptop's chat state to alice: its carbon waits on the phone …
    laptop
        .send(&format!(
            "<message to='alice@localhost/r1' type='chat'><composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    a.wait_for(|e| e.has_child("composing", CHATSTATES))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(phone.nothing_within(HELD).await);
    // … the carbon of a message with a body does not, and brings the held one first.
    laptop
        .send("<message to='alice@localhost/r1' type='chat'><body>hello</body></message>")
        .await;
    let c1 = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        c1.has_child("sent", "urn:xmpp:carbons:2") && c1.to_string().contains("composing"),
        "{c1}"
    );
    let c2 = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        c2.has_child("sent", "urn:xmpp:carbons:2") && c2.to_string().contains("hello"),
        "{c2}"
    );
    // An error bounce is delivered at once.
    a.send(&format!(
        "<message to='{}' type='error' id='e1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        phone.full_jid()
    ))
    .await;
    let e = phone.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(e.attr("id"), Some("e1"), "{e}");
    s.stop().await;
}
