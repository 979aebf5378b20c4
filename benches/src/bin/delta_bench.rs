//! Delta sources against full reads, on its own (macro-bench runs the same with
//! `--delta-sources`): a generated sparse image, ~1 % of its blocks rewritten, backed up
//! through a qcow2 overlay, an NBD dirty bitmap, a VHD differencing disk and a changed-block
//! list. Needs the release `tessera` and qemu-utils.
//!
//! `cargo run --release -p tessera-benches --bin delta-bench -- [--size-mib 4096] [--percent 1]`

use std::fs::File;

use anyhow::Result;
use tessera_benches::bin_args::{arg, tessera_path};
use tessera_benches::datagen::Layout;
use tessera_benches::delta_sources::{run_all, table};

fn main() -> Result<()> {
    let size_mib: u64 = arg("--size-mib", "4096").parse()?;
    let percent: f64 = arg("--percent", "1").parse()?;
    let seed: u64 = arg("--seed", "1").parse()?;
    let bin = tessera_path();
    let work = tempfile::Builder::new()
        .prefix("tessera-delta-bench-")
        .tempdir_in("/var/tmp")?;
    let image = work.path().join("image.raw");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Layout::new(size_mib << 20, seed).write_to(&File::create(&image)?, cores, true)?;
    eprintln!("{size_mib} MiB sparse image, {percent} % of 64 KiB blocks rewritten");
    let rows = run_all(&bin, &image, work.path(), percent, seed)?;
    print!("{}", table(&rows));
    Ok(())
}
