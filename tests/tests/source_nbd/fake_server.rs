//! A hand-written NBD server for the tests of `source_nbd.rs`: a thread on a loopback
//! listener that handshakes correctly (fixed newstyle, structured replies, optionally
//! `base:allocation` and multi-conn) and then serves a synthetic disk honestly or
//! misbehaves in one chosen way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::MIB;

/// How the fake server misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehave {
    /// Greets with something that is not NBD.
    BadMagic,
    /// Answers a read with more data than asked for.
    LongRead,
    /// Sends half a read reply, then closes.
    CloseMidReply,
    /// Never answers a read.
    Silent,
    /// Answers a read with data for its first half only, flagged DONE.
    ShortRead,
    /// Answers a read under another request's handle.
    WrongHandle,
    /// Answers a read with an error chunk.
    ErrorChunk,
    /// Refuses structured replies.
    NoStructuredReplies,
    /// Speaks oldstyle negotiation.
    Oldstyle,
    /// Announces a 1 GiB reply to NBD_OPT_STRUCTURED_REPLY (and never sends it).
    HugeOptionReply,
    /// Grants `base:allocation`, then announces a BLOCK_STATUS chunk of almost 4 GiB.
    HugeBlockStatus,
    /// Serves [`fake_byte`] correctly (every 4th MiB as holes), one chunk per MiB in
    /// reverse order; offers NBD_FLAG_CAN_MULTI_CONN when `multi_conn`. With
    /// `block_status`, grants `base:allocation` and describes at most 2 MiB per
    /// BLOCK_STATUS request (fewer extents than asked), holes as HOLE|ZERO.
    Honest {
        multi_conn: bool,
        block_status: bool,
    },
    /// Like `Honest` with multi-conn offered, but, like qemu-nbd `-e 1`, greets a second
    /// client only once the first has gone (the second waits in the listen queue).
    OneClientAtATime,
    /// Grants `base:allocation`, then answers BLOCK_STATUS with an extent of length 0.
    ZeroLengthExtent,
}

/// Context id the fake server gives `base:allocation`.
const FAKE_CONTEXT: u32 = 7;

/// What the fake server saw.
#[derive(Default)]
pub struct FakeStats {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections open now.
    pub active: AtomicUsize,
    /// Bytes of zero regions the client asked to read.
    pub hole_bytes_read: AtomicUsize,
}

/// Answers BLOCK_STATUS: at most two extents of at most 1 MiB, or one of length 0 in
/// `ZeroLengthExtent` mode.
fn block_status_reply(
    s: &mut TcpStream,
    mode: Misbehave,
    handle: u64,
    offset: u64,
    len: u32,
) -> std::io::Result<()> {
    let end = offset + u64::from(len);
    let mut payload = FAKE_CONTEXT.to_be_bytes().to_vec();
    if let Misbehave::HugeBlockStatus = mode {
        s.write_all(&chunk_header(1, 5, handle, u32::MAX - 3))?;
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    if let Misbehave::ZeroLengthExtent = mode {
        payload.extend_from_slice(&[0; 8]);
    } else {
        let mut pos = offset;
        for _ in 0..2 {
            if pos >= end {
                break;
            }
            let next = ((pos / MIB + 1) * MIB).min(end);
            let flags: u32 = if fake_byte(pos) == 0 { 3 } else { 0 };
            payload.extend_from_slice(&((next - pos) as u32).to_be_bytes());
            payload.extend_from_slice(&flags.to_be_bytes());
            pos = next;
        }
    }
    s.write_all(&chunk_header(1, 5, handle, payload.len() as u32))?;
    s.write_all(&payload)
}

pub const FAKE_SIZE: u64 = 24 * MIB;

/// The honest fake disk's byte at `offset`.
pub fn fake_byte(offset: u64) -> u8 {
    if (offset / MIB) % 4 == 3 {
        0
    } else {
        (offset % 251 + 1) as u8
    }
}

/// Answers a read honestly: one OFFSET_DATA or OFFSET_HOLE chunk per MiB piece, last
/// piece first.
fn honest_read(s: &mut TcpStream, handle: u64, offset: u64, len: u32) -> std::io::Result<()> {
    let end = offset + u64::from(len);
    let mut pieces = Vec::new();
    let mut pos = offset;
    while pos < end {
        let next = ((pos / MIB + 1) * MIB).min(end);
        pieces.push((pos, next));
        pos = next;
    }
    let count = pieces.len();
    for (i, (a, b)) in pieces.into_iter().rev().enumerate() {
        let done = u16::from(i + 1 == count);
        let n = (b - a) as u32;
        if fake_byte(a) == 0 {
            s.write_all(&chunk_header(done, 2, handle, 12))?;
            s.write_all(&a.to_be_bytes())?;
            s.write_all(&n.to_be_bytes())?;
        } else {
            s.write_all(&chunk_header(done, 1, handle, 8 + n))?;
            s.write_all(&a.to_be_bytes())?;
            let data: Vec<u8> = (a..b).map(fake_byte).collect();
            s.write_all(&data)?;
        }
    }
    Ok(())
}

fn be32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn option_reply(s: &mut TcpStream, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

fn chunk_header(flags: u16, kind: u16, handle: u64, len: u32) -> Vec<u8> {
    let mut m = 0x668e_33efu32.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&handle.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m
}

/// A correct handshake (meta contexts and multi-conn only as `mode` says); false when
/// `mode` ends the connection during it.
fn fake_handshake(s: &mut TcpStream, mode: Misbehave) -> std::io::Result<bool> {
    let grants_context = matches!(
        mode,
        Misbehave::ZeroLengthExtent
            | Misbehave::HugeBlockStatus
            | Misbehave::Honest {
                block_status: true,
                ..
            }
    );
    if let Misbehave::BadMagic = mode {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")?;
        return Ok(false);
    }
    s.write_all(&0x4e42_444d_4147_4943u64.to_be_bytes())?;
    if let Misbehave::Oldstyle = mode {
        s.write_all(&0x0000_4202_8186_1253u64.to_be_bytes())?;
        s.write_all(&FAKE_SIZE.to_be_bytes())?;
        s.write_all(&[0; 128])?;
        return Ok(false);
    }
    s.write_all(&0x4948_4156_454F_5054u64.to_be_bytes())?;
    s.write_all(&3u16.to_be_bytes())?;
    be32(s)?; // client flags
    loop {
        let mut head = [0u8; 16];
        s.read_exact(&mut head)?;
        let opt = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            8 if matches!(mode, Misbehave::HugeOptionReply) => {
                let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                m.extend_from_slice(&opt.to_be_bytes());
                m.extend_from_slice(&1u32.to_be_bytes());
                m.extend_from_slice(&(1u32 << 30).to_be_bytes());
                s.write_all(&m)?;
                std::thread::sleep(Duration::from_secs(30));
                return Ok(false);
            }
            8 if matches!(mode, Misbehave::NoStructuredReplies) => {
                option_reply(
                    s,
                    opt,
                    (1 << 31) + 1,
                    b"structured replies? never heard of them",
                )?;
            }
            7 => {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&FAKE_SIZE.to_be_bytes());
                // HAS_FLAGS | READ_ONLY, + CAN_MULTI_CONN
                let multi = matches!(
                    mode,
                    Misbehave::OneClientAtATime
                        | Misbehave::Honest {
                            multi_conn: true,
                            ..
                        }
                );
                let flags = 3u16 | if multi { 1 << 8 } else { 0 };
                info.extend_from_slice(&flags.to_be_bytes());
                option_reply(s, opt, 3, &info)?;
                option_reply(s, opt, 1, &[])?;
                return Ok(true);
            }
            10 if grants_context => {
                let mut granted = FAKE_CONTEXT.to_be_bytes().to_vec();
                granted.extend_from_slice(b"base:allocation");
                option_reply(s, opt, 4, &granted)?;
                option_reply(s, opt, 1, &[])?;
            }
            _ => option_reply(s, opt, 1, &[])?, // ACK (SET_META_CONTEXT: nothing granted)
        }
    }
}

/// One connection of the fake server: [`fake_handshake`], then `mode`'s behaviour on
/// requests.
fn fake_connection(mut s: TcpStream, mode: Misbehave, stats: &FakeStats) -> std::io::Result<()> {
    if matches!(mode, Misbehave::OneClientAtATime) && stats.active.load(Ordering::SeqCst) > 1 {
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    if !fake_handshake(&mut s, mode)? {
        return Ok(());
    }
    loop {
        let mut req = [0u8; 28];
        s.read_exact(&mut req)?;
        let cmd = u16::from_be_bytes([req[6], req[7]]);
        let handle = u64::from_be_bytes(req[8..16].try_into().unwrap());
        let offset = u64::from_be_bytes(req[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(req[24..28].try_into().unwrap());
        if cmd == 2 {
            return Ok(());
        }
        if cmd == 7 {
            block_status_reply(&mut s, mode, handle, offset, len)?;
            continue;
        }
        let holes = (offset..offset + u64::from(len))
            .step_by(4096)
            .filter(|&o| fake_byte(o) == 0)
            .count();
        stats
            .hole_bytes_read
            .fetch_add(holes * 4096, Ordering::SeqCst);
        if matches!(mode, Misbehave::OneClientAtATime) {
            // Slow answers, so that the client's readers overlap and it wants a second
            // connection however the machine schedules them (the test is about that wish).
            std::thread::sleep(Duration::from_millis(100));
        }
        match mode {
            Misbehave::LongRead => {
                let extra = 4096;
                s.write_all(&chunk_header(1, 1, handle, 8 + len + extra))?;
                s.write_all(&offset.to_be_bytes())?;
                s.write_all(&vec![0xaa; (len + extra) as usize])?;
            }
            Misbehave::CloseMidReply => {
                s.write_all(&chunk_header(1, 1, handle, 8 + len))?;
                s.write_all(&offset.to_be_bytes())?;
                s.write_all(&vec![0xaa; (len / 2) as usize])?;
                return Ok(());
            }
            Misbehave::ShortRead => {
                s.write_all(&chunk_header(1, 1, handle, 8 + len / 2))?;
                s.write_all(&offset.to_be_bytes())?;
                s.write_all(&vec![0xaa; (len / 2) as usize])?;
            }
            Misbehave::WrongHandle => {
                s.write_all(&chunk_header(1, 1, handle ^ 0x55, 8 + len))?;
                s.write_all(&offset.to_be_bytes())?;
                s.write_all(&vec![0xaa; len as usize])?;
            }
            Misbehave::Silent => {
                std::thread::sleep(Duration::from_secs(30));
                return Ok(());
            }
            Misbehave::ErrorChunk => {
                let msg = b"disk on fire";
                let mut p = 5u32.to_be_bytes().to_vec();
                p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                p.extend_from_slice(msg);
                s.write_all(&chunk_header(1, (1 << 15) + 1, handle, p.len() as u32))?;
                s.write_all(&p)?;
            }
            Misbehave::Honest { .. } | Misbehave::OneClientAtATime => {
                honest_read(&mut s, handle, offset, len)?;
            }
            Misbehave::BadMagic
            | Misbehave::NoStructuredReplies
            | Misbehave::ZeroLengthExtent
            | Misbehave::Oldstyle
            | Misbehave::HugeOptionReply
            | Misbehave::HugeBlockStatus => return Ok(()),
        }
    }
}

/// Starts a fake server on a loopback port; returns its URL and what it saw. Its threads
/// end with the test process (or when the client goes away).
pub fn fake_server(mode: Misbehave) -> (String, Arc<FakeStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake server");
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(FakeStats::default());
    let seen = Arc::clone(&stats);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            seen.active.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let _ = fake_connection(s, mode, &seen);
                seen.active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("nbd://127.0.0.1:{port}/"), stats)
}
