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
    DISCO_INFO, DISCO_ITEMS, RSM, XDATA, ask, assert_quiet, assert_result, disco_info,
    disco_items, features, form, form_value, form_values, identities,
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
pub(crate) async fn join_with(c: &mut Client, room: &str, nick: &str, x_inner: &str) -> Vec<Element> {
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
        .find(|e| e.name() == "presence" && e.attr("type").is_none() && e.attr("from") == Some(from))
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
pub(crate) async fn room_iq(c: &mut Client, kind: &str, room: &str, ns: &str, inner: &str) -> Element {
    let to = room_jid(room);
    ask(
        c,
        &format!("<iq type='{kind}' id='{{id}}' to='{to}'><query xmlns='{ns}'>{inner}</query></iq>"),
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
    assert_eq!(form_value(&x, "FORM_TYPE").as_deref(), Some(ROOMCONFIG), "{r}");
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
    assert_eq!(item_attr(&me, "affiliation").as_deref(), Some("owner"), "{me}");
    assert_eq!(item_attr(&me, "role").as_deref(), Some("moderator"), "{me}");
    got
}

/// Creates an instant room (§10.1.2): [`create`], then an empty submit form; asserts the result.
pub(crate) async fn create_instant(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    let got = create(c, room, nick).await;
    let r = muc_owner(c, "set", room, &format!("<x xmlns='{XDATA}' type='submit'/>")).await;
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
    c.send(&format!("<presence to='{me}' type='unavailable'/>")).await;
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
            q.children()
                .find(|x| x.is("x", XDATA) && form_value(x, "FORM_TYPE").as_deref() == Some(ROOMINFO))
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
