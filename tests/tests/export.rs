//! `tessera export`, checked with independent readers: `qemu-img` (check, info, convert)
//! for qcow2 images, overlays and dynamic VHDs, and libvhdi (the `pyvhdi` Python module, pip
//! package `libvhdi-python`) for differencing VHDs, which qemu's `vpc` driver cannot follow
//! to their parent. A missing `qemu-img` or `pyvhdi` fails the tests (`scripts/ensure-deps.sh`
//! installs both).
//!
//! Each image: zero regions, compressible and random data; backed up (B), changed (small
//! writes plus whole blocks that become all zero), backed up again (A). Then A in full as
//! raw/qcow2/VHD, and A as a delta over B's export (qcow2 overlay, differencing VHD), must
//! read back as image A byte for byte (qcow2/VHD pad the disk to a 512-byte multiple with
//! zeros: checked too).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use rand::Rng;
use tessera_tests::libvhdi::vhdi_read;
use tessera_tests::qemu::qemu_img;
use tessera_tests::{
    assert_same_file, backup_json, block_digests, init_repo, make_image, mutate, seed, snapshot_id,
    tessera, DataGen, ImageSpec, Value,
};

/// `actual` is `expected` followed by zeros up to the next multiple of 512.
#[track_caller]
fn assert_same_padded(expected: &Path, actual: &Path) {
    let want = fs::metadata(expected).unwrap().len();
    let got = fs::metadata(actual).unwrap().len();
    assert_eq!(
        got,
        want.div_ceil(512) * 512,
        "size of {}",
        actual.display()
    );
    if got != want {
        let tail = fs::read(actual).unwrap()[want as usize..].to_vec();
        assert!(
            tail.iter().all(|&b| b == 0),
            "padding of {} is not zero",
            actual.display()
        );
        let f = OpenOptions::new().write(true).open(actual).unwrap();
        f.set_len(want).unwrap();
    }
    assert_same_file(expected, actual);
}

fn export(repo: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json", "export", repo.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = tessera(&all);
    out.ok();
    out.json()
}

/// Allocated BAT entries of a dynamic or differencing VHD, read from its dynamic header.
fn vhd_allocated_blocks(vhd: &Path) -> u64 {
    let bytes = fs::read(vhd).unwrap();
    let be64 = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().unwrap());
    let be32 = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(&bytes[512..520], b"cxsparse");
    let (bat, entries) = (be64(512 + 16) as usize, be32(512 + 28) as usize);
    (0..entries)
        .filter(|i| be32(bat + 4 * i) != u32::MAX)
        .count() as u64
}

fn allocated_clusters(qcow2: &Path) -> u64 {
    let v: Value = serde_json::from_str(&qemu_img(&[
        "check",
        "--output=json",
        qcow2.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(
        v["total-clusters"].is_u64(),
        "not a qcow2 check report: {v}"
    );
    // qemu-img leaves the field out when no cluster is allocated.
    v["allocated-clusters"].as_u64().unwrap_or(0)
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario read top to bottom: images, full exports, then both chains"
)]
fn run_case(label: &str, size: u64, block_size: &str, bs: u64) {
    let mut gen = DataGen::new(seed(label));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = w.join("repo");
    init_repo(&repo, &["--block-size", block_size]);
    let image = w.join("image");
    make_image(&image, ImageSpec::mixed(size), &mut gen);
    let b_img = w.join("b.img");
    fs::copy(&image, &b_img).unwrap();
    let b_id = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));

    mutate(&image, &mut gen, 4, 100_000, (1, 2, 3));
    // Whole blocks that become all zero.
    let before = block_digests(&b_img, bs);
    let nonzero: Vec<usize> = (0..before.len()).filter(|&i| !before[i].zero).collect();
    let f = OpenOptions::new().write(true).open(&image).unwrap();
    for _ in 0..2 {
        let i = nonzero[gen.rng.gen_range(0..nonzero.len())] as u64;
        let len = bs.min(size - i * bs);
        f.write_all_at(&vec![0u8; len as usize], i * bs).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let a_img = w.join("a.img");
    fs::copy(&image, &a_img).unwrap();
    let a_id = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));

    let after = block_digests(&a_img, bs);
    let changed_data = (0..after.len())
        .filter(|&i| after[i].digest != before[i].digest && !after[i].zero)
        .count() as u64;
    let became_zero = (0..after.len())
        .filter(|&i| after[i].zero && !before[i].zero)
        .count() as u64;
    assert!(became_zero > 0);

    let p = |n: &str| w.join(n).to_str().unwrap().to_string();

    // Raw, full.
    export(&repo, &[&a_id, &p("a.raw")]);
    assert_same_file(&a_img, &w.join("a.raw"));

    // qcow2, full.
    let full = export(&repo, &[&a_id, &p("a.qcow2"), "--format", "qcow2"]);
    assert_eq!(full["format"], "qcow2");
    qemu_img(&["check", &p("a.qcow2")]);
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &p("a.qcow2"),
        &p("a.qcow2.raw"),
    ]);
    assert_same_padded(&a_img, &w.join("a.qcow2.raw"));

    // VHD, full (qemu-img has no check for vpc: accept "does not support checks").
    export(&repo, &[&a_id, &p("a.vhd"), "--format", "vhd"]);
    let check = Command::new("qemu-img")
        .args(["check", "-f", "vpc", &p("a.vhd")])
        .output()
        .unwrap();
    assert!(
        check.status.success()
            || String::from_utf8_lossy(&check.stderr).contains("does not support checks"),
        "qemu-img check -f vpc: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let info: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "-f",
        "vpc",
        "--output=json",
        &p("a.vhd"),
    ]))
    .unwrap();
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(size.div_ceil(512) * 512),
        "{info}"
    );
    qemu_img(&[
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        &p("a.vhd"),
        &p("a.vhd.raw"),
    ]);
    assert_same_padded(&a_img, &w.join("a.vhd.raw"));

    // qcow2 chain: B in full, A as an overlay on it.
    export(&repo, &[&b_id, &p("b.qcow2"), "--format", "qcow2"]);
    let delta = export(
        &repo,
        &[
            &a_id,
            &p("a-delta.qcow2"),
            "--format",
            "qcow2",
            "--base",
            &b_id,
            "--backing-file",
            &p("b.qcow2"),
        ],
    );
    assert_eq!(
        delta["blocks_written"].as_u64(),
        Some(changed_data),
        "{delta}"
    );
    assert_eq!(
        delta["zero_blocks_written"].as_u64(),
        Some(became_zero),
        "{delta}"
    );
    qemu_img(&["check", &p("a-delta.qcow2")]);
    let info: Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", &p("a-delta.qcow2")])).unwrap();
    assert_eq!(
        info["backing-filename"].as_str(),
        Some(p("b.qcow2").as_str()),
        "{info}"
    );
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &p("a-delta.qcow2"),
        &p("a-delta.raw"),
    ]);
    assert_same_padded(&a_img, &w.join("a-delta.raw"));
    let (d, f) = (
        allocated_clusters(&w.join("a-delta.qcow2")),
        allocated_clusters(&w.join("a.qcow2")),
    );
    assert!(
        bs > 2 << 20 || d * 3 < f,
        "overlay allocates {d} clusters, the full export {f}"
    );

    // VHD chain: B in full, A as a differencing disk on it (parent recorded relatively).
    export(&repo, &[&b_id, &p("b.vhd"), "--format", "vhd"]);
    let vdelta = export(
        &repo,
        &[
            &a_id,
            &p("a-delta.vhd"),
            "--format",
            "vhd",
            "--base",
            &b_id,
            "--backing-file",
            "b.vhd",
        ],
    );
    assert_eq!(vdelta["backing_file"], "b.vhd");
    // Exactly the 2 MiB blocks holding a changed tessera block are allocated.
    let mut vblocks: Vec<u64> = (0..after.len() as u64)
        .filter(|&i| after[i as usize].digest != before[i as usize].digest)
        .flat_map(|i| ((i * bs) >> 21)..=((i * bs + after[i as usize].len - 1) >> 21))
        .collect();
    vblocks.dedup();
    assert_eq!(
        vhd_allocated_blocks(&w.join("a-delta.vhd")),
        vblocks.len() as u64
    );
    vhdi_read(&[&w.join("b.vhd")], &w.join("b.vhd.raw"));
    assert_same_padded(&b_img, &w.join("b.vhd.raw"));
    vhdi_read(
        &[&w.join("a-delta.vhd"), &w.join("b.vhd")],
        &w.join("a-delta.vhd.raw"),
    );
    assert_same_padded(&a_img, &w.join("a-delta.vhd.raw"));
}

#[test]
fn export_size_not_a_multiple_of_the_block_or_sector() {
    run_case("export-odd", (6 << 20) + 3 * 4096 + 700, "64K", 64 << 10);
}

#[test]
fn export_size_a_multiple_of_the_block() {
    run_case("export-even", 8 << 20, "64K", 64 << 10);
}

#[test]
fn export_4m_blocks_split_into_2m_clusters() {
    run_case("export-4m", (9 << 20) + 4096, "4M", 4 << 20);
}

#[test]
fn export_refuses_bad_requests() {
    let mut gen = DataGen::new(seed("export-errors"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    let image = w.join("image");
    make_image(&image, ImageSpec::mixed(1 << 20), &mut gen);
    let id = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));
    let other = snapshot_id(&backup_json(&repo, "other", &[("d0", &image)]));
    let r = repo.to_str().unwrap();
    let out = w.join("out.qcow2");
    let o = out.to_str().unwrap();
    fs::write(&out, b"keep me").unwrap();

    tessera(["export", r, &id, o, "--format", "qcow2"])
        .expect_code(2)
        .stderr_has("already exists");
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    tessera(["export", r, &id, o, "--format", "qcow2", "--force"]).ok();
    qemu_img(&["check", o]);

    tessera(["export", r, &id, &format!("{o}.raw"), "--base", &other])
        .expect_code(2)
        .stderr_has("raw export cannot hold a delta");
    assert!(!Path::new(&format!("{o}.raw")).exists());
    tessera(["export", r, &id, &format!("{o}.x"), "--format", "vmdk"])
        .expect_code(2)
        .stderr_has("unknown export format");

    // A base with another block size.
    let repo2 = w.join("repo2");
    init_repo(&repo2, &[]);
    let r2 = repo2.to_str().unwrap();
    let small = snapshot_id(&backup_json(&repo2, "vm", &[("d0", &image)]));
    let big = tessera([
        "--json",
        "backup",
        r2,
        "--series",
        "big",
        "--block-size",
        "128K",
        &format!("d0={}", image.display()),
    ]);
    big.ok();
    let big = snapshot_id(&big.json());
    tessera([
        "export",
        r2,
        &big,
        &format!("{o}.d"),
        "--format",
        "qcow2",
        "--base",
        &small,
    ])
    .expect_code(2)
    .stderr_has("different block sizes");
    assert!(!Path::new(&format!("{o}.d")).exists());
    assert!(tessera_tests::dir_entries(w)
        .iter()
        .all(|n| !n.contains("tessera-partial")));
}

/// A delta between snapshots of different sizes (the disk grew, then shrank): a qcow2 overlay
/// reads back exactly through its base; a differencing VHD is refused (it must have its
/// parent's size).
#[test]
fn export_delta_across_a_resize() {
    let mut gen = DataGen::new(seed("export-resize"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = w.join("repo");
    init_repo(&repo, &[]);
    let image = w.join("image");
    let p = |n: &str| w.join(n).to_str().unwrap().to_string();
    make_image(&image, ImageSpec::mixed((3 << 20) + 1536), &mut gen);
    let mut gens = Vec::new();
    for (g, new_len) in [
        (0, None),
        (1, Some((5 << 20) + 70_000)),
        (2, Some((2 << 20) + 333)),
    ] {
        if let Some(len) = new_len {
            let f = OpenOptions::new().write(true).open(&image).unwrap();
            let old = f.metadata().unwrap().len();
            f.set_len(len).unwrap();
            if len > old {
                f.write_all_at(
                    &gen.bytes(tessera_tests::Fill::Random, 50_000),
                    old + 10_000,
                )
                .unwrap();
            }
            drop(f);
            mutate(&image, &mut gen, 3, 50_000, (1, 2, 3));
        }
        let copy = w.join(format!("gen{g}.img"));
        fs::copy(&image, &copy).unwrap();
        gens.push((
            snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)])),
            copy,
        ));
    }
    for (base, top) in [(0usize, 1usize), (1, 2), (2, 1)] {
        let (b_id, _) = &gens[base];
        let (a_id, a_img) = &gens[top];
        let tag = format!("{base}-{top}");
        let (bq, aq) = (p(&format!("b{tag}.qcow2")), p(&format!("a{tag}.qcow2")));
        export(&repo, &[b_id, &bq, "--format", "qcow2"]);
        export(
            &repo,
            &[
                a_id,
                &aq,
                "--format",
                "qcow2",
                "--base",
                b_id,
                "--backing-file",
                &bq,
            ],
        );
        qemu_img(&["check", &aq]);
        let raw = p(&format!("a{tag}.qcow2.raw"));
        qemu_img(&["convert", "-O", "raw", &aq, &raw]);
        assert_same_padded(a_img, Path::new(&raw));
        let (bv, av) = (w.join(format!("b{tag}.vhd")), w.join(format!("a{tag}.vhd")));
        export(&repo, &[b_id, bv.to_str().unwrap(), "--format", "vhd"]);
        let out = tessera([
            "export",
            repo.to_str().unwrap(),
            a_id,
            av.to_str().unwrap(),
            "--format",
            "vhd",
            "--base",
            b_id,
        ]);
        out.expect_code(2).stderr_has("must have its parent's size");
        assert!(!av.exists());
    }
}
