//! JID parsing and normalization: never panics; a parsed JID re-parses to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(j) = canto_stanza::parse_jid(s) {
            let again = canto_stanza::parse_jid(&j.to_string());
            assert_eq!(again.ok(), Some(j));
        }
    }
});
