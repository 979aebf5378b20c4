//! Deleting packs of a repository that several machines share (an object store): two
//! phases with a grace period (SPEC §13, "Shared repositories").
//!
//! In a local repository a compaction deletes the packs it emptied as soon as no reader holds
//! a lease on the repository directory. Readers and writers on other machines hold no lease
//! anyone can see, so in a shared store the grace period is the contract instead:
//!
//! 1. **Doom.** A compaction copies the live objects of a pack into new packs, commits their
//!    new locations (its own index forgets the dead ones), and then stores a **doom record**
//!    `doomed/<pack id>` ([`publish`]). The record's time is the one the store gives it (its
//!    own clock, the same for every client). The pack stays.
//! 2. **Delete.** A later compaction (of any client) deletes the pack, then the record, once
//!    the record was older than the grace period by the store's clock **when that compaction
//!    opened the repository**, read before it listed the snapshots ([`delete_expired`]).
//!
//! Why that is safe, for operations shorter than the grace period:
//! - A client that opens the repository after the record exists treats the pack as gone: its
//!   cache never places an object there (a cache that did is rebuilt, and the rebuild skips
//!   recorded packs), so it neither reads from it nor deduplicates against what only it
//!   holds. Live objects were copied, and are found in the new packs.
//! - A client that opened before the record (a backup that deduplicated against an object
//!   that was dead when the compaction ran, a restore reading the old pack) finishes within
//!   the grace period, so before the pack is deleted. If such a backup publishes a snapshot
//!   naming an object only a doomed pack still holds, whoever next catalogues that snapshot
//!   finds the object missing from its index and **rescues** the doomed packs ([`rescue`]):
//!   it indexes them again and deletes their records, so no compaction deletes them; a later
//!   compaction redoes the work. The deleting compaction opens the repository first, so it
//!   has catalogued every snapshot published before its open; records expire against the
//!   store's clock read just before that open's listing, never a later one, so a snapshot
//!   published while a long compaction runs cannot lose a pack it needs: its backup opened
//!   before the record, published before the record was `grace` old, and so before the
//!   clock the expiry is measured against.
//!
//! Crash reasoning: a pack is doomed in the local index (its live objects moved) before its
//! record is stored; a crash in between leaves a locally doomed pack without a record, and
//! the next writer stores it ([`publish`] from recovery). The record is deleted after the
//! pack; a crash in between leaves a record of a missing pack, removed by the next deletion
//! or rescue. A rescue indexes the packs before it deletes their records; a crash in between
//! leaves records of catalogued packs, which makes the next open rebuild the cache, and the
//! rebuild rescues again.

use std::collections::{HashMap, HashSet};

use tessera_format::PackId;

use crate::error::Result;
use crate::index::Index;
use crate::readers::NoReaders;
use crate::repo::RepoStorage;
use crate::storage::key::{self, KeyKind};
use crate::storage::{Backend, ObjectKey, PutMode};
use crate::store::session::adopt_unindexed_packs;

/// The doom records in the store: each pack and when its record was stored (the store's
/// clock, Unix microseconds).
pub fn records(backend: &dyn Backend) -> Result<HashMap<PackId, i64>> {
    Ok(backend
        .list_stamped(key::DOOMED)?
        .into_iter()
        .filter_map(|(k, at)| match k.kind() {
            Some(KeyKind::DoomRecord(pack)) => Some((pack, at)),
            _ => None,
        })
        .collect())
}

/// Phase 1: stores a doom record for every pack the local index has doomed and the store
/// has no record of; returns how many were stored.
pub fn publish(storage: &RepoStorage, index: &Index) -> Result<usize> {
    let doomed = index.doomed_packs()?;
    if doomed.is_empty() {
        return Ok(0);
    }
    let recorded = records(&*storage.backend)?;
    let mut stored = 0;
    for pack in doomed.into_iter().filter(|p| !recorded.contains_key(p)) {
        match storage.backend.put_bytes(
            &ObjectKey::doom_record(pack),
            PutMode::Create,
            pack.to_hex().as_bytes(),
        ) {
            Ok(()) | Err(crate::Error::ObjectExists { .. }) => stored += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(stored)
}

/// Phase 2: deletes each pack whose record was at least `grace_us` old at `catalogued_as_of`
/// (the store's clock read before the caller's open listed the bucket's snapshots,
/// [`crate::Repository::catalogued_as_of_us`]), then its record; returns how many packs were
/// deleted. Nothing is deleted while a local reader holds a lease. A pack the local index
/// catalogues (rescued here, its record not yet deleted) is left alone.
///
/// A grace of 0 (no other machine uses the store, SPEC §13) expires every record at once,
/// those this very compaction stored included.
///
/// Why the clock of the open and not the clock now: a client that opened before the record
/// (store time `R`) publishes by `R + grace` (the contract). If `R + grace <= as_of`, it
/// published before the listing of the caller's open, which catalogued its snapshot and
/// rescued the packs it needs. Measured against the clock at deletion time instead, a
/// compaction that runs long would delete a pack a snapshot published during its run
/// depends on: that snapshot was stored after the open and is in no index of the caller.
pub fn delete_expired(
    storage: &RepoStorage,
    index: &Index,
    grace_us: i64,
    catalogued_as_of: i64,
) -> Result<usize> {
    let backend = &*storage.backend;
    let recorded = records(backend)?;
    if recorded.is_empty() {
        return Ok(0);
    }
    let Some(_no_readers) = NoReaders::try_acquire(&storage.local_dir)? else {
        return Ok(0);
    };
    let catalogued: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    let locally_doomed: std::collections::HashMap<PackId, u64> =
        index.doomed_packs_since()?.into_iter().collect();
    // A running backup of this machine keeps what its view may still use (`leases.rs`), as
    // in a local repository: what this machine doomed after its view, and while one runs
    // anything another machine doomed (this machine's index does not say when).
    let oldest = crate::leases::oldest_view(&storage.local_dir, &index.identity()?)?;
    let leased = |pack: &PackId| {
        oldest.is_some_and(|view| locally_doomed.get(pack).is_none_or(|at| view < *at))
    };
    let mut batch = index.batch();
    let mut deleted = 0;
    let mut expired: Vec<PackId> = recorded
        .into_iter()
        .filter(|(pack, at)| {
            !catalogued.contains(pack)
                && !leased(pack)
                && (grace_us <= 0 || catalogued_as_of.saturating_sub(*at) >= grace_us)
        })
        .map(|(pack, _)| pack)
        .collect();
    expired.sort();
    // A pack the store retains is never deleted (SPEC §28): on a versioned bucket the delete
    // would succeed as a delete marker and hide what a snapshot may still need.
    let retaining = crate::ops::immutable::effective_policy(index, backend)?.is_some();
    for pack in expired {
        if retaining
            && backend
                .retention(&ObjectKey::pack(pack))?
                .is_some_and(|until| until > catalogued_as_of)
        {
            continue;
        }
        backend.delete(&ObjectKey::pack(pack))?;
        backend.delete(&ObjectKey::doom_record(pack))?;
        if locally_doomed.contains_key(&pack) {
            batch.forget_doomed(pack);
        }
        deleted += 1;
    }
    if !batch.is_empty() {
        index.commit(batch)?;
    }
    Ok(deleted)
}

/// Un-dooms every doomed pack still in the store: indexes its objects again where the index
/// has none (a snapshot published by a client that opened before the pack was doomed names
/// them), then deletes its record. Returns how many packs were indexed again.
pub fn rescue(storage: &RepoStorage, index: &Index) -> Result<usize> {
    let backend = &*storage.backend;
    let recorded = records(backend)?;
    let locally_doomed = index.doomed_packs()?;
    if recorded.is_empty() && locally_doomed.is_empty() {
        return Ok(0);
    }
    let mut batch = index.batch();
    for pack in &locally_doomed {
        batch.forget_doomed(*pack);
    }
    index.commit(batch)?;
    let adoption = adopt_unindexed_packs(index, backend, &HashSet::<PackId>::new())?;
    for pack in recorded.keys() {
        backend.delete(&ObjectKey::doom_record(*pack))?;
    }
    Ok(adoption.adopted)
}
