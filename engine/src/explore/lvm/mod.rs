//! LVM2 physical volumes: the volume group a disk (or partition) belongs to, read from the
//! PV's own metadata, and its linear logical volumes as volumes of their own.
//!
//! On disk (all integers little-endian): a label in one of the first four 512-byte sectors
//! (`LABELONE`, its sector number, a CRC, the offset of the PV header, `LVM2 001`); the PV
//! header (the PV's UUID, its size, then zero-terminated lists of data areas and metadata
//! areas as (offset, size) pairs); in the first metadata area, a header (`\x20LVM2
//! x[5A%r0N*>`, version 1, the area's start and size, then (offset, size, checksum, flags)
//! locations of the metadata text, which may wrap around the area's end back to just after
//! the header). The text (`text.rs`) names the VG's extent size, its PVs (UUID, first
//! extent's sector) and its LVs as segments of extents on PVs.
//!
//! What is read: logical volumes whose every segment is linear (`striped` with one stripe)
//! on the PV of this disk. Anything else (striped, mirrored, RAID, thin, cache, snapshot
//! LVs, an LV with extents on another disk) is refused by name: reading it as linear would
//! return wrong bytes. Checksums are not verified (the metadata's structure and every
//! extent range are); a damaged text fails to parse or names ranges outside the PV.

mod text;

use std::sync::Arc;

use serde::Serialize;

use super::image::{check_range, Image, Le};
use super::FsError;
use text::Value;

/// Bytes of one LVM sector.
const SECTOR: u64 = 512;
/// The metadata text read at most (LVM's default metadata area is 1 MiB).
const MAX_TEXT: u64 = 16 << 20;
/// Most segments one LV may have.
const MAX_SEGMENTS: usize = 1 << 16;
const MDA_MAGIC: &[u8; 16] = b"\x20LVM2\x20x[5A%r0N*>";
/// A metadata location flag: LVM no longer updates this area (its text may be stale).
const RAW_LOCN_IGNORED: u32 = 1;
/// Most logical volumes one VG may list (LVM's practical limits are far lower).
const MAX_LVS: usize = 4096;

/// The sector offset of the label, if there is one.
fn find_label(volume: &dyn Image) -> Result<Option<u64>, FsError> {
    for sector in 0..4u64 {
        let at = sector * SECTOR;
        if at + SECTOR > volume.len() {
            break;
        }
        let raw = volume.read_vec(at, 32, "an LVM2 label")?;
        if &raw[..8] == b"LABELONE" && &raw[24..32] == b"LVM2 001" {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// A volume group as one of its physical volumes describes it.
#[derive(Debug, Clone)]
pub struct VolumeGroup {
    /// Its name.
    pub name: String,
    /// Bytes per extent.
    pub extent_bytes: u64,
    /// This PV's name in the metadata (`pv0`).
    pub this_pv: String,
    /// Where this PV's first extent starts, in bytes from the PV's start.
    pub pe_start: u64,
    /// Its logical volumes.
    pub logical_volumes: Vec<LogicalVolume>,
}

/// A logical volume.
#[derive(Debug, Clone, Serialize)]
pub struct LogicalVolume {
    /// `VG/LV`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Why it cannot be read, if it cannot (not linear, or not only on this disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Its linear segments: (LV byte offset, PV byte offset, length).
    #[serde(skip)]
    segments: Vec<(u64, u64, u64)>,
}

/// Reads the volume group that the PV on `volume` belongs to.
pub fn read_volume_group(volume: &dyn Image) -> Result<VolumeGroup, FsError> {
    let label = find_label(volume)?
        .ok_or_else(|| FsError::corrupt("no LVM2 label in the first four sectors"))?;
    let raw = volume.read_vec(label, SECTOR as usize, "an LVM2 label")?;
    let le = Le::new(&raw, "an LVM2 label");
    let header_at = u64::from(le.u32(20)?);
    if !(32..SECTOR - 40).contains(&header_at) {
        return Err(FsError::corrupt(format!(
            "LVM2 label: PV header at byte {header_at}"
        )));
    }
    let pv_uuid: String = le
        .bytes(header_at as usize, 32)?
        .iter()
        .map(|b| *b as char)
        .collect();
    let areas_at = header_at as usize + 40;
    let (_data, metadata) = area_lists(&le, areas_at)?;
    // The first metadata area LVM keeps up to date (one marked ignored keeps stale text).
    let mut text = None;
    for (mda_start, mda_size) in metadata {
        if let Some(current) = metadata_text(volume, mda_start, mda_size)? {
            text = Some(current);
            break;
        }
    }
    let text = text.ok_or_else(|| {
        FsError::Unsupported(
            "the LVM2 PV keeps no metadata (its VG's metadata is on another PV, or it is in no VG)"
                .into(),
        )
    })?;
    volume_group(&text::parse(&text)?, &pv_uuid)
}

/// The data and metadata area lists of a PV header, from byte `at` of the label sector.
type Areas = Vec<(u64, u64)>;

fn area_lists(le: &Le<'_>, mut at: usize) -> Result<(Areas, Areas), FsError> {
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let (offset, size) = (le.u64(at)?, le.u64(at + 8)?);
            at += 16;
            if offset == 0 && size == 0 {
                break;
            }
            list.push((offset, size));
        }
    }
    let [data, metadata] = lists;
    Ok((data, metadata))
}

/// The current metadata text of the area at `start` (`size` bytes); `None` when the area is
/// marked ignored or holds no text (a PV in no VG).
fn metadata_text(volume: &dyn Image, start: u64, size: u64) -> Result<Option<Vec<u8>>, FsError> {
    check_range(volume.len(), start, size, "the LVM2 metadata area")?;
    let raw = volume.read_vec(start, SECTOR as usize, "the LVM2 metadata area header")?;
    let le = Le::new(&raw, "the LVM2 metadata area header");
    if le.bytes(4, 16)? != MDA_MAGIC {
        return Err(FsError::corrupt(format!(
            "no LVM2 metadata area header at byte {start}"
        )));
    }
    if le.u32(20)? != 1 || le.u64(24)? != start {
        return Err(FsError::corrupt(format!(
            "the LVM2 metadata area header at byte {start} has version {} and says it starts at {}",
            le.u32(20)?,
            le.u64(24)?
        )));
    }
    let (offset, len, flags) = (le.u64(40)?, le.u64(48)?, le.u32(60)?);
    if flags & RAW_LOCN_IGNORED != 0 || (offset == 0 && len == 0) {
        return Ok(None);
    }
    if len > MAX_TEXT || offset < SECTOR || offset >= size {
        return Err(FsError::corrupt(format!(
            "LVM2 metadata text of {len} bytes at {offset} in an area of {size}"
        )));
    }
    // The text may wrap from the area's end to just after its header.
    let first = len.min(size - offset);
    let mut text = volume.read_vec(start + offset, first as usize, "the LVM2 metadata text")?;
    if first < len {
        let rest = len - first;
        if SECTOR + rest > offset {
            return Err(FsError::corrupt("LVM2 metadata text wraps over itself"));
        }
        text.extend(volume.read_vec(start + SECTOR, rest as usize, "the LVM2 metadata text")?);
    }
    Ok(Some(text))
}

fn int(section: &Value, key: &str, what: &str) -> Result<u64, FsError> {
    section
        .get(key)
        .and_then(Value::int)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| FsError::corrupt(format!("LVM2 metadata: {what} has no {key}")))
}

/// The VG in a parsed metadata text: the top-level section with `physical_volumes`.
fn volume_group(top: &Value, pv_uuid: &str) -> Result<VolumeGroup, FsError> {
    let (name, vg) = top
        .items()
        .iter()
        .find(|(_, v)| v.get("physical_volumes").is_some())
        .ok_or_else(|| FsError::corrupt("LVM2 metadata names no volume group"))?;
    let extent_bytes = int(vg, "extent_size", "the VG")?
        .checked_mul(SECTOR)
        .filter(|n| *n > 0)
        .ok_or_else(|| FsError::corrupt("LVM2 metadata: an extent size of 0"))?;
    let pvs = vg
        .get("physical_volumes")
        .map(Value::items)
        .unwrap_or_default();
    let (this_pv, pv) = pvs
        .iter()
        .find(|(_, pv)| {
            pv.get("id")
                .and_then(Value::str)
                .is_some_and(|id| id.replace('-', "") == pv_uuid)
        })
        .ok_or_else(|| {
            FsError::corrupt(format!(
                "LVM2 metadata of VG {name} does not list this PV ({pv_uuid})"
            ))
        })?;
    let pe_start = int(pv, "pe_start", this_pv)?
        .checked_mul(SECTOR)
        .ok_or_else(|| FsError::corrupt("LVM2 metadata: a huge pe_start"))?;
    let pe_count = int(pv, "pe_count", this_pv)?;
    let lvs = vg
        .get("logical_volumes")
        .map(Value::items)
        .unwrap_or_default();
    let mut logical_volumes = Vec::new();
    if lvs.len() > MAX_LVS {
        return Err(FsError::corrupt(format!(
            "LVM2 metadata: VG {name} lists {} logical volumes (at most {MAX_LVS} are read)",
            lvs.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (lv_name, lv) in lvs {
        if !seen.insert(lv_name.as_str()) {
            return Err(FsError::corrupt(format!(
                "LVM2 metadata: VG {name} lists logical volume {lv_name} twice"
            )));
        }
        let full = format!("{name}/{lv_name}");
        let (segments, unreadable) =
            match linear_segments(lv, this_pv, pe_start, pe_count, extent_bytes) {
                Ok(segments) => (segments, None),
                Err(FsError::Unsupported(why)) => (Vec::new(), Some(why)),
                Err(e) => return Err(e),
            };
        let size = lv_size(lv, extent_bytes)?;
        logical_volumes.push(LogicalVolume {
            name: full,
            size,
            unreadable,
            segments,
        });
    }
    Ok(VolumeGroup {
        name: name.clone(),
        extent_bytes,
        this_pv: this_pv.clone(),
        pe_start,
        logical_volumes,
    })
}

fn segments_of(lv: &Value) -> impl Iterator<Item = &Value> {
    lv.items()
        .iter()
        .filter(|(k, v)| k.starts_with("segment") && matches!(v, Value::Section(_)))
        .map(|(_, v)| v)
}

/// An LV's size: the end of its last segment.
fn lv_size(lv: &Value, extent_bytes: u64) -> Result<u64, FsError> {
    let mut extents = 0u64;
    for seg in segments_of(lv) {
        let end = int(seg, "start_extent", "a segment")?.saturating_add(int(
            seg,
            "extent_count",
            "a segment",
        )?);
        extents = extents.max(end);
    }
    extents
        .checked_mul(extent_bytes)
        .ok_or_else(|| FsError::corrupt("LVM2 metadata: an LV larger than 2^64 bytes"))
}

/// An LV's segments as byte ranges of this PV, if it is linear and only on this PV.
fn linear_segments(
    lv: &Value,
    this_pv: &str,
    pe_start: u64,
    pe_count: u64,
    extent_bytes: u64,
) -> Result<Vec<(u64, u64, u64)>, FsError> {
    let mut segments = Vec::new();
    for seg in segments_of(lv) {
        if segments.len() >= MAX_SEGMENTS {
            return Err(FsError::corrupt(
                "LVM2 metadata: an LV with too many segments",
            ));
        }
        let kind = seg.get("type").and_then(Value::str).unwrap_or("");
        let stripes = int(seg, "stripe_count", "a segment").unwrap_or(0);
        if kind != "striped" || stripes != 1 {
            return Err(FsError::Unsupported(format!(
                "a {kind} segment{}: tessera reads linear LVs only",
                if kind == "striped" {
                    format!(" of {stripes} stripes")
                } else {
                    String::new()
                }
            )));
        }
        let start = int(seg, "start_extent", "a segment")?;
        let count = int(seg, "extent_count", "a segment")?;
        let list = match seg.get("stripes") {
            Some(Value::List(list)) => list.as_slice(),
            _ => &[],
        };
        let (Some(pv), Some(first_pe)) = (
            list.first().and_then(Value::str),
            list.get(1)
                .and_then(Value::int)
                .and_then(|n| u64::try_from(n).ok()),
        ) else {
            return Err(FsError::corrupt(
                "LVM2 metadata: a segment without its PV and extent",
            ));
        };
        if pv != this_pv {
            return Err(FsError::Unsupported(format!(
                "extents on {pv}, another physical volume (another disk): tessera reads LVs on one disk"
            )));
        }
        if first_pe.checked_add(count).is_none_or(|end| end > pe_count) {
            return Err(FsError::corrupt(format!(
                "LVM2 metadata: extents {first_pe}+{count} outside the PV's {pe_count}"
            )));
        }
        let bytes = |n: u64| {
            n.checked_mul(extent_bytes)
                .ok_or_else(|| FsError::corrupt("LVM2 metadata: an extent past 2^64 bytes"))
        };
        segments.push((
            bytes(start)?,
            pe_start.saturating_add(bytes(first_pe)?),
            bytes(count)?,
        ));
    }
    segments.sort_unstable();
    let mut end = 0u64;
    for (lv_at, _, len) in &segments {
        if *lv_at != end {
            return Err(FsError::corrupt(
                "LVM2 metadata: an LV's segments leave a gap or overlap",
            ));
        }
        end = end
            .checked_add(*len)
            .ok_or_else(|| FsError::corrupt("LVM2 metadata: an LV larger than 2^64 bytes"))?;
    }
    Ok(segments)
}

impl LogicalVolume {
    /// Where it lies on the PV: (LV byte offset, PV byte offset, length), contiguous from 0.
    pub fn segments(&self) -> &[(u64, u64, u64)] {
        &self.segments
    }
}

impl VolumeGroup {
    /// The LV `name` (`LV` or `VG/LV`) of this PV's group, as a volume of its own, and its
    /// description.
    pub fn open(
        &self,
        volume: Arc<dyn Image>,
        name: &str,
    ) -> Result<(Arc<dyn Image>, LogicalVolume), FsError> {
        let wanted = match name.split_once('/') {
            Some((vg, lv)) if vg == self.name => lv,
            Some(_) => {
                return Err(FsError::NotFound {
                    path: name.to_string(),
                })
            }
            None => name,
        };
        let lv = self
            .logical_volumes
            .iter()
            .find(|lv| lv.name.rsplit('/').next() == Some(wanted))
            .ok_or_else(|| FsError::NotFound {
                path: name.to_string(),
            })?;
        if let Some(why) = &lv.unreadable {
            return Err(FsError::Unsupported(format!(
                "logical volume {}: {why}",
                lv.name
            )));
        }
        for (_, pv_at, len) in &lv.segments {
            check_range(
                volume.len(),
                *pv_at,
                *len,
                &format!("logical volume {}", lv.name),
            )?;
        }
        let image = Arc::new(LvImage {
            pv: volume,
            segments: lv.segments.clone(),
            size: lv.size,
        });
        Ok((image, lv.clone()))
    }

    /// The names (`VG/LV`) of its logical volumes, for messages.
    pub fn names(&self) -> String {
        self.logical_volumes
            .iter()
            .map(|lv| lv.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A linear LV: its segments, read from the PV.
struct LvImage {
    pv: Arc<dyn Image>,
    /// (LV offset, PV offset, length), sorted, contiguous from 0.
    segments: Vec<(u64, u64, u64)>,
    size: u64,
}

impl Image for LvImage {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        check_range(
            self.size,
            offset,
            buf.len() as u64,
            "a read of a logical volume",
        )?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.segments.partition_point(|(start, _, _)| *start <= at);
            let Some((start, pv_at, len)) = i.checked_sub(1).and_then(|i| self.segments.get(i))
            else {
                return Err(FsError::corrupt(
                    "a read of a logical volume outside its segments",
                ));
            };
            let within = at - start;
            let n = ((len - within) as usize).min(buf.len() - done);
            if n == 0 {
                return Err(FsError::corrupt(
                    "a read of a logical volume outside its segments",
                ));
            }
            self.pv.read_at(pv_at + within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}
