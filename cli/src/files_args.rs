//! Command-line syntax of `files` (SPEC.md §24).

use std::path::PathBuf;

use clap::Subcommand;
use tessera_engine::ops::files::FileRef;
use tessera_engine::SnapshotDiskRef;

/// `tessera files …`: files and folders inside a snapshot's disks, read in place.
/// A file is named `SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH`: `latest@vm1:/etc/hostname`,
/// `latest@vm1:sda:2:/home` (PART: number, GPT name or GPT partition GUID),
/// `latest@vm1:sda:2:vg0/root:/etc` (an LVM2 logical volume on that partition).
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Show a disk's partition table, what each partition holds, and the logical volumes of
    /// an LVM2 physical volume.
    Parts {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT or SNAPSHOT:DISK.
        disk: SnapshotDiskRef,
    },
    /// List a directory (name, type, size, mode, owner, mtime).
    Ls {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH.
        path: FileRef,
        /// Long listing, like `ls -l`.
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Describe one file (a symlink itself, not its target).
    Stat {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH.
        path: FileRef,
    },
    /// Write one file's bytes to stdout.
    Cat {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH.
        path: FileRef,
    },
    /// Restore a file or a directory tree (modes, times, symlinks, hard links, holes; owners
    /// as root), or write it as a tar stream.
    Get {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// SNAPSHOT[:DISK[:PART]][:VG/LV]:/PATH.
        path: FileRef,
        /// Where: a new path, or an existing directory to restore into; with --tar a file
        /// to create, or `-` for stdout.
        dest: PathBuf,
        /// Write a tar stream (GNU format) instead of files.
        #[arg(long)]
        tar: bool,
        /// Replace existing files and merge into existing directories.
        #[arg(long)]
        force: bool,
    },
    /// In which snapshots of a series a path (or names matching --name) exists, and where it
    /// changed (kind, size, mtime, SHA-256 of the content).
    Find {
        /// The repository: a directory, `file://PATH` or `s3://BUCKET/PREFIX`.
        repo: String,
        /// The series to search, oldest snapshot first.
        #[arg(long)]
        series: String,
        /// The disk (needed when the snapshots have several).
        #[arg(long)]
        disk: Option<String>,
        /// The partition: number, GPT name or GPT partition GUID.
        #[arg(long)]
        part: Option<String>,
        /// The LVM2 logical volume, as VG/LV (when the volume is a physical volume).
        #[arg(long)]
        lv: Option<String>,
        /// Names matching this shell glob anywhere (e.g. '*.conf'), instead of a path.
        #[arg(
            long,
            value_name = "GLOB",
            conflicts_with = "path",
            required_unless_present = "path"
        )]
        name: Option<String>,
        /// The path to follow through the series, e.g. /etc/passwd.
        path: Option<String>,
        /// With --name: list every match in every snapshot, not only what was added, changed
        /// or removed (a PATH is always listed in every snapshot that has it).
        #[arg(long)]
        all: bool,
    },
}
