//! Snapshot files: one per backup, named by the SHA-256 of their bytes.
//!
//! ```text
//! snapshot = "TSRSNAP1" version:u32 header_len:u32 header roots crc32c:u32
//! header   = series:str time_us:i64 duration_ms:u64 tags:kv* disks:disk*
//! disk     = name:str size:u64 block_size:u32 page_entries:u32 page_count:u32
//!            root_digest[32] identity:kv* stats
//! stats    = bytes_read:u64 zero_blocks:u64 new_chunks:u64 new_raw:u64 new_stored:u64
//! roots    = for each disk, page_count page digests (32 bytes each)
//! str      = len:u32 utf8[len];   kv* = count:u32 (str str)*;   disk* = count:u32 disk*
//! ```
//!
//! The header alone (without the root lists) is what the index keeps in its snapshot
//! catalog, so listing snapshots never reads manifests. `root_digest` is the SHA-256 of a
//! disk's concatenated page digests; it ties the catalog entry to the roots and lets two
//! disks be compared for equality without reading them.
//!
//! Each type's rules live in one `validate` method, which the decoder runs on what it
//! parsed and the encoder runs before writing, so a snapshot that encodes always decodes.

use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use crate::codec::{
    check_count, checksummed, push_crc_trailer, put_i64, put_len, put_string, put_u32, put_u64,
    Reader,
};
use crate::config::validate_block_size;
use crate::config::PLAIN_FORMAT;
use crate::manifest::{block_count, page_count, MAX_PAGE_ENTRIES};
use crate::{DecodeError, EncodeError, PageDigest, SnapshotId};

/// Magic at the start of every snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TSRSNAP1";
/// Largest number of disks in one snapshot.
pub const MAX_DISKS: usize = 1024;
/// Largest length of a series, disk, or tag name.
pub const MAX_NAME_LEN: usize = 128;

/// Names a snapshot header in errors.
pub(crate) const HEADER_WHAT: &str = "snapshot header";
/// Names a snapshot file in errors.
pub(crate) const FILE_WHAT: &str = "snapshot file";
/// Bytes before the header: magic, version, header length.
const SNAPSHOT_PREAMBLE_LEN: usize = 16;
/// Smallest encoded disk entry: an empty-name length (4), size, block size, page entries,
/// page count (20), root digest (32), an empty identity (4) and the stats (40).
const MIN_DISK_ENTRY_LEN: usize = 100;

/// Per-disk counters gathered while the backup ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Blocks that were all zero (never stored).
    pub zero_blocks: u64,
    /// Chunks this backup added to the store.
    pub new_chunks: u64,
    /// Raw bytes of those chunks.
    pub new_raw_bytes: u64,
    /// Bytes those chunks occupy in packs (after compression).
    pub new_stored_bytes: u64,
}

/// One disk of a snapshot, without its root list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// Name of the disk within the snapshot (e.g. `disk0`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size of the manifest.
    pub block_size: u32,
    /// Digests per page of the manifest.
    pub page_entries: u32,
    /// Number of pages (derivable from the above; stored as a check).
    pub page_count: u32,
    /// SHA-256 of the concatenated page digests.
    pub root_digest: [u8; 32],
    /// What the source said about itself (path, format, UUIDs; filled by delta sources).
    pub identity: Vec<(String, String)>,
    /// Counters.
    pub stats: DiskStats,
}

/// Everything about a snapshot except the root lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Series (backup job) name, e.g. `vm1`.
    pub series: String,
    /// When the backup started, Unix microseconds.
    pub time_us: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// Free-form key/value tags.
    pub tags: Vec<(String, String)>,
    /// The disks, in the order given at backup time.
    pub disks: Vec<DiskEntry>,
}

/// A whole snapshot: header plus one root list (page digests) per disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The header.
    pub header: SnapshotHeader,
    /// `roots[i]` lists the pages of `header.disks[i]`.
    pub roots: Vec<Vec<PageDigest>>,
}

/// SHA-256 over a root list.
pub fn root_digest(pages: &[PageDigest]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in pages {
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// Checks a series, disk, or tag name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), DecodeError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok_start = !name.starts_with(['.', '-']);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || !ok_start {
        return Err(DecodeError::invalid(kind, format!("{name:?} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - and not start with . or -")));
    }
    Ok(())
}

pub(crate) fn put_kv(
    out: &mut Vec<u8>,
    field: &'static str,
    kv: &[(String, String)],
) -> Result<(), EncodeError> {
    put_len(out, HEADER_WHAT, field, kv.len())?;
    for (k, v) in kv {
        put_string(out, HEADER_WHAT, k)?;
        put_string(out, HEADER_WHAT, v)?;
    }
    Ok(())
}

pub(crate) fn read_kv(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    // Each pair is at least two empty strings: two 4-byte lengths.
    let n = r.count(8)?;
    let mut kv = Vec::with_capacity(n);
    for _ in 0..n {
        kv.push((r.string()?, r.string()?));
    }
    Ok(kv)
}

pub(crate) fn check_disk_count(n: usize) -> Result<(), DecodeError> {
    check_count(HEADER_WHAT, "disks", n, MAX_DISKS)
}

impl DiskEntry {
    /// Checks the rules of one disk entry: a valid name and block size, 1..=65536 page
    /// entries and a page count that matches the size.
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_name("disk name", &self.name)?;
        validate_block_size(u64::from(self.block_size))?;
        if self.page_entries == 0 || self.page_entries > MAX_PAGE_ENTRIES {
            return Err(DecodeError::invalid(
                HEADER_WHAT,
                format!(
                    "disk {:?}: page entries {} out of range 1..={MAX_PAGE_ENTRIES}",
                    self.name, self.page_entries
                ),
            ));
        }
        if u64::from(self.page_count)
            != page_count_for(self.size, self.block_size, self.page_entries)
        {
            return Err(DecodeError::invalid(
                HEADER_WHAT,
                format!(
                    "disk {:?}: {} pages do not match size {}",
                    self.name, self.page_count, self.size
                ),
            ));
        }
        Ok(())
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_string(out, HEADER_WHAT, &self.name)?;
        put_u64(out, self.size);
        put_u32(out, self.block_size);
        put_u32(out, self.page_entries);
        put_u32(out, self.page_count);
        out.extend_from_slice(&self.root_digest);
        put_kv(out, "identity entries", &self.identity)?;
        let s = &self.stats;
        for v in [
            s.bytes_read,
            s.zero_blocks,
            s.new_chunks,
            s.new_raw_bytes,
            s.new_stored_bytes,
        ] {
            put_u64(out, v);
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string()?,
            size: r.u64()?,
            block_size: r.u32()?,
            page_entries: r.u32()?,
            page_count: r.u32()?,
            root_digest: r.array()?,
            identity: read_kv(r)?,
            stats: DiskStats {
                bytes_read: r.u64()?,
                zero_blocks: r.u64()?,
                new_chunks: r.u64()?,
                new_raw_bytes: r.u64()?,
                new_stored_bytes: r.u64()?,
            },
        })
    }
}

impl SnapshotHeader {
    /// Checks every rule [`SnapshotHeader::decode`] enforces on the values: a valid series
    /// name, at most [`MAX_DISKS`] disks, each valid ([`DiskEntry::validate`]) and uniquely
    /// named. (String lengths and counts that do not fit their fields are refused by
    /// [`SnapshotHeader::encode`] itself.)
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_name("series name", &self.series)?;
        check_disk_count(self.disks.len())?;
        let mut names = HashSet::with_capacity(self.disks.len());
        for d in &self.disks {
            d.validate()?;
            if !names.insert(d.name.as_str()) {
                return Err(DecodeError::invalid(
                    HEADER_WHAT,
                    format!("disk {:?} appears twice", d.name),
                ));
            }
        }
        Ok(())
    }

    /// Encodes the header (the part kept in the index catalog); refuses a header the
    /// decoder would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        let mut out = Vec::new();
        put_string(&mut out, HEADER_WHAT, &self.series)?;
        put_i64(&mut out, self.time_us);
        put_u64(&mut out, self.duration_ms);
        put_kv(&mut out, "tags", &self.tags)?;
        put_len(&mut out, HEADER_WHAT, "disks", self.disks.len())?;
        for d in &self.disks {
            d.write(&mut out)?;
        }
        Ok(out)
    }

    /// Decodes and validates a header.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, HEADER_WHAT);
        let header = Self::read(&mut r)?;
        r.finish()?;
        header.validate()?;
        Ok(header)
    }

    /// Reads the fields, checking only what bounds the work: the disk count.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let series = r.string()?;
        let time_us = r.i64()?;
        let duration_ms = r.u64()?;
        let tags = read_kv(r)?;
        let ndisks = r.count(MIN_DISK_ENTRY_LEN)?;
        check_disk_count(ndisks)?;
        let disks = (0..ndisks)
            .map(|_| DiskEntry::read(r))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            series,
            time_us,
            duration_ms,
            tags,
            disks,
        })
    }

    /// Logical bytes protected by this snapshot (sum of disk sizes; saturates at `u64::MAX`).
    pub fn logical_bytes(&self) -> u64 {
        self.disks
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.size))
    }
}

/// Number of manifest pages for a disk of `size` bytes.
pub fn page_count_for(size: u64, block_size: u32, page_entries: u32) -> u64 {
    page_count(block_count(size, block_size), page_entries)
}

impl Snapshot {
    /// Checks every rule [`Snapshot::decode`] enforces: the header's
    /// ([`SnapshotHeader::validate`]), one root list per disk, each with `page_count`
    /// pages and matching the disk's `root_digest`.
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.header.validate()?;
        self.check_roots()
    }

    fn check_roots(&self) -> Result<(), DecodeError> {
        if self.roots.len() != self.header.disks.len() {
            return Err(DecodeError::invalid(
                FILE_WHAT,
                format!(
                    "{} root lists for {} disks",
                    self.roots.len(),
                    self.header.disks.len()
                ),
            ));
        }
        for (d, root) in self.header.disks.iter().zip(&self.roots) {
            if root.len() as u64 != u64::from(d.page_count) {
                return Err(DecodeError::invalid(
                    FILE_WHAT,
                    format!(
                        "disk {:?}: root list of {} pages, header says {}",
                        d.name,
                        root.len(),
                        d.page_count
                    ),
                ));
            }
            if root_digest(root) != d.root_digest {
                return Err(DecodeError::invalid(
                    FILE_WHAT,
                    format!(
                        "disk {:?}: root list does not match its root digest",
                        d.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Encodes the whole snapshot file and returns it with its id; refuses a snapshot the
    /// decoder would refuse ([`Snapshot::validate`]).
    pub fn encode(&self) -> Result<(SnapshotId, Vec<u8>), EncodeError> {
        self.check_roots()?;
        let header = self.header.encode()?;
        let root_bytes = self.roots.iter().fold(0usize, |n, r| {
            n.saturating_add(r.len().saturating_mul(PageDigest::LEN))
        });
        let mut out = Vec::with_capacity(
            header
                .len()
                .saturating_add(root_bytes)
                .saturating_add(SNAPSHOT_PREAMBLE_LEN + 4),
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        put_u32(&mut out, PLAIN_FORMAT);
        put_len(&mut out, FILE_WHAT, "header bytes", header.len())?;
        out.extend_from_slice(&header);
        for root in &self.roots {
            for p in root {
                out.extend_from_slice(p.as_bytes());
            }
        }
        push_crc_trailer(&mut out);
        Ok((SnapshotId::of(&out), out))
    }

    /// Decodes a plain (format 1) snapshot file, checking its checksum, its structure and
    /// each disk's root digest. An encrypted repository's snapshot file (format 2,
    /// [`crate::snapshot_sealed`]) is refused.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let ((), mut r) = checksummed(buf, FILE_WHAT, |r| {
            r.magic(SNAPSHOT_MAGIC)?;
            match r.version()? {
                PLAIN_FORMAT => Ok(()),
                other => Err(DecodeError::invalid(
                    FILE_WHAT,
                    format!("a format-{other} (encrypted) snapshot file where a plain one belongs"),
                )),
            }
        })?;
        let header_len = r.u32()? as usize;
        let header = SnapshotHeader::decode(r.take(header_len)?)?;
        let roots = header
            .disks
            .iter()
            .map(|d| {
                let n = d.page_count as usize;
                // Cannot overflow: `n < 2^32`, so `32 n < 2^37`.
                let bytes = r.take(n.saturating_mul(PageDigest::LEN))?;
                bytes
                    .chunks_exact(PageDigest::LEN)
                    .map(PageDigest::from_slice)
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, DecodeError>>()?;
        r.finish()?;
        let snapshot = Self { header, roots };
        snapshot.check_roots()?;
        Ok(snapshot)
    }

    /// Decodes only the header of a snapshot file (checks magic, version and checksum).
    pub fn decode_header(buf: &[u8]) -> Result<SnapshotHeader, DecodeError> {
        Self::decode(buf).map(|s| s.header)
    }
}
