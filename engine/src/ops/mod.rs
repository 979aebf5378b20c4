//! The operations, one per file. Each takes an open [`crate::Repository`] (or a path, for
//! operations that must run without a working index) and reports what it did.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod check_uncatalogued;
pub mod compact;
pub mod damage;
pub mod diff;
pub mod disk_reader;
pub mod files;
pub mod forget;
pub mod immutable;
pub mod import_xo;
pub mod init;
pub mod keys;
pub mod prune;
pub mod publish;
pub mod rebuild_index;
pub mod repair;
pub mod restore;
pub mod restore_onto;
pub mod stats;
pub mod usage;
pub mod verify;
