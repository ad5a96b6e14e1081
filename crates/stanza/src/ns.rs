//! Namespace URIs, one constant per protocol.

/// RFC 6120 §4.8.3: client stream content namespace.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 §4.8.3: server stream content namespace.
pub const SERVER: &str = "jabber:server";
/// RFC 6120 §4.8.1: stream namespace.
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
/// RFC 6120 §4.9.2: stream error conditions.
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 §8.3.2: stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6120 §5.4: STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 §6.4: SASL.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 §7: resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 §3: legacy session establishment.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// Application-specific error conditions (`<stanza-too-big/>`), XEP-0478 limits.
pub const XMPP_ERRORS: &str = "urn:xmpp:errors";
/// XEP-0199: ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092: software version.
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0202: entity time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0030: disco#info.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030: disco#items.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// RFC 6121 §2: roster.
pub const ROSTER: &str = "jabber:iq:roster";
/// XEP-0203: delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0368 / XEP-0478 stream limits advertisement.
pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
/// XML namespace of `xml:lang`.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// XEP-0352 Client State Indication.
pub const CSI: &str = "urn:xmpp:csi:0";
