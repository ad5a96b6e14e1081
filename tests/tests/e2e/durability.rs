//! Durability: a message acknowledged as stored offline survives SIGKILL of the server
//! (issue 3; ARCHITECTURE.md, "Storage durability": committed before acknowledged). The real
//! binary runs with SQLite; the sender learns that its messages were committed from the answer
//! to a ping sent after them, because a session's stanzas are handled in order and an offline
//! message is committed before the next stanza is read. Run again with PostgreSQL storage.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use canto_stanza::ns;
use canto_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_canto-e2e");

fn run(config: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn serve(config: &Path, addr: SocketAddr) -> Proc {
    let proc = Proc(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}")),
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start listening on {addr}");
}

async fn login(addr: SocketAddr, ca: PathBuf, user: &str, pw: &str, res: &str) -> Client {
    let mut c = Client::connect(addr, ca).await;
    c.open(HOST).await;
    c.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    c.auth_scram(canto_proto::sasl::HashAlgo::Sha256, user, pw, None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    c.bind(Some(res)).await.unwrap_or_else(|e| panic!("{e:#}"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_acknowledged_before_sigkill_are_delivered_after_restart() {
    acknowledged_survive_sigkill("").await;
}

/// The same with PostgreSQL storage: commit before acknowledgement holds there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_offline_messages_acknowledged_before_sigkill_are_delivered_after_restart() {
    let db = canto_storage::testing::TestDatabase::create("durable")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    acknowledged_survive_sigkill(&format!(
        "[storage]\nbackend = \"postgresql\"\nurl = \"{}\"\n",
        db.url()
    ))
    .await;
}

/// `storage`: the configuration's `[storage]` section (empty: the default SQLite file).
async fn acknowledged_survive_sigkill(storage: &str) {
    let dir = ScratchDir::new("durable");
    let addr = free_addr();
    let config = dir.0.join("canto.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[c2s]\nlisten = [\"{addr}\"]\ndirect_tls_listen = []\n[http]\nlisten = []\nhttps_listen = []\n[s2s]\nlisten = []\n[log]\nlevel = \"warn\"\n{storage}",
            dir.0.join("data").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    run(
        &config,
        &["user", "add", "alice@localhost", "--password", "pa"],
    );
    run(
        &config,
        &["user", "add", "bob@localhost", "--password", "pb"],
    );
    let ca = dir.0.join("data/certs/localhost.crt");

    let mut server = serve(&config, addr).await;
    let mut a = login(addr, ca.clone(), "alice", "pa", "a").await;
    const N: usize = 200;
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
        ));
    }
    a.send(&burst).await;
    // The answer to this ping is the acknowledgement: everything before it was committed.
    let pong = a
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        pong.ok()
            .and_then(|p| p.attr("type").map(str::to_string))
            .as_deref(),
        Some("result")
    );
    // SIGKILL: no shutdown path runs.
    let st = Command::new("kill")
        .args(["-9", &server.0.id().to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()));
    let _ = server.0.wait();
    drop(a);

    let _server = serve(&config, addr).await;
    let mut b = login(addr, ca, "bob", "pb", "b").await;
    b.send("<presence/>").await;
    let mut bodies = Vec::new();
    while bodies.len() < N {
        let m = b
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("after {} messages: {e:#}", bodies.len()));
        bodies.push(
            m.get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .unwrap_or_default(),
        );
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want, "every acknowledged message, once, in order");
    // Nothing else but presence follows: no duplicates.
    b.sync().await;
    while !b.nothing_within(SETTLE).await {
        let e = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(e.name(), "message", "duplicate delivery: {e}");
    }
}
