//! What the pages show, gathered from the repository on the serving thread (SPEC §27.3).
//!
//! Everything is filtered to the series the viewer's token covers before it reaches a page;
//! repository-wide figures (stored bytes, packs, verify runs of the whole repository) are
//! shown only to tokens that cover every series, since they tell about series the token
//! may not see.
//!
//! Two figures cost a pass over the repository: the repository's totals (one pass over the
//! index) and the exact bytes each snapshot alone references (one forget plan per
//! snapshot). Both are cached in [`Caches`] for as long as the catalogue does not change (its
//! fingerprint is the hash of every snapshot id) and at most [`CACHE_TIME`]; pages say when
//! their figures were computed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_format::{SnapshotHeader, SnapshotId};

use crate::damage_marks::{load_damage_marks, DamageMark};
use crate::error::Result;
use crate::ops::stats::{stats, RepoStats};
use crate::ops::usage::exclusive_bytes_all;
use crate::repo::Repository;
use crate::sync::http::tokens::TokenEntry;

/// Longest a cached figure is shown.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const CACHE_TIME: Duration = Duration::from_secs(300);

/// One snapshot as the pages show it.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Its id.
    pub id: SnapshotId,
    /// Its catalogue entry.
    pub header: SnapshotHeader,
    /// Sum of its disks' sizes.
    pub logical_bytes: u64,
    /// Stored bytes its backup added.
    pub new_stored_bytes: u64,
    /// Raw bytes of the chunks its backup added.
    pub new_raw_bytes: u64,
    /// `key`, `full` or `delta` (a disk's `backup.mode`; `key` if any disk was a key
    /// backup, `delta` if any was a delta).
    pub mode: &'static str,
    /// Protected from prune and forget.
    pub protected: bool,
    /// What the last verification found wrong with it.
    pub damage: Option<DamageMark>,
}

impl Snap {
    /// Its series.
    pub fn series(&self) -> &str {
        &self.header.series
    }
}

/// The snapshots a viewer may see, oldest first.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Oldest first.
    pub snaps: Vec<Snap>,
    /// Whether the viewer sees every series (and so the repository-wide figures).
    pub whole: bool,
    /// Hash of every snapshot id of the repository (not only the visible ones).
    pub fingerprint: [u8; 32],
}

impl Catalogue {
    /// The snapshots of `series`, oldest first.
    pub fn series(&self, series: &str) -> Vec<&Snap> {
        self.snaps.iter().filter(|s| s.series() == series).collect()
    }

    /// The visible series with their snapshots (oldest first), by name.
    pub fn by_series(&self) -> BTreeMap<&str, Vec<&Snap>> {
        let mut out: BTreeMap<&str, Vec<&Snap>> = BTreeMap::new();
        for s in &self.snaps {
            out.entry(s.series()).or_default().push(s);
        }
        out
    }

    /// The snapshot `id`, if visible.
    pub fn get(&self, id: SnapshotId) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.id == id)
    }
}

/// The mode a snapshot's disks were backed up in (see [`Snap::mode`]).
pub fn mode_of(header: &SnapshotHeader) -> &'static str {
    let modes: Vec<&str> = header
        .disks
        .iter()
        .filter_map(|d| {
            d.identity
                .iter()
                .find(|(k, _)| k == "backup.mode")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    if modes.contains(&"key") {
        "key"
    } else if modes.contains(&"delta") {
        "delta"
    } else {
        "full"
    }
}

/// The catalogue as `token` may see it.
pub fn catalogue(repo: &Repository, token: &TokenEntry) -> Result<Catalogue> {
    let all = repo.index().snapshots()?;
    let protected = repo.index().protected()?;
    let marks = load_damage_marks(repo.backend())?;
    let mut ids: Vec<SnapshotId> = all.iter().map(|(id, _)| *id).collect();
    ids.sort();
    let mut hash = Sha256::new();
    for id in &ids {
        hash.update(id.0);
    }
    let whole = token.covers_all();
    let mut snaps: Vec<Snap> = all
        .into_iter()
        .filter(|(_, h)| token.covers(&h.series))
        .map(|(id, header)| Snap {
            id,
            logical_bytes: header.logical_bytes(),
            new_stored_bytes: header.disks.iter().map(|d| d.stats.new_stored_bytes).sum(),
            new_raw_bytes: header.disks.iter().map(|d| d.stats.new_raw_bytes).sum(),
            mode: mode_of(&header),
            protected: protected.contains(&id),
            damage: marks.get(&id).copied(),
            header,
        })
        .collect();
    snaps.sort_by_key(|s| (s.header.time_us, s.id));
    Ok(Catalogue {
        snaps,
        whole,
        fingerprint: hash.finalize().into(),
    })
}

/// A figure computed for one state of the catalogue.
#[derive(Debug)]
struct Cached<T> {
    fingerprint: [u8; 32],
    at: Instant,
    computed_us: i64,
    value: T,
}

impl<T> Cached<T> {
    /// The value `slot` holds for `fingerprint` while it is fresh, else the one `compute`
    /// gives now (then kept); with when it was computed (Unix µs).
    fn get_or_compute(
        slot: &mut Option<Self>,
        fingerprint: [u8; 32],
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<(&T, i64)> {
        let fresh = slot
            .as_ref()
            .is_some_and(|c| c.fingerprint == fingerprint && c.at.elapsed() < CACHE_TIME);
        if !fresh {
            let value = compute()?;
            *slot = Some(Self {
                fingerprint,
                at: Instant::now(),
                computed_us: crate::time::now_us(),
                value,
            });
        }
        let cached = slot.as_ref().ok_or_else(|| {
            crate::error::Error::Internal("a cache slot just filled is empty".into())
        })?;
        Ok((&cached.value, cached.computed_us))
    }
}

/// The cached figures (kept by the serving thread between requests).
#[derive(Debug, Default)]
pub struct Caches {
    stats: Option<Cached<RepoStats>>,
    exclusive: Option<Cached<HashMap<SnapshotId, u64>>>,
}

impl Caches {
    /// The repository's totals, and when they were computed (Unix µs).
    pub fn stats(&mut self, repo: &Repository, fingerprint: [u8; 32]) -> Result<(RepoStats, i64)> {
        Cached::get_or_compute(&mut self.stats, fingerprint, || stats(repo))
            .map(|(value, at)| (value.clone(), at))
    }

    /// The stored bytes each snapshot alone references (freed, after compaction, by
    /// forgetting it), and when they were computed.
    pub fn exclusive(
        &mut self,
        repo: &Repository,
        fingerprint: [u8; 32],
    ) -> Result<(&HashMap<SnapshotId, u64>, i64)> {
        Cached::get_or_compute(&mut self.exclusive, fingerprint, || {
            Ok(exclusive_bytes_all(repo)?.into_iter().collect())
        })
    }

    /// Forgets every cached figure (after the dashboard changed the catalogue).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Stored bytes added per day (UTC) per series, for the newest `days` days before `now_us`:
/// `(day start µs, [(series, bytes)])`, oldest day first.
pub fn daily_deltas(
    catalogue: &Catalogue,
    now_us: i64,
    days: i64,
) -> Vec<(i64, Vec<(String, u64)>)> {
    const DAY: i64 = 86_400_000_000;
    let today = now_us.div_euclid(DAY) * DAY;
    let first = today - (days - 1) * DAY;
    let mut out: Vec<(i64, BTreeMap<String, u64>)> = (0..days)
        .map(|d| (first + d * DAY, BTreeMap::new()))
        .collect();
    for s in &catalogue.snaps {
        let day = s.header.time_us.div_euclid(DAY) * DAY;
        if day >= first && day <= today {
            let slot = usize::try_from((day - first) / DAY).unwrap_or(0);
            if let Some((_, m)) = out.get_mut(slot) {
                *m.entry(s.series().to_string()).or_default() += s.new_stored_bytes;
            }
        }
    }
    out.into_iter()
        .map(|(d, m)| (d, m.into_iter().collect()))
        .collect()
}

/// Stored bytes the visible snapshots' backups added, summed over time: `(time, total)`
/// after each snapshot, oldest first. (Forgotten snapshots and compaction are not in it;
/// the repository's current total is in its figures.)
pub fn cumulative_stored(catalogue: &Catalogue) -> Vec<(i64, u64)> {
    let mut total = 0u64;
    catalogue
        .snaps
        .iter()
        .map(|s| {
            total += s.new_stored_bytes;
            (s.header.time_us, total)
        })
        .collect()
}
