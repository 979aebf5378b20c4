//! A [`Backend`] on one flat directory, the layout of a seed bundle: packs are
//! `<pack id>.pack`, snapshot files `<snapshot id>.snap`, side by side. Objects are staged as
//! `.<name>.tmp` in the same directory and committed with fsync → rename → directory
//! fsync, like the repository's own backend. Every open uses `O_NOFOLLOW`, so a symbolic
//! link planted in a bundle is never followed.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::backend::{sync_dir, Backend, Namespace, ObjectWriter};
use crate::error::{Error, IoContext, Result};

/// See the module docs.
pub struct FlatDir {
    dir: PathBuf,
}

impl FlatDir {
    /// The directory `dir` (which must exist).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The file name of an object.
    pub fn file_name(ns: Namespace, name: &str) -> Result<String> {
        match ns {
            Namespace::Packs => Ok(format!("{name}.pack")),
            Namespace::Snapshots => Ok(format!("{name}.snap")),
            Namespace::Protections => Err(Error::InvalidArgument(
                "seed bundles hold no protection markers".into(),
            )),
        }
    }

    fn path(&self, ns: Namespace, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join(Self::file_name(ns, name)?))
    }
}

/// Opens a file for reading without following a symbolic link in its last component.
pub fn open_nofollow(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("opening {} (symbolic links are refused)", path.display()))
}

struct FlatWriter {
    out: Option<BufWriter<File>>,
    staged: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

impl Write for FlatWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.out.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("object already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl ObjectWriter for FlatWriter {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let out = self.out.take().ok_or(Error::PreviousIo)?;
        let staged = self.staged.clone();
        let file = out
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", staged.display()), e.into_error()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", staged.display()))?;
        fs::rename(&staged, &self.target)
            .ctx(|| format!("renaming {} into place", staged.display()))?;
        sync_dir(&self.dir)
    }
}

impl Drop for FlatWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.staged);
        }
    }
}

impl Backend for FlatDir {
    fn create(&self, ns: Namespace, name: &str) -> Result<Box<dyn ObjectWriter>> {
        let file_name = Self::file_name(ns, name)?;
        let staged = self.dir.join(format!(".{file_name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
            .ctx(|| format!("creating {}", staged.display()))?;
        Ok(Box::new(FlatWriter {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            staged,
            target: self.dir.join(file_name),
            dir: self.dir.clone(),
        }))
    }

    fn read_range(&self, ns: Namespace, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(ns, name)?;
        let mut buf = vec![0u8; len];
        open_nofollow(&path)?
            .read_exact_at(&mut buf, offset)
            .ctx(|| format!("reading {len} bytes at {offset} of {}", path.display()))?;
        Ok(buf)
    }

    fn read_all(&self, ns: Namespace, name: &str) -> Result<Vec<u8>> {
        let path = self.path(ns, name)?;
        let mut out = Vec::new();
        open_nofollow(&path)?
            .read_to_end(&mut out)
            .ctx(|| format!("reading {}", path.display()))?;
        Ok(out)
    }

    fn size(&self, ns: Namespace, name: &str) -> Result<u64> {
        let path = self.path(ns, name)?;
        Ok(open_nofollow(&path)?
            .metadata()
            .ctx(|| format!("inspecting {}", path.display()))?
            .len())
    }

    fn list(&self, ns: Namespace) -> Result<Vec<String>> {
        let ext = match ns {
            Namespace::Packs => ".pack",
            Namespace::Snapshots => ".snap",
            Namespace::Protections => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let e = e.ctx(|| format!("listing {}", self.dir.display()))?;
            if let Some(stem) = e.file_name().to_str().and_then(|n| n.strip_suffix(ext)) {
                if !stem.starts_with('.') {
                    out.push(stem.to_string());
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, ns: Namespace, name: &str) -> Result<()> {
        let path = self.path(ns, name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }
}
