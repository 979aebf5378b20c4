//! `tessera sync`, `tessera seed`, `tessera serve`.

use anyhow::Result;
use tessera_engine::dashboard::jobs::JobsConfig;
use tessera_engine::location::{LocationOptions, RepoLocation};
use tessera_engine::repo::RepoStorage;
use tessera_engine::sync::bwlimit::parse_rate;
use tessera_engine::sync::endpoints::{read_token, sync_between, RemoteAccess};
use tessera_engine::sync::http::audit::AuditLog;
use tessera_engine::sync::http::server::{bind, serve as http_serve, Listener, ServeOptions};
use tessera_engine::sync::http::service::TokenSource;
use tessera_engine::sync::http::tls::server_config;
use tessera_engine::sync::http::tokens::Tokens;
use tessera_engine::sync::{Selection, SyncOptions, SyncReport};

use crate::args::UsageError;
use crate::doc::print_ok;
use crate::output::{bytes, Bars};
use crate::sync_args::{SeedCommand, SelectArgs, ServeArgs, ServerArgs, SyncArgs};

fn selection(s: &SelectArgs) -> Selection {
    Selection {
        series: s.series.clone(),
        snapshots: s.snapshots.clone(),
        latest: s.latest,
    }
}

pub fn sync(args: &SyncArgs, options: &LocationOptions, json: bool, bars: &Bars) -> Result<i32> {
    let bwlimit = match &args.bwlimit {
        Some(r) => Some(parse_rate(r).ok_or_else(|| {
            UsageError(format!("--bwlimit {r:?}: give bytes per second, e.g. 50M"))
        })?),
        None => None,
    };
    let opts = SyncOptions {
        dry_run: args.dry_run,
        bwlimit,
        jobs: args.jobs,
        every_page: false,
    };
    let access = RemoteAccess {
        token_file: args.token_file.as_deref(),
        tls_ca: args.tls_ca.as_deref(),
        io_timeout: std::time::Duration::from_secs(args.io_timeout),
        insecure_http: args.insecure_http,
    };
    let report = sync_between(
        &args.src,
        &args.dst,
        access,
        options,
        &selection(&args.select),
        &opts,
        bars,
        &super::note_recovery,
        crate::keys::global(),
    )?;
    print_report(&report, json);
    Ok(0)
}

fn print_report(r: &SyncReport, json: bool) {
    if json {
        print_ok(r);
    } else {
        let verb = if r.dry_run { "would copy" } else { "copied" };
        println!(
            "{verb} {} snapshots ({} already present); {} chunks + {} pages, {} raw / {} received; {} objects already present",
            r.snapshots_copied.len(),
            r.snapshots_skipped.len(),
            r.chunks_transferred,
            r.pages_transferred,
            bytes(r.raw_bytes_transferred),
            bytes(r.bytes_received),
            r.objects_skipped
        );
    }
}

pub fn seed(
    cmd: &SeedCommand,
    at: &dyn Fn(&str) -> tessera_engine::Result<RepoLocation>,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    match cmd {
        SeedCommand::Export { repo, out, select } => {
            let select = selection(select);
            let location = at(repo)?;
            let repository = super::open_reader(&location)?;
            let r = tessera_engine::sync::bundle::export(&repository, out, &select, bars)?;
            if json {
                print_ok(&r);
            } else {
                println!(
                    "wrote {} snapshots, {} objects in {} packs ({}) to {}",
                    r.snapshots.len(),
                    r.objects,
                    r.packs,
                    bytes(r.bytes),
                    out.display()
                );
            }
        }
        SeedCommand::Import { bundle, repo } => {
            let r = tessera_engine::sync::bundle::import(
                bundle,
                &at(repo)?,
                &SyncOptions::default(),
                bars,
                &super::note_recovery,
                crate::keys::global(),
            )?;
            print_report(&r, json);
        }
    }
    Ok(0)
}

/// What `serve` prints once it listens.
#[derive(serde::Serialize)]
struct Listening<'a> {
    /// The URL clients use.
    listening: &'a str,
}

pub fn serve(repo: &RepoLocation, args: &ServeArgs, json: bool) -> Result<i32> {
    let jobs = JobsConfig {
        dir: args.jobs.clone(),
        state: tessera_engine::dashboard::jobs::state_dir(
            args.jobs.as_deref(),
            args.state_dir.as_deref(),
        )?,
        default_max_age: args.server.stale_after,
        served: Some(repo.clone()),
    };
    let server = Server::start(repo, &args.server, jobs)?;
    let url = server.listener.url();
    if json {
        print_ok(&Listening { listening: &url });
    } else {
        println!("listening on {url}");
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    server.run()?;
    Ok(0)
}

/// A bound `tessera serve`, not yet serving: everything that can be refused (tokens, the
/// repository, TLS files, the address) has been checked.
pub struct Server {
    /// Where it listens.
    pub listener: Listener,
    storage: RepoStorage,
    options: ServeOptions,
}

impl Server {
    /// Checks `args` and binds the listener for `repo`, showing `jobs` on the dashboard.
    pub fn start(repo: &RepoLocation, args: &ServerArgs, jobs: JobsConfig) -> Result<Self> {
        let (tokens, usage_of) = match (&args.tokens, &args.token_file) {
            (Some(file), None) => (TokenSource::file(file.clone())?, Some(file.clone())),
            (None, Some(file)) => {
                let single = Tokens::single_admin("token-file", &read_token(file)?);
                (TokenSource::Fixed(std::sync::Arc::new(single)), None)
            }
            _ => return Err(UsageError("give --tokens FILE or --token-file FILE".into()).into()),
        };
        if let Some(tokens) = &usage_of {
            // The quota counts beside the tokens file, checked now rather than when serving
            // starts (for `daemon --serve`, before any job runs).
            tessera_engine::sync::http::quota::Usage::load(tokens)?;
        }
        let storage = repo.storage()?;
        // Refused (an encrypted repository too) before anything listens or says it does.
        tessera_engine::sync::http::routes::check_repository(&storage)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(server_config(cert, key)?),
            (None, None) => None,
            _ => return Err(UsageError("--tls-cert and --tls-key go together".into()).into()),
        };
        let audit = match &args.audit_log {
            Some(path) => AuditLog::file(path)?,
            None => AuditLog::stderr(),
        };
        let listener = bind(&args.listen, tls, args.keepalive.get(), args.insecure_http)?;
        Ok(Self {
            listener,
            storage,
            options: ServeOptions {
                tokens,
                usage_of,
                audit,
                min_publish_interval: std::time::Duration::from_secs(args.min_publish_interval),
                jobs,
            },
        })
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<()> {
        http_serve(self.listener, &self.storage, self.options)?;
        Ok(())
    }
}
