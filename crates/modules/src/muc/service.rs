//! The MUC service: rooms of one domain, their storage, and the stanzas in and out.
//!
//! A stanza to the service runs in the sender's task: the room is found (loaded from the store
//! on first use of the service, created by a first presence), locked, asked what to do, its
//! persistent state written when it changed (before anyone hears of the change), and the
//! answer sent while the room is still locked, so every occupant sees one order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, Service, ServiceCtx};
use canto_core::roster::decode_element;
use canto_core::stores::{ArchiveStore, KvStore, MapStore};
use canto_core::{Module, ModuleCtx, Spec};
use canto_stanza::stanza::{error_reply, iq_payload, iq_result};
use canto_stanza::{BareJid, Condition, ErrorType, IqType, StanzaError, datetime, ns, parse_jid};
use canto_storage::ArchiveQuery;
use canto_xml::Element;
use tokio::sync::OnceCell;

use super::config::RoomConfig;
use super::room::{
    Accepted, Env, MessageOutcome, NS_ADMIN, NS_MUC, NS_OCCUPANT_ID, NS_OWNER, NS_REGISTER,
    NS_REQUEST, NS_SID, Out, Room,
};
use super::{Creation, MucConfig};

/// The module.
pub struct Muc;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0045",
        version: "1.35.1",
        title: "Multi-User Chat",
    },
    Spec {
        id: "XEP-0249",
        version: "1.2",
        title: "Direct MUC Invitations",
    },
    Spec {
        id: "XEP-0410",
        version: "1.1.0",
        title: "MUC Self-Ping (Schrödinger's Chat)",
    },
    Spec {
        id: "XEP-0421",
        version: "0.2.0",
        title: "Anonymous unique occupant identifiers for MUCs",
    },
    Spec {
        id: "XEP-0425",
        version: "0.3.0",
        title: "Moderated Message Retraction",
    },
];

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn config_sections(&self) -> Vec<canto_core::module::SectionInfo> {
        vec![MucConfig::info()]
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        let config = ctx.section::<MucConfig>()?;
        if let Some(warning) = burst_warning(&config.get(), ctx.config()) {
            tracing::warn!("{warning}");
        }
        let stores = Stores {
            rooms: ctx.open_map("muc_rooms")?,
            log: ctx.open_archive("muc_log")?,
            secret: ctx.open_kv("muc_secret")?,
        };
        let hosts = ctx.config().hosts.clone();
        for spec in ctx.config().services_of_kind("muc") {
            let name = spec.name.clone().unwrap_or_else(|| "Chatrooms".to_string());
            let service = Arc::new(MucService {
                domain: spec.domain.clone(),
                name: name.clone(),
                config: config.clone(),
                hosts: hosts.clone(),
                stores: stores.clone(),
                rooms: Mutex::new(HashMap::new()),
                loaded: OnceCell::new(),
                secret: OnceCell::new(),
            });
            ctx.add_service(&spec.domain, &spec.parent, &name, service)?;
        }
        Ok(())
    }
}

/// A joiner gets the whole room at once (every occupant's presence, its own, history, the
/// subject), past the live queue limit but within the session's queue
/// (`ServiceCtx::deliver_burst`): where a full room would not fit, joining it closes the
/// joiner's session. Said at startup (not refused: a small send queue is an operator's choice,
/// and only that joiner is affected).
fn burst_warning(muc: &MucConfig, core: &canto_core::Config) -> Option<String> {
    let burst = muc.max_occupants + muc.max_history + 2;
    let room = core.c2s.max_send_queue + core.offline.max_messages;
    (burst > room).then(|| {
        format!(
            "[muc] max_occupants + max_history + 2 = {burst} is more than a session can be sent \
             at once (c2s.max_send_queue + offline.max_messages = {room}): joining a full room \
             would close the joiner's session; raise those or lower these"
        )
    })
}

#[derive(Clone)]
struct Stores {
    rooms: MapStore,
    log: ArchiveStore,
    secret: KvStore,
}

/// A room behind its lock; `dead` once it is gone, for tasks that waited on the lock.
struct Slot {
    room: Room,
    dead: bool,
    /// Accepted messages waiting for the archive, in order (group commit, see
    /// [`MucService::room_message`]).
    pending: Vec<Pending>,
    /// A task is writing `pending` to the archive.
    writing: bool,
}

impl Slot {
    fn new(room: Room) -> Slot {
        Slot {
            room,
            dead: false,
            pending: Vec::new(),
            writing: false,
        }
    }
}

/// A groupchat message accepted by its room, not yet archived.
struct Pending {
    accepted: Accepted,
    /// The sender's stanza, for an error if archiving fails.
    request: Element,
    stamp_ms: i64,
}

/// Most messages one archive transaction takes.
const MAX_BATCH: usize = 256;

type RoomRef = Arc<tokio::sync::Mutex<Slot>>;

/// What the service knows of a room without locking it (room list, quotas).
#[derive(Clone, Debug, Default)]
struct Summary {
    public: bool,
    locked: bool,
    name: String,
    occupants: usize,
    owners: Vec<String>,
}

/// One MUC service (one domain).
struct MucService {
    domain: String,
    name: String,
    config: Section<MucConfig>,
    hosts: Vec<String>,
    stores: Stores,
    rooms: Mutex<HashMap<String, (RoomRef, Summary)>>,
    loaded: OnceCell<()>,
    secret: OnceCell<Vec<u8>>,
}

fn err(c: Condition, t: ErrorType) -> StanzaError {
    StanzaError::new(c).with_type(t)
}

fn internal() -> StanzaError {
    err(Condition::InternalServerError, ErrorType::Wait)
}

fn summary(room: &Room) -> Summary {
    Summary {
        public: room.config.public,
        locked: room.locked,
        name: room.config.name.clone(),
        occupants: room.occupant_count(),
        owners: room.owners().map(str::to_string).collect(),
    }
}

#[async_trait]
impl Service for MucService {
    async fn handle(&self, ctx: &ServiceCtx, el: Element) {
        let (Some(Ok(from)), Some(Ok(to))) =
            (el.attr("from").map(parse_jid), el.attr("to").map(parse_jid))
        else {
            return;
        };
        self.ensure_loaded().await;
        let from_s = from.to_string();
        match (to.node(), to.resource()) {
            (None, _) => self.to_service(ctx, &el).await,
            (Some(node), None) => {
                let node = node.as_str().to_string();
                self.to_room(ctx, &from_s, &node, &el).await
            }
            (Some(node), Some(nick)) => {
                let (node, nick) = (node.as_str().to_string(), nick.as_str().to_string());
                self.to_occupant(ctx, &from_s, &node, &nick, &el).await
            }
        }
    }

    async fn session_lost(&self, ctx: &ServiceCtx, session: &canto_stanza::FullJid) {
        // The occupant leaves every room it was in here, as if it had sent unavailable
        // presence (XEP-0045 §7.14), so the others see it go.
        let full = session.to_string();
        let rooms: Vec<(String, RoomRef)> = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, (r, _))| (n.clone(), r.clone()))
            .collect();
        for (node, room) in rooms {
            let nick = room.lock().await.room.nick_of(&full).map(str::to_string);
            if let Some(nick) = nick {
                let leave = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", full.clone())
                    .with_attr("to", format!("{node}@{}/{nick}", self.domain));
                self.handle(ctx, leave).await;
            }
        }
    }

    async fn cluster_changed(&self, _ctx: &ServiceCtx) {
        // Rooms with nobody in them here may have been changed by the node that handled them:
        // they are read again from storage (a persistent one), or forgotten (a temporary one
        // lives on its node).
        if self.loaded.get().is_none() {
            return;
        }
        let empty: Vec<String> = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (_, s))| s.occupants == 0)
            .map(|(n, _)| n.clone())
            .collect();
        let bounds = self.config.get().bounds();
        for node in empty {
            let stored = match self.stores.rooms.get(&self.domain, "", &node).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, room = node, "re-reading a room failed");
                    continue;
                }
            };
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if rooms.get(&node).is_some_and(|(_, s)| s.occupants > 0) {
                continue;
            }
            match stored.as_deref().and_then(decode_element) {
                Some(el) => {
                    let jid = format!("{node}@{}", self.domain);
                    let room = Room::from_stored(&jid, &el, bounds);
                    let s = summary(&room);
                    rooms.insert(
                        node,
                        (Arc::new(tokio::sync::Mutex::new(Slot::new(room))), s),
                    );
                }
                None => {
                    rooms.remove(&node);
                }
            }
        }
    }
}

impl MucService {
    async fn ensure_loaded(&self) {
        self.loaded
            .get_or_init(|| async {
                let bounds = self.config.get().bounds();
                match self.stores.rooms.get_all(&self.domain, "").await {
                    Ok(all) => {
                        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
                        for (node, bytes) in all {
                            let Some(el) = decode_element(&bytes) else {
                                tracing::warn!(room = node, "unreadable stored room; skipped");
                                continue;
                            };
                            let jid = format!("{node}@{}", self.domain);
                            let room = Room::from_stored(&jid, &el, bounds);
                            let s = summary(&room);
                            rooms.insert(
                                node,
                                (Arc::new(tokio::sync::Mutex::new(Slot::new(room))), s),
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, service = self.domain, "loading rooms failed")
                    }
                }
            })
            .await;
    }

    async fn secret(&self) -> &[u8] {
        self.secret
            .get_or_init(|| async {
                if let Ok(Some(s)) = self.stores.secret.get(&self.domain, "").await
                    && s.len() >= 16
                {
                    return s;
                }
                let s: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
                if let Err(e) = self.stores.secret.set(&self.domain, "", Some(&s)).await {
                    tracing::warn!(error = %e, "occupant-id key not stored: ids change at restart");
                }
                s
            })
            .await
    }

    fn env<'a>(&self, cfg: &MucConfig, from: &str, secret: &'a [u8]) -> Env<'a> {
        let bare = from.split_once('/').map_or(from, |(b, _)| b);
        Env {
            now_ms: datetime::now_millis(),
            bounds: cfg.bounds(),
            rate: (cfg.message_rate, cfg.message_burst),
            max_nick_bytes: cfg.max_nick_bytes,
            max_subject_bytes: cfg.max_subject_bytes,
            sender_is_admin: cfg.admins.iter().any(|a| a == bare),
            secret,
        }
    }

    fn lookup(&self, node: &str) -> Option<RoomRef> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(node).map(|(r, _)| r.clone())
    }

    fn update_summary(&self, node: &str, room: &Room) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = rooms.get_mut(node) {
            *s = summary(room);
        }
    }

    /// Creates a room for `from` (XEP-0045 §10.1.1), if the configuration lets them.
    fn create(&self, node: &str, from: &str, cfg: &MucConfig) -> Result<RoomRef, StanzaError> {
        let bare = from.split_once('/').map_or(from, |(b, _)| b);
        let is_admin = cfg.admins.iter().any(|a| a == bare);
        let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
        let allowed = is_admin
            || match cfg.restrict_room_creation {
                Creation::Anyone => true,
                Creation::Local => self.hosts.iter().any(|h| h == domain),
                Creation::Admins => false,
            };
        if !allowed {
            return Err(err(Condition::NotAllowed, ErrorType::Cancel)
                .with_text("you may not create rooms here"));
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, _)) = rooms.get(node) {
            return Ok(r.clone());
        }
        if rooms.len() >= cfg.max_rooms && !is_admin {
            return Err(err(Condition::ResourceConstraint, ErrorType::Wait)
                .with_text("this service has as many rooms as it may"));
        }
        let owned = rooms
            .values()
            .filter(|(_, s)| s.owners.iter().any(|o| o == bare))
            .count();
        if owned >= cfg.max_rooms_per_user && !is_admin {
            return Err(
                err(Condition::NotAllowed, ErrorType::Cancel).with_text(format!(
                    "you may own at most {} rooms",
                    cfg.max_rooms_per_user
                )),
            );
        }
        let jid = format!("{node}@{}", self.domain);
        let room = Room::new(&jid, bare, RoomConfig::new(cfg.bounds()));
        let s = summary(&room);
        let r = Arc::new(tokio::sync::Mutex::new(Slot::new(room)));
        rooms.insert(node.to_string(), (r.clone(), s));
        Ok(r)
    }

    /// Writes (or removes) a room's record; before anyone hears of the change.
    async fn persist(
        &self,
        node: &str,
        room: &Room,
        was_persistent: bool,
    ) -> Result<(), StanzaError> {
        let bounds = self.config.get().bounds();
        let value = room
            .config
            .persistent
            .then(|| room.to_stored(bounds).to_bytes());
        if value.is_none() && !was_persistent {
            return Ok(());
        }
        self.stores
            .rooms
            .set(&self.domain, "", node, value.as_deref())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, room = node, "storing room failed");
                internal()
            })
    }

    /// Forgets a room (destroyed, or temporary and empty).
    async fn remove(&self, node: &str, slot: &mut Slot) {
        slot.dead = true;
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            rooms.remove(node);
        }
        let _ = self.stores.rooms.set(&self.domain, "", node, None).await;
        let _ = self.stores.log.delete(&self.domain, node, None).await;
    }

    /// Sends `stanzas`; those to our own domain after the room's lock is released
    /// (`deferred`), so a room never waits on itself.
    /// Sends a joiner's burst (see [`Out::burst`]) straight to its session, or routes it when
    /// the joiner is not a local session.
    async fn send_burst(&self, ctx: &ServiceCtx, burst: Vec<Element>, deferred: &mut Vec<Element>) {
        let Some(to) = burst.first().and_then(|e| e.attr("to")).map(str::to_string) else {
            return;
        };
        if burst.iter().any(|e| e.attr("to") != Some(to.as_str())) {
            return self.send_all(ctx, burst, deferred).await;
        }
        if let Err(burst) = ctx.deliver_burst(&to, burst) {
            self.send_all(ctx, burst, deferred).await;
        }
    }

    async fn send_all(&self, ctx: &ServiceCtx, stanzas: Vec<Element>, deferred: &mut Vec<Element>) {
        // The room wrote every `to` itself from normalized JIDs: a string check finds ours.
        let own = |s: &Element| {
            s.attr("to").is_some_and(|t| {
                let bare = t.split('/').next().unwrap_or_default();
                bare.rsplit('@').next() == Some(self.domain.as_str())
            })
        };
        let (later, now): (Vec<Element>, Vec<Element>) = stanzas.into_iter().partition(own);
        deferred.extend(later);
        ctx.send_many(now).await;
    }

    async fn reply_error(&self, ctx: &ServiceCtx, el: &Element, e: &StanzaError) {
        if el.attr("type") != Some("error") {
            ctx.send(error_reply(el, e)).await;
        }
    }

    /// Runs `op` on room `node` under its lock, then stores, forgets and sends as it says.
    async fn with_room<F>(&self, ctx: &ServiceCtx, node: &str, el: &Element, room: RoomRef, op: F)
    where
        F: FnOnce(&mut Room) -> Result<Out, StanzaError>,
    {
        let mut deferred = Vec::new();
        {
            let mut slot = room.lock().await;
            if slot.dead {
                self.reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                    .await;
                return;
            }
            let was_persistent = slot.room.config.persistent;
            match op(&mut slot.room) {
                Err(e) => {
                    let empty_new = slot.room.is_empty() && slot.room.locked;
                    if empty_new {
                        // A room created by a join that failed is no room.
                        self.remove(node, &mut slot).await;
                    }
                    drop(slot);
                    self.reply_error(ctx, el, &e).await;
                    return;
                }
                Ok(out) => {
                    if out.gone {
                        self.remove(node, &mut slot).await;
                    } else {
                        if (out.save || was_persistent != slot.room.config.persistent)
                            && let Err(e) = self.persist(node, &slot.room, was_persistent).await
                        {
                            drop(slot);
                            self.reply_error(ctx, el, &e).await;
                            return;
                        }
                        self.update_summary(node, &slot.room);
                    }
                    self.send_burst(ctx, out.burst, &mut deferred).await;
                    self.send_all(ctx, out.stanzas, &mut deferred).await;
                }
            }
        }
        for s in deferred {
            ctx.send(s).await;
        }
    }

    // ---------------------------------------------------------------- to the service

    async fn to_service(&self, ctx: &ServiceCtx, el: &Element) {
        if el.name() != "iq" {
            return;
        }
        let Some(kind) = IqType::of(el) else { return };
        if !kind.is_request() {
            return;
        }
        let Some(payload) = iq_payload(el) else {
            return self
                .reply_error(ctx, el, &err(Condition::BadRequest, ErrorType::Modify))
                .await;
        };
        let reply = match (kind, payload.name(), payload.ns()) {
            (IqType::Get, "query", ns::DISCO_INFO) if payload.attr("node").is_none() => {
                let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", self.name.clone()),
                );
                for f in [
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    NS_MUC,
                    NS_STABLE_ID,
                    NS_SELF_PING,
                    NS_OCCUPANT_ID,
                    NS_MODERATE,
                    ns::PING,
                    "jabber:x:conference",
                ] {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
                Ok(Some(q))
            }
            (IqType::Get, "query", ns::DISCO_ITEMS) if payload.attr("node").is_none() => {
                // XEP-0045 §6.3: public rooms.
                let mut list: Vec<(String, Summary)> = {
                    let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
                    rooms
                        .iter()
                        .filter(|(_, (_, s))| s.public && !s.locked)
                        .map(|(n, (_, s))| (n.clone(), s.clone()))
                        .collect()
                };
                list.sort_by(|a, b| a.0.cmp(&b.0));
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (node, s) in list.into_iter().take(1000) {
                    let name = if s.name.is_empty() {
                        node.clone()
                    } else {
                        s.name.clone()
                    };
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", format!("{node}@{}", self.domain))
                            .with_attr("name", format!("{name} ({})", s.occupants)),
                    );
                }
                Ok(Some(q))
            }
            (IqType::Get, "ping", ns::PING) => Ok(None),
            _ => Err(err(Condition::ServiceUnavailable, ErrorType::Cancel)),
        };
        match reply {
            Ok(p) => ctx.send(iq_result(el, p)).await,
            Err(e) => self.reply_error(ctx, el, &e).await,
        }
    }

    // ---------------------------------------------------------------- to a room

    async fn to_room(&self, ctx: &ServiceCtx, from: &str, node: &str, el: &Element) {
        match el.name() {
            // §7.2.4: joining needs a nick.
            "presence" if el.attr("type").is_none() => {
                self.reply_error(
                    ctx,
                    el,
                    &err(Condition::JidMalformed, ErrorType::Modify)
                        .with_text("a nickname is needed to join"),
                )
                .await;
            }
            "message" => self.room_message(ctx, from, node, el).await,
            "iq" => self.room_iq(ctx, from, node, el).await,
            _ => {}
        }
    }

    async fn room_message(&self, ctx: &ServiceCtx, from: &str, node: &str, el: &Element) {
        let Some(room) = self.lookup(node) else {
            return self
                .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                .await;
        };
        let cfg = self.config.get();
        let secret = self.secret().await;
        let env = self.env(&cfg, from, secret);
        let mut deferred = Vec::new();
        {
            let mut slot = room.lock().await;
            if slot.dead {
                drop(slot);
                return self
                    .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                    .await;
            }
            let was_persistent = slot.room.config.persistent;
            let occupants = slot.room.occupant_count();
            let out = match slot.room.message(from, el, &env) {
                Err(e) => {
                    drop(slot);
                    return self.reply_error(ctx, el, &e).await;
                }
                Ok(MessageOutcome::Done(out)) => out,
                Ok(MessageOutcome::Groupchat(accepted)) if accepted.archive => {
                    // Archived before it is broadcast (its archive id is its stanza-id), with
                    // group commit: the first sender writes every message accepted meanwhile
                    // in one transaction, with the room unlocked, then broadcasts them in
                    // order; the others' messages ride along.
                    slot.pending.push(Pending {
                        accepted,
                        request: el.clone(),
                        stamp_ms: env.now_ms,
                    });
                    if slot.writing {
                        return;
                    }
                    slot.writing = true;
                    drop(slot);
                    return self.write_pending(ctx, node, &room, &env).await;
                }
                Ok(MessageOutcome::Groupchat(accepted)) => {
                    slot.room.broadcast(accepted, None, &env)
                }
            };
            if out.gone {
                self.remove(node, &mut slot).await;
            } else if out.save
                && let Err(e) = self.persist(node, &slot.room, was_persistent).await
            {
                drop(slot);
                return self.reply_error(ctx, el, &e).await;
            }
            // Most messages change nothing the room list shows: no summary per message.
            if !out.gone && (out.save || occupants != slot.room.occupant_count()) {
                self.update_summary(node, &slot.room);
            }
            self.send_all(ctx, out.stanzas, &mut deferred).await;
        }
        for s in deferred {
            ctx.send(s).await;
        }
    }

    /// Writes the room's pending messages to the archive, batch after batch, and broadcasts
    /// each batch once it is committed, until none is left.
    async fn write_pending(&self, ctx: &ServiceCtx, node: &str, room: &RoomRef, env: &Env<'_>) {
        loop {
            let batch: Vec<Pending> = {
                let mut slot = room.lock().await;
                if slot.dead || slot.pending.is_empty() {
                    slot.writing = false;
                    slot.pending.clear();
                    return;
                }
                let n = slot.pending.len().min(MAX_BATCH);
                slot.pending.drain(..n).collect()
            };
            let items: Vec<canto_storage::NewArchiveItem> = batch
                .iter()
                .map(|p| canto_storage::NewArchiveItem {
                    with: p.accepted.occupant_jid.clone(),
                    stamp_ms: p.stamp_ms,
                    data: p.accepted.message.to_bytes(),
                })
                .collect();
            let written = self
                .stores
                .log
                .append_many(&self.domain, node, &items)
                .await;
            let mut deferred = Vec::new();
            {
                let mut slot = room.lock().await;
                match written {
                    Ok(ids) if ids.len() == batch.len() && !slot.dead => {
                        for (p, id) in batch.into_iter().zip(ids) {
                            let at = Env {
                                now_ms: p.stamp_ms,
                                ..*env
                            };
                            let out = slot.room.broadcast(p.accepted, Some(id), &at);
                            self.send_all(ctx, out.stanzas, &mut deferred).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, room = node, "archiving failed");
                        drop(slot);
                        for p in batch {
                            self.reply_error(ctx, &p.request, &internal()).await;
                        }
                    }
                }
            }
            for s in deferred {
                ctx.send(s).await;
            }
        }
    }

    async fn room_iq(&self, ctx: &ServiceCtx, from: &str, node: &str, el: &Element) {
        let Some(kind) = IqType::of(el) else { return };
        if !kind.is_request() {
            return;
        }
        let Some(payload) = iq_payload(el) else {
            return self
                .reply_error(ctx, el, &err(Condition::BadRequest, ErrorType::Modify))
                .await;
        };
        let Some(room) = self.lookup(node) else {
            return self
                .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                .await;
        };
        let cfg = self.config.get();
        let secret = self.secret().await;
        let env = self.env(&cfg, from, secret);
        let bare = from.split_once('/').map_or(from, |(b, _)| b).to_string();
        let payload_ns = payload.ns().to_string();
        match (kind, payload.name(), payload_ns.as_str()) {
            (IqType::Set, "query", NS_OWNER)
            | (IqType::Set, "query", NS_ADMIN)
            | (IqType::Set, "query", NS_REGISTER) => {
                let payload = payload.clone();
                let reply_to = el.clone();
                self.with_room(ctx, node, el, room, move |r| {
                    let mut out = r.iq_set(from, &payload, &env)?;
                    // The IQ result goes first: the requester learns it succeeded, then sees
                    // its effects.
                    out.stanzas.insert(0, iq_result(&reply_to, None));
                    Ok(out)
                })
                .await;
            }
            (IqType::Get, "query", NS_OWNER) => {
                let slot = room.lock().await;
                let r = slot.room.owner_get(from, &env).map(Some);
                drop(slot);
                self.answer(ctx, el, r).await;
            }
            (IqType::Get, "query", NS_ADMIN) => {
                let slot = room.lock().await;
                let r = slot.room.admin_get(from, payload, &env).map(Some);
                drop(slot);
                self.answer(ctx, el, r).await;
            }
            (IqType::Get, "query", NS_REGISTER) => {
                let slot = room.lock().await;
                let r = if slot.room.affiliation(&bare) == super::room::Affiliation::Outcast {
                    Err(err(Condition::Forbidden, ErrorType::Auth))
                } else {
                    Ok(Some(slot.room.register_get(from)))
                };
                drop(slot);
                self.answer(ctx, el, r).await;
            }
            (IqType::Get, "query", ns::DISCO_INFO) => {
                let slot = room.lock().await;
                let r = self.room_info(&slot.room, from, payload.attr("node"));
                drop(slot);
                self.answer(ctx, el, r.map(Some)).await;
            }
            (IqType::Get, "query", ns::DISCO_ITEMS) => {
                // §6.5: occupants are not listed (their nicks are for occupants to see).
                let q = Element::new("query", ns::DISCO_ITEMS);
                self.answer(ctx, el, Ok(Some(q))).await;
            }
            (IqType::Get, "ping", ns::PING) => self.answer(ctx, el, Ok(None)).await,
            (IqType::Set, "query", NS_MAM) => {
                self.mam(ctx, from, node, &room, el, payload, &env).await
            }
            (IqType::Get, "query", NS_MAM) => {
                // XEP-0313 §4.1: the query form, the same as accounts' archives offer.
                let r = self.archive_readable(&room, &bare, &env).await;
                self.answer(ctx, el, r.map(|()| Some(crate::mam::form())))
                    .await;
            }
            (IqType::Set, "moderate", NS_MODERATE) => {
                self.moderate(ctx, from, node, &room, el, payload).await
            }
            _ => {
                self.reply_error(
                    ctx,
                    el,
                    &err(Condition::ServiceUnavailable, ErrorType::Cancel),
                )
                .await
            }
        }
    }

    async fn answer(
        &self,
        ctx: &ServiceCtx,
        el: &Element,
        r: Result<Option<Element>, StanzaError>,
    ) {
        match r {
            Ok(p) => ctx.send(iq_result(el, p)).await,
            Err(e) => self.reply_error(ctx, el, &e).await,
        }
    }

    /// XEP-0045 §6.4: room information; §7.10 `x-roomuser-item`: the reserved nick.
    fn room_info(
        &self,
        room: &Room,
        from: &str,
        node: Option<&str>,
    ) -> Result<Element, StanzaError> {
        let bare = from.split_once('/').map_or(from, |(b, _)| b);
        let mut q = Element::new("query", ns::DISCO_INFO);
        match node {
            None | Some("") => {}
            Some("x-roomuser-item") => {
                q.set_attr("node", "x-roomuser-item");
                if let Some(n) = room.reserved_nick(bare) {
                    q.push_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", n),
                    );
                }
                return Ok(q);
            }
            Some(_) => return Err(err(Condition::ItemNotFound, ErrorType::Cancel)),
        }
        if room.locked && room.affiliation(bare) != super::room::Affiliation::Owner {
            return Err(err(Condition::ItemNotFound, ErrorType::Cancel));
        }
        let name = if room.config.name.is_empty() {
            room.jid().split('@').next().unwrap_or_default().to_string()
        } else {
            room.config.name.clone()
        };
        q.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let mut features: Vec<&str> = vec![
            ns::DISCO_INFO,
            NS_MUC,
            NS_STABLE_ID,
            NS_SELF_PING,
            NS_OCCUPANT_ID,
            NS_MODERATE,
            NS_REQUEST,
            NS_REGISTER,
            "jabber:x:conference",
        ];
        features.extend(room.config.features());
        if room.config.archiving {
            features.push(NS_MAM);
            features.push(NS_SID);
        }
        features.sort_unstable();
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q.push_child(
            room.config
                .roominfo(room.occupant_count(), &room.subject.text),
        );
        Ok(q)
    }

    /// Whether `bare` may read the room's archive: the room archives, and `bare` may join it.
    async fn archive_readable(
        &self,
        room: &RoomRef,
        bare: &str,
        env: &Env<'_>,
    ) -> Result<(), StanzaError> {
        let slot = room.lock().await;
        if !slot.room.config.archiving {
            return Err(err(Condition::ServiceUnavailable, ErrorType::Cancel));
        }
        if !slot.room.may_read(bare, env) {
            return Err(err(Condition::Forbidden, ErrorType::Auth));
        }
        Ok(())
    }

    /// XEP-0313 on the room's JID: anyone who may join may read.
    #[allow(clippy::too_many_arguments)]
    async fn mam(
        &self,
        ctx: &ServiceCtx,
        from: &str,
        node: &str,
        room: &RoomRef,
        el: &Element,
        payload: &Element,
        env: &Env<'_>,
    ) {
        let bare = from.split_once('/').map_or(from, |(b, _)| b);
        if let Err(e) = self.archive_readable(room, bare, env).await {
            return self.reply_error(ctx, el, &e).await;
        }
        let Ok(room_jid) = parse_jid(&format!("{node}@{}", self.domain)).map(|j| j.to_bare())
        else {
            return self.reply_error(ctx, el, &internal()).await;
        };
        let room_jid: BareJid = room_jid;
        match crate::mam::run_query(&self.stores.log, payload, &room_jid).await {
            Ok(page) => {
                for result in page.results {
                    ctx.send(
                        Element::new("message", ns::CLIENT)
                            .with_attr("from", room_jid.to_string())
                            .with_attr("to", from)
                            .with_child(result),
                    )
                    .await;
                }
                ctx.send(iq_result(el, Some(page.fin))).await;
            }
            Err(e) => self.reply_error(ctx, el, &e).await,
        }
    }

    /// XEP-0425: a moderator retracts a message.
    async fn moderate(
        &self,
        ctx: &ServiceCtx,
        from: &str,
        node: &str,
        room: &RoomRef,
        el: &Element,
        payload: &Element,
    ) {
        let Some(id) = payload.attr("id").map(str::to_string) else {
            return self
                .reply_error(ctx, el, &err(Condition::BadRequest, ErrorType::Modify))
                .await;
        };
        if !payload.has_child("retract", NS_RETRACT) {
            return self
                .reply_error(
                    ctx,
                    el,
                    &err(Condition::FeatureNotImplemented, ErrorType::Cancel),
                )
                .await;
        }
        let reason = payload.get_child("reason", NS_MODERATE).map(Element::text);
        let mut slot = room.lock().await;
        if slot.dead {
            drop(slot);
            return self
                .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                .await;
        }
        if !slot.room.is_moderator(from) {
            drop(slot);
            return self
                .reply_error(ctx, el, &err(Condition::Forbidden, ErrorType::Auth))
                .await;
        }
        let q = ArchiveQuery {
            ids: Some(vec![id.clone()]),
            ..ArchiveQuery::default()
        };
        match self.stores.log.count(&self.domain, node, &q).await {
            Ok(0) => {
                drop(slot);
                return self
                    .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                    .await;
            }
            Ok(_) => {}
            Err(_) => {
                drop(slot);
                return self.reply_error(ctx, el, &internal()).await;
            }
        }
        let notice = slot.room.moderation_notice(from, &id, reason.as_deref());
        // The archive keeps the retraction in place of the message (a tombstone), so clients
        // catching up through MAM learn of it too.
        if self
            .stores
            .log
            .delete(&self.domain, node, Some(std::slice::from_ref(&id)))
            .await
            .is_err()
            || self
                .stores
                .log
                .append(
                    &self.domain,
                    node,
                    slot.room.jid(),
                    datetime::now_millis(),
                    &notice.to_bytes(),
                    None,
                )
                .await
                .is_err()
        {
            drop(slot);
            return self.reply_error(ctx, el, &internal()).await;
        }
        let out = slot.room.to_all(&notice, Some(&id));
        ctx.send(iq_result(el, None)).await;
        let mut deferred = Vec::new();
        self.send_all(ctx, out.stanzas, &mut deferred).await;
        drop(slot);
        for s in deferred {
            ctx.send(s).await;
        }
    }

    // ---------------------------------------------------------------- to an occupant

    async fn to_occupant(
        &self,
        ctx: &ServiceCtx,
        from: &str,
        node: &str,
        nick: &str,
        el: &Element,
    ) {
        let cfg = self.config.get();
        let secret = self.secret().await;
        let env = self.env(&cfg, from, secret);
        match el.name() {
            "presence" => {
                let room = match self.lookup(node) {
                    Some(r) => r,
                    None if el.attr("type").is_none() => match self.create(node, from, &cfg) {
                        Ok(r) => r,
                        Err(e) => return self.reply_error(ctx, el, &e).await,
                    },
                    // Unavailable or other presence for a room that is not there.
                    None => return,
                };
                let nick = nick.to_string();
                self.with_room(ctx, node, el, room, |r| r.presence(from, &nick, el, &env))
                    .await;
            }
            "message" => {
                let Some(room) = self.lookup(node) else {
                    return self
                        .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                        .await;
                };
                let nick = nick.to_string();
                self.with_room(ctx, node, el, room, |r| {
                    r.private_message(from, &nick, el, &env)
                })
                .await;
            }
            "iq" => self.occupant_iq(ctx, from, node, nick, el).await,
            _ => {}
        }
    }

    /// XEP-0410 self-ping; other IQs between occupants are relayed with the id rewritten
    /// (XEP-0045 §7.7: the service hides real JIDs), and their answers relayed back.
    async fn occupant_iq(
        &self,
        ctx: &ServiceCtx,
        from: &str,
        node: &str,
        nick: &str,
        el: &Element,
    ) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let Some(room) = self.lookup(node) else {
            return self
                .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                .await;
        };
        let Some(kind) = IqType::of(el) else { return };
        let slot = room.lock().await;
        if slot.dead {
            return;
        }
        let occupant_jid = |n: &str| format!("{node}@{}/{n}", self.domain);
        if !kind.is_request() {
            // An answer to a relayed IQ: `m<sender>.<id>`, from a session of some occupant.
            let Some(sender_nick) = slot.room.nick_of(from).map(str::to_string) else {
                return;
            };
            let Some((who, id)) = el
                .attr("id")
                .and_then(|i| i.strip_prefix('m'))
                .and_then(|i| i.split_once('.'))
                .and_then(|(w, id)| {
                    Some((String::from_utf8(b64.decode(w).ok()?).ok()?, id.to_string()))
                })
            else {
                return;
            };
            if !slot.room.is_session_of(&who, nick) {
                return;
            }
            let mut answer = el.clone();
            answer.set_attr("id", id);
            answer.set_attr("from", occupant_jid(&sender_nick));
            answer.set_attr("to", who);
            drop(slot);
            ctx.send(answer).await;
            return;
        }
        let Some(sender_nick) = slot.room.nick_of(from).map(str::to_string) else {
            drop(slot);
            // XEP-0410 §3: not an occupant.
            return self
                .reply_error(ctx, el, &err(Condition::NotAcceptable, ErrorType::Cancel))
                .await;
        };
        let is_ping = iq_payload(el).is_some_and(|p| p.is("ping", ns::PING));
        if is_ping && sender_nick == nick {
            drop(slot);
            // XEP-0410 §3.2: the service answers for the occupant.
            return ctx.send(iq_result(el, None)).await;
        }
        let Some(target) = slot.room.session_of(nick).map(str::to_string) else {
            drop(slot);
            return self
                .reply_error(ctx, el, &err(Condition::ItemNotFound, ErrorType::Cancel))
                .await;
        };
        drop(slot);
        let mut relayed = el.clone();
        relayed.set_attr(
            "id",
            format!(
                "m{}.{}",
                b64.encode(from),
                el.attr("id").unwrap_or_default()
            ),
        );
        relayed.set_attr("from", occupant_jid(&sender_nick));
        relayed.set_attr("to", target);
        ctx.send(relayed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_a_joiner_could_not_be_sent_at_once_are_warned_of() {
        let parse = |toml: &str| canto_core::Config::parse(toml).unwrap_or_else(|e| panic!("{e}"));
        let muc = |n: usize| MucConfig {
            max_occupants: n,
            ..MucConfig::default()
        };
        // The defaults fit: 1000 + 100 + 2 <= 1000 + 1000.
        assert_eq!(burst_warning(&MucConfig::default(), &parse("")), None);
        // 1999 + 100 + 2 > 1000 + 1000.
        let w = burst_warning(&muc(1999), &parse(""));
        assert!(
            w.as_deref().is_some_and(|w| w.contains("max_occupants")),
            "{w:?}"
        );
        // A bigger send queue makes room.
        let roomy = parse("[c2s]\nmax_send_queue = 2000");
        assert_eq!(burst_warning(&muc(1999), &roomy), None);
    }

    #[test]
    fn the_module_is_named_muc_and_cites_xep_0045() {
        assert_eq!(Muc.name(), "muc");
        assert!(Muc.specs().iter().any(|s| s.id == "XEP-0045"));
    }
}
