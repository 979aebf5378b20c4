//! Read-only NBD export of a snapshot's disks.
//!
//! Contract:
//! - Each disk of a snapshot is an [`Export`] (a [`DiskReader`]) named after the disk; an
//!   empty export name means the first export. Exports are read-only (`NBD_FLAG_READ_ONLY`),
//!   may be used by several connections at once (`CAN_MULTI_CONN`) and never change while
//!   served.
//! - Fixed-newstyle handshake only (see `handshake.rs`), with TLS through
//!   `NBD_OPT_STARTTLS` when the server has a certificate (FORCEDTLS: nothing but STARTTLS
//!   and ABORT is answered before it; see `tls.rs`).
//! - Transmission (see `transmission.rs`): READ, BLOCK_STATUS with `base:allocation`, FLUSH,
//!   CACHE, DISC; writes get EPERM.
//! - Every client number and every wait is bounded ([`Limits`], `limits.rs`): connections in
//!   all and per peer (`admission.rs`), the handshake's time, the number and size of
//!   options, the silence between requests, requests ≤ 32 MiB within the export, the
//!   memory of READ replies being built. A client that breaks the protocol or a bound
//!   loses its own connection only.
//! - One thread per connection; decoded chunks and manifest pages are cached in one
//!   bounded LRU ([`ReadCache`]) shared by all exports and connections.
//! - The repository is opened as a reader ([`Repository::open`](crate::Repository::open)),
//!   so a backup may run next to the server.
//! - [`bind_snapshot`] resolves a snapshot, makes its exports and binds the socket; its
//!   [`ServeReport`] says where they are served.

mod admission;
mod conn;
mod export;
mod handshake;
mod limits;
#[cfg(feature = "repository")]
mod listen;
mod proto;
#[cfg(feature = "repository")]
mod tls;
mod transmission;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use limits::{
    Limits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_OPTIONS, DEFAULT_MAX_OPTION_BYTES, DEFAULT_MAX_PER_PEER, MIN_OPTION_BYTES,
};
#[cfg(feature = "repository")]
pub use listen::{bind_snapshot, Bound, Endpoint, ExportInfo, ServeOptions, ServeReport};
use openssl::ssl::SslAcceptor;
#[cfg(feature = "repository")]
use tessera_format::Snapshot;
#[cfg(feature = "repository")]
pub use tls::TlsFiles;

use self::admission::Admission;
use self::conn::Conn;
pub use self::conn::Socket;
pub use self::export::{MemoryExport, NbdExport};
use self::limits::{ReadBudget, MAX_READ_MEMORY, REFUSAL_TIME};
use crate::error::{Error, Result};
#[cfg(feature = "repository")]
pub use crate::ops::disk_reader::ReadCache;
#[cfg(feature = "repository")]
use crate::ops::disk_reader::{DiskReader, DiskView};
#[cfg(feature = "repository")]
use crate::repo::Repository;

/// One exported disk: a reader that keeps the repository open for the server's lifetime.
#[cfg(feature = "repository")]
pub type Export = DiskReader<Arc<Repository>>;

/// A set of exports of type `E` served over NBD.
pub struct Server<E: NbdExport> {
    exports: Vec<Arc<E>>,
    limits: Limits,
    tls: Option<SslAcceptor>,
    admission: Arc<Admission>,
    budget: ReadBudget,
}

impl<E: NbdExport> Server<E> {
    /// A server for `exports` (at least one; names must be unique).
    pub fn new(exports: Vec<E>) -> Result<Self> {
        if exports.is_empty() {
            return Err(Error::InvalidArgument("nothing to export".into()));
        }
        for (i, e) in exports.iter().enumerate() {
            if exports[..i].iter().any(|o| o.name() == e.name()) {
                return Err(Error::InvalidArgument(format!(
                    "two exports are named {:?}",
                    e.name()
                )));
            }
        }
        let limits = Limits::default();
        Ok(Self {
            exports: exports.into_iter().map(Arc::new).collect(),
            admission: Arc::new(Admission::new(&limits)),
            limits,
            tls: None,
            budget: ReadBudget::new(MAX_READ_MEMORY),
        })
    }

    /// The same server with `limits` (checked) instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Result<Self> {
        limits.check()?;
        self.admission = Arc::new(Admission::new(&limits));
        self.limits = limits;
        Ok(self)
    }

    /// The same server requiring TLS with `acceptor` on every connection.
    #[must_use]
    pub fn with_tls(mut self, acceptor: SslAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Whether clients must use TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The exports, the default (first) one first.
    pub fn exports(&self) -> impl Iterator<Item = &E> {
        self.exports.iter().map(AsRef::as_ref)
    }

    /// Serves one connection over `sock` until it ends, fails or breaks a bound, on the
    /// calling thread and outside admission control (nothing counts it against the
    /// connection limits). For streams that are not accepted sockets: the fuzzer feeds a
    /// client's bytes through an in-memory one.
    pub fn serve_stream<S: Socket>(&self, sock: S) -> std::io::Result<()> {
        self.connection(sock, || {})
    }

    /// Serves one admitted connection until it ends, fails or breaks a bound;
    /// `in_transmission` runs once the handshake chose an export, before its answer leaves.
    fn connection<S: Socket>(
        &self,
        sock: S,
        in_transmission: impl FnOnce(),
    ) -> std::io::Result<()> {
        let c = Conn::new(sock, Instant::now() + self.limits.handshake_timeout);
        let tls = self.tls.as_ref();
        let Some((mut c, n)) = handshake::handshake(c, &self.exports, &self.limits, tls)? else {
            return Ok(());
        };
        // Before the answer that chose the export leaves (the serving loop flushes it).
        in_transmission();
        let served = transmission::serve(&mut c, &n, self.limits.idle_timeout, &self.budget);
        c.close(REFUSAL_TIME);
        served
    }

    /// Admits `sock` from `peer` and serves it on a thread of its own, or tells it why
    /// not (see `admission.rs`).
    fn accept<S: Socket>(self: &Arc<Self>, sock: S, peer: Option<std::net::IpAddr>) {
        let Ok(handle) = sock.duplicate() else {
            return;
        };
        match self.admission.admit(peer, Box::new(move || handle.shut())) {
            Ok(ticket) => {
                let server = Arc::clone(self);
                // If no thread can be had, the socket and the ticket are dropped here.
                let _ = std::thread::Builder::new()
                    .name("nbd-client".into())
                    .spawn(move || {
                        // A client's failure (EOF, reset, timeout, protocol error)
                        // concerns that client only.
                        let _ = server.connection(sock, || ticket.in_transmission());
                    });
            }
            Err(why) => self.admission.refuse(sock, why),
        }
    }

    /// Accepts TCP clients forever.
    pub fn serve_tcp(self: Arc<Self>, listener: &TcpListener) -> Result<()> {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    self.accept(stream, Some(peer.ip()));
                }
                // Out of descriptors or memory: let connections finish rather than spin.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Accepts Unix-socket clients forever (they count towards the total limit only).
    pub fn serve_unix(self: Arc<Self>, listener: &UnixListener) -> Result<()> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.accept(stream, None),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(feature = "repository")]
impl Server<Export> {
    /// A server for disk `disk` of `snapshot`, or for every disk, with `cache_bytes` of
    /// decoded chunks and pages shared by all of them.
    pub fn for_snapshot(
        repo: &Arc<Repository>,
        snapshot: &Snapshot,
        disk: Option<&str>,
        cache_bytes: u64,
    ) -> Result<Self> {
        let cache = Arc::new(ReadCache::new(cache_bytes));
        let names: Vec<&str> = match disk {
            Some(d) => vec![d],
            None => snapshot
                .header
                .disks
                .iter()
                .map(|d| d.name.as_str())
                .collect(),
        };
        let exports = names
            .into_iter()
            .map(|name| {
                DiskReader::with_cache(
                    Arc::clone(repo),
                    DiskView::of(snapshot, name)?,
                    Arc::clone(&cache),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(exports)
    }
}
