//! Header extensions (qcow2.txt "Header extensions", "Feature name table"): records of
//! `type:u32 length:u32 data`, each padded to a multiple of 8 bytes, after the header and
//! inside the first cluster, up to the end marker (type 0). Used: the backing format name
//! (`0xe2792aca`) and the feature name table (`0x6803f857`: 48-byte entries `type:u8 bit:u8
//! name[46]`), which names unknown incompatible bits in the refusal. Others are skipped.

use crate::formats::qcow2::{EXT_BACKING_FORMAT, EXT_END, EXT_FEATURE_NAMES};
use crate::sources::ReadAt;

/// What the extensions say.
#[derive(Debug, Default)]
pub struct Extensions {
    /// The backing format name.
    pub backing_format: Option<String>,
    /// Names of incompatible feature bits: (bit, name).
    pub incompatible_names: Vec<(u8, String)>,
}

/// Reads `len` bytes at `offset`, refusing ranges past `file_len`.
pub fn read_range(
    file: &dyn ReadAt,
    file_len: u64,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, String> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| format!("{what} at offset {offset} ({len} bytes) lies past the end of the file ({file_len} bytes)"))?;
    let mut buf = vec![0u8; (end - offset) as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("reading {what} at offset {offset}: {e}"))?;
    Ok(buf)
}

/// Walks the extensions in `[start, end)` of the file.
pub fn read(file: &dyn ReadAt, file_len: u64, start: u64, end: u64) -> Result<Extensions, String> {
    let mut out = Extensions::default();
    if start >= end {
        return Ok(out);
    }
    let area = read_range(file, file_len, 0, end, "the first cluster")?;
    let mut pos = start as usize;
    while let Some(head) = area.get(pos..pos + 8) {
        let kind = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if kind == EXT_END {
            break;
        }
        let data = area.get(pos + 8..pos + 8 + len).ok_or_else(|| {
            format!("header extension {kind:#010x} at offset {pos} ({len} bytes) runs past the extension area (which ends at offset {end})")
        })?;
        match kind {
            EXT_BACKING_FORMAT => {
                let name = std::str::from_utf8(data).map_err(|_| {
                    format!("the backing format extension at offset {pos} is not UTF-8")
                })?;
                out.backing_format = Some(name.to_string());
            }
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(48).filter(|e| e[0] == 0) {
                    let name = String::from_utf8_lossy(&entry[2..]);
                    out.incompatible_names
                        .push((entry[1], name.trim_end_matches('\0').to_string()));
                }
            }
            _ => {}
        }
        pos += 8 + len.div_ceil(8) * 8;
    }
    Ok(out)
}
