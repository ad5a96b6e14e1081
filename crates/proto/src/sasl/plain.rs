//! SASL PLAIN (RFC 4616), checked against the stored SCRAM-SHA-256 keys.

use super::keys::{Credentials, DEFAULT_ITERATIONS, HashAlgo, ScramKeys};
use super::mechanism::SaslFailure;
use super::server::{check_authzid, normalize_username};

/// A parsed PLAIN message waiting for the account's credentials.
pub(super) struct Pending {
    /// Nodeprep-normalized authcid.
    pub(super) username: String,
    password: String,
}

/// Parses `[authzid] NUL authcid NUL passwd` (RFC 4616 §2) and checks the identities.
pub(super) fn parse(msg: &[u8], host: &str) -> Result<Pending, SaslFailure> {
    // RFC 4616 §2: every field is UTF-8.
    let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
    let mut fields = msg.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    // RFC 4616 §2: authcid and passwd are 1*SAFE; authzid may be empty.
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let username = normalize_username(authcid)?;
    // RFC 4616 §2 / RFC 6120 §6.3.8: only the account's own identity may be requested.
    check_authzid(authzid, &username, host)?;
    Ok(Pending {
        username,
        password: password.to_owned(),
    })
}

impl Pending {
    /// Verifies the password; for an unknown account the same key derivation still runs so the
    /// response time does not reveal whether the account exists.
    pub(super) fn verify(&self, creds: Option<&Credentials>) -> bool {
        match creds {
            Some(c) => c.sha256.verify_password(HashAlgo::Sha256, &self.password),
            None => {
                let dummy = ScramKeys::derive(
                    HashAlgo::Sha256,
                    &self.password,
                    &[0u8; 16],
                    DEFAULT_ITERATIONS,
                );
                // Keep the result observable so the derivation is not optimized away.
                std::hint::black_box(dummy);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ChannelBindings, Mechanism, SaslServer, Step};
    use super::*;

    fn creds() -> Credentials {
        Credentials::from_password("pencil", 64)
    }

    fn start(initial: Option<&[u8]>) -> (SaslServer, Step) {
        SaslServer::start(
            Mechanism::Plain,
            "example.org",
            ChannelBindings::default(),
            false,
            initial,
        )
    }

    fn need(user: &str) -> Step {
        Step::NeedCredentials {
            username: user.to_owned(),
        }
    }

    #[test]
    fn success_with_initial_response() {
        let (mut s, step) = start(Some(b"\0User\0pencil"));
        assert_eq!(step, need("user"));
        assert_eq!(
            s.credentials(Some(&creds())),
            Step::Success {
                username: "user".to_owned(),
                additional_data: None
            }
        );
        // Anything after the terminal step is refused.
        assert_eq!(
            s.respond(b"\0user\0pencil"),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            s.credentials(Some(&creds())),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn decoy_credentials_fail_like_a_wrong_password() {
        let decoy = Credentials::decoy(&[1u8; 32], "example.org", "nobody", 64);
        let (mut s, _) = start(Some(b"\0nobody\0pencil"));
        assert_eq!(
            s.credentials(Some(&decoy)),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        let (mut s, _) = start(Some(b"\0user\0wrong"));
        assert_eq!(
            s.credentials(Some(&creds())),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn success_after_empty_challenge() {
        let (mut s, step) = start(None);
        assert_eq!(step, Step::Challenge(vec![]));
        assert_eq!(s.respond(b"user@example.org\0user\0pencil"), need("user"));
        assert!(matches!(
            s.credentials(Some(&creds())),
            Step::Success { .. }
        ));
    }

    #[test]
    fn own_authzid_is_case_normalized() {
        let (_, step) = start(Some(b"USER@Example.ORG\0user\0pencil"));
        assert_eq!(step, need("user"));
        let (_, step) = start(Some(b"user@example.org/res\0user\0pencil"));
        assert_eq!(step, need("user"));
    }

    #[test]
    fn wrong_password_and_unknown_user() {
        let (mut s, _) = start(Some(b"\0user\0pencil2"));
        assert_eq!(
            s.credentials(Some(&creds())),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        let (mut s, _) = start(Some(b"\0nobody\0pencil"));
        assert_eq!(
            s.credentials(None),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn other_authzid_is_refused() {
        for authzid in [
            &b"admin@example.org"[..],
            b"user@example.net",
            b"example.org",
            b"@@@",
        ] {
            let mut msg = authzid.to_vec();
            msg.extend_from_slice(b"\0user\0pencil");
            let (mut s, step) = start(Some(&msg));
            assert_eq!(step, Step::Failure(SaslFailure::InvalidAuthzid));
            assert_eq!(
                s.credentials(Some(&creds())),
                Step::Failure(SaslFailure::MalformedRequest)
            );
        }
    }

    #[test]
    fn malformed_variants() {
        for msg in [
            &b""[..],
            b"user",
            b"\0user",
            b"\0user\0",
            b"\0\0pencil",
            b"\0user\0pencil\0",
            b"\0\0\0",
            b"\0us\xffer\0pencil",
            b"\0user\0pen\xc3",
        ] {
            let (_, step) = start(Some(msg));
            assert_eq!(
                step,
                Step::Failure(SaslFailure::MalformedRequest),
                "{msg:?}"
            );
        }
        // Syntactically fine but not a valid localpart.
        for msg in [&b"\0us er\0pencil"[..], b"\0user@example.org\0pencil"] {
            let (_, step) = start(Some(msg));
            assert_eq!(step, Step::Failure(SaslFailure::NotAuthorized), "{msg:?}");
        }
    }
}
