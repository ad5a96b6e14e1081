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

use crate::{
    AccountStore, ArchiveItem, ArchiveQuery, ArchiveStore, Credentials, KeyValueStore, MapStore,
    Result, ScramKeys, StorageError, new_item_id,
};

/// How long a writer waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per pool: SQLite has one writer at a time, but WAL readers run in parallel.
const MAX_CONNECTIONS: u32 = 8;

/// SQLITE_FULL: the primary result code for "database or disk is full".
const SQLITE_FULL: i64 = 13;

/// The schema migrations, applied in order; migration `i` brings the schema to version
/// `i + 1`. Never edit a released migration: append a new one.
const MIGRATIONS: &[&[&str]] = &[&[
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
]];

/// Maps a driver error onto [`StorageError`]: SQLITE_FULL (any extended code) becomes
/// [`StorageError::Full`], decoding failures [`StorageError::Corrupt`].
fn db_err(e: sqlx::Error) -> StorageError {
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
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An SQLite count as a `usize`.
fn count_to_usize(n: i64) -> Result<usize> {
    usize::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}

/// All four stores in one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let backend = SqliteBackend { pool };
        backend.migrate().await?;
        tracing::debug!(path = %path.display(), "opened SQLite storage");
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
        tx.commit().await?;
        Ok(existed)
    }

    async fn list(&self, host: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT username FROM accounts WHERE host = ? ORDER BY username")
            .bind(host)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn import(&self, accounts: &[(String, String, Credentials)]) -> Result<usize> {
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
        sqlx::query_scalar("SELECT value FROM kv WHERE host = ? AND username = ? AND store = ?")
            .bind(host)
            .bind(user)
            .bind(store)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn set(&self, store: &str, host: &str, user: &str, value: Option<&[u8]>) -> Result<()> {
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
fn json_string_array(ids: &[String]) -> String {
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

/// Appends the `WHERE` clause selecting `q`'s items of one user's archive (no ordering, no
/// limit). An unknown `after_id` / `before_id` makes the sub-select NULL, which matches
/// nothing.
fn push_filters(
    b: &mut QueryBuilder<Sqlite>,
    store: &str,
    host: &str,
    user: &str,
    q: &ArchiveQuery,
) {
    // Index choice (SQLite has no statistics without ANALYZE, so it is steered with unary
    // `+`, which keeps a term from using an index): with `ids`, look them up through the
    // unique `id` index; otherwise walk the owner's (store, host, username[, with_jid], seq)
    // index, never the store-wide stamp index, which spans all users.
    let owner = if q.ids.is_some() { "+" } else { "" };
    b.push(format_args!(" WHERE {owner}store = "))
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
        b.push(" AND +stamp_ms >= ").push_bind(start);
    }
    if let Some(end) = q.end_ms {
        b.push(" AND +stamp_ms <= ").push_bind(end);
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

    async fn query(
        &self,
        store: &str,
        host: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<ArchiveItem>> {
        let mut b = QueryBuilder::new("SELECT id, seq, stamp_ms, with_jid, data FROM archive");
        push_filters(&mut b, store, host, user, q);
        b.push(if q.reverse {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        if let Some(limit) = q.limit {
            b.push(" LIMIT ").push_bind(to_i64(limit));
        }
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
        let mut b = QueryBuilder::new("SELECT COUNT(*) FROM archive");
        push_filters(&mut b, store, host, user, q);
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
struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    done: bool,
}

impl WriteTx {
    async fn begin(pool: &sqlx::SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await.map_err(db_err)?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(db_err(e));
        }
        Ok(WriteTx { conn, done: false })
    }

    async fn commit(mut self) -> Result<()> {
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
}
