//! Blocking requests to a remote store, several at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// `f` of each of `items` on up to `at_once` threads (each takes the next item when it is
/// done with one); the answers in the order of `items`. For blocking calls that wait on a
/// network (rayon's pool has one thread per core and is for computing).
pub fn map_in_flight<T: Sync, R: Send>(
    items: &[T],
    at_once: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    if items.len() <= 1 || at_once <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let answers: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..at_once.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return;
                };
                let answer = f(item);
                if let Ok(mut slot) = answers[i].lock() {
                    *slot = Some(answer);
                }
            });
        }
    });
    answers
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(Error::Internal("a request in flight was lost".into())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::map_in_flight;

    #[test]
    fn answers_keep_the_order_of_the_items() {
        let items: Vec<u32> = (0..100).collect();
        let out = map_in_flight(&items, 8, |n| Ok(n * 2));
        let got: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, items.iter().map(|n| n * 2).collect::<Vec<_>>());
    }
}
