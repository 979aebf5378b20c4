//! Where checked objects and snapshots go: a local repository opened as writer
//! ([`LocalSink`]), or a remote server (the HTTP client, which the server turns back into
//! a [`LocalSink`] on its side).

use std::collections::HashMap;

use tessera_format::{IdScheme, ObjectKind, Snapshot, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::ops::publish::{check_pages, publish_file};
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
    /// The id scheme and record protection objects are checked under before they are put:
    /// the destination's (a source it exchanges records with shares its keys).
    fn crypto(&self) -> std::sync::Arc<RepoCrypto>;
}

/// A local repository opened as the writer.
pub struct LocalSink<'r> {
    repo: &'r Repository,
    session: Option<WriteSession<'r>>,
    publisher: Publisher,
}

impl<'r> LocalSink<'r> {
    /// A sink appending to `repo` (opened with [`Repository::open_writer`]) for `publisher`.
    pub fn new(repo: &'r Repository, publisher: Publisher) -> Self {
        Self {
            repo,
            session: None,
            publisher,
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

    fn key_fingerprint(&self) -> Result<Option<[u8; 16]>> {
        Ok(self.repo.config().encryption.fingerprint())
    }

    fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        self.repo.snapshots()
    }
}

impl ObjectSink for LocalSink<'_> {
    fn contains_many(&mut self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        let known = self.repo.index().contains_many(kind, digests)?;
        let session = self.session.as_ref();
        known
            .into_iter()
            .zip(digests)
            .map(|(k, d)| match session {
                Some(s) if !k => s.is_pending(kind, d),
                _ => Ok(k),
            })
            .collect()
    }

    /// Appends the objects the index lacks, each once. An object it holds dead (count 0)
    /// is not stored again, but its death is renewed ([`crate::index::Index::hold_many`]):
    /// the sender is about to publish a snapshot naming it.
    fn put(&mut self, kind: ObjectKind, objects: Vec<CheckedObject>) -> Result<()> {
        let digests: Vec<[u8; 32]> = objects.iter().map(|o| o.info.digest.0).collect();
        let (held, _) = self.repo.index().hold_many(kind, &digests)?;
        for (o, held) in objects.into_iter().zip(held) {
            debug_assert_eq!(o.info.kind, kind);
            // A digest twice in one put: the session forgets what it appended once a pack
            // is sealed (the index knows it then), so ask the index again.
            if !held
                && self
                    .repo
                    .index()
                    .get_object(kind, &o.info.digest.0)?
                    .is_none()
            {
                self.session().add(&o.info, &o.stored)?;
            }
        }
        Ok(())
    }

    fn publish(&mut self, snapshot_bytes: &[u8]) -> Result<SnapshotId> {
        self.seal()?;
        publish_checked(self.repo, snapshot_bytes, self.publisher)
    }

    fn crypto(&self) -> std::sync::Arc<RepoCrypto> {
        self.repo.crypto_arc()
    }
}

/// Decodes an untrusted snapshot file under the receiver's `crypto` (a sealed one must open
/// under its keys) and names it by its content hash.
pub fn decode_snapshot(
    from: &str,
    crypto: &RepoCrypto,
    bytes: &[u8],
) -> Result<(SnapshotId, Snapshot)> {
    let id = SnapshotId::of(bytes);
    let snapshot =
        crate::store::snapshot_file::decode(crypto, bytes).map_err(|e| Error::UntrustedData {
            from: from.to_string(),
            reason: format!("snapshot {id} does not decode: {e}"),
        })?;
    Ok((id, snapshot))
}

/// How far in the future of this machine's clock a snapshot's time may be (clock skew),
/// when an operator brings it (sync, seed import).
pub const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;
/// The same for a snapshot a client pushes through `tessera serve`. A client's snapshot
/// carries the time its backup *started*, and it is pushed after the backup ended, so on a
/// clock kept by NTP it is in the past; this allows for a clock a little off. Kept short
/// because a snapshot from the future is the newest of its series until then: it would be
/// `latest`, and refuse the real client's next snapshots (not newer) for that long.
pub const MAX_CLIENT_CLOCK_SKEW_US: i64 = 30 * 1_000_000;

/// Who hands a snapshot over for publishing, which decides how far its claimed time is
/// trusted (SPEC §22.1). Retention and `latest` order snapshots by their time, so a forged
/// time could make a planted snapshot "newest" forever (year 9999) or displace real ones
/// from their retention slots (a past time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// An operator's own sync or seed import: history may arrive in any order.
    Operator,
    /// A client pushing through `tessera serve`: its snapshot must be newer than every
    /// snapshot the series already has (time only moves forward within a series, as in
    /// Proxmox Backup Server's backup groups).
    Client,
}

/// Refuses a snapshot time too far in the future, and, for clients, one not newer than
/// the newest snapshot of its series.
pub fn check_time(repo: &Repository, snapshot: &Snapshot, publisher: Publisher) -> Result<()> {
    let h = &snapshot.header;
    let now = crate::time::now_us();
    let skew = match publisher {
        Publisher::Operator => MAX_CLOCK_SKEW_US,
        Publisher::Client => MAX_CLIENT_CLOCK_SKEW_US,
    };
    if h.time_us > now.saturating_add(skew) {
        return Err(Error::Refused { reason: format!(
            "snapshot of series {:?} claims the time {}, {} s ahead of this machine's clock ({}; at most {} s allowed); a snapshot from the future would outrank every real one in retention, so it is refused (fix the sender's clock)",
            h.series,
            crate::time::format_us(h.time_us),
            (h.time_us - now) / 1_000_000,
            crate::time::format_us(now),
            skew / 1_000_000
        )});
    }
    if publisher == Publisher::Client {
        let newest = repo
            .index()
            .snapshots()?
            .into_iter()
            .filter(|(_, other)| other.series == h.series)
            .map(|(_, other)| other.time_us)
            .max();
        if let Some(newest) = newest.filter(|t| *t >= h.time_us) {
            return Err(Error::Refused { reason: format!(
                "series {:?} already has a snapshot from {}; a client may only add snapshots newer than its series' newest (this one claims {})",
                h.series,
                crate::time::format_us(newest),
                crate::time::format_us(h.time_us)
            )});
        }
    }
    Ok(())
}

/// Publishes an untrusted snapshot file into `repo` (writer): its time must pass
/// [`check_time`]; every page it names must be in the index, readable, and hold the number
/// of entries its position requires; every chunk of a page that becomes live must be in the
/// index (checked while staging counts). The block size of each disk must match what `repo`
/// already has for that series+disk.
pub fn publish_checked(
    repo: &Repository,
    bytes: &[u8],
    publisher: Publisher,
) -> Result<SnapshotId> {
    let from = repo.describe();
    let id = SnapshotId::of(bytes);
    if repo.index().has_snapshot(id)? {
        return Ok(id);
    }
    // The file must be in canonical form: publishing stores it verbatim under its hash.
    let snapshot =
        crate::store::snapshot_file::decode_canonical(repo.crypto(), bytes).map_err(|reason| {
            Error::UntrustedData {
                from: from.clone(),
                reason: format!("snapshot {id}: {reason}; nothing was published"),
            }
        })?;
    check_time(repo, &snapshot, publisher)?;
    let known = block_sizes(&Catalog::snapshots(repo)?);
    check_block_sizes(&known, &SnapshotSummary::of(id, &snapshot.header))?;
    check_pages(repo.index(), repo.backend(), repo.crypto(), &snapshot).map_err(|e| match e {
        Error::SnapshotIncomplete { reason } => Error::UntrustedData {
            from: from.clone(),
            reason: format!("snapshot {id}: {reason}"),
        },
        other => other,
    })?;
    // Planning the counts is where a chunk the snapshot's new pages name, but that was never
    // sent, shows up: the index is the record of what is stored, so that is the sender's
    // fault (refused), not damage here.
    publish_file(repo, id, bytes, &snapshot).map_err(|e| match e {
        Error::ObjectMissing { kind, digest } => Error::UntrustedData {
            from,
            reason: format!(
                "snapshot {id} names {kind:?} {digest}, which was never stored here (send it before publishing); nothing was published"
            ),
        },
        other => other,
    })
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
