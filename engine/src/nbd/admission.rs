//! Which connections the server serves: at most `max_connections` in all and
//! `max_per_peer` from one peer (an IPv4 address or an IPv6 /64; Unix-socket clients count
//! only towards the total).
//!
//! A connection counts from its accept until its thread ends, in one of two phases:
//! *handshake* (no export chosen yet) or *transmission*. When a new connection would go
//! over a limit, the oldest connection still in its handshake that counts towards that
//! limit (the same peer's for the per-peer limit, preferring the same peer's for the total)
//! is closed to make room: clients that connect and never negotiate (or negotiate
//! slowly) cannot keep a real client out, while a connection that chose its export is
//! never closed for another. When every connection over the limit is in transmission, the
//! new one is refused with a reason ([`refuse`]): it gets the greeting, and every option it
//! sends is answered `NBD_REP_ERR_POLICY` with a message naming the limit, for at most
//! [`REFUSAL_TIME`]; at most [`MAX_REFUSALS`] clients are told at once, any beyond are
//! closed straight away.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::conn::{Conn, Socket};
use super::handshake::{greet, read_option};
use super::limits::{Limits, MAX_REFUSALS, MIN_OPTION_BYTES, REFUSAL_TIME};
use super::proto::option_reply;
use crate::formats::nbd::{OPT_ABORT, OPT_EXPORT_NAME, REP_ACK, REP_ERR_POLICY};

/// Options a refused client may send before it is closed.
const REFUSAL_OPTIONS: usize = 8;

/// The key a peer is counted under: its IPv4 address, or its IPv6 /64 prefix (one host
/// usually holds a whole /64).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

/// One connection being served.
struct Entry {
    peer: Option<IpAddr>,
    accepted: Instant,
    in_transmission: bool,
    /// Closes the connection's socket (its thread then ends).
    close: Box<dyn Fn() + Send>,
}

/// The connections being served.
pub struct Admission {
    max_connections: usize,
    max_per_peer: usize,
    entries: Mutex<(u64, HashMap<u64, Entry>)>,
    /// Refused clients being told why.
    refusing: Arc<AtomicUsize>,
}

/// A counted connection; uncounted on drop (also when its thread panics).
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
}

/// Why a connection was not admitted; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Admission {
    /// An empty set bounded by `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_connections: limits.max_connections,
            max_per_peer: limits.max_per_peer,
            entries: Mutex::new((0, HashMap::new())),
            refusing: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts a new connection from `peer` (`None`: a Unix-socket client), closing the
    /// oldest connection still in its handshake when a limit is reached (see the module
    /// documentation); `close` closes the new connection if it is later chosen so.
    pub fn admit(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        close: Box<dyn Fn() + Send>,
    ) -> Result<Ticket, Refusal> {
        let peer = peer.map(peer_key);
        let mut guard = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (next_id, entries) = &mut *guard;
        if let Some(p) = peer {
            let from_peer = entries.values().filter(|e| e.peer == Some(p)).count();
            if from_peer >= self.max_per_peer && !evict(entries, |e| e.peer == Some(p)) {
                return Err(Refusal(format!(
                    "tessera serve-nbd: {p} already has {from_peer} connections in use, the most one address may have (--max-per-peer); close one or try again later"
                )));
            }
        }
        if entries.len() >= self.max_connections
            && !evict(entries, |e| peer.is_some() && e.peer == peer)
            && !evict(entries, |_| true)
        {
            return Err(Refusal(format!(
                "tessera serve-nbd: the server is serving {} connections, its limit (--max-connections); try again later",
                entries.len()
            )));
        }
        let id = *next_id;
        *next_id += 1;
        entries.insert(
            id,
            Entry {
                peer,
                accepted: Instant::now(),
                in_transmission: false,
                close,
            },
        );
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
        })
    }

    /// Connections counted now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .len()
    }

    /// Tells a refused client why (see the module documentation) on a thread of its own,
    /// or closes it at once when [`MAX_REFUSALS`] are being told already.
    pub fn refuse<S: Socket>(&self, sock: S, why: Refusal) {
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSALS {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let refusing = Arc::clone(&self.refusing);
        let spawned = std::thread::Builder::new()
            .name("nbd-refusal".into())
            .spawn(move || {
                let _ = refuse(Conn::new(sock, Instant::now() + REFUSAL_TIME), &why.0);
                refusing.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Closes and uncounts the oldest connection in its handshake among those `matches`
/// accepts; false if there is none.
fn evict(entries: &mut HashMap<u64, Entry>, matches: impl Fn(&Entry) -> bool) -> bool {
    let victim = entries
        .iter()
        .filter(|(_, e)| !e.in_transmission && matches(e))
        .min_by_key(|(_, e)| e.accepted)
        .map(|(&id, _)| id);
    let Some(entry) = victim.and_then(|id| entries.remove(&id)) else {
        return false;
    };
    (entry.close)();
    true
}

impl Ticket {
    /// The connection chose its export: it is no longer closed to make room.
    pub fn in_transmission(&self) {
        let mut guard = self
            .admission
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = guard.1.get_mut(&self.id) {
            e.in_transmission = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .remove(&self.id);
    }
}

/// Greets a refused client and answers each of its options with `why` until it gives up,
/// sends [`REFUSAL_OPTIONS`] options, or the connection's deadline passes.
fn refuse<S: Socket>(mut c: Conn<S>, why: &str) -> std::io::Result<()> {
    if greet(&mut c)?.is_none() {
        return Ok(());
    }
    for _ in 0..REFUSAL_OPTIONS {
        c.flush()?;
        let Some((option, _)) = read_option(&mut c, MIN_OPTION_BYTES)? else {
            break;
        };
        match option {
            OPT_EXPORT_NAME => break,
            OPT_ABORT => {
                option_reply(&mut c, option, REP_ACK, &[])?;
                break;
            }
            _ => option_reply(&mut c, option, REP_ERR_POLICY, why.as_bytes())?,
        }
    }
    c.flush()?;
    // Let the client read the answer before the close (a close with unread input resets).
    let mut rest = [0u8; 256];
    while c.read(&mut rest).is_ok_and(|n| n > 0) {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    fn limits(total: usize, per_peer: usize) -> Limits {
        Limits {
            max_connections: total,
            max_per_peer: per_peer,
            ..Limits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// A close hook that records that it ran.
    fn hook() -> (Box<dyn Fn() + Send>, Arc<AtomicBool>) {
        let closed = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&closed);
        (Box::new(move || c.store(true, Ordering::SeqCst)), closed)
    }

    #[test]
    fn ipv6_peers_count_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), ip(1));
    }

    #[test]
    fn a_full_peer_loses_its_oldest_handshake_then_is_refused() {
        let adm = Arc::new(Admission::new(&limits(10, 2)));
        let (h1, c1) = hook();
        let (h2, c2) = hook();
        let t1 = adm.admit(Some(ip(1)), h1).unwrap();
        let t2 = adm.admit(Some(ip(1)), h2).unwrap();
        // Another peer is not affected by peer 1's limit.
        let _other = adm.admit(Some(ip(2)), hook().0).unwrap();
        // Peer 1's third connection closes its oldest handshake.
        let (h3, c3) = hook();
        let t3 = adm.admit(Some(ip(1)), h3).unwrap();
        assert!(c1.load(Ordering::SeqCst) && !c2.load(Ordering::SeqCst));
        drop(t1); // its thread ends later: nothing changes
        assert_eq!(adm.count(), 3);
        // With both of peer 1's connections in transmission, a third is refused.
        t2.in_transmission();
        t3.in_transmission();
        let refused = adm.admit(Some(ip(1)), hook().0).map(drop).unwrap_err();
        assert!(refused.0.contains("--max-per-peer"), "{refused:?}");
        assert!(!c2.load(Ordering::SeqCst) && !c3.load(Ordering::SeqCst));
        drop(t3);
        assert!(adm.admit(Some(ip(1)), hook().0).is_ok());
    }

    #[test]
    fn a_full_server_closes_the_oldest_handshake_preferring_the_same_peer() {
        let adm = Arc::new(Admission::new(&limits(3, 3)));
        let (h1, c1) = hook();
        let (h2, c2) = hook();
        let _t1 = adm.admit(Some(ip(1)), h1).unwrap();
        let _t2 = adm.admit(Some(ip(2)), h2).unwrap();
        let t3 = adm.admit(Some(ip(3)), hook().0).unwrap();
        // Peer 2 reconnects: its own handshake goes, not peer 1's older one.
        let t4 = adm.admit(Some(ip(2)), hook().0).unwrap();
        assert!(c2.load(Ordering::SeqCst) && !c1.load(Ordering::SeqCst));
        // A new peer takes the oldest handshake of all.
        let t5 = adm.admit(Some(ip(4)), hook().0).unwrap();
        assert!(c1.load(Ordering::SeqCst));
        assert_eq!(adm.count(), 3);
        // All in transmission: refused, naming the limit.
        for t in [&t3, &t4, &t5] {
            t.in_transmission();
        }
        let refused = adm.admit(None, hook().0).map(drop).unwrap_err();
        assert!(refused.0.contains("--max-connections"), "{refused:?}");
    }
}
