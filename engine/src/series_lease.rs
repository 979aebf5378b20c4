//! A series' lease in a store several machines share (SPEC §8, "series lease"): one
//! backup of a series at a time across every machine, where the local series lock
//! ([`crate::lock::WriterLock::acquire_series`]) only covers one machine.
//!
//! The lease is a chain of generations, objects `locks/series-<hash>/<generation>` (20
//! digits), each holding JSON: who (host, PID, since, a random nonce, the holder's lease
//! time, its machine and cache hashed) and whether it is still held. Only create-only puts
//! (`If-None-Match`), listings with storage times and the store's clock are used:
//!
//! - **Acquire.** List the generations with their storage times; if the newest is held
//!   and was written less than its holder's lease time ago by the store's clock, refuse
//!   ([`Error::SeriesLocked`], naming the holder). Otherwise create the next generation
//!   create-only: of two machines racing for it exactly one wins (their records differ by
//!   the nonce, so the loser cannot take the winner's bytes for its own); the other looks
//!   again.
//! - **Renew.** The holder rewrites its own generation every quarter of the lease time
//!   (a put refreshes the storage time). No one else ever writes that key.
//! - **Check.** Before publishing, and again right before the snapshot file is stored, the
//!   holder refuses to publish unless its last successful renewal is less than half a lease
//!   time old (its own monotonic clock), its generation is still the newest, and holds its
//!   own record. A takeover needs the holder unrenewed for a whole lease time, so the one
//!   window left is a holder paused (suspended, stopped) for more than half a lease time
//!   between its last check and the store's acknowledgement of its snapshot file.
//! - **Release.** The holder rewrites its generation as released; the next acquirer
//!   creates the generation after it. Generations only grow (a released one is kept until
//!   the next holder deletes those below its own), so a holder that slept through a
//!   takeover always sees a newer one.
//!
//! A holder killed without releasing blocks the series for at most its lease time
//! ([`lease_time`], `TESSERA_SERIES_LEASE` seconds, default 600), except to the next backup
//! of the same machine and cache directory: it holds the local series lock, so it knows the
//! holder is gone and takes the lease over at once.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{Backend, ObjectKey, PutMode};

/// Largest lease object read.
const MAX_RECORD: u64 = 4096;
/// Attempts at creating the next generation when others race for it.
const ATTEMPTS: u32 = 8;
/// The lease time assumed for an unreadable record (the default).
const DEFAULT_LEASE_S: u64 = 600;

/// How long a lease lasts without renewal: `TESSERA_SERIES_LEASE` seconds (at least 4),
/// default 600.
pub fn lease_time() -> Duration {
    let secs = std::env::var("TESSERA_SERIES_LEASE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_LEASE_S)
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
    /// Random, per holder: two holders never write the same bytes (a create-only put that
    /// finds identical bytes takes them for its own earlier attempt).
    nonce: String,
    /// The holder's lease time in seconds: others judge it stale by this, not their own.
    lease_s: u64,
    /// The holder's machine and cache directory, hashed.
    place: String,
}

/// A lease held (see the module docs); released when dropped.
pub struct SeriesLease {
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
}

/// Checks a lease a [`SeriesLease`] holds (see [`SeriesLease::checker`]).
#[derive(Clone)]
pub struct LeaseCheck(Arc<Shared>);

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
    /// When the lease was last taken or renewed, by this process's monotonic clock.
    renewed: Mutex<Instant>,
}

/// The key prefix of `series`' generations (a hash: names of an encrypted repository's
/// series are private).
pub fn prefix_of(series: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("tessera series lock\n{series}").as_bytes());
    format!("locks/series-{}/", hex::encode(&hash[..16]))
}

/// The key of generation `generation` under `prefix`.
fn generation_key(prefix: &str, generation: u64) -> ObjectKey {
    ObjectKey::from_listed(format!("{prefix}{generation:020}"))
}

fn generation_of(prefix: &str, key: &ObjectKey) -> Option<u64> {
    key.as_str().strip_prefix(prefix)?.parse().ok()
}

/// This machine and cache directory, hashed.
fn place_of(local_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let hash = sha2::Sha256::digest(
        format!(
            "{}\n{}\n{}",
            machine.trim(),
            crate::net::hostname().trim(),
            local_dir.display()
        )
        .as_bytes(),
    );
    hex::encode(&hash[..16])
}

impl SeriesLease {
    /// Takes the lease of `series` in `backend` (a shared store), or fails with
    /// [`Error::SeriesLocked`] naming the holder. `local_dir` is this machine's cache
    /// directory, whose series lock the caller holds.
    pub fn acquire(
        backend: Arc<dyn Backend>,
        series: &str,
        local_dir: &std::path::Path,
    ) -> Result<Self> {
        let prefix = prefix_of(series);
        let lease = lease_time();
        let record = Record {
            host: crate::net::hostname().trim().to_string(),
            pid: std::process::id(),
            since: crate::time::now_rfc3339(),
            held: true,
            nonce: hex::encode(rand::random::<[u8; 16]>()),
            lease_s: lease.as_secs(),
            place: place_of(local_dir),
        };
        let body = encode(&record)?;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50 << attempt.min(5)));
            }
            let (newest, now) = newest(&*backend, &prefix)?;
            if let Some((generation, stamp)) = newest {
                refuse_if_held(
                    &*backend,
                    &generation_key(&prefix, generation),
                    (stamp, now),
                    &record,
                    series,
                )?;
            }
            let generation = newest.map_or(1, |(g, _)| g + 1);
            match backend.put_bytes(&generation_key(&prefix, generation), PutMode::Create, &body) {
                Ok(()) => {
                    forget_older(&*backend, &prefix, generation);
                    let lease_us = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
                    return Self::hold(backend, series, prefix, generation, record, lease_us);
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
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            backend,
            series: series.to_string(),
            prefix,
            generation,
            record,
            lease_us,
            done: Mutex::new(false),
            wake: Condvar::new(),
            renewed: Mutex::new(Instant::now()),
        });
        let renewing = shared.clone();
        let renewer = std::thread::Builder::new()
            .name("tessera-lease".into())
            .spawn(move || renewing.renew_until_done())
            .map_err(|e| Error::io("starting the series lease's renewal thread", e))?;
        Ok(Self {
            shared,
            renewer: Some(renewer),
        })
    }

    /// A handle that checks this lease (for the writer a backup publishes through), while
    /// this one keeps renewing it.
    pub fn checker(&self) -> LeaseCheck {
        LeaseCheck(self.shared.clone())
    }

    /// See [`LeaseCheck::check`].
    pub fn check(&self) -> Result<()> {
        self.checker().check()
    }
}

impl LeaseCheck {
    /// Refuses ([`Error::Refused`]) unless the lease was taken or renewed within half the
    /// lease time (this process's monotonic clock), and its generation is still the
    /// series' newest, holding this holder's record, renewed within half the lease time by
    /// the store's clock.
    pub fn check(&self) -> Result<()> {
        let s = &*self.0;
        let half = s.lease_us / 2;
        let renewed_ago = s.renewed.lock().map_or(Duration::MAX, |at| at.elapsed());
        if renewed_ago > Duration::from_micros(half.unsigned_abs()) {
            return Err(s.lost("it could not be renewed for half the lease time"));
        }
        let (newest, now) = newest(&*s.backend, &s.prefix)?;
        match newest {
            Some((generation, _)) if generation > s.generation => {
                Err(s.lost("another machine took it over after it went unrenewed"))
            }
            Some((generation, stamp)) if generation == s.generation => {
                let mine = read(&*s.backend, &s.key())?
                    .is_some_and(|r| r.held && r.nonce == s.record.nonce);
                if !mine {
                    Err(s.lost("its generation holds another holder's record"))
                } else if stamp.saturating_add(half) > now {
                    Ok(())
                } else {
                    Err(s.lost("it could not be renewed for half the lease time"))
                }
            }
            _ => Err(s.lost("its record is gone")),
        }
    }
}

impl Shared {
    fn key(&self) -> ObjectKey {
        generation_key(&self.prefix, self.generation)
    }

    fn lost(&self, why: &str) -> Error {
        Error::Refused {
            reason: format!(
                "this backup of series {:?} lost its lease in {} ({why}); nothing was published. Run it again",
                self.series,
                self.backend.describe()
            ),
        }
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
            // A failed renewal is retried at the next turn; `check` refuses once the last
            // success is half a lease time old.
            let renewed = encode(&self.record)
                .and_then(|b| self.backend.put_bytes(&self.key(), PutMode::Replace, &b));
            if renewed.is_ok() {
                if let Ok(mut at) = self.renewed.lock() {
                    *at = Instant::now();
                }
            }
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

/// Refuses ([`Error::SeriesLocked`]) if generation `key`, stored at `stamp`, is held by a
/// live holder by the store's clock `now`: held, and renewed within the holder's own lease
/// time. A record of this machine and cache directory (`me.place`: its backup died, since
/// the caller holds the local series lock) does not count, nor one gone meanwhile. An
/// unreadable record counts as held by an unknown holder while fresh by the default lease
/// time.
fn refuse_if_held(
    backend: &dyn Backend,
    key: &ObjectKey,
    (stamp, now): (i64, i64),
    me: &Record,
    series: &str,
) -> Result<()> {
    let fresh = |lease_s: u64| {
        let lease_us = i64::try_from(lease_s.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        stamp.saturating_add(lease_us) > now
    };
    let locked = |pid: String, host: String, since: String| Error::SeriesLocked {
        series: series.to_string(),
        pid,
        host,
        since,
    };
    let holder = match read(backend, key) {
        Ok(holder) => holder,
        Err(Error::Refused { .. }) if fresh(DEFAULT_LEASE_S.max(me.lease_s)) => {
            return Err(locked(
                "?".into(),
                "? (an unreadable lease record)".into(),
                crate::time::format_us(stamp),
            ))
        }
        Err(Error::Refused { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match holder {
        Some(h) if h.held && h.place != me.place && fresh(h.lease_s) => {
            Err(locked(h.pid.to_string(), h.host, h.since))
        }
        _ => Ok(()),
    }
}

/// The newest generation under `prefix` with its storage time, and the store's clock now.
fn newest(backend: &dyn Backend, prefix: &str) -> Result<(Option<(u64, i64)>, i64)> {
    let now = backend.clock_us()?;
    let newest = backend
        .list_stamped(prefix)?
        .into_iter()
        .filter_map(|(key, stamp)| Some((generation_of(prefix, &key)?, stamp)))
        .max_by_key(|(generation, _)| *generation);
    Ok((newest, now))
}

/// A generation's record, `None` if it is gone (deleted by a newer holder);
/// [`Error::Refused`] if it is not one tessera wrote.
fn read(backend: &dyn Backend, key: &ObjectKey) -> Result<Option<Record>> {
    let foreign = || Error::Refused {
        reason: format!(
            "{key} in {} is not a tessera lease record",
            backend.describe()
        ),
    };
    match backend.size(key)? {
        None => return Ok(None),
        Some(size) if size > MAX_RECORD => return Err(foreign()),
        Some(_) => {}
    }
    match backend.get_if_exists(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| foreign()),
    }
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
        let key = generation_key(&prefix, 42);
        assert_eq!(generation_of(&prefix, &key), Some(42));
        let other = generation_key(&prefix_of("vm2"), 42);
        assert_eq!(generation_of(&prefix, &other), None);
        assert_ne!(prefix_of("vm1"), prefix_of("vm2"));
    }
}
