//! Reparse points: the `REPARSE_DATA_BUFFER` of a $REPARSE_POINT attribute. Symlinks
//! (`IO_REPARSE_TAG_SYMLINK`, what `mklink` and ntfs-3g's `ln -s` make) and junctions
//! (`IO_REPARSE_TAG_MOUNT_POINT`, `mklink /J`) read as symlinks; any other tag (WOF or
//! dedup compression, cloud files, ...) is kept as its number for the reader to refuse the
//! file's data by name.

use crate::explore::image::Le;
use crate::explore::limits::MAX_LINK_TARGET;
use crate::explore::FsError;

use super::names::wtf8;

/// `IO_REPARSE_TAG_SYMLINK`.
pub(super) const TAG_SYMLINK: u32 = 0xa000_000c;
/// `IO_REPARSE_TAG_MOUNT_POINT` (a junction).
pub(super) const TAG_MOUNT_POINT: u32 = 0xa000_0003;
/// `SYMLINK_FLAG_RELATIVE`.
const SYMLINK_RELATIVE: u32 = 1;

/// What a reparse point is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reparse {
    /// A symlink or junction, with its target as a POSIX path.
    Link(Vec<u8>),
    /// Another tag.
    Other(u32),
}

/// Decodes a reparse buffer. A symlink's target is its print name (its substitute name when
/// the print name is empty), with `\` as `/`; an absolute target (`\??\C:\dir\file`, or a
/// junction's) is given from this volume's root (`/dir/file`): the drive letter cannot be
/// resolved here, and the volume a Windows system boots from is its `C:`.
pub(super) fn parse(buf: &[u8]) -> Result<Reparse, FsError> {
    let le = Le::new(buf, "an NTFS reparse point");
    let tag = le.u32(0)?;
    let (path_buffer, relative) = match tag {
        TAG_SYMLINK => (20, le.u32(16)? & SYMLINK_RELATIVE != 0),
        TAG_MOUNT_POINT => (16, false),
        other => return Ok(Reparse::Other(other)),
    };
    let data_len = usize::from(le.u16(4)?);
    if 8 + data_len > buf.len() || path_buffer > 8 + data_len {
        return Err(FsError::corrupt(format!(
            "an NTFS reparse point of tag {tag:#x} claims {data_len} bytes of data in a {}-byte buffer",
            buf.len()
        )));
    }
    let name = |off_at: usize| -> Result<&[u8], FsError> {
        let off = usize::from(le.u16(off_at)?);
        let len = usize::from(le.u16(off_at + 2)?);
        le.bytes(path_buffer + off, len)
    };
    let substitute = name(8)?;
    let print = name(12)?;
    let chosen = if print.is_empty() { substitute } else { print };
    let mut text = wtf8(chosen);
    if !relative {
        for prefix in [&b"\\??\\"[..], b"\\\\?\\"] {
            if text.starts_with(prefix) {
                text.drain(..prefix.len());
            }
        }
        if text.len() >= 2 && text[0].is_ascii_alphabetic() && text[1] == b':' {
            text.drain(..2);
        }
    }
    for b in &mut text {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    if text.is_empty() || text.len() as u64 > MAX_LINK_TARGET {
        return Err(FsError::corrupt(format!(
            "an NTFS reparse point of tag {tag:#x} names a target of {} bytes",
            text.len()
        )));
    }
    Ok(Reparse::Link(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    /// A reparse buffer of `tag` whose substitute and print names are `sub` and `print`.
    fn buffer(tag: u32, flags: Option<u32>, sub: &str, print: &str) -> Vec<u8> {
        let (sub, print) = (utf16(sub), utf16(print));
        let mut data = Vec::new();
        for v in [0, sub.len(), sub.len(), print.len()] {
            data.extend_from_slice(&(v as u16).to_le_bytes());
        }
        if let Some(f) = flags {
            data.extend_from_slice(&f.to_le_bytes());
        }
        data.extend_from_slice(&sub);
        data.extend_from_slice(&print);
        let mut out = tag.to_le_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn symlinks_and_junctions_decode_to_posix_targets() {
        let rel = buffer(TAG_SYMLINK, Some(1), "..\\dir\\été", "..\\dir\\été");
        assert_eq!(parse(&rel).unwrap(), Reparse::Link("../dir/été".into()));
        let abs = buffer(TAG_SYMLINK, Some(0), "\\??\\C:\\Users\\x", "C:\\Users\\x");
        assert_eq!(parse(&abs).unwrap(), Reparse::Link(b"/Users/x".to_vec()));
        let junction = buffer(TAG_MOUNT_POINT, None, "\\??\\D:\\data", "");
        assert_eq!(parse(&junction).unwrap(), Reparse::Link(b"/data".to_vec()));
        assert_eq!(
            parse(&0x8000_0017u32.to_le_bytes()).unwrap(),
            Reparse::Other(0x8000_0017)
        );
    }

    #[test]
    fn names_outside_the_buffer_are_refused() {
        let mut b = buffer(TAG_SYMLINK, Some(1), "a", "a");
        b[8 + 2..8 + 4].copy_from_slice(&400u16.to_le_bytes());
        assert!(parse(&b).is_err());
        let mut short = buffer(TAG_SYMLINK, Some(1), "a", "a");
        short[4..6].copy_from_slice(&1000u16.to_le_bytes());
        assert!(parse(&short).is_err());
        assert!(parse(&buffer(TAG_SYMLINK, Some(1), "", "")).is_err());
        assert!(parse(&[0x0c, 0, 0]).is_err());
    }
}
