//! `tessera init`: a new, empty repository, and the report of its parameters.

use serde::Serialize;
use tessera_format::RepoId;

use crate::crypto::SecretKey;
use crate::error::Result;
use crate::location::RepoLocation;
use crate::repo::{InitOptions, NewKeys};
use crate::serde_ids;

/// What `init` created. Holds nothing secret: the recovery key is returned beside it.
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
    /// The format version it is written in (1 plain, 2 encrypted).
    pub format_version: u32,
    /// How its records are protected: `none` or `aes-256-gcm`.
    pub encryption: String,
    /// Public fingerprint of its keys (hex), when encrypted.
    pub key_fingerprint: Option<String>,
}

/// Creates a repository at `location` (see [`crate::Repository::init_at`]), encrypted when
/// `keys` is given. Returns the report and, for an encrypted repository, its recovery key,
/// which the caller shows once and which is stored nowhere.
pub fn init(
    location: &RepoLocation,
    opts: InitOptions,
    keys: Option<&NewKeys>,
) -> Result<(InitReport, Option<SecretKey>)> {
    let (_, created) = location.init(opts, keys)?;
    let config = created.config;
    Ok((
        InitReport {
            repo: location.to_string(),
            repository_id: config.repo_id,
            block_size: config.default_block_size,
            compression: config.compression.to_string(),
            format_version: config.format_version,
            encryption: config.encryption.name().to_string(),
            key_fingerprint: config.encryption.fingerprint().map(hex::encode),
        },
        created.recovery,
    ))
}
