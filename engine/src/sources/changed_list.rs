//! Changed-block lists: the delta of a raw image or block device, as exported by VMware CBT
//! (`QueryChangedDiskAreas`), Hyper-V RCT, or any tracker that can write a text file.
//!
//! Format (UTF-8 text, one statement per line, `#` starts a comment; see SPEC.md):
//!
//! ```text
//! tessera-changed-blocks v1
//! size 10737418240            # the disk's size in bytes; must match the image
//! base-state cbt:52-a3-17/41  # the tracker's id of the state the changes are relative to
//! state cbt:52-a3-17/42       # the tracker's id of the state after them
//! extent 0 65536              # OFFSET LENGTH, bytes (any alignment)
//! granularity 65536           # for bitmap lines: bytes per bit
//! bitmap 0f00ff               # hex; bit i (least significant first in each byte) = [i*g, (i+1)*g)
//! ```
//!
//! `extent` and `bitmap` statements may be mixed and repeated; bitmap lines continue one
//! another. `base-state *` makes the list an *allocation map* (VMware's changeId `*`): the
//! backup is a full one that reads only the listed ranges and takes everything else as
//! zeros, and records `state` so that the next list can name it as its base. The first backup that uses the list must name a reference snapshot whose disk
//! state is `base-state` (a snapshot taken with the previous list, whose `state` it
//! recorded, or one whose state was set with `--state`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::sources::{normalize_extents, BlockSource, Changes, STATE_KEY};

/// Largest list file read (a bitmap of 64 KiB granularity for a 64 TiB disk is 128 MiB of hex).
const MAX_LIST_BYTES: u64 = 256 << 20;

/// A parsed changed-block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedList {
    /// Disk size the list describes.
    pub size: u64,
    /// State the changes are relative to.
    pub base_state: String,
    /// State after the changes.
    pub state: String,
    /// Changed ranges, normalized.
    pub extents: Vec<(u64, u64)>,
}

impl ChangedList {
    /// Reads and validates a list file.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadImage {
            path: path.display().to_string(),
            format: "changed-block list",
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::Source {
            path: path.to_path_buf(),
            source: e,
        })?;
        if meta.len() > MAX_LIST_BYTES {
            return Err(bad(format!(
                "{} bytes is larger than the {} MiB limit",
                meta.len(),
                MAX_LIST_BYTES >> 20
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::Source {
            path: path.to_path_buf(),
            source: e,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses list text; the error names the line.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
            .filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, "tessera-changed-blocks v1")) => {}
            Some((n, l)) => {
                return Err(format!(
                    "line {n}: expected the header \"tessera-changed-blocks v1\", found {l:?}"
                ))
            }
            None => return Err("the file is empty".into()),
        }
        let (mut size, mut base_state, mut state, mut granularity) = (None, None, None, None);
        let mut extents = Vec::new();
        let mut bit = 0u64;
        for (n, line) in lines {
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let number = |s: &str| -> std::result::Result<u64, String> {
                s.parse::<u64>()
                    .map_err(|_| format!("line {n}: {s:?} is not a number"))
            };
            match word {
                "size" => size = Some(number(rest)?),
                "base-state" if !rest.is_empty() => base_state = Some(rest.to_string()),
                "state" if !rest.is_empty() => state = Some(rest.to_string()),
                "granularity" => {
                    let g = number(rest)?;
                    if g == 0 || !g.is_power_of_two() || g < 512 {
                        return Err(format!(
                            "line {n}: granularity {g} must be a power of two of at least 512"
                        ));
                    }
                    if granularity.is_some_and(|old| old != g) && bit > 0 {
                        return Err(format!("line {n}: granularity changes after bitmap lines"));
                    }
                    granularity = Some(g);
                }
                "extent" => {
                    let mut parts = rest.split_whitespace();
                    let (Some(o), Some(l), None) = (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(format!("line {n}: expected \"extent OFFSET LENGTH\""));
                    };
                    let (o, l) = (number(o)?, number(l)?);
                    let end = o
                        .checked_add(l)
                        .ok_or_else(|| format!("line {n}: extent overflows"))?;
                    extents.push((o, end));
                }
                "bitmap" => {
                    let g = granularity.ok_or_else(|| {
                        format!("line {n}: a bitmap needs a granularity line before it")
                    })?;
                    bit = push_bitmap(rest, g, bit, &mut extents)
                        .map_err(|e| format!("line {n}: {e}"))?;
                }
                _ => return Err(format!("line {n}: unknown statement {line:?}")),
            }
        }
        let size = size.ok_or("missing \"size BYTES\" line")?;
        let base_state = base_state.ok_or("missing \"base-state TOKEN\" line")?;
        let state = state.ok_or("missing \"state TOKEN\" line")?;
        if base_state == state {
            return Err(format!(
                "base-state and state are both {state:?}; a delta must lead to a new state"
            ));
        }
        let mut extents = normalize_extents(extents);
        // Bitmap bits may cover the partial last region; anything else past the end is wrong.
        if let Some(last) = extents.last_mut() {
            if last.0 >= size {
                return Err(format!(
                    "a changed extent starts at {} beyond the disk size {size}",
                    last.0
                ));
            }
            let bitmap_slack = granularity.unwrap_or(0);
            if last.1 > size && last.1 - size >= bitmap_slack.max(1) {
                return Err(format!(
                    "changed extent [{}, {}) ends beyond the disk size {size}",
                    last.0, last.1
                ));
            }
            last.1 = last.1.min(size);
        }
        Ok(Self {
            size,
            base_state,
            state,
            extents,
        })
    }
}

/// Appends the regions of the set bits of hex bitmap `hexits` (bits `first_bit..`) of
/// granularity `g` to `extents`; returns the next bit number.
fn push_bitmap(
    hexits: &str,
    g: u64,
    first_bit: u64,
    extents: &mut Vec<(u64, u64)>,
) -> std::result::Result<u64, String> {
    if !hexits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    let raw = hex::decode(hexits).map_err(|e| format!("bitmap is not hex ({e})"))?;
    let mut bit = first_bit;
    for byte in raw {
        for b in 0..8 {
            if byte & (1 << b) != 0 {
                let start = (bit + b)
                    .checked_mul(g)
                    .ok_or("bitmap reaches past any disk size")?;
                let end = start.saturating_add(g);
                // Merge runs as they come: a 256 MiB list of set bits must not become
                // billions of extents before normalizing.
                match extents.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => extents.push((start, end)),
                }
            }
        }
        bit += 8;
    }
    Ok(bit)
}

/// A full source (raw image or block device) plus the list describing its delta.
pub struct WithChangedList {
    inner: Box<dyn BlockSource>,
    list: ChangedList,
    /// `None` for an allocation map (`base-state *`).
    changes: Option<Changes>,
}

/// The `base-state` of an allocation map.
pub const ALLOCATION_MAP: &str = "*";

impl WithChangedList {
    /// Reads the list at `path` and checks it against `inner`.
    pub fn new(inner: Box<dyn BlockSource>, path: &Path) -> Result<Self> {
        let list = ChangedList::read(path)?;
        if list.size != inner.size() {
            return Err(Error::BadImage {
                path: path.display().to_string(),
                format: "changed-block list",
                reason: format!(
                    "it describes a disk of {} bytes, but the image has {} bytes",
                    list.size,
                    inner.size()
                ),
            });
        }
        let changes = (list.base_state != ALLOCATION_MAP).then(|| Changes {
            base_state: list.base_state.clone(),
            base_description: format!("tracker state {:?} ({})", list.base_state, path.display()),
            extents: list.extents.clone(),
        });
        Ok(Self {
            inner,
            list,
            changes,
        })
    }
}

impl BlockSource for WithChangedList {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        if self.changes.is_some() {
            return self.inner.read_at(offset, buf);
        }
        // Allocation map: read the listed ranges, zeros elsewhere.
        let end = offset + buf.len() as u64;
        buf.fill(0);
        let extents = &self.list.extents;
        let first = extents.partition_point(|&(_, e)| e <= offset);
        let mut read = 0;
        for &(s, e) in extents.get(first..).unwrap_or_default() {
            if s >= end {
                break;
            }
            let (from, to) = (s.max(offset), e.min(end));
            if let Some(dst) = buf.get_mut((from - offset) as usize..(to - offset) as usize) {
                read += self.inner.read_at(from, dst)?;
            }
        }
        Ok(read)
    }
    fn identity(&self) -> Vec<(String, String)> {
        let mut id: Vec<_> = self
            .inner
            .identity()
            .into_iter()
            .filter(|(k, _)| k != STATE_KEY)
            .collect();
        id.push((STATE_KEY.into(), self.list.state.clone()));
        id
    }
    fn changes(&self) -> Option<&Changes> {
        self.changes.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::ChangedList;

    const HEAD: &str = "tessera-changed-blocks v1\nsize 1048576\nbase-state a\nstate b\n";

    #[test]
    fn extents_and_bitmaps_combine() {
        let l = ChangedList::parse(&format!(
            "{HEAD}extent 100 10 # a comment\ngranularity 65536\nbitmap 05\nbitmap 80\n"
        ))
        .unwrap();
        assert_eq!(
            l.extents,
            vec![(0, 65536), (131_072, 196_608), (983_040, 1_048_576)]
        );
    }

    #[test]
    fn bad_lists_say_why() {
        for (text, needle) in [
            ("", "empty"),
            ("hello\n", "header"),
            (
                "tessera-changed-blocks v1\nsize 10\nstate b\n",
                "base-state",
            ),
            (&format!("{HEAD}extent 1048576 1\n"), "beyond"),
            (&format!("{HEAD}extent 1048000 1000\n"), "beyond"),
            (&format!("{HEAD}extent x 1\n"), "not a number"),
            (&format!("{HEAD}bitmap ff\n"), "granularity"),
            (&format!("{HEAD}granularity 100\n"), "power of two"),
            (&format!("{HEAD}granularity 65536\nbitmap f\n"), "odd"),
            (
                &format!("{HEAD}granularity 65536\nbitmap 0000000000000000000001\n"),
                "beyond",
            ),
            (
                &format!("{HEAD}extent 18446744073709551615 2\n"),
                "overflows",
            ),
            (
                "tessera-changed-blocks v1\nsize 1\nbase-state a\nstate a\n",
                "new state",
            ),
            (&format!("{HEAD}frobnicate\n"), "unknown"),
        ] {
            let err = ChangedList::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
