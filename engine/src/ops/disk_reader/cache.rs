//! Bounded least-recently-used caches of what disk readers load: located manifest pages and
//! decoded chunks.
//!
//! Entries are `Arc`s, so a value handed out stays valid after eviction. The budget counts
//! the bytes each entry declares; the least recently used entries go first once it is
//! exceeded (an entry larger than the whole budget is returned but not kept, so a budget of
//! zero keeps nothing).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tessera_format::{ChunkDigest, PageDigest};

use super::BlockRef;

/// The caches of one or several [`super::DiskReader`]s: manifest pages with the locations of
/// their chunks, and decoded chunks. Several readers (the disks an NBD server exports) may
/// share one, across threads.
pub struct ReadCache {
    pub(super) chunks: Lru<ChunkDigest, Vec<u8>>,
    pub(super) pages: Lru<PageDigest, Vec<BlockRef>>,
}

impl ReadCache {
    /// Caches holding about `bytes` bytes in all: an eighth (at least 1 MiB) for pages, the
    /// rest for decoded chunks.
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        let pages = (bytes / 8).max(1 << 20);
        Self {
            chunks: Lru::new(bytes.saturating_sub(pages)),
            pages: Lru::new(pages),
        }
    }

    /// Pages only, about `bytes` bytes of them: for readers that go through a disk once
    /// (restore, export) and decode chunks straight into their own buffers.
    pub fn pages_only(bytes: usize) -> Self {
        Self {
            chunks: Lru::new(0),
            pages: Lru::new(bytes),
        }
    }
}

struct Inner<K, V> {
    map: HashMap<K, (Arc<V>, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    used: usize,
}

/// LRU cache with a byte budget.
pub(super) struct Lru<K, V> {
    inner: Mutex<Inner<K, V>>,
    budget: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty cache keeping at most `budget` bytes.
    pub(super) fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                used: 0,
            }),
            budget,
        }
    }

    /// The cached value of `key`, marked as recently used.
    pub(super) fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        inner.tick += 1;
        let tick = inner.tick;
        let (value, old_tick, _) = inner.map.get_mut(key)?;
        let value = Arc::clone(value);
        let old = std::mem::replace(old_tick, tick);
        inner.order.remove(&old);
        inner.order.insert(tick, key.clone());
        Some(value)
    }

    /// Stores `value` (costing `cost` bytes) under `key`; returns it as an `Arc`.
    pub(super) fn insert(&self, key: K, value: V, cost: usize) -> Arc<V> {
        let value = Arc::new(value);
        if cost > self.budget {
            return value;
        }
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, old_tick, old_cost)) = inner
            .map
            .insert(key.clone(), (Arc::clone(&value), tick, cost))
        {
            inner.order.remove(&old_tick);
            inner.used -= old_cost;
        }
        inner.order.insert(tick, key);
        inner.used += cost;
        while inner.used > self.budget {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((_, _, c)) = inner.map.remove(&oldest) {
                inner.used -= c;
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_least_recently_used() {
        let lru: Lru<u32, u32> = Lru::new(3);
        lru.insert(1, 10, 1);
        lru.insert(2, 20, 1);
        lru.insert(3, 30, 1);
        assert_eq!(lru.get(&1).as_deref(), Some(&10));
        lru.insert(4, 40, 1);
        assert!(lru.get(&2).is_none());
        assert_eq!(lru.get(&1).as_deref(), Some(&10));
        assert_eq!(lru.get(&3).as_deref(), Some(&30));
        assert_eq!(lru.get(&4).as_deref(), Some(&40));
        assert_eq!(lru.insert(5, 50, 9).as_ref(), &50);
        assert!(lru.get(&5).is_none());
    }
}
