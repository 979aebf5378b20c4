//! `tessera list`, `show`, `stats`: read-only views.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::damage_marks::{load_damage_marks, DamageMark};
use tessera_engine::ops::usage::{exclusive_bytes_all, snapshot_usage};
use tessera_engine::time::format_us;
use tessera_engine::Repository;
use tessera_format::SnapshotHeader;

use crate::output::{bytes, print_json};

fn disk_json(h: &SnapshotHeader) -> serde_json::Value {
    h.disks
        .iter()
        .map(|d| {
            json!({
                "name": d.name, "size": d.size, "block_size": d.block_size, "pages": d.page_count,
                "root": hex_string(&d.root_digest),
                "identity": d.identity.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "stats": {
                    "bytes_read": d.stats.bytes_read, "zero_blocks": d.stats.zero_blocks,
                    "new_chunks": d.stats.new_chunks, "new_raw_bytes": d.stats.new_raw_bytes,
                    "new_stored_bytes": d.stats.new_stored_bytes,
                },
            })
        })
        .collect()
}

fn hex_string(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            use std::fmt::Write as _;
            let _ = write!(s, "{x:02x}");
            s
        })
}

pub fn list(repo: &Path, series: Option<&str>, json: bool) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let snaps: Vec<_> = repository
        .index()
        .snapshots()?
        .into_iter()
        .filter(|(_, h)| series.is_none_or(|s| h.series == s))
        .collect();
    let protected = repository.index().protected()?;
    let marks = load_damage_marks(repository.backend())?;
    if json {
        let items: Vec<_> = snaps
            .iter()
            .map(|(id, h)| {
                json!({
                    "id": id.to_hex(), "series": h.series, "time": format_us(h.time_us),
                    "time_us": h.time_us, "logical_bytes": h.logical_bytes(),
                    "protected": protected.contains(id),
                    "damaged": marks.contains_key(id),
                    "tags": h.tags.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "disks": h.disks.iter().map(|d| json!({"name": d.name, "size": d.size})).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({ "ok": true, "snapshots": items }));
    } else if snaps.is_empty() {
        println!("no snapshots");
    } else {
        println!(
            "{:<16} {:<20} {:<24} {:>12}  disks",
            "id", "series", "time", "size"
        );
        let mark = |id| {
            let mut m = String::new();
            if protected.contains(id) {
                m.push_str("  (protected)");
            }
            if marks.contains_key(id) {
                m.push_str("  DAMAGED (see `tessera show`, `tessera repair`)");
            }
            m
        };
        for (id, h) in &snaps {
            let disks: Vec<&str> = h.disks.iter().map(|d| d.name.as_str()).collect();
            println!(
                "{:<16} {:<20} {:<24} {:>12}  {}{}",
                &id.to_hex()[..16],
                h.series,
                format_us(h.time_us),
                bytes(h.logical_bytes()),
                disks.join(","),
                mark(id)
            );
        }
    }
    Ok(0)
}

pub fn show(repo: &Path, query: &str, json: bool) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let (id, h) = repository.resolve_snapshot(query)?;
    let protected = repository.index().protected()?.contains(&id);
    let damage = load_damage_marks(repository.backend())?.get(&id).copied();
    // A damaged snapshot (a page missing or unreadable) has no space accounting, but `show`
    // must still describe it, damage included.
    let usage = snapshot_usage(&repository, id).map_err(|e| e.to_string());
    if json {
        print_json(&json!({
            "ok": true, "id": id.to_hex(), "series": h.series, "time": format_us(h.time_us), "time_us": h.time_us,
            "duration_ms": h.duration_ms, "protected": protected,
            "usage": usage.as_ref().ok(), "usage_error": usage.as_ref().err(),
            "damaged": damage.is_some(), "damage": damage.map(damage_json),
            "tags": h.tags.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "disks": disk_json(&h),
        }));
    } else {
        println!(
            "snapshot {id}\n  series   {}\n  time     {}\n  duration {} ms",
            h.series,
            format_us(h.time_us),
            h.duration_ms
        );
        for (k, v) in &h.tags {
            println!("  tag      {k}={v}");
        }
        if protected {
            println!("  protected (prune and forget leave it alone)");
        }
        if let Some(m) = damage {
            println!("  DAMAGED  {}", damage_text(&m));
        }
        match &usage {
            Ok(usage) => println!(
                "  space    references {} in {} objects; {} of it only this snapshot references (freed if forgotten), {} shared",
                bytes(usage.referenced_stored_bytes),
                usage.referenced_objects,
                bytes(usage.exclusive_stored_bytes),
                bytes(usage.shared_stored_bytes)
            ),
            Err(e) => println!("  space    unknown: {e}"),
        }
        for d in &h.disks {
            println!(
                "  disk {}: {} in {} blocks of {}, {} manifest pages",
                d.name,
                bytes(d.size),
                d.size.div_ceil(u64::from(d.block_size)),
                bytes(u64::from(d.block_size)),
                d.page_count
            );
            println!(
                "    read {}, {} zero blocks, {} new chunks: {} raw, {} stored",
                bytes(d.stats.bytes_read),
                d.stats.zero_blocks,
                d.stats.new_chunks,
                bytes(d.stats.new_raw_bytes),
                bytes(d.stats.new_stored_bytes)
            );
            for (k, v) in &d.identity {
                println!("    {k} = {v}");
            }
        }
    }
    Ok(0)
}

/// The damage mark of a snapshot, as `show --json` prints it.
fn damage_json(m: DamageMark) -> serde_json::Value {
    json!({
        "ranges": m.ranges, "bytes": m.bytes, "file_damaged": m.file_damaged,
        "found": format_us(m.marked_at_us), "found_us": m.marked_at_us,
    })
}

fn damage_text(m: &DamageMark) -> String {
    let mut parts = Vec::new();
    if m.ranges > 0 {
        parts.push(format!(
            "{} byte ranges ({}) cannot be read intact",
            m.ranges,
            bytes(m.bytes)
        ));
    }
    if m.file_damaged {
        parts.push("the snapshot file is unreadable or differs from the catalog".to_string());
    }
    format!(
        "{}; found by the verification of {} (run `tessera verify REPO` for details, `tessera repair` to fix)",
        parts.join("; "),
        format_us(m.marked_at_us)
    )
}

pub fn stats(repo: &Path, json: bool) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let s = tessera_engine::ops::stats::stats(&repository)?;
    let exclusive = exclusive_bytes_all(&repository)?;
    if json {
        let per: Vec<_> = exclusive
            .iter()
            .map(|(id, b)| json!({ "id": id.to_hex(), "exclusive_stored_bytes": b }))
            .collect();
        print_json(&json!({ "ok": true, "stats": s, "snapshots": per }));
    } else {
        for (id, b) in &exclusive {
            println!(
                "snapshot {}  only it references {}",
                &id.to_hex()[..16],
                bytes(*b)
            );
        }
        println!(
            "snapshots            {} in {} series",
            s.snapshots, s.series
        );
        println!("logical data         {}", bytes(s.logical_bytes));
        println!(
            "unique data          {} in {} chunks",
            bytes(s.live_raw_bytes),
            s.live_chunks
        );
        println!("stored (chunks)      {}", bytes(s.live_stored_bytes));
        println!(
            "stored (manifests)   {} in {} pages",
            bytes(s.page_stored_bytes),
            s.live_pages
        );
        println!(
            "unreferenced         {} in {} objects (reclaimable)",
            bytes(s.unreferenced_stored_bytes),
            s.unreferenced_objects
        );
        println!(
            "pack files           {} in {} packs",
            bytes(s.pack_bytes),
            s.packs
        );
        println!(
            "dedup ratio          {:.2}x (logical / unique)",
            s.dedup_ratio
        );
        println!(
            "compression ratio    {:.2}x (unique / stored)",
            s.compression_ratio
        );
    }
    Ok(0)
}
