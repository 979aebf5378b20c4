//! `tessera restore` and `tessera diff`.

use std::path::Path;

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::diff::diff_snapshots;
use tessera_engine::ops::restore::restore_snapshot;
use tessera_engine::ops::restore_onto::restore_onto_snapshot;

use crate::doc::print_ok;
use crate::output::{bytes, Bars};

/// Splits `SNAPSHOT[:DISK]`.
pub(crate) fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((q, d)) => (q, Some(d)),
        None => (spec, None),
    }
}

pub fn restore(
    repo: &RepoLocation,
    spec: &str,
    out: &Path,
    force: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let repository = super::open_reader(repo)?;
    let (query, disk) = split_spec(spec);
    let r = restore_snapshot(&repository, query, disk, out, force, bars)?;
    if json {
        print_ok(&r);
    } else {
        for d in &r.disks {
            println!(
                "restored {} of {} to {} ({}, {} written, {:.0} MB/s)",
                d.name,
                &r.snapshot.to_hex()[..16],
                d.path.display(),
                bytes(d.size),
                bytes(d.bytes_written),
                d.size as f64 / 1e6 / r.seconds
            );
        }
    }
    Ok(0)
}

pub fn restore_onto(
    repo: &RepoLocation,
    spec: &str,
    target: &Path,
    assume: &str,
    check_target: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let repository = super::open_reader(repo)?;
    let (query, disk) = split_spec(spec);
    let r = restore_onto_snapshot(&repository, query, disk, target, assume, check_target, bars)?;
    if json {
        print_ok(&r);
    } else {
        println!(
            "turned {} from {} into {} ({}): {} changed blocks, {} written{}",
            target.display(),
            &r.assumed.to_hex()[..16],
            &r.snapshot.to_hex()[..16],
            r.disk,
            r.result.changed_blocks,
            bytes(r.result.bytes_written),
            if check_target {
                format!(", target checked ({})", bytes(r.result.bytes_checked))
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

pub fn diff(
    repo: &RepoLocation,
    from: &str,
    to: &str,
    disk: Option<&str>,
    json: bool,
) -> Result<i32> {
    let repository = super::open_reader(repo)?;
    let r = diff_snapshots(&repository, from, to, disk)?;
    if json {
        print_ok(&r);
    } else {
        for d in &r.disks {
            println!(
                "disk {}: {} changed in {} extents ({} blocks of {}); size {} -> {}",
                d.name,
                bytes(d.changed_bytes),
                d.extents.len(),
                d.changed_blocks,
                bytes(u64::from(d.diff.block_size)),
                d.diff.size_from,
                d.diff.size_to
            );
            for e in &d.extents {
                println!("  {:>16} +{}", e.offset, e.length);
            }
        }
    }
    Ok(0)
}
