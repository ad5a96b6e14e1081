//! `pubsub`: hosted publish-subscribe services (XEP-0060, Prosody's mod_pubsub component):
//! `pubsub.HOST` for every host by default, more with `[services."DOMAIN"] kind = "pubsub"`.
//! Nodes belong to their creators; notifications follow subscriptions; `authorize` nodes ask
//! their owners (§8.6).

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, SectionInfo, Service, ServiceCtx};
use canto_core::roster::RosterItem;
use canto_core::{Module, ModuleCtx, Spec};
use canto_stanza::stanza::{error_reply, iq_payload, iq_result};
use canto_stanza::{BareJid, Condition, IqType, Jid, StanzaError, ns, parse_jid};
use canto_storage::{ItemQuery, PubsubSubscription};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use super::config::{NodeConfig, SendLast};
use super::engine::{Affiliation, Ctx, Engine, Env, Event, access_check, delivers, item_element};
use super::{
    Limits, NS_EVENT, NS_OWNER, NS_PUBSUB, NS_SUBSCRIBE_AUTH, event_child, event_message, form,
    meta_data, request,
};

/// The module.
pub struct Pubsub;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0060",
    version: "1.26.0",
    title: "Publish-Subscribe",
}];

/// Who may create nodes on a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeCreation {
    /// Accounts of this server's hosts (ejabberd's default).
    Local,
    /// Only `admins`.
    Admins,
    /// Any entity, remote ones too.
    Anyone,
}

/// `[pubsub]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubConfig {
    /// Who may create nodes.
    pub node_creation: NodeCreation,
    /// Bare JIDs that own every node of every service.
    pub admins: Vec<String>,
    /// Nodes per service.
    pub max_nodes: usize,
    /// The largest `pubsub#max_items` (`max` means this).
    pub max_items: u64,
    /// Largest item payload, bytes serialized.
    pub max_item_bytes: usize,
    /// Subscriptions per node.
    pub max_subscriptions: usize,
    /// Longest node name and item id, bytes.
    pub max_id_bytes: usize,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        let l = Limits::service();
        PubsubConfig {
            node_creation: NodeCreation::Local,
            admins: Vec::new(),
            max_nodes: l.max_nodes,
            max_items: l.max_items,
            max_item_bytes: l.max_item_bytes,
            max_subscriptions: l.max_subscriptions,
            max_id_bytes: l.max_id_bytes,
        }
    }
}

impl PubsubConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_nodes: self.max_nodes,
            max_items: self.max_items,
            max_item_bytes: self.max_item_bytes,
            max_subscriptions: self.max_subscriptions,
            max_id_bytes: self.max_id_bytes,
        }
    }
}

impl ModuleConfig for PubsubConfig {
    const SECTION: &'static str = "pubsub";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "Publish-subscribe services (XEP-0060), module pubsub: pubsub.HOST for every host,\nand each [services.\"DOMAIN\"] of kind \"pubsub\".",
        ),
        (
            "node_creation",
            "Who may create nodes: \"local\" (accounts here), \"admins\" or \"anyone\".",
        ),
        ("admins", "Bare JIDs that own every node of every service."),
        (
            "max_nodes",
            "Nodes per service; one more is not-allowed (max-nodes-exceeded).",
        ),
        (
            "max_items",
            "The largest pubsub#max_items a node may have (\"max\" means this).",
        ),
        (
            "max_item_bytes",
            "Largest item payload in bytes; larger is not-acceptable (payload-too-big).",
        ),
        (
            "max_subscriptions",
            "Subscriptions per node; beyond, not-allowed (too-many-subscriptions).",
        ),
        (
            "max_id_bytes",
            "Longest node name or item id in bytes; longer is not-acceptable.",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        for a in &self.admins {
            let j = parse_jid(a).map_err(|_| format!("admins: {a:?} is not a JID"))?;
            if j.resource().is_some() {
                return Err(format!("admins: {a:?} must be a bare JID"));
            }
        }
        self.limits().validate()
    }
}

impl Module for Pubsub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![PubsubConfig::info()]
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        let config = ctx.section::<PubsubConfig>()?;
        let engine = Engine::new(ctx.open_pubsub("pubsub")?);
        ctx.hook_subscription(Arc::new(ForgetAccount(engine.clone())));
        let hosts = ctx.config().hosts.clone();
        for spec in ctx.config().services_of_kind("pubsub") {
            let service = Arc::new(PubsubService {
                engine: engine.clone(),
                config: config.clone(),
                hosts: hosts.clone(),
                defaults: NodeConfig::service(),
            });
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| "Publish-Subscribe".to_string());
            ctx.add_service(&spec.domain, &spec.parent, &name, service)?;
        }
        Ok(())
    }
}

/// A deleted account leaves no subscription or affiliation behind on the services: a new
/// account of the same name must not inherit node ownership.
struct ForgetAccount(Engine);

#[async_trait]
impl canto_core::module::SubscriptionHook for ForgetAccount {
    async fn subscribed(
        &self,
        _server: &Arc<canto_core::Server>,
        _user: &BareJid,
        _contact: &BareJid,
    ) {
    }

    async fn account_deleted(&self, _server: &Arc<canto_core::Server>, user: &BareJid) {
        let _ = self.0.store().forget_jid(&user.to_string()).await;
    }
}

/// One hosted service (all of them share the module's store, each under its own domain).
struct PubsubService {
    engine: Engine,
    config: Section<PubsubConfig>,
    hosts: Vec<String>,
    defaults: NodeConfig,
}

/// Rosters through the service's context (node owners' rosters for `presence`/`roster`).
struct CtxEnv<'a>(&'a ServiceCtx);

#[async_trait]
impl Env for CtxEnv<'_> {
    async fn roster_item(&self, owner: &BareJid, contact: &BareJid) -> Option<RosterItem> {
        self.0.roster_item(owner, contact).await
    }
}

#[async_trait]
impl Service for PubsubService {
    async fn handle(&self, ctx: &ServiceCtx, el: Element) {
        let Some(from) = el.attr("from").and_then(|f| parse_jid(f).ok()) else {
            return;
        };
        match el.name() {
            "iq" => {
                let Some(kind) = IqType::of(&el) else { return };
                if !kind.is_request() {
                    return;
                }
                let reply = match self.iq(ctx, &from, kind, &el).await {
                    Ok(payload) => iq_result(&el, payload),
                    Err(e) => error_reply(&el, &e),
                };
                ctx.send(reply).await;
            }
            "message" => self.message(ctx, &from, &el).await,
            // Presence to a service has no meaning here.
            _ => {}
        }
    }
}

impl PubsubService {
    fn is_admin(&self, who: &BareJid) -> bool {
        let who = who.to_string();
        self.config.get().admins.contains(&who)
    }

    async fn iq(
        &self,
        ctx: &ServiceCtx,
        from: &Jid,
        kind: IqType,
        el: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let Some(payload) = iq_payload(el) else {
            return Err(StanzaError::new(Condition::BadRequest));
        };
        // Only the service's own domain is an entity here (no JIDs at it).
        let to_domain_only = el
            .attr("to")
            .and_then(|t| parse_jid(t).ok())
            .is_some_and(|t| t.node().is_none() && t.resource().is_none());
        if !to_domain_only {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        match (kind, payload.name(), payload.ns()) {
            (IqType::Get, "query", ns::DISCO_INFO) => self.disco_info(ctx, from, payload).await,
            (IqType::Get, "query", ns::DISCO_ITEMS) => self.disco_items(ctx, from, payload).await,
            (IqType::Get, "ping", "urn:xmpp:ping") => Ok(None),
            (_, "pubsub", NS_PUBSUB | NS_OWNER) => {
                let cfg = self.config.get();
                let limits = cfg.limits().engine();
                let parsed = request::parse(kind == IqType::Set, payload, limits.parse)?;
                let bare = from.to_bare();
                let admin = self.is_admin(&bare);
                let may_create = admin
                    || match cfg.node_creation {
                        NodeCreation::Anyone => true,
                        NodeCreation::Local => {
                            self.hosts.iter().any(|h| h == bare.domain().as_str())
                        }
                        NodeCreation::Admins => false,
                    };
                let env = CtxEnv(ctx);
                let ctx_e = Ctx {
                    env: &env,
                    service: ctx.domain(),
                    pep_owner: None,
                    from,
                    admin,
                    may_create,
                    limits,
                    defaults: &self.defaults,
                };
                let outcome = self.engine.handle(&ctx_e, parsed).await?;
                for ev in outcome.events {
                    self.notify(ctx, ev).await;
                }
                Ok(outcome.reply)
            }
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        }
    }

    /// XEP-0060 §5.1 (service) and §5.3 (node) disco#info.
    async fn disco_info(
        &self,
        ctx: &ServiceCtx,
        from: &Jid,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let mut q = Element::new("query", ns::DISCO_INFO);
        match payload.attr("node").filter(|n| !n.is_empty()) {
            None => {
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "service")
                        .with_attr("name", "Publish-Subscribe"),
                );
                let mut features = vec![
                    ns::DISCO_INFO.to_string(),
                    ns::DISCO_ITEMS.to_string(),
                    NS_PUBSUB.to_string(),
                    "urn:xmpp:ping".to_string(),
                ];
                features.extend(super::FEATURES.iter().map(|f| format!("{NS_PUBSUB}#{f}")));
                features.sort();
                for f in features {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
            }
            Some(node) => {
                let config = self.visible(ctx, from, node).await?;
                q.set_attr("node", node);
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "leaf"),
                );
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
                let owners: Vec<String> = self
                    .engine
                    .owners(ctx.domain(), None, node)
                    .await
                    .iter()
                    .map(BareJid::to_string)
                    .collect();
                q.push_child(meta_data(&config, &owners));
            }
        }
        Ok(Some(q))
    }

    /// A node's configuration if `from` may see it; item-not-found otherwise (and for no node).
    async fn visible(
        &self,
        ctx: &ServiceCtx,
        from: &Jid,
        node: &str,
    ) -> Result<NodeConfig, StanzaError> {
        let config = self
            .engine
            .config(ctx.domain(), node, &self.defaults)
            .await?
            .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
        let bare = from.to_bare();
        if self.is_admin(&bare) {
            return Ok(config);
        }
        let env = CtxEnv(ctx);
        let aff = self.affiliation_of(ctx.domain(), node, &bare).await;
        let allowed = match aff {
            Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => true,
            Affiliation::Outcast => false,
            _ => {
                let owners = self.engine.owners(ctx.domain(), None, node).await;
                let subscribed = self.subscribed(ctx.domain(), node, &bare).await;
                access_check(&env, &owners, &config, &bare, || async { subscribed })
                    .await
                    .is_ok()
            }
        };
        if allowed {
            Ok(config)
        } else {
            Err(StanzaError::new(Condition::ItemNotFound))
        }
    }

    async fn affiliation_of(&self, service: &str, node: &str, who: &BareJid) -> Affiliation {
        self.engine
            .store()
            .affiliations(service, Some(node), Some(&who.to_string()))
            .await
            .ok()
            .and_then(|l| l.first().and_then(|(_, _, a)| Affiliation::parse(a)))
            .unwrap_or(Affiliation::None)
    }

    async fn subscribed(&self, service: &str, node: &str, who: &BareJid) -> bool {
        self.engine
            .store()
            .subscriptions(service, Some(node), None)
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| {
                s.state == "subscribed" && parse_jid(&s.jid).is_ok_and(|j| j.to_bare() == *who)
            })
    }

    /// XEP-0060 §5.2 (nodes) and §5.5 (items of a node) disco#items.
    async fn disco_items(
        &self,
        ctx: &ServiceCtx,
        from: &Jid,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let domain = ctx.domain();
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        match payload.attr("node").filter(|n| !n.is_empty()) {
            None => {
                let nodes = self
                    .engine
                    .store()
                    .nodes(domain)
                    .await
                    .map_err(super::engine::storage_error)?;
                for (node, raw) in nodes {
                    if self.visible(ctx, from, &node).await.is_err() {
                        continue;
                    }
                    let mut item = Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", domain)
                        .with_attr("node", &node);
                    if let Some(c) = NodeConfig::decode(&raw, &self.defaults)
                        && !c.title.is_empty()
                    {
                        item.set_attr("name", c.title);
                    }
                    q.push_child(item);
                }
            }
            Some(node) => {
                self.visible(ctx, from, node).await?;
                q.set_attr("node", node);
                let items = self
                    .engine
                    .store()
                    .items(domain, node, &ItemQuery::default())
                    .await
                    .map_err(super::engine::storage_error)?;
                for i in items {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", domain)
                            .with_attr("name", &i.id),
                    );
                }
            }
        }
        Ok(Some(q))
    }

    /// Notifies an event to the node's subscribers (XEP-0060 §7.1.2.1 and friends), each
    /// still entitled by the access model; a pending subscription asks the owners (§8.6.1).
    async fn notify(&self, ctx: &ServiceCtx, ev: Event) {
        let domain = ctx.domain().to_string();
        if let Event::Subscribed {
            node,
            config,
            jid,
            state,
            subid,
        } = &ev
        {
            if state == "pending" {
                for owner in self.engine.owners(&domain, None, node).await {
                    let msg = authorization_request(&domain, &owner.to_string(), node, jid, subid);
                    ctx.send(msg).await;
                }
            } else if config.send_last_published_item != SendLast::Never {
                self.send_last(ctx, node, config, jid).await;
            }
            return;
        }
        let Some((node, child)) = event_child(&ev) else {
            return;
        };
        let deleted = matches!(ev, Event::Deleted { .. });
        let (config, subs) = match &ev {
            Event::Deleted {
                config,
                subscribers,
                ..
            } => (config.clone(), subscribers.clone()),
            Event::Published { config, .. }
            | Event::Retracted { config, .. }
            | Event::Purged { config, .. }
            | Event::Configured { config, .. } => (
                config.clone(),
                self.engine
                    .store()
                    .subscriptions(&domain, Some(&node), None)
                    .await
                    .unwrap_or_default(),
            ),
            Event::Subscribed { .. } => return,
        };
        for sub in subs.iter().filter(|s| delivers(s)) {
            // XEP-0060 §8.4.2: "all subscribers" learn of the deletion; the node's
            // affiliations, which the entitlement check reads, are already gone with it.
            if !deleted && !self.entitled(ctx, &node, &config, sub).await {
                continue;
            }
            let msg = event_message(&domain, &sub.jid, &config.notification_type, child.clone());
            ctx.send(msg).await;
        }
    }

    async fn entitled(
        &self,
        ctx: &ServiceCtx,
        node: &str,
        config: &NodeConfig,
        sub: &PubsubSubscription,
    ) -> bool {
        let Ok(jid) = parse_jid(&sub.jid) else {
            return false;
        };
        let bare = jid.to_bare();
        match self.affiliation_of(ctx.domain(), node, &bare).await {
            Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => true,
            Affiliation::Outcast => false,
            _ => {
                let owners = self.engine.owners(ctx.domain(), None, node).await;
                access_check(&CtxEnv(ctx), &owners, config, &bare, || async { true })
                    .await
                    .is_ok()
            }
        }
    }

    async fn send_last(&self, ctx: &ServiceCtx, node: &str, config: &NodeConfig, to: &Jid) {
        let domain = ctx.domain().to_string();
        let Ok(items) = self
            .engine
            .store()
            .items(
                &domain,
                node,
                &ItemQuery {
                    limit: Some(1),
                    ..ItemQuery::default()
                },
            )
            .await
        else {
            return;
        };
        let Some(item) = items.first() else { return };
        let child = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(item_element(
                NS_EVENT,
                item,
                config,
                None,
                config.deliver_payloads,
            ));
        let mut msg = event_message(&domain, &to.to_string(), &config.notification_type, child);
        // XEP-0060 §6.1.7: the last item is old news; XEP-0203 says when it was published.
        msg.push_child(super::pep::delay(&domain, item.stamp_ms));
        ctx.send(msg).await;
    }

    /// XEP-0060 §8.6.2: an owner's answer to an authorization request.
    async fn message(&self, ctx: &ServiceCtx, from: &Jid, el: &Element) {
        let Some(x) = el.get_child("x", form::NS) else {
            return;
        };
        let Ok(f) = form::parse(x) else { return };
        if f.form_type.as_deref() != Some(NS_SUBSCRIBE_AUTH) || f.kind != "submit" {
            return;
        }
        let get = |var: &str| {
            f.fields
                .iter()
                .find(|(v, _)| v == var)
                .and_then(|(_, vals)| vals.first().cloned())
        };
        let (Some(node), Some(jid), Some(allow)) = (
            get("pubsub#node"),
            get("pubsub#subscriber_jid"),
            f.fields
                .iter()
                .find(|(v, _)| v == "pubsub#allow")
                .and_then(|(_, vals)| form::boolean(vals)),
        ) else {
            return;
        };
        let domain = ctx.domain().to_string();
        if !self.is_admin(&from.to_bare())
            && self.affiliation_of(&domain, &node, &from.to_bare()).await != Affiliation::Owner
        {
            return;
        }
        let store = self.engine.store();
        let Ok(subs) = store.subscriptions(&domain, Some(&node), Some(&jid)).await else {
            return;
        };
        let Some(mut sub) = subs.into_iter().find(|s| s.state == "pending") else {
            return;
        };
        if allow {
            sub.state = "subscribed".into();
            if store.set_subscription(&domain, &sub).await.is_err() {
                return;
            }
        } else if store
            .remove_subscription(&domain, &node, &jid, None)
            .await
            .is_err()
        {
            return;
        }
        // §8.6: the subscriber learns the outcome.
        let state = if allow { "subscribed" } else { "none" };
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", &domain)
            .with_attr("to", &jid)
            .with_attr("id", super::engine::new_id())
            .with_child(
                Element::new("event", NS_EVENT).with_child(
                    Element::new("subscription", NS_EVENT)
                        .with_attr("node", &node)
                        .with_attr("jid", &jid)
                        .with_attr("subscription", state),
                ),
            );
        ctx.send(msg).await;
        if allow
            && let Ok(Some(config)) = self.engine.config(&domain, &node, &self.defaults).await
            && config.send_last_published_item != SendLast::Never
            && let Ok(j) = parse_jid(&jid)
        {
            self.send_last(ctx, &node, &config, &j).await;
        }
    }
}

/// XEP-0060 §8.6.1: the form asking an owner to approve a subscription.
fn authorization_request(
    service: &str,
    owner: &str,
    node: &str,
    jid: &Jid,
    subid: &str,
) -> Element {
    // XEP-0060 §8.6.1 (example 146): the subscription id hidden, the subscriber a JID.
    let mut x = form::new_form("form", NS_SUBSCRIBE_AUTH);
    x.push_child(form::field(
        "pubsub#subid",
        "",
        form::Kind::Hidden,
        &[subid.to_string()],
    ));
    x.push_child(form::field(
        "pubsub#node",
        "Node ID",
        form::Kind::Text,
        &[node.to_string()],
    ));
    x.push_child(form::field(
        "pubsub#subscriber_jid",
        "Subscriber Address",
        form::Kind::JidSingle,
        &[jid.to_string()],
    ));
    x.push_child(form::field(
        "pubsub#allow",
        "Allow this subscription?",
        form::Kind::Boolean,
        &["0".to_string()],
    ));
    Element::new("message", ns::CLIENT)
        .with_attr("from", service)
        .with_attr("to", owner)
        .with_attr("id", super::engine::new_id())
        .with_child(x)
}
