//! `tessera serve-nbd`: serves a snapshot's disks read-only over NBD until killed.
//!
//! Opens the repository as a reader (a backup may run meanwhile), exports every disk of the
//! snapshot under its own name (or only `SNAPSHOT:DISK`), prints where it listens (one line,
//! or one JSON document with `--json`), then serves until SIGTERM/SIGINT end the process.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tessera_engine::nbd::{Caches, Export, Server};
use tessera_engine::net::{listen_tcp, Keepalive};
use tessera_engine::Repository;

use crate::output::print_json;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Export name → URI.
type UriOf = Box<dyn Fn(&str) -> String>;

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
    let (query, disk) = match snapshot.rsplit_once(':') {
        Some((q, d)) => (q, Some(d)),
        None => (snapshot, None),
    };
    let (id, header) = repository.resolve_snapshot(query)?;
    let snap = repository.load_snapshot(id)?;
    let caches = Arc::new(Caches::new(cache_mib.saturating_mul(1 << 20)));
    let names: Vec<&str> = match disk {
        Some(d) => vec![d],
        None => header.disks.iter().map(|d| d.name.as_str()).collect(),
    };
    let exports = names
        .iter()
        .map(|name| Export::new(Arc::clone(&repository), Arc::clone(&caches), &snap, name))
        .collect::<tessera_engine::Result<Vec<_>>>()?;
    let server = Arc::new(Server::new(exports)?);
    let export_info: Vec<_> = server
        .exports()
        .map(|e| json!({"name": e.name(), "size": e.size(), "block_size": e.block_size()}))
        .collect();
    let names: Vec<String> = server.exports().map(|e| e.name().to_string()).collect();

    let (listener, place, uri_of): (Listener, String, UriOf) = if let Some(path) = socket {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let l =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        let p = path.display().to_string();
        let p2 = p.clone();
        (
            Listener::Unix(l),
            p,
            Box::new(move |n: &str| format!("nbd+unix:///{n}?socket={p2}")),
        )
    } else {
        let l = listen_tcp(listen, keepalive).with_context(|| format!("listening on {listen}"))?;
        let addr = l.local_addr().context("reading the listening address")?;
        let a = addr.to_string();
        (
            Listener::Tcp(l),
            a.clone(),
            Box::new(move |n: &str| format!("nbd://{a}/{n}")),
        )
    };
    let uris: Vec<String> = names.iter().map(|n| uri_of(n)).collect();
    if json {
        print_json(&json!({
            "ok": true,
            "snapshot": id.to_hex(),
            "listen": if socket.is_none() { json!(place) } else { json!(null) },
            "socket": if socket.is_some() { json!(place) } else { json!(null) },
            "exports": export_info,
            "uris": uris,
        }));
    } else {
        println!(
            "serving snapshot {} on {place}: exports {} ({})",
            &id.to_hex()[..16],
            names.join(", "),
            uris.join(" ")
        );
    }
    let _ = std::io::stdout().flush();
    match listener {
        Listener::Tcp(l) => server.serve_tcp(&l)?,
        Listener::Unix(l) => server.serve_unix(&l)?,
    }
    Ok(0)
}
