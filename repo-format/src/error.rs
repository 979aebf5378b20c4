//! Typed errors. Decoders return [`DecodeError`] for every malformed input and never panic;
//! encoders return [`EncodeError`] for every value whose bytes a decoder would refuse, so
//! nothing written can turn out unreadable later.

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
    /// A field the format reserves (and writes as zero) is not zero. Format version 1 gives
    /// these bytes no meaning, so a non-zero value is damage or a writer that broke the rules.
    #[error("{what}: reserved bytes at offset {offset} are not zero")]
    ReservedNotZero {
        /// The structure being decoded.
        what: &'static str,
        /// Offset of the reserved field within the structure.
        offset: usize,
    },
    /// A count or length exceeds what the format allows.
    #[error("{what}: {count} {field} exceed the limit of {max}")]
    TooMany {
        /// The structure being decoded.
        what: &'static str,
        /// What was counted (`disks`, `entries`, `string bytes`).
        field: &'static str,
        /// The count found.
        count: u64,
        /// The largest count allowed.
        max: u64,
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

/// Why a value was not encoded.
///
/// Encoders check a value against every rule its decoder enforces before producing bytes,
/// so for every encoder `encode(v)` is `Ok(bytes)` exactly when `decode(&bytes) == Ok(v)`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The value breaks a rule of the format; the decoder would refuse its bytes with this error.
    #[error("refusing to write bytes no reader would accept: {0}")]
    WouldNotDecode(#[from] DecodeError),
}
