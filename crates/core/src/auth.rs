//! Credentials for SASL (RFC 6120 §6): the stored ones, or for an account that does not exist
//! a decoy ([`Credentials::decoy`]) so that the exchange looks and costs the same as for a
//! real account with a wrong password — no account enumeration by timing or by SCRAM's
//! server-first message.

use canto_proto::sasl::Credentials;
use canto_storage::StorageError;
use tokio::sync::OnceCell;
use tracing::warn;

use crate::server::Server;

/// Where the decoy secret is kept (key-value store; the empty host and user are no account).
const STORE: &str = "server_secret";

/// The secret decoy salts are derived from: loaded (or created) once from storage so that an
/// unknown account's salt is the same across attempts and restarts, as a stored one is.
#[derive(Default)]
pub struct DecoySecret(OnceCell<Vec<u8>>);

impl Server {
    /// The credentials to run a SASL exchange for `username@host` against: the stored ones,
    /// or a decoy with the configured iteration count when there is no such account. `Err`
    /// only when storage fails (the caller answers `temporary-auth-failure`).
    pub async fn credentials_or_decoy(
        &self,
        host: &str,
        username: &str,
    ) -> Result<Option<Credentials>, StorageError> {
        if let Some(c) = self.storage.accounts.credentials(host, username).await? {
            return Ok(Some(c));
        }
        let secret = self
            .decoy_secret
            .0
            .get_or_try_init(|| self.load_decoy_secret())
            .await?;
        let iterations = self.config().limits.scram_iterations;
        Ok(Some(Credentials::decoy(secret, host, username, iterations)))
    }

    async fn load_decoy_secret(&self) -> Result<Vec<u8>, StorageError> {
        let kv = &self.storage.kv;
        if let Some(s) = kv.get(STORE, "", "").await?
            && s.len() >= 32
        {
            return Ok(s);
        }
        let mut s = vec![0u8; 32];
        rand::fill(&mut s[..]);
        if let Err(e) = kv.set(STORE, "", "", Some(&s)).await {
            // Still stable while this process runs.
            warn!(error = %e, "storing the decoy secret failed");
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_accounts_get_a_stable_decoy_with_the_configured_iterations() {
        let storage = canto_storage::Storage::memory();
        let real = Credentials::from_password("pw", 4096);
        let created = storage
            .accounts
            .create("example.test", "alice", &real)
            .await;
        assert!(created.is_ok());
        let mut config = crate::Config {
            hosts: vec!["example.test".into()],
            modules: Vec::new(),
            ..Default::default()
        };
        config.limits.scram_iterations = 5000;
        let s = Server::new(config.clone(), storage.clone(), &[]).unwrap_or_else(|e| panic!("{e}"));
        let get = |s: &std::sync::Arc<Server>, user: &'static str| {
            let s = s.clone();
            async move {
                s.credentials_or_decoy("example.test", user)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panic!("no credentials for {user}"))
            }
        };
        assert_eq!(get(&s, "alice").await, real);
        let decoy = get(&s, "nobody").await;
        assert_eq!(decoy.sha256.iterations, 5000);
        assert_eq!(decoy.sha1.iterations, 5000);
        assert_eq!(decoy.sha256.salt.len(), real.sha256.salt.len());
        assert_eq!(get(&s, "nobody").await, decoy);
        assert_ne!(get(&s, "somebody").await.sha256.salt, decoy.sha256.salt);
        // A restarted server on the same storage offers the same salt.
        let again = Server::new(config, storage, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&again, "nobody").await, decoy);
    }
}
