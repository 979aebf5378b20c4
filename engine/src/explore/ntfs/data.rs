//! A file's unnamed $DATA attribute: resident bytes, or data runs (the crate decodes them)
//! gathered from the base record and, for a file fragmented enough to need an attribute
//! list, from its extension records in VCN order; then the extents tessera reads by.

use ::ntfs::structured_values::NtfsAttributeList;
use ::ntfs::{NtfsAttribute, NtfsAttributeType, NtfsFile};

use super::reader::Reader;
use super::record::{RawAttribute, RawRecord};
use super::{check_result, Ntfs};
use crate::explore::image::check_range;
use crate::explore::limits::MAX_EXTENTS;
use crate::explore::{ExtentData, FileExtent, FsError};

/// The attribute flag of NTFS compression.
pub(super) const FLAG_COMPRESSED: u16 = 0x0001;
/// The attribute flag of EFS encryption.
pub(super) const FLAG_ENCRYPTED: u16 = 0x4000;

/// The unnamed $DATA of a file.
#[derive(Clone)]
pub(super) enum Data {
    /// No $DATA attribute: an empty file.
    Absent,
    /// Stored in the file record.
    Resident { bytes: Vec<u8>, flags: u16 },
    /// Stored in clusters: the runs as (volume byte position, or `None` for a hole; bytes).
    NonResident {
        size: u64,
        initialized: u64,
        flags: u16,
        runs: Vec<(Option<u64>, u64)>,
    },
}

impl Data {
    /// The file's size.
    pub(super) fn size(&self) -> u64 {
        match self {
            Self::Absent => 0,
            Self::Resident { bytes, .. } => bytes.len() as u64,
            Self::NonResident { size, .. } => *size,
        }
    }

    /// The attribute flags.
    pub(super) fn flags(&self) -> u16 {
        match self {
            Self::Absent => 0,
            Self::Resident { flags, .. } | Self::NonResident { flags, .. } => *flags,
        }
    }
}

/// What an Interix symlink's data starts with (ntfs-3g's `ln -s`, Services for Unix).
const INTERIX_LINK: &[u8] = b"IntxLNK\x01";

/// The target of an Interix symlink whose $DATA is `data` (the file has the system
/// attribute), or `None` when the data is not one.
pub(super) fn interix_target(
    data: &Data,
    volume: &dyn crate::explore::Image,
    what: &dyn Fn() -> String,
) -> Result<Option<Vec<u8>>, FsError> {
    let size = data.size();
    let head = INTERIX_LINK.len() as u64;
    if size <= head
        || size > head + 2 * crate::explore::limits::MAX_LINK_TARGET
        || !size.is_multiple_of(2)
    {
        return Ok(None);
    }
    let extents = extents(data.clone(), volume.len(), what)?;
    let bytes = crate::explore::content::read_extents(volume, &extents, size)?;
    Ok(bytes
        .strip_prefix(INTERIX_LINK)
        .map(super::names::wtf8)
        .filter(|t| !t.is_empty()))
}

/// One piece of a non-resident attribute: the runs of one attribute record.
fn runs_of(
    r: &mut Reader<'_>,
    attr: &NtfsAttribute<'_, '_>,
    what: &dyn Fn() -> String,
    out: &mut Vec<(Option<u64>, u64)>,
) -> Result<u64, FsError> {
    let value = check_result(attr.value(r), r, what)?;
    let ::ntfs::attribute_value::NtfsAttributeValue::NonResident(value) = value else {
        return Err(FsError::corrupt(format!(
            "{}: a non-resident $DATA that does not read as one",
            what()
        )));
    };
    let mut bytes = 0u64;
    for run in value.data_runs() {
        let run = check_result(run, r, what)?;
        if out.len() >= MAX_EXTENTS {
            return Err(FsError::corrupt(format!(
                "{}: more than {MAX_EXTENTS} data runs",
                what()
            )));
        }
        let len = run.allocated_size();
        out.push((
            run.data_position().value().map(std::num::NonZeroU64::get),
            len,
        ));
        bytes = bytes.checked_add(len).ok_or_else(|| {
            FsError::corrupt(format!("{}: data runs longer than 2^64 bytes", what()))
        })?;
    }
    Ok(bytes)
}

/// The unnamed $DATA of `file` (record `ino`, read raw as `raw`).
pub(super) fn unnamed_data(
    fs: &Ntfs,
    r: &mut Reader<'_>,
    file: &NtfsFile<'_>,
    raw: &RawRecord,
    ino: u64,
) -> Result<Data, FsError> {
    let what = || format!("the $DATA of MFT record {ino}");
    let attrs = raw.attributes(&what())?;
    if attrs
        .iter()
        .any(|a| a.ty == NtfsAttributeType::AttributeList as u32)
    {
        return listed_data(fs, r, file, raw, ino);
    }
    let Some(raw_attr) = attrs
        .iter()
        .find(|a| a.ty == NtfsAttributeType::Data as u32 && a.name_len == 0)
    else {
        return Ok(Data::Absent);
    };
    let attr = crate_attribute(r, file, raw, raw_attr, &what)?;
    first_piece(r, &attr, raw, raw_attr, &what)
}

/// The crate's view of the attribute `raw_attr` of `file`.
fn crate_attribute<'n, 'f>(
    r: &mut Reader<'_>,
    file: &'f NtfsFile<'n>,
    raw: &RawRecord,
    raw_attr: &RawAttribute,
    what: &dyn Fn() -> String,
) -> Result<NtfsAttribute<'n, 'f>, FsError> {
    let at = raw.position + raw_attr.offset as u64;
    for attr in file.attributes_raw() {
        let attr = check_result(attr, r, what)?;
        if attr.position().value().map(std::num::NonZeroU64::get) == Some(at) {
            return Ok(attr);
        }
    }
    Err(FsError::corrupt(format!(
        "{}: the attribute at byte {at} is not in the record",
        what()
    )))
}

/// The $DATA whose first (or only) attribute record is `attr`.
fn first_piece(
    r: &mut Reader<'_>,
    attr: &NtfsAttribute<'_, '_>,
    raw: &RawRecord,
    raw_attr: &RawAttribute,
    what: &dyn Fn() -> String,
) -> Result<Data, FsError> {
    let flags = raw.attribute_flags(raw_attr)?;
    if raw_attr.resident {
        let value = check_result(attr.value(r), r, what)?;
        let ::ntfs::attribute_value::NtfsAttributeValue::Resident(value) = value else {
            return Err(FsError::corrupt(format!(
                "{}: a resident $DATA that does not read as one",
                what()
            )));
        };
        return Ok(Data::Resident {
            bytes: value.data().to_vec(),
            flags,
        });
    }
    if raw.lowest_vcn(raw_attr)? != 0 {
        return Err(FsError::corrupt(format!(
            "{}: its first piece starts at VCN {}, not 0",
            what(),
            raw.lowest_vcn(raw_attr)?
        )));
    }
    let mut runs = Vec::new();
    runs_of(r, attr, what, &mut runs)?;
    Ok(Data::NonResident {
        size: attr.value_length(),
        initialized: raw.initialized_size(raw_attr)?,
        flags,
        runs,
    })
}

/// The $DATA of a file with an $ATTRIBUTE_LIST: its pieces, wherever they are, in VCN order,
/// each piece starting where the previous one's runs end.
fn listed_data(
    fs: &Ntfs,
    r: &mut Reader<'_>,
    file: &NtfsFile<'_>,
    raw: &RawRecord,
    ino: u64,
) -> Result<Data, FsError> {
    let what = || format!("the $DATA of MFT record {ino} (through its attribute list)");
    let list_attr = file
        .attributes_raw()
        .map(|a| check_result(a, r, &what))
        .find(|a| {
            a.as_ref().map_or(true, |a| {
                a.ty().ok() == Some(NtfsAttributeType::AttributeList)
            })
        })
        .ok_or_else(|| FsError::corrupt(format!("{}: no attribute list", what())))??;
    let list = check_result(
        list_attr.structured_value::<_, NtfsAttributeList>(r),
        r,
        &what,
    )?;
    let mut entries = list.entries();
    let mut pieces = Vec::new();
    while let Some(entry) = entries.next(r) {
        let entry = check_result(entry, r, &what)?;
        if pieces.len() >= MAX_EXTENTS {
            return Err(FsError::corrupt(format!(
                "{}: more than {MAX_EXTENTS} entries",
                what()
            )));
        }
        if entry.ty().ok() == Some(NtfsAttributeType::Data) && entry.name_length() == 0 {
            pieces.push(entry);
        }
    }
    pieces.sort_by_key(|e| e.lowest_vcn().value());
    let Some(first) = pieces.first() else {
        return Ok(Data::Absent);
    };
    if first.lowest_vcn().value() != 0 {
        return Err(FsError::corrupt(format!(
            "{}: its first piece starts at VCN {}",
            what(),
            first.lowest_vcn()
        )));
    }
    let cluster = u64::from(fs.fs.cluster_size());
    let mut data = None;
    let mut covered = 0u64;
    for entry in &pieces {
        let number = entry.base_file_reference().file_record_number();
        let ext;
        let ext_raw;
        let (piece_file, piece_raw) = if number == ino {
            (file, raw)
        } else {
            ext = check_result(entry.to_file(&fs.fs, r), r, &what)?;
            ext_raw = fs.raw_record(&ext, number)?;
            if ext_raw.base_record()? != ino {
                return Err(FsError::corrupt(format!(
                    "{}: MFT record {number} holds a piece but extends record {}",
                    what(),
                    ext_raw.base_record()?
                )));
            }
            (&ext, &ext_raw)
        };
        let attr = check_result(entry.to_attribute(piece_file), r, &what)?;
        let at = attr.position().value().map_or(0, std::num::NonZeroU64::get);
        let raw_attr = piece_raw.attribute_at(at, &what())?;
        if data.is_none() {
            let first = first_piece(r, &attr, piece_raw, &raw_attr, &what)?;
            covered = match &first {
                Data::NonResident { runs, .. } => runs.iter().map(|(_, l)| l).sum(),
                _ => 0,
            };
            data = Some(first);
            continue;
        }
        let Some(Data::NonResident { runs, .. }) = data.as_mut() else {
            return Err(FsError::corrupt(format!(
                "{}: a resident $DATA in several pieces",
                what()
            )));
        };
        let vcn = u64::try_from(entry.lowest_vcn().value()).unwrap_or(u64::MAX);
        // The piece the entry names must itself start there: list entries that all name one
        // attribute would otherwise repeat its runs once per entry.
        if raw_attr.resident
            || piece_raw.lowest_vcn(&raw_attr)? != vcn
            || vcn.checked_mul(cluster) != Some(covered)
        {
            return Err(FsError::corrupt(format!(
                "{}: a piece starts at VCN {vcn}, the pieces before it end at byte {covered}",
                what()
            )));
        }
        covered = covered
            .checked_add(runs_of(r, &attr, &what, runs)?)
            .ok_or_else(|| FsError::corrupt(format!("{}: longer than 2^64 bytes", what())))?;
    }
    Ok(data.unwrap_or(Data::Absent))
}

/// The extents of `data` on a volume of `volume_len` bytes: runs clipped to the size, holes
/// and bytes past the initialized size as zeros, covering `0..size` with no gap.
pub(super) fn extents(
    data: Data,
    volume_len: u64,
    what: &dyn Fn() -> String,
) -> Result<Vec<FileExtent>, FsError> {
    let (size, initialized, runs) = match data {
        Data::Absent => return Ok(Vec::new()),
        Data::Resident { bytes, .. } if bytes.is_empty() => return Ok(Vec::new()),
        Data::Resident { bytes, .. } => {
            return Ok(vec![FileExtent {
                offset: 0,
                len: bytes.len() as u64,
                data: ExtentData::Inline(bytes),
            }])
        }
        Data::NonResident {
            size,
            initialized,
            runs,
            ..
        } => (size, initialized.min(size), runs),
    };
    let mut out: Vec<FileExtent> = Vec::new();
    let mut push = |offset: u64, len: u64, data: ExtentData| {
        if let (Some(last), ExtentData::Zero) = (out.last_mut(), &data) {
            if last.data == ExtentData::Zero && last.offset + last.len == offset {
                last.len += len;
                return;
            }
        }
        out.push(FileExtent { offset, len, data });
    };
    let mut pos = 0u64;
    for (at, alloc) in runs {
        if pos >= size {
            break;
        }
        let len = alloc.min(size - pos);
        match at {
            None => push(pos, len, ExtentData::Zero),
            Some(at) => {
                check_range(volume_len, at, len, &format!("a data run of {}", what()))?;
                let stored = len.min(initialized.saturating_sub(pos));
                if stored > 0 {
                    push(pos, stored, ExtentData::Volume(at));
                }
                if stored < len {
                    push(pos + stored, len - stored, ExtentData::Zero);
                }
            }
        }
        pos += len;
    }
    if pos < size {
        return Err(FsError::corrupt(format!(
            "{}: its data runs hold {pos} of its {size} bytes",
            what()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(size: u64, initialized: u64, runs: Vec<(Option<u64>, u64)>) -> Data {
        Data::NonResident {
            size,
            initialized,
            flags: 0,
            runs,
        }
    }

    #[test]
    fn runs_become_extents_clipped_with_holes_and_unwritten_tails() {
        let what = || "f".to_string();
        // 3 runs: 8 KiB at 4096, a 4 KiB hole, 8 KiB at 65536; 18,000 bytes, 10,000 written.
        let data = nr(
            18_000,
            10_000,
            vec![(Some(4096), 8192), (None, 4096), (Some(65536), 8192)],
        );
        let e = extents(data, 1 << 20, &what).unwrap();
        let want = [
            (0, 8192, ExtentData::Volume(4096)),
            (8192, 18_000 - 8192, ExtentData::Zero),
        ];
        assert_eq!(e.len(), want.len(), "{e:?}");
        for (got, (o, l, d)) in e.iter().zip(want) {
            assert_eq!((got.offset, got.len, &got.data), (o, l, &d));
        }
        let full = extents(
            nr(9000, 9000, vec![(Some(0x1000), 4096), (Some(0x8000), 8192)]),
            1 << 20,
            &what,
        )
        .unwrap();
        assert_eq!(full.len(), 2);
        assert_eq!(full[1].len, 9000 - 4096);
        assert!(extents(nr(9000, 9000, vec![(Some(0), 4096)]), 1 << 20, &what).is_err());
        assert!(extents(nr(10, 10, vec![(Some(1 << 20), 4096)]), 1 << 20, &what).is_err());
        assert!(extents(Data::Absent, 0, &what).unwrap().is_empty());
    }
}
