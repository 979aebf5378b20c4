//! qcow2 sources through the CLI (`tessera --json backup` / `restore` / `verify`), with
//! images made by the real tools (`qemu-img create/convert`, `qemu-io write`, `write -z`)
//! and `qemu-img convert -O raw` (which follows backing chains) as the oracle: every
//! restore must equal the oracle byte for byte.
//!
//! - Full images: v3 and v2 with unaligned and zero writes, compressed (deflate, zstd),
//!   extended L2 with subcluster writes, 512-byte and 2 MiB clusters, dirty bit.
//! - Overlays: chains base → ov1 → ov2 (with an extended-L2 overlay), an overlay on a raw
//!   base that is larger than it, read in full through the chain; a missing backing file.
//! - Refusals: encrypted, corrupt bit, external data file, broken L1/L2 offsets, truncated
//!   file, garbled compressed payload, cluster_bits 40, a backing chain cycle, a chain of
//!   more than 16 images: each a clear
//!   message, a non-zero exit code, and nothing stored.
//! - Deltas (`--reference`): each overlay of a chain is a delta that reads only what it
//!   defines (exact `changed_bytes`); a wrong base (another file, or the base written after
//!   its backup) is refused without storing anything, `--fallback-full` reads it in full; a
//!   missing base cannot be proven, so the overlay is refused either way.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tessera_tests::qemu::{convert_to_raw, qemu_img, qemu_io};
use tessera_tests::{
    assert_same_file, init_repo, list_ids, make_image, pack_bytes, restore, seed, snapshot_id,
    tessera, verify, DataGen, ImageSpec, Out, Value,
};

const MIB: u64 = 1 << 20;

/// A repository in a temporary directory that also holds the images.
struct Fx {
    dir: tempfile::TempDir,
    repo: PathBuf,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        init_repo(&repo, &[]);
        Self { dir, repo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tessera --json backup REPO --series S d=IMAGE EXTRA...`.
    fn backup_out(&self, series: &str, image: &Path, extra: &[&str]) -> Out {
        let repo = self.repo.display().to_string();
        let disk = format!("d={}", image.display());
        let mut args = vec!["--json", "backup", &repo, "--series", series, &disk];
        args.extend_from_slice(extra);
        tessera(&args)
    }

    /// A successful backup's JSON.
    fn backup(&self, series: &str, image: &Path, extra: &[&str]) -> Value {
        let out = self.backup_out(series, image, extra);
        out.ok();
        out.json()
    }

    /// Restores `snapshot` and compares it with `qemu-img convert -O raw` of `image`.
    #[track_caller]
    fn assert_restores_as(&self, snapshot: &str, image: &Path, format: &str) {
        let oracle = self.path("oracle.raw");
        let restored = self.path("restored.raw");
        let _ = fs::remove_file(&oracle);
        let _ = fs::remove_file(&restored);
        convert_to_raw(image, format, &oracle);
        restore(&self.repo, snapshot, &restored, false).ok();
        assert_same_file(&oracle, &restored);
    }

    /// Backs up `image` in full, checks the restore against the oracle; returns the disk JSON.
    #[track_caller]
    fn full_roundtrip(&self, series: &str, image: &Path) -> Value {
        let v = self.backup(series, image, &[]);
        self.assert_restores_as(&snapshot_id(&v), image, "qcow2");
        v["disks"][0].clone()
    }

    /// Asserts that backing up `image` fails with `needle` in the message, and that
    /// nothing was stored.
    #[track_caller]
    fn assert_refused(&self, image: &Path, needle: &str) {
        let snaps = list_ids(&self.repo);
        let packs = pack_bytes(&self.repo);
        let out = self.backup_out("refused", image, &[]);
        assert_ne!(out.code, 0, "{out}");
        out.stderr_has(needle);
        assert_eq!(list_ids(&self.repo), snaps, "a snapshot was stored: {out}");
        assert_eq!(pack_bytes(&self.repo), packs, "pack files changed: {out}");
    }
}

fn create(image: &Path, size: &str, opts: &[&str]) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(opts);
    args.push(image.to_str().unwrap());
    args.push(size);
    qemu_img(&args);
}

fn io(image: &Path, commands: &[&str]) {
    for c in commands {
        qemu_io("qcow2", image, c);
    }
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

fn patch(image: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_be64(image: &Path, offset: u64) -> u64 {
    let f = fs::File::open(image).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).unwrap();
    u64::from_be_bytes(b)
}

// ---------------------------------------------------------------------------------------
// Full images
// ---------------------------------------------------------------------------------------

const WRITES: &[&str] = &[
    "write -P 0xab 0 64k",
    "write -P 0xcd 100000 3000",
    "write -P 0x11 1M 256k",
    "write -z 1088k 64k",
    "write -P 0x22 5000000 70000",
    "write -z 6M 128k",
    "write -P 0x33 8388000 608",
];

#[test]
fn written_v3_and_v2_images_restore_exactly() {
    let fx = Fx::new();
    for (name, opts) in [
        ("v3.qcow2", &[][..]),
        ("v2.qcow2", &["-o", "compat=0.10"][..]),
    ] {
        let img = fx.path(name);
        create(&img, "8M", opts);
        io(&img, WRITES);
        let disk = fx.full_roundtrip(name, &img);
        assert_eq!(u64_of(&disk, "size"), 8 * MIB);
        let read = u64_of(&disk, "bytes_read");
        assert!(
            read > 0 && read < 2 * MIB,
            "{name}: bytes_read {read} for a sparse 8 MiB image"
        );
    }
    verify(&fx.repo).ok();
}

#[test]
fn compressed_images_restore_exactly() {
    let fx = Fx::new();
    let raw = fx.path("source.raw");
    let mut gen = DataGen::new(seed("compressed_images_restore_exactly"));
    make_image(&raw, ImageSpec::mixed(12 * MIB), &mut gen);
    for (name, opts) in [
        ("deflate.qcow2", &[][..]),
        ("zstd.qcow2", &["-o", "compression_type=zstd"][..]),
        ("deflate-v2.qcow2", &["-o", "compat=0.10"][..]),
        (
            "zstd-extended-l2.qcow2",
            &["-o", "compression_type=zstd,extended_l2=on"][..],
        ),
    ] {
        let img = fx.path(name);
        let mut args = vec!["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend([raw.to_str().unwrap(), img.to_str().unwrap()]);
        qemu_img(&args);
        let disk = fx.full_roundtrip(name, &img);
        let restored = fx.path("restored.raw");
        assert_same_file(&raw, &restored);
        let read = u64_of(&disk, "bytes_read");
        let file_len = fs::metadata(&img).unwrap().len();
        assert!(
            read <= file_len,
            "{name}: read {read} bytes from a {file_len}-byte file"
        );
    }
}

#[test]
fn extended_l2_subclusters_restore_exactly() {
    let fx = Fx::new();
    let img = fx.path("ext.qcow2");
    create(&img, "6M", &["-o", "extended_l2=on,cluster_size=64k"]);
    io(
        &img,
        &[
            "write -P 0x41 4k 4k",
            "write -P 0x42 20k 8k",
            "write -P 0x43 70000 1000",
            "write -P 0x44 1M 64k",
            "write -z 1040k 4k",
            "write -P 0x45 3M 2k",
            "write -z 4M 8k",
        ],
    );
    let disk = fx.full_roundtrip("ext", &img);
    let read = u64_of(&disk, "bytes_read");
    assert!(
        read < 256 * 1024,
        "bytes_read {read}: subclusters not allocated were read"
    );
}

#[test]
fn cluster_size_extremes_restore_exactly() {
    let fx = Fx::new();
    for (name, size, cluster) in [("c2m.qcow2", "10M", "2M"), ("c512.qcow2", "2M", "512")] {
        let img = fx.path(name);
        create(&img, size, &["-o", &format!("cluster_size={cluster}")]);
        io(
            &img,
            &[
                "write -P 0x51 0 3000",
                "write -P 0x52 1000000 70000",
                "write -z 1000000 512",
                "write -P 0x53 1536k 512k",
            ],
        );
        fx.full_roundtrip(name, &img);
    }
}

#[test]
fn dirty_image_is_read() {
    let fx = Fx::new();
    let img = fx.path("dirty.qcow2");
    create(&img, "4M", &[]);
    io(&img, &["write -P 0x61 64k 200k"]);
    patch(&img, 79, &[1]); // incompatible_features bit 0
    fx.full_roundtrip("dirty", &img);
}

// ---------------------------------------------------------------------------------------
// Overlays, read in full through the chain
// ---------------------------------------------------------------------------------------

/// base.qcow2 → ov1.qcow2 → ov2.qcow2 (extended L2); returns the three images.
fn qcow2_chain(fx: &Fx) -> [PathBuf; 3] {
    let base = fx.path("base.qcow2");
    create(&base, "8M", &[]);
    io(&base, &["write -P 0x01 0 3M", "write -P 0x02 5M 1M"]);
    let ov1 = fx.path("ov1.qcow2");
    create(&ov1, "8M", &["-b", "base.qcow2", "-F", "qcow2"]);
    io(
        &ov1,
        &[
            "write -P 0x11 64k 64k",
            "write -z 1M 128k",
            "write -P 0x12 2000000 5000",
            "write -P 0x13 7M 100k",
        ],
    );
    let ov2 = fx.path("ov2.qcow2");
    create(
        &ov2,
        "8M",
        &[
            "-b",
            "ov1.qcow2",
            "-F",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
        ],
    );
    io(
        &ov2,
        &[
            "write -P 0x21 8k 4k",
            "write -z 5M 4k",
            "write -P 0x22 2001000 300",
            "write -P 0x23 6M 64k",
        ],
    );
    [base, ov1, ov2]
}

#[test]
fn overlay_chain_reads_through_backing_files() {
    let fx = Fx::new();
    for image in qcow2_chain(&fx) {
        let name = image.file_name().unwrap().to_str().unwrap().to_string();
        fx.full_roundtrip(&name, &image);
    }
    verify(&fx.repo).ok();
}

#[test]
fn overlay_on_a_smaller_raw_base_reads_zeros_beyond_it() {
    let fx = Fx::new();
    let base = fx.path("base.raw");
    let mut gen = DataGen::new(seed("overlay_on_a_smaller_raw_base"));
    make_image(&base, ImageSpec::mixed(6 * MIB), &mut gen);
    let ov = fx.path("ov.qcow2");
    create(&ov, "9M", &["-b", base.to_str().unwrap(), "-F", "raw"]);
    io(
        &ov,
        &[
            "write -P 0x71 100k 50k",
            "write -z 2M 64k",
            "write -P 0x72 7M 10k",
        ],
    );
    fx.full_roundtrip("raw-base", &ov);
}

#[test]
fn missing_backing_file_makes_full_reads_fail_naming_it() {
    let fx = Fx::new();
    let [base, ov1, _] = qcow2_chain(&fx);
    fs::rename(&base, fx.path("moved.qcow2")).unwrap();
    fx.assert_refused(&ov1, "base.qcow2");
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

/// A small good image with data in two L2 tables' worth of clusters.
fn good_image(fx: &Fx, name: &str) -> PathBuf {
    let img = fx.path(name);
    create(&img, "4M", &[]);
    io(&img, &["write -P 0x81 0 1M", "write -P 0x82 3M 512k"]);
    img
}

#[test]
fn encrypted_corrupt_and_external_data_images_are_refused() {
    let fx = Fx::new();
    let enc = fx.path("enc.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=abc",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        enc.to_str().unwrap(),
        "1M",
    ]);
    fx.assert_refused(&enc, "encrypted qcow2 images are not supported");

    let corrupt = good_image(&fx, "corrupt.qcow2");
    patch(&corrupt, 79, &[2]);
    fx.assert_refused(&corrupt, "marked corrupt");

    let ext = fx.path("ext.qcow2");
    let data = fx.path("ext.data");
    create(
        &ext,
        "1M",
        &["-o", &format!("data_file={}", data.display())],
    );
    fx.assert_refused(&ext, "external data file");
}

#[test]
fn damaged_tables_and_truncation_are_refused() {
    let fx = Fx::new();
    let l1_offset_of = |img: &Path| read_be64(img, 40);

    let l2_out = good_image(&fx, "l2-out.qcow2");
    let l1 = l1_offset_of(&l2_out);
    patch(
        &l2_out,
        l1,
        &(0x00ff_ffff_0000_0000u64 | 1 << 63).to_be_bytes(),
    );
    fx.assert_refused(&l2_out, "L2 table offset");

    let l2_unaligned = good_image(&fx, "l2-unaligned.qcow2");
    let entry = read_be64(&l2_unaligned, l1_offset_of(&l2_unaligned));
    patch(
        &l2_unaligned,
        l1_offset_of(&l2_unaligned),
        &(entry + 512).to_be_bytes(),
    );
    fx.assert_refused(&l2_unaligned, "not aligned");

    let l1_out = good_image(&fx, "l1-out.qcow2");
    patch(&l1_out, 40, &(1u64 << 40).to_be_bytes());
    fx.assert_refused(&l1_out, "L1 table");

    let bits = good_image(&fx, "bits.qcow2");
    patch(&bits, 20, &40u32.to_be_bytes());
    fx.assert_refused(&bits, "cluster_bits 40");

    let truncated = good_image(&fx, "truncated.qcow2");
    let len = fs::metadata(&truncated).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fx.assert_refused(&truncated, "past the end of the file");
}

/// The file offset of the first compressed cluster's payload of a 64 KiB-cluster image.
fn first_compressed_payload(img: &Path) -> u64 {
    let l1 = read_be64(img, 40);
    let l2 = read_be64(img, l1) & 0x00ff_ffff_ffff_fe00;
    let x = 62 - (16 - 8);
    (0..8192)
        .map(|i| read_be64(img, l2 + i * 8))
        .find(|e| e & (1 << 62) != 0)
        .map(|e| e & ((1u64 << x) - 1))
        .expect("a compressed cluster")
}

#[test]
fn garbled_compressed_payload_is_refused() {
    let fx = Fx::new();
    let raw = fx.path("source.raw");
    let mut gen = DataGen::new(seed("garbled_compressed_payload_is_refused"));
    make_image(&raw, ImageSpec::mixed(4 * MIB), &mut gen);
    let img = fx.path("c.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let payload = first_compressed_payload(&img);
    // 0xff: final block of the invalid deflate block type 3.
    patch(&img, payload, &[0xff; 16]);
    fx.assert_refused(&img, "compressed cluster");
}

#[test]
fn backing_chain_cycle_is_refused() {
    let fx = Fx::new();
    let c = fx.path("c.qcow2");
    create(&c, "1M", &[]);
    let a = fx.path("a.qcow2");
    create(&a, "1M", &["-b", "c.qcow2", "-F", "qcow2"]);
    let b = fx.path("b.qcow2");
    create(&b, "1M", &["-b", "a.qcow2", "-F", "qcow2"]);
    // a's backing name "c.qcow2" becomes "b.qcow2": a → b → a.
    let name_at = read_be64(&a, 8);
    let head = fs::read(&a).unwrap();
    assert_eq!(&head[name_at as usize..name_at as usize + 7], b"c.qcow2");
    patch(&a, name_at, b"b");
    fx.assert_refused(&b, "cycle");
    fx.assert_refused(&a, "cycle");
}

/// A backing file is a path the image's maker chose: it is opened only from the top image's
/// directory (or one allowed with `--allow-backing-dir`) and only if it is a regular file.
#[test]
fn backing_files_outside_the_image_directory_are_refused() {
    let fx = Fx::new();
    // `/etc/shadow` as a raw backing file (made with -u: qemu-img does not open it).
    let shadow = fx.path("shadow.qcow2");
    create(&shadow, "1M", &["-u", "-b", "/etc/shadow", "-F", "raw"]);
    fx.assert_refused(&shadow, "outside");
    fx.assert_refused(&shadow, "--allow-backing-dir");
    // The same through a symbolic link inside the directory.
    std::os::unix::fs::symlink("/etc/shadow", fx.path("innocent.raw")).unwrap();
    let linked = fx.path("linked.qcow2");
    create(&linked, "1M", &["-u", "-b", "innocent.raw", "-F", "raw"]);
    fx.assert_refused(&linked, "outside");
    // A FIFO inside the directory: refused instead of blocking the backup.
    let fifo = fx.path("fifo.raw");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let piped = fx.path("piped.qcow2");
    create(&piped, "1M", &["-u", "-b", "fifo.raw", "-F", "raw"]);
    fx.assert_refused(&piped, "not a regular file");

    // A genuine base in another directory: refused, then read with --allow-backing-dir.
    let bases = fx.path("bases");
    fs::create_dir(&bases).unwrap();
    let base = bases.join("base.qcow2");
    create(&base, "2M", &[]);
    io(&base, &["write -P 0x5a 0 1M"]);
    fs::create_dir(fx.path("vm")).unwrap();
    let overlay = fx.path("vm/overlay.qcow2");
    create(
        &overlay,
        "2M",
        &["-b", "../bases/base.qcow2", "-F", "qcow2"],
    );
    io(&overlay, &["write -P 0x77 512k 64k"]);
    fx.assert_refused(&overlay, "outside");
    let allow = bases.display().to_string();
    let v = fx.backup("allowed", &overlay, &["--allow-backing-dir", &allow]);
    fx.assert_restores_as(&snapshot_id(&v), &overlay, "qcow2");
}

// ---------------------------------------------------------------------------------------
// Delta backups of overlays (--reference)
// ---------------------------------------------------------------------------------------

/// Backs up `image` with `--reference latest` in `series`, expecting `mode`; checks the
/// restore against the oracle and returns the disk JSON.
#[track_caller]
fn reference_roundtrip(fx: &Fx, series: &str, image: &Path, mode: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--reference", "latest"];
    args.extend_from_slice(extra);
    let v = fx.backup(series, image, &args);
    let disk = v["disks"][0].clone();
    assert_eq!(disk["mode"], mode, "{}: {disk}", image.display());
    fx.assert_restores_as(&snapshot_id(&v), image, "qcow2");
    disk
}

#[test]
fn overlay_chain_backs_up_as_deltas() {
    let fx = Fx::new();
    let [base, ov1, ov2] = qcow2_chain(&fx);
    let first = fx.full_roundtrip("chain", &base);
    assert_eq!(first["mode"], "full", "{first}");

    // ov1 (64 KiB clusters): data clusters 1, 30, 112, 113 and zero clusters 16, 17.
    let d1 = reference_roundtrip(&fx, "chain", &ov1, "delta", &[]);
    assert_eq!(u64_of(&d1, "changed_bytes"), 6 * 65536, "{d1}");
    assert!(u64_of(&d1, "bytes_read") <= 4 * 65536, "{d1}");

    // ov2 (extended L2, 2 KiB subclusters): 4 KiB data, 4 KiB zero, one 2 KiB subcluster
    // around an unaligned 300-byte write, one whole cluster.
    let d2 = reference_roundtrip(&fx, "chain", &ov2, "delta", &[]);
    assert_eq!(
        u64_of(&d2, "changed_bytes"),
        4096 + 4096 + 2048 + 65536,
        "{d2}"
    );
    assert!(u64_of(&d2, "bytes_read") <= 2048 + 4096 + 65536, "{d2}");

    // Key backups read everything and compare with the delta information: no block outside
    // the extents differs from the base (no drift), so the extents are complete.
    let base_v = fx.backup("keys", &base, &["--format", "qcow2"]);
    assert_eq!(base_v["disks"][0]["mode"], "full", "{base_v}");
    for image in [&ov1, &ov2] {
        let k = reference_roundtrip(&fx, "keys", image, "key", &["--full"]);
        assert_eq!(u64_of(&k, "drift_blocks"), 0, "{}: {k}", image.display());
    }
    verify(&fx.repo).ok();
}

#[test]
fn overlay_on_raw_base_backs_up_as_delta() {
    let fx = Fx::new();
    let base = fx.path("base.raw");
    let mut gen = DataGen::new(seed("overlay_on_raw_base_backs_up_as_delta"));
    make_image(&base, ImageSpec::mixed(6 * MIB), &mut gen);
    let base_snapshot = snapshot_id(&fx.backup("raw", &base, &[]));
    let ov = fx.path("ov.qcow2");
    create(&ov, "6M", &["-b", "base.raw", "-F", "raw"]);
    io(
        &ov,
        &[
            "write -P 0x71 100000 50000",
            "write -z 2M 64k",
            "write -P 0x72 5M 10k",
        ],
    );
    let d = reference_roundtrip(&fx, "raw", &ov, "delta", &[]);
    assert!(u64_of(&d, "bytes_read") < 6 * 65536, "{d}");

    // A larger overlay on the same base: the size changed, so a key backup (full read).
    let big = fx.path("big.qcow2");
    create(&big, "9M", &["-b", "base.raw", "-F", "raw"]);
    io(&big, &["write -P 0x73 8M 100k"]);
    let v = fx.backup("raw", &big, &["--reference", &base_snapshot]);
    assert_eq!(v["disks"][0]["mode"], "key", "{v}");
    fx.assert_restores_as(&snapshot_id(&v), &big, "qcow2");
}

#[test]
fn overlay_on_a_wrong_base_is_refused_unless_fallback_full() {
    let fx = Fx::new();
    let base1 = good_image(&fx, "base1.qcow2");
    let base2 = good_image(&fx, "base2.qcow2");
    fx.backup("s", &base1, &[]);

    // An overlay on a different base.
    let other = fx.path("other.qcow2");
    create(&other, "4M", &["-b", "base2.qcow2", "-F", "qcow2"]);
    io(&other, &["write -P 0x91 0 64k"]);
    assert_wrong_base(&fx, &other, &base2);

    // An overlay on base1, but base1 was written after its backup.
    let ov = fx.path("ov.qcow2");
    create(&ov, "4M", &["-b", "base1.qcow2", "-F", "qcow2"]);
    io(&ov, &["write -P 0x92 64k 64k"]);
    io(&base1, &["write -P 0x93 2M 64k"]);
    assert_wrong_base(&fx, &ov, &base1);
}

/// `--reference latest` refuses `overlay` (whose base is `base`) and stores nothing;
/// `--fallback-full` reads it in full.
#[track_caller]
fn assert_wrong_base(fx: &Fx, overlay: &Path, base: &Path) {
    let snaps = list_ids(&fx.repo);
    let packs = pack_bytes(&fx.repo);
    let out = fx.backup_out("s", overlay, &["--reference", "latest"]);
    out.expect_code(5)
        .stderr_has("applies on")
        .stderr_has(base.file_name().unwrap().to_str().unwrap())
        .stderr_has("--fallback-full");
    assert_eq!(list_ids(&fx.repo), snaps, "{out}");
    assert_eq!(pack_bytes(&fx.repo), packs, "{out}");
    let d = reference_roundtrip(fx, "s", overlay, "key", &["--fallback-full"]);
    assert_eq!(u64_of(&d, "size"), 4 * MIB);
}

#[test]
fn overlay_with_missing_base_is_refused_as_delta() {
    let fx = Fx::new();
    let [base, ov1, _] = qcow2_chain(&fx);
    fx.backup("chain", &base, &[]);
    fs::rename(&base, fx.path("moved.qcow2")).unwrap();
    let snaps = list_ids(&fx.repo);
    let out = fx.backup_out("chain", &ov1, &["--reference", "latest"]);
    // A wrong base (its state cannot be checked) is a refusal (5).
    out.expect_code(5).stderr_has("base.qcow2 (missing");
    assert_eq!(list_ids(&fx.repo), snaps, "{out}");
    let out = fx.backup_out("chain", &ov1, &["--reference", "latest", "--fallback-full"]);
    out.expect_code(5).stderr_has("base.qcow2");
    assert_eq!(list_ids(&fx.repo), snaps, "{out}");
}

#[test]
fn backing_chains_deeper_than_16_images_are_refused() {
    let fx = Fx::new();
    create(&fx.path("l0.qcow2"), "1M", &[]);
    for i in 1..=16 {
        let below = format!("l{}.qcow2", i - 1);
        create(
            &fx.path(&format!("l{i}.qcow2")),
            "1M",
            &["-b", &below, "-F", "qcow2"],
        );
    }
    io(&fx.path("l0.qcow2"), &["write -P 0x61 0 4k"]);
    // l15 → … → l0 is 16 images: still read; l16 adds a 17th.
    fx.full_roundtrip("ok", &fx.path("l15.qcow2"));
    fx.assert_refused(&fx.path("l16.qcow2"), "deeper than 16");
}
