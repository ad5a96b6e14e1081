//! The stanza router: RFC 6120 §8 and §10, RFC 6121 §8, following Prosody's
//! `doc/stanza_routing.txt` case by case.
//!
//! A stanza enters from an [`Origin`] — a bound client session ([`Server::route_from_client`])
//! or a hosted service ([`Server::route_from_service`]); later a remote server or an external
//! component. It is validated (a session's `from` stamped, a service's checked; `to` parsed,
//! type and id checked), then sent to exactly one [`Destination`]: the server (host), an
//! account (bare JID), a session (full JID), a hosted service, or a remote domain. Replies and
//! errors go back to the origin ([`Server::send_to_origin`]), so no path needs a session handle
//! to answer.

use std::sync::Arc;

use canto_stanza::stanza::{error_reply, iq_payload, iq_result, is_error};
use canto_stanza::{
    BareJid, Condition, FullJid, IqType, Jid, MessageType, PresenceType, StanzaError, StanzaKind,
    StreamCondition, StreamError, ns, parse_jid,
};
use canto_xml::Element;
use tracing::{debug, warn};

use crate::module::{
    Addressed, Direction, HookPoint, Hooked, IqRequest, IqTarget, Origin, ServiceCtx, StanzaEvent,
};
use crate::roster::SubType;
use crate::server::Server;
use crate::session::SessionHandle;

/// Where a validated stanza goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// A served domain (`to='example.com'`).
    Host(String),
    /// `to='example.com/resource'`: a resource of the server.
    HostResource,
    /// A local account (`to='user@example.com'`).
    Account(BareJid),
    /// A local session (`to='user@example.com/res'`).
    Session(FullJid),
    /// A hosted service's domain or any JID at it (`to='room@conference.example.com/nick'`).
    Service(String),
    /// A domain not served here.
    Remote(String),
}

impl Server {
    /// Routes a stanza sent by a bound client session. Returns a stream error when the stanza
    /// breaks a stream-level rule (the caller closes the stream with it).
    pub async fn route_from_client(
        self: &Arc<Self>,
        session: &SessionHandle,
        mut el: Element,
    ) -> Result<(), StreamError> {
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            // RFC 6120 §4.9.3.24: a top-level element that is no stanza.
            return Err(StreamError::new(StreamCondition::UnsupportedStanzaType));
        };
        crate::metrics::stanza_in(kind);
        let _timer = crate::metrics::RoutingTimer::start(kind);
        // RFC 6120 §8.1.2.1: the server stamps `from`; a `from` naming anyone else is a stream
        // error (`invalid-from`), never routed.
        if let Some(from) = el.attr("from") {
            let claimed = parse_jid(from).ok();
            let ok = match claimed.as_ref().map(Jid::try_as_full) {
                Some(Ok(f)) => f == session.jid(),
                Some(Err(b)) => *b == session.jid().to_bare(),
                None => false,
            };
            if !ok {
                return Err(StreamError::new(StreamCondition::InvalidFrom));
            }
        }
        el.set_attr("from", session.jid().to_string());
        let origin = Origin::Session(session);
        if let Err(e) = check_type_and_id(kind, &el) {
            self.reply_error(origin, &el, e);
            return Ok(());
        }

        let to = match el.attr("to") {
            None => None,
            Some(t) => match parse_jid(t) {
                Ok(j) => Some(j),
                Err(e) => {
                    // RFC 6120 §8.3.3.8; the reply comes from the server, not from the
                    // malformed address.
                    let mut bad = el;
                    bad.remove_attr("to");
                    self.reply_error(origin, &bad, e);
                    return Ok(());
                }
            },
        };
        if let Some(j) = &to {
            // Normalize what we route and deliver.
            el.set_attr("to", j.to_string());
        }
        match to {
            None => self.route_no_to(session, kind, el).await,
            Some(j) => self.route_addressed(origin, kind, el, j).await,
        }
        Ok(())
    }

    /// Routes a stanza sent by the hosted service at `domain` (through its
    /// [`ServiceCtx::send`]). A service is trusted code, so a stanza it gets wrong — no
    /// stanza, a `from` outside its domain, no `to` — is a bug: dropped and logged, not answered.
    pub async fn route_from_service(self: &Arc<Self>, domain: &str, el: Element) {
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            warn!(
                service = domain,
                name = el.name(),
                "service sent a non-stanza; dropped"
            );
            return;
        };
        let from = match el.attr("from").map(parse_jid) {
            Some(Ok(j)) if j.domain().as_str() == domain => j,
            _ => {
                warn!(service = domain, from = ?el.attr("from"), "service sent as another domain; dropped");
                return;
            }
        };
        self.route_parsed_from_service(domain, kind, el, &from)
            .await
    }

    /// Routes stanzas from a service in order (a room's broadcast): the sender's JID is parsed
    /// once for a run of stanzas from the same one.
    pub async fn route_many_from_service(self: &Arc<Self>, domain: &str, stanzas: Vec<Element>) {
        let mut last: Option<(String, Jid)> = None;
        for el in stanzas {
            let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
                warn!(
                    service = domain,
                    name = el.name(),
                    "service sent a non-stanza; dropped"
                );
                continue;
            };
            let Some(raw) = el.attr("from") else {
                warn!(service = domain, "service sent without a from; dropped");
                continue;
            };
            if last.as_ref().is_none_or(|(r, _)| r != raw) {
                match parse_jid(raw) {
                    Ok(j) if j.domain().as_str() == domain => last = Some((raw.to_string(), j)),
                    _ => {
                        warn!(
                            service = domain,
                            from = raw,
                            "service sent as another domain; dropped"
                        );
                        continue;
                    }
                }
            }
            let Some((_, from)) = &last else { continue };
            Box::pin(self.route_parsed_from_service(domain, kind, el, from)).await;
        }
    }

    async fn route_parsed_from_service(
        self: &Arc<Self>,
        domain: &str,
        kind: StanzaKind,
        mut el: Element,
        from: &Jid,
    ) {
        let to = match el.attr("to").map(parse_jid) {
            Some(Ok(j)) => j,
            _ => {
                warn!(service = domain, to = ?el.attr("to"), "service sent without a valid to; dropped");
                return;
            }
        };
        // Normalized addresses are written back only where they differ (most are already).
        if el.attr("from") != Some(from.as_str()) {
            el.set_attr("from", from.to_string());
        }
        if el.attr("to") != Some(to.as_str()) {
            el.set_attr("to", to.to_string());
        }
        let origin = Origin::Service { domain, from };
        if let Err(e) = check_type_and_id(kind, &el) {
            warn!(service = domain, error = ?e.condition, "service sent a malformed stanza; dropped");
            return;
        }
        self.route_addressed(origin, kind, el, to).await
    }

    /// A validated stanza with a `to`: blocklists, per-message hooks, then its destination.
    pub(crate) async fn route_addressed(
        self: &Arc<Self>,
        origin: Origin<'_>,
        kind: StanzaKind,
        el: Element,
        to: Jid,
    ) {
        let dest = self.destination(&to);
        debug!(?kind, ?dest, "route");
        if !self.passes_blocklists(origin, kind, &el, &to, &dest).await {
            return;
        }
        let mut el = el;
        if let (Origin::Session(_), Some(addressed)) = (origin, dest.addressed())
            && self
                .run_hooks(point(kind, addressed, Direction::Out), origin, &to, &mut el)
                .await
                == Hooked::Handled
        {
            return;
        }
        if let Origin::Session(session) = origin
            && kind == StanzaKind::Message
            && to.to_bare() != session.jid().to_bare()
        {
            let recipient = match &dest {
                Destination::Account(b) => Some(b.clone()),
                Destination::Session(f) => Some(f.to_bare()),
                _ => None,
            };
            let sender = session.jid().to_bare();
            for hook in self.modules().message_hooks() {
                hook.on_message(self, &mut el, Some(&sender), recipient.as_ref())
                    .await;
            }
            // XEP-0280 §7: copies of what this resource sends.
            self.carbon_sent(session, &el);
            // XEP-0313 §3: an id from the sender's archive (set by the archiver for the
            // copies above) is not for the recipient, who cannot query that archive.
            el.remove_children(|c| {
                c.is("stanza-id", crate::carbons::NS_SID) && c.attr("by") == Some(sender.as_str())
            });
        } else if kind == StanzaKind::Message
            && match origin {
                Origin::Remote { .. } => true,
                Origin::Service { domain, .. } => self.component(domain).is_some(),
                Origin::Session(_) => false,
            }
        {
            // A message from a remote contact or an external component (a gateway's user):
            // the recipient's archive (XEP-0313 §4) and XEP-0359 stanza-id, as for a local
            // sender's.
            let recipient = match &dest {
                Destination::Account(b) => Some(b.clone()),
                Destination::Session(f) => Some(f.to_bare()),
                _ => None,
            };
            if recipient.is_some() {
                for hook in self.modules().message_hooks() {
                    hook.on_message(self, &mut el, None, recipient.as_ref())
                        .await;
                }
            }
        }
        self.route_to(origin, kind, el, to, dest).await
    }

    /// XEP-0191 §3.3: the sender's blocklist (outbound to a blocked JID is refused with
    /// not-acceptable and `<blocked/>`) and the recipient's (inbound from a blocked JID
    /// is dropped, messages and IQ requests answered with service-unavailable). Returns whether
    /// the stanza may go on.
    async fn passes_blocklists(
        &self,
        origin: Origin<'_>,
        kind: StanzaKind,
        el: &Element,
        to: &Jid,
        dest: &Destination,
    ) -> bool {
        let recipient = match dest {
            Destination::Account(b) => Some(b.clone()),
            Destination::Session(f) => Some(f.to_bare()),
            _ => None,
        };
        let sender = match origin {
            Origin::Session(session) => {
                let user = session.jid().to_bare();
                if recipient.as_ref() == Some(&user) {
                    // A user's own resources and account are never blocked.
                    return true;
                }
                if self.blocks(&user, to).await {
                    self.reply_error(
                        origin,
                        el,
                        StanzaError::new(Condition::NotAcceptable)
                            .with_app(Element::new("blocked", crate::blocking::NS_ERRORS)),
                    );
                    return false;
                }
                match &recipient {
                    Some(_) => Jid::from(session.jid().clone()),
                    None => return true,
                }
            }
            Origin::Service { from, .. } | Origin::Remote { from, .. } => match &recipient {
                Some(_) => from.clone(),
                None => return true,
            },
        };
        let Some(recipient) = recipient else {
            return true;
        };
        if self.blocks(&recipient, &sender).await {
            let answer = match kind {
                StanzaKind::Presence => false,
                StanzaKind::Message => MessageType::of(el) != MessageType::Groupchat,
                StanzaKind::Iq => IqType::of(el).is_some_and(IqType::is_request),
            };
            if answer {
                self.reply_error(origin, el, StanzaError::new(Condition::ServiceUnavailable));
            }
            return false;
        }
        true
    }

    fn destination(&self, to: &Jid) -> Destination {
        let domain = to.domain().as_str();
        if !self.serves(domain) {
            // Hosted services are checked only for domains that are not hosts, so routing to
            // accounts pays nothing for them.
            if self.modules().service(domain).is_some() {
                return Destination::Service(domain.to_string());
            }
            return Destination::Remote(domain.to_string());
        }
        match (to.node(), to.resource()) {
            (None, None) => Destination::Host(domain.to_string()),
            (None, Some(_)) => Destination::HostResource,
            (Some(_), None) => Destination::Account(to.to_bare()),
            (Some(_), Some(_)) => match to.clone().try_into_full() {
                Ok(f) => Destination::Session(f),
                Err(b) => Destination::Account(b),
            },
        }
    }

    /// RFC 6120 §10.3: no `to` (only a client session sends these; a service always addresses
    /// its stanzas).
    async fn route_no_to(
        self: &Arc<Self>,
        session: &SessionHandle,
        kind: StanzaKind,
        mut el: Element,
    ) {
        let own = session.jid().to_bare();
        let origin = Origin::Session(session);
        // Prosody's `pre-*/bare`: a stanza without `to` is the sender's own bare JID's.
        if self.modules().has_stanza_hooks() {
            let to = Jid::from(own.clone());
            let point = point(kind, Addressed::Bare, Direction::Out);
            if self.run_hooks(point, origin, &to, &mut el).await == Hooked::Handled {
                return;
            }
        }
        match kind {
            // RFC 6120 §10.3.1: as if addressed to the sender's bare JID.
            StanzaKind::Message => self.route_to_account(origin, kind, el, own).await,
            // RFC 6120 §10.3.2 / RFC 6121 §4.2, §4.4, §4.5: broadcast presence.
            // Boxed (here and for presence and IQs below): these futures are the largest in
            // routing, and every connection task is sized for the largest; messages, the hot
            // path, stay inline.
            StanzaKind::Presence => Box::pin(self.presence_broadcast(session, el)).await,
            // RFC 6120 §10.3.3: handled by the server on behalf of the account; handlers for the
            // server itself also answer (a ping without `to` is a ping to the server).
            StanzaKind::Iq => {
                let to = Jid::from(own);
                Box::pin(self.handle_iq(origin, el, &to, &[IqTarget::Account, IqTarget::Host]))
                    .await
            }
        }
    }

    async fn route_to(
        self: &Arc<Self>,
        origin: Origin<'_>,
        kind: StanzaKind,
        mut el: Element,
        to: Jid,
        dest: Destination,
    ) {
        if let Some(addressed) = dest.addressed()
            && self
                .run_hooks(point(kind, addressed, Direction::In), origin, &to, &mut el)
                .await
                == Hooked::Handled
        {
            return;
        }
        match dest {
            Destination::Host(_) => match kind {
                StanzaKind::Iq => {
                    Box::pin(self.handle_iq(origin, el, &to, &[IqTarget::Host])).await
                }
                // RFC 6120 §10.4: messages and presence to the server itself are handled by it;
                // with no module that wants them they are dropped.
                StanzaKind::Message | StanzaKind::Presence => {}
            },
            Destination::HostResource => {
                // Nothing is bound to a resource of the server.
                if kind != StanzaKind::Presence {
                    self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
                }
            }
            // Every stanza to a service's domain, of every kind, is the service's.
            Destination::Service(domain) => {
                // RFC 6121 §3: a subscription to a JID at a service (a gateway's contact)
                // changes the user's roster like any other; the service gets the stanza.
                if kind == StanzaKind::Presence
                    && let Origin::Session(session) = origin
                    && let Some(t) = sub_type(&el)
                {
                    let user = session.jid().to_bare();
                    let contact = to.to_bare();
                    Box::pin(self.outbound_subscription(&user, &contact, t, el)).await;
                    return;
                }
                // RFC 6121 §4.6.3: directed presence to a service (a group chat room above
                // all) is remembered so that the service hears unavailable when the session
                // ends; as Prosody does, also before initial presence (clients join rooms
                // then too).
                if kind == StanzaKind::Presence
                    && let Origin::Session(session) = origin
                {
                    match PresenceType::of(&el) {
                        Some(PresenceType::Available) => {
                            let max = self.config().limits.max_directed_presence;
                            if !session.add_directed(to.clone(), max) {
                                let err = StanzaError::new(Condition::PolicyViolation).with_text(
                                    format!("directed presence to at most {max} entities"),
                                );
                                self.reply_error(origin, &el, err);
                                return;
                            }
                        }
                        Some(PresenceType::Unavailable) => session.remove_directed(&to),
                        _ => {}
                    }
                }
                Box::pin(self.deliver_to_service(&domain, el)).await
            }
            Destination::Account(_) | Destination::Session(_) if kind == StanzaKind::Presence => {
                Box::pin(self.route_presence(origin, el, to)).await
            }
            Destination::Account(bare) => self.route_to_account(origin, kind, el, bare).await,
            Destination::Session(full) => self.route_to_session(origin, kind, el, full).await,
            Destination::Remote(_) => Box::pin(self.route_to_remote(origin, kind, el, to)).await,
        }
    }

    /// Runs the stanza hooks of `point` in priority order until one handles the stanza.
    async fn run_hooks(
        self: &Arc<Self>,
        point: HookPoint,
        origin: Origin<'_>,
        to: &Jid,
        el: &mut Element,
    ) -> Hooked {
        if !self.modules().has_stanza_hooks() {
            return Hooked::Pass;
        }
        for (_, hook) in self.modules().stanza_hooks(point) {
            let ev = StanzaEvent {
                server: self,
                origin,
                to,
                stanza: el,
            };
            if hook.on_stanza(ev).await == Hooked::Handled {
                return Hooked::Handled;
            }
        }
        Hooked::Pass
    }

    /// Hands a stanza to the hosted service at `domain`, in the sender's task, so stanzas from
    /// one sender reach the service in the order sent.
    async fn deliver_to_service(self: &Arc<Self>, domain: &str, el: Element) {
        // A cluster runs each room (each JID at a service) on one node (docs/cluster.md).
        if let Some(cluster) = self.cluster()
            && let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok())
            && let Some(node) = cluster.service_owner(domain, &to)
        {
            cluster.forward_to_service(&node, domain, el);
            return;
        }
        self.deliver_to_local_service(domain, el).await;
    }

    /// Hands `el` to the hosted service at `domain` on this node, and waits for it: stanzas
    /// from one sender reach a room in the order they were sent. Another node may have
    /// forwarded it here, having routed it up to the service (checks, blocklists and hooks
    /// done there).
    pub async fn deliver_to_local_service(self: &Arc<Self>, domain: &str, el: Element) {
        let Some(entry) = self.modules().service(domain) else {
            return;
        };
        let service = entry.service.clone();
        let ctx = ServiceCtx::new(self, domain);
        service.handle(&ctx, el).await;
    }

    /// Hands a stanza to a hosted service from a path that cannot wait for it (an error reply,
    /// a presence broadcast): the service gets it on a task of its own.
    pub(crate) fn spawn_to_service(&self, domain: &str, el: Element) {
        // A cluster runs each room (each JID at a service) on one node (docs/cluster.md).
        if let Some(cluster) = self.cluster()
            && let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok())
            && let Some(node) = cluster.service_owner(domain, &to)
        {
            cluster.forward_to_service(&node, domain, el);
            return;
        }
        self.spawn_to_local_service(domain, el);
    }

    /// Hands `el` to the hosted service at `domain` on this node.
    pub(crate) fn spawn_to_local_service(&self, domain: &str, el: Element) {
        let (Some(server), Some(entry)) = (self.me(), self.modules().service(domain)) else {
            return;
        };
        let service = entry.service.clone();
        let ctx = ServiceCtx::new(&server, domain);
        tokio::spawn(async move { service.handle(&ctx, el).await });
    }

    /// RFC 6120 §10.4: to a domain not served here, over federation. Presence from a local
    /// session gets its local processing first: subscription stanzas change the sender's
    /// roster (RFC 6121 §3, outbound), directed presence is remembered (§4.6.3).
    async fn route_to_remote(
        self: &Arc<Self>,
        origin: Origin<'_>,
        kind: StanzaKind,
        el: Element,
        to: Jid,
    ) {
        if !self.federates() {
            // RFC 6120 §8.3.3.16
            if kind != StanzaKind::Presence
                || PresenceType::of(&el) != Some(PresenceType::Unavailable)
            {
                self.reply_error(
                    origin,
                    &el,
                    StanzaError::new(Condition::RemoteServerNotFound),
                );
            }
            return;
        }
        match origin {
            Origin::Session(session) if kind == StanzaKind::Presence => {
                match (sub_type(&el), PresenceType::of(&el)) {
                    (Some(t), _) => {
                        let user = session.jid().to_bare();
                        self.outbound_subscription(&user, &to.to_bare(), t, el)
                            .await;
                    }
                    (None, Some(PresenceType::Available | PresenceType::Unavailable)) => {
                        self.directed_presence(session, &to, el).await
                    }
                    // Probes and presence errors go as they are.
                    _ => {
                        self.send_remote(el);
                    }
                }
            }
            // A remote server's stanza is never relayed to a third (checked on entry).
            Origin::Remote { .. } => {}
            _ => {
                self.send_remote(el);
            }
        }
    }

    /// Sends a reply (an IQ result, an error) back where its request came from.
    pub fn send_to_origin(&self, origin: Origin<'_>, reply: Element) {
        match origin {
            Origin::Session(session) => {
                let _ = session.deliver(Arc::new(reply));
            }
            Origin::Service { domain, .. } => self.spawn_to_service(domain, reply),
            Origin::Remote { .. } => {
                self.send_remote(reply);
            }
        }
    }

    /// RFC 6121 §8.5.2: to a bare JID of a local account.
    async fn route_to_account(
        self: &Arc<Self>,
        origin: Origin<'_>,
        kind: StanzaKind,
        el: Element,
        bare: BareJid,
    ) {
        if !self.account_exists(&bare).await {
            // XEP-0030 §8 (disco#items to an account): an account that does not exist has no
            // items rather than an error, so strangers cannot tell it from one that hides them.
            let items_request = kind == StanzaKind::Iq
                && IqType::of(&el) == Some(IqType::Get)
                && iq_payload(&el).is_some_and(|p| p.is("query", ns::DISCO_ITEMS))
                && self
                    .modules()
                    .iq_handler(IqTarget::Account, IqType::Get, ns::DISCO_ITEMS)
                    .is_some();
            if items_request {
                let mut query = Element::new("query", ns::DISCO_ITEMS);
                if let Some(node) = iq_payload(&el).and_then(|p| p.attr("node")) {
                    query.set_attr("node", node);
                }
                let reply = iq_result(&el, Some(query));
                self.send_to_origin(origin, reply);
                return;
            }
            // RFC 6121 §8.5.1: no such account.
            match kind {
                StanzaKind::Presence => {}
                StanzaKind::Message | StanzaKind::Iq => {
                    self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
                }
            }
            return;
        }
        match kind {
            StanzaKind::Message => self.deliver_message_to_account(origin, el, &bare).await,
            // Presence is routed by `route_presence`.
            StanzaKind::Presence => {}
            // RFC 6121 §8.5.2.1.3: the server answers IQs to a bare JID on the account's behalf.
            StanzaKind::Iq => {
                let to = Jid::from(bare);
                Box::pin(self.handle_iq(origin, el, &to, &[IqTarget::Account])).await
            }
        }
    }

    /// Presence with a local `to` (RFC 6121 §3 subscriptions, §4.3 probes, §4.6 directed).
    async fn route_presence(self: &Arc<Self>, origin: Origin<'_>, el: Element, to: Jid) {
        let sub = match PresenceType::of(&el) {
            Some(PresenceType::Subscribe) => Some(SubType::Subscribe),
            Some(PresenceType::Subscribed) => Some(SubType::Subscribed),
            Some(PresenceType::Unsubscribe) => Some(SubType::Unsubscribe),
            Some(PresenceType::Unsubscribed) => Some(SubType::Unsubscribed),
            _ => None,
        };
        if let Some(t) = sub {
            // RFC 6121 §3.1.1: subscriptions are between bare JIDs; a user needs none to
            // themselves.
            let contact = to.to_bare();
            match origin {
                Origin::Session(session) => {
                    let user = session.jid().to_bare();
                    if contact != user {
                        self.outbound_subscription(&user, &contact, t, el).await;
                    }
                }
                Origin::Service { from, .. } | Origin::Remote { from, .. } => {
                    // Inbound processing only: a service keeps no roster here, a remote
                    // contact's roster is its own server's (RFC 6121 §3.1.3).
                    let sender = from.to_bare();
                    let mut el = el;
                    el.set_attr("from", sender.to_string());
                    el.set_attr("to", contact.to_string());
                    self.inbound_subscription(&contact, &sender, t, el).await;
                }
            }
            return;
        }
        match PresenceType::of(&el) {
            Some(PresenceType::Probe) => {
                let prober = match origin {
                    Origin::Session(s) => Jid::from(s.jid().clone()),
                    Origin::Service { from, .. } | Origin::Remote { from, .. } => from.clone(),
                };
                self.answer_probe(&prober, &to.to_bare()).await
            }
            Some(PresenceType::Available | PresenceType::Unavailable) => {
                // RFC 6121 §8.5.2.2.2: presence to a nonexistent account is dropped silently.
                if self.account_exists(&to.to_bare()).await {
                    match origin {
                        Origin::Session(session) => self.directed_presence(session, &to, el).await,
                        // Directed presence from a service (RFC 6121 §4.6.2): delivered; the
                        // service tracks what it sent.
                        Origin::Service { .. } | Origin::Remote { .. } => {
                            self.deliver_presence_to(&to, el)
                        }
                    }
                }
            }
            // Presence errors go to the resource they name, if it is there.
            _ => {
                if let Ok(full) = to.try_into_full()
                    && let Some(target) = self.sessions.get(&full)
                {
                    let _ = target.deliver(Arc::new(el));
                }
            }
        }
    }

    /// RFC 6121 §8.5.2.1.1 (available resources) and §8.5.2.2.1 (none: offline storage).
    async fn deliver_message_to_account(
        self: &Arc<Self>,
        origin: Origin<'_>,
        el: Element,
        bare: &BareJid,
    ) {
        let (el, private) = take_private(el);
        let mtype = MessageType::of(&el);
        if mtype == MessageType::Groupchat {
            // RFC 6121 §8.5.2.1.1 and §8.5.2.2.1: a groupchat message to a bare JID is never
            // delivered, whether or not the account has available resources.
            self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
            return;
        }
        let resources = self.sessions.resources(bare);
        // Only available resources with non-negative priority receive bare-JID messages.
        let best = resources
            .iter()
            .filter(|r| r.is_available() && r.priority() >= 0)
            .map(|r| r.priority())
            .max();
        let targets: Vec<&SessionHandle> = match (mtype, best) {
            (MessageType::Error, None) => return,
            (_, None) => Vec::new(),
            // RFC 6121 §8.5.2.1.1: headline to all non-negative resources.
            (MessageType::Headline, Some(_)) => resources
                .iter()
                .filter(|r| r.is_available() && r.priority() >= 0)
                .collect(),
            // Chat: every resource of the highest priority (configurable); normal and
            // error: one of them.
            (_, Some(p)) => {
                let all = mtype == MessageType::Chat
                    && self.config().delivery.chat_to_all_highest_priority;
                resources
                    .iter()
                    .filter(|r| r.is_available() && r.priority() == p)
                    .take(if all { usize::MAX } else { 1 })
                    .collect()
            }
        };
        if targets.is_empty() {
            match mtype {
                // RFC 6121 §8.5.2.2.1: headline is dropped, normal and chat are stored offline
                // (XEP-0160) — committed before we go on.
                MessageType::Headline | MessageType::Error | MessageType::Groupchat => {}
                MessageType::Normal | MessageType::Chat => {
                    if crate::offline::is_storable(&el)
                        && let Err(e) = self.store_offline(bare, &el).await
                    {
                        self.reply_error(origin, &el, e);
                    }
                }
            }
            return;
        }
        let ids: Vec<_> = targets.iter().map(|t| t.id()).collect();
        // XEP-0280 §8: the account's other carbons-enabled resources get a copy.
        if !private {
            self.carbon_received(bare, &el, &ids);
        }
        let shared = Arc::new(el);
        let mut failed = None;
        let mut delivered = false;
        for t in targets {
            match t.deliver(shared.clone()) {
                Ok(()) => delivered = true,
                Err(_) => failed = Some(t),
            }
        }
        if !delivered && let Some(t) = failed {
            Box::pin(self.divert_undelivered(origin, t, &shared)).await;
        }
    }

    /// A message its resource could not take (its queue is full, or it just ended): never
    /// lost if it is worth keeping — offline storage, as if no resource were available
    /// (RFC 6121 §8.5.2.2.1). A hibernating session (XEP-0198) whose queue filled up ends
    /// first, its own queue going to offline storage before this message, so order holds.
    async fn divert_undelivered(
        self: &Arc<Self>,
        origin: Origin<'_>,
        target: &SessionHandle,
        el: &Element,
    ) {
        if !matches!(MessageType::of(el), MessageType::Chat | MessageType::Normal)
            || !crate::offline::is_storable(el)
        {
            return;
        }
        let user = target.jid().to_bare();
        let _order = self.sm.reroute_lock(&user).await;
        self.end_hibernating_session(target, "queue full while hibernating")
            .await;
        if let Err(e) = self.store_offline(&user, el).await {
            self.reply_error(origin, el, e);
        }
    }

    /// RFC 6121 §8.5.3: to a full JID of a local account.
    async fn route_to_session(
        self: &Arc<Self>,
        origin: Origin<'_>,
        kind: StanzaKind,
        el: Element,
        full: FullJid,
    ) {
        if let Some(target) = self.sessions.get(&full) {
            // §8.5.3.1: the resource is connected.
            let mut el = el;
            if kind == StanzaKind::Message {
                let (m, private) = take_private(el);
                el = m;
                // XEP-0280 §8: carbons to the account's other resources.
                if !private {
                    self.carbon_received(&full.to_bare(), &el, &[target.id()]);
                }
            }
            let el = Arc::new(el);
            if target.deliver(el.clone()).is_err() && kind == StanzaKind::Message {
                Box::pin(self.divert_undelivered(origin, &target, &el)).await;
            }
            return;
        }
        let bare = full.to_bare();
        match kind {
            StanzaKind::Message => match MessageType::of(&el) {
                // §8.5.3.2.1: chat is handled as for the bare JID.
                MessageType::Chat => self.route_to_account(origin, kind, el, bare).await,
                // §8.5.3.2.1: normal and groupchat are ignored or bounced; bounced, so the
                // sender learns the resource is gone.
                MessageType::Normal | MessageType::Groupchat => {
                    self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
                }
                // §8.5.3.2.1: headline is silently ignored, and an error is never answered.
                MessageType::Headline | MessageType::Error => {}
            },
            // Presence goes through `route_presence`.
            StanzaKind::Presence => {}
            // §8.5.3.2.2
            StanzaKind::Iq => {
                if IqType::of(&el).is_some_and(IqType::is_request) {
                    self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
                }
            }
        }
    }

    /// Runs the module handler for an IQ, trying `targets` in order. RFC 6120 §8.4: an
    /// unhandled get/set is `service-unavailable`; results and errors are never answered.
    async fn handle_iq(
        self: &Arc<Self>,
        origin: Origin<'_>,
        el: Element,
        to: &Jid,
        targets: &[IqTarget],
    ) {
        let Some(t) = IqType::of(&el) else { return };
        if !t.is_request() {
            return;
        }
        let Some(payload) = iq_payload(&el) else {
            return;
        };
        let domain = to.domain().as_str();
        let handler = targets.iter().find_map(|target| {
            self.modules()
                .iq_handler_for(domain, *target, t, payload.ns())
        });
        let Some(handler) = handler else {
            self.reply_error(origin, &el, StanzaError::new(Condition::ServiceUnavailable));
            return;
        };
        let from = match origin {
            Origin::Session(s) => Jid::from(s.jid().clone()),
            Origin::Service { from, .. } | Origin::Remote { from, .. } => from.clone(),
        };
        let req = IqRequest {
            server: self,
            origin,
            from: &from,
            to,
            stanza: &el,
            payload,
        };
        let mut reply = match handler.handle(req).await {
            Ok(payload) => iq_result(&el, payload),
            Err(e) => error_reply(&el, &e),
        };
        if el.attr("to").is_none() {
            // The request had no `to`: the reply comes from the account (RFC 6120 §10.3.3).
            reply.set_attr("from", to.to_string());
        }
        reply.set_attr("to", from.to_string());
        self.send_to_origin(origin, reply);
    }

    /// Whether a local account exists: an online session proves it, else storage says.
    pub async fn account_exists(&self, bare: &BareJid) -> bool {
        if self.sessions.is_online(bare) {
            return true;
        }
        let Some(node) = bare.node() else {
            return false;
        };
        self.storage
            .accounts
            .exists(bare.domain().as_str(), node.as_str())
            .await
            .unwrap_or(false)
    }

    /// Sends an error reply for `el` back to its origin, unless `el` is itself an error
    /// (RFC 6120 §8.3.1: never answer an error with an error) or an IQ result (RFC 6120 §8.2.3:
    /// a result or error is never answered with a further result or error, wherever it was
    /// addressed: an unknown account, a resource of the server, a remote domain).
    pub fn reply_error(&self, origin: Origin<'_>, el: &Element, err: StanzaError) {
        if is_error(el) || (el.name() == "iq" && IqType::of(el) == Some(IqType::Result)) {
            return;
        }
        let mut reply = error_reply(el, &err);
        let to = match origin {
            Origin::Session(s) => s.jid().to_string(),
            Origin::Service { from, .. } | Origin::Remote { from, .. } => from.to_string(),
        };
        reply.set_attr("to", to);
        self.send_to_origin(origin, reply);
    }
}

/// RFC 6120 §8.2.3 (an IQ has an id and a known type, a get or set exactly one payload) and
/// §8.3.3.1 (a presence type we know); a message's type falls back to `normal` (RFC 6121
/// §5.2.2).
/// The subscription type of a presence stanza (RFC 6121 §3), if it is one.
fn sub_type(el: &Element) -> Option<SubType> {
    match PresenceType::of(el) {
        Some(PresenceType::Subscribe) => Some(SubType::Subscribe),
        Some(PresenceType::Subscribed) => Some(SubType::Subscribed),
        Some(PresenceType::Unsubscribe) => Some(SubType::Unsubscribe),
        Some(PresenceType::Unsubscribed) => Some(SubType::Unsubscribed),
        _ => None,
    }
}

pub(crate) fn check_type_and_id(kind: StanzaKind, el: &Element) -> Result<(), StanzaError> {
    match kind {
        StanzaKind::Iq => {
            let Some(t) = IqType::of(el) else {
                return Err(StanzaError::new(Condition::BadRequest).with_text("invalid iq type"));
            };
            if el.attr("id").is_none() {
                return Err(StanzaError::new(Condition::BadRequest).with_text("missing id"));
            }
            if t.is_request() && iq_payload(el).is_none() {
                return Err(StanzaError::new(Condition::BadRequest)
                    .with_text("iq get/set needs exactly one child"));
            }
            Ok(())
        }
        StanzaKind::Presence => match PresenceType::of(el) {
            Some(_) => Ok(()),
            None => Err(StanzaError::new(Condition::BadRequest).with_text("invalid presence type")),
        },
        StanzaKind::Message => Ok(()),
    }
}

impl Destination {
    /// The hook points a destination has: local ones only (a service gets its stanzas itself,
    /// a remote domain is not ours to hook).
    fn addressed(&self) -> Option<Addressed> {
        match self {
            Destination::Host(_) => Some(Addressed::Host),
            Destination::Account(_) => Some(Addressed::Bare),
            Destination::Session(_) => Some(Addressed::Full),
            Destination::HostResource | Destination::Service(_) | Destination::Remote(_) => None,
        }
    }
}

fn point(kind: StanzaKind, to: Addressed, direction: Direction) -> HookPoint {
    HookPoint {
        kind,
        to,
        direction,
    }
}

/// XEP-0280 §7: a message marked `<private/>` is not carbon-copied on the recipient's side
/// either, and the receiving server removes the mark before delivering it. Returns the
/// message without the mark and whether it had one.
fn take_private(mut el: Element) -> (Element, bool) {
    let private = el.has_child("private", crate::carbons::NS);
    if private {
        el.remove_children(|c| c.is("private", crate::carbons::NS));
    }
    (el, private)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::session::{Closer, Outbound};
    use tokio::sync::mpsc;

    async fn server() -> Arc<Server> {
        let storage = canto_storage::Storage::memory();
        let creds = canto_proto::sasl::Credentials::from_password("pw", 4096);
        for u in ["alice", "bob"] {
            let _ = storage.accounts.create("example.test", u, &creds).await;
        }
        let config = Config {
            hosts: vec!["example.test".into()],
            modules: vec![],
            ..Config::default()
        };
        Server::new(config, storage, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn bind(s: &Server, jid: &str) -> (SessionHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(16);
        let full = FullJid::new(jid).unwrap_or_else(|e| panic!("{e}"));
        let b = s
            .sessions
            .bind(s.sessions.next_id(), full, (tx, 16), Closer::new(), 10);
        (b.unwrap_or_else(|e| panic!("{e}")).handle, rx)
    }

    fn stanza(xml: &str) -> Element {
        let mut p = canto_xml::StreamParser::new(canto_xml::Limits::AUTHENTICATED);
        let mut out = Vec::new();
        let doc = format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
        );
        p.feed(doc.as_bytes(), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        match out.pop() {
            Some(canto_xml::StreamEvent::Stanza(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    fn recv(rx: &mut mpsc::Receiver<Outbound>) -> Option<Arc<Element>> {
        match rx.try_recv() {
            Ok(Outbound::Stanza(e)) => Some(e),
            Err(_) => None,
        }
    }

    fn condition(e: &Element) -> Option<Condition> {
        e.get_child("error", ns::CLIENT)
            .and_then(StanzaError::from_element)
            .map(|e| e.condition)
    }

    /// The routing table: (stanza alice sends, what alice gets back, what bob's session gets).
    #[tokio::test]
    async fn routing_table() {
        type Case = (&'static str, Option<Condition>, bool);
        let cases: &[Case] = &[
            // Full JID online: delivered.
            (
                "<message to='bob@example.test/phone' type='chat'><body>x</body></message>",
                None,
                true,
            ),
            // Full JID offline, chat: as bare; bob's only resource is not available → error.
            (
                // Full JID offline, chat: handled as for the bare JID; no available resource,
                // so stored offline (RFC 6121 §8.5.3.2.1, §8.5.2.2.1): no error.
                "<message to='bob@example.test/gone' type='chat'><body>x</body></message>",
                None,
                false,
            ),
            (
                "<message to='bob@example.test/gone' type='groupchat'/>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            (
                "<message to='bob@example.test/gone' type='headline'/>",
                None,
                false,
            ),
            // RFC 6121 §8.5.3.2.1: only chat falls back to the bare JID; normal (the default
            // type too) is bounced.
            (
                "<message to='bob@example.test/gone' type='normal'><body>x</body></message>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            (
                "<message to='bob@example.test/gone'><body>x</body></message>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            (
                "<iq to='bob@example.test/gone' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            (
                "<iq to='bob@example.test/phone' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                None,
                true,
            ),
            // Unknown account.
            (
                "<message to='nobody@example.test'><body>x</body></message>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            ("<presence to='nobody@example.test'/>", None, false),
            (
                "<iq to='nobody@example.test' type='get' id='2'><x xmlns='urn:x'/></iq>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            // Errors are never answered with errors.
            (
                "<message to='nobody@example.test' type='error'/>",
                None,
                false,
            ),
            // Server: unhandled IQ.
            (
                "<iq to='example.test' type='get' id='3'><x xmlns='urn:unknown'/></iq>",
                Some(Condition::ServiceUnavailable),
                false,
            ),
            ("<iq type='result' id='zz' to='example.test'/>", None, false),
            ("<iq type='error' id='zz'/>", None, false),
            // RFC 6120 §8.2.3: results are never answered, wherever they were addressed.
            (
                "<iq type='result' id='zz' to='nobody@example.test'/>",
                None,
                false,
            ),
            (
                "<iq type='result' id='zz' to='example.test/res'/>",
                None,
                false,
            ),
            (
                "<iq type='result' id='zz' to='bob@example.test/gone'/>",
                None,
                false,
            ),
            (
                "<iq type='result' id='zz' to='remote.example'/>",
                None,
                false,
            ),
            // Bad requests.
            (
                "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
                Some(Condition::BadRequest),
                false,
            ),
            (
                "<iq type='bogus' id='1'/>",
                Some(Condition::BadRequest),
                false,
            ),
            (
                "<iq type='get' id='1'/>",
                Some(Condition::BadRequest),
                false,
            ),
            (
                "<iq type='set' id='1'><a xmlns='x'/><b xmlns='y'/></iq>",
                Some(Condition::BadRequest),
                false,
            ),
            (
                "<presence type='bogus'/>",
                Some(Condition::BadRequest),
                false,
            ),
            (
                "<message to='@example.test'/>",
                Some(Condition::JidMalformed),
                false,
            ),
            // Remote.
            (
                "<message to='someone@remote.example'><body>x</body></message>",
                Some(Condition::RemoteServerNotFound),
                false,
            ),
        ];
        let s = server().await;
        let (alice, mut arx) = bind(&s, "alice@example.test/home");
        let (_bob, mut brx) = bind(&s, "bob@example.test/phone");
        for (xml, want_err, bob_gets) in cases {
            s.route_from_client(&alice, stanza(xml))
                .await
                .unwrap_or_else(|e| panic!("{xml}: {e:?}"));
            let back = recv(&mut arx);
            assert_eq!(
                back.as_deref().and_then(condition),
                *want_err,
                "{xml}: alice got {back:?}"
            );
            let got = recv(&mut brx);
            assert_eq!(got.is_some(), *bob_gets, "{xml}: bob got {got:?}");
            if let Some(g) = got {
                assert_eq!(g.attr("from"), Some("alice@example.test/home"), "{xml}");
            }
        }
    }

    #[tokio::test]
    async fn forged_from_is_a_stream_error() {
        let s = server().await;
        let (alice, _arx) = bind(&s, "alice@example.test/home");
        let (_bob, mut brx) = bind(&s, "bob@example.test/phone");
        let r = s
            .route_from_client(
                &alice,
                stanza("<message from='bob@example.test/x' to='bob@example.test/phone'/>"),
            )
            .await;
        assert_eq!(
            r.err().map(|e| e.condition),
            Some(StreamCondition::InvalidFrom)
        );
        assert!(recv(&mut brx).is_none());
        // Her own bare or full JID is fine.
        let r = s
            .route_from_client(
                &alice,
                stanza("<message from='alice@example.test' to='bob@example.test/phone'/>"),
            )
            .await;
        assert!(r.is_ok());
        assert_eq!(
            recv(&mut brx)
                .and_then(|e| e.attr("from").map(str::to_string))
                .as_deref(),
            Some("alice@example.test/home")
        );
    }

    #[tokio::test]
    async fn bare_jid_message_goes_to_highest_nonnegative_priority() {
        let s = server().await;
        let (alice, _a) = bind(&s, "alice@example.test/home");
        let (b1, mut r1) = bind(&s, "bob@example.test/one");
        let (b2, mut r2) = bind(&s, "bob@example.test/two");
        let (b3, mut r3) = bind(&s, "bob@example.test/three");
        s.route_from_client(&b1, stanza("<presence><priority>1</priority></presence>"))
            .await
            .ok();
        s.route_from_client(&b2, stanza("<presence><priority>5</priority></presence>"))
            .await
            .ok();
        s.route_from_client(&b3, stanza("<presence><priority>-1</priority></presence>"))
            .await
            .ok();
        while recv(&mut r1).is_some() || recv(&mut r2).is_some() || recv(&mut r3).is_some() {}
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test' type='chat'><body>hi</body></message>"),
        )
        .await
        .ok();
        assert!(recv(&mut r1).is_none());
        assert!(recv(&mut r2).is_some());
        assert!(recv(&mut r3).is_none());
    }

    /// A module with hooks that record what they saw, for the module API's tests.
    struct Probe {
        log: Arc<std::sync::Mutex<Vec<String>>>,
    }

    struct Recording {
        name: &'static str,
        answer: crate::module::Hooked,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl crate::module::StanzaHook for Recording {
        async fn on_stanza(&self, ev: crate::module::StanzaEvent<'_>) -> crate::module::Hooked {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("{} {}", self.name, ev.to));
            }
            ev.stanza.set_attr("seen-by", self.name);
            self.answer
        }
    }

    #[async_trait::async_trait]
    impl crate::module::SessionHook for Recording {
        async fn on_session(
            &self,
            _server: &Arc<Server>,
            session: &FullJid,
            event: crate::module::SessionEvent<'_>,
        ) {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("{} {session} {event:?}", self.name));
            }
        }
    }

    #[async_trait::async_trait]
    impl crate::module::Timer for Recording {
        async fn tick(&self, _server: &Arc<Server>) {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("{} tick", self.name));
            }
        }
    }

    struct Pong(&'static str);

    #[async_trait::async_trait]
    impl crate::module::IqHandler for Pong {
        async fn handle(&self, _req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
            Ok(Some(Element::new("pong", self.0)))
        }
    }

    impl crate::module::Module for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn specs(&self) -> &'static [crate::module::Spec] {
            &[]
        }
        fn load(&self, ctx: &mut crate::module::ModuleCtx<'_>) -> Result<(), String> {
            use crate::module::{Hooked, StanzaHook};
            let hook = |name, answer| {
                Arc::new(Recording {
                    name,
                    answer,
                    log: self.log.clone(),
                })
            };
            let bare_in = point(StanzaKind::Message, Addressed::Bare, Direction::In);
            // Registered out of order: priority decides, not load order.
            ctx.hook_stanza(
                bare_in,
                1,
                hook("low", Hooked::Handled) as Arc<dyn StanzaHook>,
            );
            ctx.hook_stanza(
                bare_in,
                10,
                hook("high", Hooked::Pass) as Arc<dyn StanzaHook>,
            );
            ctx.hook_stanza(
                bare_in,
                -5,
                hook("never", Hooked::Pass) as Arc<dyn StanzaHook>,
            );
            let full_out = point(StanzaKind::Message, Addressed::Full, Direction::Out);
            ctx.hook_stanza(
                full_out,
                0,
                hook("out", Hooked::Pass) as Arc<dyn StanzaHook>,
            );
            // Messages and presence to the host itself: a module can claim them.
            let host_in = point(StanzaKind::Presence, Addressed::Host, Direction::In);
            ctx.hook_stanza(
                host_in,
                0,
                hook("host", Hooked::Handled) as Arc<dyn StanzaHook>,
            );
            ctx.hook_session(0, hook("session", Hooked::Pass));
            ctx.add_timer(
                std::time::Duration::from_secs(60),
                hook("timer", Hooked::Pass),
            )?;
            ctx.hook_iq(
                IqTarget::Host,
                IqType::Get,
                "urn:t",
                Arc::new(Pong("urn:any")),
            )?;
            ctx.hook_iq_for(
                "example.test",
                IqTarget::Host,
                IqType::Get,
                "urn:t",
                Arc::new(Pong("urn:this-host")),
            )?;
            Ok(())
        }
    }

    async fn probed_server() -> (Arc<Server>, Arc<std::sync::Mutex<Vec<String>>>) {
        let storage = canto_storage::Storage::memory();
        let creds = canto_proto::sasl::Credentials::from_password("pw", 4096);
        for u in ["alice", "bob"] {
            let _ = storage.accounts.create("example.test", u, &creds).await;
        }
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = Config {
            hosts: vec!["example.test".into(), "other.test".into()],
            modules: vec!["probe".into()],
            ..Config::default()
        };
        let module: Arc<dyn crate::module::Module> = Arc::new(Probe { log: log.clone() });
        let s = Server::new(config, storage, &[module]).unwrap_or_else(|e| panic!("{e}"));
        (s, log)
    }

    fn take(log: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
        log.lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn stanza_hooks_run_by_priority_and_handled_stops_routing() {
        let (s, log) = probed_server().await;
        let (alice, _a) = bind(&s, "alice@example.test/home");
        let (b1, mut r1) = bind(&s, "bob@example.test/one");
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        while recv(&mut r1).is_some() {}
        take(&log);
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test' type='chat'><body>x</body></message>"),
        )
        .await
        .ok();
        // high (10) passes, low (1) handles, never (-5) is not reached; the router delivers
        // nothing after a hook handled the stanza.
        assert_eq!(
            take(&log),
            vec!["high bob@example.test", "low bob@example.test"]
        );
        assert!(recv(&mut r1).is_none());
        // To the full JID: the Out hook sees it (and may change it), nothing hooks Full/In.
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test/one' type='chat'><body>x</body></message>"),
        )
        .await
        .ok();
        assert_eq!(take(&log), vec!["out bob@example.test/one"]);
        let got = recv(&mut r1);
        assert_eq!(got.as_ref().and_then(|m| m.attr("seen-by")), Some("out"));
        // Presence to the host reaches the module hooked there (the router alone drops it).
        s.route_from_client(&alice, stanza("<presence to='example.test'/>"))
            .await
            .ok();
        assert_eq!(take(&log), vec!["host example.test"]);
    }

    #[tokio::test]
    async fn iq_handlers_for_one_domain_come_before_those_for_every_host() {
        let (s, _log) = probed_server().await;
        let (alice, mut a) = bind(&s, "alice@example.test/home");
        for (host, want) in [("example.test", "urn:this-host"), ("other.test", "urn:any")] {
            let iq = format!("<iq type='get' id='1' to='{host}'><q xmlns='urn:t'/></iq>");
            s.route_from_client(&alice, stanza(&iq)).await.ok();
            let r = recv(&mut a);
            let ns = r
                .as_ref()
                .and_then(|r| r.children().next().map(|c| c.ns().to_string()));
            assert_eq!(ns.as_deref(), Some(want), "{host}: {r:?}");
        }
    }

    #[tokio::test]
    async fn session_hooks_hear_bound_available_unavailable_and_destroyed() {
        let (s, log) = probed_server().await;
        let (b1, _r1) = bind(&s, "bob@example.test/one");
        s.resource_bound(&b1).await;
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        s.route_from_client(
            &b1,
            stanza("<presence type='unavailable'><status>bye</status></presence>"),
        )
        .await
        .ok();
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        s.destroy_session(&b1, "test");
        // Destroy's hooks run on a task of their own.
        for _ in 0..100 {
            if log.lock().map(|l| l.len() >= 6).unwrap_or(false) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let jid = "bob@example.test/one";
        assert_eq!(
            take(&log),
            vec![
                format!("session {jid} Bound"),
                format!("session {jid} Available"),
                format!("session {jid} Unavailable {{ status: Some(\"bye\") }}"),
                format!("session {jid} Available"),
                format!("session {jid} Unavailable {{ status: None }}"),
                format!("session {jid} Destroyed"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timers_run_at_start_and_every_period_until_the_server_goes() {
        let (s, log) = probed_server().await;
        s.start_timers();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(take(&log), vec!["timer tick"]);
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        assert_eq!(take(&log), vec!["timer tick", "timer tick"]);
        drop(s);
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        assert!(take(&log).is_empty(), "a timer outlived its server");
    }

    #[tokio::test]
    async fn groupchat_to_a_bare_jid_is_refused_even_with_available_resources() {
        let s = server().await;
        let (alice, mut a) = bind(&s, "alice@example.test/home");
        let (b1, mut r1) = bind(&s, "bob@example.test/one");
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        while recv(&mut r1).is_some() {}
        // RFC 6121 §8.5.2.1.1: never delivered; the sender gets service-unavailable.
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test' type='groupchat'><body>x</body></message>"),
        )
        .await
        .ok();
        assert!(recv(&mut r1).is_none());
        assert_eq!(
            recv(&mut a).as_deref().and_then(condition),
            Some(Condition::ServiceUnavailable)
        );
        // A chat message to the same bare JID is delivered (the rule is about groupchat).
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test' type='chat'><body>x</body></message>"),
        )
        .await
        .ok();
        assert!(recv(&mut r1).is_some());
    }

    #[tokio::test]
    async fn one_element_is_shared_by_every_delivery() {
        // One allocation per stanza (ARCHITECTURE.md, "Delivery and slow readers"): the element
        // is allocated once, whatever the number of targets; each connection serializes it once
        // into its own write buffer.
        let s = server().await;
        let (alice, _a) = bind(&s, "alice@example.test/home");
        let (b1, mut r1) = bind(&s, "bob@example.test/one");
        let (b2, mut r2) = bind(&s, "bob@example.test/two");
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        s.route_from_client(&b2, stanza("<presence/>")).await.ok();
        while recv(&mut r1).is_some() || recv(&mut r2).is_some() {}
        s.route_from_client(
            &alice,
            stanza("<message to='bob@example.test' type='chat'><body>x</body></message>"),
        )
        .await
        .ok();
        let (m1, m2) = (recv(&mut r1), recv(&mut r2));
        assert!(
            matches!((&m1, &m2), (Some(a), Some(b)) if Arc::ptr_eq(a, b)),
            "{m1:?} {m2:?}"
        );
    }

    #[tokio::test]
    async fn destroy_broadcasts_unavailable_once_and_leaves_the_table() {
        let s = server().await;
        let (b1, _r1) = bind(&s, "bob@example.test/one");
        let (b2, mut r2) = bind(&s, "bob@example.test/two");
        s.route_from_client(&b2, stanza("<presence/>")).await.ok();
        s.route_from_client(&b1, stanza("<presence/>")).await.ok();
        // Both resources' presence reached b2 (its own too, RFC 6121 §4.2.2); drain it.
        let mut seen = 0;
        while let Some(p) = recv(&mut r2) {
            assert_eq!(p.attr("type"), None);
            seen += 1;
        }
        assert_eq!(seen, 2);
        s.destroy_session(&b1, "test");
        let p = recv(&mut r2);
        assert_eq!(p.as_ref().and_then(|p| p.attr("type")), Some("unavailable"));
        assert_eq!(
            p.as_ref().and_then(|p| p.attr("from")),
            Some("bob@example.test/one")
        );
        assert_eq!(s.sessions.count(), 1);
        s.destroy_session(&b1, "again");
        assert!(recv(&mut r2).is_none());
    }
}
