//! `tessera serve-nbd`: serves a snapshot's disks read-only over NBD until killed.
//!
//! Opens the repository as a reader (a backup may run meanwhile), exports every disk of the
//! snapshot under its own name (or only `SNAPSHOT:DISK`), prints where it listens (one line,
//! or one JSON document with `--json`), then serves until SIGTERM/SIGINT end the process.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tessera_engine::nbd::{bind_snapshot, Endpoint};
use tessera_engine::net::Keepalive;
use tessera_engine::Repository;

use super::restore::split_spec;
use crate::output::print_ok;

pub fn run(
    repo: &Path,
    snapshot: &str,
    listen: &str,
    socket: Option<&Path>,
    cache_mib: u64,
    keepalive: Keepalive,
    json: bool,
) -> Result<i32> {
    let repository = Arc::new(Repository::open(repo)?);
    let (query, disk) = split_spec(snapshot);
    let endpoint = match socket {
        Some(path) => Endpoint::Unix(path),
        None => Endpoint::Tcp {
            addr: listen,
            keepalive,
        },
    };
    let bound = bind_snapshot(
        &repository,
        query,
        disk,
        cache_mib.saturating_mul(1 << 20),
        endpoint,
    )?;
    let r = bound.report();
    if json {
        print_ok(r);
    } else {
        let names: Vec<&str> = r.exports.iter().map(|e| e.name.as_str()).collect();
        println!(
            "serving snapshot {} on {}: exports {} ({})",
            &r.snapshot.to_hex()[..16],
            r.listen
                .as_deref()
                .or(r.socket.as_deref())
                .unwrap_or_default(),
            names.join(", "),
            r.uris.join(" ")
        );
    }
    let _ = std::io::stdout().flush();
    bound.serve()?;
    Ok(0)
}
