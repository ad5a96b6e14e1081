//! TEMPORARY placeholder while the SQLite pubsub tables are written (replaced before landing).

use crate::{
    ItemQuery, PubsubItem, PubsubStore, PubsubSubscription, Result, ServiceKey, SqliteBackend,
    StorageError,
};

fn pending<T>() -> Result<T> {
    Err(StorageError::Database(
        "pubsub on SQLite: not written yet".to_owned(),
    ))
}

#[async_trait::async_trait]
impl PubsubStore for SqliteBackend {
    async fn nodes(&self, _: ServiceKey<'_>) -> Result<Vec<(String, Vec<u8>)>> {
        pending()
    }
    async fn node(&self, _: ServiceKey<'_>, _: &str) -> Result<Option<Vec<u8>>> {
        pending()
    }
    async fn create_node(
        &self,
        _: ServiceKey<'_>,
        _: &str,
        _: &[u8],
        _: Option<usize>,
    ) -> Result<bool> {
        pending()
    }
    async fn set_node_config(&self, _: ServiceKey<'_>, _: &str, _: &[u8]) -> Result<bool> {
        pending()
    }
    async fn delete_node(&self, _: ServiceKey<'_>, _: &str) -> Result<bool> {
        pending()
    }
    async fn delete_service(&self, _: ServiceKey<'_>) -> Result<()> {
        pending()
    }
    async fn set_affiliation(
        &self,
        _: ServiceKey<'_>,
        _: &str,
        _: &str,
        _: Option<&str>,
    ) -> Result<()> {
        pending()
    }
    async fn affiliations(
        &self,
        _: ServiceKey<'_>,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        pending()
    }
    async fn set_subscription(&self, _: ServiceKey<'_>, _: &PubsubSubscription) -> Result<()> {
        pending()
    }
    async fn remove_subscription(
        &self,
        _: ServiceKey<'_>,
        _: &str,
        _: &str,
        _: Option<&str>,
    ) -> Result<usize> {
        pending()
    }
    async fn subscriptions(
        &self,
        _: ServiceKey<'_>,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<Vec<PubsubSubscription>> {
        pending()
    }
    async fn publish(
        &self,
        _: ServiceKey<'_>,
        _: &str,
        _: &PubsubItem,
        _: Option<usize>,
    ) -> Result<Option<Vec<String>>> {
        pending()
    }
    async fn items(&self, _: ServiceKey<'_>, _: &str, _: &ItemQuery) -> Result<Vec<PubsubItem>> {
        pending()
    }
    async fn item_count(&self, _: ServiceKey<'_>, _: &str) -> Result<usize> {
        pending()
    }
    async fn retract(&self, _: ServiceKey<'_>, _: &str, _: &str) -> Result<bool> {
        pending()
    }
    async fn purge(&self, _: ServiceKey<'_>, _: &str) -> Result<usize> {
        pending()
    }
    async fn trim(&self, _: ServiceKey<'_>, _: &str, _: usize) -> Result<Vec<String>> {
        pending()
    }
}
