//! The per-connection SASL exchange driver.

use super::keys::Credentials;
use super::mechanism::{ChannelBindings, Mechanism, SaslFailure, Step};
use super::{plain, scram};

/// One server-side SASL exchange (RFC 4422 §3), sans I/O.
///
/// Feed it the decoded `<auth/>` initial response ([`SaslServer::start`]), each decoded
/// `<response/>` ([`SaslServer::respond`]) and the account's stored credentials when asked
/// ([`SaslServer::credentials`]); act on each returned [`Step`]. After a terminal step
/// (success or failure) every further call yields `Failure(MalformedRequest)`.
///
/// For PLAIN, [`SaslServer::credentials`] runs one PBKDF2 derivation; callers on an async
/// runtime may want to run it on a blocking thread.
pub struct SaslServer {
    mech: Mechanism,
    state: State,
}

/// Everything but the tag lives behind a box so the idle size stays two words.
enum State {
    /// Waiting for the client's first message (no initial response was sent).
    Initial(Box<Context>),
    /// PLAIN parsed; waiting for the caller's credential lookup.
    PlainCredentials(Box<plain::Pending>),
    /// SCRAM client-first parsed; waiting for the caller's credential lookup.
    ScramCredentials(Box<scram::Pending>),
    /// SCRAM server-first sent; waiting for client-final.
    ScramFinal(Box<scram::AwaitFinal>),
    /// Success or failure was returned.
    Done,
}

/// What the first client message is interpreted against.
pub(super) struct Context {
    pub(super) host: String,
    pub(super) cb: ChannelBindings,
    pub(super) plus_offered: bool,
}

impl SaslServer {
    /// `host`: the virtual host (stream `to`); `cb`: channel bindings of this connection;
    /// `plus_offered`: whether -PLUS mechanisms were advertised (for SCRAM downgrade detection,
    /// RFC 5802 §6); `initial`: decoded initial response (None if absent; Some(empty) for "=").
    pub fn start(
        mech: Mechanism,
        host: &str,
        cb: ChannelBindings,
        plus_offered: bool,
        initial: Option<&[u8]>,
    ) -> (SaslServer, Step) {
        let ctx = Context {
            host: host.to_owned(),
            cb,
            plus_offered,
        };
        let mut server = SaslServer {
            mech,
            state: State::Done,
        };
        let step = match initial {
            Some(data) => server.first_message(&ctx, data),
            None => {
                // RFC 4422 §5 / RFC 6120 §6.4.3: no initial response, so send an empty challenge
                // and take the client's first message as a response.
                server.state = State::Initial(Box::new(ctx));
                Step::Challenge(Vec::new())
            }
        };
        (server, step)
    }

    /// A decoded `<response/>` payload.
    pub fn respond(&mut self, data: &[u8]) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Initial(ctx) => self.first_message(&ctx, data),
            State::ScramFinal(await_final) => await_final.client_final(data),
            // A response while a credential lookup is pending, or after the end.
            _ => Step::Failure(SaslFailure::MalformedRequest),
        }
    }

    /// Answer to NeedCredentials: None if the account does not exist.
    pub fn credentials(&mut self, creds: Option<&Credentials>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainCredentials(pending) => {
                if pending.verify(creds) {
                    Step::Success {
                        username: pending.username,
                        additional_data: None,
                    }
                } else {
                    Step::Failure(SaslFailure::NotAuthorized)
                }
            }
            State::ScramCredentials(pending) => {
                let (await_final, server_first) = pending.server_first(creds);
                self.state = State::ScramFinal(Box::new(await_final));
                Step::Challenge(server_first.into_bytes())
            }
            _ => Step::Failure(SaslFailure::MalformedRequest),
        }
    }

    /// The client sent `<abort/>` (RFC 6120 §6.4.4): ends the exchange.
    pub fn abort(&mut self) -> Step {
        self.state = State::Done;
        Step::Failure(SaslFailure::Aborted)
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    /// Whether a terminal step has been returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Fixes the server nonce of a pending SCRAM exchange (to reproduce the RFC examples).
    #[cfg(test)]
    pub(crate) fn set_server_nonce(&mut self, nonce: &str) {
        if let State::ScramCredentials(p) = &mut self.state {
            p.server_nonce = nonce.to_owned();
        }
    }

    fn first_message(&mut self, ctx: &Context, data: &[u8]) -> Step {
        let parsed = match self.mech.hash_algo() {
            None => plain::parse(data, &ctx.host).map(|p| {
                let username = p.username.clone();
                (State::PlainCredentials(Box::new(p)), username)
            }),
            Some(algo) => scram::client_first(algo, self.mech.is_plus(), ctx, data).map(|p| {
                let username = p.username.clone();
                (State::ScramCredentials(Box::new(p)), username)
            }),
        };
        match parsed {
            Ok((state, username)) => {
                self.state = state;
                Step::NeedCredentials { username }
            }
            Err(failure) => {
                self.state = State::Done;
                Step::Failure(failure)
            }
        }
    }
}

impl std::fmt::Debug for SaslServer {
    // Never prints secrets (PLAIN password, keys).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Initial(_) => "initial",
            State::PlainCredentials(_) | State::ScramCredentials(_) => "need-credentials",
            State::ScramFinal(_) => "await-client-final",
            State::Done => "done",
        };
        f.debug_struct("SaslServer")
            .field("mech", &self.mech)
            .field("state", &state)
            .finish()
    }
}

/// Nodeprep-normalizes an authentication identity (RFC 6122 / RFC 7622 localpart rules via the
/// `jid` crate); anything that is not a valid localpart cannot be an account.
pub(super) fn normalize_username(raw: &str) -> Result<String, SaslFailure> {
    jid::NodePart::new(raw)
        .map(|node| node.as_str().to_owned())
        .map_err(|_| SaslFailure::NotAuthorized)
}

/// RFC 6120 §6.3.8: an authzid, if given, must be the bare JID of the authenticated account
/// (after normalization); proxy authorization is not supported.
pub(super) fn check_authzid(authzid: &str, username: &str, host: &str) -> Result<(), SaslFailure> {
    if authzid.is_empty() {
        return Ok(());
    }
    let requested = jid::Jid::new(authzid).map_err(|_| SaslFailure::InvalidAuthzid)?;
    let own = jid::BareJid::new(&format!("{username}@{host}"))
        .map_err(|_| SaslFailure::InvalidAuthzid)?;
    if requested.to_bare() == own {
        Ok(())
    } else {
        Err(SaslFailure::InvalidAuthzid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_stays_small() {
        assert!(std::mem::size_of::<SaslServer>() <= 3 * std::mem::size_of::<usize>());
    }

    #[test]
    fn abort_ends_exchange() {
        let (mut s, step) = SaslServer::start(
            Mechanism::ScramSha256,
            "example.org",
            ChannelBindings::default(),
            false,
            None,
        );
        assert_eq!(step, Step::Challenge(vec![]));
        assert!(!s.is_done());
        assert_eq!(s.abort(), Step::Failure(SaslFailure::Aborted));
        assert!(s.is_done());
        assert_eq!(
            s.respond(b"n,,n=user,r=abc"),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        assert!(format!("{s:?}").contains("done"));
    }

    #[test]
    fn credentials_without_request_is_refused() {
        let (mut s, _) = SaslServer::start(
            Mechanism::Plain,
            "example.org",
            ChannelBindings::default(),
            false,
            None,
        );
        assert_eq!(
            s.credentials(None),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        assert!(s.is_done());
    }

    #[test]
    fn authzid_rules() {
        assert_eq!(check_authzid("", "user", "example.org"), Ok(()));
        assert_eq!(
            check_authzid("user@EXAMPLE.org", "user", "example.org"),
            Ok(())
        );
        assert_eq!(
            check_authzid("other@example.org", "user", "example.org"),
            Err(SaslFailure::InvalidAuthzid)
        );
        assert_eq!(
            check_authzid("user@other.example", "user", "example.org"),
            Err(SaslFailure::InvalidAuthzid)
        );
        assert_eq!(normalize_username("UsEr"), Ok("user".to_owned()));
        assert_eq!(normalize_username(""), Err(SaslFailure::NotAuthorized));
        assert_eq!(normalize_username("a@b"), Err(SaslFailure::NotAuthorized));
    }
}
