//! `tessera diff` and incremental restore (`restore A --onto TARGET --assume B`) between
//! random pairs of snapshots of a disk that changes and grows/shrinks: the target ends up
//! byte-identical to A, exactly the differing blocks are written (computed independently from
//! the images), the diff reports the same, and `--check-target` refuses a tampered target
//! without writing anything.

use std::path::Path;

use rand::{Rng, SeedableRng};
use tessera_tests::{
    assert_same_file, backup_json, block_digests, init_repo, make_image, mutate, seed, sha256_file,
    snapshot_id, tessera, DataGen, ImageSpec,
};

const BS: u64 = 64 * 1024;

/// Bytes that must be written to turn the `from` image (resized to `to`'s size) into `to`.
fn expected_changed_bytes(from: &Path, to: &Path) -> u64 {
    let a = block_digests(from, BS);
    let b = block_digests(to, BS);
    b.iter()
        .enumerate()
        .filter(|(i, blk)| match a.get(*i) {
            Some(old) if old.len == blk.len => old.digest != blk.digest,
            // The block straddles or lies past the old end: after the resize it reads as the
            // old bytes followed by zeros; it must be written unless that already equals it.
            _ => !blk.zero || a.get(*i).is_some_and(|old| !old.zero),
        })
        .map(|(_, blk)| blk.len)
        .sum()
}

#[test]
fn incremental_restore_between_random_pairs_writes_only_the_differences() {
    let run_seed = seed("incremental");
    let mut gen = DataGen::new(run_seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    init_repo(&repo, &[]);
    let image = work.path().join("image");
    make_image(&image, ImageSpec::mixed(6 << 20), &mut gen);
    let mut gens = Vec::new();
    for g in 0..6 {
        if g > 0 {
            mutate(&image, &mut gen, rng.gen_range(1..20), 200_000, (1, 2, 3));
            if rng.gen_bool(0.3) {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&image)
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(if rng.gen_bool(0.5) {
                    len + rng.gen_range(1..400_000)
                } else {
                    len - rng.gen_range(1..400_000)
                })
                .unwrap();
            }
        }
        let copy = work.path().join(format!("gen{g}"));
        std::fs::copy(&image, &copy).unwrap();
        let id = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));
        gens.push((id, copy));
    }
    for _ in 0..8 {
        let (to, from) = (rng.gen_range(0..gens.len()), rng.gen_range(0..gens.len()));
        let (a_id, a_img) = &gens[to];
        let (b_id, b_img) = &gens[from];
        let target = work.path().join("target");
        std::fs::copy(b_img, &target).unwrap();
        let expected = expected_changed_bytes(b_img, a_img);

        let diff = tessera(["--json", "diff", repo.to_str().unwrap(), b_id, a_id]);
        diff.ok();
        assert_eq!(
            diff.json()["disks"][0]["changed_bytes"],
            expected,
            "diff gen{from} -> gen{to}:\n{diff}"
        );

        let out = tessera([
            "--json",
            "restore",
            repo.to_str().unwrap(),
            a_id,
            "--onto",
            target.to_str().unwrap(),
            "--assume",
            b_id,
            "--check-target",
        ]);
        out.ok();
        assert_same_file(a_img, &target);
        assert_eq!(
            out.json()["result"]["bytes_written"],
            expected,
            "gen{from} -> gen{to} wrote more or less than the differing blocks:\n{out}"
        );
    }
}

#[test]
fn check_target_refuses_a_target_that_does_not_hold_the_assumed_snapshot() {
    let mut gen = DataGen::new(seed("incremental-check"));
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    init_repo(&repo, &[]);
    let image = work.path().join("image");
    make_image(&image, ImageSpec::mixed(2 << 20), &mut gen);
    let old = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));
    mutate(&image, &mut gen, 5, 100_000, (0, 1, 1));
    let new = snapshot_id(&backup_json(&repo, "vm", &[("d0", &image)]));
    let target = work.path().join("target");
    std::fs::copy(&image, &target).unwrap();
    // Tamper with one byte: the target no longer holds `new`.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\x5a", 1_234_567).unwrap();
    drop(f);
    let before = sha256_file(&target);
    let r = tessera([
        "restore",
        repo.to_str().unwrap(),
        &old,
        "--onto",
        target.to_str().unwrap(),
        "--assume",
        &new,
        "--check-target",
    ]);
    assert_eq!(r.code, 5, "{r}");
    assert!(
        r.stderr
            .contains("differs from the assumed snapshot at offset 1179648"),
        "{r}"
    );
    assert_eq!(
        sha256_file(&target),
        before,
        "the refused restore changed the target"
    );
    // A target of the wrong size is refused even without --check-target.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(12345)
        .unwrap();
    let r = tessera([
        "restore",
        repo.to_str().unwrap(),
        &old,
        "--onto",
        target.to_str().unwrap(),
        "--assume",
        &new,
    ]);
    assert_eq!(r.code, 5, "{r}");
    assert!(
        r.stderr.contains("differs from the assumed snapshot"),
        "{r}"
    );
    // --onto without --assume is bad usage.
    let r = tessera([
        "restore",
        repo.to_str().unwrap(),
        &old,
        "--onto",
        target.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r}");
}
