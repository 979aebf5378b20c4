//! VHD images (fixed, dynamic, differencing), per Microsoft's "Virtual Hard Disk Image
//! Format Specification". Not implemented yet.

use std::path::Path;

use crate::error::{Error, Result};
use crate::sources::BlockSource;

/// A VHD image opened for reading.
pub struct VhdSource {
    size: u64,
}

impl VhdSource {
    /// Opens and validates a VHD file.
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::BadImage {
            path: path.display().to_string(),
            format: "VHD",
            reason: "VHD sources are not implemented yet".into(),
        })
    }
}

impl BlockSource for VhdSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<u64> {
        Err(Error::InvalidArgument("VHD sources are not implemented yet".into()))
    }
    fn identity(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
