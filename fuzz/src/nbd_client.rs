//! The `nbd_client` target (see `fuzz_targets/nbd_client.rs`) and its recorder
//! (`examples/record_nbd.rs`): one client session of the engine's NBD client over a
//! socket, and the checks of what it settled.
//!
//! A session is what a backup from an NBD source does on its first connection: the
//! handshake ([`negotiate`], asking for a dirty bitmap or not), the block-status walk of
//! the whole export ([`map_export`]), then reads. The reads here are the first
//! [`READ_LEN`] bytes of each of the first [`READS`] data ranges (of the disk's start when
//! `base:allocation` was not granted), aligned as `NbdSource` aligns them. The client's
//! requests depend only on the server's bytes, so a transcript of what a real server sent
//! replays exactly.

use std::io::Write;
use std::os::unix::net::UnixStream;

use tessera_engine::formats::nbd::{MAX_REQUEST, TFLAG_HAS_FLAGS};
use tessera_engine::sources::nbd_client::block_map::{map_export, BlockMap};
use tessera_engine::sources::nbd_client::handshake::{negotiate, Negotiated};
use tessera_engine::sources::nbd_client::transmission::Connection;
use tessera_engine::sources::nbd_client::wire::{Stream, Wire};
use tessera_engine::Error;

use crate::checks::assert_ranges;

/// Name of the export asked for.
pub const EXPORT: &str = "disk";
/// Name of the dirty bitmap asked for, when one is.
pub const BITMAP: &str = "b0";
/// Data ranges read from.
pub const READS: usize = 2;
/// Most bytes read from each.
pub const READ_LEN: u64 = 8 << 10;
/// Largest transcript replayed: the client's own writes (options, requests) then stay far
/// below a socket buffer, so it never waits on a reader that is not there.
pub const MAX_TRANSCRIPT: usize = 64 << 10;

/// Sorted, disjoint byte ranges.
pub type Ranges = Vec<(u64, u64)>;

/// What one session settled.
#[derive(Debug, PartialEq, Eq)]
pub struct Session {
    /// The handshake.
    pub neg: Negotiated,
    /// The block-status walk.
    pub map: (Option<Ranges>, Option<Ranges>),
    /// Each read: offset, and the bytes or the error's text.
    pub reads: Vec<(u64, Result<Vec<u8>, String>)>,
}

/// Runs one session over `stream`, asking for [`BITMAP`] when `bitmap`, into buffers
/// filled with `fill` before each read.
pub fn session(stream: UnixStream, bitmap: bool, fill: u8) -> Result<Session, Error> {
    let url = format!("nbd+unix:///{EXPORT}");
    let mut wire = Wire::over(Stream::Unix(stream), url.clone())?;
    let neg = negotiate(&mut wire, EXPORT, bitmap.then_some(BITMAP), None)?;
    let mut conn = Connection::new(wire, neg.clone());
    let BlockMap { data, dirty } = map_export(&mut conn, &url)?;
    let starts: Vec<u64> = match &data {
        Some(ranges) => ranges.iter().take(READS).map(|r| r.0).collect(),
        None => vec![0],
    };
    let mut reads = Vec::new();
    for start in starts {
        let min = u64::from(neg.min_block);
        let offset = start - start % min;
        let len = READ_LEN.min(u64::from(neg.max_read)).min(neg.size - offset);
        if len == 0 {
            continue;
        }
        let mut buf = vec![fill; len as usize];
        let got = conn.read(offset, &mut buf);
        if conn.broken {
            // The stream is out of step: nothing more can be asked.
            return Err(got
                .err()
                .unwrap_or_else(|| Error::Internal("broken but Ok".into())));
        }
        if let Ok(n) = got {
            assert!(n <= len, "{n} data bytes for a read of {len}");
        }
        reads.push((offset, got.map(|_| buf).map_err(|e| e.to_string())));
    }
    Ok(Session {
        neg,
        map: (data, dirty),
        reads,
    })
}

/// Replays `transcript` (the server's bytes) to a session; the socket's other end is
/// kept open until the session ends, so the client's last words have a reader.
pub fn replay(transcript: &[u8], bitmap: bool, fill: u8) -> Result<Session, Error> {
    let (client, mut server) = UnixStream::pair().expect("a socket pair");
    server
        .write_all(transcript)
        .and_then(|()| server.shutdown(std::net::Shutdown::Write))
        .expect("the transcript fits in the socket buffer");
    let result = session(client, bitmap, fill);
    drop(server);
    result
}

/// Checks a session that succeeded: a handshake within the protocol's and tessera's
/// limits, the bitmap granted exactly when asked for, sorted disjoint ranges inside the
/// export, and reads inside the export.
pub fn check_session(s: &Session, bitmap: bool) {
    let n = &s.neg;
    assert!(n.flags & TFLAG_HAS_FLAGS != 0, "{n:?}");
    assert!(
        n.min_block.is_power_of_two() && n.min_block <= 64 << 10,
        "{n:?}"
    );
    assert!(
        n.max_read >= n.min_block && n.max_read <= MAX_REQUEST,
        "{n:?}"
    );
    assert_eq!(n.max_read % n.min_block, 0, "{n:?}");
    assert_eq!(n.bitmap_id.is_some(), bitmap, "{n:?}");
    assert_eq!(s.map.0.is_some(), n.allocation_id.is_some());
    assert_eq!(s.map.1.is_some(), bitmap);
    for ranges in [&s.map.0, &s.map.1].into_iter().flatten() {
        assert_ranges(ranges, n.size);
    }
    for (offset, r) in &s.reads {
        assert!(*offset < n.size && offset % u64::from(n.min_block) == 0);
        if let Ok(bytes) = r {
            assert!(offset + bytes.len() as u64 <= n.size);
        }
    }
}
