//! `tessera backup`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use tessera_engine::ops::backup::{
    backup as run_backup, BackupOutcome, BackupRequest, DeltaOptions, DiskSpec, Mode,
    ReferenceChoice,
};

use crate::args::{parse_size, split_pair, DeltaArgs};
use crate::output::{bytes, print_json, Bars};

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per option group of the subcommand"
)]
pub fn backup(
    repo: &Path,
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
    let repository = super::open_writer(repo)?;
    let mut disks = disks;
    for c in &delta.changes {
        let (name, file) = split_pair("changed-block list", c)?;
        let disk = disks.iter_mut().find(|d| d.name == name).ok_or_else(|| {
            crate::args::UsageError(format!(
                "--changes names disk {name:?}, which is not being backed up"
            ))
        })?;
        disk.changes = Some(PathBuf::from(file));
    }
    let reference = match delta.reference.as_deref() {
        None => ReferenceChoice::Auto,
        Some("latest") => ReferenceChoice::Latest,
        Some(id) => ReferenceChoice::Snapshot(id.to_string()),
    };
    let req = BackupRequest {
        series,
        disks,
        tags,
        block_size,
        delta: DeltaOptions {
            reference,
            fallback_full: delta.fallback_full,
            force_key: delta.full,
            key_interval: delta.key_interval,
            format: delta.format.parse()?,
            allow_backing_dirs: delta.allow_backing_dirs.clone(),
        },
    };
    let out = run_backup(&repository, &req, bars)?;
    print_outcome(&out, json);
    Ok(0)
}

fn print_outcome(out: &BackupOutcome, json: bool) {
    let h = &out.header;
    if json {
        print_json(&json!({
            "ok": true,
            "snapshot": out.id.to_hex(),
            "series": h.series,
            "time": tessera_engine::time::format_us(h.time_us),
            "duration_ms": h.duration_ms,
            "packs_written": out.packs_written,
            "disks": h.disks.iter().zip(&out.disks).map(|(d, r)| json!({
                "name": d.name, "size": d.size, "block_size": d.block_size,
                "mode": r.mode.as_str(),
                "reference": r.reference.map(|id| id.to_hex()),
                "changed_bytes": r.changed_bytes,
                "bytes_read": d.stats.bytes_read, "zero_blocks": d.stats.zero_blocks,
                "new_chunks": d.stats.new_chunks, "new_raw_bytes": d.stats.new_raw_bytes,
                "new_stored_bytes": d.stats.new_stored_bytes,
                "drift_blocks": r.drift.as_ref().map(|x| x.blocks),
                "drift_offsets": r.drift.as_ref().map(|x| x.offsets.clone()),
                "healed_chunks": r.healed_chunks,
                "note": r.note,
            })).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "snapshot {} of series {} ({} ms)",
            out.id.to_hex(),
            h.series,
            h.duration_ms
        );
        for (d, r) in h.disks.iter().zip(&out.disks) {
            let secs = (h.duration_ms as f64 / 1000.0).max(0.001);
            let how = match (r.mode, r.reference, r.changed_bytes) {
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
                bytes(d.stats.bytes_read),
                bytes(d.stats.new_raw_bytes),
                bytes(d.stats.new_stored_bytes),
                d.size as f64 / 1e6 / secs
            );
            if let Some(note) = &r.note {
                println!("    note: {note}");
            }
            if let Some(drift) = &r.drift {
                if drift.blocks == 0 {
                    println!("    drift: none (the delta information matched the disk)");
                } else {
                    let shown: Vec<String> = drift.offsets.iter().map(u64::to_string).collect();
                    println!(
                        "    DRIFT: {} blocks changed although no delta said so (changed-block tracking is unreliable); offsets: {}{}",
                        drift.blocks,
                        shown.join(", "),
                        if drift.blocks as usize > shown.len() { ", ..." } else { "" }
                    );
                }
            }
            if r.healed_chunks > 0 {
                println!(
                    "    healed: {} damaged chunks in the store were rewritten from this disk",
                    r.healed_chunks
                );
            }
        }
    }
}
