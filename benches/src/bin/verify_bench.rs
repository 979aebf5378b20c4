//! Full-verify throughput (measured by `tessera_benches::verify_measure`, shared with
//! `macro-bench`) against the same-run baseline the integrity issue names: `zstd -d`
//! piped into `openssl dgst -sha256` over the same data (decompress + hash, the work a verify
//! must do, using both cores: one per process). Runs the release `tessera` binary.
//!
//! `cargo run --release -p tessera-benches --bin verify-bench [-- --size-mib 1024 --tessera PATH]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_benches::bin_args::{arg, tessera_path};
use tessera_benches::verify_measure::measure;

fn timed(tessera: &Path, args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = Command::new(tessera)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("tessera");
    // verify exits 4 on damage; anything but 0 here is a failed benchmark.
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

fn main() {
    let size_mib: usize = arg("--size-mib", "1024").parse().expect("--size-mib");
    let tessera = tessera_path();
    let dir = tempfile::Builder::new()
        .prefix("tessera-verify-bench")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let d = dir.path();
    // No zero regions, so that verify and the baseline process the same amount of data:
    // half random, half compressible text (varied lines, ~3-4x with zstd).
    let mut rng = StdRng::seed_from_u64(1);
    let mut data = vec![0u8; size_mib << 20];
    let half = data.len() / 2;
    rng.fill(&mut data[..half]);
    let mut pos = half;
    while pos < data.len() {
        let line = format!(
            "{:08x} host-{} service[{}]: request {} handled in {} ms\n",
            pos,
            rng.gen_range(0..16),
            rng.gen_range(100..999),
            rng.gen_range(0..1_000_000),
            rng.gen_range(0..500)
        );
        let n = line.len().min(data.len() - pos);
        data[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
        pos += n;
    }
    let image = d.join("image");
    std::fs::write(&image, &data).expect("image");
    drop(data);
    let repo = d.join("repo");
    let repo_s = repo.to_str().expect("utf-8 path");
    timed(&tessera, &["init", repo_s, "--encryption", "none"]);
    timed(
        &tessera,
        &[
            "backup",
            repo_s,
            "--series",
            "v",
            &format!("d0={}", image.display()),
        ],
    );
    let fig = measure(&tessera, &repo, &image, d).expect("verify measurement");
    let (baseline, verify) = (fig.baseline.wall_s, fig.verify.wall_s);
    let mb = (size_mib << 20) as f64 / 1e6;
    println!("{size_mib} MiB image (half random, half text), warm page cache");
    println!("{:<40} {:>9} {:>9}", "operation", "seconds", "MB/s");
    println!(
        "{:<40} {baseline:>9.2} {:>9.0}",
        "zstd -d | openssl dgst -sha256",
        mb / baseline
    );
    println!(
        "{:<40} {verify:>9.2} {:>9.0}",
        "tessera verify (everything)",
        mb / verify
    );
    println!(
        "ratio: tessera verify / baseline = {:.2} (goal >= 0.80)",
        fig.ratio()
    );
}
