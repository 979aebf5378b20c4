//! qcow2 (version 3) writer.
//!
//! Cluster size `C` = the disk's block size, at most 2 MiB (`cluster_bits` 16..=21); a larger
//! block is split into several clusters. All fields big-endian. File layout, in clusters:
//!
//! | cluster(s) | content |
//! |---|---|
//! | 0 | header (104 bytes, `header_length` 104, refcount_order 4 = 16-bit refcounts, no feature bits), then header extensions: backing format `0xe2792aca` (delta only) and the end marker, then the backing file name (delta only, at most 1023 bytes) |
//! | 1.. | the L1 table (`l1_size` = ⌈size / (C · C/8)⌉ entries) |
//! | next | the refcount table |
//! | next | refcount blocks (C/2 entries each), covering every cluster of the file: all 1 |
//! | next | L2 tables, one per L1 entry that maps anything, in guest order |
//! | next | data clusters, in guest order |
//!
//! L1 and allocated L2 entries carry `QCOW_OFLAG_COPIED` (bit 63: refcount is 1). Full export:
//! one data cluster per cluster of each non-zero block; everything else is unallocated and
//! reads as zeros. Delta (`--base`): only the blocks that differ from the base; a block that
//! became all zero is an L2 entry `1` (the v3 "reads as zeros" flag, no host cluster), so the
//! backing file does not show through; every other cluster reads from the backing file.
//!
//! Backing format: recorded as `qcow2` when the backing name ends in `.qcow2`, else `raw`
//! (e.g. a raw export or a restored image).
//!
//! The virtual size is the disk size rounded up to 512 bytes: qemu counts sizes in sectors
//! and would cut a partial last sector; the padding reads as zeros.

use std::collections::BTreeMap;
use std::path::Path;

use super::{round_up, zero_outside, BlockList, ExportOutcome, Format, Staged, BATCH};
use crate::error::{Error, Result};
use crate::ops::disk_reader::DiskReader;
use crate::progress::Progress;
use crate::repo::Repository;

use crate::formats::qcow2::{
    COPIED, EXT_BACKING_FORMAT, MAGIC, MAX_BACKING_NAME, V3_HEADER_LEN, ZERO_FLAG,
};

const HEADER_LEN: usize = V3_HEADER_LEN as usize;
const MAX_CLUSTER: u64 = 2 << 20;

/// Where each guest cluster goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// The next data cluster.
    Data,
    /// Reads as zeros (delta only).
    Zero,
}

/// Where everything goes, in clusters, and the tables' contents.
struct Layout {
    cs: u64,
    cluster_bits: u32,
    vsize: u64,
    l1_size: u64,
    rt_clusters: u64,
    rb_count: u64,
    /// First cluster of: the refcount table, the refcount blocks, the L2 tables, the data.
    rt_at: u64,
    rb_first: u64,
    l2_at: u64,
    data_at: u64,
    /// Clusters in the file.
    total: u64,
    l1: Vec<u64>,
    l2: Vec<u64>,
}

/// The first cluster of the L1 table (cluster 0 is the header).
const L1_AT: u64 = 1;

fn layout(reader: &DiskReader<&Repository>, blocks: &BlockList) -> Result<Layout> {
    let bs = reader.block_size();
    let cs = bs.min(MAX_CLUSTER);
    if !cs.is_power_of_two() || cs < 512 {
        return Err(Error::InvalidArgument(format!(
            "block size {bs} cannot map to qcow2 clusters"
        )));
    }
    let vsize = round_up(reader.size(), 512);
    let l2_entries = cs / 8;
    let l1_size = vsize.div_ceil(cs * l2_entries);
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);

    // Guest clusters, ascending.
    let mut guest: Vec<(u64, Mapping)> = Vec::new();
    for (block, digest) in &blocks.blocks {
        let n = reader.block_len(*block).div_ceil(cs);
        let first = block * (bs / cs);
        let m = if digest.is_zero() {
            Mapping::Zero
        } else {
            Mapping::Data
        };
        guest.extend((0..n).map(|k| (first + k, m)));
    }
    let n_data = guest.iter().filter(|(_, m)| *m == Mapping::Data).count() as u64;
    let mut l2_index: BTreeMap<u64, usize> = BTreeMap::new();
    for (g, _) in &guest {
        let next = l2_index.len();
        l2_index.entry(g / l2_entries).or_insert(next);
    }
    let n_l2 = l2_index.len() as u64;

    // Refcount structures cover themselves: iterate to a fixed point.
    let per_refblock = cs / 2;
    let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
    let total = loop {
        let total = 1 + l1_clusters + rt_clusters + rb_count + n_l2 + n_data;
        let need_blocks = total.div_ceil(per_refblock);
        let need_table = (need_blocks * 8).div_ceil(cs);
        if need_blocks == rb_count && need_table == rt_clusters {
            break total;
        }
        (rb_count, rt_clusters) = (need_blocks, need_table);
    };
    let rt_at = L1_AT + l1_clusters;
    let rb_first = rt_at + rt_clusters;
    let l2_at = rb_first + rb_count;
    let data_at = l2_at + n_l2;

    let mut l1 = vec![0u64; l1_size as usize];
    for (&i, &k) in &l2_index {
        l1[i as usize] = ((l2_at + k as u64) * cs) | COPIED;
    }
    let mut l2 = vec![0u64; (n_l2 * l2_entries) as usize];
    let mut next_data = data_at;
    for (g, m) in &guest {
        let k = l2_index[&(g / l2_entries)] as u64;
        let slot = (k * l2_entries + g % l2_entries) as usize;
        l2[slot] = match m {
            Mapping::Data => {
                next_data += 1;
                ((next_data - 1) * cs) | COPIED
            }
            Mapping::Zero => ZERO_FLAG,
        };
    }
    Ok(Layout {
        cs,
        cluster_bits: cs.trailing_zeros(),
        vsize,
        l1_size,
        rt_clusters,
        rb_count,
        rt_at,
        rb_first,
        l2_at,
        data_at,
        total,
        l1,
        l2,
    })
}

/// Writes `blocks` of the disk `reader` reads as a qcow2 image; with `backing`, an overlay
/// on that backing file.
pub fn write(
    reader: &DiskReader<&Repository>,
    blocks: &BlockList,
    output: &Path,
    backing: Option<&str>,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExportOutcome> {
    let lay = layout(reader, blocks)?;
    let cs = lay.cs;
    let out = Staged::create(output, force)?;
    out.write_at(&header(&lay, backing)?, 0)?;

    // Data, in guest order (the order `layout` assigned host clusters in).
    progress.start(
        "export qcow2",
        blocks
            .blocks
            .iter()
            .map(|(b, _)| reader.block_len(*b))
            .sum(),
    );
    let mut host = lay.data_at;
    let mut outcome = ExportOutcome {
        format: Format::Qcow2,
        path: output.to_path_buf(),
        disk_size: reader.size(),
        virtual_size: lay.vsize,
        file_size: 0,
        bytes_written: 0,
        blocks_written: 0,
        zero_blocks_written: 0,
        backing_file: backing.map(ToString::to_string),
    };
    let mut buf = Vec::new();
    for batch in blocks.blocks.chunks(BATCH) {
        // The batch's data blocks, back to back, each padded to whole clusters with zeros.
        let refs = reader.locate(batch)?;
        let mut pieces = Vec::new();
        let mut end = 0;
        let mut batch_len = 0;
        for ((block, _), r) in batch.iter().zip(&refs) {
            let len = reader.block_len(*block);
            batch_len += len;
            if r.is_zero() {
                outcome.zero_blocks_written += 1;
                continue;
            }
            pieces.push((*block, *r, end..end + len as usize));
            end += round_up(len, cs) as usize;
            outcome.bytes_written += len;
            outcome.blocks_written += 1;
        }
        zero_outside(&mut buf, end, &pieces);
        reader.read_blocks_into(&mut buf, &pieces)?;
        out.write_at(&buf, host * cs)?;
        host += end as u64 / cs;
        progress.advance(batch_len);
    }
    progress.finish();

    out.write_at(&be64s(&lay.l1), L1_AT * cs)?;
    out.write_at(&be64s(&lay.l2), lay.l2_at * cs)?;
    let table: Vec<u64> = (0..lay.rb_count).map(|i| (lay.rb_first + i) * cs).collect();
    out.write_at(&be64s(&table), lay.rt_at * cs)?;
    let refcounts: Vec<u8> = (0..lay.total).flat_map(|_| 1u16.to_be_bytes()).collect();
    out.write_at(&refcounts, lay.rb_first * cs)?;
    outcome.file_size = out.commit(lay.total * cs)?;
    Ok(outcome)
}

fn be64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Cluster 0: header, extensions, backing file name.
fn header(lay: &Layout, backing: Option<&str>) -> Result<Vec<u8>> {
    let mut h = Vec::with_capacity(lay.cs as usize);
    let mut ext = Vec::new();
    if let Some(name) = backing {
        let qcow2 = Path::new(name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("qcow2"));
        let fmt: &[u8] = if qcow2 { b"qcow2" } else { b"raw" };
        ext.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        ext.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
        ext.extend_from_slice(fmt);
        ext.resize(round_up(ext.len() as u64, 8) as usize, 0);
    }
    ext.extend_from_slice(&[0; 8]); // end of extensions
    let (backing_offset, backing_len) = match backing {
        Some(name) if name.is_empty() || name.len() > MAX_BACKING_NAME as usize => {
            return Err(Error::InvalidArgument(format!(
                "the backing file name must be 1 to {MAX_BACKING_NAME} bytes, not {}",
                name.len()
            )))
        }
        Some(name) => ((HEADER_LEN + ext.len()) as u64, name.len() as u32),
        None => (0, 0),
    };
    let l1_size = u32::try_from(lay.l1_size)
        .map_err(|_| Error::InvalidArgument("the disk is too large for qcow2".into()))?;
    h.extend_from_slice(&MAGIC.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&backing_offset.to_be_bytes());
    h.extend_from_slice(&backing_len.to_be_bytes());
    h.extend_from_slice(&lay.cluster_bits.to_be_bytes());
    h.extend_from_slice(&lay.vsize.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&l1_size.to_be_bytes());
    h.extend_from_slice(&(L1_AT * lay.cs).to_be_bytes()); // l1_table_offset
    h.extend_from_slice(&(lay.rt_at * lay.cs).to_be_bytes());
    h.extend_from_slice(&(lay.rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
    h.extend_from_slice(&(HEADER_LEN as u32).to_be_bytes());
    h.extend_from_slice(&ext);
    if let Some(name) = backing {
        h.extend_from_slice(name.as_bytes());
    }
    Ok(h)
}
