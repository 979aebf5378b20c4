//! Draws the macro benchmark's results (`macro-bench --json-out FILE`) as SVG charts for the
//! README: throughput of every tool per operation, and repository growth.
//!
//! `cargo run --release -p tessera-benches --bin bench-plot -- results.json docs/`
//! writes `docs/bench-speed.svg` and `docs/bench-size.svg`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tessera_benches::plot::{bar_chart, Group};

/// Operations shown, by row-id suffix, with their labels.
const OPERATIONS: [(&str, &str); 4] = [
    ("first_backup", "first backup"),
    ("unchanged_backup", "unchanged re-backup"),
    ("delta_backup", "delta backup"),
    ("restore", "restore"),
];

/// Repository sizes from the ratio contexts ("618.9 MiB vs 92.4 MiB" for
/// "<peer> / tessera: repo ..."): one group per measurement, tessera first.
fn size_groups(doc: &Value) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mib = |s: &str| s.trim().trim_end_matches("MiB").trim().parse::<f64>().ok();
    for r in doc["ratios"].as_array().into_iter().flatten() {
        let (Some(label), Some(context)) = (r["label"].as_str(), r["context"].as_str()) else {
            continue;
        };
        let Some((peer, what)) = label.split_once(" / tessera: ") else {
            continue;
        };
        let Some((Some(theirs), Some(ours))) =
            context.split_once(" vs ").map(|(a, b)| (mib(a), mib(b)))
        else {
            continue;
        };
        if !what.starts_with("repo") {
            continue;
        }
        let label = match what.trim_start_matches("repo ") {
            "size after first backup" => "after first backup".to_string(),
            "growth of the delta backup" => "growth by the delta".to_string(),
            other => other.to_string(),
        };
        let i = groups
            .iter()
            .position(|g| g.label == label)
            .unwrap_or_else(|| {
                groups.push(Group {
                    label,
                    bars: vec![("tessera".into(), ours)],
                });
                groups.len() - 1
            });
        groups[i].bars.push((peer.to_string(), theirs));
    }
    groups
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out_dir] = args.as_slice() else {
        bail!("usage: bench-plot RESULTS.json OUT_DIR");
    };
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?,
    )
    .with_context(|| format!("{input} is not JSON"))?;
    let rows = doc["rows"].as_array().context("no \"rows\" array")?;
    let row = |id: &str| rows.iter().find(|r| r["id"] == id);
    let tools = ["tessera", "restic", "borg"];
    let mut speed: Vec<Group> = OPERATIONS
        .iter()
        .map(|(op, label)| Group {
            label: (*label).to_string(),
            bars: tools
                .iter()
                .filter_map(|t| {
                    row(&format!("{t}.{op}"))
                        .and_then(|r| r["mb_per_s"].as_f64())
                        .map(|v| ((*t).to_string(), v))
                })
                .collect(),
        })
        .filter(|g| !g.bars.is_empty())
        .collect();
    let baselines: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r["group"] == "baseline")
        .filter_map(|r| Some((r["op"].as_str()?.to_string(), r["mb_per_s"].as_f64()?)))
        .collect();
    speed.push(Group {
        label: "baselines".into(),
        bars: baselines,
    });
    let sizes = size_groups(&doc);
    let out = PathBuf::from(out_dir);
    std::fs::create_dir_all(&out)?;
    let title = format!(
        "tessera vs restic and borg, {} image",
        doc["header"]["image"]["size"]
            .as_u64()
            .map_or_else(|| "?".into(), |s| format!("{} MiB", s >> 20))
    );
    std::fs::write(
        out.join("bench-speed.svg"),
        bar_chart(&title, "MB/s, higher is better", &speed),
    )?;
    std::fs::write(
        out.join("bench-size.svg"),
        bar_chart("Repository size", "MiB, lower is better", &sizes),
    )?;
    println!(
        "wrote {0}/bench-speed.svg and {0}/bench-size.svg",
        out.display()
    );
    Ok(())
}
