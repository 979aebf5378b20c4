//! Encoding shared by server and client: digest lists and record streams.

use tessera_format::pack::{decode_record_header, encode_record_header, RECORD_HEADER_LEN};
use tessera_format::ObjectKind;

use crate::error::{Error, Result};

use super::super::checked::StoredObject;

/// Most digests per `have` request.
pub const MAX_HAVE_DIGESTS: usize = 65_536;
/// Most digests per `get` request.
pub const MAX_GET_DIGESTS: usize = 4096;
/// Largest `put` body.
pub const MAX_PUT_BYTES: u64 = 80 << 20;
/// Most raw bytes the records of one `put` may decode to (their `raw_len` summed): what
/// bounds the server's decompression work and memory per request, whatever the stored
/// bytes are (80 MiB of tiny zstd frames could otherwise claim a terabyte). The client
/// splits its batches to stay under it.
pub const MAX_PUT_RAW_BYTES: u64 = 256 << 20;
/// Largest `get` answer the client accepts, and the largest snapshot file.
pub const MAX_ANSWER_BYTES: u64 = 80 << 20;

pub use crate::serde_ids::{kind_name, parse_kind};

/// Concatenated digests.
pub fn encode_digests(digests: &[[u8; 32]]) -> Vec<u8> {
    digests.concat()
}

/// Splits a body `from` sent into digests; its length must be a multiple of 32 and at most
/// `max` digests.
pub fn decode_digests(body: &[u8], max: usize, from: &str) -> Result<Vec<[u8; 32]>> {
    if !body.len().is_multiple_of(32) || body.len() / 32 > max {
        return Err(Error::UntrustedData {
            from: from.to_string(),
            reason: format!(
                "a digest list of {} bytes is not a multiple of 32 or longer than {max} digests",
                body.len()
            ),
        });
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap_or([0; 32]))
        .collect())
}

/// Appends one record (header + stored bytes); refuses a header that would not decode.
pub fn encode_record(out: &mut Vec<u8>, object: &StoredObject) -> Result<()> {
    let header = encode_record_header(&object.0)
        .map_err(|e| Error::Internal(format!("record header: {e}")))?;
    out.extend_from_slice(&header);
    out.extend_from_slice(&object.1);
    Ok(())
}

/// Splits a record stream `from` sent; every header is checked (magic, CRC, bounded
/// lengths) and must name `kind`. The stored bytes are not checked here (see
/// [`crate::sync::checked`]).
pub fn decode_records(mut body: &[u8], kind: ObjectKind, from: &str) -> Result<Vec<StoredObject>> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    while !body.is_empty() {
        let bad = |reason: String| Error::UntrustedData {
            from: from.to_string(),
            reason: format!("malformed record stream: record at offset {offset}: {reason}"),
        };
        let header = body.get(..RECORD_HEADER_LEN).ok_or_else(|| {
            bad(format!(
                "{} bytes left, a header needs {RECORD_HEADER_LEN}",
                body.len()
            ))
        })?;
        let info = decode_record_header(header).map_err(|e| bad(e.to_string()))?;
        if info.kind != kind {
            return Err(bad(format!(
                "a {:?} where a {kind:?} was expected",
                info.kind
            )));
        }
        let end = RECORD_HEADER_LEN + info.stored_len as usize;
        let stored = body.get(RECORD_HEADER_LEN..end).ok_or_else(|| {
            bad(format!(
                "truncated: {} stored bytes announced",
                info.stored_len
            ))
        })?;
        out.push((info, stored.to_vec()));
        body = body.get(end..).unwrap_or_default();
        offset += end;
    }
    Ok(out)
}
