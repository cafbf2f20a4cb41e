//! One holder per key at a time (one fetch per droplet, one download per
//! cache key): the others wait and then find the work done. A key's entry
//! goes when nobody holds or waits for it, so the table does not grow with
//! every key ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct OnePerKey {
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while the key's work runs.
pub struct KeyGuard<'a> {
    owner: &'a OnePerKey,
    key: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl OnePerKey {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = super::lock(&self.keys).entry(key.to_string()).or_default().clone();
        let held = Some(m.lock_owned().await);
        KeyGuard { owner: self, key: key.to_string(), held }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        super::lock(&self.keys).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.held = None;
        let mut keys = super::lock(&self.owner.keys);
        // The table's own reference is the last one: nobody waits for it.
        if keys.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_held_once_and_forgotten_after() {
        let keys = Arc::new(OnePerKey::default());
        let first = keys.lock("a").await;
        let (k, started) = (keys.clone(), std::time::Instant::now());
        let waiter = tokio::spawn(async move {
            let _g = k.lock("a").await;
            started.elapsed()
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(keys.len(), 1);
        drop(first);
        assert!(waiter.await.unwrap() >= std::time::Duration::from_millis(50), "the second holder waited");
        assert_eq!(keys.len(), 0, "an unheld key is forgotten");
    }
}
