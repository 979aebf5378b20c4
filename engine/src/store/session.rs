//! A writer's session with the store: appends encoded objects into packs, seals packs at a
//! target size, and indexes each sealed pack's objects (with reference count 0; counts are
//! raised only when a snapshot that references them is committed).

use std::collections::HashSet;

use rocksdb::WriteBatch;
use tessera_format::pack::FooterEntry;
use tessera_format::{ObjectInfo, ObjectKind, PackId};

use crate::backend::{Backend, Namespace};
use crate::error::Result;
use crate::index::{Index, ObjectEntry, PackEntry};
use crate::store::pack_scan::read_pack_contents;
use crate::store::pack_writer::{PackWriter, SealedPack};

/// Packs are sealed once they reach this size.
pub const TARGET_PACK_SIZE: u64 = 32 << 20;

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

/// See the module docs. Must be used by the lock holder only.
pub struct WriteSession<'a> {
    index: &'a Index,
    backend: &'a dyn Backend,
    current: Option<PackWriter>,
    pending: HashSet<(ObjectKind, [u8; 32])>,
    /// What was written.
    pub stats: SessionStats,
}

impl<'a> WriteSession<'a> {
    /// A session writing into `backend` and indexing into `index`.
    pub fn new(index: &'a Index, backend: &'a dyn Backend) -> Self {
        Self {
            index,
            backend,
            current: None,
            pending: HashSet::new(),
            stats: SessionStats::default(),
        }
    }

    /// Whether the object was appended in this session but its pack is not sealed yet
    /// (the index does not know it yet).
    pub fn is_pending(&self, kind: ObjectKind, digest: &[u8; 32]) -> bool {
        self.pending.contains(&(kind, *digest))
    }

    /// Appends an encoded object unless this session already holds it. The caller has
    /// checked that the index does not. Returns whether it was written.
    pub fn add(&mut self, info: &ObjectInfo, stored: &[u8]) -> Result<bool> {
        if !self.pending.insert((info.kind, info.digest.0)) {
            return Ok(false);
        }
        let writer = match &mut self.current {
            Some(w) => w,
            None => self.current.insert(PackWriter::create(self.backend)?),
        };
        writer.append(info, stored)?;
        self.stats.objects += 1;
        self.stats.raw_bytes += u64::from(info.raw_len);
        self.stats.stored_bytes += u64::from(info.stored_len);
        if writer.len() >= TARGET_PACK_SIZE {
            self.seal()?;
        }
        Ok(true)
    }

    /// Seals the open pack, if any, and indexes its objects.
    pub fn seal(&mut self) -> Result<()> {
        if let Some(writer) = self.current.take() {
            if writer.is_empty() {
                return Ok(());
            }
            let sealed = writer.finish()?;
            index_pack(self.index, &sealed)?;
            self.pending.clear();
            self.stats.packs += 1;
        }
        Ok(())
    }

    /// Seals the last pack. After this every object of the session is in the index.
    pub fn finish(mut self) -> Result<SessionStats> {
        self.seal()?;
        Ok(self.stats)
    }
}

/// Records a sealed pack and the locations of its objects. Objects the index already knows
/// (from another pack) keep their existing entry and count.
pub fn index_pack(index: &Index, sealed: &SealedPack) -> Result<()> {
    index_entries(index, sealed.id, sealed.size, &sealed.entries)
}

fn index_entries(index: &Index, pack: PackId, size: u64, entries: &[FooterEntry]) -> Result<()> {
    let mut batch = WriteBatch::default();
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        let of_kind: Vec<&FooterEntry> = entries.iter().filter(|e| e.info.kind == kind).collect();
        let keys: Vec<[u8; 32]> = of_kind.iter().map(|e| e.info.digest.0).collect();
        let known = index.contains_many(kind, &keys)?;
        for (e, known) in of_kind.iter().zip(known) {
            if !known {
                index.put_object(&mut batch, kind, &e.info.digest.0, &object_entry(pack, e));
            }
        }
    }
    index.put_pack(
        &mut batch,
        pack,
        PackEntry {
            size,
            objects: entries.len() as u32,
        },
    );
    index.write(batch)
}

/// The index entry (count 0, never verified) of an object found in a pack.
pub fn object_entry(pack: PackId, e: &FooterEntry) -> ObjectEntry {
    ObjectEntry {
        pack,
        offset: e.offset,
        stored_len: e.info.stored_len,
        raw_len: e.info.raw_len,
        codec: e.info.codec,
        stored_crc: e.info.stored_crc,
        refcount: 0,
        verified_at_us: 0,
    }
}

/// Indexes sealed packs the index does not know: those whose writer crashed between sealing
/// and indexing. Cost: one directory listing, plus a footer read per unknown pack.
pub fn adopt_unindexed_packs(
    index: &Index,
    backend: &dyn Backend,
    skip: &HashSet<PackId, impl std::hash::BuildHasher>,
) -> Result<usize> {
    let mut known: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    known.extend(skip);
    let mut adopted = 0;
    for name in backend.list(Namespace::Packs)? {
        let Ok(id) = name.parse::<PackId>() else {
            continue;
        };
        if known.contains(&id) {
            continue;
        }
        let contents = read_pack_contents(backend, id)?;
        index_entries(index, id, contents.size, &contents.entries)?;
        adopted += 1;
    }
    Ok(adopted)
}
