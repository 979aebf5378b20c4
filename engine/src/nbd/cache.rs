//! A bounded least-recently-used cache of decoded objects, shared by all clients.
//!
//! Entries are `Arc`s, so a value handed out stays valid after eviction. The budget counts
//! the bytes each entry declares; the least recently used entries go first once it is
//! exceeded (an entry larger than the whole budget is returned but not kept).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

struct Inner<K, V> {
    map: HashMap<K, (Arc<V>, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    used: usize,
}

/// LRU cache with a byte budget.
pub struct Lru<K, V> {
    inner: Mutex<Inner<K, V>>,
    budget: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty cache keeping at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
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
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
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
    pub fn insert(&self, key: K, value: V, cost: usize) -> Arc<V> {
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
