//! Failure injection for tests: a key-value store that fails on demand, to check that callers
//! fail closed when storage does.

use std::sync::{Arc, Mutex};

use crate::{KeyValueStore, Result, StorageError};

/// Wraps a [`KeyValueStore`]; while a failure is set, reads and writes of the named store (for
/// one user, or every user) fail with [`StorageError::Database`].
pub struct FailingKv {
    inner: Arc<dyn KeyValueStore>,
    failing: Mutex<Option<(String, Option<String>)>>,
}

impl FailingKv {
    /// A store passing everything through to `inner` until [`FailingKv::fail`] is called.
    pub fn new(inner: Arc<dyn KeyValueStore>) -> Arc<FailingKv> {
        Arc::new(FailingKv {
            inner,
            failing: Mutex::new(None),
        })
    }

    /// From now on, operations on `store` fail (only `user`'s, when given).
    pub fn fail(&self, store: &str, user: Option<&str>) {
        if let Ok(mut f) = self.failing.lock() {
            *f = Some((store.to_owned(), user.map(str::to_owned)));
        }
    }

    /// Stops failing.
    pub fn heal(&self) {
        if let Ok(mut f) = self.failing.lock() {
            *f = None;
        }
    }

    fn check(&self, store: &str, user: &str) -> Result<()> {
        let failing = self.failing.lock().map(|f| f.clone()).unwrap_or_default();
        match failing {
            Some((s, u)) if s == store && u.as_deref().is_none_or(|u| u == user) => {
                Err(StorageError::Database("injected failure".into()))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl KeyValueStore for FailingKv {
    async fn get(&self, store: &str, host: &str, user: &str) -> Result<Option<Vec<u8>>> {
        self.check(store, user)?;
        self.inner.get(store, host, user).await
    }

    async fn set(&self, store: &str, host: &str, user: &str, value: Option<&[u8]>) -> Result<()> {
        self.check(store, user)?;
        self.inner.set(store, host, user, value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fails_only_what_it_is_told_to() {
        let kv = FailingKv::new(crate::Storage::memory().kv);
        assert!(kv.set("s", "h", "a", Some(b"1")).await.is_ok());
        kv.fail("s", Some("a"));
        assert!(kv.get("s", "h", "a").await.is_err());
        assert!(kv.get("s", "h", "b").await.is_ok());
        assert!(kv.get("t", "h", "a").await.is_ok());
        kv.fail("s", None);
        assert!(kv.set("s", "h", "b", None).await.is_err());
        kv.heal();
        assert_eq!(
            kv.get("s", "h", "a").await.ok().flatten(),
            Some(b"1".to_vec())
        );
    }
}
