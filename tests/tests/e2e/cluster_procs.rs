//! The three-node cluster of issue 15 as operators run it: three `canto serve` processes on
//! loopback, one PostgreSQL (tests/postgres/README.md), one `nats-server`. Clients on
//! different nodes exchange messages, presence, roster pushes and carbons; a node is killed
//! with SIGKILL in the middle of a flood, its client reconnects to another node, and every
//! message the server acknowledged arrives exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use canto_proto::sasl::HashAlgo;
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

use crate::cluster::Nats;

const BIN: &str = env!("CARGO_BIN_EXE_canto-e2e");
const SM: &str = "urn:xmpp:sm:3";
const MAM: &str = "urn:xmpp:mam:2";
const CARBONS: &str = "urn:xmpp:carbons:2";

struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    proc: Option<Proc>,
}

/// A gauge's value on `node`'s `/metrics` (per node: docs/cluster.md).
async fn gauge(node: &Node, name: &str) -> Option<f64> {
    let raw = http_raw(
        node.metrics,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    raw.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == name).then(|| v.parse().ok()).flatten()
    })
}

impl Node {
    fn new(root: &Path, name: &str, db_url: &str, nats: &Nats, prefix: &str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let addr = free_addr();
        let metrics = free_addr();
        let config = dir.join("canto.toml");
        let text = format!(
            r#"data_dir = "{data}"
hosts = ["localhost"]

[c2s]
listen = ["{addr}"]
direct_tls_listen = []

[http]
listen = []
https_listen = []

[metrics]
listen = "{metrics}"

[s2s]
listen = []
direct_tls_listen = []

[limits.c2s]
rate = "unlimited"

[storage]
backend = "postgresql"
url = "{db_url}"

[cluster]
nats_url = "{nats}"
node_name = "{name}"
subject_prefix = "{prefix}"
heartbeat_ms = 200
node_timeout_ms = 1500
"#,
            data = dir.join("data").display(),
            nats = nats.url(),
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
        Node {
            name: name.into(),
            dir,
            config,
            addr,
            metrics,
            proc: None,
        }
    }

    async fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("log")).unwrap_or_else(|e| panic!("{e}"));
        let child = std::process::Command::new(BIN)
            .env_remove("CANTO_CONFIG")
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}"));
        self.proc = Some(Proc(child));
        let addr = self.addr;
        let up = poll_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
        assert!(up, "node {} did not start: {}", self.name, self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("data").join("certs").join("localhost.crt")
    }

    async fn login(&self, user: &str, resource: &str) -> Client {
        let mut c = self.authenticated(user).await;
        c.bind(Some(resource))
            .await
            .unwrap_or_else(|e| panic!("bind {user}: {e:#}"));
        c
    }

    /// Authenticated, stream restarted, not bound (to resume or bind).
    async fn authenticated(&self, user: &str) -> Client {
        let mut c = Client::connect(self.addr, self.ca()).await;
        c.open("localhost").await;
        c.starttls()
            .await
            .unwrap_or_else(|e| panic!("starttls: {e:#}"));
        c.open("localhost").await;
        c.auth_scram(HashAlgo::Sha256, user, "pw", None)
            .await
            .unwrap_or_else(|e| panic!("auth {user} on {}: {e:#}", self.name));
        c.open("localhost").await;
        c
    }
}

fn canto(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .env_remove("CANTO_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"))
}

/// Waits until `canto cluster status` shows `n` nodes, each seeing the others.
async fn cluster_of(config: &Path, n: usize) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let out = canto(config, &["cluster", "status", "--wait-ms", "500"]);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows = last.lines().skip(2).filter(|l| !l.starts_with(' ')).count();
        let full = last
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with(' '))
            .all(|l| l.split_whitespace().nth(4).unwrap_or("").split(',').count() == n - 1);
        if out.status.success() && rows == n && full {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cluster never showed {n} nodes: {last}");
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", ns::CLIENT).map(Element::text)
}

fn stanza_id(e: &Element) -> Option<String> {
    e.children()
        .find(|c| c.is("stanza-id", "urn:xmpp:sid:0") && c.attr("by") == Some("bob@localhost"))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// Everything bob's archive holds: (stanza-id, body), oldest first, paging through RSM.
async fn archive(c: &mut Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let id = c.id();
        let set = if after.is_empty() {
            "<set xmlns='http://jabber.org/protocol/rsm'><max>100</max></set>".to_string()
        } else {
            format!(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>100</max><after>{after}</after></set>"
            )
        };
        c.send(&format!(
            "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q{id}'>{set}</query></iq>"
        ))
        .await;
        let mut page = 0;
        loop {
            let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
            if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
                assert_eq!(e.attr("type"), Some("result"), "{e}");
                break;
            }
            if let Some(r) = e.get_child("result", MAM) {
                let m = r
                    .get_child("forwarded", "urn:xmpp:forward:0")
                    .and_then(|f| f.get_child("message", ns::CLIENT));
                let rid = r.attr("id").unwrap_or_default().to_string();
                if let Some(b) = m.and_then(body) {
                    out.push((rid.clone(), b));
                }
                after = rid;
                page += 1;
            }
        }
        if page < 100 {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_nodes_one_killed_mid_flood_no_acknowledged_message_lost() {
    let db_url = canto_storage::testing::fresh_postgres_db("cluster")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let nats = Nats::start();
    let root = ScratchDir::new("cluster-procs");
    let prefix = format!("p{:x}", rand::random::<u32>());
    let mut nodes: Vec<Node> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| Node::new(&root.0, n, &db_url, &nats, &prefix))
        .collect();
    for n in &mut nodes {
        n.start().await;
    }
    for u in ["alice", "bob"] {
        let out = canto(
            &nodes[0].config,
            &["user", "add", &format!("{u}@localhost"), "--password", "pw"],
        );
        assert!(out.status.success(), "user add: {out:?}");
    }
    let status = cluster_of(&nodes[0].config, 3).await;
    assert!(status.starts_with("3 nodes, 0 sessions"), "{status}");

    // alice on n0, bob on n1, alice's second resource on n2 with carbons.
    let mut a = nodes[0].login("alice", "a").await;
    let mut b = nodes[1].login("bob", "b").await;
    let mut a2 = nodes[2].login("alice", "a2").await;
    for c in [&mut a, &mut b, &mut a2] {
        let r = c
            .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.attr("type"), Some("result"));
        c.send("<presence/>").await;
    }
    let r = a2
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    let status = cluster_of(&nodes[0].config, 3).await;
    assert!(status.starts_with("3 nodes, 3 sessions"), "{status}");
    // Metrics are per node: n0 counts its one session, and routes to the two elsewhere.
    assert_eq!(gauge(&nodes[0], "canto_sessions").await, Some(1.0));
    assert_eq!(gauge(&nodes[0], "canto_cluster_mirrors").await, Some(2.0));
    // Presence subscription across processes: bob's roster push on n1, alice's on n0 and n2.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let is_push = |e: &Element| {
        e.name() == "iq"
            && e.get_child("query", "jabber:iq:roster")
                .and_then(|q| q.get_child("item", "jabber:iq:roster"))
                .is_some_and(|i| i.attr("subscription") == Some("to"))
    };
    a2.wait_for(is_push)
        .await
        .unwrap_or_else(|e| panic!("no roster push on n2: {e:#}"));
    // RFC 6121 §3.1.5: bob's presence reaches alice's resources on both nodes.
    for c in [&mut a, &mut a2] {
        c.wait_for(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/b"))
            .await
            .unwrap_or_else(|e| panic!("no presence from bob: {e:#}"));
    }

    // bob's session on n1 is resumable (XEP-0198).
    b.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = b
        .wait_for(|e| e.is("enabled", SM))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let previd = enabled.attr("id").unwrap_or_default().to_string();
    assert!(!previd.is_empty(), "{enabled}");
    // The flood: alice (n0, stream management) → bob's bare JID (bob on n1). n1 dies with
    // SIGKILL after the first third.
    a.send(&format!("<enable xmlns='{SM}'/>")).await;
    a.wait_for(|e| e.is("enabled", SM))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    const N: usize = 300;
    let send = async |a: &mut Client, range: std::ops::Range<usize>| {
        for i in range {
            a.send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
        }
    };
    // A third live; n1 is killed (SIGKILL) while the second third is on its way to it; the
    // last third is sent once the others know n1 is dead.
    send(&mut a, 0..N / 3).await;
    a.send(&format!("<r xmlns='{SM}'/>")).await;
    a.wait_for(|e| e.is("a", SM))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let live: Vec<Element> = {
        let mut got = Vec::new();
        while got.iter().filter(|e: &&Element| body(e).is_some()).count() < N / 3 {
            got.push(b.next().await.unwrap_or_else(|e| panic!("{e:#}")));
        }
        got
    };
    if let Some(p) = nodes[1].proc.as_ref() {
        p.signal("KILL");
    }
    send(&mut a, N / 3..2 * N / 3).await;
    let status = cluster_of(&nodes[0].config, 2).await;
    assert!(!status.contains("n1 "), "{status}");
    send(&mut a, 2 * N / 3..N).await;
    a.send(&format!("<r xmlns='{SM}'/>")).await;
    let ack = a
        .wait_for(|e| e.is("a", SM))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let h: usize = ack.attr("h").and_then(|h| h.parse().ok()).unwrap_or(0);
    // Everything alice sent was acknowledged (the stanzas before the flood too).
    assert!(h >= N, "only {h} acknowledged");
    // a2 got a <sent/> carbon of the flood on n2.
    a2.wait_for(|e| e.get_child("sent", CARBONS).is_some())
        .await
        .unwrap_or_else(|e| panic!("no carbon: {e:#}"));

    // bob reconnects to n2. Stream management state is not shared between nodes
    // (docs/cluster.md): resuming n1's session there fails with item-not-found (XEP-0198
    // §5), and the client binds a new one: offline messages at initial presence, then his
    // archive.
    drop(b);
    let mut b = nodes[2].authenticated("bob").await;
    b.send(&format!(
        "<resume xmlns='{SM}' previd='{previd}' h='{}'/>",
        N / 3
    ))
    .await;
    let failed = b
        .wait_for(|e| e.ns() == SM)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(failed.is("failed", SM), "{failed}");
    assert!(
        failed.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"),
        "{failed}"
    );
    b.bind(Some("b")).await.unwrap_or_else(|e| panic!("{e:#}"));
    b.send("<presence/>").await;
    b.sync().await;
    let offline = b.drain().await;
    let archived = archive(&mut b).await;

    // Exactly once: every acknowledged message is in bob's archive once; what he got live or
    // from offline storage carries the archive's id for it (a client's MAM catch-up merges by
    // that id), and no body came under two ids.
    let mut by_body: HashMap<String, Vec<String>> = HashMap::new();
    for (id, b) in &archived {
        by_body.entry(b.clone()).or_default().push(id.clone());
    }
    for i in 0..N {
        let ids = by_body.get(&format!("m{i}")).cloned().unwrap_or_default();
        assert_eq!(ids.len(), 1, "m{i} is in bob's archive {} times", ids.len());
    }
    let archive_ids: HashMap<&str, &str> = archived
        .iter()
        .map(|(id, b)| (id.as_str(), b.as_str()))
        .collect();
    let mut received = 0;
    for e in live.iter().chain(&offline) {
        if let Some(b) = body(e) {
            let sid = stanza_id(e).unwrap_or_else(|| panic!("no stanza-id: {e}"));
            assert_eq!(archive_ids.get(sid.as_str()), Some(&b.as_str()), "{e}");
            received += 1;
        }
    }
    let bodies = |v: &[Element]| -> Vec<String> { v.iter().filter_map(body).collect() };
    let expect =
        |r: std::ops::Range<usize>| -> Vec<String> { r.map(|i| format!("m{i}")).collect() };
    // Live, in order: the first third. From offline storage (XEP-0160): the last third, sent
    // when n1 was known dead. The second third, lost with n1's queues, is in the archive only.
    assert_eq!(bodies(&live), expect(0..N / 3));
    assert_eq!(bodies(&offline), expect(2 * N / 3..N));
    assert_eq!(received, N / 3 + (N - 2 * N / 3));
    // The survivors keep serving: a message from alice to bob on n2 now.
    a.send("<message to='bob@localhost/b' type='chat'><body>after</body></message>")
        .await;
    let m = b
        .wait_for(|e| body(e).as_deref() == Some("after"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; n0 log: {}", nodes[0].log()));
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
}
