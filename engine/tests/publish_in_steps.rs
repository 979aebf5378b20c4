//! Publishing in steps (SPEC.md §7): a publication that raises more chunk counts than one
//! group is committed in several batches under a record of its progress. These tests use
//! 16-entry pages and 8-update groups so that a few megabytes span many steps, and stop the
//! publisher at every index commit with the crash clock (the process dying, not the power:
//! what was committed stays).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_restores, catalog};
use tessera_engine::crypto::NoSecret;
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::repo::RepoStorage;
use tessera_engine::storage::sim::CrashClock;
use tessera_engine::{InitOptions, NoProgress, Repository};

const BLOCKS: u64 = 96;

/// An image of `BLOCKS` incompressible 64 KiB blocks that repeat with period `period`
/// (shared chunks between pages, within and across publishing steps) and a zero block
/// every eleventh.
fn image(dir: &Path, name: &str, seed: u64, period: u64) -> PathBuf {
    let mut bytes = Vec::with_capacity((BLOCKS as usize) << 16);
    for block in 0..BLOCKS {
        if block % 11 == 10 {
            bytes.resize(bytes.len() + (1 << 16), 0);
            continue;
        }
        let x = (block % period + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        common::push_noise_block(&mut bytes, x);
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A repository with 16-entry pages publishing in groups of 8, and the clock its index
/// commits tick (`None`: no clock).
fn storage(root: &Path, clock: Option<Arc<CrashClock>>) -> RepoStorage {
    RepoStorage {
        pack_target: 256 << 10,
        publish_group: 8,
        crash_clock: clock,
        ..RepoStorage::local(root)
    }
}

fn init(root: &Path) {
    let opts = InitOptions {
        page_entries: tessera_format::config::MIN_PAGE_ENTRIES,
        ..InitOptions::default()
    };
    Repository::init_on(&storage(root, None), opts, None).unwrap();
}

fn backup_with(
    storage: &RepoStorage,
    img: &Path,
) -> tessera_engine::Result<tessera_format::SnapshotId> {
    let w = Repository::open_writer_on(storage.clone(), &NoSecret)?;
    backup(&w, &BackupRequest::one_disk("vm", "d0", img), &NoProgress).map(|o| o.id)
}

/// A publication stopped after any of its commits: a reader's `verify` beside it (the
/// record held, some steps applied) is clean; the next writer undoes the applied steps,
/// catalogues the stored snapshot, and its counts are exact and it restores byte for byte.
#[test]
fn a_publication_stopped_at_any_step_is_clean_beside_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base", 1, 40);
    let next = image(dir.path(), "next", 2, 29);
    // Steps of one uninterrupted run, counted after the base backup.
    let probe_root = dir.path().join("probe");
    init(&probe_root);
    let clock = Arc::new(CrashClock::default());
    backup_with(&storage(&probe_root, None), &base).unwrap();
    clock.arm(u64::MAX);
    backup_with(&storage(&probe_root, Some(clock.clone())), &next).unwrap();
    let steps = clock.steps();
    let mut beside = 0;
    for n in 1..=steps {
        let root = dir.path().join(format!("repo{n}"));
        init(&root);
        let first = backup_with(&storage(&root, None), &base).unwrap();
        clock.arm(n);
        let stopped = backup_with(&storage(&root, Some(clock.clone())), &next);
        assert!(
            stopped.is_err(),
            "step {n}/{steps}: the stopped backup succeeded"
        );
        let plain = storage(&root, None);
        let reader = Repository::open_on(plain.clone(), &NoSecret).unwrap();
        let record = reader.index().publishing().unwrap();
        if record.as_ref().is_some_and(|r| r.applied > 0) {
            beside += 1;
        }
        let report = check(&reader, true, &NoProgress).unwrap();
        assert!(
            report.is_clean(),
            "step {n}/{steps}: verify beside a publication in progress ({record:?}): {:?}",
            report.problems
        );
        drop(reader);
        let w = Repository::open_writer_on(plain, &NoSecret).unwrap();
        assert_eq!(
            w.recovery.publication_undone.is_some(),
            record.is_some(),
            "step {n}: {:?}",
            w.recovery
        );
        assert!(w.index().publishing().unwrap().is_none());
        let report = check(&w, true, &NoProgress).unwrap();
        assert!(
            report.is_clean(),
            "step {n}: after recovery: {:?}",
            report.problems
        );
        let out = dir.path().join("out");
        assert_restores(&w, first, &base, &out);
        let catalogued = catalog(&w);
        if let Some(record) = &record {
            assert!(
                catalogued.contains(&record.snapshot),
                "step {n}: the snapshot being published was not catalogued by recovery"
            );
        }
        for id in catalogued.iter().filter(|id| **id != first) {
            assert_restores(&w, *id, &next, &out);
        }
        assert!(
            catalogued.contains(&first) && catalogued.len() <= 2,
            "step {n}"
        );
        drop(w);
        std::fs::remove_dir_all(&root).unwrap();
    }
    assert!(
        beside >= 2,
        "only {beside} of {steps} stops fell between publishing steps: the publication was not \
         committed in steps"
    );
}

/// Publishing in steps counts exactly what one batch would: a forget of the first snapshot
/// and of the second leave every count exact and nothing referenced.
#[test]
fn counts_published_in_steps_are_exact_through_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    init(&root);
    let a = image(dir.path(), "a", 3, 37);
    let b = image(dir.path(), "b", 3, 23);
    let s = storage(&root, None);
    let ia = backup_with(&s, &a).unwrap();
    let ib = backup_with(&s, &b).unwrap();
    let w = Repository::open_writer_on(s.clone(), &NoSecret).unwrap();
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    drop(w);
    common::forget(&s, ia);
    let w = Repository::open_writer_on(s.clone(), &NoSecret).unwrap();
    assert_restores(&w, ib, &b, &dir.path().join("out"));
    drop(w);
    common::forget(&s, ib);
    let w = Repository::open_writer_on(s, &NoSecret).unwrap();
    let report = check(&w, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let mut live = 0;
    for kind in [
        tessera_format::ObjectKind::Page,
        tessera_format::ObjectKind::Chunk,
    ] {
        w.index()
            .for_each_object(kind, |_, e| {
                live += u64::from(e.refcount > 0);
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(
        live, 0,
        "objects still referenced after every snapshot was forgotten"
    );
}

/// A recount of an index that still holds the record of an unfinished publication (a
/// publisher that failed and could not undo, then `repair --recount` in the same state)
/// undoes it first: the next writer's recovery must not undo it a second time, which left
/// counts one below their references (review of the first version of this change).
#[test]
fn a_recount_beside_an_unfinished_publication_leaves_counts_exact() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base", 5, 40);
    let next = image(dir.path(), "next", 6, 29);
    let clock = Arc::new(CrashClock::default());
    for n in 1.. {
        let root = dir.path().join(format!("repo{n}"));
        init(&root);
        let first = backup_with(&storage(&root, None), &base).unwrap();
        clock.arm(n);
        assert!(
            backup_with(&storage(&root, Some(clock.clone())), &next).is_err(),
            "no stop left a publication with applied steps"
        );
        let plain = storage(&root, None);
        let repo_id = plain.read_config().unwrap().repo_id;
        let index =
            tessera_engine::index::Index::open(&plain.index_path(), repo_id, false).unwrap();
        if index.publishing().unwrap().is_none_or(|r| r.applied == 0) {
            continue;
        }
        let crypto = tessera_engine::crypto::RepoCrypto::plain();
        // A publication in steps does not start over the record: refused, nothing changed.
        let record = index.publishing().unwrap().unwrap();
        let stored =
            tessera_engine::store::reader::load_snapshot(&*plain.backend, &crypto, record.snapshot)
                .unwrap();
        let again = tessera_engine::ops::publish::catalogue_stored(
            &index,
            &*plain.backend,
            &crypto,
            8,
            record.snapshot,
            &stored,
        );
        assert!(
            matches!(again, Err(tessera_engine::Error::Refused { .. })),
            "{again:?}"
        );
        assert!(!index.has_snapshot(record.snapshot).unwrap());
        assert_eq!(index.publishing().unwrap(), Some(record));
        tessera_engine::ops::check::recount_index(&index, &*plain.backend, &crypto).unwrap();
        assert!(
            index.publishing().unwrap().is_none(),
            "the recount left the record"
        );
        drop(index);
        let w = Repository::open_writer_on(plain, &NoSecret).unwrap();
        let report = check(&w, true, &NoProgress).unwrap();
        assert!(report.is_clean(), "stop {n}: {:?}", report.problems);
        assert_restores(&w, first, &base, &dir.path().join("out"));
        assert_eq!(
            catalog(&w).len(),
            2,
            "stop {n}: the stored snapshot was not catalogued"
        );
        return;
    }
}
