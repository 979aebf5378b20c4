//! `tessera forget`, `prune`, `protect`/`unprotect`, `compact`.

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::compact::compact as run_compact;
use tessera_engine::ops::forget::{forget as run_forget, protect as run_protect};
use tessera_engine::ops::prune::{prune as run_prune, KeepPolicy};
use tessera_engine::time::{format_us, Span};
use tessera_engine::{ErrorKind, SnapshotRef};

use crate::args::parse_fraction;
use crate::doc::{print_doc, print_ok};
use crate::exit_code_for;
use crate::output::{bytes, Bars};

pub fn forget(repo: &RepoLocation, refs: &[SnapshotRef], dry_run: bool, json: bool) -> Result<i32> {
    let r = run_forget(&super::open_writer(repo)?, refs, dry_run)?;
    if json {
        print_ok(&r);
    } else {
        let verb = if dry_run { "would forget" } else { "forgot" };
        for (id, h) in &r.snapshots {
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
            bytes(r.freed.stored_bytes),
            r.freed.objects
        );
    }
    Ok(0)
}

pub fn prune(
    repo: &RepoLocation,
    series: Option<&str>,
    policy: &KeepPolicy,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    policy.validate()?;
    let r = run_prune(&super::open_writer(repo)?, policy, series, dry_run)?;
    if json {
        print_ok(&r);
        return Ok(0);
    }
    for d in &r.decisions {
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
        r.forgotten(),
        r.decisions.len(),
        if dry_run {
            "would be forgotten"
        } else {
            "forgotten"
        },
        bytes(r.freed.stored_bytes),
        r.freed.objects,
        if dry_run {
            "would become reclaimable"
        } else {
            "now reclaimable by `tessera compact`"
        }
    );
    Ok(0)
}

pub fn protect(
    repo: &RepoLocation,
    reference: &SnapshotRef,
    protected: bool,
    json: bool,
) -> Result<i32> {
    let r = run_protect(&super::open_writer(repo)?, reference, protected)?;
    if json {
        print_ok(&r);
    } else {
        println!(
            "snapshot {} is {}",
            &r.snapshot.to_hex()[..16],
            if protected {
                "protected"
            } else {
                "no longer protected"
            }
        );
    }
    Ok(0)
}

pub fn immutable(
    repo: &RepoLocation,
    period: Option<&str>,
    lock_mode: Option<&str>,
    json: bool,
) -> Result<i32> {
    let period = period.map(str::parse).transpose()?;
    let mode = lock_mode.map(super::maintain::parse_lock_mode);
    let r = tessera_engine::ops::immutable::apply(&super::open_writer(repo)?, period, mode)?;
    if json {
        print_ok(&r);
        return Ok(0);
    }
    println!(
        "snapshots stay immutable for {} s ({:.1} days) after they are taken (mode {:?} on S3); {} packs extended now",
        r.period_s,
        r.period_s as f64 / 86400.0,
        r.mode,
        r.packs_extended
    );
    for s in &r.snapshots {
        println!(
            "{:<16} {:<20} {:<24} {} {}",
            &s.id.to_hex()[..16],
            s.series,
            s.time,
            if s.protected {
                "protected until"
            } else {
                "expired"
            },
            s.protected_until
        );
    }
    Ok(0)
}

pub fn compact(
    repo: &RepoLocation,
    max_unused: &str,
    (grace, allow_short_grace): (&str, bool),
    dry_run: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let max_unused = parse_fraction(max_unused)?;
    let grace_us = if grace.trim() == "0" {
        0
    } else {
        grace.parse::<Span>()?.us
    };
    let r = run_compact(
        super::open_writer(repo)?,
        max_unused,
        grace_us,
        allow_short_grace,
        dry_run,
        bars,
    )?;
    let damaged = r.report.as_ref().map_or(0, |r| r.damaged.len());
    if json {
        print_doc(
            &r,
            (!r.is_clean()).then(|| {
                (
                    ErrorKind::Damage,
                    format!("{damaged} packs were left alone because of damaged objects; run `tessera verify`, then `tessera repair`"),
                )
            }),
        );
    } else {
        let plan = &r.plan;
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
                "{} packs indexed within the last {grace} (--grace), or since the oldest backup still running started, left alone",
                plan.packs_in_grace
            );
        }
        if plan.packs_locked > 0 {
            println!(
                "{} packs left alone: immutable until their retention passes (see `tessera immutable`)",
                plan.packs_locked
            );
        }
        if plan.dying_objects > 0 {
            println!(
                "{} unreferenced objects that died within the last {grace} kept (--grace): a writer may still publish a snapshot naming them",
                plan.dying_objects
            );
        }
        if let Some(report) = &r.report {
            for d in &report.damaged {
                println!("damaged: {d}");
            }
            if let Some(why) = &report.deletion_deferred {
                println!("{why}");
            }
            if report.packs_revived > 0 {
                println!(
                    "{} packs left in place: a writer referenced one of their unreferenced objects again while the compaction ran (their live objects moved; the next compaction takes the rest)",
                    report.packs_revived
                );
            }
            println!(
                "rewrote {} packs into {} new ones ({} moved); {} old packs deleted{}",
                report.packs_rewritten,
                report.packs_written,
                bytes(report.bytes_moved),
                report.packs_deleted,
                if report.packs_deleted < report.packs_rewritten {
                    ", the rest once running readers finish"
                } else {
                    ""
                }
            );
        }
    }
    Ok(if r.is_clean() {
        0
    } else {
        exit_code_for(ErrorKind::Damage)
    })
}
