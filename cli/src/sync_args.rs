//! Command-line syntax of `sync`, `seed` and `serve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `tessera sync SRC DST`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source repository: a directory or `http(s)://HOST:PORT`.
    pub src: String,
    /// Destination repository: a directory or `http(s)://HOST:PORT`.
    pub dst: String,
}

/// `tessera seed ...`.
#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Write a self-contained, checksummed bundle of snapshots.
    Export {
        /// The repository.
        repo: PathBuf,
        /// Output directory or file.
        out: PathBuf,
    },
    /// Verify a bundle and import it into a repository.
    Import {
        /// The bundle.
        bundle: PathBuf,
        /// The repository.
        repo: PathBuf,
    },
}

/// `tessera serve REPO`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repository.
    pub repo: PathBuf,
}
