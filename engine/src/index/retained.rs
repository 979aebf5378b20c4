//! Retention records (SPEC §28): the date until which the store keeps each pack, each
//! snapshot file and (as a memo) every pack of each manifest page immutable, in `meta` under
//! `retained/` keys. They are what tessera knows it asked the store for; the store's own
//! retention is the truth, and records lost with an index are read back from it.
//!
//! Invariant kept by the engine: a page record never exceeds the record of a pack holding
//! the page or one of its chunks (pack records only grow; compaction gives a new pack at
//! least the records of the packs it empties).

use tessera_format::{PackId, PageDigest, SnapshotId};

use super::{Index, IndexBatch, CF_META};
use crate::error::{Error, Result};

/// What a retention record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// A pack.
    Pack(PackId),
    /// The packs of a manifest page and of its chunks (a memo: all retained until then).
    Page(PageDigest),
    /// A snapshot file: the snapshot's "protected until".
    Snapshot(SnapshotId),
}

impl Retained {
    fn key(self) -> Vec<u8> {
        let (tag, id): (u8, &[u8]) = match &self {
            Self::Pack(p) => (b'p', p.as_bytes()),
            Self::Page(d) => (b'g', d.as_bytes()),
            Self::Snapshot(s) => (b's', &s.0),
        };
        let mut key = b"retained/".to_vec();
        key.push(tag);
        key.extend_from_slice(id);
        key
    }
}

impl Index {
    /// The retention recorded for `subject`, Unix µs.
    pub fn retained(&self, subject: Retained) -> Result<Option<i64>> {
        let Some(value) = self.db.get_cf(self.cf(CF_META), subject.key())? else {
            return Ok(None);
        };
        let bytes = <[u8; 8]>::try_from(&*value).map_err(|_| Error::IndexCorrupt {
            what: format!("a retention record of {} bytes, not 8", value.len()),
        })?;
        Ok(Some(i64::from_le_bytes(bytes)))
    }
}

impl IndexBatch<'_> {
    /// Records that `subject` is retained until `until_us`.
    pub fn set_retained(&mut self, subject: Retained, until_us: i64) {
        self.put(CF_META, &subject.key(), &until_us.to_le_bytes());
    }
}

/// `meta` key of the policy as this index last saw it (SPEC §28: a policy that disappears
/// from the store is refused, not taken as "no immutability").
const META_POLICY: &[u8] = b"retained/policy";

impl Index {
    /// The immutability policy this index last published under, as stored (JSON).
    pub fn pinned_policy(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), META_POLICY)?)
    }
}

impl IndexBatch<'_> {
    /// Records the policy publications run under.
    pub fn pin_policy(&mut self, policy: &[u8]) {
        self.put(CF_META, META_POLICY, policy);
    }
}
