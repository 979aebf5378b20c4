//! ext directory data: linear entries in each block. A hashed (htree) directory is read the
//! same way: its index blocks look like one empty entry spanning the block, so a linear pass
//! sees every name, as e2fsck's does.

use super::super::image::Le;
use super::super::limits::MAX_DIR_ENTRIES;
use super::super::{DirEntry, FsError};

/// Appends the entries of one directory block (or of inline directory data) to `out`,
/// skipping `.`, `..`, deleted entries (inode 0) and checksum tails.
pub(super) fn parse_block(
    dir_ino: u64,
    bytes: &[u8],
    filetype: bool,
    out: &mut Vec<DirEntry>,
) -> Result<(), FsError> {
    let le = Le::new(bytes, "an ext directory block");
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let ino = le.u32(at)?;
        let rec_len = usize::from(le.u16(at + 4)?);
        let name_len = if filetype {
            usize::from(le.u8(at + 6)?)
        } else {
            usize::from(le.u16(at + 6)?)
        };
        if rec_len < 8 || rec_len % 4 != 0 || at + rec_len > bytes.len() || 8 + name_len > rec_len {
            return Err(FsError::corrupt(format!(
                "ext directory inode {dir_ino}: a malformed entry at byte {at} of a block (record length {rec_len}, name length {name_len})"
            )));
        }
        if ino != 0 {
            let name = le.bytes(at + 8, name_len)?;
            if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                return Err(FsError::corrupt(format!(
                    "ext directory inode {dir_ino}: an entry at byte {at} has an invalid name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            if name != b"." && name != b".." {
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(FsError::corrupt(format!(
                        "ext directory inode {dir_ino} has more than {MAX_DIR_ENTRIES} entries"
                    )));
                }
                out.push(DirEntry {
                    name: name.to_vec(),
                    ino: u64::from(ino),
                });
            }
        }
        at += rec_len;
    }
    Ok(())
}
