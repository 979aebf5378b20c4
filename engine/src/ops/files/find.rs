//! `files find`: in which snapshots of a series a path (or names matching a glob) exists,
//! and in which it changed (kind, size, mtime, content hash).
//!
//! Scanning a series is cheap because snapshots share chunks: every snapshot's disk reads
//! through one chunk cache keyed by chunk digest, so a metadata block unchanged since the
//! previous snapshot is decoded once; and a file's content hash is kept under a key made of
//! its extents and the digests of the chunks holding them, so an unchanged file is hashed
//! once for the whole series (SPEC.md §24.4).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tessera_format::SnapshotId;

use super::{open_volume, Volume, VolumeRef};
use crate::error::{Error, Result};
use crate::explore::content::{stream, Piece};
use crate::explore::path::resolve;
use crate::explore::walk::walk;
use crate::explore::{ExtentData, FileExtent, FileKind, FsError, Stat, Timestamp};
use crate::ops::catalog::list;
use crate::ops::disk_reader::ReadCache;
use crate::progress::Progress;
use crate::repo::Repository;

/// Chunk cache shared by the snapshots one `find` scans.
const FIND_CACHE_BYTES: u64 = 256 << 20;

/// What to look for.
#[derive(Debug, Clone)]
pub enum FindQuery {
    /// One path.
    Path(String),
    /// Every name matching a shell glob (`*.conf`), anywhere in the filesystem.
    Name(String),
}

/// One name found in one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// Its path in the filesystem.
    pub path: String,
    /// Its kind.
    pub kind: FileKind,
    /// Its size.
    pub size: u64,
    /// Its modification time.
    pub mtime: Timestamp,
    /// SHA-256 of a regular file's content, or of a symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Against the previous snapshot scanned: `added`, `changed` or `unchanged`.
    pub change: &'static str,
}

/// One snapshot of the series.
#[derive(Debug, Serialize)]
pub struct SnapshotFinds {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// What matched: every match with [`FindOptions::list_unchanged`], else only those
    /// `added` or `changed`.
    pub found: Vec<Found>,
    /// Matches unchanged since the previous snapshot (listed in `found` too only with
    /// [`FindOptions::list_unchanged`]).
    pub unchanged: u64,
    /// Paths that matched in the previous snapshot and are gone in this one.
    pub removed: Vec<String>,
    /// Why this snapshot could not be searched, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `files find`'s answer.
#[derive(Debug, Serialize)]
pub struct FindReport {
    /// The series.
    pub series: String,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotFinds>,
    /// Distinct versions seen (of each path: the times its kind, size, mtime or content
    /// changed, counting its first appearance).
    pub versions: u64,
    /// Files whose content was hashed, and how many of those hashes came from the cache.
    pub hashed: u64,
    /// Content hashes reused from an earlier snapshot without reading the file.
    pub hash_cache_hits: u64,
    /// Snapshots that could not be searched.
    pub errors: u64,
}

/// How `find` reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct FindOptions {
    /// List unchanged matches in every snapshot too, not only count them. A report of every
    /// match of a glob in every snapshot is as long as matches times snapshots (60,000 lines
    /// for 2,000 files in 30 snapshots); the changes alone say the same.
    pub list_unchanged: bool,
}

/// Searches every snapshot of `series` for `query` in volume `which`.
pub fn find(
    repo: &Arc<Repository>,
    series: &str,
    which: &VolumeRef,
    query: &FindQuery,
    options: FindOptions,
    progress: &dyn Progress,
) -> Result<FindReport> {
    let snapshots = list(repo, Some(series))?.snapshots;
    if snapshots.is_empty() {
        return Err(Error::SeriesNotFound {
            series: series.to_string(),
        });
    }
    let glob = match query {
        FindQuery::Name(pattern) => Some(
            globset::Glob::new(pattern)
                .map_err(|e| Error::Usage(format!("--name {pattern:?}: {e}")))?
                .compile_matcher(),
        ),
        FindQuery::Path(_) => None,
    };
    let cache = Arc::new(ReadCache::new(FIND_CACHE_BYTES));
    let mut hasher = ContentHasher::default();
    let mut previous: BTreeMap<String, Found> = BTreeMap::new();
    let mut report = FindReport {
        series: series.to_string(),
        snapshots: Vec::new(),
        versions: 0,
        hashed: 0,
        hash_cache_hits: 0,
        errors: 0,
    };
    progress.start("searching snapshots", snapshots.len() as u64);
    // Snapshots are walked a few at a time in parallel (the walks share only the chunk
    // cache), then taken in order: content hashes from the one cache, compared with the
    // previous snapshot. The window bounds how many walks' matches are held at once.
    let window = (rayon::current_num_threads() * 2).clamp(2, MAX_WINDOW);
    for batch in snapshots.chunks(window) {
        let walked: Vec<Result<Walked>> = batch
            .par_iter()
            .map(|listed| {
                let volume = open_volume(repo, listed.id, which, &cache)?;
                let (matches, failed) = search(&volume, query, glob.as_ref());
                let failed = failed.map(|(path, e)| volume.error(&path, e));
                Ok((volume, matches, failed))
            })
            .collect();
        for (listed, walked) in batch.iter().zip(walked) {
            let mut finds = SnapshotFinds {
                snapshot: listed.id,
                time: listed.time.clone(),
                found: Vec::new(),
                unchanged: 0,
                removed: Vec::new(),
                error: None,
            };
            // The matches before a failure are hashed first, as a walk that hashed as it went
            // would have: the first failure in walk order is the one reported.
            let outcome = walked.and_then(|(volume, matches, failed)| {
                let found = hasher.resolve(&volume, matches)?;
                failed.map_or(Ok(found), Err)
            });
            match outcome {
                Ok(found) => {
                    let mut now = BTreeMap::new();
                    for mut f in found {
                        f.change = match previous.get(&f.path) {
                            None => "added",
                            Some(p) if same_version(p, &f) => "unchanged",
                            Some(_) => "changed",
                        };
                        if f.change == "unchanged" {
                            finds.unchanged += 1;
                        } else {
                            report.versions += 1;
                        }
                        if f.change != "unchanged" || options.list_unchanged {
                            finds.found.push(f.clone());
                        }
                        now.insert(f.path.clone(), f);
                    }
                    finds.removed = previous
                        .keys()
                        .filter(|p| !now.contains_key(*p))
                        .cloned()
                        .collect();
                    previous = now;
                }
                Err(e) => {
                    report.errors += 1;
                    finds.error = Some(e.to_string());
                }
            }
            report.snapshots.push(finds);
            progress.advance(1);
        }
    }
    progress.finish();
    report.hashed = hasher.hashed;
    report.hash_cache_hits = hasher.hits;
    Ok(report)
}

fn same_version(a: &Found, b: &Found) -> bool {
    a.kind == b.kind && a.size == b.size && a.mtime == b.mtime && a.sha256 == b.sha256
}

/// Snapshots walked at once at most, whatever the number of threads: each holds its
/// matches until it is taken in order.
const MAX_WINDOW: usize = 8;

/// A walked snapshot: its volume, its matches, and the failure that ended the walk early.
type Walked = (Volume, Vec<Match>, Option<Error>);

/// A match the walk found, its content not hashed yet.
struct Match {
    /// What it is (`sha256` still `None` for a regular file).
    found: Found,
    /// A regular file's content key and inode (its extents are read again only when the
    /// key is not in the cache).
    content: Option<([u8; 32], u64)>,
}

/// The matches in one volume, and the error that stopped the search (with the path it
/// concerns) after the matches before it.
fn search(
    volume: &Volume,
    query: &FindQuery,
    glob: Option<&globset::GlobMatcher>,
) -> (Vec<Match>, Option<(String, FsError)>) {
    let fs = volume.fs.as_ref();
    match query {
        FindQuery::Path(path) => match resolve(fs, path.as_bytes(), false) {
            Ok(r) => {
                let shown = String::from_utf8_lossy(&r.path).into_owned();
                match describe(volume, shown.clone(), &r.stat) {
                    Ok(found) => (vec![found], None),
                    Err(e) => (Vec::new(), Some((shown, e))),
                }
            }
            Err(FsError::NotFound { .. } | FsError::NotADirectory { .. }) => (Vec::new(), None),
            Err(e) => (Vec::new(), Some((path.clone(), e))),
        },
        FindQuery::Name(_) => {
            let mut hits = Vec::new();
            let root = fs.root();
            let stat = match fs.stat(root) {
                Ok(stat) => stat,
                Err(e) => return (hits, Some(("/".to_string(), e))),
            };
            let mut current = Vec::new();
            let walked = walk(fs, root, stat, &mut |v| {
                current.clone_from(&v.rel);
                let name = v.rel.rsplit(|b| *b == b'/').next().unwrap_or_default();
                let name = String::from_utf8_lossy(name);
                if !v.rel.is_empty() && glob.is_some_and(|g| g.is_match(name.as_ref())) {
                    let path = format!("/{}", String::from_utf8_lossy(&v.rel));
                    hits.push(describe(volume, path, &v.stat)?);
                }
                Ok(true)
            });
            let failed = walked.err().map(|e| (super::below(b"/", &current), e));
            (hits, failed)
        }
    }
}

fn describe(volume: &Volume, path: String, stat: &Stat) -> std::result::Result<Match, FsError> {
    let (sha256, content) = match stat.kind {
        FileKind::File => {
            let extents = volume.fs.extents(stat.ino)?;
            (None, Some((content_key(volume, stat, &extents)?, stat.ino)))
        }
        FileKind::Symlink => (
            Some(hex::encode(Sha256::digest(volume.fs.read_link(stat.ino)?))),
            None,
        ),
        _ => (None, None),
    };
    Ok(Match {
        found: Found {
            path,
            kind: stat.kind,
            size: stat.size,
            mtime: stat.mtime,
            sha256,
            change: "added",
        },
        content,
    })
}

/// What determines a file's content: the size, the extents (file offset, length, kind) and
/// the digests of the disk chunks holding each stored run with the run's offset in its
/// first chunk. Equal keys mean equal bytes.
fn content_key(
    volume: &Volume,
    stat: &Stat,
    extents: &[FileExtent],
) -> std::result::Result<[u8; 32], FsError> {
    let mut key = Sha256::new();
    key.update(stat.size.to_le_bytes());
    for e in extents {
        key.update(e.offset.to_le_bytes());
        key.update(e.len.to_le_bytes());
        match &e.data {
            ExtentData::Zero => key.update([0]),
            ExtentData::Inline(bytes) => {
                key.update([1]);
                key.update(bytes);
            }
            ExtentData::Volume(at) => {
                key.update([2]);
                // Each range's length too: an LV run split differently across its segments
                // must not give the same key.
                let ranges = volume.disk_ranges(*at, e.len);
                key.update((ranges.len() as u64).to_le_bytes());
                for range in ranges {
                    key.update((range.end - range.start).to_le_bytes());
                    let (skew, digests) = volume.image.digests_of(range)?;
                    key.update(skew.to_le_bytes());
                    for d in digests {
                        key.update(d.0);
                    }
                }
            }
        }
    }
    Ok(key.finalize().into())
}

/// Content hashes of files, kept under their [`content_key`] for the whole scan, so a file
/// whose blocks did not change is hashed once for the series. Used in snapshot order on one
/// thread, so which file is hashed and which comes from the cache does not depend on how
/// the walks were scheduled.
#[derive(Default)]
struct ContentHasher {
    cache: HashMap<[u8; 32], String>,
    hashed: u64,
    hits: u64,
}

impl ContentHasher {
    /// The matches of one volume with their content hashes filled in.
    fn resolve(&mut self, volume: &Volume, matches: Vec<Match>) -> Result<Vec<Found>> {
        matches
            .into_iter()
            .map(|m| {
                let mut found = m.found;
                if let Some((key, ino)) = m.content {
                    let hash = self
                        .hash(volume, key, ino)
                        .map_err(|e| volume.error(&found.path, e))?;
                    found.sha256 = Some(hash);
                }
                Ok(found)
            })
            .collect()
    }

    fn hash(
        &mut self,
        volume: &Volume,
        key: [u8; 32],
        ino: u64,
    ) -> std::result::Result<String, FsError> {
        self.hashed += 1;
        if let Some(hash) = self.cache.get(&key) {
            self.hits += 1;
            return Ok(hash.clone());
        }
        let extents = volume.fs.extents(ino)?;
        let mut content = Sha256::new();
        let zeros = vec![0u8; 1 << 16];
        stream(volume.bytes.as_ref(), &extents, &mut |piece| {
            match piece {
                Piece::Data(_, bytes) => content.update(bytes),
                Piece::Hole(_, mut len) => {
                    while len > 0 {
                        let n = len.min(zeros.len() as u64) as usize;
                        content.update(&zeros[..n]);
                        len -= n as u64;
                    }
                }
            }
            Ok(())
        })?;
        let hash = hex::encode(content.finalize());
        self.cache.insert(key, hash.clone());
        Ok(hash)
    }
}
