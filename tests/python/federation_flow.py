"""Federation between two accounts on two servers, driven by slixmpp (a client library nobody on
this project wrote): a chat message, an IQ to the other's full JID (XEP-0092, answered by the
other client), an IQ to the other's server (XEP-0199 ping) and a presence subscription, each
way; then both rosters must say subscription="both" and each must see the other's presence.

    python3 federation_flow.py [--ca CA_PEM | --insecure] [--timeout S] \\
        JID_A PASSWORD_A HOST_A:PORT_A  JID_B PASSWORD_B HOST_B:PORT_B

HOST:PORT is each account's c2s listener (STARTTLS); the server certificate is checked against
CA_PEM for the JID's domain. Prints one line per check and "N passed, M failed" last; exits 0
only when every check passed. Every wait is bounded (--timeout per step; the whole run by
--total); nothing hangs. Used by tests/federation/README.md and tests/tests/e2e/federation_peers.rs.
"""

import argparse
import asyncio
import logging
import os
import ssl
import sys
import time

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


class Side:
    """One account: its client and everything it has received."""

    def __init__(self, name, jid, password, addr, args):
        self.name = name
        host, _, port = addr.rpartition(":")
        self.addr = (host, int(port))
        # A fixed resource, so the other side knows the full JID before any presence.
        bare = slixmpp.JID(jid).bare
        self.c = slixmpp.ClientXMPP(f"{bare}/fedflow-{name.lower()}", password)
        if args.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=args.ca)
        self.c.ssl_context = ctx
        self.c.enable_plaintext = False
        self.c.enable_direct_tls = False
        for p in ("xep_0030", "xep_0092", "xep_0199"):
            self.c.register_plugin(p)
        self.c.plugin["xep_0092"].software_name = f"fedflow-{name.lower()}"
        self.c.plugin["xep_0092"].version = "1"
        # Subscriptions are answered by the flow itself, as a user clicking "accept" would.
        self.c.auto_authorize = None
        self.c.auto_subscribe = False
        self.received = []  # (kind, stanza)
        self.changed = asyncio.Event()
        self.session = asyncio.get_running_loop().create_future()
        self.c.add_event_handler("session_start", self._started)
        self.c.add_event_handler("failed_auth", self._failed_auth)
        self.c.add_event_handler("connection_failed", self._connection_failed)
        for kind in ("message", "message_error", "presence_subscribe", "presence_subscribed",
                     "presence_available", "presence_unsubscribe", "presence_unsubscribed",
                     "presence_error"):
            self.c.add_event_handler(kind, self._recorder(kind))

    def _started(self, _):
        if not self.session.done():
            self.session.set_result(True)

    def _failed_auth(self, _):
        if not self.session.done():
            self.session.set_exception(RuntimeError("authentication failed"))

    def _connection_failed(self, err):
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"connection failed: {err}"))

    def _recorder(self, kind):
        def record(stanza):
            self.received.append((kind, stanza))
            self.changed.set()
        return record

    @property
    def full(self):
        return self.c.boundjid.full

    @property
    def bare(self):
        return self.c.boundjid.bare

    async def wait_for(self, kind, pred, timeout, what, error_from=None):
        """Waits until a stanza of `kind` received so far satisfies `pred`; returns it. With
        `error_from` (a bare JID), an error message or presence from it (a bounce: e.g.
        remote-server-not-found) fails the wait at once."""
        end = time.monotonic() + timeout
        while True:
            for k, st in self.received:
                if k == kind and pred(st):
                    return st
                if error_from and k in ("message_error", "presence_error") and \
                        st["from"].bare == error_from:
                    err = st["error"]
                    raise Failed(f"bounced ({what}): {k} from {st['from']}: "
                                 f"{err['type']}/{err['condition']} {err['text']!r}")
            left = end - time.monotonic()
            if left <= 0:
                seen = [f"{k} from {st['from']}" for k, st in self.received[-8:]]
                raise Failed(f"timed out after {timeout:g} s waiting for {what} "
                             f"(last received: {seen or 'nothing'})")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


class Failed(Exception):
    pass


class Flow:
    def __init__(self, args):
        self.args = args
        self.passed = 0
        self.failed = 0

    async def check(self, name, coro):
        t0 = time.monotonic()
        try:
            detail = await coro
        except Failed as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return False
        except (IqError, IqTimeout) as e:
            self.failed += 1
            print(f"FAIL {name}: {describe_iq_error(e)}", flush=True)
            return False
        self.passed += 1
        extra = f" ({detail})" if detail else ""
        print(f"ok   {name} [{time.monotonic() - t0:.2f} s]{extra}", flush=True)
        return True


def describe_iq_error(e):
    if isinstance(e, IqTimeout):
        return "no answer to the IQ in time"
    iq = e.iq
    return (f"IQ error from {iq['from']}: {iq['error']['type']}/"
            f"{iq['error']['condition']} {iq['error']['text']!r}")


async def first(wanted, bounce):
    """The result of `wanted`, unless `bounce` (a wait that can only fail) fails first."""
    tasks = [asyncio.ensure_future(wanted), asyncio.ensure_future(bounce)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return (tasks[0] if tasks[0] in done else tasks[1]).result()
    finally:
        for task in tasks:
            task.cancel()


async def message(a, b, t, nonce):
    body = f"fedflow message {a.name}->{b.name} {nonce}"
    a.c.send_message(mto=b.bare, mbody=body, mtype="chat")
    st = await first(
        b.wait_for("message", lambda m: m["body"] == body, t, f"the message from {a.full}"),
        a.wait_for("message_error", lambda m: False, t + 1, f"the message to reach {b.bare}",
                   error_from=b.bare))
    if st["from"] != a.c.boundjid:
        raise Failed(f"the message arrived from {st['from']}, expected {a.full}")
    return f"from {st['from']}"


async def version_iq(a, b, t):
    r = await a.c.plugin["xep_0092"].get_version(slixmpp.JID(b.full), timeout=t)
    if r["from"] != b.c.boundjid:
        raise Failed(f"the result came from {r['from']}, expected {b.full}")
    name = r["software_version"]["name"]
    if name != f"fedflow-{b.name.lower()}":
        raise Failed(f"software name {name!r}, expected 'fedflow-{b.name.lower()}'")
    return f"{b.full} says {name}"


async def server_ping(a, b, t):
    domain = b.c.boundjid.domain
    rtt = await a.c.plugin["xep_0199"].ping(slixmpp.JID(domain), timeout=t)
    return f"{domain} answered in {rtt * 1000:.0f} ms"


async def subscription(a, b, t):
    """RFC 6121 §3.1: a asks, b approves, a is told and gets b's current presence."""
    a.c.send_presence(pto=b.bare, ptype="subscribe")
    await first(
        b.wait_for("presence_subscribe", lambda p: p["from"].bare == a.bare, t,
                   f"{a.bare}'s subscription request"),
        a.wait_for("presence_error", lambda p: False, t + 1, f"the request to reach {b.bare}",
                   error_from=b.bare))
    b.c.send_presence(pto=a.bare, ptype="subscribed")
    await a.wait_for("presence_subscribed", lambda p: p["from"].bare == b.bare, t,
                     f"{b.bare}'s approval")
    # §3.1.5: the contact's server sends the contact's available presence to the new
    # subscriber.
    p = await a.wait_for("presence_available", lambda p: p["from"] == b.c.boundjid, t,
                         f"{b.full}'s presence after the approval")
    return f"{a.bare} sees {p['from']} available"


async def rosters(a, b, t):
    for x, y in ((a, b), (b, a)):
        # The whole roster from the server (no version: RFC 6121 §2.6 would let the server
        # answer with nothing), not slixmpp's copy from pushes.
        iq = x.c.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        r = await iq.send(timeout=t)
        items = {str(j): v for j, v in r["roster"]["items"].items()}
        item = items.get(y.bare)
        if item is None:
            raise Failed(f"{x.bare}'s roster has no item for {y.bare}")
        if item["subscription"] != "both":
            raise Failed(f"{x.bare}'s roster item for {y.bare} has subscription="
                         f"{item['subscription']!r}, expected 'both'")
    return "subscription=both on both sides"


async def presence_update(a, b, t, nonce):
    status = f"fedflow status of {a.name} {nonce}"
    a.c.send_presence(pstatus=status)
    await b.wait_for("presence_available",
                     lambda p: p["from"] == a.c.boundjid and p["status"] == status, t,
                     f"{a.full}'s presence with status {status!r}")
    return f"{b.bare} sees {a.full}'s new status"


async def forget_each_other(a, b, t):
    """Earlier runs against the same accounts may have left roster items: remove them, so
    that the subscription is made from scratch."""
    removed = False
    for x, y in ((a, b), (b, a)):
        if x.c.client_roster.has_jid(y.bare):
            print(f"note: {x.bare} already had {y.bare} in its roster; removing it", flush=True)
            await x.c.del_roster_item(y.bare)
            removed = True
    if removed:
        # The unsubscriptions cross the servers; let them land before starting afresh.
        await asyncio.sleep(2)
        a.received.clear()
        b.received.clear()


async def run(args):
    a = Side("A", args.jid_a, args.password_a, args.addr_a, args)
    b = Side("B", args.jid_b, args.password_b, args.addr_b, args)
    flow = Flow(args)
    t = args.timeout
    nonce = os.urandom(4).hex()

    async def connect(s):
        s.c.connect(*s.addr)
        try:
            await asyncio.wait_for(asyncio.shield(s.session), t)
        except asyncio.TimeoutError:
            raise Failed(f"no session within {t:g} s (c2s {s.addr[0]}:{s.addr[1]})") from None
        except RuntimeError as e:
            raise Failed(str(e)) from None
        await s.c.get_roster(timeout=t)
        return f"{s.full} via {s.addr[0]}:{s.addr[1]}"

    ok_a = await flow.check(f"session {args.jid_a}", connect(a))
    ok_b = await flow.check(f"session {args.jid_b}", connect(b))
    if not (ok_a and ok_b):
        return flow
    try:
        await forget_each_other(a, b, t)
    except (IqError, IqTimeout) as e:
        print(f"note: cleaning old roster items: {describe_iq_error(e)}")
    for s in (a, b):
        s.c.send_presence(pstatus=f"fedflow {s.name}")
    # Each server echoes a resource's initial presence to it (RFC 6121 §4.2.2): once seen,
    # the resource is available and messages to the bare JID reach it.
    for s in (a, b):
        try:
            await s.wait_for("presence_available", lambda p, s=s: p["from"] == s.c.boundjid,
                             t, f"{s.full}'s own initial presence")
        except Failed as e:
            print(f"note: {e}", flush=True)

    A, B = a.bare, b.bare
    crossed = [
        await flow.check(f"message {A} -> {B}", message(a, b, t, nonce)),
        await flow.check(f"message {B} -> {A}", message(b, a, t, nonce)),
        await flow.check(f"iq version {A} -> {b.full}", version_iq(a, b, t)),
        await flow.check(f"iq version {B} -> {a.full}", version_iq(b, a, t)),
        await flow.check(f"iq ping {A} -> {b.c.boundjid.domain}", server_ping(a, b, t)),
        await flow.check(f"iq ping {B} -> {a.c.boundjid.domain}", server_ping(b, a, t)),
    ]
    rest = [
        (f"subscription {A} -> {B}", lambda: subscription(a, b, t)),
        (f"subscription {B} -> {A}", lambda: subscription(b, a, t)),
        ("rosters", lambda: rosters(a, b, t)),
        (f"presence {A} -> {B}", lambda: presence_update(a, b, t, nonce)),
        (f"presence {B} -> {A}", lambda: presence_update(b, a, t, nonce)),
    ]
    for name, make in rest:
        if any(crossed):
            await flow.check(name, make())
        else:
            # Nothing crossed either way: each of these would only wait out its timeout.
            flow.failed += 1
            print(f"FAIL {name}: not tried, no stanza crossed between the servers", flush=True)
    for s in (a, b):
        s.c.disconnect()
    return flow


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ca", help="CA certificate (PEM) that the c2s certificates chain to")
    g.add_argument("--insecure", action="store_true", help="do not verify c2s certificates")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per step (20)")
    p.add_argument("--total", type=float, default=240.0, help="seconds for the whole run (240)")
    p.add_argument("--debug", action="store_true", help="slixmpp's debug log on stderr")
    p.add_argument("jid_a")
    p.add_argument("password_a")
    p.add_argument("addr_a", metavar="host_a:port_a")
    p.add_argument("jid_b")
    p.add_argument("password_b")
    p.add_argument("addr_b", metavar="host_b:port_b")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def bounded():
        try:
            return await asyncio.wait_for(run(args), args.total)
        except asyncio.TimeoutError:
            return None

    flow = asyncio.run(bounded())
    if flow is None:
        print(f"FAIL the whole flow took longer than {args.total:g} s")
        print("0 passed, 1 failed")
        sys.exit(1)
    print(f"{flow.passed} passed, {flow.failed} failed")
    sys.exit(0 if flow.failed == 0 and flow.passed > 0 else 1)


if __name__ == "__main__":
    main()
