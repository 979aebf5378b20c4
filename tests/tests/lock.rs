//! The locks of SPEC.md §8: a second backup of a series is refused with exit code 3 naming
//! the holder while backups of other series, writers and readers run beside it; a writer
//! waits for the writer lock a moment before it is refused; locks left by a killed process
//! are recovered.

use std::fs;
use std::time::Duration;

use rand::RngCore;
use tempfile::TempDir;
use tessera_tests::{
    backup_args, backup_json, finish_child, frozen_backup, hold_lock, init_repo, list_ids,
    lock_says, make_image, restored_sha, seed, series_lock_says, sha256_file, snapshot_id, tessera,
    tessera_cmd, verify, DataGen, ImageSpec,
};

#[test]
fn a_series_takes_one_backup_others_run_beside_it_and_a_killed_one_is_recovered() {
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

    let mut holder = frozen_backup(&repo, "big", &big);
    let pid = holder.0.as_ref().unwrap().id();
    assert!(
        series_lock_says(&repo, pid),
        "the frozen backup holds no series lock"
    );

    // A second backup of the series: exit 3, naming the holder.
    let big_arg = format!("d={}", big.display());
    let r = repo.display().to_string();
    let second = tessera(["backup", &r, "--series", "big", &big_arg]);
    second
        .expect_code(3)
        .stderr_has("series \"big\" is being backed up by PID")
        .stderr_has(&format!("PID {pid} "));
    // With --json too.
    let second = tessera(["--json", "backup", &r, "--series", "big", &big_arg]);
    second.expect_code(3);
    let v = second.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["kind"], "locked");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {pid} ")),
        "{v}"
    );

    // Another series backs up meanwhile, and writers run: the frozen backup holds no
    // repository-wide lock.
    let beside = snapshot_id(&backup_json(&repo, "small", &[("d", &small)]));
    tessera(["compact", &r]).ok();
    assert!(!lock_says(&repo, pid), "the backup holds the writer lock");

    // Readers work meanwhile.
    assert_eq!(list_ids(&repo), vec![first.clone(), beside.clone()]);
    tessera(["show", &r, &first]).ok();
    tessera(["stats", &r]).ok();
    assert_eq!(restored_sha(&repo, &beside, t.path()), small_sha);
    verify(&repo).ok();

    // Kill the holder (SIGKILL works on a stopped process): its series lock is stale.
    let mut child = holder.0.take().unwrap();
    child.kill().unwrap();
    let out = finish_child(child, &[]);
    assert_eq!(out.code, 128 + 9, "{out}");
    assert!(
        series_lock_says(&repo, pid),
        "the killed holder's record should still be in its series lock file"
    );

    // The killed backup can be rerun, and everything verifies and restores.
    let b = backup_json(&repo, "big", &[("d", &big)]);
    let out = t.path().join("big.out");
    tessera_tests::restore(&repo, &snapshot_id(&b), &out, false).ok();
    tessera_tests::assert_same_file(&big, &out);
    assert!(
        fs::read_to_string(repo.join("lock"))
            .unwrap()
            .trim()
            .is_empty(),
        "a writer that finished left its record in the lock file"
    );
    verify(&repo).ok();
    for id in [first, beside] {
        assert_eq!(restored_sha(&repo, &id, t.path()), small_sha);
    }
}

#[test]
fn backups_of_one_series_run_one_after_another_and_of_others_side_by_side() {
    // Two backups of one series started together, with one of another series: each of the
    // two either succeeds or is refused with exit 3; at least one succeeds; the other series
    // always succeeds; every success is published.
    let mut gen = DataGen::new(seed("lock_race"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(8 << 20), &mut gen);
    let other = t.path().join("other");
    make_image(&other, ImageSpec::mixed(8 << 20), &mut gen);
    let mut published = Vec::new();
    for round in 0..4 {
        let args = backup_args(&repo, "race", &[("d", &img)]);
        let a = tessera_cmd(&args).spawn().unwrap();
        let b = tessera_cmd(&args).spawn().unwrap();
        let c = tessera_cmd(backup_args(&repo, "other", &[("d", &other)]))
            .spawn()
            .unwrap();
        let outs = [finish_child(a, &[]), finish_child(b, &[])];
        let mut ok = 0;
        for o in &outs {
            match o.code {
                0 => {
                    ok += 1;
                    published.push(snapshot_id(&o.json()));
                }
                3 => {
                    o.stderr_has("series \"race\" is being backed up by PID");
                }
                _ => panic!("round {round}: unexpected result {o}"),
            }
        }
        assert!(ok >= 1, "round {round}: both backups were refused");
        let c = finish_child(c, &[]);
        assert_eq!(c.code, 0, "round {round}: the other series failed: {c}");
        published.push(snapshot_id(&c.json()));
    }
    let mut listed = list_ids(&repo);
    listed.sort();
    published.sort();
    assert_eq!(listed, published);
    verify(&repo).ok();
}

#[test]
fn a_writer_waits_for_a_publish_and_is_refused_by_a_longer_holder() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let r = repo.display().to_string();
    // A holder that lets go after a second: the writer waits for it (default wait 30 s).
    let lock = hold_lock(&repo.join("lock"));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(lock);
    });
    tessera(["compact", &r]).ok();
    release.join().unwrap();
    // One that holds on past TESSERA_LOCK_WAIT: exit 3, naming it.
    let _lock = hold_lock(&repo.join("lock"));
    let out = tessera_cmd(["compact", &r])
        .env("TESSERA_LOCK_WAIT", "1")
        .output()
        .unwrap();
    let out = tessera_tests::Out::of(&["compact", &r], &out);
    out.expect_code(3)
        .stderr_has(&format!("locked by PID {}", std::process::id()));
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
