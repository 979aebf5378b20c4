//! Snapshot references as callers write them, parsed in one place (SPEC.md §11):
//!
//! | form | means |
//! |---|---|
//! | `latest` | the newest snapshot of the catalog |
//! | `latest@SERIES` | the newest snapshot of the series |
//! | 4 to 64 hex digits | the one snapshot whose id starts with them (a full id names itself) |
//! | `REF:DISK` ([`SnapshotDiskRef`]) | one disk of the snapshot `REF` names |
//!
//! Parsing ([`FromStr`]) needs no repository, so a malformed reference is refused before
//! anything is opened; [`SnapshotRef::resolve`] then finds the snapshot in a catalog
//! (anything [`Catalogued`], oldest first: the index's catalog, a sync source's).

use std::fmt;
use std::str::FromStr;

use tessera_format::{SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};
use crate::sync::source::SnapshotSummary;

/// Fewest hex digits of an id prefix: shorter ones would match by accident.
pub const MIN_PREFIX: usize = 4;

/// A reference to one snapshot (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SnapshotRef {
    /// `latest`: the newest snapshot of the catalog.
    Latest,
    /// `latest@SERIES`: the newest snapshot of the series.
    LatestOf(String),
    /// A unique prefix of an id, or a whole id (lower case hex, 4 to 64 digits).
    Prefix(String),
}

impl FromStr for SnapshotRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "latest" {
            return Ok(Self::Latest);
        }
        if let Some(series) = s.strip_prefix("latest@") {
            return Ok(Self::LatestOf(series.to_string()));
        }
        let hex = s.to_ascii_lowercase();
        if (MIN_PREFIX..=2 * SnapshotId::LEN).contains(&hex.len())
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(Self::Prefix(hex))
        } else {
            Err(Error::BadSnapshotRef {
                query: s.to_string(),
            })
        }
    }
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::LatestOf(series) => write!(f, "latest@{series}"),
            Self::Prefix(hex) => f.write_str(hex),
        }
    }
}

impl From<SnapshotId> for SnapshotRef {
    fn from(id: SnapshotId) -> Self {
        Self::Prefix(id.to_hex())
    }
}

/// An entry of a snapshot catalog.
pub trait Catalogued {
    /// The snapshot's id.
    fn snapshot_id(&self) -> SnapshotId;
    /// Its series.
    fn series(&self) -> &str;
}

impl Catalogued for (SnapshotId, SnapshotHeader) {
    fn snapshot_id(&self) -> SnapshotId {
        self.0
    }

    fn series(&self) -> &str {
        &self.1.series
    }
}

impl Catalogued for SnapshotSummary {
    fn snapshot_id(&self) -> SnapshotId {
        self.id
    }

    fn series(&self) -> &str {
        &self.series
    }
}

impl SnapshotRef {
    /// The entry of `catalog` (oldest first) this reference names. Fails with
    /// [`Error::SnapshotNotFound`] when none matches and [`Error::AmbiguousSnapshot`] when a
    /// prefix matches several.
    pub fn resolve<'c, T: Catalogued>(&self, catalog: &'c [T]) -> Result<&'c T> {
        let not_found = || Error::SnapshotNotFound {
            query: self.to_string(),
        };
        match self {
            Self::Latest => catalog.last().ok_or_else(not_found),
            Self::LatestOf(series) => catalog
                .iter()
                .rfind(|s| s.series() == series)
                .ok_or_else(not_found),
            Self::Prefix(hex) => {
                let mut hits = catalog
                    .iter()
                    .filter(|s| s.snapshot_id().to_hex().starts_with(hex.as_str()));
                let first = hits.next().ok_or_else(not_found)?;
                match hits.count() {
                    0 => Ok(first),
                    more => Err(Error::AmbiguousSnapshot {
                        query: self.to_string(),
                        count: more + 1,
                    }),
                }
            }
        }
    }
}

/// `REF` or `REF:DISK`: a snapshot and, optionally, one of its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDiskRef {
    /// The snapshot.
    pub snapshot: SnapshotRef,
    /// The disk, if one was named.
    pub disk: Option<String>,
}

impl FromStr for SnapshotDiskRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.rsplit_once(':') {
            Some((_, "")) => Err(Error::Usage(format!(
                "{s:?} names no disk after the ':'; write SNAPSHOT or SNAPSHOT:DISK"
            ))),
            Some((snapshot, disk)) => Ok(Self {
                snapshot: snapshot.parse()?,
                disk: Some(disk.to_string()),
            }),
            None => Ok(Self {
                snapshot: s.parse()?,
                disk: None,
            }),
        }
    }
}

impl SnapshotDiskRef {
    /// The one disk this reference means in a snapshot with `header`: the named one, or
    /// the snapshot's only disk. Fails with [`Error::DiskNotFound`] for a disk the snapshot
    /// lacks and with a usage error when it has several and none was named.
    pub fn single_disk(&self, id: SnapshotId, header: &SnapshotHeader) -> Result<String> {
        match (&self.disk, header.disks.as_slice()) {
            (Some(name), disks) if disks.iter().any(|d| &d.name == name) => Ok(name.clone()),
            (Some(name), disks) => Err(Error::DiskNotFound {
                snapshot: id,
                disk: name.clone(),
                available: disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            (None, [only]) => Ok(only.name.clone()),
            (None, _) => Err(Error::Usage(format!(
                "snapshot {id} has several disks: name one as SNAPSHOT:DISK"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn header(series: &str, disks: &[&str]) -> SnapshotHeader {
        SnapshotHeader {
            series: series.into(),
            time_us: 0,
            duration_ms: 0,
            tags: vec![],
            disks: disks
                .iter()
                .map(|name| tessera_format::DiskEntry {
                    name: (*name).into(),
                    size: 0,
                    block_size: 65536,
                    page_entries: 512,
                    page_count: 0,
                    root_digest: [0; 32],
                    identity: vec![],
                    stats: tessera_format::DiskStats::default(),
                })
                .collect(),
        }
    }

    fn catalog() -> Vec<(SnapshotId, SnapshotHeader)> {
        let mut a = [0u8; 32];
        a[..3].copy_from_slice(&[0xab, 0xcd, 0x01]);
        let mut b = [0u8; 32];
        b[..3].copy_from_slice(&[0xab, 0xcd, 0x02]);
        let mut c = [0u8; 32];
        c[..3].copy_from_slice(&[0x12, 0x34, 0x56]);
        vec![
            (SnapshotId(a), header("vm1", &["d"])),
            (SnapshotId(b), header("vm2", &["d", "e"])),
            (SnapshotId(c), header("vm1", &["d"])),
        ]
    }

    fn resolve(s: &str) -> Result<SnapshotId> {
        let catalog = catalog();
        Ok(s.parse::<SnapshotRef>()?.resolve(&catalog)?.0)
    }

    #[test]
    fn every_form_resolves() {
        let c = catalog();
        assert_eq!(resolve("latest").unwrap(), c[2].0);
        assert_eq!(resolve("latest@vm1").unwrap(), c[2].0);
        assert_eq!(resolve("latest@vm2").unwrap(), c[1].0);
        assert_eq!(resolve("ABCD01").unwrap(), c[0].0);
        assert_eq!(resolve(&c[1].0.to_hex()).unwrap(), c[1].0);
    }

    #[test]
    fn failures_have_their_kinds() {
        for (query, kind) in [
            ("abc", ErrorKind::Usage),
            ("abcz", ErrorKind::Usage),
            ("", ErrorKind::Usage),
            (&"a".repeat(65), ErrorKind::Usage),
            ("abcd", ErrorKind::Usage),
            ("ffff", ErrorKind::Usage),
            ("latest@nobody", ErrorKind::Usage),
        ] {
            let err = resolve(query).unwrap_err();
            assert_eq!(err.kind(), kind, "{query:?}: {err}");
        }
        assert!(matches!(
            resolve("abc").unwrap_err(),
            Error::BadSnapshotRef { .. }
        ));
        assert!(matches!(
            resolve("abcd").unwrap_err(),
            Error::AmbiguousSnapshot { count: 2, .. }
        ));
        assert!(matches!(
            resolve("ffff").unwrap_err(),
            Error::SnapshotNotFound { .. }
        ));
        let empty: Vec<(SnapshotId, SnapshotHeader)> = Vec::new();
        assert!(matches!(
            SnapshotRef::Latest.resolve(&empty).unwrap_err(),
            Error::SnapshotNotFound { .. }
        ));
    }

    #[test]
    fn disk_references() {
        let c = catalog();
        let r: SnapshotDiskRef = "latest@vm2:e".parse().unwrap();
        assert_eq!(r.snapshot, SnapshotRef::LatestOf("vm2".into()));
        assert_eq!(r.single_disk(c[1].0, &c[1].1).unwrap(), "e");
        let r: SnapshotDiskRef = "abcd02".parse().unwrap();
        assert_eq!(r.disk, None);
        assert!(matches!(
            r.single_disk(c[1].0, &c[1].1).unwrap_err(),
            Error::Usage(_)
        ));
        assert_eq!(r.single_disk(c[0].0, &c[0].1).unwrap(), "d");
        let r: SnapshotDiskRef = "latest:x".parse().unwrap();
        assert!(matches!(
            r.single_disk(c[0].0, &c[0].1).unwrap_err(),
            Error::DiskNotFound { .. }
        ));
        assert!("latest:".parse::<SnapshotDiskRef>().is_err());
        assert!("zz:d".parse::<SnapshotDiskRef>().is_err());
    }
}
