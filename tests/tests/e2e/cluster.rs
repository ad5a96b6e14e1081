//! Cluster mode (issue 15, docs/cluster.md) with nodes in this process: a real `nats-server`
//! (Debian's package) per test, nodes sharing one storage as they share one database. The
//! three-process cluster with PostgreSQL and SIGKILL is cluster_procs.rs.

use std::time::Duration;

use canto_storage::Storage;
use canto_tests::*;
use canto_xml::Element;

const CARBONS: &str = "urn:xmpp:carbons:2";

/// A `nats-server` on a free loopback port, killed on drop.
pub struct Nats {
    pub proc: Option<Proc>,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Nats {
        let port = free_addr().port();
        let mut n = Nats { proc: None, port };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server (Debian package nats-server; .ci/run installs it): {e}")
            });
        self.proc = Some(Proc(child));
        // Ready when it accepts connections.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < end, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGKILL), as a NATS outage.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            let _ = p.0.wait();
        }
    }
}

/// A config for node `name` of a cluster on `nats` with subjects under `prefix`.
fn node_config(nats: &Nats, prefix: &str, name: &str) -> canto_core::Config {
    let mut c = test_config();
    c.modules.push("carbons".into());
    c.storage.backend = "sqlite".into();
    c.cluster.nats_url = nats.url();
    c.cluster.node_name = name.into();
    c.cluster.subject_prefix = prefix.into();
    c.cluster.heartbeat_ms = 100;
    c.cluster.node_timeout_ms = 700;
    c
}

fn prefix() -> String {
    format!("t{:x}", rand::random::<u64>())
}

/// `n` nodes on one storage.
async fn nodes(nats: &Nats, n: usize) -> (Vec<TestServer>, Storage) {
    let storage = Storage::memory();
    let p = prefix();
    let mut out = Vec::new();
    for i in 0..n {
        let s = TestServer::with_storage(node_config(nats, &p, &format!("n{i}")), storage.clone())
            .await;
        out.push(s);
    }
    for u in ["alice", "bob", "carol"] {
        out[0].add_user(u, "pw").await;
    }
    (out, storage)
}

/// Waits until every node holds a mirror of every session bound on the others and sees every
/// other node.
async fn converged(nodes: &[TestServer]) {
    let ok = poll_until(Duration::from_secs(10), || {
        let total: usize = nodes
            .iter()
            .map(|n| n.running.server.sessions.count())
            .sum();
        nodes.iter().all(|n| {
            let s = &n.running.server.sessions;
            let peers = n
                .running
                .cluster
                .as_ref()
                .map_or(0, |c| c.nodes().len().saturating_sub(1));
            s.mirrors() == total - s.count() && peers == nodes.len() - 1
        }) && facts_agree(nodes)
    })
    .await;
    let view: Vec<(usize, usize)> = nodes
        .iter()
        .map(|n| {
            let s = &n.running.server.sessions;
            (s.count(), s.mirrors())
        })
        .collect();
    assert!(
        ok,
        "the nodes did not converge: (local, mirrors) per node {view:?}"
    );
}

/// Every node's mirror of every session has the facts its own node has.
fn facts_agree(nodes: &[TestServer]) -> bool {
    nodes.iter().all(|home| {
        home.running.server.sessions.all().iter().all(|s| {
            nodes.iter().all(|other| {
                let m = other.running.server.sessions.get(s.jid());
                m.is_some_and(|m| {
                    m.is_available() == s.is_available()
                        && m.priority() == s.priority()
                        && m.is_interested() == s.is_interested()
                        && m.carbons_enabled() == s.carbons_enabled()
                        && m.exts() == s.exts()
                })
            })
        })
    })
}

async fn available(c: &mut Client) {
    c.send("<presence/>").await;
    c.sync().await;
}

async fn body_from(c: &mut Client, from: &str) -> String {
    let from = from.to_string();
    let m = c
        .wait_for(move |e| {
            e.name() == "message" && e.attr("from") == Some(from.as_str()) && body(e).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    body(&m).unwrap_or_default()
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", canto_stanza::ns::CLIENT)
        .map(Element::text)
}

/// `x` (as `xjid`) subscribes to `yjid`'s presence, and `y` approves.
async fn subscribe(x: &mut Client, xjid: &str, y: &mut Client, yjid: &str) {
    x.send(&format!("<presence to='{yjid}' type='subscribe'/>"))
        .await;
    let xj = xjid.to_string();
    y.wait_for(move |e| {
        e.name() == "presence"
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some(xj.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("subscribe from {xjid}: {e:#}"));
    y.send(&format!("<presence to='{xjid}' type='subscribed'/>"))
        .await;
    let yj = yjid.to_string();
    x.wait_for(move |e| {
        e.name() == "presence"
            && e.attr("type") == Some("subscribed")
            && e.attr("from") == Some(yj.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("subscribed from {yjid}: {e:#}"));
}

/// Makes alice and bob mutual contacts through the real subscription flow, across nodes.
async fn befriend(a: &mut Client, b: &mut Client) {
    subscribe(a, "alice@localhost", b, "bob@localhost").await;
    subscribe(b, "bob@localhost", a, "alice@localhost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_presence_roster_pushes_and_carbons_cross_nodes() {
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 3).await;
    let mut a = n[0].login("alice", "pw", "a1").await;
    let mut b = n[1].login("bob", "pw", "b1").await;
    let mut a2 = n[2].login("alice", "pw", "a2").await;
    // Roster fetched: interested resources, which get pushes wherever they are.
    for c in [&mut a, &mut b, &mut a2] {
        let r = c
            .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.attr("type"), Some("result"));
    }
    for c in [&mut a, &mut b, &mut a2] {
        available(c).await;
    }
    converged(&n).await;
    befriend(&mut a, &mut b).await;
    // RFC 6121 §2.1.6: alice's other resource, on the third node, got the roster pushes of a
    // subscription made on the first.
    let push = a2
        .wait_for(|e| {
            e.name() == "iq"
                && e.attr("type") == Some("set")
                && e.get_child("query", "jabber:iq:roster")
                    .and_then(|q| q.get_child("item", "jabber:iq:roster"))
                    .is_some_and(|i| {
                        i.attr("jid") == Some("bob@localhost")
                            && i.attr("subscription") == Some("both")
                    })
        })
        .await;
    assert!(push.is_ok(), "no roster push on the other node: {push:?}");
    // RFC 6121 §4.2.2: bob (node 1) gets alice's presence from both her nodes.
    for r in ["alice@localhost/a1", "alice@localhost/a2"] {
        let got = b
            .wait_for(move |e| e.name() == "presence" && e.attr("from") == Some(r))
            .await;
        assert!(got.is_ok(), "bob did not see {r}: {got:?}");
    }
    // XEP-0280 on alice's resource on node 2.
    let en = a2
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(en.attr("type"), Some("result"));
    // The carbons fact reaches the other nodes before the messages do.
    let ok = poll_until(Duration::from_secs(5), || {
        n[0].running
            .server
            .sessions
            .get(&"alice@localhost/a2".parse().unwrap_or_else(|_| panic!()))
            .is_some_and(|h| h.carbons_enabled())
    })
    .await;
    assert!(ok, "node 0 never learnt that a2 enabled carbons");
    // In order, across nodes: 30 messages a1 → bob's full JID.
    for i in 0..30 {
        a.send(&format!(
            "<message to='bob@localhost/b1' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    for i in 0..30 {
        assert_eq!(
            body_from(&mut b, "alice@localhost/a1").await,
            format!("m{i}")
        );
    }
    // §7: a2 got <sent/> copies of what a1 sent.
    let sent = a2
        .wait_for(|e| e.name() == "message" && e.get_child("sent", CARBONS).is_some())
        .await;
    assert!(sent.is_ok(), "no sent carbon on the other node: {sent:?}");
    // RFC 6121 §8.5.2.1.1: bob → alice's bare JID reaches both her resources (same priority).
    b.send("<message to='alice@localhost' type='chat'><body>hi both</body></message>")
        .await;
    assert_eq!(body_from(&mut a, "bob@localhost/b1").await, "hi both");
    assert_eq!(body_from(&mut a2, "bob@localhost/b1").await, "hi both");
    // An IQ to a full JID on another node and its answer.
    b.send("<iq type='get' id='xping' to='alice@localhost/a2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    // alice's client answers by hand.
    let ping = a2
        .wait_for(|e| e.name() == "iq" && e.attr("from") == Some("bob@localhost/b1"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let id = ping.attr("id").unwrap_or_default().to_string();
    a2.send(&format!(
        "<iq type='result' id='{id}' to='bob@localhost/b1'/>"
    ))
    .await;
    let ok = b
        .wait_for(move |e| e.name() == "iq" && e.attr("id") == Some(id.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ok.attr("type"), Some("result"));
    assert_eq!(ok.attr("from"), Some("alice@localhost/a2"));
    // Unavailable when a resource leaves, seen on the other node (destroy_session there).
    drop(a2);
    let gone = b
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("from") == Some("alice@localhost/a2")
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(gone.is_ok(), "no unavailable from a2: {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_binding_on_another_node_replaces_the_older() {
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 2).await;
    let mut old = n[0].login("alice", "pw", "phone").await;
    converged(&n).await;
    // RFC 6120 §7.7.2.2: the same full JID bound on the other node wins; the old session
    // gets <conflict/>.
    let mut new = n[1].login("alice", "pw", "phone").await;
    let err = old.expect_stream_error().await;
    assert_eq!(err, "conflict");
    converged(&n).await;
    assert_eq!(n[0].running.server.sessions.count(), 0);
    assert_eq!(n[1].running.server.sessions.count(), 1);
    // The new one works, from a third account on the first node.
    let mut b = n[0].login("bob", "pw", "b").await;
    converged(&n).await;
    b.send("<message to='alice@localhost/phone' type='chat'><body>still there?</body></message>")
        .await;
    assert_eq!(body_from(&mut new, "bob@localhost/b").await, "still there?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_user_offline_everywhere_is_stored_and_delivered_on_another_node() {
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 2).await;
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut b = n[1].login("bob", "pw", "b").await;
    available(&mut b).await;
    converged(&n).await;
    drop(b);
    // Bob's session ends on node 1; node 0 hears it and stores the message (XEP-0160).
    let ok = poll_until(Duration::from_secs(5), || {
        n[0].running.server.sessions.mirrors() == 0
    })
    .await;
    assert!(ok, "node 0 kept a mirror of a session that ended");
    a.send("<message to='bob@localhost' type='chat'><body>later</body></message>")
        .await;
    a.sync().await;
    let mut b = n[1].login("bob", "pw", "b2").await;
    b.send("<presence/>").await;
    assert_eq!(body_from(&mut b, "alice@localhost/a").await, "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_going_away_keeps_local_users_served_and_recovers_without_restart() {
    let mut nats = Nats::start();
    let (n, storage) = nodes(&nats, 2).await;
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut c = n[0].login("carol", "pw", "c").await;
    let mut b = n[1].login("bob", "pw", "b").await;
    for x in [&mut a, &mut b, &mut c] {
        available(x).await;
    }
    converged(&n).await;
    nats.stop();
    // Local users go on: alice → carol on the same node.
    a.send("<message to='carol@localhost/c' type='chat'><body>local</body></message>")
        .await;
    assert_eq!(body_from(&mut c, "alice@localhost/a").await, "local");
    // Once node 0 knows NATS is gone, a message to bob on the other node cannot cross: it is
    // kept in offline storage, not lost.
    let noticed = poll_until(Duration::from_secs(10), || {
        n[0].running
            .cluster
            .as_ref()
            .is_some_and(|c| !c.connected())
    })
    .await;
    assert!(noticed, "node 0 never noticed NATS was gone");
    a.send("<message to='bob@localhost/b' type='chat'><body>while down</body></message>")
        .await;
    let mut stored = 0;
    for _ in 0..200 {
        stored = storage
            .archive
            .count(
                "offline",
                "localhost",
                "bob",
                &canto_storage::ArchiveQuery::default(),
            )
            .await
            .unwrap_or(0);
        if stored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored, 1,
        "the message sent while NATS was down is neither delivered nor stored"
    );
    // The nodes drop each other after node_timeout_ms.
    let ok = poll_until(Duration::from_secs(10), || {
        n.iter().all(|x| x.running.server.sessions.mirrors() == 0)
    })
    .await;
    assert!(ok, "mirrors of the unreachable node stayed");
    // NATS back: the nodes find each other again and route across, without a restart.
    nats.restart();
    converged(&n).await;
    a.send("<message to='bob@localhost/b' type='chat'><body>after</body></message>")
        .await;
    assert_eq!(body_from(&mut b, "alice@localhost/a").await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_lists_nodes_and_sessions() {
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 2).await;
    let _a = n[0].login("alice", "pw", "a").await;
    let _b = n[1].login("bob", "pw", "b").await;
    converged(&n).await;
    let cfg = n[0].running.server.config().cluster.clone();
    let st = canto_cluster::status(&cfg, Duration::from_millis(800))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = st.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(names, ["n0", "n1"]);
    assert_eq!(st[0].sessions, ["alice@localhost/a"]);
    assert_eq!(st[1].sessions, ["bob@localhost/b"]);
    assert_eq!(st[0].peers, ["n1"]);
    let text = canto::cli::cluster_status_text(&st, true);
    assert!(text.starts_with("2 nodes, 2 sessions\n"), "{text}");
    assert!(text.contains("    bob@localhost/b\n"), "{text}");
}

const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// A room name whose owner (rendezvous hashing over n0..n{k-1}) is node `owner`.
fn room_owned_by(owner: usize, k: usize) -> String {
    let names: Vec<String> = (0..k).map(|i| format!("n{i}")).collect();
    (0..)
        .map(|i| format!("room{i}@conference.localhost"))
        .find(|r| {
            canto_cluster::owner_among(r, names.iter().map(String::as_str))
                == Some(names[owner].as_str())
        })
        .unwrap_or_default()
}

/// XEP-0045 §10.1.2: the creator accepts the default configuration (an instant room).
async fn instant_room(c: &mut Client, room: &str) {
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

async fn join(c: &mut Client, room: &str, nick: &str) -> Element {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let me = format!("{room}/{nick}");
    c.wait_for(move |e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
        .await
        .unwrap_or_else(|e| panic!("join {room} as {nick}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_lives_on_one_node_and_its_occupants_on_any() {
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 3).await;
    // The room is owned by node 2; its occupants are on nodes 0 and 1.
    let room = room_owned_by(2, 3);
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut b = n[1].login("bob", "pw", "b").await;
    available(&mut a).await;
    available(&mut b).await;
    converged(&n).await;
    let own = join(&mut a, &room, "Alice").await;
    let codes: Vec<&str> = own
        .get_child("x", MUC_USER)
        .map(|x| x.children().filter_map(|c| c.attr("code")).collect())
        .unwrap_or_default();
    // XEP-0045 §10.1.1: created (201), self (110).
    assert!(codes.contains(&"201") && codes.contains(&"110"), "{own}");
    instant_room(&mut a, &room).await;
    // The room's state is on node 2 only.
    join(&mut b, &room, "Bob").await;
    let from_bob = format!("{room}/Bob");
    a.wait_for(move |e| e.name() == "presence" && e.attr("from") == Some(from_bob.as_str()))
        .await
        .unwrap_or_else(|e| panic!("alice did not see bob join: {e:#}"));
    b.send(&format!(
        "<message to='{room}' type='groupchat'><body>across</body></message>"
    ))
    .await;
    for c in [&mut a, &mut b] {
        let m = c
            .wait_for(|e| e.name() == "message" && body(e).is_some())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(body(&m).as_deref(), Some("across"));
        assert_eq!(m.attr("from"), Some(format!("{room}/Bob").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_is_taken_over_when_its_node_leaves() {
    let nats = Nats::start();
    let (mut n, _storage) = nodes(&nats, 2).await;
    let room = room_owned_by(1, 2);
    let mut a = n[0].login("alice", "pw", "a").await;
    available(&mut a).await;
    converged(&n).await;
    join(&mut a, &room, "Alice").await;
    // A persistent room (XEP-0045 §10.2, muc#roomconfig_persistentroom), named.
    let r = a
        .iq(&format!(
            "<iq type='set' id='{{id}}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
             <field var='muc#roomconfig_roomname'><value>Kept</value></field>\
             </x></query></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Its node stops (cleanly: a goodbye, so the other takes over at once).
    let owner = n.remove(1);
    if let Some(c) = owner.running.cluster {
        c.leave().await;
    }
    owner.running.network.shutdown(Duration::from_secs(2)).await;
    let ok = poll_until(Duration::from_secs(5), || {
        n[0].running
            .cluster
            .as_ref()
            .is_some_and(|c| c.nodes().len() == 1)
    })
    .await;
    assert!(ok, "node 0 still sees node 1");
    // Node 0 now serves the room from storage: its configuration survived.
    let info = a
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{room}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(info.attr("type"), Some("result"), "{info}");
    let name = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.get_child("identity", "http://jabber.org/protocol/disco#info"))
        .and_then(|i| i.attr("name"))
        .map(str::to_string);
    assert_eq!(name.as_deref(), Some("Kept"), "{info}");
    assert!(
        info.get_child("query", "http://jabber.org/protocol/disco#info")
            .is_some_and(|q| q
                .children()
                .any(|f| f.attr("var") == Some("muc_persistent"))),
        "{info}"
    );
    // And alice can rejoin it there.
    let own = join(&mut a, &room, "Alice").await;
    assert!(own.attr("type").is_none(), "{own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_go_unavailable_and_leave_rooms_elsewhere() {
    let nats = Nats::start();
    let (mut n, _storage) = nodes(&nats, 3).await;
    // The room lives on node 1; alice (node 0) and bob (node 2) are in it and are contacts.
    let room = room_owned_by(1, 3);
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut b = n[2].login("bob", "pw", "b").await;
    available(&mut a).await;
    available(&mut b).await;
    converged(&n).await;
    subscribe(&mut a, "alice@localhost", &mut b, "bob@localhost").await;
    a.wait_for(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/b"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    join(&mut a, &room, "Alice").await;
    instant_room(&mut a, &room).await;
    join(&mut b, &room, "Bob").await;
    let bob_in_room = format!("{room}/Bob");
    let seen = bob_in_room.clone();
    a.wait_for(move |e| e.name() == "presence" && e.attr("from") == Some(seen.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Node 2 goes silent (no goodbye), as a crashed node would.
    let dead = n.remove(2);
    if let Some(c) = dead.running.cluster {
        c.vanish();
    }
    // RFC 6121 §4.5.2, done by the survivors: alice hears bob is unavailable, and the room
    // (XEP-0045 §7.14) says Bob left, in whichever order.
    let (mut roster_gone, mut room_gone) = (false, false);
    while !(roster_gone && room_gone) {
        let e = a
            .next()
            .await
            .unwrap_or_else(|e| panic!("roster {roster_gone}, room {room_gone}: {e:#}"));
        if e.name() == "presence" && e.attr("type") == Some("unavailable") {
            roster_gone |= e.attr("from") == Some("bob@localhost/b");
            room_gone |= e.attr("from") == Some(bob_in_room.as_str());
        }
    }
    // Messages to bob now go to offline storage (his node is known dead).
    assert_eq!(n[0].running.server.sessions.mirrors(), 0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifications_reach_interested_contacts_on_other_nodes() {
    use crate::pep::{TUNE, announce, assert_item_event, is_event, publish};
    let nats = Nats::start();
    let (n, _storage) = nodes(&nats, 2).await;
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut b = n[1].login("bob", "pw", "b").await;
    available(&mut a).await;
    available(&mut b).await;
    converged(&n).await;
    // bob follows alice's presence, so her PEP nodes of the presence model (XEP-0163 §4.3.2).
    subscribe(&mut b, "bob@localhost", &mut a, "alice@localhost").await;
    // bob's caps ask for tune (+notify, XEP-0163 §4.3.3), learnt by his node.
    let announced = announce(&mut b, &[TUNE]).await;
    assert!(announced.queried);
    converged(&n).await;
    let bob_b: canto_stanza::FullJid = "bob@localhost/b".parse().unwrap_or_else(|_| panic!());
    let mirror_has_caps = poll_until(Duration::from_secs(5), || {
        n[0].running.server.sessions.get(&bob_b).is_some_and(|h| {
            h.presence()
                .is_some_and(|p| p.has_child("c", "http://jabber.org/protocol/caps"))
        })
    })
    .await;
    assert!(mirror_has_caps, "node 0 never saw bob's caps");
    publish(&mut a, None, TUNE, Some("t1"), "Roundabout").await;
    // alice's node knows bob's interest from the session facts his node published: no
    // second caps query (XEP-0115 §6.2) from node 0, the notification comes at once.
    let event = b
        .wait_for(|e| is_event(e, "alice@localhost", "items", TUNE) || e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        is_event(&event, "alice@localhost", "items", TUNE),
        "{event}"
    );
    assert_item_event(&event, "t1", "Roundabout");
    assert_eq!(event.attr("to"), Some("bob@localhost/b"));
    // Interest ends with it: a resource that announces no caps gets nothing.
    publish(&mut a, None, TUNE, Some("t2"), "Heart of the Sunrise").await;
    let e = b
        .wait_for(|e| is_event(e, "alice@localhost", "items", TUNE) || e.name() == "iq")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(is_event(&e, "alice@localhost", "items", TUNE), "{e}");
    assert_item_event(&e, "t2", "Heart of the Sunrise");
}

/// A TCP proxy to PostgreSQL that can be cut (every connection closed, new ones refused) and
/// restored, as a database server going away and coming back.
struct CutProxy {
    port: u16,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl CutProxy {
    async fn start(target: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (tx, _) = tokio::sync::watch::channel(true);
        let up = std::sync::Arc::new(tx);
        let up2 = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up2.borrow() {
                    continue;
                }
                let mut down = up2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        CutProxy { port, up }
    }

    fn set(&self, up: bool) {
        // `send` would not store the value while no connection holds a receiver.
        self.up.send_replace(up);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_keeps_online_users_served_and_recovers_without_restart() {
    let db = canto_storage::testing::fresh_postgres_db("outage")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // postgres://user@127.0.0.1:PORT/db → through the proxy.
    let (head, rest) = db.split_once("@").unwrap_or_else(|| panic!("{db}"));
    let (hostport, dbname) = rest.split_once('/').unwrap_or_else(|| panic!("{db}"));
    let target: std::net::SocketAddr = hostport.parse().unwrap_or_else(|e| panic!("{e}"));
    let proxy = CutProxy::start(target).await;
    let url = format!("{head}@127.0.0.1:{}/{dbname}", proxy.port);
    let storage = Storage::open(&canto_storage::Backend::Postgres { url, pool_size: 4 })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let nats = Nats::start();
    let p = prefix();
    let mut n = Vec::new();
    for i in 0..2 {
        let mut c = node_config(&nats, &p, &format!("n{i}"));
        c.storage.backend = "postgresql".into();
        n.push(TestServer::with_storage(c, storage.clone()).await);
    }
    for u in ["alice", "bob", "carol"] {
        n[0].add_user(u, "pw").await;
    }
    let mut a = n[0].login("alice", "pw", "a").await;
    let mut c = n[0].login("carol", "pw", "c").await;
    let mut b = n[1].login("bob", "pw", "b").await;
    for x in [&mut a, &mut b, &mut c] {
        available(x).await;
    }
    converged(&n).await;

    proxy.set(false);
    // A login needs the database: refused with a temporary failure (RFC 6120 §6.5.12), not
    // a hang and not a wrong-password answer.
    let mut d = n[1].connect().await;
    d.open(HOST).await;
    d.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    d.open(HOST).await;
    let err = d
        .auth_scram(canto_proto::sasl::HashAlgo::Sha256, "carol", "pw", None)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("temporary-auth-failure"), "{err}");
    // Online users still reach each other (the archive write fails: the message is
    // delivered without an archive id, not refused; docs/cluster.md).
    a.send("<message to='carol@localhost/c' type='chat'><body>db down</body></message>")
        .await;
    assert_eq!(body_from(&mut c, "alice@localhost/a").await, "db down");
    a.send("<message to='bob@localhost/b' type='chat'><body>db down too</body></message>")
        .await;
    assert_eq!(body_from(&mut b, "alice@localhost/a").await, "db down too");

    // Back: logins work again without a restart.
    proxy.set(true);
    let mut ok = false;
    for _ in 0..50 {
        let mut d = n[1].connect().await;
        d.open(HOST).await;
        d.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
        d.open(HOST).await;
        if d.auth_scram(canto_proto::sasl::HashAlgo::Sha256, "carol", "pw", None)
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no login after the database came back");
    a.send("<message to='bob@localhost/b' type='chat'><body>db back</body></message>")
        .await;
    assert_eq!(body_from(&mut b, "alice@localhost/a").await, "db back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_reaches_users_on_any_node() {
    use crate::federation::{Pki, resolver};
    // a.test is a cluster of two nodes: n0 takes incoming server streams (its SRV record),
    // n1 opens its own outgoing ones (docs/cluster.md: s2s on any node). b.test is a single
    // Canto. Certificates from one test CA: SASL EXTERNAL, nothing else shared.
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let dns = || std::sync::Arc::new(resolver(&[("a.test", pa), ("b.test", pb)]));
    let nats = Nats::start();
    let p = prefix();
    let storage = Storage::memory();
    let a_cert = pki.issue(&["a.test"]);
    let mut n = Vec::new();
    for i in 0..2 {
        let mut c = node_config(&nats, &p, &format!("n{i}"));
        c.hosts = vec!["a.test".into()];
        c.s2s.listen = if i == 0 {
            vec![format!("127.0.0.1:{pa}")]
        } else {
            Vec::new()
        };
        c.s2s.ca_file = pki.ca_pem.clone();
        c.certificates.insert(
            "a.test".into(),
            canto_core::config::CertificateConfig {
                certificate: a_cert.0.clone(),
                key: a_cert.1.clone(),
            },
        );
        n.push(TestServer::with_resolver_and_storage(c, storage.clone(), dns()).await);
    }
    n[0].add_user_on("a.test", "alice", "pw").await;
    let mut cb = test_config();
    cb.hosts = vec!["b.test".into()];
    cb.s2s.listen = vec![format!("127.0.0.1:{pb}")];
    cb.s2s.ca_file = pki.ca_pem.clone();
    let b_cert = pki.issue(&["b.test"]);
    cb.certificates.insert(
        "b.test".into(),
        canto_core::config::CertificateConfig {
            certificate: b_cert.0,
            key: b_cert.1,
        },
    );
    let b = TestServer::with_resolver(cb, dns()).await;
    b.add_user_on("b.test", "bob", "pw").await;
    // alice on n1, which has no s2s listener; bob on b.test.
    let mut alice = n[1]
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "phone")
        .await;
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "laptop")
        .await;
    available(&mut alice).await;
    available(&mut bob).await;
    converged(&n).await;
    // In: b.test → n0 (the SRV target) → over the cluster to alice on n1.
    bob.send("<message to='alice@a.test/phone' type='chat'><body>from afar</body></message>")
        .await;
    assert_eq!(
        body_from(&mut alice, "bob@b.test/laptop").await,
        "from afar"
    );
    // Out: n1 opens its own stream to b.test.
    alice
        .send("<message to='bob@b.test/laptop' type='chat'><body>and back</body></message>")
        .await;
    assert_eq!(body_from(&mut bob, "alice@a.test/phone").await, "and back");
    // And to the bare JID, delivered by priority whichever node holds the session.
    bob.send("<message to='alice@a.test' type='chat'><body>bare</body></message>")
        .await;
    assert_eq!(body_from(&mut alice, "bob@b.test/laptop").await, "bare");
}
