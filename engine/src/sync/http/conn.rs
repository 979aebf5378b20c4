//! Connections of `tessera serve`: how many, from whom, and how long each may wait.
//!
//! **Counting.** At most [`MAX_CONNECTIONS`] at once, [`MAX_PER_ADDRESS`] from one IPv4
//! address or IPv6 /64 ([`peer_key`]); a connection over the per-address limit is closed at
//! once. When all [`MAX_CONNECTIONS`] are taken, a new connection **evicts the oldest
//! connection that holds no request slot** (one waiting for a TLS handshake, a request head,
//! a next request, or draining a refused body) rather than being turned away: so idle
//! connections from any number of addresses cannot keep an authorized client out, and a
//! fresh connection, being the newest, is the last to be evicted. Connections holding a
//! request slot (at most [`super::server::MAX_REQUESTS`]) are never evicted.
//!
//! **Deadlines.** Each connection has one deadline at a time ([`ConnState::set_deadline`]),
//! for the whole of a wait — a handshake and head, a body, an answer — not for the silence
//! between two bytes, so trickling bytes does not stretch it. When it passes (or the
//! connection is evicted), the connection's task drops the connection and its socket
//! ([`ConnState::expired`]). While the server works on a request there is no deadline; TCP
//! keepalive finds a client that vanished meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections served at once from one IPv4 address or IPv6 /64.
pub const MAX_PER_ADDRESS: usize = 32;

/// The key a peer is counted under: its IPv4 address, or its IPv6 /64 prefix (one host
/// usually holds a whole /64).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// One connection's deadline, eviction flag and request count.
#[derive(Debug)]
pub struct ConnState {
    deadline: Mutex<Option<Instant>>,
    changed: Notify,
    evicted: AtomicBool,
    /// Request slots it holds (0 or 1 with HTTP/1.1).
    busy: AtomicUsize,
}

impl ConnState {
    fn new(within: Duration) -> Self {
        Self {
            deadline: Mutex::new(Some(Instant::now() + within)),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        }
    }

    /// From now on the connection ends `within` from now (`None`: no deadline).
    pub fn set_deadline(&self, within: Option<Duration>) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) =
            within.map(|w| Instant::now() + w);
        self.changed.notify_one();
    }

    /// Marks the connection as holding a request slot (not evictable) until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Resolves when the deadline in force passes or the connection is evicted.
    pub async fn expired(&self) {
        loop {
            if self.evicted.load(Ordering::SeqCst) {
                return;
            }
            let deadline = *self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
            match deadline {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A held request slot's mark on its connection; removed on drop.
#[derive(Debug)]
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    per_peer: HashMap<IpAddr, usize>,
    /// Live connections by age (ids increase), with their peer key.
    live: BTreeMap<u64, (IpAddr, Arc<ConnState>)>,
}

impl Registry {
    fn forget(&mut self, id: u64) {
        if let Some((key, _)) = self.live.remove(&id) {
            if let Some(n) = self.per_peer.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_peer.remove(&key);
                }
            }
        }
    }
}

/// The connections being served.
#[derive(Default)]
pub struct Connections {
    registry: Mutex<Registry>,
}

impl Connections {
    /// Counts a new connection from `peer` with a first deadline `within` from now, evicting
    /// the oldest connection without a request slot when all are taken; `None` when `peer`
    /// is at its limit or every connection holds a slot (a refused peer leaves no entry).
    pub fn admit(self: &Arc<Self>, peer: IpAddr, within: Duration) -> Option<Admitted> {
        let key = peer_key(peer);
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if reg.per_peer.get(&key).copied().unwrap_or(0) >= MAX_PER_ADDRESS {
            return None;
        }
        if reg.live.len() >= MAX_CONNECTIONS {
            let idle = reg
                .live
                .iter()
                .find(|(_, (_, s))| s.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, (_, s))| (*id, Arc::clone(s)))?;
            reg.forget(idle.0);
            idle.1.evict();
        }
        let id = reg.next_id;
        reg.next_id += 1;
        let state = Arc::new(ConnState::new(within));
        *reg.per_peer.entry(key).or_insert(0) += 1;
        reg.live.insert(id, (key, Arc::clone(&state)));
        Some(Admitted {
            all: Arc::clone(self),
            id,
            state,
        })
    }

    /// Connections counted now.
    pub fn count(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }
}

/// One counted connection, uncounted on drop (unless it was evicted, which uncounts it).
pub struct Admitted {
    all: Arc<Connections>,
    id: u64,
    /// Its deadline and eviction state.
    pub state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.all
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v6(last: u16, net: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, last))
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn connections_are_limited_per_peer() {
        let all = Arc::new(Connections::default());
        // One IPv6 /64 counts as one peer, whatever the host part.
        let held: Vec<_> = (0..MAX_PER_ADDRESS)
            .map(|i| all.admit(v6(i as u16 + 1, 1), T).unwrap())
            .collect();
        assert!(all.admit(v6(999, 1), T).is_none());
        assert!(
            all.admit(v6(1, 2), T).is_some(),
            "another /64 is another peer"
        );
        drop(held);
        assert!(all.admit(v6(999, 1), T).is_some(), "given back on drop");
        assert_eq!(all.count(), 0);
    }

    /// When every connection is taken, the oldest one without a request slot is evicted;
    /// connections holding slots are not, and when all do, the new one is refused.
    #[test]
    fn a_full_server_evicts_its_oldest_idle_connection() {
        let all = Arc::new(Connections::default());
        let peer = |i: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|i| all.admit(peer(i), T).unwrap())
            .collect();
        let busy: Vec<_> = held.iter().take(3).map(|a| a.state.busy()).collect();
        let newcomer = all.admit(peer(10_000), T).unwrap();
        assert_eq!(all.count(), MAX_CONNECTIONS);
        let evicted: Vec<usize> = held
            .iter()
            .enumerate()
            .filter(|(_, a)| a.state.evicted.load(Ordering::SeqCst))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(evicted, [3], "the oldest idle one");
        assert!(!newcomer.state.evicted.load(Ordering::SeqCst));
        drop(held);
        drop(busy);
        drop(newcomer);
        assert_eq!(all.count(), 0);

        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|i| all.admit(peer(i), T).unwrap())
            .collect();
        let _busy: Vec<_> = held.iter().map(|a| a.state.busy()).collect();
        assert!(all.admit(peer(10_000), T).is_none());
        assert_eq!(all.count(), MAX_CONNECTIONS);
    }

    #[test]
    fn deadlines_expire_and_can_be_moved_or_lifted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Arc::new(ConnState::new(Duration::from_millis(50)));
            let started = Instant::now();
            s.expired().await;
            assert!(started.elapsed() >= Duration::from_millis(50));

            s.set_deadline(None);
            let lifted = tokio::time::timeout(Duration::from_millis(200), s.expired()).await;
            assert!(lifted.is_err(), "no deadline: never expires");

            let waiter = {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.expired().await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.set_deadline(Some(Duration::from_millis(30)));
            tokio::time::timeout(Duration::from_secs(2), waiter)
                .await
                .expect("a deadline set while waiting is noticed")
                .unwrap();
        });
    }
}
