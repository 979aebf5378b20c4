//! Consistency check: every catalogued snapshot decodes and matches its file, every page and
//! chunk it references exists, the stored reference counts equal counts recomputed from
//! scratch, and (with `read_data`) every live object reads back intact.
//!
//! This is the verification used by `tessera verify` and by the tests after crashes. Damaged
//! or missing objects are mapped to every snapshot range that needs them (`damage.rs`).
//! Verification runs with a ledger and sampling come with the integrity work.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use tessera_format::ObjectKind;

use crate::error::Result;
use crate::index::ObjectEntry;
use crate::ops::damage::{map_damage, BadKey, DamagedObject};
use crate::progress::Progress;
use crate::refcount::expected_counts_of;
use crate::repo::Repository;
use crate::store::reader::read_object;

/// What the check found. `is_clean` tells whether the repository is consistent.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Objects read back (with `read_data`).
    pub objects_read: u64,
    /// Stored bytes read back.
    pub bytes_read: u64,
    /// Problems, one line each.
    pub problems: Vec<String>,
    /// Damaged or missing objects, each with every snapshot range that needs it.
    pub damaged: Vec<DamagedObject>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the check (see module docs).
pub fn check(repo: &Repository, read_data: bool, progress: &dyn Progress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut snapshots = Vec::new();
    for (id, header) in repo.index().snapshots()? {
        match repo.load_snapshot(id) {
            Ok(s) if s.header == header => snapshots.push((id, s)),
            Ok(_) => report.problems.push(format!(
                "snapshot {id}: catalog entry differs from the snapshot file"
            )),
            Err(e) => report.problems.push(format!("snapshot {id}: {e}")),
        }
    }
    report.snapshots = snapshots.len();
    let expected = expected_counts_of(repo.index(), repo.backend(), snapshots.iter().map(|(_, s)| s))?;
    let mut bad: Vec<(BadKey, DamagedObject)> = Vec::new();
    for (page, reason) in &expected.unreadable_pages {
        report.problems.push(format!("page {page}: {reason}"));
        let entry = repo.index().get_object(ObjectKind::Page, page.as_bytes())?;
        bad.push(((ObjectKind::Page, page.0), damaged(ObjectKind::Page, page.0, entry.as_ref(), reason.clone())));
    }
    let mut indexed: HashSet<BadKey> = HashSet::new();
    let mut live: Vec<(ObjectKind, [u8; 32], ObjectEntry)> = Vec::new();
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        let mut seen = 0u64;
        repo.index().for_each_object(kind, |digest, entry| {
            let want = expected.count(kind, digest);
            if want > 0 {
                seen += 1;
                indexed.insert((kind, digest));
            }
            if want != entry.refcount {
                report.problems.push(format!(
                    "{kind:?} {}: reference count {} but {want} references exist",
                    hex::encode(digest),
                    entry.refcount
                ));
            }
            if entry.refcount > 0 || want > 0 {
                live.push((kind, digest, entry));
            }
            Ok(())
        })?;
        let referenced = match kind {
            ObjectKind::Page => expected.pages.len(),
            ObjectKind::Chunk => expected.chunks.len(),
        } as u64;
        if seen < referenced {
            report.problems.push(format!(
                "{} referenced {kind:?} objects are not in the index",
                referenced - seen
            ));
            let referenced: Vec<[u8; 32]> = match kind {
                ObjectKind::Page => expected.pages.keys().map(|d| d.0).collect(),
                ObjectKind::Chunk => expected.chunks.keys().map(|d| d.0).collect(),
            };
            for digest in referenced.into_iter().filter(|d| !indexed.contains(&(kind, *d))) {
                if !bad.iter().any(|(k, _)| *k == (kind, digest)) {
                    bad.push(((kind, digest), damaged(kind, digest, None, "missing from the index and the packs".into())));
                }
            }
        }
    }
    if read_data {
        let total: u64 = live.iter().map(|(_, _, e)| u64::from(e.stored_len)).sum();
        progress.start("read data", total);
        let objects = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let mut unreadable: Vec<(BadKey, DamagedObject)> = live
            .par_iter()
            .filter_map(|(kind, digest, entry)| {
                let r = read_object(repo.backend(), *kind, digest, entry);
                objects.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(u64::from(entry.stored_len), Ordering::Relaxed);
                progress.advance(u64::from(entry.stored_len));
                r.err().map(|e| ((*kind, *digest), damaged(*kind, *digest, Some(entry), e.to_string())))
            })
            .collect();
        progress.finish();
        unreadable.sort_by_key(|(key, _)| *key);
        report.problems.extend(unreadable.iter().map(|(_, d)| d.reason.clone()));
        for (key, obj) in unreadable {
            if !bad.iter().any(|(k, _)| *k == key) {
                bad.push((key, obj));
            }
        }
        report.objects_read = objects.into_inner();
        report.bytes_read = bytes.into_inner();
    }
    if !bad.is_empty() {
        report.damaged = map_damage(repo, &snapshots, bad);
    }
    Ok(report)
}

fn damaged(kind: ObjectKind, digest: [u8; 32], entry: Option<&ObjectEntry>, reason: String) -> DamagedObject {
    DamagedObject {
        kind: match kind {
            ObjectKind::Chunk => "chunk",
            ObjectKind::Page => "page",
        },
        digest: hex::encode(digest),
        pack: entry.map(|e| e.pack.to_hex()),
        pack_offset: entry.map(|e| e.offset),
        reason,
        ranges: Vec::new(),
    }
}

/// Recomputes every reference count from the published snapshots and writes the correct
/// value wherever the index disagrees (`tessera repair --recount`). Returns the number of
/// counts fixed. Objects referenced but absent from the index cannot be fixed here; they
/// are reported by [`check`].
pub fn recount(repo: &Repository) -> Result<u64> {
    let mut snapshots = Vec::new();
    for (id, _) in repo.index().snapshots()? {
        snapshots.push(repo.load_snapshot(id)?);
    }
    let expected = expected_counts_of(repo.index(), repo.backend(), &snapshots)?;
    let mut batch = rocksdb::WriteBatch::default();
    let mut fixed = 0;
    for kind in [ObjectKind::Page, ObjectKind::Chunk] {
        repo.index().for_each_object(kind, |digest, mut entry| {
            let want = expected.count(kind, digest);
            if want != entry.refcount {
                entry.refcount = want;
                repo.index().put_object(&mut batch, kind, &digest, &entry);
                fixed += 1;
            }
            Ok(())
        })?;
    }
    repo.index().write(batch)?;
    Ok(fixed)
}
