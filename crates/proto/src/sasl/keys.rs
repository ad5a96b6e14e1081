//! Stored SCRAM credentials (RFC 5802 §3): what the server keeps instead of a password.

use hmac::{KeyInit, Mac};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// The hash function a SCRAM family member is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
}

impl HashAlgo {
    /// `H(data)`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlgo::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlgo::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            HashAlgo::Sha1 => {
                let mut m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            HashAlgo::Sha256 => {
                let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `Hi(password, salt, i)` = PBKDF2 with HMAC-H (RFC 5802 §2.2).
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            HashAlgo::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(password, salt, iterations).to_vec()
            }
            HashAlgo::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password, salt, iterations).to_vec()
            }
        }
    }
}

/// Salt, iteration count, StoredKey and ServerKey for one hash (RFC 5802 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    /// Random salt, 16 bytes when generated here.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// Derives the keys for `password` with the given salt and iteration count.
    pub fn derive(algo: HashAlgo, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = algo.salted_password(password.as_bytes(), salt, iterations);
        Self::from_salted_password(algo, &salted, salt, iterations)
    }

    /// Derives the keys from an already salted password (`Hi(password, salt, i)`).
    pub fn from_salted_password(
        algo: HashAlgo,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramKeys {
        let client_key = algo.hmac(salted, b"Client Key");
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: algo.hash(&client_key),
            server_key: algo.hmac(salted, b"Server Key"),
        }
    }

    /// Checks a plaintext password (SASL PLAIN) against these keys: one key derivation and a
    /// constant-time comparison of the StoredKey.
    pub fn verify_password(&self, algo: HashAlgo, password: &str) -> bool {
        let candidate = Self::derive(algo, password, &self.salt, self.iterations);
        bool::from(candidate.stored_key.ct_eq(&self.stored_key))
            & bool::from(candidate.server_key.ct_eq(&self.server_key))
    }
}

/// Everything stored for one account: SCRAM keys for SHA-1 and SHA-256, never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Keys for SCRAM-SHA-1(-PLUS).
    pub sha1: ScramKeys,
    /// Keys for SCRAM-SHA-256(-PLUS); also what PLAIN is checked against.
    pub sha256: ScramKeys,
}

/// Default PBKDF2 iteration count for new credentials (RFC 7677 §4 recommends at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

impl Credentials {
    /// Derives fresh credentials with a random 16-byte salt per hash.
    pub fn from_password(password: &str, iterations: u32) -> Credentials {
        let mut salt1 = [0u8; 16];
        let mut salt256 = [0u8; 16];
        rand::fill(&mut salt1);
        rand::fill(&mut salt256);
        Credentials {
            sha1: ScramKeys::derive(HashAlgo::Sha1, password, &salt1, iterations),
            sha256: ScramKeys::derive(HashAlgo::Sha256, password, &salt256, iterations),
        }
    }

    /// Stand-in credentials for an account that does not exist, so that a login attempt at
    /// one looks and costs the same as at a real account with a wrong password (no account
    /// enumeration by timing or by the SCRAM server-first message): SCRAM is offered a salt
    /// that is stable for `(host, username)` — an HMAC under `secret`, so it cannot be told
    /// from a random one without the secret — 16 bytes like [`Credentials::from_password`]'s,
    /// and `iterations`, the count real accounts get; PLAIN runs the same PBKDF2 against them.
    /// The keys are empty, so no password and no SCRAM proof ever matches.
    pub fn decoy(secret: &[u8], host: &str, username: &str, iterations: u32) -> Credentials {
        let keys = |tag: &[u8]| {
            let mut input = Vec::with_capacity(tag.len() + host.len() + username.len() + 2);
            input.extend_from_slice(tag);
            input.push(0);
            input.extend_from_slice(host.as_bytes());
            input.push(0);
            input.extend_from_slice(username.as_bytes());
            let mut salt = HashAlgo::Sha256.hmac(secret, &input);
            salt.truncate(16);
            ScramKeys {
                salt,
                iterations,
                stored_key: Vec::new(),
                server_key: Vec::new(),
            }
        };
        Credentials {
            sha1: keys(b"decoy-sha1"),
            sha256: keys(b"decoy-sha256"),
        }
    }

    /// The keys for one hash.
    pub fn keys(&self, algo: HashAlgo) -> &ScramKeys {
        match algo {
            HashAlgo::Sha1 => &self.sha1,
            HashAlgo::Sha256 => &self.sha256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // RFC 5802 §5 example: user "user", password "pencil", salt QSXCR+Q6sek8bf92, i=4096.
    #[test]
    fn rfc5802_stored_key() {
        let salt = [
            0x41, 0x25, 0xc2, 0x47, 0xe4, 0x3a, 0xb1, 0xe9, 0x3c, 0x6d, 0xff, 0x76,
        ];
        let k = ScramKeys::derive(HashAlgo::Sha1, "pencil", &salt, 4096);
        assert_eq!(
            hex(&k.stored_key),
            "e9d94660c39d65c38fbad91c358f14da0eef2bd6"
        );
        assert!(k.verify_password(HashAlgo::Sha1, "pencil"));
        assert!(!k.verify_password(HashAlgo::Sha1, "pencil2"));
    }

    #[test]
    fn fresh_credentials_verify_and_differ_by_salt() {
        let a = Credentials::from_password("secret", 64);
        let b = Credentials::from_password("secret", 64);
        assert_ne!(a.sha256.salt, b.sha256.salt);
        assert!(a.sha256.verify_password(HashAlgo::Sha256, "secret"));
        assert!(!a.sha256.verify_password(HashAlgo::Sha256, "Secret"));
        assert_eq!(a.sha256.stored_key.len(), 32);
        assert_eq!(a.sha1.stored_key.len(), 20);
    }
}
