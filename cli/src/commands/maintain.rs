//! `tessera init`, `verify`, `repair`.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::{InitOptions, Repository};
use tessera_format::config::validate_block_size;
use tessera_format::Compression;

use crate::args::{parse_size, UsageError};
use crate::output::{bytes, print_json, Bars};

pub fn init(repo: &Path, block_size: &str, compression: &str, json: bool) -> Result<i32> {
    let block_size =
        validate_block_size(parse_size(block_size)?).map_err(|e| UsageError(e.to_string()))?;
    let compression = Compression::parse(compression).map_err(|e| UsageError(e.to_string()))?;
    let config = Repository::init(
        repo,
        InitOptions {
            block_size,
            compression,
        },
    )?;
    if json {
        print_json(&json!({
            "ok": true, "repo": repo.display().to_string(), "repository_id": config.repo_id.to_hex(),
            "block_size": config.default_block_size, "compression": config.compression.to_string(),
            "format_version": config.format_version,
        }));
    } else {
        println!(
            "created repository {} (id {}, {} blocks, {})",
            repo.display(),
            config.repo_id,
            bytes(u64::from(config.default_block_size)),
            config.compression
        );
    }
    Ok(0)
}

pub fn verify(repo: &Path, metadata_only: bool, json: bool, bars: &Bars) -> Result<i32> {
    let repository = Repository::open(repo)?;
    let report = tessera_engine::ops::check::check(&repository, !metadata_only, bars)?;
    if json {
        let mut doc = json!({ "ok": report.is_clean(), "report": report });
        if !report.is_clean() {
            doc["error"] = json!(format!("{} problems found", report.problems.len()));
        }
        print_json(&doc);
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        for d in &report.damaged {
            let place = match (&d.pack, d.pack_offset) {
                (Some(p), Some(o)) => format!("pack {p} offset {o}"),
                _ => "not in the store".to_string(),
            };
            println!("damaged {} {} ({place}) is needed by {} ranges:", d.kind, d.digest, d.ranges.len());
            for r in &d.ranges {
                println!("  snapshot {} disk {} bytes {}..{}", &r.snapshot[..16], r.disk, r.offset, r.offset + r.length);
            }
        }
        println!(
            "checked {} snapshots, read {} objects ({}): {}",
            report.snapshots,
            report.objects_read,
            bytes(report.bytes_read),
            if report.is_clean() {
                "no problems found".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
    }
    Ok(if report.is_clean() { 0 } else { 4 })
}

pub fn repair(
    repo: &Path,
    rebuild_index: bool,
    recount: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    if recount && !rebuild_index {
        let repository = Repository::open_writer(repo)?;
        let fixed = tessera_engine::ops::check::recount(&repository)?;
        if json {
            print_json(&json!({ "ok": true, "counts_fixed": fixed }));
        } else {
            println!("reference counts recomputed: {fixed} fixed");
        }
        return Ok(0);
    }
    if !rebuild_index {
        return Err(UsageError("say what to repair: --rebuild-index or --recount".into()).into());
    }
    let r = tessera_engine::ops::rebuild_index::rebuild_index(repo, bars)?;
    let clean = r.pack_problems.is_empty() && r.bad_snapshots.is_empty() && r.missing.is_empty();
    if json {
        print_json(&json!({
            "ok": clean, "packs": r.packs, "objects": r.objects, "snapshots": r.snapshots,
            "pack_problems": r.pack_problems, "bad_snapshots": r.bad_snapshots, "missing": r.missing,
        }));
    } else {
        for (p, why) in &r.pack_problems {
            println!("pack {p}: {why}");
        }
        for (s, why) in &r.bad_snapshots {
            println!("snapshot {s}: {why}");
        }
        for m in &r.missing {
            println!("missing {m}");
        }
        println!(
            "index rebuilt: {} packs, {} objects, {} snapshots",
            r.packs, r.objects, r.snapshots
        );
    }
    Ok(if clean { 0 } else { 4 })
}
