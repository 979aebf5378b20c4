//! `tessera job run` against the four commands it replaces (SPEC.md §26): the same
//! generations of a disk backed up, pruned, verified (the series, in full) and synced off-site,
//! once as `backup`, `prune`, `verify`, `sync` and once as one job run. The job opens the
//! repository once instead of three times, and adds its durable history and repository
//! figures (`stats`); the ratio says what the job layer costs or saves.
//!
//! `cargo run -p tessera-benches --bin job-bench -- [--size-mib 512] [--generations 5] [--percent 2]`

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use tessera_benches::bin_args::{arg, tessera_path};
use tessera_benches::datagen::Layout;
use tessera_benches::measure::tessera_ok;

/// Rewrites `percent` of the image in random 64 KiB–1 MiB runs.
fn mutate(image: &Path, size: u64, percent: u64, rng: &mut rand::rngs::StdRng) -> Result<()> {
    let mut f = OpenOptions::new().write(true).open(image)?;
    let mut left = size * percent / 100;
    while left > 0 {
        let len = (rng.gen_range(64u64..=1024) << 10).min(left);
        let at = rng.gen_range(0..(size - len) / 4096) * 4096;
        let mut data = vec![0u8; len as usize];
        rng.fill(&mut data[..]);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&data)?;
        left -= len;
    }
    f.sync_all()?;
    Ok(())
}

fn main() -> Result<()> {
    let size_mib: u64 = arg("--size-mib", "512").parse()?;
    let generations: u32 = arg("--generations", "5").parse()?;
    let percent: u64 = arg("--percent", "2").parse()?;
    let bin = tessera_path();
    let work = tempfile::Builder::new()
        .prefix("tessera-job-bench-")
        .tempdir_in("/var/tmp")?;
    let w = work.path();
    let size = size_mib << 20;
    let image = w.join("disk.raw");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pristine = w.join("pristine.raw");
    Layout::new(size, 1).write_to(&File::create(&pristine)?, cores, false)?;
    let s = |p: &Path| p.display().to_string();
    let mut totals = [0f64; 2];
    for (i, how) in ["commands", "job run"].iter().enumerate() {
        let (repo, offsite, state) = (
            w.join(format!("repo{i}")),
            w.join(format!("off{i}")),
            w.join(format!("state{i}")),
        );
        for r in [&repo, &offsite] {
            tessera_ok(&bin, &["init", &s(r), "--encryption", "none"])?;
        }
        let job = w.join(format!("bench{i}.toml"));
        std::fs::write(
            &job,
            format!(
                "[repository]\nlocation = {:?}\n[backup]\nseries = \"vm\"\n[[backup.disk]]\nname = \"xvda\"\nsource = {:?}\n[retention]\nkeep-last = 3\n[verify]\nfull-every = \"1s\"\n[[sync]]\nto = {:?}\n",
                s(&repo),
                s(&image),
                s(&offsite)
            ),
        )?;
        std::fs::copy(&pristine, &image)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for g in 0..generations {
            if g > 0 {
                mutate(&image, size, percent, &mut rng)?;
            }
            let seconds = if i == 0 {
                let disk = format!("xvda={}", s(&image));
                [
                    tessera_ok(&bin, &["backup", &s(&repo), "--series", "vm", &disk])?,
                    tessera_ok(
                        &bin,
                        &["prune", &s(&repo), "--series", "vm", "--keep-last", "3"],
                    )?,
                    tessera_ok(&bin, &["verify", &s(&repo), "--series", "vm"])?,
                    tessera_ok(&bin, &["sync", &s(&repo), &s(&offsite), "--series", "vm"])?,
                ]
                .iter()
                .map(|m| m.wall_s)
                .sum::<f64>()
            } else {
                tessera_ok(&bin, &["job", "run", &s(&job), "--state-dir", &s(&state)])?.wall_s
            };
            totals[i] += seconds;
            eprintln!("{how}: generation {g}: {seconds:.2} s");
        }
    }
    println!("{size_mib} MiB disk, {generations} generations ({percent} % rewritten each), backup + prune + verify (series, full) + sync");
    println!("| | four commands | one job run | job / commands |");
    println!("|---|---|---|---|");
    println!(
        "| total wall time | {:.2} s | {:.2} s | {:.2} |",
        totals[0],
        totals[1],
        totals[1] / totals[0]
    );
    Ok(())
}
