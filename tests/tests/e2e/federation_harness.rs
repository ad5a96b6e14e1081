//! Real federation peers for the s2s tests (issue 14), and a check of the harness itself:
//! Prosody and ejabberd from Debian, each with its own domain and loopback address, a DNS
//! server (dnsmasq) answering SRV and A records for them and for Canto, and certificates from a
//! test CA, all started by tests/federation/peers.py (tests/federation/README.md). The flow
//! between two accounts is tests/python/federation_flow.py (slixmpp): a message, an IQ to the
//! other's full JID, an IQ to the other's server and a presence subscription, each way.
//!
//! The tests here federate Prosody with ejabberd, in both modes (SASL EXTERNAL with the CA
//! trusted; dialback without), and check in the peers' logs that the mode's mechanism was the
//! one used: a harness that passes here is one that can judge Canto (federation_peers.rs).
//!
//! The peers take fixed loopback addresses and ports, and need root (DNS on port 53, a mount
//! namespace per server for its own /etc/resolv.conf): a file lock makes the tests that use
//! them run one at a time, also across nextest's processes, and `sudo -n` is used when not
//! root. `.ci/run` installs prosody, ejabberd, dnsmasq-base and lua-unbound.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// tests/federation/peers.py
pub const PEERS_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/federation/peers.py");
/// tests/python/federation_flow.py
pub const FLOW_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/federation_flow.py");

/// How peers authenticate each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The test CA is trusted everywhere and certificates are required: SASL EXTERNAL.
    External,
    /// Certificates do not verify (the CA is not trusted) and are not required: dialback.
    Dialback,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::External => "external",
            Mode::Dialback => "dialback",
        }
    }
}

/// Variants of the peers' setup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// DNS publishes `_xmpps-server` SRV records (XEP-0368, port 5270, preferred), so both
    /// peers connect with direct TLS.
    pub direct_tls: bool,
    /// Prosody loads mod_s2s_bidi (XEP-0288: it offers bidi and asks for it when offered).
    pub bidi: bool,
}

/// An account on one of the servers.
#[derive(Clone, Debug)]
pub struct Account {
    pub jid: String,
    pub user: String,
    pub password: String,
    /// The c2s listener, `IP:PORT`.
    pub c2s: String,
}

/// One server's domain, addresses and files (Canto's too: what it should listen on and use).
#[derive(Clone, Debug)]
pub struct PeerServer {
    pub domain: String,
    pub addr: IpAddr,
    pub c2s_port: u16,
    pub s2s_port: u16,
    /// The XEP-0368 direct TLS s2s port (used by peers when started with `--direct-tls`).
    pub direct_tls_port: u16,
    /// The PEM certificate and key for the domain, signed by the test CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub users: Vec<Account>,
}

impl PeerServer {
    pub fn c2s(&self) -> String {
        format!("{}:{}", self.addr, self.c2s_port)
    }
    pub fn s2s(&self) -> String {
        format!("{}:{}", self.addr, self.s2s_port)
    }
    pub fn direct_tls(&self) -> String {
        format!("{}:{}", self.addr, self.direct_tls_port)
    }
}

/// Running peers; stopped (exactly the processes started) when dropped. The directory, with
/// the logs, is removed then unless the test is failing, when its path is printed.
pub struct Peers {
    pub mode: Mode,
    pub dir: PathBuf,
    /// The test CA (PEM).
    pub ca: PathBuf,
    /// The DNS server, `IP:PORT`, for `[dns] servers`.
    pub dns: String,
    pub prosody: PeerServer,
    pub ejabberd: PeerServer,
    /// Not started: the domain, addresses, certificate and user for Canto.
    pub canto: PeerServer,
    _lock: std::fs::File,
}

/// Panics, saying what to install, when a tool the peers or the flow need is missing.
pub fn require_federation_tools() {
    let missing: Vec<&str> = ["prosody", "erl", "dnsmasq", "openssl", "unshare", "python3"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t} || test -x /usr/sbin/{t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: apt-get install prosody lua-unbound ejabberd dnsmasq-base openssl \
         (.ci/run does)"
    );
    let slixmpp = Command::new("python3")
        .args(["-c", "import slixmpp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(slixmpp, "slixmpp is not installed (pip install slixmpp)");
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

/// The lock that runs the tests using the peers one at a time (peers.py checks it too, so that
/// a start by hand does not take the addresses from under a running test).
pub const LOCK: &str = "/tmp/canto-federation-peers.lock";

/// `python3 peers.py ARGS`, through `sudo -n` when not root; tells peers.py that the caller
/// holds [`LOCK`].
fn peers_py(args: &[&str]) -> Output {
    let mut c = if is_root() {
        Command::new("env")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "env"]);
        c
    };
    c.args(["CANTO_PEERS_LOCK_HELD=1", "python3", PEERS_PY])
        .args(args);
    c.output()
        .unwrap_or_else(|e| panic!("running {PEERS_PY}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Peers {
    /// Starts the peers in `mode` in a fresh directory; waits for the lock first.
    pub fn start(mode: Mode, options: Options) -> Peers {
        let lock_path = Path::new(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)
            .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
        let dir = std::env::temp_dir().join(format!(
            "canto-peers-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let dir_s = dir.to_string_lossy().into_owned();
        let mut args = vec!["start", &dir_s, mode.as_str()];
        if options.direct_tls {
            args.push("--direct-tls");
        }
        if options.bidi {
            args.push("--bidi");
        }
        let out = peers_py(&args);
        assert!(
            out.status.success(),
            "starting the peers ({PEERS_PY} start {dir_s} {}) failed:\n{}{}",
            mode.as_str(),
            text(&out.stdout),
            text(&out.stderr)
        );
        let toml_path = dir.join("peers.toml");
        let info: toml::Table = std::fs::read_to_string(&toml_path)
            .unwrap_or_else(|e| panic!("{}: {e}", toml_path.display()))
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", toml_path.display()));
        let s = |t: &toml::Table, k: &str| -> String {
            t.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("peers.toml: no string {k}"))
                .to_owned()
        };
        let n = |t: &toml::Table, k: &str| -> u16 {
            t.get(k)
                .and_then(|v| v.as_integer())
                .and_then(|i| u16::try_from(i).ok())
                .unwrap_or_else(|| panic!("peers.toml: no port {k}"))
        };
        let table = |t: &toml::Table, k: &str| -> toml::Table {
            t.get(k)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_else(|| panic!("peers.toml: no table {k}"))
        };
        let servers = table(&info, "servers");
        let server = |name: &str| -> PeerServer {
            let t = table(&servers, name);
            let addr: IpAddr = s(&t, "addr")
                .parse()
                .unwrap_or_else(|e| panic!("peers.toml: {name}.addr: {e}"));
            let c2s_port = n(&t, "c2s_port");
            let users = t
                .get("users")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_table())
                        .map(|u| Account {
                            jid: s(u, "jid"),
                            user: s(u, "user"),
                            password: s(u, "password"),
                            c2s: format!("{addr}:{c2s_port}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            PeerServer {
                domain: s(&t, "domain"),
                addr,
                c2s_port,
                s2s_port: n(&t, "s2s_port"),
                direct_tls_port: n(&t, "direct_tls_port"),
                cert: PathBuf::from(s(&t, "cert")),
                key: PathBuf::from(s(&t, "key")),
                users,
            }
        };
        let dns = table(&info, "dns");
        Peers {
            mode,
            ca: PathBuf::from(s(&info, "ca")),
            dns: s(&dns, "server"),
            prosody: server("prosody"),
            ejabberd: server("ejabberd"),
            canto: server("canto"),
            dir,
            _lock: lock,
        }
    }

    /// `peers.py verify-auth`: each `PEER:DOMAIN` (PEER `prosody` or `ejabberd`) must have
    /// logged authenticating DOMAIN both ways with the mode's mechanism. Returns (ok, report).
    pub fn verify_auth(&self, pairs: &[&str]) -> (bool, String) {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec!["verify-auth", dir.as_str()];
        args.extend_from_slice(pairs);
        let out = peers_py(&args);
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let out = peers_py(&["stop", &dir]);
        if !out.status.success() {
            eprintln!(
                "stopping the peers: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        if std::thread::panicking() {
            eprintln!("the peers' logs are kept in {dir}");
        } else if is_root() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = Command::new("sudo")
                .args(["-n", "rm", "-rf", "--"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// Runs federation_flow.py between `a` and `b` (c2s certificates checked against `ca`);
/// returns (every check passed, its output).
pub async fn run_flow(ca: &Path, a: &Account, b: &Account) -> (bool, String) {
    let mut c = Command::new("python3");
    c.arg(FLOW_PY)
        .arg("--ca")
        .arg(ca)
        .args(["--timeout", "20", "--total", "240"])
        .args([&a.jid, &a.password, &a.c2s, &b.jid, &b.password, &b.c2s]);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("running python3 {FLOW_PY}: {e}"));
    let stdout = text(&out.stdout);
    let passed = out.status.success()
        && stdout
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(" passed, 0 failed") && !l.starts_with("0 "));
    (passed, format!("{stdout}{}", text(&out.stderr)))
}

/// Prints `what` and `report` now (nextest shows it for a failing test).
pub fn show(what: &str, report: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "== {what}\n{report}");
}

/// Prosody and ejabberd federate in `mode`, and their logs show the mode's mechanism.
async fn prosody_with_ejabberd(mode: Mode, options: Options) {
    require_federation_tools();
    let peers = Peers::start(mode, options);
    let (alice, bob) = (&peers.prosody.users[0], &peers.ejabberd.users[0]);
    let (flow_ok, flow) = run_flow(&peers.ca, alice, bob).await;
    show(&format!("{} <-> {} ({mode:?})", alice.jid, bob.jid), &flow);
    let pairs = [
        format!("prosody:{}", peers.ejabberd.domain),
        format!("ejabberd:{}", peers.prosody.domain),
    ];
    let pairs: Vec<&str> = pairs.iter().map(String::as_str).collect();
    let (auth_ok, auth) = peers.verify_auth(&pairs);
    show("s2s authentication in the peers' logs", &auth);
    assert!(
        flow_ok && auth_ok,
        "Prosody <-> ejabberd in {} mode:\n{flow}\n{auth}",
        mode.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_and_ejabberd_federate_with_sasl_external() {
    prosody_with_ejabberd(Mode::External, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_and_ejabberd_federate_with_dialback() {
    prosody_with_ejabberd(Mode::Dialback, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_and_ejabberd_federate_over_direct_tls() {
    let options = Options {
        direct_tls: true,
        ..Options::default()
    };
    prosody_with_ejabberd(Mode::External, options).await;
}
