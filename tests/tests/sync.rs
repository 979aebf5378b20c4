//! `tessera sync SRC DST` between local repositories: only missing objects move, every
//! snapshot restores byte-identical in the destination, a rerun moves nothing, a kill at a
//! random instant while it holds the destination's lock (at least one must land there)
//! leaves a destination that verifies and a rerun completes without storing anything twice, and a block-size mismatch is refused before anything is written.

use std::fs;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use tessera_tests::kill::{kill_trials, KillLoop};
use tessera_tests::{
    assert_no_duplicates, backup_json, disk_sum, init_repo, list_ids, make_image, mutate,
    pack_files, restored_sha, seed, snapshot_id, tessera, verify, DataGen, ImageSpec,
};

const MIB: u64 = 1 << 20;
/// Encoded size of a full manifest page (512 digests).
const PAGE_BYTES: u64 = 12 + 32 * 512;

fn sync_json(src: &Path, dst: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--json".to_string(),
        "sync".into(),
        src.display().to_string(),
        dst.display().to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let out = tessera(&args);
    out.ok();
    out.json()
}

fn assert_same_snapshots(a: &Path, b: &Path, scratch: &Path) {
    let ids = list_ids(a);
    assert_eq!(list_ids(b), ids, "B lists other snapshots than A");
    for id in &ids {
        assert_eq!(
            restored_sha(b, id, scratch),
            restored_sha(a, id, scratch),
            "snapshot {id} restores differently from B"
        );
    }
}

#[test]
fn sync_copies_only_missing_objects_and_is_idempotent() {
    let mut gen = DataGen::new(seed("sync-flow"));
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(40 * MIB), &mut gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    for _ in 0..2 {
        mutate(&disk, &mut gen, 20, 256 * 1024, (1, 2, 2));
        backup_json(&a, "vm", &[("d0", &disk)]);
    }
    let first = sync_json(&a, &b, &[]);
    assert_eq!(
        first["snapshots_copied"].as_array().unwrap().len(),
        3,
        "{first}"
    );
    assert_same_snapshots(&a, &b, work.path());

    // Three more backups: the next sync moves exactly their new data (and pages).
    let mut new_raw = 0;
    for _ in 0..3 {
        mutate(&disk, &mut gen, 10, 128 * 1024, (1, 2, 2));
        let v = backup_json(&a, "vm", &[("d0", &disk)]);
        new_raw += disk_sum(&v, "new_raw_bytes");
    }
    let second = sync_json(&a, &b, &[]);
    assert_eq!(
        second["snapshots_copied"].as_array().unwrap().len(),
        3,
        "{second}"
    );
    assert_eq!(
        second["snapshots_skipped"].as_array().unwrap().len(),
        3,
        "{second}"
    );
    let pages = second["pages_transferred"].as_u64().unwrap();
    assert!(
        pages <= 3 * 2,
        "{pages} pages for 3 snapshots of 2 pages: {second}"
    );
    let raw = second["raw_bytes_transferred"].as_u64().unwrap();
    let bound = (new_raw + pages * PAGE_BYTES) as f64 * 1.05;
    assert!(
        raw as f64 <= bound && raw >= new_raw,
        "moved {raw} raw bytes for {new_raw} new unique bytes + {pages} pages: {second}"
    );
    assert_same_snapshots(&a, &b, work.path());
    verify(&b).ok();
    assert_no_duplicates(&b, "B");

    let again = sync_json(&a, &b, &[]);
    assert_eq!(again["bytes_received"], 0, "{again}");
    assert_eq!(
        again["snapshots_copied"].as_array().unwrap().len(),
        0,
        "{again}"
    );

    // Selection: a dry run of one snapshot into an empty repository writes nothing.
    let c = work.path().join("c");
    init_repo(&c, &[]);
    let latest = list_ids(&a).last().unwrap().clone();
    let dry = sync_json(&a, &c, &["--dry-run", "--snapshot", &latest[..12]]);
    assert_eq!(
        dry["snapshots_copied"],
        serde_json::json!([latest]),
        "{dry}"
    );
    assert!(dry["chunks_transferred"].as_u64().unwrap() > 0, "{dry}");
    assert!(list_ids(&c).is_empty());
    assert!(pack_files(&c).is_empty(), "a dry run wrote packs");
    // --bwlimit: the token bucket holds one second of burst, the rest waits.
    let limit = 8 * MIB;
    let started = Instant::now();
    let one = sync_json(&a, &c, &["--latest", "1", "--jobs", "1", "--bwlimit", "8M"]);
    let received = one["bytes_received"].as_u64().unwrap();
    let least = received.saturating_sub(limit) as f64 / limit as f64;
    assert!(
        least > 1.0,
        "too little data ({received} bytes) to see the limit"
    );
    assert!(
        started.elapsed().as_secs_f64() >= 0.95 * least,
        "{received} bytes at 8 MiB/s in {:?}",
        started.elapsed()
    );
    assert_eq!(
        one["snapshots_copied"],
        serde_json::json!([latest]),
        "{one}"
    );
    assert_eq!(list_ids(&c), vec![latest.clone()]);
    assert_eq!(
        restored_sha(&c, &latest, work.path()),
        restored_sha(&a, &latest, work.path())
    );
}

#[test]
fn block_size_mismatch_is_refused_before_anything_is_written() {
    let mut gen = DataGen::new(seed("sync-bs"));
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    init_repo(&a, &["--block-size", "128K"]);
    init_repo(&b, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(4 * MIB), &mut gen);
    let in_b = backup_json(&b, "vm", &[("d0", &disk)]);
    backup_json(&a, "vm", &[("d0", &disk)]);
    let before = fs::read_dir(b.join("packs")).unwrap().count();
    let out = tessera(["sync".as_ref(), a.as_os_str(), b.as_os_str()]);
    out.expect_code(5).stderr_has("block size");
    assert_eq!(list_ids(&b), vec![snapshot_id(&in_b)]);
    assert_eq!(fs::read_dir(b.join("packs")).unwrap().count(), before);
    verify(&b).ok();
    // Another series is fine.
    backup_json(&a, "other", &[("d0", &disk)]);
    let v = sync_json(&a, &b, &["--series", "other"]);
    assert_eq!(v["snapshots_copied"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn killed_sync_resumes_without_duplicates() {
    let mut gen = DataGen::new(seed("sync-kill"));
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    init_repo(&a, &[]);
    let disk = work.path().join("disk.img");
    make_image(
        &disk,
        ImageSpec {
            weights: (1, 2, 6),
            ..ImageSpec::mixed(48 * MIB)
        },
        &mut gen,
    );
    backup_json(&a, "vm", &[("d0", &disk)]);
    for _ in 0..3 {
        mutate(&disk, &mut gen, 12, 2 * MIB, (1, 1, 3));
        backup_json(&a, "vm", &[("d0", &disk)]);
    }
    // How long an uninterrupted sync holds the destination's lock, to spread the kills over it.
    let args = |dst: &Path| {
        vec![
            "sync".to_string(),
            a.display().to_string(),
            dst.display().to_string(),
        ]
    };
    let probe = work.path().join("probe");
    init_repo(&probe, &[]);
    let (mut kills, _) = KillLoop::calibrate("sync", &probe, &args(&probe));
    let ids = list_ids(&a);
    for trial in 0..kill_trials() {
        let b = work.path().join(format!("b{trial}"));
        init_repo(&b, &[]);
        let kill = kills.kill(trial, &b, &args(&b));
        let at = format!("[sync trial {trial}, {:?}]", kill.landed);
        // Only complete snapshots are visible, as a prefix of A's.
        let listed = list_ids(&b);
        eprintln!(
            "{at} {} of {} snapshots published, {} packs",
            listed.len(),
            ids.len(),
            pack_files(&b).len()
        );
        assert_eq!(listed[..], ids[..listed.len()], "{at}");
        verify(&b).ok();
        let rest = sync_json(&a, &b, &[]);
        // A kill after a snapshot file was renamed into place but before it was
        // catalogued leaves it uncatalogued: `list` does not show it, the next
        // writer's recovery catalogues it, and the resumed sync skips it. So every
        // snapshot is either copied now or skipped, and everything listed was skipped.
        let names = |key: &str| -> Vec<String> {
            rest[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let (copied, skipped) = (names("snapshots_copied"), names("snapshots_skipped"));
        assert_eq!(copied.len() + skipped.len(), ids.len(), "{at} {rest}");
        assert!(listed.iter().all(|id| skipped.contains(id)), "{at} {rest}");
        assert_eq!(list_ids(&b), ids, "{at}");
        verify(&b).ok();
        assert_no_duplicates(&b, &at);
        let last = ids.last().unwrap();
        assert_eq!(
            restored_sha(&b, last, work.path()),
            restored_sha(&a, last, work.path()),
            "{at}"
        );
        fs::remove_dir_all(&b).unwrap();
    }
    kills.finish();
}

/// `sync` and `seed import` open the destination as the writer inside the engine; what that writer's
/// recovery finished or undid is told on stderr as every other writing command tells it,
/// with and without `--json` (whose stdout stays one JSON document).
#[test]
fn sync_and_seed_import_tell_what_recovery_of_the_destination_did() {
    let mut gen = DataGen::new(seed("sync-recovery-note"));
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(2 * MIB), &mut gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    // What a writer killed while staging a pack leaves behind.
    let leftover = |name: &str| {
        fs::create_dir_all(b.join("tmp")).unwrap();
        fs::write(b.join("tmp").join(name), b"half a pack").unwrap();
    };
    leftover("staged-1");
    let out = tessera(["sync", a.to_str().unwrap(), b.to_str().unwrap()]);
    out.ok()
        .stderr_has("note: recovered from an interrupted run: 1 staged files removed");
    leftover("staged-2");
    mutate(&disk, &mut gen, 4, 64 * 1024, (1, 2, 2));
    backup_json(&a, "vm", &[("d0", &disk)]);
    let out = tessera(["--json", "sync", a.to_str().unwrap(), b.to_str().unwrap()]);
    out.ok()
        .stderr_has("note: recovered from an interrupted run: 1 staged files removed");
    assert_eq!(out.json()["snapshots_copied"].as_array().unwrap().len(), 1);
    assert_eq!(list_ids(&b), list_ids(&a));

    // `seed import` writes through the same path and tells the same note.
    let c = work.path().join("c");
    init_repo(&c, &[]);
    let bundle = work.path().join("seed.tsb");
    tessera([
        "seed",
        "export",
        a.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
    .ok();
    fs::create_dir_all(c.join("tmp")).unwrap();
    fs::write(c.join("tmp").join("staged-3"), b"half a pack").unwrap();
    let out = tessera([
        "--json",
        "seed",
        "import",
        bundle.to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    out.ok()
        .stderr_has("note: recovered from an interrupted run: 1 staged files removed");
    assert_eq!(out.json()["snapshots_copied"].as_array().unwrap().len(), 2);
    assert_eq!(list_ids(&c), list_ids(&a));
}
