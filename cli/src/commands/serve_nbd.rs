//! `tessera serve-nbd`: serves a snapshot's disks read-only over NBD until killed.
//!
//! Opens the repository as a reader (a backup may run meanwhile), exports every disk of the
//! snapshot under its own name (or only `SNAPSHOT:DISK`), prints where it listens (one line,
//! or one JSON document with `--json`), then serves until SIGTERM/SIGINT end the process.
//! TLS, the refusal of plain NBD off loopback and the bounds are the engine's
//! ([`tessera_engine::nbd`]); this file only maps the flags.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tessera_engine::location::RepoLocation;
use tessera_engine::nbd::{bind_snapshot, Endpoint, ServeOptions, TlsFiles};
use tessera_engine::net::Keepalive;

use super::restore::split_spec;
use crate::args::{NbdLimitArgs, NbdTlsArgs};
use crate::doc::print_ok;

/// Where to listen: `socket` if given, else `tcp` with `keepalive`.
#[derive(Clone, Copy)]
pub struct Listen<'a> {
    pub tcp: &'a str,
    pub socket: Option<&'a Path>,
    pub keepalive: Keepalive,
}

pub fn run(
    repo: &RepoLocation,
    snapshot: &str,
    listen: Listen<'_>,
    cache_mib: u64,
    tls: &NbdTlsArgs,
    limits: &NbdLimitArgs,
    json: bool,
) -> Result<i32> {
    let repository = Arc::new(super::open_reader(repo)?);
    let (query, disk) = split_spec(snapshot);
    let endpoint = match listen.socket {
        Some(path) => Endpoint::Unix(path),
        None => Endpoint::Tcp {
            addr: listen.tcp,
            keepalive: listen.keepalive,
        },
    };
    let tls_files = match (&tls.tls_cert, &tls.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: tls.tls_ca.as_deref(),
        }),
        _ => None,
    };
    let options = ServeOptions {
        disk,
        cache_bytes: cache_mib.saturating_mul(1 << 20),
        limits: limits.get(),
        tls: tls_files,
        insecure: tls.insecure,
    };
    let bound = bind_snapshot(&repository, query, &options, endpoint)?;
    let r = bound.report();
    if json {
        print_ok(r);
    } else {
        let names: Vec<&str> = r.exports.iter().map(|e| e.name.as_str()).collect();
        println!(
            "serving snapshot {} on {}{}: exports {} ({})",
            &r.snapshot.to_hex()[..16],
            r.listen
                .as_deref()
                .or(r.socket.as_deref())
                .unwrap_or_default(),
            match (r.tls, r.client_certificates) {
                (true, true) => " with TLS and client certificates",
                (true, false) => " with TLS",
                _ => "",
            },
            names.join(", "),
            r.uris.join(" ")
        );
    }
    let _ = std::io::stdout().flush();
    bound.serve()?;
    Ok(0)
}
