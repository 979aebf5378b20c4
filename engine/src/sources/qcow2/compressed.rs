//! Compressed clusters (qcow2.txt "Compressed Clusters Descriptor", header byte 104).
//!
//! The payload inflates to exactly one cluster; decompression stops there, so bytes after
//! the end of the stream (the rest of the last 512-byte sector, or the start of the next
//! compressed cluster) are ignored. Deflate payloads are raw deflate (no zlib header),
//! zstd payloads one zstd frame. The output is bounded to one cluster whatever the input
//! says; a stream that fails or ends early is an error.

use std::io::Read;

use super::header::Compression;

/// Inflates `payload` into exactly `cluster_size` bytes.
pub fn inflate_cluster(
    kind: Compression,
    payload: &[u8],
    cluster_size: usize,
) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; cluster_size];
    match kind {
        Compression::Deflate => {
            let mut d = flate2::Decompress::new(false);
            d.decompress(payload, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| format!("deflate stream is damaged: {e}"))?;
            let produced = d.total_out();
            if produced != cluster_size as u64 {
                return Err(format!(
                    "deflate stream ends after {produced} of {cluster_size} bytes"
                ));
            }
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| format!("zstd decoder: {e}"))?
                .single_frame();
            let mut filled = 0;
            while filled < cluster_size {
                let n = d
                    .read(out.get_mut(filled..).unwrap_or_default())
                    .map_err(|e| format!("zstd frame is damaged: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "zstd frame ends after {filled} of {cluster_size} bytes"
                    ));
                }
                filled += n;
            }
        }
    }
    Ok(out)
}
