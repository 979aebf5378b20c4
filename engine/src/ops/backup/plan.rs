//! Deciding how each disk is read: in full, as a delta on the reference, or as a key backup.
//!
//! Rules (SPEC.md "Delta backups"):
//! - A delta source is used as a delta only when the reference snapshot's disk (same name,
//!   same block size) recorded the state the delta applies on ([`Changes::base_state`]).
//!   Otherwise: with `--reference` given, an error ([`Error::WrongBase`]) unless
//!   `--fallback-full`; without it, a full read. Never a delta on the wrong base.
//! - A key backup reads the whole disk even when a delta applies, reports drift, and
//!   checks (and heals) the stored copy of every chunk it references. It happens with
//!   `--full`, every `key_interval`-th backup of the series, when a delta source's size
//!   changed since the reference, and when a delta source no longer matches the reference.

use tessera_format::{SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};
use crate::ops::backup::reference::ReferenceManifest;
use crate::ops::backup::DeltaOptions;
use crate::sources::BlockSource;

/// How the note of a disk whose delta did not apply on the reference ends (the job layer
/// reports such a disk as a warning: its changed-block tracking and the repository disagree).
pub const READ_IN_FULL_NOTE: &str = "read in full";

/// Identity key recording how a disk was read: `full`, `delta` or `key`.
pub const MODE_KEY: &str = "backup.mode";

/// How one disk is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole disk, no delta information used.
    Full,
    /// Only the changed extents; everything else from the reference.
    Delta,
    /// The whole disk, with drift report and store check.
    Key,
}

impl Mode {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Delta => "delta",
            Self::Key => "key",
        }
    }
}

/// The decision for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// How to read it.
    pub mode: Mode,
    /// Whether the source's delta applies on the reference (drift is checked in key mode).
    pub delta_applies: bool,
    /// Why the mode differs from what the source suggests, for the report.
    pub note: Option<String>,
}

/// Whether the next backup of a series is due to be a key backup: `interval - 1` snapshots
/// have been taken since the last key backup (the series' first snapshot counts as one).
/// `series` is the series' snapshots, oldest first.
pub fn key_backup_due(series: &[&SnapshotHeader], interval: u32) -> bool {
    if interval == 0 || series.is_empty() {
        return false;
    }
    let since_key = series.iter().rev().take_while(|h| !is_key(h)).count();
    // Without any key snapshot, the first snapshot of the series starts the count.
    let since = if since_key == series.len() {
        since_key - 1
    } else {
        since_key
    };
    since + 1 >= interval as usize
}

/// Whether every disk of the snapshot was read in full (`full` or `key`): what Macrium calls
/// a full backup, the base of a differential (SPEC.md §26.2).
pub fn read_in_full(h: &SnapshotHeader) -> bool {
    h.disks.iter().all(|d| {
        d.identity
            .iter()
            .any(|(k, v)| k == MODE_KEY && (v == "full" || v == "key"))
    })
}

/// The base of a differential (SPEC.md §26.2): among the series' snapshots read in full,
/// newest first, the one whose disks recorded the states the delta sources' changes apply on
/// (`wanted`: disk name and base state) — the full backup the changes are relative to,
/// however many key backups were taken since; without such a snapshot (or without delta
/// sources), the newest read in full, on which a delta that does not belong is refused or
/// read in full as for any reference. `None` when no snapshot of the series was read in full.
pub fn differential_base(
    catalog: &[(SnapshotId, SnapshotHeader)],
    series: &str,
    wanted: &[(&str, &str)],
) -> Option<SnapshotId> {
    let mut fulls = catalog
        .iter()
        .rev()
        .filter(|(_, h)| h.series == series && read_in_full(h))
        .peekable();
    let newest = fulls.peek().map(|(id, _)| *id);
    let recorded = |h: &SnapshotHeader, disk: &str, state: &str| {
        h.disks.iter().any(|d| {
            d.name == disk
                && d.identity
                    .iter()
                    .any(|(k, v)| k == crate::sources::STATE_KEY && v == state)
        })
    };
    if wanted.is_empty() {
        return newest;
    }
    // The newest full matching the most delta disks (one reference serves every disk; a
    // disk it does not match is read in full or refused by `plan_disk`, never mixed up).
    let mut best: Option<(usize, SnapshotId)> = None;
    for (id, h) in fulls {
        let matched = wanted
            .iter()
            .filter(|(disk, state)| recorded(h, disk, state))
            .count();
        if matched > best.map_or(0, |b| b.0) {
            best = Some((matched, *id));
        }
    }
    best.map(|b| b.1).or(newest)
}

fn is_key(h: &SnapshotHeader) -> bool {
    h.disks
        .iter()
        .any(|d| d.identity.iter().any(|(k, v)| k == MODE_KEY && v == "key"))
}

/// Decides how to read `source` for disk `disk`.
pub fn plan_disk(
    disk: &str,
    location: &str,
    source: &dyn BlockSource,
    reference: Option<&ReferenceManifest<'_>>,
    explicit_reference: bool,
    opts: &DeltaOptions,
    key_due: bool,
) -> Result<DiskPlan> {
    let key_wanted = opts.force_key || key_due;
    let Some(changes) = source.changes() else {
        let mode = if key_wanted { Mode::Key } else { Mode::Full };
        return Ok(DiskPlan {
            mode,
            delta_applies: false,
            note: None,
        });
    };
    let applies_on = reference.filter(|r| r.state() == Some(changes.base_state.as_str()));
    if let Some(reference) = applies_on {
        let resized = reference.size() != source.size();
        if (key_wanted || resized) && source.reads_full() {
            let note = (resized && !key_wanted).then(|| {
                format!(
                    "size changed from {} to {} bytes: key backup",
                    reference.size(),
                    source.size()
                )
            });
            return Ok(DiskPlan {
                mode: Mode::Key,
                delta_applies: true,
                note,
            });
        }
        if opts.force_key {
            return Err(Error::Refused {
                reason: format!(
                    "disk {disk:?}: --full needs the whole disk, but {location} can only be read where it changed (its base cannot be found)"
                ),
            });
        }
        let note = key_wanted.then(|| {
            "key backup due, but the source can only be read where it changed: delta".to_string()
        });
        return Ok(DiskPlan {
            mode: Mode::Delta,
            delta_applies: true,
            note,
        });
    }
    // The delta does not apply on the reference.
    let mismatch = || {
        match reference {
        Some(r) => Error::WrongBase {
            disk: disk.to_string(),
            source_desc: location.to_string(),
            base: changes.base_description.clone(),
            reference: r.snapshot.to_hex(),
            reference_state: r
                .state()
                .unwrap_or("a source without a state token")
                .to_string(),
        },
        None if source.reads_full() => Error::Refused {
            reason: format!(
                "disk {disk:?}: {location} is a delta on {}, but the reference snapshot has no disk {disk:?} with the same block size; back up its base first, or pass --fallback-full",
                changes.base_description
            ),
        },
        None => Error::Refused {
            reason: format!(
                "disk {disk:?}: {location} is a delta on {} and cannot be read in full; back up its base first, then this delta with --reference",
                changes.base_description
            ),
        },
    }
    };
    if explicit_reference && !opts.fallback_full {
        return Err(mismatch());
    }
    if !source.reads_full() {
        return Err(mismatch());
    }
    let note = reference.map(|r| {
        format!(
            "the delta applies on {}, not on snapshot {}: {READ_IN_FULL_NOTE}",
            changes.base_description,
            r.snapshot.to_hex()
        )
    });
    Ok(DiskPlan {
        // A changed identity is a key backup (the first backup of a disk is a plain full).
        mode: if reference.is_some() {
            Mode::Key
        } else {
            Mode::Full
        },
        delta_applies: false,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_format::{DiskEntry, DiskStats};

    fn header(key: bool) -> SnapshotHeader {
        SnapshotHeader {
            series: "s".into(),
            time_us: 0,
            duration_ms: 0,
            tags: Vec::new(),
            disks: vec![DiskEntry {
                name: "d".into(),
                size: 0,
                block_size: 65536,
                page_entries: 512,
                page_count: 0,
                root_digest: [0; 32],
                identity: vec![(MODE_KEY.into(), if key { "key" } else { "delta" }.into())],
                stats: DiskStats::default(),
            }],
        }
    }

    #[test]
    fn every_nth_backup_is_a_key_backup() {
        // Simulate 60 backups with interval 20: key backups at 21 and 41 (1-based).
        let mut series: Vec<SnapshotHeader> = Vec::new();
        let mut keys = Vec::new();
        for n in 1..=60 {
            let refs: Vec<&SnapshotHeader> = series.iter().collect();
            let due = key_backup_due(&refs, 20);
            if due {
                keys.push(n);
            }
            series.push(header(due));
        }
        assert_eq!(keys, vec![21, 41]);
        let none: Vec<&SnapshotHeader> = Vec::new();
        assert!(!key_backup_due(&none, 20));
        let one = [header(false)];
        assert!(key_backup_due(&one.iter().collect::<Vec<_>>(), 1));
        assert!(!key_backup_due(&one.iter().collect::<Vec<_>>(), 0));
    }

    fn with(mode: &str, state: &str) -> SnapshotHeader {
        let mut h = header(false);
        h.disks[0].identity = vec![
            (MODE_KEY.into(), mode.into()),
            (crate::sources::STATE_KEY.into(), state.into()),
        ];
        h
    }

    /// A differential applies on the full backup its changes are relative to, not on a key
    /// backup taken since (whose state is another), nor on a delta.
    #[test]
    fn the_differential_base_is_the_full_whose_state_the_changes_name() {
        let id = |n: u8| SnapshotId([n; 32]);
        let catalog = vec![
            (id(1), with("full", "cbt:1")),
            (id(2), with("delta", "cbt:2")),
            (id(3), with("key", "cbt:3")),
            (id(4), with("delta", "cbt:4")),
        ];
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "cbt:1")]),
            Some(id(1))
        );
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "cbt:3")]),
            Some(id(3))
        );
        // No full recorded that state, or no delta source: the newest read in full.
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "cbt:2")]),
            Some(id(3))
        );
        assert_eq!(differential_base(&catalog, "s", &[]), Some(id(3)));
        assert_eq!(differential_base(&catalog, "other", &[]), None);
        let deltas_only = vec![(id(9), with("delta", "x"))];
        assert_eq!(differential_base(&deltas_only, "s", &[("d", "x")]), None);
    }

    /// Two delta disks whose trackers' bases lie in different fulls: the newest full that
    /// matches the most of them serves (the other disk is then read in full by `plan_disk`).
    #[test]
    fn a_differential_of_two_disks_takes_the_full_matching_most() {
        let id = |n: u8| SnapshotId([n; 32]);
        let two = |a: &str, b: &str| {
            let mut h = with("full", a);
            let mut second = h.disks[0].clone();
            second.name = "e".into();
            second.identity[1].1 = b.into();
            h.disks.push(second);
            h
        };
        let catalog = vec![
            (id(1), two("d:1", "e:1")),
            (id(2), two("d:2", "e:9")),
            (id(3), two("d:3", "e:3")),
        ];
        // d's base is in full 2, e's nowhere: full 2 (one match) beats the newest (none).
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "d:2"), ("e", "e:5")]),
            Some(id(2))
        );
        // Both bases in full 1: full 1, though newer fulls each match none.
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "d:1"), ("e", "e:1")]),
            Some(id(1))
        );
        // d in full 1, e in full 3: equally good, the newest of them.
        assert_eq!(
            differential_base(&catalog, "s", &[("d", "d:1"), ("e", "e:3")]),
            Some(id(3))
        );
    }
}
