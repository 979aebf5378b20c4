//! `tessera import xo`.

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::import_xo::{self, XoImportReport, XoImportRequest};
use tessera_engine::ErrorKind;

use crate::args::ImportCommand;
use crate::doc::print_doc;
use crate::output::{bytes, Bars};

/// Runs `tessera import …`. Exits 4 when the remote held damaged or hostile backups (the
/// rest is imported and the report lists them).
pub fn run(
    cmd: &ImportCommand,
    at: &dyn Fn(&str) -> tessera_engine::Result<RepoLocation>,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let ImportCommand::Xo {
        remote,
        repo,
        vms,
        since,
        dry_run,
        encryption_key_file,
    } = cmd;
    let req = XoImportRequest {
        remote: remote.clone(),
        key: encryption_key_file
            .as_deref()
            .map(crate::keys::xo_remote_key)
            .transpose()?,
        vms: vms.clone(),
        since_us: since
            .as_deref()
            .map(tessera_engine::time::parse_time)
            .transpose()?,
        dry_run: *dry_run,
    };
    let location = at(repo)?;
    // The remote and its key are checked before the repository is opened or locked.
    let (remote, listing) = import_xo::open(&req)?;
    let repository = if *dry_run {
        super::open_reader(&location)?
    } else {
        super::open_writer(&location)?
    };
    let report = import_xo::import(&repository, &req, &remote, listing, bars)?;
    let problems = (report.damaged > 0).then(|| {
        (
            ErrorKind::Damage,
            format!(
                "{} item(s) of the remote are damaged or hostile and were not imported",
                report.damaged
            ),
        )
    });
    if json {
        print_doc(&report, problems.clone());
    } else {
        print_text(&report);
    }
    Ok(match problems {
        Some((kind, message)) => {
            if !json {
                eprintln!("error: {message}");
            }
            crate::exit_code_for(kind)
        }
        None => 0,
    })
}

fn print_text(r: &XoImportReport) {
    let verb = if r.dry_run {
        "would import"
    } else {
        "imported"
    };
    for b in &r.imported {
        let snapshot = b
            .snapshot
            .map_or_else(|| "-".to_string(), |id| id.to_hex()[..12].to_string());
        let disks: Vec<String> = b
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{} {} ({} VHDs, {} read)",
                    d.name,
                    d.mode,
                    d.chain_length,
                    bytes(d.bytes_read)
                )
            })
            .collect();
        println!(
            "{verb} {} at {} → {} in series {}: {}",
            b.backup,
            b.time,
            snapshot,
            b.series,
            disks.join(", ")
        );
    }
    for s in &r.skipped {
        let what = if s.damaged { "damaged" } else { "skipped" };
        println!("{what}: {}: {}", s.path, s.reason);
    }
    println!(
        "{} backup(s) {verb}, {} already imported, {} skipped ({} damaged); read {}, stored {} new ({} in packs), {} deduplicated",
        r.imported.len(),
        r.already_imported,
        r.skipped.len(),
        r.damaged,
        bytes(r.bytes_read),
        bytes(r.new_raw_bytes),
        bytes(r.new_stored_bytes),
        bytes(r.deduplicated_bytes)
    );
}
