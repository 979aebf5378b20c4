//! The local state directory of a repository in an object store is a cache: the index,
//! ledger and locks of one machine, marked by a [`CACHE_MARKER`] file naming the repository.
//! Every open brings the cache up to date from the bucket first ([`refresh_cache`]): other
//! clients may have published, forgotten or compacted since (SPEC §2a, "The index of an S3
//! repository is a cache"). Losing the cache loses nothing: it is rebuilt from the bucket.

use std::collections::HashSet;

use tessera_format::{PackId, SnapshotId};

use crate::error::Result;
use crate::recovery::catch_up;
use crate::repo::RepoStorage;
use crate::storage::{key, ObjectKey, PutMode};

/// The file that marks a local state directory as the cache of an object store's repository
/// (it holds the repository's location and endpoint).
pub const CACHE_MARKER: &str = "cache-of";

/// What bringing an object store repository's cache up to date did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheRefresh {
    /// Why the index was rebuilt from the bucket, if it was.
    pub rebuilt: Option<String>,
    /// Snapshots another client published, now catalogued.
    pub snapshots_catalogued: usize,
    /// Packs another client sealed, now indexed.
    pub packs_adopted: usize,
    /// Doomed packs indexed again because a new snapshot needs them (`doomed.rs`).
    pub doomed_packs_rescued: usize,
    /// Snapshots whose files are gone from the bucket (another client forgot them), dropped.
    pub snapshots_dropped: Vec<String>,
    /// Reference counts corrected after dropping them.
    pub counts_fixed: u64,
    /// Left as it was because a local writer holds the cache (its lock record).
    pub skipped_locked: Option<String>,
}

impl CacheRefresh {
    /// One line for the operator; `None` when the cache was up to date.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(why) = &self.rebuilt {
            let rescued = match self.doomed_packs_rescued {
                0 => String::new(),
                n => format!(", {n} doomed packs kept (a new snapshot needs them)"),
            };
            return Some(format!(
                "index cache: rebuilt from the bucket ({why}): {} snapshots, {} packs{rescued}",
                self.snapshots_catalogued, self.packs_adopted
            ));
        }
        for (n, what) in [
            (
                self.snapshots_catalogued,
                "snapshots of other clients catalogued",
            ),
            (self.packs_adopted, "packs of other clients indexed"),
            (
                self.doomed_packs_rescued,
                "doomed packs kept (a new snapshot needs them)",
            ),
            (
                self.snapshots_dropped.len(),
                "snapshots forgotten by other clients dropped",
            ),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if let Some(holder) = &self.skipped_locked {
            parts.push(format!("not refreshed: a local writer holds it ({holder})"));
        }
        (!parts.is_empty()).then(|| format!("index cache: {}", parts.join(", ")))
    }
}

/// Marks `dir` as the cache of the repository `identity` (its location and endpoint),
/// creating it; refuses a directory that caches another repository, a directory holding a
/// repository's `config` (a local repository: its index must not be taken for a cache and
/// rebuilt or cleared), and a non-empty directory without the marker (whatever it holds is
/// not tessera's to overwrite).
pub fn mark_cache(dir: &std::path::Path, identity: &str) -> Result<()> {
    let marker = dir.join(CACHE_MARKER);
    let want = format!("{identity}\n");
    if dir.join("config").exists() {
        return Err(crate::error::Error::InvalidArgument(format!(
            "{} holds a repository (its config), so it cannot be the cache of {identity}; choose another cache directory",
            dir.display()
        )));
    }
    match std::fs::read_to_string(&marker) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(crate::error::Error::InvalidArgument(format!(
            "the cache directory {} belongs to {}, not {identity}; choose another cache directory",
            dir.display(),
            have.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
                return Err(crate::error::Error::InvalidArgument(format!(
                    "{} is not empty and is not a tessera cache (no {CACHE_MARKER} file); choose an empty or new cache directory",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::Error::io(format!("creating {}", dir.display()), e))?;
            crate::storage::durable::write_file(
                &crate::storage::fs::OsFs,
                &dir.join(format!(".{CACHE_MARKER}.{}.tmp", std::process::id())),
                &marker,
                want.as_bytes(),
                PutMode::Replace,
            )
            .map_err(|e| crate::error::Error::io(format!("writing {}", marker.display()), e))
        }
        Err(e) => Err(crate::error::Error::io(
            format!("reading {}", marker.display()),
            e,
        )),
    }
}

/// Brings the index cache of an object store repository up to date from the bucket; does
/// nothing for a repository whose local directory is not a cache, or a location that holds
/// no repository yet. Takes the cache directory's writer lock for the duration; if a local
/// writer holds it, leaves the cache as that writer keeps it.
///
/// - no index, or one that cannot be opened or belongs to another repository: rebuilt from
///   the bucket ([`crate::ops::rebuild_index`]);
/// - a catalogued pack is gone from the bucket (another client compacted): rebuilt, since
///   the objects it held have moved to packs the index cannot tell apart;
/// - snapshots or packs the index lacks: [`catch_up`] catalogues and adopts them (it never
///   discards staged puts: readers run this too, and only a writer's open aborts stale
///   uploads);
/// - catalogued snapshots whose files are gone, by the listing and by a `HEAD` of each:
///   dropped from the catalog, then every reference count is recomputed (their root lists are
///   gone with the files, so their references cannot be subtracted one by one).
pub fn refresh_cache(
    storage: &RepoStorage,
    crypto: &std::sync::Arc<crate::crypto::RepoCrypto>,
) -> Result<Option<CacheRefresh>> {
    use crate::error::Error;
    if !storage.local_dir.join(CACHE_MARKER).exists() {
        return Ok(None);
    }
    let config = match storage.read_config() {
        Err(Error::NotARepository { .. }) => return Ok(None),
        other => other?,
    };
    let lock = match crate::lock::WriterLock::acquire(&storage.local_dir) {
        Err(Error::Locked { pid, host, since }) => {
            return Ok(Some(CacheRefresh {
                skipped_locked: Some(format!("PID {pid} on {host} since {since}")),
                ..CacheRefresh::default()
            }))
        }
        other => other?,
    };
    let index = match storage.open_index(&config, false, crypto) {
        Ok(index) => index,
        Err(e @ (Error::IndexMissing { .. } | Error::IndexCorrupt { .. } | Error::Index(_))) => {
            drop(lock);
            let why = match e {
                Error::IndexMissing { .. } => "the cache had no index".to_string(),
                other => format!("the cached index was unusable: {other}"),
            };
            return rebuild_cache(storage, crypto, why);
        }
        Err(e) => return Err(e),
    };
    let backend = &*storage.backend;
    // Snapshots before packs, as in `recover`.
    let stored: HashSet<SnapshotId> = backend
        .list(key::SNAPSHOTS)?
        .iter()
        .filter_map(ObjectKey::as_snapshot)
        .collect();
    let listed_packs: HashSet<PackId> = backend
        .list(key::PACKS)?
        .iter()
        .filter_map(ObjectKey::as_pack)
        .collect();
    let catalogued_packs: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    let vanished_packs = catalogued_packs.difference(&listed_packs).count();
    if vanished_packs > 0 {
        drop(index);
        drop(lock);
        return rebuild_cache(
            storage,
            crypto,
            format!("{vanished_packs} packs it knew are gone from the bucket"),
        );
    }
    // Packs another client's compaction doomed: the cache must stop placing objects there
    // (the live ones were copied to packs it may not know yet), so it is rebuilt, which
    // skips doomed packs (doomed.rs).
    let recorded = crate::doomed::records(backend)?;
    let doomed_elsewhere = catalogued_packs
        .iter()
        .filter(|p| recorded.contains_key(p))
        .count();
    if doomed_elsewhere > 0 {
        drop(index);
        drop(lock);
        return rebuild_cache(
            storage,
            crypto,
            format!("another client's compaction doomed {doomed_elsewhere} packs it knew"),
        );
    }
    let mut doomed: HashSet<PackId> = index.doomed_packs()?.into_iter().collect();
    doomed.extend(recorded.into_keys());
    let catalogued: HashSet<SnapshotId> =
        index.snapshots()?.into_iter().map(|(id, _)| id).collect();
    let new_packs = listed_packs
        .iter()
        .any(|p| !catalogued_packs.contains(p) && !doomed.contains(p));
    let mut vanished: Vec<SnapshotId> = catalogued.difference(&stored).copied().collect();
    vanished.sort();
    if !new_packs && vanished.is_empty() && stored.is_subset(&catalogued) {
        return Ok(Some(CacheRefresh::default()));
    }
    let recovered = catch_up(storage, &index, crypto)?;
    let mut refresh = CacheRefresh {
        snapshots_catalogued: recovered.snapshots_catalogued.len(),
        packs_adopted: recovered.packs_adopted,
        doomed_packs_rescued: recovered.doomed_packs_rescued,
        ..CacheRefresh::default()
    };
    let mut batch = index.batch();
    for id in vanished {
        // The listing said so; a HEAD confirms (a listing glitch must not drop a live
        // snapshot, whose objects compaction would then count as unreferenced).
        if backend.size(&ObjectKey::snapshot(id))?.is_none() {
            batch.forget_snapshot(id);
            batch.clear_tombstone(id);
            refresh.snapshots_dropped.push(id.to_hex());
        }
    }
    if !batch.is_empty() {
        index.commit(batch)?;
        refresh.counts_fixed = crate::ops::check::recount_index(&index, backend, crypto)?;
    }
    Ok(Some(refresh))
}

fn rebuild_cache(
    storage: &RepoStorage,
    crypto: &std::sync::Arc<crate::crypto::RepoCrypto>,
    why: String,
) -> Result<Option<CacheRefresh>> {
    let report =
        crate::ops::rebuild_index::rebuild_index_unlocked(storage, crypto, &crate::NoProgress)?;
    Ok(Some(CacheRefresh {
        rebuilt: Some(why),
        snapshots_catalogued: report.snapshots,
        packs_adopted: report.packs,
        doomed_packs_rescued: report.doomed_packs_rescued,
        ..CacheRefresh::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::{mark_cache, CACHE_MARKER};

    #[test]
    fn only_new_empty_or_own_directories_become_caches() {
        let root = tempfile::tempdir().unwrap();
        let id = "s3://b/p at http://127.0.0.1:1";
        // A new directory, an empty one, and again the same: fine.
        let fresh = root.path().join("new");
        mark_cache(&fresh, id).unwrap();
        mark_cache(&fresh, id).unwrap();
        assert!(fresh.join(CACHE_MARKER).exists());
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        mark_cache(&empty, id).unwrap();
        // Another repository's cache.
        let err = mark_cache(&fresh, "s3://b/other at http://127.0.0.1:1").unwrap_err();
        assert!(err.to_string().contains("belongs to"), "{err}");
        // A directory with other things in it, untouched.
        let busy = root.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("notes.txt"), b"mine").unwrap();
        let err = mark_cache(&busy, id).unwrap_err();
        assert!(err.to_string().contains("not a tessera cache"), "{err}");
        assert!(!busy.join(CACHE_MARKER).exists());
        // A local repository, even one that somehow carries a marker.
        let repo = root.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::fs::write(repo.join("config"), b"x").unwrap();
        std::fs::write(repo.join(CACHE_MARKER), format!("{id}\n")).unwrap();
        let err = mark_cache(&repo, id).unwrap_err();
        assert!(err.to_string().contains("holds a repository"), "{err}");
        assert_eq!(err.kind(), crate::error::ErrorKind::Usage);
    }
}
