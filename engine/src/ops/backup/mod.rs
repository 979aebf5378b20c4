//! Backups: full reads ([`disk`]), deltas on a reference snapshot ([`delta`]) and key
//! backups that read in full, report drift and heal the store ([`heal`]); which one each
//! disk gets is decided in [`plan`].
//!
//! Commit order (see SPEC.md "Crash safety"): all packs sealed → the writer lock taken (a
//! backup opened with [`Repository::open_backup_on`] stores under its series lock alone and
//! takes the writer lock only now; the writer's recovery indexes its packs) → count changes
//! derived from the index as it is now, under the lock (so whatever other writers changed
//! meanwhile is accounted for) → snapshot file durable → the catalog entry and every count
//! change, in one index batch or in steps ([`crate::ops::publish`]). A crash before the
//! snapshot file is stored leaves the previous state, and a rerun finds the sealed packs'
//! objects in the index (adopted by the next writer's recovery); a crash after it leaves a
//! snapshot file the next writer catalogues.

mod checked;
mod delta;
mod disk;
mod full_read;
mod heal;
pub mod plan;
mod reference;
mod report;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use tessera_format::codec::MAX_STRING_LEN;
use tessera_format::config::validate_block_size;
use tessera_format::snapshot::{root_digest, validate_name, MAX_DISKS};
use tessera_format::{DiskEntry, DiskStats, Snapshot, SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};
use crate::index::ScratchSet;
use crate::ops::publish::publish_snapshot;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot_ref::SnapshotRef;
use crate::sources::{open_source, BlockSource, SourceFormat, SourceSpec};
use crate::store::session::WriteSession;

use checked::CheckedChunks;
use disk::DiskBackup;
pub use disk::Drift;
use plan::{key_backup_due, plan_disk, DiskPlan, MODE_KEY};
pub use plan::{Mode, READ_IN_FULL_NOTE};
use reference::ReferenceManifest;
pub use report::{BackupReport, DiskBackupReport};

/// One disk to back up.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Disk name within the snapshot.
    pub name: String,
    /// Image file, block device, or NBD URL.
    pub path: PathBuf,
    /// A changed-block list describing the image's delta (raw images and devices only).
    pub changes: Option<PathBuf>,
}

impl DiskSpec {
    /// A disk read from `path`, with no changed-block list.
    pub fn new(name: &str, path: &std::path::Path) -> Self {
        Self {
            name: name.into(),
            path: path.to_path_buf(),
            changes: None,
        }
    }
}

/// Which snapshot a delta applies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceChoice {
    /// The series' newest snapshot, used as a delta base only if its state matches
    /// (otherwise the disk is read in full).
    Auto,
    /// The series' newest snapshot; a delta that does not belong to it is an error.
    Latest,
    /// This snapshot; a delta that does not belong to it is an error.
    Snapshot(SnapshotRef),
    /// The series' newest snapshot whose every disk was read in full (`full` or `key`):
    /// a *differential* (SPEC.md §26.2); a delta that does not belong to it is an error.
    /// With no such snapshot, as [`Self::Auto`].
    LatestFull,
}

impl std::str::FromStr for ReferenceChoice {
    type Err = Error;

    /// `--reference`: `latest` is the series' newest snapshot (not the repository's),
    /// `latest-full` its newest snapshot read in full; anything else is a [`SnapshotRef`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latest" => Ok(Self::Latest),
            "latest-full" => Ok(Self::LatestFull),
            other => Ok(Self::Snapshot(other.parse()?)),
        }
    }
}

/// How a backup uses delta information.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// The reference snapshot.
    pub reference: ReferenceChoice,
    /// Read in full instead of failing when a delta does not belong to the reference.
    pub fallback_full: bool,
    /// Force a key backup.
    pub force_key: bool,
    /// Every Nth backup of a series is a key backup; 0 disables the interval.
    pub key_interval: u32,
    /// How to interpret the disk paths.
    pub format: SourceFormat,
    /// Directories besides each image's own that its backing files or parents may be
    /// opened from (`--allow-backing-dir`, SPEC §21).
    pub allow_backing_dirs: Vec<PathBuf>,
    /// CA certificates trusted besides the system's roots by `nbds://` disks (`--tls-ca`).
    pub tls_ca: Option<PathBuf>,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        Self {
            reference: ReferenceChoice::Auto,
            fallback_full: false,
            force_key: false,
            key_interval: 20,
            format: SourceFormat::Auto,
            allow_backing_dirs: Vec::new(),
            tls_ca: None,
        }
    }
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Series name.
    pub series: String,
    /// The disks; all go into one snapshot.
    pub disks: Vec<DiskSpec>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Block size; default: the series' previous block size for the disk, else the repository default.
    pub block_size: Option<u32>,
    /// Delta handling.
    pub delta: DeltaOptions,
}

impl BackupRequest {
    /// Gives disk `disk` the changed-block list `list` (`--changes DISK=FILE`); naming a
    /// disk that is not being backed up is a usage error.
    pub fn attach_changes(&mut self, disk: &str, list: PathBuf) -> Result<()> {
        let spec = self
            .disks
            .iter_mut()
            .find(|d| d.name == disk)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--changes names disk {disk:?}, which is not being backed up"
                ))
            })?;
        spec.changes = Some(list);
        Ok(())
    }

    /// A backup of one disk, with no tags and the default block size.
    pub fn one_disk(series: &str, disk: &str, path: &std::path::Path) -> Self {
        Self {
            series: series.into(),
            disks: vec![DiskSpec::new(disk, path)],
            tags: Vec::new(),
            block_size: None,
            delta: DeltaOptions::default(),
        }
    }
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// Its id.
    pub id: SnapshotId,
    /// Its header.
    pub header: SnapshotHeader,
    /// Packs written.
    pub packs_written: u64,
    /// How each disk was read, in the order of the header's disks.
    pub disks: Vec<DiskReport>,
    /// Requests this process sent to the object store so far (S3 repositories).
    pub storage_requests: Option<crate::storage::s3::RequestCounts>,
    /// What the recovery of the writer the backup published through did (a backup opened
    /// with [`Repository::open_backup_on`]; SPEC.md §8), for the operator.
    pub publish_recovery: Option<crate::recovery::Recovery>,
}

/// How one disk was backed up (also recorded in the disk's identity, see [`plan::MODE_KEY`]).
#[derive(Debug, Clone)]
pub struct DiskReport {
    /// Full, delta or key.
    pub mode: Mode,
    /// The snapshot the disk's unchanged blocks came from (delta), or was compared with (key).
    pub reference: Option<SnapshotId>,
    /// Bytes the delta said changed (delta and key backups of delta sources).
    pub changed_bytes: Option<u64>,
    /// Drift found by a key backup.
    pub drift: Option<Drift>,
    /// Damaged stored chunks a key backup rewrote from this disk.
    pub healed_chunks: u64,
    /// Why the mode is what it is, when that is not obvious.
    pub note: Option<String>,
}

fn validate(req: &BackupRequest) -> Result<()> {
    let invalid = |e: tessera_format::DecodeError| Error::Usage(e.to_string());
    validate_name("series name", &req.series).map_err(invalid)?;
    if req.disks.is_empty() {
        return Err(Error::Usage("name at least one disk as NAME=PATH".into()));
    }
    // The snapshot file could not hold them (SPEC §6): refuse before reading or writing.
    if req.disks.len() > MAX_DISKS {
        return Err(Error::Usage(format!(
            "{} disks given, but one snapshot holds at most {MAX_DISKS}; back them up in several series",
            req.disks.len()
        )));
    }
    let mut names = HashSet::new();
    for d in &req.disks {
        validate_name("disk name", &d.name).map_err(invalid)?;
        if !names.insert(&d.name) {
            return Err(Error::Usage(format!(
                "disk name {:?} is given twice",
                d.name
            )));
        }
    }
    for (k, v) in &req.tags {
        validate_name("tag key", k).map_err(invalid)?;
        if v.len() > MAX_STRING_LEN {
            return Err(Error::Usage(format!(
                "tag {k:?}: the value is {} bytes, at most {MAX_STRING_LEN} fit a snapshot",
                v.len()
            )));
        }
    }
    if let Some(bs) = req.block_size {
        validate_block_size(u64::from(bs)).map_err(invalid)?;
    }
    Ok(())
}

/// Runs a backup (each disk full, delta or key, see [`plan`]) and publishes it as one snapshot.
pub fn backup(
    repo: &Repository,
    req: &BackupRequest,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    validate(req)?;
    // Open every source before writing anything, so a bad path or image costs nothing.
    let sources = open_sources(req)?;
    backup_sources(repo, req, &sources, None, None, progress)
}

/// [`backup`] of disks already opened (`sources`, in the order of `req.disks`, whose paths
/// then only name them in messages), taken at `time_us` (now when `None`): how an import
/// records points of another tool's history at their own times. `before_publish` runs
/// after every disk was read and stored, just before the snapshot is published; an error
/// from it publishes nothing (an import checks there that the other tool did not change
/// what was read).
#[expect(
    clippy::too_many_lines,
    reason = "the backup's steps in their order: plan, read each disk, publish, report"
)]
pub fn backup_sources(
    repo: &Repository,
    req: &BackupRequest,
    sources: &[Box<dyn BlockSource>],
    time_us: Option<i64>,
    before_publish: Option<&dyn Fn() -> Result<()>>,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    validate(req)?;
    if sources.len() != req.disks.len() {
        return Err(Error::Internal(format!(
            "{} sources given for {} disks",
            sources.len(),
            req.disks.len()
        )));
    }
    let started = Instant::now();
    let time_us = time_us.unwrap_or_else(crate::time::now_us);
    let plans = plan_disks(repo, req, sources)?;
    let mut session = WriteSession::new(repo.index(), repo.backend(), repo.pack_target());
    if !repo.is_writer() {
        // What it wrote stays unindexed until it publishes: remembered on disk.
        session = session.with_scratch(ScratchSet::create(repo.local_dir())?);
    }
    let mut seen_pages = HashSet::new();
    let mut heal = Vec::new();
    let mut healed_packs = Vec::new();
    let key = plans.iter().any(|(_, _, plan)| plan.mode == Mode::Key);
    let checked = CheckedChunks::new(key, repo.local_dir())?;
    let mut disks = Vec::new();
    let mut roots = Vec::new();
    let mut reports = Vec::new();
    for ((spec, source), (block_size, reference, plan)) in req.disks.iter().zip(sources).zip(plans)
    {
        let DiskPlan {
            mode,
            delta_applies,
            note,
        } = plan;
        let reference_id = reference.as_ref().map(|r| r.snapshot);
        let extents = clipped_extents(source.as_ref());
        let changed_bytes = extents
            .as_ref()
            .map(|x| x.iter().map(|(s, e)| e - s).sum::<u64>());
        let mut disk = DiskBackup {
            repo,
            session: &mut session,
            seen_pages: &mut seen_pages,
            heal: &mut heal,
            healed_packs: &mut healed_packs,
            healed: 0,
            checked: &checked,
            block_size,
            key: mode == Mode::Key,
            roots: Vec::new(),
            page: Vec::new(),
            stats: DiskStats::default(),
            drift: Drift::default(),
            arena: Vec::new(),
        };
        let drift_extents = extents
            .as_deref()
            .filter(|_| mode == Mode::Key && delta_applies);
        let delta_extents = extents.as_deref().filter(|_| mode == Mode::Delta);
        disk.run(
            &spec.name,
            mode,
            source.as_ref(),
            reference,
            delta_extents,
            drift_extents,
            progress,
        )?;
        progress.finish();
        let DiskBackup {
            roots: root,
            stats,
            drift,
            healed: healed_chunks,
            ..
        } = disk;
        let report = DiskReport {
            mode,
            reference: reference_id.filter(|_| mode == Mode::Delta || delta_applies),
            changed_bytes: changed_bytes.filter(|_| mode == Mode::Delta || delta_applies),
            drift: (mode == Mode::Key && delta_applies).then_some(drift),
            healed_chunks,
            note,
        };
        let mut identity = source.identity();
        identity.extend(report_identity(&report));
        disks.push(DiskEntry {
            name: spec.name.clone(),
            size: source.size(),
            block_size,
            page_entries: repo.config().page_entries,
            page_count: root.len() as u32,
            root_digest: root_digest(&root),
            identity,
            stats,
        });
        roots.push(root);
        reports.push(report);
    }
    let (session_stats, mut own_packs) = session.finish_sealed()?;
    heal::store_copies(repo, &heal, &mut healed_packs)?;
    own_packs.extend(healed_packs.iter().map(|p| p.id));
    let header = SnapshotHeader {
        series: req.series.clone(),
        time_us,
        duration_ms: started.elapsed().as_millis() as u64,
        tags: req.tags.clone(),
        disks,
    };
    let snapshot = Snapshot { header, roots };
    if let Some(check) = before_publish {
        check()?;
    }
    // A backup opened with `open_backup_on` publishes through the writer (SPEC.md §8).
    let publisher;
    let writer = if repo.is_writer() {
        repo
    } else {
        publisher = repo.publisher(&own_packs, &|holder| {
            let phase = match holder {
                Error::Locked { pid, host, since } => format!(
                    "waiting to publish: PID {pid} on {host} holds the writer lock since {since}"
                ),
                other => format!("waiting to publish: {other}"),
            };
            progress.start(&phase, 0);
        })?;
        progress.finish();
        &publisher
    };
    heal::repoint(writer, &healed_packs)?;
    let id = publish_snapshot(writer, &snapshot).map_err(|e| reclaimed_meanwhile(repo, e))?;
    Ok(BackupOutcome {
        id,
        header: snapshot.header,
        packs_written: session_stats.packs,
        disks: reports,
        storage_requests: repo.backend().requests(),
        publish_recovery: (!repo.is_writer()).then(|| writer.recovery.clone()),
    })
}

/// A backup that did not hold the writer lock while it stored (SPEC.md §8) found, when it
/// published, an object missing that its view of the index had: a compaction beside it
/// reclaimed an unreferenced object it deduplicated against (SPEC.md §13, race 6).
/// Only an object the view had: one the backup wrote itself and its publisher could not
/// index (a pack unreadable or quarantined by the recovery) is damage, reported as such.
fn reclaimed_meanwhile(repo: &Repository, e: Error) -> Error {
    match e {
        Error::ObjectMissing { kind, digest } if !repo.is_writer() => {
            let mut key = [0u8; 32];
            let in_view = hex::decode_to_slice(&digest, &mut key).is_ok()
                && repo.index().get_object(kind, &key).ok().flatten().is_some();
            if in_view {
                Error::ReclaimedMeanwhile { kind, digest }
            } else {
                Error::ObjectMissing { kind, digest }
            }
        }
        other => other,
    }
}

/// Opens every disk's source. A `--tls-ca` no disk would use is a usage error (a plain
/// `nbd://` URL given where `nbds://` was meant must not pass unnoticed).
fn open_sources(req: &BackupRequest) -> Result<Vec<Box<dyn BlockSource>>> {
    if let Some(ca) = &req.delta.tls_ca {
        let tls_disk = req.disks.iter().any(|d| {
            let location = d.path.to_string_lossy();
            location.starts_with("nbds://") || location.starts_with("nbds+unix://")
        });
        if !tls_disk {
            return Err(Error::Usage(format!(
                "--tls-ca {} applies to nbds:// and nbds+unix:// disks, and none is given (nbd:// is plain NBD)",
                ca.display()
            )));
        }
    }
    req.disks
        .iter()
        .map(|d| {
            open_source(&SourceSpec {
                location: d.path.to_string_lossy().into_owned(),
                format: req.delta.format,
                changes: d.changes.clone(),
                allow_backing_dirs: req.delta.allow_backing_dirs.clone(),
                tls_ca: req.delta.tls_ca.clone(),
            })
        })
        .collect()
}

/// Each disk's block size, reference and plan, decided before anything is written (a
/// wrong base costs nothing).
fn plan_disks<'r>(
    repo: &'r Repository,
    req: &BackupRequest,
    sources: &[Box<dyn BlockSource>],
) -> Result<Vec<(u32, Option<ReferenceManifest<'r>>, DiskPlan)>> {
    let catalog = repo.index().snapshots()?;
    let series: Vec<&SnapshotHeader> = catalog
        .iter()
        .filter(|(_, h)| h.series == req.series)
        .map(|(_, h)| h)
        .collect();
    let key_due = key_backup_due(&series, req.delta.key_interval);
    let (reference_snapshot, explicit) = choose_reference(repo, req, &catalog, sources)?;

    let mut plans = Vec::new();
    for (spec, source) in req.disks.iter().zip(sources) {
        let block_size = block_size_for(repo, req, spec, reference_snapshot.as_ref())?;
        let reference = reference_snapshot.as_ref().and_then(|(id, snap)| {
            let i = snap.header.disks.iter().position(|d| d.name == spec.name)?;
            let entry = snap.header.disks[i].clone();
            (entry.block_size == block_size)
                .then(|| ReferenceManifest::new(repo, *id, entry, snap.roots[i].clone()))
        });
        let plan = plan_disk(
            &spec.name,
            &spec.path.to_string_lossy(),
            source.as_ref(),
            reference.as_ref(),
            explicit,
            &req.delta,
            key_due,
        )?;
        plans.push((block_size, reference, plan));
    }
    Ok(plans)
}

/// The source's changed extents clipped to its size.
fn clipped_extents(source: &dyn BlockSource) -> Option<Vec<(u64, u64)>> {
    source.changes().map(|c| {
        c.extents
            .iter()
            .map(|&(s, e)| (s.min(source.size()), e.min(source.size())))
            .filter(|(s, e)| e > s)
            .collect()
    })
}

/// The base state each delta source's changes apply on, by disk name.
fn base_states<'a>(
    req: &'a BackupRequest,
    sources: &'a [Box<dyn BlockSource>],
) -> Vec<(&'a str, &'a str)> {
    req.disks
        .iter()
        .zip(sources)
        .filter_map(|(d, s)| Some((d.name.as_str(), s.changes()?.base_state.as_str())))
        .collect()
}

/// The reference snapshot (loaded) and whether the operator named it.
fn choose_reference(
    repo: &Repository,
    req: &BackupRequest,
    catalog: &[(SnapshotId, SnapshotHeader)],
    sources: &[Box<dyn BlockSource>],
) -> Result<(Option<(SnapshotId, Snapshot)>, bool)> {
    let newest = || {
        catalog
            .iter()
            .rfind(|(_, h)| h.series == req.series)
            .map(|(id, _)| *id)
    };
    let (id, explicit) = match &req.delta.reference {
        ReferenceChoice::Auto => (newest(), false),
        ReferenceChoice::Latest => {
            let id = newest().ok_or_else(|| {
                Error::Usage(format!(
                    "--reference latest: series {:?} has no snapshot yet; take a full backup first",
                    req.series
                ))
            })?;
            (Some(id), true)
        }
        ReferenceChoice::Snapshot(r) => (Some(repo.resolve(r)?.0), true),
        ReferenceChoice::LatestFull => {
            match plan::differential_base(catalog, &req.series, &base_states(req, sources)) {
                Some(id) => (Some(id), true),
                // No snapshot read in full yet: this backup is the full one.
                None => (None, false),
            }
        }
    };
    let loaded = match id {
        Some(id) => Some((id, repo.load_snapshot(id)?)),
        None => None,
    };
    Ok((loaded, explicit))
}

/// The block size of `spec`'s disk: `--block-size`, else the one the reference (or the
/// series' previous snapshot) used for the disk, else the repository default.
fn block_size_for(
    repo: &Repository,
    req: &BackupRequest,
    spec: &DiskSpec,
    reference: Option<&(SnapshotId, Snapshot)>,
) -> Result<u32> {
    let previous = reference.and_then(|(_, s)| s.header.disks.iter().find(|d| d.name == spec.name));
    match (req.block_size, previous) {
        (Some(bs), Some(d)) if bs != d.block_size => Err(Error::BlockSizeChange {
            series: req.series.clone(),
            disk: spec.name.clone(),
            previous: d.block_size,
        }),
        (Some(bs), _) => Ok(bs),
        (None, Some(d)) => Ok(d.block_size),
        (None, None) => Ok(repo.config().default_block_size),
    }
}

/// The identity entries that record how a disk was backed up (SPEC.md "Delta backups").
fn report_identity(report: &DiskReport) -> Vec<(String, String)> {
    let mut out = vec![(MODE_KEY.to_string(), report.mode.as_str().to_string())];
    if let Some(r) = report.reference {
        out.push(("backup.reference".into(), r.to_hex()));
    }
    if let Some(c) = report.changed_bytes {
        out.push(("backup.changed_bytes".into(), c.to_string()));
    }
    if let Some(d) = &report.drift {
        out.push(("drift.blocks".into(), d.blocks.to_string()));
        if !d.offsets.is_empty() {
            let offsets: Vec<String> = d.offsets.iter().map(u64::to_string).collect();
            out.push(("drift.offsets".into(), offsets.join(",")));
        }
    }
    if report.healed_chunks > 0 {
        out.push(("heal.chunks".into(), report.healed_chunks.to_string()));
    }
    out
}
