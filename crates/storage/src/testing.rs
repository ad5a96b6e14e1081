//! Helpers for tests that need a PostgreSQL server (this crate's and the workspace's).
//!
//! Such tests read the server's URL from [`POSTGRES_URL_VAR`] and each creates its own fresh
//! database there with [`fresh_postgres_db`], so they run in parallel without seeing each
//! other's rows. Without the variable they fail, saying how to start the test server
//! (`tests/postgres/start.sh`, see `tests/postgres/README.md`): a test that silently passed
//! without PostgreSQL would prove nothing. Their names start with `postgres_`, which the
//! nextest profiles `no-postgres` and `no-external` filter on.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::{Result, StorageError};

/// The environment variable naming the test server: a URL of a role that may create
/// databases, e.g. `postgres://postgres@127.0.0.1:55432/postgres`.
pub const POSTGRES_URL_VAR: &str = "CANTO_TEST_POSTGRES_URL";

/// The test server's URL, or an error saying how to start one.
pub fn postgres_url() -> Result<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => Err(StorageError::Database(format!(
            "{POSTGRES_URL_VAR} is not set: this test needs a PostgreSQL server. Start the \
             test server and export its URL with `export {POSTGRES_URL_VAR}=$(tests/postgres/start.sh)` \
             (tests/postgres/README.md), or leave the PostgreSQL tests out with \
             `cargo nextest run --profile no-postgres`"
        ))),
    }
}

/// `url` with its database (the path) replaced by `database`, keeping any query parameters.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Creates a new, empty database on the test server, named `prefix` (letters, digits and
/// `_` kept, lowercased) followed by a random suffix, and returns its URL. Drop it with
/// [`drop_postgres_db`] when done.
pub async fn fresh_postgres_db(prefix: &str) -> Result<String> {
    let admin = postgres_url()?;
    let mut name: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    name.push('_');
    for b in suffix {
        name.push_str(&format!("{b:02x}"));
    }
    let mut conn = admin_connection(&admin).await?;
    // The name is made of [a-z0-9_] only, so quoting it is enough.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .map_err(|e| StorageError::Database(format!("CREATE DATABASE {name}: {e}")))?;
    let _ = conn.close().await;
    Ok(with_database(&admin, &name))
}

/// Drops a database made by [`fresh_postgres_db`] (closing any connection still open to it).
pub async fn drop_postgres_db(url: &str) -> Result<()> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StorageError::Database(format!("invalid URL: {e}")))?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StorageError::Database(format!(
            "{name:?} is not a database made by fresh_postgres_db"
        )));
    }
    let mut conn = admin_connection(&postgres_url()?).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| StorageError::Database(format!("DROP DATABASE {name}: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// A database from [`fresh_postgres_db`] that is dropped when this goes out of scope, also when
/// the test fails (from a thread of its own, so it works inside and outside a runtime).
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
}

impl TestDatabase {
    /// Creates a fresh database (see [`fresh_postgres_db`]).
    pub async fn create(prefix: &str) -> Result<TestDatabase> {
        Ok(TestDatabase {
            url: fresh_postgres_db(prefix).await?,
        })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let url = self.url.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StorageError::Database(e.to_string()))?;
            runtime.block_on(drop_postgres_db(&url))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("test database not dropped: {e}");
        }
    }
}

async fn admin_connection(url: &str) -> Result<PgConnection> {
    PgConnection::connect(url).await.map_err(|e| {
        StorageError::Database(format!(
            "cannot connect to the test PostgreSQL server ({POSTGRES_URL_VAR}={url}): {e}; \
             is it running? `tests/postgres/start.sh` starts it"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:55432/postgres", "t_1"),
            "postgres://postgres@127.0.0.1:55432/t_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
