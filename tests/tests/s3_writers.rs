//! Several machines on one S3 repository while packs are compacted away: two-phase deletion
//! with a grace period (engine/src/doomed.rs, SPEC §13), against a real SeaweedFS.
//!
//! - A reader that opened before a compaction still reads the emptied pack: it is doomed
//!   (a record in the bucket), not deleted, until a compaction after the grace period.
//! - A backup that opened before the compaction and deduplicated against objects that were
//!   dead then publishes afterwards: whoever catalogues its snapshot next (the compacting
//!   client through its cache, or a new client rebuilding its cache) finds the objects in
//!   the doomed pack and rescues it, so the later deletion does not take them.
//! - A compaction that runs longer than the grace period measures the age of doom records
//!   against the store's clock of its open, so a snapshot published while it runs (by a
//!   backup that opened before the doom) keeps the doomed packs it needs.
//! - Through the binary: `compact --grace` dooms, a second client's cache stops using the
//!   doomed pack, and a compaction after the grace deletes pack and record.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::storage::key::DOOMED;
use tessera_engine::storage::Backend;
use tessera_engine::{NoProgress, Progress, Repository};
use tessera_format::SnapshotId;
use tessera_tests::seaweed::{CliClient, Client, Seaweed};
use tessera_tests::{make_image, DataGen, ImageSpec};

const MIB: u64 = 1 << 20;
const HOUR_US: i64 = 3600 * 1_000_000;

fn image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    make_image(&path, ImageSpec::mixed(12 * MIB), &mut DataGen::new(seed));
    path
}

fn backup_image(repo: &Repository, path: &Path) -> SnapshotId {
    backup(
        repo,
        &BackupRequest::one_disk("vm", "d0", path),
        &NoProgress,
    )
    .unwrap_or_else(|e| panic!("backup: {e}"))
    .id
}

#[track_caller]
fn assert_restores(repo: &Repository, id: SnapshotId, image: &Path, scratch: &Path) {
    let snapshot = repo.load_snapshot(id).expect("loading the snapshot");
    let out = scratch.join(format!("restore-{id}"));
    restore_disk(repo, id, &snapshot, "d0", &out, true, &NoProgress)
        .unwrap_or_else(|e| panic!("restoring {id}: {e}"));
    tessera_tests::assert_same_file(image, &out);
    std::fs::remove_file(&out).unwrap();
}

#[track_caller]
fn assert_clean(repo: &Repository, what: &str) {
    let report = check(repo, true, &NoProgress).expect("check");
    assert!(report.is_clean(), "{what}: {:?}", report.problems);
}

fn forget(repo: &Repository, id: SnapshotId) {
    let plan = plan_forget(repo, &[id], false).expect("plan forget");
    apply_forget(repo, &plan).expect("forget");
}

/// Compacts every pack with dead data, dooming with a grace period of `grace_us` (packs
/// are old enough to be compacted whatever their age).
fn compact(repo: &Repository, grace_us: i64) -> tessera_engine::ops::compact::CompactReport {
    let mut plan = plan_compact(repo, 0.0).expect("plan compaction");
    plan.grace_us = grace_us;
    apply_compact(repo, &plan, &NoProgress).expect("compaction")
}

fn packs(backend: &dyn Backend) -> Vec<String> {
    backend
        .list("packs/")
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "clients a, b, c, d and the work directory w"
)]
fn doomed_packs_outlive_readers_and_are_rescued_for_late_backups() {
    let sw = Seaweed::start("writers");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let location = sw.location("shared");
    let a = Client::new(&location, sw.options());
    a.init();
    let old_img = image(w, "old.img", 1);
    let keep_img = image(w, "keep.img", 2);
    let old = backup_image(&a.writer(), &old_img);
    let keep = backup_image(&a.writer(), &keep_img);
    forget(&a.writer(), old);
    let backend = a.storage().backend;
    let before = packs(&*backend);

    // B: a reader that opened before the compaction (it still knows `keep` in the old packs)
    // and a backup of the forgotten image, opened before too: its objects are dead, and the
    // backup deduplicates against them.
    let b = Client::new(&location, sw.options());
    let c = Client::new(&location, sw.options());
    let reader = c.reader();
    let late_writer = b.writer();

    // A compacts with a grace period of an hour: the emptied packs are doomed, not deleted.
    let report = compact(&a.writer(), HOUR_US);
    assert!(
        report.packs_rewritten > 0 && report.packs_doomed > 0,
        "{report:?}"
    );
    assert_eq!(report.packs_deleted, 0, "{report:?}");
    let doomed = backend.list(DOOMED).unwrap();
    assert_eq!(doomed.len(), report.packs_doomed, "{doomed:?}");
    for p in &before {
        assert!(
            packs(&*backend).contains(p),
            "pack {p} deleted within the grace"
        );
    }
    // The reader from before still reads through the doomed packs.
    assert_restores(&reader, keep, &keep_img, w);
    drop(reader);

    // The late backup publishes a snapshot naming objects only the doomed packs hold.
    let late = backup_image(&late_writer, &old_img);
    drop(late_writer);

    // A new client rebuilds its cache: it leaves doomed packs out, finds the late snapshot
    // incomplete without them, and rescues them.
    let d = Client::new(&location, sw.options());
    let repo = d.reader();
    let refresh = repo.recovery.cache.clone().expect("a refresh");
    assert!(refresh.rebuilt.is_some(), "{refresh:?}");
    assert_restores(&repo, late, &old_img, w);
    assert_clean(&repo, "a new client after the rescue");
    drop(repo);
    assert!(
        backend.list(DOOMED).unwrap().is_empty(),
        "the rescued packs are still doomed"
    );

    // The compacting client catalogues the late snapshot (its index had dropped the dead
    // objects) without quarantining it, and a compaction with no grace deletes nothing the
    // late snapshot needs.
    let repo = a.writer();
    assert!(
        repo.index().has_snapshot(late).unwrap(),
        "{:?}",
        repo.recovery
    );
    assert!(
        repo.recovery.snapshots_quarantined.is_empty(),
        "{:?}",
        repo.recovery
    );
    compact(&repo, 0);
    assert_clean(&repo, "A after compacting again");
    assert_restores(&repo, late, &old_img, w);
    assert_restores(&repo, keep, &keep_img, w);
    drop(repo);
    let repo = b.writer();
    assert_clean(&repo, "B at the end");
    assert_restores(&repo, late, &old_img, w);
}

/// A progress report that runs `hook` once, when the compaction starts moving objects
/// (after it checked that every stored snapshot is catalogued).
struct DuringCompaction<F>(Mutex<Option<F>>);

impl<F: FnOnce() + Send> Progress for DuringCompaction<F> {
    fn start(&self, _phase: &str, _total: u64) {
        let hook = self.0.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
    }
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

#[test]
fn a_snapshot_published_during_a_long_compaction_keeps_its_doomed_packs() {
    const GRACE: Duration = Duration::from_secs(3);
    let sw = Seaweed::start("long-compaction");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let location = sw.location("shared");
    let a = Client::new(&location, sw.options());
    a.init();
    let old_img = image(w, "old.img", 7);
    let keep_img = image(w, "keep.img", 8);
    let old = backup_image(&a.writer(), &old_img);
    let keep = backup_image(&a.writer(), &keep_img);
    forget(&a.writer(), old);
    // B's backup opens before the doom and deduplicates against the dead objects.
    let b = Client::new(&location, sw.options());
    let late_writer = b.writer();
    let grace_us = i64::try_from(GRACE.as_micros()).unwrap();
    let first = compact(&a.writer(), grace_us);
    assert!(first.packs_doomed > 0, "{first:?}");
    // A's second compaction opens while the records are young, and runs longer than the
    // grace: while it moves objects, B publishes, and the records grow older than the grace.
    let repo = a.writer();
    let mut plan = plan_compact(&repo, 0.0).expect("plan compaction");
    plan.grace_us = grace_us;
    let (published, late) = mpsc::channel();
    let during = DuringCompaction(Mutex::new(Some(move || {
        let id = backup_image(&late_writer, &old_img);
        drop(late_writer);
        published.send(id).unwrap();
        std::thread::sleep(GRACE + Duration::from_secs(2));
    })));
    let second = apply_compact(&repo, &plan, &during).expect("the long compaction");
    let late = late
        .try_recv()
        .expect("the late backup ran during the compaction");
    assert_eq!(
        second.packs_deleted, 0,
        "records young when the compaction opened were taken for expired: {second:?}"
    );
    drop(repo);
    // Whoever opens next catalogues the late snapshot and rescues the packs it needs.
    let repo = Client::new(&location, sw.options()).reader();
    assert_restores(&repo, late, &w.join("old.img"), w);
    assert_restores(&repo, keep, &keep_img, w);
    assert_clean(&repo, "a new client after the long compaction");
}

#[test]
fn the_compacting_client_rescues_through_its_cache() {
    let sw = Seaweed::start("rescue");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let location = sw.location("shared");
    let a = Client::new(&location, sw.options());
    a.init();
    let old_img = image(w, "old.img", 3);
    let keep_img = image(w, "keep.img", 4);
    let old = backup_image(&a.writer(), &old_img);
    backup_image(&a.writer(), &keep_img);
    forget(&a.writer(), old);
    let b = Client::new(&location, sw.options());
    let late_writer = b.writer();
    compact(&a.writer(), HOUR_US);
    let late = backup_image(&late_writer, &old_img);
    drop(late_writer);
    // A opens first: recovery finds the late snapshot incomplete in A's index, rescues the
    // doomed packs, and catalogues it.
    let repo = a.writer();
    let refresh = repo.recovery.cache.clone().expect("a refresh");
    assert!(refresh.doomed_packs_rescued > 0, "{refresh:?}");
    assert!(repo.index().has_snapshot(late).unwrap());
    assert_clean(&repo, "A after the rescue");
    assert_restores(&repo, late, &old_img, w);
    assert!(repo.backend().list(DOOMED).unwrap().is_empty());
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "snapshots a, b, the compaction c, the work directory w"
)]
fn compact_dooms_then_deletes_after_the_grace_through_the_binary() {
    let sw = Seaweed::start("grace");
    let (one, two) = (CliClient::new(&sw), CliClient::new(&sw));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("repo");
    one.json(["init", &repo]);
    let disk = |p: &Path| format!("d0={}", p.display());
    let (a_img, b_img) = (image(w, "a.img", 5), image(w, "b.img", 6));
    let a = one.json(["backup", &repo, "--series", "vm", &disk(&a_img)]);
    let b = one.json(["backup", &repo, "--series", "vm", &disk(&b_img)]);
    let a = tessera_tests::snapshot_id(&a);
    let b = tessera_tests::snapshot_id(&b);
    one.json(["forget", &repo, &a]);
    two.json(["list", &repo]);
    // Packs younger than the grace are not compacted: wait until they are older.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let watcher = Client::new(&repo, sw.options()).storage().backend;
    // A grace this short is refused in a shared repository without the operator's word.
    let listing = tessera_tests::seaweed::bucket_listing(&*watcher);
    one.run(["compact", &repo, "--max-unused", "0%", "--grace", "3s"])
        .expect_code(5)
        .stderr_has("--allow-short-grace");
    assert_eq!(tessera_tests::seaweed::bucket_listing(&*watcher), listing);
    let c = one.json([
        "compact",
        &repo,
        "--max-unused",
        "0%",
        "--grace",
        "3s",
        "--allow-short-grace",
    ]);
    let doomed = c["report"]["packs_doomed"].as_u64().unwrap();
    assert!(doomed > 0, "{c}");
    assert_eq!(c["report"]["packs_deleted"], 0, "{c}");
    assert_eq!(watcher.list(DOOMED).unwrap().len() as u64, doomed);
    // The second client's cache stops using the doomed packs: rebuilt, and still whole.
    let listed = two.run(["list", &repo]);
    listed.ok().stderr_has("doomed");
    let restored = w.join("b.restored");
    two.run(["restore", &repo, &b, &restored.display().to_string()])
        .ok();
    tessera_tests::assert_same_file(&b_img, &restored);
    let packs_doomed_now = watcher.list("packs/").unwrap().len();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let c = two.json([
        "compact",
        &repo,
        "--max-unused",
        "0%",
        "--grace",
        "3s",
        "--allow-short-grace",
    ]);
    assert_eq!(c["report"]["packs_deleted"].as_u64(), Some(doomed), "{c}");
    assert!(watcher.list(DOOMED).unwrap().is_empty());
    assert_eq!(
        watcher.list("packs/").unwrap().len() as u64,
        packs_doomed_now as u64 - doomed
    );
    for client in [&one, &two] {
        let v = client.json(["verify", &repo]);
        assert_eq!(v["report"]["problems"], serde_json::json!([]), "{v}");
    }
}
