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
    // Until the server's own clock has counted a second (no fixed sleep).
    let up = poll_until(WAIT, || s.running.server.uptime() >= Duration::from_secs(1)).await;
    assert!(up, "uptime {:?}", s.running.server.uptime());
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

fn last_query(r: &canto_xml::Element) -> (u64, String) {
    let q = r
        .get_child("query", "jabber:iq:last")
        .unwrap_or_else(|| panic!("no query: {r}"));
    (seconds(r), q.text())
}

/// Waits until `user` has a stored last-activity record (written after the fact, by a task of
/// its own) and moves its time `ms` milliseconds into the past.
async fn age_last_activity(s: &TestServer, user: &str, ms: u64) {
    let kv = &s.storage.kv;
    let end = std::time::Instant::now() + WAIT;
    let record = loop {
        let got = kv.get("lastactivity", HOST, user).await;
        match got.unwrap_or_else(|e| panic!("{e}")) {
            Some(r) => break String::from_utf8_lossy(&r).into_owned(),
            None if std::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None => panic!("no last activity stored for {user}"),
        }
    };
    // The record is `<last ms='UNIX-MILLIS'>status</last>`.
    let (head, rest) = record
        .split_once("ms=")
        .unwrap_or_else(|| panic!("no ms in {record}"));
    let q = &rest[..1];
    let (value, tail) = rest[1..]
        .split_once(q)
        .unwrap_or_else(|| panic!("bad ms in {record}"));
    let then: u64 = value.parse().unwrap_or_else(|e| panic!("{record}: {e}"));
    let aged = format!("{head}ms={q}{}{q}{tail}", then - ms);
    kv.set("lastactivity", HOST, user, Some(aged.as_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

const ASK_ALICE: &str =
    "<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>";

/// XEP-0012 §3: a contact allowed to see alice's presence learns how long ago she went
/// unavailable and the status she left; while she has an available resource the answer is 0;
/// strangers get forbidden (a missing account service-unavailable, RFC 6121 §8.5.1); a session
/// that ends without unavailable presence counts too (no status then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_user_query_gives_time_and_status_to_contacts_only() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.login("alice", "pw", "a1").await;
    let mut b = s.login("bob", "pw", "b1").await;
    let mut c = s.login("carol", "pw", "c1").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    // bob subscribes to alice, alice approves: alice's roster gives bob `from`.
    subscribe_to(&mut b, &mut a).await;

    // Online: zero.
    let r = b.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(last_query(&r), (0, String::new()), "{r}");
    // Not a contact: forbidden; no such account: service-unavailable.
    for (to, want) in [
        ("alice@localhost", "forbidden"),
        ("nobody@localhost", "service-unavailable"),
    ] {
        let r = c
            .iq(&format!(
                "<iq type='get' id='{{id}}' to='{to}'><query xmlns='jabber:iq:last'/></iq>"
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(error_condition(&r).as_deref(), Some(want), "{r}");
    }

    // Unavailable with a status, then a while offline.
    a.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    b.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    drop(a);
    s.wait_unbound("alice@localhost/a1").await;
    // "A while offline" without waiting for it: the stored record is made 5 s older.
    age_last_activity(&s, "alice", 5_000).await;
    let r = b.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (secs, status) = last_query(&r);
    assert!((5..600).contains(&secs), "{r}");
    assert_eq!(status, "gone fishing");
    assert_eq!(r.attr("from"), Some("alice@localhost"), "{r}");
    let r = c.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");

    // Back, and gone again by a dropped connection: the record is renewed, without status.
    let mut a = s.login("alice", "pw", "a2").await;
    a.send("<presence/>").await;
    b.wait_for(|e| {
        e.name() == "presence"
            && e.attr("from") == Some("alice@localhost/a2")
            && e.attr("type").is_none()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let r = b.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(seconds(&r), 0, "{r}");
    drop(a);
    b.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut last = (u64::MAX, String::from("?"));
    for _ in 0..50 {
        let r = b.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
        last = last_query(&r);
        if last.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, (0, String::new()));
    s.stop().await;
}

/// A user asks about herself (§3 allows it); an account that never went unavailable has
/// nothing to tell (item-not-found); the record goes with the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_last_activity_and_the_record_goes_with_the_account() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut b = s.login("bob", "pw", "b1").await;
    let r = b
        .iq("<iq type='get' id='{id}' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("item-not-found"),
        "{r}"
    );
    // Available, then unavailable: her own query sees the record.
    let mut a = s.login("alice", "pw", "a1").await;
    a.send("<presence/>").await;
    a.send("<presence type='unavailable'><status>bye</status></presence>")
        .await;
    let r = a.iq(ASK_ALICE).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(last_query(&r), (0, "bye".to_string()), "{r}");
    let stored = || async {
        s.storage
            .kv
            .get("lastactivity", "localhost", "alice")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(stored().await.is_some());
    // Deleted while available: the session's end comes after the deletion, and leaves nothing.
    a.send("<presence/>").await;
    assert_alive(&mut a).await;
    let alice = canto_stanza::BareJid::new("alice@localhost").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.running
            .server
            .delete_account(&alice)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    // The session's end records last activity in a task of its own (after the session left
    // the routing table); SETTLE is for that task, which nothing outside can observe.
    s.wait_unbound("alice@localhost/a1").await;
    tokio::time::sleep(SETTLE).await;
    assert!(stored().await.is_none());
    s.stop().await;
}
