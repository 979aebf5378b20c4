//! Mapping damaged objects to what they hurt: for each bad or missing chunk or page, every
//! snapshot, disk and byte range that references it. An operator learns exactly which
//! backups and which disk offsets are affected, not just that "something" is wrong.
//!
//! Cost: every page of every snapshot is read once (pages shared between snapshots are read
//! again per snapshot): proportional to the metadata, run only when damage was found.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tessera_format::manifest::block_count;
use tessera_format::{ObjectKind, PackId, Snapshot, SnapshotId};

use crate::damage_marks::DamageMark;
use crate::repo::Repository;
use crate::serde_ids;

/// A byte range of one snapshot's disk that cannot be read intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedRange {
    /// The snapshot.
    #[serde(serialize_with = "serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// The disk.
    pub disk: String,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A damaged or missing object and everything that references it.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedObject {
    /// Chunk or page.
    #[serde(serialize_with = "serde_ids::kind")]
    pub kind: ObjectKind,
    /// Its digest.
    #[serde(serialize_with = "serde_ids::hex_digest")]
    pub digest: [u8; 32],
    /// Where the index places it (`None` when it is not in the index at all).
    #[serde(serialize_with = "serde_ids::hex_opt")]
    pub pack: Option<PackId>,
    /// Offset of its record in that pack.
    pub pack_offset: Option<u64>,
    /// What is wrong.
    pub reason: String,
    /// Every snapshot range that needs it.
    pub ranges: Vec<DamagedRange>,
}

/// A pack whose footer or trailer is damaged, or disagrees with the records or the index
/// (SPEC §11a). Its records may all be intact: the damage hurts no snapshot range, but the
/// pack can no longer be adopted or re-indexed from its footer, so repair rewrites it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedPack {
    /// The pack.
    #[serde(serialize_with = "serde_ids::hex")]
    pub pack: PackId,
    /// What is wrong.
    pub reason: String,
}

/// Key of a bad object.
pub type BadKey = (ObjectKind, [u8; 32]);

impl DamagedObject {
    /// Its key.
    pub fn key(&self) -> BadKey {
        (self.kind, self.digest)
    }
}

/// Fills in the `ranges` of each bad object from the snapshots' manifests.
pub fn map_damage(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    bad: Vec<(BadKey, DamagedObject)>,
) -> Vec<DamagedObject> {
    let mut index: HashMap<BadKey, usize> = HashMap::new();
    let mut objects: Vec<DamagedObject> = Vec::with_capacity(bad.len());
    for (key, obj) in bad {
        index.insert(key, objects.len());
        objects.push(obj);
    }
    for (id, snapshot) in snapshots {
        for (disk, root) in snapshot.header.disks.iter().zip(&snapshot.roots) {
            let bs = u64::from(disk.block_size);
            let blocks = block_count(disk.size, disk.block_size);
            let pe = u64::from(disk.page_entries);
            let mut push = |slot: usize, offset: u64, length: u64| {
                let ranges = &mut objects[slot].ranges;
                match ranges.last_mut() {
                    Some(r)
                        if r.snapshot == *id
                            && r.disk == disk.name
                            && r.offset + r.length == offset =>
                    {
                        r.length += length;
                    }
                    _ => ranges.push(DamagedRange {
                        snapshot: *id,
                        disk: disk.name.clone(),
                        offset,
                        length,
                    }),
                }
            };
            for (page_no, page) in root.iter().enumerate() {
                let first = page_no as u64 * pe;
                let page_start = first * bs;
                let page_end = ((first + pe) * bs).min(disk.size);
                if let Some(&slot) = index.get(&(ObjectKind::Page, page.0)) {
                    push(slot, page_start, page_end - page_start);
                    continue;
                }
                let Ok(digests) = repo.read_page(*page, blocks, disk.page_entries, page_no as u64)
                else {
                    continue;
                };
                for (i, d) in digests.iter().enumerate() {
                    if let Some(&slot) = index.get(&(ObjectKind::Chunk, d.0)) {
                        let offset = (first + i as u64) * bs;
                        push(slot, offset, bs.min(disk.size - offset));
                    }
                }
            }
        }
    }
    objects
}

/// Per snapshot: how many byte ranges of its disks are damaged and how many bytes they hold,
/// from the objects' ranges (ranges of one disk that overlap or touch are merged, so a
/// block needed twice, or a chunk inside a damaged page, is counted once). Snapshots whose
/// file is damaged get a mark too.
pub fn damage_marks(
    damaged: &[DamagedObject],
    damaged_files: &[SnapshotId],
    at_us: i64,
) -> BTreeMap<SnapshotId, DamageMark> {
    let mut per: BTreeMap<SnapshotId, Vec<(&str, u64, u64)>> = BTreeMap::new();
    for r in damaged.iter().flat_map(|d| &d.ranges) {
        per.entry(r.snapshot).or_default().push((
            r.disk.as_str(),
            r.offset,
            r.offset.saturating_add(r.length),
        ));
    }
    let mut marks = BTreeMap::new();
    for (id, mut ranges) in per {
        ranges.sort_unstable();
        let mut mark = DamageMark {
            marked_at_us: at_us,
            ..DamageMark::default()
        };
        let mut open: Option<(&str, u64, u64)> = None;
        for (disk, start, end) in ranges {
            match &mut open {
                Some((d, _, e)) if *d == disk && start <= *e => *e = (*e).max(end),
                _ => {
                    if let Some((_, s, e)) = open.replace((disk, start, end)) {
                        mark.ranges += 1;
                        mark.bytes += e - s;
                    }
                }
            }
        }
        if let Some((_, s, e)) = open {
            mark.ranges += 1;
            mark.bytes += e - s;
        }
        marks.insert(id, mark);
    }
    for id in damaged_files {
        marks
            .entry(*id)
            .or_insert(DamageMark {
                marked_at_us: at_us,
                ..DamageMark::default()
            })
            .file_damaged = true;
    }
    marks
}
