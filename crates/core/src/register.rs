//! Account creation and password changes for XEP-0077 in-band registration (module
//! `register`), limited per address: attempts of any outcome are counted
//! (`register.max_attempts` per `register.attempt_period`), and successful registrations are
//! spaced (`register.min_interval`). IPv6 addresses count per /64, as failed logins do
//! ([`crate::server::address_key`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use canto_proto::sasl::Credentials;
use canto_stanza::{BareJid, Condition, ErrorType, StanzaError};
use canto_storage::StorageError;

use crate::server::{Server, address_key};

/// Most addresses each registration table holds; when it is full of recent entries a new
/// address is refused (fail closed: a flood from many addresses cannot grow memory).
const TABLE_MAX: usize = 100_000;

/// Per-address registration state.
#[derive(Default)]
pub struct RegistrationTimes(Mutex<Tables>);

#[derive(Default)]
struct Tables {
    /// When each address last registered an account.
    last_success: HashMap<IpAddr, Instant>,
    /// Attempts per address in the current period: (count, period start).
    attempts: HashMap<IpAddr, (u32, Instant)>,
}

fn too_many() -> StanzaError {
    // RFC 6120 §8.3.3.18: resource-constraint, type wait — retrying later may succeed.
    StanzaError::new(Condition::ResourceConstraint)
        .with_type(ErrorType::Wait)
        .with_text("too many registrations from this address; try later")
}

impl Tables {
    /// Counts an attempt from `key`; `false` when it is over `max` in the current period.
    fn count_attempt(&mut self, key: IpAddr, max: u32, period: Duration, now: Instant) -> bool {
        if self.attempts.len() >= TABLE_MAX && !self.attempts.contains_key(&key) {
            self.attempts
                .retain(|_, (_, start)| now.duration_since(*start) < period);
            if self.attempts.len() >= TABLE_MAX {
                return false;
            }
        }
        let entry = self.attempts.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= period {
            *entry = (0, now);
        }
        if entry.0 >= max {
            return false;
        }
        entry.0 += 1;
        true
    }

    /// Reserves the registration slot of `key` unless it registered within `interval`.
    fn reserve_success(&mut self, key: IpAddr, interval: Duration, now: Instant) -> bool {
        if interval.is_zero() {
            return true;
        }
        self.last_success
            .retain(|_, t| now.duration_since(*t) < interval);
        if self.last_success.contains_key(&key) || self.last_success.len() >= TABLE_MAX {
            return false;
        }
        self.last_success.insert(key, now);
        true
    }
}

impl Server {
    /// Creates `username@host` (XEP-0077 §3.1). Every attempt from `ip` counts against
    /// `register.max_attempts` (beyond: `resource-constraint`, wait); then `jid-malformed` for
    /// a username that is no valid localpart, `conflict` when the account exists (before the
    /// spacing check, so a taken name is reported as such even right after a registration
    /// from the same address), `resource-constraint` (wait) when the address registered
    /// within `register.min_interval` seconds. The key derivation runs on a blocking thread.
    pub async fn register_account(
        &self,
        host: &str,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<BareJid, StanzaError> {
        let cfg = self.config();
        let key = address_key(ip);
        let internal = || StanzaError::new(Condition::InternalServerError);
        {
            let mut t = self.registrations.0.lock().map_err(|_| internal())?;
            let period = Duration::from_secs(cfg.register.attempt_period);
            if !t.count_attempt(key, cfg.register.max_attempts, period, Instant::now()) {
                return Err(too_many());
            }
        }
        let node = canto_stanza::jid::normalize_node(username).ok_or_else(|| {
            StanzaError::new(Condition::JidMalformed).with_text("invalid username")
        })?;
        let jid = BareJid::new(&format!("{node}@{host}"))
            .map_err(|_| StanzaError::new(Condition::JidMalformed))?;
        // XEP-0077 §3.1: the username is taken.
        match self.storage.accounts.exists(host, &node).await {
            Ok(true) => return Err(StanzaError::new(Condition::Conflict)),
            Ok(false) => {}
            Err(_) => return Err(internal()),
        }
        let interval = Duration::from_secs(cfg.register.min_interval);
        {
            let mut t = self.registrations.0.lock().map_err(|_| internal())?;
            if !t.reserve_success(key, interval, Instant::now()) {
                return Err(too_many());
            }
        }
        let release = || {
            if let Ok(mut t) = self.registrations.0.lock() {
                t.last_success.remove(&key);
            }
        };
        let creds = match derive(password, cfg.limits.scram_iterations).await {
            Ok(c) => c,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        match self.storage.accounts.create(host, &node, &creds).await {
            Ok(()) => Ok(jid),
            Err(e) => {
                release();
                match e {
                    // XEP-0077 §3.1: taken meanwhile.
                    StorageError::AlreadyExists => Err(StanzaError::new(Condition::Conflict)),
                    _ => Err(internal()),
                }
            }
        }
    }

    /// Replaces an account's password (XEP-0077 §3.3).
    pub async fn change_password(&self, user: &BareJid, password: &str) -> Result<(), StanzaError> {
        let node = user
            .node()
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        let creds = derive(password, self.config().limits.scram_iterations).await?;
        match self
            .storage
            .accounts
            .set_credentials(user.domain().as_str(), node.as_str(), &creds)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(StanzaError::new(Condition::ItemNotFound)),
            Err(_) => Err(StanzaError::new(Condition::InternalServerError)),
        }
    }
}

/// New SCRAM credentials for `password`: two PBKDF2 runs, on a blocking thread so the
/// reactor's threads keep serving other connections meanwhile.
async fn derive(password: &str, iterations: u32) -> Result<Credentials, StanzaError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || Credentials::from_password(&password, iterations))
        .await
        .map_err(|_| StanzaError::new(Condition::InternalServerError))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(600);

    #[test]
    fn attempts_are_counted_per_address_and_period() {
        let mut t = Tables::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!((0..3).all(|_| t.count_attempt(a, 3, PERIOD, now)));
        assert!(!t.count_attempt(a, 3, PERIOD, now));
        assert!(t.count_attempt(b, 3, PERIOD, now));
        // A new period starts the count again.
        assert!(t.count_attempt(a, 3, PERIOD, now + PERIOD));
    }

    #[test]
    fn a_full_attempt_table_refuses_new_addresses() {
        let mut t = Tables::default();
        let now = Instant::now();
        for i in 0..TABLE_MAX as u32 {
            t.attempts.insert(IpAddr::from(i.to_be_bytes()), (1, now));
        }
        let known = IpAddr::from(0u32.to_be_bytes());
        assert!(t.count_attempt(known, 3, PERIOD, now));
        assert!(!t.count_attempt(IpAddr::from(u32::MAX.to_be_bytes()), 3, PERIOD, now));
        // Once the entries are old they make room.
        assert!(t.count_attempt(
            IpAddr::from(u32::MAX.to_be_bytes()),
            3,
            PERIOD,
            now + PERIOD
        ));
    }

    #[test]
    fn successes_are_spaced() {
        let mut t = Tables::default();
        let now = Instant::now();
        let a: IpAddr = "2001:db8::".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(t.reserve_success(a, PERIOD, now));
        assert!(!t.reserve_success(a, PERIOD, now));
        assert!(t.reserve_success(a, PERIOD, now + PERIOD));
        assert!(t.reserve_success(a, Duration::ZERO, now));
    }
}
