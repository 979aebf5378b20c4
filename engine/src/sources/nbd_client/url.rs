//! NBD URLs, after the NBD URI convention (doc/uri.md of NetworkBlockDevice/nbd):
//!
//! - `nbd://HOST[:PORT]/EXPORT` — TCP; PORT defaults to 10809; an IPv6 HOST is bracketed
//!   (`nbd://[::1]:10809/disk`);
//! - `nbd+unix:///EXPORT?socket=PATH` — a Unix socket; the authority must be empty;
//! - `nbds://...` and `nbds+unix://...` — the same over TLS (NBD_OPT_STARTTLS, required:
//!   a server that does not offer it is refused).
//!
//! The export name is the percent-decoded path after the first `/` (empty when the path is
//! empty or `/`, which qemu-nbd serves by default). Query parameters (percent-decoded):
//! `socket=` (Unix only, required there), `bitmap=NAME`, `track=NAME`, `connections=N`
//! (1 to [`MAX_CONNECTIONS`], default [`DEFAULT_CONNECTIONS`]), and with TLS only, as
//! libnbd names them: `tls-certificates=DIR` (a directory laid out as qemu and libnbd
//! expect: `ca-cert.pem` trusted besides the system's roots, `client-cert.pem` and
//! `client-key.pem` presented to a server that asks for a client certificate) and
//! `tls-hostname=NAME` (the name the server's certificate must carry; default the host,
//! `localhost` for a Unix socket). Anything else — unknown or repeated parameters, user
//! info, TLS parameters on a plain URL — is refused: a typo must not silently turn a delta
//! backup into something else, or a TLS connection into a plain one.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Default TCP port of NBD servers.
pub const DEFAULT_PORT: u16 = 10809;
/// Parallel connections when the URL does not say.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Most parallel connections a URL may ask for.
pub const MAX_CONNECTIONS: usize = 16;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP host (name or address, without brackets) and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A parsed NBD URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUrl {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The export name (may be empty).
    pub export: String,
    /// Dirty bitmap whose set bits are this backup's changed extents.
    pub bitmap: Option<String>,
    /// Bitmap that tracks changes from the state this backup records.
    pub track: Option<String>,
    /// Parallel connections asked for.
    pub connections: usize,
    /// TLS is required (`nbds://`, `nbds+unix://`).
    pub tls: bool,
    /// `tls-certificates=DIR`: CA and client certificate in qemu's and libnbd's layout.
    pub tls_certificates: Option<PathBuf>,
    /// `tls-hostname=NAME`: the name the server's certificate must carry.
    pub tls_hostname: Option<String>,
}

fn bad(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("{url}: not a usable NBD URL: {}", reason.into()))
}

/// Decodes `%XX` escapes; refuses malformed escapes and non-UTF-8 results.
fn percent_decode(url: &str, what: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(url, format!("bad percent escape in the {what} at byte {i}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, format!("the {what} is not UTF-8 once decoded")))
}

/// The query parameters of a URL, percent-decoded, each at most once.
#[derive(Default)]
struct Query {
    socket: Option<String>,
    bitmap: Option<String>,
    track: Option<String>,
    connections: Option<String>,
    tls_certificates: Option<String>,
    tls_hostname: Option<String>,
}

impl Query {
    /// Parses `query` (of `url`, with a Unix socket or TLS as the scheme says); refuses
    /// unknown, repeated and empty parameters, and TLS parameters on a plain URL.
    fn parse(url: &str, query: &str, unix: bool, tls: bool) -> Result<Self> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(url, format!("query parameter {pair:?} has no value")))?;
            let value = percent_decode(url, key, value)?;
            let slot = match key {
                "socket" if unix => &mut q.socket,
                "bitmap" => &mut q.bitmap,
                "track" => &mut q.track,
                "connections" => &mut q.connections,
                "tls-certificates" | "tls-hostname" if !tls => {
                    return Err(bad(
                        url,
                        format!("{key}= applies to TLS only: use nbds:// or nbds+unix://"),
                    ))
                }
                "tls-certificates" => &mut q.tls_certificates,
                "tls-hostname" => &mut q.tls_hostname,
                _ => {
                    let socket = if unix { "socket, " } else { "" };
                    let tls = if tls {
                        ", tls-certificates, tls-hostname"
                    } else {
                        ""
                    };
                    return Err(bad(
                        url,
                        format!(
                            "unknown query parameter {key:?} (known: {socket}bitmap, track, connections{tls})"
                        ),
                    ));
                }
            };
            if value.is_empty() {
                let what = if matches!(key, "bitmap" | "track") {
                    "a bitmap name"
                } else {
                    "a value"
                };
                return Err(bad(url, format!("{key}= needs {what}")));
            }
            if slot.replace(value).is_some() {
                return Err(bad(url, format!("query parameter {key:?} is given twice")));
            }
        }
        Ok(q)
    }
}

impl NbdUrl {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self> {
        let schemes = [
            ("nbd://", false, false),
            ("nbd+unix://", true, false),
            ("nbds://", false, true),
            ("nbds+unix://", true, true),
        ];
        let Some((unix, tls, rest)) = schemes
            .iter()
            .find_map(|&(scheme, unix, tls)| url.strip_prefix(scheme).map(|r| (unix, tls, r)))
        else {
            return Err(bad(
                url,
                "expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH (nbds:// and nbds+unix:// for TLS)",
            ));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        if rest.contains('#') || query.contains('#') {
            return Err(bad(url, "fragments (#...) are not allowed"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let export = percent_decode(url, "export name", path)?;
        if export.len() > 4096 {
            return Err(bad(url, "export names are at most 4096 bytes"));
        }
        let q = Query::parse(url, query, unix, tls)?;
        let connections = match q.connections {
            None => DEFAULT_CONNECTIONS,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    bad(
                        url,
                        format!("connections={n} is not a number from 1 to {MAX_CONNECTIONS}"),
                    )
                })?,
        };
        let endpoint = if unix {
            if !authority.is_empty() {
                return Err(bad(
                    url,
                    "nbd+unix:// URLs have an empty host: nbd+unix:///EXPORT?socket=PATH",
                ));
            }
            let socket = q
                .socket
                .ok_or_else(|| bad(url, "nbd+unix:// needs ?socket=PATH"))?;
            Endpoint::Unix(PathBuf::from(socket))
        } else {
            parse_authority(url, authority)?
        };
        Ok(Self {
            endpoint,
            export,
            bitmap: q.bitmap,
            track: q.track,
            connections,
            tls,
            tls_certificates: q.tls_certificates.map(PathBuf::from),
            tls_hostname: q.tls_hostname,
        })
    }

    /// The URL naming the server and export only (no bitmap or other parameters), as
    /// recorded in snapshots and shown in messages.
    pub fn display(&self) -> String {
        let export = escape(&self.export);
        let s = if self.tls { "s" } else { "" };
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                format!("nbd{s}://[{host}]:{port}/{export}")
            }
            Endpoint::Tcp { host, port } => format!("nbd{s}://{host}:{port}/{export}"),
            Endpoint::Unix(path) => format!(
                "nbd{s}+unix:///{export}?socket={}",
                escape(&path.display().to_string())
            ),
        }
    }
}

/// Escapes what would change the meaning of a URL component.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            '&' => out.push_str("%26"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

fn parse_authority(url: &str, authority: &str) -> Result<Endpoint> {
    if authority.contains('@') {
        return Err(bad(
            url,
            "user names are not supported (TLS PSK users are not)",
        ));
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (host, after) = r
            .split_once(']')
            .ok_or_else(|| bad(url, "unterminated [ in an IPv6 host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad(url, format!("unexpected {p:?} after the IPv6 host")))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(
            url,
            "no host (for a Unix socket use nbd+unix:///EXPORT?socket=PATH)",
        ));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(url, format!("port {p:?} is not a number from 1 to 65535")))?,
    };
    Ok(Endpoint::Tcp {
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_urls() {
        let u = NbdUrl::parse("nbd://example.org/disk%20a").unwrap();
        assert_eq!(u.endpoint, tcp("example.org", DEFAULT_PORT));
        assert_eq!(u.export, "disk a");
        assert_eq!(u.connections, DEFAULT_CONNECTIONS);
        let u = NbdUrl::parse("nbd://[::1]:1234/?bitmap=b1&track=b2&connections=16").unwrap();
        assert_eq!(u.endpoint, tcp("::1", 1234));
        assert_eq!(u.export, "");
        assert_eq!(u.bitmap.as_deref(), Some("b1"));
        assert_eq!(u.track.as_deref(), Some("b2"));
        assert_eq!(u.connections, 16);
        assert_eq!(u.display(), "nbd://[::1]:1234/");
        assert_eq!(NbdUrl::parse("nbd://h:7").unwrap().export, "");
    }

    #[test]
    fn unix_urls() {
        let u = NbdUrl::parse("nbd+unix:///?socket=/tmp/a%20b.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/a b.sock".into()));
        assert_eq!(u.export, "");
        assert_eq!(u.display(), "nbd+unix:///?socket=/tmp/a%20b.sock");
        let u = NbdUrl::parse("nbd+unix:///vda?socket=s&connections=1").unwrap();
        assert_eq!(u.export, "vda");
        assert_eq!(u.connections, 1);
    }

    #[test]
    fn tls_urls() {
        let u = NbdUrl::parse("nbds://127.0.0.1:7/d?tls-certificates=/etc/pki/x%20y").unwrap();
        assert!(u.tls);
        assert_eq!(u.endpoint, tcp("127.0.0.1", 7));
        assert_eq!(u.tls_certificates, Some(PathBuf::from("/etc/pki/x y")));
        assert_eq!(u.tls_hostname, None);
        assert_eq!(u.display(), "nbds://127.0.0.1:7/d");
        let u = NbdUrl::parse("nbds+unix:///d?socket=/s&tls-hostname=nbd.example").unwrap();
        assert!(u.tls);
        assert_eq!(u.endpoint, Endpoint::Unix("/s".into()));
        assert_eq!(u.tls_hostname.as_deref(), Some("nbd.example"));
        assert_eq!(u.display(), "nbds+unix:///d?socket=/s");
        assert!(!NbdUrl::parse("nbd://h/x").unwrap().tls);
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "nbdx://h/x",
            "nbd://h/x?tls-certificates=/d",
            "nbd+unix:///x?socket=/s&tls-hostname=h",
            "nbds://h/x?tls-certificates=",
            "nbds://h/x?tls-verify-peer=false",
            "nbds://h/x?tls-hostname=a&tls-hostname=b",
            "nbd://h/x?bitmap=a&bitmap=b",
            "nbd://h/x?frobnicate=1",
            "nbd://h/x?socket=/s",
            "nbd://h/x?connections=0",
            "nbd://h/x?connections=17",
            "nbd://h/x?bitmap=",
            "nbd://h:99999/x",
            "nbd://h:0/x",
            "nbd:///x",
            "nbd://u@h/x",
            "nbd://[::1/x",
            "nbd://h/%zz",
            "nbd+unix:///x",
            "nbd+unix://h/x?socket=/s",
        ] {
            assert!(NbdUrl::parse(url).is_err(), "{url} was accepted");
        }
    }
}
