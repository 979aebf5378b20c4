//! `--generations N`: a sequence of backups of an image that keeps changing the way VM disks
//! do — each generation rewrites `percent` % of the 64 KiB blocks at random, makes 256 small
//! (4 KiB) random writes and appends 0.5 % of new data — backed up by every tool into fresh
//! repositories. Reports each tool's total and slowest generation time, repository size after
//! all generations, and the restore time of the first and of the last generation (both
//! checked against SHA-256 digests of the image taken at those points).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tessera_benches::datagen::Rng;
use tessera_benches::measure::Measured;

use crate::host::{settle, warm};
use crate::image::{apply_delta, file_digest};
use crate::report::{human, Report, Row};
use crate::tools::Tool;

/// Small writes and appended data of one generation (after the 64 KiB rewrites).
fn small_writes_and_growth(image: &Path, seed: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(image)?;
    let size = f.metadata()?.len();
    let mut rng = Rng::new(seed ^ 0x5ca1_1b10c);
    let mut page = vec![0u8; 4096];
    for _ in 0..256 {
        rng.fill(&mut page);
        f.write_all_at(&page, rng.below(size / 4096) * 4096)?;
    }
    let mut tail = vec![0u8; (size / 200) as usize];
    let half = tail.len() / 2;
    rng.fill(&mut tail[..half]);
    f.write_all_at(&tail, size)?;
    f.sync_all()?;
    Ok(())
}

/// Runs the sequence; adds rows `TOOL.generations`, `TOOL.restore_first`,
/// `TOOL.restore_last` and returns a JSON summary.
pub fn run(
    report: &mut Report,
    tools: &mut [Tool],
    work: &Path,
    image: &Path,
    (generations, seed, percent): (u32, u64, f64),
) -> Result<Value> {
    for tool in tools.iter_mut() {
        tool.reset()?;
        tool.init()?;
    }
    let first_digest = file_digest(image)?;
    let mut times: Vec<Vec<Measured>> = tools.iter().map(|_| Vec::new()).collect();
    let mut sizes = Vec::new();
    for g in 0..=generations {
        if g > 0 {
            let size = std::fs::metadata(image)?.len();
            apply_delta(image, size, seed.wrapping_add(u64::from(g) * 7919), percent)?;
            small_writes_and_growth(image, seed.wrapping_add(u64::from(g)))?;
        }
        sizes.push(std::fs::metadata(image)?.len());
        settle();
        for (i, tool) in tools.iter_mut().enumerate() {
            warm(image)?;
            times[i].push(tool.backup(image)?.m);
            settle();
        }
        eprintln!("  generation {g}: image {}", human(sizes[g as usize]));
    }
    let last_digest = file_digest(image)?;
    let last_size = sizes.last().copied().unwrap_or(0);
    let mut summary = Vec::new();
    for (tool, t) in tools.iter_mut().zip(&times) {
        let name = tool.name();
        let later = t.get(1..).unwrap_or_default();
        let total: f64 = later.iter().map(|m| m.wall_s).sum();
        let slowest = later.iter().map(|m| m.wall_s).fold(0.0, f64::max);
        let repo = tool.repo_size();
        let mut m = later.iter().fold(Measured::default(), Measured::then);
        m.code = Some(0);
        let bytes: u64 = sizes.get(1..).unwrap_or_default().iter().sum();
        let note = format!(
            "{generations} generations after the first: {total:.2} s in all, slowest {slowest:.2} s; repo {} after all",
            human(repo)
        );
        let mut row = Row::new(
            &format!("{name}.generations"),
            name,
            "generations (total)",
            m,
            bytes,
            note,
        );
        row.extra = json!({ "repo_bytes": repo, "slowest_s": slowest, "per_generation_s": t.iter().map(|m| m.wall_s).collect::<Vec<_>>() });
        report.push(row);
        for (first, digest, label) in [
            (true, first_digest, "restore of the first generation"),
            (false, last_digest, "restore of the last generation"),
        ] {
            let out_dir = work.join(format!("gen-restore-{name}"));
            warm(&tool.repo)?;
            let (step, restored) = tool.restore_backup(image, &out_dir, first)?;
            if file_digest(&restored)? != digest {
                bail!("{name}: {label} restored different content");
            }
            std::fs::remove_dir_all(&out_dir)?;
            settle();
            let id = if first {
                "restore_first"
            } else {
                "restore_last"
            };
            let size = if first { sizes[0] } else { last_size };
            report.push(Row::new(
                &format!("{name}.{id}"),
                name,
                label,
                step.m,
                size,
                "content matches".into(),
            ));
        }
        summary.push(
            json!({ "tool": name, "total_s": total, "slowest_s": slowest, "repo_bytes": repo }),
        );
    }
    Ok(
        json!({ "generations": generations, "percent": percent, "image_sizes": sizes, "tools": summary }),
    )
}
