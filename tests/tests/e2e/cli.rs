//! The `canto` command line, run as a real process: config helpers, `check`, account
//! administration, and `serve` with its signals and systemd notifications.
//!
//! The binary is `canto-e2e`, the canto crate's own `src/main.rs` built as a target of this
//! package (see tests/Cargo.toml): cargo builds it before these tests, which it would not do for
//! the `canto` package's binary.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use canto::startup::{Step, Trace, serve_until};
use canto_proto::sasl::HashAlgo;
use canto_storage::{Backend, Storage};
use canto_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_canto-e2e");

/// A command for the binary with a clean environment for the variables it reads.
fn canto_cmd(config: Option<&Path>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("CANTO_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1");
    if let Some(p) = config {
        c.arg("--config").arg(p);
    }
    c.args(args);
    c
}

/// Runs the binary to completion, feeding `stdin`.
fn canto(config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = canto_cmd(config, args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{BIN}: {e}"));
    let mut input = child.stdin.take();
    if let (Some(text), Some(pipe)) = (stdin, input.as_mut()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    drop(input);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {BIN}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts failure and returns stderr.
fn fails(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail; stdout: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// A configuration file with SQLite storage under `dir`.
fn write_config(dir: &ScratchDir, listen: &[SocketAddr], level: &str) -> PathBuf {
    let (l, d) = match listen {
        [a, b] => (format!("\"{a}\""), format!("\"{b}\"")),
        _ => (String::new(), String::new()),
    };
    let path = dir.path("canto.toml");
    let body = format!(
        "data_dir = \"{}\"\nhosts = [\"localhost\", \"example.test\"]\n\n[c2s]\nlisten = [{l}]\n\
         direct_tls_listen = [{d}]\n\n[http]\nlisten = []\nhttps_listen = []\n\n[s2s]\nlisten = []\n\n[storage]\nbackend = \"sqlite\"\n\n[log]\nlevel = \"{level}\"\n",
        dir.path("data").display()
    );
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
    path
}

async fn open_storage(dir: &ScratchDir) -> Storage {
    Storage::open(&Backend::Sqlite {
        path: dir.path("data").join("canto.sqlite"),
    })
    .await
    .unwrap_or_else(|e| panic!("opening the CLI's database: {e}"))
}

async fn password_is(storage: &Storage, user: &str, password: &str) -> bool {
    let creds = storage
        .accounts
        .credentials(HOST, user)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("{user} does not exist"));
    creds.sha256.verify_password(HashAlgo::Sha256, password)
        && creds.sha1.verify_password(HashAlgo::Sha1, password)
}

fn listed(config: &Path, host: &str) -> Vec<String> {
    let out = ok(canto(Some(config), &["user", "list", host], None), "list");
    out.lines().map(str::to_string).collect()
}

#[test]
fn config_example_has_every_key_and_parses_back() {
    let out = ok(canto(None, &["config", "example"], None), "config example");
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, _)) = line.split_once(" = ")
            && !line.starts_with('#')
        {
            keys.push(if section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            });
        }
    }
    for key in [
        "data_dir",
        "hosts",
        "c2s.listen",
        "c2s.direct_tls_listen",
        "c2s.require_encryption",
        "c2s.max_stanza_size",
        "storage.backend",
        "log.level",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from:\n{out}");
    }
    // Every key is documented by a comment right above it.
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(" = ") && !l.starts_with('#') {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "undocumented line {l:?}"
            );
        }
    }
    // It is the default configuration (the core's keys; the modules' sections, each module's
    // defaults, are checked by canto-modules), and the binary accepts it as a file.
    let mut parsed = canto_core::Config::parse(&out).unwrap_or_else(|e| panic!("{e}"));
    let sections = std::mem::take(&mut parsed.sections);
    assert_eq!(parsed, canto_core::Config::default());
    for s in ["vcard", "private", "mam", "contact", "external_services"] {
        assert!(sections.contains_key(s), "{s} missing from the example");
    }
    let dir = ScratchDir::new("cli-example");
    std::fs::write(dir.path("example.toml"), &out).unwrap_or_else(|e| panic!("{e}"));
    let out = canto_cmd(Some(&dir.path("example.toml")), &["check"])
        .current_dir(&dir.0)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = ok(out, "check of the example on a fresh install");
    assert!(stdout.contains("localhost"), "{stdout}");
}

#[test]
fn check_names_unknown_keys_and_accepts_a_good_file() {
    let dir = ScratchDir::new("cli-check");
    for (body, key) in [
        ("bogus = 1\n", "bogus"),
        ("[c2s]\nlisten_typo = [\"127.0.0.1:5222\"]\n", "listen_typo"),
        ("[storage]\nbakend = \"sqlite\"\n", "bakend"),
        ("[c2s]\nmax_stanza_size = \"big\"\n", "max_stanza_size"),
    ] {
        let p = dir.path("bad.toml");
        std::fs::write(&p, body).unwrap_or_else(|e| panic!("{e}"));
        let err = fails(canto(Some(&p), &["check"], None), body);
        assert!(
            err.contains(key),
            "{body:?}: stderr does not name {key}: {err}"
        );
        assert!(
            err.contains("bad.toml"),
            "stderr does not name the file: {err}"
        );
        // Every command refuses the file, not just check.
        let err = fails(canto(Some(&p), &["user", "list", "localhost"], None), body);
        assert!(err.contains(key), "{err}");
    }
    let good = write_config(&dir, &[], "info");
    let out = ok(canto(Some(&good), &["check"], None), "check good");
    assert!(
        out.contains("localhost") && out.contains("example.test"),
        "{out}"
    );
    let err = fails(
        canto(Some(&dir.path("missing.toml")), &["check"], None),
        "missing file",
    );
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_list_passwd_del() {
    let dir = ScratchDir::new("cli-users");
    let cfg = write_config(&dir, &[], "info");
    let cfg = cfg.as_path();
    let out = ok(
        canto(
            Some(cfg),
            &["user", "add", "alice@localhost", "--password", "p"],
            None,
        ),
        "add",
    );
    assert!(out.contains("alice@localhost"), "{out}");
    // Without --password the password is the first line of standard input.
    ok(
        canto(
            Some(cfg),
            &["user", "add", "Bob@LocalHost"],
            Some("from stdin\nignored\n"),
        ),
        "add from stdin",
    );
    let err = fails(
        canto(
            Some(cfg),
            &["user", "add", "alice@localhost", "--password", "q"],
            None,
        ),
        "duplicate add",
    );
    assert!(err.contains("already exists"), "{err}");
    let err = fails(
        canto(
            Some(cfg),
            &["user", "add", "carol@elsewhere.test", "--password", "q"],
            None,
        ),
        "add on an unserved host",
    );
    assert!(err.contains("elsewhere.test"), "{err}");
    let err = fails(
        canto(Some(cfg), &["user", "add", "carol@localhost"], Some("")),
        "add with an empty password",
    );
    assert!(err.contains("password"), "{err}");
    // Accounts are normalized (nodeprep/nameprep) and listed per host.
    let mut users = listed(cfg, "localhost");
    users.sort();
    assert_eq!(users, ["alice@localhost", "bob@localhost"]);
    assert!(listed(cfg, "example.test").is_empty());
    {
        let storage = open_storage(&dir).await;
        assert!(password_is(&storage, "alice", "p").await);
        assert!(password_is(&storage, "bob", "from stdin").await);
        // The duplicate add did not touch alice's password.
        assert!(!password_is(&storage, "alice", "q").await);
    }
    ok(
        canto(
            Some(cfg),
            &["user", "passwd", "alice@localhost", "--password", "new"],
            None,
        ),
        "passwd",
    );
    ok(
        canto(
            Some(cfg),
            &["user", "passwd", "bob@localhost"],
            Some("newer\n"),
        ),
        "passwd from stdin",
    );
    {
        let storage = open_storage(&dir).await;
        assert!(password_is(&storage, "alice", "new").await);
        assert!(!password_is(&storage, "alice", "p").await);
        assert!(password_is(&storage, "bob", "newer").await);
    }
    let err = fails(
        canto(
            Some(cfg),
            &["user", "passwd", "nobody@localhost", "--password", "x"],
            None,
        ),
        "passwd of a missing account",
    );
    assert!(err.contains("does not exist"), "{err}");
    ok(
        canto(Some(cfg), &["user", "del", "alice@localhost"], None),
        "del",
    );
    assert_eq!(listed(cfg, "localhost"), ["bob@localhost"]);
    let err = fails(
        canto(Some(cfg), &["user", "del", "alice@localhost"], None),
        "second del",
    );
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn user_import_from_file_and_stdin() {
    let dir = ScratchDir::new("cli-import");
    let cfg = write_config(&dir, &[], "info");
    let cfg = cfg.as_path();
    let file = dir.path("users.txt");
    std::fs::write(
        &file,
        "# comment\nalice@localhost pass word\n\n  bob@example.test  x y  \n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = ok(
        canto(
            Some(cfg),
            &["user", "import", file.to_str().unwrap_or_default()],
            None,
        ),
        "import file",
    );
    assert!(out.contains("imported 2"), "{out}");
    assert_eq!(listed(cfg, "localhost"), ["alice@localhost"]);
    assert_eq!(listed(cfg, "example.test"), ["bob@example.test"]);
    ok(
        canto(Some(cfg), &["user", "import"], Some("carol@localhost c\n")),
        "import stdin",
    );
    assert_eq!(listed(cfg, "localhost").len(), 2);
    // A bad line is named and nothing of that file is imported.
    let err = fails(
        canto(
            Some(cfg),
            &["user", "import"],
            Some("dave@localhost d\nno-password-here\n"),
        ),
        "bad import",
    );
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(listed(cfg, "localhost").len(), 2);

    // 2,000 accounts (time reported, not asserted tightly: debug build, shared machine).
    let many: String = (0..2000)
        .map(|i| format!("user{i}@localhost password-{i}\n"))
        .collect();
    let t = Instant::now();
    let out = ok(
        canto(Some(cfg), &["user", "import"], Some(&many)),
        "import 2000",
    );
    let took = t.elapsed();
    eprintln!("imported 2,000 accounts in {took:?} ({})", out.trim());
    assert!(out.contains("imported 2000"), "{out}");
    assert_eq!(listed(cfg, "localhost").len(), 2002);
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let storage = open_storage(&dir).await;
        assert!(password_is(&storage, "user1999", "password-1999").await);
        assert!(password_is(&storage, "alice", "pass word").await);
    });
}

/// A running `canto serve`: killed (by its PID) if the test fails half-way.
struct Server {
    proc: Proc,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn log_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Receives notifications until one contains `want`.
async fn notified(sock: &tokio::net::UnixDatagram, want: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want} notification; got {got:?}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let msg = text(&buf[..n]);
        let done = msg.lines().any(|l| l == want);
        got.push(msg);
        if done {
            return got;
        }
    }
}

async fn login(addr: SocketAddr, ca: PathBuf, user: &str, pw: &str, res: &str) -> Client {
    let mut c = Client::connect(addr, ca).await;
    c.open(HOST).await;
    c.starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    c.open(HOST).await;
    c.finish_login(user, pw, res).await;
    c
}

async fn ping(c: &mut Client) {
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("ping: {e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifies_generates_a_certificate_reloads_and_stops() {
    let dir = ScratchDir::new("cli-serve");
    let (addr, tls_addr) = (free_addr(), free_addr());
    let cfg = write_config(&dir, &[addr, tls_addr], "info");
    let notify_path = dir.path("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = canto_cmd(Some(&cfg), &["serve"]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{BIN} serve: {e}"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = child.stderr.take() {
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
    }
    let mut server = Server {
        proc: Proc(child),
        stderr,
    };

    // sd_notify(3): READY=1 once the service is up: listeners are bound by then, so connecting
    // right away must work (no retry loop).
    notified(&notify, "READY=1").await;
    // A self-signed certificate and a private key only the owner can read.
    let cert = dir.path("data").join("certs").join("localhost.crt");
    let key = dir.path("data").join("certs").join("localhost.key");
    assert!(cert.exists(), "{} missing", cert.display());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key mode {mode:o}");
    }

    // Accounts can be managed while the server runs (same SQLite file).
    ok(
        canto(
            Some(&cfg),
            &["user", "add", "bob@localhost", "--password", "builder"],
            None,
        ),
        "user add while serving",
    );
    let mut bob = login(addr, cert.clone(), "bob", "builder", "one").await;
    ping(&mut bob).await;
    // Direct TLS listener too (XEP-0368).
    let mut d = Client::connect_direct_tls(tls_addr, cert.clone())
        .await
        .unwrap_or_else(|e| panic!("direct TLS: {e:#}"));
    d.open(HOST).await;
    d.finish_login("bob", "builder", "two").await;
    ping(&mut d).await;
    assert!(
        !server.log_lines().iter().any(|l| l.contains("DEBUG")),
        "debug output at level info"
    );

    // SIGHUP with log.level = debug: RELOADING=1 then READY=1; sessions survive; new debug
    // output appears (the reload took effect).
    write_config(&dir, &[addr, tls_addr], "debug");
    server.proc.signal("HUP");
    notified(&notify, "RELOADING=1").await;
    notified(&notify, "READY=1").await;
    ping(&mut bob).await;
    let logs = server.stderr.clone();
    assert!(
        poll_until(WAIT, || logs
            .lock()
            .map(|v| v.iter().any(|l| l.contains("DEBUG")))
            .unwrap_or(false))
        .await,
        "no debug output after reload: {:?}",
        server.log_lines()
    );
    assert_session_works(&mut bob, &mut d).await;
    // New TLS handshakes work after the certificate reload.
    let mut three = login(addr, cert.clone(), "bob", "builder", "three").await;
    ping(&mut three).await;
    assert!(server.proc.is_running(), "SIGHUP killed the server");

    // SIGTERM: STOPPING=1, <system-shutdown/> on every stream, exit status 0.
    server.proc.signal("TERM");
    notified(&notify, "STOPPING=1").await;
    for c in [&mut bob, &mut d, &mut three] {
        assert_eq!(c.closed().await, Closed::Error("system-shutdown".into()));
    }
    let status = server.proc.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status:?}: {:?}",
        server.log_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_runs_every_step_in_order() {
    let config = test_config();
    let data = config.data_dir.clone();
    let trace = Trace::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_until(
        config,
        None,
        canto::logging::LogHandle::none(),
        trace.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let t = trace.clone();
    assert!(
        poll_until(WAIT, || t.steps().contains(&Step::Ready)).await,
        "not ready: {:?}",
        trace.steps()
    );
    let _ = stop_tx.send(());
    let r = tokio::time::timeout(WAIT, task)
        .await
        .unwrap_or_else(|_| panic!("serve_until did not stop"));
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    // The startup order (ARCHITECTURE.md, "Startup"): signals before anything that could
    // receive one; READY last.
    assert_eq!(
        trace.steps(),
        [
            Step::Config,
            Step::Logging,
            Step::Signals,
            Step::Storage,
            Step::Certificates,
            Step::Modules,
            Step::Listeners,
            Step::Resolver,
            Step::Background,
            Step::Ready,
        ]
    );
    let _ = std::fs::remove_dir_all(data);
}

/// The seed's lesson for federation (issue 14): SIGTERM while an outgoing server connection is
/// being attempted (its DNS lookup hanging on a name server that never answers) stops the
/// server at once and cleanly: the resolver started after the signal handlers, and nothing
/// waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outgoing_connection_attempt_stops_fast() {
    let dir = ScratchDir::new("cli-s2s-term");
    let addr = free_addr();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let dns = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path("canto.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nhosts = [\"localhost\"]\n\n[c2s]\nlisten = [\"{addr}\"]\n\
             direct_tls_listen = []\n\n[http]\nlisten = []\nhttps_listen = []\n\n\
             [s2s]\nlisten = []\nconnect_timeout = 120\n\n[dns]\nservers = [\"{dns}\"]\n\n\
             [log]\nlevel = \"debug\"\n",
            dir.path("data").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ok(
        canto(
            Some(&cfg),
            &["user", "add", "bob@localhost", "--password", "builder"],
            None,
        ),
        "user add",
    );
    let notify_path = dir.path("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = canto_cmd(Some(&cfg), &["serve"]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{BIN} serve: {e}"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = child.stderr.take() {
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
    }
    let mut server = Server {
        proc: Proc(child),
        stderr,
    };
    notified(&notify, "READY=1").await;
    let cert = dir.path("data").join("certs").join("localhost.crt");
    let mut bob = login(addr, cert, "bob", "builder", "one").await;
    bob.send("<message to='someone@far.example' id='m1'><body>hi</body></message>")
        .await;
    // The lookup is under way: the silent name server got the query.
    let mut buf = [0u8; 512];
    silent
        .set_read_timeout(Some(WAIT))
        .unwrap_or_else(|e| panic!("{e}"));
    let n = silent
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no DNS query: {e}"));
    assert!(n > 12, "a DNS query");
    let t = Instant::now();
    server.proc.signal("TERM");
    let status = server.proc.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status:?}: {:?}",
        server.log_lines()
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "took {:?} to stop",
        t.elapsed()
    );
    assert_eq!(bob.closed().await, Closed::Error("system-shutdown".into()));
}

/// `config` with its `[storage]` section replaced by PostgreSQL at `url`.
fn postgres_config(dir: &ScratchDir, name: &str, sqlite_config: &Path, url: &str) -> PathBuf {
    let body = std::fs::read_to_string(sqlite_config).unwrap_or_else(|e| panic!("{e}"));
    let body = body.replace(
        "[storage]\nbackend = \"sqlite\"\n",
        &format!("[storage]\nbackend = \"postgresql\"\nurl = \"{url}\"\npool_size = 4\n"),
    );
    assert!(body.contains("postgresql"), "{body}");
    let path = dir.path(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// `canto storage copy` moves accounts from SQLite to PostgreSQL, where `canto user` finds
/// them; `--verify` agrees, then reports a difference with a non-zero exit; a rerun copies
/// nothing twice; and the copy back to a fresh SQLite file matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_storage_copy_and_verify() {
    let db = canto_storage::testing::TestDatabase::create("cli_copy")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("cli-storage-copy");
    let sqlite = write_config(&dir, &[], "warn");
    let pg = postgres_config(&dir, "pg.toml", &sqlite, db.url());
    for user in ["alice", "bob"] {
        ok(
            canto(
                Some(&sqlite),
                &[
                    "user",
                    "add",
                    &format!("{user}@localhost"),
                    "--password",
                    "pw",
                ],
                None,
            ),
            "add",
        );
    }
    let (from, to) = (sqlite.to_string_lossy(), pg.to_string_lossy());
    let out = ok(
        canto(
            None,
            &["storage", "copy", "--from", &from, "--to", &to],
            None,
        ),
        "copy",
    );
    assert!(out.contains("accounts"), "{out}");
    assert!(out.contains("rows per store: accounts 2,"), "{out}");
    assert_eq!(
        listed(&pg, "localhost"),
        ["alice@localhost", "bob@localhost"]
    );
    let out = ok(
        canto(
            None,
            &["storage", "copy", "--from", &from, "--to", &to, "--verify"],
            None,
        ),
        "verify",
    );
    assert!(out.contains("the databases hold the same rows"), "{out}");
    // Running it again copies nothing twice.
    let out = ok(
        canto(
            None,
            &["storage", "copy", "--from", &from, "--to", &to],
            None,
        ),
        "copy again",
    );
    assert!(out.contains("(2 were there from an earlier run)"), "{out}");
    // A change on one side is reported.
    ok(
        canto(
            Some(&pg),
            &["user", "add", "carol@localhost", "--password", "pw"],
            None,
        ),
        "add on PostgreSQL",
    );
    let out = canto(
        None,
        &["storage", "copy", "--from", &from, "--to", &to, "--verify"],
        None,
    );
    let stdout = text(&out.stdout);
    let err = fails(out, "verify after a change");
    assert!(err.contains("differ in accounts"), "{err}");
    assert!(stdout.contains("1 only in the destination"), "{stdout}");
    assert!(stdout.contains("\"carol\""), "{stdout}");
    // And back to a fresh SQLite file.
    let back_dir = ScratchDir::new("cli-storage-copy-back");
    let back = write_config(&back_dir, &[], "warn");
    let out = ok(
        canto(
            None,
            &[
                "storage",
                "copy",
                "--from",
                &to,
                "--to",
                &back.to_string_lossy(),
            ],
            None,
        ),
        "copy back",
    );
    assert!(out.contains("accounts 3,"), "{out}");
    assert_eq!(
        listed(&back, "localhost"),
        ["alice@localhost", "bob@localhost", "carol@localhost"]
    );
    // The same database on both sides is refused.
    let err = fails(
        canto(None, &["storage", "copy", "--from", &to, "--to", &to], None),
        "same database",
    );
    assert!(err.contains("same database"), "{err}");
}

/// A PostgreSQL server that cannot be reached: the server does not start, and says which
/// database it could not reach (no PostgreSQL needed: nothing listens on port 9).
#[test]
fn serve_with_unreachable_postgres_names_it() {
    let dir = ScratchDir::new("cli-pg-down");
    let sqlite = write_config(&dir, &[], "warn");
    let pg = postgres_config(
        &dir,
        "pg.toml",
        &sqlite,
        "postgres://canto:secret@127.0.0.1:9/canto",
    );
    let err = fails(canto(Some(&pg), &["serve"], None), "serve");
    assert!(
        err.contains("cannot connect to PostgreSQL at canto@127.0.0.1:9/canto"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}
