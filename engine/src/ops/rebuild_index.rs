//! Rebuilding the index from packs and snapshot files, the escape hatch of every other
//! operation: it works when the RocksDB directory is missing or corrupt.
//!
//! The new index is built aside in `REPO/index.rebuild` and swapped in by renames only when
//! complete, so a crash during the rebuild leaves the previous index (or none) untouched and
//! the rebuild can simply be rerun.

use std::fs;
use std::io;
use std::path::Path;

use rocksdb::WriteBatch;
use tessera_format::{ObjectKind, PackId, Snapshot, SnapshotId};

use crate::backend::{sync_dir, Backend, LocalBackend, Namespace};
use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::{index_path, Repository};
use crate::store::pack_scan::read_pack_contents;
use crate::store::session::object_entry;

/// What the rebuild found.
#[derive(Debug, Default, Clone)]
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
}

/// Rebuilds `REPO/index` from scratch. Takes the writer lock.
pub fn rebuild_index(root: &Path, progress: &dyn Progress) -> Result<RebuildReport> {
    let (config, _lock) = Repository::lock_for_rebuild(root)?;
    let backend = LocalBackend::new(root);
    let building = root.join("index.rebuild");
    remove_dir_if_exists(&building)?;
    let index = Index::create(&building, config.repo_id)?;
    let mut report = RebuildReport::default();
    index_packs(&index, &backend, &mut report, progress)?;
    let snapshots = read_snapshots(&backend, &mut report, progress)?;
    publish_snapshots(&index, &backend, &snapshots, &mut report)?;
    drop(index);
    install(root, &building)?;
    Ok(report)
}

/// Indexes every object of every readable pack (first copy wins), count 0.
fn index_packs(
    index: &Index,
    backend: &LocalBackend,
    report: &mut RebuildReport,
    progress: &dyn Progress,
) -> Result<()> {
    let packs = backend.list(Namespace::Packs)?;
    progress.start("index packs", packs.len() as u64);
    for name in packs {
        progress.advance(1);
        let Ok(id) = name.parse::<PackId>() else {
            report
                .pack_problems
                .push((name, "file name is not a pack id; ignored".into()));
            continue;
        };
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
        let mut batch = WriteBatch::default();
        for e in &contents.entries {
            if index.get_object(e.info.kind, &e.info.digest.0)?.is_none() {
                index.put_object(
                    &mut batch,
                    e.info.kind,
                    &e.info.digest.0,
                    &object_entry(id, e),
                );
                report.objects += 1;
            }
        }
        index.put_pack(
            &mut batch,
            id,
            crate::index::PackEntry {
                size: contents.size,
                objects: contents.entries.len() as u32,
            },
        );
        index.write(batch)?;
        report.packs += 1;
    }
    progress.finish();
    Ok(())
}

/// Reads every snapshot file whose content hashes to its name.
fn read_snapshots(
    backend: &LocalBackend,
    report: &mut RebuildReport,
    progress: &dyn Progress,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let names = backend.list(Namespace::Snapshots)?;
    progress.start("read snapshots", names.len() as u64);
    let mut snapshots = Vec::new();
    for name in names {
        progress.advance(1);
        match load_snapshot_file(backend, &name) {
            Ok((id, s)) => snapshots.push((id, s)),
            Err(reason) => report.bad_snapshots.push((name, reason)),
        }
    }
    progress.finish();
    Ok(snapshots)
}

/// Catalogues the snapshots and sets every reference count from scratch, in one batch.
fn publish_snapshots(
    index: &Index,
    backend: &LocalBackend,
    snapshots: &[(SnapshotId, Snapshot)],
    report: &mut RebuildReport,
) -> Result<()> {
    let counts = expected_counts_of(index, backend, snapshots.iter().map(|(_, s)| s))?;
    for (page, reason) in &counts.unreadable_pages {
        report.missing.push(format!("page {page}: {reason}"));
    }
    let mut batch = WriteBatch::default();
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
                entry.refcount = n;
                index.put_object(&mut batch, kind, &digest, &entry);
            }
            // Unreadable pages are already reported above.
            None if kind == ObjectKind::Chunk => report
                .missing
                .push(format!("chunk {}: not in any pack", hex::encode(digest))),
            None => {}
        }
    }
    let protected: std::collections::HashSet<String> =
        backend.list(Namespace::Protections)?.into_iter().collect();
    for (id, s) in snapshots {
        index.put_snapshot(&mut batch, *id, &s.header)?;
        if protected.contains(&id.to_hex()) {
            index.set_protected(&mut batch, *id, true);
        }
    }
    index.write(batch)?;
    report.snapshots = snapshots.len();
    Ok(())
}

/// Swaps the rebuilt index in: old index aside, new one in, old one removed. Each step is a
/// rename, so a crash leaves either the old index, no index (rerun the rebuild), or the new one.
fn install(root: &Path, building: &Path) -> Result<()> {
    let live = index_path(root);
    let old = root.join("index.old");
    remove_dir_if_exists(&old)?;
    if live.exists() {
        fs::rename(&live, &old).ctx(|| format!("moving {} aside", live.display()))?;
    }
    fs::rename(building, &live).ctx(|| format!("installing {}", live.display()))?;
    let _ = fs::rename(
        crate::index::hint_path(building),
        crate::index::hint_path(&live),
    );
    sync_dir(root)?;
    remove_dir_if_exists(&old)
}

fn load_snapshot_file(backend: &dyn Backend, name: &str) -> Result<(SnapshotId, Snapshot), String> {
    let id: SnapshotId = name
        .parse()
        .map_err(|e: tessera_format::DecodeError| format!("file name is not a snapshot id: {e}"))?;
    let bytes = backend
        .read_all(Namespace::Snapshots, name)
        .map_err(|e| e.to_string())?;
    if SnapshotId::of(&bytes) != id {
        return Err("content does not hash to the file name".into());
    }
    Snapshot::decode(&bytes)
        .map(|s| (id, s))
        .map_err(|e| e.to_string())
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}
