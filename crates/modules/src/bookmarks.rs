//! `bookmarks`: XEP-0402 PEP Native Bookmarks, with the XEP-0048 forms of old clients kept in
//! step (Prosody's mod_bookmarks): the bookmarks live once, as items of the PEP node
//! `urn:xmpp:bookmarks:1` (id = room JID); a `<storage xmlns='storage:bookmarks'/>` read or
//! written through XEP-0049 private storage (`#compat`) or the PEP node `storage:bookmarks`
//! (`#compat-pep`) is converted to and from them. Bookmarks an old client left in private
//! storage move to PEP when the account next binds a resource.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{Addressed, Direction, HookPoint, SessionEvent, SessionHook};
use canto_core::{Hooked, Module, ModuleCtx, Origin, Server, Spec, StanzaEvent, StanzaHook};
use canto_stanza::stanza::{error_reply, iq_payload, iq_result};
use canto_stanza::{BareJid, Condition, FullJid, IqType, StanzaError, StanzaKind};
use canto_xml::Element;

use crate::private::PrivateData;
use crate::pubsub::engine::Event;
use crate::pubsub::pep::{self, PepListener, PepState};
use crate::pubsub::request::Request;
use crate::pubsub::{NS_EVENT, NS_PUBSUB};

/// XEP-0402's node and payload namespace.
pub const NS: &str = "urn:xmpp:bookmarks:1";
/// XEP-0048's storage namespace (and PEP node).
pub const NS_LEGACY: &str = "storage:bookmarks";

/// The module.
pub struct Bookmarks;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0402",
        version: "1.2.0",
        title: "PEP Native Bookmarks",
    },
    Spec {
        id: "XEP-0048",
        version: "1.2",
        title: "Bookmarks (converted to and from XEP-0402)",
    },
    Spec {
        id: "XEP-0411",
        version: "1.0.0",
        title: "Bookmarks Conversion",
    },
];

/// XEP-0402 §3: the node's configuration: private (whitelist), every item kept, never sent
/// on its own.
fn node_config() -> Vec<(String, Vec<String>)> {
    [
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
    .collect()
}

impl Module for Bookmarks {
    fn name(&self) -> &'static str {
        "bookmarks"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        let pep: Arc<PepState> = ctx.depend("pep")?;
        let private: Option<Arc<PrivateData>> = ctx.depend("private").ok();
        // XEP-0402 §4: the server converts XEP-0049 bookmarks (`#compat`) and XEP-0048 PEP
        // bookmarks (`#compat-pep`); XEP-0411 §3 names the conversion feature.
        ctx.add_account_feature(&format!("{NS}#compat"));
        ctx.add_account_feature(&format!("{NS}#compat-pep"));
        ctx.add_account_feature("urn:xmpp:bookmarks-conversion:0");
        let state = Arc::new(State { pep, private });
        ctx.hook_stanza(
            HookPoint {
                kind: StanzaKind::Iq,
                to: Addressed::Bare,
                direction: Direction::Out,
            },
            10,
            Arc::new(Intercept(state.clone())),
        );
        ctx.hook_session(0, Arc::new(Migrate(state.clone())));
        state.pep.listen(Arc::new(Follow(state.clone())));
        Ok(())
    }
}

struct State {
    pep: Arc<PepState>,
    private: Option<Arc<PrivateData>>,
}

/// One bookmark in XEP-0402 terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bookmark {
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
    /// XEP-0402 `<extensions/>`, kept when an old client rewrites the bookmark.
    extensions: Option<Element>,
}

/// xs:boolean.
fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

fn child_text(el: &Element, name: &str, ns: &str) -> Option<String> {
    el.get_child(name, ns).map(Element::text)
}

impl Bookmark {
    /// From a XEP-0402 `<conference/>`.
    fn from_native(c: &Element) -> Bookmark {
        Bookmark {
            name: c.attr("name").map(str::to_string),
            autojoin: truthy(c.attr("autojoin")),
            nick: child_text(c, "nick", NS),
            password: child_text(c, "password", NS),
            extensions: c.get_child("extensions", NS).cloned(),
        }
    }

    /// From a XEP-0048 `<conference jid/>`: (room, bookmark).
    fn from_legacy(c: &Element) -> Option<(String, Bookmark)> {
        let jid = canto_stanza::parse_jid(c.attr("jid")?).ok()?.to_bare();
        Some((
            jid.to_string(),
            Bookmark {
                name: c.attr("name").map(str::to_string),
                autojoin: truthy(c.attr("autojoin")),
                nick: child_text(c, "nick", NS_LEGACY),
                password: child_text(c, "password", NS_LEGACY),
                extensions: None,
            },
        ))
    }

    fn native(&self) -> Element {
        let mut c = Element::new("conference", NS);
        if let Some(n) = &self.name {
            c.set_attr("name", n);
        }
        if self.autojoin {
            c.set_attr("autojoin", "true");
        }
        if let Some(n) = &self.nick {
            c.push_child(Element::new("nick", NS).with_text(n.clone()));
        }
        if let Some(p) = &self.password {
            c.push_child(Element::new("password", NS).with_text(p.clone()));
        }
        if let Some(x) = &self.extensions {
            c.push_child(x.clone());
        }
        c
    }

    fn legacy(&self, jid: &str) -> Element {
        let mut c = Element::new("conference", NS_LEGACY).with_attr("jid", jid);
        if let Some(n) = &self.name {
            c.set_attr("name", n);
        }
        c.set_attr("autojoin", if self.autojoin { "true" } else { "false" });
        if let Some(n) = &self.nick {
            c.push_child(Element::new("nick", NS_LEGACY).with_text(n.clone()));
        }
        if let Some(p) = &self.password {
            c.push_child(Element::new("password", NS_LEGACY).with_text(p.clone()));
        }
        c
    }

    /// Equal in what XEP-0048 can say (extensions are not compared).
    fn same_as(&self, other: &Bookmark) -> bool {
        self.name == other.name
            && self.autojoin == other.autojoin
            && self.nick == other.nick
            && self.password == other.password
    }
}

impl State {
    /// The account's bookmarks by room JID (XEP-0402 items), and whether the node exists.
    async fn native(&self, owner: &BareJid) -> BTreeMap<String, Bookmark> {
        pep::all_items(&self.pep, owner, NS)
            .await
            .into_iter()
            .filter(|(_, c)| c.is("conference", NS))
            .map(|(id, c)| (id, Bookmark::from_native(&c)))
            .collect()
    }

    /// XEP-0048 `<storage/>` of the account's bookmarks.
    async fn legacy_storage(&self, owner: &BareJid) -> Element {
        let mut storage = Element::new("storage", NS_LEGACY);
        for (jid, b) in self.native(owner).await {
            storage.push_child(b.legacy(&jid));
        }
        storage
    }

    /// Makes the XEP-0402 items say what `storage` says (XEP-0411 §4): new and changed
    /// bookmarks published, those no longer there retracted (`sync`); without `sync` only
    /// added (a migration).
    async fn apply_legacy(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        storage: &Element,
        sync: bool,
    ) -> Result<(), StanzaError> {
        let current = self.native(owner).await;
        let mut wanted: BTreeMap<String, Bookmark> = BTreeMap::new();
        for c in storage.children().filter(|c| c.is("conference", NS_LEGACY)) {
            if let Some((jid, b)) = Bookmark::from_legacy(c) {
                wanted.insert(jid, b);
            }
        }
        let config = node_config();
        for (jid, mut b) in wanted.clone() {
            match current.get(&jid) {
                Some(old) if old.same_as(&b) => continue,
                Some(old) => b.extensions = old.extensions.clone(),
                None => {}
            }
            pep::publish_as_owner(&self.pep, server, owner, NS, &jid, b.native(), &config).await?;
        }
        if sync {
            let gone: Vec<String> = current
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            if !gone.is_empty() {
                // XEP-0402 (removing a bookmark): clients learn of removals by retraction notifications.
                pep::as_owner(
                    &self.pep,
                    server,
                    owner,
                    Request::Retract {
                        node: NS.to_string(),
                        ids: gone,
                        notify: Some(true),
                    },
                    &config,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// XEP-0411 §5: resources that follow `storage:bookmarks` by `+notify` hear of changes.
    async fn notify_legacy(&self, server: &Arc<Server>, owner: &BareJid) {
        let storage = self.legacy_storage(owner).await;
        let child = Element::new("items", NS_EVENT)
            .with_attr("node", NS_LEGACY)
            .with_child(
                Element::new("item", NS_EVENT)
                    .with_attr("id", "current")
                    .with_child(storage),
            );
        pep::notify_own_resources(&self.pep, server, owner, NS_LEGACY, &child);
    }

    /// Answers a request for the account's own bookmarks in an old form; None when `el` is
    /// not one.
    async fn answer(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        el: &Element,
    ) -> Option<Result<Option<Element>, StanzaError>> {
        let set = match IqType::of(el)? {
            IqType::Get => false,
            IqType::Set => true,
            _ => return None,
        };
        let payload = iq_payload(el)?;
        // XEP-0049 with XEP-0048 storage (alone: a set with other fragments too is split by
        // the hook, see `Intercept`).
        if payload.is("query", crate::private::NS) {
            let mut children = payload.children();
            let (Some(storage), None) = (children.next(), children.next()) else {
                return None;
            };
            if !storage.is("storage", NS_LEGACY) {
                return None;
            }
            return Some(if set {
                self.set_legacy(server, owner, storage).await.map(|()| None)
            } else {
                Ok(Some(
                    Element::new("query", crate::private::NS)
                        .with_child(self.legacy_storage(owner).await),
                ))
            });
        }
        // XEP-0048 §3 over PEP: the node `storage:bookmarks`.
        if payload.is("pubsub", NS_PUBSUB) {
            let action = payload.children().next()?;
            if action.attr("node") != Some(NS_LEGACY) {
                return None;
            }
            return Some(match (set, action.name()) {
                // XEP-0060 §6.5.9.11: no bookmarks node yet is no node (Prosody's
                // empty_bookmarks script expects this too).
                (false, "items") if !pep::has_node(&self.pep, owner, NS).await => {
                    Err(StanzaError::new(Condition::ItemNotFound))
                }
                (false, "items") => {
                    let item = Element::new("item", NS_PUBSUB)
                        .with_attr("id", "current")
                        .with_child(self.legacy_storage(owner).await);
                    Ok(Some(
                        Element::new("pubsub", NS_PUBSUB).with_child(
                            Element::new("items", NS_PUBSUB)
                                .with_attr("node", NS_LEGACY)
                                .with_child(item),
                        ),
                    ))
                }
                (true, "publish") => {
                    let Some(storage) = action
                        .get_child("item", NS_PUBSUB)
                        .and_then(|i| i.get_child("storage", NS_LEGACY))
                    else {
                        return Some(Err(StanzaError::new(Condition::BadRequest)
                            .with_text("a storage:bookmarks item holds <storage/>")));
                    };
                    let id = action
                        .get_child("item", NS_PUBSUB)
                        .and_then(|i| i.attr("id"))
                        .unwrap_or("current")
                        .to_string();
                    self.set_legacy(server, owner, storage).await.map(|()| {
                        Some(
                            Element::new("pubsub", NS_PUBSUB).with_child(
                                Element::new("publish", NS_PUBSUB)
                                    .with_attr("node", NS_LEGACY)
                                    .with_child(
                                        Element::new("item", NS_PUBSUB).with_attr("id", id),
                                    ),
                            ),
                        )
                    })
                }
                // Other requests on the compatibility node (subscribe, configure…) go to PEP
                // like any node's.
                _ => return None,
            });
        }
        None
    }

    async fn set_legacy(
        &self,
        server: &Arc<Server>,
        owner: &BareJid,
        storage: &Element,
    ) -> Result<(), StanzaError> {
        self.apply_legacy(server, owner, storage, true).await?;
        self.notify_legacy(server, owner).await;
        Ok(())
    }
}

/// Takes old-style bookmark requests of a session for its own account before private storage
/// and PEP see them.
struct Intercept(Arc<State>);

#[async_trait]
impl StanzaHook for Intercept {
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked {
        let Origin::Session(session) = ev.origin else {
            return Hooked::Pass;
        };
        let owner = session.jid().to_bare();
        if ev.to.to_bare() != owner {
            return Hooked::Pass;
        }
        // A XEP-0049 set of several fragments, bookmarks among them: the bookmarks go to PEP,
        // the rest on to private storage.
        if IqType::of(ev.stanza) == Some(IqType::Set)
            && let Some(query) = ev.stanza.get_child_mut("query", crate::private::NS)
            && query.children().count() > 1
            && let Some(storage) = query.get_child("storage", NS_LEGACY).cloned()
        {
            if let Err(e) = self.0.set_legacy(ev.server, &owner, &storage).await {
                let mut reply = error_reply(ev.stanza, &e);
                reply.set_attr("from", owner.to_string());
                reply.set_attr("to", session.jid().to_string());
                ev.server.send_to_origin(ev.origin, reply);
                return Hooked::Handled;
            }
            query.remove_children(|c| c.is("storage", NS_LEGACY));
            return Hooked::Pass;
        }
        let Some(answer) = self.0.answer(ev.server, &owner, ev.stanza).await else {
            return Hooked::Pass;
        };
        let mut reply = match answer {
            Ok(payload) => iq_result(ev.stanza, payload),
            Err(e) => error_reply(ev.stanza, &e),
        };
        // RFC 6120 §10.3.3: the reply comes from the account.
        reply.set_attr("from", owner.to_string());
        reply.set_attr("to", session.jid().to_string());
        ev.server.send_to_origin(ev.origin, reply);
        Hooked::Handled
    }
}

/// XEP-0411 §5: a change to the XEP-0402 node by a client is told to resources following
/// `storage:bookmarks`.
struct Follow(Arc<State>);

#[async_trait]
impl PepListener for Follow {
    async fn changed(&self, server: &Arc<Server>, owner: &BareJid, event: &Event) {
        let node = match event {
            Event::Published { node, .. }
            | Event::Retracted { node, .. }
            | Event::Purged { node, .. }
            | Event::Deleted { node, .. } => node,
            _ => return,
        };
        if node == NS {
            self.0.notify_legacy(server, owner).await;
        }
    }
}

/// Moves bookmarks an old client kept in private storage to PEP at the next bind.
struct Migrate(Arc<State>);

#[async_trait]
impl SessionHook for Migrate {
    async fn on_session(&self, server: &Arc<Server>, session: &FullJid, event: SessionEvent<'_>) {
        if event != SessionEvent::Bound {
            return;
        }
        let Some(private) = &self.0.private else {
            return;
        };
        let owner = session.to_bare();
        let Some(storage) = private.get(&owner, "storage", NS_LEGACY).await else {
            return;
        };
        if self
            .0
            .apply_legacy(server, &owner, &storage, false)
            .await
            .is_ok()
        {
            private.remove(&owner, "storage", NS_LEGACY).await;
        }
    }
}
