//! One repair round: quarantine, re-home and fetch for the damage a check listed, in the
//! crash order the module docs of [`super`] give.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tessera_format::{ObjectInfo, ObjectKind, PackId, Snapshot, SnapshotId};

use super::fetch::from_images;
use super::{RepairReport, RepairedObject};
use crate::error::Result;
use crate::index::ObjectEntry;
use crate::ops::check::CheckReport;
use crate::ops::damage::DamagedRange;
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::Repository;
use crate::sources::raw::RawSource;
use crate::store::pack_sink::{PackSink, Sealed};
use crate::store::quarantine::{self, Quarantined};
use crate::store::reader::read_stored;

/// An object written to a new pack, with the index entry it will get (location aside).
type Placed = (ObjectKind, [u8; 32], ObjectEntry);

/// Objects wanted, with the snapshot ranges that need them.
type Wanted = Vec<((ObjectKind, [u8; 32]), Vec<DamagedRange>)>;

/// Writes new packs through the [`PackSink`] and remembers what went into them.
struct Out<'r> {
    sink: PackSink<'r, Placed>,
    sealed: Vec<Sealed<Placed>>,
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
        self.sink.append(info, stored, (kind, digest, entry))?;
        self.sealed.extend(self.sink.seal_if_full()?);
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        self.sealed.extend(self.sink.seal()?);
        Ok(())
    }
}

/// Most repair rounds in one run.
pub(super) const MAX_ROUNDS: usize = 4;

/// One round: quarantine, re-home and fetch for the damage `first` lists. Returns how many
/// objects were stored again from another copy.
#[expect(clippy::too_many_lines, reason = "one sequence of crash-ordered steps")]
pub(super) fn round(
    repo: &Repository,
    other: Option<&Repository>,
    images: &[(String, PathBuf, RawSource)],
    first: &CheckReport,
    pending_intents: Vec<PackId>,
    report: &mut RepairReport,
    progress: &dyn Progress,
) -> Result<usize> {
    let repaired_before = report.repaired.len();
    let now = crate::time::now_us();
    let snapshots = load_snapshots(repo);
    let expected = expected_counts_of(
        repo.index(),
        repo.backend(),
        repo.crypto(),
        snapshots.iter().map(|(_, s)| s),
    )?;

    // Which packs to quarantine, and what is wanted.
    let mut bad_packs: HashSet<PackId> = pending_intents.into_iter().collect();
    let mut wanted: HashMap<(ObjectKind, [u8; 32]), Vec<DamagedRange>> = HashMap::new();
    for d in &first.damaged {
        wanted.insert(d.key(), d.ranges.clone());
        bad_packs.extend(d.pack);
    }
    // A pack whose footer or trailer is damaged (or disagrees with the index) is rewritten
    // even when every record in it is intact: its footer can no longer be trusted by an
    // adoption or an index rebuild.
    bad_packs.extend(first.damaged_packs.iter().map(|p| p.pack));
    // Every index entry that lives in a bad pack, and counts an interrupted repair left at 0.
    let mut in_bad: Vec<(ObjectKind, [u8; 32], ObjectEntry)> = Vec::new();
    let mut batch = repo.index().batch();
    let mut raised = 0u64;
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        repo.index().for_each_object(kind, |digest, mut entry| {
            if bad_packs.contains(&entry.pack) {
                in_bad.push((kind, digest, entry));
            }
            let want = expected.count(kind, digest);
            if entry.refcount == 0 && want > 0 {
                entry.set_count(want, now);
                batch.put_object(kind, &digest, &entry);
                raised += 1;
            }
            Ok(())
        })?;
    }
    // (Counts first: an object adopted with count 0 after a crash is then live again.)
    if raised > 0 {
        report.counts_restored += raised;
        repo.index().commit(batch)?;
        for (kind, digest, e) in &mut in_bad {
            if e.refcount == 0 {
                e.set_count(expected.count(*kind, *digest), now);
            }
        }
    }

    let mut out = Out {
        sink: PackSink::new(repo.backend(), repo.pack_target()),
        sealed: Vec::new(),
        written: HashSet::new(),
    };
    let mut deletes: Vec<(ObjectKind, [u8; 32])> = Vec::new();
    // A stored snapshot file the catalog does not list (§9) may name objects at count 0:
    // while one exists, intact unreferenced objects are re-homed too, never dropped. So are
    // those compaction would keep with the default grace (§13): objects that died, or whose
    // pack was indexed, within it (a push or an interrupted backup may be about to publish a
    // snapshot naming them).
    let keep_unreferenced = !repo.uncatalogued_snapshots()?.is_empty();
    let young_after = now.saturating_sub(crate::ops::compact::DEFAULT_GRACE_US);
    let young_packs: HashSet<PackId> = repo
        .index()
        .packs()?
        .into_iter()
        .filter(|(_, e)| e.indexed_at_us > young_after)
        .map(|(p, _)| p)
        .collect();
    // Re-home intact objects of bad packs.
    progress.start("re-home", in_bad.len() as u64);
    for (kind, digest, entry) in &in_bad {
        progress.advance(1);
        if entry.refcount == 0 && !wanted.contains_key(&(*kind, *digest)) {
            if keep_unreferenced
                || !entry.reclaimable(young_after)
                || young_packs.contains(&entry.pack)
            {
                if let Ok((info, stored)) =
                    read_stored(repo.backend(), repo.crypto(), *kind, digest, entry)
                {
                    out.append(*kind, *digest, *entry, &info, &stored)?;
                    report.rehomed += 1;
                    continue;
                }
            }
            deletes.push((*kind, *digest));
            continue;
        }
        match read_stored(repo.backend(), repo.crypto(), *kind, digest, entry) {
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
                if let Ok((info, stored)) =
                    read_stored(other.backend(), other.crypto(), *kind, digest, &e)
                {
                    found = Some((info, stored, format!("repository {}", other.describe())));
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
                    dead_since_us: if refcount == 0 { now } else { 0 },
                };
                out.append(*kind, *digest, template, &info, &stored)?;
                report.repaired.push(RepairedObject {
                    kind: *kind,
                    digest: *digest,
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

    // Intent objects, then the index batch that re-points everything.
    let mut bad_sorted: Vec<PackId> = bad_packs.into_iter().collect();
    bad_sorted.sort();
    for pack in &bad_sorted {
        quarantine::write_intent(repo.backend(), *pack)?;
    }
    let index = repo.index();
    let mut batch = index.batch();
    let policy = crate::ops::immutable::effective_policy(repo.index(), repo.backend())?;
    for sealed in &out.sealed {
        let known: Vec<Option<ObjectEntry>> =
            sealed.tags.iter().map(|(_, _, e)| Some(*e)).collect();
        if let Some(policy) = &policy {
            // The copies take the retention of what they replace (SPEC §28.3).
            // The copies come from the damaged packs (the tags name no source pack).
            crate::ops::immutable::carry_over(
                repo,
                &mut batch,
                sealed.pack.id,
                &bad_sorted,
                policy,
            )?;
        }
        sealed.pack.index_into(&mut batch, &known);
        report.packs_written += 1;
    }
    for (kind, digest) in &deletes {
        batch.delete_object(*kind, digest);
    }
    index.commit(batch)?;

    // Move the bad packs aside, drop them from the catalog, remove the intents.
    let mut batch = index.batch();
    for pack in &bad_sorted {
        match quarantine::quarantine_pack(repo.backend(), *pack)? {
            Quarantined::Moved => report.quarantined.push(*pack),
            Quarantined::Missing => report.missing_packs.push(*pack),
        }
        batch.delete_pack(*pack);
    }
    index.commit(batch)?;
    for pack in &bad_sorted {
        quarantine::clear_intent(repo.backend(), *pack)?;
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
