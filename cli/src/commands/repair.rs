//! `tessera repair`.

use anyhow::Result;
use tessera_engine::location::LocationOptions;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::rebuild_index::rebuild_index;
use tessera_engine::ops::repair::request::RepairRequest;
use tessera_engine::ops::repair::RepairReport;
use tessera_engine::serde_ids::kind_name;
use tessera_engine::ErrorKind;

use crate::args::{RepairArgs, UsageError};
use crate::doc::{print_doc, print_ok};
use crate::exit_code_for;
use crate::output::Bars;

pub fn run(
    repo: &RepoLocation,
    args: &RepairArgs,
    options: &LocationOptions,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    if args.from.is_some() || !args.from_source.is_empty() || args.quarantine {
        if args.rebuild_index || args.recount {
            return Err(UsageError(
                "--from/--from-source/--quarantine cannot be combined with --rebuild-index or --recount: run them one after the other".into(),
            )
            .into());
        }
        return repair_from(repo, args, options, json, bars);
    }
    if args.recount && !args.rebuild_index {
        return recount(repo, json);
    }
    if !args.rebuild_index {
        return Err(UsageError("say what to repair: --from OTHER_REPO and/or --from-source DISK=PATH (damaged objects and packs), --quarantine (damaged packs, no other copy), --rebuild-index or --recount".into()).into());
    }
    rebuild(repo, json, bars)
}

fn repair_from(
    repo: &RepoLocation,
    args: &RepairArgs,
    options: &LocationOptions,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let request = RepairRequest {
        from: args
            .from
            .as_deref()
            .map(|from| RepoLocation::parse(from, options.clone()))
            .transpose()?,
        images: args.from_source.clone(),
        quarantine: args.quarantine,
    };
    request.validate(repo)?;
    let r = request.run(&super::open_writer(repo)?, bars)?;
    print_report(&r, json);
    Ok(clean_or_damage(r.is_clean()))
}

/// 0 when the repository came out clean, the exit code of damage otherwise.
fn clean_or_damage(clean: bool) -> i32 {
    if clean {
        0
    } else {
        exit_code_for(ErrorKind::Damage)
    }
}

fn print_report(r: &RepairReport, json: bool) {
    if json {
        let problems = (!r.is_clean()).then(|| {
            (
                ErrorKind::Damage,
                format!(
                    "{} objects could not be recovered ({} problems remain)",
                    r.unrecoverable.len(),
                    r.problems.len()
                ),
            )
        });
        print_doc(r, problems);
        return;
    }
    for o in &r.repaired {
        println!(
            "repaired {} {} from {}",
            kind_name(o.kind),
            hex::encode(o.digest),
            o.from
        );
    }
    for p in &r.damaged_packs_found {
        println!("pack {} had a damaged footer: {}", p.pack, p.reason);
    }
    for p in &r.quarantined {
        println!("quarantined pack {p} (kept in quarantine/ for inspection)");
    }
    for id in &r.snapshots_completed {
        println!(
            "completed snapshot file {id} from the other repository and catalogued it (it named objects this repository lacked)"
        );
    }
    for id in &r.snapshots_quarantined {
        println!(
            "quarantined snapshot file {id}: it named objects this repository lacks (kept in quarantine/; the backup is lost to this repository)"
        );
    }
    for (id, why) in &r.snapshots_not_quarantined {
        println!("could not quarantine snapshot file {id}: {why}");
    }
    for p in &r.missing_packs {
        println!("pack {p} was missing: dropped from the catalog");
    }
    for d in &r.unrecoverable {
        println!(
            "unrecoverable {} {} ({}) is needed by {} ranges:",
            kind_name(d.kind),
            hex::encode(d.digest),
            d.reason,
            d.ranges.len()
        );
        for x in &d.ranges {
            println!(
                "  snapshot {} disk {} bytes {}..{}",
                &x.snapshot.to_hex()[..16],
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

fn recount(repo: &RepoLocation, json: bool) -> Result<i32> {
    let r = tessera_engine::ops::check::recount(&super::open_writer(repo)?)?;
    if json {
        print_ok(&r);
    } else {
        println!("reference counts recomputed: {} fixed", r.counts_fixed);
    }
    Ok(0)
}

fn rebuild(repo: &RepoLocation, json: bool, bars: &Bars) -> Result<i32> {
    let r = rebuild_index(&repo.storage()?, crate::keys::global(), bars)?;
    if json {
        let problems = (!r.is_clean()).then(|| {
            (
                ErrorKind::Damage,
                format!(
                    "{} packs, {} snapshot files and {} objects could not be used",
                    r.pack_problems.len(),
                    r.bad_snapshots.len(),
                    r.missing.len()
                ),
            )
        });
        print_doc(&r, problems);
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
    Ok(clean_or_damage(r.is_clean()))
}
