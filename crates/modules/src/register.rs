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
