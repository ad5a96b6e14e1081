//! `blocking`: XEP-0191 Blocking Command (Prosody's `mod_blocklist`): the IQ protocol. The
//! blocklist itself and its enforcement on every stanza live in `canto-core` (`blocking.rs`,
//! the router), because the router consults it for each stanza.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::blocking::{Blocklist, NS, matches};
use canto_core::module::{ModuleConfig, Section, SectionInfo};
use canto_core::presence::RosterMap;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{BareJid, Condition, IqType, Jid, StanzaError, parse_jid};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use crate::from_owner;

/// The module.
pub struct Blocking;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0191",
    version: "1.3",
    title: "Blocking Command",
}];

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0191 §3.1: discovered as the `urn:xmpp:blocking` feature.
        ctx.add_feature(NS);
        let iq = Arc::new(BlockIq {
            config: ctx.section::<BlockingConfig>()?,
        });
        ctx.hook_iq(IqTarget::Account, IqType::Get, NS, iq.clone())?;
        ctx.hook_iq(IqTarget::Account, IqType::Set, NS, iq)?;
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![BlockingConfig::info()]
    }
}

/// `[blocking]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockingConfig {
    /// Items per blocklist; a block that would go beyond is `not-acceptable`.
    pub max_items: usize,
}

impl Default for BlockingConfig {
    fn default() -> Self {
        BlockingConfig { max_items: 1000 }
    }
}

impl ModuleConfig for BlockingConfig {
    const SECTION: &'static str = "blocking";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("", "Blocking command (XEP-0191), module blocking."),
        (
            "max_items",
            "Items per blocklist; a block that would go beyond is not-acceptable.",
        ),
    ];
}

struct BlockIq {
    config: Section<BlockingConfig>,
}

fn items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    payload
        .children()
        .filter(|c| c.is("item", NS))
        .map(|i| {
            let jid = i.attr("jid").ok_or_else(|| {
                StanzaError::new(Condition::BadRequest).with_text("item without jid")
            })?;
            // XEP-0191 §3.3: a JID that cannot be parsed is jid-malformed.
            Ok(parse_jid(jid)?.to_string())
        })
        .collect()
}

/// The roster's contacts allowed to see the user's presence (`from` or `both`).
fn presence_contacts(roster: &RosterMap) -> impl Iterator<Item = Jid> + '_ {
    roster
        .iter()
        .filter(|(_, item)| item.subscription.has_from())
        .map(|(contact, _)| Jid::from(contact.clone()))
}

/// The items that are full JIDs of roster contacts allowed to see the user's presence
/// (XEP-0191 §3.3/§3.4 "only if the contact is allowed to receive presence notifications").
fn full_jid_contacts(items: &[String], roster: &RosterMap) -> Vec<Jid> {
    items
        .iter()
        .filter_map(|j| parse_jid(j).ok())
        .filter(|j| j.node().is_some() && j.resource().is_some())
        .filter(|j| {
            roster
                .get(&j.to_bare())
                .is_some_and(|item| item.subscription.has_from())
        })
        .collect()
}

fn list_element(name: &str, jids: &[String]) -> Element {
    let mut e = Element::new(name, NS);
    for j in jids {
        e.push_child(Element::new("item", NS).with_attr("jid", j.clone()));
    }
    e
}

#[async_trait]
impl IqHandler for BlockIq {
    /// XEP-0191 §3.2 (get the blocklist), §3.3 (block), §3.4 (unblock), §3.5 (unblock all).
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        if !from_owner(&req) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let server = req.server;
        let user: BareJid = req.from.to_bare();
        // One read-modify-write at a time per account: two block requests at once must not
        // lose one of them.
        let _guard = server.account_lock(&user).await;
        let internal = |_| StanzaError::new(Condition::InternalServerError);
        // A list that cannot be read is not answered (nor overwritten by a change to it).
        let current: Blocklist = (*server.try_blocklist(&user).await.map_err(internal)?).clone();
        match (IqType::of(req.stanza), req.payload.name()) {
            (Some(IqType::Get), "blocklist") => {
                // §3.2: the resource now receives pushes.
                if let Some(s) = req.origin.session().cloned() {
                    s.set_wants_blocklist();
                }
                let all: Vec<String> = current.into_iter().collect();
                Ok(Some(list_element("blocklist", &all)))
            }
            (Some(IqType::Set), "block") => {
                let jids = items(req.payload)?;
                // §3.3: a block without items is bad-request.
                if jids.is_empty() {
                    return Err(
                        StanzaError::new(Condition::BadRequest).with_text("nothing to block")
                    );
                }
                let mut next = current.clone();
                next.extend(jids.iter().cloned());
                // `blocking.max_items`; XEP-0191 names no error for a full list: not-acceptable
                // (RFC 6120 §8.3.3.9, type modify: unblocking makes room), not the transient
                // resource-constraint (§8.3.3.18, type wait). A list already over a lowered cap
                // may still be re-sent items it has.
                let max = self.config.get().max_items;
                if next.len() > max && next.len() > current.len() {
                    return Err(StanzaError::new(Condition::NotAcceptable)
                        .with_text(format!("a blocklist holds at most {max} items")));
                }
                server
                    .set_blocklist(&user, next.clone())
                    .await
                    .map_err(internal)?;
                // §3.3: contacts that may see the user's presence and are blocked now (and were
                // not before) get unavailable from each available resource — "but only if the
                // contact is allowed to receive presence notifications": a stranger learns
                // nothing, not even which resources are online. A full-JID item blocks only
                // that resource of a contact (unless a wider item now covers the contact).
                let roster = server.roster(&user).await;
                let newly = |j: &Jid| !matches(&current, j) && matches(&next, j);
                let mut to: Vec<Jid> = presence_contacts(&roster).filter(|c| newly(c)).collect();
                to.extend(
                    full_jid_contacts(&jids, &roster)
                        .into_iter()
                        .filter(|f| newly(f) && !matches(&next, &Jid::from(f.to_bare()))),
                );
                for j in &to {
                    server.send_unavailable(&user, j);
                }
                // Entities that had directed presence from a resource are allowed presence too:
                // they get unavailable from it (RFC 6121 §4.6.3 would send it at logout; a
                // blocked one must see the user offline now, XEP-0191 §3.3).
                server.withdraw_directed(&user, newly, &to);
                server.blocklist_push(&user, list_element("block", &jids));
                Ok(None)
            }
            (Some(IqType::Set), "unblock") => {
                let jids = items(req.payload)?;
                // §3.5: no items means unblock everyone.
                let removed: Vec<String> = if jids.is_empty() {
                    current.iter().cloned().collect()
                } else {
                    jids.iter()
                        .filter(|j| current.contains(*j))
                        .cloned()
                        .collect()
                };
                let next: Blocklist = current
                    .iter()
                    .filter(|j| !removed.contains(j))
                    .cloned()
                    .collect();
                server
                    .set_blocklist(&user, next.clone())
                    .await
                    .map_err(internal)?;
                // §3.4: contacts allowed to see the user get current presence again — those the
                // old list covered and the new one does not (a domain item, for instance, covers
                // every contact there; one still covered by another item stays in the dark). A
                // full-JID item frees that resource alone (unless its contact as a whole was
                // freed too).
                let roster = server.roster(&user).await;
                let freed = |j: &Jid| matches(&current, j) && !matches(&next, j);
                let mut to: Vec<Jid> = presence_contacts(&roster).filter(|c| freed(c)).collect();
                to.extend(
                    full_jid_contacts(&removed, &roster)
                        .into_iter()
                        .filter(|f| freed(f) && !freed(&Jid::from(f.to_bare()))),
                );
                for j in &to {
                    server.send_current_presence(&user, j);
                }
                server.blocklist_push(
                    &user,
                    list_element("unblock", if jids.is_empty() { &[] } else { &jids }),
                );
                Ok(None)
            }
            _ => Err(StanzaError::new(Condition::BadRequest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, get, result_xml, server};

    const ALICE: &str = "alice@example.test/a";
    const BARE: &str = "alice@example.test";

    fn block(jids: &[&str]) -> Element {
        let mut e = Element::new("block", NS);
        for j in jids {
            e.push_child(Element::new("item", NS).with_attr("jid", *j));
        }
        e
    }

    #[tokio::test]
    async fn block_unblock_and_unblock_all() {
        let s = server(&["blocking"]).await;
        let r = call(
            &s,
            IqTarget::Account,
            IqType::Set,
            ALICE,
            BARE,
            block(&["Romeo@Montague.lit", "capulet.lit"]),
        )
        .await;
        assert_eq!(result_xml(r), "empty result");
        let list = result_xml(
            get(
                &s,
                IqTarget::Account,
                ALICE,
                BARE,
                Element::new("blocklist", NS),
            )
            .await,
        );
        assert_eq!(
            list,
            "<blocklist xmlns='urn:xmpp:blocking'><item jid='capulet.lit'/><item jid='romeo@montague.lit'/></blocklist>"
        );
        let mut unblock = Element::new("unblock", NS);
        unblock.push_child(Element::new("item", NS).with_attr("jid", "capulet.lit"));
        assert_eq!(
            result_xml(call(&s, IqTarget::Account, IqType::Set, ALICE, BARE, unblock).await),
            "empty result"
        );
        let list = result_xml(
            get(
                &s,
                IqTarget::Account,
                ALICE,
                BARE,
                Element::new("blocklist", NS),
            )
            .await,
        );
        assert_eq!(
            list,
            "<blocklist xmlns='urn:xmpp:blocking'><item jid='romeo@montague.lit'/></blocklist>"
        );
        let all = Element::new("unblock", NS);
        assert_eq!(
            result_xml(call(&s, IqTarget::Account, IqType::Set, ALICE, BARE, all).await),
            "empty result"
        );
        let list = result_xml(
            get(
                &s,
                IqTarget::Account,
                ALICE,
                BARE,
                Element::new("blocklist", NS),
            )
            .await,
        );
        assert_eq!(list, "<blocklist xmlns='urn:xmpp:blocking'/>");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_blocks_of_one_account_all_land() {
        // Each request reads the list, adds to it and writes it back: without the account's
        // lock, two at once would each write a list without the other's item.
        let s = server(&["blocking"]).await;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let jid = format!("user{i}@example.org");
                    let r = call(
                        &s,
                        IqTarget::Account,
                        IqType::Set,
                        ALICE,
                        BARE,
                        block(&[&jid]),
                    );
                    result_xml(r.await)
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.ok().as_deref(), Some("empty result"));
        }
        let list = result_xml(
            get(
                &s,
                IqTarget::Account,
                ALICE,
                BARE,
                Element::new("blocklist", NS),
            )
            .await,
        );
        assert_eq!(list.matches("<item ").count(), 40, "{list}");
    }

    async fn blocklist(s: &Arc<canto_core::Server>) -> String {
        let list = Element::new("blocklist", NS);
        result_xml(get(s, IqTarget::Account, ALICE, BARE, list).await)
    }

    async fn set(s: &Arc<canto_core::Server>, jids: &[&str]) -> String {
        result_xml(call(s, IqTarget::Account, IqType::Set, ALICE, BARE, block(jids)).await)
    }

    #[tokio::test]
    async fn a_full_blocklist_refuses_new_items_with_not_acceptable() {
        let mut config = canto_core::Config {
            hosts: vec![crate::test_support::HOST.into()],
            modules: vec!["blocking".into()],
            ..Default::default()
        };
        config
            .set_section("blocking", "max_items = 2")
            .unwrap_or_else(|e| panic!("{e}"));
        let s = crate::test_support::server_with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set(&s, &["a@x.lit", "b@x.lit"]).await, "empty result");
        // One more would make three: refused, and nothing of it is stored.
        assert_eq!(
            set(&s, &["c@x.lit", "a@x.lit"]).await,
            "error not-acceptable"
        );
        // Items already there may be sent again.
        assert_eq!(set(&s, &["a@x.lit"]).await, "empty result");
        assert_eq!(
            blocklist(&s).await,
            "<blocklist xmlns='urn:xmpp:blocking'><item jid='a@x.lit'/><item jid='b@x.lit'/></blocklist>"
        );
    }

    #[tokio::test]
    async fn an_unreadable_blocklist_fails_closed_and_is_not_overwritten() {
        let mut storage = canto_storage::Storage::memory();
        let kv = canto_storage::faults::FailingKv::new(storage.kv.clone());
        storage.kv = kv.clone();
        let config = canto_core::Config {
            hosts: vec![crate::test_support::HOST.into()],
            modules: vec!["blocking".into()],
            ..Default::default()
        };
        let s = crate::test_support::server_with_storage(config, storage)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set(&s, &["romeo@montague.lit"]).await, "empty result");
        let alice = canto_stanza::BareJid::new(BARE).unwrap_or_else(|e| panic!("{e}"));
        let juliet = parse_jid("juliet@capulet.lit").unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.blocks(&alice, &juliet).await);
        kv.fail("blocklist", Some("alice"));
        // Everyone counts as blocked while the list cannot be read …
        assert!(s.blocks(&alice, &juliet).await);
        // … and a change, which would have to start from the unread list, is refused.
        assert_eq!(
            set(&s, &["tybalt@capulet.lit"]).await,
            "error internal-server-error"
        );
        assert_eq!(blocklist(&s).await, "error internal-server-error");
        kv.heal();
        assert!(!s.blocks(&alice, &juliet).await);
        assert_eq!(
            blocklist(&s).await,
            "<blocklist xmlns='urn:xmpp:blocking'><item jid='romeo@montague.lit'/></blocklist>"
        );
    }

    #[tokio::test]
    async fn errors() {
        let s = server(&["blocking"]).await;
        assert_eq!(
            result_xml(call(&s, IqTarget::Account, IqType::Set, ALICE, BARE, block(&[])).await),
            "error bad-request"
        );
        assert_eq!(
            result_xml(
                call(
                    &s,
                    IqTarget::Account,
                    IqType::Set,
                    ALICE,
                    BARE,
                    block(&["@x"])
                )
                .await
            ),
            "error jid-malformed"
        );
        let by_bob = get(
            &s,
            IqTarget::Account,
            "bob@example.test/b",
            BARE,
            Element::new("blocklist", NS),
        )
        .await;
        assert_eq!(result_xml(by_bob), "error forbidden");
    }
}
