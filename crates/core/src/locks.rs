//! Locks per key (per account): one user's subscription change or re-routing never waits for
//! another's. An entry lives only while someone holds or waits for it, so the table is as large
//! as the number of accounts busy at this moment.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A table of async mutexes, one per key, created on first use and dropped when unused.
#[derive(Debug)]
pub struct KeyedLocks<K: Hash + Eq + Clone> {
    map: Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>,
}

impl<K: Hash + Eq + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Holds the lock for one key; released (and the entry forgotten if nobody waits) on drop.
#[derive(Debug)]
pub struct KeyedGuard<K: Hash + Eq + Clone> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    map: Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>,
}

impl<K: Hash + Eq + Clone> KeyedLocks<K> {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &K) -> KeyedGuard<K> {
        let mutex = match self.map.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            // A poisoned table (a panic while it was held, which its code cannot do) still
            // gives a lock, just not a shared one.
            Err(_) => Arc::default(),
        };
        let guard = mutex.lock_owned().await;
        KeyedGuard {
            guard: Some(guard),
            key: key.clone(),
            map: self.map.clone(),
        }
    }

    /// Keys with a live entry (held or waited for).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        // Release first, then forget the entry if only the table still refers to it: a waiter
        // holds its own clone, so it keeps the entry alive.
        self.guard.take();
        if let Ok(mut m) = self.map.lock()
            && m.get(&self.key).is_some_and(|e| Arc::strong_count(e) == 1)
        {
            m.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_waits_for_itself_only() {
        let locks: Arc<KeyedLocks<String>> = Arc::default();
        let a = locks.lock(&"a".to_string()).await;
        // Another key is free while `a` is held.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock(&"b".to_string())).await;
        assert!(b.is_ok());
        drop(b);
        // The same key waits until `a` is released.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock(&"a".to_string()).await.key.clone() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(locks.len(), 1);
        drop(a);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(got.ok().and_then(|r| r.ok()).as_deref(), Some("a"));
        // Nothing held: the table is empty again.
        assert!(locks.is_empty());
    }
}
