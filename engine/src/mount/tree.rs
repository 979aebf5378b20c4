//! The mounted tree: root → series → snapshot directories → disk and partition files.
//! Inode numbers are positions in one table (root is 1); snapshot directories are filled on
//! first use (their disks opened, their partition tables read), under one lock.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};
use tessera_format::{SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};
use crate::explore::image::Slice;
use crate::explore::partition::read_table;
use crate::explore::Image;
use crate::ops::disk_reader::{DiskView, ReadCache};
use crate::ops::files::disk_image::DiskImage;
use crate::repo::Repository;

/// Largest read answered at once: what fuser lets the kernel ask for (16 MiB); the
/// kernel's own limit is lower (1 MiB by default). A shorter answer would read as EOF.
const MAX_READ: u32 = 16 << 20;

/// `2026-12-07T081112Z-17196f3b65b2`: sortable, no characters a shell needs quoted.
pub fn snapshot_dir_name(id: SnapshotId, time_us: i64) -> String {
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(time_us).map_or_else(
        || "unknown-time".to_string(),
        |t| t.format("%Y-%m-%dT%H%M%SZ").to_string(),
    );
    format!("{time}-{}", &id.to_hex()[..12])
}

enum Kind {
    /// A directory and its entries (name → inode), `None` for a snapshot not yet opened.
    Dir(Option<BTreeMap<String, u64>>),
    /// A disk or partition.
    File(MountedFile),
}

/// A disk, or a partition of one.
#[derive(Clone)]
struct MountedFile {
    /// Its bytes.
    image: Arc<dyn Image>,
    /// The disk it lies on (for where its holes are).
    disk: Arc<DiskImage>,
    /// Where it starts on that disk.
    start: u64,
}

/// Which kind of run `lseek` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekFor {
    /// Stored bytes (`SEEK_DATA`).
    Data,
    /// A run of zeros that is not stored, or the end of the file (`SEEK_HOLE`).
    Hole,
}

struct Node {
    parent: u64,
    kind: Kind,
    mtime: SystemTime,
    /// The snapshot a not yet opened directory stands for.
    snapshot: Option<SnapshotId>,
}

/// The tree (see the module docs).
pub struct Tree {
    repo: Arc<Repository>,
    cache: Arc<ReadCache>,
    nodes: Mutex<Vec<Node>>,
}

fn time_of(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0).unsigned_abs())
}

impl Tree {
    /// The tree of `repo`'s catalogue now.
    pub fn new(repo: Arc<Repository>) -> Result<Self> {
        let catalogue: Vec<(SnapshotId, SnapshotHeader)> = repo.index().snapshots()?;
        let newest = catalogue.iter().map(|(_, h)| h.time_us).max().unwrap_or(0);
        let mut nodes = vec![
            // Inode 0 is unused: inodes are 1-based.
            Node {
                parent: 1,
                kind: Kind::Dir(Some(BTreeMap::new())),
                mtime: UNIX_EPOCH,
                snapshot: None,
            },
            Node {
                parent: 1,
                kind: Kind::Dir(Some(BTreeMap::new())),
                mtime: time_of(newest),
                snapshot: None,
            },
        ];
        let mut series_ino: BTreeMap<String, u64> = BTreeMap::new();
        for (id, h) in &catalogue {
            let parent = if let Some(&ino) = series_ino.get(&h.series) {
                ino
            } else {
                let ino = nodes.len() as u64;
                nodes.push(Node {
                    parent: 1,
                    kind: Kind::Dir(Some(BTreeMap::new())),
                    mtime: time_of(h.time_us),
                    snapshot: None,
                });
                series_ino.insert(h.series.clone(), ino);
                add_child(&mut nodes, 1, h.series.clone(), ino);
                ino
            };
            let ino = nodes.len() as u64;
            nodes.push(Node {
                parent,
                kind: Kind::Dir(None),
                mtime: time_of(h.time_us),
                snapshot: Some(*id),
            });
            add_child(&mut nodes, parent, snapshot_dir_name(*id, h.time_us), ino);
            if let Some(node) = nodes.get_mut(parent as usize) {
                node.mtime = node.mtime.max(time_of(h.time_us));
            }
        }
        Ok(Self {
            repo,
            cache: Arc::new(ReadCache::new(super::CACHE_BYTES)),
            nodes: Mutex::new(nodes),
        })
    }

    /// The parent of `ino` (the root's is itself).
    pub fn parent(&self, ino: u64) -> u64 {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.get(ino as usize).map_or(1, |n| n.parent)
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: u64) -> Option<FileAttr> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let node = nodes.get(ino as usize).filter(|_| ino >= 1)?;
        Some(match &node.kind {
            Kind::Dir(_) => super::attr(ino, FileType::Directory, 0, node.mtime),
            Kind::File(file) => {
                super::attr(ino, FileType::RegularFile, file.image.len(), node.mtime)
            }
        })
    }

    /// The entry `name` of the directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Option<FileAttr>> {
        self.open_snapshot(parent)?;
        let ino = {
            let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
            match (nodes.get(parent as usize), name.to_str()) {
                (
                    Some(Node {
                        kind: Kind::Dir(Some(entries)),
                        ..
                    }),
                    Some(name),
                ) => entries.get(name).copied(),
                _ => None,
            }
        };
        let Some(ino) = ino else {
            return Ok(None);
        };
        // A snapshot forgotten since the mount, never opened, is gone: its file is (one
        // size request, only for directories not opened yet).
        if let Some(id) = self.unopened_snapshot(ino) {
            if self
                .repo
                .backend()
                .size(&crate::storage::ObjectKey::snapshot(id))?
                .is_none()
            {
                return Ok(None);
            }
        }
        Ok(self.attr(ino))
    }

    /// The snapshot `ino` stands for, if it is a snapshot directory not yet opened.
    fn unopened_snapshot(&self, ino: u64) -> Option<SnapshotId> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        match nodes.get(ino as usize) {
            Some(Node {
                kind: Kind::Dir(None),
                snapshot: Some(id),
                ..
            }) => Some(*id),
            _ => None,
        }
    }

    /// At most `take` entries of the directory `ino` (inode, type, name) from the `skip`th,
    /// in name order, filling a snapshot's directory first; `None` when `ino` is not a
    /// directory. A listing asks batch after batch: each copies only what it returns.
    pub fn children(
        &self,
        ino: u64,
        skip: usize,
        take: usize,
    ) -> Result<Option<Vec<(u64, FileType, String)>>> {
        self.open_snapshot(ino)?;
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(Node {
            kind: Kind::Dir(Some(entries)),
            ..
        }) = nodes.get(ino as usize)
        else {
            return Ok(None);
        };
        Ok(Some(
            entries
                .iter()
                .skip(skip)
                .take(take)
                .map(|(name, &child)| {
                    let kind = match nodes.get(child as usize).map(|n| &n.kind) {
                        Some(Kind::File(_)) => FileType::RegularFile,
                        _ => FileType::Directory,
                    };
                    (child, kind, name.clone())
                })
                .collect(),
        ))
    }

    /// The file `ino`.
    fn file(&self, ino: u64) -> Result<MountedFile> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        match nodes.get(ino as usize).map(|n| &n.kind) {
            Some(Kind::File(file)) => Ok(file.clone()),
            _ => Err(Error::Usage(format!("inode {ino} is not a file"))),
        }
    }

    /// `lseek(SEEK_DATA)` or `lseek(SEEK_HOLE)` on the file `ino` from `offset`: where the
    /// next stored byte, or the next unstored zero run, starts. The end of the file counts as
    /// a hole; `None` (`ENXIO`) from at or past the end, or for data when none follows.
    pub fn seek(&self, ino: u64, offset: u64, want: SeekFor) -> Result<Option<u64>> {
        let file = self.file(ino)?;
        let len = file.image.len();
        if offset >= len {
            return Ok(None);
        }
        // One run: the reader stops at the first block of the other kind, so only the
        // manifest pages up to the answer are read.
        let runs = file.disk.extents(file.start + offset, len - offset, 1)?;
        let Some(run) = runs.first() else {
            return Ok(None);
        };
        if run.zero == (want == SeekFor::Hole) {
            return Ok(Some(offset));
        }
        let next = offset + run.len;
        Ok(match want {
            _ if next < len => Some(next),
            SeekFor::Hole => Some(len),
            SeekFor::Data => None,
        })
    }

    /// Reads up to `size` bytes of the file `ino` at `offset` (fewer at its end).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let image = self.file(ino)?.image;
        let len = image.len();
        let end = offset
            .saturating_add(u64::from(size.min(MAX_READ)))
            .min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
        image
            .read_at(offset, &mut buf)
            .map_err(|source| Error::Explore {
                place: format!("inode {ino}, bytes {offset}..{end}"),
                source,
            })?;
        Ok(buf)
    }

    /// Fills the directory of the snapshot `ino` stands for, if it is one not yet opened:
    /// a file per disk, and one per partition of each disk's table.
    fn open_snapshot(&self, ino: u64) -> Result<()> {
        let Some(id) = self.unopened_snapshot(ino) else {
            return Ok(());
        };
        // Loaded without the lock: other directories stay usable meanwhile. A snapshot
        // forgotten since the mount, whose directory was never opened, is gone (its file
        // is deleted at once; only its data stays under the reader lease).
        let snapshot = match self.repo.load_snapshot(id) {
            Ok(s) => s,
            Err(e) => {
                let gone = matches!(
                    self.repo
                        .backend()
                        .size(&crate::storage::ObjectKey::snapshot(id)),
                    Ok(None)
                );
                return Err(if gone {
                    Error::SnapshotNotFound { query: id.to_hex() }
                } else {
                    e
                });
            }
        };
        // Disks first, then partitions: a partition file never hides a disk whose name
        // happens to look like one (`d.part1` beside `d`'s partition 1).
        let mut files: Vec<(String, MountedFile)> = Vec::new();
        let mut partitions: Vec<(String, MountedFile)> = Vec::new();
        for disk in &snapshot.header.disks {
            let image = Arc::new(DiskImage::uncounted(
                Arc::clone(&self.repo),
                DiskView::of(&snapshot, &disk.name)?,
                Arc::clone(&self.cache),
            )?);
            // A disk whose first blocks are damaged still mounts as a whole disk.
            if let Ok(Some(table)) = read_table(image.as_ref()) {
                for p in &table.partitions {
                    let whole: Arc<dyn Image> = image.clone();
                    if let Ok(slice) = Slice::new(whole, p.start, p.len) {
                        let name = format!("{}.part{}.raw", disk.name, p.number);
                        partitions.push((
                            name,
                            MountedFile {
                                image: Arc::new(slice),
                                disk: Arc::clone(&image),
                                start: p.start,
                            },
                        ));
                    }
                }
            }
            files.push((
                format!("{}.raw", disk.name),
                MountedFile {
                    image: image.clone(),
                    disk: image,
                    start: 0,
                },
            ));
        }
        files.extend(partitions);
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let mtime = nodes.get(ino as usize).map_or(UNIX_EPOCH, |n| n.mtime);
        if !matches!(
            nodes.get(ino as usize).map(|n| &n.kind),
            Some(Kind::Dir(None))
        ) {
            return Ok(()); // Another request filled it meanwhile.
        }
        let mut entries = BTreeMap::new();
        for (name, file) in files {
            if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(name) {
                slot.insert(nodes.len() as u64);
                nodes.push(Node {
                    parent: ino,
                    kind: Kind::File(file),
                    mtime,
                    snapshot: None,
                });
            }
        }
        if let Some(node) = nodes.get_mut(ino as usize) {
            node.kind = Kind::Dir(Some(entries));
        }
        Ok(())
    }
}

fn add_child(nodes: &mut [Node], parent: u64, name: String, child: u64) {
    if let Some(Node {
        kind: Kind::Dir(Some(entries)),
        ..
    }) = nodes.get_mut(parent as usize)
    {
        entries.insert(name, child);
    }
}
