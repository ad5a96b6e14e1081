//! XEP-0115 Entity Capabilities: the verification string of a disco#info result, so the server
//! can advertise its capabilities in stream features (XEP-0115 §6.3).

use base64::Engine;
use sha1::Digest;

/// One disco identity: category, type, xml:lang, name.
pub type Identity<'a> = (&'a str, &'a str, &'a str, &'a str);

/// An extended disco#info form (XEP-0128): FORM_TYPE and the other fields with their values.
pub type Form<'a> = (&'a str, Vec<(&'a str, Vec<&'a str>)>);

/// XEP-0115 §5.1: the `ver` string (SHA-1, base64) of identities and features.
pub fn ver(identities: &[Identity<'_>], features: &[&str]) -> String {
    ver_with_forms(identities, features, &[])
}

/// XEP-0115 §5.1 including extended forms (step 6).
pub fn ver_with_forms(
    identities: &[Identity<'_>],
    features: &[&str],
    forms: &[Form<'_>],
) -> String {
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
    let mut forms: Vec<&Form<'_>> = forms.iter().collect();
    forms.sort_by(|a, b| a.0.cmp(b.0));
    for (form_type, fields) in forms {
        s.push_str(form_type);
        s.push('<');
        let mut fields: Vec<&(&str, Vec<&str>)> = fields.iter().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            let mut values = values.clone();
            values.sort_unstable();
            for v in values {
                s.push_str(v);
                s.push('<');
            }
        }
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
    fn xep0115_complex_example_with_a_form() {
        // XEP-0115 §5.3 (Psi 0.11, two identities and a software-version form).
        let v = ver_with_forms(
            &[
                ("client", "pc", "en", "Psi 0.11"),
                ("client", "pc", "el", "Ψ 0.11"),
            ],
            &[
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ],
            &[(
                "urn:xmpp:dataforms:softwareinfo",
                vec![
                    ("ip_version", vec!["ipv4", "ipv6"]),
                    ("os", vec!["Mac"]),
                    ("os_version", vec!["10.5.1"]),
                    ("software", vec!["Psi"]),
                    ("software_version", vec!["0.11"]),
                ],
            )],
        );
        assert_eq!(v, "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    #[test]
    fn order_does_not_matter() {
        let a = ver(&[("server", "im", "", "Canto")], &["b", "a"]);
        let b = ver(&[("server", "im", "", "Canto")], &["a", "b", "a"]);
        assert_eq!(a, b);
        assert_ne!(a, ver(&[("server", "im", "", "Canto")], &["a"]));
    }
}
