//! `tessera init`: a new, empty repository, and the report of its parameters.

use serde::Serialize;
use tessera_format::RepoId;

use crate::error::Result;
use crate::location::RepoLocation;
use crate::repo::InitOptions;
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

/// Creates a repository at `location` (see [`crate::Repository::init_at`]).
pub fn init(location: &RepoLocation, opts: InitOptions) -> Result<InitReport> {
    let (_, config) = location.init(opts)?;
    Ok(InitReport {
        repo: location.to_string(),
        repository_id: config.repo_id,
        block_size: config.default_block_size,
        compression: config.compression.to_string(),
        format_version: config.format_version,
    })
}
