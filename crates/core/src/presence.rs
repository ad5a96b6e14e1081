//! Presence and subscriptions (RFC 6121 §3, §4): Prosody's `rostermanager` and `mod_presence`.
//!
//! A user's roster is loaded into memory the first time one of their sessions needs it
//! (session.txt: "the user's roster, loaded as soon as the resource is bound") and kept while
//! they are online, so broadcasts never wait for storage. Every change is written to storage
//! first, then to the cached copy; the cache is dropped when the last session ends.

use std::collections::HashMap;
use std::sync::Arc;

use canto_stanza::{BareJid, FullJid, Jid, PresenceType, ns};
use canto_xml::Element;
use tracing::warn;

use crate::roster::{RosterItem, RosterStore, SubType, inbound, outbound};
use crate::server::Server;
use crate::session::SessionHandle;

/// One account's roster, by contact.
pub type RosterMap = HashMap<BareJid, RosterItem>;

pub(crate) fn presence(kind: Option<&str>, from: &str, to: &str) -> Element {
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(k) = kind {
        p.set_attr("type", k);
    }
    p
}

fn parts(bare: &BareJid) -> Option<(String, String)> {
    Some((
        bare.domain().as_str().to_string(),
        bare.node()?.as_str().to_string(),
    ))
}

impl Server {
    /// The roster of a local account, from the cache or storage.
    pub async fn roster(&self, user: &BareJid) -> Arc<RosterMap> {
        if let Some(r) = self
            .roster_cache
            .read()
            .ok()
            .and_then(|c| c.get(user).cloned())
        {
            return r;
        }
        let Some((host, node)) = parts(user) else {
            return Arc::default();
        };
        let items = match RosterStore::new(&self.storage, &host, &node).items().await {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, user = %user, "loading a roster failed");
                Vec::new()
            }
        };
        let map: Arc<RosterMap> = Arc::new(items.into_iter().map(|i| (i.jid.clone(), i)).collect());
        // Cache only while the user is online; an offline user's roster is read when needed.
        if self.sessions.is_online(user)
            && let Ok(mut c) = self.roster_cache.write()
        {
            c.entry(user.clone()).or_insert_with(|| map.clone());
        }
        map
    }

    /// The cached roster, if the user is online and it was loaded.
    pub(crate) fn cached_roster(&self, user: &BareJid) -> Option<Arc<RosterMap>> {
        self.roster_cache
            .read()
            .ok()
            .and_then(|c| c.get(user).cloned())
    }

    /// Drops the cached roster (the user's last session ended).
    pub(crate) fn forget_roster(&self, user: &BareJid) {
        if let Ok(mut c) = self.roster_cache.write() {
            c.remove(user);
        }
    }

    /// Writes one item (or removes it), updates the cache and pushes the change to the user's
    /// interested resources (RFC 6121 §2.1.6). Returns the new roster version.
    pub async fn set_roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
        item: Option<&RosterItem>,
    ) -> Option<u64> {
        let (host, node) = parts(user)?;
        let ver = match RosterStore::new(&self.storage, &host, &node)
            .put(contact, item)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, user = %user, "writing a roster item failed");
                return None;
            }
        };
        if let Ok(mut c) = self.roster_cache.write()
            && let Some(map) = c.get_mut(user)
        {
            let m = Arc::make_mut(map);
            match item {
                Some(i) => {
                    m.insert(contact.clone(), i.clone());
                }
                None => {
                    m.remove(contact);
                }
            }
        }
        self.account_changed(user);
        self.roster_push(user, contact, item, ver);
        // XEP-0163 §7.1: a changed subscription state or group may take access away; the
        // modules re-check it now (PEP cancels subscriptions that lost it).
        if let Some(me) = self.me() {
            for hook in self.modules().subscription_hooks() {
                hook.roster_changed(&me, user, contact).await;
            }
        }
        Some(ver)
    }

    /// RFC 6121 §2.1.6: a roster push to every interested resource of the account.
    pub fn roster_push(
        &self,
        user: &BareJid,
        contact: &BareJid,
        item: Option<&RosterItem>,
        ver: u64,
    ) {
        let el = match item {
            Some(i) => i.to_element(),
            None => RosterItem::new(contact.clone())
                .to_element()
                .with_attr("subscription", "remove"),
        };
        for s in self.sessions.resources(user) {
            if s.is_interested() {
                let push = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "set")
                    .with_attr("id", format!("push{:x}", rand::random::<u64>()))
                    .with_attr("to", s.jid().to_string())
                    .with_child(
                        Element::new("query", ns::ROSTER)
                            .with_attr("ver", ver.to_string())
                            .with_child(el.clone()),
                    );
                let _ = s.deliver(Arc::new(push));
            }
        }
    }

    /// Delivers `el` to every available resource of a local account.
    pub(crate) fn to_available(&self, user: &BareJid, el: Element) -> usize {
        let shared = Arc::new(el);
        let mut n = 0;
        for s in self.sessions.resources(user) {
            if s.is_available() {
                let _ = s.deliver(shared.clone());
                n += 1;
            }
        }
        n
    }

    /// Sends the current presence of `user`'s available resources to `to` (a contact that was
    /// just allowed to see it, RFC 6121 §3.1.5, or that probed; one unblocked, XEP-0191 §3.4).
    pub fn send_current_presence(&self, user: &BareJid, to: &Jid) {
        for s in self.sessions.resources(user) {
            if let Some(p) = s.presence() {
                let mut p = (*p).clone();
                p.set_attr("from", s.jid().to_string());
                p.set_attr("to", to.to_string());
                self.deliver_presence_to(to, p);
            }
        }
    }

    /// Sends unavailable presence from each of `user`'s available resources to `to` (a contact
    /// that may no longer see them: one just blocked, XEP-0191 §3.3).
    pub fn send_unavailable(&self, user: &BareJid, to: &Jid) {
        for s in self.sessions.resources(user) {
            if s.is_available() {
                let p = presence(Some("unavailable"), &s.jid().to_string(), &to.to_string());
                self.deliver_presence_to(to, p);
            }
        }
    }

    /// Sends unavailable presence from each of `user`'s sessions to those of its directed-presence
    /// recipients (RFC 6121 §4.6) that `covered` selects, and forgets them: a blocked entity sees
    /// the user as offline even if it was never subscribed (XEP-0191 §3.3), and the session's own
    /// unavailable presence later (§4.6.3) does not go to it again. `except` lists JIDs already
    /// sent unavailable from every available resource ([`Server::send_unavailable`]).
    pub fn withdraw_directed(
        &self,
        user: &BareJid,
        covered: impl Fn(&Jid) -> bool,
        except: &[Jid],
    ) {
        for s in self.sessions.resources(user) {
            for to in s.take_directed_where(&covered) {
                let told = s.is_available()
                    && except.iter().any(|e| {
                        *e == to
                            || e.resource().is_none()
                                && e.node() == to.node()
                                && e.domain() == to.domain()
                    });
                if !told {
                    let p = presence(Some("unavailable"), &s.jid().to_string(), &to.to_string());
                    self.deliver_presence_to(&to, p);
                }
            }
        }
    }

    /// Delivers a presence stanza to a local JID (bare: every available resource) or to a
    /// hosted service (a contact or directed-presence recipient at a service's domain).
    pub fn deliver_presence_to(&self, to: &Jid, p: Element) {
        if !self.serves(to.domain().as_str()) {
            if self.modules().service(to.domain().as_str()).is_some() {
                self.spawn_to_service(to.domain().as_str(), p);
            } else {
                // A remote contact (RFC 6121 §4.2.2, §4.3.2, §4.6.2).
                self.send_remote(p);
            }
            return;
        }
        match to.clone().try_into_full() {
            Ok(full) => {
                if let Some(s) = self.sessions.get(&full) {
                    let _ = s.deliver(Arc::new(p));
                }
            }
            Err(bare) => {
                self.to_available(&bare, p);
            }
        }
    }

    /// RFC 6121 §4.2–§4.5: presence without `to` from a session: initial presence, updates and
    /// unavailable, broadcast to contacts with a `from`/`both` subscription and to the account's
    /// available resources (the sender included, §4.2.2).
    pub(crate) async fn presence_broadcast(
        self: &Arc<Self>,
        session: &SessionHandle,
        mut el: Element,
    ) {
        let user = session.jid().to_bare();
        match PresenceType::of(&el) {
            Some(PresenceType::Available) => {
                // RFC 6121 §4.7.2.3: priority is -128..127, default 0.
                let priority = el
                    .get_child("priority", ns::CLIENT)
                    .and_then(|p| p.text().trim().parse::<i8>().ok())
                    .map_or(0, i32::from);
                el.remove_attr("to");
                let initial = !session.is_available();
                let roster = self.roster(&user).await;
                let unreadable = self.load_blocklists(&user, &roster).await;
                // XEP-0160 §3: stored messages go out before anything delivered live. They are
                // read before the session becomes available and queued right after, with no
                // await in between, so a live message cannot overtake them.
                let stored = if initial && priority >= 0 {
                    self.offline_messages(&user).await
                } else {
                    Vec::new()
                };
                session.set_presence(Some(Arc::new(el.clone())), priority);
                let mut delivered = Vec::with_capacity(stored.len());
                for (id, mut m) in stored {
                    m.set_attr("to", session.jid().to_string());
                    if session.deliver_stored(Arc::new(m)).is_err() {
                        break;
                    }
                    delivered.push(id);
                }
                self.broadcast_to(session.jid(), &roster, &el, &unreadable);
                if !delivered.is_empty() {
                    self.delete_offline(&user, &delivered).await;
                }
                if initial {
                    self.after_initial_presence(session, &roster, priority)
                        .await;
                    self.session_event(session, crate::module::SessionEvent::Available)
                        .await;
                }
            }
            Some(PresenceType::Unavailable) if session.set_presence(None, 0) => {
                el.remove_attr("to");
                let roster = self.roster(&user).await;
                // Unavailable goes out even where a blocklist cannot be read: withholding it
                // would leave a contact seeing the user online.
                self.load_blocklists(&user, &roster).await;
                self.broadcast_to(session.jid(), &roster, &el, &[]);
                // The sender is no longer available: tell it too (§4.5.2).
                let mut own = el.clone();
                own.set_attr("to", session.jid().to_string());
                let _ = session.deliver(Arc::new(own));
                self.unavailable_to_directed(session, &el);
                let status = el.get_child("status", ns::CLIENT).map(|s| s.text());
                let ev = crate::module::SessionEvent::Unavailable {
                    status: status.as_deref(),
                };
                self.session_event(session, ev).await;
            }
            // Unavailable from a session that never was available: nothing to broadcast, but
            // rooms it joined hear it left (§4.6.3).
            Some(PresenceType::Unavailable) => self.unavailable_to_directed(session, &el),
            _ => {}
        }
    }

    /// Makes sure the blocklists a broadcast consults are cached: the user's and those of
    /// online contacts who receive it.
    /// Returns the accounts whose list could not be read (the user's own among them, if so):
    /// an available broadcast leaves them out (XEP-0191 fails closed, as `blocks` does).
    async fn load_blocklists(&self, user: &BareJid, roster: &RosterMap) -> Vec<BareJid> {
        let mut unreadable = Vec::new();
        if self.try_blocklist(user).await.is_err() {
            unreadable.push(user.clone());
        }
        for (contact, item) in roster.iter() {
            if item.subscription.has_from()
                && self.sessions.is_online(contact)
                && self.cached_blocklist(contact).is_none()
                && self.try_blocklist(contact).await.is_err()
            {
                unreadable.push(contact.clone());
            }
        }
        unreadable
    }

    /// Broadcast presence `el` from `sender`'s resource to subscribed contacts and own
    /// resources, leaving out contacts either side has blocked (XEP-0191 §3.2, §3.5) — the
    /// contact's block may name just the sending resource, the user's just one resource of
    /// the contact (full-JID items).
    /// Contacts in `unreadable` (or every contact, when the sender's own list is there) are
    /// left out.
    fn broadcast_to(
        &self,
        sender: &FullJid,
        roster: &RosterMap,
        el: &Element,
        unreadable: &[BareJid],
    ) {
        let user = sender.to_bare();
        let mine = self.cached_blocklist(&user).filter(|b| !b.is_empty());
        let me = Jid::from(sender.clone());
        let own_unreadable = unreadable.contains(&user);
        for (contact, item) in roster.iter() {
            if item.subscription.has_from()
                && !own_unreadable
                && !self.serves(contact.domain().as_str())
                && self.modules().service(contact.domain().as_str()).is_none()
                && !mine
                    .as_ref()
                    .is_some_and(|b| crate::blocking::matches(b, &Jid::from(contact.clone())))
            {
                // RFC 6121 §4.2.2, §4.4.2: a remote contact's server gets one copy, to the
                // contact's bare JID; its own blocklist is its server's to apply.
                let mut p = el.clone();
                p.set_attr("to", contact.to_string());
                self.send_remote(p);
                continue;
            }
            if item.subscription.has_from()
                && !own_unreadable
                && !unreadable.contains(contact)
                && self.serves(contact.domain().as_str())
                && !mine
                    .as_ref()
                    .is_some_and(|b| crate::blocking::matches(b, &Jid::from(contact.clone())))
                && !self
                    .cached_blocklist(contact)
                    .is_some_and(|b| crate::blocking::matches(&b, &me))
            {
                let mut p = el.clone();
                p.set_attr("to", contact.to_string());
                let shared = Arc::new(p);
                for s in self.sessions.resources(contact) {
                    // XEP-0191 §3.3: a resource the user blocked by its full JID gets nothing.
                    let blocked = mine
                        .as_ref()
                        .is_some_and(|b| crate::blocking::matches(b, &Jid::from(s.jid().clone())));
                    if s.is_available() && !blocked {
                        let _ = s.deliver(shared.clone());
                    }
                }
            }
        }
        // The account's own available resources, each addressed by its full JID.
        for s in self.sessions.resources(&user) {
            if s.is_available() {
                let mut own = el.clone();
                own.set_attr("to", s.jid().to_string());
                let _ = s.deliver(Arc::new(own));
            }
        }
    }

    /// After initial presence: probe contacts (answered locally with their resources'
    /// presence, §4.3), redeliver pending subscription requests (§3.1.3) and deliver offline
    /// messages if the priority is non-negative (XEP-0160 §3).
    async fn after_initial_presence(
        self: &Arc<Self>,
        session: &SessionHandle,
        roster: &RosterMap,
        priority: i32,
    ) {
        let me = Jid::from(session.jid().clone());
        let user = session.jid().to_bare();
        for (contact, item) in roster.iter() {
            if item.subscription.has_to()
                && !self.serves(contact.domain().as_str())
                && self.modules().service(contact.domain().as_str()).is_none()
                && !self.blocks(&user, &Jid::from(contact.clone())).await
            {
                // RFC 6121 §4.3.1: a probe, from the user's bare JID, to a remote contact;
                // its server answers with the contact's presence.
                let probe = presence(Some("probe"), user.as_str(), contact.as_str());
                self.send_remote(probe);
                continue;
            }
            if item.subscription.has_to()
                && self.serves(contact.domain().as_str())
                && !self.blocks(&user, &Jid::from(contact.clone())).await
                && !self.blocks(contact, &me).await
            {
                self.send_current_presence(contact, &me);
            }
        }
        let user = session.jid().to_bare();
        let Some((host, node)) = parts(&user) else {
            return;
        };
        if let Ok(pending) = RosterStore::new(&self.storage, &host, &node)
            .pending()
            .await
        {
            for mut p in pending {
                p.set_attr("to", user.to_string());
                let _ = session.deliver(Arc::new(p));
            }
        }
        if priority >= 0 {
            // Messages stored while the session was becoming available (after the first read).
            let msgs = self.offline_messages(&user).await;
            if !msgs.is_empty() {
                let mut ids = Vec::with_capacity(msgs.len());
                for (id, mut m) in msgs {
                    m.set_attr("to", session.jid().to_string());
                    if session.deliver_stored(Arc::new(m)).is_err() {
                        break;
                    }
                    ids.push(id);
                }
                self.delete_offline(&user, &ids).await;
            }
        }
    }

    /// Unavailable to everyone who received directed presence from this session (§4.6.3).
    pub(crate) fn unavailable_to_directed(&self, session: &SessionHandle, el: &Element) {
        for to in session.take_directed() {
            let mut p = el.clone();
            p.set_attr("type", "unavailable");
            p.set_attr("from", session.jid().to_string());
            p.set_attr("to", to.to_string());
            self.deliver_presence_to(&to, p);
        }
    }

    /// Synchronous unavailable broadcast used when a session is destroyed.
    pub(crate) fn broadcast_unavailable_on_destroy(&self, session: &SessionHandle) {
        let user = session.jid().to_bare();
        let el = presence(Some("unavailable"), &session.jid().to_string(), "");
        if let Some(roster) = self.cached_roster(&user) {
            self.broadcast_to(session.jid(), &roster, &el, &[]);
        } else {
            let mut own = el.clone();
            own.set_attr("to", user.to_string());
            self.to_available(&user, own);
        }
        self.unavailable_to_directed(session, &el);
    }

    /// Directed presence (§4.6): route it and remember the recipient unless they already get
    /// broadcasts through a subscription.
    pub(crate) async fn directed_presence(
        self: &Arc<Self>,
        session: &SessionHandle,
        to: &Jid,
        el: Element,
    ) {
        let user = session.jid().to_bare();
        let kind = PresenceType::of(&el);
        let subscribed = self
            .roster(&user)
            .await
            .get(&to.to_bare())
            .is_some_and(|i| i.subscription.has_from());
        match kind {
            Some(PresenceType::Available) if !subscribed && session.is_available() => {
                // RFC 6121 §4.6.3 owes every recipient unavailable at logout, so presence is
                // only sent to a recipient that can be remembered: past the cap it would stay
                // "available" there forever. Refused instead, with policy-violation (RFC 6120
                // §8.3.3.12, type modify: directed unavailable to others frees room).
                let max = self.config().limits.max_directed_presence;
                if !session.add_directed(to.clone(), max) {
                    let err =
                        canto_stanza::StanzaError::new(canto_stanza::Condition::PolicyViolation)
                            .with_text(format!("directed presence to at most {max} entities"));
                    self.reply_error(crate::module::Origin::Session(session), &el, err);
                    return;
                }
            }
            Some(PresenceType::Unavailable) => session.remove_directed(to),
            _ => {}
        }
        // Local, or a remote contact's server (RFC 6121 §4.6.2).
        self.deliver_presence_to(to, el);
    }

    /// A subscription stanza from a local user (RFC 6121 §3, outbound processing), then the
    /// contact's side (inbound processing) when the contact is local.
    pub async fn outbound_subscription(
        self: &Arc<Self>,
        user: &BareJid,
        contact: &BareJid,
        t: SubType,
        el: Element,
    ) {
        // Per account: this changes the user's roster; the contact's side below takes the
        // contact's lock, never both at once (so no lock order to get wrong).
        let _guard = self.account_lock(user).await;
        let Some((host, node)) = parts(user) else {
            return;
        };
        let store = RosterStore::new(&self.storage, &host, &node);
        let item = store.get(contact).await.ok().flatten();
        let pending_in = store.is_pending(contact).await.unwrap_or(false);
        let (tr, clear_pending) = outbound(item, contact, pending_in, t);
        if clear_pending {
            let _ = store.set_pending(contact, None).await;
        }
        if tr.changed {
            self.set_roster_item(user, contact, tr.item.as_ref()).await;
        }
        drop(_guard);
        if !tr.forward {
            return;
        }
        // §3.1.2 and friends: the stanza goes out from the user's bare JID to the contact's.
        let mut out = el;
        out.set_attr("from", user.to_string());
        out.set_attr("to", contact.to_string());
        let contact_jid = Jid::from(contact.clone());
        match t {
            // §3.1.5: the new subscriber gets the user's current presence.
            SubType::Subscribed => {
                self.inbound_subscription(contact, user, t, out).await;
                self.send_current_presence(user, &contact_jid);
                self.subscription_approved(user, contact).await;
            }
            // §3.2.2: a cancelled subscriber gets unavailable from each resource.
            SubType::Unsubscribed => {
                self.inbound_subscription(contact, user, t, out).await;
                for s in self.sessions.resources(user) {
                    if s.is_available() {
                        let p = presence(
                            Some("unavailable"),
                            &s.jid().to_string(),
                            &contact.to_string(),
                        );
                        self.deliver_presence_to(&contact_jid, p);
                    }
                }
            }
            SubType::Subscribe | SubType::Unsubscribe => {
                self.inbound_subscription(contact, user, t, out).await
            }
        }
    }

    /// A subscription stanza from `contact` for the local account `user` (inbound processing).
    pub fn inbound_subscription<'a>(
        self: &'a Arc<Self>,
        user: &'a BareJid,
        contact: &'a BareJid,
        t: SubType,
        el: Element,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if !self.serves(user.domain().as_str()) {
                // A remote contact: its server does the inbound processing (RFC 6121 §3.1.3
                // and the like); a hosted service (an external component, a gateway) gets the
                // stanza and keeps its own state.
                if self.modules().service(user.domain().as_str()).is_some() {
                    self.spawn_to_service(user.domain().as_str(), el);
                } else {
                    self.send_remote(el);
                }
                return;
            }
            if !self.account_exists(user).await {
                // RFC 6121 §3.1.3: no such contact: answer a request with unsubscribed.
                if t == SubType::Subscribe {
                    let reply = presence(
                        Some("unsubscribed"),
                        &user.to_string(),
                        &contact.to_string(),
                    );
                    // Local: processed for the contact; remote: sent to its server.
                    self.inbound_subscription(contact, user, SubType::Unsubscribed, reply)
                        .await;
                }
                return;
            }
            let guard = self.account_lock(user).await;
            let Some((host, node)) = parts(user) else {
                return;
            };
            let store = RosterStore::new(&self.storage, &host, &node);
            let item = store.get(contact).await.ok().flatten();
            let pending_in = store.is_pending(contact).await.unwrap_or(false);
            let mut r = inbound(item, contact, pending_in, t);
            if r.store_pending {
                // `roster.max_pending`: beyond, a request from a new contact is dropped, neither
                // stored nor delivered. RFC 6121 §3.1.3 never obliges the user to answer, so the
                // sender sees what an unanswered request looks like (still pending); an error or
                // `unsubscribed` would tell a flooder the account exists and is full, and the
                // latter would be a refusal the user never gave.
                let max = self.config().roster.max_pending;
                if let Ok(false) = store.add_pending(contact, &el, max).await {
                    crate::metrics::queue_drop(crate::metrics::DROP_PENDING_SUBSCRIPTIONS);
                    r.transition.forward = false;
                }
            }
            if r.clear_pending {
                let _ = store.set_pending(contact, None).await;
            }
            if r.transition.changed {
                self.set_roster_item(user, contact, r.transition.item.as_ref())
                    .await;
            }
            drop(guard);
            if r.transition.forward {
                self.to_available(user, el);
            }
            if r.auto_subscribed {
                let reply = presence(Some("subscribed"), &user.to_string(), &contact.to_string());
                self.inbound_subscription(contact, user, SubType::Subscribed, reply)
                    .await;
                self.send_current_presence(user, &Jid::from(contact.clone()));
                self.subscription_approved(user, contact).await;
            }
        })
    }

    /// Tells the modules' subscription hooks that `contact` may now see `user`'s presence.
    async fn subscription_approved(self: &Arc<Self>, user: &BareJid, contact: &BareJid) {
        for hook in self.modules().subscription_hooks() {
            hook.subscribed(self, user, contact).await;
        }
    }

    /// A probe to a local account (RFC 6121 §4.3.2), from a local session or a service.
    /// 1. The account does not exist, or the prober may not see its presence (not in its
    ///    roster with `from` or `both`): the answer is `unsubscribed` (which cancels a stale
    ///    subscription on the prober's side, §3.2.3).
    /// 2. Entitled, no available resource: `unavailable` from the bare JID.
    /// 3. Entitled: the last presence of each available resource.
    pub(crate) async fn answer_probe(self: &Arc<Self>, prober: &Jid, target: &BareJid) {
        let prober_bare = prober.to_bare();
        let own = prober_bare == *target;
        let entitled = own
            || (self.account_exists(target).await
                && self
                    .roster(target)
                    .await
                    .get(&prober_bare)
                    .is_some_and(|i| i.subscription.has_from()));
        if entitled {
            let available = self
                .sessions
                .resources(target)
                .iter()
                .any(SessionHandle::is_available);
            if available {
                self.send_current_presence(target, prober);
            } else if !own {
                let p = presence(
                    Some("unavailable"),
                    &target.to_string(),
                    &prober.to_string(),
                );
                self.deliver_presence_to(prober, p);
            }
            return;
        }
        let reply = presence(
            Some("unsubscribed"),
            &target.to_string(),
            &prober_bare.to_string(),
        );
        if self.serves(prober_bare.domain().as_str()) {
            // A local prober: when its roster says it is subscribed (or asked to be), the
            // answer is processed as inbound `unsubscribed` (roster push, delivery to its
            // available resources); otherwise nothing changes and the probing resource is
            // told directly.
            let stale = self
                .roster(&prober_bare)
                .await
                .get(target)
                .is_some_and(|i| i.subscription.has_to() || i.ask);
            if stale {
                self.inbound_subscription(&prober_bare, target, SubType::Unsubscribed, reply)
                    .await;
                return;
            }
        }
        let mut reply = reply;
        reply.set_attr("to", prober.to_string());
        self.deliver_presence_to(prober, reply);
    }
}

impl Server {
    /// Deletes a local account (`canto user del`, later in-band cancellation): its sessions are
    /// closed, contacts are sent `unsubscribe`/`unsubscribed` as RFC 6121 §2.5.2 does for a
    /// removed roster item, then the account and everything stored for it (roster, pending
    /// requests, offline messages) are removed. Returns whether the account existed.
    pub async fn delete_account(
        self: &Arc<Self>,
        user: &BareJid,
    ) -> Result<bool, canto_storage::StorageError> {
        let Some((host, node)) = parts(user) else {
            return Ok(false);
        };
        if !self.storage.accounts.exists(&host, &node).await? {
            return Ok(false);
        }
        for s in self.sessions.resources(user) {
            // A session hibernating for XEP-0198 resumption ends now (its leftovers are
            // removed with the rest below).
            {
                let _order = self.sm.reroute_lock(user).await;
                self.end_hibernating_session(&s, "account deleted").await;
            }
            s.close(
                canto_stanza::StreamError::new(canto_stanza::StreamCondition::NotAuthorized)
                    .with_text("account deleted"),
            );
            self.destroy_session(&s, "account deleted");
        }
        let store = RosterStore::new(&self.storage, &host, &node);
        let items = store.items().await?;
        let pending: Vec<BareJid> = store
            .pending()
            .await?
            .iter()
            .filter_map(|p| p.attr("from").and_then(|f| BareJid::new(f).ok()))
            .collect();
        let stanza = |t: &str, to: &BareJid| {
            Element::new("presence", ns::CLIENT)
                .with_attr("type", t)
                .with_attr("to", to.to_string())
        };
        for item in &items {
            if item.subscription.has_from() || pending.contains(&item.jid) {
                self.outbound_subscription(
                    user,
                    &item.jid,
                    SubType::Unsubscribed,
                    stanza("unsubscribed", &item.jid),
                )
                .await;
            }
            if item.subscription.has_to() || item.ask {
                self.outbound_subscription(
                    user,
                    &item.jid,
                    SubType::Unsubscribe,
                    stanza("unsubscribe", &item.jid),
                )
                .await;
            }
        }
        for contact in pending
            .iter()
            .filter(|p| !items.iter().any(|i| &i.jid == *p))
        {
            self.outbound_subscription(
                user,
                contact,
                SubType::Unsubscribed,
                stanza("unsubscribed", contact),
            )
            .await;
        }
        let existed = self.storage.accounts.delete(&host, &node).await?;
        self.forget_roster(user);
        for hook in self.modules().subscription_hooks() {
            hook.account_deleted(self, user).await;
        }
        Ok(existed)
    }
}
