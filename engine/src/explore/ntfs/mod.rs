//! NTFS, read-only, on the `ntfs` crate (Colin Finck's, from ReactOS): the boot sector, MFT
//! records by number (update sequences applied), attribute lists, directory indexes (B+
//! trees of $FILE_NAME keys), $STANDARD_INFORMATION, reparse points, and the data runs of
//! non-resident attributes, which give the extents (SPEC.md §24.2).
//!
//! Why the crate, unlike ext4 and FAT: it is maintained, reads only, forbids unsafe code,
//! checks most on-disk values with checked arithmetic, and exposes a non-resident
//! attribute's data runs, so extents, holes and damaged byte ranges work as for the other
//! readers. What it keeps to itself (the initialized size, the record's base reference) or
//! does not check (a header shorter than its fields) tessera reads from the record itself
//! (`record.rs`); what it may still panic or loop on is bounded by a read budget
//! (`reader.rs`) and caught (`guard.rs`).
//!
//! Numbers: an inode is an MFT record number; the root is 5. Records below 24 other than the
//! root are NTFS's own ($MFT, $Extend, ...) and never listed. Names are UTF-16, shown as
//! UTF-8 (WTF-8 for a lone surrogate: `names.rs`); a DOS 8.3 name is listed only when its
//! file has no other name in the directory. NTFS has no Unix owners or modes: uid and gid are
//! 0, files 0o644 (0o444 with the read-only attribute), directories 0o755. Times come from
//! $STANDARD_INFORMATION (what Windows and ntfs-3g show); ctime is the MFT record's change
//! time. A hard link count counts the names that are not DOS names.
//!
//! Symlinks are reparse points (`mklink`) or, as ntfs-3g writes them by default, Interix
//! (Services for Unix) symlinks: a file with the system attribute whose data is `IntxLNK\x01`
//! and the target in UTF-16. Interix FIFOs, sockets and devices read as the files they are.
//!
//! Refused with [`FsError::Unsupported`] when read (listed and `stat`ed normally):
//! NTFS-compressed and EFS-encrypted $DATA, and reparse points other than symlinks and
//! junctions (WOF-compressed system files, deduplicated or cloud files), whose bytes are
//! not in their $DATA. The $LogFile is not replayed.

mod data;
mod guard;
mod names;
mod reader;
mod record;
mod reparse;

use std::sync::Arc;

use ::ntfs::structured_values::{
    NtfsFileAttributeFlags, NtfsFileName, NtfsFileNamespace, NtfsIndexRoot,
};
use ::ntfs::{NtfsAttributeType, NtfsError, NtfsFile, NtfsFileFlags, NtfsReadSeek};

use super::image::{Image, Le};
use super::limits::{
    MAX_DIR_ENTRIES, MAX_NTFS_INDEX_READ, MAX_NTFS_METADATA_READ, MAX_REPARSE_BYTES,
};
use super::{DirEntry, FileExtent, FileKind, Filesystem, FsError, Stat};
use data::{Data, FLAG_COMPRESSED, FLAG_ENCRYPTED};
use guard::guarded;
use reader::{Failure, Reader};
use record::RawRecord;
use reparse::Reparse;

/// The root directory's record number.
const ROOT: u64 = 5;
/// Records below this one are NTFS's own (12..24 are reserved for more of them).
const FIRST_USER_RECORD: u64 = 24;
/// Most bytes of a file record (NTFS uses 1024, rarely 4096).
const MAX_RECORD_BYTES: u32 = 4096;

/// An NTFS filesystem on a volume.
pub struct Ntfs {
    volume: Arc<dyn Image>,
    fs: ::ntfs::Ntfs,
}

/// What [`Ntfs::describe`] learns of a record.
struct Described {
    stat: Stat,
    /// A regular file's unnamed $DATA.
    data: Data,
    /// The tag of a reparse point that is not a symlink or junction.
    other_tag: Option<u32>,
    /// A symlink's target.
    target: Option<Vec<u8>>,
}

/// A file record as both the crate and tessera read it.
struct Record<'n> {
    file: NtfsFile<'n>,
    raw: RawRecord,
}

impl Ntfs {
    /// Checks the boot sector, then opens the volume with the crate and checks the root.
    pub fn open(volume: Arc<dyn Image>) -> Result<Self, FsError> {
        check_boot_sector(volume.as_ref())?;
        let fs = guarded(&|| "the NTFS boot sector".to_string(), || {
            let mut r = Reader::new(volume.as_ref(), MAX_NTFS_METADATA_READ);
            let fs = ::ntfs::Ntfs::new(&mut r);
            check_result(fs, &mut r, &|| "the NTFS boot sector".to_string())
        })?;
        // The crate reads record 0's $DATA to find every other record: check it first.
        let mft = fs
            .mft_position()
            .value()
            .map_or(0, std::num::NonZeroU64::get);
        RawRecord::read(
            volume.as_ref(),
            mft,
            fs.file_record_size(),
            "MFT record 0 ($MFT)",
        )?;
        let this = Self { volume, fs };
        if this.stat(ROOT)?.kind != FileKind::Dir {
            return Err(FsError::corrupt(
                "the NTFS root (MFT record 5) is not a directory",
            ));
        }
        Ok(this)
    }

    /// The raw, checked copy of a record the crate loaded.
    fn raw_record(&self, file: &NtfsFile<'_>, number: u64) -> Result<RawRecord, FsError> {
        let at = file.position().value().map_or(0, std::num::NonZeroU64::get);
        RawRecord::read(
            self.volume.as_ref(),
            at,
            self.fs.file_record_size(),
            &format!("MFT record {number}"),
        )
    }

    /// Runs `f` on base record `ino` (in use), with a reader of the metadata budget, under
    /// the crate's panic guard.
    fn with_record<T>(
        &self,
        ino: u64,
        f: impl FnOnce(&mut Reader<'_>, &Record<'_>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let what = || format!("MFT record {ino}");
        guarded(&what, || {
            let mut r = Reader::new(self.volume.as_ref(), MAX_NTFS_METADATA_READ);
            let file = self.fs.file(&mut r, ino);
            let file = check_result(file, &mut r, &what)?;
            let raw = self.raw_record(&file, ino)?;
            if !file.flags().contains(NtfsFileFlags::IN_USE) {
                return Err(FsError::corrupt(format!(
                    "MFT record {ino} is not in use (a deleted file still named by a directory?)"
                )));
            }
            if raw.base_record()? != 0 {
                return Err(FsError::corrupt(format!(
                    "MFT record {ino} extends record {} and is no file of its own",
                    raw.base_record()?
                )));
            }
            f(&mut r, &Record { file, raw })
        })
    }

    /// The reparse point of a record, if it has one.
    fn reparse(r: &mut Reader<'_>, rec: &Record<'_>, ino: u64) -> Result<Option<Reparse>, FsError> {
        let what = || format!("the reparse point of MFT record {ino}");
        let mut attrs = rec.file.attributes();
        while let Some(item) = attrs.next(r) {
            let item = check_result(item, r, &what)?;
            let attr = check_result(item.to_attribute(), r, &what)?;
            if attr.ty().ok() != Some(NtfsAttributeType::ReparsePoint) {
                continue;
            }
            let len = attr.value_length();
            if len > MAX_REPARSE_BYTES {
                return Err(FsError::corrupt(format!(
                    "{}: {len} bytes, more than {MAX_REPARSE_BYTES}",
                    what()
                )));
            }
            let mut value = check_result(attr.value(r), r, &what)?;
            let mut buf = vec![0u8; len as usize];
            let mut filled = 0;
            while filled < buf.len() {
                let n = check_result(value.read(r, &mut buf[filled..]), r, &what)?;
                if n == 0 {
                    return Err(FsError::corrupt(format!(
                        "{}: its value ends after {filled} of {len} bytes",
                        what()
                    )));
                }
                filled += n;
            }
            return reparse::parse(&buf).map(Some);
        }
        Ok(None)
    }

    /// What record `ino` is: its stat, its $DATA when it is a regular file, the tag of a
    /// reparse point that is not a link, and a link's target.
    fn describe(
        &self,
        r: &mut Reader<'_>,
        rec: &Record<'_>,
        ino: u64,
    ) -> Result<Described, FsError> {
        let what = || format!("MFT record {ino}");
        let standard = check_result(rec.file.info(), r, &what)?;
        let attributes = standard.file_attributes();
        let dir = rec.file.is_directory();
        let reparse = if attributes.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            Self::reparse(r, rec, ino)?
        } else {
            None
        };
        let (mut kind, mut size, mut mode, mut data, mut target) = match reparse {
            Some(Reparse::Link(ref target)) => (
                FileKind::Symlink,
                target.len() as u64,
                0o777,
                Data::Absent,
                Some(target.clone()),
            ),
            _ if dir => (FileKind::Dir, 0, 0o755, Data::Absent, None),
            _ => {
                let data = data::unnamed_data(self, r, &rec.file, &rec.raw, ino)?;
                let mode = if attributes.contains(NtfsFileAttributeFlags::READ_ONLY) {
                    0o444
                } else {
                    0o644
                };
                (FileKind::File, data.size(), mode, data, None)
            }
        };
        if kind == FileKind::File && attributes.contains(NtfsFileAttributeFlags::SYSTEM) {
            if let Some(link) = data::interix_target(&data, self.volume.as_ref(), &what)? {
                (kind, size, mode, data) =
                    (FileKind::Symlink, link.len() as u64, 0o777, Data::Absent);
                target = Some(link);
            }
        }
        if target.as_ref().is_some_and(|t| t.contains(&0)) {
            return Err(FsError::corrupt(format!(
                "{}: a link target with a NUL character",
                what()
            )));
        }
        let stat = Stat {
            ino,
            kind,
            size,
            mode,
            uid: 0,
            gid: 0,
            nlink: Self::link_count(r, rec, ino)?,
            mtime: names::nt_time(standard.modification_time().nt_timestamp()),
            atime: names::nt_time(standard.access_time().nt_timestamp()),
            ctime: names::nt_time(standard.mft_record_modification_time().nt_timestamp()),
            rdev: 0,
        };
        Ok(Described {
            stat,
            data,
            other_tag: match reparse {
                Some(Reparse::Other(tag)) => Some(tag),
                _ => None,
            },
            target,
        })
    }

    /// The names of a record that are not DOS 8.3 names (at least 1).
    fn link_count(r: &mut Reader<'_>, rec: &Record<'_>, ino: u64) -> Result<u32, FsError> {
        let what = || format!("the names of MFT record {ino}");
        let mut count = 0u32;
        let mut attrs = rec.file.attributes();
        while let Some(item) = attrs.next(r) {
            let item = check_result(item, r, &what)?;
            let attr = check_result(item.to_attribute(), r, &what)?;
            if attr.ty().ok() != Some(NtfsAttributeType::FileName) {
                continue;
            }
            let name = check_result(attr.structured_value::<_, NtfsFileName>(r), r, &what)?;
            if name.namespace() != NtfsFileNamespace::Dos {
                count = count.saturating_add(1);
            }
        }
        Ok(count.max(1))
    }
}

/// An error of the crate as an [`FsError`]: the image's own error when reading it failed, a
/// loop when the budget ran out, else what the crate says.
fn check_result<T>(
    result: Result<T, NtfsError>,
    r: &mut Reader<'_>,
    what: &dyn Fn() -> String,
) -> Result<T, FsError> {
    result.map_err(|e| match r.take_failure() {
        Some(Failure::Image(e)) => e,
        Some(Failure::Budget(n)) => FsError::corrupt(format!(
            "{}: reading it took more than {n} bytes of NTFS metadata (a loop in its structures?)",
            what()
        )),
        None => FsError::corrupt(format!("{}: {e}", what())),
    })
}

/// What tessera needs of the boot sector before the crate reads it: sizes the crate accepts
/// but no NTFS uses (file records up to 254 MiB) and a volume larger than the image.
fn check_boot_sector(volume: &dyn Image) -> Result<(), FsError> {
    let boot = volume.read_vec(0, 512, "the NTFS boot sector")?;
    let le = Le::new(&boot, "the NTFS boot sector");
    let sector = u64::from(le.u16(0x0b)?);
    let spc = le.u8(0x0d)?;
    let per_cluster = if spc > 128 {
        1u64.checked_shl(u32::from(spc.wrapping_neg())).unwrap_or(0)
    } else {
        u64::from(spc)
    };
    // Checked: a crafted sectors-per-cluster shift (up to 2^63) must not overflow before it
    // is refused below (0 is refused as a size).
    let cluster = sector.checked_mul(per_cluster).unwrap_or(0);
    let record = match le.u8(0x40)?.cast_signed() {
        n if n > 0 => cluster
            .checked_mul(u64::from(n.unsigned_abs()))
            .unwrap_or(0),
        n => 1u64.checked_shl(u32::from(n.unsigned_abs())).unwrap_or(0),
    };
    let bytes = le.u64(0x28)?.checked_mul(sector);
    let mft = le.u64(0x30)?.checked_mul(cluster);
    let bad = |why: String| Err(FsError::corrupt(format!("the NTFS boot sector: {why}")));
    if !matches!(sector, 512 | 1024 | 2048 | 4096) || !per_cluster.is_power_of_two() || cluster == 0
    {
        return bad(format!(
            "{sector} bytes per sector, {per_cluster} sectors per cluster"
        ));
    }
    if !(1024..=u64::from(MAX_RECORD_BYTES)).contains(&record) || !record.is_power_of_two() {
        return bad(format!("file records of {record} bytes"));
    }
    match bytes {
        Some(b) if b <= volume.len() => {}
        _ => {
            return bad(format!(
                "{} sectors of {sector} bytes on a volume of {} bytes",
                le.u64(0x28)?,
                volume.len()
            ))
        }
    }
    match mft {
        Some(m) if m > 0 && m < volume.len() => Ok(()),
        _ => bad(format!("the MFT at cluster {}", le.u64(0x30)?)),
    }
}

impl Filesystem for Ntfs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        self.with_record(ino, |r, rec| Ok(self.describe(r, rec, ino)?.stat))
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        self.with_record(ino, |r, rec| {
            let what = || format!("the directory index of MFT record {ino}");
            if !rec.file.is_directory() {
                return Err(FsError::NotADirectory {
                    path: format!("MFT record {ino}"),
                });
            }
            Self::check_index_sizes(r, rec, &what)?;
            let index = check_result(rec.file.directory_index(r), r, &what)?;
            let mut entries = index.entries();
            let mut found: Vec<(Vec<u8>, u64, bool)> = Vec::new();
            while let Some(entry) = entries.next(r) {
                let entry = check_result(entry, r, &what)?;
                let Some(key) = entry.key() else { continue };
                let key = check_result(key, r, &what)?;
                if found.len() >= MAX_DIR_ENTRIES {
                    return Err(FsError::corrupt(format!(
                        "{}: more than {MAX_DIR_ENTRIES} entries",
                        what()
                    )));
                }
                found.push((
                    names::wtf8(key.name().0),
                    entry.file_reference().file_record_number(),
                    key.namespace() == NtfsFileNamespace::Dos,
                ));
            }
            Ok(listing(found))
        })
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.with_record(ino, |r, rec| {
            self.describe(r, rec, ino)?.target.ok_or_else(|| {
                FsError::corrupt(format!("MFT record {ino} is not a symlink or junction"))
            })
        })
    }

    fn extents(&self, ino: u64) -> Result<Vec<FileExtent>, FsError> {
        self.with_record(ino, |r, rec| {
            let Described {
                stat,
                data,
                other_tag: other,
                ..
            } = self.describe(r, rec, ino)?;
            if stat.kind != FileKind::File {
                return Ok(Vec::new());
            }
            let state = match (&data, other) {
                (_, Some(tag)) => Some(format!(
                    "reparse-point (tag {tag:#x}: WOF-compressed, deduplicated or a cloud file)"
                )),
                (d, _) if d.flags() & FLAG_ENCRYPTED != 0 => Some("EFS-encrypted".to_string()),
                (Data::NonResident { flags, .. }, _) if flags & FLAG_COMPRESSED != 0 => {
                    Some("NTFS-compressed".to_string())
                }
                _ => None,
            };
            if let Some(state) = state {
                return Err(FsError::Unsupported(format!(
                    "MFT record {ino} is an {state} file, whose bytes tessera does not decode: \
                     restore or `tessera serve-nbd` the disk and read it in Windows or ntfs-3g"
                )));
            }
            data::extents(data, self.volume.len(), &|| format!("MFT record {ino}"))
        })
    }
}

impl Ntfs {
    /// Refuses an index whose record size the crate would allocate unchecked, or whose
    /// allocation is larger than a directory may be; grants the read budget the `$I30`
    /// allocation needs, once (each index record is read once by a walk that does not
    /// loop). The crate keeps one index record per level of its walk in memory, so what a
    /// loop in the tree can make it hold is bounded by the budget: at most
    /// [`MAX_NTFS_INDEX_READ`] plus the metadata budget, however many allocation attributes
    /// (of any name, or repeated through an attribute list) a record claims.
    fn check_index_sizes(
        r: &mut Reader<'_>,
        rec: &Record<'_>,
        what: &dyn Fn() -> String,
    ) -> Result<(), FsError> {
        let mut granted = false;
        let mut attrs = rec.file.attributes();
        while let Some(item) = attrs.next(r) {
            let item = check_result(item, r, what)?;
            let attr = check_result(item.to_attribute(), r, what)?;
            match attr.ty().ok() {
                Some(NtfsAttributeType::IndexRoot) => {
                    if !attr.is_resident() {
                        return Err(FsError::corrupt(format!("{}: a non-resident root", what())));
                    }
                    let root =
                        check_result(attr.resident_structured_value::<NtfsIndexRoot>(), r, what)?;
                    let size = root.index_record_size();
                    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
                        return Err(FsError::corrupt(format!(
                            "{}: index records of {size} bytes",
                            what()
                        )));
                    }
                }
                Some(NtfsAttributeType::IndexAllocation) => {
                    let len = attr.value_length();
                    if len > MAX_NTFS_INDEX_READ {
                        return Err(FsError::corrupt(format!(
                            "{}: {len} bytes of index, more than the {MAX_NTFS_INDEX_READ} tessera reads of one directory",
                            what()
                        )));
                    }
                    let i30 = attr.name().is_ok_and(|n| n == "$I30");
                    if i30 && !granted {
                        r.allow(len);
                        granted = true;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The names a directory shows from its index entries (name, record, whether a DOS name):
/// no `.`, no NTFS metafiles, and a DOS name only for a record that has no other name here.
fn listing(found: Vec<(Vec<u8>, u64, bool)>) -> Vec<DirEntry> {
    let long: std::collections::HashSet<u64> = found
        .iter()
        .filter(|(_, _, dos)| !dos)
        .map(|(_, n, _)| *n)
        .collect();
    found
        .into_iter()
        .filter(|(name, number, dos)| {
            name.as_slice() != b"."
                && (*number >= FIRST_USER_RECORD || *number == ROOT)
                && !(*dos && long.contains(number))
        })
        .map(|(name, ino, _)| DirEntry { name, ino })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_hide_dot_metafiles_and_shadowed_dos_names() {
        let found = vec![
            (b".".to_vec(), 5, false),
            (b"$MFT".to_vec(), 0, false),
            (b"$Extend".to_vec(), 11, false),
            (b"Long Name.txt".to_vec(), 40, false),
            (b"LONGNA~1.TXT".to_vec(), 40, true),
            (b"ORPHAN~1".to_vec(), 41, true),
            (b"hard".to_vec(), 40, false),
        ];
        let names: Vec<(Vec<u8>, u64)> = listing(found)
            .into_iter()
            .map(|e| (e.name, e.ino))
            .collect();
        assert_eq!(
            names,
            vec![
                (b"Long Name.txt".to_vec(), 40),
                (b"ORPHAN~1".to_vec(), 41),
                (b"hard".to_vec(), 40)
            ]
        );
    }
}
