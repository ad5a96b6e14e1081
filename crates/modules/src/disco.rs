//! `disco`: XEP-0030 Service Discovery (Prosody's `mod_disco`).
//!
//! The server answers disco#info and disco#items for itself (its identities and the features of
//! every loaded module) and, on an account's behalf, for the bare JID of an account.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{InfoForm, ModuleConfig, Section, SectionInfo};
use canto_core::{Identity, IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{Condition, IqType, StanzaError, ns};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use crate::{expect_payload, from_owner};

/// The module.
pub struct Disco;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0030",
        version: "2.5.0",
        title: "Service Discovery",
    },
    Spec {
        id: "XEP-0128",
        version: "1.0.1",
        title: "Service Discovery Extensions",
    },
    Spec {
        id: "XEP-0157",
        version: "1.1.1",
        title: "Contact Addresses for XMPP Services",
    },
];

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0030 §3.1: every entity has at least one identity; a server is category `server`,
        // type `im` (disco categories registry).
        ctx.add_identity(Identity {
            category: "server",
            kind: "im",
            name: "Canto".into(),
        });
        // XEP-0030 §3.1: every entity MUST support disco#info; we also answer disco#items.
        ctx.add_feature(ns::DISCO_INFO);
        ctx.add_feature(ns::DISCO_ITEMS);
        ctx.hook_iq(
            IqTarget::Host,
            IqType::Get,
            ns::DISCO_INFO,
            Arc::new(HostInfo),
        )?;
        ctx.hook_iq(
            IqTarget::Host,
            IqType::Get,
            ns::DISCO_ITEMS,
            Arc::new(HostItems),
        )?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            ns::DISCO_INFO,
            Arc::new(AccountInfo),
        )?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            ns::DISCO_ITEMS,
            Arc::new(AccountItems),
        )?;
        // XEP-0157: the contact addresses, a XEP-0128 form in disco#info (and so in the caps
        // hash, which the core computes from the module table's forms).
        let contact = ctx.section::<ContactConfig>()?;
        ctx.add_info_form(Arc::new(ContactForm(contact)));
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![ContactConfig::info()]
    }
}

/// `[contact]`: XEP-0157 addresses, each a list of URIs (`mailto:`, `xmpp:`, `https:`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactConfig {
    /// `abuse-addresses`
    pub abuse: Vec<String>,
    /// `admin-addresses`
    pub admin: Vec<String>,
    /// `feedback-addresses`
    pub feedback: Vec<String>,
    /// `sales-addresses`
    pub sales: Vec<String>,
    /// `security-addresses`
    pub security: Vec<String>,
    /// `status-addresses`
    pub status: Vec<String>,
    /// `support-addresses`
    pub support: Vec<String>,
}

impl ModuleConfig for ContactConfig {
    const SECTION: &'static str = "contact";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "Contact addresses in the server's disco#info (XEP-0157); lists of URIs.",
        ),
        ("abuse", "Where to report abuse."),
        ("admin", "The administrators."),
        ("feedback", "Where to send feedback."),
        ("sales", "Sales."),
        ("security", "Where to report security issues."),
        ("status", "Service status pages."),
        ("support", "User support."),
    ];
}

/// XEP-0157 §2: the configured addresses as the `http://jabber.org/network/serverinfo` form,
/// only when some are configured.
struct ContactForm(Section<ContactConfig>);

impl InfoForm for ContactForm {
    fn form(&self) -> Option<canto_core::module::InfoFormData> {
        let c = self.0.get();
        let fields: Vec<(String, Vec<String>)> = [
            ("abuse-addresses", &c.abuse),
            ("admin-addresses", &c.admin),
            ("feedback-addresses", &c.feedback),
            ("sales-addresses", &c.sales),
            ("security-addresses", &c.security),
            ("status-addresses", &c.status),
            ("support-addresses", &c.support),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        (!fields.is_empty()).then(|| ("http://jabber.org/network/serverinfo".to_string(), fields))
    }
}

/// The `node` attribute of a query, if any. An empty `node` is treated as absent, as Prosody
/// does.
fn node(payload: &Element) -> Option<&str> {
    payload.attr("node").filter(|n| !n.is_empty())
}

/// An `<identity/>` child of a disco#info result (XEP-0030 §3.1).
fn identity_element(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(name) = name {
        el.set_attr("name", name);
    }
    el
}

/// A `<feature/>` child of a disco#info result (XEP-0030 §3.1).
fn feature_element(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

/// Answers disco#info gets addressed to the server (`to` = a served domain): the identities and
/// features registered by the loaded modules.
struct HostInfo;

#[async_trait]
impl IqHandler for HostInfo {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // XEP-0030 §3.2 / §7: a query to a node the entity does not have is `item-not-found`.
        // The server has no info nodes yet.
        if node(req.payload).is_some() {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        let modules = req.server.modules();
        let mut query = Element::new("query", ns::DISCO_INFO);
        // XEP-0030 §3.1: one or more identities, then the features (already sorted and
        // deduplicated by the module table).
        for id in modules.identities() {
            query.push_child(identity_element(id.category, id.kind, Some(&id.name)));
        }
        for var in modules.features() {
            query.push_child(feature_element(var));
        }
        // XEP-0128: the modules' extended-information forms.
        for (form_type, fields) in modules.info_forms() {
            query.push_child(info_form(&form_type, &fields));
        }
        Ok(Some(query))
    }
}

/// XEP-0128 §2: an extended-information form (`type='result'`, a hidden FORM_TYPE first).
fn info_form(form_type: &str, fields: &[(String, Vec<String>)]) -> Element {
    const X: &str = "jabber:x:data";
    let mut form = Element::new("x", X).with_attr("type", "result").with_child(
        Element::new("field", X)
            .with_attr("var", "FORM_TYPE")
            .with_attr("type", "hidden")
            .with_child(Element::new("value", X).with_text(form_type)),
    );
    for (var, values) in fields {
        let mut f = Element::new("field", X).with_attr("var", var);
        for v in values {
            f.push_child(Element::new("value", X).with_text(v.clone()));
        }
        form.push_child(f);
    }
    form
}

/// Answers disco#items gets addressed to the server: its hosted services (XEP-0030 §4.1,
/// Prosody lists its components the same way).
struct HostItems;

#[async_trait]
impl IqHandler for HostItems {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // XEP-0030 §4.2 / §7: an unknown items node is `item-not-found`; the server has none.
        if node(req.payload).is_some() {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        // XEP-0030 §4.1: one <item/> per service of this host; with none the result MUST be an
        // empty <query/>, not an error.
        let mut query = Element::new("query", ns::DISCO_ITEMS);
        for service in req.server.modules().services_of(req.to.domain().as_str()) {
            let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", &service.domain);
            if !service.name.is_empty() {
                item.set_attr("name", &service.name);
            }
            query.push_child(item);
        }
        Ok(Some(query))
    }
}

/// Answers disco#info gets addressed to an account's bare JID, on the account's behalf
/// (XEP-0030 §3.1: the server MUST reply for a hosted bare JID).
struct AccountInfo;

#[async_trait]
impl IqHandler for AccountInfo {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // XEP-0030 §8 rule 1: `service-unavailable` unless the requester may receive the
        // account's presence (the account itself, or a contact with a subscription `from` or
        // `both`), node or not; the same answer for a missing account, so existence does not
        // leak.
        if !may_see_presence(&req).await {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        let account = req.to.to_bare();
        let modules = req.server.modules();
        // XEP-0030 §3.2: a node is a module's (PEP nodes, XEP-0163 §6); one nobody has is
        // `item-not-found` (§7).
        if let Some(n) = node(req.payload) {
            for disco in modules.account_disco() {
                if let Some(answer) = disco.node_info(req.server, req.from, &account, n).await {
                    let mut query = Element::new("query", ns::DISCO_INFO).with_attr("node", n);
                    for child in answer? {
                        query.push_child(child);
                    }
                    return Ok(Some(query));
                }
            }
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        // XEP-0030 §3.1: the primary identity of a bare JID is category `account`, here type
        // `registered` (disco categories registry); modules add theirs (XEP-0163 §6.1:
        // `pubsub/pep`); features: the disco protocols the server answers for it, and the
        // modules' account features (e.g. XEP-0313 §7: the archive is the account's).
        let mut query = Element::new("query", ns::DISCO_INFO).with_child(identity_element(
            "account",
            "registered",
            None,
        ));
        for id in modules.account_identities() {
            query.push_child(identity_element(id.category, id.kind, None));
        }
        query.push_child(feature_element(ns::DISCO_INFO));
        query.push_child(feature_element(ns::DISCO_ITEMS));
        for var in modules.account_features() {
            query.push_child(feature_element(var));
        }
        Ok(Some(query))
    }
}

/// XEP-0030 §8: whether the requester is authorized to receive the addressed account's
/// presence: the account itself, or a contact the account's roster gives a subscription of
/// type `from` or `both` (RFC 6121 §2.1.2.1). A missing account has no roster, so only its
/// own (impossible) sessions would qualify.
pub(crate) async fn may_see_presence(req: &IqRequest<'_>) -> bool {
    if from_owner(req) {
        return true;
    }
    let target = req.to.to_bare();
    if target.node().is_none() {
        return false;
    }
    req.server
        .roster(&target)
        .await
        .get(&req.from.to_bare())
        .is_some_and(|item| item.subscription.has_from())
}

/// Answers disco#items gets addressed to an account's bare JID, on the account's behalf
/// (XEP-0030 §4.1).
struct AccountItems;

#[async_trait]
impl IqHandler for AccountItems {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // XEP-0030 §8 rule 2: to a requester not authorized to receive the account's presence
        // the server MUST return an empty result set, whatever the node and whether or not the
        // account exists.
        if !may_see_presence(&req).await {
            return Ok(Some(Element::new("query", ns::DISCO_ITEMS)));
        }
        let account = req.to.to_bare();
        let modules = req.server.modules();
        // XEP-0030 §4.2: an items node is a module's; one nobody has is `item-not-found` (§7).
        if let Some(n) = node(req.payload) {
            for disco in modules.account_disco() {
                if let Some(answer) = disco.node_items(req.server, req.from, &account, n).await {
                    let mut query = Element::new("query", ns::DISCO_ITEMS).with_attr("node", n);
                    for child in answer? {
                        query.push_child(child);
                    }
                    return Ok(Some(query));
                }
            }
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        // XEP-0030 §4.1: what modules list for the account (XEP-0163 §6.2: its PEP nodes),
        // possibly nothing: an empty <query/>.
        let mut query = Element::new("query", ns::DISCO_ITEMS);
        for disco in modules.account_disco() {
            for item in disco.items(req.server, req.from, &account).await {
                query.push_child(item);
            }
        }
        Ok(Some(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, get, result_xml, server};

    const ALICE: &str = "alice@example.test/phone";
    const BOB: &str = "bob@example.test/laptop";

    fn info() -> Element {
        Element::new("query", ns::DISCO_INFO)
    }

    fn items() -> Element {
        Element::new("query", ns::DISCO_ITEMS)
    }

    #[tokio::test]
    async fn host_info_lists_identity_and_enabled_features_only() {
        let s = server(&["disco", "ping"]).await;
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, info()).await);
        assert_eq!(
            got,
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im' name='Canto'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='urn:xmpp:ping'/>\
             </query>"
        );
        assert!(!got.contains(ns::VERSION), "{got}");
        assert!(!got.contains(ns::TIME), "{got}");
    }

    #[tokio::test]
    async fn host_info_with_every_module() {
        let s = server(&["disco", "ping", "version", "time"]).await;
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, info()).await);
        assert_eq!(
            got,
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im' name='Canto'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='jabber:iq:version'/>\
             <feature var='urn:xmpp:ping'/>\
             <feature var='urn:xmpp:time'/>\
             </query>"
        );
    }

    #[tokio::test]
    async fn host_info_node_is_item_not_found() {
        let s = server(&["disco"]).await;
        let q = info().with_attr("node", "http://jabber.org/protocol/commands");
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, q).await);
        assert_eq!(got, "error item-not-found");
    }

    #[tokio::test]
    async fn host_items_are_empty_and_nodes_unknown() {
        let s = server(&["disco"]).await;
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, items()).await);
        assert_eq!(
            got,
            "<query xmlns='http://jabber.org/protocol/disco#items'/>"
        );
        let q = items().with_attr("node", "x");
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, q).await);
        assert_eq!(got, "error item-not-found");
    }

    #[tokio::test]
    async fn wrong_element_in_disco_namespace_is_service_unavailable() {
        let s = server(&["disco"]).await;
        let q = Element::new("quarry", ns::DISCO_INFO);
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, q).await);
        assert_eq!(got, "error service-unavailable");
    }

    #[tokio::test]
    async fn contact_addresses_are_an_extension_form() {
        // XEP-0157 §2
        let mut config = canto_core::Config {
            hosts: vec![HOST.into()],
            modules: vec!["disco".into()],
            ..Default::default()
        };
        config
            .set_section(
                "contact",
                "abuse = [\"mailto:abuse@example.test\"]\n\
                 admin = [\"xmpp:admin@example.test\", \"mailto:root@example.test\"]",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let s = crate::test_support::server_with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = result_xml(
            get(
                &s,
                IqTarget::Host,
                "alice@example.test/a",
                HOST,
                Element::new("query", ns::DISCO_INFO),
            )
            .await,
        );
        assert!(
            got.contains(
                "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>\
                 <value>http://jabber.org/network/serverinfo</value></field>\
                 <field var='abuse-addresses'><value>mailto:abuse@example.test</value></field>\
                 <field var='admin-addresses'><value>xmpp:admin@example.test</value><value>mailto:root@example.test</value></field></x>"
            ),
            "{got}"
        );
        // Without addresses there is no form.
        let plain = server(&["disco"]).await;
        let got = result_xml(
            get(
                &plain,
                IqTarget::Host,
                "alice@example.test/a",
                HOST,
                Element::new("query", ns::DISCO_INFO),
            )
            .await,
        );
        assert!(!got.contains("jabber:x:data"), "{got}");
    }

    #[tokio::test]
    async fn account_info_for_its_owner() {
        let s = server(&["disco"]).await;
        let got = result_xml(get(&s, IqTarget::Account, ALICE, "alice@example.test", info()).await);
        assert_eq!(
            got,
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='account' type='registered'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             </query>"
        );
        let q = info().with_attr("node", "x");
        let got = result_xml(get(&s, IqTarget::Account, ALICE, "alice@example.test", q).await);
        assert_eq!(got, "error item-not-found");
    }

    #[tokio::test]
    async fn account_info_for_a_stranger_is_service_unavailable() {
        let s = server(&["disco"]).await;
        for (to, q) in [
            ("alice@example.test", info()),
            ("alice@example.test", info().with_attr("node", "x")),
            // A missing account gets the same answer, so existence does not leak.
            ("nobody@example.test", info()),
        ] {
            let got = result_xml(get(&s, IqTarget::Account, BOB, to, q).await);
            assert_eq!(got, "error service-unavailable", "{to}");
        }
    }

    #[tokio::test]
    async fn account_items() {
        let s = server(&["disco"]).await;
        let empty = "<query xmlns='http://jabber.org/protocol/disco#items'/>";
        let got =
            result_xml(get(&s, IqTarget::Account, ALICE, "alice@example.test", items()).await);
        assert_eq!(got, empty);
        // XEP-0030 §8 rule 2: a stranger gets an empty result set, node or not.
        for q in [items(), items().with_attr("node", "x")] {
            let got = result_xml(get(&s, IqTarget::Account, BOB, "alice@example.test", q).await);
            assert_eq!(got, empty);
        }
        let q = items().with_attr("node", "x");
        let got = result_xml(get(&s, IqTarget::Account, ALICE, "alice@example.test", q).await);
        assert_eq!(got, "error item-not-found");
    }

    #[tokio::test]
    async fn disco_handles_no_set() {
        let s = server(&["disco"]).await;
        for target in [IqTarget::Host, IqTarget::Account] {
            for ns in [ns::DISCO_INFO, ns::DISCO_ITEMS] {
                assert!(s.modules().iq_handler(target, IqType::Set, ns).is_none());
            }
        }
    }

    #[tokio::test]
    async fn without_disco_nothing_answers_disco() {
        let s = server(&["ping"]).await;
        let got = result_xml(get(&s, IqTarget::Host, ALICE, HOST, info()).await);
        assert_eq!(got, "no handler");
        assert!(s.modules().identities().is_empty());
    }
}
