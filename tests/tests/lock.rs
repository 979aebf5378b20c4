//! The single-writer lock: a second writer is refused with exit code 3 naming the holder,
//! readers keep working next to the writer, and a lock left by a killed writer is recovered.

use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use rand::RngCore;
use tempfile::TempDir;
use tessera_tests::{
    backup_args, backup_json, finish_child, init_repo, list_ids, lock_says, make_image,
    restored_sha, seed, sha256_file, signal, snapshot_id, tessera, tessera_cmd, verify, wait_until,
    DataGen, ImageSpec, KillOnDrop,
};

/// Spawns a backup of `img` and freezes it (SIGSTOP) once it holds the writer lock, so the
/// test does not depend on how long the backup would take. The backup is big anyway (64
/// MiB) so that it is still running when the lock file shows its pid.
fn frozen_writer(repo: &Path, img: &Path) -> Child {
    for attempt in 0..5 {
        let mut child = tessera_cmd(backup_args(repo, "big", &[("d", img)]))
            .spawn()
            .unwrap();
        let pid = child.id();
        let held = wait_until(Duration::from_secs(30), || {
            lock_says(repo, pid) || child.try_wait().unwrap().is_some()
        });
        assert!(held, "the backup never wrote its pid into REPO/lock");
        signal(pid, "STOP");
        if child.try_wait().unwrap().is_none() && lock_says(repo, pid) {
            return child;
        }
        // It finished between our look at the lock and the STOP: try again.
        eprintln!("attempt {attempt}: the writer finished before it could be frozen");
        signal(pid, "CONT");
        let _ = child.wait();
    }
    panic!("could not catch a backup holding the lock");
}

#[test]
fn second_writer_is_refused_readers_work_and_stale_lock_is_recovered() {
    let mut gen = DataGen::new(seed("lock"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let small = t.path().join("small");
    make_image(&small, ImageSpec::mixed(500_000), &mut gen);
    let small_sha = sha256_file(&small);
    let first = snapshot_id(&backup_json(&repo, "small", &[("d", &small)]));
    let big = t.path().join("big");
    make_image(
        &big,
        ImageSpec {
            weights: (0, 1, 3),
            ..ImageSpec::mixed(64 << 20)
        },
        &mut gen,
    );

    let mut holder = KillOnDrop(Some(frozen_writer(&repo, &big)));
    let pid = holder.0.as_ref().unwrap().id();

    // A second writer: exit 3, naming the holder.
    let small_arg = format!("d={}", small.display());
    let r = repo.display().to_string();
    let second = tessera(["backup", &r, "--series", "small", &small_arg]);
    second
        .expect_code(3)
        .stderr_has("locked by PID")
        .stderr_has(&format!("PID {pid} "));
    // With --json too.
    let second = tessera(["--json", "backup", &r, "--series", "small", &small_arg]);
    second.expect_code(3);
    let v = second.json();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {pid} ")),
        "{v}"
    );
    // Repair is a writer too.
    tessera(["repair", &r, "--rebuild-index"])
        .expect_code(3)
        .stderr_has("locked by PID");

    // Readers work meanwhile.
    assert_eq!(list_ids(&repo), vec![first.clone()]);
    tessera(["show", &r, &first]).ok();
    tessera(["stats", &r]).ok();
    assert_eq!(restored_sha(&repo, &first, t.path()), small_sha);
    verify(&repo).ok();

    // Kill the holder (SIGKILL works on a stopped process): its lock is stale.
    let mut child = holder.0.take().unwrap();
    child.kill().unwrap();
    let out = finish_child(child, &[]);
    assert_eq!(out.code, 128 + 9, "{out}");
    assert!(
        lock_says(&repo, pid),
        "the killed holder's record should still be in the lock file"
    );

    // The next writer takes over.
    let next = backup_json(&repo, "small", &[("d", &small)]);
    let ids = list_ids(&repo);
    assert_eq!(ids, vec![first.clone(), snapshot_id(&next)]);
    assert!(
        fs::read_to_string(repo.join("lock"))
            .unwrap()
            .trim()
            .is_empty(),
        "a writer that finished left its record in the lock file"
    );
    verify(&repo).ok();
    for id in ids {
        assert_eq!(restored_sha(&repo, &id, t.path()), small_sha);
    }
    // And the killed backup can be rerun.
    let b = backup_json(&repo, "big", &[("d", &big)]);
    let out = t.path().join("big.out");
    tessera_tests::restore(&repo, &snapshot_id(&b), &out, false).ok();
    tessera_tests::assert_same_file(&big, &out);
}

#[test]
fn writers_run_one_after_another() {
    // Two writers started together: each either succeeds or is refused with exit 3; at
    // least one succeeds, and every success is published.
    let mut gen = DataGen::new(seed("lock_race"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(8 << 20), &mut gen);
    let mut published = Vec::new();
    for round in 0..4 {
        let args = backup_args(&repo, "race", &[("d", &img)]);
        let a = tessera_cmd(&args).spawn().unwrap();
        let b = tessera_cmd(&args).spawn().unwrap();
        let outs = [finish_child(a, &[]), finish_child(b, &[])];
        let mut ok = 0;
        for o in &outs {
            match o.code {
                0 => {
                    ok += 1;
                    published.push(snapshot_id(&o.json()));
                }
                3 => {
                    o.stderr_has("locked by PID");
                }
                _ => panic!("round {round}: unexpected result {o}"),
            }
        }
        assert!(ok >= 1, "round {round}: both writers were refused");
    }
    let mut listed = list_ids(&repo);
    listed.sort();
    published.sort();
    assert_eq!(listed, published);
    verify(&repo).ok();
}

#[test]
fn readers_work_while_a_writer_commits() {
    // The engine promises that readers (list/show/restore/verify) run next to the writer
    // and see the snapshots published before they opened. Here a writer publishes small
    // backups back to back while a reader lists continuously: every list must succeed and
    // show a prefix of the final catalog that never shrinks.
    let backups = tessera_tests::env_usize("TESSERA_CONCURRENT_BACKUPS", 40);
    let mut gen = DataGen::new(seed("readers_next_to_writer"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(300_000), &mut gen);
    backup_json(&repo, "s", &[("d", &img)]);

    let done = std::sync::atomic::AtomicBool::new(false);
    let (failures, listings) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut wgen = DataGen::new(gen.rng.next_u64());
            for _ in 0..backups {
                tessera_tests::mutate(&img, &mut wgen, 1, 4096, (0, 0, 1));
                backup_json(&repo, "s", &[("d", &img)]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut failures: Vec<String> = Vec::new();
        let mut listings: Vec<Vec<String>> = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let out = tessera(["--json".as_ref(), "list".as_ref(), repo.as_os_str()]);
            if out.code == 0 {
                listings.push(
                    out.json()["snapshots"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["id"].as_str().unwrap().to_string())
                        .collect(),
                );
            } else {
                failures.push(out.stderr.lines().next().unwrap_or_default().to_string());
            }
        }
        writer.join().unwrap();
        (failures, listings)
    });
    let last = list_ids(&repo);
    assert_eq!(last.len(), backups + 1);
    let mut problems: Vec<String> = Vec::new();
    let mut prev = 0;
    for (n, l) in listings.iter().enumerate() {
        if l[..] != last[..l.len().min(last.len())] {
            let unknown = l.iter().filter(|id| !last.contains(id)).count();
            let newest = l
                .iter()
                .filter_map(|id| last.iter().position(|x| x == id))
                .max();
            let gaps = newest.map_or(0, |m| (0..=m).filter(|&i| !l.contains(&last[i])).count());
            problems.push(format!(
                "listing {n} is not a prefix of the final catalog: {} ids, {unknown} unknown, \
                 {gaps} published snapshots older than its newest are missing",
                l.len()
            ));
        }
        if l.len() < prev {
            problems.push(format!(
                "listing {n}: the catalog shrank from {prev} to {} snapshots (a published snapshot vanished)",
                l.len()
            ));
        }
        prev = prev.max(l.len());
    }
    if !failures.is_empty() {
        let mut kinds: Vec<String> = failures
            .iter()
            .map(|f| f.chars().take(90).collect())
            .collect();
        kinds.sort();
        kinds.dedup();
        problems.push(format!(
            "{} of {} `list` runs failed; distinct errors (truncated):\n  {}",
            failures.len(),
            failures.len() + listings.len(),
            kinds
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    assert!(
        problems.is_empty(),
        "readers next to a writer went wrong ({} listings):\n{}",
        listings.len(),
        problems.join("\n")
    );
    verify(&repo).ok();
}
