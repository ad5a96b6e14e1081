//! XEP-0198 Stream Management, the part that outlives a connection: the registry of resumable
//! sessions, hibernation (XEP-0198 §5: a resumable session whose connection dropped keeps its
//! routing entry and queue for a while) and the re-routing of unacknowledged messages when a
//! session with stream management ends unresumed (XEP-0198 §4 "the server SHOULD treat
//! unacknowledged stanzas ... as if they were never delivered", as Prosody's mod_smacks does).
//!
//! The per-connection counters are `canto_proto::sm::SmState`; the connection task
//! (`canto-net`) owns them while connected and hands them here when it hibernates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_proto::sm::SmState;
use canto_stanza::BareJid;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::server::Server;
use crate::session::{Closer, Outbound, SessionHandle};

// The limits (`[stream_management]`: resume_timeout, max_unacked, request_ack_after,
// answer_delay_ms, remember_expired) are in `crate::config::StreamManagementConfig`.

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
    /// Waiting for a resumption; `token` identifies this hibernation for its timer. Dropping
    /// `_resumed` (the entry leaves the registry) tells the timer it is over.
    Hibernating {
        owner: BareJid,
        token: u64,
        state: Box<Hibernated>,
        _resumed: oneshot::Sender<()>,
    },
}

/// A resumable session that ended: what a late `<resume/>` is told (XEP-0198 §5, `<failed
/// h='…'/>`: how many of its stanzas the server handled).
#[derive(Debug)]
struct Ended {
    owner: BareJid,
    handled: u32,
}

/// What [`SmRegistry::begin_resume`] found.
#[derive(Debug)]
pub enum ResumeLookup {
    /// The hibernated session, now removed from the registry: the caller owns it.
    Ready(Box<Hibernated>),
    /// The old connection is still there; it has been told to close and will hibernate.
    /// Ask again shortly.
    Wait,
    /// Unknown, expired or someone else's id (XEP-0198 §5: `item-not-found`); `h`: the
    /// stanzas the server handled, when the id is the owner's and ended recently.
    NotFound {
        /// For `<failed h='…'/>`.
        h: Option<u32>,
    },
}

/// Resumable sessions by resumption id.
#[derive(Debug)]
pub struct SmRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    /// Held per account while a session's leftover messages go elsewhere, so a message
    /// diverted because its hibernating session's queue was full is stored after that queue
    /// (order kept). Per account: one user's full queue never stalls another's delivery.
    reroute: crate::locks::KeyedLocks<BareJid>,
    /// Ended sessions by id, oldest first in `ended_order` (bounded, see [`SmRegistry::ended`]).
    ended: Mutex<(HashMap<String, Ended>, VecDeque<String>)>,
    next_token: AtomicU64,
}

impl Default for SmRegistry {
    fn default() -> Self {
        SmRegistry {
            entries: Mutex::new(HashMap::new()),
            reroute: Default::default(),
            ended: Mutex::new((HashMap::new(), VecDeque::new())),
            next_token: AtomicU64::new(1),
        }
    }
}

impl SmRegistry {
    /// Remembers that the session `id` ended having handled `handled` stanzas (the `cap` most
    /// recent ids are kept, the oldest forgotten first).
    fn ended(&self, id: &str, owner: BareJid, handled: u32, cap: usize) {
        let Ok(mut guard) = self.ended.lock() else {
            return;
        };
        let (map, order) = &mut *guard;
        while order.len() >= cap.max(1) {
            match order.pop_front() {
                Some(o) => {
                    map.remove(&o);
                }
                None => break,
            }
        }
        if cap > 0
            && map
                .insert(id.to_string(), Ended { owner, handled })
                .is_none()
        {
            order.push_back(id.to_string());
        }
    }

    /// What a late resumption of `id` by `owner` is told: the handled count, if known.
    fn ended_h(&self, id: &str, owner: &BareJid) -> Option<u32> {
        let guard = self.ended.lock().ok()?;
        guard
            .0
            .get(id)
            .filter(|e| &e.owner == owner)
            .map(|e| e.handled)
    }

    /// How many hibernating sessions there are (for tests and the admin view).
    pub fn hibernating(&self) -> usize {
        self.entries
            .lock()
            .map(|e| {
                e.values()
                    .filter(|x| matches!(x, Entry::Hibernating { .. }))
                    .count()
            })
            .unwrap_or(0)
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
            return ResumeLookup::NotFound { h: None };
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
                _ => ResumeLookup::NotFound { h: None },
            },
            Some(_) => ResumeLookup::NotFound { h: None },
            None => {
                drop(entries);
                ResumeLookup::NotFound {
                    h: self.ended_h(id, owner),
                }
            }
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

    /// See the `reroute` field: the lock of `owner`'s re-routing.
    pub async fn reroute_lock(&self, owner: &BareJid) -> crate::locks::KeyedGuard<BareJid> {
        self.reroute.lock(owner).await
    }

    /// Takes the hibernating entry of session `session`, if it is hibernating.
    fn take_hibernating(
        &self,
        session: crate::session::SessionId,
    ) -> Option<(String, Box<Hibernated>)> {
        let mut entries = self.entries.lock().ok()?;
        let id = entries.iter().find_map(|(id, e)| match e {
            Entry::Hibernating { state, .. } if state.handle.id() == session => Some(id.clone()),
            _ => None,
        })?;
        match entries.remove(&id) {
            Some(Entry::Hibernating { state, .. }) => Some((id, state)),
            _ => None,
        }
    }

    /// Takes every hibernating session out of the registry (shutdown).
    fn take_all_hibernating(&self) -> Vec<(String, Box<Hibernated>)> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let ids: Vec<String> = entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Hibernating { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| match entries.remove(&id) {
                Some(Entry::Hibernating { state, .. }) => Some((id, state)),
                _ => None,
            })
            .collect()
    }
}

/// Whether an unacknowledged stanza must not be lost: a `chat` or `normal` message with a body
/// (XEP-0198 §4 leaves the choice; Prosody re-routes these).
pub(crate) fn worth_rerouting(el: &canto_xml::Element) -> bool {
    el.is("message", canto_stanza::ns::CLIENT)
        && matches!(el.attr("type"), None | Some("chat" | "normal"))
        && el.children().any(|c| c.name() == "body")
}

impl Server {
    /// `[stream_management] resume_timeout`: how long a dropped resumable session waits.
    /// Zero: no resumption.
    pub fn resume_timeout(&self) -> Duration {
        Duration::from_secs(self.config().stream_management.resume_timeout)
    }

    /// A resumable session's connection dropped (XEP-0198 §5): keep the session in the routing
    /// table, its queue and its counters for the resume timeout; then end it through
    /// [`Server::destroy_session`] and re-route what was not acknowledged. It ends early when
    /// something asks it to close meanwhile: its queue filled up (what overflows goes to
    /// offline storage, see the router), the same resource was bound again, the account was
    /// deleted.
    pub fn hibernate(self: &Arc<Self>, id: &str, state: Hibernated) {
        let token = self.sm.next_token.fetch_add(1, Ordering::Relaxed);
        let owner = state.handle.jid().to_bare();
        let lock_owner = owner.clone();
        let timeout = self.resume_timeout();
        let closer = state.closer.clone();
        let (resumed_tx, mut resumed_rx) = oneshot::channel();
        info!(jid = %state.handle.jid(), ?timeout, "session hibernating");
        if let Ok(mut e) = self.sm.entries.lock() {
            e.insert(
                id.to_string(),
                Entry::Hibernating {
                    owner,
                    token,
                    state: Box::new(state),
                    _resumed: resumed_tx,
                },
            );
        }
        let server = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let (reason, request) = tokio::select! {
                _ = tokio::time::sleep(timeout) => ("hibernation timed out", None),
                r = closer.closed() => ("closed while hibernating", Some(r)),
                // Resumed: the entry (and the sender) left the registry.
                _ = &mut resumed_rx => return,
            };
            let _order = server.sm.reroute_lock(&lock_owner).await;
            match server.sm.expire(&id, token) {
                Some(state) => server.end_hibernated(&id, *state, reason).await,
                // Resumed at the same moment: the close request is the new connection's.
                None => {
                    if let Some(r) = request {
                        closer.close(r);
                    }
                }
            }
        });
    }

    /// Ends a hibernated session for good: out of the routing table (unavailable presence
    /// and all, [`Server::destroy_session`]), its unacknowledged and queued messages
    /// re-routed, its id remembered for a late `<resume/>`.
    async fn end_hibernated(self: &Arc<Self>, id: &str, state: Hibernated, reason: &str) {
        let Hibernated { handle, rx, sm, .. } = state;
        self.sm_ended(id, &handle, &sm);
        self.destroy_session(&handle, reason);
        self.reroute_unacked(&handle, sm, rx).await;
    }

    /// Records that the resumable session `id` is over (XEP-0198 §5: a later `<resume/>`
    /// fails with the `h` it needs).
    pub fn sm_ended(&self, id: &str, handle: &SessionHandle, sm: &SmState) {
        let c = &self.config().stream_management;
        self.sm.remove(id);
        self.sm
            .ended(id, handle.jid().to_bare(), sm.handled(), c.remember_expired);
    }

    /// Shutdown: every hibernating session ends now, its unacknowledged messages to offline
    /// storage, rather than being lost with the process.
    pub async fn end_all_hibernating(self: &Arc<Self>) {
        for (id, state) in self.sm.take_all_hibernating() {
            let _order = self.sm.reroute_lock(&state.handle.jid().to_bare()).await;
            self.end_hibernated(&id, *state, "server shutting down")
                .await;
        }
    }

    /// Ends `session` now if it is hibernating (caller holds [`SmRegistry::reroute_lock`]).
    pub async fn end_hibernating_session(self: &Arc<Self>, session: &SessionHandle, reason: &str) {
        if let Some((id, state)) = self.sm.take_hibernating(session.id()) {
            self.end_hibernated(&id, *state, reason).await;
        }
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
        // The account was deleted meanwhile: nothing to keep for it.
        if !self.account_exists(&bare).await {
            return;
        }
        let mut n = 0usize;
        for el in pending {
            if !worth_rerouting(&el) {
                continue;
            }
            let resources = self.sessions.resources(&bare);
            let others = || {
                resources
                    .iter()
                    .filter(|r| r.id() != handle.id() && r.is_available() && r.priority() >= 0)
            };
            // XEP-0280 §8: a resource with carbons enabled got a `<received/>` copy when the
            // message was first delivered; sending it again would show it twice.
            if crate::carbons::eligible(&el) && others().any(|r| r.carbons_enabled()) {
                continue;
            }
            n += 1;
            let best = others().max_by_key(|r| r.priority());
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
