//! The index's own records: where an object lives and how many references it has
//! ([`ObjectEntry`]), and a pack's catalog entry ([`PackEntry`]). Little-endian, fixed size.

use tessera_format::codec::{put_i64, put_u32, put_u64, Reader};
use tessera_format::pack::FooterEntry;
use tessera_format::{Codec, PackId};

use crate::error::{Error, Result};

/// Index record of one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Pack holding the object.
    pub pack: PackId,
    /// Offset of its record header in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Raw length.
    pub raw_len: u32,
    /// Stored encoding.
    pub codec: Codec,
    /// CRC-32C of the stored bytes.
    pub stored_crc: u32,
    /// Hierarchical reference count.
    pub refcount: u64,
    /// While the count is 0: when it dropped to 0, or when a push last sent the object
    /// again (Unix µs), the start of its grace period against compaction (SPEC §13
    /// "Dead objects"); 0 when live, or dead since before anything recorded it. Change the
    /// count only through [`ObjectEntry::set_count`], which keeps this true.
    pub dead_since_us: i64,
}

/// Encoded size of an [`ObjectEntry`]: 45 bytes of fields and the 8-byte `dead_since_us`.
/// Those 8 bytes once held a "verified at" time (replaced by the verification ledger and
/// then written as zero); an old index may still hold such a time there, which reads as a
/// recent death only for objects already dead, and only keeps them one grace longer.
pub const OBJECT_ENTRY_LEN: usize = 53;

fn corrupt(what: &'static str) -> impl Fn(tessera_format::DecodeError) -> Error {
    move |e| Error::IndexCorrupt {
        what: format!("{what}: {e}"),
    }
}

impl ObjectEntry {
    /// The entry (count 0) of an object found at footer entry `fe` of `pack`.
    pub fn found(pack: PackId, fe: &FooterEntry) -> Self {
        Self {
            pack,
            offset: fe.offset,
            stored_len: fe.info.stored_len,
            raw_len: fe.info.raw_len,
            codec: fe.info.codec,
            stored_crc: fe.info.stored_crc,
            refcount: 0,
            dead_since_us: 0,
        }
    }

    /// The same object, with the same count (and death time), at its new location `fe` in
    /// `pack`.
    #[must_use]
    pub fn relocated(&self, pack: PackId, fe: &FooterEntry) -> Self {
        Self {
            refcount: self.refcount,
            dead_since_us: self.dead_since_us,
            ..Self::found(pack, fe)
        }
    }

    /// Sets the reference count to `count` at time `now_us`: a count dropping to 0 records
    /// the death, a live count clears it, a dead object staying dead keeps its time.
    pub fn set_count(&mut self, count: u64, now_us: i64) {
        if count > 0 {
            self.dead_since_us = 0;
        } else if self.refcount > 0 {
            self.dead_since_us = now_us;
        }
        self.refcount = count;
    }

    /// Whether compaction may drop it: dead, and not dead since `young_after` (a death
    /// within the grace period keeps it; see SPEC §13 "Dead objects").
    pub fn reclaimable(&self, young_after: i64) -> bool {
        self.refcount == 0 && self.dead_since_us <= young_after
    }

    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(OBJECT_ENTRY_LEN);
        out.extend_from_slice(self.pack.as_bytes());
        put_u64(&mut out, self.offset);
        put_u32(&mut out, self.stored_len);
        put_u32(&mut out, self.raw_len);
        out.push(self.codec as u8);
        put_u32(&mut out, self.stored_crc);
        put_u64(&mut out, self.refcount);
        put_i64(&mut out, self.dead_since_us);
        out
    }

    /// Decodes an entry.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let c = corrupt("index object entry");
        let mut r = Reader::new(buf, "index object entry");
        let entry = Self {
            pack: PackId(r.array().map_err(&c)?),
            offset: r.u64().map_err(&c)?,
            stored_len: r.u32().map_err(&c)?,
            raw_len: r.u32().map_err(&c)?,
            codec: Codec::try_from(r.u8().map_err(&c)?).map_err(&c)?,
            stored_crc: r.u32().map_err(&c)?,
            refcount: r.u64().map_err(&c)?,
            dead_since_us: r.i64().map_err(&c)?,
        };
        r.finish().map_err(&c)?;
        Ok(entry)
    }
}

/// Pack catalog record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// File size.
    pub size: u64,
    /// Number of objects.
    pub objects: u32,
    /// When this index learnt of the pack (sealed, adopted or rebuilt), Unix µs: the start
    /// of its grace period against compaction (SPEC §13).
    pub indexed_at_us: i64,
}

impl PackEntry {
    /// The entry of a pack with `size` bytes and `objects` objects, indexed now.
    pub fn now(size: u64, objects: u32) -> Self {
        Self {
            size,
            objects,
            indexed_at_us: crate::time::now_us(),
        }
    }

    /// Encodes the entry.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        put_u64(&mut out, self.size);
        put_u32(&mut out, self.objects);
        put_i64(&mut out, self.indexed_at_us);
        out
    }

    /// Decodes an entry. An entry written before the time was recorded (12 bytes) reads as
    /// indexed at time 0 (long out of its grace period).
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let c = corrupt("index pack entry");
        let mut r = Reader::new(buf, "index pack entry");
        let size = r.u64().map_err(&c)?;
        let objects = r.u32().map_err(&c)?;
        let indexed_at_us = if buf.len() > 12 {
            r.i64().map_err(&c)?
        } else {
            0
        };
        r.finish().map_err(&c)?;
        Ok(Self {
            size,
            objects,
            indexed_at_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ObjectEntry, PackEntry, OBJECT_ENTRY_LEN};
    use tessera_format::{Codec, PackId};

    #[test]
    fn entries_round_trip_and_refuse_wrong_lengths() {
        let e = ObjectEntry {
            pack: PackId([3; 16]),
            offset: 1 << 40,
            stored_len: 7,
            raw_len: 65536,
            codec: Codec::Zstd,
            stored_crc: 0xdead_beef,
            refcount: 42,
            dead_since_us: -5,
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), OBJECT_ENTRY_LEN);
        assert_eq!(ObjectEntry::decode(&bytes).unwrap(), e);
        assert!(ObjectEntry::decode(&bytes[..52]).is_err());
        let p = PackEntry {
            size: 99,
            objects: 3,
            indexed_at_us: 1_700_000_000_000_000,
        };
        assert_eq!(PackEntry::decode(&p.encode()).unwrap(), p);
        let old = PackEntry::decode(&p.encode()[..12]).unwrap();
        assert_eq!((old.size, old.objects, old.indexed_at_us), (99, 3, 0));
        assert!(PackEntry::decode(&[0; 13]).is_err());
    }

    /// A death is stamped when the count drops to 0, kept while it stays 0, cleared when it
    /// rises; only a death at or before the cutoff is reclaimable, never a live object.
    #[test]
    fn counts_record_deaths_and_only_old_deaths_are_reclaimable() {
        let mut e = ObjectEntry {
            pack: PackId([1; 16]),
            offset: 0,
            stored_len: 1,
            raw_len: 1,
            codec: Codec::None,
            stored_crc: 0,
            refcount: 0,
            dead_since_us: 0,
        };
        assert!(e.reclaimable(0), "never named, nothing recorded");
        e.set_count(2, 100);
        assert_eq!((e.refcount, e.dead_since_us), (2, 0));
        assert!(
            !e.reclaimable(i64::MAX),
            "a live object is never reclaimable"
        );
        e.set_count(0, 500);
        assert_eq!(e.dead_since_us, 500);
        assert!(!e.reclaimable(499) && e.reclaimable(500));
        e.set_count(0, 900);
        assert_eq!(e.dead_since_us, 500, "staying dead keeps the time of death");
        e.set_count(1, 1000);
        assert_eq!(e.dead_since_us, 0);
        let decoded = ObjectEntry::decode(&{
            e.set_count(0, 1234);
            e.encode()
        })
        .unwrap();
        assert_eq!(decoded.dead_since_us, 1234);
    }
}
