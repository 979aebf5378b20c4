//! `tessera backup`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::backup::{
    backup as run_backup, BackupReport, BackupRequest, DeltaOptions, DiskSpec, Mode,
    ReferenceChoice,
};

use crate::args::{parse_size, split_pair, DeltaArgs};
use crate::doc::print_ok;
use crate::output::{bytes, Bars};

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per option group of the subcommand"
)]
pub fn backup(
    repo: &RepoLocation,
    series: String,
    disks: &[String],
    tags: &[String],
    block_size: Option<&str>,
    delta: &DeltaArgs,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let disks = disks
        .iter()
        .map(|d| split_pair("disk", d).map(|(n, p)| DiskSpec::new(n, Path::new(p))))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = tags
        .iter()
        .map(|t| split_pair("tag", t).map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let block_size = block_size
        .map(parse_size)
        .transpose()?
        .map(|b| u32::try_from(b).unwrap_or(u32::MAX));
    let mut req = BackupRequest {
        series,
        disks,
        tags,
        block_size,
        delta: DeltaOptions {
            reference: delta.reference.clone().unwrap_or(ReferenceChoice::Auto),
            fallback_full: delta.fallback_full,
            force_key: delta.full,
            key_interval: delta.key_interval,
            format: delta.format.parse()?,
            allow_backing_dirs: delta.allow_backing_dirs.clone(),
            tls_ca: delta.tls_ca.clone(),
        },
    };
    for c in &delta.changes {
        let (disk, file) = split_pair("changed-block list", c)?;
        req.attach_changes(disk, PathBuf::from(file))?;
    }
    let repository = super::open_for_backup(repo, &req.series)?;
    let outcome = run_backup(&repository, &req, bars)?;
    if let Some(recovery) = &outcome.publish_recovery {
        super::note_recovery(recovery);
    }
    let report = outcome.report();
    if json {
        print_ok(&report);
    } else {
        print_text(&report);
    }
    Ok(0)
}

fn print_text(r: &BackupReport) {
    println!(
        "snapshot {} of series {} ({} ms)",
        r.snapshot, r.series, r.duration_ms
    );
    let secs = (r.duration_ms as f64 / 1000.0).max(0.001);
    for d in &r.disks {
        let how = match (d.mode, d.reference, d.changed_bytes) {
            (Mode::Delta, Some(id), Some(c)) => {
                format!("delta on {} ({} changed)", &id.to_hex()[..12], bytes(c))
            }
            (mode, _, _) => mode.as_str().to_string(),
        };
        println!(
            "  {}: {how}, {} ({} blocks of {}), read {}, new data {} stored as {}, {:.0} MB/s",
            d.name,
            bytes(d.size),
            d.size.div_ceil(u64::from(d.block_size)),
            bytes(u64::from(d.block_size)),
            bytes(d.bytes_read),
            bytes(d.new_raw_bytes),
            bytes(d.new_stored_bytes),
            d.size as f64 / 1e6 / secs
        );
        if let Some(note) = &d.note {
            println!("    note: {note}");
        }
        if let (Some(blocks), Some(offsets)) = (d.drift_blocks, &d.drift_offsets) {
            if blocks == 0 {
                println!("    drift: none (the delta information matched the disk)");
            } else {
                let shown: Vec<String> = offsets.iter().map(u64::to_string).collect();
                println!(
                    "    DRIFT: {blocks} blocks changed although no delta said so (changed-block tracking is unreliable); offsets: {}{}",
                    shown.join(", "),
                    if blocks as usize > shown.len() { ", ..." } else { "" }
                );
            }
        }
        if d.healed_chunks > 0 {
            println!(
                "    healed: {} damaged chunks in the store were rewritten from this disk",
                d.healed_chunks
            );
        }
    }
    if let Some(n) = &r.storage_requests {
        println!(
            "  requests to the object store: {} ({} get, {} list, {} head, {} put, {} post, {} delete)",
            n.total(),
            n.get,
            n.list,
            n.head,
            n.put,
            n.post,
            n.delete
        );
    }
}
