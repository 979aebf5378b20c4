//! One negotiated connection in the transmission phase (proto.md "Transmission",
//! "Structured reply chunk message types").
//!
//! A connection has one request in flight at a time; parallelism comes from several
//! connections ([`super::pool`]). Every reply chunk is checked against its request before a
//! byte of payload is trusted:
//! - magic and handle (cookie) must match;
//! - READ: `OFFSET_DATA` and `OFFSET_HOLE` must lie inside the request, must not overlap and
//!   must cover it exactly by the chunk flagged DONE; payload lengths are bounded by the
//!   request (no allocation comes from a header field: data is read straight into the
//!   caller's buffer);
//! - BLOCK_STATUS: one chunk per selected context, 1 to [`MAX_DESCRIPTORS`] descriptors,
//!   none of length zero;
//! - error chunks (type bit 15) carry the server's errno and message, which become an
//!   [`Error::Source`]; the reply is still read to its end so the connection stays usable;
//! - a simple reply is accepted only as an error.
//!
//! Any violation or I/O failure leaves the stream out of step, so the caller drops the
//! connection ([`Connection::broken`]).

use std::path::PathBuf;

use super::handshake::Negotiated;
use super::wire::Wire;
use crate::error::{Error, Result};
use crate::formats::nbd::{
    errno_name, CMD_BLOCK_STATUS, CMD_DISC, CMD_READ, REPLY_FLAG_DONE, REPLY_FLAG_ERROR_TYPE,
    REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR_OFFSET, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Most extent descriptors accepted in one BLOCK_STATUS chunk (8 MiB of payload).
pub const MAX_DESCRIPTORS: u32 = 1 << 20;
/// Largest error chunk payload accepted (errno, length, message of at most 4096 bytes, offset).
const MAX_ERROR_PAYLOAD: u32 = 4 + 2 + 4096 + 8;
/// Most chunks accepted for one reply (a server sending endless empty chunks is cut off).
const MAX_CHUNKS: u32 = 1 << 20;

/// Extents of one context: `(length, status flags)` from the request's offset on.
pub type Descriptors = Vec<(u32, u32)>;

/// A connection ready for requests.
pub struct Connection {
    wire: Wire,
    /// What the handshake settled.
    pub neg: Negotiated,
    next_handle: u64,
    /// Set once the stream is out of step; the connection must then be dropped.
    pub broken: bool,
}

/// Header of one structured reply chunk.
struct Chunk {
    flags: u16,
    kind: u16,
    len: u32,
}

impl Connection {
    /// Wraps a wire whose handshake succeeded.
    pub fn new(wire: Wire, neg: Negotiated) -> Self {
        Self {
            wire,
            neg,
            next_handle: 1,
            broken: false,
        }
    }

    /// Runs `f`, whose outer error means the stream is out of step (the connection is
    /// marked broken) and whose inner error is one the server reported in a well-formed
    /// reply (the connection stays usable).
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<Result<T>>) -> Result<T> {
        f(self).unwrap_or_else(|e| {
            self.broken = true;
            Err(e)
        })
    }

    fn request(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> Result<u64> {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        let mut buf = [0u8; 28];
        buf[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        buf[4..6].copy_from_slice(&flags.to_be_bytes());
        buf[6..8].copy_from_slice(&cmd.to_be_bytes());
        buf[8..16].copy_from_slice(&handle.to_be_bytes());
        buf[16..24].copy_from_slice(&offset.to_be_bytes());
        buf[24..28].copy_from_slice(&len.to_be_bytes());
        self.wire
            .send(&buf, &format!("sending command {cmd} at offset {offset}"))?;
        Ok(handle)
    }

    /// Reads one chunk header of the reply to `handle`. A simple reply must carry an error.
    fn chunk(&mut self, handle: u64, what: &str) -> Result<Chunk> {
        let w = &mut self.wire;
        let magic = w.u32(what)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = w.u32(what)?;
            let h = w.u64(what)?;
            if h != handle {
                return Err(w.bad(format!(
                    "{what}: simple reply for handle {h}, expected {handle}"
                )));
            }
            if errno == 0 {
                return Err(w.bad(format!(
                    "{what}: simple reply without error although structured replies were negotiated"
                )));
            }
            return Err(server_error(&w.url, what, errno, "(simple reply)"));
        }
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(w.bad(format!(
                "{what}: reply magic 0x{magic:08x}, expected 0x{STRUCTURED_REPLY_MAGIC:08x}"
            )));
        }
        let flags = w.u16(what)?;
        let kind = w.u16(what)?;
        let h = w.u64(what)?;
        let len = w.u32(what)?;
        if h != handle {
            return Err(w.bad(format!(
                "{what}: reply chunk for handle {h}, expected {handle}"
            )));
        }
        Ok(Chunk { flags, kind, len })
    }

    /// Reads an error chunk's payload; returns the message for [`server_error`].
    /// The chunks any structured reply may carry besides its own kinds: the closing empty
    /// chunk, or an error (the first one is kept). Anything else breaks the protocol.
    fn closing_or_error_chunk(
        &mut self,
        c: &Chunk,
        what: &str,
        server_err: &mut Option<(u32, String)>,
    ) -> Result<()> {
        match c.kind {
            REPLY_TYPE_NONE if c.len == 0 && c.flags & REPLY_FLAG_DONE != 0 => Ok(()),
            k if k & REPLY_FLAG_ERROR_TYPE != 0 => {
                let e = self.error_payload(c, what)?;
                server_err.get_or_insert(e);
                Ok(())
            }
            k => Err(self.wire.bad(format!(
                "{what}: unexpected reply chunk type {k} (length {}, flags 0x{:04x})",
                c.len, c.flags
            ))),
        }
    }

    fn error_payload(&mut self, c: &Chunk, what: &str) -> Result<(u32, String)> {
        if c.len < 6 || c.len > MAX_ERROR_PAYLOAD {
            return Err(self.wire.bad(format!(
                "{what}: error chunk of {} bytes (expected 6 to {MAX_ERROR_PAYLOAD})",
                c.len
            )));
        }
        let p = self.wire.bytes(c.len as usize, what)?;
        let errno = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        let mlen = usize::from(u16::from_be_bytes([p[4], p[5]]));
        let msg = p.get(6..6 + mlen).ok_or_else(|| {
            self.wire.bad(format!(
                "{what}: error message length {mlen} exceeds the chunk"
            ))
        })?;
        let mut text = String::from_utf8_lossy(msg).into_owned();
        if c.kind == REPLY_TYPE_ERROR_OFFSET {
            if let Some(o) = p.get(6 + mlen..14 + mlen) {
                let o = u64::from_be_bytes(o.try_into().unwrap_or_default());
                text = format!("{text} (at offset {o})");
            }
        }
        Ok((errno, text))
    }

    /// Reads `buf.len()` bytes at `offset` (within one request's limits); returns the bytes
    /// that came as data (holes are zero-filled and not counted).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        self.guarded(|c| c.read_inner(offset, buf))
    }

    fn read_inner(&mut self, offset: u64, buf: &mut [u8]) -> Result<Result<u64>> {
        let len = u32::try_from(buf.len())
            .ok()
            .filter(|&l| l > 0 && l <= self.neg.max_read)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("NBD read of {} bytes is not allowed", buf.len()))
            })?;
        let end = offset + u64::from(len);
        let handle = self.request(CMD_READ, 0, offset, len)?;
        let what = format!("reading {len} bytes at offset {offset}");
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut fetched = 0u64;
        let mut server_err = None;
        for _ in 0..MAX_CHUNKS {
            let c = self.chunk(handle, &what)?;
            match c.kind {
                REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                    let (start, n) = self.data_or_hole(&c, offset, end, buf, &what)?;
                    covered.push((start, start + n));
                    if c.kind == REPLY_TYPE_OFFSET_DATA {
                        fetched += n;
                    }
                }
                _ => self.closing_or_error_chunk(&c, &what, &mut server_err)?,
            }
            if c.flags & REPLY_FLAG_DONE != 0 {
                if let Some((errno, msg)) = server_err {
                    return Ok(Err(server_error(&self.wire.url, &what, errno, &msg)));
                }
                return self
                    .check_coverage(covered, offset, end, &what)
                    .map(|()| Ok(fetched));
            }
        }
        Err(self
            .wire
            .bad(format!("{what}: more than {MAX_CHUNKS} reply chunks")))
    }

    /// Reads an OFFSET_DATA (into `buf`) or OFFSET_HOLE (zero-fills) chunk; returns its
    /// range as (start, length).
    fn data_or_hole(
        &mut self,
        c: &Chunk,
        offset: u64,
        end: u64,
        buf: &mut [u8],
        what: &str,
    ) -> Result<(u64, u64)> {
        let w = &mut self.wire;
        if c.len < 8 {
            return Err(w.bad(format!(
                "{what}: chunk type {} of only {} bytes",
                c.kind, c.len
            )));
        }
        let start = w.u64(what)?;
        let n = if c.kind == REPLY_TYPE_OFFSET_DATA {
            u64::from(c.len - 8)
        } else {
            if c.len != 12 {
                return Err(w.bad(format!(
                    "{what}: OFFSET_HOLE chunk of {} bytes, expected 12",
                    c.len
                )));
            }
            u64::from(w.u32(what)?)
        };
        let inside = start >= offset && start.checked_add(n).is_some_and(|e| e <= end) && n > 0;
        if !inside {
            return Err(w.bad(format!(
                "{what}: server sent {} bytes at offset {start}, outside the {} bytes asked for at {offset}",
                n,
                end - offset
            )));
        }
        let lo = (start - offset) as usize;
        let dst = buf
            .get_mut(lo..lo + n as usize)
            .ok_or_else(|| Error::InvalidArgument("NBD chunk outside the buffer".into()))?;
        if c.kind == REPLY_TYPE_OFFSET_DATA {
            w.read_exact(dst, what)?;
        } else {
            dst.fill(0);
        }
        Ok((start, n))
    }

    fn check_coverage(
        &self,
        mut covered: Vec<(u64, u64)>,
        offset: u64,
        end: u64,
        what: &str,
    ) -> Result<()> {
        covered.sort_unstable();
        let mut pos = offset;
        for (s, e) in covered {
            if s != pos {
                let problem = if s < pos {
                    "overlapping chunks"
                } else {
                    "a gap"
                };
                return Err(self.wire.bad(format!(
                    "{what}: the reply has {problem} at offset {}",
                    s.min(pos)
                )));
            }
            pos = e;
        }
        if pos != end {
            return Err(self.wire.bad(format!(
                "{what}: the reply ended after covering up to offset {pos}, not {end}"
            )));
        }
        Ok(())
    }

    /// Asks for block status of `len` bytes at `offset` for every selected context;
    /// returns each context's descriptors, in the order of `ids`.
    pub fn block_status(&mut self, offset: u64, len: u32, ids: &[u32]) -> Result<Vec<Descriptors>> {
        self.guarded(|c| c.block_status_inner(offset, len, ids))
    }

    fn block_status_inner(
        &mut self,
        offset: u64,
        len: u32,
        ids: &[u32],
    ) -> Result<Result<Vec<Descriptors>>> {
        let handle = self.request(CMD_BLOCK_STATUS, 0, offset, len)?;
        let what = format!("block status of {len} bytes at offset {offset}");
        let mut out: Vec<Option<Descriptors>> = vec![None; ids.len()];
        let mut server_err = None;
        for _ in 0..=ids.len() + 16 {
            let c = self.chunk(handle, &what)?;
            match c.kind {
                REPLY_TYPE_BLOCK_STATUS => {
                    let count = c
                        .len
                        .checked_sub(4)
                        .filter(|n| n % 8 == 0 && *n > 0)
                        .map(|n| n / 8);
                    let Some(count) = count.filter(|&n| n <= MAX_DESCRIPTORS) else {
                        return Err(self.wire.bad(format!(
                            "{what}: BLOCK_STATUS chunk of {} bytes (expected 4 + 8 x 1..{MAX_DESCRIPTORS})",
                            c.len
                        )));
                    };
                    let id = self.wire.u32(&what)?;
                    let payload = self.wire.bytes(count as usize * 8, &what)?;
                    let slot = ids
                        .iter()
                        .position(|&i| i == id)
                        .and_then(|i| out.get_mut(i))
                        .filter(|s| s.is_none())
                        .ok_or_else(|| {
                            self.wire
                                .bad(format!("{what}: unexpected or repeated context id {id}"))
                        })?;
                    let mut d = Vec::with_capacity(count as usize);
                    for pair in payload.chunks_exact(8) {
                        let l = u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]);
                        let f = u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]);
                        if l == 0 {
                            return Err(self
                                .wire
                                .bad(format!("{what}: extent of length 0 for context {id}")));
                        }
                        d.push((l, f));
                    }
                    *slot = Some(d);
                }
                _ => self.closing_or_error_chunk(&c, &what, &mut server_err)?,
            }
            if c.flags & REPLY_FLAG_DONE != 0 {
                if let Some((errno, msg)) = server_err {
                    return Ok(Err(server_error(&self.wire.url, &what, errno, &msg)));
                }
                return out
                    .into_iter()
                    .zip(ids)
                    .map(|(d, id)| {
                        d.ok_or_else(|| {
                            self.wire
                                .bad(format!("{what}: no extents for context {id}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Ok);
            }
        }
        Err(self.wire.bad(format!("{what}: too many reply chunks")))
    }
}

impl Drop for Connection {
    /// Says goodbye (NBD_CMD_DISC) on a healthy connection; best effort.
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.request(CMD_DISC, 0, 0, 0);
        }
    }
}

/// The server reported an error: an `Error::Source` quoting it.
fn server_error(url: &str, what: &str, errno: u32, msg: &str) -> Error {
    Error::Source {
        path: PathBuf::from(url),
        source: std::io::Error::other(format!(
            "server reported {} ({errno}) {what}: {}",
            errno_name(errno),
            if msg.trim().is_empty() {
                "(no message)"
            } else {
                msg
            }
        )),
    }
}
