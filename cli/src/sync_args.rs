//! Command-line syntax of `sync`, `seed` and `serve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tessera_engine::SnapshotRef;

/// Which snapshots to copy.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Only snapshots of this series.
    #[arg(long)]
    pub series: Option<String>,
    /// Only this snapshot (id prefix, `latest` or `latest@SERIES`, among the source's
    /// snapshots of --series; repeatable).
    #[arg(long = "snapshot")]
    pub snapshots: Vec<SnapshotRef>,
    /// Only the newest N snapshots (after --series / --snapshot).
    #[arg(long)]
    pub latest: Option<usize>,
}

/// `tessera sync SRC DST`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source repository: a directory, `http://HOST:PORT` or `https://HOST:PORT`.
    pub src: String,
    /// Destination repository: a directory, `http://HOST:PORT` or `https://HOST:PORT`.
    pub dst: String,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only report what would be copied.
    #[arg(long)]
    pub dry_run: bool,
    /// Limit received bytes per second, e.g. 50M, 800K.
    #[arg(long)]
    pub bwlimit: Option<String>,
    /// Threads checking received objects (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// File holding the bearer token of a remote side.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM file of root certificates to trust for an https:// side, besides the system's
    /// (e.g. a self-signed server certificate). Verification cannot be switched off.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// `tessera seed ...`.
#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Write a self-contained, checksummed bundle of snapshots.
    Export {
        /// The repository.
        repo: PathBuf,
        /// Output directory (must not exist or be empty).
        out: PathBuf,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Verify a bundle and import it into a repository.
    Import {
        /// The bundle.
        bundle: PathBuf,
        /// The repository (created with the bundle's block size if it does not exist).
        repo: PathBuf,
    },
}

/// `tessera serve REPO`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repository.
    pub repo: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8420 (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8420")]
    pub listen: String,
    /// File holding the bearer token clients must present.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Serve HTTPS with this PEM certificate (chain, leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (unencrypted).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub keepalive: crate::args::KeepaliveArg,
}
