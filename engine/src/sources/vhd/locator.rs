//! The parent of a differencing disk (spec "Dynamic Disk Header Format": parent unique id,
//! parent unicode name, parent locator entries; "Identification of the Parent Hard Disk
//! Image").
//!
//! Locator entries with platform code 0 are unused. Each other entry names
//! `platform data length` bytes at `platform data offset`; the length must be 1..=65536
//! (a Windows path has at most 32767 UTF-16 units) and the data must lie inside the file
//! before the footer. The `platform data space` field is ignored: the specification says it
//! counts sectors, Windows writes bytes.
//!
//! Codes read: `W2ru` (path relative to the child's directory, UTF-16LE), `W2ku` (absolute
//! path, UTF-16LE), `MacX` (a `file://` URL, UTF-8, percent-encoded). Backslashes become
//! slashes and a leading `.\` is dropped; trailing NULs are ignored; absolute paths that are
//! not absolute here (Windows drive letters) are skipped. The deprecated `Wi2r`
//! and `Wi2k` codes are bounds-checked but not followed. Candidates are tried in the order
//! W2ru, W2ku, MacX; the first existing file whose footer unique id equals the parent
//! unique id is the parent. The parent's time stamp is not compared.

use std::path::{Path, PathBuf};

use super::{bad, be_u32, be_u64, read_exact};
use crate::error::Result;
use crate::formats::vhd::{dynamic as h, format_uuid, FOOTER_LEN};
use crate::sources::ReadAt;

/// Longest locator data read.
const MAX_LOCATOR: u64 = 65536;

/// One parent locator entry.
#[derive(Debug, Clone)]
pub struct Locator {
    /// Platform code as text (`W2ku`, …).
    pub code: String,
    /// Offset of the data.
    pub at: u64,
    /// Length of the data.
    pub len: u64,
    /// The path it names, when the code is one tessera follows and the data decodes.
    pub target: Option<String>,
}

/// What a differencing disk says about its parent.
#[derive(Debug, Clone)]
pub struct ParentLink {
    /// Parent unique id.
    pub uuid: [u8; 16],
    /// Parent unicode name (for messages).
    pub name: String,
    /// The locator entries in use.
    pub locators: Vec<Locator>,
}

impl ParentLink {
    /// `parent VHD NAME (UUID)`, for messages.
    pub fn describe(&self) -> String {
        format!("parent VHD {:?} ({})", self.name, format_uuid(&self.uuid))
    }

    /// Candidate files for the parent, in the order tried, with the code naming each.
    /// `W2ru` paths are taken relative to the child's directory; `W2ku` and `MacX` paths
    /// must be absolute here (a Windows path such as `C:/vms/base.vhd` names nothing on
    /// this system and is skipped).
    pub fn candidates(&self, child: &Path) -> Vec<(String, PathBuf)> {
        let dir = child.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for code in ["W2ru", "W2ku", "MacX"] {
            for l in self.locators.iter().filter(|l| l.code == code) {
                let Some(p) = l.target.as_deref().map(PathBuf::from) else {
                    continue;
                };
                if p.is_absolute() {
                    out.push((code.to_string(), p));
                } else if code == "W2ru" {
                    out.push((code.to_string(), dir.join(p)));
                }
            }
        }
        out
    }
}

/// Reads the parent fields of the dynamic header `hdr` (at `hdr_at`) and the locator data.
pub fn read(
    file: &dyn ReadAt,
    path: &Path,
    hdr: &[u8],
    hdr_at: u64,
    end: u64,
) -> Result<ParentLink> {
    let mut uuid = [0u8; 16];
    if let Some(id) = hdr.get(h::PARENT_ID..h::PARENT_ID + 16) {
        uuid.copy_from_slice(id);
    }
    let name = parent_name(hdr.get(h::PARENT_NAME..).unwrap_or_default());
    let mut locators = Vec::new();
    for i in 0..h::LOCATOR_COUNT {
        let e = h::LOCATORS + i * h::LOCATOR_LEN;
        let Some(entry) = hdr.get(e..e + h::LOCATOR_LEN) else {
            break;
        };
        if entry[..4] == [0; 4] {
            continue;
        }
        let code = String::from_utf8_lossy(&entry[..4]).into_owned();
        let len = u64::from(be_u32(entry, 8));
        let at = be_u64(entry, 16);
        let where_ = format!(
            "parent locator {i} ({code:?}, entry at offset {})",
            hdr_at + e as u64
        );
        if len == 0 || len > MAX_LOCATOR {
            return Err(bad(
                path,
                format!(
                    "{where_}: platform data length {len} is out of range (1 to {MAX_LOCATOR})"
                ),
            ));
        }
        if at < FOOTER_LEN || at.checked_add(len).is_none_or(|x| x > end) {
            return Err(bad(path, format!(
                "{where_}: platform data at offset {at} ({len} bytes) lies outside the file's data (512 to {end})"
            )));
        }
        let mut data = vec![0u8; len as usize];
        read_exact(file, path, &mut data, at, "parent locator data")?;
        let target = decode(&code, &data);
        locators.push(Locator {
            code,
            at,
            len,
            target,
        });
    }
    Ok(ParentLink {
        uuid,
        name,
        locators,
    })
}

/// The parent unicode name field (UTF-16BE, 512 bytes, NUL-terminated) at the start of
/// `field`.
pub fn parent_name(field: &[u8]) -> String {
    let units: Vec<u16> = field
        .get(..512)
        .unwrap_or(field)
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The path a locator's data names (see the module docs).
fn decode(code: &str, data: &[u8]) -> Option<String> {
    let text = match code {
        "W2ru" | "W2ku" => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()?
        }
        "MacX" => {
            let url = std::str::from_utf8(data).ok()?.trim_end_matches('\0');
            let rest = url.strip_prefix("file://")?;
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            percent_decode(rest)?
        }
        _ => return None,
    };
    let text = text.trim_end_matches('\0').replace('\\', "/");
    let text = text.strip_prefix("./").map_or(text.clone(), str::to_string);
    (!text.is_empty()).then_some(text)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn locator_paths_decode() {
        let le = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        assert_eq!(
            decode("W2ru", &le(".\\a\\b.vhd")).as_deref(),
            Some("a/b.vhd")
        );
        assert_eq!(
            decode("W2ku", &le("/x/y.vhd\0")).as_deref(),
            Some("/x/y.vhd")
        );
        assert_eq!(
            decode("MacX", b"file://localhost/x/a%20b.vhd").as_deref(),
            Some("/x/a b.vhd")
        );
        assert_eq!(decode("MacX", b"file:///x/%zz"), None);
        assert_eq!(decode("Wi2k", b"C:\\x"), None);
    }
}
