//! Incremental parser for an XMPP stream (RFC 6120 §4): bytes in, stream header, stanzas and
//! stream close out, under per-stanza budgets.
//!
//! The tokenizer is `rxml`, which already refuses what RFC 6120 §11.1 forbids (DTDs, comments,
//! processing instructions, custom entities, non-UTF-8). On top of it this parser enforces the
//! budgets that keep one connection from growing the server's memory: bytes per stanza, nesting
//! depth, element count and attribute count.

use rxml::{Event, Parse, Parser};

use crate::element::Element;

/// The namespace of the XML `xml:` prefix.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Largest slice handed to the tokenizer at once, so budgets are checked at least this often
/// even while a single token (say, an element header with thousands of attributes) is pending.
const FEED_SLICE: usize = 2048;

/// Budgets for one stanza. Exceeding any of them is a `policy-violation` stream error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of input one stanza may take (RFC 6120 §13.12: servers may limit stanza size).
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Maximum number of elements in one stanza.
    pub max_elements: usize,
    /// Maximum number of attributes on one element.
    pub max_attrs: usize,
}

impl Limits {
    /// Defaults once authenticated: 256 KiB like Prosody and ejabberd.
    pub const AUTHENTICATED: Limits = Limits {
        max_stanza_bytes: 256 * 1024,
        max_depth: 32,
        max_elements: 4096,
        max_attrs: 64,
    };
    /// Defaults before authentication: 10 KiB and few elements (ejabberd's 2026 pre-auth limits).
    pub const UNAUTHENTICATED: Limits = Limits {
        max_stanza_bytes: 10 * 1024,
        max_depth: 8,
        max_elements: 32,
        max_attrs: 16,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::AUTHENTICATED
    }
}

/// Which budget a stanza exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// [`Limits::max_stanza_bytes`].
    Bytes,
    /// [`Limits::max_depth`].
    Depth,
    /// [`Limits::max_elements`].
    Elements,
    /// [`Limits::max_attrs`].
    Attributes,
}

/// Why the stream cannot go on. Each maps to one RFC 6120 §4.9.3 stream error condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// `not-well-formed` (§4.9.3.13).
    #[error("not well-formed XML: {0}")]
    NotWellFormed(&'static str),
    /// `restricted-xml` (§4.9.3.18): DTD, comment, PI, entity.
    #[error("restricted XML: {0}")]
    RestrictedXml(&'static str),
    /// `unsupported-encoding` (§4.9.3.22): not UTF-8, or invalid UTF-8.
    #[error("unsupported encoding")]
    UnsupportedEncoding,
    /// `bad-format` (§4.9.3.1): well-formed but not a valid stream (text between stanzas).
    #[error("bad format: {0}")]
    BadFormat(&'static str),
    /// `policy-violation` (§4.9.3.14): a budget was exceeded.
    #[error("stanza over the {0:?} budget")]
    PolicyViolation(LimitKind),
}

impl XmlError {
    /// The RFC 6120 stream error condition element name.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::UnsupportedEncoding => "unsupported-encoding",
            XmlError::BadFormat(_) => "bad-format",
            XmlError::PolicyViolation(_) => "policy-violation",
        }
    }
}

/// What the parser produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream header: the root element's name, namespace and attributes (no children).
    /// Namespace checks are the caller's (RFC 6120 §4.9.3.10).
    Header(Element),
    /// One complete top-level element (a stanza or a negotiation element).
    Stanza(Element),
    /// `</stream:stream>`.
    Close,
}

/// An incremental stream parser. Create one per stream; a stream restart (after STARTTLS or
/// SASL) needs a fresh one ([`StreamParser::reset`]).
#[derive(Debug)]
pub struct StreamParser {
    parser: Parser,
    limits: Limits,
    /// Open elements of the current stanza; `stack[0]` is the stanza element.
    stack: Vec<Element>,
    /// 0 before the header, 1 inside the stream, more inside a stanza.
    depth: usize,
    /// Bytes consumed since the last stanza boundary.
    pending_bytes: usize,
    /// Elements in the current stanza.
    elements: usize,
    closed: bool,
    /// Whether a non-whitespace byte was seen (before it, only `<` may start the document).
    started: bool,
    /// The raw bytes before the stream header completed, to recover its default namespace
    /// declaration (which a namespace-aware tokenizer does not report as an attribute).
    header_raw: Vec<u8>,
    /// Counts attributes, namespace declarations included, in start tags as bytes are consumed.
    tags: TagScanner,
}

/// Most bytes a stream header (with the XML declaration) may take.
const MAX_HEADER_BYTES: usize = 4096;

impl StreamParser {
    /// A parser with the given budgets.
    pub fn new(limits: Limits) -> StreamParser {
        StreamParser {
            parser: Parser::new(),
            limits,
            stack: Vec::new(),
            depth: 0,
            pending_bytes: 0,
            elements: 0,
            closed: false,
            started: false,
            header_raw: Vec::new(),
            tags: TagScanner::default(),
        }
    }

    /// Changes the budgets (e.g. after authentication). Applies from the next byte.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The budgets in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Starts over for a stream restart (RFC 6120 §4.3.3), keeping the budgets.
    pub fn reset(&mut self) {
        *self = StreamParser::new(self.limits);
    }

    /// Whether the peer closed the stream.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether an element is open below the stream's root: bytes of a top-level element have
    /// been fed but the element is not complete yet (a message-framed transport uses this to
    /// refuse a message that does not end with its element, RFC 7395 §3.3.3).
    pub fn mid_element(&self) -> bool {
        self.depth > 1 || (self.depth == 1 && self.pending_bytes > 0)
    }

    /// Frees tokenizer buffers while the connection is idle.
    pub fn release_temporaries(&mut self) {
        self.parser.release_temporaries();
        if self.stack.is_empty() {
            self.stack = Vec::new();
        }
    }

    /// Feeds bytes, appending complete events to `out`. After an error the stream must be
    /// closed; after [`StreamEvent::Close`] remaining input is ignored.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if !self.started {
            match data.iter().find(|b| !b.is_ascii_whitespace()) {
                // A document starts with `<` (the XML declaration or the root): anything else,
                // such as an HTTP request, is not XML at all.
                Some(b'<') => self.started = true,
                // RFC 6120 §11.6, §4.9.3.22: a UTF-16 byte order mark (FE FF, FF FE) or the
                // zero byte of a UTF-16/UTF-32 `<` is another encoding: unsupported-encoding.
                Some(0xFE | 0xFF | 0x00) => return Err(XmlError::UnsupportedEncoding),
                Some(_) => return Err(XmlError::NotWellFormed("not an XML stream")),
                None => {}
            }
        }
        for slice in data.chunks(FEED_SLICE) {
            let mut buf = slice;
            // Loop until the tokenizer asks for more: it may still hold events (the end of a
            // `<x/>`) after the last input byte was consumed.
            while !self.closed {
                let before = buf.len();
                let start = buf;
                let result = self.parser.parse(&mut buf, false);
                let consumed = &start[..before - buf.len()];
                // The tokenizer reports namespace declarations as no attribute at all, so they
                // are counted here, before a start tag with thousands of them completes.
                if self.tags.scan(consumed) > self.limits.max_attrs {
                    return Err(XmlError::PolicyViolation(LimitKind::Attributes));
                }
                if self.depth == 0 {
                    self.header_raw.extend_from_slice(consumed);
                    if self.header_raw.len() > MAX_HEADER_BYTES {
                        return Err(XmlError::PolicyViolation(LimitKind::Bytes));
                    }
                }
                if self.depth >= 1 {
                    self.pending_bytes += before - buf.len();
                    if self.pending_bytes > self.limits.max_stanza_bytes {
                        return Err(XmlError::PolicyViolation(LimitKind::Bytes));
                    }
                }
                match result {
                    Ok(Some(ev)) => self.event(ev, out)?,
                    Ok(None) => {
                        // End of document: only after the root closed, which sets `closed`.
                        self.closed = true;
                    }
                    Err(rxml::error::EndOrError::NeedMoreData) => break,
                    Err(rxml::error::EndOrError::Error(e)) => return Err(self.map_error(e)),
                }
            }
            if self.closed {
                break;
            }
        }
        Ok(())
    }

    fn map_error(&self, e: rxml::Error) -> XmlError {
        use rxml::Error as E;
        match e {
            // RFC 6120 §4.9.3.22: improperly encoded streams (invalid UTF-8) and non-UTF-8
            // encodings are unsupported-encoding.
            E::InvalidUtf8Byte(_) => XmlError::UnsupportedEncoding,
            E::RestrictedXml(msg) if msg.contains("encoding") => XmlError::UnsupportedEncoding,
            // RFC 6120 §11.1: comments, PIs, DTDs and entity declarations are restricted.
            E::RestrictedXml(msg) => XmlError::RestrictedXml(msg),
            E::UndeclaredEntity => XmlError::RestrictedXml("entity reference"),
            // `<!DOCTYPE` is tokenized as a broken `<!--`/`<![CDATA[`: it is a DTD.
            E::InvalidSyntax(msg) if msg.contains("cdata or comment") => {
                XmlError::RestrictedXml("document type declaration")
            }
            E::InvalidSyntax(msg) => XmlError::NotWellFormed(msg),
            E::DuplicateAttribute => XmlError::NotWellFormed("duplicate attribute"),
            E::ElementMismatch => XmlError::NotWellFormed("mismatched end tag"),
            E::UndeclaredNamespacePrefix(_) => XmlError::NotWellFormed("undeclared prefix"),
            E::InvalidChar(..) => XmlError::NotWellFormed("invalid character"),
            _ => XmlError::NotWellFormed("syntax error"),
        }
    }

    fn event(&mut self, ev: Event, out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(()),
            Event::StartElement(_, (ns, name), attrs) => {
                let attr_count = attrs.len();
                if attr_count > self.limits.max_attrs {
                    return Err(XmlError::PolicyViolation(LimitKind::Attributes));
                }
                let mut el = Element::new(name.as_str(), ns.as_str());
                for ((ans, aname), value) in attrs {
                    if ans.is_none() {
                        el.set_attr(aname.as_str(), value);
                    } else if ans.as_str() == XML_NS {
                        el.set_attr(format!("xml:{}", aname.as_str()), value);
                    } else {
                        el.set_attr(format!("{{{}}}{}", ans.as_str(), aname.as_str()), value);
                    }
                }
                if self.depth == 0 {
                    self.depth = 1;
                    self.pending_bytes = 0;
                    if let Some(ns) = default_namespace(&self.header_raw) {
                        el.set_attr("xmlns", ns);
                    }
                    self.header_raw = Vec::new();
                    out.push(StreamEvent::Header(el));
                    return Ok(());
                }
                self.elements += 1;
                if self.elements > self.limits.max_elements {
                    return Err(XmlError::PolicyViolation(LimitKind::Elements));
                }
                if self.depth > self.limits.max_depth {
                    return Err(XmlError::PolicyViolation(LimitKind::Depth));
                }
                self.depth += 1;
                self.stack.push(el);
                Ok(())
            }
            Event::EndElement(_) => {
                if self.depth == 1 {
                    self.depth = 0;
                    self.closed = true;
                    out.push(StreamEvent::Close);
                    return Ok(());
                }
                self.depth -= 1;
                let Some(done) = self.stack.pop() else {
                    return Err(XmlError::NotWellFormed("unbalanced end tag"));
                };
                match self.stack.last_mut() {
                    Some(parent) => parent.push_child(done),
                    None => {
                        self.elements = 0;
                        self.pending_bytes = 0;
                        out.push(StreamEvent::Stanza(done));
                    }
                }
                Ok(())
            }
            Event::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(cur) => cur.push_text(text),
                    None => {
                        // Between stanzas only whitespace (keepalives) is allowed.
                        if !text
                            .bytes()
                            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                        {
                            return Err(XmlError::BadFormat("text at stream level"));
                        }
                        self.pending_bytes = 0;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Where [`TagScanner`] is in the markup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Scan {
    /// Character data.
    #[default]
    Content,
    /// Just after `<`.
    Open,
    /// Inside a start tag, outside attribute values.
    StartTag,
    /// Inside an attribute value of a start tag, quoted with this byte.
    Value(u8),
    /// Just after `<!`.
    Bang,
    /// Inside `<![CDATA[…]]>`, with this many `]` just seen.
    CData(u8),
    /// Inside an end tag, XML declaration or other markup without attributes to count.
    Other,
    /// Inside a quoted string of such markup.
    OtherQuoted(u8),
}

/// Counts the attributes of each start tag in raw, already tokenized bytes: every `=` outside
/// quotes in a start tag is one attribute or namespace declaration (XML 1.0 §3.1 `Attribute`,
/// Namespaces in XML 1.0 §3 `NSAttName`). Text and CDATA are skipped.
#[derive(Clone, Copy, Debug, Default)]
struct TagScanner {
    state: Scan,
    /// Attributes of the current (or last) start tag.
    attrs: usize,
}

impl TagScanner {
    /// Consumes `data` and returns the largest attribute count of a start tag seen in it.
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut most = self.attrs;
        for &b in data {
            self.state = match (self.state, b) {
                (Scan::Content, b'<') => Scan::Open,
                (Scan::Content, _) => Scan::Content,
                (Scan::Open, b'!') => Scan::Bang,
                (Scan::Open, b'/' | b'?') => Scan::Other,
                (Scan::Open, b'>') => Scan::Content,
                (Scan::Open, _) => {
                    self.attrs = 0;
                    Scan::StartTag
                }
                (Scan::StartTag, b'\'' | b'"') => Scan::Value(b),
                (Scan::StartTag, b'=') => {
                    self.attrs += 1;
                    most = most.max(self.attrs);
                    Scan::StartTag
                }
                (Scan::StartTag, b'>') => Scan::Content,
                (Scan::StartTag, _) => Scan::StartTag,
                (Scan::Value(q), c) if c == q => Scan::StartTag,
                (Scan::Value(q), _) => Scan::Value(q),
                (Scan::Bang, b'[') => Scan::CData(0),
                (Scan::Bang, _) => Scan::Other,
                (Scan::CData(n), b']') => Scan::CData(n.saturating_add(1)),
                (Scan::CData(n), b'>') if n >= 2 => Scan::Content,
                (Scan::CData(_), _) => Scan::CData(0),
                (Scan::Other, b'\'' | b'"') => Scan::OtherQuoted(b),
                (Scan::Other, b'>') => Scan::Content,
                (Scan::Other, _) => Scan::Other,
                (Scan::OtherQuoted(q), c) if c == q => Scan::Other,
                (Scan::OtherQuoted(q), _) => Scan::OtherQuoted(q),
            };
        }
        most
    }
}

/// The default namespace declared on the first element of `raw` (`xmlns='…'`).
fn default_namespace(raw: &[u8]) -> Option<String> {
    let mut p = rxml::RawParser::new();
    let mut buf = raw;
    let mut seen_head = false;
    loop {
        match p.parse(&mut buf, false) {
            Ok(Some(rxml::RawEvent::ElementHeadOpen(..))) => seen_head = true,
            Ok(Some(rxml::RawEvent::Attribute(_, (None, name), value)))
                if seen_head && name.as_str() == "xmlns" =>
            {
                return Some(value);
            }
            Ok(Some(rxml::RawEvent::ElementHeadClose(..))) => return None,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";

    fn parse_all(input: &[u8], limits: Limits) -> (Vec<StreamEvent>, Result<(), XmlError>) {
        let mut p = StreamParser::new(limits);
        let mut out = Vec::new();
        let r = p.feed(input, &mut out);
        (out, r)
    }

    fn err_of(input: &str) -> XmlError {
        let (_, r) = parse_all(input.as_bytes(), Limits::AUTHENTICATED);
        match r {
            Err(e) => e,
            Ok(()) => panic!("expected an error for {input:?}"),
        }
    }

    #[test]
    fn header_stanza_and_close() {
        let doc = format!(
            "{HEADER}<message to='a@b'><body>hi &amp; bye</body></message> </stream:stream>"
        );
        let (out, r) = parse_all(doc.as_bytes(), Limits::AUTHENTICATED);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 3);
        let StreamEvent::Header(h) = &out[0] else {
            panic!("no header")
        };
        assert_eq!(h.name(), "stream");
        assert_eq!(h.ns(), "http://etherx.jabber.org/streams");
        assert_eq!(h.attr("to"), Some("example.test"));
        assert_eq!(h.attr("xmlns"), Some("jabber:client"));
        let StreamEvent::Stanza(m) = &out[1] else {
            panic!("no stanza")
        };
        assert!(m.is("message", "jabber:client"));
        assert_eq!(
            m.get_child("body", "jabber:client").map(|b| b.text()),
            Some("hi & bye".into())
        );
        assert_eq!(out[2], StreamEvent::Close);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_events() {
        let doc = format!("{HEADER}<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let mut p = StreamParser::new(Limits::AUTHENTICATED);
        let mut out = Vec::new();
        for b in doc.as_bytes() {
            assert_eq!(p.feed(std::slice::from_ref(b), &mut out), Ok(()));
        }
        assert_eq!(out.len(), 2);
        let StreamEvent::Stanza(iq) = &out[1] else {
            panic!("no stanza")
        };
        assert!(iq.has_child("ping", "urn:xmpp:ping"));
    }

    #[test]
    fn xml_lang_attribute_is_kept_with_its_prefix() {
        let doc = format!("{HEADER}<message xml:lang='en'/>");
        let (out, _) = parse_all(doc.as_bytes(), Limits::AUTHENTICATED);
        let StreamEvent::Stanza(m) = &out[1] else {
            panic!("no stanza")
        };
        assert_eq!(m.attr("xml:lang"), Some("en"));
    }

    #[test]
    fn restricted_features_are_refused() {
        // RFC 6120 §11.1
        assert!(matches!(
            err_of("<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a 'x'>]><stream:stream/>"),
            XmlError::RestrictedXml(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<!-- hi -->")),
            XmlError::RestrictedXml(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<?pi data?>")),
            XmlError::RestrictedXml(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<message><body>&lol9;</body></message>")),
            XmlError::RestrictedXml(_)
        ));
    }

    #[test]
    fn encodings_other_than_utf8_are_refused() {
        // RFC 6120 §11.6, §4.9.3.22
        assert_eq!(
            err_of("<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>"),
            XmlError::UnsupportedEncoding
        );
        let mut bad = format!("{HEADER}<message><body>").into_bytes();
        bad.extend_from_slice(b"\xC0\xAF</body></message>");
        let (_, r) = parse_all(&bad, Limits::AUTHENTICATED);
        assert_eq!(r, Err(XmlError::UnsupportedEncoding));
        let (_, r) = parse_all(b"\xFE\xFF\x00<\x00s", Limits::AUTHENTICATED);
        assert!(r.is_err());
    }

    #[test]
    fn malformed_documents_are_not_well_formed() {
        assert!(matches!(
            err_of(&format!("{HEADER}<message to='a' to='b'/>")),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<foo:bar/>")),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<message><body></message>")),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<message><body>&#0;</body></message>")),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            err_of(&format!("{HEADER}<message><body>&#xD800;</body></message>")),
            XmlError::NotWellFormed(_)
        ));
        assert!(err_of("GET / HTTP/1.1\r\n\r\n").condition() == "not-well-formed");
    }

    #[test]
    fn text_between_stanzas_is_bad_format_but_whitespace_is_fine() {
        let (out, r) = parse_all(
            format!("{HEADER}  \n\t <presence/>").as_bytes(),
            Limits::AUTHENTICATED,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 2);
        assert!(matches!(
            err_of(&format!("{HEADER}hello<presence/>")),
            XmlError::BadFormat(_)
        ));
    }

    #[test]
    fn oversized_stanza_is_stopped_before_it_is_all_read() {
        let limits = Limits {
            max_stanza_bytes: 1000,
            ..Limits::AUTHENTICATED
        };
        let mut p = StreamParser::new(limits);
        let mut out = Vec::new();
        assert_eq!(
            p.feed(format!("{HEADER}<message><body>").as_bytes(), &mut out),
            Ok(())
        );
        let chunk = vec![b'a'; 600];
        assert_eq!(p.feed(&chunk, &mut out), Ok(()));
        assert_eq!(
            p.feed(&chunk, &mut out),
            Err(XmlError::PolicyViolation(LimitKind::Bytes))
        );
    }

    #[test]
    fn budget_resets_per_stanza() {
        let limits = Limits {
            max_stanza_bytes: 100,
            ..Limits::AUTHENTICATED
        };
        let mut doc = HEADER.to_string();
        for _ in 0..50 {
            doc.push_str("<presence/>");
        }
        let (out, r) = parse_all(doc.as_bytes(), limits);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 51);
    }

    #[test]
    fn deep_nesting_is_a_policy_violation_without_recursion() {
        let mut doc = HEADER.to_string();
        for _ in 0..100_000 {
            doc.push_str("<a>");
        }
        assert_eq!(err_of(&doc), XmlError::PolicyViolation(LimitKind::Depth));
    }

    #[test]
    fn many_elements_and_attributes_are_bounded() {
        let mut doc = format!("{HEADER}<iq>");
        for _ in 0..100_000 {
            doc.push_str("<a/>");
        }
        let (_, r) = parse_all(doc.as_bytes(), Limits::UNAUTHENTICATED);
        assert!(matches!(
            r,
            Err(XmlError::PolicyViolation(
                LimitKind::Elements | LimitKind::Bytes
            ))
        ));

        let mut doc = format!("{HEADER}<message");
        for i in 0..10_000 {
            doc.push_str(&format!(" a{i}='x'"));
        }
        doc.push_str("/>");
        let (_, r) = parse_all(doc.as_bytes(), Limits::AUTHENTICATED);
        assert!(matches!(
            r,
            Err(XmlError::PolicyViolation(
                LimitKind::Attributes | LimitKind::Bytes
            ))
        ));
    }

    #[test]
    fn namespace_declarations_count_as_attributes() {
        // RFC 6120 §13.12: 10,000 xmlns:pN declarations are bounded like attributes,
        // although the tokenizer does not report them as attributes.
        let mut doc = format!("{HEADER}<message");
        for i in 0..10_000 {
            doc.push_str(&format!(" xmlns:p{i}='urn:p{i}'"));
        }
        doc.push_str("/>");
        let (_, r) = parse_all(doc.as_bytes(), Limits::AUTHENTICATED);
        assert_eq!(r, Err(XmlError::PolicyViolation(LimitKind::Attributes)));
        // Byte at a time: stopped as soon as the budget is passed, not at the end of the tag.
        let mut p = StreamParser::new(Limits::AUTHENTICATED);
        let mut out = Vec::new();
        let mut fed = 0;
        for b in doc.as_bytes() {
            fed += 1;
            if p.feed(std::slice::from_ref(b), &mut out).is_err() {
                break;
            }
        }
        assert!(fed < HEADER.len() + 100 * 20, "stopped after {fed} bytes");
    }

    #[test]
    fn attribute_budget_ignores_equals_signs_in_values_text_and_cdata() {
        // The header has four (xmlns, xmlns:stream, to, version).
        let limits = Limits {
            max_attrs: 4,
            ..Limits::AUTHENTICATED
        };
        let eq = "=".repeat(50);
        let doc = format!(
            "{HEADER}<message a='{eq}' b=\"x='1'\"><body>{eq} a=b c=d</body>\
             <x xmlns='urn:x'><![CDATA[<y a='1' b='2' c='3' d='4'/> ]] > ]]]></x></message>\
             <presence xmlns:p='urn:p' p:a='1'/>"
        );
        let (out, r) = parse_all(doc.as_bytes(), limits);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 3);
        let five = format!(
            "{HEADER}<presence xmlns:p='urn:p' xmlns:q='urn:q' xmlns:r='urn:r' xmlns='urn:s' p:a='1'/>"
        );
        assert_eq!(
            parse_all(five.as_bytes(), limits).1,
            Err(XmlError::PolicyViolation(LimitKind::Attributes))
        );
    }

    #[test]
    fn utf16_is_unsupported_encoding() {
        // RFC 6120 §11.6, §4.9.3.22
        for start in [&b"\xFE\xFF\x00<"[..], b"\xFF\xFE<\x00", b"\x00<\x00s"] {
            let (_, r) = parse_all(start, Limits::AUTHENTICATED);
            assert_eq!(r, Err(XmlError::UnsupportedEncoding), "{start:?}");
        }
    }

    #[test]
    fn reset_allows_a_new_header() {
        let mut p = StreamParser::new(Limits::AUTHENTICATED);
        let mut out = Vec::new();
        assert_eq!(p.feed(HEADER.as_bytes(), &mut out), Ok(()));
        p.reset();
        assert_eq!(p.feed(HEADER.as_bytes(), &mut out), Ok(()));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn smuggled_markup_in_text_stays_text() {
        let doc = format!(
            "{HEADER}<message to='bob@example.test'><body>&lt;/body&gt;&lt;/message&gt;&lt;iq type='set'&gt;</body></message>"
        );
        let (out, r) = parse_all(doc.as_bytes(), Limits::AUTHENTICATED);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 2);
        let StreamEvent::Stanza(m) = &out[1] else {
            panic!("no stanza")
        };
        let s = String::from_utf8(m.to_bytes_in("jabber:client")).unwrap_or_default();
        assert_eq!(s.matches("<message").count(), 1);
        assert!(s.contains("&lt;/body&gt;"));
    }
}
