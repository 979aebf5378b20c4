//! What can go wrong reading a filesystem.

/// A failure reading a partition table or a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A structure is malformed: what, and where.
    #[error("{0}")]
    Corrupt(String),
    /// The structure is well formed but uses something this reader does not read.
    #[error("{0}")]
    Unsupported(String),
    /// No such file or directory.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path as asked.
        path: String,
    },
    /// A path component that must be a directory is not one.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path up to that component.
        path: String,
    },
    /// Bytes `start..end` of a file could not be read (a damaged or missing chunk).
    #[error("bytes {start}..{end} of the file cannot be read: {source}")]
    Unreadable {
        /// First byte (file offset).
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Why.
        source: Box<FsError>,
    },
    /// Reading the image failed (a damaged or missing chunk, an I/O error).
    #[error(transparent)]
    Image(Box<crate::error::Error>),
}

impl FsError {
    /// [`FsError::Corrupt`] from anything printable.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }
}

impl From<crate::error::Error> for FsError {
    fn from(e: crate::error::Error) -> Self {
        Self::Image(Box::new(e))
    }
}
