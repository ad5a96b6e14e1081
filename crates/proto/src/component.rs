//! The external component protocol (XEP-0114, `jabber:component:accept`), sans I/O: the
//! component's stream header, the server's answer, and the `<handshake/>` check. The
//! connection itself is `canto-net`'s (`component.rs`), the routing `canto-core`'s.

use canto_stanza::{StreamCondition, StreamError, ns};
use canto_xml::{Element, escape};
use sha1::Digest;
use subtle::ConstantTimeEq;

/// XEP-0114 §3: the content namespace of a component stream accepted by the server.
pub const NS: &str = "jabber:component:accept";

/// Checks a component's stream header and returns the component's domain (normalized) named
/// in `to`; whether such a component is configured is the caller's question.
pub fn check_header(header: &Element) -> Result<String, StreamError> {
    // RFC 6120 §4.9.3.10 and XEP-0114 §3: a stream in any other namespace is
    // `invalid-namespace`.
    if header.ns() != ns::STREAMS || header.name() != "stream" {
        return Err(
            StreamError::new(StreamCondition::InvalidNamespace).with_text("not an XMPP stream")
        );
    }
    if header.attr("xmlns") != Some(NS) {
        return Err(StreamError::new(StreamCondition::InvalidNamespace)
            .with_text("the content namespace must be jabber:component:accept"));
    }
    // XEP-0114 §3: `to` names the component, not the server. Prosody requires it too.
    let Some(to) = header.attr("to") else {
        return Err(StreamError::new(StreamCondition::ImproperAddressing)
            .with_text("a 'to' attribute naming the component is required"));
    };
    canto_stanza::jid::normalize_domain(to).ok_or_else(|| {
        StreamError::new(StreamCondition::HostUnknown).with_text("not a domain name")
    })
}

/// The server's stream header (XEP-0114 §3: `from` is the component's domain, `id` the stream
/// id the handshake hashes). Written by hand because it is never closed.
pub fn response_header(domain: &str, stream_id: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' \
         xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}'>",
        escape(stream_id),
        escape(domain)
    )
    .into_bytes()
}

/// XEP-0114 §3: the handshake value, the lowercase hex SHA-1 of the stream id followed by the
/// shared secret (both UTF-8).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let d = sha1::Sha1::new()
        .chain_update(stream_id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    let mut s = String::with_capacity(40);
    for b in d.iter() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `handshake` (the component's `<handshake/>`) proves the secret for `stream_id`
/// (XEP-0114 §3). The value is compared as the 20 bytes it encodes, in constant time; hex
/// digits of either case are accepted (Prosody compares lowercased), surrounding whitespace
/// ignored, and a handshake with child elements is refused.
pub fn verify_handshake(handshake: &Element, stream_id: &str, secret: &str) -> bool {
    if !handshake.is("handshake", NS) || handshake.children().next().is_some() {
        return false;
    }
    let text = handshake.text();
    let Some(given) = parse_hex20(text.trim()) else {
        return false;
    };
    let expected = sha1::Sha1::new()
        .chain_update(stream_id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

/// 40 hex digits as 20 bytes.
fn parse_hex20(s: &str) -> Option<[u8; 20]> {
    let b = s.as_bytes();
    if b.len() != 40 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 20];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(attrs: &[(&str, &str)]) -> Element {
        let mut h = Element::new("stream", ns::STREAMS);
        for (k, v) in attrs {
            h.set_attr(*k, *v);
        }
        h
    }

    #[test]
    fn digest_is_lowercase_hex_sha1_of_id_then_secret() {
        // sha1("abc") is the FIPS 180 test vector.
        assert_eq!(
            handshake_digest("a", "bc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn handshake_is_checked_in_either_case_and_nothing_else_passes() {
        let good = handshake_digest("3BF96D32", "secret");
        let hs = |t: &str| Element::new("handshake", NS).with_text(t);
        assert!(verify_handshake(&hs(&good), "3BF96D32", "secret"));
        assert!(verify_handshake(
            &hs(&good.to_uppercase()),
            "3BF96D32",
            "secret"
        ));
        assert!(verify_handshake(
            &hs(&format!(" {good}\n")),
            "3BF96D32",
            "secret"
        ));
        assert!(!verify_handshake(&hs(&good), "3BF96D32", "other"));
        assert!(!verify_handshake(&hs(&good), "another-id", "secret"));
        assert!(!verify_handshake(&hs(&good[..39]), "3BF96D32", "secret"));
        assert!(!verify_handshake(&hs(""), "3BF96D32", "secret"));
        assert!(!verify_handshake(
            &hs(&good.replace(|c: char| c.is_ascii_digit(), "g")),
            "3BF96D32",
            "secret"
        ));
        // Another namespace, or a child element.
        let wrong_ns = Element::new("handshake", ns::CLIENT).with_text(good.clone());
        assert!(!verify_handshake(&wrong_ns, "3BF96D32", "secret"));
        let child = hs(&good).with_child(Element::new("x", "urn:x"));
        assert!(!verify_handshake(&child, "3BF96D32", "secret"));
    }

    #[test]
    fn header_needs_the_component_namespace_and_a_domain() {
        let ok = header(&[("xmlns", NS), ("to", "Gateway.Example.org")]);
        assert_eq!(
            check_header(&ok).ok().as_deref(),
            Some("gateway.example.org")
        );
        let cond = |h: &Element| check_header(h).err().map(|e| e.condition);
        assert_eq!(
            cond(&header(&[("xmlns", ns::CLIENT), ("to", "gw.example.org")])),
            Some(StreamCondition::InvalidNamespace)
        );
        assert_eq!(
            cond(&header(&[("to", "gw.example.org")])),
            Some(StreamCondition::InvalidNamespace)
        );
        assert_eq!(
            cond(&header(&[("xmlns", NS)])),
            Some(StreamCondition::ImproperAddressing)
        );
        assert_eq!(
            cond(&header(&[("xmlns", NS), ("to", "user@gw.example.org")])),
            Some(StreamCondition::HostUnknown)
        );
        let mut not_stream = Element::new("stream", "urn:other");
        not_stream.set_attr("xmlns", NS);
        assert_eq!(cond(&not_stream), Some(StreamCondition::InvalidNamespace));
    }

    #[test]
    fn response_header_names_the_component_and_escapes() {
        let h = String::from_utf8(response_header("gw.example.org", "a'b")).unwrap_or_default();
        assert!(h.contains("xmlns='jabber:component:accept'"));
        assert!(h.contains("from='gw.example.org'"));
        assert!(
            h.contains("id='a&apos;b'") || h.contains("id='a&#39;b'"),
            "{h}"
        );
    }
}
