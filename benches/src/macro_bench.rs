//! `macro-bench`: tessera end to end on a generated disk image, next to same-run baselines
//! (SHA-256 with one and two cores, `zstd -3 -T2`, `cp` + fsync) and, with `--peers`,
//! restic and borg doing the same work. See benches/README.md for what each figure means.
//!
//! Order of work: generate the image → baselines → for every tool: init + first backup →
//! for every tool: unchanged re-backup → rewrite ~3 % of the image → for every tool: delta
//! backup → for every tool: restore of the latest backup, checked against the image →
//! tessera's full verify next to `zstd -d | openssl dgst -sha256` (shared with verify-bench).
//! Every measured step's input is read right before it (warm page cache; dropping caches is
//! not possible here), and `sync` runs between steps (untimed) so that one step's
//! write-back does not land in the next one's time.

#[path = "macro_bench/baselines.rs"]
mod baselines;
#[path = "macro_bench/generations.rs"]
mod generations;
#[path = "macro_bench/host.rs"]
mod host;
#[path = "macro_bench/image.rs"]
mod image;
#[path = "macro_bench/phases.rs"]
mod phases;
#[path = "macro_bench/report.rs"]
mod report;
#[path = "macro_bench/s3.rs"]
mod s3;
#[path = "macro_bench/tools.rs"]
mod tools;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use tessera_benches::bin_args::parse_size;
use tessera_benches::datagen::Layout;
use tessera_benches::measure::which;

use host::{cpu_model, git_revision, loadavg, read_through, settle, version_of};
use report::{human, Report};
use tools::Tool;

/// tessera's macro benchmark: backup, re-backup, delta backup and restore of a generated
/// disk image, with same-run baselines and optional peers (restic, borg).
#[derive(Debug, Parser)]
#[command(name = "macro-bench")]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
struct Args {
    /// Image size, binary units (512M, 2G, or bytes).
    #[arg(long, default_value = "2G")]
    size: String,
    /// Seed of the image content and of the delta (default: $TESSERA_BENCH_SEED, else 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Work directory (created if missing; must be empty). Default: a new temporary
    /// directory under /var/tmp.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The tessera binary (default: the release build beside this program, or in
    /// $CARGO_TARGET_DIR/release).
    #[arg(long)]
    tessera: Option<PathBuf>,
    /// Passed to `tessera init --block-size` (default: tessera's default, 64K).
    #[arg(long)]
    block_size: Option<String>,
    /// Passed to `tessera init --compression` (default: tessera's default).
    #[arg(long)]
    compression: Option<String>,
    /// Also run restic and borg (skipped, with an install hint, when not installed).
    #[arg(long)]
    peers: bool,
    /// Also run tessera on an encrypted repository (row `tessera-enc`; issue 16's goal:
    /// backup, restore and verify at 90 % or more of the plain repository's speed).
    #[arg(long)]
    encrypted: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Percent of the image's 64 KiB blocks rewritten for the delta backup.
    #[arg(long, default_value_t = 3.0)]
    delta_percent: f64,
    /// Leave zero regions of the image as holes (a sparse image) instead of writing zeros.
    #[arg(long)]
    sparse: bool,
    /// Run every step this many times and keep the fastest: the baselines, the first backup
    /// (into a fresh repository each time), the unchanged re-backup, the delta backup (after
    /// a new random rewrite each round; the growth shown is the first round's) and the
    /// restore (of the last state).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Skip the baselines (SHA-256, zstd, cp, dd).
    #[arg(long)]
    no_baselines: bool,
    /// Only generate the image and describe it.
    #[arg(long)]
    gen_only: bool,
    /// Keep the work directory (image, repositories) afterwards.
    #[arg(long)]
    keep: bool,
    /// Also back up through delta sources (qcow2 overlay, NBD dirty bitmap, VHD differencing
    /// disk, changed-block list) and print delta time / full time and bytes read. Use with
    /// --sparse for the "sparse multi-GiB image".
    #[arg(long)]
    delta_sources: bool,
    /// After everything else: a sequence of N more generations (each rewrites --delta-percent
    /// of the blocks, makes small random writes and appends 0.5 %) backed up by every tool
    /// into fresh repositories; repository size after all, restore of the first and the last.
    #[arg(long, default_value_t = 0)]
    generations: u32,
    /// Percent of 64 KiB blocks the delta sources change.
    #[arg(long, default_value_t = 1.0)]
    delta_sources_percent: f64,
    /// Also print the retention curves: forget cost with 10/100/1000 snapshots, compaction rate.
    #[arg(long)]
    retention: bool,
    /// Also measure many writers at once (`tessera_benches::fleet`): 4 clients of --size / 8
    /// each backing up together, then beside a compaction; prints the aggregate throughput
    /// over one client's (goal >= 0.9) and the compaction's slowdown (goal <= 20 %).
    #[arg(long)]
    fleet: bool,
    /// Also run tessera with its repository in S3: a SeaweedFS started on loopback (data in
    /// the work directory), next to the local repository (column `tessera-s3`).
    #[arg(long)]
    s3: bool,
    /// The SeaweedFS `weed` binary for --s3 (default: the workspace's .deps/seaweedfs/bin/weed).
    #[arg(long)]
    weed: Option<PathBuf>,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("macro-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let size = parse_size(&args.size)?;
    if size < 1 << 20 {
        bail!("--size must be at least 1M");
    }
    let seed = args
        .seed
        .or_else(|| std::env::var("TESSERA_BENCH_SEED").ok()?.parse().ok())
        .unwrap_or(1);
    let block_size = args
        .block_size
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(64 << 10);

    let mut tempdir = None;
    let work = if let Some(d) = &args.dir {
        fs::create_dir_all(d)?;
        if fs::read_dir(d)?.next().is_some() {
            bail!("--dir {} is not empty", d.display());
        }
        d.clone()
    } else {
        let t = tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir_in("/var/tmp")?;
        let p = t.path().to_path_buf();
        tempdir = Some(t);
        p
    };
    let work = fs::canonicalize(&work)?;
    let result = bench(&args, size, seed, block_size, &work);
    if args.keep {
        if let Some(t) = tempdir {
            let _ = t.keep();
        }
        eprintln!("kept {}", work.display());
    } else if let Some(t) = tempdir {
        drop(t);
    } else {
        for e in fs::read_dir(&work)?.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
    result
}

/// `tessera init` arguments from `--block-size` and `--compression`.
fn tessera_init_args(args: &Args) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(bs) = &args.block_size {
        out.extend(["--block-size".to_owned(), bs.clone()]);
    }
    if let Some(c) = &args.compression {
        out.extend(["--compression".to_owned(), c.clone()]);
    }
    out
}

#[allow(
    clippy::too_many_lines,
    reason = "the benchmark's script, step by step"
)]
fn bench(args: &Args, size: u64, seed: u64, block_size: u64, work: &Path) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let tessera_bin = if args.gen_only {
        None
    } else {
        Some(tools::find_tessera(args.tessera.as_deref())?)
    };

    // 1. The image.
    eprintln!(
        "generating a {} image (seed {seed}) in {} ...",
        human(size),
        work.display()
    );
    let image_path = work.join("image.raw");
    let layout = Layout::new(size, seed);
    let t = Instant::now();
    layout.write_to(&File::create(&image_path)?, cores, args.sparse)?;
    let gen_s = t.elapsed().as_secs_f64();
    let facts = image::describe(&layout, block_size);
    let summary = image::summary(&layout, &facts, block_size);
    eprintln!("  {gen_s:.1} s: {summary}");
    let read_s = read_through(&image_path)?;
    eprintln!(
        "  page-cache read: {read_s:.2} s ({:.0} MB/s)",
        size as f64 / 1e6 / read_s
    );
    let Some(tessera_bin) = tessera_bin else {
        return Ok(());
    };

    let load_start = loadavg();
    let mut header = json!({
        "image": facts.json,
        "machine": {
            "cpu": cpu_model(), "cores": cores,
            "work_dir": work.display().to_string(),
            "loadavg_start": load_start,
        },
        "versions": {
            "tessera": version_of(&tessera_bin, &["--version"]),
            "tessera_binary": tessera_bin.display().to_string(),
            "workspace_git": git_revision(),
            "openssl": version_of(Path::new("openssl"), &["version"]),
            "zstd": version_of(Path::new("zstd"), &["--version"]),
        },
        "sparse_image": args.sparse,
        "page_cache": "warm: every input is read right before its measurement",
        "repeat": args.repeat,
    });
    let mut report = Report::default();

    // 2. Baselines.
    settle();
    if !args.no_baselines {
        baselines::run_all(&mut report, work, &image_path, size, args.repeat)?;
    }

    // 3./4. The tools.
    let mut tools = vec![Tool::new(
        tools::Kind::Tessera,
        tessera_bin.clone(),
        work,
        tessera_init_args(args),
    )];
    if args.encrypted {
        tools.push(Tool::tessera_encrypted(
            tessera_bin.clone(),
            work,
            tessera_init_args(args),
        ));
    }
    let mut s3_server = None;
    if args.s3 {
        let weed = s3::find_weed(args.weed.as_deref())?;
        eprintln!("starting SeaweedFS ({}) ...", weed.display());
        let server = s3::Server::start(&weed, &work.join("seaweedfs"), &tessera_bin)?;
        header["versions"]["seaweedfs"] = json!(version_of(&weed, &["version"]));
        header["s3_endpoint"] = json!(server.endpoint);
        tools.push(Tool::on_s3(
            tessera_bin.clone(),
            work,
            tessera_init_args(args),
            tools::S3Access {
                env: server.env(),
                data_dir: server.dir.clone(),
            },
        ));
        s3_server = Some(server);
    }
    if args.peers {
        for (kind, prog, flag) in [
            (tools::Kind::Restic, "restic", "version"),
            (tools::Kind::Borg, "borg", "--version"),
        ] {
            if let Some(p) = which(prog) {
                header["versions"][prog] = json!(version_of(&p, &[flag]));
                tools.push(Tool::new(kind, p, work, Vec::new()));
            } else {
                eprintln!(
                    "{prog} is not installed: skipped (install with `apt-get install -y restic borgbackup`)"
                );
            }
        }
    }
    let delta = phases::run_tools(
        &mut report,
        &mut tools,
        work,
        &image_path,
        (size, seed, args.delta_percent, args.repeat),
    )?;
    header["delta"] = json!({
        "percent": args.delta_percent, "writes": delta.writes, "bytes": delta.bytes,
        "blocks_64k_hit": delta.blocks_hit, "blocks_64k": delta.blocks,
    });

    // 5. Full verify of tessera's repository (every object read back), next to
    //    `zstd -d | openssl dgst -sha256` over the image.
    if let Some(tool) = tools.iter().find(|t| t.name() == "tessera") {
        phases::verify(&mut report, tool, work, &image_path, args.no_baselines)?;
    }
    if let Some(tool) = tools.iter().find(|t| t.kind == tools::Kind::TesseraS3) {
        phases::verify_s3(&mut report, tool, &image_path)?;
    }
    // The encrypted repository: verify alone (the baseline is the same as above).
    if let Some(tool) = tools.iter().find(|t| t.name() == "tessera-enc") {
        phases::verify(&mut report, tool, work, &image_path, true)?;
    }

    // 6. Delta sources against full reads of the same image.
    let delta_rows = match (&tessera_bin, args.delta_sources) {
        (bin, true) => {
            eprintln!(
                "delta sources ({} % of blocks changed) ...",
                args.delta_sources_percent
            );
            let dir = work.join("delta-sources");
            fs::create_dir_all(&dir)?;
            let rows = tessera_benches::delta_sources::run_all(
                bin,
                &image_path,
                &dir,
                args.delta_sources_percent,
                seed,
            )?;
            header["delta_sources"] = json!(rows
                .iter()
                .map(tessera_benches::delta_sources::DeltaRow::to_json)
                .collect::<Vec<_>>());
            for r in &rows {
                report.ratios.push(report::Ratio {
                    label: format!("tessera delta / full backup time, {}", r.source),
                    value: r.delta.wall_s / r.full.wall_s.max(1e-9),
                    context: format!(
                        "read {} of {} (full read {})",
                        human(r.delta_read),
                        human(size),
                        human(r.full_read)
                    ),
                });
            }
            Some(rows)
        }
        (_, false) => None,
    };

    // 7. A sequence of generations into fresh repositories (the image changes and grows).
    if args.generations > 0 {
        eprintln!("generations ({} after the first):", args.generations);
        header["generations"] = generations::run(
            &mut report,
            &mut tools,
            work,
            &image_path,
            (args.generations, seed, args.delta_percent),
        )?;
        for peer in ["restic", "borg"] {
            report.rate_ratio(
                &format!("tessera / {peer}: generations, total time"),
                "tessera.generations",
                &format!("{peer}.generations"),
                "> 1: tessera faster",
            );
            let repo = |id: &str| report.get(id).and_then(|r| r.extra["repo_bytes"].as_u64());
            if let (Some(ours), Some(theirs)) = (
                repo("tessera.generations"),
                repo(&format!("{peer}.generations")),
            ) {
                report.ratios.push(report::Ratio {
                    label: format!("{peer} / tessera: repo size after all generations"),
                    value: theirs as f64 / ours.max(1) as f64,
                    context: format!("{} vs {}", human(theirs), human(ours)),
                });
            }
        }
    }

    // Every measurement is done: stop the server.
    drop(s3_server);

    // 8. Ratios, table, JSON.
    phases::ratios(&mut report);
    let load_end = loadavg();
    header["machine"]["loadavg_end"] = json!(load_end);
    println!(
        "image: {summary}; zeros {}",
        if args.sparse {
            "left as holes (sparse)"
        } else {
            "written (dense file)"
        }
    );
    println!(
        "delta: {} x 64 KiB random writes at 4 KiB-aligned offsets ({}), {} of {} 64 KiB blocks hit",
        delta.writes,
        human(delta.bytes),
        delta.blocks_hit,
        delta.blocks
    );
    println!(
        "machine: {}, {cores} cores; load average {load_start} at the start, {load_end} at the end",
        cpu_model()
    );
    println!(
        "tessera: {} (workspace {}); page cache warm; MB/s = image bytes / 1e6 / seconds",
        header["versions"]["tessera"].as_str().unwrap_or("?"),
        header["versions"]["workspace_git"].as_str().unwrap_or("?")
    );
    report.print();
    if let Some(rows) = &delta_rows {
        println!();
        print!("{}", tessera_benches::delta_sources::table(rows));
    }
    if let Some(path) = &args.json_out {
        let doc = report.to_json(&header);
        fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.retention {
        println!();
        tessera_benches::retention::run_and_print(&[10, 100, 1000], 16, 512);
    }
    if args.fleet {
        println!();
        let dir = work.join("fleet");
        fs::create_dir_all(&dir)?;
        let figures =
            tessera_benches::fleet::measure(&tessera_bin, &dir, 4, (size / 8).max(1 << 20), seed)?;
        tessera_benches::fleet::print(&figures);
    }
    Ok(())
}
