//! `csi`: XEP-0352 Client State Indication (Prosody's `mod_csi` with `mod_csi_simple`).
//! Enabling the module offers `<csi xmlns='urn:xmpp:csi:0'/>` after authentication; without
//! it `<active/>`/`<inactive/>` are unknown elements.
//!
//! What an inactive client's connection holds back (presence updates, chat states without a
//! body) and the flush on `<active/>` are on the connection's write path:
//! `canto_net::c2s` (`can_wait`, `write_stanza`). Configuration: `[csi] max_held`.

use canto_core::{Module, ModuleCtx, Spec};
use canto_stanza::ns;
use canto_xml::Element;

/// The module.
pub struct Csi;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0352",
    version: "1.0.0",
    title: "Client State Indication",
}];

impl Module for Csi {
    fn name(&self) -> &'static str {
        "csi"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0352 §2: the feature is offered after authentication.
        ctx.add_stream_feature(Element::new("csi", ns::CSI));
        Ok(())
    }
}
