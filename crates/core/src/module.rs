//! The module API, modelled on Prosody's `moduleapi`: a module adds features and identities and
//! hooks IQ payloads; the router calls the hooks.

use std::collections::HashMap;
use std::sync::Arc;

use canto_stanza::{IqType, Jid, StanzaError};
use canto_xml::Element;

use crate::config::Config;
use crate::server::Server;
use crate::session::SessionHandle;

/// Which addressee an IQ handler answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqTarget {
    /// The server itself (`to` is a served domain, or absent and no account handler exists).
    Host,
    /// An account: the server answers on the account's behalf (`to` is a bare JID, or absent;
    /// RFC 6120 §10.3.3, RFC 6121 §8.5.2.1.3 and §8.5.2.2.3).
    Account,
}

/// Where a stanza entered the router: the party replies and errors go back to (Prosody's
/// `origin`). Borrowed, so naming the origin of a stanza costs nothing on the hot path.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Origin<'a> {
    /// A bound local client session, whatever its transport.
    Session(&'a SessionHandle),
    /// A hosted service on this server (Prosody's component), sending as `from`, a JID at
    /// `domain`.
    Service {
        /// The service's domain.
        domain: &'a str,
        /// The stanza's `from`, checked to be at `domain`.
        from: &'a Jid,
    },
    /// Another server, over a stream that authenticated `domain` (RFC 6120 §13.7.1).
    Remote {
        /// The authenticated remote domain.
        domain: &'a str,
        /// The stanza's `from`, checked to be at `domain`.
        from: &'a Jid,
    },
}

impl Origin<'_> {
    /// The client session the stanza came from, if it came from one.
    pub fn session(&self) -> Option<&SessionHandle> {
        match self {
            Origin::Session(s) => Some(s),
            Origin::Service { .. } | Origin::Remote { .. } => None,
        }
    }
}

/// An IQ request as a handler sees it.
pub struct IqRequest<'a> {
    /// The server.
    pub server: &'a Arc<Server>,
    /// Where the request came from (a local session, a hosted service).
    pub origin: Origin<'a>,
    /// The sender, as stamped (a session's full JID) or checked (a service's JID) by the router.
    pub from: &'a Jid,
    /// The addressee: a served domain or the bare JID of an account.
    pub to: &'a Jid,
    /// The whole `<iq/>`.
    pub stanza: &'a Element,
    /// Its single payload child.
    pub payload: &'a Element,
}

/// Answers one kind of IQ.
#[async_trait::async_trait]
pub trait IqHandler: Send + Sync {
    /// `Ok(payload)` becomes an IQ result, `Err` an error reply.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError>;
}

/// Sees every one-to-one message between accounts as the router routes it, before delivery
/// (message archives, XEP-0313). It may add to the element (a XEP-0359 stanza-id).
#[async_trait::async_trait]
pub trait MessageHook: Send + Sync {
    /// `sender` is the local account that sent it (None for messages from elsewhere);
    /// `recipient` the local account it is for (None when it leaves the server).
    async fn on_message(
        &self,
        server: &Arc<Server>,
        el: &mut Element,
        sender: Option<&canto_stanza::BareJid>,
        recipient: Option<&canto_stanza::BareJid>,
    );
}

/// Where in a stanza's path a [`StanzaHook`] runs (Prosody's `pre-message/bare`,
/// `message/full`, `presence/host`…): the stanza kind, how its `to` is addressed, and whether it
/// is on its way out of a local session (`Out`, before routing) or arriving at its destination
/// (`In`, before the router's own delivery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HookPoint {
    /// Message, presence or IQ.
    pub kind: canto_stanza::StanzaKind,
    /// How `to` is addressed.
    pub to: Addressed,
    /// Leaving a local session, or arriving.
    pub direction: Direction,
}

/// How a stanza's `to` is addressed, for [`HookPoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addressed {
    /// A bare JID of an account (`user@host`), or no `to` for a message (RFC 6120 §10.3.1).
    Bare,
    /// A full JID (`user@host/resource`).
    Full,
    /// A served domain (`host`).
    Host,
}

/// Which way a stanza is going, for [`HookPoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by a local client session, before it is routed (Prosody's `pre-*` events).
    Out,
    /// Arriving at a local destination, before the router delivers it.
    In,
}

/// What a [`StanzaHook`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooked {
    /// The hook took care of the stanza: later hooks and the router's own handling are skipped.
    Handled,
    /// Go on with the next hook, then the router.
    Pass,
}

/// A stanza as a [`StanzaHook`] sees it.
pub struct StanzaEvent<'a> {
    /// The server.
    pub server: &'a Arc<Server>,
    /// Where it came from (replies go there: [`Server::send_to_origin`]).
    pub origin: Origin<'a>,
    /// Its validated `to`.
    pub to: &'a Jid,
    /// The stanza, `from` stamped; a hook may change it.
    pub stanza: &'a mut Element,
}

/// Sees stanzas at one [`HookPoint`], in priority order (higher first, as in Prosody), before
/// the router's own handling; it may change, answer or swallow them.
#[async_trait::async_trait]
pub trait StanzaHook: Send + Sync {
    /// Runs for each stanza at the point the hook was registered for.
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked;
}

/// A moment in a session's life (session.txt: connected, available, unavailable, gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent<'a> {
    /// Bound a resource: a *connected resource* now (not told again when a XEP-0198
    /// resumption takes the session over).
    Bound,
    /// Sent initial presence: an *available resource* now.
    Available,
    /// Stopped being available (unavailable presence or the session ending); the
    /// `<status/>` of the unavailable presence, if any.
    Unavailable {
        /// The unavailable presence's status text.
        status: Option<&'a str>,
    },
    /// Left the routing table (Prosody's `resource-unbind`): after `Unavailable` if it was
    /// available.
    Destroyed,
}

/// Told of session events, in priority order.
#[async_trait::async_trait]
pub trait SessionHook: Send + Sync {
    /// `session` is the full JID the event is about.
    async fn on_session(
        &self,
        server: &Arc<Server>,
        session: &canto_stanza::FullJid,
        event: SessionEvent<'_>,
    );
}

/// Told when a local account approves a presence subscription (RFC 6121 §3.1.5: `user` sent
/// `subscribed` to `contact`, or pre-approval answered the request), after the contact has the
/// user's current presence: PEP sends the new subscriber the last items (XEP-0163 §4.3.1);
/// and when a roster item changes (PEP cancels subscriptions that lost access, §8.1).
#[async_trait::async_trait]
pub trait SubscriptionHook: Send + Sync {
    /// `contact` may now see `user`'s presence.
    async fn subscribed(
        &self,
        server: &Arc<Server>,
        user: &canto_stanza::BareJid,
        contact: &canto_stanza::BareJid,
    );

    /// `user`'s roster item for `contact` was written or removed (its subscription state or
    /// groups may have changed), before the change is acted on further: XEP-0163 §7.1 has
    /// PEP re-check the contact's access then. Nothing by default.
    async fn roster_changed(
        &self,
        _server: &Arc<Server>,
        _user: &canto_stanza::BareJid,
        _contact: &canto_stanza::BareJid,
    ) {
    }

    /// The local account `user` was deleted (its own stores are gone already): what other
    /// entities keep about it (subscriptions to and affiliations with nodes of hosted
    /// services) goes too, so a new account of the same name inherits nothing. Nothing by
    /// default.
    async fn account_deleted(&self, _server: &Arc<Server>, _user: &canto_stanza::BareJid) {}
}

/// Work a module runs periodically (Prosody's `module:add_timer`): archive expiry, cleanup.
#[async_trait::async_trait]
pub trait Timer: Send + Sync {
    /// One run. The first happens right after startup, then every period.
    async fn tick(&self, server: &Arc<Server>);
}

/// A hook with its priority (higher runs first).
pub type Prioritized<H> = (i32, Arc<H>);

/// A registered timer.
#[derive(Clone)]
pub struct TimerEntry {
    /// Who registered it, for logs.
    pub module: &'static str,
    /// Time between runs.
    pub period: std::time::Duration,
    /// What runs.
    pub timer: Arc<dyn Timer>,
}

/// A disco#info identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `category`, e.g. `server`.
    pub category: &'static str,
    /// `type`, e.g. `im`.
    pub kind: &'static str,
    /// Human-readable name.
    pub name: String,
}

/// A protocol a module implements, for the README and the DOAP file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `"XEP-0199"` or `"RFC 6120"`.
    pub id: &'static str,
    /// Version of the specification implemented.
    pub version: &'static str,
    /// Title.
    pub title: &'static str,
}

/// A feature module. Listed once in `canto-modules`, enabled in config (`modules = [...]`).
pub trait Module: Send + Sync {
    /// The name used in config.
    fn name(&self) -> &'static str;
    /// What it implements.
    fn specs(&self) -> &'static [Spec];
    /// Registers features and hooks.
    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String>;
    /// The configuration sections this module reads ([`ModuleConfig::info`] of each), whether
    /// or not it is enabled: a configured section of a disabled module is not an unknown key.
    fn config_sections(&self) -> Vec<SectionInfo> {
        Vec::new()
    }
}

/// What modules registered: consulted by the router and by disco.
#[derive(Default)]
pub struct ModuleTable {
    features: Vec<String>,
    identities: Vec<Identity>,
    iq: HashMap<(IqTarget, IqType, String), Arc<dyn IqHandler>>,
    /// IQ handlers for one domain only, tried before those for every host.
    iq_by_domain: HashMap<(String, IqTarget, IqType, String), Arc<dyn IqHandler>>,
    stanza_hooks: HashMap<HookPoint, Vec<Prioritized<dyn StanzaHook>>>,
    session_hooks: Vec<Prioritized<dyn SessionHook>>,
    subscription_hooks: Vec<Arc<dyn SubscriptionHook>>,
    timers: Vec<TimerEntry>,
    message_hooks: Vec<Arc<dyn MessageHook>>,
    account_features: Vec<String>,
    account_identities: Vec<Identity>,
    account_disco: Vec<Arc<dyn AccountDisco>>,
    stream_features: Vec<Element>,
    services: HashMap<String, ServiceEntry>,
    /// External components (XEP-0114), each also one of `services`.
    components: crate::component::Components,
    /// Which module opened which store (a name belongs to one module).
    store_owners: HashMap<&'static str, &'static str>,
    /// Module sections' reloaders.
    reloaders: Vec<Reloader>,
    /// XEP-0128 forms for the server's disco#info.
    info_forms: Vec<Arc<dyn InfoForm>>,
    /// What modules offer other modules (Prosody's `module:depends` + shared API), by type.
    provided: HashMap<std::any::TypeId, (&'static str, Arc<dyn std::any::Any + Send + Sync>)>,
    loaded: Vec<&'static str>,
}

/// Adds to the disco answers the server gives on an account's behalf (XEP-0030 §3, §4): a
/// module that keeps nodes for accounts (PEP, XEP-0163 §6) lists them and describes them.
#[async_trait::async_trait]
pub trait AccountDisco: Send + Sync {
    /// The `<item/>`s for disco#items (no node) on `account`, as `from` may see them.
    async fn items(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &canto_stanza::BareJid,
    ) -> Vec<Element>;
    /// disco#info on `node` of `account`: `None` if the node is not this module's, else the
    /// `<query/>`'s children or the error (e.g. `item-not-found`).
    async fn node_info(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &canto_stanza::BareJid,
        node: &str,
    ) -> Option<Result<Vec<Element>, StanzaError>>;
    /// disco#items on `node` of `account`: `None` if the node is not this module's.
    async fn node_items(
        &self,
        server: &Arc<Server>,
        from: &Jid,
        account: &canto_stanza::BareJid,
        node: &str,
    ) -> Option<Result<Vec<Element>, StanzaError>>;
}

/// A hosted service as registered: its domain, the host it belongs to, and the module behind it.
#[derive(Clone)]
pub struct ServiceEntry {
    /// The service's domain (`conference.example.org`).
    pub domain: String,
    /// The served host whose disco#items lists it (XEP-0030 §4).
    pub parent: String,
    /// Human-readable name for disco#items.
    pub name: String,
    /// What handles its stanzas.
    pub service: Arc<dyn Service>,
}

impl std::fmt::Debug for ServiceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceEntry")
            .field("domain", &self.domain)
            .field("parent", &self.parent)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A hosted service: a domain such as `conference.HOST` or `pubsub.HOST` whose stanzas, of every
/// kind and to every JID at it, go to one module (Prosody's components: `Component
/// "conference.example.org" "muc"`). The router validates and stamps a stanza before handing it
/// over, so `from` can be trusted; the service answers and sends through its [`ServiceCtx`].
#[async_trait::async_trait]
pub trait Service: Send + Sync {
    /// Handles one stanza addressed to the service's domain or a JID at it.
    async fn handle(&self, ctx: &ServiceCtx, stanza: Element);

    /// Cluster mode: `session` ended without being able to say so (its node died). A service
    /// that keeps sessions (a room's occupants) forgets it as if it had sent unavailable
    /// presence (RFC 6121 §4.6.3: a server tells directed-presence recipients when a session
    /// ends; here a surviving node does it for the dead one).
    async fn session_lost(&self, _ctx: &ServiceCtx, _session: &canto_stanza::FullJid) {}

    /// Cluster mode: the set of live nodes changed, so what this node handles may have changed
    /// (rooms move by rendezvous hashing): state kept in memory for what another node handled
    /// meanwhile is read again from storage.
    async fn cluster_changed(&self, _ctx: &ServiceCtx) {}
}

/// What a hosted service can do on the server: send stanzas from its domain. It cannot reach
/// the session table or other modules' stores. Cheap to clone; holds the server weakly, so a
/// service that keeps one (for timers) does not keep the server alive.
#[derive(Clone, Debug)]
pub struct ServiceCtx {
    server: std::sync::Weak<Server>,
    domain: Arc<str>,
}

impl ServiceCtx {
    pub(crate) fn new(server: &Arc<Server>, domain: &str) -> ServiceCtx {
        ServiceCtx {
            server: Arc::downgrade(server),
            domain: Arc::from(domain),
        }
    }

    /// The service's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The item `owner` (a local account) has for `contact` in its roster, if any: for access
    /// models that follow an owner's roster (XEP-0060 §4.5 `presence`, `roster`).
    pub async fn roster_item(
        &self,
        owner: &canto_stanza::BareJid,
        contact: &canto_stanza::BareJid,
    ) -> Option<crate::roster::RosterItem> {
        let server = self.server.upgrade()?;
        if !server.serves(owner.domain().as_str()) {
            return None;
        }
        server.roster(owner).await.get(contact).cloned()
    }

    /// Delivers `stanzas`, all for the local session `to`, in order and at once, with room
    /// beyond `c2s.max_send_queue` as offline messages have (up to `offline.max_messages`
    /// more): what a session asked for in one request (a MUC join: every occupant's
    /// presence, history, subject) must not look like a slow reader. Their `from` must be at
    /// the service's domain. The stanzas come back when `to` is no local session (route them
    /// with [`ServiceCtx::send`] then); `Ok(false)`: the queue was full and the session is
    /// closed.
    pub fn deliver_burst(
        &self,
        to: &str,
        stanzas: Vec<canto_xml::Element>,
    ) -> Result<bool, Vec<canto_xml::Element>> {
        let Some(server) = self.server.upgrade() else {
            return Ok(false);
        };
        let Ok(full) = canto_stanza::parse_jid(to).and_then(|j| {
            j.try_into_full()
                .map_err(|_| canto_stanza::StanzaError::new(canto_stanza::Condition::JidMalformed))
        }) else {
            return Err(stanzas);
        };
        if !server.serves(full.domain().as_str()) {
            return Err(stanzas);
        }
        let Some(session) = server.sessions.get(&full) else {
            return Err(stanzas);
        };
        for el in stanzas {
            // The service wrote these addresses itself (normalized): a string check will do.
            let ours = el.attr("from").is_some_and(|f| {
                let bare = f.split('/').next().unwrap_or_default();
                bare.rsplit('@').next() == Some(&*self.domain)
            });
            if !ours {
                tracing::warn!(service = %self.domain, "burst stanza not from the service; dropped");
                continue;
            }
            if session.deliver_stored(std::sync::Arc::new(el)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Routes stanzas from the service in order, as [`ServiceCtx::send`] does one by one
    /// (a room's broadcast: the sender's JID is parsed once for the run).
    pub fn send_many(&self, stanzas: Vec<Element>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(server) = self.server.upgrade() {
                server.route_many_from_service(&self.domain, stanzas).await;
            }
        })
    }

    /// Routes a stanza from the service. Its `from` must be the service's domain or a JID at
    /// it (anything else is dropped and logged: a service cannot speak for others); its `to`
    /// may be anything — a local session or account, a host, another service, a remote domain.
    /// Errors come back to the service as stanzas.
    pub fn send(&self, stanza: Element) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(server) = self.server.upgrade() {
                server.route_from_service(&self.domain, stanza).await;
            }
        })
    }
}

/// A pinned, boxed, `Send` future. Sending from a service can re-enter the router and the
/// service itself; the box breaks that cycle of async calls.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl ModuleTable {
    /// Loads the modules named in `config.modules` from `available`, in the order of
    /// `available` (so a module that builds on another, as bookmarks on pep, finds it loaded
    /// whatever order the configuration lists them in).
    pub fn load(
        config: &Config,
        storage: &canto_storage::Storage,
        available: &[Arc<dyn Module>],
    ) -> Result<ModuleTable, String> {
        check_sections(config, available)?;
        if let Some(name) = config
            .modules
            .iter()
            .find(|name| !available.iter().any(|m| m.name() == name.as_str()))
        {
            return Err(format!("`modules`: no module named {name:?}"));
        }
        let mut table = ModuleTable::default();
        for m in available {
            let name = m.name();
            if !config.modules.iter().any(|n| n == name) || table.loaded.contains(&name) {
                continue;
            }
            let mut ctx = ModuleCtx {
                table: &mut table,
                config,
                storage,
                module: m.name(),
            };
            m.load(&mut ctx)
                .map_err(|e| format!("module {name}: {e}"))?;
            table.loaded.push(m.name());
        }
        // External components (XEP-0114) are hosted services of the core, always on: one per
        // `[components."DOMAIN"]`, after the modules so a domain one of them serves is refused.
        let mut ctx = ModuleCtx {
            table: &mut table,
            config,
            storage,
            module: "components",
        };
        let components = crate::component::register(&mut ctx)?;
        table.components = components;
        Ok(table)
    }

    /// Features advertised in disco#info on the server, sorted (XEP-0030 §3.1).
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Identities of the server.
    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// The handler for an IQ payload, if any.
    pub fn iq_handler(
        &self,
        target: IqTarget,
        kind: IqType,
        ns: &str,
    ) -> Option<Arc<dyn IqHandler>> {
        self.iq.get(&(target, kind, ns.to_string())).cloned()
    }

    /// The handler for an IQ payload addressed to `domain`: one hooked for that domain, else
    /// one hooked for every host.
    pub fn iq_handler_for(
        &self,
        domain: &str,
        target: IqTarget,
        kind: IqType,
        ns: &str,
    ) -> Option<Arc<dyn IqHandler>> {
        if !self.iq_by_domain.is_empty()
            && let Some(h) =
                self.iq_by_domain
                    .get(&(domain.to_string(), target, kind, ns.to_string()))
        {
            return Some(h.clone());
        }
        self.iq_handler(target, kind, ns)
    }

    /// Stanza hooks at `point`, highest priority first (empty when none: the router's cost
    /// for a point nobody hooks is one lookup).
    pub fn stanza_hooks(&self, point: HookPoint) -> &[Prioritized<dyn StanzaHook>] {
        self.stanza_hooks.get(&point).map_or(&[], Vec::as_slice)
    }

    /// Whether any stanza hook is registered (so the router can skip looking).
    pub fn has_stanza_hooks(&self) -> bool {
        !self.stanza_hooks.is_empty()
    }

    /// Session hooks, highest priority first.
    pub fn session_hooks(&self) -> &[Prioritized<dyn SessionHook>] {
        &self.session_hooks
    }

    /// Subscription hooks, in load order.
    pub fn subscription_hooks(&self) -> &[Arc<dyn SubscriptionHook>] {
        &self.subscription_hooks
    }

    /// Registered timers.
    pub fn timers(&self) -> &[TimerEntry] {
        &self.timers
    }

    /// Message hooks, in load order.
    pub fn message_hooks(&self) -> &[Arc<dyn MessageHook>] {
        &self.message_hooks
    }

    /// Features an account advertises in disco#info (XEP-0030 on a bare JID).
    pub fn account_features(&self) -> &[String] {
        &self.account_features
    }

    /// Identities an account shows in disco#info besides `account/registered` (XEP-0163 §6.1:
    /// `pubsub/pep`).
    pub fn account_identities(&self) -> &[Identity] {
        &self.account_identities
    }

    /// What modules add to disco on accounts (PEP nodes), in load order.
    pub fn account_disco(&self) -> &[Arc<dyn AccountDisco>] {
        &self.account_disco
    }

    /// Names of loaded modules.
    pub fn loaded(&self) -> &[&'static str] {
        &self.loaded
    }

    /// Stream features offered once the client is authenticated (XEP-0198 `<sm/>`, XEP-0352
    /// `<csi/>`), in load order.
    pub fn stream_features(&self) -> &[Element] {
        &self.stream_features
    }

    /// Whether a stream feature in namespace `ns` is offered: the connection accepts that
    /// namespace's elements only then.
    pub fn offers_stream_feature(&self, ns: &str) -> bool {
        self.stream_features.iter().any(|f| f.ns() == ns)
    }

    /// Parses every module section of `config` and, only if all of them are valid, puts them
    /// in force (SIGHUP). On an error nothing changes and the error says which section.
    pub fn reload_sections(&self, config: &Config) -> Result<(), String> {
        let commits = self
            .reloaders
            .iter()
            .map(|r| r(config))
            .collect::<Result<Vec<_>, String>>()?;
        for commit in commits {
            commit();
        }
        Ok(())
    }

    /// The XEP-0128 forms of the server's disco#info, as configured now, sorted by FORM_TYPE.
    pub fn info_forms(&self) -> Vec<InfoFormData> {
        let mut forms: Vec<_> = self.info_forms.iter().filter_map(|f| f.form()).collect();
        forms.sort_by(|a, b| a.0.cmp(&b.0));
        forms
    }

    /// The hosted service at `domain`, if one is registered.
    pub fn service(&self, domain: &str) -> Option<&ServiceEntry> {
        self.services.get(domain)
    }

    /// The external component configured at `domain`, if any.
    pub fn component(&self, domain: &str) -> Option<std::sync::Arc<crate::component::Component>> {
        self.components.get(domain).cloned()
    }

    /// The hosted services whose parent is `host`, sorted by domain (disco#items on the host).
    /// Every hosted service.
    pub fn all_services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    /// The hosted services whose parent is `host`, sorted by domain (disco#items on the host).
    pub fn services_of(&self, host: &str) -> Vec<&ServiceEntry> {
        let mut v: Vec<&ServiceEntry> = self
            .services
            .values()
            .filter(|s| s.parent == host)
            .collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }
}

/// Handed to [`Module::load`].
pub struct ModuleCtx<'a> {
    table: &'a mut ModuleTable,
    config: &'a Config,
    storage: &'a canto_storage::Storage,
    module: &'static str,
}

impl ModuleCtx<'_> {
    /// Advertises a feature in disco#info.
    pub fn add_feature(&mut self, var: &str) {
        if !self.table.features.iter().any(|f| f == var) {
            self.table.features.push(var.to_string());
            self.table.features.sort();
        }
    }

    /// Advertises a feature on accounts' disco#info (e.g. `urn:xmpp:mam:2`, XEP-0313 §7).
    pub fn add_account_feature(&mut self, var: &str) {
        if !self.table.account_features.iter().any(|f| f == var) {
            self.table.account_features.push(var.to_string());
            self.table.account_features.sort();
        }
    }

    /// Adds an identity to accounts' disco#info (XEP-0163 §6.1: `pubsub/pep`).
    pub fn add_account_identity(&mut self, identity: Identity) {
        self.table.account_identities.push(identity);
    }

    /// Adds items and info nodes to disco on accounts (XEP-0030 answered by the server on the
    /// account's behalf): PEP lists its nodes there.
    pub fn add_account_disco(&mut self, disco: Arc<dyn AccountDisco>) {
        self.table.account_disco.push(disco);
    }

    /// Offers a stream feature after authentication; the connection task implements the
    /// protocol behind it (it lives on the connection's read and write paths).
    pub fn add_stream_feature(&mut self, feature: Element) {
        self.table.stream_features.push(feature);
    }

    /// Sees one-to-one messages before delivery.
    pub fn hook_message(&mut self, hook: Arc<dyn MessageHook>) {
        self.table.message_hooks.push(hook);
    }

    /// Sees stanzas at `point` before the router handles them; hooks run highest `priority`
    /// first (equal priorities in load order), and the first to answer [`Hooked::Handled`]
    /// ends the stanza's handling.
    pub fn hook_stanza(&mut self, point: HookPoint, priority: i32, hook: Arc<dyn StanzaHook>) {
        let list = self.table.stanza_hooks.entry(point).or_default();
        // Stable: after every hook of the same or higher priority.
        let at = list.partition_point(|(p, _)| *p >= priority);
        list.insert(at, (priority, hook));
    }

    /// Is told of session events; hooks run highest `priority` first.
    pub fn hook_session(&mut self, priority: i32, hook: Arc<dyn SessionHook>) {
        let list = &mut self.table.session_hooks;
        let at = list.partition_point(|(p, _)| *p >= priority);
        list.insert(at, (priority, hook));
    }

    /// Is told when a local account approves a presence subscription.
    pub fn hook_subscription(&mut self, hook: Arc<dyn SubscriptionHook>) {
        self.table.subscription_hooks.push(hook);
    }

    /// Runs `timer` once right after startup and then every `period` (at least one second),
    /// for as long as the server runs.
    pub fn add_timer(
        &mut self,
        period: std::time::Duration,
        timer: Arc<dyn Timer>,
    ) -> Result<(), String> {
        if period < std::time::Duration::from_secs(1) {
            return Err(format!("{}: a timer period is at least 1 s", self.module));
        }
        self.table.timers.push(TimerEntry {
            module: self.module,
            period,
            timer,
        });
        Ok(())
    }

    /// Like [`ModuleCtx::hook_iq`], for IQs addressed to `domain` only (a served host): they
    /// are tried before handlers for every host.
    pub fn hook_iq_for(
        &mut self,
        domain: &str,
        target: IqTarget,
        kind: IqType,
        ns: &str,
        handler: Arc<dyn IqHandler>,
    ) -> Result<(), String> {
        if !self.config.serves(domain) {
            return Err(format!("{}: {domain} is not a served host", self.module));
        }
        let key = (domain.to_string(), target, kind, ns.to_string());
        if self.table.iq_by_domain.contains_key(&key) {
            return Err(format!(
                "{} hooks {kind:?} {ns} on {domain} twice",
                self.module
            ));
        }
        self.table.iq_by_domain.insert(key, handler);
        Ok(())
    }

    /// Advertises an identity.
    pub fn add_identity(&mut self, identity: Identity) {
        self.table.identities.push(identity);
    }

    /// Handles IQs of `kind` whose payload is in namespace `ns`, addressed to `target`.
    pub fn hook_iq(
        &mut self,
        target: IqTarget,
        kind: IqType,
        ns: &str,
        handler: Arc<dyn IqHandler>,
    ) -> Result<(), String> {
        let key = (target, kind, ns.to_string());
        if self.table.iq.contains_key(&key) {
            return Err(format!("{} hooks {kind:?} {ns} twice", self.module));
        }
        self.table.iq.insert(key, handler);
        Ok(())
    }

    /// Serves `domain` with `service` (a hosted service, listed in disco#items of `parent`).
    /// The domain must not be a served host or another service's domain.
    pub fn add_service(
        &mut self,
        domain: &str,
        parent: &str,
        name: &str,
        service: Arc<dyn Service>,
    ) -> Result<(), String> {
        let domain = canto_stanza::jid::normalize_domain(domain)
            .ok_or_else(|| format!("{}: {domain:?} is not a domain name", self.module))?;
        if self.config.serves(&domain) {
            return Err(format!(
                "{}: {domain} is a host; a service needs a domain of its own",
                self.module
            ));
        }
        if !self.config.serves(parent) {
            return Err(format!("{}: {parent} is not a served host", self.module));
        }
        if self.table.services.contains_key(&domain) {
            return Err(format!("{}: {domain} is already served", self.module));
        }
        self.table.services.insert(
            domain.clone(),
            ServiceEntry {
                domain,
                parent: parent.to_string(),
                name: name.to_string(),
                service,
            },
        );
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.config
    }

    /// This module's configuration section, parsed and validated now and again on each reload.
    pub fn section<T: ModuleConfig>(&mut self) -> Result<Section<T>, String> {
        let value = T::parse(self.config.sections.get(T::SECTION))?;
        let current = Arc::new(arc_swap::ArcSwap::from_pointee(value));
        let slot = current.clone();
        self.table.reloaders.push(Box::new(move |config: &Config| {
            let next = T::parse(config.sections.get(T::SECTION))?;
            let slot = slot.clone();
            Ok(Box::new(move || slot.store(Arc::new(next))) as Box<dyn FnOnce() + Send>)
        }));
        Ok(Section { current })
    }

    /// Offers `value` to modules loaded later (`ctx.depend::<T>()`), as Prosody modules share
    /// an API with `module:depends`.
    pub fn provide<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.table
            .provided
            .insert(std::any::TypeId::of::<T>(), (self.module, value));
    }

    /// What a module loaded earlier offered as a `T`; an error naming `module` if it is not
    /// loaded.
    pub fn depend<T: Send + Sync + 'static>(&mut self, module: &str) -> Result<Arc<T>, String> {
        self.table
            .provided
            .get(&std::any::TypeId::of::<T>())
            .and_then(|(_, v)| v.clone().downcast::<T>().ok())
            .ok_or_else(|| {
                format!(
                    "{} needs module {module} (add it to `modules`)",
                    self.module
                )
            })
    }

    /// Adds an extended-information form (XEP-0128) to the server's disco#info and caps.
    pub fn add_info_form(&mut self, form: Arc<dyn InfoForm>) {
        self.table.info_forms.push(form);
    }

    /// Claims the store `name` for this module: a second module (or a core store's name) is
    /// refused, so modules cannot reach each other's data.
    fn claim_store(&mut self, name: &'static str) -> Result<(), String> {
        if crate::stores::CORE_STORES.contains(&name) {
            return Err(format!("{}: store {name:?} is the core's", self.module));
        }
        match self.table.store_owners.get(name) {
            Some(owner) if *owner != self.module => Err(format!(
                "{}: store {name:?} belongs to module {owner}",
                self.module
            )),
            _ => {
                self.table.store_owners.insert(name, self.module);
                Ok(())
            }
        }
    }

    /// Opens this module's per-user key-value store `name` (Prosody's `module:open_store`).
    pub fn open_kv(&mut self, name: &'static str) -> Result<crate::stores::KvStore, String> {
        self.claim_store(name)?;
        Ok(crate::stores::KvStore::new(self.storage, name))
    }

    /// Opens this module's per-user map store `name`.
    pub fn open_map(&mut self, name: &'static str) -> Result<crate::stores::MapStore, String> {
        self.claim_store(name)?;
        Ok(crate::stores::MapStore::new(self.storage, name))
    }

    /// Opens this module's publish-subscribe store `name` (PEP, a pubsub service): nodes,
    /// affiliations, subscriptions and items, keyed by service.
    pub fn open_pubsub(
        &mut self,
        name: &'static str,
    ) -> Result<crate::stores::PubsubStore, String> {
        self.claim_store(name)?;
        Ok(crate::stores::PubsubStore::new(self.storage, name))
    }

    /// Opens this module's per-user archive `name`.
    pub fn open_archive(
        &mut self,
        name: &'static str,
    ) -> Result<crate::stores::ArchiveStore, String> {
        self.claim_store(name)?;
        Ok(crate::stores::ArchiveStore::new(self.storage, name))
    }
}

/// A module's own configuration section (Prosody's `module:get_option_*`, typed): parsed and
/// validated when the module loads, again on every reload, documented by the module and printed
/// by `canto config example`. The section is the top-level TOML key [`ModuleConfig::SECTION`].
pub trait ModuleConfig:
    serde::de::DeserializeOwned + serde::Serialize + Default + Send + Sync + 'static
{
    /// The top-level key (`[vcard]`, `[[external_services]]`).
    const SECTION: &'static str;
    /// Documentation: `("", what the section is)` and `("key", what it does)` for each key.
    const DOCS: &'static [(&'static str, &'static str)];

    /// Checks values that parse but make no sense.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Parses the section (absent: the defaults) and validates it; errors name the section.
    fn parse(value: Option<&toml::Value>) -> Result<Self, String> {
        let c: Self = match value {
            None => Self::default(),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e| format!("`{}`: {e}", Self::SECTION))?,
        };
        c.validate()
            .map_err(|e| format!("`{}`: {e}", Self::SECTION))?;
        Ok(c)
    }

    /// What the registry needs to know of the section.
    fn info() -> SectionInfo {
        SectionInfo {
            name: Self::SECTION,
            docs: Self::DOCS,
            defaults: || toml::Value::try_from(Self::default()).ok(),
            check: |v| Self::parse(Some(v)).map(|_| ()),
        }
    }
}

/// A configuration section as the registry sees it, whatever its type.
#[derive(Clone, Copy, Debug)]
pub struct SectionInfo {
    /// The top-level key.
    pub name: &'static str,
    /// Its documentation (see [`ModuleConfig::DOCS`]).
    pub docs: &'static [(&'static str, &'static str)],
    /// The defaults as TOML, for the example configuration.
    pub defaults: fn() -> Option<toml::Value>,
    /// Parses and validates a value of the section.
    pub check: fn(&toml::Value) -> Result<(), String>,
}

/// Checks every module section in `config`: each top-level key that is not the core's must be
/// the section of one of the `available` modules (else it is an unknown key, named), and must
/// parse and validate. `canto check` and startup both call this.
pub fn check_sections(config: &Config, available: &[Arc<dyn Module>]) -> Result<(), String> {
    let infos: Vec<SectionInfo> = available.iter().flat_map(|m| m.config_sections()).collect();
    for (key, value) in &config.sections {
        let info = infos
            .iter()
            .find(|i| i.name == key)
            .ok_or_else(|| format!("unknown configuration key `{key}`"))?;
        (info.check)(value)?;
    }
    Ok(())
}

/// A module's view of its section: the values in force, replaced atomically when a reload
/// brings new ones. Cheap to clone; read it where it is used, so a reload takes effect.
pub struct Section<T> {
    current: Arc<arc_swap::ArcSwap<T>>,
}

impl<T> Clone for Section<T> {
    fn clone(&self) -> Self {
        Section {
            current: self.current.clone(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Section<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current.load().fmt(f)
    }
}

impl<T> Section<T> {
    /// The values in force.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }
}

/// Parses a section's new value from a reloaded configuration; the returned closure puts it in
/// force. Two steps, so a reload either applies every section or none.
type Reloader = Box<dyn Fn(&Config) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// A XEP-0128 form's content: its FORM_TYPE and `(var, values)` fields, in order.
pub type InfoFormData = (String, Vec<(String, Vec<String>)>);

/// An extended-information form (XEP-0128) a module adds to the server's disco#info, e.g. the
/// XEP-0157 contact addresses: `(FORM_TYPE, [(var, values)])`. It is part of the entity
/// capabilities hash too (XEP-0115 §5.4), which is why the module table collects them.
pub trait InfoForm: Send + Sync {
    /// The form as configured now, if there is one to show.
    fn form(&self) -> Option<InfoFormData>;
}
