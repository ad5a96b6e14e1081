//! Persistent storage for Canto, modelled on Prosody's storage manager.
//!
//! Three kinds of per-user stores plus the account table:
//!
//! * [`AccountStore`]: accounts and their SCRAM credentials (never a password);
//! * [`KeyValueStore`]: one opaque document per user and store name (roster, vCard, …);
//! * [`MapStore`]: one user's items keyed by a string (roster items, pending subscriptions);
//! * [`ArchiveStore`]: append-only, time-stamped item logs (offline messages, MAM).
//!
//! Two backends implement all of them: [`Backend::Memory`] (tests, ephemeral servers) and
//! [`Backend::Sqlite`] (WAL, `synchronous=FULL`, shared safely between the server and the CLI).
//! [`Storage`] bundles the four stores of one backend.
//!
//! Hosts and usernames are stored exactly as given: callers normalize them (nodeprep /
//! PRECIS) before calling in.

use std::path::PathBuf;
use std::sync::Arc;

pub use canto_proto::sasl::{Credentials, HashAlgo, ScramKeys};

pub mod faults;
mod memory;
mod sqlite;

pub use memory::MemoryBackend;
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
    /// (every store), atomically. Returns whether the account existed; the user's data is
    /// removed either way.
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
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the backend, creating the SQLite file (and parent dir) and running migrations.
    pub async fn open(backend: &Backend) -> Result<Storage> {
        match backend {
            Backend::Memory => Ok(Storage::memory()),
            Backend::Sqlite { path } => Ok(Storage::from_backend(Arc::new(
                SqliteBackend::open(path).await?,
            ))),
        }
    }

    /// A fresh, empty in-memory backend.
    pub fn memory() -> Storage {
        Storage::from_backend(Arc::new(MemoryBackend::new()))
    }

    /// Bundles one object implementing all four store traits.
    pub fn from_backend<B>(backend: Arc<B>) -> Storage
    where
        B: AccountStore + KeyValueStore + MapStore + ArchiveStore + 'static,
    {
        Storage {
            accounts: backend.clone(),
            kv: backend.clone(),
            map: backend.clone(),
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
