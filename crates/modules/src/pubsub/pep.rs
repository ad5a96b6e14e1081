//! `pep`: Personal Eventing Protocol (XEP-0163, Prosody's mod_pep): a pubsub service on every
//! account's bare JID, run by the engine with PEP's defaults (presence access, one item, the
//! last item on presence), notifications to the owner's and contacts' resources that asked
//! for the node with `+notify` in their entity capabilities (XEP-0115), and to explicit
//! subscribers; private nodes (XEP-0223) are whitelist nodes. Remote contacts (federation)
//! are notified the same way: their presence arriving at the account tells their caps
//! (asked of them with disco#info across federation), kept per (account, contact resource),
//! and notifications go to them through [`Server::send_to_remote`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use canto_core::module::{
    AccountDisco, Addressed, Direction, HookPoint, ModuleConfig, Section, SectionInfo,
    SessionEvent, SessionHook, SubscriptionHook,
};
use canto_core::roster::RosterItem;
use canto_core::{
    Hooked, Identity, IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Origin, Server, Spec,
    StanzaEvent, StanzaHook,
};
use canto_stanza::{
    BareJid, Condition, FullJid, IqType, Jid, StanzaError, StanzaKind, ns, parse_jid,
};
use canto_storage::{ItemQuery, PubsubSubscription};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use super::caps::{Answers, Caps, CapsCache};
use super::config::{AccessModel, NodeConfig, SendLast};
use super::engine::{Affiliation, Ctx, Engine, Event, ServerEnv, delivers, item_element};
use super::{
    Limits, NS_EVENT, NS_OWNER, NS_PUBSUB, event_child, event_message, meta_data, request,
};

/// The module.
pub struct Pep;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0163",
        version: "1.2.2",
        title: "Personal Eventing Protocol",
    },
    Spec {
        id: "XEP-0223",
        version: "1.1.1",
        title: "Persistent Storage of Private Data via PubSub",
    },
    Spec {
        id: "XEP-0172",
        version: "1.1",
        title: "User Nickname",
    },
    Spec {
        id: "XEP-0384",
        version: "0.8.3",
        title: "OMEMO Encryption (PEP storage of device lists and bundles)",
    },
];

/// `[pep]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PepConfig {
    /// Nodes per account.
    pub max_nodes: usize,
    /// The largest `pubsub#max_items` (`max` means this).
    pub max_items: u64,
    /// Largest item payload, bytes serialized.
    pub max_item_bytes: usize,
    /// Explicit subscriptions per node.
    pub max_subscriptions: usize,
    /// Longest node name and item id, bytes.
    pub max_id_bytes: usize,
    /// Entity capabilities hashes remembered (XEP-0115), most recent kept.
    pub caps_cache_size: usize,
    /// Remote contacts' resources whose `+notify` interest is remembered per account (learnt
    /// from their presence over federation), the least recently heard from dropped first.
    pub max_remote_resources: usize,
}

impl Default for PepConfig {
    fn default() -> Self {
        let l = Limits::pep();
        PepConfig {
            max_nodes: l.max_nodes,
            max_items: l.max_items,
            max_item_bytes: l.max_item_bytes,
            max_subscriptions: l.max_subscriptions,
            max_id_bytes: l.max_id_bytes,
            caps_cache_size: 10_000,
            max_remote_resources: 1_000,
        }
    }
}

impl PepConfig {
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

impl ModuleConfig for PepConfig {
    const SECTION: &'static str = "pep";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "Personal eventing (XEP-0163), module pep: a pubsub service on every account\n(OMEMO keys, avatars, bookmarks, nicknames).",
        ),
        (
            "max_nodes",
            "Nodes per account; creating one more is not-allowed (max-nodes-exceeded).",
        ),
        (
            "max_items",
            "The largest pubsub#max_items a node may be configured with (\"max\" means this).",
        ),
        (
            "max_item_bytes",
            "Largest item payload in bytes; larger is not-acceptable (payload-too-big).",
        ),
        (
            "max_subscriptions",
            "Explicit subscriptions per node; beyond, not-allowed (too-many-subscriptions).",
        ),
        (
            "max_id_bytes",
            "Longest node name or item id in bytes; longer is not-acceptable.",
        ),
        (
            "caps_cache_size",
            "Client capability hashes (XEP-0115) remembered for +notify filtering.",
        ),
        (
            "max_remote_resources",
            "Remote contacts' resources whose +notify interest is remembered per account\n(from their presence over federation); beyond, the least recently heard from is forgotten.",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        if self.caps_cache_size == 0 {
            return Err("caps_cache_size must be positive".into());
        }
        if self.max_remote_resources == 0 {
            return Err("max_remote_resources must be positive".into());
        }
        self.limits().validate()
    }
}

/// Which nodes each available resource asked for with `+notify` (XEP-0163 §4.3.3), in memory.
#[derive(Default)]
pub struct Interest {
    by_jid: RwLock<HashMap<FullJid, Entry>>,
}

/// One resource's interest.
#[derive(Default)]
struct Entry {
    nodes: Arc<HashSet<String>>,
    /// The last items were sent (once per available session: XEP-0163 §4.3.1 sends them at
    /// initial presence, not at every caps change).
    primed: bool,
}

impl Interest {
    /// Whether `jid` wants notifications of `node`.
    pub fn wants(&self, jid: &FullJid, node: &str) -> bool {
        self.by_jid
            .read()
            .ok()
            .and_then(|m| m.get(jid).map(|e| e.nodes.contains(node)))
            .unwrap_or(false)
    }

    /// Records `jid`'s interest; true the first time it is one in anything (the last items
    /// are due then).
    fn set(&self, jid: &FullJid, nodes: Arc<HashSet<String>>) -> bool {
        let Ok(mut m) = self.by_jid.write() else {
            return false;
        };
        let e = m.entry(jid.clone()).or_default();
        let prime = !e.primed && !nodes.is_empty();
        e.primed |= prime;
        e.nodes = nodes;
        prime
    }

    fn forget(&self, jid: &FullJid) {
        if let Ok(mut m) = self.by_jid.write() {
            m.remove(jid);
        }
    }
}

/// What remote contacts' resources asked for with `+notify` (XEP-0163 §4.3.3), learnt from
/// their presence arriving over federation, per local account the presence was for: that
/// presence is what lets the account's server know the resource (XEP-0163 §4.3.1), and
/// unavailable from it ends it. At most `max` resources per account, the least recently heard
/// from dropped first, so a remote server cannot grow it without bound.
#[derive(Default)]
struct RemoteInterest {
    by_owner: RwLock<HashMap<BareJid, HashMap<FullJid, RemoteEntry>>>,
    clock: std::sync::atomic::AtomicU64,
}

struct RemoteEntry {
    nodes: Arc<HashSet<String>>,
    /// The last items were sent since the resource became available.
    primed: bool,
    /// When it was last heard from (a counter): the presence whose caps are being resolved,
    /// and the order in which entries are dropped.
    heard: u64,
}

impl RemoteInterest {
    /// `jid` sent `owner` available presence: remembered (with the interest it had, until
    /// its caps are resolved); returns the mark [`RemoteInterest::set`] wants.
    fn heard(&self, owner: &BareJid, jid: &FullJid, max: usize) -> u64 {
        let now = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut m) = self.by_owner.write() else {
            return now;
        };
        let entries = m.entry(owner.clone()).or_default();
        if !entries.contains_key(jid) && entries.len() >= max.max(1) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.heard)
                .map(|(j, _)| j.clone());
            if let Some(o) = oldest {
                entries.remove(&o);
            }
        }
        let e = entries.entry(jid.clone()).or_insert_with(|| RemoteEntry {
            nodes: Arc::default(),
            primed: false,
            heard: now,
        });
        e.heard = now;
        now
    }

    /// Records the interest resolved for the presence marked `heard`; None when the resource
    /// went (or sent newer presence) meanwhile, else whether the last items are due (the first
    /// interest since it became available, XEP-0163 §4.3.1).
    fn set(
        &self,
        owner: &BareJid,
        jid: &FullJid,
        heard: u64,
        nodes: Arc<HashSet<String>>,
    ) -> Option<bool> {
        let mut m = self.by_owner.write().ok()?;
        let e = m.get_mut(owner)?.get_mut(jid)?;
        if e.heard != heard {
            return None;
        }
        let prime = !e.primed && !nodes.is_empty();
        e.primed |= prime;
        e.nodes = nodes;
        Some(prime)
    }

    /// The remembered resources of `owner`'s remote contacts that want `node`.
    fn wanting(&self, owner: &BareJid, node: &str) -> Vec<FullJid> {
        self.by_owner
            .read()
            .ok()
            .and_then(|m| {
                m.get(owner).map(|entries| {
                    entries
                        .iter()
                        .filter(|(_, e)| e.nodes.contains(node))
                        .map(|(j, _)| j.clone())
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The remembered resources of `contact` (a remote account) that want `node`.
    fn of_contact(&self, owner: &BareJid, contact: &BareJid, node: &str) -> Vec<FullJid> {
        let mut v = self.wanting(owner, node);
        v.retain(|j| j.to_bare() == *contact);
        v
    }

    fn forget(&self, owner: &BareJid, jid: &FullJid) {
        if let Ok(mut m) = self.by_owner.write()
            && let Some(entries) = m.get_mut(owner)
        {
            entries.remove(jid);
            if entries.is_empty() {
                m.remove(owner);
            }
        }
    }

    /// Forgets every resource of `contact` (it has none available).
    fn forget_contact(&self, owner: &BareJid, contact: &BareJid) {
        if let Ok(mut m) = self.by_owner.write()
            && let Some(entries) = m.get_mut(owner)
        {
            entries.retain(|j, _| j.to_bare() != *contact);
            if entries.is_empty() {
                m.remove(owner);
            }
        }
    }

    fn forget_owner(&self, owner: &BareJid) {
        if let Ok(mut m) = self.by_owner.write() {
            m.remove(owner);
        }
    }
}

/// Everything the module's hooks share.
pub struct PepState {
    engine: Engine,
    config: Section<PepConfig>,
    interest: Interest,
    remote: RemoteInterest,
    caps: Arc<CapsCache>,
    defaults: NodeConfig,
    listeners: RwLock<Vec<Arc<dyn PepListener>>>,
}

/// Told of changes clients make to an account's PEP nodes (not of those modules make through
/// [`as_owner`]): conversions (XEP-0398 avatars, XEP-0402 bookmarks, XEP-0292 vCards) follow
/// them.
#[async_trait]
pub trait PepListener: Send + Sync {
    /// A node of `owner` changed as `event` says.
    async fn changed(&self, server: &Arc<Server>, owner: &BareJid, event: &Event);
}

impl PepState {
    /// Adds a listener (at load, by a module that depends on pep).
    pub fn listen(&self, listener: Arc<dyn PepListener>) {
        if let Ok(mut l) = self.listeners.write() {
            l.push(listener);
        }
    }
}

impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![PepConfig::info()]
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        let config = ctx.section::<PepConfig>()?;
        let caps = Arc::new(CapsCache::new(config.get().caps_cache_size));
        let state = Arc::new(PepState {
            engine: Engine::new(ctx.open_pubsub("pep")?),
            config,
            interest: Interest::default(),
            remote: RemoteInterest::default(),
            caps: caps.clone(),
            defaults: NodeConfig::pep(),
            listeners: RwLock::default(),
        });
        // XEP-0163 §6.1: an account is a PEP service: identity pubsub/pep, the pubsub
        // features (§9 of XEP-0060) on the account's disco#info.
        ctx.add_account_identity(Identity {
            category: "pubsub",
            kind: "pep",
            name: String::new(),
        });
        ctx.add_account_feature(NS_PUBSUB);
        for f in super::FEATURES {
            if *f != "access-authorize" {
                ctx.add_account_feature(&format!("{NS_PUBSUB}#{f}"));
            }
        }
        for (kind, namespace) in [
            (IqType::Get, NS_PUBSUB),
            (IqType::Set, NS_PUBSUB),
            (IqType::Get, NS_OWNER),
            (IqType::Set, NS_OWNER),
        ] {
            ctx.hook_iq(IqTarget::Account, kind, namespace, state.clone())?;
        }
        ctx.hook_stanza(
            HookPoint {
                kind: StanzaKind::Presence,
                to: Addressed::Bare,
                direction: Direction::Out,
            },
            0,
            Arc::new(PresenceWatch(state.clone())),
        );
        // Remote contacts' presence, arriving over federation at the account (to its bare
        // JID, as broadcasts and probe answers are; or to one of its resources).
        for to in [Addressed::Bare, Addressed::Full] {
            ctx.hook_stanza(
                HookPoint {
                    kind: StanzaKind::Presence,
                    to,
                    direction: Direction::In,
                },
                0,
                Arc::new(RemotePresenceWatch(state.clone())),
            );
        }
        // Clients answer the caps queries to the host.
        ctx.hook_stanza(
            HookPoint {
                kind: StanzaKind::Iq,
                to: Addressed::Host,
                direction: Direction::In,
            },
            100,
            Arc::new(Answers(caps)),
        );
        ctx.hook_session(0, Arc::new(Forget(state.clone())));
        ctx.hook_subscription(Arc::new(NewSubscriber(state.clone())));
        ctx.add_account_disco(Arc::new(PepDisco(state.clone())));
        // Bookmarks and avatar conversion publish through it.
        ctx.provide(state);
        Ok(())
    }
}

#[async_trait]
impl IqHandler for PepState {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        let owner = req.to.to_bare();
        if owner.node().is_none() {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        let limits = self.config.get().limits().engine();
        let set = IqType::of(req.stanza) == Some(IqType::Set);
        let parsed = request::parse(set, req.payload, limits.parse)?;
        let is_owner = req.from.to_bare() == owner;
        let env = ServerEnv(req.server);
        let service = owner.to_string();
        let ctx = Ctx {
            env: &env,
            service: &service,
            pep_owner: Some(&owner),
            from: req.from,
            admin: is_owner,
            may_create: is_owner,
            limits,
            defaults: &self.defaults,
        };
        let outcome = self.engine.handle(&ctx, parsed).await?;
        // Notifications go out before the result, as Prosody's do.
        for ev in &outcome.events {
            self.notify(req.server, &owner, ev.clone()).await;
        }
        if is_owner {
            let listeners: Vec<Arc<dyn PepListener>> =
                self.listeners.read().map(|l| l.clone()).unwrap_or_default();
            for ev in &outcome.events {
                for l in &listeners {
                    l.changed(req.server, &owner, ev).await;
                }
            }
        }
        Ok(outcome.reply)
    }
}

/// Whether a contact, by the owner's roster item for it and its affiliation, may see a node
/// (XEP-0060 §4.5 as PEP applies it: presence and roster follow the owner's roster).
fn contact_allowed(config: &NodeConfig, item: Option<&RosterItem>, aff: Affiliation) -> bool {
    match aff {
        Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => return true,
        Affiliation::Outcast => return false,
        _ => {}
    }
    match config.access_model {
        AccessModel::Open => true,
        AccessModel::Presence => item.is_some_and(|i| i.subscription.has_from()),
        AccessModel::Roster => item.is_some_and(|i| {
            i.groups
                .iter()
                .any(|g| config.roster_groups_allowed.contains(g))
        }),
        AccessModel::Whitelist | AccessModel::Authorize => false,
    }
}

impl PepState {
    /// One entity's affiliations across a service's nodes, by node: an affiliation is with
    /// one node (XEP-0060 §4.1), so a member of one private node is no member of another.
    fn affiliations_by_node(list: &[(String, String, String)]) -> HashMap<String, Affiliation> {
        list.iter()
            .filter_map(|(n, _, a)| Affiliation::parse(a).map(|a| (n.clone(), a)))
            .collect()
    }

    fn affiliations_of(list: &[(String, String, String)]) -> HashMap<String, Affiliation> {
        list.iter()
            .filter_map(|(_, j, a)| Affiliation::parse(a).map(|a| (j.clone(), a)))
            .collect()
    }

    /// Sends an event of `owner`'s node to everyone entitled: the owner's and contacts'
    /// resources interested in the node (`+notify`), and explicit subscribers; never to
    /// anyone blocked either way (XEP-0191).
    async fn notify(&self, server: &Arc<Server>, owner: &BareJid, ev: Event) {
        if let Event::Subscribed {
            node,
            config,
            jid,
            state,
            ..
        } = &ev
        {
            // XEP-0060 §6.1.7: the last item to a new subscriber.
            if state == "subscribed" && config.send_last_published_item != SendLast::Never {
                self.send_last_to(server, owner, node, config, &jid_targets(server, jid))
                    .await;
            }
            return;
        }
        let Some((node, child)) = event_child(&ev) else {
            return;
        };
        let (config, explicit, before) = match &ev {
            // XEP-0060 §8.4.2: the subscribers, entitled by the affiliations the node had.
            Event::Deleted {
                config,
                subscribers,
                affiliations,
                ..
            } => (
                config.clone(),
                subscribers.clone(),
                Some(affiliations.as_slice()),
            ),
            Event::Published { config, .. }
            | Event::Retracted { config, .. }
            | Event::Purged { config, .. }
            | Event::Configured { config, .. } => (
                config.clone(),
                self.engine
                    .store()
                    .subscriptions(&owner.to_string(), Some(&node), None)
                    .await
                    .unwrap_or_default(),
                None,
            ),
            Event::Subscribed { .. } => return,
        };
        let targets = self
            .recipients(server, owner, &node, &config, &explicit, before)
            .await;
        // XEP-0163 §4.3: headline notifications from the account's bare JID; one message
        // built, each copy readdressed.
        let template = event_message(&owner.to_string(), "", "headline", child);
        for to in targets {
            let mut msg = template.clone();
            msg.set_attr("to", to.to_string());
            msg.set_attr("id", super::engine::new_id());
            deliver(server, &to, msg);
        }
    }

    /// The resources a notification of `node` goes to (local ones, and remote contacts'
    /// that told this server their interest); `affiliations` are the node's
    /// when the store no longer has them (a deleted node), else they are read.
    async fn recipients(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        node: &str,
        config: &NodeConfig,
        explicit: &[PubsubSubscription],
        affiliations: Option<&[(String, String, String)]>,
    ) -> Vec<Jid> {
        let service = owner.to_string();
        let affs = if let Some(list) = affiliations {
            Self::affiliations_of(list)
        } else if config.access_model == AccessModel::Whitelist || !explicit.is_empty() {
            Self::affiliations_of(
                &self
                    .engine
                    .store()
                    .affiliations(&service, Some(node), None)
                    .await
                    .unwrap_or_default(),
            )
        } else {
            HashMap::new()
        };
        let aff_of = |b: &BareJid| {
            affs.get(&b.to_string())
                .copied()
                .unwrap_or(Affiliation::None)
        };
        let mut out: Vec<Jid> = Vec::new();
        let mut seen: HashSet<Jid> = HashSet::new();
        let mut add = |j: Jid| {
            if seen.insert(j.clone()) {
                out.push(j);
            }
        };
        // The owner's own interested resources.
        for (full, _) in server.available_resources(owner) {
            if wants(server, &self.interest, &full, node) {
                add(Jid::from(full));
            }
        }
        // Contacts allowed to see the owner's presence (XEP-0163 §4.3.2: implicit
        // subscriptions follow the roster), their interested resources.
        let roster = server.roster(owner).await;
        for (contact, item) in roster.iter() {
            if !item.subscription.has_from()
                || !server.serves(contact.domain().as_str())
                || !contact_allowed(config, Some(item), aff_of(contact))
            {
                continue;
            }
            for (full, _) in server.available_resources(contact) {
                if wants(server, &self.interest, &full, node) {
                    add(Jid::from(full));
                }
            }
        }
        // Remote contacts (XEP-0163 §4.3.2 across servers): their resources whose presence
        // reached the owner over federation with caps asking for the node, entitled as local
        // contacts are.
        for full in self.remote.wanting(owner, node) {
            let bare = full.to_bare();
            let entitled = roster.get(&bare).is_some_and(|item| {
                item.subscription.has_from() && contact_allowed(config, Some(item), aff_of(&bare))
            });
            if entitled {
                add(Jid::from(full));
            }
        }
        // Explicit subscribers (XEP-0060 §6.1), still entitled.
        for sub in explicit.iter().filter(|s| delivers(s)) {
            let Ok(jid) = parse_jid(&sub.jid) else {
                continue;
            };
            let bare = jid.to_bare();
            if bare != *owner && !contact_allowed(config, roster.get(&bare), aff_of(&bare)) {
                continue;
            }
            for to in jid_targets(server, &jid) {
                add(to);
            }
        }
        unblocked(server, owner, out).await
    }

    /// The newest item of `owner`'s `node` to each of `targets` (XEP-0060 §6.1.7, XEP-0163
    /// §4.3.1), if the node has one.
    async fn send_last_to(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        node: &str,
        config: &NodeConfig,
        targets: &[Jid],
    ) {
        if targets.is_empty() || !config.persist_items {
            return;
        }
        let service = owner.to_string();
        let Ok(items) = self
            .engine
            .store()
            .items(
                &service,
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
        let Some(item) = items.first() else {
            return;
        };
        let item_el = item_element(
            NS_EVENT,
            item,
            config,
            Some(&service),
            config.deliver_payloads,
        );
        let child = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(item_el);
        let owner_jid = Jid::from(owner.clone());
        for to in targets {
            let bare = to.to_bare();
            if bare != *owner
                && (server.blocks(owner, to).await || server.blocks(&bare, &owner_jid).await)
            {
                continue;
            }
            let mut msg = event_message(&service, &to.to_string(), "headline", child.clone());
            // XEP-0163 §4.3.4: a last item is old news; XEP-0203 says when it was published.
            msg.push_child(delay(&service, item.stamp_ms));
            deliver(server, to, msg);
        }
    }

    /// A resource said what it wants (`new`): it gets the last item of each of those nodes, from
    /// its own account and from every contact whose presence it may see (XEP-0163 §4.3.1,
    /// `on_sub_and_presence`).
    async fn interest_changed(&self, server: &Arc<Server>, full: &FullJid, new: &HashSet<String>) {
        if new.is_empty() {
            return;
        }
        let user = full.to_bare();
        let mut services = vec![(user.clone(), None)];
        let roster = server.roster(&user).await;
        for (contact, item) in roster.iter() {
            if item.subscription.has_to() && server.serves(contact.domain().as_str()) {
                services.push((contact.clone(), Some(())));
            }
        }
        for (owner, is_contact) in services {
            let Ok(nodes) = self.engine.store().nodes(&owner.to_string()).await else {
                continue;
            };
            let mut entitlement: Option<(Option<RosterItem>, HashMap<String, Affiliation>)> = None;
            for (node, raw) in nodes {
                if !new.contains(&node) {
                    continue;
                }
                let config = NodeConfig::decode(&raw, &self.defaults)
                    .unwrap_or_else(|| self.defaults.clone());
                if config.send_last_published_item != SendLast::OnSubAndPresence {
                    continue;
                }
                if is_contact.is_some() {
                    if entitlement.is_none() {
                        let item = server.roster(&owner).await.get(&user).cloned();
                        let affs = Self::affiliations_by_node(
                            &self
                                .engine
                                .store()
                                .affiliations(&owner.to_string(), None, Some(&user.to_string()))
                                .await
                                .unwrap_or_default(),
                        );
                        entitlement = Some((item, affs));
                    }
                    let Some((item, affs)) = &entitlement else {
                        continue;
                    };
                    let aff = affs.get(&node).copied().unwrap_or(Affiliation::None);
                    if !item.as_ref().is_some_and(|i| i.subscription.has_from())
                        || !contact_allowed(&config, item.as_ref(), aff)
                    {
                        continue;
                    }
                }
                let to = [Jid::from(full.clone())];
                self.send_last_to(server, &owner, &node, &config, &to).await;
            }
        }
    }
}

impl PepState {
    /// A remote contact's resource told this server what it wants (`new`, from the caps in
    /// its presence): it gets the last item of each of those nodes of `owner`'s that it may
    /// see (XEP-0163 §4.3.1: the account owner's server sends them on receiving presence from
    /// a subscribed contact).
    async fn remote_interest_changed(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        full: &FullJid,
        new: &HashSet<String>,
    ) {
        if new.is_empty() {
            return;
        }
        let contact = full.to_bare();
        let item = server.roster(owner).await.get(&contact).cloned();
        if !item.as_ref().is_some_and(|i| i.subscription.has_from()) {
            return;
        }
        let service = owner.to_string();
        let Ok(nodes) = self.engine.store().nodes(&service).await else {
            return;
        };
        let mut affs: Option<HashMap<String, Affiliation>> = None;
        for (node, raw) in nodes {
            if !new.contains(&node) {
                continue;
            }
            let config =
                NodeConfig::decode(&raw, &self.defaults).unwrap_or_else(|| self.defaults.clone());
            if config.send_last_published_item != SendLast::OnSubAndPresence {
                continue;
            }
            if affs.is_none() {
                affs = Some(Self::affiliations_by_node(
                    &self
                        .engine
                        .store()
                        .affiliations(&service, None, Some(&contact.to_string()))
                        .await
                        .unwrap_or_default(),
                ));
            }
            let aff = affs
                .as_ref()
                .and_then(|a| a.get(&node).copied())
                .unwrap_or(Affiliation::None);
            if contact_allowed(&config, item.as_ref(), aff) {
                let to = [Jid::from(full.clone())];
                self.send_last_to(server, owner, &node, &config, &to).await;
            }
        }
    }
}

/// Sends a notification to a local session (a full JID, as [`jid_targets`] gives them), or
/// to a remote JID over federation (the caller has applied the access and blocking rules).
fn deliver(server: &Arc<Server>, to: &Jid, msg: Element) {
    if server.serves(to.domain().as_str()) {
        if let Ok(full) = to.clone().try_into_full() {
            server.deliver_to_session(&full, Arc::new(msg));
        }
    } else {
        server.send_to_remote(msg);
    }
}

/// XEP-0191 §3.2: `targets` less those the owner blocked (by bare or full JID) and those whose
/// account blocked the owner; the owner's own resources always stay. Each blocklist is read
/// once (both are cached for online users); one that cannot be read keeps its side out (XEP-0191
/// fails closed).
async fn unblocked(server: &Arc<Server>, owner: &BareJid, targets: Vec<Jid>) -> Vec<Jid> {
    let mine = server.try_blocklist(owner).await.ok();
    let owner_jid = Jid::from(owner.clone());
    let mut theirs: HashMap<BareJid, bool> = HashMap::new();
    let mut allowed = Vec::with_capacity(targets.len());
    for full in targets {
        let bare = full.to_bare();
        if bare == *owner {
            allowed.push(full);
            continue;
        }
        let Some(mine) = &mine else { continue };
        if canto_core::blocking::matches(mine, &full) {
            continue;
        }
        let blocks_owner = match theirs.get(&bare) {
            Some(b) => *b,
            None => {
                let b = server.blocks(&bare, &owner_jid).await;
                theirs.insert(bare, b);
                b
            }
        };
        if !blocks_owner {
            allowed.push(full);
        }
    }
    allowed
}

/// XEP-0203 `<delay/>` for an item published at `stamp_ms` by `from`.
pub fn delay(from: &str, stamp_ms: i64) -> Element {
    Element::new("delay", ns::DELAY)
        .with_attr("from", from)
        .with_attr("stamp", canto_stanza::datetime::from_millis_exact(stamp_ms))
}

/// Where a notification to a subscribed JID goes. A local JID stands for local resources:
/// itself if it is a bound full JID; for a bare JID, its available resources of non-negative
/// priority (RFC 6121 §8.5.2.1.1 for headlines). A remote JID (an explicit subscriber at
/// another server, XEP-0060 §6.1) is itself: its server delivers it (RFC 6121 §8.5.2, §8.5.3).
fn jid_targets(server: &Arc<Server>, jid: &Jid) -> Vec<Jid> {
    let domain = jid.domain().as_str();
    if !server.serves(domain) {
        if server.modules().service(domain).is_some() {
            return Vec::new();
        }
        return vec![jid.clone()];
    }
    match jid.clone().try_into_full() {
        Ok(full) => server
            .available_resources(&full.to_bare())
            .into_iter()
            .filter(|(f, _)| *f == full)
            .map(|(f, _)| Jid::from(f))
            .collect(),
        Err(bare) => server
            .available_resources(&bare)
            .into_iter()
            .filter(|(_, p)| *p >= 0)
            .map(|(f, _)| Jid::from(f))
            .collect(),
    }
}

/// The session fact (`SessionHandle::set_ext`) holding a resource's `+notify` nodes, one per
/// line, for other cluster nodes.
const NOTIFY_EXT: &str = "pep+notify";

/// Whether the available resource `full` wants notifications of `node` (XEP-0163 §4.3.3):
/// learnt from its caps on its own node; a session bound on another cluster node carries
/// what its node learnt in a session fact.
fn wants(server: &Server, interest: &Interest, full: &FullJid, node: &str) -> bool {
    if interest.wants(full, node) {
        return true;
    }
    server
        .remote_session_fact(full, NOTIFY_EXT)
        .is_some_and(|v| v.lines().any(|l| l == node))
}

/// Watches the user's broadcast presence: its caps decide the resource's `+notify` interest.
struct PresenceWatch(Arc<PepState>);

#[async_trait]
impl StanzaHook for PresenceWatch {
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked {
        let Origin::Session(session) = ev.origin else {
            return Hooked::Pass;
        };
        // Broadcast presence only (no `to`); directed presence says nothing of interest.
        if ev.stanza.attr("to").is_some() {
            return Hooked::Pass;
        }
        let full = session.jid().clone();
        match ev.stanza.attr("type") {
            None => {
                let caps = Caps::of(ev.stanza);
                let state = self.0.clone();
                let server = ev.server.clone();
                tokio::spawn(async move {
                    // XEP-0163 §4.3.3: presence without caps means no interest (as Prosody).
                    let features = match &caps {
                        Some(c) => {
                            let host = full.domain().as_str();
                            state.caps.resolve(&server, host, &full, c).await
                        }
                        None => Arc::default(),
                    };
                    let nodes: HashSet<String> = features
                        .iter()
                        .filter_map(|f| f.strip_suffix("+notify").map(str::to_string))
                        .collect();
                    // The session may have gone while the caps were fetched.
                    if !server
                        .available_resources(&full.to_bare())
                        .iter()
                        .any(|(f, _)| *f == full)
                    {
                        state.interest.forget(&full);
                        return;
                    }
                    // XEP-0163 §4.3.1: the last items once, when the resource first says
                    // what it wants (its initial presence, or the first with caps); later caps
                    // changes only change what it is notified of, so presence churn costs no
                    // store reads.
                    // Cluster mode: the other nodes read it from their mirror of the session.
                    let mut list: Vec<&str> = nodes.iter().map(String::as_str).collect();
                    list.sort_unstable();
                    server.set_session_fact(&full, NOTIFY_EXT, Some(list.join("\n")));
                    if state.interest.set(&full, Arc::new(nodes.clone())) {
                        state.interest_changed(&server, &full, &nodes).await;
                    }
                });
            }
            Some("unavailable") => self.0.interest.forget(&full),
            _ => {}
        }
        Hooked::Pass
    }
}

/// Watches remote contacts' presence arriving over federation at an account: as for the
/// user's own sessions, the caps in it (XEP-0115, resolved by a disco#info query from the
/// account's domain to the contact's resource, across federation) decide the resource's
/// `+notify` interest (XEP-0163 §4.3.3), its first interest brings the last items (§4.3.1),
/// and unavailable ends it. Kept per (account, contact resource); only for contacts in the
/// account's roster — one the account is subscribed to may be approved as a subscriber later
/// (§4.3.1: the last items then) — never for a stranger's directed presence (no query to it,
/// nothing kept). Whether a resource gets a notification is decided when it is sent
/// (presence subscription, access model, blocking).
struct RemotePresenceWatch(Arc<PepState>);

#[async_trait]
impl StanzaHook for RemotePresenceWatch {
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked {
        let Origin::Remote { from, .. } = ev.origin else {
            return Hooked::Pass;
        };
        let owner = ev.to.to_bare();
        let full = match from.clone().try_into_full() {
            Ok(f) => f,
            // Unavailable from the bare JID (the answer to a probe, RFC 6121 §4.3.2): the
            // contact has no available resource.
            Err(bare) => {
                if ev.stanza.attr("type") == Some("unavailable") {
                    self.0.remote.forget_contact(&owner, &bare);
                }
                return Hooked::Pass;
            }
        };
        match ev.stanza.attr("type") {
            None => {
                if !ev.server.roster(&owner).await.contains_key(&full.to_bare()) {
                    self.0.remote.forget(&owner, &full);
                    return Hooked::Pass;
                }
                let max = self.0.config.get().max_remote_resources;
                let heard = self.0.remote.heard(&owner, &full, max);
                let caps = Caps::of(ev.stanza);
                let state = self.0.clone();
                let server = ev.server.clone();
                tokio::spawn(async move {
                    // XEP-0163 §4.3.3: presence without caps means no interest.
                    let features = match &caps {
                        Some(c) => {
                            let host = owner.domain().as_str();
                            state.caps.resolve(&server, host, &full, c).await
                        }
                        None => Arc::default(),
                    };
                    let nodes: HashSet<String> = features
                        .iter()
                        .filter_map(|f| f.strip_suffix("+notify").map(str::to_string))
                        .collect();
                    // None: the resource went, or sent newer presence, while the caps were
                    // fetched.
                    if state
                        .remote
                        .set(&owner, &full, heard, Arc::new(nodes.clone()))
                        == Some(true)
                    {
                        state
                            .remote_interest_changed(&server, &owner, &full, &nodes)
                            .await;
                    }
                });
            }
            Some("unavailable") => self.0.remote.forget(&owner, &full),
            _ => {}
        }
        Hooked::Pass
    }
}

/// Forgets a resource's interest when it stops being available.
struct Forget(Arc<PepState>);

#[async_trait]
impl SessionHook for Forget {
    async fn on_session(&self, _server: &Arc<Server>, session: &FullJid, event: SessionEvent<'_>) {
        if matches!(
            event,
            SessionEvent::Unavailable { .. } | SessionEvent::Destroyed
        ) {
            self.0.interest.forget(session);
        }
    }
}

/// A new presence subscriber gets the last items its resources are interested in (XEP-0163
/// §4.3.1).
struct NewSubscriber(Arc<PepState>);

#[async_trait]
impl SubscriptionHook for NewSubscriber {
    async fn subscribed(&self, server: &Arc<Server>, user: &BareJid, contact: &BareJid) {
        let state = &self.0;
        let Ok(nodes) = state.engine.store().nodes(&user.to_string()).await else {
            return;
        };
        if nodes.is_empty() {
            return;
        }
        let roster = server.roster(user).await;
        let item = roster.get(contact);
        // By node (XEP-0060 §4.1): membership of one node is not of the others.
        let affs = PepState::affiliations_by_node(
            &state
                .engine
                .store()
                .affiliations(&user.to_string(), None, Some(&contact.to_string()))
                .await
                .unwrap_or_default(),
        );
        let resources: Vec<FullJid> = server
            .available_resources(contact)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        for (node, raw) in nodes {
            let config =
                NodeConfig::decode(&raw, &state.defaults).unwrap_or_else(|| state.defaults.clone());
            let aff = affs.get(&node).copied().unwrap_or(Affiliation::None);
            if config.send_last_published_item == SendLast::Never
                || !contact_allowed(&config, item, aff)
            {
                continue;
            }
            let mut targets: Vec<Jid> = resources
                .iter()
                .filter(|f| state.interest.wants(f, &node))
                .map(|f| Jid::from(f.clone()))
                .collect();
            // A remote contact's resources whose interest this server knows (their presence
            // came before the approval: the user is subscribed to them).
            targets.extend(
                state
                    .remote
                    .of_contact(user, contact, &node)
                    .into_iter()
                    .map(Jid::from),
            );
            state
                .send_last_to(server, user, &node, &config, &targets)
                .await;
        }
    }

    /// XEP-0163 §7.1: when a presence subscription or a roster item changes, access is
    /// re-calculated and the contact's explicit subscriptions it no longer has access for
    /// are cancelled.
    /// The account's own PEP service went with its stores; its subscriptions to and
    /// memberships of other accounts' nodes go now.
    async fn account_deleted(&self, _server: &Arc<Server>, user: &BareJid) {
        // The storage removed the account's PEP service with its stores.
        self.0.engine.forget_service(&user.to_string());
        self.0.remote.forget_owner(user);
        let _ = self.0.engine.store().forget_jid(&user.to_string()).await;
    }

    async fn roster_changed(&self, server: &Arc<Server>, user: &BareJid, contact: &BareJid) {
        let state = &self.0;
        let store = state.engine.store();
        let service = user.to_string();
        let Ok(subs) = store.subscriptions(&service, None, None).await else {
            return;
        };
        let theirs: Vec<PubsubSubscription> = subs
            .into_iter()
            .filter(|s| parse_jid(&s.jid).is_ok_and(|j| j.to_bare() == *contact))
            .collect();
        if theirs.is_empty() {
            return;
        }
        let item = server.roster(user).await.get(contact).cloned();
        for sub in theirs {
            let Ok(Some(config)) = state
                .engine
                .config(&service, &sub.node, &state.defaults)
                .await
            else {
                continue;
            };
            let aff = store
                .affiliations(&service, Some(&sub.node), Some(&contact.to_string()))
                .await
                .unwrap_or_default()
                .first()
                .and_then(|(_, _, a)| Affiliation::parse(a))
                .unwrap_or(Affiliation::None);
            if !contact_allowed(&config, item.as_ref(), aff) {
                let _ = store
                    .remove_subscription(&service, &sub.node, &sub.jid, None)
                    .await;
            }
        }
    }
}

/// XEP-0163 §6.2 / XEP-0030 on an account: its nodes as disco items, a node's meta-data.
struct PepDisco(Arc<PepState>);

impl PepDisco {
    /// A node's configuration if `from` may see it (hidden otherwise: XEP-0223 private data
    /// does not show).
    async fn visible(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &BareJid,
        node: &str,
    ) -> Option<NodeConfig> {
        let state = &self.0;
        let config = state
            .engine
            .config(&account.to_string(), node, &state.defaults)
            .await
            .ok()??;
        let who = from.to_bare();
        if who == *account {
            return Some(config);
        }
        let item = server.roster(account).await.get(&who).cloned();
        let affs = PepState::affiliations_of(
            &state
                .engine
                .store()
                .affiliations(&account.to_string(), Some(node), Some(&who.to_string()))
                .await
                .unwrap_or_default(),
        );
        let aff = affs
            .get(&who.to_string())
            .copied()
            .unwrap_or(Affiliation::None);
        contact_allowed(&config, item.as_ref(), aff).then_some(config)
    }
}

#[async_trait]
impl AccountDisco for PepDisco {
    async fn items(&self, server: &Arc<Server>, from: &Jid, account: &BareJid) -> Vec<Element> {
        let Ok(nodes) = self.0.engine.store().nodes(&account.to_string()).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (node, _) in nodes {
            if let Some(config) = self.visible(server, from, account, &node).await {
                let mut item = Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", account.to_string())
                    .with_attr("node", &node);
                if !config.title.is_empty() {
                    item.set_attr("name", &config.title);
                }
                out.push(item);
            }
        }
        out
    }

    async fn node_info(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &BareJid,
        node: &str,
    ) -> Option<Result<Vec<Element>, StanzaError>> {
        let Some(config) = self.visible(server, from, account, node).await else {
            return Some(Err(StanzaError::new(Condition::ItemNotFound)));
        };
        // XEP-0060 §5.3, §5.4: a leaf node, and its meta-data.
        Some(Ok(vec![
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "pubsub")
                .with_attr("type", "leaf"),
            Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
            meta_data(&config, &[account.to_string()]),
        ]))
    }

    async fn node_items(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &BareJid,
        node: &str,
    ) -> Option<Result<Vec<Element>, StanzaError>> {
        if self.visible(server, from, account, node).await.is_none() {
            return Some(Err(StanzaError::new(Condition::ItemNotFound)));
        }
        let items = self
            .0
            .engine
            .store()
            .items(&account.to_string(), node, &ItemQuery::default())
            .await
            .unwrap_or_default();
        // XEP-0060 §5.5: one item per published item, named by its id.
        Some(Ok(items
            .iter()
            .map(|i| {
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", account.to_string())
                    .with_attr("name", &i.id)
            })
            .collect()))
    }
}

/// Runs `request` on `owner`'s PEP service as the owner would (bookmarks, avatars and vCards
/// converted by other modules), notifications included; listeners are not told (the module
/// calling it made the change). A publish to a missing node creates it with `fields` applied
/// to PEP's defaults.
pub async fn as_owner(
    state: &PepState,
    server: &Arc<Server>,
    owner: &BareJid,
    request: request::Request,
    fields: &[(String, Vec<String>)],
) -> Result<Option<Element>, StanzaError> {
    let limits = state.config.get().limits().engine();
    let env = ServerEnv(server);
    let service = owner.to_string();
    let from = Jid::from(owner.clone());
    let mut defaults = state.defaults.clone();
    defaults.apply(fields, limits.max_items)?;
    let ctx = Ctx {
        env: &env,
        service: &service,
        pep_owner: Some(owner),
        from: &from,
        admin: true,
        may_create: true,
        limits,
        defaults: &defaults,
    };
    let outcome = state.engine.handle(&ctx, request).await?;
    for ev in outcome.events {
        state.notify(server, owner, ev).await;
    }
    Ok(outcome.reply)
}

/// Publishes one item as the owner (see [`as_owner`]).
pub async fn publish_as_owner(
    state: &PepState,
    server: &Arc<Server>,
    owner: &BareJid,
    node: &str,
    id: &str,
    payload: Element,
    fields: &[(String, Vec<String>)],
) -> Result<(), StanzaError> {
    as_owner(
        state,
        server,
        owner,
        request::Request::Publish {
            node: node.to_string(),
            item: Some(request::PublishItem {
                id: Some(id.to_string()),
                payload: Some(payload),
            }),
            options: None,
        },
        fields,
    )
    .await
    .map(|_| ())
}

/// Whether the account has the node.
pub async fn has_node(state: &PepState, owner: &BareJid, node: &str) -> bool {
    matches!(
        state.engine.store().node(&owner.to_string(), node).await,
        Ok(Some(_))
    )
}

/// Every item of an account's node, oldest first, with its id (for conversions); empty when
/// the node does not exist.
pub async fn all_items(state: &PepState, owner: &BareJid, node: &str) -> Vec<(String, Element)> {
    state
        .engine
        .store()
        .items(
            &owner.to_string(),
            node,
            &ItemQuery {
                oldest_first: true,
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| canto_core::roster::decode_element(&i.payload).map(|p| (i.id, p)))
        .collect()
}

/// Sends `child` (an `<event/>` child) about `node` to the owner's own resources that asked for
/// it with `+notify` (a compatibility view such as XEP-0048's `storage:bookmarks`).
pub fn notify_own_resources(
    state: &PepState,
    server: &Arc<Server>,
    owner: &BareJid,
    node: &str,
    child: &Element,
) {
    let from = owner.to_string();
    for (full, _) in server.available_resources(owner) {
        if state.interest.wants(&full, node) {
            let msg = event_message(&from, &full.to_string(), "headline", child.clone());
            server.deliver_to_session(&full, Arc::new(msg));
        }
    }
}

/// The newest item of `owner`'s `node` as `from` may read it (XEP-0060 §6.5 with the node's
/// access model): its payload, `Ok(None)` for a node without items, item-not-found for no node,
/// the access model's error for a requester it keeps out.
pub async fn read_as(
    state: &PepState,
    server: &Arc<Server>,
    owner: &BareJid,
    from: &Jid,
    node: &str,
) -> Result<Option<Element>, StanzaError> {
    let limits = state.config.get().limits().engine();
    let env = ServerEnv(server);
    let service = owner.to_string();
    let is_owner = from.to_bare() == *owner;
    let ctx = Ctx {
        env: &env,
        service: &service,
        pep_owner: Some(owner),
        from,
        admin: is_owner,
        may_create: false,
        limits,
        defaults: &state.defaults,
    };
    let outcome = state
        .engine
        .handle(
            &ctx,
            request::Request::Items {
                node: node.to_string(),
                max_items: Some(1),
                ids: Vec::new(),
                rsm: None,
            },
        )
        .await?;
    Ok(outcome
        .reply
        .as_ref()
        .and_then(|r| r.get_child("items", NS_PUBSUB))
        .and_then(|i| i.children().last())
        .and_then(|item| item.children().next().cloned()))
}

/// The newest item's payload of an account's node, if any (for conversions).
pub async fn latest(state: &PepState, owner: &BareJid, node: &str) -> Option<(String, Element)> {
    let items = state
        .engine
        .store()
        .items(
            &owner.to_string(),
            node,
            &ItemQuery {
                limit: Some(1),
                ..ItemQuery::default()
            },
        )
        .await
        .ok()?;
    let item = items.into_iter().next()?;
    let payload = canto_core::roster::decode_element(&item.payload)?;
    Some((item.id, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> FullJid {
        FullJid::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bare(s: &str) -> BareJid {
        BareJid::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn nodes(n: &[&str]) -> Arc<HashSet<String>> {
        Arc::new(n.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn remote_interest_is_bounded_per_account_least_recently_heard_out() {
        let r = RemoteInterest::default();
        let (alice, carol) = (bare("alice@a.test"), bare("carol@a.test"));
        let (b1, b2, b3) = (
            full("bob@b.test/1"),
            full("bob@b.test/2"),
            full("bob@b.test/3"),
        );
        for j in [&b1, &b2] {
            let h = r.heard(&alice, j, 2);
            assert_eq!(r.set(&alice, j, h, nodes(&["tune"])), Some(true));
        }
        // b1 is heard from again: b2 is now the least recent, and goes for b3.
        let h = r.heard(&alice, &b1, 2);
        // Already primed: no last items again for a presence update.
        assert_eq!(r.set(&alice, &b1, h, nodes(&["tune"])), Some(false));
        let h = r.heard(&alice, &b3, 2);
        assert_eq!(r.set(&alice, &b3, h, nodes(&["tune"])), Some(true));
        let mut got = r.wanting(&alice, "tune");
        got.sort_by_key(|j| j.to_string());
        assert_eq!(got, vec![b1.clone(), b3.clone()]);
        // Per account: carol's are counted apart.
        let h = r.heard(&carol, &b2, 2);
        assert_eq!(r.set(&carol, &b2, h, nodes(&["tune"])), Some(true));
        assert_eq!(r.wanting(&alice, "tune").len(), 2);
        assert_eq!(r.of_contact(&carol, &bare("bob@b.test"), "tune"), vec![b2]);
    }

    #[test]
    fn remote_interest_resolved_late_is_dropped() {
        let r = RemoteInterest::default();
        let alice = bare("alice@a.test");
        let b1 = full("bob@b.test/1");
        // Unavailable came while the caps were fetched: nothing is recorded.
        let h = r.heard(&alice, &b1, 10);
        r.forget(&alice, &b1);
        assert_eq!(r.set(&alice, &b1, h, nodes(&["tune"])), None);
        assert!(r.wanting(&alice, "tune").is_empty());
        // Newer presence meanwhile: the older answer does not count.
        let old = r.heard(&alice, &b1, 10);
        let new = r.heard(&alice, &b1, 10);
        assert_eq!(r.set(&alice, &b1, old, nodes(&["tune"])), None);
        assert_eq!(r.set(&alice, &b1, new, nodes(&["mood"])), Some(true));
        assert_eq!(r.wanting(&alice, "mood"), vec![b1.clone()]);
        // Unavailable from the contact's bare JID forgets every resource of it.
        r.forget_contact(&alice, &bare("bob@b.test"));
        assert!(r.wanting(&alice, "mood").is_empty());
    }
}
