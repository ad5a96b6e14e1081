//! XEP-0191 Blocking Command end to end, with several resources per account.
use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const QUIET: Duration = Duration::from_millis(300);
const BLOCKING: &str = "urn:xmpp:blocking";

fn is_presence(e: &Element) -> bool {
    e.is("presence", ns::CLIENT)
}

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

async fn server() -> TestServer {
    let mut cfg = test_config();
    cfg.modules.push("blocking".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    s
}

fn blocked_condition(e: &Element) -> bool {
    e.get_child("error", ns::CLIENT)
        .is_some_and(|err| err.has_child("blocked", "urn:xmpp:blocking:errors"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_pushes_and_enforcement_both_ways() {
    let s = server().await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut a3 = s.login("alice", "pa", "a3").await;
    let mut b = s.login("bob", "pb", "b1").await;
    for c in [&mut a1, &mut a2] {
        let r = c
            .iq("<iq type='get' id='{id}'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            r.get_child("blocklist", BLOCKING)
                .is_some_and(|l| l.children().next().is_none())
        );
    }
    // XEP-0191 §3.3: block bob; a1 and a2 (which fetched the list) get the push, a3 not.
    let r = a1
        .iq("<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    let push = a2
        .wait_for(|e| e.attr("type") == Some("set") && e.has_child("block", BLOCKING))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(push.to_string().contains("bob@localhost"));
    assert!(
        !drain(&mut a3)
            .await
            .iter()
            .any(|e| e.has_child("block", BLOCKING))
    );
    // §3.2: from the blocked contact: message and IQ get service-unavailable, presence is dropped.
    b.send("<message to='alice@localhost/a1' id='m1'><body>hi</body></message>")
        .await;
    let e = b
        .wait_for(|e| e.attr("id") == Some("m1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    b.send("<iq to='alice@localhost/a1' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let e = b
        .wait_for(|e| e.attr("id") == Some("q1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    b.send("<presence to='alice@localhost'/>").await;
    assert!(b.nothing_within(QUIET).await);
    assert!(
        !drain(&mut a1)
            .await
            .iter()
            .any(|e| e.attr("from").is_some_and(|f| f.starts_with("bob@")))
    );
    // §3.5: to the blocked contact: not-acceptable with <blocked/>.
    a1.send("<message to='bob@localhost' id='m2'><body>hi</body></message>")
        .await;
    let e = a1
        .wait_for(|e| e.attr("id") == Some("m2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    assert!(blocked_condition(&e), "{e}");
    assert!(!drain(&mut b).await.iter().any(|e| e.name() == "message"));
    // §3.4: unblock all; pushes with an empty <unblock/>; messages flow again.
    let r = a2
        .iq("<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    let push = a1
        .wait_for(|e| e.attr("type") == Some("set") && e.has_child("unblock", BLOCKING))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        push.get_child("unblock", BLOCKING)
            .is_some_and(|u| u.children().next().is_none())
    );
    b.send("<message to='alice@localhost/a1'><body>again</body></message>")
        .await;
    a1.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_subscribed_contact_hides_presence_and_unblocking_restores_it() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b = s.login("bob", "pb", "b1").await;
    for c in [&mut a, &mut b] {
        c.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        c.send("<presence/>").await;
    }
    // bob subscribes to alice, alice approves: bob sees alice's presence.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    b.wait_for(|e| {
        is_presence(e) && e.attr("from") == Some("alice@localhost/a1") && e.attr("type").is_none()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    drain(&mut a).await;
    drain(&mut b).await;
    // Blocking sends bob unavailable from alice (XEP-0191 §3.3) …
    a.iq("<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.wait_for(|e| {
        is_presence(e)
            && e.attr("from") == Some("alice@localhost/a1")
            && e.attr("type") == Some("unavailable")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // … and her later presence changes do not reach him.
    a.send("<presence><status>hidden</status></presence>").await;
    assert!(
        !drain(&mut b)
            .await
            .iter()
            .any(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
    );
    // Unblocking sends current presence again (§3.4).
    a.iq("<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p = b
        .wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.to_string().contains("hidden"), "{p}");
    s.stop().await;
}
