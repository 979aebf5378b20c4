//! `tessera sync`, `tessera seed`, `tessera serve`.

use anyhow::{bail, Result};

use crate::output::Bars;
use crate::sync_args::{SeedCommand, ServeArgs, SyncArgs};

pub fn sync(_args: &SyncArgs, _json: bool, _bars: &Bars) -> Result<i32> {
    bail!("sync is not implemented yet")
}

pub fn seed(_cmd: &SeedCommand, _json: bool, _bars: &Bars) -> Result<i32> {
    bail!("seed is not implemented yet")
}

pub fn serve(_args: &ServeArgs, _json: bool) -> Result<i32> {
    bail!("serve is not implemented yet")
}
