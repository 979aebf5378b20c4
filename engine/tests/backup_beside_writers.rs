//! A backup stores under its series lock alone and takes the writer lock only to publish
//! (SPEC.md §8). What other writers change meanwhile must not corrupt its reference counts
//! (SPEC.md §13, races 4–6): each test runs a writer in the window the backup leaves between
//! storing its last block and publishing (`before_publish`), then checks every count from
//! scratch (`check`), compacts without a grace period and restores byte for byte.

use std::path::{Path, PathBuf};

use common::{assert_sound, backup_beside, forget, storage, writer_backup};
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::repo::RepoStorage;
use tessera_engine::{Error, InitOptions, NoProgress, Repository};

mod common;

/// A 4 MiB image of distinct 64 KiB blocks (seeded).
fn image(dir: &Path, name: &str, seed: u8) -> PathBuf {
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

/// A new repository in `dir`, with the default pack size.
fn new_repo(dir: &Path) -> RepoStorage {
    let root = dir.join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    storage(&root, tessera_engine::store::pack_sink::TARGET_PACK_SIZE)
}

/// A hook before the publish that runs `meanwhile`.
fn then(meanwhile: impl Fn()) -> impl Fn() -> tessera_engine::Result<()> {
    move || {
        meanwhile();
        Ok(())
    }
}

#[test]
fn pages_forgotten_while_a_backup_ran_give_their_chunks_to_it() {
    // The backup finds every page of `a` live and counts no chunk; a forget of `a` then
    // drops pages and chunks to 0. Publishing must count the chunks again.
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 1);
    let a = writer_backup(&s, "a", &img);
    let b = backup_beside(&s, "b", &img, &then(|| forget(&s, a))).unwrap();
    assert_sound(&s, &[(b.id, &img)]);
}

#[test]
fn pages_another_backup_published_meanwhile_are_not_counted_twice() {
    // The backup finds its pages new and counts their chunks; another series publishes the
    // same pages first. Publishing must not count the chunks a second time.
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 2);
    let other = std::cell::Cell::new(None);
    let b = backup_beside(
        &s,
        "b",
        &img,
        &then(|| {
            other.set(Some(writer_backup(&s, "c", &img)));
        }),
    )
    .unwrap();
    let c = other.get().unwrap();
    assert_sound(&s, &[(b.id, &img), (c, &img)]);
    // Forgetting one keeps the other whole.
    forget(&s, c);
    assert_sound(&s, &[(b.id, &img)]);
}

#[test]
fn objects_a_compaction_reclaims_meanwhile_fail_the_publish_cleanly() {
    // The backup deduplicates against the dead objects of a forgotten snapshot, which a
    // compaction without a grace period reclaims before the backup publishes: the publish
    // is refused with its own error, nothing is published, and a rerun stores the data.
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 3);
    let a = writer_backup(&s, "a", &img);
    forget(&s, a);
    let err = backup_beside(
        &s,
        "b",
        &img,
        &then(|| {
            let w = common::writer(&s);
            let plan = plan_compact(&w, 0.0).unwrap();
            apply_compact(&w, &plan, &NoProgress).unwrap();
        }),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::ReclaimedMeanwhile { .. }),
        "unexpected error: {err}"
    );
    let w = Repository::open(&s.local_dir).unwrap();
    assert!(w.index().snapshots().unwrap().is_empty());
    drop(w);
    let b = backup_beside(&s, "b", &img, &|| Ok(())).unwrap();
    assert_sound(&s, &[(b.id, &img)]);
}

#[test]
fn a_second_backup_of_a_series_is_refused_and_other_series_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = new_repo(dir.path());
    let img = image(dir.path(), "img", 4);
    let held = Repository::open_backup(&s.local_dir, "vm").unwrap();
    match Repository::open_backup(&s.local_dir, "vm") {
        Err(Error::SeriesLocked { series, .. }) => assert_eq!(series, "vm"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a second backup of the series was let in"),
    }
    // Another series, and the writer lock, are free meanwhile.
    let other = backup_beside(&s, "other", &img, &|| Ok(())).unwrap();
    drop(common::writer(&s));
    drop(held);
    let vm = backup_beside(&s, "vm", &img, &|| Ok(())).unwrap();
    assert_sound(&s, &[(other.id, &img), (vm.id, &img)]);
}

/// A backup beside the writer cannot index what it seals, so it remembers what it wrote in
/// its scratch set on disk: a block repeated after its first copy's pack was sealed is not
/// stored again, and the scratch directory is gone once the backup has stored everything.
#[test]
fn blocks_repeated_across_sealed_packs_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    let s = storage(&root, 256 << 10);
    // 64 distinct incompressible blocks (packs seal every 4), four times over.
    let mut once = Vec::new();
    for block in 1..=64u64 {
        common::push_noise_block(&mut once, block.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    let img = dir.path().join("img");
    std::fs::write(&img, once.repeat(4)).unwrap();
    let out = backup_beside(&s, "a", &img, &|| Ok(())).unwrap();
    let stats = out.header.disks[0].stats;
    assert_eq!(stats.new_chunks, 64, "repeated blocks stored again");
    assert_eq!(std::fs::read_dir(root.join("scratch")).unwrap().count(), 0);
    assert_sound(&s, &[(out.id, &img)]);
}
