//! Single flight per key (an image's pull, a layer's download, a shifted copy;
//! the executor's droplet fetches and downloads): the work for a key runs
//! once at a time; the others wait, then find the work done. Entries are weak, so the table holds no key nobody holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

type Slot = tokio::sync::Mutex<()>;

#[derive(Default)]
pub struct Keyed {
    slots: Mutex<HashMap<String, Weak<Slot>>>,
}

/// Held while the key's work runs.
pub struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Keyed {
    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, w| w.strong_count() > 0);
        match slots.get(key).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Arc::new(Slot::default());
                slots.insert(key.to_string(), Arc::downgrade(&s));
                s
            }
        }
    }

    pub async fn lock(&self, key: &str) -> Held {
        Held { _guard: self.slot(key).lock_owned().await }
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.slots.lock().unwrap().values().filter(|w| w.strong_count() > 0).count()
    }
}

/// The same for blocking callers (which may be on any thread, an async
/// worker too, where a tokio mutex's blocking lock would panic): a set of
/// busy keys and a condition variable.
#[derive(Default)]
pub struct BusyKeys {
    busy: Mutex<std::collections::HashSet<String>>,
    freed: std::sync::Condvar,
}

pub struct Busy<'a> {
    owner: &'a BusyKeys,
    key: String,
}

impl BusyKeys {
    pub fn lock(&self, key: &str) -> Busy<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(key) {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(key.to_string());
        Busy { owner: self, key: key.to_string() }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.owner.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        self.owner.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn one_holder_per_key_and_nothing_kept_after() {
        let k = Arc::new(Keyed::default());
        let held = k.lock("a").await;
        let other = k.lock("b").await; // another key does not wait
        let (k2, t) = (k.clone(), Instant::now());
        let waiter = tokio::spawn(async move {
            let _h = k2.lock("a").await;
            t.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap() >= Duration::from_millis(50));
        drop(other);
        assert_eq!(k.live(), 0);
    }

    #[test]
    fn busy_keys_block_the_second_holder_only() {
        let k = Arc::new(BusyKeys::default());
        let held = k.lock("a");
        let _other = k.lock("b");
        let (k2, t) = (k.clone(), Instant::now());
        let waiter = std::thread::spawn(move || {
            let _h = k2.lock("a");
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap() >= Duration::from_millis(50));
        assert!(!k.busy.lock().unwrap().contains("a"));
    }
}
