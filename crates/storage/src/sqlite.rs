//! The SQLite backend.
//!
//! * WAL journal with `synchronous=FULL`: a commit that has returned survives SIGKILL and
//!   power loss.
//! * `busy_timeout` plus `BEGIN IMMEDIATE` for multi-statement writes, so several processes
//!   (the server and `canto user …`) can share one file: a writer waits for the lock instead
//!   of failing, and no read transaction ever has to be upgraded to a write one.
//! * The schema is created by embedded, ordered migrations recorded in `schema_version`.
//! * Only runtime queries: nothing needs a database at build time.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::metrics::timed;
use crate::{
    AccountStore, ArchiveItem, ArchiveQuery, ArchiveStore, BatchItem, Credentials, KeyValueStore,
    MapStore, NewArchiveItem, Result, ScramKeys, StorageError, new_item_id,
};

/// How long a writer waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per pool: SQLite has one writer at a time, but WAL readers run in parallel.
const MAX_CONNECTIONS: u32 = 8;

/// Rows per multi-row `INSERT` in [`ArchiveStore::append_many`]: 7 parameters each, far below
/// SQLite's 32,766 per statement; every full chunk reuses one cached prepared statement.
const ROWS_PER_INSERT: usize = 256;

/// A time-bounded archive query whose `[start, end]` range holds at most this many of the
/// owner's items is answered from that range (`archive_user_stamp`, then sorted by `seq`);
/// a larger range walks the owner's seq index instead, where the first `limit` matches come
/// early. Either plan returns exactly the same items.
const STAMP_RANGE_ROWS: i64 = 10_000;

/// SQLITE_FULL: the primary result code for "database or disk is full".
const SQLITE_FULL: i64 = 13;

/// The schema migrations, applied in order; migration `i` brings the schema to version
/// `i + 1`. Never edit a released migration: append a new one.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE accounts (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        sha1_salt BLOB NOT NULL,
        sha1_iterations INTEGER NOT NULL,
        sha1_stored_key BLOB NOT NULL,
        sha1_server_key BLOB NOT NULL,
        sha256_salt BLOB NOT NULL,
        sha256_iterations INTEGER NOT NULL,
        sha256_stored_key BLOB NOT NULL,
        sha256_server_key BLOB NOT NULL,
        PRIMARY KEY (host, username)
    ) WITHOUT ROWID",
        "CREATE TABLE kv (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        store TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (host, username, store)
    ) WITHOUT ROWID",
        "CREATE TABLE map (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        store TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (host, username, store, key)
    ) WITHOUT ROWID",
        "CREATE TABLE archive (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        store TEXT NOT NULL,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        with_jid TEXT NOT NULL,
        stamp_ms INTEGER NOT NULL,
        data BLOB NOT NULL
    )",
        "CREATE INDEX archive_user_seq ON archive (store, host, username, seq)",
        "CREATE INDEX archive_user_with_seq ON archive (store, host, username, with_jid, seq)",
        "CREATE INDEX archive_store_stamp ON archive (store, stamp_ms)",
        // For deleting an account's items across all stores.
        "CREATE INDEX archive_owner ON archive (host, username)",
    ],
    // 2: start/end queries find their time range in the owner's items (with the implicit rowid,
    // i.e. `seq`, at the end of every entry) instead of walking the whole seq index; item counts
    // per archive and partner are kept by triggers, so the count of a whole archive or of one
    // conversation (XEP-0059 `<count/>` on every MAM page) is a lookup, not a walk over the
    // archive.
    &[
        "CREATE INDEX archive_user_stamp ON archive (store, host, username, stamp_ms)",
        "CREATE TABLE archive_counts (
        store TEXT NOT NULL,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        with_jid TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (store, host, username, with_jid)
    ) WITHOUT ROWID",
        "INSERT INTO archive_counts (store, host, username, with_jid, n)
        SELECT store, host, username, with_jid, COUNT(*) FROM archive
        GROUP BY store, host, username, with_jid",
        "CREATE TRIGGER archive_count_insert AFTER INSERT ON archive BEGIN
        INSERT INTO archive_counts (store, host, username, with_jid, n)
            VALUES (NEW.store, NEW.host, NEW.username, NEW.with_jid, 1)
            ON CONFLICT (store, host, username, with_jid) DO UPDATE SET n = n + 1;
    END",
        // A conversation emptied leaves no row behind (deleted accounts leave no trace).
        "CREATE TRIGGER archive_count_delete AFTER DELETE ON archive BEGIN
        UPDATE archive_counts SET n = n - 1
            WHERE store = OLD.store AND host = OLD.host AND username = OLD.username
            AND with_jid = OLD.with_jid;
        DELETE FROM archive_counts
            WHERE store = OLD.store AND host = OLD.host AND username = OLD.username
            AND with_jid = OLD.with_jid AND n <= 0;
    END",
        // Items are never moved, but should one be, the counts follow.
        "CREATE TRIGGER archive_count_move AFTER UPDATE OF store, host, username, with_jid
    ON archive BEGIN
        UPDATE archive_counts SET n = n - 1
            WHERE store = OLD.store AND host = OLD.host AND username = OLD.username
            AND with_jid = OLD.with_jid;
        DELETE FROM archive_counts
            WHERE store = OLD.store AND host = OLD.host AND username = OLD.username
            AND with_jid = OLD.with_jid AND n <= 0;
        INSERT INTO archive_counts (store, host, username, with_jid, n)
            VALUES (NEW.store, NEW.host, NEW.username, NEW.with_jid, 1)
            ON CONFLICT (store, host, username, with_jid) DO UPDATE SET n = n + 1;
    END",
    ],
    // 3: publish-subscribe services (XEP-0060, PEP). No foreign keys: a node's affiliations,
    // subscriptions and items are deleted explicitly in the transaction deleting the node (or
    // the service, or the account), like an account's rows.
    &[
        "CREATE TABLE pubsub_nodes (
        service TEXT NOT NULL,
        node TEXT NOT NULL,
        config BLOB NOT NULL,
        PRIMARY KEY (service, node)
    ) WITHOUT ROWID",
        "CREATE TABLE pubsub_affiliations (
        service TEXT NOT NULL,
        node TEXT NOT NULL,
        jid TEXT NOT NULL,
        affiliation TEXT NOT NULL,
        PRIMARY KEY (service, node, jid)
    ) WITHOUT ROWID",
        "CREATE TABLE pubsub_subscriptions (
        service TEXT NOT NULL,
        node TEXT NOT NULL,
        jid TEXT NOT NULL,
        subid TEXT NOT NULL,
        state TEXT NOT NULL,
        options BLOB NOT NULL,
        PRIMARY KEY (service, node, jid, subid)
    ) WITHOUT ROWID",
        // `seq`: publish order, never reused (AUTOINCREMENT); a republished id gets a new one.
        "CREATE TABLE pubsub_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        node TEXT NOT NULL,
        item_id TEXT NOT NULL,
        publisher TEXT NOT NULL,
        stamp_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (service, node, item_id)
    )",
        "CREATE INDEX pubsub_items_seq ON pubsub_items (service, node, seq)",
    ],
];

/// Maps a driver error onto [`StorageError`]: SQLITE_FULL (any extended code) becomes
/// [`StorageError::Full`], decoding failures [`StorageError::Corrupt`].
pub(crate) fn db_err(e: sqlx::Error) -> StorageError {
    match &e {
        sqlx::Error::Database(d) => {
            let full = d
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| c & 0xff == SQLITE_FULL);
            if full {
                StorageError::Full(d.message().to_owned())
            } else {
                StorageError::Database(e.to_string())
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StorageError::Corrupt(e.to_string()),
        _ => StorageError::Database(e.to_string()),
    }
}

/// A `usize` as an SQLite integer (saturating; counts never get near `i64::MAX`).
pub(crate) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An SQLite count as a `usize`.
pub(crate) fn count_to_usize(n: i64) -> Result<usize> {
    usize::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}

/// All four stores in one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    pub(crate) pool: SqlitePool,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, and its parent directory, and
    /// brings the schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteBackend> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Two processes opening a fresh file at once (the server and `canto user add`): the
        // switch to WAL and WAL recovery can answer SQLITE_BUSY at once, without waiting out
        // the busy timeout. That is transient: try again, briefly.
        let mut attempt = 0u32;
        loop {
            match Self::connect(options.clone()).await {
                Err(StorageError::Database(m))
                    if m.contains("database is locked") && attempt < 20 =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "SQLite busy while opening; retrying");
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                }
                Ok(backend) => {
                    tracing::debug!(path = %path.display(), "opened SQLite storage");
                    return Ok(backend);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqliteBackend> {
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let backend = SqliteBackend { pool };
        if let Err(e) = backend.migrate().await {
            backend.pool.close().await;
            return Err(e);
        }
        Ok(backend)
    }

    /// Closes every connection of the pool (checkpointing the WAL); later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the migrations not yet recorded in `schema_version`, all in one write
    /// transaction so concurrent openers serialize.
    async fn migrate(&self) -> Result<()> {
        let mut tx = WriteTx::begin(&self.pool).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
        let known = to_i64(MIGRATIONS.len());
        if current > known {
            return Err(StorageError::Database(format!(
                "database schema version {current} is newer than this build supports ({known})"
            )));
        }
        let current = usize::try_from(current)
            .map_err(|_| StorageError::Corrupt(format!("schema version {current}")))?;
        for (i, statements) in MIGRATIONS.iter().enumerate().skip(current) {
            for statement in *statements {
                sqlx::query(*statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(to_i64(i + 1))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tracing::info!(version = i + 1, "migrated storage schema");
        }
        tx.commit().await
    }
}

/// Reads one hash's keys from columns `{prefix}_salt`, `{prefix}_iterations`, ….
fn keys_from_row(row: &SqliteRow, prefix: &str) -> Result<ScramKeys> {
    let col = |name: &str| format!("{prefix}_{name}");
    let iterations: i64 = row.try_get(col("iterations").as_str()).map_err(db_err)?;
    Ok(ScramKeys {
        salt: row.try_get(col("salt").as_str()).map_err(db_err)?,
        iterations: u32::try_from(iterations)
            .map_err(|_| StorageError::Corrupt(format!("{prefix} iteration count {iterations}")))?,
        stored_key: row.try_get(col("stored_key").as_str()).map_err(db_err)?,
        server_key: row.try_get(col("server_key").as_str()).map_err(db_err)?,
    })
}

/// Inserts (or with `replace`, upserts) one account row.
async fn insert_account<'e, E>(
    executor: E,
    host: &str,
    username: &str,
    creds: &Credentials,
    replace: bool,
) -> Result<u64>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let sql = if replace {
        "INSERT INTO accounts (host, username,
             sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (host, username) DO UPDATE SET
             sha1_salt = excluded.sha1_salt,
             sha1_iterations = excluded.sha1_iterations,
             sha1_stored_key = excluded.sha1_stored_key,
             sha1_server_key = excluded.sha1_server_key,
             sha256_salt = excluded.sha256_salt,
             sha256_iterations = excluded.sha256_iterations,
             sha256_stored_key = excluded.sha256_stored_key,
             sha256_server_key = excluded.sha256_server_key"
    } else {
        "INSERT INTO accounts (host, username,
             sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (host, username) DO NOTHING"
    };
    let done = sqlx::query(sql)
        .bind(host)
        .bind(username)
        .bind(creds.sha1.salt.as_slice())
        .bind(i64::from(creds.sha1.iterations))
        .bind(creds.sha1.stored_key.as_slice())
        .bind(creds.sha1.server_key.as_slice())
        .bind(creds.sha256.salt.as_slice())
        .bind(i64::from(creds.sha256.iterations))
        .bind(creds.sha256.stored_key.as_slice())
        .bind(creds.sha256.server_key.as_slice())
        .execute(executor)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}

#[async_trait::async_trait]
impl AccountStore for SqliteBackend {
    async fn create(&self, host: &str, username: &str, creds: &Credentials) -> Result<()> {
        let _t = timed("account_create");
        match insert_account(&self.pool, host, username, creds, false).await? {
            0 => Err(StorageError::AlreadyExists),
            _ => Ok(()),
        }
    }

    async fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<bool> {
        let _t = timed("account_set_credentials");
        let done = sqlx::query(
            "UPDATE accounts SET
                 sha1_salt = ?, sha1_iterations = ?, sha1_stored_key = ?, sha1_server_key = ?,
                 sha256_salt = ?, sha256_iterations = ?, sha256_stored_key = ?,
                 sha256_server_key = ?
             WHERE host = ? AND username = ?",
        )
        .bind(creds.sha1.salt.as_slice())
        .bind(i64::from(creds.sha1.iterations))
        .bind(creds.sha1.stored_key.as_slice())
        .bind(creds.sha1.server_key.as_slice())
        .bind(creds.sha256.salt.as_slice())
        .bind(i64::from(creds.sha256.iterations))
        .bind(creds.sha256.stored_key.as_slice())
        .bind(creds.sha256.server_key.as_slice())
        .bind(host)
        .bind(username)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>> {
        let _t = timed("account_credentials");
        let row = sqlx::query(
            "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                    sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
             FROM accounts WHERE host = ? AND username = ?",
        )
        .bind(host)
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|row| {
            Ok(Credentials {
                sha1: keys_from_row(&row, "sha1")?,
                sha256: keys_from_row(&row, "sha256")?,
            })
        })
        .transpose()
    }

    async fn exists(&self, host: &str, username: &str) -> Result<bool> {
        let _t = timed("account_exists");
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM accounts WHERE host = ? AND username = ?")
                .bind(host)
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(found.is_some())
    }

    async fn delete(&self, host: &str, username: &str) -> Result<bool> {
        let _t = timed("account_delete");
        let mut tx = WriteTx::begin(&self.pool).await?;
        let existed = sqlx::query("DELETE FROM accounts WHERE host = ? AND username = ?")
            .bind(host)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
            > 0;
        for sql in [
            "DELETE FROM kv WHERE host = ? AND username = ?",
            "DELETE FROM map WHERE host = ? AND username = ?",
            "DELETE FROM archive WHERE host = ? AND username = ?",
        ] {
            sqlx::query(sql)
                .bind(host)
                .bind(username)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        // The account's PEP service.
        crate::sqlite_pubsub::delete_rows(&mut tx, &format!("{username}@{host}"), None).await?;
        tx.commit().await?;
        Ok(existed)
    }

    async fn list(&self, host: &str) -> Result<Vec<String>> {
        let _t = timed("account_list");
        sqlx::query_scalar("SELECT username FROM accounts WHERE host = ? ORDER BY username")
            .bind(host)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn import(&self, accounts: &[(String, String, Credentials)]) -> Result<usize> {
        let _t = timed("account_import");
        let mut tx = WriteTx::begin(&self.pool).await?;
        for (host, username, creds) in accounts {
            insert_account(&mut *tx, host, username, creds, true).await?;
        }
        tx.commit().await?;
        Ok(accounts.len())
    }
}

#[async_trait::async_trait]
impl KeyValueStore for SqliteBackend {
    async fn get(&self, store: &str, host: &str, user: &str) -> Result<Option<Vec<u8>>> {
        let _t = timed("kv_get");
        sqlx::query_scalar("SELECT value FROM kv WHERE host = ? AND username = ? AND store = ?")
            .bind(host)
            .bind(user)
            .bind(store)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn set(&self, store: &str, host: &str, user: &str, value: Option<&[u8]>) -> Result<()> {
        let _t = timed("kv_set");
        let query = match value {
            Some(value) => sqlx::query(
                "INSERT INTO kv (host, username, store, value) VALUES (?, ?, ?, ?)
                 ON CONFLICT (host, username, store) DO UPDATE SET value = excluded.value",
            )
            .bind(host)
            .bind(user)
            .bind(store)
            .bind(value),
            None => sqlx::query("DELETE FROM kv WHERE host = ? AND username = ? AND store = ?")
                .bind(host)
                .bind(user)
                .bind(store),
        };
        query.execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl MapStore for SqliteBackend {
    async fn get(&self, store: &str, host: &str, user: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let _t = timed("map_get");
        sqlx::query_scalar(
            "SELECT value FROM map WHERE host = ? AND username = ? AND store = ? AND key = ?",
        )
        .bind(host)
        .bind(user)
        .bind(store)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)
    }

    async fn set(
        &self,
        store: &str,
        host: &str,
        user: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let _t = timed("map_set");
        let query = match value {
            Some(value) => sqlx::query(
                "INSERT INTO map (host, username, store, key, value) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (host, username, store, key) DO UPDATE SET value = excluded.value",
            )
            .bind(host)
            .bind(user)
            .bind(store)
            .bind(key)
            .bind(value),
            None => sqlx::query(
                "DELETE FROM map WHERE host = ? AND username = ? AND store = ? AND key = ?",
            )
            .bind(host)
            .bind(user)
            .bind(store)
            .bind(key),
        };
        query.execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn get_all(&self, store: &str, host: &str, user: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let _t = timed("map_get_all");
        let rows = sqlx::query(
            "SELECT key, value FROM map WHERE host = ? AND username = ? AND store = ?
             ORDER BY key",
        )
        .bind(host)
        .bind(user)
        .bind(store)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key").map_err(db_err)?,
                    row.try_get("value").map_err(db_err)?,
                ))
            })
            .collect()
    }

    async fn clear(&self, store: &str, host: &str, user: &str) -> Result<()> {
        let _t = timed("map_clear");
        sqlx::query("DELETE FROM map WHERE host = ? AND username = ? AND store = ?")
            .bind(host)
            .bind(user)
            .bind(store)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// `ids` as a JSON array of strings, for `json_each(?)`: one bind parameter whatever the
/// number of ids (SQLite caps the number of parameters per statement).
pub(crate) fn json_string_array(ids: &[String]) -> String {
    let mut out = String::from("[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in id.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// How an archive query finds its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Walk the owner's `(store, host, username[, with_jid], seq)` index in `seq` order (or
    /// look up `ids` through the unique `id` index). Keyset paging (`after_id` /
    /// `before_id`) starts the walk at the named item: never an OFFSET-like scan.
    Seq,
    /// Read the owner's `[start, end]` time range from `archive_user_stamp`: for pages, the
    /// `seq`s of the range (index only), sorted and cut to the page, then those rows; for
    /// ranges of at most [`STAMP_RANGE_ROWS`] items, or counts.
    Stamp,
}

/// Appends `FROM archive` and the `WHERE` clause selecting `q`'s items of one user's archive
/// (no ordering, no limit). An unknown `after_id` / `before_id` makes the sub-select NULL,
/// which matches nothing.
fn push_from_where(
    b: &mut QueryBuilder<Sqlite>,
    plan: Plan,
    store: &str,
    host: &str,
    user: &str,
    q: &ArchiveQuery,
) {
    // Index choice: SQLite has no statistics without ANALYZE, so it is steered, with unary
    // `+` (which keeps a term from using an index) for the seq plan and INDEXED BY for the
    // stamp plan. With `ids`, look them up through the unique `id` index; otherwise walk the
    // owner's seq index; never the store-wide stamp index, which spans all users.
    let (from, owner, stamp) = match plan {
        Plan::Seq if q.ids.is_some() => (" FROM archive", "+", "+"),
        Plan::Seq => (" FROM archive", "", "+"),
        Plan::Stamp => (" FROM archive INDEXED BY archive_user_stamp", "", ""),
    };
    b.push(from)
        .push(format_args!(" WHERE {owner}store = "))
        .push_bind(store)
        .push(format_args!(" AND {owner}host = "))
        .push_bind(host)
        .push(format_args!(" AND {owner}username = "))
        .push_bind(user);
    if let Some(with) = &q.with {
        b.push(format_args!(" AND {owner}with_jid = "))
            .push_bind(with.as_str());
    }
    if let Some(start) = q.start_ms {
        b.push(format_args!(" AND {stamp}stamp_ms >= "))
            .push_bind(start);
    }
    if let Some(end) = q.end_ms {
        b.push(format_args!(" AND {stamp}stamp_ms <= "))
            .push_bind(end);
    }
    for (op, id) in [(">", &q.after_id), ("<", &q.before_id)] {
        if let Some(id) = id {
            b.push(" AND seq ")
                .push(op)
                .push(" (SELECT seq FROM archive WHERE id = ")
                .push_bind(id.as_str())
                .push(" AND store = ")
                .push_bind(store)
                .push(" AND host = ")
                .push_bind(host)
                .push(" AND username = ")
                .push_bind(user)
                .push(")");
        }
    }
    if let Some(ids) = &q.ids {
        b.push(" AND id IN (SELECT value FROM json_each(")
            .push_bind(json_string_array(ids))
            .push("))");
    }
}

/// The statement of [`ArchiveStore::query`] for `q`, after `head` (the query-plan tests put
/// `EXPLAIN QUERY PLAN` there).
fn select_items(
    head: &str,
    plan: Plan,
    store: &str,
    host: &str,
    user: &str,
    q: &ArchiveQuery,
) -> QueryBuilder<Sqlite> {
    let order = if q.reverse {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq ASC"
    };
    let mut b = QueryBuilder::new(head);
    b.push("SELECT id, seq, stamp_ms, with_jid, data");
    if plan == Plan::Stamp {
        // The page's seqs come from the stamp index alone (a bounded sort keeps the first
        // `limit`); only the page's rows are read from the table.
        b.push(" FROM archive WHERE seq IN (SELECT seq");
        push_from_where(&mut b, plan, store, host, user, q);
        b.push(order);
        if let Some(limit) = q.limit {
            b.push(" LIMIT ").push_bind(to_i64(limit));
        }
        b.push(")").push(order);
        return b;
    }
    push_from_where(&mut b, plan, store, host, user, q);
    b.push(order);
    if let Some(limit) = q.limit {
        b.push(" LIMIT ").push_bind(to_i64(limit));
    }
    b
}

/// The statement of [`ArchiveStore::count`] for `q`, after `head`.
fn select_count(
    head: &str,
    plan: Plan,
    store: &str,
    host: &str,
    user: &str,
    q: &ArchiveQuery,
) -> QueryBuilder<Sqlite> {
    let mut b = QueryBuilder::new(head);
    b.push("SELECT COUNT(*)");
    push_from_where(&mut b, plan, store, host, user, q);
    b
}

/// The statement counting the owner's items in `q`'s time range, up to
/// [`STAMP_RANGE_ROWS`] + 1 (an index-only walk of at most that many entries).
fn select_stamp_range(
    head: &str,
    store: &str,
    host: &str,
    user: &str,
    q: &ArchiveQuery,
) -> QueryBuilder<Sqlite> {
    let mut b = QueryBuilder::new(head);
    b.push("SELECT COUNT(*) FROM (SELECT 1 FROM archive INDEXED BY archive_user_stamp")
        .push(" WHERE store = ")
        .push_bind(store)
        .push(" AND host = ")
        .push_bind(host)
        .push(" AND username = ")
        .push_bind(user);
    if let Some(start) = q.start_ms {
        b.push(" AND stamp_ms >= ").push_bind(start);
    }
    if let Some(end) = q.end_ms {
        b.push(" AND stamp_ms <= ").push_bind(end);
    }
    b.push(" LIMIT ").push_bind(STAMP_RANGE_ROWS + 1).push(")");
    b
}

impl SqliteBackend {
    /// The plan for `q`'s page: [`Plan::Stamp`] when it has a time bound whose range is
    /// small (a walk in seq order could have to skip everything before the range).
    async fn plan(&self, store: &str, host: &str, user: &str, q: &ArchiveQuery) -> Result<Plan> {
        if q.ids.is_some() || (q.start_ms.is_none() && q.end_ms.is_none()) {
            return Ok(Plan::Seq);
        }
        let in_range: i64 = select_stamp_range("", store, host, user, q)
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(if in_range <= STAMP_RANGE_ROWS {
            Plan::Stamp
        } else {
            Plan::Seq
        })
    }

    /// The plan for counting `q`: a time range is counted in the stamp index (index only,
    /// however large) unless a `with` filter needs the table for every item in a large range.
    async fn count_plan(
        &self,
        store: &str,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Plan> {
        if q.ids.is_none() && q.with.is_none() && (q.start_ms.is_some() || q.end_ms.is_some()) {
            return Ok(Plan::Stamp);
        }
        self.plan(store, host, user, q).await
    }
}

/// Whether `q` selects a whole archive or one whole conversation (no filter but `with`;
/// `limit` and `reverse` do not matter): counts kept in `archive_counts`.
fn counted(q: &ArchiveQuery) -> bool {
    let ArchiveQuery {
        with: _,
        start_ms,
        end_ms,
        after_id,
        before_id,
        ids,
        limit: _,
        reverse: _,
    } = q;
    start_ms.is_none()
        && end_ms.is_none()
        && after_id.is_none()
        && before_id.is_none()
        && ids.is_none()
}

#[async_trait::async_trait]
impl ArchiveStore for SqliteBackend {
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
        let _t = timed("archive_append");
        let id = new_item_id();
        let insert = sqlx::query(
            "INSERT INTO archive (id, store, host, username, with_jid, stamp_ms, data)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(store)
        .bind(host)
        .bind(user)
        .bind(with)
        .bind(stamp_ms)
        .bind(data);
        let Some(max) = max_items else {
            // A single statement commits on its own.
            insert.execute(&self.pool).await.map_err(db_err)?;
            return Ok(id);
        };
        let mut tx = WriteTx::begin(&self.pool).await?;
        let have: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM archive WHERE store = ? AND host = ? AND username = ?",
        )
        .bind(store)
        .bind(host)
        .bind(user)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if have >= to_i64(max) {
            // Dropping `tx` rolls back.
            return Err(StorageError::Limit(format!(
                "archive {store} of {user}@{host} holds {have} items (max {max})"
            )));
        }
        insert.execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await?;
        Ok(id)
    }

    async fn append_many(
        &self,
        store: &str,
        host: &str,
        user: &str,
        items: &[NewArchiveItem],
    ) -> Result<Vec<String>> {
        let _t = timed("archive_append_many");
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = items.iter().map(|_| new_item_id()).collect();
        let mut tx = WriteTx::begin(&self.pool).await?;
        for (chunk, chunk_ids) in items
            .chunks(ROWS_PER_INSERT)
            .zip(ids.chunks(ROWS_PER_INSERT))
        {
            // Multi-row VALUES insert in list order, so `seq` follows `items`.
            let mut b = QueryBuilder::<Sqlite>::new(
                "INSERT INTO archive (id, store, host, username, with_jid, stamp_ms, data) ",
            );
            b.push_values(chunk.iter().zip(chunk_ids), |mut row, (item, id)| {
                row.push_bind(id.as_str())
                    .push_bind(store)
                    .push_bind(host)
                    .push_bind(user)
                    .push_bind(item.with.as_str())
                    .push_bind(item.stamp_ms)
                    .push_bind(item.data.as_slice());
            });
            b.build().execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn append_batch(&self, store: &str, items: &[BatchItem]) -> Result<Vec<String>> {
        let _t = timed("archive_append_batch");
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = items.iter().map(|_| new_item_id()).collect();
        let mut tx = WriteTx::begin(&self.pool).await?;
        for (chunk, chunk_ids) in items
            .chunks(ROWS_PER_INSERT)
            .zip(ids.chunks(ROWS_PER_INSERT))
        {
            // Multi-row VALUES insert in list order, so `seq` follows `items`.
            let mut b = QueryBuilder::<Sqlite>::new(
                "INSERT INTO archive (id, store, host, username, with_jid, stamp_ms, data) ",
            );
            b.push_values(chunk.iter().zip(chunk_ids), |mut row, (b, id)| {
                row.push_bind(id.as_str())
                    .push_bind(store)
                    .push_bind(b.host.as_str())
                    .push_bind(b.user.as_str())
                    .push_bind(b.item.with.as_str())
                    .push_bind(b.item.stamp_ms)
                    .push_bind(b.item.data.as_slice());
            });
            b.build().execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn query(
        &self,
        store: &str,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<ArchiveItem>> {
        let _t = timed("archive_query");
        let plan = self.plan(store, host, user, q).await?;
        let mut b = select_items("", plan, store, host, user, q);
        let rows = b.build().fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(ArchiveItem {
                    id: row.try_get("id").map_err(db_err)?,
                    seq: row.try_get("seq").map_err(db_err)?,
                    stamp_ms: row.try_get("stamp_ms").map_err(db_err)?,
                    with: row.try_get("with_jid").map_err(db_err)?,
                    data: row.try_get("data").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn count(&self, store: &str, host: &str, user: &str, q: &ArchiveQuery) -> Result<usize> {
        let _t = timed("archive_count");
        if counted(q) {
            // Kept by the archive_count_* triggers: one row per conversation.
            let mut b = QueryBuilder::<Sqlite>::new(
                "SELECT COALESCE(SUM(n), 0) FROM archive_counts WHERE store = ",
            );
            b.push_bind(store)
                .push(" AND host = ")
                .push_bind(host)
                .push(" AND username = ")
                .push_bind(user);
            if let Some(with) = &q.with {
                b.push(" AND with_jid = ").push_bind(with.as_str());
            }
            let n: i64 = b
                .build_query_scalar()
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
            return count_to_usize(n);
        }
        let plan = self.count_plan(store, host, user, q).await?;
        let mut b = select_count("", plan, store, host, user, q);
        let n: i64 = b
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        count_to_usize(n)
    }

    async fn delete(
        &self,
        store: &str,
        host: &str,
        user: &str,
        ids: Option<&[String]>,
    ) -> Result<usize> {
        let _t = timed("archive_delete");
        let query = match ids {
            None => {
                sqlx::query("DELETE FROM archive WHERE store = ? AND host = ? AND username = ?")
                    .bind(store)
                    .bind(host)
                    .bind(user)
            }
            Some(ids) => sqlx::query(
                "DELETE FROM archive WHERE store = ? AND host = ? AND username = ?
                 AND id IN (SELECT value FROM json_each(?))",
            )
            .bind(store)
            .bind(host)
            .bind(user)
            .bind(json_string_array(ids)),
        };
        let done = query.execute(&self.pool).await.map_err(db_err)?;
        usize::try_from(done.rows_affected())
            .map_err(|_| StorageError::Database("row count overflow".to_owned()))
    }

    async fn delete_older_than(&self, store: &str, stamp_ms: i64) -> Result<usize> {
        let _t = timed("archive_delete_older_than");
        let done = sqlx::query("DELETE FROM archive WHERE store = ? AND stamp_ms < ?")
            .bind(store)
            .bind(stamp_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        usize::try_from(done.rows_affected())
            .map_err(|_| StorageError::Database("row count overflow".to_owned()))
    }
}

/// A write transaction on one pooled connection, begun with `BEGIN IMMEDIATE` so that several
/// processes (server and CLI) serialize instead of failing.
///
/// sqlx's own `Transaction` loses track of the connection's state when `COMMIT` fails (SQLite
/// may already have rolled back, e.g. on `SQLITE_FULL`), and the pool then hands out a
/// connection that refuses every later `BEGIN`. Here a failed or abandoned transaction closes
/// its connection instead (SQLite rolls back what was not committed), so a full disk leaves no
/// broken connection behind and writes work again once there is space.
pub(crate) struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    done: bool,
}

impl WriteTx {
    pub(crate) async fn begin(pool: &sqlx::SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await.map_err(db_err)?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(db_err(e));
        }
        Ok(WriteTx { conn, done: false })
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        let r = sqlx::query("COMMIT").execute(&mut *self.conn).await;
        self.done = true;
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
                self.conn.close_on_drop();
                Err(db_err(e))
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned (an error or a limit): the uncommitted work dies with the connection.
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PRAGMA max_page_count` makes SQLite report SQLITE_FULL, like a full disk.
    #[tokio::test]
    async fn full_database_maps_to_full() {
        let dir = std::env::temp_dir().join(format!(
            "canto-storage-full-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let path = dir.join("full.sqlite");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("max_page_count", "40");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("connect");
        let backend = SqliteBackend { pool };
        backend.migrate().await.expect("migrate");
        let blob = vec![7u8; 16 * 1024];
        let mut stored = 0;
        let err = loop {
            match backend.append("s", "h", "u", "w", 0, &blob, None).await {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100, "never filled up");
        };
        assert!(matches!(err, StorageError::Full(_)), "{err:?}");
        // Nothing partial was stored, and the store still works for reads.
        let n = backend
            .count("s", "h", "u", &ArchiveQuery::default())
            .await
            .expect("count");
        assert_eq!(n, stored);
        backend.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every pooled connection runs with WAL, `synchronous=FULL` and a busy timeout.
    #[tokio::test]
    async fn durability_pragmas_are_set() {
        let dir = std::env::temp_dir().join(format!(
            "canto-storage-pragmas-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let backend = SqliteBackend::open(&dir.join("p.sqlite"))
            .await
            .expect("open");
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut conn = backend.pool.acquire().await.expect("acquire");
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .expect("journal_mode");
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .expect("synchronous");
            assert_eq!(sync, 2, "FULL");
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut *conn)
                .await
                .expect("busy_timeout");
            assert_eq!(busy, 10_000);
            conns.push(conn);
        }
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&backend.pool)
            .await
            .expect("version");
        assert_eq!(version, to_i64(MIGRATIONS.len()));
        drop(conns);
        backend.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_array_escapes() {
        let ids = vec!["a".to_owned(), "q\"b\\c\n".to_owned()];
        assert_eq!(json_string_array(&ids), r#"["a","q\"b\\c\u000a"]"#);
        assert_eq!(json_string_array(&[]), "[]");
    }

    /// A fresh backend in its own temp dir (removed by the caller).
    async fn temp_backend(name: &str) -> (SqliteBackend, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "canto-storage-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let backend = SqliteBackend::open(&dir.join("t.sqlite"))
            .await
            .expect("open");
        (backend, dir)
    }

    /// `EXPLAIN QUERY PLAN` of a statement built with `head` = "EXPLAIN QUERY PLAN ": the
    /// `detail` lines.
    async fn plan_of(backend: &SqliteBackend, mut b: QueryBuilder<Sqlite>) -> Vec<String> {
        let sql = b.sql().as_str().to_owned();
        assert!(!sql.to_ascii_uppercase().contains("OFFSET"), "{sql}");
        let rows = b.build().fetch_all(&backend.pool).await.expect("explain");
        rows.iter()
            .map(|r| r.try_get::<String, _>("detail").expect("detail"))
            .collect()
    }

    const EQP: &str = "EXPLAIN QUERY PLAN ";

    /// Asserts that the plan reads archive rows only through `index` with exactly `terms` and
    /// never scans the table; `sorts`: whether a temporary B-tree (a sort) is allowed.
    fn assert_plan(plan: &[String], index: &str, terms: &str, sorts: bool) {
        let want = format!("SEARCH archive USING {index} ({terms})");
        assert!(
            plan.iter().any(|l| l == &want),
            "expected `{want}` in {plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN archive")),
            "table scan in {plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.contains("archive_store_stamp")),
            "store-wide stamp index in {plan:#?}"
        );
        if !sorts {
            assert!(
                !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "sort in {plan:#?}"
            );
        }
    }

    /// The archive queries the `mam` module issues use the owner's indexes (keyset paging, no
    /// OFFSET, no table scan, no sort except over a bounded time range): a regression here
    /// makes a page from the middle of a million-item archive cost a scan.
    #[tokio::test]
    async fn archive_queries_use_the_owner_indexes() {
        let (b, dir) = temp_backend("plans").await;
        b.append("archive", "h", "u", "w@h", 1, b"x", None)
            .await
            .expect("append");
        let id = || Some("0123456789abcdef0123456789abcdef".to_owned());
        let seq_after = "store=? AND host=? AND username=? AND seq>?";
        let seq_before = "store=? AND host=? AND username=? AND seq<?";
        let owner = "store=? AND host=? AND username=?";
        let cases: Vec<(ArchiveQuery, &str, &str)> = vec![
            // The first and the last page.
            (
                ArchiveQuery {
                    limit: Some(51),
                    ..Default::default()
                },
                "INDEX archive_user_seq",
                owner,
            ),
            (
                ArchiveQuery {
                    limit: Some(51),
                    reverse: true,
                    ..Default::default()
                },
                "INDEX archive_user_seq",
                owner,
            ),
            // RSM after / before an id (XEP-0059 §2.2, §2.3).
            (
                ArchiveQuery {
                    after_id: id(),
                    limit: Some(51),
                    ..Default::default()
                },
                "INDEX archive_user_seq",
                seq_after,
            ),
            (
                ArchiveQuery {
                    before_id: id(),
                    limit: Some(51),
                    reverse: true,
                    ..Default::default()
                },
                "INDEX archive_user_seq",
                seq_before,
            ),
            // `with` (XEP-0313 §4.1.1), paged.
            (
                ArchiveQuery {
                    with: Some("w@h".into()),
                    after_id: id(),
                    limit: Some(51),
                    ..Default::default()
                },
                "INDEX archive_user_with_seq",
                "store=? AND host=? AND username=? AND with_jid=? AND seq>?",
            ),
        ];
        for (q, index, terms) in &cases {
            let plan = plan_of(&b, select_items(EQP, Plan::Seq, "archive", "h", "u", q)).await;
            assert_plan(&plan, index, terms, false);
            // The sub-select of after/before finds the named item through the unique id.
            if q.after_id.is_some() || q.before_id.is_some() {
                assert_plan(&plan, "INDEX sqlite_autoindex_archive_1", "id=?", false);
            }
        }
        // A time range walks the seq index (large ranges) …
        let window = ArchiveQuery {
            start_ms: Some(1000),
            end_ms: Some(2000),
            limit: Some(51),
            ..Default::default()
        };
        let plan = plan_of(
            &b,
            select_items(EQP, Plan::Seq, "archive", "h", "u", &window),
        )
        .await;
        assert_plan(&plan, "INDEX archive_user_seq", owner, false);
        // … or reads the range, which the probe has bounded, and sorts it.
        let stamp = "store=? AND host=? AND username=? AND stamp_ms>? AND stamp_ms<?";
        // (the page's seqs from the index alone, then those rows by rowid).
        let plan = plan_of(
            &b,
            select_items(EQP, Plan::Stamp, "archive", "h", "u", &window),
        )
        .await;
        assert_plan(&plan, "COVERING INDEX archive_user_stamp", stamp, true);
        assert_plan(&plan, "INTEGER PRIMARY KEY", "rowid=?", true);
        let plan = plan_of(&b, select_stamp_range(EQP, "archive", "h", "u", &window)).await;
        assert_plan(&plan, "COVERING INDEX archive_user_stamp", stamp, false);
        let start_only = ArchiveQuery {
            start_ms: Some(1000),
            ..Default::default()
        };
        let plan = plan_of(
            &b,
            select_items(EQP, Plan::Stamp, "archive", "h", "u", &start_only),
        )
        .await;
        assert_plan(
            &plan,
            "COVERING INDEX archive_user_stamp",
            "store=? AND host=? AND username=? AND stamp_ms>?",
            true,
        );
        let plan = plan_of(
            &b,
            select_count(EQP, Plan::Stamp, "archive", "h", "u", &start_only),
        )
        .await;
        assert_plan(
            &plan,
            "COVERING INDEX archive_user_stamp",
            "store=? AND host=? AND username=? AND stamp_ms>?",
            false,
        );
        // Counts read the index only.
        let all = ArchiveQuery::default();
        let plan = plan_of(&b, select_count(EQP, Plan::Seq, "archive", "h", "u", &all)).await;
        // Any of the owner's indexes holds one entry per item; SQLite picks one.
        let index = if plan.iter().any(|l| l.contains("archive_user_stamp")) {
            "COVERING INDEX archive_user_stamp"
        } else {
            "COVERING INDEX archive_user_seq"
        };
        assert_plan(&plan, index, owner, false);
        let with = ArchiveQuery {
            with: Some("w@h".into()),
            ..Default::default()
        };
        let plan = plan_of(&b, select_count(EQP, Plan::Seq, "archive", "h", "u", &with)).await;
        assert_plan(
            &plan,
            "COVERING INDEX archive_user_with_seq",
            "store=? AND host=? AND username=? AND with_jid=?",
            false,
        );
        let plan = plan_of(
            &b,
            select_count(EQP, Plan::Stamp, "archive", "h", "u", &window),
        )
        .await;
        assert_plan(&plan, "COVERING INDEX archive_user_stamp", stamp, false);
        // Ids through the unique id index.
        let ids = ArchiveQuery {
            ids: Some(vec!["a".into()]),
            ..Default::default()
        };
        let plan = plan_of(&b, select_count(EQP, Plan::Seq, "archive", "h", "u", &ids)).await;
        assert_plan(&plan, "INDEX sqlite_autoindex_archive_1", "id=?", false);
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `pubsub_items` read only through `index` with exactly `terms`, never scanned; `sorts`:
    /// whether a temporary B-tree (a sort) is allowed.
    fn assert_item_plan(plan: &[String], index: &str, terms: &str, sorts: bool) {
        let want = format!("SEARCH pubsub_items USING {index} ({terms})");
        assert!(
            plan.iter().any(|l| l == &want),
            "expected `{want}` in {plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN pubsub_items")),
            "table scan in {plan:#?}"
        );
        if !sorts {
            assert!(
                !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "sort in {plan:#?}"
            );
        }
    }

    /// Item pages of a node walk `pubsub_items_seq` from the keyset bound in either order:
    /// no OFFSET, no table scan, no sort; after/before ids are found through the unique
    /// (service, node, item_id) index. Requested ids are looked up there too (then sorted: as
    /// many rows as ids), not found by walking the node.
    #[tokio::test]
    async fn pubsub_item_pages_use_the_seq_index() {
        use crate::sqlite_pubsub::select_items;
        use crate::{ItemQuery, PubsubItem, PubsubStore};
        let (b, dir) = temp_backend("pubsub-plans").await;
        assert!(b.create_node("s", "n", b"c", None).await.expect("create"));
        for id in ["a", "b"] {
            let item = PubsubItem {
                id: id.to_owned(),
                seq: 0,
                publisher: "p@h".to_owned(),
                stamp_ms: 1,
                payload: b"x".to_vec(),
            };
            b.publish("s", "n", &item, None).await.expect("publish");
        }
        let id = || Some("a".to_owned());
        let node = "service=? AND node=?";
        let lower = "service=? AND node=? AND seq>?";
        let upper = "service=? AND node=? AND seq<?";
        let both = "service=? AND node=? AND seq>? AND seq<?";
        let q = |oldest_first, after_id, before_id| ItemQuery {
            oldest_first,
            after_id,
            before_id,
            limit: Some(20),
            ids: None,
        };
        let cases = [
            // First pages.
            (q(false, None, None), node),
            (q(true, None, None), node),
            // Newest first: after = older, before = newer.
            (q(false, id(), None), upper),
            (q(false, None, id()), lower),
            (q(false, id(), id()), both),
            // Oldest first: after = newer, before = older.
            (q(true, id(), None), lower),
            (q(true, None, id()), upper),
            (q(true, id(), id()), both),
        ];
        let by_id = "service=? AND node=? AND item_id=?";
        for (q, terms) in &cases {
            let plan = plan_of(&b, select_items(EQP, "s", "n", q)).await;
            assert_item_plan(&plan, "INDEX pubsub_items_seq", terms, false);
            if q.after_id.is_some() || q.before_id.is_some() {
                assert_item_plan(
                    &plan,
                    "COVERING INDEX sqlite_autoindex_pubsub_items_1",
                    by_id,
                    false,
                );
            }
        }
        for (mut q, _) in cases {
            q.ids = Some(vec!["a".to_owned(), "b".to_owned()]);
            let plan = plan_of(&b, select_items(EQP, "s", "n", &q)).await;
            assert_item_plan(&plan, "INDEX sqlite_autoindex_pubsub_items_1", by_id, true);
            assert!(
                !plan.iter().any(|l| l.contains("pubsub_items_seq")),
                "seq index walk in {plan:#?}"
            );
        }
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Both plans return the same items, also when stamps are not in append order; the probe
    /// picks the stamp plan only for small ranges.
    #[tokio::test]
    async fn time_range_plans_agree() {
        let (b, dir) = temp_backend("stamp-plans").await;
        let n = usize::try_from(STAMP_RANGE_ROWS).expect("small") + 500;
        // Stamps mostly increasing, with a backwards clock step every 97 items.
        let items: Vec<NewArchiveItem> = (0..n)
            .map(|i| {
                let i = i64::try_from(i).expect("small");
                NewArchiveItem {
                    with: if i % 3 == 0 { "a@h" } else { "b@h" }.to_owned(),
                    stamp_ms: i * 10 - if i % 97 == 0 { 5000 } else { 0 },
                    data: i.to_string().into_bytes(),
                }
            })
            .collect();
        let ids = b
            .append_many("archive", "h", "u", &items)
            .await
            .expect("append_many");
        let queries = [
            (Some(40_000), Some(42_000), None, None, false),
            (Some(40_000), Some(42_000), Some("a@h"), None, false),
            (Some(40_000), None, None, None, false),
            (None, Some(3_000), None, None, true),
            (
                Some(40_000),
                Some(60_000),
                None,
                Some(ids[4100].clone()),
                false,
            ),
            (Some(0), None, None, None, false),
        ];
        for (start, end, with, after, reverse) in queries {
            let q = ArchiveQuery {
                start_ms: start,
                end_ms: end,
                with: with.map(str::to_owned),
                after_id: after,
                reverse,
                limit: Some(51),
                ..Default::default()
            };
            let mut results = Vec::new();
            for plan in [Plan::Seq, Plan::Stamp] {
                let rows = select_items("", plan, "archive", "h", "u", &q)
                    .build()
                    .fetch_all(&b.pool)
                    .await
                    .expect("query");
                let seqs: Vec<i64> = rows.iter().map(|r| r.get("seq")).collect();
                let mut cq = select_count("", plan, "archive", "h", "u", &q);
                let count: i64 = cq
                    .build_query_scalar()
                    .fetch_one(&b.pool)
                    .await
                    .expect("count");
                results.push((seqs, count));
            }
            assert_eq!(results[0], results[1], "{q:?}");
            assert!(!results[0].0.is_empty(), "{q:?}");
            // What the store answers is the same again.
            let items = b.query("archive", "h", "u", &q).await.expect("query");
            let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
            assert_eq!(seqs, results[0].0, "{q:?}");
            assert_eq!(
                b.count("archive", "h", "u", &q).await.expect("count"),
                usize::try_from(results[0].1).expect("count")
            );
        }
        let small = ArchiveQuery {
            start_ms: Some(40_000),
            end_ms: Some(42_000),
            ..Default::default()
        };
        assert_eq!(
            b.plan("archive", "h", "u", &small).await.expect("plan"),
            Plan::Stamp
        );
        let large = ArchiveQuery {
            start_ms: Some(0),
            ..Default::default()
        };
        assert_eq!(
            b.plan("archive", "h", "u", &large).await.expect("plan"),
            Plan::Seq
        );
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The per-archive counts kept by triggers match `COUNT(*)` through appends, bulk appends,
    /// deletes by id, whole-archive deletes, retention and account deletion.
    #[tokio::test]
    async fn archive_counts_follow_every_change() {
        let (b, dir) = temp_backend("counts").await;
        async fn check(b: &SqliteBackend) {
            let kept: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT store, host, username, SUM(n) FROM archive_counts
                 GROUP BY store, host, username ORDER BY 1, 2, 3",
            )
            .fetch_all(&b.pool)
            .await
            .expect("counts");
            let real: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT store, host, username, COUNT(*) FROM archive
                 GROUP BY store, host, username ORDER BY 1, 2, 3",
            )
            .fetch_all(&b.pool)
            .await
            .expect("real");
            assert_eq!(kept, real);
            for (store, host, user, n) in real {
                let got = b
                    .count(&store, &host, &user, &ArchiveQuery::default())
                    .await
                    .expect("count");
                assert_eq!(i64::try_from(got).expect("count"), n);
            }
            let kept: Vec<(String, String, String, String, i64)> =
                sqlx::query_as("SELECT * FROM archive_counts ORDER BY 1, 2, 3, 4")
                    .fetch_all(&b.pool)
                    .await
                    .expect("counts");
            let real: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                "SELECT store, host, username, with_jid, COUNT(*) FROM archive
                 GROUP BY store, host, username, with_jid ORDER BY 1, 2, 3, 4",
            )
            .fetch_all(&b.pool)
            .await
            .expect("real");
            assert_eq!(kept, real);
            for (store, host, user, with, n) in real {
                let q = ArchiveQuery {
                    with: Some(with),
                    ..Default::default()
                };
                let got = b.count(&store, &host, &user, &q).await.expect("count");
                assert_eq!(i64::try_from(got).expect("count"), n);
            }
        }
        let mut ids = Vec::new();
        for i in 0..5 {
            for (store, user) in [("archive", "u"), ("archive", "v"), ("offline", "u")] {
                ids.push(
                    b.append(store, "h", user, "w@h", i, b"x", None)
                        .await
                        .expect("append"),
                );
            }
        }
        let items: Vec<NewArchiveItem> = (0..300)
            .map(|i| NewArchiveItem {
                with: format!("w{}@h", i % 3),
                stamp_ms: 10 + i,
                data: b"y".to_vec(),
            })
            .collect();
        b.append_many("archive", "h", "u", &items)
            .await
            .expect("append_many");
        check(&b).await;
        assert_eq!(
            b.count("archive", "h", "nobody", &ArchiveQuery::default())
                .await
                .expect("count"),
            0
        );
        ArchiveStore::delete(&b, "archive", "h", "u", Some(&ids[..3]))
            .await
            .expect("delete ids");
        check(&b).await;
        b.delete_older_than("archive", 100)
            .await
            .expect("retention");
        check(&b).await;
        ArchiveStore::delete(&b, "offline", "h", "u", None)
            .await
            .expect("delete all");
        check(&b).await;
        AccountStore::delete(&b, "h", "v").await.expect("account");
        check(&b).await;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM archive_counts")
            .fetch_one(&b.pool)
            .await
            .expect("rows");
        assert_eq!(
            left, 3,
            "only u's conversations in the archive store are left"
        );
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Migration 2 on a database written by version 1 counts the items already there.
    #[tokio::test]
    async fn migration_2_counts_existing_items() {
        let (b, dir) = temp_backend("migrate2").await;
        for i in 0..7 {
            b.append("archive", "h", "u", "w@h", i, b"x", None)
                .await
                .expect("append");
        }
        // Back to schema version 1 (what an older build left behind).
        for undo in [
            "DROP TABLE pubsub_items",
            "DROP TABLE pubsub_subscriptions",
            "DROP TABLE pubsub_affiliations",
            "DROP TABLE pubsub_nodes",
            "DROP TRIGGER archive_count_insert",
            "DROP TRIGGER archive_count_delete",
            "DROP TRIGGER archive_count_move",
            "DROP TABLE archive_counts",
            "DROP INDEX archive_user_stamp",
            "DELETE FROM schema_version WHERE version > 1",
        ] {
            sqlx::query(undo).execute(&b.pool).await.expect(undo);
        }
        b.append("archive", "h", "u", "w@h", 8, b"x", None)
            .await
            .expect("append");
        b.migrate().await.expect("migrate");
        assert_eq!(
            b.count("archive", "h", "u", &ArchiveQuery::default())
                .await
                .expect("count"),
            8
        );
        b.append("archive", "h", "u", "w@h", 9, b"x", None)
            .await
            .expect("append");
        assert_eq!(
            b.count("archive", "h", "u", &ArchiveQuery::default())
                .await
                .expect("count"),
            9
        );
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `append_many` stores the items in order in one transaction, like that many appends.
    #[tokio::test]
    async fn append_batch_stores_several_users_items_in_order() {
        let (b, dir) = temp_backend("append-batch").await;
        let item = |host: &str, user: &str, n: i64| BatchItem {
            host: host.into(),
            user: user.into(),
            item: NewArchiveItem {
                with: "w@h".into(),
                stamp_ms: n,
                data: format!("<m n='{n}'/>").into_bytes(),
            },
        };
        let batch = vec![
            item("h", "a", 1),
            item("h", "b", 2),
            item("h", "a", 3),
            item("g", "a", 4),
        ];
        let ids = b
            .append_batch("archive", &batch)
            .await
            .expect("append_batch");
        assert_eq!(ids.len(), 4);
        let a = b
            .query("archive", "h", "a", &ArchiveQuery::default())
            .await
            .expect("query");
        assert_eq!(a.iter().map(|i| i.stamp_ms).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(a[0].id, ids[0]);
        assert_eq!(a[1].id, ids[2]);
        let bb = b
            .query("archive", "h", "b", &ArchiveQuery::default())
            .await
            .expect("query");
        assert_eq!(bb.len(), 1);
        assert_eq!(bb[0].id, ids[1]);
        let other_host = b
            .query("archive", "g", "a", &ArchiveQuery::default())
            .await
            .expect("query");
        assert_eq!(other_host.len(), 1);
        assert!(
            b.append_batch("archive", &[])
                .await
                .expect("empty")
                .is_empty()
        );
        drop(dir);
    }

    #[tokio::test]
    async fn append_many_is_one_ordered_transaction() {
        let (b, dir) = temp_backend("append-many").await;
        let first = b
            .append("archive", "h", "u", "w@h", 1, b"a", None)
            .await
            .expect("append");
        let n = ROWS_PER_INSERT * 2 + 3; // full chunks and a partial one
        let items: Vec<NewArchiveItem> = (0..n)
            .map(|i| NewArchiveItem {
                with: format!("c{}@h", i % 3),
                stamp_ms: 10 + i64::try_from(i).expect("small"),
                data: format!("<m n='{i}'/>").into_bytes(),
            })
            .collect();
        let ids = b
            .append_many("archive", "h", "u", &items)
            .await
            .expect("append_many");
        assert_eq!(ids.len(), n);
        let all = b
            .query("archive", "h", "u", &ArchiveQuery::default())
            .await
            .expect("query");
        assert_eq!(all.len(), n + 1);
        assert_eq!(all[0].id, first);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        for (i, (got, want)) in all[1..].iter().zip(&items).enumerate() {
            assert_eq!(got.id, ids[i]);
            assert_eq!(
                (&got.with, got.stamp_ms, &got.data),
                (&want.with, want.stamp_ms, &want.data)
            );
        }
        assert!(
            b.append_many("archive", "h", "u", &[])
                .await
                .expect("empty")
                .is_empty()
        );
        // A failing batch stores nothing: an item id that already exists violates UNIQUE
        // on the last chunk, so the earlier chunks roll back too.
        let before = b
            .count("archive", "h", "u", &ArchiveQuery::default())
            .await
            .expect("count");
        sqlx::query(
            "CREATE TRIGGER fail_late BEFORE INSERT ON archive WHEN NEW.stamp_ms = -1
             BEGIN SELECT RAISE(ABORT, 'late failure'); END",
        )
        .execute(&b.pool)
        .await
        .expect("trigger");
        let mut bad = items.clone();
        if let Some(last) = bad.last_mut() {
            last.stamp_ms = -1;
        }
        assert!(b.append_many("archive", "h", "u", &bad).await.is_err());
        assert_eq!(
            b.count("archive", "h", "u", &ArchiveQuery::default())
                .await
                .expect("count"),
            before
        );
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
