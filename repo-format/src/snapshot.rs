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

use sha2::{Digest as _, Sha256};

use crate::codec::{
    expect_magic, push_crc_trailer, put_i64, put_string, put_u32, put_u64, split_crc_trailer,
    Reader,
};
use crate::config::validate_block_size;
use crate::manifest::{block_count, page_count, MAX_PAGE_ENTRIES};
use crate::{DecodeError, PageDigest, SnapshotId, FORMAT_VERSION};

/// Magic at the start of every snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TSRSNAP1";
/// Largest number of disks in one snapshot.
pub const MAX_DISKS: usize = 1024;
/// Largest length of a series, disk, or tag name.
pub const MAX_NAME_LEN: usize = 128;

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

fn put_kv(out: &mut Vec<u8>, kv: &[(String, String)]) {
    put_u32(out, kv.len() as u32);
    for (k, v) in kv {
        put_string(out, k);
        put_string(out, v);
    }
}

fn read_kv(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.count(8)?;
    let mut kv = Vec::with_capacity(n);
    for _ in 0..n {
        kv.push((r.string()?, r.string()?));
    }
    Ok(kv)
}

impl SnapshotHeader {
    /// Encodes the header (the part kept in the index catalog).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, &self.series);
        put_i64(&mut out, self.time_us);
        put_u64(&mut out, self.duration_ms);
        put_kv(&mut out, &self.tags);
        put_u32(&mut out, self.disks.len() as u32);
        for d in &self.disks {
            put_string(&mut out, &d.name);
            put_u64(&mut out, d.size);
            put_u32(&mut out, d.block_size);
            put_u32(&mut out, d.page_entries);
            put_u32(&mut out, d.page_count);
            out.extend_from_slice(&d.root_digest);
            put_kv(&mut out, &d.identity);
            let s = &d.stats;
            for v in [
                s.bytes_read,
                s.zero_blocks,
                s.new_chunks,
                s.new_raw_bytes,
                s.new_stored_bytes,
            ] {
                put_u64(&mut out, v);
            }
        }
        out
    }

    /// Decodes and validates a header.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "snapshot header";
        let mut r = Reader::new(buf, WHAT);
        let series = r.string()?;
        validate_name("series name", &series)?;
        let time_us = r.i64()?;
        let duration_ms = r.u64()?;
        let tags = read_kv(&mut r)?;
        let ndisks = r.count(64)?;
        if ndisks > MAX_DISKS {
            return Err(DecodeError::invalid(
                WHAT,
                format!("{ndisks} disks exceed {MAX_DISKS}"),
            ));
        }
        let mut disks: Vec<DiskEntry> = Vec::with_capacity(ndisks);
        for _ in 0..ndisks {
            let name = r.string()?;
            validate_name("disk name", &name)?;
            if disks.iter().any(|d| d.name == name) {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("disk {name:?} appears twice"),
                ));
            }
            let size = r.u64()?;
            let block_size = validate_block_size(u64::from(r.u32()?))?;
            let page_entries = r.u32()?;
            if page_entries == 0 || page_entries > MAX_PAGE_ENTRIES {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("page entries {page_entries} out of range"),
                ));
            }
            let page_count = r.u32()?;
            if u64::from(page_count) != page_count_for(size, block_size, page_entries) {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("disk {name:?}: {page_count} pages do not match size {size}"),
                ));
            }
            let root_digest = r.array()?;
            let identity = read_kv(&mut r)?;
            let stats = DiskStats {
                bytes_read: r.u64()?,
                zero_blocks: r.u64()?,
                new_chunks: r.u64()?,
                new_raw_bytes: r.u64()?,
                new_stored_bytes: r.u64()?,
            };
            disks.push(DiskEntry {
                name,
                size,
                block_size,
                page_entries,
                page_count,
                root_digest,
                identity,
                stats,
            });
        }
        r.finish()?;
        Ok(Self {
            series,
            time_us,
            duration_ms,
            tags,
            disks,
        })
    }

    /// Logical bytes protected by this snapshot (sum of disk sizes).
    pub fn logical_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }
}

/// Number of manifest pages for a disk of `size` bytes.
pub fn page_count_for(size: u64, block_size: u32, page_entries: u32) -> u64 {
    page_count(block_count(size, block_size), page_entries)
}

impl Snapshot {
    /// Encodes the whole snapshot file and returns it with its id.
    pub fn encode(&self) -> (SnapshotId, Vec<u8>) {
        let header = self.header.encode();
        let mut out = Vec::with_capacity(
            header.len() + 20 + self.roots.iter().map(|r| r.len() * 32).sum::<usize>(),
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        put_u32(&mut out, FORMAT_VERSION);
        put_u32(&mut out, header.len() as u32);
        out.extend_from_slice(&header);
        for root in &self.roots {
            for p in root {
                out.extend_from_slice(p.as_bytes());
            }
        }
        push_crc_trailer(&mut out);
        (SnapshotId::of(&out), out)
    }

    /// Decodes a snapshot file, checking its checksum, its structure and each disk's root digest.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "snapshot file";
        let mut r = Reader::new(buf, WHAT);
        expect_magic(&mut r, SNAPSHOT_MAGIC, WHAT)?;
        let version = r.u32()?;
        if version == 0 || version > FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: WHAT,
                version,
                supported: FORMAT_VERSION,
            });
        }
        let body = split_crc_trailer(buf, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        r.take(12)?;
        let header_len = r.u32()? as usize;
        let header = SnapshotHeader::decode(r.take(header_len)?)?;
        let mut roots = Vec::with_capacity(header.disks.len());
        for d in &header.disks {
            let n = d.page_count as usize;
            let bytes = r.take(
                n.checked_mul(32)
                    .ok_or_else(|| DecodeError::invalid(WHAT, "page count overflow"))?,
            )?;
            let pages: Vec<PageDigest> = bytes
                .chunks_exact(32)
                .map(PageDigest::from_slice)
                .collect::<Result<_, _>>()?;
            if root_digest(&pages) != d.root_digest {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!(
                        "disk {:?}: root list does not match its root digest",
                        d.name
                    ),
                ));
            }
            roots.push(pages);
        }
        r.finish()?;
        Ok(Self { header, roots })
    }

    /// Decodes only the header of a snapshot file (checks magic, version and checksum).
    pub fn decode_header(buf: &[u8]) -> Result<SnapshotHeader, DecodeError> {
        Self::decode(buf).map(|s| s.header)
    }
}
