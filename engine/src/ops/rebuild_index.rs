//! Rebuilding the index from packs and snapshot files, the escape hatch of every other
//! operation: it works when the RocksDB directory is missing or corrupt.
//!
//! The new index is built aside in `index.rebuild` (in the repository's local directory)
//! and swapped in by renames only when complete, so a crash during the rebuild leaves the
//! previous index (or none) untouched and the rebuild can simply be rerun.

use std::fs;
use std::io;
use std::path::Path;

use std::collections::HashSet;

use tessera_format::{ObjectKind, PackId, Snapshot, SnapshotId};

use crate::crypto::keyring::SecretSource;
use crate::crypto::RepoCrypto;
use crate::error::{Error, IoContext, Result};
use crate::index::{Index, ObjectEntry};
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::{RepoStorage, Repository};
use crate::storage::fs::OsFs;
use crate::storage::key::{self, KeyKind};
use crate::storage::{durable, Backend};
use crate::store::pack_scan::read_pack_contents;
use crate::store::reader::load_snapshot;

/// What the rebuild found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    /// Packs indexed.
    pub packs: usize,
    /// Objects indexed (distinct).
    pub objects: usize,
    /// Snapshots catalogued.
    pub snapshots: usize,
    /// Packs that could not be read, or whose footer was damaged (records were scanned).
    pub pack_problems: Vec<(String, String)>,
    /// Snapshot files that could not be used.
    pub bad_snapshots: Vec<(String, String)>,
    /// Objects referenced by snapshots but absent or unreadable.
    pub missing: Vec<String>,
    /// Doomed packs of a shared store indexed after all, because a snapshot names objects
    /// only they hold (their doom records are deleted).
    pub doomed_packs_rescued: usize,
}

impl RebuildReport {
    /// Whether every pack and snapshot file was usable and nothing is missing.
    pub fn is_clean(&self) -> bool {
        self.pack_problems.is_empty() && self.bad_snapshots.is_empty() && self.missing.is_empty()
    }
}

/// Rebuilds the index of the repository in `storage` from scratch. Takes the writer lock.
pub fn rebuild_index(
    storage: &RepoStorage,
    keys: &dyn SecretSource,
    progress: &dyn Progress,
) -> Result<RebuildReport> {
    let config = storage.read_config()?;
    let crypto = std::sync::Arc::new(crate::crypto::keyring::open_crypto(
        &*storage.backend,
        &config,
        keys,
    )?);
    rebuild_index_unlocked(storage, &crypto, progress)
}

/// [`rebuild_index`] of a repository whose keys are already open (`crypto`), as bringing an
/// object store's cache up to date does. Takes the writer lock.
pub fn rebuild_index_unlocked(
    storage: &RepoStorage,
    crypto: &std::sync::Arc<RepoCrypto>,
    progress: &dyn Progress,
) -> Result<RebuildReport> {
    let (config, _lock) = Repository::lock_for_rebuild(storage)?;
    let crypto = std::sync::Arc::clone(crypto);
    let backend = &*storage.backend;
    let building = storage.local_dir.join("index.rebuild");
    remove_dir_if_exists(&building)?;
    let index = Index::create(&building, config.repo_id)?;
    index.record_encryption(&crate::repo::encryption_record(&config))?;
    let index = index
        .with_crash_clock(storage.crash_clock.clone())
        .with_crypto(std::sync::Arc::clone(&crypto));
    let mut report = RebuildReport::default();
    // In a shared store, packs with doom records are left out (their live objects were
    // copied elsewhere), unless a snapshot needs what only they hold (doomed.rs).
    let doomed: HashSet<PackId> = if storage.shared {
        crate::doomed::records(backend)?.into_keys().collect()
    } else {
        HashSet::new()
    };
    let first = |p: Option<PackId>| p.is_none_or(|p| !doomed.contains(&p));
    index_packs(&index, backend, first, &mut report, progress)?;
    let snapshots = read_snapshots(backend, &crypto, &mut report, progress)?;
    publish_snapshots(&index, backend, &crypto, &snapshots, &mut report)?;
    if !report.missing.is_empty() && !doomed.is_empty() {
        let rescued = |p: Option<PackId>| p.is_some_and(|p| doomed.contains(&p));
        index_packs(&index, backend, rescued, &mut report, progress)?;
        report.missing.clear();
        publish_snapshots(&index, backend, &crypto, &snapshots, &mut report)?;
        report.doomed_packs_rescued = doomed.len();
        for pack in &doomed {
            backend.delete(&crate::storage::ObjectKey::doom_record(*pack))?;
        }
    }
    drop(index);
    if let Some(clock) = &storage.crash_clock {
        clock
            .tick()
            .map_err(|e| Error::io("installing the rebuilt index", e))?;
    }
    install(&storage.local_dir, &storage.index_path(), &building)?;
    Ok(report)
}

/// Indexes every object of every readable pack whose key `wanted` selects (by its pack id,
/// `None` for a key that names no pack; first copy wins), count 0.
fn index_packs(
    index: &Index,
    backend: &dyn Backend,
    wanted: impl Fn(Option<PackId>) -> bool,
    report: &mut RebuildReport,
    progress: &dyn Progress,
) -> Result<()> {
    let packs: Vec<_> = backend
        .list(key::PACKS)?
        .into_iter()
        .filter(|k| wanted(k.as_pack()))
        .collect();
    progress.start("index packs", packs.len() as u64);
    for key in packs {
        progress.advance(1);
        let Some(id) = key.as_pack() else {
            report
                .pack_problems
                .push((key.to_string(), "not the name of a pack; ignored".into()));
            continue;
        };
        let name = id.to_hex();
        let contents = match read_pack_contents(backend, id) {
            Ok(c) => c,
            Err(e) => {
                report.pack_problems.push((name, e.to_string()));
                continue;
            }
        };
        if let Some(problem) = &contents.footer_problem {
            report.pack_problems.push((
                name.clone(),
                format!(
                    "footer unusable ({problem}); {} intact records recovered by scanning",
                    contents.entries.len()
                ),
            ));
        }
        let mut batch = index.batch();
        for e in &contents.entries {
            if index.get_object(e.info.kind, &e.info.digest.0)?.is_none() {
                batch.put_object(e.info.kind, &e.info.digest.0, &ObjectEntry::found(id, e));
                report.objects += 1;
            }
        }
        batch.put_pack(
            id,
            crate::index::PackEntry::now(contents.size, contents.entries.len() as u32),
        );
        index.commit(batch)?;
        report.packs += 1;
    }
    progress.finish();
    Ok(())
}

/// Reads every snapshot file whose content hashes to its name.
fn read_snapshots(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    report: &mut RebuildReport,
    progress: &dyn Progress,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let keys = backend.list(key::SNAPSHOTS)?;
    progress.start("read snapshots", keys.len() as u64);
    let mut snapshots = Vec::new();
    for key in keys {
        progress.advance(1);
        match key.kind() {
            Some(KeyKind::Snapshot(id)) => match load_snapshot(backend, crypto, id) {
                Ok(s) => snapshots.push((id, s)),
                Err(e) => report.bad_snapshots.push((id.to_hex(), e.to_string())),
            },
            Some(_) => {}
            None => report
                .bad_snapshots
                .push((key.to_string(), "not the name of a snapshot file".into())),
        }
    }
    progress.finish();
    Ok(snapshots)
}

/// Catalogues the snapshots and sets every reference count from scratch, in one batch.
fn publish_snapshots(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    snapshots: &[(SnapshotId, Snapshot)],
    report: &mut RebuildReport,
) -> Result<()> {
    let counts = expected_counts_of(index, backend, crypto, snapshots.iter().map(|(_, s)| s))?;
    for (page, reason) in &counts.unreadable_pages {
        report.missing.push(format!("page {page}: {reason}"));
    }
    let mut batch = index.batch();
    let pages = counts
        .pages
        .iter()
        .map(|(d, n)| (ObjectKind::Page, d.0, *n));
    let chunks = counts
        .chunks
        .iter()
        .map(|(d, n)| (ObjectKind::Chunk, d.0, *n));
    for (kind, digest, n) in pages.chain(chunks) {
        match index.get_object(kind, &digest)? {
            Some(mut entry) => {
                entry.set_count(n, crate::time::now_us());
                batch.put_object(kind, &digest, &entry);
            }
            // Unreadable pages are already reported above.
            None if kind == ObjectKind::Chunk => report
                .missing
                .push(format!("chunk {}: not in any pack", hex::encode(digest))),
            None => {}
        }
    }
    let protected: std::collections::HashSet<SnapshotId> = backend
        .list(key::SNAPSHOTS)?
        .iter()
        .filter_map(|k| match k.kind() {
            Some(KeyKind::Protection(id)) => Some(id),
            _ => None,
        })
        .collect();
    for (id, s) in snapshots {
        batch.put_snapshot(*id, &s.header)?;
        if protected.contains(id) {
            batch.set_protected(*id, true);
        }
    }
    index.commit(batch)?;
    report.snapshots = snapshots.len();
    Ok(())
}

/// Swaps the rebuilt index in: old index aside, new one in, old one removed. Each step is a
/// durable rename, so a crash leaves either the old index, no index (rerun the rebuild), or
/// the new one.
fn install(dir: &Path, live: &Path, building: &Path) -> Result<()> {
    let old = dir.join("index.old");
    remove_dir_if_exists(&old)?;
    if live.exists() {
        durable::rename(&OsFs, live, &old).ctx(|| format!("moving {} aside", live.display()))?;
    }
    durable::rename(&OsFs, building, live).ctx(|| format!("installing {}", live.display()))?;
    let _ = durable::rename(
        &OsFs,
        &crate::index::hint_path(building),
        &crate::index::hint_path(live),
    );
    remove_dir_if_exists(&old)
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}
