//! Partition tables: MBR (primary partitions 1–4, logical partitions from 5 in the chain of
//! an extended partition) and GPT (the primary header and entries, CRC-checked, the backup
//! header when the primary is damaged). Sectors are 512 bytes; a GPT written for 4096-byte
//! sectors is found too.

use std::collections::HashSet;

use super::image::{Image, Le};
use super::limits::{MAX_GPT_ENTRIES, MAX_LOGICAL_PARTITIONS};
use super::FsError;

/// Which kind of table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// An MBR (DOS) table.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// Its number: the GPT entry's position from 1, or the MBR number (1–4 primary, 5 on
    /// logical).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The MBR type byte as two hex digits, or the GPT type GUID.
    pub type_id: String,
    /// The GPT partition name (empty on MBR).
    pub name: String,
    /// The GPT unique partition GUID (empty on MBR).
    pub uuid: String,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Table {
    /// MBR or GPT.
    pub kind: TableKind,
    /// Its partitions, in number order.
    pub partitions: Vec<Partition>,
}

impl Table {
    /// The partition `query` names: its number, its GPT name, or its GPT unique GUID
    /// (any case); `None` when none does.
    pub fn find(&self, query: &str) -> Option<&Partition> {
        if let Ok(n) = query.parse::<u32>() {
            return self.partitions.iter().find(|p| p.number == n);
        }
        self.partitions
            .iter()
            .find(|p| p.uuid.eq_ignore_ascii_case(query))
            .or_else(|| self.partitions.iter().find(|p| p.name == query))
    }
}

const SECTOR: u64 = 512;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// MBR partition types of an extended partition (CHS, LBA, Linux).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];
const PROTECTIVE_TYPE: u8 = 0xee;

/// The disk's partition table, or `None` when sector 0 holds none (a bare filesystem; a FAT
/// or NTFS boot sector also ends in 0x55AA, so its entries must make sense as a table).
pub fn read_table(disk: &dyn Image) -> Result<Option<Table>, FsError> {
    if disk.len() < 2 * SECTOR {
        return Ok(None);
    }
    let mbr = disk.read_vec(0, SECTOR as usize, "the MBR")?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    let entries = mbr_entries(&mbr)?;
    if entries.iter().any(|e| e.kind == PROTECTIVE_TYPE) {
        return read_gpt(disk).map(Some);
    }
    if !plausible_mbr(&mbr, &entries, disk.len()) {
        return Ok(None);
    }
    read_mbr(disk, &entries).map(Some)
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    lba: u64,
    sectors: u64,
}

fn mbr_entries(sector: &[u8]) -> Result<[MbrEntry; 4], FsError> {
    let le = Le::new(sector, "an MBR");
    let mut out = [MbrEntry {
        status: 0,
        kind: 0,
        lba: 0,
        sectors: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let at = 446 + 16 * i;
        *e = MbrEntry {
            status: le.u8(at)?,
            kind: le.u8(at + 4)?,
            lba: u64::from(le.u32(at + 8)?),
            sectors: u64::from(le.u32(at + 12)?),
        };
    }
    Ok(out)
}

/// Whether sector 0 reads as a partition table rather than a filesystem's boot sector:
/// status bytes 0 or 0x80, at least one entry, and no entry starting in sector 0. A FAT or
/// NTFS boot sector has a BPB where a table would not (checked by its jump instruction).
fn plausible_mbr(sector: &[u8], entries: &[MbrEntry; 4], disk_len: u64) -> bool {
    let used: Vec<&MbrEntry> = entries.iter().filter(|e| e.kind != 0).collect();
    let boot_sector = matches!(sector[0], 0xeb | 0xe9)
        && (sector[3..11] == *b"NTFS    " || super::detect::looks_like_fat(sector));
    !used.is_empty()
        && !boot_sector
        && entries.iter().all(|e| e.status == 0 || e.status == 0x80)
        && used
            .iter()
            .all(|e| e.lba > 0 && e.lba.saturating_mul(SECTOR) < disk_len)
}

fn read_mbr(disk: &dyn Image, entries: &[MbrEntry; 4]) -> Result<Table, FsError> {
    let mut partitions = Vec::new();
    let mut extended = None;
    for (i, e) in (1u32..).zip(entries) {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        if EXTENDED_TYPES.contains(&e.kind) {
            extended = Some(*e);
            continue;
        }
        partitions.push(mbr_partition(disk, i, e, 0)?);
    }
    if let Some(ext) = extended {
        read_logical(disk, &ext, &mut partitions)?;
    }
    Ok(Table {
        kind: TableKind::Mbr,
        partitions,
    })
}

fn mbr_partition(
    disk: &dyn Image,
    number: u32,
    e: &MbrEntry,
    base: u64,
) -> Result<Partition, FsError> {
    let start = base
        .checked_add(e.lba)
        .and_then(|lba| lba.checked_mul(SECTOR))
        .ok_or_else(|| FsError::corrupt(format!("MBR partition {number} starts past any disk")))?;
    let len = e.sectors * SECTOR;
    if start.checked_add(len).is_none_or(|end| end > disk.len()) {
        return Err(FsError::corrupt(format!(
            "MBR partition {number} ({start}+{len} bytes) lies past the end of the disk ({} bytes)",
            disk.len()
        )));
    }
    Ok(Partition {
        number,
        start,
        len,
        type_id: format!("{:02x}", e.kind),
        name: String::new(),
        uuid: String::new(),
    })
}

/// The logical partitions of extended partition `ext`: each extended boot record names one
/// logical partition (relative to itself) and the next record (relative to `ext`).
fn read_logical(disk: &dyn Image, ext: &MbrEntry, out: &mut Vec<Partition>) -> Result<(), FsError> {
    let mut seen = HashSet::new();
    let mut ebr_lba = ext.lba;
    for number in 5u32.. {
        if !seen.insert(ebr_lba) {
            return Err(FsError::corrupt(format!(
                "the extended partition's chain of boot records loops at sector {ebr_lba}"
            )));
        }
        if seen.len() > MAX_LOGICAL_PARTITIONS {
            return Err(FsError::corrupt(format!(
                "the extended partition chains more than {MAX_LOGICAL_PARTITIONS} logical partitions"
            )));
        }
        let at = ebr_lba.saturating_mul(SECTOR);
        let sector = disk.read_vec(at, SECTOR as usize, "an extended boot record")?;
        if sector[510..512] != [0x55, 0xaa] {
            return Err(FsError::corrupt(format!(
                "the extended boot record at sector {ebr_lba} has no 0x55AA signature"
            )));
        }
        let [logical, next, ..] = mbr_entries(&sector)?;
        if logical.kind != 0 && logical.sectors != 0 {
            out.push(mbr_partition(disk, number, &logical, ebr_lba)?);
        }
        if next.kind == 0 || next.lba == 0 {
            return Ok(());
        }
        ebr_lba = ext.lba.saturating_add(next.lba);
    }
    Ok(())
}

fn read_gpt(disk: &dyn Image) -> Result<Table, FsError> {
    let mut problems = Vec::new();
    for sector in [SECTOR, 4096] {
        let candidates = [1, (disk.len() / sector).saturating_sub(1)];
        for lba in candidates {
            match gpt_at(disk, sector, lba) {
                Ok(table) => return Ok(table),
                Err(e) => problems.push(format!("{sector}-byte sectors, LBA {lba}: {e}")),
            }
        }
    }
    Err(FsError::corrupt(format!(
        "the disk has a protective MBR but no readable GPT ({})",
        problems.join("; ")
    )))
}

fn gpt_at(disk: &dyn Image, sector: u64, lba: u64) -> Result<Table, FsError> {
    let header = disk.read_vec(lba * sector, sector as usize, "a GPT header")?;
    if header[..8] != *GPT_SIGNATURE {
        return Err(FsError::corrupt("no \"EFI PART\" signature"));
    }
    let le = Le::new(&header, "a GPT header");
    let size = le.u32(12)? as usize;
    if !(92..=header.len()).contains(&size) {
        return Err(FsError::corrupt(format!("header size {size}")));
    }
    let mut copy = header[..size].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le.u32(16)? {
        return Err(FsError::corrupt("header CRC mismatch"));
    }
    let entries_lba = le.u64(72)?;
    let count = le.u32(80)?;
    let entry_size = le.u32(84)?;
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(FsError::corrupt(format!(
            "{count} entries of {entry_size} bytes"
        )));
    }
    let bytes = disk.read_vec(
        entries_lba.saturating_mul(sector),
        (count * entry_size) as usize,
        "the GPT partition entries",
    )?;
    if crc32(&bytes) != le.u32(88)? {
        return Err(FsError::corrupt("partition entries CRC mismatch"));
    }
    let mut partitions = Vec::new();
    for (number, entry) in (1u32..).zip(bytes.chunks_exact(entry_size as usize)) {
        let e = Le::new(entry, "a GPT entry");
        let type_guid = e.bytes(0, 16)?;
        if type_guid.iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (e.u64(32)?, e.u64(40)?);
        let start = first.checked_mul(sector);
        let len = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(sector));
        let (Some(start), Some(len)) = (start, len) else {
            return Err(FsError::corrupt(format!(
                "GPT partition {number} spans LBA {first}..={last}"
            )));
        };
        if start.checked_add(len).is_none_or(|end| end > disk.len()) {
            return Err(FsError::corrupt(format!(
                "GPT partition {number} ({start}+{len} bytes) lies past the end of the disk ({} bytes)",
                disk.len()
            )));
        }
        let name_units: Vec<u16> = e
            .bytes(56, 72)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        partitions.push(Partition {
            number,
            start,
            len,
            type_id: guid(type_guid),
            name: String::from_utf16_lossy(&name_units),
            uuid: guid(e.bytes(16, 16)?),
        });
    }
    Ok(Table {
        kind: TableKind::Gpt,
        partitions,
    })
}

/// A GUID in its usual text form: the first three fields are stored little-endian.
pub fn guid(b: &[u8]) -> String {
    if b.len() < 16 {
        return hex::encode(b);
    }
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}
