//! `tessera`: the command-line front end. Parses arguments, calls the engine, prints
//! human-readable text or (`--json`) one JSON document on stdout.
//!
//! Exit codes follow from the kind of the error ([`tessera_engine::ErrorKind`]), mapped in
//! one place, [`exit_code_for`] (SPEC.md §11):
//!
//! | code | kind | meaning |
//! |---|---|---|
//! | 0 | | success |
//! | 1 | `failed` | the operation failed: I/O, full disk, unreadable source, network |
//! | 2 | `usage` | bad usage: bad arguments, unknown snapshot, disk or series |
//! | 3 | `locked` | the repository is locked by another writer (retry later) |
//! | 4 | `damage` | verification, repair or compaction found problems, or the operation met damaged or malicious data |
//! | 5 | `refused` | the request conflicts with the repository's state or policy |
//! | 6 | `key` | the passphrase, key file or recovery key does not unlock the repository |
//! | 70 | `internal` | a bug in tessera |
//!
//! With `--json` a failure prints `{"ok": false, "error": MESSAGE, "kind": KIND}`.

mod args;
mod commands;
mod doc;
mod files_args;
mod job_args;
mod keys;
mod output;
mod sync_args;

use clap::Parser as _;
use tessera_engine::ErrorKind;

/// Makes a closed stdout (e.g. `tessera list | head`) end the process quietly, as for any
/// Unix tool, instead of panicking inside `println!`. Network writes that could raise
/// SIGPIPE on a reset connection are kept from it where they happen: std's sockets send with
/// `MSG_NOSIGNAL`, and the S3 client's threads block SIGPIPE (`storage::s3`).
#[expect(
    unsafe_code,
    reason = "signal(2) has no safe wrapper in std; SIG_DFL for SIGPIPE is always valid"
)]
fn restore_default_sigpipe() {
    // SAFETY: installing the default disposition for SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    restore_default_sigpipe();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is bad usage (exit 2),
            // reported as JSON too when --json was given.
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                doc::print_usage_error(&e.render().to_string());
            }
            e.exit();
        }
    };
    let json = cli.json;
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let kind = kind_of(&err);
            doc::print_failure(&err, kind, json);
            exit_code_for(kind)
        }
    };
    std::process::exit(code);
}

/// The kind of a failed command: that of the first engine error in its chain; a misuse of
/// the command line found after parsing is `usage`; anything else (an I/O error of the
/// CLI itself) `failed`.
fn kind_of(err: &anyhow::Error) -> ErrorKind {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<tessera_engine::Error>() {
            return e.kind();
        }
        if cause.is::<args::UsageError>() {
            return ErrorKind::Usage;
        }
    }
    ErrorKind::Failed
}

/// The exit code of each kind of failure (see the module docs); the one place they are
/// assigned.
pub(crate) fn exit_code_for(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Failed => 1,
        ErrorKind::Usage => 2,
        ErrorKind::Locked => 3,
        ErrorKind::Damage => 4,
        ErrorKind::Refused => 5,
        ErrorKind::Key => 6,
        ErrorKind::Internal => 70,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_documented_code() {
        let codes: Vec<i32> = ErrorKind::ALL.iter().map(|k| exit_code_for(*k)).collect();
        assert_eq!(codes, [1, 2, 3, 4, 6, 5, 70]);
    }

    #[test]
    fn the_kind_comes_from_the_engine_error_in_the_chain() {
        let internal = anyhow::Error::from(tessera_engine::Error::Internal("x".into()));
        assert_eq!(exit_code_for(kind_of(&internal)), 70);
        let wrapped = anyhow::Error::from(tessera_engine::Error::Protected {
            snapshot: tessera_format::SnapshotId([1; 32]),
        })
        .context("forgetting");
        assert_eq!(kind_of(&wrapped), ErrorKind::Refused);
        let usage = anyhow::Error::from(args::UsageError("bad".into()));
        assert_eq!(kind_of(&usage), ErrorKind::Usage);
        assert_eq!(kind_of(&anyhow::anyhow!("plain")), ErrorKind::Failed);
    }
}
