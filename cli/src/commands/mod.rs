//! One function per subcommand. Each returns the process exit code.

mod backup;
mod export;
mod files;
mod import;
mod inspect;
mod job;
mod key;
mod maintain;
mod mount;
mod repair;
mod restore;
mod retention;
mod serve_nbd;
mod sync;
mod token;
mod verify;

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::Repository;

use crate::args::{Cli, Command, UsageError};
use crate::output::Bars;

/// Runs the parsed command line.
#[expect(clippy::too_many_lines, reason = "one match arm per subcommand")]
pub fn run(cli: Cli) -> Result<i32> {
    let bars = Bars::new(cli.json, cli.quiet);
    let json = cli.json;
    let options = cli.storage.options();
    let at = |repo: &str| RepoLocation::parse(repo, options.clone());
    crate::keys::set_global(cli.keys);
    match cli.command {
        Command::Init {
            repo,
            block_size,
            compression,
            encryption,
            immutability,
        } => {
            let keys_from = encryption.keys_from.as_deref().map(&at).transpose()?;
            let repo = at(&repo)?;
            if options.cache_dir.is_some()
                && repo.is_s3()
                && keys_from.as_ref().is_some_and(RepoLocation::is_s3)
            {
                return Err(UsageError(
                    "--cache-dir names the cache of one S3 repository, and both the new repository and --keys-from are in S3: leave it out (each gets its own cache under $XDG_CACHE_HOME)".into(),
                )
                .into());
            }
            maintain::init(
                &repo,
                keys_from.as_ref(),
                &block_size,
                &compression,
                &encryption,
                &immutability,
                json,
            )
        }
        Command::Immutable {
            repo,
            period,
            lock_mode,
        } => retention::immutable(&at(&repo)?, period.as_deref(), lock_mode.as_deref(), json),
        Command::Backup {
            repo,
            series,
            disks,
            tags,
            block_size,
            delta,
        } => backup::backup(
            &at(&repo)?,
            series,
            &disks,
            &tags,
            block_size.as_deref(),
            &delta,
            json,
            &bars,
        ),
        Command::List { repo, series } => inspect::list(&at(&repo)?, series.as_deref(), json),
        Command::Show { repo, snapshot } => inspect::show(&at(&repo)?, &snapshot, json),
        Command::Stats { repo } => inspect::stats(&at(&repo)?, json),
        Command::Restore {
            repo,
            snapshot,
            out: Some(out),
            force,
            ..
        } => restore::restore(&at(&repo)?, &snapshot, &out, force, json, &bars),
        Command::Restore {
            repo,
            snapshot,
            onto: Some(onto),
            assume: Some(assume),
            check_target,
            ..
        } => restore::restore_onto(
            &at(&repo)?,
            &snapshot,
            &onto,
            &assume,
            check_target,
            json,
            &bars,
        ),
        Command::Restore { .. } => Err(crate::args::UsageError(
            "give OUT, or --onto TARGET --assume SNAPSHOT".into(),
        )
        .into()),
        Command::Diff {
            repo,
            from,
            to,
            disk,
        } => restore::diff(&at(&repo)?, &from, &to, disk.as_deref(), json),
        Command::Mount { repo, mountpoint } => mount::run(&at(&repo)?, &mountpoint, json),
        Command::ServeNbd {
            repo,
            snapshot,
            listen,
            socket,
            cache_mib,
            keepalive,
            tls,
            limits,
        } => serve_nbd::run(
            &at(&repo)?,
            &snapshot,
            serve_nbd::Listen {
                tcp: &listen,
                socket: socket.as_deref(),
                keepalive: keepalive.get(),
            },
            cache_mib,
            &tls,
            &limits,
            json,
        ),
        Command::Export {
            repo,
            snapshot,
            out,
            format,
            base,
            backing_file,
            force,
        } => export::run(
            &at(&repo)?,
            &snapshot,
            &out,
            &format,
            base.as_deref(),
            backing_file.as_deref(),
            force,
            json,
            &bars,
        ),
        Command::Verify(args) => verify::run(&at(&args.repo)?, &args, json, &bars),
        Command::Repair(args) => repair::run(&at(&args.repo)?, &args, &options, json, &bars),
        Command::Forget {
            repo,
            snapshots,
            dry_run,
        } => retention::forget(&at(&repo)?, &snapshots, dry_run, json),
        Command::Prune {
            repo,
            series,
            keep,
            dry_run,
        } => retention::prune(
            &at(&repo)?,
            series.as_deref(),
            &keep.policy(),
            dry_run,
            json,
        ),
        Command::Protect { repo, snapshot } => {
            retention::protect(&at(&repo)?, &snapshot, true, json)
        }
        Command::Unprotect { repo, snapshot } => {
            retention::protect(&at(&repo)?, &snapshot, false, json)
        }
        Command::Sync(args) => sync::sync(&args, &options, json, &bars),
        Command::Seed(cmd) => sync::seed(&cmd, &at, json, &bars),
        Command::Serve(args) => sync::serve(&at(&args.repo)?, &args, json),
        Command::Token(cmd) => token::run(&cmd, json),
        Command::Key(cmd) => key::run(&cmd, &at, json),
        Command::Import(cmd) => import::run(&cmd, &at, json, &bars),
        Command::Job(cmd) => job::run(&cmd, json, &bars),
        Command::Daemon(args) => job::daemon(&args, &at),
        Command::Files(cmd) => files::run(&cmd, &at, json, &bars),
        Command::Compact {
            repo,
            max_unused,
            dry_run,
            grace,
            allow_short_grace,
        } => retention::compact(
            &at(&repo)?,
            &max_unused,
            (&grace, allow_short_grace),
            dry_run,
            json,
            &bars,
        ),
    }
}

/// Opens `repo` as the writer (unlocking it with the key options when it is encrypted)
/// and tells the operator (on stderr, never in `--json` output) what recovery finished or
/// undid of an interrupted run, and what bringing an S3 repository's index cache up to date
/// did.
pub fn open_writer(repo: &RepoLocation) -> tessera_engine::Result<Repository> {
    let repository = repo.open_writer(crate::keys::global())?;
    note_recovery(&repository.recovery);
    Ok(repository)
}

/// Opens `repo` for a backup of `series` (SPEC.md §8: the series' lock for the whole run,
/// the writer lock only to publish), telling the operator what recovery did.
pub fn open_for_backup(repo: &RepoLocation, series: &str) -> tessera_engine::Result<Repository> {
    let repository = repo.open_backup(crate::keys::global(), series)?;
    note_recovery(&repository.recovery);
    Ok(repository)
}

/// Opens `repo` for reading (unlocking it when it is encrypted), telling the operator (on
/// stderr) what bringing an S3 repository's index cache up to date did.
pub fn open_reader(repo: &RepoLocation) -> tessera_engine::Result<Repository> {
    let repository = repo.open(crate::keys::global())?;
    note_recovery(&repository.recovery);
    Ok(repository)
}

/// Tells the operator (on stderr, also with `--json`) what a writer's recovery finished or
/// undid, if anything: for commands whose engine call opens the writer itself.
pub fn note_recovery(recovery: &tessera_engine::recovery::Recovery) {
    if let Some(note) = recovery.summary() {
        eprintln!("note: {note}");
    }
}
