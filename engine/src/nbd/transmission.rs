//! The transmission phase: one request at a time, answered in order.
//!
//! READ returns the bytes (structured: OFFSET_DATA chunks, OFFSET_HOLE for zero blocks);
//! BLOCK_STATUS reports `base:allocation` extents (zero blocks as HOLE|ZERO), honouring
//! REQ_ONE; FLUSH and CACHE succeed; WRITE, TRIM and WRITE_ZEROES get EPERM (a WRITE's
//! payload is read and dropped first, or the connection closed if it is over
//! [`MAX_REQUEST`]); reads over [`MAX_REQUEST`] get EOVERFLOW (structured) or EINVAL;
//! ranges past the end get EINVAL; a store failure gets EIO. A bad request magic, DISC or
//! EOF end the connection, and so does silence longer than the idle timeout between a
//! reply and the next request ([`super::limits`]).

use std::io::Write;
use std::time::Duration;

use super::conn::{Conn, Socket};
use super::handshake::Negotiated;
use super::limits::{transfer_time, ReadBudget};
use super::proto::{discard, read_u16, read_u32, read_u64, BASE_ALLOCATION_ID};
use super::NbdExport;
use crate::disk_range::Segment;
use crate::formats::nbd::{
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM,
    CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, EIO, EOVERFLOW, EPERM, MAX_REQUEST, REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO,
    STRUCTURED_REPLY_MAGIC,
};

/// Most extents in one block-status reply.
const MAX_EXTENTS: usize = 64 * 1024;

struct Replier<'a, W: Write> {
    w: &'a mut W,
    structured: bool,
    cookie: u64,
}

impl<W: Write> Replier<'_, W> {
    fn simple(&mut self, error: u32, data: &[u8]) -> std::io::Result<()> {
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        head[4..8].copy_from_slice(&error.to_be_bytes());
        head[8..].copy_from_slice(&self.cookie.to_be_bytes());
        self.w.write_all(&head)?;
        self.w.write_all(data)
    }

    fn chunk(&mut self, flags: u16, kind: u16, parts: &[&[u8]]) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = [0u8; 20];
        head[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        head[4..6].copy_from_slice(&flags.to_be_bytes());
        head[6..8].copy_from_slice(&kind.to_be_bytes());
        head[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        head[16..].copy_from_slice(&(len as u32).to_be_bytes());
        self.w.write_all(&head)?;
        for p in parts {
            self.w.write_all(p)?;
        }
        Ok(())
    }

    fn error(&mut self, error: u32, msg: &str) -> std::io::Result<()> {
        if self.structured {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            let mut d = error.to_be_bytes().to_vec();
            d.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            d.extend_from_slice(msg);
            self.chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &[&d])
        } else {
            self.simple(error, &[])
        }
    }

    fn ok(&mut self) -> std::io::Result<()> {
        if self.structured {
            self.chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[])
        } else {
            self.simple(0, &[])
        }
    }
}

/// Serves requests until the client disconnects, breaks the protocol or stays silent for
/// `idle` after a reply. Each WRITE payload and each reply gets [`transfer_time`] of its
/// length; READ replies take their length from `budget` while they are built.
pub fn serve<S: Socket, E: NbdExport>(
    c: &mut Conn<S>,
    n: &Negotiated<E>,
    idle: Duration,
    budget: &ReadBudget,
) -> std::io::Result<()> {
    let export = &n.export;
    loop {
        c.flush()?;
        c.read_within(idle);
        let magic = match read_u32(c) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if magic != REQUEST_MAGIC {
            return Ok(());
        }
        let flags = read_u16(c)?;
        let kind = read_u16(c)?;
        let cookie = read_u64(c)?;
        let offset = read_u64(c)?;
        let len = read_u32(c)?;
        if kind == CMD_WRITE {
            if len > MAX_REQUEST {
                return Ok(());
            }
            c.read_within(transfer_time(u64::from(len)));
            discard(c, u64::from(len))?;
        }
        let reply_bytes = if kind == CMD_READ {
            u64::from(len.min(MAX_REQUEST))
        } else {
            8 * MAX_EXTENTS as u64
        };
        c.write_within(transfer_time(reply_bytes));
        let mut rep = Replier {
            w: c,
            structured: n.structured,
            cookie,
        };
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= export.size());
        match kind {
            CMD_DISC => return Ok(()),
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {
                rep.error(EPERM, "the export is read-only")?;
            }
            CMD_FLUSH => rep.ok()?,
            CMD_CACHE => {
                if in_range {
                    rep.ok()?;
                } else {
                    rep.error(EINVAL, "range past the end of the export")?;
                }
            }
            CMD_READ => {
                if len > MAX_REQUEST {
                    let code = if n.structured { EOVERFLOW } else { EINVAL };
                    rep.error(code, "read longer than the maximum block size")?;
                } else if !in_range {
                    rep.error(EINVAL, "read past the end of the export")?;
                } else {
                    let _memory = budget.take(len);
                    match export.read_range(offset, u64::from(len)) {
                        Ok(segments) => read_reply(&mut rep, &segments)?,
                        Err(e) => rep.error(EIO, &e.to_string())?,
                    }
                }
            }
            CMD_BLOCK_STATUS => {
                if !n.structured || !n.base_allocation {
                    rep.error(EINVAL, "no metadata context was negotiated")?;
                } else if len == 0 || !in_range {
                    rep.error(EINVAL, "block status range is empty or past the end")?;
                } else {
                    let max = if flags & CMD_FLAG_REQ_ONE != 0 {
                        1
                    } else {
                        MAX_EXTENTS
                    };
                    match export.extents(offset, u64::from(len), max) {
                        Ok(extents) => {
                            let mut d = Vec::with_capacity(4 + 8 * extents.len());
                            d.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                            for e in &extents {
                                d.extend_from_slice(&(e.len as u32).to_be_bytes());
                                let state = if e.zero { STATE_HOLE | STATE_ZERO } else { 0 };
                                d.extend_from_slice(&state.to_be_bytes());
                            }
                            rep.chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &[&d])?;
                        }
                        Err(e) => rep.error(EIO, &e.to_string())?,
                    }
                }
            }
            _ => rep.error(EINVAL, "unknown command")?,
        }
    }
}

fn read_reply<W: Write>(rep: &mut Replier<'_, W>, segments: &[Segment]) -> std::io::Result<()> {
    if !rep.structured {
        rep.simple(0, &[])?;
        for s in segments {
            if let Some(d) = &s.data {
                rep.w.write_all(d)?;
            } else {
                let zeros = vec![0u8; 64 * 1024];
                let mut left = s.len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    rep.w.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
        }
        return Ok(());
    }
    if segments.is_empty() {
        return rep.ok();
    }
    for (i, s) in segments.iter().enumerate() {
        let flags = if i + 1 == segments.len() {
            REPLY_FLAG_DONE
        } else {
            0
        };
        let off = s.offset.to_be_bytes();
        if let Some(d) = &s.data {
            rep.chunk(flags, REPLY_TYPE_OFFSET_DATA, &[&off, d])?;
        } else {
            let len = (s.len as u32).to_be_bytes();
            rep.chunk(flags, REPLY_TYPE_OFFSET_HOLE, &[&off, &len])?;
        }
    }
    Ok(())
}
