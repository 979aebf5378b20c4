//! `tessera export`.

use std::path::Path;

use anyhow::{bail, Result};

use crate::output::Bars;

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line option"
)]
pub fn run(
    _repo: &Path,
    _snapshot: &str,
    _out: &Path,
    _format: &str,
    _base: Option<&str>,
    _backing: Option<&str>,
    _force: bool,
    _json: bool,
    _bars: &Bars,
) -> Result<i32> {
    bail!("export is not implemented yet")
}
