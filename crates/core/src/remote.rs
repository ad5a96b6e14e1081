//! The seam to other servers (RFC 6120 §10.4: a domain not served here). The core decides what
//! leaves and accepts what arrives; the network layer (`canto-net`'s s2s manager) implements
//! [`RemoteRouter`] — connections, authentication, queues — and hands inbound stanzas, already
//! checked against what the connection authenticated, to [`Server::route_from_remote`].

use std::sync::Arc;

use canto_stanza::stanza::{error_reply, is_error};
use canto_stanza::{Condition, IqType, Jid, PresenceType, StanzaError, StanzaKind, ns, parse_jid};
use canto_xml::Element;
use tracing::{debug, warn};

use crate::module::Origin;
use crate::server::Server;

/// Sends stanzas to other servers. Never waits: a stanza that cannot be sent comes back as an
/// error through [`Server::bounce_remote`].
pub trait RemoteRouter: Send + Sync {
    /// Queues `stanza` (whose `from` is at the local domain `from_domain`) for the remote
    /// domain `to_domain`.
    fn send(&self, from_domain: &str, to_domain: &str, stanza: Element);
}

/// Renames `jabber:server` to `jabber:client` in a stanza from another server (the stanza and
/// its children in the stream's default namespace), so the router sees one namespace whatever
/// the stream (RFC 6120 §4.8.3: the content namespace differs, the stanzas do not).
pub fn from_server_namespace(el: &mut Element) {
    if el.ns() == ns::SERVER {
        el.set_ns(ns::CLIENT);
    }
    for c in el.children_mut() {
        from_server_namespace(c);
    }
}

impl Server {
    /// Installs the federation layer (once, at startup), held weakly: the caller keeps it
    /// alive. Without one, stanzas to remote domains are answered with
    /// `remote-server-not-found`.
    pub fn set_remote_router(&self, router: Arc<dyn RemoteRouter>) {
        let _ = self.remote.set(Arc::downgrade(&router));
    }

    fn remote_router(&self) -> Option<Arc<dyn RemoteRouter>> {
        self.remote.get().and_then(std::sync::Weak::upgrade)
    }

    /// Whether stanzas to remote domains can leave this server.
    pub fn federates(&self) -> bool {
        self.remote_router().is_some()
    }

    /// Hands `el` (with `from` at a local domain and `to` at a remote one) to the federation
    /// layer. Returns false when there is none (the caller answers, if it should).
    pub(crate) fn send_remote(&self, el: Element) -> bool {
        let Some(router) = self.remote_router() else {
            return false;
        };
        let from = el.attr("from").and_then(|f| parse_jid(f).ok());
        let to = el.attr("to").and_then(|t| parse_jid(t).ok());
        match (from, to) {
            (Some(f), Some(t)) => {
                router.send(f.domain().as_str(), t.domain().as_str(), el);
                true
            }
            _ => {
                warn!("stanza to a remote domain without a valid from/to; dropped");
                true
            }
        }
    }

    /// Sends a stanza a module built — `from` a local JID (a host's, an account's, a hosted
    /// service's), `to` a JID at a remote domain — over federation, as the router would after
    /// its own checks; the module has applied its rules (who may see what, blocking). Like
    /// [`Server::deliver_to_session`] for local resources, this is delivery only and keeps
    /// module code off the session table and the federation layer. Returns whether it was
    /// handed over: false when `to` is not remote, `from` not local, or nothing federates.
    pub fn send_to_remote(&self, el: Element) -> bool {
        let local = |j: &Jid| {
            let d = j.domain().as_str();
            self.serves(d) || self.modules().service(d).is_some()
        };
        let from = el.attr("from").and_then(|f| parse_jid(f).ok());
        let to = el.attr("to").and_then(|t| parse_jid(t).ok());
        match (from, to) {
            (Some(f), Some(t)) if local(&f) && !local(&t) => self.send_remote(el),
            _ => false,
        }
    }

    /// Routes a stanza that arrived from the remote domain `remote_domain` over a stream that
    /// authenticated it. The network layer has checked the stream-level rules (RFC 6120 §8.1.1.2,
    /// §8.1.2.2): a `to` at a domain served here (a host, a hosted service or a component) and a
    /// `from` at `remote_domain`. `el` is in the `jabber:client` namespace
    /// ([`from_server_namespace`]).
    pub async fn route_from_remote(self: &Arc<Self>, remote_domain: &str, el: Element) {
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            return;
        };
        crate::metrics::stanza_in(kind);
        let from = match el.attr("from").map(parse_jid) {
            Some(Ok(j)) if j.domain().as_str().eq_ignore_ascii_case(remote_domain) => j,
            _ => {
                debug!(
                    remote = remote_domain,
                    "stanza from a remote server with a bad from; dropped"
                );
                return;
            }
        };
        let origin = Origin::Remote {
            domain: remote_domain,
            from: &from,
        };
        let to = match el.attr("to").map(parse_jid) {
            Some(Ok(j)) => j,
            Some(Err(e)) => {
                // RFC 6120 §8.3.3.8
                let mut bad = el;
                bad.remove_attr("to");
                self.reply_error(origin, &bad, e);
                return;
            }
            None => {
                // RFC 6120 §8.1.1.2: a stanza between servers always has a `to`.
                self.reply_error(origin, &el, StanzaError::new(Condition::BadRequest));
                return;
            }
        };
        if !self.serves(to.domain().as_str())
            && self.modules().service(to.domain().as_str()).is_none()
        {
            // Not ours: never relayed on to a third server (RFC 6120 §13.10: no open relay).
            self.reply_error(origin, &el, StanzaError::new(Condition::ItemNotFound));
            return;
        }
        if let Err(e) = crate::router::check_type_and_id(kind, &el) {
            self.reply_error(origin, &el, e);
            return;
        }
        let mut el = el;
        if el.attr("to") != Some(to.as_str()) {
            el.set_attr("to", to.to_string());
        }
        if el.attr("from") != Some(from.as_str()) {
            el.set_attr("from", from.to_string());
        }
        self.route_addressed(origin, kind, el, to).await;
    }

    /// A stanza for a remote domain could not be delivered (no such server, a timeout, a queue
    /// over its limit): the sender gets `cond` from the address it wrote to (RFC 6120
    /// §8.3.3.16, §8.3.3.17), unless the stanza is itself an error or a result, or presence
    /// other than a subscription request (RFC 6120 §8.3.1, RFC 6121 §4.3.2 for probes).
    pub async fn bounce_remote(self: &Arc<Self>, el: Element, cond: Condition) {
        if is_error(&el) {
            return;
        }
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            return;
        };
        match kind {
            StanzaKind::Iq if IqType::of(&el) == Some(IqType::Result) => return,
            StanzaKind::Presence if PresenceType::of(&el) != Some(PresenceType::Subscribe) => {
                return;
            }
            _ => {}
        }
        let (Some(from), Some(to)) = (
            el.attr("from").and_then(|f| parse_jid(f).ok()),
            el.attr("to").and_then(|t| parse_jid(t).ok()),
        ) else {
            return;
        };
        if !self.serves(from.domain().as_str())
            && self.modules().service(from.domain().as_str()).is_none()
        {
            return;
        }
        let reply = error_reply(&el, &StanzaError::new(cond));
        let origin = Origin::Remote {
            domain: to.domain().as_str(),
            from: &to,
        };
        // The error comes from the address the stanza was for and goes to its sender.
        let mut reply = reply;
        reply.set_attr("from", to.to_string());
        reply.set_attr("to", from.to_string());
        self.route_addressed(origin, kind, reply, from).await;
    }
}
