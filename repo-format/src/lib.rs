//! # tessera-format
//!
//! The on-disk types of a tessera repository and their byte encodings: the `config` file,
//! pack files, manifest pages and snapshot files. This crate is pure: it performs no I/O
//! and knows nothing of RocksDB. Every decoder takes untrusted bytes and returns a typed
//! [`DecodeError`] instead of panicking; the crate is linted to forbid `unwrap`, slice
//! indexing, unchecked arithmetic (every offset and length read from disk is added and
//! multiplied with checked or saturating operations) and truncating casts. Every encoder
//! checks its value against the rules its decoder enforces and returns an [`EncodeError`]
//! instead of writing bytes that could not be read back. `SPEC.md` at the repository root
//! is the normative description; the module docs repeat each byte table next to the code
//! that implements it.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]
#![warn(missing_docs)]

pub mod codec;
pub mod config;
mod error;
mod ids;
pub mod keyslot;
pub mod manifest;
pub mod pack;
pub mod snapshot;
pub mod snapshot_sealed;

pub use config::{Compression, Encryption, IdScheme, RepoConfig};
pub use error::{DecodeError, EncodeError};
pub use ids::{is_all_zero, ChunkDigest, PackId, PageDigest, RepoId, SnapshotId};
pub use manifest::ManifestPage;
pub use pack::{Codec, ObjectInfo, ObjectKind};
pub use snapshot::{DiskEntry, DiskStats, Snapshot, SnapshotHeader};

/// The newest format version this build writes and reads. Bump it, and record why in
/// SPEC.md's version log, whenever any byte layout changes. Version 2 is an encrypted
/// repository; plain repositories are still written as version 1 (SPEC.md §18).
pub const FORMAT_VERSION: u32 = 2;
