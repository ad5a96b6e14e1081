//! Persistent storage for Canto, modelled on Prosody's storage manager.
//!
//! Three kinds of per-user stores, the publish-subscribe store and the account table:
//!
//! * [`AccountStore`]: accounts and their SCRAM credentials (never a password);
//! * [`KeyValueStore`]: one opaque document per user and store name (roster, vCard, …);
//! * [`MapStore`]: one user's items keyed by a string (roster items, pending subscriptions);
//! * [`ArchiveStore`]: append-only, time-stamped item logs (offline messages, MAM);
//! * [`PubsubStore`]: publish-subscribe nodes with their configurations, affiliations,
//!   subscriptions and items, per service (PEP per account, hosted services per domain).
//!
//! Three backends implement all of them: [`Backend::Memory`] (tests, ephemeral servers),
//! [`Backend::Sqlite`] (WAL, `synchronous=FULL`, shared safely between the server and the CLI)
//! and [`Backend::Postgres`] (the same schema on a PostgreSQL server, for several servers or a
//! managed database). [`Storage`] bundles the five stores of one backend; [`dump`] reads and
//! writes the raw rows of either SQL backend, for `canto storage copy`.
//!
//! Hosts and usernames are stored exactly as given: callers normalize them (nodeprep /
//! PRECIS) before calling in.

use std::path::PathBuf;
use std::sync::Arc;

pub use canto_proto::sasl::{Credentials, HashAlgo, ScramKeys};

pub mod copy;
pub mod dump;
pub mod faults;
mod memory;
pub mod metrics;
mod postgres;
mod postgres_pubsub;
mod sqlite;
mod sqlite_pubsub;
pub mod testing;

pub use memory::MemoryBackend;
pub use postgres::{DEFAULT_POOL_SIZE, PostgresBackend};
pub use sqlite::SqliteBackend;

/// Everything that can go wrong in a storage operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// [`AccountStore::create`] was called for an account that already exists.
    #[error("account already exists")]
    AlreadyExists,
    /// The disk (or the database's size limit) is full; nothing was written.
    #[error("storage full: {0}")]
    Full(String),
    /// Any other database failure (I/O, locking timeout, …).
    #[error("database error: {0}")]
    Database(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A quota such as an archive's `max_items` would be exceeded; nothing was written.
    #[error("limit reached: {0}")]
    Limit(String),
}

/// Result type of every storage operation.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Accounts and their stored SCRAM credentials.
#[async_trait::async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account; [`StorageError::AlreadyExists`] if it is already present.
    async fn create(&self, host: &str, username: &str, creds: &Credentials) -> Result<()>;
    /// Replaces an account's credentials; `false` if there is no such account.
    async fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<bool>;
    /// The stored credentials, or `None` if there is no such account.
    async fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>>;
    /// Whether the account exists.
    async fn exists(&self, host: &str, username: &str) -> Result<bool>;
    /// Deletes an account together with all of that user's key-value, map and archive data
    /// (every store) and its PEP service (service key `user@host` of the pubsub store),
    /// atomically. Returns whether the account existed; the user's data is removed either way.
    async fn delete(&self, host: &str, username: &str) -> Result<bool>;
    /// The usernames on `host`, sorted (bytewise).
    async fn list(&self, host: &str) -> Result<Vec<String>>;
    /// Bulk insert-or-replace in one transaction (for `canto user import`); returns count.
    async fn import(&self, accounts: &[(String, String, Credentials)]) -> Result<usize>;
}

/// Per-user key-value documents (Prosody "keyval"): roster, vCard, private XML, blocklist.
#[async_trait::async_trait]
pub trait KeyValueStore: Send + Sync {
    /// The document stored under `store` for the user, if any.
    async fn get(&self, store: &str, host: &str, user: &str) -> Result<Option<Vec<u8>>>;
    /// Stores (or with `None` deletes) the user's document in `store`.
    async fn set(&self, store: &str, host: &str, user: &str, value: Option<&[u8]>) -> Result<()>;
}

/// Per-user maps (Prosody "map"): one user's items keyed by a string (roster items, pending
/// subscriptions).
#[async_trait::async_trait]
pub trait MapStore: Send + Sync {
    /// One item of the user's map in `store`.
    async fn get(&self, store: &str, host: &str, user: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores (or with `None` deletes) one item of the user's map in `store`.
    async fn set(
        &self,
        store: &str,
        host: &str,
        user: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<()>;
    /// All items of the user's map in `store`, sorted by key (bytewise).
    async fn get_all(&self, store: &str, host: &str, user: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Removes every item of the user's map in `store`.
    async fn clear(&self, store: &str, host: &str, user: &str) -> Result<()>;
}

/// One archived item (offline messages, later MAM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveItem {
    /// Unique, unguessable id (32 lowercase hex digits).
    pub id: String,
    /// Position in the archive: strictly increasing in append order, never reused.
    pub seq: i64,
    /// Timestamp given at append time, milliseconds since the Unix epoch.
    pub stamp_ms: i64,
    /// The conversation partner (a bare or full JID, as given).
    pub with: String,
    /// The archived payload (serialized stanza).
    pub data: Vec<u8>,
}

/// One item to append with [`ArchiveStore::append_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewArchiveItem {
    /// The conversation partner (a bare or full JID, as given).
    pub with: String,
    /// Timestamp, milliseconds since the Unix epoch.
    pub stamp_ms: i64,
    /// The archived payload (serialized stanza).
    pub data: Vec<u8>,
}

/// One item of [`ArchiveStore::append_batch`]: whose archive, and what.
#[derive(Clone, Debug)]
pub struct BatchItem {
    /// The archive owner's host.
    pub host: String,
    /// The archive owner's username.
    pub user: String,
    /// The item.
    pub item: NewArchiveItem,
}

/// A query; all filters optional; results in ascending order unless `reverse`; `limit` caps
/// the count.
///
/// Filters combine with AND. `after_id` / `before_id` select items strictly after / before
/// the named item of the same user and store; an id that does not exist there matches
/// nothing. With `reverse`, items come newest first, so `reverse` + `limit` yields the last
/// page and `reverse` + `before_id` + `limit` pages backwards.
#[derive(Clone, Debug, Default)]
pub struct ArchiveQuery {
    /// Only items whose `with` equals this exactly.
    pub with: Option<String>,
    /// Only items with `stamp_ms >= start_ms`.
    pub start_ms: Option<i64>,
    /// Only items with `stamp_ms <= end_ms`.
    pub end_ms: Option<i64>,
    /// Only items appended after the item with this id.
    pub after_id: Option<String>,
    /// Only items appended before the item with this id.
    pub before_id: Option<String>,
    /// Only items with one of these ids (an empty list matches nothing).
    pub ids: Option<Vec<String>>,
    /// At most this many items (ignored by [`ArchiveStore::count`]).
    pub limit: Option<usize>,
    /// Newest first instead of oldest first.
    pub reverse: bool,
}

/// Per-user, append-only archives (Prosody "archive").
#[async_trait::async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends and COMMITS durably before returning; returns the new item's id (unique,
    /// unguessable: 16 random bytes as hex).
    /// If `max_items` is Some(n) and the user already has n items in this store, returns
    /// Err(StorageError::Limit) and stores nothing.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        store: &str,
        host: &str,
        user: &str,
        with: &str,
        stamp_ms: i64,
        data: &[u8],
        max_items: Option<usize>,
    ) -> Result<String>;
    /// Appends `items` in order, exactly as that many [`ArchiveStore::append`] calls without
    /// `max_items` would (consecutive `seq`s, fresh ids), but in ONE transaction that COMMITS
    /// durably before returning: all are stored or none. For bulk imports and benchmark
    /// fills; returns the new ids in order.
    async fn append_many(
        &self,
        store: &str,
        host: &str,
        user: &str,
        items: &[NewArchiveItem],
    ) -> Result<Vec<String>>;
    /// Appends items of any users, each exactly as an [`ArchiveStore::append`] without
    /// `max_items` would, in ONE transaction that COMMITS durably before returning: all are
    /// stored or none (group commit: one fsync for messages that arrived together). Returns
    /// the new ids in order.
    async fn append_batch(&self, store: &str, items: &[BatchItem]) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(items.len());
        for b in items {
            ids.push(
                self.append(
                    store,
                    &b.host,
                    &b.user,
                    &b.item.with,
                    b.item.stamp_ms,
                    &b.item.data,
                    None,
                )
                .await?,
            );
        }
        Ok(ids)
    }
    /// The items matching `q` (keyset pagination on `seq`, never OFFSET).
    async fn query(
        &self,
        store: &str,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<ArchiveItem>>;
    /// How many items match `q`, ignoring its `limit`.
    async fn count(&self, store: &str, host: &str, user: &str, q: &ArchiveQuery) -> Result<usize>;
    /// Deletes the given items (`None` = all of this user's items in this store); returns how
    /// many were deleted.
    async fn delete(
        &self,
        store: &str,
        host: &str,
        user: &str,
        ids: Option<&[String]>,
    ) -> Result<usize>;
    /// Retention expiry: deletes every user's items in `store` stamped before `stamp_ms`;
    /// returns how many were deleted.
    async fn delete_older_than(&self, store: &str, stamp_ms: i64) -> Result<usize>;
}

/// A publish-subscribe service's key: an account's bare JID (`user@host`) for its PEP service
/// (XEP-0163), a domain (`pubsub.host`) for a hosted pubsub service (XEP-0060).
pub type ServiceKey<'a> = &'a str;

/// One published item (XEP-0060 §7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubsubItem {
    /// The item id, unique within its node.
    pub id: String,
    /// Position in the node: strictly increasing in publish order, never reused (a
    /// republished id gets a new, higher one).
    pub seq: i64,
    /// The publisher's JID as the service saw it.
    pub publisher: String,
    /// When it was published, milliseconds since the Unix epoch.
    pub stamp_ms: i64,
    /// The item's payload as serialized XML (the `<item/>`'s children), opaque here.
    pub payload: Vec<u8>,
}

/// Which items of a node [`PubsubStore::items`] returns. Items come newest first (highest
/// `seq` first) unless `oldest_first`; paging is by keyset on the item ids, never by OFFSET.
#[derive(Clone, Debug, Default)]
pub struct ItemQuery {
    /// Only items with one of these ids (an empty list matches nothing).
    pub ids: Option<Vec<String>>,
    /// At most this many items.
    pub limit: Option<usize>,
    /// Only items that come after the item with this id in the query's order (newer than it
    /// when `oldest_first`, older than it otherwise); an id that does not exist matches nothing.
    pub after_id: Option<String>,
    /// Only items that come before the item with this id in the query's order.
    pub before_id: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

/// A subscription to a node (XEP-0060 §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubsubSubscription {
    /// The node.
    pub node: String,
    /// The subscribed JID (bare or full, as subscribed).
    pub jid: String,
    /// The subscription id (XEP-0060 §6.1.6), unique per (node, jid).
    pub subid: String,
    /// `subscribed`, `pending` or `unconfigured`: opaque here.
    pub state: String,
    /// Subscription options, serialized by the caller; opaque here.
    pub options: Vec<u8>,
}

/// Publish-subscribe nodes, their configuration, affiliations, subscriptions and items
/// (XEP-0060, XEP-0163), per service. Node configurations and subscription options are opaque
/// bytes the pubsub engine encodes.
#[async_trait::async_trait]
pub trait PubsubStore: Send + Sync {
    /// The nodes of `service` with their configurations, sorted by name.
    async fn nodes(&self, service: ServiceKey<'_>) -> Result<Vec<(String, Vec<u8>)>>;
    /// One node's configuration, if the node exists.
    async fn node(&self, service: ServiceKey<'_>, node: &str) -> Result<Option<Vec<u8>>>;
    /// Creates a node; `Ok(false)` if it exists already (nothing changes). With
    /// `max_nodes = Some(n)` and `n` nodes in the service already, [`StorageError::Limit`]
    /// and nothing is created.
    async fn create_node(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
        max_nodes: Option<usize>,
    ) -> Result<bool>;
    /// Replaces a node's configuration; `Ok(false)` if there is no such node.
    async fn set_node_config(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
    ) -> Result<bool>;
    /// Deletes a node with its items, affiliations and subscriptions, atomically; `Ok(false)`
    /// if there was no such node.
    async fn delete_node(&self, service: ServiceKey<'_>, node: &str) -> Result<bool>;
    /// Deletes everything of `service` (an account's PEP data when the account goes).
    async fn delete_service(&self, service: ServiceKey<'_>) -> Result<()>;

    /// Sets (`Some`, e.g. `owner`, `publisher`, `member`, `outcast`) or removes (`None`) the
    /// affiliation of `jid` (a bare JID) with `node`.
    async fn set_affiliation(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<()>;
    /// Affiliations `(node, jid, affiliation)` of `service`, optionally only of one node and/or
    /// one JID, sorted by node then JID.
    async fn affiliations(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<(String, String, String)>>;

    /// Creates or replaces the subscription (`sub.node`, `sub.jid`, `sub.subid`).
    async fn set_subscription(
        &self,
        service: ServiceKey<'_>,
        sub: &PubsubSubscription,
    ) -> Result<()>;
    /// Removes subscriptions of `jid` to `node`: the one with `subid`, or all of them with
    /// `None`; returns how many were removed.
    async fn remove_subscription(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize>;
    /// Subscriptions of `service`, optionally only to one node and/or of one JID, sorted by
    /// node, JID, subid.
    async fn subscriptions(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<PubsubSubscription>>;

    /// Publishes `item` to `node`; `Ok(None)` and nothing stored if the node does not exist.
    /// An item with the same id is replaced:
    /// the node keeps one item per id, and the new one is the newest (gets a new `seq`;
    /// `item.seq` is ignored). Then, with `max_items = Some(n)`, the oldest items beyond `n`
    /// are deleted in the same transaction. Returns the ids of the items deleted that way.
    async fn publish(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        item: &PubsubItem,
        max_items: Option<usize>,
    ) -> Result<Option<Vec<String>>>;
    /// Items of a node per `q` (newest first unless `q.oldest_first`; keyset paging).
    async fn items(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        q: &ItemQuery,
    ) -> Result<Vec<PubsubItem>>;
    /// How many items the node has.
    async fn item_count(&self, service: ServiceKey<'_>, node: &str) -> Result<usize>;
    /// Deletes the item `id`; whether it existed.
    async fn retract(&self, service: ServiceKey<'_>, node: &str, id: &str) -> Result<bool>;
    /// Deletes every item of the node; how many there were.
    async fn purge(&self, service: ServiceKey<'_>, node: &str) -> Result<usize>;
    /// Deletes the oldest items beyond the newest `keep`; the ids deleted.
    async fn trim(&self, service: ServiceKey<'_>, node: &str, keep: usize) -> Result<Vec<String>>;
    /// Forgets the bare JID `bare` in every service: its affiliations, and its subscriptions
    /// as `bare` or any `bare/resource` (an account that was deleted). Returns how many rows
    /// went.
    async fn forget_jid(&self, bare: &str) -> Result<usize>;
}

/// The backends, chosen in config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Everything in process memory; lost on exit.
    Memory,
    /// A SQLite database file.
    Sqlite {
        /// The database file; it and its parent directory are created if missing.
        path: PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// `postgres://user[:password]@host[:port]/database`; the database must exist, its
        /// tables are created.
        url: String,
        /// Connections in the pool at most.
        pool_size: u32,
    },
}

/// All stores of one backend, cheap to clone.
#[derive(Clone)]
pub struct Storage {
    /// Accounts and credentials.
    pub accounts: Arc<dyn AccountStore>,
    /// Per-user key-value documents.
    pub kv: Arc<dyn KeyValueStore>,
    /// Per-user maps.
    pub map: Arc<dyn MapStore>,
    /// Per-user archives.
    pub archive: Arc<dyn ArchiveStore>,
    /// Publish-subscribe services (PEP and hosted pubsub).
    pub pubsub: Arc<dyn PubsubStore>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the backend, creating the SQLite file (and parent dir) or connecting to the
    /// PostgreSQL server, and running migrations.
    pub async fn open(backend: &Backend) -> Result<Storage> {
        match backend {
            Backend::Memory => Ok(Storage::memory()),
            Backend::Sqlite { path } => Ok(Storage::from_backend(Arc::new(
                SqliteBackend::open(path).await?,
            ))),
            Backend::Postgres { url, pool_size } => Ok(Storage::from_backend(Arc::new(
                PostgresBackend::open(url, *pool_size).await?,
            ))),
        }
    }

    /// A fresh, empty in-memory backend.
    pub fn memory() -> Storage {
        Storage::from_backend(Arc::new(MemoryBackend::new()))
    }

    /// Bundles one object implementing all five store traits.
    pub fn from_backend<B>(backend: Arc<B>) -> Storage
    where
        B: AccountStore + KeyValueStore + MapStore + ArchiveStore + PubsubStore + 'static,
    {
        Storage {
            accounts: backend.clone(),
            kv: backend.clone(),
            map: backend.clone(),
            pubsub: backend.clone(),
            archive: backend,
        }
    }
}

/// A new archive item id: 16 random bytes as 32 lowercase hex digits.
pub(crate) fn new_item_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let mut s = String::with_capacity(32);
    for b in bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
    s
}
