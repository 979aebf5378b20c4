//! `tessera files` on NTFS (SPEC.md §24.2): volumes made by `mkfs.ntfs`, filled through a
//! real `ntfs-3g` FUSE mount (nested and non-ASCII names, a 255-character name, a resident
//! file, an empty one, a file of several data runs, a sparse file, a hard link, symlinks, a
//! read-only attribute, a directory big enough for a B+ tree index), backed up with the CLI
//! as a bare volume and inside an MBR partition, and read back through it. The oracle is
//! the same image mounted again read-only by ntfs-3g: names, kinds, sizes, times to the
//! 100 ns NTFS keeps, inode numbers (ntfs-3g's are MFT record numbers too), link counts,
//! symlink targets and bytes must agree; `files get` and `get --tar` give the mounted tree.
//!
//! The damaged and refused cases: an NTFS-compressed file is refused by name (exit 5), a
//! file whose MFT record lost its `FILE` signature fails (exit 1) while the others read.
//!
//! ntfs-3g and FUSE are required (scripts/ensure-deps.sh); without them these tests fail.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: build the images, back up, check everything"
)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tessera_tests::fs_images::{
    entry_names, files_cat_ok, files_json, files_raw, kind_name, mkfs_ntfs, ntfs_record_offset,
    ntfs_runs, poke, run_tool, scan_tree, set_mtime, set_ntfs_attributes, source_names,
    tar_through, NtfsMount, RawOut,
};
use tessera_tests::{allocated_bytes, backup_json, init_repo, seed, DataGen, Fill, Value};

const MIB: u64 = 1 << 20;
/// NTFS's read-only file attribute; compressed (0x800) and directory (0x10) ones.
const ATTR_READ_ONLY: u32 = 0x01;
const ATTR_COMPRESSED_DIR: u32 = 0x810;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Asserts a failure with `code` and a message holding `word` (case-insensitive).
#[track_caller]
fn assert_fails(out: &RawOut, code: i32, word: &str) {
    out.expect_code(code);
    assert!(
        out.stderr.to_lowercase().contains(&word.to_lowercase()),
        "`tessera {}` exit {code} without {word:?} in:\n{}",
        out.args.join(" "),
        out.stderr
    );
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A 255-character name, the longest NTFS allows.
fn name_255() -> String {
    "n".repeat(251) + ".txt"
}

/// Fills the mounted volume at `m` with everything the module docs list.
fn populate(m: &Path, gen: &mut DataGen) {
    write(&m.join("small.txt"), &gen.bytes(Fill::Text, 500));
    write(&m.join("empty"), b"");
    write(&m.join("données été.txt"), "données été\n".as_bytes());
    write(&m.join("日本語/ファイル名.txt"), "こんにちは\n".as_bytes());
    write(&m.join(name_255()), b"a name of 255 characters\n");
    write(
        &m.join("Documents/Reports/2024/Q1 report.txt"),
        &gen.bytes(Fill::Text, 40_000),
    );
    fs::hard_link(
        m.join("Documents/Reports/2024/Q1 report.txt"),
        m.join("Documents/hard link.txt"),
    )
    .unwrap();
    symlink("Documents/Reports", m.join("reports-link")).unwrap();
    symlink("../small.txt", m.join("Documents/up-link")).unwrap();
    symlink("/données été.txt", m.join("absolute-link")).unwrap();
    write(&m.join("readonly.txt"), b"read-only attribute\n");
    set_ntfs_attributes(&m.join("readonly.txt"), ATTR_READ_ONLY);
    fs::create_dir_all(m.join("empty dir")).unwrap();
    // A directory whose index needs index records (a B+ tree with subnodes).
    for i in 0..300 {
        write(
            &m.join(format!("many/entry {i:03} with a rather long name.txt")),
            format!("entry {i}\n").as_bytes(),
        );
    }
    // A file of several runs: its 256 KiB pieces written last first, so that the clusters
    // ntfs-3g gives each one in turn lie in the reverse order of the file's.
    fs::create_dir(m.join("frag")).unwrap();
    let mut f = fs::File::create(m.join("frag/big.bin")).unwrap();
    for k in (0..9u64).rev() {
        f.seek(SeekFrom::Start(k * 256 * 1024)).unwrap();
        let n = if k < 8 { 256 * 1024 } else { 17 };
        f.write_all(&gen.bytes(Fill::Random, n)).unwrap();
    }
    drop(f);
    // Sparse: written at 0 and at 3 MiB, and its last 10 bytes past 6 MiB.
    let mut f = fs::File::create(m.join("sparse.bin")).unwrap();
    f.write_all(&gen.bytes(Fill::Random, 4096)).unwrap();
    f.seek(SeekFrom::Start(3 * MIB)).unwrap();
    f.write_all(&gen.bytes(Fill::Random, 4096)).unwrap();
    f.seek(SeekFrom::Start(6 * MIB)).unwrap();
    f.write_all(b"0123456789").unwrap();
    drop(f);
    // Times: one before 1970, one with a fraction of a second kept to 100 ns.
    set_mtime(&m.join("small.txt"), -86_400 * 365);
    run_tool(
        Command::new("touch")
            .arg("-d")
            .arg("2021-03-04 05:06:07.123456789 UTC")
            .arg(m.join("empty")),
    );
}

/// Writes an MBR with one NTFS partition (type 0x07) at sector 2048 holding `volume`.
fn partitioned(volume: &Path, disk: &Path) {
    let vol = fs::read(volume).unwrap();
    let sectors = u32::try_from(vol.len() as u64 / 512).unwrap();
    let mut img = vec![0u8; (MIB as usize) + vol.len() + 512 * 64];
    let entry = &mut img[446..462];
    entry[4] = 0x07;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    img[MIB as usize..MIB as usize + vol.len()].copy_from_slice(&vol);
    fs::write(disk, img).unwrap();
}

/// `files ls --json` of every directory of the mounted tree agrees with the mount, entry by
/// entry; `files cat` of every regular file gives its bytes.
fn assert_reads_like_the_mount(repo: &Path, at: &str, mnt: &Path) {
    let r = s(repo);
    let tree = scan_tree(mnt);
    let mut dirs = vec![String::new()];
    dirs.extend(
        tree.iter()
            .filter(|(_, n)| n.meta.is_dir())
            .map(|(rel, _)| String::from_utf8(rel.clone()).unwrap()),
    );
    for dir in &dirs {
        let listing = files_json(&["ls", &r, &format!("{at}/{dir}")]);
        assert_eq!(listing["filesystem"], "ntfs", "{listing}");
        let names = entry_names(&listing);
        assert_eq!(names, source_names(&mnt.join(dir)), "the names in /{dir}");
        for (name, entry) in names.iter().zip(listing["entries"].as_array().unwrap()) {
            assert_entry_matches(entry, &mnt.join(dir).join(name));
        }
    }
    for (rel, node) in &tree {
        let rel = String::from_utf8(rel.clone()).unwrap();
        let sampled = !rel.starts_with("many/") || rel.contains(" 000 ") || rel.contains(" 299 ");
        if node.meta.is_file() && sampled {
            let got = files_cat_ok(repo, &format!("{at}/{rel}"));
            assert!(
                got == fs::read(&node.path).unwrap(),
                "`files cat` of /{rel}: {} bytes that differ from the mount",
                got.len()
            );
        }
    }
}

/// One `ls`/`stat` JSON entry against what ntfs-3g says of the same name.
#[track_caller]
fn assert_entry_matches(entry: &Value, path: &Path) {
    let meta = fs::symlink_metadata(path).unwrap();
    let what = format!("{entry} vs {}", path.display());
    let kind = match kind_name(meta.file_type()) {
        "symlink" => "symlink",
        "dir" => "dir",
        _ => "file",
    };
    assert_eq!(entry["kind"], kind, "kind: {what}");
    assert_eq!(entry["ino"], meta.ino(), "inode (MFT record): {what}");
    assert_eq!(entry["mtime"]["secs"], meta.mtime(), "mtime: {what}");
    assert_eq!(
        entry["mtime"]["nanos"],
        meta.mtime_nsec(),
        "mtime ns: {what}"
    );
    assert_eq!(
        (entry["uid"].as_u64(), entry["gid"].as_u64()),
        (Some(0), Some(0))
    );
    match kind {
        "file" => {
            assert_eq!(entry["size"], meta.len(), "size: {what}");
            assert_eq!(entry["nlink"], meta.nlink(), "links: {what}");
            let read_only = path.ends_with("readonly.txt");
            assert_eq!(
                entry["mode"],
                if read_only { 0o444 } else { 0o644 },
                "{what}"
            );
        }
        "dir" => assert_eq!(entry["mode"], 0o755, "{what}"),
        _ => assert_eq!(
            entry["target"].as_str().map(PathBuf::from),
            Some(fs::read_link(path).unwrap()),
            "target: {what}"
        ),
    }
}

/// The tree `files get` (or `tar x`) wrote at `got` holds what the mount holds: names,
/// kinds, bytes, symlink targets, mtimes, and hard links as one inode.
#[track_caller]
fn assert_tree_is_the_mount(mnt: &Path, got: &Path) {
    let want = scan_tree(mnt);
    let have = scan_tree(got);
    let keys = |t: &BTreeMap<Vec<u8>, _>| -> Vec<String> {
        t.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(keys(&have), keys(&want), "names in {}", got.display());
    let mut inodes: BTreeMap<u64, u64> = BTreeMap::new();
    for (rel, w) in &want {
        let h = &have[rel];
        let name = String::from_utf8_lossy(rel);
        assert_eq!(
            kind_name(w.meta.file_type()),
            kind_name(h.meta.file_type()),
            "{name}"
        );
        if w.meta.is_file() {
            tessera_tests::assert_same_file(&w.path, &h.path);
            assert_eq!(w.meta.mtime(), h.meta.mtime(), "mtime of {name}");
            // Names that are one MFT record are one inode, and the other way round.
            let other = *inodes.entry(w.meta.ino()).or_insert(h.meta.ino());
            assert_eq!(other, h.meta.ino(), "{name}: hard links not kept");
            assert_eq!(w.meta.nlink(), h.meta.nlink(), "link count of {name}");
        }
        if w.meta.file_type().is_symlink() {
            assert_eq!(w.target, h.target, "target of {name}");
        }
    }
    let distinct: std::collections::BTreeSet<u64> = inodes.values().copied().collect();
    assert_eq!(distinct.len(), inodes.len(), "two files became one");
}

#[test]
fn ntfs_tree_reads_like_ntfs_3g_mounts_it() {
    let mut gen = DataGen::new(seed("files_ntfs_tree"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let vol = dir.join("ntfs.img");
    mkfs_ntfs(&vol, 32 * MIB);
    let m = NtfsMount::new(&vol, &dir.join("mnt-rw"), false);
    populate(m.path(), &mut gen);
    m.unmount();
    let runs = ntfs_runs(&vol, "/frag/big.bin");
    assert!(runs >= 4, "frag/big.bin has {runs} data run(s)");
    let disk = dir.join("disk.img");
    partitioned(&vol, &disk);

    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    backup_json(&repo, "ntfs", &[("bare", &vol), ("disk", &disk)]);
    let r = s(&repo);
    let parts = files_json(&["parts", &r, "latest@ntfs:disk"]);
    assert_eq!(parts["volumes"][0]["holds"], "ntfs", "{parts}");

    let ro = NtfsMount::new(&vol, &dir.join("mnt-ro"), true);
    let mnt = ro.path();
    for at in ["latest@ntfs:bare:", "latest@ntfs:disk:1:"] {
        assert_reads_like_the_mount(&repo, at, mnt);
    }
    for rel in [
        "frag/big.bin",
        "sparse.bin",
        "Documents/hard link.txt",
        "readonly.txt",
        "empty",
    ] {
        let st = files_json(&["stat", &r, &format!("latest@ntfs:disk:1:/{rel}")]);
        assert_entry_matches(&st, &mnt.join(rel));
    }
    let link = files_json(&["stat", &r, "latest@ntfs:bare:/reports-link"]);
    assert_entry_matches(&link, &mnt.join("reports-link"));
    // Symlinks are followed: through a directory link, and up from a subdirectory.
    assert_eq!(
        files_cat_ok(&repo, "latest@ntfs:bare:/reports-link/2024/Q1 report.txt"),
        fs::read(mnt.join("Documents/Reports/2024/Q1 report.txt")).unwrap()
    );
    assert_eq!(
        files_cat_ok(&repo, "latest@ntfs:bare:/Documents/up-link"),
        fs::read(mnt.join("small.txt")).unwrap()
    );

    // `get` of the whole volume, from the partition.
    let out = dir.join("get");
    let report = files_json(&["get", &r, "latest@ntfs:disk:1:/", &s(&out)]);
    assert_tree_is_the_mount(mnt, &out);
    assert_eq!(report["hard_links"], 1, "{report}");
    let sparse = out.join("sparse.bin");
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 6 * MIB + 10);
    assert!(
        allocated_bytes(&sparse) < 2 * MIB,
        "sparse.bin takes {} bytes: its holes were written",
        allocated_bytes(&sparse)
    );
    // The same as a tar stream.
    let tar_dir = dir.join("tar-out");
    fs::create_dir(&tar_dir).unwrap();
    let args: Vec<OsString> = ["files", "get", &r, "latest@ntfs:bare:/", "-", "--tar"]
        .iter()
        .map(OsString::from)
        .collect();
    let big = mnt.join("frag/big.bin");
    let (code, stderr, _) = tar_through(&args, &tar_dir, &[], Some(("frag/big.bin", &big)));
    assert_eq!(code, 0, "files get --tar - failed: {stderr}");
    assert_tree_is_the_mount(mnt, &tar_dir);
    drop(ro);
}

#[test]
fn compressed_and_damaged_ntfs_files_fail_cleanly() {
    let mut gen = DataGen::new(seed("files_ntfs_bad"));
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let vol = dir.join("odd.img");
    mkfs_ntfs(&vol, 16 * MIB);
    let m = NtfsMount::new(&vol, &dir.join("mnt"), false);
    let packed = m.path().join("packed");
    fs::create_dir(&packed).unwrap();
    set_ntfs_attributes(&packed, ATTR_COMPRESSED_DIR);
    let text = gen.bytes(Fill::Text, 200_000);
    write(&packed.join("y.txt"), &text);
    let victim = gen.bytes(Fill::Random, 100_000);
    write(&m.path().join("d/victim.bin"), &victim);
    write(&m.path().join("d/ok.txt"), b"fine\n");
    m.unmount();
    assert!(
        ntfsinfo_has(&vol, "/packed/y.txt", "Attribute flags:\t 0x0001"),
        "ntfs-3g did not compress packed/y.txt"
    );
    let damaged = dir.join("damaged.img");
    fs::copy(&vol, &damaged).unwrap();
    let record = ntfs_record_offset(&damaged, "/d/victim.bin");
    poke(&damaged, record, b"BAAD");
    let truncated = dir.join("truncated.img");
    fs::write(&truncated, &fs::read(&vol).unwrap()[..(8 * MIB) as usize]).unwrap();

    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    backup_json(
        &repo,
        "bad",
        &[
            ("odd", &vol),
            ("damaged", &damaged),
            ("truncated", &truncated),
        ],
    );
    let r = s(&repo);
    // Compressed: listed with its size, refused when read (exit 5), named.
    let listing = files_json(&["ls", &r, "latest@bad:odd:/packed"]);
    assert_eq!(listing["entries"][0]["size"], 200_000, "{listing}");
    assert_fails(
        &files_raw(&["cat", &r, "latest@bad:odd:/packed/y.txt"]),
        5,
        "NTFS-compressed",
    );
    assert_eq!(files_cat_ok(&repo, "latest@bad:odd:/d/victim.bin"), victim);
    // A record without its signature: exit 1 naming it; its neighbours read.
    assert_fails(
        &files_raw(&["cat", &r, "latest@bad:damaged:/d/victim.bin"]),
        1,
        "signature",
    );
    assert_eq!(
        files_cat_ok(&repo, "latest@bad:damaged:/d/ok.txt"),
        b"fine\n"
    );
    assert_eq!(
        files_cat_ok(&repo, "latest@bad:damaged:/packed/../d/ok.txt"),
        b"fine\n"
    );
    // A volume shorter than its boot sector says.
    assert_fails(
        &files_raw(&["ls", &r, "latest@bad:truncated:/"]),
        1,
        "boot sector",
    );
}

fn ntfsinfo_has(image: &Path, path: &str, needle: &str) -> bool {
    tessera_tests::fs_images::ntfsinfo(image, path).contains(needle)
}
