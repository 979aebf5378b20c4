//! `tessera verify`.

use anyhow::Result;
use serde_json::json;
use tessera_engine::ops::check::{CheckReport, SampleSize, VerifyOptions};
use tessera_engine::Repository;

use crate::args::{parse_fraction, parse_size, UsageError, VerifyArgs};
use crate::output::{bytes, print_json, Bars};

/// `--sample`: a share (`5%`, `0.05`) or an amount of stored data (`10GiB`).
fn parse_sample(s: &str) -> Result<SampleSize, UsageError> {
    let t = s.trim();
    let looks_like_share = t.ends_with('%') || (t.contains('.') && t.parse::<f64>().is_ok());
    if looks_like_share {
        let f = parse_fraction(t).map_err(|e| UsageError(format!("--sample: {e}")))?;
        if f <= 0.0 {
            return Err(UsageError(format!(
                "--sample {s:?} would read nothing; give a share above 0%"
            )));
        }
        return Ok(SampleSize::Share(f));
    }
    match parse_size(t) {
        Ok(0) => Err(UsageError(format!("--sample {s:?} would read nothing; give a size above 0"))),
        Ok(n) => Ok(SampleSize::Bytes(n)),
        Err(_) => Err(UsageError(format!(
            "--sample {s:?} is neither a share of the objects (e.g. 5%) nor an amount of stored data (e.g. 10GiB)"
        ))),
    }
}

pub fn run(args: &VerifyArgs, json: bool, bars: &Bars) -> Result<i32> {
    // Parse everything before touching the repository.
    let sample = args.sample.as_deref().map(parse_sample).transpose()?;
    if args.seed.is_some() && sample.is_none() {
        return Err(UsageError("--seed only applies to --sample".into()).into());
    }
    let skip_within = args
        .skip_verified_within
        .as_deref()
        .map(tessera_engine::ops::prune::parse_duration)
        .transpose()?;
    if args.metadata_only
        && (sample.is_some()
            || skip_within.is_some()
            || !args.snapshots.is_empty()
            || args.series.is_some())
    {
        return Err(UsageError(
            "--metadata-only reads no objects: it cannot be combined with --snapshot, --series, --sample or --skip-verified-within".into(),
        )
        .into());
    }
    let repository = Repository::open(&args.repo)?;
    let scope = resolve_scope(&repository, args)?;
    let opts = VerifyOptions {
        read_data: !args.metadata_only,
        scope,
        sample: sample.map(|s| (s, args.seed.unwrap_or_else(rand_seed))),
        skip_verified_within_us: skip_within,
        use_ledger: true,
    };
    let report = tessera_engine::ops::check::verify(&repository, &opts, bars)?;
    if json {
        let mut doc = json!({ "ok": report.is_clean(), "report": report });
        if !report.is_clean() {
            doc["error"] = json!(format!("{} problems found", report.problems.len()));
        }
        print_json(&doc);
    } else {
        print_text(&report, args.metadata_only, skip_within.is_some());
    }
    Ok(if report.is_clean() { 0 } else { 4 })
}

/// The snapshots named by `--snapshot` and `--series` (`None` = everything).
fn resolve_scope(
    repository: &Repository,
    args: &VerifyArgs,
) -> Result<Option<Vec<tessera_format::SnapshotId>>> {
    Ok(if args.snapshots.is_empty() && args.series.is_none() {
        None
    } else {
        let mut ids = Vec::new();
        for q in &args.snapshots {
            let (id, _) = repository.resolve_snapshot(q)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if let Some(series) = &args.series {
            let members: Vec<_> = repository
                .index()
                .snapshots()?
                .into_iter()
                .filter(|(_, h)| &h.series == series)
                .map(|(id, _)| id)
                .collect();
            if members.is_empty() {
                return Err(UsageError(format!(
                    "series {series:?} has no snapshots; see `tessera list REPO`"
                ))
                .into());
            }
            for id in members {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Some(ids)
    })
}

fn print_text(report: &CheckReport, metadata_only: bool, skipping: bool) {
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
    if !metadata_only {
        let scope = match &report.scope.snapshots {
            None => "every live object".to_string(),
            Some(ids) => format!("objects of {} snapshots", ids.len()),
        };
        println!(
            "scope: {scope}: {} objects ({})",
            report.scope.objects,
            bytes(report.scope.bytes)
        );
        if report.objects_skipped_recently_verified > 0 || skipping {
            println!(
                "skipped as recently verified: {} objects ({})",
                report.objects_skipped_recently_verified,
                bytes(report.bytes_skipped_recently_verified)
            );
        }
        if let Some(s) = &report.sample {
            let size = match (s.share, s.bytes) {
                (Some(f), _) => format!("{}%", f * 100.0),
                (_, Some(b)) => bytes(b),
                _ => String::new(),
            };
            println!(
                "sample: {size} of {} candidates, {} chosen, seed {} (repeat with --seed {})",
                s.candidates, s.objects_chosen, s.seed, s.seed
            );
        }
    }
    for p in &report.damaged_packs {
        println!(
            "damaged pack {} (its records may be intact; `tessera repair` rewrites it): {}",
            p.pack, p.reason
        );
    }
    if report.ledger_pruned > 0 {
        println!(
            "ledger: removed {} entries of objects no longer in the index",
            report.ledger_pruned
        );
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

fn rand_seed() -> u64 {
    // Seconds and nanoseconds of now mixed with the pid: no need for cryptographic quality.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let x = now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finaliser, so close starting times give unrelated seeds.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
