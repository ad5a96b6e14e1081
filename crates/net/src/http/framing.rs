//! Self-contained top-level elements for the HTTP transports. The session engine serializes
//! what it sends as children of a TCP stream: a stanza omits `xmlns='jabber:client'` (the
//! stream header declares it) and `<stream:features>` uses the `stream` prefix the header
//! declares. A WebSocket message (RFC 7395 §3.3.3: "every XML element MUST be a complete and
//! namespace-aware document") and a BOSH `<body/>` (XEP-0206 §6: stanzas "MUST" carry the
//! `jabber:client` namespace) have no such header, so each top-level element is cut out here and
//! given the declarations it relied on.
//!
//! The cutting needs no parser: the engine's output comes from our serializer, which escapes
//! `<`, `>`, `'` and `"` in every text and attribute value, so every `<` and `>` in it is markup.

const CLIENT_DECL: &[u8] = b" xmlns='jabber:client'";
const STREAM_DECL: &[u8] = b" xmlns:stream='http://etherx.jabber.org/streams'";

/// Calls `each` with every top-level element in `data` (our serializer's output: complete
/// elements, possibly with whitespace between them), each made self-contained. Returns false
/// when `data` is not such output (an element left open, stray text); what came before the
/// fault has been passed on.
pub fn for_each_element(data: &[u8], mut each: impl FnMut(Vec<u8>)) -> bool {
    let mut i = 0;
    while i < data.len() {
        // Whitespace between top-level elements is dropped (RFC 7395 §3.3.3: no whitespace
        // keepalives in messages of their own).
        if data[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if data[i] != b'<' {
            return false;
        }
        let Some(end) = element_end(&data[i..]) else {
            return false;
        };
        each(self_contained(&data[i..i + end]));
        i += end;
    }
    true
}

/// The length of the element at the start of `data`.
fn element_end(data: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        // At a `<`: a start tag, an end tag (`</`), or an empty-element tag ending in `/>`.
        if data.get(i) != Some(&b'<') {
            i += memchr(b'<', data.get(i..)?)?;
        }
        let close = data.get(i + 1) == Some(&b'/');
        let gt = i + memchr(b'>', &data[i..])?;
        let empty = !close && data.get(gt.wrapping_sub(1)) == Some(&b'/');
        if close {
            depth = depth.checked_sub(1)?;
        } else if !empty {
            depth += 1;
        }
        i = gt + 1;
        if depth == 0 {
            return Some(i);
        }
    }
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// Adds to an element's start tag the namespace declarations the stream header gave it.
fn self_contained(el: &[u8]) -> Vec<u8> {
    let name_end = el
        .iter()
        .position(|&b| b == b' ' || b == b'>' || b == b'/')
        .unwrap_or(el.len());
    let mut out = Vec::with_capacity(el.len() + STREAM_DECL.len());
    out.extend_from_slice(&el[..name_end]);
    if el.starts_with(b"<stream:") {
        out.extend_from_slice(STREAM_DECL);
    } else if !el[name_end..].starts_with(b" xmlns='") {
        // The serializer writes a namespace declaration first, right after the name, when the
        // element's namespace differs from the stream's: none means jabber:client.
        out.extend_from_slice(CLIENT_DECL);
    }
    out.extend_from_slice(&el[name_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use canto_xml::{Element, Limits, StreamEvent, StreamParser};

    fn split(data: &[u8]) -> (Vec<String>, bool) {
        let mut v = Vec::new();
        let ok = for_each_element(data, |e| v.push(String::from_utf8(e).unwrap_or_default()));
        (v, ok)
    }

    /// Parses one message on its own, as a browser's DOMParser would: it must be a document.
    fn parse_alone(s: &str) -> Option<Element> {
        let mut p = StreamParser::new(Limits::AUTHENTICATED);
        let mut out = Vec::new();
        let doc = format!("<wrapper xmlns='urn:x:none'>{s}");
        p.feed(doc.as_bytes(), &mut out).ok()?;
        match out.get(1) {
            Some(StreamEvent::Stanza(e)) if out.len() == 2 => Some(e.clone()),
            _ => None,
        }
    }

    #[test]
    fn elements_are_cut_apart_and_declare_their_namespace() {
        let msg = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_attr("id", "<x/> 'q' \"/>\"")
            .with_child(Element::new("body", "jabber:client").with_text("a </message> <b/> >"));
        let features = Element::new("features", "http://etherx.jabber.org/streams")
            .with_child(Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
        let r = Element::new("r", "urn:xmpp:sm:3");
        let mut data = Vec::new();
        features.write_to(&mut data, "jabber:client");
        msg.write_to(&mut data, "jabber:client");
        data.extend_from_slice(b" \n");
        r.write_to(&mut data, "jabber:client");
        let (parts, ok) = split(&data);
        assert!(ok);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(
            parts[0]
                .starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>")
        );
        assert!(parts[1].starts_with("<message xmlns='jabber:client' to="));
        assert_eq!(parts[2], "<r xmlns='urn:xmpp:sm:3'/>");
        // Each part is a document that parses back to the element we serialized.
        assert_eq!(parse_alone(&parts[1]), Some(msg));
        assert_eq!(parse_alone(&parts[2]), Some(r));
        assert_eq!(parse_alone(&parts[0]), Some(features));
    }

    #[test]
    fn a_truncated_element_or_stray_text_is_refused() {
        assert!(!split(b"<message><body>x</body>").1);
        assert!(!split(b"text<a/>").1);
        let (parts, ok) = split(b"<a/><b>");
        assert!(!ok);
        assert_eq!(parts, vec!["<a xmlns='jabber:client'/>".to_string()]);
        assert!(split(b"").1);
    }
}
