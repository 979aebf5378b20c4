//! Reading a disk from an NBD server (issue 3, part 3): `nbd://HOST[:PORT]/EXPORT` and
//! `nbd+unix:///EXPORT?socket=PATH` ([`url`]), or over TLS `nbds://` and `nbds+unix://`
//! ([`tls`]), optionally with a qemu dirty bitmap as the delta. See SPEC.md §20 "Sources:
//! NBD client".
//!
//! - [`wire`]: sockets with timeouts (TLS after STARTTLS), error kinds;
//! - [`handshake`]: fixed newstyle, structured replies (required), meta contexts, GO;
//! - [`transmission`]: checked READ and BLOCK_STATUS replies on one connection;
//! - [`pool`]: parallel connections (`connections=N`, used only when the server advertises
//!   `NBD_FLAG_CAN_MULTI_CONN`: without it proto.md promises no consistency between
//!   connections, and single-client servers such as qemu-nbd without `-e` would leave a
//!   second connection waiting for its greeting);
//! - [`block_map`]: the export's data ranges (`base:allocation`) and dirty ranges, mapped
//!   once at connect.
//!
//! Contract with the engine: [`NbdSource::read_at`] fetches only the data ranges (zero
//! extents are filled without a request, so `bytes read` counts transferred bytes) and
//! splits requests at min(maximum block size, 32 MiB). With `bitmap=NAME`, `changes()`
//! are the dirty ranges and apply on state `nbd-bitmap:NAME`; the state this backup records
//! is `nbd-bitmap:` + (`track=` or NAME).

pub mod block_map;
pub mod handshake;
pub mod pool;
pub mod tls;
pub mod transmission;
pub mod url;
pub mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sources::{normalize_extents, BlockSource, Changes, STATE_KEY};

use self::pool::Pool;
use self::tls::ClientTls;
use self::transmission::Connection;
use self::url::NbdUrl;
use self::wire::Wire;

/// Prefix of the state tokens of NBD sources: `nbd-bitmap:NAME`.
pub const STATE_PREFIX: &str = "nbd-bitmap:";

/// A disk exported by an NBD server.
pub struct NbdSource {
    url: NbdUrl,
    display: String,
    size: u64,
    min_block: u64,
    max_read: u64,
    pool: Pool,
    /// Ranges to fetch; `None` = everything.
    data: Option<Vec<(u64, u64)>>,
    changes: Option<Changes>,
}

/// Opens and negotiates one connection (over TLS when `tls` is given). A further connection (`first` false) gets at most
/// [`FURTHER_HANDSHAKE_SECS`] for its handshake: a server that limits its clients (qemu-nbd
/// `-e N`) leaves connection N+1 waiting for a greeting, and the pool then carries on with
/// the connections it has.
fn open_connection(url: &NbdUrl, tls: Option<&ClientTls>, first: bool) -> Result<Connection> {
    let mut wire = Wire::connect(url)?;
    let normal = wire::timeout();
    if !first {
        wire.set_read_timeout(normal.min(Duration::from_secs(FURTHER_HANDSHAKE_SECS)))?;
    }
    let neg = handshake::negotiate(&mut wire, &url.export, url.bitmap.as_deref(), tls)?;
    wire.set_read_timeout(normal)?;
    Ok(Connection::new(wire, neg))
}

/// Handshake time limit of connections after the first, in seconds.
pub const FURTHER_HANDSHAKE_SECS: u64 = 5;

impl NbdSource {
    /// Connects to `url` (`nbd://HOST[:PORT]/EXPORT[?bitmap=NAME&track=NAME&connections=N]`
    /// or `nbd+unix:///EXPORT?socket=PATH[&...]`, `nbds` for TLS), negotiates, and maps the
    /// export. `tls_ca` is trusted besides the system's roots when the URL asks for TLS.
    pub fn connect(url: &str, tls_ca: Option<&Path>) -> Result<Self> {
        let parsed = NbdUrl::parse(url)?;
        let display = parsed.display();
        let tls = if parsed.tls {
            Some(Arc::new(ClientTls::new(&parsed, tls_ca)?))
        } else {
            None
        };
        let mut first = open_connection(&parsed, tls.as_deref(), true)?;
        let map = block_map::map_export(&mut first, &display)?;
        let neg = first.neg.clone();
        let max = if neg.multi_conn() {
            parsed.connections
        } else {
            1
        };
        let opener_url = parsed.clone();
        let expected = neg.clone();
        let opener: pool::Opener = Box::new(move || {
            let c = open_connection(&opener_url, tls.as_deref(), false)?;
            // Context ids are per connection and may differ; only the first maps the disk.
            let same = (c.neg.size, c.neg.flags, c.neg.min_block, c.neg.max_read)
                == (
                    expected.size,
                    expected.flags,
                    expected.min_block,
                    expected.max_read,
                );
            if !same {
                return Err(Error::BadImage {
                    path: opener_url.display(),
                    format: "NBD",
                    reason: format!(
                        "a further connection saw a different export (size {} flags 0x{:04x} block sizes {}/{}; the first saw size {} flags 0x{:04x} block sizes {}/{})",
                        c.neg.size, c.neg.flags, c.neg.min_block, c.neg.max_read,
                        expected.size, expected.flags, expected.min_block, expected.max_read
                    ),
                });
            }
            Ok(c)
        });
        let changes = match (&parsed.bitmap, map.dirty) {
            (Some(name), Some(dirty)) => Some(Changes {
                base_state: format!("{STATE_PREFIX}{name}"),
                base_description: format!("dirty bitmap {name} of {display}"),
                extents: normalize_extents(dirty),
            }),
            _ => None,
        };
        Ok(Self {
            url: parsed,
            size: neg.size,
            min_block: u64::from(neg.min_block),
            max_read: u64::from(neg.max_read),
            pool: Pool::new(first, max, opener, display.clone()),
            display,
            data: map.data,
            changes,
        })
    }

    /// Reads `[from, to)` (inside `[offset, offset + buf.len())`) into its place in `buf`,
    /// in requests aligned to the minimum block size and at most `max_read` long.
    fn fetch(&self, offset: u64, buf: &mut [u8], from: u64, to: u64) -> Result<u64> {
        let mut fetched = 0;
        let mut pos = from;
        while pos < to {
            // Aligned request covering pos.
            let start = pos - pos % self.min_block;
            let mut end = (start + self.max_read).min(to);
            end = end
                .div_ceil(self.min_block)
                .saturating_mul(self.min_block)
                .min(self.size);
            if end <= pos {
                return Err(Error::InvalidArgument(format!(
                    "{}: cannot form an aligned read at offset {pos}",
                    self.display
                )));
            }
            let lo = (pos - offset) as usize;
            let hi = (end.min(to) - offset) as usize;
            let dst = buf
                .get_mut(lo..hi)
                .ok_or_else(|| Error::InvalidArgument("NBD read outside the buffer".into()))?;
            if start == pos && end <= to {
                fetched += self.pool.with(|c| c.read(start, dst))?;
            } else {
                let mut tmp = vec![0u8; (end - start) as usize];
                let n = self.pool.with(|c| c.read(start, &mut tmp))?;
                let skip = (pos - start) as usize;
                let part = tmp
                    .get(skip..skip + dst.len())
                    .ok_or_else(|| Error::InvalidArgument("NBD aligned read too short".into()))?;
                dst.copy_from_slice(part);
                fetched += n.min(dst.len() as u64);
            }
            pos = end.min(to);
        }
        Ok(fetched)
    }
}

impl BlockSource for NbdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: read of {} bytes at offset {offset} goes past the export's end ({})",
                    self.display,
                    buf.len(),
                    self.size
                ))
            })?;
        let Some(ranges) = &self.data else {
            return self.fetch(offset, buf, offset, end);
        };
        let first = ranges.partition_point(|&(_, e)| e <= offset);
        let mut fetched = 0;
        let mut filled_to = offset;
        for &(s, e) in ranges.iter().skip(first) {
            if s >= end {
                break;
            }
            let (from, to) = (s.max(offset), e.min(end));
            if let Some(gap) = buf.get_mut((filled_to - offset) as usize..(from - offset) as usize)
            {
                gap.fill(0);
            }
            fetched += self.fetch(offset, buf, from, to)?;
            filled_to = to;
        }
        if let Some(rest) = buf.get_mut((filled_to - offset) as usize..) {
            rest.fill(0);
        }
        Ok(fetched)
    }

    fn identity(&self) -> Vec<(String, String)> {
        let mut id = vec![
            ("source.kind".into(), "nbd".into()),
            ("nbd.url".into(), self.display.clone()),
            ("nbd.export".into(), self.url.export.clone()),
            ("nbd.size".into(), self.size.to_string()),
        ];
        if let Some(b) = &self.url.bitmap {
            id.push(("nbd.bitmap".into(), b.clone()));
        }
        if let Some(t) = self.url.track.as_ref().or(self.url.bitmap.as_ref()) {
            id.push((STATE_KEY.into(), format!("{STATE_PREFIX}{t}")));
        }
        id
    }

    fn changes(&self) -> Option<&Changes> {
        self.changes.as_ref()
    }
}
