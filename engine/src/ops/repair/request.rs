//! What `tessera repair --from OTHER --from-source DISK=PATH --quarantine` was asked for,
//! checked in two steps: [`RepairRequest::validate`] before the repository is opened (the
//! arguments alone), [`RepairRequest::run`] against the open repository (the disks named
//! must exist) and then the repair itself. Every refusal comes before anything changes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::location::RepoLocation;
use crate::progress::Progress;
use crate::repo::Repository;

use super::{repair, RepairReport, RepairSources};

/// `--from-source DISK=PATH`: a source image of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// The disk's name in the snapshots.
    pub disk: String,
    /// The image.
    pub path: PathBuf,
}

impl FromStr for SourceImage {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('=') {
            Some((disk, path)) if !disk.is_empty() && !path.is_empty() => Ok(Self {
                disk: disk.to_string(),
                path: PathBuf::from(path),
            }),
            _ => Err(Error::Usage(format!(
                "--from-source {s:?}: expected DISK=PATH"
            ))),
        }
    }
}

/// Where a repair may take copies from.
#[derive(Debug, Clone, Default)]
pub struct RepairRequest {
    /// Another repository (local or in object storage).
    pub from: Option<RepoLocation>,
    /// Source images.
    pub images: Vec<SourceImage>,
    /// `--quarantine`: snapshot files that cannot be catalogued go to quarantine too.
    pub quarantine: bool,
}

impl RepairRequest {
    /// Checks the arguments before the repository at `repo` is opened: no disk given twice,
    /// and `from` is a repository other than this one (it is connected to, for S3) that is
    /// plain or shares keys as `repo` is or does.
    pub fn validate(&self, repo: &RepoLocation) -> Result<()> {
        self.check_images()?;
        if let Some(other) = &self.from {
            if other.same_repository(repo) {
                return Err(same_repository());
            }
            if !other.exists()? {
                return Err(Error::NotARepository {
                    location: other.to_string(),
                });
            }
            // Before any secret is asked for or recovery runs: records are copied verbatim,
            // so both must be plain or share keys.
            let (theirs, ours) = (
                other.storage()?.read_config()?,
                repo.storage()?.read_config()?,
            );
            crate::sync::shared_keys::check_pairing(
                &other.to_string(),
                theirs.encryption.fingerprint(),
                &repo.to_string(),
                ours.encryption.fingerprint(),
            )?;
        }
        Ok(())
    }

    fn check_images(&self) -> Result<()> {
        let mut disks = BTreeSet::new();
        for image in &self.images {
            if !disks.insert(&image.disk) {
                return Err(Error::Usage(format!(
                    "--from-source: disk {:?} given twice",
                    image.disk
                )));
            }
        }
        Ok(())
    }

    /// Repairs `repo` (open as the writer) from these copies. Every disk named must be a
    /// disk of some snapshot (a usage error otherwise). Call [`Self::validate`] first.
    pub fn run(&self, repo: &Repository, progress: &dyn Progress) -> Result<RepairReport> {
        self.check_images()?;
        if self
            .from
            .as_ref()
            .is_some_and(|other| other.is_location_of(repo.storage()))
        {
            return Err(same_repository());
        }
        let mut disks = BTreeSet::new();
        for (_, header) in repo.index().snapshots()? {
            disks.extend(header.disks.into_iter().map(|d| d.name));
        }
        if let Some(unknown) = self.images.iter().find(|i| !disks.contains(&i.disk)) {
            return Err(Error::Usage(format!(
                "--from-source: no snapshot has a disk named {:?} (disks: {})",
                unknown.disk,
                disks.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let other = self
            .from
            .as_ref()
            .map(|from| open_sharing_keys(from, repo))
            .transpose()?;
        let sources = RepairSources {
            other: other.as_ref(),
            images: self
                .images
                .iter()
                .map(|i| (i.disk.clone(), i.path.clone()))
                .collect(),
            quarantine_snapshots: self.quarantine,
        };
        repair(repo, &sources, progress)
    }
}

/// Opens `from` for reading with `repo`'s keys: both must be plain or share keys
/// ([`crate::sync::shared_keys::check_pairing`]), since records are copied verbatim.
fn open_sharing_keys(from: &RepoLocation, repo: &Repository) -> Result<Repository> {
    let config = from.storage()?.read_config()?;
    let shared = crate::sync::shared_keys::check_pairing(
        &from.to_string(),
        config.encryption.fingerprint(),
        &repo.describe(),
        repo.config().encryption.fingerprint(),
    )?;
    match repo.crypto().keys().filter(|_| shared) {
        Some(keys) => from.open(&crate::crypto::keyring::KnownKeys(keys.clone())),
        None => from.open(&crate::crypto::NoSecret),
    }
}

fn same_repository() -> Error {
    Error::Usage("--from names the repository being repaired".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn source_images_parse_and_duplicates_are_refused() {
        let a: SourceImage = "a=/x/y".parse().unwrap();
        assert_eq!(
            (a.disk.as_str(), a.path.as_path()),
            ("a", Path::new("/x/y"))
        );
        for bad in ["a", "=x", "a=", ""] {
            assert!(bad.parse::<SourceImage>().is_err(), "{bad}");
        }
        let twice = RepairRequest {
            from: None,
            images: vec![a.clone(), a],
            quarantine: false,
        };
        let err = twice
            .validate(&RepoLocation::local(Path::new("/nonexistent")))
            .unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }
}
