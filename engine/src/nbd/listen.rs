//! Serving a snapshot: resolving it, binding the listening socket and describing where it
//! is served, so that a front end only prints [`ServeReport`] and calls [`Bound::serve`].
//!
//! A Unix socket path that holds a socket (left by an earlier server) is replaced; any other
//! file there is refused and left alone.
//!
//! Plain NBD (no `--tls-cert`) is served on loopback addresses and Unix sockets only,
//! unless `insecure`: on any other address the disks' bytes would cross the network in
//! clear, readable (and, without TLS, served to) anyone on the path.

use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use tessera_format::SnapshotId;

use super::limits::Limits;
use super::tls::{acceptor, TlsFiles};
use super::{Export, Server};
use crate::error::{Error, IoContext, Result};
use crate::net::{listen_tcp, Keepalive};
use crate::ops::restore::hex_snapshot;
use crate::repo::Repository;

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    /// A TCP address (`HOST:PORT`; port 0 picks a free one), with keepalive on connections.
    Tcp {
        /// The address.
        addr: &'a str,
        /// Keepalive of accepted connections.
        keepalive: Keepalive,
    },
    /// A Unix socket path.
    Unix(&'a Path),
}

/// How to serve.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions<'a> {
    /// Only this disk (default: every disk of the snapshot).
    pub disk: Option<&'a str>,
    /// Memory for decoded chunks and pages shared by all exports.
    pub cache_bytes: u64,
    /// Connection, time and size bounds.
    pub limits: Limits,
    /// Require TLS with this certificate and key.
    pub tls: Option<TlsFiles<'a>>,
    /// Serve plain NBD on a TCP address that is not loopback.
    pub insecure: bool,
}

/// One export as the report lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportInfo {
    /// The export's name (the disk's).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The manifest's block size.
    pub block_size: u64,
}

/// Where a snapshot is served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    /// The snapshot.
    #[serde(serialize_with = "hex_snapshot")]
    pub snapshot: SnapshotId,
    /// The TCP address listened on (with the port chosen), for TCP.
    pub listen: Option<String>,
    /// The socket path, for a Unix socket.
    pub socket: Option<String>,
    /// Clients must use TLS (`nbds://` URIs).
    pub tls: bool,
    /// Client certificates are required (`--tls-ca`).
    pub client_certificates: bool,
    /// The bounds in force.
    pub limits: Limits,
    /// The exports, the default (first) one first.
    pub exports: Vec<ExportInfo>,
    /// An NBD URI per export, in the same order.
    pub uris: Vec<String>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A server bound to its socket, ready to serve.
pub struct Bound {
    server: Arc<Server<Export>>,
    listener: Listener,
    report: ServeReport,
}

/// Resolves the snapshot `query` names, makes a [`Server`] as `options` say, and binds
/// `endpoint`. On a TCP address that is not loopback, serving without TLS and client
/// certificates (`--tls-ca`) is refused unless `options.insecure`.
pub fn bind_snapshot(
    repo: &Arc<Repository>,
    query: &str,
    options: &ServeOptions<'_>,
    endpoint: Endpoint<'_>,
) -> Result<Bound> {
    let (id, _) = repo.resolve_snapshot(query)?;
    let snapshot = repo.load_snapshot(id)?;
    let mut server = Server::for_snapshot(repo, &snapshot, options.disk, options.cache_bytes)?
        .with_limits(options.limits)?;
    if let Some(files) = &options.tls {
        server = server.with_tls(acceptor(files)?);
    }
    let (listener, listen, socket) = match endpoint {
        Endpoint::Unix(path) => {
            replace_stale_socket(path)?;
            let l = UnixListener::bind(path).ctx(|| format!("listening on {}", path.display()))?;
            (Listener::Unix(l), None, Some(path.display().to_string()))
        }
        Endpoint::Tcp { addr, keepalive } => {
            let l = listen_tcp(addr, keepalive).ctx(|| format!("listening on {addr}"))?;
            let local = l
                .local_addr()
                .ctx(|| "reading the listening address".into())?;
            let clients_authenticated = options
                .tls
                .as_ref()
                .is_some_and(|files| files.client_ca.is_some());
            if !options.insecure && !local.ip().is_loopback() {
                if !server.has_tls() {
                    return Err(Error::Usage(format!(
                        "refusing to serve plain NBD on {local}, which is not a loopback address: the disks would cross the network in clear, to anyone who connects. Serve TLS with --tls-cert CERT.pem --tls-key KEY.pem --tls-ca CA.pem (clients must then present a certificate signed by CA.pem), or give --insecure if the network is trusted"
                    )));
                }
                if !clients_authenticated {
                    return Err(Error::Usage(format!(
                        "refusing to serve NBD on {local}, which is not a loopback address, without --tls-ca: TLS alone hides the disks from eavesdroppers but still serves them to anyone who connects. Give --tls-ca CA.pem so that only clients with a certificate signed by it are served, or --insecure if the network is trusted"
                    )));
                }
            }
            (Listener::Tcp(l), Some(local.to_string()), None)
        }
    };
    let s = if server.has_tls() { "s" } else { "" };
    let uri = |name: &str| match (&listen, &socket) {
        (Some(addr), _) => format!("nbd{s}://{addr}/{name}"),
        (None, path) => format!(
            "nbd{s}+unix:///{name}?socket={}",
            path.as_deref().unwrap_or_default()
        ),
    };
    let report = ServeReport {
        snapshot: id,
        exports: server
            .exports()
            .map(|e| ExportInfo {
                name: e.name().to_string(),
                size: e.size(),
                block_size: e.block_size(),
            })
            .collect(),
        uris: server.exports().map(|e| uri(e.name())).collect(),
        listen,
        socket,
        tls: server.has_tls(),
        client_certificates: options.tls.is_some_and(|t| t.client_ca.is_some()),
        limits: options.limits,
    };
    Ok(Bound {
        server: Arc::new(server),
        listener,
        report,
    })
}

/// Removes a socket left at `path`; refuses any other kind of file there.
fn replace_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::io(
            format!("{} exists and is not a socket", path.display()),
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not replacing it"),
        ));
    }
    std::fs::remove_file(path).ctx(|| format!("removing stale socket {}", path.display()))
}

impl Bound {
    /// Where and what is served.
    pub fn report(&self) -> &ServeReport {
        &self.report
    }

    /// Serves clients until the process ends.
    pub fn serve(self) -> Result<()> {
        match self.listener {
            Listener::Tcp(l) => self.server.serve_tcp(&l),
            Listener::Unix(l) => self.server.serve_unix(&l),
        }
    }
}
