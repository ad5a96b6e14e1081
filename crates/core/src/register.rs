//! Account creation and password changes for XEP-0077 in-band registration (module
//! `register`), with a per-address rate limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use canto_proto::sasl::Credentials;
use canto_stanza::{BareJid, Condition, ErrorType, StanzaError};
use canto_storage::StorageError;

use crate::server::Server;

/// When each address last registered an account.
#[derive(Default)]
pub struct RegistrationTimes(Mutex<HashMap<IpAddr, Instant>>);

impl Server {
    /// Creates `username@host` (XEP-0077 §3.1). `conflict` when it exists, `jid-malformed` for
    /// a username that is no valid localpart, `resource-constraint` (wait) when `ip` registered
    /// within `register.min_interval` seconds.
    pub async fn register_account(
        &self,
        host: &str,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<BareJid, StanzaError> {
        let node = canto_stanza::jid::normalize_node(username).ok_or_else(|| {
            StanzaError::new(Condition::JidMalformed).with_text("invalid username")
        })?;
        let jid = BareJid::new(&format!("{node}@{host}"))
            .map_err(|_| StanzaError::new(Condition::JidMalformed))?;
        let cfg = self.config();
        let interval = Duration::from_secs(cfg.register.min_interval);
        {
            let mut times = self
                .registrations
                .0
                .lock()
                .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
            let now = Instant::now();
            times.retain(|_, t| now.duration_since(*t) < interval);
            if !interval.is_zero() && times.contains_key(&ip) {
                return Err(StanzaError::new(Condition::ResourceConstraint)
                    .with_type(ErrorType::Wait)
                    .with_text("too many registrations from this address; try later"));
            }
        }
        let creds = Credentials::from_password(password, cfg.limits.scram_iterations);
        match self.storage.accounts.create(host, &node, &creds).await {
            Ok(()) => {
                if let Ok(mut times) = self.registrations.0.lock() {
                    times.insert(ip, Instant::now());
                }
                Ok(jid)
            }
            // XEP-0077 §3.1: the username is taken.
            Err(StorageError::AlreadyExists) => Err(StanzaError::new(Condition::Conflict)),
            Err(_) => Err(StanzaError::new(Condition::InternalServerError)),
        }
    }

    /// Replaces an account's password (XEP-0077 §3.3).
    pub async fn change_password(&self, user: &BareJid, password: &str) -> Result<(), StanzaError> {
        let node = user
            .node()
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        let creds = Credentials::from_password(password, self.config().limits.scram_iterations);
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
