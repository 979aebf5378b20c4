//! qcow2 images (v2 and v3, with backing chains).
//! Not implemented yet.

use std::path::Path;

use crate::error::{Error, Result};
use crate::sources::BlockSource;

/// A qcow2 image opened for reading.
pub struct Qcow2Source {
    size: u64,
}

impl Qcow2Source {
    /// Opens and validates a qcow2 file.
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::BadImage {
            path: path.display().to_string(),
            format: "qcow2",
            reason: "qcow2 sources are not implemented yet".into(),
        })
    }
}

impl BlockSource for Qcow2Source {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<u64> {
        Err(Error::InvalidArgument("qcow2 sources are not implemented yet".into()))
    }
    fn identity(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
