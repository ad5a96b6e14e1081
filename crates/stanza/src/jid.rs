//! JIDs (RFC 7622), normalized with stringprep like Prosody (the `jid` crate).

pub use jid::{
    BareJid, DomainPart, DomainRef, FullJid, Jid, NodePart, NodeRef, ResourcePart, ResourceRef,
};

use crate::error::{Condition, StanzaError};

/// Parses and normalizes a JID from the wire; a bad one is `jid-malformed` (RFC 6120 §8.3.3.8).
pub fn parse_jid(s: &str) -> Result<Jid, StanzaError> {
    // RFC 7622 §3.1: the whole JID is at most 3071 bytes; each part at most 1023 (the crate
    // checks the node and resource, we check the domain and its labels).
    if s.len() > 3071 {
        return Err(StanzaError::new(Condition::JidMalformed));
    }
    let jid = Jid::new(s).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
    // Normalization must be idempotent, or two spellings would name two entities. The
    // stringprep tables check for code points unassigned in Unicode 3.2 after today's NFKC,
    // so some (U+03F9) normalize differently a second time: refuse those (RFC 7622 §3).
    if Jid::new(jid.as_str()).ok().as_ref() != Some(&jid) {
        return Err(StanzaError::new(Condition::JidMalformed));
    }
    let domain = jid.domain().as_str();
    if domain.len() > 1023 || domain.split('.').any(|l| l.len() > 63) {
        return Err(StanzaError::new(Condition::JidMalformed));
    }
    Ok(jid)
}

/// Normalizes a domain name (nameprep, lowercase). `None` if it is not a valid domain.
pub fn normalize_domain(s: &str) -> Option<String> {
    let jid = parse_jid(s).ok()?;
    if jid.node().is_some() || jid.resource().is_some() {
        return None;
    }
    Some(jid.domain().as_str().to_string())
}

/// Normalizes a localpart with nodeprep. `None` if it is not valid.
pub fn normalize_node(s: &str) -> Option<String> {
    let once = NodePart::new(s).ok()?.as_str().to_string();
    let twice = NodePart::new(&once).ok()?.as_str().to_string();
    (once == twice).then_some(once)
}

/// Normalizes a resource with resourceprep. `None` if it is not valid.
pub fn normalize_resource(s: &str) -> Option<String> {
    let once = ResourcePart::new(s).ok()?.as_str().to_string();
    let twice = ResourcePart::new(&once).ok()?.as_str().to_string();
    (once == twice).then_some(once)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_width_fold_to_one_account() {
        // RFC 7622 §3.3 (localpart case- and width-mapped), §3.2 (domainpart case-folded):
        // these all name juliet@example.test
        let a = parse_jid("juliet@example.test").ok();
        assert_eq!(parse_jid("Juliet@Example.Test").ok(), a);
        assert_eq!(parse_jid("ＪＵＬＩＥＴ@example.test").ok(), a);
        // Resources keep their case.
        assert_ne!(parse_jid("a@b/Balcony").ok(), parse_jid("a@b/balcony").ok());
    }

    #[test]
    fn malformed_jids_are_jid_malformed() {
        let long = "a".repeat(1024);
        for bad in [
            "@example.test".to_string(),
            "a b@example.test".into(),
            "a\"b@example.test".into(),
            "a:b@example.test".into(),
            format!("{long}@example.test"),
            format!("a@example.test/{long}"),
            format!("a@{}.test", "x".repeat(64)),
            "\u{05D0}a1@example.test".into(),
            "a@b/".into(),
        ] {
            let e = parse_jid(&bad).err();
            assert_eq!(
                e.map(|e| e.condition),
                Some(Condition::JidMalformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn normalization_that_is_not_idempotent_is_refused() {
        // fuzz/artifacts-min/jid-lunate-sigma-*: U+03F9 normalizes to Σ, then to σ.
        for s in ["\u{03F9}x@localhost", "x@\u{03F9}.localhost"] {
            assert_eq!(
                parse_jid(s).err().map(|e| e.condition),
                Some(Condition::JidMalformed),
                "{s:?}"
            );
        }
        assert_eq!(normalize_node("\u{03F9}x"), None);
        assert!(parse_jid("σx@localhost").is_ok());
    }

    #[test]
    fn domain_and_node_normalization() {
        assert_eq!(
            normalize_domain("Example.TEST").as_deref(),
            Some("example.test")
        );
        assert_eq!(normalize_domain("a@b"), None);
        assert_eq!(normalize_node("Alice").as_deref(), Some("alice"));
        assert_eq!(normalize_node("a@b"), None);
        assert_eq!(normalize_resource("Phone").as_deref(), Some("Phone"));
        assert_eq!(normalize_resource("a\u{0}b"), None);
    }
}
