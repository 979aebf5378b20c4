//! `tessera import xo`: Xen Orchestra remotes (laid out as XO writes them, by the
//! independent builders in `tests/src/xo_build.rs`) imported point by point, every point
//! compared byte for byte with the disk's content at that point; merges, aliases, brotli and
//! gzip chunks, encrypted remotes, reruns, kills, and hostile or broken remotes.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tessera_tests::vhd_build::{fix_checksum, uuid_text, ParentSpec, VhdImage};
use tessera_tests::xo_build::{file_date, write_metadata, Disk, Remote, Storage, BLOCK};
use tessera_tests::{
    env_usize, init_repo, list_json, restore, seed, tessera, tessera_cmd, verify, Out,
};

const KEY: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn import(remote: &Path, repo: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "--json".to_string(),
        "import".into(),
        "xo".into(),
        remote.display().to_string(),
        repo.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    tessera(args)
}

/// Random sector-aligned writes, some crossing block boundaries.
fn writes(rng: &mut rand::rngs::StdRng, size: u64, n: usize) -> Vec<(u64, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let sectors = rng.gen_range(1..=600u64);
            let at = rng.gen_range(0..(size / 512 - sectors)) * 512;
            let mut data = vec![0u8; (sectors * 512) as usize];
            rng.fill(&mut data[..]);
            (at, data)
        })
        .collect()
}

/// The imported backup of `backup_id` in a report.
fn imported<'a>(report: &'a Value, backup_id: &str) -> &'a Value {
    report["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .find(|b| b["backup"] == backup_id)
        .unwrap_or_else(|| panic!("{backup_id} not imported: {report:#}"))
}

#[track_caller]
fn assert_disk(repo: &Path, snapshot: &str, disk: &str, want: &[u8], scratch: &Path) {
    let out = scratch.join(format!("r-{}-{disk}", &snapshot[..12]));
    let _ = fs::remove_file(&out);
    restore(repo, &format!("{snapshot}:{disk}"), &out, false).ok();
    let got = fs::read(&out).expect("restored");
    assert!(
        got == want,
        "{snapshot}:{disk} differs from the disk at that point ({} vs {} bytes)",
        got.len(),
        want.len()
    );
    fs::remove_file(&out).expect("rm");
}

fn backup_id(vm: &str, secs: i64) -> String {
    format!("{vm}/{}.json", file_date(secs))
}

fn snapshot_of(report: &Value, id: &str) -> String {
    imported(report, id)["snapshot"]
        .as_str()
        .expect("snapshot id")
        .to_string()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one remote, imported, then continued: the steps in order"
)]
fn an_xo_remote_imports_as_synthetic_fulls_and_backups_continue_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_main"));
    let remote = Remote::new(&scratch.join("remote"), None);
    let repo = scratch.join("repo");
    init_repo(&repo, &[]);

    // VM 1: a VHD-file disk and a VhdDirectory disk (brotli), five points; the directory
    // disk takes a key backup at point 3.
    let vm1 = uuid_text(&rand::random());
    let mut a = Disk::new(0, "job1", Storage::File, 12 << 20);
    let mut b = Disk::new(1, "job1", Storage::Directory(Some("brotli")), 8 << 20);
    let mut vm1_points = Vec::new();
    for p in 0..5 {
        let secs = T0 + p * 86_400;
        let wa = writes(&mut rng, a.size, if p == 0 { 40 } else { 4 });
        let wb = writes(&mut rng, b.size, if p == 0 { 30 } else { 3 });
        a.point(&remote, &vm1, secs, &wa, false);
        b.point(&remote, &vm1, secs, &wb, p == 3);
        write_metadata(
            &remote,
            &vm1,
            "web server (prod)",
            secs,
            "job1",
            "sched1",
            &[&a, &b],
        );
        vm1_points.push((
            secs,
            a.points.last().unwrap().raw.clone(),
            b.points.last().unwrap().raw.clone(),
        ));
    }
    // VM 2: cloned from VM 1's first disk (so its data deduplicates), a gzip VhdDirectory
    // with four points, then XO's retention: the two oldest JSONs deleted and their VHDs
    // merged into the third point's.
    let vm2 = uuid_text(&rand::random());
    let mut c = Disk::new(0, "job2", Storage::Directory(Some("gzip")), 12 << 20);
    let mut vm2_points = Vec::new();
    for p in 0..4 {
        let secs = T0 + 3600 + p * 86_400;
        let w = if p == 0 {
            vec![(0, vm1_points[0].1.clone())]
        } else {
            writes(&mut rng, c.size, 5)
        };
        c.point(&remote, &vm2, secs, &w, false);
        let json = write_metadata(&remote, &vm2, "db", secs, "job2", "sched2", &[&c]);
        vm2_points.push((secs, json, c.points.last().unwrap().raw.clone()));
    }
    for (_, json, _) in vm2_points.drain(..2) {
        fs::remove_file(remote.root.join(json)).expect("retention");
    }
    c.merge_oldest(&remote, &vm2);
    c.merge_oldest(&remote, &vm2);
    // Things that are not backups: an orphan VHD, XO's cache, an unfinished upload, a full
    // backup.
    tessera_tests::xo_build::full_image(&vec![1u8; 4 << 20], rand::random()).save(
        &remote
            .vm_dir(&vm1)
            .join(format!("vdis/job1/{}/20250101T000000Z.vhd", a.vdi)),
    );
    fs::write(remote.vm_dir(&vm1).join("cache.json.gz"), b"\x1f\x8b").expect("cache");
    fs::write(
        remote
            .vm_dir(&vm1)
            .join(format!("vdis/job1/{}/.20260201T000000Z.vhd", a.vdi)),
        b"partial",
    )
    .expect("tmp");
    fs::write(
        remote.vm_dir(&vm1).join("20251201T000000Z.json"),
        serde_json::json!({"mode": "full", "timestamp": 1, "vm": {"uuid": vm1, "name_label": "x"}, "xva": "./20251201T000000Z.xva"}).to_string(),
    )
    .expect("full");

    // A dry run plans every point and writes nothing.
    let dry = import(&remote.root, &repo, &["--dry-run"]);
    dry.ok();
    let dry = dry.json();
    assert_eq!(dry["imported"].as_array().unwrap().len(), 7, "{dry:#}");
    assert!(dry["imported"][0]["snapshot"].is_null());
    assert!(list_json(&repo).is_empty(), "a dry run wrote snapshots");

    let out = import(&remote.root, &repo, &[]);
    out.ok();
    let report = out.json();
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["imported"].as_array().unwrap().len(),
        7,
        "{report:#}"
    );
    assert_eq!(report["damaged"], 0, "{report:#}");
    let skipped = report["skipped"].to_string();
    for needle in ["orphan", "cache", "unfinished upload", "XVA"] {
        assert!(
            skipped.contains(needle),
            "skip report lacks {needle}: {skipped}"
        );
    }
    assert!(skipped.contains("20250101T000000Z.vhd"), "{skipped}");
    assert!(
        report["deduplicated_bytes"].as_u64().unwrap() > 1 << 20,
        "VM 2's clone and the key backup deduplicate: {report:#}"
    );

    // Every point restores to the disk's content at that point.
    for (secs, ra, rb) in &vm1_points {
        let id = backup_id(&vm1, *secs);
        let snap = snapshot_of(&report, &id);
        assert_disk(&repo, &snap, "xvda", ra, scratch);
        assert_disk(&repo, &snap, "xvdb", rb, scratch);
    }
    for (secs, _, raw) in &vm2_points {
        let snap = snapshot_of(&report, &backup_id(&vm2, *secs));
        assert_disk(&repo, &snap, "xvda", raw, scratch);
    }
    // Deltas read only what the differencing VHDs hold; the first point and key backups
    // read in full.
    let p1 = imported(&report, &backup_id(&vm1, vm1_points[1].0));
    assert_eq!(p1["disks"][0]["mode"], "delta", "{p1:#}");
    assert!(p1["disks"][0]["bytes_read"].as_u64().unwrap() <= 4 * 600 * 512);
    let p3 = imported(&report, &backup_id(&vm1, vm1_points[3].0));
    assert_eq!(p3["disks"][1]["mode"], "full", "{p3:#}");
    assert_eq!(p3["disks"][0]["mode"], "delta", "{p3:#}");
    let merged = imported(&report, &backup_id(&vm2, vm2_points[0].0));
    assert_eq!(merged["disks"][0]["chain_length"], 1, "{merged:#}");

    // Series, times and tags.
    let list = list_json(&repo);
    let first = list
        .iter()
        .find(|s| s["id"] == snapshot_of(&report, &backup_id(&vm1, T0)))
        .expect("listed");
    assert_eq!(first["series"], "web-server--prod-");
    assert_eq!(first["time"], "2026-01-01T00:00:00Z", "{first:#}");
    let show = tessera([
        "--json",
        "show",
        repo.to_str().unwrap(),
        first["id"].as_str().unwrap(),
    ]);
    let tags = show.json()["tags"].to_string();
    for needle in [
        format!("\"xo.vm\":\"{vm1}\""),
        "\"xo.job\":\"job1\"".into(),
        "\"xo.schedule\":\"sched1\"".into(),
        format!("\"xo.vdi.xvdb\":\"{}\"", b.vdi),
    ] {
        assert!(tags.contains(&needle), "tags lack {needle}: {tags}");
    }

    // A rerun imports nothing new; a new XO backup afterwards is all the next run imports.
    let again = import(&remote.root, &repo, &[]);
    again.ok();
    let again = again.json();
    assert_eq!(again["imported"].as_array().unwrap().len(), 0, "{again:#}");
    assert_eq!(again["already_imported"], 7);
    // Chains of imported backups are still followed: the planted VHD is the only orphan.
    for r in [&report, &again] {
        let orphans: Vec<&Value> = r["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["reason"].as_str().unwrap().contains("orphan"))
            .collect();
        assert_eq!(orphans.len(), 1, "{orphans:#?}");
    }
    let secs = T0 + 5 * 86_400;
    let wa = writes(&mut rng, a.size, 3);
    a.point(&remote, &vm1, secs, &wa, false);
    let wb = writes(&mut rng, b.size, 3);
    b.point(&remote, &vm1, secs, &wb, false);
    // Renamed in XO since: it stays in its series.
    write_metadata(
        &remote,
        &vm1,
        "web (renamed)",
        secs,
        "job1",
        "sched1",
        &[&a, &b],
    );
    let next = import(&remote.root, &repo, &["--vm", &vm1]);
    next.ok();
    let next = next.json();
    assert_eq!(next["imported"].as_array().unwrap().len(), 1, "{next:#}");
    assert_eq!(next["imported"][0]["disks"][0]["mode"], "delta");
    assert_eq!(next["imported"][0]["series"], "web-server--prod-");
    verify(&repo).ok();

    // Keep going with tessera: XO's next differencing export of disk A (its parent, the
    // last imported VHD, is not beside it) is a delta on the imported snapshot.
    let newest = a.points.last().unwrap().clone();
    let mut raw = newest.raw.clone();
    let mut delta = VhdImage::differencing(
        a.size,
        BLOCK,
        rand::random(),
        ParentSpec {
            uuid: newest.uuid,
            name: "parent.vhd".into(),
            locators: Vec::new(),
        },
    );
    for (at, data) in writes(&mut rng, a.size, 3) {
        raw[at as usize..at as usize + data.len()].copy_from_slice(&data);
        delta.write(at, &data);
    }
    let export = scratch.join("export").join("next.vhd");
    fs::create_dir_all(export.parent().unwrap()).unwrap();
    delta.save(&export);
    let series = "web-server--prod-";
    let backup = tessera([
        "--json",
        "backup",
        repo.to_str().unwrap(),
        "--series",
        series,
        &format!("xvda={}", export.display()),
    ]);
    backup.ok();
    let backup = backup.json();
    assert_eq!(backup["disks"][0]["mode"], "delta", "{backup:#}");
    assert_disk(
        &repo,
        backup["snapshot"].as_str().unwrap(),
        "xvda",
        &raw,
        scratch,
    );
    // A differencing VHD of another parent is refused (the wrong-base check).
    let stranger = VhdImage::differencing(
        a.size,
        BLOCK,
        rand::random(),
        ParentSpec {
            uuid: rand::random(),
            name: "p.vhd".into(),
            locators: Vec::new(),
        },
    );
    let wrong = scratch.join("export").join("wrong.vhd");
    stranger.save(&wrong);
    tessera([
        "backup",
        repo.to_str().unwrap(),
        "--series",
        series,
        "--reference",
        "latest",
        &format!("xvda={}", wrong.display()),
    ])
    .expect_code(5)
    .stderr_has("applies on");
    // Or from a changed-block tracking path (NBD + CBT): a changed-block list whose base is
    // the state the last snapshot was taken from continues the chain the same way.
    let mut raw2 = raw.clone();
    let mut extents = Vec::new();
    for (at, data) in writes(&mut rng, a.size, 3) {
        raw2[at as usize..at as usize + data.len()].copy_from_slice(&data);
        extents.push((at, data.len() as u64));
    }
    let cbt_image = scratch.join("export").join("cbt.raw");
    fs::write(&cbt_image, &raw2).unwrap();
    let list = scratch.join("export").join("cbt.list");
    tessera_tests::write_change_list(
        &list,
        a.size,
        &format!("vhd:{}", uuid_text(&delta.uuid)),
        "cbt:42",
        &extents,
    );
    let cbt = tessera([
        "--json",
        "backup",
        repo.to_str().unwrap(),
        "--series",
        series,
        &format!("xvda={}", cbt_image.display()),
        "--changes",
        &format!("xvda={}", list.display()),
    ]);
    cbt.ok();
    let cbt = cbt.json();
    assert_eq!(cbt["disks"][0]["mode"], "delta", "{cbt:#}");
    assert_disk(
        &repo,
        cbt["snapshot"].as_str().unwrap(),
        "xvda",
        &raw2,
        scratch,
    );
    verify(&repo).ok();
}

#[test]
fn encrypted_remotes_import_with_their_key_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_encrypted"));
    for (algorithm, filter) in [
        ("chacha20-poly1305", Some("brotli")),
        ("aes-256-gcm", Some("gzip")),
        ("aes-256-cbc", None),
    ] {
        let remote = Remote::new(
            &scratch.join(format!("remote-{algorithm}")),
            Some((algorithm, KEY)),
        );
        let repo = scratch.join(format!("repo-{algorithm}"));
        init_repo(&repo, &[]);
        let vm = uuid_text(&rand::random());
        let mut d = Disk::new(0, "job", Storage::Directory(filter), 6 << 20);
        let mut points = Vec::new();
        for p in 0..3 {
            let secs = T0 + p * 3600;
            let w = writes(&mut rng, d.size, if p == 0 { 20 } else { 3 });
            d.point(&remote, &vm, secs, &w, false);
            write_metadata(&remote, &vm, "enc", secs, "job", "s", &[&d]);
            points.push((secs, d.points.last().unwrap().raw.clone()));
        }
        let key_file = scratch.join("key");
        fs::write(&key_file, [KEY, b"\n"].concat()).unwrap();
        let wrong_file = scratch.join("wrong-key");
        fs::write(&wrong_file, b"0123456789abcdefghijklmnopqrstuX").unwrap();

        import(&remote.root, &repo, &[])
            .expect_code(2)
            .stderr_has("encrypted");
        let wrong = import(
            &remote.root,
            &repo,
            &["--encryption-key-file", wrong_file.to_str().unwrap()],
        );
        if algorithm == "aes-256-cbc" {
            // CBC has no tag: a wrong key shows as bad padding or as garbage that is not JSON.
            assert!(wrong.code == 6, "{wrong}");
        } else {
            wrong.expect_code(6).stderr_has("does not decrypt");
        }
        assert!(!wrong.stderr.contains(std::str::from_utf8(KEY).unwrap()));
        assert!(list_json(&repo).is_empty());
        let out = import(
            &remote.root,
            &repo,
            &["--encryption-key-file", key_file.to_str().unwrap()],
        );
        out.ok();
        let report = out.json();
        for (secs, raw) in &points {
            let snap = snapshot_of(&report, &backup_id(&vm, *secs));
            assert_disk(&repo, &snap, "xvda", raw, scratch);
        }
        // A VHD file on an encrypted remote cannot be read by range: refused by name.
        let mut f = Disk::new(0, "jobf", Storage::File, 2 << 20);
        let vmf = uuid_text(&rand::random());
        f.point(&remote, &vmf, T0, &writes(&mut rng, f.size, 2), false);
        write_metadata(&remote, &vmf, "f", T0, "jobf", "s", &[&f]);
        let out = import(
            &remote.root,
            &repo,
            &["--encryption-key-file", key_file.to_str().unwrap()],
        );
        out.expect_code(4);
        assert!(
            out.json()["skipped"].to_string().contains("VhdDirectory"),
            "{out}"
        );
    }
    // A key given for a plain remote is a usage error.
    let plain = Remote::new(&scratch.join("plain"), None);
    let key_file = scratch.join("key");
    import(
        &plain.root,
        &scratch.join("repo-chacha20-poly1305"),
        &["--encryption-key-file", key_file.to_str().unwrap()],
    )
    .expect_code(2)
    .stderr_has("not encrypted");
}

/// A VHD file outside the remote, and a remote whose metadata points at it in every way
/// XO's layout allows and some it does not: each backup refused with its reason, the good
/// VM imported, nothing read outside.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one case per way a remote can be broken or hostile"
)]
fn broken_hostile_and_merging_backups_are_reported_and_not_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_hostile"));
    let remote = Remote::new(&scratch.join("remote"), None);
    let repo = scratch.join("repo");
    init_repo(&repo, &[]);
    let outside = scratch.join("outside.vhd");
    tessera_tests::xo_build::full_image(&vec![0x5a; 2 << 20], rand::random()).save(&outside);

    // The good VM.
    let good = uuid_text(&rand::random());
    let mut g = Disk::new(0, "job", Storage::File, 4 << 20);
    g.point(&remote, &good, T0, &writes(&mut rng, g.size, 5), false);
    write_metadata(&remote, &good, "good", T0, "job", "s", &[&g]);

    // One VM per way to be bad: write a normal backup, then break it.
    let mut bad = |name: &str, storage: Storage, breaker: &dyn Fn(&Path, &Disk)| {
        let vm = uuid_text(&rand::random());
        let mut d = Disk::new(0, "job", storage, 4 << 20);
        d.point(&remote, &vm, T0, &writes(&mut rng, d.size, 3), false);
        d.point(&remote, &vm, T0 + 60, &writes(&mut rng, d.size, 3), false);
        write_metadata(&remote, &vm, name, T0 + 60, "job", "s", &[&d]);
        breaker(&remote.vm_dir(&vm), &d);
        (name.to_string(), vm)
    };
    let set_vhd = |vm_dir: &Path, path: &str| {
        let json = vm_dir.join(format!("{}.json", file_date(T0 + 60)));
        let mut v: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        let key = v["vhds"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        v["vhds"][key] = Value::String(path.into());
        fs::write(&json, v.to_string()).unwrap();
    };
    let outside_text = outside.display().to_string();
    let cases = vec![
        (
            bad("missing", Storage::File, &|vm, d| {
                fs::remove_file(vm.join(&d.points[1].vhd)).unwrap();
            }),
            "no such",
        ),
        (
            bad("dotdot", Storage::File, &|vm, _| {
                set_vhd(vm, "../../../outside.vhd");
            }),
            "outside the remote",
        ),
        (
            bad("absolute", Storage::File, &|vm, _| {
                set_vhd(vm, &outside_text);
            }),
            "absolute",
        ),
        (
            bad("symlink", Storage::File, &|vm, d| {
                let p = vm.join(&d.points[1].vhd);
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(&outside, &p).unwrap();
            }),
            "leading out",
        ),
        (
            bad("parent-gone", Storage::File, &|vm, d| {
                fs::remove_file(vm.join(&d.points[0].vhd)).unwrap();
            }),
            "parent",
        ),
        (
            bad("alias-chain", Storage::Directory(None), &|vm, d| {
                fs::write(
                    vm.join(&d.points[1].vhd),
                    d.points[0].vhd.rsplit('/').next().unwrap(),
                )
                .unwrap();
            }),
            "another alias",
        ),
        (
            bad("alias-out", Storage::Directory(None), &|vm, d| {
                fs::write(vm.join(&d.points[1].vhd), "../../../../../../outside-dir").unwrap();
            }),
            "outside the remote",
        ),
        (
            bad("loop", Storage::File, &|vm, d| {
                // The newest VHD names itself as its parent (with its own unique id).
                let name = d.points[1].vhd.rsplit('/').next().unwrap().to_string();
                let mut img = VhdImage::differencing(
                    d.size,
                    BLOCK,
                    d.points[1].uuid,
                    ParentSpec {
                        uuid: d.points[1].uuid,
                        name,
                        locators: Vec::new(),
                    },
                );
                img.write(0, &[1u8; 512]);
                img.save(&vm.join(&d.points[1].vhd));
            }),
            "loops",
        ),
        (
            bad("huge", Storage::Directory(None), &|vm, d| {
                let data = vm
                    .join(&d.points[1].vhd)
                    .parent()
                    .unwrap()
                    .join(fs::read_to_string(vm.join(&d.points[1].vhd)).unwrap());
                let mut footer = fs::read(data.join("footer")).unwrap();
                footer[48..56].copy_from_slice(&(1u64 << 60).to_be_bytes());
                fix_checksum(&mut footer, 64);
                fs::write(data.join("footer"), footer).unwrap();
            }),
            "blocks",
        ),
        (
            bad(
                "damaged-block",
                Storage::Directory(Some("brotli")),
                &|vm, d| {
                    let data = vm
                        .join(&d.points[1].vhd)
                        .parent()
                        .unwrap()
                        .join(fs::read_to_string(vm.join(&d.points[1].vhd)).unwrap());
                    let block = fs::read_dir(data.join("blocks/0"))
                        .unwrap()
                        .next()
                        .unwrap()
                        .unwrap()
                        .path();
                    let mut bytes = fs::read(&block).unwrap();
                    let n = bytes.len();
                    bytes.truncate(n / 2);
                    fs::write(&block, bytes).unwrap();
                },
            ),
            "damaged",
        ),
        (
            bad("garbage-json", Storage::File, &|vm, _| {
                fs::write(
                    vm.join(format!("{}.json", file_date(T0 + 60))),
                    b"{\"mode\": \"delta\", ",
                )
                .unwrap();
            }),
            "JSON",
        ),
    ];
    // A VDI folder with a merge in progress: benign, retried later.
    let merging = uuid_text(&rand::random());
    let mut m = Disk::new(0, "job", Storage::Directory(None), 4 << 20);
    m.point(&remote, &merging, T0, &writes(&mut rng, m.size, 3), false);
    write_metadata(&remote, &merging, "merging", T0, "job", "s", &[&m]);
    let folder = remote.vm_dir(&merging).join(format!("vdis/job/{}", m.vdi));
    fs::write(
        folder.join(format!(
            ".{}.merge.json",
            file_date(T0 - 86_400) + ".alias.vhd"
        )),
        b"{}",
    )
    .unwrap();

    let out = import(&remote.root, &repo, &[]);
    out.expect_code(4);
    let report = out.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["kind"], "damage");
    let imported: Vec<&str> = report["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vm"].as_str().unwrap())
        .collect();
    assert_eq!(imported, [good.as_str()], "{report:#}");
    let skipped = report["skipped"].as_array().unwrap();
    for ((name, vm), needle) in &cases {
        let entry = skipped
            .iter()
            .find(|s| s["path"].as_str().unwrap().contains(vm.as_str()) && s["damaged"] == true)
            .unwrap_or_else(|| panic!("{name}: not reported as damaged: {report:#}"));
        assert!(
            entry["reason"].as_str().unwrap().contains(needle),
            "{name}: reason lacks {needle:?}: {entry:#}"
        );
    }
    let merge = skipped
        .iter()
        .find(|s| s["path"].as_str().unwrap().contains(&merging))
        .expect("merge reported");
    assert_eq!(merge["damaged"], false);
    assert!(
        merge["reason"].as_str().unwrap().contains("merg"),
        "{merge:#}"
    );
    // Only the good VM is in the repository, and it verifies.
    let list = list_json(&repo);
    assert_eq!(list.len(), 1, "{list:#?}");
    verify(&repo).ok();
    // The outside file was never stored: a backup of it deduplicates nothing.
    let b = tessera([
        "--json",
        "backup",
        repo.to_str().unwrap(),
        "--series",
        "probe",
        &format!("d={}", outside.display()),
    ]);
    b.ok();
    assert!(
        b.json()["disks"][0]["new_raw_bytes"].as_u64().unwrap() > 0,
        "{b}"
    );
}

/// An import killed at random moments leaves whole snapshots only; the rerun continues and
/// ends with every point, once. Rounds: `TESSERA_XO_KILLS` (default 3).
#[test]
fn a_killed_import_leaves_no_half_snapshot_and_the_rerun_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_kill"));
    let remote = Remote::new(&scratch.join("remote"), None);
    let repo = scratch.join("repo");
    init_repo(&repo, &[]);
    let vm = uuid_text(&rand::random());
    let mut d = Disk::new(0, "job", Storage::Directory(Some("brotli")), 24 << 20);
    let mut points = Vec::new();
    for p in 0..8 {
        let secs = T0 + p * 3600;
        let w = writes(&mut rng, d.size, if p == 0 { 200 } else { 30 });
        d.point(&remote, &vm, secs, &w, p == 4);
        write_metadata(&remote, &vm, "victim", secs, "job", "s", &[&d]);
        points.push((secs, d.points.last().unwrap().raw.clone()));
    }
    for _ in 0..env_usize("TESSERA_XO_KILLS", 3) {
        let mut child = tessera_cmd([
            "import",
            "xo",
            remote.root.to_str().unwrap(),
            repo.to_str().unwrap(),
        ])
        .spawn()
        .expect("spawn");
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..600)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = import(&remote.root, &repo, &[]);
    out.ok();
    let list = list_json(&repo);
    assert_eq!(list.len(), 8, "every point once: {list:#?}");
    for (secs, raw) in &points {
        let snap = list
            .iter()
            .find(|s| s["time"] == tessera_tests_time(*secs))
            .unwrap_or_else(|| panic!("no snapshot at {secs}"));
        assert_disk(&repo, snap["id"].as_str().unwrap(), "xvda", raw, scratch);
    }
    verify(&repo).ok();
}

fn tessera_tests_time(secs: i64) -> String {
    let d = file_date(secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// XO at work on the same remote: a VM whose lock is held is left for a rerun, and a chain
/// whose files change after they were opened is noticed before anything is published.
#[test]
fn xo_working_on_the_remote_is_waited_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_busy"));
    let remote = Remote::new(&scratch.join("remote"), None);
    let repo = scratch.join("repo");
    init_repo(&repo, &[]);
    let vm = uuid_text(&rand::random());
    let mut d = Disk::new(0, "job", Storage::Directory(None), 4 << 20);
    for p in 0..2 {
        d.point(
            &remote,
            &vm,
            T0 + p * 60,
            &writes(&mut rng, d.size, 4),
            false,
        );
        write_metadata(&remote, &vm, "busy", T0 + p * 60, "job", "s", &[&d]);
    }
    // An uncompressed VhdDirectory may say so: ["none"].
    let folder = remote.vm_dir(&vm).join(format!("vdis/job/{}", d.vdi));
    let data = folder.join(format!("data/{}.vhd", d.points[1].data_name));
    fs::write(data.join("chunk-filters.json"), br#"["none"]"#).unwrap();

    let lock = remote.root.join("xo-vm-backups").join(format!("{vm}.lock"));
    fs::create_dir(&lock).unwrap();
    let out = import(&remote.root, &repo, &[]);
    out.ok();
    let report = out.json();
    assert_eq!(
        report["imported"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let skipped = report["skipped"].to_string();
    assert!(skipped.contains("lock"), "{skipped}");
    assert!(list_json(&repo).is_empty());
    fs::remove_dir(&lock).unwrap();
    let out = import(&remote.root, &repo, &[]);
    out.ok();
    assert_eq!(out.json()["imported"].as_array().unwrap().len(), 2, "{out}");

    // A file of an opened chain rewritten (as a merge rewrites the parent's footer) is
    // noticed by the check the import runs before publishing.
    let root = remote.root.clone();
    let handle = tessera_engine::sources::xo::open_remote(&root, None).unwrap();
    let mut opener =
        tessera_engine::sources::xo::chain::ChainOpener::new(std::sync::Arc::new(handle));
    let top = tessera_engine::sources::xo::remote::RemotePath::root()
        .join(&format!("xo-vm-backups/{vm}/{}", d.points[1].vhd), "t")
        .unwrap();
    let chain = opener.open(&top).expect("chain opens");
    assert_eq!(chain.names.len(), 2);
    opener.unchanged(&chain.names).expect("nothing changed yet");
    let parent_data = folder.join(format!("data/{}.vhd", d.points[0].data_name));
    std::thread::sleep(Duration::from_millis(20));
    let footer = fs::read(parent_data.join("footer")).unwrap();
    fs::write(parent_data.join("footer"), &footer).unwrap();
    let why = opener
        .unchanged(&chain.names)
        .expect_err("the rewrite is noticed");
    assert!(why.contains("footer"), "{why}");
}

/// Calls `action` once, when the first disk of the first point starts being read: XO
/// rewriting the remote in the middle of an import, at a deterministic moment.
struct Meddler<F: Fn() + Sync> {
    armed: std::sync::atomic::AtomicBool,
    action: F,
}

impl<F: Fn() + Sync> tessera_engine::progress::Progress for Meddler<F> {
    fn start(&self, _phase: &str, _total: u64) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            (self.action)();
        }
    }
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

/// A point whose chain XO rewrites while tessera reads it is not published, on whichever
/// disk of the VM the rewrite lands; the next point and a rerun import everything.
#[test]
fn a_point_xo_rewrites_while_it_is_read_is_not_published() {
    use tessera_engine::ops::import_xo::{
        import as run_import, open as open_import, XoImportRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("import_xo_meddle"));
    let remote = Remote::new(&scratch.join("remote"), None);
    let repo = scratch.join("repo");
    init_repo(&repo, &[]);
    let vm = uuid_text(&rand::random());
    let mut a = Disk::new(0, "job", Storage::File, 4 << 20);
    let mut b = Disk::new(1, "job", Storage::Directory(Some("gzip")), 4 << 20);
    let mut points = Vec::new();
    for p in 0..2 {
        let secs = T0 + p * 60;
        a.point(&remote, &vm, secs, &writes(&mut rng, a.size, 4), false);
        b.point(&remote, &vm, secs, &writes(&mut rng, b.size, 4), false);
        write_metadata(&remote, &vm, "meddled", secs, "job", "s", &[&a, &b]);
        points.push((
            secs,
            a.points.last().unwrap().raw.clone(),
            b.points.last().unwrap().raw.clone(),
        ));
    }
    // The first disk's first VHD is rewritten (same bytes, new time) while the point is read.
    let victim = remote.vm_dir(&vm).join(&a.points[0].vhd);
    let meddler = Meddler {
        armed: std::sync::atomic::AtomicBool::new(true),
        action: || {
            let bytes = fs::read(&victim).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            fs::write(&victim, bytes).unwrap();
        },
    };
    let req = XoImportRequest {
        remote: remote.root.clone(),
        ..XoImportRequest::default()
    };
    let (handle, listing) = open_import(&req).expect("remote opens");
    let repository = tessera_engine::Repository::open_writer(&repo).expect("repository");
    let report = run_import(&repository, &req, &handle, listing, &meddler).expect("import runs");
    drop(repository);
    assert_eq!(report.imported.len(), 1, "{report:#?}");
    assert_eq!(report.imported[0].backup, backup_id(&vm, points[1].0));
    let skipped = report
        .skipped
        .iter()
        .find(|s| {
            s.path
                .ends_with(&format!("{}.json", file_date(points[0].0)))
        })
        .unwrap_or_else(|| panic!("the first point is not reported: {report:#?}"));
    assert!(
        !skipped.damaged && skipped.reason.contains("changed while it was read"),
        "{skipped:?}"
    );
    assert_eq!(report.damaged, 0);
    // A rerun imports the point left out, and both restore exactly.
    let out = import(&remote.root, &repo, &[]);
    out.ok();
    assert_eq!(out.json()["imported"].as_array().unwrap().len(), 1, "{out}");
    let list = list_json(&repo);
    assert_eq!(list.len(), 2);
    for (secs, ra, rb) in &points {
        let snap = list
            .iter()
            .find(|s| s["time"] == tessera_tests_time(*secs))
            .expect("snapshot of the point");
        assert_disk(&repo, snap["id"].as_str().unwrap(), "xvda", ra, scratch);
        assert_disk(&repo, snap["id"].as_str().unwrap(), "xvdb", rb, scratch);
    }
    verify(&repo).ok();
}
