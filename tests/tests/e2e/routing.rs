//! Stanza routing over real sockets: RFC 6120 §8 and §10, RFC 6121 §8 (as far as they apply
//! without rosters, offline storage or federation), and the server's own IQ handlers.

use canto_tests::*;
use canto_xml::Element;

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

async fn server() -> TestServer {
    let s = TestServer::start().await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    s
}

async fn alice(s: &TestServer, resource: &str) -> Client {
    s.login("alice", "wonderland", resource).await
}

async fn bob(s: &TestServer, resource: &str) -> Client {
    s.login("bob", "builder", resource).await
}

/// Sends presence (with `priority` if given) and waits until the server has handled it: the
/// router runs on the connection's task, so a ping answered afterwards proves it.
async fn available(c: &mut Client, priority: Option<i8>) {
    match priority {
        Some(p) => {
            c.send(&format!("<presence><priority>{p}</priority></presence>"))
                .await
        }
        None => c.send("<presence/>").await,
    }
    assert_alive(c).await;
}

/// Reads and skips whatever each client was sent so far: a ping's answer is queued behind
/// everything delivered to the session before it.
async fn settle(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        assert_alive(c).await;
    }
}

async fn assert_quiet(c: &mut Client) {
    assert!(
        c.quiet().await,
        "{} received {:?}",
        c.full_jid(),
        c.next().await
    );
}

/// Offline messages stored for bob.
async fn stored_for_bob(s: &TestServer) -> usize {
    let bob = canto_stanza::BareJid::new("bob@localhost").unwrap_or_else(|e| panic!("{e}"));
    s.running.server.offline_messages(&bob).await.len()
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", canto_stanza::ns::CLIENT)
        .map(|b| b.text())
}

async fn next_message(c: &mut Client) -> Element {
    c.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{}: no message: {e:#}", c.full_jid()))
}

/// Sends `xml` and returns the error stanza that comes back, after checking its condition.
async fn expect_error(c: &mut Client, xml: &str, condition: &str) -> Element {
    c.send(xml).await;
    let r = c
        .wait_for(|e| e.attr("type") == Some("error"))
        .await
        .unwrap_or_else(|e| panic!("{xml}: {e:#}"));
    assert_eq!(
        error_condition(&r).as_deref(),
        Some(condition),
        "{xml} -> {r}"
    );
    r
}

async fn iq_ok(c: &mut Client, xml: &str) -> Element {
    let r = c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{xml} -> {r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_an_online_full_jid_is_delivered_with_a_stamped_from() {
    // RFC 6121 §8.5.3.1 (deliver to the connected resource); RFC 6120 §8.1.2.1 (the server
    // stamps `from` with the sender's full JID).
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut b = bob(&s, "phone").await;
    a.send("<message to='bob@localhost/phone' type='chat' id='m1'><body>one</body></message>")
        .await;
    let m = next_message(&mut b).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    assert_eq!(m.attr("to"), Some("bob@localhost/phone"));
    assert_eq!(m.attr("id"), Some("m1"));
    assert_eq!(m.attr("type"), Some("chat"));
    assert_eq!(body(&m).as_deref(), Some("one"));
    // Her own bare JID as `from` is accepted and completed to the full JID.
    a.send("<message from='alice@localhost' to='bob@localhost/phone'><body>two</body></message>")
        .await;
    let m = next_message(&mut b).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    assert_eq!(body(&m).as_deref(), Some("two"));
    // Delivery needs no presence from either side, and nothing comes back to the sender.
    assert_quiet(&mut a).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_between_full_jids_round_trips() {
    // RFC 6121 §8.5.3.1: an IQ to a connected resource is delivered; its result is routed back
    // the same way (RFC 6120 §8.2.3).
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut b = bob(&s, "phone").await;
    a.send(
        "<iq to='bob@localhost/phone' type='get' id='q1'><query xmlns='urn:example:thing'/></iq>",
    )
    .await;
    let q = b
        .wait_for(|e| e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(q.attr("from"), Some("alice@localhost/home"));
    assert_eq!(q.attr("type"), Some("get"));
    b.send("<iq to='alice@localhost/home' type='result' id='q1'><query xmlns='urn:example:thing'><x/></query></iq>")
        .await;
    let r = a
        .wait_for(|e| e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("id"), Some("q1"));
    assert_eq!(r.attr("from"), Some("bob@localhost/phone"));
    assert!(
        r.get_child("query", "urn:example:thing")
            .is_some_and(|q| q.children().count() == 1),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_message_goes_to_the_highest_nonnegative_priority_resource_only() {
    // RFC 6121 §8.5.2.1.1: normal and chat go to the available resource(s) with the highest
    // non-negative priority; §4.7.2.3 priority. Resources that are not available get nothing.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut one = bob(&s, "one").await;
    let mut two = bob(&s, "two").await;
    let mut three = bob(&s, "three").await;
    let mut four = bob(&s, "four").await;
    available(&mut one, Some(1)).await;
    available(&mut two, Some(5)).await;
    available(&mut three, Some(-1)).await;
    settle(&mut [&mut one, &mut two, &mut three, &mut four]).await;
    for t in ["chat", "normal"] {
        a.send(&format!(
            "<message to='bob@localhost' type='{t}'><body>{t}</body></message>"
        ))
        .await;
        let m = next_message(&mut two).await;
        assert_eq!(body(&m).as_deref(), Some(t));
        assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    }
    for c in [&mut one, &mut three, &mut four, &mut a] {
        assert_quiet(c).await;
    }
    // Priority changes take effect: now "one" is the highest.
    available(&mut two, Some(0)).await;
    settle(&mut [&mut one, &mut two, &mut three, &mut four]).await;
    a.send("<message to='bob@localhost' type='chat'><body>again</body></message>")
        .await;
    assert_eq!(
        body(&next_message(&mut one).await).as_deref(),
        Some("again")
    );
    for c in [&mut two, &mut three, &mut four] {
        assert_quiet(c).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_headline_goes_to_every_nonnegative_resource() {
    // RFC 6121 §8.5.2.1.1: headline goes to all available resources with non-negative priority.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut one = bob(&s, "one").await;
    let mut two = bob(&s, "two").await;
    let mut three = bob(&s, "three").await;
    available(&mut one, Some(0)).await;
    available(&mut two, Some(7)).await;
    available(&mut three, Some(-5)).await;
    settle(&mut [&mut one, &mut two, &mut three]).await;
    a.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    assert_eq!(body(&next_message(&mut one).await).as_deref(), Some("news"));
    assert_eq!(body(&next_message(&mut two).await).as_deref(), Some("news"));
    assert_quiet(&mut three).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_priority_resources_get_no_bare_jid_messages() {
    // RFC 6121 §4.7.2.3, §8.5.2.1.1: a negative priority never receives bare-JID messages;
    // with none other, §8.5.2.2.1 applies: the message is stored offline (XEP-0160).
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut b = bob(&s, "low").await;
    available(&mut b, Some(-1)).await;
    a.send("<message to='bob@localhost' type='chat' id='n1'><body>x</body></message>")
        .await;
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    assert_eq!(stored_for_bob(&s).await, 1);
    // Still reachable at its full JID.
    a.send("<message to='bob@localhost/low' type='chat'><body>direct</body></message>")
        .await;
    assert_eq!(body(&next_message(&mut b).await).as_deref(), Some("direct"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_message_without_an_available_resource_is_stored_offline() {
    // RFC 6121 §8.5.2.2.1: no available resource: normal and chat are stored offline
    // (XEP-0160), groupchat gets service-unavailable, headline and error are dropped.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    // Bob is connected but has not sent presence: not an available resource.
    let mut b = bob(&s, "phone").await;
    for t in ["chat", "normal"] {
        a.send(&format!(
            "<message to='bob@localhost' type='{t}'><body>{t}</body></message>"
        ))
        .await;
    }
    expect_error(
        &mut a,
        "<message to='bob@localhost' type='groupchat'><body>x</body></message>",
        "service-unavailable",
    )
    .await;
    a.send("<message to='bob@localhost' type='headline'><body>x</body></message>")
        .await;
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    assert_eq!(stored_for_bob(&s).await, 2);
    // Available: the stored ones arrive first, then live delivery.
    b.send("<presence/>").await;
    a.send("<message to='bob@localhost' type='chat'><body>now</body></message>")
        .await;
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        bodies.push(body(&next_message(&mut b).await).unwrap_or_default());
    }
    assert_eq!(bodies, ["chat", "normal", "now"]);
    // Unavailable again: stored, not bounced.
    b.send("<presence type='unavailable'/>").await;
    assert_alive(&mut b).await;
    a.send("<message to='bob@localhost' type='chat'><body>gone</body></message>")
        .await;
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    assert_eq!(stored_for_bob(&s).await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_presence_to_a_bare_jid_reaches_the_available_resources() {
    // RFC 6121 §8.5.2.1.2 (presence of no type or unavailable: every available resource), §4.6
    // directed presence.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut one = bob(&s, "one").await;
    let mut two = bob(&s, "two").await;
    let mut idle = bob(&s, "idle").await;
    available(&mut one, Some(1)).await;
    available(&mut two, Some(-1)).await;
    settle(&mut [&mut one, &mut two, &mut idle]).await;
    a.send("<presence to='bob@localhost'><status>hi bob</status></presence>")
        .await;
    for c in [&mut one, &mut two] {
        let p = c
            .wait_for(|e| e.name() == "presence")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(p.attr("from"), Some("alice@localhost/home"));
        assert_eq!(p.attr("type"), None);
        assert_eq!(
            p.get_child("status", canto_stanza::ns::CLIENT)
                .map(|s| s.text())
                .as_deref(),
            Some("hi bob")
        );
    }
    assert_quiet(&mut idle).await;
    a.send("<presence to='bob@localhost' type='unavailable'/>")
        .await;
    for c in [&mut one, &mut two] {
        let p = c
            .wait_for(|e| e.name() == "presence")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(p.attr("type"), Some("unavailable"));
    }
    assert_quiet(&mut idle).await;
    // Directed presence does not make the sender available for bare-JID messages: stored.
    one.send("<message to='alice@localhost' type='chat'><body>x</body></message>")
        .await;
    one.sync().await;
    assert_quiet(&mut a).await;
    assert_quiet(&mut one).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_presence_reaches_the_accounts_other_available_resources() {
    // RFC 6121 §4.2.2, §4.4.2, §4.5.2: presence without `to` is broadcast; without rosters it
    // reaches the account's other available resources (not connected-only ones).
    let s = server().await;
    let mut home = alice(&s, "home").await;
    let mut work = alice(&s, "work").await;
    let mut idle = alice(&s, "idle").await;
    let mut b = bob(&s, "phone").await;
    available(&mut home, None).await;
    settle(&mut [&mut work, &mut idle]).await;
    work.send("<presence><show>away</show></presence>").await;
    let p = home
        .wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("from"), Some("alice@localhost/work"));
    assert_eq!(p.attr("to"), Some("alice@localhost/home"));
    assert_eq!(
        p.get_child("show", canto_stanza::ns::CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("away")
    );
    work.send("<presence type='unavailable'/>").await;
    let p = home
        .wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("from"), Some("alice@localhost/work"));
    assert_eq!(p.attr("type"), Some("unavailable"));
    // A second unavailable from a resource that is not available changes nothing.
    work.send("<presence type='unavailable'/>").await;
    work.sync().await;
    assert_quiet(&mut home).await;
    assert_quiet(&mut idle).await;
    // Another account sees none of it (no roster, no subscription).
    assert_quiet(&mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_without_to_goes_to_the_senders_bare_jid() {
    // RFC 6120 §10.3.1: a message without `to` is handled as if addressed to the sender's
    // bare JID (so RFC 6121 §8.5.2.1.1 picks the resource).
    let s = server().await;
    let mut home = alice(&s, "home").await;
    let mut work = alice(&s, "work").await;
    let mut b = bob(&s, "phone").await;
    available(&mut home, Some(0)).await;
    available(&mut work, Some(5)).await;
    settle(&mut [&mut home, &mut work]).await;
    home.send("<message type='chat'><body>note to self</body></message>")
        .await;
    let m = next_message(&mut work).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    assert_eq!(body(&m).as_deref(), Some("note to self"));
    assert_quiet(&mut home).await;
    assert_quiet(&mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_to_a_remote_domain_are_remote_server_not_found() {
    // RFC 6120 §8.3.3.16, §10.4.3: no federation yet, so no route to a remote domain.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let r = expect_error(
        &mut a,
        "<message to='juliet@remote.example' type='chat' id='r1'><body>x</body></message>",
        "remote-server-not-found",
    )
    .await;
    assert_eq!(r.attr("id"), Some("r1"));
    assert_eq!(r.attr("from"), Some("juliet@remote.example"));
    assert_eq!(error_type(&r).as_deref(), Some("cancel"));
    let r = expect_error(
        &mut a,
        "<iq to='remote.example' type='get' id='r2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "remote-server-not-found",
    )
    .await;
    assert_eq!(r.attr("id"), Some("r2"));
    // Unavailable presence to a remote domain is dropped quietly.
    a.send("<presence to='juliet@remote.example' type='unavailable'/>")
        .await;
    assert_quiet(&mut a).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_to_the_server_and_its_resources() {
    // RFC 6120 §8.4: an IQ the server does not handle is service-unavailable; RFC 6120 §10.4
    // (to the server itself); nothing is bound to a resource of the server.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let r = expect_error(
        &mut a,
        "<iq to='localhost' type='get' id='s1'><query xmlns='urn:example:unknown'/></iq>",
        "service-unavailable",
    )
    .await;
    assert_eq!(r.attr("id"), Some("s1"));
    assert_eq!(r.attr("from"), Some(HOST));
    // Ping is only defined as a get (XEP-0199 §4.2).
    expect_error(
        &mut a,
        "<iq to='localhost' type='set' id='s2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
    )
    .await;
    expect_error(
        &mut a,
        "<iq to='localhost/res' type='get' id='s3'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
    )
    .await;
    expect_error(
        &mut a,
        "<message to='localhost/res' type='chat'><body>x</body></message>",
        "service-unavailable",
    )
    .await;
    // A message to the server with no module for it is dropped.
    a.send("<message to='localhost' type='chat'><body>x</body></message>")
        .await;
    assert_quiet(&mut a).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_to_the_server_own_bare_jid_and_without_to() {
    // XEP-0199 §4.2 (client-to-server ping); RFC 6120 §10.3.3 (no `to`: handled on the
    // account's behalf) and RFC 6121 §8.5.2.1.3 (the server answers for the bare JID).
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let r = iq_ok(
        &mut a,
        "<iq to='localhost' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(r.attr("from"), Some(HOST));
    assert_eq!(r.attr("to"), Some("alice@localhost/home"));
    assert_eq!(r.children().count(), 0);
    let r = iq_ok(
        &mut a,
        "<iq to='alice@localhost' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(r.attr("from"), Some("alice@localhost"));
    let r = iq_ok(
        &mut a,
        "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(r.attr("to"), Some("alice@localhost/home"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_to_another_users_bare_jid_is_service_unavailable() {
    // RFC 6121 §8.5.2.1.3: the server answers for the bare JID, and does not answer pings on
    // another account's behalf (XEP-0199 §3: service-unavailable). Nothing reaches bob.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let mut b = bob(&s, "phone").await;
    available(&mut b, None).await;
    let r = expect_error(
        &mut a,
        "<iq to='bob@localhost' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "service-unavailable",
    )
    .await;
    assert_eq!(r.attr("id"), Some("p1"));
    assert_eq!(r.attr("from"), Some("bob@localhost"));
    assert_quiet(&mut b).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_info_on_the_server_lists_its_features() {
    // XEP-0030 §3.1: identity server/im and one feature per supported protocol.
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let r = iq_ok(
        &mut a,
        &format!("<iq to='localhost' type='get' id='{{id}}'><query xmlns='{DISCO_INFO}'/></iq>"),
    )
    .await;
    let q = r
        .get_child("query", DISCO_INFO)
        .unwrap_or_else(|| panic!("no query: {r}"));
    assert!(
        q.children().any(|i| i.name() == "identity"
            && i.attr("category") == Some("server")
            && i.attr("type") == Some("im")),
        "{q}"
    );
    let features: Vec<&str> = q
        .children()
        .filter(|f| f.name() == "feature")
        .filter_map(|f| f.attr("var"))
        .collect();
    for want in [
        DISCO_INFO,
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
    ] {
        assert!(features.contains(&want), "{want} missing from {features:?}");
    }
    // XEP-0030 §3.1: no duplicates.
    let mut sorted = features.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), features.len(), "{features:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_time_are_answered() {
    // XEP-0092 §2: <name/> and <version/>; XEP-0202 §2: <tzo/> and <utc/> (XEP-0082 format).
    let s = server().await;
    let mut a = alice(&s, "home").await;
    let r = iq_ok(
        &mut a,
        "<iq to='localhost' type='get' id='{id}'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let q = r
        .get_child("query", "jabber:iq:version")
        .unwrap_or_else(|| panic!("{r}"));
    let name = q.get_child("name", "jabber:iq:version").map(|n| n.text());
    let version = q
        .get_child("version", "jabber:iq:version")
        .map(|n| n.text());
    assert_eq!(name.as_deref(), Some("Canto"));
    assert!(version.is_some_and(|v| !v.is_empty()), "{q}");
    // XEP-0092 §5: the OS is not revealed by default.
    assert!(!q.has_child("os", "jabber:iq:version"), "{q}");

    let r = iq_ok(
        &mut a,
        "<iq to='localhost' type='get' id='{id}'><time xmlns='urn:xmpp:time'/></iq>",
    )
    .await;
    let t = r
        .get_child("time", "urn:xmpp:time")
        .unwrap_or_else(|| panic!("{r}"));
    let tzo = t.get_child("tzo", "urn:xmpp:time").map(|x| x.text());
    let utc = t
        .get_child("utc", "urn:xmpp:time")
        .map(|x| x.text())
        .unwrap_or_default();
    assert_eq!(tzo.as_deref(), Some("+00:00"));
    // CCYY-MM-DDThh:mm:ss[.sss]Z
    let b = utc.as_bytes();
    assert!(
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && utc.ends_with('Z'),
        "{utc}"
    );
    let year: u32 = utc[..4].parse().unwrap_or(0);
    assert!(year >= 2024, "{utc}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_virtual_host_is_independent() {
    // RFC 6120 §4.7.2: the stream's `to` picks the host; accounts, JIDs and routing are per
    // host (alice@localhost and alice@example.test are different accounts).
    let s = server().await;
    s.add_user_on(HOST2, "alice", "looking-glass").await;
    s.add_user_on(HOST2, "carol", "singer").await;
    let mut a1 = alice(&s, "home").await;
    let mut a2 = s.login_on(HOST2, "alice", "looking-glass", "home").await;
    let mut c = s.login_on(HOST2, "carol", "singer", "desk").await;
    assert_eq!(a2.jid.as_deref(), Some("alice@example.test/home"));
    assert_eq!(c.jid.as_deref(), Some("carol@example.test/desk"));

    // The HOST2 server answers for itself.
    let r = iq_ok(
        &mut c,
        "<iq to='example.test' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(r.attr("from"), Some(HOST2));

    // Same localpart and resource on two hosts: two sessions, each addressed separately.
    a1.send("<message to='alice@example.test/home' type='chat'><body>to the other alice</body></message>")
        .await;
    let m = next_message(&mut a2).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    assert_eq!(body(&m).as_deref(), Some("to the other alice"));
    assert_quiet(&mut a1).await;

    // Across hosts both ways.
    c.send(
        "<message to='alice@localhost/home' type='chat'><body>hello from HOST2</body></message>",
    )
    .await;
    let m = next_message(&mut a1).await;
    assert_eq!(m.attr("from"), Some("carol@example.test/desk"));
    assert_message_flows(&mut a1, &mut c).await;

    // carol exists only on HOST2.
    expect_error(
        &mut a1,
        "<message to='carol@localhost' type='chat'><body>x</body></message>",
        "service-unavailable",
    )
    .await;
    assert_quiet(&mut c).await;

    // Credentials are per host: HOST2's alice password does not work on HOST, carol cannot log
    // in on HOST at all.
    let mut x = s.connect_tls().await;
    let e = x
        .auth_scram(
            canto_proto::sasl::HashAlgo::Sha256,
            "alice",
            "looking-glass",
            None,
        )
        .await;
    assert!(e.is_err(), "HOST2 password accepted on HOST");
    let mut y = s.connect_tls().await;
    let e = y
        .auth_scram(canto_proto::sasl::HashAlgo::Sha256, "carol", "singer", None)
        .await;
    assert!(e.is_err(), "carol logged in on HOST");
    s.stop().await;
}
