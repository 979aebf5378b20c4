//! A publication in progress: the record a snapshot's publish keeps in the index while it
//! raises its chunks' counts over several batches (SPEC.md §7, "Publishing in steps").
//!
//! Publishing a snapshot raises the count of every chunk of every page it brings to life.
//! Done in one batch, that batch holds one update per such chunk: about 100 bytes each, 1.6 GB
//! for a first backup of a 1 TiB disk. So a publication whose chunk updates exceed one group
//! is written in steps, all under the writer lock:
//!
//! 1. the snapshot file is stored (durably), then the record ([`Publishing`]) is committed:
//!    the snapshot's id and the pages whose chunks it raises, in order, none applied yet;
//! 2. each step's batch raises the chunks of the next pages and the applied count with them;
//! 3. the last batch raises the pages' counts, catalogues the snapshot and drops the record.
//!
//! Until step 3 the snapshot is not catalogued and no page count has changed; only the
//! chunks of the first `applied` pages count one reference more than the catalogued
//! snapshots give them. Too high a count never lets anything be reclaimed. A writer that
//! finds the record when it opens knows the publisher died (it holds the writer lock the
//! publisher held) and undoes the applied steps (recovery), after which the stored, sound
//! snapshot file is catalogued like any other uncatalogued one. A reader's view that holds
//! the record (`verify` beside a publish) adds those references to what it expects.

use tessera_format::codec::{put_u32, Reader};
use tessera_format::{PageDigest, SnapshotId};

use crate::error::{Error, Result};

/// Key of the record in the meta column family.
pub(super) const META_PUBLISHING: &[u8] = b"publishing";
/// Key of its applied count (kept apart: the page list is written once, the count per step).
pub(super) const META_PUBLISHING_APPLIED: &[u8] = b"publishing_applied";

/// Record format version.
const VERSION: u8 = 1;

/// A publication in progress (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publishing {
    /// The snapshot being published (its file is stored).
    pub snapshot: SnapshotId,
    /// The pages whose chunks the publication raises, in the order it raises them.
    pub pages: Vec<PageDigest>,
    /// How many of `pages` have had their chunks raised.
    pub applied: u32,
}

impl Publishing {
    /// The record's bytes (without the applied count).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 4 + 32 * self.pages.len());
        out.push(VERSION);
        out.extend_from_slice(self.snapshot.as_bytes());
        put_u32(&mut out, self.pages.len() as u32);
        for page in &self.pages {
            out.extend_from_slice(page.as_bytes());
        }
        out
    }

    /// Decodes a record and its applied count; refuses anything malformed.
    pub(super) fn decode(record: &[u8], applied: Option<&[u8]>) -> Result<Self> {
        let corrupt = |why: String| {
            Error::IndexCorrupt {
            what: format!(
                "the record of a publication in progress: {why}; run `tessera repair REPO --rebuild-index`"
            ),
        }
        };
        let mut r = Reader::new(record, "publication record");
        let version = r.u8().map_err(|e| corrupt(e.to_string()))?;
        if version != VERSION {
            return Err(corrupt(format!("unknown version {version}")));
        }
        let snapshot = SnapshotId(r.array::<32>().map_err(|e| corrupt(e.to_string()))?);
        let count = r.u32().map_err(|e| corrupt(e.to_string()))?;
        if r.remaining() != 32 * count as usize {
            return Err(corrupt(format!(
                "{} bytes for {count} pages",
                r.remaining()
            )));
        }
        let mut pages = Vec::with_capacity(count as usize);
        for _ in 0..count {
            pages.push(PageDigest(
                r.array::<32>().map_err(|e| corrupt(e.to_string()))?,
            ));
        }
        let applied = match applied {
            None => 0,
            Some(bytes) => u32::from_le_bytes(
                <[u8; 4]>::try_from(bytes)
                    .map_err(|_| corrupt(format!("applied count of {} bytes", bytes.len())))?,
            ),
        };
        if applied > count {
            return Err(corrupt(format!("{applied} of {count} pages applied")));
        }
        Ok(Self {
            snapshot,
            pages,
            applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let record = Publishing {
            snapshot: SnapshotId([7; 32]),
            pages: vec![PageDigest([1; 32]), PageDigest([2; 32])],
            applied: 1,
        };
        let bytes = record.encode();
        let decoded = Publishing::decode(&bytes, Some(&1u32.to_le_bytes())).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(Publishing::decode(&bytes, None).unwrap().applied, 0);
        for cut in 0..bytes.len() {
            assert!(
                Publishing::decode(&bytes[..cut], None).is_err(),
                "cut at {cut}"
            );
        }
        assert!(Publishing::decode(&bytes, Some(&3u32.to_le_bytes())).is_err());
        assert!(Publishing::decode(&bytes, Some(&[1, 0])).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(Publishing::decode(&other, None).is_err());
    }
}
