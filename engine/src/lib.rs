//! # tessera-engine
//!
//! The chunk store, the RocksDB index and the operations of a tessera repository.
//!
//! - [`repo::Repository`] opens a repository as a reader or as the single writer.
//! - [`ops`] holds one file per operation: backup, restore (full and `--onto`), diff, check
//!   and damage mapping, stats and per-snapshot usage, forget/prune, compaction, index rebuild.
//! - [`storage`] is the seam to where objects live: a [`storage::Backend`] (a local directory
//!   today) holding config, packs and snapshot files, named by [`storage::ObjectKey`].
//! - [`store`] encodes objects and writes/reads pack files through that backend.
//! - [`index`] and [`refcount`] keep locations and hierarchical reference counts;
//!   [`recovery`] finishes or undoes an interrupted writer; [`readers`] holds the reader
//!   leases that keep compaction from deleting packs in use.
//! - [`nbd`] serves snapshots read-only over NBD; [`export`] writes raw, qcow2 and VHD files.
//! - [`error`]: every failure is an [`Error`] whose [`Error::kind`] (usage, damage, refusal,
//!   lock, I/O, bug) a front end maps to its exit code; [`snapshot_ref`] parses snapshot
//!   references for every command; reports serialize typed ids as hex with [`serde_ids`].
//!
//! ## Features
//!
//! `repository` (default) is everything that needs the RocksDB index: the repository and
//! its operations, the store, sync, seed bundles, the NBD server and export. Without it
//! the crate keeps the decoders of foreign input ([`sources`], [`formats`],
//! [`sync::bundle_manifest`], the request-body decoding of [`sync::http::wire`] and
//! [`sync::checked`]) and what they need, and builds without RocksDB: `fuzz/` uses it that
//! way.
//!
//! ## Who may run together
//!
//! | running \ starting | reader (list/show/stats/restore/verify/diff/export/serve-nbd) | writer (backup/repair/forget/prune/protect/compact) |
//! |---|---|---|
//! | reader | yes | yes |
//! | writer | yes (sees snapshots published before it opened) | no: `Error::Locked` |
//!
//! ## Crash safety
//!
//! Data reaches disk in this order: objects in sealed, fsynced packs → the pack's objects in
//! the index → the snapshot file, fsynced → one atomic, synced index batch publishing the
//! snapshot and its reference counts. Whatever the moment of a crash, a reader sees the
//! old set of snapshots or the new one, and the next writer cleans up (see [`repo`]).

#![warn(missing_docs)]

#[cfg(feature = "repository")]
pub mod cache;
pub mod crypto;
#[cfg(feature = "repository")]
pub mod damage_marks;
#[cfg(feature = "repository")]
pub mod dashboard;
pub mod direct_write;
pub mod disk_range;
#[cfg(feature = "repository")]
pub mod doomed;
pub mod error;
pub mod explore;
#[cfg(feature = "repository")]
pub mod export;
pub mod formats;
pub mod in_flight;
#[cfg(feature = "repository")]
pub mod index;
#[cfg(feature = "repository")]
pub mod jobs;
#[cfg(feature = "repository")]
pub mod leases;
#[cfg(feature = "repository")]
pub mod ledger;
#[cfg(feature = "repository")]
pub mod location;
pub mod lock;
#[cfg(feature = "repository")]
pub mod mount;
pub mod nbd;
pub mod net;
#[cfg(feature = "repository")]
pub mod ops;
pub mod progress;
pub mod readers;
#[cfg(feature = "repository")]
pub mod recovery;
#[cfg(feature = "repository")]
pub mod refcount;
#[cfg(feature = "repository")]
pub mod repo;
pub mod serde_ids;
#[cfg(feature = "repository")]
pub mod series_lease;
#[cfg(feature = "repository")]
pub mod snapshot_ref;
pub mod sources;
pub mod storage;
pub mod store;
pub mod sync;
pub mod time;
#[cfg(feature = "repository")]
pub mod units;
#[cfg(feature = "repository")]
pub mod verify_log;

pub use error::{Error, ErrorKind, Result};
pub use progress::{NoProgress, Progress};
#[cfg(feature = "repository")]
pub use repo::{InitOptions, NewKeys, Repository};
#[cfg(feature = "repository")]
pub use snapshot_ref::{SnapshotDiskRef, SnapshotRef};
