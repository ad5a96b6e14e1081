//! The XMPP stream parser (`canto_xml::StreamParser`) on arbitrary bytes. Checked:
//!
//! * no panic, no hang, memory bounded by the budgets (libFuzzer's `-rss_limit_mb` and
//!   `-timeout` catch the last two);
//! * the parser is incremental: feeding the input in 97-byte chunks or all at once yields the
//!   same events (when one feeding stops at an error, its events are a prefix of the other's —
//!   budgets are checked per consumed slice, so the exact stopping point may differ);
//! * every stanza serializes and parses back to the same tree (stanzas are always
//!   re-serialized from the tree, never forwarded as received, so the tree must survive it).
//!
//! The round trip parses each stanza back inside a wrapper that, like every stream header,
//! declares a default namespace and the `stream:` prefix: a top-level element in the stream
//! namespace is written with that prefix (`<stream:features>`), so without the declaration a
//! client's `<stream:x/>` came back as a false crash
//! (fuzz/corpus/xml_stream/regress-top-level-stream-prefix). A stanza in no namespace comes
//! back in the wrapper's, `x` — the serializer is told that is the parent's namespace
//! (fuzz/artifacts-min/xml_stream-no-default-ns).
#![no_main]
use canto_xml::{Limits, StreamEvent, StreamParser};
use libfuzzer_sys::fuzz_target;

/// The default namespace of the wrapper stream used for the round trip.
const WRAP_NS: &str = "x";
/// The stream namespace (RFC 6120 §4.8.1), bound to `stream:` in every stream header.
const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

fn parse(data: &[u8], chunk: usize) -> (Vec<StreamEvent>, bool) {
    let mut p = StreamParser::new(Limits::UNAUTHENTICATED);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        if p.feed(c, &mut out).is_err() {
            return (out, false);
        }
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let (chunked, chunked_ok) = parse(data, 97);
    let (whole, whole_ok) = parse(data, data.len());
    if chunked_ok && whole_ok {
        assert_eq!(chunked, whole, "chunking changed the events");
    } else {
        let n = chunked.len().min(whole.len());
        assert_eq!(chunked[..n], whole[..n], "chunking changed the events");
    }
    for ev in &chunked {
        if let StreamEvent::Stanza(e) = ev {
            let mut doc = format!("<s xmlns='{WRAP_NS}' xmlns:stream='{STREAMS_NS}'>").into_bytes();
            doc.extend_from_slice(&e.to_bytes_in(WRAP_NS));
            let mut q = StreamParser::new(Limits::AUTHENTICATED);
            let mut again = Vec::new();
            assert!(q.feed(&doc, &mut again).is_ok(), "re-parse failed: {e}");
            assert_eq!(again.get(1), Some(&StreamEvent::Stanza(e.clone())));
        }
    }
});
