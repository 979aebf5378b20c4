//! `tessera files` on FAT12, FAT16 and FAT32 (SPEC.md §24.2): volumes made by the real tools
//! (`mkfs.vfat -F 12|16|32`, filled with mtools' `mcopy -s -m`, changed with `mdel` and
//! `mattrib`), partitioned with `sfdisk`/`sgdisk`, backed up with the CLI and read back
//! through it. The oracle is always the source directory (or the bytes and times the test
//! gave mtools), compared byte for byte:
//!
//! - long names (unicode, 255 characters, mixed case, characters 8.3 names cannot hold),
//!   lower-case 8.3 names, nested directories, a directory spanning several clusters, an
//!   empty file and directory, a file of exactly one cluster, a multi-MiB file, a
//!   fragmented file and a read-only one: `ls`, `cat`, `get` and `get --tar -` agree with
//!   the source on every width;
//! - FAT16 and FAT12 in MBR partitions and FAT32 in a GPT partition, by number and name;
//! - times: FAT's local time with 2-second steps, shown as if it were UTC;
//! - layouts other than mkfs.vfat's defaults (4096-byte sectors, one FAT, a small root);
//! - long names whose checksum does not match their short entry give way to the 8.3 name;
//! - damaged FATs (loops, out-of-range, free and bad clusters in a chain, a chain shorter
//!   than its file, a directory chain that loops, a truncated volume) fail with exit 1 and a
//!   message, never a panic or a hang; zeros and a wiped boot sector are refused (exit 5).

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: build the images, back up, check everything"
)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;
use tessera_tests::fs_images::{
    assert_trees_equal, entry_names, fat_chain, fat_geometry, files, files_cat_ok, files_json,
    files_raw, mcopy_tree, mkfs_fat, mtools, peek, poke, run_tool, scan_tree, set_fat_entry,
    set_mtime, source_names, tar_through, FatGeometry, RawOut, TreeCompare,
};
use tessera_tests::{backup_json, init_repo, seed, DataGen, Fill, Value};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A fresh plain repository at `DIR/repo`.
fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    repo
}

/// Asserts that a finished command failed with `code` and a message holding one of
/// `words` (case-insensitive), never a panic.
#[track_caller]
fn assert_fails(out: &RawOut, code: i32, words: &[&str]) {
    out.expect_code(code);
    let lower = out.stderr.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "`tessera {}` exit {code} but its message names none of {words:?}:\n{}",
        out.args.join(" "),
        out.stderr
    );
}

/// Files 0644, directories 0755 (what tessera shows for FAT), and the tree's times set to
/// distinct even seconds (FAT keeps 2-second steps), children before their directory.
fn normalise_tree(root: &Path) {
    let tree = scan_tree(root);
    for (i, node) in tree.values().rev().enumerate() {
        let mode = if node.meta.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&node.path, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(
            &node.path,
            1_000_000_000 + 2 * 7919 * i64::try_from(i).unwrap(),
        );
    }
}

/// `sfdisk DISK` with `table` on its stdin.
fn sfdisk(disk: &Path, table: &str) {
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (install it with scripts/ensure-deps.sh)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), table.as_bytes()).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "sfdisk {} failed",
        disk.display()
    );
}

/// Makes FAT32's allocator start from the first free cluster again: mtools allocates after
/// the FSInfo sector's "next free" hint, so a freed gap would never be reused.
fn forget_next_free_hint(image: &Path, geom: &FatGeometry) {
    if geom.bits == 32 {
        let b = peek(image, 48, 2);
        let fsinfo = u64::from(u16::from_le_bytes([b[0], b[1]])) * geom.sector_bytes;
        assert_eq!(
            peek(image, fsinfo, 4),
            b"RRaA",
            "no FSInfo sector at {fsinfo}"
        );
        poke(image, fsinfo + 492, &u32::MAX.to_le_bytes());
    }
}

/// The runs of consecutive clusters in a chain.
fn runs(chain: &[u32]) -> usize {
    1 + chain.windows(2).filter(|w| w[1] != w[0] + 1).count()
}

/// Every directory of the source (relative paths, "" for the root).
fn source_dirs(src: &Path) -> Vec<String> {
    let mut dirs = vec![String::new()];
    for (rel, node) in scan_tree(src) {
        if node.meta.is_dir() {
            dirs.push(String::from_utf8(rel).unwrap());
        }
    }
    dirs
}

/// Asserts that one `files ls`/`stat` JSON entry describes the source file at `src`: kind,
/// size, permission bits, owner 0 (FAT has none), mtime seconds.
#[track_caller]
fn assert_entry_matches(entry: &Value, src: &Path) {
    let meta = fs::symlink_metadata(src).unwrap();
    let what = format!("{entry} vs {}", src.display());
    assert_eq!(
        entry["kind"],
        if meta.is_dir() { "dir" } else { "file" },
        "kind: {what}"
    );
    assert_eq!(
        entry["mode"],
        u64::from(meta.mode() & 0o7777),
        "mode: {what}"
    );
    assert_eq!(
        (entry["uid"].as_u64(), entry["gid"].as_u64()),
        (Some(0), Some(0)),
        "owner: {what}"
    );
    assert_eq!(entry["mtime"]["secs"], meta.mtime(), "mtime: {what}");
    if !meta.is_dir() {
        assert_eq!(entry["size"], meta.len(), "size: {what}");
    }
}

/// `files ls --json` of every source directory lists exactly its names, each described as
/// the source has it; `files cat` of every file gives its bytes (in `many/`, three of them).
fn assert_listings_and_contents(repo: &Path, at: &str, src: &Path, filesystem: &str) {
    let r = s(repo);
    for dir in source_dirs(src) {
        let listing = files_json(&["ls", &r, &format!("{at}/{dir}")]);
        assert_eq!(listing["filesystem"], filesystem, "{listing}");
        let names = entry_names(&listing);
        assert_eq!(names, source_names(&src.join(&dir)), "the names in /{dir}");
        for (name, entry) in names.iter().zip(listing["entries"].as_array().unwrap()) {
            assert_entry_matches(entry, &src.join(&dir).join(name));
        }
    }
    for (rel, node) in scan_tree(src) {
        let rel = String::from_utf8(rel).unwrap();
        let sampled = !rel.starts_with("many/")
            || rel.contains(" 000 ")
            || rel.contains(" 077 ")
            || rel.contains(" 149 ");
        if node.meta.is_file() && sampled {
            let got = files_cat_ok(repo, &format!("{at}/{rel}"));
            assert!(
                got == fs::read(&node.path).unwrap(),
                "`files cat` of /{rel}: {} bytes that differ from the source",
                got.len()
            );
        }
    }
}

/// `files get` of the whole volume, then `files get --tar -` through `tar x`: both equal the
/// source (names, bytes, modes, mtimes); `compare` is checked inside the tar stream too.
fn assert_get_and_tar_equal(repo: &Path, at: &str, src: &Path, scratch: &Path, compare: &str) {
    let r = s(repo);
    let out = scratch.join("get");
    let report = files_json(&["get", &r, &format!("{at}/"), &s(&out)]);
    let how = TreeCompare::default();
    assert_trees_equal(src, &out, &how);
    let tree = scan_tree(src);
    let count = |dir: bool| tree.values().filter(|n| n.meta.is_dir() == dir).count() as u64;
    assert_eq!(report["files"], count(false), "{report}");
    // + the root.
    assert_eq!(report["dirs"], count(true) + 1, "{report}");
    assert_eq!(report["hard_links"], 0, "{report}");
    let logical: u64 = tree
        .values()
        .filter(|n| n.meta.is_file())
        .map(|n| n.meta.len())
        .sum();
    assert_eq!(report["logical_bytes"], logical, "{report}");

    let tar_dir = scratch.join("tar-out");
    fs::create_dir(&tar_dir).unwrap();
    let args: Vec<OsString> = ["files", "get", r.as_str(), &format!("{at}/"), "-", "--tar"]
        .iter()
        .map(OsString::from)
        .collect();
    let (code, stderr, members) =
        tar_through(&args, &tar_dir, &[], Some((compare, &src.join(compare))));
    assert_eq!(code, 0, "files get --tar - failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_trees_equal(src, &tar_dir, &how);
    assert_eq!(
        members.iter().filter(|m| m.kind == b'0').count() as u64,
        count(false),
        "{members:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. A rich tree on FAT12, FAT16 and FAT32
// ---------------------------------------------------------------------------------------

/// A 255-character name, the longest a long name can be.
fn name_255() -> String {
    let n = "n".repeat(251) + ".txt";
    assert_eq!(n.len(), 255);
    n
}

/// The source tree, before its fragmented file is added.
fn build_fat_tree(src: &Path, gen: &mut DataGen, cluster: u64) {
    write(&src.join("Ünïcødé файл.txt"), "Ünïcødé файл\n".as_bytes());
    write(
        &src.join("日本語のファイル名.txt"),
        "こんにちは\n".as_bytes(),
    );
    write(&src.join("MixedCase.Txt"), b"mixed case\n");
    write(&src.join("UPPER.TXT"), b"upper case 8.3\n");
    write(&src.join("lower.txt"), b"lower case 8.3 (NT case flags)\n");
    write(&src.join("noext"), b"no extension\n");
    write(&src.join("a.b.c.d"), b"dots\n");
    write(
        &src.join("commas, semicolons; [brackets] + plus = equals.text"),
        b"not in 8.3\n",
    );
    write(&src.join(name_255()), b"a name of 255 characters\n");
    write(&src.join("empty"), b"");
    write(&src.join("readonly.txt"), b"read-only attribute\n");
    fs::create_dir_all(src.join("empty dir")).unwrap();
    let c = usize::try_from(cluster).unwrap();
    write(
        &src.join("data/multi-cluster.bin"),
        &gen.bytes(Fill::Random, 3 * MIB as usize + 17),
    );
    write(
        &src.join("data/one cluster.bin"),
        &gen.bytes(Fill::Random, c),
    );
    write(
        &src.join("data/one cluster plus one.bin"),
        &gen.bytes(Fill::Random, c + 1),
    );
    write(
        &src.join("data/one cluster less one.bin"),
        &gen.bytes(Fill::Random, c - 1),
    );
    write(&src.join("data/text.log"), &gen.bytes(Fill::Text, 200_000));
    let deep = src.join(
        "Deep/Ébène niveau 1/Level Two/level 3 with a long name/niveau-4/Ünïcødé 5/SIX/seven",
    );
    write(&deep.join("leaf.txt"), b"at the bottom\n");
    write(
        &deep.join("Leaf With A Long Name.bin"),
        &gen.bytes(Fill::Random, 3 * c + 5),
    );
    // A directory of many long names spans several clusters.
    for i in 0..150 {
        write(
            &src.join(format!("many/entry {i:03} with a rather long name.txt")),
            format!("entry {i}\n").as_bytes(),
        );
    }
    // frag/b is deleted in the image (and here) to leave a gap for the fragmented file.
    write(&src.join("frag/a"), &gen.bytes(Fill::Random, 3 * c));
    write(&src.join("frag/b"), &gen.bytes(Fill::Random, 3 * c));
    write(&src.join("frag/c"), &gen.bytes(Fill::Random, c));
    normalise_tree(src);
    fs::set_permissions(src.join("readonly.txt"), fs::Permissions::from_mode(0o444)).unwrap();
}

fn fat_tree_round_trips(bits: u8, image_bytes: u64) {
    let started = Instant::now();
    let mut gen = DataGen::new(seed(&format!("files_fat{bits}_tree")));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let img = dir.join(format!("fat{bits}.img"));
    mkfs_fat(&img, bits, image_bytes, &[]);
    let geom = fat_geometry(&img);
    assert_eq!(geom.bits, bits, "mkfs.vfat -F {bits} made {geom:?}");
    let cluster = geom.cluster_bytes;
    let src = dir.join("src");
    build_fat_tree(&src, &mut gen, cluster);
    mcopy_tree(&img, &src, "::/");
    run_tool(
        mtools("mattrib")
            .arg("-i")
            .arg(&img)
            .args(["+r", "::/readonly.txt"]),
    );
    // A fragmented file: written into the gap frag/b leaves, and on after frag/c.
    let frag_mtime = fs::metadata(src.join("frag")).unwrap().mtime();
    run_tool(mtools("mdel").arg("-i").arg(&img).arg("::/frag/b"));
    fs::remove_file(src.join("frag/b")).unwrap();
    forget_next_free_hint(&img, &geom);
    let fragmented = src.join("frag/fragmented.bin");
    write(
        &fragmented,
        &gen.bytes(Fill::Random, usize::try_from(10 * cluster).unwrap() + 5),
    );
    fs::set_permissions(&fragmented, fs::Permissions::from_mode(0o644)).unwrap();
    set_mtime(&fragmented, 1_300_000_000);
    run_tool(
        mtools("mcopy")
            .args(["-m", "-i"])
            .arg(&img)
            .arg(&fragmented)
            .arg("::/frag/"),
    );
    set_mtime(&src.join("frag"), frag_mtime);
    let chain = fat_chain(&img, "::/frag/fragmented.bin");
    assert_eq!(chain.len() as u64, 11, "{chain:?}");
    assert!(
        runs(&chain) >= 2,
        "frag/fragmented.bin is not fragmented: {chain:?}"
    );
    let many_clusters = fat_chain(&img, "::/many").len();
    assert!(
        many_clusters >= 2,
        "many/ fits in {many_clusters} cluster(s) of {cluster} bytes"
    );
    run_tool(Command::new("fsck.fat").arg("-n").arg(&img));
    eprintln!(
        "[fat{bits}] image made after {:.1}s ({cluster}-byte clusters)",
        started.elapsed().as_secs_f64()
    );

    let repo = new_repo(dir);
    backup_json(&repo, "fat", &[("disk0", &img)]);
    let at = "latest@fat:";
    let filesystem = format!("fat{bits}");
    assert_eq!(
        files_json(&["parts", &s(&repo), "latest@fat"])["volumes"][0]["holds"],
        "fat"
    );
    assert_listings_and_contents(&repo, at, &src, &filesystem);
    // One file at a time: stat, and cat of the ones that matter most.
    for rel in [
        "Ünïcødé файл.txt",
        "data/multi-cluster.bin",
        "frag/fragmented.bin",
        "readonly.txt",
    ] {
        let st = files_json(&["stat", &s(&repo), &format!("{at}/{rel}")]);
        assert_entry_matches(&st, &src.join(rel));
    }
    assert_get_and_tar_equal(&repo, at, &src, dir, "data/multi-cluster.bin");
    eprintln!(
        "[fat{bits}] done after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn fat12_tree_round_trips_through_ls_cat_get_and_tar() {
    fat_tree_round_trips(12, 16 * MIB);
}

#[test]
fn fat16_tree_round_trips_through_ls_cat_get_and_tar() {
    fat_tree_round_trips(16, 32 * MIB);
}

#[test]
fn fat32_tree_round_trips_through_ls_cat_get_and_tar() {
    fat_tree_round_trips(32, 40 * MIB);
}

// ---------------------------------------------------------------------------------------
// 2. FAT inside MBR and GPT partitions
// ---------------------------------------------------------------------------------------

/// A FAT image of exactly `bytes` holding a small tree that names `id`; returns (source,
/// image).
fn partition_fat(
    dir: &Path,
    id: &str,
    bits: u8,
    bytes: u64,
    gen: &mut DataGen,
) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("src-{id}"));
    write(&src.join("id.txt"), format!("{id}\n").as_bytes());
    write(
        &src.join(format!("Only In {id}/Nested Ünïcødé/data.bin")),
        &gen.bytes(Fill::Random, 300_001),
    );
    write(&src.join(format!("Only In {id}/empty")), b"");
    normalise_tree(&src);
    let img = dir.join(format!("{id}.img"));
    mkfs_fat(&img, bits, bytes, &[]);
    assert_eq!(fat_geometry(&img).bits, bits);
    mcopy_tree(&img, &src, "::/");
    (src, img)
}

#[test]
fn fat_in_mbr_and_gpt_partitions() {
    let mut gen = DataGen::new(seed("files_fat_partitions"));
    let t = TempDir::new().unwrap();
    let dir = t.path();

    // MBR: FAT16 (type 0e) in partition 1, FAT12 (type 01) in partition 2.
    let mbr = dir.join("mbr.img");
    fs::File::create(&mbr).unwrap().set_len(48 * MIB).unwrap();
    sfdisk(
        &mbr,
        "label: dos\nstart=2048, size=65536, type=e\nstart=67584, size=16384, type=1\n",
    );
    let (src16, fat16) = partition_fat(dir, "mbr-fat16", 16, 65536 * 512, &mut gen);
    poke(&mbr, 2048 * 512, &fs::read(&fat16).unwrap());
    let (src12, fat12) = partition_fat(dir, "mbr-fat12", 12, 16384 * 512, &mut gen);
    poke(&mbr, 67584 * 512, &fs::read(&fat12).unwrap());

    // GPT: one FAT32 partition (Microsoft basic data) with a name.
    let gpt = dir.join("gpt.img");
    fs::File::create(&gpt).unwrap().set_len(64 * MIB).unwrap();
    let (first, last) = (2048u64, 2048 + 81920 - 1);
    run_tool(
        Command::new("sgdisk")
            .args([
                "-n",
                &format!("1:{first}:{last}"),
                "-t",
                "1:0700",
                "-c",
                "1:Données FAT",
            ])
            .arg(&gpt),
    );
    let (src32, fat32) = partition_fat(dir, "gpt-fat32", 32, (last - first + 1) * 512, &mut gen);
    poke(&gpt, first * 512, &fs::read(&fat32).unwrap());

    let repo = new_repo(dir);
    backup_json(&repo, "parts", &[("mbr", &mbr), ("gpt", &gpt)]);
    let r = s(&repo);

    let p = files_json(&["parts", &r, "latest@parts:mbr"]);
    assert_eq!(p["table"], "mbr", "{p}");
    let vols = p["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{p}");
    for (v, (n, start, sectors, kind)) in vols
        .iter()
        .zip([(1u64, 2048u64, 65536u64, "0e"), (2, 67584, 16384, "01")])
    {
        assert_eq!(v["partition"]["number"], n, "{p}");
        assert_eq!(v["partition"]["start"], start * 512, "{p}");
        assert_eq!(v["partition"]["len"], sectors * 512, "{p}");
        assert_eq!(v["partition"]["type_id"], kind, "{p}");
        assert_eq!(v["holds"], "fat", "{p}");
    }
    let p = files_json(&["parts", &r, "latest@parts:gpt"]);
    assert_eq!(p["table"], "gpt", "{p}");
    assert_eq!(p["volumes"].as_array().unwrap().len(), 1, "{p}");
    let part = &p["volumes"][0]["partition"];
    assert_eq!(part["start"], first * 512, "{p}");
    assert_eq!(part["len"], (last - first + 1) * 512, "{p}");
    assert_eq!(part["name"], "Données FAT", "{p}");
    assert_eq!(
        part["type_id"], "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        "{p}"
    );
    assert_eq!(p["volumes"][0]["holds"], "fat", "{p}");

    for (at, src, filesystem) in [
        ("latest@parts:mbr:1:", &src16, "fat16"),
        ("latest@parts:mbr:2:", &src12, "fat12"),
        ("latest@parts:gpt:1:", &src32, "fat32"),
    ] {
        assert_listings_and_contents(&repo, at, src, filesystem);
        let scratch = dir.join(at.replace([':', '@'], "_"));
        fs::create_dir(&scratch).unwrap();
        let id = fs::read_to_string(src.join("id.txt")).unwrap();
        let compare = format!("Only In {}/Nested Ünïcødé/data.bin", id.trim());
        assert_get_and_tar_equal(&repo, at, src, &scratch, &compare);
    }
    // The GPT partition by name, and with the partition left out (the only one).
    for at in [
        "latest@parts:gpt:Données FAT:/id.txt",
        "latest@parts:gpt:/id.txt",
    ] {
        assert_eq!(
            files_cat_ok(&repo, at),
            fs::read(src32.join("id.txt")).unwrap(),
            "{at}"
        );
    }
    // The MBR has two: the partition must be named.
    assert_fails(&files_raw(&["ls", &r, "latest@parts:mbr:/"]), 2, &["1, 2"]);
    assert_fails(
        &files_raw(&["ls", &r, "latest@parts:mbr:3:/"]),
        2,
        &["1, 2"],
    );
}

// ---------------------------------------------------------------------------------------
// 3. Times
// ---------------------------------------------------------------------------------------

/// 2107-12-31 23:59:58 UTC, the last time a FAT date and time can hold.
const FAT_LAST: i64 = 4_354_819_198;

#[test]
fn fat_times_are_local_time_in_2_second_steps_shown_as_utc() {
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    // (name, source mtime): FAT's epoch, ordinary times, past 2038, its last second, an odd
    // second (stored in 2-second steps: mtools keeps the even second below).
    let times: [(&str, i64); 6] = [
        ("fat-epoch.txt", 315_532_800),
        ("ordinary.txt", 1_234_567_890),
        ("Long Name With Time.txt", 1_700_000_000),
        ("after-2038.txt", 2_200_000_000),
        ("last.txt", FAT_LAST),
        ("odd-second.txt", 1_234_567_891),
    ];
    for (name, secs) in times {
        write(&src.join("times").join(name), name.as_bytes());
        set_mtime(&src.join("times").join(name), secs);
    }
    set_mtime(&src.join("times"), 1_500_000_000);
    let img = dir.join("fat16.img");
    mkfs_fat(&img, 16, 32 * MIB, &[]);
    mcopy_tree(&img, &src, "::/");
    // The same file copied where local time is UTC+3 (a POSIX TZ string: no DST, no
    // tzdata): FAT stores that wall-clock time, and tessera shows it as if it were UTC.
    let east = dir.join("east.txt");
    write(&east, b"three hours east\n");
    set_mtime(&east, 1_600_000_000);
    run_tool(
        mtools("mcopy")
            .env("TZ", "XYZ-3")
            .args(["-m", "-i"])
            .arg(&img)
            .arg(&east)
            .arg("::/times/"),
    );

    let repo = new_repo(dir);
    backup_json(&repo, "times", &[("disk0", &img)]);
    let r = s(&repo);
    let mtime = |path: &str| -> i64 {
        let st = files_json(&["stat", &r, &format!("latest@times:{path}")]);
        st["mtime"]["secs"]
            .as_i64()
            .unwrap_or_else(|| panic!("no mtime in {st}"))
    };
    let mut expected = Vec::new();
    for (name, secs) in times {
        let want = secs - secs.rem_euclid(2);
        assert_eq!(
            mtime(&format!("/times/{name}")),
            want,
            "{name}: source mtime {secs}"
        );
        expected.push((name.to_string(), want));
    }
    assert_eq!(mtime("/times"), 1_500_000_000, "the directory's time");
    assert_eq!(
        mtime("/times/east.txt"),
        1_600_000_000 + 3 * 3600,
        "a UTC+3 local time"
    );
    expected.push(("east.txt".into(), 1_600_000_000 + 3 * 3600));
    // `get` sets those times on what it writes.
    let out = dir.join("out");
    files_json(&["get", &r, "latest@times:/times", &s(&out)]);
    for (name, want) in &expected {
        let meta = fs::metadata(out.join(name)).unwrap();
        assert_eq!(meta.mtime(), *want, "restored mtime of {name}");
        assert_eq!(fs::read(out.join(name)).unwrap().len() as u64, meta.len());
    }
    assert_eq!(
        fs::metadata(&out).unwrap().mtime(),
        1_500_000_000,
        "restored directory time"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Damaged volumes
// ---------------------------------------------------------------------------------------

/// The image size used for `bits` in the damage tests.
fn damage_image_bytes(bits: u8) -> u64 {
    match bits {
        12 => 4 * MIB,
        16 => 16 * MIB,
        _ => 40 * MIB,
    }
}

/// A good FAT volume holding `/victim.bin` (8 clusters of random bytes, less 100),
/// `/ok.txt` and `/dir/inner.txt`.
struct Victim {
    img: PathBuf,
    geom: FatGeometry,
    /// The clusters of `/victim.bin`, from `mshowfat`.
    chain: Vec<u32>,
    /// The clusters of `/dir`.
    dir_chain: Vec<u32>,
    /// The bytes of `/victim.bin`.
    content: Vec<u8>,
}

fn victim_volume(dir: &Path, bits: u8, gen: &mut DataGen) -> Victim {
    let src = dir.join(format!("src{bits}"));
    let img = dir.join(format!("good{bits}.img"));
    mkfs_fat(&img, bits, damage_image_bytes(bits), &[]);
    let geom = fat_geometry(&img);
    assert_eq!(geom.bits, bits);
    let victim = gen.bytes(
        Fill::Random,
        usize::try_from(8 * geom.cluster_bytes).unwrap() - 100,
    );
    write(&src.join("victim.bin"), &victim);
    write(&src.join("ok.txt"), b"fine\n");
    write(&src.join("dir/inner.txt"), b"inner\n");
    mcopy_tree(&img, &src, "::/");
    let chain = fat_chain(&img, "::/victim.bin");
    assert_eq!(chain.len(), 8, "{chain:?}");
    let dir_chain = fat_chain(&img, "::/dir");
    assert_eq!(dir_chain.len(), 1, "{dir_chain:?}");
    Victim {
        img,
        geom,
        chain,
        dir_chain,
        content: victim,
    }
}

/// A copy of the good image named `name` with the FAT entry of `cluster` set to `value`
/// (asserting it held `was` before).
fn damaged_copy(v: &Victim, name: &str, cluster: u32, was: u32, value: u32) -> PathBuf {
    let p = v.img.with_file_name(format!("{name}.img"));
    fs::copy(&v.img, &p).unwrap();
    assert_eq!(
        set_fat_entry(&p, &v.geom, cluster, value),
        was,
        "{name}: the FAT entry of cluster {cluster}"
    );
    p
}

/// The end-of-chain, bad-cluster and first reserved values of a FAT of `bits`.
fn markers(bits: u8) -> (u32, u32, u32) {
    match bits {
        12 => (0xfff, 0xff7, 0xff0),
        16 => (0xffff, 0xfff7, 0xfff0),
        _ => (0x0fff_ffff, 0x0fff_fff7, 0x0fff_fff0),
    }
}

/// Every file of a damaged volume that is not damaged still reads, and `ls` of the root
/// still lists all three names.
fn assert_rest_reads(repo: &Path, at: &str) {
    let listing = files_json(&["ls", &s(repo), &format!("{at}/")]);
    assert_eq!(
        entry_names(&listing),
        ["dir", "ok.txt", "victim.bin"],
        "{listing}"
    );
    assert_eq!(files_cat_ok(repo, &format!("{at}/ok.txt")), b"fine\n");
    assert_eq!(
        files_cat_ok(repo, &format!("{at}/dir/inner.txt")),
        b"inner\n"
    );
}

/// What a `files cat` of a damaged file that succeeded printed, against the source's bytes.
fn describe_success(out: &RawOut, victim: &[u8]) -> String {
    let first_diff = out.stdout.iter().zip(victim).position(|(a, b)| a != b);
    format!(
        "`tessera {}` exit 0: {} bytes ({}, first difference at byte {first_diff:?}) instead of a \
         damaged-filesystem error",
        out.args.join(" "),
        out.stdout.len(),
        if out.stdout == victim {
            "equal to the source"
        } else {
            "not the source's bytes"
        },
    )
}

/// `cat`, `get` and `get --tar` of the damaged `/victim.bin` at `at` fail with exit 1 and a
/// message holding one of `words`, leave nothing behind, and never print its bytes.
fn assert_victim_fails(repo: &Path, at: &str, scratch: &Path, words: &[&str], victim: &[u8]) {
    let r = s(repo);
    let out = files_raw(&["cat", &r, &format!("{at}/victim.bin")]);
    assert!(out.code != 0, "{}", describe_success(&out, victim));
    assert_fails(&out, 1, words);
    let dest = scratch.join(format!("get-{}", at.replace([':', '@', '/'], "_")));
    fs::create_dir(&dest).unwrap();
    assert_fails(
        &files_raw(&["get", &r, &format!("{at}/victim.bin"), &s(&dest)]),
        1,
        words,
    );
    assert!(
        tessera_tests::dir_entries(&dest).is_empty(),
        "left behind: {:?}",
        tessera_tests::dir_entries(&dest)
    );
    let tar = scratch.join(format!("{}.tar", at.replace([':', '@', '/'], "_")));
    assert_fails(
        &files_raw(&["get", &r, &format!("{at}/"), &s(&tar), "--tar"]),
        1,
        words,
    );
    assert!(!tar.exists(), "a failed tar was left behind");
}

/// Out-of-range, free, bad and reserved clusters in a file's chain, a chain shorter than
/// its file, and a directory chain that loops: exit 1 with a message, the rest readable.
#[expect(
    clippy::many_single_char_names,
    reason = "t, v, c, r: the temp dir, volume, chain and repo of one scenario"
)]
fn broken_chains_fail(bits: u8) {
    let mut gen = DataGen::new(seed(&format!("files_fat{bits}_broken")));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let v = victim_volume(dir, bits, &mut gen);
    let (eoc, bad, reserved) = markers(bits);
    let c = &v.chain;
    let past_end = u32::try_from(v.geom.clusters() + 2).unwrap();
    assert!(past_end < reserved, "{:?}: {past_end} clusters", v.geom);
    let out_of_range: &[&str] = &["outside", "out of range"];
    let mut disks: Vec<(&str, PathBuf, &[&str])> = vec![
        ("good", v.img.clone(), &[]),
        // The first cluster past the last one.
        (
            "past-end",
            damaged_copy(&v, "past-end", c[3], c[4], past_end),
            out_of_range,
        ),
        (
            "reserved",
            damaged_copy(&v, "reserved", c[3], c[4], reserved),
            out_of_range,
        ),
        (
            "bad",
            damaged_copy(&v, "bad", c[3], c[4], bad),
            &["outside", "out of range", "bad"],
        ),
        (
            "free",
            damaged_copy(&v, "free", c[3], c[4], 0),
            &["outside", "out of range", "free"],
        ),
        (
            "short",
            damaged_copy(&v, "short", c[3], c[4], eoc),
            &["chain"],
        ),
    ];
    let dir_loop = damaged_copy(&v, "dir-loop", v.dir_chain[0], eoc, v.dir_chain[0]);
    // Wiped boot sector: no filesystem; truncated to half: the boot sector names sectors
    // the volume does not have; zeros: nothing at all.
    let wiped = dir.join("wiped.img");
    fs::copy(&v.img, &wiped).unwrap();
    poke(&wiped, 0, &[0u8; 512]);
    let truncated = dir.join("truncated.img");
    fs::write(
        &truncated,
        peek(
            &v.img,
            0,
            usize::try_from(damage_image_bytes(bits) / 2).unwrap(),
        ),
    )
    .unwrap();
    let zeros = dir.join("zeros.img");
    fs::File::create(&zeros)
        .unwrap()
        .set_len(damage_image_bytes(bits))
        .unwrap();
    let extra: [(&str, &Path); 4] = [
        ("dir-loop", &dir_loop),
        ("wiped", &wiped),
        ("truncated", &truncated),
        ("zeros", &zeros),
    ];
    let mut all: Vec<(&str, &Path)> = disks.iter().map(|(n, p, _)| (*n, p.as_path())).collect();
    all.extend(extra);
    let repo = new_repo(dir);
    backup_json(&repo, "bad", &all);
    let r = s(&repo);
    let at = |disk: &str| format!("latest@bad:{disk}:");

    // The good one reads.
    assert_rest_reads(&repo, &at("good"));
    assert!(
        files_cat_ok(&repo, &format!("{}/victim.bin", at("good"))) == v.content,
        "the good victim"
    );
    for (name, _, words) in disks.drain(1..) {
        assert_rest_reads(&repo, &at(name));
        assert_victim_fails(&repo, &at(name), dir, words, &v.content);
    }
    // A directory whose chain loops: listed where asked, refused when read.
    assert_eq!(
        files_cat_ok(&repo, &format!("{}/ok.txt", at("dir-loop"))),
        b"fine\n"
    );
    assert_fails(
        &files_raw(&["ls", &r, &format!("{}/dir", at("dir-loop"))]),
        1,
        &["loop"],
    );
    assert_fails(
        &files_raw(&["cat", &r, &format!("{}/dir/inner.txt", at("dir-loop"))]),
        1,
        &["loop"],
    );
    assert_fails(
        &files_raw(&[
            "get",
            &r,
            &format!("{}/", at("dir-loop")),
            &s(&dir.join("out-dir-loop")),
        ]),
        1,
        &["loop"],
    );
    let f = files(&[
        "find", &r, "--series", "bad", "--disk", "dir-loop", "--name", "*.txt", "--json",
    ]);
    f.expect_code(1);
    assert_eq!(f.json()["errors"], 1, "{f}");
    // Not FAT any more, or never was: exit 5, named.
    assert_fails(
        &files_raw(&["ls", &r, &format!("{}/", at("wiped"))]),
        5,
        &["no filesystem"],
    );
    assert_fails(
        &files_raw(&["ls", &r, &format!("{}/", at("zeros"))]),
        5,
        &["zeros"],
    );
    assert_eq!(
        files_json(&["parts", &r, "latest@bad:zeros"])["volumes"][0]["holds"],
        "empty"
    );
    let json = files(&["cat", &r, &format!("{}/ok.txt", at("zeros")), "--json"]);
    json.expect_code(5);
    assert_eq!(json.json()["kind"], "refused", "{json}");
    // A FAT that claims more sectors than the volume has.
    assert_fails(
        &files_raw(&["ls", &r, &format!("{}/", at("truncated"))]),
        1,
        &["FAT boot sector"],
    );
}

#[test]
fn fat12_broken_chains_fail_with_exit_1() {
    broken_chains_fail(12);
}

#[test]
fn fat16_broken_chains_fail_with_exit_1() {
    broken_chains_fail(16);
}

#[test]
fn fat32_broken_chains_fail_with_exit_1() {
    broken_chains_fail(32);
}

/// A file's cluster chain that loops within the file's length: the first cluster pointing
/// to itself, and the fifth pointing back to the second, on each width. SPEC.md §24.2:
/// loops are errors (exit 1 and a message), never a hang, and never the wrong bytes. Every
/// case is tried; the failure lists each one that did not fail as it should.
#[test]
fn a_file_chain_that_loops_fails_with_exit_1() {
    let mut gen = DataGen::new(seed("files_fat_loops"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let mut disks = Vec::new();
    let mut victims = Vec::new();
    for bits in [12u8, 16, 32] {
        let sub = dir.join(format!("fat{bits}"));
        fs::create_dir(&sub).unwrap();
        let v = victim_volume(&sub, bits, &mut gen);
        let c = v.chain.clone();
        disks.push((
            format!("self{bits}"),
            damaged_copy(&v, "self", c[0], c[1], c[0]),
        ));
        disks.push((
            format!("back{bits}"),
            damaged_copy(&v, "back", c[4], c[5], c[1]),
        ));
        victims.push((bits, v.content));
    }
    let repo = new_repo(dir);
    let all: Vec<(&str, &Path)> = disks
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    backup_json(&repo, "loops", &all);
    let mut wrong = Vec::new();
    for (bits, victim) in &victims {
        for kind in ["self", "back"] {
            let at = format!("latest@loops:{kind}{bits}:");
            assert_rest_reads(&repo, &at);
            let out = files_raw(&["cat", &s(&repo), &format!("{at}/victim.bin")]);
            if out.code == 0 {
                wrong.push(describe_success(&out, victim));
                continue;
            }
            assert_victim_fails(&repo, &at, dir, &["loop"], victim);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 6 looping chains were not refused:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 5. Other layouts, and long names whose checksum does not match
// ---------------------------------------------------------------------------------------

/// Volumes laid out unlike mkfs.vfat's defaults: 4096-byte sectors; one FAT, 7 reserved
/// sectors, a 16-entry root directory and 512-byte clusters; FAT32 with one FAT and 1 KiB
/// clusters. Each reads back equal to its source.
#[test]
fn unusual_fat_layouts_read_back_equal() {
    let mut gen = DataGen::new(seed("files_fat_layouts"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let layouts: [(&str, u8, u64, &[&str]); 3] = [
        ("sectors-4k", 16, 64 * MIB, &["-S", "4096", "-s", "1"]),
        (
            "one-fat-small-root",
            12,
            2 * MIB,
            &["-f", "1", "-R", "7", "-s", "1", "-r", "16"],
        ),
        ("fat32-one-fat", 32, 80 * MIB, &["-f", "1", "-s", "2"]),
    ];
    let mut made = Vec::new();
    for (name, bits, bytes, extra) in layouts {
        let src = dir.join(format!("src-{name}"));
        write(&src.join("Long Name Ünïcødé.txt"), name.as_bytes());
        write(&src.join("empty"), b"");
        write(
            &src.join("sub/Nested Directory/data.bin"),
            &gen.bytes(Fill::Random, 100_003),
        );
        write(&src.join("sub/second.txt"), &gen.bytes(Fill::Text, 9000));
        normalise_tree(&src);
        let img = dir.join(format!("{name}.img"));
        mkfs_fat(&img, bits, bytes, extra);
        let geom = fat_geometry(&img);
        assert_eq!(geom.bits, bits, "{name}: {geom:?}");
        mcopy_tree(&img, &src, "::/");
        run_tool(Command::new("fsck.fat").arg("-n").arg(&img));
        made.push((name, bits, src, img, geom));
    }
    assert_eq!(made[0].4.sector_bytes, 4096);
    assert_eq!(
        (
            made[1].4.fats,
            made[1].4.reserved_sectors,
            made[1].4.root_entries
        ),
        (1, 7, 16)
    );
    assert_eq!((made[2].4.fats, made[2].4.cluster_bytes), (1, 1024));
    let repo = new_repo(dir);
    let disks: Vec<(&str, &Path)> = made
        .iter()
        .map(|(n, _, _, img, _)| (*n, img.as_path()))
        .collect();
    backup_json(&repo, "layouts", &disks);
    for (name, bits, src, _, _) in &made {
        let at = format!("latest@layouts:{name}:");
        assert_listings_and_contents(&repo, &at, src, &format!("fat{bits}"));
        let scratch = dir.join(format!("out-{name}"));
        fs::create_dir(&scratch).unwrap();
        assert_get_and_tar_equal(&repo, &at, src, &scratch, "sub/Nested Directory/data.bin");
    }
}

/// The 8.3 name a short directory entry spells: base and extension without their padding,
/// lower-cased where the NT case flags (byte 12) say so.
fn short_name_of(entry: &[u8]) -> String {
    let part = |b: &[u8], lower: bool| {
        let t = String::from_utf8_lossy(b).trim_end().to_string();
        if lower {
            t.to_lowercase()
        } else {
            t
        }
    };
    let base = part(&entry[..8], entry[12] & 0x08 != 0);
    let ext = part(&entry[8..11], entry[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// A long name is used only when the checksum its entries carry is that of the short entry
/// they precede; otherwise the 8.3 name stands (Microsoft's FAT specification, the kernel's
/// vfat and mtools). Broken here: every long entry's checksum of one name, and only the
/// last long entry's (the one next to the short entry) of another.
#[test]
fn long_names_with_a_wrong_checksum_fall_back_to_the_8_3_name() {
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    let all_wrong = "A Long Mixed Name, all entries wrong.txt";
    let one_wrong = "Another Long Name, one entry wrong.txt";
    let kept = "Ünïcødé name kept.txt";
    for n in [all_wrong, one_wrong, kept] {
        write(&src.join(n), n.as_bytes());
    }
    normalise_tree(&src);
    let img = dir.join("fat16.img");
    mkfs_fat(&img, 16, 16 * MIB, &[]);
    let geom = fat_geometry(&img);
    mcopy_tree(&img, &src, "::/");
    // The fixed root directory, slot by slot: each run of long entries (attribute 0x0f)
    // and the short entry after it.
    let root = geom.fat_offset(geom.fats);
    let bytes = peek(&img, root, usize::try_from(geom.root_entries * 32).unwrap());
    let mut pending: Vec<usize> = Vec::new();
    let mut short_names = std::collections::BTreeMap::new();
    for (i, e) in bytes.chunks_exact(32).enumerate() {
        if e[0] == 0 {
            break;
        }
        if e[11] == 0x0f {
            pending.push(i);
            continue;
        }
        // The long name this set spells (13 UTF-16 units per entry, last part first).
        let mut units = Vec::new();
        for j in pending.iter().rev() {
            let l = &bytes[j * 32..j * 32 + 32];
            for at in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30] {
                units.push(u16::from_le_bytes([l[at], l[at + 1]]));
            }
        }
        let end = units
            .iter()
            .position(|u| *u == 0 || *u == 0xffff)
            .unwrap_or(units.len());
        let long = String::from_utf16(&units[..end]).unwrap();
        let broken: &[usize] = if long == all_wrong {
            &pending
        } else if long == one_wrong {
            &pending[pending.len() - 1..]
        } else {
            &[]
        };
        for j in broken {
            let at = root + (*j as u64) * 32 + 13;
            let sum = peek(&img, at, 1)[0];
            poke(&img, at, &[sum.wrapping_add(1)]);
        }
        short_names.insert(long, short_name_of(e));
        pending.clear();
    }
    assert_eq!(short_names.len(), 3, "{short_names:?}");
    // mtools agrees that the two long names are gone.
    let mdir = run_tool(mtools("mdir").arg("-i").arg(&img).arg("::/"));
    let listing = String::from_utf8_lossy(&mdir.stdout).into_owned();
    assert!(
        !listing.contains(all_wrong) && !listing.contains(one_wrong) && listing.contains(kept),
        "{listing}"
    );

    let repo = new_repo(dir);
    backup_json(&repo, "lfn", &[("disk0", &img)]);
    let r = s(&repo);
    let mut want = vec![
        short_names[all_wrong].clone(),
        short_names[one_wrong].clone(),
        kept.to_string(),
    ];
    want.sort();
    let names = entry_names(&files_json(&["ls", &r, "latest@lfn:/"]));
    assert_eq!(
        names, want,
        "the names of long entries whose checksum does not match"
    );
    for long in [all_wrong, one_wrong] {
        let short = &short_names[long];
        assert_eq!(
            files_cat_ok(&repo, &format!("latest@lfn:/{short}")),
            long.as_bytes(),
            "{short}"
        );
    }
    assert_eq!(
        files_cat_ok(&repo, &format!("latest@lfn:/{kept}")),
        kept.as_bytes()
    );
}
