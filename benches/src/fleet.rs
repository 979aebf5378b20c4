//! Many writers at once (issue "Fleets", SPEC.md §8), through the binary: `fleet-bench` and
//! `macro-bench --fleet`.
//!
//! Each client backs up its own generated image (the macro benchmark's content generator,
//! one seed per client) into a repository that already holds a half-dead history (an image
//! backed up twice with every other block rewritten, the first snapshot forgotten), so that
//! a compaction has real work. Three runs, each into a fresh copy of that repository:
//!
//! 1. one client alone: `size / t1` is one client's throughput;
//! 2. `clients` clients started together: aggregate `clients × size / tN`; the goal is at
//!    least 90 % of one client's (`clients × t1 / tN ≥ 0.9`);
//! 3. the same clients with `compact --max-unused 0.1 --grace 2s` started beside them: the
//!    goal is a slowdown of the backups (`tC / tN - 1`) of at most 20 %. The grace is short
//!    so that the forgotten history is reclaimable, and long enough that the packs the
//!    backups seal (which the compaction's open adopts) are not.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::datagen::Layout;
use crate::measure::tessera_ok;

/// What the three runs measured.
#[derive(Debug, Clone)]
pub struct FleetFigures {
    /// Clients of the concurrent runs.
    pub clients: usize,
    /// Bytes of each client's image.
    pub image_bytes: u64,
    /// Seconds of one client alone.
    pub one_s: f64,
    /// Seconds until every client of the concurrent run had published.
    pub many_s: f64,
    /// The same, with a compaction beside them.
    pub many_with_compaction_s: f64,
    /// Seconds the compaction beside them ran.
    pub compaction_s: f64,
    /// Bytes the compaction moved (from its `--json` report).
    pub compaction_moved_bytes: u64,
}

impl FleetFigures {
    /// Aggregate throughput of the concurrent clients over one client's (goal ≥ 0.9).
    pub fn aggregate_ratio(&self) -> f64 {
        self.clients as f64 * self.one_s / self.many_s
    }

    /// How much the compaction slowed the concurrent clients (goal ≤ 0.2).
    pub fn compaction_slowdown(&self) -> f64 {
        self.many_with_compaction_s / self.many_s - 1.0
    }
}

fn write_image(path: &Path, size: u64, seed: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Layout::new(size, seed).write_to(&file, 2, false)?;
    Ok(())
}

/// A repository holding a half-dead history for compaction to work on.
fn prepared_repo(bin: &Path, dir: &Path, name: &str, junk: &[PathBuf; 2]) -> Result<PathBuf> {
    let repo = dir.join(name);
    let r = repo.display().to_string();
    tessera_ok(bin, &["init", &r, "--encryption", "none"])?;
    let mut first = None;
    for img in junk {
        let disk = format!("d={}", img.display());
        let m = tessera_ok(bin, &["--json", "backup", &r, "--series", "history", &disk])?;
        let v: serde_json::Value = serde_json::from_str(&m.stdout)?;
        first.get_or_insert_with(|| v["snapshot"].as_str().unwrap_or_default().to_string());
    }
    tessera_ok(bin, &["forget", &r, first.as_deref().unwrap_or_default()])?;
    Ok(repo)
}

fn spawn_backup(bin: &Path, repo: &Path, client: usize, image: &Path) -> Result<Child> {
    Command::new(bin)
        .args(["backup".as_ref(), repo.as_os_str()])
        .args(["--series", &format!("client{client}")])
        .arg(format!("d={}", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a backup")
}

/// Runs the backups of `images` at once into `repo`; returns the seconds until the last
/// finished.
fn backups_at_once(bin: &Path, repo: &Path, images: &[PathBuf], started: Instant) -> Result<f64> {
    let children: Vec<Child> = images
        .iter()
        .enumerate()
        .map(|(i, img)| spawn_backup(bin, repo, i, img))
        .collect::<Result<_>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "a concurrent backup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Generates the images in `dir` and runs the three measurements (see the module docs).
pub fn measure(
    bin: &Path,
    dir: &Path,
    clients: usize,
    image_bytes: u64,
    seed: u64,
) -> Result<FleetFigures> {
    let images: Vec<PathBuf> = (0..clients)
        .map(|i| {
            let p = dir.join(format!("client{i}.img"));
            write_image(&p, image_bytes, seed.wrapping_add(i as u64 + 1)).map(|()| p)
        })
        .collect::<Result<_>>()?;
    // The history: one image, then the same with every other 64 KiB block rewritten.
    let junk = [dir.join("history-1.img"), dir.join("history-2.img")];
    write_image(&junk[0], image_bytes * 2, seed.wrapping_add(1000))?;
    std::fs::copy(&junk[0], &junk[1])?;
    {
        use std::os::unix::fs::FileExt as _;
        let file = std::fs::OpenOptions::new().write(true).open(&junk[1])?;
        let fresh = Layout::new(image_bytes * 2, seed.wrapping_add(2000));
        let mut block = vec![0u8; 64 << 10];
        for b in (0..(image_bytes * 2) >> 16).step_by(2) {
            fresh.fill(b << 16, &mut block);
            file.write_all_at(&block, b << 16)?;
        }
    }
    let with_compaction = prepared_repo(bin, dir, "with-compaction", &junk)?;
    let one = prepared_repo(bin, dir, "one", &junk)?;
    let many = prepared_repo(bin, dir, "many", &junk)?;

    let started = Instant::now();
    let one_s = backups_at_once(bin, &one, &images[..1], started)?;
    let started = Instant::now();
    let many_s = backups_at_once(bin, &many, &images, started)?;
    // The forget of the prepared history must be older than the compaction's grace.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let compaction = Command::new(bin)
        .args([
            "--json".as_ref(),
            "compact".as_ref(),
            with_compaction.as_os_str(),
        ])
        .args(["--max-unused", "0.1", "--grace", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let many_with_compaction_s = backups_at_once(bin, &with_compaction, &images, started)?;
    let out = compaction.wait_with_output()?;
    let compaction_s = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "the compaction beside the backups failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let compaction_moved_bytes = report["report"]["bytes_moved"].as_u64().unwrap_or(0);
    for repo in [&one, &many, &with_compaction] {
        tessera_ok(bin, &["verify", &repo.display().to_string()])?;
    }
    Ok(FleetFigures {
        clients,
        image_bytes,
        one_s,
        many_s,
        many_with_compaction_s,
        compaction_s,
        compaction_moved_bytes,
    })
}

/// Prints the figures with the goals.
pub fn print(f: &FleetFigures) {
    let mib = f.image_bytes as f64 / 1_048_576.0;
    println!(
        "fleet: {} clients, {mib:.0} MiB image each, local repository holding a half-dead history",
        f.clients
    );
    println!(
        "  one client alone              {:>7.2} s  {:>7.1} MiB/s",
        f.one_s,
        mib / f.one_s
    );
    println!(
        "  {} clients at once             {:>7.2} s  {:>7.1} MiB/s aggregate = {:.2}x one client's (goal >= 0.90)",
        f.clients,
        f.many_s,
        f.clients as f64 * mib / f.many_s,
        f.aggregate_ratio()
    );
    println!(
        "  {} clients + compaction        {:>7.2} s  slowdown {:+.1} % (goal <= 20 %); the compaction took {:.2} s and moved {:.0} MiB",
        f.clients,
        f.many_with_compaction_s,
        100.0 * f.compaction_slowdown(),
        f.compaction_s,
        f.compaction_moved_bytes as f64 / 1_048_576.0
    );
}
