//! FAT12, FAT16 and FAT32, read-only: the BIOS parameter block, the first FAT (read once,
//! bounded), cluster chains (loops refused), the fixed root directory of FAT12/16, short
//! names and VFAT long names (checksum-checked), times.
//!
//! Written here rather than on the `fatfs` crate (SPEC.md §24.2): `fatfs` reads files as
//! streams but does not say which clusters hold them, which sparse-aware restores, naming a
//! damaged byte range and `find`'s per-chunk cache need; and it wants a writable device.
//!
//! FAT has no inodes: a file's number here is the volume offset of its short directory
//! entry (the root's is 1), learned when its directory is listed; path resolution always
//! lists a directory before it asks about a name in it. FAT stores local time without a
//! zone: times are reported as if they were UTC. FAT has no owners: uid and gid are 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::image::{Image, Le};
use super::limits::{MAX_DIR_BYTES, MAX_DIR_ENTRIES};
use super::{DirEntry, ExtentData, FileExtent, FileKind, Filesystem, FsError, Stat, Timestamp};

/// The root directory's number.
const ROOT: u64 = 1;
/// Largest FAT read into memory (a FAT32 volume of 2 TiB with 32 KiB clusters has 256 MiB).
const MAX_FAT_BYTES: u64 = 256 << 20;
const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Fat12,
    Fat16,
    Fat32,
}

/// A file or directory as its directory entry describes it.
#[derive(Debug, Clone)]
struct Node {
    stat: Stat,
    first_cluster: u32,
}

/// A FAT filesystem on a volume.
pub struct Fat {
    volume: Arc<dyn Image>,
    width: Width,
    cluster_bytes: u64,
    /// Byte offset of cluster 2.
    data_start: u64,
    clusters: u32,
    /// FAT12/16: the fixed root directory's offset and length.
    root_region: Option<(u64, u64)>,
    table: Vec<u8>,
    nodes: Mutex<HashMap<u64, Node>>,
}

impl Fat {
    /// Reads and checks the boot sector and the first FAT.
    pub fn open(volume: Arc<dyn Image>) -> Result<Self, FsError> {
        let boot = volume.read_vec(0, 512, "the FAT boot sector")?;
        let le = Le::new(&boot, "the FAT boot sector");
        let bps = u64::from(le.u16(11)?);
        let spc = u64::from(le.u8(13)?);
        let reserved = u64::from(le.u16(14)?);
        let fats = u64::from(le.u8(16)?);
        let root_entries = u64::from(le.u16(17)?);
        let total = match le.u16(19)? {
            0 => u64::from(le.u32(32)?),
            n => u64::from(n),
        };
        let fat_sectors = match le.u16(22)? {
            0 => u64::from(le.u32(36)?),
            n => u64::from(n),
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096)
            || !spc.is_power_of_two()
            || reserved == 0
            || fats == 0
            || fat_sectors == 0
        {
            return Err(FsError::corrupt(format!(
                "FAT boot sector: {bps} bytes per sector, {spc} per cluster, {reserved} reserved, {fats} FATs of {fat_sectors} sectors"
            )));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if total <= data_sector || total.saturating_mul(bps) > volume.len() {
            return Err(FsError::corrupt(format!(
                "FAT boot sector: {total} sectors (data from sector {data_sector}) on a volume of {} bytes",
                volume.len()
            )));
        }
        let clusters = (total - data_sector) / spc;
        let width = if clusters < 4085 {
            Width::Fat12
        } else if clusters < 65525 {
            Width::Fat16
        } else {
            Width::Fat32
        };
        let fat_bytes = fat_sectors * bps;
        let needed = match width {
            Width::Fat12 => ((clusters + 2) * 3).div_ceil(2),
            Width::Fat16 => (clusters + 2) * 2,
            Width::Fat32 => (clusters + 2) * 4,
        };
        if fat_bytes > MAX_FAT_BYTES || fat_bytes < needed {
            return Err(FsError::corrupt(format!(
                "a FAT of {fat_bytes} bytes for {clusters} clusters"
            )));
        }
        let fat = volume.read_vec(reserved * bps, fat_bytes as usize, "the FAT")?;
        let (root_region, root_cluster) = if width == Width::Fat32 {
            (None, le.u32(44)?)
        } else {
            (
                Some(((reserved + fats * fat_sectors) * bps, root_entries * 32)),
                0,
            )
        };
        let fs = Self {
            volume,
            width,
            cluster_bytes: spc * bps,
            data_start: data_sector * bps,
            clusters: u32::try_from(clusters)
                .map_err(|_| FsError::corrupt("too many FAT clusters"))?,
            root_region,
            table: fat,
            nodes: Mutex::new(HashMap::new()),
        };
        let root = Node {
            stat: Stat::bare(ROOT, FileKind::Dir, 0o755),
            first_cluster: root_cluster,
        };
        fs.nodes().insert(ROOT, root);
        Ok(fs)
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.nodes().get(&ino).cloned().ok_or_else(|| {
            FsError::corrupt(format!(
                "FAT entry {ino} is not in a directory listed so far"
            ))
        })
    }

    /// The FAT's entry for cluster `c`.
    fn next(&self, c: u32) -> Result<u32, FsError> {
        let at = |i: usize, n: usize| {
            self.table.get(i..i + n).ok_or_else(|| {
                FsError::corrupt(format!("FAT entry of cluster {c} lies past the FAT"))
            })
        };
        let c = c as usize;
        Ok(match self.width {
            Width::Fat12 => {
                let b = at(c + c / 2, 2)?;
                let v = u32::from(u16::from_le_bytes([b[0], b[1]]));
                if c % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xfff
                }
            }
            Width::Fat16 => {
                let b = at(2 * c, 2)?;
                u32::from(u16::from_le_bytes([b[0], b[1]]))
            }
            Width::Fat32 => {
                let b = at(4 * c, 4)?;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0fff_ffff
            }
        })
    }

    fn is_end(&self, v: u32) -> bool {
        match self.width {
            Width::Fat12 => v >= 0xff8,
            Width::Fat16 => v >= 0xfff8,
            Width::Fat32 => v >= 0x0fff_fff8,
        }
    }

    /// The runs of clusters of the chain from `first` as (volume offset, bytes), at most
    /// `max_bytes` of them (a chain longer than its file is cut, not read).
    fn chain(&self, first: u32, max_bytes: u64) -> Result<Vec<(u64, u64)>, FsError> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut c = first;
        // A cluster met twice is a loop, even one shorter than the file's length.
        let mut visited = std::collections::HashSet::new();
        let mut bytes = 0u64;
        while bytes < max_bytes {
            if c < 2 || c >= self.clusters + 2 {
                return Err(FsError::corrupt(format!(
                    "a FAT cluster chain names cluster {c}, outside 2..{}",
                    self.clusters + 2
                )));
            }
            if !visited.insert(c) {
                return Err(FsError::corrupt(format!(
                    "the FAT cluster chain from cluster {first} loops"
                )));
            }
            let offset = self.data_start + u64::from(c - 2) * self.cluster_bytes;
            match runs.last_mut() {
                Some((start, len)) if *start + *len == offset => *len += self.cluster_bytes,
                _ => runs.push((offset, self.cluster_bytes)),
            }
            bytes += self.cluster_bytes;
            let next = self.next(c)?;
            if self.is_end(next) {
                break;
            }
            c = next;
        }
        Ok(runs)
    }

    /// Where a directory's entries are: (volume offset, bytes) runs.
    fn dir_runs(&self, node: &Node) -> Result<Vec<(u64, u64)>, FsError> {
        match self.root_region {
            Some(region) if node.stat.ino == ROOT => Ok(vec![region]),
            _ => self.chain(node.first_cluster, MAX_DIR_BYTES),
        }
    }
}

/// The volume offset of byte `at` of the bytes `runs` hold end to end.
fn offset_in(runs: &[(u64, u64)], mut at: u64) -> u64 {
    for (offset, len) in runs {
        if at < *len {
            return offset + at;
        }
        at -= len;
    }
    0
}

impl Filesystem for Fat {
    fn kind(&self) -> &'static str {
        match self.width {
            Width::Fat12 => "fat12",
            Width::Fat16 => "fat16",
            Width::Fat32 => "fat32",
        }
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        Ok(self.node(ino)?.stat)
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node(ino)?;
        if node.stat.kind != FileKind::Dir {
            return Err(FsError::NotADirectory {
                path: format!("FAT entry {ino}"),
            });
        }
        let runs = self.dir_runs(&node)?;
        let mut bytes = Vec::new();
        for (offset, len) in &runs {
            bytes.append(
                &mut self
                    .volume
                    .read_vec(*offset, *len as usize, "a FAT directory")?,
            );
        }
        let entries = parse_dir(&bytes)?;
        let mut nodes = self.nodes();
        let mut out = Vec::new();
        for (i, e) in entries {
            // An entry is numbered by where its short entry is on the volume.
            let number = offset_in(&runs, 32 * i as u64);
            let mut stat = e.stat;
            stat.ino = number;
            nodes.insert(
                number,
                Node {
                    stat,
                    first_cluster: e.first_cluster,
                },
            );
            out.push(DirEntry {
                name: e.name,
                ino: number,
            });
        }
        Ok(out)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        Err(FsError::corrupt(format!(
            "FAT entry {ino} is not a symlink: FAT has none"
        )))
    }

    fn extents(&self, ino: u64) -> Result<Vec<FileExtent>, FsError> {
        let node = self.node(ino)?;
        let size = node.stat.size;
        if node.stat.kind != FileKind::File || size == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut pos = 0u64;
        for (offset, len) in self.chain(node.first_cluster, size)? {
            let len = len.min(size - pos);
            out.push(FileExtent {
                offset: pos,
                len,
                data: ExtentData::Volume(offset),
            });
            pos += len;
        }
        if pos < size {
            return Err(FsError::corrupt(format!(
                "a FAT file of {size} bytes has a cluster chain of {pos}"
            )));
        }
        Ok(out)
    }
}

/// One entry of a directory, names decoded.
struct Parsed {
    name: Vec<u8>,
    stat: Stat,
    first_cluster: u32,
}

/// The live entries of a directory, with their index (in 32-byte slots), without `.`,
/// `..`, volume labels and deleted entries. A long name is used when its checksum matches
/// the short entry that follows it.
fn parse_dir(bytes: &[u8]) -> Result<Vec<(usize, Parsed)>, FsError> {
    let mut out = Vec::new();
    // (ordinal, name part, checksum of the short name it is for), last part first.
    let mut long: Vec<(u8, [u16; 13], u8)> = Vec::new();
    for (i, e) in bytes.chunks_exact(32).enumerate() {
        match e[0] {
            0x00 => break,
            0xe5 => {
                long.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == ATTR_LONG_NAME {
            let ord = e[0];
            if ord & 0x40 != 0 {
                long.clear();
            }
            let mut units = [0u16; 13];
            for (k, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .enumerate()
            {
                units[k] = u16::from_le_bytes([e[*at], e[*at + 1]]);
            }
            // A long name has at most 20 parts (255 UTF-16 units); more is not one.
            if long.len() < 20 {
                long.push((ord & 0x1f, units, e[13]));
            } else {
                long.clear();
            }
            continue;
        }
        if attr & ATTR_VOLUME_ID != 0 {
            long.clear();
            continue;
        }
        let short = &e[..11];
        let name = match long_name(&long, short) {
            Some(name) => name,
            None => short_name(short, e[12]),
        };
        long.clear();
        if name == b"." || name == b".." {
            continue;
        }
        if out.len() >= MAX_DIR_ENTRIES {
            return Err(FsError::corrupt(format!(
                "a FAT directory has more than {MAX_DIR_ENTRIES} entries"
            )));
        }
        let le = Le::new(e, "a FAT directory entry");
        let first_cluster = (u32::from(le.u16(20)?) << 16) | u32::from(le.u16(26)?);
        let dir = attr & ATTR_DIRECTORY != 0;
        let mtime = fat_time(le.u16(24)?, le.u16(22)?, 0);
        out.push((
            i,
            Parsed {
                name,
                stat: Stat {
                    ino: 0,
                    kind: if dir { FileKind::Dir } else { FileKind::File },
                    size: if dir { 0 } else { u64::from(le.u32(28)?) },
                    mode: if dir {
                        0o755
                    } else if attr & ATTR_READ_ONLY != 0 {
                        0o444
                    } else {
                        0o644
                    },
                    uid: 0,
                    gid: 0,
                    nlink: 1,
                    mtime,
                    atime: fat_time(le.u16(18)?, 0, 0),
                    ctime: fat_time(le.u16(16)?, le.u16(14)?, le.u8(13)?),
                    rdev: 0,
                },
                first_cluster,
            },
        ));
    }
    Ok(out)
}

/// The long name the collected entries spell, if they are complete, in order, and every one
/// made for `short` (its checksum), as the kernel's vfat and mtools require.
fn long_name(long: &[(u8, [u16; 13], u8)], short: &[u8]) -> Option<Vec<u8>> {
    let sum = short_checksum(short);
    if long.is_empty() || long.iter().any(|(_, _, s)| *s != sum) {
        return None;
    }
    // Stored last part first: ordinals n, n-1, ..., 1.
    let n = long.len();
    let mut units = Vec::with_capacity(13 * n);
    for (k, (ord, part, _)) in long.iter().rev().enumerate() {
        if usize::from(*ord) != k + 1 {
            return None;
        }
        units.extend_from_slice(part);
    }
    let end = units
        .iter()
        .position(|u| *u == 0 || *u == 0xffff)
        .unwrap_or(units.len());
    let name = String::from_utf16(&units[..end]).ok()?;
    (!name.is_empty() && !name.contains('/')).then(|| name.into_bytes())
}

fn short_checksum(short: &[u8]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

/// `NAME.EXT` from an 8.3 entry, lower-cased where the NT flags say so; bytes above 0x7f are
/// taken as Latin-1.
fn short_name(short: &[u8], nt_flags: u8) -> Vec<u8> {
    let part = |bytes: &[u8], lower: bool| -> String {
        let trimmed = bytes
            .iter()
            .rposition(|b| *b != b' ')
            .map_or(&bytes[..0], |i| &bytes[..=i]);
        trimmed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let b = if i == 0 && *b == 0x05 { 0xe5 } else { *b };
                let c = char::from(b);
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let base = part(&short[..8], nt_flags & 0x08 != 0);
    let ext = part(&short[8..11], nt_flags & 0x10 != 0);
    let name = if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    };
    name.replace('/', "_").into_bytes()
}

/// A FAT date and time (2-second resolution, plus tenths of a second up to 199 units of
/// 10 ms) as a timestamp, taken as UTC. A zero date is the epoch.
fn fat_time(date: u16, time: u16, tenths: u8) -> Timestamp {
    let year = 1980 + i32::from(date >> 9);
    let month = u32::from((date >> 5) & 0xf);
    let day = u32::from(date & 0x1f);
    let (h, m, s) = (
        u32::from(time >> 11),
        u32::from((time >> 5) & 0x3f),
        u32::from(time & 0x1f) * 2,
    );
    let Some(date) = chrono::NaiveDate::from_ymd_opt(year, month, day) else {
        return Timestamp::default();
    };
    let Some(at) = date.and_hms_opt(h.min(23), m.min(59), s.min(59)) else {
        return Timestamp::default();
    };
    let extra_ms = u32::from(tenths.min(199)) * 10;
    Timestamp {
        secs: at.and_utc().timestamp() + i64::from(extra_ms / 1000),
        nanos: (extra_ms % 1000) * 1_000_000,
    }
}
