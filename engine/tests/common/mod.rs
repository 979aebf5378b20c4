//! Helpers the engine's concurrency tests share (`backup_beside_writers.rs`,
//! `compact_in_steps.rs`, `interleavings.rs`): repositories with a chosen pack size, backups
//! through a backup open with a hook before the publish, and the soundness check every one
//! of them ends with. Each test binary uses some of them.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::collections::BTreeSet;
use std::path::Path;

use tessera_engine::crypto::NoSecret;
use tessera_engine::ops::backup::{backup, backup_sources, BackupOutcome, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::repo::RepoStorage;
use tessera_engine::sources::{open_source, BlockSource, SourceFormat, SourceSpec};
use tessera_engine::{NoProgress, Repository};
use tessera_format::SnapshotId;

/// The local repository at `root`, sealing packs at `pack_target` bytes.
pub fn storage(root: &Path, pack_target: u64) -> RepoStorage {
    RepoStorage {
        pack_target,
        ..RepoStorage::local(root)
    }
}

/// Opens `storage` as the writer.
pub fn writer(storage: &RepoStorage) -> Repository {
    Repository::open_writer_on(storage.clone(), &NoSecret).unwrap()
}

/// The raw image at `img`, opened as a backup source.
pub fn raw_source(img: &Path) -> Box<dyn BlockSource> {
    open_source(&SourceSpec {
        location: img.display().to_string(),
        format: SourceFormat::Auto,
        changes: None,
        allow_backing_dirs: Vec::new(),
        tls_ca: None,
    })
    .unwrap()
}

/// Backs up `img` as disk `d0` of `series` through a backup open (series lock, no writer
/// lock until it publishes), calling `before_publish` after every block is stored.
pub fn backup_beside(
    storage: &RepoStorage,
    series: &str,
    img: &Path,
    before_publish: &dyn Fn() -> tessera_engine::Result<()>,
) -> tessera_engine::Result<BackupOutcome> {
    let repo = Repository::open_backup_on(storage.clone(), &NoSecret, series)?;
    assert!(!repo.is_writer());
    let req = BackupRequest::one_disk(series, "d0", img);
    let source = raw_source(img);
    backup_sources(
        &repo,
        &req,
        &[source],
        None,
        Some(before_publish),
        &NoProgress,
    )
}

/// Backs up `img` as disk `d0` of `series` as the writer.
pub fn writer_backup(storage: &RepoStorage, series: &str, img: &Path) -> SnapshotId {
    let w = writer(storage);
    backup(&w, &BackupRequest::one_disk(series, "d0", img), &NoProgress)
        .unwrap()
        .id
}

/// Forgets snapshot `id`.
pub fn forget(storage: &RepoStorage, id: SnapshotId) {
    let w = writer(storage);
    let plan = plan_forget(&w, &[id], false).unwrap();
    apply_forget(&w, &plan).unwrap();
}

/// The snapshots the catalog lists.
pub fn catalog(repo: &Repository) -> BTreeSet<SnapshotId> {
    repo.index()
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Restores disk `d0` of snapshot `id` to `out` and compares it with `img` byte for byte.
pub fn assert_restores(repo: &Repository, id: SnapshotId, img: &Path, out: &Path) {
    let snapshot = repo.load_snapshot(id).unwrap();
    restore_disk(repo, id, &snapshot, "d0", out, true, &NoProgress).unwrap();
    assert!(
        std::fs::read(out).unwrap() == std::fs::read(img).unwrap(),
        "snapshot {id} restores differently from its image"
    );
}

/// Counts exact (`check` recomputes every one); then, everything unreferenced reclaimed by
/// a compaction without a grace period, counts still exact and every snapshot of `expect`
/// restores its image byte for byte.
pub fn assert_sound(storage: &RepoStorage, expect: &[(SnapshotId, &Path)]) {
    let w = writer(storage);
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "check found {:?}", report.problems);
    apply_compact(&w, &plan_compact(&w, 0.0).unwrap(), &NoProgress).unwrap();
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "after compaction: {:?}", report.problems);
    let out = storage.local_dir.parent().unwrap().join("restored");
    for (id, img) in expect {
        assert_restores(&w, *id, img, &out);
    }
}

/// Appends one incompressible 64 KiB block, a function of `x` alone (xorshift from it).
pub fn push_noise_block(bytes: &mut Vec<u8>, mut x: u64) {
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
}
