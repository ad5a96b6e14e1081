//! Flows driven by slixmpp, a client library nobody on this project wrote:
//! - tests/python/im_flow.py: subscription handshake, presence and a message;
//! - tests/python/modern_flow.py: XEP-0280 carbons, XEP-0313 MAM with XEP-0059 paging and
//!   XEP-0359 stanza ids, XEP-0191 blocking and XEP-0198 resumption, each through slixmpp's own
//!   plugin;
//! - tests/python/pubsub_flow.py: XEP-0163 personal eventing (XEP-0172 nickname, XEP-0084 avatar,
//!   `+notify` through XEP-0115 caps) and XEP-0060 on the hosted service pubsub.localhost
//!   (create, subscribe, publish, retract, items, node configuration, delete), through
//!   slixmpp's plugins;
//! - tests/python/omemo_flow.py: XEP-0384 OMEMO through slixmpp-omemo: device lists and bundles
//!   in PEP, an encrypted message each way, decrypted;
//! - tests/python/muc_flow.py: XEP-0045 on the service conference.localhost through slixmpp's
//!   xep_0045: a room created and configured by form (members-only, persistent, history
//!   length), joined, messages, a private message, subject, nick change, moderator, password,
//!   a XEP-0249 direct invitation, kick, ban, XEP-0410 self-ping, XEP-0421 occupant ids,
//!   history on rejoin, the room's XEP-0313 archive, destroy.
//! - tests/python/upload_flow.py: XEP-0363 on the service upload.localhost through slixmpp's
//!   xep_0363 (discovery with max-file-size, slot, the PUT over HTTPS with the slot's
//!   Authorization header), the file fetched back byte-identical, the §4.2 file-too-large error.
//! - tests/python/component_flow.py: an external component (XEP-0114) written with slixmpp's
//!   `ComponentXMPP` on `[component] listen`: handshake, messages each way with a local user
//!   (a slixmpp client), the user's disco#info and version IQs answered by the component's
//!   plugins, disco#items on the host listing it, the server's answer once it is gone.
//!
//! `.ci/run` installs slixmpp, slixmpp-omemo and aiohttp (xep_0363's HTTP client); without them these tests fail and say so. To leave them out, run
//! nextest with `--profile no-python` (.config/nextest.toml): they are then counted as skipped.
use canto_tests::*;

/// Panics when slixmpp is missing: a flow that did not run must not pass.
fn require_slixmpp() {
    let has_slixmpp = std::process::Command::new("python3")
        .args(["-c", "import slixmpp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_slixmpp,
        "slixmpp is not installed (pip install slixmpp); to skip these tests run \
         `cargo nextest run --profile no-python`"
    );
}

/// Panics when slixmpp-omemo is missing, as [`require_slixmpp`] does.
fn require_slixmpp_omemo() {
    let has_omemo = std::process::Command::new("python3")
        .args(["-c", "import slixmpp_omemo"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_omemo,
        "slixmpp-omemo is not installed (pip install slixmpp-omemo); to skip these tests run \
         `cargo nextest run --profile no-python`"
    );
}

/// Runs `tests/python/<script> PORT CERT` against `s`; returns (success, stdout, stderr).
async fn run_script(s: &TestServer, script: &str) -> (bool, String, String) {
    let script = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let (port, cert) = (s.addr.port().to_string(), s.cert_pem_path());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(port)
            .arg(cert)
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("join: {e}"))
    .unwrap_or_else(|e| panic!("running python3: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_subscription_presence_and_message() {
    require_slixmpp();
    let s = TestServer::start().await;
    s.add_user("alice", "alicepw").await;
    s.add_user("bob", "bobpw").await;
    let (ok, stdout, stderr) = run_script(&s, "im_flow.py").await;
    assert!(
        ok && stdout.contains("1 passed, 0 failed"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_carbons_mam_blocking_and_stream_resumption() {
    require_slixmpp();
    let mut cfg = test_config();
    // Archiving is off by default; carbons and blocking are on.
    cfg.modules.push("mam".into());
    let s = TestServer::with_config(cfg).await;
    for (user, pw) in [("alice", "alicepw"), ("bob", "bobpw"), ("carol", "carolpw")] {
        s.add_user(user, pw).await;
    }
    let (ok, stdout, stderr) = run_script(&s, "modern_flow.py").await;
    // The last line is "N passed, M failed".
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: u32 = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok && passed > 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // One line per check; shown with --nocapture.
    println!("{stdout}");
    s.stop().await;
}

/// Runs a flow that prints one line per check and ends with "N passed, M failed"; asserts that
/// it exited 0 with N > 0 and M = 0, with alice, bob and carol as accounts on a default server.
async fn run_counted_flow(script: &str) {
    let s = TestServer::start().await;
    for (user, pw) in [("alice", "alicepw"), ("bob", "bobpw"), ("carol", "carolpw")] {
        s.add_user(user, pw).await;
    }
    let (ok, stdout, stderr) = run_script(&s, script).await;
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: u32 = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok && passed > 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // One line per check; shown with --nocapture.
    println!("{stdout}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_pep_nickname_avatar_and_hosted_pubsub() {
    require_slixmpp();
    // pep and pubsub are on by default; the hosted service is pubsub.localhost.
    run_counted_flow("pubsub_flow.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_omemo_keys_in_pep_and_encrypted_messages() {
    require_slixmpp();
    require_slixmpp_omemo();
    run_counted_flow("omemo_flow.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_muc_room_lifecycle() {
    require_slixmpp();
    // muc is on by default; the service is conference.localhost.
    run_counted_flow("muc_flow.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_http_file_upload_over_https() {
    require_slixmpp();
    // upload is on by default at upload.localhost; its links point at the HTTPS listener,
    // whose self-signed certificate the script trusts.
    let mut cfg = test_config();
    let https = free_addr();
    cfg.http.https_listen = vec![https.to_string()];
    cfg.http.external_url = format!("https://localhost:{}", https.port());
    let table: toml::Table = "max_file_size = 1048576"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    cfg.sections
        .insert("upload".into(), toml::Value::Table(table));
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "alicepw").await;
    let (ok, stdout, stderr) = run_script(&s, "upload_flow.py").await;
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: u32 = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok && passed > 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_component_exchanges_messages_with_a_local_user() {
    require_slixmpp();
    let mut cfg = test_config();
    cfg.component.listen = vec!["127.0.0.1:0".into()];
    cfg.components.insert(
        "gw.localhost".into(),
        canto_core::config::ComponentConfig {
            secret: "gw-secret".into(),
            ..Default::default()
        },
    );
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "alicepw").await;
    let script = format!("{}/python/component_flow.py", env!("CARGO_MANIFEST_DIR"));
    let args = [
        s.addr.port().to_string(),
        s.cert_pem_path().display().to_string(),
        s.running.component_addrs[0].port().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("join: {e}"))
    .unwrap_or_else(|e| panic!("running python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: u32 = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        out.status.success() && passed > 0,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}");
    s.stop().await;
}
