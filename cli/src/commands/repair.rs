//! `tessera repair`.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::Repository;

use crate::args::{RepairArgs, UsageError};
use crate::output::{print_json, Bars};

pub fn run(args: &RepairArgs, json: bool, bars: &Bars) -> Result<i32> {
    if args.from.is_some() || !args.from_source.is_empty() {
        return Err(UsageError("--from and --from-source are not implemented yet".into()).into());
    }
    repair(&args.repo, args.rebuild_index, args.recount, json, bars)
}

fn repair(repo: &Path, rebuild_index: bool, recount: bool, json: bool, bars: &Bars) -> Result<i32> {
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
