//! A MFT file record as tessera reads it itself, beside the `ntfs` crate's view: the bytes
//! with the update sequence (fixup) applied, and every attribute header checked to be as long
//! as its kind needs before the crate reads its fields (the crate 0.4 reads a resident
//! attribute's value length and a non-resident one's sizes without checking that the header
//! holds them). It also gives what the crate keeps to itself: a non-resident attribute's
//! initialized (valid data) size and the record's base reference.

use crate::explore::image::{Image, Le};
use crate::explore::FsError;

/// Bytes of a sector as the update sequence protects it (whatever the volume's sector size).
const USA_STRIDE: usize = 512;
/// Attribute type that ends a record's attribute list.
const END: u32 = 0xffff_ffff;
/// Shortest header of a resident attribute (through its value offset and flags).
const RESIDENT_HEADER: u32 = 0x18;
/// Shortest header of a non-resident attribute (through its initialized size).
const NON_RESIDENT_HEADER: u32 = 0x40;

/// One file record, fixed up and checked.
pub(super) struct RawRecord {
    bytes: Vec<u8>,
    /// Where it lies on the volume.
    pub(super) position: u64,
}

/// The header of one attribute of a [`RawRecord`].
#[derive(Debug, Clone, Copy)]
pub(super) struct RawAttribute {
    /// Offset in the record.
    pub(super) offset: usize,
    /// Attribute type.
    pub(super) ty: u32,
    /// Whether its value is stored in the record.
    pub(super) resident: bool,
    /// Its name's length in UTF-16 units.
    pub(super) name_len: u8,
}

impl RawRecord {
    /// Reads the `size`-byte record at `position`, applies its update sequence and checks its
    /// signature and every attribute header. `what` names it in errors.
    pub(super) fn read(
        volume: &dyn Image,
        position: u64,
        size: u32,
        what: &str,
    ) -> Result<Self, FsError> {
        let mut bytes = volume.read_vec(position, size as usize, what)?;
        if bytes.get(..4) != Some(b"FILE") {
            return Err(FsError::corrupt(format!(
                "{what} at byte {position} has no FILE signature"
            )));
        }
        fixup(&mut bytes, what, position)?;
        let record = Self { bytes, position };
        record.attributes(what)?;
        Ok(record)
    }

    fn le(&self) -> Le<'_> {
        Le::new(&self.bytes, "an NTFS file record")
    }

    /// The record number of the base record this one extends (0 for a base record).
    pub(super) fn base_record(&self) -> Result<u64, FsError> {
        Ok(self.le().u64(0x20)? & 0xffff_ffff_ffff)
    }

    /// The attribute headers, in record order, each checked to lie inside the record and to
    /// be long enough for its kind.
    pub(super) fn attributes(&self, what: &str) -> Result<Vec<RawAttribute>, FsError> {
        let le = self.le();
        let len = self.bytes.len();
        let mut at = usize::from(le.u16(0x14)?);
        let mut out = Vec::new();
        // The `ntfs` crate walks the same way: until END or until a type no longer fits.
        while at + 4 <= len {
            let ty = le.u32(at)?;
            if ty == END {
                break;
            }
            let bad = |why: String| {
                FsError::corrupt(format!(
                    "{what} at byte {}: the attribute at offset {at} {why}",
                    self.position
                ))
            };
            if len - at < 16 {
                return Err(bad("is cut off by the record's end".into()));
            }
            let length = le.u32(at + 4)?;
            let resident = le.u8(at + 8)? == 0;
            let min = if resident {
                RESIDENT_HEADER
            } else {
                NON_RESIDENT_HEADER
            };
            if length < min || length as usize > len - at {
                return Err(bad(format!(
                    "is {length} bytes long ({} left in the record, a {} header needs {min})",
                    len - at,
                    if resident { "resident" } else { "non-resident" }
                )));
            }
            out.push(RawAttribute {
                offset: at,
                ty,
                resident,
                name_len: le.u8(at + 9)?,
            });
            at += length as usize;
        }
        Ok(out)
    }

    /// The initialized (valid data) size of the non-resident attribute at `attr`.
    pub(super) fn initialized_size(&self, attr: &RawAttribute) -> Result<u64, FsError> {
        self.le().u64(attr.offset + 0x38)
    }

    /// The attribute flags (compressed 0x0001, encrypted 0x4000, sparse 0x8000).
    pub(super) fn attribute_flags(&self, attr: &RawAttribute) -> Result<u16, FsError> {
        self.le().u16(attr.offset + 0x0c)
    }

    /// The lowest VCN of the non-resident attribute at `attr`.
    pub(super) fn lowest_vcn(&self, attr: &RawAttribute) -> Result<u64, FsError> {
        self.le().u64(attr.offset + 0x10)
    }

    /// The attribute whose header starts at volume byte `position`.
    pub(super) fn attribute_at(&self, position: u64, what: &str) -> Result<RawAttribute, FsError> {
        let offset = position.checked_sub(self.position).map(|o| o as usize);
        self.attributes(what)?
            .into_iter()
            .find(|a| Some(a.offset) == offset)
            .ok_or_else(|| {
                FsError::corrupt(format!(
                    "{what}: no attribute starts at byte {position} of the record at byte {}",
                    self.position
                ))
            })
    }
}

/// Puts back the last two bytes of each 512-byte stride, which the update sequence array
/// holds; each must carry the update sequence number (a torn write otherwise).
fn fixup(bytes: &mut [u8], what: &str, position: u64) -> Result<(), FsError> {
    let le = Le::new(bytes, "an NTFS file record");
    let offset = usize::from(le.u16(4)?);
    let count = usize::from(le.u16(6)?);
    let bad = |why: &str| FsError::corrupt(format!("{what} at byte {position}: {why}"));
    if count == 0 || (count - 1) * USA_STRIDE > bytes.len() {
        return Err(bad("its update sequence array does not fit the record"));
    }
    let usa = le.bytes(offset, 2 * count)?.to_vec();
    for i in 1..count {
        let end = i * USA_STRIDE;
        if bytes[end - 2..end] != usa[..2] {
            return Err(bad("its update sequence does not match (a torn write)"));
        }
        bytes[end - 2..end].copy_from_slice(&usa[2 * i..2 * i + 2]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024-byte record with update sequence number 7 and one attribute of `attr` bytes.
    fn record(attr: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 1024];
        r[..4].copy_from_slice(b"FILE");
        r[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        r[6..8].copy_from_slice(&3u16.to_le_bytes());
        r[0x30..0x36].copy_from_slice(&[7, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
        r[510..512].copy_from_slice(&[7, 0]);
        r[1022..1024].copy_from_slice(&[7, 0]);
        r[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
        r[0x38..0x38 + attr.len()].copy_from_slice(attr);
        let end = 0x38 + attr.len();
        r[end..end + 4].copy_from_slice(&END.to_le_bytes());
        r
    }

    fn attr(ty: u32, len: u32, non_resident: u8) -> Vec<u8> {
        let mut a = vec![0u8; len as usize];
        a[..4].copy_from_slice(&ty.to_le_bytes());
        a[4..8].copy_from_slice(&len.to_le_bytes());
        a[8] = non_resident;
        a
    }

    #[test]
    fn fixup_restores_sector_ends_and_headers_are_checked() {
        let volume = record(&attr(0x10, 0x48, 0));
        let r = RawRecord::read(&volume, 0, 1024, "record").unwrap();
        assert_eq!(&r.bytes[510..512], &[0xaa, 0xbb]);
        assert_eq!(&r.bytes[1022..1024], &[0xcc, 0xdd]);
        assert_eq!(r.attributes("record").unwrap().len(), 1);

        let mut torn = record(&attr(0x10, 0x48, 0));
        torn[511] = 9;
        assert!(RawRecord::read(&torn, 0, 1024, "record").is_err());
        // A non-resident header shorter than its sizes, and a length past the record.
        for bad in [attr(0x80, 0x20, 1), attr(0x80, 0x10, 0)] {
            let v = record(&bad);
            let err = RawRecord::read(&v, 0, 1024, "record").err().unwrap();
            assert!(err.to_string().contains("header needs"), "{err}");
        }
        let mut long = record(&attr(0x10, 0x48, 0));
        long[0x3c..0x40].copy_from_slice(&5000u32.to_le_bytes());
        assert!(RawRecord::read(&long, 0, 1024, "record").is_err());
    }
}
