//! Reading objects back, checking every layer: record header, stored-bytes CRC, in an
//! encrypted repository the AEAD envelope (which binds kind, codec, length and id), decoded
//! length, and finally the id of the raw bytes (SHA-256, or the keyed HMAC) against the
//! digest that named them. A record that fails any check is damage: its bytes never leave
//! this module.

use tessera_format::manifest::entries_in_page;
use tessera_format::pack::{decode_record_header, MAX_STORED_LEN, RECORD_HEADER_LEN};
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
    let page = decode_page(digest, &raw)?;
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

/// Decodes the raw bytes of page `digest` (read with every check of [`read_object`]).
pub fn decode_page(digest: PageDigest, raw: &[u8]) -> Result<ManifestPage> {
    ManifestPage::decode(raw).map_err(|e| Error::ObjectCorrupt {
        kind: ObjectKind::Page,
        digest: digest.to_hex(),
        pack: PackId([0; 16]),
        offset: 0,
        reason: e.to_string(),
    })
}

/// Reads and fully checks the object `digest` of `kind` at the location `entry` gives.
pub fn read_object(
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<Vec<u8>> {
    into_raw(Record::read(backend, crypto, kind, digest, entry)?)
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
    into_dst(&Record::read(backend, crypto, kind, digest, entry)?, dst)
}

/// Like [`read_object_into`], for a record already fetched ([`fetch_records`]).
pub fn decode_fetched_into(
    fetched: Result<Vec<u8>>,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
    dst: &mut [u8],
) -> Result<()> {
    into_dst(&Record::fetched(crypto, kind, digest, entry, fetched)?, dst)
}

/// Like [`read_object`], for a record already fetched ([`fetch_records`]), keeping nothing.
pub fn check_fetched(
    fetched: Result<Vec<u8>>,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<()> {
    into_raw(Record::fetched(crypto, kind, digest, entry, fetched)?).map(drop)
}

/// The checked raw bytes of a record.
fn into_raw(record: Record<'_>) -> Result<Vec<u8>> {
    let (info, stored) = record.check()?;
    if info.codec == Codec::None && !record.crypto.is_encrypted() {
        // The raw bytes are the record's own: drop the header in place, no second buffer.
        record.check_raw(&info, stored)?;
        let mut raw = record.buf;
        raw.drain(..RECORD_HEADER_LEN);
        return Ok(raw);
    }
    record.decode(&info, stored)
}

/// A record's checked raw bytes, decoded into `dst` (exactly its raw length).
fn into_dst(record: &Record<'_>, dst: &mut [u8]) -> Result<()> {
    let (info, stored) = record.check()?;
    if info.raw_len as usize != dst.len() {
        return Err(record.corrupt(format!(
            "record holds {} raw bytes where {} are needed",
            info.raw_len,
            dst.len()
        )));
    }
    let crypto = record.crypto;
    if !crypto.is_encrypted() {
        decode_into(info.codec, stored, dst).map_err(|reason| record.corrupt(reason))?;
    } else if info.codec == Codec::None {
        crypto
            .unprotect_into(record.kind, info.codec, record.digest, stored, dst)
            .map_err(|e| record.corrupt(e.to_string()))?;
    } else {
        let encoded = record.unprotect(&info, stored)?;
        decode_into(info.codec, &encoded, dst).map_err(|reason| record.corrupt(reason))?;
    }
    record.check_digest(dst)
}

/// Records of one pack whose ranges are at most this far apart are fetched with one read
/// ([`fetch_records`]); the bytes between them are read and dropped.
pub const COALESCE_GAP: u64 = 1 << 20;
/// The longest read [`fetch_records`] makes (several run at once, [`Backend::get_ranges`]).
pub const COALESCE_SPAN: u64 = 8 << 20;

/// The most bytes of coalesced reads [`fetch_records`] asks for with one
/// [`Backend::get_ranges`] call (and so holds at once beyond the records themselves, which
/// are copied out of each wave's reads before the next wave).
pub const FETCH_WAVE_BYTES: u64 = 64 << 20;

/// Fetches the records (header and stored bytes) at `entries`, in their order, for a store
/// where each read is a request ([`Backend::is_remote`]): records of one pack that lie within
/// [`COALESCE_GAP`] of each other are read with one ranged read of at most
/// [`COALESCE_SPAN`] bytes, several at once ([`Backend::get_ranges`]), in waves of at most
/// [`FETCH_WAVE_BYTES`]. A 64 KiB block restored with one request each is latency-bound; an
/// 8 MiB read is not (`macro-bench --s3`, 1 GiB: restore 26.5 s → 4.9 s, verify 31.7 s →
/// 5.9 s). After a failed or short read, its records are read one by one, so each gets its
/// own verdict (but when the store itself failed, [`Error::Remote`], each gets that error
/// without another read). A location no record can have (a damaged index: a stored length
/// over [`MAX_STORED_LEN`], a range past 2^64) is not read; the check reports it. Nothing is checked here: the
/// caller checks every record as [`read_object`] does ([`check_fetched`],
/// [`decode_fetched_into`]). Memory: the records asked for, plus one wave of reads.
pub fn fetch_records(backend: &dyn Backend, entries: &[ObjectEntry]) -> Vec<Result<Vec<u8>>> {
    fetch_records_in_waves(backend, entries, FETCH_WAVE_BYTES)
}

/// Why no record can lie where `entry` says (the index is untrusted), if none can: longer
/// than any record may be, or ending past 2^64.
fn impossible_location(entry: &ObjectEntry) -> Option<String> {
    // A sealed record may hold its envelope beyond the largest object.
    if entry.stored_len > MAX_STORED_LEN {
        return Some(format!(
            "the index gives it {} stored bytes, over the {MAX_STORED_LEN} a record may hold",
            entry.stored_len
        ));
    }
    let len = RECORD_HEADER_LEN as u64 + u64::from(entry.stored_len);
    entry.offset.checked_add(len).is_none().then(|| {
        format!(
            "the index places it at offset {}, past any pack's end",
            entry.offset
        )
    })
}

/// A coalesced read: its pack, start and end offsets, and the entries it covers.
type Span = (PackId, u64, u64, Vec<usize>);

fn fetch_records_in_waves(
    backend: &dyn Backend,
    entries: &[ObjectEntry],
    wave_bytes: u64,
) -> Vec<Result<Vec<u8>>> {
    let len = |e: &ObjectEntry| RECORD_HEADER_LEN as u64 + u64::from(e.stored_len);
    let mut out: Vec<Option<Result<Vec<u8>>>> = entries.iter().map(|_| None).collect();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].pack, entries[i].offset));
    let mut spans: Vec<Span> = Vec::new();
    for i in order {
        let e = &entries[i];
        // A location no record can have (a damaged index): nothing is read, the caller's
        // check reports it (`Record::fetched`).
        if impossible_location(e).is_some() {
            out[i] = Some(Ok(Vec::new()));
            continue;
        }
        let (start, end) = (e.offset, e.offset + len(e));
        match spans.last_mut() {
            Some((pack, s, last_end, members))
                if *pack == e.pack
                    && start <= last_end.saturating_add(COALESCE_GAP)
                    && end.max(*last_end) - *s <= COALESCE_SPAN =>
            {
                *last_end = end.max(*last_end);
                members.push(i);
            }
            _ => spans.push((e.pack, start, end, vec![i])),
        }
    }
    let mut rest = &spans[..];
    while !rest.is_empty() {
        // At least one span per wave, however long (at most COALESCE_SPAN or one record).
        let mut n = 1;
        let mut bytes = rest[0].2 - rest[0].1;
        while let Some((_, start, end, _)) = rest.get(n) {
            if bytes + (end - start) > wave_bytes {
                break;
            }
            bytes += end - start;
            n += 1;
        }
        let (wave, tail) = rest.split_at(n);
        rest = tail;
        for (i, record) in fetch_wave(backend, entries, wave).into_iter().flatten() {
            out[i] = Some(record);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a record was not fetched".into()))))
        .collect()
}

/// Reads the spans of one wave at once; returns each covered entry's record (or failure).
fn fetch_wave(
    backend: &dyn Backend,
    entries: &[ObjectEntry],
    wave: &[Span],
) -> Vec<Vec<(usize, Result<Vec<u8>>)>> {
    use rayon::prelude::*;
    let len = |e: &ObjectEntry| RECORD_HEADER_LEN as u64 + u64::from(e.stored_len);
    let requests: Vec<(ObjectKey, u64, usize)> = wave
        .iter()
        .map(|(pack, start, end, _)| (ObjectKey::pack(*pack), *start, (end - start) as usize))
        .collect();
    let answers = backend.get_ranges(&requests);
    wave.par_iter()
        .zip(answers)
        .map(|((pack, start, end, members), read)| match read {
            // A read gives exactly what was asked or fails (the contract of `get_range`);
            // a short answer anyway is treated as a failed read.
            Ok(bytes) if bytes.len() as u64 == end - start => members
                .iter()
                .map(|&i| {
                    let e = &entries[i];
                    let from = (e.offset - start) as usize;
                    let record = bytes
                        .get(from..from + len(e) as usize)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| Error::Internal("a record outside its span".into()));
                    (i, record)
                })
                .collect(),
            // The store itself failed, after its retries (unreachable, refusing): each record
            // gets that verdict, without a read each that would wait out the same retries.
            Err(Error::Remote {
                location,
                context,
                problem,
            }) => members
                .iter()
                .map(|&i| {
                    let e = Error::Remote {
                        location: location.clone(),
                        context: context.clone(),
                        problem: problem.clone(),
                    };
                    (i, Err(e))
                })
                .collect(),
            // One by one, so that each record gets its own verdict (a truncated pack still
            // yields the records before the cut, a missing pack says so for each).
            _ => members
                .iter()
                .map(|&i| {
                    let e = &entries[i];
                    (
                        i,
                        backend.get_range(&ObjectKey::pack(*pack), e.offset, len(e) as usize),
                    )
                })
                .collect(),
        })
        .collect()
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
        if impossible_location(entry).is_some() {
            return Self::fetched(crypto, kind, digest, entry, Ok(Vec::new()));
        }
        let len = RECORD_HEADER_LEN + entry.stored_len as usize;
        let read = backend.get_range(&ObjectKey::pack(entry.pack), entry.offset, len);
        Self::fetched(crypto, kind, digest, entry, read)
    }

    /// A record from the bytes a read of its range returned (or how it failed); damaged
    /// whatever was read if the index gives a location no record can have.
    fn fetched(
        crypto: &'a RepoCrypto,
        kind: ObjectKind,
        digest: &'a [u8; 32],
        entry: &'a ObjectEntry,
        read: Result<Vec<u8>>,
    ) -> Result<Self> {
        let record = |buf| Record {
            crypto,
            kind,
            digest,
            entry,
            buf,
        };
        if let Some(why) = impossible_location(entry) {
            return Err(record(Vec::new()).corrupt(why));
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rand::RngCore;
    use tessera_format::Compression;

    use super::*;
    use crate::storage::local::LocalBackend;
    use crate::storage::{ObjectWriter, PutMode};
    use crate::store::encode::encode_object;
    use crate::store::pack_writer::PackWriter;

    /// A directory store that calls itself remote, logs every ranged read, and fails the
    /// reads longer than `fail_longer_than` (a coalesced read that the server refuses).
    struct Logged {
        inner: LocalBackend,
        reads: Mutex<Vec<(ObjectKey, u64, usize)>>,
        /// The bytes each `get_ranges` call asked for.
        waves: Mutex<Vec<u64>>,
        fail_longer_than: usize,
        /// The injected failure is the store's own (after its retries), not an I/O error.
        fail_as_store: bool,
    }

    impl Backend for Logged {
        fn put(&self, key: &ObjectKey, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
            self.inner.put(key, mode)
        }
        fn get_range(&self, key: &ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>> {
            self.reads.lock().unwrap().push((key.clone(), offset, len));
            if len > self.fail_longer_than && self.fail_as_store {
                return Err(Error::Remote {
                    location: "s3://injected".into(),
                    context: format!("reading {len} bytes of {key}"),
                    problem: crate::storage::s3::RemoteProblem::Unavailable {
                        last: "injected: 503 Service Unavailable".into(),
                    },
                });
            }
            if len > self.fail_longer_than {
                return Err(Error::io(
                    format!("reading {len} bytes of {key}"),
                    std::io::Error::other("injected: connection reset"),
                ));
            }
            self.inner.get_range(key, offset, len)
        }
        fn get(&self, key: &ObjectKey) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn size(&self, key: &ObjectKey) -> Result<Option<u64>> {
            self.inner.size(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &ObjectKey) -> Result<()> {
            self.inner.delete(key)
        }
        fn clean_staging(&self) -> Result<usize> {
            self.inner.clean_staging()
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn is_remote(&self) -> bool {
            true
        }
        fn get_ranges(&self, ranges: &[(ObjectKey, u64, usize)]) -> Vec<Result<Vec<u8>>> {
            let asked = ranges.iter().map(|r| r.2 as u64).sum();
            self.waves.lock().unwrap().push(asked);
            ranges
                .iter()
                .map(|(key, offset, len)| self.get_range(key, *offset, *len))
                .collect()
        }
    }

    fn logged(dir: &std::path::Path, fail_longer_than: usize) -> Logged {
        Logged {
            inner: LocalBackend::new(dir),
            reads: Mutex::default(),
            waves: Mutex::default(),
            fail_longer_than,
            fail_as_store: false,
        }
    }

    /// Chunks: (digest, raw bytes, where the record lies).
    type Written = Vec<([u8; 32], Vec<u8>, ObjectEntry)>;

    /// Writes one pack of chunks with the given raw lengths (random bytes, stored raw, but
    /// for every third of at most 64 KiB, which is compressible and stored with zstd).
    fn pack_of(backend: &dyn Backend, lens: &[usize]) -> Written {
        let mut writer = PackWriter::create(backend).unwrap();
        let mut raws = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let mut raw = vec![0u8; len];
            if i % 3 == 2 && len <= 65_536 {
                raw.iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (j % 7) as u8);
            } else {
                rand::thread_rng().fill_bytes(&mut raw);
            }
            let digest = ChunkDigest::of(&raw);
            let (info, stored) = encode_object(
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                digest,
                &raw,
                Compression::parse("zstd:1").unwrap(),
            )
            .unwrap();
            writer.append(&info, &stored).unwrap();
            raws.push((digest.0, raw));
        }
        let sealed = writer.finish().unwrap();
        raws.into_iter()
            .zip(&sealed.entries)
            .map(|((digest, raw), fe)| (digest, raw, ObjectEntry::found(sealed.id, fe)))
            .collect()
    }

    /// Fetches `chunks` in the order given and checks each decodes to its raw bytes.
    fn fetch_and_check(backend: &dyn Backend, chunks: &[&([u8; 32], Vec<u8>, ObjectEntry)]) {
        let entries: Vec<ObjectEntry> = chunks.iter().map(|c| c.2).collect();
        let fetched = fetch_records(backend, &entries);
        assert_eq!(fetched.len(), chunks.len());
        for ((digest, raw, entry), got) in chunks.iter().zip(fetched) {
            let mut dst = vec![0u8; raw.len()];
            decode_fetched_into(
                got,
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                digest,
                entry,
                &mut dst,
            )
            .unwrap();
            assert!(dst == *raw, "chunk at {} decoded wrong", entry.offset);
        }
    }

    fn reads(backend: &Logged) -> Vec<(ObjectKey, u64, usize)> {
        std::mem::take(&mut *backend.reads.lock().unwrap())
    }

    #[test]
    fn nearby_records_of_a_pack_are_fetched_with_one_read_each_pack() {
        let dir = tempfile::tempdir().unwrap();
        let backend = logged(dir.path(), usize::MAX);
        let a = pack_of(&backend, &[5000, 70_000, 65_536, 1, 4096]);
        let b = pack_of(&backend, &[65_536, 65_536, 65_536]);
        // Mixed packs, out of order, one asked twice: answers come back in the order asked.
        let asked = [&b[2], &a[3], &a[0], &b[0], &a[4], &a[1], &a[2], &a[0]];
        fetch_and_check(&backend, &asked);
        let reads = reads(&backend);
        assert_eq!(reads.len(), 2, "{reads:?}");
        // Each read runs from the first record asked to the end of the last one.
        let span = |c: &([u8; 32], Vec<u8>, ObjectEntry)| {
            (
                c.2.offset,
                c.2.offset + RECORD_HEADER_LEN as u64 + u64::from(c.2.stored_len),
            )
        };
        for (pack, first, last) in [(&a, 0, 4), (&b, 0, 2)] {
            let key = ObjectKey::pack(pack[0].2.pack);
            let (start, end) = (span(&pack[first]).0, span(&pack[last]).1);
            assert!(
                reads.contains(&(key, start, (end - start) as usize)),
                "{reads:?}"
            );
        }
        // check_fetched agrees with read_object on every record.
        let entries: Vec<ObjectEntry> = a.iter().map(|c| c.2).collect();
        for (c, got) in a.iter().zip(fetch_records(&backend, &entries)) {
            check_fetched(got, &RepoCrypto::plain(), ObjectKind::Chunk, &c.0, &c.2).unwrap();
        }
    }

    #[test]
    fn far_apart_or_too_many_records_take_several_reads() {
        let dir = tempfile::tempdir().unwrap();
        let backend = logged(dir.path(), usize::MAX);
        let gap = COALESCE_GAP as usize;
        // Records 0 and 2 are a gap of more than COALESCE_GAP apart: two reads.
        let far = pack_of(&backend, &[4096, gap + 1, 4096]);
        fetch_and_check(&backend, &[&far[0], &far[2]]);
        assert_eq!(reads(&backend).len(), 2);
        // A gap of less than COALESCE_GAP is read through: one read.
        let near = pack_of(&backend, &[4096, gap - 4096, 4096]);
        fetch_and_check(&backend, &[&near[2], &near[0]]);
        assert_eq!(reads(&backend).len(), 1);
        // Adjacent records longer together than COALESCE_SPAN: no read is longer than it.
        let third = (COALESCE_SPAN / 3) as usize;
        let long = pack_of(&backend, &[third, third, third, third, third]);
        fetch_and_check(&backend, &long.iter().collect::<Vec<_>>());
        let reads = reads(&backend);
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert!(
            reads.iter().all(|r| r.2 as u64 <= COALESCE_SPAN),
            "{reads:?}"
        );
    }

    #[test]
    fn a_failed_coalesced_read_falls_back_to_one_read_per_record() {
        let dir = tempfile::tempdir().unwrap();
        // Every read longer than one record fails: each span is read again record by record.
        let backend = logged(dir.path(), 70_000);
        let a = pack_of(&backend, &[65_536, 65_536, 65_536, 65_536]);
        let asked: Vec<_> = a.iter().rev().collect();
        fetch_and_check(&backend, &asked);
        let reads = reads(&backend);
        assert_eq!(reads.len(), 1 + a.len(), "{reads:?}");
        assert!(reads[1..].iter().all(|r| r.2 <= 70_000), "{reads:?}");
    }

    #[test]
    fn a_failed_store_fails_every_record_of_the_span_without_more_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = logged(dir.path(), usize::MAX);
        let a = pack_of(&backend, &[65_536, 65_536, 65_536, 65_536]);
        let b = pack_of(&backend, &[4096]);
        backend.fail_longer_than = 70_000;
        backend.fail_as_store = true;
        // Pack a's span fails as the store's failure; pack b's single record is read.
        let asked = [&a[1], &b[0], &a[3], &a[0]];
        let entries: Vec<ObjectEntry> = asked.iter().map(|c| c.2).collect();
        let fetched = fetch_records(&backend, &entries);
        assert_eq!(reads(&backend).len(), 2);
        for (c, got) in asked.iter().zip(fetched) {
            let v = check_fetched(got, &RepoCrypto::plain(), ObjectKind::Chunk, &c.0, &c.2);
            if c.2.pack == b[0].2.pack {
                assert!(v.is_ok(), "{v:?}");
            } else {
                assert!(
                    matches!(&v, Err(e @ Error::Remote { .. }) if e.kind() == crate::error::ErrorKind::Failed),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_pack_still_yields_the_records_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let backend = logged(dir.path(), usize::MAX);
        let a = pack_of(&backend, &[65_536, 65_536, 65_536, 65_536]);
        // Cut the pack in the middle of record 2's header.
        let key = ObjectKey::pack(a[0].2.pack);
        let mut bytes = backend.get(&key).unwrap();
        bytes.truncate((a[2].2.offset + 10) as usize);
        backend.put_bytes(&key, PutMode::Replace, &bytes).unwrap();
        // A new backend: no pack reader kept open from before.
        let backend = logged(dir.path(), usize::MAX);
        let entries: Vec<ObjectEntry> = a.iter().map(|c| c.2).collect();
        let fetched = fetch_records(&backend, &entries);
        let verdicts: Vec<_> = a
            .iter()
            .zip(fetched)
            .map(|(c, got)| check_fetched(got, &RepoCrypto::plain(), ObjectKind::Chunk, &c.0, &c.2))
            .collect();
        assert!(verdicts[0].is_ok() && verdicts[1].is_ok(), "{verdicts:?}");
        for v in &verdicts[2..] {
            assert!(
                matches!(v, Err(Error::ObjectCorrupt { reason, .. }) if reason.contains("truncated")),
                "{v:?}"
            );
        }
        // The same verdicts as reading one by one.
        for (c, v) in a.iter().zip(&verdicts) {
            let one = read_object(
                &backend,
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                &c.0,
                &c.2,
            )
            .map(|_| ());
            assert_eq!(format!("{one:?}"), format!("{v:?}"));
        }
        // A missing pack: every record says the pack is missing.
        backend.delete(&key).unwrap();
        let backend = logged(dir.path(), usize::MAX);
        for got in fetch_records(&backend, &entries) {
            let v = check_fetched(
                got,
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                &a[0].0,
                &a[0].2,
            );
            assert!(matches!(v, Err(Error::ObjectMissing { .. })), "{v:?}");
        }
    }

    #[test]
    fn coalesced_reads_go_in_waves_of_bounded_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = logged(dir.path(), usize::MAX);
        // Five packs: five spans of about 64 KiB, then one record longer than a wave.
        let packs: Vec<Written> = (0..5)
            .map(|_| pack_of(&backend, &[65_536]))
            .chain([pack_of(&backend, &[300_000])])
            .collect();
        let asked: Vec<_> = packs.iter().map(|p| &p[0]).collect();
        let entries: Vec<ObjectEntry> = asked.iter().map(|c| c.2).collect();
        let fetched = fetch_records_in_waves(&backend, &entries, 150_000);
        for (c, got) in asked.iter().zip(fetched) {
            check_fetched(got, &RepoCrypto::plain(), ObjectKind::Chunk, &c.0, &c.2).unwrap();
        }
        let waves = std::mem::take(&mut *backend.waves.lock().unwrap());
        // Two spans fit a wave of 150 000 bytes, three do not; the long record goes alone
        // (spans go in pack order, so it may come anywhere).
        let long = RECORD_HEADER_LEN as u64 + u64::from(packs[5][0].2.stored_len);
        assert_eq!(waves.len(), 4, "{waves:?}");
        assert_eq!(
            waves.iter().filter(|&&w| w > 150_000).collect::<Vec<_>>(),
            [&long],
            "{waves:?}"
        );
        assert_eq!(
            waves.iter().sum::<u64>(),
            entries
                .iter()
                .map(|e| RECORD_HEADER_LEN as u64 + u64::from(e.stored_len))
                .sum::<u64>()
        );
        assert_eq!(reads(&backend).len(), 6);
    }

    #[test]
    fn impossible_record_locations_are_damage_without_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let backend = logged(dir.path(), usize::MAX);
        let a = pack_of(&backend, &[4096, 4096]);
        let mut far = a[1].2;
        far.offset = u64::MAX - 10;
        let mut huge = a[1].2;
        huge.stored_len = u32::MAX;
        let fetched = fetch_records(&backend, &[a[0].2, far, huge]);
        let mut verdicts = fetched.into_iter();
        let first = verdicts.next().unwrap();
        check_fetched(
            first,
            &RepoCrypto::plain(),
            ObjectKind::Chunk,
            &a[0].0,
            &a[0].2,
        )
        .unwrap();
        assert_eq!(reads(&backend).len(), 1, "a read of an impossible range");
        for (bad, why) in [(far, "past any pack's end"), (huge, "a record may hold")] {
            let v = check_fetched(
                verdicts.next().unwrap(),
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                &a[1].0,
                &bad,
            );
            assert!(
                matches!(&v, Err(Error::ObjectCorrupt { reason, .. }) if reason.contains(why)),
                "{v:?}"
            );
            let one = read_object(
                &backend,
                &RepoCrypto::plain(),
                ObjectKind::Chunk,
                &a[1].0,
                &bad,
            )
            .map(|_| ());
            assert_eq!(format!("{one:?}"), format!("{v:?}"));
        }
        assert_eq!(
            reads(&backend).len(),
            0,
            "read_object read an impossible range"
        );
    }
}
