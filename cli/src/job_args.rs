//! Arguments of `tessera job` and `tessera daemon` (SPEC.md §26).

use std::path::PathBuf;

/// `tessera job ...`.
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Check a job file without touching any repository: every error with its line,
    /// column and key.
    Check {
        /// The job file (NAME.toml).
        file: PathBuf,
    },
    /// Run a job now: hook before, backup, hook after, prune, verify, sync, as one run with
    /// one report, stopping at the first failure.
    Run {
        /// The job file (NAME.toml).
        file: PathBuf,
        #[command(flatten)]
        mode: ModeArgs,
        #[command(flatten)]
        state: StateArgs,
    },
    /// The jobs of a directory: schedule, next slot, last run.
    List {
        /// The directory of job files.
        #[arg(long, value_name = "DIR")]
        jobs: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Past runs of a job, newest first.
    History {
        /// The job's name, or its file.
        job: String,
        /// Show at most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Overrides of the job file's reference mode.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct ModeArgs {
    /// This run reads every disk in full, as a key backup.
    #[arg(long)]
    pub full: bool,
    /// This run's deltas apply on the series' newest snapshot.
    #[arg(long)]
    pub incremental: bool,
    /// This run's deltas apply on the series' newest full (or key) snapshot.
    #[arg(long)]
    pub differential: bool,
}

/// Where run history is kept.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StateArgs {
    /// The state directory (default: $TESSERA_STATE_DIR, else $XDG_STATE_HOME/tessera,
    /// else ~/.local/state/tessera).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `tessera daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The directory of job files (NAME.toml); SIGHUP reads it again.
    #[arg(long, value_name = "DIR")]
    pub jobs: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Most runs at once (runs backing up one series of one repository, or syncing into a
    /// repository another run writes, wait for each other).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_parallel: u16,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9469).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Allow --metrics-listen on an address that is not loopback (plain HTTP).
    #[arg(long)]
    pub metrics_insecure_http: bool,
    /// Seconds running steps get to finish at SIGTERM before they are abandoned.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub stop_grace: u64,
    /// Also serve this repository as `tessera serve` does (sync API, dashboard with these
    /// jobs' runs, /metrics), with --tokens or --token-file, --listen, --tls-cert ... below.
    #[arg(long, value_name = "REPO")]
    pub serve: Option<String>,
    #[command(flatten)]
    pub server: crate::sync_args::ServerArgs,
}
