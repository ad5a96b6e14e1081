//! Message Carbons (XEP-0280, `urn:xmpp:carbons:2`): copies of a user's one-to-one messages go
//! to the user's other resources that enabled carbons. The router calls [`Server::carbon_sent`]
//! and [`Server::carbon_received`]; the `carbons` module answers enable/disable.

use std::sync::Arc;

use canto_stanza::{BareJid, MessageType, ns};
use canto_xml::Element;

use crate::server::Server;
use crate::session::{SessionHandle, SessionId};

/// The carbons namespace.
pub const NS: &str = "urn:xmpp:carbons:2";
/// XEP-0297 forwarding.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0359 stanza ids.
const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0334 processing hints.
pub const NS_HINTS: &str = "urn:xmpp:hints";

/// XEP-0280 §6: which messages are copied: `chat`; `normal` with a body; errors (bounces of
/// either); never `groupchat` or `headline`; never with `<private/>` (§7) or a XEP-0334
/// `<no-copy/>` hint; never a carbon itself.
pub fn eligible(el: &Element) -> bool {
    if el.has_child("private", NS) || el.has_child("no-copy", NS_HINTS) {
        return false;
    }
    if el.has_child("sent", NS) || el.has_child("received", NS) {
        return false;
    }
    match MessageType::of(el) {
        MessageType::Chat | MessageType::Error => true,
        MessageType::Normal => el.has_child("body", ns::CLIENT),
        MessageType::Groupchat | MessageType::Headline => false,
    }
}

fn wrap(direction: &str, user: &BareJid, to: &SessionHandle, original: &Element) -> Element {
    // XEP-0313 §3 ("Communicating the archive ID"): no XEP-0359 <stanza-id/> of an archive
    // the receiving resource may not query — a sent copy would otherwise carry the id the
    // recipient's archive gave the message.
    let own = user.to_string();
    let mut original = original.clone();
    original.remove_children(|c| c.is("stanza-id", NS_SID) && c.attr("by") != Some(own.as_str()));
    // §7.3/§8.3: the wrapper is from the user's bare JID to the receiving resource.
    Element::new("message", ns::CLIENT)
        .with_attr("from", user.to_string())
        .with_attr("to", to.jid().to_string())
        .with_attr("type", original.attr("type").unwrap_or("normal"))
        .with_child(
            Element::new(direction, NS)
                .with_child(Element::new("forwarded", NS_FORWARD).with_child(original)),
        )
}

impl Server {
    fn copy_to(&self, direction: &str, user: &BareJid, el: &Element, skip: &[SessionId]) {
        if !eligible(el) {
            return;
        }
        for s in self.sessions.resources(user) {
            if s.carbons_enabled() && !skip.contains(&s.id()) {
                let _ = s.deliver(Arc::new(wrap(direction, user, &s, el)));
            }
        }
    }

    /// §7: a message a user's session sent: `<sent/>` copies to the user's other
    /// carbons-enabled resources.
    pub fn carbon_sent(&self, from: &SessionHandle, el: &Element) {
        self.copy_to("sent", &from.jid().to_bare(), el, &[from.id()]);
    }

    /// §8: a message delivered to `delivered_to` of local account `user`: `<received/>` copies
    /// to the user's other carbons-enabled resources.
    pub fn carbon_received(&self, user: &BareJid, el: &Element, delivered_to: &[SessionId]) {
        self.copy_to("received", user, el, delivered_to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: Option<&str>, body: bool) -> Element {
        let mut m = Element::new("message", ns::CLIENT);
        if let Some(t) = t {
            m.set_attr("type", t);
        }
        if body {
            m.push_child(Element::new("body", ns::CLIENT).with_text("x"));
        }
        m
    }

    #[test]
    fn eligibility_follows_section_6() {
        assert!(eligible(&msg(Some("chat"), false)));
        assert!(eligible(&msg(Some("chat"), true)));
        assert!(eligible(&msg(None, true)));
        assert!(!eligible(&msg(None, false)));
        assert!(eligible(&msg(Some("error"), false)));
        assert!(!eligible(&msg(Some("groupchat"), true)));
        assert!(!eligible(&msg(Some("headline"), true)));
        assert!(!eligible(
            &msg(Some("chat"), true).with_child(Element::new("private", NS))
        ));
        assert!(!eligible(
            &msg(Some("chat"), true).with_child(Element::new("no-copy", NS_HINTS))
        ));
        assert!(!eligible(
            &msg(Some("chat"), false).with_child(Element::new("received", NS))
        ));
    }
}
