//! `tessera job check|run|list|history` and `tessera daemon` (SPEC.md §26).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use tessera_engine::crypto::SecretSource;
use tessera_engine::jobs::daemon::{daemon as run_daemon, DaemonOptions};
use tessera_engine::jobs::file::{job_files, job_name, RepositoryDef};
use tessera_engine::jobs::history::StateDir;
use tessera_engine::jobs::record::{short, Outcome, RunRecord, Trigger};
use tessera_engine::jobs::run::{run as run_job, KeySources, RunRequest};
use tessera_engine::jobs::values::RefMode;
use tessera_engine::jobs::Job;
use tessera_engine::time::{format_us, now_us};
use tessera_engine::ErrorKind;

use crate::doc::{print_doc, print_ok};
use crate::exit_code_for;
use crate::job_args::{DaemonArgs, JobCommand, ModeArgs};
use crate::keys::KeyArgs;
use crate::output::{bytes, Bars};

/// A job's secrets: what its `[repository]` names, else the global options (and
/// `TESSERA_PASSPHRASE`). The daemon never prompts.
struct JobKeys {
    no_prompt: bool,
}

impl KeySources for JobKeys {
    fn for_repository(&self, r: &RepositoryDef) -> Box<dyn SecretSource> {
        let mut keys = if r.key_file.is_none()
            && r.passphrase_file.is_none()
            && r.password_command.is_none()
        {
            crate::keys::global().clone()
        } else {
            KeyArgs {
                key_file: r.key_file.clone(),
                passphrase_file: r.passphrase_file.clone(),
                password_command: r.password_command.clone(),
                no_prompt: false,
            }
        };
        keys.no_prompt |= self.no_prompt;
        Box::new(keys)
    }
}

pub fn run(cmd: &JobCommand, json: bool, bars: &Bars) -> Result<i32> {
    match cmd {
        JobCommand::Check { file } => check(file, json),
        JobCommand::Run { file, mode, state } => run_now(
            file,
            mode,
            &StateDir::resolve(state.state_dir.as_deref())?,
            json,
            bars,
        ),
        JobCommand::List { jobs, state } => {
            list(jobs, &StateDir::resolve(state.state_dir.as_deref())?, json)
        }
        JobCommand::History { job, limit, state } => history(
            job,
            *limit,
            &StateDir::resolve(state.state_dir.as_deref())?,
            json,
        ),
    }
}

#[derive(Serialize)]
struct Checked<'a> {
    name: &'a str,
    series: &'a str,
    repository: &'a str,
    /// The `tessera serve` server pushed to, when the job's repository is one.
    server: Option<&'a str>,
    schedule: Option<&'a str>,
    next: Option<String>,
    warnings: &'a [String],
}

fn check(file: &Path, json: bool) -> Result<i32> {
    let job = Job::load(file)?;
    let schedule = job.def.schedule.as_ref();
    let report = Checked {
        name: &job.name,
        series: job.series(),
        repository: job.def.repository.location.get_ref(),
        server: job.server.as_deref(),
        schedule: schedule.map(|s| s.cron.text.as_str()),
        next: schedule.and_then(|s| s.next_after(now_us())).map(format_us),
        warnings: &job.warnings,
    };
    if json {
        print_ok(&report);
    } else {
        let target = report.server.map_or_else(
            || format!("repository {}", report.repository),
            |s| {
                format!(
                    "server {s} through staging repository {}",
                    report.repository
                )
            },
        );
        println!(
            "{}: job {} is valid (series {}, {target})",
            file.display(),
            report.name,
            report.series,
        );
        if let (Some(s), Some(n)) = (report.schedule, &report.next) {
            println!("  schedule {s:?}: next run {n}");
        }
        for w in report.warnings {
            println!("  warning: {w}");
        }
    }
    Ok(0)
}

fn mode_override(m: &ModeArgs) -> Option<RefMode> {
    if m.full {
        Some(RefMode::Full)
    } else if m.incremental {
        Some(RefMode::Incremental)
    } else if m.differential {
        Some(RefMode::Differential)
    } else {
        None
    }
}

fn run_now(file: &Path, mode: &ModeArgs, state: &StateDir, json: bool, bars: &Bars) -> Result<i32> {
    let job = Job::load(file)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    let req = RunRequest {
        mode: mode_override(mode),
        trigger: Trigger::Manual,
        slot_us: None,
        stop: None,
        frozen: None,
        progress: bars,
        on_record: None,
    };
    let finished = run_job(&job, state, &req, &JobKeys { no_prompt: false })?;
    let r = &finished.record;
    let code = match r.outcome {
        Outcome::Success | Outcome::Warning => 0,
        Outcome::Damage => exit_code_for(ErrorKind::Damage),
        _ => exit_code_for(finished.error_kind.unwrap_or(ErrorKind::Failed)),
    };
    if json {
        let problem = (code != 0).then(|| {
            (
                finished.error_kind.unwrap_or(ErrorKind::Failed),
                r.failure
                    .as_ref()
                    .map_or_else(|| r.summary(), |f| f.message.clone()),
            )
        });
        print_doc(r, problem);
    } else {
        print_run(r);
    }
    Ok(code)
}

fn print_run(r: &RunRecord) {
    for s in &r.steps {
        println!(
            "  {:<12} {:<8} {:>7} ms  {}",
            s.step, s.outcome, s.duration_ms, s.detail
        );
    }
    for n in &r.notifications {
        let how = if n.ok {
            "sent".to_string()
        } else {
            format!("NOT sent: {}", n.error.as_deref().unwrap_or("?"))
        };
        println!("  notify {} ({}): {how}", n.target, n.event);
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    println!("{}", r.summary());
}

#[derive(Serialize)]
struct Listed {
    name: Option<String>,
    file: String,
    valid: bool,
    error: Option<String>,
    series: Option<String>,
    repository: Option<String>,
    schedule: Option<String>,
    next: Option<String>,
    last_run: Option<RunRecord>,
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<Listed>,
}

fn list(dir: &Path, state: &StateDir, json: bool) -> Result<i32> {
    let files = job_files(dir)
        .map_err(|e| tessera_engine::Error::Usage(format!("--jobs {}: {e}", dir.display())))?;
    let mut jobs = Vec::new();
    for file in files {
        let listed = match Job::load(&file) {
            Ok(job) => {
                let schedule = job.def.schedule.as_ref();
                let last_run = state.job(&job.name).history(1)?.0.into_iter().next();
                Listed {
                    name: Some(job.name.clone()),
                    file: file.display().to_string(),
                    valid: true,
                    error: None,
                    series: Some(job.series().to_string()),
                    repository: Some(job.def.repository.location.get_ref().clone()),
                    schedule: schedule.map(|s| s.cron.text.clone()),
                    next: schedule.and_then(|s| s.next_after(now_us())).map(format_us),
                    last_run,
                }
            }
            Err(e) => Listed {
                name: job_name(&file).ok(),
                file: file.display().to_string(),
                valid: false,
                error: Some(e.to_string()),
                series: None,
                repository: None,
                schedule: None,
                next: None,
                last_run: None,
            },
        };
        jobs.push(listed);
    }
    if json {
        print_ok(&JobList { jobs });
        return Ok(0);
    }
    for j in &jobs {
        let name = j.name.as_deref().unwrap_or("?");
        if let Some(e) = &j.error {
            println!("{name:<20} INVALID: {e}");
            continue;
        }
        let last = j.last_run.as_ref().map_or_else(
            || "never run".to_string(),
            |r| format!("last {} {}", r.outcome.as_str(), r.started),
        );
        println!(
            "{name:<20} {:<24} next {:<22} {last}",
            j.schedule.as_deref().unwrap_or("(no schedule)"),
            j.next.as_deref().unwrap_or("-"),
        );
    }
    Ok(0)
}

#[derive(Serialize)]
struct History {
    job: String,
    runs: Vec<RunRecord>,
    skipped: Vec<String>,
}

fn history(job: &str, limit: usize, state: &StateDir, json: bool) -> Result<i32> {
    let path = Path::new(job);
    let name = if path.extension().is_some_and(|e| e == "toml") || job.contains('/') {
        job_name(path)?
    } else {
        job_name(Path::new(&format!("{job}.toml")))?
    };
    let (runs, skipped) = state.job(&name).history(limit)?;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    if json {
        print_ok(&History {
            job: name,
            runs,
            skipped,
        });
        return Ok(0);
    }
    if runs.is_empty() {
        println!("job {name}: no runs recorded in {}", state.0.display());
    }
    for r in &runs {
        let (read, stored) = r
            .backup_bytes()
            .map_or((String::from("-"), String::from("-")), |(a, b, _)| {
                (bytes(a), bytes(b))
            });
        let snapshot = r.snapshot().map_or("-", short);
        println!(
            "{}  {:<11} {:>8.1} s  read {read:<10} stored {stored:<10} {snapshot}{}",
            r.started,
            r.outcome.as_str(),
            r.duration_ms as f64 / 1000.0,
            r.failure
                .as_ref()
                .map(|f| format!("  {} failed: {}", f.step, f.message))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

pub fn daemon(
    args: &DaemonArgs,
    at: &dyn Fn(&str) -> tessera_engine::Result<tessera_engine::location::RepoLocation>,
) -> Result<i32> {
    let opts = DaemonOptions {
        jobs_dir: args.jobs.clone(),
        state: StateDir::resolve(args.state.state_dir.as_deref())?,
        max_parallel: usize::from(args.max_parallel),
        metrics_listen: args.metrics_listen.clone(),
        metrics_insecure_http: args.metrics_insecure_http,
        stop_grace: std::time::Duration::from_secs(args.stop_grace),
    };
    let log = Arc::new(|line: &str| {
        eprintln!(
            "{} tessera daemon: {line}",
            tessera_engine::time::now_rfc3339()
        );
    });
    let server_options = [
        ("--tokens", args.server.tokens.is_some()),
        ("--token-file", args.server.token_file.is_some()),
        ("--audit-log", args.server.audit_log.is_some()),
        ("--tls-cert", args.server.tls_cert.is_some()),
        ("--insecure-http", args.server.insecure_http),
    ];
    if let (None, Some((name, _))) = (&args.serve, server_options.iter().find(|(_, set)| *set)) {
        return Err(crate::args::UsageError(format!(
            "{name} applies to the repository --serve REPO serves; give --serve REPO or leave it out"
        ))
        .into());
    }
    if let Some(repo) = &args.serve {
        // Bound (and every refusal reported) before the first job runs.
        let repo = at(repo)?;
        let jobs = tessera_engine::dashboard::jobs::JobsConfig {
            dir: Some(opts.jobs_dir.clone()),
            state: Some(opts.state.clone()),
            default_max_age: args.server.stale_after,
            served: Some(repo.clone()),
        };
        let server = super::sync::Server::start(&repo, &args.server, jobs)?;
        log(&format!("serving {repo} on {}", server.listener.url()));
        std::thread::Builder::new()
            .name("tessera-serve".into())
            .spawn(move || {
                if let Err(e) = server.run() {
                    eprintln!("tessera daemon: serving stopped: {e:#}");
                    std::process::exit(1);
                }
            })?;
    }
    run_daemon(&opts, Arc::new(JobKeys { no_prompt: true }), log)?;
    Ok(0)
}
