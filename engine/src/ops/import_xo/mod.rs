//! `tessera import xo`: a Xen Orchestra backup remote's incremental backups become
//! snapshots (SPEC §25).
//!
//! **What each backup becomes.** One snapshot per `<VM>/<date>.json` of mode `delta`, in
//! the series named after the VM ([`naming`]), at the backup's own time, with one disk per
//! VBD (`xvda` for userdevice 0, …) whose content is what XO's restore of that point
//! produces: the backup's VHD read through its whole chain ([`crate::sources::xo::chain`]).
//! Tags: `xo.backup` (`<VM UUID>/<file name>`, what makes a rerun skip it), `xo.vm`,
//! `xo.job`, `xo.schedule`, and `xo.vdi.<disk>` (the VM's VDI) and `xo.vdi-snapshot.<disk>`
//! (the VHD's own unique id).
//!
//! **Reading little.** Points of a VM are imported oldest first. Each one's reference is
//! the VM's newest imported point older than it; a differencing VHD whose parent is that
//! point's VHD (the usual case) is read as a delta, only the sectors it holds; anything
//! else (the first point, a key backup, a chain rewritten by a merge) is read in full, and
//! deduplication keeps what was already stored. Chain files are opened once per VM.
//!
//! **Crash safety and reruns.** Each point is published like any backup (SPEC §10): whole
//! or not at all. A rerun lists the `xo.backup` tags already in the repository and imports
//! only the rest, so a killed import continues where it stopped. The repository's writer
//! lock is held throughout.
//!
//! **Skipped.** A backup whose metadata does not parse, whose VHDs are missing or whose chain
//! does not open is skipped and reported as damaged; one in a VDI folder with a merge in
//! progress is skipped (benign: rerun once XO has finished it); full (XVA) backups, caches,
//! locks and temporary files are reported; VHDs no backup reaches are reported as orphans.
//! A source error while reading a point skips that point (nothing of it is published); a
//! repository error stops the import.

mod naming;
pub mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use tessera_format::{SnapshotHeader, SnapshotId};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::ops::backup::{
    backup_sources, BackupRequest, DeltaOptions, DiskSpec, Mode, ReferenceChoice,
};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sources::xo::chain::ChainOpener;
use crate::sources::xo::remote::{RemotePath, XoRemote};
use crate::sources::xo::{open_remote, scan, RemoteBackup, Skipped, VmFolder};
use crate::sources::BlockSource;
pub use report::{ImportedBackup, ImportedDisk, XoImportReport};

/// Tag naming the imported backup: `<VM UUID>/<file name>`.
pub const BACKUP_TAG: &str = "xo.backup";
/// Tag naming the VM.
pub const VM_TAG: &str = "xo.vm";

/// What to import. (`Debug` leaves the key out.)
#[derive(Clone, Default)]
pub struct XoImportRequest {
    /// The remote's root (the folder holding `xo-vm-backups/`).
    pub remote: PathBuf,
    /// The remote's encryption key (its 32 characters), for an encrypted remote.
    pub key: Option<Zeroizing<Vec<u8>>>,
    /// Only these VMs (UUIDs); all when empty.
    pub vms: Vec<String>,
    /// Only backups taken at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Report what would be imported; write nothing.
    pub dry_run: bool,
}

impl std::fmt::Debug for XoImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XoImportRequest")
            .field("remote", &self.remote)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("vms", &self.vms)
            .field("since_us", &self.since_us)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// Opens the remote and lists what it holds: the part of an import that needs no
/// repository (and fails before the repository is opened when the remote or key is wrong).
pub fn open(req: &XoImportRequest) -> Result<(Arc<XoRemote>, crate::sources::xo::Scan)> {
    let remote = Arc::new(open_remote(
        &req.remote,
        req.key.as_ref().map(|k| k.as_slice()),
    )?);
    let listing = scan(&remote, &req.vms)?;
    Ok((remote, listing))
}

/// Imports the backups `listing` names (from [`open`]) into `repo` (opened as the writer,
/// or as a reader for a dry run).
pub fn import(
    repo: &Repository,
    req: &XoImportRequest,
    remote: &Arc<XoRemote>,
    listing: crate::sources::xo::Scan,
    progress: &dyn Progress,
) -> Result<XoImportReport> {
    let mut report = XoImportReport {
        dry_run: req.dry_run,
        skipped: listing.skipped,
        ..XoImportReport::default()
    };
    let mut catalog = repo.index().snapshots()?;
    for vm in &listing.vms {
        import_vm(repo, req, remote, vm, &mut catalog, &mut report, progress)?;
    }
    report.damaged = report.skipped.iter().filter(|s| s.damaged).count() as u64;
    Ok(report)
}

/// Imports one VM's backups, oldest first.
fn import_vm(
    repo: &Repository,
    req: &XoImportRequest,
    remote: &Arc<XoRemote>,
    vm: &VmFolder,
    catalog: &mut Vec<(SnapshotId, SnapshotHeader)>,
    report: &mut XoImportReport,
    progress: &dyn Progress,
) -> Result<()> {
    let label = vm
        .backups
        .last()
        .map_or("", |b| b.metadata.vm.name_label.as_str());
    let series = naming::series_for(label, &vm.uuid, catalog);
    let mut opener = ChainOpener::new(Arc::clone(remote));
    // The chains of the last backup opened: what stays open for the next one.
    let mut kept: Vec<RemotePath> = Vec::new();
    let mut reached: BTreeSet<RemotePath> = BTreeSet::new();
    let vm_dir = RemotePath::root()
        .join(crate::sources::xo::BACKUP_DIR, "backup folder")?
        .join(&vm.uuid, "VM folder")?;
    for backup in &vm.backups {
        let done = catalog
            .iter()
            .any(|(_, h)| has_tag(h, BACKUP_TAG, &backup.id));
        let time_us = backup.metadata.time_ms().cast_signed().saturating_mul(1000);
        if done {
            // Still follow its chains (headers only), so their files are not orphans.
            for disk in backup.metadata.disks().unwrap_or_default() {
                if let Ok(top) = vm_dir.join(&disk.vhd, "VHD path") {
                    reached.extend(opener.reach(&top));
                }
            }
            report.already_imported += 1;
            continue;
        }
        if req.since_us.is_some_and(|since| time_us < since) {
            continue;
        }
        if vm.locked {
            report.skipped.push(Skipped {
                path: backup.file.to_string(),
                reason: format!("XO holds the VM's lock ({}.lock: a backup, merge or cleanup is running); rerun the import once it is done", vm.uuid),
                damaged: false,
            });
            continue;
        }
        let disks = match open_disks(&mut opener, &vm_dir, vm, backup) {
            Ok(d) => {
                kept = d.iter().flat_map(|d| d.1.iter().cloned()).collect();
                opener.keep_only(&kept);
                d
            }
            Err(Refusal { reason, damaged }) => {
                opener.keep_only(&kept);
                report.skipped.push(Skipped {
                    path: backup.file.to_string(),
                    reason,
                    damaged,
                });
                continue;
            }
        };
        reached.extend(disks.iter().flat_map(|d| d.1.iter().cloned()));
        match import_backup(
            repo, req, remote, &opener, &series, vm, backup, disks, time_us, catalog, progress,
        ) {
            Ok(Outcome::Imported(entry, disks)) => {
                add_totals(report, &disks);
                report.imported.push(entry);
            }
            Ok(Outcome::Changed(why)) => {
                // What was read may be stale: later points open their chains afresh.
                kept.clear();
                opener.keep_only(&kept);
                report.skipped.push(Skipped {
                path: backup.file.to_string(),
                reason: format!("{why} while it was read, so nothing of it was stored; rerun the import once XO is done"),
                damaged: false,
            });
            }
            Err(e) if is_source_error(&e) => report.skipped.push(Skipped {
                path: backup.file.to_string(),
                reason: format!("reading it failed, nothing of it was stored: {e}"),
                damaged: true,
            }),
            Err(e) => return Err(e),
        }
    }
    // A locked VM's skipped backups were not followed: its files are not orphans.
    for name in vm.vhds.iter().filter(|_| !vm.locked) {
        if !reached.contains(name) && !reached_as_alias_target(&opener, name) {
            report.skipped.push(Skipped {
                path: name.to_string(),
                reason: "an orphan: no backup's chain reaches it".into(),
                damaged: false,
            });
        }
    }
    Ok(())
}

fn reached_as_alias_target(opener: &ChainOpener, name: &RemotePath) -> bool {
    opener.alias_targets().contains(name)
}

/// Why a backup is not imported.
struct Refusal {
    reason: String,
    damaged: bool,
}

/// A disk to import: its name, its chain's names, its opened source.
type OpenedDisk = (
    String,
    Vec<RemotePath>,
    Box<dyn BlockSource>,
    String,
    String,
    String,
);

/// Opens every disk of `backup`, or says why it cannot be imported.
fn open_disks(
    opener: &mut ChainOpener,
    vm_dir: &RemotePath,
    vm: &VmFolder,
    backup: &RemoteBackup,
) -> std::result::Result<Vec<OpenedDisk>, Refusal> {
    let damaged = |reason: String| Refusal {
        reason,
        damaged: true,
    };
    let disks = backup.metadata.disks().map_err(damaged)?;
    let mut out = Vec::new();
    for d in disks {
        let top = vm_dir
            .join(&d.vhd, "VHD path")
            .map_err(|e| damaged(e.to_string()))?;
        if let Some(m) = vm.merging.iter().find(|m| **m == top.parent()) {
            return Err(Refusal {
                reason: format!("XO is merging VHDs in {m} (a .merge.json is there); rerun the import once the merge is finished"),
                damaged: false,
            });
        }
        let chain = opener
            .open(&top)
            .map_err(|e| damaged(format!("disk {} ({}): {e}", d.name, d.vhd)))?;
        out.push((
            d.name,
            chain.names,
            Box::new(chain.source) as Box<dyn BlockSource>,
            d.vhd,
            d.vdi,
            d.snapshot_vdi,
        ));
    }
    Ok(out)
}

/// What became of one backup.
enum Outcome {
    /// Published (or planned, in a dry run), with its disks' entries.
    Imported(ImportedBackup, Vec<tessera_format::DiskEntry>),
    /// XO changed the chain while it was read: not published.
    Changed(String),
}

/// Why the chain of a point may no longer be what was read: XO took the VM's lock,
/// started a merge in one of its VDI folders, or one of its files changed.
fn changed_since_opened(
    remote: &XoRemote,
    opener: &ChainOpener,
    vm: &VmFolder,
    names: &[RemotePath],
    folders: &[RemotePath],
) -> Option<String> {
    if crate::sources::xo::locked(remote, &vm.uuid).unwrap_or(true) {
        return Some(format!("XO took the VM's lock ({}.lock)", vm.uuid));
    }
    if let Some(f) = folders
        .iter()
        .find(|f| crate::sources::xo::merging(remote, f).unwrap_or(true))
    {
        return Some(format!("XO started merging VHDs in {f}"));
    }
    opener.unchanged(names).err()
}

/// The VM's newest imported point in `series` older than `time_us`: the delta reference.
fn previous_point(
    catalog: &[(SnapshotId, SnapshotHeader)],
    series: &str,
    vm: &str,
    time_us: i64,
) -> Option<SnapshotId> {
    catalog
        .iter()
        .filter(|(_, h)| h.series == series && has_tag(h, VM_TAG, vm) && h.time_us < time_us)
        .max_by_key(|(_, h)| h.time_us)
        .map(|(id, _)| *id)
}

/// The tags every imported snapshot carries (disks add theirs).
fn backup_tags(vm: &VmFolder, backup: &RemoteBackup) -> Vec<(String, String)> {
    let m = &backup.metadata;
    let mut tags = vec![
        (BACKUP_TAG.to_string(), backup.id.clone()),
        (VM_TAG.to_string(), vm.uuid.clone()),
    ];
    if let Some(job) = &m.job_id {
        tags.push(("xo.job".into(), job.clone()));
    }
    if let Some(schedule) = &m.schedule_id {
        tags.push(("xo.schedule".into(), schedule.clone()));
    }
    tags
}

/// Publishes one backup (or plans it, in a dry run).
#[expect(
    clippy::too_many_arguments,
    reason = "the import's state, passed down one level"
)]
fn import_backup(
    repo: &Repository,
    req: &XoImportRequest,
    remote: &XoRemote,
    opener: &ChainOpener,
    series: &str,
    vm: &VmFolder,
    backup: &RemoteBackup,
    disks: Vec<OpenedDisk>,
    time_us: i64,
    catalog: &mut Vec<(SnapshotId, SnapshotHeader)>,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let mut tags = backup_tags(vm, backup);
    let mut specs = Vec::new();
    let mut sources = Vec::new();
    let mut imported = Vec::new();
    let mut names = Vec::new();
    let mut folders = Vec::new();
    for (name, chain, source, vhd, vdi, snapshot_vdi) in disks {
        names.extend(chain.iter().cloned());
        folders.extend(chain.first().map(RemotePath::parent));
        tags.push((format!("xo.vdi.{name}"), vdi));
        tags.push((format!("xo.vdi-snapshot.{name}"), snapshot_vdi));
        let local = chain
            .first()
            .map_or_else(PathBuf::new, |top| remote.local(top));
        specs.push(DiskSpec::new(&name, &local));
        imported.push(ImportedDisk {
            name,
            vhd,
            chain_length: chain.len(),
            size: source.size(),
            mode: "planned".into(),
            bytes_read: 0,
        });
        sources.push(source);
    }
    let reference = previous_point(catalog, series, &vm.uuid, time_us);
    let mut entry = ImportedBackup {
        backup: backup.id.clone(),
        vm: vm.uuid.clone(),
        series: series.to_string(),
        time: crate::time::format_us(time_us),
        snapshot: None,
        disks: imported,
    };
    if req.dry_run {
        return Ok(Outcome::Imported(entry, Vec::new()));
    }
    let request = BackupRequest {
        series: series.to_string(),
        disks: specs,
        tags,
        block_size: None,
        delta: DeltaOptions {
            reference: match reference {
                Some(id) => ReferenceChoice::Snapshot(id.to_hex().parse()?),
                None => ReferenceChoice::Auto,
            },
            fallback_full: true,
            force_key: false,
            key_interval: 0,
            ..DeltaOptions::default()
        },
    };
    let changed = std::cell::RefCell::new(None);
    let check = || match changed_since_opened(remote, opener, vm, &names, &folders) {
        None => Ok(()),
        Some(why) => {
            let err = Error::Refused {
                reason: why.clone(),
            };
            *changed.borrow_mut() = Some(why);
            Err(err)
        }
    };
    let outcome = match backup_sources(
        repo,
        &request,
        &sources,
        Some(time_us),
        Some(&check),
        progress,
    ) {
        Ok(o) => o,
        Err(e) => {
            return match changed.into_inner() {
                Some(why) => Ok(Outcome::Changed(why)),
                None => Err(e),
            }
        }
    };
    let mut stats = Vec::new();
    for ((disk, header), report) in entry
        .disks
        .iter_mut()
        .zip(&outcome.header.disks)
        .zip(&outcome.disks)
    {
        disk.mode = match report.mode {
            Mode::Delta => "delta",
            Mode::Full | Mode::Key => "full",
        }
        .into();
        disk.bytes_read = header.stats.bytes_read;
        stats.push(header.clone());
    }
    entry.snapshot = Some(outcome.id);
    catalog.push((outcome.id, outcome.header));
    Ok(Outcome::Imported(entry, stats))
}

fn add_totals(report: &mut XoImportReport, disks: &[tessera_format::DiskEntry]) {
    for d in disks {
        let s = &d.stats;
        let zeros = s.zero_blocks.saturating_mul(u64::from(d.block_size));
        report.bytes_read += s.bytes_read;
        report.new_raw_bytes += s.new_raw_bytes;
        report.new_stored_bytes += s.new_stored_bytes;
        report.deduplicated_bytes += s
            .bytes_read
            .saturating_sub(s.new_raw_bytes)
            .saturating_sub(zeros);
    }
}

/// Whether `h` carries the tag `key=value`.
fn has_tag(h: &SnapshotHeader, key: &str, value: &str) -> bool {
    h.tags.iter().any(|(k, v)| k == key && v == value)
}

/// Whether `e` is the remote's fault (skip the point) rather than the repository's (stop).
fn is_source_error(e: &Error) -> bool {
    matches!(e, Error::BadImage { .. } | Error::Source { .. })
}
