//! XEP-0012 Last Activity end to end: the server's uptime (§4), as Prosody's mod_uptime.
use std::time::Duration;

use canto_tests::*;

fn seconds(r: &canto_xml::Element) -> u64 {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.get_child("query", "jabber:iq:last")
        .and_then(|q| q.attr("seconds"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds: {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_uptime_grows() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let ask = "<iq type='get' id='{id}' to='localhost'><query xmlns='jabber:iq:last'/></iq>";
    let r = a.iq(ask).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("from"), Some("localhost"), "{r}");
    let first = seconds(&r);
    // The server started moments ago (generous bound).
    assert!(first < 600, "{r}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = a.iq(ask).await.unwrap_or_else(|e| panic!("{e:#}"));
    let second = seconds(&r);
    assert!(second >= 1 && second >= first, "{first} then {second}");
    // §4: a server query carries no status text.
    assert!(
        r.get_child("query", "jabber:iq:last")
            .is_some_and(|q| q.text().is_empty()),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_module_last_activity_is_unavailable() {
    let mut cfg = test_config();
    cfg.modules.retain(|m| m != "last");
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let r = a
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    let r = a
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!r.to_string().contains("jabber:iq:last"), "{r}");
    s.stop().await;
}
