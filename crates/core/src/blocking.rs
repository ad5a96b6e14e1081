//! Blocklists (XEP-0191 Blocking Command): one per account in the key-value store `blocklist`,
//! cached while the account is online like its roster. The router consults it for every stanza
//! into and out of a local account; the `blocking` module answers the IQ protocol.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use canto_stanza::{BareJid, Jid, ns};
use canto_xml::Element;
use tracing::warn;

use crate::server::Server;

const STORE: &str = "blocklist";

/// The `urn:xmpp:blocking` namespace.
pub const NS: &str = "urn:xmpp:blocking";
/// Application error condition for stanzas to a blocked contact (XEP-0191 §3.3).
pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";

/// One account's blocked JIDs (normalized strings, sorted).
pub type Blocklist = BTreeSet<String>;

/// Cached blocklists of online accounts.
#[derive(Default)]
pub struct BlockCache(RwLock<HashMap<BareJid, Arc<Blocklist>>>);

/// Whether `jid` is covered by a blocklist item (XEP-0191 "JID Matching", after XEP-0016
/// §2.1: full JID, bare JID, domain/resource, domain — and a domain item also covers "any
/// address containing a subdomain").
pub fn matches(list: &Blocklist, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    let domain = jid.domain().as_str();
    if list.contains(jid.as_str()) || list.contains(domain) {
        return true;
    }
    // Parent domains: `muc.capulet.lit` is covered by a `capulet.lit` item.
    let mut parent = domain;
    while let Some((_, rest)) = parent.split_once('.') {
        if list.contains(rest) {
            return true;
        }
        parent = rest;
    }
    if jid.node().is_some() && list.contains(jid.to_bare().as_str()) {
        return true;
    }
    // `domain/resource` items match only JIDs of that form (no localpart).
    match (jid.node(), jid.resource()) {
        (None, Some(r)) => list.contains(&format!("{domain}/{}", r.as_str())),
        _ => false,
    }
}

impl Server {
    /// The blocklist of a local account; an empty one when it cannot be read (for presence
    /// broadcasts, which consult the cache; routing uses [`Server::blocks`], which fails
    /// closed).
    pub async fn blocklist(&self, user: &BareJid) -> Arc<Blocklist> {
        self.try_blocklist(user).await.unwrap_or_default()
    }

    /// The blocklist of a local account, or the storage error that kept it from being read
    /// (then nothing is cached, so the next stanza tries again).
    pub async fn try_blocklist(
        &self,
        user: &BareJid,
    ) -> Result<Arc<Blocklist>, canto_storage::StorageError> {
        if let Some(b) = self
            .block_cache
            .0
            .read()
            .ok()
            .and_then(|c| c.get(user).cloned())
        {
            return Ok(b);
        }
        let Some(node) = user.node() else {
            return Ok(Arc::default());
        };
        let loaded = match self
            .storage
            .kv
            .get(STORE, user.domain().as_str(), node.as_str())
            .await
        {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect(),
            Ok(None) => Blocklist::new(),
            Err(e) => {
                warn!(error = %e, user = %user, "loading a blocklist failed");
                return Err(e);
            }
        };
        let list = Arc::new(loaded);
        if self.sessions.is_online(user)
            && let Ok(mut c) = self.block_cache.0.write()
        {
            c.entry(user.clone()).or_insert_with(|| list.clone());
        }
        Ok(list)
    }

    /// Stores a new blocklist and updates the cache.
    pub async fn set_blocklist(
        &self,
        user: &BareJid,
        list: Blocklist,
    ) -> Result<(), canto_storage::StorageError> {
        let Some(node) = user.node() else {
            return Ok(());
        };
        let text = list.iter().cloned().collect::<Vec<_>>().join("\n");
        let value = (!list.is_empty()).then_some(text.as_bytes());
        self.storage
            .kv
            .set(STORE, user.domain().as_str(), node.as_str(), value)
            .await?;
        if let Ok(mut c) = self.block_cache.0.write()
            && let Some(slot) = c.get_mut(user)
        {
            *slot = Arc::new(list);
        }
        self.account_changed(user);
        Ok(())
    }

    /// The cached blocklist of an online account (for synchronous broadcast paths; a list is
    /// cached from the first stanza that consults it, and `presence_broadcast` loads the
    /// sender's and its contacts' before broadcasting).
    pub(crate) fn cached_blocklist(&self, user: &BareJid) -> Option<Arc<Blocklist>> {
        self.block_cache
            .0
            .read()
            .ok()
            .and_then(|c| c.get(user).cloned())
    }

    /// Drops a cached blocklist (the account's last session ended).
    pub(crate) fn forget_blocklist(&self, user: &BareJid) {
        if let Ok(mut c) = self.block_cache.0.write() {
            c.remove(user);
        }
    }

    /// Whether local account `user` blocks `other`. A blocklist that cannot be read counts as
    /// blocking (fail closed): a stanza the user may have blocked is not delivered while
    /// storage fails (XEP-0191 §3.3 leaves no room for "blocked unless the disk is down").
    pub async fn blocks(&self, user: &BareJid, other: &Jid) -> bool {
        if !self.serves(user.domain().as_str()) {
            return false;
        }
        match self.try_blocklist(user).await {
            Ok(list) => matches(&list, other),
            Err(_) => true,
        }
    }

    /// XEP-0191 §3.3, §3.4: pushes a block or unblock to the account's resources that asked
    /// for the blocklist.
    pub fn blocklist_push(&self, user: &BareJid, payload: Element) {
        for s in self.sessions.resources(user) {
            if s.wants_blocklist() {
                let push = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "set")
                    .with_attr("id", format!("block{:x}", rand::random::<u64>()))
                    .with_attr("to", s.jid().to_string())
                    .with_child(payload.clone());
                let _ = s.deliver(Arc::new(push));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Blocklist {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn jid(s: &str) -> Jid {
        canto_stanza::parse_jid(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn xep0016_matching() {
        let l = list(&[
            "romeo@montague.lit",
            "capulet.lit",
            "verona.lit/tybalt",
            "nurse@capulet.lit/x",
        ]);
        assert!(matches(&l, &jid("romeo@montague.lit")));
        assert!(matches(&l, &jid("romeo@montague.lit/orchard")));
        assert!(!matches(&l, &jid("benvolio@montague.lit")));
        assert!(matches(&l, &jid("juliet@capulet.lit/balcony")));
        assert!(matches(&l, &jid("capulet.lit")));
        assert!(matches(&l, &jid("verona.lit/tybalt")));
        assert!(!matches(&l, &jid("verona.lit/mercutio")));
        assert!(!matches(&l, &jid("someone@verona.lit/tybalt")));
        // Subdomains of a blocked domain, and nothing that merely ends alike.
        assert!(matches(&l, &jid("room@muc.capulet.lit/nurse")));
        assert!(matches(&l, &jid("a.b.capulet.lit")));
        assert!(!matches(&l, &jid("montecapulet.lit")));
        assert!(!matches(&l, &jid("capulet.lit.example")));
        let only_full = list(&["nurse@garden.lit/x"]);
        assert!(matches(&only_full, &jid("nurse@garden.lit/x")));
        assert!(!matches(&only_full, &jid("nurse@garden.lit/y")));
        assert!(!matches(&only_full, &jid("nurse@garden.lit")));
    }
}
