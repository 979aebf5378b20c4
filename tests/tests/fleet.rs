//! Many writers into one local repository (SPEC.md §8, §13 races 3–6), through the binary.
//!
//! Rounds of backups of several series at once, some of identical images (so that they race
//! to store and publish the same pages), with forgets and a compaction running beside them
//! and one backup SIGKILLed at a random moment; after each round `verify` is clean and every
//! snapshot the catalog holds restores to the bytes its image had when it was backed up.
//! Knobs: `TESSERA_FLEET_ROUNDS` (default 3), `TESSERA_FLEET_WRITERS` (default 4),
//! `TESSERA_SEED`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use tempfile::TempDir;
use tessera_tests::{
    backup_args, env_usize, finish_child, init_repo, list_json, make_image, mutate, restored_sha,
    seed, sha256_file, signal, snapshot_id, stages_pack, tessera, tessera_cmd, verify, wait_every,
    DataGen, ImageSpec, KillOnDrop,
};

/// Snapshot id → (series, SHA-256 of the image it was taken from).
type Model = HashMap<String, (String, String)>;

fn catalog(repo: &Path) -> Vec<(String, String)> {
    list_json(repo)
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["series"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn backups_of_many_series_run_at_once_beside_retention_and_kills() {
    let rounds = env_usize("TESSERA_FLEET_ROUNDS", 3);
    let writers = env_usize("TESSERA_FLEET_WRITERS", 4).max(2);
    let mut gen = DataGen::new(seed("fleet"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let r = repo.display().to_string();
    // Half as many images as writers: series i backs up image i % images.
    let images: Vec<PathBuf> = (0..writers.div_ceil(2))
        .map(|i| {
            let p = t.path().join(format!("img{i}"));
            make_image(&p, ImageSpec::mixed(6 << 20), &mut gen);
            p
        })
        .collect();
    let mut model = Model::new();
    let mut kills = 0;
    for round in 0..rounds {
        for img in &images {
            if round == 0 || gen.rng.gen_bool(0.5) {
                mutate(img, &mut gen, 8, 256 * 1024, (1, 1, 2));
            }
        }
        let shas: Vec<String> = images.iter().map(|p| sha256_file(p)).collect();
        let series: Vec<String> = (0..writers).map(|i| format!("s{i}")).collect();
        let mut children: Vec<KillOnDrop> = series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let img = &images[i % images.len()];
                KillOnDrop(Some(
                    tessera_cmd(backup_args(&repo, s, &[("d", img)]))
                        .spawn()
                        .unwrap(),
                ))
            })
            .collect();
        // Beside them: forget some earlier snapshots, compact what is not young, kill one.
        let victim = gen.rng.gen_range(0..writers);
        let kill_after = Duration::from_millis(gen.rng.gen_range(0..1500));
        let forget: Vec<String> = model
            .keys()
            .filter(|_| gen.rng.gen_bool(0.4))
            .cloned()
            .collect();
        std::thread::sleep(Duration::from_millis(gen.rng.gen_range(0..300)));
        for id in &forget {
            tessera(["forget", &r, id]).ok();
            model.remove(id);
        }
        tessera(["compact", &r, "--max-unused", "0"]).ok();
        std::thread::sleep(kill_after);
        let victim_pid = children[victim].0.as_ref().unwrap().id();
        signal(victim_pid, "KILL");
        for (i, child) in children.iter_mut().enumerate() {
            let out = finish_child(child.0.take().unwrap(), &[]);
            let sha = shas[i % images.len()].clone();
            match out.code {
                0 => {
                    model.insert(snapshot_id(&out.json()), (series[i].clone(), sha));
                }
                137 if i == victim => kills += 1,
                _ => panic!("round {round}: backup of {} failed: {out}", series[i]),
            }
        }
        // A victim killed after it published (or that finished first) has its snapshot in
        // the catalog: it counts, with its image's bytes.
        for (id, s) in catalog(&repo) {
            if !model.contains_key(&id) {
                assert_eq!(
                    s,
                    series[victim],
                    "round {round}: snapshot {id} of {s} is in the catalog but no backup published it"
                );
                model.insert(id, (s, shas[victim % images.len()].clone()));
            }
        }
        let mut listed: Vec<String> = catalog(&repo).into_iter().map(|(id, _)| id).collect();
        let mut expected: Vec<String> = model.keys().cloned().collect();
        listed.sort();
        expected.sort();
        assert_eq!(
            listed, expected,
            "round {round}: the catalog is not the model's"
        );
        verify(&repo).ok();
        for (id, (_, sha)) in &model {
            assert_eq!(
                &restored_sha(&repo, id, t.path()),
                sha,
                "round {round}: snapshot {id} restores differently"
            );
        }
    }
    // With nothing running, everything unreferenced goes, and all still restores.
    tessera(["compact", &r, "--grace", "0", "--max-unused", "0"]).ok();
    verify(&repo).ok();
    for (id, (_, sha)) in &model {
        assert_eq!(&restored_sha(&repo, id, t.path()), sha);
    }
    eprintln!(
        "{rounds} rounds of {writers} writers: {} snapshots kept, {kills} backups killed before publishing",
        model.len()
    );
}

#[test]
fn a_writer_opening_during_a_backup_keeps_its_staged_pack() {
    // A writer's open discards staged files of crashed puts; a backup's pack in progress is
    // not one. Freeze a backup while it stages a pack, let a compaction open the repository,
    // resume the backup: it publishes, and the snapshot restores.
    let mut gen = DataGen::new(seed("fleet_staging"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(96 << 20)
        },
        &mut gen,
    );
    let mut child = KillOnDrop(Some(
        tessera_cmd(backup_args(&repo, "vm", &[("d", &img)]))
            .spawn()
            .unwrap(),
    ));
    let pid = child.0.as_ref().unwrap().id();
    // Stop it at a moment it has a staged file (it may be between two packs: try again).
    let mut frozen = false;
    for _ in 0..50 {
        let staging = wait_every(Duration::from_secs(60), Duration::from_millis(1), || {
            stages_pack(&repo, pid)
        });
        assert!(staging, "the backup never staged a pack");
        signal(pid, "STOP");
        if stages_pack(&repo, pid) {
            frozen = true;
            break;
        }
        signal(pid, "CONT");
    }
    assert!(frozen, "could not stop the backup while it staged a pack");
    tessera(["compact", &repo.display().to_string()]).ok();
    let kept = stages_pack(&repo, pid);
    signal(pid, "CONT");
    let out = finish_child(child.0.take().unwrap(), &[]);
    assert!(
        kept,
        "the writer's open discarded the running backup's staged pack"
    );
    assert_eq!(
        out.code, 0,
        "the backup failed after a writer opened: {out}"
    );
    assert_eq!(
        restored_sha(&repo, &snapshot_id(&out.json()), t.path()),
        sha256_file(&img)
    );
    verify(&repo).ok();
}
