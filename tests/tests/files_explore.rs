//! `tessera files`: reading the files inside a backed-up disk without restoring the disk.
//!
//! Every image here is a real filesystem made by the distribution's tools (`mkfs.ext4 -d`
//! from a source directory, changed between generations with `debugfs -w`, partitioned
//! with `sfdisk`/`sgdisk`; `mkfs.xfs` for what must be refused, `mkfs.ntfs` for an empty volume), backed up, and
//! read back through the CLI; the oracle is always the source directory (or the bytes the
//! test wrote), compared byte for byte:
//!
//! - a rich ext4 tree (unicode and 255-byte names, 60 levels, a 5 GiB sparse file, hard
//!   links, symlinks of every length, a FIFO, device nodes, a socket, set-id bits, owners,
//!   pre-1970 mtimes) comes back identical from `files get` and from `files get --tar -`;
//! - `ls`, `stat`, `cat` agree with the source, and every misuse exits 2 touching nothing;
//! - MBR primary and logical partitions, GPT partitions by number, name and GUID;
//! - `find` over six generations reports added/changed/unchanged/removed exactly, with the
//!   right SHA-256s, reusing hashes of unchanged files;
//! - ext2 block maps up to triple indirect, ext3, 1 KiB-block ext4 with hashed directories
//!   and extent trees of depth 1, ext4 `inline_data`;
//! - XFS, NTFS, zeros and a dozen corruptions fail with a message and the documented exit
//!   code, never a panic; a damaged chunk fails `cat`/`get`/`find` with exit 4 naming the
//!   file's byte range.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: build the images, back up, check everything"
)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tessera_tests::fs_images::{
    assert_no_panic, assert_trees_equal, block_digest, bmap, damage_chunk, debugfs, debugfs_w,
    entry_names, ext_block_size, files, files_json, inode_offset, kind_name, mkfs_ext, peek, poke,
    run_tool, running_as_root, scan_tree, set_mtime, source_names, tar_through, tessera_raw,
    RawOut, TreeCompare,
};
use tessera_tests::{
    allocated_bytes, backup_json, hex, init_repo, seed, sha256_file, snapshot_id, DataGen, Fill,
    Out, Value,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `tessera files cat REPO REF` with stdout as bytes.
fn cat(repo: &Path, file: &str) -> RawOut {
    let repo = s(repo);
    tessera_raw(["files", "cat", repo.as_str(), file])
}

/// The bytes `files cat` gives, asserting success.
#[track_caller]
fn cat_ok(repo: &Path, file: &str) -> Vec<u8> {
    let out = cat(repo, file);
    out.expect_code(0);
    out.stdout
}

fn sha_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A fresh plain repository at `DIR/repo`.
fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    repo
}

/// Gives every name under `root` a distinct mtime (children before their directory, so
/// creating nothing afterwards changes them), with `fixed` (relative path, seconds) taking
/// precedence; returns nothing, the source tree is the oracle.
fn stamp_tree(root: &Path, fixed: &[(&str, i64)]) {
    let tree = scan_tree(root);
    for (i, (rel, node)) in tree.iter().rev().enumerate() {
        let secs = fixed
            .iter()
            .find(|(p, _)| p.as_bytes() == rel.as_slice())
            .map_or(
                1_000_000_000 + 7919 * i64::try_from(i).unwrap(),
                |(_, t)| *t,
            );
        set_mtime(&node.path, secs);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path) {
    run_tool(Command::new("mkfifo").arg(path));
}

fn mknod(path: &Path, kind: &str, major: u32, minor: u32) {
    run_tool(
        Command::new("mknod")
            .arg(path)
            .arg(kind)
            .arg(major.to_string())
            .arg(minor.to_string()),
    );
}

/// Writes `pieces` (offset, bytes) into a new sparse file of `size` bytes.
fn sparse_file(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (at, bytes) in pieces {
        f.write_all_at(bytes, *at).unwrap();
    }
}

/// The kind word `files ls --json` uses for a source file.
fn json_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "chardevice"
    } else if t.is_block_device() {
        "blockdevice"
    } else {
        "socket"
    }
}

/// Asserts that one `files ls`/`stat` JSON entry describes the source file at `src`.
#[track_caller]
fn assert_entry_matches(entry: &Value, src: &Path) {
    let meta = fs::symlink_metadata(src).unwrap();
    let what = format!("{entry} vs {}", src.display());
    assert_eq!(entry["kind"], json_kind(&meta), "kind: {what}");
    assert_eq!(
        entry["mode"],
        u64::from(meta.mode() & 0o7777),
        "mode: {what}"
    );
    assert_eq!(entry["uid"], u64::from(meta.uid()), "uid: {what}");
    assert_eq!(entry["gid"], u64::from(meta.gid()), "gid: {what}");
    assert_eq!(entry["mtime"]["secs"], meta.mtime(), "mtime: {what}");
    if !meta.is_dir() {
        assert_eq!(entry["size"], meta.len(), "size: {what}");
        assert_eq!(entry["nlink"], meta.nlink(), "nlink: {what}");
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).unwrap();
        assert_eq!(entry["target"], target.to_str().unwrap(), "target: {what}");
    } else {
        assert!(
            entry.get("target").is_none(),
            "a target on a non-symlink: {what}"
        );
    }
}

/// One host name as `lstat` and its content show it: kind, inode, permission bits, mtime
/// with nanoseconds, and a file's size and SHA-256, a symlink's target or a directory's
/// entries. Equal before and after a command: the command did not touch it.
fn host_state(path: &Path) -> String {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let t = meta.file_type();
    let what = if t.is_file() {
        format!("size {} sha256 {}", meta.len(), sha256_file(path))
    } else if t.is_symlink() {
        format!("-> {}", fs::read_link(path).unwrap().display())
    } else if t.is_dir() {
        format!("entries {:?}", tessera_tests::dir_entries(path))
    } else {
        String::new()
    };
    format!(
        "{} ino {} mode {:o} mtime {}.{:09} {what}",
        kind_name(t),
        meta.ino(),
        meta.mode() & 0o7777,
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// [`host_state`] of `root` (under the key `.`) and of every name below it, symlinks not
/// followed.
fn tree_state(root: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = scan_tree(root)
        .into_iter()
        .map(|(rel, node)| {
            (
                String::from_utf8_lossy(&rel).into_owned(),
                host_state(&node.path),
            )
        })
        .collect();
    out.insert(".".into(), host_state(root));
    out
}

/// The `.tessera-part-*` names anywhere under `root` (temporary names `get` left behind).
fn temp_names(root: &Path) -> Vec<String> {
    scan_tree(root)
        .keys()
        .map(|rel| String::from_utf8_lossy(rel).into_owned())
        .filter(|rel| {
            rel.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".tessera-part-"))
        })
        .collect()
}

/// Asserts that the directory `got` has the permission bits and mtime of the source
/// directory `src` (so not the `0700` it is made with while its contents are written).
#[track_caller]
fn assert_dir_finished(src: &Path, got: &Path) {
    let want = fs::symlink_metadata(src).unwrap();
    let meta = fs::symlink_metadata(got).unwrap_or_else(|e| panic!("lstat {}: {e}", got.display()));
    assert!(
        meta.is_dir(),
        "{} is a {}, not a directory",
        got.display(),
        kind_name(meta.file_type())
    );
    assert_eq!(
        format!("{:o}", meta.mode() & 0o7777),
        format!("{:o}", want.mode() & 0o7777),
        "permission bits of {} (directories are 0700 while their contents are written)",
        got.display()
    );
    assert_eq!(meta.mtime(), want.mtime(), "mtime of {}", got.display());
}

/// `(start, end)` of the first `bytes START..END` in `text`.
fn byte_range(text: &str) -> Option<(u64, u64)> {
    let at = text.find("bytes ")?;
    let rest = &text[at + 6..];
    let (a, b) = rest.split_once("..")?;
    let end: String = b.chars().take_while(char::is_ascii_digit).collect();
    Some((a.parse().ok()?, end.parse().ok()?))
}

// ---------------------------------------------------------------------------------------
// 1. A rich ext4 tree, round trip through `get` and `get --tar`
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BIG: u64 = 5 * GIB;

/// A 255-byte name: 127 two-byte characters and one more byte.
fn name_255() -> String {
    let n = "é".repeat(127) + "x";
    assert_eq!(n.len(), 255);
    n
}

/// Builds the rich source tree; returns the data pieces of `sparse/big`.
fn build_rich_tree(src: &Path, gen: &mut DataGen) -> Vec<(u64, Vec<u8>)> {
    let root = running_as_root();
    write(&src.join("unicode/héllo wörld.txt"), b"bonjour, monde\n");
    write(
        &src.join("unicode/日本語のファイル名.txt"),
        "こんにちは\n".as_bytes(),
    );
    write(
        &src.join("unicode/emoji 🦀 crab.bin"),
        &gen.bytes(Fill::Random, 70_001),
    );
    write(&src.join("unicode/new\nline and\ttab"), b"odd name\n");
    write(
        &src.join("unicode").join(name_255()),
        b"a name of 255 bytes\n",
    );
    // Not UTF-8: ext names are bytes.
    write(
        &src.join("unicode")
            .join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe name")),
        b"latin-1?\n",
    );
    write(&src.join("empty"), b"");
    write(
        &src.join("data/random"),
        &gen.bytes(Fill::Random, (3 << 19) + 17),
    );
    write(&src.join("data/text"), &gen.bytes(Fill::Text, 300_000));
    write(&src.join("data/one-block"), &gen.bytes(Fill::Random, 4096));
    // Sparse, past 4 GiB: data at the start, in the middle, across the 4 GiB boundary and
    // at the very end.
    let pieces = vec![
        (0, gen.bytes(Fill::Random, 1000)),
        (GIB + 123, gen.bytes(Fill::Text, 70_000)),
        (4 * GIB - 5000, gen.bytes(Fill::Random, 10_000)),
        (BIG - 10, b"last bytes".to_vec()),
    ];
    fs::create_dir_all(src.join("sparse")).unwrap();
    sparse_file(&src.join("sparse/big"), BIG, &pieces);
    // 60 levels.
    let mut deep = src.join("deep");
    for level in 0..60 {
        deep.push(format!("level-{level:02}-abcdefghij"));
    }
    write(&deep.join("leaf.txt"), b"at the bottom\n");
    // Hard links: one file with three names in two directories, one with two.
    write(&src.join("links/a"), &gen.bytes(Fill::Text, 5000));
    fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
    fs::hard_link(src.join("links/a"), src.join("unicode/c-link")).unwrap();
    write(&src.join("links/x"), b"x and y\n");
    fs::hard_link(src.join("links/x"), src.join("links/y")).unwrap();
    // Symlinks: relative, absolute, dangling, 59 bytes (fast), 60 (slow), 300 (long), to a
    // directory.
    symlink("../unicode/héllo wörld.txt", src.join("links/rel")).unwrap();
    symlink("/etc/passwd", src.join("links/abs")).unwrap();
    symlink("nowhere/at/all", src.join("links/dangling")).unwrap();
    symlink("t".repeat(59), src.join("links/fast59")).unwrap();
    symlink("u".repeat(60), src.join("links/slow60")).unwrap();
    symlink("seg/".repeat(75), src.join("links/long")).unwrap();
    symlink("../deep", src.join("links/dirlink")).unwrap();
    // Special files.
    fs::create_dir_all(src.join("special")).unwrap();
    mkfifo(&src.join("special/fifo"));
    if root {
        mknod(&src.join("special/null"), "c", 1, 3);
        mknod(&src.join("special/loop9"), "b", 7, 9);
        // Past 8-bit major and minor: the new device number encoding.
        mknod(&src.join("special/bigdev"), "c", 300, 70_000);
    }
    drop(std::os::unix::net::UnixListener::bind(src.join("special/sock")).unwrap());
    // Modes.
    for (name, mode) in [
        ("suid", 0o4755),
        ("sgid", 0o2711),
        ("none", 0o000),
        ("ro", 0o444),
        ("exec", 0o700),
    ] {
        let p = src.join("modes").join(name);
        write(&p, name.as_bytes());
        chmod(&p, mode);
    }
    fs::create_dir_all(src.join("modes/sticky")).unwrap();
    write(&src.join("modes/sticky/inside"), b"sticky\n");
    chmod(&src.join("modes/sticky"), 0o1777);
    write(
        &src.join("modes/readonly-dir/inside"),
        b"read-only directory\n",
    );
    chmod(&src.join("modes/readonly-dir"), 0o555);
    write(&src.join("old/pre-epoch"), b"1960\n");
    if root {
        std::os::unix::fs::chown(src.join("data/text"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(src.join("modes/readonly-dir"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(src.join("links/rel"), Some(1111), Some(2222)).unwrap();
        // Past 16 bits: the ids' high halves.
        std::os::unix::fs::chown(src.join("data/one-block"), Some(100_000), Some(200_000)).unwrap();
    }
    stamp_tree(
        src,
        &[("old/pre-epoch", -301_234_567), ("old", 86_400 * 365)],
    );
    pieces
}

#[test]
fn ext4_tree_round_trips_through_get_and_tar() {
    let started = Instant::now();
    let mut gen = DataGen::new(seed("files_rich_tree"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_rich_tree(&src, &mut gen);
    let img = t.path().join("ext4.img");
    mkfs_ext(&img, &src, "64M", &["-b", "4096"]);
    let repo = new_repo(t.path());
    backup_json(&repo, "t1", &[("disk0", &img)]);
    let root = running_as_root();

    // `get` of the root into a new directory.
    let out_dir = t.path().join("out");
    let report = files_json(&["get", &s(&repo), "latest@t1:/", &s(&out_dir)]);
    assert_trees_equal(
        &src,
        &out_dir,
        &TreeCompare {
            ignore: &["special/sock"],
            only_in_actual: &["lost+found"],
            owners: root,
            symlink_times: true,
        },
    );
    assert!(out_dir.join("lost+found").is_dir());
    assert!(
        fs::symlink_metadata(out_dir.join("special/sock")).is_err(),
        "a socket was made"
    );
    // The report counts what the source holds.
    let tree = scan_tree(&src);
    let regular: Vec<&fs::Metadata> = tree
        .values()
        .map(|n| &n.meta)
        .filter(|m| m.is_file())
        .collect();
    let mut inodes: Vec<u64> = regular.iter().map(|m| m.ino()).collect();
    inodes.sort_unstable();
    inodes.dedup();
    let count =
        |f: &dyn Fn(&fs::Metadata) -> bool| tree.values().filter(|n| f(&n.meta)).count() as u64;
    assert_eq!(report["files"], inodes.len() as u64, "{report}");
    assert_eq!(
        report["hard_links"],
        regular.len() as u64 - inodes.len() as u64,
        "{report}"
    );
    assert_eq!(
        report["symlinks"],
        count(&|m| m.file_type().is_symlink()),
        "{report}"
    );
    // + the root and lost+found.
    assert_eq!(report["dirs"], count(&|m| m.is_dir()) + 2, "{report}");
    assert_eq!(report["special"], if root { 4 } else { 1 }, "{report}");
    assert_eq!(report["owners_restored"], root, "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(
            |x| x["path"] == "special/sock" && x["reason"].as_str().unwrap().contains("socket")
        ),
        "{report}"
    );
    assert_eq!(skipped.len(), 1, "{report}");
    let logical: u64 = {
        let mut seen = std::collections::HashSet::new();
        regular
            .iter()
            .filter(|m| seen.insert(m.ino()))
            .map(|m| m.len())
            .sum()
    };
    assert_eq!(report["logical_bytes"], logical, "{report}");
    assert!(
        report["bytes_written"].as_u64().unwrap() < 8 << 20,
        "holes were written: {report}"
    );

    // The restored root takes the filesystem root's mode and mtime.
    let root_stat = files_json(&["stat", &s(&repo), "latest@t1:/"]);
    assert_eq!(root_stat["kind"], "dir");
    assert_eq!(root_stat["name"], "/");
    let out_meta = fs::metadata(&out_dir).unwrap();
    assert_eq!(root_stat["mode"], u64::from(out_meta.mode() & 0o7777));
    assert_eq!(root_stat["mtime"]["secs"], out_meta.mtime());

    // The 5 GiB file stayed sparse.
    let big = out_dir.join("sparse/big");
    assert_eq!(fs::metadata(&big).unwrap().len(), BIG);
    assert!(
        allocated_bytes(&big) < 1 << 20,
        "sparse/big took {} bytes on disk",
        allocated_bytes(&big)
    );
    eprintln!(
        "[rich tree] get compared after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The same tree as a tar stream into `tar x`: everything but the big file extracted
    // (5 GiB of zeros on disk otherwise), the big file compared byte for byte in the stream.
    let tar_dir = t.path().join("tar-out");
    fs::create_dir(&tar_dir).unwrap();
    let repo_arg = s(&repo);
    let args: Vec<OsString> = [
        "files",
        "get",
        repo_arg.as_str(),
        "latest@t1:/",
        "-",
        "--tar",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let (code, stderr, members) = tar_through(
        &args,
        &tar_dir,
        &["--exclude=sparse/big"],
        Some(("sparse/big", &src.join("sparse/big"))),
    );
    assert_no_panic(&stderr, &["files get --tar -".into()]);
    assert_eq!(code, 0, "files get --tar - failed: {stderr}");
    assert!(
        stderr.contains("special/sock"),
        "the skipped socket is not reported: {stderr}"
    );
    assert_trees_equal(
        &src,
        &tar_dir,
        &TreeCompare {
            // old/pre-epoch: a pre-1970 mtime, checked on its own by
            // `tar_keeps_pre_1970_mtimes`.
            ignore: &["special/sock", "sparse/big", "old/pre-epoch"],
            only_in_actual: &["lost+found"],
            owners: root,
            symlink_times: true,
        },
    );
    // The stream itself: each regular member's bytes are its source's; hard links,
    // symlinks and special files have their own entries; the big file's size is exact.
    let by_kind = |k: u8| members.iter().filter(|m| m.kind == k).count() as u64;
    assert_eq!(
        members.first().map(|m| m.name.as_slice()),
        Some(b"./".as_slice())
    );
    assert_eq!(by_kind(b'1'), regular.len() as u64 - inodes.len() as u64);
    assert_eq!(by_kind(b'2'), count(&|m| m.file_type().is_symlink()));
    assert_eq!(by_kind(b'6'), 1);
    assert_eq!(by_kind(b'3') + by_kind(b'4'), if root { 3 } else { 0 });
    let big_member = members
        .iter()
        .find(|m| m.name == b"sparse/big")
        .expect("sparse/big in the tar");
    assert_eq!(big_member.size, BIG);
    for m in members
        .iter()
        .filter(|m| m.kind == b'0' && m.name != b"sparse/big")
    {
        let name = std::ffi::OsStr::from_bytes(&m.name);
        assert_eq!(
            m.sha256.as_deref(),
            Some(sha256_file(&src.join(name)).as_str()),
            "tar member {name:?}"
        );
    }
    // A name that is not UTF-8 is listed with its exact bytes.
    let listing = files_json(&["ls", &s(&repo), "latest@t1:/unicode"]);
    let bad = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("name_hex").is_some())
        .unwrap_or_else(|| panic!("no name_hex in {listing}"));
    assert_eq!(bad["name_hex"], hex(b"bad\xff\xfe name"), "{listing}");
    assert_eq!(bad["name"], "bad\u{fffd}\u{fffd} name", "{listing}");
    if root {
        let dev = files_json(&["stat", &s(&repo), "latest@t1:/special/bigdev"]);
        assert_eq!(dev["kind"], "chardevice", "{dev}");
        assert_eq!(dev["rdev"], (300u64 << 32) | 0x1_1170, "{dev}");
        let ids = files_json(&["stat", &s(&repo), "latest@t1:/data/one-block"]);
        assert_eq!(
            (ids["uid"].clone(), ids["gid"].clone()),
            (100_000.into(), 200_000.into()),
            "{ids}"
        );
    }
    eprintln!(
        "[rich tree] done after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `get` keeps a pre-1970 mtime (a negative time), and so must `get --tar`: GNU tar encodes
/// one in base-256, and `tar x` restores it.
#[test]
fn tar_keeps_pre_1970_mtimes() {
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    write(&src.join("old/file"), b"from 1960\n");
    stamp_tree(&src, &[("old/file", -301_234_567), ("old", -86_400)]);
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "8M", &[]);
    let repo = new_repo(t.path());
    backup_json(&repo, "old", &[("disk0", &img)]);
    let r = s(&repo);
    assert_eq!(
        files_json(&["stat", &r, "latest@old:/old/file"])["mtime"]["secs"],
        -301_234_567
    );
    let out = t.path().join("out");
    files_json(&["get", &r, "latest@old:/", &s(&out)]);
    let how = TreeCompare {
        only_in_actual: &["lost+found"],
        owners: running_as_root(),
        symlink_times: true,
        ..TreeCompare::default()
    };
    assert_trees_equal(&src, &out, &how);
    let tar_dir = t.path().join("tar-out");
    fs::create_dir(&tar_dir).unwrap();
    let args: Vec<OsString> = ["files", "get", r.as_str(), "latest@old:/", "-", "--tar"]
        .iter()
        .map(OsString::from)
        .collect();
    let (code, stderr, _) = tar_through(&args, &tar_dir, &[], None);
    assert_eq!(code, 0, "{stderr}");
    assert_trees_equal(&src, &tar_dir, &how);
}

// ---------------------------------------------------------------------------------------
// 2. ls, stat, cat, and misuse
// ---------------------------------------------------------------------------------------

fn build_small_etc(src: &Path, gen: &mut DataGen) {
    write(
        &src.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    );
    write(&src.join("etc/hostname"), b"vm1\n");
    write(&src.join("etc/a.conf"), b"key = value\n");
    fs::create_dir_all(src.join("etc/sub")).unwrap();
    write(&src.join("etc/sub/deeper.txt"), b"deeper\n");
    symlink("passwd", src.join("etc/link")).unwrap();
    write(
        &src.join("bin/tool"),
        &gen.bytes(Fill::Random, 200 * 1024 + 3),
    );
    chmod(&src.join("bin/tool"), 0o755);
    write(&src.join("bin/suid"), b"set-uid\n");
    chmod(&src.join("bin/suid"), 0o4755);
    symlink("/etc/hostname", src.join("abs")).unwrap();
    symlink("etc", src.join("etcdir")).unwrap();
    write(&src.join("empty"), b"");
    if running_as_root() {
        std::os::unix::fs::chown(src.join("etc/a.conf"), Some(1000), Some(100)).unwrap();
    }
    stamp_tree(src, &[("etc/hostname", -86_400)]);
}

#[test]
fn ls_stat_cat_agree_with_the_source_and_misuse_exits_2() {
    let mut gen = DataGen::new(seed("files_ls_stat_cat"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "16M", &["-b", "4096"]);
    let repo = new_repo(t.path());
    backup_json(&repo, "vm1", &[("disk0", &img)]);
    let r = s(&repo);

    // ls: names, sorted by bytes, and what each is.
    let etc = files_json(&["ls", &r, "latest@vm1:/etc"]);
    assert_eq!(entry_names(&etc), source_names(&src.join("etc")));
    assert_eq!(etc["filesystem"], "ext");
    assert_eq!(etc["path"], "/etc");
    for e in etc["entries"].as_array().unwrap() {
        assert_entry_matches(e, &src.join("etc").join(e["name"].as_str().unwrap()));
        let one = files_json(&[
            "stat",
            &r,
            &format!("latest@vm1:/etc/{}", e["name"].as_str().unwrap()),
        ]);
        assert_eq!(one["ino"], e["ino"], "stat and ls disagree on {e}");
    }
    let disk_blocks = etc["disk_blocks"].as_u64().unwrap();
    let blocks_read = etc["blocks_read"].as_u64().unwrap();
    assert_eq!(disk_blocks, (16 << 20) / (64 << 10));
    assert!(blocks_read > 0 && blocks_read < disk_blocks, "{etc}");
    let top = files_json(&["ls", &r, "latest@vm1:/"]);
    let mut want = source_names(&src);
    want.push("lost+found".into());
    want.sort();
    assert_eq!(entry_names(&top), want);
    for e in top["entries"].as_array().unwrap() {
        if e["name"] != "lost+found" {
            assert_entry_matches(e, &src.join(e["name"].as_str().unwrap()));
        }
    }
    // Through a symlink to a directory; and a file lists as itself.
    assert_eq!(
        entry_names(&files_json(&["ls", &r, "latest@vm1:/etcdir"])),
        source_names(&src.join("etc"))
    );
    let one = files_json(&["ls", &r, "latest@vm1:/bin/suid"]);
    assert_eq!(entry_names(&one), ["suid"]);
    assert_entry_matches(&one["entries"][0], &src.join("bin/suid"));
    // Text output: one name a line; -l like ls -l.
    let text = files(&["ls", &r, "latest@vm1:/etc"]);
    text.ok();
    assert_eq!(
        text.stdout.lines().collect::<Vec<_>>(),
        source_names(&src.join("etc"))
    );
    let long = files(&["ls", "-l", &r, "latest@vm1:/bin"]);
    long.ok();
    let suid_line = long
        .stdout
        .lines()
        .find(|l| l.ends_with(" suid"))
        .expect("suid line");
    assert!(suid_line.starts_with("-rwsr-xr-x"), "{suid_line}");
    let long_etc = files(&["ls", "-l", &r, "latest@vm1:/etc"]);
    long_etc.ok();
    assert!(
        long_etc
            .stdout
            .lines()
            .any(|l| l.starts_with('l') && l.ends_with("link -> passwd")),
        "{long_etc}"
    );
    assert!(
        long_etc
            .stdout
            .lines()
            .any(|l| l.starts_with('d') && l.ends_with(" sub")),
        "{long_etc}"
    );

    // cat: bytes, through symlinks and dot-dot.
    let passwd = fs::read(src.join("etc/passwd")).unwrap();
    assert_eq!(cat_ok(&repo, "latest@vm1:/etc/passwd"), passwd);
    assert_eq!(
        cat_ok(&repo, "latest@vm1:/bin/tool"),
        fs::read(src.join("bin/tool")).unwrap()
    );
    assert_eq!(cat_ok(&repo, "latest@vm1:/etc/link"), passwd);
    assert_eq!(cat_ok(&repo, "latest@vm1:/etc/../etc/./passwd"), passwd);
    assert_eq!(cat_ok(&repo, "latest@vm1:/etcdir/sub/../link"), passwd);
    assert_eq!(cat_ok(&repo, "latest@vm1:/abs"), b"vm1\n");
    assert_eq!(cat_ok(&repo, "latest@vm1:disk0:/etc/hostname"), b"vm1\n");
    assert_eq!(cat_ok(&repo, "latest:/etc/a.conf"), b"key = value\n");
    assert_eq!(cat_ok(&repo, "latest@vm1:/empty"), b"");

    // stat: a symlink itself.
    let link = files_json(&["stat", &r, "latest@vm1:/etc/link"]);
    assert_eq!(link["name"], "link");
    assert_entry_matches(&link, &src.join("etc/link"));
    assert_eq!(link["target"], "passwd");
    assert_eq!(
        files_json(&["stat", &r, "latest@vm1:/abs"])["target"],
        "/etc/hostname"
    );
    let pre = files_json(&["stat", &r, "latest@vm1:/etc/hostname"]);
    assert_eq!(pre["mtime"]["secs"], -86_400);
    let stat_text = files(&["stat", &r, "latest@vm1:/etc/link"]);
    stat_text.ok();
    assert!(stat_text.stdout.contains("link -> passwd"), "{stat_text}");

    // Paths that are not there, or not what the command needs.
    for (cmd, file, needle) in [
        ("ls", "latest@vm1:/nope", "/nope: no such file or directory"),
        ("stat", "latest@vm1:/etc/nope", "no such file or directory"),
        ("cat", "latest@vm1:/etc/passwd/x", "not a directory"),
        ("cat", "latest@vm1:/etc", "directory, not a regular file"),
        ("cat", "latest@vm1:/etcdir", "directory, not a regular file"),
        ("ls", "latest@vm1:/etc/link/x", "not a directory"),
    ] {
        let out = files(&[cmd, &r, file]);
        out.expect_code(2).stderr_has(needle);
    }
    // Malformed or unresolvable references.
    for (file, needle) in [
        ("latest@vm1", "SNAPSHOT[:DISK[:PART]]:/PATH"),
        ("latest@vm1:etc/passwd", "SNAPSHOT[:DISK[:PART]]:/PATH"),
        (
            "latest@vm1:a:b:c:/x",
            "SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH",
        ),
        ("latest@vm1::/etc", "none empty"),
        ("zz:/etc", "zz"),
        ("latest@vm1:nodisk:/etc", "nodisk"),
        ("latest@nope:/etc", "nope"),
        ("latest@vm1:disk0:1:/etc", "no partition table"),
    ] {
        for cmd in ["ls", "cat", "stat"] {
            files(&[cmd, &r, file]).expect_code(2).stderr_has(needle);
        }
    }

    // get: to a new name, into an existing directory, a symlink as a symlink.
    let got = t.path().join("got");
    fs::create_dir(&got).unwrap();
    files_json(&["get", &r, "latest@vm1:/etc/passwd", &s(&got)]);
    assert_eq!(fs::read(got.join("passwd")).unwrap(), passwd);
    files_json(&[
        "get",
        &r,
        "latest@vm1:/etc/hostname",
        &s(&got.join("renamed")),
    ]);
    assert_eq!(fs::read(got.join("renamed")).unwrap(), b"vm1\n");
    assert_eq!(
        fs::metadata(got.join("renamed")).unwrap().mtime(),
        -86_400,
        "the restored file's mtime"
    );
    files_json(&["get", &r, "latest@vm1:/etc/link", &s(&got)]);
    assert_eq!(
        fs::read_link(got.join("link")).unwrap(),
        Path::new("passwd")
    );

    // Existing outputs are left alone without --force.
    let keep = got.join("keep");
    write(&keep, b"keep me");
    set_mtime(&keep, 123_456);
    files(&["get", &r, "latest@vm1:/etc/passwd", &s(&keep)])
        .expect_code(2)
        .stderr_has("already exists");
    files(&["get", &r, "latest@vm1:/etc/passwd", &s(&got)])
        .expect_code(2)
        .stderr_has("already exists");
    assert_eq!(fs::read(&keep).unwrap(), b"keep me");
    assert_eq!(fs::metadata(&keep).unwrap().mtime(), 123_456);
    assert_eq!(fs::read(got.join("passwd")).unwrap(), passwd);
    // A directory tree into a directory that already holds one of that name.
    let merge = t.path().join("merge");
    write(&merge.join("etc/keep.txt"), b"mine");
    write(&merge.join("etc/passwd"), b"old passwd");
    files(&["get", &r, "latest@vm1:/etc", &s(&merge)])
        .expect_code(2)
        .stderr_has("already exists");
    assert_eq!(
        tessera_tests::dir_entries(&merge.join("etc")),
        ["keep.txt", "passwd"]
    );
    assert_eq!(fs::read(merge.join("etc/passwd")).unwrap(), b"old passwd");
    // The root into a non-empty directory.
    files(&["get", &r, "latest@vm1:/", &s(&merge)])
        .expect_code(2)
        .stderr_has("already exists");
    assert_eq!(tessera_tests::dir_entries(&merge), ["etc"]);
    // --force replaces files and merges directories.
    files_json(&["get", &r, "latest@vm1:/etc/passwd", &s(&keep), "--force"]);
    assert_eq!(fs::read(&keep).unwrap(), passwd);
    files_json(&["get", &r, "latest@vm1:/etc", &s(&merge), "--force"]);
    assert_eq!(fs::read(merge.join("etc/passwd")).unwrap(), passwd);
    assert_eq!(fs::read(merge.join("etc/keep.txt")).unwrap(), b"mine");
    assert_eq!(
        fs::read(merge.join("etc/sub/deeper.txt")).unwrap(),
        b"deeper\n"
    );

    // A tar file that exists is refused like any other output, and left alone.
    let tar_file = t.path().join("existing.tar");
    write(&tar_file, b"not a tar");
    let out = files(&["get", &r, "latest@vm1:/etc", &s(&tar_file), "--tar"]);
    assert_eq!(fs::read(&tar_file).unwrap(), b"not a tar", "{out}");
    out.expect_code(2);
}

/// `get --force` replaces what is in the way of a directory (a file, a symlink) with the
/// directory, as it replaces what is in the way of a file; a symlink's target is left alone.
#[test]
fn get_force_replaces_a_file_or_symlink_in_the_way_of_a_directory() {
    let mut gen = DataGen::new(seed("files_force_dir"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = new_repo(t.path());
    backup_json(&repo, "vm1", &[("disk0", &img)]);
    let r = s(&repo);
    let how = TreeCompare {
        owners: running_as_root(),
        symlink_times: true,
        ..TreeCompare::default()
    };

    let dest = t.path().join("dest");
    write(&dest.join("etc"), b"a file where the directory goes");
    let out = files(&["get", &r, "latest@vm1:/etc", &s(&dest), "--force"]);
    assert!(
        fs::symlink_metadata(dest.join("etc")).is_ok(),
        "the file in the way was removed and nothing put in its place: {out}"
    );
    out.ok();
    assert_trees_equal(&src.join("etc"), &dest.join("etc"), &how);

    let dest = t.path().join("dest2");
    let elsewhere = t.path().join("elsewhere");
    write(&elsewhere.join("mine"), b"not to be touched");
    fs::create_dir(&dest).unwrap();
    symlink(&elsewhere, dest.join("etc")).unwrap();
    files(&["get", &r, "latest@vm1:/etc", &s(&dest), "--force"]).ok();
    assert!(fs::symlink_metadata(dest.join("etc")).unwrap().is_dir());
    assert_trees_equal(&src.join("etc"), &dest.join("etc"), &how);
    assert_eq!(tessera_tests::dir_entries(&elsewhere), ["mine"]);
}

/// `get` writes each file under a temporary name (`.tessera-part-INODE`) beside it; a tree
/// that holds a file of such a name (a guest's own interrupted `get`, say) must still come
/// back whole, and no restored file may be deleted as if it were a temporary one.
#[test]
fn get_restores_names_that_look_like_its_temporary_files() {
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), b"the file\n");
    write(&src.join("placeholder"), b"looks temporary\n");
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "8M", &[]);
    // Rename `placeholder` (in the image) after the inode of `a`.
    let stat = debugfs(&img, "stat /a");
    let ino: u64 = stat
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("debugfs stat /a: {stat}"));
    let tricky = format!(".tessera-part-{ino}");
    debugfs_w(
        &img,
        &[
            format!("ln /placeholder /{tricky}"),
            "unlink /placeholder".into(),
        ],
    );
    let repo = new_repo(t.path());
    backup_json(&repo, "tp", &[("disk0", &img)]);
    let listing = files_json(&["ls", &s(&repo), "latest@tp:/"]);
    assert_eq!(
        entry_names(&listing),
        [tricky.as_str(), "a", "lost+found"],
        "{listing}"
    );

    let out = t.path().join("out");
    let got = files(&["get", &s(&repo), "latest@tp:/", &s(&out)]);
    let left = tessera_tests::dir_entries(&out);
    assert_eq!(
        left,
        [tricky.clone(), "a".into(), "lost+found".into()],
        "{got}"
    );
    got.ok();
    assert_eq!(fs::read(out.join("a")).unwrap(), b"the file\n");
    assert_eq!(fs::read(out.join(&tricky)).unwrap(), b"looks temporary\n");
}

// ---------------------------------------------------------------------------------------
// §24.3: what `get` promises about what is already at the destination
// ---------------------------------------------------------------------------------------

/// With `--force` an existing file is replaced only by a complete one: a chunk of the file
/// that cannot be read fails `get` with exit 4 and leaves the host file as it was (the same
/// inode, bytes, mode and mtime), with no temporary name beside it. A small file (2 MiB)
/// and a large one (24 MiB: large files may be written another way, through `O_DIRECT`
/// and writer threads), damaged past their first MiB so part of each was already written.
#[test]
fn get_force_keeps_the_existing_file_when_a_chunk_of_the_new_one_is_damaged() {
    let mut gen = DataGen::new(seed("files_force_damaged_file"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    // (name, size, a byte to damage)
    let victims = [
        ("big", 2 * MIB + 77, MIB + 12_345),
        ("huge", 24 * MIB + 77, 13 * MIB + 4321),
    ];
    for (name, size, _) in victims {
        write(
            &src.join(name),
            &gen.bytes(Fill::Random, usize::try_from(size).unwrap()),
        );
    }
    write(&src.join("small.txt"), b"fine\n");
    let img = dir.join("img");
    mkfs_ext(&img, &src, "64M", &["-b", "4096"]);
    let repo = new_repo(dir);
    backup_json(&repo, "fd", &[("disk0", &img)]);
    let r = s(&repo);

    // The control: before the damage, --force does replace an existing file.
    let ctl = dir.join("ctl");
    for (name, _, _) in victims {
        write(&ctl.join(name), b"replace me\n");
        files_json(&[
            "get",
            &r,
            &format!("latest@fd:/{name}"),
            &s(&ctl),
            "--force",
        ]);
        tessera_tests::assert_same_file(&src.join(name), &ctl.join(name));
    }

    // Damage the 64 KiB chunk holding the chosen byte of each.
    for (name, _, hit) in victims {
        let block = bmap(&img, &format!("/{name}"), hit / 4096);
        let chunk = (block * 4096 + hit % 4096) / (64 << 10) * (64 << 10);
        assert_eq!(
            damage_chunk(&repo, &block_digest(&img, chunk, 64 << 10)),
            1,
            "{name}"
        );
    }
    assert_eq!(cat_ok(&repo, "latest@fd:/small.txt"), b"fine\n");

    let dest = dir.join("dest");
    for (i, (name, _, _)) in victims.iter().enumerate() {
        let p = dest.join(name);
        write(&p, format!("the old {name} file\n").as_bytes());
        chmod(&p, 0o640);
        set_mtime(&p, 1_234_567_890 + i64::try_from(i).unwrap());
    }
    write(&dest.join("other"), b"unrelated\n");
    let before = tree_state(&dest);
    for (name, _, hit) in victims {
        // Into the directory, and naming the file itself.
        for target in [dest.clone(), dest.join(name)] {
            let g = files(&[
                "get",
                &r,
                &format!("latest@fd:/{name}"),
                &s(&target),
                "--force",
            ]);
            g.expect_code(4);
            let (start, end) =
                byte_range(&g.stderr).unwrap_or_else(|| panic!("no byte range in {g}"));
            assert!(
                start <= hit && hit < end,
                "range {start}..{end} for damaged byte {hit}: {g}"
            );
            assert!(g.stderr.contains(name), "{g}");
            assert!(
                temp_names(&dest).is_empty(),
                "left behind: {:?}\n{g}",
                temp_names(&dest)
            );
            assert_eq!(
                host_state(&dest.join(name)),
                before[name],
                "the old file changed: {g}"
            );
            assert_eq!(
                fs::read(dest.join(name)).unwrap(),
                format!("the old {name} file\n").as_bytes()
            );
            assert_eq!(
                tessera_tests::dir_entries(&dest),
                ["big", "huge", "other"],
                "{g}"
            );
            assert_eq!(
                tree_state(&dest).remove("other"),
                Some(before["other"].clone()),
                "{g}"
            );
        }
    }
}

/// A tree with a file to damage (`etc/m/big`), files before and after it in walk (name)
/// order, and directories whose modes are not 0700.
fn build_damage_tree(src: &Path, gen: &mut DataGen) {
    write(&src.join("etc/a/one.txt"), b"one\n");
    chmod(&src.join("etc/a/one.txt"), 0o640);
    write(
        &src.join("etc/a/deep/two.bin"),
        &gen.bytes(Fill::Random, 100_000),
    );
    chmod(&src.join("etc/a/deep/two.bin"), 0o600);
    write(&src.join("etc/b/x.txt"), b"x\n");
    write(&src.join("etc/m/aa.txt"), b"before big\n");
    chmod(&src.join("etc/m/aa.txt"), 0o604);
    write(
        &src.join("etc/m/big"),
        &gen.bytes(Fill::Random, usize::try_from(2 * MIB + 77).unwrap()),
    );
    write(&src.join("etc/m/zz.txt"), b"after big\n");
    write(&src.join("etc/z/late.txt"), b"late\n");
    for (d, mode) in [
        ("etc", 0o751),
        ("etc/a", 0o750),
        ("etc/a/deep", 0o705),
        ("etc/b", 0o755),
        ("etc/m", 0o775),
        ("etc/z", 0o711),
    ] {
        chmod(&src.join(d), mode);
    }
    stamp_tree(src, &[]);
}

/// A tree restored with `--force` over an existing tree, when a chunk of one file cannot
/// be read: exit 4; the files restored before it are complete; its old host copy is left
/// as it was; no temporary name is left; and every directory the run made or merged has
/// its source mode and mtime, not 0700. The same into a new destination, where the damaged
/// file's directory was made by the run and was still being written when the read failed.
#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "t, r, f, g, w: the temp dir, repo, and outputs of one scenario"
)]
fn get_force_of_a_tree_keeps_the_damaged_files_old_copy_and_finishes_its_directories() {
    let mut gen = DataGen::new(seed("files_force_damaged_tree"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    build_damage_tree(&src, &mut gen);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "32M", &["-b", "4096"]);
    let repo = new_repo(dir);
    backup_json(&repo, "tr", &[("disk0", &img)]);
    let r = s(&repo);
    let hit = MIB + 4321;
    let block = bmap(&img, "/etc/m/big", hit / 4096);
    let chunk = (block * 4096 + hit % 4096) / (64 << 10) * (64 << 10);
    assert_eq!(damage_chunk(&repo, &block_digest(&img, chunk, 64 << 10)), 1);
    let s_etc = src.join("etc");

    // The host's older copy: directories with other modes, files with other contents,
    // `a/deep`, `b` and `m/aa.txt` missing, a name of its own.
    let dest = dir.join("dest");
    let old = dest.join("etc");
    write(&old.join("a/one.txt"), b"old one\n");
    write(&old.join("m/big"), b"the old big file\n");
    chmod(&old.join("m/big"), 0o600);
    write(&old.join("m/zz.txt"), b"old zz\n");
    write(&old.join("z/late.txt"), b"old late\n");
    write(&old.join("host-only.txt"), b"mine\n");
    for d in ["", "a", "m", "z"] {
        chmod(&old.join(d), 0o777);
    }
    set_mtime(&old.join("m/big"), 1_111_111_111);
    let before = tree_state(&old);

    let g = files(&["get", &r, "latest@tr:/etc", &s(&dest), "--force"]);
    g.expect_code(4);
    assert!(byte_range(&g.stderr).is_some(), "{g}");
    assert!(
        temp_names(&dest).is_empty(),
        "left behind: {:?}\n{g}",
        temp_names(&dest)
    );
    // The damaged file's old copy, and the host's own name, as they were.
    assert_eq!(
        host_state(&old.join("m/big")),
        before["m/big"],
        "the old copy of the damaged file changed: {g}"
    );
    assert_eq!(
        host_state(&old.join("host-only.txt")),
        before["host-only.txt"],
        "{g}"
    );
    // Everything before it in the walk: complete, with modes and times.
    assert_trees_equal(&s_etc.join("a"), &old.join("a"), &TreeCompare::default());
    assert_trees_equal(&s_etc.join("b"), &old.join("b"), &TreeCompare::default());
    tessera_tests::assert_same_file(&s_etc.join("m/aa.txt"), &old.join("m/aa.txt"));
    let (w, m) = (
        fs::metadata(s_etc.join("m/aa.txt")).unwrap(),
        fs::metadata(old.join("m/aa.txt")).unwrap(),
    );
    assert_eq!(
        (m.mode() & 0o7777, m.mtime()),
        (w.mode() & 0o7777, w.mtime()),
        "m/aa.txt"
    );
    // After it: never a partial file (the old copy, or the whole new one).
    for f in ["m/zz.txt", "z/late.txt"] {
        let got = fs::read(old.join(f)).unwrap();
        let new = fs::read(s_etc.join(f)).unwrap();
        assert!(
            host_state(&old.join(f)) == before[f] || got == new,
            "{f}: {got:?}"
        );
    }
    // Every directory the run made (a/deep, b) or merged (the root, a, m): finished.
    for d in ["", "a", "a/deep", "b", "m"] {
        assert_dir_finished(&s_etc.join(d), &old.join(d));
    }
    assert_eq!(
        tessera_tests::dir_entries(&old.join("m")),
        ["aa.txt", "big", "zz.txt"],
        "{g}"
    );

    // Into a new destination: the run makes every directory, and the damaged file's
    // directory is open when the read fails.
    let fresh = dir.join("fresh");
    let g = files(&["get", &r, "latest@tr:/etc", &s(&fresh)]);
    g.expect_code(4);
    assert!(
        temp_names(&fresh).is_empty(),
        "left behind: {:?}\n{g}",
        temp_names(&fresh)
    );
    assert_trees_equal(&s_etc.join("a"), &fresh.join("a"), &TreeCompare::default());
    assert_trees_equal(&s_etc.join("b"), &fresh.join("b"), &TreeCompare::default());
    assert_eq!(
        tessera_tests::dir_entries(&fresh.join("m")),
        ["aa.txt"],
        "{g}"
    );
    for d in ["", "a", "a/deep", "b", "m"] {
        assert_dir_finished(&s_etc.join(d), &fresh.join(d));
    }
}

/// §24.3: a chunk that cannot be read fails `get` with exit 4 "naming the file and the
/// byte range of the file": when a tree is restored, the file is the one being written
/// (`/etc/m/big`), not the tree's root, else the range names no file at all.
#[test]
fn get_of_a_tree_with_a_damaged_chunk_names_the_damaged_file() {
    let mut gen = DataGen::new(seed("files_damaged_tree_name"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    build_damage_tree(&src, &mut gen);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "32M", &["-b", "4096"]);
    let repo = new_repo(dir);
    backup_json(&repo, "nm", &[("disk0", &img)]);
    let hit = MIB + 4321;
    let block = bmap(&img, "/etc/m/big", hit / 4096);
    let chunk = (block * 4096 + hit % 4096) / (64 << 10) * (64 << 10);
    assert_eq!(damage_chunk(&repo, &block_digest(&img, chunk, 64 << 10)), 1);
    // The file on its own is named (the reference is its path).
    files(&[
        "get",
        &s(&repo),
        "latest@nm:/etc/m/big",
        &s(&dir.join("one")),
    ])
    .expect_code(4)
    .stderr_has("/etc/m/big");
    // And within a tree.
    let g = files(&["get", &s(&repo), "latest@nm:/etc", &s(&dir.join("tree"))]);
    g.expect_code(4);
    assert!(byte_range(&g.stderr).is_some(), "{g}");
    assert!(
        g.stderr.contains("m/big"),
        "the damaged file is not named: {g}"
    );
}

/// A symlink where the restored root goes (`DEST/etc -> OTHER`) is an existing name:
/// without `--force` exit 2 and nothing changes, even when OTHER is an empty directory
/// (which a root restore may merge into); with `--force` the symlink itself is replaced by
/// a real directory. Nothing is ever written, chmodded or timed through it; nor through a
/// symlink in the place of a directory or file inside a merged tree.
#[test]
fn get_never_writes_through_a_symlink_where_the_restored_tree_goes() {
    let mut gen = DataGen::new(seed("files_symlink_dest"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = new_repo(dir);
    backup_json(&repo, "sl", &[("disk0", &img)]);
    let r = s(&repo);
    let how = TreeCompare {
        owners: running_as_root(),
        symlink_times: true,
        ..TreeCompare::default()
    };

    // OTHER holds names the tree also has (passwd, sub/); EMPTY holds nothing.
    let other = dir.join("other");
    write(&other.join("passwd"), b"other's passwd\n");
    write(&other.join("sub/keep"), b"keep\n");
    chmod(&other.join("sub"), 0o755);
    chmod(&other, 0o755);
    set_mtime(&other.join("sub"), 1_000_000);
    set_mtime(&other, 2_000_000);
    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    chmod(&empty, 0o755);
    set_mtime(&empty, 3_000_000);
    let other_before = tree_state(&other);
    let empty_before = tree_state(&empty);
    let untouched = |what: &Out| {
        assert_eq!(
            tree_state(&other),
            other_before,
            "written through a symlink to {}: {what}",
            other.display()
        );
        assert_eq!(
            tree_state(&empty),
            empty_before,
            "written through a symlink to {}: {what}",
            empty.display()
        );
    };

    let dest = dir.join("dest");
    fs::create_dir(&dest).unwrap();
    symlink(&other, dest.join("etc")).unwrap();
    let dest2 = dir.join("dest2");
    fs::create_dir(&dest2).unwrap();
    symlink(&empty, dest2.join("etc")).unwrap();

    // Without --force: exit 2, the symlinks and what they point to as they were.
    for d in [&dest, &dest2] {
        let before = tree_state(d);
        let g = files(&["get", &r, "latest@sl:/etc", &s(d)]);
        g.expect_code(2).stderr_has("already exists");
        assert_eq!(tree_state(d), before, "{g}");
        untouched(&g);
    }

    // With --force: the symlink is replaced by the directory; its target is left alone.
    for d in [&dest, &dest2] {
        let g = files(&["get", &r, "latest@sl:/etc", &s(d), "--force"]);
        g.ok();
        let meta = fs::symlink_metadata(d.join("etc")).unwrap();
        assert!(
            meta.is_dir(),
            "{} is a {}: {g}",
            d.join("etc").display(),
            kind_name(meta.file_type())
        );
        assert_trees_equal(&src.join("etc"), &d.join("etc"), &how);
        untouched(&g);
    }

    // Inside a tree merged with --force: symlinks in the place of a directory and a file.
    let dest3 = dir.join("dest3");
    fs::create_dir_all(dest3.join("etc")).unwrap();
    symlink(&other, dest3.join("etc/sub")).unwrap();
    symlink(other.join("passwd"), dest3.join("etc/passwd")).unwrap();
    let g = files(&["get", &r, "latest@sl:/etc", &s(&dest3), "--force"]);
    g.ok();
    assert!(
        fs::symlink_metadata(dest3.join("etc/sub"))
            .unwrap()
            .is_dir(),
        "{g}"
    );
    assert!(
        fs::symlink_metadata(dest3.join("etc/passwd"))
            .unwrap()
            .is_file(),
        "{g}"
    );
    assert_trees_equal(&src.join("etc"), &dest3.join("etc"), &how);
    untouched(&g);
}

/// Without `--force` an existing name is an error (exit 2) and nothing changes: a file at
/// the file's name (named as DEST or found in it), a dangling symlink there (whose target
/// must not be created), a symlink to a file elsewhere, a file where a symlink or a
/// directory goes, a directory where a file goes.
#[test]
fn get_without_force_refuses_an_existing_name_and_changes_nothing() {
    let mut gen = DataGen::new(seed("files_no_force"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = new_repo(dir);
    backup_json(&repo, "nf", &[("disk0", &img)]);
    let r = s(&repo);

    let other = dir.join("other");
    write(&other.join("file"), b"elsewhere\n");
    set_mtime(&other.join("file"), 4_000_000);
    set_mtime(&other, 5_000_000);
    let dest = dir.join("dest");
    write(&dest.join("passwd"), b"my passwd\n");
    chmod(&dest.join("passwd"), 0o600);
    write(&dest.join("custom"), b"my custom file\n");
    write(&dest.join("link"), b"a file where a symlink goes\n");
    write(&dest.join("etc"), b"a file where a directory goes\n");
    write(
        &dest.join("a.conf/inside"),
        b"a directory where a file goes\n",
    );
    symlink(dest.join("nowhere"), dest.join("hostname")).unwrap();
    symlink(other.join("file"), dest.join("to-other")).unwrap();
    for (i, name) in ["passwd", "custom", "link", "etc", "a.conf/inside", "a.conf"]
        .iter()
        .enumerate()
    {
        set_mtime(&dest.join(name), 6_000_000 + i64::try_from(i).unwrap());
    }
    set_mtime(&dest.join("hostname"), 7_000_000);
    set_mtime(&dest.join("to-other"), 7_000_001);
    set_mtime(&dest, 8_000_000);
    let dest_before = tree_state(&dest);
    let other_before = tree_state(&other);

    let at = |name: &str| s(&dest.join(name));
    let cases: Vec<(&str, String)> = vec![
        ("latest@nf:/etc/passwd", s(&dest)),
        ("latest@nf:/etc/passwd", at("passwd")),
        ("latest@nf:/etc/passwd", at("custom")),
        ("latest@nf:/etc/hostname", s(&dest)),
        ("latest@nf:/etc/hostname", at("hostname")),
        ("latest@nf:/etc/passwd", at("to-other")),
        ("latest@nf:/etc/link", s(&dest)),
        ("latest@nf:/etc", s(&dest)),
        ("latest@nf:/etc/a.conf", s(&dest)),
    ];
    for (file, target) in &cases {
        let g = files(&["get", &r, file, target]);
        g.expect_code(2);
        assert_eq!(tree_state(&dest), dest_before, "{g}");
        assert_eq!(tree_state(&other), other_before, "{g}");
        assert!(
            !dest.join("nowhere").exists(),
            "created through a dangling symlink: {g}"
        );
    }
    // The control: with --force the same command does replace the file.
    let g = files(&["get", &r, "latest@nf:/etc/passwd", &s(&dest), "--force"]);
    g.ok();
    assert_eq!(
        fs::read(dest.join("passwd")).unwrap(),
        fs::read(src.join("etc/passwd")).unwrap(),
        "{g}"
    );
}

/// An encrypted repository: without the key nothing is read (exit 6); with it, the files
/// are the same, and `find` (whose hash cache is keyed by chunk ids) agrees with the bytes.
#[test]
fn encrypted_repository_needs_the_key_and_reads_the_same_files() {
    use tessera_tests::encrypted::{backup as enc_backup, init_encrypted, run, PASS};
    let mut gen = DataGen::new(seed("files_encrypted"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    enc_backup(&repo, "enc", "disk0", &img, &[]);
    let r = s(&repo);
    let no_key = run(&["files", "cat", &r, "latest@enc:/etc/passwd"], None);
    assert_no_panic(&no_key.stderr, &no_key.args);
    no_key.expect_code(6);
    let cat = run(&["files", "cat", &r, "latest@enc:/etc/passwd"], Some(PASS));
    cat.ok();
    assert_eq!(
        cat.stdout.as_bytes(),
        fs::read(src.join("etc/passwd")).unwrap()
    );
    let out = t.path().join("out");
    run(&["files", "get", &r, "latest@enc:/", &s(&out)], Some(PASS)).ok();
    assert_trees_equal(
        &src,
        &out,
        &TreeCompare {
            only_in_actual: &["lost+found"],
            owners: running_as_root(),
            symlink_times: true,
            ..TreeCompare::default()
        },
    );
    enc_backup(&repo, "enc", "disk0", &img, &[]);
    let f = run(
        &[
            "files",
            "find",
            &r,
            "--series",
            "enc",
            "/bin/tool",
            "--json",
        ],
        Some(PASS),
    );
    f.ok();
    let v = f.json();
    assert_eq!(
        v["snapshots"][0]["found"][0]["sha256"],
        sha256_file(&src.join("bin/tool")),
        "{f}"
    );
    assert_eq!(v["snapshots"][1]["found"][0]["change"], "unchanged", "{f}");
    assert_eq!(v["hash_cache_hits"], 1, "{f}");
}

// ---------------------------------------------------------------------------------------
// 3. Partitions
// ---------------------------------------------------------------------------------------

/// A filesystem image of exactly `bytes` holding `/id.txt` = `id` and `/only-<id>`.
fn partition_fs(dir: &Path, id: &str, bytes: u64, extra: &[&str]) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("src-{id}"));
    write(&src.join("id.txt"), format!("{id}\n").as_bytes());
    write(
        &src.join(format!("only-{id}/file")),
        id.repeat(1000).as_bytes(),
    );
    let img = dir.join(format!("fs-{id}.img"));
    mkfs_ext(&img, &src, &format!("{}k", bytes / 1024), extra);
    assert_eq!(fs::metadata(&img).unwrap().len(), bytes);
    (src, img)
}

/// Copies `fs_image` into `disk` at byte `at`.
fn place(disk: &Path, at: u64, fs_image: &Path) {
    poke(disk, at, &fs::read(fs_image).unwrap());
}

/// `sgdisk -i N DISK`: (unique GUID, first sector, last sector).
fn sgdisk_info(disk: &Path, n: u32) -> (String, u64, u64) {
    let out = run_tool(
        Command::new("sgdisk")
            .arg("-i")
            .arg(n.to_string())
            .arg(disk),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map_or_else(
            || panic!("no {name:?} in sgdisk -i {n}: {text}"),
            |v| v.trim().split(' ').next().unwrap_or_default().to_string(),
        )
    };
    (
        field("Partition unique GUID:"),
        field("First sector:").parse().unwrap(),
        field("Last sector:").parse().unwrap(),
    )
}

#[test]
fn mbr_logical_and_gpt_partitions_by_number_name_and_guid() {
    let t = TempDir::new().unwrap();
    let dir = t.path();

    // MBR: primaries 1 and 2, an extended partition 3 holding logical 5 and 6.
    let mbr = dir.join("mbr.img");
    fs::File::create(&mbr).unwrap().set_len(40 * MIB).unwrap();
    let table = "label: dos\n\
                 start=2048, size=16384, type=83\n\
                 start=18432, size=8192, type=83\n\
                 start=26624, size=53248, type=5\n\
                 start=28672, size=16384, type=83\n\
                 start=47104, size=16384, type=83\n";
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&mbr)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (install it with scripts/ensure-deps.sh)");
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), table.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    // (number, start sector, sectors, mkfs options)
    let mbr_parts: [(u32, u64, u64, &[&str]); 4] = [
        (1, 2048, 16384, &["-b", "4096"]),
        (2, 18432, 8192, &["-b", "1024"]),
        (5, 28672, 16384, &["-b", "4096"]),
        (6, 47104, 16384, &["-t", "ext2"]),
    ];
    let mut mbr_sources = BTreeMap::new();
    for (n, start, sectors, extra) in mbr_parts {
        let (src, img) = partition_fs(dir, &format!("mbr{n}"), sectors * 512, extra);
        place(&mbr, start * 512, &img);
        mbr_sources.insert(n, src);
    }

    // GPT: named partitions, the third left empty.
    let gpt = dir.join("gpt.img");
    fs::File::create(&gpt).unwrap().set_len(40 * MIB).unwrap();
    run_tool(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+8M", "-c", "1:boot", "-t", "1:8300"])
            .args(["-n", "2:0:+8M", "-c", "2:données", "-t", "2:8300"])
            .args(["-n", "3:0:+4M", "-c", "3:spare", "-t", "3:8300"])
            .arg(&gpt),
    );
    let mut gpt_info = BTreeMap::new();
    for n in 1..=3u32 {
        gpt_info.insert(n, sgdisk_info(&gpt, n));
    }
    let mut gpt_sources = BTreeMap::new();
    for n in 1..=2u32 {
        let (_, first, last) = gpt_info[&n];
        let (src, img) = partition_fs(dir, &format!("gpt{n}"), (last - first + 1) * 512, &[]);
        place(&gpt, first * 512, &img);
        gpt_sources.insert(n, src);
    }
    // The same GPT disk with its primary header destroyed: the backup header at the end
    // of the disk still describes it.
    let gpt2 = dir.join("gpt-backup.img");
    fs::copy(&gpt, &gpt2).unwrap();
    assert_eq!(peek(&gpt2, 512, 8), b"EFI PART");
    poke(&gpt2, 512, &[0u8; 512]);
    // A bare filesystem, no table.
    let (bare_src, bare) = partition_fs(dir, "bare", 8 * MIB, &[]);

    let repo = new_repo(dir);
    backup_json(
        &repo,
        "parts",
        &[
            ("mbr", &mbr),
            ("gpt", &gpt),
            ("gpt2", &gpt2),
            ("bare", &bare),
        ],
    );
    let r = s(&repo);

    // parts: the MBR's numbers, places and contents.
    let p = files_json(&["parts", &r, "latest@parts:mbr"]);
    assert_eq!(p["table"], "mbr", "{p}");
    assert_eq!(p["disk"], "mbr", "{p}");
    let vols = p["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 4, "{p}");
    for (v, (n, start, sectors, _)) in vols.iter().zip(mbr_parts) {
        assert_eq!(v["partition"]["number"], n, "{p}");
        assert_eq!(v["partition"]["start"], start * 512, "{p}");
        assert_eq!(v["partition"]["len"], sectors * 512, "{p}");
        assert_eq!(v["partition"]["type_id"], "83", "{p}");
        assert_eq!(v["holds"], "ext", "{p}");
    }
    // The GPT's, with names and GUIDs.
    let p = files_json(&["parts", &r, "latest@parts:gpt"]);
    assert_eq!(p["table"], "gpt", "{p}");
    let vols = p["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 3, "{p}");
    for ((n, (guid, first, last)), (v, (name, holds))) in gpt_info.iter().zip(vols.iter().zip([
        ("boot", "ext"),
        ("données", "ext"),
        ("spare", "empty"),
    ])) {
        let part = &v["partition"];
        assert_eq!(part["number"], *n, "{p}");
        assert_eq!(part["name"], name, "{p}");
        assert_eq!(part["uuid"], guid.to_lowercase(), "{p}");
        assert_eq!(part["start"], first * 512, "{p}");
        assert_eq!(part["len"], (last - first + 1) * 512, "{p}");
        assert_eq!(
            part["type_id"], "0fc63daf-8483-4772-8e79-3d69d8477de4",
            "{p}"
        );
        assert_eq!(v["holds"], holds, "{p}");
    }
    let p2 = files_json(&["parts", &r, "latest@parts:gpt2"]);
    assert_eq!(
        p2["volumes"], p["volumes"],
        "the backup GPT header describes another table"
    );
    assert_eq!(
        cat_ok(&repo, "latest@parts:gpt2:données:/id.txt"),
        b"gpt2\n"
    );
    let p = files_json(&["parts", &r, "latest@parts:bare"]);
    assert_eq!(p["table"], Value::Null, "{p}");
    assert_eq!(p["volumes"][0]["partition"], Value::Null, "{p}");
    assert_eq!(p["volumes"][0]["holds"], "ext", "{p}");
    files(&["parts", &r, "latest@parts"]).expect_code(2);

    // Files by partition number, primary and logical.
    for (n, _, _, _) in mbr_parts {
        assert_eq!(
            cat_ok(&repo, &format!("latest@parts:mbr:{n}:/id.txt")),
            format!("mbr{n}\n").as_bytes()
        );
        let ls = files_json(&["ls", &r, &format!("latest@parts:mbr:{n}:/")]);
        assert_eq!(
            entry_names(&ls),
            [
                "id.txt".to_string(),
                "lost+found".into(),
                format!("only-mbr{n}")
            ],
            "{ls}"
        );
        assert!(
            ls["volume"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":mbr:{n}")),
            "{ls}"
        );
    }
    // A logical partition's whole tree.
    let out6 = dir.join("out6");
    files_json(&["get", &r, "latest@parts:mbr:6:/", &s(&out6)]);
    assert_trees_equal(
        &mbr_sources[&6],
        &out6,
        &TreeCompare {
            only_in_actual: &["lost+found"],
            owners: running_as_root(),
            ..TreeCompare::default()
        },
    );
    // The extended partition is no volume; leaving the partition out names the choices.
    files(&["ls", &r, "latest@parts:mbr:3:/"])
        .expect_code(2)
        .stderr_has("1, 2, 5, 6");
    files(&["ls", &r, "latest@parts:mbr:/"])
        .expect_code(2)
        .stderr_has("several partitions")
        .stderr_has("1, 2, 5, 6");
    files(&["cat", &r, "latest@parts:mbr:7:/id.txt"]).expect_code(2);

    // GPT by number, by name, by unique GUID in either case.
    for n in 1..=2u32 {
        let want = format!("gpt{n}\n");
        let name = if n == 1 { "boot" } else { "données" };
        let guid = &gpt_info[&n].0;
        for part in [
            n.to_string(),
            name.to_string(),
            guid.to_lowercase(),
            guid.to_uppercase(),
        ] {
            assert_eq!(
                cat_ok(&repo, &format!("latest@parts:gpt:{part}:/id.txt")),
                want.as_bytes(),
                "partition {part}"
            );
        }
    }
    files(&["ls", &r, "latest@parts:gpt:/"])
        .expect_code(2)
        .stderr_has("1 (boot), 2 (données), 3 (spare)");
    files(&["ls", &r, "latest@parts:gpt:spare:/"])
        .expect_code(5)
        .stderr_has("zeros");
    files(&["ls", &r, "latest@parts:gpt:nosuch:/"])
        .expect_code(2)
        .stderr_has("nosuch");
    // The bare filesystem needs no partition, and takes none.
    assert_eq!(cat_ok(&repo, "latest@parts:bare:/id.txt"), b"bare\n");
    assert_eq!(
        cat_ok(&repo, "latest@parts:bare:/only-bare/file"),
        fs::read(bare_src.join("only-bare/file")).unwrap()
    );
    files(&["ls", &r, "latest@parts:bare:1:/"])
        .expect_code(2)
        .stderr_has("no partition table");
    // Several disks: the disk must be named.
    files(&["ls", &r, "latest@parts:/"]).expect_code(2);

    // find with --disk and --part.
    let f = files_json(&[
        "find",
        &r,
        "--series",
        "parts",
        "--disk",
        "gpt",
        "--part",
        "données",
        "/only-gpt2/file",
    ]);
    let found = &f["snapshots"][0]["found"][0];
    assert_eq!(found["change"], "added", "{f}");
    assert_eq!(
        found["sha256"],
        sha256_file(&gpt_sources[&2].join("only-gpt2/file")),
        "{f}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. find across generations
// ---------------------------------------------------------------------------------------

/// A one-path `files find` report's change per snapshot (`-` where the path is absent).
fn change_per_snapshot(report: &Value) -> Vec<String> {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["found"]
                .as_array()
                .unwrap()
                .first()
                .map_or("-".to_string(), |x| {
                    x["change"].as_str().unwrap().to_string()
                })
        })
        .collect()
}

/// Per snapshot: the (path, content) versions expected and how each changed.
type Expected<'a> = Vec<(&'a (&'a str, Vec<u8>), &'a str)>;

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "t, r, f, g, w: the temp dir, repo, and outputs of one scenario"
)]
fn find_reports_changes_across_generations_with_content_hashes() {
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    let v1 = b"root:x:0:0:root:/root:/bin/bash\n".to_vec();
    let v2 = b"root:x:0:0:root:/root:/bin/zsh\nalice:x:1000:1000::/home/alice:/bin/sh\n".to_vec();
    let v3 = b"root:x:0:0:root:/root:/bin/zsh\nalice:x:1000:1000::/home/alice:/bin/bash\n".to_vec();
    write(&src.join("etc/passwd"), &v1);
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost\n");
    write(&src.join("etc/a.conf"), b"a = 1\n");
    write(&src.join("etc/old.conf"), b"old = yes\n");
    write(&src.join("etc/sub/b.conf"), b"b = 2\n");
    symlink("../a.conf", src.join("etc/sub/link.conf")).unwrap();
    write(&src.join("var/log/x.log"), &vec![b'l'; 50_000]);
    stamp_tree(&src, &[]);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = new_repo(dir);
    let r = s(&repo);
    let local = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        s(&p)
    };
    let new_conf = b"new = 3\n".to_vec();
    // What each generation does to the image before its backup.
    let steps: Vec<Vec<String>> = vec![
        vec![],
        vec![
            "cd /etc".into(),
            "rm passwd".into(),
            format!("write {} passwd", local("v2", &v2)),
        ],
        vec![
            "cd /etc".into(),
            format!("write {} new.conf", local("new", &new_conf)),
        ],
        vec!["rm /etc/old.conf".into()],
        vec![
            "cd /etc".into(),
            "rm passwd".into(),
            format!("write {} passwd", local("v3", &v3)),
        ],
        vec![],
    ];
    let mut ids = Vec::new();
    for step in &steps {
        if !step.is_empty() {
            debugfs_w(&img, step);
        }
        ids.push(snapshot_id(&backup_json(&repo, "gens", &[("disk0", &img)])));
    }
    // The image really changed as planned.
    assert_eq!(debugfs(&img, "cat /etc/passwd").as_bytes(), v3.as_slice());

    // One path.
    let f = files_json(&["find", &r, "--series", "gens", "/etc/passwd"]);
    let snaps = f["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 6, "{f}");
    let want = [
        ("added", &v1),
        ("changed", &v2),
        ("unchanged", &v2),
        ("unchanged", &v2),
        ("changed", &v3),
        ("unchanged", &v3),
    ];
    for (i, (snap, (change, content))) in snaps.iter().zip(want).enumerate() {
        assert_eq!(
            snap["snapshot"],
            ids[i].as_str(),
            "generation {}: {f}",
            i + 1
        );
        assert!(snap.get("error").is_none(), "generation {}: {f}", i + 1);
        let found = snap["found"].as_array().unwrap();
        assert_eq!(found.len(), 1, "generation {}: {f}", i + 1);
        assert_eq!(found[0]["path"], "/etc/passwd");
        assert_eq!(found[0]["kind"], "file");
        assert_eq!(found[0]["change"], change, "generation {}: {f}", i + 1);
        assert_eq!(
            found[0]["size"],
            content.len() as u64,
            "generation {}: {f}",
            i + 1
        );
        assert_eq!(
            found[0]["sha256"],
            sha_hex(content),
            "generation {}: {f}",
            i + 1
        );
        assert_eq!(
            snap["removed"],
            serde_json::json!([]),
            "generation {}: {f}",
            i + 1
        );
    }
    assert_eq!(f["versions"], 3, "{f}");
    assert_eq!(f["hashed"], 6, "{f}");
    assert_eq!(f["errors"], 0, "{f}");
    // Generation 6 is generation 5's very image: its file cannot have been hashed again.
    let hits = f["hash_cache_hits"].as_u64().unwrap();
    assert!((1..=3).contains(&hits), "{f}");
    // The first snapshot's mtime is the source's.
    assert_eq!(
        snaps[0]["found"][0]["mtime"]["secs"],
        fs::metadata(src.join("etc/passwd")).unwrap().mtime()
    );

    // A path that comes and one that goes.
    let f = files_json(&["find", &r, "--series", "gens", "/etc/new.conf"]);
    assert_eq!(
        change_per_snapshot(&f),
        ["-", "-", "added", "unchanged", "unchanged", "unchanged"],
        "{f}"
    );
    let f = files_json(&["find", &r, "--series", "gens", "/etc/old.conf"]);
    let snaps = f["snapshots"].as_array().unwrap();
    assert_eq!(
        change_per_snapshot(&f),
        ["added", "unchanged", "unchanged", "-", "-", "-"],
        "{f}"
    );
    assert_eq!(
        snaps[3]["removed"],
        serde_json::json!(["/etc/old.conf"]),
        "{f}"
    );
    assert_eq!(snaps[4]["removed"], serde_json::json!([]), "{f}");

    // Names matching a glob, anywhere.
    let f = files_json(&["find", &r, "--series", "gens", "--name", "*.conf", "--all"]);
    let snaps = f["snapshots"].as_array().unwrap();
    let a = ("/etc/a.conf", b"a = 1\n".to_vec());
    let old = ("/etc/old.conf", b"old = yes\n".to_vec());
    let b = ("/etc/sub/b.conf", b"b = 2\n".to_vec());
    let new = ("/etc/new.conf", new_conf.clone());
    // A symlink's hash is its target's text.
    let link = ("/etc/sub/link.conf", b"../a.conf".to_vec());
    let expect: [Expected<'_>; 6] = [
        vec![
            (&a, "added"),
            (&old, "added"),
            (&b, "added"),
            (&link, "added"),
        ],
        vec![
            (&a, "unchanged"),
            (&old, "unchanged"),
            (&b, "unchanged"),
            (&link, "unchanged"),
        ],
        vec![
            (&a, "unchanged"),
            (&new, "added"),
            (&old, "unchanged"),
            (&b, "unchanged"),
            (&link, "unchanged"),
        ],
        vec![
            (&a, "unchanged"),
            (&new, "unchanged"),
            (&b, "unchanged"),
            (&link, "unchanged"),
        ],
        vec![
            (&a, "unchanged"),
            (&new, "unchanged"),
            (&b, "unchanged"),
            (&link, "unchanged"),
        ],
        vec![
            (&a, "unchanged"),
            (&new, "unchanged"),
            (&b, "unchanged"),
            (&link, "unchanged"),
        ],
    ];
    // Without --all only what was added or changed is listed; the rest is counted.
    let changes = files_json(&["find", &r, "--series", "gens", "--name", "*.conf"]);
    for (i, (snap, want)) in changes["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&expect)
        .enumerate()
    {
        let mut got: Vec<(&str, &str)> = snap["found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["path"].as_str().unwrap(), x["change"].as_str().unwrap()))
            .collect();
        got.sort_unstable();
        let mut listed: Vec<(&str, &str)> = want
            .iter()
            .filter(|(_, ch)| *ch != "unchanged")
            .map(|((p, _), ch)| (*p, *ch))
            .collect();
        listed.sort_unstable();
        assert_eq!(got, listed, "generation {}: {changes}", i + 1);
        let unchanged = want.iter().filter(|(_, ch)| *ch == "unchanged").count();
        assert_eq!(
            snap["unchanged"],
            unchanged,
            "generation {}: {changes}",
            i + 1
        );
        assert_eq!(snap["removed"], snaps[i]["removed"], "{changes}");
    }
    assert_eq!(changes["versions"], f["versions"], "{changes}");
    let mut total = 0;
    for (i, (snap, want)) in snaps.iter().zip(&expect).enumerate() {
        let mut got: Vec<(String, String, String)> = snap["found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["path"].as_str().unwrap().to_string(),
                    x["change"].as_str().unwrap().to_string(),
                    x["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String, String)> = want
            .iter()
            .map(|((p, c), ch)| ((*p).to_string(), (*ch).to_string(), sha_hex(c)))
            .collect();
        want.sort();
        assert_eq!(got, want, "generation {}: {f}", i + 1);
        total += want.iter().filter(|(p, _, _)| !p.contains("link")).count() as u64;
    }
    let kinds: Vec<&str> = snaps[0]["found"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["path"] == "/etc/sub/link.conf")
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["symlink"], "{f}");
    assert_eq!(
        snaps[3]["removed"],
        serde_json::json!(["/etc/old.conf"]),
        "{f}"
    );
    assert_eq!(f["hashed"], total, "{f}");
    // Every file of generation 6 (generation 5's image) came from the cache.
    assert!(f["hash_cache_hits"].as_u64().unwrap() >= 3, "{f}");
    let f = files_json(&["find", &r, "--series", "gens", "--name", "*.log"]);
    assert_eq!(
        f["snapshots"][0]["found"][0]["path"], "/var/log/x.log",
        "{f}"
    );
    assert_eq!(
        f["snapshots"][0]["found"][0]["sha256"],
        sha_hex(&vec![b'l'; 50_000]),
        "{f}"
    );

    // Text output; a series that does not exist.
    let text = files(&["find", &r, "--series", "gens", "/etc/passwd"]);
    text.ok();
    assert_eq!(
        text.stdout
            .lines()
            .filter(|l| l.contains(" changed "))
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.stdout
            .lines()
            .filter(|l| l.contains(" added "))
            .count(),
        1,
        "{text}"
    );
    files(&["find", &r, "--series", "nope", "/etc/passwd"]).expect_code(2);
    files(&["find", &r, "--series", "gens"]).expect_code(2);
}

// ---------------------------------------------------------------------------------------
// 5. ext variants
// ---------------------------------------------------------------------------------------

fn build_variant_tree(src: &Path, gen: &mut DataGen) {
    write(&src.join("empty"), b"");
    write(&src.join("tiny"), b"ten bytes\n");
    write(&src.join("f59"), &gen.bytes(Fill::Random, 59));
    write(&src.join("f60"), &gen.bytes(Fill::Random, 60));
    write(&src.join("f61"), &gen.bytes(Fill::Random, 61));
    write(&src.join("f120"), &gen.bytes(Fill::Random, 120));
    write(&src.join("f4096"), &gen.bytes(Fill::Random, 4096));
    write(&src.join("random-70k"), &gen.bytes(Fill::Random, 70_000));
    // Past 12 + 256 blocks of 1 KiB: the double-indirect map.
    write(&src.join("text-400k"), &gen.bytes(Fill::Text, 400_000));
    // Data at 80 MiB: past 12 + 256 + 256² blocks of 1 KiB, the triple-indirect map.
    sparse_file(
        &src.join("holes"),
        80 * (1 << 20) + 5000,
        &[
            (0, gen.bytes(Fill::Random, 3000)),
            (100 * 1024, gen.bytes(Fill::Random, 5000)),
            (3 << 20, gen.bytes(Fill::Text, 20_000)),
            (80 << 20, gen.bytes(Fill::Random, 5000)),
        ],
    );
    // Many separate runs: more extents than an inode holds, so an extent tree of depth 1.
    let islands: Vec<(u64, Vec<u8>)> = (0..24u64)
        .map(|i| (i * 3 * 4096, gen.bytes(Fill::Random, 4096)))
        .collect();
    // (Ending with data: `mkfs.ext4 -O inline_data -d` 1.47.0 drops a trailing hole from
    // the size it records.)
    sparse_file(&src.join("fragmented"), (23 * 3 + 1) * 4096, &islands);
    // 400 runs of 1 KiB: on 1 KiB blocks more extents than one level of index blocks
    // holds (4 × 84), so an extent tree of depth 2.
    let islands: Vec<(u64, Vec<u8>)> = (0..400u64)
        .map(|i| (i * 3072, gen.bytes(Fill::Random, 1024)))
        .collect();
    sparse_file(&src.join("very-fragmented"), 399 * 3072 + 1024, &islands);
    write(&src.join("smalldir/one"), b"1\n");
    write(&src.join("smalldir/two"), b"2\n");
    for i in 0..300 {
        write(
            &src.join(format!("bigdir/entry-number-{i:04}")),
            format!("{i}\n").as_bytes(),
        );
    }
    symlink("tiny", src.join("sym-short")).unwrap();
    symlink("s".repeat(59), src.join("sym59")).unwrap();
    symlink("S".repeat(60), src.join("sym60")).unwrap();
    symlink("long/".repeat(40), src.join("sym200")).unwrap();
    write(&src.join("hl-a"), b"linked\n");
    fs::hard_link(src.join("hl-a"), src.join("smalldir/hl-b")).unwrap();
    mkfifo(&src.join("fifo"));
    let mut deep = src.join("deep");
    for level in 0..10 {
        deep.push(format!("d{level}"));
    }
    write(&deep.join("leaf"), b"leaf\n");
    write(&src.join("modes/suid"), b"s");
    chmod(&src.join("modes/suid"), 0o4750);
    stamp_tree(src, &[("tiny", -1_000_000)]);
}

/// The `Flags:` value of `debugfs stat PATH`.
fn inode_flags(image: &Path, path: &str) -> u64 {
    let text = debugfs(image, &format!("stat {path}"));
    let flags = text
        .split("Flags: 0x")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no flags in debugfs stat {path}: {text}"));
    u64::from_str_radix(flags, 16).unwrap()
}

#[test]
fn ext2_ext3_small_block_and_inline_data_variants_read_back_equal() {
    let mut gen = DataGen::new(seed("files_variants"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    build_variant_tree(&src, &mut gen);
    let variants: [(&str, &[&str]); 5] = [
        ("ext2", &["-t", "ext2", "-b", "1024", "-I", "128"]),
        ("ext3", &["-t", "ext3", "-b", "4096"]),
        ("ext4k1", &["-t", "ext4", "-b", "1024"]),
        ("inline", &["-t", "ext4", "-b", "4096", "-O", "inline_data"]),
        // meta_bg: group descriptors inside each meta group (16 groups of 1 MiB with
        // 64-byte descriptors on 1 KiB blocks), with inodes spread over 40 groups.
        (
            "metabg",
            &[
                "-t",
                "ext4",
                "-b",
                "1024",
                "-g",
                "1024",
                "-N",
                "640",
                "-O",
                "meta_bg,^resize_inode",
            ],
        ),
    ];
    let mut images = Vec::new();
    for (name, extra) in variants {
        let img = dir.join(format!("{name}.img"));
        mkfs_ext(&img, &src, "40M", extra);
        images.push((name, img));
    }
    // Hashed (htree) directories on the 1 KiB ext4: e2fsck -D indexes every directory.
    let ext4k1 = &images[2].1;
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y", "-D"])
        .arg(ext4k1)
        .output()
        .expect("e2fsck");
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck -fyD: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // The images hold what they are meant to exercise.
    assert!(
        debugfs(&images[0].1, "stat /holes").contains("(TIND)"),
        "no triple-indirect block in ext2"
    );
    assert_eq!(
        inode_flags(&images[0].1, "/text-400k") & 0x8_0000,
        0,
        "ext2 uses extents?"
    );
    assert_eq!(
        inode_flags(&images[1].1, "/text-400k") & 0x8_0000,
        0,
        "ext3 uses extents?"
    );
    assert!(
        debugfs(ext4k1, "stat /fragmented").contains("ETB"),
        "no extent tree block in ext4"
    );
    let tree = debugfs(ext4k1, "ex /very-fragmented");
    assert!(tree.contains(" 0/ 2 "), "no extent tree of depth 2: {tree}");
    let metabg = &images[4].1;
    let imap = debugfs(metabg, "imap /bigdir/entry-number-0299");
    let group: u64 = imap
        .split("block group ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("debugfs imap: {imap}"));
    assert!(
        group >= 16,
        "the inode is in group {group}, inside the first meta group"
    );
    assert_ne!(
        inode_flags(ext4k1, "/bigdir") & 0x1000,
        0,
        "bigdir is not hashed after e2fsck -D"
    );
    let inline = &images[3].1;
    for p in ["/tiny", "/f120", "/smalldir", "/f59"] {
        assert_ne!(inode_flags(inline, p) & 0x1000_0000, 0, "{p} is not inline");
    }
    assert!(debugfs(inline, "stat /f120").contains("Size of inline data: 120"));

    let repo = new_repo(dir);
    let disks: Vec<(&str, &Path)> = images.iter().map(|(n, p)| (*n, p.as_path())).collect();
    backup_json(&repo, "variants", &disks);
    let r = s(&repo);
    for (name, _) in &images {
        let out = dir.join(format!("out-{name}"));
        files_json(&["get", &r, &format!("latest@variants:{name}:/"), &s(&out)]);
        assert_trees_equal(
            &src,
            &out,
            &TreeCompare {
                only_in_actual: &["lost+found"],
                owners: running_as_root(),
                symlink_times: true,
                ..TreeCompare::default()
            },
        );
        let big = files_json(&["ls", &r, &format!("latest@variants:{name}:/bigdir")]);
        assert_eq!(
            entry_names(&big),
            source_names(&src.join("bigdir")),
            "{name}"
        );
        assert_eq!(
            cat_ok(&repo, &format!("latest@variants:{name}:/f120")),
            fs::read(src.join("f120")).unwrap(),
            "{name}"
        );
        assert_eq!(
            files_json(&["stat", &r, &format!("latest@variants:{name}:/sym60")])["target"],
            "S".repeat(60),
            "{name}"
        );
        let holes = out.join("holes");
        assert!(
            allocated_bytes(&holes) < 1 << 20,
            "{name}: holes restored as data"
        );
    }
    // 80 MiB through stdout, holes as zeros.
    assert!(cat_ok(&repo, "latest@variants:ext2:/holes") == fs::read(src.join("holes")).unwrap());
}

/// ext4 with bigalloc (clusters of 4 blocks): extents still name blocks, so the files read
/// like any ext4's.
#[test]
fn ext4_bigalloc_reads_back_equal() {
    let mut gen = DataGen::new(seed("files_bigalloc"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_variant_tree(&src, &mut gen);
    let img = t.path().join("bigalloc.img");
    mkfs_ext(
        &img,
        &src,
        "64M",
        &["-t", "ext4", "-b", "4096", "-O", "bigalloc", "-C", "16384"],
    );
    let repo = new_repo(t.path());
    backup_json(&repo, "ba", &[("disk0", &img)]);
    let out = t.path().join("out");
    files_json(&["get", &s(&repo), "latest@ba:/", &s(&out)]);
    assert_trees_equal(
        &src,
        &out,
        &TreeCompare {
            only_in_actual: &["lost+found"],
            owners: running_as_root(),
            symlink_times: true,
            ..TreeCompare::default()
        },
    );
}

/// Paths resolve as the kernel resolves them: `..` after a non-directory, and a trailing
/// slash after one, are "not a directory" (`cat /etc/passwd/../hostname` fails on Linux).
#[test]
fn path_resolution_refuses_what_the_kernel_refuses() {
    let mut gen = DataGen::new(seed("files_paths"));
    let t = TempDir::new().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_small_etc(&src, &mut gen);
    // The oracle: the kernel, on the source tree.
    assert!(fs::read(src.join("etc/passwd/../hostname")).is_err());
    assert!(fs::read(src.join("etc/passwd/")).is_err());
    let img = t.path().join("img");
    mkfs_ext(&img, &src, "16M", &[]);
    let repo = new_repo(t.path());
    backup_json(&repo, "vm1", &[("disk0", &img)]);
    // What does resolve.
    assert_eq!(cat_ok(&repo, "latest@vm1:/etc/sub/../hostname"), b"vm1\n");
    assert_eq!(cat_ok(&repo, "latest@vm1:/../../etc//hostname"), b"vm1\n");
    // What does not.
    let out = cat(&repo, "latest@vm1:/etc/passwd/../hostname");
    assert_eq!(
        out.stdout, b"",
        "cat went through a regular file: {}",
        out.stderr
    );
    out.expect_code(2);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);
    let out = cat(&repo, "latest@vm1:/etc/passwd/");
    out.expect_code(2);
}

/// Unwritten (preallocated) extents read as zeros even where their blocks hold a deleted
/// file's bytes; times past 2038 (epoch bits) and nanoseconds come back exactly.
#[test]
fn unwritten_extents_read_as_zeros_and_times_keep_epoch_bits_and_nanoseconds() {
    let mut gen = DataGen::new(seed("files_unwritten"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    write(&src.join("stale"), &gen.bytes(Fill::Random, 256 * 1024));
    let data = gen.bytes(Fill::Random, 8192);
    write(&src.join("mixed"), &data);
    write(&src.join("keep"), b"kept\n");
    set_mtime(&src.join("keep"), 1_700_000_000);
    let img = dir.join("img");
    mkfs_ext(&img, &src, "16M", &["-b", "4096"]);
    let empty = dir.join("empty");
    fs::write(&empty, b"").unwrap();
    let nanos: u64 = 123_456_789;
    debugfs_w(
        &img,
        &[
            "rm /stale".into(),
            format!("write {} prealloc", s(&empty)),
            "fallocate /prealloc 0 15".into(),
            "sif /prealloc size 65536".into(),
            "fallocate /mixed 2 9".into(),
            "sif /mixed size 40960".into(),
            // Epoch bits 1 (2^32 seconds later) and nanoseconds.
            format!("sif /keep mtime_extra {}", (nanos << 2) | 1),
        ],
    );
    for f in ["/prealloc", "/mixed"] {
        let ex = debugfs(&img, &format!("ex {f}"));
        assert!(ex.contains("Uninit"), "{f} has no unwritten extent: {ex}");
    }
    // The unwritten blocks hold old bytes, not zeros (else the test proves nothing).
    let ex = debugfs(&img, "ex /prealloc");
    let first: u64 = ex
        .lines()
        .find(|l| l.contains("Uninit"))
        .and_then(|l| {
            // "LEVEL ENTRIES  LOGICAL - LOGICAL  PHYSICAL - PHYSICAL  LENGTH  FLAGS"
            let words: Vec<&str> = l.split_whitespace().collect();
            let dash = words.iter().position(|w| *w == "-")?;
            words.get(dash + 2)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{ex}"));
    assert!(
        peek(&img, first * 4096, 4096).iter().any(|b| *b != 0),
        "the preallocated blocks are zero on disk"
    );

    let repo = new_repo(dir);
    backup_json(&repo, "u", &[("disk0", &img)]);
    let r = s(&repo);
    assert_eq!(cat_ok(&repo, "latest@u:/prealloc"), vec![0u8; 65536]);
    let mut want = data.clone();
    want.resize(40960, 0);
    assert_eq!(cat_ok(&repo, "latest@u:/mixed"), want);
    let keep = files_json(&["stat", &r, "latest@u:/keep"]);
    assert_eq!(
        keep["mtime"]["secs"],
        1_700_000_000i64 + (1i64 << 32),
        "{keep}"
    );
    assert_eq!(keep["mtime"]["nanos"], nanos, "{keep}");
    let out = dir.join("out");
    files_json(&["get", &r, "latest@u:/", &s(&out)]);
    assert_eq!(fs::read(out.join("prealloc")).unwrap(), vec![0u8; 65536]);
    assert!(
        allocated_bytes(&out.join("prealloc")) == 0,
        "unwritten extents restored as data"
    );
    assert_eq!(fs::read(out.join("mixed")).unwrap(), want);
    let meta = fs::metadata(out.join("keep")).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_700_000_000 + (1 << 32), i64::try_from(nanos).unwrap())
    );
    let f = files_json(&["find", &r, "--series", "u", "/prealloc"]);
    assert_eq!(
        f["snapshots"][0]["found"][0]["sha256"],
        sha_hex(&vec![0u8; 65536]),
        "{f}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. What cannot be read
// ---------------------------------------------------------------------------------------

#[test]
fn unsupported_empty_and_corrupt_volumes_fail_cleanly() {
    let mut gen = DataGen::new(seed("files_bad_input"));
    let t = TempDir::new().unwrap();
    let dir = t.path();

    let xfs = dir.join("xfs.img");
    fs::File::create(&xfs).unwrap().set_len(300 * MIB).unwrap();
    run_tool(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&xfs));
    let ntfs = dir.join("ntfs.img");
    fs::File::create(&ntfs).unwrap().set_len(8 * MIB).unwrap();
    run_tool(
        Command::new("mkfs.ntfs")
            .args(["-F", "-Q", "-q"])
            .arg(&ntfs),
    );
    let zeros = dir.join("zeros.img");
    fs::File::create(&zeros).unwrap().set_len(4 * MIB).unwrap();

    // A good ext4 and corrupted copies of it.
    let src = dir.join("src");
    write(&src.join("victim"), &gen.bytes(Fill::Random, 12_000));
    write(&src.join("ok.txt"), b"fine\n");
    write(&src.join("a/b/c.txt"), b"c\n");
    symlink("l2", src.join("l1")).unwrap();
    symlink("l1", src.join("l2")).unwrap();
    let good = dir.join("good.img");
    mkfs_ext(&good, &src, "16M", &["-b", "4096"]);
    let bs = ext_block_size(&good);
    let victim_inode = inode_offset(&good, "/victim");
    let root_inode = inode_offset(&good, "<2>");
    let root_dir_block = bmap(&good, "/", 0);
    let copy = |name: &str| {
        let p = dir.join(format!("{name}.img"));
        fs::copy(&good, &p).unwrap();
        p
    };
    let badmagic = copy("badmagic");
    assert_eq!(peek(&badmagic, 1080, 2), [0x53, 0xef]);
    poke(&badmagic, 1080, &[0, 0]);
    let badroot = copy("badroot");
    poke(&badroot, root_inode, &[0, 0]);
    let badextent = copy("badextent");
    assert_eq!(
        peek(&badextent, victim_inode + 0x28, 2),
        [0x0a, 0xf3],
        "victim has no extent header"
    );
    poke(&badextent, victim_inode + 0x28, &[0x0b, 0xad]);
    let outside = copy("outside");
    // The first extent's ee_start_hi: 12-byte header, then ee_block(4) ee_len(2).
    poke(&outside, victim_inode + 0x28 + 12 + 6, &[0xff, 0x7f]);
    let baddir = copy("baddir");
    // The root directory's first entry (`.`): a record length of 3.
    poke(&baddir, root_dir_block * bs + 4, &[3, 0]);
    let truncated = dir.join("truncated.img");
    fs::write(&truncated, peek(&good, 0, 8 * MIB as usize)).unwrap();
    let dirty = copy("dirty");
    debugfs_w(&dirty, &["feature needs_recovery".into()]);
    let looped = copy("looped");
    debugfs_w(&looped, &["link /a /a/b/up".into()]);
    // A partition table whose partition runs past the end of the disk.
    let badtable = dir.join("badtable.img");
    fs::File::create(&badtable)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&badtable)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(
        &mut sfdisk.stdin.take().unwrap(),
        b"label: dos\nstart=2048, size=4096, type=83\n",
    )
    .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    // 4096 sectors from 2048 would end at 3 MiB; claim 40000 sectors instead.
    poke(&badtable, 446 + 12, &40_000u32.to_le_bytes());

    let repo = new_repo(dir);
    let disks: Vec<(&str, &Path)> = [
        ("xfs", &xfs),
        ("ntfs", &ntfs),
        ("zeros", &zeros),
        ("good", &good),
        ("badmagic", &badmagic),
        ("badroot", &badroot),
        ("badextent", &badextent),
        ("outside", &outside),
        ("baddir", &baddir),
        ("truncated", &truncated),
        ("looped", &looped),
        ("badtable", &badtable),
        ("dirty", &dirty),
    ]
    .iter()
    .map(|(n, p)| (*n, p.as_path()))
    .collect();
    backup_json(&repo, "bad", &disks);
    let r = s(&repo);
    let at = |disk: &str, path: &str| format!("latest@bad:{disk}:{path}");

    // Refused by name, with exit 5; `parts` says what the volume holds.
    files(&["ls", &r, &at("xfs", "/")])
        .expect_code(5)
        .stderr_has("XFS");
    // An empty NTFS volume opens (tests/tests/files_ntfs.rs reads real ones): a missing
    // file in it is a usage error naming the path.
    files(&["cat", &r, &at("ntfs", "/x")])
        .expect_code(2)
        .stderr_has("no such file");
    files(&["ls", &r, &at("zeros", "/")])
        .expect_code(5)
        .stderr_has("zeros");
    assert_eq!(
        files_json(&["parts", &r, "latest@bad:xfs"])["volumes"][0]["holds"],
        "xfs"
    );
    assert_eq!(
        files_json(&["parts", &r, "latest@bad:ntfs"])["volumes"][0]["holds"],
        "ntfs"
    );
    assert_eq!(
        files_json(&["parts", &r, "latest@bad:zeros"])["volumes"][0]["holds"],
        "empty"
    );
    let json = files(&["ls", &r, &at("xfs", "/"), "--json"]);
    json.expect_code(5);
    assert_eq!(json.json()["ok"], false, "{json}");
    assert_eq!(json.json()["kind"], "refused", "{json}");

    // The good one reads; a symlink loop is refused.
    assert_eq!(cat_ok(&repo, &at("good", "/ok.txt")), b"fine\n");
    files(&["cat", &r, &at("good", "/l1")])
        .expect_code(1)
        .stderr_has("symlinks");
    files(&["ls", &r, &at("good", "/l1/x")])
        .expect_code(1)
        .stderr_has("symlinks");
    files_json(&["stat", &r, &at("good", "/l1")]);

    // Malformed filesystems: exit 1 and a message saying what is wrong; never a panic.
    files(&["ls", &r, &at("badmagic", "/")])
        .expect_code(5)
        .stderr_has("no filesystem");
    files(&["ls", &r, &at("badroot", "/")])
        .expect_code(1)
        .stderr_has("inode 2");
    files(&["ls", &r, &at("truncated", "/")])
        .expect_code(1)
        .stderr_has("do not fit");
    files(&["ls", &r, &at("baddir", "/")])
        .expect_code(1)
        .stderr_has("malformed entry");
    files(&["get", &r, &at("baddir", "/"), &s(&dir.join("out-baddir"))]).expect_code(1);
    // A broken extent tree spoils one file, not the listing.
    assert!(entry_names(&files_json(&["ls", &r, &at("badextent", "/")]))
        .contains(&"victim".to_string()));
    files(&["cat", &r, &at("badextent", "/victim")])
        .expect_code(1)
        .stderr_has("extent");
    files(&[
        "get",
        &r,
        &at("badextent", "/"),
        &s(&dir.join("out-badextent")),
    ])
    .expect_code(1)
    .stderr_has("extent");
    files(&["cat", &r, &at("outside", "/victim")])
        .expect_code(1)
        .stderr_has("outside the filesystem");
    files(&[
        "find", &r, "--series", "bad", "--disk", "outside", "/victim",
    ])
    .expect_code(1);
    // A directory linked into itself: listed where asked, refused when walked.
    assert_eq!(
        entry_names(&files_json(&["ls", &r, &at("looped", "/a/b/up")])),
        ["b"]
    );
    files(&["get", &r, &at("looped", "/"), &s(&dir.join("out-looped"))])
        .expect_code(1)
        .stderr_has("loop");
    let tar = files(&[
        "get",
        &r,
        &at("looped", "/a"),
        &s(&dir.join("looped.tar")),
        "--tar",
    ]);
    tar.expect_code(1).stderr_has("loop");
    assert!(
        !dir.join("looped.tar").exists(),
        "a failed tar was left behind"
    );
    let f = files(&[
        "find", &r, "--series", "bad", "--disk", "looped", "--name", "*.txt", "--json",
    ]);
    f.expect_code(1);
    assert_eq!(f.json()["errors"], 1, "{f}");
    assert!(
        f.json()["snapshots"][0]["error"]
            .as_str()
            .unwrap()
            .contains("loop"),
        "{f}"
    );
    // A journal not replayed: read, with a warning.
    let listing = files_json(&["ls", &r, &at("dirty", "/")]);
    assert!(
        listing["warning"]
            .as_str()
            .is_some_and(|w| w.contains("journal")),
        "{listing}"
    );
    assert!(files_json(&["ls", &r, &at("good", "/")])
        .get("warning")
        .is_none());
    files(&["ls", &r, &at("dirty", "/")])
        .ok()
        .stderr_has("warning");
    // A partition past the end of the disk.
    files(&["ls", &r, &at("badtable", "/")])
        .expect_code(1)
        .stderr_has("past the end");
    files(&["parts", &r, "latest@bad:badtable"])
        .expect_code(1)
        .stderr_has("past the end");
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "t, r, f, g, w: the temp dir, repo, and outputs of one scenario"
)]
fn a_damaged_chunk_fails_cat_get_and_find_with_exit_4_naming_the_range() {
    let mut gen = DataGen::new(seed("files_damage"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    let size = 10 * MIB + 123;
    write(&src.join("big"), &gen.bytes(Fill::Random, size as usize));
    write(&src.join("small.txt"), b"unaffected\n");
    let img = dir.join("img");
    mkfs_ext(&img, &src, "32M", &["-b", "4096"]);
    let repo = new_repo(dir);
    backup_json(&repo, "dmg", &[("disk0", &img)]);
    let r = s(&repo);

    // Damage the 64 KiB chunk holding byte `hit` of /big.
    let hit = 9 * MIB + 5000;
    let block = bmap(&img, "/big", hit / 4096);
    let disk_at = block * 4096 + hit % 4096;
    let chunk = disk_at / (64 << 10) * (64 << 10);
    assert_eq!(damage_chunk(&repo, &block_digest(&img, chunk, 64 << 10)), 1);

    let out = cat(&repo, "latest@dmg:/big");
    out.expect_code(4);
    let (start, end) =
        byte_range(&out.stderr).unwrap_or_else(|| panic!("no byte range in {}", out.stderr));
    assert!(
        start <= hit && hit < end && end <= size && end - start <= 8 * MIB,
        "range {start}..{end} for a damaged byte {hit} of a {size}-byte file: {}",
        out.stderr
    );
    assert!(out.stderr.contains("big"), "{}", out.stderr);
    // Nothing else is affected.
    assert_eq!(cat_ok(&repo, "latest@dmg:/small.txt"), b"unaffected\n");
    assert_eq!(
        entry_names(&files_json(&["ls", &r, "latest@dmg:/"])),
        ["big", "lost+found", "small.txt"]
    );
    // get: exit 4, and no file, not even a partial one.
    let dest = dir.join("restored");
    fs::create_dir(&dest).unwrap();
    let g = files(&["get", &r, "latest@dmg:/big", &s(&dest)]);
    g.expect_code(4);
    assert!(byte_range(&g.stderr).is_some(), "{g}");
    assert!(
        tessera_tests::dir_entries(&dest).is_empty(),
        "left behind: {:?}",
        tessera_tests::dir_entries(&dest)
    );
    let tar = dir.join("out.tar");
    files(&["get", &r, "latest@dmg:/", &s(&tar), "--tar"]).expect_code(4);
    assert!(!tar.exists(), "a failed tar was left behind");
    // find: the snapshot cannot be searched.
    let f = files(&["find", &r, "--series", "dmg", "/big", "--json"]);
    f.expect_code(1);
    let v = f.json();
    assert_eq!(v["errors"], 1, "{f}");
    assert!(
        byte_range(v["snapshots"][0]["error"].as_str().unwrap()).is_some(),
        "{f}"
    );

    // Damaged metadata (the chunk holding the inode table) is damage too: exit 4, not a
    // malformed filesystem.
    let table = inode_offset(&img, "<2>") / (64 << 10) * (64 << 10);
    assert_eq!(damage_chunk(&repo, &block_digest(&img, table, 64 << 10)), 1);
    files(&["ls", &r, "latest@dmg:/"]).expect_code(4);
    files(&["cat", &r, "latest@dmg:/small.txt"]).expect_code(4);
}
