//! `vcard`: XEP-0054 vcard-temp (Prosody's `mod_vcard`), one vCard per account in the
//! key-value store `vcard`.
//!
//! With module `pep` loaded the vCard is kept in step with PEP (`vcard_pep.rs`): XEP-0398
//! converts between the PHOTO and the XEP-0084 avatar and puts the XEP-0153 hash in presence;
//! XEP-0292 keeps the vCard4 node `urn:xmpp:vcard4` and vcard-temp saying the same. The size
//! limit is the module's own section `[vcard]`.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{Addressed, Direction, HookPoint, ModuleConfig, Section, SectionInfo};
use canto_core::stores::KvStore;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{BareJid, Condition, IqType, StanzaError, StanzaKind};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use crate::{expect_payload, from_owner};

/// The vcard-temp namespace.
pub const NS: &str = "vcard-temp";
const STORE: &str = "vcard";

/// The module.
pub struct Vcard;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0054",
        version: "1.2",
        title: "vcard-temp",
    },
    Spec {
        id: "XEP-0153",
        version: "1.1",
        title: "vCard-Based Avatars",
    },
    Spec {
        id: "XEP-0398",
        version: "1.0.0",
        title: "User Avatar to vCard-Based Avatars Conversion",
    },
    Spec {
        id: "XEP-0084",
        version: "1.1.4",
        title: "User Avatar (converted to and from the vCard)",
    },
    Spec {
        id: "XEP-0292",
        version: "0.12.0",
        title: "vCard4 Over XMPP (the PEP node, kept in step with vcard-temp)",
    },
];

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![VcardConfig::info()]
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0054 §3: support is advertised as the `vcard-temp` feature.
        ctx.add_feature(NS);
        let store = ctx.open_kv(STORE)?;
        let config = ctx.section::<VcardConfig>()?;
        let sync = match ctx.depend::<crate::pubsub::pep::PepState>("pep") {
            Ok(pep) => {
                let sync = Arc::new(crate::vcard_pep::Sync::new(
                    pep.clone(),
                    store.clone(),
                    config.clone(),
                ));
                // XEP-0398 §2 and XEP-0292 (discovery) on the account.
                ctx.add_account_feature("urn:xmpp:pep-vcard-conversion:0");
                ctx.add_account_feature(crate::vcard_pep::NS_VCARD4);
                pep.listen(Arc::new(crate::vcard_pep::Follow(sync.clone())));
                // XEP-0398 §4: broadcast and directed available presence alike.
                for to in [Addressed::Bare, Addressed::Full, Addressed::Host] {
                    ctx.hook_stanza(
                        HookPoint {
                            kind: StanzaKind::Presence,
                            to,
                            direction: Direction::Out,
                        },
                        5,
                        Arc::new(crate::vcard_pep::InjectHash(sync.clone())),
                    );
                }
                ctx.hook_session(0, Arc::new(crate::vcard_pep::Forget(sync.clone())));
                let v4 = Arc::new(crate::vcard_pep::Vcard4Iq(sync.clone()));
                ctx.hook_iq(
                    IqTarget::Account,
                    IqType::Get,
                    crate::vcard_pep::NS_VCARD4,
                    v4.clone(),
                )?;
                ctx.hook_iq(
                    IqTarget::Account,
                    IqType::Set,
                    crate::vcard_pep::NS_VCARD4,
                    v4,
                )?;
                Some(sync)
            }
            // Without PEP: vcard-temp alone.
            Err(_) => None,
        };
        let iq = Arc::new(VcardIq {
            store,
            config,
            sync,
        });
        ctx.hook_iq(IqTarget::Account, IqType::Get, NS, iq.clone())?;
        ctx.hook_iq(IqTarget::Account, IqType::Set, NS, iq)?;
        Ok(())
    }
}

/// `[vcard]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VcardConfig {
    /// Largest vCard stored, serialized bytes (photos included).
    pub max_bytes: usize,
}

impl Default for VcardConfig {
    fn default() -> Self {
        VcardConfig {
            max_bytes: 64 * 1024,
        }
    }
}

impl ModuleConfig for VcardConfig {
    const SECTION: &'static str = "vcard";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("", "vcard-temp (XEP-0054), module vcard."),
        (
            "max_bytes",
            "Largest vCard stored, in bytes (photos included); larger is not-acceptable.",
        ),
    ];
}

/// The stored vCard of an account.
pub async fn stored(store: &KvStore, user: &BareJid) -> Result<Option<Element>, StanzaError> {
    let Some(node) = user.node() else {
        return Ok(None);
    };
    let bytes = store
        .get(user.domain().as_str(), node.as_str())
        .await
        .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
    Ok(bytes
        .as_deref()
        .and_then(canto_core::roster::decode_element))
}

/// Replaces an account's vCard, refusing one over `max_bytes`.
pub async fn store(
    store: &KvStore,
    max_bytes: usize,
    user: &BareJid,
    vcard: &Element,
) -> Result<(), StanzaError> {
    let Some(node) = user.node() else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    let bytes = vcard.to_bytes();
    // `[vcard] max_bytes`; XEP-0054 sets no limit, a server may refuse (not-acceptable).
    if bytes.len() > max_bytes {
        return Err(StanzaError::new(Condition::NotAcceptable).with_text("vCard too large"));
    }
    store
        .set(user.domain().as_str(), node.as_str(), Some(&bytes))
        .await
        .map_err(|_| {
            StanzaError::new(Condition::ResourceConstraint).with_text("storage unavailable")
        })
}

struct VcardIq {
    store: KvStore,
    config: Section<VcardConfig>,
    sync: Option<Arc<crate::vcard_pep::Sync>>,
}

#[async_trait]
impl IqHandler for VcardIq {
    /// XEP-0054 §3.1 (retrieve own or another user's vCard) and §3.2 (update own).
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "vCard")?;
        let target = req.to.to_bare();
        if IqType::of(req.stanza) == Some(IqType::Set) {
            // §3.2: only the owner publishes.
            if !from_owner(&req) {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            store(
                &self.store,
                self.config.get().max_bytes,
                &target,
                req.payload,
            )
            .await?;
            if let Some(sync) = &self.sync {
                sync.from_vcard_temp(req.server, &target, req.payload).await;
            }
            return Ok(None);
        }
        // §3.1: the owner without a vCard gets an empty one.
        if from_owner(&req) {
            return Ok(Some(
                stored(&self.store, &target)
                    .await?
                    .unwrap_or_else(|| Element::new("vCard", NS)),
            ));
        }
        // §3.3: a vCard is public; "if no vCard exists or the user does not exist, the server
        // MUST return a stanza error" — the same one in both cases, so that a stranger cannot
        // tell an account without a vCard from no account (directory harvesting).
        if !req.server.account_exists(&target).await {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        stored(&self.store, &target)
            .await?
            .map(Some)
            .ok_or_else(|| StanzaError::new(Condition::ServiceUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, get, result_xml, server};

    fn card(name: &str) -> Element {
        Element::new("vCard", NS).with_child(Element::new("FN", NS).with_text(name))
    }

    #[tokio::test]
    async fn set_then_get_own_and_others_read_it() {
        let s = server(&["vcard"]).await;
        let empty = result_xml(
            get(
                &s,
                IqTarget::Account,
                "alice@example.test/a",
                "alice@example.test",
                Element::new("vCard", NS),
            )
            .await,
        );
        assert_eq!(empty, "<vCard xmlns='vcard-temp'/>");
        let set = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            "alice@example.test/a",
            "alice@example.test",
            card("Alice"),
        )
        .await;
        assert_eq!(result_xml(set), "empty result");
        let own = result_xml(
            get(
                &s,
                IqTarget::Account,
                "alice@example.test/a",
                "alice@example.test",
                Element::new("vCard", NS),
            )
            .await,
        );
        assert_eq!(own, "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>");
        let by_bob = result_xml(
            get(
                &s,
                IqTarget::Account,
                "bob@example.test/b",
                "alice@example.test",
                Element::new("vCard", NS),
            )
            .await,
        );
        assert_eq!(by_bob, own);
    }

    #[tokio::test]
    async fn only_the_owner_sets_and_size_is_limited() {
        let s = server(&["vcard"]).await;
        let forged = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            "bob@example.test/b",
            "alice@example.test",
            card("Mallory"),
        )
        .await;
        assert_eq!(result_xml(forged), "error forbidden");
        let huge = Element::new("vCard", NS).with_child(
            Element::new("PHOTO", NS).with_text("A".repeat(VcardConfig::default().max_bytes)),
        );
        let r = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            "alice@example.test/a",
            "alice@example.test",
            huge,
        )
        .await;
        assert_eq!(result_xml(r), "error not-acceptable");
        let nobody = result_xml(
            get(
                &s,
                IqTarget::Account,
                "bob@example.test/b",
                "nobody@example.test",
                Element::new("vCard", NS),
            )
            .await,
        );
        assert_eq!(nobody, "error service-unavailable");
        // XEP-0054 §3.3: an existing account without a vCard looks the same to others.
        let none_yet = result_xml(
            get(
                &s,
                IqTarget::Account,
                "bob@example.test/b",
                "alice@example.test",
                Element::new("vCard", NS),
            )
            .await,
        );
        assert_eq!(none_yet, nobody);
    }
}
