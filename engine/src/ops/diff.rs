//! Differences between two snapshots of a disk, from their manifests alone.
//!
//! Pages with equal digests hold equal digest lists, so they are skipped without being read:
//! the cost follows the changed regions, not the disk size. The result lists the blocks that
//! must be written on top of the older disk, once it is resized to the newer size, to turn it
//! into the newer one (blocks past the new size vanish with the resize; zero blocks past the
//! old size appear with it).

use tessera_format::{ChunkDigest, SnapshotId};

use crate::error::{Error, Result};
use crate::ops::restore::hex_snapshot;
use crate::repo::Repository;

/// One disk of one snapshot (defined with the disk reader; named here too, where diffs have
/// always taken it from).
pub use crate::ops::disk_reader::DiskView;

/// What changed from one disk to another.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ManifestDiff {
    /// Block size of both.
    pub block_size: u32,
    /// Size of the older disk.
    pub size_from: u64,
    /// Size of the newer disk.
    pub size_to: u64,
    /// Blocks to write (index, digest in the newer disk), ascending.
    #[serde(skip)]
    pub changed: Vec<(u64, ChunkDigest)>,
    /// Manifest pages compared entry by entry.
    pub pages_read: u64,
    /// Manifest pages skipped because their digests were equal.
    pub pages_skipped: u64,
}

impl ManifestDiff {
    /// Changed byte ranges `(offset, length)`, consecutive blocks merged, clipped to the new size.
    pub fn extents(&self) -> Vec<(u64, u64)> {
        let bs = u64::from(self.block_size);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (block, _) in &self.changed {
            let start = block * bs;
            let len = bs.min(self.size_to - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        out
    }

    /// Bytes the changed blocks cover.
    pub fn changed_bytes(&self) -> u64 {
        self.extents().iter().map(|(_, l)| l).sum()
    }
}

/// Diffs `from` → `to`. Both must use the same block size and page geometry.
pub fn diff_disks(repo: &Repository, from: DiskView<'_>, to: DiskView<'_>) -> Result<ManifestDiff> {
    if from.entry.block_size != to.entry.block_size
        || from.entry.page_entries != to.entry.page_entries
    {
        return Err(Error::InvalidArgument(format!(
            "the disks use different block sizes ({} and {} bytes); they share no blocks to compare",
            from.entry.block_size, to.entry.block_size
        )));
    }
    let pe = u64::from(to.entry.page_entries);
    let mut diff = ManifestDiff {
        block_size: to.entry.block_size,
        size_from: from.entry.size,
        size_to: to.entry.size,
        ..ManifestDiff::default()
    };
    for (page_no, to_page) in to.root.iter().enumerate() {
        let page_no = page_no as u64;
        let from_page = from.root.get(page_no as usize);
        if from_page == Some(to_page) {
            diff.pages_skipped += 1;
            continue;
        }
        diff.pages_read += 1;
        let to_digests = repo.read_page(*to_page, to.blocks(), to.entry.page_entries, page_no)?;
        let from_digests = match from_page {
            Some(p) => repo.read_page(*p, from.blocks(), from.entry.page_entries, page_no)?,
            None => Vec::new(),
        };
        for (i, d) in to_digests.iter().enumerate() {
            let before = from_digests.get(i);
            // A block past the old end reads as zeros once the target is resized.
            let unchanged = before == Some(d) || (before.is_none() && d.is_zero());
            if !unchanged {
                diff.changed.push((page_no * pe + i as u64, *d));
            }
        }
    }
    Ok(diff)
}

/// A changed byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChangedExtent {
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// What changed in one disk between two snapshots.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskDiff {
    /// The disk's name.
    pub name: String,
    /// The manifest diff.
    #[serde(flatten)]
    pub diff: ManifestDiff,
    /// Blocks changed.
    pub changed_blocks: u64,
    /// Bytes the changed blocks cover.
    pub changed_bytes: u64,
    /// The changed ranges ([`ManifestDiff::extents`]).
    pub extents: Vec<ChangedExtent>,
}

/// What changed between two snapshots, disk by disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotDiff {
    /// The older snapshot.
    #[serde(serialize_with = "hex_snapshot")]
    pub from: SnapshotId,
    /// The newer snapshot.
    #[serde(serialize_with = "hex_snapshot")]
    pub to: SnapshotId,
    /// The disks compared.
    pub disks: Vec<DiskDiff>,
}

/// Diffs the snapshots `from` → `to` name (see [`Repository::resolve_snapshot`]): disk `disk`,
/// or every disk of `to` that `from` has too (by name).
pub fn diff_snapshots(
    repo: &Repository,
    from: &str,
    to: &str,
    disk: Option<&str>,
) -> Result<SnapshotDiff> {
    let (from_id, _) = repo.resolve_snapshot(from)?;
    let (to_id, _) = repo.resolve_snapshot(to)?;
    let a = repo.load_snapshot(from_id)?;
    let b = repo.load_snapshot(to_id)?;
    let names: Vec<&str> = match disk {
        Some(d) => vec![d],
        None => b
            .header
            .disks
            .iter()
            .filter(|d| a.header.disks.iter().any(|x| x.name == d.name))
            .map(|d| d.name.as_str())
            .collect(),
    };
    let disks = names
        .into_iter()
        .map(|name| {
            let diff = diff_disks(repo, DiskView::of(&a, name)?, DiskView::of(&b, name)?)?;
            Ok(DiskDiff {
                name: name.to_string(),
                changed_blocks: diff.changed.len() as u64,
                changed_bytes: diff.changed_bytes(),
                extents: diff
                    .extents()
                    .into_iter()
                    .map(|(offset, length)| ChangedExtent { offset, length })
                    .collect(),
                diff,
            })
        })
        .collect::<Result<_>>()?;
    Ok(SnapshotDiff {
        from: from_id,
        to: to_id,
        disks,
    })
}
