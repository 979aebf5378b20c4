//! `tessera forget`, `prune`, `protect`/`unprotect`, `compact`.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::ops::compact::{apply_compact, plan_compact_with_grace};
use tessera_engine::ops::forget::{apply_forget, plan_forget, set_protected, ForgetPlan};
use tessera_engine::ops::prune::{parse_duration, plan_prune, KeepPolicy};
use tessera_engine::time::format_us;

use crate::args::{parse_fraction, KeepArgs};
use crate::output::{bytes, print_json, Bars};

fn freed_json(plan: &ForgetPlan) -> serde_json::Value {
    json!({ "objects": plan.freed_objects, "stored_bytes": plan.freed_stored_bytes, "raw_bytes": plan.freed_raw_bytes })
}

pub fn forget(repo: &Path, queries: &[String], dry_run: bool, json: bool) -> Result<i32> {
    let repository = super::open_writer(repo)?;
    let ids = queries
        .iter()
        .map(|q| repository.resolve_snapshot(q).map(|(id, _)| id))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = plan_forget(&repository, &ids, false)?;
    if !dry_run {
        apply_forget(&repository, &plan)?;
    }
    if json {
        print_json(&json!({
            "ok": true, "dry_run": dry_run,
            "forgotten": plan.snapshots.iter().map(|(id, _)| id.to_hex()).collect::<Vec<_>>(),
            "freed": freed_json(&plan),
        }));
    } else {
        let verb = if dry_run { "would forget" } else { "forgot" };
        for (id, h) in &plan.snapshots {
            println!(
                "{verb} {} ({} {})",
                &id.to_hex()[..16],
                h.series,
                format_us(h.time_us)
            );
        }
        println!(
            "{} {} in {} objects become unreferenced (reclaimed by `tessera compact`)",
            if dry_run { "would free:" } else { "freed:" },
            bytes(plan.freed_stored_bytes),
            plan.freed_objects
        );
    }
    Ok(0)
}

fn policy(keep: &KeepArgs) -> Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: keep.keep_last,
        hourly: keep.keep_hourly,
        daily: keep.keep_daily,
        weekly: keep.keep_weekly,
        monthly: keep.keep_monthly,
        yearly: keep.keep_yearly,
        within_us: keep
            .keep_within
            .as_deref()
            .map(parse_duration)
            .transpose()?,
    })
}

pub fn prune(
    repo: &Path,
    series: Option<&str>,
    keep: &KeepArgs,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let policy = policy(keep)?;
    let repository = super::open_writer(repo)?;
    let snapshots = repository.index().snapshots()?;
    let decisions = plan_prune(
        &snapshots,
        &repository.index().protected()?,
        &policy,
        series,
    )?;
    let forget_ids: Vec<_> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id)
        .collect();
    let plan = plan_forget(&repository, &forget_ids, false)?;
    if !dry_run {
        apply_forget(&repository, &plan)?;
    }
    if json {
        print_json(
            &json!({ "ok": true, "dry_run": dry_run, "decisions": decisions, "freed": freed_json(&plan) }),
        );
    } else {
        for d in &decisions {
            let fate = if d.keep() {
                format!("keep    ({})", d.reasons.join(", "))
            } else if dry_run {
                "forget (dry run)".into()
            } else {
                "forgotten".into()
            };
            println!(
                "{} {:<20} {}  {fate}",
                &d.id.to_hex()[..16],
                d.series,
                format_us(d.time_us)
            );
        }
        println!(
            "{} of {} snapshots {}; {} in {} objects {}",
            forget_ids.len(),
            decisions.len(),
            if dry_run {
                "would be forgotten"
            } else {
                "forgotten"
            },
            bytes(plan.freed_stored_bytes),
            plan.freed_objects,
            if dry_run {
                "would become reclaimable"
            } else {
                "now reclaimable by `tessera compact`"
            }
        );
    }
    Ok(0)
}

pub fn protect(repo: &Path, query: &str, protected: bool, json: bool) -> Result<i32> {
    let repository = super::open_writer(repo)?;
    let (id, _) = repository.resolve_snapshot(query)?;
    set_protected(&repository, id, protected)?;
    if json {
        print_json(&json!({ "ok": true, "snapshot": id.to_hex(), "protected": protected }));
    } else {
        println!(
            "snapshot {} is {}",
            &id.to_hex()[..16],
            if protected {
                "protected"
            } else {
                "no longer protected"
            }
        );
    }
    Ok(0)
}

pub fn compact(
    repo: &Path,
    max_unused: &str,
    grace: &str,
    dry_run: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let max_unused = parse_fraction(max_unused)?;
    let grace_us = if grace.trim() == "0" {
        0
    } else {
        parse_duration(grace)?
    };
    let repository = super::open_writer(repo)?;
    let plan = plan_compact_with_grace(&repository, max_unused, grace_us)?;
    let report = if dry_run {
        None
    } else {
        Some(apply_compact(&repository, &plan, bars)?)
    };
    if json {
        print_json(
            &json!({ "ok": report.as_ref().is_none_or(|r| r.damaged.is_empty()), "dry_run": dry_run, "plan": plan, "report": report }),
        );
    } else {
        println!(
            "{} of {} packs exceed {:.0}% unused: {} to move, {} to free",
            plan.packs.len(),
            plan.total_packs,
            max_unused * 100.0,
            bytes(plan.bytes_to_move),
            bytes(plan.bytes_to_free)
        );
        if plan.packs_in_grace > 0 {
            println!(
                "{} packs indexed within the last {grace} left alone (--grace)",
                plan.packs_in_grace
            );
        }
        if let Some(r) = &report {
            for d in &r.damaged {
                println!("damaged: {d}");
            }
            println!(
                "rewrote {} packs into {} new ones ({} moved); {} old packs deleted{}",
                r.packs_rewritten,
                r.packs_written,
                bytes(r.bytes_moved),
                r.packs_deleted,
                if r.packs_deleted < r.packs_rewritten {
                    ", the rest once running readers finish"
                } else {
                    ""
                }
            );
        }
    }
    Ok(if report.is_some_and(|r| !r.damaged.is_empty()) {
        4
    } else {
        0
    })
}
