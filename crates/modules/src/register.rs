//! `register`: XEP-0077 In-Band Registration (Prosody's `mod_register`), off by default.
//! Enabled, it lets a new client create an account before authenticating (the connection task
//! offers the stream feature and handles that IQ with `Server::register_account`), and lets a
//! logged-in user change their password or cancel their account — handled here.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_proto::register::{NS, RegisterSet, parse_set, registered};
use canto_stanza::{Condition, IqType, StanzaError};
use canto_xml::Element;

use crate::from_owner;

/// The module.
pub struct Register;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0077",
    version: "2.4",
    title: "In-Band Registration",
}];

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        ctx.add_feature(NS);
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            NS,
            Arc::new(AccountRegister),
        )?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Set,
            NS,
            Arc::new(AccountRegister),
        )?;
        ctx.hook_iq(IqTarget::Host, IqType::Get, NS, Arc::new(AccountRegister))?;
        ctx.hook_iq(IqTarget::Host, IqType::Set, NS, Arc::new(AccountRegister))?;
        Ok(())
    }
}

struct AccountRegister;

#[async_trait]
impl IqHandler for AccountRegister {
    /// XEP-0077 §3.2 (cancel) and §3.3 (change password), for the logged-in account.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        if req.to.node().is_some() && !from_owner(&req) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let user = req.from.to_bare();
        let username = user
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        if IqType::of(req.stanza) == Some(IqType::Get) {
            return Ok(Some(registered(&username)));
        }
        match parse_set(req.payload)? {
            RegisterSet::Credentials {
                username: u,
                password,
            } => {
                // §3.3: the username must be the account's own.
                if canto_stanza::jid::normalize_node(&u).as_deref() != Some(username.as_str()) {
                    return Err(
                        StanzaError::new(Condition::BadRequest).with_text("username mismatch")
                    );
                }
                req.server.change_password(&user, &password).await?;
                Ok(None)
            }
            RegisterSet::Remove => {
                // §3.2: the account and its data go. The router queues this IQ's result as soon
                // as we return; the deletion, which ends the stream, follows a moment later so
                // the client sees the result before the stream closes.
                let server = req.server.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if let Err(e) = server.delete_account(&user).await {
                        tracing::warn!(error = %e, user = %user, "in-band account removal failed");
                    }
                });
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use canto_core::Config;
    use canto_stanza::Condition;

    use crate::test_support::{HOST, server_with_config};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn config(max_attempts: u32) -> Config {
        let mut c = Config {
            hosts: vec![HOST.into()],
            modules: vec!["register".into()],
            ..Default::default()
        };
        c.register.max_attempts = max_attempts;
        c
    }

    async fn register(s: &canto_core::Server, user: &str, from: &str) -> Result<String, Condition> {
        s.register_account(HOST, user, "pw", ip(from))
            .await
            .map(|j| j.to_string())
            .map_err(|e| e.condition)
    }

    #[tokio::test]
    async fn a_taken_username_is_conflict_even_right_after_a_registration() {
        let s = server_with_config(config(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            register(&s, "carol", "192.0.2.1").await,
            Ok(format!("carol@{HOST}"))
        );
        // XEP-0077 §3.1: conflict, not the spacing limit's resource-constraint.
        assert_eq!(
            register(&s, "alice", "192.0.2.1").await,
            Err(Condition::Conflict)
        );
        assert_eq!(
            register(&s, "Carol", "192.0.2.1").await,
            Err(Condition::Conflict)
        );
        // A free name from the same address still waits.
        assert_eq!(
            register(&s, "dave", "192.0.2.1").await,
            Err(Condition::ResourceConstraint)
        );
    }

    #[tokio::test]
    async fn failed_attempts_count_per_64() {
        let s = server_with_config(config(3))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Three failures from one /64 (a taken name, an invalid one) use up its attempts …
        assert_eq!(
            register(&s, "alice", "2001:db8::1").await,
            Err(Condition::Conflict)
        );
        assert_eq!(
            register(&s, "a@b", "2001:db8::2").await,
            Err(Condition::JidMalformed)
        );
        assert_eq!(
            register(&s, "bob", "2001:db8::ffff:1").await,
            Err(Condition::Conflict)
        );
        // … so a fourth, even for a free name, is refused …
        assert_eq!(
            register(&s, "carol", "2001:db8::3").await,
            Err(Condition::ResourceConstraint)
        );
        // … while the next /64 may register, once: the spacing is per /64 too.
        assert_eq!(
            register(&s, "carol", "2001:db8:0:1::1").await,
            Ok(format!("carol@{HOST}"))
        );
        assert_eq!(
            register(&s, "dave", "2001:db8:0:1::2").await,
            Err(Condition::ResourceConstraint)
        );
        assert_eq!(
            s.storage.accounts.exists(HOST, "dave").await.ok(),
            Some(false)
        );
    }
}
