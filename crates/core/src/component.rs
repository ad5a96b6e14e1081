//! External components (XEP-0114): each `[components."DOMAIN"]` is a hosted service on the
//! routing seam (ARCHITECTURE.md, "Origins, destinations and hooks") whose stanzas go to the
//! one connection that has authenticated as the component, and whose stanzas enter the router
//! through [`Server::route_from_component`] as a service's do. The connection is `canto-net`'s
//! (`component.rs`): it finds the component with [`Server::component`] and holds an
//! [`Attachment`] while it is the component's.
//!
//! With no connection, stanzas to the component are answered as Prosody's mod_component does:
//! `remote-server-timeout` (type `wait`) with Prosody's `<not-connected/>`, except errors, IQ
//! results and unavailable presence; and, when the component has a `name`, a disco#info request
//! to its domain is answered with a `component/generic` identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use canto_stanza::stanza::{error_reply, iq_payload, iq_result, is_error};
use canto_stanza::{
    Condition, ErrorType, IqType, PresenceType, StanzaError, StanzaKind, StreamCondition,
    StreamError, ns, parse_jid,
};
use canto_xml::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::module::{ModuleCtx, Origin, Service, ServiceCtx};
use crate::server::Server;
use crate::session::Closer;

pub use canto_proto::component::NS;

/// Prosody's namespace for the `<not-connected/>` condition of a bounce from a component that
/// is not connected (mod_component), kept so clients that know it recognise it.
pub const NS_NOT_CONNECTED: &str = "xmpp:prosody.im/protocol/component";

/// One configured external component: a hosted service whose stanzas go to the connection
/// attached to it.
pub struct Component {
    /// The component's domain, normalized.
    domain: String,
    /// Its key in `[components]`, as configured (for the secret, which a reload may change).
    key: String,
    /// Its `name`, for disco (may be empty).
    name: String,
    /// The connection that is the component now, if any (XEP-0114: one per component).
    link: Mutex<Option<Arc<Link>>>,
    next_id: AtomicU64,
}

/// The connected component as the service sees it: its queue and how to close it.
struct Link {
    id: u64,
    tx: mpsc::Sender<Arc<Element>>,
    closer: Arc<Closer>,
}

/// Another connection is already the component (XEP-0114 §3: `<conflict/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyConnected;

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("domain", &self.domain)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Component {
    /// The component's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The shared secret of the handshake in `config` (the one in force: a reload may change
    /// it for the next handshake). `None` if the component is no longer configured.
    pub fn secret<'c>(&self, config: &'c Config) -> Option<&'c str> {
        config
            .components
            .get(&self.key)
            .map(|c| c.secret.as_str())
            .filter(|s| !s.is_empty())
    }

    /// Whether a connection is the component now.
    pub fn is_connected(&self) -> bool {
        self.link.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Makes the calling connection the component: stanzas for it go to the returned queue
    /// (`queue` stanzas at most; a full queue closes the connection with `policy-violation`
    /// through `closer`). Refused while another connection is the component: as Prosody's
    /// default (`component_conflict_resolve = "kick_new"`), the new one is turned away.
    pub fn attach(
        self: &Arc<Self>,
        queue: usize,
        closer: Arc<Closer>,
    ) -> Result<(Attachment, mpsc::Receiver<Arc<Element>>), AlreadyConnected> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.link.lock().map_err(|_| AlreadyConnected)?;
        if slot.is_some() {
            return Err(AlreadyConnected);
        }
        *slot = Some(Arc::new(Link { id, tx, closer }));
        drop(slot);
        info!(component = %self.domain, "component connected");
        Ok((
            Attachment {
                component: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Takes the link with `id` away (not a newer one).
    fn detach(&self, id: u64) -> bool {
        let Ok(mut slot) = self.link.lock() else {
            return false;
        };
        if slot.as_ref().is_some_and(|l| l.id == id) {
            *slot = None;
            return true;
        }
        false
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link.lock().ok().and_then(|l| l.clone())
    }

    /// The answer to `el` while the component is not connected, if it gets one.
    fn unavailable_reply(&self, el: &Element) -> Option<Element> {
        // RFC 6120 §8.3.1 and §8.2.3: errors and IQ results are never answered.
        if is_error(el) || (el.name() == "iq" && IqType::of(el) == Some(IqType::Result)) {
            return None;
        }
        // An unavailable presence (a user logging off) is not bounced: the router treats a
        // remote domain it cannot reach the same way. Prosody bounces these too.
        if el.name() == "presence" && PresenceType::of(el) == Some(PresenceType::Unavailable) {
            return None;
        }
        // Prosody's mod_component answers disco#info on the component's domain itself when
        // the component has a name, so it shows up in service discovery while away.
        if !self.name.is_empty()
            && el.name() == "iq"
            && IqType::of(el) == Some(IqType::Get)
            && el.attr("to") == Some(self.domain.as_str())
            && let Some(q) = iq_payload(el)
            && q.is("query", ns::DISCO_INFO)
            && q.attr("node").is_none_or(str::is_empty)
        {
            let query = Element::new("query", ns::DISCO_INFO)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "component")
                        .with_attr("type", "generic")
                        .with_attr("name", self.name.as_str()),
                )
                .with_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
            return Some(iq_result(el, Some(query)));
        }
        // Prosody's mod_component: remote-server-timeout, type wait (RFC 6120 §8.3.3.16: the
        // service named by the address could not be reached; retry later), with its
        // <not-connected/> condition.
        let err = StanzaError::new(Condition::RemoteServerTimeout)
            .with_type(ErrorType::Wait)
            .with_text("component not connected")
            .with_app(Element::new("not-connected", NS_NOT_CONNECTED))
            .with_by(self.domain.as_str());
        Some(error_reply(el, &err))
    }
}

#[async_trait::async_trait]
impl Service for Component {
    async fn handle(&self, ctx: &ServiceCtx, stanza: Element) {
        let el = match self.current() {
            Some(link) => match link.tx.try_send(Arc::new(stanza)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(el)) => {
                    // A component that stopped reading: closed, as a slow client is
                    // (ARCHITECTURE.md, "Delivery and slow readers"), never an unbounded queue.
                    warn!(component = %self.domain, "component queue full; closing it");
                    crate::metrics::queue_drop(crate::metrics::DROP_COMPONENT_QUEUE);
                    link.closer.close(
                        StreamError::new(StreamCondition::PolicyViolation)
                            .with_text("too many stanzas queued for the component"),
                    );
                    el
                }
                Err(mpsc::error::TrySendError::Closed(el)) => el,
            },
            None => Arc::new(stanza),
        };
        let el = Arc::unwrap_or_clone(el);
        if let Some(reply) = self.unavailable_reply(&el) {
            debug!(component = %self.domain, "component not connected; answered");
            ctx.send(reply).await;
        }
    }
}

/// A connection's hold on a component ([`Component::attach`]). Dropping it detaches the
/// component (a panicking connection task too); [`Attachment::finish`] also answers what was
/// still queued.
pub struct Attachment {
    component: Arc<Component>,
    id: u64,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("component", &self.component.domain)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// The component's domain.
    pub fn domain(&self) -> &str {
        &self.component.domain
    }

    /// Ends the connection's hold: later stanzas get the not-connected answer, and those
    /// still in `rx` (queued but never written) get it now, so no request goes unanswered.
    pub async fn finish(self, server: &Arc<Server>, mut rx: mpsc::Receiver<Arc<Element>>) {
        let component = self.component.clone();
        drop(self);
        rx.close();
        let mut bounced = 0usize;
        while let Ok(el) = rx.try_recv() {
            if let Some(reply) = component.unavailable_reply(&el) {
                server.route_from_service(&component.domain, reply).await;
                bounced += 1;
            }
        }
        if bounced > 0 {
            debug!(component = %component.domain, bounced, "queued stanzas answered");
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.component.detach(self.id) {
            info!(component = %self.component.domain, "component disconnected");
        }
    }
}

/// The configured components, by domain (kept beside the hosted services in the module table).
pub type Components = HashMap<String, Arc<Component>>;

/// Registers every `[components."DOMAIN"]` as a hosted service, listed in disco#items of its
/// `parent` (the first host when empty). Called once at load, after the modules, so a domain a
/// module serves already (`conference.HOST`…) is refused by name.
pub(crate) fn register(ctx: &mut ModuleCtx<'_>) -> Result<Components, String> {
    let config = ctx.config().clone();
    let mut out = Components::new();
    for (key, c) in &config.components {
        let domain = canto_stanza::jid::normalize_domain(key)
            .ok_or_else(|| format!("`components.\"{key}\"` is not a domain name"))?;
        let parent = if c.parent.is_empty() {
            config.hosts.first().cloned().unwrap_or_default()
        } else {
            config
                .hosts
                .iter()
                .find(|h| h.eq_ignore_ascii_case(&c.parent))
                .cloned()
                .unwrap_or_else(|| c.parent.clone())
        };
        let component = Arc::new(Component {
            domain: domain.clone(),
            key: key.clone(),
            name: c.name.clone(),
            link: Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        ctx.add_service(&domain, &parent, &c.name, component.clone())
            .map_err(|e| format!("`components.\"{key}\"`: {e}"))?;
        out.insert(domain, component);
    }
    Ok(out)
}

/// Moves a stanza from the component stream's namespace to the router's: every element in
/// `jabber:component:accept` (the stanza and its unqualified children, such as `<body/>`) is
/// put in `jabber:client`, as Prosody drops the namespace of a component's stanzas. Elements
/// in other namespaces, and what they contain, are left alone.
fn into_client_ns(el: &mut Element) {
    if el.ns() == NS {
        el.set_ns(ns::CLIENT);
    }
    for child in el.children_mut() {
        into_client_ns(child);
    }
}

impl Server {
    /// The external component configured at `domain` (normalized), if any.
    pub fn component(&self, domain: &str) -> Option<Arc<Component>> {
        self.modules().component(domain)
    }

    /// Routes a stanza the component at `domain` sent (its stream namespace,
    /// `jabber:component:accept`, or `jabber:client`). A stream-level fault is returned as the
    /// stream error that closes the connection: no stanza (RFC 6120 §4.9.3.24
    /// `unsupported-stanza-type`), or a `from` that is missing or not at the component's
    /// domain (XEP-0114 §3: "the domain identifier portion of the JID contained in the 'from'
    /// attribute MUST match the hostname of the component"; RFC 6120 §4.9.3.9 `invalid-from`).
    /// A stanza error goes back to the component: no `to` (XEP-0114 §3: stanzas MUST have one;
    /// `bad-request` as Prosody answers), a malformed `to` (RFC 6120 §8.3.3.8), a bad type or id
    /// (RFC 6120 §8.2.3, §8.3.3.1). Everything else goes the hosted services' way
    /// ([`Server::route_from_service`]).
    pub async fn route_from_component(
        self: &Arc<Self>,
        domain: &str,
        mut el: Element,
    ) -> Result<(), StreamError> {
        if el.ns() == NS {
            into_client_ns(&mut el);
        }
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            return Err(StreamError::new(StreamCondition::UnsupportedStanzaType));
        };
        let from = match el.attr("from").map(parse_jid) {
            Some(Ok(j)) if j.domain().as_str() == domain => j,
            _ => {
                warn!(component = domain, from = ?el.attr("from"), "component sent from outside its domain");
                return Err(
                    StreamError::new(StreamCondition::InvalidFrom).with_text(format!(
                        "a component may send only from JIDs at {domain} (XEP-0114 §3)"
                    )),
                );
            }
        };
        let origin = Origin::Service {
            domain,
            from: &from,
        };
        let bad_to = match el.attr("to").map(parse_jid) {
            None => Some(
                StanzaError::new(Condition::BadRequest)
                    .with_text("a component's stanzas must have a 'to' (XEP-0114 §3)"),
            ),
            Some(Err(e)) => {
                el.remove_attr("to");
                Some(e)
            }
            Some(Ok(_)) => None,
        };
        if let Some(e) = bad_to.or_else(|| crate::router::check_type_and_id(kind, &el).err()) {
            self.reply_error(origin, &el, e);
            return Ok(());
        }
        self.route_from_service(domain, el).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ComponentConfig;

    async fn server() -> Arc<Server> {
        let mut config = Config {
            hosts: vec!["example.test".into()],
            modules: vec![],
            ..Config::default()
        };
        config.storage.backend = "memory".into();
        config.components.insert(
            "Gw.Example.test".into(),
            ComponentConfig {
                secret: "s3cret".into(),
                parent: String::new(),
                name: "Gateway".into(),
            },
        );
        let storage = canto_storage::Storage::memory();
        let creds = canto_proto::sasl::Credentials::from_password("pw", 4096);
        let _ = storage
            .accounts
            .create("example.test", "alice", &creds)
            .await;
        Server::new(config, storage, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn stanza(xml: &str) -> Element {
        let mut p = canto_xml::StreamParser::new(canto_xml::Limits::AUTHENTICATED);
        let mut ev = Vec::new();
        let doc = format!(
            "<stream:stream xmlns='{NS}' xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
        );
        p.feed(doc.as_bytes(), &mut ev)
            .unwrap_or_else(|e| panic!("{e}"));
        match ev.pop() {
            Some(canto_xml::StreamEvent::Stanza(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    async fn recv(rx: &mut mpsc::Receiver<Arc<Element>>) -> Arc<Element> {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("nothing for the component"))
    }

    fn condition(e: &Element) -> Option<Condition> {
        e.get_child("error", ns::CLIENT)
            .and_then(StanzaError::from_element)
            .map(|e| e.condition)
    }

    #[tokio::test]
    async fn registered_as_a_service_under_the_first_host() {
        let s = server().await;
        let c = s
            .component("gw.example.test")
            .unwrap_or_else(|| panic!("no component"));
        assert_eq!(c.domain(), "gw.example.test");
        assert_eq!(c.secret(&s.config()), Some("s3cret"));
        let listed: Vec<_> = s
            .modules()
            .services_of("example.test")
            .iter()
            .map(|e| (e.domain.clone(), e.name.clone()))
            .collect();
        assert_eq!(
            listed,
            [("gw.example.test".to_string(), "Gateway".to_string())]
        );
        assert!(s.component("other.example.test").is_none());
    }

    #[tokio::test]
    async fn one_connection_at_a_time_and_detach_on_drop() {
        let s = server().await;
        let c = s.component("gw.example.test").unwrap_or_else(|| panic!());
        let (a, _rx) = c.attach(8, Closer::new()).unwrap_or_else(|_| panic!());
        assert!(c.is_connected());
        assert_eq!(
            c.attach(8, Closer::new()).err(),
            Some(AlreadyConnected),
            "XEP-0114 §3: conflict"
        );
        drop(a);
        assert!(!c.is_connected());
        assert!(c.attach(8, Closer::new()).is_ok());
    }

    #[tokio::test]
    async fn namespaces_are_mapped_and_from_must_be_at_the_domain() {
        let s = server().await;
        let c = s.component("gw.example.test").unwrap_or_else(|| panic!());
        let (_a, mut rx) = c.attach(8, Closer::new()).unwrap_or_else(|_| panic!());
        // The component talks to itself (a JID at its own domain): the stanza comes back in
        // jabber:client, its children too, a foreign namespace untouched.
        let el = stanza(
            "<message from='bob@gw.example.test' to='x@gw.example.test'><body>hi</body><x xmlns='urn:x'><y/></x></message>",
        );
        assert!(s.route_from_component("gw.example.test", el).await.is_ok());
        let got = recv(&mut rx).await;
        assert!(got.is("message", ns::CLIENT));
        assert!(got.has_child("body", ns::CLIENT));
        assert!(
            got.get_child("x", "urn:x")
                .is_some_and(|x| x.has_child("y", "urn:x"))
        );
        // XEP-0114 §3: another domain, a subdomain, no from: invalid-from.
        for from in [
            Some("alice@example.test"),
            Some("sub.gw.example.test"),
            Some("@@bad"),
            None,
        ] {
            let mut el = stanza("<message to='alice@example.test'><body>x</body></message>");
            if let Some(f) = from {
                el.set_attr("from", f);
            }
            let e = s.route_from_component("gw.example.test", el).await.err();
            assert_eq!(
                e.map(|e| e.condition),
                Some(StreamCondition::InvalidFrom),
                "{from:?}"
            );
        }
        // Not a stanza.
        let e = s
            .route_from_component("gw.example.test", stanza("<foo from='gw.example.test'/>"))
            .await
            .err();
        assert_eq!(
            e.map(|e| e.condition),
            Some(StreamCondition::UnsupportedStanzaType)
        );
    }

    #[tokio::test]
    async fn stanza_errors_go_back_to_the_component() {
        let s = server().await;
        let c = s.component("gw.example.test").unwrap_or_else(|| panic!());
        let (_a, mut rx) = c.attach(8, Closer::new()).unwrap_or_else(|_| panic!());
        // No to: bad-request (XEP-0114 §3, as Prosody).
        let el = stanza(
            "<iq type='get' id='1' from='gw.example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(s.route_from_component("gw.example.test", el).await.is_ok());
        let got = recv(&mut rx).await;
        assert_eq!(condition(&got), Some(Condition::BadRequest));
        assert_eq!(got.attr("to"), Some("gw.example.test"));
        // An IQ without an id.
        let el = stanza(
            "<iq type='get' from='gw.example.test' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(s.route_from_component("gw.example.test", el).await.is_ok());
        assert_eq!(
            condition(&*recv(&mut rx).await),
            Some(Condition::BadRequest)
        );
        // A malformed to.
        let el = stanza("<message from='u@gw.example.test' to='a@b@c'><body>x</body></message>");
        assert!(s.route_from_component("gw.example.test", el).await.is_ok());
        assert_eq!(
            condition(&*recv(&mut rx).await),
            Some(Condition::JidMalformed)
        );
        // To a user that does not exist: the router's answer reaches the component.
        let el = stanza(
            "<iq type='get' id='2' from='u@gw.example.test' to='nobody@example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(s.route_from_component("gw.example.test", el).await.is_ok());
        let got = recv(&mut rx).await;
        assert_eq!(condition(&got), Some(Condition::ServiceUnavailable));
        assert_eq!(got.attr("to"), Some("u@gw.example.test"));
    }

    #[tokio::test]
    async fn not_connected_answers_as_prosody() {
        let s = server().await;
        let c = s.component("gw.example.test").unwrap_or_else(|| panic!());
        let el = |xml: &str| {
            let mut e = stanza(xml);
            into_client_ns(&mut e);
            e
        };
        let cond = |e: Option<Element>| e.as_ref().and_then(condition);
        let msg = el(
            "<message from='alice@example.test/r' to='x@gw.example.test'><body>x</body></message>",
        );
        let reply = c.unavailable_reply(&msg);
        assert_eq!(cond(reply.clone()), Some(Condition::RemoteServerTimeout));
        let reply = reply.unwrap_or_else(|| panic!());
        assert_eq!(reply.attr("from"), Some("x@gw.example.test"));
        assert_eq!(reply.attr("to"), Some("alice@example.test/r"));
        let err = reply
            .get_child("error", ns::CLIENT)
            .unwrap_or_else(|| panic!());
        assert_eq!(err.attr("type"), Some("wait"));
        assert!(err.has_child("not-connected", NS_NOT_CONNECTED));
        let iq = el(
            "<iq type='set' id='1' from='alice@example.test/r' to='gw.example.test'><q xmlns='urn:q'/></iq>",
        );
        assert_eq!(
            cond(c.unavailable_reply(&iq)),
            Some(Condition::RemoteServerTimeout)
        );
        let sub =
            el("<presence type='subscribe' from='alice@example.test' to='x@gw.example.test'/>");
        assert_eq!(
            cond(c.unavailable_reply(&sub)),
            Some(Condition::RemoteServerTimeout)
        );
        for quiet in [
            "<presence type='unavailable' from='alice@example.test/r' to='x@gw.example.test'/>",
            "<message type='error' from='alice@example.test/r' to='x@gw.example.test'/>",
            "<iq type='result' id='1' from='alice@example.test/r' to='gw.example.test'/>",
            "<iq type='error' id='1' from='alice@example.test/r' to='gw.example.test'/>",
        ] {
            assert!(c.unavailable_reply(&el(quiet)).is_none(), "{quiet}");
        }
        // disco#info on the domain, with a name: the identity.
        let info = el(
            "<iq type='get' id='d' from='alice@example.test/r' to='gw.example.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let reply = c.unavailable_reply(&info).unwrap_or_else(|| panic!());
        assert_eq!(reply.attr("type"), Some("result"));
        let id = reply
            .get_child("query", ns::DISCO_INFO)
            .and_then(|q| q.get_child("identity", ns::DISCO_INFO))
            .unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(id.attr("category"), Some("component"));
        assert_eq!(id.attr("name"), Some("Gateway"));
    }

    #[tokio::test]
    async fn queued_stanzas_are_answered_when_the_connection_ends() {
        let s = server().await;
        let c = s.component("gw.example.test").unwrap_or_else(|| panic!());
        let (a, rx) = c.attach(8, Closer::new()).unwrap_or_else(|_| panic!());
        let ctx = ServiceCtx::new(&s, "gw.example.test");
        let msg = stanza(
            "<message from='alice@example.test/r' to='x@gw.example.test'><body>x</body></message>",
        );
        let mut msg = msg;
        into_client_ns(&mut msg);
        c.handle(&ctx, msg.clone()).await;
        // Nobody reads: the connection ends with the message queued, and the sender hears.
        let (tx, mut alice) = mpsc::channel(16);
        let full =
            canto_stanza::FullJid::new("alice@example.test/r").unwrap_or_else(|e| panic!("{e}"));
        let _bound = s
            .sessions
            .bind(s.sessions.next_id(), full, (tx, 16), Closer::new(), 10)
            .unwrap_or_else(|e| panic!("{e}"));
        a.finish(&s, rx).await;
        assert!(!c.is_connected());
        let got = match alice.try_recv() {
            Ok(crate::session::Outbound::Stanza(el)) => el,
            Err(e) => panic!("nothing for alice: {e}"),
        };
        assert_eq!(condition(&got), Some(Condition::RemoteServerTimeout));
        // A full queue closes the link.
        let closer = Closer::new();
        let (_a, _rx) = c.attach(1, closer.clone()).unwrap_or_else(|_| panic!());
        c.handle(&ctx, msg.clone()).await;
        c.handle(&ctx, msg).await;
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), closer.closed())
            .await
            .unwrap_or_else(|_| panic!("not closed"));
        assert_eq!(reason.condition, StreamCondition::PolicyViolation);
    }
}
