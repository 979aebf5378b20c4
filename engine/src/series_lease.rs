//! A series' lease in a store several machines share (SPEC §8, "Series leases"): one
//! backup of a series at a time across every machine, where the local series lock
//! ([`crate::lock::WriterLock::acquire_series`]) only covers one machine.
//!
//! The lease is a chain of generations, objects `locks/series-<hash>/<generation>` (20
//! digits), each holding JSON: who (host, PID, since) and whether it is still held. Only
//! create-only puts and the store's own clock are used, nothing the store might not offer:
//!
//! - **Acquire.** List the generations with their storage times; if the highest is held
//!   and was written less than the lease time ago by the store's clock, refuse
//!   ([`Error::SeriesLocked`], naming the holder). Otherwise create the next generation
//!   create-only: of two machines racing for it exactly one wins; the other lists again.
//! - **Renew.** The holder rewrites its own generation every quarter of the lease time
//!   (a put refreshes the storage time). No one else ever writes that key.
//! - **Check.** Before publishing, the holder lists again: a higher generation means
//!   another machine found the lease stale (renewals failed for a whole lease time) and
//!   took it; the holder then refuses to publish. So two backups of a series never both
//!   publish while each thought it held the lease.
//! - **Release.** The holder rewrites its generation as released; the next acquirer
//!   creates the generation after it. Generations only grow (a released one is kept, not
//!   deleted, until the next holder deletes those below its own), so a holder that slept
//!   through a takeover always sees a higher one.
//!
//! A holder killed without releasing blocks the series for at most the lease time
//! ([`lease_time`], `TESSERA_SERIES_LEASE` seconds, default 600).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{Backend, ObjectKey, PutMode};

/// Largest lease object read.
const MAX_RECORD: u64 = 4096;
/// Attempts at creating the next generation when others race for it.
const ATTEMPTS: usize = 8;

/// How long a lease lasts without renewal: `TESSERA_SERIES_LEASE` seconds (at least 4),
/// default 600.
pub fn lease_time() -> Duration {
    let secs = std::env::var("TESSERA_SERIES_LEASE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(600)
        .max(4);
    Duration::from_secs(secs)
}

/// What a generation holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    host: String,
    pid: u32,
    since: String,
    held: bool,
}

/// A lease held (see the module docs); released when dropped.
pub struct SeriesLease {
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    series: String,
    prefix: String,
    generation: u64,
    record: Record,
    lease_us: i64,
    /// Set when the holder lets go: wakes the renewer.
    done: Mutex<bool>,
    wake: Condvar,
}

/// The key prefix of `series`' generations (a hash: names of an encrypted repository's
/// series are private).
pub fn prefix_of(series: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("tessera series lock\n{series}").as_bytes());
    format!("locks/series-{}/", hex::encode(&hash[..16]))
}

fn generation_of(prefix: &str, key: &ObjectKey) -> Option<u64> {
    key.as_str().strip_prefix(prefix)?.parse().ok()
}

impl SeriesLease {
    /// Takes the lease of `series` in `backend` (a shared store), or fails with
    /// [`Error::SeriesLocked`] naming the holder.
    pub fn acquire(backend: Arc<dyn Backend>, series: &str) -> Result<Self> {
        let prefix = prefix_of(series);
        let lease_us = i64::try_from(lease_time().as_micros()).unwrap_or(i64::MAX);
        let record = Record {
            host: crate::net::hostname().trim().to_string(),
            pid: std::process::id(),
            since: crate::time::now_rfc3339(),
            held: true,
        };
        let body = encode(&record)?;
        for _ in 0..ATTEMPTS {
            let (highest, now) = highest(&*backend, &prefix)?;
            if let Some((generation, stamp)) = highest {
                let key = ObjectKey::from_listed(format!("{prefix}{generation:020}"));
                if let Some(holder) = read(&*backend, &key)? {
                    if holder.held && stamp.saturating_add(lease_us) > now {
                        return Err(Error::SeriesLocked {
                            series: series.to_string(),
                            pid: holder.pid.to_string(),
                            host: holder.host,
                            since: holder.since,
                        });
                    }
                }
            }
            let generation = highest.map_or(1, |(g, _)| g + 1);
            let key = ObjectKey::from_listed(format!("{prefix}{generation:020}"));
            match backend.put_bytes(&key, PutMode::Create, &body) {
                Ok(()) => {
                    forget_older(&*backend, &prefix, generation);
                    return Ok(Self::hold(
                        backend, series, prefix, generation, record, lease_us,
                    ));
                }
                Err(Error::ObjectExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Refused {
            reason: format!(
                "the lease of series {series:?} in {} changed hands {ATTEMPTS} times while this backup tried to take it; try again",
                backend.describe()
            ),
        })
    }

    fn hold(
        backend: Arc<dyn Backend>,
        series: &str,
        prefix: String,
        generation: u64,
        record: Record,
        lease_us: i64,
    ) -> Self {
        let shared = Arc::new(Shared {
            backend,
            series: series.to_string(),
            prefix,
            generation,
            record,
            lease_us,
            done: Mutex::new(false),
            wake: Condvar::new(),
        });
        let renewing = shared.clone();
        let renewer = std::thread::Builder::new()
            .name("tessera-lease".into())
            .spawn(move || renewing.renew_until_done())
            .ok();
        Self { shared, renewer }
    }

    /// Refuses ([`Error::Refused`]) unless this lease is still the series' newest
    /// generation and was renewed within half the lease time: called before publishing.
    pub fn check(&self) -> Result<()> {
        let s = &*self.shared;
        let (highest, now) = highest(&*s.backend, &s.prefix)?;
        let lost = |why: &str| {
            Error::Refused {
            reason: format!(
                "this backup of series {:?} lost its lease in {} ({why}); nothing was published. Run it again",
                s.series,
                s.backend.describe()
            ),
        }
        };
        match highest {
            Some((generation, _)) if generation > s.generation => {
                Err(lost("another machine took it over after it went unrenewed"))
            }
            Some((generation, stamp)) if generation == s.generation => {
                if stamp.saturating_add(s.lease_us / 2) > now {
                    Ok(())
                } else {
                    Err(lost("it could not be renewed for half the lease time"))
                }
            }
            _ => Err(lost("its record is gone")),
        }
    }
}

impl Shared {
    fn key(&self) -> ObjectKey {
        ObjectKey::from_listed(format!("{}{:020}", self.prefix, self.generation))
    }

    /// Rewrites the generation every quarter of the lease time until let go.
    fn renew_until_done(&self) {
        let every = Duration::from_micros((self.lease_us / 4).unsigned_abs());
        let Ok(mut done) = self.done.lock() else {
            return;
        };
        loop {
            let Ok((guard, _)) = self.wake.wait_timeout(done, every) else {
                return;
            };
            done = guard;
            if *done {
                return;
            }
            // A failed renewal is retried at the next turn; `check` reads the store itself.
            let _ = encode(&self.record)
                .and_then(|b| self.backend.put_bytes(&self.key(), PutMode::Replace, &b));
        }
    }
}

impl Drop for SeriesLease {
    fn drop(&mut self) {
        let s = &*self.shared;
        if let Ok(mut done) = s.done.lock() {
            *done = true;
            s.wake.notify_all();
        }
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        // Released, unless another machine took it over (then this generation is not the
        // newest and rewriting it changes nothing anyone reads).
        let released = Record {
            held: false,
            ..s.record.clone()
        };
        if let Ok(body) = encode(&released) {
            let _ = s.backend.put_bytes(&s.key(), PutMode::Replace, &body);
        }
    }
}

/// The newest generation under `prefix` with its storage time, and the store's clock now.
fn highest(backend: &dyn Backend, prefix: &str) -> Result<(Option<(u64, i64)>, i64)> {
    let now = backend.clock_us()?;
    let newest = backend
        .list_stamped(prefix)?
        .into_iter()
        .filter_map(|(key, stamp)| Some((generation_of(prefix, &key)?, stamp)))
        .max_by_key(|(generation, _)| *generation);
    Ok((newest, now))
}

/// A generation's record, `None` if it is gone (deleted by a newer holder) or unreadable
/// (not tessera's: treated as free, the next generation replaces it).
fn read(backend: &dyn Backend, key: &ObjectKey) -> Result<Option<Record>> {
    match backend.size(key)? {
        Some(size) if size <= MAX_RECORD => {}
        _ => return Ok(None),
    }
    Ok(backend
        .get_if_exists(key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::Internal(format!("encoding a series lease: {e}")))
}

/// Deletes the generations below `generation` (best effort: leftovers are deleted by the
/// next holder).
fn forget_older(backend: &dyn Backend, prefix: &str, generation: u64) {
    if let Ok(keys) = backend.list(prefix) {
        for key in keys {
            if generation_of(prefix, &key).is_some_and(|g| g < generation) {
                let _ = backend.delete(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_parse_only_under_their_prefix() {
        let prefix = prefix_of("vm1");
        let key = ObjectKey::from_listed(format!("{prefix}{:020}", 42));
        assert_eq!(generation_of(&prefix, &key), Some(42));
        let other = ObjectKey::from_listed(format!("{}{:020}", prefix_of("vm2"), 42));
        assert_eq!(generation_of(&prefix, &other), None);
        assert_ne!(prefix_of("vm1"), prefix_of("vm2"));
    }
}
