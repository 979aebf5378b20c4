//! Model test of retention: random sequences of backup (random writes to an image), forget,
//! prune, protect and compact against a model map of snapshot → image bytes. After every
//! step, every remaining snapshot restores byte-identical to the model, and `check` (which
//! recomputes every reference count from scratch) finds nothing wrong.
//!
//! TESSERA_MODEL_STEPS sets the number of steps (default 40); TESSERA_SEED fixes the seed.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget, set_protected};
use tessera_engine::ops::prune::{plan_prune, KeepPolicy};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::{InitOptions, NoProgress, Repository};
use tessera_format::SnapshotId;

const BLOCK: usize = 64 * 1024;

/// Backs up `image` as disk `d0` of series `vm`.
fn backup_image(repo: &Repository, image: &Path) -> tessera_engine::ops::backup::BackupOutcome {
    backup(
        repo,
        &BackupRequest::one_disk("vm", "d0", image),
        &NoProgress,
    )
    .unwrap()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutate(rng: &mut StdRng, image: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..6) {
        let len = rng.gen_range(1..3 * BLOCK);
        let at = rng.gen_range(0..image.len());
        let end = (at + len).min(image.len());
        match rng.gen_range(0..4) {
            0 => image[at..end].fill(0),
            1 => image[at..end].fill(rng.gen()),
            _ => rng.fill(&mut image[at..end]),
        }
    }
    if rng.gen_bool(0.1) {
        let new_len = rng.gen_range(BLOCK..40 * BLOCK) + rng.gen_range(0..1000);
        image.resize(new_len, 7);
    }
}

fn restore_all_and_compare(
    repo_path: &Path,
    model: &BTreeMap<SnapshotId, Vec<u8>>,
    work: &Path,
    step: usize,
) {
    let repo = Repository::open(repo_path).unwrap();
    let listed: Vec<SnapshotId> = repo
        .index()
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut expected: Vec<SnapshotId> = model.keys().copied().collect();
    let mut got = listed.clone();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "step {step}: listed snapshots differ from the model"
    );
    for id in listed {
        let snapshot = repo.load_snapshot(id).unwrap();
        let out = work.join(format!("restore-{step}-{id}"));
        restore_disk(&repo, id, &snapshot, "d0", &out, true, &NoProgress).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(
            bytes == model[&id],
            "step {step}: snapshot {id} restores differently from the model"
        );
        std::fs::remove_file(&out).unwrap();
    }
    let report = check(&repo, true, &NoProgress).unwrap();
    assert!(
        report.is_clean(),
        "step {step}: check found {:?}",
        report.problems
    );
}

#[test]
fn random_backup_forget_prune_compact_sequences_match_the_model() {
    let seed = env_u64("TESSERA_SEED", rand::random());
    let steps = env_u64("TESSERA_MODEL_STEPS", 40) as usize;
    println!("seed {seed} (set TESSERA_SEED to replay), {steps} steps");
    let mut rng = StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    let mut image: Vec<u8> = (0..20 * BLOCK + 333).map(|i| (i / 4096) as u8).collect();
    let mut model: BTreeMap<SnapshotId, Vec<u8>> = BTreeMap::new();
    let mut protected = Vec::new();
    for step in 0..steps {
        let repo = Repository::open_writer(&repo_path).unwrap();
        let action = if model.is_empty() {
            0
        } else {
            rng.gen_range(0..10)
        };
        match action {
            0..=4 => {
                mutate(&mut rng, &mut image);
                std::fs::write(&image_path, &image).unwrap();
                let out = backup_image(&repo, &image_path);
                model.insert(out.id, image.clone());
            }
            5 | 6 => {
                let ids: Vec<SnapshotId> = model
                    .keys()
                    .copied()
                    .filter(|id| !protected.contains(id))
                    .collect();
                if let Some(&id) = ids.get(rng.gen_range(0..ids.len().max(1))) {
                    let plan = plan_forget(&repo, &[id], false).unwrap();
                    apply_forget(&repo, &plan).unwrap();
                    model.remove(&id);
                }
            }
            7 => {
                let policy = KeepPolicy {
                    last: rng.gen_range(1..4),
                    ..KeepPolicy::default()
                };
                let prot = repo.index().protected().unwrap();
                let decisions =
                    plan_prune(&repo.index().snapshots().unwrap(), &prot, &policy, None).unwrap();
                let gone: Vec<SnapshotId> = decisions
                    .iter()
                    .filter(|d| !d.keep())
                    .map(|d| d.id)
                    .collect();
                assert!(
                    gone.iter().all(|id| !prot.contains(id)),
                    "prune chose a protected snapshot"
                );
                let plan = plan_forget(&repo, &gone, false).unwrap();
                apply_forget(&repo, &plan).unwrap();
                for id in gone {
                    model.remove(&id);
                }
            }
            8 => {
                let ids: Vec<SnapshotId> = model.keys().copied().collect();
                let id = ids[rng.gen_range(0..ids.len())];
                let protect = !protected.contains(&id);
                set_protected(&repo, id, protect).unwrap();
                if protect {
                    protected.push(id);
                } else {
                    protected.retain(|p| *p != id);
                }
            }
            _ => {
                let plan = plan_compact(&repo, rng.gen_range(0.0..0.5)).unwrap();
                let report = apply_compact(&repo, &plan, &NoProgress).unwrap();
                assert!(report.damaged.is_empty());
            }
        }
        drop(repo);
        restore_all_and_compare(&repo_path, &model, work.path(), step);
    }
}

#[test]
fn forgetting_a_protected_snapshot_is_refused_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    std::fs::write(&image_path, vec![5u8; 3 * BLOCK]).unwrap();
    let repo = Repository::open_writer(&repo_path).unwrap();
    let out = backup_image(&repo, &image_path);
    set_protected(&repo, out.id, true).unwrap();
    let err = plan_forget(&repo, &[out.id], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("protected"), "{err}");
    assert_eq!(repo.index().snapshots().unwrap().len(), 1);
    let decisions = plan_prune(
        &repo.index().snapshots().unwrap(),
        &repo.index().protected().unwrap(),
        &KeepPolicy {
            last: 1,
            ..KeepPolicy::default()
        },
        None,
    )
    .unwrap();
    assert!(decisions
        .iter()
        .all(tessera_engine::ops::prune::Decision::keep));
}

#[test]
fn steady_workload_stops_growing_under_keep_last() {
    // The seeds' scenario, scaled down: a full backup then daily deltas with keep-last 7;
    // once steady, forgetting + compacting keeps the store from growing.
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    let mut rng = StdRng::seed_from_u64(7);
    let mut image = vec![0u8; 64 * BLOCK];
    rng.fill(&mut image[..]);
    let mut sizes = Vec::new();
    let mut model = BTreeMap::new();
    for day in 0..30u64 {
        let repo = Repository::open_writer(&repo_path).unwrap();
        // Each day rewrites the same-sized 2 blocks' worth of random data.
        for _ in 0..2 {
            let at = rng.gen_range(0..64) * BLOCK;
            rng.fill(&mut image[at..at + BLOCK]);
        }
        std::fs::write(&image_path, &image).unwrap();
        let out = backup_image(&repo, &image_path);
        model.insert(out.id, image.clone());
        let decisions = plan_prune(
            &repo.index().snapshots().unwrap(),
            &repo.index().protected().unwrap(),
            &KeepPolicy {
                last: 7,
                ..KeepPolicy::default()
            },
            None,
        )
        .unwrap();
        let gone: Vec<SnapshotId> = decisions
            .iter()
            .filter(|d| !d.keep())
            .map(|d| d.id)
            .collect();
        apply_forget(&repo, &plan_forget(&repo, &gone, false).unwrap()).unwrap();
        for id in &gone {
            model.remove(id);
        }
        apply_compact(&repo, &plan_compact(&repo, 0.2).unwrap(), &NoProgress).unwrap();
        let stats = tessera_engine::ops::stats::stats(&repo).unwrap();
        sizes.push(stats.pack_bytes);
        assert_eq!(stats.snapshots, (day + 1).min(7));
    }
    // Steady state: the last 10 days grow by less than one day's new data per day on average
    // compared with day 15 (compaction reclaims what prune released).
    let day15 = sizes[15];
    let last = *sizes.last().unwrap();
    assert!(
        last <= day15 + 4 * (BLOCK as u64 * 2),
        "store keeps growing: day 15 {day15}, day 30 {last} ({sizes:?})"
    );
    restore_all_and_compare(&repo_path, &model, work.path(), 99);
}

#[test]
fn compaction_next_to_a_reader_defers_deleting_old_packs() {
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    let mut rng = StdRng::seed_from_u64(11);
    let mut image = vec![0u8; 48 * BLOCK];
    rng.fill(&mut image[..]);
    std::fs::write(&image_path, &image).unwrap();
    let writer = Repository::open_writer(&repo_path).unwrap();
    let first = backup_image(&writer, &image_path).id;
    for b in (0..48).step_by(2) {
        rng.fill(&mut image[b * BLOCK..(b + 1) * BLOCK]);
    }
    std::fs::write(&image_path, &image).unwrap();
    let second = backup_image(&writer, &image_path).id;
    drop(writer);
    let pack_files = || walk_packs(&repo_path.join("packs"));
    let before = pack_files();

    // A reader opens (lease + index view with the old locations), then the writer forgets
    // the first snapshot and compacts everything.
    let reader = Repository::open(&repo_path).unwrap();
    let writer = Repository::open_writer(&repo_path).unwrap();
    apply_forget(&writer, &plan_forget(&writer, &[first], false).unwrap()).unwrap();
    let report = apply_compact(&writer, &plan_compact(&writer, 0.0).unwrap(), &NoProgress).unwrap();
    assert!(
        report.packs_rewritten > 0,
        "nothing was compacted: {report:?}"
    );
    assert_eq!(
        report.packs_deleted, 0,
        "old packs deleted while a reader runs"
    );
    assert!(
        before.iter().all(|p| p.exists()),
        "an old pack vanished under the reader"
    );

    // The reader still restores through its old view.
    let snapshot = reader.load_snapshot(second).unwrap();
    let out = work.path().join("restored");
    restore_disk(&reader, second, &snapshot, "d0", &out, true, &NoProgress).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == image,
        "restore next to compaction differs"
    );
    drop(writer);
    drop(reader);

    // With the reader gone, the next writer deletes the doomed packs; everything verifies.
    let writer = Repository::open_writer(&repo_path).unwrap();
    assert_eq!(writer.recovery.doomed_packs_deleted, report.packs_rewritten);
    assert!(
        before.iter().any(|p| !p.exists()),
        "doomed packs were not deleted"
    );
    drop(writer);
    let mut model = BTreeMap::new();
    model.insert(second, image);
    restore_all_and_compare(&repo_path, &model, work.path(), 1);
    assert!(pack_files().len() < before.len() + report.packs_written);
}

fn walk_packs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[test]
fn data_forgotten_and_compacted_away_is_stored_again_when_it_returns() {
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    let mut rng = StdRng::seed_from_u64(5);
    let mut original = vec![0u8; 20 * BLOCK];
    rng.fill(&mut original[..]);
    let mut other = vec![0u8; 20 * BLOCK];
    rng.fill(&mut other[..]);
    let writer = Repository::open_writer(&repo_path).unwrap();
    std::fs::write(&image_path, &original).unwrap();
    let first = backup_image(&writer, &image_path).id;
    std::fs::write(&image_path, &other).unwrap();
    let second = backup_image(&writer, &image_path).id;
    // Forget the first and compact: its chunks and pages leave the store entirely.
    apply_forget(&writer, &plan_forget(&writer, &[first], false).unwrap()).unwrap();
    apply_compact(&writer, &plan_compact(&writer, 0.0).unwrap(), &NoProgress).unwrap();
    let stats = tessera_engine::ops::stats::stats(&writer).unwrap();
    assert_eq!(
        stats.unreferenced_objects, 0,
        "compaction left dead objects: {stats:?}"
    );
    // The same data comes back: it must be stored again, not assumed present.
    std::fs::write(&image_path, &original).unwrap();
    let third = backup_image(&writer, &image_path);
    assert_eq!(
        third.header.disks[0].stats.new_raw_bytes,
        original.len() as u64
    );
    drop(writer);
    let mut model = BTreeMap::new();
    model.insert(second, other);
    model.insert(third.id, original);
    restore_all_and_compare(&repo_path, &model, work.path(), 2);
}
