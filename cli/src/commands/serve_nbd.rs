//! `tessera serve-nbd`.

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(
    _repo: &Path,
    _snapshot: &str,
    _listen: &str,
    _socket: Option<&Path>,
    _cache_mib: u64,
    _json: bool,
) -> Result<i32> {
    bail!("serve-nbd is not implemented yet")
}
