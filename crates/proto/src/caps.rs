//! XEP-0115 Entity Capabilities: the verification string of a disco#info result, so the server
//! can advertise its capabilities in stream features (XEP-0115 §6.3).

use base64::Engine;
use sha1::Digest;

/// One disco identity: category, type, xml:lang, name.
pub type Identity<'a> = (&'a str, &'a str, &'a str, &'a str);

/// XEP-0115 §5.1: the `ver` string (SHA-1, base64) of identities and features. (No extended
/// service discovery forms: the server has none.)
pub fn ver(identities: &[Identity<'_>], features: &[&str]) -> String {
    let mut ids: Vec<String> = identities
        .iter()
        .map(|(c, t, l, n)| format!("{c}/{t}/{l}/{n}"))
        .collect();
    ids.sort();
    let mut feats: Vec<&str> = features.to_vec();
    feats.sort_unstable();
    feats.dedup();
    let mut s = String::new();
    for i in &ids {
        s.push_str(i);
        s.push('<');
    }
    for f in &feats {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// The `node` Canto advertises.
pub const NODE: &str = "https://canto.invalid/caps";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0115_simple_example() {
        // XEP-0115 §5.2: Exodus 0.9.1.
        let v = ver(
            &[("client", "pc", "", "Exodus 0.9.1")],
            &[
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ],
        );
        assert_eq!(v, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn order_does_not_matter() {
        let a = ver(&[("server", "im", "", "Canto")], &["b", "a"]);
        let b = ver(&[("server", "im", "", "Canto")], &["a", "b", "a"]);
        assert_eq!(a, b);
        assert_ne!(a, ver(&[("server", "im", "", "Canto")], &["a"]));
    }
}
