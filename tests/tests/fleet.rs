//! Many writers into one repository (SPEC.md §8, §13 races 3–6), through the binary: a local
//! one, and an S3 one in a real SeaweedFS written from two machines (cache directories).
//!
//! Rounds of backups of several series at once, some of identical images (so that they race
//! to store and publish the same pages), with forgets and a compaction running beside them
//! and one backup SIGKILLed at a random moment; after each round `verify` is clean and every
//! snapshot the catalog holds restores to the bytes its image had when it was backed up.
//! Knobs: `TESSERA_FLEET_ROUNDS` (default 3), `TESSERA_FLEET_WRITERS` (default 4),
//! `TESSERA_SEED`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use tempfile::TempDir;
use tessera_tests::seaweed::{CliClient, Seaweed};
use tessera_tests::{
    env_usize, finish_child, frozen_backup, init_repo, make_image, mutate, restored_sha, seed,
    sha256_file, signal, snapshot_id, stages_pack, tessera, tessera_cmd, verify, DataGen,
    ImageSpec, KillOnDrop, Out,
};

/// Snapshot id → (series, SHA-256 of the image it was taken from).
type Model = HashMap<String, (String, String)>;

/// Where the commands run: the local repository from this process's environment, or the
/// machines (each with its own cache) of an S3 repository.
trait Machine {
    fn cmd(&self, args: &[String]) -> Command;
}

struct Local;

impl Machine for Local {
    fn cmd(&self, args: &[String]) -> Command {
        tessera_cmd(args)
    }
}

impl Machine for CliClient {
    fn cmd(&self, args: &[String]) -> Command {
        CliClient::cmd(self, args)
    }
}

fn run(m: &dyn Machine, args: &[&str]) -> Out {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    Out::of(&args, &m.cmd(&args).output().expect("running tessera"))
}

fn catalog(m: &dyn Machine, location: &str) -> Vec<(String, String)> {
    let out = run(m, &["--json", "list", location]);
    out.ok();
    out.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["series"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Restores every snapshot of the model and compares its SHA-256.
fn assert_restores(m: &dyn Machine, location: &str, model: &Model, scratch: &Path, when: &str) {
    let out = scratch.join("restored.img");
    for (id, (_, sha)) in model {
        let _ = std::fs::remove_file(&out);
        run(m, &["restore", location, id, &out.display().to_string()]).ok();
        assert_eq!(
            &sha256_file(&out),
            sha,
            "{when}: snapshot {id} restores differently"
        );
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one round's steps in their order: start, interfere, collect, check"
)]
/// Rounds of `writers` backups at once spread over `machines` (series `s{i}` on machine
/// `i % machines`), beside forgets, a compaction and a kill (see the module docs).
fn fleet(machines: &[&dyn Machine], location: &str, seed_name: &str) {
    let rounds = env_usize("TESSERA_FLEET_ROUNDS", 3);
    let writers = env_usize("TESSERA_FLEET_WRITERS", 4).max(2);
    let mut gen = DataGen::new(seed(seed_name));
    let t = TempDir::new().unwrap();
    let operator = machines[0];
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
                let args = vec![
                    "--json".to_string(),
                    "backup".into(),
                    location.to_string(),
                    "--series".into(),
                    s.clone(),
                    format!("d={}", img.display()),
                ];
                let mut cmd = machines[i % machines.len()].cmd(&args);
                KillOnDrop(Some(cmd.spawn().unwrap()))
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
            run(operator, &["forget", location, id]).ok();
            model.remove(id);
        }
        run(operator, &["compact", location, "--max-unused", "0"]).ok();
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
        for (id, s) in catalog(operator, location) {
            if let std::collections::hash_map::Entry::Vacant(e) = model.entry(id) {
                assert_eq!(
                    s,
                    series[victim],
                    "round {round}: snapshot {} of {s} is in the catalog but no backup published it",
                    e.key()
                );
                e.insert((s, shas[victim % images.len()].clone()));
            }
        }
        let when = format!("round {round}");
        for m in machines {
            let mut listed: Vec<String> = catalog(*m, location)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let mut expected: Vec<String> = model.keys().cloned().collect();
            listed.sort();
            expected.sort();
            assert_eq!(listed, expected, "{when}: the catalog is not the model's");
            run(*m, &["verify", location]).ok();
        }
        assert_restores(operator, location, &model, t.path(), &when);
    }
    // With nothing running, everything unreferenced goes, and all still restores.
    run(
        operator,
        &[
            "compact",
            location,
            "--grace",
            "0",
            "--allow-short-grace",
            "--max-unused",
            "0",
        ],
    )
    .ok();
    for m in machines {
        run(*m, &["verify", location]).ok();
        assert_restores(*m, location, &model, t.path(), "at the end");
    }
    eprintln!(
        "{rounds} rounds of {writers} writers on {} machine(s): {} snapshots kept, {kills} backups killed before publishing",
        machines.len(),
        model.len()
    );
}

#[test]
fn backups_of_many_series_run_at_once_beside_retention_and_kills() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    fleet(&[&Local], &repo.display().to_string(), "fleet");
}

#[test]
fn backups_from_two_machines_run_at_once_into_seaweedfs() {
    let server = Seaweed::start("fleet");
    let location = server.location("fleet");
    let (a, b) = (CliClient::new(&server), CliClient::new(&server));
    a.run(["init", &location]).ok();
    fleet(&[&a, &b], &location, "fleet_s3");
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
    let mut child = frozen_backup(&repo, "vm", &img);
    let pid = child.0.as_ref().unwrap().id();
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

/// The pack files of `repo`.
fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

#[test]
fn packs_doomed_while_backups_run_go_once_every_running_backup_sees_the_doom() {
    // Backup leases (SPEC.md §13): a compaction beside a backup that opened before it keeps
    // the packs it doomed; once the only backup running opened after the doom, a writer
    // deletes them.
    let mut gen = DataGen::new(seed("fleet_leases"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let r = repo.display().to_string();
    // A half-dead history: an image, then the same with most of it rewritten.
    let old = t.path().join("old");
    make_image(&old, ImageSpec::mixed(8 << 20), &mut gen);
    let first = snapshot_id(&tessera_tests::backup_json(&repo, "old", &[("d", &old)]));
    mutate(&old, &mut gen, 40, 256 * 1024, (0, 1, 3));
    let second = snapshot_id(&tessera_tests::backup_json(&repo, "old", &[("d", &old)]));
    tessera(["forget", &r, &first]).ok();
    let history = pack_files(&repo);
    let random = |name: &str, gen: &mut DataGen| {
        let p = t.path().join(name);
        make_image(
            &p,
            ImageSpec {
                weights: (0, 0, 1),
                ..ImageSpec::mixed(96 << 20)
            },
            gen,
        );
        p
    };
    let (img1, img2) = (random("b1", &mut gen), random("b2", &mut gen));

    // b1 opens before the doom.
    let mut b1 = frozen_backup(&repo, "b1", &img1);
    std::thread::sleep(Duration::from_secs(4));
    let out = tessera([
        "--json",
        "compact",
        &r,
        "--grace",
        "3s",
        "--max-unused",
        "0",
    ]);
    out.ok();
    let report = &out.json()["report"];
    assert!(
        report["packs_rewritten"].as_u64().unwrap() >= 1,
        "nothing was compacted: {out}"
    );
    assert!(
        history.iter().all(|p| p.exists()),
        "a pack was deleted while a backup that opened before its doom ran: {out}"
    );
    // b1 finishes; b2 opens after the doom; a writer now deletes the doomed packs.
    signal(b1.0.as_ref().unwrap().id(), "CONT");
    let b1_out = finish_child(b1.0.take().unwrap(), &[]);
    assert_eq!(b1_out.code, 0, "{b1_out}");
    let mut b2 = frozen_backup(&repo, "b2", &img2);
    tessera(["compact", &r]).ok();
    assert!(
        history.iter().any(|p| !p.exists()),
        "no doomed pack was deleted although the only backup running opened after the doom"
    );
    signal(b2.0.as_ref().unwrap().id(), "CONT");
    let b2_out = finish_child(b2.0.take().unwrap(), &[]);
    assert_eq!(b2_out.code, 0, "{b2_out}");
    verify(&repo).ok();
    for (id, img) in [
        (snapshot_id(&b1_out.json()), &img1),
        (snapshot_id(&b2_out.json()), &img2),
        (second, &old),
    ] {
        assert_eq!(restored_sha(&repo, &id, t.path()), sha256_file(img));
    }
}
