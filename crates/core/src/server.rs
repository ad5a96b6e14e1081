//! The server: configuration, storage, the session table and the loaded modules, shared by every
//! connection task.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use canto_storage::Storage;
use tracing::info;

use crate::config::Config;
use crate::module::{Module, ModuleTable};
use crate::session::{SessionHandle, SessionManager};

/// Everything a connection needs, behind one `Arc`.
pub struct Server {
    config: ArcSwap<Config>,
    /// XEP-0115 `<c/>` for stream features, computed from the modules and the configuration
    /// (again on every reload).
    caps: ArcSwap<canto_xml::Element>,
    /// Persistent state.
    pub storage: Storage,
    /// Bound sessions (transient state).
    pub sessions: SessionManager,
    modules: ModuleTable,
    started: Instant,
    started_at: SystemTime,
    auth_failures: Mutex<FailureTable<IpAddr>>,
    /// Failures per account (`user@host`), from any address.
    account_failures: Mutex<FailureTable<String>>,
    /// Rosters of online users (see `presence.rs`).
    pub(crate) roster_cache:
        std::sync::RwLock<HashMap<canto_stanza::BareJid, Arc<crate::presence::RosterMap>>>,
    /// Per account: serializes read-modify-write of one account's roster and blocklist
    /// (subscription changes, roster sets, blocking), without one user waiting for another.
    account_locks: crate::locks::KeyedLocks<canto_stanza::BareJid>,
    /// The `Arc` this server lives in, for paths that must spawn work holding it.
    me: std::sync::Weak<Server>,
    /// Blocklists of online users (see `blocking.rs`).
    pub(crate) block_cache: crate::blocking::BlockCache,
    /// Recent in-band registrations per address (see `register.rs`).
    pub(crate) registrations: crate::register::RegistrationTimes,
    /// XEP-0198 resumable and hibernating sessions (see `sm.rs`).
    pub sm: crate::sm::SmRegistry,
    /// Secret for unknown accounts' SASL decoys (see `auth.rs`).
    pub(crate) decoy_secret: crate::auth::DecoySecret,
    /// The federation layer, once the network has installed it (see `remote.rs`).
    /// Held weakly: the federation layer holds the server, and whoever started it (the
    /// network) holds the layer; a strong reference both ways would never be freed.
    pub(crate) remote: std::sync::OnceLock<std::sync::Weak<dyn crate::remote::RemoteRouter>>,
    /// The cluster layer, once startup has installed it (see `cluster.rs`); held weakly too.
    pub(crate) cluster: std::sync::OnceLock<std::sync::Weak<dyn crate::cluster::ClusterLink>>,
}

impl Server {
    /// Builds the server; fails on an unknown module name.
    pub fn new(
        config: Config,
        storage: Storage,
        available: &[Arc<dyn Module>],
    ) -> Result<Arc<Server>, String> {
        let modules = ModuleTable::load(&config, &storage, available)?;
        info!(modules = ?modules.loaded(), hosts = ?config.hosts, "server built");
        let caps = crate::caps::caps_element(&modules);
        Ok(Arc::new_cyclic(|me| Server {
            me: me.clone(),
            caps: ArcSwap::from_pointee(caps),
            config: ArcSwap::from_pointee(config),
            storage,
            sessions: SessionManager::new(),
            modules,
            started: Instant::now(),
            started_at: SystemTime::now(),
            auth_failures: Mutex::new(FailureTable::default()),
            account_failures: Mutex::new(FailureTable::default()),
            roster_cache: Default::default(),
            account_locks: Default::default(),
            block_cache: Default::default(),
            registrations: Default::default(),
            sm: Default::default(),
            decoy_secret: Default::default(),
            remote: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
        }))
    }

    /// The lock of one account's roster and blocklist: held across every read-modify-write of
    /// them, so two changes at once (a roster set and a subscription, two block requests)
    /// cannot lose one another. Never hold two accounts' locks at once.
    pub async fn account_lock(
        &self,
        user: &canto_stanza::BareJid,
    ) -> crate::locks::KeyedGuard<canto_stanza::BareJid> {
        self.account_locks.lock(user).await
    }

    /// This server's `Arc` (None only while it is being dropped).
    pub(crate) fn me(&self) -> Option<Arc<Server>> {
        self.me.upgrade()
    }

    /// Starts the modules' timers (Prosody's `module:add_timer`): each runs once now, then every
    /// period, until the server is dropped. Called by startup with the other background work,
    /// after the listeners are bound.
    pub fn start_timers(self: &Arc<Self>) {
        for entry in self.modules().timers().to_vec() {
            let server = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(entry.period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(server) = server.upgrade() else {
                        return;
                    };
                    tracing::debug!(module = entry.module, "timer");
                    entry.timer.tick(&server).await;
                }
            });
        }
    }

    /// Tells the session hooks that `session` bound its resource (called by the c2s engine
    /// once the bind result is queued).
    pub async fn resource_bound(self: &Arc<Self>, session: &SessionHandle) {
        self.session_event(session, crate::module::SessionEvent::Bound)
            .await;
    }

    /// Tells the session hooks of `event` for `session`, highest priority first.
    pub(crate) async fn session_event(
        self: &Arc<Self>,
        session: &SessionHandle,
        event: crate::module::SessionEvent<'_>,
    ) {
        for (_, hook) in self.modules().session_hooks() {
            hook.on_session(self, session.jid(), event).await;
        }
    }

    /// The stored roster of a local account (`host`, `user` = its domain and node): versions
    /// and pending requests, for the roster protocol module.
    pub fn roster_store<'a>(
        &'a self,
        host: &'a str,
        user: &'a str,
    ) -> crate::roster::RosterStore<'a> {
        crate::roster::RosterStore::new(&self.storage, host, user)
    }

    /// Whether the account has an available resource (session.txt: an *available resource*).
    pub fn is_available(&self, user: &canto_stanza::BareJid) -> bool {
        self.sessions
            .resources(user)
            .iter()
            .any(SessionHandle::is_available)
    }

    /// The available resources of a local account and their priorities (for modules that
    /// deliver on the account's behalf, such as PEP notifications, XEP-0163 §4.3).
    pub fn available_resources(
        &self,
        user: &canto_stanza::BareJid,
    ) -> Vec<(canto_stanza::FullJid, i32)> {
        self.sessions
            .resources(user)
            .iter()
            .filter(|s| s.is_available())
            .map(|s| (s.jid().clone(), s.priority()))
            .collect()
    }

    /// Queues `el` for the local session `to`, if it is bound; whether it was queued. The
    /// caller has applied the routing rules (blocking, who may see what): this is delivery only.
    pub fn deliver_to_session(
        &self,
        to: &canto_stanza::FullJid,
        el: Arc<canto_xml::Element>,
    ) -> bool {
        self.sessions.get(to).is_some_and(|s| s.deliver(el).is_ok())
    }

    /// The configuration in force (replaced atomically on SIGHUP).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration (SIGHUP). Hosts and listeners keep their startup values;
    /// limits, log level and certificates take effect for new stanzas and handshakes; the
    /// entity capabilities are computed again (new streams advertise the new hash).
    ///
    /// The modules' sections are parsed and validated first: if any is invalid, nothing
    /// changes and the error names it (the reload is refused).
    pub fn reload_config(&self, config: Config) -> Result<(), String> {
        self.modules.reload_sections(&config)?;
        self.config.store(Arc::new(config));
        self.caps
            .store(Arc::new(crate::caps::caps_element(&self.modules)));
        Ok(())
    }

    /// The XEP-0115 `<c/>` element for stream features.
    pub fn caps(&self) -> Arc<canto_xml::Element> {
        self.caps.load_full()
    }

    /// Loaded modules' registrations.
    pub fn modules(&self) -> &ModuleTable {
        &self.modules
    }

    /// Whether `host` is a virtual host here.
    pub fn serves(&self, host: &str) -> bool {
        self.config.load().serves(host)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wall-clock start time.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Records a failed authentication from `ip` and returns how long to wait before answering
    /// (repeated failures from one address are slowed down, doubling up to the configured cap).
    /// A success does not reset the count — otherwise one valid account would let an attacker
    /// clear the back-off between guesses at others; the count is forgotten after ten quiet
    /// minutes. IPv6 addresses count per /64 (see [`address_key`]).
    pub fn auth_failed(&self, ip: IpAddr) -> Duration {
        self.auth_failed_for(ip, None)
    }

    /// Records a failed authentication from `ip` at `account` (`user@host`, when the attempt
    /// named one) and returns the longer of the per-address and per-account delays. The
    /// per-account count slows guessing at one password from many addresses; like the
    /// per-address one it is not reset by a success (a success would otherwise wipe out an
    /// attacker's record while the owner logs in between guesses) and is forgotten after ten
    /// quiet minutes. Only failures wait: the owner's correct password is never delayed.
    pub fn auth_failed_for(&self, ip: IpAddr, account: Option<&str>) -> Duration {
        let cfg = self.config();
        let max = cfg.limits.auth_max_delay_ms;
        let by_ip = match self.auth_failures.lock() {
            Ok(mut t) => t.record(address_key(ip), cfg.limits.auth_failures_before_delay, max),
            Err(_) => Duration::ZERO,
        };
        let by_account = match (account, self.account_failures.lock()) {
            (Some(a), Ok(mut t)) => t.record(
                a.to_string(),
                cfg.limits.auth_failures_per_account_before_delay,
                max,
            ),
            _ => Duration::ZERO,
        };
        by_ip.max(by_account)
    }

    /// The one place a bound session ends (Prosody's `destroy_session`): if it was available,
    /// unavailable presence goes to the account's other available resources and to whoever
    /// received directed presence; then it leaves the routing table. Called by the connection
    /// task on every way a session ends: client close, network loss, conflict, shutdown,
    /// stream error.
    pub fn destroy_session(self: &Arc<Self>, handle: &SessionHandle, reason: &str) {
        if !handle.is_local() {
            // A mirror replaced by a local bind (or the account deleted): it leaves this
            // table, and its own node, told through its closer, destroys the session there.
            self.sessions.remove(handle);
            let user = handle.jid().to_bare();
            if !self.sessions.is_online(&user) {
                self.forget_roster(&user);
                self.forget_blocklist(&user);
            }
            return;
        }
        let was_available = handle.set_presence(None, 0);
        if was_available {
            // RFC 6121 §4.5.2: the server broadcasts unavailable presence on the user's
            // behalf, to contacts, own resources and directed-presence recipients.
            self.broadcast_unavailable_on_destroy(handle);
        } else {
            // Never available, but it may have joined rooms (directed presence to a service,
            // remembered before initial presence too): they hear it is gone.
            let el = crate::presence::presence(Some("unavailable"), &handle.jid().to_string(), "");
            self.unavailable_to_directed(handle, &el);
        }
        let removed = self.sessions.remove(handle);
        // Session hooks (XEP-0012 last activity…) hear of it after the fact, in order
        // (Unavailable, then Destroyed): this path must not wait for storage. It may run while
        // a panicking task unwinds, so only spawn when a runtime is there to take it.
        let hooks = self.modules().session_hooks().to_vec();
        if removed
            && !hooks.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let server = self.clone();
            let jid = handle.jid().clone();
            rt.spawn(async move {
                for (_, hook) in &hooks {
                    if was_available {
                        let ev = crate::module::SessionEvent::Unavailable { status: None };
                        hook.on_session(&server, &jid, ev).await;
                    }
                    hook.on_session(&server, &jid, crate::module::SessionEvent::Destroyed)
                        .await;
                }
            });
        }
        let user = handle.jid().to_bare();
        if !self.sessions.is_online(&user) {
            self.forget_roster(&user);
            self.forget_blocklist(&user);
        }
        info!(jid = %handle.jid(), session = handle.id(), reason, removed, "session destroyed");
    }
}

/// The key under which an address is counted (failed logins, connections per address): IPv4
/// as is (IPv4-mapped IPv6 too), IPv6 by its /64 — one subscriber's allocation (RFC 6177), so
/// a client cannot escape a per-address limit by hopping through its own prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
        v4 => v4,
    }
}

/// Keys quiet this long are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);

/// Most keys a failure table holds; beyond, quiet ones are dropped, and if all are recent a new
/// key is not stored but treated as already over its allowance (fail closed: a flood of distinct
/// names or addresses slows every failure instead of growing memory or wiping counts).
const FAILURE_TABLE_MAX: usize = 100_000;

/// Failure counts with their last time, bounded in size.
struct FailureTable<K> {
    map: HashMap<K, (u32, Instant)>,
}

impl<K> Default for FailureTable<K> {
    fn default() -> Self {
        FailureTable {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> FailureTable<K> {
    /// Counts a failure for `key` and returns the delay: none within `allowance` failures, then
    /// 200 ms, 400 ms, … doubling up to `max_ms`.
    fn record(&mut self, key: K, allowance: u32, max_ms: u64) -> Duration {
        let now = Instant::now();
        if self.map.len() >= FAILURE_TABLE_MAX && !self.map.contains_key(&key) {
            self.map
                .retain(|_, (_, t)| now.duration_since(*t) < FAILURE_MEMORY);
            if self.map.len() >= FAILURE_TABLE_MAX {
                return delay_for(1, max_ms);
            }
        }
        let entry = self.map.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_MEMORY {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay_for(entry.0.saturating_sub(allowance), max_ms)
    }
}

/// The back-off for `over` failures beyond the allowance.
fn delay_for(over: u32, max_ms: u64) -> Duration {
    if over == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(100u64.saturating_mul(1u64 << over.min(16)).min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:ffff::1")),
            address_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:3::1")),
            address_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn failures_back_off_after_the_allowance_up_to_the_cap() {
        let mut t = FailureTable::default();
        let d: Vec<u64> = (0..8)
            .map(|_| t.record("a@x", 2, 1000).as_millis() as u64)
            .collect();
        assert_eq!(d, [0, 0, 200, 400, 800, 1000, 1000, 1000]);
        // Another key has its own count.
        assert_eq!(t.record("b@x", 2, 1000), Duration::ZERO);
    }

    #[test]
    fn a_full_table_fails_closed_and_keeps_known_keys() {
        let mut t = FailureTable::default();
        for i in 0..FAILURE_TABLE_MAX {
            t.record(i, 5, 1000);
        }
        // A known key keeps counting normally.
        assert_eq!(t.record(0, 5, 1000), Duration::ZERO);
        // A new key while the table is full of recent entries is slowed at once, not stored.
        assert_eq!(t.record(usize::MAX, 5, 1000), Duration::from_millis(200));
        assert_eq!(t.map.len(), FAILURE_TABLE_MAX);
    }
}
