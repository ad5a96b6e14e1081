#!/usr/bin/env python3
"""Real XMPP peers for federation tests: Prosody and ejabberd from Debian, a local DNS server
(dnsmasq) and a test CA, all on loopback addresses. See README.md beside this file.

    peers.py start DIR MODE [--direct-tls] [--bidi]
                                MODE: external (SASL EXTERNAL) or dialback; --direct-tls
                                publishes _xmpps-server records (XEP-0368), preferred;
                                --bidi enables Prosody's mod_s2s_bidi (XEP-0288)
    peers.py stop DIR
    peers.py auth DIR           the s2s authentications the peers logged, one per line
    peers.py verify-auth DIR PEER:DOMAIN...
                                fails unless PEER (prosody or ejabberd) logged authenticating
                                DOMAIN both ways (its stream to DOMAIN and DOMAIN's to it), each
                                time with the mechanism of MODE: EXTERNAL or dialback

`start` writes DIR/peers.json and DIR/peers.toml (the same: addresses, ports, paths, users)
and prints the JSON. On failure it
stops whatever it started and shows the end of the logs. `stop` ends exactly the processes whose
PIDs `start` wrote to DIR/pids/, after checking that each is still the one started (its command
line names DIR). Only the Python standard library, openssl, dnsmasq, prosody and erl are used.
"""

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

# The three domains. Not under .test: libunbound (Prosody's resolver when lua-unbound is
# installed, as Debian's prosody recommends) answers NXDOMAIN for .test itself (a default
# local-zone, RFC 6761) without asking any server.
CANTO = "canto.example"
PROSODY = "prosody.example"
EJABBERD = "ejabberd.example"

# Loopback addresses: one per server, so that each has its own A record and its standard ports.
# Port 53: ejabberd looks up A/AAAA records with the C library's getaddrinfo, which reads only
# /etc/resolv.conf (no port there). Not 127.0.0.53, where systemd-resolved may listen.
DNS_ADDR = "127.0.0.10"
DNS_PORT = 53
ADDRS = {PROSODY: "127.0.0.11", EJABBERD: "127.0.0.12", CANTO: "127.0.0.13"}
C2S_PORT = 5222
S2S_PORT = 5269
DIRECT_TLS_S2S_PORT = 5270  # XEP-0368 direct TLS s2s listeners (_xmpps-server)
EJABBERD_HTTP_PORT = 5280  # ejabberd's mod_http_api, used to register users

USERS = {
    PROSODY: [("alice", "alicepw")],
    EJABBERD: [("bob", "bobpw")],
    CANTO: [("carol", "carolpw")],
}

MODES = ("external", "dialback")
# What each mode must show in the peers' logs.
EXPECTED_MECHANISM = {"external": "EXTERNAL", "dialback": "dialback"}

START_TIMEOUT = 60


class Failure(Exception):
    pass


def log(msg):
    print(f"peers: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Runs cmd; raises Failure with its output if it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Failure(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


# ---------------------------------------------------------------- certificates


def make_certs(d):
    """A test CA and, for each domain, a key and a certificate with a DNS-ID and an SRV-ID
    (id-on-dnsSRV, 1.3.6.1.5.5.7.8.7, `_xmpp-server.DOMAIN`).

    No XmppAddr (id-on-xmppAddr, 1.3.6.1.5.5.7.8.5): ejabberd 23.01 (p1_xmpp 1.6.1,
    xmpp_stream_pkix:get_domains_from_san/1) crashes on a peer certificate whose XmppAddr is a
    bare domain (its flatmap returns a binary, not a list: badarg), closing the stream on
    SASL EXTERNAL.

    Both serverAuth and clientAuth extended key usages: ejabberd 23.01 refuses SASL EXTERNAL
    ("unsupported certificate purpose") from a peer whose certificate lacks clientAuth, as
    public CAs' certificates increasingly do (Let's Encrypt's from 2026); Prosody 0.12 accepts
    them."""
    ca_dir, cert_dir = os.path.join(d, "ca"), os.path.join(d, "certs")
    os.makedirs(ca_dir)
    os.makedirs(cert_dir)
    ca_key, ca_crt = os.path.join(ca_dir, "ca.key"), os.path.join(ca_dir, "ca.crt")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "30", "-sha256",
         "-subj", "/O=Canto federation tests/CN=Canto federation test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for domain in (CANTO, PROSODY, EJABBERD):
        key, csr, crt = (os.path.join(cert_dir, f"{domain}.{x}") for x in ("key", "csr", "crt"))
        ext = os.path.join(cert_dir, f"{domain}.ext")
        with open(ext, "w") as f:
            f.write(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=DNS:{domain},"
                f"otherName:1.3.6.1.5.5.7.8.7;IA5:_xmpp-server.{domain}\n")
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={domain}"])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
             "-CAcreateserial", "-out", crt, "-days", "30", "-sha256", "-extfile", ext])
        os.unlink(csr)
        # ejabberd's certfiles take certificate and key in one file.
        with open(os.path.join(cert_dir, f"{domain}.pem"), "w") as out:
            for p in (crt, key):
                with open(p) as f:
                    out.write(f.read())
    # Every server runs as root here (Prosody with run_as_root): keys can be private. Canto's
    # is for the test that started us, maybe through sudo: it becomes that user's.
    for name in os.listdir(cert_dir):
        if name.endswith((".key", ".pem")):
            path = os.path.join(cert_dir, name)
            os.chmod(path, 0o600)
            if name.startswith(CANTO + ".") and os.environ.get("SUDO_UID"):
                os.chown(path, int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", -1)))
    return ca_crt


# ---------------------------------------------------------------- processes


def pid_dir(d):
    return os.path.join(d, "pids")


def with_private_resolv_conf(d, cmd):
    """cmd in a mount namespace of its own where /etc/resolv.conf is DIR/dns/resolv.conf (our
    DNS server): the C library's resolver then asks it, and the host's file is untouched.
    unshare and sh exec, so the PID stays the server's."""
    resolv = os.path.join(d, "dns", "resolv.conf")
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv] + cmd


def spawn(d, name, cmd, env=None, cwd=None):
    """Starts cmd in its own session, output to DIR/NAME.out, PID to DIR/pids/NAME."""
    out = open(os.path.join(d, f"{name}.out"), "w")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         env=env, cwd=cwd, start_new_session=True)
    with open(os.path.join(pid_dir(d), name), "w") as f:
        f.write(f"{p.pid}\n")
    return p


def ours(pid, d):
    """Whether PID is alive and still a process we started for DIR (its command line or
    environment names DIR: a PID reused by another process is never signalled)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        if d.encode() in cmdline:
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            return d.encode() in f.read()
    except OSError:
        return False


def stop(d):
    d = os.path.abspath(d)
    pdir = pid_dir(d)
    if not os.path.isdir(pdir):
        return
    pids = {}
    for name in sorted(os.listdir(pdir)):
        try:
            with open(os.path.join(pdir, name)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if ours(pid, d):
            pids[name] = pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            os.unlink(os.path.join(pdir, name))
    end = time.monotonic() + 10
    while pids and time.monotonic() < end:
        for name, pid in list(pids.items()):
            if not ours(pid, d) or is_zombie(pid):
                del pids[name]
                os.unlink(os.path.join(pdir, name))
        time.sleep(0.1)
    for name, pid in pids.items():
        log(f"{name} (pid {pid}) ignored SIGTERM; killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.unlink(os.path.join(pdir, name))


def is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_port(addr, port, what, proc, deadline):
    while True:
        if proc.poll() is not None:
            raise Failure(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection((addr, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"{what} does not answer on {addr}:{port}")
        time.sleep(0.1)


def check_free(addr, port):
    """Fails clearly when a listener (e.g. a system-wide prosody or ejabberd on 0.0.0.0 or ::)
    already holds a port we need."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
    except OSError as e:
        raise Failure(
            f"{addr}:{port} is taken ({e}): is a system-wide prosody or ejabberd running? "
            f"(`ss -ltnp 'sport = :{port}'`)") from None
    finally:
        s.close()


# ---------------------------------------------------------------- DNS


def start_dns(d, direct_tls):
    dns_dir = os.path.join(d, "dns")
    os.makedirs(dns_dir)
    cmd = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
           "--no-hosts", "--no-poll", "--bind-interfaces", f"--listen-address={DNS_ADDR}",
           f"--port={DNS_PORT}", "--local=/example/", "--no-negcache", "--cache-size=0",
           f"--pid-file={os.path.join(dns_dir, 'dnsmasq.pid')}",
           f"--log-facility={os.path.join(dns_dir, 'dnsmasq.log')}", "--log-queries"]
    # As root dnsmasq would switch to `nobody`, and then could not write its log in DIR.
    cmd.append("--user=root")
    for domain, addr in ADDRS.items():
        cmd.append(f"--host-record={domain},{addr}")
        if direct_tls:
            # XEP-0368: ejabberd merges _xmpps-server and _xmpp-server by priority and weight
            # (equal ones in a random order), Prosody tries _xmpps-server first whatever the
            # priorities; a better priority makes both choose direct TLS every time.
            cmd.append(f"--srv-host=_xmpps-server._tcp.{domain},{domain},"
                       f"{DIRECT_TLS_S2S_PORT},0,5")
            cmd.append(f"--srv-host=_xmpp-server._tcp.{domain},{domain},{S2S_PORT},10,5")
        else:
            # No _xmpps-server record: both peers then use STARTTLS on 5269 every time (with
            # one, ejabberd would pick either at random when the priorities are equal).
            cmd.append(f"--srv-host=_xmpp-server._tcp.{domain},{domain},{S2S_PORT},0,5")
        cmd.append(f"--srv-host=_xmpp-client._tcp.{domain},{domain},{C2S_PORT},0,5")
    with open(os.path.join(dns_dir, "resolv.conf"), "w") as f:
        f.write(f"nameserver {DNS_ADDR}\noptions timeout:2 attempts:2\n")
    p = spawn(d, "dnsmasq", cmd, cwd=dns_dir)
    deadline = time.monotonic() + 10
    while not dns_answers():
        if p.poll() is not None:
            raise Failure(f"dnsmasq exited with status {p.returncode}")
        if time.monotonic() > deadline:
            raise Failure(f"dnsmasq does not answer on {DNS_ADDR}:{DNS_PORT}")
        time.sleep(0.1)
    return p


def dns_answers():
    """Asks the DNS server for the A record of PROSODY; True if it answered with one."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in PROSODY.split(".")) + b"\0"
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(query, (DNS_ADDR, DNS_PORT))
        reply = s.recv(512)
        return reply[:2] == b"\x12\x34" and reply[7] >= 1  # ANCOUNT
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- Prosody

# Logs each s2s authentication in one fixed form, read by `auth`/`verify-auth`.
PROSODY_AUTHLOG = r"""
module:hook("s2s-authenticated", function(event)
	local session = event.session;
	local incoming = session.direction == "incoming";
	module:log("info", "FEDHARNESS s2s-authenticated direction=%s local=%s remote=%s mechanism=%s",
		incoming and "incoming" or "outgoing",
		incoming and session.to_host or session.from_host,
		event.host or "?", event.mechanism or "?");
end, 1000);
"""


def start_prosody(d, mode, ca, bidi):
    pd = os.path.join(d, "prosody")
    os.makedirs(os.path.join(pd, "data"))
    os.makedirs(os.path.join(pd, "plugins"))
    with open(os.path.join(pd, "plugins", "mod_fedharness_authlog.lua"), "w") as f:
        f.write(PROSODY_AUTHLOG)
    cert = os.path.join(d, "certs", f"{PROSODY}.crt")
    key = os.path.join(d, "certs", f"{PROSODY}.key")
    if mode == "external":
        # The test CA is trusted; certificates are required of peers.
        ssl = f'{{ certificate = "{cert}"; key = "{key}"; cafile = "{ca}"; }}'
        secure_auth = "true"
    else:
        # The system's CAs only: peers' certificates do not verify, so dialback is used.
        ssl = f'{{ certificate = "{cert}"; key = "{key}"; }}'
        secure_auth = "false"
    cfg = os.path.join(pd, "prosody.cfg.lua")
    with open(cfg, "w") as f:
        f.write(f"""-- Written by tests/federation/peers.py ({mode} mode)
run_as_root = true
pidfile = "{pd}/prosody.pid"
data_path = "{pd}/data"
plugin_paths = {{ "{pd}/plugins" }}
log = {{ debug = "{pd}/prosody.log"; }}
certificates = "{d}/certs"
interfaces = {{ "{ADDRS[PROSODY]}" }}
c2s_ports = {{ {C2S_PORT} }}
s2s_ports = {{ {S2S_PORT} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ {DIRECT_TLS_S2S_PORT} }}
-- Our DNS server only: libunbound (lua-unbound) told directly; without lua-unbound Prosody's
-- own resolver reads /etc/resolv.conf, which is ours in its mount namespace.
unbound = {{ resolvconf = false; hoststxt = false; forward = {{ "{DNS_ADDR}@{DNS_PORT}" }}; }}
modules_enabled = {{
	"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "posix";
	"fedharness_authlog";{' "s2s_bidi";' if bidi else ''}
}}
modules_disabled = {{ "offline"; "c2s_timeout"; }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {secure_auth}
s2s_timeout = 20
ssl = {ssl}

VirtualHost "{PROSODY}"
	ssl = {ssl}
""")
    for user, password in USERS[PROSODY]:
        run(["prosodyctl", "--config", cfg, "register", user, PROSODY, password])
    p = spawn(d, "prosody", with_private_resolv_conf(d, ["prosody", "--config", cfg, "-F"]),
              cwd=pd)
    return p


# ---------------------------------------------------------------- ejabberd


def ejabberd_libs():
    """The directory holding ejabberd-VERSION/ (Debian: /usr/lib/<triplet>), for ERL_LIBS."""
    for base in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"):
        if os.path.isdir(base) and any(n.startswith("ejabberd-") for n in os.listdir(base)):
            return base
    raise Failure("ejabberd's Erlang code was not found (apt-get install ejabberd)")


def start_ejabberd(d, mode, ca):
    ed = os.path.join(d, "ejabberd")
    os.makedirs(os.path.join(ed, "spool"))
    pem = os.path.join(d, "certs", f"{EJABBERD}.pem")
    if mode == "external":
        tls = f"s2s_use_starttls: required\nca_file: \"{ca}\"\n"
    else:
        # No ca_file: ejabberd uses the system's CAs, so peers' certificates do not verify.
        tls = "s2s_use_starttls: optional\n"
    with open(os.path.join(ed, "ejabberd.yml"), "w") as f:
        f.write(f"""# Written by tests/federation/peers.py ({mode} mode)
hosts:
  - "{EJABBERD}"
loglevel: debug
log_rotate_count: 0
log_rotate_size: infinity
certfiles:
  - "{pem}"
{tls}outgoing_s2s_families:
  - ipv4
s2s_dns_timeout: 5
s2s_dns_retries: 1
listen:
  -
    port: {C2S_PORT}
    ip: "{ADDRS[EJABBERD]}"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: {S2S_PORT}
    ip: "{ADDRS[EJABBERD]}"
    module: ejabberd_s2s_in
  -
    port: {DIRECT_TLS_S2S_PORT}
    ip: "{ADDRS[EJABBERD]}"
    module: ejabberd_s2s_in
    tls: true
  -
    port: {EJABBERD_HTTP_PORT}
    ip: "{ADDRS[EJABBERD]}"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
acl:
  loopback:
    ip:
      - 127.0.0.0/8
api_permissions:
  "loopback may register":
    from:
      - mod_http_api
    who:
      acl: loopback
    what:
      - register
      - registered_users
access_rules:
  c2s:
    allow: all
  s2s:
    allow: all
auth_method: internal
default_db: mnesia
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_s2s_dialback: {{}}
  mod_version: {{}}
  mod_http_api: {{}}
""")
    with open(os.path.join(ed, "inetrc"), "w") as f:
        # Our DNS server only, without /etc/resolv.conf or /etc/hosts (order matters:
        # resolv_conf resets the name servers).
        f.write(f'{{resolv_conf, ""}}.\n{{hosts_file, ""}}.\n'
                f'{{nameserver, {{{DNS_ADDR.replace(".", ",")}}}, {DNS_PORT}}}.\n'
                '{lookup, [dns]}.\n')
    env = dict(os.environ)
    env.update({
        "HOME": ed,
        "ERL_LIBS": ejabberd_libs(),
        "EJABBERD_CONFIG_PATH": os.path.join(ed, "ejabberd.yml"),
        "EJABBERD_LOG_PATH": os.path.join(ed, "ejabberd.log"),
        "ERL_INETRC": os.path.join(ed, "inetrc"),
        "ERL_CRASH_DUMP": os.path.join(ed, "erl_crash.dump"),
        "ERL_CRASH_DUMP_BYTES": "0",
    })
    # erl itself rather than ejabberdctl: ejabberdctl runs the node as the `ejabberd` user (from
    # root) or not at all (from anyone else), and as a distributed node (epmd). This node is not
    # distributed; users are registered through mod_http_api.
    cmd = ["erl", "-noinput", "-noshell", "+K", "true", "+P", "250000",
           "-mnesia", "dir", f'"{os.path.join(ed, "spool")}"', "-s", "ejabberd"]
    return spawn(d, "ejabberd", with_private_resolv_conf(d, cmd), env=env, cwd=ed)


def ejabberd_api(command, args):
    """POSTs to ejabberd's mod_http_api; returns the decoded JSON answer."""
    url = f"http://{ADDRS[EJABBERD]}:{EJABBERD_HTTP_PORT}/api/{command}"
    req = urllib.request.Request(url, data=json.dumps(args).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def ejabberd_register(deadline):
    for user, password in USERS[EJABBERD]:
        while True:
            try:
                ejabberd_api("register", {"user": user, "host": EJABBERD, "password": password})
                break
            except OSError as e:
                # The listener can answer before the host's modules are up; and an attempt
                # whose answer was lost may have registered the user (ejabberd 23.01 then
                # fails every later register of that user with an internal error).
                try:
                    if user in ejabberd_api("registered_users", {"host": EJABBERD}):
                        break
                except (OSError, TypeError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    detail = e.read().decode(errors="replace") if hasattr(e, "read") else ""
                    raise Failure(f"registering {user}@{EJABBERD}: {e} {detail}") from None
                time.sleep(0.3)


# ---------------------------------------------------------------- start


def info(d, mode, ca, direct_tls, bidi):
    def server(domain, extra):
        s = {
            "domain": domain,
            "addr": ADDRS[domain],
            "c2s_port": C2S_PORT,
            "s2s_port": S2S_PORT,
            "direct_tls_port": DIRECT_TLS_S2S_PORT,
            "cert": os.path.join(d, "certs", f"{domain}.crt"),
            "key": os.path.join(d, "certs", f"{domain}.key"),
            "users": [{"jid": f"{u}@{domain}", "user": u, "password": p}
                      for u, p in USERS[domain]],
        }
        s.update(extra)
        return s

    return {
        "mode": mode,
        "mechanism": EXPECTED_MECHANISM[mode],
        # Whether DNS has _xmpps-server records (XEP-0368), preferred to _xmpp-server.
        "direct_tls": direct_tls,
        # Whether Prosody has mod_s2s_bidi (XEP-0288; off by default in 0.12, as here).
        "bidi": bidi,
        "dir": d,
        "ca": ca,
        # To make more certificates (another name, another CA's...) for spoofing tests.
        "ca_key": os.path.join(d, "ca", "ca.key"),
        "dns": {"addr": DNS_ADDR, "port": DNS_PORT, "server": f"{DNS_ADDR}:{DNS_PORT}"},
        "servers": {
            "prosody": server(PROSODY, {"log": os.path.join(d, "prosody", "prosody.log")}),
            "ejabberd": server(EJABBERD, {"log": os.path.join(d, "ejabberd", "ejabberd.log")}),
            # Not started here: the test starts Canto with these addresses and files.
            "canto": server(CANTO, {}),
        },
    }


# Held by each test that uses the peers (tests/tests/e2e/federation_harness.rs), which says so
# with CANTO_PEERS_LOCK_HELD=1; a start or stop by hand first makes sure no test holds it.
LOCK = "/tmp/canto-federation-peers.lock"


def check_no_test_running():
    if os.environ.get("CANTO_PEERS_LOCK_HELD") == "1":
        return
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Failure(f"a test is using the peers ({LOCK} is locked): try again when it is "
                      "done") from None
    finally:
        os.close(fd)


# Names the directory of the peers started last and the process that asked for them, so that
# a run whose stop never came (its test process killed) does not leave the next start with
# its addresses taken.
LAST = os.path.join(os.environ.get("TMPDIR", "/tmp"), "canto-federation-peers.last")


def owner_pid():
    """The process that asked for the peers: our parent, or sudo's parent under sudo."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/comm") as f:
            if f.read().strip() == "sudo":
                with open(f"/proc/{ppid}/stat") as st:
                    return int(st.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return ppid


def stop_stale():
    """Stops the peers of the last start if the process that asked for them is gone; fails if
    it is still there (another test or shell is using them)."""
    try:
        with open(LAST) as f:
            last, _, owner = f.read().strip().partition("\n")
    except OSError:
        return
    if not (last and os.path.isdir(pid_dir(last)) and os.listdir(pid_dir(last))):
        return
    if not owner.isdigit() or (os.path.exists(f"/proc/{owner}") and not is_zombie(int(owner))):
        raise Failure(f"the peers in {last}, started for process {owner or '?'}, are still "
                      f"running: `peers.py stop {last}` (or wait for that process)")
    log(f"stopping the peers of an earlier run that were never stopped ({last})")
    stop(last)


def start(d, mode, direct_tls=False, bidi=False):
    if mode not in MODES:
        raise Failure(f"MODE must be one of {', '.join(MODES)}, not {mode!r}")
    if os.geteuid() != 0:
        raise Failure("must run as root (sudo): DNS on port 53, and the servers' own "
                      "/etc/resolv.conf in a mount namespace (unshare --mount)")
    for tool in ("openssl", "dnsmasq", "prosody", "prosodyctl", "erl", "unshare"):
        if not shutil.which(tool):
            raise Failure(f"{tool} is not installed (apt-get install openssl dnsmasq-base "
                          "prosody lua-unbound ejabberd)")
    d = os.path.abspath(d)
    check_no_test_running()
    if os.path.exists(os.path.join(d, "pids")) and os.listdir(os.path.join(d, "pids")):
        raise Failure(f"{d} has peers running: `peers.py stop {d}` first")
    stop_stale()
    os.makedirs(d, exist_ok=True)
    with open(LAST, "w") as f:
        f.write(f"{d}\n{owner_pid()}\n")
    for sub in ("ca", "certs", "dns", "prosody", "ejabberd", "pids"):
        shutil.rmtree(os.path.join(d, sub), ignore_errors=True)
    os.makedirs(pid_dir(d))
    for domain in (PROSODY, EJABBERD):
        for port in (C2S_PORT, S2S_PORT, DIRECT_TLS_S2S_PORT):
            check_free(ADDRS[domain], port)
    check_free(ADDRS[EJABBERD], EJABBERD_HTTP_PORT)
    t0 = time.monotonic()
    deadline = t0 + START_TIMEOUT
    try:
        ca = make_certs(d)
        start_dns(d, direct_tls)
        prosody = start_prosody(d, mode, ca, bidi)
        ejabberd = start_ejabberd(d, mode, ca)
        for port in (C2S_PORT, S2S_PORT, DIRECT_TLS_S2S_PORT):
            wait_port(ADDRS[PROSODY], port, "prosody", prosody, deadline)
        for port in (C2S_PORT, S2S_PORT, DIRECT_TLS_S2S_PORT, EJABBERD_HTTP_PORT):
            wait_port(ADDRS[EJABBERD], port, "ejabberd", ejabberd, deadline)
        ejabberd_register(deadline)
        # A server that could not bind its addresses (another set of peers starting at the same
        # time) may have exited while the other set answered in its place.
        for name, proc in (("prosody", prosody), ("ejabberd", ejabberd)):
            if proc.poll() is not None:
                raise Failure(f"{name} exited with status {proc.returncode}")
        if not ours(int(open(os.path.join(pid_dir(d), "dnsmasq")).read()), d):
            raise Failure("dnsmasq exited (is another DNS server on "
                          f"{DNS_ADDR}:{DNS_PORT}?)")
    except BaseException:
        show_logs(d)
        stop(d)
        raise
    data = info(d, mode, ca, direct_tls, bidi)
    data["start_seconds"] = round(time.monotonic() - t0, 2)
    with open(os.path.join(d, "peers.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(d, "peers.toml"), "w") as f:
        f.write(to_toml(data))
    print(json.dumps(data, indent=2))


def to_toml(data, prefix=""):
    """The few shapes peers.json has (str, int, float, tables, arrays of tables) as TOML, for
    readers without a JSON parser (the Rust tests have the toml crate)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(v)  # a JSON string is a TOML basic string
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + to_toml(v, name + ".")
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + to_toml(item, name + ".")
    return out


def show_logs(d):
    for p in ("dnsmasq.out", "dns/dnsmasq.log", "prosody.out", "prosody/prosody.log",
              "ejabberd.out", "ejabberd/ejabberd.log", "ejabberd/error.log"):
        path = os.path.join(d, p)
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                lines = f.readlines()[-30:]
            if lines:
                print(f"---- {path} (last lines)", file=sys.stderr)
                sys.stderr.writelines(lines)


# ---------------------------------------------------------------- authentication checks

# ejabberd 23.01 at info level, e.g.
#   (tls|<0.567.0>) Accepted inbound s2s EXTERNAL authentication prosody.example -> ejabberd.example (127.0.0.1)
#   (tls|<0.567.0>) Accepted inbound s2s dialback authentication prosody.example -> ejabberd.example (127.0.0.1)
#   (tls|<0.571.0>) Accepted outbound s2s EXTERNAL authentication ejabberd.example -> prosody.example (127.0.0.11)
#   (tls|<0.571.0>) Accepted outbound s2s dialback authentication ejabberd.example -> prosody.example (127.0.0.11)
EJABBERD_AUTH = re.compile(
    r"Accepted (inbound|outbound) s2s (\S+) authentication (\S+) -> (\S+)")
PROSODY_AUTH = re.compile(
    r"FEDHARNESS s2s-authenticated direction=(\S+) local=(\S+) remote=(\S+) mechanism=(\S+)")


def authentications(d):
    """[(server, direction, local, remote, mechanism)] from the peers' logs."""
    out = []
    p = os.path.join(d, "prosody", "prosody.log")
    if os.path.exists(p):
        with open(p, errors="replace") as f:
            for m in PROSODY_AUTH.finditer(f.read()):
                out.append(("prosody",) + m.groups())
    p = os.path.join(d, "ejabberd", "ejabberd.log")
    if os.path.exists(p):
        with open(p, errors="replace") as f:
            for m in EJABBERD_AUTH.finditer(f.read()):
                direction, mech, src, dst = m.groups()
                if direction == "inbound":
                    out.append(("ejabberd", "incoming", dst, src, mech))
                else:
                    out.append(("ejabberd", "outgoing", src, dst, mech))
    return out


def verify_auth(d, pairs):
    """pairs: ["prosody:canto.example", ...]: that peer must have authenticated that remote
    domain in both directions, each time with the mechanism of the mode."""
    with open(os.path.join(d, "peers.json")) as f:
        data = json.load(f)
    want = data["mechanism"]
    auths = authentications(d)
    problems = []
    for pair in pairs:
        server, _, remote = pair.partition(":")
        if server not in ("prosody", "ejabberd") or not remote:
            raise Failure(f"{pair!r}: expected PEER:DOMAIN with PEER prosody or ejabberd")
        local = data["servers"][server]["domain"]
        if server == "prosody" and data.get("bidi"):
            # One bidirectional stream may carry both directions, authenticated once.
            seen = [a for a in auths if a[0] == server and a[2] == local and a[3] == remote]
            bad = [f"{a[1]} {a[4]}" for a in seen if a[4].lower() != want.lower()]
            if not seen:
                problems.append(f"{server} logged no s2s authentication with {remote}")
            elif bad:
                problems.append(f"{server} with {remote} used {', '.join(bad)}; the "
                                f"{data['mode']} mode wants only {want}")
            else:
                dirs = ", ".join(sorted({a[1] for a in seen}))
                print(f"ok   {server}: {local} / {remote} authenticated with {want} ({dirs}; "
                      "bidi allowed)")
            continue
        for direction in ("incoming", "outgoing"):
            seen = [a[4] for a in auths
                    if a[0] == server and a[1] == direction and a[2] == local
                    and a[3] == remote]
            arrow = f"{local} {'<-' if direction == 'incoming' else '->'} {remote}"
            if not seen:
                problems.append(f"{server} logged no {direction} s2s authentication {arrow}")
            elif any(m.lower() != want.lower() for m in seen):
                problems.append(f"{server}: {direction} {arrow} used {', '.join(seen)}; "
                                f"the {data['mode']} mode wants only {want}")
            else:
                print(f"ok   {server}: {direction} {arrow} authenticated with {want}")
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        print("all s2s authentications the peers logged:")
        for a in auths:
            print("  " + " ".join(a))
        raise Failure("the s2s authentications are not the ones the mode asks for")


def main(argv):
    if len(argv) >= 3 and argv[1] == "start":
        rest = argv[3:]
        flags = {a for a in rest if a.startswith("--")}
        rest = [a for a in rest if not a.startswith("--")]
        if len(rest) > 1 or flags - {"--direct-tls", "--bidi"}:
            print(__doc__, file=sys.stderr)
            return 2
        start(argv[2], rest[0] if rest else "external", "--direct-tls" in flags,
              "--bidi" in flags)
    elif len(argv) == 3 and argv[1] == "stop":
        stop(os.path.abspath(argv[2]))
    elif len(argv) == 3 and argv[1] == "auth":
        for a in authentications(os.path.abspath(argv[2])):
            print(" ".join(a))
    elif len(argv) >= 4 and argv[1] == "verify-auth":
        verify_auth(os.path.abspath(argv[2]), argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Failure as e:
        print(f"peers: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
