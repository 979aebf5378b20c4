//! First measurement of S3 repositories: a first backup and a restore of a mixed image
//! (default 256 MiB; `TESSERA_S3_MEASURE_MIB`) into a local repository and into one on a
//! SeaweedFS started on loopback, with their ratio. Absolute times on a shared 2-core
//! machine are noise (SeaweedFS shares the cores); the ratio is the figure.
//!
//! `cargo run -p tessera-tests --example s3_measure [--release]`

use std::time::Instant;

use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::{InitOptions, NoProgress, Repository};
use tessera_tests::seaweed::{Client, Seaweed};
use tessera_tests::{make_image, DataGen, ImageSpec};

fn timed(repo: &Repository, image: &std::path::Path, out: &std::path::Path) -> (f64, f64) {
    let t = Instant::now();
    let done = backup(
        repo,
        &BackupRequest::one_disk("vm", "d0", image),
        &NoProgress,
    )
    .expect("backup");
    let backup_s = t.elapsed().as_secs_f64();
    let snapshot = repo.load_snapshot(done.id).expect("snapshot");
    let t = Instant::now();
    restore_disk(repo, done.id, &snapshot, "d0", out, true, &NoProgress).expect("restore");
    let restore_s = t.elapsed().as_secs_f64();
    assert_eq!(
        tessera_tests::sha256_file(image),
        tessera_tests::sha256_file(out),
        "the restore differs"
    );
    std::fs::remove_file(out).expect("removing the restore");
    (backup_s, restore_s)
}

fn main() {
    let mib: u64 = std::env::var("TESSERA_S3_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let work = tempfile::tempdir().expect("work dir");
    let image = work.path().join("disk.img");
    make_image(&image, ImageSpec::mixed(mib << 20), &mut DataGen::new(42));
    let out = work.path().join("restored.img");

    let local = work.path().join("local-repo");
    Repository::init(&local, InitOptions::default()).expect("local init");
    let (lb, lr) = timed(
        &Repository::open_writer(&local).expect("open"),
        &image,
        &out,
    );

    let sw = Seaweed::start("measure");
    let client = Client::new(&sw.location("m"), sw.options());
    client.init();
    let (sb, sr) = timed(&client.writer(), &image, &out);

    let rate = |s: f64| mib as f64 / s;
    println!("image: {mib} MiB mixed (20% zero, 40% text, 40% random)");
    println!(
        "local: backup {lb:.2} s ({:.0} MiB/s), restore {lr:.2} s ({:.0} MiB/s)",
        rate(lb),
        rate(lr)
    );
    println!(
        "s3:    backup {sb:.2} s ({:.0} MiB/s), restore {sr:.2} s ({:.0} MiB/s)",
        rate(sb),
        rate(sr)
    );
    println!(
        "s3/local time: backup {:.2}x, restore {:.2}x",
        sb / lb,
        sr / lr
    );
}
