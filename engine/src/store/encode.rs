//! Turning raw bytes into stored bytes and back.

use std::borrow::Cow;
use std::cell::RefCell;

use tessera_format::pack::MAX_OBJECT_LEN;
use tessera_format::{ChunkDigest, Codec, Compression, ObjectInfo, ObjectKind};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// Where [`encode_object`] compresses before copying out the result.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes `raw` for storage in a repository protected by `crypto` (SPEC.md §23.3: an
/// encrypted repository seals chunks and signs pages after compressing them). Compression
/// is kept only when it makes the object smaller; otherwise the raw bytes are stored with
/// [`Codec::None`]. The stored copy is allocated at its exact size (queues of encoded
/// objects are bounded by their lengths); [`compress_into`] and
/// [`RepoCrypto::protect_in_place`] are the allocation-free forms.
pub fn encode_object<'r>(
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: ChunkDigest,
    raw: &'r [u8],
    compression: Compression,
) -> Result<(ObjectInfo, Cow<'r, [u8]>)> {
    let (info, encoded) = encode_plain(kind, digest, raw, compression);
    if !crypto.is_encrypted() {
        return Ok((info, encoded));
    }
    let mut out = Vec::with_capacity(encoded.len() + crypto.overhead());
    crypto
        .protect(
            kind,
            info.codec,
            info.raw_len,
            &digest.0,
            &encoded,
            &mut out,
        )
        .map_err(|e| Error::Internal(format!("sealing {kind:?} {digest}: {e}")))?;
    Ok((
        stored_info(kind, digest, raw.len(), info.codec, &out),
        Cow::Owned(out),
    ))
}

/// [`encode_object`] for a plain repository.
fn encode_plain(
    kind: ObjectKind,
    digest: ChunkDigest,
    raw: &[u8],
    compression: Compression,
) -> (ObjectInfo, Cow<'_, [u8]>) {
    let compressed = SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if scratch.len() < raw.len() {
            scratch.resize(raw.len(), 0);
        }
        let room = scratch.get_mut(..raw.len())?;
        compress_into(raw, compression, room).and_then(|len| room.get(..len).map(<[u8]>::to_vec))
    });
    let codec = if compressed.is_some() {
        Codec::Zstd
    } else {
        Codec::None
    };
    let stored = compressed.map_or(Cow::Borrowed(raw), Cow::Owned);
    (stored_info(kind, digest, raw.len(), codec, &stored), stored)
}

/// Compresses `raw` into `out` with `compression`; returns the compressed length, or `None`
/// when the object is to be stored raw (no compression configured, or the result would not
/// be strictly smaller than `raw` or would not fit `out`). Reuses a per-thread zstd context
/// (creating one per block would dominate small-block backups).
pub fn compress_into(raw: &[u8], compression: Compression, out: &mut [u8]) -> Option<usize> {
    let room = out.len().min(raw.len().saturating_sub(1));
    let out = out.get_mut(..room)?;
    match compression.codec {
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
            // Fails (quickly) when the output would not fit: then the block is stored raw.
            c.compress_to_buffer(raw, out)
                .ok()
                .filter(|&n| n < raw.len())
        }),
    }
}

/// The record header of an object of `raw_len` raw bytes encoded with `codec` whose stored
/// form (after any protection) is `stored`.
pub fn stored_info(
    kind: ObjectKind,
    digest: ChunkDigest,
    raw_len: usize,
    codec: Codec,
    stored: &[u8],
) -> ObjectInfo {
    ObjectInfo {
        kind,
        codec,
        digest,
        raw_len: raw_len as u32,
        stored_len: stored.len() as u32,
        stored_crc: crc32c::crc32c(stored),
    }
}

/// Decodes stored bytes back to raw bytes, refusing to produce more than `raw_len` bytes
/// (no decompression bombs). Returns a reason string on failure.
pub fn decode_stored(codec: Codec, stored: Vec<u8>, raw_len: u32) -> Result<Vec<u8>, String> {
    match codec {
        Codec::None => {
            expect_len(stored.len(), raw_len as usize)?;
            Ok(stored)
        }
        Codec::Zstd => decompress(&stored, raw_len),
    }
}

/// Decompresses a zstd frame that must decode to exactly `raw_len` bytes (at most
/// [`MAX_OBJECT_LEN`]; nothing longer is ever produced).
pub fn decompress(stored: &[u8], raw_len: u32) -> Result<Vec<u8>, String> {
    if raw_len > MAX_OBJECT_LEN {
        return Err(format!("raw length {raw_len} exceeds {MAX_OBJECT_LEN}"));
    }
    let raw = with_decompressor(|d| {
        d.decompress(stored, raw_len as usize)
            .map_err(|e| format!("zstd: {e}"))
    })?;
    expect_len(raw.len(), raw_len as usize)?;
    Ok(raw)
}

/// Decodes stored bytes into `dst`, which must be exactly as long as the raw bytes (so
/// nothing longer can be produced). Returns a reason string on failure.
pub fn decode_into(codec: Codec, stored: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let len = match codec {
        Codec::None => {
            expect_len(stored.len(), dst.len())?;
            dst.copy_from_slice(stored);
            stored.len()
        }
        Codec::Zstd => with_decompressor(|d| {
            d.decompress_to_buffer(stored, dst)
                .map_err(|e| format!("zstd: {e}"))
        })?,
    };
    expect_len(len, dst.len())
}

fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> Result<R, String>,
) -> Result<R, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        f(slot.as_mut().ok_or("no zstd context")?)
    })
}

fn expect_len(actual: usize, expected: usize) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("decoded to {actual} bytes, expected {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{compress_into, decode_stored, encode_object};
    use crate::crypto::RepoCrypto;
    use tessera_format::{ChunkDigest, Codec, Compression, ObjectKind};

    const ZSTD: Compression = Compression {
        codec: Codec::Zstd,
        level: 3,
    };

    fn random(len: usize) -> Vec<u8> {
        (0..len).map(|_| rand::random::<u8>()).collect()
    }

    #[test]
    fn compressible_bytes_compress_into_the_slot_and_decode_back() {
        let raw: Vec<u8> = b"tessera ".iter().copied().cycle().take(65536).collect();
        let mut slot = vec![0u8; raw.len()];
        let n = compress_into(&raw, ZSTD, &mut slot).expect("compresses");
        assert!(n < raw.len() / 10);
        let decoded = decode_stored(Codec::Zstd, slot[..n].to_vec(), 65536).unwrap();
        assert_eq!(decoded, raw);
    }

    #[test]
    fn incompressible_bytes_and_small_slots_are_stored_raw() {
        let raw = random(65536);
        let mut slot = vec![0u8; raw.len()];
        assert_eq!(compress_into(&raw, ZSTD, &mut slot), None);
        let text: Vec<u8> = b"abcd".iter().copied().cycle().take(4096).collect();
        assert_eq!(compress_into(&text, ZSTD, &mut [0u8; 4]), None);
        let none = Compression {
            codec: Codec::None,
            level: 0,
        };
        assert_eq!(compress_into(&text, none, &mut vec![0u8; 4096]), None);
        let (info, stored) = encode_object(
            &RepoCrypto::plain(),
            ObjectKind::Chunk,
            ChunkDigest::of(&raw),
            &raw,
            ZSTD,
        )
        .unwrap();
        assert_eq!((info.codec, &stored[..]), (Codec::None, &raw[..]));
        assert_eq!(info.stored_crc, crc32c::crc32c(&raw));
    }
}
