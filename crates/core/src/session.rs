//! The session manager: Prosody's `core/sessionmanager.lua` in Rust types.
//!
//! A connection becomes a *connected resource* when it binds (it then has a [`SessionHandle`] in
//! the routing table), an *available resource* once it sends initial presence (its last broadcast
//! presence is kept, reset by unavailable), and an *interested resource* once it fetches the
//! roster. Sessions leave the table only through `Server::destroy_session`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use canto_stanza::{BareJid, Condition, FullJid, StanzaError, StreamError};
use canto_xml::Element;
use tokio::sync::{Notify, mpsc};

/// Process-unique session number.
pub type SessionId = u64;

/// What a connection's writer is asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Serialize and send a stanza. The element is shared: allocated once however many
    /// sessions it is delivered to, serialized once per delivery.
    Stanza(Arc<Element>),
}

/// Lets anyone holding a handle end the connection with a stream error (conflict, slow reader,
/// shutdown). The connection task waits on it.
#[derive(Debug, Default)]
pub struct Closer {
    notify: Notify,
    reason: Mutex<Option<StreamError>>,
}

impl Closer {
    /// A fresh closer.
    pub fn new() -> Arc<Closer> {
        Arc::new(Closer::default())
    }

    /// Asks the connection to close with `err` (the first reason wins).
    pub fn close(&self, err: StreamError) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(err);
        }
        self.notify.notify_one();
    }

    /// Forgets a pending close request (XEP-0198 resumption: the closer moves to a new
    /// connection, and a close meant for the old one is not for it).
    pub fn clear(&self) {
        if let Ok(mut r) = self.reason.lock() {
            *r = None;
        }
    }

    /// Waits until someone asks the connection to close, and returns the reason.
    pub async fn closed(&self) -> StreamError {
        loop {
            if let Some(r) = self.reason.lock().ok().and_then(|mut r| r.take()) {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// A bound session as the router sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionHandle(Arc<SessionState>);

/// The state the router needs of a bound session (session.txt: `full_jid`, `priority`,
/// `presence`, `interested`).
#[derive(Debug)]
pub struct SessionState {
    id: SessionId,
    jid: FullJid,
    tx: mpsc::Sender<Outbound>,
    /// Stanzas the queue takes from live delivery (`c2s.max_send_queue`); the channel has
    /// room beyond it for stored messages (XEP-0160 delivery at login, which must not look
    /// like a slow reader).
    live_max: usize,
    /// Stored messages queued since the queue was last empty: they do not count against
    /// `live_max`.
    stored: AtomicUsize,
    closer: Arc<Closer>,
    priority: AtomicI32,
    available: AtomicBool,
    interested: AtomicBool,
    wants_blocklist: AtomicBool,
    carbons: AtomicBool,
    presence: Mutex<Option<Arc<Element>>>,
    /// Who received directed presence from this session (RFC 6121 §4.6.3).
    directed: Mutex<Vec<canto_stanza::Jid>>,
    /// Facts modules keep about the session for routing on other cluster nodes (PEP's
    /// `+notify` interest), by key; replicated with the others.
    ext: Mutex<Vec<(String, String)>>,
    /// For a session bound on another cluster node (a *mirror*): that node's name. Its queue
    /// is read by the cluster layer, which forwards what it takes to that node.
    node: Option<Arc<str>>,
    /// Told of changes to this (local) session; `None` for mirrors and without a cluster.
    observer: Option<Arc<dyn SessionObserver>>,
}

impl std::fmt::Debug for dyn SessionObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionObserver")
    }
}

/// Told of every change to a local session that other cluster nodes route by (the facts of
/// session.txt: bound, available with its presence and priority, interested, carbons, the
/// blocklist fetched) and of its end. Installed once by the cluster layer; must not block (it
/// is called from the setters, under no lock of the table).
pub trait SessionObserver: Send + Sync {
    /// A local session was bound or one of its routing facts changed.
    fn changed(&self, session: &SessionHandle);
    /// A local session left the routing table.
    fn ended(&self, session: &SessionHandle);
}

/// Why a delivery did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// The session's queue is full: it has been told to close (slow reader).
    QueueFull,
    /// The session is gone.
    Gone,
}

impl SessionHandle {
    /// The session number.
    pub fn id(&self) -> SessionId {
        self.0.id
    }

    /// `full_jid`.
    pub fn jid(&self) -> &FullJid {
        &self.0.jid
    }

    /// Whether the session is bound on this node (not a mirror of one on another cluster node).
    pub fn is_local(&self) -> bool {
        self.0.node.is_none()
    }

    /// The cluster node the session is bound on, for a mirror.
    pub fn home_node(&self) -> Option<&Arc<str>> {
        self.0.node.as_ref()
    }

    /// A module's fact about this session (see [`SessionHandle::set_ext`]).
    pub fn ext(&self, key: &str) -> Option<String> {
        let e = self.0.ext.lock().ok()?;
        e.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// Sets (or with `None` removes) a module's fact about this session, which other cluster
    /// nodes see on their mirror of it (PEP keeps the resource's `+notify` interest there).
    pub fn set_ext(&self, key: &str, value: Option<String>) {
        let changed = {
            let Ok(mut e) = self.0.ext.lock() else {
                return;
            };
            let pos = e.iter().position(|(k, _)| k == key);
            match (pos, value) {
                (Some(i), Some(v)) if e[i].1 == v => false,
                (Some(i), Some(v)) => {
                    e[i].1 = v;
                    true
                }
                (Some(i), None) => {
                    e.remove(i);
                    true
                }
                (None, Some(v)) => {
                    e.push((key.to_string(), v));
                    true
                }
                (None, None) => false,
            }
        };
        if changed {
            self.changed();
        }
    }

    /// All the modules' facts (for the cluster layer).
    pub fn exts(&self) -> Vec<(String, String)> {
        self.0.ext.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Replaces all the modules' facts of a mirror with what its node published.
    pub fn replace_exts(&self, exts: Vec<(String, String)>) {
        if let Ok(mut e) = self.0.ext.lock() {
            *e = exts;
        }
    }

    /// Tells the cluster layer a routing fact of this local session changed.
    fn changed(&self) {
        if let Some(o) = &self.0.observer {
            o.changed(self);
        }
    }

    /// Queues a stanza. A full queue means the client stopped reading: rather than grow
    /// memory, the session is closed with `policy-violation` (RFC 6120 §4.9.3.14; see
    /// ARCHITECTURE.md, "Delivery and slow readers").
    pub fn deliver(&self, el: Arc<Element>) -> Result<(), DeliveryError> {
        let queued = self.0.tx.max_capacity() - self.0.tx.capacity();
        if queued >= self.0.live_max + self.0.stored.load(Ordering::Relaxed) {
            if self.0.tx.is_closed() {
                return Err(DeliveryError::Gone);
            }
            return Err(self.queue_full());
        }
        self.queue(el)
    }

    /// Queues a stored message (offline delivery), which may use the room beyond
    /// `c2s.max_send_queue`.
    pub fn deliver_stored(&self, el: Arc<Element>) -> Result<(), DeliveryError> {
        self.queue(el)?;
        self.0.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The connection found the queue empty: every stored message has been written.
    pub fn queue_drained(&self) {
        if self.0.stored.load(Ordering::Relaxed) != 0 {
            self.0.stored.store(0, Ordering::Relaxed);
        }
    }

    fn queue(&self, el: Arc<Element>) -> Result<(), DeliveryError> {
        let kind = crate::metrics::OutKind::of(el.name());
        match self.0.tx.try_send(Outbound::Stanza(el)) {
            Ok(()) => {
                crate::metrics::stanza_out(kind);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.queue_full()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DeliveryError::Gone),
        }
    }

    fn queue_full(&self) -> DeliveryError {
        crate::metrics::queue_drop(crate::metrics::DROP_SESSION_QUEUE);
        self.close(
            StreamError::new(canto_stanza::StreamCondition::PolicyViolation)
                .with_text("too many unread stanzas"),
        );
        DeliveryError::QueueFull
    }

    /// Ends the connection with a stream error.
    pub fn close(&self, err: StreamError) {
        self.0.closer.close(err);
    }

    /// `priority` (RFC 6121 §4.7.2.3), 0 until presence says otherwise.
    pub fn priority(&self) -> i32 {
        self.0.priority.load(Ordering::Relaxed)
    }

    /// Whether this is an *available resource* (sent initial presence, not since unavailable).
    pub fn is_available(&self) -> bool {
        self.0.available.load(Ordering::Acquire)
    }

    /// Whether this is an *interested resource* (fetched the roster).
    pub fn is_interested(&self) -> bool {
        self.0.interested.load(Ordering::Acquire)
    }

    /// Marks the session interested (roster fetched).
    pub fn set_interested(&self) {
        if !self.0.interested.swap(true, Ordering::AcqRel) {
            self.changed();
        }
    }

    /// Whether the session fetched the blocklist (XEP-0191 §3.3: it gets block pushes).
    pub fn wants_blocklist(&self) -> bool {
        self.0.wants_blocklist.load(Ordering::Acquire)
    }

    /// Marks the session as having fetched the blocklist.
    pub fn set_wants_blocklist(&self) {
        if !self.0.wants_blocklist.swap(true, Ordering::AcqRel) {
            self.changed();
        }
    }

    /// Whether the session enabled Message Carbons (XEP-0280 §4).
    pub fn carbons_enabled(&self) -> bool {
        self.0.carbons.load(Ordering::Acquire)
    }

    /// Enables or disables carbons for this session.
    pub fn set_carbons(&self, on: bool) {
        if self.0.carbons.swap(on, Ordering::AcqRel) != on {
            self.changed();
        }
    }

    /// The last broadcast available presence, if available.
    pub fn presence(&self) -> Option<Arc<Element>> {
        self.0.presence.lock().ok().and_then(|p| p.clone())
    }

    /// Remembers a recipient of directed available presence, unless `max` are remembered
    /// already; returns whether `to` is remembered now (a known recipient always is).
    pub fn add_directed(&self, to: canto_stanza::Jid, max: usize) -> bool {
        let Ok(mut d) = self.0.directed.lock() else {
            return false;
        };
        if d.contains(&to) {
            return true;
        }
        if d.len() >= max {
            return false;
        }
        d.push(to);
        true
    }

    /// Forgets a recipient (it got directed unavailable presence).
    pub fn remove_directed(&self, to: &canto_stanza::Jid) {
        if let Ok(mut d) = self.0.directed.lock() {
            d.retain(|j| j != to);
        }
    }

    /// Takes the directed-presence recipients for which `pred` holds, keeping the others.
    pub fn take_directed_where(
        &self,
        pred: impl Fn(&canto_stanza::Jid) -> bool,
    ) -> Vec<canto_stanza::Jid> {
        let Ok(mut d) = self.0.directed.lock() else {
            return Vec::new();
        };
        let (taken, kept) = std::mem::take(&mut *d).into_iter().partition(|j| pred(j));
        *d = kept;
        taken
    }

    /// Takes the list of directed-presence recipients.
    pub fn take_directed(&self) -> Vec<canto_stanza::Jid> {
        self.take_directed_where(|_| true)
    }

    /// Records broadcast presence: `Some` for available (with its priority), `None` for
    /// unavailable. Returns whether the session was available before.
    pub fn set_presence(&self, presence: Option<Arc<Element>>, priority: i32) -> bool {
        let was = self.0.available.swap(presence.is_some(), Ordering::AcqRel);
        self.0.priority.store(
            if presence.is_some() { priority } else { 0 },
            Ordering::Relaxed,
        );
        if let Ok(mut p) = self.0.presence.lock() {
            *p = presence;
        }
        self.changed();
        was
    }
}

/// The routing table: bare JID → that account's bound sessions.
#[derive(Debug, Default)]
pub struct SessionManager {
    users: RwLock<HashMap<BareJid, Vec<SessionHandle>>>,
    next_id: AtomicU64,
    /// The cluster layer's observer of local sessions (see [`SessionObserver`]).
    observer: std::sync::OnceLock<Arc<dyn SessionObserver>>,
    /// Mirrors of sessions on other cluster nodes in the table.
    mirrors: AtomicUsize,
}

/// What binding produced.
#[derive(Debug)]
pub struct Bound {
    /// The new session.
    pub handle: SessionHandle,
    /// A session with the same full JID that the new one replaced; the caller closes it with
    /// `conflict` (RFC 6120 §7.7.2.2, Prosody's `kick_old`).
    pub replaced: Option<SessionHandle>,
}

impl SessionManager {
    /// An empty table.
    pub fn new() -> SessionManager {
        SessionManager::default()
    }

    /// A new session number (for connections that have not bound yet too).
    pub fn next_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Binds `resource` (already resourceprep'd) for `bare` (RFC 6120 §7): a connected resource.
    /// `live_max`: how much of `tx` live delivery may fill (see
    /// [`SessionHandle::deliver_stored`]).
    pub fn bind(
        &self,
        id: SessionId,
        jid: FullJid,
        (tx, live_max): (mpsc::Sender<Outbound>, usize),
        closer: Arc<Closer>,
        max_sessions: usize,
    ) -> Result<Bound, StanzaError> {
        let observer = self.observer.get().cloned();
        let bound = self.insert(
            id,
            jid,
            (tx, live_max),
            closer,
            max_sessions,
            None,
            observer,
        )?;
        bound.handle.changed();
        Ok(bound)
    }

    /// Installs the cluster layer's observer of local sessions (once, before any bind).
    pub fn set_observer(&self, observer: Arc<dyn SessionObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Puts a *mirror* in the table: a session bound on the cluster node `node`, routed to like
    /// a local one; what is queued on `tx` the cluster layer forwards to that node. A local
    /// session or mirror with the same full JID is replaced (the caller decides which binding
    /// wins before calling).
    pub fn bind_mirror(
        &self,
        jid: FullJid,
        node: Arc<str>,
        (tx, live_max): (mpsc::Sender<Outbound>, usize),
        closer: Arc<Closer>,
    ) -> Result<Bound, StanzaError> {
        let bound = self.insert(
            self.next_id(),
            jid,
            (tx, live_max),
            closer,
            usize::MAX,
            Some(node),
            None,
        )?;
        self.mirrors.fetch_add(1, Ordering::Relaxed);
        Ok(bound)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        id: SessionId,
        jid: FullJid,
        (tx, live_max): (mpsc::Sender<Outbound>, usize),
        closer: Arc<Closer>,
        max_sessions: usize,
        node: Option<Arc<str>>,
        observer: Option<Arc<dyn SessionObserver>>,
    ) -> Result<Bound, StanzaError> {
        let handle = SessionHandle(Arc::new(SessionState {
            id,
            jid: jid.clone(),
            tx,
            live_max,
            stored: AtomicUsize::new(0),
            closer,
            priority: AtomicI32::new(0),
            available: AtomicBool::new(false),
            interested: AtomicBool::new(false),
            wants_blocklist: AtomicBool::new(false),
            carbons: AtomicBool::new(false),
            presence: Mutex::new(None),
            directed: Mutex::new(Vec::new()),
            ext: Mutex::new(Vec::new()),
            node,
            observer,
        }));
        let bare = jid.to_bare();
        let mut users = self
            .users
            .write()
            .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
        let list = users.entry(bare).or_default();
        let replaced = match list.iter().position(|h| h.jid() == &jid) {
            Some(pos) => Some(list.remove(pos)),
            None => {
                if list.len() >= max_sessions {
                    // RFC 6120 §7.6.2.1
                    return Err(StanzaError::new(Condition::ResourceConstraint));
                }
                None
            }
        };
        list.push(handle.clone());
        if replaced.as_ref().is_some_and(|r| !r.is_local()) {
            self.mirrors.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Bound { handle, replaced })
    }

    /// Removes exactly this session (not a newer one that took over its full JID).
    pub fn remove(&self, handle: &SessionHandle) -> bool {
        let Ok(mut users) = self.users.write() else {
            return false;
        };
        let bare = handle.jid().to_bare();
        let Some(list) = users.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|h| h.id() != handle.id());
        let removed = list.len() != before;
        if list.is_empty() {
            users.remove(&bare);
        }
        drop(users);
        if removed {
            if handle.is_local() {
                if let Some(o) = &handle.0.observer {
                    o.ended(handle);
                }
            } else {
                self.mirrors.fetch_sub(1, Ordering::Relaxed);
            }
        }
        removed
    }

    /// The session bound to a full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionHandle> {
        let users = self.users.read().ok()?;
        users
            .get(&jid.to_bare())?
            .iter()
            .find(|h| h.jid() == jid)
            .cloned()
    }

    /// All sessions of an account.
    pub fn resources(&self, bare: &BareJid) -> Vec<SessionHandle> {
        self.users
            .read()
            .ok()
            .and_then(|u| u.get(bare).cloned())
            .unwrap_or_default()
    }

    /// Whether the account has any bound session.
    pub fn is_online(&self, bare: &BareJid) -> bool {
        self.users
            .read()
            .map(|u| u.contains_key(bare))
            .unwrap_or(false)
    }

    /// Every session bound on this node (mirrors left out).
    pub fn all(&self) -> Vec<SessionHandle> {
        self.users
            .read()
            .map(|u| {
                u.values()
                    .flatten()
                    .filter(|h| h.is_local())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of sessions bound on this node (mirrors left out: each node counts its own).
    pub fn count(&self) -> usize {
        let all: usize = self
            .users
            .read()
            .map(|u| u.values().map(Vec::len).sum())
            .unwrap_or(0);
        all.saturating_sub(self.mirrors())
    }

    /// Number of mirrors of sessions on other cluster nodes.
    pub fn mirrors(&self) -> usize {
        self.mirrors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> FullJid {
        FullJid::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bind(m: &SessionManager, jid: &str, max: usize) -> Result<Bound, StanzaError> {
        let (tx, _rx) = mpsc::channel(4);
        m.bind(m.next_id(), full(jid), (tx, 4), Closer::new(), max)
    }

    #[test]
    fn conflict_replaces_and_remove_is_by_identity() {
        let m = SessionManager::new();
        let a = bind(&m, "a@x/r", 10).ok().map(|b| b.handle);
        let b = bind(&m, "a@x/r", 10).ok();
        let replaced = b.as_ref().and_then(|b| b.replaced.clone());
        assert_eq!(
            replaced.as_ref().map(|h| h.id()),
            a.as_ref().map(|h| h.id())
        );
        assert_eq!(m.count(), 1);
        // The old session's destroy must not remove the new one.
        if let Some(a) = &a {
            assert!(!m.remove(a));
        }
        assert_eq!(m.count(), 1);
        if let Some(b) = &b {
            assert!(m.remove(&b.handle));
        }
        assert_eq!(m.count(), 0);
        assert!(!m.is_online(&BareJid::new("a@x").unwrap_or_else(|_| panic!())));
    }

    #[test]
    fn session_cap_is_resource_constraint() {
        let m = SessionManager::new();
        assert!(bind(&m, "a@x/1", 2).is_ok());
        assert!(bind(&m, "a@x/2", 2).is_ok());
        let e = bind(&m, "a@x/3", 2).err().map(|e| e.condition);
        assert_eq!(e, Some(Condition::ResourceConstraint));
        // Rebinding an existing resource is a replacement, not a new session.
        assert!(bind(&m, "a@x/2", 2).is_ok());
    }

    #[test]
    fn reserved_room_is_for_stored_messages_only() {
        let m = SessionManager::new();
        let (tx, _rx) = mpsc::channel(3);
        let closer = Closer::new();
        let h = m
            .bind(1, full("a@x/r"), (tx, 1), closer.clone(), 5)
            .ok()
            .map(|b| b.handle)
            .unwrap_or_else(|| panic!("bind"));
        let el = Arc::new(Element::new("message", "jabber:client"));
        // Two stored messages do not use up the one live slot.
        assert_eq!(h.deliver_stored(el.clone()), Ok(()));
        assert_eq!(h.deliver_stored(el.clone()), Ok(()));
        assert_eq!(h.deliver(el.clone()), Ok(()));
        assert_eq!(h.deliver(el.clone()), Err(DeliveryError::QueueFull));
        let m2 = SessionManager::new();
        let (tx, mut rx) = mpsc::channel(3);
        let h2 = m2
            .bind(1, full("a@x/r"), (tx, 1), Closer::new(), 5)
            .ok()
            .map(|b| b.handle)
            .unwrap_or_else(|| panic!("bind"));
        assert_eq!(h2.deliver_stored(el.clone()), Ok(()));
        // Once the queue has been emptied, the stored message no longer makes room.
        assert!(rx.try_recv().is_ok());
        h2.queue_drained();
        assert_eq!(h2.deliver(el.clone()), Ok(()));
        // The live share is used up although the channel has room.
        assert_eq!(h2.deliver(el), Err(DeliveryError::QueueFull));
    }

    #[test]
    fn full_queue_closes_the_slow_reader() {
        let m = SessionManager::new();
        let (tx, _rx) = mpsc::channel(1);
        let closer = Closer::new();
        let b = m
            .bind(1, full("a@x/r"), (tx, 1), closer.clone(), 5)
            .ok()
            .map(|b| b.handle);
        let h = b.unwrap_or_else(|| panic!("bind"));
        let el = Arc::new(Element::new("message", "jabber:client"));
        assert_eq!(h.deliver(el.clone()), Ok(()));
        assert_eq!(h.deliver(el), Err(DeliveryError::QueueFull));
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let reason = rt.map(|rt| rt.block_on(closer.closed())).ok();
        assert_eq!(
            reason.map(|r| r.condition),
            Some(canto_stanza::StreamCondition::PolicyViolation)
        );
    }

    #[test]
    fn presence_makes_available_and_unavailable_resets() {
        let m = SessionManager::new();
        let h = bind(&m, "a@x/r", 5)
            .ok()
            .map(|b| b.handle)
            .unwrap_or_else(|| panic!());
        assert!(!h.is_available());
        let p = Arc::new(Element::new("presence", "jabber:client"));
        assert!(!h.set_presence(Some(p), 5));
        assert!(h.is_available());
        assert_eq!(h.priority(), 5);
        assert!(h.set_presence(None, 0));
        assert!(!h.is_available());
        assert!(h.presence().is_none());
    }
}

#[cfg(test)]
mod directed_tests {
    use super::*;

    #[test]
    fn directed_presence_recipients_are_capped() {
        let m = SessionManager::new();
        let (tx, _rx) = mpsc::channel(4);
        let jid = FullJid::new("a@x/r").unwrap_or_else(|e| panic!("{e}"));
        let h = m
            .bind(m.next_id(), jid, (tx, 4), Closer::new(), 10)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .handle;
        let j = |s: &str| canto_stanza::parse_jid(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(h.add_directed(j("b@x"), 2));
        assert!(h.add_directed(j("c@x/r"), 2));
        // Full: a new recipient is refused, a known one is still fine.
        assert!(!h.add_directed(j("d@x"), 2));
        assert!(h.add_directed(j("b@x"), 2));
        // Directed unavailable frees room.
        h.remove_directed(&j("b@x"));
        assert!(h.add_directed(j("d@x"), 2));
        assert_eq!(h.take_directed().len(), 2);
    }
}
