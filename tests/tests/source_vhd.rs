//! VHD sources through the CLI: dynamic and fixed VHDs made by qemu, differencing chains
//! made by `tessera_tests::vhd_build` (an independent writer), and damaged images.
//!
//! Oracles: `qemu-img convert -f vpc -O raw` for what qemu made; for differencing disks
//! (which qemu's `vpc` driver cannot follow to a parent), a raw copy to which the test
//! applies the same writes, cross-checked with libvhdi (`pyvhdi`, which
//! `scripts/ensure-deps.sh` installs; a missing one fails the test).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore};
use tempfile::TempDir;
use tessera_engine::sources::confine::Confinement;
use tessera_engine::sources::vhd::VhdSource;
use tessera_engine::sources::BlockSource;
use tessera_tests::libvhdi::vhdi_read;
use tessera_tests::qemu::{convert_to_raw, qemu_img, qemu_io};
use tessera_tests::vhd_build::{
    fix_checksum, footer_size, footer_uuid, macx, uuid_text, w2ku, w2ru, ParentSpec, VhdImage,
    HEADER_AT, HEADER_CHECKSUM,
};
use tessera_tests::{
    assert_same_file, backup_json, init_repo, list_ids, make_image, pack_files, restore, seed,
    snapshot_id, tessera, verify, DataGen, ImageSpec, Out, Value,
};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `tessera --json backup REPO --series S NAME=PATH --allow-backing-dir SCRATCH EXTRA...`:
/// the chains here keep parents in sibling directories of the scratch directory (the
/// repository's parent), which must be allowed explicitly (SPEC §19).
fn backup(repo: &Path, series: &str, disk: &Path, extra: &[&str]) -> Out {
    let scratch = repo.parent().expect("repository in a scratch directory");
    let mut args: Vec<String> = vec![
        "--json".into(),
        "backup".into(),
        s(repo).into(),
        "--series".into(),
        series.into(),
        format!("disk={}", s(disk)),
        "--allow-backing-dir".into(),
        s(scratch).into(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    tessera(args)
}

/// Opens a VHD whose ancestors may lie anywhere under `scratch`.
fn open_in(path: &Path, scratch: &Path) -> tessera_engine::Result<VhdSource> {
    let confinement = Confinement::for_image(path, &[scratch.to_path_buf()])?;
    VhdSource::open_confined(path, &confinement)
}

/// The one disk of a backup's JSON.
fn disk0(v: &Value) -> &Value {
    &v["disks"][0]
}

/// Restores `snapshot` and asserts it equals `oracle` byte for byte.
#[track_caller]
fn assert_restores_to(repo: &Path, snapshot: &str, oracle: &Path, scratch: &Path) {
    let out = scratch.join(format!("restored-{}", &snapshot[..12.min(snapshot.len())]));
    let _ = fs::remove_file(&out);
    restore(repo, snapshot, &out, false).ok();
    assert_same_file(oracle, &out);
    fs::remove_file(&out).expect("removing restore");
}

/// Allocated BAT entries of a dynamic VHD (read independently of the engine).
fn allocated_blocks(vhd: &Path) -> u64 {
    let b = fs::read(vhd).expect("reading VHD");
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let hdr = be64(16) as usize;
    let table = be64(hdr + 16) as usize;
    let entries = be32(hdr + 28) as usize;
    (0..entries)
        .filter(|i| be32(table + i * 4) != u32::MAX)
        .count() as u64
}

/// qemu-img 10.0.2: by default it rounds the size up to whole CHS cylinders, stores that as
/// the current size and writes creator `qemu`; with `force_size=on` it keeps the exact size
/// and writes creator `qem2`. Both read back, by qemu and by tessera, at the current size.
#[test]
fn dynamic_vhd_written_by_qemu_io_restores_like_qemu() {
    for (opts, exact) in [("", false), ("force_size=on", true)] {
        let dir = TempDir::new().expect("tempdir");
        let (vhd, repo) = (dir.path().join("d.vhd"), dir.path().join("repo"));
        let mut create = vec!["create", "-q", "-f", "vpc", s(&vhd), "24M"];
        if !opts.is_empty() {
            create.extend(["-o", opts]);
        }
        qemu_img(&create);
        assert_eq!(footer_size(&vhd) == 24 * MIB, exact, "{opts}");
        for cmd in [
            "write -P 0xab 0 64k",
            "write -P 0x5c 1000 70001",
            "write -P 0x11 5M 3M",
            "write -P 0xee 17000001 777",
            "write -P 0x00 6M 4096",
        ] {
            qemu_io("vpc", &vhd, cmd);
        }
        let oracle = dir.path().join("d.raw");
        convert_to_raw(&vhd, "vpc", &oracle);
        init_repo(&repo, &[]);
        let v = backup_json(&repo, "s", &[("disk", &vhd)]);
        let d = disk0(&v);
        let oracle_len = fs::metadata(&oracle).expect("oracle").len();
        assert_eq!(d["size"].as_u64(), Some(oracle_len), "{opts}");
        assert_eq!(d["size"].as_u64(), Some(footer_size(&vhd)), "{opts}");
        // qemu allocates whole 2 MiB blocks with all bitmap bits set: exactly those are read.
        let read = d["bytes_read"].as_u64().expect("bytes_read");
        assert_eq!(read, allocated_blocks(&vhd) * 2 * MIB, "{opts} {v}");
        assert!(
            read < footer_size(&vhd) / 2,
            "a sparse VHD is read only where allocated: {v}"
        );
        assert_restores_to(&repo, &snapshot_id(&v), &oracle, dir.path());
        verify(&repo).ok();
    }
}

#[test]
fn vhd_converted_by_qemu_from_a_raw_image_restores_like_qemu() {
    let dir = TempDir::new().expect("tempdir");
    let mut gen = DataGen::new(seed("vhd_converted"));
    let raw = dir.path().join("orig.raw");
    let mut spec = ImageSpec::mixed(20 * MIB + 4096);
    spec.sparse = true;
    spec.weights = (5, 3, 2);
    make_image(&raw, spec, &mut gen);
    let vhd = dir.path().join("c.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", s(&raw), s(&vhd)]);
    let oracle = dir.path().join("c.raw");
    convert_to_raw(&vhd, "vpc", &oracle);
    let repo = dir.path().join("repo");
    init_repo(&repo, &[]);
    let v = backup_json(&repo, "s", &[("disk", &vhd)]);
    assert_restores_to(&repo, &snapshot_id(&v), &oracle, dir.path());
    // qemu rounds the size up to whole CHS cylinders; the rest is the original image
    // followed by zeros.
    let orig = fs::read(&raw).expect("raw");
    let restored = fs::read(&oracle).expect("oracle");
    assert!(restored.len() >= orig.len());
    assert_eq!(&restored[..orig.len()], &orig[..]);
    assert!(restored[orig.len()..].iter().all(|&b| b == 0));
    assert_eq!(disk0(&v)["size"].as_u64(), Some(restored.len() as u64));
}

#[test]
fn fixed_vhd_restores_like_qemu() {
    let dir = TempDir::new().expect("tempdir");
    let mut gen = DataGen::new(seed("vhd_fixed"));
    let raw = dir.path().join("orig.raw");
    make_image(&raw, ImageSpec::mixed(12 * MIB), &mut gen);
    let vhd = dir.path().join("f.vhd");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=fixed",
        s(&raw),
        s(&vhd),
    ]);
    let oracle = dir.path().join("f.raw");
    convert_to_raw(&vhd, "vpc", &oracle);
    let repo = dir.path().join("repo");
    init_repo(&repo, &[]);
    let v = backup_json(&repo, "s", &[("disk", &vhd)]);
    assert_eq!(disk0(&v)["size"].as_u64(), Some(footer_size(&vhd)));
    assert_restores_to(&repo, &snapshot_id(&v), &oracle, dir.path());
    // Auto-detection must not take the fixed VHD for a raw image (footer included).
    assert_eq!(
        fs::metadata(&vhd).expect("vhd").len(),
        footer_size(&vhd) + 512
    );
    verify(&repo).ok();
}

// ---------------------------------------------------------------------------------------
// Differencing chains
// ---------------------------------------------------------------------------------------

/// A chain: base (dynamic, from qemu) ← d1 ← d2, and raw oracles of each state.
struct Chain {
    dir: TempDir,
    base: PathBuf,
    d1: PathBuf,
    d2: PathBuf,
    oracles: [PathBuf; 3],
    /// Sectors written into d1 and d2, in bytes.
    written: [u64; 2],
}

/// Random writes of whole `align`-sector units into `img` and the same into the raw file
/// `oracle` (20% of them all zeros), all below the disk's last MiB.
fn random_writes(gen: &mut DataGen, img: &mut VhdImage, oracle: &Path, count: usize, align: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(oracle)
        .expect("oracle");
    // Below the last MiB, which is kept for writes into the base.
    let units = (img.size - MIB) / 512 / align;
    for _ in 0..count {
        let n = gen.rng.gen_range(1..=300 / align).min(units);
        let first = gen.rng.gen_range(0..=units - n) * align;
        let n = n * align;
        let mut data = vec![0u8; (n * 512) as usize];
        if gen.rng.gen_bool(0.8) {
            gen.rng.fill_bytes(&mut data);
        }
        img.write(first * 512, &data);
        f.write_all_at(&data, first * 512).expect("oracle write");
    }
}

/// Builds the chain; writes cover whole `align`-sector units (1 = sector-granular).
fn build_chain(test: &str, align: u64) -> Chain {
    let dir = TempDir::new().expect("tempdir");
    let mut gen = DataGen::new(seed(test));
    let base = dir.path().join("base.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", s(&base), "16M"]);
    qemu_io("vpc", &base, "write -P 0x3c 0 3M");
    qemu_io("vpc", &base, "write -P 0xc3 9437184 1M");
    let oracles = ["base.raw", "d1.raw", "d2.raw"].map(|n| dir.path().join(n));
    convert_to_raw(&base, "vpc", &oracles[0]);
    let size = footer_size(&base);

    // d1: a stale absolute locator first, then the relative one that resolves.
    fs::create_dir(dir.path().join("kids")).expect("mkdir");
    let d1 = dir.path().join("kids").join("d1.vhd");
    let mut img1 = VhdImage::differencing(
        size,
        2 * MIB,
        gen.rng.gen(),
        ParentSpec {
            uuid: footer_uuid(&base),
            name: "base.vhd".into(),
            locators: vec![
                w2ku(Path::new("/nonexistent/base.vhd")),
                w2ru("../base.vhd"),
            ],
        },
    );
    fs::copy(&oracles[0], &oracles[1]).expect("copy oracle");
    random_writes(&mut gen, &mut img1, &oracles[1], 40, align);
    img1.save(&d1);

    // d2: an absolute W2ku locator and a MacX URL, in a directory with a space.
    fs::create_dir(dir.path().join("more kids")).expect("mkdir");
    let d2 = dir.path().join("more kids").join("d2.vhd");
    let mut img2 = VhdImage::differencing(
        size,
        2 * MIB,
        gen.rng.gen(),
        ParentSpec {
            uuid: img1.uuid,
            name: "d1.vhd".into(),
            locators: vec![macx(&d1), w2ku(&d1)],
        },
    );
    fs::copy(&oracles[1], &oracles[2]).expect("copy oracle");
    random_writes(&mut gen, &mut img2, &oracles[2], 25, align);
    img2.save(&d2);
    let written = [img1.written_bytes(), img2.written_bytes()];
    Chain {
        dir,
        base,
        d1,
        d2,
        oracles,
        written,
    }
}

/// The builder writes VHD chains that libvhdi reads as the raw oracles say. Writes are
/// 4 KiB-aligned here: libvhdi (checked with 20260901) takes every sector from the first
/// set bit of a bitmap byte to the end of that byte as present, so it misreads bitmap bytes
/// such as 0xa0; whole bitmap bytes it reads right (most significant bit = first sector).
#[test]
fn builder_output_reads_through_libvhdi_like_the_oracles() {
    let c = build_chain("vhd_chain_libvhdi", 8);
    let w = c.dir.path();
    vhdi_read(&[&c.d1, &c.base], &w.join("d1.vhdi"));
    assert_same_file(&c.oracles[1], &w.join("d1.vhdi"));
    vhdi_read(&[&c.d2, &c.d1, &c.base], &w.join("d2.vhdi"));
    assert_same_file(&c.oracles[2], &w.join("d2.vhdi"));
}

#[test]
fn differencing_chain_reads_in_full_through_parent_locators() {
    let c = build_chain("vhd_chain_full", 1);
    let w = c.dir.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    for (i, img) in [&c.base, &c.d1, &c.d2].into_iter().enumerate() {
        let v = backup(&repo, &format!("s{i}"), img, &[]);
        v.ok();
        let v = v.json();
        assert_restores_to(&repo, &snapshot_id(&v), &c.oracles[i], w);
    }
    verify(&repo).ok();
}

/// A parent in another directory is not opened unless that directory is allowed: without
/// `--allow-backing-dir` the backup is refused, naming the flag, and stores nothing.
#[test]
fn parents_outside_the_image_directory_are_not_opened() {
    let c = build_chain("vhd_chain_confined", 1);
    let w = c.dir.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    let err = VhdSource::open(&c.d1).err().expect("refused").to_string();
    assert!(
        err.contains("outside") && err.contains("--allow-backing-dir"),
        "{err}"
    );
    let out = tessera([
        "--json",
        "backup",
        s(&repo),
        "--series",
        "s",
        &format!("disk={}", s(&c.d1)),
    ]);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has("--allow-backing-dir");
    assert!(list_ids(&repo).is_empty());
}

#[test]
fn differencing_disk_without_its_parent_is_refused_naming_it() {
    let c = build_chain("vhd_chain_missing", 1);
    let w = c.dir.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    fs::rename(&c.base, w.join("moved.vhd")).expect("rename");
    let base_id = uuid_text(&footer_uuid(&w.join("moved.vhd")));

    // Through the engine: the source opens (its own sectors are readable) but cannot read
    // what lies in the missing grandparent, and says which file is missing.
    let src = open_in(&c.d2, w).expect("opening d2 without its grandparent");
    assert!(!src.reads_full());
    let changes = src.changes().expect("a differencing disk is a delta");
    assert_eq!(
        changes.base_state,
        format!("vhd:{}", uuid_text(&footer_uuid(&c.d1)))
    );
    let (s0, e0) = changes.extents[0];
    let mut buf = vec![0u8; (e0 - s0) as usize];
    assert_eq!(src.read_at(s0, &mut buf).expect("own sectors"), e0 - s0);
    let mut all = vec![0u8; footer_size(&c.d2) as usize];
    let err = src
        .read_at(0, &mut all)
        .expect_err("the base is missing")
        .to_string();
    assert!(err.contains("base.vhd") && err.contains(&base_id), "{err}");

    // Through the CLI: refused (it can be read only as a delta), nothing stored.
    for extra in [&[][..], &["--fallback-full"][..]] {
        let out = backup(&repo, "s", &c.d2, extra);
        assert_ne!(out.code, 0, "{out}");
        eprintln!("[{extra:?}] {}", out.stderr.trim());
        assert!(
            out.stderr.contains(&uuid_text(&footer_uuid(&c.d1))),
            "{out}"
        );
        // ... and why it cannot be read in full: the missing base, with its id.
        assert!(
            out.stderr.contains("base.vhd") && out.stderr.contains(&base_id),
            "{out}"
        );
        assert!(list_ids(&repo).is_empty());
        assert!(pack_files(&repo).is_empty());
    }

    // A file with another unique id where the locator points is refused, naming both ids.
    qemu_img(&["create", "-q", "-f", "vpc", s(&c.base), "16M"]);
    let out = backup(&repo, "s", &c.d1, &[]);
    assert_ne!(out.code, 0, "{out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains(&uuid_text(&footer_uuid(&c.base))), "{out}");
    assert!(
        text.contains(&uuid_text(&footer_uuid(&w.join("moved.vhd")))),
        "{out}"
    );
    assert!(list_ids(&repo).is_empty());
}

// ---------------------------------------------------------------------------------------
// Delta backups of a chain
// ---------------------------------------------------------------------------------------

#[test]
fn differencing_chain_backs_up_as_deltas_on_the_parent_snapshots() {
    let c = build_chain("vhd_chain_delta", 1);
    let w = c.dir.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    let full = backup(&repo, "s", &c.base, &[]);
    full.ok();
    let full = full.json();
    assert_eq!(disk0(&full)["mode"], "full", "{full}");
    let full_id = snapshot_id(&full);

    // d1 is read only where it holds sectors; its parent is not even needed for that.
    let hidden = w.join("hidden.vhd");
    fs::rename(&c.base, &hidden).expect("hide base");
    let v1 = backup(&repo, "s", &c.d1, &["--reference", "latest"]);
    v1.ok();
    let v1 = v1.json();
    fs::rename(&hidden, &c.base).expect("unhide base");
    let d = disk0(&v1);
    assert_eq!(d["mode"], "delta", "{v1}");
    assert_eq!(d["changed_bytes"].as_u64(), Some(c.written[0]), "{v1}");
    assert_eq!(d["bytes_read"].as_u64(), Some(c.written[0]), "{v1}");
    assert!(c.written[0] < footer_size(&c.base) / 4);
    assert_restores_to(&repo, &snapshot_id(&v1), &c.oracles[1], w);

    let v2 = backup(&repo, "s", &c.d2, &["--reference", "latest"]);
    v2.ok();
    let v2 = v2.json();
    let d = disk0(&v2);
    assert_eq!(d["mode"], "delta", "{v2}");
    assert_eq!(d["bytes_read"].as_u64(), Some(c.written[1]), "{v2}");
    assert_restores_to(&repo, &snapshot_id(&v2), &c.oracles[2], w);
    // Earlier snapshots still restore to their own state.
    assert_restores_to(&repo, &full_id, &c.oracles[0], w);
    assert_restores_to(&repo, &snapshot_id(&v1), &c.oracles[1], w);

    // d2 applies on d1, not on the base: refused against the base's snapshot, naming both.
    let ids = list_ids(&repo);
    let packs = pack_files(&repo);
    let wrong = backup(&repo, "s", &c.d2, &["--reference", &full_id]);
    assert_ne!(wrong.code, 0, "{wrong}");
    let text = format!("{}{}", wrong.stdout, wrong.stderr);
    assert!(
        text.contains(&uuid_text(&footer_uuid(&c.d1))),
        "names d1's id: {wrong}"
    );
    assert!(
        text.contains(&uuid_text(&footer_uuid(&c.base))),
        "names the base's id: {wrong}"
    );
    assert_eq!(list_ids(&repo), ids);
    assert_eq!(pack_files(&repo), packs);

    // With --fallback-full it reads the whole chain through the parent locators.
    let fb = backup(
        &repo,
        "s",
        &c.d2,
        &["--reference", &full_id, "--fallback-full"],
    );
    fb.ok();
    let fb = fb.json();
    assert_ne!(disk0(&fb)["mode"], "delta", "{fb}");
    assert!(
        disk0(&fb)["bytes_read"].as_u64() > Some(c.written[0] + c.written[1]),
        "{fb}"
    );
    assert_restores_to(&repo, &snapshot_id(&fb), &c.oracles[2], w);
    verify(&repo).ok();
}

// ---------------------------------------------------------------------------------------
// Damaged images
// ---------------------------------------------------------------------------------------

/// A damaged copy of a good VHD: name, bytes, what the error must say.
type Damage = (&'static str, Vec<u8>, Vec<&'static str>);

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4"))
}

fn damaged_images(good: &[u8], diff: &[u8]) -> Vec<Damage> {
    let len = good.len();
    let hdr = HEADER_AT as usize;
    let table = u64::from_be_bytes(good[hdr + 16..hdr + 24].try_into().expect("8")) as usize;
    let first_alloc = (0..good.len() / 4)
        .map(|i| be32(good, table + i * 4))
        .find(|&e| e != u32::MAX)
        .expect("an allocated block") as usize
        * 512;
    let with_header = |f: &dyn Fn(&mut [u8])| {
        let mut b = good.to_vec();
        f(&mut b[hdr..hdr + 1024]);
        fix_checksum(&mut b[hdr..hdr + 1024], HEADER_CHECKSUM);
        b
    };
    let mut v: Vec<Damage> = Vec::new();
    let mut b = good.to_vec();
    b[len - 512 + 64] ^= 0x01;
    v.push(("footer checksum", b, vec!["footer at offset", "checksum"]));
    let mut b = good.to_vec();
    b[hdr + 36] ^= 0x10;
    v.push((
        "header checksum",
        b,
        vec!["dynamic header at offset 512", "checksum"],
    ));
    let mut b = good.to_vec();
    b[table..table + 4].copy_from_slice(&0x00ff_0000u32.to_be_bytes());
    v.push((
        "BAT entry past EOF",
        b,
        vec!["BAT entry 0", "sector 16711680"],
    ));
    let mut b = good.to_vec();
    b[table..table + 4].copy_from_slice(&2u32.to_be_bytes());
    v.push(("BAT entry into the header", b, vec!["BAT entr"]));
    v.push((
        "truncated in a block",
        good[..first_alloc + 700_000].to_vec(),
        vec!["no footer at the end", "truncated"],
    ));
    v.push((
        "block size not a power of two",
        with_header(&|h| h[32..36].copy_from_slice(&0x0030_0000u32.to_be_bytes())),
        vec!["block size 3145728", "power of two"],
    ));
    v.push((
        "max table entries huge",
        with_header(&|h| h[28..32].copy_from_slice(&u32::MAX.to_be_bytes())),
        vec!["4294967295 entries"],
    ));
    // Garbage with a valid-looking footer: first alone, then with its copy at offset 0.
    let mut gen = DataGen::new(7);
    let mut b = gen.bytes(tessera_tests::Fill::Random, 3 << 20);
    b.extend_from_slice(&good[len - 512..]);
    v.push((
        "garbage, footer at the end",
        b.clone(),
        vec!["footer copy at offset 0"],
    ));
    b[..512].copy_from_slice(&good[len - 512..]);
    v.push((
        "garbage, both footers",
        b,
        vec!["dynamic header at offset 512", "cookie"],
    ));
    // A parent locator of absurd length (differencing disk).
    let mut b = diff.to_vec();
    b[hdr + 576 + 8..hdr + 576 + 12].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    fix_checksum(&mut b[hdr..hdr + 1024], HEADER_CHECKSUM);
    v.push((
        "locator length",
        b,
        vec!["parent locator 0", "platform data length 2147483647"],
    ));
    v
}

#[test]
fn damaged_vhds_are_refused_with_the_problem_named_and_nothing_stored() {
    let dir = TempDir::new().expect("tempdir");
    let w = dir.path();
    let good_path = w.join("good.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", s(&good_path), "8M"]);
    qemu_io("vpc", &good_path, "write -P 0x42 3M 1M");
    let mut diff = VhdImage::differencing(
        footer_size(&good_path),
        2 * MIB,
        [9; 16],
        ParentSpec {
            uuid: footer_uuid(&good_path),
            name: "good.vhd".into(),
            locators: vec![w2ru("good.vhd")],
        },
    );
    diff.write(4096, &[0x55; 1024]);
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    backup(&repo, "s", &good_path, &[]).ok();
    let ids = list_ids(&repo);
    let packs = pack_files(&repo);
    let good = fs::read(&good_path).expect("good");
    for (name, bytes, needles) in damaged_images(&good, &diff.to_bytes()) {
        let path = w.join("bad.vhd");
        fs::write(&path, &bytes).expect("writing damaged copy");
        let out = backup(&repo, "s", &path, &["--format", "vhd"]);
        assert_ne!(out.code, 0, "[{name}] {out}");
        assert_ne!(out.code, 101, "[{name}] panicked: {out}");
        eprintln!("[{name}] {}", out.stderr.trim());
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "[{name}] stderr lacks {needle:?}: {out}"
            );
        }
        assert!(
            out.stderr.contains("not a usable VHD image"),
            "[{name}] {out}"
        );
        assert_eq!(list_ids(&repo), ids, "[{name}]");
        assert_eq!(pack_files(&repo), packs, "[{name}]");
    }
}

/// A key backup reads the chain in full and compares it with the delta information: none
/// while the chain is intact; drift where the base was written after the children were made
/// (its unique id does not change, so only a key backup notices).
#[test]
fn key_backup_of_a_chain_reports_drift_when_the_base_changed_in_place() {
    let c = build_chain("vhd_chain_key", 1);
    let w = c.dir.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    backup(&repo, "s", &c.base, &[]).ok();
    let v1 = backup(&repo, "s", &c.d1, &["--reference", "latest"]);
    v1.ok();
    let d1_id = snapshot_id(&v1.json());
    let key = backup(&repo, "s", &c.d2, &["--reference", "latest", "--full"]);
    key.ok();
    let key = key.json();
    assert_eq!(disk0(&key)["mode"], "key", "{key}");
    assert_eq!(disk0(&key)["drift_blocks"].as_u64(), Some(0), "{key}");
    assert_restores_to(&repo, &snapshot_id(&key), &c.oracles[2], w);

    // Write the base's last MiB (which neither child holds), behind the children's back.
    let size = footer_size(&c.base);
    let at = size - MIB / 2;
    qemu_io("vpc", &c.base, &format!("write -P 0x99 {at} 65536"));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&c.oracles[2])
        .expect("oracle");
    f.write_all_at(&vec![0x99; 65536], at)
        .expect("oracle write");
    let src = open_in(&c.d2, c.dir.path()).expect("open d2");
    let mut buf = vec![0u8; 65536];
    src.read_at(at, &mut buf).expect("read d2");
    assert!(
        buf.iter().all(|&b| b == 0x99),
        "the base's new data shows through d2"
    );
    let key = backup(&repo, "s", &c.d2, &["--reference", &d1_id, "--full"]);
    key.ok();
    let key = key.json();
    let d = disk0(&key);
    assert_eq!(d["mode"], "key", "{key}");
    assert!(d["drift_blocks"].as_u64() >= Some(1), "{key}");
    let bs = d["block_size"].as_u64().expect("block_size");
    let offsets: Vec<u64> = d["drift_offsets"]
        .as_array()
        .expect("drift_offsets")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(offsets.contains(&(at / bs * bs)), "{key}");
    assert_restores_to(&repo, &snapshot_id(&key), &c.oracles[2], w);
    verify(&repo).ok();
}

/// tessera's own VHD exports are sources: B's export backed up in full, then A's
/// differencing export on it backed up as a delta (its parent id is B's export's id), each
/// restoring to the image it came from.
#[test]
fn exported_vhd_chain_backs_up_again_as_full_then_delta() {
    let dir = TempDir::new().expect("tempdir");
    let w = dir.path();
    let mut gen = DataGen::new(seed("vhd_export_roundtrip"));
    let (b_img, a_img) = (w.join("b.img"), w.join("a.img"));
    make_image(&b_img, ImageSpec::mixed(10 * MIB), &mut gen);
    fs::copy(&b_img, &a_img).expect("copy");
    tessera_tests::mutate(&a_img, &mut gen, 12, 20_000, (1, 2, 2));
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    let b_id = snapshot_id(&backup_json(&repo, "vm", &[("d", &b_img)]));
    let a_id = snapshot_id(&backup_json(&repo, "vm", &[("d", &a_img)]));
    let (b_vhd, a_vhd) = (w.join("b.vhd"), w.join("a-delta.vhd"));
    tessera(["export", s(&repo), &b_id, s(&b_vhd), "--format", "vhd"]).ok();
    let args = ["export", s(&repo), &a_id, s(&a_vhd), "--format", "vhd"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--base", &b_id, "--backing-file", "b.vhd"]);
    tessera(&args).ok();

    let repo2 = w.join("repo2");
    init_repo(&repo2, &[]);
    let full = backup(&repo2, "s", &b_vhd, &[]);
    full.ok();
    let full = full.json();
    assert_eq!(disk0(&full)["mode"], "full", "{full}");
    assert_restores_to(&repo2, &snapshot_id(&full), &b_img, w);
    let delta = backup(&repo2, "s", &a_vhd, &["--reference", "latest"]);
    delta.ok();
    let delta = delta.json();
    let d = disk0(&delta);
    assert_eq!(d["mode"], "delta", "{delta}");
    // The export marks exactly the sectors of changed 64 KiB tessera blocks.
    let changed = d["changed_bytes"].as_u64().expect("changed_bytes");
    assert_eq!(d["bytes_read"].as_u64(), Some(changed), "{delta}");
    assert!(changed <= 12 * 3 * 65536 && changed > 0, "{delta}");
    assert_restores_to(&repo2, &snapshot_id(&delta), &a_img, w);
    verify(&repo2).ok();
}
