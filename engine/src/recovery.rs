//! What a writer does when it opens a repository, to finish or undo whatever an interrupted
//! writer left behind. The stored objects are the source of truth and the index follows
//! them; nothing published is ever deleted here. Each step is idempotent, so a crash during
//! recovery is recovered by the next writer in the same way.
//!
//! 0. A publication in steps whose publisher died has its applied steps undone
//!    ([`crate::ops::publish::undo_publishing`]); its stored snapshot file is catalogued in
//!    step 5.
//! 1. Staged puts of crashed writers are discarded ([`Backend::clean_staging`]); only when a
//!    writer opens, never when a reader brings an object store's cache up to date
//!    ([`catch_up`]), whose staged puts may be other clients' uploads in progress.
//! 2. Doomed packs (emptied by compaction) are deleted if no reader holds a lease. Then the
//!    snapshot files are listed, before any pack is: a snapshot file is stored only after
//!    every pack it names, so every pack a listed snapshot names is in the pack listing of
//!    step 3, even while another client sharing an object store publishes.
//! 3. Sealed packs the catalog does not know are adopted (a crash between sealing a pack and
//!    indexing it), so a rerun of the interrupted backup reuses them. Doomed packs are not
//!    adopted: their objects live elsewhere now. A pack too damaged to scan is moved to
//!    quarantine; one that cannot be read right now is reported and left alone.
//! 4. Forgotten snapshots whose files a crash kept (a tombstone says so) lose their file and
//!    protection marker, then their tombstone.
//! 5. Snapshot files the catalog does not list are catalogued: a crash after storing the file
//!    but before the publishing batch (the backup completed; everything it references was
//!    durable first), or an index that lost entries (restored from an older copy, rebuilt
//!    while a file could not be read). A file that is itself damaged — it does not hash to
//!    its name or does not decode — is moved to quarantine, never deleted. A sound file that
//!    names objects the index lacks (a pack unreadable right now, or lost) is left in place
//!    and reported as incomplete: the pack may come back, or `repair` may fetch the objects;
//!    compaction refuses to run while such a file exists, because the objects it does find
//!    are at count 0 and would be reclaimed ([`uncatalogued_snapshots`]). Only `repair
//!    --quarantine` moves it to quarantine, on the operator's word. One that cannot be read
//!    right now is reported and left alone.
//! 6. Protection markers are the truth about protection (a crash can only leave a snapshot
//!    more protected than asked): a catalogued snapshot with a marker is marked protected;
//!    a marker without a snapshot file is deleted (left by an interrupted forget).
//! 7. Catalogued snapshots whose files are missing are reported (only `repair
//!    --rebuild-index` can correct their counts: their root lists are gone with the files).
//!
//! # The index of an object store is a cache
//!
//! For a repository in an object store shared by several clients (S3), the local state
//! directory is a cache, marked by a [`crate::cache::CACHE_MARKER`] file. Every open of such
//! a repository first brings the cache up to date from the bucket
//! ([`crate::cache::refresh_cache`], under the writer lock of the cache directory; a reader
//! does it before opening the index read-only). See SPEC §2a, "The index of an S3
//! repository".

use std::collections::HashSet;

use tessera_format::{PackId, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::error::Result;
use crate::index::Index;
use crate::ops::publish::{catalogue_stored, undo_publishing};
use crate::readers::NoReaders;
use crate::repo::RepoStorage;
use crate::storage::key::{self, KeyKind};
use crate::storage::{Backend, ObjectKey, PutMode};
use crate::store::reader::load_snapshot;
use crate::store::session::adopt_unindexed_packs;

/// What recovery found when a writer opened the repository.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Recovery {
    /// Staged puts discarded.
    pub staged_removed: usize,
    /// Sealed packs that had not been indexed.
    pub packs_adopted: usize,
    /// Packs too damaged to scan, moved to quarantine.
    pub packs_quarantined: Vec<String>,
    /// Packs that could not be read now, with why (left in place).
    pub packs_unreadable: Vec<(String, String)>,
    /// Packs emptied by an earlier compaction whose files could now be deleted.
    pub doomed_packs_deleted: usize,
    /// Doom records stored for packs this machine doomed (shared stores, `doomed.rs`).
    pub doom_records_stored: usize,
    /// Doomed packs of a shared store indexed again, because a snapshot another client
    /// published names objects only they hold (`doomed.rs`).
    pub doomed_packs_rescued: usize,
    /// The snapshot whose publication in steps a crash interrupted: its applied steps were
    /// undone (its stored file is then catalogued like any other).
    pub publication_undone: Option<String>,
    /// Pages of that publication that could not be read to undo their step, with why: their
    /// chunks keep one reference too many (nothing is lost; `verify` reports them and
    /// `repair` recounts).
    pub publication_pages_unread: Vec<String>,
    /// Snapshot files of forgotten snapshots that a crash had kept, now deleted.
    pub forgotten_files_deleted: usize,
    /// Stored snapshots the index did not list, now catalogued.
    pub snapshots_catalogued: Vec<String>,
    /// Snapshot files that are damaged (not hashing to their name, not decoding), moved to
    /// quarantine, with why.
    pub snapshots_quarantined: Vec<(String, String)>,
    /// Sound snapshot files naming objects the index lacks, with why: left in place,
    /// uncatalogued (damage: compaction refuses until they are repaired or quarantined).
    pub snapshots_incomplete: Vec<(String, String)>,
    /// Snapshot files that could not be read now, with why (left in place).
    pub snapshots_unreadable: Vec<(String, String)>,
    /// Catalogued snapshots whose files are missing.
    pub snapshot_files_missing: Vec<String>,
    /// The lock file's content if its previous holder died holding it.
    pub stale_lock: Option<String>,
    /// What bringing the cache up to date did (object-store repositories).
    pub cache: Option<crate::cache::CacheRefresh>,
}

impl Recovery {
    /// Whether recovery changed the repository (removed, adopted, moved, deleted or
    /// catalogued something, or broke a stale lock), as opposed to only finding a lasting
    /// state (unreadable or incomplete files, missing files) that the next writer finds again.
    pub fn acted(&self) -> bool {
        self.staged_removed > 0
            || self.packs_adopted > 0
            || !self.packs_quarantined.is_empty()
            || self.doomed_packs_deleted > 0
            || self.forgotten_files_deleted > 0
            || self.publication_undone.is_some()
            || !self.snapshots_catalogued.is_empty()
            || !self.snapshots_quarantined.is_empty()
            || self.stale_lock.is_some()
    }

    /// Only the lasting states recovery found (what [`Recovery::acted`] leaves out).
    #[must_use]
    pub fn lasting(&self) -> Recovery {
        Recovery {
            packs_unreadable: self.packs_unreadable.clone(),
            snapshots_incomplete: self.snapshots_incomplete.clone(),
            snapshots_unreadable: self.snapshots_unreadable.clone(),
            snapshot_files_missing: self.snapshot_files_missing.clone(),
            ..Recovery::default()
        }
    }

    /// What recovery did or found, in one line for the operator; `None` when nothing.
    pub fn summary(&self) -> Option<String> {
        let counted = [
            (self.staged_removed, "staged files removed"),
            (self.packs_adopted, "sealed packs adopted"),
            (
                self.doomed_packs_rescued,
                "doomed packs kept (a new snapshot needs them)",
            ),
            (self.packs_quarantined.len(), "damaged packs quarantined"),
            (
                self.packs_unreadable.len(),
                "packs unreadable now (left in place)",
            ),
            (
                usize::from(self.publication_undone.is_some()),
                "interrupted publication undone",
            ),
            (
                self.publication_pages_unread.len(),
                "pages of it unreadable (their chunks keep a reference too many; run `tessera verify REPO`)",
            ),
            (
                self.forgotten_files_deleted,
                "files of forgotten snapshots deleted",
            ),
            (
                self.snapshots_catalogued.len(),
                "stored snapshots catalogued",
            ),
            (
                self.snapshots_quarantined.len(),
                "snapshot files quarantined",
            ),
            (
                self.snapshots_incomplete.len(),
                "snapshot files naming objects the repository lacks (kept; run `tessera verify REPO`)",
            ),
            (
                self.snapshots_unreadable.len(),
                "snapshot files unreadable now",
            ),
            (
                self.snapshot_files_missing.len(),
                "catalogued snapshots without a file (run `tessera repair REPO --rebuild-index`)",
            ),
        ];
        let parts: Vec<String> = counted
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        let recovered = (!parts.is_empty())
            .then(|| format!("recovered from an interrupted run: {}", parts.join(", ")));
        let cache = self
            .cache
            .as_ref()
            .and_then(crate::cache::CacheRefresh::summary);
        match (recovered, cache) {
            (Some(r), Some(c)) => Some(format!("{c}; {r}")),
            (r, c) => r.or(c),
        }
    }
}

/// Runs the recovery steps (see module docs). The caller holds the writer lock and opens
/// the repository as its writer.
pub fn recover(storage: &RepoStorage, index: &Index, crypto: &RepoCrypto) -> Result<Recovery> {
    let staged_removed = storage.backend.clean_staging()?;
    Ok(Recovery {
        staged_removed,
        ..catch_up(storage, index, crypto)?
    })
}

/// The recovery steps but the first (see module docs): what bringing an object store's cache
/// up to date runs, for readers too ([`crate::cache::refresh_cache`]). It never discards
/// staged puts: in a shared store those may be other clients' uploads in progress, and only
/// a writer's open, under its lock, aborts the stale ones. The caller holds the writer lock
/// of the local directory.
pub fn catch_up(storage: &RepoStorage, index: &Index, crypto: &RepoCrypto) -> Result<Recovery> {
    let backend = &*storage.backend;
    let mut recovery = Recovery::default();
    // Step 0: the counts a dead publisher raised, lowered again (ops/publish.rs).
    let undone = undo_publishing(index, backend, crypto).map_err(|e| match e {
        crate::error::Error::Io { context, source } => crate::error::Error::Io {
            context: format!(
                "{context}, undoing an interrupted publication (retried at every open; if its pack stays unreadable, `tessera repair REPO --rebuild-index` rebuilds the index without it)"
            ),
            source,
        },
        other => other,
    })?;
    if let Some((id, unread)) = undone {
        recovery.publication_undone = Some(id.to_hex());
        recovery.publication_pages_unread = unread;
    }
    let mut doomed: HashSet<PackId> = index.doomed_packs()?.into_iter().collect();
    if storage.shared {
        // Other machines may still read them: record them, delete them later (doomed.rs).
        recovery.doom_records_stored = crate::doomed::publish(storage, index)?;
        doomed.extend(crate::doomed::records(backend)?.into_keys());
    } else {
        recovery.doomed_packs_deleted = delete_doomed_packs(storage, index)?;
        doomed = index.doomed_packs()?.into_iter().collect();
    }
    // Snapshots before packs (step 2 of the module docs).
    let listed = backend.list(key::SNAPSHOTS)?;
    let tombstoned: HashSet<SnapshotId> = index.tombstones()?.into_iter().collect();
    let adoption = adopt_unindexed_packs(index, backend, &doomed)?;
    recovery.packs_adopted = adoption.adopted;
    recovery.packs_quarantined = adoption.quarantined.iter().map(PackId::to_hex).collect();
    recovery.packs_unreadable = adoption
        .unreadable
        .into_iter()
        .map(|(id, why)| (id.to_hex(), why))
        .collect();
    finish_forgets(backend, index, &mut recovery)?;
    let stored: HashSet<SnapshotId> = listed
        .iter()
        .filter_map(ObjectKey::as_snapshot)
        .filter(|id| !tombstoned.contains(id))
        .collect();
    catalogue_unlisted(storage, index, crypto, &stored, &mut recovery)?;
    apply_markers(backend, index, &listed, &stored)?;
    for (id, _) in index.snapshots()? {
        if !stored.contains(&id) {
            recovery.snapshot_files_missing.push(id.to_hex());
        }
    }
    Ok(recovery)
}

/// Step 4: deletes the files of snapshots a committed forget left behind.
fn finish_forgets(backend: &dyn Backend, index: &Index, recovery: &mut Recovery) -> Result<()> {
    for id in index.tombstones()? {
        backend.delete(&ObjectKey::protection(id))?;
        if backend.size(&ObjectKey::snapshot(id))?.is_some() {
            recovery.forgotten_files_deleted += 1;
        }
        // Retained longer than the forget saw (SPEC §28): the tombstone stays, and a later
        // open deletes the file once its retention has passed.
        if !backend.delete_unless_retained(&ObjectKey::snapshot(id))? {
            continue;
        }
        let mut batch = index.batch();
        batch.clear_tombstone(id);
        index.commit(batch)?;
    }
    Ok(())
}

/// Step 5: catalogues stored snapshots the index does not list. In a shared store, a
/// snapshot naming objects the index lacks first makes the doomed packs be rescued (another
/// client's backup may have used objects only they hold, see `doomed.rs`), once.
fn catalogue_unlisted(
    storage: &RepoStorage,
    index: &Index,
    crypto: &RepoCrypto,
    stored: &HashSet<SnapshotId>,
    recovery: &mut Recovery,
) -> Result<()> {
    let backend = &*storage.backend;
    let mut rescued = !storage.shared;
    let mut unlisted: Vec<SnapshotId> = Vec::new();
    for id in stored {
        if !index.has_snapshot(*id)? {
            unlisted.push(*id);
        }
    }
    unlisted.sort();
    for id in unlisted {
        let snapshot = match load_snapshot(backend, crypto, id) {
            Ok(s) => s,
            Err(e @ crate::error::Error::SnapshotCorrupt { .. }) => {
                quarantine_snapshot(backend, crypto, id)?;
                recovery
                    .snapshots_quarantined
                    .push((id.to_hex(), e.to_string()));
                continue;
            }
            Err(e) => {
                recovery
                    .snapshots_unreadable
                    .push((id.to_hex(), e.to_string()));
                continue;
            }
        };
        let group = storage.publish_group;
        let mut catalogued = catalogue_stored(index, backend, crypto, group, id, &snapshot);
        if matches!(
            catalogued,
            Err(crate::error::Error::SnapshotIncomplete { .. })
        ) && !rescued
        {
            rescued = true;
            recovery.doomed_packs_rescued = crate::doomed::rescue(storage, index)?;
            catalogued = catalogue_stored(index, backend, crypto, group, id, &snapshot);
        }
        match catalogued {
            Ok(()) => recovery.snapshots_catalogued.push(id.to_hex()),
            // The file is sound; what it names is missing or unreadable now. Kept in place.
            Err(e @ crate::error::Error::SnapshotIncomplete { .. }) => recovery
                .snapshots_incomplete
                .push((id.to_hex(), e.to_string())),
            // A page it names could not be read now (EIO, EACCES): left for the next writer,
            // which must still open.
            Err(e @ crate::error::Error::Io { .. }) => recovery.snapshots_unreadable.push((
                id.to_hex(),
                format!("{e} (a page it names could not be read now)"),
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves a snapshot file that cannot be catalogued into quarantine (copy, then delete).
/// A sealed (format 2) file under a plain config is never moved: a plain repository has
/// none, so the config was replaced (a downgrade), and the whole operation is refused with
/// [`crate::Error::EncryptionMismatch`] instead (SPEC.md §23.5).
pub(crate) fn quarantine_snapshot(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    id: SnapshotId,
) -> Result<()> {
    if !crypto.is_encrypted() && crate::crypto::keyring::is_sealed_snapshot(backend, id)? {
        return Err(crate::error::Error::EncryptionMismatch {
            location: backend.describe(),
            reason: format!(
                "the config says the repository is not encrypted, yet snapshot file {id} is sealed (format 2)"
            ),
        });
    }
    let bytes = backend.get(&ObjectKey::snapshot(id))?;
    backend.put_bytes(
        &ObjectKey::quarantined_snapshot(id),
        PutMode::Replace,
        &bytes,
    )?;
    // The file before its marker: a crash between the two leaves an orphan marker (which
    // step 6 deletes), never an unprotected file.
    backend.delete_unless_retained(&ObjectKey::snapshot(id))?;
    backend.delete(&ObjectKey::protection(id))
}

/// Stored snapshot files the catalog does not list (forgotten ones whose files a crash kept
/// excepted), sorted. After a writer's recovery these are the incomplete and the unreadable
/// ones: the objects they name that the index has are at count 0, so compaction must not
/// run while any exists.
pub fn uncatalogued_snapshots(backend: &dyn Backend, index: &Index) -> Result<Vec<SnapshotId>> {
    let tombstoned: HashSet<SnapshotId> = index.tombstones()?.into_iter().collect();
    let mut ids = Vec::new();
    for key in backend.list(key::SNAPSHOTS)? {
        if let Some(id) = key.as_snapshot() {
            if !tombstoned.contains(&id) && !index.has_snapshot(id)? {
                ids.push(id);
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// Step 6: protection markers decide protection.
fn apply_markers(
    backend: &dyn Backend,
    index: &Index,
    listed: &[ObjectKey],
    stored: &HashSet<SnapshotId>,
) -> Result<()> {
    let protected = index.protected()?;
    let mut batch = index.batch();
    for key in listed {
        let Some(KeyKind::Protection(id)) = key.kind() else {
            continue;
        };
        if !stored.contains(&id) {
            backend.delete(key)?;
        } else if !protected.contains(&id) && index.has_snapshot(id)? {
            batch.set_protected(id, true);
        }
    }
    if !batch.is_empty() {
        index.commit(batch)?;
    }
    Ok(())
}

/// Deletes the files of doomed packs no reader and no running backup can still read (no
/// reader holds `readers.lock`; every backup lease's view includes the doom,
/// [`crate::leases`]); returns how many.
pub fn delete_doomed_packs(storage: &RepoStorage, index: &Index) -> Result<usize> {
    let doomed = index.doomed_packs_since()?;
    if doomed.is_empty() {
        return Ok(0);
    }
    let Some(_no_readers) = NoReaders::try_acquire(&storage.local_dir)? else {
        return Ok(0);
    };
    // Running backups hold leases, not `readers.lock`: a pack goes once every one of them
    // reads through a view that no longer places objects in it (`leases.rs`).
    let oldest = crate::leases::oldest_view(&storage.local_dir, &index.identity()?)?;
    let mut batch = index.batch();
    let mut deleted = 0;
    for (pack, doomed_at) in &doomed {
        if oldest.is_some_and(|view| view < *doomed_at) {
            continue;
        }
        // Retained (SPEC §28: a publish extended it between a compaction's plan and its
        // step): it stays doomed until its retention passes.
        if !storage
            .backend
            .delete_unless_retained(&ObjectKey::pack(*pack))?
        {
            continue;
        }
        batch.forget_doomed(*pack);
        deleted += 1;
    }
    index.commit(batch)?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::recover;
    use crate::crypto::{RepoCrypto, RepoKeys};
    use crate::error::{Error, ErrorKind};
    use crate::index::Index;
    use crate::repo::RepoStorage;
    use crate::storage::key::QUARANTINE;
    use crate::storage::{ObjectKey, PutMode};
    use crate::store::snapshot_file::{encode, tests::snapshot};
    use tessera_format::RepoId;

    /// A config replaced by a plain one must not make recovery quarantine the sealed
    /// snapshot files it cannot read as plain ones: it refuses, and the file stays.
    #[test]
    fn recovery_under_a_plain_config_never_quarantines_a_sealed_snapshot_file() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["packs", "snapshots", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let storage = RepoStorage::local(dir.path());
        let index = Index::create(&storage.index_path(), RepoId([5; 16])).unwrap();
        let sealed = RepoCrypto::encrypted(&RepoKeys::generate()).unwrap();
        let (id, file) = encode(&sealed, &snapshot("vm")).unwrap();
        storage
            .backend
            .put_bytes(&ObjectKey::snapshot(id), PutMode::Create, &file)
            .unwrap();
        let err = recover(&storage, &index, &RepoCrypto::plain()).unwrap_err();
        assert!(matches!(err, Error::EncryptionMismatch { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Damage);
        assert_eq!(storage.backend.get(&ObjectKey::snapshot(id)).unwrap(), file);
        assert!(storage.backend.list(QUARANTINE).unwrap().is_empty());
        // Under its own keys the same file decodes (it names pages this test never stored,
        // so it is kept as incomplete), and is not quarantined either.
        let found = recover(&storage, &index, &sealed).unwrap();
        assert!(found.snapshots_quarantined.is_empty());
        assert_eq!(found.snapshots_incomplete.len(), 1, "{found:?}");
    }
}
