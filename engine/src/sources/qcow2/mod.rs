//! qcow2 images, versions 2 and 3, with backing chains (QEMU `docs/interop/qcow2.txt`;
//! SPEC.md §19).
//!
//! Opening reads and checks the header ([`header`]), the L1 table and every L2 table it
//! points to ([`scan`], entries decoded by [`table`]), so a malformed image is refused before anything is read, and
//! collects the guest ranges this image defines itself: data, zero and compressed clusters
//! (per subcluster with extended L2). For an image with a backing file those ranges are
//! its [`Changes`] against the backing file, whose state token
//! ([`file_state_token`]) is the base state; everything else reads from the backing chain
//! ([`backing`]). An image without a backing file is a plain full source.
//!
//! Reads ([`read`]) go cluster by cluster: data clusters are read where they are stored (adjacent ones
//! in one call), zero clusters are filled, compressed clusters are inflated
//! ([`compressed`]), the rest is read from the backing file (zeros beyond its size or
//! without one). L2 tables are cached (bounded) behind a mutex; file reads use positioned
//! I/O, so concurrent `read_at` calls are safe.

mod backing;
mod compressed;
mod extensions;
mod header;
mod read;
mod scan;
mod table;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use backing::Backing;
use header::Header;
use table::{ClusterMap, Geometry, L2Cache};

use crate::error::{Error, Result};
use crate::sources::confine::Confinement;
use crate::sources::{file_state_token, BlockSource, Changes, ReadAt, STATE_KEY};

/// An `Error::BadImage` for the qcow2 image at `path`.
pub(crate) fn bad_image(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadImage {
        path: path.display().to_string(),
        format: "qcow2",
        reason: reason.into(),
    }
}

/// A qcow2 image opened for reading.
pub struct Qcow2Source {
    path: PathBuf,
    file: Box<dyn ReadAt>,
    header: Header,
    geo: Geometry,
    /// L2 table offsets of the L1 entries that map the virtual size; 0 = none.
    l1: Vec<u64>,
    cache: Mutex<L2Cache>,
    backing: Backing,
    /// With a backing file: what this image defines on top of it.
    changes: Option<Changes>,
}

impl Qcow2Source {
    /// Opens and validates a qcow2 file and its backing chain.
    /// Backing files are opened only from the image's own directory.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_confined(path, &Confinement::for_image(path, &[])?)
    }

    /// Opens and validates a qcow2 file and its backing chain, whose files must pass
    /// `confinement`.
    pub fn open_confined(path: &Path, confinement: &Confinement) -> Result<Self> {
        Self::open_in_chain(path, &mut Vec::new(), confinement)
    }

    /// Decodes a qcow2 image held in memory, named `name` in messages, with exactly the
    /// checks a file gets. A backing file is not looked for: an image naming one opens as
    /// one whose backing file is missing (its own clusters read, anything else fails naming
    /// the backing file). For tests and the fuzz targets (`fuzz/`).
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        let (mut source, defined) = Self::decode(name, Box::new(bytes), len)?;
        if let Some(backing_name) = source.header.backing_file.clone() {
            let backing = Backing::Missing {
                path: backing::resolve(name, &backing_name),
                format: source.header.backing_format.clone(),
            };
            source.attach_backing(backing, defined)?;
        }
        Ok(source)
    }

    /// Opens `path` as one image of a backing chain whose upper images are in `chain`.
    fn open_in_chain(
        path: &Path,
        chain: &mut Vec<PathBuf>,
        confinement: &Confinement,
    ) -> Result<Self> {
        backing::enter_chain(path, chain)?;
        let file = File::open(path).map_err(|e| Error::Source {
            path: path.to_path_buf(),
            source: e,
        })?;
        let file_len = image_len(&file).map_err(|e| Error::Source {
            path: path.to_path_buf(),
            source: e,
        })?;
        let (mut source, defined) = Self::decode(path, Box::new(file), file_len)?;
        if let Some(name) = source.header.backing_file.clone() {
            let backing = backing::open(
                path,
                &name,
                source.header.backing_format.as_deref(),
                chain,
                confinement,
            )?;
            source.attach_backing(backing, defined)?;
        }
        Ok(source)
    }

    /// Checks the header, the L1 table and every L2 table of the `file_len` bytes of `file`;
    /// returns the image (without its backing file) and the guest ranges it defines itself.
    fn decode(
        path: &Path,
        file: Box<dyn ReadAt>,
        file_len: u64,
    ) -> Result<(Self, Vec<(u64, u64)>)> {
        let header = header::parse(file.as_ref(), file_len).map_err(|r| bad_image(path, r))?;
        let geo = Geometry {
            cluster_bits: header.cluster_bits,
            extended_l2: header.extended_l2,
            version: header.version,
            file_len,
        };
        let l1 = scan::read_l1(file.as_ref(), &header, file_len).map_err(|r| bad_image(path, r))?;
        let source = Self {
            path: path.to_path_buf(),
            file,
            cache: Mutex::new(L2Cache::new(geo.cluster_size())),
            geo,
            l1,
            backing: Backing::None,
            changes: None,
            header,
        };
        let defined = scan::defined_extents(&source)?;
        Ok((source, defined))
    }

    /// Sets the backing file; the ranges this image `defined` become its changes on top of
    /// the backing file's state.
    fn attach_backing(&mut self, backing: Backing, defined: Vec<(u64, u64)>) -> Result<()> {
        let name = self.header.backing_file.clone().unwrap_or_default();
        let base = backing.path().unwrap_or(Path::new(&name)).to_path_buf();
        let (base_state, note) = match &backing {
            // The base cannot be fingerprinted: no reference snapshot can match it.
            Backing::Missing { .. } => (
                format!("missing-backing-file:{}", base.display()),
                " (missing, so its state cannot be checked)",
            ),
            _ => (file_state_token(&base)?, ""),
        };
        self.backing = backing;
        self.changes = Some(Changes {
            base_state,
            base_description: format!("backing file {}{note}", base.display()),
            extents: defined,
        });
        Ok(())
    }

    /// The L2 table at `offset`, from the cache or the file.
    fn l2_table(&self, offset: u64) -> Result<std::sync::Arc<Vec<u64>>> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = cache.get(offset) {
            return Ok(t);
        }
        let table = table::read_l2(self.file.as_ref(), &self.geo, offset)
            .map_err(|r| bad_image(&self.path, r))?;
        cache.insert(offset, table.clone());
        Ok(table)
    }

    /// The decoded L2 entry of guest cluster `cluster`.
    fn cluster_map(&self, cluster: u64) -> Result<ClusterMap> {
        let per = self.geo.l2_entries();
        let l2_offset = self.l1.get((cluster / per) as usize).copied().unwrap_or(0);
        if l2_offset == 0 {
            return Ok(ClusterMap::Whole(table::Mapping::Backing));
        }
        let t = self.l2_table(l2_offset)?;
        self.decode_entry(&t, l2_offset, cluster)
    }

    fn decode_entry(&self, t: &[u64], l2_offset: u64, cluster: u64) -> Result<ClusterMap> {
        let index = (cluster % self.geo.l2_entries()) as usize * self.geo.stride();
        let word = t.get(index).copied().unwrap_or(0);
        let bitmap = if self.geo.extended_l2 {
            t.get(index + 1).copied().unwrap_or(0)
        } else {
            0
        };
        self.geo.decode(word, bitmap).map_err(|r| {
            let at = l2_offset + index as u64 * 8;
            bad_image(
                &self.path,
                format!(
                    "guest offset {}: L2 entry at file offset {at:#x}: {r}",
                    cluster << self.geo.cluster_bits
                ),
            )
        })
    }

    fn source_err(&self, e: std::io::Error) -> Error {
        Error::Source {
            path: self.path.clone(),
            source: e,
        }
    }
}

/// Length of the image: the file's size, or the size of a block device (an LV holding a
/// qcow2 image; open it with `--format qcow2`, block devices are not probed).
fn image_len(file: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

impl BlockSource for Qcow2Source {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        read::read_at(self, offset, buf)
    }

    fn identity(&self) -> Vec<(String, String)> {
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let mut id = vec![
            ("source.kind".to_string(), "qcow2".to_string()),
            ("source.path".into(), path.display().to_string()),
            ("source.size".into(), self.header.size.to_string()),
            ("qcow2.version".into(), self.header.version.to_string()),
            (
                "qcow2.cluster_size".into(),
                self.geo.cluster_size().to_string(),
            ),
        ];
        if let Ok(token) = file_state_token(&self.path) {
            id.push((STATE_KEY.into(), token));
        }
        if let Some(name) = &self.header.backing_file {
            id.push(("qcow2.backing_file".into(), name.clone()));
        }
        if let Some(format) = self.backing.format() {
            id.push(("qcow2.backing_format".into(), format));
        }
        if self.header.extended_l2 {
            id.push(("qcow2.extended_l2".into(), "true".into()));
        }
        if self.header.dirty {
            id.push(("qcow2.dirty".into(), "true".into()));
        }
        id
    }

    fn changes(&self) -> Option<&Changes> {
        self.changes.as_ref()
    }

    fn reads_full(&self) -> bool {
        self.backing.reads_full()
    }
}
