//! `tessera files` on LVM2 logical volumes (SPEC.md §24.2): physical volumes and volume
//! groups made by LVM's own tools (`pvcreate`, `vgcreate` on a loop device over the disk
//! image), logical volumes laid out with `vgcfgrestore` (device-mapper is not available
//! here, so `lvcreate` cannot run: LVM's own tools still write and check the metadata, the
//! recipe of `../shared/recipes.md`), and filesystems made by `mkfs.ext4 -d` and
//! `mkfs.vfat` + `mcopy` written into the LVs' extents. The oracle is the source tree,
//! compared byte for byte after `files get`, and `lvs`' own view of where segments lie.
//!
//! Needs root and loop devices (`losetup`); without them the tests fail, they do not skip.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: build the disks, back up, check everything"
)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;
use tessera_tests::fs_images::{
    assert_trees_equal, entry_names, files, files_json, mcopy_tree, mkfs_ext, mkfs_fat, run_tool,
    set_mtime, source_names, tessera_raw, TreeCompare,
};
use tessera_tests::{backup_json, init_repo, seed, DataGen, Fill};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An LVM command, without its complaints about inherited descriptors.
fn lvm(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("LVM_SUPPRESS_FD_WARNINGS", "1");
    cmd
}

/// A loop device over `image` (from byte `offset`), detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path, offset: u64) -> Self {
        let out = run_tool(
            Command::new("losetup")
                .args(["-f", "--show", "-o", &offset.to_string()])
                .arg(image),
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A linear segment: LV extents from `start`, `count` of them, on PV `pv` from extent `pe`.
struct Segment {
    start: u64,
    count: u64,
    pv: &'static str,
    pe: u64,
}

/// Makes volume group `vg` on the loop devices `pvs` (in order: pv0, pv1, ...) with the
/// logical volumes `lvs`, through `vgcfgbackup`, an added `logical_volumes` section and
/// `vgcfgrestore`; then deactivates nothing (nothing was activated) and forgets the VG on
/// this host, leaving the metadata in the images. Returns the extent size and each PV's
/// first extent offset in bytes (from `pvs -o pe_start`).
fn make_vg(dir: &Path, vg: &str, pvs: &[&Loop], lvs: &[(&str, Vec<Segment>)]) -> (u64, Vec<u64>) {
    for pv in pvs {
        run_tool(lvm("pvcreate").args(["-q", "-y", &pv.0]));
    }
    let mut create = lvm("vgcreate");
    create.args(["-q", "-s", "1m", vg]);
    for pv in pvs {
        create.arg(&pv.0);
    }
    run_tool(&mut create);
    let backup = dir.join(format!("{vg}.txt"));
    run_tool(lvm("vgcfgbackup").args(["-q", "-f"]).arg(&backup).arg(vg));
    let text = fs::read_to_string(&backup).unwrap();
    let mut section = String::from("\n\tlogical_volumes {\n");
    for (i, (name, segments)) in lvs.iter().enumerate() {
        let _ = write!(
            section,
            "\t\t{name} {{\n\t\t\tid = \"abcdef-ghij-klmn-opqr-stuv-wxyz-{i:06}\"\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = {}\n",
            segments.len()
        );
        for (k, seg) in segments.iter().enumerate() {
            let _ = write!(
                section,
                "\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {}\n\t\t\t\textent_count = {}\n\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\n\t\t\t\t\t\"{}\", {}\n\t\t\t\t]\n\t\t\t}}\n",
                k + 1,
                seg.start,
                seg.count,
                seg.pv,
                seg.pe
            );
        }
        section.push_str("\t\t}\n");
    }
    section.push_str("\t}\n");
    let end = text.rfind('}').unwrap();
    let restored = format!("{}{section}{}", &text[..end], &text[end..]);
    let restored_path = dir.join(format!("{vg}-lvs.txt"));
    fs::write(&restored_path, restored).unwrap();
    // vgcfgrestore warns that it cannot check for active LVs without device-mapper.
    let out = lvm("vgcfgrestore")
        .args(["-q", "-f"])
        .arg(&restored_path)
        .arg(vg)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Restored volume group")
            || out.status.success(),
        "vgcfgrestore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // LVM's own view of the layout: the oracle for where each LV's bytes are.
    let lvs_out = run_tool(lvm("lvs").args([
        "--noheadings",
        "-o",
        "lv_name,seg_start_pe,seg_pe_ranges",
        vg,
    ]));
    let listing = String::from_utf8_lossy(&lvs_out.stdout).into_owned();
    for (name, segments) in lvs {
        for seg in segments {
            let want = format!("{}-{}", seg.pe, seg.pe + seg.count - 1);
            assert!(
                listing
                    .lines()
                    .any(|l| l.contains(name) && l.contains(&want)),
                "lvs does not show {name} at PE {want}: {listing}"
            );
        }
    }
    let starts = pvs
        .iter()
        .map(|pv| {
            let out = run_tool(lvm("pvs").args([
                "--noheadings",
                "--units",
                "b",
                "-o",
                "pe_start",
                &pv.0,
            ]));
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_end_matches('B')
                .parse()
                .unwrap()
        })
        .collect();
    // Forget the VG on this host without touching the disks: the next test's loop device
    // may reuse the device name.
    let _ = lvm("vgchange").args(["-q", "-an", vg]).output();
    (1 << 20, starts)
}

/// Writes `fs_image` into LV extents `segments` of PV image `pv_image` (the PV starting at
/// byte `pv_at` of it, its first extent at `pe_start`), extent by extent.
fn write_into_lv(
    pv_image: &Path,
    pv_at: u64,
    pe_start: u64,
    extent: u64,
    segments: &[Segment],
    fs_image: &Path,
) {
    use std::os::unix::fs::FileExt;
    let data = fs::read(fs_image).unwrap();
    let disk = fs::OpenOptions::new().write(true).open(pv_image).unwrap();
    for seg in segments {
        let from = (seg.start * extent) as usize;
        let to = (from + (seg.count * extent) as usize).min(data.len());
        if from >= to {
            continue;
        }
        disk.write_all_at(&data[from..to], pv_at + pe_start + seg.pe * extent)
            .unwrap();
    }
}

fn build_tree(src: &Path, gen: &mut DataGen) {
    fs::create_dir_all(src.join("etc/app")).unwrap();
    fs::create_dir_all(src.join("var/lib/db")).unwrap();
    fs::write(src.join("etc/hostname"), b"lvm-guest\n").unwrap();
    fs::write(src.join("etc/app/config.toml"), b"[server]\nport = 8080\n").unwrap();
    fs::write(
        src.join("var/lib/db/data.bin"),
        gen.bytes(Fill::Random, 5 << 20),
    )
    .unwrap();
    std::os::unix::fs::symlink("../var/lib/db/data.bin", src.join("etc/data")).unwrap();
}

fn compare() -> TreeCompare<'static> {
    TreeCompare {
        only_in_actual: &["lost+found"],
        owners: true,
        symlink_times: true,
        ..TreeCompare::default()
    }
}

#[test]
fn linear_logical_volumes_on_a_whole_disk_pv_read_back_equal() {
    let mut gen = DataGen::new(seed("files_lvm_whole"));
    // Unique on this host: LVM knows VGs by name, and another run may be building its own.
    let vg = format!("tvgwhole{}", std::process::id());
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let disk = dir.join("disk.img");
    fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    // root: 16 extents in two segments, the second before the first on the disk; boot: one.
    let root_segments = vec![
        Segment {
            start: 0,
            count: 6,
            pv: "pv0",
            pe: 30,
        },
        Segment {
            start: 6,
            count: 10,
            pv: "pv0",
            pe: 2,
        },
    ];
    let boot_segments = vec![Segment {
        start: 0,
        count: 8,
        pv: "pv0",
        pe: 12,
    }];
    let (extent, starts) = {
        let dev = Loop::attach(&disk, 0);
        make_vg(
            dir,
            &vg,
            &[&dev],
            &[
                ("root", root_segments_clone(&root_segments)),
                ("boot", root_segments_clone(&boot_segments)),
            ],
        )
    };
    let src = dir.join("src");
    build_tree(&src, &mut gen);
    let root_fs = dir.join("root.ext4");
    mkfs_ext(&root_fs, &src, "16M", &[]);
    write_into_lv(&disk, 0, starts[0], extent, &root_segments, &root_fs);
    let boot_src = dir.join("boot-src");
    fs::create_dir_all(boot_src.join("EFI/Boot")).unwrap();
    fs::write(
        boot_src.join("EFI/Boot/grubx64.efi"),
        gen.bytes(Fill::Random, 300_000),
    )
    .unwrap();
    fs::write(boot_src.join("Long Name Config.txt"), b"timeout=5\n").unwrap();
    // FAT keeps even seconds: give every name one, deepest first.
    for rel in [
        "EFI/Boot/grubx64.efi",
        "Long Name Config.txt",
        "EFI/Boot",
        "EFI",
    ] {
        set_mtime(&boot_src.join(rel), 1_700_000_000);
    }
    let boot_fs = dir.join("boot.fat");
    mkfs_fat(&boot_fs, 12, 8 << 20, &[]);
    mcopy_tree(&boot_fs, &boot_src, "::/");
    write_into_lv(&disk, 0, starts[0], extent, &boot_segments, &boot_fs);

    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    backup_json(&repo, "lvm", &[("disk0", &disk)]);
    let r = s(&repo);

    // parts: the PV and its LVs, with what each holds.
    let parts = files_json(&["parts", &r, "latest@lvm"]);
    let vol = &parts["volumes"][0];
    assert_eq!(vol["holds"], "lvm2", "{parts}");
    let lvs = vol["logical_volumes"].as_array().unwrap();
    let find = |name: &str| {
        lvs.iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {parts}"))
    };
    assert_eq!(find(&format!("{vg}/root"))["size"], 16 << 20);
    assert_eq!(find(&format!("{vg}/root"))["holds"], "ext");
    assert_eq!(find(&format!("{vg}/boot"))["holds"], "fat");

    // ls, cat, get through each LV.
    let root = format!("latest@lvm:{vg}/root:");
    assert_eq!(
        entry_names(&files_json(&["ls", &r, &format!("{root}/etc")])),
        source_names(&src.join("etc"))
    );
    let data = tessera_raw(["files", "cat", r.as_str(), &format!("{root}/etc/data")]);
    data.expect_code(0);
    assert!(
        data.stdout == fs::read(src.join("var/lib/db/data.bin")).unwrap(),
        "cat through the symlink"
    );
    let out = dir.join("out");
    files_json(&["get", &r, &format!("{root}/"), &s(&out)]);
    assert_trees_equal(&src, &out, &compare());
    let boot_out = dir.join("boot-out");
    files_json(&[
        "get",
        &r,
        &format!("latest@lvm:disk0:{vg}/boot:/"),
        &s(&boot_out),
    ]);
    assert_trees_equal(&boot_src, &boot_out, &TreeCompare::default());

    // find follows the file through the series.
    let found = files_json(&[
        "find",
        &r,
        "--series",
        "lvm",
        "--lv",
        &format!("{vg}/root"),
        "/etc/hostname",
    ]);
    assert_eq!(found["snapshots"][0]["found"][0]["size"], 10, "{found}");

    // Misuse: no LV named, an unknown one, one on a volume that is not a PV.
    let no_lv = files(&["ls", &r, "latest@lvm:/"]);
    no_lv.expect_code(2);
    assert!(
        no_lv.stderr.contains(&format!("{vg}/boot"))
            && no_lv.stderr.contains(&format!("{vg}/root")),
        "{no_lv}"
    );
    let unknown = files(&["ls", &r, &format!("latest@lvm:{vg}/nope:/")]);
    unknown.expect_code(2);
    assert!(unknown.stderr.contains(&format!("{vg}/root")), "{unknown}");
    files(&["ls", &r, "latest@lvm:othervg/root:/"]).expect_code(2);
}

fn root_segments_clone(segments: &[Segment]) -> Vec<Segment> {
    segments
        .iter()
        .map(|s| Segment {
            start: s.start,
            count: s.count,
            pv: s.pv,
            pe: s.pe,
        })
        .collect()
}

#[test]
fn a_pv_in_an_mbr_partition_and_an_lv_on_another_disk() {
    let mut gen = DataGen::new(seed("files_lvm_part"));
    let vg = format!("tvgpart{}", std::process::id());
    let t = TempDir::new().unwrap();
    let dir = t.path();
    // disk0: MBR, partition 1 a small ext4, partition 2 a PV; disk1: a whole-disk PV of the
    // same VG.
    let disk0 = dir.join("disk0.img");
    let disk1 = dir.join("disk1.img");
    fs::File::create(&disk0).unwrap().set_len(80 << 20).unwrap();
    fs::File::create(&disk1).unwrap().set_len(32 << 20).unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&disk0)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=8e\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let part2_at = 18432 * 512;
    let local = vec![Segment {
        start: 0,
        count: 20,
        pv: "pv0",
        pe: 4,
    }];
    let spread = vec![
        Segment {
            start: 0,
            count: 4,
            pv: "pv0",
            pe: 30,
        },
        Segment {
            start: 4,
            count: 4,
            pv: "pv1",
            pe: 0,
        },
    ];
    let (extent, starts) = {
        let pv0 = Loop::attach(&disk0, part2_at);
        let pv1 = Loop::attach(&disk1, 0);
        make_vg(
            dir,
            &vg,
            &[&pv0, &pv1],
            &[
                ("data", root_segments_clone(&local)),
                ("spread", root_segments_clone(&spread)),
            ],
        )
    };
    let src = dir.join("src");
    build_tree(&src, &mut gen);
    let data_fs = dir.join("data.ext4");
    mkfs_ext(&data_fs, &src, "20M", &[]);
    write_into_lv(&disk0, part2_at, starts[0], extent, &local, &data_fs);

    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    backup_json(&repo, "p", &[("disk0", &disk0)]);
    let r = s(&repo);
    let parts = files_json(&["parts", &r, "latest@p"]);
    let pv = &parts["volumes"][1];
    assert_eq!(pv["holds"], "lvm2", "{parts}");
    let spread_info = pv["logical_volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == format!("{vg}/spread"))
        .unwrap();
    assert!(
        spread_info["unreadable"].as_str().unwrap().contains("pv1"),
        "{parts}"
    );

    let out = dir.join("out");
    files_json(&[
        "get",
        &r,
        &format!("latest@p:disk0:2:{vg}/data:/"),
        &s(&out),
    ]);
    assert_trees_equal(&src, &out, &compare());
    // The LV with extents on the other disk is refused by name (exit 5), never read as zeros.
    let spread_ls = files(&["ls", &r, &format!("latest@p:disk0:2:{vg}/spread:/")]);
    spread_ls.expect_code(5);
    assert!(
        spread_ls.stderr.contains("another physical volume"),
        "{spread_ls}"
    );
    // An LV named on the ext4 partition: not a PV.
    let not_pv = files(&["ls", &r, &format!("latest@p:disk0:1:{vg}/data:/")]);
    not_pv.expect_code(2);
    assert!(
        not_pv.stderr.contains("not an LVM2 physical volume"),
        "{not_pv}"
    );
}

/// A PV in no volume group (only `pvcreate`d) is listed by `parts` with why its group cannot
/// be read, and naming an LV on it is refused with that reason; neither fails the listing.
#[test]
fn a_pv_in_no_volume_group_is_listed_with_the_reason() {
    let t = TempDir::new().unwrap();
    let dir = t.path();
    let disk = dir.join("lonely.img");
    fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    {
        let dev = Loop::attach(&disk, 0);
        run_tool(lvm("pvcreate").args(["-q", "-y", &dev.0]));
    }
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    backup_json(&repo, "lonely", &[("disk0", &disk)]);
    let r = s(&repo);
    let parts = files_json(&["parts", &r, "latest@lonely"]);
    let vol = &parts["volumes"][0];
    assert_eq!(vol["holds"], "lvm2", "{parts}");
    assert!(
        vol["lvm_problem"]
            .as_str()
            .is_some_and(|p| p.contains("no VG")),
        "{parts}"
    );
    let named = files(&["ls", &r, "latest@lonely:vg/lv:/"]);
    named.expect_code(5);
    assert!(named.stderr.contains("no VG"), "{named}");
}
