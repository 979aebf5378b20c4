//! Deduplication: unchanged data is stored once. The oracle is computed from the images
//! themselves (the set of distinct non-zero blocks), never hard-coded.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tempfile::TempDir;
use tessera_tests::{
    backup_json, block_digests, disk_sum, init_repo, list_json, make_image, pack_bytes, restore,
    seed, tessera, DataGen, Fill, ImageSpec, Value,
};

const BS: u64 = 64 * 1024;

/// Raw bytes of the distinct non-zero blocks of `paths` not already in `known` (which is
/// extended with them): exactly what a backup of those images must add to the store.
fn new_unique_bytes<S: std::hash::BuildHasher>(
    paths: &[&Path],
    known: &mut HashSet<[u8; 32], S>,
) -> u64 {
    let mut n = 0;
    for p in paths {
        for b in block_digests(p, BS) {
            if !b.zero && known.insert(b.digest) {
                n += b.len;
            }
        }
    }
    n
}

fn stats_json(repo: &Path) -> Value {
    let out = tessera(["--json".as_ref(), "stats".as_ref(), repo.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    v["stats"].clone()
}

#[test]
fn same_image_twice_stores_nothing_new() {
    let mut gen = DataGen::new(seed("same_twice"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(8 * (1 << 20) + 999), &mut gen);
    let mut known = HashSet::new();
    let unique = new_unique_bytes(&[&img], &mut known);

    let first = backup_json(&repo, "s", &[("d", &img)]);
    assert_eq!(disk_sum(&first, "new_raw_bytes"), unique, "{first}");
    let (packs_before, _) = pack_bytes(&repo);
    assert!(packs_before > 0);

    // Same series (reference manifest), then another series (index lookups only).
    for series in ["s", "other"] {
        let again = backup_json(&repo, series, &[("d", &img)]);
        assert_eq!(disk_sum(&again, "new_stored_bytes"), 0, "{again}");
        assert_eq!(disk_sum(&again, "new_raw_bytes"), 0, "{again}");
        assert_eq!(disk_sum(&again, "new_chunks"), 0, "{again}");
        let (packs_after, _) = pack_bytes(&repo);
        assert!(
            (packs_after - packs_before) * 100 < packs_before,
            "packs grew from {packs_before} to {packs_after} bytes for an unchanged image"
        );
    }
    assert_eq!(list_json(&repo).len(), 3);
}

#[test]
fn half_shared_images_store_only_the_other_half() {
    let mut gen = DataGen::new(seed("half_shared"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let size: u64 = 16 * (1 << 20) + 4321;
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_image(
        &a,
        ImageSpec {
            weights: (1, 4, 5),
            ..ImageSpec::mixed(size)
        },
        &mut gen,
    );
    // b: the first half of a (block-aligned), then new data of its own.
    fs::copy(&a, &b).unwrap();
    let half = (size / 2) / BS * BS;
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    let mut pos = half;
    while pos < size {
        let len = (size - pos).min(1 << 20);
        let kind = if (pos / (1 << 20)).is_multiple_of(2) {
            Fill::Random
        } else {
            Fill::Text
        };
        f.write_all_at(&gen.bytes(kind, len as usize), pos).unwrap();
        pos += len;
    }
    drop(f);

    let mut known = HashSet::new();
    let unique_a = new_unique_bytes(&[&a], &mut known);
    let unique_b = new_unique_bytes(&[&b], &mut known);
    let ba = backup_json(&repo, "a", &[("d", &a)]);
    let bb = backup_json(&repo, "b", &[("d", &b)]);
    assert_eq!(disk_sum(&ba, "new_raw_bytes"), unique_a, "{ba}");
    assert_eq!(disk_sum(&bb, "new_raw_bytes"), unique_b, "{bb}");
    assert!(
        disk_sum(&bb, "new_raw_bytes") < size * 6 / 10,
        "the second image shares half its data but {} of {size} bytes were new",
        disk_sum(&bb, "new_raw_bytes")
    );
    assert!(disk_sum(&bb, "new_raw_bytes") > size * 4 / 10);

    for (img, spec) in [(&a, "latest@a"), (&b, "latest@b")] {
        let out = t.path().join(spec.replace('@', "_"));
        restore(&repo, spec, &out, false).ok();
        tessera_tests::assert_same_file(img, &out);
    }
}

#[test]
fn stats_are_consistent_with_the_images() {
    let mut gen = DataGen::new(seed("stats"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_image(&a, ImageSpec::mixed(5 * (1 << 20) + 17), &mut gen);
    make_image(&b, ImageSpec::mixed(3 * (1 << 20) + 5), &mut gen);
    backup_json(&repo, "x", &[("a", &a), ("b", &b)]);
    backup_json(&repo, "x", &[("a", &a), ("b", &b)]);
    tessera_tests::mutate(&a, &mut gen, 10, 100_000, (1, 1, 1));
    backup_json(&repo, "y", &[("a", &a)]);

    // Oracle from the images as they were at each backup: all live distinct blocks.
    // (a changed after two backups, so recompute the old a's blocks from a restore.)
    let old_a = t.path().join("old_a");
    let first = list_json(&repo)[0]["id"].as_str().unwrap().to_string();
    restore(&repo, &format!("{first}:a"), &old_a, false).ok();
    let mut live: HashMap<[u8; 32], u64> = HashMap::new();
    for p in [&old_a, &b, &a] {
        for blk in block_digests(p, BS) {
            if !blk.zero {
                live.insert(blk.digest, blk.len);
            }
        }
    }
    let live_raw: u64 = live.values().sum();
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    let logical = 2 * (size(&old_a) + size(&b)) + size(&a);

    let s = stats_json(&repo);
    eprintln!("{s:#}");
    let int = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("stats.{k} missing in {s}"))
    };
    let float = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("stats.{k} missing in {s}"))
    };
    assert_eq!(int("snapshots"), 3);
    assert_eq!(int("series"), 2);
    assert_eq!(int("logical_bytes"), logical);
    let listed: u64 = list_json(&repo)
        .iter()
        .map(|x| x["logical_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(listed, logical);
    assert_eq!(int("live_chunks"), live.len() as u64);
    assert_eq!(int("live_raw_bytes"), live_raw);
    assert!(int("live_stored_bytes") > 0);
    let (pb, pc) = pack_bytes(&repo);
    assert_eq!(int("pack_bytes"), pb);
    assert_eq!(int("packs"), pc as u64);
    assert!(int("live_stored_bytes") + int("page_stored_bytes") <= pb);
    assert_eq!(
        int("unreferenced_objects"),
        0,
        "nothing was interrupted or forgotten"
    );
    let dedup = float("dedup_ratio");
    assert!(dedup > 1.0, "dedup ratio {dedup}");
    assert!((dedup - logical as f64 / live_raw as f64).abs() < 1e-9);
    let comp = float("compression_ratio");
    assert!((comp - live_raw as f64 / int("live_stored_bytes") as f64).abs() < 1e-9);
}

#[test]
fn identical_disks_in_one_snapshot_are_stored_once() {
    let mut gen = DataGen::new(seed("identical_disks"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    // Over one manifest page (512 blocks of 64 KiB) so whole pages repeat too.
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(40 * (1 << 20) + 3), &mut gen);
    let copy = t.path().join("copy");
    fs::copy(&img, &copy).unwrap();
    let mut known = HashSet::new();
    let unique = new_unique_bytes(&[&img], &mut known);
    let b = backup_json(&repo, "twins", &[("a", &img), ("b", &copy), ("c", &img)]);
    assert_eq!(disk_sum(&b, "new_raw_bytes"), unique, "{b}");
    let s = stats_json(&repo);
    assert_eq!(s["live_raw_bytes"], unique);
    tessera_tests::verify(&repo).ok();
    // A second snapshot of the same twins must keep the reference counts exact too.
    backup_json(&repo, "twins", &[("a", &img), ("b", &copy), ("c", &img)]);
    tessera_tests::verify(&repo).ok();
    for d in ["a", "b", "c"] {
        let out = t.path().join(format!("out-{d}"));
        restore(&repo, &format!("latest:{d}"), &out, false).ok();
        tessera_tests::assert_same_file(&img, &out);
    }
}
