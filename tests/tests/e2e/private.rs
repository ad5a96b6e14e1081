//! XEP-0049 Private XML Storage end to end: fragments stored per account and namespace, shared
//! by the account's resources, and the errors the XEP lists.
use canto_tests::*;
use canto_xml::Element;

const PRIVATE: &str = "jabber:iq:private";

async fn server() -> TestServer {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    s
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

fn get(inner: &str) -> String {
    format!("<iq type='get' id='{{id}}'><query xmlns='{PRIVATE}'>{inner}</query></iq>")
}

fn set(inner: &str) -> String {
    format!("<iq type='set' id='{{id}}'><query xmlns='{PRIVATE}'>{inner}</query></iq>")
}

/// The single fragment in a result's <query/>.
fn fragment(r: &Element) -> Element {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let q = r
        .get_child("query", PRIVATE)
        .unwrap_or_else(|| panic!("no query: {r}"));
    let children: Vec<&Element> = q.children().collect();
    assert_eq!(children.len(), 1, "{r}");
    children[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_stored_per_namespace_and_shared_by_resources() {
    let s = server().await;
    let mut a1 = s.login("alice", "pw", "a1").await;
    let mut a2 = s.login("alice", "pw", "a2").await;

    // XEP-0049 §2.3: nothing stored yet: the empty element comes back.
    let f = fragment(&ask(&mut a1, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert!(
        f.is("exodus", "exodus:prefs") && f.children().next().is_none(),
        "{f}"
    );

    // One set may carry several fragments; each is stored under its own namespace.
    let r = ask(
        &mut a1,
        &set("<exodus xmlns='exodus:prefs'><defaultnick>Hamlet &amp; co</defaultnick></exodus><storage xmlns='storage:bookmarks'><conference jid='room@muc.example' autojoin='true'/></storage>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let f = fragment(&ask(&mut a2, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert_eq!(
        f.get_child("defaultnick", "exodus:prefs")
            .map(|n| n.text())
            .as_deref(),
        Some("Hamlet & co"),
        "{f}"
    );
    let f = fragment(
        &ask(
            &mut a2,
            "<iq type='get' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
        )
        .await,
    );
    assert!(
        f.get_child("conference", "storage:bookmarks")
            .is_some_and(|c| c.attr("jid") == Some("room@muc.example")),
        "{f}"
    );
    // A later set of one namespace replaces that fragment only.
    let r = ask(
        &mut a2,
        &set("<exodus xmlns='exodus:prefs'><defaultnick>Horatio</defaultnick></exodus>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let f = fragment(&ask(&mut a1, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert_eq!(
        f.get_child("defaultnick", "exodus:prefs")
            .map(|n| n.text())
            .as_deref(),
        Some("Horatio")
    );
    let f = fragment(&ask(&mut a1, &get("<storage xmlns='storage:bookmarks'/>")).await);
    assert!(f.has_child("conference", "storage:bookmarks"), "{f}");
    // The data is alice's alone: bob's own storage of the namespace is empty.
    let mut b = s.login("bob", "pw", "b1").await;
    let f = fragment(&ask(&mut b, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert!(f.children().next().is_none(), "{f}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_the_xep_lists() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    let mut b = s.login("bob", "pw", "b1").await;
    let r = ask(
        &mut b,
        &set("<exodus xmlns='exodus:prefs'><defaultnick>Bob</defaultnick></exodus>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // XEP-0049 §2.3: another user's data, read or written: forbidden (the preferred condition);
    // bob's fragment is untouched.
    for kind in ["get", "set"] {
        let r = ask(
            &mut a,
            &format!("<iq type='{kind}' id='{{id}}' to='bob@localhost'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Mallory</defaultnick></exodus></query></iq>"),
        )
        .await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("forbidden"),
            "{kind}: {r}"
        );
    }
    let f = fragment(&ask(&mut b, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert_eq!(
        f.get_child("defaultnick", "exodus:prefs")
            .map(|n| n.text())
            .as_deref(),
        Some("Bob")
    );

    // At least one child element: otherwise not-acceptable.
    for xml in [get(""), set("")] {
        let r = ask(&mut a, &xml).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("not-acceptable"),
            "{xml}: {r}"
        );
    }
    // Reserved namespaces ('jabber:*', 'http://jabber.org/*', 'vcard-temp'), for get and set,
    // this protocol's own included: a child without its own xmlns is in jabber:iq:private.
    for frag in [
        "<x xmlns='jabber:client'/>",
        "<x xmlns='jabber:server'/>",
        "<query xmlns='jabber:iq:private'/>",
        "<nons/>",
        "<query xmlns='jabber:iq:roster'/>",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        "<vCard xmlns='vcard-temp'><FN>Hamlet</FN></vCard>",
    ] {
        for xml in [get(frag), set(frag)] {
            let r = ask(&mut a, &xml).await;
            assert_eq!(
                error_condition(&r).as_deref(),
                Some("not-acceptable"),
                "{xml}: {r}"
            );
        }
    }
    // A reserved fragment beside a good one refuses the whole set: nothing is stored.
    let r = ask(
        &mut a,
        &set("<exodus xmlns='exodus:prefs'><defaultnick>Half</defaultnick></exodus><x xmlns='jabber:x:oob'/>"),
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-acceptable"),
        "{r}"
    );
    let f = fragment(&ask(&mut a, &get("<exodus xmlns='exodus:prefs'/>")).await);
    assert!(f.children().next().is_none(), "{f}");
    // One namespace per get ("A client MUST NOT query for more than namespace in a single IQ
    // get request").
    let r = ask(
        &mut a,
        &get("<exodus xmlns='exodus:prefs'/><storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    // Oversize fragments are refused.
    let big = "x".repeat(70 * 1024);
    let r = ask(
        &mut a,
        &set(&format!("<big xmlns='urn:example:big'>{big}</big>")),
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-acceptable"),
        "{r}"
    );
    assert_alive(&mut a).await;
    s.stop().await;
}
