//! `tessera verify`.

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::check::CheckReport;
use tessera_engine::ops::verify::VerifyRequest;
use tessera_engine::serde_ids::kind_name;
use tessera_engine::ErrorKind;

use tessera_engine::units::parse_sample;

use crate::args::{UsageError, VerifyArgs};
use crate::doc::{print_doc, Nested};
use crate::exit_code_for;
use crate::output::{bytes, Bars};

pub fn run(repo: &RepoLocation, args: &VerifyArgs, json: bool, bars: &Bars) -> Result<i32> {
    let request = VerifyRequest {
        metadata_only: args.metadata_only,
        snapshots: args.snapshots.clone(),
        series: args.series.clone(),
        sample: args
            .sample
            .as_deref()
            .map(parse_sample)
            .transpose()
            .map_err(|e| UsageError(format!("--{e}")))?,
        seed: args.seed,
        skip_verified_within: args.skip_verified_within,
    };
    // Refuse bad combinations before touching the repository.
    request.validate()?;
    let repository = super::open_reader(repo)?;
    let report = tessera_engine::ops::verify::run(&repository, &request, bars)?;
    let problems = (!report.is_clean()).then(|| {
        (
            ErrorKind::Damage,
            format!("{} problems found", report.problems.len()),
        )
    });
    if json {
        print_doc(&Nested { report: &report }, problems);
    } else {
        print_text(
            &report,
            args.metadata_only,
            args.skip_verified_within.is_some(),
        );
    }
    Ok(if report.is_clean() {
        0
    } else {
        exit_code_for(ErrorKind::Damage)
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
            kind_name(d.kind),
            hex::encode(d.digest),
            d.ranges.len()
        );
        for r in &d.ranges {
            println!(
                "  snapshot {} disk {} bytes {}..{}",
                &r.snapshot.to_hex()[..16],
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
    if let Some(e) = &report.verify_record_error {
        eprintln!("warning: this run's verification record was not written (the dashboard will not show it): {e}");
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
