//! Delta backups driven by changed-block lists (the VMware CBT / Hyper-V RCT style source),
//! which exercise the whole delta engine: reads limited to the listed extents, partial
//! blocks merged with the reference, size changes, the key-backup interval, drift reports,
//! healing of damaged chunks, and refusal of a delta on the wrong base.
//!
//! The oracle is the image itself: a copy is kept of every generation, and every snapshot
//! must restore byte-identical to the copy of its generation.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;
use tessera_tests::{
    assert_same_file, env_usize, init_repo, list_ids, make_image, pack_files, restore, seed,
    snapshot_id, tessera, verify, write_change_list, DataGen, ImageSpec, Value,
};

const BS: u64 = 64 * 1024;

/// `tessera backup --json` of `image` as disk `d` of series `vm`, with `extra` arguments.
fn backup_disk(repo: &Path, image: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "backup".to_string(),
        repo.display().to_string(),
        "--series".into(),
        "vm".into(),
        format!("d={}", image.display()),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    tessera(&args).ok().json()
}

fn backup_with_list(repo: &Path, image: &Path, list: &Path, extra: &[&str]) -> Value {
    let changes = format!("d={}", list.display());
    let mut args = vec!["--changes", changes.as_str()];
    args.extend_from_slice(extra);
    backup_disk(repo, image, &args)
}

/// A scratch directory with an initialized `repo` and the path of `disk.raw` (not created),
/// and the test's seeded data generator.
fn setup(test: &str) -> (tempfile::TempDir, PathBuf, PathBuf, DataGen) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    init_repo(&repo, &[]);
    let image = dir.path().join("disk.raw");
    (dir, repo, image, DataGen::new(seed(test)))
}

fn disk0(v: &Value) -> &Value {
    &v["disks"][0]
}

/// Random writes (some unaligned, some spanning blocks, some zeros), returned as extents.
fn random_writes(image: &Path, gen: &mut DataGen, writes: usize) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(image).unwrap();
    let size = f.metadata().unwrap().len();
    let mut extents = Vec::new();
    for _ in 0..writes {
        let off = gen.rng.gen_range(0..size);
        let len = gen.rng.gen_range(1..=3 * BS).min(size - off);
        let kind = gen.pick((1, 2, 2));
        f.write_all_at(&gen.bytes(kind, len as usize), off).unwrap();
        extents.push((off, len));
    }
    f.sync_all().unwrap();
    extents
}

fn resize(image: &Path, gen: &mut DataGen, new_size: u64) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(image).unwrap();
    let old = f.metadata().unwrap().len();
    f.set_len(new_size).unwrap();
    let mut extents = Vec::new();
    if new_size > old {
        // Fill part of the new space; the rest stays zero.
        let len = (new_size - old) / 2;
        f.write_all_at(&gen.bytes(tessera_tests::Fill::Random, len as usize), old)
            .unwrap();
        extents.push((old, len));
    }
    extents
}

/// A chain of generations with random writes, occasional growth and shrinking, and the
/// default key interval shortened to 4: every snapshot restores to its generation, delta
/// backups read exactly the listed bytes, modes follow the rules.
#[test]
fn changed_list_chain_restores_every_generation() {
    let (dir, repo, image, mut gen) = setup("changed_list_chain");
    let size0 = 6 * BS * 16 + 12_345;
    make_image(&image, ImageSpec::mixed(size0), &mut gen);
    let list = dir.path().join("changes.txt");
    write_change_list(&list, size0, "*", "cbt:0", &[(0, size0)]);
    let first = backup_with_list(&repo, &image, &list, &["--key-interval", "4"]);
    assert_eq!(disk0(&first)["mode"], "full");
    let mut copies: Vec<(String, PathBuf)> = vec![(snapshot_id(&first), dir.path().join("g0"))];
    fs::copy(&image, &copies[0].1).unwrap();

    let generations = env_usize("TESSERA_MODEL_GENERATIONS", 12);
    let mut modes = Vec::new();
    for g in 1..=generations {
        let size_before = fs::metadata(&image).unwrap().len();
        let writes = gen.rng.gen_range(1..6);
        let mut extents = random_writes(&image, &mut gen, writes);
        if g % 5 == 2 {
            extents.extend(resize(&image, &mut gen, size_before + 3 * BS + 777));
        } else if g % 5 == 4 {
            resize(&image, &mut gen, size_before - 2 * BS - 100);
        }
        let size = fs::metadata(&image).unwrap().len();
        let extents: Vec<(u64, u64)> = extents
            .into_iter()
            .filter(|&(o, _)| o < size)
            .map(|(o, l)| (o, l.min(size - o)))
            .collect();
        write_change_list(
            &list,
            size,
            &format!("cbt:{}", g - 1),
            &format!("cbt:{g}"),
            &extents,
        );
        let out = backup_with_list(
            &repo,
            &image,
            &list,
            &["--reference", "latest", "--key-interval", "4"],
        );
        let d = disk0(&out);
        let mode = d["mode"].as_str().unwrap().to_string();
        if size != size_before {
            assert_eq!(
                mode, "key",
                "generation {g}: a size change makes a key backup"
            );
        }
        if mode == "delta" {
            let mut merged: Vec<(u64, u64)> = extents.iter().map(|&(o, l)| (o, o + l)).collect();
            merged.sort_unstable();
            let mut changed = 0;
            let mut end = 0;
            for (s, e) in merged {
                let s = s.max(end);
                if e > s {
                    changed += e - s;
                    end = e;
                }
            }
            assert_eq!(
                d["changed_bytes"].as_u64().unwrap(),
                changed,
                "generation {g}"
            );
            // Only changed bytes are read (holes of the raw file are not read either).
            assert!(
                d["bytes_read"].as_u64().unwrap() <= changed,
                "generation {g}: {d}"
            );
            assert!(d["reference"].is_string());
        } else {
            assert_eq!(d["drift_blocks"], 0, "generation {g}: the lists were exact");
        }
        modes.push(mode);
        let copy = dir.path().join(format!("g{g}"));
        fs::copy(&image, &copy).unwrap();
        copies.push((snapshot_id(&out), copy));
    }
    // Key interval 4 with size changes at 2, 7, 12 and shrinks at 4, 9: each key restarts the count.
    assert!(modes.iter().any(|m| m == "delta"), "{modes:?}");
    let mut since_key = 0;
    for m in &modes {
        if m == "key" {
            since_key = 0;
        } else {
            since_key += 1;
            assert!(since_key < 4, "key interval not respected: {modes:?}");
        }
    }
    for (id, copy) in &copies {
        let out = dir.path().join("restored");
        restore(&repo, id, &out, true).ok();
        assert_same_file(copy, &out);
    }
    verify(&repo).ok();
}

/// A change the tracker missed is reported as drift by the next key backup (count and
/// offsets), and the key backup's snapshot holds the true content.
#[test]
fn key_backup_reports_drift_and_heals_damaged_chunks() {
    let (dir, repo, image, mut gen) = setup("drift");
    let size = 64 * BS;
    make_image(
        &image,
        ImageSpec {
            weights: (0, 1, 1),
            ..ImageSpec::mixed(size)
        },
        &mut gen,
    );
    let list = dir.path().join("changes.txt");
    write_change_list(&list, size, "*", "cbt:0", &[(0, size)]);
    backup_with_list(&repo, &image, &list, &[]);

    // The tracker reports one write; two others (blocks 10, and 40-41) go unreported.
    let f = OpenOptions::new().write(true).open(&image).unwrap();
    f.write_all_at(&[0xAA; 100], 5 * BS + 7).unwrap();
    f.write_all_at(&[0xBB; 10], 10 * BS + 3).unwrap();
    f.write_all_at(&[0xCC; 5000], 40 * BS + BS - 1000).unwrap();
    f.sync_all().unwrap();
    write_change_list(&list, size, "cbt:0", "cbt:1", &[(5 * BS + 7, 100)]);
    let delta = backup_with_list(&repo, &image, &list, &["--reference", "latest"]);
    assert_eq!(disk0(&delta)["mode"], "delta");

    // Damage one stored chunk that the image still holds (block 20): the key backup must heal it.
    let packs_before = pack_files(&repo);
    let victim = &packs_before[0];
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    fs::write(victim, &bytes).unwrap();
    let damaged = verify(&repo);
    assert_ne!(damaged.code, 0, "the flipped byte must be detected");

    write_change_list(&list, size, "cbt:1", "cbt:2", &[]);
    let key = backup_with_list(&repo, &image, &list, &["--reference", "latest", "--full"]);
    let d = disk0(&key);
    assert_eq!(d["mode"], "key");
    // The unreported 5000-byte write straddles blocks 40 and 41.
    assert_eq!(d["drift_blocks"], 3, "{d}");
    assert_eq!(
        d["drift_offsets"],
        serde_json::json!([10 * BS, 40 * BS, 41 * BS]),
        "{d}"
    );
    assert!(d["healed_chunks"].as_u64().unwrap() >= 1, "{d}");

    // Every snapshot that references the healed chunk restores again; the key snapshot is the truth.
    let out = dir.path().join("restored");
    restore(&repo, &snapshot_id(&key), &out, true).ok();
    assert_same_file(&image, &out);
    let show = tessera(["show", repo.to_str().unwrap(), &snapshot_id(&key), "--json"])
        .ok()
        .json();
    let text = show.to_string();
    assert!(text.contains("drift.blocks"), "{text}");
    // The index points at the healed copy: the repository verifies clean again (the damaged
    // record is dead weight in its old pack) and every earlier snapshot restores.
    verify(&repo).ok();
    for id in list_ids(&repo) {
        restore(&repo, &id, &out, true).ok();
    }
}

/// A key backup that finds more damage than one pack holds (the path that re-homes the queue
/// of re-encoded chunks whenever it reaches the pack size): every chunk's stored bytes are
/// damaged, the key backup rewrites all of them into at least two new packs, and the
/// repository verifies clean and restores again.
#[test]
fn key_backup_heals_more_than_a_pack_of_damage() {
    let (dir, repo, image, mut gen) = setup("heal_steps");
    // 48 MiB of random data: stored raw, so the damaged chunks exceed one 32 MiB pack.
    let size = 768 * BS;
    make_image(
        &image,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(size)
        },
        &mut gen,
    );
    let first = backup_disk(&repo, &image, &[]);
    let packs_before = pack_files(&repo);

    // Flip one byte in the middle of every chunk's stored bytes (record headers stay intact).
    let mut victims = Vec::new();
    {
        let r = tessera_engine::Repository::open(&repo).unwrap();
        r.index()
            .for_each_object(tessera_format::ObjectKind::Chunk, |_, e| {
                victims.push((e.pack.to_hex(), e.offset, e.stored_len));
                Ok(())
            })
            .unwrap();
    }
    assert!(victims.len() >= 700, "{} chunks", victims.len());
    for (pack, offset, stored_len) in &victims {
        let path = packs_before
            .iter()
            .find(|p| p.to_string_lossy().contains(pack.as_str()))
            .unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let at =
            offset + tessera_format::pack::RECORD_HEADER_LEN as u64 + u64::from(*stored_len) / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }
    assert_ne!(verify(&repo).code, 0, "the damage must be detected");

    let key = backup_disk(&repo, &image, &["--full"]);
    let d = disk0(&key);
    assert_eq!(d["mode"], "key", "{d}");
    assert_eq!(
        d["healed_chunks"].as_u64(),
        Some(victims.len() as u64),
        "{d}"
    );
    let new_packs = pack_files(&repo).len() - packs_before.len();
    assert!(
        new_packs >= 2,
        "healed in one step: {new_packs} new pack(s)"
    );

    verify(&repo).ok();
    let out = dir.path().join("restored");
    restore(&repo, &snapshot_id(&first), &out, true).ok();
    assert_same_file(&image, &out);
}

/// A list whose base is not the reference's state is refused before anything is written;
/// `--fallback-full` reads the whole disk instead.
#[test]
fn wrong_base_is_refused_and_nothing_is_stored() {
    let (dir, repo, image, mut gen) = setup("wrong_base");
    let size = 16 * BS;
    make_image(&image, ImageSpec::mixed(size), &mut gen);
    let list = dir.path().join("changes.txt");
    write_change_list(&list, size, "*", "cbt:0", &[(0, size)]);
    backup_with_list(&repo, &image, &list, &[]);
    random_writes(&image, &mut gen, 3);
    write_change_list(&list, size, "cbt:7", "cbt:8", &[(0, 10)]);

    let ids = list_ids(&repo);
    let packs = pack_files(&repo);
    let r = tessera([
        "backup",
        repo.to_str().unwrap(),
        "--series",
        "vm",
        &format!("d={}", image.display()),
        "--changes",
        &format!("d={}", list.display()),
        "--reference",
        "latest",
    ]);
    r.expect_code(5)
        .stderr_has("cbt:7")
        .stderr_has("cbt:0")
        .stderr_has("--fallback-full");
    assert_eq!(list_ids(&repo), ids);
    assert_eq!(pack_files(&repo), packs);

    // Without --reference the series' newest snapshot is only used if it matches: full read.
    let auto = backup_with_list(&repo, &image, &list, &[]);
    assert_eq!(disk0(&auto)["mode"], "key");
    assert!(disk0(&auto)["note"]
        .as_str()
        .unwrap()
        .contains("read in full"));
    let forced = backup_with_list(
        &repo,
        &image,
        &list,
        &["--reference", "latest", "--fallback-full"],
    );
    assert_ne!(disk0(&forced)["mode"], "delta");
    let out = dir.path().join("restored");
    restore(&repo, &snapshot_id(&forced), &out, true).ok();
    assert_same_file(&image, &out);

    // Malformed lists are refused with the line.
    fs::write(
        &list,
        "tessera-changed-blocks v1\nsize 5\nbase-state a\nstate b\nextent 9 9\n",
    )
    .unwrap();
    tessera([
        "backup",
        repo.to_str().unwrap(),
        "--series",
        "vm",
        &format!("d={}", image.display()),
        "--changes",
        &format!("d={}", list.display()),
    ])
    .expect_code(1)
    .stderr_has("changed-block list");
}
