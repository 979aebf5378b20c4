//! What one client, and all clients together, may hold of the server: connections, time
//! and memory (SPEC.md §15 "Bounds").
//!
//! - Connections: at most [`Limits::max_connections`] in all and
//!   [`Limits::max_per_peer`] from one peer address (see [`super::admission`]).
//! - Time: the whole handshake (TLS included) within [`Limits::handshake_timeout`] of the
//!   accept; in transmission, the next request's header within [`Limits::idle_timeout`] of
//!   the previous reply; a WRITE payload and every reply within [`transfer_time`] of their
//!   length. A deadline covers a whole wait, not the silence between two bytes.
//! - Haggling: at most [`Limits::max_options`] options, each at most
//!   [`Limits::max_option_bytes`], before an export is chosen.
//! - Memory: option payloads are bounded before they are allocated, WRITE payloads are read
//!   and dropped without being held, and the data of all READ replies being built at once
//!   is bounded by [`MAX_READ_MEMORY`] ([`ReadBudget`]).

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::formats::nbd::{MAX_OPTION, MAX_REQUEST};

/// Default most connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default most connections from one peer address.
pub const DEFAULT_MAX_PER_PEER: usize = 16;
/// Default time for a whole handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest silence between a reply and the next request.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default most options before an export is chosen (qemu sends about 5, `nbdinfo --list`
/// two per export).
pub const DEFAULT_MAX_OPTIONS: u32 = 64;
/// Default largest option payload: a GO or SET_META_CONTEXT naming a 4096-byte export
/// (proto.md's longest string) with a few queries fits.
pub const DEFAULT_MAX_OPTION_BYTES: u32 = 16 * 1024;
/// Smallest `max_option_bytes` accepted: an INFO/GO naming a 256-byte export (proto.md's
/// recommended longest string) must fit.
pub const MIN_OPTION_BYTES: u32 = 512;

/// Base time for moving a WRITE payload or a reply, before [`MIN_RATE`] is counted.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest a WRITE payload may arrive or a reply leave, in bytes per second
/// (512 kbit/s: a 32 MiB read reply may take 30 s + 512 s).
pub const MIN_RATE: u64 = 64 * 1024;
/// Time a refused client gets to read why (see [`super::admission`]).
pub const REFUSAL_TIME: Duration = Duration::from_secs(5);
/// Most refused clients being told why at once; beyond that they are closed at once.
pub const MAX_REFUSALS: usize = 16;
/// Most bytes of READ replies being built at once, over all connections (eight reads of
/// the maximum size, 32 MiB).
pub const MAX_READ_MEMORY: u64 = 256 << 20;

/// The deadline for moving `len` bytes of a WRITE payload or a reply.
pub fn transfer_time(len: u64) -> Duration {
    IO_TIMEOUT + Duration::from_secs(len / MIN_RATE)
}

/// The server's bounds; [`Limits::default`] holds the defaults above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most connections from one IPv4 address or IPv6 /64 (TCP only).
    pub max_per_peer: usize,
    /// Longest a connection may take from its accept to the end of its handshake.
    #[serde(rename = "handshake_timeout_secs", serialize_with = "secs")]
    pub handshake_timeout: Duration,
    /// Longest the server waits for a request after its last reply.
    #[serde(rename = "idle_timeout_secs", serialize_with = "secs")]
    pub idle_timeout: Duration,
    /// Most options a client may send before it chooses an export.
    pub max_options: u32,
    /// Largest option payload.
    pub max_option_bytes: u32,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_peer: DEFAULT_MAX_PER_PEER,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_options: DEFAULT_MAX_OPTIONS,
            max_option_bytes: DEFAULT_MAX_OPTION_BYTES,
        }
    }
}

impl Limits {
    /// Refuses limits that would refuse every client or wait forever.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(format!("serve-nbd: {what}")));
        if self.max_connections == 0 || self.max_per_peer == 0 {
            return bad("--max-connections and --max-per-peer must be at least 1");
        }
        if self.handshake_timeout < Duration::from_secs(1)
            || self.idle_timeout < Duration::from_secs(1)
        {
            return bad("--handshake-timeout and --idle-timeout must be at least 1 second");
        }
        if self.max_options == 0 {
            return bad("--max-options must be at least 1");
        }
        if !(MIN_OPTION_BYTES..=MAX_OPTION).contains(&self.max_option_bytes) {
            return bad(&format!(
                "--max-option-bytes must be from {MIN_OPTION_BYTES} to {MAX_OPTION}"
            ));
        }
        Ok(())
    }
}

/// The bytes of READ replies being built, bounded over all connections: a READ takes its
/// length before it reads and gives it back once its reply is written (or failed).
pub struct ReadBudget {
    free: Mutex<u64>,
    returned: Condvar,
}

/// Bytes taken from a [`ReadBudget`], given back on drop.
pub struct Taken<'a> {
    budget: &'a ReadBudget,
    bytes: u64,
}

impl ReadBudget {
    /// A budget of `bytes` (at least [`MAX_REQUEST`], so every valid READ fits).
    pub fn new(bytes: u64) -> Self {
        Self {
            free: Mutex::new(bytes.max(u64::from(MAX_REQUEST))),
            returned: Condvar::new(),
        }
    }

    /// Takes `bytes` (at most [`MAX_REQUEST`]), waiting while other replies hold too much.
    /// The wait is bounded by theirs: each reply is written within its [`transfer_time`].
    pub fn take(&self, bytes: u32) -> Taken<'_> {
        let bytes = u64::from(bytes.min(MAX_REQUEST));
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free < bytes {
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= bytes;
        Taken {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut free = self
            .budget
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *free += self.bytes;
        drop(free);
        self.budget.returned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn defaults_pass_their_own_check_and_zeros_do_not() {
        Limits::default().check().unwrap();
        for broken in [
            Limits {
                max_connections: 0,
                ..Limits::default()
            },
            Limits {
                max_per_peer: 0,
                ..Limits::default()
            },
            Limits {
                idle_timeout: Duration::ZERO,
                ..Limits::default()
            },
            Limits {
                max_options: 0,
                ..Limits::default()
            },
            Limits {
                max_option_bytes: MAX_OPTION + 1,
                ..Limits::default()
            },
        ] {
            assert!(broken.check().is_err(), "{broken:?} passed");
        }
    }

    /// A read that does not fit waits until another gives its bytes back.
    #[test]
    fn a_read_waits_for_the_budget_and_gets_it_when_another_finishes() {
        let budget = Arc::new(ReadBudget::new(u64::from(MAX_REQUEST)));
        let first = budget.take(MAX_REQUEST);
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (budget, done) = (Arc::clone(&budget), Arc::clone(&done));
            std::thread::spawn(move || {
                let _second = budget.take(1);
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!done.load(Ordering::SeqCst), "the second read did not wait");
        drop(first);
        waiter.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
