//! Kill -9 during `prune` and during `compact`, at random moments while the command holds
//! the writer lock (`TESSERA_KILL_TRIALS` trials each; see `tessera_tests::kill`): afterwards
//! the repository verifies, every snapshot still listed restores byte-identical to what was
//! backed up, the listed set is the old one or the pruned one (never something else),
//! rerunning the command completes where an uninterrupted run ends, and a recount finds no
//! count to fix. Each loop fails unless at least one kill interrupted the running command.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_tests::kill::{kill_trials, KillLoop};
use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, mutate, restored_sha, seed, sha256_file,
    snapshot_id, tessera, verify, DataGen, ImageSpec, Out,
};

/// A repository with several generations of a mixed image; returns snapshot id → sha256.
fn build_repo(repo: &Path, work: &Path, gen: &mut DataGen) -> BTreeMap<String, String> {
    init_repo(repo, &[]);
    let image = work.join("image");
    make_image(&image, ImageSpec::mixed(48 << 20), gen);
    let mut shas = BTreeMap::new();
    for _ in 0..8 {
        mutate(&image, gen, 40, 256 * 1024, (1, 2, 3));
        let b = backup_json(repo, "vm", &[("d0", &image)]);
        shas.insert(snapshot_id(&b), sha256_file(&image));
    }
    shas
}

fn copy_repo(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// One retention command to kill.
struct Case {
    /// Its name, in every message.
    name: &'static str,
    /// Its arguments, given the repository.
    args: fn(&Path) -> Vec<String>,
    /// Whether a completed run leaves no unreferenced object (compaction's promise).
    leaves_no_garbage: bool,
}

const PRUNE: Case = Case {
    name: "prune",
    args: |repo| {
        vec![
            "prune".into(),
            repo.display().to_string(),
            "--keep-last".into(),
            "3".into(),
        ]
    },
    leaves_no_garbage: false,
};

const COMPACT: Case = Case {
    name: "compact",
    args: |repo| {
        vec![
            "--json".into(),
            "compact".into(),
            repo.display().to_string(),
            "--max-unused".into(),
            "0%".into(),
            "--grace".into(),
            "0".into(),
        ]
    },
    leaves_no_garbage: true,
};

/// Runs the case on copies of `base` (whose snapshots restore to `shas`): once to
/// completion, then killed in every trial, checking the invariants after each kill. Returns
/// the output of the uninterrupted run.
fn kill_trials_of(case: &Case, base: &Path, shas: &BTreeMap<String, String>) -> Out {
    let name = case.name;
    let work = tempfile::tempdir().unwrap();
    let probe = work.path().join("probe");
    copy_repo(base, &probe);
    let (mut kills, full) = KillLoop::calibrate(name, &probe, &(case.args)(&probe));
    let after_full = sorted(list_ids(&probe));
    let before: Vec<String> = shas.keys().cloned().collect();
    for trial in 0..kill_trials() {
        let repo = work.path().join(format!("trial-{trial}"));
        copy_repo(base, &repo);
        let kill = kills.kill(trial, &repo, &(case.args)(&repo));
        let at = format!("[{name} trial {trial}, {:?}]", kill.landed);
        let listed = list_ids(&repo);
        let set = sorted(listed.clone());
        assert!(
            set == before || set == after_full,
            "{at} listed {set:?}, neither the old {before:?} nor the new {after_full:?}"
        );
        let v = verify(&repo);
        assert_eq!(v.code, 0, "{at} verify after the kill:\n{v}");
        for id in &listed {
            assert_eq!(
                restored_sha(&repo, id, work.path()),
                shas[id],
                "{at} snapshot {id} restores differently after the kill"
            );
        }
        // Rerun to completion; the repository then matches an uninterrupted run.
        tessera((case.args)(&repo)).ok();
        assert_eq!(
            sorted(list_ids(&repo)),
            after_full,
            "{at} the rerun ends elsewhere than an uninterrupted run"
        );
        let v = verify(&repo);
        assert_eq!(v.code, 0, "{at} verify after the rerun:\n{v}");
        if case.leaves_no_garbage {
            let stats = tessera(["--json", "stats", repo.to_str().unwrap()]);
            stats.ok();
            assert_eq!(
                stats.json()["stats"]["unreferenced_objects"],
                0,
                "{at} garbage left after the rerun:\n{stats}"
            );
        }
        let recount = tessera(["--json", "repair", repo.to_str().unwrap(), "--recount"]);
        recount.ok();
        assert_eq!(
            recount.json()["counts_fixed"],
            0,
            "{at} counts drifted:\n{recount}"
        );
        std::fs::remove_dir_all(&repo).unwrap();
    }
    kills.finish();
    full
}

#[test]
fn kill_during_prune_leaves_old_or_new_state() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let mut gen = DataGen::new(seed("prune-data"));
    let shas = build_repo(&base, work.path(), &mut gen);
    kill_trials_of(&PRUNE, &base, &shas);
}

#[test]
fn kill_during_compaction_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let mut gen = DataGen::new(seed("compact-data"));
    let all = build_repo(&base, work.path(), &mut gen);
    // Forget most snapshots so that compaction has real work: it must move live data.
    tessera(["prune", base.to_str().unwrap(), "--keep-last", "2"]).ok();
    let kept: BTreeMap<String, String> = list_ids(&base)
        .into_iter()
        .map(|id| {
            let sha = all[&id].clone();
            (id, sha)
        })
        .collect();
    assert_eq!(kept.len(), 2, "prune --keep-last 2 kept {kept:?}");
    let full = kill_trials_of(&COMPACT, &base, &kept);
    let moved = full.json()["report"]["bytes_moved"].as_u64();
    assert!(
        moved.is_some_and(|m| m > 0),
        "the uninterrupted compaction moved no live data, so the kills interrupted no move: {full}"
    );
}
