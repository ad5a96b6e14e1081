//! One room's state machine (XEP-0045), without I/O: each operation takes a stanza from a
//! real JID and returns the stanzas to send, fully addressed, in order. The service
//! ([`super::service`]) finds the room, stores what must persist and sends the output; the
//! fuzz target drives rooms through this same interface.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use canto_core::metrics::GaugeGuard;
use canto_stanza::{Condition, ErrorType, StanzaError, datetime, ns};
use canto_xml::Element;

use super::config::{AllowPm, Bounds, RoomConfig, Whois};
use crate::pubsub::form;

/// XEP-0045 namespaces.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// Occupant data.
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
/// Moderator and admin use cases.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// Owner use cases.
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// Voice requests (§7.13).
pub const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";
/// Room registration form (§7.10).
pub const NS_REGISTER_FORM: &str = "http://jabber.org/protocol/muc#register";
/// XEP-0077.
pub const NS_REGISTER: &str = "jabber:iq:register";
/// XEP-0421.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0359.
pub const NS_SID: &str = "urn:xmpp:sid:0";

/// An affiliation (XEP-0045 §5.2), ordered by rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    /// Banned.
    Outcast,
    /// No affiliation.
    None,
    /// Member.
    Member,
    /// Admin.
    Admin,
    /// Owner.
    Owner,
}

impl Affiliation {
    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    /// Parses the protocol name.
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// A role (XEP-0045 §5.1), ordered by rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Not in the room.
    None,
    /// May not speak in a moderated room.
    Visitor,
    /// May speak.
    Participant,
    /// May kick and grant voice.
    Moderator,
}

impl Role {
    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    /// Parses the protocol name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// One entry of the affiliation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffEntry {
    /// The affiliation.
    pub affiliation: Affiliation,
    /// Why it was given (`<reason/>`).
    pub reason: String,
    /// The nick reserved by registration (§7.10).
    pub nick: Option<String>,
}

/// One session of an occupant: a real full JID and the presence it last sent to the room.
#[derive(Clone, Debug)]
struct OccSession {
    jid: String,
    /// The payload of the session's presence (show, status, caps…), without MUC elements.
    presence: Vec<Element>,
}

/// One occupant (XEP-0045 §7.2): a nick held by one bare JID, with one or more sessions.
#[derive(Clone, Debug)]
struct Occupant {
    nick: String,
    bare: String,
    clients: Vec<OccSession>,
    role: Role,
    /// XEP-0421 id.
    id: String,
    /// A service admin (`[muc] admins`): an owner here whatever the room's list says.
    admin: bool,
    /// Token bucket for messages: tokens left, last refill (ms).
    tokens: f32,
    refilled_ms: i64,
    /// Counts the occupant in `canto_muc_occupants` while it is in the room (shared by the
    /// clones: one occupant, counted once).
    _counted: Arc<GaugeGuard>,
}

/// One entry of discussion history (§7.2.13).
#[derive(Clone, Debug)]
struct HistoryEntry {
    /// The message as broadcast, without `to`.
    message: Element,
    stamp_ms: i64,
    chars: usize,
}

/// The subject (§8.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The text.
    pub text: String,
    /// Who set it (nick), empty for the room.
    pub nick: String,
}

/// What a room needs from its service for one operation.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    /// The current time.
    pub now_ms: i64,
    /// Configuration bounds.
    pub bounds: Bounds,
    /// Messages per second per occupant, and the burst.
    pub rate: (f32, f32),
    /// Longest nick and subject, bytes.
    pub max_nick_bytes: usize,
    /// Longest subject.
    pub max_subject_bytes: usize,
    /// Whether the sender is a service admin (`[muc] admins`): owner of every room.
    pub sender_is_admin: bool,
    /// Key of XEP-0421 occupant ids.
    pub secret: &'a [u8],
}

/// What one operation asks of the service besides sending.
#[derive(Debug, Default)]
pub struct Out {
    /// Stanzas to send, in order.
    pub stanzas: Vec<Element>,
    /// What a joining session gets at once (every occupant's presence, its own, history,
    /// subject), sent before `stanzas`: up to `max_occupants` + history stanzas that may go
    /// past the session's live queue limit, as offline messages do (a joiner is no slow
    /// reader for getting a big room at once).
    pub burst: Vec<Element>,
    /// The persistent state (configuration, affiliations, subject) changed.
    pub save: bool,
    /// The room is gone (destroyed, or temporary and empty).
    pub gone: bool,
}

/// A groupchat message accepted from an occupant, to be archived (for its stanza-id) and then
/// broadcast with [`Room::broadcast`].
#[derive(Debug)]
pub struct Accepted {
    /// The message as the room sends it (from `room/nick`), without `to` or stanza-id.
    pub message: Element,
    /// The sender's occupant JID, for the archive's `with`.
    pub occupant_jid: String,
    /// Whether it goes to the archive.
    pub archive: bool,
    /// Whether it goes to discussion history.
    pub history: bool,
}

/// What a message to the room's bare JID is.
#[derive(Debug)]
pub enum MessageOutcome {
    /// Handled; send `Out`.
    Done(Out),
    /// A groupchat message to archive and broadcast.
    Groupchat(Accepted),
}

/// One room.
#[derive(Debug)]
pub struct Room {
    /// `room@service`
    jid: String,
    /// Configuration.
    pub config: RoomConfig,
    /// Affiliations by bare JID.
    pub affiliations: BTreeMap<String, AffEntry>,
    occupants: BTreeMap<String, Occupant>,
    /// Real full JID → nick.
    by_jid: HashMap<String, String>,
    /// Subject.
    pub subject: Subject,
    history: VecDeque<HistoryEntry>,
    /// Locked until the owner configures it (§10.1).
    pub locked: bool,
    /// Counts the room in `canto_muc_rooms` while it exists.
    _counted: GaugeGuard,
}

fn err_t(c: Condition, t: ErrorType) -> StanzaError {
    StanzaError::new(c).with_type(t)
}

fn bare_of(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

fn status(code: u16) -> Element {
    Element::new("status", NS_USER).with_attr("code", code.to_string())
}

/// RFC 7700 (PRECIS nickname profile) enforcement on a nick that already passed resourceprep
/// (it is a JID's resource): spaces mapped and collapsed, no leading or trailing space, no
/// control or format characters, not empty. A nick not already in that form is refused rather
/// than silently changed, so `room/nick` names one occupant.
pub fn valid_nick(nick: &str, max_bytes: usize) -> bool {
    if nick.is_empty() || nick.len() > max_bytes {
        return false;
    }
    let mut prev_space = true;
    for c in nick.chars() {
        // §2.2 (additional mapping): every space is U+0020; §2.3 (FreeformClass, RFC 8264
        // §9.11 and §9.14): no controls, no default-ignorable or format characters.
        if c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{AD}')
        {
            return false;
        }
        if c.is_whitespace() {
            if c != ' ' || prev_space {
                return false;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
    }
    !prev_space
}

/// The MUC-specific children a client may not set itself: they are the room's to add.
fn is_room_element(e: &Element) -> bool {
    e.ns() == NS_MUC
        || e.ns() == NS_USER
        || e.is("occupant-id", NS_OCCUPANT_ID)
        || e.is("delay", ns::DELAY)
}

impl Room {
    /// A new room at `jid` created by `owner` (bare JID), locked (§10.1.1).
    pub fn new(jid: &str, owner: &str, config: RoomConfig) -> Room {
        let mut affiliations = BTreeMap::new();
        affiliations.insert(
            owner.to_string(),
            AffEntry {
                affiliation: Affiliation::Owner,
                reason: String::new(),
                nick: None,
            },
        );
        Room {
            jid: jid.to_string(),
            config,
            affiliations,
            occupants: BTreeMap::new(),
            by_jid: HashMap::new(),
            subject: Subject::default(),
            history: VecDeque::new(),
            locked: true,
            _counted: canto_core::metrics::muc_room(),
        }
    }

    /// A stored room read back (unlocked).
    pub fn restored(
        jid: &str,
        config: RoomConfig,
        affiliations: BTreeMap<String, AffEntry>,
        subject: Subject,
    ) -> Room {
        Room {
            jid: jid.to_string(),
            config,
            affiliations,
            occupants: BTreeMap::new(),
            by_jid: HashMap::new(),
            subject,
            history: VecDeque::new(),
            locked: false,
            _counted: canto_core::metrics::muc_room(),
        }
    }

    /// `room@service`
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Number of occupants.
    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// The nick a real full JID is in the room under.
    pub fn nick_of(&self, full: &str) -> Option<&str> {
        self.by_jid.get(full).map(String::as_str)
    }

    /// Whether the real JID's bare JID has an occupant in the room.
    pub fn has_bare(&self, bare: &str) -> bool {
        self.occupants.values().any(|o| o.bare == bare)
    }

    /// Affiliation of a bare JID (`admin` means the sender is a service admin: owner).
    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .map_or(Affiliation::None, |a| a.affiliation)
    }

    /// An occupant's affiliation: a service admin's is owner.
    fn occupant_affiliation(&self, o: &Occupant) -> Affiliation {
        if o.admin {
            Affiliation::Owner
        } else {
            self.affiliation(&o.bare)
        }
    }

    fn aff_of(&self, bare: &str, env: &Env<'_>, is_sender: bool) -> Affiliation {
        if is_sender && env.sender_is_admin {
            return Affiliation::Owner;
        }
        self.affiliation(bare)
    }

    /// Bare JIDs that own the room.
    pub fn owners(&self) -> impl Iterator<Item = &str> {
        self.affiliations
            .iter()
            .filter(|(_, a)| a.affiliation == Affiliation::Owner)
            .map(|(j, _)| j.as_str())
    }

    /// The nick `bare` registered (§7.10).
    pub fn reserved_nick(&self, bare: &str) -> Option<&str> {
        self.affiliations.get(bare).and_then(|a| a.nick.as_deref())
    }

    fn reserved_by_other(&self, nick: &str, bare: &str) -> bool {
        self.affiliations
            .iter()
            .any(|(j, a)| j != bare && a.nick.as_deref() == Some(nick))
    }

    /// The role an affiliation gives on entering (§5.1.2).
    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// XEP-0421: a stable, opaque id per room and bare JID.
    pub fn occupant_id(&self, secret: &[u8], bare: &str) -> String {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
        mac.update(self.jid.as_bytes());
        mac.update(&[0]);
        mac.update(bare.as_bytes());
        let digest = mac.finalize().into_bytes();
        base64::engine::general_purpose::STANDARD.encode(&digest[..18])
    }

    /// Whether a recipient with `role` sees real JIDs (§4.2).
    fn sees_jids(&self, role: Role) -> bool {
        match self.config.whois {
            Whois::Anyone => true,
            Whois::Moderators => role == Role::Moderator,
        }
    }

    // ---------------------------------------------------------------- presence

    /// The presence of occupant `nick` as sent to others: one variant with real JIDs, one
    /// without. `kind` is `None` (available) or `Some("unavailable")`.
    fn occupant_presence(
        &self,
        o: &Occupant,
        kind: Option<&str>,
        item_extra: &[(&str, String)],
        statuses: &[u16],
        reason_actor: Option<&Element>,
    ) -> (Element, Element) {
        let mut p =
            Element::new("presence", ns::CLIENT).with_attr("from", self.occupant_jid(&o.nick));
        if let Some(k) = kind {
            p.set_attr("type", k);
        } else if let Some(s) = o.clients.last() {
            for c in &s.presence {
                p.push_child(c.clone());
            }
        }
        let aff = self.occupant_affiliation(o);
        let mut item = Element::new("item", NS_USER)
            .with_attr("affiliation", aff.as_str())
            // Unavailable presence says the role is gone, except for a nick change (§7.6).
            .with_attr(
                "role",
                if kind.is_some() && !statuses.contains(&303) {
                    "none"
                } else {
                    o.role.as_str()
                },
            );
        for (k, v) in item_extra {
            item.set_attr(*k, v.clone());
        }
        if let Some(r) = reason_actor {
            for c in r.children() {
                item.push_child(c.clone());
            }
        }
        let build = |with_jid: bool| {
            let mut it = item.clone();
            if with_jid {
                // The session whose presence is shown (the newest).
                if let Some(s) = o.clients.last() {
                    it.set_attr("jid", s.jid.clone());
                }
            }
            let mut x = Element::new("x", NS_USER).with_child(it);
            for c in statuses {
                x.push_child(status(*c));
            }
            let mut p = p.clone();
            p.push_child(x);
            p.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", o.id.clone()));
            p
        };
        (build(true), build(false))
    }

    /// Sends `o`'s presence to every occupant whose role lets them see it (self too, with 110).
    #[allow(clippy::too_many_arguments)]
    fn broadcast_presence(
        &self,
        o: &Occupant,
        kind: Option<&str>,
        item_extra: &[(&str, String)],
        statuses: &[u16],
        reason_actor: Option<&Element>,
        self_sessions: &[String],
        out: &mut Vec<Element>,
    ) {
        let (with_jid, without) =
            self.occupant_presence(o, kind, item_extra, statuses, reason_actor);
        let shown = kind.is_some() || self.config.broadcasts(o.role.as_str());
        for r in self.occupants.values() {
            if r.nick == o.nick {
                continue;
            }
            if !shown {
                continue;
            }
            let base = if self.sees_jids(r.role) {
                &with_jid
            } else {
                &without
            };
            for s in &r.clients {
                let mut p = base.clone();
                p.set_attr("to", s.jid.clone());
                out.push(p);
            }
        }
        // Self-presence: 110, and the real JID always (§7.2.3).
        let mut own = with_jid;
        if let Some(x) = own.get_child_mut("x", NS_USER) {
            x.push_child(status(110));
            if self.config.whois == Whois::Anyone && kind.is_none() {
                x.push_child(status(100));
            }
        }
        for s in self_sessions {
            let mut p = own.clone();
            p.set_attr("to", s.clone());
            out.push(p);
        }
    }

    /// Presence from `from` (a real full JID) to `room/nick`.
    pub fn presence(
        &mut self,
        from: &str,
        nick: &str,
        el: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let mut out = Out::default();
        match el.attr("type") {
            None => {}
            Some("unavailable") => {
                if self.by_jid.contains_key(from) {
                    self.leave_session(from, &[], el, &mut out);
                }
                return Ok(out);
            }
            Some("error") => {
                // A session that bounces the room's presence is gone (Prosody kicks it).
                if self.by_jid.contains_key(from) {
                    self.leave_session(
                        from,
                        &[333],
                        &Element::new("presence", ns::CLIENT),
                        &mut out,
                    );
                }
                return Ok(out);
            }
            // Subscriptions and probes to an occupant have no meaning here.
            Some(_) => return Ok(out),
        }
        if let Some(current) = self.by_jid.get(from).cloned() {
            if current == nick {
                self.update_presence(from, el, &mut out);
                // §7.2.1: a join presence from an occupant means the client lost its state
                // (Prosody's issue 667): it gets the room again as on joining.
                if el.has_child("x", NS_MUC) {
                    out.stanzas.retain(|p| p.attr("to") != Some(from));
                    self.send_room_state(from, nick, &[], el, env, &mut out);
                }
                return Ok(out);
            }
            self.change_nick(from, &current, nick, el, env, &mut out)?;
            return Ok(out);
        }
        self.join(from, nick, el, env, &mut out)?;
        Ok(out)
    }

    fn presence_payload(el: &Element) -> Vec<Element> {
        el.children()
            .filter(|c| !is_room_element(c))
            .cloned()
            .collect()
    }

    fn update_presence(&mut self, from: &str, el: &Element, out: &mut Out) {
        let Some(nick) = self.by_jid.get(from).cloned() else {
            return;
        };
        let payload = Self::presence_payload(el);
        let Some(o) = self.occupants.get_mut(&nick) else {
            return;
        };
        // The newest session's presence is the occupant's.
        if let Some(i) = o.clients.iter().position(|s| s.jid == from) {
            let mut s = o.clients.remove(i);
            s.presence = payload;
            o.clients.push(s);
        }
        self.announce(&nick, None, &mut out.stanzas);
    }

    /// §7.2: entering the room.
    fn join(
        &mut self,
        from: &str,
        nick: &str,
        el: &Element,
        env: &Env<'_>,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        // §7.2.4 (no nick) and RFC 7700.
        if !valid_nick(nick, env.max_nick_bytes) {
            return Err(err_t(Condition::JidMalformed, ErrorType::Modify));
        }
        let bare = bare_of(from).to_string();
        let aff = self.aff_of(&bare, env, true);
        // §10.1.1: a locked room admits its owner only.
        if self.locked && aff != Affiliation::Owner {
            return Err(err_t(Condition::ItemNotFound, ErrorType::Cancel)
                .with_text("the room is locked until its owner configures it"));
        }
        // §7.2.8: banned.
        if aff == Affiliation::Outcast {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth));
        }
        let same_user = self.occupants.get(nick).map(|o| o.bare == bare);
        // §7.2.9: the nick is another user's.
        if same_user == Some(false) || self.reserved_by_other(nick, &bare) {
            return Err(err_t(Condition::Conflict, ErrorType::Cancel));
        }
        let muc_x = el.get_child("x", NS_MUC);
        if same_user.is_none() {
            // §7.2.7: members-only.
            if self.config.members_only && aff < Affiliation::Member {
                return Err(err_t(Condition::RegistrationRequired, ErrorType::Auth));
            }
            // §7.2.6: password.
            if !self.config.password.is_empty() && aff < Affiliation::Owner {
                let given = muc_x
                    .and_then(|x| x.get_child("password", NS_MUC))
                    .map(Element::text);
                if given.as_deref() != Some(self.config.password.as_str()) {
                    return Err(err_t(Condition::NotAuthorized, ErrorType::Auth));
                }
            }
            // §7.2.10: full (admins and owners still get in).
            if self.occupants.len() >= self.config.max_users && aff < Affiliation::Admin {
                return Err(err_t(Condition::ServiceUnavailable, ErrorType::Wait));
            }
        }
        let session = OccSession {
            jid: from.to_string(),
            presence: Self::presence_payload(el),
        };
        let created = self.locked && self.occupants.is_empty() && self.history.is_empty();
        let joined_nick = nick.to_string();
        match self.occupants.get_mut(nick) {
            Some(o) => o.clients.push(session),
            None => {
                let role = self.default_role(aff);
                let id = self.occupant_id(env.secret, &bare);
                self.occupants.insert(
                    joined_nick.clone(),
                    Occupant {
                        nick: joined_nick.clone(),
                        bare: bare.clone(),
                        clients: vec![session],
                        role,
                        id,
                        admin: env.sender_is_admin,
                        tokens: env.rate.1,
                        refilled_ms: env.now_ms,
                        _counted: Arc::new(canto_core::metrics::muc_occupant()),
                    },
                );
            }
        }
        self.by_jid.insert(from.to_string(), joined_nick.clone());
        let Some(me) = self.occupants.get(&joined_nick).cloned() else {
            return Ok(());
        };
        let mut statuses = Vec::new();
        if created {
            statuses.push(201);
        }
        // …then the new presence to everyone else.
        let mut others = Vec::new();
        self.broadcast_presence(&me, None, &[], &[], None, &[], &mut others);
        self.send_room_state(from, &me.nick, &statuses, el, env, out);
        // The others hear of the newcomer after it has the room (order of §7.2.3 for the
        // joiner; the others' copies are independent of it).
        out.stanzas.extend(others);
        Ok(())
    }

    /// §7.2.3–§7.2.15, what a joining session gets: the others' presence, its own with 110
    /// (and `extra` codes), discussion history, the subject.
    fn send_room_state(
        &self,
        from: &str,
        nick: &str,
        extra: &[u16],
        el: &Element,
        env: &Env<'_>,
        out: &mut Out,
    ) {
        let Some(me) = self.occupants.get(nick) else {
            return;
        };
        for o in self.occupants.values() {
            if o.nick == me.nick || !self.config.broadcasts(o.role.as_str()) {
                continue;
            }
            let (with_jid, without) = self.occupant_presence(o, None, &[], &[], None);
            let mut p = if self.sees_jids(me.role) {
                with_jid
            } else {
                without
            };
            p.set_attr("to", from);
            out.burst.push(p);
        }
        let mut statuses = Vec::new();
        if self.config.archiving {
            // §15.6 170: the room is logged.
            statuses.push(170);
        }
        statuses.extend_from_slice(extra);
        let (mut own, _) = self.occupant_presence(me, None, &[], &statuses, None);
        if let Some(x) = own.get_child_mut("x", NS_USER) {
            x.push_child(status(110));
            if self.config.whois == Whois::Anyone {
                x.push_child(status(100));
            }
        }
        own.set_attr("to", from);
        out.burst.push(own);
        let muc_x = el.get_child("x", NS_MUC);
        self.history_to(
            from,
            muc_x.and_then(|x| x.get_child("history", NS_MUC)),
            env,
            out,
        );
        let mut subject = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr(
                "from",
                if self.subject.nick.is_empty() {
                    self.jid.clone()
                } else {
                    self.occupant_jid(&self.subject.nick)
                },
            )
            .with_attr("to", from);
        let mut s = Element::new("subject", ns::CLIENT);
        if !self.subject.text.is_empty() {
            s.push_text(self.subject.text.clone());
        }
        subject.push_child(s);
        out.burst.push(subject);
    }

    fn history_to(&self, to: &str, spec: Option<&Element>, env: &Env<'_>, out: &mut Out) {
        let num = |a: &str| {
            spec.and_then(|h| h.attr(a))
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let max_stanzas = num("maxstanzas").map_or(usize::MAX, |n| n.max(0) as usize);
        let max_chars = num("maxchars").map_or(usize::MAX, |n| n.max(0) as usize);
        let since_ms = num("seconds")
            .map(|s| env.now_ms - s.max(0).saturating_mul(1000))
            .into_iter()
            .chain(
                spec.and_then(|h| h.attr("since"))
                    .and_then(crate::mam::parse_time),
            )
            .max();
        let mut picked = Vec::new();
        let mut chars = 0usize;
        for h in self.history.iter().rev() {
            if picked.len() >= max_stanzas {
                break;
            }
            if since_ms.is_some_and(|s| h.stamp_ms < s) {
                break;
            }
            chars = chars.saturating_add(h.chars);
            if chars > max_chars {
                break;
            }
            picked.push(h);
        }
        for h in picked.into_iter().rev() {
            let mut m = h.message.clone();
            m.set_attr("to", to);
            m.push_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", self.jid.clone())
                    .with_attr("stamp", datetime::from_millis(h.stamp_ms)),
            );
            out.burst.push(m);
        }
    }

    /// One session leaves (unavailable presence, a bounce, or its server says it is gone).
    fn leave_session(&mut self, from: &str, statuses: &[u16], el: &Element, out: &mut Out) {
        let Some(nick) = self.by_jid.remove(from) else {
            return;
        };
        let Some(o) = self.occupants.get_mut(&nick) else {
            return;
        };
        o.clients.retain(|s| s.jid != from);
        let mut status_el = Element::new("presence", ns::CLIENT);
        for c in el.children().filter(|c| c.is("status", ns::CLIENT)) {
            status_el.push_child(c.clone());
        }
        if !o.clients.is_empty() {
            // Others still see the occupant: only the leaving session hears it left.
            let o = o.clone();
            let (mut own, _) = self.occupant_presence(&o, Some("unavailable"), &[], statuses, None);
            if let Some(x) = own.get_child_mut("x", NS_USER) {
                x.push_child(status(110));
            }
            own.set_attr("to", from);
            out.stanzas.push(own);
            return;
        }
        let Some(mut o) = self.occupants.remove(&nick) else {
            return;
        };
        // The leaver's status text goes with its unavailable presence (§7.14).
        o.clients.push(OccSession {
            jid: from.to_string(),
            presence: status_el.children().cloned().collect(),
        });
        self.unavailable_presence(&o, statuses, &[], None, &[from.to_string()], out);
        self.vanish_if_empty(out);
    }

    /// Unavailable presence of a removed occupant `o` to everyone left and to `own` sessions.
    fn unavailable_presence(
        &self,
        o: &Occupant,
        statuses: &[u16],
        extra: &[(&str, String)],
        actor_reason: Option<&Element>,
        own: &[String],
        out: &mut Out,
    ) {
        let (with_jid, without) =
            self.occupant_presence(o, Some("unavailable"), extra, statuses, actor_reason);
        let keep_status = |mut p: Element| {
            // The leaver's own status text.
            if let Some(s) = o.clients.last() {
                for c in s.presence.iter().filter(|c| c.is("status", ns::CLIENT)) {
                    p.push_child(c.clone());
                }
            }
            p
        };
        let with_jid = keep_status(with_jid);
        let without = keep_status(without);
        self.to_everyone_and_self(&with_jid, &without, own, &mut out.stanzas);
    }

    /// An occupant's presence to every occupant — `with_jid` to those who may see real JIDs,
    /// `without` to the others — and to its own sessions `own` with 110 (§7.2.3).
    fn to_everyone_and_self(
        &self,
        with_jid: &Element,
        without: &Element,
        own: &[String],
        out: &mut Vec<Element>,
    ) {
        for r in self.occupants.values() {
            let base = if self.sees_jids(r.role) {
                with_jid
            } else {
                without
            };
            for s in &r.clients {
                let mut p = base.clone();
                p.set_attr("to", s.jid.clone());
                out.push(p);
            }
        }
        let mut mine = with_jid.clone();
        if let Some(x) = mine.get_child_mut("x", NS_USER) {
            x.push_child(status(110));
        }
        for s in own {
            let mut p = mine.clone();
            p.set_attr("to", s.clone());
            out.push(p);
        }
    }

    /// Occupant `nick`'s current presence to everyone, and to its own sessions with 110 (a
    /// presence update, a role or affiliation change).
    fn announce(&self, nick: &str, actor_reason: Option<&Element>, out: &mut Vec<Element>) {
        let Some(o) = self.occupants.get(nick) else {
            return;
        };
        let own: Vec<String> = o.clients.iter().map(|s| s.jid.clone()).collect();
        self.broadcast_presence(o, None, &[], &[], actor_reason, &own, out);
    }

    /// Removes occupant `nick` with status `code` (307 kick, 301 ban, 321, 322): unavailable
    /// presence to everyone left and to its sessions. False if there was no such occupant.
    fn expel(
        &mut self,
        nick: &str,
        code: u16,
        actor_reason: Option<&Element>,
        out: &mut Out,
    ) -> bool {
        let Some(o) = self.occupants.remove(nick) else {
            return false;
        };
        for s in &o.clients {
            self.by_jid.remove(&s.jid);
        }
        let own: Vec<String> = o.clients.iter().map(|s| s.jid.clone()).collect();
        self.unavailable_presence(&o, &[code], &[], actor_reason, &own, out);
        true
    }

    fn vanish_if_empty(&mut self, out: &mut Out) {
        if self.occupants.is_empty() && !self.config.persistent {
            out.gone = true;
        }
    }

    /// §7.6: changing nick.
    fn change_nick(
        &mut self,
        from: &str,
        old: &str,
        new: &str,
        el: &Element,
        env: &Env<'_>,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        if !valid_nick(new, env.max_nick_bytes) {
            return Err(err_t(Condition::JidMalformed, ErrorType::Modify));
        }
        let bare = bare_of(from).to_string();
        if self.occupants.contains_key(new) || self.reserved_by_other(new, &bare) {
            return Err(err_t(Condition::Conflict, ErrorType::Cancel));
        }
        let Some(o) = self.occupants.get(old) else {
            return Ok(());
        };
        if o.clients.len() > 1 {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Cancel)
                .with_text("the nick is held by more than one session"));
        }
        let Some(mut o) = self.occupants.remove(old) else {
            return Ok(());
        };
        let own: Vec<String> = o.clients.iter().map(|s| s.jid.clone()).collect();
        // Unavailable from the old nick with 303 and the new nick, to everyone.
        let (with_jid, without) = self.occupant_presence(
            &o,
            Some("unavailable"),
            &[("nick", new.to_string())],
            &[303],
            None,
        );
        let with_jid = {
            let mut p = with_jid;
            if let Some(item) = p
                .get_child_mut("x", NS_USER)
                .and_then(|x| x.get_child_mut("item", NS_USER))
            {
                item.set_attr("role", o.role.as_str());
            }
            p
        };
        let without = {
            let mut p = without;
            if let Some(item) = p
                .get_child_mut("x", NS_USER)
                .and_then(|x| x.get_child_mut("item", NS_USER))
            {
                item.set_attr("role", o.role.as_str());
            }
            p
        };
        self.to_everyone_and_self(&with_jid, &without, &own, &mut out.stanzas);
        o.nick = new.to_string();
        if let Some(s) = o.clients.iter_mut().find(|s| s.jid == from) {
            s.presence = Self::presence_payload(el);
        }
        self.occupants.insert(new.to_string(), o.clone());
        self.by_jid.insert(from.to_string(), new.to_string());
        self.broadcast_presence(&o, None, &[], &[], None, &own, &mut out.stanzas);
        Ok(())
    }

    // ---------------------------------------------------------------- messages

    fn take_token(&mut self, nick: &str, env: &Env<'_>) -> bool {
        let Some(o) = self.occupants.get_mut(nick) else {
            return false;
        };
        let (rate, burst) = env.rate;
        let elapsed = (env.now_ms - o.refilled_ms).max(0) as f32 / 1000.0;
        o.tokens = (o.tokens + elapsed * rate).min(burst);
        o.refilled_ms = env.now_ms;
        if o.tokens >= 1.0 {
            o.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A message to the room's bare JID (§7.4 groupchat, §8.1 subject, §7.8 invitations,
    /// §7.13 voice requests).
    pub fn message(
        &mut self,
        from: &str,
        el: &Element,
        env: &Env<'_>,
    ) -> Result<MessageOutcome, StanzaError> {
        match el.attr("type") {
            Some("groupchat") => self.groupchat(from, el, env),
            Some("error") => {
                // A session bouncing the room's messages is gone (Prosody: kicked, 333).
                let mut out = Out::default();
                if self.by_jid.contains_key(from) {
                    self.leave_session(
                        from,
                        &[333],
                        &Element::new("presence", ns::CLIENT),
                        &mut out,
                    );
                }
                Ok(MessageOutcome::Done(out))
            }
            _ => {
                if let Some(x) = el.get_child("x", NS_USER) {
                    if let Some(inv) = x.get_child("invite", NS_USER) {
                        return self.invite(from, inv, el, env).map(MessageOutcome::Done);
                    }
                    if let Some(d) = x.get_child("decline", NS_USER) {
                        return self.decline(from, d).map(MessageOutcome::Done);
                    }
                }
                if let Some(x) = el.get_child("x", form::NS)
                    && let Ok(f) = form::parse(x)
                    && f.form_type.as_deref() == Some(NS_REQUEST)
                {
                    return self.voice_request(from, &f, env).map(MessageOutcome::Done);
                }
                Err(err_t(Condition::BadRequest, ErrorType::Modify)
                    .with_text("messages to a room are of type groupchat"))
            }
        }
    }

    fn groupchat(
        &mut self,
        from: &str,
        el: &Element,
        env: &Env<'_>,
    ) -> Result<MessageOutcome, StanzaError> {
        // §7.4: only occupants speak.
        let Some(nick) = self.by_jid.get(from).cloned() else {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Cancel)
                .with_text("only occupants may send messages to the room"));
        };
        let role = self.occupants.get(&nick).map_or(Role::None, |o| o.role);
        // §7.4 / §8.3: a visitor has no voice in a moderated room.
        if role < Role::Participant {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth)
                .with_text("visitors may not speak in this room"));
        }
        if !self.take_token(&nick, env) {
            return Err(err_t(Condition::ResourceConstraint, ErrorType::Wait)
                .with_text("too many messages; slow down"));
        }
        let has_body = el.has_child("body", ns::CLIENT);
        let subject = el.get_child("subject", ns::CLIENT);
        // §8.1: a subject without a body changes the subject.
        if let (Some(subject), false) = (subject, has_body) {
            let bare = bare_of(from);
            let aff = self.aff_of(bare, env, true);
            let may =
                role == Role::Moderator || aff >= Affiliation::Admin || self.config.change_subject;
            if !may {
                return Err(err_t(Condition::Forbidden, ErrorType::Auth)
                    .with_text("you may not change the subject"));
            }
            let text = subject.text();
            if text.len() > env.max_subject_bytes {
                return Err(err_t(Condition::NotAcceptable, ErrorType::Modify)
                    .with_text("the subject is too long"));
            }
            self.subject = Subject {
                text,
                nick: nick.clone(),
            };
        }
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.occupant_jid(&nick));
        if let Some(id) = el.attr("id") {
            m.set_attr("id", id);
        }
        if let Some(lang) = el.attr("xml:lang") {
            m.set_attr("xml:lang", lang);
        }
        for c in el.children() {
            // No stanza-id the room did not stamp (XEP-0359 §3.3), no occupant-id it did not
            // give (XEP-0421 §4), no MUC payloads.
            let spoofed = (c.is("stanza-id", NS_SID) && c.attr("by") == Some(self.jid.as_str()))
                || is_room_element(c);
            if !spoofed {
                m.push_child(c.clone());
            }
        }
        if let Some(o) = self.occupants.get(&nick) {
            m.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", o.id.clone()));
        }
        let is_subject = subject.is_some() && !has_body;
        let archive = self.config.archiving
            && !el.has_child("no-store", "urn:xmpp:hints")
            && (has_body
                || el
                    .children()
                    .any(|c| c.name() == "retract" || c.name() == "apply-to"));
        Ok(MessageOutcome::Groupchat(Accepted {
            message: m,
            occupant_jid: self.occupant_jid(&nick),
            archive,
            history: has_body && !is_subject && self.config.history_length > 0,
        }))
    }

    /// Broadcasts an accepted groupchat message with the archive's id (XEP-0359).
    pub fn broadcast(&mut self, mut a: Accepted, stanza_id: Option<String>, env: &Env<'_>) -> Out {
        if let Some(id) = stanza_id {
            a.message.push_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("id", id)
                    .with_attr("by", self.jid.clone()),
            );
        }
        let mut out = Out::default();
        for o in self.occupants.values() {
            for s in &o.clients {
                let mut m = a.message.clone();
                m.set_attr("to", s.jid.clone());
                out.stanzas.push(m);
            }
        }
        if a.message.has_child("subject", ns::CLIENT) && !a.message.has_child("body", ns::CLIENT) {
            out.save = self.config.persistent;
        }
        if a.history {
            let chars = a.message.to_bytes().len();
            self.history.push_back(HistoryEntry {
                message: a.message,
                stamp_ms: env.now_ms,
                chars,
            });
            while self.history.len() > self.config.history_length {
                self.history.pop_front();
            }
        }
        out
    }

    /// A message to `room/nick`: a private message (§7.5).
    pub fn private_message(
        &mut self,
        from: &str,
        nick: &str,
        el: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let mut out = Out::default();
        match el.attr("type") {
            Some("groupchat") => {
                return Err(err_t(Condition::BadRequest, ErrorType::Modify)
                    .with_text("groupchat messages go to the room"));
            }
            Some("error") => {
                if self.by_jid.contains_key(from) {
                    self.leave_session(
                        from,
                        &[333],
                        &Element::new("presence", ns::CLIENT),
                        &mut out,
                    );
                }
                return Ok(out);
            }
            _ => {}
        }
        let Some(sender) = self.by_jid.get(from).cloned() else {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Cancel)
                .with_text("only occupants may send private messages"));
        };
        let Some(target) = self.occupants.get(nick) else {
            return Err(err_t(Condition::ItemNotFound, ErrorType::Cancel));
        };
        let role = self.occupants.get(&sender).map_or(Role::None, |o| o.role);
        let allowed = match self.config.allow_pm {
            AllowPm::Anyone => true,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        };
        if !allowed {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth)
                .with_text("private messages are not allowed here"));
        }
        let targets: Vec<String> = target.clients.iter().map(|s| s.jid.clone()).collect();
        if !self.take_token(&sender, env) {
            return Err(err_t(Condition::ResourceConstraint, ErrorType::Wait));
        }
        let mut m =
            Element::new("message", ns::CLIENT).with_attr("from", self.occupant_jid(&sender));
        for (k, v) in el.attrs() {
            if !matches!(k, "from" | "to") {
                m.set_attr(k, v);
            }
        }
        for c in el.children().filter(|c| !is_room_element(c)) {
            m.push_child(c.clone());
        }
        // §7.5: the muc#user marker.
        m.push_child(Element::new("x", NS_USER));
        for t in targets {
            let mut m = m.clone();
            m.set_attr("to", t);
            out.stanzas.push(m);
        }
        Ok(out)
    }

    /// XEP-0410: whether `from` is an occupant under `nick`.
    pub fn is_session_of(&self, from: &str, nick: &str) -> bool {
        self.by_jid.get(from).is_some_and(|n| n == nick)
    }

    /// The newest session of `nick` (where IQs to the occupant go).
    pub fn session_of(&self, nick: &str) -> Option<&str> {
        self.occupants
            .get(nick)
            .and_then(|o| o.clients.last())
            .map(|s| s.jid.as_str())
    }

    /// The real full JIDs of every session in the room.
    pub fn client_jids(&self) -> impl Iterator<Item = &str> {
        self.occupants
            .values()
            .flat_map(|o| o.clients.iter().map(|s| s.jid.as_str()))
    }

    /// Whether `from` may read the room archive or the occupant list: anyone who may join.
    pub fn may_read(&self, from_bare: &str, env: &Env<'_>) -> bool {
        let aff = self.aff_of(from_bare, env, true);
        if aff == Affiliation::Outcast {
            return false;
        }
        !self.config.members_only || aff >= Affiliation::Member
    }

    /// Whether `from` is a moderator in the room.
    pub fn is_moderator(&self, from: &str) -> bool {
        self.by_jid
            .get(from)
            .and_then(|n| self.occupants.get(n))
            .is_some_and(|o| o.role == Role::Moderator)
    }

    /// The occupant id of `from`'s occupant.
    pub fn id_of_session(&self, from: &str) -> Option<&str> {
        self.by_jid
            .get(from)
            .and_then(|n| self.occupants.get(n))
            .map(|o| o.id.as_str())
    }

    /// XEP-0425: the moderation notice for message `id`, to everyone.
    pub fn moderation_notice(&self, moderator: &str, id: &str, reason: Option<&str>) -> Element {
        let by = self
            .by_jid
            .get(moderator)
            .map(|n| self.occupant_jid(n))
            .unwrap_or_else(|| self.jid.clone());
        let mut moderated =
            Element::new("moderated", "urn:xmpp:message-moderate:1").with_attr("by", by);
        if let Some(oid) = self.id_of_session(moderator) {
            moderated.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", oid));
        }
        let mut retract = Element::new("retract", "urn:xmpp:message-retract:1")
            .with_attr("id", id)
            .with_child(moderated);
        if let Some(r) = reason {
            retract.push_child(Element::new("reason", "urn:xmpp:message-retract:1").with_text(r));
        }
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.clone())
            .with_attr("id", id.to_string() + "-moderated")
            .with_child(retract)
    }

    /// Sends `m` (without `to`) to every occupant; forgets it in history if it names `id`.
    pub fn to_all(&mut self, m: &Element, retracted: Option<&str>) -> Out {
        if let Some(id) = retracted {
            self.history.retain(|h| {
                h.message
                    .get_child("stanza-id", NS_SID)
                    .and_then(|s| s.attr("id"))
                    != Some(id)
            });
        }
        let mut out = Out::default();
        for s in self.client_jids() {
            let mut m = m.clone();
            m.set_attr("to", s);
            out.stanzas.push(m);
        }
        out
    }

    // ---------------------------------------------------------------- invitations

    /// §7.8.2: a mediated invitation.
    fn invite(
        &mut self,
        from: &str,
        inv: &Element,
        el: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let Some(to) = inv.attr("to").and_then(|t| canto_stanza::parse_jid(t).ok()) else {
            return Err(err_t(Condition::JidMalformed, ErrorType::Modify));
        };
        if !self.by_jid.contains_key(from) {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Cancel)
                .with_text("only occupants may invite"));
        }
        let bare = bare_of(from);
        let aff = self.aff_of(bare, env, true);
        // §7.8: in a members-only room admins invite, and members when the room allows it.
        if self.config.members_only
            && aff < Affiliation::Admin
            && !(self.config.allow_invites && aff >= Affiliation::Member)
        {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth)
                .with_text("you may not invite to this room"));
        }
        let mut out = Out::default();
        let invitee = to.to_bare().to_string();
        if self.config.members_only && self.affiliation(&invitee) < Affiliation::Member {
            if self.affiliation(&invitee) == Affiliation::Outcast {
                return Err(err_t(Condition::Forbidden, ErrorType::Auth).with_text("banned"));
            }
            self.affiliations.insert(
                invitee.clone(),
                AffEntry {
                    affiliation: Affiliation::Member,
                    reason: String::new(),
                    nick: None,
                },
            );
            out.save = self.config.persistent;
        }
        let mut invite = Element::new("invite", NS_USER).with_attr("from", from);
        if let Some(r) = inv.get_child("reason", NS_USER) {
            invite.push_child(r.clone());
        }
        let mut x = Element::new("x", NS_USER).with_child(invite);
        if !self.config.password.is_empty() {
            x.push_child(Element::new("password", NS_USER).with_text(self.config.password.clone()));
        }
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.clone())
            .with_attr("to", to.to_string())
            .with_child(x);
        if let Some(id) = el.attr("id") {
            m.set_attr("id", id);
        }
        m.push_child(
            Element::new("body", ns::CLIENT)
                .with_text(format!("{from} invites you to the room {}", self.jid)),
        );
        out.stanzas.push(m);
        Ok(out)
    }

    /// §7.8.2: a declined invitation goes back to the inviter.
    fn decline(&mut self, from: &str, d: &Element) -> Result<Out, StanzaError> {
        let Some(to) = d.attr("to").and_then(|t| canto_stanza::parse_jid(t).ok()) else {
            return Err(err_t(Condition::JidMalformed, ErrorType::Modify));
        };
        let mut decline = Element::new("decline", NS_USER).with_attr("from", from);
        if let Some(r) = d.get_child("reason", NS_USER) {
            decline.push_child(r.clone());
        }
        let m = Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.clone())
            .with_attr("to", to.to_string())
            .with_child(Element::new("x", NS_USER).with_child(decline));
        Ok(Out {
            stanzas: vec![m],
            ..Out::default()
        })
    }

    // ---------------------------------------------------------------- voice requests

    /// §7.13 (a visitor asks for voice) and §8.6 (a moderator approves).
    fn voice_request(
        &mut self,
        from: &str,
        f: &form::Submitted,
        _env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let Some(nick) = self.by_jid.get(from).cloned() else {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Cancel));
        };
        let value = |var: &str| {
            f.fields
                .iter()
                .find(|(v, _)| v == var)
                .and_then(|(_, vals)| vals.first().cloned())
        };
        let mut out = Out::default();
        let me = self.occupants.get(&nick).map_or(Role::None, |o| o.role);
        if me == Role::Moderator {
            // §8.6: the approval.
            let allow = value("muc#request_allow")
                .and_then(|v| form::boolean(&[v]))
                .unwrap_or(false);
            let Some(target) = value("muc#roomnick") else {
                return Err(err_t(Condition::BadRequest, ErrorType::Modify));
            };
            if allow
                && let Some(t) = self.occupants.get_mut(&target)
                && t.role == Role::Visitor
            {
                t.role = Role::Participant;
                self.announce(&target, None, &mut out.stanzas);
            }
            return Ok(out);
        }
        if value("muc#role").as_deref() != Some("participant") {
            return Err(err_t(Condition::BadRequest, ErrorType::Modify));
        }
        if me != Role::Visitor {
            return Ok(out);
        }
        let s = |v: &str| vec![v.to_string()];
        let mut x = form::new_form("form", NS_REQUEST);
        x.push_child(Element::new("title", form::NS).with_text("Voice request"));
        x.push_child(form::field(
            "muc#role",
            "Requested role",
            form::Kind::Text,
            &s("participant"),
        ));
        x.push_child(form::field(
            "muc#jid",
            "User ID",
            form::Kind::JidSingle,
            &s(from),
        ));
        x.push_child(form::field(
            "muc#roomnick",
            "Room nickname",
            form::Kind::Text,
            &s(&nick),
        ));
        x.push_child(form::field(
            "muc#request_allow",
            "Grant voice to this person?",
            form::Kind::Boolean,
            &s("false"),
        ));
        for o in self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
        {
            for sess in &o.clients {
                out.stanzas.push(
                    Element::new("message", ns::CLIENT)
                        .with_attr("from", self.jid.clone())
                        .with_attr("to", sess.jid.clone())
                        .with_child(x.clone()),
                );
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- admin (§8, §9, §10)

    /// `muc#admin` get: a list by role or affiliation.
    pub fn admin_get(
        &self,
        from: &str,
        q: &Element,
        env: &Env<'_>,
    ) -> Result<Element, StanzaError> {
        let Some(item) = q.get_child("item", NS_ADMIN) else {
            return Err(err_t(Condition::BadRequest, ErrorType::Modify));
        };
        let bare = bare_of(from);
        let aff = self.aff_of(bare, env, true);
        let role = self
            .by_jid
            .get(from)
            .and_then(|n| self.occupants.get(n))
            .map_or(Role::None, |o| o.role);
        let mut res = Element::new("query", NS_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let wanted = Affiliation::parse(a)
                .ok_or_else(|| err_t(Condition::BadRequest, ErrorType::Modify))?;
            // §9.5/§9.8: admins and owners see the member and outcast lists; §10.5/§10.8: the
            // owner and admin lists are the owners', and admins' too when the room is not
            // anonymous anyway.
            let members_visible = wanted == Affiliation::Member
                && role >= Role::Participant
                && self.config.members_only;
            let allowed = match wanted {
                Affiliation::Owner | Affiliation::Admin => {
                    aff == Affiliation::Owner
                        || (aff == Affiliation::Admin && self.config.whois == Whois::Anyone)
                }
                _ => aff >= Affiliation::Admin || members_visible,
            };
            if !allowed {
                return Err(err_t(Condition::Forbidden, ErrorType::Auth));
            }
            if wanted == Affiliation::None {
                return Err(err_t(Condition::BadRequest, ErrorType::Modify));
            }
            for (jid, e) in self
                .affiliations
                .iter()
                .filter(|(_, e)| e.affiliation == wanted)
            {
                let mut it = Element::new("item", NS_ADMIN)
                    .with_attr("affiliation", wanted.as_str())
                    .with_attr("jid", jid.clone());
                if let Some(n) = &e.nick {
                    it.set_attr("nick", n.clone());
                }
                if !e.reason.is_empty() {
                    it.push_child(Element::new("reason", NS_ADMIN).with_text(e.reason.clone()));
                }
                res.push_child(it);
            }
            return Ok(res);
        }
        if let Some(r) = item.attr("role") {
            let wanted =
                Role::parse(r).ok_or_else(|| err_t(Condition::BadRequest, ErrorType::Modify))?;
            // §8.5: moderators list roles.
            if role != Role::Moderator {
                return Err(err_t(Condition::Forbidden, ErrorType::Auth));
            }
            for o in self.occupants.values().filter(|o| o.role == wanted) {
                let mut it = Element::new("item", NS_ADMIN)
                    .with_attr("role", wanted.as_str())
                    .with_attr("affiliation", self.affiliation(&o.bare).as_str())
                    .with_attr("nick", o.nick.clone());
                if let Some(s) = o.clients.last() {
                    it.set_attr("jid", s.jid.clone());
                }
                res.push_child(it);
            }
            return Ok(res);
        }
        Err(err_t(Condition::BadRequest, ErrorType::Modify))
    }

    /// `muc#admin` set: role and affiliation changes, all or none (§8, §9, §10).
    pub fn admin_set(
        &mut self,
        from: &str,
        q: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let items: Vec<&Element> = q.children().filter(|c| c.is("item", NS_ADMIN)).collect();
        if items.is_empty() || items.len() > 256 {
            return Err(err_t(Condition::BadRequest, ErrorType::Modify));
        }
        let actor_bare = bare_of(from).to_string();
        let actor_aff = self.aff_of(&actor_bare, env, true);
        let actor_role = self
            .by_jid
            .get(from)
            .and_then(|n| self.occupants.get(n))
            .map_or(Role::None, |o| o.role);
        let actor_nick = self.by_jid.get(from).cloned();
        // Check every item first: the change is all or nothing.
        enum Change {
            Role(String, Role, String),
            Aff(String, Affiliation, String, Option<String>),
        }
        let mut changes = Vec::new();
        for item in &items {
            let reason = item
                .get_child("reason", NS_ADMIN)
                .map(Element::text)
                .unwrap_or_default();
            if let Some(a) = item.attr("affiliation") {
                let new = Affiliation::parse(a)
                    .ok_or_else(|| err_t(Condition::BadRequest, ErrorType::Modify))?;
                let target = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => canto_stanza::parse_jid(j)?.to_bare().to_string(),
                    (None, Some(n)) => self
                        .occupants
                        .get(n)
                        .map(|o| o.bare.clone())
                        .ok_or_else(|| err_t(Condition::ItemNotFound, ErrorType::Cancel))?,
                    (None, None) => return Err(err_t(Condition::BadRequest, ErrorType::Modify)),
                };
                let current = self.affiliation(&target);
                // §9 (admins: member/none/outcast of those below admin), §10 (owners: all).
                if actor_aff < Affiliation::Admin {
                    return Err(err_t(Condition::Forbidden, ErrorType::Auth));
                }
                // §10.3–§10.8: only owners change the owner and admin lists…
                if actor_aff == Affiliation::Admin && new >= Affiliation::Admin {
                    return Err(err_t(Condition::Forbidden, ErrorType::Auth));
                }
                // …and §9.1/§9.4: an admin may not ban or demote an admin or owner.
                if actor_aff == Affiliation::Admin && current >= Affiliation::Admin {
                    return Err(err_t(Condition::NotAllowed, ErrorType::Cancel));
                }
                changes.push(Change::Aff(
                    target,
                    new,
                    reason,
                    item.attr("nick").map(str::to_string),
                ));
            } else if let Some(r) = item.attr("role") {
                let new = Role::parse(r)
                    .ok_or_else(|| err_t(Condition::BadRequest, ErrorType::Modify))?;
                let Some(nick) = item.attr("nick") else {
                    return Err(err_t(Condition::BadRequest, ErrorType::Modify));
                };
                let Some(target) = self.occupants.get(nick) else {
                    return Err(err_t(Condition::ItemNotFound, ErrorType::Cancel));
                };
                if actor_role != Role::Moderator {
                    return Err(err_t(Condition::Forbidden, ErrorType::Auth));
                }
                let target_aff = self.occupant_affiliation(target);
                // §8.2/§8.4: not against someone of an affiliation at or above the actor's
                // (an owner may act on admins)…
                if target_aff > actor_aff
                    || (target_aff == actor_aff
                        && target_aff >= Affiliation::Admin
                        && actor_aff != Affiliation::Owner)
                {
                    return Err(err_t(Condition::NotAllowed, ErrorType::Cancel));
                }
                // …and admins/owners keep moderator (§9.7: revoke moderator from an admin is
                // not allowed).
                if target_aff >= Affiliation::Admin && new != Role::Moderator && new != Role::None {
                    return Err(err_t(Condition::NotAllowed, ErrorType::Cancel));
                }
                // §9.6: granting or revoking moderator is for admins and owners.
                if (new == Role::Moderator || target.role == Role::Moderator)
                    && actor_aff < Affiliation::Admin
                    && new != Role::None
                {
                    return Err(err_t(Condition::NotAllowed, ErrorType::Cancel));
                }
                changes.push(Change::Role(nick.to_string(), new, reason));
            } else {
                return Err(err_t(Condition::BadRequest, ErrorType::Modify));
            }
        }
        // §10.6.1: the room keeps an owner.
        let mut owners: Vec<String> = self.owners().map(str::to_string).collect();
        for c in &changes {
            if let Change::Aff(j, a, _, _) = c {
                owners.retain(|o| o != j);
                if *a == Affiliation::Owner {
                    owners.push(j.clone());
                }
            }
        }
        if owners.is_empty() {
            return Err(
                err_t(Condition::Conflict, ErrorType::Cancel).with_text("a room needs an owner")
            );
        }
        let actor = Element::new("x", NS_USER);
        let actor_el = |reason: &str| {
            let mut holder = actor.clone();
            if let Some(n) = &actor_nick {
                holder.push_child(Element::new("actor", NS_USER).with_attr("nick", n.clone()));
            }
            if !reason.is_empty() {
                holder.push_child(Element::new("reason", NS_USER).with_text(reason));
            }
            holder
        };
        let mut out = Out::default();
        for c in changes {
            match c {
                Change::Role(nick, role, reason) => {
                    let holder = actor_el(&reason);
                    self.set_role(&nick, role, &holder, &mut out);
                }
                Change::Aff(jid, aff, reason, nick) => {
                    let holder = actor_el(&reason);
                    self.set_affiliation(&jid, aff, &reason, nick, &holder, &mut out);
                    out.save = self.config.persistent || out.save;
                }
            }
        }
        Ok(out)
    }

    fn set_role(&mut self, nick: &str, role: Role, actor_reason: &Element, out: &mut Out) {
        if role == Role::None {
            // §8.2: kick, 307.
            if self.expel(nick, 307, Some(actor_reason), out) {
                self.vanish_if_empty(out);
            }
            return;
        }
        let Some(o) = self.occupants.get_mut(nick) else {
            return;
        };
        if o.role == role {
            return;
        }
        o.role = role;
        self.announce(nick, Some(actor_reason), &mut out.stanzas);
    }

    /// Changes one affiliation and what follows from it for an occupant (§9, §10).
    pub fn set_affiliation(
        &mut self,
        jid: &str,
        aff: Affiliation,
        reason: &str,
        nick: Option<String>,
        actor_reason: &Element,
        out: &mut Out,
    ) {
        let old_nick = self.affiliations.get(jid).and_then(|e| e.nick.clone());
        if aff == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            self.affiliations.insert(
                jid.to_string(),
                AffEntry {
                    affiliation: aff,
                    reason: reason.to_string(),
                    nick: nick.or(old_nick),
                },
            );
        }
        let present: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.bare == jid)
            .map(|o| o.nick.clone())
            .collect();
        if present.is_empty() {
            // Told even when not in the room (issue 12, §9.3/§9.4: a message from the room).
            let mut item = Element::new("item", NS_USER)
                .with_attr("affiliation", aff.as_str())
                .with_attr("jid", jid.to_string());
            for c in actor_reason.children() {
                item.push_child(c.clone());
            }
            // §18.1 (status 101): the affiliation changed while the user was away.
            let mut x = Element::new("x", NS_USER)
                .with_child(item)
                .with_child(status(101));
            if aff == Affiliation::Outcast {
                x.push_child(status(301));
            } else if self.config.members_only && aff < Affiliation::Member {
                x.push_child(status(321));
            }
            out.stanzas.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.clone())
                    .with_attr("to", jid.to_string())
                    .with_child(x),
            );
            return;
        }
        for nick in present {
            let removed = match aff {
                // §9.1: ban, 301.
                Affiliation::Outcast => Some(301),
                // §9.4: removed from a members-only room, 321.
                Affiliation::None if self.config.members_only => Some(321),
                _ => None,
            };
            if let Some(code) = removed {
                self.expel(&nick, code, Some(actor_reason), out);
                continue;
            }
            let role = self.default_role(aff);
            if let Some(o) = self.occupants.get_mut(&nick) {
                o.role = role;
                self.announce(&nick, Some(actor_reason), &mut out.stanzas);
            }
        }
        self.vanish_if_empty(out);
    }

    /// An IQ set to the room's bare JID in one of the room's own namespaces: owner
    /// (configuration, destroy), admin (roles, affiliations), registration.
    pub fn iq_set(
        &mut self,
        from: &str,
        payload: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        match (payload.name(), payload.ns()) {
            ("query", NS_OWNER) => {
                if let Some(d) = payload.get_child("destroy", NS_OWNER) {
                    // §10.9: owners only.
                    if !self.is_owner(from, env) {
                        return Err(err_t(Condition::Forbidden, ErrorType::Auth));
                    }
                    let alt = d
                        .attr("jid")
                        .map(|j| canto_stanza::parse_jid(j).map(|j| j.to_string()))
                        .transpose()?;
                    let reason = d.get_child("reason", NS_OWNER).map(Element::text);
                    Ok(self.destroy(alt.as_deref(), reason.as_deref()))
                } else if let Some(x) = payload.get_child("x", form::NS) {
                    self.owner_set(from, x, env)
                } else {
                    Err(err_t(Condition::BadRequest, ErrorType::Modify))
                }
            }
            ("query", NS_ADMIN) => self.admin_set(from, payload, env),
            ("query", NS_REGISTER) => self.register_set(from, payload, env),
            _ => Err(err_t(Condition::ServiceUnavailable, ErrorType::Cancel)),
        }
    }

    /// Checks the room's own consistency (tests and fuzzing): every real JID maps to an
    /// occupant that has that session, and every session is mapped.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut count = 0;
        for (nick, o) in &self.occupants {
            if &o.nick != nick {
                return Err(format!("occupant {nick} calls itself {}", o.nick));
            }
            if o.clients.is_empty() {
                return Err(format!("occupant {nick} has no session"));
            }
            for c in &o.clients {
                count += 1;
                if self.by_jid.get(&c.jid) != Some(nick) {
                    return Err(format!("{} is not mapped to {nick}", c.jid));
                }
                if bare_of(&c.jid) != o.bare {
                    return Err(format!("{} is not of {}", c.jid, o.bare));
                }
            }
        }
        if count != self.by_jid.len() {
            return Err("stale real JIDs in the map".into());
        }
        if self.history.len() > self.config.history_length {
            return Err("history longer than configured".into());
        }
        if !self.locked && self.owners().next().is_none() {
            return Err("a room without an owner".into());
        }
        Ok(())
    }

    // ---------------------------------------------------------------- owner (§10)

    /// `muc#owner` get: the configuration form (§10.2), owners only.
    pub fn owner_get(&self, from: &str, env: &Env<'_>) -> Result<Element, StanzaError> {
        if self.aff_of(bare_of(from), env, true) != Affiliation::Owner {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth));
        }
        Ok(Element::new("query", NS_OWNER).with_child(self.config.to_form("form", env.bounds)))
    }

    /// `muc#owner` set with a form: configuration (§10.2), instant room (§10.1.2), cancel
    /// (§10.1.3: a locked room is destroyed). Destroy (§10.9) is [`Room::destroy`].
    pub fn owner_set(
        &mut self,
        from: &str,
        x: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        if self.aff_of(bare_of(from), env, true) != Affiliation::Owner {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth));
        }
        let f = form::parse(x)?;
        let mut out = Out::default();
        match f.kind.as_str() {
            "cancel" => {
                if self.locked {
                    let d = self.destroy(None, None);
                    return Ok(d);
                }
                return Ok(out);
            }
            "submit" => {}
            _ => return Err(err_t(Condition::BadRequest, ErrorType::Modify)),
        }
        let new = self.config.apply(&f, env.bounds)?;
        let old = std::mem::replace(&mut self.config, new);
        let was_locked = self.locked;
        self.locked = false;
        out.save = self.config.persistent || old.persistent;
        if was_locked {
            return Ok(out);
        }
        // §10.2.1: tell occupants what changed.
        let mut codes = Vec::new();
        if old.whois != self.config.whois {
            codes.push(if self.config.whois == Whois::Anyone {
                172
            } else {
                173
            });
        }
        if old.archiving != self.config.archiving {
            codes.push(if self.config.archiving { 170 } else { 171 });
        }
        if codes.is_empty() || old.public != self.config.public || old.name != self.config.name {
            codes.push(104);
        }
        let mut x = Element::new("x", NS_USER);
        for c in codes {
            x.push_child(status(c));
        }
        let notice = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.clone())
            .with_child(x);
        out.stanzas.extend(self.to_all(&notice, None).stanzas);
        // §9.3 322: a room now members-only removes those who are not members.
        if self.config.members_only && !old.members_only {
            let outsiders: Vec<String> = self
                .occupants
                .values()
                .filter(|o| self.affiliation(&o.bare) < Affiliation::Member)
                .map(|o| o.nick.clone())
                .collect();
            for nick in outsiders {
                self.expel(&nick, 322, None, &mut out);
            }
        }
        // Moderation switched on or off changes the role of the unaffiliated.
        if old.moderated != self.config.moderated {
            let nicks: Vec<String> = self.occupants.keys().cloned().collect();
            for n in nicks {
                let Some(o) = self.occupants.get(&n) else {
                    continue;
                };
                let aff = self.affiliation(&o.bare);
                if aff != Affiliation::None || o.role == Role::Moderator {
                    continue;
                }
                let role = self.default_role(aff);
                if let Some(o) = self.occupants.get_mut(&n)
                    && o.role != role
                {
                    o.role = role;
                    self.announce(&n, None, &mut out.stanzas);
                }
            }
        }
        while self.history.len() > self.config.history_length {
            self.history.pop_front();
        }
        self.vanish_if_empty(&mut out);
        Ok(out)
    }

    /// §10.9: destroys the room; occupants get unavailable presence with `<destroy/>`.
    pub fn destroy(&mut self, alternate: Option<&str>, reason: Option<&str>) -> Out {
        let mut destroy = Element::new("destroy", NS_USER);
        if let Some(a) = alternate {
            destroy.set_attr("jid", a);
        }
        if let Some(r) = reason {
            destroy.push_child(Element::new("reason", NS_USER).with_text(r));
        }
        let mut out = Out {
            gone: true,
            ..Out::default()
        };
        for o in self.occupants.values() {
            for s in &o.clients {
                out.stanzas.push(
                    Element::new("presence", ns::CLIENT)
                        .with_attr("from", self.occupant_jid(&o.nick))
                        .with_attr("to", s.jid.clone())
                        .with_attr("type", "unavailable")
                        .with_child(
                            Element::new("x", NS_USER)
                                .with_child(
                                    Element::new("item", NS_USER)
                                        .with_attr("affiliation", "none")
                                        .with_attr("role", "none"),
                                )
                                .with_child(destroy.clone())
                                .with_child(status(110)),
                        ),
                );
            }
        }
        self.occupants.clear();
        self.by_jid.clear();
        out
    }

    /// Whether `from` may destroy the room.
    pub fn is_owner(&self, from: &str, env: &Env<'_>) -> bool {
        self.aff_of(bare_of(from), env, true) == Affiliation::Owner
    }

    // ---------------------------------------------------------------- registration (§7.10)

    /// `jabber:iq:register` get.
    pub fn register_get(&self, from: &str) -> Element {
        let bare = bare_of(from);
        let mut q = Element::new("query", NS_REGISTER);
        if let Some(n) = self.reserved_nick(bare) {
            // §7.10: already registered.
            q.push_child(Element::new("registered", NS_REGISTER));
            q.push_child(Element::new("username", NS_REGISTER).with_text(n));
            return q;
        }
        q.push_child(
            Element::new("instructions", NS_REGISTER)
                .with_text("Register a nickname: you become a member and nobody else may use it."),
        );
        let mut x = form::new_form("form", NS_REGISTER_FORM);
        x.push_child(
            form::field("muc#register_roomnick", "Nickname", form::Kind::Text, &[])
                .with_child(Element::new("required", form::NS)),
        );
        q.push_child(x);
        q
    }

    /// `jabber:iq:register` set: a form with the nick, or `<remove/>`.
    pub fn register_set(
        &mut self,
        from: &str,
        q: &Element,
        env: &Env<'_>,
    ) -> Result<Out, StanzaError> {
        let bare = bare_of(from).to_string();
        let aff = self.affiliation(&bare);
        if aff == Affiliation::Outcast {
            return Err(err_t(Condition::Forbidden, ErrorType::Auth));
        }
        let mut out = Out::default();
        if q.has_child("remove", NS_REGISTER) {
            if let Some(e) = self.affiliations.get_mut(&bare) {
                e.nick = None;
                if e.affiliation == Affiliation::Member {
                    self.affiliations.remove(&bare);
                }
            }
            out.save = self.config.persistent;
            return Ok(out);
        }
        let Some(x) = q.get_child("x", form::NS) else {
            return Err(err_t(Condition::BadRequest, ErrorType::Modify));
        };
        let f = form::parse(x)?;
        if f.kind != "submit"
            || f.form_type
                .as_deref()
                .is_some_and(|t| t != NS_REGISTER_FORM)
        {
            return Err(err_t(Condition::BadRequest, ErrorType::Modify));
        }
        let nick = f
            .fields
            .iter()
            .find(|(v, _)| v == "muc#register_roomnick")
            .and_then(|(_, v)| v.first().cloned())
            .unwrap_or_default();
        let nick = canto_stanza::jid::normalize_resource(&nick).unwrap_or_default();
        if !valid_nick(&nick, env.max_nick_bytes) {
            return Err(err_t(Condition::NotAcceptable, ErrorType::Modify));
        }
        // §7.10: a nick another user reserved or uses.
        if self.reserved_by_other(&nick, &bare)
            || self.occupants.get(&nick).is_some_and(|o| o.bare != bare)
        {
            return Err(err_t(Condition::Conflict, ErrorType::Cancel));
        }
        let entry = self.affiliations.entry(bare.clone()).or_insert(AffEntry {
            affiliation: Affiliation::Member,
            reason: String::new(),
            nick: None,
        });
        if entry.affiliation < Affiliation::Member {
            entry.affiliation = Affiliation::Member;
        }
        entry.nick = Some(nick);
        out.save = self.config.persistent;
        // An occupant who became a member sees the change.
        let present: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.bare == bare)
            .map(|o| o.nick.clone())
            .collect();
        for n in present {
            let aff = self.affiliation(&bare);
            let role = self.default_role(aff);
            if let Some(o) = self.occupants.get_mut(&n) {
                if o.role < role {
                    o.role = role;
                }
                self.announce(&n, None, &mut out.stanzas);
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- persistence

    /// The persistent state as one element (configuration form, affiliations, subject).
    pub fn to_stored(&self, bounds: Bounds) -> Element {
        let mut r = Element::new("room", super::NS_STORE).with_child(self.config.to_stored(bounds));
        for (jid, e) in &self.affiliations {
            let mut a = Element::new("affiliation", super::NS_STORE)
                .with_attr("jid", jid.clone())
                .with_attr("affiliation", e.affiliation.as_str());
            if let Some(n) = &e.nick {
                a.set_attr("nick", n.clone());
            }
            if !e.reason.is_empty() {
                a.set_attr("reason", e.reason.clone());
            }
            r.push_child(a);
        }
        if !self.subject.text.is_empty() {
            r.push_child(
                Element::new("subject", super::NS_STORE)
                    .with_attr("nick", self.subject.nick.clone())
                    .with_text(self.subject.text.clone()),
            );
        }
        r
    }

    /// A room read back from [`Room::to_stored`].
    pub fn from_stored(jid: &str, el: &Element, bounds: Bounds) -> Room {
        let config = el.get_child("x", form::NS).map_or_else(
            || RoomConfig::new(bounds),
            |x| RoomConfig::from_stored(x, bounds),
        );
        let mut affiliations = BTreeMap::new();
        for a in el
            .children()
            .filter(|c| c.is("affiliation", super::NS_STORE))
        {
            let (Some(j), Some(aff)) = (
                a.attr("jid"),
                a.attr("affiliation").and_then(Affiliation::parse),
            ) else {
                continue;
            };
            affiliations.insert(
                j.to_string(),
                AffEntry {
                    affiliation: aff,
                    reason: a.attr("reason").unwrap_or_default().to_string(),
                    nick: a.attr("nick").map(str::to_string),
                },
            );
        }
        let subject = el
            .get_child("subject", super::NS_STORE)
            .map(|s| Subject {
                text: s.text(),
                nick: s.attr("nick").unwrap_or_default().to_string(),
            })
            .unwrap_or_default();
        Room::restored(jid, config, affiliations, subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "coven@conference.localhost";
    const B: Bounds = Bounds {
        max_users: 10,
        max_history: 50,
        default_history: 3,
    };

    fn env() -> Env<'static> {
        Env {
            now_ms: 1_000_000,
            bounds: B,
            rate: (1.0, 3.0),
            max_nick_bytes: 64,
            max_subject_bytes: 100,
            sender_is_admin: false,
            secret: b"0123456789abcdef",
        }
    }

    fn x(xml: &str) -> Element {
        canto_core::roster::decode_element(xml.as_bytes()).unwrap_or_else(|| panic!("{xml}"))
    }

    /// A room created by alice and unlocked as an instant room.
    fn room() -> Room {
        let mut r = Room::new(ROOM, "alice@localhost", RoomConfig::new(B));
        let out = r
            .presence("alice@localhost/a", "Alice", &x("<presence/>"), &env())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let own = out.burst.iter().find(|p| p.name() == "presence").cloned();
        assert!(own.is_some_and(|p| codes(&p).contains(&201)));
        r.owner_set(
            "alice@localhost/a",
            &x("<x xmlns='jabber:x:data' type='submit'/>"),
            &env(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!r.locked);
        r
    }

    fn codes(p: &Element) -> Vec<u16> {
        p.get_child("x", NS_USER)
            .map(|x| {
                x.children()
                    .filter(|c| c.is("status", NS_USER))
                    .filter_map(|c| c.attr("code")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything a presence makes the room send: the joiner's burst, then the rest.
    fn all(out: Out) -> Vec<Element> {
        out.burst.into_iter().chain(out.stanzas).collect()
    }

    fn join(r: &mut Room, full: &str, nick: &str) -> Vec<Element> {
        all(r
            .presence(full, nick, &x("<presence/>"), &env())
            .unwrap_or_else(|e| panic!("{e:?}")))
    }

    fn to<'a>(out: &'a [Element], jid: &str) -> Vec<&'a Element> {
        out.iter().filter(|e| e.attr("to") == Some(jid)).collect()
    }

    fn cond(r: Result<Out, StanzaError>) -> Option<(Condition, ErrorType)> {
        r.err().map(|e| (e.condition, e.kind))
    }

    #[test]
    fn a_joiner_gets_the_others_then_itself_then_the_subject() {
        // XEP-0045 §7.2.3, §7.2.15.
        let mut r = room();
        let out = join(&mut r, "bob@localhost/b", "Bob");
        let mine = to(&out, "bob@localhost/b");
        let froms: Vec<_> = mine.iter().map(|e| (e.name(), e.attr("from"))).collect();
        assert_eq!(
            froms,
            vec![
                ("presence", Some("coven@conference.localhost/Alice")),
                ("presence", Some("coven@conference.localhost/Bob")),
                ("message", Some(ROOM)),
            ]
        );
        assert!(codes(mine[1]).contains(&110));
        // Semi-anonymous: Bob (a participant) does not see Alice's real JID; Alice, a
        // moderator, sees Bob's (§4.2).
        let item = |p: &Element| {
            p.get_child("x", NS_USER)
                .and_then(|x| x.get_child("item", NS_USER))
                .cloned()
        };
        assert_eq!(
            item(mine[0]).and_then(|i| i.attr("jid").map(str::to_string)),
            None
        );
        let alice_sees = to(&out, "alice@localhost/a");
        assert_eq!(
            alice_sees
                .first()
                .and_then(|p| item(p))
                .and_then(|i| i.attr("jid").map(str::to_string))
                .as_deref(),
            Some("bob@localhost/b")
        );
        r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn join_errors_are_the_ones_the_xep_gives() {
        let mut r = room();
        join(&mut r, "bob@localhost/b", "Bob");
        let e = env();
        // §7.2.9: a nick in use by another user.
        assert_eq!(
            cond(r.presence("carol@localhost/c", "Bob", &x("<presence/>"), &e)),
            Some((Condition::Conflict, ErrorType::Cancel))
        );
        // RFC 7700: no leading space, no control characters.
        for bad in [" Bob", "a\u{7}b", "two  spaces", ""] {
            assert_eq!(
                cond(r.presence("carol@localhost/c", bad, &x("<presence/>"), &e)),
                Some((Condition::JidMalformed, ErrorType::Modify)),
                "{bad:?}"
            );
        }
        r.config.password = "pw".into();
        assert_eq!(
            cond(r.presence("carol@localhost/c", "Carol", &x("<presence/>"), &e)),
            Some((Condition::NotAuthorized, ErrorType::Auth))
        );
        let with_pw = x(
            "<presence><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>",
        );
        assert!(
            r.presence("carol@localhost/c", "Carol", &with_pw, &e)
                .is_ok()
        );
        r.config.members_only = true;
        assert_eq!(
            cond(r.presence("dave@localhost/d", "Dave", &with_pw, &e)),
            Some((Condition::RegistrationRequired, ErrorType::Auth))
        );
        r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_full_room_admits_owners_only() {
        // §7.2.10.
        let mut r = room();
        r.config.max_users = 2;
        join(&mut r, "bob@localhost/b", "Bob");
        assert_eq!(
            cond(r.presence("carol@localhost/c", "Carol", &x("<presence/>"), &env())),
            Some((Condition::ServiceUnavailable, ErrorType::Wait))
        );
    }

    #[test]
    fn a_nick_change_is_303_then_the_new_presence() {
        // §7.6.
        let mut r = room();
        join(&mut r, "bob@localhost/b", "Bob");
        let out = join(&mut r, "bob@localhost/b", "Robert");
        let alice = to(&out, "alice@localhost/a");
        assert_eq!(alice.len(), 2);
        assert_eq!(alice[0].attr("type"), Some("unavailable"));
        assert_eq!(codes(alice[0]), vec![303]);
        let nick = alice[0]
            .get_child("x", NS_USER)
            .and_then(|x| x.get_child("item", NS_USER))
            .and_then(|i| i.attr("nick"));
        assert_eq!(nick, Some("Robert"));
        assert_eq!(
            alice[1].attr("from"),
            Some("coven@conference.localhost/Robert")
        );
        assert!(codes(to(&out, "bob@localhost/b")[0]).contains(&110));
        assert_eq!(r.nick_of("bob@localhost/b"), Some("Robert"));
        r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn two_sessions_are_one_occupant_until_the_last_leaves() {
        let mut r = room();
        join(&mut r, "bob@localhost/b1", "Bob");
        join(&mut r, "bob@localhost/b2", "Bob");
        assert_eq!(r.occupant_count(), 2);
        let out = r
            .presence(
                "bob@localhost/b1",
                "Bob",
                &x("<presence type='unavailable'/>"),
                &env(),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        // Alice hears nothing: Bob is still there.
        assert!(to(&out.stanzas, "alice@localhost/a").is_empty());
        let out = r
            .presence(
                "bob@localhost/b2",
                "Bob",
                &x("<presence type='unavailable'/>"),
                &env(),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(to(&out.stanzas, "alice@localhost/a").len(), 1);
        assert_eq!(r.occupant_count(), 1);
        r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn messages_need_an_occupant_with_voice_and_respect_the_rate() {
        let mut r = room();
        let e = env();
        let msg = x("<message type='groupchat'><body>hi</body></message>");
        // §7.4: not an occupant.
        let err = r
            .message("eve@localhost/e", &msg, &e)
            .err()
            .map(|e| e.condition);
        assert_eq!(err, Some(Condition::NotAcceptable));
        join(&mut r, "bob@localhost/b", "Bob");
        r.config.moderated = true;
        // A participant keeps voice; make Bob a visitor as a moderated room's newcomer is.
        if let Some(o) = r.occupants.get_mut("Bob") {
            o.role = Role::Visitor;
        }
        let err = r
            .message("bob@localhost/b", &msg, &e)
            .err()
            .map(|e| (e.condition, e.kind));
        assert_eq!(err, Some((Condition::Forbidden, ErrorType::Auth)));
        // Burst 3, then resource-constraint (wait).
        let mut results = Vec::new();
        for _ in 0..4 {
            results.push(
                r.message("alice@localhost/a", &msg, &e)
                    .err()
                    .map(|e| (e.condition, e.kind)),
            );
        }
        assert_eq!(
            results,
            vec![
                None,
                None,
                None,
                Some((Condition::ResourceConstraint, ErrorType::Wait))
            ]
        );
        // A second later one more token.
        let later = Env {
            now_ms: e.now_ms + 1000,
            ..e
        };
        assert!(r.message("alice@localhost/a", &msg, &later).is_ok());
    }

    #[test]
    fn history_keeps_the_configured_length_and_honours_maxstanzas() {
        let mut r = room();
        let e = env();
        for i in 0..5 {
            let m = x(&format!(
                "<message type='groupchat'><body>m{i}</body></message>"
            ));
            let later = Env {
                now_ms: e.now_ms + i * 2000,
                ..e
            };
            match r.message("alice@localhost/a", &m, &later) {
                Ok(MessageOutcome::Groupchat(a)) => {
                    r.broadcast(a, Some(format!("id{i}")), &later);
                }
                other => panic!("{other:?}"),
            }
        }
        let bodies = |out: &[Element]| -> Vec<String> {
            to(out, "bob@localhost/b")
                .iter()
                .filter_map(|m| m.get_child("body", ns::CLIENT).map(Element::text))
                .collect()
        };
        let out = join(&mut r, "bob@localhost/b", "Bob");
        assert_eq!(bodies(&out), vec!["m2", "m3", "m4"]);
        let delayed = to(&out, "bob@localhost/b")
            .into_iter()
            .find(|m| m.has_child("body", ns::CLIENT))
            .and_then(|m| m.get_child("delay", ns::DELAY).cloned());
        assert_eq!(delayed.as_ref().and_then(|d| d.attr("from")), Some(ROOM));
        let h = x(
            "<presence><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='1'/></x></presence>",
        );
        let out = all(r
            .presence("carol@localhost/c", "Carol", &h, &e)
            .unwrap_or_else(|e| panic!("{e:?}")));
        let carol: Vec<String> = to(&out, "carol@localhost/c")
            .iter()
            .filter_map(|m| m.get_child("body", ns::CLIENT).map(Element::text))
            .collect();
        assert_eq!(carol, vec!["m4"]);
    }

    #[test]
    fn kick_ban_and_the_last_owner() {
        let mut r = room();
        join(&mut r, "bob@localhost/b", "Bob");
        join(&mut r, "carol@localhost/c", "Carol");
        let e = env();
        // §8.2: a participant may not kick.
        let kick = x(
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Carol' role='none'><reason>out</reason></item></query>",
        );
        assert_eq!(
            cond(r.admin_set("bob@localhost/b", &kick, &e)),
            Some((Condition::Forbidden, ErrorType::Auth))
        );
        let out = r
            .admin_set("alice@localhost/a", &kick, &e)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let carol = to(&out.stanzas, "carol@localhost/c");
        assert!(codes(carol[0]).contains(&307) && codes(carol[0]).contains(&110));
        assert_eq!(r.nick_of("carol@localhost/c"), None);
        // §9.1: ban, 301, and no way back.
        let ban = x(
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@localhost' affiliation='outcast'/></query>",
        );
        let out = r
            .admin_set("alice@localhost/a", &ban, &e)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(codes(to(&out.stanzas, "alice@localhost/a")[0]).contains(&301));
        assert_eq!(
            cond(r.presence("bob@localhost/b", "Bob", &x("<presence/>"), &e)),
            Some((Condition::Forbidden, ErrorType::Auth))
        );
        // §10.6: the last owner stays.
        let demote = x(
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@localhost' affiliation='admin'/></query>",
        );
        assert_eq!(
            cond(r.admin_set("alice@localhost/a", &demote, &e)),
            Some((Condition::Conflict, ErrorType::Cancel))
        );
        r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn an_admin_may_not_act_on_an_owner() {
        let mut r = room();
        r.affiliations.insert(
            "bob@localhost".into(),
            AffEntry {
                affiliation: Affiliation::Admin,
                reason: String::new(),
                nick: None,
            },
        );
        join(&mut r, "bob@localhost/b", "Bob");
        let e = env();
        let kick = x(
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Alice' role='none'/></query>",
        );
        assert_eq!(
            cond(r.admin_set("bob@localhost/b", &kick, &e)),
            Some((Condition::NotAllowed, ErrorType::Cancel))
        );
        let outcast = x(
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@localhost' affiliation='outcast'/></query>",
        );
        assert_eq!(
            cond(r.admin_set("bob@localhost/b", &outcast, &e)),
            Some((Condition::NotAllowed, ErrorType::Cancel))
        );
    }

    #[test]
    fn the_stored_room_reads_back() {
        let mut r = room();
        r.config.persistent = true;
        r.subject = Subject {
            text: "Spells".into(),
            nick: "Alice".into(),
        };
        r.affiliations.insert(
            "bob@localhost".into(),
            AffEntry {
                affiliation: Affiliation::Member,
                reason: "friend".into(),
                nick: Some("Bob".into()),
            },
        );
        let back = Room::from_stored(ROOM, &r.to_stored(B), B);
        assert_eq!(back.config, r.config);
        assert_eq!(back.affiliations, r.affiliations);
        assert_eq!(back.subject, r.subject);
        assert!(!back.locked);
    }

    #[test]
    fn occupant_ids_are_stable_per_user_and_differ_between_users() {
        let r = room();
        let k = b"0123456789abcdef";
        assert_eq!(
            r.occupant_id(k, "bob@localhost"),
            r.occupant_id(k, "bob@localhost")
        );
        assert_ne!(
            r.occupant_id(k, "bob@localhost"),
            r.occupant_id(k, "carol@localhost")
        );
        let other = Room::new(
            "other@conference.localhost",
            "x@localhost",
            RoomConfig::new(B),
        );
        assert_ne!(
            r.occupant_id(k, "bob@localhost"),
            other.occupant_id(k, "bob@localhost")
        );
    }

    #[test]
    fn a_client_cannot_spoof_occupant_ids_or_the_room_stanza_id() {
        let mut r = room();
        let m = x("<message type='groupchat'><body>x</body>\
            <occupant-id xmlns='urn:xmpp:occupant-id:0' id='fake'/>\
            <stanza-id xmlns='urn:xmpp:sid:0' by='coven@conference.localhost' id='fake'/></message>");
        let Ok(MessageOutcome::Groupchat(a)) = r.message("alice@localhost/a", &m, &env()) else {
            panic!("not accepted");
        };
        let ids: Vec<_> = a
            .message
            .children()
            .filter(|c| c.attr("id") == Some("fake"))
            .collect();
        assert!(ids.is_empty(), "{}", a.message);
        assert_eq!(
            a.message
                .children()
                .filter(|c| c.is("occupant-id", NS_OCCUPANT_ID))
                .count(),
            1
        );
    }
}
