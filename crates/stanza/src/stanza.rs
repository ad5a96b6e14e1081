//! The stanza envelope (RFC 6120 §8): kinds, types and replies built from a request.

use canto_xml::Element;

use crate::error::StanzaError;
use crate::ns;

/// The three stanza kinds (RFC 6120 §8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

impl StanzaKind {
    /// The kind of a top-level element in a content namespace, or `None` if it is no stanza.
    pub fn of(el: &Element, content_ns: &str) -> Option<StanzaKind> {
        if el.ns() != content_ns {
            return None;
        }
        match el.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

/// RFC 6120 §8.2.3: IQ types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqType {
    /// Request for information.
    Get,
    /// Request to change something.
    Set,
    /// Successful response.
    Result,
    /// Error response.
    Error,
}

impl IqType {
    /// Parses the `type` attribute; `None` for a missing or unknown type (bad-request).
    pub fn of(el: &Element) -> Option<IqType> {
        match el.attr("type")? {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }

    /// Whether this is a request (get or set), which must be answered.
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// RFC 6121 §5.2.2: message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Standalone message (the default).
    Normal,
    /// One-to-one chat.
    Chat,
    /// Multi-user chat.
    Groupchat,
    /// Alert, not stored.
    Headline,
    /// Error reply.
    Error,
}

impl MessageType {
    /// Parses the `type` attribute. RFC 6121 §5.2.2: absent or unknown is `normal`.
    pub fn of(el: &Element) -> MessageType {
        match el.attr("type") {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// RFC 6121 §4.7.1 and §3: presence types (`Available` when the attribute is absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PresenceType {
    /// No type: available.
    Available,
    /// No longer available.
    Unavailable,
    /// Subscription request.
    Subscribe,
    /// Subscription approval.
    Subscribed,
    /// Unsubscribe request.
    Unsubscribe,
    /// Subscription denial or cancellation.
    Unsubscribed,
    /// Request for current presence (server-generated).
    Probe,
    /// Error.
    Error,
}

impl PresenceType {
    /// Parses the `type` attribute; `None` for an unknown type (bad-request).
    pub fn of(el: &Element) -> Option<PresenceType> {
        Some(match el.attr("type") {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(_) => return None,
        })
    }
}

/// Whether the stanza is itself an error (never answered with an error: RFC 6120 §8.3.1).
pub fn is_error(el: &Element) -> bool {
    el.attr("type") == Some("error")
}

/// The reply envelope to `request`: same kind and id, `to`/`from` swapped.
fn reply_envelope(request: &Element, kind: &str) -> Element {
    let mut r = Element::new(request.name(), request.ns()).with_attr("type", kind);
    if let Some(id) = request.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(from) = request.attr("from") {
        r.set_attr("to", from);
    }
    if let Some(to) = request.attr("to") {
        r.set_attr("from", to);
    }
    r
}

/// An error reply to `request` (RFC 6120 §8.3.1): `type='error'`, addresses swapped, same id.
pub fn error_reply(request: &Element, err: &StanzaError) -> Element {
    let mut r = reply_envelope(request, "error");
    r.push_child(err.to_element(request.ns()));
    r
}

/// An IQ result to `request` with an optional payload (RFC 6120 §8.2.3).
pub fn iq_result(request: &Element, payload: Option<Element>) -> Element {
    let mut r = reply_envelope(request, "result");
    if let Some(p) = payload {
        r.push_child(p);
    }
    r
}

/// The single payload child of an IQ get/set; RFC 6120 §8.2.3 requires exactly one.
pub fn iq_payload(el: &Element) -> Option<&Element> {
    let mut it = el.children();
    let first = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some(first)
}

/// Builds an IQ in the client namespace.
pub fn iq(kind: IqType, id: &str) -> Element {
    let t = match kind {
        IqType::Get => "get",
        IqType::Set => "set",
        IqType::Result => "result",
        IqType::Error => "error",
    };
    Element::new("iq", ns::CLIENT)
        .with_attr("type", t)
        .with_attr("id", id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Condition;

    #[test]
    fn unknown_message_type_is_normal() {
        let m = Element::new("message", ns::CLIENT).with_attr("type", "bogus");
        assert_eq!(MessageType::of(&m), MessageType::Normal);
    }

    #[test]
    fn unknown_presence_and_iq_types_are_refused() {
        let p = Element::new("presence", ns::CLIENT).with_attr("type", "bogus");
        assert_eq!(PresenceType::of(&p), None);
        let i = Element::new("iq", ns::CLIENT).with_attr("type", "bogus");
        assert_eq!(IqType::of(&i), None);
        assert_eq!(IqType::of(&Element::new("iq", ns::CLIENT)), None);
    }

    #[test]
    fn error_reply_swaps_addresses_and_keeps_id() {
        let req = iq(IqType::Get, "7")
            .with_attr("from", "a@b/c")
            .with_attr("to", "b");
        let r = error_reply(&req, &StanzaError::new(Condition::ServiceUnavailable));
        assert_eq!(r.attr("to"), Some("a@b/c"));
        assert_eq!(r.attr("from"), Some("b"));
        assert_eq!(r.attr("id"), Some("7"));
        assert_eq!(r.attr("type"), Some("error"));
        let e = r
            .get_child("error", ns::CLIENT)
            .and_then(StanzaError::from_element);
        assert_eq!(e.map(|e| e.condition), Some(Condition::ServiceUnavailable));
    }

    #[test]
    fn iq_payload_requires_exactly_one_child() {
        let zero = iq(IqType::Get, "1");
        assert!(iq_payload(&zero).is_none());
        let one = iq(IqType::Get, "1").with_child(Element::new("ping", ns::PING));
        assert!(iq_payload(&one).is_some());
        let two = one.clone().with_child(Element::new("x", "y"));
        assert!(iq_payload(&two).is_none());
    }
}
