//! XEP-0030 Service Discovery end to end: the server's own info and items, what it answers on an
//! account's behalf (and to whom, §8), unknown nodes, and features that follow the modules a
//! configuration enables.

use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

fn info_query(to: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    format!(
        "<iq type='get' id='{{id}}' to='{to}'><query xmlns='{}'{node}/></iq>",
        ns::DISCO_INFO
    )
}

fn items_query(to: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    format!(
        "<iq type='get' id='{{id}}' to='{to}'><query xmlns='{}'{node}/></iq>",
        ns::DISCO_ITEMS
    )
}

fn features(r: &Element) -> Vec<String> {
    r.get_child("query", ns::DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|c| c.is("feature", ns::DISCO_INFO))
                .filter_map(|c| c.attr("var").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn identities(r: &Element) -> Vec<(String, String)> {
    r.get_child("query", ns::DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|c| c.is("identity", ns::DISCO_INFO))
                .map(|c| {
                    (
                        c.attr("category").unwrap_or_default().to_string(),
                        c.attr("type").unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

/// The ordinary XMPP IM features of the default module set.
const DEFAULT_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "vcard-temp",
    "jabber:iq:private",
    "urn:xmpp:blocking",
    "urn:xmpp:carbons:2",
    "jabber:iq:last",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_and_items_with_the_default_modules() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a1").await;

    // XEP-0030 §3.1: the server's identity and the features of every enabled module, once each.
    let r = ask(&mut a, &info_query(HOST, None)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some(HOST), "{r}");
    assert!(
        identities(&r).contains(&("server".into(), "im".into())),
        "{r}"
    );
    let f = features(&r);
    for want in DEFAULT_FEATURES {
        assert!(f.iter().any(|x| x == want), "{want} missing: {r}");
    }
    let mut dedup = f.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), f.len(), "a feature is listed twice: {r}");
    // Modules that are off by default advertise nothing; the archive (on by default) is the
    // account's, not the server's (XEP-0313 §7).
    for absent in [
        "urn:xmpp:mam:2",
        "urn:xmpp:extdisco:2",
        "jabber:iq:register",
    ] {
        assert!(!f.iter().any(|x| x == absent), "{absent} listed: {r}");
    }
    // The same answer for the second virtual host.
    let r2 = ask(&mut a, &info_query(HOST2, None)).await;
    assert_eq!(features(&r2), f, "{r2}");

    // §4.1: the host's items are its hosted services: by default group chat (module muc),
    // the publish-subscribe service (module pubsub) and file upload (module upload).
    let r = ask(&mut a, &items_query(HOST, None)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let q = r
        .get_child("query", ns::DISCO_ITEMS)
        .unwrap_or_else(|| panic!("{r}"));
    let jids: Vec<&str> = q.children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(
        jids,
        vec![
            format!("conference.{HOST}"),
            format!("pubsub.{HOST}"),
            format!("upload.{HOST}")
        ],
        "{r}"
    );

    // §7: a node the server does not have is item-not-found, for info and for items.
    for xml in [
        info_query(HOST, Some("http://jabber.org/protocol/commands")),
        items_query(HOST, Some("no-such-node")),
    ] {
        let r = ask(&mut a, &xml).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("item-not-found"),
            "{r}"
        );
        assert_eq!(error_type(&r).as_deref(), Some("cancel"), "{r}");
    }

    // §3.1 on the account's bare JID: answered by the server, identity account/registered and
    // (XEP-0163 §6.1, module pep) pubsub/pep, with the archive (XEP-0313 §7, mam is on).
    let r = ask(&mut a, &info_query("alice@localhost", None)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("alice@localhost"), "{r}");
    assert_eq!(
        identities(&r),
        vec![
            ("account".to_string(), "registered".to_string()),
            ("pubsub".to_string(), "pep".to_string())
        ]
    );
    assert!(features(&r).iter().any(|x| x == "urn:xmpp:mam:2"), "{r}");
    let r = ask(&mut a, &info_query("alice@localhost", Some("x"))).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("item-not-found"),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_follow_the_configured_modules() {
    let mut cfg = test_config();
    cfg.modules.retain(|m| m != "carbons");
    cfg.modules.push("mam".into());
    cfg.modules.push("register".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let r = ask(&mut a, &info_query(HOST, None)).await;
    let f = features(&r);
    assert!(!f.iter().any(|x| x == "urn:xmpp:carbons:2"), "{r}");
    assert!(f.iter().any(|x| x == "jabber:iq:register"), "{r}");
    // XEP-0313 §7: the archive is the account's, so MAM is on the bare JID, not the domain.
    assert!(!f.iter().any(|x| x == "urn:xmpp:mam:2"), "{r}");
    let r = ask(&mut a, &info_query("alice@localhost", None)).await;
    let f = features(&r);
    for want in [
        "urn:xmpp:mam:2",
        "urn:xmpp:mam:2#extended",
        "urn:xmpp:sid:0",
    ] {
        assert!(f.iter().any(|x| x == want), "{want} missing: {r}");
    }
    // What is not advertised is not there either: enabling carbons is service-unavailable
    // (RFC 6120 §8.4).
    let r = ask(
        &mut a,
        "<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_info_is_for_those_who_may_see_its_presence() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.login("alice", "pw", "a1").await;
    let mut b = s.login("bob", "pw", "b1").await;
    let mut c = s.login("carol", "pw", "c1").await;
    for x in [&mut a, &mut b] {
        x.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        x.send("<presence/>").await;
    }
    // bob subscribes to alice and she approves: alice's roster gives bob `from`, bob's gives
    // alice `to`.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    // bob's roster push with the new subscription (RFC 6121 §3.1.6).
    b.wait_for(|e| e.name() == "iq" && e.to_string().contains("subscription='to'"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.sync().await;

    // XEP-0030 §8 rule 1: bob may receive alice's presence, so the server answers for her.
    let r = ask(&mut b, &info_query("alice@localhost", None)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("alice@localhost"), "{r}");
    // XEP-0163 §6.1: with module pep the account is also a PEP service.
    assert_eq!(
        identities(&r),
        vec![
            ("account".to_string(), "registered".to_string()),
            ("pubsub".to_string(), "pep".to_string())
        ]
    );
    // The other direction is not authorized: bob's roster gives alice only `to`.
    let r = ask(&mut a, &info_query("bob@localhost", None)).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    // A stranger gets service-unavailable, the same as for an account that does not exist
    // (no directory harvesting), node or not.
    for xml in [
        info_query("alice@localhost", None),
        info_query("alice@localhost", Some("x")),
        info_query("nobody@localhost", None),
    ] {
        let r = ask(&mut c, &xml).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{xml}: {r}"
        );
    }
    // Rule 2: disco#items for a stranger is an empty result, whatever the node; rule 2.1: the
    // same for an account that does not exist.
    for (to, node) in [
        ("alice@localhost", None),
        ("alice@localhost", Some("x")),
        ("nobody@localhost", None),
        ("nobody@localhost", Some("x")),
    ] {
        let r = ask(&mut c, &items_query(to, node)).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert_eq!(r.attr("from"), Some(to), "{r}");
        assert!(
            r.get_child("query", ns::DISCO_ITEMS)
                .is_some_and(|q| q.children().next().is_none()),
            "{r}"
        );
    }
    // Nothing of this reached alice's client: the server answered on her behalf.
    assert!(
        !drain(&mut a)
            .await
            .iter()
            .any(|e| e.name() == "iq" && e.attr("type") == Some("get")),
    );
    // To a full JID the query is the client's to answer (RFC 6120 §10.5.4).
    c.send(&format!(
        "<iq type='get' id='full1' to='alice@localhost/a1'><query xmlns='{}'/></iq>",
        ns::DISCO_INFO
    ))
    .await;
    let q = a
        .wait_for(|e| e.name() == "iq" && e.attr("id") == Some("full1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(q.attr("from"), Some("carol@localhost/c1"), "{q}");
    s.stop().await;
}

async fn drain(c: &mut Client) -> Vec<Element> {
    c.drain().await
}
