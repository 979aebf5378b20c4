//! Backup → restore gives back the very same bytes: odd sizes, empty and sparse images,
//! several disks per snapshot, through the CLI and through the engine API; and restore
//! never silently overwrites an existing file.

use std::fs;
use std::path::Path;

use tempfile::TempDir;
use tessera_engine::ops::backup::{backup, BackupRequest, DeltaOptions, DiskSpec};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::{InitOptions, NoProgress, Repository};
use tessera_tests::{
    allocated_bytes, assert_same_file, backup_json, disk_sum, init_repo, list_json, make_image,
    restore, seed, sha256_file, snapshot_id, tessera, DataGen, ImageSpec,
};

const BS: u64 = 64 * 1024;

#[test]
fn odd_size_image_roundtrips_through_every_snapshot_reference() {
    let mut gen = DataGen::new(seed("odd_size"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &["--block-size", "64K"]);
    let img = t.path().join("img");
    let size = (1 << 20) + 12345;
    assert_ne!(size % BS, 0);
    make_image(&img, ImageSpec::mixed(size), &mut gen);

    let b = backup_json(&repo, "vm", &[("d0", &img)]);
    let id = snapshot_id(&b);
    assert_eq!(b["disks"][0]["size"], size);
    assert_eq!(b["disks"][0]["block_size"], BS);

    for spec in [
        id.clone(),
        id[..8].to_string(),
        "latest".to_string(),
        "latest@vm".to_string(),
        format!("{}:d0", &id[..12]),
        "latest@vm:d0".to_string(),
    ] {
        let out = t.path().join("out");
        let _ = fs::remove_file(&out);
        restore(&repo, &spec, &out, false).ok();
        assert_same_file(&img, &out);
    }
}

#[test]
fn other_block_sizes_roundtrip() {
    let mut gen = DataGen::new(seed("block_sizes"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &["--block-size", "128K"]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(3 * (1 << 20) + 1), &mut gen);
    let a = backup_json(&repo, "default", &[("d", &img)]);
    assert_eq!(a["disks"][0]["block_size"], 128 * 1024);
    let out = tessera([
        "--json".as_ref(),
        "backup".as_ref(),
        repo.as_os_str(),
        "--series".as_ref(),
        "big".as_ref(),
        "--block-size".as_ref(),
        "1M".as_ref(),
        format!("d={}", img.display()).as_ref(),
    ]);
    out.ok();
    let b = out.json();
    assert_eq!(b["disks"][0]["block_size"], 1 << 20);
    for v in [&a, &b] {
        let dst = t.path().join(format!("out-{}", snapshot_id(v)));
        restore(&repo, &snapshot_id(v), &dst, false).ok();
        assert_same_file(&img, &dst);
    }
}

#[test]
fn empty_image_roundtrips() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("empty");
    fs::write(&img, b"").unwrap();
    let b = backup_json(&repo, "e", &[("d", &img)]);
    assert_eq!(b["disks"][0]["size"], 0);
    assert_eq!(disk_sum(&b, "new_chunks"), 0);
    let out = t.path().join("out");
    restore(&repo, "latest", &out, false).ok();
    assert_same_file(&img, &out);
    assert_eq!(fs::metadata(&out).unwrap().len(), 0);
}

#[test]
fn sparse_image_roundtrips_and_stays_sparse() {
    let mut gen = DataGen::new(seed("sparse"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("sparse");
    let size: u64 = 32 * (1 << 20) + 4097;
    // A few data islands in a sea of holes, one of them at the very end.
    let f = fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    let mut islands = Vec::new();
    for i in 0..6 {
        let len = 1 + rand::Rng::gen_range(&mut gen.rng, 0..100_000u64);
        let off = if i == 0 {
            size - len
        } else {
            rand::Rng::gen_range(&mut gen.rng, 0..size - len)
        };
        let kind = if i % 2 == 0 {
            tessera_tests::Fill::Random
        } else {
            tessera_tests::Fill::Text
        };
        std::os::unix::fs::FileExt::write_all_at(&f, &gen.bytes(kind, len as usize), off).unwrap();
        islands.push((off, len));
    }
    f.sync_all().unwrap();
    drop(f);
    let source_alloc = allocated_bytes(&img);
    eprintln!("source: size {size}, allocated {source_alloc}, islands {islands:?}");
    assert!(
        source_alloc < size / 8,
        "the filesystem of the temp dir ({}) does not keep holes ({source_alloc} of {size} bytes \
         allocated): point TMPDIR at one that does (ext4, xfs, tmpfs, btrfs)",
        t.path().display()
    );

    let b = backup_json(&repo, "sp", &[("d", &img)]);
    // Holes are never read, so far less than the disk size was read.
    assert!(
        disk_sum(&b, "bytes_read") < size / 8,
        "backup read the holes of a sparse source: {b}"
    );
    let out = t.path().join("out");
    restore(&repo, "latest", &out, false).ok();
    assert_same_file(&img, &out);
    let restored_alloc = allocated_bytes(&out);
    eprintln!("restored: allocated {restored_alloc}");
    assert!(
        restored_alloc < size / 8,
        "restored file is not sparse: {restored_alloc} bytes allocated of {size}"
    );
}

#[test]
fn several_disks_in_one_snapshot() {
    let mut gen = DataGen::new(seed("multi_disk"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let disks: Vec<(&str, u64)> = vec![
        ("sys", (1 << 20) + 12345),
        ("data", 300_001),
        ("empty", 0),
        ("one", 1),
    ];
    let mut paths = Vec::new();
    for (name, size) in &disks {
        let p = t.path().join(format!("{name}.img"));
        make_image(&p, ImageSpec::mixed(*size), &mut gen);
        paths.push(p);
    }
    let specs: Vec<(&str, &Path)> = disks
        .iter()
        .zip(&paths)
        .map(|((n, _), p)| (*n, p.as_path()))
        .collect();
    let b = backup_json(&repo, "vm", &specs);
    let id = snapshot_id(&b);
    let listed = list_json(&repo);
    assert_eq!(listed.len(), 1);
    let names: Vec<&str> = listed[0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, disks.iter().map(|d| d.0).collect::<Vec<_>>());

    // SNAPSHOT:DISK, one file each.
    for ((name, _), src) in disks.iter().zip(&paths) {
        let out = t.path().join(format!("one-{name}"));
        restore(&repo, &format!("{}:{name}", &id[..10]), &out, false).ok();
        assert_same_file(src, &out);
    }
    // SNAPSHOT alone: a directory with NAME.raw per disk.
    let dir = t.path().join("all");
    restore(&repo, &id, &dir, false).ok();
    for ((name, _), src) in disks.iter().zip(&paths) {
        assert_same_file(src, &dir.join(format!("{name}.raw")));
    }
    let mut entries: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let mut want: Vec<String> = disks.iter().map(|(n, _)| format!("{n}.raw")).collect();
    want.sort();
    assert_eq!(
        entries, want,
        "directory restore left extra or missing files"
    );

    // A disk the snapshot does not have.
    let out = restore(&repo, &format!("{id}:nope"), &t.path().join("x"), false);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has("has no disk");
    assert!(!t.path().join("x").exists());
}

#[test]
fn restore_does_not_overwrite_without_force() {
    let mut gen = DataGen::new(seed("no_clobber"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(700_001), &mut gen);
    backup_json(&repo, "s", &[("d", &img)]);

    let out = t.path().join("existing");
    fs::write(&out, b"precious data that must survive").unwrap();
    let before = sha256_file(&out);
    let r = restore(&repo, "latest", &out, false);
    r.expect_code(2).stderr_has("already exists");
    assert_eq!(sha256_file(&out), before, "the existing file was modified");
    assert!(
        !t.path().join(".existing.tessera-partial").exists(),
        "a failed restore left its partial file"
    );

    restore(&repo, "latest", &out, true).ok();
    assert_same_file(&img, &out);

    // Overwriting a larger file with --force must truncate it, not leave a tail.
    fs::write(&out, vec![0xAB; 2_000_000]).unwrap();
    restore(&repo, "latest", &out, true).ok();
    assert_same_file(&img, &out);
}

#[test]
fn engine_api_roundtrip() {
    let mut gen = DataGen::new(seed("engine_api"));
    let t = TempDir::new().unwrap();
    let root = t.path().join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_image(&a, ImageSpec::mixed((2 << 20) + 777), &mut gen);
    make_image(
        &b,
        ImageSpec {
            sparse: true,
            ..ImageSpec::mixed(1_000_003)
        },
        &mut gen,
    );

    let outcome = {
        let repo = Repository::open_writer(&root).unwrap();
        let req = BackupRequest {
            series: "api".into(),
            disks: vec![DiskSpec::new("a", &a), DiskSpec::new("b", &b)],
            tags: vec![("k".into(), "v".into())],
            block_size: Some(128 * 1024),
            delta: DeltaOptions::default(),
        };
        backup(&repo, &req, &NoProgress).unwrap()
    }; // writer (and lock) dropped here
    assert_eq!(outcome.header.disks.len(), 2);
    assert_eq!(
        outcome.header.disks[0].size,
        fs::metadata(&a).unwrap().len()
    );

    let repo = Repository::open(&root).unwrap();
    let (id, header) = repo.resolve_snapshot("latest@api").unwrap();
    assert_eq!(id, outcome.id);
    assert_eq!(header, outcome.header);
    let snapshot = repo.load_snapshot(id).unwrap();
    for (disk, src) in [("a", &a), ("b", &b)] {
        let out = t.path().join(format!("api-{disk}"));
        let r = restore_disk(&repo, id, &snapshot, disk, &out, false, &NoProgress).unwrap();
        assert_eq!(r.size, fs::metadata(src).unwrap().len());
        assert_same_file(src, &out);
        // An API restore refuses to overwrite too.
        assert!(restore_disk(&repo, id, &snapshot, disk, &out, false, &NoProgress).is_err());
    }
    drop(repo);

    // The CLI reads what the API wrote.
    let out = t.path().join("cli-a");
    restore(&root, &format!("{}:a", outcome.id.to_hex()), &out, false).ok();
    assert_same_file(&a, &out);
}
