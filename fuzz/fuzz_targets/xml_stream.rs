//! The XMPP stream parser: arbitrary bytes must never panic, hang or allocate without bound,
//! and every stanza it yields must serialize and parse back to the same tree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    canto_xml::fuzz_stream(data);
});
