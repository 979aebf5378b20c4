//! Strategies for valid on-disk values, byte mutations, and the fix-ups that re-seal
//! mutated bytes (CRCs, length fields) so that mutations reach the deep parsing instead of
//! stopping at an outer checksum.

use std::ops::Range;

use proptest::prelude::*;
use proptest::sample::Index;
use tessera_format::config::MAX_BLOCK_SIZE;
use tessera_format::pack::{FooterEntry, MAX_OBJECT_LEN, PACK_HEADER_LEN, RECORD_HEADER_LEN};
use tessera_format::snapshot::{page_count_for, root_digest};
use tessera_format::{
    ChunkDigest, Codec, Compression, DiskEntry, DiskStats, IdScheme, ObjectInfo, ObjectKind,
    PageDigest, RepoConfig, RepoId, Snapshot, SnapshotHeader,
};

pub fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

pub fn config() -> impl Strategy<Value = RepoConfig> {
    (
        any::<[u8; 16]>(),
        16u32..=23,
        prop::bool::ANY,
        1i32..=19,
        16u32..=65536,
        any::<i64>(),
        prop::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(id, shift, zstd, level, pe, t, key)| RepoConfig {
            format_version: if key.is_some() { 2 } else { 1 },
            repo_id: RepoId(id),
            id_scheme: if key.is_some() {
                IdScheme::HmacSha256
            } else {
                IdScheme::Sha256
            },
            compression: if zstd {
                Compression {
                    codec: Codec::Zstd,
                    level,
                }
            } else {
                Compression {
                    codec: Codec::None,
                    level: 0,
                }
            },
            default_block_size: 1 << shift,
            page_entries: pe,
            created_at_us: t,
            encryption: match key {
                Some(fingerprint) => tessera_format::Encryption::Aes256Gcm { fingerprint },
                None => tessera_format::Encryption::None,
            },
        })
}

/// A valid object info: both kinds and codecs, lengths up to the limit.
pub fn object_info() -> impl Strategy<Value = ObjectInfo> {
    (
        prop::bool::ANY,
        prop::bool::ANY,
        any::<[u8; 32]>(),
        0u32..=MAX_BLOCK_SIZE,
        0u32..=MAX_OBJECT_LEN,
        any::<u32>(),
    )
        .prop_map(|(page, zstd, d, raw, stored, crc)| ObjectInfo {
            kind: if page {
                ObjectKind::Page
            } else {
                ObjectKind::Chunk
            },
            codec: if zstd { Codec::Zstd } else { Codec::None },
            digest: ChunkDigest(d),
            raw_len: raw,
            stored_len: if zstd { stored } else { raw },
            stored_crc: crc,
        })
}

/// Footer entries laid out back to back from the pack header, as a pack writer does, and
/// the footer offset just past the last record.
pub fn footer_entries(infos: &[ObjectInfo]) -> (Vec<FooterEntry>, u64) {
    let mut offset = PACK_HEADER_LEN as u64;
    let entries = infos
        .iter()
        .map(|info| {
            let e = FooterEntry {
                info: *info,
                offset,
            };
            offset += RECORD_HEADER_LEN as u64 + u64::from(info.stored_len);
            e
        })
        .collect();
    (entries, offset)
}

pub fn snapshot() -> impl Strategy<Value = Snapshot> {
    let disk = (
        name(),
        prop_oneof![0u64..(1 << 24), any::<u64>()],
        16u32..=23,
        1u32..=65536,
        prop::collection::vec((name(), ".{0,10}"), 0..3),
        any::<[u64; 5]>(),
    );
    (
        name(),
        any::<i64>(),
        any::<u64>(),
        prop::collection::vec((name(), ".{0,12}"), 0..4),
        prop::collection::vec(disk, 0..4),
    )
        .prop_filter_map(
            "root lists of at most 4096 pages keep cases fast",
            |(series, time_us, duration_ms, tags, disks)| {
                let mut entries: Vec<DiskEntry> = Vec::new();
                let mut roots = Vec::new();
                for (i, (n, size, shift, pe, identity, stats)) in disks.into_iter().enumerate() {
                    let bs = 1u32 << shift;
                    let pages = page_count_for(size, bs, pe);
                    if pages > 4096 {
                        return None;
                    }
                    let root: Vec<PageDigest> = (0..pages)
                        .map(|p| PageDigest::of(&p.to_le_bytes()))
                        .collect();
                    let [bytes_read, zero_blocks, new_chunks, new_raw_bytes, new_stored_bytes] =
                        stats;
                    entries.push(DiskEntry {
                        name: format!("{n}{i}"),
                        size,
                        block_size: bs,
                        page_entries: pe,
                        page_count: u32::try_from(pages).ok()?,
                        root_digest: root_digest(&root),
                        identity,
                        stats: DiskStats {
                            bytes_read,
                            zero_blocks,
                            new_chunks,
                            new_raw_bytes,
                            new_stored_bytes,
                        },
                    });
                    roots.push(root);
                }
                Some(Snapshot {
                    header: SnapshotHeader {
                        series,
                        time_us,
                        duration_ms,
                        tags,
                        disks: entries,
                    },
                    roots,
                })
            },
        )
}

/// One edit of an encoded structure.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    Flip(Index, u8),
    /// Overwrites one byte.
    Set(Index, u8),
    /// Overwrites 4 bytes (clipped at the end) with a value chosen to hit limits.
    PutU32(Index, u32),
    /// Overwrites 8 bytes (clipped at the end) with a value chosen to hit limits.
    PutU64(Index, u64),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to `n` bytes.
    Remove(Index, usize),
}

/// Counts and lengths around every limit the format has, and random ones.
pub fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            15,
            16,
            17,
            32,
            56,
            1023,
            1024,
            1025,
            65_535,
            65_536,
            65_537,
            1 << 20,
            MAX_OBJECT_LEN,
            MAX_OBJECT_LEN + 1,
            i32::MAX.cast_unsigned(),
            u32::MAX - 56,
            u32::MAX,
        ]),
        any::<u32>(),
    ]
}

pub fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        edge_u32().prop_map(u64::from),
        prop::sample::select(vec![
            u64::MAX,
            u64::MAX - 56,
            u64::MAX - 88,
            1 << 63,
            u64::from(u32::MAX) + 1,
        ]),
        any::<u64>(),
    ]
}

/// Mutations that keep the length of what they edit.
pub fn in_place_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), edge_u32()).prop_map(|(i, v)| Mutation::PutU32(i, v)),
        (any::<Index>(), edge_u64()).prop_map(|(i, v)| Mutation::PutU64(i, v)),
    ]
}

/// Any mutation, including ones that grow or shrink what they edit.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => in_place_mutation(),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

pub fn in_place_mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(in_place_mutation(), 1..=max)
}

/// Applies `m` to `bytes[range]` and returns the new end of the range. An index past an
/// empty range edits nothing (an insert still inserts).
pub fn apply(bytes: &mut Vec<u8>, range: Range<usize>, m: &Mutation) -> usize {
    let len = range.len();
    let at = |i: &Index| range.start + if len == 0 { 0 } else { i.index(len) };
    let overwrite = |bytes: &mut Vec<u8>, at: usize, v: &[u8]| {
        let n = v.len().min(range.end - at);
        bytes[at..at + n].copy_from_slice(&v[..n]);
    };
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::Set(i, b) if len > 0 => bytes[at(i)] = *b,
        Mutation::PutU32(i, v) if len > 0 => overwrite(bytes, at(i), &v.to_le_bytes()),
        Mutation::PutU64(i, v) if len > 0 => overwrite(bytes, at(i), &v.to_le_bytes()),
        Mutation::Insert(i, b) => {
            let at = at(i);
            bytes.splice(at..at, b.iter().copied());
            return range.end + b.len();
        }
        Mutation::Remove(i, n) if len > 0 => {
            let at = at(i);
            let n = (*n).min(range.end - at);
            bytes.drain(at..at + n);
            return range.end - n;
        }
        _ => {}
    }
    range.end
}

/// Applies every mutation in turn to `bytes[start..end]`; returns the new end.
pub fn apply_all(bytes: &mut Vec<u8>, start: usize, mut end: usize, ms: &[Mutation]) -> usize {
    for m in ms {
        end = apply(bytes, start..end, m);
    }
    end
}

/// Replaces the trailing CRC-32C of `bytes` with the CRC of everything before it.
pub fn reseal_crc(bytes: &mut [u8]) {
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
}

pub fn put_u32_at(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
