//! Damage marks (SPEC §11a): the snapshots the last verification found damaged, so that
//! `list` and `show` can flag them until a verify finds them clean or a repair fixes them.
//! One small object per marked snapshot, `damage/<snapshot id>`, put or deleted whole, so
//! readers never take a lock and verifications on different machines sharing a bucket never
//! overwrite each other's findings (each writes only the marks of the snapshots it judged; two
//! verdicts on the same snapshot are both true findings, the later stays):
//!
//! ```text
//! tessera damage mark 1
//! <damaged ranges> <damaged bytes> <file damaged: 0|1> <marked at, µs>
//! ```
//!
//! Older versions kept every mark in one object, `damaged`, with the snapshot id first on
//! each line; it is read as well (a mark object wins), and the next update moves its marks
//! into mark objects before deleting it (a crash in between leaves both, read the same way).
//!
//! The marks are findings, never a source of truth: objects and lines that do not parse are
//! ignored, and deleting them only forgets the marks until the next verify. A mark is dropped
//! when its snapshot is checked clean, or when the snapshot's file is gone from the store —
//! never because this client's catalogue does not know the snapshot (another client may have
//! just published it).

use std::collections::{BTreeMap, HashSet};

use tessera_format::SnapshotId;

use crate::error::Result;
use crate::ledger::LedgerLock;
use crate::storage::key::{self, KeyKind};
use crate::storage::{Backend, ObjectKey, PutMode};

const DAMAGE_MARK_HEADER: &str = "tessera damage mark 1";

/// What the last verification found wrong with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DamageMark {
    /// Damaged byte ranges of its disks (adjacent and overlapping ranges merged).
    pub ranges: u64,
    /// Bytes in those ranges.
    pub bytes: u64,
    /// Its snapshot file is unreadable or differs from its catalog entry.
    pub file_damaged: bool,
    /// When the damage was found (Unix µs).
    pub marked_at_us: i64,
}

/// The damage marks (empty when there are none). Objects and lines that do not parse are
/// skipped: the marks are a record of findings, not a source of truth.
pub fn load_damage_marks(backend: &dyn Backend) -> Result<BTreeMap<SnapshotId, DamageMark>> {
    let mut marks = load_legacy(backend)?;
    for key in backend.list(key::DAMAGE)? {
        let Some(KeyKind::DamageMark(id)) = key.kind() else {
            continue;
        };
        // Deleted since the listing (another verify found the snapshot clean): no mark.
        let Some(bytes) = backend.get_if_exists(&key)? else {
            marks.remove(&id);
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.lines();
        if lines.next() != Some(DAMAGE_MARK_HEADER) {
            continue;
        }
        if let Some(mark) = lines
            .next()
            .and_then(|l| parse_fields(l.split_ascii_whitespace()))
        {
            marks.insert(id, mark);
        }
    }
    Ok(marks)
}

/// The marks of the single object older versions kept.
fn load_legacy(backend: &dyn Backend) -> Result<BTreeMap<SnapshotId, DamageMark>> {
    let Some(bytes) = backend.get_if_exists(&ObjectKey::legacy_damage_marks())? else {
        return Ok(BTreeMap::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut marks = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(id)) = fields.next().map(str::parse::<SnapshotId>) else {
            continue;
        };
        if let Some(mark) = parse_fields(fields) {
            marks.insert(id, mark);
        }
    }
    Ok(marks)
}

/// `<ranges> <bytes> <file damaged: 0|1> <marked at>`, nothing more.
fn parse_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Option<DamageMark> {
    let f: Vec<&str> = fields.collect();
    let [ranges, bytes, file, at] = f.as_slice() else {
        return None;
    };
    Some(DamageMark {
        ranges: ranges.parse().ok()?,
        bytes: bytes.parse().ok()?,
        file_damaged: *file == "1",
        marked_at_us: at.parse().ok()?,
    })
}

/// What one check found, for updating the damage marks.
#[derive(Debug, Default)]
pub struct DamageFindings {
    /// Snapshots found damaged.
    pub damaged: BTreeMap<SnapshotId, DamageMark>,
    /// Snapshots whose every object this check covered (their old marks are cleared unless
    /// they are damaged again).
    pub checked: HashSet<SnapshotId>,
    /// Every snapshot this client catalogues: a mark of another snapshot is dropped only
    /// if the snapshot's file is gone from the store.
    pub catalogued: HashSet<SnapshotId>,
}

/// Updates the damage marks with a check's findings (see [`DamageFindings`]): puts the mark
/// of each damaged snapshot, deletes those of snapshots checked clean and of snapshots whose
/// file is gone, and moves the marks of an older version's single object into mark objects.
/// Requires the ledger lock (one verification per machine); verifications on other machines
/// touch other marks or write true findings of their own.
pub fn update_damage_marks(
    backend: &dyn Backend,
    _lock: &LedgerLock,
    findings: &DamageFindings,
) -> Result<()> {
    let legacy = load_legacy(backend)?;
    let existing = load_damage_marks(backend)?;
    for (id, mark) in &existing {
        let forget = if findings.damaged.contains_key(id) {
            false
        } else if findings.checked.contains(id) {
            true
        } else if findings.catalogued.contains(id) {
            false
        } else {
            backend.size(&ObjectKey::snapshot(*id))?.is_none()
        };
        if forget {
            backend.delete(&ObjectKey::damage_mark(*id))?;
        } else if legacy.contains_key(id) && !findings.damaged.contains_key(id) {
            put_mark(backend, *id, mark)?;
        }
    }
    for (id, mark) in &findings.damaged {
        put_mark(backend, *id, mark)?;
    }
    // Last: a crash before leaves the old object, read as before and moved again.
    backend.delete(&ObjectKey::legacy_damage_marks())
}

fn put_mark(backend: &dyn Backend, id: SnapshotId, m: &DamageMark) -> Result<()> {
    let text = format!(
        "{DAMAGE_MARK_HEADER}\n{} {} {} {}\n",
        m.ranges,
        m.bytes,
        u8::from(m.file_damaged),
        m.marked_at_us
    );
    backend.put_bytes(
        &ObjectKey::damage_mark(id),
        PutMode::Replace,
        text.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use tessera_format::SnapshotId;

    use super::{load_damage_marks, update_damage_marks, DamageFindings, DamageMark};
    use crate::ledger::LedgerLock;
    use crate::storage::local::LocalBackend;
    use crate::storage::{Backend, ObjectKey, PutMode};

    fn id(n: u8) -> SnapshotId {
        SnapshotId([n; 32])
    }

    fn mark(at: i64) -> DamageMark {
        DamageMark {
            ranges: 2,
            bytes: 4096,
            file_damaged: false,
            marked_at_us: at,
        }
    }

    fn findings(
        damaged: &[(SnapshotId, DamageMark)],
        checked: &[SnapshotId],
        known: &[SnapshotId],
    ) -> DamageFindings {
        DamageFindings {
            damaged: damaged.iter().copied().collect(),
            checked: checked.iter().copied().collect(),
            catalogued: known.iter().copied().collect::<HashSet<_>>(),
        }
    }

    /// A store with snapshot files for `ids` (the marks only look at whether they exist).
    fn store(dir: &std::path::Path, ids: &[SnapshotId]) -> LocalBackend {
        let backend = LocalBackend::new(dir);
        for id in ids {
            backend
                .put_bytes(&ObjectKey::snapshot(*id), PutMode::Replace, b"x")
                .unwrap();
        }
        backend
    }

    #[test]
    fn marks_of_snapshots_this_client_does_not_know_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (id(1), id(2));
        let backend = store(dir.path(), &[x, y]);
        let lock = LedgerLock::acquire(dir.path()).unwrap();
        // Machine A, which knows x, finds it damaged.
        update_damage_marks(&backend, &lock, &findings(&[(x, mark(1))], &[x], &[x])).unwrap();
        // Machine B, whose catalogue does not know x yet, finds y damaged.
        update_damage_marks(&backend, &lock, &findings(&[(y, mark(2))], &[y], &[y])).unwrap();
        let want: BTreeMap<SnapshotId, DamageMark> = [(x, mark(1)), (y, mark(2))].into();
        assert_eq!(load_damage_marks(&backend).unwrap(), want);
        // A verify that checks y clean clears y only; one that knows neither keeps both.
        update_damage_marks(&backend, &lock, &findings(&[], &[y], &[y])).unwrap();
        update_damage_marks(&backend, &lock, &findings(&[], &[], &[])).unwrap();
        let want: BTreeMap<SnapshotId, DamageMark> = [(x, mark(1))].into();
        assert_eq!(load_damage_marks(&backend).unwrap(), want);
        // Once x's file is gone (forgotten), its mark goes with the next update.
        backend.delete(&ObjectKey::snapshot(x)).unwrap();
        update_damage_marks(&backend, &lock, &findings(&[], &[], &[y])).unwrap();
        assert!(load_damage_marks(&backend).unwrap().is_empty());
        assert!(backend
            .list(crate::storage::key::DAMAGE)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_single_object_of_older_versions_is_read_then_moved() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y, gone) = (id(1), id(2), id(3));
        let backend = store(dir.path(), &[x, y]);
        let lock = LedgerLock::acquire(dir.path()).unwrap();
        let legacy =
            format!("tessera damaged snapshots 1\n{x} 2 4096 0 7\n{gone} 2 4096 0 8\nnot a line\n");
        backend
            .put_bytes(
                &ObjectKey::legacy_damage_marks(),
                PutMode::Replace,
                legacy.as_bytes(),
            )
            .unwrap();
        let read = load_damage_marks(&backend).unwrap();
        assert_eq!(read.get(&x), Some(&mark(7)));
        assert_eq!(read.len(), 2);
        update_damage_marks(&backend, &lock, &findings(&[(y, mark(9))], &[y], &[y])).unwrap();
        assert_eq!(
            backend.size(&ObjectKey::legacy_damage_marks()).unwrap(),
            None
        );
        let want: BTreeMap<SnapshotId, DamageMark> = [(x, mark(7)), (y, mark(9))].into();
        assert_eq!(load_damage_marks(&backend).unwrap(), want);
    }
}
