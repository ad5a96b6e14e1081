//! What nodes say to each other over NATS (JSON; docs/cluster.md lists the subjects).

use serde::{Deserialize, Serialize};

/// The routing facts of one session (session.txt), as its node last published them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The session number on its node.
    pub id: u64,
    /// `full_jid`.
    pub jid: String,
    /// An available resource.
    pub available: bool,
    /// RFC 6121 §4.7.2.3 priority.
    pub priority: i32,
    /// The last broadcast presence (serialized), while available.
    pub presence: Option<String>,
    /// An interested resource (fetched the roster).
    pub interested: bool,
    /// XEP-0280 carbons enabled.
    pub carbons: bool,
    /// XEP-0191 blocklist fetched.
    pub blocklist: bool,
    /// When it was bound (ms since the epoch): of two bindings of one full JID on two nodes,
    /// the newer wins.
    pub bound_ms: u64,
    /// Modules' facts (`SessionHandle::set_ext`): PEP's `+notify` interest.
    #[serde(default)]
    pub ext: Vec<(String, String)>,
}

/// One message between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// Every `heartbeat_ms`, on the gossip subject: the node is alive, and `seq` is the number
    /// of its last session message.
    Beat {
        /// Node name.
        node: String,
        /// Random per process start.
        inc: u64,
        /// Last session message number.
        seq: u64,
        /// Local sessions.
        sessions: usize,
        /// When the process started (ms since the epoch).
        started_ms: u64,
    },
    /// A session was bound or its facts changed.
    Session {
        /// Node name.
        node: String,
        /// Incarnation.
        inc: u64,
        /// Message number.
        seq: u64,
        /// The facts.
        facts: Facts,
    },
    /// A session ended.
    Ended {
        /// Node name.
        node: String,
        /// Incarnation.
        inc: u64,
        /// Message number.
        seq: u64,
        /// Session number.
        id: u64,
    },
    /// An account's roster or blocklist changed: drop cached copies.
    Account {
        /// Node name.
        node: String,
        /// Bare JID.
        jid: String,
    },
    /// The node is leaving.
    Bye {
        /// Node name.
        node: String,
        /// Incarnation.
        inc: u64,
    },
    /// To `PREFIX.sync.NODE`: send me your sessions.
    SyncRequest {
        /// The asking node.
        from: String,
    },
    /// To `PREFIX.snapshot.NODE`: part of a snapshot.
    Chunk {
        /// Node name.
        node: String,
        /// Incarnation.
        inc: u64,
        /// Sessions.
        sessions: Vec<Facts>,
    },
    /// The end of a snapshot: it was taken at message `seq` and had `count` sessions.
    SnapshotEnd {
        /// Node name.
        node: String,
        /// Incarnation.
        inc: u64,
        /// Message number it is current to.
        seq: u64,
        /// Sessions in it.
        count: usize,
    },
    /// To `PREFIX.kick.NODE`: close session `id` with this stream error.
    Kick {
        /// Session number.
        id: u64,
        /// RFC 6120 §4.9.3 condition name.
        condition: String,
        /// Text.
        text: Option<String>,
    },
}

impl Msg {
    /// The message number of a session message (0 for others).
    pub fn seq(&self) -> u64 {
        match self {
            Msg::Session { seq, .. } | Msg::Ended { seq, .. } => *seq,
            _ => 0,
        }
    }
}

/// A node's answer to `canto cluster status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Incarnation.
    pub incarnation: u64,
    /// Process start (ms since the epoch).
    pub started_ms: u64,
    /// Full JIDs of its sessions.
    pub sessions: Vec<String>,
    /// Mirrors of other nodes' sessions it holds.
    pub mirrors: usize,
    /// The other nodes it sees alive.
    pub peers: Vec<String>,
}
