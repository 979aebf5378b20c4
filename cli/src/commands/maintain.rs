//! `tessera init`.

use std::path::Path;

use anyhow::Result;
use tessera_engine::ops::init::init as init_repository;
use tessera_engine::InitOptions;
use tessera_format::config::validate_block_size;
use tessera_format::Compression;

use crate::args::{parse_size, UsageError};
use crate::doc::print_ok;
use crate::output::bytes;

pub fn init(repo: &Path, block_size: &str, compression: &str, json: bool) -> Result<i32> {
    let block_size =
        validate_block_size(parse_size(block_size)?).map_err(|e| UsageError(e.to_string()))?;
    let compression = Compression::parse(compression).map_err(|e| UsageError(e.to_string()))?;
    let r = init_repository(
        repo,
        InitOptions {
            block_size,
            compression,
        },
    )?;
    if json {
        print_ok(&r);
    } else {
        println!(
            "created repository {} (id {}, {} blocks, {})",
            r.repo,
            r.repository_id,
            bytes(u64::from(r.block_size)),
            r.compression
        );
    }
    Ok(0)
}
