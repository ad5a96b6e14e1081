//! Canto's XML layer: a restricted, budgeted, incremental XMPP stream parser on `rxml`, a small
//! element tree and its serializer. No I/O happens here.
#![forbid(unsafe_code)]

mod element;
mod serialize;
mod stream;

pub use element::{Element, Node};
pub use serialize::{escape, escape_into};
pub use stream::{LimitKind, Limits, StreamEvent, StreamParser, XmlError};

/// Feeds arbitrary bytes to a stream parser; for fuzzing. Never panics.
#[doc(hidden)]
pub fn fuzz_stream(data: &[u8]) {
    let mut p = StreamParser::new(Limits::UNAUTHENTICATED);
    let mut out = Vec::new();
    for chunk in data.chunks(97) {
        if p.feed(chunk, &mut out).is_err() {
            break;
        }
    }
    for ev in &out {
        if let StreamEvent::Stanza(e) = ev {
            let bytes = e.to_bytes();
            // What we serialize must parse back to the same tree.
            let mut q = StreamParser::new(Limits::AUTHENTICATED);
            let mut again = Vec::new();
            let mut doc = b"<s xmlns='x'>".to_vec();
            doc.extend_from_slice(&bytes);
            assert!(q.feed(&doc, &mut again).is_ok(), "re-parse failed");
            assert_eq!(again.get(1), Some(&StreamEvent::Stanza(e.clone())));
        }
    }
}
