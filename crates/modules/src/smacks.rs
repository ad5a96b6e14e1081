//! `smacks`: XEP-0198 Stream Management (Prosody's `mod_smacks`). Enabling the module offers
//! `<sm xmlns='urn:xmpp:sm:3'/>` after authentication; without it the connection treats
//! `urn:xmpp:sm:3` elements as unknown.
//!
//! The protocol runs where it must, on the connection's read and write paths and beyond the
//! connection's life: counters and the unacknowledged queue in `canto_proto::sm`, the
//! per-connection part in `canto_net::c2s` (`Conn::stream_management`, `Conn::resume`),
//! hibernation and re-routing of unacknowledged messages in `canto_core::sm`.
//!
//! Configuration (`[stream_management]`, see `canto config example`): `resume_timeout`,
//! `max_unacked`, `request_ack_after`, `answer_delay_ms`, `remember_expired`.

use canto_core::{Module, ModuleCtx, Spec};
use canto_proto::sm::NS;
use canto_xml::Element;

/// The module.
pub struct Smacks;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0198",
    version: "1.6.1",
    title: "Stream Management",
}];

impl Module for Smacks {
    fn name(&self) -> &'static str {
        "smacks"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0198 §2: the feature is offered after authentication.
        ctx.add_stream_feature(Element::new("sm", NS));
        Ok(())
    }
}
