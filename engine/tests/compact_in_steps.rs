//! `compact` works in steps (SPEC.md §8 "Compaction in steps"): it plans as the writer, lets
//! go of the writer lock, copies live objects into new packs without it, and takes it again
//! only to commit each sealed pack. Other writers run between the steps; each test runs one
//! there (through the progress callback, called after each old pack is drained), then
//! checks every count from scratch (`check`), compacts again and restores byte for byte.
//! Small packs (256 KiB) make one compaction many steps.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{assert_sound, forget, writer, writer_backup};
use tessera_engine::crypto::NoSecret;
use tessera_engine::ops::compact::{compact, CompactReport};
use tessera_engine::ops::rebuild_index::rebuild_index;
use tessera_engine::repo::RepoStorage;
use tessera_engine::{Error, InitOptions, NoProgress, Progress, Repository};

mod common;

const PACK_TARGET: u64 = 256 << 10;

/// An image of `blocks` incompressible 64 KiB blocks; block `i` depends on `seed` only where
/// `i % 2 == 1` or `vary_all` (so two images of one seed family share their even blocks).
fn image(dir: &Path, name: &str, seed: u64, blocks: u64, vary_all: bool) -> PathBuf {
    let mut bytes = Vec::with_capacity((blocks as usize) << 16);
    for block in 0..blocks {
        let salt = if vary_all || block % 2 == 1 { seed } else { 0 };
        let x = (block + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5);
        common::push_noise_block(&mut bytes, x);
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Progress that runs `between(n)` after the `n`-th old pack is drained (between steps).
struct Between<F: Fn(usize) + Sync> {
    drained: Mutex<usize>,
    between: F,
}

impl<F: Fn(usize) + Sync> Progress for Between<F> {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _n: u64) {
        let n = {
            let mut d = self.drained.lock().unwrap();
            *d += 1;
            *d - 1
        };
        (self.between)(n);
    }
    fn finish(&self) {}
}

/// Compacts `s` in steps without a grace period, running `between` between steps.
fn compact_with(
    s: &RepoStorage,
    between: impl Fn(usize) + Sync,
) -> tessera_engine::Result<CompactReport> {
    let progress = Between {
        drained: Mutex::new(0),
        between,
    };
    let outcome = compact(writer(s), 0.0, 0, false, false, &progress)?;
    Ok(outcome.report.expect("not a dry run"))
}

/// A new repository in `dir` with small packs (one compaction, many steps).
fn new_repo(dir: &Path) -> RepoStorage {
    let root = dir.join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    common::storage(&root, PACK_TARGET)
}

#[test]
fn dead_objects_a_backup_references_again_between_steps_are_kept() {
    // `old`'s blocks are dead when the compaction plans (its snapshot forgotten, no grace);
    // between two steps a backup of the same image publishes, deduplicating against them.
    // A step committing the plan's deletions would take them from under that snapshot.
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 1, 48, true);
    let other = image(dir.path(), "other", 2, 48, true);
    let old = writer_backup(&s, "old", &img);
    let kept = writer_backup(&s, "kept", &other);
    forget(&s, old);
    let again = Mutex::new(None);
    let report = compact_with(&s, |n| {
        if n == 0 {
            // The writer lock is free between steps: this opens without waiting.
            *again.lock().unwrap() = Some(writer_backup(&s, "again", &img));
        }
    })
    .unwrap();
    let again = again.into_inner().unwrap().unwrap();
    assert_sound(&s, &[(again, &img), (kept, &other)]);
    assert!(
        report.packs_revived >= 1,
        "no pack was kept for the objects referenced again: {report:?}"
    );
}

#[test]
fn counts_a_forget_changes_between_steps_are_the_ones_relocated() {
    // Half of `v2`'s blocks are shared with the forgotten `v1`, so their packs are half dead
    // and compaction moves the live half. Between steps `v2` is forgotten as well: the
    // entries the later steps re-point must carry count 0 (as of the commit), not the plan's
    // count 1, or `check` finds counts no snapshot explains and the space never comes back.
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let v1 = image(dir.path(), "v1", 3, 64, false);
    let v2 = image(dir.path(), "v2", 4, 64, false);
    let keep = image(dir.path(), "keep", 5, 16, true);
    let first = writer_backup(&s, "vm", &v1);
    let second = writer_backup(&s, "vm", &v2);
    let kept = writer_backup(&s, "keep", &keep);
    forget(&s, first);
    let report = compact_with(&s, |n| {
        if n == 0 {
            forget(&s, second);
        }
    })
    .unwrap();
    assert!(report.steps >= 2, "one step only: {report:?}");
    assert_sound(&s, &[(kept, &keep)]);
}

#[test]
fn one_compaction_at_a_time_and_writers_between_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 6, 48, true);
    let other = image(dir.path(), "other", 7, 48, true);
    let old = writer_backup(&s, "old", &img);
    forget(&s, old);
    let second = Mutex::new(None);
    let report = compact_with(&s, |n| {
        if n == 0 {
            // A second compaction is refused by name (exit 3), and a backup publishes.
            let err = compact(writer(&s), 0.0, 0, false, false, &NoProgress).unwrap_err();
            assert!(
                matches!(err, Error::CompactionRunning { .. }),
                "a second compaction: {err}"
            );
            assert_eq!(err.kind(), tessera_engine::ErrorKind::Locked);
            *second.lock().unwrap() = Some(writer_backup(&s, "other", &other));
        }
    })
    .unwrap();
    assert!(report.packs_rewritten >= 1, "{report:?}");
    let second = second.into_inner().unwrap().unwrap();
    // The lock is free again once it ended.
    compact_with(&s, |_| {}).unwrap();
    assert_sound(&s, &[(second, &other)]);
}

#[test]
fn an_index_rebuilt_between_steps_stops_the_compaction_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 8, 32, false);
    let next = image(dir.path(), "next", 9, 32, false);
    let first = writer_backup(&s, "vm", &img);
    let second = writer_backup(&s, "vm", &next);
    forget(&s, first);
    let err = compact_with(&s, |n| {
        if n == 0 {
            let report = rebuild_index(&s, &NoSecret, &NoProgress).unwrap();
            assert!(report.is_clean(), "{report:?}");
        }
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the index was rebuilt while this compaction ran"),
        "{err}"
    );
    assert_sound(&s, &[(second, &next)]);
}
