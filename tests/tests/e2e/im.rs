//! RFC 6121 end to end: rosters, subscriptions, presence, delivery rules, offline messages.

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

fn is_presence(e: &Element) -> bool {
    e.is("presence", ns::CLIENT)
}

fn roster_items(e: &Element) -> Vec<(String, String, bool)> {
    e.get_child("query", ns::ROSTER)
        .map(|q| {
            q.children()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or_default().to_string(),
                        i.attr("subscription").unwrap_or_default().to_string(),
                        i.attr("ask") == Some("subscribe"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn roster(c: &mut Client) -> Vec<(String, String, bool)> {
    let r = c
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    roster_items(&r.unwrap_or_else(|e| panic!("roster get: {e:#}")))
}

async fn push(c: &mut Client) -> Element {
    c.wait_for(|e| {
        e.is("iq", ns::CLIENT) && e.attr("type") == Some("set") && e.has_child("query", ns::ROSTER)
    })
    .await
    .unwrap_or_else(|e| panic!("roster push: {e:#}"))
}

type Pred<'a> = &'a dyn Fn(&Element) -> bool;

/// Reads until every predicate has matched one element (in any order), returning the matches
/// in predicate order; other elements are skipped.
async fn expect_all(c: &mut Client, preds: &[Pred<'_>]) -> Vec<Element> {
    let mut found: Vec<Option<Element>> = vec![None; preds.len()];
    while found.iter().any(Option::is_none) {
        let e = c.next().await.unwrap_or_else(|e| {
            panic!(
                "waiting for {} more: {e:#}",
                found.iter().filter(|f| f.is_none()).count()
            )
        });
        if let Some(i) = (0..preds.len()).find(|&i| found[i].is_none() && preds[i](&e)) {
            found[i] = Some(e);
        }
    }
    found.into_iter().flatten().collect()
}

fn is_push(e: &Element) -> bool {
    e.is("iq", ns::CLIENT) && e.attr("type") == Some("set") && e.has_child("query", ns::ROSTER)
}

/// Everything that arrives until the stream is quiet.
async fn drain(c: &mut Client) -> Vec<Element> {
    c.drain().await
}

/// Sends an IQ set and returns (its result, a roster push that arrived with it).
async fn set_with_push(c: &mut Client, xml: &str) -> (Element, Element) {
    let id = c.id();
    c.send(&xml.replace("{id}", &id)).await;
    let got = expect_all(
        c,
        &[
            &|e: &Element| e.attr("id") == Some(id.as_str()) && e.attr("type") != Some("set"),
            &is_push,
        ],
    )
    .await;
    (got[0].clone(), got[1].clone())
}

async fn setup() -> (TestServer, Client, Client) {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let a = s.login("alice", "pa", "a1").await;
    let b = s.login("bob", "pb", "b1").await;
    (s, a, b)
}

/// Both online, interested and available.
async fn online_pair() -> (TestServer, Client, Client) {
    let (s, mut a, mut b) = setup().await;
    roster(&mut a).await;
    roster(&mut b).await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    // Each gets its own presence back (RFC 6121 §4.2.2).
    a.wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (s, a, b)
}

/// Full mutual subscription: alice ↔ bob, answering every step.
async fn subscribe_both(a: &mut Client, b: &mut Client) {
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b.wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    a.sync().await;
    b.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_set_get_remove_and_pushes_go_to_interested_resources_only() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    let mut a1 = s.login("alice", "pa", "one").await;
    let mut a2 = s.login("alice", "pa", "two").await;
    let mut a3 = s.login("alice", "pa", "three").await;
    assert!(roster(&mut a1).await.is_empty());
    roster(&mut a2).await;
    // a3 never fetched the roster: not interested.
    let (r, p1) = set_with_push(
        &mut a1,
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='Carol@Localhost' name='Carol'><group>Friends</group></item></query></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p2 = push(&mut a2).await;
    for (c, p) in [(&mut a1, p1), (&mut a2, p2)] {
        let item = p
            .get_child("query", ns::ROSTER)
            .and_then(|q| q.get_child("item", ns::ROSTER))
            .cloned();
        assert_eq!(
            item.as_ref().and_then(|i| i.attr("jid")),
            Some("carol@localhost")
        );
        assert_eq!(
            item.as_ref().and_then(|i| i.attr("subscription")),
            Some("none")
        );
        // RFC 6121 §2.1.6: the client acknowledges pushes.
        let id = p.attr("id").unwrap_or_default().to_string();
        c.send(&format!("<iq type='result' id='{id}'/>")).await;
    }
    assert!(a3.quiet().await, "a non-interested resource got a push");
    assert_eq!(
        roster(&mut a1).await,
        vec![("carol@localhost".into(), "none".into(), false)]
    );
    // §2.5: remove.
    let r = a1
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' subscription='remove'/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    let p = push(&mut a2).await;
    assert!(p.to_string().contains("subscription='remove'"));
    assert!(roster(&mut a1).await.is_empty());
    // §2.5.3: removing what is not there.
    let r = a1
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='nobody@localhost' subscription='remove'/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_roster_sets_get_the_rfc_errors() {
    let (s, mut a, mut b) = setup().await;
    let cases = [
        // RFC 6121 §2.3.3
        (
            "<item jid='x@localhost'/><item jid='y@localhost'/>",
            "bad-request",
        ),
        (
            "<item jid='x@localhost'><group>G</group><group>G</group></item>",
            "bad-request",
        ),
        (
            "<item jid='x@localhost'><group></group></item>",
            "not-acceptable",
        ),
        ("<item jid='@localhost'/>", "jid-malformed"),
        ("", "bad-request"),
    ];
    for (inner, cond) in cases {
        let r = a
            .iq(&format!(
                "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:roster'>{inner}</query></iq>"
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(error_condition(&r).as_deref(), Some(cond), "{inner}");
    }
    let long = "n".repeat(2000);
    let r = a
        .iq(&format!("<iq type='set' id='{{id}}'><query xmlns='jabber:iq:roster'><item jid='x@localhost' name='{long}'/></query></iq>"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    // RFC 6121 §2.1.5 (a sender not authorized for a roster gets forbidden): another account's
    // roster is never shown.
    let r = b
        .iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:roster'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    assert!(roster(&mut a).await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_size_limit_is_not_allowed() {
    let mut cfg = test_config();
    cfg.roster.max_items = 2;
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "r").await;
    for (i, want) in [(1, None), (2, None), (3, Some("not-allowed"))] {
        let r = a
            .iq(&format!("<iq type='set' id='{{id}}'><query xmlns='jabber:iq:roster'><item jid='c{i}@localhost'/></query></iq>"))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(error_condition(&r).as_deref(), want);
    }
    // Updating an existing item at the limit is fine.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='c1@localhost' name='One'/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_versioning() {
    let (s, mut a, _b) = setup().await;
    // RFC 6121 §2.6: a versioned get returns the version.
    let r = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ver0 = r
        .get_child("query", ns::ROSTER)
        .and_then(|q| q.attr("ver"))
        .map(str::to_string);
    assert!(ver0.is_some());
    let r = a
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{}'/></iq>",
            ver0.clone().unwrap_or_default()
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // §2.6.3: unchanged: empty result.
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.children().next().is_none());
    let (_, p) = set_with_push(
        &mut a,
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='z@localhost'/></query></iq>",
    )
    .await;
    let pver = p
        .get_child("query", ns::ROSTER)
        .and_then(|q| q.attr("ver"))
        .map(str::to_string);
    assert!(
        pver.is_some() && pver != ver0,
        "pushes carry the new version"
    );
    let r = a
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{}'/></iq>",
            ver0.unwrap_or_default()
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        r.get_child("query", ns::ROSTER)
            .and_then(|q| q.attr("ver"))
            .map(str::to_string),
        pver
    );
    assert_eq!(roster_items(&r).len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_handshake_pushes_and_presence() {
    let (s, mut a, mut b) = online_pair().await;
    // RFC 6121 §3.1.2: alice asks; her roster shows ask='subscribe'.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let p = push(&mut a).await;
    assert!(p.to_string().contains("ask='subscribe'"), "{p}");
    // §3.1.3: bob gets the request from alice's bare JID.
    let req = b
        .wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(req.attr("from"), Some("alice@localhost"));
    // §3.1.5: bob approves: his roster gets alice with 'from', alice's with 'to', and alice
    // gets bob's current presence.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let pb = push(&mut b).await;
    assert!(pb.to_string().contains("subscription='from'"), "{pb}");
    let got = expect_all(
        &mut a,
        &[
            &|e: &Element| is_presence(e) && e.attr("type") == Some("subscribed"),
            &is_push,
            &|e: &Element| {
                is_presence(e)
                    && e.attr("type").is_none()
                    && e.attr("from") == Some("bob@localhost/b1")
            },
        ],
    )
    .await;
    let (subscribed, pa, avail) = (&got[0], &got[1], &got[2]);
    assert_eq!(subscribed.attr("from"), Some("bob@localhost"));
    assert!(pa.to_string().contains("subscription='to'"), "{pa}");
    assert_eq!(
        avail.attr("to").map(|t| t.starts_with("alice@localhost")),
        Some(true)
    );
    // §4.4: bob's presence updates now reach alice; alice's don't reach bob (no 'from').
    b.send("<presence><show>away</show></presence>").await;
    let upd = a
        .wait_for(|e| is_presence(e) && e.attr("from") == Some("bob@localhost/b1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(upd.has_child("show", ns::CLIENT));
    a.send("<presence><show>dnd</show></presence>").await;
    let mine = b
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(
        mine.attr("from").map(|f| f.starts_with("alice")),
        Some(true),
        "bob must not see alice: {mine}"
    );
    assert_eq!(
        roster(&mut a).await,
        vec![("bob@localhost".into(), "to".into(), false)]
    );
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "from".into(), false)]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_unsubscribed_from_both_sides() {
    let (s, mut a, mut b) = online_pair().await;
    subscribe_both(&mut a, &mut b).await;
    assert_eq!(
        roster(&mut a).await,
        vec![("bob@localhost".into(), "both".into(), false)]
    );
    // §3.3: alice stops receiving bob's presence.
    a.send("<presence to='bob@localhost' type='unsubscribe'/>")
        .await;
    b.wait_for(|e| is_presence(e) && e.attr("type") == Some("unsubscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.sync().await;
    assert_eq!(
        roster(&mut a).await,
        vec![("bob@localhost".into(), "from".into(), false)]
    );
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "to".into(), false)]
    );
    // §3.2: alice cancels bob's subscription to her; bob gets unsubscribed and unavailable.
    a.send("<presence to='bob@localhost' type='unsubscribed'/>")
        .await;
    b.wait_for(|e| is_presence(e) && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.wait_for(|e| {
        is_presence(e)
            && e.attr("type") == Some("unavailable")
            && e.attr("from") == Some("alice@localhost/a1")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        roster(&mut a).await,
        vec![("bob@localhost".into(), "none".into(), false)]
    );
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "none".into(), false)]
    );
    // RFC 6121 §3.1.6: an unsolicited subscribed (no request pending) changes nothing.
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    a.sync().await;
    assert!(b.quiet().await);
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "none".into(), false)]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_approval_and_denial() {
    let (s, mut a, mut b) = online_pair().await;
    // RFC 6121 §3.4: bob pre-approves alice.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let p = push(&mut b).await;
    assert!(p.to_string().contains("approved='true'"), "{p}");
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    // Completed without bob being asked.
    a.wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "from".into(), false)]
    );
    // §3.2.1: a denied request: bob asks alice, alice refuses.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<presence to='bob@localhost' type='unsubscribed'/>")
        .await;
    b.wait_for(|e| is_presence(e) && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.sync().await;
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "from".into(), false)]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_request_to_offline_user_is_redelivered_at_initial_presence() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    a.send(
        "<presence to='bob@localhost' type='subscribe'><status>hi, it's alice</status></presence>",
    )
    .await;
    a.sync().await;
    // RFC 6121 §3.1.3: stored, delivered when bob becomes available.
    let mut b = s.login("bob", "pb", "b1").await;
    assert!(b.quiet().await, "nothing before initial presence");
    b.send("<presence/>").await;
    let req = b
        .wait_for(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(req.attr("from"), Some("alice@localhost"));
    assert!(
        req.to_string().contains("hi, it&apos;s alice")
            || req.to_string().contains("hi, it's alice")
    );
    // Asking again while pending is delivered once only.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    a.sync().await;
    assert!(b.quiet().await, "a duplicate request is delivered once");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_on_initial_presence_and_unavailable_on_session_end() {
    let (s, mut a, mut b) = online_pair().await;
    subscribe_both(&mut a, &mut b).await;
    // A new resource of alice becomes available: it receives bob's presence (§4.3).
    let mut a2 = s.login("alice", "pa", "a2").await;
    a2.send("<presence/>").await;
    a2.wait_for(|e| is_presence(e) && e.attr("from") == Some("bob@localhost/b1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Bob and alice's first resource see the new resource (§4.2.2).
    b.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The connection drops: unavailable on its behalf (§4.5.2) to bob and to a1.
    drop(a2);
    let u = b
        .wait_for(|e| {
            is_presence(e)
                && e.attr("from") == Some("alice@localhost/a2")
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(u.is_ok());
    a.wait_for(|e| {
        is_presence(e)
            && e.attr("from") == Some("alice@localhost/a2")
            && e.attr("type") == Some("unavailable")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Explicit unavailable from bob reaches alice.
    b.send("<presence type='unavailable'/>").await;
    a.wait_for(|e| {
        is_presence(e)
            && e.attr("from") == Some("bob@localhost/b1")
            && e.attr("type") == Some("unavailable")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_presence_is_remembered_and_revoked_at_session_end() {
    let (s, mut a, mut b) = online_pair().await;
    // No subscription: alice sends directed presence to bob (§4.6).
    a.send("<presence to='bob@localhost'><status>psst</status></presence>")
        .await;
    b.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Alice goes offline: bob gets unavailable because he received directed presence (§4.6.3).
    a.send("</stream:stream>").await;
    b.wait_for(|e| {
        is_presence(e)
            && e.attr("from") == Some("alice@localhost/a1")
            && e.attr("type") == Some("unavailable")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_from_a_stranger_is_answered_unsubscribed_and_reveals_nothing() {
    let (s, mut a, mut b) = online_pair().await;
    // RFC 6121 §4.3.2 step 1: bob may not see alice's presence, so the answer is
    // `unsubscribed` from her bare JID — and none of her presence.
    b.send("<presence to='alice@localhost' type='probe'/>")
        .await;
    let p = b
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unsubscribed"), "{p}");
    assert_eq!(p.attr("from"), Some("alice@localhost"), "{p}");
    // The same for an account that does not exist.
    b.send("<presence to='nobody@localhost' type='probe'/>")
        .await;
    let p = b
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unsubscribed"), "{p}");
    assert_eq!(p.attr("from"), Some("nobody@localhost"), "{p}");
    assert!(b.quiet().await);
    // Alice is told nothing of the probes.
    assert!(!drain(&mut a).await.iter().any(is_presence));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_from_a_subscriber_of_an_offline_contact_is_answered_unavailable() {
    let (s, mut a, mut b) = online_pair().await;
    subscribe_to(&mut b, &mut a).await;
    // Alice goes offline; bob, entitled to her presence, probes: RFC 6121 §4.3.2 step 2.
    a.send("<presence type='unavailable'/>").await;
    b.wait_for(|e| is_presence(e) && e.attr("type") == Some("unavailable"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence to='alice@localhost' type='probe'/>")
        .await;
    let p = b
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert_eq!(p.attr("from"), Some("alice@localhost"), "{p}");
    // Available again: the probe gets her current presence (step 3).
    a.send("<presence><show>away</show></presence>").await;
    b.wait_for(|e| is_presence(e) && e.attr("type").is_none())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence to='alice@localhost' type='probe'/>")
        .await;
    let p = b
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), None, "{p}");
    assert_eq!(p.attr("from"), Some("alice@localhost/a1"), "{p}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_message_delivery_rules() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b1 = s.login("bob", "pb", "one").await;
    let mut b2 = s.login("bob", "pb", "two").await;
    let mut b3 = s.login("bob", "pb", "three").await;
    b1.send("<presence><priority>5</priority></presence>").await;
    b2.send("<presence><priority>5</priority></presence>").await;
    b3.send("<presence><priority>-1</priority></presence>")
        .await;
    for c in [&mut b1, &mut b2, &mut b3] {
        drain(c).await;
    }
    let has_message = |v: &[Element]| v.iter().any(|e| e.name() == "message");
    // RFC 6121 §8.5.2.1.1: chat to every resource of equal highest priority.
    a.send("<message to='bob@localhost' type='chat'><body>c</body></message>")
        .await;
    for c in [&mut b1, &mut b2] {
        c.wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(
        !has_message(&drain(&mut b3).await),
        "negative priority got a bare-JID message"
    );
    // normal: one of them.
    a.send("<message to='bob@localhost'><body>n</body></message>")
        .await;
    a.sync().await;
    let got1 = has_message(&drain(&mut b1).await);
    let got2 = has_message(&drain(&mut b2).await);
    assert!(
        got1 ^ got2,
        "normal goes to exactly one of the highest-priority resources"
    );
    // headline: to all non-negative.
    a.send("<message to='bob@localhost' type='headline'><body>h</body></message>")
        .await;
    for c in [&mut b1, &mut b2] {
        c.wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(!has_message(&drain(&mut b3).await));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_stored_and_delivered_in_order_with_delay() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    for i in 0..5 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    // Offline: to a full JID that is not connected, chat → as bare (RFC 6121 §8.5.3.2.1).
    a.send("<message to='bob@localhost/gone' type='chat'><body>m5</body></message>")
        .await;
    // headline is dropped, groupchat bounced (§8.5.2.2.1).
    a.send("<message to='bob@localhost' type='headline'><body>h</body></message>")
        .await;
    a.send("<message to='bob@localhost' type='groupchat' id='g'><body>g</body></message>")
        .await;
    let e = a
        .wait_for(|e| e.attr("id") == Some("g"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    assert!(a.quiet().await, "chat/normal must not bounce");
    let mut b = s.login("bob", "pb", "b1").await;
    // Negative priority: not delivered (XEP-0160 §3).
    b.send("<presence><priority>-1</priority></presence>").await;
    let _ = b.wait_for(is_presence).await;
    assert!(b.quiet().await);
    drop(b);
    s.wait_unbound("bob@localhost/b1").await;
    let mut b = s.login("bob", "pb", "b2").await;
    b.send("<presence/>").await;
    let mut bodies = Vec::new();
    while bodies.len() < 6 {
        let m = b
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let delay = m.get_child("delay", ns::DELAY);
        assert!(
            delay.is_some_and(|d| d.attr("stamp").is_some() && d.attr("from") == Some("localhost")),
            "{m}"
        );
        assert_eq!(m.attr("from"), Some("alice@localhost/a1"));
        bodies.push(
            m.get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
        );
    }
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // Delivered once: a new session gets nothing more.
    drop(b);
    s.wait_unbound("bob@localhost/b2").await;
    let mut b = s.login("bob", "pb", "b3").await;
    b.send("<presence/>").await;
    let _ = b.wait_for(is_presence).await;
    assert!(b.quiet().await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_store_is_delivered_even_beyond_the_send_queue() {
    // More stored messages than the live queue holds: delivering them at login is not a slow
    // reader, the session must survive and get all of them (XEP-0160 §3).
    let mut cfg = test_config();
    cfg.c2s.max_send_queue = 4;
    cfg.offline.max_messages = 30;
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    for i in 0..30 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    assert_alive(&mut a).await;
    let mut b = s.login("bob", "pb", "b1").await;
    b.send("<presence/>").await;
    let mut bodies = Vec::new();
    while bodies.len() < 30 {
        let m = b
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("after {}: {e:#}", bodies.len()));
        bodies.push(
            m.get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
        );
    }
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
    // Still connected, and live delivery works.
    assert_message_flows(&mut a, &mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_quota_bounces_with_service_unavailable() {
    let mut cfg = test_config();
    cfg.offline.max_messages = 3;
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a1").await;
    for i in 0..4 {
        a.send(&format!(
            "<message to='bob@localhost' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let e = a
        .wait_for(|e| e.attr("id") == Some("m3"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    assert!(a.quiet().await, "only the fourth bounces");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_deletion_cleans_up_and_tells_contacts() {
    let (s, mut a, mut b) = online_pair().await;
    subscribe_both(&mut a, &mut b).await;
    s.add_user("carol", "pc").await;
    let mut c = s.login("carol", "pc", "c1").await;
    roster(&mut c).await;
    c.send("<presence/>").await;
    // Carol has a pending request to alice and alice has an offline message waiting.
    c.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    c.sync().await;
    let _ = drain(&mut a).await;
    let _ = drain(&mut b).await;
    // Through the admin socket, as `canto user del` does while the server runs.
    let sock = s.dir.join("admin.sock");
    let answer = canto_net::admin::request(&sock, "user-del alice@localhost")
        .await
        .unwrap_or_else(|| panic!("no admin socket at {}", sock.display()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer, "ok");
    // Alice's session is closed.
    assert_eq!(a.closed().await, Closed::Error("not-authorized".into()));
    // RFC 6121 §2.5.2: bob, a contact, gets unsubscribe and unsubscribed and a push to none.
    let got = expect_all(
        &mut b,
        &[
            &|e: &Element| is_presence(e) && e.attr("type") == Some("unsubscribe"),
            &|e: &Element| is_presence(e) && e.attr("type") == Some("unsubscribed"),
        ],
    )
    .await;
    assert!(
        got.iter()
            .all(|p| p.attr("from") == Some("alice@localhost"))
    );
    let _ = drain(&mut b).await;
    assert_eq!(
        roster(&mut b).await,
        vec![("alice@localhost".into(), "none".into(), false)]
    );
    // Carol's request was refused.
    c.wait_for(|e| is_presence(e) && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The account and its data are gone.
    assert_eq!(
        s.storage.accounts.exists("localhost", "alice").await.ok(),
        Some(false)
    );
    assert!(
        s.storage
            .map
            .get_all("roster", "localhost", "alice")
            .await
            .unwrap_or_default()
            .is_empty()
    );
    // Messages to the deleted account now bounce (RFC 6121 §8.5.1).
    b.send("<message to='alice@localhost' id='x'><body>hello?</body></message>")
        .await;
    let e = b
        .wait_for(|e| e.attr("id") == Some("x"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // A second deletion is an error, not a crash.
    let again = canto_net::admin::request(&sock, "user-del alice@localhost")
        .await
        .and_then(Result::ok);
    assert_eq!(
        again.as_deref(),
        Some("error: alice@localhost does not exist")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_presence_beyond_the_cap_is_refused_not_leaked() {
    let mut cfg = test_config();
    cfg.limits.max_directed_presence = 1;
    let s = TestServer::with_config(cfg).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.login("alice", "pw", "a1").await;
    let mut b = s.login("bob", "pw", "b").await;
    let mut c = s.login("carol", "pw", "c").await;
    for x in [&mut b, &mut c] {
        x.send("<presence/>").await;
    }
    a.send("<presence/>").await;
    drain(&mut a).await;
    a.send("<presence to='bob@localhost'/>").await;
    b.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // A second recipient could not be told unavailable at logout (RFC 6121 §4.6.3): refused.
    a.send("<presence to='carol@localhost' id='p2'/>").await;
    let err = a
        .wait_for(|e| is_presence(e) && e.attr("type") == Some("error"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(err.attr("id"), Some("p2"), "{err}");
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("policy-violation"),
        "{err}"
    );
    assert!(
        drain(&mut c)
            .await
            .iter()
            .all(|e| e.attr("from") != Some("alice@localhost/a1")),
        "carol got alice's presence"
    );
    // Directed unavailable to bob frees the place.
    a.send("<presence to='bob@localhost' type='unavailable'/>")
        .await;
    a.send("<presence to='carol@localhost'/>").await;
    c.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_requests_beyond_the_cap_are_dropped() {
    let mut cfg = test_config();
    cfg.roster.max_pending = 1;
    let s = TestServer::with_config(cfg).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.login("alice", "pw", "a").await;
    let mut c = s.login("carol", "pw", "c").await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    a.sync().await;
    c.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    // Carol's request finds bob's pending requests full: not stored, and nothing bounces.
    assert!(c.quiet().await, "carol got an answer");
    let mut b = s.login("bob", "pw", "b").await;
    b.send("<presence/>").await;
    let got = drain(&mut b).await;
    let requests: Vec<_> = got
        .iter()
        .filter(|e| is_presence(e) && e.attr("type") == Some("subscribe"))
        .filter_map(|e| e.attr("from"))
        .collect();
    assert_eq!(requests, ["alice@localhost"], "{got:?}");
    // Approving alice's request makes room: carol's next request is stored and delivered.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let _ = drain(&mut b).await;
    c.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b.wait_for(|e| {
        is_presence(e)
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some("carol@localhost")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}
