//! The tools' runs, step by step and interleaved (every tool does step N before any does
//! step N+1, so all see the same image), and the ratios computed from them.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use crate::host::{settle, warm};
use crate::image::{apply_delta, file_digest, Delta};
use crate::report::{human, Ratio, Report, Row};
use crate::tools::{Step, Tool};
use tessera_benches::verify_measure;

fn tessera_note(info: &Value) -> String {
    let d = &info["disks"][0];
    if d.is_null() {
        return String::new();
    }
    let requests = &info["storage_requests"];
    let requests = if requests.is_object() {
        let n = |k: &str| requests[k].as_u64().unwrap_or(0);
        format!(
            "{} requests ({} get, {} list, {} head, {} put, {} post, {} delete); ",
            ["get", "list", "head", "put", "post", "delete"]
                .iter()
                .map(|k| n(k))
                .sum::<u64>(),
            n("get"),
            n("list"),
            n("head"),
            n("put"),
            n("post"),
            n("delete")
        )
    } else {
        String::new()
    };
    format!(
        "engine {:.2} s; new {} stored as {}; {} packs; {requests}",
        info["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        human(d["new_raw_bytes"].as_u64().unwrap_or(0)),
        human(d["new_stored_bytes"].as_u64().unwrap_or(0)),
        info["packs_written"].as_u64().unwrap_or(0)
    )
}

/// The repository's size now (with tessera's breakdown), and a step's growth.
fn size_note(tool: &Tool, growth: Option<u64>) -> String {
    let mut s = format!("repo {}", human(tool.repo_size()));
    if let Some(g) = growth {
        let _ = write!(s, ", step grew it by {}", human(g));
    }
    if let Some((packs, index, snaps)) = tool.breakdown() {
        let _ = write!(
            s,
            " (packs {}, index {}, snapshots {})",
            human(packs),
            human(index),
            human(snaps)
        );
    }
    s
}

/// A backup's row: `before` is the repository size before it (none for a first backup),
/// `after` the size after it.
#[allow(clippy::too_many_arguments, reason = "one row's facts")]
fn record(
    report: &mut Report,
    tool: &Tool,
    (id, op): (&str, &str),
    step: Step,
    size: u64,
    before: Option<u64>,
    after: u64,
    runs: u32,
) {
    let name = tool.name();
    let mut note = size_note(tool, before.map(|b| after.saturating_sub(b)));
    if tool.is_tessera() {
        note = tessera_note(&step.info) + &note;
    }
    if runs > 1 {
        note = format!("best of {runs}; {note}");
    }
    let mut row = Row::new(&format!("{name}.{id}"), name, op, step.m, size, note);
    row.extra = json!({
        "repo_bytes": after,
        "growth": before.map(|b| after.saturating_sub(b)),
        "runs": runs,
        "tool_output": step.info,
    });
    report.push(row);
}

/// The first backup (each run into a fresh repository) or the unchanged re-backup of every
/// tool, the best of `repeat` runs, recorded as `<tool>.<id>`.
fn backups(
    report: &mut Report,
    tools: &mut [Tool],
    sizes: &mut [u64],
    image: &Path,
    (size, repeat): (u64, u32),
    (id, op): (&str, &str),
) -> Result<()> {
    let first = id == "first_backup";
    let repeat = repeat.max(1);
    for (i, tool) in tools.iter_mut().enumerate() {
        let name = tool.name();
        let before = (!first).then_some(sizes[i]);
        let mut best: Option<(Step, u64)> = None;
        for rep in 0..repeat {
            if first {
                tool.reset()?;
                let step = tool.init()?;
                if rep == 0 {
                    let init = format!("{name}.init");
                    let row = Row::new(&init, name, "init", step.m, 0, String::new());
                    report.push(row);
                }
                settle();
            }
            warm(image)?;
            let step = tool.backup(image)?;
            // The repository after the first run: later unchanged runs add only snapshots.
            let after = best.as_ref().map_or_else(|| tool.repo_size(), |(_, a)| *a);
            settle();
            if best
                .as_ref()
                .is_none_or(|(b, _)| step.m.wall_s < b.m.wall_s)
            {
                best = Some((step, after));
            }
        }
        if let Some((step, after)) = best {
            record(report, tool, (id, op), step, size, before, after, repeat);
        }
        sizes[i] = tool.repo_size();
    }
    Ok(())
}

/// `repeat` rounds of: rewrite `percent` % of the image (a new seed each round), then a
/// delta backup by every tool. Each tool's row has its fastest round, and the repository
/// growth of the first round.
fn deltas(
    report: &mut Report,
    tools: &mut [Tool],
    sizes: &mut [u64],
    image: &Path,
    (size, seed, percent, repeat): (u64, u64, f64, u32),
) -> Result<Delta> {
    let repeat = repeat.max(1);
    let op = format!("delta backup ({percent} % rewritten)");
    let mut best: Vec<Option<(Step, u64, u64)>> = tools.iter().map(|_| None).collect();
    let mut first_delta = None;
    for round in 0..repeat {
        let round_seed = seed.wrapping_add(u64::from(round).wrapping_mul(0x9E37_79B9));
        let delta = apply_delta(image, size, round_seed, percent)?;
        eprintln!(
            "delta {}: {} random 64 KiB writes at 4 KiB-aligned offsets ({}); {} of {} 64 KiB blocks ({:.1} %) hit",
            round + 1,
            delta.writes,
            human(delta.bytes),
            delta.blocks_hit,
            delta.blocks,
            100.0 * delta.blocks_hit as f64 / delta.blocks as f64
        );
        settle();
        for (i, tool) in tools.iter_mut().enumerate() {
            warm(image)?;
            let step = tool.backup(image)?;
            let after = tool.repo_size();
            let (before, kept_after) = match &best[i] {
                Some((_, b, a)) => (*b, *a),
                None => (sizes[i], after),
            };
            sizes[i] = after;
            settle();
            if best[i]
                .as_ref()
                .is_none_or(|(b, _, _)| step.m.wall_s < b.m.wall_s)
            {
                best[i] = Some((step, before, kept_after));
            }
        }
        first_delta.get_or_insert(delta);
    }
    for (tool, b) in tools.iter().zip(best) {
        if let Some((step, before, after)) = b {
            let id = ("delta_backup", op.as_str());
            record(report, tool, id, step, size, Some(before), after, repeat);
        }
    }
    first_delta.ok_or_else(|| anyhow::anyhow!("no delta round"))
}

/// First backup, unchanged re-backup, delta backups and restore for every tool. Returns
/// what the first delta did.
pub fn run_tools(
    report: &mut Report,
    tools: &mut [Tool],
    work: &Path,
    image: &Path,
    (size, seed, delta_percent, repeat): (u64, u64, f64, u32),
) -> Result<Delta> {
    let mut sizes = vec![0u64; tools.len()];
    let sr = (size, repeat);
    eprintln!("first backups:");
    backups(
        report,
        tools,
        &mut sizes,
        image,
        sr,
        ("first_backup", "first backup"),
    )?;
    eprintln!("unchanged re-backups:");
    let op = ("unchanged_backup", "unchanged re-backup");
    backups(report, tools, &mut sizes, image, sr, op)?;
    eprintln!("delta backups:");
    let delta = deltas(
        report,
        tools,
        &mut sizes,
        image,
        (size, seed, delta_percent, repeat),
    )?;

    eprintln!("restores (checked against the image afterwards, untimed):");
    let expected = file_digest(image)?;
    for tool in tools.iter_mut() {
        let name = tool.name();
        let out_dir = work.join(format!("restore-{name}"));
        let mut best: Option<(Step, bool, u64)> = None;
        for _ in 0..repeat.max(1) {
            warm(&tool.repo)?;
            let (step, restored) = tool.restore(image, &out_dir)?;
            let ok = file_digest(&restored)? == expected;
            let allocated = fs::metadata(&restored).map_or(0, |m| m.blocks() * 512);
            fs::remove_dir_all(&out_dir)?;
            settle();
            if !ok {
                eprintln!("error: {name} restored different content");
            }
            if best
                .as_ref()
                .is_none_or(|(b, _, _)| step.m.wall_s < b.m.wall_s)
            {
                best = Some((step, ok, allocated));
            }
        }
        let Some((step, ok, allocated)) = best else {
            continue;
        };
        let mut note = format!(
            "{}; {} allocated",
            if ok {
                "content matches"
            } else {
                "CONTENT DIFFERS"
            },
            human(allocated)
        );
        if repeat > 1 {
            note = format!("best of {repeat}; {note}");
        }
        let mut row = Row::new(
            &format!("{name}.restore"),
            name,
            "restore latest + fsync",
            step.m,
            size,
            note,
        );
        row.extra = json!({
            "matches": ok, "allocated_bytes": allocated, "runs": repeat, "tool_output": step.info,
        });
        report.push(row);
    }
    Ok(delta)
}

/// tessera's full verify of its repository (after the restores: it holds the first, the
/// unchanged and the delta backup) and its baseline, `zstd -d | openssl dgst -sha256` over
/// the image (skipped with `--no-baselines`). Both rates use the image size.
pub fn verify(
    report: &mut Report,
    tool: &Tool,
    work: &Path,
    image: &Path,
    no_baselines: bool,
) -> Result<()> {
    eprintln!("full verify:");
    let size = fs::metadata(image)?.len();
    if no_baselines {
        let m = verify_measure::time_verify(&tool.bin, &tool.repo)?;
        report.push(Row::new(
            &format!("{}.verify", tool.name()),
            tool.name(),
            "verify (every object)",
            m,
            size,
            "no baseline run".into(),
        ));
        return Ok(());
    }
    let fig = verify_measure::measure(&tool.bin, &tool.repo, image, work)?;
    report.push(Row::new(
        "baseline.zstd_d_sha256",
        "baseline",
        "zstd -d | openssl dgst -sha256",
        fig.baseline.clone(),
        size,
        "the image, zstd -3; decompress + hash on 2 processes".into(),
    ));
    let mut row = Row::new(
        "tessera.verify",
        "tessera",
        "verify (every object)",
        fig.verify.clone(),
        size,
        format!("{:.2}x the baseline (goal >= 0.80)", fig.ratio()),
    );
    row.extra = json!({ "verify_mb_s": fig.verify_mb_s(), "baseline_mb_s": fig.baseline_mb_s(), "ratio": fig.ratio() });
    report.push(row);
    Ok(())
}

/// `tessera verify` of the S3 repository (every object read back from the bucket).
pub fn verify_s3(report: &mut Report, tool: &Tool, image: &Path) -> Result<()> {
    eprintln!("full verify (S3):");
    let size = fs::metadata(image)?.len();
    let m = tool.verify()?;
    report.push(Row::new(
        &format!("{}.verify", tool.name()),
        tool.name(),
        "verify (every object)",
        m,
        size,
        "every object read from the bucket".into(),
    ));
    Ok(())
}

/// tessera on S3 against tessera on the local disk, same run; and the requests of the S3
/// delta backup per MiB of new data.
fn s3_ratios(report: &mut Report) {
    for (op, what) in [
        ("first_backup", "first backup"),
        ("unchanged_backup", "unchanged re-backup"),
        ("delta_backup", "delta backup"),
        ("restore", "restore"),
        ("verify", "verify"),
    ] {
        let goal = if matches!(op, "first_backup" | "restore") {
            "goal >= 0.60"
        } else {
            "(no goal)"
        };
        report.rate_ratio(
            &format!("tessera-s3 / tessera local: {what} speed"),
            &format!("tessera-s3.{op}"),
            &format!("tessera.{op}"),
            goal,
        );
    }
    let delta = report
        .get("tessera-s3.delta_backup")
        .map(|r| r.extra["tool_output"].clone());
    if let Some(info) = delta {
        let requests: u64 = ["get", "list", "head", "put", "post", "delete"]
            .iter()
            .map(|k| info["storage_requests"][k].as_u64().unwrap_or(0))
            .sum();
        let stored = info["disks"][0]["new_stored_bytes"].as_u64().unwrap_or(0);
        report.ratios.push(Ratio {
            label: "tessera-s3 delta backup: requests per MiB stored".into(),
            value: requests as f64 / (stored as f64 / f64::from(1 << 20)).max(1e-9),
            context: format!(
                "{requests} requests for {} of new data (listings and opening included)",
                human(stored)
            ),
        });
    }
}

/// The ratios: tessera against the baselines and the goals, and the peers against tessera.
pub fn ratios(report: &mut Report) {
    s3_ratios(report);
    report.rate_ratio(
        "tessera verify / zstd -d | openssl dgst -sha256",
        "tessera.verify",
        "baseline.zstd_d_sha256",
        "goal >= 0.80",
    );
    report.rate_ratio(
        "tessera first backup / zstd -3 -T2",
        "tessera.first_backup",
        "baseline.zstd3_t2",
        "goal >= 0.70",
    );
    report.rate_ratio(
        "tessera unchanged re-backup / SHA-256 on 2 cores",
        "tessera.unchanged_backup",
        "baseline.sha256_2core",
        "goal >= 0.80",
    );
    report.rate_ratio(
        "tessera delta backup / SHA-256 on 2 cores",
        "tessera.delta_backup",
        "baseline.sha256_2core",
        "(no goal; the delta path)",
    );
    report.rate_ratio(
        "tessera restore / cp + fsync",
        "tessera.restore",
        "baseline.cp_sync",
        "goal: restore >= 1 GB/s or the copy speed",
    );
    report.rate_ratio(
        "tessera restore / dd O_DIRECT copy",
        "tessera.restore",
        "baseline.dd_direct",
        "goal: restore >= 1 GB/s or the copy speed",
    );
    if let Some(r) = report.get("tessera.restore") {
        let value = r.mb_s() / 1000.0;
        report.ratios.push(Ratio {
            label: "tessera restore / 1 GB/s".into(),
            value,
            context: "goal: restore >= 1 GB/s or the copy speed".into(),
        });
    }
    for peer in ["restic", "borg"] {
        for (op, what) in [
            ("first_backup", "first backup"),
            ("unchanged_backup", "unchanged re-backup"),
            ("delta_backup", "delta backup"),
            ("restore", "restore"),
        ] {
            report.rate_ratio(
                &format!("tessera / {peer}: {what} speed"),
                &format!("tessera.{op}"),
                &format!("{peer}.{op}"),
                "> 1: tessera faster",
            );
        }
        for (id, key, what) in [
            ("first_backup", "repo_bytes", "repo size after first backup"),
            ("delta_backup", "growth", "repo growth of the delta backup"),
        ] {
            let get = |tool: &str| {
                report
                    .get(&format!("{tool}.{id}"))
                    .and_then(|r| r.extra[key].as_u64())
            };
            if let (Some(p), Some(t)) = (get(peer), get("tessera")) {
                report.ratios.push(Ratio {
                    label: format!("{peer} / tessera: {what}"),
                    value: p as f64 / t.max(1) as f64,
                    context: format!("{} vs {}", human(p), human(t)),
                });
            }
        }
    }
}
