//! Raw rows of the SQL backends, for moving a deployment between them (`canto storage copy`,
//! see [`crate::copy`]).
//!
//! The SQLite and PostgreSQL backends have the same tables with the same columns and primary
//! keys ([`TABLES`]), and both compare text keys bytewise (SQLite's BINARY collation,
//! PostgreSQL's `"C"` columns), so a table read in primary-key order from either comes in the
//! same order. That is what makes a copy resumable (the destination holds a prefix of the
//! source in key order: continue after its last key) and a comparison a single merge walk.
//! `archive_counts` is not listed: the destination's triggers rebuild it from the archive rows.

use std::sync::Arc;

// Table and column names come from `TABLES` only, never from input.
use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use crate::sqlite::to_i64;
use crate::{Backend, PostgresBackend, Result, SqliteBackend, StorageError};

/// One column's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// An integer column (`seq`, stamps, iteration counts).
    Int(i64),
    /// A text column (names, JIDs, ids); compared bytewise, as the databases do.
    Text(String),
    /// A binary column (payloads, keys, configurations).
    Bytes(Vec<u8>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

/// One row: the table's columns in [`Table::columns`] order.
pub type DumpRow = Vec<Value>;

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit integer.
    Int,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Bytes,
}

/// A table both SQL backends have.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// The store it belongs to (for reports): accounts, kv, map, archive or pubsub.
    pub store: &'static str,
    /// Its columns, the primary key's first.
    pub columns: &'static [(&'static str, ColumnType)],
    /// How many leading columns form the primary key.
    pub key_len: usize,
    /// Whether the table has a `seq` drawn from a never-reused sequence (SQLite AUTOINCREMENT,
    /// a PostgreSQL identity column), whose high-water mark is carried over too.
    pub sequence: bool,
}

impl Table {
    /// The key part of `row`.
    pub fn key_of<'r>(&self, row: &'r [Value]) -> &'r [Value] {
        &row[..self.key_len.min(row.len())]
    }
}

use ColumnType::{Bytes, Int, Text};

/// Every table holding data, in copy order.
pub const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        store: "accounts",
        columns: &[
            ("host", Text),
            ("username", Text),
            ("sha1_salt", Bytes),
            ("sha1_iterations", Int),
            ("sha1_stored_key", Bytes),
            ("sha1_server_key", Bytes),
            ("sha256_salt", Bytes),
            ("sha256_iterations", Int),
            ("sha256_stored_key", Bytes),
            ("sha256_server_key", Bytes),
        ],
        key_len: 2,
        sequence: false,
    },
    Table {
        name: "kv",
        store: "kv",
        columns: &[
            ("host", Text),
            ("username", Text),
            ("store", Text),
            ("value", Bytes),
        ],
        key_len: 3,
        sequence: false,
    },
    Table {
        name: "map",
        store: "map",
        columns: &[
            ("host", Text),
            ("username", Text),
            ("store", Text),
            ("key", Text),
            ("value", Bytes),
        ],
        key_len: 4,
        sequence: false,
    },
    Table {
        name: "archive",
        store: "archive",
        // Keyed by the owner's seq index (both backends have it; PostgreSQL has no index on
        // `seq` alone), which is also unique.
        columns: &[
            ("store", Text),
            ("host", Text),
            ("username", Text),
            ("seq", Int),
            ("id", Text),
            ("with_jid", Text),
            ("stamp_ms", Int),
            ("data", Bytes),
        ],
        key_len: 4,
        sequence: true,
    },
    Table {
        name: "pubsub_nodes",
        store: "pubsub",
        columns: &[("service", Text), ("node", Text), ("config", Bytes)],
        key_len: 2,
        sequence: false,
    },
    Table {
        name: "pubsub_affiliations",
        store: "pubsub",
        columns: &[
            ("service", Text),
            ("node", Text),
            ("jid", Text),
            ("affiliation", Text),
        ],
        key_len: 3,
        sequence: false,
    },
    Table {
        name: "pubsub_subscriptions",
        store: "pubsub",
        columns: &[
            ("service", Text),
            ("node", Text),
            ("jid", Text),
            ("subid", Text),
            ("state", Text),
            ("options", Bytes),
        ],
        key_len: 4,
        sequence: false,
    },
    Table {
        name: "pubsub_items",
        store: "pubsub",
        columns: &[
            ("service", Text),
            ("node", Text),
            ("seq", Int),
            ("item_id", Text),
            ("publisher", Text),
            ("stamp_ms", Int),
            ("payload", Bytes),
        ],
        key_len: 3,
        sequence: true,
    },
];

/// Row-level access to one SQL backend's tables.
#[async_trait::async_trait]
pub trait Dump: Send + Sync {
    /// `sqlite` or `postgresql`.
    fn kind(&self) -> &'static str;
    /// Up to `limit` rows in primary-key order, after the key `after` (from the start with
    /// `None`): keyset paging on the primary key.
    async fn read_rows(
        &self,
        table: &Table,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<DumpRow>>;
    /// The row with primary key `key`.
    async fn row(&self, table: &Table, key: &[Value]) -> Result<Option<DumpRow>>;
    /// The greatest primary key in the table.
    async fn last_key(&self, table: &Table) -> Result<Option<Vec<Value>>>;
    /// How many rows the table has.
    async fn count_rows(&self, table: &Table) -> Result<u64>;
    /// Inserts `rows` in one transaction that commits before returning; a row whose key is
    /// already present is skipped. Returns how many were inserted.
    async fn write_rows(&self, table: &Table, rows: &[DumpRow]) -> Result<u64>;
    /// The high-water mark of the table's `seq` (the greatest ever drawn, even if that row
    /// was deleted since); 0 for a table without one.
    async fn sequence(&self, table: &Table) -> Result<i64>;
    /// Makes the table's next `seq` greater than `to` (never lowers it).
    async fn raise_sequence(&self, table: &Table, to: i64) -> Result<()>;
}

/// Opens `backend` for row-level access (runs its migrations like [`crate::Storage::open`]).
/// The memory backend has no rows to copy.
pub async fn open(backend: &Backend) -> Result<Arc<dyn Dump>> {
    match backend {
        Backend::Memory => Err(StorageError::Database(
            "the memory backend keeps nothing to copy".to_owned(),
        )),
        Backend::Sqlite { path } => Ok(Arc::new(SqliteBackend::open(path).await?)),
        Backend::Postgres { url, pool_size } => {
            Ok(Arc::new(PostgresBackend::open(url, *pool_size).await?))
        }
    }
}

/// Rows per multi-row `INSERT` of [`Dump::write_rows`]: at most 10 columns, so far below
/// SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement.
const ROWS_PER_INSERT: usize = 500;

/// `"a", "b", …` for the columns `cols`.
fn column_list(cols: &[(&str, ColumnType)]) -> String {
    cols.iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same SQL for both backends (`QueryBuilder` writes each one's placeholders).
macro_rules! dump_sql {
    ($db:ty, $row:ty) => {
        use super::*;

        /// Binds `values` separated by commas.
        fn push_values(b: &mut QueryBuilder<$db>, values: &[Value]) {
            let mut s = b.separated(", ");
            for v in values {
                match v {
                    Value::Int(n) => s.push_bind(*n),
                    Value::Text(t) => s.push_bind(t.clone()),
                    Value::Bytes(bytes) => s.push_bind(bytes.clone()),
                };
            }
        }

        /// `SELECT` of every column, `WHERE (key) <op> (values)` when given.
        pub(crate) fn select(
            table: &Table,
            filter: Option<(&str, &[Value])>,
            order: &str,
            limit: Option<usize>,
        ) -> QueryBuilder<$db> {
            let key = column_list(&table.columns[..table.key_len]);
            let mut b = QueryBuilder::<$db>::new(format!(
                "SELECT {} FROM {}",
                column_list(table.columns),
                table.name
            ));
            if let Some((op, values)) = filter {
                b.push(format_args!(" WHERE ({key}) {op} ("));
                push_values(&mut b, values);
                b.push(")");
            }
            let order_by = table.columns[..table.key_len]
                .iter()
                .map(|(name, _)| format!("\"{name}\" {order}"))
                .collect::<Vec<_>>()
                .join(", ");
            b.push(format_args!(" ORDER BY {order_by}"));
            if let Some(limit) = limit {
                b.push(" LIMIT ").push_bind(to_i64(limit));
            }
            b
        }

        /// `INSERT` of `rows`, skipping keys already present.
        pub(crate) fn insert(table: &Table, rows: &[DumpRow]) -> QueryBuilder<$db> {
            let mut b = QueryBuilder::<$db>::new(format!(
                "INSERT INTO {} ({}) ",
                table.name,
                column_list(table.columns)
            ));
            b.push_values(rows, |mut s, row| {
                for v in row {
                    match v {
                        Value::Int(n) => s.push_bind(*n),
                        Value::Text(t) => s.push_bind(t.clone()),
                        Value::Bytes(bytes) => s.push_bind(bytes.clone()),
                    };
                }
            });
            b.push(" ON CONFLICT DO NOTHING");
            b
        }

        /// A row in [`Table::columns`] order.
        pub(crate) fn decode(table: &Table, row: &$row) -> Result<DumpRow> {
            table
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| {
                    Ok(match ty {
                        ColumnType::Int => Value::Int(row.try_get(i).map_err(db_err)?),
                        ColumnType::Text => Value::Text(row.try_get(i).map_err(db_err)?),
                        ColumnType::Bytes => Value::Bytes(row.try_get(i).map_err(db_err)?),
                    })
                })
                .collect()
        }
    };
}

mod sqlite_sql {
    use crate::sqlite::db_err;
    dump_sql!(sqlx::Sqlite, sqlx::sqlite::SqliteRow);
}

mod postgres_sql {
    use crate::postgres::db_err;
    dump_sql!(sqlx::Postgres, sqlx::postgres::PgRow);
}

/// Checks that every row has the table's column count (a row from elsewhere, or a bug).
fn check_rows(table: &Table, rows: &[DumpRow]) -> Result<()> {
    match rows.iter().find(|r| r.len() != table.columns.len()) {
        Some(r) => Err(StorageError::Corrupt(format!(
            "{}: a row of {} columns where the table has {}",
            table.name,
            r.len(),
            table.columns.len()
        ))),
        None => Ok(()),
    }
}

/// A row count as a `u64`.
fn count_u64(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}

#[async_trait::async_trait]
impl Dump for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn read_rows(
        &self,
        table: &Table,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<DumpRow>> {
        let mut b = sqlite_sql::select(table, after.map(|k| (">", k)), "ASC", Some(limit));
        let rows = b
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(crate::sqlite::db_err)?;
        rows.iter().map(|r| sqlite_sql::decode(table, r)).collect()
    }

    async fn row(&self, table: &Table, key: &[Value]) -> Result<Option<DumpRow>> {
        let mut b = sqlite_sql::select(table, Some(("=", key)), "ASC", Some(1));
        let row = b
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(crate::sqlite::db_err)?;
        row.map(|r| sqlite_sql::decode(table, &r)).transpose()
    }

    async fn last_key(&self, table: &Table) -> Result<Option<Vec<Value>>> {
        let mut b = sqlite_sql::select(table, None, "DESC", Some(1));
        let row = b
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(crate::sqlite::db_err)?;
        Ok(row
            .map(|r| sqlite_sql::decode(table, &r))
            .transpose()?
            .map(|mut r| {
                r.truncate(table.key_len);
                r
            }))
    }

    async fn count_rows(&self, table: &Table) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            table.name
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(crate::sqlite::db_err)?;
        count_u64(n)
    }

    async fn write_rows(&self, table: &Table, rows: &[DumpRow]) -> Result<u64> {
        check_rows(table, rows)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = crate::sqlite::WriteTx::begin(&self.pool).await?;
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            inserted += sqlite_sql::insert(table, chunk)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(crate::sqlite::db_err)?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn sequence(&self, table: &Table) -> Result<i64> {
        if !table.sequence {
            return Ok(0);
        }
        // AUTOINCREMENT keeps the greatest seq ever used in sqlite_sequence.
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?), 0),
                        COALESCE((SELECT MAX(seq) FROM {}), 0))",
            table.name
        )))
        .bind(table.name)
        .fetch_one(&self.pool)
        .await
        .map_err(crate::sqlite::db_err)?;
        Ok(n)
    }

    async fn raise_sequence(&self, table: &Table, to: i64) -> Result<()> {
        if !table.sequence || to <= 0 {
            return Ok(());
        }
        let mut tx = crate::sqlite::WriteTx::begin(&self.pool).await?;
        sqlx::query("UPDATE sqlite_sequence SET seq = ?1 WHERE name = ?2 AND seq < ?1")
            .bind(to)
            .bind(table.name)
            .execute(&mut *tx)
            .await
            .map_err(crate::sqlite::db_err)?;
        sqlx::query(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?2, ?1
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?2)",
        )
        .bind(to)
        .bind(table.name)
        .execute(&mut *tx)
        .await
        .map_err(crate::sqlite::db_err)?;
        tx.commit().await
    }
}

#[async_trait::async_trait]
impl Dump for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    async fn read_rows(
        &self,
        table: &Table,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<DumpRow>> {
        let mut b = postgres_sql::select(table, after.map(|k| (">", k)), "ASC", Some(limit));
        let rows = b
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(crate::postgres::db_err)?;
        rows.iter()
            .map(|r| postgres_sql::decode(table, r))
            .collect()
    }

    async fn row(&self, table: &Table, key: &[Value]) -> Result<Option<DumpRow>> {
        let mut b = postgres_sql::select(table, Some(("=", key)), "ASC", Some(1));
        let row = b
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(crate::postgres::db_err)?;
        row.map(|r| postgres_sql::decode(table, &r)).transpose()
    }

    async fn last_key(&self, table: &Table) -> Result<Option<Vec<Value>>> {
        let mut b = postgres_sql::select(table, None, "DESC", Some(1));
        let row = b
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(crate::postgres::db_err)?;
        Ok(row
            .map(|r| postgres_sql::decode(table, &r))
            .transpose()?
            .map(|mut r| {
                r.truncate(table.key_len);
                r
            }))
    }

    async fn count_rows(&self, table: &Table) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            table.name
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(crate::postgres::db_err)?;
        count_u64(n)
    }

    async fn write_rows(&self, table: &Table, rows: &[DumpRow]) -> Result<u64> {
        check_rows(table, rows)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await.map_err(crate::postgres::db_err)?;
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            inserted += postgres_sql::insert(table, chunk)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(crate::postgres::db_err)?
                .rows_affected();
        }
        tx.commit().await.map_err(crate::postgres::db_err)?;
        Ok(inserted)
    }

    async fn sequence(&self, table: &Table) -> Result<i64> {
        if !table.sequence {
            return Ok(0);
        }
        // The identity column's sequence: its last value (NULL before the first nextval), or
        // the greatest seq inserted explicitly (a copy), whichever is greater.
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT GREATEST(
                 COALESCE(pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass), 0),
                 COALESCE((SELECT MAX(seq) FROM {}), 0))",
            table.name
        )))
        .bind(table.name)
        .fetch_one(&self.pool)
        .await
        .map_err(crate::postgres::db_err)?;
        Ok(n)
    }

    async fn raise_sequence(&self, table: &Table, to: i64) -> Result<()> {
        if !table.sequence {
            return Ok(());
        }
        // Rows copied with their seqs did not advance the sequence: the next seq drawn must
        // be above both those and the source's high-water mark.
        let target = to.max(self.sequence(table).await?);
        if target <= 0 {
            return Ok(());
        }
        sqlx::query("SELECT setval(pg_get_serial_sequence($1, 'seq'), $2)")
            .bind(table.name)
            .bind(target)
            .execute(&self.pool)
            .await
            .map_err(crate::postgres::db_err)?;
        Ok(())
    }
}
