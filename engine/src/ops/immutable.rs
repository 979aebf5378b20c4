//! Immutable backups (SPEC §28): every snapshot is kept unremovable for a period after it
//! was taken, by the store itself: S3 Object Lock retention on a bucket that has it, the
//! immutable attribute (`chattr +i`) in a local directory.
//!
//! The policy is the object `immutability` (a period and, on S3, a mode). A snapshot taken
//! at `t` is *protected until* `t + period`: its file and every pack holding one of its
//! pages or chunks are retained at least that long. Retention is set before the snapshot
//! is published (under the writer lock, [`retain_for_publish`]), so a published snapshot
//! never depends on an object that could be deleted before its date.
//!
//! Only where needed: the index records what each pack was retained until, and for each
//! page the least date over the packs of the page and its chunks ([`Retained`]). A page whose
//! record reaches the date is skipped without reading it; a pack is extended only when its
//! record falls short, and then by [`Policy::renewal_us`] more, so that daily backups of an
//! unchanged disk extend each pack about once per renewal rather than every day.
//!
//! Races with compaction are closed by the writer lock: retention is set and recorded under
//! it, and compaction commits each new pack under it after giving that pack at least the
//! records of the packs it empties ([`carry_over`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_format::{ObjectKind, PackId, PageDigest, Snapshot, SnapshotId};

use crate::error::{Error, Result};
use crate::index::Retained;
use crate::repo::Repository;
use crate::storage::{Backend, ObjectKey, PutMode, RetentionMode};
use crate::time::{format_us, Span};

/// Largest policy object read.
const MAX_POLICY: usize = 4096;
/// The longest period: 100 years.
pub const MAX_PERIOD_S: u64 = 100 * 366 * 86_400;
/// Retentions ending this close to now are not asked for (a store refuses a date in the
/// past, and one that is about to pass protects nothing).
const MARGIN_US: i64 = 2 * 1_000_000;
/// Most a retention is extended beyond what is needed.
const MAX_RENEWAL_US: i64 = 7 * 24 * 3600 * 1_000_000;

/// The immutability policy of a repository (the object `immutability`, JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How long after it was taken a snapshot stays immutable, in seconds.
    pub period_s: u64,
    /// How an S3 store enforces it (ignored by a local directory).
    pub mode: RetentionMode,
}

impl Policy {
    /// A policy of `period`.
    pub fn new(period: Span, mode: RetentionMode) -> Self {
        Self {
            period_s: (crate::time::ceil_to_second(period.us) / 1_000_000).unsigned_abs(),
            mode,
        }
    }

    /// The period in microseconds.
    pub fn period_us(&self) -> i64 {
        i64::try_from(self.period_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000)
    }

    /// How much further than needed a pack's retention is extended: half the period, at
    /// most a week.
    pub fn renewal_us(&self) -> i64 {
        (self.period_us() / 2).min(MAX_RENEWAL_US)
    }

    /// When a snapshot taken at `time_us` stops being protected.
    pub fn until(&self, time_us: i64) -> i64 {
        time_us.saturating_add(self.period_us())
    }
}

/// The repository's policy, `None` if it has none.
pub fn read_policy(backend: &dyn Backend) -> Result<Option<Policy>> {
    let key = ObjectKey::immutability();
    match backend.size(&key)? {
        None => return Ok(None),
        Some(size) if size > MAX_POLICY as u64 => {
            return Err(bad_policy(backend, &format!("{size} bytes")))
        }
        Some(_) => {}
    }
    let Some(bytes) = backend.get_if_exists(&key)? else {
        return Ok(None);
    };
    let policy: Policy =
        serde_json::from_slice(&bytes).map_err(|e| bad_policy(backend, &e.to_string()))?;
    if policy.period_s == 0 || policy.period_s > MAX_PERIOD_S {
        return Err(bad_policy(
            backend,
            &format!("a period of {} s", policy.period_s),
        ));
    }
    Ok(Some(policy))
}

fn bad_policy(backend: &dyn Backend, why: &str) -> Error {
    Error::Refused {
        reason: format!(
            "the immutability policy of {} is not one tessera wrote ({why}); nothing was changed",
            backend.describe()
        ),
    }
}

/// The policy every decision about removing or moving objects follows: the store's, or
/// the one this index pinned when that is stronger (the store's object removed or
/// weakened by someone: see [`policy_for_publish`]).
pub fn effective_policy(
    index: &crate::index::Index,
    backend: &dyn Backend,
) -> Result<Option<Policy>> {
    let (stored, pinned) = stored_and_pinned(index, backend)?;
    Ok(match (stored, pinned) {
        (Some(s), Some(p)) if p.period_s > s.period_s => Some(p),
        (Some(s), _) => Some(s),
        (None, p) => p,
    })
}

/// The store's policy, and the one `index` pinned.
fn stored_and_pinned(
    index: &crate::index::Index,
    backend: &dyn Backend,
) -> Result<(Option<Policy>, Option<Policy>)> {
    let pinned = index
        .pinned_policy()?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok((read_policy(backend)?, pinned))
}

/// The policy a publication runs under: the store's, pinned in the index. A policy the
/// index saw that is gone from the store, or weaker there (a shorter period, another
/// mode), is refused: deleting or replacing one object must not switch immutability off.
pub(crate) fn policy_for_publish(repo: &Repository) -> Result<Option<Policy>> {
    let (stored, pinned) = stored_and_pinned(repo.index(), repo.backend())?;
    if let Some(pinned) = pinned {
        if stored.is_none_or(|s| s.period_s < pinned.period_s || s.mode != pinned.mode) {
            return Err(Error::Refused {
                reason: format!(
                    "the immutability policy of {} is {} in the store, but this index published under {} s ({:?}): someone removed or weakened it. Nothing was published; restore it with `tessera immutable REPO --period {}s`",
                    repo.describe(),
                    stored.map_or_else(|| "gone".to_string(), |s| format!("{} s ({:?})", s.period_s, s.mode)),
                    pinned.period_s,
                    pinned.mode,
                    pinned.period_s
                ),
            });
        }
    }
    let Some(stored) = stored else {
        return Ok(None);
    };
    if pinned != Some(stored) {
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| Error::Internal(format!("encoding a policy: {e}")))?;
        let mut batch = repo.index().batch();
        batch.pin_policy(&bytes);
        repo.index().commit(batch)?;
    }
    Ok(Some(stored))
}

/// Sets the policy of a repository being created, or of one that has none: checks that
/// the store can retain objects, then stores the policy.
pub fn enable(backend: &dyn Backend, policy: &Policy) -> Result<()> {
    backend.check_retention()?;
    store_policy(backend, policy, PutMode::Create)
}

/// Stores the policy of a repository being created (no config yet, so an earlier failed
/// init's policy is replaced).
pub(crate) fn store_for_init(backend: &dyn Backend, policy: &Policy) -> Result<()> {
    store_policy(backend, policy, PutMode::Replace)
}

fn store_policy(backend: &dyn Backend, policy: &Policy, mode: PutMode) -> Result<()> {
    let bytes = serde_json::to_vec(policy)
        .map_err(|e| Error::Internal(format!("encoding the immutability policy: {e}")))?;
    backend.put_bytes(&ObjectKey::immutability(), mode, &bytes)
}

/// What retaining one snapshot did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Retention {
    /// The snapshot's protected-until, Unix µs.
    pub until_us: i64,
    /// Packs whose retention was extended (or set) now.
    pub packs_extended: usize,
    /// Pages whose packs were looked up (the others were known retained long enough).
    pub pages_checked: usize,
    /// Whether the protection is still ahead (else nothing was retained, nor is the file).
    pub needed: bool,
}

/// Retains every pack `snapshot` uses until its protected-until and records it; the caller
/// holds the writer lock and then stores the snapshot file with [`retain_file`].
pub(crate) fn retain_for_publish(
    store: Store<'_>,
    snapshot: &Snapshot,
    policy: &Policy,
) -> Result<Retention> {
    let until = policy.until(snapshot.header.time_us);
    let mut done = Retention {
        until_us: until,
        ..Retention::default()
    };
    // A snapshot whose protection has already ended (synced or pushed history older than
    // the period) is published unretained.
    if until <= store.now()?.saturating_add(MARGIN_US) {
        return Ok(done);
    }
    done.needed = true;
    let index = store.index;
    let mut pages: Vec<PageDigest> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for page in snapshot.roots.iter().flatten() {
        if seen.insert(*page)
            && index
                .retained(Retained::Page(*page))?
                .is_none_or(|d| d < until)
        {
            pages.push(*page);
        }
    }
    // Packs settled by this publication: their date now.
    let mut packs: HashMap<PackId, i64> = HashMap::new();
    for group in pages.chunks(64) {
        let chunks = crate::ops::publish::read_pages(index, store.backend, store.crypto, group)?;
        let mut holders: Vec<(PageDigest, Vec<PackId>)> = Vec::with_capacity(group.len());
        for (page, digests) in group.iter().zip(chunks) {
            holders.push((*page, packs_of_page(index, *page, &digests)?));
        }
        let mut unsettled: Vec<PackId> = holders
            .iter()
            .flat_map(|(_, h)| h)
            .filter(|p| !packs.contains_key(p))
            .copied()
            .collect();
        unsettled.sort_unstable();
        unsettled.dedup();
        let mut batch = index.batch();
        for (pack, settled) in unsettled
            .iter()
            .zip(retain_packs(store, &unsettled, until, policy))
        {
            let (date, extended) = settled?;
            done.packs_extended += usize::from(extended);
            batch.set_retained(Retained::Pack(*pack), date);
            packs.insert(*pack, date);
        }
        for (page, holders) in holders {
            let least = holders
                .iter()
                .filter_map(|p| packs.get(p))
                .min()
                .copied()
                .unwrap_or(until);
            batch.set_retained(Retained::Page(page), least);
            done.pages_checked += 1;
        }
        index.commit(batch)?;
    }
    Ok(done)
}

/// The packs holding page `page` and its chunks `digests`, sorted, each once.
fn packs_of_page(
    index: &crate::index::Index,
    page: PageDigest,
    digests: &[tessera_format::ChunkDigest],
) -> Result<Vec<PackId>> {
    let mut keys: Vec<[u8; 32]> = digests
        .iter()
        .filter(|d| !d.is_zero())
        .map(|d| d.0)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut holders: Vec<PackId> = index
        .get_many_once(ObjectKind::Chunk, &keys)?
        .into_iter()
        .zip(&keys)
        .map(|(entry, key)| {
            entry.map(|e| e.pack).ok_or_else(|| Error::ObjectMissing {
                kind: ObjectKind::Chunk,
                digest: hex::encode(key),
            })
        })
        .collect::<Result<_>>()?;
    let own = index
        .get_object(ObjectKind::Page, page.as_bytes())?
        .ok_or_else(|| Error::ObjectMissing {
            kind: ObjectKind::Page,
            digest: page.to_hex(),
        })?;
    holders.push(own.pack);
    holders.sort_unstable();
    holders.dedup();
    Ok(holders)
}

/// Requests to a remote store in flight at once while retaining packs.
const RETAINS_IN_FLIGHT: usize = 8;

/// [`retain_pack`] of each of `packs`, several at once on a remote store; the answers in
/// the order of `packs`.
fn retain_packs(
    store: Store<'_>,
    packs: &[PackId],
    until: i64,
    policy: &Policy,
) -> Vec<Result<(i64, bool)>> {
    let at_once = if store.backend.is_remote() {
        RETAINS_IN_FLIGHT
    } else {
        1
    };
    crate::in_flight::map_in_flight(packs, at_once, |p| retain_pack(store, *p, until, policy))
}

/// Retains `pack` until `until` at least: from its record, else from the store; extends it
/// (with the renewal) only when short. Returns its date and whether it was extended.
fn retain_pack(store: Store<'_>, pack: PackId, until: i64, policy: &Policy) -> Result<(i64, bool)> {
    if let Some(date) = store
        .index
        .retained(Retained::Pack(pack))?
        .filter(|&d| d >= until)
    {
        return Ok((date, false));
    }
    let want = until.saturating_add(policy.renewal_us());
    let date = store
        .backend
        .retain(&ObjectKey::pack(pack), until, want, policy.mode)?;
    Ok((date, date == crate::time::ceil_to_second(want)))
}

/// Stores snapshot file `id` (`bytes`) retained until `until_us` ([`Backend::put_retained`])
/// and records it.
pub(crate) fn store_file(
    store: Store<'_>,
    id: SnapshotId,
    bytes: &[u8],
    until_us: i64,
    policy: &Policy,
) -> Result<()> {
    let date =
        store
            .backend
            .put_retained(&ObjectKey::snapshot(id), bytes, until_us, policy.mode)?;
    record_snapshot(store, id, date)
}

/// Retains the stored snapshot file `id` until `until_us` and records it.
fn retain_file(store: Store<'_>, id: SnapshotId, until_us: i64, policy: &Policy) -> Result<()> {
    let date = store
        .backend
        .retain(&ObjectKey::snapshot(id), until_us, until_us, policy.mode)?;
    record_snapshot(store, id, date)
}

/// Records that snapshot `id`'s file is retained until `date`.
fn record_snapshot(store: Store<'_>, id: SnapshotId, date: i64) -> Result<()> {
    let mut batch = store.index.batch();
    batch.set_retained(Retained::Snapshot(id), date);
    store.index.commit(batch)
}

/// Recovery, a cache's catch-up and the index rebuild, cataloguing the stored snapshot
/// file `id`: record what the store says of its retention. Nothing is retained here (a
/// reader's cache may have no right to, and an open must not fail on it): on S3 a
/// snapshot file is stored retained from the start; a local one whose publisher died
/// between storing and retaining it is retained by the next `tessera immutable`.
///
/// Best effort: the records are a cache, and a reader without `s3:GetObjectRetention`
/// must still open.
pub(crate) fn record_stored(store: Store<'_>, id: SnapshotId) {
    if let Ok(Some(date)) = store.backend.retention(&ObjectKey::snapshot(id)) {
        let _ = record_snapshot(store, id, date);
    }
}

/// Where retention is read and set: the index, the store, and the keys to read pages.
#[derive(Clone, Copy)]
pub(crate) struct Store<'a> {
    pub index: &'a crate::index::Index,
    pub backend: &'a dyn Backend,
    pub crypto: &'a crate::crypto::RepoCrypto,
}

impl Store<'_> {
    /// Now, by the store's clock when it is shared by several machines (S3).
    pub fn now(&self) -> Result<i64> {
        store_now(self.backend)
    }
}

/// Now, by the store's clock when it is remote (shared by several machines), else this
/// machine's.
pub fn store_now(backend: &dyn Backend) -> Result<i64> {
    if backend.is_remote() {
        backend.clock_us()
    } else {
        Ok(crate::time::now_us())
    }
}

impl<'a> Store<'a> {
    /// The index, store and keys of `repo`.
    pub fn of(repo: &'a Repository) -> Self {
        Self {
            index: repo.index(),
            backend: repo.backend(),
            crypto: repo.crypto(),
        }
    }
}

/// Compaction, under the writer lock, before committing `new_pack` into which it moved the
/// objects of `sources`: gives it at least the retention of each source still retained
/// (its record, or the store's own when that is later: another machine of a shared store
/// may have extended it), so that no page record ever exceeds the date of a pack holding
/// its objects.
pub(crate) fn carry_over(
    repo: &Repository,
    batch: &mut crate::index::IndexBatch<'_>,
    new_pack: PackId,
    sources: &[PackId],
    policy: &Policy,
) -> Result<()> {
    let now = store_now(repo.backend())?;
    let mut sources = sources.to_vec();
    sources.sort_unstable();
    sources.dedup();
    let mut need: Option<i64> = None;
    for source in &sources {
        if let Some(date) = pack_locked(repo, *source, now)? {
            need = Some(need.map_or(date, |n| n.max(date)));
        }
    }
    if let Some(need) = need {
        let date = repo
            .backend()
            .retain(&ObjectKey::pack(new_pack), need, need, policy.mode)?;
        batch.set_retained(Retained::Pack(new_pack), date);
    }
    Ok(())
}

/// The date `pack` is retained until, if past `now_us`: by its record, else by the store.
pub(crate) fn pack_locked(repo: &Repository, pack: PackId, now_us: i64) -> Result<Option<i64>> {
    retained_past(repo, Retained::Pack(pack), &ObjectKey::pack(pack), now_us)
}

/// The date `subject` (stored as `key`) is retained until, if past `now_us`: by its
/// record, else by the store. No record, or one that passed: the store may know a later
/// date (set by another machine, or lost with a rebuilt index).
fn retained_past(
    repo: &Repository,
    subject: Retained,
    key: &ObjectKey,
    now_us: i64,
) -> Result<Option<i64>> {
    if let Some(date) = repo.index().retained(subject)?.filter(|&d| d > now_us) {
        return Ok(Some(date));
    }
    Ok(repo.backend().retention(key)?.filter(|&d| d > now_us))
}

/// The protected-until of snapshot `id`: its record, else what the store says of its file.
pub fn protected_until(repo: &Repository, id: SnapshotId) -> Result<Option<i64>> {
    match repo.index().retained(Retained::Snapshot(id))? {
        Some(date) => Ok(Some(date)),
        None => repo.backend().retention(&ObjectKey::snapshot(id)),
    }
}

/// Refuses ([`Error::Immutable`]) if one of `ids` is still protected: by its record or by
/// the store's own retention of its file (the later of the two).
pub fn refuse_if_immutable(repo: &Repository, ids: &[SnapshotId]) -> Result<()> {
    let Some(policy) = effective_policy(repo.index(), repo.backend())? else {
        return Ok(());
    };
    let now = store_now(repo.backend())?;
    for id in ids {
        if let Some(until) = still_protected(repo, *id, now)? {
            return Err(Error::Immutable {
                what: format!("snapshot {id}"),
                until: format_us(until),
            });
        }
        // By definition protected until its time plus the period, whatever was recorded
        // or retained (a file whose publisher died before retaining it).
        let until = repo
            .index()
            .snapshot(*id)?
            .map(|h| policy.until(h.time_us))
            .filter(|&u| u > now);
        if let Some(until) = until {
            return Err(Error::Immutable {
                what: format!("snapshot {id}"),
                until: format_us(until),
            });
        }
    }
    Ok(())
}

/// The date snapshot `id` is protected until, if past `now_us`: its record, else the
/// store's retention of its file (a record may be missing or earlier than the store's).
pub fn still_protected(repo: &Repository, id: SnapshotId, now_us: i64) -> Result<Option<i64>> {
    retained_past(
        repo,
        Retained::Snapshot(id),
        &ObjectKey::snapshot(id),
        now_us,
    )
}

/// One snapshot in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotProtection {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub id: SnapshotId,
    /// Its series.
    pub series: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Until when it is immutable (RFC 3339).
    pub protected_until: String,
    /// Whether that is still ahead.
    pub protected: bool,
}

/// What `tessera immutable` shows and did.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The policy's period, in seconds.
    pub period_s: u64,
    /// Its mode (S3).
    pub mode: RetentionMode,
    /// Every catalogued snapshot, oldest first.
    pub snapshots: Vec<SnapshotProtection>,
    /// Packs whose retention was extended now.
    pub packs_extended: usize,
}

/// `tessera immutable`: sets the period (on a repository without a policy, enables it;
/// a shorter period than the current one is refused), then retains every catalogued
/// snapshot's file and packs until its protected-until where they fall short. `repo` is
/// open as the writer.
pub fn apply(
    repo: &Repository,
    period: Option<Span>,
    mode: Option<RetentionMode>,
) -> Result<Status> {
    let current = read_policy(repo.backend())?;
    let policy = match (current, period) {
        (None, None) => {
            return Err(Error::Refused {
                reason: format!(
                    "{} has no immutability policy; give --period to enable one",
                    repo.describe()
                ),
            })
        }
        (None, Some(period)) => {
            let policy = Policy::new(period, mode.unwrap_or(RetentionMode::Compliance));
            enable(repo.backend(), &policy)?;
            policy
        }
        (Some(policy), None) if mode.is_none_or(|m| m == policy.mode) => policy,
        (Some(policy), None) => {
            return Err(Error::Refused {
                reason: format!(
                    "the retention mode of {} is {:?}; it cannot be changed",
                    repo.describe(),
                    policy.mode
                ),
            })
        }
        (Some(policy), Some(period)) => {
            let wanted = Policy::new(period, mode.unwrap_or(policy.mode));
            if wanted.period_s < policy.period_s {
                return Err(Error::Refused {
                    reason: format!(
                        "the immutability period of {} is {} s; it can only grow (a shorter one would not shorten what is already retained, and no one may weaken it)",
                        repo.describe(),
                        policy.period_s
                    ),
                });
            }
            if wanted.mode != policy.mode {
                return Err(Error::Refused {
                    reason: format!(
                        "the retention mode of {} is {:?}; it cannot be changed",
                        repo.describe(),
                        policy.mode
                    ),
                });
            }
            if wanted != policy {
                store_policy(repo.backend(), &wanted, PutMode::Replace)?;
            }
            wanted
        }
    };
    let mut snapshots = repo.index().snapshots()?;
    snapshots.sort_by_key(|(id, h)| (h.time_us, *id));
    let now = store_now(repo.backend())?;
    let mut status = Status {
        period_s: policy.period_s,
        mode: policy.mode,
        snapshots: Vec::new(),
        packs_extended: 0,
    };
    for (id, header) in snapshots {
        let until = policy.until(header.time_us);
        let mut date = protected_until(repo, id)?.unwrap_or(i64::MIN);
        if date < until && until > now.saturating_add(MARGIN_US) {
            let snapshot = repo.load_snapshot(id)?;
            let store = Store::of(repo);
            status.packs_extended += retain_for_publish(store, &snapshot, &policy)?.packs_extended;
            retain_file(store, id, until, &policy)?;
            date = until;
        }
        let shown = date.max(until);
        status.snapshots.push(SnapshotProtection {
            id,
            series: header.series,
            time: format_us(header.time_us),
            protected_until: format_us(shown),
            protected: shown > now,
        });
    }
    Ok(status)
}
