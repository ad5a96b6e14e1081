//! `last`: XEP-0012 Last Activity, for the server itself: its uptime (XEP-0012 §4), as
//! Prosody's `mod_uptime` answers.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{IqType, StanzaError};
use canto_xml::Element;

use crate::expect_payload;

/// `jabber:iq:last`.
pub const NS: &str = "jabber:iq:last";

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
        ctx.hook_iq(IqTarget::Host, IqType::Get, NS, Arc::new(Uptime))?;
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
