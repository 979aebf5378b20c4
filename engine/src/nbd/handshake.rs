//! Fixed-newstyle handshake and option haggling.
//!
//! Served options: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT
//! and SET_META_CONTEXT (only `base:allocation`). STARTTLS is refused with
//! NBD_REP_ERR_POLICY, anything else gets NBD_REP_ERR_UNSUP. Option payloads over
//! [`MAX_OPTION`] get NBD_REP_ERR_TOO_BIG and the connection is closed (it cannot be
//! resynchronised cheaply). A bad option magic or unknown client flags close the connection.

use std::io::{Read, Write};
use std::sync::Arc;

use super::proto::{option_reply, read_u32, read_u64, Cursor, BASE_ALLOCATION_ID, EXPORT_FLAGS};
use super::Export;
use crate::formats::nbd::{
    BASE_ALLOCATION, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, INFO_NAME, MAX_OPTION, MAX_REQUEST, NBDMAGIC,
    OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID,
    REP_ERR_POLICY, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT,
    REP_SERVER,
};

/// What the haggling settled on.
pub struct Negotiated {
    /// The export to serve.
    pub export: Arc<Export>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
}

fn find<'a>(exports: &'a [Arc<Export>], name: &str) -> Option<&'a Arc<Export>> {
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

/// Connection state while options are haggled.
struct Session<'a> {
    exports: &'a [Arc<Export>],
    no_zeroes: bool,
    structured: bool,
    /// Export name the base:allocation context was selected for.
    meta_for: Option<String>,
}

/// What an option led to.
enum Step {
    /// Haggle on.
    Continue,
    /// Stop haggling: transmission with this, or (`None`) close the connection.
    Done(Option<Negotiated>),
}

/// Runs the handshake; `Ok(None)` means the client left (ABORT, EOF, or a protocol error
/// after which the connection is closed).
pub fn handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    exports: &[Arc<Export>],
) -> std::io::Result<Option<Negotiated>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello)?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Ok(None);
    }
    let mut session = Session {
        exports,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        structured: false,
        meta_for: None,
    };
    loop {
        w.flush()?;
        if read_u64(r)? != IHAVEOPT {
            return Ok(None);
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION {
            error_reply(w, option, REP_ERR_TOO_BIG, "option payload too large")?;
            w.flush()?;
            return Ok(None);
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        if let Step::Done(result) = session.option(w, option, &data)? {
            w.flush()?;
            return Ok(result);
        }
    }
}

impl Session<'_> {
    fn negotiated(&self, export: &Arc<Export>) -> Negotiated {
        Negotiated {
            export: Arc::clone(export),
            structured: self.structured,
            base_allocation: self.meta_for.as_deref() == Some(export.name()),
        }
    }

    fn option(&mut self, w: &mut impl Write, option: u32, data: &[u8]) -> std::io::Result<Step> {
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
            OPT_STARTTLS => error_reply(w, option, REP_ERR_POLICY, "TLS is not offered")?,
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

    fn info(&mut self, w: &mut impl Write, option: u32, data: &[u8]) -> std::io::Result<Step> {
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
