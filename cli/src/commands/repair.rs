//! `tessera repair`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use tessera_engine::ops::repair::{is_repository, RepairReport, RepairSources};
use tessera_engine::Repository;

use crate::args::{RepairArgs, UsageError};
use crate::output::{print_json, Bars};

pub fn run(args: &RepairArgs, json: bool, bars: &Bars) -> Result<i32> {
    if args.from.is_some() || !args.from_source.is_empty() || args.quarantine {
        if args.rebuild_index || args.recount {
            return Err(UsageError(
                "--from/--from-source/--quarantine cannot be combined with --rebuild-index or --recount: run them one after the other".into(),
            )
            .into());
        }
        return repair_from(args, json, bars);
    }

    repair(&args.repo, args.rebuild_index, args.recount, json, bars)
}

/// Parses the `DISK=PATH` values of `--from-source`.
fn parse_sources(values: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for v in values {
        let Some((disk, path)) = v.split_once('=') else {
            return Err(UsageError(format!("--from-source {v:?}: expected DISK=PATH")).into());
        };
        if disk.is_empty() || path.is_empty() {
            return Err(UsageError(format!("--from-source {v:?}: expected DISK=PATH")).into());
        }
        if out.iter().any(|(d, _)| d == disk) {
            return Err(UsageError(format!("--from-source: disk {disk:?} given twice")).into());
        }
        out.push((disk.to_string(), PathBuf::from(path)));
    }
    Ok(out)
}

fn repair_from(args: &RepairArgs, json: bool, bars: &Bars) -> Result<i32> {
    let images = parse_sources(&args.from_source)?;
    if let Some(other) = &args.from {
        if !is_repository(other) {
            return Err(UsageError(format!(
                "--from {}: not a tessera repository (no config file)",
                other.display()
            ))
            .into());
        }
    }
    let repository = super::open_writer(&args.repo)?;
    // Every named disk must be a disk of some snapshot.
    let mut disks = std::collections::BTreeSet::new();
    for (_, header) in repository.index().snapshots()? {
        disks.extend(header.disks.iter().map(|d| d.name.clone()));
    }
    for (disk, _) in &images {
        if !disks.contains(disk) {
            return Err(UsageError(format!(
                "--from-source: no snapshot has a disk named {disk:?} (disks: {})",
                disks.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
    }
    let other = match &args.from {
        Some(p) => {
            if same_dir(p, &args.repo) {
                return Err(UsageError("--from names the repository being repaired".into()).into());
            }
            Some(Repository::open(p)?)
        }
        None => None,
    };
    let sources = RepairSources {
        other: other.as_ref(),
        images,
    };
    let r = tessera_engine::ops::repair::repair(&repository, &sources, bars)?;
    print_report(&r, json);
    Ok(if r.is_clean() { 0 } else { 4 })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn print_report(r: &RepairReport, json: bool) {
    if json {
        let mut doc = json!({
            "ok": r.is_clean(),
            "damaged_found": r.damaged_found,
            "repaired": r.repaired,
            "rehomed": r.rehomed,
            "counts_restored": r.counts_restored,
            "quarantined": r.quarantined,
            "missing_packs": r.missing_packs,
            "packs_written": r.packs_written,
            "unrecoverable": r.unrecoverable,
            "damaged_packs_found": r.damaged_packs_found,
            "damage_marks_updated": r.damage_marks_updated,
            "problems": r.problems,
        });
        if !r.is_clean() {
            doc["error"] = json!(format!(
                "{} objects could not be recovered ({} problems remain)",
                r.unrecoverable.len(),
                r.problems.len()
            ));
        }
        print_json(&doc);
        return;
    }
    for o in &r.repaired {
        println!("repaired {} {} from {}", o.kind, o.digest, o.from);
    }
    for p in &r.damaged_packs_found {
        println!("pack {} had a damaged footer: {}", p.pack, p.reason);
    }
    for p in &r.quarantined {
        println!("quarantined pack {p} (kept in quarantine/ for inspection)");
    }
    for p in &r.missing_packs {
        println!("pack {p} was missing: dropped from the catalog");
    }
    for d in &r.unrecoverable {
        println!(
            "unrecoverable {} {} ({}) is needed by {} ranges:",
            d.kind,
            d.digest,
            d.reason,
            d.ranges.len()
        );
        for x in &d.ranges {
            println!(
                "  snapshot {} disk {} bytes {}..{}",
                x.snapshot.get(..16).unwrap_or(&x.snapshot),
                x.disk,
                x.offset,
                x.offset + x.length
            );
        }
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    println!(
        "{} damaged objects found: {} repaired, {} intact objects re-homed, {} packs quarantined; {}",
        r.damaged_found,
        r.repaired.len(),
        r.rehomed,
        r.quarantined.len(),
        if r.is_clean() {
            "the repository verifies clean".to_string()
        } else {
            format!("{} problems remain", r.problems.len())
        }
    );
}

fn repair(repo: &Path, rebuild_index: bool, recount: bool, json: bool, bars: &Bars) -> Result<i32> {
    if recount && !rebuild_index {
        let repository = super::open_writer(repo)?;
        let fixed = tessera_engine::ops::check::recount(&repository)?;
        if json {
            print_json(&json!({ "ok": true, "counts_fixed": fixed }));
        } else {
            println!("reference counts recomputed: {fixed} fixed");
        }
        return Ok(0);
    }
    if !rebuild_index {
        return Err(UsageError("say what to repair: --from OTHER_REPO and/or --from-source DISK=PATH (damaged objects and packs), --quarantine (damaged packs, no other copy), --rebuild-index or --recount".into()).into());
    }
    let r = tessera_engine::ops::rebuild_index::rebuild_index(
        &tessera_engine::repo::RepoStorage::local(repo),
        bars,
    )?;
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
