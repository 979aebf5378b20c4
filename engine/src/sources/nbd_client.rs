//! Reading a disk from an NBD server. Not implemented yet.

use crate::error::{Error, Result};
use crate::sources::BlockSource;

/// A disk exported by an NBD server.
pub struct NbdSource {
    size: u64,
}

impl NbdSource {
    /// Connects to `url` (`nbd://HOST[:PORT]/EXPORT[?bitmap=NAME&track=NAME]` or
    /// `nbd+unix:///EXPORT?socket=PATH[&...]`).
    pub fn connect(url: &str) -> Result<Self> {
        Err(Error::BadImage {
            path: url.to_string(),
            format: "NBD",
            reason: "NBD sources are not implemented yet".into(),
        })
    }
}

impl BlockSource for NbdSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<u64> {
        Err(Error::InvalidArgument("NBD sources are not implemented yet".into()))
    }
    fn identity(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
