//! `tessera init`: a new, empty repository, and the report of its parameters.

use std::path::Path;

use serde::Serialize;
use tessera_format::RepoId;

use crate::error::Result;
use crate::repo::{InitOptions, Repository};
use crate::serde_ids;

/// What `init` created.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// Where.
    pub repo: String,
    /// The new repository's id.
    #[serde(serialize_with = "serde_ids::hex")]
    pub repository_id: RepoId,
    /// Its default block size.
    pub block_size: u32,
    /// Its compression of new data (`zstd:LEVEL` or `none`).
    pub compression: String,
    /// The format version it is written in.
    pub format_version: u32,
}

/// Creates a repository at `root` (see [`Repository::init`]).
pub fn init(root: &Path, opts: InitOptions) -> Result<InitReport> {
    let config = Repository::init(root, opts)?;
    Ok(InitReport {
        repo: root.display().to_string(),
        repository_id: config.repo_id,
        block_size: config.default_block_size,
        compression: config.compression.to_string(),
        format_version: config.format_version,
    })
}
