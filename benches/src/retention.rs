//! Retention cost curves through the engine API in one process (used by `retention-bench`
//! and by `macro-bench --retention`):
//!
//! 1. time to forget one snapshot from repositories holding 10, 100 and 1000 snapshots of
//!    the same disk (each differing from the previous one by two blocks): it must stay flat,
//!    since forget touches only the forgotten snapshot's pages and the chunks it alone holds;
//! 2. compaction throughput: MiB/s of live data moved when half of a pack set is dead.

#![expect(
    clippy::missing_panics_doc,
    reason = "benchmark code: any failure aborts the run with its message"
)]

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::{InitOptions, NoProgress, Repository};

const BLOCK: usize = 64 * 1024;

fn backup_image(repo: &Repository, image: &Path) -> tessera_engine::ops::backup::BackupOutcome {
    backup(
        repo,
        &BackupRequest::one_disk("vm", "d0", image),
        &NoProgress,
    )
    .expect("backup")
}

fn rewrite_blocks(rng: &mut StdRng, image: &mut [u8], blocks: usize) {
    let n = image.len() / BLOCK;
    for _ in 0..blocks {
        let at = rng.gen_range(0..n) * BLOCK;
        rng.fill(&mut image[at..at + BLOCK]);
    }
}

/// Builds a repository with `count` snapshots; returns the median time to forget one
/// snapshot (over 5 forgets of snapshots from the middle of the history) and what it touched.
pub fn forget_cost(dir: &Path, count: usize, disk_mib: usize) -> (f64, f64, u64, u64) {
    let repo_path = dir.join(format!("forget-{count}"));
    Repository::init(&repo_path, InitOptions::default()).expect("init");
    let image_path = dir.join(format!("forget-{count}.img"));
    let mut rng = StdRng::seed_from_u64(count as u64);
    let mut image = vec![0u8; disk_mib << 20];
    rng.fill(&mut image[..]);
    let repo = Repository::open_writer(&repo_path).expect("open");
    let mut ids = Vec::new();
    for _ in 0..count {
        rewrite_blocks(&mut rng, &mut image, 2);
        std::fs::write(&image_path, &image).expect("write image");
        ids.push(backup_image(&repo, &image_path).id);
    }
    let mut plan_times = Vec::new();
    let mut commit_times = Vec::new();
    let mut pages = 0;
    let mut freed = 0;
    for k in 0..5 {
        let id = ids[count / 2 + k - 2.min(count / 2)];
        let started = Instant::now();
        let plan = plan_forget(&repo, &[id], false).expect("plan");
        plan_times.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        apply_forget(&repo, &plan).expect("forget");
        commit_times.push(started.elapsed().as_secs_f64() * 1000.0);
        pages = plan.deltas.pages.len() as u64;
        freed = plan.freed_objects;
    }
    plan_times.sort_by(f64::total_cmp);
    commit_times.sort_by(f64::total_cmp);
    drop(repo);
    let _ = std::fs::remove_dir_all(&repo_path);
    (plan_times[2], commit_times[2], pages, freed)
}

pub fn compaction_rate(dir: &Path, mib: usize) -> (f64, u64, f64) {
    let repo_path = dir.join("compact");
    Repository::init(&repo_path, InitOptions::default()).expect("init");
    let image_path = dir.join("compact.img");
    let mut rng = StdRng::seed_from_u64(99);
    let mut image = vec![0u8; mib << 20];
    rng.fill(&mut image[..]);
    let repo = Repository::open_writer(&repo_path).expect("open");
    std::fs::write(&image_path, &image).expect("write image");
    let first = backup_image(&repo, &image_path).id;
    // Rewrite every other block: half of the first snapshot's data dies with it.
    for b in (0..image.len() / BLOCK).step_by(2) {
        rng.fill(&mut image[b * BLOCK..(b + 1) * BLOCK]);
    }
    std::fs::write(&image_path, &image).expect("write image");
    backup_image(&repo, &image_path);
    apply_forget(&repo, &plan_forget(&repo, &[first], false).expect("plan")).expect("forget");
    let plan = plan_compact(&repo, 0.1).expect("plan compact");
    let started = Instant::now();
    let report = apply_compact(&repo, &plan, &NoProgress).expect("compact");
    let secs = started.elapsed().as_secs_f64();
    drop(repo);
    let _ = std::fs::remove_dir_all(&repo_path);
    (
        secs,
        report.bytes_moved,
        plan.bytes_to_free as f64 / 1_048_576.0,
    )
}

/// Runs both measurements in a temporary directory under `/var/tmp` and prints them.
pub fn run_and_print(sizes: &[usize], disk_mib: usize, compact_mib: usize) {
    let dir = tempfile::Builder::new()
        .prefix("tessera-retention-bench")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    println!(
        "forget one snapshot ({disk_mib} MiB disk, 64 KiB blocks, 2 blocks changed per snapshot)"
    );
    println!(
        "{:>10} {:>10} {:>18} {:>14} {:>14}",
        "snapshots", "plan (ms)", "commit+fsync (ms)", "pages touched", "objects freed"
    );
    for &n in sizes {
        let (plan_ms, commit_ms, pages, freed) = forget_cost(dir.path(), n, disk_mib);
        println!("{n:>10} {plan_ms:>10.3} {commit_ms:>18.2} {pages:>14} {freed:>14}");
    }
    let (secs, moved, freed_mib) = compaction_rate(dir.path(), compact_mib);
    let moved_mib = moved as f64 / 1_048_576.0;
    println!(
        "compaction: moved {moved_mib:.0} MiB of live data and freed {freed_mib:.0} MiB in {secs:.2} s: {:.0} MiB/s moved, {:.1} s per GiB moved",
        moved_mib / secs,
        secs / (moved_mib / 1024.0)
    );
}
