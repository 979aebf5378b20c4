//! Turning raw bytes into stored bytes and back.

use std::borrow::Cow;
use std::cell::RefCell;

use tessera_format::pack::MAX_OBJECT_LEN;
use tessera_format::{ChunkDigest, Codec, Compression, ObjectInfo, ObjectKind};

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes `raw` for storage. Compression is kept only when it makes the object smaller;
/// otherwise the raw bytes are stored with [`Codec::None`]. Reuses a per-thread zstd context
/// (creating one per block would dominate small-block backups).
pub fn encode_object(
    kind: ObjectKind,
    digest: ChunkDigest,
    raw: &[u8],
    compression: Compression,
) -> (ObjectInfo, Cow<'_, [u8]>) {
    let compressed = match compression.codec {
        Codec::None => None,
        Codec::Zstd => COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot
                .as_ref()
                .is_none_or(|(level, _)| *level != compression.level)
            {
                *slot = zstd::bulk::Compressor::new(compression.level)
                    .ok()
                    .map(|c| (compression.level, c));
            }
            let (_, c) = slot.as_mut()?;
            // Room for strictly less than the input: zstd gives up as soon as the output
            // would not be smaller, and nothing bigger than the block is ever allocated.
            let mut out = Vec::with_capacity(raw.len().saturating_sub(1));
            c.compress_to_buffer(raw, &mut out).ok().map(|_| out)
        }),
    };
    let (codec, stored) = match compressed {
        Some(c) if c.len() < raw.len() => (Codec::Zstd, Cow::Owned(c)),
        _ => (Codec::None, Cow::Borrowed(raw)),
    };
    let info = ObjectInfo {
        kind,
        codec,
        digest,
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
        stored_crc: crc32c::crc32c(&stored),
    };
    (info, stored)
}

/// Decodes stored bytes back to raw bytes, refusing to produce more than `raw_len` bytes
/// (no decompression bombs). Returns a reason string on failure.
pub fn decode_stored(codec: Codec, stored: Vec<u8>, raw_len: u32) -> Result<Vec<u8>, String> {
    if raw_len > MAX_OBJECT_LEN {
        return Err(format!("raw length {raw_len} exceeds {MAX_OBJECT_LEN}"));
    }
    let raw = match codec {
        Codec::None => stored,
        Codec::Zstd => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = slot.as_mut().ok_or("no zstd context")?;
            d.decompress(&stored, raw_len as usize)
                .map_err(|e| format!("zstd: {e}"))
        })?,
    };
    if raw.len() == raw_len as usize {
        Ok(raw)
    } else {
        Err(format!(
            "decoded to {} bytes, expected {raw_len}",
            raw.len()
        ))
    }
}
