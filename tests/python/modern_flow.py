"""Carbons, MAM, blocking and stream management driven by slixmpp's own plugins (xep_0280,
xep_0313 with xep_0059, xep_0191, xep_0198, xep_0359, xep_0334). Run by
tests/tests/e2e/slixmpp.rs against an in-process Canto with module `mam` enabled:
python3 modern_flow.py PORT CERT_PEM.

Accounts alice, bob and carol must exist (passwords alicepw, bobpw, carolpw). Prints one line
per check and finally "N passed, M failed"; exits non-zero if any check failed, a step timed
out, or the whole flow took longer than OVERALL seconds.

Section numbers cited, with their titles: XEP-0280 §4 Enabling, §7 Receiving Messages, §8 Sending
Messages, §9 Avoiding Carbons for a single message; XEP-0313 §3.1 Order of messages, §3.5
Communicating the archive ID, §4 Querying an archive, §4.1.1 Filtering by JID, §4.3.2 Requesting
pages, §4.3.3 Requesting the last page, §6.1 Storage and Retrieval Rules; XEP-0059 §2.1 Limiting
the Number of Items, §2.2 Paging Forwards, §2.3 Paging Backwards, §2.5 Requesting the Last Page;
XEP-0359 §3 Unique and stable stanza IDs; XEP-0191 (1.3) §3.2 User Retrieves Block List, §3.3
User Blocks Contact, §3.4 User Unblocks Contact; XEP-0198 §3 Enabling, §4 Acks, §5 Resumption;
XEP-0334 <no-copy/>."""

import asyncio
import ssl
import sys
import time

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PORT = int(sys.argv[1])
CERT = sys.argv[2]
STEP = 10  # seconds to wait for any one expected stanza
QUIET = 1.0  # seconds of silence that count as "not delivered"
OVERALL = 50  # the whole flow

DOMAIN = "localhost"
ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
NS_CLIENT = "jabber:client"
NS_BLOCK_ERR = "urn:xmpp:blocking:errors"
NS_SID = "urn:xmpp:sid:0"

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


class Inbox:
    """Every <message/> a client receives, in order, with waiting helpers."""

    def __init__(self, client):
        self.items = []
        self.changed = asyncio.Event()
        client.register_handler(
            Callback("inbox", MatchXPath(f"{{{NS_CLIENT}}}message"), self._on)
        )

    def _on(self, msg):
        self.items.append(msg)
        self.changed.set()

    def mark(self):
        return len(self.items)

    async def wait(self, pred, what, since=0):
        """The first message after index `since` matching `pred`; fails the step on timeout."""
        deadline = time.monotonic() + STEP
        while True:
            for m in self.items[since:]:
                if pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepTimeout(what)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def quiet(self, pred, since, secs=QUIET):
        """Messages after `since` matching `pred` that arrive within `secs`."""
        await asyncio.sleep(secs)
        return [m for m in self.items[since:] if pred(m)]


def body_is(text):
    return lambda m: m["body"] == text


def stanza_ids(msg):
    """(by, id) of every XEP-0359 <stanza-id/> directly in `msg`."""
    return [(e.get("by"), e.get("id")) for e in msg.xml.findall(f"{{{NS_SID}}}stanza-id")]


def archived(result):
    """The message inside a XEP-0313 <result/>."""
    return result["mam_result"]["forwarded"]["stanza"]


def make(jid, password, plugins=()):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    for p in ("xep_0030", "xep_0297", "xep_0359", "xep_0334", *plugins):
        c.register_plugin(p)
    return c


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise StepTimeout(what) from None


async def online(c, what):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler(
        "session_start", lambda _: started.done() or started.set_result(True), disposable=True
    )
    c.connect("127.0.0.1", PORT)
    await within(started, f"{what}'s session")
    c.send_presence()


def send(c, to, body, extra=None):
    m = c.make_message(mto=to, mbody=body, mtype="chat")
    if extra:
        m.enable(extra)
    m.send()


async def carbons(a1, a2, bob, in_a1, in_a2, in_bob):
    """XEP-0280 with two resources of alice."""
    # XEP-0280 §4: enabling is an IQ-set answered with a result (slixmpp raises on error).
    await within(a1.plugin["xep_0280"].enable(), "carbons enable on r1")
    await within(a2.plugin["xep_0280"].enable(), "carbons enable on r2")
    check("carbons: both resources enabled", True)

    got = {"received": [], "sent": []}
    a2.add_event_handler("carbon_received", lambda m: got["received"].append(m))
    a2.add_event_handler("carbon_sent", lambda m: got["sent"].append(m))

    # XEP-0280 §7 (Receiving Messages): a message to alice/r1 is delivered there, and a
    # <received/> copy goes to r2, from alice's bare JID, forwarding the original.
    k1, k2 = in_a1.mark(), in_a2.mark()
    send(bob, f"{ALICE}/r1", "carbon-in")
    direct = await in_a1.wait(body_is("carbon-in"), "r1 receiving bob's message", k1)
    w = await in_a2.wait(
        lambda m: m.xml.find("{urn:xmpp:carbons:2}received") is not None, "received carbon", k2
    )
    inner = w["carbon_received"]
    check(
        "carbons: r2 gets a received carbon of bob's message to r1 (XEP-0280 §7)",
        inner["body"] == "carbon-in"
        and inner["from"].bare == BOB
        and str(inner["to"]) == f"{ALICE}/r1"
        and str(w["from"]) == ALICE
        and str(w["to"]) == f"{ALICE}/r2",
        f"wrapper {w}",
    )
    # XEP-0313 §3.5: "servers SHOULD include the [stanza-id] element as a child of the
    # forwarded message when using XEP-0280": the same archive id r1 got.
    ids = stanza_ids(inner)
    check(
        "carbons: the received carbon carries alice's archive id, as r1 got it (XEP-0313 §3.5)",
        ids == [(ALICE, direct["stanza_id"]["id"])] and direct["stanza_id"]["id"] != "",
        f"carbon {ids}, direct {direct['stanza_id']}",
    )
    check(
        "carbons: the plugin raised carbon_received",
        any(m["carbon_received"]["body"] == "carbon-in" for m in got["received"]),
        f"{len(got['received'])} events",
    )

    # XEP-0280 §8 (Sending Messages): what r1 sends reaches bob, and r2 gets a <sent/> copy.
    k2, kb = in_a2.mark(), in_bob.mark()
    send(a1, f"{BOB}/b", "carbon-out")
    await in_bob.wait(body_is("carbon-out"), "bob receiving r1's message", kb)
    w = await in_a2.wait(
        lambda m: m.xml.find("{urn:xmpp:carbons:2}sent") is not None, "sent carbon", k2
    )
    inner = w["carbon_sent"]
    check(
        "carbons: r2 gets a sent carbon of r1's message to bob (XEP-0280 §8)",
        inner["body"] == "carbon-out"
        and str(inner["from"]) == f"{ALICE}/r1"
        and inner["to"].bare == BOB
        and str(w["from"]) == ALICE,
        f"wrapper {w}",
    )
    # XEP-0313 §3.5: "Servers MUST NOT include the <stanza-id/> element in messages addressed
    # to JIDs that do not have permissions to access the archive": the copy goes to alice/r2,
    # so it may carry alice's archive id, never bob's.
    foreign = [i for i in stanza_ids(inner) if i[0] != ALICE]
    check(
        "carbons: the sent carbon carries no id from bob's archive (XEP-0313 §3.5)",
        not foreign,
        f"forwarded message has {foreign}",
    )
    check(
        "carbons: the plugin raised carbon_sent",
        any(m["carbon_sent"]["body"] == "carbon-out" for m in got["sent"]),
        f"{len(got['sent'])} events",
    )
    # XEP-0280 §8: "The sending server SHOULD NOT send a forwarded copy to the sending full JID".
    stray = await in_a1.quiet(
        lambda m: m.xml.find("{urn:xmpp:carbons:2}sent") is not None, in_a1.mark(), 0.2
    )
    check("carbons: the sender gets no copy of its own message", not stray, f"{stray}")

    # XEP-0280 §9 (Avoiding Carbons): <private/> on an outgoing message: bob gets it, r2 no copy.
    k2, kb = in_a2.mark(), in_bob.mark()
    send(a1, f"{BOB}/b", "private-out", "carbon_private")
    await in_bob.wait(body_is("private-out"), "bob receiving the private message", kb)
    copies = await in_a2.quiet(lambda m: True, k2)
    check(
        "carbons: <private/> message is not copied to r2 (XEP-0280 §9)",
        not copies,
        f"r2 got {[str(m) for m in copies]}",
    )

    # XEP-0334 <no-copy/> hint ("should not be copied to addresses other than the one to which
    # it is addressed, for example through Message Carbons"): r1 gets it, r2 no received carbon.
    k1, k2 = in_a1.mark(), in_a2.mark()
    send(bob, f"{ALICE}/r1", "nocopy-in", "no-copy")
    await in_a1.wait(body_is("nocopy-in"), "r1 receiving the no-copy message", k1)
    copies = await in_a2.quiet(lambda m: True, k2)
    check(
        "carbons: <no-copy/> message is not copied to r2 (XEP-0334)",
        not copies,
        f"r2 got {[str(m) for m in copies]}",
    )


async def mam(a1, bob, in_a1, in_bob):
    """XEP-0313 on alice's archive, before anything else was exchanged."""
    # The conversation: (sender, body). Each message is awaited before the next is sent, so
    # the archive order is the sending order (XEP-0313 §3.1 'Order of messages').
    convo = [
        ("alice", "mam-1"),
        ("bob", "mam-2"),
        ("alice", "mam-3"),
        ("bob", "mam-4"),
        ("bob", "mam-5"),
    ]
    live_sid = {}
    for who, text in convo:
        if who == "alice":
            k = in_bob.mark()
            send(a1, f"{BOB}/b", text)
            m = await in_bob.wait(body_is(text), f"bob receiving {text}", k)
            # XEP-0359 §3 / XEP-0313 §3.5: bob's archive marks it for bob, never for alice.
            sid = m["stanza_id"]
            check(
                f"mam: {text} reaches bob with <stanza-id by='{BOB}'> (XEP-0313 §3.5)",
                sid["by"] == BOB and sid["id"] != "",
                f"{m}",
            )
        else:
            k = in_a1.mark()
            send(bob, f"{ALICE}/r1", text)
            m = await in_a1.wait(body_is(text), f"alice receiving {text}", k)
            sid = m["stanza_id"]
            # XEP-0313 §3.5: 'by' is the archive's address, alice's bare JID.
            check(
                f"mam: {text} reaches alice with <stanza-id by='{ALICE}'> (XEP-0313 §3.5)",
                sid["by"] == ALICE and sid["id"] != "",
                f"{m}",
            )
            live_sid[text] = sid["id"]

    plugin = a1.plugin["xep_0313"]
    # XEP-0313 §4 + XEP-0059 §2.2: paging forwards, two per page, filtered with=bob (§4.1.1).
    pages = []
    it = plugin.retrieve(with_jid=slixmpp.JID(BOB), iterator=True, rsm={"max": 2})
    async for page in it:
        pages.append(page)
        if len(pages) > 5:
            break
    sizes = [len(p["mam"]["results"]) for p in pages if p["mam"]["results"]]
    check(
        "mam: with=bob, max=2 pages forward as 2+2+1 (XEP-0059 §2.2)",
        sizes == [2, 2, 1],
        f"page sizes {sizes}",
    )
    results = [r for p in pages for r in p["mam"]["results"]]
    bodies = [archived(r)["body"] for r in results]
    check(
        "mam: archived bodies in conversation order (XEP-0313 §3.1, §4)",
        bodies == [t for _, t in convo],
        f"{bodies}",
    )
    froms = [archived(r)["from"].bare for r in results]
    check(
        "mam: archived senders match",
        froms == [ALICE if w == "alice" else BOB for w, _ in convo],
        f"{froms}",
    )
    # XEP-0313 §3.5: bob's archive ids are not alice's to see, in her archive either.
    foreign = [
        i for r in results for i in stanza_ids(archived(r)) if i[0] != ALICE
    ]
    check(
        "mam: archived messages carry no id from bob's archive (XEP-0313 §3.5)",
        not foreign,
        f"{foreign}",
    )
    ids = {
        archived(r)["body"]: r["mam_result"]["id"] for r in results
    }
    check(
        "mam: live <stanza-id/> equals the archive result id (XEP-0313 §3.5, XEP-0359 §3)",
        all(ids.get(t) == i for t, i in live_sid.items()) and len(live_sid) == 3,
        f"live {live_sid}, archive {ids}",
    )
    # XEP-0313 §4.3.2 (Requesting pages): the last page says complete='true', earlier ones not.
    fins = [p["mam_fin"]["complete"] for p in pages if p["mam"]["results"]]
    check(
        "mam: only the last page is complete='true' (XEP-0313 §4.3.2)",
        len(fins) == 3 and fins[-1] in ("true", "1", True) and fins[0] not in ("true", "1", True),
        f"complete flags {fins}",
    )

    # XEP-0059 §2.5 then §2.3 (XEP-0313 §4.3.3): the last page (empty <before/>), then
    # paging backwards; within a page the order stays chronological.
    pages = []
    it = plugin.retrieve(with_jid=slixmpp.JID(BOB), iterator=True, rsm={"max": 2}, reverse=True)
    async for page in it:
        pages.append([archived(r)["body"] for r in page["mam"]["results"]])
        if len(pages) > 5:
            break
    pages = [p for p in pages if p]
    check(
        "mam: paging backwards gives [4,5], [2,3], [1] (XEP-0059 §2.3, §2.5)",
        pages == [["mam-4", "mam-5"], ["mam-2", "mam-3"], ["mam-1"]],
        f"{pages}",
    )

    # A plain query with max=3: the first three only (XEP-0059 §2.1).
    iq = await within(
        plugin.retrieve(with_jid=slixmpp.JID(BOB), rsm={"max": 3}), "MAM query with max=3"
    )
    got = [archived(r)["body"] for r in iq["mam"]["results"]]
    check(
        "mam: max=3 returns the first three (XEP-0059 §2.1)",
        got == ["mam-1", "mam-2", "mam-3"],
        f"{got}",
    )


async def blocking(a1, a2, bob, in_a1, in_a2, in_bob):
    """XEP-0191 (v1.3): alice blocks bob, then unblocks him."""
    pushes = {"blocked": [], "unblocked": []}

    def on_push(kind, payload):
        def h(iq):
            pushes[kind].append({str(i["jid"]) for i in iq[payload]})
            iq.reply().send()  # RFC 6120 §8.2.3: an IQ-set gets an answer

        return h

    a2.add_event_handler("blocked", on_push("blocked", "block"))
    a2.add_event_handler("unblocked", on_push("unblocked", "unblock"))

    # §3.2: each resource retrieves the list first (and so will get pushes).
    for c in (a1, a2):
        before = await within(c.plugin["xep_0191"].get_blocked_jids(), "blocklist")
    check("blocking: the blocklist starts empty (XEP-0191 §3.2)", before == set(), f"{before}")

    await within(a1.plugin["xep_0191"].block(slixmpp.JID(BOB)), "block command")
    listed = await within(a1.plugin["xep_0191"].get_blocked_jids(), "blocklist")
    check(
        "blocking: get_blocked returns bob after block (XEP-0191 §3.3)",
        {str(j) for j in listed} == {BOB},
        f"{listed}",
    )
    # §3.3: "The server MUST also send an IQ-set to all of the user's resources that have
    # requested the blocklist".
    deadline = time.monotonic() + STEP
    while not pushes["blocked"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    check(
        "blocking: r2 receives the block push (XEP-0191 §3.3)",
        pushes["blocked"] == [{BOB}],
        f"{pushes['blocked']}",
    )

    # §3.3: a message from the blocked contact is not delivered; the contact SHOULD get
    # <service-unavailable/>.
    k1, k2, kb = in_a1.mark(), in_a2.mark(), in_bob.mark()
    send(bob, f"{ALICE}/r1", "blocked-in")
    err = await in_bob.wait(lambda m: m["type"] == "error", "bob's bounce", kb)
    check(
        "blocking: bob's message bounces with service-unavailable (XEP-0191 §3.3)",
        err["error"]["condition"] == "service-unavailable" and err["from"].bare == ALICE,
        f"{err}",
    )
    leaked = await in_a1.quiet(lambda m: "blocked-in" in str(m), k1, 0.5)
    leaked += await in_a2.quiet(lambda m: "blocked-in" in str(m), k2, 0.5)
    check(
        "blocking: no resource of alice sees bob's message, nor a carbon of it (XEP-0191 §3.3)",
        not leaked,
        f"{[str(m) for m in leaked]}",
    )

    # §3.3: alice's message to the blocked contact: not routed, <not-acceptable/> with
    # <blocked xmlns='urn:xmpp:blocking:errors'/>.
    k1, kb = in_a1.mark(), in_bob.mark()
    send(a1, f"{BOB}/b", "blocked-out")
    err = await in_a1.wait(lambda m: m["type"] == "error", "alice's bounce", k1)
    blocked_el = err.xml.find(f"{{{NS_CLIENT}}}error/{{{NS_BLOCK_ERR}}}blocked")
    check(
        "blocking: alice's message to bob bounces not-acceptable + <blocked/> (XEP-0191 §3.3)",
        err["error"]["condition"] == "not-acceptable" and blocked_el is not None,
        f"{err}",
    )
    leaked = await in_bob.quiet(lambda m: "blocked-out" in str(m), kb, 0.5)
    check("blocking: bob does not get alice's message", not leaked, f"{[str(m) for m in leaked]}")

    # §3.4: unblock; push to r2; delivery both ways again.
    await within(a1.plugin["xep_0191"].unblock(slixmpp.JID(BOB)), "unblock command")
    listed = await within(a1.plugin["xep_0191"].get_blocked_jids(), "blocklist")
    check(
        "blocking: the list is empty after unblock (XEP-0191 §3.4)", listed == set(), f"{listed}"
    )
    deadline = time.monotonic() + STEP
    while not pushes["unblocked"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    check(
        "blocking: r2 receives the unblock push (XEP-0191 §3.4)",
        pushes["unblocked"] == [{BOB}],
        f"{pushes['unblocked']}",
    )
    k1, kb = in_a1.mark(), in_bob.mark()
    send(bob, f"{ALICE}/r1", "unblocked-in")
    send(a1, f"{BOB}/b", "unblocked-out")
    await in_a1.wait(body_is("unblocked-in"), "alice receiving bob after unblock", k1)
    await in_bob.wait(body_is("unblocked-out"), "bob receiving alice after unblock", kb)
    check("blocking: messages flow both ways after unblock (XEP-0191 §3.4)", True)

    # XEP-0313 §6.1 (Storage and Retrieval Rules): a message rejected because its sender is
    # blocked "should not appear in the archive for the entity that rejected it".
    iq = await within(
        a1.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID(BOB), rsm={"max": 50}), "MAM query"
    )
    bodies = [archived(r)["body"] for r in iq["mam"]["results"]]
    check(
        "blocking: alice's archive has bob's message after unblocking, not the blocked one",
        "unblocked-in" in bodies and "blocked-in" not in bodies,
        f"{bodies}",
    )


async def stream_management(carol, bob, in_carol, in_bob):
    """XEP-0198 with resumption, driven by slixmpp's xep_0198 plugin."""
    sm = carol.plugin["xep_0198"]
    enabled = asyncio.get_event_loop().create_future()
    carol.add_event_handler(
        "sm_enabled", lambda st: enabled.done() or enabled.set_result(st), disposable=True
    )
    await online(carol, "carol")
    st = await within(enabled, "<enabled/>")
    # XEP-0198 §3 + §5: enable with resume='true' gives an id and resume='true'.
    check(
        "sm: enabled with a resumption id (XEP-0198 §3, §5)",
        bool(sm.sm_id) and st["resume"] in (True, "true", "1"),
        f"{st}",
    )

    # XEP-0198 §4: the server's <a h=.../> counts every stanza carol sent since <enable/>.
    kb = in_bob.mark()
    for i in range(3):
        send(carol, f"{BOB}/b", f"sm-out-{i}")
    await in_bob.wait(body_is("sm-out-2"), "bob receiving carol's messages", kb)
    sm.request_ack()
    deadline = time.monotonic() + STEP
    while sm.last_ack != sm.seq and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    check(
        "sm: the server's <a/> acknowledges everything carol sent (XEP-0198 §4)",
        sm.last_ack == sm.seq and sm.seq >= 4 and not sm.unacked_queue,
        f"last_ack={sm.last_ack} seq={sm.seq} unacked={len(sm.unacked_queue)}",
    )

    # Some messages arrive and are handled by carol but not acknowledged before the drop.
    names = [f"sm-in-{i}" for i in range(1, 9)]
    for n in names[:3]:
        send(bob, f"{CAROL}/sm", n)
    await in_carol.wait(body_is(names[2]), "carol receiving the first three", 0)
    # One more from carol that the server handles (bob has it) but does not acknowledge yet:
    # the window is large, so slixmpp sends no <r/>. After resuming, <resumed h=.../> must
    # account for it, or slixmpp resends it and bob gets it twice (XEP-0198 §5).
    kb = in_bob.mark()
    send(carol, f"{BOB}/b", "sm-out-gap")
    await in_bob.wait(body_is("sm-out-gap"), "bob receiving carol's last message", kb)
    seq_at_drop, unacked_at_drop = sm.seq, len(sm.unacked_queue)
    resumed = asyncio.get_event_loop().create_future()
    new_session = []
    carol.add_event_handler(
        "session_resumed", lambda st: resumed.done() or resumed.set_result(st), disposable=True
    )
    carol.add_event_handler("session_start", lambda _: new_session.append(True))
    gone = asyncio.get_event_loop().create_future()
    carol.add_event_handler(
        "disconnected", lambda _: gone.done() or gone.set_result(True), disposable=True
    )
    # The network drops: no </stream:stream>, the TCP connection is simply gone (§5).
    carol.transport.abort()
    await within(gone, "carol noticing her dropped connection")
    for n in names[3:]:
        send(bob, f"{CAROL}/sm", n)
    # A round trip through bob's session: the server routed bob's messages before we go on.
    await within(bob.plugin["xep_0199"].ping(DOMAIN, timeout=STEP), "bob's ping")
    await asyncio.sleep(0.3)

    carol.connect("127.0.0.1", PORT)
    st = await within(resumed, "<resumed/>")
    check("sm: slixmpp resumed the session (<resumed/>, XEP-0198 §5)", True)
    check(
        "sm: <resumed h=.../> counts every stanza carol sent before the drop (XEP-0198 §5)",
        st["h"] == seq_at_drop,
        f"h={st['h']} but carol had sent {seq_at_drop}",
    )
    check(
        "sm: resumption is not a new session (no second session_start)",
        not new_session,
        f"{len(new_session)} session_start events",
    )
    await in_carol.wait(body_is(names[-1]), "carol receiving the messages sent during the gap", 0)
    await asyncio.sleep(QUIET)  # room for duplicates to show up
    got = [m["body"] for m in in_carol.items if m["body"].startswith("sm-in-")]
    check(
        "sm: every message arrived exactly once, in order (XEP-0198 §5)",
        got == names,
        f"{got}",
    )
    # The resumed session works both ways.
    kb = in_bob.mark()
    send(carol, f"{BOB}/b", "after-resume")
    await in_bob.wait(body_is("after-resume"), "bob receiving carol after resumption", kb)
    sm.request_ack()
    deadline = time.monotonic() + STEP
    while sm.last_ack != sm.seq and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    check(
        "sm: the resumed stream acknowledges with continued counters (XEP-0198 §5)",
        sm.last_ack == sm.seq and not sm.unacked_queue,
        f"last_ack={sm.last_ack} seq={sm.seq}",
    )
    sent = [m["body"] for m in in_bob.items if m["body"].startswith("sm-out-")]
    check(
        "sm: bob got carol's messages once each, the unacknowledged one too (XEP-0198 §5)",
        sent == ["sm-out-0", "sm-out-1", "sm-out-2", "sm-out-gap"] and unacked_at_drop == 1,
        f"bob got {sent}; carol had {unacked_at_drop} unacknowledged at the drop",
    )


async def main():
    a1 = make(f"{ALICE}/r1", "alicepw", ("xep_0280", "xep_0313", "xep_0059", "xep_0191"))
    a2 = make(f"{ALICE}/r2", "alicepw", ("xep_0280", "xep_0191"))
    bob = make(f"{BOB}/b", "bobpw", ("xep_0199",))
    carol = make(f"{CAROL}/sm", "carolpw")
    # No automatic <r/> from carol: the test decides when she asks for acks.
    carol.register_plugin("xep_0198", pconfig={"window": 1000})
    inboxes = [Inbox(c) for c in (a1, a2, bob, carol)]
    in_a1, in_a2, in_bob, in_carol = inboxes
    clients = (a1, a2, bob, carol)
    try:
        for c, n in ((a1, "alice/r1"), (a2, "alice/r2"), (bob, "bob")):
            await online(c, n)
        sections = (
            ("mam", lambda: mam(a1, bob, in_a1, in_bob)),
            ("carbons", lambda: carbons(a1, a2, bob, in_a1, in_a2, in_bob)),
            ("blocking", lambda: blocking(a1, a2, bob, in_a1, in_a2, in_bob)),
            ("sm", lambda: stream_management(carol, bob, in_carol, in_bob)),
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
