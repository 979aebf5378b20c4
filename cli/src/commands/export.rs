//! `tessera export`: a snapshot's disk as raw, qcow2 or VHD, or (`--base`) only its delta
//! from another snapshot as a qcow2 overlay or a differencing VHD.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::export::{export_disk, ExportDisk, Format};
use tessera_engine::ops::diff::DiskView;
use tessera_engine::Repository;

use super::restore::{single_disk, split_spec};
use crate::output::{bytes, print_json, Bars};

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line option"
)]
pub fn run(
    repo: &Path,
    snapshot: &str,
    out: &Path,
    format: &str,
    base: Option<&str>,
    backing: Option<&str>,
    force: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let format: Format = format.parse()?;
    let repository = Repository::open(repo)?;
    let (query, disk) = split_spec(snapshot);
    let (id, _) = repository.resolve_snapshot(query)?;
    let snap = repository.load_snapshot(id)?;
    let disk = single_disk(&snap, disk)?;
    let target = ExportDisk {
        snapshot: id,
        time_us: snap.header.time_us,
        name: &disk,
        view: DiskView::of(&snap, &disk)?,
    };
    let base_snap = match base {
        Some(q) => {
            let (bid, _) = repository.resolve_snapshot(q)?;
            Some((bid, repository.load_snapshot(bid)?))
        }
        None => None,
    };
    let base_disk = match &base_snap {
        Some((bid, s)) => Some(ExportDisk {
            snapshot: *bid,
            time_us: s.header.time_us,
            name: &disk,
            view: DiskView::of(s, &disk)?,
        }),
        None => None,
    };
    let started = std::time::Instant::now();
    let r = export_disk(
        &repository,
        target,
        base_disk,
        format,
        out,
        backing,
        force,
        bars,
    )?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        print_json(&json!({
            "ok": true, "snapshot": id.to_hex(), "disk": disk,
            "base": base_snap.as_ref().map(|(b, _)| b.to_hex()),
            "format": r.format, "path": r.path.display().to_string(),
            "disk_size": r.disk_size, "virtual_size": r.virtual_size, "file_size": r.file_size,
            "bytes_written": r.bytes_written, "blocks_written": r.blocks_written,
            "zero_blocks_written": r.zero_blocks_written, "backing_file": r.backing_file,
            "seconds": secs,
        }));
    } else {
        println!(
            "exported {disk} of {}{} as {} to {} ({} disk, {} data in {} blocks, file {}){}",
            &id.to_hex()[..16],
            base_snap
                .as_ref()
                .map(|(b, _)| format!(" (delta from {})", &b.to_hex()[..16]))
                .unwrap_or_default(),
            r.format,
            r.path.display(),
            bytes(r.disk_size),
            bytes(r.bytes_written),
            r.blocks_written,
            bytes(r.file_size),
            r.backing_file
                .as_deref()
                .map(|b| format!("; backing file {b}"))
                .unwrap_or_default(),
        );
    }
    Ok(0)
}
