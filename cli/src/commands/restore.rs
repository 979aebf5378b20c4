//! `tessera restore`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::Repository;

use crate::output::{bytes, print_json, Bars};

pub fn restore(
    repo: &Path,
    spec: &str,
    out: &Path,
    force: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let (query, disk) = match spec.rsplit_once(':') {
        Some((q, d)) => (q, Some(d)),
        None => (spec, None),
    };
    let (id, header) = repository.resolve_snapshot(query)?;
    let snapshot = repository.load_snapshot(id)?;
    let targets: Vec<(String, std::path::PathBuf)> = match disk {
        Some(d) => vec![(d.to_string(), out.to_path_buf())],
        None if header.disks.len() == 1 => vec![(header.disks[0].name.clone(), out.to_path_buf())],
        None => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("creating directory {}", out.display()))?;
            header
                .disks
                .iter()
                .map(|d| (d.name.clone(), out.join(format!("{}.raw", d.name))))
                .collect()
        }
    };
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for (disk, path) in &targets {
        let r = restore_disk(&repository, id, &snapshot, disk, path, force, bars)?;
        results.push((disk.clone(), r));
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    if json {
        print_json(&json!({
            "ok": true, "snapshot": id.to_hex(), "seconds": secs,
            "disks": results.iter().map(|(d, r)| json!({
                "name": d, "path": r.path.display().to_string(), "size": r.size,
                "bytes_written": r.bytes_written, "zero_blocks": r.zero_blocks,
            })).collect::<Vec<_>>(),
        }));
    } else {
        for (d, r) in &results {
            println!(
                "restored {d} of {} to {} ({}, {} written, {:.0} MB/s)",
                &id.to_hex()[..16],
                r.path.display(),
                bytes(r.size),
                bytes(r.bytes_written),
                r.size as f64 / 1e6 / secs
            );
        }
    }
    Ok(0)
}
