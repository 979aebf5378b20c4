//! Repair from other copies (`tessera repair REPO --from OTHER --from-source DISK=PATH`).
//!
//! 1. The check ([`check`], reading every object) lists every damaged or missing chunk and
//!    page, with the snapshot ranges that need it.
//! 2. Every pack that holds a damaged object (or is missing, or whose footer or trailer is
//!    damaged or disagrees with the index, or was marked for quarantine by an interrupted
//!    repair) is *quarantined*: each intact object the index still places in
//!    it is read with every check and copied verbatim into a new pack; dead objects
//!    (count 0) are dropped; damaged ones are fetched from another copy if possible.
//! 3. Copies: `--from OTHER` (another repository with the same id scheme; objects are read
//!    there with every check and copied verbatim), then `--from-source DISK=PATH` (for a
//!    chunk, the block at each range that needs it is read from the image and hashed; for a
//!    page, the page is recomputed from the image's blocks and hashed). Only a copy whose
//!    digest matches is stored.
//! 4. The check runs again; the report says what was repaired (from where), what was
//!    re-homed and quarantined, and what could not be recovered (with its ranges).
//!
//! Crash reasoning, in order:
//! - new packs are sealed (durable) first; a crash here leaves sealed packs the next writer
//!   adopts (objects already indexed keep their entries; an object absent from the index is
//!   adopted with count 0, which the next repair raises to its recomputed count);
//! - an intent file `quarantine/<pack>.intent` is written (fsynced) for each pack to be
//!   quarantined, so a rerun quarantines it even when the index no longer shows damage;
//! - one synced index batch re-points re-homed objects to the new packs, indexes repaired
//!   objects (keeping this repository's reference count), and deletes the entries of
//!   damaged objects that could not be recovered. Before it, the index points at the old
//!   (still present) locations; after it, at the new ones;
//! - each quarantined pack file is renamed into `quarantine/` (directories fsynced), then
//!   one batch drops those packs from the catalog, then the intent files are removed.
//!   Since the catalog drop comes after the rename, a writer never adopts a pack that is
//!   being quarantined (its catalog entry still exists while its file is in `packs/`).
//!
//! A rerun after a kill at any point finds whatever damage is left and finishes the work.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rocksdb::WriteBatch;
use tessera_format::manifest::{block_count, entries_in_page};
use tessera_format::{
    is_all_zero, ChunkDigest, ManifestPage, ObjectInfo, ObjectKind, PackId, PageDigest, Snapshot,
    SnapshotId,
};

use crate::backend::{sync_dir, LocalBackend, Namespace};
use crate::error::{Error, IoContext, Result};
use crate::index::{ObjectEntry, CF_PACKS};
use crate::ledger::LedgerLock;
use crate::ops::check::{check, record_damage, CheckReport};
use crate::ops::damage::{DamagedObject, DamagedPack, DamagedRange};
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::Repository;
use crate::sources::raw::RawSource;
use crate::sources::BlockSource;
use crate::store::encode::encode_object;
use crate::store::pack_writer::{PackWriter, SealedPack};
use crate::store::reader::read_stored;
use crate::store::session::TARGET_PACK_SIZE;

/// Name of the quarantine directory under the repository root.
pub const QUARANTINE_DIR: &str = "quarantine";
const INTENT_EXT: &str = ".intent";

/// Where copies may come from.
pub struct RepairSources<'a> {
    /// Another repository (opened for reading).
    pub other: Option<&'a Repository>,
    /// Source images by disk name.
    pub images: Vec<(String, PathBuf)>,
}

/// One object stored again, and where the intact copy came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairedObject {
    /// `chunk` or `page`.
    pub kind: &'static str,
    /// Digest (hex).
    pub digest: String,
    /// `repository OTHER`, or `source DISK=PATH`.
    pub from: String,
}

/// What the repair did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    /// Damaged or missing objects found by the first check.
    pub damaged_found: usize,
    /// Objects stored again from another copy.
    pub repaired: Vec<RepairedObject>,
    /// Intact objects copied out of quarantined packs.
    pub rehomed: u64,
    /// Reference counts raised back after an interrupted repair.
    pub counts_restored: u64,
    /// Packs moved to `REPO/quarantine/` (or dropped from the catalog when their file was
    /// already gone).
    pub quarantined: Vec<String>,
    /// Packs whose file was already gone: dropped from the catalog.
    pub missing_packs: Vec<String>,
    /// New packs written.
    pub packs_written: usize,
    /// What still cannot be read after the repair, with every snapshot range needing it.
    pub unrecoverable: Vec<DamagedObject>,
    /// Packs whose footer or trailer the first check found damaged (or disagreeing with the
    /// index); each is quarantined, its intact objects re-homed.
    pub damaged_packs_found: Vec<DamagedPack>,
    /// Whether the damage marks shown by `list`/`show` were replaced by the final check's
    /// findings (false while a verify holds the ledger).
    pub damage_marks_updated: bool,
    /// Problems of the final check.
    pub problems: Vec<String>,
}

impl RepairReport {
    /// Whether the repository verified clean at the end.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks that `other` can supply copies to `repo` (digests are comparable).
pub fn check_compatible(repo: &Repository, other: &Repository) -> Result<()> {
    if repo.config().id_scheme != other.config().id_scheme {
        return Err(Error::InvalidArgument(format!(
            "{} uses another id scheme ({:?}, here {:?}): its digests cannot be compared",
            other.root().display(),
            other.config().id_scheme,
            repo.config().id_scheme
        )));
    }
    Ok(())
}

fn kind_of(name: &str) -> ObjectKind {
    if name == "page" {
        ObjectKind::Page
    } else {
        ObjectKind::Chunk
    }
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Chunk => "chunk",
        ObjectKind::Page => "page",
    }
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

/// An object written to a new pack, with the index entry it will get (location aside).
type Placed = (ObjectKind, [u8; 32], ObjectEntry);

/// Objects wanted, with the snapshot ranges that need them.
type Wanted = Vec<((ObjectKind, [u8; 32]), Vec<DamagedRange>)>;

/// Writes new packs and remembers what went into them.
struct Out<'r> {
    repo: &'r Repository,
    writer: Option<PackWriter>,
    /// Objects appended to `writer`, with the entry they will get (location filled later).
    pending: Vec<Placed>,
    sealed: Vec<(SealedPack, Vec<Placed>)>,
    written: HashSet<(ObjectKind, [u8; 32])>,
}

impl Out<'_> {
    fn append(
        &mut self,
        kind: ObjectKind,
        digest: [u8; 32],
        entry: ObjectEntry,
        info: &ObjectInfo,
        stored: &[u8],
    ) -> Result<()> {
        if !self.written.insert((kind, digest)) {
            return Ok(());
        }
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(PackWriter::create(self.repo.backend())?),
        };
        writer.append(info, stored)?;
        self.pending.push((kind, digest, entry));
        if writer.len() >= TARGET_PACK_SIZE {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            if writer.is_empty() {
                return Ok(());
            }
            let sealed = writer.finish()?;
            self.sealed
                .push((sealed, std::mem::take(&mut self.pending)));
        }
        Ok(())
    }
}

fn quarantine_dir(repo: &Repository) -> PathBuf {
    repo.root().join(QUARANTINE_DIR)
}

/// Packs an interrupted repair had marked for quarantine.
fn intents(repo: &Repository) -> Result<Vec<PackId>> {
    let dir = quarantine_dir(repo);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_suffix(INTENT_EXT)
            .and_then(|s| s.parse::<PackId>().ok())
        {
            out.push(id);
        }
    }
    Ok(out)
}

/// Runs the repair (see module docs). `repo` is open as the writer.
pub fn repair(
    repo: &Repository,
    sources: &RepairSources<'_>,
    progress: &dyn Progress,
) -> Result<RepairReport> {
    if let Some(other) = sources.other {
        check_compatible(repo, other)?;
    }
    let images: Vec<(String, PathBuf, RawSource)> = sources
        .images
        .iter()
        .map(|(disk, path)| Ok((disk.clone(), path.clone(), RawSource::open(path)?)))
        .collect::<Result<_>>()?;
    let mut report = RepairReport::default();
    let mut last = check(repo, true, progress)?;
    report.damaged_found = last.damaged.len();
    let first_packs = last.damaged_packs.clone();
    // Several rounds: chunks named only by a damaged page have no known ranges (nothing
    // can be re-read from a source image for them) until the page itself is repaired.
    for _ in 0..MAX_ROUNDS {
        let pending_intents = intents(repo)?;
        if last.is_clean() && pending_intents.is_empty() {
            break;
        }
        let repaired = round(
            repo,
            sources.other,
            &images,
            &last,
            pending_intents,
            &mut report,
            progress,
        )?;
        last = check(repo, true, progress)?;
        if repaired == 0 || last.damaged.is_empty() {
            break;
        }
    }
    // The final check read everything: it replaces the damage marks `list` and `show`
    // display (unless a verify holds the ledger right now; it will record its own findings).
    if let Some(lock) = LedgerLock::try_acquire(repo.root())? {
        let catalogued: Vec<SnapshotId> = repo
            .index()
            .snapshots()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        record_damage(repo, &lock, &last, catalogued.clone(), catalogued)?;
        report.damage_marks_updated = true;
    }
    report.damaged_packs_found = first_packs;
    report.unrecoverable = last.damaged;
    report.problems = last.problems;
    Ok(report)
}

/// Most repair rounds in one run.
const MAX_ROUNDS: usize = 4;

/// One round: quarantine, re-home and fetch for the damage `first` lists. Returns how many
/// objects were stored again from another copy.
#[expect(clippy::too_many_lines, reason = "one sequence of crash-ordered steps")]
fn round(
    repo: &Repository,
    other: Option<&Repository>,
    images: &[(String, PathBuf, RawSource)],
    first: &CheckReport,
    pending_intents: Vec<PackId>,
    report: &mut RepairReport,
    progress: &dyn Progress,
) -> Result<usize> {
    let repaired_before = report.repaired.len();
    let snapshots = load_snapshots(repo);
    let expected = expected_counts_of(
        repo.index(),
        repo.backend(),
        snapshots.iter().map(|(_, s)| s),
    )?;

    // Which packs to quarantine, and what is wanted.
    let mut bad_packs: HashSet<PackId> = pending_intents.into_iter().collect();
    let mut wanted: HashMap<(ObjectKind, [u8; 32]), Vec<DamagedRange>> = HashMap::new();
    for d in &first.damaged {
        let Some(digest) = parse_digest(&d.digest) else {
            continue;
        };
        wanted.insert((kind_of(d.kind), digest), d.ranges.clone());
        if let Some(pack) = d.pack.as_deref().and_then(|p| p.parse::<PackId>().ok()) {
            bad_packs.insert(pack);
        }
    }
    // A pack whose footer or trailer is damaged (or disagrees with the index) is rewritten
    // even when every record in it is intact: its footer can no longer be trusted by an
    // adoption or an index rebuild.
    bad_packs.extend(
        first
            .damaged_packs
            .iter()
            .filter_map(|p| p.pack.parse::<PackId>().ok()),
    );
    // Every index entry that lives in a bad pack, and counts an interrupted repair left at 0.
    let mut in_bad: Vec<(ObjectKind, [u8; 32], ObjectEntry)> = Vec::new();
    let mut batch = WriteBatch::default();
    let mut raised = 0u64;
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        repo.index().for_each_object(kind, |digest, mut entry| {
            if bad_packs.contains(&entry.pack) {
                in_bad.push((kind, digest, entry));
            }
            let want = expected.count(kind, digest);
            if entry.refcount == 0 && want > 0 {
                entry.refcount = want;
                repo.index().put_object(&mut batch, kind, &digest, &entry);
                raised += 1;
            }
            Ok(())
        })?;
    }
    // (Counts first: an object adopted with count 0 after a crash is then live again.)
    if raised > 0 {
        report.counts_restored += raised;
        repo.index().write(batch)?;
        for (kind, digest, e) in &mut in_bad {
            if e.refcount == 0 {
                e.refcount = expected.count(*kind, *digest);
            }
        }
    }

    let mut out = Out {
        repo,
        writer: None,
        pending: Vec::new(),
        sealed: Vec::new(),
        written: HashSet::new(),
    };
    let mut deletes: Vec<(ObjectKind, [u8; 32])> = Vec::new();
    // Re-home intact objects of bad packs.
    progress.start("re-home", in_bad.len() as u64);
    for (kind, digest, entry) in &in_bad {
        progress.advance(1);
        if entry.refcount == 0 && !wanted.contains_key(&(*kind, *digest)) {
            deletes.push((*kind, *digest));
            continue;
        }
        match read_stored(repo.backend(), *kind, digest, entry) {
            Ok((info, stored)) => {
                out.append(*kind, *digest, *entry, &info, &stored)?;
                report.rehomed += 1;
                wanted.remove(&(*kind, *digest));
            }
            // Damaged: fetch it (with no known ranges if the check did not list it).
            Err(_) => {
                wanted.entry((*kind, *digest)).or_default();
            }
        }
    }
    progress.finish();

    // Fetch copies of what is wanted.
    let mut wanted: Wanted = wanted.into_iter().collect();
    wanted.sort_by_key(|(k, _)| *k);
    progress.start("fetch copies", wanted.len() as u64);
    for ((kind, digest), ranges) in &wanted {
        progress.advance(1);
        let current = repo.index().get_object(*kind, digest)?;
        let refcount = current.map_or_else(
            || expected.count(*kind, *digest),
            |e| e.refcount.max(expected.count(*kind, *digest)),
        );
        let mut found = None;
        if let Some(other) = other {
            if let Some(e) = other.index().get_object(*kind, digest)? {
                if let Ok((info, stored)) = read_stored(other.backend(), *kind, digest, &e) {
                    found = Some((
                        info,
                        stored,
                        format!("repository {}", other.root().display()),
                    ));
                }
            }
        }
        if found.is_none() {
            found = from_images(repo, images, *kind, digest, ranges, &snapshots);
        }
        match found {
            Some((info, stored, from)) => {
                let template = ObjectEntry {
                    pack: PackId([0; 16]),
                    offset: 0,
                    stored_len: info.stored_len,
                    raw_len: info.raw_len,
                    codec: info.codec,
                    stored_crc: info.stored_crc,
                    refcount,
                    verified_at_us: 0,
                };
                out.append(*kind, *digest, template, &info, &stored)?;
                report.repaired.push(RepairedObject {
                    kind: kind_name(*kind),
                    digest: hex::encode(digest),
                    from,
                });
            }
            None => {
                if current.is_some_and(|e| bad_packs.contains(&e.pack)) {
                    deletes.push((*kind, *digest));
                }
            }
        }
    }
    progress.finish();
    out.seal()?;

    // Intent files, then the index batch that re-points everything.
    let qdir = quarantine_dir(repo);
    if !bad_packs.is_empty() {
        fs::create_dir_all(&qdir).ctx(|| format!("creating {}", qdir.display()))?;
        sync_dir(repo.root())?;
        for pack in &bad_packs {
            let path = qdir.join(format!("{pack}{INTENT_EXT}"));
            fs::write(&path, b"").ctx(|| format!("writing {}", path.display()))?;
        }
        sync_dir(&qdir)?;
    }
    let index = repo.index();
    let mut batch = WriteBatch::default();
    for (sealed, objects) in &out.sealed {
        index.put_pack(&mut batch, sealed.id, sealed.catalog_entry());
        for ((kind, digest, old), fe) in objects.iter().zip(&sealed.entries) {
            index.put_object(&mut batch, *kind, digest, &old.relocated(sealed.id, fe));
        }
        report.packs_written += 1;
    }
    for (kind, digest) in &deletes {
        index.delete_object(&mut batch, *kind, digest);
    }
    index.write(batch)?;

    // Move the bad packs aside, drop them from the catalog, remove the intents.
    let local = LocalBackend::new(repo.root());
    let mut bad_sorted: Vec<PackId> = bad_packs.into_iter().collect();
    bad_sorted.sort();
    let mut batch = WriteBatch::default();
    for pack in &bad_sorted {
        let name = pack.to_hex();
        let src = local.path_of(Namespace::Packs, &name);
        let dst = qdir.join(format!("{name}.pack"));
        match fs::rename(&src, &dst) {
            Ok(()) => {
                sync_dir(&qdir)?;
                if let Some(parent) = src.parent() {
                    sync_dir(parent)?;
                }
                report.quarantined.push(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dst.exists() {
                    report.quarantined.push(name);
                } else {
                    report.missing_packs.push(name);
                }
            }
            Err(e) => {
                return Err(Error::io(
                    format!("moving {} to {}", src.display(), dst.display()),
                    e,
                ))
            }
        }
        batch.delete_cf(index.cf(CF_PACKS), pack.as_bytes());
    }
    index.write(batch)?;
    for pack in &bad_sorted {
        let path = qdir.join(format!("{pack}{INTENT_EXT}"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
    if !bad_sorted.is_empty() {
        sync_dir(&qdir)?;
    }

    Ok(report.repaired.len() - repaired_before)
}

fn load_snapshots(repo: &Repository) -> Vec<(SnapshotId, Snapshot)> {
    let mut out = Vec::new();
    if let Ok(list) = repo.index().snapshots() {
        for (id, _) in list {
            if let Ok(s) = repo.load_snapshot(id) {
                out.push((id, s));
            }
        }
    }
    out
}

/// Tries to rebuild `digest` from the source images at the ranges that need it.
fn from_images(
    repo: &Repository,
    images: &[(String, PathBuf, RawSource)],
    kind: ObjectKind,
    digest: &[u8; 32],
    ranges: &[DamagedRange],
    snapshots: &[(SnapshotId, Snapshot)],
) -> Option<(ObjectInfo, Vec<u8>, String)> {
    for range in ranges {
        let Some((disk_name, path, source)) = images.iter().find(|(d, _, _)| *d == range.disk)
        else {
            continue;
        };
        let Some((_, snapshot)) = snapshots
            .iter()
            .find(|(id, _)| id.to_hex() == range.snapshot)
        else {
            continue;
        };
        let Some(disk) = snapshot.header.disks.iter().find(|d| d.name == range.disk) else {
            continue;
        };
        let bs = u64::from(disk.block_size);
        let raw = match kind {
            ObjectKind::Chunk => {
                let len = bs.min(disk.size.saturating_sub(range.offset));
                if len == 0 || range.offset + len > source.size() {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                if source.read_at(range.offset, &mut buf).is_err()
                    || ChunkDigest::of(&buf).0 != *digest
                {
                    continue;
                }
                buf
            }
            ObjectKind::Page => {
                let Some(encoded) = page_from_image(
                    source,
                    disk.size,
                    disk.block_size,
                    disk.page_entries,
                    range.offset,
                ) else {
                    continue;
                };
                if PageDigest::of(&encoded).0 != *digest {
                    continue;
                }
                encoded
            }
        };
        let (info, stored) =
            encode_object(kind, ChunkDigest(*digest), &raw, repo.config().compression);
        return Some((
            info,
            stored.into_owned(),
            format!("source {disk_name}={}", path.display()),
        ));
    }
    None
}

/// Recomputes the encoded manifest page starting at byte `offset` of a disk from an image.
fn page_from_image(
    source: &RawSource,
    size: u64,
    block_size: u32,
    page_entries: u32,
    offset: u64,
) -> Option<Vec<u8>> {
    let bs = u64::from(block_size);
    let blocks = block_count(size, block_size);
    let first = offset / bs;
    let pe = u64::from(page_entries);
    if !first.is_multiple_of(pe) || size > source.size() {
        return None;
    }
    let page_no = first / pe;
    let n = entries_in_page(blocks, page_entries, page_no);
    let mut digests = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; block_size as usize];
    for b in first..first + n {
        let at = b * bs;
        let len = bs.min(size - at) as usize;
        source.read_at(at, &mut buf[..len]).ok()?;
        let block = &buf[..len];
        digests.push(if is_all_zero(block) {
            ChunkDigest::ZERO
        } else {
            ChunkDigest::of(block)
        });
    }
    ManifestPage { digests }.encode().ok()
}

/// Whether a path looks like a repository (has a config file).
pub fn is_repository(path: &Path) -> bool {
    path.join("config").is_file()
}
