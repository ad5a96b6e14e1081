//! A flow driven by slixmpp, a client library nobody on this project wrote: subscription
//! handshake, presence and a message (tests/python/im_flow.py). `.ci/run` installs slixmpp;
//! without it this test fails and says so, unless CANTO_SKIP_PYTHON=1.
use canto_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_subscription_presence_and_message() {
    let has_slixmpp = std::process::Command::new("python3")
        .args(["-c", "import slixmpp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_slixmpp {
        assert!(
            std::env::var("CANTO_SKIP_PYTHON").is_ok_and(|v| v == "1"),
            "slixmpp is not installed (pip install slixmpp), or set CANTO_SKIP_PYTHON=1"
        );
        return;
    }
    let s = TestServer::start().await;
    s.add_user("alice", "alicepw").await;
    s.add_user("bob", "bobpw").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/im_flow.py");
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed, 0 failed"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    s.stop().await;
}
