//! `ping`: XEP-0199 XMPP Ping (Prosody's `mod_ping`).

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{Condition, IqType, StanzaError, ns};
use canto_xml::Element;

use crate::{expect_payload, from_owner};

/// The module.
pub struct Ping;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0199",
    version: "2.0.1",
    title: "XMPP Ping",
}];

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0199 §5: support is advertised as the `urn:xmpp:ping` disco feature.
        ctx.add_feature(ns::PING);
        ctx.hook_iq(IqTarget::Host, IqType::Get, ns::PING, Arc::new(HostPing))?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            ns::PING,
            Arc::new(AccountPing),
        )?;
        Ok(())
    }
}

/// Answers `<ping xmlns='urn:xmpp:ping'/>` gets addressed to the server.
struct HostPing;

#[async_trait]
impl IqHandler for HostPing {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "ping")?;
        // XEP-0199 §4.2 (client-to-server ping): the server answers with an empty IQ result.
        Ok(None)
    }
}

/// Answers pings addressed to an account's bare JID (or sent without `to`), on the account's
/// behalf: only the account itself gets a result.
struct AccountPing;

#[async_trait]
impl IqHandler for AccountPing {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "ping")?;
        // RFC 6120 §10.3.3: an IQ without `to` (or to the sender's own bare JID) is handled by
        // the server on the account's behalf, so a client pinging itself gets XEP-0199 §4.2's
        // empty result.
        if from_owner(&req) {
            return Ok(None);
        }
        // RFC 6121 §8.5.2.1.3: the server answers for the bare JID; a ping to someone else's
        // account is not something it supports on their behalf (XEP-0199 §3: an entity that
        // does not support ping returns service-unavailable).
        Err(StanzaError::new(Condition::ServiceUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, get, result_xml, server};

    fn ping() -> Element {
        Element::new("ping", ns::PING)
    }

    #[tokio::test]
    async fn ping_to_server_is_an_empty_result() {
        let s = server(&["ping"]).await;
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, ping()).await);
        assert_eq!(got, "empty result");
    }

    #[tokio::test]
    async fn ping_to_own_bare_jid_is_an_empty_result() {
        let s = server(&["ping"]).await;
        let got = result_xml(
            get(
                &s,
                IqTarget::Account,
                "alice@example.test/a",
                "alice@example.test",
                ping(),
            )
            .await,
        );
        assert_eq!(got, "empty result");
    }

    #[tokio::test]
    async fn ping_to_another_account_is_service_unavailable() {
        let s = server(&["ping"]).await;
        let got = result_xml(
            get(
                &s,
                IqTarget::Account,
                "bob@example.test/b",
                "alice@example.test",
                ping(),
            )
            .await,
        );
        assert_eq!(got, "error service-unavailable");
    }

    #[tokio::test]
    async fn ping_feature_only_when_loaded() {
        let s = server(&["ping"]).await;
        assert_eq!(s.modules().features(), [ns::PING.to_string()]);
        let s = server(&["disco"]).await;
        assert!(!s.modules().features().iter().any(|f| f == ns::PING));
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, ping()).await);
        assert_eq!(got, "no handler");
    }

    #[tokio::test]
    async fn ping_set_is_not_handled() {
        let s = server(&["ping"]).await;
        assert!(
            s.modules()
                .iq_handler(IqTarget::Host, IqType::Set, ns::PING)
                .is_none()
        );
    }
}
