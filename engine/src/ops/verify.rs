//! `tessera verify` as a request: which snapshots are in scope (`--snapshot`, `--series`),
//! the sample and its seed, the ledger window, and which of these may be combined (SPEC.md
//! §11a). [`VerifyRequest::validate`] refuses a bad combination before any repository is
//! opened; [`run`] resolves the scope in the repository's catalog and runs
//! [`check::verify`].

use tessera_format::SnapshotId;

use crate::error::{Error, Result};
use crate::ops::check::{self, CheckReport, SampleSize, VerifyOptions};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot_ref::SnapshotRef;
use crate::time::Span;

/// What a verification run was asked to do.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest {
    /// Check structure and counts only; read no object.
    pub metadata_only: bool,
    /// Read only what these snapshots need (with `series`: the union).
    pub snapshots: Vec<SnapshotRef>,
    /// Read only what the snapshots of this series need.
    pub series: Option<String>,
    /// Read a random sample of the candidates.
    pub sample: Option<SampleSize>,
    /// Seed of the sample (default: drawn, and reported).
    pub seed: Option<u64>,
    /// Skip objects the ledger says were verified within this span.
    pub skip_verified_within: Option<Span>,
}

impl VerifyRequest {
    /// Refuses combinations that make no sense (usage errors): `--seed` without
    /// `--sample`, and any of the read options with `--metadata-only`.
    pub fn validate(&self) -> Result<()> {
        if self.seed.is_some() && self.sample.is_none() {
            return Err(Error::Usage("--seed only applies to --sample".into()));
        }
        if self.metadata_only
            && (self.sample.is_some()
                || self.skip_verified_within.is_some()
                || !self.snapshots.is_empty()
                || self.series.is_some())
        {
            return Err(Error::Usage(
                "--metadata-only reads no objects: it cannot be combined with --snapshot, --series, --sample or --skip-verified-within".into(),
            ));
        }
        Ok(())
    }

    /// The options of [`check::verify`]: the scope resolved in `repo`'s catalog, the seed
    /// drawn when none was given.
    pub fn options(&self, repo: &Repository) -> Result<VerifyOptions> {
        self.validate()?;
        Ok(VerifyOptions {
            read_data: !self.metadata_only,
            scope: resolve_scope(repo, &self.snapshots, self.series.as_deref())?,
            sample: self
                .sample
                .map(|s| (s, self.seed.unwrap_or_else(random_seed))),
            skip_verified_within_us: self.skip_verified_within.map(|s| s.us),
            use_ledger: true,
        })
    }
}

/// Runs the verification `request` asks for (see the module docs).
pub fn run(
    repo: &Repository,
    request: &VerifyRequest,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    check::verify(repo, &request.options(repo)?, progress)
}

/// The snapshots `refs` and `series` name, each once, in the order named (`None` when
/// neither names any: everything is in scope). An unknown snapshot or a series without
/// snapshots is a usage error.
pub fn resolve_scope(
    repo: &Repository,
    refs: &[SnapshotRef],
    series: Option<&str>,
) -> Result<Option<Vec<SnapshotId>>> {
    if refs.is_empty() && series.is_none() {
        return Ok(None);
    }
    let catalog = repo.index().snapshots()?;
    let mut ids: Vec<SnapshotId> = Vec::new();
    for r in refs {
        ids.push(r.resolve(&catalog)?.0);
    }
    if let Some(series) = series {
        let members: Vec<SnapshotId> = catalog
            .iter()
            .filter(|(_, h)| h.series == series)
            .map(|(id, _)| *id)
            .collect();
        if members.is_empty() {
            return Err(Error::SeriesNotFound {
                series: series.to_string(),
            });
        }
        ids.extend(members);
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(Some(ids))
}

/// A seed for a sample nobody gave one for: the time mixed with the pid (no need for
/// cryptographic quality; the seed is reported so the run can be repeated).
pub fn random_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let x = now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finaliser, so close starting times give unrelated seeds.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn bad_combinations_are_usage_errors() {
        let seed_alone = VerifyRequest {
            seed: Some(3),
            ..VerifyRequest::default()
        };
        let sampled_metadata = VerifyRequest {
            metadata_only: true,
            sample: Some(SampleSize::Share(0.5)),
            ..VerifyRequest::default()
        };
        let scoped_metadata = VerifyRequest {
            metadata_only: true,
            series: Some("vm".into()),
            ..VerifyRequest::default()
        };
        for r in [seed_alone, sampled_metadata, scoped_metadata] {
            assert_eq!(r.validate().unwrap_err().kind(), ErrorKind::Usage, "{r:?}");
        }
        let fine = VerifyRequest {
            sample: Some(SampleSize::Bytes(1)),
            seed: Some(1),
            snapshots: vec![SnapshotRef::Latest],
            ..VerifyRequest::default()
        };
        fine.validate().unwrap();
    }
}
