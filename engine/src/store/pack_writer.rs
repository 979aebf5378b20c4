//! Writing one pack file.

use std::io::Write;

use tessera_format::pack::{
    encode_footer, encode_pack_header, encode_record_header, FooterEntry, PACK_HEADER_LEN,
    RECORD_HEADER_LEN,
};
use tessera_format::{ObjectInfo, PackId};

use crate::error::{Error, IoContext, Result};
use crate::index::{IndexBatch, ObjectEntry, PackEntry};
use crate::storage::{Backend, ObjectKey, ObjectWriter, PutMode};

/// A pack being written. Nothing is visible until [`PackWriter::finish`] returns; dropping
/// the writer discards the staged file.
pub struct PackWriter {
    id: PackId,
    out: Box<dyn ObjectWriter>,
    len: u64,
    entries: Vec<FooterEntry>,
}

/// A sealed, durable pack.
#[derive(Debug, Clone)]
pub struct SealedPack {
    /// Its id.
    pub id: PackId,
    /// File size.
    pub size: u64,
    /// Its footer entries.
    pub entries: Vec<FooterEntry>,
}

impl SealedPack {
    /// Its catalog entry in the index.
    pub fn catalog_entry(&self) -> PackEntry {
        PackEntry::now(self.size, self.entries.len() as u32)
    }
}

impl SealedPack {
    /// Adds the pack to the catalog and points each object at its new location in `batch`,
    /// keeping the count of objects the index knew (`known[i]`, the entry of `entries[i]`)
    /// and giving new ones count 0.
    pub fn index_into(&self, batch: &mut IndexBatch<'_>, known: &[Option<ObjectEntry>]) {
        batch.put_pack(self.id, self.catalog_entry());
        for (i, fe) in self.entries.iter().enumerate() {
            let entry = match known.get(i).copied().flatten() {
                Some(old) => old.relocated(self.id, fe),
                None => ObjectEntry::found(self.id, fe),
            };
            batch.put_object(fe.info.kind, &fe.info.digest.0, &entry);
        }
    }
}

impl PackWriter {
    /// Starts a new pack with a random id.
    pub fn create(backend: &dyn Backend) -> Result<Self> {
        let id = PackId(rand::random());
        let mut out = backend.put(&ObjectKey::pack(id), PutMode::Create)?;
        out.write_all(&encode_pack_header())
            .ctx(|| format!("writing pack {id}"))?;
        Ok(Self {
            id,
            out,
            len: PACK_HEADER_LEN as u64,
            entries: Vec::new(),
        })
    }

    /// Appends one record.
    pub fn append(&mut self, info: &ObjectInfo, stored: &[u8]) -> Result<()> {
        if stored.len() != info.stored_len as usize {
            return Err(Error::Internal(format!(
                "pack {}: {} stored bytes under a record header saying {}",
                self.id,
                stored.len(),
                info.stored_len
            )));
        }
        let id = self.id;
        let header = encode_record_header(info)
            .map_err(|e| Error::Internal(format!("record header: {e}")))?;
        self.out
            .write_all(&header)
            .ctx(|| format!("writing pack {id}"))?;
        self.out
            .write_all(stored)
            .ctx(|| format!("writing pack {id}"))?;
        self.entries.push(FooterEntry {
            info: *info,
            offset: self.len,
        });
        self.len += (RECORD_HEADER_LEN + stored.len()) as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the footer and makes the pack durable (a finished put of the backend).
    pub fn finish(mut self) -> Result<SealedPack> {
        let id = self.id;
        let footer = encode_footer(&self.entries, self.len)
            .map_err(|e| Error::Internal(format!("pack footer: {e}")))?;
        self.out
            .write_all(&footer)
            .ctx(|| format!("writing pack {id}"))?;
        self.out.finish()?;
        Ok(SealedPack {
            id,
            size: self.len + footer.len() as u64,
            entries: self.entries,
        })
    }
}
