//! Where checked objects and snapshots go: a local repository opened as writer
//! ([`LocalSink`]), or a remote server (the HTTP client, which the server turns back into
//! a [`LocalSink`] on its side).

use std::collections::{HashMap, HashSet};

use tessera_format::manifest::entries_in_page;
use tessera_format::{IdScheme, ObjectKind, PageDigest, Snapshot, SnapshotId};

use crate::error::{Error, Result};
use crate::ops::publish::publish_snapshot;
use crate::refcount::RefDeltas;
use crate::repo::Repository;
use crate::store::session::WriteSession;

use super::checked::CheckedObject;
use super::source::{Catalog, SnapshotSummary};

/// Receives objects and publishes snapshots.
pub trait ObjectSink: Catalog {
    /// For each digest, whether the destination already holds it (durably, or pending in
    /// this session).
    fn contains_many(&mut self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>>;
    /// Appends checked objects.
    fn put(&mut self, kind: ObjectKind, objects: Vec<CheckedObject>) -> Result<()>;
    /// Makes everything put so far durable and indexed, checks that the snapshot's objects
    /// are all present, computes its reference counts and publishes it.
    fn publish(&mut self, snapshot_bytes: &[u8]) -> Result<SnapshotId>;
}

/// A local repository opened as the writer.
pub struct LocalSink<'r> {
    repo: &'r Repository,
    session: Option<WriteSession<'r>>,
}

impl<'r> LocalSink<'r> {
    /// A sink appending to `repo` (opened with [`Repository::open_writer`]).
    pub fn new(repo: &'r Repository) -> Self {
        Self {
            repo,
            session: None,
        }
    }

    fn session(&mut self) -> &mut WriteSession<'r> {
        self.session.get_or_insert_with(|| {
            WriteSession::new(
                self.repo.index(),
                self.repo.backend(),
                self.repo.pack_target(),
            )
        })
    }

    /// Seals the open pack, so that everything put so far is durable and indexed.
    pub fn seal(&mut self) -> Result<()> {
        match self.session.as_mut() {
            Some(s) => s.seal(),
            None => Ok(()),
        }
    }
}

impl Catalog for LocalSink<'_> {
    fn describe(&self) -> String {
        self.repo.describe()
    }

    fn id_scheme(&self) -> Result<IdScheme> {
        self.repo.id_scheme()
    }

    fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        self.repo.snapshots()
    }
}

impl ObjectSink for LocalSink<'_> {
    fn contains_many(&mut self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        let known = self.repo.index().contains_many(kind, digests)?;
        let session = self.session.as_ref();
        Ok(known
            .into_iter()
            .zip(digests)
            .map(|(k, d)| k || session.is_some_and(|s| s.is_pending(kind, d)))
            .collect())
    }

    fn put(&mut self, kind: ObjectKind, objects: Vec<CheckedObject>) -> Result<()> {
        for o in objects {
            debug_assert_eq!(o.info.kind, kind);
            let digest = o.info.digest.0;
            if self.repo.index().get_object(kind, &digest)?.is_some() {
                continue;
            }
            self.session().add(&o.info, &o.stored)?;
        }
        Ok(())
    }

    fn publish(&mut self, snapshot_bytes: &[u8]) -> Result<SnapshotId> {
        self.seal()?;
        publish_checked(self.repo, snapshot_bytes)
    }
}

/// Decodes an untrusted snapshot file and checks it against its content hash.
pub fn decode_snapshot(from: &str, bytes: &[u8]) -> Result<(SnapshotId, Snapshot)> {
    let id = SnapshotId::of(bytes);
    let snapshot = Snapshot::decode(bytes).map_err(|e| Error::UntrustedData {
        from: from.to_string(),
        reason: format!("snapshot {id} does not decode: {e}"),
    })?;
    Ok((id, snapshot))
}

/// Publishes an untrusted snapshot file into `repo` (writer): every page it names must be
/// in the index, readable, and hold the number of entries its position requires; every
/// chunk of a page that becomes live must be in the index (checked while staging counts).
/// The block size of each disk must match what `repo` already has for that series+disk.
pub fn publish_checked(repo: &Repository, bytes: &[u8]) -> Result<SnapshotId> {
    let from = repo.describe();
    let (id, snapshot) = decode_snapshot(&from, bytes)?;
    if repo.index().has_snapshot(id)? {
        return Ok(id);
    }
    let known = block_sizes(&Catalog::snapshots(repo)?);
    check_block_sizes(&known, &SnapshotSummary::of(id, &snapshot.header))?;
    let mut refs = RefDeltas::default();
    let mut seen: HashSet<PageDigest> = HashSet::new();
    for (disk, roots) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = disk.size.div_ceil(u64::from(disk.block_size));
        for (page_no, page) in roots.iter().enumerate() {
            *refs.pages.entry(*page).or_default() += 1;
            let digests = repo
                .read_page(*page, blocks, disk.page_entries, page_no as u64)
                .map_err(|e| Error::UntrustedData {
                    from: from.clone(),
                    reason: format!(
                        "snapshot {id} disk {:?} page {page_no} ({page}): {e}",
                        disk.name
                    ),
                })?;
            debug_assert_eq!(
                digests.len() as u64,
                entries_in_page(blocks, disk.page_entries, page_no as u64)
            );
            if seen.insert(*page) {
                let entry = repo.index().get_object(ObjectKind::Page, page.as_bytes())?;
                if entry.is_none_or(|e| e.refcount == 0) {
                    refs.add_chunks(&digests, 1);
                }
            }
        }
    }
    let published = publish_snapshot(repo, &snapshot, &refs)?;
    if published != id {
        return Err(Error::UntrustedData {
            from,
            reason: format!(
                "snapshot {id} re-encoded as {published}: its file is not in canonical form"
            ),
        });
    }
    Ok(id)
}

/// `(series, disk) → block size` of a catalog.
pub fn block_sizes(catalog: &[SnapshotSummary]) -> HashMap<(String, String), u32> {
    let mut out = HashMap::new();
    for s in catalog {
        for (disk, bs) in &s.disks {
            out.entry((s.series.clone(), disk.clone())).or_insert(*bs);
        }
    }
    out
}

/// Refuses a snapshot whose disk block size differs from the destination's for the same
/// series and disk: its blocks would never deduplicate against what is already there.
pub fn check_block_sizes<S: std::hash::BuildHasher>(
    known: &HashMap<(String, String), u32, S>,
    snap: &SnapshotSummary,
) -> Result<()> {
    for (disk, bs) in &snap.disks {
        if let Some(have) = known.get(&(snap.series.clone(), disk.clone())) {
            if have != bs {
                return Err(Error::BlockSizeMismatch {
                    series: snap.series.clone(),
                    disk: disk.clone(),
                    snapshot: snap.id,
                    theirs: *bs,
                    ours: *have,
                });
            }
        }
    }
    Ok(())
}
