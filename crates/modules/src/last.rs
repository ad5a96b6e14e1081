//! `last`: XEP-0012 Last Activity. For the server itself, its uptime (§4, as Prosody's
//! `mod_uptime`); for an account, the time since its user last went unavailable and the status
//! text left then (§3 "Offline User Query", as Prosody's `mod_lastactivity`), recorded by an
//! session hook (`SessionEvent::Unavailable`) in the key-value store `lastactivity`. A query to a full JID goes to that
//! client (§2), like every IQ to a full JID.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::stores::KvStore;
use canto_core::{
    IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Server, SessionEvent, SessionHook, Spec,
};
use canto_stanza::{Condition, FullJid, IqType, StanzaError, datetime};
use canto_xml::Element;
use tracing::warn;

use crate::expect_payload;

/// `jabber:iq:last`.
pub const NS: &str = "jabber:iq:last";

/// The key-value store of the last unavailable time and status, per account.
const STORE: &str = "lastactivity";

/// The module.
pub struct Last;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0012",
    version: "2.0",
    title: "Last Activity",
}];

impl Module for Last {
    fn name(&self) -> &'static str {
        "last"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        ctx.add_feature(NS);
        ctx.add_account_feature(NS);
        ctx.hook_iq(IqTarget::Host, IqType::Get, NS, Arc::new(Uptime))?;
        let store = ctx.open_kv(STORE)?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            NS,
            Arc::new(UserLast {
                store: store.clone(),
            }),
        )?;
        ctx.hook_session(0, Arc::new(Recorder { store }));
        Ok(())
    }
}

struct Uptime;

#[async_trait]
impl IqHandler for Uptime {
    /// XEP-0012 §4: a query to a server returns the seconds since it started.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        let secs = req.server.uptime().as_secs();
        Ok(Some(
            Element::new("query", NS).with_attr("seconds", secs.to_string()),
        ))
    }
}

/// Records when a resource went unavailable, and with which status.
struct Recorder {
    store: KvStore,
}

#[async_trait]
impl SessionHook for Recorder {
    async fn on_session(&self, server: &Arc<Server>, resource: &FullJid, event: SessionEvent<'_>) {
        let SessionEvent::Unavailable { status } = event else {
            return;
        };
        let user = resource.to_bare();
        let Some(node) = user.node() else {
            return;
        };
        let mut record =
            Element::new("last", NS).with_attr("ms", datetime::now_millis().to_string());
        if let Some(s) = status.filter(|s| !s.is_empty()) {
            record = record.with_text(s);
        }
        let (host, node) = (user.domain().as_str(), node.as_str());
        let kv = &self.store;
        if let Err(e) = kv.set(host, node, Some(&record.to_bytes())).await {
            warn!(%user, error = %e, "last activity not stored");
            return;
        }
        // An account deleted meanwhile keeps nothing: its data goes in one transaction, before
        // this write (then the account is gone now and the row is ours to remove) or after it
        // (then the row went with the rest).
        if !server.account_exists(&user).await {
            let _ = kv.set(host, node, None).await;
        }
    }
}

struct UserLast {
    store: KvStore,
}

#[async_trait]
impl IqHandler for UserLast {
    /// XEP-0012 §3: a query to an account's bare JID, answered by the server on its behalf.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // §3: only for whoever may see the user's presence (the user and contacts with a
        // `from` or `both` subscription); anyone else gets forbidden. (A query about an account
        // that does not exist never gets here: RFC 6121 §8.5.1, service-unavailable.)
        if !crate::disco::may_see_presence(&req).await {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let user = req.to.to_bare();
        // §3: a user with an available resource is active now.
        if req.server.is_available(&user) {
            return Ok(Some(Element::new("query", NS).with_attr("seconds", "0")));
        }
        let Some(node) = user.node() else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        let record = self
            .store
            .get(user.domain().as_str(), node.as_str())
            .await
            .map_err(|_| StanzaError::new(Condition::InternalServerError))?
            .as_deref()
            .and_then(canto_core::roster::decode_element);
        // Never went unavailable since the module was on: nothing to tell.
        let Some(record) = record else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        let at: i64 = record
            .attr("ms")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| StanzaError::new(Condition::InternalServerError))?;
        let secs = (datetime::now_millis() - at).max(0) / 1000;
        let mut query = Element::new("query", NS).with_attr("seconds", secs.to_string());
        let status = record.text();
        if !status.is_empty() {
            query = query.with_text(status);
        }
        Ok(Some(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, get, result_xml, server};

    #[tokio::test]
    async fn server_uptime_in_seconds() {
        let s = server(&["last"]).await;
        let got = result_xml(
            get(
                &s,
                IqTarget::Host,
                "alice@example.test/a",
                HOST,
                Element::new("query", NS),
            )
            .await,
        );
        assert_eq!(got, "<query xmlns='jabber:iq:last' seconds='0'/>");
    }
}
