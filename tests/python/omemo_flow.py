"""OMEMO between two slixmpp clients with slixmpp-omemo (plugin xep_0384, python-omemo with its
Oldmemo and Twomemo backends), whose keys travel through Canto's PEP. Run by
tests/tests/e2e/slixmpp.rs against an in-process Canto (module pep on by default):
python3 omemo_flow.py PORT CERT_PEM.

Accounts alice, bob and carol must exist (passwords alicepw, bobpw, carolpw). Prints one line
per check and finally "N passed, M failed"; exits non-zero if any check failed, a step timed
out, or the whole flow took longer than OVERALL seconds.

What travels: each client, when it starts, publishes its device list and its bundle under both
OMEMO namespaces (legacy `eu.siacs.conversations.axolotl`, XEP-0384 0.3, and `urn:xmpp:omemo:2`)
with publish-options (XEP-0060 §7.1.5) asking for an open access model; each learns the other's
device list from PEP notifications (XEP-0163 §4.3.4, the plugin's `+notify` interest), downloads
the other's bundle to build a session, and sends an encrypted message. slixmpp-omemo 2.2 has no
XEP-0420 (stanza content encryption) for omemo:2 message payloads, so messages use the legacy
namespace, which encrypts the body (its `encrypt_message` picks that by itself).

The library's state lives in memory (a dict per client); trust is Blind Trust Before
Verification, so the flow needs nobody to confirm a fingerprint.

XEP-0384 is cited by section title, which the legacy (0.3) and current (0.8) versions share
while their numbering differs: "Announcing support" (device list, and bundle), "Building a
session", "Sending a message", "Receiving a message". Section numbers cited, with their titles:
XEP-0060 §4.5 Node Access Models, §7.1.5 Publishing Options; XEP-0163 §4.3.4 Sending the Last
Published Item."""

import asyncio
import logging
import ssl
import sys
import time
from typing import FrozenSet, Optional

import slixmpp
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp.plugins import register_plugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp_omemo import XEP_0384

PORT = int(sys.argv[1])
CERT = sys.argv[2]
STEP = 15  # seconds to wait for any one expected stanza or library step
OVERALL = 90  # the whole flow

DOMAIN = "localhost"
ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
NS_OLD = "eu.siacs.conversations.axolotl"
NS_TWO = "urn:xmpp:omemo:2"
OLD_DEVICES = f"{NS_OLD}.devicelist"
TWO_DEVICES = f"{NS_TWO}:devices"
TWO_BUNDLES = f"{NS_TWO}:bundles"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"

TO_BOB = "Bob, this is for your eyes only. ünïcødé ✓"
TO_ALICE = "Alice, received and understood."
TO_BOB_AGAIN = "A second one, on the established session."

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


class MemoryStorage(Storage):
    """python-omemo's key/value storage, in a dict: nothing outlives the flow."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    """slixmpp-omemo's plugin with in-memory storage and Blind Trust Before Verification (the
    package's examples do the same with a JSON file)."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._memory = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        pass

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        # With BTBV and no manual decisions ever made, this is not reached; if it were, the
        # devices stay undecided and encryption fails, which the flow reports.
        pass


register_plugin(OmemoPlugin)  # under its name, xep_0384


class Inbox:
    """Every <message/> a client receives that carries a legacy OMEMO <encrypted/>."""

    def __init__(self, client):
        self.items = []
        self.changed = asyncio.Event()
        client.register_handler(
            Callback(
                "omemo inbox",
                MatchXPath(f"{{jabber:client}}message/{{{NS_OLD}}}encrypted"),
                self._on,
            )
        )

    def _on(self, msg):
        self.items.append(msg)
        self.changed.set()

    def mark(self):
        return len(self.items)

    async def next(self, what, since):
        deadline = time.monotonic() + STEP
        while len(self.items) <= since:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepTimeout(what)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.items[since]


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise StepTimeout(what) from None


async def until(pred, what):
    deadline = time.monotonic() + STEP
    while not await pred():
        if time.monotonic() > deadline:
            raise StepTimeout(what)
        await asyncio.sleep(0.1)


def make(jid, password, omemo=True):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163"):
        c.register_plugin(p)
    if omemo:
        c.register_plugin("xep_0384")
    return c


async def online(c, what, presence=True):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler(
        "session_start", lambda _: started.done() or started.set_result(True), disposable=True
    )
    c.connect("127.0.0.1", PORT)
    await within(started, f"{what}'s session")
    await within(c.get_roster(), f"{what}'s roster")
    if presence:
        await within(c.plugin["xep_0115"].update_caps(broadcast=False), f"{what}'s caps")
        c.send_presence()


def items_of(iq):
    items = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items")
    return [] if items is None else items.findall(f"{{{NS_PUBSUB}}}item")


def old_device_ids(iq):
    """Device ids in a legacy device list item (<list><device id=''/></list>)."""
    return {
        int(d.get("id"))
        for item in items_of(iq)
        for d in item.iterfind(f"{{{NS_OLD}}}list/{{{NS_OLD}}}device")
    }


def two_device_ids(iq):
    """Device ids in an omemo:2 device list item (<devices><device id=''/></devices>)."""
    return {
        int(d.get("id"))
        for item in items_of(iq)
        for d in item.iterfind(f"{{{NS_TWO}}}devices/{{{NS_TWO}}}device")
    }


async def published(reader, owner, device_id, what):
    """What `reader` finds in `owner`'s PEP: the device lists and bundles of `device_id`."""
    x = reader.plugin["xep_0060"]
    jid = slixmpp.JID(owner)
    iq = await within(x.get_items(jid, OLD_DEVICES), f"{what}: legacy device list")
    old_ids = old_device_ids(iq)
    iq = await within(x.get_items(jid, TWO_DEVICES), f"{what}: omemo:2 device list")
    two_ids = two_device_ids(iq)
    iq = await within(
        x.get_items(jid, f"{NS_OLD}.bundles:{device_id}"), f"{what}: legacy bundle"
    )
    old_bundle = [i for i in items_of(iq) if i.find(f"{{{NS_OLD}}}bundle") is not None]
    iq = await within(
        x.get_items(jid, TWO_BUNDLES, item_ids=[str(device_id)]), f"{what}: omemo:2 bundle"
    )
    two_bundle = [
        i.get("id") for i in items_of(iq) if i.find(f"{{{NS_TWO}}}bundle") is not None
    ]
    return old_ids, two_ids, len(old_bundle), two_bundle


async def main():
    alice, bob = make(f"{ALICE}/omemo", "alicepw"), make(f"{BOB}/omemo", "bobpw")
    carol = make(f"{CAROL}/plain", "carolpw", omemo=False)
    in_alice, in_bob = Inbox(alice), Inbox(bob)
    clients = (alice, bob, carol)
    try:
        await online(alice, "alice")
        await online(bob, "bob")
        await online(carol, "carol", presence=False)
        # Creating the session manager generates the keys and publishes the device list and
        # bundle under both namespaces; any PEP failure ends here with the library's exception.
        sm_alice = await within(
            alice.plugin["xep_0384"].get_session_manager(), "alice's OMEMO setup"
        )
        sm_bob = await within(bob.plugin["xep_0384"].get_session_manager(), "bob's OMEMO setup")
        dev_alice = (await sm_alice.get_own_device_information())[0].device_id
        dev_bob = (await sm_bob.get_own_device_information())[0].device_id
        check(
            "setup: both session managers are up (keys generated, PEP publishing done)",
            dev_alice != dev_bob,
            f"device ids {dev_alice} {dev_bob}",
        )

        # XEP-0384 "Announcing support": device lists and bundles are world-readable (the
        # omemo:2 version sets pubsub#access_model=open in publish-options), so carol, who
        # shares no presence with alice, reads them (open access model, XEP-0060 §4.5).
        old_ids, two_ids, old_bundles, two_bundle = await published(
            carol, ALICE, dev_alice, "carol reading alice's keys"
        )
        check(
            "pep: alice's legacy device list names her device (XEP-0384 0.3 Announcing support)",
            old_ids == {dev_alice},
            f"{old_ids}",
        )
        check(
            "pep: alice's omemo:2 device list names her device (XEP-0384 0.8 Announcing support)",
            two_ids == {dev_alice},
            f"{two_ids}",
        )
        check(
            "pep: alice's bundles are readable by a stranger under both namespaces "
            "(XEP-0384 Announcing support: open access)",
            old_bundles == 1 and two_bundle == [str(dev_alice)],
            f"legacy {old_bundles}, omemo:2 {two_bundle}",
        )
        # XEP-0060 §7.1.5: the publish-options the library sent became the nodes' settings.
        x = alice.plugin["xep_0060"]
        configs = {}
        for node in (OLD_DEVICES, f"{NS_OLD}.bundles:{dev_alice}", TWO_DEVICES, TWO_BUNDLES):
            iq = await within(x.get_node_config(slixmpp.JID(ALICE), node), f"config of {node}")
            v = iq["pubsub_owner"]["configure"]["form"].get_values()
            configs[node] = (v.get("pubsub#access_model"), v.get("pubsub#max_items"))
        check(
            "pep: the OMEMO nodes are open, device lists and legacy bundle with max_items=1 "
            "(publish-options, XEP-0060 §7.1.5)",
            all(a == "open" for a, _ in configs.values())
            and configs[OLD_DEVICES][1] == "1"
            and configs[TWO_DEVICES][1] == "1"
            and configs[f"{NS_OLD}.bundles:{dev_alice}"][1] == "1",
            f"{configs}",
        )

        # A mutual presence subscription: from then on each learns the other's device lists
        # from PEP notifications (the plugin's +notify interest; XEP-0163 §4.3.4 sends the last
        # item to the new subscriber), which is all encrypt_message relies on for a contact
        # with subscription 'both'.
        alice.send_presence(pto=BOB, ptype="subscribe")

        async def mutual():
            def sub(c, j):
                return c.client_roster[j]["subscription"] if j in c.client_roster else None

            return sub(alice, BOB) == "both" and sub(bob, ALICE) == "both"

        await until(mutual, "a mutual presence subscription")

        async def knows(sm, owner, device):
            return any(d.device_id == device for d in await sm.get_device_information(owner))

        await until(lambda: knows(sm_bob, ALICE, dev_alice), "bob learning alice's device")
        await until(lambda: knows(sm_alice, BOB, dev_bob), "alice learning bob's device")
        check("pep: each learned the other's device from a device list notification", True)

        # XEP-0384 "Sending a message" / "Receiving a message": alice → bob, with a key
        # exchange (alice fetches bob's bundle to build the session, "Building a session").
        plain = alice.make_message(mto=slixmpp.JID(BOB), mtype="chat")
        plain["body"] = TO_BOB
        kb = in_bob.mark()
        enc, errors = await within(
            alice.plugin["xep_0384"].encrypt_message(plain, slixmpp.JID(BOB)), "encrypting"
        )
        check("alice → bob: encrypted without errors", enc is not None and not errors, errors)
        enc.send()
        got = await in_bob.next("bob receiving the encrypted message", kb)
        check(
            "alice → bob: the wire carries only the fallback body, not the plaintext",
            TO_BOB not in str(got) and got["body"] == "This message is OMEMO encrypted.",
            f"{got}",
        )
        dec, sender = await within(
            bob.plugin["xep_0384"].decrypt_message(got), "bob decrypting"
        )
        check(
            "alice → bob: bob decrypts the plaintext, from alice's device (XEP-0384)",
            dec["body"] == TO_BOB and sender.bare_jid == ALICE and sender.device_id == dev_alice,
            f"body {dec['body']!r}, sender {sender.bare_jid}/{sender.device_id}",
        )

        # The answer, bob → alice, on the session alice's key exchange started. Empty
        # messages the library may send to complete a session are skipped.
        plain = bob.make_message(mto=slixmpp.JID(ALICE), mtype="chat")
        plain["body"] = TO_ALICE
        enc, errors = await within(
            bob.plugin["xep_0384"].encrypt_message(plain, slixmpp.JID(ALICE)), "encrypting"
        )
        check("bob → alice: encrypted without errors", enc is not None and not errors, errors)
        ka = in_alice.mark()
        enc.send()
        body = None
        while body is None:
            got = await in_alice.next("alice receiving the encrypted answer", ka)
            ka += 1
            dec, sender = await within(
                alice.plugin["xep_0384"].decrypt_message(got), "alice decrypting"
            )
            body = dec["body"] or None
        check(
            "bob → alice: alice decrypts the answer, from bob's device (XEP-0384)",
            body == TO_ALICE and sender.bare_jid == BOB and sender.device_id == dev_bob,
            f"body {body!r}, sender {sender.bare_jid}/{sender.device_id}",
        )

        # And once more alice → bob, now without a key exchange.
        plain = alice.make_message(mto=slixmpp.JID(BOB), mtype="chat")
        plain["body"] = TO_BOB_AGAIN
        kb = in_bob.mark()
        enc, errors = await within(
            alice.plugin["xep_0384"].encrypt_message(plain, slixmpp.JID(BOB)), "encrypting"
        )
        enc.send()
        body = None
        while body is None:
            got = await in_bob.next("bob receiving the second message", kb)
            kb += 1
            dec, sender = await within(
                bob.plugin["xep_0384"].decrypt_message(got), "bob decrypting again"
            )
            body = dec["body"] or None
        check(
            "alice → bob: a second message on the established session decrypts",
            body == TO_BOB_AGAIN and sender.device_id == dev_alice,
            f"body {body!r}",
        )
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
        check(f"timed out waiting for {e}", False, "no answer")
    except slixmpp.exceptions.IqError as e:
        check("IQ error", False, str(e.iq))
    except Exception as e:  # a failure of the flow itself still ends with the summary line
        logging.exception("flow")
        check("flow", False, repr(e))


started = time.monotonic()
asyncio.run(run())
print(f"({time.monotonic() - started:.1f} s)")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
