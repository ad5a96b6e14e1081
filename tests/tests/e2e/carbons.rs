//! XEP-0280 Message Carbons end to end with several resources per account.

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

async fn drain(c: &mut Client) -> Vec<Element> {
    c.drain().await
}

/// The forwarded message inside a carbon of `direction`.
fn carbon<'a>(e: &'a Element, direction: &str) -> Option<&'a Element> {
    e.get_child(direction, CARBONS)?
        .get_child("forwarded", FORWARD)?
        .get_child("message", ns::CLIENT)
}

async fn enable(c: &mut Client) {
    let r = c
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_and_received_copies_go_to_enabled_resources_only() {
    let mut cfg = test_config();
    cfg.modules.push("carbons".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut a3 = s.login("alice", "pa", "a3").await;
    let mut b = s.login("bob", "pb", "b1").await;
    enable(&mut a1).await;
    enable(&mut a2).await;
    // XEP-0280 §8: bob → alice/a1: a1 gets the message, a2 a <received/> carbon, a3 nothing.
    b.send("<message to='alice@localhost/a1' type='chat'><body>to a1</body></message>")
        .await;
    let m = a1
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(carbon(&m, "received").is_none(), "a1 got the original: {m}");
    let c = a2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let inner = carbon(&c, "received").unwrap_or_else(|| panic!("not a received carbon: {c}"));
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(inner.attr("from"), Some("bob@localhost/b1"));
    assert_eq!(
        inner
            .get_child("body", ns::CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some("to a1")
    );
    assert!(!drain(&mut a3).await.iter().any(|e| e.name() == "message"));
    // §7: a1 → bob: a2 gets a <sent/> carbon, a1 itself does not.
    a1.send("<message to='bob@localhost/b1' type='chat'><body>from a1</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let c = a2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let inner = carbon(&c, "sent").unwrap_or_else(|| panic!("not a sent carbon: {c}"));
    assert_eq!(inner.attr("to"), Some("bob@localhost/b1"));
    assert_eq!(inner.attr("from"), Some("alice@localhost/a1"));
    assert!(!drain(&mut a1).await.iter().any(|e| e.name() == "message"));
    // §6 and §7: <private/> and XEP-0334 <no-copy/> are not copied; nor is groupchat or headline.
    for extra in [
        "<private xmlns='urn:xmpp:carbons:2'/>",
        "<no-copy xmlns='urn:xmpp:hints'/>",
    ] {
        b.send(&format!(
            "<message to='alice@localhost/a1' type='chat'><body>p</body>{extra}</message>"
        ))
        .await;
        let m = a1
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        // §7: the receiving server removes the <private/> mark before delivery.
        assert!(!m.has_child("private", "urn:xmpp:carbons:2"), "{m}");
    }
    b.send("<message to='alice@localhost/a1' type='headline'><body>h</body></message>")
        .await;
    b.sync().await;
    assert!(
        !drain(&mut a2).await.iter().any(|e| e.name() == "message"),
        "a2 got a copy it should not"
    );
    // §5: disable stops copies.
    let r = a2
        .iq("<iq type='set' id='{id}'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    b.send("<message to='alice@localhost/a1' type='chat'><body>late</body></message>")
        .await;
    a1.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!drain(&mut a2).await.iter().any(|e| e.name() == "message"));
    s.stop().await;
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", ns::CLIENT).map(|b| b.text())
}

/// The messages that arrive until the stream has been quiet for a while.
async fn messages(c: &mut Client) -> Vec<Element> {
    drain(c)
        .await
        .into_iter()
        .filter(|e| e.is("message", ns::CLIENT))
        .collect()
}

async fn available(c: &mut Client) {
    c.send("<presence/>").await;
    drain(c).await;
}

/// alice with three available resources, carbons on a1 and a2 only, and bob.
async fn three_resources(s: &TestServer) -> (Client, Client, Client, Client) {
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut a3 = s.login("alice", "pa", "a3").await;
    let mut b = s.login("bob", "pb", "b1").await;
    for c in [&mut a1, &mut a2, &mut a3, &mut b] {
        available(c).await;
    }
    enable(&mut a1).await;
    enable(&mut a2).await;
    (a1, a2, a3, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_messages_are_copied_only_to_resources_that_did_not_get_them() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, mut a3, mut b) = three_resources(&s).await;
    // A chat to the bare JID goes to every resource of the highest priority (RFC 6121
    // §8.5.2.1.1, as configured by default); XEP-0280 §6: none of them gets a carbon on top.
    b.send("<message to='alice@localhost' type='chat'><body>to all</body></message>")
        .await;
    b.sync().await;
    for c in [&mut a1, &mut a2, &mut a3] {
        let got = messages(c).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(body(&got[0]).as_deref(), Some("to all"), "{got:?}");
    }
    // A normal message to the bare JID goes to one resource; each carbons-enabled resource that
    // did not get it gets a <received/> copy, a3 (carbons off) nothing unless it was chosen.
    b.send("<message to='alice@localhost'><body>to one</body></message>")
        .await;
    b.sync().await;
    let mut originals = 0;
    for (i, c) in [&mut a1, &mut a2, &mut a3].into_iter().enumerate() {
        let got = messages(c).await;
        assert_eq!(
            got.len(),
            if i < 2 { 1 } else { got.len().min(1) },
            "{got:?}"
        );
        for m in got {
            if let Some(inner) = carbon(&m, "received") {
                assert!(i < 2, "a3 has carbons off: {m}");
                assert_eq!(m.attr("from"), Some("alice@localhost"), "{m}");
                assert_eq!(inner.attr("to"), Some("alice@localhost"), "{m}");
                assert_eq!(body(inner).as_deref(), Some("to one"), "{m}");
            } else {
                assert_eq!(body(&m).as_deref(), Some("to one"), "{m}");
                originals += 1;
            }
        }
    }
    assert_eq!(originals, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn which_messages_are_copied() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, mut a3, mut b) = three_resources(&s).await;
    // XEP-0280 §6: normal without a body (a receipt) and groupchat are not copied …
    for xml in [
        "<message to='alice@localhost/a3' id='n1'><received xmlns='urn:xmpp:receipts' id='x1'/></message>",
        "<message to='alice@localhost/a3' type='groupchat' id='g1'><body>g</body></message>",
    ] {
        b.send(xml).await;
    }
    b.sync().await;
    let got = messages(&mut a3).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for c in [&mut a1, &mut a2] {
        let got = messages(c).await;
        assert!(got.is_empty(), "{got:?}");
    }
    // … errors are: a bounce that reaches a3 is copied to a1 and a2 as <received/>.
    b.send("<message to='alice@localhost/a3' type='error' id='e1'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>").await;
    a3.wait_for(|e| e.attr("id") == Some("e1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for c in [&mut a1, &mut a2] {
        let m = c
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let inner = carbon(&m, "received").unwrap_or_else(|| panic!("{m}"));
        assert_eq!(inner.attr("type"), Some("error"), "{m}");
        assert_eq!(inner.attr("id"), Some("e1"), "{m}");
    }
    // §7: a message sent by a resource without carbons is still copied to the enabled ones;
    // to a bare JID too, addressed as it was sent.
    a3.send("<message to='bob@localhost' type='chat' id='s1'><body>from a3</body></message>")
        .await;
    b.wait_for(|e| e.attr("id") == Some("s1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for c in [&mut a1, &mut a2] {
        let m = c
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let inner = carbon(&m, "sent").unwrap_or_else(|| panic!("{m}"));
        assert_eq!(m.attr("from"), Some("alice@localhost"), "{m}");
        assert_eq!(m.attr("to"), c.jid.as_deref(), "{m}");
        assert_eq!(m.attr("type"), Some("chat"), "{m}");
        assert_eq!(inner.attr("from"), Some("alice@localhost/a3"), "{m}");
        assert_eq!(inner.attr("to"), Some("bob@localhost"), "{m}");
    }
    assert!(messages(&mut a3).await.is_empty());
    // A normal message with a body is copied both ways.
    a3.send("<message to='bob@localhost/b1' id='s2'><body>normal</body></message>")
        .await;
    for c in [&mut a1, &mut a2] {
        let m = c
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            carbon(&m, "sent").is_some_and(|i| i.attr("id") == Some("s2")),
            "{m}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_from_outside_are_not_trusted_or_copied() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, _a3, mut b) = three_resources(&s).await;
    // bob wraps a fake "received" carbon. The server stamps bob's full JID as the sender, so
    // alice's client can tell it from a real carbon, which comes from her bare JID (XEP-0280
    // §11); the server does not copy it to her other resources as if it were a message.
    let fake = "<received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='carol@localhost/c1' to='alice@localhost/a1' type='chat'><body>fake</body></message></forwarded></received>";
    b.send(&format!(
        "<message to='alice@localhost/a1' type='chat' id='f1'>{fake}</message>"
    ))
    .await;
    let m = a1
        .wait_for(|e| e.attr("id") == Some("f1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("from"), Some("bob@localhost/b1"), "{m}");
    let got = messages(&mut a2).await;
    assert!(got.is_empty(), "{got:?}");
    // Claiming alice's bare JID as sender is not possible: invalid-from ends bob's stream
    // (RFC 6120 §8.1.2.1) and nothing reaches alice.
    b.send(&format!(
        "<message from='alice@localhost' to='alice@localhost/a1' type='chat' id='f2'>{fake}</message>"
    ))
    .await;
    assert_eq!(b.closed().await, Closed::Error("invalid-from".into()));
    assert!(messages(&mut a1).await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_and_disable_rules() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    // XEP-0280 §3: advertised by the server.
    let r = a
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.to_string().contains("var='urn:xmpp:carbons:2'"), "{r}");
    // §10.1: repeated enable and disable are not errors, with or without `to` (own bare JID or
    // the server).
    for xml in [
        "<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        "<iq type='set' id='{id}' to='alice@localhost'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        "<iq type='set' id='{id}' to='localhost'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
        "<iq type='set' id='{id}'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
    ] {
        let r = a.iq(xml).await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.attr("type"), Some("result"), "{xml}: {r}");
    }
    // Turning on someone else's carbons is not allowed; an unknown element is bad-request.
    let r = a
        .iq("<iq type='set' id='{id}' to='bob@localhost'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    let r = a
        .iq("<iq type='set' id='{id}'><turn-on xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    s.stop().await;
}
