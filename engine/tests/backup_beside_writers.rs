//! A backup stores under its series lock alone and takes the writer lock only to publish
//! (SPEC.md §8). What other writers change meanwhile must not corrupt its reference counts
//! (SPEC.md §13, races 4–6): each test runs a writer in the window the backup leaves between
//! storing its last block and publishing (`before_publish`), then checks every count from
//! scratch (`check`), compacts without a grace period and restores byte for byte.

use std::path::Path;

use tessera_engine::ops::backup::{backup, backup_sources, BackupOutcome, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::sources::{open_source, SourceFormat, SourceSpec};
use tessera_engine::{Error, InitOptions, NoProgress, Repository};
use tessera_format::SnapshotId;

/// A 4 MiB image of distinct 64 KiB blocks (seeded).
fn image(dir: &Path, name: &str, seed: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = Vec::with_capacity(4 << 20);
    for block in 0..64u32 {
        for i in 0..65536u32 {
            bytes.push((block.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u32::from(seed)) as u8);
        }
        let end = bytes.len();
        bytes[end - 4..].copy_from_slice(&block.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Backs up `img` as series `series` through a backup open, running `meanwhile` (with the
/// writer lock free) after every block is stored and before the backup publishes.
fn backup_beside(
    root: &Path,
    series: &str,
    img: &Path,
    meanwhile: &dyn Fn(),
) -> tessera_engine::Result<BackupOutcome> {
    let repo = Repository::open_backup(root, series).unwrap();
    assert!(!repo.is_writer());
    let req = BackupRequest::one_disk(series, "d0", img);
    let source = open_source(&SourceSpec {
        location: img.display().to_string(),
        format: SourceFormat::Auto,
        changes: None,
        allow_backing_dirs: Vec::new(),
        tls_ca: None,
    })
    .unwrap();
    let hook = || {
        meanwhile();
        Ok(())
    };
    backup_sources(&repo, &req, &[source], None, Some(&hook), &NoProgress)
}

fn writer_backup(root: &Path, series: &str, img: &Path) -> SnapshotId {
    let w = Repository::open_writer(root).unwrap();
    backup(&w, &BackupRequest::one_disk(series, "d0", img), &NoProgress)
        .unwrap()
        .id
}

fn forget(root: &Path, id: SnapshotId) {
    let w = Repository::open_writer(root).unwrap();
    let plan = plan_forget(&w, &[id], false).unwrap();
    apply_forget(&w, &plan).unwrap();
}

/// Counts exact, then (everything unreferenced reclaimed) every snapshot left restores `img`.
fn assert_sound(root: &Path, expect: &[(SnapshotId, &Path)]) {
    let w = Repository::open_writer(root).unwrap();
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "check found {:?}", report.problems);
    let plan = plan_compact(&w, 0.0).unwrap();
    apply_compact(&w, &plan, &NoProgress).unwrap();
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "after compaction: {:?}", report.problems);
    let out = root.parent().unwrap().join("restored");
    for (id, img) in expect {
        let snapshot = w.load_snapshot(*id).unwrap();
        restore_disk(&w, *id, &snapshot, "d0", &out, true, &NoProgress).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(img).unwrap(),
            "snapshot {id} restores differently"
        );
    }
}

fn new_repo(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    root
}

#[test]
fn pages_forgotten_while_a_backup_ran_give_their_chunks_to_it() {
    // The backup finds every page of `a` live and counts no chunk; a forget of `a` then
    // drops pages and chunks to 0. Publishing must count the chunks again.
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let img = image(dir.path(), "img", 1);
    let a = writer_backup(&root, "a", &img);
    let b = backup_beside(&root, "b", &img, &|| forget(&root, a)).unwrap();
    assert_sound(&root, &[(b.id, &img)]);
}

#[test]
fn pages_another_backup_published_meanwhile_are_not_counted_twice() {
    // The backup finds its pages new and counts their chunks; another series publishes the
    // same pages first. Publishing must not count the chunks a second time.
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let img = image(dir.path(), "img", 2);
    let other = std::cell::Cell::new(None);
    let b = backup_beside(&root, "b", &img, &|| {
        other.set(Some(writer_backup(&root, "c", &img)));
    })
    .unwrap();
    let c = other.get().unwrap();
    assert_sound(&root, &[(b.id, &img), (c, &img)]);
    // Forgetting one keeps the other whole.
    forget(&root, c);
    assert_sound(&root, &[(b.id, &img)]);
}

#[test]
fn objects_a_compaction_reclaims_meanwhile_fail_the_publish_cleanly() {
    // The backup deduplicates against the dead objects of a forgotten snapshot, which a
    // compaction without a grace period reclaims before the backup publishes: the publish
    // is refused with its own error, nothing is published, and a rerun stores the data.
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let img = image(dir.path(), "img", 3);
    let a = writer_backup(&root, "a", &img);
    forget(&root, a);
    let err = backup_beside(&root, "b", &img, &|| {
        let w = Repository::open_writer(&root).unwrap();
        let plan = plan_compact(&w, 0.0).unwrap();
        apply_compact(&w, &plan, &NoProgress).unwrap();
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::ReclaimedMeanwhile { .. }),
        "unexpected error: {err}"
    );
    let w = Repository::open(&root).unwrap();
    assert!(w.index().snapshots().unwrap().is_empty());
    drop(w);
    let b = backup_beside(&root, "b", &img, &|| {}).unwrap();
    assert_sound(&root, &[(b.id, &img)]);
}

#[test]
fn a_second_backup_of_a_series_is_refused_and_other_series_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let img = image(dir.path(), "img", 4);
    let held = Repository::open_backup(&root, "vm").unwrap();
    match Repository::open_backup(&root, "vm") {
        Err(Error::SeriesLocked { series, .. }) => assert_eq!(series, "vm"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a second backup of the series was let in"),
    }
    // Another series, and the writer lock, are free meanwhile.
    let other = backup_beside(&root, "other", &img, &|| {}).unwrap();
    drop(Repository::open_writer(&root).unwrap());
    drop(held);
    let vm = backup_beside(&root, "vm", &img, &|| {}).unwrap();
    assert_sound(&root, &[(other.id, &img), (vm.id, &img)]);
}
