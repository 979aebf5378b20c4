//! Rate limit of failed authentications per address ([`super::conn::peer_key`]): a token
//! bucket of [`FAILURE_BURST`] failures that refills one failure every [`FAILURE_REFILL`].
//! While an address's bucket is empty its requests are answered 429 **without the token
//! being looked at**, so guessing from there gains nothing; other addresses are not affected.
//! A token is 256 random bits, so the limit is not what makes guessing hopeless; it keeps a
//! guesser from costing the server a hash and a log line per attempt at line speed.
//!
//! The table holds at most [`MAX_TRACKED`] addresses; when full, addresses whose bucket has
//! refilled are dropped, and if that frees nothing the table starts over (an attacker with
//! that many addresses gets [`FAILURE_BURST`] more tries from each, nothing else).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::conn::peer_key;

/// Failed authentications an address may have in a burst.
pub const FAILURE_BURST: u32 = 10;
/// One more failure is allowed per this time.
pub const FAILURE_REFILL: Duration = Duration::from_secs(2);
/// Most addresses tracked.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed, as of `at` (fractional while refilling).
    left: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        (self.left + refilled).min(f64::from(FAILURE_BURST))
    }
}

/// Failed authentications per address.
#[derive(Debug, Default)]
pub struct Failures {
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Failures {
    /// How long `peer` must wait before its next request is looked at; `None` when it may
    /// try now.
    pub fn locked_out(&self, peer: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let left = table.get(&peer_key(peer))?.now(now);
        (left < 1.0).then(|| FAILURE_REFILL.mul_f64(1.0 - left))
    }

    /// Counts a failed authentication from `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_TRACKED {
            table.retain(|_, b| b.now(now) < f64::from(FAILURE_BURST));
            if table.len() >= MAX_TRACKED {
                table.clear();
            }
        }
        let bucket = table.entry(peer_key(peer)).or_insert(Bucket {
            left: f64::from(FAILURE_BURST),
            at: now,
        });
        *bucket = Bucket {
            left: (bucket.now(now) - 1.0).max(0.0),
            at: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_guessing_address_is_locked_out_and_others_are_not() {
        let f = Failures::default();
        let guesser = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        for _ in 0..FAILURE_BURST {
            assert_eq!(f.locked_out(guesser), None);
            f.failed(guesser);
        }
        let wait = f.locked_out(guesser).expect("locked out after the burst");
        assert!(wait <= FAILURE_REFILL, "{wait:?}");
        assert_eq!(f.locked_out(other), None);
        // Locked out, failures do not dig a deeper hole than one refill.
        f.failed(guesser);
        assert!(f.locked_out(guesser).unwrap() <= FAILURE_REFILL);
    }
}
