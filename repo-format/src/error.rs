//! Typed decoding errors. Decoders return these for every malformed input and never panic.

use thiserror::Error;

/// Why a byte sequence could not be decoded as an on-disk structure.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("{what} is truncated: needed {needed} more bytes, {available} available")]
    Truncated {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes the decoder needed at the point it stopped.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The magic number is not the one this structure starts with.
    #[error("{what} has bad magic {found:02x?}: not a tessera {what}")]
    BadMagic {
        /// The structure being decoded.
        what: &'static str,
        /// The bytes found where the magic should be.
        found: Vec<u8>,
    },
    /// The structure was written by a newer (or unknown) format version.
    #[error("{what} has format version {version}, this build understands up to {supported}; upgrade tessera")]
    UnsupportedVersion {
        /// The structure being decoded.
        what: &'static str,
        /// The version found.
        version: u32,
        /// The highest version this build reads.
        supported: u32,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("{what} checksum mismatch: stored {expected:08x}, computed {got:08x}")]
    ChecksumMismatch {
        /// The structure being decoded.
        what: &'static str,
        /// The checksum stored in the structure.
        expected: u32,
        /// The checksum of the bytes as read.
        got: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// Shorthand for [`DecodeError::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
