"""Personal eventing and a hosted publish-subscribe service driven by slixmpp's own plugins
(xep_0060, xep_0163, xep_0084, xep_0172, with xep_0115 entity capabilities carrying the
`+notify` interests). Run by tests/tests/e2e/slixmpp.rs against an in-process Canto (modules
pep and pubsub are on by default, the hosted service is pubsub.localhost):
python3 pubsub_flow.py PORT CERT_PEM.

Accounts alice, bob and carol must exist (passwords alicepw, bobpw, carolpw). Prints one line
per check and finally "N passed, M failed"; exits non-zero if any check failed, a step timed
out, or the whole flow took longer than OVERALL seconds.

XEP-0172 (User Nickname) is the nickname's node and payload. Section numbers cited, with their
titles: XEP-0163 §3 Publishing Events, §4 Receiving Event Notifications, §4.2 Notification
Filtering, §4.3.1 Addressing, §4.3.2 Number of Notifications, §4.3.3 When to Generate
Notifications, §4.3.4 Sending the Last Published Item, §5 Recommended Defaults; XEP-0084 (1.1)
§3.1 User Publishes Data, §3.2 User Publishes Metadata Notification, §3.3 Subscribers Receive
Metadata Notification, §3.4 Subscribers Retrieve Data; XEP-0060 §4.5 Node Access Models,
§6.1.2 Subscribe Success Case, §6.5 Retrieve Items from a Node (§6.5.7 Requesting the Most
Recent Items, §6.5.9 Error Cases), §7.1.2 Publish Success Case (§7.1.2.1 Notification With
Payload), §7.2.2.1 Delete And Notify, §7.2.3.1 Insufficient Privileges, §8.1 Create a Node, §8.2
Configure a Node (§8.2.3 Error Cases, §8.2.4 Form Submission, §8.2.5 Form Processing), §8.4.2
Delete a Node Success Case."""

import asyncio
import copy
import hashlib
import ssl
import sys
import time
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PORT = int(sys.argv[1])
CERT = sys.argv[2]
STEP = 10  # seconds to wait for any one expected stanza
QUIET = 1.0  # seconds of silence that count as "not delivered"
OVERALL = 60  # the whole flow

DOMAIN = "localhost"
PUBSUB = f"pubsub.{DOMAIN}"
ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
NS_NICK = "http://jabber.org/protocol/nick"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_ATOM = "http://www.w3.org/2005/Atom"

NICK = "Alice of Wonderland"
# Not a real image; XEP-0084 leaves the bytes to the publisher. Every byte value, twice, so
# that a base64 round trip that mangled anything would show.
AVATAR = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
AVATAR_ID = hashlib.sha1(AVATAR).hexdigest()  # XEP-0084 §3.1: the id is the SHA-1 of the data
NODE = "canto-flow-node"

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


# The slixmpp events the flow watches: PEP ones mapped by the plugins (xep_0172 maps the nick
# node to user_nick, xep_0084 the metadata node to avatar_metadata and the data node to
# avatar_data) and xep_0060's generic ones for every node.
EVENTS = (
    "user_nick_publish",
    "avatar_metadata_publish",
    "avatar_data_publish",
    "pubsub_publish",
    "pubsub_retract",
    "pubsub_delete",
)


class Events:
    """Every watched event a client raises, in order, as (event name, message)."""

    def __init__(self, client):
        self.items = []
        self.changed = asyncio.Event()
        for name in EVENTS:
            client.add_event_handler(name, self._handler(name))

    def _handler(self, name):
        def h(msg):
            self.items.append((name, msg))
            self.changed.set()

        return h

    def mark(self):
        return len(self.items)

    async def wait(self, name, pred, what, since=0):
        """The first `name` event after index `since` whose message matches `pred`."""
        deadline = time.monotonic() + STEP
        while True:
            for n, m in self.items[since:]:
                if n == name and pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepTimeout(what)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def quiet(self, name, pred, since, secs=QUIET):
        await asyncio.sleep(secs)
        return [m for n, m in self.items[since:] if n == name and pred(m)]


def event_node(msg):
    return msg["pubsub_event"]["items"]["node"]


def event_item_ids(msg):
    """The ids of the <item/>s of a pubsub#event <items/>."""
    items = msg.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
    return [] if items is None else [i.get("id") for i in items.findall(f"{{{NS_EVENT}}}item")]


def event_retract_ids(msg):
    items = msg.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
    return [] if items is None else [i.get("id") for i in items.findall(f"{{{NS_EVENT}}}retract")]


def event_titles(msg):
    """The Atom titles in a pubsub#event's items, in order."""
    return [
        t.text
        for t in msg.xml.iterfind(
            f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items/{{{NS_EVENT}}}item"
            f"/{{{NS_ATOM}}}entry/{{{NS_ATOM}}}title"
        )
    ]


def result_items(iq):
    """(id, <item/>) of an items result, in document order."""
    items = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items")
    if items is None:
        return []
    return [(i.get("id"), i) for i in items.findall(f"{{{NS_PUBSUB}}}item")]


def atom_title(item):
    t = item.find(f"{{{NS_ATOM}}}entry/{{{NS_ATOM}}}title")
    return None if t is None else t.text


def entry(title):
    e = ET.Element(f"{{{NS_ATOM}}}entry")
    ET.SubElement(e, f"{{{NS_ATOM}}}title").text = title
    return e


def error_of(exc):
    """(condition, pubsub#errors child names) of an IqError."""
    err = exc.iq["error"]
    app = [c.tag.split("}")[1] for c in err.xml if c.tag.startswith(f"{{{NS_ERRORS}}}")]
    return err["condition"], app


def make(jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    # xep_0115 puts <c/> in every presence, so that the server learns each client's +notify
    # interests: xep_0172 and xep_0084 register them for the nick and avatar metadata nodes
    # (not for avatar data, which nobody should be notified of).
    for p in (
        "xep_0030",
        "xep_0004",
        "xep_0115",
        "xep_0060",
        "xep_0163",
        "xep_0172",
        "xep_0084",
    ):
        c.register_plugin(p)
    return c


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise StepTimeout(what) from None


async def online(c, what, presence=True):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler(
        "session_start", lambda _: started.done() or started.set_result(True), disposable=True
    )
    c.connect("127.0.0.1", PORT)
    await within(started, f"{what}'s session")
    await within(c.get_roster(), f"{what}'s roster")
    if presence:
        # The caps hash is computed asynchronously when the plugins add their +notify
        # features; let that settle so that the first presence already carries it.
        await within(c.plugin["xep_0115"].update_caps(broadcast=False), f"{what}'s caps")
        c.send_presence()


async def until(pred, what):
    deadline = time.monotonic() + STEP
    while not pred():
        if time.monotonic() > deadline:
            raise StepTimeout(what)
        await asyncio.sleep(0.05)


async def subscribe_both_ways(alice, bob):
    """RFC 6121 §3: alice asks bob, slixmpp's auto_authorize and auto_subscribe (on by default)
    answer and ask back, so both end with subscription 'both'."""
    alice.send_presence(pto=BOB, ptype="subscribe")

    def sub(c, jid):
        return c.client_roster[jid]["subscription"] if jid in c.client_roster else None

    await until(
        lambda: sub(alice, BOB) == "both" and sub(bob, ALICE) == "both",
        "a mutual presence subscription",
    )
    check("setup: alice and bob have a mutual presence subscription", True)
    # Each sees the other online: the server has both presences, caps included.
    await until(
        lambda: alice.client_roster.presence(BOB) and bob.client_roster.presence(ALICE),
        "alice and bob seeing each other's presence",
    )


async def pep(alice, bob, carol, ev_alice, ev_bob, caps_queries):
    """XEP-0163 through xep_0172 (nickname) and xep_0084 (avatar)."""
    # The server learns what each resource wants from its caps (XEP-0115), with a disco#info
    # query on the first sight of a hash; alice and bob run the same plugins, so one query
    # covers both. Give it its round trip before the first publish.
    await until(lambda: caps_queries, "the server's disco#info query for the caps hash")
    await asyncio.sleep(0.3)

    # XEP-0163 §3: alice publishes her nickname (XEP-0172); the node is auto-created.
    ka, kb = ev_alice.mark(), ev_bob.mark()
    await within(alice.plugin["xep_0172"].publish_nick(NICK), "publishing the nickname")
    m = await ev_bob.wait(
        "user_nick_publish", lambda m: m["from"].bare == ALICE, "bob's nickname notification", kb
    )
    check(
        "pep: bob gets alice's nickname through user_nick_publish (XEP-0163 §4, XEP-0172)",
        m["pubsub_event"]["items"]["item"]["nick"]["nick"] == NICK
        and event_node(m) == NS_NICK
        and event_item_ids(m) == ["current"],
        f"{m}",
    )
    # §4.3.1: from the account's bare JID; §4.3.2: to each interested resource's full JID.
    check(
        "pep: the notification is from alice's bare JID to bob's full JID "
        "(XEP-0163 §4.3.1, §4.3.2)",
        str(m["from"]) == ALICE and str(m["to"]) == f"{BOB}/pep",
        f"from {m['from']} to {m['to']}",
    )
    # §4: "the account owner itself ... all of the account owner's available resources".
    m = await ev_alice.wait(
        "user_nick_publish", lambda m: m["from"].bare == ALICE, "alice's own notification", ka
    )
    check(
        "pep: alice's own resource is notified too (XEP-0163 §4)",
        m["pubsub_event"]["items"]["item"]["nick"]["nick"] == NICK,
        f"{m}",
    )

    # XEP-0084 §3.1: the data, item id = SHA-1 of the bytes; §3.2: the metadata.
    kb = ev_bob.mark()
    await within(alice.plugin["xep_0084"].publish_avatar(AVATAR), "publishing the avatar data")
    await within(
        alice.plugin["xep_0084"].publish_avatar_metadata(
            # slixmpp writes width and height as given: strings, or it fails to serialize.
            {
                "id": AVATAR_ID,
                "type": "image/png",
                "bytes": len(AVATAR),
                "width": "32",
                "height": "32",
            }
        ),
        "publishing the avatar metadata",
    )
    m = await ev_bob.wait(
        "avatar_metadata_publish",
        lambda m: m["from"].bare == ALICE,
        "bob's avatar metadata notification",
        kb,
    )
    infos = m["pubsub_event"]["items"]["item"]["avatar_metadata"]["items"]
    got = [(i["id"], i["type"], i["bytes"], i["width"], i["height"]) for i in infos]
    check(
        "pep: bob gets the avatar metadata through avatar_metadata_publish (XEP-0084 §3.3)",
        got == [(AVATAR_ID, "image/png", len(AVATAR), 32, 32)]
        and event_item_ids(m) == [AVATAR_ID]
        and event_node(m) == NS_AVATAR_META,
        f"{got}, item ids {event_item_ids(m)}",
    )
    # XEP-0163 §4.2: bob's caps say +notify for the metadata node, not for the data node.
    stray = await ev_bob.quiet("avatar_data_publish", lambda m: True, kb, 0.3)
    check(
        "pep: no notification of the avatar data node, which bob did not ask for (XEP-0163 §4.2)",
        not stray,
        f"{[str(m) for m in stray]}",
    )

    # XEP-0084 §3.4: bob fetches the data by the id the metadata gave.
    iq = await within(
        bob.plugin["xep_0084"].retrieve_avatar(slixmpp.JID(ALICE), AVATAR_ID),
        "bob retrieving the avatar data",
    )
    items = result_items(iq)
    data = iq["pubsub"]["items"]["item"]["avatar_data"]["value"]
    check(
        "pep: bob retrieves alice's avatar data by id, byte for byte (XEP-0084 §3.4)",
        [i for i, _ in items] == [AVATAR_ID] and data == AVATAR,
        f"ids {[i for i, _ in items]}, {len(data)} bytes",
    )

    # XEP-0163 §4.3.3 (2), §4.3.4: a newly available resource of a subscriber gets the last
    # item of each node it is interested in.
    bob2 = make(f"{BOB}/second", "bobpw")
    ev_bob2 = Events(bob2)
    try:
        await online(bob2, "bob/second")
        m = await ev_bob2.wait(
            "user_nick_publish", lambda m: m["from"].bare == ALICE, "bob/second's last nickname"
        )
        check(
            "pep: a newly available resource gets the last nickname (XEP-0163 §4.3.3, §4.3.4)",
            m["pubsub_event"]["items"]["item"]["nick"]["nick"] == NICK
            and str(m["to"]) == f"{BOB}/second",
            f"{m}",
        )
        m = await ev_bob2.wait(
            "avatar_metadata_publish",
            lambda m: m["from"].bare == ALICE,
            "bob/second's last avatar metadata",
        )
        check(
            "pep: ... and the last avatar metadata (XEP-0163 §4.3.4)",
            event_item_ids(m) == [AVATAR_ID],
            f"{m}",
        )
    finally:
        bob2.disconnect(wait=0.5)

    # XEP-0163 §5: the default access model is "presence": carol, with no subscription to
    # alice, may not read her nickname; alice's contact bob may.
    try:
        await within(
            carol.plugin["xep_0060"].get_items(slixmpp.JID(ALICE), NS_NICK), "carol's items query"
        )
        check("pep: carol (no presence subscription) cannot read the nickname", False, "result")
    except slixmpp.exceptions.IqError as e:
        cond, app = error_of(e)
        check(
            "pep: carol (no presence subscription) gets not-authorized + "
            "presence-subscription-required (XEP-0163 §5, XEP-0060 §6.5.9)",
            cond == "not-authorized" and app == ["presence-subscription-required"],
            f"{cond} {app}",
        )
    iq = await within(
        bob.plugin["xep_0060"].get_items(slixmpp.JID(ALICE), NS_NICK), "bob's items query"
    )
    items = result_items(iq)
    nicks = [i.findtext(f"{{{NS_NICK}}}nick") for _, i in items]
    check(
        "pep: bob (a contact) reads the nickname node: one item, the nickname (XEP-0060 §6.5)",
        [i for i, _ in items] == ["current"] and nicks == [NICK],
        f"{[i for i, _ in items]} {nicks}",
    )
    iq = await within(
        alice.plugin["xep_0060"].get_node_config(slixmpp.JID(ALICE), NS_NICK),
        "the nickname node's configuration",
    )
    values = iq["pubsub_owner"]["configure"]["form"].get_values()
    check(
        "pep: the auto-created node has access model 'presence' (XEP-0163 §5)",
        values.get("pubsub#access_model") == "presence",
        f"{values}",
    )


async def hosted(alice, bob, ev_bob):
    """XEP-0060 on the hosted service pubsub.localhost."""
    xa, xb = alice.plugin["xep_0060"], bob.plugin["xep_0060"]
    service = slixmpp.JID(PUBSUB)

    # §8.1: create a node with a name; the creator is its owner.
    await within(xa.create_node(service, NODE), "creating the node")
    check(f"pubsub: alice creates {NODE} on {PUBSUB} (XEP-0060 §8.1)", True)

    # §6.1.2: the result names the subscription.
    iq = await within(xb.subscribe(service, NODE), "bob subscribing")
    sub = iq["pubsub"]["subscription"]
    check(
        "pubsub: bob subscribes; the result says subscribed, with his bare JID (XEP-0060 §6.1.2)",
        sub["subscription"] == "subscribed" and str(sub["jid"]) == BOB and sub["node"] == NODE,
        f"{iq}",
    )

    # §7.1.2 / §7.1.2.1: each publish reaches bob, payload included.
    kb = ev_bob.mark()
    await within(xa.publish(service, NODE, id="item-1", payload=entry("first")), "publish 1")
    m = await ev_bob.wait(
        "pubsub_publish", lambda m: str(m["from"]) == PUBSUB, "bob's notification of item-1", kb
    )
    check(
        "pubsub: bob is notified of item-1 with its payload (XEP-0060 §7.1.2.1)",
        event_node(m) == NODE and event_item_ids(m) == ["item-1"] and event_titles(m) == ["first"],
        f"{m}",
    )
    # §7.1.2: without an id, the service makes one and says which in the result.
    kb = ev_bob.mark()
    iq = await within(xa.publish(service, NODE, payload=entry("second")), "publish 2")
    second = iq["pubsub"]["publish"]["item"]["id"]
    m = await ev_bob.wait(
        "pubsub_publish", lambda m: str(m["from"]) == PUBSUB, "bob's notification of item 2", kb
    )
    check(
        "pubsub: an item published without id gets one, in the result and the notification "
        "(XEP-0060 §7.1.2)",
        second not in ("", "item-1")
        and event_item_ids(m) == [second]
        and event_titles(m) == ["second"],
        f"result id {second!r}, {m}",
    )

    # §6.5: bob retrieves both; §6.5.7: max_items=1 gives the most recent.
    iq = await within(xb.get_items(service, NODE), "bob's items query")
    got = {i: atom_title(x) for i, x in result_items(iq)}
    check(
        "pubsub: bob retrieves both items with their payloads (XEP-0060 §6.5)",
        got == {"item-1": "first", second: "second"},
        f"{got}",
    )
    iq = await within(xb.get_items(service, NODE, max_items=1), "bob's max_items=1 query")
    got = [(i, atom_title(x)) for i, x in result_items(iq)]
    check(
        "pubsub: max_items=1 returns the most recent item (XEP-0060 §6.5.7)",
        got == [(second, "second")],
        f"{got}",
    )

    # §7.2.3.1: bob, a subscriber, may not retract alice's item.
    try:
        await within(xb.retract(service, NODE, "item-1"), "bob's retract")
        check("pubsub: bob cannot retract alice's item", False, "result")
    except slixmpp.exceptions.IqError as e:
        cond, _ = error_of(e)
        check(
            "pubsub: bob's retract is forbidden (XEP-0060 §7.2.3.1)", cond == "forbidden", cond
        )

    # §7.2.2.1: retract with notify='true' notifies the subscribers.
    kb = ev_bob.mark()
    await within(xa.retract(service, NODE, "item-1", notify=True), "alice's retract")
    m = await ev_bob.wait(
        "pubsub_retract", lambda m: str(m["from"]) == PUBSUB, "bob's retract notification", kb
    )
    check(
        "pubsub: bob is notified of the retraction of item-1 (XEP-0060 §7.2.2.1)",
        event_node(m) == NODE and event_retract_ids(m) == ["item-1"],
        f"{m}",
    )
    iq = await within(xb.get_items(service, NODE), "bob's items query")
    got = [i for i, _ in result_items(iq)]
    check("pubsub: the retracted item is gone (XEP-0060 §7.2)", got == [second], f"{got}")


async def node_config(alice, bob, ev_bob):
    """XEP-0060 §8.2: the configuration form, round trip, and its effect."""
    xa, xb = alice.plugin["xep_0060"], bob.plugin["xep_0060"]
    service = slixmpp.JID(PUBSUB)

    iq = await within(xa.get_node_config(service, NODE), "the configuration form")
    form = iq["pubsub_owner"]["configure"]["form"]
    before = form.get_values()
    check(
        "config: alice gets a node_config form with title and max_items (XEP-0060 §8.2.2)",
        form["type"] == "form"
        # slixmpp reads a hidden field as a list of values.
        and before.get("FORM_TYPE") in (NS_NODE_CONFIG, [NS_NODE_CONFIG])
        and "pubsub#title" in before
        and "pubsub#max_items" in before,
        f"{before}",
    )
    # §8.2.3: only an owner may configure.
    try:
        await within(xb.get_node_config(service, NODE), "bob's configuration request")
        check("config: bob (not an owner) cannot get the form", False, "result")
    except slixmpp.exceptions.IqError as e:
        cond, _ = error_of(e)
        check(
            "config: bob (not an owner) is forbidden the form (XEP-0060 §8.2.3)",
            cond == "forbidden",
            cond,
        )

    # §8.2.4: the form comes back filled in, as a client edits it.
    submit = copy.copy(form)
    submit.set_type("submit")
    submit.field["pubsub#title"]["value"] = "Canto flow node"
    submit.field["pubsub#max_items"]["value"] = "1"
    await within(xa.set_node_config(service, NODE, submit), "submitting the form")
    iq = await within(xa.get_node_config(service, NODE), "the configuration form again")
    after = iq["pubsub_owner"]["configure"]["form"].get_values()
    check(
        "config: the new title and max_items read back (XEP-0060 §8.2.4, §8.2.5)",
        after.get("pubsub#title") == "Canto flow node" and after.get("pubsub#max_items") == "1",
        f"title {after.get('pubsub#title')!r}, max_items {after.get('pubsub#max_items')!r}",
    )
    unchanged = {
        k: (before.get(k), after.get(k))
        for k in before
        if k not in ("pubsub#title", "pubsub#max_items") and before.get(k) != after.get(k)
    }
    check("config: the other fields kept their values", not unchanged, f"{unchanged}")

    # The new max_items holds: two more items leave one.
    await within(xa.publish(service, NODE, id="item-3", payload=entry("third")), "publish 3")
    await within(xa.publish(service, NODE, id="item-4", payload=entry("fourth")), "publish 4")
    iq = await within(xb.get_items(service, NODE), "bob's items query")
    got = [(i, atom_title(x)) for i, x in result_items(iq)]
    check(
        "config: with max_items=1 the node keeps only the newest item",
        got == [("item-4", "fourth")],
        f"{got}",
    )

    # A value outside the field's options is refused (§8.2.5: not-acceptable), and changes
    # nothing.
    bad = Form()
    bad["type"] = "submit"
    bad.add_field(var="FORM_TYPE", ftype="hidden", value=NS_NODE_CONFIG)
    bad.add_field(var="pubsub#access_model", value="no-such-model")
    try:
        await within(xa.set_node_config(service, NODE, bad), "submitting a bad form")
        check("config: an unknown access model is refused", False, "result")
    except slixmpp.exceptions.IqError as e:
        cond, _ = error_of(e)
        check(
            "config: an unknown access model is refused (XEP-0060 §8.2.5)",
            cond in ("not-acceptable", "bad-request"),
            cond,
        )
    iq = await within(xa.get_node_config(service, NODE), "the configuration form again")
    again = iq["pubsub_owner"]["configure"]["form"].get_values()
    check(
        "config: the refused form changed nothing",
        again == after,
        f"{again.get('pubsub#access_model')!r}",
    )

    # §8.4.2: deleting the node notifies its subscribers; it is gone.
    kb = ev_bob.mark()
    await within(xa.delete_node(service, NODE), "deleting the node")
    m = await ev_bob.wait(
        "pubsub_delete", lambda m: str(m["from"]) == PUBSUB, "bob's delete notification", kb
    )
    check(
        "pubsub: bob is notified of the node's deletion (XEP-0060 §8.4.2)",
        m["pubsub_event"]["delete"]["node"] == NODE,
        f"{m}",
    )
    try:
        await within(xb.get_items(service, NODE), "items of the deleted node")
        check("pubsub: the deleted node has no items", False, "result")
    except slixmpp.exceptions.IqError as e:
        cond, _ = error_of(e)
        check(
            "pubsub: the deleted node is item-not-found (XEP-0060 §6.5.9)",
            cond == "item-not-found",
            cond,
        )


async def main():
    alice = make(f"{ALICE}/pep", "alicepw")
    bob = make(f"{BOB}/pep", "bobpw")
    carol = make(f"{CAROL}/pep", "carolpw")
    ev_alice, ev_bob = Events(alice), Events(bob)
    # The server's disco#info queries for caps hashes (XEP-0115 §6.2, node 'NODE#VER').
    caps_queries = []
    for c in (alice, bob):
        c.register_handler(
            Callback(
                "caps query",
                MatchXPath(f"{{jabber:client}}iq/{{{NS_DISCO_INFO}}}query"),
                lambda iq: iq["type"] == "get"
                and "#" in (iq["disco_info"]["node"] or "")
                and caps_queries.append(iq),
            )
        )
    clients = (alice, bob, carol)
    try:
        await online(alice, "alice")
        await online(bob, "bob")
        await online(carol, "carol", presence=False)
        await subscribe_both_ways(alice, bob)
        sections = (
            ("pep", lambda: pep(alice, bob, carol, ev_alice, ev_bob, caps_queries)),
            ("pubsub", lambda: hosted(alice, bob, ev_bob)),
            ("config", lambda: node_config(alice, bob, ev_bob)),
        )
        for name, run in sections:
            try:
                await run()
            except StepTimeout as e:
                check(f"{name}: timed out waiting for {e}", False, "no answer")
            except slixmpp.exceptions.IqError as e:
                check(f"{name}: IQ error", False, str(e.iq))
            except slixmpp.exceptions.IqTimeout:
                check(f"{name}: IQ timeout", False, "no answer")
    finally:
        for c in clients:
            if c.transport:
                c.disconnect(wait=0.5)
        await asyncio.sleep(0.3)


async def run():
    try:
        await asyncio.wait_for(main(), OVERALL)
    except asyncio.TimeoutError:
        check("overall", False, f"flow took longer than {OVERALL} s")
    except StepTimeout as e:
        check(f"setup: timed out waiting for {e}", False, "no answer")
    except Exception as e:  # a failure of the flow itself still ends with the summary line
        check("flow", False, repr(e))


started = time.monotonic()
asyncio.run(run())
print(f"({time.monotonic() - started:.1f} s)")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
