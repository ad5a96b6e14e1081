//! XEP-0045 multi-user chat end to end, the administrative side (docs/muc.md is the contract,
//! XEP-0045 and Prosody's behaviour where it is silent): affiliation and role lists, kick, ban,
//! voice, moderator status, members-only removal, the last owner, voice requests, registration
//! and reserved nicknames; mediated and direct invitations; the `[muc]` limits and bad input;
//! persistent rooms across a restart on SQLite.
//!
//! Every helper here is private to this file (tests/tests/e2e/muc.rs has its own).

use canto_tests::*;
use canto_xml::Element;

const SVC: &str = "conference.localhost";
const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const MUC_REQUEST: &str = "http://jabber.org/protocol/muc#request";
const MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";
const IQ_REGISTER: &str = "jabber:iq:register";
const XDATA: &str = "jabber:x:data";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CONFERENCE: &str = "jabber:x:conference";
const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const DELAY: &str = "urn:xmpp:delay";
const CLIENT: &str = "jabber:client";
const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "eve", "frank"];

// ---------------------------------------------------------------------------------------------
// Servers and sessions.
// ---------------------------------------------------------------------------------------------

/// The test configuration with the `muc` module on.
fn muc_config() -> canto_core::Config {
    let mut c = test_config();
    if !c.modules.iter().any(|m| m == "muc") {
        c.modules.push("muc".into());
    }
    c
}

/// [`muc_config`] with a `[muc]` section.
fn muc_config_with(section: &str) -> canto_core::Config {
    let mut c = muc_config();
    c.set_section("muc", section)
        .unwrap_or_else(|e| panic!("[muc] {section}: {e}"));
    c
}

async fn start(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    for u in USERS {
        s.add_user(u, "pw").await;
    }
    s
}

/// Logs `name@localhost/r` in with initial presence (messages to the bare JID reach it).
async fn user(s: &TestServer, name: &str) -> Client {
    let mut c = s.login(name, "pw", "r").await;
    c.send("<presence/>").await;
    let _ = c.drain().await;
    c
}

fn jid(user: &str) -> String {
    format!("{user}@{HOST}")
}

fn full(user: &str) -> String {
    format!("{user}@{HOST}/r")
}

fn room(name: &str) -> String {
    format!("{name}@{SVC}")
}

fn occ(name: &str, nick: &str) -> String {
    format!("{name}@{SVC}/{nick}")
}

fn bare(j: &str) -> &str {
    j.split('/').next().unwrap_or(j)
}

// ---------------------------------------------------------------------------------------------
// Reading stanzas.
// ---------------------------------------------------------------------------------------------

async fn wait(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    c.wait_for(pred)
        .await
        .unwrap_or_else(|e| panic!("waiting for {what}: {e:#}"))
}

/// Sends an IQ and returns its reply; what arrives before it stays queued.
async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq_keep(xml)
        .await
        .unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

fn assert_result(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

fn assert_error(r: &Element, condition: &str, kind: &str) {
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(error_condition(r).as_deref(), Some(condition), "{r}");
    assert_eq!(error_type(r).as_deref(), Some(kind), "{r}");
}

/// The error is one of `allowed` (condition, type) pairs.
fn assert_error_among(r: &Element, allowed: &[(&str, &str)]) {
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    let got = (
        error_condition(r).unwrap_or_default(),
        error_type(r).unwrap_or_default(),
    );
    assert!(
        allowed.iter().any(|(c, t)| got.0 == *c && got.1 == *t),
        "{got:?} not among {allowed:?}: {r}"
    );
}

fn user_x(e: &Element) -> Option<&Element> {
    e.get_child("x", MUC_USER)
}

fn has_status(e: &Element, code: &str) -> bool {
    user_x(e).is_some_and(|x| {
        x.children()
            .any(|s| s.is("status", MUC_USER) && s.attr("code") == Some(code))
    })
}

fn item_of(e: &Element) -> Option<&Element> {
    user_x(e)?.get_child("item", MUC_USER)
}

fn item_attr(e: &Element, name: &str) -> Option<String> {
    item_of(e).and_then(|i| i.attr(name)).map(str::to_string)
}

fn item_reason(e: &Element) -> Option<String> {
    item_of(e)?
        .get_child("reason", MUC_USER)
        .map(|r| r.text().trim().to_string())
}

fn body_of(e: &Element) -> Option<String> {
    e.get_child("body", CLIENT).map(|b| b.text())
}

fn is_presence_from(e: &Element, from: &str) -> bool {
    e.name() == "presence" && e.attr("from") == Some(from)
}

fn is_unavailable(e: &Element) -> bool {
    e.attr("type") == Some("unavailable")
}

fn is_groupchat(e: &Element, from: &str, body: &str) -> bool {
    e.name() == "message"
        && e.attr("type") == Some("groupchat")
        && e.attr("from") == Some(from)
        && body_of(e).as_deref() == Some(body)
}

fn is_error_message(e: &Element, id: &str) -> bool {
    e.name() == "message" && e.attr("type") == Some("error") && e.attr("id") == Some(id)
}

/// A message from the room itself (not from an occupant) carrying a muc#user `<item/>`.
fn is_room_item_message(e: &Element, name: &str) -> bool {
    e.name() == "message" && e.attr("from") == Some(room(name).as_str()) && item_of(e).is_some()
}

/// Values of a data form field.
fn field_values(x: &Element, var: &str) -> Vec<String> {
    x.children()
        .filter(|f| f.is("field", XDATA) && f.attr("var") == Some(var))
        .flat_map(|f| {
            f.children()
                .filter(|v| v.is("value", XDATA))
                .map(|v| v.text())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn field_value(x: &Element, var: &str) -> Option<String> {
    field_values(x, var).into_iter().next()
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1") | Some("true"))
}

/// A submitted data form of `form_type` with one value per field.
fn submit_form(form_type: &str, fields: &[(&str, &str)]) -> String {
    let mut s = format!(
        "<x xmlns='{XDATA}' type='submit'><field var='FORM_TYPE'><value>{form_type}</value></field>"
    );
    for (var, value) in fields {
        s.push_str(&format!(
            "<field var='{var}'><value>{}</value></field>",
            canto_xml::escape(value)
        ));
    }
    s.push_str("</x>");
    s
}

// ---------------------------------------------------------------------------------------------
// Room use cases.
// ---------------------------------------------------------------------------------------------

/// What a successful join brought: the self-presence and the subject message.
struct Joined {
    own: Element,
    subject: Element,
}

/// Sends a join presence (with `inner` inside the muc `<x/>`) and reads up to the subject
/// message (XEP-0045 §7.2: presences, self-presence, history, subject); `Err` with the error
/// presence if the join is refused.
async fn try_enter(c: &mut Client, name: &str, nick: &str, inner: &str) -> Result<Joined, Element> {
    let to = occ(name, nick);
    c.send(&format!(
        "<presence to='{}'><x xmlns='{MUC}'>{inner}</x></presence>",
        canto_xml::escape(&to)
    ))
    .await;
    let room_jid = room(name);
    let mut own = None;
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|err| panic!("joining {to}: {err:#}"));
        if e.name() == "presence" && e.attr("type") == Some("error") {
            return Err(e);
        }
        if is_presence_from(&e, &to) && !is_unavailable(&e) && has_status(&e, "110") {
            own = Some(e);
            continue;
        }
        let from_room = e.attr("from").is_some_and(|f| bare(f) == room_jid.as_str());
        if e.name() == "message"
            && from_room
            && e.attr("type") == Some("groupchat")
            && e.get_child("subject", CLIENT).is_some()
            && e.get_child("delay", DELAY).is_none()
        {
            let own = own.unwrap_or_else(|| panic!("subject before the self-presence: {e}"));
            return Ok(Joined { own, subject: e });
        }
    }
}

async fn enter(c: &mut Client, name: &str, nick: &str) -> Joined {
    enter_with(c, name, nick, "").await
}

async fn enter_with(c: &mut Client, name: &str, nick: &str, inner: &str) -> Joined {
    try_enter(c, name, nick, inner)
        .await
        .unwrap_or_else(|e| panic!("{} could not join {name} as {nick}: {e}", c.full_jid()))
}

/// A join that must be refused; returns the error presence.
async fn refused(c: &mut Client, name: &str, nick: &str) -> Element {
    match try_enter(c, name, nick, "").await {
        Ok(j) => panic!(
            "{} joined {name} as {nick} but should not: {}",
            c.full_jid(),
            j.own
        ),
        Err(e) => e,
    }
}

async fn leave(c: &mut Client, name: &str, nick: &str) {
    let from = occ(name, nick);
    c.send(&format!("<presence type='unavailable' to='{from}'/>"))
        .await;
    wait(c, "own unavailable presence", |e| {
        is_presence_from(e, &from) && is_unavailable(e)
    })
    .await;
}

/// The muc#owner configuration submit (`fields` empty: an instant room).
async fn configure(c: &mut Client, name: &str, fields: &[(&str, &str)]) -> Element {
    let form = if fields.is_empty() {
        format!("<x xmlns='{XDATA}' type='submit'/>")
    } else {
        submit_form(ROOMCONFIG, fields)
    };
    ask(
        c,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{MUC_OWNER}'>{form}</query></iq>",
            room(name)
        ),
    )
    .await
}

/// The room's configuration form (as an owner).
async fn config_form(c: &mut Client, name: &str) -> Element {
    let r = ask(
        c,
        &format!(
            "<iq type='get' id='{{id}}' to='{}'><query xmlns='{MUC_OWNER}'/></iq>",
            room(name)
        ),
    )
    .await;
    assert_result(&r);
    r.get_child("query", MUC_OWNER)
        .and_then(|q| q.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no configuration form: {r}"))
        .clone()
}

/// Creates `name` as its owner under `nick` (status 201, XEP-0045 §10.1.2) and unlocks it
/// with `fields`.
async fn create(c: &mut Client, name: &str, nick: &str, fields: &[(&str, &str)]) {
    let j = enter(c, name, nick).await;
    assert!(has_status(&j.own, "201"), "{name} was not new: {}", j.own);
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("owner"));
    let r = configure(c, name, fields).await;
    assert_result(&r);
}

/// A muc#admin set with `items`.
async fn admin(c: &mut Client, name: &str, items: &str) -> Element {
    ask(
        c,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{MUC_ADMIN}'>{items}</query></iq>",
            room(name)
        ),
    )
    .await
}

/// A muc#admin get for the items with `attr` (`affiliation='member'`, `role='visitor'`).
async fn admin_get(c: &mut Client, name: &str, attr: &str) -> Element {
    ask(
        c,
        &format!(
            "<iq type='get' id='{{id}}' to='{}'><query xmlns='{MUC_ADMIN}'><item {attr}/></query></iq>",
            room(name)
        ),
    )
    .await
}

fn items(r: &Element) -> Vec<Element> {
    r.get_child("query", MUC_ADMIN)
        .unwrap_or_else(|| panic!("no muc#admin query: {r}"))
        .children()
        .filter(|i| i.is("item", MUC_ADMIN))
        .cloned()
        .collect()
}

/// The bare JIDs of an affiliation list, sorted; every item has that affiliation.
async fn affiliated(c: &mut Client, name: &str, affiliation: &str) -> Vec<String> {
    let r = admin_get(c, name, &format!("affiliation='{affiliation}'")).await;
    assert_result(&r);
    let mut v = Vec::new();
    for i in items(&r) {
        assert_eq!(i.attr("affiliation"), Some(affiliation), "{r}");
        let j = i.attr("jid").unwrap_or_else(|| panic!("no jid: {r}"));
        assert!(!j.contains('/'), "a list gives bare JIDs: {r}");
        v.push(j.to_string());
    }
    v.sort();
    v
}

fn set_affiliation(who: &str, affiliation: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => {
            format!("<item affiliation='{affiliation}' jid='{who}'><reason>{r}</reason></item>")
        }
        None => format!("<item affiliation='{affiliation}' jid='{who}'/>"),
    }
}

fn set_role(nick: &str, role: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("<item nick='{nick}' role='{role}'><reason>{r}</reason></item>"),
        None => format!("<item nick='{nick}' role='{role}'/>"),
    }
}

async fn say(c: &mut Client, name: &str, body: &str) {
    c.send(&format!(
        "<message to='{}' type='groupchat'><body>{body}</body></message>",
        room(name)
    ))
    .await;
}

/// `speaker` (in `name` as `nick`) says something new; it comes back to them and reaches every
/// listener, from the occupant JID.
async fn assert_speaks(
    speaker: &mut Client,
    name: &str,
    nick: &str,
    listeners: &mut [&mut Client],
) -> Element {
    let body = format!("news {:08x}", rand::random::<u32>());
    say(speaker, name, &body).await;
    let from = occ(name, nick);
    let own = wait(speaker, "own groupchat reflected", |e| {
        is_groupchat(e, &from, &body)
    })
    .await;
    for l in listeners.iter_mut() {
        wait(l, &format!("{body} from {from}"), |e| {
            is_groupchat(e, &from, &body)
        })
        .await;
    }
    own
}

/// A groupchat message that must be refused with `condition`/`kind`, and reach nobody of
/// `listeners`.
async fn assert_cannot_say(
    c: &mut Client,
    name: &str,
    condition: &str,
    kind: &str,
    listeners: &mut [&mut Client],
) {
    let id = format!("m{:08x}", rand::random::<u32>());
    let body = format!("not heard {id}");
    c.send(&format!(
        "<message id='{id}' to='{}' type='groupchat'><body>{body}</body></message>",
        room(name)
    ))
    .await;
    let e = wait(c, "the groupchat error", |e| is_error_message(e, &id)).await;
    assert_error(&e, condition, kind);
    for l in listeners.iter_mut() {
        let got = l.drain().await;
        assert!(
            !got.iter()
                .any(|e| body_of(e).as_deref() == Some(body.as_str())),
            "a refused message was delivered: {got:?}"
        );
    }
}

fn invite_of(e: &Element) -> Option<&Element> {
    user_x(e)?.get_child("invite", MUC_USER)
}

fn decline_of(e: &Element) -> Option<&Element> {
    user_x(e)?.get_child("decline", MUC_USER)
}

async fn invite(c: &mut Client, name: &str, id: &str, to: &str, reason: &str) {
    c.send(&format!(
        "<message id='{id}' to='{}'><x xmlns='{MUC_USER}'><invite to='{to}'><reason>{reason}</reason></invite></x></message>",
        room(name)
    ))
    .await;
}

async fn wait_invite(c: &mut Client, name: &str) -> Element {
    let from = room(name);
    wait(c, "an invitation from the room", |e| {
        e.name() == "message" && e.attr("from") == Some(from.as_str()) && invite_of(e).is_some()
    })
    .await
}

/// The reserved nickname the room gives for `x-roomuser-item` (XEP-0045 §7.12).
async fn reserved_nick(c: &mut Client, name: &str) -> Option<String> {
    let r = ask(
        c,
        &format!(
            "<iq type='get' id='{{id}}' to='{}'><query xmlns='{DISCO_INFO}' node='x-roomuser-item'/></iq>",
            room(name)
        ),
    )
    .await;
    assert_result(&r);
    let q = r
        .get_child("query", DISCO_INFO)
        .unwrap_or_else(|| panic!("no disco#info query: {r}"));
    let ids: Vec<&Element> = q
        .children()
        .filter(|i| i.is("identity", DISCO_INFO))
        .collect();
    assert!(ids.len() <= 1, "{r}");
    ids.first().map(|i| {
        assert_eq!(i.attr("category"), Some("conference"), "{r}");
        assert_eq!(i.attr("type"), Some("text"), "{r}");
        i.attr("name").unwrap_or_default().to_string()
    })
}

async fn register(c: &mut Client, name: &str, nick: &str) -> Element {
    ask(
        c,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{IQ_REGISTER}'>{}</query></iq>",
            room(name),
            submit_form(MUC_REGISTER, &[("muc#register_roomnick", nick)])
        ),
    )
    .await
}

async fn register_get(c: &mut Client, name: &str) -> Element {
    ask(
        c,
        &format!(
            "<iq type='get' id='{{id}}' to='{}'><query xmlns='{IQ_REGISTER}'/></iq>",
            room(name)
        ),
    )
    .await
}

async fn disco_features(c: &mut Client, name: &str) -> Vec<String> {
    let r = ask(
        c,
        &format!(
            "<iq type='get' id='{{id}}' to='{}'><query xmlns='{DISCO_INFO}'/></iq>",
            room(name)
        ),
    )
    .await;
    assert_result(&r);
    r.get_child("query", DISCO_INFO)
        .unwrap_or_else(|| panic!("{r}"))
        .children()
        .filter(|f| f.is("feature", DISCO_INFO))
        .filter_map(|f| f.attr("var"))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 3. Affiliations and roles.
// ---------------------------------------------------------------------------------------------

/// XEP-0045 §9.2, §9.3, §9.5, §10.5, §10.6, §10.8: an owner sets member, admin, owner and
/// outcast affiliations (with reasons), occupants see the new affiliation in presence, each
/// list reads back by affiliation with bare JIDs (the ban list with its reason), deltas remove;
/// a participant may not read or write lists, an admin may not read or write the owner list
/// nor write the admin list (`forbidden`, auth), and nothing changes when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affiliation_lists_are_set_and_read_with_reasons() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "hall", "alice", &[]).await;
    enter(&mut b, "hall", "bob").await;
    enter(&mut c, "hall", "carol").await;

    // §9.3: membership for an occupant shows in their presence to everyone.
    let r = admin(
        &mut a,
        "hall",
        &set_affiliation(&jid("bob"), "member", Some("a regular")),
    )
    .await;
    assert_result(&r);
    let bob = occ("hall", "bob");
    let p = wait(&mut c, "bob's membership presence", |e| {
        is_presence_from(e, &bob) && item_attr(e, "affiliation").as_deref() == Some("member")
    })
    .await;
    assert!(!is_unavailable(&p), "a member of an open room stays: {p}");
    assert_eq!(item_attr(&p, "role").as_deref(), Some("participant"), "{p}");

    // §10.6: an admin in the room becomes a moderator.
    assert_result(
        &admin(
            &mut a,
            "hall",
            &set_affiliation(&jid("carol"), "admin", None),
        )
        .await,
    );
    let carol = occ("hall", "carol");
    let p = wait(&mut b, "carol's admin presence", |e| {
        is_presence_from(e, &carol) && item_attr(e, "affiliation").as_deref() == Some("admin")
    })
    .await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("moderator"), "{p}");

    // Users who are not in the room.
    assert_result(
        &admin(
            &mut a,
            "hall",
            &set_affiliation(&jid("dave"), "owner", None),
        )
        .await,
    );
    assert_result(
        &admin(
            &mut a,
            "hall",
            &set_affiliation(&jid("eve"), "outcast", Some("spammer")),
        )
        .await,
    );

    assert_eq!(affiliated(&mut a, "hall", "member").await, [jid("bob")]);
    assert_eq!(affiliated(&mut a, "hall", "admin").await, [jid("carol")]);
    assert_eq!(
        affiliated(&mut a, "hall", "owner").await,
        [jid("alice"), jid("dave")]
    );
    // §9.2: the ban list keeps the reason.
    let r = admin_get(&mut a, "hall", "affiliation='outcast'").await;
    assert_result(&r);
    let banned = items(&r);
    assert_eq!(banned.len(), 1, "{r}");
    assert_eq!(banned[0].attr("jid"), Some(jid("eve").as_str()), "{r}");
    assert_eq!(
        banned[0]
            .get_child("reason", MUC_ADMIN)
            .map(|x| x.text().trim().to_string())
            .as_deref(),
        Some("spammer"),
        "{r}"
    );
    // An admin reads the lists below the owner's (§9.2, §9.5).
    assert_eq!(affiliated(&mut c, "hall", "outcast").await, [jid("eve")]);
    assert_eq!(affiliated(&mut c, "hall", "member").await, [jid("bob")]);

    // §9.4/§9.5: the delta back to none; in an open room bob stays, with affiliation none.
    assert_result(&admin(&mut a, "hall", &set_affiliation(&jid("bob"), "none", None)).await);
    let p = wait(&mut c, "bob's presence without membership", |e| {
        is_presence_from(e, &bob) && item_attr(e, "affiliation").as_deref() == Some("none")
    })
    .await;
    assert!(!is_unavailable(&p), "{p}");
    assert!(affiliated(&mut a, "hall", "member").await.is_empty());

    // §9 (intro): a participant may not read or change the lists.
    assert_error(
        &admin_get(&mut b, "hall", "affiliation='member'").await,
        "forbidden",
        "auth",
    );
    assert_error(
        &admin(
            &mut b,
            "hall",
            &set_affiliation(&jid("frank"), "member", None),
        )
        .await,
        "forbidden",
        "auth",
    );
    // §10.5 and §10.8: an admin may not change the owner list nor the admin list.
    assert_error(
        &admin(
            &mut c,
            "hall",
            &set_affiliation(&jid("frank"), "owner", None),
        )
        .await,
        "forbidden",
        "auth",
    );
    assert_error(
        &admin(
            &mut c,
            "hall",
            &set_affiliation(&jid("frank"), "admin", None),
        )
        .await,
        "forbidden",
        "auth",
    );
    assert_eq!(
        affiliated(&mut a, "hall", "owner").await,
        [jid("alice"), jid("dave")]
    );
    assert_eq!(affiliated(&mut a, "hall", "admin").await, [jid("carol")]);
    assert!(affiliated(&mut a, "hall", "member").await.is_empty());
    assert_speaks(&mut b, "hall", "bob", &mut [&mut a, &mut c]).await;
    // §10.5, §10.8: in a semi-anonymous room (the default) an admin may not read the owner
    // list nor the admin list.
    for list in ["owner", "admin"] {
        assert_error(
            &admin_get(&mut c, "hall", &format!("affiliation='{list}'")).await,
            "forbidden",
            "auth",
        );
    }
    s.stop().await;
}

/// XEP-0045 §8.2: a moderator kicks a participant with a reason: the kicked occupant gets an
/// unavailable presence with 307 and 110 and the reason, the others one with 307; the kicked
/// user is no occupant any more (§7.4 `not-acceptable`) but may come back (not a ban).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_removes_with_307_and_the_user_may_return() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "court", "alice", &[]).await;
    enter(&mut b, "court", "bob").await;
    enter(&mut c, "court", "carol").await;

    let r = admin(&mut a, "court", &set_role("bob", "none", Some("Avaunt"))).await;
    assert_result(&r);
    let bob = occ("court", "bob");
    let p = wait(&mut b, "bob's removal", |e| {
        is_presence_from(e, &bob) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "307") && has_status(&p, "110"), "{p}");
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    assert_eq!(item_reason(&p).as_deref(), Some("Avaunt"), "{p}");
    let p = wait(&mut c, "bob's removal seen by carol", |e| {
        is_presence_from(e, &bob) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "307") && !has_status(&p, "110"), "{p}");
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");

    assert_cannot_say(&mut b, "court", "not-acceptable", "cancel", &mut [&mut c]).await;
    let j = enter(&mut b, "court", "bob").await;
    assert_eq!(item_attr(&j.own, "role").as_deref(), Some("participant"));
    assert_speaks(&mut a, "court", "alice", &mut [&mut b, &mut c]).await;
    s.stop().await;
}

/// XEP-0045 §8 (intro: a non-moderator's admin request is `forbidden`), §8.2, §8.4, §9.1,
/// §9.7 (`not-allowed`, cancel: nobody acts on a higher affiliation): a participant cannot
/// kick; an admin cannot kick, ban, silence or demote an owner; an admin can kick a
/// participant. The refusals change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_kick_ban_and_demote_whom() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    create(&mut a, "court", "alice", &[]).await;
    assert_result(
        &admin(
            &mut a,
            "court",
            &set_affiliation(&jid("dave"), "admin", None),
        )
        .await,
    );
    enter(&mut b, "court", "bob").await;
    enter(&mut c, "court", "carol").await;
    let j = enter(&mut d, "court", "dave").await;
    assert_eq!(item_attr(&j.own, "role").as_deref(), Some("moderator"));

    assert_error(
        &admin(&mut b, "court", &set_role("carol", "none", None)).await,
        "forbidden",
        "auth",
    );
    for item in [
        set_role("alice", "none", None),
        set_affiliation(&jid("alice"), "outcast", None),
        set_role("alice", "participant", None),
        set_role("alice", "visitor", None),
    ] {
        let r = admin(&mut d, "court", &item).await;
        assert_error(&r, "not-allowed", "cancel");
    }
    assert_eq!(affiliated(&mut a, "court", "owner").await, [jid("alice")]);
    assert!(affiliated(&mut a, "court", "outcast").await.is_empty());
    // Still a moderator in the room: alice can speak and the others hear her.
    assert_speaks(&mut a, "court", "alice", &mut [&mut b, &mut c, &mut d]).await;

    // Carol is still there, then the admin kicks her.
    assert_result(&admin(&mut d, "court", &set_role("carol", "none", None)).await);
    let carol = occ("court", "carol");
    let p = wait(&mut c, "carol kicked", |e| {
        is_presence_from(e, &carol) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "307"), "{p}");
    assert_speaks(&mut b, "court", "bob", &mut [&mut a, &mut d]).await;
    s.stop().await;
}

/// XEP-0045 §9.1, §7.2.7, §9.2: a ban (by bare JID, with a reason) removes the occupant with
/// 301 (110 to themselves, the reason); the others see 301; the banned user cannot come back
/// (`forbidden`, auth) under any nick; an owner cannot ban themselves (`conflict`); lifting
/// the ban lets them in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_removes_with_301_and_keeps_the_user_out() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "court", "alice", &[]).await;
    enter(&mut b, "court", "bob").await;
    enter(&mut c, "court", "carol").await;

    let r = admin(
        &mut a,
        "court",
        &set_affiliation(&jid("bob"), "outcast", Some("Treason")),
    )
    .await;
    assert_result(&r);
    let bob = occ("court", "bob");
    let p = wait(&mut b, "bob banned", |e| {
        is_presence_from(e, &bob) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "301") && has_status(&p, "110"), "{p}");
    assert_eq!(
        item_attr(&p, "affiliation").as_deref(),
        Some("outcast"),
        "{p}"
    );
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    assert_eq!(item_reason(&p).as_deref(), Some("Treason"), "{p}");
    let p = wait(&mut c, "bob's ban seen by carol", |e| {
        is_presence_from(e, &bob) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "301") && !has_status(&p, "110"), "{p}");
    assert_eq!(
        item_attr(&p, "affiliation").as_deref(),
        Some("outcast"),
        "{p}"
    );

    let e = refused(&mut b, "court", "bob").await;
    assert_error(&e, "forbidden", "auth");
    let e = refused(&mut b, "court", "robert").await;
    assert_error(&e, "forbidden", "auth");
    // Another session of the same account.
    let mut b2 = s.login("bob", "pw", "r2").await;
    let e = refused(&mut b2, "court", "bobby").await;
    assert_error(&e, "forbidden", "auth");

    assert_eq!(affiliated(&mut a, "court", "outcast").await, [jid("bob")]);
    assert_error(
        &admin(
            &mut a,
            "court",
            &set_affiliation(&jid("alice"), "outcast", None),
        )
        .await,
        "conflict",
        "cancel",
    );
    assert_speaks(&mut a, "court", "alice", &mut [&mut c]).await;

    assert_result(&admin(&mut a, "court", &set_affiliation(&jid("bob"), "none", None)).await);
    assert!(affiliated(&mut a, "court", "outcast").await.is_empty());
    enter(&mut b, "court", "bob").await;
    assert_speaks(&mut b, "court", "bob", &mut [&mut a, &mut c]).await;
    s.stop().await;
}

/// docs/muc.md (Roles and affiliations) and XEP-0045 §18.1: a user whose affiliation changes
/// while they are not in the room gets a message from the room with the muc#user item (status
/// 101): banned; made a member of a members-only room (who may then enter); that membership
/// removed (who then may not, `registration-required`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_users_are_told_of_their_new_affiliation() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "court", "alice", &[]).await;

    assert_result(
        &admin(
            &mut a,
            "court",
            &set_affiliation(&jid("bob"), "outcast", Some("Treason")),
        )
        .await,
    );
    let m = wait(&mut b, "the ban notice", |e| {
        is_room_item_message(e, "court")
    })
    .await;
    assert_eq!(
        item_attr(&m, "affiliation").as_deref(),
        Some("outcast"),
        "{m}"
    );
    assert_eq!(
        item_attr(&m, "jid").as_deref().map(bare),
        Some(jid("bob").as_str()),
        "{m}"
    );
    assert_ne!(m.attr("type"), Some("groupchat"), "{m}");
    let mut notices = vec![m];

    assert_result(&configure(&mut a, "court", &[("muc#roomconfig_membersonly", "1")]).await);
    assert_result(
        &admin(
            &mut a,
            "court",
            &set_affiliation(&jid("carol"), "member", None),
        )
        .await,
    );
    let m = wait(&mut c, "the membership notice", |e| {
        is_room_item_message(e, "court")
    })
    .await;
    assert_eq!(
        item_attr(&m, "affiliation").as_deref(),
        Some("member"),
        "{m}"
    );
    assert_eq!(
        item_attr(&m, "jid").as_deref().map(bare),
        Some(jid("carol").as_str()),
        "{m}"
    );
    notices.push(m);
    let j = enter(&mut c, "court", "carol").await;
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("member"));
    leave(&mut c, "court", "carol").await;

    assert_result(
        &admin(
            &mut a,
            "court",
            &set_affiliation(&jid("carol"), "none", None),
        )
        .await,
    );
    let m = wait(&mut c, "the removal notice", |e| {
        is_room_item_message(e, "court") && item_attr(e, "affiliation").as_deref() == Some("none")
    })
    .await;
    notices.push(m);
    let e = refused(&mut c, "court", "carol").await;
    assert_error(&e, "registration-required", "auth");
    // §18.1: such an out-of-room message MUST carry status 101.
    for m in &notices {
        assert!(has_status(m, "101"), "no status 101: {m}");
    }
    s.stop().await;
}

/// XEP-0045 §9.4 (and Prosody's muc_members_only_change): a member removed from a
/// members-only room while inside is removed at once with 321 (no available presence with the
/// lost affiliation first), everyone sees it, and may not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_from_a_members_only_room_leaves_with_321() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    create(
        &mut a,
        "club",
        "alice",
        &[("muc#roomconfig_membersonly", "1")],
    )
    .await;
    for u in ["bob", "carol"] {
        assert_result(&admin(&mut a, "club", &set_affiliation(&jid(u), "member", None)).await);
    }
    enter(&mut b, "club", "bob").await;
    enter(&mut c, "club", "carol").await;
    let e = refused(&mut d, "club", "dave").await;
    assert_error(&e, "registration-required", "auth");

    assert_result(&admin(&mut a, "club", &set_affiliation(&jid("bob"), "none", None)).await);
    let bob = occ("club", "bob");
    let p = wait(&mut b, "bob's next presence", |e| is_presence_from(e, &bob)).await;
    assert!(is_unavailable(&p), "only the removal is sent (§9.4): {p}");
    assert!(has_status(&p, "321") && has_status(&p, "110"), "{p}");
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("none"), "{p}");
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    let p = wait(&mut c, "bob's removal seen by carol", |e| {
        is_presence_from(e, &bob) && is_unavailable(e)
    })
    .await;
    assert!(has_status(&p, "321"), "{p}");

    let e = refused(&mut b, "club", "bob").await;
    assert_error(&e, "registration-required", "auth");
    assert_speaks(&mut c, "club", "carol", &mut [&mut a]).await;
    s.stop().await;
}

/// XEP-0045 §7.4, §8.3, §8.4, §8.5, §9.6, §9.7: in a moderated room an unaffiliated user
/// enters as a visitor and may not speak (`forbidden`, auth); granting voice (with a reason)
/// sends presence with role participant and lets them speak; revoking it sends role visitor;
/// moderator status is granted (the moderator may read the role lists) and revoked (then may
/// not, `forbidden`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_and_moderator_status_are_granted_and_revoked() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(
        &mut a,
        "stage",
        "alice",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    let j = enter(&mut b, "stage", "bob").await;
    assert_eq!(item_attr(&j.own, "role").as_deref(), Some("visitor"));
    enter(&mut c, "stage", "carol").await;
    assert_cannot_say(&mut b, "stage", "forbidden", "auth", &mut [&mut a, &mut c]).await;

    let bob = occ("stage", "bob");
    let role_is = |role: &'static str| {
        let bob = bob.clone();
        move |e: &Element| {
            is_presence_from(e, &bob)
                && !is_unavailable(e)
                && item_attr(e, "role").as_deref() == Some(role)
        }
    };
    assert_result(
        &admin(
            &mut a,
            "stage",
            &set_role("bob", "participant", Some("A worthy witch")),
        )
        .await,
    );
    let p = wait(&mut c, "bob's voice", role_is("participant")).await;
    assert_eq!(item_reason(&p).as_deref(), Some("A worthy witch"), "{p}");
    wait(&mut b, "own voice", role_is("participant")).await;
    assert_speaks(&mut b, "stage", "bob", &mut [&mut a, &mut c]).await;

    assert_result(&admin(&mut a, "stage", &set_role("bob", "visitor", None)).await);
    wait(&mut c, "bob silenced", role_is("visitor")).await;
    wait(&mut b, "own silence", role_is("visitor")).await;
    assert_cannot_say(&mut b, "stage", "forbidden", "auth", &mut [&mut c]).await;

    assert_result(&admin(&mut a, "stage", &set_role("bob", "moderator", None)).await);
    wait(&mut c, "bob a moderator", role_is("moderator")).await;
    wait(&mut b, "own moderator status", role_is("moderator")).await;
    let r = admin_get(&mut b, "stage", "role='visitor'").await;
    assert_result(&r);
    let nicks: Vec<String> = items(&r)
        .iter()
        .filter_map(|i| i.attr("nick").map(str::to_string))
        .collect();
    assert_eq!(nicks, ["carol"], "{r}");
    assert_speaks(&mut b, "stage", "bob", &mut [&mut c]).await;

    assert_result(&admin(&mut a, "stage", &set_role("bob", "participant", None)).await);
    wait(&mut c, "bob no longer a moderator", role_is("participant")).await;
    wait(&mut b, "own moderator status lost", role_is("participant")).await;
    assert_error(
        &admin_get(&mut b, "stage", "role='visitor'").await,
        "forbidden",
        "auth",
    );
    assert_speaks(&mut b, "stage", "bob", &mut [&mut a, &mut c]).await;
    s.stop().await;
}

/// XEP-0045 §10.4, §10.5: the only owner cannot give up ownership (`conflict`, cancel); with a
/// second owner they can (everyone sees the new affiliation), and the new sole owner is then
/// bound the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_owner_cannot_step_down() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    create(&mut a, "throne", "alice", &[]).await;
    enter(&mut b, "throne", "bob").await;

    for to in ["admin", "member", "none"] {
        let r = admin(&mut a, "throne", &set_affiliation(&jid("alice"), to, None)).await;
        assert_error(&r, "conflict", "cancel");
    }
    assert_eq!(affiliated(&mut a, "throne", "owner").await, [jid("alice")]);

    assert_result(
        &admin(
            &mut a,
            "throne",
            &set_affiliation(&jid("bob"), "owner", None),
        )
        .await,
    );
    let bob = occ("throne", "bob");
    let p = wait(&mut b, "own ownership", |e| {
        is_presence_from(e, &bob) && item_attr(e, "affiliation").as_deref() == Some("owner")
    })
    .await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("moderator"), "{p}");
    assert_result(
        &admin(
            &mut a,
            "throne",
            &set_affiliation(&jid("alice"), "admin", None),
        )
        .await,
    );
    let alice = occ("throne", "alice");
    wait(&mut b, "alice's step down", |e| {
        is_presence_from(e, &alice) && item_attr(e, "affiliation").as_deref() == Some("admin")
    })
    .await;
    assert_eq!(affiliated(&mut b, "throne", "owner").await, [jid("bob")]);
    assert_eq!(affiliated(&mut b, "throne", "admin").await, [jid("alice")]);
    assert_error(
        &admin(
            &mut b,
            "throne",
            &set_affiliation(&jid("bob"), "member", None),
        )
        .await,
        "conflict",
        "cancel",
    );
    assert_eq!(affiliated(&mut b, "throne", "owner").await, [jid("bob")]);
    s.stop().await;
}

/// XEP-0045 §7.13, §8.6: a visitor's muc#request form goes to the moderators only, as an
/// approval form naming the visitor; a refusal (`muc#request_allow` false) changes nothing,
/// an approval grants voice (§8.3 presence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_requests_reach_moderators_and_approval_grants_voice() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(
        &mut a,
        "stage",
        "alice",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    enter(&mut b, "stage", "bob").await;
    enter(&mut c, "stage", "carol").await;

    let request = format!(
        "<message to='{}'>{}</message>",
        room("stage"),
        submit_form(MUC_REQUEST, &[("muc#role", "participant")])
    );
    let room_jid = room("stage");
    let is_request = |e: &Element| {
        e.name() == "message"
            && e.attr("from") == Some(room_jid.as_str())
            && e.get_child("x", XDATA)
                .is_some_and(|x| field_value(x, "FORM_TYPE").as_deref() == Some(MUC_REQUEST))
    };
    b.send(&request).await;
    let m = wait(&mut a, "the voice request", is_request).await;
    let x = m
        .get_child("x", XDATA)
        .unwrap_or_else(|| panic!("{m}"))
        .clone();
    assert_eq!(x.attr("type"), Some("form"), "{m}");
    assert_eq!(
        field_value(&x, "muc#roomnick").as_deref(),
        Some("bob"),
        "{m}"
    );
    assert_eq!(
        field_value(&x, "muc#role").as_deref(),
        Some("participant"),
        "{m}"
    );
    let who = field_value(&x, "muc#jid").unwrap_or_else(|| panic!("no muc#jid: {m}"));
    assert_eq!(bare(&who), jid("bob"), "{m}");
    let got = c.drain().await;
    assert!(
        !got.iter().any(is_request),
        "a visitor got the request: {got:?}"
    );

    let answer = |allow: &str| {
        format!(
            "<message to='{}'>{}</message>",
            room("stage"),
            submit_form(
                MUC_REQUEST,
                &[
                    ("muc#role", "participant"),
                    ("muc#jid", &who),
                    ("muc#roomnick", "bob"),
                    ("muc#request_allow", allow),
                ],
            )
        )
    };
    a.send(&answer("false")).await;
    a.sync().await;
    assert_cannot_say(&mut b, "stage", "forbidden", "auth", &mut [&mut c]).await;

    b.send(&request).await;
    wait(&mut a, "the second voice request", is_request).await;
    a.send(&answer("true")).await;
    let bob = occ("stage", "bob");
    let voiced = |e: &Element| {
        is_presence_from(e, &bob) && item_attr(e, "role").as_deref() == Some("participant")
    };
    wait(&mut c, "bob's voice", voiced).await;
    wait(&mut b, "own voice", voiced).await;
    assert_speaks(&mut b, "stage", "bob", &mut [&mut a, &mut c]).await;
    s.stop().await;
}

/// XEP-0045 §7.10, §7.12: the registration form asks for `muc#register_roomnick`; a form-less
/// or foreign form is `bad-request` (modify); registering makes a member with the nick
/// reserved (x-roomuser-item names it, a second get says `<registered/>`), nobody else may
/// register or use it (`conflict`, cancel), its owner enters with it; an occupant who
/// registers is announced as a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_reserves_a_nick_and_makes_a_member() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    let mut ev = user(&s, "eve").await;
    create(&mut a, "guild", "alice", &[]).await;
    enter(&mut c, "guild", "carol").await;

    let r = register_get(&mut b, "guild").await;
    assert_result(&r);
    let x = r
        .get_child("query", IQ_REGISTER)
        .and_then(|q| q.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no form: {r}"))
        .clone();
    assert_eq!(x.attr("type"), Some("form"), "{r}");
    assert_eq!(
        field_value(&x, "FORM_TYPE").as_deref(),
        Some(MUC_REGISTER),
        "{r}"
    );
    assert!(
        x.children()
            .any(|f| f.is("field", XDATA) && f.attr("var") == Some("muc#register_roomnick")),
        "{r}"
    );
    assert_eq!(reserved_nick(&mut b, "guild").await, None);

    let r = ask(
        &mut b,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{IQ_REGISTER}'/></iq>",
            room("guild")
        ),
    )
    .await;
    assert_error(&r, "bad-request", "modify");
    let r = ask(
        &mut b,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{IQ_REGISTER}'>{}</query></iq>",
            room("guild"),
            submit_form("urn:example:not-muc", &[("muc#register_roomnick", "Bobby")])
        ),
    )
    .await;
    assert_error(&r, "bad-request", "modify");
    assert!(affiliated(&mut a, "guild", "member").await.is_empty());

    assert_result(&register(&mut b, "guild", "Bobby").await);
    let r = admin_get(&mut a, "guild", "affiliation='member'").await;
    assert_result(&r);
    let members = items(&r);
    assert_eq!(members.len(), 1, "{r}");
    assert_eq!(members[0].attr("jid"), Some(jid("bob").as_str()), "{r}");
    if let Some(n) = members[0].attr("nick") {
        assert_eq!(n, "Bobby", "{r}");
    }
    assert_eq!(
        reserved_nick(&mut b, "guild").await.as_deref(),
        Some("Bobby")
    );
    assert_eq!(reserved_nick(&mut d, "guild").await, None);
    let r = register_get(&mut b, "guild").await;
    assert_result(&r);
    let q = r
        .get_child("query", IQ_REGISTER)
        .unwrap_or_else(|| panic!("{r}"));
    assert!(q.get_child("registered", IQ_REGISTER).is_some(), "{r}");
    assert_eq!(
        q.get_child("username", IQ_REGISTER)
            .map(|u| u.text())
            .as_deref(),
        Some("Bobby"),
        "{r}"
    );

    assert_error(
        &register(&mut d, "guild", "Bobby").await,
        "conflict",
        "cancel",
    );
    let err = refused(&mut ev, "guild", "Bobby").await;
    assert_error(&err, "conflict", "cancel");
    let j = enter(&mut b, "guild", "Bobby").await;
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("member"));

    // An occupant registering: everyone sees the membership.
    enter(&mut d, "guild", "dave").await;
    assert_result(&register(&mut d, "guild", "dave").await);
    let dave = occ("guild", "dave");
    wait(&mut c, "dave's membership", |e| {
        is_presence_from(e, &dave) && item_attr(e, "affiliation").as_deref() == Some("member")
    })
    .await;
    assert_eq!(
        affiliated(&mut a, "guild", "member").await,
        [jid("bob"), jid("dave")]
    );
    assert_speaks(&mut b, "guild", "Bobby", &mut [&mut a, &mut c, &mut d]).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Invitations.
// ---------------------------------------------------------------------------------------------

/// XEP-0045 §7.8.2: a mediated invitation reaches the invitee from the room with `<invite
/// from>` naming the inviter, the reason and the room's password; it does not make a member of
/// an open room (§9.5); the invitee's decline goes back to the inviter with `<decline from>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mediated_invitation_and_its_decline() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    create(
        &mut a,
        "coven",
        "alice",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "cauldronburn"),
        ],
    )
    .await;

    invite(&mut a, "coven", "inv1", &jid("bob"), "Hey Hecate").await;
    let m = wait_invite(&mut b, "coven").await;
    assert!(
        matches!(m.attr("type"), None | Some("normal")),
        "an invitation is a normal message: {m}"
    );
    let inv = invite_of(&m).unwrap_or_else(|| panic!("{m}"));
    let inviter = inv.attr("from").unwrap_or_default();
    assert!(
        [jid("alice"), full("alice"), occ("coven", "alice")].contains(&inviter.to_string()),
        "invite from {inviter:?}: {m}"
    );
    assert_eq!(
        inv.get_child("reason", MUC_USER)
            .map(|r| r.text().trim().to_string())
            .as_deref(),
        Some("Hey Hecate"),
        "{m}"
    );
    assert_eq!(
        user_x(&m)
            .and_then(|x| x.get_child("password", MUC_USER))
            .map(|p| p.text())
            .as_deref(),
        Some("cauldronburn"),
        "{m}"
    );
    assert!(affiliated(&mut a, "coven", "member").await.is_empty());

    b.send(&format!(
        "<message id='dec1' to='{}'><x xmlns='{MUC_USER}'><decline to='{}'><reason>Too busy</reason></decline></x></message>",
        room("coven"),
        jid("alice")
    ))
    .await;
    let coven = room("coven");
    let m = wait(&mut a, "the decline", |e| {
        e.name() == "message" && e.attr("from") == Some(coven.as_str()) && decline_of(e).is_some()
    })
    .await;
    let dec = decline_of(&m).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(dec.attr("from").map(bare), Some(jid("bob").as_str()), "{m}");
    assert_eq!(
        dec.get_child("reason", MUC_USER)
            .map(|r| r.text().trim().to_string())
            .as_deref(),
        Some("Too busy"),
        "{m}"
    );

    let e = refused(&mut b, "coven", "bob").await;
    assert_error(&e, "not-authorized", "auth");
    enter_with(&mut b, "coven", "bob", "<password>cauldronburn</password>").await;
    assert_speaks(&mut b, "coven", "bob", &mut [&mut a]).await;
    s.stop().await;
}

/// XEP-0045 §7.8.2, §9.5: in a members-only room an owner's invitation makes the invitee a
/// member, who can then enter; a mere member's invitation is refused (`forbidden`, auth) and
/// reaches nobody unless `muc#roomconfig_allowinvites` is on, when it works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_to_a_members_only_room_grant_membership() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    create(
        &mut a,
        "club",
        "alice",
        &[("muc#roomconfig_membersonly", "1")],
    )
    .await;
    assert_result(
        &admin(
            &mut a,
            "club",
            &set_affiliation(&jid("bob"), "member", None),
        )
        .await,
    );
    enter(&mut b, "club", "bob").await;

    invite(&mut a, "club", "inv1", &jid("carol"), "Join us").await;
    wait_invite(&mut c, "club").await;
    assert_eq!(
        affiliated(&mut a, "club", "member").await,
        [jid("bob"), jid("carol")]
    );
    let j = enter(&mut c, "club", "carol").await;
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("member"));

    invite(&mut b, "club", "inv2", &jid("dave"), "Come").await;
    let e = wait(&mut b, "the refused invitation", |e| {
        is_error_message(e, "inv2")
    })
    .await;
    assert_error(&e, "forbidden", "auth");
    assert!(d.quiet().await, "dave got something");
    let e = refused(&mut d, "club", "dave").await;
    assert_error(&e, "registration-required", "auth");

    assert_result(
        &configure(
            &mut a,
            "club",
            &[
                ("muc#roomconfig_membersonly", "1"),
                ("muc#roomconfig_allowinvites", "1"),
            ],
        )
        .await,
    );
    invite(&mut b, "club", "inv3", &jid("dave"), "Come").await;
    let m = wait_invite(&mut d, "club").await;
    let inviter = invite_of(&m)
        .and_then(|i| i.attr("from"))
        .unwrap_or_default()
        .to_string();
    assert!(
        [jid("bob"), full("bob"), occ("club", "bob")].contains(&inviter),
        "{m}"
    );
    let j = enter(&mut d, "club", "dave").await;
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("member"));
    assert_speaks(&mut d, "club", "dave", &mut [&mut a, &mut b, &mut c]).await;
    s.stop().await;
}

/// XEP-0249 §2: a direct invitation goes from client to client, unchanged by the server and
/// the MUC service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_invitation_passes_unchanged() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    create(&mut a, "coven", "alice", &[]).await;
    a.send(&format!(
        "<message id='di1' to='{}'><x xmlns='{CONFERENCE}' jid='{}' password='cauldronburn' reason='Hey Hecate, this is the place'/></message>",
        jid("bob"),
        room("coven")
    ))
    .await;
    let m = wait(&mut b, "the direct invitation", |e| {
        e.name() == "message" && e.get_child("x", CONFERENCE).is_some()
    })
    .await;
    assert_eq!(m.attr("from"), Some(full("alice").as_str()), "{m}");
    assert_eq!(m.attr("id"), Some("di1"), "{m}");
    let x = m
        .get_child("x", CONFERENCE)
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(x.attr("jid"), Some(room("coven").as_str()), "{m}");
    assert_eq!(x.attr("password"), Some("cauldronburn"), "{m}");
    assert_eq!(
        x.attr("reason"),
        Some("Hey Hecate, this is the place"),
        "{m}"
    );
    assert!(user_x(&m).is_none(), "not turned into a mediated one: {m}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Limits and abuse.
// ---------------------------------------------------------------------------------------------

/// XEP-0045 §10.1.1, docs/muc.md `restrict_room_creation = "admins"`: only the service admins
/// create rooms; anyone else gets `not-allowed` (cancel) and leaves no room behind, but may
/// enter existing rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_create_rooms_when_so_restricted() {
    let s = start(muc_config_with(
        "restrict_room_creation = \"admins\"\nadmins = [\"alice@localhost\"]",
    ))
    .await;
    s.add_user_on(HOST2, "dave", "pw").await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut d = s.login_on(HOST2, "dave", "pw", "r").await;

    let e = refused(&mut b, "bobs", "bob").await;
    assert_error(&e, "not-allowed", "cancel");
    let e = refused(&mut d, "daves", "dave").await;
    assert_error(&e, "not-allowed", "cancel");
    create(&mut a, "hall", "alice", &[]).await;
    let j = enter(&mut b, "hall", "bob").await;
    assert!(!has_status(&j.own, "201"), "{}", j.own);
    // The refused room was not created: alice creates it anew.
    create(&mut a, "bobs", "alice", &[]).await;
    assert_speaks(&mut b, "hall", "bob", &mut [&mut a]).await;
    s.stop().await;
}

/// docs/muc.md `restrict_room_creation = "local"`: accounts of every host of this server are
/// local (a user of the second host creates a room on `conference.localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_users_of_every_host_create_rooms() {
    let s = start(muc_config_with("restrict_room_creation = \"local\"")).await;
    s.add_user_on(HOST2, "dave", "pw").await;
    let mut d = s.login_on(HOST2, "dave", "pw", "r").await;
    let mut b = user(&s, "bob").await;
    create(&mut d, "faraway", "dave", &[]).await;
    assert_eq!(
        affiliated(&mut d, "faraway", "owner").await,
        [format!("dave@{HOST2}")]
    );
    create(&mut b, "nearby", "bob", &[]).await;
    s.stop().await;
}

/// docs/muc.md `max_rooms_per_user`: a user may own that many existing rooms; one more is
/// `not-allowed` (cancel), others are not affected, and a temporary room that vanished no
/// longer counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rooms_per_user_limits_creation() {
    let s = start(muc_config_with("max_rooms_per_user = 2")).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    create(&mut a, "r1", "alice", &[]).await;
    create(&mut a, "r2", "alice", &[]).await;
    let e = refused(&mut a, "r3", "alice").await;
    assert_error(&e, "not-allowed", "cancel");
    // Per user: bob creates r3 (which alice's refusal did not leave behind).
    create(&mut b, "r3", "bob", &[]).await;
    // r1 was temporary and goes with its last occupant.
    leave(&mut a, "r1", "alice").await;
    create(&mut a, "r4", "alice", &[]).await;
    let e = refused(&mut a, "r5", "alice").await;
    assert_error(&e, "not-allowed", "cancel");
    assert_speaks(&mut a, "r2", "alice", &mut []).await;
    s.stop().await;
}

/// XEP-0045 §7.2.9, §10.1.3/§10.2 and docs/muc.md `max_occupants`: a new room's maxusers is
/// the limit; beyond it a join is `service-unavailable` (wait) except for admins and owners;
/// a maxusers above the service limit is `not-acceptable` (modify), a non-number is refused,
/// and the room keeps its setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_occupants_caps_rooms() {
    let s = start(muc_config_with("max_occupants = 3")).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    create(&mut a, "small", "alice", &[]).await;
    let x = config_form(&mut a, "small").await;
    assert_eq!(
        field_value(&x, "muc#roomconfig_maxusers").as_deref(),
        Some("3"),
        "{x}"
    );
    enter(&mut b, "small", "bob").await;
    enter(&mut c, "small", "carol").await;
    let e = refused(&mut d, "small", "dave").await;
    assert_error(&e, "service-unavailable", "wait");

    let r = configure(&mut a, "small", &[("muc#roomconfig_maxusers", "10")]).await;
    assert_error(&r, "not-acceptable", "modify");
    let r = configure(&mut a, "small", &[("muc#roomconfig_maxusers", "abc")]).await;
    assert_error_among(
        &r,
        &[("bad-request", "modify"), ("not-acceptable", "modify")],
    );
    let x = config_form(&mut a, "small").await;
    assert_eq!(
        field_value(&x, "muc#roomconfig_maxusers").as_deref(),
        Some("3"),
        "{x}"
    );
    let e = refused(&mut d, "small", "dave").await;
    assert_error(&e, "service-unavailable", "wait");

    assert_result(
        &admin(
            &mut a,
            "small",
            &set_affiliation(&jid("dave"), "admin", None),
        )
        .await,
    );
    enter(&mut d, "small", "dave").await;
    assert_speaks(&mut a, "small", "alice", &mut [&mut b, &mut c, &mut d]).await;
    s.stop().await;
}

/// docs/muc.md `message_rate`/`message_burst` (Prosody mod_muc_limits): an occupant sending
/// faster than the bucket allows gets `resource-constraint` (wait) for the excess, which
/// nobody receives; the others in the room, and the same user in another room, still speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupant_flooding_a_room_is_slowed_down() {
    let s = start(muc_config_with("message_rate = 0.5\nmessage_burst = 3")).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "busy", "alice", &[]).await;
    enter(&mut b, "busy", "bob").await;
    enter(&mut c, "busy", "carol").await;

    const N: usize = 10;
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(&format!(
            "<message id='f{i}' to='{}' type='groupchat'><body>flood {i}</body></message>",
            room("busy")
        ));
    }
    b.send(&burst).await;
    let bob = occ("busy", "bob");
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    while accepted.len() + rejected.len() < N {
        let e = wait(&mut b, "the outcome of each flood message", |e| {
            e.name() == "message"
                && ((e.attr("type") == Some("error")
                    && e.attr("id").is_some_and(|i| i.starts_with('f')))
                    || (e.attr("from") == Some(bob.as_str())
                        && body_of(e).is_some_and(|t| t.starts_with("flood "))))
        })
        .await;
        if e.attr("type") == Some("error") {
            assert_error(&e, "resource-constraint", "wait");
            rejected.push(e.attr("id").unwrap_or_default().to_string());
        } else {
            accepted.push(body_of(&e).unwrap_or_default());
        }
    }
    assert!(
        accepted.len() >= 3,
        "the burst is allowed: {accepted:?} {rejected:?}"
    );
    assert!(!rejected.is_empty(), "nothing was limited: {accepted:?}");
    for body in &accepted {
        wait(&mut c, body, |e| is_groupchat(e, &bob, body)).await;
    }
    let more = c.drain().await;
    assert!(
        !more
            .iter()
            .any(|e| body_of(e).is_some_and(|t| t.starts_with("flood "))),
        "a limited message was delivered: {more:?}"
    );

    assert_speaks(&mut a, "busy", "alice", &mut [&mut c]).await;
    create(&mut c, "calm", "carol", &[]).await;
    enter(&mut b, "calm", "bob").await;
    assert_speaks(&mut b, "calm", "bob", &mut [&mut c]).await;
    s.stop().await;
}

/// XEP-0045 §10.2, §10.1.3: a configuration form of another FORM_TYPE, a boolean that is not
/// one, or a form that is not submitted is refused and changes nothing; a non-owner may not
/// configure (`forbidden`, auth); the room and its occupants carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_forms_are_refused() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    create(
        &mut a,
        "hall",
        "alice",
        &[("muc#roomconfig_roomname", "Hall")],
    )
    .await;
    enter(&mut b, "hall", "bob").await;

    let r = ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{MUC_OWNER}'>{}</query></iq>",
            room("hall"),
            submit_form(
                "urn:example:bogus",
                &[
                    ("muc#roomconfig_roomname", "Bogus"),
                    ("muc#roomconfig_membersonly", "1")
                ]
            )
        ),
    )
    .await;
    assert_error_among(
        &r,
        &[
            ("bad-request", "modify"),
            ("bad-request", "cancel"),
            ("not-acceptable", "modify"),
        ],
    );
    let r = configure(
        &mut a,
        "hall",
        &[
            ("muc#roomconfig_roomname", "Maybe"),
            ("muc#roomconfig_membersonly", "maybe"),
        ],
    )
    .await;
    assert_error_among(
        &r,
        &[("bad-request", "modify"), ("not-acceptable", "modify")],
    );
    let r = ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}' to='{}'><query xmlns='{MUC_OWNER}'><x xmlns='{XDATA}' type='form'><field var='FORM_TYPE'><value>{ROOMCONFIG}</value></field><field var='muc#roomconfig_roomname'><value>Form</value></field></x></query></iq>",
            room("hall")
        ),
    )
    .await;
    assert_error_among(&r, &[("bad-request", "modify"), ("bad-request", "cancel")]);
    let r = configure(&mut b, "hall", &[("muc#roomconfig_roomname", "Mine")]).await;
    assert_error(&r, "forbidden", "auth");

    let x = config_form(&mut a, "hall").await;
    assert_eq!(
        field_value(&x, "muc#roomconfig_roomname").as_deref(),
        Some("Hall"),
        "{x}"
    );
    assert!(
        !is_true(field_value(&x, "muc#roomconfig_membersonly").as_deref()),
        "{x}"
    );
    assert_speaks(&mut b, "hall", "bob", &mut [&mut a]).await;
    s.stop().await;
}

/// XEP-0045 §7.2.1 (no nickname) and docs/muc.md (RFC 7700 nicknames): a join without a nick,
/// with a nick of spaces only, or with a control character is `jid-malformed` (modify) and
/// makes nobody an occupant; the room, and other rooms, still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_nicknames_are_refused() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    create(&mut a, "hall", "alice", &[]).await;
    enter(&mut b, "hall", "bob").await;

    for to in [
        room("hall"),
        format!("{}/   ", room("hall")),
        format!("{}/bad&#9;nick", room("hall")),
        format!("{}/del&#x7F;", room("hall")),
    ] {
        c.send(&format!(
            "<presence to='{to}'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
        let e = wait(&mut c, &format!("the refusal of {to}"), |e| {
            e.name() == "presence" && e.attr("type") == Some("error")
        })
        .await;
        assert_error(&e, "jid-malformed", "modify");
    }
    let seen = a.drain().await;
    assert!(
        !seen
            .iter()
            .any(|e| e.name() == "presence" && e.attr("from") != Some(occ("hall", "bob").as_str())),
        "an invalid nick became an occupant: {seen:?}"
    );
    let r = admin_get(&mut a, "hall", "role='participant'").await;
    assert_result(&r);
    let nicks: Vec<String> = items(&r)
        .iter()
        .filter_map(|i| i.attr("nick").map(str::to_string))
        .collect();
    assert_eq!(nicks, ["bob"], "{r}");

    assert_speaks(&mut b, "hall", "bob", &mut [&mut a]).await;
    enter(&mut c, "hall", "carol").await;
    assert_speaks(&mut c, "hall", "carol", &mut [&mut a, &mut b]).await;
    create(&mut c, "other", "carol", &[]).await;
    enter(&mut b, "other", "bob").await;
    assert_speaks(&mut b, "other", "bob", &mut [&mut c]).await;
    s.stop().await;
}

/// XEP-0045 §7.4, §7.5, §7.6 and XEP-0421 §4: an occupant cannot speak as another: a forged
/// occupant-id is replaced by their own, taking another's nick is `conflict` (cancel), a
/// groupchat message to a nick is `bad-request` (modify), a non-occupant's groupchat is
/// `not-acceptable` (cancel); none of it reaches anyone as someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupant_cannot_speak_as_another() {
    let s = start(muc_config()).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut d = user(&s, "dave").await;
    create(&mut a, "hall", "alice", &[]).await;
    enter(&mut b, "hall", "bob").await;
    enter(&mut c, "hall", "carol").await;

    let occupant_id = |e: &Element| {
        let ids: Vec<String> = e
            .children()
            .filter(|x| x.is("occupant-id", OCCUPANT_ID))
            .filter_map(|x| x.attr("id").map(str::to_string))
            .collect();
        assert_eq!(ids.len(), 1, "one occupant-id: {e}");
        ids[0].clone()
    };
    let alice_id = occupant_id(&assert_speaks(&mut a, "hall", "alice", &mut [&mut c]).await);
    let bob_id = occupant_id(&assert_speaks(&mut b, "hall", "bob", &mut [&mut c]).await);
    assert_ne!(alice_id, bob_id);

    b.send(&format!(
        "<message to='{}' type='groupchat'><body>I am alice</body><occupant-id xmlns='{OCCUPANT_ID}' id='{alice_id}'/></message>",
        room("hall")
    ))
    .await;
    let m = wait(&mut c, "bob's forged message", |e| {
        e.name() == "message" && body_of(e).as_deref() == Some("I am alice")
    })
    .await;
    assert_eq!(m.attr("from"), Some(occ("hall", "bob").as_str()), "{m}");
    assert_eq!(occupant_id(&m), bob_id, "{m}");

    b.send(&format!("<presence to='{}'/>", occ("hall", "alice")))
        .await;
    let e = wait(&mut b, "the nick change refusal", |e| {
        e.name() == "presence" && e.attr("type") == Some("error")
    })
    .await;
    assert_error(&e, "conflict", "cancel");

    b.send(&format!(
        "<message id='gc1' to='{}' type='groupchat'><body>whisper</body></message>",
        occ("hall", "alice")
    ))
    .await;
    let e = wait(&mut b, "groupchat to a nick", |e| {
        is_error_message(e, "gc1")
    })
    .await;
    assert_error(&e, "bad-request", "modify");
    let got = a.drain().await;
    assert!(
        !got.iter().any(|e| body_of(e).as_deref() == Some("whisper")),
        "{got:?}"
    );

    assert_cannot_say(
        &mut d,
        "hall",
        "not-acceptable",
        "cancel",
        &mut [&mut a, &mut c],
    )
    .await;
    let m = assert_speaks(&mut b, "hall", "bob", &mut [&mut a, &mut c]).await;
    assert_eq!(occupant_id(&m), bob_id);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Persistence.
// ---------------------------------------------------------------------------------------------

async fn sqlite_muc_server(path: &std::path::Path) -> TestServer {
    let storage = canto_storage::Storage::open(&canto_storage::Backend::Sqlite {
        path: path.to_path_buf(),
    })
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config = muc_config();
    config.storage.backend = "sqlite".into();
    TestServer::with_storage(config, storage).await
}

/// docs/muc.md (Persistence), XEP-0045 §10.1.3 (`muc#roomconfig_persistentroom`): a persistent
/// room's configuration, affiliations (with the ban reason and the reserved nick) and subject
/// outlive a restart on SQLite; a temporary room does not (joining it creates a new one, 201).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_a_restart_and_a_temporary_one_does_not() {
    let db = ScratchDir::new("muc-sqlite");
    let path = db.path("canto.sqlite");
    {
        let s = sqlite_muc_server(&path).await;
        for u in USERS {
            s.add_user(u, "pw").await;
        }
        let mut a = user(&s, "alice").await;
        let mut b = user(&s, "bob").await;
        create(
            &mut a,
            "keep",
            "alice",
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_roomname", "Keep"),
                ("muc#roomconfig_moderatedroom", "1"),
            ],
        )
        .await;
        a.send(&format!(
            "<message to='{}' type='groupchat'><subject>Plans</subject></message>",
            room("keep")
        ))
        .await;
        wait(&mut a, "the subject change", |e| {
            e.name() == "message"
                && e.get_child("subject", CLIENT)
                    .is_some_and(|t| t.text() == "Plans")
        })
        .await;
        assert_result(&register(&mut b, "keep", "Bobby").await);
        assert_result(
            &admin(
                &mut a,
                "keep",
                &set_affiliation(&jid("carol"), "outcast", Some("spam")),
            )
            .await,
        );
        assert_result(
            &admin(
                &mut a,
                "keep",
                &set_affiliation(&jid("dave"), "admin", None),
            )
            .await,
        );
        leave(&mut a, "keep", "alice").await;
        // A temporary room, occupied when the server stops.
        create(&mut a, "fleeting", "alice", &[]).await;
        drop((a, b));
        s.stop().await;
    }
    let s = sqlite_muc_server(&path).await;
    let mut a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let mut c = user(&s, "carol").await;
    let mut ev = user(&s, "eve").await;

    let x = config_form(&mut a, "keep").await;
    assert_eq!(
        field_value(&x, "muc#roomconfig_roomname").as_deref(),
        Some("Keep"),
        "{x}"
    );
    assert!(
        is_true(field_value(&x, "muc#roomconfig_persistentroom").as_deref()),
        "{x}"
    );
    assert!(
        is_true(field_value(&x, "muc#roomconfig_moderatedroom").as_deref()),
        "{x}"
    );
    let features = disco_features(&mut a, "keep").await;
    for f in ["muc_persistent", "muc_moderated"] {
        assert!(features.iter().any(|x| x == f), "{f}: {features:?}");
    }
    assert_eq!(affiliated(&mut a, "keep", "owner").await, [jid("alice")]);
    assert_eq!(affiliated(&mut a, "keep", "admin").await, [jid("dave")]);
    assert_eq!(affiliated(&mut a, "keep", "member").await, [jid("bob")]);
    let r = admin_get(&mut a, "keep", "affiliation='outcast'").await;
    assert_result(&r);
    let banned = items(&r);
    assert_eq!(banned.len(), 1, "{r}");
    assert_eq!(banned[0].attr("jid"), Some(jid("carol").as_str()), "{r}");
    assert_eq!(
        banned[0]
            .get_child("reason", MUC_ADMIN)
            .map(|x| x.text().trim().to_string())
            .as_deref(),
        Some("spam"),
        "{r}"
    );
    assert_eq!(
        reserved_nick(&mut b, "keep").await.as_deref(),
        Some("Bobby")
    );

    let err = refused(&mut c, "keep", "carol").await;
    assert_error(&err, "forbidden", "auth");
    let err = refused(&mut ev, "keep", "Bobby").await;
    assert_error(&err, "conflict", "cancel");
    let j = enter(&mut b, "keep", "Bobby").await;
    assert!(!has_status(&j.own, "201"), "{}", j.own);
    assert_eq!(item_attr(&j.own, "affiliation").as_deref(), Some("member"));
    assert_eq!(item_attr(&j.own, "role").as_deref(), Some("participant"));
    assert_eq!(
        j.subject
            .get_child("subject", CLIENT)
            .map(|t| t.text())
            .as_deref(),
        Some("Plans"),
        "{}",
        j.subject
    );

    let j = enter(&mut a, "fleeting", "alice").await;
    assert!(
        has_status(&j.own, "201"),
        "the temporary room was kept: {}",
        j.own
    );
    s.stop().await;
}
