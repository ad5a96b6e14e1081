//! XEP-0077 In-Band Registration: the `jabber:iq:register` payloads, sans I/O.

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;

/// `jabber:iq:register`.
pub const NS: &str = "jabber:iq:register";
/// The stream feature namespace (XEP-0077 §4).
pub const NS_FEATURE: &str = "http://jabber.org/features/iq-register";

/// What a `jabber:iq:register` set asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterSet {
    /// §3.1 registration, or §3.3 password change when authenticated.
    Credentials {
        /// `<username/>`
        username: String,
        /// `<password/>`
        password: String,
    },
    /// §3.2 cancellation: `<remove/>`.
    Remove,
}

/// Parses a set; missing fields are `not-acceptable` (XEP-0077 §3.1 example 7).
pub fn parse_set(query: &Element) -> Result<RegisterSet, StanzaError> {
    if query.has_child("remove", NS) {
        return Ok(RegisterSet::Remove);
    }
    let field = |name: &str| {
        query
            .get_child(name, NS)
            .map(|e| e.text())
            .filter(|t| !t.is_empty())
    };
    match (field("username"), field("password")) {
        (Some(username), Some(password)) => Ok(RegisterSet::Credentials { username, password }),
        _ => Err(StanzaError::new(Condition::NotAcceptable)
            .with_text("username and password are required")),
    }
}

/// §3.1: the fields a new account needs.
pub fn form() -> Element {
    Element::new("query", NS)
        .with_child(Element::new("instructions", NS).with_text("Choose a username and password."))
        .with_child(Element::new("username", NS))
        .with_child(Element::new("password", NS))
}

/// §3.2: what an authenticated get returns: already registered, with the username.
pub fn registered(username: &str) -> Element {
    Element::new("query", NS)
        .with_child(Element::new("registered", NS))
        .with_child(Element::new("username", NS).with_text(username))
        .with_child(Element::new("password", NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(children: &[(&str, &str)]) -> Element {
        let mut e = Element::new("query", NS);
        for (n, t) in children {
            e.push_child(Element::new(*n, NS).with_text(*t));
        }
        e
    }

    #[test]
    fn sets_parse() {
        assert_eq!(
            parse_set(&q(&[("username", "bill"), ("password", "Calliope")])),
            Ok(RegisterSet::Credentials {
                username: "bill".into(),
                password: "Calliope".into()
            })
        );
        assert_eq!(
            parse_set(&Element::new("query", NS).with_child(Element::new("remove", NS))),
            Ok(RegisterSet::Remove)
        );
        for bad in [
            q(&[("username", "bill")]),
            q(&[("password", "x")]),
            q(&[("username", ""), ("password", "x")]),
        ] {
            assert_eq!(
                parse_set(&bad).err().map(|e| e.condition),
                Some(Condition::NotAcceptable)
            );
        }
    }
}
