//! Cluster mode (issue 15; docs/cluster.md): several Canto nodes serve the same domains, with
//! one PostgreSQL for what persists and one NATS for what is transient. Nothing here is a
//! consensus layer; each node is the only authority on its own sessions, and tells the others.
//!
//! - **Session registry.** Every node publishes the routing facts of its local sessions
//!   (bound, available with presence and priority, interested, carbons, blocklist fetched,
//!   ended) on one gossip subject, numbered per node. The others keep *mirrors* of them in
//!   the core's routing table, so the core routes to them as to local sessions. A gap in the
//!   numbers, a new node or a restarted one (new incarnation) makes a node ask the other for a
//!   snapshot. Heartbeats carry the number; a node silent for `node_timeout_ms` is dead: its
//!   mirrors go, and each node tells its own sessions that the dead node's users are
//!   unavailable.
//! - **Routing.** What the core queues for a mirror, one forwarding task per mirror publishes
//!   to the owning node's delivery subject, in order (NATS keeps one publisher's order), and
//!   that node queues it for the session: the same bounded queue and the same slow-reader
//!   rule. A stanza for a session that ended meanwhile goes where an unacknowledged one would
//!   (another resource, or offline storage); one that cannot be published (NATS down) too.
//! - **Caches.** A roster or blocklist written on one node is dropped from the others' caches.
//! - **Hosted services.** Each room (each JID with a node part at a service) and each
//!   service's own domain is handled on one node: the first of the live nodes by rendezvous
//!   hashing. When that node dies the next one takes over, loading persistent rooms from
//!   storage.

mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use canto_core::Server;
use canto_core::cluster::ClusterLink;
use canto_core::config::ClusterConfig;
use canto_core::session::{Closer, Outbound, SessionHandle, SessionId, SessionObserver};
use canto_stanza::{BareJid, FullJid, Jid, StreamCondition, StreamError, ns};
use canto_xml::Element;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use wire::{Facts, Msg, NodeStatus};

/// A running cluster member. Dropping it does not leave the cluster: call [`Cluster::leave`].
pub struct Cluster {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

struct Inner {
    server: Arc<Server>,
    client: async_nats::Client,
    node: Arc<str>,
    incarnation: u64,
    started_ms: u64,
    cfg: ClusterConfig,
    subjects: Subjects,
    state: Mutex<State>,
    /// Stanzas for hosted services on other nodes, published in order by one task.
    to_services: mpsc::Sender<(String, String, Element)>,
}

/// Stanzas for services on other nodes waiting to be published; beyond it a stanza is served
/// on this node rather than queued without bound.
const SERVICE_QUEUE: usize = 16 * 1024;

/// NATS subjects, all under `subject_prefix`.
struct Subjects {
    prefix: String,
    gossip: String,
}

impl Subjects {
    fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
            gossip: format!("{prefix}.gossip"),
        }
    }
    fn of(&self, kind: &str, node: &str) -> String {
        format!("{}.{kind}.{node}", self.prefix)
    }
    fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }
}

#[derive(Default)]
struct State {
    /// This node's bound sessions by id, with when they were bound (ms since the epoch).
    local: HashMap<SessionId, (SessionHandle, u64)>,
    /// The number of this node's last gossip about its sessions.
    seq: u64,
    peers: HashMap<Arc<str>, Peer>,
}

struct Peer {
    incarnation: u64,
    last_seen: Instant,
    /// The last of its session messages applied here.
    applied: u64,
    /// While a snapshot is awaited: the session messages that arrived meanwhile.
    syncing: Option<Vec<Msg>>,
    /// When the snapshot was asked for (asked again if it never comes).
    sync_asked: Instant,
    /// Chunks of the snapshot received so far.
    snapshot: Vec<Facts>,
    /// Its sessions, by its own session id, as mirrors here.
    sessions: HashMap<u64, SessionHandle>,
    started_ms: u64,
    reported: usize,
}

impl Peer {
    fn new(incarnation: u64, started_ms: u64) -> Peer {
        Peer {
            incarnation,
            last_seen: Instant::now(),
            applied: 0,
            syncing: None,
            sync_asked: Instant::now(),
            snapshot: Vec::new(),
            sessions: HashMap::new(),
            started_ms,
            reported: 0,
        }
    }
}

/// What the core's session observer hands to the publishing task.
enum Local {
    Changed(SessionHandle),
    Ended(SessionHandle),
}

struct Observer(mpsc::UnboundedSender<Local>);

impl SessionObserver for Observer {
    fn changed(&self, session: &SessionHandle) {
        let _ = self.0.send(Local::Changed(session.clone()));
    }
    fn ended(&self, session: &SessionHandle) {
        let _ = self.0.send(Local::Ended(session.clone()));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This machine's host name (the default node name).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "canto".into())
}

/// Connects to NATS with the options every cluster client uses.
pub async fn connect(cfg: &ClusterConfig, name: &str) -> Result<async_nats::Client, String> {
    let urls: Vec<&str> = cfg
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => warn!("NATS connection lost; reconnecting"),
                async_nats::Event::Connected => info!("NATS connected"),
                other => debug!(event = %other, "NATS"),
            }
        });
    opts.connect(urls)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", cfg.nats_url))
}

impl Cluster {
    /// Joins the cluster: connects to NATS (retrying in the background when it is not up, so
    /// the node serves its local users meanwhile), installs the session observer and the
    /// core's cluster link, and starts gossiping. Call before the listeners open.
    pub async fn start(server: Arc<Server>) -> Result<Cluster, String> {
        let config = server.config();
        let cfg = config.cluster.clone();
        let node: Arc<str> = if cfg.node_name.is_empty() {
            host_name().into()
        } else {
            cfg.node_name.as_str().into()
        };
        let client = connect(&cfg, &format!("canto-{node}")).await?;
        let subjects = Subjects::new(&cfg.subject_prefix);
        let (to_services, services_rx) = mpsc::channel(SERVICE_QUEUE);
        let inner = Arc::new(Inner {
            to_services,
            server: server.clone(),
            client,
            node: node.clone(),
            incarnation: rand::random::<u64>() | 1,
            started_ms: now_ms(),
            cfg,
            subjects,
            state: Mutex::new(State::default()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        server.sessions.set_observer(Arc::new(Observer(tx)));
        server.set_cluster(inner.clone() as Arc<dyn ClusterLink>);
        let c = &inner.client;
        let s = &inner.subjects;
        let subscribe = |subject: String| async move {
            c.subscribe(subject)
                .await
                .map_err(|e| format!("NATS subscribe: {e}"))
        };
        let gossip = subscribe(s.gossip.clone()).await?;
        let deliver = subscribe(s.of("deliver", &node)).await?;
        let kick = subscribe(s.of("kick", &node)).await?;
        let service = subscribe(s.of("service", &node)).await?;
        let sync = subscribe(s.of("sync", &node)).await?;
        let snapshot = subscribe(s.of("snapshot", &node)).await?;
        let status = subscribe(s.status()).await?;
        tokio::spawn(inner.clone().publish_local(rx, stop_rx.clone()));
        tokio::spawn(inner.clone().on_gossip(gossip, stop_rx.clone()));
        tokio::spawn(inner.clone().on_deliver(deliver, stop_rx.clone()));
        tokio::spawn(inner.clone().on_kick(kick, stop_rx.clone()));
        tokio::spawn(inner.clone().on_service(service, stop_rx.clone()));
        tokio::spawn(inner.clone().on_sync(sync, stop_rx.clone()));
        tokio::spawn(inner.clone().on_snapshot(snapshot, stop_rx.clone()));
        tokio::spawn(inner.clone().on_status(status, stop_rx.clone()));
        tokio::spawn(
            inner
                .clone()
                .publish_to_services(services_rx, stop_rx.clone()),
        );
        tokio::spawn(inner.clone().heartbeat(stop_rx));
        info!(node = %node, nats = %inner.cfg.nats_url, "cluster joined");
        Ok(Cluster { inner, stop })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the NATS connection is up (as the client knows it).
    pub fn connected(&self) -> bool {
        self.inner.connected()
    }

    /// The live nodes (this one first) and how many sessions each reported.
    pub fn nodes(&self) -> Vec<(String, usize)> {
        self.inner.nodes()
    }

    /// Stops without a goodbye, as a crashed node looks to the others (they drop its
    /// sessions after `node_timeout_ms`). For tests of that path in one process.
    pub fn vanish(self) {
        let _ = self.stop.send(true);
    }

    /// Leaves the cluster: tells the others (who drop this node's mirrors at once rather than
    /// after `node_timeout_ms`) and stops. Sessions should have ended first (shutdown).
    pub async fn leave(self) {
        let msg = Msg::Bye {
            node: self.inner.node.to_string(),
            inc: self.inner.incarnation,
        };
        self.inner
            .publish(self.inner.subjects.gossip.clone(), &msg)
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.client.flush()).await;
        let _ = self.stop.send(true);
    }
}

impl ClusterLink for Inner {
    fn account_changed(&self, user: &BareJid) {
        let msg = Msg::Account {
            node: self.node.to_string(),
            jid: user.to_string(),
        };
        let me = self.client.clone();
        let subject = self.subjects.gossip.clone();
        if let Ok(payload) = serde_json::to_vec(&msg) {
            tokio::spawn(async move {
                if let Err(e) = me.publish(subject, payload.into()).await {
                    warn!(error = %e, "cluster: telling the other nodes of a roster change failed");
                }
            });
        }
    }

    fn service_owner(&self, domain: &str, to: &Jid) -> Option<Arc<str>> {
        // A room is its bare JID; anything else at the service (its own domain) is one key.
        let key = match to.node() {
            Some(_) => to.to_bare().to_string(),
            None => domain.to_string(),
        };
        if !self.connected() {
            // Without NATS this node serves what reaches it (docs/cluster.md).
            return None;
        }
        let owner = self.owner_of(&key);
        (owner != self.node).then_some(owner)
    }

    fn forward_to_service(&self, node: &str, domain: &str, el: Element) {
        let subject = self.subjects.of("service", node);
        if let Err(e) = self.to_services.try_send((subject, domain.to_string(), el)) {
            // Too many waiting (NATS stalled): served here rather than queued without bound.
            let (_, domain, el) = e.into_inner();
            warn!(service = %domain, "cluster: service forward queue full; handled here");
            let server = self.server.clone();
            tokio::spawn(async move { server.deliver_to_local_service(&domain, el).await });
        }
    }
}

/// Rendezvous (highest random weight) hashing: the node with the highest hash of
/// (key, node) owns the key, so a node leaving moves only its own keys.
fn weight(key: &str, node: &str) -> u64 {
    // FNV-1a over key, a separator and node: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(std::iter::once(0xff)).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix, so that nodes whose names differ in the last byte spread well.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The owner of `key` among `nodes`.
pub fn owner_among<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .max_by_key(|n| (weight(key, n), std::cmp::Reverse(*n)))
}

impl Inner {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owner_of(&self, key: &str) -> Arc<str> {
        let st = self.lock();
        let nodes = std::iter::once(&*self.node).chain(st.peers.keys().map(|n| &**n));
        owner_among(key, nodes).map_or_else(|| self.node.clone(), Arc::from)
    }

    fn nodes(&self) -> Vec<(String, usize)> {
        let st = self.lock();
        let mut out = vec![(self.node.to_string(), st.local.len())];
        let mut peers: Vec<(String, usize)> = st
            .peers
            .iter()
            .map(|(n, p)| (n.to_string(), p.sessions.len()))
            .collect();
        peers.sort();
        out.extend(peers);
        out
    }

    async fn publish(&self, subject: String, msg: &Msg) -> bool {
        let Ok(payload) = serde_json::to_vec(msg) else {
            return false;
        };
        match self.client.publish(subject, payload.into()).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "cluster: publish failed");
                false
            }
        }
    }

    fn facts(handle: &SessionHandle, bound_ms: u64) -> Facts {
        Facts {
            id: handle.id(),
            jid: handle.jid().to_string(),
            available: handle.is_available(),
            priority: handle.priority(),
            presence: handle
                .presence()
                .map(|p| String::from_utf8_lossy(&p.to_bytes_in(ns::CLIENT)).into_owned()),
            interested: handle.is_interested(),
            carbons: handle.carbons_enabled(),
            blocklist: handle.wants_blocklist(),
            bound_ms,
            ext: handle.exts(),
        }
    }

    /// Publishes what the core's observer reports of local sessions, numbered.
    async fn publish_local(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Local>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = stop.changed() => None,
            };
            let Some(ev) = ev else { return };
            let msg = {
                let mut st = self.lock();
                match ev {
                    Local::Changed(h) => {
                        let bound = match st.local.entry(h.id()) {
                            std::collections::hash_map::Entry::Occupied(e) => e.get().1,
                            std::collections::hash_map::Entry::Vacant(e) => {
                                if self.server.sessions.get(h.jid()).map(|x| x.id()) != Some(h.id())
                                {
                                    // Ended before this was seen.
                                    continue;
                                }
                                let b = now_ms();
                                e.insert((h.clone(), b));
                                b
                            }
                        };
                        st.seq += 1;
                        Msg::Session {
                            node: self.node.to_string(),
                            inc: self.incarnation,
                            seq: st.seq,
                            facts: Self::facts(&h, bound),
                        }
                    }
                    Local::Ended(h) => {
                        if st.local.remove(&h.id()).is_none() {
                            continue;
                        }
                        st.seq += 1;
                        Msg::Ended {
                            node: self.node.to_string(),
                            inc: self.incarnation,
                            seq: st.seq,
                            id: h.id(),
                        }
                    }
                }
            };
            self.publish(self.subjects.gossip.clone(), &msg).await;
        }
    }

    /// Publishes stanzas for services on other nodes, in the order they were routed.
    async fn publish_to_services(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<(String, String, Element)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut payload = Vec::with_capacity(512);
        loop {
            let next = tokio::select! {
                n = rx.recv() => n,
                _ = stop.changed() => None,
            };
            let Some((subject, domain, el)) = next else {
                return;
            };
            payload.clear();
            payload.extend_from_slice(domain.as_bytes());
            payload.push(b'\n');
            el.write_to(&mut payload, ns::CLIENT);
            let sent = self.connected()
                && self
                    .client
                    .publish(subject, Bytes::copy_from_slice(&payload))
                    .await
                    .is_ok();
            if !sent {
                // NATS is down: served here rather than lost.
                self.server.deliver_to_local_service(&domain, el).await;
            }
        }
    }

    /// Heartbeats, and the check for dead nodes and snapshots that never came.
    async fn heartbeat(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = Duration::from_millis(self.cfg.heartbeat_ms);
        let timeout = Duration::from_millis(self.cfg.node_timeout_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let (beat, dead, resync, died) = {
                let mut st = self.lock();
                let beat = Msg::Beat {
                    node: self.node.to_string(),
                    inc: self.incarnation,
                    seq: st.seq,
                    sessions: st.local.len(),
                    started_ms: self.started_ms,
                };
                let dead: Vec<Arc<str>> = st
                    .peers
                    .iter()
                    .filter(|(_, p)| p.last_seen.elapsed() > timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                let mut lost = Vec::new();
                for n in &dead {
                    if let Some(p) = st.peers.remove(n) {
                        warn!(node = %n, sessions = p.sessions.len(), "cluster node lost (no heartbeat)");
                        lost.extend(p.sessions.into_values());
                    }
                }
                let resync: Vec<Arc<str>> = st
                    .peers
                    .iter_mut()
                    .filter(|(_, p)| p.syncing.is_some() && p.sync_asked.elapsed() > 2 * period)
                    .map(|(n, p)| {
                        p.sync_asked = Instant::now();
                        n.clone()
                    })
                    .collect();
                (beat, lost, resync, !dead.is_empty())
            };
            self.publish(self.subjects.gossip.clone(), &beat).await;
            for n in resync {
                self.ask_sync(&n).await;
            }
            let changed = !dead.is_empty() || died;
            for m in dead {
                self.server.mirror_lost(&m).await;
            }
            if changed {
                self.server.cluster_changed().await;
            }
        }
    }

    async fn ask_sync(&self, node: &str) {
        let msg = Msg::SyncRequest {
            from: self.node.to_string(),
        };
        self.publish(self.subjects.of("sync", node), &msg).await;
    }

    /// Gossip from every node (this one's own included, ignored).
    async fn on_gossip(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Ok(msg) = serde_json::from_slice::<Msg>(&m.payload) else {
                warn!("cluster: malformed gossip ignored");
                continue;
            };
            self.gossip(msg).await;
        }
    }

    async fn gossip(&self, msg: Msg) {
        let (node, inc) = match &msg {
            Msg::Beat { node, inc, .. }
            | Msg::Session { node, inc, .. }
            | Msg::Ended { node, inc, .. }
            | Msg::Bye { node, inc } => (node.clone(), *inc),
            Msg::Account { node, jid } => {
                if *node != *self.node
                    && let Ok(j) = BareJid::new(jid)
                {
                    self.server.forget_account_caches(&j).await;
                }
                return;
            }
            _ => return,
        };
        if *node == *self.node {
            return;
        }
        let mut lost = Vec::new();
        let mut ask = false;
        let mut apply = Vec::new();
        let mut membership = false;
        {
            let mut st = self.lock();
            if let Msg::Bye { .. } = msg {
                if let Some(p) = st.peers.get(node.as_str())
                    && p.incarnation == inc
                    && let Some(p) = st.peers.remove(node.as_str())
                {
                    info!(node = %node, "cluster node left");
                    lost.extend(p.sessions.into_values());
                    membership = true;
                }
            } else {
                let key: Arc<str> = node.as_str().into();
                let started = match &msg {
                    Msg::Beat { started_ms, .. } => *started_ms,
                    _ => 0,
                };
                let fresh = match st.peers.get(&key) {
                    Some(p) => p.incarnation != inc,
                    None => true,
                };
                if fresh {
                    // A node never heard of, or restarted: its old sessions are gone; its
                    // current ones come in a snapshot.
                    if let Some(old) = st.peers.remove(&key) {
                        lost.extend(old.sessions.into_values());
                    }
                    let mut p = Peer::new(inc, started);
                    p.syncing = Some(Vec::new());
                    st.peers.insert(key.clone(), p);
                    info!(node = %node, "cluster node joined");
                    ask = true;
                    membership = true;
                }
                if let Some(p) = st.peers.get_mut(&key) {
                    p.last_seen = Instant::now();
                    match msg {
                        Msg::Beat {
                            seq,
                            sessions,
                            started_ms,
                            ..
                        } => {
                            p.reported = sessions;
                            p.started_ms = started_ms;
                            if p.syncing.is_none() && seq > p.applied {
                                // Session gossip went missing: start again from a snapshot.
                                debug!(node = %node, seq, applied = p.applied, "cluster: gossip gap");
                                p.syncing = Some(Vec::new());
                                p.sync_asked = Instant::now();
                                ask = true;
                            }
                        }
                        Msg::Session { .. } | Msg::Ended { .. } => {
                            let seq = msg.seq();
                            if let Some(buf) = &mut p.syncing {
                                buf.push(msg);
                            } else if seq == p.applied + 1 {
                                p.applied = seq;
                                apply.push(msg);
                            } else if seq > p.applied {
                                p.syncing = Some(vec![msg]);
                                p.sync_asked = Instant::now();
                                ask = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for m in lost {
            self.server.mirror_lost(&m).await;
        }
        if membership {
            self.server.cluster_changed().await;
        }
        if ask {
            self.ask_sync(&node).await;
        }
        for m in apply {
            self.apply(&node, m).await;
        }
    }

    /// Applies one session message from `node` (already in order).
    async fn apply(&self, node: &str, msg: Msg) {
        match msg {
            Msg::Session { facts, .. } => self.upsert(node, facts),
            Msg::Ended { id, .. } => {
                let gone = {
                    let mut st = self.lock();
                    st.peers.get_mut(node).and_then(|p| p.sessions.remove(&id))
                };
                if let Some(m) = gone {
                    // Its own node broadcast its unavailable presence through the router; here
                    // it only leaves the table.
                    self.server.destroy_session(&m, "ended on its cluster node");
                }
            }
            _ => {}
        }
    }

    /// Creates or updates the mirror of session `facts.id` of `node`.
    fn upsert(&self, node: &str, facts: Facts) {
        let Ok(jid) = FullJid::new(&facts.jid) else {
            warn!(
                node,
                jid = facts.jid,
                "cluster: session with a bad JID ignored"
            );
            return;
        };
        let presence = facts
            .presence
            .as_deref()
            .and_then(|x| decode(x.as_bytes(), self.cfg.max_forward_bytes))
            .map(Arc::new);
        let existing = {
            let st = self.lock();
            st.peers
                .get(node)
                .and_then(|p| p.sessions.get(&facts.id).cloned())
        };
        let handle = match existing {
            Some(h) => h,
            None => {
                // RFC 6120 §7.7.2.2 across nodes: of two bindings of one full JID the newer
                // wins (ties by node name), decided alike on both nodes.
                if let Some(local) = self.server.sessions.get(&jid)
                    && local.is_local()
                {
                    let local_bound = self.lock().local.get(&local.id()).map_or(0, |(_, b)| *b);
                    if (local_bound, &*self.node) > (facts.bound_ms, node) {
                        return;
                    }
                    self.server
                        .destroy_session(&local, "replaced by a newer session on another node");
                    local.close(
                        StreamError::new(StreamCondition::Conflict)
                            .with_text("replaced by a new connection"),
                    );
                }
                let cap = self.server.config().c2s.max_send_queue.max(1);
                let (tx, rx) = mpsc::channel(cap);
                let closer = Closer::new();
                let node_name: Arc<str> = node.into();
                let Ok(bound) = self.server.sessions.bind_mirror(
                    jid,
                    node_name.clone(),
                    (tx, cap),
                    closer.clone(),
                ) else {
                    return;
                };
                if let Some(old) = bound.replaced
                    && !old.is_local()
                {
                    let mut st = self.lock();
                    for p in st.peers.values_mut() {
                        p.sessions.retain(|_, h| h.id() != old.id());
                    }
                }
                let h = bound.handle;
                {
                    let mut st = self.lock();
                    match st.peers.get_mut(node) {
                        Some(p) => {
                            p.sessions.insert(facts.id, h.clone());
                        }
                        None => {
                            drop(st);
                            self.server.sessions.remove(&h);
                            return;
                        }
                    }
                }
                // XEP-0191 §3.3 fails closed: a stanza to a user whose blocklist cannot be
                // read is refused. Read it now, while storage answers, so that an outage
                // later does not cut this session off from this node's users.
                let server = self.server.clone();
                let bare = h.jid().to_bare();
                tokio::spawn(async move {
                    let _ = server.try_blocklist(&bare).await;
                });
                tokio::spawn(forward(
                    self.client.clone(),
                    self.server.clone(),
                    self.subjects.of("deliver", node).into(),
                    self.subjects.of("kick", node).into(),
                    facts.id,
                    h.clone(),
                    rx,
                    closer,
                ));
                h
            }
        };
        // The facts, as the other node's setters left them.
        let avail = presence.filter(|_| facts.available);
        if avail.is_some() || handle.is_available() {
            handle.set_presence(avail, facts.priority);
        }
        if facts.interested {
            handle.set_interested();
        }
        if facts.blocklist {
            handle.set_wants_blocklist();
        }
        handle.set_carbons(facts.carbons);
        handle.replace_exts(facts.ext);
    }

    /// Stanzas other nodes route to this node's sessions.
    async fn on_deliver(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Some((id, hops, xml)) = split_delivery(&m.payload) else {
                warn!("cluster: malformed delivery ignored");
                continue;
            };
            let Some(el) = decode(xml, self.cfg.max_forward_bytes) else {
                warn!("cluster: undecodable delivery ignored");
                continue;
            };
            let target = self.lock().local.get(&id).map(|(h, _)| h.clone());
            let el = Arc::new(el);
            let delivered = match &target {
                Some(h) => h.deliver(el.clone()),
                None => Err(canto_core::session::DeliveryError::Gone),
            };
            if delivered == Err(canto_core::session::DeliveryError::Gone) {
                let server = self.server.clone();
                let el = Arc::unwrap_or_clone(el);
                tokio::spawn(async move { server.reroute_orphan(id, el, hops + 1).await });
            }
        }
    }

    /// Another node closes one of this node's sessions (a newer binding there, an account
    /// deleted there, a slow reader of what it forwarded).
    async fn on_kick(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Ok(Msg::Kick {
                id,
                condition,
                text,
            }) = serde_json::from_slice::<Msg>(&m.payload)
            else {
                continue;
            };
            let target = self.lock().local.get(&id).map(|(h, _)| h.clone());
            if let Some(h) = target {
                let cond =
                    StreamCondition::from_name(&condition).unwrap_or(StreamCondition::Conflict);
                let mut err = StreamError::new(cond);
                if let Some(t) = text {
                    err = err.with_text(t);
                }
                if cond == StreamCondition::Conflict {
                    // Destroyed before the other node's session goes on (as a local
                    // replacement is, negotiation.rs).
                    self.server
                        .destroy_session(&h, "replaced on another cluster node");
                }
                h.close(err);
            }
        }
    }

    async fn on_service(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Some(pos) = m.payload.iter().position(|b| *b == b'\n') else {
                continue;
            };
            let Ok(domain) = std::str::from_utf8(&m.payload[..pos]) else {
                continue;
            };
            let Some(el) = decode(&m.payload[pos + 1..], self.cfg.max_forward_bytes) else {
                continue;
            };
            self.server.deliver_to_local_service(domain, el).await;
        }
    }

    /// Answers a snapshot request: this node's sessions in chunks, then the number they
    /// bring the requester up to.
    async fn on_sync(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        const CHUNK: usize = 200;
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Ok(Msg::SyncRequest { from }) = serde_json::from_slice::<Msg>(&m.payload) else {
                continue;
            };
            let (seq, facts) = {
                let st = self.lock();
                let facts: Vec<Facts> =
                    st.local.values().map(|(h, b)| Self::facts(h, *b)).collect();
                (st.seq, facts)
            };
            let subject = self.subjects.of("snapshot", &from);
            let count = facts.len();
            let mut rest = facts;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(CHUNK));
                let chunk = Msg::Chunk {
                    node: self.node.to_string(),
                    inc: self.incarnation,
                    sessions: std::mem::replace(&mut rest, tail),
                };
                self.publish(subject.clone(), &chunk).await;
            }
            let end = Msg::SnapshotEnd {
                node: self.node.to_string(),
                inc: self.incarnation,
                seq,
                count,
            };
            self.publish(subject, &end).await;
        }
    }

    /// Snapshots this node asked for.
    async fn on_snapshot(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            match serde_json::from_slice::<Msg>(&m.payload) {
                Ok(Msg::Chunk {
                    node,
                    inc,
                    sessions,
                }) => {
                    let mut st = self.lock();
                    if let Some(p) = st.peers.get_mut(node.as_str())
                        && p.incarnation == inc
                        && p.syncing.is_some()
                    {
                        p.snapshot.extend(sessions);
                    }
                }
                Ok(Msg::SnapshotEnd {
                    node,
                    inc,
                    seq,
                    count,
                }) => self.snapshot_end(&node, inc, seq, count).await,
                _ => {}
            }
        }
    }

    async fn snapshot_end(&self, node: &str, inc: u64, seq: u64, count: usize) {
        let (facts, stale, buffered) = {
            let mut st = self.lock();
            let Some(p) = st.peers.get_mut(node) else {
                return;
            };
            if p.incarnation != inc || p.syncing.is_none() {
                return;
            }
            let facts = std::mem::take(&mut p.snapshot);
            if facts.len() != count {
                // A chunk went missing: ask again.
                p.sync_asked = Instant::now()
                    .checked_sub(Duration::from_secs(3600))
                    .unwrap_or_else(Instant::now);
                return;
            }
            let keep: std::collections::HashSet<u64> = facts.iter().map(|f| f.id).collect();
            let stale: Vec<SessionHandle> = p
                .sessions
                .iter()
                .filter(|(id, _)| !keep.contains(id))
                .map(|(_, h)| h.clone())
                .collect();
            p.sessions.retain(|id, _| keep.contains(id));
            let buffered: Vec<Msg> = p
                .syncing
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.seq() > seq)
                .collect();
            p.applied = seq;
            (facts, stale, buffered)
        };
        for m in stale {
            self.server.mirror_lost(&m).await;
        }
        for f in facts {
            self.upsert(node, f);
        }
        debug!(node, seq, count, "cluster: snapshot applied");
        for m in buffered {
            let next = {
                let mut st = self.lock();
                match st.peers.get_mut(node) {
                    Some(p) if m.seq() == p.applied + 1 => {
                        p.applied += 1;
                        true
                    }
                    Some(p) => {
                        if m.seq() > p.applied {
                            // Still a gap: the next heartbeat asks again.
                            p.syncing = Some(Vec::new());
                        }
                        false
                    }
                    None => false,
                }
            };
            if next {
                self.apply(node, m).await;
            }
        }
    }

    /// `canto cluster status` asks every node.
    async fn on_status(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(m) = next(&mut sub, &mut stop).await else {
                return;
            };
            let Some(reply) = m.reply else { continue };
            let status = {
                let st = self.lock();
                let mut sessions: Vec<String> = st
                    .local
                    .values()
                    .map(|(h, _)| h.jid().to_string())
                    .collect();
                sessions.sort();
                let mut peers: Vec<String> = st.peers.keys().map(|n| n.to_string()).collect();
                peers.sort();
                NodeStatus {
                    node: self.node.to_string(),
                    incarnation: self.incarnation,
                    started_ms: self.started_ms,
                    sessions,
                    mirrors: self.server.sessions.mirrors(),
                    peers,
                }
            };
            if let Ok(payload) = serde_json::to_vec(&status) {
                let _ = self.client.publish(reply, payload.into()).await;
            }
        }
    }
}

/// The next message of `sub`, or `None` once it ends or the node stops.
async fn next(
    sub: &mut async_nats::Subscriber,
    stop: &mut watch::Receiver<bool>,
) -> Option<async_nats::Message> {
    tokio::select! {
        m = sub.next() => m,
        _ = stop.changed() => None,
    }
}

/// Forwards what the core queues for the mirror of session `id` to its node, in order; a close
/// asked of the mirror goes there as a kick.
#[allow(clippy::too_many_arguments)]
async fn forward(
    client: async_nats::Client,
    server: Arc<Server>,
    deliver: async_nats::Subject,
    kick: async_nats::Subject,
    id: u64,
    mirror: SessionHandle,
    mut rx: mpsc::Receiver<Outbound>,
    closer: Arc<Closer>,
) {
    // `"<id> 0\n"`, the same before every stanza for this session (hops 0: routed here).
    let head = format!("{id} 0\n");
    loop {
        tokio::select! {
            biased;
            out = rx.recv() => {
                let Some(Outbound::Stanza(el)) = out else { return };
                let mut buf = Vec::with_capacity(head.len() + 256);
                buf.extend_from_slice(head.as_bytes());
                el.write_to(&mut buf, ns::CLIENT);
                let sent = client.connection_state() == async_nats::connection::State::Connected
                    && client.publish(deliver.clone(), buf.into()).await.is_ok();
                if !sent {
                    // NATS is down: a message goes where an unacknowledged one would (an
                    // available resource here, else offline storage), never lost.
                    let server = server.clone();
                    let mirror_id = mirror.id();
                    tokio::spawn(async move {
                        server.reroute_orphan(mirror_id, Arc::unwrap_or_clone(el), 1).await;
                    });
                }
            }
            err = closer.closed() => {
                let msg = Msg::Kick {
                    id,
                    condition: err.condition.as_str().to_string(),
                    text: err.text.clone(),
                };
                if let Ok(payload) = serde_json::to_vec(&msg) {
                    let _ = client.publish(kick.clone(), payload.into()).await;
                }
                return;
            }
        }
    }
}

/// `"<id> <hops>\n<stanza>"`.
fn split_delivery(payload: &[u8]) -> Option<(u64, u32, &[u8])> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&payload[..nl]).ok()?;
    let (id, hops) = head.split_once(' ')?;
    Some((id.parse().ok()?, hops.parse().ok()?, &payload[nl + 1..]))
}

/// Parses one stanza another node serialized (in `jabber:client`), within `max` bytes.
pub fn decode(bytes: &[u8], max: usize) -> Option<Element> {
    canto_core::roster::decode_element_within(bytes, max)
}

/// Asks every node for its status (`canto cluster status`): the answers that arrive within
/// `wait`, sorted by node name.
pub async fn status(cfg: &ClusterConfig, wait: Duration) -> Result<Vec<NodeStatus>, String> {
    let client = connect(cfg, "canto-cluster-status").await?;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("NATS subscribe: {e}"))?;
    client
        .publish_with_reply(
            Subjects::new(&cfg.subject_prefix).status(),
            inbox,
            Bytes::new(),
        )
        .await
        .map_err(|e| format!("NATS publish: {e}"))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(s) = serde_json::from_slice::<NodeStatus>(&m.payload) {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_lost_nodes_keys() {
        let nodes = ["a", "b", "c"];
        let keys: Vec<String> = (0..300).map(|i| format!("room{i}@conference.x")).collect();
        let before: Vec<&str> = keys
            .iter()
            .map(|k| owner_among(k, nodes).unwrap_or_default())
            .collect();
        // Spread: every node owns some.
        for n in nodes {
            let c = before.iter().filter(|o| **o == n).count();
            assert!(c > 50, "{n} owns {c} of 300");
        }
        let after: Vec<&str> = keys
            .iter()
            .map(|k| owner_among(k, ["a", "c"]).unwrap_or_default())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "b" {
                assert_eq!(b, a, "a key of a surviving node moved");
            } else {
                assert_ne!(*a, "b");
            }
        }
    }

    #[test]
    fn delivery_framing() {
        assert_eq!(
            split_delivery(b"42 1\n<message/>"),
            Some((42, 1, &b"<message/>"[..]))
        );
        assert_eq!(split_delivery(b"42\n<message/>"), None);
        assert_eq!(split_delivery(b"x 1\n<message/>"), None);
        assert_eq!(split_delivery(b"no newline"), None);
    }

    #[test]
    fn decode_round_trips_and_bounds() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "a@x/r")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi <&>"));
        let bytes = el.to_bytes_in(ns::CLIENT);
        let back = decode(&bytes, 4096).unwrap_or_else(|| panic!("decode"));
        assert_eq!(back.to_bytes_in(ns::CLIENT), bytes);
        assert!(decode(&bytes, 10).is_none(), "over the limit");
        assert!(decode(b"<message><body></message>", 4096).is_none());
    }
}
