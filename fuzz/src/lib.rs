//! Helpers shared by the fuzz targets.
//!
//! The engine targets' checks live in one module each ([`vhd`], [`qcow2`],
//! [`changed_list`], [`bundle_manifest`], [`explore`], [`nbd_client`], [`nbd_server`], [`http_bodies`], [`xo`]), over invariants in [`checks`];
//! the rest of this file serves the `tessera-format` targets.
//!
//! Most structures end in a CRC-32C over everything before it. libFuzzer can often solve
//! such a check (it sees the comparison), but each target also decodes a *re-sealed* copy
//! of its input, with the checksums recomputed, so that every input reaches the field
//! parsing behind them. Every target then checks the invariant that makes a decoder
//! trustworthy, not just the absence of a panic: whatever decodes re-encodes to exactly
//! the bytes it was decoded from (hence to bytes that decode to the same value).

pub mod bundle_manifest;
pub mod changed_list;
pub mod checks;
pub mod explore;
pub mod http_bodies;
pub mod nbd_client;
pub mod nbd_server;
pub mod qcow2;
pub mod vhd;
pub mod xo;

/// `data` with its last 4 bytes replaced by the CRC-32C of the bytes before them, or
/// `None` when `data` is shorter than a CRC.
pub fn resealed(data: &[u8]) -> Option<Vec<u8>> {
    let body = data.len().checked_sub(4)?;
    let mut out = data.to_vec();
    let crc = crc32c::crc32c(&out[..body]);
    out[body..].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// Runs `check` on `data` and on its re-sealed copy.
pub fn raw_and_resealed(data: &[u8], check: impl Fn(&[u8])) {
    check(data);
    if let Some(sealed) = resealed(data) {
        check(&sealed);
    }
}

/// Writes `v` as little-endian at `at` in `bytes`.
pub fn put_u32_at(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
