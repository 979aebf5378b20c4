//! Cluster mapping: L1 and L2 entries (qcow2.txt "Cluster mapping", "Extended L2 Entries").
//!
//! - L1 entry: bits 9..=55 = file offset of an L2 table (cluster-aligned; 0 = everything it
//!   covers is unallocated). An L2 table is one cluster of 8-byte entries, or 16-byte
//!   entries with extended L2 (entry word + subcluster bitmap).
//! - L2 entry, bit 62 clear (standard): bit 0 = reads as zeros (v3 without extended L2),
//!   bits 9..=55 = cluster-aligned host offset, 0 = unallocated (backing file or zeros).
//! - L2 entry, bit 62 set (compressed): with `x = 62 - (cluster_bits - 8)`, bits 0..x =
//!   byte offset of the payload, bits x..=61 = additional 512-byte sectors; the payload is
//!   `(sectors + 1) · 512 − (offset mod 512)` bytes and inflates to exactly one cluster.
//! - Extended L2: bitmap bits 0..=31 = subcluster allocated (data at host + i · cluster/32),
//!   bits 32..=63 = subcluster reads as zeros; neither = backing. Compressed clusters have
//!   no subclusters.
//!
//! Every entry is checked before it is used: aligned offsets inside the file, no subcluster
//! both allocated and zero. Each problem names the guest offset and the L2 entry's place.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::formats::qcow2::{COMPRESSED, OFFSET_MASK, ZERO_FLAG};
use crate::sources::ReadAt;

/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u64 = 32;
/// Bytes of L2 tables kept in the cache.
const CACHE_BYTES: u64 = 16 << 20;

/// What a guest cluster, or one of its subclusters, reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not defined by this image: the backing file, or zeros without one.
    Backing,
    /// Zeros, defined by this image.
    Zero,
    /// Stored in this file; the value is the host offset of the cluster's first byte.
    Data(u64),
    /// A compressed cluster: `len` payload bytes at `host`.
    Compressed {
        /// File offset of the payload.
        host: u64,
        /// Payload length (may run into the final, partly written sector).
        len: u64,
    },
}

/// A decoded L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMap {
    /// One mapping for the whole cluster.
    Whole(Mapping),
    /// Extended L2 standard cluster: per-subcluster allocation and zero bits.
    Sub {
        /// Host offset of the cluster (valid when any allocation bit is set).
        host: u64,
        /// Allocation bitmap (bit i = subcluster i).
        alloc: u32,
        /// Reads-as-zero bitmap.
        zero: u32,
    },
}

impl ClusterMap {
    /// The mapping of subcluster `sub` (ignored for a whole-cluster mapping).
    pub fn at(&self, sub: u64) -> Mapping {
        match *self {
            Self::Whole(m) => m,
            Self::Sub { host, alloc, zero } => {
                if alloc >> sub & 1 == 1 {
                    Mapping::Data(host)
                } else if zero >> sub & 1 == 1 {
                    Mapping::Zero
                } else {
                    Mapping::Backing
                }
            }
        }
    }
}

/// What entry decoding needs to know about the image.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// 128-bit L2 entries.
    pub extended_l2: bool,
    /// Header version (the zero flag needs v3).
    pub version: u32,
    /// Length of the image file.
    pub file_len: u64,
}

impl Geometry {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the unit a mapping applies to: a subcluster with extended L2, else a cluster.
    pub fn unit_bits(&self) -> u32 {
        if self.extended_l2 {
            self.cluster_bits - 5
        } else {
            self.cluster_bits
        }
    }

    /// 64-bit words per L2 entry.
    pub fn stride(&self) -> usize {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / (8 * self.stride() as u64)
    }

    /// Decodes an L2 entry (`word`, and `bitmap` with extended L2). Errors are reasons.
    pub fn decode(&self, word: u64, bitmap: u64) -> Result<ClusterMap, String> {
        if word & COMPRESSED != 0 {
            return self.decode_compressed(word);
        }
        let host = word & OFFSET_MASK;
        if !self.extended_l2 {
            if word & ZERO_FLAG != 0 {
                if self.version < 3 {
                    return Err(format!(
                        "entry {word:#018x} has the zero flag, which version 2 images do not have"
                    ));
                }
                return Ok(ClusterMap::Whole(Mapping::Zero));
            }
            if host == 0 {
                return Ok(ClusterMap::Whole(Mapping::Backing));
            }
            self.check_host(host)?;
            return Ok(ClusterMap::Whole(Mapping::Data(host)));
        }
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(format!(
                "subcluster bitmap {bitmap:#018x} marks subclusters {:#x} both allocated and zero",
                alloc & zero
            ));
        }
        if alloc != 0 {
            if host == 0 {
                return Err(format!("subcluster bitmap {bitmap:#018x} allocates subclusters but the entry has no host offset"));
            }
            self.check_host(host)?;
        }
        Ok(ClusterMap::Sub { host, alloc, zero })
    }

    fn check_host(&self, host: u64) -> Result<(), String> {
        if !host.is_multiple_of(self.cluster_size()) {
            return Err(format!(
                "data cluster offset {host:#x} is not aligned to the {}-byte cluster",
                self.cluster_size()
            ));
        }
        if host >= self.file_len {
            return Err(format!(
                "data cluster offset {host:#x} lies past the end of the file ({} bytes)",
                self.file_len
            ));
        }
        Ok(())
    }

    fn decode_compressed(&self, word: u64) -> Result<ClusterMap, String> {
        let x = 62 - (self.cluster_bits - 8);
        let host = word & ((1u64 << x) - 1);
        let sectors = ((word >> x) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (host % 512);
        if host >= self.file_len {
            return Err(format!("compressed cluster payload offset {host:#x} lies past the end of the file ({} bytes)", self.file_len));
        }
        Ok(ClusterMap::Whole(Mapping::Compressed { host, len }))
    }
}

/// Reads the L2 table at `offset` (the caller checked it is aligned and inside the file).
pub fn read_l2(file: &dyn ReadAt, geo: &Geometry, offset: u64) -> Result<Arc<Vec<u64>>, String> {
    let mut bytes = vec![0u8; geo.cluster_size() as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| format!("reading the L2 table at offset {offset:#x}: {e}"))?;
    Ok(Arc::new(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
    ))
}

/// L2 tables by file offset, at most [`CACHE_BYTES`] of them, oldest evicted first.
pub struct L2Cache {
    tables: HashMap<u64, Arc<Vec<u64>>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl L2Cache {
    /// An empty cache for tables of `cluster_size` bytes.
    pub fn new(cluster_size: u64) -> Self {
        Self {
            tables: HashMap::new(),
            order: VecDeque::new(),
            capacity: (CACHE_BYTES / cluster_size).max(1) as usize,
        }
    }

    /// The cached table at `offset`.
    pub fn get(&self, offset: u64) -> Option<Arc<Vec<u64>>> {
        self.tables.get(&offset).cloned()
    }

    /// Caches `table`, evicting the oldest when full.
    pub fn insert(&mut self, offset: u64, table: Arc<Vec<u64>>) {
        if self.tables.insert(offset, table).is_none() {
            self.order.push_back(offset);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.tables.remove(&old);
            }
        }
    }
}
