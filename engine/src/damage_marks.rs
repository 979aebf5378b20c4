//! Damage marks (SPEC §11a): the snapshots the last verification found damaged, so that
//! `list` and `show` can flag them until a verify finds them clean or a repair fixes them.
//! A small text object (`damaged`) replaced atomically by a put, under the ledger lock, so
//! readers never take a lock:
//!
//! ```text
//! tessera damaged snapshots 1
//! <snapshot id, 64 hex> <damaged ranges> <damaged bytes> <file damaged: 0|1> <marked at, µs>
//! ```
//!
//! The marks are findings, never a source of truth: lines that do not parse are ignored,
//! and deleting the object only forgets the marks until the next verify.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use tessera_format::SnapshotId;

use crate::error::Result;
use crate::ledger::LedgerLock;
use crate::storage::{Backend, ObjectKey, PutMode};

const DAMAGE_MARKS_HEADER: &str = "tessera damaged snapshots 1";

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

/// The damage marks (empty when the file is missing). Lines that do not parse are skipped:
/// the marks are a record of findings, not a source of truth.
pub fn load_damage_marks(backend: &dyn Backend) -> Result<BTreeMap<SnapshotId, DamageMark>> {
    let Some(bytes) = backend.get_if_exists(&ObjectKey::damage_marks())? else {
        return Ok(BTreeMap::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut marks = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [id, ranges, bytes, file, at] = f.as_slice() else {
            continue;
        };
        let (Ok(id), Ok(ranges), Ok(bytes), Ok(at)) = (
            id.parse::<SnapshotId>(),
            ranges.parse(),
            bytes.parse(),
            at.parse(),
        ) else {
            continue;
        };
        marks.insert(
            id,
            DamageMark {
                ranges,
                bytes,
                file_damaged: *file == "1",
                marked_at_us: at,
            },
        );
    }
    Ok(marks)
}

/// What one check found, for updating the damage marks.
#[derive(Debug, Default)]
pub struct DamageFindings {
    /// Snapshots found damaged.
    pub damaged: BTreeMap<SnapshotId, DamageMark>,
    /// Snapshots whose every object this check covered (their old marks are cleared unless
    /// they are damaged again).
    pub checked: HashSet<SnapshotId>,
    /// Every catalogued snapshot (marks of other snapshots are dropped).
    pub catalogued: HashSet<SnapshotId>,
}

/// Updates the damage marks with a check's findings (see [`DamageFindings`]); the file is
/// replaced atomically, or removed when no mark is left. Requires the ledger lock.
pub fn update_damage_marks(
    backend: &dyn Backend,
    _lock: &LedgerLock,
    findings: &DamageFindings,
) -> Result<()> {
    let mut marks = load_damage_marks(backend)?;
    marks.retain(|id, _| findings.catalogued.contains(id) && !findings.checked.contains(id));
    marks.extend(findings.damaged.iter().map(|(id, m)| (*id, *m)));
    if marks.is_empty() {
        return backend.delete(&ObjectKey::damage_marks());
    }
    let mut text = format!("{DAMAGE_MARKS_HEADER}\n");
    for (id, m) in &marks {
        let _ = writeln!(
            text,
            "{id} {} {} {} {}",
            m.ranges,
            m.bytes,
            u8::from(m.file_damaged),
            m.marked_at_us
        );
    }
    backend.put_bytes(
        &ObjectKey::damage_marks(),
        PutMode::Replace,
        text.as_bytes(),
    )
}
