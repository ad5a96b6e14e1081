//! Server-to-server pieces without I/O: stream headers (RFC 6120 §4.7), stream features for a
//! peer server, dialback keys (XEP-0185) and dialback elements (XEP-0220), SASL EXTERNAL for
//! servers (RFC 6120 §6.4, XEP-0178), bidirectional streams (XEP-0288).

use base64::Engine;
use canto_stanza::ns;
use canto_xml::Element;
use canto_xml::escape;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// XEP-0220: the dialback namespace (declared on the stream with the `db` prefix).
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// XEP-0220 §2.1: the dialback stream feature.
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// XEP-0288 §2: the bidi stream feature, and the element that asks for it.
pub const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
/// XEP-0288 §2: the element sent to make a stream bidirectional.
pub const NS_BIDI: &str = "urn:xmpp:bidi";

/// The header of a stream to or from a peer server (RFC 6120 §4.7): `jabber:server` as the
/// content namespace and the dialback prefix declared (XEP-0220 §2.1.1, which older servers
/// need to see before they offer or accept dialback). `id` only on the receiving side.
pub fn stream_header(from: &str, to: &str, id: Option<&str>) -> Vec<u8> {
    let mut s = String::from(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'",
    );
    if !from.is_empty() {
        s.push_str(&format!(" from='{}'", escape(from)));
    }
    if !to.is_empty() {
        s.push_str(&format!(" to='{}'", escape(to)));
    }
    if let Some(id) = id {
        s.push_str(&format!(" id='{}'", escape(id)));
    }
    s.push_str(" version='1.0' xml:lang='en'>");
    s.into_bytes()
}

/// What the receiving server offers on a stream from a peer server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offer {
    /// STARTTLS (RFC 6120 §5.3.1), `required` when plaintext is refused.
    pub starttls: Option<bool>,
    /// SASL EXTERNAL (RFC 6120 §6.3.4): the peer's certificate is valid for its domain.
    pub external: bool,
    /// Dialback (XEP-0220 §2.1: the feature, with XEP-0220 §2.4 error support).
    pub dialback: bool,
    /// XEP-0288 bidirectional streams.
    pub bidi: bool,
}

/// `<stream:features/>` for a peer server.
pub fn features(offer: Offer) -> Element {
    let mut f = Element::new("features", ns::STREAMS);
    if let Some(required) = offer.starttls {
        let mut t = Element::new("starttls", ns::TLS);
        if required {
            t.push_child(Element::new("required", ns::TLS));
        }
        f.push_child(t);
        // RFC 6120 §5.3.1: when TLS is mandatory, nothing else is offered before it.
        if required {
            return f;
        }
    }
    if offer.external {
        f.push_child(
            Element::new("mechanisms", ns::SASL)
                .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
        );
    }
    if offer.dialback {
        f.push_child(
            Element::new("dialback", NS_DIALBACK_FEATURE)
                .with_child(Element::new("errors", NS_DIALBACK_FEATURE)),
        );
    }
    if offer.bidi {
        f.push_child(Element::new("bidi", NS_BIDI_FEATURE));
    }
    f
}

/// What a peer's `<stream:features/>` offer us, as the initiating server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerFeatures {
    /// STARTTLS offered.
    pub starttls: bool,
    /// SASL EXTERNAL offered.
    pub external: bool,
    /// Dialback offered (the feature, XEP-0220 §2.1).
    pub dialback: bool,
    /// XEP-0288 offered.
    pub bidi: bool,
}

impl PeerFeatures {
    /// Reads a `<stream:features/>` element.
    pub fn parse(f: &Element) -> PeerFeatures {
        let external = f.get_child("mechanisms", ns::SASL).is_some_and(|m| {
            m.children()
                .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
        });
        PeerFeatures {
            starttls: f.has_child("starttls", ns::TLS),
            external,
            dialback: f.has_child("dialback", NS_DIALBACK_FEATURE),
            bidi: f.has_child("bidi", NS_BIDI_FEATURE),
        }
    }
}

/// XEP-0185 §3: the dialback key, HMAC-SHA256 keyed with SHA256(secret) over "receiving
/// originating stream-id", in lowercase hex. Only the server holding `secret` (the authoritative
/// one) can make or check it, and it needs no state.
pub fn dialback_key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    // The HMAC key is SHA256(secret) in hex, as XEP-0185 §3's example writes it.
    let key = hex(&Sha256::digest(secret));
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(receiving.to_ascii_lowercase().as_bytes());
    mac.update(b" ");
    mac.update(originating.to_ascii_lowercase().as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `key` is the dialback key for these names (constant time).
pub fn dialback_key_valid(
    secret: &[u8],
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> bool {
    use subtle::ConstantTimeEq;
    let want = dialback_key(secret, receiving, originating, stream_id);
    !want.is_empty() && bool::from(want.as_bytes().ct_eq(key.trim().as_bytes()))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// `<db:result from to>key</db:result>` (XEP-0220 §2.1.1).
pub fn db_result(from: &str, to: &str, key: &str) -> Element {
    Element::new("result", NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_text(key)
}

/// `<db:verify from to id>key</db:verify>` (XEP-0220 §2.1.2).
pub fn db_verify(from: &str, to: &str, id: &str, key: &str) -> Element {
    Element::new("verify", NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_text(key)
}

/// The answer to a `<db:result/>` or `<db:verify/>` (`name`): `valid` or `invalid`
/// (XEP-0220 §2.1.3, §2.2), from the answering server's domain.
pub fn db_answer(name: &str, from: &str, to: &str, id: Option<&str>, valid: bool) -> Element {
    let mut e = Element::new(name, NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", if valid { "valid" } else { "invalid" });
    if let Some(id) = id {
        e.set_attr("id", id);
    }
    e
}

/// A dialback error (XEP-0220 §2.4): `type='error'` with a stanza error condition
/// (`item-not-found` for a domain not served, `remote-server-not-found`, `policy-violation`…).
pub fn db_error(name: &str, from: &str, to: &str, condition: &str, kind: &str) -> Element {
    Element::new(name, NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "error")
        .with_child(
            // XEP-0220 §2.4: `<error/>` in the stream's default namespace (jabber:server,
            // written without a declaration, as stanzas are).
            Element::new("error", ns::CLIENT)
                .with_attr("type", kind)
                .with_child(Element::new(condition, ns::STANZAS)),
        )
}

/// `<auth mechanism='EXTERNAL'>` from the initiating server: the authorization identity is its
/// domain, base64 (XEP-0178 §3.1; RFC 6120 §6.4.2 allows `=` for none, which some peers refuse).
pub fn external_auth(domain: &str) -> Element {
    Element::new("auth", ns::SASL)
        .with_attr("mechanism", "EXTERNAL")
        .with_text(base64::engine::general_purpose::STANDARD.encode(domain.as_bytes()))
}

/// Bad base64 or UTF-8 in a SASL payload (RFC 6120 §6.4.2: `incorrect-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEncoding;

/// The authorization identity of an `<auth mechanism='EXTERNAL'>`: `Ok(None)` for none (`=` or
/// empty), `Ok(Some(domain))`, or `Err` for bad base64/UTF-8 (RFC 6120 §6.4.2:
/// `incorrect-encoding`).
pub fn external_authzid(auth: &Element) -> Result<Option<String>, BadEncoding> {
    let text = auth.text();
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(None);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| BadEncoding)?;
    let s = String::from_utf8(raw).map_err(|_| BadEncoding)?;
    Ok((!s.is_empty()).then_some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_key_is_xep_0185_hmac() {
        // Checked against Python's hmac/hashlib: HMAC-SHA256(key = hex(SHA256(secret)),
        // "example.net example.com D60000229F").
        let k = dialback_key(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
        );
        assert_eq!(
            k,
            "008c689ff366b50c63d69a3e2d2c0e0e1f8404b0118eb688a0102c87cb691bdc"
        );
        assert!(dialback_key_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
        // Any part changed: another key.
        assert!(!dialback_key_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.org",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!dialback_key_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229G",
            &k
        ));
        assert!(!dialback_key_valid(
            b"other",
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!dialback_key_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
            ""
        ));
    }

    #[test]
    fn features_follow_the_offer() {
        let f = features(Offer {
            starttls: Some(true),
            external: true,
            dialback: true,
            bidi: true,
        });
        // Required TLS hides the rest (RFC 6120 §5.3.1).
        assert_eq!(
            PeerFeatures::parse(&f),
            PeerFeatures {
                starttls: true,
                ..Default::default()
            }
        );
        let f = features(Offer {
            starttls: None,
            external: true,
            dialback: true,
            bidi: false,
        });
        let p = PeerFeatures::parse(&f);
        assert!(p.external && p.dialback && !p.bidi && !p.starttls);
    }

    #[test]
    fn external_authzid_decodes() {
        assert_eq!(
            external_authzid(&external_auth("a.example")),
            Ok(Some("a.example".into()))
        );
        let e = Element::new("auth", ns::SASL).with_text("=");
        assert_eq!(external_authzid(&e), Ok(None));
        let e = Element::new("auth", ns::SASL).with_text("!!!");
        assert_eq!(external_authzid(&e), Err(BadEncoding));
    }

    #[test]
    fn header_escapes_and_declares_dialback() {
        let h = String::from_utf8(stream_header("a'b", "c", Some("x"))).unwrap_or_default();
        assert!(h.contains("xmlns:db='jabber:server:dialback'"));
        assert!(h.contains("from='a&apos;b'"));
        assert!(h.contains("id='x'"));
    }
}
