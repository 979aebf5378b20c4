//! Files and folders inside a snapshot's disks, without restoring the disk (SPEC.md §24):
//! `files parts|ls|stat|cat|get|find`.
//!
//! A file is named `SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH` ([`FileRef`]). The disk is read through the
//! repository lazily, block by block ([`disk_image::DiskImage`]); its partition table and
//! filesystem are read by [`crate::explore`]. Nothing is written to the repository: these
//! are readers, holding a reader lease like `restore`, so a concurrent `compact` keeps the
//! packs they read.

pub mod disk_image;
pub mod find;
pub mod get;
pub mod query;
pub mod tar_stream;

use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use tessera_format::SnapshotId;

pub use disk_image::DiskImage;

use crate::error::{Error, Result};
use crate::explore::detect::VolumeKind;
use crate::explore::lvm::{read_volume_group, LogicalVolume};
use crate::explore::partition::{read_table, Partition, Table};
use crate::explore::{detect, Filesystem, FsError, Image, Slice, Stat};
use crate::ops::disk_reader::{DiskView, ReadCache};
use crate::repo::Repository;
use crate::snapshot_ref::SnapshotRef;

/// Chunk cache of one `files` command on one snapshot (decoded chunks and pages).
pub const CACHE_BYTES: u64 = 64 << 20;

/// `SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH`: a path inside one volume of one snapshot's disk.
/// The logical volume is told apart by its `/` (disk names cannot hold one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The snapshot.
    pub snapshot: SnapshotRef,
    /// Where in it.
    pub volume: VolumeRef,
    /// The path inside the filesystem (absolute).
    pub path: String,
}

/// Which volume of a snapshot: a disk (the only one when not named) and a partition (none
/// needed when the disk has no table, or a table with one partition).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeRef {
    /// The disk's name.
    pub disk: Option<String>,
    /// The partition: number, GPT name or GPT unique GUID.
    pub part: Option<String>,
    /// The LVM2 logical volume (`VG/LV`) when the volume is a physical volume.
    pub lv: Option<String>,
}

impl FromStr for FileRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some(colon) = s.find(":/") else {
            return Err(Error::Usage(format!(
                "{s:?} names no path: write SNAPSHOT[:DISK[:PART]]:/PATH, e.g. latest@vm1:/etc/hostname"
            )));
        };
        let (head, path) = (&s[..colon], &s[colon + 1..]);
        let mut parts: Vec<&str> = head.split(':').collect();
        let snapshot = parts.remove(0).parse()?;
        let lv = match parts.last() {
            Some(last) if last.contains('/') => parts.pop().map(str::to_string),
            _ => None,
        };
        let mut parts = parts.into_iter();
        let disk = parts.next().map(str::to_string);
        let part = parts.next().map(str::to_string);
        let empty = |p: &Option<String>| p.as_deref().is_some_and(str::is_empty);
        if parts.next().is_some() || empty(&disk) || empty(&part) {
            return Err(Error::Usage(format!(
                "{s:?}: write SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH (at most a disk, a partition and a logical volume, none empty)"
            )));
        }
        Ok(Self {
            snapshot,
            volume: VolumeRef { disk, part, lv },
            path: path.to_string(),
        })
    }
}

/// An opened volume: its filesystem and where it came from.
pub struct Volume {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The disk's name.
    pub disk: String,
    /// The partition, if the disk has a table.
    pub partition: Option<Partition>,
    /// The logical volume, when the volume is one.
    pub lv: Option<LogicalVolume>,
    /// The disk, for block accounting and content keys.
    pub image: Arc<DiskImage>,
    /// The volume's bytes: the partition, or the whole disk.
    pub bytes: Arc<dyn Image>,
    /// The filesystem.
    pub fs: Box<dyn Filesystem>,
}

impl Volume {
    /// Where it is, for messages: `SNAPSHOT:DISK[:PART]`.
    pub fn place(&self) -> String {
        let mut s = format!("{}:{}", &self.snapshot.to_hex()[..16], self.disk);
        if let Some(p) = &self.partition {
            s = format!("{s}:{}", p.number);
        }
        if let Some(lv) = &self.lv {
            s = format!("{s}:{}", lv.name);
        }
        s
    }

    /// Turns a filesystem error into a repository error naming this volume and `path`.
    pub fn error(&self, path: &str, e: FsError) -> Error {
        explore_error(format!("{} {path}", self.place()), e)
    }

    /// Where bytes `start..start + len` of the volume lie on its disk, in order.
    pub fn disk_ranges(&self, start: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        let base = self.partition.as_ref().map_or(0, |p| p.start);
        let Some(lv) = &self.lv else {
            return std::iter::once(base + start..base + start + len).collect();
        };
        let end = start + len;
        lv.segments()
            .iter()
            .filter_map(|(lv_at, pv_at, seg_len)| {
                let from = start.max(*lv_at);
                let to = end.min(lv_at + seg_len);
                (from < to).then(|| base + pv_at + (from - lv_at)..base + pv_at + (to - lv_at))
            })
            .collect()
    }
}

/// The path of `rel` (relative, as a walk gives it) below `root` (absolute), for messages.
pub(crate) fn below(root: &[u8], rel: &[u8]) -> String {
    let mut path = root.to_vec();
    if !rel.is_empty() {
        if !path.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(rel);
    }
    String::from_utf8_lossy(&path).into_owned()
}

/// Wraps a filesystem error with where it happened; a failed read of the repository keeps
/// its own kind (damage, I/O).
pub fn explore_error(place: String, e: FsError) -> Error {
    match e {
        FsError::Image(inner) => *inner,
        source => Error::Explore { place, source },
    }
}

/// Opens volume `which` of snapshot `id`, reading through `cache`.
pub fn open_volume(
    repo: &Arc<Repository>,
    id: SnapshotId,
    which: &VolumeRef,
    cache: &Arc<ReadCache>,
) -> Result<Volume> {
    let snapshot = repo.load_snapshot(id)?;
    let disk = DiskView::named_or_only(&snapshot, which.disk.as_deref())?;
    let name = disk.entry.name.clone();
    let image = Arc::new(DiskImage::new(repo.clone(), disk, cache.clone())?);
    let place = format!("{}:{name}", &id.to_hex()[..16]);
    let table = read_table(image.as_ref()).map_err(|e| explore_error(place.clone(), e))?;
    let partition = pick_partition(table.as_ref(), which.part.as_deref(), &place)?;
    let volume: Arc<dyn Image> = match &partition {
        Some(p) => Arc::new(
            Slice::new(image.clone(), p.start, p.len)
                .map_err(|e| explore_error(place.clone(), e))?,
        ),
        None => image.clone(),
    };
    let at = match &partition {
        Some(p) => format!("{place}:{}", p.number),
        None => place,
    };
    let (volume, lv, at) = open_logical_volume(volume, which.lv.as_deref(), at)?;
    let fs = detect::open(volume.clone()).map_err(|e| explore_error(at, e))?;
    Ok(Volume {
        snapshot: id,
        disk: name,
        partition,
        lv,
        image,
        bytes: volume,
        fs,
    })
}

/// The logical volume `lv` names on the PV `volume`; `volume` itself when none is named and
/// it is not a PV (a PV without an LV named is a usage error listing its LVs).
fn open_logical_volume(
    volume: Arc<dyn Image>,
    lv: Option<&str>,
    at: String,
) -> Result<(Arc<dyn Image>, Option<LogicalVolume>, String)> {
    let is_pv = detect::detect(volume.as_ref()).map_err(|e| explore_error(at.clone(), e))?
        == VolumeKind::Lvm2;
    match (lv, is_pv) {
        (None, false) => Ok((volume, None, at)),
        (Some(name), false) => Err(Error::Usage(format!(
            "{at} is not an LVM2 physical volume, so it has no logical volume {name:?}"
        ))),
        (lv, true) => {
            let vg =
                read_volume_group(volume.as_ref()).map_err(|e| explore_error(at.clone(), e))?;
            let Some(name) = lv else {
                return Err(Error::Usage(format!(
                    "{at} is an LVM2 physical volume of volume group {}: name a logical volume as SNAPSHOT:DISK[:PART]:VG/LV:/PATH ({})",
                    vg.name,
                    vg.names()
                )));
            };
            let (image, described) = vg.open(volume, name).map_err(|e| match e {
                FsError::NotFound { .. } => Error::Usage(format!(
                    "{at} has no logical volume {name:?}; volume group {} has: {}",
                    vg.name,
                    vg.names()
                )),
                other => explore_error(format!("{at}:{name}"), other),
            })?;
            Ok((image, Some(described), format!("{at}:{name}")))
        }
    }
}

/// The partition `query` names, or the only one, or none for a disk without a table.
fn pick_partition(
    table: Option<&Table>,
    query: Option<&str>,
    place: &str,
) -> Result<Option<Partition>> {
    let listing = |t: &Table| {
        t.partitions
            .iter()
            .map(|p| {
                if p.name.is_empty() {
                    p.number.to_string()
                } else {
                    format!("{} ({})", p.number, p.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (table, query) {
        (None, None) => Ok(None),
        (None, Some(q)) => Err(Error::Usage(format!(
            "{place} has no partition table, so no partition {q:?}: leave the partition out"
        ))),
        (Some(t), Some(q)) => t.find(q).cloned().map(Some).ok_or_else(|| {
            Error::Usage(format!(
                "{place} has no partition {q:?}; its partitions: {}",
                listing(t)
            ))
        }),
        (Some(t), None) => match t.partitions.as_slice() {
            [only] => Ok(Some(only.clone())),
            _ => Err(Error::Usage(format!(
                "{place} has several partitions: name one as SNAPSHOT:DISK:PART:/PATH ({})",
                listing(t)
            ))),
        },
    }
}

/// What `files parts` shows about one partition (or the whole disk).
#[derive(Debug, Serialize)]
pub struct PartInfo {
    /// The partition, or `None` for a disk without a table.
    pub partition: Option<Partition>,
    /// What it holds.
    pub holds: detect::VolumeKind,
    /// When it is an LVM2 physical volume: its volume group's logical volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logical_volumes: Vec<LvInfo>,
    /// When it is an LVM2 physical volume whose group cannot be read: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm_problem: Option<String>,
}

/// A logical volume in `files parts`.
#[derive(Debug, Serialize)]
pub struct LvInfo {
    /// Its name, size and whether it can be read.
    #[serde(flatten)]
    pub lv: LogicalVolume,
    /// What it holds (when it can be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<detect::VolumeKind>,
}

/// What a volume (a partition, or a disk without a table) holds, with its LVs if it is a PV.
fn part_info(
    partition: Option<Partition>,
    volume: &Arc<dyn Image>,
    place: &str,
) -> Result<PartInfo> {
    let holds = detect::detect(volume.as_ref()).map_err(|e| explore_error(place.to_string(), e))?;
    let mut logical_volumes = Vec::new();
    let mut lvm_problem = None;
    if holds == VolumeKind::Lvm2 {
        // A PV whose group cannot be read (in no VG, metadata elsewhere, damaged) is still
        // listed, with why; a damaged repository chunk is an error like anywhere else.
        let vg = match read_volume_group(volume.as_ref()) {
            Ok(vg) => Some(vg),
            Err(FsError::Image(e)) => return Err(*e),
            Err(e) => {
                lvm_problem = Some(e.to_string());
                None
            }
        };
        for (vg, lv) in vg
            .iter()
            .flat_map(|vg| vg.logical_volumes.iter().map(move |lv| (vg, lv)))
        {
            let holds = vg
                .open(volume.clone(), &lv.name)
                .ok()
                .and_then(|(image, _)| detect::detect(image.as_ref()).ok());
            logical_volumes.push(LvInfo {
                lv: lv.clone(),
                holds,
            });
        }
    }
    Ok(PartInfo {
        partition,
        holds,
        logical_volumes,
        lvm_problem,
    })
}

/// `files parts`: a disk's partition table and what each partition holds.
#[derive(Debug, Serialize)]
pub struct PartsReport {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// The disk.
    pub disk: String,
    /// Its table kind, if it has one.
    pub table: Option<crate::explore::partition::TableKind>,
    /// Its partitions (one entry without a partition for a disk without a table).
    pub volumes: Vec<PartInfo>,
}

/// Lists the partitions of one disk and what each holds.
pub fn parts(
    repo: &Arc<Repository>,
    snapshot: &SnapshotRef,
    disk: Option<&str>,
) -> Result<PartsReport> {
    let (id, _) = repo.resolve(snapshot)?;
    let loaded = repo.load_snapshot(id)?;
    let view = DiskView::named_or_only(&loaded, disk)?;
    let name = view.entry.name.clone();
    let image: Arc<dyn Image> = Arc::new(DiskImage::new(
        repo.clone(),
        view,
        Arc::new(ReadCache::new(CACHE_BYTES)),
    )?);
    let place = format!("{}:{name}", &id.to_hex()[..16]);
    let table = read_table(image.as_ref()).map_err(|e| explore_error(place.clone(), e))?;
    let mut volumes = Vec::new();
    match &table {
        None => volumes.push(part_info(None, &image, &place)?),
        Some(t) => {
            for p in &t.partitions {
                let slice = Slice::new(image.clone(), p.start, p.len)
                    .map_err(|e| explore_error(place.clone(), e))?;
                volumes.push(part_info(
                    Some(p.clone()),
                    &(Arc::new(slice) as Arc<dyn Image>),
                    &format!("{place}:{}", p.number),
                )?);
            }
        }
    }
    Ok(PartsReport {
        snapshot: id,
        disk: name,
        table: table.map(|t| t.kind),
        volumes,
    })
}

/// What `files ls` and `files stat` show about one name.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// The name (lossily UTF-8 for display; `name_bytes` holds the exact bytes when they
    /// are not UTF-8).
    pub name: String,
    /// The exact name, hex-encoded, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// What the filesystem says.
    #[serde(flatten)]
    pub stat: Stat,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl EntryInfo {
    pub(crate) fn new(
        name: &[u8],
        stat: Stat,
        fs: &dyn Filesystem,
    ) -> std::result::Result<Self, FsError> {
        let target = if stat.kind == crate::explore::FileKind::Symlink {
            Some(String::from_utf8_lossy(&fs.read_link(stat.ino)?).into_owned())
        } else {
            None
        };
        Ok(Self {
            name: String::from_utf8_lossy(name).into_owned(),
            name_hex: std::str::from_utf8(name)
                .is_err()
                .then(|| hex::encode(name)),
            stat,
            target,
        })
    }
}
