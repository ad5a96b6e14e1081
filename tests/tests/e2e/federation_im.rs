//! IM across federation (issue 14 item 4): what RFC 6121 and the XEPs specify for remote
//! contacts, between two in-process servers a.test and b.test (`super::federation::Pair`).
//! Presence subscriptions with an offline contact, probes, unavailable on logout and
//! disconnect, unsubscribe/unsubscribed, directed presence (RFC 6121 §3, §4); offline
//! storage (XEP-0160); archiving (XEP-0313, XEP-0359); carbons (XEP-0280); blocking
//! (XEP-0191); PEP notifications to remote contacts (XEP-0163, with XEP-0115 caps learnt
//! across federation).
//!
//! Waiting without sleeping: [`fed_sync`] pings the other server. One server handles the
//! stanzas of one incoming stream in order and sends to a peer over one stream, so once the
//! answer is back, everything sent before the ping has been handled there, and whatever that
//! server sent back before the answer is in this client's queue.

use canto_stanza::ns;
use canto_tests::Client;
use canto_xml::Element;

use super::federation::Pair;
use super::pep::{
    PS, ask, assert_item_event, assert_result, event_child, is_event, publish, publish_with,
    wait_event,
};

/// An IQ of `kind` to `to` carrying `<pubsub xmlns='…pubsub'>inner</pubsub>`.
fn ps_to(kind: &str, to: &str, inner: &str) -> String {
    super::pep::ps(kind, Some(to), inner)
}

const ROSTER: &str = "jabber:iq:roster";
const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const BLOCKING: &str = "urn:xmpp:blocking";
const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CAPS: &str = "http://jabber.org/protocol/caps";
const CAPS_NODE: &str = "https://canto.test/client";
const TUNE: &str = "http://jabber.org/protocol/tune";
const AVATAR_META: &str = "urn:xmpp:avatar:metadata";
const MOOD: &str = "http://jabber.org/protocol/mood";

const ALICE_A: &str = "alice@a.test";
const BOB_B: &str = "bob@b.test";

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Logs in and sends initial presence.
async fn online(p: &Pair, on_a: bool, user: &str, res: &str) -> Client {
    let mut c = p.login(on_a, user, res).await;
    c.send("<presence/>").await;
    c
}

/// A round trip to the server `domain` (the other one): a ping. Stanzas this client sent
/// before have been handled there; what that server sent back before the answer is queued
/// here (kept for [`Client::next`]).
async fn fed_sync(c: &mut Client, domain: &str) {
    let r = c
        .iq_keep(&format!(
            "<iq type='get' id='{{id}}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("ping {domain}: {e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

/// Whether `e` is presence of `kind` (None: available) from `from` (a full JID, or a bare JID
/// matching any of its resources when `from` has no resource).
fn is_presence(e: &Element, kind: Option<&str>, from: &str) -> bool {
    e.name() == "presence"
        && e.attr("type") == kind
        && e.attr("from").is_some_and(|f| {
            f == from || (!from.contains('/') && f.split('/').next() == Some(from))
        })
}

async fn expect_presence(c: &mut Client, kind: Option<&str>, from: &str) -> Element {
    let who = c.full_jid();
    c.wait_for(|e| is_presence(e, kind, from))
        .await
        .unwrap_or_else(|e| panic!("{who}: no presence {kind:?} from {from}: {e:#}"))
}

/// The roster item for `jid` as (subscription, ask), None when there is none. What arrives
/// meanwhile stays queued.
async fn roster_item(c: &mut Client, jid: &str) -> Option<(String, Option<String>)> {
    let r = ask(
        c,
        &format!("<iq type='get' id='{{id}}'><query xmlns='{ROSTER}'/></iq>"),
    )
    .await;
    assert_result(&r);
    r.get_child("query", ROSTER)?
        .children()
        .find(|i| i.attr("jid") == Some(jid))
        .map(|i| {
            (
                i.attr("subscription").unwrap_or("none").to_string(),
                i.attr("ask").map(str::to_string),
            )
        })
}

async fn assert_subscription(c: &mut Client, jid: &str, want: &str) {
    let got = roster_item(c, jid).await;
    assert_eq!(
        got.as_ref().map(|(s, _)| s.as_str()),
        Some(want),
        "{}: roster item {jid}: {got:?}",
        c.full_jid()
    );
}

/// Both subscribed to each other (RFC 6121 §3.1 each way), both online.
async fn mutual(a: &mut Client, b: &mut Client) {
    canto_tests::subscribe_to(a, b).await;
    canto_tests::subscribe_to(b, a).await;
    assert_subscription(a, &b.bare_jid(), "both").await;
    assert_subscription(b, &a.bare_jid(), "both").await;
}

/// Asserts that nothing but what `ignore` accepts arrives at `c` (after a round trip to its
/// own server; call [`fed_sync`] on the sender first).
async fn assert_nothing(c: &mut Client, why: &str, ignore: impl Fn(&Element) -> bool) {
    let who = c.full_jid();
    let got: Vec<Element> = c.drain().await.into_iter().filter(|e| !ignore(e)).collect();
    assert!(got.is_empty(), "{who} {why}, but got {got:?}");
}

fn is_roster_push(e: &Element) -> bool {
    e.name() == "iq" && e.attr("type") == Some("set") && e.has_child("query", ROSTER)
}

fn not_event(e: &Element) -> bool {
    event_child(e).is_none()
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", ns::CLIENT).map(Element::text)
}

async fn wait_body(c: &mut Client, text: &str) -> Element {
    let who = c.full_jid();
    c.wait_for(|e| e.name() == "message" && body(e).as_deref() == Some(text))
        .await
        .unwrap_or_else(|e| panic!("{who}: no message {text:?}: {e:#}"))
}

// ---------------------------------------------------------------------------------------------
// Presence and subscriptions (RFC 6121 §3, §4).
// ---------------------------------------------------------------------------------------------

/// RFC 6121 §3.1.3: a subscription request to a remote user who is offline is stored by the
/// contact's server and delivered when the contact next sends initial presence; the answer
/// crosses back (§3.1.5), both rosters end right, and the subscriber gets the contact's
/// presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_request_to_an_offline_remote_user_waits_for_login() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    alice
        .send(&format!("<presence to='{BOB_B}' type='subscribe'/>"))
        .await;
    fed_sync(&mut alice, "b.test").await;
    // §3.1.2: the user's roster says the request is pending.
    let item = roster_item(&mut alice, BOB_B).await;
    assert_eq!(
        item,
        Some(("none".into(), Some("subscribe".into()))),
        "alice's item for bob"
    );
    // b.test stored it for bob, who has never logged in.
    let alice_bare = canto_stanza::BareJid::new(ALICE_A).unwrap_or_else(|e| panic!("{e}"));
    let pending = canto_core::roster::RosterStore::new(&p.b.storage, "b.test", "bob")
        .is_pending(&alice_bare)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pending, "b.test did not store the request");

    // Bound but not yet available: nothing yet (delivered at initial presence).
    let mut bob = p.login(false, "bob", "laptop").await;
    assert!(
        bob.quiet().await,
        "the request came before initial presence"
    );
    bob.send("<presence/>").await;
    let req = bob
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("no stored request at login: {e:#}"));
    assert_eq!(req.attr("from"), Some(ALICE_A), "{req}");

    bob.send(&format!("<presence to='{ALICE_A}' type='subscribed'/>"))
        .await;
    // §3.1.5/§3.1.6: alice hears of it, her roster says `to`, and she gets bob's presence.
    alice
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribed"))
        .await
        .unwrap_or_else(|e| panic!("no subscribed: {e:#}"));
    expect_presence(&mut alice, None, "bob@b.test/laptop").await;
    assert_eq!(
        roster_item(&mut alice, BOB_B).await,
        Some(("to".into(), None))
    );
    assert_eq!(
        roster_item(&mut bob, ALICE_A).await,
        Some(("from".into(), None))
    );
    // The request was answered: it is no longer stored.
    let pending = canto_core::roster::RosterStore::new(&p.b.storage, "b.test", "bob")
        .is_pending(&alice_bare)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!pending, "the answered request is still stored");

    // §3.1.3: a request to a remote account that does not exist is answered `unsubscribed`,
    // which ends the pending request in the user's roster (§3.2.3).
    alice
        .send("<presence to='nobody@b.test' type='subscribe'/>")
        .await;
    let u = alice
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("no unsubscribed from a missing account: {e:#}"));
    assert_eq!(u.attr("from"), Some("nobody@b.test"), "{u}");
    assert_eq!(
        roster_item(&mut alice, "nobody@b.test").await,
        Some(("none".into(), None))
    );
}

/// RFC 6121 §4.3: after both are subscribed, a user logging in later probes the remote
/// contact, whose server answers with the contact's current presence (the show it set while
/// the user was away); the contact gets the user's initial presence. A contact with no
/// available resource is answered with unavailable from its bare JID (§4.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_at_login_are_answered_across_servers() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    mutual(&mut alice, &mut bob).await;
    bob.send("<presence type='unavailable'/>").await;
    expect_presence(&mut alice, Some("unavailable"), "bob@b.test/laptop").await;
    drop(bob);
    alice
        .send("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    fed_sync(&mut alice, "b.test").await;

    // bob logs in again, from another resource.
    let mut bob = online(&p, false, "bob", "desk").await;
    let pres = expect_presence(&mut bob, None, "alice@a.test/phone").await;
    assert_eq!(
        pres.get_child("show", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("away"),
        "the probe answer is alice's current presence: {pres}"
    );
    assert_eq!(
        pres.get_child("status", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("lunch"),
        "{pres}"
    );
    // §4.2.2: alice gets bob's initial presence.
    expect_presence(&mut alice, None, "bob@b.test/desk").await;

    // alice goes; bob logs in once more and probes a contact without available resources.
    alice.send("<presence type='unavailable'/>").await;
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/phone").await;
    drop(alice);
    drop(bob);
    let mut bob = online(&p, false, "bob", "tablet").await;
    let u = bob
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(ALICE_A))
        .await
        .unwrap_or_else(|e| panic!("no answer to the probe of an offline contact: {e:#}"));
    assert_eq!(u.attr("type"), Some("unavailable"), "{u}");
}

/// RFC 6121 §4.5.2: unavailable reaches a remote contact both when the user logs out with
/// unavailable presence and when the connection just drops (the server sends it on the
/// session's behalf, RFC 6121 §4.5.2 / RFC 6120 §7.7.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_on_logout_and_disconnect_reaches_the_remote_contact() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    mutual(&mut alice, &mut bob).await;
    // A second resource of bob's, then its connection drops without a word.
    let mut bob2 = online(&p, false, "bob", "tablet").await;
    expect_presence(&mut alice, None, "bob@b.test/tablet").await;
    bob2.shutdown_write().await;
    drop(bob2);
    let u = expect_presence(&mut alice, Some("unavailable"), "bob@b.test/tablet").await;
    assert_eq!(
        u.attr("to").map(|t| t.starts_with(ALICE_A)),
        Some(true),
        "{u}"
    );
    // Logout with unavailable presence and a status: the status crosses too.
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    let u = expect_presence(&mut alice, Some("unavailable"), "bob@b.test/laptop").await;
    assert_eq!(
        u.get_child("status", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("gone fishing"),
        "{u}"
    );
    // And the other way: alice's connection drops, bob (online again) hears it.
    drop(bob);
    let mut bob = online(&p, false, "bob", "laptop").await;
    expect_presence(&mut bob, None, "alice@a.test/phone").await;
    alice.shutdown_write().await;
    drop(alice);
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/phone").await;
}

/// RFC 6121 §3.3 and §3.2 across servers, from `both`: unsubscribe (alice stops seeing bob):
/// alice's item goes to `from`, bob's to `to`, bob is told (§3.3.3); then unsubscribed (alice cancels bob's subscription): both items
/// go to `none`, bob is told and gets unavailable from alice's resources (§3.2.2); presence
/// no longer crosses either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_unsubscribed_cross_and_update_both_rosters() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    mutual(&mut alice, &mut bob).await;

    alice
        .send(&format!("<presence to='{BOB_B}' type='unsubscribe'/>"))
        .await;
    let u = bob
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unsubscribe"))
        .await
        .unwrap_or_else(|e| panic!("no unsubscribe: {e:#}"));
    assert_eq!(u.attr("from"), Some(ALICE_A), "{u}");
    fed_sync(&mut alice, "b.test").await;
    assert_eq!(
        roster_item(&mut alice, BOB_B).await,
        Some(("from".into(), None))
    );
    assert_eq!(
        roster_item(&mut bob, ALICE_A).await,
        Some(("to".into(), None))
    );
    // bob's presence no longer reaches alice; alice's still reaches bob.
    bob.send("<presence><show>dnd</show></presence>").await;
    fed_sync(&mut bob, "a.test").await;
    assert_nothing(&mut alice, "unsubscribed from bob", |e| {
        is_roster_push(e) || e.name() == "presence" && e.attr("type") == Some("unavailable")
    })
    .await;
    alice.send("<presence><show>chat</show></presence>").await;
    let pres = expect_presence(&mut bob, None, "alice@a.test/phone").await;
    assert_eq!(
        pres.get_child("show", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("chat")
    );

    alice
        .send(&format!("<presence to='{BOB_B}' type='unsubscribed'/>"))
        .await;
    let u = bob
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("no unsubscribed: {e:#}"));
    assert_eq!(u.attr("from"), Some(ALICE_A), "{u}");
    // §3.2.2: the cancelled subscriber gets unavailable from the user's resources.
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/phone").await;
    fed_sync(&mut alice, "b.test").await;
    assert_eq!(
        roster_item(&mut alice, BOB_B).await,
        Some(("none".into(), None))
    );
    assert_eq!(
        roster_item(&mut bob, ALICE_A).await,
        Some(("none".into(), None))
    );
    alice.send("<presence><show>xa</show></presence>").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut bob, "no longer subscribed to alice", is_roster_push).await;
}

/// RFC 6121 §4.6: directed presence to a remote full JID reaches it (with no subscription
/// either way), broadcasts do not follow it (§4.6.2), and when the session ends — by
/// unavailable presence or a dropped connection — the recipient gets unavailable (§4.6.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_presence_to_a_remote_jid_and_unavailable_at_logout() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    alice
        .send("<presence to='bob@b.test/laptop'><status>hello there</status></presence>")
        .await;
    let d = expect_presence(&mut bob, None, "alice@a.test/phone").await;
    assert_eq!(
        d.get_child("status", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("hello there"),
        "{d}"
    );
    // A broadcast goes to subscribers only; bob is none.
    alice.send("<presence><show>away</show></presence>").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut bob, "is no subscriber of alice", |_| false).await;
    // §4.6.3: logout with unavailable.
    alice.send("<presence type='unavailable'/>").await;
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/phone").await;

    // Again from a new session, which ends by its connection dropping.
    let mut alice2 = online(&p, true, "alice", "tablet").await;
    alice2.send("<presence to='bob@b.test'/>").await;
    expect_presence(&mut bob, None, "alice@a.test/tablet").await;
    alice2.shutdown_write().await;
    drop(alice2);
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/tablet").await;
    // Directed unavailable first: no second unavailable at logout (it was forgotten).
    let mut alice3 = online(&p, true, "alice", "desk").await;
    alice3.send("<presence to='bob@b.test/laptop'/>").await;
    expect_presence(&mut bob, None, "alice@a.test/desk").await;
    alice3
        .send("<presence to='bob@b.test/laptop' type='unavailable'/>")
        .await;
    expect_presence(&mut bob, Some("unavailable"), "alice@a.test/desk").await;
    alice3.send("<presence type='unavailable'/>").await;
    fed_sync(&mut alice3, "b.test").await;
    assert_nothing(&mut bob, "already had unavailable", |_| false).await;
    drop(alice);
}

// ---------------------------------------------------------------------------------------------
// Offline storage (XEP-0160), archiving (XEP-0313), carbons (XEP-0280).
// ---------------------------------------------------------------------------------------------

/// XEP-0160 / RFC 6121 §8.5.2.2.1: chat from a remote user to a local account with no
/// available resource is stored (to the bare JID, and to a full JID that is not connected,
/// §8.5.3.2.1) and delivered at the next initial presence, stamped by the recipient's server
/// (XEP-0203); the sender gets no error. A headline is not stored. A message to a remote
/// account that does not exist is answered service-unavailable (RFC 6121 §8.5.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_remote_user_to_an_offline_account_is_delivered_at_login() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    alice
        .send("<message to='bob@b.test' type='chat' id='o1'><body>while you were out</body></message>")
        .await;
    alice
        .send("<message to='bob@b.test/gone' type='chat' id='o2'><body>to a gone resource</body></message>")
        .await;
    alice
        .send("<message to='bob@b.test' type='headline' id='o3'><body>news</body></message>")
        .await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut alice, "sent storable messages", |e| {
        e.name() == "presence"
    })
    .await;

    let mut bob = online(&p, false, "bob", "laptop").await;
    for text in ["while you were out", "to a gone resource"] {
        let m = wait_body(&mut bob, text).await;
        assert_eq!(m.attr("from"), Some("alice@a.test/phone"), "{m}");
        let delay = m
            .get_child("delay", "urn:xmpp:delay")
            .unwrap_or_else(|| panic!("no delay: {m}"));
        assert_eq!(delay.attr("from"), Some("b.test"), "{m}");
    }
    assert_nothing(&mut bob, "got the stored messages", |e| {
        e.name() == "presence"
    })
    .await;

    alice
        .send("<message to='nobody@b.test' type='chat' id='o4'><body>anyone?</body></message>")
        .await;
    let e = alice
        .wait_for(|e| e.attr("id") == Some("o4"))
        .await
        .unwrap_or_else(|e| panic!("no error for a missing account: {e:#}"));
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    assert_eq!(e.attr("from"), Some("nobody@b.test"), "{e}");
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e}"
    );
}

/// Runs a MAM query (XEP-0313 §4) with `inner`; returns the forwarded messages with their
/// result ids.
async fn mam_query(c: &mut Client, inner: &str) -> Vec<(String, Element)> {
    let id = c.id();
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q-{id}'>{inner}</query></iq>"
    ))
    .await;
    let mut out = Vec::new();
    loop {
        let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            return out;
        }
        if let Some(r) = e.get_child("result", MAM) {
            let m = r
                .get_child("forwarded", FORWARD)
                .and_then(|f| f.get_child("message", ns::CLIENT))
                .unwrap_or_else(|| panic!("no forwarded message: {e}"));
            out.push((r.attr("id").unwrap_or_default().to_string(), m.clone()));
        }
    }
}

fn with_form(jid: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field><field var='with'><value>{jid}</value></field></x>"
    )
}

/// XEP-0313 §4 / XEP-0359: a message from a remote user is archived in the recipient's
/// archive and delivered with a stanza-id by the recipient's bare JID, which is the archive's
/// id for it; the sender's archive has it too, and the sender's archive id never reaches the
/// other server. Both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_across_servers_are_archived_on_both_sides() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    alice
        .send("<message to='bob@b.test/laptop' type='chat'><body>archive me</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@b.test' id='forged'/></message>")
        .await;
    let m = wait_body(&mut bob, "archive me").await;
    let sids: Vec<&Element> = m.children().filter(|c| c.is("stanza-id", SID)).collect();
    assert_eq!(sids.len(), 1, "one stanza-id, the recipient's: {m}");
    assert_eq!(sids[0].attr("by"), Some(BOB_B), "{m}");
    let sid = sids[0].attr("id").unwrap_or_default().to_string();
    assert_ne!(sid, "forged", "{m}");
    let got = mam_query(&mut bob, &with_form(ALICE_A)).await;
    assert_eq!(got.len(), 1, "bob's archive: {got:?}");
    assert_eq!(got[0].0, sid, "the stanza-id is the archive id");
    assert_eq!(body(&got[0].1).as_deref(), Some("archive me"));
    assert_eq!(got[0].1.attr("from"), Some("alice@a.test/phone"));
    let got = mam_query(&mut alice, &with_form(BOB_B)).await;
    assert_eq!(got.len(), 1, "alice's archive: {got:?}");
    assert_eq!(body(&got[0].1).as_deref(), Some("archive me"));

    // The other way, to alice's bare JID.
    bob.send("<message to='alice@a.test' type='chat'><body>and back</body></message>")
        .await;
    let m = wait_body(&mut alice, "and back").await;
    let sids: Vec<&Element> = m.children().filter(|c| c.is("stanza-id", SID)).collect();
    assert_eq!(sids.len(), 1, "{m}");
    assert_eq!(sids[0].attr("by"), Some(ALICE_A), "{m}");
    let bodies = |v: &[(String, Element)]| -> Vec<String> {
        v.iter().filter_map(|(_, m)| body(m)).collect()
    };
    let got = mam_query(&mut alice, &with_form(BOB_B)).await;
    assert_eq!(bodies(&got), ["archive me", "and back"]);
    assert_eq!(got[1].0, sids[0].attr("id").unwrap_or_default());
    let got = mam_query(&mut bob, &with_form(ALICE_A)).await;
    assert_eq!(bodies(&got), ["archive me", "and back"]);
}

async fn enable_carbons(c: &mut Client) {
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}'><enable xmlns='{CARBONS}'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

fn carbon<'a>(e: &'a Element, direction: &str) -> Option<&'a Element> {
    e.get_child(direction, CARBONS)?
        .get_child("forwarded", FORWARD)?
        .get_child("message", ns::CLIENT)
}

/// XEP-0280 §8 and §7 with a remote correspondent: a message from a remote user to one full
/// JID gives the other carbons-enabled resource a `<received/>` copy; one sent to a remote
/// user gives a `<sent/>` copy; the remote user gets the message itself, not a carbon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_of_messages_to_and_from_a_remote_user() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut b1 = online(&p, false, "bob", "b1").await;
    let mut b2 = online(&p, false, "bob", "b2").await;
    enable_carbons(&mut b1).await;
    enable_carbons(&mut b2).await;

    alice
        .send("<message to='bob@b.test/b1' type='chat'><body>to b1</body></message>")
        .await;
    let m = wait_body(&mut b1, "to b1").await;
    assert!(carbon(&m, "received").is_none(), "{m}");
    let c = b2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("no carbon: {e:#}"));
    let inner = carbon(&c, "received").unwrap_or_else(|| panic!("not a received carbon: {c}"));
    assert_eq!(c.attr("from"), Some(BOB_B), "{c}");
    assert_eq!(inner.attr("from"), Some("alice@a.test/phone"), "{c}");
    assert_eq!(body(inner).as_deref(), Some("to b1"), "{c}");

    b1.send("<message to='alice@a.test/phone' type='chat'><body>from b1</body></message>")
        .await;
    let c = b2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("no carbon: {e:#}"));
    let inner = carbon(&c, "sent").unwrap_or_else(|| panic!("not a sent carbon: {c}"));
    assert_eq!(inner.attr("to"), Some("alice@a.test/phone"), "{c}");
    assert_eq!(inner.attr("from"), Some("bob@b.test/b1"), "{c}");
    let m = wait_body(&mut alice, "from b1").await;
    assert!(carbon(&m, "sent").is_none(), "{m}");
    assert_eq!(m.attr("from"), Some("bob@b.test/b1"));
    // `<private/>` is not copied (§7), here or there.
    b1.send("<message to='alice@a.test/phone' type='chat'><body>private</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    wait_body(&mut alice, "private").await;
    assert_nothing(&mut b2, "the message was private", |e| {
        e.name() == "presence"
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Blocking (XEP-0191).
// ---------------------------------------------------------------------------------------------

async fn block(c: &mut Client, verb: &str, jid: &str) {
    let r = ask(
        c,
        &format!(
            "<iq type='set' id='{{id}}'><{verb} xmlns='{BLOCKING}'><item jid='{jid}'/></{verb}></iq>"
        ),
    )
    .await;
    assert_result(&r);
}

/// XEP-0191 §3.3 with a remote JID: a local user who blocks it gets none of its stanzas —
/// a message and an IQ are answered service-unavailable, presence is dropped — and cannot
/// send to it (not-acceptable with `<blocked/>`); a contact that was subscribed sees the
/// user go offline and no longer gets presence. Unblocking restores it (§3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_remote_jid() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut bob = online(&p, false, "bob", "laptop").await;
    mutual(&mut alice, &mut bob).await;

    block(&mut bob, "block", ALICE_A).await;
    // §3.3: the blocked contact sees bob go offline.
    expect_presence(&mut alice, Some("unavailable"), "bob@b.test/laptop").await;

    alice
        .send("<message to='bob@b.test/laptop' type='chat' id='m1'><body>blocked?</body></message>")
        .await;
    let e = alice
        .wait_for(|e| e.attr("id") == Some("m1"))
        .await
        .unwrap_or_else(|e| panic!("no error for the message: {e:#}"));
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e}"
    );
    let r = alice
        .iq("<iq type='get' id='{id}' to='bob@b.test/laptop'><query xmlns='jabber:iq:version'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(
        canto_tests::error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    alice.send("<presence><show>away</show></presence>").await;
    alice.send("<presence to='bob@b.test/laptop'/>").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut bob, "blocked alice", |_| false).await;

    bob.send("<message to='alice@a.test' type='chat' id='m2'><body>hi?</body></message>")
        .await;
    let e = bob
        .wait_for(|e| e.attr("id") == Some("m2"))
        .await
        .unwrap_or_else(|e| panic!("no error for the outbound message: {e:#}"));
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("not-acceptable"),
        "{e}"
    );
    assert!(
        e.get_child("error", ns::CLIENT)
            .is_some_and(|x| x.has_child("blocked", BLOCKING_ERRORS)),
        "{e}"
    );
    // bob's presence changes do not reach alice either.
    bob.send("<presence><show>dnd</show></presence>").await;
    fed_sync(&mut bob, "a.test").await;
    assert_nothing(&mut alice, "is blocked by bob", |e| {
        e.attr("from") == Some("alice@a.test/phone")
    })
    .await;

    // §3.4: unblocking — bob's presence goes to alice again, messages flow.
    block(&mut bob, "unblock", ALICE_A).await;
    expect_presence(&mut alice, None, "bob@b.test/laptop").await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    canto_tests::assert_message_flows(&mut bob, &mut alice).await;
}

// ---------------------------------------------------------------------------------------------
// PEP (XEP-0163) to remote contacts.
// ---------------------------------------------------------------------------------------------

/// The feature list of a client interested in `nodes`.
fn caps_features(nodes: &[&str]) -> Vec<String> {
    let mut f = vec![DISCO_INFO.to_string(), CAPS.to_string()];
    f.extend(nodes.iter().map(|n| format!("{n}+notify")));
    f
}

/// Sends available presence with XEP-0115 caps asking for `nodes` (`+notify`) and answers
/// every caps disco#info query (XEP-0115 §6.2) that comes — from its own server and from the
/// contact's — until `done` accepts an element (returned, with what else arrived), or until
/// the domain `asked_by` has asked (its query returned). Returns the domains that asked.
async fn announce_until(
    c: &mut Client,
    nodes: &[&str],
    done: impl Fn(&Element) -> bool,
    asked_by: Option<&str>,
) -> (Element, Vec<String>, Vec<Element>) {
    let features = caps_features(nodes);
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let ver = canto_proto::caps::ver(&[("client", "pc", "", "Canto tests")], &refs);
    c.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    ))
    .await;
    let mut askers = Vec::new();
    let mut others = Vec::new();
    let who = c.full_jid();
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{who}: announcing caps: {e:#}"));
        let id = e.attr("id").unwrap_or_default().to_string();
        if e.name() == "iq" && e.attr("type") == Some("get") && id.starts_with("caps-") {
            let from = e.attr("from").unwrap_or_default().to_string();
            let node = format!("{CAPS_NODE}#{ver}");
            let q = e
                .get_child("query", DISCO_INFO)
                .unwrap_or_else(|| panic!("{e}"));
            assert_eq!(q.attr("node"), Some(node.as_str()), "{e}");
            let mut answer = format!(
                "<iq type='result' id='{id}' to='{from}'><query xmlns='{DISCO_INFO}' node='{node}'><identity category='client' type='pc' name='Canto tests'/>"
            );
            for f in &features {
                answer.push_str(&format!("<feature var='{f}'/>"));
            }
            answer.push_str("</query></iq>");
            c.send(&answer).await;
            let stop = asked_by == Some(from.as_str());
            askers.push(from);
            if stop {
                return (e, askers, others);
            }
        } else if done(&e) {
            return (e, askers, others);
        } else {
            others.push(e);
        }
    }
}

/// XEP-0163 §4.3 across servers: a remote contact subscribed to the owner's presence, whose
/// client's caps (XEP-0115, learnt by a disco#info query from the owner's server across
/// federation) ask for a node with `+notify`, gets the last item when its presence arrives
/// (§4.3.1, with a XEP-0203 delay) and the owner's later publishes (§4.3.2), each resource
/// only for the nodes it asked for; an unavailable resource is forgotten (no more
/// notifications, and the last item again when it comes back); a remote entity that is no
/// contact gets nothing whatever its caps say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifications_reach_remote_contacts_by_their_caps() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut b1 = online(&p, false, "bob", "b1").await;
    mutual(&mut alice, &mut b1).await;
    publish(&mut alice, None, TUNE, Some("t1"), "first tune").await;
    publish(&mut alice, None, MOOD, Some("m1"), "first mood").await;

    // b1 asks for tune: a.test learns its caps from b1 itself and sends the last item.
    let (m, askers, _) = announce_until(
        &mut b1,
        &[TUNE],
        |e| is_event(e, ALICE_A, "items", TUNE),
        None,
    )
    .await;
    assert!(
        askers.iter().any(|a| a == "a.test"),
        "a.test never asked: {askers:?}"
    );
    assert_item_event(&m, "t1", "first tune");
    assert_eq!(m.attr("to"), Some("bob@b.test/b1"), "{m}");
    assert!(
        m.get_child("delay", "urn:xmpp:delay").is_some(),
        "a last item carries a delay (XEP-0163 §4.3.4): {m}"
    );
    // b2 asks for mood only.
    let mut b2 = p.login(false, "bob", "b2").await;
    let (m, _, _) = announce_until(
        &mut b2,
        &[MOOD],
        |e| is_event(e, ALICE_A, "items", MOOD),
        None,
    )
    .await;
    assert_item_event(&m, "m1", "first mood");

    // §4.3.2: a publish goes to the resources that asked for the node.
    publish(&mut alice, None, TUNE, Some("t2"), "second tune").await;
    let m = wait_event(&mut b1, ALICE_A, TUNE).await;
    assert_item_event(&m, "t2", "second tune");
    assert_eq!(m.attr("type"), Some("headline"), "{m}");
    publish(&mut alice, None, MOOD, Some("m2"), "second mood").await;
    let m = wait_event(&mut b2, ALICE_A, MOOD).await;
    assert_item_event(&m, "m2", "second mood");
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut b1, "did not ask for mood", not_event).await;
    assert_nothing(&mut b2, "did not ask for tune", not_event).await;

    // b1 becomes unavailable (still connected): a.test forgets it.
    b1.send("<presence type='unavailable'/>").await;
    expect_presence(&mut alice, Some("unavailable"), "bob@b.test/b1").await;
    publish(&mut alice, None, TUNE, Some("t3"), "third tune").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut b1, "is unavailable", not_event).await;
    // Back, with the same caps: the last item again (§4.3.1: at each initial presence).
    let (m, _, _) = announce_until(
        &mut b1,
        &[TUNE],
        |e| is_event(e, ALICE_A, "items", TUNE),
        None,
    )
    .await;
    assert_item_event(&m, "t3", "third tune");

    // alice@b.test is no contact of alice@a.test: directed presence with caps asking for
    // tune brings no query from a.test and no notifications.
    let mut stranger = p.login(false, "alice", "s").await;
    let features = caps_features(&[TUNE]);
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let ver = canto_proto::caps::ver(&[("client", "pc", "", "Canto tests")], &refs);
    stranger
        .send(&format!(
            "<presence to='{ALICE_A}'><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
        ))
        .await;
    fed_sync(&mut stranger, "a.test").await;
    publish(&mut alice, None, TUNE, Some("t4"), "fourth tune").await;
    wait_event(&mut b1, ALICE_A, TUNE).await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut stranger, "is no contact", |_| false).await;
}

/// XEP-0163 §4.3.1 with a contact that comes online after the publish, from a server the
/// owner's server already knows the caps hash of (no second query: XEP-0115 §6.2 caching),
/// and XEP-0084 avatar metadata as the node; and XEP-0191: a remote contact the owner blocks
/// gets no notifications (§3.2 of XEP-0191: nothing from the user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_last_item_on_presence_and_blocking_for_remote_contacts() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut b1 = online(&p, false, "bob", "b1").await;
    mutual(&mut alice, &mut b1).await;
    let meta = "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12' id='abc' height='1' width='1' type='image/png'/></metadata>";
    let r = ask(
        &mut alice,
        &format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{AVATAR_META}'><item id='abc'>{meta}</item></publish></pubsub></iq>"
        ),
    )
    .await;
    assert_result(&r);
    let (m, askers, _) = announce_until(
        &mut b1,
        &[AVATAR_META],
        |e| is_event(e, ALICE_A, "items", AVATAR_META),
        None,
    )
    .await;
    assert!(askers.iter().any(|a| a == "a.test"), "{askers:?}");
    let item = event_child(&m)
        .and_then(|c| c.children().next())
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(item.attr("id"), Some("abc"), "{m}");
    assert!(item.has_child("metadata", AVATAR_META), "{m}");
    // A second resource with the same caps: a.test knows the hash (verified), asks nobody.
    let mut b2 = p.login(false, "bob", "b2").await;
    let (_, askers, _) = announce_until(
        &mut b2,
        &[AVATAR_META],
        |e| is_event(e, ALICE_A, "items", AVATAR_META),
        None,
    )
    .await;
    assert!(
        !askers.iter().any(|a| a == "a.test"),
        "asked again: {askers:?}"
    );

    // alice blocks bob: neither resource is notified.
    block(&mut alice, "block", BOB_B).await;
    publish_with(&mut alice, None, AVATAR_META, Some("def"), "x", &[]).await;
    fed_sync(&mut alice, "b.test").await;
    for c in [&mut b1, &mut b2] {
        let got = c.drain().await;
        let events: Vec<&Element> = got.iter().filter(|e| event_child(e).is_some()).collect();
        assert!(events.is_empty(), "notified while blocked: {events:?}");
    }
    block(&mut alice, "unblock", BOB_B).await;
    publish_with(&mut alice, None, AVATAR_META, Some("ghi"), "y", &[]).await;
    let m = wait_event(&mut b1, ALICE_A, AVATAR_META).await;
    assert_eq!(
        event_child(&m)
            .and_then(|c| c.children().next())
            .and_then(|i| i.attr("id")),
        Some("ghi"),
        "{m}"
    );
    wait_event(&mut b2, ALICE_A, AVATAR_META).await;
}

/// XEP-0060 §6.1 / XEP-0163 across servers with an explicit subscription: a remote contact
/// allowed by the access model (presence) subscribes its bare JID to a node with an IQ across
/// federation, gets the last item at once (XEP-0060 §6.1.7) and later publishes without any
/// caps; a remote stranger is refused (`presence-subscription-required`); when the owner
/// cancels the contact's presence subscription, the explicit subscription goes with the access
/// (XEP-0163 §7.1) and nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_explicit_subscription_from_a_remote_contact() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut b1 = online(&p, false, "bob", "b1").await;
    canto_tests::subscribe_to(&mut b1, &mut alice).await;
    publish(&mut alice, None, TUNE, Some("t1"), "first tune").await;

    let r = ask(
        &mut b1,
        &ps_to(
            "set",
            ALICE_A,
            &format!("<subscribe node='{TUNE}' jid='{BOB_B}'/>"),
        ),
    )
    .await;
    assert_result(&r);
    let sub = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("subscription", PS))
        .unwrap_or_else(|| panic!("no subscription: {r}"));
    assert_eq!(sub.attr("subscription"), Some("subscribed"), "{r}");
    let m = wait_event(&mut b1, ALICE_A, TUNE).await;
    assert_item_event(&m, "t1", "first tune");
    publish(&mut alice, None, TUNE, Some("t2"), "second tune").await;
    let m = wait_event(&mut b1, ALICE_A, TUNE).await;
    assert_item_event(&m, "t2", "second tune");

    let mut stranger = p.login(false, "alice", "s").await;
    let r = ask(
        &mut stranger,
        &ps_to(
            "set",
            ALICE_A,
            &format!("<subscribe node='{TUNE}' jid='alice@b.test'/>"),
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(
        canto_tests::error_condition(&r).as_deref(),
        Some("not-authorized"),
        "{r}"
    );

    // alice cancels bob's subscription to her presence: the access goes, and the subscription.
    alice
        .send(&format!("<presence to='{BOB_B}' type='unsubscribed'/>"))
        .await;
    b1.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("no unsubscribed: {e:#}"));
    publish(&mut alice, None, TUNE, Some("t3"), "third tune").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut b1, "lost access", not_event).await;
}

/// XEP-0163 §4.3.1 on approval: a remote contact whose presence (with caps) this server
/// already gets — the owner is subscribed to it — but who may not see the owner's nodes yet
/// gets nothing; when the owner approves its subscription, its resources get the last items
/// of the nodes they asked for, and later publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_last_items_when_a_remote_contact_is_approved() {
    let p = Pair::new(true, true).await;
    let mut alice = online(&p, true, "alice", "phone").await;
    let mut b1 = online(&p, false, "bob", "b1").await;
    // alice sees bob's presence; bob does not see alice's.
    canto_tests::subscribe_to(&mut alice, &mut b1).await;
    publish(&mut alice, None, TUNE, Some("t1"), "first tune").await;
    let (_, askers, _) = announce_until(&mut b1, &[TUNE], |_| false, Some("a.test")).await;
    assert!(askers.iter().any(|a| a == "a.test"), "{askers:?}");
    fed_sync(&mut b1, "a.test").await;
    fed_sync(&mut alice, "b.test").await;
    assert_nothing(&mut b1, "may not see alice's nodes yet", not_event).await;

    canto_tests::subscribe_to(&mut b1, &mut alice).await;
    let m = wait_event(&mut b1, ALICE_A, TUNE).await;
    assert_item_event(&m, "t1", "first tune");
    publish(&mut alice, None, TUNE, Some("t2"), "second tune").await;
    let m = wait_event(&mut b1, ALICE_A, TUNE).await;
    assert_item_event(&m, "t2", "second tune");
}
