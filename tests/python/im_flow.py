"""A subscription handshake, presence and a message between two accounts, driven by slixmpp
(a client library nobody on this project wrote). Run by tests/tests/e2e/slixmpp.rs against an
in-process Canto: python3 im_flow.py PORT CERT_PEM.

Exits 0 and prints "1 passed, 0 failed" when every step happened; otherwise exits 1 naming
the step that did not."""

import asyncio
import ssl
import sys

import slixmpp

PORT = int(sys.argv[1])
CERT = sys.argv[2]
TIMEOUT = 15


def make(jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    ctx = ssl.create_default_context(cafile=CERT)
    c.ssl_context = ctx
    c.enable_plaintext = False
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0199")
    # Answer subscription requests ourselves, as a user clicking "accept" would.
    c.auto_authorize = None
    c.auto_subscribe = False
    return c


async def wait(fut, what):
    try:
        return await asyncio.wait_for(fut, TIMEOUT)
    except asyncio.TimeoutError:
        print(f"FAILED: timed out waiting for {what}")
        print("0 passed, 1 failed")
        sys.exit(1)


async def main():
    loop = asyncio.get_event_loop()
    alice = make("alice@localhost/py", "alicepw")
    bob = make("bob@localhost/py", "bobpw")
    sessions = {n: loop.create_future() for n in ("alice", "bob")}
    got_request = loop.create_future()
    alice_sees_bob = loop.create_future()
    bob_got_message = loop.create_future()
    alice_subscribed = loop.create_future()

    alice.add_event_handler("session_start", lambda _: sessions["alice"].set_result(True))
    bob.add_event_handler("session_start", lambda _: sessions["bob"].set_result(True))

    def on_bob_subscribe(pres):
        if pres["from"].bare == "alice@localhost" and not got_request.done():
            got_request.set_result(True)

    bob.add_event_handler("presence_subscribe", on_bob_subscribe)

    def on_alice_subscribed(pres):
        if pres["from"].bare == "bob@localhost" and not alice_subscribed.done():
            alice_subscribed.set_result(True)

    alice.add_event_handler("presence_subscribed", on_alice_subscribed)

    def on_alice_available(pres):
        if pres["from"].bare == "bob@localhost" and not alice_sees_bob.done():
            alice_sees_bob.set_result(str(pres["status"]))

    alice.add_event_handler("presence_available", on_alice_available)

    def on_bob_message(msg):
        if msg["from"].bare == "alice@localhost" and not bob_got_message.done():
            bob_got_message.set_result(msg["body"])

    bob.add_event_handler("message", on_bob_message)

    alice.connect("127.0.0.1", PORT)
    bob.connect("127.0.0.1", PORT)
    await wait(sessions["alice"], "alice's session")
    await wait(sessions["bob"], "bob's session")
    await alice.get_roster()
    await bob.get_roster()
    bob.send_presence(pstatus="building")
    alice.send_presence()

    # RFC 6121 §3.1: alice asks, bob approves.
    alice.send_presence(pto="bob@localhost", ptype="subscribe")
    await wait(got_request, "bob receiving alice's subscription request")
    bob.send_presence(pto="alice@localhost", ptype="subscribed")
    await wait(alice_subscribed, "alice receiving subscribed")
    # §3.1.5: alice now gets bob's current presence.
    status = await wait(alice_sees_bob, "alice seeing bob's presence")
    if status != "building":
        print(f"FAILED: bob's status was {status!r}")
        print("0 passed, 1 failed")
        sys.exit(1)

    # The roster as slixmpp keeps it from the server's result and pushes (RFC 6121 §2.1.6,
    # versioned per §2.6).
    await alice.get_roster()
    sub = alice.client_roster["bob@localhost"]["subscription"]
    if sub != "to":
        print(f"FAILED: alice's roster item for bob has subscription {sub!r}, expected 'to'")
        print("0 passed, 1 failed")
        sys.exit(1)

    alice.send_message(mto="bob@localhost", mbody="hello from slixmpp", mtype="chat")
    body = await wait(bob_got_message, "bob receiving the message")
    if body != "hello from slixmpp":
        print(f"FAILED: body {body!r}")
        print("0 passed, 1 failed")
        sys.exit(1)
    alice.disconnect()
    bob.disconnect()
    print("1 passed, 0 failed")


asyncio.run(main())
