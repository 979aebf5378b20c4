//! A Xen Orchestra remote as tessera reads it: a directory (an NFS or SMB mount) holding
//! `xo-vm-backups/`, possibly encrypted (see [`super::crypt`]).
//!
//! **Confinement.** Every path tessera follows comes from the remote's own files (a backup's
//! `vhds`, a VHD's parent name, an alias), so whoever wrote the remote chooses them. A path
//! is resolved *lexically* against the folder of the file that names it ([`RemotePath`]):
//! absolute paths, NUL bytes and `..` climbing above the remote's root are refused. Then,
//! when opened, the file's canonical path (symbolic links resolved) must still lie inside
//! the remote's canonical root and be a regular file (or a directory where one is expected),
//! so a symbolic link leaving the remote is refused too. Files are then opened with
//! `openat2(RESOLVE_BENEATH)` from a handle on the root (the kernel refuses any resolution
//! that leaves it, so a link swapped in after the check cannot lead out either), without
//! blocking (a FIFO cannot hang the import), and must be regular files by `fstat`. Nothing
//! is ever read outside the remote.
//!
//! **Bounds.** Metadata files are read whole only up to a size given by the caller;
//! anything larger is refused before it is read.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::crypt::XoCipher;
use super::xo_error;
use crate::error::{Error, Result};

/// A path inside the remote: normalized components joined by `/`, never empty components,
/// `.` or `..`. The root itself is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

impl RemotePath {
    /// The remote's root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// `rel` resolved against the folder `self` (lexically; see the module docs). `what`
    /// names the path in messages.
    pub fn join(&self, rel: &str, what: &str) -> Result<Self> {
        if rel.is_empty() {
            return Err(xo_error(self.as_str(), format!("{what} is empty")));
        }
        if rel.contains('\0') {
            return Err(xo_error(
                self.as_str(),
                format!("{what} {rel:?} holds a NUL byte"),
            ));
        }
        if rel.starts_with('/') || rel.starts_with('\\') {
            return Err(xo_error(
                self.as_str(),
                format!("{what} {rel:?} is absolute; paths in a remote are relative to it"),
            ));
        }
        let mut parts: Vec<&str> = self.0.split('/').filter(|p| !p.is_empty()).collect();
        for part in rel.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(xo_error(
                            self.as_str(),
                            format!("{what} {rel:?} leads outside the remote"),
                        ));
                    }
                }
                p => parts.push(p),
            }
        }
        Ok(Self(parts.join("/")))
    }

    /// The folder holding this path.
    #[must_use]
    pub fn parent(&self) -> Self {
        Self(self.0.rsplit_once('/').map_or("", |(d, _)| d).to_string())
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(self.0.as_str(), |(_, n)| n)
    }

    /// The path as text (`/`-separated, relative to the remote).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RemotePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else (symbolic links are resolved first; ones leaving the remote count here).
    Other,
}

/// An opened remote.
pub struct XoRemote {
    /// Canonical path of the remote's root.
    root: PathBuf,
    /// A handle on the root, for `openat2(RESOLVE_BENEATH)`.
    root_fd: rustix::fd::OwnedFd,
    /// How its files are encrypted, if they are.
    cipher: Option<XoCipher>,
}

impl XoRemote {
    /// A remote at `root` (which must be a directory), whose files `cipher` decrypts.
    pub fn new(root: &Path, cipher: Option<XoCipher>) -> Result<Self> {
        let canonical = std::fs::canonicalize(root).map_err(|e| Error::Source {
            path: root.to_path_buf(),
            source: e,
        })?;
        if !canonical.is_dir() {
            return Err(Error::Usage(format!(
                "{}: a Xen Orchestra remote is a directory holding xo-vm-backups/",
                root.display()
            )));
        }
        let root_fd = rustix::fs::open(
            &canonical,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| source(&canonical, e.into()))?;
        Ok(Self {
            root: canonical,
            root_fd,
            cipher,
        })
    }

    /// Whether the remote's files are encrypted.
    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The local path of `path` (for messages and identities).
    pub fn local(&self, path: &RemotePath) -> PathBuf {
        if path.0.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&path.0)
        }
    }

    /// What `path` is (after resolving symbolic links; one leaving the remote is
    /// [`EntryKind::Other`]), or `None` when it does not exist.
    pub fn kind(&self, path: &RemotePath) -> Result<Option<EntryKind>> {
        let local = self.local(path);
        let canonical = match std::fs::canonicalize(&local) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(source(&local, e)),
        };
        if !canonical.starts_with(&self.root) {
            return Ok(Some(EntryKind::Other));
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| source(&local, e))?;
        Ok(Some(if meta.is_file() {
            EntryKind::File
        } else if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        }))
    }

    /// The entries of the folder `path`, sorted by name, with their kinds.
    pub fn list(&self, path: &RemotePath) -> Result<Vec<(String, EntryKind)>> {
        let local = self.confined(path, EntryKind::Dir, "folder")?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&local).map_err(|e| source(&local, e))? {
            let entry = entry.map_err(|e| source(&local, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                // XO writes ASCII names; anything else is reported, not followed.
                out.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    EntryKind::Other,
                ));
                continue;
            };
            let Ok(child) = path.join(&name, "entry") else {
                out.push((name, EntryKind::Other));
                continue;
            };
            // An entry that cannot be resolved (a link loop, no permission) is reported as
            // something that is not part of a backup, not a reason to stop.
            match self.kind(&child) {
                Ok(Some(kind)) => out.push((name, kind)),
                Ok(None) => {}
                Err(_) => out.push((name, EntryKind::Other)),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens the regular file `path` (confined to the remote) as stored, not decrypted.
    pub fn open_raw(&self, path: &RemotePath) -> Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let local = self.confined(path, EntryKind::File, "file")?;
        let fd = rustix::fs::openat2(
            &self.root_fd,
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::XDEV {
                xo_error(
                    path.as_str(),
                    "leads outside the remote (a link changed while it was read)".into(),
                )
            } else {
                source(&local, e.into())
            }
        })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| source(&local, e))?;
        if !meta.is_file() {
            return Err(xo_error(path.as_str(), "is not a regular file".into()));
        }
        Ok(file)
    }

    /// The whole content of the file `path`, decrypted, refusing files larger than `limit`
    /// bytes of content.
    pub fn read(&self, path: &RemotePath, limit: u64, what: &str) -> Result<Vec<u8>> {
        let file = self.open_raw(path)?;
        let overhead = self.cipher.as_ref().map_or(0, XoCipher::overhead);
        let len = file
            .metadata()
            .map_err(|e| source(&self.local(path), e))?
            .len();
        if len > limit + overhead {
            return Err(xo_error(
                path.as_str(),
                format!("{what} is {len} bytes; tessera reads at most {limit}"),
            ));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(limit + overhead + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| source(&self.local(path), e))?;
        match &self.cipher {
            None => Ok(bytes),
            Some(c) => c
                .decrypt(&bytes)
                .map_err(|why| xo_error(path.as_str(), format!("{what} does not decrypt: {why}"))),
        }
    }

    /// The local path of `path` after checking it stays inside the remote and is `want`.
    fn confined(&self, path: &RemotePath, want: EntryKind, what: &str) -> Result<PathBuf> {
        let local = self.local(path);
        match self.kind(path)? {
            Some(k) if k == want => Ok(local),
            None => Err(source(
                &local,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no such {what}")),
            )),
            Some(EntryKind::Other) => Err(xo_error(
                path.as_str(),
                format!(
                    "not a {what} inside the remote (a link leading out of it, or a special file)"
                ),
            )),
            Some(_) => Err(xo_error(path.as_str(), format!("is not a {what}"))),
        }
    }
}

fn source(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::RemotePath;

    #[test]
    fn paths_resolve_inside_the_remote_only() {
        let vm = RemotePath::root().join("xo-vm-backups/vm1", "vm").unwrap();
        let vhd = vm.join("vdis/job/vdi/20240101T000000Z.vhd", "vhd").unwrap();
        assert_eq!(
            vhd.as_str(),
            "xo-vm-backups/vm1/vdis/job/vdi/20240101T000000Z.vhd"
        );
        assert_eq!(
            vhd.parent().join("./a/../b.vhd", "p").unwrap().file_name(),
            "b.vhd"
        );
        assert!(vm.join("../../../etc/passwd", "p").is_err());
        assert!(vm.join("/etc/passwd", "p").is_err());
        assert!(vm.join("a\0b", "p").is_err());
        assert!(vm.join("", "p").is_err());
        assert_eq!(
            vm.join("../vm2", "p").unwrap().as_str(),
            "xo-vm-backups/vm2"
        );
    }
}
