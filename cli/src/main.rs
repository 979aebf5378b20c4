//! `tessera`: the command-line front end. Parses arguments, calls the engine, prints
//! human-readable text or (`--json`) one JSON document on stdout.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 bad usage; 3 the repository is locked
//! by another writer (retry later); 4 verification found problems.

mod args;
mod commands;
mod output;
mod sync_args;

use clap::Parser as _;

/// Makes a closed stdout (e.g. `tessera list | head`) end the process quietly, as for any
/// Unix tool, instead of panicking inside `println!`.
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
            let usage_error = e.use_stderr();
            if usage_error && std::env::args().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first_paragraph = text.split("\n\n").next().unwrap_or("invalid command line");
                let first = first_paragraph
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let first = first.trim_start_matches("error: ");
                output::print_json(
                    &serde_json::json!({ "ok": false, "error": first, "usage": text }),
                );
            }
            e.exit();
        }
    };
    let json = cli.json;
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = exit_code_for(&err);
            output::print_error(&err, json);
            code
        }
    };
    std::process::exit(code);
}

fn exit_code_for(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<tessera_engine::Error>() {
        Some(tessera_engine::Error::Locked { .. }) => 3,
        Some(
            tessera_engine::Error::InvalidArgument(_)
            | tessera_engine::Error::SnapshotNotFound { .. }
            | tessera_engine::Error::AmbiguousSnapshot { .. },
        ) => 2,
        _ if err.downcast_ref::<args::UsageError>().is_some() => 2,
        _ => 1,
    }
}
