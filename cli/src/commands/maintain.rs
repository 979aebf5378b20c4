//! `tessera init`.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tessera_engine::{InitOptions, Repository};
use tessera_format::config::validate_block_size;
use tessera_format::Compression;

use crate::args::{parse_size, UsageError};
use crate::output::{bytes, print_json};

pub fn init(repo: &Path, block_size: &str, compression: &str, json: bool) -> Result<i32> {
    let block_size =
        validate_block_size(parse_size(block_size)?).map_err(|e| UsageError(e.to_string()))?;
    let compression = Compression::parse(compression).map_err(|e| UsageError(e.to_string()))?;
    let config = Repository::init(
        repo,
        InitOptions {
            block_size,
            compression,
        },
    )?;
    if json {
        print_json(&json!({
            "ok": true, "repo": repo.display().to_string(), "repository_id": config.repo_id.to_hex(),
            "block_size": config.default_block_size, "compression": config.compression.to_string(),
            "format_version": config.format_version,
        }));
    } else {
        println!(
            "created repository {} (id {}, {} blocks, {})",
            repo.display(),
            config.repo_id,
            bytes(u64::from(config.default_block_size)),
            config.compression
        );
    }
    Ok(0)
}
