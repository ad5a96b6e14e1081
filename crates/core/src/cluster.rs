//! The seam to the other nodes of a cluster (issue 15; docs/cluster.md). The core routes as it
//! always does; sessions bound on other nodes are in its routing table as *mirrors* (see
//! [`crate::session::SessionManager::bind_mirror`]), so bare-JID delivery by priority,
//! presence broadcasts, roster pushes and carbons reach them with no code of their own. What
//! the core tells the cluster layer ([`ClusterLink`]) is what a mirror cannot carry: that an
//! account's cached roster or blocklist is stale, and which node handles a hosted service's
//! stanza. What the cluster layer asks of the core are the functions below.

use std::sync::Arc;

use canto_stanza::{BareJid, Jid};
use canto_xml::Element;
use tracing::{debug, info};

use crate::server::Server;
use crate::session::{SessionHandle, SessionId};

/// The cluster layer, as the core sees it. Never waits.
pub trait ClusterLink: Send + Sync {
    /// The roster or blocklist of `user` was written on this node: the other nodes drop what
    /// they cached of it.
    fn account_changed(&self, user: &BareJid);

    /// The node other than this one that handles stanzas to the hosted service `domain`
    /// addressed to `to` (a MUC room lives on one node), or `None` to handle it here.
    fn service_owner(&self, domain: &str, to: &Jid) -> Option<Arc<str>>;

    /// Hands `el`, addressed to the hosted service `domain`, to `node`.
    fn forward_to_service(&self, node: &str, domain: &str, el: Element);
}

impl Server {
    /// Installs the cluster layer (once, at startup), held weakly like the federation layer.
    pub fn set_cluster(&self, link: Arc<dyn ClusterLink>) {
        let _ = self.cluster.set(Arc::downgrade(&link));
    }

    pub(crate) fn cluster(&self) -> Option<Arc<dyn ClusterLink>> {
        self.cluster.get().and_then(std::sync::Weak::upgrade)
    }

    /// A module's fact (`SessionHandle::set_ext`) about the session `full` bound on another
    /// cluster node, as its node published it; `None` for a local session or none at all.
    pub fn remote_session_fact(&self, full: &canto_stanza::FullJid, key: &str) -> Option<String> {
        self.sessions
            .get(full)
            .filter(|s| !s.is_local())
            .and_then(|s| s.ext(key))
    }

    /// Sets a module's fact about the local session `full`, for the other cluster nodes.
    pub fn set_session_fact(&self, full: &canto_stanza::FullJid, key: &str, value: Option<String>) {
        if let Some(s) = self.sessions.get(full).filter(SessionHandle::is_local) {
            s.set_ext(key, value);
        }
    }

    /// `user`'s roster or blocklist changed here.
    pub(crate) fn account_changed(&self, user: &BareJid) {
        if let Some(c) = self.cluster() {
            c.account_changed(user);
        }
    }

    /// Another node changed `user`'s roster or blocklist: what this one cached is read again,
    /// at once while the user has a session here (the unavailable broadcast when it ends
    /// reads only the cache).
    pub async fn forget_account_caches(&self, user: &BareJid) {
        self.forget_roster(user);
        self.forget_blocklist(user);
        if self
            .sessions
            .resources(user)
            .iter()
            .any(SessionHandle::is_local)
        {
            self.roster(user).await;
            let _ = self.try_blocklist(user).await;
        }
    }

    /// A stanza another node routed to a session of this one that is gone (it ended while
    /// the stanza crossed): delivered as the core does with a session's unacknowledged
    /// messages — to the account's best other available resource, else offline storage
    /// (RFC 6121 §8.5.3.2.1 for a message to a full JID whose resource is not there; other
    /// stanzas are dropped, §8.5.3.2.2-3). `hops` counts the nodes it crossed: past one, it
    /// goes to offline storage rather than across the cluster again.
    pub async fn reroute_orphan(self: &Arc<Self>, gone: SessionId, el: Element, hops: u32) {
        let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        let bare = to.to_bare();
        if el.name() != "message" || !crate::sm::worth_rerouting(&el) {
            debug!(to = %to, "stanza for a session that ended meanwhile; dropped");
            return;
        }
        let el = Arc::new(el);
        let best = self
            .sessions
            .resources(&bare)
            .into_iter()
            .filter(|r| r.id() != gone && r.is_available() && r.priority() >= 0)
            .filter(|r| hops == 0 || r.is_local())
            .max_by_key(SessionHandle::priority);
        if let Some(r) = best
            && r.deliver(el.clone()).is_ok()
        {
            return;
        }
        if let Err(e) = self.store_offline(&bare, &el).await {
            debug!(error = ?e.condition, "storing a message for a session that ended failed");
        }
    }

    /// A mirror whose node died (or left without saying goodbye for each session) leaves the
    /// table. If it was available, this node's own sessions hear it is unavailable, as
    /// `destroy_session` would have told them (RFC 6121 §4.5.2): the user's other local
    /// resources and the local resources of contacts subscribed to the user. Every node does
    /// this for its own sessions, so each session hears it once; remote servers do not hear
    /// it (their contact's server died: its streams to them broke too).
    pub async fn mirror_lost(self: &Arc<Self>, mirror: &SessionHandle) {
        if mirror.is_local() {
            return;
        }
        let was_available = mirror.set_presence(None, 0);
        self.sessions.remove(mirror);
        let user = mirror.jid().to_bare();
        if was_available {
            let el = crate::presence::presence(Some("unavailable"), &mirror.jid().to_string(), "");
            let roster = self.roster(&user).await;
            let mut targets: Vec<SessionHandle> = self.sessions.resources(&user);
            for (contact, item) in roster.iter() {
                if item.subscription.has_from() && self.serves(contact.domain().as_str()) {
                    targets.extend(self.sessions.resources(contact));
                }
            }
            for s in targets {
                if s.is_local() && s.is_available() {
                    let mut p = el.clone();
                    p.set_attr("to", s.jid().to_string());
                    let _ = s.deliver(Arc::new(p));
                }
            }
        }
        // Hosted services on this node (rooms) forget it as they would a local session.
        self.session_gone_everywhere(mirror).await;
        if !self.sessions.is_online(&user) {
            self.forget_roster(&user);
            self.forget_blocklist(&user);
        }
        info!(jid = %mirror.jid(), "session on a lost cluster node removed");
    }

    /// Tells this node's session hooks and hosted services that a mirror's session is gone
    /// (rooms it was in drop the occupant).
    async fn session_gone_everywhere(self: &Arc<Self>, mirror: &SessionHandle) {
        for (_, hook) in self.modules().session_hooks() {
            hook.on_session(self, mirror.jid(), crate::module::SessionEvent::Destroyed)
                .await;
        }
        let services: Vec<_> = self
            .modules()
            .all_services()
            .map(|e| (e.domain.clone(), e.service.clone()))
            .collect();
        for (domain, service) in services {
            let ctx = crate::module::ServiceCtx::new(self, &domain);
            service.session_lost(&ctx, mirror.jid()).await;
        }
    }

    /// The cluster's live nodes changed: every hosted service reads again what it may have
    /// cached of what another node handled.
    pub async fn cluster_changed(self: &Arc<Self>) {
        let services: Vec<_> = self
            .modules()
            .all_services()
            .map(|e| (e.domain.clone(), e.service.clone()))
            .collect();
        for (domain, service) in services {
            let ctx = crate::module::ServiceCtx::new(self, &domain);
            service.cluster_changed(&ctx).await;
        }
    }
}
