//! Read-only NBD export of a snapshot's disks.
//!
//! Contract:
//! - Each disk of a snapshot is an [`Export`] (a [`DiskReader`]) named after the disk; an
//!   empty export name means the first export. Exports are read-only (`NBD_FLAG_READ_ONLY`),
//!   may be used by several connections at once (`CAN_MULTI_CONN`) and never change while
//!   served.
//! - Fixed-newstyle handshake only (see `handshake.rs`); no TLS.
//! - Transmission (see `transmission.rs`): READ, BLOCK_STATUS with `base:allocation`, FLUSH,
//!   CACHE, DISC; writes get EPERM.
//! - Every client number is bounded: option payloads ≤ 64 KiB, requests ≤ 32 MiB, ranges
//!   within the export. A client that breaks the protocol loses its own connection only.
//! - One thread per connection; decoded chunks and manifest pages are cached in one
//!   bounded LRU ([`ReadCache`]) shared by all exports and connections.
//! - The repository is opened as a reader ([`Repository::open`](crate::Repository::open)),
//!   so a backup may run next to the server.
//! - [`bind_snapshot`] resolves a snapshot, makes its exports and binds the socket; its
//!   [`ServeReport`] says where they are served.

mod handshake;
mod listen;
mod proto;
mod transmission;

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

pub use listen::{bind_snapshot, Bound, Endpoint, ExportInfo, ServeReport};
use tessera_format::Snapshot;

use crate::error::{Error, Result};
pub use crate::ops::disk_reader::ReadCache;
use crate::ops::disk_reader::{DiskReader, DiskView};
use crate::repo::Repository;

/// One exported disk: a reader that keeps the repository open for the server's lifetime.
pub type Export = DiskReader<Arc<Repository>>;

/// A set of exports served over NBD.
pub struct Server {
    exports: Vec<Arc<Export>>,
}

impl Server {
    /// A server for `exports` (at least one; names must be unique).
    pub fn new(exports: Vec<Export>) -> Result<Self> {
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
        Ok(Self {
            exports: exports.into_iter().map(Arc::new).collect(),
        })
    }

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

    /// The exports, the default (first) one first.
    pub fn exports(&self) -> impl Iterator<Item = &Export> {
        self.exports.iter().map(AsRef::as_ref)
    }

    /// Serves one connection until it ends; protocol errors end it quietly.
    pub fn handle<R: Read, W: Write>(&self, reader: R, writer: W) -> Result<()> {
        let mut r = BufReader::with_capacity(64 * 1024, reader);
        let mut w = BufWriter::with_capacity(256 * 1024, writer);
        let mut run = || -> std::io::Result<()> {
            if let Some(n) = handshake::handshake(&mut r, &mut w, &self.exports)? {
                transmission::serve(&mut r, &mut w, &n)?;
            }
            w.flush()
        };
        run().map_err(|e| Error::io("serving an NBD client", e))
    }

    /// Accepts TCP clients forever, one thread each.
    pub fn serve_tcp(self: Arc<Self>, listener: &TcpListener) -> Result<()> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(reader) = stream.try_clone() else {
                        continue;
                    };
                    let server = Arc::clone(&self);
                    spawn(move || server.handle(reader, stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Accepts Unix-socket clients forever, one thread each.
    pub fn serve_unix(self: Arc<Self>, listener: &UnixListener) -> Result<()> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let Ok(reader) = stream.try_clone() else {
                        continue;
                    };
                    let server = Arc::clone(&self);
                    spawn(move || server.handle(reader, stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn spawn(f: impl FnOnce() -> Result<()> + Send + 'static) {
    // A client's failure (EOF, reset, protocol error) concerns that client only.
    let _ = std::thread::Builder::new()
        .name("nbd-client".into())
        .spawn(move || {
            let _ = f();
        });
}
