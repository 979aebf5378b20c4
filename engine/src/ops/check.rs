//! Consistency check: every catalogued snapshot decodes and matches its file, every page and
//! chunk it references exists, the stored reference counts equal counts recomputed from
//! scratch, and (with `read_data`) every live object reads back intact.
//!
//! Every pack's footer and trailer are checked against the pack's layout, its catalog entry
//! and the index (`store::pack_scan::check_footer`, SPEC §11a): a damaged footer is *pack
//! damage* even when every record is intact, and repair rewrites such packs.
//!
//! This is the verification used by `tessera verify` and by the tests after crashes. Damaged
//! or missing objects are mapped to every snapshot range that needs them (`damage.rs`).
//! A run with the ledger also prunes the ledger and updates the damage marks that `list` and
//! `show` display (`crate::ledger`).
//!
//! [`verify`] adds to this what `tessera verify` needs: a scope (only the objects some
//! snapshots reference are read), a seeded random sample of that scope, and the
//! verification ledger (`crate::ledger`): objects read back intact are recorded there, and
//! objects verified recently (at their current location) can be skipped. [`check`] is
//! [`verify`] with no scope, no sample and no ledger.

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use tessera_format::{ObjectKind, PackId, SnapshotId};

use crate::damage_marks::{update_damage_marks, DamageFindings};
use crate::error::{ErrorKind, Result};
use crate::index::ObjectEntry;
use crate::ledger::{Ledger, LedgerLock};
use crate::ops::check_uncatalogued::judge_uncatalogued;
use crate::ops::damage::{damage_marks, map_damage, BadKey, DamagedObject, DamagedPack};
use crate::ops::publish::applied_by_publishing;
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::Repository;
use crate::serde_ids;
use crate::store::pack_scan::check_footer;
use crate::store::reader::{check_fetched, fetch_records, read_object};

/// What the check found. `is_clean` tells whether the repository is consistent.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Objects read back (with `read_data`).
    pub objects_read: u64,
    /// Stored bytes read back.
    pub bytes_read: u64,
    /// Problems, one line each.
    pub problems: Vec<String>,
    /// Damaged or missing objects, each with every snapshot range that needs it.
    pub damaged: Vec<DamagedObject>,
    /// Packs whose footer or trailer is damaged or disagrees with the index.
    pub damaged_packs: Vec<DamagedPack>,
    /// Catalogued snapshots whose file is unreadable or differs from its catalog entry.
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub damaged_snapshot_files: Vec<SnapshotId>,
    /// Stored snapshot files the catalog does not list: sound files naming objects the
    /// repository lacks or cannot read (the writer's recovery left them in place), or files
    /// unreadable now. Compaction refuses while any exists.
    #[serde(serialize_with = "serde_ids::hex_list")]
    pub uncatalogued_snapshot_files: Vec<SnapshotId>,
    /// What was in scope of the read.
    pub scope: ScopeReport,
    /// The sample drawn from the scope, if any.
    pub sample: Option<SampleReport>,
    /// Objects skipped because the ledger says they were verified recently.
    pub objects_skipped_recently_verified: u64,
    /// Their stored bytes.
    pub bytes_skipped_recently_verified: u64,
    /// Objects recorded as verified in the ledger by this run.
    pub ledger_recorded: u64,
    /// Ledger entries of objects no longer in the index, removed by this run.
    pub ledger_pruned: u64,
    /// Why this run's verification record (SPEC §11a) could not be written, if it could
    /// not: the record is history for the dashboard, so the run's findings stand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_record_error: Option<String>,
}

/// The scope of a verification run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScopeReport {
    /// The snapshots whose objects were in scope; `None` = every live object.
    #[serde(serialize_with = "serde_ids::hex_list_opt")]
    pub snapshots: Option<Vec<SnapshotId>>,
    /// Live objects in scope.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// The random sample of a verification run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleReport {
    /// Seed of the random choice (repeat the run with `--seed`).
    pub seed: u64,
    /// Requested share of the candidate objects (0..=1), if the sample was given as a share.
    pub share: Option<f64>,
    /// Requested stored bytes, if the sample was given as an amount of data.
    pub bytes: Option<u64>,
    /// Objects that were candidates (in scope, not skipped as recently verified).
    pub candidates: u64,
    /// Objects chosen.
    pub objects_chosen: u64,
    /// SHA-256 (hex) of the chosen objects' kinds and digests, in index order: equal
    /// fingerprints mean the same objects were chosen.
    pub fingerprint: String,
}

/// How large a sample to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleSize {
    /// A share (0..=1) of the candidate objects, rounded up.
    Share(f64),
    /// Objects until this many stored bytes are reached (the last one may cross it).
    Bytes(u64),
}

/// What a verification run does beyond the structural checks.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Read objects back (false = `--metadata-only`).
    pub read_data: bool,
    /// Only objects these snapshots reference (`None` = every live object).
    pub scope: Option<Vec<SnapshotId>>,
    /// A random sample of the candidates, with its seed.
    pub sample: Option<(SampleSize, u64)>,
    /// Skip objects the ledger says were verified within this many microseconds.
    pub skip_verified_within_us: Option<i64>,
    /// Open the ledger (record verified objects; needed for skipping).
    pub use_ledger: bool,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the check (see module docs): every live object, no ledger.
pub fn check(repo: &Repository, read_data: bool, progress: &dyn Progress) -> Result<CheckReport> {
    verify(
        repo,
        &VerifyOptions {
            read_data,
            ..VerifyOptions::default()
        },
        progress,
    )
}

/// Adds what a publication in steps running beside this view has raised already (see
/// [`crate::index::Publishing`]) to the counts the catalogued snapshots give.
fn add_publishing(repo: &Repository, expected: &mut crate::refcount::ExpectedCounts) -> Result<()> {
    for (chunk, n) in applied_by_publishing(repo.index(), repo.backend(), repo.crypto())? {
        *expected.chunks.entry(chunk).or_default() += n;
    }
    Ok(())
}

/// Objects are read and recorded in the ledger in groups of this many.
const GROUP: usize = 4096;

/// Runs a verification (see module docs). The structural checks (snapshot files, reference
/// counts) always cover the whole repository; the scope, sample and ledger only limit which
/// objects are read back.
pub fn verify(
    repo: &Repository,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let ledger = if opts.read_data && opts.use_ledger {
        Some(Ledger::open(repo.local_dir(), repo.config().repo_id)?)
    } else {
        None
    };
    let mut report = CheckReport::default();
    let (snapshots, catalogued) = load_catalogued(repo, &mut report)?;
    judge_uncatalogued(repo, &mut report)?;
    let mut expected = expected_counts_of(
        repo.index(),
        repo.backend(),
        repo.crypto(),
        snapshots.iter().map(|(_, s)| s),
    )?;
    add_publishing(repo, &mut expected)?;
    let mut bad = unreadable_pages(repo, &expected.unreadable_pages, &mut report)?;
    let mut indexed: HashSet<BadKey> = HashSet::new();
    let mut live: Vec<Live> = Vec::new();
    let mut dead: Vec<Live> = Vec::new();
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        let mut seen = 0u64;
        repo.index().for_each_object(kind, |digest, entry| {
            let want = expected.count(kind, digest);
            if want > 0 {
                seen += 1;
                indexed.insert((kind, digest));
            }
            if want != entry.refcount {
                report.problems.push(format!(
                    "{kind:?} {}: reference count {} but {want} references exist",
                    hex::encode(digest),
                    entry.refcount
                ));
            }
            if entry.refcount > 0 || want > 0 {
                live.push((kind, digest, entry));
            } else {
                dead.push((kind, digest, entry));
            }
            Ok(())
        })?;
        let referenced = match kind {
            ObjectKind::Page => expected.pages.len(),
            ObjectKind::Chunk => expected.chunks.len(),
        } as u64;
        if seen < referenced {
            report.problems.push(format!(
                "{} referenced {kind:?} objects are not in the index",
                referenced - seen
            ));
            let referenced: Vec<[u8; 32]> = match kind {
                ObjectKind::Page => expected.pages.keys().map(|d| d.0).collect(),
                ObjectKind::Chunk => expected.chunks.keys().map(|d| d.0).collect(),
            };
            for digest in referenced
                .into_iter()
                .filter(|d| !indexed.contains(&(kind, *d)))
            {
                if !bad.iter().any(|(k, _)| *k == (kind, digest)) {
                    bad.push((
                        (kind, digest),
                        damaged(
                            kind,
                            digest,
                            None,
                            "missing from the index and the packs".into(),
                        ),
                    ));
                }
            }
        }
    }
    report.damaged_packs = check_footers(repo, &live, &dead)?;
    drop(dead);
    report.problems.extend(
        report
            .damaged_packs
            .iter()
            .map(|p| format!("pack {}: {}", p.pack, p.reason)),
    );
    if opts.read_data {
        let live = select(repo, opts, &snapshots, ledger.as_ref(), live, &mut report)?;
        let unreadable = read_back(repo, &live, ledger.as_ref(), progress, &mut report)?;
        report
            .problems
            .extend(unreadable.iter().map(|(_, d)| d.reason.clone()));
        for (key, obj) in unreadable {
            if !bad.iter().any(|(k, _)| *k == key) {
                bad.push((key, obj));
            }
        }
    }
    if !bad.is_empty() {
        report.damaged = map_damage(repo, &snapshots, bad);
    }
    if let Some(ledger) = &ledger {
        update_ledger(repo, ledger, opts, catalogued, &mut report)?;
    }
    Ok(report)
}

/// After a run with the ledger: prunes the entries of objects gone from the index and
/// updates the damage marks. A sampled run cannot vouch for a snapshot: it only adds marks.
fn update_ledger(
    repo: &Repository,
    ledger: &Ledger,
    opts: &VerifyOptions,
    catalogued: Vec<SnapshotId>,
    report: &mut CheckReport,
) -> Result<()> {
    report.ledger_pruned = ledger.prune(repo.index())?;
    let checked: Vec<SnapshotId> = match (&opts.sample, &opts.scope) {
        (Some(_), _) => Vec::new(),
        (None, Some(ids)) => ids.clone(),
        (None, None) => catalogued.clone(),
    };
    record_damage(repo, ledger.lock(), report, checked, catalogued)?;
    let record =
        crate::verify_log::VerifyRecord::of(report, opts, repo.config().encryption.is_encrypted());
    report.verify_record_error = crate::verify_log::write_verify_record(repo.backend(), &record)
        .err()
        .map(|e| e.to_string());
    Ok(())
}

/// The pages the count recomputation could not read, as damaged objects.
fn unreadable_pages(
    repo: &Repository,
    pages: &[(tessera_format::PageDigest, String)],
    report: &mut CheckReport,
) -> Result<Vec<(BadKey, DamagedObject)>> {
    let mut bad = Vec::new();
    for (page, reason) in pages {
        report.problems.push(format!("page {page}: {reason}"));
        let entry = repo.index().get_object(ObjectKind::Page, page.as_bytes())?;
        bad.push((
            (ObjectKind::Page, page.0),
            damaged(ObjectKind::Page, page.0, entry.as_ref(), reason.clone()),
        ));
    }
    Ok(bad)
}

/// Snapshots loaded from their files.
type Loaded = Vec<(SnapshotId, tessera_format::Snapshot)>;

/// Loads every catalogued snapshot, reporting those whose file is unreadable or differs from
/// its catalog entry. Returns the loaded ones and every catalogued id.
fn load_catalogued(
    repo: &Repository,
    report: &mut CheckReport,
) -> Result<(Loaded, Vec<SnapshotId>)> {
    let mut snapshots = Vec::new();
    let catalog = repo.index().snapshots()?;
    let catalogued: Vec<SnapshotId> = catalog.iter().map(|(id, _)| *id).collect();
    for (id, header) in catalog {
        match repo.load_snapshot(id) {
            Ok(s) if s.header == header => snapshots.push((id, s)),
            Ok(_) => {
                report.problems.push(format!(
                    "snapshot {id}: catalog entry differs from the snapshot file"
                ));
                report.damaged_snapshot_files.push(id);
            }
            Err(e) => {
                report.problems.push(format!("snapshot {id}: {e}"));
                report.damaged_snapshot_files.push(id);
            }
        }
    }
    report.snapshots = snapshots.len();
    Ok((snapshots, catalogued))
}

/// Updates the damage marks (`damage/<snapshot id>`, see `crate::damage_marks`) with what `report` found:
/// snapshots it found damaged are marked, the `checked` ones it found clean are cleared.
/// Called by verify (holding the ledger) and by repair after its final check.
pub fn record_damage(
    repo: &Repository,
    lock: &LedgerLock,
    report: &CheckReport,
    checked: impl IntoIterator<Item = SnapshotId>,
    catalogued: impl IntoIterator<Item = SnapshotId>,
) -> Result<()> {
    let findings = DamageFindings {
        damaged: damage_marks(
            &report.damaged,
            &report.damaged_snapshot_files,
            crate::time::now_us(),
        ),
        checked: checked.into_iter().collect(),
        catalogued: catalogued.into_iter().collect(),
    };
    update_damage_marks(repo.backend(), lock, &findings)
}

type Live = (ObjectKind, [u8; 32], ObjectEntry);

/// A pack's catalogued object count (`None`: not in the catalog) and the index entries that
/// place objects in it.
type PackObjects<'a> = (Option<u32>, Vec<&'a Live>);

/// Checks every catalogued pack's footer and trailer (and those of packs the index names
/// but the catalog lacks) against its layout, its catalog entry and the index entries that
/// place objects in it (`pack_scan::check_footer`), in parallel. Returns the damaged packs,
/// sorted by id.
fn check_footers(repo: &Repository, live: &[Live], dead: &[Live]) -> Result<Vec<DamagedPack>> {
    let mut by_pack: HashMap<PackId, PackObjects<'_>> = HashMap::new();
    for (id, entry) in repo.index().packs()? {
        by_pack.entry(id).or_default().0 = Some(entry.objects);
    }
    for obj in live.iter().chain(dead) {
        by_pack.entry(obj.2.pack).or_default().1.push(obj);
    }
    let packs: Vec<(PackId, PackObjects<'_>)> = by_pack.into_iter().collect();
    let found: Vec<Option<DamagedPack>> = packs
        .par_iter()
        .map(|(pack, (catalog, indexed))| {
            let problem = check_footer(repo.backend(), *pack, *catalog, indexed)?;
            Ok(problem.map(|reason| DamagedPack {
                pack: *pack,
                reason: if catalog.is_none() {
                    format!("{reason} (and the pack is not in the pack catalog)")
                } else {
                    reason
                },
            }))
        })
        .collect::<Result<_>>()?;
    let mut damaged: Vec<DamagedPack> = found.into_iter().flatten().collect();
    damaged.sort_by_key(|p| p.pack);
    Ok(damaged)
}

/// Narrows the live objects to those this run reads: the scope, minus the recently
/// verified, then the sample.
fn select(
    repo: &Repository,
    opts: &VerifyOptions,
    snapshots: &[(SnapshotId, tessera_format::Snapshot)],
    ledger: Option<&Ledger>,
    mut live: Vec<Live>,
    report: &mut CheckReport,
) -> Result<Vec<Live>> {
    if let Some(ids) = &opts.scope {
        let mut chosen = Vec::new();
        for id in ids {
            match snapshots.iter().find(|(i, _)| i == id) {
                Some((_, s)) => chosen.push(s),
                None => report.problems.push(format!(
                    "snapshot {id}: unreadable, its objects cannot be scoped"
                )),
            }
        }
        let scoped = expected_counts_of(repo.index(), repo.backend(), repo.crypto(), chosen)?;
        live.retain(|(kind, digest, _)| scoped.count(*kind, *digest) > 0);
        report.scope.snapshots = Some(ids.clone());
    }
    report.scope.objects = live.len() as u64;
    report.scope.bytes = live.iter().map(|(_, _, e)| u64::from(e.stored_len)).sum();
    if let (Some(ledger), Some(within)) = (ledger, opts.skip_verified_within_us) {
        let cutoff = crate::time::now_us().saturating_sub(within);
        let mut kept = Vec::with_capacity(live.len());
        for obj in live {
            let (kind, digest, entry) = &obj;
            if ledger
                .verified_at(*kind, digest, entry)?
                .is_some_and(|at| at >= cutoff)
            {
                report.objects_skipped_recently_verified += 1;
                report.bytes_skipped_recently_verified += u64::from(entry.stored_len);
            } else {
                kept.push(obj);
            }
        }
        live = kept;
    }
    if let Some((size, seed)) = opts.sample {
        let (chosen, sample) = draw_sample(live, size, seed);
        live = chosen;
        report.sample = Some(sample);
    }
    Ok(live)
}

/// How many of `n` objects a share selects (rounded up).
#[expect(
    clippy::cast_sign_loss,
    reason = "the share is clamped to 0..=1, so the product is within 0..=n"
)]
fn share_of(n: usize, share: f64) -> usize {
    (((n as f64) * share.clamp(0.0, 1.0)).ceil() as usize).min(n)
}

/// A uniformly random subset of `live` (kept in index order), chosen by a shuffle seeded
/// with `seed`.
fn draw_sample(live: Vec<Live>, size: SampleSize, seed: u64) -> (Vec<Live>, SampleReport) {
    let candidates = live.len() as u64;
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut take = vec![false; live.len()];
    match size {
        SampleSize::Share(f) => {
            for &i in order.iter().take(share_of(live.len(), f)) {
                take[i] = true;
            }
        }
        SampleSize::Bytes(budget) => {
            let mut got = 0u64;
            for &i in &order {
                if got >= budget {
                    break;
                }
                take[i] = true;
                got += u64::from(live[i].2.stored_len);
            }
        }
    }
    let chosen: Vec<Live> = live
        .into_iter()
        .zip(take)
        .filter_map(|(obj, t)| t.then_some(obj))
        .collect();
    let mut h = Sha256::new();
    for (kind, digest, _) in &chosen {
        h.update([*kind as u8]);
        h.update(digest);
    }
    let sample = SampleReport {
        seed,
        share: match size {
            SampleSize::Share(f) => Some(f),
            SampleSize::Bytes(_) => None,
        },
        bytes: match size {
            SampleSize::Bytes(b) => Some(b),
            SampleSize::Share(_) => None,
        },
        candidates,
        objects_chosen: chosen.len() as u64,
        fingerprint: hex::encode(h.finalize()),
    };
    (chosen, sample)
}

/// Reads `live` back in parallel, in groups; records the intact ones in the ledger after
/// each group. Returns the damaged ones, sorted.
///
/// Only a failure that is damage ([`ErrorKind::Damage`]: a record that does not check, a
/// missing or truncated pack) makes an object damaged. Any other failure — the store
/// unreachable or failing after its retries, an I/O error — says nothing about the object,
/// so it stops the verification with that error (exit 1) before anything is marked: a
/// passing outage must never put damage marks on snapshots. Groups read before it stay
/// recorded in the ledger (they were read intact).
fn read_back(
    repo: &Repository,
    live: &[Live],
    ledger: Option<&Ledger>,
    progress: &dyn Progress,
    report: &mut CheckReport,
) -> Result<Vec<(BadKey, DamagedObject)>> {
    let total: u64 = live.iter().map(|(_, _, e)| u64::from(e.stored_len)).sum();
    progress.start("read data", total);
    let objects = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let mut unreadable: Vec<(BadKey, DamagedObject)> = Vec::new();
    let remote = repo.backend().is_remote();
    // From a remote store, in pack order, so that a group's records lie together and are
    // fetched with few reads; a group's fetched records are held at once: a quarter group.
    let mut sorted;
    let live = if remote {
        sorted = live.to_vec();
        sorted.sort_by_key(|(_, _, e)| (e.pack, e.offset));
        &sorted[..]
    } else {
        live
    };
    let group_len = if remote { GROUP / 4 } else { GROUP };
    for group in live.chunks(group_len) {
        // A remote store: nearby records are fetched together (one request per span).
        let mut fetched: Vec<Option<Result<Vec<u8>>>> = if remote {
            let entries: Vec<ObjectEntry> = group.iter().map(|(_, _, e)| *e).collect();
            fetch_records(repo.backend(), &entries)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            group.iter().map(|_| None).collect()
        };
        let results: Vec<Option<(BadKey, DamagedObject)>> = group
            .par_iter()
            .zip(fetched.par_iter_mut())
            .map(|((kind, digest, entry), fetched)| {
                let r = match fetched.take() {
                    Some(bytes) => check_fetched(bytes, repo.crypto(), *kind, digest, entry),
                    None => {
                        read_object(repo.backend(), repo.crypto(), *kind, digest, entry).map(|_| ())
                    }
                };
                objects.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(u64::from(entry.stored_len), Ordering::Relaxed);
                progress.advance(u64::from(entry.stored_len));
                match r {
                    Ok(()) => Ok(None),
                    Err(e) if e.kind() == ErrorKind::Damage => Ok(Some((
                        (*kind, *digest),
                        damaged(*kind, *digest, Some(entry), e.to_string()),
                    ))),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<_>>()?;
        if let Some(ledger) = ledger {
            report.ledger_recorded += ledger.record(
                crate::time::now_us(),
                group
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_none())
                    .map(|((kind, digest, entry), _)| (*kind, digest, entry)),
            )?;
        }
        unreadable.extend(results.into_iter().flatten());
    }
    progress.finish();
    unreadable.sort_by_key(|(key, _)| *key);
    report.objects_read = objects.into_inner();
    report.bytes_read = bytes.into_inner();
    Ok(unreadable)
}

fn damaged(
    kind: ObjectKind,
    digest: [u8; 32],
    entry: Option<&ObjectEntry>,
    reason: String,
) -> DamagedObject {
    DamagedObject {
        kind,
        digest,
        pack: entry.map(|e| e.pack),
        pack_offset: entry.map(|e| e.offset),
        reason,
        ranges: Vec::new(),
    }
}

/// What `tessera repair --recount` did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RecountReport {
    /// Reference counts that differed and were fixed.
    pub counts_fixed: u64,
}

/// Recomputes every reference count from the published snapshots and writes the correct
/// value wherever the index disagrees (`tessera repair --recount`). Objects referenced but
/// absent from the index cannot be fixed here; they are reported by [`check`].
pub fn recount(repo: &Repository) -> Result<RecountReport> {
    Ok(RecountReport {
        counts_fixed: recount_index(repo.index(), repo.backend(), repo.crypto())?,
    })
}

/// [`recount`] on an index and the backend of its objects (the writer holds the lock);
/// returns the number of counts fixed.
pub fn recount_index(
    index: &crate::index::Index,
    backend: &dyn crate::storage::Backend,
    crypto: &crate::crypto::RepoCrypto,
) -> Result<u64> {
    // Counts raised by a publication that did not finish are undone first: the recount
    // sets counts from the catalogued snapshots, and a record left in place would then be
    // undone a second time by the next recovery.
    crate::ops::publish::undo_publishing(index, backend, crypto)?;
    let mut snapshots = Vec::new();
    for (id, _) in index.snapshots()? {
        snapshots.push(crate::store::reader::load_snapshot(backend, crypto, id)?);
    }
    let expected = expected_counts_of(index, backend, crypto, &snapshots)?;
    let mut batch = index.batch();
    let mut fixed = 0;
    let now = crate::time::now_us();
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        index.for_each_object(kind, |digest, mut entry| {
            let want = expected.count(kind, digest);
            if want != entry.refcount {
                entry.set_count(want, now);
                batch.put_object(kind, &digest, &entry);
                fixed += 1;
            }
            Ok(())
        })?;
    }
    index.commit(batch)?;
    Ok(fixed)
}
