//! The qcow2 header and backing file name (QEMU `docs/interop/qcow2.txt`,
//! "Header", "Header extensions", "String header extensions"). All fields big-endian:
//!
//! | offset | field | checked |
//! |---|---|---|
//! | 0 | magic `QFI\xfb` | exact |
//! | 4 | version | 2 or 3 |
//! | 8 / 16 | backing_file_offset / backing_file_size | name 1..=1023 bytes inside the file, UTF-8 |
//! | 20 | cluster_bits | 9..=21 (qemu reads at most 2 MiB clusters) |
//! | 24 | size (virtual) | covered by the L1 table |
//! | 32 | crypt_method | 0 (encrypted images are refused) |
//! | 36 / 40 | l1_size / l1_table_offset | cluster-aligned, inside the file, at most 32 MiB (qemu's limit) |
//! | 72 | incompatible_features (v3) | bits 0 dirty (read), 3 compression type, 4 extended L2; 1 corrupt, 2 external data file and unknown bits are refused |
//! | 100 | header_length (v3) | ≥ 104, multiple of 8, inside the first cluster |
//! | 104 | compression_type (v3, when header_length > 104) | 0 deflate, 1 zstd; non-zero only with bit 3 |
//!
//! A version 2 header is 72 bytes. Header extensions follow it ([`super::extensions`]).
//! Constants shared with the writer (`export/qcow2.rs`) are in `formats/qcow2.rs`.

use super::extensions::{self, read_range};
use crate::formats::qcow2::{MAGIC, MAX_BACKING_NAME, V2_HEADER_LEN, V3_HEADER_LEN};
use crate::sources::ReadAt;

/// Bytes of the header read up front: v3 fields plus `compression_type` and its padding.
const HEADER_READ: usize = 112;
/// qemu's limit on the L1 table size; bounds the memory the L1 table takes.
const MAX_L1_BYTES: u64 = 32 << 20;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (zlib without header), type 0.
    Deflate,
    /// zstd frames, type 1.
    Zstd,
}

/// The validated header fields tessera uses.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries of the L1 table that map the virtual size (entries past them are unused).
    pub l1_entries: u64,
    /// File offset of the L1 table.
    pub l1_table_offset: u64,
    /// Incompatible bit 0: refcounts may be stale (mappings are still valid).
    pub dirty: bool,
    /// Incompatible bit 4: 128-bit L2 entries with 32 subclusters.
    pub extended_l2: bool,
    /// Compression of compressed clusters.
    pub compression: Compression,
    /// The backing file name as recorded.
    pub backing_file: Option<String>,
    /// The backing format extension, if present.
    pub backing_format: Option<String>,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

fn be32(h: &[u8; HEADER_READ], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be64(h: &[u8; HEADER_READ], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Parses and checks the header of `file` (`file_len` bytes long). Errors are the reason
/// text of an `Error::BadImage`.
pub fn parse(file: &dyn ReadAt, file_len: u64) -> Result<Header, String> {
    if file_len < u64::from(V2_HEADER_LEN) {
        return Err(format!(
            "the file is {file_len} bytes, shorter than the {V2_HEADER_LEN}-byte qcow2 header"
        ));
    }
    let mut h = [0u8; HEADER_READ];
    let n = file_len.min(HEADER_READ as u64) as usize;
    file.read_exact_at(&mut h[..n], 0)
        .map_err(|e| format!("reading the header: {e}"))?;
    let magic = be32(&h, 0);
    if magic != MAGIC {
        return Err(format!(
            "bad magic {magic:#010x} at offset 0 (expected 0x514649fb, \"QFI\\xfb\")"
        ));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(format!(
            "version {version} at offset 4 is not supported (2 or 3)"
        ));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!(
            "cluster_bits {cluster_bits} at offset 20 is out of range (9..=21)"
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    let crypt_method = be32(&h, 32);
    if crypt_method != 0 {
        return Err(format!("encrypted qcow2 images are not supported; decrypt with qemu-img convert first (crypt_method {crypt_method} at offset 32)"));
    }
    let (features, header_len, compression_byte) = if version == 2 {
        (0, V2_HEADER_LEN, 0)
    } else {
        if file_len < u64::from(V3_HEADER_LEN) {
            return Err(format!("the file is {file_len} bytes, shorter than the {V3_HEADER_LEN}-byte version 3 header"));
        }
        let len = be32(&h, 100);
        if len < V3_HEADER_LEN
            || !len.is_multiple_of(8)
            || u64::from(len) > cluster_size.min(file_len)
        {
            return Err(format!("header_length {len} at offset 100 is invalid (at least {V3_HEADER_LEN}, a multiple of 8, inside the first cluster and the file)"));
        }
        let compression = if len > V3_HEADER_LEN { h[104] } else { 0 };
        (be64(&h, 72), len, compression)
    };
    // Features first: an image tessera must not read is refused for that reason, whatever
    // else is wrong with it. As in qemu, the extension area ends where the backing name
    // starts (old v2 images put it right after the header), or at the end of the first
    // cluster.
    let backing_offset = be64(&h, 8);
    let mut ext_end = cluster_size.min(file_len);
    if backing_offset > u64::from(header_len) {
        ext_end = ext_end.min(backing_offset);
    }
    let ext = extensions::read(file, file_len, u64::from(header_len), ext_end)?;
    let compression = check_features(
        features,
        compression_byte,
        cluster_bits,
        &ext.incompatible_names,
    )?;
    let extended_l2 = features & INCOMPAT_EXTENDED_L2 != 0;

    let size = be64(&h, 24);
    let l1_size = u64::from(be32(&h, 36));
    let l1_table_offset = be64(&h, 40);
    let l2_entries = cluster_size / if extended_l2 { 16 } else { 8 };
    let l1_entries = check_l1(
        size,
        l1_size,
        l1_table_offset,
        cluster_size,
        l2_entries,
        file_len,
    )?;
    let backing_file = read_backing_name(file, file_len, backing_offset, be32(&h, 16))?;
    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_entries,
        l1_table_offset,
        dirty: features & INCOMPAT_DIRTY != 0,
        extended_l2,
        compression,
        backing_file,
        backing_format: ext.backing_format,
    })
}

fn check_features(
    features: u64,
    compression_byte: u8,
    cluster_bits: u32,
    names: &[(u8, String)],
) -> Result<Compression, String> {
    let unknown = features & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let described: Vec<String> = (0..64u8)
            .filter(|bit| unknown >> bit & 1 == 1)
            .map(|bit| match names.iter().find(|(b, _)| *b == bit) {
                Some((_, name)) => format!("bit {bit} {name:?}"),
                None => format!("bit {bit}"),
            })
            .collect();
        return Err(format!("unknown incompatible features: {} (incompatible_features {features:#x} at offset 72); tessera cannot read this image safely", described.join(", ")));
    }
    if features & INCOMPAT_CORRUPT != 0 {
        return Err("the image is marked corrupt (incompatible feature bit 1 at offset 72); repair it with `qemu-img check -r all` first".into());
    }
    if features & INCOMPAT_DATA_FILE != 0 {
        return Err("the image keeps its data in an external data file (incompatible feature bit 2 at offset 72), which tessera does not read; back up the data file as a raw image or convert with `qemu-img convert -O qcow2`".into());
    }
    if features & INCOMPAT_EXTENDED_L2 != 0 && cluster_bits < 14 {
        return Err(format!("extended L2 entries need clusters of at least 16 KiB, but cluster_bits is {cluster_bits}"));
    }
    let typed = features & INCOMPAT_COMPRESSION_TYPE != 0;
    match (typed, compression_byte) {
        (false, 0) => Ok(Compression::Deflate),
        (true, 1) => Ok(Compression::Zstd),
        (false, t) => Err(format!(
            "compression_type {t} at offset 104 without incompatible feature bit 3"
        )),
        (true, t) => Err(format!(
            "compression_type {t} at offset 104 is not supported (1 = zstd with feature bit 3)"
        )),
    }
}

/// Checks the L1 table's place and size; returns how many entries map the virtual size.
fn check_l1(
    size: u64,
    l1_size: u64,
    offset: u64,
    cluster_size: u64,
    l2_entries: u64,
    file_len: u64,
) -> Result<u64, String> {
    let per_l1 = cluster_size * l2_entries;
    let needed = size.div_ceil(per_l1);
    if needed > l1_size {
        return Err(format!("the L1 table has {l1_size} entries (l1_size at offset 36) but the virtual size {size} needs {needed}"));
    }
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(format!(
            "l1_size {l1_size} at offset 36 exceeds the {MAX_L1_BYTES}-byte L1 limit"
        ));
    }
    if !offset.is_multiple_of(cluster_size) && l1_size > 0 {
        return Err(format!("l1_table_offset {offset:#x} at offset 40 is not aligned to the {cluster_size}-byte cluster"));
    }
    let end = offset.checked_add(needed * 8);
    if needed > 0 && end.is_none_or(|e| e > file_len) {
        return Err(format!("the L1 table at offset {offset:#x} ({needed} entries) lies past the end of the file ({file_len} bytes)"));
    }
    Ok(needed)
}

fn read_backing_name(
    file: &dyn ReadAt,
    file_len: u64,
    offset: u64,
    len: u32,
) -> Result<Option<String>, String> {
    if offset == 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_BACKING_NAME {
        return Err(format!(
            "backing_file_size {len} at offset 16 is out of range (1..={MAX_BACKING_NAME})"
        ));
    }
    let bytes = read_range(
        file,
        file_len,
        offset,
        u64::from(len),
        "the backing file name",
    )?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("the backing file name at offset {offset} is not UTF-8"))
}
