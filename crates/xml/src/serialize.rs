//! Serializer: element tree → UTF-8 bytes. Stanzas are always re-serialized from the parsed
//! tree, never forwarded as the bytes a peer sent: a recipient whose parser reads odd input
//! (invalid UTF-8, say) differently from ours could otherwise see stanzas we never saw, as in
//! the 2022 Zoom stanza smuggling (ARCHITECTURE.md, "Bad input and limits").

use crate::element::{Element, Node};

/// Appends `s` escaped for character data: the five XML special characters, and carriage
/// return (XML 1.0 §2.11 would turn a raw one into a line feed).
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    escape_with(out, s, false);
}

/// Appends `s` escaped for an attribute value: as for text, plus tab and line feed, which an
/// XML parser would otherwise normalize to spaces (XML 1.0 §3.3.3).
pub fn escape_attr_into(out: &mut Vec<u8>, s: &str) {
    escape_with(out, s, true);
}

fn escape_with(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' => b"&apos;",
            b'"' => b"&quot;",
            b'\r' => b"&#13;",
            b'\t' if attr => b"&#9;",
            b'\n' if attr => b"&#10;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Escapes a string into a new `String`.
pub fn escape(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len());
    escape_into(&mut v, s);
    // Escaping only replaces ASCII bytes with ASCII sequences, so the result stays UTF-8.
    String::from_utf8(v).unwrap_or_default()
}

/// The stream namespace: its top-level elements are written with the `stream:` prefix that
/// every stream header declares (`<stream:features>`, `<stream:error>`).
const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

/// The `xml` prefix's namespace, bound in every document and never declarable as a default
/// (Namespaces in XML §3): an element in it (`<xml:lang/>`) is written with the prefix.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Writes `el` as a child of the stream (an element whose parent's default namespace is
/// `parent_ns`).
pub(crate) fn write_element(el: &Element, out: &mut Vec<u8>, parent_ns: &str) {
    write_at(el, out, parent_ns, true);
}

fn write_at(el: &Element, out: &mut Vec<u8>, parent_ns: &str, top: bool) {
    out.push(b'<');
    // Only at the top: inside a stanza the prefix may not be declared where the bytes end up
    // (a stanza kept for XEP-0198 replay is parsed back on its own), so a nested element in
    // the stream namespace declares it like any other.
    let prefixed = top && el.ns() == STREAMS_NS;
    let xml_prefixed = el.ns() == XML_NS;
    if prefixed {
        out.extend_from_slice(b"stream:");
    } else if xml_prefixed {
        out.extend_from_slice(b"xml:");
    }
    out.extend_from_slice(el.name().as_bytes());
    if !prefixed && !xml_prefixed && el.ns() != parent_ns {
        out.extend_from_slice(b" xmlns='");
        escape_attr_into(out, el.ns());
        out.push(b'\'');
    }
    let mut extra_prefix = 0usize;
    for (k, v) in el.attrs() {
        out.push(b' ');
        if let Some(rest) = k.strip_prefix('{') {
            // `{NS}name`: declare a prefix for it on this element.
            if let Some((ns, local)) = rest.split_once('}') {
                let prefix = format!("a{extra_prefix}");
                extra_prefix += 1;
                out.extend_from_slice(b"xmlns:");
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"='");
                escape_attr_into(out, ns);
                out.extend_from_slice(b"' ");
                out.extend_from_slice(prefix.as_bytes());
                out.push(b':');
                out.extend_from_slice(local.as_bytes());
            } else {
                out.extend_from_slice(k.as_bytes());
            }
        } else {
            out.extend_from_slice(k.as_bytes());
        }
        out.extend_from_slice(b"='");
        escape_attr_into(out, v);
        out.push(b'\'');
    }
    if el.nodes().is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    // Children of a prefixed element inherit the parent's default namespace, not the prefix's.
    let child_parent = if prefixed || xml_prefixed {
        parent_ns
    } else {
        el.ns()
    };
    for n in el.nodes() {
        match n {
            Node::Element(c) => write_at(c, out, child_parent, false),
            Node::Text(t) => escape_into(out, t),
        }
    }
    out.extend_from_slice(b"</");
    if prefixed {
        out.extend_from_slice(b"stream:");
    } else if xml_prefixed {
        out.extend_from_slice(b"xml:");
    }
    out.extend_from_slice(el.name().as_bytes());
    out.push(b'>');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_element_in_the_xml_namespace_keeps_its_prefix() {
        // Found by the xml_stream fuzz target: `<xml:lang/>` was written as
        // `<lang xmlns='http://www.w3.org/XML/1998/namespace'/>`, which no parser accepts.
        let el = Element::new("lang", XML_NS).with_child(Element::new("x", "urn:a"));
        let mut out = Vec::new();
        write_element(&el, &mut out, "jabber:client");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<xml:lang><x xmlns='urn:a'/></xml:lang>"
        );
    }

    #[test]
    fn escapes_specials_in_text_and_attributes() {
        let e = Element::new("body", "jabber:client")
            .with_attr("a", "x'\"<&>")
            .with_text("</body></message><iq type='set'>");
        let s = String::from_utf8(e.to_bytes_in("jabber:client")).unwrap_or_default();
        assert_eq!(
            s,
            "<body a='x&apos;&quot;&lt;&amp;&gt;'>&lt;/body&gt;&lt;/message&gt;&lt;iq type=&apos;set&apos;&gt;</body>"
        );
    }

    #[test]
    fn whitespace_survives_a_round_trip() {
        // XEP-independent: XML 1.0 §3.3.3 (attribute value normalization) and §2.11 (line ends).
        let e = Element::new("iq", "jabber:client")
            .with_attr("id", "p\t1\n2\r3")
            .with_text("a\r\nb\tc");
        let bytes = e.to_bytes();
        let mut p = crate::StreamParser::new(crate::Limits::AUTHENTICATED);
        let mut out = Vec::new();
        let mut doc = b"<s xmlns='jabber:client'>".to_vec();
        doc.extend_from_slice(&bytes);
        assert!(p.feed(&doc, &mut out).is_ok());
        assert_eq!(out.get(1), Some(&crate::StreamEvent::Stanza(e)));
    }

    #[test]
    fn stream_namespace_inside_a_stanza_round_trips_without_the_stream_prefix() {
        // Found by fuzz/fuzz_targets/xml_stream.rs: a client's `<stream:x/>` inside a stanza
        // came back as `<stream:x/>`, which does not parse where `stream` is not declared.
        let e = Element::new("iq", "jabber:client")
            .with_attr("type", "get")
            .with_child(
                Element::new("x", STREAMS_NS).with_child(Element::new("y", "jabber:client")),
            );
        let bytes = e.to_bytes_in("jabber:client");
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap_or_default(),
            "<iq type='get'><x xmlns='http://etherx.jabber.org/streams'><y xmlns='jabber:client'/></x></iq>"
        );
        let mut p = crate::StreamParser::new(crate::Limits::AUTHENTICATED);
        let mut out = Vec::new();
        let mut doc = b"<s xmlns='jabber:client'>".to_vec();
        doc.extend_from_slice(&bytes);
        assert!(p.feed(&doc, &mut out).is_ok());
        assert_eq!(out.get(1), Some(&crate::StreamEvent::Stanza(e)));
        // At the top the prefix stays (every stream header declares it).
        let f = Element::new("features", STREAMS_NS);
        assert_eq!(
            String::from_utf8(f.to_bytes_in("jabber:client")).unwrap_or_default(),
            "<stream:features/>"
        );
    }

    #[test]
    fn declares_namespace_only_when_it_changes() {
        let e = Element::new("iq", "jabber:client")
            .with_child(Element::new("ping", "urn:xmpp:ping"))
            .with_child(Element::new("x", "jabber:client"));
        let s = String::from_utf8(e.to_bytes_in("jabber:client")).unwrap_or_default();
        assert_eq!(s, "<iq><ping xmlns='urn:xmpp:ping'/><x/></iq>");
        let s = String::from_utf8(e.to_bytes()).unwrap_or_default();
        assert!(s.starts_with("<iq xmlns='jabber:client'>"));
    }

    #[test]
    fn stream_namespace_uses_the_stream_prefix() {
        let e = Element::new("features", STREAMS_NS)
            .with_child(Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind"))
            .with_child(Element::new("x", "jabber:client"));
        let s = String::from_utf8(e.to_bytes_in("jabber:client")).unwrap_or_default();
        assert_eq!(
            s,
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><x/></stream:features>"
        );
    }

    #[test]
    fn foreign_namespaced_attribute_gets_a_prefix() {
        let e = Element::new("x", "urn:a").with_attr("{urn:b}y", "1");
        let s = String::from_utf8(e.to_bytes()).unwrap_or_default();
        assert_eq!(s, "<x xmlns='urn:a' xmlns:a0='urn:b' a0:y='1'/>");
    }
}
