//! `compress-floor`: how many bytes the *data* of a first full backup needs at other block
//! sizes, other zstd levels, or with a trained zstd dictionary. This is the evidence behind
//! SPEC.md §16a: whether any of these would bring tessera's first full (64 KiB blocks, each
//! compressed on its own) down to the size of restic's and borg's (1–2 MiB chunks).
//!
//! The image (a file, or the macro benchmark's generated image built in memory) is cut into
//! blocks; all-zero blocks and repeated blocks are dropped, as tessera and both peers do; every
//! remaining block is compressed on its own, by the engine's encoder
//! (`store::encode::compress_into`: compression kept only when it makes the block smaller).
//! Dictionary rows are an experiment, not a tessera codec: a dictionary is trained with zstd's
//! own trainer (`ZDICT_trainFromBuffer`, what `zstd --train` runs) on N blocks spread evenly
//! over the image, then every block is compressed with it; the dictionary's bytes are added
//! to the total, its training time is printed.
//!
//! Only data bytes are counted. A repository adds per block its pack record and footer entry,
//! its 32-byte digest in a manifest page and its index entry (SPEC.md §16a gives the sum).
//!
//! `cargo run --release -p tessera-benches --bin compress-floor -- --size 2G`
//! `cargo run --release -p tessera-benches --bin compress-floor -- --image disk.raw --levels 2,3`

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use tessera_benches::bin_args::parse_size;
use tessera_benches::datagen::Layout;
use tessera_engine::store::encode::compress_into;
use tessera_format::{is_all_zero, ChunkDigest, Codec, Compression};

/// Data bytes of a first full backup at other block sizes, zstd levels and with a trained
/// dictionary.
#[derive(Debug, Parser)]
#[command(name = "compress-floor")]
struct Args {
    /// A raw image to measure (default: generate the macro benchmark's image in memory).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Size of the generated image (binary units).
    #[arg(long, default_value = "2G")]
    size: String,
    /// Seed of the generated image (the macro benchmark's default is 1).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Block sizes, comma-separated.
    #[arg(long, default_value = "64K,128K,256K,512K,1M,2M")]
    block_sizes: String,
    /// zstd levels, comma-separated.
    #[arg(long, default_value = "1,2,3,9")]
    levels: String,
    /// Dictionary rows (at the first block size, for each level): numbers of training
    /// samples, comma-separated; empty for none.
    #[arg(long, default_value = "100,1000")]
    dict_samples: String,
    /// Size of a trained dictionary.
    #[arg(long, default_value = "64K")]
    dict_size: String,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One measured configuration.
struct Row {
    block: usize,
    level: i32,
    /// Training samples and dictionary bytes, for dictionary rows.
    dict: Option<(usize, usize)>,
    train_secs: f64,
    blocks: usize,
    data_bytes: u64,
    compress_secs: f64,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("compress-floor: error: {e:#}");
        std::process::exit(1);
    }
}

fn list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| parse(t).with_context(|| format!("{what}: {t:?}")))
        .collect()
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let block_sizes = list(&args.block_sizes, "--block-sizes", |t| {
        let n = usize::try_from(parse_size(t)?)?;
        if !n.is_power_of_two() || !(4096..=(64 << 20)).contains(&n) {
            bail!("a block size is a power of two from 4K to 64M");
        }
        Ok(n)
    })?;
    let levels = list(&args.levels, "--levels", |t| {
        let l: i32 = t.parse()?;
        if !(1..=22).contains(&l) {
            bail!("zstd levels are 1 to 22");
        }
        Ok(l)
    })?;
    let samples = list(&args.dict_samples, "--dict-samples", |t| {
        Ok(t.parse::<usize>()?)
    })?;
    let dict_size = usize::try_from(parse_size(&args.dict_size)?)?;
    if block_sizes.is_empty() || levels.is_empty() {
        bail!("name at least one block size and one level");
    }

    let (image, described) = load(&args)?;
    println!("{described}");
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("compressing on {threads} threads; data bytes only (no records, manifests, index)\n");
    println!(
        "{:>6}  {:>5}  {:<28}  {:>7}  {:>10}  {:>8}  {:>10}",
        "block", "level", "dictionary", "blocks", "data MiB", "vs first", "MB/s"
    );

    let mut rows = Vec::new();
    for &block in &block_sizes {
        let blocks = unique_blocks(&image, block, threads);
        for &level in &levels {
            let row = measure(&blocks, block, level, None, threads)?;
            print_row(&row, rows.first());
            rows.push(row);
        }
        if block == block_sizes[0] {
            for &n in samples.iter().filter(|&&n| n > 0) {
                for &level in &levels {
                    let row = measure(&blocks, block, level, Some((n, dict_size)), threads)?;
                    print_row(&row, rows.first());
                    rows.push(row);
                }
            }
        }
    }
    if let Some(path) = &args.json_out {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "block_size": r.block, "zstd_level": r.level,
                    "dict_samples": r.dict.map(|d| d.0), "dict_bytes": r.dict.map(|d| d.1),
                    "train_secs": r.train_secs, "blocks": r.blocks,
                    "data_bytes": r.data_bytes, "compress_secs": r.compress_secs,
                })
            })
            .collect();
        let doc = json!({ "image": described, "rows": out });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The image's bytes and a line describing them.
fn load(args: &Args) -> Result<(Vec<u8>, String)> {
    if let Some(path) = &args.image {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let line = format!("image {} ({} MiB)", path.display(), data.len() >> 20);
        return Ok((data, line));
    }
    let size = parse_size(&args.size)?;
    let layout = Layout::new(size, args.seed);
    let mut data = vec![0u8; usize::try_from(size)?];
    let window = 8 << 20;
    std::thread::scope(|scope| {
        let half = data.len().div_ceil(2).div_ceil(window) * window;
        for (i, part) in data.chunks_mut(half.max(window)).enumerate() {
            let layout = &layout;
            scope.spawn(move || {
                for (j, w) in part.chunks_mut(window).enumerate() {
                    layout.fill((i * half + j * window) as u64, w);
                }
            });
        }
    });
    let [zero, os, random] = layout.bytes_by_kind();
    let line = format!(
        "generated image: {} MiB, seed {} (macro-bench's): zeros {} MiB, OS-like {} MiB, random {} MiB",
        size >> 20,
        args.seed,
        zero >> 20,
        os >> 20,
        random >> 20
    );
    Ok((data, line))
}

/// The image's blocks of `block` bytes that a backup stores: not all zero, first occurrence
/// of each content.
fn unique_blocks(image: &[u8], block: usize, threads: usize) -> Vec<&[u8]> {
    let all: Vec<&[u8]> = image.chunks(block).collect();
    let digests = on_threads(&all, threads, |b| {
        (!is_all_zero(b)).then(|| ChunkDigest::of(b))
    });
    let mut seen = HashSet::new();
    all.into_iter()
        .zip(digests)
        .filter_map(|(b, d)| d.filter(|d| seen.insert(*d)).map(|_| b))
        .collect()
}

/// `f` of every item, in order, computed on `threads` threads (item `i` on thread
/// `i % threads`), each thread with its own state from `init`.
fn on_threads_with<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let mut parts: Vec<Vec<R>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (init, f) = (&init, &f);
                scope.spawn(move || {
                    let mut state = init();
                    items
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|x| f(&mut state, x))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let mut iters: Vec<_> = parts.iter_mut().map(|p| p.drain(..)).collect();
    (0..items.len())
        .filter_map(|i| iters[i % threads].next())
        .collect()
}

fn on_threads<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    on_threads_with(items, threads, || (), |(), x| f(x))
}

/// Compresses every block (with a dictionary trained on `dict.0` samples of `dict.1` bytes,
/// if given) and sums the stored sizes.
fn measure(
    blocks: &[&[u8]],
    block: usize,
    level: i32,
    dict: Option<(usize, usize)>,
    threads: usize,
) -> Result<Row> {
    let started = Instant::now();
    let trained = match dict {
        None => None,
        Some((n, size)) => {
            let step = (blocks.len() / n.max(1)).max(1);
            let samples: Vec<&[u8]> = blocks.iter().step_by(step).take(n).copied().collect();
            Some(
                zstd::dict::from_samples(&samples, size)
                    .with_context(|| format!("training a {size}-byte dictionary on {n} blocks"))?,
            )
        }
    };
    let train_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let sizes: Vec<Result<usize>> = match &trained {
        None => {
            let compression = Compression {
                codec: Codec::Zstd,
                level,
            };
            on_threads_with(
                blocks,
                threads,
                || vec![0u8; block],
                |out, b| Ok(compress_into(b, compression, out).unwrap_or(b.len())),
            )
        }
        Some(dict) => on_threads_with(
            blocks,
            threads,
            || zstd::bulk::Compressor::with_dictionary(level, dict),
            |c, b| match c {
                Ok(c) => Ok(c.compress(b)?.len().min(b.len())),
                Err(e) => bail!("zstd with a dictionary: {e}"),
            },
        ),
    };
    let compress_secs = started.elapsed().as_secs_f64();
    let mut data_bytes = trained.as_ref().map_or(0, |d| d.len() as u64);
    for s in sizes {
        data_bytes += s? as u64;
    }
    Ok(Row {
        block,
        level,
        dict: trained.as_ref().zip(dict).map(|(d, (n, _))| (n, d.len())),
        train_secs,
        blocks: blocks.len(),
        data_bytes,
        compress_secs,
    })
}

#[allow(clippy::cast_precision_loss, reason = "display only")]
fn print_row(row: &Row, first: Option<&Row>) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let block = if row.block >= 1 << 20 {
        format!("{}M", row.block >> 20)
    } else {
        format!("{}K", row.block >> 10)
    };
    let dict = row.dict.map_or_else(
        || "none".to_string(),
        |(n, bytes)| format!("{n} samples, {} KiB, {:.1} s", bytes >> 10, row.train_secs),
    );
    let versus = first.map_or_else(
        || "1.000".to_string(),
        |f| format!("{:.3}", row.data_bytes as f64 / f.data_bytes as f64),
    );
    let raw: usize = row.blocks * row.block;
    println!(
        "{block:>6}  {:>5}  {dict:<28}  {:>7}  {:>10.1}  {versus:>8}  {:>10.0}",
        row.level,
        row.blocks,
        mib(row.data_bytes),
        raw as f64 / 1e6 / row.compress_secs.max(1e-9),
    );
}
