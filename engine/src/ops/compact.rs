//! Pack compaction: reclaiming the space of unreferenced objects.
//!
//! Plan: one pass over the index sums, per pack, the stored bytes of the objects that are
//! kept *and* located in that pack; packs whose unused fraction exceeds the threshold are
//! selected. An object is kept when it is referenced, or dead for less than the grace
//! period (its count dropped to 0, or a push sent it again, recently: a writer may be about
//! to publish a snapshot naming it; SPEC §13 "Dead objects"). Apply: the objects the **index** places in selected packs (never the
//! packs' own footers, which may be damaged or incomplete) are taken one pack at a time: the
//! live ones are read, fully checked, and copied verbatim (no recompression) into new packs
//! through the [`PackSink`]; when a new pack is sealed, one index batch points the moved
//! objects at their new locations, deletes the entries of dead objects, and moves the
//! emptied old packs to the doomed list. Doomed pack files are deleted once no reader holds
//! a lease (see `readers.rs`), now or by a later writer; in a store several machines share,
//! they get doom records instead and are deleted by a compaction at least the grace period
//! later (see `doomed.rs`).
//!
//! Crash reasoning: before a batch commits, the index points at the old packs, which still
//! exist; a new pack sealed but not committed is adopted by the next writer as a pack whose
//! objects all live elsewhere, and a later compaction removes it. After the batch, the new
//! locations are durable and the old packs are only deleted once unused. At no instant is an
//! object without a valid location. A pack is doomed only when every live object the index
//! places in it has been copied and checked: a damaged (or unreadable) live object keeps its
//! whole pack in place, reported (exit 4), for `repair` to deal with.

use std::collections::{HashMap, HashSet};

use tessera_format::pack::{PACK_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN};
use tessera_format::{ObjectKind, PackId, SnapshotId};

use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::lock::WriterLock;
use crate::ops::immutable::{self, Policy};
use crate::progress::Progress;
use crate::recovery::delete_doomed_packs;
use crate::repo::Repository;
use crate::store::pack_sink::PackSink;
use crate::store::reader::read_stored;

/// How much of a pack is in use.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PackUsage {
    /// The pack.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub pack: PackId,
    /// File size.
    pub size: u64,
    /// Stored bytes (with record headers and footer entries) of the objects located here
    /// that compaction keeps: referenced, or dead within the grace period.
    pub live_bytes: u64,
    /// Number of those objects.
    pub live_objects: u64,
}

impl PackUsage {
    /// Fraction of the file not used by live objects.
    pub fn unused_fraction(&self) -> f64 {
        if self.size == 0 {
            return 1.0;
        }
        1.0 - (self.live_bytes + (PACK_HEADER_LEN + TRAILER_LEN) as u64) as f64 / self.size as f64
    }
}

/// What compaction will do.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompactPlan {
    /// Packs to rewrite.
    pub packs: Vec<PackUsage>,
    /// Packs in the repository.
    pub total_packs: usize,
    /// Live bytes that will be copied.
    pub bytes_to_move: u64,
    /// Bytes that will be freed.
    pub bytes_to_free: u64,
    /// Packs left alone because they were indexed within the grace period, or since the
    /// oldest backup still running started (they may be its own).
    pub packs_in_grace: usize,
    /// Dead objects in the selected packs that are kept (copied) because they died within
    /// the grace period.
    pub dying_objects: u64,
    /// Objects dead since this time (Unix µs) or earlier, and packs indexed then or
    /// earlier, may be reclaimed: the plan's time minus the grace period.
    pub young_after_us: i64,
    /// The grace period, in microseconds: also how long a doomed pack of a shared store
    /// stays before it is deleted ([`crate::doomed`]).
    pub grace_us: i64,
    /// Packs that would be selected but are retained (immutable, SPEC §28) past now: left
    /// alone, never rewritten nor deleted, until their retention passes.
    pub packs_locked: usize,
}

/// How long a newly indexed pack is left alone by default: its objects may belong to a
/// push or an interrupted backup that has not published yet (SPEC §13).
pub const DEFAULT_GRACE_US: i64 = 7 * 24 * 3600 * 1_000_000;

// An incomplete upload of a shared store is aborted only once older than the default grace:
// operations within the grace contract may still be uploading younger ones.
const _: () = assert!(
    crate::storage::s3::STALE_UPLOAD.as_secs().cast_signed() * 1_000_000 >= DEFAULT_GRACE_US
);

/// What compaction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompactReport {
    /// Packs rewritten.
    pub packs_rewritten: usize,
    /// New packs written.
    pub packs_written: usize,
    /// Stored bytes moved.
    pub bytes_moved: u64,
    /// Old packs deleted now (others wait for running readers to finish; in a shared store,
    /// for the grace period after their doom record).
    pub packs_deleted: usize,
    /// Doom records stored for the packs emptied now (shared stores).
    pub packs_doomed: usize,
    /// Packs skipped because a live object in them is damaged.
    pub damaged: Vec<String>,
    /// Packs left in place because a writer referenced one of their dead objects again
    /// between the plan and the step that would have doomed them (their live objects were
    /// re-pointed; a later compaction takes the rest).
    pub packs_revived: usize,
    /// Commits made (each under the writer lock for a moment).
    pub steps: usize,
    /// Why expired doomed packs of a shared store were not deleted at the end, if so.
    pub deletion_deferred: Option<String>,
}

/// What `tessera compact` did: the plan, and unless `dry_run` what applying it did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactOutcome {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The plan.
    pub plan: CompactPlan,
    /// What applying it did (`None` in a dry run).
    pub report: Option<CompactReport>,
}

impl CompactOutcome {
    /// Whether no pack had to be left alone because of damage.
    pub fn is_clean(&self) -> bool {
        self.report.as_ref().is_none_or(|r| r.damaged.is_empty())
    }
}

/// The shortest grace period a compaction of a repository other machines share accepts
/// without `allow_short_grace` ([`compact`]): every operation on any machine must finish
/// within the grace, or packs it uses are deleted under it (`doomed.rs`).
pub const MIN_SHARED_GRACE_US: i64 = 24 * 3600 * 1_000_000;

/// Plans compaction at `max_unused` (0.0..=1.0), leaving packs younger than `grace_us`
/// alone (see [`plan_compact_with_grace`]), and applies it in steps unless `dry_run`
/// (letting go of the writer lock between them: SPEC.md §8). `repo` is open as the
/// writer. In a shared store, a grace shorter than [`MIN_SHARED_GRACE_US`] is
/// refused unless `allow_short_grace` (the operator's word that no other machine runs long
/// operations on it); a dry run changes nothing and is never refused.
pub fn compact(
    repo: Repository,
    max_unused: f64,
    grace_us: i64,
    allow_short_grace: bool,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<CompactOutcome> {
    if repo.storage().shared && !dry_run && !allow_short_grace && grace_us < MIN_SHARED_GRACE_US {
        return Err(Error::Refused {
            reason: format!(
                "a grace period of {} s in a repository other machines share: every backup, restore, export or verify on any of them must finish within it, or the packs it uses are deleted under it. Use --grace 1d or more, or give --allow-short-grace if no other machine uses {} for longer",
                grace_us / 1_000_000,
                repo.describe()
            ),
        });
    }
    let plan = plan_compact_with_grace(&repo, max_unused, grace_us)?;
    let report = if dry_run {
        None
    } else {
        Some(apply_in_steps(repo, &plan, progress)?)
    };
    Ok(CompactOutcome {
        dry_run,
        plan,
        report,
    })
}

/// Rewrites the packs of `plan` in steps (SPEC.md §8): under the compaction lock for its
/// whole run, it finds where the index places their objects while `repo` is still the
/// writer, lets go of the writer lock, copies the live objects into new packs without it,
/// and takes it again only to commit each sealed pack (with the re-checks of
/// [`Mover::commit`]) and at the end to delete what it doomed.
fn apply_in_steps(
    repo: Repository,
    plan: &CompactPlan,
    progress: &dyn Progress,
) -> Result<CompactReport> {
    let _compacting = WriterLock::acquire_compaction(repo.local_dir())?;
    refuse_uncatalogued(&repo)?;
    let placed = placement(&repo, plan)?;
    let identity = repo.index().identity()?;
    let view = repo.step_down()?;
    let committer = Committer::PerStep {
        view: &view,
        current: None,
        deleted: 0,
        recorded: 0,
    };
    run_steps(&view, committer, identity, plan, placed, progress)
}

/// Refuses while stored snapshot files are not catalogued (see
/// [`crate::recovery::uncatalogued_snapshots`]): the objects they name are at count 0.
///
/// In a store several machines share, other machines' snapshot files appear at any time:
/// one stored after this open's catch-up listed the snapshots would look uncatalogued here
/// without being damaged (doom records and their rescue cover it, SPEC §13). There, only
/// the files the catch-up listed and could not catalogue count.
fn refuse_uncatalogued(repo: &Repository) -> Result<()> {
    let ids: Vec<String> = if repo.storage().shared {
        let r = &repo.recovery;
        let mut ids: Vec<String> = r
            .snapshots_incomplete
            .iter()
            .chain(&r.snapshots_unreadable)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    } else {
        repo.uncatalogued_snapshots()?
            .iter()
            .map(SnapshotId::to_hex)
            .collect()
    };
    match ids.first() {
        None => Ok(()),
        Some(first) => Err(Error::UncataloguedSnapshots {
            count: ids.len(),
            first: first.clone(),
            more: if ids.len() > 1 { ", ..." } else { "" },
        }),
    }
}

/// Selects packs whose unused fraction exceeds `max_unused` (0.0..=1.0), with no grace
/// period (see [`plan_compact_with_grace`]).
pub fn plan_compact(repo: &Repository, max_unused: f64) -> Result<CompactPlan> {
    plan_compact_with_grace(repo, max_unused, 0)
}

/// Selects packs whose unused fraction exceeds `max_unused` (0.0..=1.0), leaving alone
/// every pack the index learnt of less than `grace_us` ago: objects of a push or of an
/// interrupted backup are unreferenced (count 0) until their snapshot is published, and
/// must not be reclaimed under it.
pub fn plan_compact_with_grace(
    repo: &Repository,
    max_unused: f64,
    grace_us: i64,
) -> Result<CompactPlan> {
    let young_after = crate::time::now_us().saturating_sub(grace_us);
    // Packs indexed since the oldest running backup started may be its own, sealed and
    // adopted by a writer's recovery but not yet published (SPEC.md §8): whatever the grace,
    // they are left alone while it runs. (The lease is created before the backup's open
    // adopts anything and before it seals anything; file times are the kernel's coarse
    // clock, never after the event.)
    let running_since = crate::leases::oldest_start_us(repo.local_dir())?;
    let mut packs_in_grace = 0;
    let mut dying_by_pack: HashMap<PackId, u64> = HashMap::new();
    let mut usage: HashMap<PackId, PackUsage> = repo
        .index()
        .packs()?
        .into_iter()
        .filter(|(_, e)| {
            let young = (grace_us > 0 && e.indexed_at_us > young_after)
                || running_since.is_some_and(|since| e.indexed_at_us >= since);
            packs_in_grace += usize::from(young);
            !young
        })
        .map(|(pack, e)| {
            (
                pack,
                PackUsage {
                    pack,
                    size: e.size,
                    live_bytes: 0,
                    live_objects: 0,
                },
            )
        })
        .collect();
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        repo.index().for_each_object(kind, |_, e| {
            if !e.reclaimable(young_after) {
                if let Some(u) = usage.get_mut(&e.pack) {
                    u.live_bytes += u64::from(e.stored_len) + 2 * RECORD_HEADER_LEN as u64;
                    u.live_objects += 1;
                    if e.refcount == 0 {
                        *dying_by_pack.entry(e.pack).or_default() += 1;
                    }
                }
            }
            Ok(())
        })?;
    }
    let total_packs = usage.len() + packs_in_grace;
    let mut packs: Vec<PackUsage> = usage
        .into_values()
        .filter(|u| u.unused_fraction() > max_unused)
        .collect();
    let packs_locked = leave_locked(repo, &mut packs)?;
    packs.sort_by_key(|u| u.pack);
    let bytes_to_move = packs.iter().map(|u| u.live_bytes).sum();
    let bytes_to_free = packs
        .iter()
        .map(|u| u.size.saturating_sub(u.live_bytes))
        .sum();
    let dying_objects = packs
        .iter()
        .filter_map(|u| dying_by_pack.get(&u.pack))
        .sum();
    Ok(CompactPlan {
        packs,
        total_packs,
        bytes_to_move,
        bytes_to_free,
        packs_in_grace,
        dying_objects,
        young_after_us: young_after,
        grace_us,
        packs_locked,
    })
}

/// Drops from `packs` those retained past now (SPEC §28): compaction never tries to delete
/// an immutable object. Returns how many. In a store several machines share, now is the
/// store's clock.
fn leave_locked(repo: &Repository, packs: &mut Vec<PackUsage>) -> Result<usize> {
    if packs.is_empty() || immutable::effective_policy(repo.index(), repo.backend())?.is_none() {
        return Ok(0);
    }
    let now = if repo.storage().shared {
        repo.backend().clock_us()?
    } else {
        crate::time::now_us()
    };
    let before = packs.len();
    let mut kept = Vec::with_capacity(before);
    for usage in packs.drain(..) {
        if immutable::pack_locked(repo, usage.pack, now)?.is_none() {
            kept.push(usage);
        }
    }
    *packs = kept;
    Ok(before - packs.len())
}

/// An object the index places in a pack: its kind, digest and entry (as planned).
type Placed = (ObjectKind, [u8; 32], ObjectEntry);

/// The objects the index places in the packs of `plan`, per pack, in pack order.
fn placement(repo: &Repository, plan: &CompactPlan) -> Result<HashMap<PackId, Vec<Placed>>> {
    let selected: HashSet<PackId> = plan.packs.iter().map(|p| p.pack).collect();
    let mut placed: HashMap<PackId, Vec<Placed>> = HashMap::new();
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        repo.index().for_each_object(kind, |digest, entry| {
            if selected.contains(&entry.pack) {
                placed
                    .entry(entry.pack)
                    .or_default()
                    .push((kind, digest, entry));
            }
            Ok(())
        })?;
    }
    for objects in placed.values_mut() {
        objects.sort_by_key(|(_, _, e)| e.offset);
    }
    Ok(placed)
}

/// Where a compaction commits its steps.
enum Committer<'r> {
    /// The caller's writer, held for the whole run.
    Held(&'r Repository),
    /// A writer taken from `view` ([`Repository::publisher`]) for each step and let go after
    /// it, so that backups publish between steps (SPEC.md §8).
    PerStep {
        view: &'r Repository,
        current: Option<Box<Repository>>,
        /// What the recoveries of the step writers' opens did with doomed packs (among
        /// them this compaction's own, doomed at earlier steps): deleted, doom records
        /// stored.
        deleted: usize,
        recorded: usize,
    },
}

impl Committer<'_> {
    /// The writer, taken now if need be; `own` are packs this compaction sealed since the
    /// last step (not counted as adopted by the writer's recovery).
    fn writer(&mut self, own: &[PackId]) -> Result<&Repository> {
        match self {
            Self::Held(repo) => Ok(repo),
            Self::PerStep {
                view,
                current,
                deleted,
                recorded,
            } => {
                // One process cannot take the lock (nor RocksDB's) twice: let go first.
                *current = None;
                let writer = view.publisher(own, &|_| {})?;
                *deleted += writer.recovery.doomed_packs_deleted;
                *recorded += writer.recovery.doom_records_stored;
                Ok(current.insert(Box::new(writer)))
            }
        }
    }

    /// Lets go of a writer taken for a step.
    fn release(&mut self) {
        if let Self::PerStep { current, .. } = self {
            *current = None;
        }
    }
}

struct Mover<'r> {
    /// Where objects are read from and new packs written to.
    repo: &'r Repository,
    committer: Committer<'r>,
    /// The identity of the index the plan was made on: a rebuilt index places objects anew.
    identity: Vec<u8>,
    /// Dead objects dead since this time or earlier are dropped; younger deaths are copied.
    young_after_us: i64,
    sink: PackSink<'r, Placed>,
    /// Dead objects (as planned) whose entries are to be deleted.
    dead: Vec<Placed>,
    /// Old packs whose planned objects are all in the sink or dead since the last commit.
    emptied: Vec<PackId>,
    /// The immutability policy, if any: a new pack gets the retention of those it empties.
    policy: Option<Policy>,
    report: CompactReport,
}

impl Mover<'_> {
    /// Moves the objects the index places in `pack` and compaction keeps (referenced, or
    /// dead within the grace) into the sink; keeps the pack (and moves nothing of it) if
    /// any of them cannot be read intact.
    fn drain(&mut self, pack: PackId, objects: Vec<Placed>) -> Result<()> {
        let mut copies = Vec::new();
        let mut dead = Vec::new();
        for placed in objects {
            let (kind, digest, entry) = placed;
            if entry.reclaimable(self.young_after_us) {
                dead.push(placed);
                continue;
            }
            match read_stored(
                self.repo.backend(),
                self.repo.crypto(),
                kind,
                &digest,
                &entry,
            ) {
                Ok((info, stored)) => copies.push((info, stored, placed)),
                Err(e) => {
                    self.report.damaged.push(format!("pack {pack} kept: {e}"));
                    return Ok(());
                }
            }
        }
        for (info, stored, placed) in copies {
            self.sink.append(&info, &stored, placed)?;
            self.report.bytes_moved += stored.len() as u64;
        }
        self.dead.extend(dead);
        self.emptied.push(pack);
        if self.sink.is_full() {
            self.commit()?;
        }
        Ok(())
    }

    /// Seals the new pack (without the writer lock), then, as the writer, re-checks what
    /// the plan saw and commits at once: new locations with the counts the index holds
    /// *now*, the deletion of objects still dead, and the doom of the old packs all of whose
    /// planned objects are settled (SPEC.md §8, "Compaction in steps").
    fn commit(&mut self) -> Result<()> {
        let sealed = self.sink.seal()?;
        if sealed.is_none() && self.dead.is_empty() && self.emptied.is_empty() {
            return Ok(());
        }
        let own: Vec<PackId> = sealed.iter().map(|s| s.pack.id).collect();
        let stepping = matches!(self.committer, Committer::PerStep { .. });
        let writer = self.committer.writer(&own)?;
        let index = writer.index();
        if index.identity()? != self.identity {
            return Err(Error::Refused {
                reason: "the index was rebuilt while this compaction ran: what it planned no longer holds. Nothing of its last step was committed; run `tessera compact` again".into(),
            });
        }
        // A snapshot file a crashed local writer left uncatalogued names objects at count 0
        // (as at the plan). In a shared store other machines' snapshots appear at any time:
        // this open's catch-up catalogued those it listed, and doom records with their
        // rescue cover the rest (§13 "Shared repositories"). A compaction that holds the
        // writer lock throughout (`apply_compact`) checked once: no writer could run since.
        if stepping && !writer.storage().shared {
            refuse_uncatalogued(writer)?;
        }
        let mut batch = index.batch();
        // Old packs one of whose planned objects is still there and must stay (a dead
        // object a writer referenced again meanwhile): not doomed now.
        let mut unsettled: HashSet<PackId> = HashSet::new();
        if let Some(sealed) = sealed {
            self.report.packs_written += 1;
            if let Some(policy) = &self.policy {
                immutable::carry_over(writer, &mut batch, sealed.pack.id, &self.emptied, policy)?;
            }
            batch.put_pack(sealed.pack.id, sealed.pack.catalog_entry());
            for (fe, (kind, digest, planned)) in sealed.pack.entries.iter().zip(&sealed.tags) {
                // Still where the plan found it: re-point it, with its count as of now. Gone
                // or elsewhere (re-pointed by a repair or a key backup's heal): the copy is
                // left unindexed, space for a later compaction.
                if let Some(now) = index.get_object(*kind, digest)? {
                    if now.pack == planned.pack {
                        batch.put_object(*kind, digest, &now.relocated(sealed.pack.id, fe));
                    }
                }
            }
        }
        for (kind, digest, planned) in self.dead.drain(..) {
            if let Some(now) = index.get_object(kind, &digest)? {
                if now.pack == planned.pack {
                    if now.reclaimable(self.young_after_us) {
                        batch.delete_object(kind, &digest);
                    } else {
                        unsettled.insert(planned.pack);
                    }
                }
            }
        }
        let doomed_at = index.doom_epoch()? + 1;
        let mut dooms = 0;
        for pack in self.emptied.drain(..) {
            if unsettled.contains(&pack) {
                self.report.packs_revived += 1;
            } else {
                batch.doom_pack(pack, doomed_at);
                dooms += 1;
            }
        }
        if dooms > 0 {
            batch.set_doom_epoch(doomed_at);
        }
        index.commit(batch)?;
        self.report.packs_rewritten += dooms;
        self.report.steps += 1;
        self.committer.release();
        Ok(())
    }
}

/// Rewrites the packs of `plan` while the caller holds the writer lock throughout (opened
/// as writer). [`compact`] instead lets go of it between steps.
pub fn apply_compact(
    repo: &Repository,
    plan: &CompactPlan,
    progress: &dyn Progress,
) -> Result<CompactReport> {
    refuse_uncatalogued(repo)?;
    let placed = placement(repo, plan)?;
    let identity = repo.index().identity()?;
    run_steps(
        repo,
        Committer::Held(repo),
        identity,
        plan,
        placed,
        progress,
    )
}

/// Copies, commits in steps through `committer`, then deletes or records what is doomed.
fn run_steps(
    repo: &Repository,
    committer: Committer<'_>,
    identity: Vec<u8>,
    plan: &CompactPlan,
    mut placed: HashMap<PackId, Vec<Placed>>,
    progress: &dyn Progress,
) -> Result<CompactReport> {
    let mut mover = Mover {
        repo,
        committer,
        identity,
        young_after_us: plan.young_after_us,
        sink: PackSink::new(repo.backend(), repo.pack_target()),
        dead: Vec::new(),
        emptied: Vec::new(),
        policy: immutable::effective_policy(repo.index(), repo.backend())?,
        report: CompactReport::default(),
    };
    progress.start("compact", plan.packs.iter().map(|p| p.size).sum());
    for usage in &plan.packs {
        let objects = placed.remove(&usage.pack).unwrap_or_default();
        mover.drain(usage.pack, objects)?;
        progress.advance(usage.size);
    }
    mover.commit()?;
    progress.finish();
    let mut report = mover.report;
    let mut committer = mover.committer;
    let writer = committer.writer(&[])?;
    let storage = writer.storage();
    if storage.shared {
        report.packs_doomed = crate::doomed::publish(storage, writer.index())?;
        let as_of = writer.catalogued_as_of_us().ok_or_else(|| {
            Error::Internal(
                "a compaction of a shared store opened without the store's clock".into(),
            )
        })?;
        // The deletion trusts that every snapshot stored before `as_of` is catalogued (its
        // doomed packs rescued): not so when this open's catch-up could not read one.
        let r = &writer.recovery;
        let unsure = r.snapshots_unreadable.len() + r.snapshots_incomplete.len();
        if unsure == 0 {
            report.packs_deleted =
                crate::doomed::delete_expired(storage, writer.index(), plan.grace_us, as_of)?;
        } else {
            report.deletion_deferred = Some(format!(
                "{unsure} stored snapshot files could not be catalogued when the compaction ended (unreadable or incomplete): no doomed pack was deleted; a later compaction deletes them"
            ));
        }
    } else {
        refuse_uncatalogued(writer)?;
        report.packs_deleted = delete_doomed_packs(storage, writer.index())?;
    }
    if let Committer::PerStep {
        deleted, recorded, ..
    } = committer
    {
        report.packs_deleted += deleted;
        report.packs_doomed += recorded;
    }
    Ok(report)
}
