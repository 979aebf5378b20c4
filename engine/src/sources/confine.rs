//! Where the files an image names may be opened from (SPEC §19, §21). A qcow2 backing file
//! or a VHD parent locator is a path written *inside* the image, so whoever made the image
//! chooses it: a qcow2 whose backing file is `/etc/shadow` would otherwise be read (and
//! stored in the repository) by a backup running as root, and one naming a FIFO or a device
//! would block or read a disk. So such a file is opened only when its canonical path (all
//! symbolic links resolved) lies inside the directory of the image named on the command line
//! or inside a directory the operator allowed (`--allow-backing-dir DIR`), and only when it
//! is a regular file. Files named on the command line are not confined: the operator chose
//! them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directories backing files and parents may be opened from, for one chain.
#[derive(Debug, Clone)]
pub struct Confinement {
    dirs: Vec<PathBuf>,
}

/// What the check of a named file found.
pub enum Named {
    /// Inside the confinement and a regular file: its canonical path.
    Allowed(PathBuf),
    /// No such file.
    Missing,
}

impl Confinement {
    /// The confinement of a chain whose top image is `top` (named on the command line),
    /// extended by the operator's `allowed` directories.
    pub fn for_image(top: &Path, allowed: &[PathBuf]) -> Result<Self> {
        let mut dirs = Vec::with_capacity(allowed.len() + 1);
        let parent = match top.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        for dir in std::iter::once(parent).chain(allowed.iter().map(PathBuf::as_path)) {
            let canonical = std::fs::canonicalize(dir).map_err(|e| Error::Source {
                path: dir.to_path_buf(),
                source: e,
            })?;
            if !canonical.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "--allow-backing-dir {}: not a directory",
                    dir.display()
                )));
            }
            dirs.push(canonical);
        }
        Ok(Self { dirs })
    }

    /// Checks the file `candidate` that `image` names (as backing file or parent): it must be
    /// a regular file whose canonical path is inside one of the directories.
    pub fn check(&self, image: &Path, what: &str, candidate: &Path) -> Result<Named> {
        let canonical = match std::fs::canonicalize(candidate) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Named::Missing),
            Err(e) => {
                return Err(Error::Source {
                    path: candidate.to_path_buf(),
                    source: e,
                })
            }
        };
        if !self.dirs.iter().any(|d| canonical.starts_with(d)) {
            return Err(refused(
                image,
                format!(
                    "its {what} {} is {}, outside {}; files an image names are opened only there (the operator may allow another directory with --allow-backing-dir DIR)",
                    candidate.display(),
                    canonical.display(),
                    self.describe()
                ),
            ));
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::Source {
            path: canonical.clone(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(refused(
                image,
                format!(
                    "its {what} {} is not a regular file (a FIFO, device or directory); such files are read only when named on the command line",
                    canonical.display()
                ),
            ));
        }
        Ok(Named::Allowed(canonical))
    }

    fn describe(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(", ")
    }
}

fn refused(image: &Path, reason: String) -> Error {
    Error::BadImage {
        path: image.display().to_string(),
        format: "backing chain",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::{Confinement, Named};

    #[test]
    fn only_regular_files_inside_the_allowed_directories_pass() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let top = images.join("top.qcow2");
        let base = images.join("base.raw");
        let outside = other.join("secret");
        std::fs::write(&base, b"x").unwrap();
        std::fs::write(&outside, b"y").unwrap();
        std::os::unix::fs::symlink(&outside, images.join("link")).unwrap();
        let c = Confinement::for_image(&top, &[]).unwrap();
        assert!(matches!(
            c.check(&top, "backing file", &base).unwrap(),
            Named::Allowed(_)
        ));
        assert!(matches!(
            c.check(&top, "backing file", &images.join("nope")).unwrap(),
            Named::Missing
        ));
        for bad in [
            outside.clone(),
            images.join("link"),
            images.join("../other/secret"),
        ] {
            let err = c.check(&top, "backing file", &bad).err().expect("refused");
            assert!(err.to_string().contains("--allow-backing-dir"), "{err}");
        }
        let err = c
            .check(&top, "backing file", std::path::Path::new("/dev/null"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("outside"), "{err}");
        let widened = Confinement::for_image(&top, &[other.clone(), "/dev".into()]).unwrap();
        assert!(matches!(
            widened
                .check(&top, "backing file", &images.join("link"))
                .unwrap(),
            Named::Allowed(_)
        ));
        let err = widened
            .check(&top, "backing file", std::path::Path::new("/dev/null"))
            .err()
            .expect("a device is refused even inside an allowed directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
