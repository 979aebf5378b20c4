//! `tessera list`, `show`, `stats`: read-only views.

use std::fmt::Write as _;

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::catalog::{self, DamageReport, ShowReport, StatsReport};
use tessera_engine::time::format_us;
use tessera_engine::SnapshotRef;

use crate::doc::print_ok;
use crate::output::bytes;

pub fn list(repo: &RepoLocation, series: Option<&str>, json: bool) -> Result<i32> {
    let r = catalog::list(&super::open_reader(repo)?, series)?;
    if json {
        print_ok(&r);
    } else if r.snapshots.is_empty() {
        println!("no snapshots");
    } else {
        println!(
            "{:<16} {:<20} {:<24} {:>12}  disks",
            "id", "series", "time", "size"
        );
        for s in &r.snapshots {
            let disks: Vec<&str> = s.disks.iter().map(|d| d.name.as_str()).collect();
            let mut mark = String::new();
            if s.protected {
                mark.push_str("  (protected)");
            }
            if let Some(until) = &s.protected_until {
                let _ = write!(mark, "  (immutable until {until})");
            }
            if s.damaged {
                mark.push_str("  DAMAGED (see `tessera show`, `tessera repair`)");
            }
            println!(
                "{:<16} {:<20} {:<24} {:>12}  {}{mark}",
                &s.id.to_hex()[..16],
                s.series,
                s.time,
                bytes(s.logical_bytes),
                disks.join(","),
            );
        }
    }
    Ok(0)
}

pub fn show(repo: &RepoLocation, reference: &SnapshotRef, json: bool) -> Result<i32> {
    let r = catalog::show(&super::open_reader(repo)?, reference)?;
    if json {
        print_ok(&r);
    } else {
        print_show(&r);
    }
    Ok(0)
}

fn print_show(r: &ShowReport) {
    println!(
        "snapshot {}\n  series   {}\n  time     {}\n  duration {} ms\n  encryption {}",
        r.id, r.series, r.time, r.duration_ms, r.encryption
    );
    for (k, v) in &r.tags {
        println!("  tag      {k}={v}");
    }
    if r.protected {
        println!("  protected (prune and forget leave it alone)");
    }
    if let Some(m) = &r.damage {
        println!("  DAMAGED  {}", damage_text(m));
    }
    match (&r.usage, &r.usage_error) {
        (Some(usage), _) => println!(
            "  space    references {} in {} objects; {} of it only this snapshot references (freed if forgotten), {} shared",
            bytes(usage.referenced_stored_bytes),
            usage.referenced_objects,
            bytes(usage.exclusive_stored_bytes),
            bytes(usage.shared_stored_bytes)
        ),
        (None, e) => println!("  space    unknown: {}", e.as_deref().unwrap_or("")),
    }
    for d in &r.disks {
        println!(
            "  disk {}: {} in {} blocks of {}, {} manifest pages",
            d.name,
            bytes(d.size),
            d.size.div_ceil(u64::from(d.block_size)),
            bytes(u64::from(d.block_size)),
            d.pages
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

fn damage_text(m: &DamageReport) -> String {
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
        format_us(m.found_us)
    )
}

pub fn stats(repo: &RepoLocation, json: bool) -> Result<i32> {
    let r = catalog::stats_report(&super::open_reader(repo)?)?;
    if json {
        print_ok(&r);
    } else {
        print_stats(&r);
    }
    Ok(0)
}

fn print_stats(r: &StatsReport) {
    for e in &r.snapshots {
        println!(
            "snapshot {}  only it references {}",
            &e.id.to_hex()[..16],
            bytes(e.exclusive_stored_bytes)
        );
    }
    let s = &r.stats;
    match &s.key_fingerprint {
        Some(fp) => println!(
            "encryption           {} (format {}, key fingerprint {fp})",
            s.encryption, s.format_version
        ),
        None => println!(
            "encryption           none (format {}: anyone who can read the files reads the data)",
            s.format_version
        ),
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
