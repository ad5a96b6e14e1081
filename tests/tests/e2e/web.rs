//! A real web client in a real browser: Converse.js (npm `converse.js`) in Debian's headless
//! Chromium, driven by playwright-core through tests/web/converse_flow.mjs. The browser user
//! logs in over WebSocket (`/xmpp-websocket`, RFC 7395) or BOSH (`/http-bind`, XEP-0124/0206),
//! opens the chat with a roster contact who is a TCP client of this test, sends a message that
//! the TCP client must receive, and must show the TCP client's answer on the page. The page is
//! served from its own http:// origin, so BOSH requests are cross-origin (CORS).
//!
//! Each transport is run twice: in plain `ws://` / `http://` to the plain HTTP listener on
//! loopback, with `c2s.require_encryption = false`; and in `wss://` / `https://` to the HTTPS
//! listener, encryption required (the default), Chromium taking the generated self-signed
//! certificate (`--ignore-certificate-errors`). SASL is SCRAM either way: Converse picks it over
//! PLAIN.
//!
//! Artifacts (a screenshot and the flow's output per test) go to `$CANTO_ARTIFACTS`, else
//! `target/web-artifacts/` in the workspace.
//!
//! `.ci/run` installs chromium (apt) and the npm packages (`npm ci` in tests/web); without them
//! these tests fail and say so. To leave them out, run nextest with `--profile no-browser`
//! (.config/nextest.toml): they are then counted as skipped. See docs/web-clients.md.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canto_tests::*;

/// How long the whole browser flow may take (Chromium's start included).
const FLOW_LIMIT: Duration = Duration::from_secs(120);

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Panics when node, Chromium or the npm packages are missing: a flow that did not run must
/// not pass.
fn require_browser() {
    let skip = "to skip these tests run `cargo nextest run --profile no-browser`";
    let has_node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(has_node, "node is not installed (Node 18 or later); {skip}");
    assert!(
        chromium().is_file(),
        "no Chromium at {} (apt-get install chromium, or set CHROMIUM); {skip}",
        chromium().display()
    );
    let modules = web_dir().join("node_modules");
    for p in [
        "converse.js/dist/converse.min.js",
        "playwright-core/package.json",
    ] {
        assert!(
            modules.join(p).is_file(),
            "{} is missing: run `npm ci` in {}; {skip}",
            modules.join(p).display(),
            web_dir().display()
        );
    }
}

fn artifacts_dir() -> PathBuf {
    let d = std::env::var_os("CANTO_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
            tests.parent().unwrap_or(tests).join("target/web-artifacts")
        });
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// The node process; stopped on drop (SIGTERM, so it closes Chromium; then SIGKILL).
struct Flow(Proc);

impl Drop for Flow {
    fn drop(&mut self) {
        if !self.0.is_running() {
            return;
        }
        self.0.signal("TERM");
        let end = Instant::now() + Duration::from_secs(5);
        while self.0.is_running() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Proc's own drop kills what is left and reaps it.
    }
}

/// The browser user `alice` (in Converse) and the TCP user `bob` exchange a message each way
/// over `transport` (`websocket` or `bosh`), on HTTPS when `tls`.
async fn converse_exchanges_messages(transport: &str, tls: bool) {
    require_browser();
    let started = Instant::now();
    let mut cfg = test_config();
    // Plain ws:// and http:// on loopback; over TLS, encryption stays required.
    cfg.c2s.require_encryption = tls;
    let s = TestServer::with_config(cfg).await;
    let http = if tls {
        s.running.https_addrs[0]
    } else {
        s.running.http_addrs[0]
    };
    let name = format!("{transport}{}", if tls { "_tls" } else { "" });
    s.add_user("alice", "alicepw").await;
    s.add_user("bob", "bobpw").await;

    // Alice and Bob subscribe to each other, so Converse lists Bob in Alice's roster; Alice's
    // TCP session for this then ends.
    let mut b = s.login("bob", "bobpw", "tcp").await;
    b.send("<presence/>").await;
    {
        let mut a = s.login("alice", "alicepw", "setup").await;
        a.send("<presence/>").await;
        subscribe_to(&mut a, &mut b).await;
        subscribe_to(&mut b, &mut a).await;
        a.send("<presence type='unavailable'/></stream:stream>")
            .await;
        let _ = a.closed().await;
    }
    b.sync().await;

    let tag = format!("{:08x}", rand::random::<u32>());
    let outgoing = format!("Hello from Converse over {name} ({tag})");
    let incoming = format!("Hello back over TCP to {name} ({tag})");
    let dir = artifacts_dir();
    let screenshot = dir.join(format!("converse_{name}.png"));
    let log_path = dir.join(format!("converse_{name}.log"));
    let _ = std::fs::remove_file(&screenshot);
    let log =
        std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let child = std::process::Command::new("node")
        .arg(web_dir().join("converse_flow.mjs"))
        .args(["--transport", transport])
        .args(tls.then_some("--tls"))
        .args(["--port", &http.port().to_string()])
        .args(["--host", &http.ip().to_string()])
        .args(["--jid", "alice@localhost", "--password", "alicepw"])
        .args(["--contact", "bob@localhost"])
        .args(["--send", &outgoing, "--expect", &incoming])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(["--timeout", &FLOW_LIMIT.as_secs().to_string()])
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("running node: {e}"));
    let mut flow = Flow(Proc(child));
    let output = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Bob receives what the browser typed, from Alice's browser session.
    let deadline = Instant::now() + FLOW_LIMIT;
    let is_outgoing = |e: &canto_xml::Element| {
        e.name() == "message"
            && e.get_child("body", canto_stanza::ns::CLIENT)
                .is_some_and(|x| x.text() == outgoing)
    };
    let m = loop {
        if let Ok(Ok(m)) =
            tokio::time::timeout(Duration::from_secs(1), b.wait_for(&is_outgoing)).await
        {
            break m;
        }
        assert!(
            flow.0.is_running(),
            "the browser flow ended before Bob received {outgoing:?}:\n{}",
            output()
        );
        assert!(
            Instant::now() < deadline,
            "Bob did not receive {outgoing:?} within {FLOW_LIMIT:?}:\n{}",
            output()
        );
    };
    let from = m.attr("from").unwrap_or_default().to_string();
    assert!(
        from.starts_with("alice@localhost/"),
        "the message is not from Alice's full JID: {m}"
    );
    // Bob answers the browser's session.
    b.send(&format!(
        "<message to='{from}' type='chat' id='reply-{tag}'><body>{incoming}</body></message>"
    ))
    .await;

    let status = loop {
        if let Ok(Some(st)) = flow.0.0.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the browser flow did not end within {FLOW_LIMIT:?}:\n{}",
            output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = output();
    assert!(
        status.success() && out.lines().last() == Some("PASS"),
        "the browser flow failed ({status}); screenshot {}:\n{out}",
        screenshot.display()
    );
    let shot = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(shot > 0, "no screenshot at {}", screenshot.display());
    // One line per step; shown with --nocapture.
    println!(
        "{out}screenshot: {} ({shot} bytes); {name} flow took {:.1} s",
        screenshot.display(),
        started.elapsed().as_secs_f64()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_websocket() {
    converse_exchanges_messages("websocket", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_secure_websocket() {
    converse_exchanges_messages("websocket", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_bosh() {
    converse_exchanges_messages("bosh", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_bosh_https() {
    converse_exchanges_messages("bosh", true).await;
}
