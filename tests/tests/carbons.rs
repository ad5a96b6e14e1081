//! XEP-0280 Message Carbons end to end with several resources per account.
use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const QUIET: Duration = Duration::from_millis(300);
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

async fn drain(c: &mut Client) -> Vec<Element> {
    let mut v = Vec::new();
    while !c.nothing_within(QUIET).await {
        match c.next().await {
            Ok(e) => v.push(e),
            Err(_) => break,
        }
    }
    v
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
        a1.wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    b.send("<message to='alice@localhost/a1' type='headline'><body>h</body></message>")
        .await;
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
