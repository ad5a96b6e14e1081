//! `roster`: RFC 6121 §2 roster management (Prosody's `mod_roster`): get with versioning
//! (§2.6), set and remove, pushes to interested resources. The subscription state machine and
//! presence live in `canto-core` (`roster.rs`, `presence.rs`), which this module calls.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::roster::{RosterItem, SubType};
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{BareJid, Condition, IqType, StanzaError, ns, parse_jid};
use canto_xml::Element;

use crate::{expect_payload, from_owner};

/// The module.
pub struct Roster;

const SPECS: &[Spec] = &[Spec {
    id: "RFC 6121",
    version: "-",
    title: "XMPP Instant Messaging and Presence",
}];

/// Longest `name` or group name accepted (RFC 6121 §2.3.3 lets the server choose).
const MAX_TEXT: usize = 1023;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Get,
            ns::ROSTER,
            Arc::new(RosterIq),
        )?;
        ctx.hook_iq(
            IqTarget::Account,
            IqType::Set,
            ns::ROSTER,
            Arc::new(RosterIq),
        )?;
        Ok(())
    }
}

struct RosterIq;

fn account(req: &IqRequest<'_>) -> Result<(BareJid, String, String), StanzaError> {
    // RFC 6121 §2.1.5: a roster request addressed to another account is refused; nothing of
    // that roster is revealed.
    if !from_owner(req) {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    let bare = req.from.to_bare();
    let node = bare
        .node()
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let host = bare.domain().as_str().to_string();
    Ok((bare, host, node))
}

#[async_trait]
impl IqHandler for RosterIq {
    /// RFC 6121 §2.2 (get) and §2.3 (set, remove).
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        let (bare, host, node) = account(&req)?;
        let internal = |_| StanzaError::new(Condition::InternalServerError);
        if IqType::of(req.stanza) == Some(IqType::Get) {
            // The session becomes an interested resource (session.txt).
            if let Some(s) = req.origin.session().cloned() {
                s.set_interested();
            }
            let store = req.server.roster_store(&host, &node);
            let ver = store.version().await.map_err(internal)?;
            // §2.6.3: the client's version is current: an empty result, pushes follow.
            if req.payload.attr("ver") == Some(ver.to_string().as_str()) {
                return Ok(None);
            }
            let roster = req.server.roster(&bare).await;
            let mut items: Vec<&RosterItem> = roster.values().collect();
            items.sort_by(|a, b| a.jid.as_str().cmp(b.jid.as_str()));
            let mut q = Element::new("query", ns::ROSTER);
            // §2.6.2: include the version when the client speaks versioning.
            if req.payload.attr("ver").is_some() {
                q.set_attr("ver", ver.to_string());
            }
            for i in items {
                q.push_child(i.to_element());
            }
            return Ok(Some(q));
        }
        set(&req, &bare).await.map(|()| None)
    }
}

/// RFC 6121 §2.3 (add or update) and §2.5 (remove).
async fn set(req: &IqRequest<'_>, bare: &BareJid) -> Result<(), StanzaError> {
    let mut items = req.payload.children().filter(|c| c.is("item", ns::ROSTER));
    let item = items
        .next()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest).with_text("no item"))?;
    // §2.3.3: exactly one item per set.
    if items.next().is_some() {
        return Err(StanzaError::new(Condition::BadRequest).with_text("one item per roster set"));
    }
    let jid = item
        .attr("jid")
        .ok_or_else(|| StanzaError::new(Condition::BadRequest).with_text("item without jid"))
        .and_then(parse_jid)?
        .to_bare();
    let server = req.server;
    let current = server.roster(bare).await.get(&jid).cloned();
    if item.attr("subscription") == Some("remove") {
        // §2.5.3: removing an item that does not exist.
        let Some(existing) = current else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        // §2.5.2: cancel both directions of the subscription and any pending request.
        let presence = |t: &str| {
            Element::new("presence", ns::CLIENT)
                .with_attr("type", t)
                .with_attr("to", jid.to_string())
        };
        if existing.subscription.has_from() || existing_pending(server, bare, &jid).await {
            server
                .outbound_subscription(bare, &jid, SubType::Unsubscribed, presence("unsubscribed"))
                .await;
        }
        if existing.subscription.has_to() || existing.ask {
            server
                .outbound_subscription(bare, &jid, SubType::Unsubscribe, presence("unsubscribe"))
                .await;
        }
        let _guard = server.account_lock(bare).await;
        server.set_roster_item(bare, &jid, None).await;
        return Ok(());
    }
    // Other `subscription` values in a set are ignored: only the server changes subscriptions
    // (RFC 6121 §2.1.2.5).
    let name = item
        .attr("name")
        .map(str::to_string)
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > MAX_TEXT) {
        return Err(StanzaError::new(Condition::NotAcceptable).with_text("name too long"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let text = g.text();
        // §2.3.3: empty or oversized group names are not-acceptable, duplicates bad-request.
        if text.is_empty() || text.len() > MAX_TEXT {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("invalid group name"));
        }
        if groups.contains(&text) {
            return Err(StanzaError::new(Condition::BadRequest).with_text("duplicate group"));
        }
        groups.push(text);
    }
    // Read again under the account's lock, so a subscription change that landed since the
    // read above is kept (the item's subscription state is the server's, §2.1.2.5).
    let _guard = server.account_lock(bare).await;
    let current = server.roster(bare).await.get(&jid).cloned();
    if current.is_none() {
        let max = server.config().roster.max_items;
        if server.roster(bare).await.len() >= max {
            return Err(StanzaError::new(Condition::NotAllowed).with_text("the roster is full"));
        }
    }
    let mut updated = current.unwrap_or_else(|| RosterItem::new(jid.clone()));
    updated.name = name;
    updated.groups = groups;
    server.set_roster_item(bare, &jid, Some(&updated)).await;
    Ok(())
}

async fn existing_pending(server: &canto_core::Server, bare: &BareJid, contact: &BareJid) -> bool {
    let (Some(node), host) = (bare.node(), bare.domain().as_str()) else {
        return false;
    };
    server
        .roster_store(host, node.as_str())
        .is_pending(contact)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, result_xml};

    fn item_set(jid: &str) -> Element {
        Element::new("query", ns::ROSTER)
            .with_child(Element::new("item", ns::ROSTER).with_attr("jid", jid))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_adds_never_exceed_the_roster_cap() {
        // The cap check and the write are one step under the account's lock: forty adds at
        // once on a roster capped at ten leave exactly ten items, the rest not-allowed.
        let mut config = canto_core::Config {
            hosts: vec![crate::test_support::HOST.into()],
            modules: vec!["roster".into()],
            ..Default::default()
        };
        config.roster.max_items = 10;
        // SQLite, whose reads and writes really wait: the memory backend never yields, so it
        // would hide the race this test is about.
        let dir = std::env::temp_dir().join(format!("canto-roster-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = canto_storage::Storage::open(&canto_storage::Backend::Sqlite {
            path: dir.join("db.sqlite"),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let creds = canto_proto::sasl::Credentials::from_password("pw", 4096);
        let _ = storage
            .accounts
            .create("example.test", "alice", &creds)
            .await;
        let s = canto_core::Server::new(config, storage, &crate::all())
            .unwrap_or_else(|e| panic!("{e}"));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let r = call(
                        &s,
                        IqTarget::Account,
                        canto_stanza::IqType::Set,
                        "alice@example.test/a",
                        "alice@example.test",
                        item_set(&format!("c{i}@example.org")),
                    );
                    result_xml(r.await)
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.ok().as_deref() {
                Some("empty result") => ok += 1,
                Some("error not-allowed") => {}
                other => panic!("{other:?}"),
            }
        }
        let alice = BareJid::new("alice@example.test").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok, 10);
        assert_eq!(s.roster(&alice).await.len(), 10);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
