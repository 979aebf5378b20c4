//! A writer's session with the store: appends encoded objects into packs through the
//! [`PackSink`], and indexes each sealed pack's objects (with reference count 0; counts are
//! raised only when a snapshot that references them is committed).
//!
//! A backup stores under its series lock only, with a reader's view of the index (SPEC.md
//! §8): its session cannot index what it seals. It remembers every object it wrote instead,
//! in a [`ScratchSet`] on disk (the open pack's objects in memory), and leaves its sealed
//! packs to the recovery of the writer it publishes through, which finds them unindexed and
//! adopts them ([`adopt_unindexed_packs`]); a crash before that leaves them to the next
//! writer.

use std::collections::HashSet;

use tessera_format::pack::FooterEntry;
use tessera_format::{ObjectInfo, ObjectKind, PackId};

use crate::error::Result;
use crate::index::{Index, ObjectEntry, PackEntry, ScratchSet};
use crate::storage::Backend;
use crate::store::pack_scan::read_pack_contents;
use crate::store::pack_sink::PackSink;
use crate::store::pack_writer::SealedPack;

pub use crate::store::pack_sink::TARGET_PACK_SIZE;

/// Counters of what a session wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Packs sealed.
    pub packs: u64,
    /// Objects appended.
    pub objects: u64,
    /// Raw bytes of those objects.
    pub raw_bytes: u64,
    /// Stored bytes of those objects.
    pub stored_bytes: u64,
}

/// See the module docs.
pub struct WriteSession<'a> {
    index: &'a Index,
    sink: PackSink<'a, ()>,
    /// The open pack's objects (and, in a session that cannot index and has no scratch
    /// set, every object written).
    pending: HashSet<(ObjectKind, [u8; 32])>,
    /// Objects of sealed packs the index does not know (a session that cannot index).
    scratch: Option<ScratchSet>,
    /// What was written.
    pub stats: SessionStats,
    /// The packs sealed, in order.
    pub sealed: Vec<PackId>,
}

impl<'a> WriteSession<'a> {
    /// A session writing packs of about `pack_target` bytes into `backend` and indexing
    /// them into `index`.
    pub fn new(index: &'a Index, backend: &'a dyn Backend, pack_target: u64) -> Self {
        Self {
            index,
            sink: PackSink::new(backend, pack_target),
            pending: HashSet::new(),
            scratch: None,
            stats: SessionStats::default(),
            sealed: Vec::new(),
        }
    }

    /// Remembers the objects of sealed packs in `scratch` rather than in memory (a session
    /// whose index is a reader's view).
    #[must_use]
    pub fn with_scratch(mut self, scratch: ScratchSet) -> Self {
        self.scratch = Some(scratch);
        self
    }

    /// Whether the object was appended in this session and the index does not know it yet
    /// (its pack is not sealed yet, or the session cannot index).
    pub fn is_pending(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<bool> {
        if self.pending.contains(&(kind, *digest)) {
            return Ok(true);
        }
        match &self.scratch {
            Some(scratch) => scratch.contains(kind, digest),
            None => Ok(false),
        }
    }

    /// Appends an encoded object unless this session already holds it. The caller has
    /// checked that the index does not. Returns whether it was written.
    pub fn add(&mut self, info: &ObjectInfo, stored: &[u8]) -> Result<bool> {
        if self.is_pending(info.kind, &info.digest.0)? {
            return Ok(false);
        }
        self.pending.insert((info.kind, info.digest.0));
        self.sink.append(info, stored, ())?;
        self.stats.objects += 1;
        self.stats.raw_bytes += u64::from(info.raw_len);
        self.stats.stored_bytes += u64::from(info.stored_len);
        if self.sink.is_full() {
            self.seal()?;
        }
        Ok(true)
    }

    /// Seals the open pack, if any, and indexes its objects if the session's index is the
    /// writer's (see the module docs).
    pub fn seal(&mut self) -> Result<()> {
        if let Some(sealed) = self.sink.seal()? {
            if self.index.is_writer() {
                index_pack(self.index, &sealed.pack)?;
                self.pending.clear();
            } else if let Some(scratch) = &self.scratch {
                scratch.insert_many(&self.pending)?;
                self.pending.clear();
            }
            self.sealed.push(sealed.pack.id);
            self.stats.packs += 1;
        }
        Ok(())
    }

    /// Seals the last pack. After this every object of the session is in the writer's
    /// index, or (a backup's session) in a sealed pack the publishing writer adopts.
    pub fn finish(self) -> Result<SessionStats> {
        self.finish_sealed().map(|(stats, _)| stats)
    }

    /// [`Self::finish`], also returning the packs sealed.
    pub fn finish_sealed(mut self) -> Result<(SessionStats, Vec<PackId>)> {
        self.seal()?;
        Ok((self.stats, self.sealed))
    }
}

/// Records a sealed pack and the locations of its objects. Objects the index already knows
/// (from another pack) keep their existing entry and count.
pub fn index_pack(index: &Index, sealed: &SealedPack) -> Result<()> {
    index_entries(index, sealed.id, sealed.size, &sealed.entries)
}

fn index_entries(index: &Index, pack: PackId, size: u64, entries: &[FooterEntry]) -> Result<()> {
    let mut batch = index.batch();
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        let of_kind: Vec<&FooterEntry> = entries.iter().filter(|e| e.info.kind == kind).collect();
        let keys: Vec<[u8; 32]> = of_kind.iter().map(|e| e.info.digest.0).collect();
        let known = index.contains_many_once(kind, &keys)?;
        for (e, known) in of_kind.iter().zip(known) {
            if !known {
                batch.put_object(kind, &e.info.digest.0, &ObjectEntry::found(pack, e));
            }
        }
    }
    batch.put_pack(pack, PackEntry::now(size, entries.len() as u32));
    index.commit(batch)
}

/// What adopting unindexed packs found.
#[derive(Debug, Default, Clone)]
pub struct Adoption {
    /// Packs indexed.
    pub adopted: usize,
    /// Packs that could not be read now (left in place for the next writer), with why.
    pub unreadable: Vec<(PackId, String)>,
    /// Packs whose header is damaged (no record can be trusted): moved to quarantine.
    pub quarantined: Vec<PackId>,
}

/// Indexes sealed packs the index does not know: those whose writer crashed between sealing
/// and indexing. Cost: one listing, plus a footer read per unknown pack. A pack that cannot
/// be read is reported and skipped (never deleted); one whose header is damaged is moved to
/// quarantine, so that it no longer stops every writer from opening.
pub fn adopt_unindexed_packs(
    index: &Index,
    backend: &dyn Backend,
    skip: &HashSet<PackId, impl std::hash::BuildHasher>,
) -> Result<Adoption> {
    let mut known: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    known.extend(skip);
    // A pack with a copy in quarantine was put there by repair (or recovery) and stays in
    // place only because the store retains it (SPEC §28): adopting it again would undo the
    // repair.
    known.extend(
        backend
            .list(crate::storage::key::QUARANTINE)?
            .iter()
            .filter_map(|key| match key.kind() {
                Some(crate::storage::key::KeyKind::Quarantined(id)) => Some(id),
                _ => None,
            }),
    );
    let mut found = Adoption::default();
    for key in backend.list(crate::storage::key::PACKS)? {
        let Some(id) = key.as_pack() else {
            continue;
        };
        if known.contains(&id) {
            continue;
        }
        match read_pack_contents(backend, id) {
            Ok(contents) => {
                index_entries(index, id, contents.size, &contents.entries)?;
                found.adopted += 1;
            }
            Err(crate::error::Error::PackCorrupt { .. }) => {
                crate::store::quarantine::quarantine_pack(backend, id)?;
                found.quarantined.push(id);
            }
            Err(e) => found.unreadable.push((id, e.to_string())),
        }
    }
    Ok(found)
}
