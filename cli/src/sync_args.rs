//! Command-line syntax of `sync`, `seed`, `serve` and `token`.

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
    /// Source repository: a directory, `file://PATH`, `s3://BUCKET/PREFIX`,
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub src: String,
    /// Destination repository: a directory, `file://PATH`, `s3://BUCKET/PREFIX`,
    /// `http://HOST:PORT` or `https://HOST:PORT`.
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
    /// File holding the bearer token of a remote side (mode 600: readable by its owner
    /// only).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Longest one read or write of a request to a remote side may wait, in seconds: a
    /// stalled server fails the sync after this long. It must cover the longest the server
    /// works on a request (a publish of a large snapshot).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub io_timeout: u64,
    /// PEM file of root certificates to trust for an https:// side, besides the system's
    /// (e.g. a self-signed server certificate). Verification cannot be switched off.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Send the token over plain http:// to a host that is not loopback (it crosses the
    /// network in clear: only for a trusted network).
    #[arg(long)]
    pub insecure_http: bool,
}

/// `tessera seed ...`.
#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Write a self-contained, checksummed bundle of snapshots.
    Export {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Output directory (must not exist or be empty).
        out: PathBuf,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Verify a bundle and import it into a repository.
    Import {
        /// The bundle.
        bundle: PathBuf,
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX` (created with
        /// the bundle's block size if it does not exist).
        repo: String,
    },
}

/// `tessera serve REPO`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["tokens", "token_file"])))]
pub struct ServeArgs {
    /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
    pub repo: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The dashboard shows these jobs (NAME.toml): their runs, their retention, and how old
    /// a series' newest snapshot may be by their schedule.
    #[arg(long, value_name = "DIR")]
    pub jobs: Option<PathBuf>,
    /// The jobs' state directory, for their run history (as `tessera job --state-dir`).
    #[arg(long, value_name = "DIR", requires = "jobs")]
    pub state_dir: Option<PathBuf>,
}

/// How `tessera serve` (and `tessera daemon --serve`) listens and whom it lets in.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:8420 (port 0: any free port, printed). Plain
    /// HTTP is served on loopback addresses only, unless --insecure-http.
    #[arg(long, default_value = "127.0.0.1:8420")]
    pub listen: String,
    /// The tokens file (made with `tessera token add`; mode 600): tokens with roles, series
    /// and quotas. Changes to it take effect at the next request.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// A file holding one bearer token, which gets the admin role (mode 600). Kept for
    /// compatibility; --tokens gives each client only what it needs.
    #[arg(long, value_name = "FILE", conflicts_with = "tokens")]
    pub token_file: Option<PathBuf>,
    /// Append the audit log (one JSON line per request) to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate (chain, leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (unencrypted).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address that is not loopback (tokens and data cross the
    /// network in clear: only for a trusted network or a TLS proxy on the same host).
    #[arg(long)]
    pub insecure_http: bool,
    /// Least seconds between two snapshots a backup token publishes into one series (0: no
    /// limit). Sooner is refused (429) and the client waits; so a compromised backup token
    /// cannot flood its series and push real snapshots out of `prune --keep-last`.
    #[arg(long, value_name = "SECS", default_value_t = tessera_engine::sync::http::server::DEFAULT_MIN_PUBLISH_INTERVAL.as_secs())]
    pub min_publish_interval: u64,
    /// The dashboard marks a series stale when its newest snapshot is older than this and no
    /// job says otherwise (e.g. 36h, 2d).
    #[arg(long, value_name = "DURATION", default_value = "36h", value_parser = parse_stale_after)]
    pub stale_after: std::time::Duration,
    #[command(flatten)]
    pub keepalive: crate::args::KeepaliveArg,
}

fn parse_stale_after(text: &str) -> Result<std::time::Duration, String> {
    tessera_engine::jobs::values::Dur::parse(text)
        .map(|d| std::time::Duration::from_micros(d.0.us.unsigned_abs()))
}

/// `tessera token ...`: the tokens file of `serve --tokens`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new token, print it once on stdout, and store only its hash in FILE (created
    /// with mode 600 if missing).
    Add {
        /// The tokens file.
        file: PathBuf,
        /// backup (push into its series, append-only), read (list and pull), or admin.
        #[arg(long, value_parser = ["backup", "read", "admin"])]
        role: String,
        /// The series it may see and publish into; `*` stands for any characters
        /// (e.g. 'vm*'). Default: all.
        #[arg(long, default_value = "*")]
        series: String,
        /// Its name in the audit log and `token list` (default: ROLE-N).
        #[arg(long)]
        name: Option<String>,
        /// Most bytes of new stored data it may add, e.g. 500G (default: no limit).
        #[arg(long)]
        quota: Option<String>,
    },
    /// List the tokens: names, roles, series, quotas and what they used (never the tokens).
    List {
        /// The tokens file.
        file: PathBuf,
    },
    /// Remove a token (a running server stops accepting it at its next request).
    Remove {
        /// The tokens file.
        file: PathBuf,
        /// The token's name.
        name: String,
    },
}
