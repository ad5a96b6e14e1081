//! Negotiation before a session is bound: STARTTLS (where the transport has it), SASL
//! (RFC 6120 §6), in-band registration (XEP-0077) and resource binding (RFC 6120 §7).

use canto_proto::c2s::{BindRequest, bind_result, offered_mechanisms, parse_bind, sasl_failure};
use canto_proto::sasl::{Mechanism, SaslServer, Step, decode_payload, encode_payload};
use canto_stanza::stanza::{error_reply, iq_result};
use canto_stanza::{Condition, FullJid, StanzaError, StreamCondition, StreamError, ns};
use canto_xml::Element;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::auth_limits;
use super::engine::{Conn, End, Flow, Phase, stream_error};
use super::transport::Transport;

impl<T: Transport> Conn<T> {
    /// Before authentication only STARTTLS and SASL are allowed: unauthenticated sessions
    /// route nothing.
    pub(super) async fn unauthenticated(&mut self, el: Element) -> Result<Flow, End> {
        match (el.ns(), el.name()) {
            (ns::TLS, "starttls") => {
                if !self.t.can_starttls() {
                    // RFC 6120 §5.4.2.2: failure, then close.
                    self.send(&Element::new("failure", ns::TLS));
                    self.t.write_close(&mut self.out);
                    return Err(End::Gone("STARTTLS refused"));
                }
                self.send(&Element::new("proceed", ns::TLS));
                self.flush().await?;
                Ok(Flow::StartTls)
            }
            (ns::SASL, "auth") => {
                self.sasl_auth(&el).await?;
                Ok(Flow::Continue)
            }
            (ns::SASL, "response") => {
                let step = match &mut self.phase {
                    Phase::Unauthenticated { sasl: Some(s), .. } => {
                        match decode_payload(&el.text()) {
                            Ok(data) => s.respond(&data),
                            Err(f) => Step::Failure(f),
                        }
                    }
                    // Prosody: "Out of order SASL element".
                    _ => Step::Failure(canto_proto::sasl::SaslFailure::NotAuthorized),
                };
                self.sasl_step(step).await?;
                Ok(Flow::Continue)
            }
            (ns::SASL, "abort") => {
                // RFC 6120 §6.4.4
                if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
                    *sasl = None;
                }
                self.auth_user = None;
                self.send(&sasl_failure("aborted"));
                Ok(Flow::Continue)
            }
            (ns::CLIENT, "iq")
                if self.registration_open() && el.has_child("query", canto_proto::register::NS) =>
            {
                self.register(&el).await;
                Ok(Flow::Continue)
            }
            (ns::CLIENT, "message" | "presence" | "iq") => {
                Err(stream_error(StreamCondition::NotAuthorized))
            }
            _ => Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// XEP-0077 is enabled (module `register`) and the stream may carry credentials: on TLS,
    /// or in plaintext only where the configuration allows SASL in plaintext too.
    pub(super) fn registration_open(&self) -> bool {
        self.ctx.server.modules().loaded().contains(&"register")
            && (self.t.is_secure() || !self.ctx.server.config().c2s.require_encryption)
    }

    /// XEP-0077 §3.1: registration before authentication (get: the form; set: the account).
    pub(super) async fn register(&mut self, el: &Element) {
        use canto_proto::register::{RegisterSet, form, parse_set};
        let Some(query) = el.get_child("query", canto_proto::register::NS) else {
            return;
        };
        let reply = match canto_stanza::IqType::of(el) {
            Some(canto_stanza::IqType::Get) => iq_result(el, Some(form())),
            Some(canto_stanza::IqType::Set) => match parse_set(query) {
                Ok(RegisterSet::Credentials { username, password }) => {
                    let host = self.host.clone().unwrap_or_default();
                    match self
                        .ctx
                        .server
                        .register_account(&host, &username, &password, self.peer.ip())
                        .await
                    {
                        Ok(jid) => {
                            info!(%jid, "account registered in band");
                            iq_result(el, None)
                        }
                        Err(e) => error_reply(el, &e),
                    }
                }
                // §3.2: cancelling needs an account: not before authentication.
                Ok(RegisterSet::Remove) => {
                    error_reply(el, &StanzaError::new(Condition::NotAuthorized))
                }
                Err(e) => error_reply(el, &e),
            },
            _ => error_reply(el, &StanzaError::new(Condition::BadRequest)),
        };
        self.send(&reply);
    }

    pub(super) async fn sasl_auth(&mut self, el: &Element) -> Result<(), End> {
        let config = self.ctx.server.config();
        let tls = self.t.is_secure();
        let offered = offered_mechanisms(tls, config.c2s.require_encryption, &self.cb);
        let mech = el.attr("mechanism").and_then(Mechanism::from_name);
        let Some(mech) = mech.filter(|m| offered.contains(m)) else {
            // RFC 6120 §6.4.5 and §6.5.4; Prosody says encryption-required before TLS.
            let cond = if !tls && config.c2s.require_encryption {
                "encryption-required"
            } else {
                "invalid-mechanism"
            };
            self.send(&sasl_failure(cond));
            return Ok(());
        };
        // RFC 6120 §6.4.2: no text is no initial response; "=" is an empty one.
        let initial = if el.nodes().is_empty() {
            None
        } else {
            match decode_payload(&el.text()) {
                Ok(d) => Some(d),
                Err(f) => return self.sasl_step(Step::Failure(f)).await,
            }
        };
        let host = self.host.clone().unwrap_or_default();
        self.auth_user = None;
        let plus_offered = offered.iter().any(|m| m.is_plus());
        let (s, step) = SaslServer::start(
            mech,
            &host,
            self.cb.clone(),
            plus_offered,
            initial.as_deref(),
        );
        if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
            *sasl = Some(s);
        }
        self.sasl_step(step).await
    }

    /// Carries a SASL step out: look up credentials, send a challenge, succeed or fail.
    pub(super) async fn sasl_step(&mut self, mut step: Step) -> Result<(), End> {
        loop {
            match step {
                Step::NeedCredentials { username } => {
                    let host = self.host.clone().unwrap_or_default();
                    self.auth_user = Some(format!("{username}@{host}"));
                    let creds = match self.ctx.server.credentials_or_decoy(&host, &username).await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "credential lookup failed");
                            step =
                                Step::Failure(canto_proto::sasl::SaslFailure::TemporaryAuthFailure);
                            continue;
                        }
                    };
                    let Phase::Unauthenticated { sasl, .. } = &mut self.phase else {
                        return Err(stream_error(StreamCondition::InternalServerError));
                    };
                    let Some(mut s) = sasl.take() else {
                        return Err(stream_error(StreamCondition::InternalServerError));
                    };
                    // PLAIN pays a key derivation here: keep it off the reactor threads.
                    let (s, next) = if s.mechanism() == Mechanism::Plain {
                        tokio::task::spawn_blocking(move || {
                            let next = s.credentials(creds.as_ref());
                            (s, next)
                        })
                        .await
                        .map_err(|_| stream_error(StreamCondition::InternalServerError))?
                    } else {
                        let next = s.credentials(creds.as_ref());
                        (s, next)
                    };
                    if let Phase::Unauthenticated { sasl, .. } = &mut self.phase {
                        *sasl = Some(s);
                    }
                    step = next;
                }
                Step::Challenge(data) => {
                    self.send(
                        &Element::new("challenge", ns::SASL).with_text(encode_payload(&data)),
                    );
                    return Ok(());
                }
                Step::Success {
                    username,
                    additional_data,
                } => {
                    let mut success = Element::new("success", ns::SASL);
                    if let Some(d) = additional_data {
                        success.push_text(encode_payload(&d));
                    }
                    self.send(&success);
                    info!(username, "authenticated");
                    self.phase = Phase::Authenticated { username };
                    // RFC 6120 §6.4.6: the client restarts the stream.
                    let config = self.ctx.server.config();
                    self.t.restart(Some(auth_limits(&config)));
                    self.header_sent = false;
                    return Ok(());
                }
                Step::Failure(f) => {
                    let mechanism = match &self.phase {
                        Phase::Unauthenticated { sasl: Some(s), .. } => s.mechanism().name(),
                        _ => "unknown",
                    };
                    canto_core::metrics::auth_failure(mechanism);
                    // Per address and, when the attempt named one, per account.
                    let account = self.auth_user.take();
                    let delay = self
                        .ctx
                        .server
                        .auth_failed_for(self.peer.ip(), account.as_deref());
                    if !delay.is_zero() {
                        self.flush().await?;
                        tokio::time::sleep(delay).await;
                    }
                    self.send(&sasl_failure(f.condition()));
                    let retries = self.ctx.server.config().limits.auth_retries;
                    if let Phase::Unauthenticated { sasl, failures } = &mut self.phase {
                        *sasl = None;
                        *failures += 1;
                        // RFC 6120 §6.4.5: a limited number of retries, then the connection ends.
                        if *failures >= retries {
                            return Err(End::Error(
                                StreamError::new(StreamCondition::PolicyViolation)
                                    .with_text("too many failed authentication attempts"),
                            ));
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Authenticated, not bound: resource binding (RFC 6120 §7) and the legacy session request.
    pub(super) async fn authenticated(&mut self, el: Element) -> Result<(), End> {
        if !el.is("iq", ns::CLIENT) {
            return Err(match (el.ns(), el.name()) {
                (ns::CLIENT, _) => stream_error(StreamCondition::NotAuthorized),
                (ns::TLS, _) | (ns::SASL, _) => stream_error(StreamCondition::PolicyViolation),
                _ => stream_error(StreamCondition::UnsupportedStanzaType),
            });
        }
        if el.has_child("session", ns::SESSION) {
            // RFC 3921 §3: accepted as a no-op for old clients.
            self.send(&iq_result(&el, None));
            return Ok(());
        }
        let req = match parse_bind(&el) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(stream_error(StreamCondition::NotAuthorized)),
            Err(e) => {
                self.send(&error_reply(&el, &e));
                return Ok(());
            }
        };
        let Phase::Authenticated { username } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let host = self.host.clone().unwrap_or_default();
        let resource = match req {
            BindRequest::Resource(r) => r,
            // RFC 6120 §7.6: a server-generated resource, unique and unguessable.
            BindRequest::Generate => format!("canto-{:016x}", (self.ctx.ids)()),
        };
        let jid = match FullJid::new(&format!("{username}@{host}/{resource}")) {
            Ok(j) => j,
            Err(_) => {
                self.send(&error_reply(&el, &StanzaError::new(Condition::BadRequest)));
                return Ok(());
            }
        };
        let config = self.ctx.server.config();
        // Room for a full offline store on top of the live queue (XEP-0160 delivery at
        // initial presence must not look like a slow reader).
        let live = config.c2s.max_send_queue;
        let (tx, rx) = mpsc::channel(live + config.offline.max_messages);
        let bound = match self.ctx.server.sessions.bind(
            self.id,
            jid.clone(),
            (tx, live),
            self.closer.clone(),
            config.c2s.max_sessions_per_account,
        ) {
            Ok(b) => b,
            Err(e) => {
                self.send(&error_reply(&el, &e));
                return Ok(());
            }
        };
        if let Some(old) = bound.replaced {
            // RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>. It is
            // destroyed here, before this connection handles anything else: its unavailable
            // presence must reach the account's other resources before whatever the new session
            // sends (initial presence may be pipelined right after the bind). The old task's own
            // destroy then finds nothing left to do.
            self.ctx
                .server
                .destroy_session(&old, "replaced by a new connection");
            old.close(
                StreamError::new(StreamCondition::Conflict)
                    .with_text("replaced by a new connection"),
            );
        }
        tracing::Span::current().record("jid", tracing::field::display(&jid));
        info!("resource bound");
        self.send(&iq_result(&el, Some(bind_result(&jid.to_string()))));
        // Session hooks: a connected resource now (session.txt).
        self.ctx.server.resource_bound(&bound.handle).await;
        self.phase = Phase::Bound {
            handle: bound.handle,
            rx,
        };
        Ok(())
    }
}
