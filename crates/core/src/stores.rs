//! A module's own stores (Prosody's `module:open_store`). A module opens them by name at load
//! ([`crate::ModuleCtx::open_kv`], `open_map`, `open_archive`); each name belongs to one module
//! (or to the core), so no module can read or write another's data. A handle carries its name,
//! so the module never spells it again.

use canto_storage::{ArchiveItem, ArchiveQuery, NewArchiveItem, Result, Storage};

/// Store names the core itself uses (rosters, offline messages, blocklists): no module may open
/// them.
pub const CORE_STORES: &[&str] = &[
    "roster",
    "roster_pending",
    "roster_version",
    "offline",
    "blocklist",
];

/// A per-user key-value store of one module.
#[derive(Clone)]
pub struct KvStore {
    storage: Storage,
    name: &'static str,
}

/// A per-user map store of one module.
#[derive(Clone)]
pub struct MapStore {
    storage: Storage,
    name: &'static str,
}

/// A per-user archive of one module.
#[derive(Clone)]
pub struct ArchiveStore {
    storage: Storage,
    name: &'static str,
}

macro_rules! debug_store {
    ($t:ty) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &self.name)
                    .finish()
            }
        }
    };
}
debug_store!(KvStore);
debug_store!(MapStore);
debug_store!(ArchiveStore);
debug_store!(PubsubStore);

/// The publish-subscribe store of one module (PEP, a pubsub service): every method of
/// [`canto_storage::PubsubStore`], keyed by service (an account's bare JID for PEP, a domain
/// for a service).
#[derive(Clone)]
pub struct PubsubStore {
    storage: Storage,
    name: &'static str,
}

impl PubsubStore {
    pub(crate) fn new(storage: &Storage, name: &'static str) -> PubsubStore {
        PubsubStore {
            storage: storage.clone(),
            name,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The backend's pubsub store.
    pub fn get(&self) -> &dyn canto_storage::PubsubStore {
        &*self.storage.pubsub
    }
}

impl KvStore {
    pub(crate) fn new(storage: &Storage, name: &'static str) -> KvStore {
        KvStore {
            storage: storage.clone(),
            name,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The document of `user@host`, if any.
    pub async fn get(&self, host: &str, user: &str) -> Result<Option<Vec<u8>>> {
        self.storage.kv.get(self.name, host, user).await
    }

    /// Replaces (`Some`) or removes (`None`) the document of `user@host`.
    pub async fn set(&self, host: &str, user: &str, value: Option<&[u8]>) -> Result<()> {
        self.storage.kv.set(self.name, host, user, value).await
    }
}

impl MapStore {
    pub(crate) fn new(storage: &Storage, name: &'static str) -> MapStore {
        MapStore {
            storage: storage.clone(),
            name,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One entry of `user@host`'s map.
    pub async fn get(&self, host: &str, user: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.storage.map.get(self.name, host, user, key).await
    }

    /// Sets (`Some`) or removes (`None`) one entry.
    pub async fn set(&self, host: &str, user: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.storage
            .map
            .set(self.name, host, user, key, value)
            .await
    }

    /// Every entry of `user@host`'s map.
    pub async fn get_all(&self, host: &str, user: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.storage.map.get_all(self.name, host, user).await
    }

    /// Removes `user@host`'s whole map.
    pub async fn clear(&self, host: &str, user: &str) -> Result<()> {
        self.storage.map.clear(self.name, host, user).await
    }
}

impl ArchiveStore {
    pub(crate) fn new(storage: &Storage, name: &'static str) -> ArchiveStore {
        ArchiveStore {
            storage: storage.clone(),
            name,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Appends one item, committed before returning (see
    /// [`canto_storage::ArchiveStore::append`]).
    pub async fn append(
        &self,
        host: &str,
        user: &str,
        with: &str,
        stamp_ms: i64,
        data: &[u8],
        max_items: Option<usize>,
    ) -> Result<String> {
        self.storage
            .archive
            .append(self.name, host, user, with, stamp_ms, data, max_items)
            .await
    }

    /// Appends many items in one transaction.
    pub async fn append_many(
        &self,
        host: &str,
        user: &str,
        items: &[NewArchiveItem],
    ) -> Result<Vec<String>> {
        self.storage
            .archive
            .append_many(self.name, host, user, items)
            .await
    }

    /// Items of any users' archives in one durable transaction
    /// ([`canto_storage::ArchiveStore::append_batch`]).
    pub async fn append_batch(&self, items: &[canto_storage::BatchItem]) -> Result<Vec<String>> {
        self.storage.archive.append_batch(self.name, items).await
    }

    /// The items matching `q` (keyset paging).
    pub async fn query(
        &self,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<ArchiveItem>> {
        self.storage.archive.query(self.name, host, user, q).await
    }

    /// How many items match `q`, ignoring its limit.
    pub async fn count(&self, host: &str, user: &str, q: &ArchiveQuery) -> Result<usize> {
        self.storage.archive.count(self.name, host, user, q).await
    }

    /// Deletes the given items (`None`: all of the user's).
    pub async fn delete(&self, host: &str, user: &str, ids: Option<&[String]>) -> Result<usize> {
        self.storage
            .archive
            .delete(self.name, host, user, ids)
            .await
    }

    /// Deletes every user's items stamped before `stamp_ms` (retention).
    pub async fn delete_older_than(&self, stamp_ms: i64) -> Result<usize> {
        self.storage
            .archive
            .delete_older_than(self.name, stamp_ms)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::module::{Module, ModuleCtx, Spec};

    struct Opens(&'static str, &'static str);

    impl Module for Opens {
        fn name(&self) -> &'static str {
            self.0
        }
        fn specs(&self) -> &'static [Spec] {
            &[]
        }
        fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
            ctx.open_kv(self.1).map(|_| ())
        }
    }

    fn build(modules: Vec<Arc<dyn Module>>) -> Result<(), String> {
        let config = Config {
            modules: modules.iter().map(|m| m.name().to_string()).collect(),
            ..Config::default()
        };
        crate::Server::new(config, canto_storage::Storage::memory(), &modules).map(|_| ())
    }

    #[test]
    fn a_store_belongs_to_one_module_and_core_stores_to_none() {
        assert!(build(vec![Arc::new(Opens("a", "notes"))]).is_ok());
        let e = build(vec![
            Arc::new(Opens("a", "notes")),
            Arc::new(Opens("b", "notes")),
        ]);
        assert_eq!(
            e.err().as_deref(),
            Some("module b: b: store \"notes\" belongs to module a")
        );
        let e = build(vec![Arc::new(Opens("a", "roster"))]);
        assert!(e.is_err_and(|e| e.contains("is the core's")));
    }

    #[tokio::test]
    async fn a_handle_reads_and_writes_its_own_store_only() {
        let storage = canto_storage::Storage::memory();
        let mine = super::KvStore::new(&storage, "notes");
        mine.set("h", "u", Some(b"x")).await.ok();
        assert_eq!(mine.get("h", "u").await.ok().flatten(), Some(b"x".to_vec()));
        let other = super::KvStore::new(&storage, "other");
        assert_eq!(other.get("h", "u").await.ok().flatten(), None);
    }
}
