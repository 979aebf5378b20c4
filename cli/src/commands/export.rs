//! `tessera export`: a snapshot's disk as raw, qcow2 or VHD, or (`--base`) only its delta
//! from another snapshot as a qcow2 overlay or a differencing VHD.

use std::path::Path;

use anyhow::Result;
use tessera_engine::export::{export_snapshot, ExportRequest, Format};
use tessera_engine::location::RepoLocation;

use super::restore::split_spec;
use crate::doc::print_ok;
use crate::output::{bytes, Bars};

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line option"
)]
pub fn run(
    repo: &RepoLocation,
    snapshot: &str,
    out: &Path,
    format: &str,
    base: Option<&str>,
    backing: Option<&str>,
    force: bool,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let format: Format = format.parse()?;
    let repository = super::open_reader(repo)?;
    let (query, disk) = split_spec(snapshot);
    let request = ExportRequest {
        snapshot: query,
        disk,
        base,
        format,
        output: out,
        backing_file: backing,
        force,
    };
    let r = export_snapshot(&repository, &request, bars)?;
    if json {
        print_ok(&r);
    } else {
        let o = &r.outcome;
        println!(
            "exported {} of {}{} as {} to {} ({} disk, {} data in {} blocks, file {}){}",
            r.disk,
            &r.snapshot.to_hex()[..16],
            r.base
                .map(|b| format!(" (delta from {})", &b.to_hex()[..16]))
                .unwrap_or_default(),
            o.format,
            o.path.display(),
            bytes(o.disk_size),
            bytes(o.bytes_written),
            o.blocks_written,
            bytes(o.file_size),
            o.backing_file
                .as_deref()
                .map(|b| format!("; backing file {b}"))
                .unwrap_or_default(),
        );
    }
    Ok(0)
}
