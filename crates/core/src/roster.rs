//! Rosters and the subscription state machine (RFC 6121 §2, §3 and Appendix A).
//!
//! One account's roster is kept in the map store `roster` (contact bare JID → item) with its
//! version in the key-value store `roster_version`; pending inbound subscription requests are
//! kept in the map store `roster_pending` (contact bare JID → the request stanza), so they can be
//! redelivered at the user's next initial presence (RFC 6121 §3.1.3).

use canto_stanza::{BareJid, ns};
use canto_storage::Storage;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};

/// The `subscription` attribute (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// Neither side sees the other's presence.
    None,
    /// The user sees the contact's presence.
    To,
    /// The contact sees the user's presence.
    From,
    /// Both.
    Both,
}

impl Subscription {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    fn parse(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// One roster item (RFC 6121 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact.
    pub jid: BareJid,
    /// Handle the user gave the contact.
    pub name: Option<String>,
    /// Groups, in the order given.
    pub groups: Vec<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// `ask='subscribe'`: the user sent a request not yet answered (Pending Out).
    pub ask: bool,
    /// `approved='true'`: the user pre-approved the contact's request (§3.4).
    pub approved: bool,
}

impl RosterItem {
    /// A new item with no subscription.
    pub fn new(jid: BareJid) -> RosterItem {
        RosterItem {
            jid,
            name: None,
            groups: Vec::new(),
            subscription: Subscription::None,
            ask: false,
            approved: false,
        }
    }

    /// The `<item/>` element for roster results and pushes.
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("item", ns::ROSTER)
            .with_attr("jid", self.jid.to_string())
            .with_attr("subscription", self.subscription.as_str());
        if let Some(n) = &self.name {
            e.set_attr("name", n.clone());
        }
        if self.ask {
            e.set_attr("ask", "subscribe");
        }
        if self.approved {
            e.set_attr("approved", "true");
        }
        for g in &self.groups {
            e.push_child(Element::new("group", ns::ROSTER).with_text(g.clone()));
        }
        e
    }

    /// Reads a stored item back.
    pub fn from_element(e: &Element) -> Option<RosterItem> {
        Some(RosterItem {
            jid: BareJid::new(e.attr("jid")?).ok()?,
            name: e.attr("name").map(str::to_string),
            groups: e
                .children()
                .filter(|c| c.name() == "group")
                .map(|g| g.text())
                .collect(),
            subscription: Subscription::parse(e.attr("subscription").unwrap_or("none"))?,
            ask: e.attr("ask") == Some("subscribe"),
            approved: e.attr("approved") == Some("true"),
        })
    }
}

/// Parses one stored element (our own serialization).
pub fn decode_element(bytes: &[u8]) -> Option<Element> {
    decode_element_within(bytes, 1 << 20)
}

/// Parses one element serialized in `jabber:client` (stored, or forwarded by another cluster
/// node), of at most `max` bytes.
pub fn decode_element_within(bytes: &[u8], max: usize) -> Option<Element> {
    if bytes.len() > max {
        return None;
    }
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: max,
        ..Limits::AUTHENTICATED
    });
    let mut out = Vec::new();
    p.feed(b"<s xmlns='jabber:client'>", &mut out).ok()?;
    p.feed(bytes, &mut out).ok()?;
    out.into_iter().find_map(|e| match e {
        StreamEvent::Stanza(e) => Some(e),
        _ => None,
    })
}

/// What a subscription-related presence did to the roster (RFC 6121 Appendix A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The item after the change (None: no item, or removed).
    pub item: Option<RosterItem>,
    /// Whether the item changed (a roster push is due).
    pub changed: bool,
    /// Whether the stanza is to be routed / delivered onward.
    pub forward: bool,
}

/// Subscription presence types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubType {
    /// `subscribe`
    Subscribe,
    /// `subscribed`
    Subscribed,
    /// `unsubscribe`
    Unsubscribe,
    /// `unsubscribed`
    Unsubscribed,
}

/// The user sends a subscription presence to the contact (RFC 6121 §3, Appendix A.2 "outbound").
/// `item` is the user's item for the contact; `pending_in` whether the contact has asked to
/// subscribe to the user. Returns the new item and whether `pending_in` is cleared.
pub fn outbound(
    item: Option<RosterItem>,
    contact: &BareJid,
    pending_in: bool,
    t: SubType,
) -> (Transition, bool) {
    let had = item.is_some();
    let mut it = item.unwrap_or_else(|| RosterItem::new(contact.clone()));
    let before = it.clone();
    let (to, from) = (it.subscription.has_to(), it.subscription.has_from());
    let mut clear_pending_in = false;
    let forward;
    match t {
        // §3.1.2: a request sets Pending Out unless the user already has a subscription.
        SubType::Subscribe => {
            if !to {
                it.ask = true;
            }
            forward = true;
        }
        // §3.1.5: approving a pending request gives the contact a subscription (From).
        SubType::Subscribed => {
            if from {
                forward = false;
            } else if pending_in {
                it.subscription = Subscription::with(to, true);
                it.approved = false;
                clear_pending_in = true;
                forward = true;
            } else {
                // §3.4: pre-approval.
                it.approved = true;
                forward = false;
            }
        }
        // §3.3.2: cancel the user's subscription to the contact (or the pending request).
        SubType::Unsubscribe => {
            it.subscription = Subscription::with(false, from);
            it.ask = false;
            forward = true;
        }
        // §3.2.2: deny a request or cancel the contact's subscription; also withdraws a
        // pre-approval.
        SubType::Unsubscribed => {
            let had_something = from || pending_in || it.approved;
            it.subscription = Subscription::with(to, false);
            it.approved = false;
            clear_pending_in = pending_in;
            forward = had_something;
        }
    }
    let changed = it != before || (!had && (it.ask || it.approved));
    let keep = had || it.ask || it.approved || it.subscription != Subscription::None;
    (
        Transition {
            item: keep.then_some(it),
            changed,
            forward,
        },
        clear_pending_in,
    )
}

/// What inbound processing asks the contact's server (here: the same server) to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// Roster change for the recipient.
    pub transition: Transition,
    /// Store the request as pending (and deliver it to available resources).
    pub store_pending: bool,
    /// Remove a stored pending request.
    pub clear_pending: bool,
    /// Answer the sender with `subscribed` on the recipient's behalf (§3.1.3 auto-reply).
    pub auto_subscribed: bool,
}

/// A subscription presence from `contact` arrives for the user (RFC 6121 Appendix A.3
/// "inbound"). `item` is the user's item for the contact.
pub fn inbound(
    item: Option<RosterItem>,
    contact: &BareJid,
    pending_in: bool,
    t: SubType,
) -> Inbound {
    let had = item.is_some();
    let mut it = item.unwrap_or_else(|| RosterItem::new(contact.clone()));
    let before = it.clone();
    let (to, from) = (it.subscription.has_to(), it.subscription.has_from());
    let mut out = Inbound {
        transition: Transition {
            item: None,
            changed: false,
            forward: false,
        },
        store_pending: false,
        clear_pending: false,
        auto_subscribed: false,
    };
    match t {
        SubType::Subscribe => {
            if from {
                // §3.1.3: already subscribed: auto-reply, do not bother the user.
                out.auto_subscribed = true;
            } else if it.approved {
                // §3.4: pre-approved: complete the subscription without asking.
                it.subscription = Subscription::with(to, true);
                it.approved = false;
                out.auto_subscribed = true;
            } else if !pending_in {
                out.store_pending = true;
                out.transition.forward = true;
            }
            // Otherwise a duplicate: stored once, delivered once (as Prosody does).
        }
        SubType::Subscribed => {
            // §3.1.6: only meaningful while the user's request is pending.
            if it.ask && !to {
                it.subscription = Subscription::with(true, from);
                it.ask = false;
                out.transition.forward = true;
            }
        }
        SubType::Unsubscribe => {
            // §3.3.3: the contact cancels its subscription to the user, or withdraws a request.
            if pending_in {
                out.clear_pending = true;
                out.transition.forward = true;
            }
            if from {
                it.subscription = Subscription::with(to, false);
                out.transition.forward = true;
            }
        }
        SubType::Unsubscribed => {
            // §3.2.3: the contact denies or cancels the user's subscription.
            if to || it.ask {
                it.subscription = Subscription::with(false, from);
                it.ask = false;
                out.transition.forward = true;
            }
        }
    }
    out.transition.changed = had && it != before;
    out.transition.item = had.then_some(it);
    out
}

/// Roster operations on storage for one account.
pub struct RosterStore<'a> {
    storage: &'a Storage,
    host: &'a str,
    user: &'a str,
}

const ROSTER: &str = "roster";
const PENDING: &str = "roster_pending";
const VERSION: &str = "roster_version";

impl<'a> RosterStore<'a> {
    /// The roster of `user@host`.
    pub fn new(storage: &'a Storage, host: &'a str, user: &'a str) -> RosterStore<'a> {
        RosterStore {
            storage,
            host,
            user,
        }
    }

    /// Every item, sorted by JID.
    pub async fn items(&self) -> canto_storage::Result<Vec<RosterItem>> {
        let all = self
            .storage
            .map
            .get_all(ROSTER, self.host, self.user)
            .await?;
        Ok(all
            .iter()
            .filter_map(|(_, v)| {
                decode_element(v)
                    .as_ref()
                    .and_then(RosterItem::from_element)
            })
            .collect())
    }

    /// One item.
    pub async fn get(&self, contact: &BareJid) -> canto_storage::Result<Option<RosterItem>> {
        let v = self
            .storage
            .map
            .get(ROSTER, self.host, self.user, &contact.to_string())
            .await?;
        Ok(v.as_deref()
            .and_then(decode_element)
            .as_ref()
            .and_then(RosterItem::from_element))
    }

    /// Writes (or with `None` removes) an item and bumps the version; returns the new version.
    pub async fn put(
        &self,
        contact: &BareJid,
        item: Option<&RosterItem>,
    ) -> canto_storage::Result<u64> {
        let bytes = item.map(|i| i.to_element().to_bytes_in(ns::CLIENT));
        self.storage
            .map
            .set(
                ROSTER,
                self.host,
                self.user,
                &contact.to_string(),
                bytes.as_deref(),
            )
            .await?;
        let v = self.version().await? + 1;
        self.storage
            .kv
            .set(
                VERSION,
                self.host,
                self.user,
                Some(v.to_string().as_bytes()),
            )
            .await?;
        Ok(v)
    }

    /// The roster version (RFC 6121 §2.6), 0 for a new account.
    pub async fn version(&self) -> canto_storage::Result<u64> {
        let v = self.storage.kv.get(VERSION, self.host, self.user).await?;
        Ok(v.and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Number of items.
    pub async fn len(&self) -> canto_storage::Result<usize> {
        Ok(self
            .storage
            .map
            .get_all(ROSTER, self.host, self.user)
            .await?
            .len())
    }

    /// Whether `contact` has a pending inbound request.
    pub async fn is_pending(&self, contact: &BareJid) -> canto_storage::Result<bool> {
        Ok(self
            .storage
            .map
            .get(PENDING, self.host, self.user, &contact.to_string())
            .await?
            .is_some())
    }

    /// Stores (or clears) a pending inbound request.
    pub async fn set_pending(
        &self,
        contact: &BareJid,
        request: Option<&Element>,
    ) -> canto_storage::Result<()> {
        let bytes = request.map(|r| r.to_bytes_in(ns::CLIENT));
        self.storage
            .map
            .set(
                PENDING,
                self.host,
                self.user,
                &contact.to_string(),
                bytes.as_deref(),
            )
            .await
    }

    /// Stores a pending inbound request from a contact that has none yet, unless `max` are
    /// pending already; returns whether it was stored.
    pub async fn add_pending(
        &self,
        contact: &BareJid,
        request: &Element,
        max: usize,
    ) -> canto_storage::Result<bool> {
        let pending = self
            .storage
            .map
            .get_all(PENDING, self.host, self.user)
            .await?
            .len();
        if pending >= max {
            return Ok(false);
        }
        self.set_pending(contact, Some(request)).await?;
        Ok(true)
    }

    /// All pending inbound requests.
    pub async fn pending(&self) -> canto_storage::Result<Vec<Element>> {
        let all = self
            .storage
            .map
            .get_all(PENDING, self.host, self.user)
            .await?;
        Ok(all.iter().filter_map(|(_, v)| decode_element(v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription as S;

    fn jid() -> BareJid {
        BareJid::new("contact@example.test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn item(sub: S, ask: bool) -> Option<RosterItem> {
        Some(RosterItem {
            subscription: sub,
            ask,
            ..RosterItem::new(jid())
        })
    }

    /// State as RFC 6121 Appendix A names it: (subscription, Pending Out, Pending In).
    type State = (S, bool, bool);

    fn state(t: &Transition, pending_in: bool) -> State {
        match &t.item {
            Some(i) => (i.subscription, i.ask, pending_in),
            None => (S::None, false, pending_in),
        }
    }

    /// RFC 6121 Appendix A.2.1–A.2.4: the user's server, outbound subscription stanzas.
    /// (start state, stanza) → (end state, routed?)
    #[test]
    fn outbound_table() {
        use SubType::*;
        let rows: &[(State, SubType, State, bool)] = &[
            // A.2.1 subscribe
            (
                (S::None, false, false),
                Subscribe,
                (S::None, true, false),
                true,
            ),
            (
                (S::None, true, false),
                Subscribe,
                (S::None, true, false),
                true,
            ),
            (
                (S::None, false, true),
                Subscribe,
                (S::None, true, true),
                true,
            ),
            (
                (S::To, false, false),
                Subscribe,
                (S::To, false, false),
                true,
            ),
            (
                (S::From, false, false),
                Subscribe,
                (S::From, true, false),
                true,
            ),
            (
                (S::Both, false, false),
                Subscribe,
                (S::Both, false, false),
                true,
            ),
            // A.2.2 unsubscribe
            (
                (S::None, true, false),
                Unsubscribe,
                (S::None, false, false),
                true,
            ),
            (
                (S::To, false, false),
                Unsubscribe,
                (S::None, false, false),
                true,
            ),
            (
                (S::To, false, true),
                Unsubscribe,
                (S::None, false, true),
                true,
            ),
            (
                (S::Both, false, false),
                Unsubscribe,
                (S::From, false, false),
                true,
            ),
            (
                (S::From, true, false),
                Unsubscribe,
                (S::From, false, false),
                true,
            ),
            // A.2.3 subscribed (approve)
            (
                (S::None, false, true),
                Subscribed,
                (S::From, false, false),
                true,
            ),
            (
                (S::None, true, true),
                Subscribed,
                (S::From, true, false),
                true,
            ),
            (
                (S::To, false, true),
                Subscribed,
                (S::Both, false, false),
                true,
            ),
            (
                (S::From, false, false),
                Subscribed,
                (S::From, false, false),
                false,
            ),
            (
                (S::Both, false, false),
                Subscribed,
                (S::Both, false, false),
                false,
            ),
            // A.2.4 unsubscribed (deny / cancel)
            (
                (S::None, false, true),
                Unsubscribed,
                (S::None, false, false),
                true,
            ),
            (
                (S::To, false, true),
                Unsubscribed,
                (S::To, false, false),
                true,
            ),
            (
                (S::From, false, false),
                Unsubscribed,
                (S::None, false, false),
                true,
            ),
            (
                (S::Both, false, false),
                Unsubscribed,
                (S::To, false, false),
                true,
            ),
            (
                (S::None, false, false),
                Unsubscribed,
                (S::None, false, false),
                false,
            ),
            (
                (S::To, false, false),
                Unsubscribed,
                (S::To, false, false),
                false,
            ),
        ];
        for (i, ((sub, ask, pin), t, want, routed)) in rows.iter().enumerate() {
            let (tr, cleared) = outbound(item(*sub, *ask), &jid(), *pin, *t);
            let got = state(&tr, *pin && !cleared);
            assert_eq!(
                (got, tr.forward),
                (*want, *routed),
                "row {i}: {sub:?}/{ask}/{pin} + {t:?}"
            );
        }
    }

    /// RFC 6121 Appendix A.3.1–A.3.4: the contact's server, inbound subscription stanzas.
    #[test]
    fn inbound_table() {
        use SubType::*;
        // (start, stanza) → (end, delivered?, auto-reply subscribed?)
        let rows: &[(State, SubType, State, bool, bool)] = &[
            // A.3.1 subscribe
            (
                (S::None, false, false),
                Subscribe,
                (S::None, false, true),
                true,
                false,
            ),
            (
                (S::None, true, false),
                Subscribe,
                (S::None, true, true),
                true,
                false,
            ),
            (
                (S::None, false, true),
                Subscribe,
                (S::None, false, true),
                false,
                false,
            ),
            (
                (S::To, false, false),
                Subscribe,
                (S::To, false, true),
                true,
                false,
            ),
            (
                (S::From, false, false),
                Subscribe,
                (S::From, false, false),
                false,
                true,
            ),
            (
                (S::Both, false, false),
                Subscribe,
                (S::Both, false, false),
                false,
                true,
            ),
            // A.3.2 unsubscribe
            (
                (S::None, false, true),
                Unsubscribe,
                (S::None, false, false),
                true,
                false,
            ),
            (
                (S::From, false, false),
                Unsubscribe,
                (S::None, false, false),
                true,
                false,
            ),
            (
                (S::Both, false, false),
                Unsubscribe,
                (S::To, false, false),
                true,
                false,
            ),
            (
                (S::None, false, false),
                Unsubscribe,
                (S::None, false, false),
                false,
                false,
            ),
            (
                (S::To, false, false),
                Unsubscribe,
                (S::To, false, false),
                false,
                false,
            ),
            // A.3.3 subscribed
            (
                (S::None, true, false),
                Subscribed,
                (S::To, false, false),
                true,
                false,
            ),
            (
                (S::From, true, false),
                Subscribed,
                (S::Both, false, false),
                true,
                false,
            ),
            (
                (S::None, false, false),
                Subscribed,
                (S::None, false, false),
                false,
                false,
            ),
            (
                (S::To, false, false),
                Subscribed,
                (S::To, false, false),
                false,
                false,
            ),
            (
                (S::Both, false, false),
                Subscribed,
                (S::Both, false, false),
                false,
                false,
            ),
            // A.3.4 unsubscribed
            (
                (S::None, true, false),
                Unsubscribed,
                (S::None, false, false),
                true,
                false,
            ),
            (
                (S::To, false, false),
                Unsubscribed,
                (S::None, false, false),
                true,
                false,
            ),
            (
                (S::Both, false, false),
                Unsubscribed,
                (S::From, false, false),
                true,
                false,
            ),
            (
                (S::From, false, false),
                Unsubscribed,
                (S::From, false, false),
                false,
                false,
            ),
            (
                (S::None, false, false),
                Unsubscribed,
                (S::None, false, false),
                false,
                false,
            ),
        ];
        for (i, ((sub, ask, pin), t, want, delivered, auto)) in rows.iter().enumerate() {
            let r = inbound(item(*sub, *ask), &jid(), *pin, *t);
            let pin_after = (*pin || r.store_pending) && !r.clear_pending;
            let got = state(&r.transition, pin_after);
            assert_eq!(
                (got, r.transition.forward, r.auto_subscribed),
                (*want, *delivered, *auto),
                "row {i}: {sub:?}/{ask}/{pin} + {t:?}"
            );
        }
    }

    #[test]
    fn pre_approval_completes_the_subscription_without_asking() {
        // RFC 6121 §3.4
        let (tr, _) = outbound(None, &jid(), false, SubType::Subscribed);
        assert!(tr.item.as_ref().is_some_and(|i| i.approved));
        assert!(!tr.forward);
        let r = inbound(tr.item, &jid(), false, SubType::Subscribe);
        assert!(r.auto_subscribed);
        assert!(!r.store_pending);
        assert_eq!(
            r.transition.item.map(|i| (i.subscription, i.approved)),
            Some((S::From, false))
        );
    }

    #[test]
    fn item_round_trips_through_storage_encoding() {
        let it = RosterItem {
            name: Some("Juliet & co".into()),
            groups: vec!["Friends".into(), "<Work>".into()],
            subscription: S::Both,
            ask: true,
            approved: false,
            ..RosterItem::new(jid())
        };
        let bytes = it.to_element().to_bytes_in(ns::CLIENT);
        let back = decode_element(&bytes)
            .as_ref()
            .and_then(RosterItem::from_element);
        assert_eq!(back, Some(it));
    }

    #[tokio::test]
    async fn store_versions_and_pending() {
        let storage = Storage::memory();
        let r = RosterStore::new(&storage, "example.test", "alice");
        assert_eq!(r.version().await.ok(), Some(0));
        let it = RosterItem::new(jid());
        assert_eq!(r.put(&jid(), Some(&it)).await.ok(), Some(1));
        assert_eq!(r.get(&jid()).await.ok().flatten(), Some(it));
        assert_eq!(r.put(&jid(), None).await.ok(), Some(2));
        assert_eq!(r.items().await.ok().map(|v| v.len()), Some(0));
        let req = Element::new("presence", ns::CLIENT).with_attr("type", "subscribe");
        assert_eq!(r.set_pending(&jid(), Some(&req)).await.ok(), Some(()));
        assert_eq!(r.is_pending(&jid()).await.ok(), Some(true));
        assert_eq!(r.pending().await.ok().map(|p| p.len()), Some(1));
    }
}
