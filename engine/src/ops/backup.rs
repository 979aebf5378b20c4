//! Full backups of raw images and block devices.
//!
//! Pipeline per disk: a reader thread reads batches of blocks (holes of sparse files are not
//! read); rayon hashes the blocks of a batch in parallel; digests equal to the reference
//! manifest's (the series' previous snapshot, same position) or already in the index are
//! known; the rest are compressed in parallel and appended to packs. Digests are cut into
//! manifest pages as they come, so memory is bounded by a few batches plus the root lists.
//!
//! Commit order (see SPEC.md "Crash safety"): all packs sealed and indexed → snapshot file
//! durable → one index batch with the catalog entry and every reference count change. A
//! crash anywhere before that batch leaves the previous state (the next writer removes the
//! unpublished snapshot file), and a rerun finds the sealed packs' objects in the index.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use tessera_format::config::validate_block_size;
use tessera_format::manifest::block_count;
use tessera_format::snapshot::{root_digest, validate_name};
use tessera_format::{
    is_all_zero, ChunkDigest, DiskEntry, DiskStats, ManifestPage, ObjectKind, PageDigest, Snapshot,
    SnapshotHeader, SnapshotId,
};

use crate::error::{Error, Result};
use crate::ops::publish::publish_snapshot;
use crate::progress::Progress;
use crate::refcount::RefDeltas;
use crate::repo::Repository;
use crate::sources::{open_source, BlockSource, SourceFormat, SourceSpec};
use crate::store::encode::encode_object;
use crate::store::session::WriteSession;

/// Bytes read and hashed by one worker at a time (rounded to whole blocks).
const BATCH_BYTES: u64 = 8 << 20;

/// One disk to back up.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Disk name within the snapshot.
    pub name: String,
    /// Image file, block device, or NBD URL.
    pub path: PathBuf,
    /// A changed-block list describing the image's delta (raw images and devices only).
    pub changes: Option<PathBuf>,
}

impl DiskSpec {
    /// A disk read from `path`, with no changed-block list.
    pub fn new(name: &str, path: &std::path::Path) -> Self {
        Self {
            name: name.into(),
            path: path.to_path_buf(),
            changes: None,
        }
    }
}

/// Which snapshot a delta applies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceChoice {
    /// The series' newest snapshot, used as a delta base only if its state matches
    /// (otherwise the disk is read in full).
    Auto,
    /// The series' newest snapshot; a delta that does not belong to it is an error.
    Latest,
    /// This snapshot (id prefix); a delta that does not belong to it is an error.
    Snapshot(String),
}

/// How a backup uses delta information.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// The reference snapshot.
    pub reference: ReferenceChoice,
    /// Read in full instead of failing when a delta does not belong to the reference.
    pub fallback_full: bool,
    /// Force a key backup.
    pub force_key: bool,
    /// Every Nth backup of a series is a key backup; 0 disables the interval.
    pub key_interval: u32,
    /// How to interpret the disk paths.
    pub format: SourceFormat,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        Self {
            reference: ReferenceChoice::Auto,
            fallback_full: false,
            force_key: false,
            key_interval: 20,
            format: SourceFormat::Auto,
        }
    }
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Series name.
    pub series: String,
    /// The disks; all go into one snapshot.
    pub disks: Vec<DiskSpec>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Block size; default: the series' previous block size for the disk, else the repository default.
    pub block_size: Option<u32>,
    /// Delta handling.
    pub delta: DeltaOptions,
}

impl BackupRequest {
    /// A backup of one disk, with no tags and the default block size.
    pub fn one_disk(series: &str, disk: &str, path: &std::path::Path) -> Self {
        Self {
            series: series.into(),
            disks: vec![DiskSpec::new(disk, path)],
            tags: Vec::new(),
            block_size: None,
            delta: DeltaOptions::default(),
        }
    }
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// Its id.
    pub id: SnapshotId,
    /// Its header.
    pub header: SnapshotHeader,
    /// Packs written.
    pub packs_written: u64,
}

fn validate(req: &BackupRequest) -> Result<()> {
    let invalid = |e: tessera_format::DecodeError| Error::InvalidArgument(e.to_string());
    validate_name("series name", &req.series).map_err(invalid)?;
    if req.disks.is_empty() {
        return Err(Error::InvalidArgument(
            "name at least one disk as NAME=PATH".into(),
        ));
    }
    let mut names = HashSet::new();
    for d in &req.disks {
        validate_name("disk name", &d.name).map_err(invalid)?;
        if !names.insert(&d.name) {
            return Err(Error::InvalidArgument(format!(
                "disk name {:?} is given twice",
                d.name
            )));
        }
    }
    for (k, _) in &req.tags {
        validate_name("tag key", k).map_err(invalid)?;
    }
    if let Some(bs) = req.block_size {
        validate_block_size(u64::from(bs)).map_err(invalid)?;
    }
    Ok(())
}

/// The previous snapshot's manifest of the same disk, read page by page in step with the
/// backup. Used only to skip index lookups; any problem reading it just disables it.
struct ReferenceManifest<'r> {
    repo: &'r Repository,
    roots: Vec<PageDigest>,
    blocks: u64,
    page_entries: u32,
    loaded: Option<(u64, Vec<ChunkDigest>)>,
}

impl ReferenceManifest<'_> {
    fn digest_at(&mut self, block: u64) -> Option<ChunkDigest> {
        if block >= self.blocks {
            return None;
        }
        let page_no = block / u64::from(self.page_entries);
        if self.loaded.as_ref().is_none_or(|(n, _)| *n != page_no) {
            let digest = *self.roots.get(page_no as usize)?;
            let digests = self
                .repo
                .read_page(digest, self.blocks, self.page_entries, page_no)
                .ok()?;
            self.loaded = Some((page_no, digests));
        }
        let (_, digests) = self.loaded.as_ref()?;
        digests
            .get((block % u64::from(self.page_entries)) as usize)
            .copied()
    }
}

struct Batch {
    first_block: u64,
    buf: Vec<u8>,
    read: u64,
    digests: Vec<ChunkDigest>,
}

/// Runs a full backup and publishes it as one snapshot.
pub fn backup(
    repo: &Repository,
    req: &BackupRequest,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    validate(req)?;
    let started = Instant::now();
    let time_us = crate::time::now_us();
    // Open every source before writing anything, so a bad path costs nothing.
    let sources: Vec<Box<dyn BlockSource>> = req
        .disks
        .iter()
        .map(|d| {
            open_source(&SourceSpec {
                location: d.path.to_string_lossy().into_owned(),
                format: req.delta.format,
                changes: d.changes.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let previous = repo
        .index()
        .snapshots()?
        .into_iter()
        .rfind(|(_, h)| h.series == req.series);
    let previous = match previous {
        Some((id, _)) => Some(repo.load_snapshot(id)?),
        None => None,
    };

    let mut session = WriteSession::new(repo.index(), repo.backend());
    let mut refs = RefDeltas::default();
    let mut disks = Vec::new();
    let mut roots = Vec::new();
    for (spec, source) in req.disks.iter().zip(&sources) {
        let prev_disk = previous.as_ref().and_then(|s| {
            s.header
                .disks
                .iter()
                .position(|d| d.name == spec.name)
                .map(|i| (&s.header.disks[i], s.roots[i].clone()))
        });
        let block_size = match (req.block_size, &prev_disk) {
            (Some(bs), Some((d, _))) if bs != d.block_size => {
                return Err(Error::InvalidArgument(format!(
                    "disk {:?} of series {:?} was backed up with {} KiB blocks; a different block size would share no data with it. \
                     Omit --block-size, or start a new series",
                    spec.name, req.series, d.block_size / 1024
                )))
            }
            (Some(bs), _) => bs,
            (None, Some((d, _))) => d.block_size,
            (None, None) => repo.config().default_block_size,
        };
        let reference = prev_disk
            .filter(|(d, _)| d.block_size == block_size)
            .map(|(d, roots)| ReferenceManifest {
                repo,
                roots,
                blocks: block_count(d.size, d.block_size),
                page_entries: d.page_entries,
                loaded: None,
            });
        progress.start(&format!("backup {}", spec.name), source.size());
        let mut disk = DiskBackup {
            repo,
            session: &mut session,
            refs: &mut refs,
            block_size,
            roots: Vec::new(),
            page: Vec::new(),
            stats: DiskStats::default(),
        };
        disk.run(source.as_ref(), reference, progress)?;
        progress.finish();
        let DiskBackup {
            roots: root, stats, ..
        } = disk;
        disks.push(DiskEntry {
            name: spec.name.clone(),
            size: source.size(),
            block_size,
            page_entries: repo.config().page_entries,
            page_count: root.len() as u32,
            root_digest: root_digest(&root),
            identity: source.identity(),
            stats,
        });
        roots.push(root);
    }
    let session_stats = session.finish()?;
    let header = SnapshotHeader {
        series: req.series.clone(),
        time_us,
        duration_ms: started.elapsed().as_millis() as u64,
        tags: req.tags.clone(),
        disks,
    };
    let snapshot = Snapshot { header, roots };
    let id = publish_snapshot(repo, &snapshot, &refs)?;
    Ok(BackupOutcome {
        id,
        header: snapshot.header,
        packs_written: session_stats.packs,
    })
}

struct DiskBackup<'a, 'r> {
    repo: &'r Repository,
    session: &'a mut WriteSession<'r>,
    refs: &'a mut RefDeltas,
    block_size: u32,
    roots: Vec<PageDigest>,
    page: Vec<ChunkDigest>,
    stats: DiskStats,
}

impl DiskBackup<'_, '_> {
    fn run(
        &mut self,
        source: &dyn BlockSource,
        mut reference: Option<ReferenceManifest<'_>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let size = source.size();
        let bs = u64::from(self.block_size);
        let blocks = block_count(size, self.block_size);
        let batch_blocks = (BATCH_BYTES / bs).max(1);
        let window = 2 * rayon::current_num_threads();
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut block = 0;
        while block < blocks {
            // A window of batches, each read and hashed by one worker: reading and hashing
            // proceed on every core at once, and buffers are recycled through `pool`.
            let mut jobs = Vec::with_capacity(window);
            while jobs.len() < window && block < blocks {
                let n = batch_blocks.min(blocks - block);
                let offset = block * bs;
                let mut buf = pool.pop().unwrap_or_default();
                buf.resize((n * bs).min(size - offset) as usize, 0);
                jobs.push((block, offset, buf));
                block += n;
            }
            let batches: Vec<Result<Batch>> = jobs
                .into_par_iter()
                .map(|(first_block, offset, mut buf)| {
                    let read = source.read_at(offset, &mut buf)?;
                    let digests = buf
                        .chunks(bs as usize)
                        .map(|b| {
                            if is_all_zero(b) {
                                ChunkDigest::ZERO
                            } else {
                                ChunkDigest::of(b)
                            }
                        })
                        .collect();
                    Ok(Batch {
                        first_block,
                        buf,
                        read,
                        digests,
                    })
                })
                .collect();
            for batch in batches {
                let batch = batch?;
                self.process(&batch, reference.as_mut())?;
                progress.advance(batch.buf.len() as u64);
                pool.push(batch.buf);
            }
        }
        if !self.page.is_empty() {
            self.finish_page()?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        batch: &Batch,
        mut reference: Option<&mut ReferenceManifest<'_>>,
    ) -> Result<()> {
        let bs = self.block_size as usize;
        let compression = self.repo.config().compression;
        self.stats.bytes_read += batch.read;
        let digests = &batch.digests;

        let mut seen = HashSet::new();
        let mut candidates = Vec::new();
        for (i, d) in digests.iter().enumerate() {
            if d.is_zero() {
                self.stats.zero_blocks += 1;
                continue;
            }
            let block = batch.first_block + i as u64;
            let in_reference = reference
                .as_mut()
                .is_some_and(|r| r.digest_at(block) == Some(*d));
            if in_reference || self.session.is_pending(ObjectKind::Chunk, &d.0) || !seen.insert(*d)
            {
                continue;
            }
            candidates.push(i);
        }
        let keys: Vec<[u8; 32]> = candidates.iter().map(|&i| digests[i].0).collect();
        let known = self.repo.index().contains_many(ObjectKind::Chunk, &keys)?;
        let new: Vec<usize> = candidates
            .into_iter()
            .zip(known)
            .filter(|(_, k)| !k)
            .map(|(i, _)| i)
            .collect();
        let encoded: Vec<_> = new
            .par_iter()
            .map(|&i| {
                let raw = batch
                    .buf
                    .get(i * bs..((i + 1) * bs).min(batch.buf.len()))
                    .unwrap_or_default();
                encode_object(ObjectKind::Chunk, digests[i], raw, compression)
            })
            .collect();
        for (info, stored) in &encoded {
            if self.session.add(info, stored)? {
                self.stats.new_chunks += 1;
                self.stats.new_raw_bytes += u64::from(info.raw_len);
                self.stats.new_stored_bytes += u64::from(info.stored_len);
            }
        }
        let page_entries = self.repo.config().page_entries as usize;
        for &d in digests {
            self.page.push(d);
            if self.page.len() == page_entries {
                self.finish_page()?;
            }
        }
        Ok(())
    }

    /// Cuts the current page: names it, stores it if new, and records its references.
    fn finish_page(&mut self) -> Result<()> {
        let page = ManifestPage {
            digests: std::mem::take(&mut self.page),
        };
        let (digest, bytes) = page.encode_with_digest();
        let first_in_backup = !self.refs.pages.contains_key(&digest);
        *self.refs.pages.entry(digest).or_default() += 1;
        if first_in_backup {
            let existing = self
                .repo
                .index()
                .get_object(ObjectKind::Page, digest.as_bytes())?;
            if existing.is_none_or(|e| e.refcount == 0) {
                // The page becomes live with this snapshot: its chunks gain a reference.
                self.refs.add_chunks(&page.digests, 1);
            }
            if existing.is_none() && !self.session.is_pending(ObjectKind::Page, digest.as_bytes()) {
                let (info, stored) = encode_object(
                    ObjectKind::Page,
                    ChunkDigest(digest.0),
                    &bytes,
                    self.repo.config().compression,
                );
                self.session.add(&info, &stored)?;
            }
        }
        self.roots.push(digest);
        Ok(())
    }
}
