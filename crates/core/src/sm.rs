//! XEP-0198 Stream Management, the part that outlives a connection: the registry of resumable
//! sessions, hibernation (XEP-0198 §5: a resumable session whose connection dropped keeps its
//! routing entry and queue for a while) and the re-routing of unacknowledged messages when a
//! session with stream management ends unresumed (XEP-0198 §4 "the server SHOULD treat
//! unacknowledged stanzas ... as if they were never delivered", as Prosody's mod_smacks does).
//!
//! The per-connection counters are `canto_proto::sm::SmState`; the connection task
//! (`canto-net`) owns them while connected and hands them here when it hibernates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_proto::sm::SmState;
use canto_stanza::BareJid;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::server::Server;
use crate::session::{Closer, Outbound, SessionHandle};

/// How long a dropped resumable session waits for its client (XEP-0198 §5 `max`; Prosody's
/// `smacks_hibernation_time` defaults to 600 s).
pub const HIBERNATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Unacknowledged stanzas a session may accumulate before it is closed with
/// `policy-violation` (Prosody: `smacks_max_unacked_stanzas`-like bound on memory).
pub const MAX_UNACKED: usize = 500;

/// Unacknowledged outbound stanzas after which the server asks for an ack (`<r/>`).
pub const ACK_REQUEST_AFTER: usize = 5;

/// Everything a dropped session needs to continue on a new connection.
#[derive(Debug)]
pub struct Hibernated {
    /// The session (still in the routing table).
    pub handle: SessionHandle,
    /// Its outbound queue: what is routed to it meanwhile waits here.
    pub rx: mpsc::Receiver<Outbound>,
    /// Counters and the unacknowledged stanzas.
    pub sm: SmState,
    /// The session's closer (the handle closes through it).
    pub closer: Arc<Closer>,
}

#[derive(Debug)]
enum Entry {
    /// A connection serves the session. `takeover`: a new connection wants to resume it, so
    /// the old one hibernates whatever way it ends.
    Live {
        owner: BareJid,
        closer: Arc<Closer>,
        takeover: bool,
    },
    /// Waiting for a resumption; `token` identifies this hibernation for its timer.
    Hibernating {
        owner: BareJid,
        token: u64,
        state: Box<Hibernated>,
    },
}

/// What [`SmRegistry::begin_resume`] found.
#[derive(Debug)]
pub enum ResumeLookup {
    /// The hibernated session, now removed from the registry: the caller owns it.
    Ready(Box<Hibernated>),
    /// The old connection is still there; it has been told to close and will hibernate.
    /// Ask again shortly.
    Wait,
    /// Unknown, expired or someone else's id (XEP-0198 §5: `item-not-found`).
    NotFound,
}

/// Resumable sessions by resumption id.
#[derive(Debug)]
pub struct SmRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    timeout_ms: AtomicU64,
    next_token: AtomicU64,
}

impl Default for SmRegistry {
    fn default() -> Self {
        SmRegistry {
            entries: Mutex::new(HashMap::new()),
            timeout_ms: AtomicU64::new(HIBERNATION_TIMEOUT.as_millis() as u64),
            next_token: AtomicU64::new(1),
        }
    }
}

impl SmRegistry {
    /// The hibernation timeout in force.
    pub fn hibernation_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Changes the hibernation timeout (for tests; affects sessions hibernating from now on).
    pub fn set_hibernation_timeout(&self, d: Duration) {
        self.timeout_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Registers a live resumable session under a fresh, unguessable id (128 random bits).
    pub fn register(&self, owner: BareJid, closer: Arc<Closer>) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                id.clone(),
                Entry::Live {
                    owner,
                    closer,
                    takeover: false,
                },
            );
        }
        id
    }

    /// Forgets an id (the session ended for good).
    pub fn remove(&self, id: &str) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(id);
        }
    }

    /// Whether a new connection is taking this live session over (then the old connection
    /// hibernates however it ends).
    pub fn takeover_requested(&self, id: &str) -> bool {
        self.entries
            .lock()
            .map(|e| matches!(e.get(id), Some(Entry::Live { takeover: true, .. })))
            .unwrap_or(false)
    }

    /// A resumption attempt by `owner` for `id`.
    pub fn begin_resume(&self, id: &str, owner: &BareJid) -> ResumeLookup {
        let Ok(mut entries) = self.entries.lock() else {
            return ResumeLookup::NotFound;
        };
        match entries.get_mut(id) {
            Some(Entry::Live {
                owner: o,
                closer,
                takeover,
            }) if o == owner => {
                // XEP-0198 §5: the old connection is closed; its state moves over.
                if !*takeover {
                    *takeover = true;
                    closer.close(
                        canto_stanza::StreamError::new(canto_stanza::StreamCondition::Conflict)
                            .with_text("session resumed on another connection"),
                    );
                }
                ResumeLookup::Wait
            }
            Some(Entry::Hibernating { owner: o, .. }) if o == owner => match entries.remove(id) {
                Some(Entry::Hibernating { state, .. }) => ResumeLookup::Ready(state),
                _ => ResumeLookup::NotFound,
            },
            _ => ResumeLookup::NotFound,
        }
    }

    /// Marks a resumed session live again under its connection's closer.
    pub fn revive(&self, id: &str, owner: BareJid, closer: Arc<Closer>) {
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                id.to_string(),
                Entry::Live {
                    owner,
                    closer,
                    takeover: false,
                },
            );
        }
    }

    fn expire(&self, id: &str, token: u64) -> Option<Box<Hibernated>> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(id) {
            Some(Entry::Hibernating { token: t, .. }) if *t == token => match entries.remove(id) {
                Some(Entry::Hibernating { state, .. }) => Some(state),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Whether an unacknowledged stanza must not be lost: a `chat` or `normal` message with a body
/// (XEP-0198 §4 leaves the choice; Prosody re-routes these).
fn worth_rerouting(el: &canto_xml::Element) -> bool {
    el.is("message", canto_stanza::ns::CLIENT)
        && matches!(el.attr("type"), None | Some("chat" | "normal"))
        && el.children().any(|c| c.name() == "body")
}

impl Server {
    /// A resumable session's connection dropped (XEP-0198 §5): keep the session in the routing
    /// table, its queue and its counters for the hibernation timeout; then end it through
    /// [`Server::destroy_session`] and re-route what was not acknowledged.
    pub fn hibernate(self: &Arc<Self>, id: &str, state: Hibernated) {
        let token = self.sm.next_token.fetch_add(1, Ordering::Relaxed);
        let owner = state.handle.jid().to_bare();
        let timeout = self.sm.hibernation_timeout();
        info!(jid = %state.handle.jid(), ?timeout, "session hibernating");
        if let Ok(mut e) = self.sm.entries.lock() {
            e.insert(
                id.to_string(),
                Entry::Hibernating {
                    owner,
                    token,
                    state: Box::new(state),
                },
            );
        }
        let server = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(state) = server.sm.expire(&id, token) {
                let Hibernated { handle, rx, sm, .. } = *state;
                server.destroy_session(&handle, "hibernation timed out");
                server.reroute_unacked(&handle, sm, rx).await;
            }
        });
    }

    /// After a session with stream management ended (it is out of the routing table already):
    /// messages it never acknowledged, and those still queued for it, go to the account's other
    /// available resources or to offline storage (XEP-0160) — never lost.
    pub async fn reroute_unacked(
        self: &Arc<Self>,
        handle: &SessionHandle,
        mut sm: SmState,
        mut rx: mpsc::Receiver<Outbound>,
    ) {
        let mut pending = sm.take_unacked();
        rx.close();
        while let Ok(Outbound::Stanza(el)) = rx.try_recv() {
            pending.push(el);
        }
        let bare = handle.jid().to_bare();
        let mut n = 0usize;
        for el in pending {
            if !worth_rerouting(&el) {
                continue;
            }
            n += 1;
            let resources = self.sessions.resources(&bare);
            let best = resources
                .iter()
                .filter(|r| r.id() != handle.id() && r.is_available() && r.priority() >= 0)
                .max_by_key(|r| r.priority());
            let delivered = match best {
                Some(r) => r.deliver(el.clone()).is_ok(),
                None => false,
            };
            if !delivered && let Err(e) = self.store_offline(&bare, &el).await {
                debug!(error = ?e.condition, "re-routing an unacknowledged message failed");
            }
        }
        if n > 0 {
            info!(jid = %handle.jid(), messages = n, "unacknowledged messages re-routed");
        }
    }
}
