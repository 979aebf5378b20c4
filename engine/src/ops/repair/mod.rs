//! Repair from other copies (`tessera repair REPO --from OTHER --from-source DISK=PATH`).
//!
//! 1. The check ([`check`], reading every object) lists every damaged or missing chunk and
//!    page, with the snapshot ranges that need it.
//! 2. Every pack that holds a damaged object (or is missing, or whose footer or trailer is
//!    damaged or disagrees with the index, or was marked for quarantine by an interrupted
//!    repair) is *quarantined*: each intact object the index still places in
//!    it is read with every check and copied verbatim into a new pack; dead objects
//!    (count 0) are dropped; damaged ones are fetched from another copy if possible.
//! 3. Copies: `--from OTHER` (another repository with the same id scheme; objects are read
//!    there with every check and copied verbatim), then `--from-source DISK=PATH` (for a
//!    chunk, the block at each range that needs it is read from the image and hashed; for a
//!    page, the page is recomputed from the image's blocks and hashed). Only a copy whose
//!    digest matches is stored.
//! 0. With `--from OTHER`, a stored snapshot file this catalog does not list (it names
//!    objects this repository lacks, §9) that OTHER catalogues is completed first: what it
//!    names and this repository lacks is copied from OTHER and the file catalogued, through
//!    the one path `sync` uses ([`crate::sync::transfer::transfer`]), so its crash reasoning
//!    is sync's (packs sealed before the snapshot is catalogued).
//! 4. The check runs again; the report says what was repaired (from where), what was
//!    re-homed and quarantined, and what could not be recovered (with its ranges).
//!
//! Crash reasoning, in order:
//! - new packs are sealed (durable) first; a crash here leaves sealed packs the next writer
//!   adopts (objects already indexed keep their entries; an object absent from the index is
//!   adopted with count 0, which the next repair raises to its recomputed count);
//! - an intent file `quarantine/<pack>.intent` is written (fsynced) for each pack to be
//!   quarantined, so a rerun quarantines it even when the index no longer shows damage;
//! - one synced index batch re-points re-homed objects to the new packs, indexes repaired
//!   objects (keeping this repository's reference count), and deletes the entries of
//!   damaged objects that could not be recovered. Before it, the index points at the old
//!   (still present) locations; after it, at the new ones;
//! - each quarantined pack is moved to `quarantine/` (a finished copy, then the delete of the
//!   original: [`crate::store::quarantine`]), then one batch drops those packs from the
//!   catalog, then the intent files are removed. Since the catalog drop comes after the
//!   move, a writer never adopts a pack that is being quarantined (its catalog entry still
//!   exists while its file is in `packs/`).
//!
//! A rerun after a kill at any point finds whatever damage is left and finishes the work.

mod fetch;
pub mod request;
mod round;

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;
use tessera_format::{ObjectKind, PackId, SnapshotId};

use crate::error::{Error, Result};
use crate::ledger::LedgerLock;
use crate::ops::check::{check, record_damage};
use crate::ops::damage::{DamagedObject, DamagedPack};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::serde_ids;
use crate::snapshot_ref::SnapshotRef;
use crate::sources::raw::RawSource;
use crate::store::quarantine;
use crate::sync::sink::{LocalSink, Publisher};
use crate::sync::transfer::transfer;
use crate::sync::{Selection, SyncOptions};

use round::{round, MAX_ROUNDS};

/// Where copies may come from.
pub struct RepairSources<'a> {
    /// Another repository (opened for reading).
    pub other: Option<&'a Repository>,
    /// Source images by disk name.
    pub images: Vec<(String, PathBuf)>,
    /// `--quarantine`: also move stored snapshot files that cannot be catalogued (they name
    /// objects the repository lacks) into quarantine, so that compaction may run again.
    pub quarantine_snapshots: bool,
}

/// One object stored again, and where the intact copy came from.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedObject {
    /// Chunk or page.
    #[serde(serialize_with = "serde_ids::kind")]
    pub kind: ObjectKind,
    /// Its digest.
    #[serde(serialize_with = "serde_ids::hex_digest")]
    pub digest: [u8; 32],
    /// `repository OTHER`, or `source DISK=PATH`.
    pub from: String,
}

/// What the repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Damaged or missing objects found by the first check.
    pub damaged_found: usize,
    /// Objects stored again from another copy.
    pub repaired: Vec<RepairedObject>,
    /// Intact objects copied out of quarantined packs.
    pub rehomed: u64,
    /// Reference counts raised back after an interrupted repair.
    pub counts_restored: u64,
    /// Packs moved to `REPO/quarantine/`.
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub quarantined: Vec<PackId>,
    /// Stored snapshot files that could not be catalogued, moved to `REPO/quarantine/`
    /// (`--quarantine`): the backups they held are lost to this repository.
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub snapshots_quarantined: Vec<SnapshotId>,
    /// Uncatalogued snapshot files that could not be moved (unreadable), with why: only an
    /// operator can remove them (compaction refuses while they exist).
    pub snapshots_not_quarantined: Vec<(String, String)>,
    /// Uncatalogued snapshot files completed from `--from OTHER` and catalogued (step 0).
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub snapshots_completed: Vec<SnapshotId>,
    /// Packs whose file was already gone: dropped from the catalog.
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub missing_packs: Vec<PackId>,
    /// New packs written.
    pub packs_written: usize,
    /// What still cannot be read after the repair, with every snapshot range needing it.
    pub unrecoverable: Vec<DamagedObject>,
    /// Packs whose footer or trailer the first check found damaged (or disagreeing with the
    /// index); each is quarantined, its intact objects re-homed.
    pub damaged_packs_found: Vec<DamagedPack>,
    /// Whether the damage marks shown by `list`/`show` were replaced by the final check's
    /// findings (false while a verify holds the ledger).
    pub damage_marks_updated: bool,
    /// Problems of the final check.
    pub problems: Vec<String>,
}

impl RepairReport {
    /// Whether the repository verified clean at the end.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks that `other` can supply copies to `repo` (digests are comparable, records
/// readable under `repo`'s keys).
pub fn check_compatible(repo: &Repository, other: &Repository) -> Result<()> {
    if repo.config().id_scheme != other.config().id_scheme {
        return Err(Error::IncompatibleRepositories {
            ours: repo.describe(),
            our_scheme: repo.config().id_scheme,
            theirs: other.describe(),
            their_scheme: other.config().id_scheme,
        });
    }
    // Records are copied verbatim: both plain, or both under the same keys.
    crate::sync::shared_keys::check_pairing(
        &other.describe(),
        other.config().encryption.fingerprint(),
        &repo.describe(),
        repo.config().encryption.fingerprint(),
    )
    .map(drop)
}

/// Runs the repair (see module docs). `repo` is open as the writer.
pub fn repair(
    repo: &Repository,
    sources: &RepairSources<'_>,
    progress: &dyn Progress,
) -> Result<RepairReport> {
    if let Some(other) = sources.other {
        check_compatible(repo, other)?;
    }
    let images: Vec<(String, PathBuf, RawSource)> = sources
        .images
        .iter()
        .map(|(disk, path)| Ok((disk.clone(), path.clone(), RawSource::open(path)?)))
        .collect::<Result<_>>()?;
    let mut report = RepairReport::default();
    if sources.quarantine_snapshots {
        // The writer's recovery catalogued every file it could when the repository opened.
        for id in repo.uncatalogued_snapshots()? {
            // A file that cannot be read cannot be copied: reported, the repair goes on.
            match crate::recovery::quarantine_snapshot(repo.backend(), repo.crypto(), id) {
                Ok(()) => report.snapshots_quarantined.push(id),
                Err(e) => report
                    .snapshots_not_quarantined
                    .push((id.to_hex(), e.to_string())),
            }
        }
    }
    if let Some(other) = sources.other {
        report.snapshots_completed = complete_uncatalogued(repo, other, progress)?;
    }
    let mut last = check(repo, true, progress)?;
    report.damaged_found = last.damaged.len();
    let first_packs = last.damaged_packs.clone();
    // Several rounds: chunks named only by a damaged page have no known ranges (nothing
    // can be re-read from a source image for them) until the page itself is repaired.
    for _ in 0..MAX_ROUNDS {
        let pending_intents = quarantine::intents(repo.backend())?;
        if last.is_clean() && pending_intents.is_empty() {
            break;
        }
        let repaired = round(
            repo,
            sources.other,
            &images,
            &last,
            pending_intents,
            &mut report,
            progress,
        )?;
        last = check(repo, true, progress)?;
        if repaired == 0 || last.damaged.is_empty() {
            break;
        }
    }
    // The final check read everything: it replaces the damage marks `list` and `show`
    // display (unless a verify holds the ledger right now; it will record its own findings).
    if let Some(lock) = LedgerLock::try_acquire(repo.local_dir())? {
        let catalogued: Vec<SnapshotId> = repo
            .index()
            .snapshots()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        record_damage(repo, &lock, &last, catalogued.clone(), catalogued)?;
        report.damage_marks_updated = true;
    }
    report.damaged_packs_found = first_packs;
    report.unrecoverable = last.damaged;
    report.problems = last.problems;
    Ok(report)
}

/// Step 0: the uncatalogued snapshot files of `repo` that `other` catalogues, completed
/// from `other` and catalogued. Returns their ids.
fn complete_uncatalogued(
    repo: &Repository,
    other: &Repository,
    progress: &dyn Progress,
) -> Result<Vec<SnapshotId>> {
    let theirs: HashSet<SnapshotId> = other
        .index()
        .snapshots()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let wanted: Vec<SnapshotRef> = repo
        .uncatalogued_snapshots()?
        .into_iter()
        .filter(|id| theirs.contains(id))
        .map(|id| SnapshotRef::Prefix(id.to_hex()))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let selection = Selection {
        snapshots: wanted,
        ..Selection::default()
    };
    let mut sink = LocalSink::new(repo, Publisher::Operator);
    let copied = transfer(
        other,
        &mut sink,
        &selection,
        &SyncOptions {
            every_page: true,
            ..SyncOptions::default()
        },
        progress,
    )?;
    Ok(copied.snapshots_copied)
}
