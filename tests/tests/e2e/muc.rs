//! XEP-0045 multi-user chat end to end (module `muc`, `conference.localhost`), to the contract
//! in docs/muc.md: rooms (creation, locking, joining, presence, nicks, subject, messages,
//! private messages, multi-session occupants, leaving, destruction), configuration and its
//! reflection in disco, discussion history and the room archive (XEP-0313, XEP-0359), and the
//! modern extensions (XEP-0410 self-ping, XEP-0421 occupant ids, XEP-0308/0424 pass-through).
//!
//! The helpers at the top are shared with muc_admin.rs (`use crate::muc::*;`); their names and
//! signatures are stable.

use canto_tests::*;
use canto_xml::Element;

pub(crate) use crate::pep::{
    DISCO_INFO, RSM, XDATA, ask, assert_quiet, assert_result, disco_info, disco_items, features,
    form, form_value, form_values, identities,
};

// ---------------------------------------------------------------------------------------------
// Helpers, shared with muc_admin.rs.
// ---------------------------------------------------------------------------------------------

/// The MUC service of the test host.
pub(crate) const ROOMS: &str = "conference.localhost";
pub(crate) const MUC: &str = "http://jabber.org/protocol/muc";
pub(crate) const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub(crate) const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub(crate) const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub(crate) const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub(crate) const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub(crate) const STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
pub(crate) const SELF_PING_OPT: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub(crate) const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub(crate) const MODERATE: &str = "urn:xmpp:message-moderate:1";
pub(crate) const RETRACT: &str = "urn:xmpp:message-retract:1";
pub(crate) const CORRECT: &str = "urn:xmpp:message-correct:0";
pub(crate) const SID: &str = "urn:xmpp:sid:0";
pub(crate) const MAM: &str = "urn:xmpp:mam:2";
pub(crate) const FORWARD: &str = "urn:xmpp:forward:0";
pub(crate) const DELAY: &str = "urn:xmpp:delay";
pub(crate) const PING: &str = "urn:xmpp:ping";
pub(crate) const CLIENT: &str = "jabber:client";
/// The accounts every [`server`] has, all with password `pw`.
pub(crate) const USERS: &[&str] = &["alice", "bob", "carol", "dave", "eve", "frank"];

/// The default test configuration with the `muc` module enabled (added if not a default).
pub(crate) fn muc_config() -> canto_core::Config {
    let mut c = test_config();
    if !c.modules.iter().any(|m| m == "muc") {
        c.modules.push("muc".into());
    }
    c
}

/// A server with `config` and the accounts of [`USERS`].
pub(crate) async fn server_with(config: canto_core::Config) -> TestServer {
    let s = TestServer::with_config(config).await;
    for u in USERS {
        s.add_user(u, "pw").await;
    }
    s
}

/// A server with [`muc_config`] and the accounts of [`USERS`].
pub(crate) async fn server() -> TestServer {
    server_with(muc_config()).await
}

/// A server whose `[muc]` section is `muc_toml` (TOML body, e.g. `"max_occupants = 3"`).
pub(crate) async fn server_with_muc(muc_toml: &str) -> TestServer {
    let mut c = muc_config();
    c.set_section("muc", muc_toml)
        .unwrap_or_else(|e| panic!("[muc] {muc_toml}: {e}"));
    server_with(c).await
}

/// Logs `user` (password `pw`) in with `resource`, sends initial presence and reads what
/// follows it.
pub(crate) async fn online(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login(user, "pw", resource).await;
    c.send("<presence/>").await;
    let _ = c.drain().await;
    c
}

/// `room` as a bare JID: `room` itself if it has an `@`, else `room@conference.localhost`.
pub(crate) fn room_jid(room: &str) -> String {
    if room.contains('@') {
        room.to_string()
    } else {
        format!("{room}@{ROOMS}")
    }
}

/// The occupant JID `room@service/nick`.
pub(crate) fn occupant(room: &str, nick: &str) -> String {
    format!("{}/{nick}", room_jid(room))
}

/// The bare part of a JID.
pub(crate) fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Whether `e` comes from `room` (its bare JID or one of its occupant JIDs).
pub(crate) fn from_room(e: &Element, room: &str) -> bool {
    let room = room_jid(room);
    e.attr("from").is_some_and(|f| bare(f) == room)
}

/// The text of a stanza's `<body/>`.
pub(crate) fn body(e: &Element) -> Option<String> {
    e.get_child("body", CLIENT).map(Element::text)
}

/// Whether `e` is a groupchat message from `room` with `<subject/>` and neither `<body/>` nor
/// `<thread/>`: the room subject (XEP-0045 §7.2.15, §8.1).
pub(crate) fn is_subject_message(e: &Element, room: &str) -> bool {
    e.name() == "message"
        && e.attr("type") == Some("groupchat")
        && from_room(e, room)
        && e.has_child("subject", CLIENT)
        && !e.has_child("body", CLIENT)
        && !e.has_child("thread", CLIENT)
}

/// The subject text of a subject message.
pub(crate) fn subject_text(e: &Element) -> Option<String> {
    e.get_child("subject", CLIENT).map(Element::text)
}

/// Whether `e` is a groupchat message from `room` whose body is `text`.
pub(crate) fn is_groupchat(e: &Element, room: &str, text: &str) -> bool {
    e.name() == "message"
        && e.attr("type") == Some("groupchat")
        && from_room(e, room)
        && body(e).as_deref() == Some(text)
}

/// The join presence for `room/nick`: `<x xmlns='…muc'>x_inner</x>`.
pub(crate) fn join_xml(room: &str, nick: &str, x_inner: &str) -> String {
    format!(
        "<presence to='{}'><x xmlns='{MUC}'>{x_inner}</x></presence>",
        occupant(room, nick)
    )
}

/// Reads the answer to a join (§7.1): everything up to and including the subject message
/// (`Ok`), or the presence error from the room (`Err`).
pub(crate) async fn read_join(c: &mut Client, room: &str) -> Result<Vec<Element>, Element> {
    let who = c.full_jid();
    let mut got = Vec::new();
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{who} joining {room}: {e:#}; got {got:?}"));
        if e.name() == "presence" && e.attr("type") == Some("error") && from_room(&e, room) {
            return Err(e);
        }
        let done = is_subject_message(&e, room);
        got.push(e);
        if done {
            return Ok(got);
        }
    }
}

/// Sends a join presence with `x_inner` inside the MUC `<x/>` (a `<password/>`, a
/// `<history/>`) and reads the answer (see [`read_join`]).
pub(crate) async fn try_join(
    c: &mut Client,
    room: &str,
    nick: &str,
    x_inner: &str,
) -> Result<Vec<Element>, Element> {
    c.send(&join_xml(room, nick, x_inner)).await;
    read_join(c, room).await
}

/// Joins `room` as `nick` and returns everything received up to and including the subject
/// message. Panics on an error.
pub(crate) async fn join(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    join_with(c, room, nick, "").await
}

/// [`join`] with `x_inner` inside the MUC `<x/>`.
pub(crate) async fn join_with(
    c: &mut Client,
    room: &str,
    nick: &str,
    x_inner: &str,
) -> Vec<Element> {
    let who = c.full_jid();
    try_join(c, room, nick, x_inner)
        .await
        .unwrap_or_else(|e| panic!("{who} could not join {room} as {nick}: {e}"))
}

/// Tries to join and expects a presence error; returns it.
pub(crate) async fn join_error(c: &mut Client, room: &str, nick: &str, x_inner: &str) -> Element {
    match try_join(c, room, nick, x_inner).await {
        Err(e) => e,
        Ok(got) => panic!("{} joined {room} as {nick}: {got:?}", c.full_jid()),
    }
}

/// Asserts that `e` is an error of `condition` and `kind` (RFC 6120 §8.3).
pub(crate) fn assert_error(e: &Element, condition: &str, kind: &str) {
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    assert_eq!(error_condition(e).as_deref(), Some(condition), "{e}");
    assert_eq!(error_type(e).as_deref(), Some(kind), "{e}");
}

/// The status codes of a stanza's `<x xmlns='…muc#user'/>`.
pub(crate) fn muc_user_statuses(p: &Element) -> Vec<u16> {
    p.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|s| s.is("status", MUC_USER))
                .filter_map(|s| s.attr("code").and_then(|c| c.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `<item/>` of a stanza's `<x xmlns='…muc#user'/>`.
pub(crate) fn muc_item(p: &Element) -> Option<Element> {
    p.get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .cloned()
}

/// An attribute of the muc#user `<item/>` (`affiliation`, `role`, `jid`, `nick`).
pub(crate) fn item_attr(p: &Element, attr: &str) -> Option<String> {
    muc_item(p).and_then(|i| i.attr(attr).map(str::to_string))
}

/// The XEP-0421 occupant id of a stanza (None if absent; panics if there are several).
pub(crate) fn occupant_id(e: &Element) -> Option<String> {
    let ids: Vec<&Element> = e
        .children()
        .filter(|c| c.is("occupant-id", OCCUPANT_ID))
        .collect();
    assert!(ids.len() <= 1, "more than one occupant-id: {e}");
    ids.first().and_then(|i| i.attr("id")).map(str::to_string)
}

/// The XEP-0359 stanza id that `by` gave a message.
pub(crate) fn stanza_id(e: &Element, by: &str) -> Option<String> {
    e.children()
        .find(|c| c.is("stanza-id", SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// The self-presence (status 110, available) among the stanzas of a join.
pub(crate) fn self_presence(got: &[Element]) -> Element {
    got.iter()
        .find(|e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && muc_user_statuses(e).contains(&110)
        })
        .unwrap_or_else(|| panic!("no self-presence in {got:?}"))
        .clone()
}

/// The available presence from `from` among `got`.
pub(crate) fn presence_from(got: &[Element], from: &str) -> Option<Element> {
    got.iter()
        .find(|e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from") == Some(from)
        })
        .cloned()
}

/// The history of a join: the groupchat messages between the self-presence and the subject.
pub(crate) fn history_of(got: &[Element], room: &str) -> Vec<Element> {
    let start = got
        .iter()
        .position(|e| e.name() == "presence" && muc_user_statuses(e).contains(&110))
        .unwrap_or_else(|| panic!("no self-presence in {got:?}"));
    got[start + 1..]
        .iter()
        .filter(|e| {
            e.name() == "message"
                && e.attr("type") == Some("groupchat")
                && from_room(e, room)
                && !is_subject_message(e, room)
        })
        .cloned()
        .collect()
}

/// The bodies of messages.
pub(crate) fn bodies(msgs: &[Element]) -> Vec<String> {
    msgs.iter().filter_map(body).collect()
}

/// An IQ of `kind` to `room` with `<query xmlns=ns>inner</query>`; returns the reply.
pub(crate) async fn room_iq(
    c: &mut Client,
    kind: &str,
    room: &str,
    ns: &str,
    inner: &str,
) -> Element {
    let to = room_jid(room);
    ask(
        c,
        &format!(
            "<iq type='{kind}' id='{{id}}' to='{to}'><query xmlns='{ns}'>{inner}</query></iq>"
        ),
    )
    .await
}

/// A muc#owner IQ (`get` for the configuration form, `set` with a form or `<destroy/>`).
pub(crate) async fn muc_owner(c: &mut Client, kind: &str, room: &str, inner: &str) -> Element {
    room_iq(c, kind, room, MUC_OWNER, inner).await
}

/// A muc#admin IQ (`<item affiliation|role …/>`s).
pub(crate) async fn muc_admin(c: &mut Client, kind: &str, room: &str, inner: &str) -> Element {
    room_iq(c, kind, room, MUC_ADMIN, inner).await
}

/// The room's configuration form as its owner gets it (§10.2); asserts a muc#roomconfig form.
pub(crate) async fn config_form(c: &mut Client, room: &str) -> Element {
    let r = muc_owner(c, "get", room, "").await;
    assert_result(&r);
    let x = r
        .get_child("query", MUC_OWNER)
        .and_then(|q| q.get_child("x", XDATA))
        .unwrap_or_else(|| panic!("no configuration form in {r}"))
        .clone();
    assert_eq!(x.attr("type"), Some("form"), "{r}");
    assert_eq!(
        form_value(&x, "FORM_TYPE").as_deref(),
        Some(ROOMCONFIG),
        "{r}"
    );
    x
}

/// Submits a muc#roomconfig form with `fields` (a value with `|` is several values); returns
/// the reply.
pub(crate) async fn configure(c: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
    muc_owner(c, "set", room, &form(ROOMCONFIG, fields)).await
}

/// [`configure`], asserting success.
pub(crate) async fn reconfigure(c: &mut Client, room: &str, fields: &[(&str, &str)]) {
    let r = configure(c, room, fields).await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some(room_jid(room).as_str()), "{r}");
}

/// Joins a new room and asserts it was created (110 and 201, owner and moderator): the room is
/// locked (§10.1.1). Returns the join stanzas.
pub(crate) async fn create(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    let got = join(c, room, nick).await;
    let me = self_presence(&got);
    let codes = muc_user_statuses(&me);
    assert!(codes.contains(&110) && codes.contains(&201), "{me}");
    assert_eq!(
        item_attr(&me, "affiliation").as_deref(),
        Some("owner"),
        "{me}"
    );
    assert_eq!(item_attr(&me, "role").as_deref(), Some("moderator"), "{me}");
    got
}

/// Creates an instant room (§10.1.2): [`create`], then an empty submit form; asserts the result.
pub(crate) async fn create_instant(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    let got = create(c, room, nick).await;
    let r = muc_owner(
        c,
        "set",
        room,
        &format!("<x xmlns='{XDATA}' type='submit'/>"),
    )
    .await;
    assert_result(&r);
    got
}

/// Creates a reserved room (§10.1.3): [`create`], fetches the configuration form, submits
/// `fields`; asserts the result.
pub(crate) async fn create_reserved(
    c: &mut Client,
    room: &str,
    nick: &str,
    fields: &[(&str, &str)],
) -> Vec<Element> {
    let got = create(c, room, nick).await;
    let _ = config_form(c, room).await;
    reconfigure(c, room, fields).await;
    got
}

/// Sends a groupchat message with `body` (and id `id`) to `room`.
pub(crate) async fn send_groupchat(c: &mut Client, room: &str, text: &str) {
    let to = room_jid(room);
    let id = c.id();
    c.send(&format!(
        "<message to='{to}' type='groupchat' id='{id}'><body>{text}</body></message>"
    ))
    .await;
}

/// Reads until the groupchat message from `room` with `text` arrives; returns everything read,
/// that message last.
pub(crate) async fn until_groupchat(c: &mut Client, room: &str, text: &str) -> Vec<Element> {
    let who = c.full_jid();
    let mut got = Vec::new();
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{who}: no {text:?} from {room}: {e:#}; got {got:?}"));
        let done = is_groupchat(&e, room, text);
        got.push(e);
        if done {
            return got;
        }
    }
}

/// Waits for the groupchat message from `room` with `text` (skipping others); returns it.
pub(crate) async fn wait_groupchat(c: &mut Client, room: &str, text: &str) -> Element {
    until_groupchat(c, room, text)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no message"))
}

/// Sends a groupchat message and waits for its reflection (§7.4); returns the reflection.
pub(crate) async fn say(c: &mut Client, room: &str, text: &str) -> Element {
    send_groupchat(c, room, text).await;
    wait_groupchat(c, room, text).await
}

/// Sends a groupchat message and returns everything received up to and including its
/// reflection: a barrier through the room (what the room sent this client before is in it).
pub(crate) async fn say_collecting(c: &mut Client, room: &str, text: &str) -> Vec<Element> {
    send_groupchat(c, room, text).await;
    until_groupchat(c, room, text).await
}

/// Waits for a presence from `from` of `kind` (`None`: available); returns it.
pub(crate) async fn wait_presence(c: &mut Client, from: &str, kind: Option<&str>) -> Element {
    let who = c.full_jid();
    c.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(from) && e.attr("type") == kind)
        .await
        .unwrap_or_else(|e| panic!("{who}: no {kind:?} presence from {from}: {e:#}"))
}

/// Leaves `room` (unavailable presence to `room/nick`, §7.14); returns the self-presence.
pub(crate) async fn leave(c: &mut Client, room: &str, nick: &str) -> Element {
    let me = occupant(room, nick);
    c.send(&format!("<presence to='{me}' type='unavailable'/>"))
        .await;
    let who = c.full_jid();
    c.wait_for(|e| {
        e.name() == "presence"
            && e.attr("type") == Some("unavailable")
            && from_room(e, room)
            && muc_user_statuses(e).contains(&110)
    })
    .await
    .unwrap_or_else(|e| panic!("{who}: no self-presence leaving {me}: {e:#}"))
}

/// A round trip to the room (a disco#info query): the room has handled what `c` sent before.
/// What arrives before the answer stays queued.
pub(crate) async fn room_sync(c: &mut Client, room: &str) {
    let _ = disco_info(c, &room_jid(room), None).await;
}

/// The room's disco#info, asserting a result.
pub(crate) async fn room_info(c: &mut Client, room: &str) -> Element {
    let r = disco_info(c, &room_jid(room), None).await;
    assert_result(&r);
    r
}

/// The muc#roominfo form of a disco#info result (XEP-0045 §6.4, XEP-0128).
pub(crate) fn roominfo(info: &Element) -> Element {
    info.get_child("query", DISCO_INFO)
        .and_then(|q| {
            q.children().find(|x| {
                x.is("x", XDATA) && form_value(x, "FORM_TYPE").as_deref() == Some(ROOMINFO)
            })
        })
        .unwrap_or_else(|| panic!("no muc#roominfo form in {info}"))
        .clone()
}

/// A boolean form value (`1`/`true`, `0`/`false`).
pub(crate) fn form_bool(x: &Element, var: &str) -> Option<bool> {
    form_value(x, var).map(|v| matches!(v.as_str(), "1" | "true"))
}

/// A MAM query (XEP-0313 §4) to `room` with `inner` inside `<query/>`: the `<result/>`s in
/// order, and the IQ reply (result or error).
pub(crate) async fn room_mam(c: &mut Client, room: &str, inner: &str) -> (Vec<Element>, Element) {
    let to = room_jid(room);
    let id = c.id();
    let qid = format!("q-{id}");
    c.send(&format!(
        "<iq type='set' id='{id}' to='{to}'><query xmlns='{MAM}' queryid='{qid}'>{inner}</query></iq>"
    ))
    .await;
    let who = c.full_jid();
    let mut results = Vec::new();
    loop {
        let e = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{who}: MAM query to {to}: {e:#}"));
        if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
            return (results, e);
        }
        if e.name() == "message"
            && let Some(r) = e.get_child("result", MAM)
            && r.attr("queryid") == Some(qid.as_str())
        {
            assert_eq!(e.attr("from"), Some(to.as_str()), "{e}");
            results.push(r.clone());
        }
    }
}

/// The archived message inside a MAM `<result/>`.
pub(crate) fn archived(result: &Element) -> Element {
    result
        .get_child("forwarded", FORWARD)
        .and_then(|f| f.get_child("message", CLIENT))
        .unwrap_or_else(|| panic!("no forwarded message in {result}"))
        .clone()
}

/// An RSM value of a MAM `<fin/>`.
pub(crate) fn fin_rsm(reply: &Element, name: &str) -> Option<String> {
    reply
        .get_child("fin", MAM)?
        .get_child("set", RSM)?
        .get_child(name, RSM)
        .map(Element::text)
}

/// Waits for a stanza named `name` (`message`, `presence`, `iq`) of type error from `room` (or
/// one of its occupant JIDs); returns it.
pub(crate) async fn wait_error(c: &mut Client, room: &str, name: &str) -> Element {
    let who = c.full_jid();
    c.wait_for(|e| e.name() == name && e.attr("type") == Some("error") && from_room(e, room))
        .await
        .unwrap_or_else(|e| panic!("{who}: no {name} error from {room}: {e:#}"))
}

/// Sets the subject (a groupchat message with only `<subject/>`, §8.1).
pub(crate) async fn send_subject(c: &mut Client, room: &str, subject: &str) {
    let to = room_jid(room);
    c.send(&format!(
        "<message to='{to}' type='groupchat'><subject>{subject}</subject></message>"
    ))
    .await;
}

/// Waits for a subject message from `room` with `subject`; returns it.
pub(crate) async fn wait_subject(c: &mut Client, room: &str, subject: &str) -> Element {
    let who = c.full_jid();
    c.wait_for(|e| is_subject_message(e, room) && subject_text(e).as_deref() == Some(subject))
        .await
        .unwrap_or_else(|e| panic!("{who}: no subject {subject:?} from {room}: {e:#}"))
}

/// The last element of a join: the subject message.
pub(crate) fn subject_of(got: &[Element]) -> Element {
    got.last()
        .unwrap_or_else(|| panic!("nothing received"))
        .clone()
}

/// The `name` of a disco#info result's first identity.
pub(crate) fn identity_name(info: &Element) -> Option<String> {
    info.get_child("query", DISCO_INFO)?
        .children()
        .find(|i| i.is("identity", DISCO_INFO))?
        .attr("name")
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Rooms: creation, joining, presence, nicks, subject, messages, leaving, destruction.
// ---------------------------------------------------------------------------------------------

/// XEP-0045 §10.1.1, §10.1.2, §7.2.10: the first presence creates the room (110 and 201, owner
/// and moderator), locked: others get item-not-found until the owner accepts the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instant_room_is_locked_until_its_owner_accepts_the_defaults() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let got = create(&mut a, "garden", "alice").await;
    let me = self_presence(&got);
    assert_eq!(
        me.attr("from"),
        Some(occupant("garden", "alice").as_str()),
        "{me}"
    );
    assert_eq!(item_attr(&me, "jid"), Some(a.full_jid()), "{me}");
    // §7.2.15: the (empty) subject closes the join.
    let subject = subject_of(&got);
    assert_eq!(subject_text(&subject).as_deref(), Some(""), "{subject}");

    let e = join_error(&mut b, "garden", "bob", "").await;
    assert_error(&e, "item-not-found", "cancel");
    room_sync(&mut b, "garden").await;
    assert_quiet(&mut a, "was told of a refused join").await;

    let r = muc_owner(
        &mut a,
        "set",
        "garden",
        &format!("<x xmlns='{XDATA}' type='submit'/>"),
    )
    .await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some(room_jid("garden").as_str()), "{r}");

    let got = join(&mut b, "garden", "bob").await;
    let me = self_presence(&got);
    let codes = muc_user_statuses(&me);
    assert!(codes.contains(&110) && !codes.contains(&201), "{me}");
    assert_eq!(
        item_attr(&me, "affiliation").as_deref(),
        Some("none"),
        "{me}"
    );
    assert_eq!(
        item_attr(&me, "role").as_deref(),
        Some("participant"),
        "{me}"
    );
    let owner = presence_from(&got, &occupant("garden", "alice"))
        .unwrap_or_else(|| panic!("no presence of alice in {got:?}"));
    assert_eq!(
        item_attr(&owner, "affiliation").as_deref(),
        Some("owner"),
        "{owner}"
    );
    assert_eq!(
        item_attr(&owner, "role").as_deref(),
        Some("moderator"),
        "{owner}"
    );
    let p = wait_presence(&mut a, &occupant("garden", "bob"), None).await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("participant"), "{p}");
    s.stop().await;
}

/// XEP-0045 §10.1.3, §15.5.3: a reserved room: the owner fetches the muc#roomconfig form (with
/// docs/muc.md's defaults), the room stays locked until the owner submits it, and the form then
/// shows what was submitted (§10.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_room_is_configured_with_the_form_before_anyone_enters() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create(&mut a, "garden", "alice").await;
    let x = config_form(&mut a, "garden").await;
    for var in [
        "muc#roomconfig_roomname",
        "muc#roomconfig_roomdesc",
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_publicroom",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_whois",
        "muc#roomconfig_maxusers",
        "muc#roomconfig_changesubject",
        "muc#roomconfig_allowpm",
        "muc#roomconfig_allowinvites",
        "muc#roomconfig_historylength",
        "muc#roomconfig_enablearchiving",
        "muc#roomconfig_presencebroadcast",
    ] {
        assert!(form_values(&x, var).is_some(), "{var} missing: {x}");
    }
    for (var, want) in [
        ("muc#roomconfig_persistentroom", false),
        ("muc#roomconfig_publicroom", true),
        ("muc#roomconfig_membersonly", false),
        ("muc#roomconfig_moderatedroom", false),
        ("muc#roomconfig_changesubject", false),
        ("muc#roomconfig_allowinvites", false),
        ("muc#roomconfig_enablearchiving", true),
    ] {
        assert_eq!(form_bool(&x, var), Some(want), "{var}: {x}");
    }
    for (var, want) in [
        ("muc#roomconfig_whois", "moderators"),
        ("muc#roomconfig_allowpm", "anyone"),
        ("muc#roomconfig_maxusers", "1000"),
        ("muc#roomconfig_historylength", "20"),
    ] {
        assert_eq!(form_value(&x, var).as_deref(), Some(want), "{var}: {x}");
    }
    let mut roles = form_values(&x, "muc#roomconfig_presencebroadcast").unwrap_or_default();
    roles.sort();
    assert_eq!(roles, ["moderator", "participant", "visitor"], "{x}");

    // Fetching the form does not unlock the room.
    let e = join_error(&mut b, "garden", "bob", "").await;
    assert_error(&e, "item-not-found", "cancel");

    reconfigure(
        &mut a,
        "garden",
        &[
            ("muc#roomconfig_roomname", "The Garden"),
            ("muc#roomconfig_roomdesc", "Where the roses grow"),
            ("muc#roomconfig_changesubject", "1"),
        ],
    )
    .await;
    let got = join(&mut b, "garden", "bob").await;
    assert!(
        !muc_user_statuses(&self_presence(&got)).contains(&201),
        "{got:?}"
    );
    let x = config_form(&mut a, "garden").await;
    assert_eq!(
        form_value(&x, "muc#roomconfig_roomname").as_deref(),
        Some("The Garden"),
        "{x}"
    );
    assert_eq!(
        form_value(&x, "muc#roomconfig_roomdesc").as_deref(),
        Some("Where the roses grow"),
        "{x}"
    );
    assert_eq!(
        form_bool(&x, "muc#roomconfig_changesubject"),
        Some(true),
        "{x}"
    );
    // Untouched fields keep their values.
    assert_eq!(
        form_value(&x, "muc#roomconfig_whois").as_deref(),
        Some("moderators"),
        "{x}"
    );
    s.stop().await;
}

/// XEP-0045 §10.1.3: cancelling the initial configuration destroys the room, with unavailable
/// presence to the owner; the next presence creates it afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_first_configuration_destroys_the_room() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create(&mut a, "garden", "alice").await;
    let r = muc_owner(
        &mut a,
        "set",
        "garden",
        &format!("<x xmlns='{XDATA}' type='cancel'/>"),
    )
    .await;
    assert_result(&r);
    let gone = wait_presence(&mut a, &occupant("garden", "alice"), Some("unavailable")).await;
    assert_eq!(item_attr(&gone, "role").as_deref(), Some("none"), "{gone}");
    let info = disco_info(&mut b, &room_jid("garden"), None).await;
    assert_error(&info, "item-not-found", "cancel");
    let got = create(&mut b, "garden", "bob").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_none(),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §7.1, §7.2.2, §7.2.4, §7.2.13, §7.2.15: a joiner gets the other occupants'
/// presence, then its own (110), then the history, then the subject; in a semi-anonymous room
/// only moderators see real JIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_brings_occupants_then_self_then_history_then_subject() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    send_subject(&mut a, "garden", "Spells").await;
    wait_subject(&mut a, "garden", "Spells").await;
    let got = join(&mut b, "garden", "bob").await;
    // Bob, a participant, does not see the owner's JID.
    let owner = presence_from(&got, &occupant("garden", "alice"))
        .unwrap_or_else(|| panic!("no presence of alice in {got:?}"));
    assert_eq!(item_attr(&owner, "jid"), None, "{owner}");
    say(&mut a, "garden", "one").await;
    say(&mut a, "garden", "two").await;

    let got = join(&mut c, "garden", "carol").await;
    let pos = |pred: &dyn Fn(&Element) -> bool| {
        got.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("missing in {got:?}"))
    };
    let alice =
        pos(&|e| e.name() == "presence" && e.attr("from") == Some(&*occupant("garden", "alice")));
    let bob =
        pos(&|e| e.name() == "presence" && e.attr("from") == Some(&*occupant("garden", "bob")));
    let me = pos(&|e| e.name() == "presence" && muc_user_statuses(e).contains(&110));
    let one = pos(&|e| is_groupchat(e, "garden", "one"));
    let two = pos(&|e| is_groupchat(e, "garden", "two"));
    let subject = got.len() - 1;
    assert!(alice < me && bob < me, "{got:?}");
    assert!(me < one && one < two && two < subject, "{got:?}");
    assert_eq!(
        subject_text(&got[subject]).as_deref(),
        Some("Spells"),
        "{got:?}"
    );
    assert_eq!(
        got[me].attr("from"),
        Some(occupant("garden", "carol").as_str())
    );
    let codes = muc_user_statuses(&got[me]);
    assert!(
        !codes.contains(&100) && !codes.contains(&201),
        "{}",
        got[me]
    );
    for i in [alice, bob] {
        assert_eq!(
            item_attr(&got[i], "jid"),
            None,
            "carol is no moderator: {}",
            got[i]
        );
    }
    assert_eq!(item_attr(&got[bob], "role").as_deref(), Some("participant"));
    assert_eq!(item_attr(&got[bob], "affiliation").as_deref(), Some("none"));

    // Carol's arrival: the moderator sees her JID, the participant does not.
    let p = wait_presence(&mut a, &occupant("garden", "carol"), None).await;
    assert_eq!(item_attr(&p, "jid"), Some(c.full_jid()), "{p}");
    let p = wait_presence(&mut b, &occupant("garden", "carol"), None).await;
    assert_eq!(item_attr(&p, "jid"), None, "{p}");
    assert!(!muc_user_statuses(&p).contains(&110), "{p}");
    s.stop().await;
}

/// XEP-0045 §7.2.3, §10.2.1: whois = anyone makes the room non-anonymous: occupants are told
/// (172), a joiner is warned (100) and everyone sees every real JID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_anonymous_room_shows_every_jid_to_everyone_and_says_so() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    reconfigure(&mut a, "garden", &[("muc#roomconfig_whois", "anyone")]).await;
    let room = room_jid("garden");
    let note = b
        .wait_for(|e| {
            e.name() == "message"
                && e.attr("from") == Some(room.as_str())
                && muc_user_statuses(e).contains(&172)
        })
        .await
        .unwrap_or_else(|e| panic!("no 172 notification: {e:#}"));
    assert_eq!(note.attr("type"), Some("groupchat"), "{note}");

    let got = join(&mut c, "garden", "carol").await;
    let me = self_presence(&got);
    let codes = muc_user_statuses(&me);
    assert!(codes.contains(&100) && codes.contains(&110), "{me}");
    for (nick, who) in [("alice", &a), ("bob", &b)] {
        let p = presence_from(&got, &occupant("garden", nick))
            .unwrap_or_else(|| panic!("no presence of {nick} in {got:?}"));
        assert_eq!(item_attr(&p, "jid"), Some(who.full_jid()), "{p}");
    }
    let p = wait_presence(&mut b, &occupant("garden", "carol"), None).await;
    assert_eq!(item_attr(&p, "jid"), Some(c.full_jid()), "{p}");
    s.stop().await;
}

/// XEP-0045 §7.14, §7.4: leaving: self-presence with 110 and role none to the leaver, the
/// unavailable presence without 110 to the others; a former occupant's groupchat message is
/// not-acceptable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_tells_the_leaver_with_110_and_the_others_without() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let me = leave(&mut b, "garden", "bob").await;
    assert_eq!(
        me.attr("from"),
        Some(occupant("garden", "bob").as_str()),
        "{me}"
    );
    assert_eq!(item_attr(&me, "role").as_deref(), Some("none"), "{me}");
    let p = wait_presence(&mut a, &occupant("garden", "bob"), Some("unavailable")).await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("none"), "{p}");
    assert!(!muc_user_statuses(&p).contains(&110), "{p}");

    send_groupchat(&mut b, "garden", "am I still here?").await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "not-acceptable", "cancel");
    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter()
            .any(|e| body(e).as_deref() == Some("am I still here?")),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §7.14 (RFC 6121 §4.6.3): an occupant whose session sends broadcast unavailable
/// presence leaves the room (its server sends the unavailable presence to the occupant JID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupant_going_unavailable_leaves_the_room() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    b.send("<presence type='unavailable'/>").await;
    let p = wait_presence(&mut a, &occupant("garden", "bob"), Some("unavailable")).await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    s.stop().await;
}

/// XEP-0045 §7.14 (RFC 6121 §4.6.3), docs/muc.md (Leave): an occupant whose connection goes
/// away leaves the room (its server sends unavailable presence on its behalf).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupant_going_offline_leaves_the_room() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut c, "garden", "carol").await;
    drop(c);
    let p = wait_presence(&mut a, &occupant("garden", "carol"), Some("unavailable")).await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    s.stop().await;
}

/// XEP-0045 §7.6: a nick change is an unavailable presence with 303 and the new nick, then an
/// available one from the new nick; the changer's copies carry 110.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_nick_is_unavailable_with_303_then_available_under_the_new_nick() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let _ = wait_presence(&mut a, &occupant("garden", "bob"), None).await;
    b.send(&format!(
        "<presence to='{}'/>",
        occupant("garden", "robert")
    ))
    .await;
    for (who, c) in [("bob", &mut b), ("alice", &mut a)] {
        let old = wait_presence(c, &occupant("garden", "bob"), Some("unavailable")).await;
        let codes = muc_user_statuses(&old);
        assert!(codes.contains(&303), "{who}: {old}");
        assert_eq!(codes.contains(&110), who == "bob", "{who}: {old}");
        assert_eq!(
            item_attr(&old, "nick").as_deref(),
            Some("robert"),
            "{who}: {old}"
        );
        let new = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("{who}: nothing after the 303: {e:#}"));
        assert_eq!(new.name(), "presence", "{who}: {new}");
        assert_eq!(
            new.attr("from"),
            Some(occupant("garden", "robert").as_str()),
            "{who}: {new}"
        );
        assert_eq!(new.attr("type"), None, "{who}: {new}");
        assert_eq!(
            muc_user_statuses(&new).contains(&110),
            who == "bob",
            "{who}: {new}"
        );
        assert_eq!(
            item_attr(&new, "role").as_deref(),
            Some("participant"),
            "{who}: {new}"
        );
    }
    let m = say(&mut b, "garden", "call me robert").await;
    assert_eq!(
        m.attr("from"),
        Some(occupant("garden", "robert").as_str()),
        "{m}"
    );
    s.stop().await;
}

/// XEP-0045 §7.2.8, §7.6: a nick held by another user is a conflict, on joining and on
/// changing nick; the refused change leaves the occupant as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nick_is_a_conflict_on_join_and_on_change() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let e = join_error(&mut c, "garden", "bob", "").await;
    assert_error(&e, "conflict", "cancel");

    b.send(&format!("<presence to='{}'/>", occupant("garden", "alice")))
        .await;
    let e = wait_error(&mut b, "garden", "presence").await;
    assert_error(&e, "conflict", "cancel");
    let m = say(&mut b, "garden", "still bob").await;
    assert_eq!(
        m.attr("from"),
        Some(occupant("garden", "bob").as_str()),
        "{m}"
    );
    let got = join(&mut c, "garden", "carol").await;
    assert!(
        presence_from(&got, &occupant("garden", "bob")).is_some(),
        "{got:?}"
    );
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_some(),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §7.2.1 (RFC 7700): no nick, or one that is empty under the nickname profile, is
/// jid-malformed, and creates no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_nick_is_jid_malformed() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let room = room_jid("garden");
    a.send(&format!(
        "<presence to='{room}'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let e = read_join(&mut a, "garden")
        .await
        .err()
        .unwrap_or_else(|| panic!("joined without a nick"));
    assert_error(&e, "jid-malformed", "modify");
    let info = disco_info(&mut a, &room, None).await;
    assert_error(&info, "item-not-found", "cancel");

    let e = join_error(&mut a, "garden", "   ", "").await;
    assert_error(&e, "jid-malformed", "modify");
    let info = disco_info(&mut a, &room, None).await;
    assert_error(&info, "item-not-found", "cancel");
    create(&mut a, "garden", "alice").await;
    s.stop().await;
}

/// XEP-0045 §8.1, §7.2.15: a moderator sets the subject, every occupant gets it, a participant
/// may not (forbidden), a message with subject and body is no subject change, a joiner gets the
/// current subject last, and an empty subject clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_is_set_by_moderators_broadcast_and_sent_on_join() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    send_subject(&mut a, "garden", "Fire Burn").await;
    wait_subject(&mut a, "garden", "Fire Burn").await;
    wait_subject(&mut b, "garden", "Fire Burn").await;

    send_subject(&mut b, "garden", "Mine now").await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "forbidden", "auth");

    let room = room_jid("garden");
    a.send(&format!(
        "<message to='{room}' type='groupchat'><subject>Greetings</subject><body>Hello</body></message>"
    ))
    .await;
    let m = wait_groupchat(&mut b, "garden", "Hello").await;
    assert_eq!(subject_text(&m).as_deref(), Some("Greetings"), "{m}");
    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter()
            .any(|e| subject_text(e).as_deref() == Some("Mine now")),
        "{got:?}"
    );

    let got = join(&mut c, "garden", "carol").await;
    assert_eq!(
        subject_text(&subject_of(&got)).as_deref(),
        Some("Fire Burn"),
        "{got:?}"
    );
    let info = room_info(&mut c, "garden").await;
    assert_eq!(
        form_value(&roominfo(&info), "muc#roominfo_subject").as_deref(),
        Some("Fire Burn"),
        "{info}"
    );
    send_subject(&mut a, "garden", "").await;
    wait_subject(&mut c, "garden", "").await;
    s.stop().await;
}

/// XEP-0045 §7.4, XEP-0421 §3.2, XEP-0359: a groupchat message goes to every occupant, the
/// sender too, from the sender's occupant JID with the client's id, the same occupant id and
/// the same stanza id by the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groupchat_messages_are_reflected_to_every_occupant_from_the_senders_occupant_jid() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let room = room_jid("garden");
    b.send(&format!(
        "<message to='{room}' type='groupchat' id='bm1'><body>Here I am!</body></message>"
    ))
    .await;
    let mut copies = Vec::new();
    for c in [&mut b, &mut a] {
        let m = wait_groupchat(c, "garden", "Here I am!").await;
        assert_eq!(
            m.attr("from"),
            Some(occupant("garden", "bob").as_str()),
            "{m}"
        );
        assert_eq!(m.attr("to"), Some(c.full_jid().as_str()), "{m}");
        assert_eq!(m.attr("id"), Some("bm1"), "{m}");
        copies.push(m);
    }
    let oid = occupant_id(&copies[0]);
    assert!(
        oid.as_deref().is_some_and(|i| !i.is_empty()),
        "{}",
        copies[0]
    );
    assert_eq!(occupant_id(&copies[1]), oid, "{}", copies[1]);
    let sid = stanza_id(&copies[0], &room);
    assert!(sid.is_some(), "{}", copies[0]);
    assert_eq!(stanza_id(&copies[1], &room), sid, "{}", copies[1]);
    s.stop().await;
}

/// XEP-0045 §7.4: a groupchat message from someone not in the room is not-acceptable and
/// reaches nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groupchat_message_from_a_non_occupant_is_not_acceptable() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    send_groupchat(&mut c, "garden", "intruder").await;
    let e = wait_error(&mut c, "garden", "message").await;
    assert_error(&e, "not-acceptable", "cancel");
    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter().any(|e| body(e).as_deref() == Some("intruder")),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §7.5: a private message goes to the occupant from the sender's occupant JID with
/// the muc#user marker; an unknown nick is item-not-found, type groupchat bad-request, and a
/// non-occupant's not-acceptable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_reach_the_occupant_with_the_muc_user_marker() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let to_alice = occupant("garden", "alice");
    b.send(&format!(
        "<message to='{to_alice}' type='chat' id='pm1'><body>psst</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.name() == "message" && body(e).as_deref() == Some("psst"))
        .await
        .unwrap_or_else(|e| panic!("no private message: {e:#}"));
    assert_eq!(
        m.attr("from"),
        Some(occupant("garden", "bob").as_str()),
        "{m}"
    );
    assert_eq!(m.attr("to"), Some(a.full_jid().as_str()), "{m}");
    assert_eq!(m.attr("type"), Some("chat"), "{m}");
    assert!(m.has_child("x", MUC_USER), "{m}");

    let nobody = occupant("garden", "nobody");
    b.send(&format!(
        "<message to='{nobody}' type='chat'><body>hello?</body></message>"
    ))
    .await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "item-not-found", "cancel");
    b.send(&format!(
        "<message to='{to_alice}' type='groupchat'><body>oops</body></message>"
    ))
    .await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "bad-request", "modify");
    c.send(&format!(
        "<message to='{to_alice}' type='chat'><body>from outside</body></message>"
    ))
    .await;
    let e = wait_error(&mut c, "garden", "message").await;
    assert_error(&e, "not-acceptable", "cancel");

    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter()
            .any(|e| matches!(body(e).as_deref(), Some("oops" | "from outside"))),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §7.2.8 (multi-session nicks): two sessions of one user under one nick are one
/// occupant: both get the room's traffic and private messages, the others never see the
/// occupant leave until its last session does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_of_one_user_under_one_nick_are_one_occupant() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b1 = online(&s, "bob", "b1").await;
    let mut b2 = online(&s, "bob", "b2").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b1, "garden", "bob").await;
    let bob = occupant("garden", "bob");
    wait_presence(&mut a, &bob, None).await;
    let got = join(&mut b2, "garden", "bob").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_some(),
        "{got:?}"
    );
    assert_eq!(self_presence(&got).attr("from"), Some(bob.as_str()));

    let got = say_collecting(&mut a, "garden", "m1").await;
    assert!(
        !got.iter()
            .any(|e| e.attr("from") == Some(bob.as_str()) && e.attr("type") == Some("unavailable")),
        "{got:?}"
    );
    wait_groupchat(&mut b1, "garden", "m1").await;
    wait_groupchat(&mut b2, "garden", "m1").await;

    a.send(&format!(
        "<message to='{bob}' type='chat'><body>both of you</body></message>"
    ))
    .await;
    for c in [&mut b1, &mut b2] {
        let m = c
            .wait_for(|e| e.name() == "message" && body(e).as_deref() == Some("both of you"))
            .await
            .unwrap_or_else(|e| panic!("private message not on every session: {e:#}"));
        assert_eq!(
            m.attr("from"),
            Some(occupant("garden", "alice").as_str()),
            "{m}"
        );
    }

    leave(&mut b1, "garden", "bob").await;
    let got = say_collecting(&mut a, "garden", "m2").await;
    assert!(
        !got.iter()
            .any(|e| e.attr("from") == Some(bob.as_str()) && e.attr("type") == Some("unavailable")),
        "bob left with a session still in: {got:?}"
    );
    wait_groupchat(&mut b2, "garden", "m2").await;
    let rest = b1.drain().await;
    assert!(
        !rest.iter().any(|e| is_groupchat(e, "garden", "m2")),
        "{rest:?}"
    );

    leave(&mut b2, "garden", "bob").await;
    let p = wait_presence(&mut a, &bob, Some("unavailable")).await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    s.stop().await;
}

/// XEP-0045 §7.14 (last note), §6.4: a temporary room is destroyed when its last occupant
/// leaves: disco#info then says item-not-found, the service no longer lists it, and the next
/// presence creates a new room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_room_vanishes_when_the_last_occupant_leaves() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let room = room_jid("garden");
    let items = disco_items(&mut a, ROOMS, None).await;
    assert!(items.iter().any(|(j, _, _)| *j == room), "{items:?}");
    leave(&mut a, "garden", "alice").await;
    room_info(&mut b, "garden").await;
    leave(&mut b, "garden", "bob").await;
    let info = disco_info(&mut b, &room, None).await;
    assert_error(&info, "item-not-found", "cancel");
    let items = disco_items(&mut b, ROOMS, None).await;
    assert!(!items.iter().any(|(j, _, _)| *j == room), "{items:?}");
    let got = create(&mut b, "garden", "bob").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_none(),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §10.9: only an owner destroys a room (else forbidden); every occupant gets one
/// unavailable presence with `<destroy jid>` and the reason; the room is then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_a_room_removes_everyone_with_the_alternate_venue_and_reason() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "heath", "alice").await;
    join(&mut b, "heath", "bob").await;
    let venue = room_jid("coven");
    let destroy = format!("<destroy jid='{venue}'><reason>Macbeth doth come.</reason></destroy>");
    let r = muc_owner(&mut b, "set", "heath", &destroy).await;
    assert_error(&r, "forbidden", "auth");
    room_info(&mut b, "heath").await;

    let r = muc_owner(&mut a, "set", "heath", &destroy).await;
    assert_result(&r);
    for (nick, c) in [("bob", &mut b), ("alice", &mut a)] {
        let p = wait_presence(c, &occupant("heath", nick), Some("unavailable")).await;
        let d = p
            .get_child("x", MUC_USER)
            .and_then(|x| x.get_child("destroy", MUC_USER))
            .unwrap_or_else(|| panic!("no <destroy/>: {p}"));
        assert_eq!(d.attr("jid"), Some(venue.as_str()), "{p}");
        assert_eq!(
            d.get_child("reason", MUC_USER)
                .map(Element::text)
                .as_deref(),
            Some("Macbeth doth come."),
            "{p}"
        );
        assert_eq!(item_attr(&p, "role").as_deref(), Some("none"), "{p}");
    }
    // One presence each: bob is not told of alice's departure separately.
    room_sync(&mut a, "heath").await;
    let rest = b.drain().await;
    assert!(
        !rest
            .iter()
            .any(|e| e.attr("from") == Some(occupant("heath", "alice").as_str())),
        "{rest:?}"
    );
    let info = disco_info(&mut b, &room_jid("heath"), None).await;
    assert_error(&info, "item-not-found", "cancel");
    s.stop().await;
}

/// XEP-0045 §7.2.1 (last paragraph): a join presence from a client already in the room is a
/// resynchronisation: it gets the occupants, its self-presence, the history and the subject
/// again, and the others see no new occupant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_again_resynchronises_the_client() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    send_subject(&mut a, "garden", "Resync").await;
    wait_subject(&mut a, "garden", "Resync").await;
    join(&mut b, "garden", "bob").await;
    say(&mut a, "garden", "before").await;
    wait_groupchat(&mut b, "garden", "before").await;

    let got = join(&mut b, "garden", "bob").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_some(),
        "{got:?}"
    );
    let me = self_presence(&got);
    assert_eq!(
        me.attr("from"),
        Some(occupant("garden", "bob").as_str()),
        "{me}"
    );
    assert!(!muc_user_statuses(&me).contains(&201), "{me}");
    assert_eq!(bodies(&history_of(&got, "garden")), ["before"], "{got:?}");
    assert_eq!(
        subject_text(&subject_of(&got)).as_deref(),
        Some("Resync"),
        "{got:?}"
    );
    // Still one occupant: no unavailable presence for bob, and one presence from him at most.
    let seen = say_collecting(&mut a, "garden", "after").await;
    assert!(
        !seen.iter().any(|e| e.attr("type") == Some("unavailable")),
        "{seen:?}"
    );
    let occupants = disco_info(&mut a, &room_jid("garden"), None).await;
    assert_eq!(
        form_value(&roominfo(&occupants), "muc#roominfo_occupants").as_deref(),
        Some("2"),
        "{occupants}"
    );
    s.stop().await;
}

/// docs/muc.md (Join), XEP-0045 §7.2.18: a presence to an occupant JID without the MUC `<x/>`
/// from a non-occupant is accepted as a join (as Prosody does for groupchat 1.0 clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_the_muc_element_is_accepted() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    b.send(&format!("<presence to='{}'/>", occupant("garden", "bob")))
        .await;
    let got = read_join(&mut b, "garden")
        .await
        .unwrap_or_else(|e| panic!("refused: {e}"));
    let me = self_presence(&got);
    assert_eq!(
        item_attr(&me, "role").as_deref(),
        Some("participant"),
        "{me}"
    );
    wait_presence(&mut a, &occupant("garden", "bob"), None).await;
    s.stop().await;
}

/// XEP-0045 §7.7: an occupant's change of availability goes to every occupant from its
/// occupant JID, with show, status and the muc#user item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_availability_change_is_broadcast_to_the_room() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let bob = occupant("garden", "bob");
    wait_presence(&mut a, &bob, None).await;
    b.send(&format!(
        "<presence to='{bob}'><show>xa</show><status>gone where the goblins go</status></presence>"
    ))
    .await;
    let p = a
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("from") == Some(bob.as_str())
                && e.get_child("show", CLIENT).map(Element::text).as_deref() == Some("xa")
        })
        .await
        .unwrap_or_else(|e| panic!("no availability change: {e:#}"));
    assert_eq!(p.attr("type"), None, "{p}");
    assert_eq!(
        p.get_child("status", CLIENT).map(Element::text).as_deref(),
        Some("gone where the goblins go"),
        "{p}"
    );
    assert_eq!(item_attr(&p, "role").as_deref(), Some("participant"), "{p}");
    assert_eq!(
        item_attr(&p, "jid"),
        Some(b.full_jid()),
        "the moderator sees the jid: {p}"
    );
    assert!(!muc_user_statuses(&p).contains(&110), "{p}");
    s.stop().await;
}

/// Waits for a configuration notification (a groupchat message from the room's bare JID with
/// muc#user status codes, §10.2.1); returns its codes.
async fn wait_config_notice(c: &mut Client, room: &str) -> Vec<u16> {
    let room = room_jid(room);
    let m = c
        .wait_for(|e| {
            e.name() == "message"
                && e.attr("from") == Some(room.as_str())
                && !muc_user_statuses(e).is_empty()
        })
        .await
        .unwrap_or_else(|e| panic!("no configuration notification from {room}: {e:#}"));
    assert_eq!(m.attr("type"), Some("groupchat"), "{m}");
    muc_user_statuses(&m)
}

/// XEP-0045 §10.2.1: occupants are told of configuration changes: logging off (171) and on
/// (170), semi-anonymous again (173), and 104 for another change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_changes_are_announced_to_the_occupants() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    for (fields, code) in [
        (&[("muc#roomconfig_enablearchiving", "0")][..], 171),
        (&[("muc#roomconfig_enablearchiving", "1")][..], 170),
        (&[("muc#roomconfig_whois", "anyone")][..], 172),
        (&[("muc#roomconfig_whois", "moderators")][..], 173),
        (&[("muc#roomconfig_roomname", "Renamed")][..], 104),
    ] {
        reconfigure(&mut a, "garden", fields).await;
        let codes = wait_config_notice(&mut b, "garden").await;
        assert!(codes.contains(&code), "{fields:?}: {codes:?}");
    }
    s.stop().await;
}

/// XEP-0045 §7.2.2, §15.5.3 `presencebroadcast`: presence of occupants whose role is not
/// broadcast goes to nobody else (their self-presence still comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_broadcast_is_limited_to_the_configured_roles() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_presencebroadcast", "moderator")],
    )
    .await;
    let got = join(&mut b, "garden", "bob").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_some(),
        "{got:?}"
    );
    let got = join(&mut c, "garden", "carol").await;
    assert!(
        presence_from(&got, &occupant("garden", "alice")).is_some(),
        "{got:?}"
    );
    assert!(
        presence_from(&got, &occupant("garden", "bob")).is_none(),
        "{got:?}"
    );
    let seen = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !seen
            .iter()
            .any(|e| e.name() == "presence" && from_room(e, "garden")),
        "{seen:?}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The service: disco, listing, switching off.
// ---------------------------------------------------------------------------------------------

/// XEP-0045 §6.1, §6.2: the host lists the service; the service is a conference/text and
/// speaks MUC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_listed_and_says_it_is_a_text_conference() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let items = disco_items(&mut a, HOST, None).await;
    assert!(
        items.iter().any(|(j, n, _)| j == ROOMS && n.is_empty()),
        "{items:?}"
    );
    let info = disco_info(&mut a, ROOMS, None).await;
    assert_result(&info);
    assert_eq!(info.attr("from"), Some(ROOMS), "{info}");
    assert!(
        identities(&info).contains(&("conference".to_string(), "text".to_string())),
        "{info}"
    );
    let f = features(&info);
    assert!(f.iter().any(|v| v == MUC), "{info}");
    assert!(f.iter().any(|v| v == DISCO_INFO), "{info}");
    // No rooms yet.
    assert!(disco_items(&mut a, ROOMS, None).await.is_empty());
    s.stop().await;
}

/// XEP-0045 §6.3, §6.4: the service lists public rooms (with their names), not hidden ones;
/// the room's disco says which it is, and a change of `publicroom` moves it in or out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_lists_public_rooms_but_not_hidden_ones() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_reserved(
        &mut a,
        "plaza",
        "alice",
        &[("muc#roomconfig_roomname", "Open Air")],
    )
    .await;
    create_reserved(
        &mut a,
        "cellar",
        "alice",
        &[("muc#roomconfig_publicroom", "0")],
    )
    .await;
    let (plaza, cellar) = (room_jid("plaza"), room_jid("cellar"));
    let items = disco_items(&mut b, ROOMS, None).await;
    let listed = items
        .iter()
        .find(|(j, _, _)| *j == plaza)
        .unwrap_or_else(|| panic!("{plaza} not listed: {items:?}"));
    assert!(listed.2.contains("Open Air"), "{items:?}");
    assert!(!items.iter().any(|(j, _, _)| *j == cellar), "{items:?}");
    let f = features(&room_info(&mut b, "cellar").await);
    assert!(
        f.iter().any(|v| v == "muc_hidden") && !f.iter().any(|v| v == "muc_public"),
        "{f:?}"
    );
    let f = features(&room_info(&mut b, "plaza").await);
    assert!(
        f.iter().any(|v| v == "muc_public") && !f.iter().any(|v| v == "muc_hidden"),
        "{f:?}"
    );

    reconfigure(&mut a, "cellar", &[("muc#roomconfig_publicroom", "1")]).await;
    reconfigure(&mut a, "plaza", &[("muc#roomconfig_publicroom", "0")]).await;
    let items = disco_items(&mut b, ROOMS, None).await;
    assert!(items.iter().any(|(j, _, _)| *j == cellar), "{items:?}");
    assert!(!items.iter().any(|(j, _, _)| *j == plaza), "{items:?}");
    s.stop().await;
}

/// docs/muc.md: `[services."conference.localhost"] enabled = false` switches the service off:
/// not listed, and its domain is answered like any unserved one; example.test keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_service_is_gone() {
    let mut config = muc_config();
    config.services.insert(
        ROOMS.to_string(),
        canto_core::config::ServiceConfig {
            enabled: false,
            ..Default::default()
        },
    );
    let s = server_with(config).await;
    let mut a = online(&s, "alice", "a1").await;
    let items = disco_items(&mut a, HOST, None).await;
    assert!(!items.iter().any(|(j, _, _)| j == ROOMS), "{items:?}");
    let unserved = disco_info(&mut a, "nothing.localhost", None).await;
    assert_eq!(unserved.attr("type"), Some("error"), "{unserved}");
    let r = disco_info(&mut a, ROOMS, None).await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(error_condition(&r), error_condition(&unserved), "{r}");
    assert_eq!(error_type(&r), error_type(&unserved), "{r}");
    let r = disco_info(&mut a, &room_jid("garden"), None).await;
    assert_eq!(error_condition(&r), error_condition(&unserved), "{r}");
    let r = disco_info(&mut a, "conference.example.test", None).await;
    assert_result(&r);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

/// Asserts that `f` has every feature of `yes` and none of `no`.
fn assert_features(info: &Element, yes: &[&str], no: &[&str]) {
    let f = features(info);
    for want in yes {
        assert!(f.iter().any(|v| v == want), "{want} missing: {info}");
    }
    for not in no {
        assert!(!f.iter().any(|v| v == not), "{not} present: {info}");
    }
}

/// XEP-0045 §6.4, §15.5.4, XEP-0421 §2, XEP-0410 §3.3, XEP-0313 (MUC): room disco#info
/// reflects every configuration choice in its features, identity and muc#roominfo form, and
/// the configuration form shows the submitted values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_disco_reflects_the_configuration() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    let info = room_info(&mut b, "garden").await;
    assert_eq!(
        info.attr("from"),
        Some(room_jid("garden").as_str()),
        "{info}"
    );
    assert!(
        identities(&info).contains(&("conference".to_string(), "text".to_string())),
        "{info}"
    );
    assert_features(
        &info,
        &[
            MUC,
            STABLE_ID,
            OCCUPANT_ID,
            SELF_PING_OPT,
            MODERATE,
            MAM,
            SID,
            "muc_public",
            "muc_temporary",
            "muc_open",
            "muc_unmoderated",
            "muc_unsecured",
            "muc_semianonymous",
        ],
        &[
            "muc_hidden",
            "muc_persistent",
            "muc_membersonly",
            "muc_moderated",
            "muc_passwordprotected",
            "muc_nonanonymous",
        ],
    );
    let x = roominfo(&info);
    assert_eq!(x.attr("type"), Some("result"), "{info}");
    assert_eq!(
        form_value(&x, "muc#roominfo_occupants").as_deref(),
        Some("1"),
        "{info}"
    );

    reconfigure(
        &mut a,
        "garden",
        &[
            ("muc#roomconfig_roomname", "The Garden"),
            ("muc#roomconfig_roomdesc", "Where the roses grow"),
            ("muc#roomconfig_publicroom", "0"),
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_moderatedroom", "1"),
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "cauldronburn"),
            ("muc#roomconfig_whois", "anyone"),
            ("muc#roomconfig_enablearchiving", "0"),
            ("muc#roomconfig_historylength", "7"),
            ("muc#roomconfig_allowpm", "moderators"),
            ("muc#roomconfig_allowinvites", "1"),
            ("muc#roomconfig_maxusers", "50"),
        ],
    )
    .await;
    send_subject(&mut a, "garden", "Roses").await;
    wait_subject(&mut a, "garden", "Roses").await;
    let info = room_info(&mut b, "garden").await;
    assert_features(
        &info,
        &[
            MUC,
            STABLE_ID,
            OCCUPANT_ID,
            "muc_hidden",
            "muc_persistent",
            "muc_membersonly",
            "muc_moderated",
            "muc_passwordprotected",
            "muc_nonanonymous",
        ],
        &[
            MAM,
            "muc_public",
            "muc_temporary",
            "muc_open",
            "muc_unmoderated",
            "muc_unsecured",
            "muc_semianonymous",
        ],
    );
    assert_eq!(
        identity_name(&info).as_deref(),
        Some("The Garden"),
        "{info}"
    );
    let x = roominfo(&info);
    for (var, want) in [
        ("muc#roominfo_description", "Where the roses grow"),
        ("muc#roomconfig_roomname", "The Garden"),
        ("muc#roominfo_subject", "Roses"),
        ("muc#roominfo_occupants", "1"),
    ] {
        assert_eq!(form_value(&x, var).as_deref(), Some(want), "{var}: {info}");
    }
    // The password is not disclosed.
    assert!(!format!("{info}").contains("cauldronburn"), "{info}");

    let x = config_form(&mut a, "garden").await;
    for (var, want) in [
        ("muc#roomconfig_publicroom", false),
        ("muc#roomconfig_persistentroom", true),
        ("muc#roomconfig_membersonly", true),
        ("muc#roomconfig_moderatedroom", true),
        ("muc#roomconfig_enablearchiving", false),
        ("muc#roomconfig_allowinvites", true),
    ] {
        assert_eq!(form_bool(&x, var), Some(want), "{var}: {x}");
    }
    for (var, want) in [
        ("muc#roomconfig_whois", "anyone"),
        ("muc#roomconfig_historylength", "7"),
        ("muc#roomconfig_allowpm", "moderators"),
        ("muc#roomconfig_maxusers", "50"),
        ("muc#roomconfig_roomsecret", "cauldronburn"),
    ] {
        assert_eq!(form_value(&x, var).as_deref(), Some(want), "{var}: {x}");
    }
    s.stop().await;
}

/// XEP-0045 §7.2.5: a password-protected room refuses a join without the password or with a
/// wrong one (not-authorized) and admits the right one; without a password it is open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_room_needs_the_password() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "cauldronburn"),
        ],
    )
    .await;
    let e = join_error(&mut b, "garden", "bob", "").await;
    assert_error(&e, "not-authorized", "auth");
    let e = join_error(&mut b, "garden", "bob", "<password>toil</password>").await;
    assert_error(&e, "not-authorized", "auth");
    join_with(&mut b, "garden", "bob", "<password>cauldronburn</password>").await;
    wait_presence(&mut a, &occupant("garden", "bob"), None).await;

    reconfigure(
        &mut a,
        "garden",
        &[
            ("muc#roomconfig_passwordprotectedroom", "0"),
            ("muc#roomconfig_roomsecret", ""),
        ],
    )
    .await;
    join(&mut c, "garden", "carol").await;
    assert_features(
        &room_info(&mut c, "garden").await,
        &["muc_unsecured"],
        &["muc_passwordprotected"],
    );
    s.stop().await;
}

/// XEP-0045 §7.2.6: a members-only room refuses non-members (registration-required) and
/// admits them once an owner made them members (§9.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_only_room_admits_members_only() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_membersonly", "1")],
    )
    .await;
    let e = join_error(&mut b, "garden", "bob", "").await;
    assert_error(&e, "registration-required", "auth");
    let r = muc_admin(
        &mut a,
        "set",
        "garden",
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    assert_result(&r);
    let got = join(&mut b, "garden", "bob").await;
    let me = self_presence(&got);
    assert_eq!(
        item_attr(&me, "affiliation").as_deref(),
        Some("member"),
        "{me}"
    );
    s.stop().await;
}

/// XEP-0045 §7.2.9, docs/muc.md `max_occupants`: a full room refuses another user
/// (service-unavailable, wait) but admits a service admin; `maxusers` defaults to
/// `max_occupants` and raising it lets one more in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_users_but_not_admins() {
    let s = server_with_muc("max_occupants = 3\nadmins = [\"dave@localhost\"]").await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    let mut d = online(&s, "dave", "d1").await;
    let mut e = online(&s, "eve", "e1").await;
    create(&mut a, "garden", "alice").await;
    let x = config_form(&mut a, "garden").await;
    assert_eq!(
        form_value(&x, "muc#roomconfig_maxusers").as_deref(),
        Some("3"),
        "{x}"
    );
    reconfigure(&mut a, "garden", &[("muc#roomconfig_maxusers", "2")]).await;
    join(&mut b, "garden", "bob").await;
    let err = join_error(&mut c, "garden", "carol", "").await;
    assert_error(&err, "service-unavailable", "wait");
    // A service admin is an owner of every room: still admitted.
    let got = join(&mut d, "garden", "dave").await;
    assert_eq!(
        item_attr(&self_presence(&got), "affiliation").as_deref(),
        Some("owner")
    );
    leave(&mut d, "garden", "dave").await;

    reconfigure(&mut a, "garden", &[("muc#roomconfig_maxusers", "3")]).await;
    join(&mut c, "garden", "carol").await;
    let err = join_error(&mut e, "garden", "eve", "").await;
    assert_error(&err, "service-unavailable", "wait");
    s.stop().await;
}

/// XEP-0045 §5.1.1, §7.4: in a moderated room a newcomer is a visitor whose groupchat message
/// is forbidden and reaches nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_moderated_room_a_visitor_may_not_speak() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    let got = join(&mut b, "garden", "bob").await;
    assert_eq!(
        item_attr(&self_presence(&got), "role").as_deref(),
        Some("visitor"),
        "{got:?}"
    );
    assert_features(
        &room_info(&mut b, "garden").await,
        &["muc_moderated"],
        &["muc_unmoderated"],
    );
    send_groupchat(&mut b, "garden", "let me speak").await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "forbidden", "auth");
    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter()
            .any(|e| body(e).as_deref() == Some("let me speak")),
        "{got:?}"
    );
    // The moderator still speaks, and the visitor hears.
    wait_groupchat(&mut b, "garden", "barrier").await;
    s.stop().await;
}

/// XEP-0045 §8.1, §15.5.3 `changesubject`: by default only moderators change the subject;
/// with changesubject on, a participant may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changesubject_lets_participants_set_the_subject() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    send_subject(&mut b, "garden", "Bob's topic").await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "forbidden", "auth");
    reconfigure(&mut a, "garden", &[("muc#roomconfig_changesubject", "1")]).await;
    send_subject(&mut b, "garden", "Bob's topic").await;
    let m = wait_subject(&mut a, "garden", "Bob's topic").await;
    assert!(from_room(&m, "garden"), "{m}");
    wait_subject(&mut b, "garden", "Bob's topic").await;
    s.stop().await;
}

/// XEP-0045 §7.5, §15.5.3 `allowpm`: `none` forbids private messages, `moderators` allows only
/// moderators to send them, `anyone` everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowpm_decides_who_may_send_private_messages() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_allowpm", "none")],
    )
    .await;
    join(&mut b, "garden", "bob").await;
    let (alice, bob) = (occupant("garden", "alice"), occupant("garden", "bob"));
    let pm = |to: &str, text: &str| {
        format!("<message to='{to}' type='chat'><body>{text}</body></message>")
    };

    b.send(&pm(&alice, "p1")).await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "forbidden", "auth");

    reconfigure(
        &mut a,
        "garden",
        &[("muc#roomconfig_allowpm", "moderators")],
    )
    .await;
    b.send(&pm(&alice, "p2")).await;
    let e = wait_error(&mut b, "garden", "message").await;
    assert_error(&e, "forbidden", "auth");
    a.send(&pm(&bob, "p3")).await;
    let m = b
        .wait_for(|e| e.name() == "message" && body(e).as_deref() == Some("p3"))
        .await
        .unwrap_or_else(|e| panic!("moderator's private message: {e:#}"));
    assert_eq!(m.attr("from"), Some(alice.as_str()), "{m}");

    reconfigure(&mut a, "garden", &[("muc#roomconfig_allowpm", "anyone")]).await;
    b.send(&pm(&alice, "p4")).await;
    let got = a
        .wait_for(|e| e.name() == "message" && body(e).as_deref() == Some("p4"))
        .await
        .unwrap_or_else(|e| panic!("participant's private message: {e:#}"));
    assert_eq!(got.attr("from"), Some(bob.as_str()), "{got}");
    // p1 and p2 never arrived.
    let got = say_collecting(&mut a, "garden", "barrier").await;
    assert!(
        !got.iter()
            .any(|e| matches!(body(e).as_deref(), Some("p1" | "p2"))),
        "{got:?}"
    );
    s.stop().await;
}

/// XEP-0045 §10.2, §10.1.3: only an owner gets or submits the configuration (forbidden); a
/// form of another FORM_TYPE or not of type submit is refused with bad-request (Prosody's
/// condition) of type modify (XEP-0045 §10.1.3 answers an unacceptable form with type modify;
/// RFC 6120 §8.3.3.1; Prosody says cancel); none of them changes the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_requests_are_refused_and_change_nothing() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_roomname", "Garden")],
    )
    .await;
    join(&mut b, "garden", "bob").await;
    let r = muc_owner(&mut b, "get", "garden", "").await;
    assert_error(&r, "forbidden", "auth");
    let r = configure(&mut b, "garden", &[("muc#roomconfig_roomname", "Bob's")]).await;
    assert_error(&r, "forbidden", "auth");

    let wrong = form(
        "urn:example:not-roomconfig",
        &[("muc#roomconfig_roomname", "Wrong")],
    );
    let r = muc_owner(&mut a, "set", "garden", &wrong).await;
    assert_error(&r, "bad-request", "modify");
    let not_submitted = form(ROOMCONFIG, &[("muc#roomconfig_roomname", "Form")])
        .replace("type='submit'", "type='form'");
    let r = muc_owner(&mut a, "set", "garden", &not_submitted).await;
    assert_error(&r, "bad-request", "modify");

    let x = config_form(&mut a, "garden").await;
    assert_eq!(
        form_value(&x, "muc#roomconfig_roomname").as_deref(),
        Some("Garden"),
        "{x}"
    );
    let info = room_info(&mut b, "garden").await;
    assert_eq!(identity_name(&info).as_deref(), Some("Garden"), "{info}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// History and the room archive.
// ---------------------------------------------------------------------------------------------

/// Alice creates `room` (instant) and says each of `texts`.
async fn room_with_history(a: &mut Client, room: &str, texts: &[&str]) {
    create_instant(a, room, "alice").await;
    for t in texts {
        say(a, room, t).await;
    }
}

/// Joins with `<history …/>` (`attrs`, empty: none), returns the history bodies, and leaves.
async fn history_bodies(c: &mut Client, room: &str, nick: &str, attrs: &str) -> Vec<String> {
    let inner = if attrs.is_empty() {
        String::new()
    } else {
        format!("<history {attrs}/>")
    };
    let got = join_with(c, room, nick, &inner).await;
    leave(c, room, nick).await;
    bodies(&history_of(&got, room))
}

/// XEP-0045 §7.2.13, XEP-0203, XEP-0421 §4: a joiner gets the discussion history (messages
/// with a body, not a bare chat state) from the senders' occupant JIDs, each with a
/// `<delay from=room>` and the sender's occupant id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_join_is_stamped_with_a_delay_from_the_room() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    room_with_history(&mut a, "garden", &["one", "two"]).await;
    let room = room_jid("garden");
    a.send(&format!(
        "<message to='{room}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ))
    .await;
    let live = say(&mut a, "garden", "three").await;
    let got = join(&mut b, "garden", "bob").await;
    let history = history_of(&got, "garden");
    assert_eq!(bodies(&history), ["one", "two", "three"], "{got:?}");
    assert_eq!(history.len(), 3, "only messages with a body: {history:?}");
    for m in &history {
        assert_eq!(
            m.attr("from"),
            Some(occupant("garden", "alice").as_str()),
            "{m}"
        );
        assert_eq!(m.attr("to"), Some(b.full_jid().as_str()), "{m}");
        let d = m
            .get_child("delay", DELAY)
            .unwrap_or_else(|| panic!("no delay: {m}"));
        assert_eq!(d.attr("from"), Some(room.as_str()), "{m}");
        assert!(
            d.attr("stamp")
                .is_some_and(|t| t.contains('T') && t.ends_with('Z')),
            "{m}"
        );
        assert_eq!(occupant_id(m), occupant_id(&live), "{m}");
    }
    assert!(occupant_id(&live).is_some(), "{live}");
    s.stop().await;
}

/// XEP-0045 §7.2.14: `maxstanzas`, `maxchars`, `seconds` and `since` limit the history, and
/// together the smallest amount wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_requests_are_honoured() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    room_with_history(&mut a, "garden", &["h1", "h2", "h3", "h4", "h5"]).await;
    let all = ["h1", "h2", "h3", "h4", "h5"];
    for (attrs, want) in [
        ("", &all[..]),
        ("maxstanzas='2'", &all[3..]),
        ("maxstanzas='0'", &[][..]),
        ("maxchars='0'", &[][..]),
        ("maxchars='10'", &[][..]),
        ("maxchars='1000000'", &all[..]),
        ("seconds='3600'", &all[..]),
        ("since='1970-01-01T00:00:00Z'", &all[..]),
        ("since='2999-01-01T00:00:00Z'", &[][..]),
        ("maxstanzas='3' since='2999-01-01T00:00:00Z'", &[][..]),
        ("maxstanzas='3' seconds='3600'", &all[2..]),
    ] {
        let got = history_bodies(&mut b, "garden", "bob", attrs).await;
        assert_eq!(got, want, "<history {attrs}/>");
    }
    s.stop().await;
}

/// docs/muc.md `default_history`, XEP-0045 §15.5.3 `historylength`: a new room keeps the
/// service's default number of messages; the owner changes it (0: none), and a request for more
/// than the room keeps gets only what it keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_length_comes_from_the_configuration() {
    let s = server_with_muc("default_history = 3").await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    room_with_history(&mut a, "garden", &["h1", "h2", "h3", "h4", "h5"]).await;
    let x = config_form(&mut a, "garden").await;
    assert_eq!(
        form_value(&x, "muc#roomconfig_historylength").as_deref(),
        Some("3"),
        "{x}"
    );
    assert_eq!(
        history_bodies(&mut b, "garden", "bob", "").await,
        ["h3", "h4", "h5"]
    );
    assert_eq!(
        history_bodies(&mut b, "garden", "bob", "maxstanzas='10'").await,
        ["h3", "h4", "h5"]
    );
    reconfigure(&mut a, "garden", &[("muc#roomconfig_historylength", "1")]).await;
    say(&mut a, "garden", "h6").await;
    assert_eq!(history_bodies(&mut b, "garden", "bob", "").await, ["h6"]);
    reconfigure(&mut a, "garden", &[("muc#roomconfig_historylength", "0")]).await;
    say(&mut a, "garden", "h7").await;
    assert!(history_bodies(&mut b, "garden", "bob", "").await.is_empty());
    s.stop().await;
}

/// XEP-0313 §4 (on a MUC), XEP-0359, XEP-0059: the room archives its groupchat messages; a MAM
/// query to the room's bare JID is answered from the room, in order, with the ids the live
/// messages carried as stanza-id by the room, in RSM pages; anyone who may join may query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_archive_answers_mam_queries_with_the_live_stanza_ids() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let room = room_jid("garden");
    let texts = ["m1", "m2", "m3", "m4", "m5"];
    let mut sids = Vec::new();
    let mut live_occupant_id = None;
    for t in texts {
        let mine = say(&mut a, "garden", t).await;
        let theirs = wait_groupchat(&mut b, "garden", t).await;
        live_occupant_id = occupant_id(&theirs);
        let sid =
            stanza_id(&mine, &room).unwrap_or_else(|| panic!("no stanza-id by the room: {mine}"));
        assert_eq!(
            stanza_id(&theirs, &room).as_deref(),
            Some(sid.as_str()),
            "{theirs}"
        );
        sids.push(sid);
    }
    let distinct: std::collections::HashSet<&String> = sids.iter().collect();
    assert_eq!(distinct.len(), sids.len(), "{sids:?}");

    let page = |after: Option<&str>| {
        let after = after
            .map(|a| format!("<after>{a}</after>"))
            .unwrap_or_default();
        format!("<set xmlns='{RSM}'><max>2</max>{after}</set>")
    };
    let (results, reply) = room_mam(&mut b, "garden", &page(None)).await;
    assert_result(&reply);
    assert_eq!(reply.attr("from"), Some(room.as_str()), "{reply}");
    let msgs: Vec<Element> = results.iter().map(archived).collect();
    assert_eq!(bodies(&msgs), ["m1", "m2"], "{results:?}");
    let ids: Vec<&str> = results.iter().filter_map(|r| r.attr("id")).collect();
    assert_eq!(ids, [sids[0].as_str(), sids[1].as_str()], "{results:?}");
    for (r, m) in results.iter().zip(&msgs) {
        assert_eq!(
            m.attr("from"),
            Some(occupant("garden", "alice").as_str()),
            "{m}"
        );
        assert_eq!(m.attr("type"), Some("groupchat"), "{m}");
        let fwd = r
            .get_child("forwarded", FORWARD)
            .unwrap_or_else(|| panic!("{r}"));
        assert!(fwd.has_child("delay", DELAY), "{r}");
    }
    let fin = reply
        .get_child("fin", MAM)
        .unwrap_or_else(|| panic!("no fin: {reply}"));
    assert_ne!(fin.attr("complete"), Some("true"), "{reply}");
    assert_eq!(
        fin_rsm(&reply, "last").as_deref(),
        Some(sids[1].as_str()),
        "{reply}"
    );

    let (results, reply) = room_mam(&mut b, "garden", &page(Some(&sids[1]))).await;
    assert_result(&reply);
    assert_eq!(
        bodies(&results.iter().map(archived).collect::<Vec<_>>()),
        ["m3", "m4"]
    );
    let (results, reply) = room_mam(&mut b, "garden", &page(Some(&sids[3]))).await;
    assert_result(&reply);
    assert_eq!(
        bodies(&results.iter().map(archived).collect::<Vec<_>>()),
        ["m5"]
    );
    let fin = reply
        .get_child("fin", MAM)
        .unwrap_or_else(|| panic!("no fin: {reply}"));
    assert_eq!(fin.attr("complete"), Some("true"), "{reply}");

    // XEP-0059 §2.5: an empty <before/> asks for the last page.
    let (results, reply) = room_mam(
        &mut b,
        "garden",
        &format!("<set xmlns='{RSM}'><max>2</max><before/></set>"),
    )
    .await;
    assert_result(&reply);
    let msgs: Vec<Element> = results.iter().map(archived).collect();
    assert_eq!(bodies(&msgs), ["m4", "m5"], "{results:?}");
    // XEP-0421 §4: archived messages carry the sender's occupant id too.
    let alice_id = live_occupant_id.clone();
    for m in &msgs {
        assert!(alice_id.is_some() && occupant_id(m) == alice_id, "{m}");
    }

    // Carol is not in the room, but may join it: she may read its archive.
    let (results, reply) = room_mam(&mut c, "garden", "").await;
    assert_result(&reply);
    assert_eq!(
        bodies(&results.iter().map(archived).collect::<Vec<_>>()),
        texts
    );
    s.stop().await;
}

/// docs/muc.md (Archive), XEP-0313 §4: a members-only room's archive is for its members
/// (forbidden to others, as Prosody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_only_rooms_archive_is_for_members() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_reserved(
        &mut a,
        "garden",
        "alice",
        &[("muc#roomconfig_membersonly", "1")],
    )
    .await;
    say(&mut a, "garden", "members only").await;
    let (results, reply) = room_mam(&mut c, "garden", "").await;
    assert_error(&reply, "forbidden", "auth");
    assert!(results.is_empty(), "{results:?}");
    let (results, reply) = room_mam(&mut a, "garden", "").await;
    assert_result(&reply);
    assert_eq!(
        bodies(&results.iter().map(archived).collect::<Vec<_>>()),
        ["members only"]
    );
    s.stop().await;
}

/// docs/muc.md (Join, Archive), XEP-0045 §7.2.12, XEP-0359: with archiving off a room says
/// nothing of logging (no 170), offers no MAM, and its messages carry no stanza-id by the room
/// and are not archived; an archiving room says 170.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_archiving_off_has_no_stanza_ids_and_no_mam() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "loud", "alice").await;
    let got = join(&mut b, "loud", "bob").await;
    assert!(
        muc_user_statuses(&self_presence(&got)).contains(&170),
        "{got:?}"
    );

    create_reserved(
        &mut a,
        "quiet",
        "alice",
        &[("muc#roomconfig_enablearchiving", "0")],
    )
    .await;
    let got = join(&mut b, "quiet", "bob").await;
    assert!(
        !muc_user_statuses(&self_presence(&got)).contains(&170),
        "{got:?}"
    );
    assert_features(&room_info(&mut b, "quiet").await, &[MUC], &[MAM]);
    let room = room_jid("quiet");
    let mine = say(&mut a, "quiet", "unlogged").await;
    let theirs = wait_groupchat(&mut b, "quiet", "unlogged").await;
    assert_eq!(stanza_id(&mine, &room), None, "{mine}");
    assert_eq!(stanza_id(&theirs, &room), None, "{theirs}");
    let (results, _) = room_mam(&mut b, "quiet", "").await;
    assert!(
        !results
            .iter()
            .any(|r| body(&archived(r)).as_deref() == Some("unlogged")),
        "{results:?}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Modern extensions: self-ping, occupant ids, corrections and retractions.
// ---------------------------------------------------------------------------------------------

/// XEP-0410 §3.2, §3.3: a ping to one's own occupant JID is answered by the room (result) while
/// joined; a non-occupant's, or a former occupant's, is not-acceptable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_ping_tells_an_occupant_whether_it_is_joined() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut c = online(&s, "carol", "c1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let ping =
        |to: &str| format!("<iq type='get' id='{{id}}' to='{to}'><ping xmlns='{PING}'/></iq>");
    let bob = occupant("garden", "bob");
    let r = ask(&mut b, &ping(&bob)).await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some(bob.as_str()), "{r}");
    // Answered by the service, not passed on to one of bob's sessions.
    let rest = b.drain().await;
    assert!(!rest.iter().any(|e| e.name() == "iq"), "{rest:?}");

    let r = ask(&mut c, &ping(&occupant("garden", "carol"))).await;
    assert_error(&r, "not-acceptable", "cancel");
    let r = ask(&mut c, &ping(&bob)).await;
    assert_error(&r, "not-acceptable", "cancel");
    leave(&mut b, "garden", "bob").await;
    let r = ask(&mut b, &ping(&bob)).await;
    assert_error(&r, "not-acceptable", "cancel");
    s.stop().await;
}

/// XEP-0421 §3, §4: every presence and message from an occupant carries one occupant id, the
/// same for one user (also after rejoining, and under another nick), different for different
/// users; a forged one is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupant_ids_are_stable_per_user_and_distinct_between_users() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    let mut b2 = online(&s, "bob", "b2").await;
    let mut c = online(&s, "carol", "c1").await;
    let got = create_instant(&mut a, "garden", "alice").await;
    let alice_id = occupant_id(&self_presence(&got)).unwrap_or_else(|| panic!("{got:?}"));
    let got = join(&mut b, "garden", "bob").await;
    let bob_id = occupant_id(&self_presence(&got)).unwrap_or_else(|| panic!("{got:?}"));
    let seen = wait_presence(&mut a, &occupant("garden", "bob"), None).await;
    assert_eq!(
        occupant_id(&seen).as_deref(),
        Some(bob_id.as_str()),
        "{seen}"
    );
    let got = join(&mut c, "garden", "carol").await;
    let carol_id = occupant_id(&self_presence(&got)).unwrap_or_else(|| panic!("{got:?}"));
    assert_ne!(bob_id, alice_id);
    assert_ne!(bob_id, carol_id);
    assert_ne!(alice_id, carol_id);
    let p = presence_from(&got, &occupant("garden", "bob")).unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(occupant_id(&p).as_deref(), Some(bob_id.as_str()), "{p}");

    let room = room_jid("garden");
    b.send(&format!(
        "<message to='{room}' type='groupchat'><body>forged</body><occupant-id xmlns='{OCCUPANT_ID}' id='{alice_id}'/></message>"
    ))
    .await;
    let m = wait_groupchat(&mut a, "garden", "forged").await;
    assert_eq!(occupant_id(&m).as_deref(), Some(bob_id.as_str()), "{m}");

    leave(&mut b, "garden", "bob").await;
    let gone = wait_presence(&mut a, &occupant("garden", "bob"), Some("unavailable")).await;
    assert_eq!(
        occupant_id(&gone).as_deref(),
        Some(bob_id.as_str()),
        "{gone}"
    );
    join(&mut b, "garden", "bob").await;
    let back = wait_presence(&mut a, &occupant("garden", "bob"), None).await;
    assert_eq!(
        occupant_id(&back).as_deref(),
        Some(bob_id.as_str()),
        "{back}"
    );
    // Another session of bob's under another nick: the same user, the same id.
    join(&mut b2, "garden", "bobby").await;
    let other = wait_presence(&mut a, &occupant("garden", "bobby"), None).await;
    assert_eq!(
        occupant_id(&other).as_deref(),
        Some(bob_id.as_str()),
        "{other}"
    );
    s.stop().await;
}

/// XEP-0308 §3, XEP-0424 §4 (with XEP-0045 §7.4): corrections and retractions are groupchat
/// messages like any other: every occupant gets them with their elements intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_and_retractions_pass_through_to_the_occupants() {
    let s = server().await;
    let mut a = online(&s, "alice", "a1").await;
    let mut b = online(&s, "bob", "b1").await;
    create_instant(&mut a, "garden", "alice").await;
    join(&mut b, "garden", "bob").await;
    let room = room_jid("garden");
    b.send(&format!(
        "<message to='{room}' type='groupchat' id='orig1'><body>helo</body></message>"
    ))
    .await;
    let first = wait_groupchat(&mut a, "garden", "helo").await;
    let sid = stanza_id(&first, &room).unwrap_or_else(|| panic!("{first}"));

    b.send(&format!(
        "<message to='{room}' type='groupchat' id='fix1'><body>hello</body><replace xmlns='{CORRECT}' id='orig1'/></message>"
    ))
    .await;
    let fix = wait_groupchat(&mut a, "garden", "hello").await;
    assert_eq!(
        fix.attr("from"),
        Some(occupant("garden", "bob").as_str()),
        "{fix}"
    );
    let replace = fix
        .get_child("replace", CORRECT)
        .unwrap_or_else(|| panic!("{fix}"));
    assert_eq!(replace.attr("id"), Some("orig1"), "{fix}");

    b.send(&format!(
        "<message to='{room}' type='groupchat' id='ret1'><retract xmlns='{RETRACT}' id='{sid}'/><fallback xmlns='urn:xmpp:fallback:0' for='{RETRACT}'/><body>/me retracted a message</body><store xmlns='urn:xmpp:hints'/></message>"
    ))
    .await;
    for c in [&mut a, &mut b] {
        let m = wait_groupchat(c, "garden", "/me retracted a message").await;
        let retract = m
            .get_child("retract", RETRACT)
            .unwrap_or_else(|| panic!("{m}"));
        assert_eq!(retract.attr("id"), Some(sid.as_str()), "{m}");
        assert_eq!(
            m.attr("from"),
            Some(occupant("garden", "bob").as_str()),
            "{m}"
        );
    }
    s.stop().await;
}
