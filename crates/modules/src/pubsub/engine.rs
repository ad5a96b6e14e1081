//! The publish-subscribe engine (XEP-0060), one for PEP (XEP-0163: a service per account) and
//! for hosted services (`pubsub.HOST`). It answers a parsed [`Request`] against the store and
//! reports what happened as [`Event`]s; who gets told is the caller's business (PEP follows the
//! roster and `+notify` interest, a service its subscriptions).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use canto_core::roster::RosterItem;
use canto_core::stores::PubsubStore;
use canto_stanza::{BareJid, Condition, Jid, StanzaError, parse_jid};
use canto_storage::{ItemQuery, PubsubItem, PubsubSubscription, StorageError};
use canto_xml::Element;

use super::config::{AccessModel, ItemReply, NodeConfig, PublishModel};
use super::request::{ParseLimits, PublishItem, Request, Rsm};
use super::{NS_OWNER, NS_PUBSUB, NS_RSM, NS_SUBSCRIBE_OPTIONS, app_error, form, unsupported};

/// A node affiliation (XEP-0060 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affiliation {
    /// Owner: everything.
    Owner,
    /// May publish and retract.
    Publisher,
    /// May publish only.
    PublishOnly,
    /// May subscribe and retrieve items (whitelist).
    Member,
    /// Nothing special.
    None,
    /// Banned.
    Outcast,
}

impl Affiliation {
    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "publisher" => Affiliation::Publisher,
            "publish-only" => Affiliation::PublishOnly,
            "member" => Affiliation::Member,
            "none" => Affiliation::None,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Publisher => "publisher",
            Affiliation::PublishOnly => "publish-only",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }
}

/// Limits of one service (`[pep]`, `[pubsub]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Nodes per service (per account for PEP).
    pub max_nodes: usize,
    /// The largest `max_items` a node may have; `max` means this.
    pub max_items: u64,
    /// Largest item payload, serialized bytes.
    pub max_item_bytes: usize,
    /// Subscriptions per node.
    pub max_subscriptions: usize,
    /// Items one retrieval returns at most (more pages by RSM).
    pub max_page: usize,
    /// Node name and item id lengths.
    pub parse: ParseLimits,
}

/// Roster look-ups for the `presence` and `roster` access models.
#[async_trait]
pub trait Env: Send + Sync {
    /// The item `owner` (a local account) has for `contact`.
    async fn roster_item(&self, owner: &BareJid, contact: &BareJid) -> Option<RosterItem>;
}

/// Who is asking, of which service.
pub struct Ctx<'a> {
    /// Roster access.
    pub env: &'a dyn Env,
    /// The store key: the account's bare JID (PEP) or the service's domain.
    pub service: &'a str,
    /// PEP: the account owning the service.
    pub pep_owner: Option<&'a BareJid>,
    /// The requester, as stamped by the router.
    pub from: &'a Jid,
    /// Owns every node: the PEP account itself, or a service administrator.
    pub admin: bool,
    /// May create nodes (PEP: the owner; a service: per its policy).
    pub may_create: bool,
    /// The service's limits.
    pub limits: Limits,
    /// New nodes' defaults.
    pub defaults: &'a NodeConfig,
}

impl Ctx<'_> {
    fn is_pep(&self) -> bool {
        self.pep_owner.is_some()
    }
}

/// Something that happened, for the caller to notify (XEP-0060 §7.1.2.1, §7.2.2.1, §8.2.4,
/// §8.4.2, §8.5.2) or follow up (§6.1.7: the last item on subscription).
#[derive(Clone, Debug)]
pub enum Event {
    /// An item was published; `item` is the `<item/>` as notifications carry it.
    Published {
        /// The node.
        node: String,
        /// Its configuration.
        config: NodeConfig,
        /// The notification's `<item/>` (payload included per `deliver_payloads`).
        item: Element,
    },
    /// Items were retracted.
    Retracted {
        /// The node.
        node: String,
        /// Its configuration.
        config: NodeConfig,
        /// Their ids.
        ids: Vec<String>,
    },
    /// Every item was purged.
    Purged {
        /// The node.
        node: String,
        /// Its configuration.
        config: NodeConfig,
    },
    /// The node was deleted; `subscribers` are those it had.
    Deleted {
        /// The node.
        node: String,
        /// Its configuration.
        config: NodeConfig,
        /// `<redirect uri/>`.
        redirect: Option<String>,
        /// Its subscriptions before deletion.
        subscribers: Vec<PubsubSubscription>,
        /// Its affiliations before deletion, `(node, jid, affiliation)`: who was entitled to
        /// the node when it went (§8.4.2 notifies its subscribers, members included).
        affiliations: Vec<(String, String, String)>,
    },
    /// The configuration changed.
    Configured {
        /// The node.
        node: String,
        /// The new configuration.
        config: NodeConfig,
    },
    /// `jid` is now subscribed (`subscribed`) or waits for approval (`pending`).
    Subscribed {
        /// The node.
        node: String,
        /// Its configuration.
        config: NodeConfig,
        /// The subscriber.
        jid: Jid,
        /// `subscribed` or `pending`.
        state: String,
        /// The subscription id.
        subid: String,
    },
}

/// The result of a request: the IQ result's payload and what happened.
pub struct Outcome {
    /// The `<pubsub/>` of the result, if it has one.
    pub reply: Option<Element>,
    /// Events to notify.
    pub events: Vec<Event>,
}

impl Outcome {
    fn reply(reply: Option<Element>) -> Outcome {
        Outcome {
            reply,
            events: Vec::new(),
        }
    }
}

/// A store failure, as the requester sees it.
pub fn storage_error(e: StorageError) -> StanzaError {
    match e {
        // XEP-0060 does not name node-count limits; `not-allowed` with the registered
        // `<max-nodes-exceeded/>` says what it is.
        StorageError::Limit(_) => app_error(Condition::NotAllowed, "max-nodes-exceeded"),
        StorageError::Full(_) => StanzaError::new(Condition::ResourceConstraint),
        _ => StanzaError::new(Condition::InternalServerError),
    }
}

/// The engine of one service kind.
#[derive(Clone)]
pub struct Engine {
    store: PubsubStore,
    /// Node configurations read recently, by (service, node); `None`: no such node. Every
    /// configuration write goes through the engine, which updates it; bounded by
    /// [`CONFIG_CACHE`] entries (cleared when full). One process owns the store: a cluster
    /// will need invalidation across nodes (issue 15).
    configs: Arc<std::sync::Mutex<ConfigCache>>,
}

/// Node configurations kept in memory.
const CONFIG_CACHE: usize = 50_000;

/// (service, node) → its configuration, `None` for no such node.
type ConfigCache = HashMap<(String, String), Option<NodeConfig>>;

/// Publish results carry the item id only (XEP-0060 §7.1.2).
fn ps(child: Element) -> Element {
    Element::new("pubsub", NS_PUBSUB).with_child(child)
}

fn owner_ps(child: Element) -> Element {
    Element::new("pubsub", NS_OWNER).with_child(child)
}

/// A fresh opaque id (item ids, subscription ids, instant nodes).
pub fn new_id() -> String {
    // 128 random bits: unique, and unguessable by other users.
    format!("{:032x}", rand::random::<u128>())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `<item/>` of a stored item, for a retrieval or a notification.
pub fn item_element(
    ns: &str,
    item: &PubsubItem,
    config: &NodeConfig,
    owner: Option<&str>,
    payload: bool,
) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", &item.id);
    // XEP-0060 §16.4.3 `pubsub#itemreply`: whose JID, if any, the item names.
    match config.itemreply {
        ItemReply::Publisher if !item.publisher.is_empty() => {
            el.set_attr("publisher", &item.publisher)
        }
        ItemReply::Owner => {
            if let Some(o) = owner {
                el.set_attr("publisher", o);
            }
        }
        _ => {}
    }
    if payload
        && !item.payload.is_empty()
        && let Some(p) = canto_core::roster::decode_element(&item.payload)
    {
        el.push_child(p);
    }
    el
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: PubsubStore) -> Engine {
        Engine {
            store,
            configs: Arc::default(),
        }
    }

    fn remember(&self, service: &str, node: &str, config: Option<NodeConfig>) {
        if let Ok(mut c) = self.configs.lock() {
            if c.len() >= CONFIG_CACHE {
                c.clear();
            }
            c.insert((service.to_string(), node.to_string()), config);
        }
    }

    fn forget_node(&self, service: &str, node: &str) {
        if let Ok(mut c) = self.configs.lock() {
            c.remove(&(service.to_string(), node.to_string()));
        }
    }

    /// Forgets what is cached of `service` (its data went behind the engine's back: an account
    /// deleted with its PEP service).
    pub fn forget_service(&self, service: &str) {
        if let Ok(mut c) = self.configs.lock() {
            c.retain(|(s, _), _| s != service);
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn canto_storage::PubsubStore {
        self.store.get()
    }

    /// A node's configuration, if it exists.
    pub async fn config(
        &self,
        service: &str,
        node: &str,
        defaults: &NodeConfig,
    ) -> Result<Option<NodeConfig>, StanzaError> {
        let key = (service.to_string(), node.to_string());
        if let Some(hit) = self.configs.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let raw = self
            .store()
            .node(service, node)
            .await
            .map_err(storage_error)?;
        let config =
            raw.map(|r| NodeConfig::decode(&r, defaults).unwrap_or_else(|| defaults.clone()));
        self.remember(service, node, config.clone());
        Ok(config)
    }

    /// The requester's affiliation with `node`.
    pub async fn affiliation(&self, c: &Ctx<'_>, node: &str) -> Result<Affiliation, StanzaError> {
        if c.admin {
            return Ok(Affiliation::Owner);
        }
        let bare = c.from.to_bare().to_string();
        let list = self
            .store()
            .affiliations(c.service, Some(node), Some(&bare))
            .await
            .map_err(storage_error)?;
        Ok(list
            .first()
            .and_then(|(_, _, a)| Affiliation::parse(a))
            .unwrap_or(Affiliation::None))
    }

    /// The node's owners: the PEP account, or its `owner` affiliations.
    pub async fn owners(
        &self,
        c_service: &str,
        pep_owner: Option<&BareJid>,
        node: &str,
    ) -> Vec<BareJid> {
        if let Some(o) = pep_owner {
            return vec![o.clone()];
        }
        self.store()
            .affiliations(c_service, Some(node), None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, _, a)| a == "owner")
            .filter_map(|(_, j, _)| parse_jid(&j).ok().map(|j| j.to_bare()))
            .collect()
    }

    /// Answers one request.
    pub async fn handle(&self, c: &Ctx<'_>, req: Request) -> Result<Outcome, StanzaError> {
        match req {
            Request::Create { node, config } => self.create(c, node, config).await,
            Request::Publish {
                node,
                item,
                options,
            } => self.publish(c, node, item, options).await,
            Request::Retract { node, ids, notify } => self.retract(c, node, ids, notify).await,
            Request::Subscribe { node, jid } => self.subscribe(c, node, &jid).await,
            Request::Unsubscribe { node, jid, subid } => {
                self.unsubscribe(c, node, &jid, subid).await
            }
            Request::Options { node, jid, fields } => self.options(c, node, &jid, fields).await,
            Request::Items {
                node,
                max_items,
                ids,
                rsm,
            } => self.items(c, node, max_items, ids, rsm).await,
            Request::Subscriptions { node } => self.own_subscriptions(c, node).await,
            Request::Affiliations { node } => self.own_affiliations(c, node).await,
            // XEP-0060 §6.4: optional; the subscription options are one boolean.
            Request::DefaultSubscriptionOptions => Ok(Outcome::reply(Some(ps(Element::new(
                "default", NS_PUBSUB,
            )
            .with_child(subscribe_options_form(true)))))),
            Request::Configure { node, fields } => self.configure(c, node, fields).await,
            Request::DefaultConfig => Ok(Outcome::reply(Some(owner_ps(
                Element::new("default", NS_OWNER)
                    .with_child(c.defaults.to_form(c.limits.max_items)),
            )))),
            Request::Delete { node, redirect } => self.delete(c, node, redirect).await,
            Request::Purge { node } => self.purge(c, node).await,
            Request::OwnerSubscriptions { node, changes } => {
                self.owner_subscriptions(c, node, changes).await
            }
            Request::OwnerAffiliations { node, changes } => {
                self.owner_affiliations(c, node, changes).await
            }
        }
    }

    /// A node that must exist: XEP-0060 `item-not-found` otherwise.
    async fn existing(&self, c: &Ctx<'_>, node: &str) -> Result<NodeConfig, StanzaError> {
        self.config(c.service, node, c.defaults)
            .await?
            .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))
    }

    /// Checks a configuration a PEP service cannot have (XEP-0163 leaves `authorize` to
    /// services; Prosody's mod_pep refuses it too).
    fn check_kind(c: &Ctx<'_>, config: &NodeConfig) -> Result<(), StanzaError> {
        if c.is_pep() && config.access_model == AccessModel::Authorize {
            return Err(StanzaError::new(Condition::NotAcceptable)
                .with_text("PEP nodes do not take the authorize access model"));
        }
        Ok(())
    }

    async fn create_node(
        &self,
        c: &Ctx<'_>,
        node: &str,
        config: &NodeConfig,
    ) -> Result<bool, StanzaError> {
        let created = self
            .store()
            .create_node(c.service, node, &config.encode(), Some(c.limits.max_nodes))
            .await
            .map_err(storage_error)?;
        if created {
            self.remember(c.service, node, Some(config.clone()));
        } else {
            // It exists: what is cached may be older than the store.
            self.forget_node(c.service, node);
        }
        if created && !c.is_pep() {
            // XEP-0060 §8.1: the creator owns the node.
            let bare = c.from.to_bare().to_string();
            self.store()
                .set_affiliation(c.service, node, &bare, Some("owner"))
                .await
                .map_err(storage_error)?;
        }
        Ok(created)
    }

    /// §8.1 create.
    async fn create(
        &self,
        c: &Ctx<'_>,
        node: Option<String>,
        fields: Option<Vec<(String, Vec<String>)>>,
    ) -> Result<Outcome, StanzaError> {
        if !c.may_create {
            // §8.1.3.1
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let mut config = c.defaults.clone();
        if let Some(f) = &fields {
            config.apply(f, c.limits.max_items)?;
        }
        Self::check_kind(c, &config)?;
        let instant = node.is_none();
        let node = node.unwrap_or_else(new_id);
        if !self.create_node(c, &node, &config).await? {
            // §8.1.3.2
            return Err(StanzaError::new(Condition::Conflict));
        }
        // §8.1.2: an instant node's name is returned; a named one gets an empty result.
        Ok(Outcome::reply(instant.then(|| {
            ps(Element::new("create", NS_PUBSUB).with_attr("node", &node))
        })))
    }

    /// §7.1 publish, with §7.1.4 auto-create and §7.1.5 publish-options.
    async fn publish(
        &self,
        c: &Ctx<'_>,
        node: String,
        item: Option<PublishItem>,
        options: Option<Vec<(String, Vec<String>)>>,
    ) -> Result<Outcome, StanzaError> {
        let payload_bytes = item
            .as_ref()
            .and_then(|i| i.payload.as_ref())
            .map(Element::to_bytes);
        if payload_bytes
            .as_ref()
            .is_some_and(|b| b.len() > c.limits.max_item_bytes)
        {
            // §7.1.3.4
            return Err(app_error(Condition::NotAcceptable, "payload-too-big"));
        }
        let config = match self.config(c.service, &node, c.defaults).await? {
            Some(config) => {
                let aff = self.affiliation(c, &node).await?;
                self.may_publish(c, &node, &config, aff).await?;
                if let Some(o) = &options {
                    config.check_preconditions(o, c.limits.max_items)?;
                }
                config
            }
            None => {
                if !c.may_create {
                    // §7.1.3.3: no auto-create for this requester.
                    return Err(StanzaError::new(Condition::ItemNotFound));
                }
                let mut config = c.defaults.clone();
                if let Some(o) = &options {
                    // §7.1.5: the options become the new node's configuration.
                    config
                        .apply(o, c.limits.max_items)
                        .map_err(|_| super::precondition_not_met())?;
                }
                Self::check_kind(c, &config)?;
                self.create_node(c, &node, &config).await?;
                config
            }
        };
        let (id, payload) = match item {
            Some(i) => (i.id.unwrap_or_else(new_id), i.payload),
            None => {
                // §7.1.3.6: a persistent node or one delivering payloads needs an item.
                if config.persist_items || config.deliver_payloads {
                    return Err(app_error(Condition::BadRequest, "item-required"));
                }
                (new_id(), None)
            }
        };
        if payload.is_none() && (config.persist_items || config.deliver_payloads) {
            // §7.1.3.6
            return Err(app_error(Condition::BadRequest, "payload-required"));
        }
        let stored = PubsubItem {
            id: id.clone(),
            seq: 0,
            publisher: c.from.to_bare().to_string(),
            stamp_ms: now_ms(),
            payload: payload_bytes.unwrap_or_default(),
        };
        if config.persist_items {
            let keep = usize::try_from(config.keep(c.limits.max_items)).unwrap_or(usize::MAX);
            self.store()
                .publish(c.service, &node, &stored, Some(keep))
                .await
                .map_err(storage_error)?
                .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
        }
        let owner = c.pep_owner.map(BareJid::to_string);
        let notified = item_element(
            super::NS_EVENT,
            &stored,
            &config,
            owner.as_deref(),
            config.deliver_payloads,
        );
        let reply = ps(Element::new("publish", NS_PUBSUB)
            .with_attr("node", &node)
            .with_child(Element::new("item", NS_PUBSUB).with_attr("id", &id)));
        Ok(Outcome {
            reply: Some(reply),
            events: vec![Event::Published {
                node,
                config,
                item: notified,
            }],
        })
    }

    /// §4.1 and `pubsub#publish_model`: whether the requester may publish.
    async fn may_publish(
        &self,
        c: &Ctx<'_>,
        node: &str,
        config: &NodeConfig,
        aff: Affiliation,
    ) -> Result<(), StanzaError> {
        match aff {
            Affiliation::Owner | Affiliation::Publisher | Affiliation::PublishOnly => {
                return Ok(());
            }
            Affiliation::Outcast => return Err(StanzaError::new(Condition::Forbidden)),
            _ => {}
        }
        let allowed = match config.publish_model {
            PublishModel::Publishers => false,
            PublishModel::Open => self.may_access(c, node, config, aff).await.is_ok(),
            PublishModel::Subscribers => self.subscribed(c, node).await?,
        };
        if allowed {
            Ok(())
        } else {
            // §7.1.3.1
            Err(StanzaError::new(Condition::Forbidden))
        }
    }

    async fn subscribed(&self, c: &Ctx<'_>, node: &str) -> Result<bool, StanzaError> {
        let bare = c.from.to_bare();
        let subs = self
            .store()
            .subscriptions(c.service, Some(node), None)
            .await
            .map_err(storage_error)?;
        Ok(subs.iter().any(|s| {
            s.state == "subscribed"
                && parse_jid(&s.jid).is_ok_and(|j| j == *c.from || j.to_bare() == bare)
        }))
    }

    /// §4.5 access models, for retrieving items and subscribing.
    pub async fn may_access(
        &self,
        c: &Ctx<'_>,
        node: &str,
        config: &NodeConfig,
        aff: Affiliation,
    ) -> Result<(), StanzaError> {
        match aff {
            Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => return Ok(()),
            // §6.1.3.8, §6.5.9.10: outcasts (blocked) get nothing.
            Affiliation::Outcast => return Err(StanzaError::new(Condition::Forbidden)),
            _ => {}
        }
        let owners = self.owners(c.service, c.pep_owner, node).await;
        access_check(c.env, &owners, config, &c.from.to_bare(), || async {
            self.subscribed(c, node).await.unwrap_or(false)
        })
        .await
    }

    /// §7.2 retract.
    async fn retract(
        &self,
        c: &Ctx<'_>,
        node: String,
        ids: Vec<String>,
        notify: Option<bool>,
    ) -> Result<Outcome, StanzaError> {
        let config = self.existing(c, &node).await?;
        if !config.persist_items {
            // §7.2.3.6: a node that keeps no items has none to retract.
            return Err(unsupported("persistent-items"));
        }
        let aff = self.affiliation(c, &node).await?;
        let publisher = c.from.to_bare().to_string();
        let may_any = matches!(aff, Affiliation::Owner | Affiliation::Publisher);
        let mut gone = Vec::new();
        for id in &ids {
            let found = self
                .store()
                .items(
                    c.service,
                    &node,
                    &ItemQuery {
                        ids: Some(vec![id.clone()]),
                        ..ItemQuery::default()
                    },
                )
                .await
                .map_err(storage_error)?;
            let Some(item) = found.first() else {
                // §7.2.3.5
                return Err(StanzaError::new(Condition::ItemNotFound));
            };
            // §7.2.3.1: owners and publishers, or whoever published that item.
            if !may_any && item.publisher != publisher {
                return Err(StanzaError::new(Condition::Forbidden));
            }
        }
        for id in ids {
            if self
                .store()
                .retract(c.service, &node, &id)
                .await
                .map_err(storage_error)?
            {
                gone.push(id);
            }
        }
        // §7.2.2.1: `notify` says whether to notify; without it the node's
        // `pubsub#notify_retract` does.
        let events = if notify.unwrap_or(config.notify_retract) && !gone.is_empty() {
            vec![Event::Retracted {
                node,
                config,
                ids: gone,
            }]
        } else {
            Vec::new()
        };
        Ok(Outcome {
            reply: None,
            events,
        })
    }

    /// §6.1 subscribe.
    async fn subscribe(
        &self,
        c: &Ctx<'_>,
        node: String,
        jid: &str,
    ) -> Result<Outcome, StanzaError> {
        let jid = parse_jid(jid).map_err(|_| app_error(Condition::BadRequest, "invalid-jid"))?;
        let config = self.existing(c, &node).await?;
        // §6.1.3.1: the JID must be the requester's (bare or full).
        if jid.to_bare() != c.from.to_bare() {
            return Err(app_error(Condition::BadRequest, "invalid-jid"));
        }
        let aff = self.affiliation(c, &node).await?;
        let jid_s = jid.to_string();
        let existing = self
            .store()
            .subscriptions(c.service, Some(&node), Some(&jid_s))
            .await
            .map_err(storage_error)?;
        let state = match self.may_access(c, &node, &config, aff).await {
            Ok(()) => "subscribed",
            // §6.1.4 authorize: the owner decides (§8.6).
            Err(_)
                if config.access_model == AccessModel::Authorize && aff != Affiliation::Outcast =>
            {
                "pending"
            }
            Err(e) => return Err(e),
        };
        let subid = match existing.first() {
            // One subscription per JID: subscribing again returns it.
            Some(s) if s.state == "subscribed" || state == "pending" => {
                return Ok(Outcome::reply(Some(ps(subscription_element(
                    &node, &s.jid, &s.state, &s.subid,
                )))));
            }
            Some(s) => s.subid.clone(),
            None => {
                let count = self
                    .store()
                    .subscriptions(c.service, Some(&node), None)
                    .await
                    .map_err(storage_error)?
                    .len();
                if count >= c.limits.max_subscriptions {
                    // §6.1.3.9
                    return Err(app_error(Condition::NotAllowed, "too-many-subscriptions"));
                }
                new_id()
            }
        };
        self.store()
            .set_subscription(
                c.service,
                &PubsubSubscription {
                    node: node.clone(),
                    jid: jid_s.clone(),
                    subid: subid.clone(),
                    state: state.to_string(),
                    options: Vec::new(),
                },
            )
            .await
            .map_err(storage_error)?;
        Ok(Outcome {
            reply: Some(ps(subscription_element(&node, &jid_s, state, &subid))),
            events: vec![Event::Subscribed {
                node,
                config,
                jid,
                state: state.to_string(),
                subid,
            }],
        })
    }

    /// §6.2 unsubscribe.
    async fn unsubscribe(
        &self,
        c: &Ctx<'_>,
        node: String,
        jid: &str,
        subid: Option<String>,
    ) -> Result<Outcome, StanzaError> {
        let jid = parse_jid(jid).map_err(|_| app_error(Condition::BadRequest, "invalid-jid"))?;
        self.existing(c, &node).await?;
        // §6.2.3.3: only the subscriber itself (or an owner).
        if jid.to_bare() != c.from.to_bare()
            && self.affiliation(c, &node).await? != Affiliation::Owner
        {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let jid_s = jid.to_string();
        let subs = self
            .store()
            .subscriptions(c.service, Some(&node), Some(&jid_s))
            .await
            .map_err(storage_error)?;
        if subs.is_empty() {
            // §6.2.3.2
            return Err(app_error(Condition::UnexpectedRequest, "not-subscribed"));
        }
        if let Some(want) = &subid
            && !subs.iter().any(|s| &s.subid == want)
        {
            // §6.2.3.5
            return Err(app_error(Condition::NotAcceptable, "invalid-subid"));
        }
        self.store()
            .remove_subscription(c.service, &node, &jid_s, subid.as_deref())
            .await
            .map_err(storage_error)?;
        Ok(Outcome::reply(None))
    }

    /// §6.3 subscription options: one boolean, `pubsub#deliver`.
    async fn options(
        &self,
        c: &Ctx<'_>,
        node: String,
        jid: &str,
        fields: Option<Vec<(String, Vec<String>)>>,
    ) -> Result<Outcome, StanzaError> {
        let jid = parse_jid(jid).map_err(|_| app_error(Condition::BadRequest, "invalid-jid"))?;
        self.existing(c, &node).await?;
        if jid.to_bare() != c.from.to_bare()
            && self.affiliation(c, &node).await? != Affiliation::Owner
        {
            // §6.3.4.2
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let jid_s = jid.to_string();
        let mut subs = self
            .store()
            .subscriptions(c.service, Some(&node), Some(&jid_s))
            .await
            .map_err(storage_error)?;
        let Some(mut sub) = subs.pop() else {
            // §6.3.4.3
            return Err(app_error(Condition::UnexpectedRequest, "not-subscribed"));
        };
        match fields {
            None => Ok(Outcome::reply(Some(ps(Element::new("options", NS_PUBSUB)
                .with_attr("node", &node)
                .with_attr("jid", &jid_s)
                .with_child(subscribe_options_form(deliver_option(
                    &sub.options,
                ))))))),
            Some(fields) => {
                let mut deliver = deliver_option(&sub.options);
                for (var, values) in &fields {
                    match var.as_str() {
                        "pubsub#deliver" => {
                            deliver = form::boolean(values).ok_or_else(|| {
                                app_error(Condition::BadRequest, "invalid-options")
                            })?
                        }
                        // §6.3.6: options the service does not know.
                        _ => return Err(app_error(Condition::BadRequest, "invalid-options")),
                    }
                }
                sub.options = if deliver {
                    b"deliver=1".to_vec()
                } else {
                    b"deliver=0".to_vec()
                };
                self.store()
                    .set_subscription(c.service, &sub)
                    .await
                    .map_err(storage_error)?;
                Ok(Outcome::reply(None))
            }
        }
    }

    /// §6.5 items retrieval: oldest first, `max_items` the newest N, XEP-0059 paging by id.
    async fn items(
        &self,
        c: &Ctx<'_>,
        node: String,
        max_items: Option<usize>,
        ids: Vec<String>,
        rsm: Option<Rsm>,
    ) -> Result<Outcome, StanzaError> {
        let config = self.existing(c, &node).await?;
        let aff = self.affiliation(c, &node).await?;
        self.may_access(c, &node, &config, aff).await?;
        if !config.persist_items {
            // §6.5.9.4: a transient node keeps nothing to retrieve.
            return Err(unsupported("persistent-items"));
        }
        let store = self.store();
        let page = c.limits.max_page;
        let mut set = None;
        let items = if !ids.is_empty() {
            // §6.5.8: the requested ids that exist, in the order asked.
            let found = store
                .items(
                    c.service,
                    &node,
                    &ItemQuery {
                        ids: Some(ids.clone()),
                        ..ItemQuery::default()
                    },
                )
                .await
                .map_err(storage_error)?;
            ids.iter()
                .filter_map(|id| found.iter().find(|i| &i.id == id).cloned())
                .take(max_items.unwrap_or(page).min(page))
                .collect()
        } else if let Some(rsm) = rsm {
            let max = rsm.max.unwrap_or(page).min(page);
            let mut q = ItemQuery {
                limit: Some(max),
                ..ItemQuery::default()
            };
            let mut list = match (rsm.before, rsm.after) {
                // XEP-0059 §2.5: `<before/>` pages back from the end (the newest).
                (Some(before), _) => {
                    q.oldest_first = false;
                    q.after_id = (!before.is_empty()).then_some(before);
                    let mut l = store
                        .items(c.service, &node, &q)
                        .await
                        .map_err(storage_error)?;
                    l.reverse();
                    l
                }
                (None, after) => {
                    q.oldest_first = true;
                    q.after_id = after;
                    store
                        .items(c.service, &node, &q)
                        .await
                        .map_err(storage_error)?
                }
            };
            if let Some(n) = max_items {
                list.truncate(n);
            }
            let count = store
                .item_count(c.service, &node)
                .await
                .map_err(storage_error)?;
            set = Some(rsm_result(&list, count));
            list
        } else {
            let limit = max_items.unwrap_or(page).min(page);
            let mut list = store
                .items(
                    c.service,
                    &node,
                    &ItemQuery {
                        limit: Some(limit),
                        ..ItemQuery::default()
                    },
                )
                .await
                .map_err(storage_error)?;
            list.reverse();
            if max_items.is_none() {
                let count = store
                    .item_count(c.service, &node)
                    .await
                    .map_err(storage_error)?;
                if count > list.len() {
                    // More than one page: say so, the client pages on with RSM.
                    set = Some(rsm_result(&list, count));
                }
            }
            list
        };
        let owner = c.pep_owner.map(BareJid::to_string);
        let mut el = Element::new("items", NS_PUBSUB).with_attr("node", &node);
        for i in &items {
            el.push_child(item_element(NS_PUBSUB, i, &config, owner.as_deref(), true));
        }
        let mut reply = ps(el);
        if let Some(s) = set {
            reply.push_child(s);
        }
        Ok(Outcome::reply(Some(reply)))
    }

    /// §5.6 the requester's subscriptions.
    async fn own_subscriptions(
        &self,
        c: &Ctx<'_>,
        node: Option<String>,
    ) -> Result<Outcome, StanzaError> {
        let bare = c.from.to_bare();
        let subs = self
            .store()
            .subscriptions(c.service, node.as_deref(), None)
            .await
            .map_err(storage_error)?;
        let mut el = Element::new("subscriptions", NS_PUBSUB);
        if let Some(n) = &node {
            el.set_attr("node", n);
        }
        for s in subs
            .iter()
            .filter(|s| parse_jid(&s.jid).is_ok_and(|j| j.to_bare() == bare))
        {
            el.push_child(subscription_element(&s.node, &s.jid, &s.state, &s.subid));
        }
        Ok(Outcome::reply(Some(ps(el))))
    }

    /// §5.7 the requester's affiliations.
    async fn own_affiliations(
        &self,
        c: &Ctx<'_>,
        node: Option<String>,
    ) -> Result<Outcome, StanzaError> {
        let mut el = Element::new("affiliations", NS_PUBSUB);
        if let Some(n) = &node {
            el.set_attr("node", n);
        }
        if c.is_pep() && c.admin {
            // The account owns every node of its PEP service.
            let nodes = self.store().nodes(c.service).await.map_err(storage_error)?;
            for (name, _) in nodes
                .iter()
                .filter(|(n, _)| node.as_ref().is_none_or(|want| want == n))
            {
                el.push_child(
                    Element::new("affiliation", NS_PUBSUB)
                        .with_attr("node", name)
                        .with_attr("affiliation", "owner"),
                );
            }
        } else {
            let bare = c.from.to_bare().to_string();
            for (n, _, a) in self
                .store()
                .affiliations(c.service, node.as_deref(), Some(&bare))
                .await
                .map_err(storage_error)?
            {
                el.push_child(
                    Element::new("affiliation", NS_PUBSUB)
                        .with_attr("node", n)
                        .with_attr("affiliation", a),
                );
            }
        }
        Ok(Outcome::reply(Some(ps(el))))
    }

    async fn require_owner(&self, c: &Ctx<'_>, node: &str) -> Result<NodeConfig, StanzaError> {
        let config = self.existing(c, node).await?;
        if self.affiliation(c, node).await? != Affiliation::Owner {
            // §8.2.3.3 and the other owner use cases.
            return Err(StanzaError::new(Condition::Forbidden));
        }
        Ok(config)
    }

    /// §8.2 configure.
    async fn configure(
        &self,
        c: &Ctx<'_>,
        node: String,
        fields: Option<Option<super::request::Fields>>,
    ) -> Result<Outcome, StanzaError> {
        let mut config = self.require_owner(c, &node).await?;
        match fields {
            None => Ok(Outcome::reply(Some(owner_ps(
                Element::new("configure", NS_OWNER)
                    .with_attr("node", &node)
                    .with_child(config.to_form(c.limits.max_items)),
            )))),
            // §8.2: a cancelled form changes nothing.
            Some(None) => Ok(Outcome::reply(None)),
            Some(Some(fields)) => {
                config.apply(&fields, c.limits.max_items)?;
                Self::check_kind(c, &config)?;
                let stored = self
                    .store()
                    .set_node_config(c.service, &node, &config.encode())
                    .await;
                self.forget_node(c.service, &node);
                stored.map_err(storage_error)?;
                if config.persist_items {
                    // A smaller max_items takes effect at once.
                    let keep =
                        usize::try_from(config.keep(c.limits.max_items)).unwrap_or(usize::MAX);
                    self.store()
                        .trim(c.service, &node, keep)
                        .await
                        .map_err(storage_error)?;
                } else {
                    self.store()
                        .purge(c.service, &node)
                        .await
                        .map_err(storage_error)?;
                }
                // §8.2.4: subscribers the new access model no longer admits lose their
                // subscription.
                self.drop_unentitled(c, &node, &config).await?;
                let events = if config.notify_config {
                    vec![Event::Configured { node, config }]
                } else {
                    Vec::new()
                };
                Ok(Outcome {
                    reply: None,
                    events,
                })
            }
        }
    }

    async fn drop_unentitled(
        &self,
        c: &Ctx<'_>,
        node: &str,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        let subs = self
            .store()
            .subscriptions(c.service, Some(node), None)
            .await
            .map_err(storage_error)?;
        if subs.is_empty() {
            return Ok(());
        }
        let owners = self.owners(c.service, c.pep_owner, node).await;
        let affs = self
            .store()
            .affiliations(c.service, Some(node), None)
            .await
            .map_err(storage_error)?;
        for s in subs {
            let Ok(jid) = parse_jid(&s.jid) else { continue };
            let bare = jid.to_bare();
            let aff = affs
                .iter()
                .find(|(_, j, _)| *j == bare.to_string())
                .and_then(|(_, _, a)| Affiliation::parse(a))
                .unwrap_or(Affiliation::None);
            let allowed = match aff {
                Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => true,
                Affiliation::Outcast => false,
                _ => {
                    owners.contains(&bare)
                        || access_check(c.env, &owners, config, &bare, || async {
                            s.state == "subscribed"
                        })
                        .await
                        .is_ok()
                }
            };
            if !allowed {
                self.store()
                    .remove_subscription(c.service, node, &s.jid, None)
                    .await
                    .map_err(storage_error)?;
            }
        }
        Ok(())
    }

    /// §8.4 delete.
    async fn delete(
        &self,
        c: &Ctx<'_>,
        node: String,
        redirect: Option<String>,
    ) -> Result<Outcome, StanzaError> {
        let config = self.require_owner(c, &node).await?;
        let subscribers = self
            .store()
            .subscriptions(c.service, Some(&node), None)
            .await
            .map_err(storage_error)?;
        // §8.4.2: the affiliations go with the node; the notification still follows them.
        let affiliations = self
            .store()
            .affiliations(c.service, Some(&node), None)
            .await
            .map_err(storage_error)?;
        let deleted = self.store().delete_node(c.service, &node).await;
        self.forget_node(c.service, &node);
        deleted.map_err(storage_error)?;
        let events = if config.notify_delete {
            vec![Event::Deleted {
                node,
                config,
                redirect,
                subscribers,
                affiliations,
            }]
        } else {
            Vec::new()
        };
        Ok(Outcome {
            reply: None,
            events,
        })
    }

    /// §8.5 purge.
    async fn purge(&self, c: &Ctx<'_>, node: String) -> Result<Outcome, StanzaError> {
        let config = self.require_owner(c, &node).await?;
        if !config.persist_items {
            // §8.5.3.4
            return Err(unsupported("persistent-items"));
        }
        self.store()
            .purge(c.service, &node)
            .await
            .map_err(storage_error)?;
        let events = if config.notify_retract {
            vec![Event::Purged { node, config }]
        } else {
            Vec::new()
        };
        Ok(Outcome {
            reply: None,
            events,
        })
    }

    /// §8.8 manage subscriptions.
    async fn owner_subscriptions(
        &self,
        c: &Ctx<'_>,
        node: String,
        changes: Option<Vec<(String, String)>>,
    ) -> Result<Outcome, StanzaError> {
        let config = self.require_owner(c, &node).await?;
        let subs = self
            .store()
            .subscriptions(c.service, Some(&node), None)
            .await
            .map_err(storage_error)?;
        let Some(changes) = changes else {
            let mut el = Element::new("subscriptions", NS_OWNER).with_attr("node", &node);
            for s in &subs {
                el.push_child(
                    Element::new("subscription", NS_OWNER)
                        .with_attr("jid", &s.jid)
                        .with_attr("subscription", &s.state)
                        .with_attr("subid", &s.subid),
                );
            }
            return Ok(Outcome::reply(Some(owner_ps(el))));
        };
        let mut events = Vec::new();
        for (jid, state) in changes {
            let j = parse_jid(&jid).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
            let js = j.to_string();
            match state.as_str() {
                "none" => {
                    self.store()
                        .remove_subscription(c.service, &node, &js, None)
                        .await
                        .map_err(storage_error)?;
                }
                "subscribed" | "pending" => {
                    let subid = subs
                        .iter()
                        .find(|s| s.jid == js)
                        .map_or_else(new_id, |s| s.subid.clone());
                    self.store()
                        .set_subscription(
                            c.service,
                            &PubsubSubscription {
                                node: node.clone(),
                                jid: js.clone(),
                                subid: subid.clone(),
                                state: state.clone(),
                                options: Vec::new(),
                            },
                        )
                        .await
                        .map_err(storage_error)?;
                    if state == "subscribed" {
                        events.push(Event::Subscribed {
                            node: node.clone(),
                            config: config.clone(),
                            jid: j,
                            state,
                            subid,
                        });
                    }
                }
                _ => {
                    return Err(StanzaError::new(Condition::BadRequest)
                        .with_text("subscription is none, pending or subscribed"));
                }
            }
        }
        Ok(Outcome {
            reply: None,
            events,
        })
    }

    /// §8.9 manage affiliations.
    async fn owner_affiliations(
        &self,
        c: &Ctx<'_>,
        node: String,
        changes: Option<Vec<(String, String)>>,
    ) -> Result<Outcome, StanzaError> {
        self.require_owner(c, &node).await?;
        let Some(changes) = changes else {
            let mut el = Element::new("affiliations", NS_OWNER).with_attr("node", &node);
            if let Some(o) = c.pep_owner {
                el.push_child(
                    Element::new("affiliation", NS_OWNER)
                        .with_attr("jid", o.to_string())
                        .with_attr("affiliation", "owner"),
                );
            }
            for (_, j, a) in self
                .store()
                .affiliations(c.service, Some(&node), None)
                .await
                .map_err(storage_error)?
            {
                el.push_child(
                    Element::new("affiliation", NS_OWNER)
                        .with_attr("jid", j)
                        .with_attr("affiliation", a),
                );
            }
            return Ok(Outcome::reply(Some(owner_ps(el))));
        };
        let mut parsed = Vec::new();
        for (jid, aff) in changes {
            let j = parse_jid(&jid)
                .map_err(|_| StanzaError::new(Condition::JidMalformed))?
                .to_bare();
            if c.pep_owner == Some(&j) || (c.is_pep() && aff == "owner") {
                // The account is the only owner of its PEP nodes.
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .with_text("a PEP node has one owner, the account"));
            }
            parsed.push((j.to_string(), aff));
        }
        if !c.is_pep() {
            // §8.9.2.4: the last owner cannot leave the node ownerless.
            let current = self
                .store()
                .affiliations(c.service, Some(&node), None)
                .await
                .map_err(storage_error)?;
            let mut owners: Vec<String> = current
                .iter()
                .filter(|(_, _, a)| a == "owner")
                .map(|(_, j, _)| j.clone())
                .collect();
            for (j, a) in &parsed {
                owners.retain(|o| o != j);
                if a == "owner" {
                    owners.push(j.clone());
                }
            }
            if owners.is_empty() && !c.admin {
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .with_text("a node keeps at least one owner"));
            }
        }
        for (j, a) in parsed {
            let value = (a != "none").then_some(a.as_str());
            self.store()
                .set_affiliation(c.service, &node, &j, value)
                .await
                .map_err(storage_error)?;
            if a == "outcast" {
                // §8.9.2: an outcast's subscriptions end.
                for s in self
                    .store()
                    .subscriptions(c.service, Some(&node), None)
                    .await
                    .map_err(storage_error)?
                {
                    if parse_jid(&s.jid).is_ok_and(|x| x.to_bare().to_string() == j) {
                        self.store()
                            .remove_subscription(c.service, &node, &s.jid, None)
                            .await
                            .map_err(storage_error)?;
                    }
                }
            }
        }
        Ok(Outcome::reply(None))
    }
}

/// §4.5: whether `who` (neither owner nor affiliated) may access a node of this configuration.
/// `owners` are the accounts whose rosters the `presence` and `roster` models consult;
/// `subscribed` tells whether `who` has an approved subscription (`authorize`).
pub async fn access_check<F, Fut>(
    env: &dyn Env,
    owners: &[BareJid],
    config: &NodeConfig,
    who: &BareJid,
    subscribed: F,
) -> Result<(), StanzaError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if owners.contains(who) {
        return Ok(());
    }
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => {
            for o in owners {
                if env
                    .roster_item(o, who)
                    .await
                    .is_some_and(|i| i.subscription.has_from())
                {
                    return Ok(());
                }
            }
            // §6.1.3.2
            Err(app_error(
                Condition::NotAuthorized,
                "presence-subscription-required",
            ))
        }
        AccessModel::Roster => {
            for o in owners {
                if let Some(i) = env.roster_item(o, who).await
                    && i.groups
                        .iter()
                        .any(|g| config.roster_groups_allowed.contains(g))
                {
                    return Ok(());
                }
            }
            // §6.1.3.3
            Err(app_error(Condition::NotAuthorized, "not-in-roster-group"))
        }
        // §6.1.3.4
        AccessModel::Whitelist => Err(app_error(Condition::NotAllowed, "closed-node")),
        AccessModel::Authorize => {
            if subscribed().await {
                Ok(())
            } else {
                // §6.5.9.3: items of an authorize node need an approved subscription.
                Err(app_error(Condition::NotAuthorized, "not-subscribed"))
            }
        }
    }
}

fn subscription_element(node: &str, jid: &str, state: &str, subid: &str) -> Element {
    Element::new("subscription", NS_PUBSUB)
        .with_attr("node", node)
        .with_attr("jid", jid)
        .with_attr("subscription", state)
        .with_attr("subid", subid)
}

fn deliver_option(options: &[u8]) -> bool {
    options != b"deliver=0"
}

/// Whether a subscription wants notifications (`pubsub#deliver`).
pub fn delivers(sub: &PubsubSubscription) -> bool {
    sub.state == "subscribed" && deliver_option(&sub.options)
}

fn subscribe_options_form(deliver: bool) -> Element {
    let mut x = form::new_form("form", NS_SUBSCRIBE_OPTIONS);
    x.push_child(form::field(
        "pubsub#deliver",
        "Receive notifications",
        form::Kind::Boolean,
        &[if deliver { "1" } else { "0" }.to_string()],
    ));
    x
}

/// XEP-0059 §2: first, last and count of a page.
fn rsm_result(items: &[PubsubItem], count: usize) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        set.push_child(Element::new("first", NS_RSM).with_text(first.id.clone()));
        set.push_child(Element::new("last", NS_RSM).with_text(last.id.clone()));
    }
    set.push_child(Element::new("count", NS_RSM).with_text(count.to_string()));
    set
}

/// Roster look-ups through the server (PEP).
pub struct ServerEnv<'a>(pub &'a Arc<canto_core::Server>);

#[async_trait]
impl Env for ServerEnv<'_> {
    async fn roster_item(&self, owner: &BareJid, contact: &BareJid) -> Option<RosterItem> {
        if !self.0.serves(owner.domain().as_str()) {
            return None;
        }
        self.0.roster(owner).await.get(contact).cloned()
    }
}
