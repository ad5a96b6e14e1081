//! XEP-0191 Blocking Command end to end, with several resources per account.
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const BLOCKING: &str = "urn:xmpp:blocking";

fn is_presence(e: &Element) -> bool {
    e.is("presence", ns::CLIENT)
}

async fn drain(c: &mut Client) -> Vec<Element> {
    c.drain().await
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
    assert!(b.quiet().await);
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
    a.sync().await;
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

async fn fetch_blocklist(c: &mut Client) -> Vec<String> {
    let r = c
        .iq("<iq type='get' id='{id}'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    r.get_child("blocklist", BLOCKING)
        .unwrap_or_else(|| panic!("{r}"))
        .children()
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

fn is_push(e: &Element, what: &str) -> bool {
    e.is("iq", ns::CLIENT) && e.attr("type") == Some("set") && e.has_child(what, BLOCKING)
}

fn push_items(e: &Element, what: &str) -> Vec<String> {
    e.get_child(what, BLOCKING)
        .map(|b| {
            b.children()
                .filter_map(|i| i.attr("jid").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

/// Roster fetched and initial presence sent; own presence and whatever else came, skipped.
async fn available(c: &mut Client) {
    ask(
        c,
        "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    c.send("<presence/>").await;
    drain(c).await;
}

/// `contact` subscribes to `user`'s presence and `user` approves (both available).
async fn subscribe(contact: &mut Client, user: &mut Client) {
    subscribe_to(contact, user).await;
    drain(user).await;
    drain(contact).await;
}

/// Sends a block/unblock set whose id is fixed in `xml` and returns the push the sending
/// resource itself gets, after checking the result (in whatever order the two arrive).
async fn set_with_own_push(c: &mut Client, xml: &str, what: &str) -> Element {
    let id = xml
        .split("id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_default()
        .to_string();
    c.send(xml).await;
    let mut got_result = false;
    let mut got_push = None;
    while !(got_result && got_push.is_some()) {
        let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.attr("id") == Some(id.as_str()) {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            got_result = true;
        } else if is_push(&e, what) {
            got_push = Some(e);
        }
    }
    let push = got_push.unwrap_or_else(|| panic!("no push"));
    assert_eq!(push.attr("to"), c.jid.as_deref(), "{push}");
    push
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_go_to_every_resource_that_fetched_the_list_the_sender_too() {
    let s = server().await;
    s.add_user("carol", "pc").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut a3 = s.login("alice", "pa", "a3").await;
    assert!(fetch_blocklist(&mut a1).await.is_empty());
    assert!(fetch_blocklist(&mut a2).await.is_empty());
    // XEP-0191 §3.3: a block with two items; the result goes to a1, and the push to every
    // resource that requested the blocklist — a1 itself included — but not to a3.
    let push = set_with_own_push(&mut a1, "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/><item jid='carol@localhost'/></block></iq>", "block").await;
    assert_eq!(push.attr("to"), Some("alice@localhost/a1"), "{push}");
    let mut items = push_items(&push, "block");
    items.sort();
    assert_eq!(items, ["bob@localhost", "carol@localhost"]);
    let push = a2
        .wait_for(|e| is_push(e, "block"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(push.attr("to"), Some("alice@localhost/a2"), "{push}");
    assert!(
        !drain(&mut a3).await.iter().any(|e| is_push(e, "block")),
        "a3 never asked for the blocklist"
    );
    // a3 asks now, sees both, and from then on gets pushes too: unblocking one item is pushed
    // to all three with just that item.
    let mut list = fetch_blocklist(&mut a3).await;
    list.sort();
    assert_eq!(list, ["bob@localhost", "carol@localhost"]);
    let push = set_with_own_push(
        &mut a3,
        "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>",
        "unblock",
    )
    .await;
    assert_eq!(push_items(&push, "unblock"), ["bob@localhost"], "{push}");
    for c in [&mut a1, &mut a2] {
        let push = c
            .wait_for(|e| is_push(e, "unblock"))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(push_items(&push, "unblock"), ["bob@localhost"], "{push}");
    }
    // The list outlives the sessions.
    drop((a1, a2, a3));
    let mut later = s.login("alice", "pa", "later").await;
    assert_eq!(fetch_blocklist(&mut later).await, ["carol@localhost"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_change_nothing() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b = s.login("bob", "pb", "b1").await;
    // XEP-0191 §3.3: a JID that cannot be parsed is jid-malformed — and the good item beside it
    // is not blocked either.
    for bad in ["@localhost", "bob@", "a@b@c"] {
        let r = ask(
            &mut a,
            &format!("<iq type='set' id='{{id}}'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/><item jid='{bad}'/></block></iq>"),
        )
        .await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("jid-malformed"),
            "{bad}: {r}"
        );
    }
    // A block without items, or an item without a jid: bad-request.
    for xml in [
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'/></iq>",
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item/></block></iq>",
    ] {
        let r = ask(&mut a, xml).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("bad-request"),
            "{xml}: {r}"
        );
    }
    assert!(fetch_blocklist(&mut a).await.is_empty());
    // Another account's blocklist is not for alice to read or change.
    for xml in [
        "<iq type='get' id='{id}' to='bob@localhost'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        "<iq type='set' id='{id}' to='bob@localhost'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>",
    ] {
        let r = ask(&mut a, xml).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("forbidden"),
            "{xml}: {r}"
        );
    }
    assert!(fetch_blocklist(&mut b).await.is_empty());
    // Unblocking what is not blocked is no error.
    let r = ask(
        &mut a,
        "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></unblock></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_stranger_learns_nothing() {
    let s = server().await;
    s.add_user("carol", "pc").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut c = s.login("carol", "pc", "c1").await;
    available(&mut a1).await;
    available(&mut a2).await;
    available(&mut c).await;
    let r = ask(
        &mut a1,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // XEP-0191 §3.3: unavailable presence only to a contact allowed to receive presence; carol
    // has no subscription, so she gets nothing (not even which resources are online).
    let got = drain(&mut c).await;
    assert!(!got.iter().any(is_presence), "{got:?}");
    // §3.3 inbound rules. A message to the bare JID and an IQ the server would answer for
    // alice (her public vCard) are refused with service-unavailable.
    c.send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let e = c
        .wait_for(|e| e.attr("id") == Some("m1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e}"
    );
    let r = ask(
        &mut c,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    // IQ results and errors, message errors and presence of any kind are dropped without an
    // answer.
    for xml in [
        "<iq type='result' id='r1' to='alice@localhost/a1'/>",
        "<iq type='error' id='r2' to='alice@localhost/a1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        "<message type='error' id='r3' to='alice@localhost/a1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        "<presence to='alice@localhost' type='subscribe'/>",
        "<presence to='alice@localhost/a1'><show>chat</show></presence>",
        "<presence to='alice@localhost' type='probe'/>",
    ] {
        c.send(xml).await;
    }
    assert_alive(&mut c).await;
    assert!(c.quiet().await, "carol got an answer");
    for a in [&mut a1, &mut a2] {
        let got = drain(a).await;
        assert!(
            !got.iter()
                .any(|e| e.attr("from").is_some_and(|f| f.starts_with("carol@"))),
            "{got:?}"
        );
    }
    // The subscription request was dropped, not kept for later: after unblocking, alice's next
    // session is not asked.
    ask(
        &mut a1,
        "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    )
    .await;
    drop((a1, a2));
    let mut again = s.login("alice", "pa", "again").await;
    available(&mut again).await;
    again.send("<presence/>").await;
    let got = drain(&mut again).await;
    assert!(
        !got.iter()
            .any(|e| is_presence(e) && e.attr("type") == Some("subscribe")),
        "{got:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contact_gets_no_presence_at_login_and_cannot_leave_offline_messages() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b = s.login("bob", "pb", "b1").await;
    available(&mut a).await;
    available(&mut b).await;
    subscribe(&mut b, &mut a).await;
    let r = ask(
        &mut a,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    drain(&mut b).await;
    // bob comes back: his initial presence probes alice (RFC 6121 §4.3), and the block keeps her
    // presence from him (XEP-0191 §3.3).
    drop(b);
    let mut b = s.login("bob", "pb", "b2").await;
    available(&mut b).await;
    b.send("<presence><status>back</status></presence>").await;
    let got = drain(&mut b).await;
    assert!(
        !got.iter()
            .any(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1")),
        "{got:?}"
    );
    let got = drain(&mut a).await;
    assert!(
        !got.iter()
            .any(|e| e.attr("from").is_some_and(|f| f.starts_with("bob@"))),
        "{got:?}"
    );
    // alice goes offline; bob's message bounces instead of waiting for her.
    drop(a);
    s.wait_unbound("alice@localhost/a1").await;
    b.send(
        "<message to='alice@localhost' type='chat' id='off1'><body>are you there</body></message>",
    )
    .await;
    let e = b
        .wait_for(|e| e.attr("id") == Some("off1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e}"
    );
    let mut a = s.login("alice", "pa", "a2").await;
    available(&mut a).await;
    a.send("<presence/>").await;
    let got = drain(&mut a).await;
    assert!(!got.iter().any(|e| e.name() == "message"), "{got:?}");
    // Unblocking: bob (subscribed) gets her current presence (§3.4).
    ask(
        &mut a,
        "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>",
    )
    .await;
    b.wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_item_blocks_every_account_there() {
    let s = server().await;
    s.add_user_on(HOST2, "dave", "pd").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b = s.login("bob", "pb", "b1").await;
    let mut d = s.login_on(HOST2, "dave", "pd", "d1").await;
    available(&mut a).await;
    available(&mut d).await;
    subscribe(&mut d, &mut a).await;
    // XEP-0191 §4 (JID matching): a domain item covers user@domain. dave is subscribed, so he
    // gets unavailable from alice (§3.3) though the item names only his domain.
    ask(
        &mut a,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='example.test'/></block></iq>",
    )
    .await;
    d.wait_for(|e| {
        is_presence(e)
            && e.attr("from") == Some("alice@localhost/a1")
            && e.attr("type") == Some("unavailable")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    d.send("<message to='alice@localhost/a1' type='chat' id='d1'><body>x</body></message>")
        .await;
    let e = d
        .wait_for(|e| e.attr("id") == Some("d1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e}"
    );
    a.send("<message to='dave@example.test' type='chat' id='a1'><body>x</body></message>")
        .await;
    let e = a
        .wait_for(|e| e.attr("id") == Some("a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("not-acceptable"),
        "{e}"
    );
    assert!(blocked_condition(&e), "{e}");
    // So is any address at a subdomain (§4): refused as blocked, not routed onwards (which
    // would be remote-server-not-found).
    a.send(
        "<message to='room@conference.example.test' type='chat' id='a2'><body>x</body></message>",
    )
    .await;
    let e = a
        .wait_for(|e| e.attr("id") == Some("a2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("not-acceptable"),
        "{e}"
    );
    assert!(blocked_condition(&e), "{e}");
    // Accounts on other domains are not covered.
    assert_message_flows(&mut a, &mut b).await;
    assert_message_flows(&mut b, &mut a).await;
    // Unblocking the domain gives dave alice's presence again (§3.4).
    ask(
        &mut a,
        "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'><item jid='example.test'/></unblock></iq>",
    )
    .await;
    d.wait_for(|e| {
        is_presence(e) && e.attr("from") == Some("alice@localhost/a1") && e.attr("type").is_none()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_message_flows(&mut d, &mut a).await;
    s.stop().await;
}

/// XEP-0191 §3.3/§3.4 with a full-JID item: only that resource of a subscribed contact is
/// blocked, so only it gets the user's unavailable on block and her presence on unblock; the
/// contact's other resource keeps seeing her throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_contacts_full_jid_hides_presence_from_that_resource_only() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b1 = s.login("bob", "pb", "b1").await;
    let mut b2 = s.login("bob", "pb", "b2").await;
    available(&mut a).await;
    available(&mut b1).await;
    available(&mut b2).await;
    subscribe(&mut b1, &mut a).await;
    drain(&mut b2).await;
    let from_alice = |e: &Element| is_presence(e) && e.attr("from") == Some("alice@localhost/a1");

    ask(
        &mut a,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost/b1'/></block></iq>",
    )
    .await;
    let p = b1
        .wait_for(from_alice)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert_eq!(p.attr("to"), Some("bob@localhost/b1"), "{p}");
    assert!(
        !drain(&mut b2).await.iter().any(from_alice),
        "b2 is not blocked"
    );
    // Her next change reaches b2 only.
    a.send("<presence><status>later</status></presence>").await;
    let p = b2
        .wait_for(from_alice)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.to_string().contains("later"), "{p}");
    a.sync().await;
    assert!(!drain(&mut b1).await.iter().any(from_alice));

    // Blocking the same full JID again changes nothing for anyone.
    ask(
        &mut a,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost/b1'/></block></iq>",
    )
    .await;
    assert!(!drain(&mut b1).await.iter().any(from_alice));

    // Unblocking: b1 gets her current presence, b2 nothing new.
    ask(
        &mut a,
        "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost/b1'/></unblock></iq>",
    )
    .await;
    let p = b1
        .wait_for(from_alice)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        p.attr("type").is_none() && p.to_string().contains("later"),
        "{p}"
    );
    assert!(!drain(&mut b2).await.iter().any(from_alice));
    s.stop().await;
}

/// XEP-0191 §3.3 the other way round: a user who blocks one resource of a contact (a full-JID
/// item) no longer gets that resource's presence broadcasts; the contact's other resources
/// still reach him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_from_a_blocked_resource_of_a_contact_is_not_delivered() {
    let s = server().await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut b = s.login("bob", "pb", "b1").await;
    available(&mut a1).await;
    available(&mut a2).await;
    available(&mut b).await;
    subscribe(&mut b, &mut a1).await;
    drain(&mut a2).await;
    drain(&mut b).await;
    ask(
        &mut b,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost/a2'/></block></iq>",
    )
    .await;
    drain(&mut b).await;
    a2.send("<presence><status>from a2</status></presence>")
        .await;
    a1.send("<presence><status>from a1</status></presence>")
        .await;
    a2.sync().await;
    a1.sync().await;
    let got = drain(&mut b).await;
    let from = |r: &str| {
        got.iter()
            .any(|e| is_presence(e) && e.attr("from") == Some(r))
    };
    assert!(from("alice@localhost/a1"), "{got:?}");
    assert!(!from("alice@localhost/a2"), "{got:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_recipient_of_directed_presence_is_sent_unavailable_once() {
    let s = server().await;
    s.add_user("carol", "pc").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut b = s.login("bob", "pb", "b1").await;
    let mut c = s.login("carol", "pc", "c1").await;
    for cl in [&mut a1, &mut a2, &mut b, &mut c] {
        available(cl).await;
    }
    // No subscriptions: Bob and Carol see Alice only through directed presence (RFC 6121 §4.6),
    // Bob from both her resources, Carol from a1.
    a1.send("<presence to='bob@localhost/b1'><status>hi bob</status></presence>")
        .await;
    a2.send("<presence to='bob@localhost'/>").await;
    a1.send("<presence to='carol@localhost'/>").await;
    // (The two to Bob may come in either order.)
    let mut got: Vec<Element> = Vec::new();
    while got.len() < 2 {
        got.push(
            b.wait_for(is_presence)
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        );
    }
    let mut froms: Vec<&str> = got.iter().filter_map(|p| p.attr("from")).collect();
    froms.sort_unstable();
    assert_eq!(
        froms,
        ["alice@localhost/a1", "alice@localhost/a2"],
        "{got:?}"
    );
    assert!(got.iter().all(|p| p.attr("type").is_none()), "{got:?}");
    let p = c
        .wait_for(is_presence)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("from"), Some("alice@localhost/a1"), "{p}");

    // XEP-0191 §3.3: once blocked, Bob must see her offline — one unavailable per resource.
    ask(
        &mut a1,
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>",
    )
    .await;
    let got: Vec<Element> = drain(&mut b)
        .await
        .into_iter()
        .filter(is_presence)
        .collect();
    let mut froms: Vec<&str> = got.iter().filter_map(|p| p.attr("from")).collect();
    froms.sort_unstable();
    assert_eq!(
        froms,
        ["alice@localhost/a1", "alice@localhost/a2"],
        "{got:?}"
    );
    assert!(
        got.iter().all(|p| p.attr("type") == Some("unavailable")),
        "{got:?}"
    );
    // Carol is not blocked: nothing changes for her.
    assert!(!drain(&mut c).await.iter().any(is_presence));

    // Alice goes offline (§4.6.3): Carol is told, Bob not a second time.
    a1.send("<presence type='unavailable'/>").await;
    a2.send("<presence type='unavailable'/>").await;
    a1.sync().await;
    a2.sync().await;
    let p = c
        .wait_for(|e| is_presence(e) && e.attr("from") == Some("alice@localhost/a1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert!(
        !drain(&mut b).await.iter().any(is_presence),
        "Bob was told twice"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocklist_that_cannot_be_read_delivers_nothing() {
    let mut cfg = test_config();
    cfg.modules.push("blocking".into());
    let mut storage = canto_storage::Storage::memory();
    let kv = canto_storage::faults::FailingKv::new(storage.kv.clone());
    storage.kv = kv.clone();
    let s = TestServer::with_storage(cfg, storage).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    let to = a.full_jid();
    // Alice may have blocked Bob: while her list cannot be read, his message is not delivered
    // (fail closed), and he is answered as a blocked sender is (XEP-0191 §3.3).
    kv.fail("blocklist", Some("alice"));
    b.send(&format!(
        "<message to='{to}' type='chat' id='m1'><body>unseen</body></message>"
    ))
    .await;
    let err = b
        .wait_for(|e| e.attr("type") == Some("error") && e.attr("id") == Some("m1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("service-unavailable"),
        "{err}"
    );
    assert!(a.quiet().await, "delivered despite the failure");
    // Once storage is back, the same message goes through.
    kv.heal();
    b.send(&format!(
        "<message to='{to}' type='chat' id='m2'><body>seen</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.is("message", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("id"), Some("m2"), "{m}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_not_broadcast_to_a_contact_whose_blocklist_cannot_be_read() {
    let mut cfg = test_config();
    cfg.modules.push("blocking".into());
    let mut storage = canto_storage::Storage::memory();
    let kv = canto_storage::faults::FailingKv::new(storage.kv.clone());
    storage.kv = kv.clone();
    let s = TestServer::with_storage(cfg, storage).await;
    s.add_user("alice", "pa").await;
    s.add_user("carol", "pc").await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut c = s.login("carol", "pc", "c").await;
    a.send("<presence/>").await;
    c.send("<presence/>").await;
    subscribe_to(&mut c, &mut a).await;
    // Carol logs in again with her list unreadable: it is not cached, so every broadcast to
    // her must read it, and cannot.
    drop(c);
    s.wait_unbound("carol@localhost/c").await;
    kv.fail("blocklist", Some("carol"));
    let mut c = s.login("carol", "pc", "c").await;
    c.send("<presence/>").await;
    c.sync().await;
    c.drain().await;
    a.send("<presence><status>one</status></presence>").await;
    a.sync().await;
    // Carol may have blocked alice: she gets nothing of alice's (XEP-0191 fails closed).
    let got = c.drain().await;
    assert!(
        !got.iter()
            .any(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/a")),
        "{got:?}"
    );
    kv.heal();
    a.send("<presence><status>two</status></presence>").await;
    let p = c
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/a"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(p.to_string().contains("two"), "{p}");
    s.stop().await;
}
