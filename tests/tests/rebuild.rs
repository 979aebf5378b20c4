//! The index is derived data: after it is deleted or garbled, `repair --rebuild-index`
//! brings back the same catalog (ids, series, times, tags, disks), every snapshot restores
//! byte-identical, and verify (which also checks reference counts) is clean. A rebuild
//! killed while it holds the writer lock leaves either the complete old or new index, or
//! one that readers refuse with advice to rebuild, and the next rebuild completes.

use std::fs;
use std::path::{Path, PathBuf};

use rand::RngCore;
use tempfile::TempDir;
use tessera_tests::kill::{kill_trials, KillLoop, Landed};
use tessera_tests::{
    backup_json, init_repo, list_json, make_image, mutate, restored_sha, seed, sha256_file,
    snapshot_id, tessera, verify, DataGen, ImageSpec, Value,
};

/// A repository with several series, multi-disk snapshots and shared data; returns the
/// SHA-256 each `SNAPSHOT:DISK` must restore to.
fn populated(t: &TempDir, gen: &mut DataGen) -> (PathBuf, Vec<(String, String)>) {
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_image(&a, ImageSpec::mixed(3 * (1 << 20) + 11), gen);
    make_image(
        &b,
        ImageSpec {
            sparse: true,
            ..ImageSpec::mixed((1 << 20) + 7)
        },
        gen,
    );
    let mut expect = Vec::new();
    for round in 0..3 {
        let sa = sha256_file(&a);
        let sb = sha256_file(&b);
        let id = snapshot_id(&backup_json(&repo, "vm1", &[("a", &a), ("b", &b)]));
        expect.push((format!("{id}:a"), sa.clone()));
        expect.push((format!("{id}:b"), sb));
        let id = snapshot_id(&backup_json(&repo, "vm2", &[("root", &a)]));
        expect.push((format!("{id}:root"), sa));
        mutate(&a, gen, 5 + round, 200_000, (1, 1, 1));
        mutate(&b, gen, 3, 50_000, (1, 1, 1));
    }
    let r = repo.display().to_string();
    let tagged = tessera([
        "--json",
        "backup",
        &r,
        "--series",
        "tagged",
        "--tag",
        "env=prod",
        "--tag",
        "note=x",
        &format!("d={}", b.display()),
    ]);
    tagged.ok();
    expect.push((
        format!("{}:d", snapshot_id(&tagged.json())),
        sha256_file(&b),
    ));
    (repo, expect)
}

fn catalog(repo: &Path) -> Vec<Value> {
    list_json(repo)
}

fn stats(repo: &Path) -> Value {
    let out = tessera(["--json".as_ref(), "stats".as_ref(), repo.as_os_str()]);
    out.ok();
    out.json()["stats"].clone()
}

fn check_rebuilt(
    t: &TempDir,
    repo: &Path,
    before: &[Value],
    stats_before: &Value,
    expect: &[(String, String)],
) {
    let out = tessera([
        "--json".as_ref(),
        "repair".as_ref(),
        repo.as_os_str(),
        "--rebuild-index".as_ref(),
    ]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    assert_eq!(v["snapshots"], before.len(), "{out}");
    assert_eq!(catalog(repo), before, "the rebuilt catalog differs");
    let s = stats(repo);
    for k in [
        "snapshots",
        "series",
        "logical_bytes",
        "live_chunks",
        "live_raw_bytes",
        "live_stored_bytes",
        "live_pages",
        "packs",
        "pack_bytes",
    ] {
        assert_eq!(s[k], stats_before[k], "stats.{k} changed by the rebuild");
    }
    verify(repo).ok();
    for (spec, sha) in expect {
        assert_eq!(&restored_sha(repo, spec, t.path()), sha, "{spec}");
    }
    assert!(!repo.join("index.rebuild").exists());
    assert!(!repo.join("index.old").exists());
    // A writer works on the rebuilt index.
    let again = t.path().join("again");
    fs::write(&again, b"after the rebuild").unwrap();
    backup_json(repo, "after", &[("d", &again)]);
    verify(repo).ok();
}

#[test]
fn rebuild_after_the_index_is_deleted() {
    let mut gen = DataGen::new(seed("rebuild_rm"));
    let t = TempDir::new().unwrap();
    let (repo, expect) = populated(&t, &mut gen);
    let before = catalog(&repo);
    assert_eq!(before.len(), 7);
    let stats_before = stats(&repo);

    fs::remove_dir_all(repo.join("index")).unwrap();
    for args in [vec!["list"], vec!["stats"], vec!["verify"]] {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.push(repo.as_os_str());
        tessera(&a).expect_code(4).stderr_has("--rebuild-index");
    }
    let img = t.path().join("x");
    fs::write(&img, b"x").unwrap();
    tessera([
        "backup".as_ref(),
        repo.as_os_str(),
        "--series".as_ref(),
        "s".as_ref(),
        format!("d={}", img.display()).as_ref(),
    ])
    .expect_code(4)
    .stderr_has("--rebuild-index");
    assert!(
        !repo.join("index").exists(),
        "a failed command created an index"
    );

    check_rebuilt(&t, &repo, &before, &stats_before, &expect);
}

#[test]
fn rebuild_after_the_index_is_garbled() {
    let mut gen = DataGen::new(seed("rebuild_garbage"));
    let t = TempDir::new().unwrap();
    let (repo, expect) = populated(&t, &mut gen);
    let before = catalog(&repo);
    let stats_before = stats(&repo);

    // Overwrite every file of the RocksDB directory with random bytes of the same length.
    let mut garbled = 0;
    for e in fs::read_dir(repo.join("index")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let len = fs::metadata(&p).unwrap().len().max(64) as usize;
            let mut junk = vec![0u8; len];
            gen.rng.fill_bytes(&mut junk);
            fs::write(&p, junk).unwrap();
            garbled += 1;
        }
    }
    assert!(garbled > 0);
    let out = tessera(["list".as_ref(), repo.as_os_str()]);
    assert_ne!(out.code, 0, "list worked on a garbled index: {out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    out.stderr_has("--rebuild-index");

    check_rebuilt(&t, &repo, &before, &stats_before, &expect);
}

#[test]
fn rebuild_of_a_healthy_index_changes_nothing() {
    let mut gen = DataGen::new(seed("rebuild_healthy"));
    let t = TempDir::new().unwrap();
    let (repo, expect) = populated(&t, &mut gen);
    let before = catalog(&repo);
    let stats_before = stats(&repo);
    check_rebuilt(&t, &repo, &before, &stats_before, &expect);
}

#[test]
fn kill_during_rebuild_then_rebuild_again() {
    // A rebuild of this repository holds the lock for some tens of milliseconds, most of it
    // before the swap: run three times as many trials as the other kill loops.
    let trials = 3 * kill_trials();
    let mut gen = DataGen::new(seed("rebuild_kill"));
    let t = TempDir::new().unwrap();
    let (repo, expect) = populated(&t, &mut gen);
    let before = catalog(&repo);
    let args = [
        "repair".to_string(),
        repo.display().to_string(),
        "--rebuild-index".to_string(),
    ];
    let (mut kills, _) = KillLoop::calibrate("rebuild", &repo, &args);
    for trial in 0..trials {
        let kill = kills.kill(trial, &repo, &args);
        let at = format!("[rebuild trial {trial}, {:?}]", kill.landed);
        let listed = tessera(["--json".as_ref(), "list".as_ref(), repo.as_os_str()]);
        if listed.code == 0 {
            // Whatever index is in place is a complete one.
            assert_eq!(
                listed.json()["snapshots"],
                Value::Array(before.clone()),
                "{at}"
            );
            verify(&repo).ok();
        } else {
            assert_eq!(
                kill.landed,
                Landed::Inside,
                "{at} the index is unreadable after a rebuild that was not interrupted: {listed}"
            );
            listed.stderr_has("--rebuild-index");
        }
        tessera(&args).ok();
        assert_eq!(catalog(&repo), before, "{at}");
        verify(&repo).ok();
    }
    kills.finish();
    for (spec, sha) in &expect {
        assert_eq!(&restored_sha(&repo, spec, t.path()), sha, "{spec}");
    }
}

/// Snapshot files are the source of truth (SPEC §9): a writer that finds an index restored
/// from an older copy catalogues the snapshots it lacks — it used to delete their files.
#[test]
fn a_writer_on_an_older_copy_of_the_index_keeps_every_snapshot() {
    let t = TempDir::new().unwrap();
    let mut gen = DataGen::new(seed("rebuild-older-index"));
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(2 * (1 << 20) + 5), &mut gen);
    let first = snapshot_id(&backup_json(&repo, "vm", &[("d", &img)]));
    let old_index = t.path().join("index.copy");
    copy_tree(&repo.join("index"), &old_index);
    fs::copy(repo.join("index.seq"), t.path().join("index.seq.copy")).unwrap();
    let mut expect = vec![(first.clone(), sha256_file(&img))];
    for _ in 0..2 {
        mutate(&img, &mut gen, 8, 100_000, (1, 1, 1));
        let id = snapshot_id(&backup_json(&repo, "vm", &[("d", &img)]));
        expect.push((id, sha256_file(&img)));
    }
    // Put the older index back (an operator restoring the repository's local state).
    fs::remove_dir_all(repo.join("index")).unwrap();
    copy_tree(&old_index, &repo.join("index"));
    fs::copy(t.path().join("index.seq.copy"), repo.join("index.seq")).unwrap();
    // The next writer catalogues the two newer snapshots instead of deleting them.
    let out = tessera(["protect".as_ref(), repo.as_os_str(), first.as_ref()]);
    out.ok();
    out.stderr_has("2 stored snapshots catalogued");
    let listed: Vec<String> = catalog(&repo)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = expect.iter().map(|(id, _)| id.clone()).collect();
    let mut got = listed.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    for (id, sha) in &expect {
        assert_eq!(&restored_sha(&repo, id, t.path()), sha, "snapshot {id}");
    }
    verify(&repo).ok();
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}
