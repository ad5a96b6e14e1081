//! XEP-0060 hosted publish-subscribe end to end: `pubsub.HOST` by default and more services
//! from `[services]`: discovery, node creation and its policy, publish and notifications to
//! subscribers, the last item on subscription, retract/purge/delete, owner management of
//! affiliations and subscriptions, whitelist and authorize nodes (§8.6 authorization
//! messages), switching the service off, an extra service, persistence.

use canto_tests::*;
use canto_xml::Element;

use crate::pep::*;

const SVC: &str = "pubsub.localhost";
const NEWS: &str = "princely_musings";
const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";
const CAROL: &str = "carol@localhost";
const DAVE: &str = "dave@localhost";
const SUBSCRIBE_AUTH: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    for u in ["alice", "bob", "carol", "dave", "admin"] {
        s.add_user(u, "pw").await;
    }
    s
}

async fn server() -> TestServer {
    server_with(test_config()).await
}

/// Logs in and sends initial presence (so that messages to the bare JID are delivered).
async fn online(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login(user, "pw", resource).await;
    c.send("<presence/>").await;
    let _ = c.drain().await;
    c
}

/// Creates `node` at `service` with a configuration (none: the defaults); asserts success.
async fn create(c: &mut Client, service: &str, node: &str, config: &[(&str, &str)]) {
    let configure = if config.is_empty() {
        String::new()
    } else {
        format!("<configure>{}</configure>", form(NODE_CONFIG, config))
    };
    let r = ask(
        c,
        &ps(
            "set",
            Some(service),
            &format!("<create node='{node}'/>{configure}"),
        ),
    )
    .await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some(service), "{r}");
}

/// Subscribes `jid` to `node`; returns the `<subscription/>` of the result.
async fn subscribe(c: &mut Client, service: &str, node: &str, jid: &str) -> Element {
    let r = ask(
        c,
        &ps(
            "set",
            Some(service),
            &format!("<subscribe node='{node}' jid='{jid}'/>"),
        ),
    )
    .await;
    assert_result(&r);
    let sub = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("subscription", PS))
        .unwrap_or_else(|| panic!("no <subscription/> in {r}"))
        .clone();
    assert_eq!(sub.attr("node"), Some(node), "{r}");
    assert_eq!(sub.attr("jid"), Some(jid), "{r}");
    assert!(sub.attr("subid").is_some_and(|s| !s.is_empty()), "{r}");
    sub
}

fn unsubscribe_xml(service: &str, node: &str, jid: &str) -> String {
    ps(
        "set",
        Some(service),
        &format!("<unsubscribe node='{node}' jid='{jid}'/>"),
    )
}

/// `(jid, value)` of an owner `<affiliations/>` or `<subscriptions/>` result.
fn owner_list(r: &Element, list: &str, attr: &str) -> Vec<(String, String)> {
    assert_result(r);
    let mut v: Vec<(String, String)> = r
        .get_child("pubsub", PS_OWNER)
        .and_then(|p| p.get_child(list, PS_OWNER))
        .unwrap_or_else(|| panic!("no <{list}/> in {r}"))
        .children()
        .map(|e| {
            (
                e.attr("jid").unwrap_or_default().to_string(),
                e.attr(attr).unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn affiliations(c: &mut Client, node: &str) -> Vec<(String, String)> {
    let r = ask(
        c,
        &owner("get", Some(SVC), &format!("<affiliations node='{node}'/>")),
    )
    .await;
    owner_list(&r, "affiliations", "affiliation")
}

async fn subscriptions(c: &mut Client, node: &str) -> Vec<(String, String)> {
    let r = ask(
        c,
        &owner("get", Some(SVC), &format!("<subscriptions node='{node}'/>")),
    )
    .await;
    owner_list(&r, "subscriptions", "subscription")
}

fn set_affiliation_xml(node: &str, jid: &str, affiliation: &str) -> String {
    owner(
        "set",
        Some(SVC),
        &format!(
            "<affiliations node='{node}'><affiliation jid='{jid}' affiliation='{affiliation}'/></affiliations>"
        ),
    )
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// §5.1, §5.2: the host lists the service; the service says what it is and does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_listed_and_describes_itself() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    let items = disco_items(&mut a, HOST, None).await;
    assert!(
        items
            .iter()
            .any(|(jid, node, _)| jid == SVC && node.is_empty()),
        "{items:?}"
    );
    let r = disco_info(&mut a, SVC, None).await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some(SVC), "{r}");
    assert_eq!(identities(&r), [("pubsub".into(), "service".into())], "{r}");
    let f = features(&r);
    for want in [
        "",
        "#create-nodes",
        "#instant-nodes",
        "#publish",
        "#subscribe",
        "#retrieve-items",
        "#access-authorize",
        "#access-whitelist",
        "#manage-affiliations",
        "#purge-nodes",
        "#delete-nodes",
    ] {
        assert!(
            f.contains(&format!("{PS}{want}")),
            "{PS}{want} missing: {r}"
        );
    }
    assert!(f.contains(&DISCO_INFO.to_string()), "{r}");
    // No nodes yet.
    assert!(disco_items(&mut a, SVC, None).await.is_empty());
    s.stop().await;
}

/// §8.1: a local account creates named nodes (empty result; again `conflict`) and instant
/// ones (the name comes back), and owns them; with `node_creation = "admins"` only the admins
/// may create (§8.1.3.1 `forbidden`), and an admin owns every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_creation_and_its_policy() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    let r = ask(
        &mut a,
        &ps("set", Some(SVC), &format!("<create node='{NEWS}'/>")),
    )
    .await;
    assert_result(&r);
    assert!(r.get_child("pubsub", PS).is_none(), "{r}");
    let r = ask(
        &mut a,
        &ps("set", Some(SVC), &format!("<create node='{NEWS}'/>")),
    )
    .await;
    assert_error(&r, "conflict", None);
    let r = ask(&mut a, &ps("set", Some(SVC), "<create/>")).await;
    assert_result(&r);
    let instant = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("create", PS))
        .and_then(|c| c.attr("node"))
        .unwrap_or_else(|| panic!("no instant node in {r}"))
        .to_string();
    assert!(!instant.is_empty() && instant != NEWS);
    assert_eq!(affiliations(&mut a, NEWS).await, pairs(&[(ALICE, "owner")]));
    let mut nodes: Vec<String> = disco_items(&mut a, SVC, None)
        .await
        .into_iter()
        .map(|(jid, node, _)| {
            assert_eq!(jid, SVC);
            node
        })
        .collect();
    nodes.sort();
    let mut want = vec![NEWS.to_string(), instant];
    want.sort();
    assert_eq!(nodes, want);
    // The service's defaults (XEP-0060 §8.1.3 leaves them to the service): open, no last
    // item; §8.3 shows them.
    let x = get_config(&mut a, Some(SVC), NEWS).await;
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("open")
    );
    assert_eq!(
        form_value(&x, "pubsub#send_last_published_item").as_deref(),
        Some("never")
    );
    let r = ask(&mut a, &owner("get", Some(SVC), "<default/>")).await;
    assert_result(&r);
    let d = r
        .get_child("pubsub", PS_OWNER)
        .and_then(|p| p.get_child("default", PS_OWNER))
        .and_then(|d| d.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no default form in {r}"));
    assert_eq!(
        form_value(d, "pubsub#access_model").as_deref(),
        Some("open")
    );
    s.stop().await;

    let mut config = test_config();
    config
        .set_section(
            "pubsub",
            "node_creation = \"admins\"\nadmins = [\"admin@localhost\"]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let s = server_with(config).await;
    let mut a = s.login("alice", "pw", "a1").await;
    let mut admin = s.login("admin", "pw", "x").await;
    for inner in [format!("<create node='{NEWS}'/>"), "<create/>".to_string()] {
        let r = ask(&mut a, &ps("set", Some(SVC), &inner)).await;
        assert_error(&r, "forbidden", None);
    }
    // Nor does publishing create one.
    let r = ask(
        &mut a,
        &publish_xml(Some(SVC), NEWS, None, &entry("x"), &[]),
    )
    .await;
    assert_error(&r, "item-not-found", None);
    assert!(disco_items(&mut a, SVC, None).await.is_empty());
    create(&mut admin, SVC, NEWS, &[]).await;
    // The admin makes alice an owner of the node; the admin may still manage it.
    assert_result(&ask(&mut admin, &set_affiliation_xml(NEWS, ALICE, "owner")).await);
    assert_result(&configure(&mut a, Some(SVC), NEWS, &[("pubsub#title", "Musings")]).await);
    let x = get_config(&mut admin, Some(SVC), NEWS).await;
    assert_eq!(form_value(&x, "pubsub#title").as_deref(), Some("Musings"));
    s.stop().await;
}

/// §4.5 on a service node: the `presence` and `roster` models follow the node owners'
/// rosters; §16.4.3 `publish_model = subscribers` lets subscribers publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_nodes_follow_their_owners_rosters() {
    const ROSTER_NODE: &str = "friends_only";
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    subscribe_to(&mut b, &mut a).await;
    create(
        &mut a,
        SVC,
        NEWS,
        &[
            ("pubsub#access_model", "presence"),
            ("pubsub#publish_model", "subscribers"),
        ],
    )
    .await;
    create(
        &mut a,
        SVC,
        ROSTER_NODE,
        &[
            ("pubsub#access_model", "roster"),
            ("pubsub#roster_groups_allowed", "Friends"),
        ],
    )
    .await;
    publish(&mut a, Some(SVC), NEWS, Some("p1"), "for contacts").await;

    // bob may see alice's presence: he may read and subscribe; carol may not.
    assert_eq!(item_ids(&mut b, Some(SVC), NEWS).await, ["p1"]);
    let r = ask(&mut c, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    let r = ask(
        &mut c,
        &ps(
            "set",
            Some(SVC),
            &format!("<subscribe node='{NEWS}' jid='{CAROL}'/>"),
        ),
    )
    .await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    // Subscribers may publish; before subscribing bob may not.
    let r = ask(
        &mut b,
        &publish_xml(Some(SVC), NEWS, Some("b1"), &entry("bob"), &[]),
    )
    .await;
    assert_error(&r, "forbidden", None);
    subscribe(&mut b, SVC, NEWS, BOB).await;
    publish(&mut b, Some(SVC), NEWS, Some("b1"), "bob").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "b1", "bob");

    // The roster model: bob is in no group yet.
    let r = ask(&mut b, &items_xml(Some(SVC), ROSTER_NODE)).await;
    assert_error(&r, "not-authorized", Some("not-in-roster-group"));
    let r = ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:roster'><item jid='{BOB}'><group>Friends</group></item></query></iq>"
        ),
    )
    .await;
    assert_result(&r);
    assert!(item_ids(&mut b, Some(SVC), ROSTER_NODE).await.is_empty());
    s.stop().await;
}

/// §7.1, §6.1, §6.2: the owner publishes; subscribers get headline notifications from the
/// service (`pubsub#notification_type` decides the type), at the JID they subscribed (a bare
/// JID reaches every available resource); a non-publisher is `forbidden`; an unsubscribed
/// entity gets nothing; unsubscribing twice is `unexpected-request` + `not-subscribed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_and_notifications() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b1 = online(&s, "bob", "b1").await;
    let mut b2 = online(&s, "bob", "b2").await;
    let mut c1 = online(&s, "carol", "c1").await;
    let mut c2 = online(&s, "carol", "c2").await;
    let mut d = online(&s, "dave", "d1").await;
    create(&mut a, SVC, NEWS, &[]).await;

    // bob's full JID, carol's bare JID.
    let sub = subscribe(&mut b1, SVC, NEWS, "bob@localhost/b1").await;
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    subscribe(&mut c1, SVC, NEWS, CAROL).await;
    // Somebody else's JID is not the requester's to subscribe (§6.1.3.1).
    let r = ask(
        &mut d,
        &ps(
            "set",
            Some(SVC),
            &format!("<subscribe node='{NEWS}' jid='{BOB}'/>"),
        ),
    )
    .await;
    assert_error(&r, "bad-request", Some("invalid-jid"));
    // No such node.
    let r = ask(
        &mut d,
        &ps(
            "set",
            Some(SVC),
            &format!("<subscribe node='nope' jid='{DAVE}'/>"),
        ),
    )
    .await;
    assert_error(&r, "item-not-found", None);
    settle(&mut [&mut a, &mut b1, &mut b2, &mut c1, &mut c2, &mut d]).await;

    let id = publish(&mut a, Some(SVC), NEWS, None, "Hamlet's soliloquy").await;
    for c in [&mut b1, &mut c1, &mut c2] {
        let m = wait_event(c, SVC, NEWS).await;
        assert_eq!(m.attr("type"), Some("headline"), "{m}");
        assert_item_event(&m, &id, "Hamlet's soliloquy");
    }
    assert_quiet(&mut b2, "bob subscribed b1 only").await;
    assert_quiet(&mut d, "is not subscribed").await;
    assert_quiet(&mut a, "is not subscribed").await;
    assert_eq!(
        item_ids(&mut d, Some(SVC), NEWS).await,
        std::slice::from_ref(&id)
    );

    // §7.1.3.1: no publisher affiliation.
    let r = ask(
        &mut d,
        &publish_xml(Some(SVC), NEWS, None, &entry("spam"), &[]),
    )
    .await;
    assert_error(&r, "forbidden", None);
    assert_eq!(error_type(&r).as_deref(), Some("auth"), "{r}");
    assert_quiet(&mut b1, "nothing was published").await;
    assert_eq!(
        item_ids(&mut d, Some(SVC), NEWS).await,
        std::slice::from_ref(&id)
    );

    // notification_type normal.
    assert_result(
        &configure(
            &mut a,
            Some(SVC),
            NEWS,
            &[("pubsub#notification_type", "normal")],
        )
        .await,
    );
    publish(&mut a, Some(SVC), NEWS, Some("n2"), "normal").await;
    let m = wait_event(&mut b1, SVC, NEWS).await;
    assert_eq!(m.attr("type"), Some("normal"), "{m}");
    assert_item_event(&m, "n2", "normal");
    settle(&mut [&mut c1, &mut c2]).await;

    // §6.2
    let unsubscribe = unsubscribe_xml(SVC, NEWS, "bob@localhost/b1");
    assert_result(&ask(&mut b1, &unsubscribe).await);
    let r = ask(&mut b1, &unsubscribe).await;
    assert_error(&r, "unexpected-request", Some("not-subscribed"));
    // Nor may bob end carol's subscription (§6.2.3.3).
    let r = ask(&mut b1, &unsubscribe_xml(SVC, NEWS, CAROL)).await;
    assert_error(&r, "forbidden", None);
    publish(&mut a, Some(SVC), NEWS, Some("n3"), "after").await;
    assert_quiet(&mut b1, "unsubscribed").await;
    let m = wait_event(&mut c1, SVC, NEWS).await;
    assert_item_event(&m, "n3", "after");
    s.stop().await;
}

/// §6.1.7 / §16.4.3 `send_last_published_item`: `never` (the service default) sends nothing on
/// subscription; `on_sub` sends the newest item right after the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_item_on_subscription() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create(&mut a, SVC, NEWS, &[]).await;
    publish(&mut a, Some(SVC), NEWS, Some("old"), "old").await;
    publish(&mut a, Some(SVC), NEWS, Some("current"), "current").await;
    subscribe(&mut b, SVC, NEWS, "bob@localhost/b1").await;
    assert_quiet(&mut b, "send_last_published_item is never").await;
    assert_result(&ask(&mut b, &unsubscribe_xml(SVC, NEWS, "bob@localhost/b1")).await);

    assert_result(
        &configure(
            &mut a,
            Some(SVC),
            NEWS,
            &[("pubsub#send_last_published_item", "on_sub")],
        )
        .await,
    );
    subscribe(&mut b, SVC, NEWS, "bob@localhost/b1").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "current", "current");
    assert_quiet(&mut b, "gets the newest item only").await;
    s.stop().await;
}

/// §6.3 subscription options (`pubsub#deliver` off: no notifications), and the node's
/// delivery settings: `deliver_payloads` off notifies the item id only, `persist_items` off
/// keeps nothing to retrieve (§6.5.9.4 `feature-not-implemented` + `<unsupported
/// feature='persistent-items'/>`) but still notifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_and_delivery_settings() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create(&mut a, SVC, NEWS, &[]).await;
    subscribe(&mut b, SVC, NEWS, BOB).await;
    let options_get = ps(
        "get",
        Some(SVC),
        &format!("<options node='{NEWS}' jid='{BOB}'/>"),
    );
    let deliver = |r: &Element| {
        assert_result(r);
        let x = r
            .get_child("pubsub", PS)
            .and_then(|p| p.get_child("options", PS))
            .and_then(|o| o.get_child("x", XDATA))
            .unwrap_or_else(|| panic!("no options form in {r}"));
        assert_eq!(
            form_value(x, "FORM_TYPE").as_deref(),
            Some("http://jabber.org/protocol/pubsub#subscribe_options"),
            "{r}"
        );
        form_value(x, "pubsub#deliver")
    };
    assert_eq!(
        deliver(&ask(&mut b, &options_get).await).as_deref(),
        Some("1")
    );
    let options_set = |fields: &[(&str, &str)]| {
        ps(
            "set",
            Some(SVC),
            &format!(
                "<options node='{NEWS}' jid='{BOB}'>{}</options>",
                form(
                    "http://jabber.org/protocol/pubsub#subscribe_options",
                    fields
                )
            ),
        )
    };
    assert_result(&ask(&mut b, &options_set(&[("pubsub#deliver", "0")])).await);
    assert_eq!(
        deliver(&ask(&mut b, &options_get).await).as_deref(),
        Some("0")
    );
    publish(&mut a, Some(SVC), NEWS, Some("quiet"), "not delivered").await;
    assert_quiet(&mut b, "turned delivery off").await;
    assert_result(&ask(&mut b, &options_set(&[("pubsub#deliver", "true")])).await);
    publish(&mut a, Some(SVC), NEWS, Some("loud"), "delivered").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "loud", "delivered");
    // §6.3 errors: unknown options, someone else's options, no subscription.
    let r = ask(&mut b, &options_set(&[("pubsub#digest", "1")])).await;
    assert_error(&r, "bad-request", Some("invalid-options"));
    let r = ask(&mut c, &options_get).await;
    assert_error(&r, "forbidden", None);
    let r = ask(
        &mut c,
        &ps(
            "get",
            Some(SVC),
            &format!("<options node='{NEWS}' jid='{CAROL}'/>"),
        ),
    )
    .await;
    assert_error(&r, "unexpected-request", Some("not-subscribed"));

    // deliver_payloads off: the id only.
    assert_result(&configure(&mut a, Some(SVC), NEWS, &[("pubsub#deliver_payloads", "0")]).await);
    publish(&mut a, Some(SVC), NEWS, Some("bare"), "payload kept back").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    let items = event_items(&m);
    assert_eq!(items.len(), 1, "{m}");
    assert_eq!(items[0].attr("id"), Some("bare"), "{m}");
    assert_eq!(items[0].children().count(), 0, "{m}");
    // The item itself has its payload.
    let stored = result_items(&ask(&mut b, &items_xml(Some(SVC), NEWS)).await);
    let bare = stored
        .iter()
        .find(|i| i.attr("id") == Some("bare"))
        .unwrap_or_else(|| panic!("{stored:?}"));
    assert_eq!(payload_text(bare).as_deref(), Some("payload kept back"));

    // persist_items off: a transient node.
    assert_result(
        &configure(
            &mut a,
            Some(SVC),
            NEWS,
            &[
                ("pubsub#deliver_payloads", "1"),
                ("pubsub#persist_items", "0"),
            ],
        )
        .await,
    );
    publish(&mut a, Some(SVC), NEWS, Some("fleeting"), "fleeting").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "fleeting", "fleeting");
    let r = ask(&mut b, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "feature-not-implemented", Some("unsupported"));
    let feature = r
        .get_child("error", "jabber:client")
        .and_then(|e| e.get_child("unsupported", PS_ERRORS))
        .and_then(|u| u.attr("feature"));
    assert_eq!(feature, Some("persistent-items"), "{r}");
    s.stop().await;
}

/// §7.2 retract (notified when `notify` is set, §7.2.2.1; a non-publisher is `forbidden`),
/// §8.5 purge, §8.4 delete with `<redirect/>`: each notified to the subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retract_purge_and_delete_notify_subscribers() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create(&mut a, SVC, NEWS, &[]).await;
    subscribe(&mut b, SVC, NEWS, BOB).await;
    for id in ["one", "two", "three"] {
        publish(&mut a, Some(SVC), NEWS, Some(id), id).await;
    }
    settle(&mut [&mut a, &mut b, &mut c]).await;

    let retract = |id: &str| {
        ps(
            "set",
            Some(SVC),
            &format!("<retract node='{NEWS}' notify='true'><item id='{id}'/></retract>"),
        )
    };
    let r = ask(&mut c, &retract("one")).await;
    assert_error(&r, "forbidden", None);
    let r = ask(&mut a, &retract("nope")).await;
    assert_error(&r, "item-not-found", None);
    assert_result(&ask(&mut a, &retract("one")).await);
    let m = b
        .wait_for(|m| is_event(m, SVC, "items", NEWS))
        .await
        .unwrap_or_else(|e| panic!("no retraction: {e:#}"));
    let retracted = event_items(&m);
    assert_eq!(retracted.len(), 1, "{m}");
    assert!(retracted[0].is("retract", PS_EVENT), "{m}");
    assert_eq!(retracted[0].attr("id"), Some("one"), "{m}");
    assert_eq!(item_ids(&mut b, Some(SVC), NEWS).await, ["two", "three"]);

    // §8.5
    let r = ask(
        &mut c,
        &owner("set", Some(SVC), &format!("<purge node='{NEWS}'/>")),
    )
    .await;
    assert_error(&r, "forbidden", None);
    assert_result(
        &ask(
            &mut a,
            &owner("set", Some(SVC), &format!("<purge node='{NEWS}'/>")),
        )
        .await,
    );
    b.wait_for(|m| is_event(m, SVC, "purge", NEWS))
        .await
        .unwrap_or_else(|e| panic!("no purge notification: {e:#}"));
    assert!(item_ids(&mut b, Some(SVC), NEWS).await.is_empty());

    // §8.4
    let r = ask(
        &mut c,
        &owner("set", Some(SVC), &format!("<delete node='{NEWS}'/>")),
    )
    .await;
    assert_error(&r, "forbidden", None);
    let uri = "xmpp:pubsub.localhost?;node=elsewhere";
    assert_result(
        &ask(
            &mut a,
            &owner(
                "set",
                Some(SVC),
                &format!("<delete node='{NEWS}'><redirect uri='{uri}'/></delete>"),
            ),
        )
        .await,
    );
    let m = b
        .wait_for(|m| is_event(m, SVC, "delete", NEWS))
        .await
        .unwrap_or_else(|e| panic!("no delete notification: {e:#}"));
    let redirect = event_child(&m)
        .and_then(|d| d.get_child("redirect", PS_EVENT))
        .and_then(|r| r.attr("uri"));
    assert_eq!(redirect, Some(uri), "{m}");
    assert_quiet(&mut c, "is not subscribed").await;
    let r = ask(&mut b, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "item-not-found", None);
    assert!(disco_items(&mut b, SVC, None).await.is_empty());
    s.stop().await;
}

/// §8.9 affiliations and §8.8 subscriptions managed by the owner: a publisher may publish
/// (and its items reach the subscribers); an outcast loses its subscription and access; the
/// owner subscribes and unsubscribes others; the last owner cannot leave (§8.9.2.4); none of
/// it is open to non-owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_manage_affiliations_and_subscriptions() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    let mut d = online(&s, "dave", "d1").await;
    create(&mut a, SVC, NEWS, &[]).await;
    assert_eq!(affiliations(&mut a, NEWS).await, pairs(&[(ALICE, "owner")]));

    // A publisher.
    let r = ask(
        &mut b,
        &publish_xml(Some(SVC), NEWS, None, &entry("x"), &[]),
    )
    .await;
    assert_error(&r, "forbidden", None);
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, BOB, "publisher")).await);
    assert_eq!(
        affiliations(&mut a, NEWS).await,
        pairs(&[(ALICE, "owner"), (BOB, "publisher")])
    );
    subscribe(&mut c, SVC, NEWS, "carol@localhost/c1").await;
    settle(&mut [&mut a, &mut b, &mut c]).await;
    publish(&mut b, Some(SVC), NEWS, Some("by-bob"), "bob's news").await;
    let m = wait_event(&mut c, SVC, NEWS).await;
    assert_item_event(&m, "by-bob", "bob's news");
    // The publisher is no owner.
    for (kind, inner) in [
        ("get", format!("<affiliations node='{NEWS}'/>")),
        ("get", format!("<subscriptions node='{NEWS}'/>")),
        ("get", format!("<configure node='{NEWS}'/>")),
    ] {
        let r = ask(&mut b, &owner(kind, Some(SVC), &inner)).await;
        assert_error(&r, "forbidden", None);
    }
    let r = ask(&mut b, &set_affiliation_xml(NEWS, DAVE, "owner")).await;
    assert_error(&r, "forbidden", None);

    // An outcast: its subscription ends, it may neither read nor subscribe.
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[("carol@localhost/c1", "subscribed")])
    );
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, CAROL, "outcast")).await);
    assert!(subscriptions(&mut a, NEWS).await.is_empty());
    let r = ask(&mut c, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "forbidden", None);
    let r = ask(
        &mut c,
        &ps(
            "set",
            Some(SVC),
            &format!("<subscribe node='{NEWS}' jid='{CAROL}'/>"),
        ),
    )
    .await;
    assert_error(&r, "forbidden", None);
    publish(&mut a, Some(SVC), NEWS, Some("n2"), "not for carol").await;
    assert_quiet(&mut c, "is an outcast").await;

    // §8.8.2: the owner subscribes dave, then ends it.
    let set_sub = |state: &str| {
        owner(
            "set",
            Some(SVC),
            &format!(
                "<subscriptions node='{NEWS}'><subscription jid='{DAVE}' subscription='{state}'/></subscriptions>"
            ),
        )
    };
    assert_result(&ask(&mut a, &set_sub("subscribed")).await);
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[(DAVE, "subscribed")])
    );
    publish(&mut a, Some(SVC), NEWS, Some("n3"), "for dave").await;
    let m = wait_event(&mut d, SVC, NEWS).await;
    assert_item_event(&m, "n3", "for dave");
    assert_result(&ask(&mut a, &set_sub("none")).await);
    assert!(subscriptions(&mut a, NEWS).await.is_empty());
    publish(&mut a, Some(SVC), NEWS, Some("n4"), "not for dave").await;
    assert_quiet(&mut d, "was unsubscribed by the owner").await;
    let r = ask(&mut b, &set_sub("subscribed")).await;
    assert_error(&r, "forbidden", None);

    // §8.9.2.4: the only owner stays.
    let r = ask(&mut a, &set_affiliation_xml(NEWS, ALICE, "none")).await;
    assert_error(&r, "not-acceptable", None);
    assert_eq!(
        affiliations(&mut a, NEWS).await,
        pairs(&[(ALICE, "owner"), (BOB, "publisher"), (CAROL, "outcast")])
    );
    // Back to none: carol may subscribe again.
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, CAROL, "none")).await);
    subscribe(&mut c, SVC, NEWS, CAROL).await;
    s.stop().await;
}

/// §4.5 whitelist: only affiliated entities may subscribe, read or see the node
/// (`not-allowed` + `closed-node`); a member may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_nodes_admit_members_only() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create(&mut a, SVC, NEWS, &[("pubsub#access_model", "whitelist")]).await;
    publish(&mut a, Some(SVC), NEWS, Some("w1"), "members only").await;
    let subscribe_xml = |jid: &str| {
        ps(
            "set",
            Some(SVC),
            &format!("<subscribe node='{NEWS}' jid='{jid}'/>"),
        )
    };
    for cl in [&mut b, &mut c] {
        let jid = cl.bare_jid();
        let r = ask(cl, &subscribe_xml(&jid)).await;
        assert_error(&r, "not-allowed", Some("closed-node"));
        let r = ask(cl, &items_xml(Some(SVC), NEWS)).await;
        assert_error(&r, "not-allowed", Some("closed-node"));
        assert!(disco_items(cl, SVC, None).await.is_empty());
        let r = disco_info(cl, SVC, Some(NEWS)).await;
        assert_error(&r, "item-not-found", None);
    }
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, BOB, "member")).await);
    assert_eq!(item_ids(&mut b, Some(SVC), NEWS).await, ["w1"]);
    subscribe(&mut b, SVC, NEWS, BOB).await;
    assert_eq!(
        disco_items(&mut b, SVC, None).await,
        [(SVC.to_string(), NEWS.to_string(), String::new())]
    );
    // §5.4 meta-data for a member.
    let r = disco_info(&mut b, SVC, Some(NEWS)).await;
    assert_result(&r);
    assert_eq!(identities(&r), [("pubsub".into(), "leaf".into())], "{r}");
    let x = meta_data(&r);
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("whitelist")
    );
    assert_eq!(
        form_values(&x, "pubsub#owner"),
        Some(vec![ALICE.to_string()])
    );
    settle(&mut [&mut b, &mut c]).await;
    publish(&mut a, Some(SVC), NEWS, Some("w2"), "for bob").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "w2", "for bob");
    assert_quiet(&mut c, "is not on the whitelist").await;

    // Off the whitelist: no more notifications.
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, BOB, "none")).await);
    publish(&mut a, Some(SVC), NEWS, Some("w3"), "not for bob").await;
    assert_quiet(&mut b, "is off the whitelist").await;

    // §8.4.2: deleting the node tells every subscriber, a member's subscription included
    // (its affiliation goes with the node).
    assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, BOB, "member")).await);
    assert_result(
        &ask(
            &mut a,
            &owner("set", Some(SVC), &format!("<delete node='{NEWS}'/>")),
        )
        .await,
    );
    b.wait_for(|m| is_event(m, SVC, "delete", NEWS))
        .await
        .unwrap_or_else(|e| panic!("no delete notification: {e:#}"));
    assert_quiet(&mut c, "was never subscribed").await;
    s.stop().await;
}

/// §6.1.2 / §8.6 authorize: a subscription waits (`pending`) for an owner, who gets the
/// authorization form; the owner's approval (`pubsub#allow` true) subscribes and tells the
/// subscriber, a denial removes the request and tells it too; a non-owner's answer is
/// ignored; a pending subscriber gets no notifications and may not read items (§6.5.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_nodes_ask_the_owner() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create(&mut a, SVC, NEWS, &[("pubsub#access_model", "authorize")]).await;
    publish(&mut a, Some(SVC), NEWS, Some("a1"), "first").await;

    let sub = subscribe(&mut b, SVC, NEWS, "bob@localhost/b1").await;
    assert_eq!(sub.attr("subscription"), Some("pending"));
    let request = a
        .wait_for(|m| m.name() == "message" && m.get_child("x", XDATA).is_some())
        .await
        .unwrap_or_else(|e| panic!("no authorization request: {e:#}"));
    assert_eq!(request.attr("from"), Some(SVC), "{request}");
    let x = request
        .get_child("x", XDATA)
        .unwrap_or_else(|| panic!("{request}"));
    assert_eq!(x.attr("type"), Some("form"), "{request}");
    assert_eq!(
        form_value(x, "FORM_TYPE").as_deref(),
        Some(SUBSCRIBE_AUTH),
        "{request}"
    );
    assert_eq!(form_value(x, "pubsub#node").as_deref(), Some(NEWS));
    assert_eq!(
        form_value(x, "pubsub#subscriber_jid").as_deref(),
        Some("bob@localhost/b1")
    );
    assert!(form_value(x, "pubsub#allow").is_some(), "{request}");
    let subid = form_value(x, "pubsub#subid").unwrap_or_default();
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[("bob@localhost/b1", "pending")])
    );

    // Pending: nothing yet.
    let r = ask(&mut b, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "not-authorized", Some("not-subscribed"));
    publish(&mut a, Some(SVC), NEWS, Some("a2"), "second").await;
    assert_quiet(&mut b, "is pending").await;

    let answer = |jid: &str, allow: &str| {
        format!(
            "<message to='{SVC}' id='approve-{allow}'>{}</message>",
            form(
                SUBSCRIBE_AUTH,
                &[
                    ("pubsub#subid", subid.as_str()),
                    ("pubsub#node", NEWS),
                    ("pubsub#subscriber_jid", jid),
                    ("pubsub#allow", allow),
                ]
            )
        )
    };
    // carol is no owner: her approval does nothing.
    c.send(&answer("bob@localhost/b1", "true")).await;
    c.sync().await;
    assert_quiet(&mut b, "was approved by a non-owner only").await;
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[("bob@localhost/b1", "pending")])
    );

    // §8.6: the owner approves ("true", as in the XEP's example).
    a.send(&answer("bob@localhost/b1", "true")).await;
    let m = b
        .wait_for(|m| {
            m.attr("from") == Some(SVC)
                && event_child(m).is_some_and(|e| e.name() == "subscription")
        })
        .await
        .unwrap_or_else(|e| panic!("no approval notification: {e:#}"));
    let e = event_child(&m).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(e.attr("node"), Some(NEWS), "{m}");
    assert_eq!(e.attr("subscription"), Some("subscribed"), "{m}");
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[("bob@localhost/b1", "subscribed")])
    );
    assert_eq!(item_ids(&mut b, Some(SVC), NEWS).await, ["a1", "a2"]);
    settle(&mut [&mut b]).await;
    publish(&mut a, Some(SVC), NEWS, Some("a3"), "third").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "a3", "third");

    // A denial.
    let sub = subscribe(&mut c, SVC, NEWS, CAROL).await;
    assert_eq!(sub.attr("subscription"), Some("pending"));
    let request = a
        .wait_for(|m| m.name() == "message" && m.get_child("x", XDATA).is_some())
        .await
        .unwrap_or_else(|e| panic!("no authorization request: {e:#}"));
    let x = request
        .get_child("x", XDATA)
        .unwrap_or_else(|| panic!("{request}"));
    assert_eq!(
        form_value(x, "pubsub#subscriber_jid").as_deref(),
        Some(CAROL)
    );
    a.send(&answer(CAROL, "false")).await;
    let m = c
        .wait_for(|m| {
            m.attr("from") == Some(SVC)
                && event_child(m).is_some_and(|e| e.name() == "subscription")
        })
        .await
        .unwrap_or_else(|e| panic!("no denial notification: {e:#}"));
    assert_eq!(
        event_child(&m).and_then(|e| e.attr("subscription")),
        Some("none"),
        "{m}"
    );
    assert_eq!(
        subscriptions(&mut a, NEWS).await,
        pairs(&[("bob@localhost/b1", "subscribed")])
    );
    publish(&mut a, Some(SVC), NEWS, Some("a4"), "fourth").await;
    assert_quiet(&mut c, "was denied").await;
    s.stop().await;
}

/// `[services."pubsub.localhost"] enabled = false` switches the default service off: the host
/// no longer lists it and the domain is as unserved as any other (the router's answer for a
/// domain it does not serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_service_is_gone() {
    let mut config = test_config();
    config.services.insert(
        SVC.to_string(),
        canto_core::config::ServiceConfig {
            enabled: false,
            ..Default::default()
        },
    );
    let s = server_with(config).await;
    let mut a = s.login("alice", "pw", "a1").await;
    let items = disco_items(&mut a, HOST, None).await;
    assert!(!items.iter().any(|(jid, _, _)| jid == SVC), "{items:?}");
    let unserved = ask(
        &mut a,
        &ps(
            "set",
            Some("nothing.localhost"),
            &format!("<create node='{NEWS}'/>"),
        ),
    )
    .await;
    assert_eq!(unserved.attr("type"), Some("error"), "{unserved}");
    let r = ask(
        &mut a,
        &ps("set", Some(SVC), &format!("<create node='{NEWS}'/>")),
    )
    .await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(error_condition(&r), error_condition(&unserved), "{r}");
    assert_eq!(error_type(&r), error_type(&unserved), "{r}");
    let r = disco_info(&mut a, SVC, None).await;
    assert_eq!(error_condition(&r), error_condition(&unserved), "{r}");
    // The example.test host keeps its own.
    let r = disco_info(&mut a, "pubsub.example.test", None).await;
    assert_result(&r);
    s.stop().await;
}

/// `[services."news.localhost"] kind = "pubsub"`: one more service, listed on its parent
/// host, with nodes of its own (not shared with `pubsub.localhost`), notifying from its own
/// domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_service_has_its_own_nodes() {
    const EXTRA: &str = "news.localhost";
    let mut config = test_config();
    config.services.insert(
        EXTRA.to_string(),
        canto_core::config::ServiceConfig {
            kind: Some("pubsub".into()),
            name: Some("News".into()),
            ..Default::default()
        },
    );
    let s = server_with(config).await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let listed: Vec<String> = disco_items(&mut a, HOST, None)
        .await
        .into_iter()
        .map(|(jid, _, _)| jid)
        .collect();
    assert!(listed.contains(&EXTRA.to_string()), "{listed:?}");
    assert!(listed.contains(&SVC.to_string()), "{listed:?}");
    let r = disco_info(&mut a, EXTRA, None).await;
    assert_eq!(identities(&r), [("pubsub".into(), "service".into())], "{r}");

    create(&mut a, EXTRA, NEWS, &[]).await;
    let r = ask(&mut b, &items_xml(Some(SVC), NEWS)).await;
    assert_error(&r, "item-not-found", None);
    assert!(disco_items(&mut b, SVC, None).await.is_empty());
    // The same name on the default service is another node.
    create(&mut a, SVC, NEWS, &[]).await;
    subscribe(&mut b, EXTRA, NEWS, BOB).await;
    settle(&mut [&mut b]).await;
    publish(&mut a, Some(SVC), NEWS, Some("elsewhere"), "elsewhere").await;
    assert_quiet(&mut b, "subscribed at news.localhost only").await;
    publish(&mut a, Some(EXTRA), NEWS, Some("here"), "here").await;
    let m = wait_event(&mut b, EXTRA, NEWS).await;
    assert_item_event(&m, "here", "here");
    assert_eq!(item_ids(&mut b, Some(EXTRA), NEWS).await, ["here"]);
    assert_eq!(item_ids(&mut b, Some(SVC), NEWS).await, ["elsewhere"]);
    s.stop().await;
}

/// With SQLite storage, a service's nodes, configuration, affiliations, subscriptions and
/// items outlive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_nodes_survive_a_restart_on_sqlite() {
    let db = ScratchDir::new("pubsub-sqlite");
    let path = db.path("canto.sqlite");
    {
        let s = sqlite_server(&path).await;
        for u in ["alice", "bob", "carol"] {
            s.add_user(u, "pw").await;
        }
        let mut a = s.login("alice", "pw", "a1").await;
        let mut b = s.login("bob", "pw", "b1").await;
        create(
            &mut a,
            SVC,
            NEWS,
            &[("pubsub#max_items", "5"), ("pubsub#title", "Musings")],
        )
        .await;
        for i in 1..=3 {
            publish(
                &mut a,
                Some(SVC),
                NEWS,
                Some(&format!("i{i}")),
                &format!("item {i}"),
            )
            .await;
        }
        assert_result(&ask(&mut a, &set_affiliation_xml(NEWS, CAROL, "publisher")).await);
        subscribe(&mut b, SVC, NEWS, BOB).await;
        drop((a, b));
        s.stop().await;
    }
    let s = sqlite_server(&path).await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    let items = result_items(&ask(&mut b, &items_xml(Some(SVC), NEWS)).await);
    assert_eq!(ids(&items), ["i1", "i2", "i3"]);
    assert_eq!(payload_text(&items[2]).as_deref(), Some("item 3"));
    let x = get_config(&mut a, Some(SVC), NEWS).await;
    assert_eq!(form_value(&x, "pubsub#title").as_deref(), Some("Musings"));
    assert_eq!(form_value(&x, "pubsub#max_items").as_deref(), Some("5"));
    assert_eq!(
        affiliations(&mut a, NEWS).await,
        pairs(&[(ALICE, "owner"), (CAROL, "publisher")])
    );
    publish(&mut c, Some(SVC), NEWS, Some("i4"), "after restart").await;
    let m = wait_event(&mut b, SVC, NEWS).await;
    assert_item_event(&m, "i4", "after restart");
    s.stop().await;
}

/// A deleted account leaves nothing on the services: its node ownership and subscriptions go,
/// so an account created again under the name inherits neither (the nodes stay, owned by
/// whoever else owns them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_no_ownership_or_subscription() {
    let s = server().await;
    let mut a = online(&s, "alice", "a").await;
    let mut b = online(&s, "bob", "b").await;
    create(&mut a, SVC, NEWS, &[]).await;
    let r = ask(&mut a, &set_affiliation_xml(NEWS, BOB, "owner")).await;
    assert_result(&r);
    subscribe(&mut a, SVC, NEWS, &format!("{ALICE}/a")).await;
    subscribe(&mut a, SVC, NEWS, ALICE).await;
    assert_eq!(
        affiliations(&mut b, NEWS).await,
        pairs(&[(ALICE, "owner"), (BOB, "owner")])
    );
    let alice = canto_stanza::BareJid::new(ALICE).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.running
            .server
            .delete_account(&alice)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    s.wait_unbound("alice@localhost/a").await;
    drop(a);
    assert_eq!(affiliations(&mut b, NEWS).await, pairs(&[(BOB, "owner")]));
    assert_eq!(
        subscriptions(&mut b, NEWS).await,
        Vec::<(String, String)>::new()
    );
    // The new alice owns nothing.
    s.add_user("alice", "pw").await;
    let mut a = online(&s, "alice", "a").await;
    let r = ask(
        &mut a,
        &format!(
            "<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{PS}#owner'><configure node='{NEWS}'/></pubsub></iq>"
        ),
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    s.stop().await;
}
