//! The server: configuration, storage, the session table and the loaded modules, shared by every
//! connection task.

use std::collections::HashMap;
use std::net::IpAddr;
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
    /// Persistent state.
    pub storage: Storage,
    /// Bound sessions (transient state).
    pub sessions: SessionManager,
    modules: ModuleTable,
    started: Instant,
    started_at: SystemTime,
    auth_failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Rosters of online users (see `presence.rs`).
    pub(crate) roster_cache:
        std::sync::RwLock<HashMap<canto_stanza::BareJid, Arc<crate::presence::RosterMap>>>,
    /// Serializes subscription state changes (each touches two rosters).
    pub(crate) roster_lock: tokio::sync::Mutex<()>,
}

impl Server {
    /// Builds the server; fails on an unknown module name.
    pub fn new(
        config: Config,
        storage: Storage,
        available: &[Arc<dyn Module>],
    ) -> Result<Arc<Server>, String> {
        let modules = ModuleTable::load(&config, available)?;
        info!(modules = ?modules.loaded(), hosts = ?config.hosts, "server built");
        Ok(Arc::new(Server {
            config: ArcSwap::from_pointee(config),
            storage,
            sessions: SessionManager::new(),
            modules,
            started: Instant::now(),
            started_at: SystemTime::now(),
            auth_failures: Mutex::new(HashMap::new()),
            roster_cache: Default::default(),
            roster_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The configuration in force (replaced atomically on SIGHUP).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration (SIGHUP). Hosts and listeners keep their startup values;
    /// limits, log level and certificates take effect for new stanzas and handshakes.
    pub fn reload_config(&self, config: Config) {
        self.config.store(Arc::new(config));
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
    /// minutes.
    pub fn auth_failed(&self, ip: IpAddr) -> Duration {
        let cfg = self.config();
        let Ok(mut map) = self.auth_failures.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        // Forget addresses quiet for ten minutes, so the table cannot grow without bound.
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(600));
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > Duration::from_secs(600) {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        let over = entry
            .0
            .saturating_sub(cfg.limits.auth_failures_before_delay);
        if over == 0 {
            return Duration::ZERO;
        }
        let ms = 100u64
            .saturating_mul(1u64 << over.min(16))
            .min(cfg.limits.auth_max_delay_ms);
        Duration::from_millis(ms)
    }

    /// The one place a bound session ends (Prosody's `destroy_session`): if it was available,
    /// unavailable presence goes to the account's other available resources and to whoever
    /// received directed presence; then it leaves the routing table. Called by the connection
    /// task on every way a session ends: client close, network loss, conflict, shutdown,
    /// stream error.
    pub fn destroy_session(self: &Arc<Self>, handle: &SessionHandle, reason: &str) {
        if handle.set_presence(None, 0) {
            // RFC 6121 §4.5.2: the server broadcasts unavailable presence on the user's
            // behalf, to contacts, own resources and directed-presence recipients.
            self.broadcast_unavailable_on_destroy(handle);
        }
        let removed = self.sessions.remove(handle);
        let user = handle.jid().to_bare();
        if !self.sessions.is_online(&user) {
            self.forget_roster(&user);
        }
        info!(jid = %handle.jid(), session = handle.id(), reason, removed, "session destroyed");
    }
}
