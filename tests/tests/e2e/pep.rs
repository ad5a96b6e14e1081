//! XEP-0163 Personal Eventing Protocol end to end: a pubsub service on every account, with
//! XEP-0060 underneath. Publishing (auto-create with PEP's defaults, item ids, trimming), items
//! retrieval (ids, `max_items`, XEP-0059 pages), who gets notifications (XEP-0115 `+notify`
//! interest, the roster, access models, blocking), the last item on presence and on a new
//! subscription, the owner use cases, publish-options, limits, account disco, persistence and
//! account deletion.
//!
//! `+notify` interest is told by a client's caps: the server asks the client with disco#info
//! (from the host, ids `caps-…`) and [`announce`] answers like a client would. The interest
//! is recorded in a task of its own; to know when it is in force without sleeping, every
//! announced feature list also asks for a private node of the account's own (`READY`) whose
//! last item the server sends as soon as the interest is recorded (XEP-0163 §4.3.1).

use canto_tests::*;
use canto_xml::Element;

pub(crate) const PS: &str = "http://jabber.org/protocol/pubsub";
pub(crate) const PS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub(crate) const PS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub(crate) const PS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub(crate) const XDATA: &str = "jabber:x:data";
pub(crate) const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub(crate) const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub(crate) const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub(crate) const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub(crate) const RSM: &str = "http://jabber.org/protocol/rsm";
pub(crate) const ENTRY: &str = "urn:canto:test:entry";
const CLIENT: &str = "jabber:client";
const CAPS: &str = "http://jabber.org/protocol/caps";
const CAPS_NODE: &str = "https://canto.test/client";
const ROSTER: &str = "jabber:iq:roster";
const BLOCKING: &str = "urn:xmpp:blocking";

pub(crate) const TUNE: &str = "http://jabber.org/protocol/tune";
const MOOD: &str = "http://jabber.org/protocol/mood";
const NICK: &str = "http://jabber.org/protocol/nick";
const PRIVATE: &str = "urn:canto:test:private";
/// The node [`announce`] uses to learn that the interest is recorded.
const READY: &str = "urn:canto:test:ready";

// ---------------------------------------------------------------------------------------------
// Helpers, shared with pubsub.rs.
// ---------------------------------------------------------------------------------------------

/// Sends an IQ and returns its reply; whatever arrives first stays queued (notifications to
/// the requester's own resource come before the result).
pub(crate) async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq_keep(xml)
        .await
        .unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

pub(crate) fn assert_result(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

/// The `pubsub#errors` condition of an error reply (XEP-0060 §14 error schema).
pub(crate) fn app_condition(r: &Element) -> Option<String> {
    r.get_child("error", CLIENT)
        .and_then(|e| e.children().find(|c| c.ns() == PS_ERRORS))
        .map(|c| c.name().to_string())
}

/// Asserts an error reply with `condition` and exactly the `app` condition (or none).
pub(crate) fn assert_error(r: &Element, condition: &str, app: Option<&str>) {
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(error_condition(r).as_deref(), Some(condition), "{r}");
    assert_eq!(app_condition(r).as_deref(), app, "{r}");
}

fn to_attr(to: Option<&str>) -> String {
    to.map(|t| format!(" to='{t}'")).unwrap_or_default()
}

/// An IQ of `kind` carrying `<pubsub xmlns='…pubsub'>inner</pubsub>`.
pub(crate) fn ps(kind: &str, to: Option<&str>, inner: &str) -> String {
    format!(
        "<iq type='{kind}' id='{{id}}'{}><pubsub xmlns='{PS}'>{inner}</pubsub></iq>",
        to_attr(to)
    )
}

/// An IQ of `kind` carrying `<pubsub xmlns='…pubsub#owner'>inner</pubsub>`.
pub(crate) fn owner(kind: &str, to: Option<&str>, inner: &str) -> String {
    format!(
        "<iq type='{kind}' id='{{id}}'{}><pubsub xmlns='{PS_OWNER}'>{inner}</pubsub></iq>",
        to_attr(to)
    )
}

/// A submitted data form; a value with `|` in it is several values.
pub(crate) fn form(form_type: &str, fields: &[(&str, &str)]) -> String {
    let mut x = format!(
        "<x xmlns='{XDATA}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    );
    for (var, values) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in values.split('|') {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    x
}

/// A test payload.
pub(crate) fn entry(text: &str) -> String {
    format!("<entry xmlns='{ENTRY}'>{text}</entry>")
}

/// A publish request (with publish-options when `options` is not empty).
pub(crate) fn publish_xml(
    to: Option<&str>,
    node: &str,
    id: Option<&str>,
    payload: &str,
    options: &[(&str, &str)],
) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    let mut inner = format!("<publish node='{node}'><item{id}>{payload}</item></publish>");
    if !options.is_empty() {
        inner.push_str(&format!(
            "<publish-options>{}</publish-options>",
            form(PUBLISH_OPTIONS, options)
        ));
    }
    ps("set", to, &inner)
}

/// Publishes `entry(text)`; asserts the XEP-0060 §7.1.2 result and returns the item id.
pub(crate) async fn publish(
    c: &mut Client,
    to: Option<&str>,
    node: &str,
    id: Option<&str>,
    text: &str,
) -> String {
    publish_with(c, to, node, id, text, &[]).await
}

/// [`publish`] with publish-options.
pub(crate) async fn publish_with(
    c: &mut Client,
    to: Option<&str>,
    node: &str,
    id: Option<&str>,
    text: &str,
    options: &[(&str, &str)],
) -> String {
    let r = ask(c, &publish_xml(to, node, id, &entry(text), options)).await;
    assert_result(&r);
    let p = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("publish", PS))
        .unwrap_or_else(|| panic!("no <publish/> in {r}"));
    assert_eq!(p.attr("node"), Some(node), "{r}");
    let items: Vec<&Element> = p.children().collect();
    assert_eq!(items.len(), 1, "{r}");
    assert!(items[0].is("item", PS), "{r}");
    // §7.1.2: the result names the item; it does not echo the payload.
    assert_eq!(items[0].children().count(), 0, "{r}");
    let got = items[0].attr("id").unwrap_or_default().to_string();
    assert!(!got.is_empty(), "{r}");
    if let Some(id) = id {
        assert_eq!(got, id, "{r}");
    }
    got
}

/// The `<item/>`s of an items result.
pub(crate) fn result_items(r: &Element) -> Vec<Element> {
    assert_result(r);
    r.get_child("pubsub", PS)
        .and_then(|p| p.get_child("items", PS))
        .unwrap_or_else(|| panic!("no <items/> in {r}"))
        .children()
        .filter(|c| c.is("item", PS) || c.is("item", PS_EVENT))
        .cloned()
        .collect()
}

pub(crate) fn ids(items: &[Element]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.attr("id").unwrap_or_default().to_string())
        .collect()
}

/// The text of an item's test payload.
pub(crate) fn payload_text(item: &Element) -> Option<String> {
    item.get_child("entry", ENTRY).map(Element::text)
}

/// An items request.
pub(crate) fn items_xml(to: Option<&str>, node: &str) -> String {
    ps("get", to, &format!("<items node='{node}'/>"))
}

/// The ids of the items of `node` at `to`, asserting success.
pub(crate) async fn item_ids(c: &mut Client, to: Option<&str>, node: &str) -> Vec<String> {
    ids(&result_items(&ask(c, &items_xml(to, node)).await))
}

/// The child of a notification's `<event/>`, if `m` is one.
pub(crate) fn event_child(m: &Element) -> Option<&Element> {
    if m.name() != "message" {
        return None;
    }
    m.get_child("event", PS_EVENT)?.children().next()
}

/// Whether `m` is a notification from `from` whose event child is `kind` for `node`.
pub(crate) fn is_event(m: &Element, from: &str, kind: &str, node: &str) -> bool {
    m.attr("from") == Some(from)
        && event_child(m).is_some_and(|c| c.name() == kind && c.attr("node") == Some(node))
}

/// The `<item/>` (or `<retract/>`) children of a notification's `<items/>`.
pub(crate) fn event_items(m: &Element) -> Vec<Element> {
    event_child(m)
        .map(|c| c.children().cloned().collect())
        .unwrap_or_default()
}

/// Waits for an items notification of `node` from `from`; returns the message.
pub(crate) async fn wait_event(c: &mut Client, from: &str, node: &str) -> Element {
    let who = c.full_jid();
    c.wait_for(|m| is_event(m, from, "items", node))
        .await
        .unwrap_or_else(|e| panic!("{who}: no notification of {node} from {from}: {e:#}"))
}

/// Asserts that `m` notifies exactly one item `id` with payload `text`.
pub(crate) fn assert_item_event(m: &Element, id: &str, text: &str) {
    let items = event_items(m);
    assert_eq!(items.len(), 1, "{m}");
    assert!(items[0].is("item", PS_EVENT), "{m}");
    assert_eq!(items[0].attr("id"), Some(id), "{m}");
    assert_eq!(payload_text(&items[0]).as_deref(), Some(text), "{m}");
}

/// The values of `var` in a data form.
pub(crate) fn form_values(x: &Element, var: &str) -> Option<Vec<String>> {
    x.children()
        .find(|f| f.is("field", XDATA) && f.attr("var") == Some(var))
        .map(|f| {
            f.children()
                .filter(|v| v.is("value", XDATA))
                .map(Element::text)
                .collect()
        })
}

pub(crate) fn form_value(x: &Element, var: &str) -> Option<String> {
    form_values(x, var).and_then(|v| v.into_iter().next())
}

/// The form of a `<configure/>` result (XEP-0060 §8.2.1).
pub(crate) fn config_form(r: &Element) -> Element {
    assert_result(r);
    let x = r
        .get_child("pubsub", PS_OWNER)
        .and_then(|p| p.get_child("configure", PS_OWNER))
        .and_then(|c| c.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no configuration form in {r}"))
        .clone();
    assert_eq!(x.attr("type"), Some("form"), "{r}");
    assert_eq!(
        form_value(&x, "FORM_TYPE").as_deref(),
        Some(NODE_CONFIG),
        "{r}"
    );
    x
}

/// The node's configuration form, asked by `c` of `to`.
pub(crate) async fn get_config(c: &mut Client, to: Option<&str>, node: &str) -> Element {
    config_form(&ask(c, &owner("get", to, &format!("<configure node='{node}'/>"))).await)
}

/// Submits a configuration; returns the reply.
pub(crate) async fn configure(
    c: &mut Client,
    to: Option<&str>,
    node: &str,
    fields: &[(&str, &str)],
) -> Element {
    ask(
        c,
        &owner(
            "set",
            to,
            &format!(
                "<configure node='{node}'>{}</configure>",
                form(NODE_CONFIG, fields)
            ),
        ),
    )
    .await
}

/// Reads whatever is on its way to each client, so that a later `quiet` sees only what
/// follows.
pub(crate) async fn settle(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        let _ = c.drain().await;
    }
}

/// Asserts that nothing is on its way to `c` (after the actor's request was answered).
pub(crate) async fn assert_quiet(c: &mut Client, why: &str) {
    let who = c.full_jid();
    if !c.quiet().await {
        let got = c.drain().await;
        panic!("{who} {why}, but got {got:?}");
    }
}

/// Asserts that no pubsub notification is on its way to `c`; other stanzas (presence that
/// may still follow an announcement) are read and dropped.
pub(crate) async fn assert_no_events(c: &mut Client, why: &str) {
    let who = c.full_jid();
    let got = c.drain().await;
    let events: Vec<&Element> = got.iter().filter(|m| event_child(m).is_some()).collect();
    assert!(events.is_empty(), "{who} {why}, but got {events:?}");
}

/// disco#items of `to` (optionally a node): the `(jid, node, name)` of each item.
pub(crate) async fn disco_items(
    c: &mut Client,
    to: &str,
    node: Option<&str>,
) -> Vec<(String, String, String)> {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    let r = ask(
        c,
        &format!("<iq type='get' id='{{id}}' to='{to}'><query xmlns='{DISCO_ITEMS}'{node}/></iq>"),
    )
    .await;
    assert_result(&r);
    r.get_child("query", DISCO_ITEMS)
        .unwrap_or_else(|| panic!("{r}"))
        .children()
        .filter(|i| i.is("item", DISCO_ITEMS))
        .map(|i| {
            let a = |n: &str| i.attr(n).unwrap_or_default().to_string();
            (a("jid"), a("node"), a("name"))
        })
        .collect()
}

/// disco#info of `to` (optionally a node).
pub(crate) async fn disco_info(c: &mut Client, to: &str, node: Option<&str>) -> Element {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    ask(
        c,
        &format!("<iq type='get' id='{{id}}' to='{to}'><query xmlns='{DISCO_INFO}'{node}/></iq>"),
    )
    .await
}

pub(crate) fn features(info: &Element) -> Vec<String> {
    info.get_child("query", DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|f| f.is("feature", DISCO_INFO))
                .filter_map(|f| f.attr("var").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn identities(info: &Element) -> Vec<(String, String)> {
    info.get_child("query", DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|f| f.is("identity", DISCO_INFO))
                .map(|i| {
                    (
                        i.attr("category").unwrap_or_default().to_string(),
                        i.attr("type").unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The meta-data form of a node's disco#info (XEP-0060 §5.4).
pub(crate) fn meta_data(info: &Element) -> Element {
    info.get_child("query", DISCO_INFO)
        .and_then(|q| {
            q.children().find(|x| {
                x.is("x", XDATA)
                    && form_value(x, "FORM_TYPE").as_deref()
                        == Some("http://jabber.org/protocol/pubsub#meta-data")
            })
        })
        .unwrap_or_else(|| panic!("no meta-data form in {info}"))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// PEP's own helpers.
// ---------------------------------------------------------------------------------------------

async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, "pw").await;
    }
    s
}

async fn server() -> TestServer {
    server_with(test_config()).await
}

/// Logs in and sends initial presence without caps.
async fn online(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login(user, "pw", resource).await;
    c.send("<presence/>").await;
    c
}

/// What arrived while [`announce`] waited.
pub(crate) struct Announced {
    /// Everything else that arrived meanwhile (presence, other last items), in order.
    pub(crate) others: Vec<Element>,
    /// Whether the server asked this client for its features (else it knew the hash).
    pub(crate) queried: bool,
}

/// Makes sure the account has the `READY` node (private, so nobody else sees it).
async fn ensure_ready(c: &mut Client) {
    let r = ask(c, &items_xml(None, READY)).await;
    if r.attr("type") == Some("result") {
        return;
    }
    publish_with(
        c,
        None,
        READY,
        Some("ready"),
        "ready",
        &[("pubsub#access_model", "whitelist")],
    )
    .await;
}

/// XEP-0115: sends available presence with caps whose features ask for `nodes` (`+notify`,
/// XEP-0163 §4.3.3), answers the server's disco#info query (XEP-0115 §6.2), and returns once
/// the interest is in force. A resource may announce once (the `READY` node must be new to
/// its interest).
pub(crate) async fn announce(c: &mut Client, nodes: &[&str]) -> Announced {
    announce_as(c, nodes, nodes).await
}

/// The feature list of a client interested in `nodes`.
fn caps_features(nodes: &[&str]) -> Vec<String> {
    let mut features = vec![
        DISCO_INFO.to_string(),
        CAPS.to_string(),
        format!("{READY}+notify"),
    ];
    features.extend(nodes.iter().map(|n| format!("{n}+notify")));
    features
}

/// [`announce`] with a `ver` claiming interest in `claimed` while the disco#info answer
/// lists `answered` (the same for an honest client).
async fn announce_as(c: &mut Client, claimed: &[&str], answered: &[&str]) -> Announced {
    ensure_ready(c).await;
    let claimed = caps_features(claimed);
    let features = caps_features(answered);
    let refs: Vec<&str> = claimed.iter().map(String::as_str).collect();
    let ver = canto_proto::caps::ver(&[("client", "pc", "", "Canto tests")], &refs);
    c.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    ))
    .await;
    let own = c.bare_jid();
    let mut out = Announced {
        others: Vec::new(),
        queried: false,
    };
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{}: announcing caps: {e:#}", own));
        let id = e.attr("id").unwrap_or_default().to_string();
        if e.name() == "iq" && e.attr("type") == Some("get") && id.starts_with("caps-") {
            // XEP-0115 §6.2: the server asks for `node#ver`, from the host.
            assert_eq!(e.attr("from"), Some(HOST), "{e}");
            assert_eq!(e.attr("to"), Some(c.full_jid().as_str()), "{e}");
            let q = e
                .get_child("query", DISCO_INFO)
                .unwrap_or_else(|| panic!("{e}"));
            let node = format!("{CAPS_NODE}#{ver}");
            assert_eq!(q.attr("node"), Some(node.as_str()), "{e}");
            let mut answer = format!(
                "<iq type='result' id='{id}' to='{HOST}'><query xmlns='{DISCO_INFO}' node='{node}'><identity category='client' type='pc' name='Canto tests'/>"
            );
            for f in &features {
                answer.push_str(&format!("<feature var='{f}'/>"));
            }
            answer.push_str("</query></iq>");
            c.send(&answer).await;
            out.queried = true;
        } else if is_event(&e, &own, "items", READY) {
            return out;
        } else {
            out.others.push(e);
        }
    }
}

/// The first element of `seen` matching `pred` (taken out), else the next that arrives.
async fn expect(
    c: &mut Client,
    seen: &mut Vec<Element>,
    what: &str,
    pred: impl Fn(&Element) -> bool,
) -> Element {
    if let Some(i) = seen.iter().position(&pred) {
        return seen.remove(i);
    }
    let who = c.full_jid();
    c.wait_for(pred)
        .await
        .unwrap_or_else(|e| panic!("{who}: {what}: {e:#}"))
}

/// `alice` online as a1 and `bob` as b1, bob subscribed to alice's presence (alice's roster
/// gives him `from`: he may see her PEP nodes of the presence model).
async fn alice_and_contact_bob(s: &TestServer) -> (Client, Client) {
    let mut a = online(s, "alice", "a1").await;
    let mut b = online(s, "bob", "b1").await;
    subscribe_to(&mut b, &mut a).await;
    (a, b)
}

async fn roster_set(c: &mut Client, jid: &str, groups: &[&str]) {
    let groups: String = groups
        .iter()
        .map(|g| format!("<group>{g}</group>"))
        .collect();
    let r = ask(
        c,
        &format!(
            "<iq type='set' id='{{id}}'><query xmlns='{ROSTER}'><item jid='{jid}'>{groups}</item></query></iq>"
        ),
    )
    .await;
    assert_result(&r);
}

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

const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";
const CAROL: &str = "carol@localhost";

// ---------------------------------------------------------------------------------------------
// Publishing.
// ---------------------------------------------------------------------------------------------

/// XEP-0163 §4 / XEP-0060 §7.1.4: publishing to a node that does not exist creates it with
/// PEP's defaults (presence access, one item, the last item on presence); the result names
/// the node and the item only (§7.1.2); the owner owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_auto_creates_a_node_with_pep_defaults() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    // The node does not exist yet.
    let r = ask(&mut a, &items_xml(None, TUNE)).await;
    assert_error(&r, "item-not-found", None);

    publish(&mut a, None, TUNE, Some("current"), "Heart of the Sunrise").await;
    // Addressed to the own bare JID it is the same service.
    let items = result_items(&ask(&mut a, &items_xml(Some(ALICE), TUNE)).await);
    assert_eq!(ids(&items), ["current"]);
    assert_eq!(
        payload_text(&items[0]).as_deref(),
        Some("Heart of the Sunrise")
    );

    let x = get_config(&mut a, None, TUNE).await;
    for (var, want) in [
        ("pubsub#access_model", "presence"),
        ("pubsub#max_items", "1"),
        ("pubsub#persist_items", "1"),
        ("pubsub#publish_model", "publishers"),
        ("pubsub#send_last_published_item", "on_sub_and_presence"),
        ("pubsub#deliver_notifications", "1"),
        ("pubsub#deliver_payloads", "1"),
        ("pubsub#notification_type", "headline"),
    ] {
        assert_eq!(form_value(&x, var).as_deref(), Some(want), "{var}: {x}");
    }

    // §8.3: the defaults a new node gets.
    let r = ask(&mut a, &owner("get", None, "<default/>")).await;
    assert_result(&r);
    let d = r
        .get_child("pubsub", PS_OWNER)
        .and_then(|p| p.get_child("default", PS_OWNER))
        .and_then(|d| d.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no default form in {r}"));
    assert_eq!(
        form_value(d, "pubsub#access_model").as_deref(),
        Some("presence")
    );
    assert_eq!(form_value(d, "pubsub#max_items").as_deref(), Some("1"));

    // §5.7: the account owns its nodes.
    let r = ask(&mut a, &ps("get", None, "<affiliations/>")).await;
    assert_result(&r);
    let affs: Vec<(String, String)> = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("affiliations", PS))
        .unwrap_or_else(|| panic!("{r}"))
        .children()
        .map(|a| {
            (
                a.attr("node").unwrap_or_default().to_string(),
                a.attr("affiliation").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(affs, [(TUNE.to_string(), "owner".to_string())], "{r}");
    s.stop().await;
}

/// §7.1.2: the service generates ids when none is given; publishing an existing id replaces
/// that item; a node keeps its newest `max_items` (also when `max_items` shrinks, §8.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_ids_replacement_and_max_items_trimming() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    let one = publish(&mut a, None, TUNE, None, "first").await;
    let two = publish(&mut a, None, TUNE, None, "second").await;
    assert_ne!(one, two, "generated ids must differ");
    // max_items is 1 by default: only the newest is kept.
    let items = result_items(&ask(&mut a, &items_xml(None, TUNE)).await);
    assert_eq!(ids(&items), std::slice::from_ref(&two));
    assert_eq!(payload_text(&items[0]).as_deref(), Some("second"));

    const LIST: &str = "urn:canto:test:list";
    let three = [("pubsub#max_items", "3")];
    for id in ["a", "b", "c"] {
        publish_with(&mut a, None, LIST, Some(id), &format!("{id}1"), &three).await;
    }
    // The same id again: still three items, one of them b, with the new payload.
    publish_with(&mut a, None, LIST, Some("b"), "b2", &three).await;
    let items = result_items(&ask(&mut a, &items_xml(None, LIST)).await);
    let mut got = ids(&items);
    got.sort();
    assert_eq!(got, ["a", "b", "c"], "{items:?}");
    let b = items
        .iter()
        .find(|i| i.attr("id") == Some("b"))
        .unwrap_or_else(|| panic!("{items:?}"));
    assert_eq!(payload_text(b).as_deref(), Some("b2"));

    // A fourth id trims the oldest, a.
    publish_with(&mut a, None, LIST, Some("d"), "d1", &three).await;
    let got = item_ids(&mut a, None, LIST).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(!got.contains(&"a".to_string()), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("d"), "{got:?}");

    // §8.2: a smaller max_items takes effect at once: the newest stays.
    let r = configure(&mut a, None, LIST, &[("pubsub#max_items", "1")]).await;
    assert_result(&r);
    assert_eq!(item_ids(&mut a, None, LIST).await, ["d"]);
    s.stop().await;
}

/// §6.5: all items (oldest first), some by id (in the order asked, unknown ids skipped), the
/// newest `max_items`, and XEP-0059 pages forward (`<after/>`) and backward (`<before/>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_retrieval_by_id_max_items_and_rsm_pages() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    const LIST: &str = "urn:canto:test:list";
    for i in 1..=6 {
        publish_with(
            &mut a,
            None,
            LIST,
            Some(&format!("i{i}")),
            &format!("text {i}"),
            &[("pubsub#max_items", "10")],
        )
        .await;
    }
    let all = result_items(&ask(&mut a, &items_xml(None, LIST)).await);
    assert_eq!(ids(&all), ["i1", "i2", "i3", "i4", "i5", "i6"]);
    assert_eq!(payload_text(&all[2]).as_deref(), Some("text 3"));

    // §6.5.8: by id.
    let r = ask(
        &mut a,
        &ps(
            "get",
            None,
            &format!(
                "<items node='{LIST}'><item id='i4'/><item id='nope'/><item id='i2'/></items>"
            ),
        ),
    )
    .await;
    let items = result_items(&r);
    assert_eq!(ids(&items), ["i4", "i2"], "{r}");
    assert_eq!(payload_text(&items[0]).as_deref(), Some("text 4"));

    // §6.5.7: the newest two.
    let r = ask(
        &mut a,
        &ps(
            "get",
            None,
            &format!("<items node='{LIST}' max_items='2'/>"),
        ),
    )
    .await;
    assert_eq!(ids(&result_items(&r)), ["i5", "i6"], "{r}");

    // XEP-0059 pages of two.
    let page = |set: &str| {
        ps(
            "get",
            None,
            &format!("<items node='{LIST}'/><set xmlns='{RSM}'>{set}</set>"),
        )
    };
    let rsm = |r: &Element| {
        let set = r
            .get_child("pubsub", PS)
            .and_then(|p| p.get_child("set", RSM))
            .unwrap_or_else(|| panic!("no RSM set in {r}"));
        let t = |n: &str| set.get_child(n, RSM).map(Element::text);
        (t("first"), t("last"), t("count"))
    };
    let some = |s: &str| Some(s.to_string());
    let r = ask(&mut a, &page("<max>2</max>")).await;
    assert_eq!(ids(&result_items(&r)), ["i1", "i2"], "{r}");
    assert_eq!(rsm(&r), (some("i1"), some("i2"), some("6")), "{r}");
    let r = ask(&mut a, &page("<max>2</max><after>i2</after>")).await;
    assert_eq!(ids(&result_items(&r)), ["i3", "i4"], "{r}");
    assert_eq!(rsm(&r), (some("i3"), some("i4"), some("6")), "{r}");
    let r = ask(&mut a, &page("<max>2</max><after>i4</after>")).await;
    assert_eq!(ids(&result_items(&r)), ["i5", "i6"], "{r}");
    let r = ask(&mut a, &page("<max>2</max><after>i6</after>")).await;
    assert!(result_items(&r).is_empty(), "{r}");
    // Backwards from the end.
    let r = ask(&mut a, &page("<max>2</max><before/>")).await;
    assert_eq!(ids(&result_items(&r)), ["i5", "i6"], "{r}");
    assert_eq!(rsm(&r), (some("i5"), some("i6"), some("6")), "{r}");
    let r = ask(&mut a, &page("<max>2</max><before>i5</before>")).await;
    assert_eq!(ids(&result_items(&r)), ["i3", "i4"], "{r}");
    let r = ask(&mut a, &page("<max>3</max><before>i3</before>")).await;
    assert_eq!(ids(&result_items(&r)), ["i1", "i2"], "{r}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Who is notified.
// ---------------------------------------------------------------------------------------------

/// XEP-0163 §4.3: a contact with a presence subscription gets a notification only on the
/// resources whose caps asked for the node with `+notify`; a resource without caps gets none,
/// nor does a stranger that asked; the owner's own interested resources get it too.
/// Notifications are headlines from the account's bare JID (§4.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_caps_notify_interest() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut b2 = online(&s, "bob", "b2").await;
    let mut b3 = s.login("bob", "pw", "b3").await;
    let mut b4 = s.login("bob", "pw", "b4").await;
    let mut c1 = s.login("carol", "pw", "c1").await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    let first = announce(&mut b1, &[TUNE]).await;
    assert!(
        first.queried,
        "the server never asked for the features of a new hash"
    );
    announce(&mut b3, &[MOOD]).await;
    // The same caps as b1: the hash is known, so no query; the interest still counts.
    let again = announce(&mut b4, &[TUNE]).await;
    assert!(!again.queried, "a known, verified hash was queried again");
    announce(&mut c1, &[TUNE, MOOD]).await;
    announce(&mut a2, &[TUNE]).await;
    settle(&mut [
        &mut a1, &mut a2, &mut b1, &mut b2, &mut b3, &mut b4, &mut c1,
    ])
    .await;

    publish(&mut a1, None, TUNE, Some("t1"), "Roundabout").await;
    for c in [&mut b1, &mut b4, &mut a2] {
        let m = wait_event(c, ALICE, TUNE).await;
        assert_eq!(m.attr("type"), Some("headline"), "{m}");
        assert_eq!(m.attr("to"), Some(c.full_jid().as_str()), "{m}");
        assert_item_event(&m, "t1", "Roundabout");
        // The default itemreply names no publisher.
        assert_eq!(event_items(&m)[0].attr("publisher"), None, "{m}");
    }
    assert_quiet(&mut b2, "sent no caps").await;
    assert_quiet(&mut b3, "asked for mood only").await;
    assert_quiet(&mut c1, "has no presence subscription").await;
    assert_quiet(&mut a1, "sent no caps").await;

    publish(&mut a1, None, MOOD, Some("m1"), "happy").await;
    let m = wait_event(&mut b3, ALICE, MOOD).await;
    assert_item_event(&m, "m1", "happy");
    for c in [&mut b1, &mut b2, &mut b4, &mut a2, &mut c1] {
        assert_quiet(c, "did not ask for mood").await;
    }
    s.stop().await;
}

/// XEP-0115 §5.4: an answer that does not hash to the `ver` it was asked for is used for the
/// resource that gave it but not remembered for the hash: a client claiming another's hash
/// with other features cannot change what the server believes of honest clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_answers_that_do_not_verify_are_not_cached() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    // b1 claims the hash of a tune+notify client but answers mood+notify.
    let liar = announce_as(&mut b1, &[TUNE], &[MOOD]).await;
    assert!(liar.queried);
    // An honest client with that hash: asked again, its own answer counts.
    let mut b2 = s.login("bob", "pw", "b2").await;
    let honest = announce(&mut b2, &[TUNE]).await;
    assert!(
        honest.queried,
        "an answer that did not verify was cached for its hash"
    );
    // And once verified, the hash is known.
    let mut b3 = s.login("bob", "pw", "b3").await;
    assert!(!announce(&mut b3, &[TUNE]).await.queried);
    settle(&mut [&mut a1, &mut b1, &mut b2, &mut b3]).await;

    publish(&mut a1, None, TUNE, Some("t1"), "tune").await;
    for c in [&mut b2, &mut b3] {
        let m = wait_event(c, ALICE, TUNE).await;
        assert_item_event(&m, "t1", "tune");
    }
    assert_quiet(&mut b1, "answered mood only").await;
    publish(&mut a1, None, MOOD, Some("m1"), "mood").await;
    let m = wait_event(&mut b1, ALICE, MOOD).await;
    assert_item_event(&m, "m1", "mood");
    assert_quiet(&mut b2, "asked for tune only").await;
    s.stop().await;
}

/// Interest lasts as long as the presence that announced it: unavailable presence ends it,
/// and a later presence without caps brings none back (XEP-0163 §4.3.3); a new presence
/// with the caps again brings the last item (it is initial presence again, §4.3.1 note).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_ends_with_the_presence_that_announced_it() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    announce(&mut b1, &[TUNE]).await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t1"), "first").await;
    wait_event(&mut b1, ALICE, TUNE).await;

    b1.send("<presence type='unavailable'/>").await;
    b1.sync().await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t2"), "while away").await;
    assert_quiet(&mut b1, "is unavailable").await;

    b1.send("<presence/>").await;
    b1.sync().await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t3"), "no caps").await;
    assert_quiet(&mut b1, "came back without caps").await;

    let mut seen = announce(&mut b1, &[TUNE]).await.others;
    let m = expect(&mut b1, &mut seen, "the last tune", |m| {
        is_event(m, ALICE, "items", TUNE)
    })
    .await;
    assert_item_event(&m, "t3", "no caps");
    s.stop().await;
}

/// §16.4.3 `publish_model = open` on a PEP node: whoever may access it may publish (a
/// contact; not a stranger), and retract what it published but not the owner's items
/// (§7.2.3.1); the owner may retract anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_publish_model_lets_contacts_publish() {
    const WALL: &str = "urn:canto:test:wall";
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut c1 = online(&s, "carol", "c1").await;
    publish_with(
        &mut a1,
        None,
        WALL,
        Some("by-alice"),
        "alice",
        &[("pubsub#publish_model", "open"), ("pubsub#max_items", "10")],
    )
    .await;
    publish(&mut b1, Some(ALICE), WALL, Some("by-bob"), "bob").await;
    let r = ask(
        &mut c1,
        &publish_xml(Some(ALICE), WALL, Some("by-carol"), &entry("carol"), &[]),
    )
    .await;
    assert_error(&r, "forbidden", None);
    assert_eq!(item_ids(&mut a1, None, WALL).await, ["by-alice", "by-bob"]);
    let retract = |id: &str| {
        ps(
            "set",
            Some(ALICE),
            &format!("<retract node='{WALL}'><item id='{id}'/></retract>"),
        )
    };
    let r = ask(&mut b1, &retract("by-alice")).await;
    assert_error(&r, "forbidden", None);
    assert_result(&ask(&mut b1, &retract("by-bob")).await);
    assert_eq!(item_ids(&mut a1, None, WALL).await, ["by-alice"]);
    publish(&mut b1, Some(ALICE), WALL, Some("again"), "bob again").await;
    assert_result(&ask(&mut a1, &retract("again")).await);
    assert_eq!(item_ids(&mut a1, None, WALL).await, ["by-alice"]);
    s.stop().await;
}

/// XEP-0163 §4.3.1 (`on_sub_and_presence`): a resource that comes online with caps gets the
/// last item of each node it asked for, from its own account and from contacts whose
/// presence it may see; not of nodes configured `never`, not a contact's private node, and
/// nothing without caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_items_on_presence_with_caps() {
    const NEVER: &str = "urn:canto:test:never";
    let s = server().await;
    let (mut a1, b1) = alice_and_contact_bob(&s).await;
    drop(b1);
    publish(&mut a1, None, TUNE, Some("t1"), "Long Distance Runaround").await;
    publish_with(
        &mut a1,
        None,
        NEVER,
        Some("n1"),
        "never sent",
        &[("pubsub#send_last_published_item", "never")],
    )
    .await;
    publish_with(
        &mut a1,
        None,
        PRIVATE,
        Some("p1"),
        "secret",
        &[("pubsub#access_model", "whitelist")],
    )
    .await;

    // A contact's new resource.
    let mut b2 = s.login("bob", "pw", "b2").await;
    let mut seen = announce(&mut b2, &[TUNE, NEVER, PRIVATE]).await.others;
    let m = expect(&mut b2, &mut seen, "alice's last tune", |m| {
        is_event(m, ALICE, "items", TUNE)
    })
    .await;
    assert_eq!(m.attr("to"), Some("bob@localhost/b2"), "{m}");
    assert_eq!(m.attr("type"), Some("headline"), "{m}");
    assert_item_event(&m, "t1", "Long Distance Runaround");
    assert!(
        !seen.iter().any(|m| event_child(m).is_some()),
        "unexpected notifications: {seen:?}"
    );
    assert_no_events(&mut b2, "has had the only last item it may see").await;

    // The owner's own new resource gets its last items, its private node's too.
    let mut a2 = s.login("alice", "pw", "a2").await;
    let mut seen = announce(&mut a2, &[TUNE, NEVER, PRIVATE]).await.others;
    let m = expect(&mut a2, &mut seen, "own last tune", |m| {
        is_event(m, ALICE, "items", TUNE)
    })
    .await;
    assert_item_event(&m, "t1", "Long Distance Runaround");
    let m = expect(&mut a2, &mut seen, "own private item", |m| {
        is_event(m, ALICE, "items", PRIVATE)
    })
    .await;
    assert_item_event(&m, "p1", "secret");
    assert!(
        !seen.iter().any(|m| is_event(m, ALICE, "items", NEVER)),
        "{seen:?}"
    );
    assert_no_events(&mut a2, "send_last_published_item is never").await;

    // Without caps: nothing.
    let mut b3 = online(&s, "bob", "b3").await;
    settle(&mut [&mut b3]).await;
    publish(&mut a1, None, NICK, Some("n"), "al").await;
    assert_quiet(&mut b3, "sent no caps").await;
    s.stop().await;
}

/// XEP-0163 §4.3.1: when a subscription to the owner's presence is approved, the new
/// subscriber's interested resources get the last items at once; the other direction (the
/// owner subscribing to someone) gives that someone nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_item_after_a_presence_subscription_is_approved() {
    let s = server().await;
    let mut a1 = online(&s, "alice", "a1").await;
    publish(&mut a1, None, TUNE, Some("t1"), "South Side of the Sky").await;
    let mut c1 = online(&s, "carol", "c1").await;
    publish(&mut c1, None, TUNE, Some("c1"), "carol's tune").await;

    let mut b1 = s.login("bob", "pw", "b1").await;
    let seen = announce(&mut b1, &[TUNE]).await.others;
    assert!(!seen.iter().any(|m| event_child(m).is_some()), "{seen:?}");
    assert_no_events(&mut b1, "is no contact of alice yet").await;

    subscribe_to(&mut b1, &mut a1).await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_eq!(m.attr("to"), Some("bob@localhost/b1"), "{m}");
    assert_item_event(&m, "t1", "South Side of the Sky");

    // alice subscribes to carol's presence (alice has `to`, carol `from`): alice, interested,
    // gets carol's tune; carol, interested too, gets nothing of alice's.
    settle(&mut [&mut a1]).await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    announce(&mut a2, &[TUNE]).await;
    let mut c2 = s.login("carol", "pw", "c2").await;
    announce(&mut c2, &[TUNE]).await;
    settle(&mut [&mut a2, &mut c2]).await;
    subscribe_to(&mut a1, &mut c1).await;
    let m = wait_event(&mut a2, CAROL, TUNE).await;
    assert_item_event(&m, "c1", "carol's tune");
    settle(&mut [&mut a1, &mut a2]).await;
    let got = c2.drain().await;
    assert!(!got.iter().any(|m| event_child(m).is_some()), "{got:?}");
    publish(&mut a1, None, TUNE, Some("t2"), "new").await;
    assert_quiet(&mut c2, "may not see alice's presence").await;
    s.stop().await;
}

/// XEP-0060 §6.5.9.6 / §4.5: an entity without a presence subscription may not read a
/// presence-model node (`not-authorized` with `presence-subscription-required`), nor
/// subscribe to it, nor see it in disco; it gets no notifications whatever its caps say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_no_notifications_and_no_items() {
    let s = server().await;
    let mut a1 = online(&s, "alice", "a1").await;
    publish(&mut a1, None, TUNE, Some("t1"), "Siberian Khatru").await;
    let mut c1 = s.login("carol", "pw", "c1").await;
    announce(&mut c1, &[TUNE]).await;
    assert_no_events(&mut c1, "has no presence subscription").await;
    publish(&mut a1, None, TUNE, Some("t2"), "And You and I").await;
    assert_quiet(&mut c1, "has no presence subscription").await;

    let r = ask(&mut c1, &items_xml(Some(ALICE), TUNE)).await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    assert_eq!(error_type(&r).as_deref(), Some("auth"), "{r}");
    let r = ask(
        &mut c1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{TUNE}' jid='carol@localhost/c1'/>"),
        ),
    )
    .await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    assert!(disco_items(&mut c1, ALICE, None).await.is_empty());
    // A node the account does not have: item-not-found (§6.5.9.11); no such account at all:
    // RFC 6121 §8.5.1 service-unavailable, before any PEP service is asked.
    let r = ask(&mut c1, &items_xml(Some("dave@localhost"), TUNE)).await;
    assert_error(&r, "item-not-found", None);
    let r = ask(&mut c1, &items_xml(Some("nobody@localhost"), TUNE)).await;
    assert_error(&r, "service-unavailable", None);
    s.stop().await;
}

/// XEP-0223 / XEP-0060 §4.5 whitelist: a private node is the owner's alone: a contact gets
/// no notifications, may not read it (`not-allowed` + `closed-node`) nor see it; made a
/// member, it may; and no longer once the affiliation is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_nodes_are_private() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    announce(&mut b1, &[PRIVATE]).await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    announce(&mut a2, &[PRIVATE]).await;
    settle(&mut [&mut a1, &mut a2, &mut b1]).await;

    let private = [
        ("pubsub#persist_items", "true"),
        ("pubsub#access_model", "whitelist"),
    ];
    publish_with(&mut a1, None, PRIVATE, Some("p1"), "secret", &private).await;
    let m = wait_event(&mut a2, ALICE, PRIVATE).await;
    assert_item_event(&m, "p1", "secret");
    assert_quiet(&mut b1, "is not on the whitelist").await;

    let r = ask(&mut b1, &items_xml(Some(ALICE), PRIVATE)).await;
    assert_error(&r, "not-allowed", Some("closed-node"));
    assert_eq!(error_type(&r).as_deref(), Some("cancel"), "{r}");
    let r = ask(
        &mut b1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{PRIVATE}' jid='bob@localhost/b1'/>"),
        ),
    )
    .await;
    assert_error(&r, "not-allowed", Some("closed-node"));
    let nodes: Vec<String> = disco_items(&mut b1, ALICE, None)
        .await
        .into_iter()
        .map(|(_, n, _)| n)
        .collect();
    assert!(!nodes.contains(&PRIVATE.to_string()), "{nodes:?}");
    let r = disco_info(&mut b1, ALICE, Some(PRIVATE)).await;
    assert_error(&r, "item-not-found", None);

    // §8.9: the owner makes bob a member.
    let set_aff = |aff: &str| {
        owner(
            "set",
            None,
            &format!(
                "<affiliations node='{PRIVATE}'><affiliation jid='{BOB}' affiliation='{aff}'/></affiliations>"
            ),
        )
    };
    assert_result(&ask(&mut a1, &set_aff("member")).await);
    assert_eq!(item_ids(&mut b1, Some(ALICE), PRIVATE).await, ["p1"]);
    publish_with(&mut a1, None, PRIVATE, Some("p2"), "shared", &private).await;
    let m = wait_event(&mut b1, ALICE, PRIVATE).await;
    assert_item_event(&m, "p2", "shared");

    assert_result(&ask(&mut a1, &set_aff("none")).await);
    settle(&mut [&mut a2]).await;
    publish_with(&mut a1, None, PRIVATE, Some("p3"), "secret again", &private).await;
    assert_quiet(&mut b1, "is off the whitelist").await;
    let r = ask(&mut b1, &items_xml(Some(ALICE), PRIVATE)).await;
    assert_error(&r, "not-allowed", Some("closed-node"));

    // A member again, when the node is deleted: XEP-0060 §8.4.2, every subscriber is told
    // (the affiliations go with the node, they were in force when it went).
    assert_result(&ask(&mut a1, &set_aff("member")).await);
    settle(&mut [&mut a2, &mut b1]).await;
    assert_result(
        &ask(
            &mut a1,
            &owner("set", None, &format!("<delete node='{PRIVATE}'/>")),
        )
        .await,
    );
    for c in [&mut a2, &mut b1] {
        c.wait_for(|m| is_event(m, ALICE, "delete", PRIVATE))
            .await
            .unwrap_or_else(|e| panic!("no delete notification: {e:#}"));
    }
    s.stop().await;
}

/// An affiliation is with one node (XEP-0060 §4.1): a member of one private node gets that
/// node's last item, on presence and on a new presence subscription, and not another private
/// node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_are_per_node() {
    const OTHER: &str = "urn:canto:test:private2";
    let s = server().await;
    let (mut a1, b1) = alice_and_contact_bob(&s).await;
    drop(b1);
    let private = [("pubsub#access_model", "whitelist")];
    publish_with(&mut a1, None, PRIVATE, Some("p1"), "for members", &private).await;
    publish_with(&mut a1, None, OTHER, Some("o1"), "for alice", &private).await;
    for who in [BOB, CAROL] {
        let r = ask(
            &mut a1,
            &owner(
                "set",
                None,
                &format!(
                    "<affiliations node='{PRIVATE}'><affiliation jid='{who}' affiliation='member'/></affiliations>"
                ),
            ),
        )
        .await;
        assert_result(&r);
    }

    // On presence.
    let mut b2 = s.login("bob", "pw", "b2").await;
    let mut seen = announce(&mut b2, &[PRIVATE, OTHER]).await.others;
    let m = expect(&mut b2, &mut seen, "the member node's last item", |m| {
        is_event(m, ALICE, "items", PRIVATE)
    })
    .await;
    assert_item_event(&m, "p1", "for members");
    assert!(!seen.iter().any(|m| event_child(m).is_some()), "{seen:?}");
    assert_no_events(&mut b2, "is a member of one node only").await;

    // On a new presence subscription.
    let mut c1 = s.login("carol", "pw", "c1").await;
    announce(&mut c1, &[PRIVATE, OTHER]).await;
    settle(&mut [&mut a1, &mut c1]).await;
    subscribe_to(&mut c1, &mut a1).await;
    let m = wait_event(&mut c1, ALICE, PRIVATE).await;
    assert_item_event(&m, "p1", "for members");
    assert_no_events(&mut c1, "is a member of one node only").await;
    s.stop().await;
}

/// XEP-0060 §4.5 roster: contacts in the allowed roster groups may read and are notified;
/// others are not (`not-authorized` + `not-in-roster-group`); moving a contact into a group
/// admits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_access_model_follows_groups() {
    const GROUP_NODE: &str = "urn:canto:test:friends";
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut c1 = online(&s, "carol", "c1").await;
    subscribe_to(&mut c1, &mut a1).await;
    roster_set(&mut a1, BOB, &["Friends"]).await;
    roster_set(&mut a1, CAROL, &["Work"]).await;
    announce(&mut b1, &[GROUP_NODE]).await;
    announce(&mut c1, &[GROUP_NODE]).await;

    // §8.1.3 create-and-configure.
    let r = ask(
        &mut a1,
        &ps(
            "set",
            None,
            &format!(
                "<create node='{GROUP_NODE}'/><configure>{}</configure>",
                form(
                    NODE_CONFIG,
                    &[
                        ("pubsub#access_model", "roster"),
                        ("pubsub#roster_groups_allowed", "Friends|Family"),
                    ]
                )
            ),
        ),
    )
    .await;
    assert_result(&r);
    let x = get_config(&mut a1, None, GROUP_NODE).await;
    assert_eq!(
        form_values(&x, "pubsub#roster_groups_allowed"),
        Some(vec!["Friends".to_string(), "Family".to_string()]),
        "{x}"
    );
    settle(&mut [&mut a1, &mut b1, &mut c1]).await;

    publish(&mut a1, None, GROUP_NODE, Some("g1"), "for friends").await;
    let m = wait_event(&mut b1, ALICE, GROUP_NODE).await;
    assert_item_event(&m, "g1", "for friends");
    assert_quiet(&mut c1, "is not in an allowed group").await;
    let r = ask(&mut c1, &items_xml(Some(ALICE), GROUP_NODE)).await;
    assert_error(&r, "not-authorized", Some("not-in-roster-group"));
    assert_eq!(item_ids(&mut b1, Some(ALICE), GROUP_NODE).await, ["g1"]);

    roster_set(&mut a1, CAROL, &["Work", "Family"]).await;
    settle(&mut [&mut a1, &mut c1]).await;
    publish(&mut a1, None, GROUP_NODE, Some("g2"), "family too").await;
    let m = wait_event(&mut c1, ALICE, GROUP_NODE).await;
    assert_item_event(&m, "g2", "family too");
    assert_eq!(item_ids(&mut c1, Some(ALICE), GROUP_NODE).await, ["g2"]);
    s.stop().await;
}

/// §8.2 / XEP-0163 §4: a new access model applies to the next notification and retrieval:
/// presence → open (a stranger may read and subscribe explicitly; implicit `+notify`
/// subscriptions stay the contacts', XEP-0163 §4.1) → whitelist (nobody; the stranger's
/// subscription is cancelled, XEP-0163 §7.1 "loss of access") → open again (the cancelled
/// subscription stays cancelled) → presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_model_changes_take_effect() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut c1 = s.login("carol", "pw", "c1").await;
    announce(&mut b1, &[TUNE]).await;
    announce(&mut c1, &[TUNE]).await;
    settle(&mut [&mut a1, &mut b1, &mut c1]).await;

    publish(&mut a1, None, TUNE, Some("t1"), "presence").await;
    wait_event(&mut b1, ALICE, TUNE).await;
    assert_quiet(&mut c1, "is a stranger to a presence node").await;

    assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#access_model", "open")]).await);
    assert_eq!(item_ids(&mut c1, Some(ALICE), TUNE).await, ["t1"]);
    // Caps alone do not subscribe a stranger (XEP-0163 §4.1: no shared presence).
    publish(&mut a1, None, TUNE, Some("t2"), "open").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t2", "open");
    assert_quiet(&mut c1, "did not subscribe").await;
    let subscribe = ps(
        "set",
        Some(ALICE),
        &format!("<subscribe node='{TUNE}' jid='carol@localhost/c1'/>"),
    );
    assert_result(&ask(&mut c1, &subscribe).await);
    let m = wait_event(&mut c1, ALICE, TUNE).await;
    assert_item_event(&m, "t2", "open");
    publish(&mut a1, None, TUNE, Some("t3"), "open, subscribed").await;
    for c in [&mut b1, &mut c1] {
        let m = wait_event(c, ALICE, TUNE).await;
        assert_item_event(&m, "t3", "open, subscribed");
    }

    assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#access_model", "whitelist")]).await);
    publish(&mut a1, None, TUNE, Some("t4"), "whitelist").await;
    assert_quiet(&mut b1, "is not on the whitelist").await;
    assert_quiet(&mut c1, "is not on the whitelist").await;
    let r = ask(&mut b1, &items_xml(Some(ALICE), TUNE)).await;
    assert_error(&r, "not-allowed", Some("closed-node"));
    let r = ask(&mut c1, &ps("get", Some(ALICE), "<subscriptions/>")).await;
    assert_result(&r);
    assert_eq!(
        r.get_child("pubsub", PS)
            .and_then(|p| p.get_child("subscriptions", PS))
            .map(|l| l.children().count()),
        Some(0),
        "the subscription survived the loss of access: {r}"
    );

    assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#access_model", "open")]).await);
    publish(&mut a1, None, TUNE, Some("t5"), "open again").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t5", "open again");
    assert_quiet(&mut c1, "lost the subscription with the access").await;

    assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#access_model", "presence")]).await);
    publish(&mut a1, None, TUNE, Some("t6"), "presence again").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t6", "presence again");
    let r = ask(&mut c1, &items_xml(Some(ALICE), TUNE)).await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    s.stop().await;
}

/// A contact whose presence subscription ends (the owner cancels it with `unsubscribed`, or
/// the contact unsubscribes) is no longer notified nor may read presence nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_presence_subscription_stops_notifications() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    announce(&mut b1, &[TUNE]).await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t1"), "subscribed").await;
    wait_event(&mut b1, ALICE, TUNE).await;

    // RFC 6121 §3.2: alice cancels bob's subscription.
    a1.send(&format!("<presence to='{BOB}' type='unsubscribed'/>"))
        .await;
    b1.wait_for(|p| p.name() == "presence" && p.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t2"), "cancelled").await;
    assert_quiet(&mut b1, "lost the subscription").await;
    let r = ask(&mut b1, &items_xml(Some(ALICE), TUNE)).await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));

    // Subscribed again, then bob unsubscribes himself (RFC 6121 §3.3).
    subscribe_to(&mut b1, &mut a1).await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t3"), "again").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t3", "again");
    b1.send(&format!("<presence to='{ALICE}' type='unsubscribe'/>"))
        .await;
    b1.sync().await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t4"), "gone").await;
    assert_quiet(&mut b1, "unsubscribed").await;
    s.stop().await;
}

/// XEP-0163 §7.1: when a presence subscription or a roster item changes so that a contact
/// loses access to a node, its explicit subscription is cancelled: regaining access later
/// does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_access_cancels_explicit_subscriptions() {
    const GROUP_NODE: &str = "urn:canto:test:friends";
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    roster_set(&mut a1, BOB, &["Friends"]).await;
    publish(&mut a1, None, TUNE, Some("t1"), "presence node").await;
    publish_with(
        &mut a1,
        None,
        GROUP_NODE,
        Some("g1"),
        "roster node",
        &[
            ("pubsub#access_model", "roster"),
            ("pubsub#roster_groups_allowed", "Friends"),
        ],
    )
    .await;
    for node in [TUNE, GROUP_NODE] {
        let r = ask(
            &mut b1,
            &ps(
                "set",
                Some(ALICE),
                &format!("<subscribe node='{node}' jid='bob@localhost/b1'/>"),
            ),
        )
        .await;
        assert_result(&r);
    }
    settle(&mut [&mut a1, &mut b1]).await;
    assert_eq!(count_subscriptions(&mut b1, ALICE).await, 2);

    // The roster group changes: the roster node's subscription goes, even when the group
    // comes back.
    roster_set(&mut a1, BOB, &["Work"]).await;
    roster_set(&mut a1, BOB, &["Friends"]).await;
    assert_eq!(count_subscriptions(&mut b1, ALICE).await, 1);
    publish(&mut a1, None, GROUP_NODE, Some("g2"), "roster node").await;
    assert_quiet(&mut b1, "lost its subscription to the roster node").await;

    // The presence subscription ends and is approved again: the presence node's goes too.
    a1.send(&format!("<presence to='{BOB}' type='unsubscribed'/>"))
        .await;
    b1.wait_for(|p| p.name() == "presence" && p.attr("type") == Some("unsubscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    subscribe_to(&mut b1, &mut a1).await;
    settle(&mut [&mut a1, &mut b1]).await;
    assert_eq!(count_subscriptions(&mut b1, ALICE).await, 0);
    publish(&mut a1, None, TUNE, Some("t2"), "presence node").await;
    assert_quiet(&mut b1, "lost its subscription to the presence node").await;
    s.stop().await;
}

/// How many subscriptions `c` has at `service` (XEP-0060 §5.6).
pub(crate) async fn count_subscriptions(c: &mut Client, service: &str) -> usize {
    let r = ask(c, &ps("get", Some(service), "<subscriptions/>")).await;
    assert_result(&r);
    r.get_child("pubsub", PS)
        .and_then(|p| p.get_child("subscriptions", PS))
        .map(|l| l.children().count())
        .unwrap_or_else(|| panic!("{r}"))
}

/// XEP-0191: nothing goes to or comes from a blocked entity: neither the owner blocking the
/// contact nor the contact blocking the owner lets notifications (or last items) through;
/// unblocking restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_either_way_stops_notifications() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    announce(&mut b1, &[TUNE]).await;
    settle(&mut [&mut a1, &mut b1]).await;

    block(&mut a1, "block", BOB).await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t1"), "blocked by alice").await;
    assert_quiet(&mut b1, "is blocked by alice").await;
    // Nor the last item to a new resource.
    let mut b2 = s.login("bob", "pw", "b2").await;
    let seen = announce(&mut b2, &[TUNE]).await.others;
    assert!(!seen.iter().any(|m| event_child(m).is_some()), "{seen:?}");
    assert_no_events(&mut b2, "is blocked by alice").await;

    block(&mut a1, "unblock", BOB).await;
    settle(&mut [&mut a1, &mut b1, &mut b2]).await;
    publish(&mut a1, None, TUNE, Some("t2"), "unblocked").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t2", "unblocked");

    block(&mut b1, "block", ALICE).await;
    settle(&mut [&mut a1, &mut b1, &mut b2]).await;
    publish(&mut a1, None, TUNE, Some("t3"), "bob blocks alice").await;
    assert_quiet(&mut b1, "blocks alice").await;
    assert_quiet(&mut b2, "blocks alice").await;

    block(&mut b1, "unblock", ALICE).await;
    settle(&mut [&mut a1, &mut b1, &mut b2]).await;
    publish(&mut a1, None, TUNE, Some("t4"), "friends again").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t4", "friends again");
    s.stop().await;
}

/// XEP-0060 §7.1.3.1, §7.2.3.1, §8.1.3.1, §8.2.3.3, §8.4.3.1, §8.5.3.2: only the account
/// publishes, retracts, creates, configures, purges and deletes on its PEP service; a contact
/// is `forbidden` (and to a node that does not exist, §7.1.3.3 `item-not-found`); nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_or_managing_another_accounts_pep_is_refused() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    publish(&mut a1, None, TUNE, Some("t1"), "alice's").await;

    let r = ask(
        &mut b1,
        &publish_xml(Some(ALICE), TUNE, Some("t1"), &entry("bob's"), &[]),
    )
    .await;
    assert_error(&r, "forbidden", None);
    assert_eq!(error_type(&r).as_deref(), Some("auth"), "{r}");
    let items = result_items(&ask(&mut b1, &items_xml(Some(ALICE), TUNE)).await);
    assert_eq!(payload_text(&items[0]).as_deref(), Some("alice's"));

    let r = ask(
        &mut b1,
        &publish_xml(Some(ALICE), MOOD, None, &entry("bob's"), &[]),
    )
    .await;
    assert_error(&r, "item-not-found", None);
    let r = ask(&mut a1, &items_xml(None, MOOD)).await;
    assert_error(&r, "item-not-found", None);

    for inner in [
        format!("<retract node='{TUNE}'><item id='t1'/></retract>"),
        format!("<create node='{MOOD}'/>"),
    ] {
        let r = ask(&mut b1, &ps("set", Some(ALICE), &inner)).await;
        assert_error(&r, "forbidden", None);
    }
    for (kind, inner) in [
        ("get", format!("<configure node='{TUNE}'/>")),
        (
            "set",
            format!(
                "<configure node='{TUNE}'>{}</configure>",
                form(NODE_CONFIG, &[("pubsub#access_model", "open")])
            ),
        ),
        ("set", format!("<purge node='{TUNE}'/>")),
        ("set", format!("<delete node='{TUNE}'/>")),
        ("get", format!("<affiliations node='{TUNE}'/>")),
        ("get", format!("<subscriptions node='{TUNE}'/>")),
    ] {
        let r = ask(&mut b1, &owner(kind, Some(ALICE), &inner)).await;
        assert_error(&r, "forbidden", None);
    }
    // Nothing changed.
    let x = get_config(&mut a1, None, TUNE).await;
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("presence")
    );
    let items = result_items(&ask(&mut b1, &items_xml(Some(ALICE), TUNE)).await);
    assert_eq!(ids(&items), ["t1"]);
    assert_eq!(payload_text(&items[0]).as_deref(), Some("alice's"));
    s.stop().await;
}

/// §8.1–§8.5 by the owner: create (named: empty result; again: `conflict`; instant: the
/// name is returned), the configuration form get/set (a bad value is `not-acceptable` and
/// changes nothing; `notify_config` tells the interested), purge and delete with their
/// notifications (to `+notify` contacts and explicit subscribers), delete with `<redirect/>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_creates_configures_purges_and_deletes() {
    const BLOG: &str = "urn:xmpp:microblog:0";
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut d1 = online(&s, "dave", "d1").await;
    subscribe_to(&mut d1, &mut a1).await;
    announce(&mut b1, &[BLOG]).await;

    let r = ask(
        &mut a1,
        &ps("set", None, &format!("<create node='{BLOG}'/>")),
    )
    .await;
    assert_result(&r);
    assert!(r.get_child("pubsub", PS).is_none(), "{r}");
    let r = ask(
        &mut a1,
        &ps("set", None, &format!("<create node='{BLOG}'/>")),
    )
    .await;
    assert_error(&r, "conflict", None);
    // §8.1.2 instant node.
    let r = ask(&mut a1, &ps("set", None, "<create/>")).await;
    assert_result(&r);
    let instant = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("create", PS))
        .and_then(|c| c.attr("node"))
        .unwrap_or_else(|| panic!("no instant node name in {r}"))
        .to_string();
    assert!(item_ids(&mut a1, None, &instant).await.is_empty());

    // §8.2
    let r = configure(
        &mut a1,
        None,
        BLOG,
        &[("pubsub#title", "My blog"), ("pubsub#max_items", "10")],
    )
    .await;
    assert_result(&r);
    let x = get_config(&mut a1, None, BLOG).await;
    assert_eq!(form_value(&x, "pubsub#title").as_deref(), Some("My blog"));
    assert_eq!(form_value(&x, "pubsub#max_items").as_deref(), Some("10"));
    assert!(disco_items(&mut b1, ALICE, None).await.contains(&(
        ALICE.to_string(),
        BLOG.to_string(),
        "My blog".to_string()
    )));
    // §8.2.5.4: not acceptable values change nothing.
    for bad in [
        [("pubsub#max_items", "100000"), ("pubsub#title", "changed")],
        [
            ("pubsub#access_model", "authorize"),
            ("pubsub#title", "changed"),
        ],
        [
            ("pubsub#access_model", "nobody"),
            ("pubsub#title", "changed"),
        ],
        [
            ("pubsub#persist_items", "maybe"),
            ("pubsub#title", "changed"),
        ],
    ] {
        let r = configure(&mut a1, None, BLOG, &bad).await;
        assert_error(&r, "not-acceptable", None);
    }
    let x = get_config(&mut a1, None, BLOG).await;
    assert_eq!(form_value(&x, "pubsub#title").as_deref(), Some("My blog"));
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("presence")
    );

    // dave subscribes explicitly (bare JID), his resource has no caps.
    let r = ask(
        &mut d1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{BLOG}' jid='dave@localhost'/>"),
        ),
    )
    .await;
    assert_result(&r);
    settle(&mut [&mut a1, &mut b1, &mut d1]).await;

    for i in 1..=3 {
        publish(
            &mut a1,
            None,
            BLOG,
            Some(&format!("post{i}")),
            &format!("post {i}"),
        )
        .await;
    }
    for c in [&mut b1, &mut d1] {
        for i in 1..=3 {
            let m = wait_event(c, ALICE, BLOG).await;
            assert_item_event(&m, &format!("post{i}"), &format!("post {i}"));
        }
    }

    // §8.2.4 notify_config: the new configuration goes out.
    let r = configure(
        &mut a1,
        None,
        BLOG,
        &[("pubsub#notify_config", "1"), ("pubsub#title", "Renamed")],
    )
    .await;
    assert_result(&r);
    for c in [&mut b1, &mut d1] {
        let m = c
            .wait_for(|m| is_event(m, ALICE, "configuration", BLOG))
            .await
            .unwrap_or_else(|e| panic!("no configuration notification: {e:#}"));
        let x = event_child(&m)
            .and_then(|c| c.get_child("x", XDATA))
            .unwrap_or_else(|| panic!("{m}"));
        assert_eq!(
            form_value(x, "pubsub#title").as_deref(),
            Some("Renamed"),
            "{m}"
        );
    }

    // §7.2.2.1 retract with notify.
    let r = ask(
        &mut a1,
        &ps(
            "set",
            None,
            &format!("<retract node='{BLOG}' notify='1'><item id='post1'/></retract>"),
        ),
    )
    .await;
    assert_result(&r);
    for c in [&mut b1, &mut d1] {
        let m = wait_event(c, ALICE, BLOG).await;
        let retracted = event_items(&m);
        assert_eq!(retracted.len(), 1, "{m}");
        assert!(retracted[0].is("retract", PS_EVENT), "{m}");
        assert_eq!(retracted[0].attr("id"), Some("post1"), "{m}");
    }
    assert_eq!(
        item_ids(&mut b1, Some(ALICE), BLOG).await,
        ["post2", "post3"]
    );

    // §8.5 purge.
    assert_result(
        &ask(
            &mut a1,
            &owner("set", None, &format!("<purge node='{BLOG}'/>")),
        )
        .await,
    );
    for c in [&mut b1, &mut d1] {
        let m = c
            .wait_for(|m| is_event(m, ALICE, "purge", BLOG))
            .await
            .unwrap_or_else(|e| panic!("no purge notification: {e:#}"));
        assert_eq!(m.attr("type"), Some("headline"), "{m}");
    }
    assert!(item_ids(&mut a1, None, BLOG).await.is_empty());
    assert!(item_ids(&mut b1, Some(ALICE), BLOG).await.is_empty());

    // §8.4 delete with redirect.
    let uri = "xmpp:alice@localhost?;node=urn:xmpp:microblog:1";
    let r = ask(
        &mut a1,
        &owner(
            "set",
            None,
            &format!("<delete node='{BLOG}'><redirect uri='{uri}'/></delete>"),
        ),
    )
    .await;
    assert_result(&r);
    for c in [&mut b1, &mut d1] {
        let m = c
            .wait_for(|m| is_event(m, ALICE, "delete", BLOG))
            .await
            .unwrap_or_else(|e| panic!("no delete notification: {e:#}"));
        let redirect = event_child(&m)
            .and_then(|d| d.get_child("redirect", PS_EVENT))
            .and_then(|r| r.attr("uri"));
        assert_eq!(redirect, Some(uri), "{m}");
    }
    let r = ask(&mut a1, &items_xml(None, BLOG)).await;
    assert_error(&r, "item-not-found", None);
    let r = ask(
        &mut a1,
        &owner("set", None, &format!("<delete node='{BLOG}'/>")),
    )
    .await;
    assert_error(&r, "item-not-found", None);
    assert!(
        !disco_items(&mut a1, ALICE, None)
            .await
            .iter()
            .any(|(_, n, _)| n == BLOG)
    );
    // dave's subscription went with the node: a new node of that name does not notify him.
    settle(&mut [&mut d1]).await;
    publish(&mut a1, None, BLOG, Some("new"), "new node").await;
    assert_quiet(&mut d1, "was subscribed to the deleted node only").await;
    s.stop().await;
}

/// §6.1, §6.2, §5.6, §5.7, §8.8 on a PEP node: a contact subscribes explicitly (and gets the
/// last item, §6.1.7), is notified without any caps, lists its subscriptions; the owner lists
/// them; refusals for a stranger, another JID and a missing node; unsubscribing ends it, and
/// a second unsubscribe is `unexpected-request` + `not-subscribed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_subscriptions_and_affiliations() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut c1 = online(&s, "carol", "c1").await;
    publish(&mut a1, None, TUNE, Some("t1"), "first").await;
    settle(&mut [&mut a1, &mut b1, &mut c1]).await;

    let r = ask(
        &mut b1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{TUNE}' jid='bob@localhost/b1'/>"),
        ),
    )
    .await;
    assert_result(&r);
    let sub = r
        .get_child("pubsub", PS)
        .and_then(|p| p.get_child("subscription", PS))
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(sub.attr("node"), Some(TUNE), "{r}");
    assert_eq!(sub.attr("jid"), Some("bob@localhost/b1"), "{r}");
    assert_eq!(sub.attr("subscription"), Some("subscribed"), "{r}");
    let subid = sub.attr("subid").unwrap_or_default().to_string();
    // §6.1.7: the last item follows.
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t1", "first");

    publish(&mut a1, None, TUNE, Some("t2"), "second").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t2", "second");

    // §5.6
    for inner in [
        "<subscriptions/>".to_string(),
        format!("<subscriptions node='{TUNE}'/>"),
    ] {
        let r = ask(&mut b1, &ps("get", Some(ALICE), &inner)).await;
        assert_result(&r);
        let subs: Vec<(String, String, String)> = r
            .get_child("pubsub", PS)
            .and_then(|p| p.get_child("subscriptions", PS))
            .unwrap_or_else(|| panic!("{r}"))
            .children()
            .map(|s| {
                let a = |n: &str| s.attr(n).unwrap_or_default().to_string();
                (a("node"), a("jid"), a("subscription"))
            })
            .collect();
        assert_eq!(
            subs,
            [(
                TUNE.to_string(),
                "bob@localhost/b1".to_string(),
                "subscribed".to_string()
            )],
            "{r}"
        );
    }
    // §5.7: bob has no affiliation with alice's nodes.
    let r = ask(&mut b1, &ps("get", Some(ALICE), "<affiliations/>")).await;
    assert_result(&r);
    assert_eq!(
        r.get_child("pubsub", PS)
            .and_then(|p| p.get_child("affiliations", PS))
            .map(|a| a.children().count()),
        Some(0),
        "{r}"
    );
    // §8.8.1: the owner sees it.
    let r = ask(
        &mut a1,
        &owner("get", None, &format!("<subscriptions node='{TUNE}'/>")),
    )
    .await;
    assert_result(&r);
    let listed: Vec<(String, String, String)> = r
        .get_child("pubsub", PS_OWNER)
        .and_then(|p| p.get_child("subscriptions", PS_OWNER))
        .unwrap_or_else(|| panic!("{r}"))
        .children()
        .map(|s| {
            let a = |n: &str| s.attr(n).unwrap_or_default().to_string();
            (a("jid"), a("subscription"), a("subid"))
        })
        .collect();
    assert_eq!(
        listed,
        [(
            "bob@localhost/b1".to_string(),
            "subscribed".to_string(),
            subid.clone()
        )],
        "{r}"
    );

    // Refusals.
    let r = ask(
        &mut b1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{TUNE}' jid='carol@localhost'/>"),
        ),
    )
    .await;
    assert_error(&r, "bad-request", Some("invalid-jid"));
    let r = ask(
        &mut c1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{TUNE}' jid='carol@localhost'/>"),
        ),
    )
    .await;
    assert_error(&r, "not-authorized", Some("presence-subscription-required"));
    let r = ask(
        &mut b1,
        &ps(
            "set",
            Some(ALICE),
            &format!("<subscribe node='{MOOD}' jid='bob@localhost'/>"),
        ),
    )
    .await;
    assert_error(&r, "item-not-found", None);

    // §6.2
    let unsubscribe = ps(
        "set",
        Some(ALICE),
        &format!("<unsubscribe node='{TUNE}' jid='bob@localhost/b1'/>"),
    );
    assert_result(&ask(&mut b1, &unsubscribe).await);
    publish(&mut a1, None, TUNE, Some("t3"), "third").await;
    assert_quiet(&mut b1, "unsubscribed").await;
    let r = ask(&mut b1, &unsubscribe).await;
    assert_error(&r, "unexpected-request", Some("not-subscribed"));
    s.stop().await;
}

/// §7.1.5: publish-options are preconditions on an existing node (met: published; not met:
/// `conflict` + `precondition-not-met`, nothing stored) and the configuration of a node the
/// publish creates; booleans compare by value (`true` is `1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_options_are_preconditions() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    publish(&mut a, None, TUNE, Some("t1"), "plain").await;
    publish_with(
        &mut a,
        None,
        TUNE,
        Some("t2"),
        "met",
        &[
            ("pubsub#access_model", "presence"),
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "1"),
        ],
    )
    .await;
    for options in [
        [("pubsub#access_model", "whitelist")],
        [("pubsub#max_items", "5")],
        [("pubsub#send_last_published_item", "never")],
    ] {
        let r = ask(
            &mut a,
            &publish_xml(None, TUNE, Some("t3"), &entry("not met"), &options),
        )
        .await;
        assert_error(&r, "conflict", Some("precondition-not-met"));
        assert_eq!(error_type(&r).as_deref(), Some("cancel"), "{r}");
    }
    assert_eq!(item_ids(&mut a, None, TUNE).await, ["t2"]);
    let x = get_config(&mut a, None, TUNE).await;
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("presence")
    );

    // Auto-create with options: the node gets them.
    publish_with(
        &mut a,
        None,
        PRIVATE,
        None,
        "private",
        &[
            ("pubsub#access_model", "whitelist"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
        ],
    )
    .await;
    let x = get_config(&mut a, None, PRIVATE).await;
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("whitelist")
    );
    assert_eq!(form_value(&x, "pubsub#max_items").as_deref(), Some("max"));
    assert_eq!(
        form_value(&x, "pubsub#send_last_published_item").as_deref(),
        Some("never")
    );
    // Republishing with the same options meets them (`max` is `max`).
    publish_with(
        &mut a,
        None,
        PRIVATE,
        None,
        "private 2",
        &[
            ("pubsub#access_model", "whitelist"),
            ("pubsub#max_items", "max"),
        ],
    )
    .await;
    assert_eq!(item_ids(&mut a, None, PRIVATE).await.len(), 2);

    // Options a PEP node cannot have, or values that do not parse: no node is created.
    for (node, options) in [
        (
            "urn:canto:test:authorize",
            ("pubsub#access_model", "authorize"),
        ),
        ("urn:canto:test:bad", ("pubsub#max_items", "lots")),
    ] {
        let r = ask(
            &mut a,
            &publish_xml(None, node, None, &entry("x"), &[options]),
        )
        .await;
        assert_eq!(r.attr("type"), Some("error"), "{r}");
        let r = ask(&mut a, &items_xml(None, node)).await;
        assert_error(&r, "item-not-found", None);
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits and bad input.
// ---------------------------------------------------------------------------------------------

/// `[pep]` limits: a payload over `max_item_bytes` is `not-acceptable` + `payload-too-big`
/// (§7.1.3.4) and creates nothing; node names and item ids over `max_id_bytes` are
/// `not-acceptable`; past `max_nodes` creating (explicitly or by publishing) is
/// `not-allowed` + `max-nodes-exceeded`, until a node is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_count_limits() {
    let mut config = test_config();
    config
        .set_section("pep", "max_item_bytes = 2048\nmax_nodes = 3")
        .unwrap_or_else(|e| panic!("{e}"));
    let s = server_with(config).await;
    let mut a = s.login("alice", "pw", "a1").await;

    let r = ask(
        &mut a,
        &publish_xml(None, TUNE, Some("big"), &entry(&"x".repeat(3000)), &[]),
    )
    .await;
    assert_error(&r, "not-acceptable", Some("payload-too-big"));
    let r = ask(&mut a, &items_xml(None, TUNE)).await;
    assert_error(&r, "item-not-found", None);
    // Under the limit.
    publish(&mut a, None, TUNE, Some("fits"), &"x".repeat(1500)).await;

    let long = "n".repeat(1100);
    let r = ask(&mut a, &publish_xml(None, &long, None, &entry("x"), &[])).await;
    assert_error(&r, "not-acceptable", None);
    let r = ask(
        &mut a,
        &publish_xml(None, TUNE, Some(&long), &entry("x"), &[]),
    )
    .await;
    assert_error(&r, "not-acceptable", None);
    assert_eq!(item_ids(&mut a, None, TUNE).await, ["fits"]);

    // Three nodes at most: TUNE and two more.
    assert_result(
        &ask(
            &mut a,
            &ps("set", None, &format!("<create node='{MOOD}'/>")),
        )
        .await,
    );
    publish(&mut a, None, NICK, Some("n"), "al").await;
    let r = ask(
        &mut a,
        &ps("set", None, "<create node='urn:canto:test:four'/>"),
    )
    .await;
    assert_error(&r, "not-allowed", Some("max-nodes-exceeded"));
    let r = ask(
        &mut a,
        &publish_xml(None, "urn:canto:test:four", None, &entry("x"), &[]),
    )
    .await;
    assert_error(&r, "not-allowed", Some("max-nodes-exceeded"));
    assert_eq!(disco_items(&mut a, ALICE, None).await.len(), 3);
    // One deleted: room again.
    assert_result(
        &ask(
            &mut a,
            &owner("set", None, &format!("<delete node='{MOOD}'/>")),
        )
        .await,
    );
    publish(&mut a, None, "urn:canto:test:four", Some("x"), "x").await;
    s.stop().await;
}

/// Malformed requests get the errors XEP-0060 gives them: no node (`nodeid-required`), two
/// items or two payloads (`invalid-payload`), no item (`item-required`), an item without
/// payload (`payload-required`), a retract without item (`item-required`), a subscribe
/// without jid (`invalid-jid`), no action or two; and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    publish(&mut a, None, TUNE, Some("t1"), "kept").await;
    let cases: Vec<(String, &str, &str, Option<&str>)> = vec![
        (
            ps(
                "set",
                None,
                &format!("<publish><item>{}</item></publish>", entry("x")),
            ),
            "set",
            "bad-request",
            Some("nodeid-required"),
        ),
        (
            ps(
                "set",
                None,
                &format!(
                    "<publish node='{MOOD}'><item id='1'>{}</item><item id='2'>{}</item></publish>",
                    entry("1"),
                    entry("2")
                ),
            ),
            "set",
            "bad-request",
            Some("invalid-payload"),
        ),
        (
            ps(
                "set",
                None,
                &format!(
                    "<publish node='{MOOD}'><item id='1'>{}{}</item></publish>",
                    entry("1"),
                    entry("2")
                ),
            ),
            "set",
            "bad-request",
            Some("invalid-payload"),
        ),
        (
            ps("set", None, &format!("<publish node='{TUNE}'/>")),
            "set",
            "bad-request",
            Some("item-required"),
        ),
        (
            ps(
                "set",
                None,
                &format!("<publish node='{TUNE}'><item id='e'/></publish>"),
            ),
            "set",
            "bad-request",
            Some("payload-required"),
        ),
        (
            ps("set", None, &format!("<retract node='{TUNE}'/>")),
            "set",
            "bad-request",
            Some("item-required"),
        ),
        (
            ps("get", None, "<items/>"),
            "get",
            "bad-request",
            Some("nodeid-required"),
        ),
        (
            ps("set", None, &format!("<subscribe node='{TUNE}'/>")),
            "set",
            "bad-request",
            Some("invalid-jid"),
        ),
        (
            owner("set", None, "<delete/>"),
            "set",
            "bad-request",
            Some("nodeid-required"),
        ),
        (ps("get", None, ""), "get", "bad-request", None),
        (
            ps(
                "get",
                None,
                &format!("<items node='{TUNE}'/><subscriptions/>"),
            ),
            "get",
            "bad-request",
            None,
        ),
    ];
    for (xml, _, condition, app) in &cases {
        let r = ask(&mut a, xml).await;
        assert_error(&r, condition, *app);
        assert_eq!(error_type(&r).as_deref(), Some("modify"), "{xml}: {r}");
    }
    // Nothing was created or changed.
    let r = ask(&mut a, &items_xml(None, MOOD)).await;
    assert_error(&r, "item-not-found", None);
    let items = result_items(&ask(&mut a, &items_xml(None, TUNE)).await);
    assert_eq!(ids(&items), ["t1"]);
    assert_eq!(payload_text(&items[0]).as_deref(), Some("kept"));
    assert_alive(&mut a).await;
    s.stop().await;
}

/// A `publisher` attribute a client puts on its item is not kept: with the default
/// `itemreply` there is none; with `itemreply = publisher` it is the real publisher's bare
/// JID (XEP-0060 §7.1.2, §16.4.3), in retrieval and notifications alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_publisher_is_not_kept() {
    let s = server().await;
    let mut a1 = s.login("alice", "pw", "a1").await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    announce(&mut a2, &[MOOD]).await;
    let forged = |node: &str, options: &str| {
        ps(
            "set",
            None,
            &format!(
                "<publish node='{node}'><item id='f' publisher='mallory@localhost'>{}</item></publish>{options}",
                entry("forged")
            ),
        )
    };
    assert_result(&ask(&mut a1, &forged(TUNE, "")).await);
    let items = result_items(&ask(&mut a1, &items_xml(None, TUNE)).await);
    assert_eq!(items[0].attr("publisher"), None, "{:?}", items);

    let options = format!(
        "<publish-options>{}</publish-options>",
        form(PUBLISH_OPTIONS, &[("pubsub#itemreply", "publisher")])
    );
    assert_result(&ask(&mut a1, &forged(MOOD, &options)).await);
    let items = result_items(&ask(&mut a1, &items_xml(None, MOOD)).await);
    assert_eq!(items[0].attr("publisher"), Some(ALICE), "{:?}", items);
    let m = wait_event(&mut a2, ALICE, MOOD).await;
    assert_eq!(event_items(&m)[0].attr("publisher"), Some(ALICE), "{m}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Disco, persistence, account deletion.
// ---------------------------------------------------------------------------------------------

/// XEP-0163 §6: the account is a PEP service (identity pubsub/pep, the pubsub features);
/// disco#items lists its nodes the requester may see (all for the owner, none for a
/// stranger, XEP-0030 §8); a node's disco#info has the leaf identity and the meta-data form
/// (XEP-0060 §5.3, §5.4); its disco#items the item ids (§5.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_disco_shows_pep_and_the_visible_nodes() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    let mut c1 = online(&s, "carol", "c1").await;
    publish(&mut a1, None, TUNE, Some("t1"), "tune").await;
    publish_with(
        &mut a1,
        None,
        PRIVATE,
        Some("p1"),
        "private",
        &[("pubsub#access_model", "whitelist")],
    )
    .await;
    assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#title", "Now playing")]).await);

    for c in [&mut a1, &mut b1] {
        let r = disco_info(c, ALICE, None).await;
        assert_result(&r);
        let ids = identities(&r);
        assert!(
            ids.contains(&("account".into(), "registered".into())),
            "{r}"
        );
        assert!(ids.contains(&("pubsub".into(), "pep".into())), "{r}");
        let f = features(&r);
        for want in [
            "",
            "#publish",
            "#auto-create",
            "#publish-options",
            "#retrieve-items",
        ]
        .iter()
        .chain(&[
            "#access-presence",
            "#access-whitelist",
            "#last-published",
            "#rsm",
        ]) {
            assert!(
                f.contains(&format!("{PS}{want}")),
                "{PS}{want} missing: {r}"
            );
        }
        // PEP nodes do not take the authorize model.
        assert!(!f.contains(&format!("{PS}#access-authorize")), "{r}");
    }
    let r = disco_info(&mut c1, ALICE, None).await;
    assert_error(&r, "service-unavailable", None);

    let mut own: Vec<(String, String, String)> = disco_items(&mut a1, ALICE, None).await;
    own.sort();
    assert_eq!(
        own,
        [
            (ALICE.into(), TUNE.into(), "Now playing".into()),
            (ALICE.into(), PRIVATE.into(), String::new()),
        ]
    );
    assert_eq!(
        disco_items(&mut b1, ALICE, None).await,
        [(ALICE.into(), TUNE.into(), "Now playing".into())]
    );
    assert!(disco_items(&mut c1, ALICE, None).await.is_empty());

    let r = disco_info(&mut b1, ALICE, Some(TUNE)).await;
    assert_result(&r);
    assert_eq!(identities(&r), [("pubsub".into(), "leaf".into())], "{r}");
    let x = meta_data(&r);
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("presence"),
        "{r}"
    );
    assert_eq!(
        form_value(&x, "pubsub#title").as_deref(),
        Some("Now playing")
    );
    assert_eq!(
        form_values(&x, "pubsub#owner"),
        Some(vec![ALICE.to_string()])
    );
    let r = disco_info(&mut a1, ALICE, Some(PRIVATE)).await;
    let x = meta_data(&r);
    assert_eq!(
        form_value(&x, "pubsub#access_model").as_deref(),
        Some("whitelist")
    );
    let r = disco_info(&mut b1, ALICE, Some("urn:canto:test:missing")).await;
    assert_error(&r, "item-not-found", None);

    assert_eq!(
        disco_items(&mut b1, ALICE, Some(TUNE)).await,
        [(ALICE.into(), String::new(), "t1".into())]
    );
    s.stop().await;
}

/// A server on the SQLite database at `path` (created if missing), which outlives it.
pub(crate) async fn sqlite_server(path: &std::path::Path) -> TestServer {
    let storage = canto_storage::Storage::open(&canto_storage::Backend::Sqlite {
        path: path.to_path_buf(),
    })
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config = test_config();
    config.storage.backend = "sqlite".into();
    TestServer::with_storage(config, storage).await
}

/// With SQLite storage, nodes, their configuration and items outlive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_data_survives_a_restart_on_sqlite() {
    let db = ScratchDir::new("pep-sqlite");
    let path = db.path("canto.sqlite");
    {
        let s = sqlite_server(&path).await;
        s.add_user("alice", "pw").await;
        s.add_user("bob", "pw").await;
        let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
        for i in 1..=3 {
            publish_with(
                &mut a1,
                None,
                TUNE,
                Some(&format!("t{i}")),
                &format!("tune {i}"),
                &[("pubsub#max_items", "5")],
            )
            .await;
        }
        assert_result(&configure(&mut a1, None, TUNE, &[("pubsub#title", "Kept")]).await);
        assert_result(
            &ask(
                &mut b1,
                &ps(
                    "set",
                    Some(ALICE),
                    &format!("<subscribe node='{TUNE}' jid='bob@localhost'/>"),
                ),
            )
            .await,
        );
        drop((a1, b1));
        s.stop().await;
    }
    let s = sqlite_server(&path).await;
    let mut a1 = online(&s, "alice", "a1").await;
    let items = result_items(&ask(&mut a1, &items_xml(None, TUNE)).await);
    assert_eq!(ids(&items), ["t1", "t2", "t3"]);
    assert_eq!(payload_text(&items[1]).as_deref(), Some("tune 2"));
    let x = get_config(&mut a1, None, TUNE).await;
    assert_eq!(form_value(&x, "pubsub#title").as_deref(), Some("Kept"));
    assert_eq!(form_value(&x, "pubsub#max_items").as_deref(), Some("5"));
    // bob's explicit subscription is still there: he is notified without caps.
    let mut b1 = online(&s, "bob", "b1").await;
    settle(&mut [&mut a1, &mut b1]).await;
    publish(&mut a1, None, TUNE, Some("t4"), "after restart").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t4", "after restart");
    s.stop().await;
}

/// Deleting an account (`canto user del`: `Server::delete_account`) removes its PEP nodes
/// and items; an account created again under the name starts empty; others keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_deletion_removes_pep_data() {
    let s = server().await;
    let mut a1 = online(&s, "alice", "a1").await;
    let mut b1 = online(&s, "bob", "b1").await;
    publish(&mut a1, None, TUNE, Some("t1"), "alice's").await;
    publish(&mut b1, None, TUNE, Some("b1"), "bob's").await;
    let alice = canto_stanza::BareJid::new(ALICE).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.running
            .server
            .delete_account(&alice)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    s.wait_unbound("alice@localhost/a1").await;
    drop(a1);

    s.add_user("alice", "pw").await;
    let mut a1 = s.login("alice", "pw", "a1").await;
    let r = ask(&mut a1, &items_xml(None, TUNE)).await;
    assert_error(&r, "item-not-found", None);
    assert!(disco_items(&mut a1, ALICE, None).await.is_empty());
    let r = ask(&mut a1, &ps("get", None, "<affiliations/>")).await;
    assert_eq!(
        r.get_child("pubsub", PS)
            .and_then(|p| p.get_child("affiliations", PS))
            .map(|a| a.children().count()),
        Some(0),
        "{r}"
    );
    assert_eq!(item_ids(&mut b1, None, TUNE).await, ["b1"]);
    s.stop().await;
}

/// A client announcing ever new caps `ver`s without answering is asked once at a time (one
/// disco#info query in flight per resource): it cannot use up the queries every client shares.
/// Once it answers, a new `ver` is asked about again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caps_query_in_flight_per_resource() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    for i in 0..5 {
        a.send(&format!(
            "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='bogus{i}='/></presence>"
        ))
        .await;
    }
    let got = a.drain().await;
    let queries: Vec<&Element> = got
        .iter()
        .filter(|e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.attr("id").is_some_and(|i| i.starts_with("caps-"))
        })
        .collect();
    assert_eq!(queries.len(), 1, "{got:?}");
    // Answering frees the slot: the next unknown ver is asked about.
    let id = queries[0].attr("id").unwrap_or_default().to_string();
    a.send(&format!(
        "<iq type='result' id='{id}' to='{HOST}'><query xmlns='{DISCO_INFO}'/></iq>"
    ))
    .await;
    a.sync().await;
    a.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='another='/></presence>"
    ))
    .await;
    let q = a
        .wait_for(|e| e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with("caps-")))
        .await
        .unwrap_or_else(|e| panic!("no second query: {e:#}"));
    assert!(
        q.get_child("query", DISCO_INFO)
            .and_then(|x| x.attr("node"))
            .is_some_and(|n| n.ends_with("#another=")),
        "{q}"
    );
    s.stop().await;
}

/// XEP-0163 §4.3.1: the last items go out when a resource first says what it wants, not at
/// every caps change: a later presence asking for one more node changes what the resource is
/// notified of, but sends that node's last item no more (and so costs no store reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caps_change_changes_interest_without_resending_last_items() {
    let s = server().await;
    let (mut a1, mut b1) = alice_and_contact_bob(&s).await;
    publish(&mut a1, None, TUNE, Some("t1"), "Roundabout").await;
    announce(&mut b1, &[MOOD]).await;
    settle(&mut [&mut a1, &mut b1]).await;
    // Now tune too: a new hash, which the server asks about.
    let features = caps_features(&[MOOD, TUNE]);
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let ver = canto_proto::caps::ver(&[("client", "pc", "", "Canto tests")], &refs);
    b1.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    ))
    .await;
    let q = b1
        .wait_for(|e| e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with("caps-")))
        .await
        .unwrap_or_else(|e| panic!("no caps query: {e:#}"));
    let id = q.attr("id").unwrap_or_default().to_string();
    let node = format!("{CAPS_NODE}#{ver}");
    let mut answer = format!(
        "<iq type='result' id='{id}' to='{HOST}'><query xmlns='{DISCO_INFO}' node='{node}'><identity category='client' type='pc' name='Canto tests'/>"
    );
    for f in &features {
        answer.push_str(&format!("<feature var='{f}'/>"));
    }
    answer.push_str("</query></iq>");
    b1.send(&answer).await;
    assert_quiet(&mut b1, "a caps change is no initial presence").await;
    // The new interest is in force.
    publish(&mut a1, None, TUNE, Some("t2"), "Heart of the Sunrise").await;
    let m = wait_event(&mut b1, ALICE, TUNE).await;
    assert_item_event(&m, "t2", "Heart of the Sunrise");
    s.stop().await;
}
