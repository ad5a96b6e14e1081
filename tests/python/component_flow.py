"""An external component (XEP-0114) written with slixmpp's ComponentXMPP, a library nobody on
this project wrote, talking to a local user who is a slixmpp ClientXMPP in the same script.
Run by tests/tests/e2e/slixmpp.rs against an in-process Canto with a component listener and
`[components."gw.localhost"] secret = "gw-secret"`:

    python3 component_flow.py C2S_PORT CERT_PEM COMPONENT_PORT

Account alice must exist (password alicepw). Prints one line per check and finally
"N passed, M failed"; exits non-zero if any check failed or the flow took longer than OVERALL
seconds.

What is checked: the handshake (XEP-0114 §3, slixmpp's session_start on the component), a
message from the user to a JID at the component and the component's answer from another JID
at its domain, a message the component sends first, disco#info and jabber:iq:version on the
component's domain answered by the component's own plugins, disco#items on the host listing
the component, and, once the component is gone, the server's answer in its place."""

import asyncio
import logging
import os
import ssl
import sys
import time

import slixmpp
from slixmpp.exceptions import IqError

PORT = int(sys.argv[1])
CERT = sys.argv[2]
COMPONENT_PORT = int(sys.argv[3])
STEP = 15  # seconds for any one step
OVERALL = 60
DOMAIN = "localhost"
GATEWAY = "gw.localhost"
SECRET = "gw-secret"

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


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise RuntimeError(f"timed out: {what}")


def make_component(loop):
    comp = slixmpp.ComponentXMPP(GATEWAY, SECRET, "127.0.0.1", COMPONENT_PORT)
    comp.register_plugin("xep_0030")
    comp.register_plugin("xep_0092")
    comp["xep_0030"].add_identity(category="gateway", itype="test", name="Canto test gateway")
    comp["xep_0092"].software_name = "component_flow.py"
    comp["xep_0092"].version = "1"
    comp.started = loop.create_future()
    comp.inbox = asyncio.Queue()
    comp.add_event_handler(
        "session_start", lambda _: comp.started.done() or comp.started.set_result(True)
    )

    def on_message(msg):
        comp.inbox.put_nowait(msg)
        # Echo from the JID written to (any JID at the component's domain may send).
        if msg["body"] and msg["type"] != "error":
            comp.send_message(
                mto=msg["from"],
                mfrom=msg["to"],
                mbody=f"echo: {msg['body']}",
                mtype="chat",
            )

    comp.add_event_handler("message", on_message)
    return comp


def make_client(loop):
    c = slixmpp.ClientXMPP(f"alice@{DOMAIN}/py", "alicepw")
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0092")
    c.started = loop.create_future()
    c.inbox = asyncio.Queue()
    c.add_event_handler(
        "session_start", lambda _: c.started.done() or c.started.set_result(True)
    )
    c.add_event_handler("message", lambda m: c.inbox.put_nowait(m))
    return c


async def flow():
    loop = asyncio.get_event_loop()
    comp = make_component(loop)
    alice = make_client(loop)
    comp.connect()
    try:
        await within(comp.started, "component handshake")
        check("component handshake accepted", True)

        alice.connect("127.0.0.1", PORT)
        await within(alice.started, "alice's session")
        alice.send_presence()

        # User -> component, and the component's answer.
        alice.send_message(mto=f"bot@{GATEWAY}", mbody="hello gateway", mtype="chat")
        got = await within(comp.inbox.get(), "the message at the component")
        check(
            "component receives the user's message",
            str(got["from"]) == f"alice@{DOMAIN}/py"
            and str(got["to"]) == f"bot@{GATEWAY}"
            and got["body"] == "hello gateway",
            str(got),
        )
        echo = await within(alice.inbox.get(), "the component's answer")
        check(
            "user receives the component's answer",
            str(echo["from"]) == f"bot@{GATEWAY}" and echo["body"] == "echo: hello gateway",
            str(echo),
        )

        # Component -> user, unprompted, from another JID at its domain.
        comp.send_message(
            mto=f"alice@{DOMAIN}/py",
            mfrom=f"news@{GATEWAY}/feed",
            mbody="breaking news",
            mtype="headline",
        )
        news = await within(alice.inbox.get(), "the component's own message")
        check(
            "user receives a message the component sent first",
            str(news["from"]) == f"news@{GATEWAY}/feed" and news["body"] == "breaking news",
            str(news),
        )

        # The user's IQs to the component's domain, answered by the component's plugins.
        info = await within(
            alice["xep_0030"].get_info(jid=GATEWAY, timeout=STEP), "disco#info"
        )
        identities = info["disco_info"]["identities"]
        check(
            "disco#info answered by the component",
            ("gateway", "test", None, "Canto test gateway") in identities,
            str(identities),
        )
        version = await within(
            alice["xep_0092"].get_version(GATEWAY, timeout=STEP), "version"
        )
        check(
            "jabber:iq:version answered by the component",
            version["software_version"]["name"] == "component_flow.py",
            str(version),
        )

        # The host lists the component (its parent is the first host).
        items = await within(
            alice["xep_0030"].get_items(jid=DOMAIN, timeout=STEP), "disco#items"
        )
        jids = [i[0] for i in items["disco_items"]["items"]]
        check("disco#items on the host lists the component", GATEWAY in jids, str(jids))

        # The component goes away: the server answers in its place (as Prosody does).
        await within(comp.disconnect(wait=1), "component disconnect")
        err = None
        for _ in range(50):
            try:
                await alice["xep_0092"].get_version(GATEWAY, timeout=STEP)
            except IqError as e:
                err = e.iq["error"]
                break
            await asyncio.sleep(0.1)
        check(
            "a request to a disconnected component gets remote-server-timeout",
            err is not None
            and err["condition"] == "remote-server-timeout"
            and err["type"] == "wait",
            str(err),
        )
    finally:
        alice.disconnect()
        comp.disconnect()
        await asyncio.sleep(0.3)


async def run():
    try:
        await asyncio.wait_for(flow(), OVERALL)
    except asyncio.TimeoutError:
        check("overall", False, f"flow took longer than {OVERALL} s")
    except Exception as e:  # a failure of the flow itself still ends with the summary line
        check("flow", False, repr(e))


if os.environ.get("COMPONENT_FLOW_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
started = time.monotonic()
asyncio.run(run())
print(f"({time.monotonic() - started:.1f} s)")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
