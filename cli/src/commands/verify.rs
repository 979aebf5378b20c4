//! `tessera verify`.

use anyhow::Result;
use serde_json::json;
use tessera_engine::Repository;

use crate::args::VerifyArgs;
use crate::output::{bytes, print_json, Bars};

pub fn run(args: &VerifyArgs, json: bool, bars: &Bars) -> Result<i32> {
    if !args.snapshots.is_empty()
        || args.series.is_some()
        || args.sample.is_some()
        || args.seed.is_some()
        || args.skip_verified_within.is_some()
    {
        return Err(crate::args::UsageError("--snapshot, --series, --sample, --seed and --skip-verified-within are not implemented yet".into()).into());
    }
    let (repo, metadata_only) = (&args.repo, args.metadata_only);
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
            println!(
                "damaged {} {} ({place}) is needed by {} ranges:",
                d.kind,
                d.digest,
                d.ranges.len()
            );
            for r in &d.ranges {
                println!(
                    "  snapshot {} disk {} bytes {}..{}",
                    &r.snapshot[..16],
                    r.disk,
                    r.offset,
                    r.offset + r.length
                );
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
