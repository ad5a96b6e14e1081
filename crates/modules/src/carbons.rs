//! `carbons`: XEP-0280 Message Carbons (Prosody's `mod_carbons`): enable and disable per
//! resource. Which messages are copied, and the copying, are in `canto-core` (`carbons.rs`,
//! called by the router).

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::carbons::NS;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{Condition, IqType, StanzaError};
use canto_xml::Element;

use crate::from_owner;

/// The module.
pub struct Carbons;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0280",
        version: "1.0.1",
        title: "Message Carbons",
    },
    Spec {
        id: "XEP-0297",
        version: "1.0",
        title: "Stanza Forwarding",
    },
    // Only the `no-copy` hint, which carbons honour (XEP-0334 §4.3 / XEP-0280 §6).
    Spec {
        id: "XEP-0334",
        version: "0.3.0",
        title: "Message Processing Hints",
    },
];

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0280 §3: the server advertises `urn:xmpp:carbons:2`.
        ctx.add_feature(NS);
        ctx.hook_iq(IqTarget::Account, IqType::Set, NS, Arc::new(CarbonsIq))?;
        ctx.hook_iq(IqTarget::Host, IqType::Set, NS, Arc::new(CarbonsIq))?;
        Ok(())
    }
}

struct CarbonsIq;

#[async_trait]
impl IqHandler for CarbonsIq {
    /// XEP-0280 §4 (enable) and §5 (disable), for the sending resource only.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        let on = match req.payload.name() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::new(Condition::BadRequest)),
        };
        // Sent to the user's own bare JID, to the server, or without `to`.
        if req.to.node().is_some() && !from_owner(&req) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let Some(session) = req.origin.session().cloned() else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        session.set_carbons(on);
        Ok(None)
    }
}
