//! qcow2 (QEMU `docs/interop/qcow2.txt`): the constants both the qcow2 reader
//! (`sources/qcow2/`) and the qcow2 writer (`export/qcow2.rs`) use. All fields big-endian.
//!
//! Header (section "Header"): magic at 0, version at 4, backing file offset/size at 8/16,
//! cluster_bits at 20, virtual size at 24, crypt_method at 32, l1_size/l1_table_offset at
//! 36/40, refcount table at 48/56, snapshots at 60/64; version 3 adds incompatible,
//! compatible and autoclear features at 72/80/88, refcount_order at 96, header_length at
//! 100 and the optional compression_type byte at 104. Header extensions (section "Header
//! extensions") follow the header, `type:u32 length:u32 data` padded to 8 bytes.
//!
//! L1 and standard L2 entries (section "Cluster mapping") keep a cluster-aligned file offset
//! in bits 9..=55; bit 63 says the refcount is exactly one; L2 bit 62 marks a compressed
//! cluster, L2 bit 0 (v3) a cluster that reads as zeros.

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Minimum length of a version 3 header (through `header_length`).
pub const V3_HEADER_LEN: u32 = 104;
/// Longest backing file name the spec allows.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Offset bits of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 entry bit 63: refcount is exactly one.
pub const COPIED: u64 = 1 << 63;
/// L2 entry bit 62: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Standard L2 entry bit 0 (v3, without extended L2): the cluster reads as zeros.
pub const ZERO_FLAG: u64 = 1;
