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
/// XEP-0334 processing hints.
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0359 unique and stable stanza ids.
/// XEP-0359 stanza ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";

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
    // §7.3/§8.3: the wrapper is from the user's bare JID to the receiving resource.
    Element::new("message", ns::CLIENT)
        .with_attr("from", user.to_string())
        .with_attr("to", to.jid().to_string())
        .with_attr("type", original.attr("type").unwrap_or("normal"))
        .with_child(
            Element::new(direction, NS)
                .with_child(Element::new("forwarded", NS_FORWARD).with_child(original.clone())),
        )
}

impl Server {
    fn copy_to(&self, direction: &str, user: &BareJid, el: &Element, skip: &[SessionId]) {
        if !eligible(el) {
            return;
        }
        // XEP-0313 §3 ("Communicating the archive ID"): no XEP-0359 <stanza-id/> of an
        // archive this user may not query — a `<sent/>` copy between local accounts would
        // otherwise carry the id the recipient's archive gave the message.
        let own = user.to_string();
        let foreign = |c: &Element| c.is("stanza-id", NS_SID) && c.attr("by") != Some(own.as_str());
        let stripped;
        let el = if el.children().any(foreign) {
            let mut c = el.clone();
            c.remove_children(foreign);
            stripped = c;
            &stripped
        } else {
            el
        };
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
    fn copies_carry_only_the_users_own_archive_ids() {
        let config = crate::Config {
            modules: Vec::new(),
            ..crate::Config::default()
        };
        let s = Server::new(config, canto_storage::Storage::memory(), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let jid =
            canto_stanza::FullJid::new("alice@localhost/r2").unwrap_or_else(|e| panic!("{e}"));
        let h = s
            .sessions
            .bind(1, jid, (tx, 4), crate::session::Closer::new(), 5)
            .unwrap_or_else(|e| panic!("{e}"))
            .handle;
        h.set_carbons(true);
        let sid = |by: &str| {
            Element::new("stanza-id", NS_SID)
                .with_attr("id", "x")
                .with_attr("by", by)
        };
        let m = msg(Some("chat"), true)
            .with_child(sid("bob@localhost"))
            .with_child(sid("alice@localhost"));
        let alice = BareJid::new("alice@localhost").unwrap_or_else(|e| panic!("{e}"));
        s.carbon_received(&alice, &m, &[]);
        let Ok(crate::Outbound::Stanza(copy)) = rx.try_recv() else {
            panic!("no copy");
        };
        let inner = copy
            .children()
            .next()
            .and_then(|r| r.children().next())
            .and_then(|f| f.children().next())
            .unwrap_or_else(|| panic!("{copy}"));
        let ids: Vec<_> = inner
            .children()
            .filter(|c| c.name() == "stanza-id")
            .filter_map(|c| c.attr("by"))
            .collect();
        assert_eq!(ids, ["alice@localhost"], "{copy}");
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
