//! Reading objects back, checking every layer: record header, stored-bytes CRC, decoded
//! length, and finally the SHA-256 of the raw bytes against the digest that named them.

use tessera_format::manifest::entries_in_page;
use tessera_format::pack::{decode_record_header, RECORD_HEADER_LEN};
use tessera_format::{
    ChunkDigest, Codec, ManifestPage, ObjectInfo, ObjectKind, PackId, PageDigest, Snapshot,
    SnapshotId,
};

use crate::error::{Error, Result};
use crate::index::{Index, ObjectEntry};
use crate::storage::{Backend, ObjectKey};
use crate::store::encode::{decode_into, decompress};

/// Reads a snapshot file and checks it against its id.
pub fn load_snapshot(backend: &dyn Backend, id: SnapshotId) -> Result<Snapshot> {
    let bytes = backend.get(&ObjectKey::snapshot(id))?;
    if SnapshotId::of(&bytes) != id {
        return Err(Error::SnapshotCorrupt {
            id: id.to_hex(),
            reason: "file content does not hash to its name".into(),
        });
    }
    Snapshot::decode(&bytes).map_err(|e| Error::SnapshotCorrupt {
        id: id.to_hex(),
        reason: e.to_string(),
    })
}

/// Reads an object by digest, wherever the index places it, with every check of
/// [`read_object`].
pub fn read_indexed(
    index: &Index,
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
) -> Result<Vec<u8>> {
    let entry = index
        .get_object(kind, digest)?
        .ok_or_else(|| Error::ObjectMissing {
            kind,
            digest: hex::encode(digest),
        })?;
    read_object(backend, kind, digest, &entry)
}

/// Reads manifest page `page_no` of a disk with `blocks` blocks and checks its length.
pub fn read_page(
    index: &Index,
    backend: &dyn Backend,
    digest: PageDigest,
    blocks: u64,
    page_entries: u32,
    page_no: u64,
) -> Result<Vec<ChunkDigest>> {
    let raw = read_indexed(index, backend, ObjectKind::Page, digest.as_bytes())?;
    let page = ManifestPage::decode(&raw).map_err(|e| Error::ObjectCorrupt {
        kind: ObjectKind::Page,
        digest: digest.to_hex(),
        pack: PackId([0; 16]),
        offset: 0,
        reason: e.to_string(),
    })?;
    let expected = entries_in_page(blocks, page_entries, page_no);
    if page.digests.len() as u64 != expected {
        return Err(Error::ObjectCorrupt {
            kind: ObjectKind::Page,
            digest: digest.to_hex(),
            pack: PackId([0; 16]),
            offset: 0,
            reason: format!(
                "the page has {} entries where {expected} belong",
                page.digests.len()
            ),
        });
    }
    Ok(page.digests)
}

/// Reads and fully checks the object `digest` of `kind` at the location `entry` gives.
pub fn read_object(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<Vec<u8>> {
    let record = Record::read(backend, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    if info.codec == Codec::None {
        // The raw bytes are the record's own: drop the header in place, no second buffer.
        record.check_raw(&info, stored)?;
        let mut raw = record.buf;
        raw.drain(..RECORD_HEADER_LEN);
        return Ok(raw);
    }
    let raw = decompress(stored, info.raw_len).map_err(|reason| record.corrupt(reason))?;
    record.check_digest(&raw)?;
    Ok(raw)
}

/// Like [`read_object`], but decodes straight into `dst`, which must be exactly the
/// object's raw length (the restore path: no intermediate buffers).
pub fn read_object_into(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
    dst: &mut [u8],
) -> Result<()> {
    let record = Record::read(backend, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    if info.raw_len as usize != dst.len() {
        return Err(record.corrupt(format!(
            "record holds {} raw bytes where {} are needed",
            info.raw_len,
            dst.len()
        )));
    }
    decode_into(info.codec, stored, dst).map_err(|reason| record.corrupt(reason))?;
    record.check_digest(dst)
}

/// Like [`read_object`], but returns the record's info and stored bytes (after the same
/// checks), for copying the object verbatim into another pack.
pub fn read_stored(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<(ObjectInfo, Vec<u8>)> {
    let record = Record::read(backend, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    match info.codec {
        Codec::None => record.check_raw(&info, stored)?,
        Codec::Zstd => {
            let raw = decompress(stored, info.raw_len).map_err(|reason| record.corrupt(reason))?;
            record.check_digest(&raw)?;
        }
    }
    let mut stored = record.buf;
    stored.drain(..RECORD_HEADER_LEN);
    Ok((info, stored))
}

/// One record as read from its pack (header and stored bytes), with what it should be.
struct Record<'a> {
    kind: ObjectKind,
    digest: &'a [u8; 32],
    entry: &'a ObjectEntry,
    buf: Vec<u8>,
}

impl<'a> Record<'a> {
    fn read(
        backend: &dyn Backend,
        kind: ObjectKind,
        digest: &'a [u8; 32],
        entry: &'a ObjectEntry,
    ) -> Result<Self> {
        let len = RECORD_HEADER_LEN + entry.stored_len as usize;
        let read = backend.get_range(&ObjectKey::pack(entry.pack), entry.offset, len);
        let record = |buf| Record {
            kind,
            digest,
            entry,
            buf,
        };
        match read {
            Ok(buf) => Ok(record(buf)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(record(Vec::new())
                    .corrupt("pack is shorter than the record (truncated)".into()))
            }
            Err(e) if e.is_not_found() => Err(Error::ObjectMissing {
                kind,
                digest: format!("{} (pack {} is missing)", hex::encode(digest), entry.pack),
            }),
            Err(e) => Err(e),
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::ObjectCorrupt {
            kind: self.kind,
            digest: hex::encode(self.digest),
            pack: self.entry.pack,
            offset: self.entry.offset,
            reason,
        }
    }

    /// Checks the record header against what was asked for and the stored bytes' CRC;
    /// returns the header and the stored bytes.
    fn check(&self) -> Result<(ObjectInfo, &[u8])> {
        let info = decode_record_header(&self.buf).map_err(|e| self.corrupt(e.to_string()))?;
        if info.kind != self.kind
            || info.digest.as_bytes() != self.digest
            || info.stored_len != self.entry.stored_len
        {
            return Err(self.corrupt(format!(
                "record header names {:?} {} instead",
                info.kind, info.digest
            )));
        }
        let stored = self.buf.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let crc = crc32c::crc32c(stored);
        if crc != info.stored_crc {
            return Err(self.corrupt(format!(
                "stored bytes checksum {crc:08x} != {:08x}",
                info.stored_crc
            )));
        }
        Ok((info, stored))
    }

    /// Checks a record stored raw: its length and its digest.
    fn check_raw(&self, info: &ObjectInfo, stored: &[u8]) -> Result<()> {
        if stored.len() != info.raw_len as usize {
            return Err(self.corrupt(format!(
                "decoded to {} bytes, expected {}",
                stored.len(),
                info.raw_len
            )));
        }
        self.check_digest(stored)
    }

    /// Checks that `raw` hashes to the digest that named the object.
    fn check_digest(&self, raw: &[u8]) -> Result<()> {
        let actual = match self.kind {
            ObjectKind::Chunk => ChunkDigest::of(raw).0,
            ObjectKind::Page => PageDigest::of(raw).0,
        };
        if &actual == self.digest {
            Ok(())
        } else {
            Err(self.corrupt(format!("content hashes to {}", hex::encode(actual))))
        }
    }
}
