//! Identifier newtypes. Each kind of id has its own type so one can never be passed where
//! another is expected, although chunk and page digests are both SHA-256 values.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::DecodeError;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex form, as used in file names and output.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses from a byte slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| {
                    DecodeError::invalid($what, format!("expected {} bytes, got {}", $len, bytes.len()))
                })?;
                Ok(Self(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = DecodeError;
            fn from_str(s: &str) -> Result<Self, DecodeError> {
                let bytes = hex::decode(s).map_err(|e| DecodeError::invalid($what, format!("{s:?} is not hex: {e}")))?;
                Self::from_slice(&bytes)
            }
        }
    };
}

hex_id!(
    /// SHA-256 of a data block's raw (uncompressed) bytes. The all-zero value is reserved
    /// for all-zero blocks, which are never stored ([`ChunkDigest::ZERO`]).
    ChunkDigest, 32, "chunk digest"
);
hex_id!(
    /// SHA-256 of an encoded manifest page.
    PageDigest, 32, "page digest"
);
hex_id!(
    /// SHA-256 of an encoded snapshot file; the file is named after it.
    SnapshotId, 32, "snapshot id"
);
hex_id!(
    /// Random 128-bit name of a pack file.
    PackId, 16, "pack id"
);
hex_id!(
    /// Random 128-bit identity of a repository, fixed at `init`.
    RepoId, 16, "repository id"
);

impl ChunkDigest {
    /// Reserved digest of an all-zero block of any length. Such blocks are never stored;
    /// SHA-256 output equal to it is, for practical purposes, impossible.
    pub const ZERO: Self = Self([0u8; 32]);

    /// Digest of a block's content (plain SHA-256, id scheme 1).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Whether this is the reserved all-zero digest.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }
}

impl PageDigest {
    /// Digest of an encoded page.
    pub fn of(encoded: &[u8]) -> Self {
        Self(Sha256::digest(encoded).into())
    }
}

impl SnapshotId {
    /// Id of an encoded snapshot file.
    pub fn of(encoded: &[u8]) -> Self {
        Self(Sha256::digest(encoded).into())
    }
}

/// Whether every byte of `data` is zero. Fast path used to skip storing zero blocks: it
/// ORs 64-byte lanes (which the compiler vectorises) and stops at the first non-zero lane.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut lanes = data.chunks_exact(64);
    let lanes_zero = lanes
        .by_ref()
        .all(|lane| lane.iter().fold(0u8, |acc, &b| acc | b) == 0);
    lanes_zero && lanes.remainder().iter().all(|&b| b == 0)
}
