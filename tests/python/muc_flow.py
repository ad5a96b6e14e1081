"""Multi-user chat (XEP-0045) on the service conference.localhost driven by slixmpp's own
plugins: xep_0045 (join, configuration, affiliations, roles, subject, nick change, destroy),
xep_0249 (a direct invitation), xep_0313 (MAM on the room's JID), xep_0410 (self-ping), xep_0421
(occupant ids) and xep_0030 (disco). Run by tests/tests/e2e/slixmpp.rs against an in-process
Canto: python3 muc_flow.py PORT CERT_PEM. Validated against Prosody 0.12 (Component
"conference.localhost" "muc" with mod_muc_mam) as well.

Accounts alice, bob and carol must exist (passwords alicepw, bobpw, carolpw). Prints one line
per check and finally "N passed, M failed"; exits non-zero if any check failed, a step timed
out, or the whole flow took longer than OVERALL seconds.

The flow: alice creates a room (locked until configured: bob is refused meanwhile), configures
it through the form (name, description, persistent, members-only, history length 5, subject
changes by moderators only, archiving), checks it in disco; carol, not a member, is refused;
alice makes bob a member, bob joins; groupchat messages both ways, a private message, the
subject, a nick change, bob made moderator; alice swaps members-only for a password and invites
carol directly (XEP-0249), carol joins with the password from the invitation, is kicked,
rejoins, is banned and refused; self-pings (XEP-0410); history on rejoin (default and
maxstanzas); the room's archive through MAM; the room destroyed.

The ban is tried on the open room, where forbidden is the only right answer: an outcast of a
members-only room is no member either, and Prosody 0.12 then answers registration-required
(§7.2.6) where §7.2.7 says a banned user MUST get forbidden.

Section numbers are XEP-0045 1.35's: §6.3 Discovering Rooms, §6.4 Querying for Room
Information, §7.2 Entering a Room (§7.2.2 Presence Broadcast, §7.2.4 Semi-Anonymous Rooms,
§7.2.5 Password-Protected Rooms, §7.2.6 Members-Only Rooms, §7.2.7 Banned Users, §7.2.8
Nickname Conflict, §7.2.10 Locked Room, §7.2.13 Discussion History, §7.2.14 Managing Discussion
History, §7.2.15 Room Subject), §7.4 Sending a Message to All Occupants, §7.5 Sending a Private
Message, §7.6 Changing Nickname, §7.14 Exiting a Room, §8.1 Modifying the Room Subject, §8.2
Kicking an Occupant, §9.1 Banning a User, §9.2 Modifying the Ban List, §9.3 Granting
Membership, §9.5 Modifying the Member List, §9.6 Granting Moderator Status, §9.8 Modifying the
Moderator List, §10.1 Creating a Room (§10.1.1 General Considerations, §10.1.3 Creating a
Reserved Room), §10.2 Subsequent Room Configuration, §10.9 Destroying a Room. XEP-0249 §2
(direct invitation), XEP-0410 §3 (self-ping), XEP-0421 §4 (occupant id), XEP-0313 §3 and §4
(querying the room's archive), XEP-0359 (stanza ids)."""

import asyncio
import copy
import logging
import os
import secrets
import ssl
import sys
import time

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0410 import PingStatus
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PORT = int(sys.argv[1])
CERT = sys.argv[2]
STEP = 10  # seconds to wait for any one expected stanza
OVERALL = 120  # the whole flow

DOMAIN = "localhost"
MUC = f"conference.{DOMAIN}"
ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
# A fresh room per run: a server that keeps tombstones of destroyed rooms (Prosody does) or a
# run that stopped half-way must not leave the next run a room that already exists.
ROOM = f"flow-{secrets.token_hex(4)}@{MUC}"
ROOM_NAME = "Canto flow room"
PASSWORD = "s3cret"
HISTORY = 5

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"
NS_MAM = "urn:xmpp:mam:2"

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")
    sys.stdout.flush()
    return ok


class StepTimeout(Exception):
    pass


class Refused(Exception):
    """A join answered with an error presence: (what, (type, condition))."""


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise StepTimeout(what) from None


class Inbox:
    """Every presence and message a client receives, in order."""

    def __init__(self, client):
        self.items = []
        self.changed = asyncio.Event()
        for kind in ("presence", "message"):
            client.register_handler(
                Callback(f"flow {kind}s", MatchXPath(f"{{jabber:client}}{kind}"), self._add)
            )

    def _add(self, st):
        self.items.append(st)
        self.changed.set()

    def mark(self):
        return len(self.items)

    def index(self, st):
        return next(i for i, s in enumerate(self.items) if s is st)

    async def wait(self, pred, what, since=0):
        """The first stanza after index `since` that matches `pred`."""
        deadline = time.monotonic() + STEP
        while True:
            for st in self.items[since:]:
                if pred(st):
                    return st
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepTimeout(what)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def wait_all(self, pred, n, what, since=0):
        """The first `n` stanzas after `since` that match `pred`."""
        await self.wait(lambda _: len([s for s in self.items[since:] if pred(s)]) >= n, what, since)
        return [s for s in self.items[since:] if pred(s)][:n]


# Predicates and accessors on raw stanzas, so that what is checked is what came on the wire.
def is_presence(st, nick=None, ptype=None):
    return (
        st.name == "presence"
        and st["from"].bare == ROOM
        and (nick is None or st["from"].resource == nick)
        and (ptype is None or st["type"] == ptype)
    )


def is_available(st, nick):
    return is_presence(st, nick) and st["type"] not in ("unavailable", "error")


def is_groupchat(st, body=None):
    return (
        st.name == "message"
        and st["type"] == "groupchat"
        and st["from"].bare == ROOM
        and (body is None or st["body"] == body)
    )


def is_error_from_room(st, kind):
    return st.name == kind and st["type"] == "error" and st["from"].bare == ROOM


def others(occupants, nick):
    """xep_0045's join counts the joiner's own presence among the occupants: the others."""
    return [p for p in occupants if p["from"].resource != nick]


def truth(v):
    """A boolean field's value as slixmpp reads it. Prosody 0.12 leaves out the <value/> of a
    false muc#roomconfig_changesubject (XEP-0004 §3.3 has no default for a boolean without
    one); read it as false."""
    return v in (True, "1", "true")


def muc_x(st):
    return st.xml.find(f"{{{NS_MUC_USER}}}x")


def codes(st):
    x = muc_x(st)
    if x is None:
        return set()
    return {int(s.get("code")) for s in x.findall(f"{{{NS_MUC_USER}}}status") if s.get("code")}


def item(st):
    """The attributes of the muc#user <item/>, with its reason as 'reason'."""
    x = muc_x(st)
    i = None if x is None else x.find(f"{{{NS_MUC_USER}}}item")
    if i is None:
        return {}
    d = dict(i.attrib)
    r = i.find(f"{{{NS_MUC_USER}}}reason")
    if r is not None:
        d["reason"] = r.text or ""
    return d


def occupant_id(st):
    e = st.xml.find(f"{{{NS_OCCUPANT_ID}}}occupant-id")
    return None if e is None else e.get("id")


def stanza_ids(st, by=ROOM):
    return [e.get("id") for e in st.xml.findall(f"{{{NS_SID}}}stanza-id") if e.get("by") == by]


def delay_from(st):
    e = st.xml.find(f"{{{NS_DELAY}}}delay")
    return None if e is None else e.get("from")


def err(st):
    return st["error"]["type"], st["error"]["condition"]


def iq_err(exc):
    return exc.iq["error"]["type"], exc.iq["error"]["condition"]


def make(jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    for p in (
        "xep_0030",
        "xep_0004",
        "xep_0045",
        "xep_0059",
        "xep_0199",
        "xep_0203",
        "xep_0249",
        "xep_0297",
        "xep_0313",
        "xep_0359",
        "xep_0410",
        "xep_0421",
    ):
        c.register_plugin(p)
    return c


async def online(c, what):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler(
        "session_start", lambda _: started.done() or started.set_result(True), disposable=True
    )
    c.connect("127.0.0.1", PORT)
    await within(started, f"{what}'s session")
    await within(c.get_roster(), f"{what}'s roster")
    c.send_presence()


async def join(c, inbox, nick, what, **kw):
    """xep_0045's join: (self-presence, subject message, occupant presences, history). An error
    presence fails the step at once (xep_0045 only notices errors that carry the muc <x/>)."""
    k = inbox.mark()
    joined = asyncio.ensure_future(
        c.plugin["xep_0045"].join_muc_wait(JID(ROOM), nick, timeout=STEP, **kw)
    )
    refused = asyncio.ensure_future(
        inbox.wait(lambda s: is_error_from_room(s, "presence"), what, k)
    )
    try:
        done, _ = await asyncio.wait({joined, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
    if joined in done:
        try:
            return joined.result()
        except asyncio.TimeoutError:
            raise StepTimeout(what) from None
    joined.cancel()
    if refused.exception():
        raise refused.exception()
    raise Refused(what, err(refused.result()))


async def join_refused(c, inbox, nick, what, password=None):
    """Sends xep_0045's join presence, expecting an error: its (type, condition)."""
    k = inbox.mark()
    c.plugin["xep_0045"].make_join_stanza(JID(ROOM), nick, password=password).send()
    p = await inbox.wait(lambda s: is_error_from_room(s, "presence"), what, k)
    return err(p)


async def room_form(c):
    return await within(c.plugin["xep_0045"].get_room_config(JID(ROOM)), "the room config form")


async def submit(c, form, values, what):
    """Submits `form` (the room's) with `values` for the fields it has."""
    f = copy.copy(form)
    f.set_type("submit")
    for var, value in values.items():
        if var in f.field:
            f.field[var]["value"] = value
    await within(c.plugin["xep_0045"].set_room_config(JID(ROOM), f), what)


async def disco_features(c):
    info = await within(c.plugin["xep_0030"].get_info(JID(ROOM)), "the room's disco#info")
    return info, set(info["disco_info"]["features"])


async def service_rooms(c):
    iq = await within(c.plugin["xep_0030"].get_items(JID(MUC)), "the service's disco#items")
    return {str(i[0]): i[2] for i in iq["disco_items"]["items"]}


class Flow:
    def __init__(self):
        self.alice = make(f"{ALICE}/muc", "alicepw")
        self.bob = make(f"{BOB}/muc", "bobpw")
        self.carol = make(f"{CAROL}/muc", "carolpw")
        self.ia, self.ib, self.ic = Inbox(self.alice), Inbox(self.bob), Inbox(self.carol)
        self.invites = []
        self.carol.add_event_handler("groupchat_direct_invite", self.invites.append)
        self.alice_oid = None
        self.bob_oid = None
        # (nick, body, stanza-id) of every groupchat message with a body, in order.
        self.sent = []

    async def create(self):
        a = self.alice
        pres, subject, occupants, history = await join(
            a, self.ia, "Alice", "alice creating the room"
        )
        c, it = codes(pres), item(pres)
        check(
            "create: alice's self-presence has 110 and 201 (§10.1.1)",
            {110, 201} <= c,
            f"{sorted(c)}",
        )
        check(
            "create: alice is owner and moderator (§10.1.1)",
            it.get("affiliation") == "owner" and it.get("role") == "moderator",
            f"{it}",
        )
        self.alice_oid = occupant_id(pres)
        check(
            "create: the self-presence carries an occupant-id (XEP-0421 §4)",
            bool(self.alice_oid),
            f"{pres}",
        )
        check(
            "create: nobody else, no history, an empty subject (§7.2.15)",
            not others(occupants, "Alice") and not history and not subject["subject"],
            f"{len(occupants)} occupants, {len(history)} history, subject {subject['subject']!r}",
        )

        # §7.2.10: until configured the room is locked.
        cond = await join_refused(self.bob, self.ib, "Bob", "bob's join of the locked room")
        check(
            "create: bob cannot enter the locked room: item-not-found (cancel) "
            "(§7.2.10, §10.1.1)",
            cond == ("cancel", "item-not-found"),
            f"{cond}",
        )

        # §10.1.3: the configuration form.
        form = await room_form(a)
        fields = set(form.field)
        values = form.get_values()
        wanted = {
            "muc#roomconfig_roomname",
            "muc#roomconfig_persistentroom",
            "muc#roomconfig_membersonly",
            "muc#roomconfig_historylength",
            "muc#roomconfig_roomsecret",
            "muc#roomconfig_changesubject",
        }
        check(
            "config: alice gets the muc#roomconfig form with the standard fields (§10.1.3)",
            form["type"] == "form"
            and values.get("FORM_TYPE") in (NS_ROOMCONFIG, [NS_ROOMCONFIG])
            and wanted <= fields,
            f"missing {sorted(wanted - fields)}, FORM_TYPE {values.get('FORM_TYPE')!r}",
        )
        await submit(
            a,
            form,
            {
                "muc#roomconfig_roomname": ROOM_NAME,
                "muc#roomconfig_roomdesc": "where slixmpp talks to the server",
                "muc#roomconfig_persistentroom": True,
                "muc#roomconfig_publicroom": True,
                "muc#roomconfig_membersonly": True,
                "muc#roomconfig_historylength": str(HISTORY),
                "muc#roomconfig_changesubject": False,
                "muc#roomconfig_whois": "moderators",
                "muc#roomconfig_enablearchiving": True,
            },
            "submitting the configuration",
        )
        check("config: alice submits the form, the room is created (§10.1.3)", True)
        after = (await room_form(a)).get_values()
        got = {
            k.split("_", 1)[1]: after.get(k)
            for k in ("muc#roomconfig_roomname", "muc#roomconfig_historylength")
        }
        for k in (
            "muc#roomconfig_persistentroom",
            "muc#roomconfig_membersonly",
            "muc#roomconfig_changesubject",
        ):
            got[k.split("_", 1)[1]] = truth(after.get(k))
        check(
            "config: the submitted values read back (§10.2)",
            got
            == {
                "roomname": ROOM_NAME,
                "persistentroom": True,
                "membersonly": True,
                "historylength": str(HISTORY),
                "changesubject": False,
            },
            f"{got}",
        )

        info, feats = await disco_features(a)
        want = {
            "http://jabber.org/protocol/muc",
            "muc_persistent",
            "muc_membersonly",
            "muc_semianonymous",
            "muc_unsecured",
            "muc_public",
            NS_MAM,
            NS_OCCUPANT_ID,
        }
        ids = [(i[0], i[1], i[3]) for i in info["disco_info"]["identities"]]
        check(
            "disco: the room's features say persistent, members-only, semi-anonymous, "
            "unsecured, archived, occupant ids (§6.4, XEP-0313 §6.1, XEP-0421 §5)",
            want <= feats,
            f"missing {sorted(want - feats)}",
        )
        check(
            "disco: the room's identity is conference/text named after the room (§6.4)",
            ("conference", "text", ROOM_NAME) in ids,
            f"{ids}",
        )
        rooms = await service_rooms(a)
        # The item's name is for humans (§6.3): Prosody gives the room's name, ejabberd and Canto
        # add the number of occupants, "Canto flow room (1)".
        check(
            "disco: the service lists the public room with its name (§6.3)",
            (rooms.get(ROOM) or "").startswith(ROOM_NAME),
            f"{rooms}",
        )

        # §7.2.6: carol is no member.
        cond = await join_refused(self.carol, self.ic, "Carol", "carol's join (not a member)")
        check(
            "members-only: carol, no member, gets registration-required (auth) (§7.2.6)",
            cond == ("auth", "registration-required"),
            f"{cond}",
        )

    async def enter(self):
        a, b = self.alice, self.bob
        x = a.plugin["xep_0045"]
        await within(
            x.set_affiliation(JID(ROOM), "member", jid=JID(BOB), reason="welcome"),
            "making bob a member",
        )
        members = await within(x.get_affiliation_list(JID(ROOM), "member"), "the member list")
        check(
            "members: alice makes bob a member; the member list is bob (§9.3, §9.5)",
            [str(j) for j in members] == [BOB],
            f"{members}",
        )

        ka = self.ia.mark()
        pres, subject, occupants, history = await join(b, self.ib, "Bob", "bob's join")
        c, it = codes(pres), item(pres)
        check(
            "enter: bob's self-presence has 110; member and participant (§7.2.2)",
            110 in c and it.get("affiliation") == "member" and it.get("role") == "participant",
            f"{sorted(c)} {it}",
        )
        alice_p = [p for p in others(occupants, "Bob") if p["from"].resource == "Alice"]
        check(
            "enter: bob gets alice's presence before his own (§7.2.2)",
            len(alice_p) == 1 and self.ib.index(alice_p[0]) < self.ib.index(pres),
            f"{[str(p['from']) for p in occupants]}",
        )
        ai = item(alice_p[0]) if alice_p else {}
        check(
            "enter: alice's presence says owner/moderator, without her real JID, to bob, a "
            "participant of a semi-anonymous room (§7.2.4)",
            ai.get("affiliation") == "owner" and ai.get("role") == "moderator" and "jid" not in ai,
            f"{ai}",
        )
        check(
            "enter: alice's occupant-id is the same in bob's view as in her self-presence "
            "(XEP-0421 §4)",
            alice_p and occupant_id(alice_p[0]) == self.alice_oid,
            f"{occupant_id(alice_p[0]) if alice_p else None} vs {self.alice_oid}",
        )
        self.bob_oid = occupant_id(pres)
        check(
            "enter: bob's occupant-id differs from alice's (XEP-0421 §4)",
            bool(self.bob_oid) and self.bob_oid != self.alice_oid,
            f"{self.bob_oid}",
        )
        check(
            "enter: bob gets no history (none yet) and the (empty) subject (§7.2.15)",
            not history and not subject["subject"],
            f"{len(history)} history, subject {subject['subject']!r}",
        )
        p = await self.ia.wait(lambda s: is_available(s, "Bob"), "alice seeing bob enter", ka)
        bi = item(p)
        check(
            "enter: alice, a moderator, sees bob's presence with his real JID (§7.2.2, §7.2.4)",
            bi.get("jid") == str(b.boundjid)
            and bi.get("affiliation") == "member"
            and bi.get("role") == "participant"
            and occupant_id(p) == self.bob_oid,
            f"{bi}, occupant-id {occupant_id(p)}",
        )

    async def say(self, who, nick, body):
        """`who` says `body`; everyone in the room (sender included) gets it (§7.4)."""
        clients = {"Alice": self.alice, "Bob": self.bob, "Robert": self.bob}
        oids = {"Alice": self.alice_oid, "Bob": self.bob_oid, "Robert": self.bob_oid}
        inboxes = [self.ia, self.ib]
        marks = [i.mark() for i in inboxes]
        msg = clients[who].make_message(mto=ROOM, mbody=body, mtype="groupchat")
        msg.send()
        got = []
        for inbox, k in zip(inboxes, marks):
            got.append(await inbox.wait(lambda s: is_groupchat(s, body), f"{body!r} reflected", k))
        sids = [stanza_ids(m) for m in got]
        ok = (
            all(str(m["from"]) == f"{ROOM}/{nick}" for m in got)
            and all(len(s) == 1 for s in sids)
            and sids[0] == sids[1]
            and all(occupant_id(m) == oids[nick] for m in got)
        )
        self.sent.append((nick, body, sids[0][0] if sids[0] else None))
        return ok, got, f"{[str(m) for m in got]}"

    async def talk(self):
        ok, _, d = await self.say("Alice", "Alice", "hello from alice")
        check(
            "message: alice's groupchat message reaches both, from room/Alice, one stanza-id "
            "by the room, alice's occupant-id (§7.4, XEP-0359, XEP-0421)",
            ok,
            d,
        )
        ok, _, d = await self.say("Bob", "Bob", "hello from bob")
        check("message: bob's groupchat message likewise (§7.4)", ok, d)
        # §7.4: the reflected message keeps the sender's id.
        k = self.ib.mark()
        msg = self.bob.make_message(mto=ROOM, mbody="with an id", mtype="groupchat")
        msg["id"] = "flow-msg-id"
        msg.send()
        m = await self.ib.wait(lambda s: is_groupchat(s, "with an id"), "bob's reflection", k)
        await self.ia.wait(lambda s: is_groupchat(s, "with an id"), "alice's copy")
        self.sent.append(("Bob", "with an id", (stanza_ids(m) or [None])[0]))
        check(
            "message: the reflection to the sender keeps the message id (§7.4)",
            m["id"] == "flow-msg-id",
            f"{m['id']!r}",
        )

        # §7.5: a private message.
        ka = self.ia.mark()
        self.bob.send_message(mto=f"{ROOM}/Alice", mbody="psst", mtype="chat")
        m = await self.ia.wait(
            lambda s: s.name == "message" and s["body"] == "psst", "alice's private message", ka
        )
        check(
            "pm: bob's private message reaches alice from room/Bob, type chat, with muc#user "
            "<x/> (§7.5)",
            str(m["from"]) == f"{ROOM}/Bob" and m["type"] == "chat" and muc_x(m) is not None,
            f"{m}",
        )
        kb = self.ib.mark()
        self.bob.send_message(mto=f"{ROOM}/Nobody", mbody="anyone?", mtype="chat")
        e = await self.ib.wait(lambda s: is_error_from_room(s, "message"), "the pm error", kb)
        check(
            "pm: a private message to an absent nick: item-not-found (cancel) (§7.5)",
            err(e) == ("cancel", "item-not-found"),
            f"{err(e)}",
        )

        # §8.1: the subject, changesubject being off.
        kb = self.ib.mark()
        self.bob.plugin["xep_0045"].set_subject(JID(ROOM), "bob's topic")
        e = await self.ib.wait(lambda s: is_error_from_room(s, "message"), "bob's subject", kb)
        check(
            "subject: bob (participant) may not change it: forbidden (auth) (§8.1)",
            err(e) == ("auth", "forbidden"),
            f"{err(e)}",
        )
        ka, kb = self.ia.mark(), self.ib.mark()
        self.alice.plugin["xep_0045"].set_subject(JID(ROOM), "Flow topic")
        got = []
        for inbox, k in ((self.ia, ka), (self.ib, kb)):
            got.append(
                await inbox.wait(
                    lambda s: is_groupchat(s) and s["subject"] == "Flow topic", "the subject", k
                )
            )
        check(
            "subject: alice's subject reaches both, from room/Alice, without a body (§8.1)",
            all(str(m["from"]) == f"{ROOM}/Alice" and not m["body"] for m in got),
            f"{[str(m) for m in got]}",
        )

    async def nick_and_roles(self):
        ka, kb = self.ia.mark(), self.ib.mark()
        new = await within(
            self.bob.plugin["xep_0045"].set_self_nick(JID(ROOM), "Robert", timeout=STEP),
            "bob's nick change",
        )
        check("nick: bob becomes Robert (§7.6)", new == "Robert", f"{new!r}")
        gone = await self.ia.wait(
            lambda s: is_presence(s, "Bob", "unavailable"), "alice seeing Bob leave", ka
        )
        back = await self.ia.wait(lambda s: is_available(s, "Robert"), "alice seeing Robert", ka)
        check(
            "nick: alice gets Bob unavailable with 303 and nick Robert, then Robert (§7.6)",
            303 in codes(gone)
            and item(gone).get("nick") == "Robert"
            and self.ia.index(gone) < self.ia.index(back),
            f"{sorted(codes(gone))} {item(gone)}",
        )
        mine = await self.ib.wait(lambda s: is_available(s, "Robert"), "bob's new presence", kb)
        check(
            "nick: bob's own presences carry 110 (§7.6)",
            110 in codes(mine),
            f"{sorted(codes(mine))}",
        )
        check(
            "nick: the occupant-id survives the nick change (XEP-0421 §4)",
            occupant_id(back) == self.bob_oid,
            f"{occupant_id(back)}",
        )
        # §7.6: a taken nick.
        k = self.ia.mark()
        self.alice.make_presence(pto=f"{ROOM}/Robert").send()
        e = await self.ia.wait(lambda s: is_error_from_room(s, "presence"), "alice's nick", k)
        check(
            "nick: alice cannot take the nick Robert: conflict (cancel) (§7.6)",
            err(e) == ("cancel", "conflict"),
            f"{err(e)}",
        )

        # §9.6: bob made moderator.
        ka, kb = self.ia.mark(), self.ib.mark()
        x = self.alice.plugin["xep_0045"]
        await within(x.set_role(JID(ROOM), "Robert", "moderator"), "making bob a moderator")
        for who, inbox, k in (("alice", self.ia, ka), ("bob", self.ib, kb)):
            p = await inbox.wait(
                lambda s: is_available(s, "Robert") and item(s).get("role") == "moderator",
                f"{who} seeing Robert become moderator",
                k,
            )
            check(f"roles: {who} sees Robert become moderator (§9.6)", True, f"{p}")
        mods = await within(x.get_roles_list(JID(ROOM), "moderator"), "the moderator list")
        check(
            "roles: the moderators are Alice and Robert (§9.8)",
            sorted(mods) == ["Alice", "Robert"],
            f"{mods}",
        )

    async def guest(self):
        a, c = self.alice, self.carol
        x = a.plugin["xep_0045"]
        form = await room_form(a)
        await submit(
            a,
            form,
            {
                "muc#roomconfig_membersonly": False,
                "muc#roomconfig_passwordprotectedroom": True,
                "muc#roomconfig_roomsecret": PASSWORD,
            },
            "setting a password",
        )
        _, feats = await disco_features(a)
        check(
            "password: the room now says muc_open and muc_passwordprotected (§6.4, §10.2)",
            {"muc_open", "muc_passwordprotected"} <= feats
            and not {"muc_membersonly", "muc_unsecured"} & feats,
            f"{sorted(feats)}",
        )
        # XEP-0249: alice invites carol directly, with the password.
        a.plugin["xep_0249"].send_invitation(
            JID(CAROL), JID(ROOM), password=PASSWORD, reason="come in"
        )
        await within(self._invited(), "carol's direct invitation")
        inv = self.invites[0]["groupchat_invite"]
        check(
            "invite: carol gets alice's direct invitation with the room and password "
            "(XEP-0249 §2)",
            self.invites[0]["from"].bare == ALICE
            and str(inv["jid"]) == ROOM
            and inv["password"] == PASSWORD,
            f"{self.invites[0]}",
        )
        cond = await join_refused(c, self.ic, "Carol", "carol's join without password")
        check(
            "password: carol without the password: not-authorized (auth) (§7.2.5)",
            cond == ("auth", "not-authorized"),
            f"{cond}",
        )
        cond = await join_refused(c, self.ic, "Alice", "carol's join as Alice", PASSWORD)
        check(
            "nick: carol cannot enter as Alice: conflict (cancel) (§7.2.8)",
            cond == ("cancel", "conflict"),
            f"{cond}",
        )
        ka = self.ia.mark()
        pres, _, occupants, _ = await join(
            c, self.ic, "Carol", "carol's join", password=inv["password"]
        )
        check(
            "password: with the invitation's password carol enters, participant without "
            "affiliation, and sees Alice and Robert (§7.2.5)",
            110 in codes(pres)
            and item(pres).get("affiliation") == "none"
            and item(pres).get("role") == "participant"
            and sorted(p["from"].resource for p in others(occupants, "Carol"))
            == ["Alice", "Robert"],
            f"{sorted(codes(pres))} {item(pres)} {[str(p['from']) for p in occupants]}",
        )
        await self.ia.wait(lambda s: is_available(s, "Carol"), "alice seeing carol", ka)

        # §8.2: kick.
        ka, kb, kc = self.ia.mark(), self.ib.mark(), self.ic.mark()
        await within(x.set_role(JID(ROOM), "Carol", "none", reason="kick test"), "kicking carol")
        p = await self.ic.wait(lambda s: is_presence(s, "Carol", "unavailable"), "carol out", kc)
        check(
            "kick: carol gets her unavailable presence with 110 and 307, role none, the reason "
            "(§8.2)",
            {110, 307} <= codes(p)
            and item(p).get("role") == "none"
            and item(p).get("reason") == "kick test",
            f"{sorted(codes(p))} {item(p)}",
        )
        for who, inbox, k in (("alice", self.ia, ka), ("bob", self.ib, kb)):
            p = await inbox.wait(lambda s: is_presence(s, "Carol", "unavailable"), who, k)
            check(
                f"kick: {who} sees carol leave with 307 (§8.2)",
                307 in codes(p) and 110 not in codes(p),
                f"{sorted(codes(p))}",
            )
        pres, _, _, _ = await join(c, self.ic, "Carol", "carol's rejoin", password=PASSWORD)
        check("kick: carol may come back (§8.2)", 110 in codes(pres), f"{pres}")

        # §9.1: ban. A moderator who is only a member may not ban.
        try:
            await within(
                self.bob.plugin["xep_0045"].set_affiliation(JID(ROOM), "outcast", jid=JID(CAROL)),
                "bob's ban",
            )
            check("ban: bob (member) cannot ban", False, "result")
        except IqError as e:
            check(
                "ban: bob, moderator but only member, may not ban: forbidden (§9.1, §5.2.2)",
                iq_err(e)[1] in ("forbidden", "not-allowed"),
                f"{iq_err(e)}",
            )
        ka, kb, kc = self.ia.mark(), self.ib.mark(), self.ic.mark()
        await within(
            x.set_affiliation(JID(ROOM), "outcast", jid=JID(CAROL), reason="ban test"),
            "banning carol",
        )
        p = await self.ic.wait(lambda s: is_presence(s, "Carol", "unavailable"), "carol out", kc)
        check(
            "ban: carol gets her unavailable presence with 110 and 301, outcast, the reason "
            "(§9.1)",
            {110, 301} <= codes(p)
            and item(p).get("affiliation") == "outcast"
            and item(p).get("reason") == "ban test",
            f"{sorted(codes(p))} {item(p)}",
        )
        for who, inbox, k in (("alice", self.ia, ka), ("bob", self.ib, kb)):
            p = await inbox.wait(lambda s: is_presence(s, "Carol", "unavailable"), who, k)
            check(f"ban: {who} sees carol go with 301 (§9.1)", 301 in codes(p), f"{codes(p)}")
        out = await within(x.get_affiliation_list(JID(ROOM), "outcast"), "the outcast list")
        check("ban: the outcast list is carol (§9.2)", [str(j) for j in out] == [CAROL], f"{out}")
        cond = await join_refused(c, self.ic, "Carol", "carol's join when banned", PASSWORD)
        check(
            "ban: carol may not enter: forbidden (auth) (§7.2.7)",
            cond == ("auth", "forbidden"),
            f"{cond}",
        )

        # XEP-0410: self-ping.
        status = await within(
            self.bob.plugin["xep_0410"].send_self_ping(JID(f"{ROOM}/Robert"), timeout=STEP),
            "bob's self-ping",
        )
        check(
            "self-ping: bob, in the room, is told he is joined (XEP-0410 §3)",
            status == PingStatus.JOINED,
            f"{status}",
        )
        try:
            await within(
                c.plugin["xep_0199"].send_ping(JID(f"{ROOM}/Carol"), timeout=STEP),
                "carol's self-ping",
            )
            check("self-ping: carol, no longer in the room, gets an error", False, "result")
        except IqError as e:
            check(
                "self-ping: carol, no longer in the room: not-acceptable (XEP-0410 §3)",
                iq_err(e)[1] == "not-acceptable",
                f"{iq_err(e)}",
            )

    async def _invited(self):
        while not self.invites:
            await asyncio.sleep(0.05)

    async def history(self):
        bodies = [f"history-{i}" for i in range(1, HISTORY + 2)]
        for body in bodies:
            ok, _, d = await self.say("Alice", "Alice", body)
            if not ok:
                check(f"history: {body} reflected", False, d)
        xb = self.bob.plugin["xep_0045"]

        async def leave():
            ka, kb = self.ia.mark(), self.ib.mark()
            xb.leave_muc(JID(ROOM), "Robert")
            p = await self.ib.wait(
                lambda s: is_presence(s, "Robert", "unavailable"), "bob's leave", kb
            )
            q = await self.ia.wait(
                lambda s: is_presence(s, "Robert", "unavailable"), "alice seeing bob leave", ka
            )
            return p, q

        p, q = await leave()
        check(
            "leave: bob gets his unavailable presence with 110, alice without (§7.14)",
            110 in codes(p) and 110 not in codes(q) and item(q).get("role") == "none",
            f"{sorted(codes(p))} {sorted(codes(q))} {item(q)}",
        )
        _, subject, _, history = await join(
            self.bob, self.ib, "Robert", "bob's rejoin", password=PASSWORD
        )
        got = [m["body"] for m in history]
        check(
            f"history: on rejoin bob gets the last {HISTORY} messages (historylength) (§7.2.13)",
            got == bodies[-HISTORY:],
            f"{got}",
        )
        check(
            "history: each from room/Alice with a delay stamped by the room (§7.2.13)",
            all(str(m["from"]) == f"{ROOM}/Alice" and delay_from(m) == ROOM for m in history),
            f"{[str(m) for m in history]}",
        )
        check(
            "history: then the subject (§7.2.15)",
            subject["subject"] == "Flow topic",
            f"{subject}",
        )
        await leave()
        _, _, _, history = await join(
            self.bob, self.ib, "Robert", "bob's rejoin", password=PASSWORD, maxstanzas=2
        )
        got = [m["body"] for m in history]
        check(
            "history: with maxstanzas=2, the last two (§7.2.14)",
            got == bodies[-2:],
            f"{got}",
        )

    async def archive(self):
        iq = await within(
            self.bob.plugin["xep_0313"].retrieve(jid=JID(ROOM), rsm={"max": 50}),
            "bob's MAM query on the room",
        )
        results = iq["mam"]["results"]
        msgs = [r["mam_result"]["forwarded"]["stanza"] for r in results]
        # Only messages with a body: a server may archive subject changes too.
        with_body = [(r, m) for r, m in zip(results, msgs) if m["body"]]
        got = [(m["from"].resource, m["body"]) for _, m in with_body]
        want = [(n, b) for n, b, _ in self.sent]
        check(
            "mam: the room's archive has every groupchat message, in order, from room/nick, "
            "and not the private one (XEP-0313 §3, XEP-0045 §7.4)",
            got == want and all(m["from"].bare == ROOM for _, m in with_body),
            f"got {got}, want {want}",
        )
        ids = [r["mam_result"]["id"] for r, _ in with_body]
        check(
            "mam: the result ids are the stanza-ids the live messages carried (XEP-0313 §3.5, "
            "XEP-0359)",
            ids == [s for _, _, s in self.sent],
            f"{ids} vs {[s for _, _, s in self.sent]}",
        )
        check(
            "mam: the query is answered complete (XEP-0313 §4.3)",
            iq["mam_fin"]["complete"] in (True, "true"),
            f"{iq['mam_fin']}",
        )
        try:
            await within(
                self.carol.plugin["xep_0313"].retrieve(jid=JID(ROOM)), "carol's MAM query"
            )
            check("mam: carol, banned, cannot read the archive", False, "result")
        except IqError as e:
            check(
                "mam: carol, banned, cannot read the archive: forbidden",
                iq_err(e)[1] == "forbidden",
                f"{iq_err(e)}",
            )

    async def destroy(self):
        ka, kb = self.ia.mark(), self.ib.mark()
        await within(
            self.alice.plugin["xep_0045"].destroy(JID(ROOM), reason="flow done"),
            "destroying the room",
        )
        for who, nick, inbox, k in (
            ("alice", "Alice", self.ia, ka),
            ("bob", "Robert", self.ib, kb),
        ):
            p = await inbox.wait(lambda s: is_presence(s, nick, "unavailable"), who, k)
            x = muc_x(p)
            d = None if x is None else x.find(f"{{{NS_MUC_USER}}}destroy")
            reason = None if d is None else d.findtext(f"{{{NS_MUC_USER}}}reason")
            check(
                f"destroy: {who} gets an unavailable presence with <destroy/> and the reason "
                "(§10.9)",
                reason == "flow done" and item(p).get("role") == "none",
                f"{p}",
            )
        rooms = await service_rooms(self.alice)
        check(
            "destroy: the service no longer lists the room (§10.9)", ROOM not in rooms, f"{rooms}"
        )

    async def run(self):
        clients = (self.alice, self.bob, self.carol)
        try:
            for c, name in zip(clients, ("alice", "bob", "carol")):
                await online(c, name)
            sections = (
                ("create", self.create),
                ("enter", self.enter),
                ("talk", self.talk),
                ("nick", self.nick_and_roles),
                ("carol", self.guest),
                ("history", self.history),
                ("mam", self.archive),
                ("destroy", self.destroy),
            )
            for name, run in sections:
                try:
                    await run()
                except StepTimeout as e:
                    check(f"{name}: timed out waiting for {e}", False, "no answer")
                    break
                except IqError as e:
                    check(f"{name}: IQ error", False, str(e.iq))
                    break
                except slixmpp.exceptions.IqTimeout:
                    check(f"{name}: IQ timeout", False, "no answer")
                    break
                except Refused as e:
                    check(f"{name}: {e.args[0]} refused", False, f"{e.args[1]}")
                    break
        finally:
            for c in clients:
                if c.transport:
                    c.disconnect(wait=0.5)
            await asyncio.sleep(0.3)


async def run():
    try:
        await asyncio.wait_for(Flow().run(), OVERALL)
    except asyncio.TimeoutError:
        check("overall", False, f"flow took longer than {OVERALL} s")
    except StepTimeout as e:
        check(f"setup: timed out waiting for {e}", False, "no answer")
    except Exception as e:  # a failure of the flow itself still ends with the summary line
        check("flow", False, repr(e))


if os.environ.get("MUC_FLOW_DEBUG"):  # every stanza on stderr
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
started = time.monotonic()
asyncio.run(run())
print(f"({time.monotonic() - started:.1f} s)")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
