//! [`PubsubStore`] on PostgreSQL: tables `pubsub_nodes`, `pubsub_affiliations`,
//! `pubsub_subscriptions` and `pubsub_items` (in `postgres.rs`'s migration 1), with the
//! semantics of `sqlite_pubsub.rs`.
//!
//! Multi-statement writes run in one transaction; single statements commit on their own.
//! PostgreSQL runs writers concurrently, so where SQLite's single writer made a sequence of
//! statements atomic, locks do here:
//!
//! * a row (affiliation, subscription, item) is inserted only while the node row is locked
//!   `FOR KEY SHARE` in the same statement, and a node is deleted node row first, then its
//!   rows: an insert racing a deletion either finishes first (and its row is deleted with the
//!   node) or waits and then finds no node. No row outlives its node.
//! * publishing takes the node's advisory lock, so items of one node commit in `seq` order (see
//!   `postgres::lock_key`) and a republish cannot race another of the same id; creating a node
//!   under `max_nodes` takes the service's, so the count cannot be overtaken.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use crate::metrics::timed;
use crate::postgres::{db_err, lock, lock_key};
use crate::sqlite::{count_to_usize, to_i64};
use crate::{
    ItemQuery, PostgresBackend, PubsubItem, PubsubStore, PubsubSubscription, Result, ServiceKey,
    StorageError,
};

/// Deletes of one node's rows (service, node), the node row first (see the module docs).
const DELETE_NODE: [&str; 4] = [
    "DELETE FROM pubsub_nodes WHERE service = $1 AND node = $2",
    "DELETE FROM pubsub_items WHERE service = $1 AND node = $2",
    "DELETE FROM pubsub_subscriptions WHERE service = $1 AND node = $2",
    "DELETE FROM pubsub_affiliations WHERE service = $1 AND node = $2",
];

/// Deletes of one service's rows (service), the node rows first.
const DELETE_SERVICE: [&str; 4] = [
    "DELETE FROM pubsub_nodes WHERE service = $1",
    "DELETE FROM pubsub_items WHERE service = $1",
    "DELETE FROM pubsub_subscriptions WHERE service = $1",
    "DELETE FROM pubsub_affiliations WHERE service = $1",
];

/// A row count as a `usize`.
fn affected(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| StorageError::Database("row count overflow".to_owned()))
}

/// Deletes the rows of one node (`Some`) or of the whole service (`None`) inside a
/// transaction; returns how many node rows were deleted.
pub(crate) async fn delete_rows(
    conn: &mut PgConnection,
    service: &str,
    node: Option<&str>,
) -> Result<u64> {
    let statements = if node.is_some() {
        DELETE_NODE
    } else {
        DELETE_SERVICE
    };
    let mut nodes = None;
    for sql in statements {
        let mut query = sqlx::query(sql).bind(service);
        if let Some(node) = node {
            query = query.bind(node);
        }
        let n = query
            .execute(&mut *conn)
            .await
            .map_err(db_err)?
            .rows_affected();
        nodes.get_or_insert(n);
    }
    Ok(nodes.unwrap_or(0))
}

/// Deletes the node's oldest items beyond the newest `keep` (inside a transaction holding the
/// node's lock); returns their ids, oldest first.
async fn trim_items(
    conn: &mut PgConnection,
    service: &str,
    node: &str,
    keep: usize,
) -> Result<Vec<String>> {
    // Everything older than the oldest of the newest `keep` (read backwards on the
    // (service, node, seq) index); with `keep` 0, everything.
    let query = if keep == 0 {
        sqlx::query_as(
            "DELETE FROM pubsub_items WHERE service = $1 AND node = $2
             RETURNING item_id, seq",
        )
        .bind(service)
        .bind(node)
    } else {
        sqlx::query_as(
            "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND seq < (
                 SELECT MIN(seq) FROM (
                     SELECT seq FROM pubsub_items WHERE service = $1 AND node = $2
                     ORDER BY seq DESC LIMIT $3) AS newest)
             RETURNING item_id, seq",
        )
        .bind(service)
        .bind(node)
        .bind(to_i64(keep))
    };
    let mut gone: Vec<(String, i64)> = query.fetch_all(&mut *conn).await.map_err(db_err)?;
    gone.sort_by_key(|(_, seq)| *seq);
    Ok(gone.into_iter().map(|(id, _)| id).collect())
}

/// The statement of [`PubsubStore::items`] for `q`, after `head` (the query-plan test puts
/// `EXPLAIN` there). Keyset paging on `seq` through `pubsub_items_seq`; with `ids`, a lookup of
/// each id through the unique (service, node, item_id) index. An unknown `after_id` /
/// `before_id` makes its sub-select NULL, which matches nothing.
pub(crate) fn select_items(
    head: &str,
    service: &str,
    node: &str,
    q: &ItemQuery,
) -> QueryBuilder<Postgres> {
    // "After" is newer when oldest first, older when newest first.
    let (after, before, dir) = if q.oldest_first {
        (">", "<", "ASC")
    } else {
        ("<", ">", "DESC")
    };
    let mut b = QueryBuilder::new(head);
    b.push("SELECT item_id, seq, publisher, stamp_ms, payload FROM pubsub_items WHERE service = ")
        .push_bind(service.to_owned())
        .push(" AND node = ")
        .push_bind(node.to_owned());
    for (op, id) in [(after, &q.after_id), (before, &q.before_id)] {
        if let Some(id) = id {
            b.push(format_args!(" AND seq {op}"))
                .push(" (SELECT seq FROM pubsub_items WHERE service = ")
                .push_bind(service.to_owned())
                .push(" AND node = ")
                .push_bind(node.to_owned())
                .push(" AND item_id = ")
                .push_bind(id.clone())
                .push(")");
        }
    }
    if let Some(ids) = &q.ids {
        b.push(" AND item_id = ANY(")
            .push_bind(ids.clone())
            .push(")");
    }
    b.push(format_args!(" ORDER BY seq {dir}"));
    if let Some(limit) = q.limit {
        b.push(" LIMIT ").push_bind(to_i64(limit));
    }
    b
}

fn item_from_row(row: &PgRow) -> Result<PubsubItem> {
    Ok(PubsubItem {
        id: row.try_get("item_id").map_err(db_err)?,
        seq: row.try_get("seq").map_err(db_err)?,
        publisher: row.try_get("publisher").map_err(db_err)?,
        stamp_ms: row.try_get("stamp_ms").map_err(db_err)?,
        payload: row.try_get("payload").map_err(db_err)?,
    })
}

fn subscription_from_row(row: &PgRow) -> Result<PubsubSubscription> {
    Ok(PubsubSubscription {
        node: row.try_get("node").map_err(db_err)?,
        jid: row.try_get("jid").map_err(db_err)?,
        subid: row.try_get("subid").map_err(db_err)?,
        state: row.try_get("state").map_err(db_err)?,
        options: row.try_get("options").map_err(db_err)?,
    })
}

/// Appends ` AND node = $n` / ` AND jid = $n` for the given filters.
fn push_filters(b: &mut QueryBuilder<Postgres>, node: Option<&str>, jid: Option<&str>) {
    if let Some(node) = node {
        b.push(" AND node = ").push_bind(node.to_owned());
    }
    if let Some(jid) = jid {
        b.push(" AND jid = ").push_bind(jid.to_owned());
    }
}

#[async_trait::async_trait]
impl PubsubStore for PostgresBackend {
    async fn nodes(&self, service: ServiceKey<'_>) -> Result<Vec<(String, Vec<u8>)>> {
        let _t = timed("pubsub_nodes");
        sqlx::query_as("SELECT node, config FROM pubsub_nodes WHERE service = $1 ORDER BY node")
            .bind(service)
            .fetch_all(self.pool().await?)
            .await
            .map_err(db_err)
    }

    async fn node(&self, service: ServiceKey<'_>, node: &str) -> Result<Option<Vec<u8>>> {
        let _t = timed("pubsub_node");
        sqlx::query_scalar("SELECT config FROM pubsub_nodes WHERE service = $1 AND node = $2")
            .bind(service)
            .bind(node)
            .fetch_optional(self.pool().await?)
            .await
            .map_err(db_err)
    }

    async fn create_node(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
        max_nodes: Option<usize>,
    ) -> Result<bool> {
        let _t = timed("pubsub_create_node");
        let insert = sqlx::query(
            "INSERT INTO pubsub_nodes (service, node, config) VALUES ($1, $2, $3)
             ON CONFLICT (service, node) DO NOTHING",
        )
        .bind(service)
        .bind(node)
        .bind(config);
        let Some(max) = max_nodes else {
            // A single statement commits on its own.
            let done = insert.execute(self.pool().await?).await.map_err(db_err)?;
            return Ok(done.rows_affected() > 0);
        };
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        // The check and the insert under the service's lock.
        lock(&mut tx, &lock_key(&["pubsub-service", service])).await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pubsub_nodes WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if exists.is_some() {
            tx.commit().await.map_err(db_err)?;
            return Ok(false);
        }
        let have: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1")
            .bind(service)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if have >= to_i64(max) {
            // Dropping `tx` rolls back.
            return Err(StorageError::Limit(format!(
                "pubsub service {service} holds {have} nodes (max {max})"
            )));
        }
        let done = insert.execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_node_config(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        config: &[u8],
    ) -> Result<bool> {
        let _t = timed("pubsub_set_node_config");
        let done =
            sqlx::query("UPDATE pubsub_nodes SET config = $1 WHERE service = $2 AND node = $3")
                .bind(config)
                .bind(service)
                .bind(node)
                .execute(self.pool().await?)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_node(&self, service: ServiceKey<'_>, node: &str) -> Result<bool> {
        let _t = timed("pubsub_delete_node");
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        let deleted = delete_rows(&mut tx, service, Some(node)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(deleted > 0)
    }

    async fn delete_service(&self, service: ServiceKey<'_>) -> Result<()> {
        let _t = timed("pubsub_delete_service");
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        delete_rows(&mut tx, service, None).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn set_affiliation(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<()> {
        let _t = timed("pubsub_set_affiliation");
        let query = match affiliation {
            // Only for an existing node, locked by this statement (see the module docs).
            Some(affiliation) => sqlx::query(
                "INSERT INTO pubsub_affiliations (service, node, jid, affiliation)
                 SELECT service, node, $3, $4 FROM pubsub_nodes
                 WHERE service = $1 AND node = $2 FOR KEY SHARE
                 ON CONFLICT (service, node, jid) DO UPDATE SET affiliation = EXCLUDED.affiliation",
            )
            .bind(service)
            .bind(node)
            .bind(jid)
            .bind(affiliation),
            None => sqlx::query(
                "DELETE FROM pubsub_affiliations WHERE service = $1 AND node = $2 AND jid = $3",
            )
            .bind(service)
            .bind(node)
            .bind(jid),
        };
        query.execute(self.pool().await?).await.map_err(db_err)?;
        Ok(())
    }

    async fn affiliations(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        let _t = timed("pubsub_affiliations");
        let mut b = QueryBuilder::<Postgres>::new(
            "SELECT node, jid, affiliation FROM pubsub_affiliations WHERE service = ",
        );
        b.push_bind(service.to_owned());
        push_filters(&mut b, node, jid);
        b.push(" ORDER BY node, jid");
        b.build_query_as()
            .fetch_all(self.pool().await?)
            .await
            .map_err(db_err)
    }

    async fn set_subscription(
        &self,
        service: ServiceKey<'_>,
        sub: &PubsubSubscription,
    ) -> Result<()> {
        let _t = timed("pubsub_set_subscription");
        // Only for an existing node, locked by this statement (see the module docs).
        sqlx::query(
            "INSERT INTO pubsub_subscriptions (service, node, jid, subid, state, options)
             SELECT service, node, $3, $4, $5, $6 FROM pubsub_nodes
             WHERE service = $1 AND node = $2 FOR KEY SHARE
             ON CONFLICT (service, node, jid, subid) DO UPDATE SET
                 state = EXCLUDED.state, options = EXCLUDED.options",
        )
        .bind(service)
        .bind(sub.node.as_str())
        .bind(sub.jid.as_str())
        .bind(sub.subid.as_str())
        .bind(sub.state.as_str())
        .bind(sub.options.as_slice())
        .execute(self.pool().await?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_subscription(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize> {
        let _t = timed("pubsub_remove_subscription");
        let mut b =
            QueryBuilder::<Postgres>::new("DELETE FROM pubsub_subscriptions WHERE service = ");
        b.push_bind(service.to_owned());
        push_filters(&mut b, Some(node), Some(jid));
        if let Some(subid) = subid {
            b.push(" AND subid = ").push_bind(subid.to_owned());
        }
        let done = b
            .build()
            .execute(self.pool().await?)
            .await
            .map_err(db_err)?;
        affected(done.rows_affected())
    }

    async fn subscriptions(
        &self,
        service: ServiceKey<'_>,
        node: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<PubsubSubscription>> {
        let _t = timed("pubsub_subscriptions");
        let mut b = QueryBuilder::<Postgres>::new(
            "SELECT node, jid, subid, state, options FROM pubsub_subscriptions WHERE service = ",
        );
        b.push_bind(service.to_owned());
        push_filters(&mut b, node, jid);
        b.push(" ORDER BY node, jid, subid");
        let rows = b
            .build()
            .fetch_all(self.pool().await?)
            .await
            .map_err(db_err)?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn publish(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        item: &PubsubItem,
        max_items: Option<usize>,
    ) -> Result<Option<Vec<String>>> {
        let _t = timed("pubsub_publish");
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        // Items of one node commit in `seq` order; a republish of the same id cannot race.
        lock(&mut tx, &lock_key(&["pubsub-node", service, node])).await?;
        // Replace: the old row goes, the new one gets the next (highest) seq; the insert
        // happens only if the node exists (locked by the statement).
        sqlx::query("DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3")
            .bind(service)
            .bind(node)
            .bind(item.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let inserted = sqlx::query(
            "INSERT INTO pubsub_items (service, node, item_id, publisher, stamp_ms, payload)
             SELECT service, node, $3, $4, $5, $6 FROM pubsub_nodes
             WHERE service = $1 AND node = $2 FOR KEY SHARE",
        )
        .bind(service)
        .bind(node)
        .bind(item.id.as_str())
        .bind(item.publisher.as_str())
        .bind(item.stamp_ms)
        .bind(item.payload.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if inserted == 0 {
            tx.commit().await.map_err(db_err)?;
            return Ok(None);
        }
        let trimmed = match max_items {
            Some(keep) => trim_items(&mut tx, service, node, keep).await?,
            None => Vec::new(),
        };
        tx.commit().await.map_err(db_err)?;
        Ok(Some(trimmed))
    }

    async fn items(
        &self,
        service: ServiceKey<'_>,
        node: &str,
        q: &ItemQuery,
    ) -> Result<Vec<PubsubItem>> {
        let _t = timed("pubsub_items");
        let mut b = select_items("", service, node, q);
        let rows = b
            .build()
            .fetch_all(self.pool().await?)
            .await
            .map_err(db_err)?;
        rows.iter().map(item_from_row).collect()
    }

    async fn item_count(&self, service: ServiceKey<'_>, node: &str) -> Result<usize> {
        let _t = timed("pubsub_item_count");
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_items WHERE service = $1 AND node = $2",
        )
        .bind(service)
        .bind(node)
        .fetch_one(self.pool().await?)
        .await
        .map_err(db_err)?;
        count_to_usize(n)
    }

    async fn retract(&self, service: ServiceKey<'_>, node: &str, id: &str) -> Result<bool> {
        let _t = timed("pubsub_retract");
        let done = sqlx::query(
            "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3",
        )
        .bind(service)
        .bind(node)
        .bind(id)
        .execute(self.pool().await?)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge(&self, service: ServiceKey<'_>, node: &str) -> Result<usize> {
        let _t = timed("pubsub_purge");
        let done = sqlx::query("DELETE FROM pubsub_items WHERE service = $1 AND node = $2")
            .bind(service)
            .bind(node)
            .execute(self.pool().await?)
            .await
            .map_err(db_err)?;
        affected(done.rows_affected())
    }

    async fn forget_jid(&self, bare: &str) -> Result<usize> {
        let _t = timed("pubsub_forget_jid");
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        let affiliations = sqlx::query("DELETE FROM pubsub_affiliations WHERE jid = $1")
            .bind(bare)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        // The bare JID and its full JIDs: a prefix test with starts_with, not LIKE (whose
        // wildcards may occur in a JID).
        let prefix = format!("{bare}/");
        let subscriptions =
            sqlx::query("DELETE FROM pubsub_subscriptions WHERE jid = $1 OR starts_with(jid, $2)")
                .bind(bare)
                .bind(&prefix)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        tx.commit().await.map_err(db_err)?;
        usize::try_from(affiliations + subscriptions)
            .map_err(|_| StorageError::Database("row count overflow".to_owned()))
    }

    async fn trim(&self, service: ServiceKey<'_>, node: &str, keep: usize) -> Result<Vec<String>> {
        let _t = timed("pubsub_trim");
        let mut tx = self.pool().await?.begin().await.map_err(db_err)?;
        lock(&mut tx, &lock_key(&["pubsub-node", service, node])).await?;
        let trimmed = trim_items(&mut tx, service, node, keep).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(trimmed)
    }
}
