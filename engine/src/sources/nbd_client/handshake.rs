//! Client side of the fixed-newstyle handshake (proto.md "Newstyle negotiation", "Option
//! types", "Metadata querying").
//!
//! Sequence on every connection:
//! 1. greeting `NBDMAGIC`, `IHAVEOPT`, handshake flags — FIXED_NEWSTYLE is required
//!    (oldstyle servers are refused); the client answers FIXED_NEWSTYLE (+ NO_ZEROES when
//!    offered);
//! 2. with TLS (`nbds://`), `NBD_OPT_STARTTLS` first (proto.md: a client that only wishes
//!    to use TLS sends it first and ends the session when it is refused), then the TLS
//!    handshake ([`ClientTls`]); everything after runs over TLS. Without TLS, a server that
//!    answers NBD_REP_ERR_TLS_REQD is refused with a hint to use `nbds://`;
//! 3. `NBD_OPT_STRUCTURED_REPLY` — required: without it holes cannot be reported and
//!    BLOCK_STATUS is unavailable, so a server refusing it is refused;
//! 4. `NBD_OPT_SET_META_CONTEXT` for `base:allocation` and, with `bitmap=NAME`,
//!    `qemu:dirty-bitmap:NAME` — `base:allocation` is optional (without it every byte is
//!    read), the bitmap is not;
//! 5. `NBD_OPT_GO` asking for `NBD_INFO_BLOCK_SIZE`; `NBD_INFO_EXPORT` gives size and
//!    transmission flags. An unknown export name is reported as such.
//!
//! Every option reply is checked: magic, echoed option, payload at most 64 KiB
//! ([`MAX_OPTION`]); an error reply's text is quoted in the message.

use super::tls::ClientTls;
use super::wire::Wire;
use crate::error::Result;
use crate::formats::nbd::{
    option_error_name, BASE_ALLOCATION, CMD_DISC, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, MAX_OPTION,
    MAX_REQUEST, NBDMAGIC, OLDSTYLE_MAGIC, OPT_ABORT, OPT_GO, OPT_SET_META_CONTEXT, OPT_STARTTLS,
    OPT_STRUCTURED_REPLY, QEMU_DIRTY_BITMAP, REPLY_MAGIC, REP_ACK, REP_ERR_TLS_REQD,
    REP_ERR_UNKNOWN, REP_FLAG_ERROR, REP_INFO, REP_META_CONTEXT, REQUEST_MAGIC,
    TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS,
};

/// Largest minimum block size accepted (proto.md: servers SHOULD NOT exceed 64 KiB).
const MAX_MIN_BLOCK: u32 = 64 * 1024;

/// What one connection's handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum block size (requests are aligned to it).
    pub min_block: u32,
    /// Largest read request, min(maximum block size, 32 MiB).
    pub max_read: u32,
    /// Context id of `base:allocation`, when granted.
    pub allocation_id: Option<u32>,
    /// Context id of the dirty bitmap, when asked for (always granted when asked).
    pub bitmap_id: Option<u32>,
}

impl Negotiated {
    /// Whether the server allows several connections to one export.
    pub fn multi_conn(&self) -> bool {
        self.flags & TFLAG_CAN_MULTI_CONN != 0
    }
}

/// One option reply.
struct OptReply {
    kind: u32,
    data: Vec<u8>,
}

impl OptReply {
    fn is_error(&self) -> bool {
        self.kind & REP_FLAG_ERROR != 0
    }
    /// "NBD_REP_ERR_X (server says: ...)".
    fn describe_error(&self) -> String {
        let text = String::from_utf8_lossy(&self.data);
        let name = option_error_name(self.kind);
        if text.trim().is_empty() {
            format!("{name} (0x{:08x})", self.kind)
        } else {
            format!("{name} (0x{:08x}; server says: {})", self.kind, text.trim())
        }
    }
}

fn send_option(w: &mut Wire, option: u32, data: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(16 + data.len());
    buf.extend_from_slice(&IHAVEOPT.to_be_bytes());
    buf.extend_from_slice(&option.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
    buf.extend_from_slice(data);
    w.send(&buf, &format!("sending option {option}"))
}

fn read_reply(w: &mut Wire, option: u32) -> Result<OptReply> {
    let what = format!("reading the reply to option {option}");
    let magic = w.u64(&what)?;
    if magic != REPLY_MAGIC {
        return Err(w.bad(format!(
            "option reply magic is 0x{magic:016x}, expected 0x{REPLY_MAGIC:016x}"
        )));
    }
    let echoed = w.u32(&what)?;
    if echoed != option {
        return Err(w.bad(format!("reply to option {option} names option {echoed}")));
    }
    let kind = w.u32(&what)?;
    let len = w.u32(&what)?;
    if len > MAX_OPTION {
        return Err(w.bad(format!(
            "reply to option {option} (type 0x{kind:08x}) announces {len} bytes, more than the {MAX_OPTION} accepted"
        )));
    }
    let data = w.bytes(len as usize, &what)?;
    Ok(OptReply { kind, data })
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
}

/// Runs the handshake for `export`, asking for `bitmap` when given, over TLS when `tls` is
/// given.
pub fn negotiate(
    w: &mut Wire,
    export: &str,
    bitmap: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<Negotiated> {
    let magic = w.u64("reading the server greeting")?;
    if magic != NBDMAGIC {
        return Err(w.bad(format!(
            "greeting starts with 0x{magic:016x}, expected NBDMAGIC 0x{NBDMAGIC:016x} (is this an NBD server?)"
        )));
    }
    let second = w.u64("reading the server greeting")?;
    if second == OLDSTYLE_MAGIC {
        return Err(w.bad("the server speaks oldstyle negotiation, which names no export; use a newstyle server (qemu-nbd, nbdkit, nbd-server)"));
    }
    if second != IHAVEOPT {
        return Err(w.bad(format!(
            "greeting has 0x{second:016x} at offset 8, expected IHAVEOPT 0x{IHAVEOPT:016x}"
        )));
    }
    let hs_flags = w.u16("reading the handshake flags")?;
    if hs_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(w.bad(format!(
            "handshake flags 0x{hs_flags:04x} lack FIXED_NEWSTYLE, which tessera requires"
        )));
    }
    let mut client = FLAG_C_FIXED_NEWSTYLE;
    let no_zeroes = hs_flags & FLAG_NO_ZEROES != 0;
    if no_zeroes {
        client |= FLAG_C_NO_ZEROES;
    }
    w.send(&client.to_be_bytes(), "sending the client flags")?;

    // On failure, say goodbye the way the phase allows (best effort), so the server logs a
    // clean disconnect rather than a broken handshake.
    if let Some(tls) = tls {
        if let Err(e) = start_tls(w, tls) {
            let _ = send_option(w, OPT_ABORT, &[]);
            return Err(e);
        }
    }
    let options = |w: &mut Wire| -> Result<_> {
        structured_replies(w, tls.is_some()).map_err(|e| match e {
            // TLS 1.3 finishes the client's side of the handshake before the server has
            // checked the client's certificate: its refusal is a closed connection here.
            crate::error::Error::Source { source, .. } if tls.is_some() => crate::error::Error::Tls {
                reason: format!(
                    "{}: the NBD server ended the TLS session right after the handshake ({source}); it probably requires a client certificate it trusts: put client-cert.pem and client-key.pem in the directory given as tls-certificates=DIR",
                    w.url
                ),
            },
            e => e,
        })?;
        let wanted = bitmap.map(|b| format!("{QEMU_DIRTY_BITMAP}{b}"));
        let (allocation_id, bitmap_id, meta_err) = meta_contexts(w, export, wanted.as_deref())?;
        Ok((allocation_id, bitmap_id, meta_err, wanted))
    };
    let settled = options(w).and_then(|o| go(w, export).map(|neg| (o, neg)));
    let ((allocation_id, bitmap_id, meta_err, wanted_bitmap), mut neg) = match settled {
        Ok(v) => v,
        Err(e) => {
            let _ = send_option(w, OPT_ABORT, &[]);
            return Err(e);
        }
    };
    neg.allocation_id = allocation_id;
    if let (Some(name), Some(full)) = (bitmap, &wanted_bitmap) {
        let Some(id) = bitmap_id else {
            let why = meta_err.map_or(String::new(), |e| format!("; SET_META_CONTEXT got {e}"));
            let _ = w.send(&disconnect_request(), "disconnecting");
            return Err(w.bad(format!(
                "server does not export dirty bitmap {name} (metadata context {full} was not granted{why}); export it with qemu-nbd --bitmap {name} / qemu-storage-daemon --export nbd,...,bitmaps={name}"
            )));
        };
        neg.bitmap_id = Some(id);
    }
    Ok(neg)
}

/// A server in FORCEDTLS mode answered a plain client.
fn tls_required(w: &Wire, r: &OptReply) -> crate::error::Error {
    w.bad(format!(
        "the server requires TLS ({}): use nbds:// (or nbds+unix://), with --tls-ca FILE or tls-certificates=DIR if its certificate is not signed by a system root",
        r.describe_error()
    ))
}

/// NBD_CMD_DISC, the goodbye of the transmission phase.
fn disconnect_request() -> [u8; 28] {
    let mut buf = [0u8; 28];
    buf[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    buf[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
    buf
}

/// NBD_OPT_STARTTLS and the TLS handshake; any answer but NBD_REP_ACK ends the session.
fn start_tls(w: &mut Wire, tls: &ClientTls) -> Result<()> {
    send_option(w, OPT_STARTTLS, &[])?;
    let r = read_reply(w, OPT_STARTTLS)?;
    if r.kind == REP_ACK && r.data.is_empty() {
        return w.start_tls(tls);
    }
    let what = if r.is_error() {
        r.describe_error()
    } else {
        format!("reply type 0x{:08x}", r.kind)
    };
    Err(w.bad(format!(
        "the server does not offer TLS (NBD_OPT_STARTTLS got {what}); the URL asks for it (nbds://), so nothing is sent in clear"
    )))
}

fn structured_replies(w: &mut Wire, tls: bool) -> Result<()> {
    send_option(w, OPT_STRUCTURED_REPLY, &[])?;
    let r = read_reply(w, OPT_STRUCTURED_REPLY)?;
    if r.kind == REP_ACK && r.data.is_empty() {
        return Ok(());
    }
    if r.kind == REP_ERR_TLS_REQD && !tls {
        return Err(tls_required(w, &r));
    }
    let what = if r.is_error() {
        r.describe_error()
    } else {
        format!("reply type 0x{:08x}", r.kind)
    };
    Err(w.bad(format!(
        "the server does not support structured replies (NBD_OPT_STRUCTURED_REPLY got {what}); tessera needs them to read holes and block status safely"
    )))
}

/// Selects the contexts; returns (allocation id, bitmap id, error reply text).
fn meta_contexts(
    w: &mut Wire,
    export: &str,
    bitmap: Option<&str>,
) -> Result<(Option<u32>, Option<u32>, Option<String>)> {
    let mut queries = vec![BASE_ALLOCATION];
    queries.extend(bitmap);
    let mut data = Vec::new();
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in &queries {
        data.extend_from_slice(&(q.len() as u32).to_be_bytes());
        data.extend_from_slice(q.as_bytes());
    }
    send_option(w, OPT_SET_META_CONTEXT, &data)?;
    let (mut allocation, mut dirty) = (None, None);
    // Each granted context gets one reply, then ACK; bounded by the queries sent.
    for _ in 0..=queries.len() {
        let r = read_reply(w, OPT_SET_META_CONTEXT)?;
        if r.kind == REP_ACK {
            return Ok((allocation, dirty, None));
        }
        if r.is_error() {
            return Ok((None, None, Some(r.describe_error())));
        }
        if r.kind != REP_META_CONTEXT {
            return Err(w.bad(format!(
                "unexpected reply type 0x{:08x} to NBD_OPT_SET_META_CONTEXT",
                r.kind
            )));
        }
        let id = be_u32(&r.data, 0)
            .ok_or_else(|| w.bad("NBD_REP_META_CONTEXT reply shorter than 4 bytes"))?;
        let name = String::from_utf8_lossy(r.data.get(4..).unwrap_or_default());
        if name == BASE_ALLOCATION {
            allocation = Some(id);
        } else if Some(name.as_ref()) == bitmap {
            dirty = Some(id);
        } else {
            return Err(w.bad(format!(
                "server granted metadata context {name:?}, which was not asked for"
            )));
        }
        if allocation.is_some() && allocation == dirty {
            return Err(w.bad(format!("server gave two contexts the same id {id}")));
        }
    }
    Err(w.bad(format!(
        "server granted more metadata contexts than the {} asked for",
        queries.len()
    )))
}

fn go(w: &mut Wire, export: &str) -> Result<Negotiated> {
    let mut data = Vec::new();
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(w, OPT_GO, &data)?;
    let mut size_flags = None;
    let mut sizes = None;
    // Bounded: a server flooding INFO replies is cut off.
    for _ in 0..64 {
        let r = read_reply(w, OPT_GO)?;
        match r.kind {
            REP_ACK => {
                let (size, flags) = size_flags
                    .ok_or_else(|| w.bad("NBD_OPT_GO succeeded without NBD_INFO_EXPORT"))?;
                let (min, _preferred, max) = sizes.unwrap_or((1, 4096, MAX_REQUEST));
                if flags & TFLAG_HAS_FLAGS == 0 {
                    return Err(w.bad(format!(
                        "transmission flags 0x{flags:04x} lack NBD_FLAG_HAS_FLAGS"
                    )));
                }
                return Ok(Negotiated {
                    size,
                    flags,
                    min_block: min,
                    max_read: max.min(MAX_REQUEST) / min * min,
                    allocation_id: None,
                    bitmap_id: None,
                });
            }
            REP_INFO => {
                let info = r.data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                match info {
                    Some(INFO_EXPORT) => {
                        let size = r.data.get(2..10).and_then(|b| b.try_into().ok());
                        let flags = r.data.get(10..12).and_then(|b| b.try_into().ok());
                        match (size, flags, r.data.len()) {
                            (Some(s), Some(f), 12) => {
                                size_flags = Some((u64::from_be_bytes(s), u16::from_be_bytes(f)));
                            }
                            _ => {
                                return Err(w.bad(format!(
                                    "NBD_INFO_EXPORT reply is {} bytes, expected 12",
                                    r.data.len()
                                )))
                            }
                        }
                    }
                    Some(INFO_BLOCK_SIZE) => {
                        let (min, pref, max) =
                            (be_u32(&r.data, 2), be_u32(&r.data, 6), be_u32(&r.data, 10));
                        let (Some(min), Some(pref), Some(max), 14) = (min, pref, max, r.data.len())
                        else {
                            return Err(w.bad(format!(
                                "NBD_INFO_BLOCK_SIZE reply is {} bytes, expected 14",
                                r.data.len()
                            )));
                        };
                        let valid = min.is_power_of_two()
                            && min <= MAX_MIN_BLOCK
                            && pref.is_power_of_two()
                            && pref >= min
                            && max >= min
                            && (max % min == 0 || max == u32::MAX);
                        if !valid {
                            return Err(w.bad(format!(
                                "block sizes min {min} / preferred {pref} / max {max} are inconsistent (min and preferred must be powers of two, min <= 64 KiB, preferred and max >= min)"
                            )));
                        }
                        sizes = Some((min, pref, max));
                    }
                    _ => {} // other information is optional and ignored
                }
            }
            REP_ERR_UNKNOWN => {
                return Err(w.bad(format!(
                    "the server has no export named {export:?} ({})",
                    r.describe_error()
                )))
            }
            REP_ERR_TLS_REQD => return Err(tls_required(w, &r)),
            kind if kind & REP_FLAG_ERROR != 0 => {
                return Err(w.bad(format!(
                    "NBD_OPT_GO for export {export:?} failed: {}",
                    r.describe_error()
                )))
            }
            kind => return Err(w.bad(format!("unexpected reply type 0x{kind:08x} to NBD_OPT_GO"))),
        }
    }
    Err(w.bad("NBD_OPT_GO: more than 64 information replies without an acknowledgement"))
}
