//! The in-memory backend: `BTreeMap`s behind one `std::sync::Mutex`.
//!
//! The lock is only ever taken inside synchronous sections (never across an `.await`), so a
//! plain mutex is correct and cheaper than an async one. One lock for everything keeps
//! [`AccountStore::delete`] atomic across all stores, like the SQLite transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{
    AccountStore, ArchiveItem, ArchiveQuery, ArchiveStore, Credentials, ItemQuery, KeyValueStore,
    MapStore, NewArchiveItem, PubsubItem, PubsubStore, PubsubSubscription, Result, ServiceKey,
    StorageError, new_item_id,
};

/// `(host, user)`.
type UserKey = (String, String);
/// `(store, host, user)`.
type StoreKey = (String, String, String);

/// One user's archive in one store.
#[derive(Default)]
struct Archive {
    /// Items by `seq`, ascending.
    items: BTreeMap<i64, ArchiveItem>,
    /// `id` → `seq`.
    ids: HashMap<String, i64>,
}

impl Archive {
    /// Stores an item under `seq` with a fresh id (unique in this archive) and returns the id.
    fn insert(&mut self, seq: i64, stamp_ms: i64, with: &str, data: &[u8]) -> String {
        let mut id = new_item_id();
        while self.ids.contains_key(&id) {
            id = new_item_id();
        }
        self.ids.insert(id.clone(), seq);
        self.items.insert(
            seq,
            ArchiveItem {
                id: id.clone(),
                seq,
                stamp_ms,
                with: with.to_owned(),
                data: data.to_vec(),
            },
        );
        id
    }
}

#[derive(Default)]
struct Inner {
    accounts: BTreeMap<UserKey, Credentials>,
    kv: BTreeMap<StoreKey, Vec<u8>>,
    map: BTreeMap<StoreKey, BTreeMap<String, Vec<u8>>>,
    archive: BTreeMap<StoreKey, Archive>,
    /// Last `seq` handed out; like SQLite's AUTOINCREMENT, never reused.
    last_seq: i64,
    /// Pubsub nodes by `(service, node)`.
    nodes: BTreeMap<(String, String), PsNode>,
}

/// One pubsub node.
#[derive(Default)]
struct PsNode {
    config: Vec<u8>,
    /// jid → affiliation.
    affiliations: BTreeMap<String, String>,
    /// (jid, subid) → subscription.
    subscriptions: BTreeMap<(String, String), PubsubSubscription>,
    /// Items by `seq`, ascending.
    items: BTreeMap<i64, PubsubItem>,
    /// `id` → `seq`.
    ids: HashMap<String, i64>,
}

impl PsNode {
    fn remove_item(&mut self, id: &str) -> bool {
        match self.ids.remove(id) {
            Some(seq) => self.items.remove(&seq).is_some(),
            None => false,
        }
    }

    fn trim(&mut self, keep: usize) -> Vec<String> {
        let mut gone = Vec::new();
        while self.items.len() > keep {
            let Some((_, item)) = self.items.pop_first() else {
                break;
            };
            self.ids.remove(&item.id);
            gone.push(item.id);
        }
        gone
    }
}

/// All four stores kept in process memory; nothing survives a restart.
#[derive(Default)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// A fresh, empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only happen between complete updates of plain
        // maps, so the data is still consistent: recover rather than fail forever.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn user_key(host: &str, user: &str) -> UserKey {
    (host.to_owned(), user.to_owned())
}

fn store_key(store: &str, host: &str, user: &str) -> StoreKey {
    (store.to_owned(), host.to_owned(), user.to_owned())
}

#[async_trait::async_trait]
impl AccountStore for MemoryBackend {
    async fn create(&self, host: &str, username: &str, creds: &Credentials) -> Result<()> {
        let mut inner = self.lock();
        match inner.accounts.entry(user_key(host, username)) {
            std::collections::btree_map::Entry::Occupied(_) => Err(StorageError::AlreadyExists),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(creds.clone());
                Ok(())
            }
        }
    }

    async fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<bool> {
        let mut inner = self.lock();
        match inner.accounts.get_mut(&user_key(host, username)) {
            Some(c) => {
                *c = creds.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>> {
        Ok(self.lock().accounts.get(&user_key(host, username)).cloned())
    }

    async fn exists(&self, host: &str, username: &str) -> Result<bool> {
        Ok(self.lock().accounts.contains_key(&user_key(host, username)))
    }

    async fn delete(&self, host: &str, username: &str) -> Result<bool> {
        let mut inner = self.lock();
        let existed = inner.accounts.remove(&user_key(host, username)).is_some();
        let is_user = |k: &StoreKey| k.1 == host && k.2 == username;
        inner.kv.retain(|k, _| !is_user(k));
        inner.map.retain(|k, _| !is_user(k));
        inner.archive.retain(|k, _| !is_user(k));
        let pep = format!("{username}@{host}");
        inner.nodes.retain(|k, _| k.0 != pep);
        Ok(existed)
    }

    async fn list(&self, host: &str) -> Result<Vec<String>> {
        let inner = self.lock();
        // Keys are ordered by (host, user), so one host's users are contiguous and sorted.
        Ok(inner
            .accounts
            .range((host.to_owned(), String::new())..)
            .take_while(|((h, _), _)| h == host)
            .map(|((_, u), _)| u.clone())
            .collect())
    }

    async fn import(&self, accounts: &[(String, String, Credentials)]) -> Result<usize> {
        let mut inner = self.lock();
        for (host, user, creds) in accounts {
            inner
                .accounts
                .insert((host.clone(), user.clone()), creds.clone());
        }
        Ok(accounts.len())
    }
}

#[async_trait::async_trait]
impl KeyValueStore for MemoryBackend {
    async fn get(&self, store: &str, host: &str, user: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().kv.get(&store_key(store, host, user)).cloned())
    }

    async fn set(&self, store: &str, host: &str, user: &str, value: Option<&[u8]>) -> Result<()> {
        let mut inner = self.lock();
        let key = store_key(store, host, user);
        match value {
            Some(v) => {
                inner.kv.insert(key, v.to_vec());
            }
            None => {
                inner.kv.remove(&key);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl MapStore for MemoryBackend {
    async fn get(&self, store: &str, host: &str, user: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .map
            .get(&store_key(store, host, user))
            .and_then(|m| m.get(key))
            .cloned())
    }

    async fn set(
        &self,
        store: &str,
        host: &str,
        user: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let mut inner = self.lock();
        let skey = store_key(store, host, user);
        match value {
            Some(v) => {
                inner
                    .map
                    .entry(skey)
                    .or_default()
                    .insert(key.to_owned(), v.to_vec());
            }
            None => {
                if let Some(m) = inner.map.get_mut(&skey) {
                    m.remove(key);
                    if m.is_empty() {
                        inner.map.remove(&skey);
                    }
                }
            }
        }
        Ok(())
    }

    async fn get_all(&self, store: &str, host: &str, user: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .lock()
            .map
            .get(&store_key(store, host, user))
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn clear(&self, store: &str, host: &str, user: &str) -> Result<()> {
        self.lock().map.remove(&store_key(store, host, user));
        Ok(())
    }
}

/// Whether `item` passes the query's value filters (everything but paging and `ids`).
fn matches(item: &ArchiveItem, q: &ArchiveQuery) -> bool {
    q.with.as_ref().is_none_or(|w| &item.with == w)
        && q.start_ms.is_none_or(|s| item.stamp_ms >= s)
        && q.end_ms.is_none_or(|e| item.stamp_ms <= e)
        && q.ids.as_ref().is_none_or(|ids| ids.contains(&item.id))
}

/// The items of `archive` matching `q`, in the query's order, ignoring `limit`.
/// `None` if an `after_id` / `before_id` does not exist (which matches nothing).
fn select<'a>(
    archive: &'a Archive,
    q: &'a ArchiveQuery,
) -> Option<Box<dyn Iterator<Item = &'a ArchiveItem> + 'a>> {
    use std::ops::Bound;
    let lower = match &q.after_id {
        Some(id) => Bound::Excluded(*archive.ids.get(id)?),
        None => Bound::Unbounded,
    };
    let upper = match &q.before_id {
        Some(id) => Bound::Excluded(*archive.ids.get(id)?),
        None => Bound::Unbounded,
    };
    if let (Bound::Excluded(lo), Bound::Excluded(hi)) = (lower, upper)
        && lo >= hi
    {
        // `BTreeMap::range` panics on an empty or inverted excluded range.
        return Some(Box::new(std::iter::empty()));
    }
    let range = archive
        .items
        .range((lower, upper))
        .map(|(_, item)| item)
        .filter(move |item| matches(item, q));
    if q.reverse {
        Some(Box::new(range.rev()))
    } else {
        Some(Box::new(range))
    }
}

#[async_trait::async_trait]
impl ArchiveStore for MemoryBackend {
    async fn append(
        &self,
        store: &str,
        host: &str,
        user: &str,
        with: &str,
        stamp_ms: i64,
        data: &[u8],
        max_items: Option<usize>,
    ) -> Result<String> {
        let mut inner = self.lock();
        let key = store_key(store, host, user);
        if let Some(max) = max_items {
            let have = inner.archive.get(&key).map_or(0, |a| a.items.len());
            if have >= max {
                return Err(StorageError::Limit(format!(
                    "archive {store} of {user}@{host} holds {have} items (max {max})"
                )));
            }
        }
        inner.last_seq += 1;
        let seq = inner.last_seq;
        Ok(inner
            .archive
            .entry(key)
            .or_default()
            .insert(seq, stamp_ms, with, data))
    }

    async fn append_many(
        &self,
        store: &str,
        host: &str,
        user: &str,
        items: &[NewArchiveItem],
    ) -> Result<Vec<String>> {
        // One lock for the whole batch: other callers see all of it or none.
        let mut inner = self.lock();
        let mut seq = inner.last_seq;
        let archive = inner
            .archive
            .entry(store_key(store, host, user))
            .or_default();
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            seq += 1;
            ids.push(archive.insert(seq, item.stamp_ms, &item.with, &item.data));
        }
        inner.last_seq = seq;
        Ok(ids)
    }

    async fn query(
        &self,
        store: &str,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<ArchiveItem>> {
        let inner = self.lock();
        let Some(archive) = inner.archive.get(&store_key(store, host, user)) else {
            return Ok(Vec::new());
        };
        let Some(items) = select(archive, q) else {
            return Ok(Vec::new());
        };
        Ok(items.take(q.limit.unwrap_or(usize::MAX)).cloned().collect())
    }

    async fn count(&self, store: &str, host: &str, user: &str, q: &ArchiveQuery) -> Result<usize> {
        let inner = self.lock();
        let Some(archive) = inner.archive.get(&store_key(store, host, user)) else {
            return Ok(0);
        };
        Ok(select(archive, q).map_or(0, |items| items.count()))
    }

    async fn delete(
        &self,
        store: &str,
        host: &str,
        user: &str,
        ids: Option<&[String]>,
    ) -> Result<usize> {
        let mut inner = self.lock();
        let key = store_key(store, host, user);
        let Some(ids) = ids else {
            return Ok(inner.archive.remove(&key).map_or(0, |a| a.items.len()));
        };
        let Some(archive) = inner.archive.get_mut(&key) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for id in ids {
            if let Some(seq) = archive.ids.remove(id) {
                archive.items.remove(&seq);
                deleted += 1;
            }
        }
        if archive.items.is_empty() {
            inner.archive.remove(&key);
        }
        Ok(deleted)
    }

    async fn delete_older_than(&self, store: &str, stamp_ms: i64) -> Result<usize> {
        let mut inner = self.lock();
        let mut deleted = 0;
        inner.archive.retain(|(s, _, _), archive| {
            if s != store {
                return true;
            }
            let Archive { items, ids } = archive;
            items.retain(|_, item| {
                let keep = item.stamp_ms >= stamp_ms;
                if !keep {
                    ids.remove(&item.id);
                    deleted += 1;
                }
                keep
            });
            !items.is_empty()
        });
        Ok(deleted)
    }
}

fn node_key(service: &str, node: &str) -> (String, String) {
    (service.to_owned(), node.to_owned())
}

#[async_trait::async_trait]
impl PubsubStore for MemoryBackend {
    async fn nodes(&self, service: ServiceKey<'_>) -> Result<Vec<(String, Vec<u8>)>> {
        let inner = self.lock();
        Ok(inner
            .nodes
            .range(node_key(service, "")..)
            .take_while(|((s, _), _)| s == service)
            .map(|((_, n), node)| (n.clone(), node.config.clone()))
            .collect())
    }

    async fn node(&self, service: ServiceKey<'_>, node: &str) -> Result<Option<Vec<u8>>> {
        let inner = self.lock();
        Ok(inner
            .nodes
            .get(&node_key(service, node))
            .map(|n| n.config.clone()))
    }

    async fn create_node(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
        max_nodes: Option<usize>,
    ) -> Result<bool> {
        let mut inner = self.lock();
        let key = node_key(service, node);
        if inner.nodes.contains_key(&key) {
            return Ok(false);
        }
        if let Some(max) = max_nodes {
            let count = inner
                .nodes
                .range(node_key(service, "")..)
                .take_while(|((s, _), _)| s == service)
                .count();
            if count >= max {
                return Err(StorageError::Limit(format!("{max} nodes")));
            }
        }
        inner.nodes.insert(
            key,
            PsNode {
                config: config.to_vec(),
                ..PsNode::default()
            },
        );
        Ok(true)
    }

    async fn set_node_config(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
    ) -> Result<bool> {
        let mut inner = self.lock();
        Ok(match inner.nodes.get_mut(&node_key(service, node)) {
            Some(n) => {
                n.config = config.to_vec();
                true
            }
            None => false,
        })
    }

    async fn delete_node(&self, service: ServiceKey<'_>, node: &str) -> Result<bool> {
        Ok(self.lock().nodes.remove(&node_key(service, node)).is_some())
    }

    async fn delete_service(&self, service: ServiceKey<'_>) -> Result<()> {
        self.lock().nodes.retain(|k, _| k.0 != service);
        Ok(())
    }

    async fn set_affiliation(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<()> {
        let mut inner = self.lock();
        if let Some(n) = inner.nodes.get_mut(&node_key(service, node)) {
            match affiliation {
                Some(a) => {
                    n.affiliations.insert(jid.to_owned(), a.to_owned());
                }
                None => {
                    n.affiliations.remove(jid);
                }
            }
        }
        Ok(())
    }

    async fn affiliations(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        let inner = self.lock();
        let mut out = Vec::new();
        for ((_, name), n) in inner
            .nodes
            .range(node_key(service, "")..)
            .take_while(|((s, _), _)| s == service)
        {
            if node.is_some_and(|want| want != name) {
                continue;
            }
            for (j, a) in &n.affiliations {
                if jid.is_none_or(|want| want == j) {
                    out.push((name.clone(), j.clone(), a.clone()));
                }
            }
        }
        Ok(out)
    }

    async fn set_subscription(
        &self,
        service: ServiceKey<'_>,
        sub: &PubsubSubscription,
    ) -> Result<()> {
        let mut inner = self.lock();
        if let Some(n) = inner.nodes.get_mut(&node_key(service, &sub.node)) {
            n.subscriptions
                .insert((sub.jid.clone(), sub.subid.clone()), sub.clone());
        }
        Ok(())
    }

    async fn remove_subscription(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize> {
        let mut inner = self.lock();
        let Some(n) = inner.nodes.get_mut(&node_key(service, node)) else {
            return Ok(0);
        };
        let before = n.subscriptions.len();
        n.subscriptions
            .retain(|(j, s), _| !(j == jid && subid.is_none_or(|want| want == s)));
        Ok(before - n.subscriptions.len())
    }

    async fn subscriptions(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<PubsubSubscription>> {
        let inner = self.lock();
        let mut out = Vec::new();
        for ((_, name), n) in inner
            .nodes
            .range(node_key(service, "")..)
            .take_while(|((s, _), _)| s == service)
        {
            if node.is_some_and(|want| want != name) {
                continue;
            }
            out.extend(
                n.subscriptions
                    .values()
                    .filter(|s| jid.is_none_or(|want| want == s.jid))
                    .cloned(),
            );
        }
        Ok(out)
    }

    async fn publish(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        item: &PubsubItem,
        max_items: Option<usize>,
    ) -> Result<Option<Vec<String>>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(n) = inner.nodes.get_mut(&node_key(service, node)) else {
            return Ok(None);
        };
        n.remove_item(&item.id);
        inner.last_seq += 1;
        let seq = inner.last_seq;
        n.ids.insert(item.id.clone(), seq);
        n.items.insert(
            seq,
            PubsubItem {
                seq,
                ..item.clone()
            },
        );
        Ok(Some(match max_items {
            Some(keep) => n.trim(keep),
            None => Vec::new(),
        }))
    }

    async fn items(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        q: &ItemQuery,
    ) -> Result<Vec<PubsubItem>> {
        let inner = self.lock();
        let Some(n) = inner.nodes.get(&node_key(service, node)) else {
            return Ok(Vec::new());
        };
        // Keyset bounds on `seq`, in the query's order; an unknown id matches nothing.
        let bound = |id: &Option<String>| match id {
            None => Ok(None),
            Some(id) => n.ids.get(id).copied().map(Some).ok_or(()),
        };
        let (Ok(after), Ok(before)) = (bound(&q.after_id), bound(&q.before_id)) else {
            return Ok(Vec::new());
        };
        let wanted = |item: &&PubsubItem| {
            q.ids.as_ref().is_none_or(|ids| ids.contains(&item.id))
                && after.is_none_or(|a| {
                    if q.oldest_first {
                        item.seq > a
                    } else {
                        item.seq < a
                    }
                })
                && before.is_none_or(|b| {
                    if q.oldest_first {
                        item.seq < b
                    } else {
                        item.seq > b
                    }
                })
        };
        let limit = q.limit.unwrap_or(usize::MAX);
        let out: Vec<PubsubItem> = if q.oldest_first {
            n.items
                .values()
                .filter(wanted)
                .take(limit)
                .cloned()
                .collect()
        } else {
            n.items
                .values()
                .rev()
                .filter(wanted)
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(out)
    }

    async fn item_count(&self, service: ServiceKey<'_>, node: &str) -> Result<usize> {
        let inner = self.lock();
        Ok(inner
            .nodes
            .get(&node_key(service, node))
            .map_or(0, |n| n.items.len()))
    }

    async fn retract(&self, service: ServiceKey<'_>, node: &str, id: &str) -> Result<bool> {
        let mut inner = self.lock();
        Ok(inner
            .nodes
            .get_mut(&node_key(service, node))
            .is_some_and(|n| n.remove_item(id)))
    }

    async fn purge(&self, service: ServiceKey<'_>, node: &str) -> Result<usize> {
        let mut inner = self.lock();
        Ok(match inner.nodes.get_mut(&node_key(service, node)) {
            Some(n) => {
                let count = n.items.len();
                n.items.clear();
                n.ids.clear();
                count
            }
            None => 0,
        })
    }

    async fn forget_jid(&self, bare: &str) -> Result<usize> {
        let mut inner = self.lock();
        let prefix = format!("{bare}/");
        let mut gone = 0;
        for n in inner.nodes.values_mut() {
            let before = n.affiliations.len() + n.subscriptions.len();
            n.affiliations.remove(bare);
            n.subscriptions
                .retain(|(j, _), _| j != bare && !j.starts_with(&prefix));
            gone += before - n.affiliations.len() - n.subscriptions.len();
        }
        Ok(gone)
    }

    async fn trim(&self, service: ServiceKey<'_>, node: &str, keep: usize) -> Result<Vec<String>> {
        let mut inner = self.lock();
        Ok(inner
            .nodes
            .get_mut(&node_key(service, node))
            .map(|n| n.trim(keep))
            .unwrap_or_default())
    }
}
