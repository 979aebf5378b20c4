//! `tessera sync`, `tessera seed`, `tessera serve`.

use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use tessera_engine::sync::bwlimit::parse_rate;

use tessera_engine::sync::http::audit::AuditLog;
use tessera_engine::sync::http::client::Remote;
use tessera_engine::sync::http::server::{bind, serve as http_serve, ServeOptions};
use tessera_engine::sync::http::service::TokenSource;
use tessera_engine::sync::http::tls::server_config;
use tessera_engine::sync::http::tokens::{read_private, Tokens};
use tessera_engine::sync::source::ObjectSource;
use tessera_engine::sync::transfer::transfer;
use tessera_engine::sync::{Selection, SyncOptions, SyncReport};
use tessera_engine::Repository;

use crate::args::UsageError;
use crate::output::{bytes, print_json, Bars};
use crate::sync_args::{SeedCommand, SelectArgs, ServeArgs, SyncArgs};

fn selection(s: &SelectArgs) -> Result<Selection> {
    for q in &s.snapshots {
        if q.len() < 4 || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                UsageError(format!("--snapshot {q:?}: give 4+ hex digits of an id")).into(),
            );
        }
    }
    Ok(Selection {
        series: s.series.clone(),
        snapshots: s.snapshots.clone(),
        latest: s.latest,
    })
}

/// A refusal of the engine's sync (incompatible repositories, untrusted data that does not
/// check out) is a failed operation (exit 1), not a usage error: the command line was fine.
fn refused(e: tessera_engine::Error) -> anyhow::Error {
    match e {
        tessera_engine::Error::InvalidArgument(msg) => anyhow::anyhow!(msg),
        other => other.into(),
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

pub fn sync(args: &SyncArgs, json: bool, bars: &Bars) -> Result<i32> {
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
    };
    let select = selection(&args.select)?;
    let is_https = |s: &str| s.starts_with("https://");
    if args.tls_ca.is_some() && !is_https(&args.src) && !is_https(&args.dst) {
        return Err(UsageError("--tls-ca applies only to an https:// side".into()).into());
    }
    let report = match (is_url(&args.src), is_url(&args.dst)) {
        (false, false) => {
            let src = Repository::open(args.src.as_ref())?;
            let dst = Repository::open_writer(args.dst.as_ref())?;
            tessera_engine::sync::sync(&src, &dst, &select, &opts, bars).map_err(refused)?
        }
        (src_remote, dst_remote) => {
            let token = read_token(args.token_file.as_deref())?;
            // The trusted roots of `--tls-ca` concern the https:// side(s) only.
            let remote = |url: &str| {
                let ca = args.tls_ca.as_deref().filter(|_| is_https(url));
                let timeout = std::time::Duration::from_secs(args.io_timeout);
                Remote::new(url, &token, ca, timeout).map_err(refused)
            };
            let local_src;
            let remote_src;
            let src: &dyn ObjectSource = if src_remote {
                remote_src = remote(&args.src)?;
                &remote_src
            } else {
                local_src = Repository::open(args.src.as_ref())?;
                &local_src
            };
            if dst_remote {
                let mut dst = remote(&args.dst)?;
                transfer(src, &mut dst, &select, &opts, bars).map_err(refused)?
            } else {
                let dst = Repository::open_writer(args.dst.as_ref())?;
                tessera_engine::sync::sync(src, &dst, &select, &opts, bars).map_err(refused)?
            }
        }
    };
    print_report(&report, json);
    Ok(0)
}

fn print_report(r: &SyncReport, json: bool) {
    if json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), json!(true));
        }
        print_json(&v);
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

pub fn seed(cmd: &SeedCommand, json: bool, bars: &Bars) -> Result<i32> {
    match cmd {
        SeedCommand::Export { repo, out, select } => {
            let select = selection(select)?;
            let repository = Repository::open(repo)?;
            let r = tessera_engine::sync::bundle::export(&repository, out, &select, bars)
                .map_err(refused)?;
            if json {
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("ok".into(), json!(true));
                }
                print_json(&v);
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
            let r =
                tessera_engine::sync::bundle::import(bundle, repo, &SyncOptions::default(), bars)
                    .map_err(refused)?;
            print_report(&r, json);
        }
    }
    Ok(0)
}

/// The bearer token in `path` (surrounding whitespace removed; must not be empty). The
/// file must be readable by its owner only.
fn read_token(path: Option<&Path>) -> Result<String> {
    let Some(path) = path else {
        return Err(UsageError("a remote side needs --token-file FILE".into()).into());
    };
    let token = read_private(path, "token file").map_err(refused)?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

pub fn serve(args: &ServeArgs, json: bool) -> Result<i32> {
    let (tokens, usage_of) = match (&args.tokens, &args.token_file) {
        (Some(file), None) => (
            TokenSource::file(file.clone()).map_err(refused)?,
            Some(file.clone()),
        ),
        (None, Some(file)) => {
            let token = read_token(Some(file))?;
            let single = Tokens::single_admin("token-file", &token);
            (TokenSource::Fixed(std::sync::Arc::new(single)), None)
        }
        _ => return Err(UsageError("give --tokens FILE or --token-file FILE".into()).into()),
    };
    tessera_engine::repo::read_config(&args.repo)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server_config(cert, key).map_err(refused)?),
        (None, None) => None,
        _ => return Err(UsageError("--tls-cert and --tls-key go together".into()).into()),
    };
    let audit = match &args.audit_log {
        Some(path) => AuditLog::file(path)?,
        None => AuditLog::stderr(),
    };
    let listener =
        bind(&args.listen, tls, args.keepalive.get(), args.insecure_http).map_err(refused)?;
    let url = listener.url();
    if json {
        print_json(&json!({ "ok": true, "listening": url }));
    } else {
        println!("listening on {url}");
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    let options = ServeOptions {
        tokens,
        usage_of,
        audit,
    };
    http_serve(listener, &args.repo, options).map_err(refused)?;
    Ok(0)
}
