//! [`PackSink`]: the one place that appends encoded objects into packs and seals them. Every
//! writer of packs uses it — backup ([`super::session`]), key-backup healing, compaction,
//! repair and seed-bundle export — so pack size, sealing and the crash order are decided
//! once.
//!
//! Each appended object carries a tag `T` (what its caller needs to index it once its pack
//! is durable). The caller decides when to seal ([`PackSink::is_full`] says when the target
//! size is reached), because some callers must commit whole groups of objects together
//! (compaction dooms an old pack only in the batch that re-points its last live object).
//!
//! Crash reasoning: an object is durable only once [`PackSink::seal`] returns its pack
//! (the backend's put finished); before that, a crash leaves at most staged data that the
//! backend discards. Nothing refers to the objects until the caller commits an index batch
//! after the seal.

use tessera_format::ObjectInfo;

use super::pack_writer::{PackWriter, SealedPack};
use crate::error::Result;
use crate::storage::Backend;

/// Packs are sealed once they reach this size (SPEC §4).
pub const TARGET_PACK_SIZE: u64 = 32 << 20;

/// A sealed pack and the tags of its objects, in footer order.
pub struct Sealed<T> {
    /// The durable pack.
    pub pack: SealedPack,
    /// `tags[i]` belongs to `pack.entries[i]`.
    pub tags: Vec<T>,
}

/// See the module docs.
pub struct PackSink<'b, T> {
    backend: &'b dyn Backend,
    target: u64,
    writer: Option<PackWriter>,
    tags: Vec<T>,
}

impl<'b, T> PackSink<'b, T> {
    /// A sink writing packs of about `target` bytes into `backend`.
    pub fn new(backend: &'b dyn Backend, target: u64) -> Self {
        Self {
            backend,
            target,
            writer: None,
            tags: Vec::new(),
        }
    }

    /// Appends one encoded object to the open pack (starting one if needed).
    pub fn append(&mut self, info: &ObjectInfo, stored: &[u8], tag: T) -> Result<()> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(PackWriter::create(self.backend)?),
        };
        writer.append(info, stored)?;
        self.tags.push(tag);
        Ok(())
    }

    /// Whether the open pack has reached the target size.
    pub fn is_full(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.len() >= self.target)
    }

    /// Bytes in the open pack (0 when none is open).
    pub fn open_len(&self) -> u64 {
        self.writer.as_ref().map_or(0, PackWriter::len)
    }

    /// Seals the open pack if it holds anything; returns it with its objects' tags.
    pub fn seal(&mut self) -> Result<Option<Sealed<T>>> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        if writer.is_empty() {
            return Ok(None);
        }
        let pack = writer.finish()?;
        Ok(Some(Sealed {
            pack,
            tags: std::mem::take(&mut self.tags),
        }))
    }

    /// Seals the open pack when it has reached the target size.
    pub fn seal_if_full(&mut self) -> Result<Option<Sealed<T>>> {
        if self.is_full() {
            self.seal()
        } else {
            Ok(None)
        }
    }
}
