//! Command-line syntax.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tessera_engine::ops::backup::ReferenceChoice;
use tessera_engine::ops::prune::KeepPolicy;
use tessera_engine::ops::repair::request::SourceImage;
use tessera_engine::time::Span;
use tessera_engine::SnapshotRef;

/// A misuse of the command line detected after parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::error::Error for UsageError {}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// TCP keepalive of a server's client connections (`serve`, `serve-nbd`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct KeepaliveArg {
    /// Seconds of silence before a client connection is probed (TCP keepalive). A client
    /// that went away without closing (power loss, network cut) is dropped about twice this
    /// long after its last bytes, and its thread and request slot are freed (at most 32767,
    /// the kernel's limit).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = tessera_engine::net::DEFAULT_KEEPALIVE.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=32_767)
    )]
    pub keepalive: u64,
}

impl KeepaliveArg {
    /// The engine's form.
    pub fn get(self) -> tessera_engine::net::Keepalive {
        tessera_engine::net::Keepalive {
            idle: std::time::Duration::from_secs(self.keepalive),
        }
    }
}

/// TLS of `serve-nbd` (NBD_OPT_STARTTLS; every client must use it).
#[derive(Debug, Clone, clap::Args)]
pub struct NbdTlsArgs {
    /// Require TLS, with this PEM certificate (chain, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (unencrypted).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Serve plain NBD on an address that is not loopback (the disks cross the network in
    /// clear: only for a trusted network).
    #[arg(long)]
    pub insecure: bool,
}

/// Bounds of `serve-nbd` (SPEC.md §15).
#[derive(Debug, Clone, clap::Args)]
pub struct NbdLimitArgs {
    /// Most clients served at once.
    #[arg(long, value_name = "N", default_value_t = tessera_engine::nbd::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_connections: usize,
    /// Most clients served at once from one IP address (IPv6: one /64).
    #[arg(long, value_name = "N", default_value_t = tessera_engine::nbd::DEFAULT_MAX_PER_PEER, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_per_peer: usize,
    /// Seconds a client has from connecting to choosing its export (TLS included).
    #[arg(long, value_name = "SECS", default_value_t = tessera_engine::nbd::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub handshake_timeout: u64,
    /// Seconds a client may stay silent between requests before it is disconnected (raise
    /// it for a VM booted on the export that may sit idle longer).
    #[arg(long, value_name = "SECS", default_value_t = tessera_engine::nbd::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idle_timeout: u64,
    /// Most options a client may send before choosing an export.
    #[arg(long, value_name = "N", default_value_t = tessera_engine::nbd::DEFAULT_MAX_OPTIONS, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_options: u32,
    /// Largest option a client may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = tessera_engine::nbd::DEFAULT_MAX_OPTION_BYTES, value_parser = clap::value_parser!(u32).range(i64::from(tessera_engine::nbd::MIN_OPTION_BYTES)..=i64::from(tessera_engine::formats::nbd::MAX_OPTION)))]
    pub max_option_bytes: u32,
}

impl NbdLimitArgs {
    /// The engine's form.
    pub fn get(&self) -> tessera_engine::nbd::Limits {
        tessera_engine::nbd::Limits {
            max_connections: self.max_connections,
            max_per_peer: self.max_per_peer,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
            max_options: self.max_options,
            max_option_bytes: self.max_option_bytes,
        }
    }
}

/// How `backup` uses delta information (VHD differencing disks, qcow2 overlays, NBD dirty
/// bitmaps, changed-block lists).
#[derive(Debug, clap::Args)]
pub struct DeltaArgs {
    /// The snapshot the delta applies on: `latest` (the series' newest), `latest-full` (its
    /// newest read in full: a differential), an id prefix, or `latest@SERIES`. Without it, a delta source is used as a delta when the series'
    /// newest snapshot was taken from its base, and read in full otherwise.
    #[arg(long)]
    pub reference: Option<ReferenceChoice>,
    /// Read the whole disk when a delta does not belong to the reference, instead of failing.
    #[arg(long)]
    pub fallback_full: bool,
    /// Make this a key backup: read every disk in full, report drift from the delta
    /// information, check the stored copy of every chunk and heal damaged ones.
    #[arg(long)]
    pub full: bool,
    /// Every Nth backup of a series is a key backup (0: only with --full or when a disk's
    /// size or identity changes).
    #[arg(long, default_value_t = 20)]
    pub key_interval: u32,
    /// How to read the disks: auto (probe), raw, vhd or qcow2.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// A changed-block list for a raw disk, as DISK=FILE (repeatable); see SPEC.md.
    #[arg(long = "changes")]
    pub changes: Vec<String>,
    /// A directory besides each image's own from which the backing files (qcow2) and
    /// parents (VHD) that images name may be opened (repeatable).
    #[arg(long = "allow-backing-dir", value_name = "DIR")]
    pub allow_backing_dirs: Vec<std::path::PathBuf>,
    /// PEM CA certificates trusted, besides the system's roots, for the certificates of
    /// nbds:// servers.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// How `init` protects a new repository (SPEC.md §23).
#[derive(Debug, Clone, clap::Args)]
pub struct InitEncryptionArgs {
    /// aes-256-gcm (the default: a passphrase or --key-file unlocks it) or none (a plain
    /// repository, readable by anyone who can read its files).
    #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "none"])]
    pub encryption: String,
    /// Write the recovery key to this new file (0600) instead of printing it; needed with
    /// --json, whose output never holds a secret.
    #[arg(long, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    /// Argon2id memory of the passphrase slot, MiB (19 to 1024).
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(19..=1024))]
    pub kdf_memory_mib: u32,
    /// Argon2id passes of the passphrase slot (2 to 16).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub kdf_iterations: u32,
    /// Share the keys of this encrypted repository (unlocked with --passphrase-file,
    /// --key-file, ...), so that sync and repair --from can copy records between the two
    /// without re-encrypting them. The same secret opens the new repository unless
    /// --new-passphrase-file or --new-key-file gives another.
    #[arg(long, value_name = "REPO")]
    pub keys_from: Option<String>,
    /// With --keys-from: read the new repository's passphrase from this file instead.
    #[arg(
        long,
        value_name = "FILE",
        requires = "keys_from",
        conflicts_with = "new_key_file"
    )]
    pub new_passphrase_file: Option<PathBuf>,
    /// With --keys-from: a key file for the new repository instead (created 0600 when it
    /// does not exist).
    #[arg(long, value_name = "FILE", requires = "keys_from")]
    pub new_key_file: Option<PathBuf>,
}

/// `tessera key …`: the key slots of an encrypted repository (SPEC.md §23.4). The global
/// options (`--passphrase-file`, `--key-file`, …) unlock it; `--new-*` give the new secret.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key slots: kind, Argon2id cost, creation time (nothing secret).
    List {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
    },
    /// Add a slot opened by a new passphrase or key file.
    Add {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        #[command(flatten)]
        new: NewSecretArgs,
    },
    /// Remove a slot (not the last one that is not the recovery key).
    Remove {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Slot id, or a unique prefix of it (see `key list`).
        slot: String,
    },
    /// Replace the passphrase that unlocked the repository with a new one.
    ChangePassphrase {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        #[command(flatten)]
        new: NewSecretArgs,
    },
    /// Make a new recovery key (printed once, or written to --recovery-key-file) and remove
    /// the old recovery slot: the recovery key itself is stored nowhere.
    ExportRecovery {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Write the new recovery key to this new file (0600) instead of printing it;
        /// needed with --json.
        #[arg(long, value_name = "FILE")]
        recovery_key_file: Option<PathBuf>,
    },
}

/// The new secret of `key add` / `key change-passphrase`: `--new-key-file`,
/// `--new-passphrase-file`, `TESSERA_NEW_PASSPHRASE`, or a prompt (twice) on a terminal.
#[derive(Debug, Clone, clap::Args)]
pub struct NewSecretArgs {
    /// Read the new passphrase from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
    pub new_passphrase_file: Option<PathBuf>,
    /// A key file for the new slot (created 0600 when it does not exist).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// Argon2id memory of a new passphrase slot, MiB (19 to 1024).
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(19..=1024))]
    pub kdf_memory_mib: u32,
    /// Argon2id passes of a new passphrase slot (2 to 16).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub kdf_iterations: u32,
}

/// tessera: deduplicating, content-addressed backups of disk images.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    /// Print one JSON document on stdout instead of text (errors too); no progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never show progress bars (they are shown only on a terminal anyway).
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub keys: crate::keys::KeyArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach repositories in S3-compatible object storage (`s3://BUCKET/PREFIX`), for
/// every command. Credentials come from the AWS environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or the `~/.aws` profile (`AWS_PROFILE`),
/// never from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Endpoint URL of an S3-compatible server, e.g. http://127.0.0.1:8333 (default:
    /// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS itself).
    #[arg(long, global = true, env = "TESSERA_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style requests (ENDPOINT/BUCKET/KEY) rather than virtual-hosted ones
    /// (BUCKET.ENDPOINT/KEY). Default: on with a custom endpoint, off for AWS;
    /// --s3-path-style=false turns it off.
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub s3_path_style: Option<bool>,
    /// Allow a plain http:// S3 endpoint whose host is not a loopback address (requests are
    /// signed, not encrypted: the backups cross the network in clear).
    #[arg(long, global = true)]
    pub s3_insecure_http: bool,
    /// Local directory of an s3:// repository's index cache, ledger and locks (default:
    /// $XDG_CACHE_HOME/tessera/BUCKET/HASH, else ~/.cache/tessera/BUCKET/HASH). Deleting it
    /// loses nothing: the index is rebuilt from the bucket.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl StorageArgs {
    /// The engine's options.
    pub fn options(&self) -> tessera_engine::location::LocationOptions {
        tessera_engine::location::LocationOptions {
            s3: tessera_engine::storage::s3::S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                path_style: self.s3_path_style,
                insecure_http: self.s3_insecure_http,
                ..Default::default()
            },
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// `tessera import …`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import a Xen Orchestra backup remote's incremental backups, one snapshot per backup,
    /// each a synthetic full (SPEC §25). Reruns import only what is new.
    Xo {
        /// The remote's folder (an NFS or SMB mount): the one holding `xo-vm-backups/`.
        remote: PathBuf,
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Only this VM (its UUID); repeatable.
        #[arg(long = "vm")]
        vms: Vec<String>,
        /// Only backups taken at or after this time (2026-01-31, 2026-01-31T12:00:00 in
        /// UTC, or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Report what would be imported; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// A file holding the encrypted remote's key (its 32 characters, as given to XO; a
        /// trailing newline is ignored).
        #[arg(long)]
        encryption_key_file: Option<PathBuf>,
    },
}

/// Immutable backups at init (SPEC §28).
#[derive(Debug, clap::Args)]
pub struct ImmutabilityArgs {
    /// Keep every snapshot immutable this long after it is taken (e.g. 30d, 12h): on S3
    /// through Object Lock (the bucket must have it enabled), in a directory with
    /// `chattr +i` (needs root and a filesystem that supports it). Default: off.
    #[arg(long, value_name = "DURATION")]
    pub immutable: Option<String>,
    /// On S3: compliance (no one can shorten a retention) or governance.
    #[arg(long, value_parser = ["compliance", "governance"], default_value = "compliance")]
    pub lock_mode: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty repository.
    Init {
        /// Where: a directory to create (must not exist or be empty), `file://PATH`, or
        /// `s3://BUCKET/PREFIX` (an existing bucket; nothing stored under the prefix yet).
        repo: String,
        /// Default block size: a power of two from 64K to 8M (e.g. 64K, 1M).
        #[arg(long, default_value = "64K")]
        block_size: String,
        /// Compression of new data: zstd:LEVEL (1-19), zstd, or none.
        #[arg(long, default_value = "zstd:2")]
        compression: String,
        #[command(flatten)]
        encryption: InitEncryptionArgs,
        #[command(flatten)]
        immutability: ImmutabilityArgs,
    },
    /// Show or raise how long snapshots stay immutable (S3 Object Lock, `chattr +i`), and
    /// extend the retention of existing snapshots' objects where it falls short.
    Immutable {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// New period (e.g. 30d, 12h): enables immutability, or lengthens it (never shortens).
        #[arg(long)]
        period: Option<String>,
        /// On S3: compliance (no one can shorten it) or governance.
        #[arg(long, value_parser = ["compliance", "governance"])]
        lock_mode: Option<String>,
    },
    /// Back up one or more disks into one snapshot.
    Backup {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Series (backup job) name, e.g. the VM's name.
        #[arg(long)]
        series: String,
        /// Disks as NAME=PATH (raw image file or block device).
        #[arg(required = true)]
        disks: Vec<String>,
        /// Tags as KEY=VALUE (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Block size for new disks of this series (default: the repository's).
        #[arg(long)]
        block_size: Option<String>,
        #[command(flatten)]
        delta: DeltaArgs,
    },
    /// List snapshots, oldest first.
    List {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Only this series.
        #[arg(long)]
        series: Option<String>,
    },
    /// Show one snapshot in detail.
    Show {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Snapshot: id prefix, `latest` or `latest@SERIES`.
        snapshot: SnapshotRef,
    },
    /// Space used and saved by the repository.
    Stats {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
    },
    /// Restore a snapshot's disk to a raw file (sparse) or an existing block device.
    Restore {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT or SNAPSHOT:DISK. Without :DISK, a one-disk snapshot restores to OUT, and a
        /// snapshot with several disks restores each to OUT/DISK.raw.
        snapshot: String,
        /// Output file, block device, or directory (several disks).
        #[arg(required_unless_present = "onto", conflicts_with = "onto")]
        out: Option<PathBuf>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// Incremental restore: turn this existing file or block device, which holds the
        /// --assume snapshot's disk, into SNAPSHOT's disk by writing only the blocks that differ.
        #[arg(long, requires = "assume")]
        onto: Option<PathBuf>,
        /// The snapshot whose disk --onto's target holds now.
        #[arg(long, requires = "onto")]
        assume: Option<String>,
        /// Before writing, hash the whole target and refuse unless it really holds --assume.
        #[arg(long, requires = "onto")]
        check_target: bool,
    },
    /// Mount every snapshot's disks and partitions as read-only files (FUSE) until Ctrl-C:
    /// MOUNTPOINT/SERIES/TIME-ID/DISK.raw and DISK.partN.raw, for `mount -o loop,ro`.
    Mount {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// An empty directory to mount on.
        mountpoint: PathBuf,
    },
    /// Serve a snapshot's disks read-only over NBD (qemu-img, nbdcopy, nbd-client, a VM).
    ServeNbd {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT or SNAPSHOT:DISK (one export per disk, named after the disk).
        snapshot: String,
        /// TCP address to listen on. Plain NBD is served on loopback addresses only, unless
        /// --tls-cert or --insecure.
        #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
        listen: String,
        /// Unix socket to listen on instead of TCP.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Memory for decompressed chunks shared by all clients, in MiB.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
        #[command(flatten)]
        keepalive: KeepaliveArg,
        #[command(flatten)]
        tls: NbdTlsArgs,
        #[command(flatten)]
        limits: NbdLimitArgs,
    },
    /// Export a snapshot's disk, or only its delta from a base snapshot, as raw, qcow2 or VHD.
    Export {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT or SNAPSHOT:DISK.
        snapshot: String,
        /// Output file.
        out: PathBuf,
        /// raw, qcow2 or vhd.
        #[arg(long, default_value = "raw")]
        format: String,
        /// Write only the blocks that differ from this snapshot: a qcow2 overlay or a VHD
        /// differencing disk on top of the base's export.
        #[arg(long)]
        base: Option<String>,
        /// With --base: the file name to record as the backing file / parent (default: derived from the base).
        #[arg(long, requires = "base")]
        backing_file: Option<String>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// Changed extents between two snapshots, from their manifests alone.
    Diff {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// The older snapshot.
        from: String,
        /// The newer snapshot.
        to: String,
        /// Only this disk (default: every disk both snapshots have).
        #[arg(long)]
        disk: Option<String>,
    },
    /// Check the repository: snapshots, references, counts and (unless --metadata-only) every stored byte.
    Verify(VerifyArgs),
    /// Repair the repository.
    Repair(RepairArgs),
    /// Forget snapshots (metadata only; `compact` reclaims the space later).
    Forget {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Snapshots: id prefixes, `latest` or `latest@SERIES`.
        #[arg(required = true)]
        snapshots: Vec<SnapshotRef>,
        /// Show what would be forgotten and freed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Forget the snapshots a retention policy does not keep.
    Prune {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Only this series (default: every series, each on its own).
        #[arg(long)]
        series: Option<String>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Show the plan (kept by which rule, forgotten, bytes freed), change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Protect a snapshot from prune and forget.
    Protect {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// The snapshot.
        snapshot: SnapshotRef,
    },
    /// Remove a snapshot's protection.
    Unprotect {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// The snapshot.
        snapshot: SnapshotRef,
    },
    /// Copy snapshots to another repository, sending only the objects it lacks.
    Sync(crate::sync_args::SyncArgs),
    /// Seed bundles: carry a repository's data to another site on a removable disk.
    #[command(subcommand)]
    Seed(crate::sync_args::SeedCommand),
    /// Serve a repository over HTTP, for `tessera sync` from or to another machine.
    Serve(crate::sync_args::ServeArgs),
    /// Manage the tokens file of `serve --tokens` (tokens with roles, series and quotas).
    #[command(subcommand)]
    Token(crate::sync_args::TokenCommand),
    /// Bring backups made by another tool into a repository.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Job files: check one, run one now, list a directory's, show a job's past runs.
    #[command(subcommand)]
    Job(crate::job_args::JobCommand),
    /// Run every job of a directory on its schedule; metrics at --metrics-listen.
    Daemon(crate::job_args::DaemonArgs),
    /// Manage the key slots of an encrypted repository (no data is rewritten).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Files and folders inside a snapshot's disks: list, read, restore, find across a series.
    #[command(subcommand)]
    Files(crate::files_args::FilesCommand),
    /// Rewrite packs with too much unreferenced data, reclaiming the space.
    Compact {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// Rewrite packs whose unused share exceeds this (e.g. 10%).
        #[arg(long, default_value = "10%")]
        max_unused: String,
        /// Show which packs would be rewritten, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave alone packs indexed within this long (e.g. 7d, 12h, 0): their objects may
        /// belong to a push or an interrupted backup that has not published yet. In an S3
        /// repository also how long emptied packs stay (doomed) before a later compact
        /// deletes them: other machines' operations must finish within it.
        #[arg(long, default_value = "7d")]
        grace: String,
        /// Accept a --grace under 1d in an S3 repository (refused otherwise): only when no
        /// other machine runs an operation on it for longer than the grace.
        #[arg(long)]
        allow_short_grace: bool,
    },
}

/// Options of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
    pub repo: String,
    /// Check structure and counts without reading chunk data.
    #[arg(long)]
    pub metadata_only: bool,
    /// Only what these snapshots need (id prefixes, `latest`, `latest@SERIES`; repeatable).
    #[arg(long = "snapshot")]
    pub snapshots: Vec<SnapshotRef>,
    /// Only what the snapshots of this series need.
    #[arg(long)]
    pub series: Option<String>,
    /// Read a random subset: a share of the objects (`5%`) or an amount of stored data (`10GiB`).
    #[arg(long)]
    pub sample: Option<String>,
    /// Seed of `--sample` (default: random, printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip objects the verification ledger says were verified within this duration (e.g. 30d).
    #[arg(long)]
    pub skip_verified_within: Option<Span>,
}

/// Options of `repair`.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
    pub repo: String,
    /// Rebuild the index from packs and snapshot files (also when it is missing or corrupt).
    #[arg(long)]
    pub rebuild_index: bool,
    /// Recompute every reference count from the snapshots and fix the ones that differ.
    #[arg(long)]
    pub recount: bool,
    /// Fetch intact copies of damaged or missing objects from another repository (a
    /// directory, `file://PATH` or `s3://BUCKET/PREFIX`).
    #[arg(long)]
    pub from: Option<String>,
    /// Re-read damaged or missing chunks from a source image of a disk, as DISK=PATH (repeatable).
    #[arg(long = "from-source")]
    pub from_source: Vec<SourceImage>,
    /// Without other copies: move the intact objects of damaged packs (bad footer, trailer
    /// or records) into new packs, quarantine the old packs, and report what is lost; also
    /// move stored snapshot files that cannot be catalogued (they name objects the
    /// repository lacks) into quarantine, so that compaction may run again.
    #[arg(long)]
    pub quarantine: bool,
}

/// Retention rules of `prune`.
#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_field_names,
    reason = "the fields are the --keep-* flags"
)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep everything within this duration of the newest snapshot (e.g. 30d, 12h, 1y6m).
    #[arg(long)]
    pub keep_within: Option<Span>,
}

impl KeepArgs {
    /// The engine's policy.
    pub fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
        }
    }
}

pub use tessera_engine::units::{parse_fraction, parse_size};

/// Splits `KEY=VALUE`.
pub fn split_pair<'a>(what: &str, s: &'a str) -> Result<(&'a str, &'a str), UsageError> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| UsageError(format!("{what} {s:?} must look like NAME=VALUE")))
}
