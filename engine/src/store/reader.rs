//! Reading objects back, checking every layer: record header, stored-bytes CRC, in an
//! encrypted repository the AEAD envelope (which binds kind, codec, length and id), decoded
//! length, and finally the id of the raw bytes (SHA-256, or the keyed HMAC) against the
//! digest that named them. A record that fails any check is damage: its bytes never leave
//! this module.

use tessera_format::manifest::entries_in_page;
use tessera_format::pack::{decode_record_header, RECORD_HEADER_LEN};
use tessera_format::{
    ChunkDigest, Codec, ManifestPage, ObjectInfo, ObjectKind, PackId, PageDigest, Snapshot,
    SnapshotId,
};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::index::{Index, ObjectEntry};
use crate::storage::{Backend, ObjectKey};
use crate::store::encode::{decode_into, decompress};
use crate::store::snapshot_file;

/// Reads a snapshot file and checks it against its id (and, encrypted, its seal).
pub fn load_snapshot(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    id: SnapshotId,
) -> Result<Snapshot> {
    let bytes = backend.get(&ObjectKey::snapshot(id))?;
    if SnapshotId::of(&bytes) != id {
        return Err(Error::SnapshotCorrupt {
            id: id.to_hex(),
            reason: "file content does not hash to its name".into(),
        });
    }
    snapshot_file::decode(crypto, &bytes).map_err(|reason| Error::SnapshotCorrupt {
        id: id.to_hex(),
        reason,
    })
}

/// Reads an object by digest, wherever the index places it, with every check of
/// [`read_object`].
pub fn read_indexed(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
) -> Result<Vec<u8>> {
    let entry = index
        .get_object(kind, digest)?
        .ok_or_else(|| Error::ObjectMissing {
            kind,
            digest: hex::encode(digest),
        })?;
    read_object(backend, crypto, kind, digest, &entry)
}

/// Reads manifest page `page_no` of a disk with `blocks` blocks and checks its length.
pub fn read_page(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    digest: PageDigest,
    blocks: u64,
    page_entries: u32,
    page_no: u64,
) -> Result<Vec<ChunkDigest>> {
    let raw = read_indexed(index, backend, crypto, ObjectKind::Page, digest.as_bytes())?;
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
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<Vec<u8>> {
    let record = Record::read(backend, crypto, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    if info.codec == Codec::None && !crypto.is_encrypted() {
        // The raw bytes are the record's own: drop the header in place, no second buffer.
        record.check_raw(&info, stored)?;
        let mut raw = record.buf;
        raw.drain(..RECORD_HEADER_LEN);
        return Ok(raw);
    }
    record.decode(&info, stored)
}

/// Like [`read_object`], but decodes straight into `dst`, which must be exactly the
/// object's raw length (the restore path: no intermediate buffers for plain records). On
/// failure `dst` holds bytes that must be discarded.
pub fn read_object_into(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
    dst: &mut [u8],
) -> Result<()> {
    let record = Record::read(backend, crypto, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    if info.raw_len as usize != dst.len() {
        return Err(record.corrupt(format!(
            "record holds {} raw bytes where {} are needed",
            info.raw_len,
            dst.len()
        )));
    }
    if !crypto.is_encrypted() {
        decode_into(info.codec, stored, dst).map_err(|reason| record.corrupt(reason))?;
    } else if info.codec == Codec::None {
        crypto
            .unprotect_into(kind, info.codec, digest, stored, dst)
            .map_err(|e| record.corrupt(e.to_string()))?;
    } else {
        let encoded = record.unprotect(&info, stored)?;
        decode_into(info.codec, &encoded, dst).map_err(|reason| record.corrupt(reason))?;
    }
    record.check_digest(dst)
}

/// Like [`read_object`], but returns the record's info and stored bytes (after the same
/// checks), for copying the object verbatim into another pack.
pub fn read_stored(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<(ObjectInfo, Vec<u8>)> {
    let record = Record::read(backend, crypto, kind, digest, entry)?;
    let (info, stored) = record.check()?;
    if info.codec == Codec::None && !crypto.is_encrypted() {
        record.check_raw(&info, stored)?;
    } else {
        record.decode(&info, stored)?;
    }
    let mut stored = record.buf;
    stored.drain(..RECORD_HEADER_LEN);
    Ok((info, stored))
}

/// One record as read from its pack (header and stored bytes), with what it should be.
struct Record<'a> {
    crypto: &'a RepoCrypto,
    kind: ObjectKind,
    digest: &'a [u8; 32],
    entry: &'a ObjectEntry,
    buf: Vec<u8>,
}

impl<'a> Record<'a> {
    fn read(
        backend: &dyn Backend,
        crypto: &'a RepoCrypto,
        kind: ObjectKind,
        digest: &'a [u8; 32],
        entry: &'a ObjectEntry,
    ) -> Result<Self> {
        let len = RECORD_HEADER_LEN + entry.stored_len as usize;
        let read = backend.get_range(&ObjectKey::pack(entry.pack), entry.offset, len);
        let record = |buf| Record {
            crypto,
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

    /// Removes the record's protection (an encrypted repository's envelope): its encoded
    /// bytes. Authentication binds kind, codec, raw length and id.
    fn unprotect<'s>(
        &self,
        info: &ObjectInfo,
        stored: &'s [u8],
    ) -> Result<std::borrow::Cow<'s, [u8]>> {
        self.crypto
            .unprotect(self.kind, info.codec, info.raw_len, self.digest, stored)
            .map_err(|e| self.corrupt(e.to_string()))
    }

    /// Unprotects and decodes the stored bytes, checks length and id: the raw bytes.
    fn decode(&self, info: &ObjectInfo, stored: &[u8]) -> Result<Vec<u8>> {
        let encoded = self.unprotect(info, stored)?;
        let raw = match info.codec {
            Codec::None => {
                if encoded.len() != info.raw_len as usize {
                    return Err(self.corrupt(format!(
                        "decoded to {} bytes, expected {}",
                        encoded.len(),
                        info.raw_len
                    )));
                }
                encoded.into_owned()
            }
            Codec::Zstd => {
                decompress(&encoded, info.raw_len).map_err(|reason| self.corrupt(reason))?
            }
        };
        self.check_digest(&raw)?;
        Ok(raw)
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

    /// Checks that `raw` hashes (plain SHA-256, or keyed) to the digest that named the
    /// object.
    fn check_digest(&self, raw: &[u8]) -> Result<()> {
        let actual = self.crypto.ids().id(raw);
        if &actual == self.digest {
            Ok(())
        } else {
            Err(self.corrupt(format!("content hashes to {}", hex::encode(actual))))
        }
    }
}
