//! `tessera restore`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tessera_engine::ops::diff::{diff_disks, DiskView};
use tessera_engine::ops::restore::restore_disk;
use tessera_format::Snapshot;

use crate::args::UsageError;
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

/// Splits `SNAPSHOT[:DISK]`.
pub(crate) fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((q, d)) => (q, Some(d)),
        None => (spec, None),
    }
}

/// The one disk a spec names: `:DISK`, or the snapshot's only disk.
pub(crate) fn single_disk(snapshot: &Snapshot, disk: Option<&str>) -> Result<String> {
    match disk {
        Some(d) => Ok(d.to_string()),
        None if snapshot.header.disks.len() == 1 => Ok(snapshot.header.disks[0].name.clone()),
        None => Err(
            UsageError("the snapshot has several disks: name one as SNAPSHOT:DISK".into()).into(),
        ),
    }
}

pub fn restore_onto(
    repo: &Path,
    spec: &str,
    target: &Path,
    assume: &str,
    check_target: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let (query, disk) = split_spec(spec);
    let (to_id, _) = repository.resolve_snapshot(query)?;
    let (from_id, _) = repository.resolve_snapshot(assume)?;
    let to = repository.load_snapshot(to_id)?;
    let from = repository.load_snapshot(from_id)?;
    let disk = single_disk(&to, disk)?;
    let started = std::time::Instant::now();
    let r = tessera_engine::ops::restore_onto::restore_onto(
        &repository,
        DiskView::of(&to, &disk)?,
        DiskView::of(&from, &disk)?,
        target,
        check_target,
        bars,
    )?;
    if json {
        print_json(
            &json!({ "ok": true, "snapshot": to_id.to_hex(), "assumed": from_id.to_hex(), "disk": disk, "path": target.display().to_string(), "seconds": started.elapsed().as_secs_f64(), "result": r }),
        );
    } else {
        println!(
            "turned {} from {} into {} ({disk}): {} changed blocks, {} written{}",
            target.display(),
            &from_id.to_hex()[..16],
            &to_id.to_hex()[..16],
            r.changed_blocks,
            bytes(r.bytes_written),
            if check_target {
                format!(", target checked ({})", bytes(r.bytes_checked))
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

pub fn diff(repo: &Path, from: &str, to: &str, disk: Option<&str>, json: bool) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let (from_id, _) = repository.resolve_snapshot(from)?;
    let (to_id, _) = repository.resolve_snapshot(to)?;
    let a = repository.load_snapshot(from_id)?;
    let b = repository.load_snapshot(to_id)?;
    let names: Vec<String> = match disk {
        Some(d) => vec![d.to_string()],
        None => b
            .header
            .disks
            .iter()
            .filter(|d| a.header.disks.iter().any(|x| x.name == d.name))
            .map(|d| d.name.clone())
            .collect(),
    };
    let mut out = Vec::new();
    for name in &names {
        let diff = diff_disks(
            &repository,
            DiskView::of(&a, name)?,
            DiskView::of(&b, name)?,
        )?;
        out.push((name.clone(), diff.extents(), diff));
    }
    if json {
        let disks: Vec<_> = out
            .iter()
            .map(|(name, extents, d)| json!({
                "name": name, "size_from": d.size_from, "size_to": d.size_to, "block_size": d.block_size,
                "changed_blocks": d.changed.len(), "changed_bytes": d.changed_bytes(),
                "pages_read": d.pages_read, "pages_skipped": d.pages_skipped,
                "extents": extents.iter().map(|(o, l)| json!({ "offset": o, "length": l })).collect::<Vec<_>>(),
            }))
            .collect();
        print_json(
            &json!({ "ok": true, "from": from_id.to_hex(), "to": to_id.to_hex(), "disks": disks }),
        );
    } else {
        for (name, extents, d) in &out {
            println!(
                "disk {name}: {} changed in {} extents ({} blocks of {}); size {} -> {}",
                bytes(d.changed_bytes()),
                extents.len(),
                d.changed.len(),
                bytes(u64::from(d.block_size)),
                d.size_from,
                d.size_to
            );
            for (o, l) in extents {
                println!("  {o:>16} +{l}");
            }
        }
    }
    Ok(0)
}
