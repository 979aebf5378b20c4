//! Kill -9 during `prune` and during `compact`, at random moments (TESSERA_KILL_TRIALS
//! trials each, default 6): afterwards the repository verifies, every snapshot still listed
//! restores byte-identical to what was backed up, the listed set is the old one or the
//! pruned one (never something else), rerunning the command completes, and a recount finds
//! no count to fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tessera_tests::{
    backup_json, env_usize, init_repo, list_ids, make_image, mutate, restored_sha, seed,
    sha256_file, snapshot_id, tessera, tessera_cmd, verify, DataGen, ImageSpec,
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

/// Runs `args` on a copy of `base`, kills it after a random delay, and checks the invariants.
fn kill_trials(
    name: &str,
    base: &Path,
    shas: &BTreeMap<String, String>,
    args: &dyn Fn(&Path) -> Vec<String>,
) {
    let trials = env_usize("TESSERA_KILL_TRIALS", 6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed(name));
    let work = tempfile::tempdir().unwrap();
    // Time one uninterrupted run to spread the kill moments over it.
    let probe = work.path().join("probe");
    copy_repo(base, &probe);
    let started = Instant::now();
    tessera(args(&probe)).ok();
    let full = started.elapsed();
    let mut after_full: Vec<String> = list_ids(&probe);
    after_full.sort();
    eprintln!("[{name}] an uninterrupted run takes {full:?}");
    for trial in 0..trials {
        let repo = work.path().join(format!("trial-{trial}"));
        copy_repo(base, &repo);
        let delay =
            Duration::from_micros(rng.gen_range(0..(full.as_micros() as u64 * 5 / 4).max(1)));
        let mut child = tessera_cmd(args(&repo)).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let listed = list_ids(&repo);
        let before: Vec<String> = shas.keys().cloned().collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert!(
            sorted == before || sorted == after_full,
            "[{name} trial {trial}, kill after {delay:?}] listed {sorted:?}"
        );
        let v = verify(&repo);
        assert_eq!(
            v.code, 0,
            "[{name} trial {trial}, kill after {delay:?}] verify after kill:\n{v}"
        );
        for id in &listed {
            let got = restored_sha(&repo, id, work.path());
            assert_eq!(
                &got, &shas[id],
                "[{name} trial {trial}] snapshot {id} restores differently after the kill"
            );
        }
        // Rerun to completion; the repository then matches an uninterrupted run.
        tessera(args(&repo)).ok();
        let mut done = list_ids(&repo);
        done.sort();
        assert_eq!(
            done, after_full,
            "[{name} trial {trial}] rerun ends elsewhere than an uninterrupted run"
        );
        let v = verify(&repo);
        assert_eq!(v.code, 0, "[{name} trial {trial}] verify after rerun:\n{v}");
        if name == "compact" {
            let stats = tessera(["--json", "stats", repo.to_str().unwrap()]);
            stats.ok();
            assert_eq!(
                stats.json()["stats"]["unreferenced_objects"],
                0,
                "[{name} trial {trial}] garbage left after the rerun:\n{stats}"
            );
        }
        let recount = tessera(["--json", "repair", repo.to_str().unwrap(), "--recount"]);
        recount.ok();
        assert_eq!(
            recount.json()["counts_fixed"],
            0,
            "[{name} trial {trial}] counts drifted:\n{recount}"
        );
        std::fs::remove_dir_all(&repo).unwrap();
    }
}

#[test]
fn kill_during_prune_leaves_old_or_new_state() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let mut gen = DataGen::new(seed("prune-data"));
    let shas = build_repo(&base, work.path(), &mut gen);
    kill_trials("prune", &base, &shas, &|repo| {
        vec![
            "prune".into(),
            repo.display().to_string(),
            "--keep-last".into(),
            "3".into(),
        ]
    });
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
    kill_trials("compact", &base, &kept, &|repo| {
        vec![
            "compact".into(),
            repo.display().to_string(),
            "--max-unused".into(),
            "0%".into(),
        ]
    });
}
