//! Fixed-newstyle handshake and option haggling.
//!
//! Served options: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT
//! and SET_META_CONTEXT (only `base:allocation`), and STARTTLS when the server has TLS;
//! anything else gets NBD_REP_ERR_UNSUP.
//!
//! TLS (proto.md "TLS support"): a server with TLS runs in FORCEDTLS mode. Before
//! STARTTLS, ABORT is acknowledged, EXPORT_NAME closes the connection (it cannot be
//! answered with an error) and every other option gets NBD_REP_ERR_TLS_REQD, so no export
//! name or size crosses the network in clear. STARTTLS with data gets NBD_REP_ERR_INVALID;
//! otherwise NBD_REP_ACK, then the TLS handshake (bytes the client sent after its STARTTLS
//! but before the handshake close the connection: they would be plaintext injected into
//! the session), and haggling starts afresh over TLS (proto.md: no negotiation state
//! survives STARTTLS). A second STARTTLS gets NBD_REP_ERR_INVALID. A server without TLS
//! answers STARTTLS with NBD_REP_ERR_POLICY.
//!
//! Bounds ([`Limits`]): option payloads over `max_option_bytes` get NBD_REP_ERR_TOO_BIG
//! and the connection is closed (it cannot be resynchronised cheaply); the option after
//! `max_options` gets NBD_REP_ERR_POLICY and the connection is closed. A bad option magic
//! or unknown client flags close the connection. The caller bounds the whole handshake in
//! time (the connection's deadline).

use std::io::{Read, Write};
use std::sync::Arc;

use openssl::ssl::SslAcceptor;

use super::conn::{Conn, Socket};
use super::limits::Limits;
use super::proto::{option_reply, read_u32, read_u64, Cursor, BASE_ALLOCATION_ID, EXPORT_FLAGS};
use super::NbdExport;
use crate::formats::nbd::{
    BASE_ALLOCATION, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, INFO_NAME, MAX_REQUEST, NBDMAGIC, OPT_ABORT,
    OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT,
    OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_TLS_REQD,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
};

/// What the haggling settled on.
pub struct Negotiated<E> {
    /// The export to serve.
    pub export: Arc<E>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
}

fn find<'a, E: NbdExport>(exports: &'a [Arc<E>], name: &str) -> Option<&'a Arc<E>> {
    if name.is_empty() {
        exports.first()
    } else {
        exports.iter().find(|e| e.name() == name)
    }
}

fn error_reply(w: &mut impl Write, option: u32, kind: u32, msg: &str) -> std::io::Result<()> {
    option_reply(w, option, kind, msg.as_bytes())
}

/// Parses a meta-context request: export name and queries.
fn meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut c = Cursor(data);
    let name = c.string()?;
    let n = c.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(c.string()?);
    }
    c.0.is_empty().then_some((name, queries))
}

/// Whether TLS is off, still to come, or running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// The server has no TLS.
    Off,
    /// TLS is required and not yet running.
    Required,
    /// TLS is running.
    Running,
}

/// Connection state while options are haggled.
struct Session<'a, E> {
    exports: &'a [Arc<E>],
    no_zeroes: bool,
    tls: Tls,
    structured: bool,
    /// Export name the base:allocation context was selected for.
    meta_for: Option<String>,
}

/// What an option led to.
enum Step<E> {
    /// Haggle on.
    Continue,
    /// Upgrade to TLS (NBD_REP_ACK is buffered), then haggle on.
    StartTls,
    /// Stop haggling: transmission with this, or (`None`) close the connection.
    Done(Option<Negotiated<E>>),
}

/// Sends the greeting and reads the client's flags; `None` when they hold unknown bits.
pub fn greet<C: Read + Write>(c: &mut C) -> std::io::Result<Option<u32>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    c.write_all(&hello)?;
    c.flush()?;
    let flags = read_u32(c)?;
    Ok((flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) == 0).then_some(flags))
}

/// Reads one option: `(option, payload)`, or `None` (close the connection) on a bad
/// magic or a payload over `max_len` (answered NBD_REP_ERR_TOO_BIG, never read).
pub fn read_option<C: Read + Write>(
    c: &mut C,
    max_len: u32,
) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    if read_u64(c)? != IHAVEOPT {
        return Ok(None);
    }
    let option = read_u32(c)?;
    let len = read_u32(c)?;
    if len > max_len {
        let why = format!("option payload of {len} bytes; the most this server reads is {max_len}");
        error_reply(c, option, REP_ERR_TOO_BIG, &why)?;
        c.flush()?;
        return Ok(None);
    }
    let mut data = vec![0u8; len as usize];
    c.read_exact(&mut data)?;
    Ok(Some((option, data)))
}

/// Runs the handshake on `c` (upgrading it to TLS when `tls` is given and the client asks;
/// a server with `tls` refuses everything else first). `Ok(None)` means the connection is
/// to be closed (ABORT, EOF, a bound reached, a protocol error). On success the answer
/// that chose the export is still buffered in the returned connection: the caller first
/// counts the connection as in transmission (so it can no longer be closed to make room
/// for another, see `admission.rs`), then flushes it; a client that has read its answer is
/// therefore never evicted.
pub fn handshake<S: Socket, E: NbdExport>(
    mut c: Conn<S>,
    exports: &[Arc<E>],
    limits: &Limits,
    tls: Option<&SslAcceptor>,
) -> std::io::Result<Option<(Conn<S>, Negotiated<E>)>> {
    let Some(client_flags) = greet(&mut c)? else {
        return Ok(None);
    };
    // proto.md: TLS needs fixed newstyle; a server that requires it cannot serve a client
    // without it (that client could not even be told why).
    if tls.is_some() && client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Ok(None);
    }
    let mut session = Session {
        exports,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        tls: if tls.is_some() {
            Tls::Required
        } else {
            Tls::Off
        },
        structured: false,
        meta_for: None,
    };
    let mut options = 0u32;
    loop {
        c.flush()?;
        let Some((option, data)) = read_option(&mut c, limits.max_option_bytes)? else {
            return Ok(None);
        };
        options += 1;
        if options > limits.max_options {
            let why = format!(
                "more than {} options without choosing an export; closing",
                limits.max_options
            );
            error_reply(&mut c, option, REP_ERR_POLICY, &why)?;
            c.flush()?;
            return Ok(None);
        }
        match session.option(&mut c, option, &data)? {
            Step::Continue => {}
            Step::Done(None) => {
                c.flush()?;
                return Ok(None);
            }
            // The answer that ends the handshake stays buffered: see `handshake`.
            Step::Done(Some(negotiated)) => return Ok(Some((c, negotiated))),
            Step::StartTls => {
                let Some(acceptor) = tls else {
                    return Ok(None);
                };
                c = match c.start_tls(acceptor) {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(None),
                    Err(e) => return Err(e),
                };
                session.tls = Tls::Running;
                session.structured = false;
                session.meta_for = None;
            }
        }
    }
}

impl<E: NbdExport> Session<'_, E> {
    fn negotiated(&self, export: &Arc<E>) -> Negotiated<E> {
        Negotiated {
            export: Arc::clone(export),
            structured: self.structured,
            base_allocation: self.meta_for.as_deref() == Some(export.name()),
        }
    }

    fn option(&mut self, w: &mut impl Write, option: u32, data: &[u8]) -> std::io::Result<Step<E>> {
        if self.tls == Tls::Required && option != OPT_STARTTLS {
            return match option {
                OPT_ABORT => {
                    option_reply(w, option, REP_ACK, &[])?;
                    Ok(Step::Done(None))
                }
                OPT_EXPORT_NAME => Ok(Step::Done(None)),
                _ => {
                    let why = "this server requires TLS: send NBD_OPT_STARTTLS first";
                    error_reply(w, option, REP_ERR_TLS_REQD, why)?;
                    Ok(Step::Continue)
                }
            };
        }
        match option {
            OPT_EXPORT_NAME => {
                let Ok(name) = std::str::from_utf8(data) else {
                    return Ok(Step::Done(None));
                };
                let Some(export) = find(self.exports, name) else {
                    return Ok(Step::Done(None));
                };
                let mut buf = Vec::with_capacity(134);
                buf.extend_from_slice(&export.size().to_be_bytes());
                buf.extend_from_slice(&EXPORT_FLAGS.to_be_bytes());
                if !self.no_zeroes {
                    buf.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&buf)?;
                return Ok(Step::Done(Some(self.negotiated(export))));
            }
            OPT_ABORT => {
                option_reply(w, option, REP_ACK, &[])?;
                return Ok(Step::Done(None));
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error_reply(w, option, REP_ERR_INVALID, "LIST takes no data")?;
                    return Ok(Step::Continue);
                }
                for e in self.exports {
                    let name = e.name().as_bytes();
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name);
                    option_reply(w, option, REP_SERVER, &d)?;
                }
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_STARTTLS => match self.tls {
                Tls::Off => error_reply(w, option, REP_ERR_POLICY, "this server has no TLS")?,
                Tls::Running => error_reply(w, option, REP_ERR_INVALID, "TLS is running already")?,
                Tls::Required if !data.is_empty() => {
                    error_reply(w, option, REP_ERR_INVALID, "STARTTLS takes no data")?;
                }
                Tls::Required => {
                    option_reply(w, option, REP_ACK, &[])?;
                    return Ok(Step::StartTls);
                }
            },
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    option_reply(w, option, REP_ACK, &[])?;
                } else {
                    error_reply(w, option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
                }
            }
            OPT_INFO | OPT_GO => return self.info(w, option, data),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(w, option, data)?,
            _ => error_reply(w, option, REP_ERR_UNSUP, "option not supported")?,
        }
        Ok(Step::Continue)
    }

    fn info(&mut self, w: &mut impl Write, option: u32, data: &[u8]) -> std::io::Result<Step<E>> {
        let mut c = Cursor(data);
        let parsed = (|| {
            let name = c.string()?;
            let n = c.u16()?;
            let mut infos = Vec::new();
            for _ in 0..n {
                infos.push(c.u16()?);
            }
            c.0.is_empty().then_some((name, infos))
        })();
        let Some((name, infos)) = parsed else {
            error_reply(w, option, REP_ERR_INVALID, "malformed INFO/GO request")?;
            return Ok(Step::Continue);
        };
        let Some(export) = find(self.exports, &name) else {
            error_reply(w, option, REP_ERR_UNKNOWN, "no such export")?;
            return Ok(Step::Continue);
        };
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&export.size().to_be_bytes());
        d.extend_from_slice(&EXPORT_FLAGS.to_be_bytes());
        option_reply(w, option, REP_INFO, &d)?;
        let mut d = Vec::with_capacity(14);
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        let preferred = u32::try_from(export.block_size())
            .unwrap_or(MAX_REQUEST)
            .clamp(512, MAX_REQUEST)
            .next_power_of_two()
            .min(MAX_REQUEST);
        d.extend_from_slice(&preferred.to_be_bytes());
        d.extend_from_slice(&MAX_REQUEST.to_be_bytes());
        option_reply(w, option, REP_INFO, &d)?;
        if infos.contains(&INFO_NAME) {
            let mut d = INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(export.name().as_bytes());
            option_reply(w, option, REP_INFO, &d)?;
        }
        option_reply(w, option, REP_ACK, &[])?;
        if option == OPT_GO {
            return Ok(Step::Done(Some(self.negotiated(export))));
        }
        Ok(Step::Continue)
    }

    fn meta_context(
        &mut self,
        w: &mut impl Write,
        option: u32,
        data: &[u8],
    ) -> std::io::Result<()> {
        let set = option == OPT_SET_META_CONTEXT;
        if set && !self.structured {
            return error_reply(
                w,
                option,
                REP_ERR_INVALID,
                "negotiate STRUCTURED_REPLY first",
            );
        }
        let Some((name, queries)) = meta_request(data) else {
            return error_reply(w, option, REP_ERR_INVALID, "malformed meta context request");
        };
        let Some(export) = find(self.exports, &name) else {
            return error_reply(w, option, REP_ERR_UNKNOWN, "no such export");
        };
        let matches = if set {
            queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            queries.is_empty() || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
        };
        if set {
            self.meta_for = matches.then(|| export.name().to_string());
        }
        if matches {
            let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            option_reply(w, option, REP_META_CONTEXT, &d)?;
        }
        option_reply(w, option, REP_ACK, &[])
    }
}
