//! `private`: XEP-0049 Private XML Storage (Prosody's `mod_private`), kept in the map store
//! `private` keyed by the stored element's namespace and name.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, SectionInfo};
use canto_core::stores::MapStore;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{Condition, IqType, StanzaError};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use crate::{expect_payload, from_owner};

/// The `jabber:iq:private` namespace.
pub const NS: &str = "jabber:iq:private";
const STORE: &str = "private";

/// The module.
pub struct Private;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0049",
    version: "1.2",
    title: "Private XML Storage",
}];

impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        ctx.add_feature(NS);
        let store = ctx.open_map(STORE)?;
        // Bookmarks (XEP-0402 §4) move old clients' XEP-0048 storage out of here.
        ctx.provide(Arc::new(PrivateData(store.clone())));
        let iq = Arc::new(PrivateIq {
            store,
            config: ctx.section::<PrivateConfig>()?,
        });
        ctx.hook_iq(IqTarget::Account, IqType::Get, NS, iq.clone())?;
        ctx.hook_iq(IqTarget::Account, IqType::Set, NS, iq)?;
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![PrivateConfig::info()]
    }
}

/// `[private]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivateConfig {
    /// Largest private XML fragment stored, serialized bytes.
    pub max_bytes: usize,
    /// Namespaces (distinct fragments) stored per account; storing a new one beyond is
    /// `not-acceptable`.
    pub max_namespaces: usize,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        PrivateConfig {
            max_bytes: 64 * 1024,
            max_namespaces: 100,
        }
    }
}

impl ModuleConfig for PrivateConfig {
    const SECTION: &'static str = "private";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("", "Private XML storage (XEP-0049), module private."),
        (
            "max_bytes",
            "Largest private XML fragment stored, in bytes; larger is not-acceptable.",
        ),
        (
            "max_namespaces",
            "Fragments (namespaces) stored per account; a new one beyond is not-acceptable.",
        ),
    ];
}

/// XEP-0049 §2.3: namespaces reserved by the XSF are refused with not-acceptable.
fn reserved(ns: &str) -> bool {
    ns.is_empty()
        || ns.starts_with("jabber:")
        || ns.starts_with("http://jabber.org/")
        || ns == "vcard-temp"
}

fn key(el: &Element) -> String {
    key_of(el.name(), el.ns())
}

fn key_of(name: &str, ns: &str) -> String {
    format!("{ns} {name}")
}

/// What other modules may do with private storage: read and remove one fragment of an
/// account (bookmarks converts XEP-0048 storage to XEP-0402).
pub struct PrivateData(MapStore);

impl PrivateData {
    /// The stored fragment `<name xmlns=ns/>` of `user`, if any.
    pub async fn get(&self, user: &canto_stanza::BareJid, name: &str, ns: &str) -> Option<Element> {
        let node = user.node()?;
        self.0
            .get(user.domain().as_str(), node.as_str(), &key_of(name, ns))
            .await
            .ok()
            .flatten()
            .as_deref()
            .and_then(canto_core::roster::decode_element)
    }

    /// Removes that fragment.
    pub async fn remove(&self, user: &canto_stanza::BareJid, name: &str, ns: &str) {
        if let Some(node) = user.node() {
            let _ = self
                .0
                .set(
                    user.domain().as_str(),
                    node.as_str(),
                    &key_of(name, ns),
                    None,
                )
                .await;
        }
    }
}

struct PrivateIq {
    store: MapStore,
    config: Section<PrivateConfig>,
}

#[async_trait]
impl IqHandler for PrivateIq {
    /// XEP-0049 §2.3: store and retrieve fragments for the sender's own account.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // §2.3: another user's data: forbidden (preferred over service-unavailable).
        if !from_owner(&req) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let user = req.from.to_bare();
        let (host, node) = (
            user.domain().as_str(),
            user.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        let fragments: Vec<&Element> = req.payload.children().collect();
        // §2.3: at least one child element is required.
        if fragments.is_empty() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("no fragment"));
        }
        if fragments.iter().any(|f| reserved(f.ns())) {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("reserved namespace"));
        }
        let map = &self.store;
        let config = self.config.get();
        let internal = |_| StanzaError::new(Condition::InternalServerError);
        if IqType::of(req.stanza) == Some(IqType::Get) {
            // §2.3: one namespace per get.
            let [wanted] = fragments.as_slice() else {
                return Err(
                    StanzaError::new(Condition::BadRequest).with_text("one fragment per get")
                );
            };
            let stored = map.get(host, node, &key(wanted)).await.map_err(internal)?;
            let frag = stored
                .as_deref()
                .and_then(canto_core::roster::decode_element)
                .unwrap_or_else(|| Element::new(wanted.name(), wanted.ns()));
            return Ok(Some(Element::new("query", NS).with_child(frag)));
        }
        // The namespace count below and the writes are one step per account, so two sets at
        // once cannot both pass the cap.
        let _guard = req.server.account_lock(&user).await;
        let max = config.max_bytes;
        for f in &fragments {
            if f.to_bytes().len() > max {
                return Err(
                    StanzaError::new(Condition::NotAcceptable).with_text("fragment too large")
                );
            }
        }
        // `private.max_namespaces`: a fragment under a namespace not stored yet needs room.
        // XEP-0049 names no error for a quota; not-acceptable as for a fragment too large
        // (RFC 6120 §8.3.3.9, type modify: storing fewer namespaces makes room).
        let mut new_keys: Vec<String> = Vec::new();
        for f in &fragments {
            let k = key(f);
            if !new_keys.contains(&k) && map.get(host, node, &k).await.map_err(internal)?.is_none()
            {
                new_keys.push(k);
            }
        }
        if !new_keys.is_empty() {
            let max = config.max_namespaces;
            let stored = map.get_all(host, node).await.map_err(internal)?.len();
            if stored + new_keys.len() > max {
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .with_text(format!("at most {max} namespaces are stored")));
            }
        }
        for f in fragments {
            map.set(host, node, &key(f), Some(&f.to_bytes()))
                .await
                .map_err(|_| {
                    StanzaError::new(Condition::ResourceConstraint).with_text("storage unavailable")
                })?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, get, result_xml, server};

    fn query(children: Vec<Element>) -> Element {
        let mut q = Element::new("query", NS);
        for c in children {
            q.push_child(c);
        }
        q
    }

    fn prefs(nick: &str) -> Element {
        Element::new("exodus", "exodus:prefs")
            .with_child(Element::new("defaultnick", "exodus:prefs").with_text(nick))
    }

    const ALICE: &str = "alice@example.test/a";
    const BARE: &str = "alice@example.test";

    #[tokio::test]
    async fn store_and_retrieve_by_namespace() {
        let s = server(&["private"]).await;
        let ask = || query(vec![Element::new("exodus", "exodus:prefs")]);
        assert_eq!(
            result_xml(get(&s, IqTarget::Account, ALICE, BARE, ask()).await),
            "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query>"
        );
        let set = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            ALICE,
            BARE,
            query(vec![prefs("Hamlet")]),
        )
        .await;
        assert_eq!(result_xml(set), "empty result");
        assert_eq!(
            result_xml(get(&s, IqTarget::Account, ALICE, BARE, ask()).await),
            "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus></query>"
        );
    }

    #[tokio::test]
    async fn errors_the_xep_lists() {
        let s = server(&["private"]).await;
        // Another user's data.
        let r = get(
            &s,
            IqTarget::Account,
            "bob@example.test/b",
            BARE,
            query(vec![prefs("x")]),
        )
        .await;
        assert_eq!(result_xml(r), "error forbidden");
        // No fragment.
        assert_eq!(
            result_xml(get(&s, IqTarget::Account, ALICE, BARE, query(vec![])).await),
            "error not-acceptable"
        );
        // Reserved namespaces.
        for ns in [
            "vcard-temp",
            "jabber:iq:roster",
            "http://jabber.org/protocol/disco#info",
        ] {
            let r = call(
                &s,
                IqTarget::Account,
                IqType::Set,
                ALICE,
                BARE,
                query(vec![Element::new("x", ns)]),
            )
            .await;
            assert_eq!(result_xml(r), "error not-acceptable", "{ns}");
        }
        // Two namespaces in one get.
        let two = query(vec![Element::new("a", "urn:a"), Element::new("b", "urn:b")]);
        assert_eq!(
            result_xml(get(&s, IqTarget::Account, ALICE, BARE, two).await),
            "error bad-request"
        );
    }

    #[tokio::test]
    async fn namespaces_beyond_the_cap_are_not_acceptable() {
        let mut config = canto_core::Config {
            hosts: vec![crate::test_support::HOST.into()],
            modules: vec!["private".into()],
            ..Default::default()
        };
        config
            .set_section("private", "max_namespaces = 2")
            .unwrap_or_else(|e| panic!("{e}"));
        let s = crate::test_support::server_with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let set = |frags: Vec<Element>| {
            let s = s.clone();
            async move {
                result_xml(
                    call(
                        &s,
                        IqTarget::Account,
                        IqType::Set,
                        ALICE,
                        BARE,
                        query(frags),
                    )
                    .await,
                )
            }
        };
        let el = |ns: &str| Element::new("x", ns);
        assert_eq!(set(vec![el("urn:a")]).await, "empty result");
        // Two new ones at once would make three: refused, neither stored.
        assert_eq!(
            set(vec![el("urn:b"), el("urn:c")]).await,
            "error not-acceptable"
        );
        let stored = s
            .storage
            .map
            .get_all(STORE, crate::test_support::HOST, "alice")
            .await;
        assert_eq!(stored.map(|v| v.len()).ok(), Some(1));
        assert_eq!(set(vec![el("urn:b")]).await, "empty result");
        assert_eq!(set(vec![el("urn:c")]).await, "error not-acceptable");
        // Replacing a stored fragment needs no room; another user has room of their own.
        assert_eq!(set(vec![el("urn:a"), el("urn:b")]).await, "empty result");
        let bob = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            "bob@example.test/b",
            "bob@example.test",
            query(vec![el("urn:c")]),
        )
        .await;
        assert_eq!(result_xml(bob), "empty result");
    }
}
