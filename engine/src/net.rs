//! Listening sockets for the servers (`tessera serve`, `tessera serve-nbd`).
//!
//! Why keepalive: a client whose machine loses power or whose network is cut mid-request
//! never closes its connection. Without TCP keepalive the server would wait on it forever:
//! one thread, and for `serve` one of its few request slots, lost per such client until the
//! server restarts. With keepalive the kernel probes a connection after
//! [`Keepalive::idle`] of silence and fails its pending read when the peer is gone: at once
//! when the peer's machine answers with a reset (it rebooted), else after
//! [`PROBES`] unanswered probes, [`Keepalive::idle`] / [`PROBES`] apart, i.e. about twice
//! the idle time. A peer that is alive but silent answers the probes and keeps its
//! connection (the servers bound that case in their own ways, see SPEC.md §22.3).
//!
//! The options are set on the listening socket: Linux copies them to every connection it
//! accepts, so no server has to remember to set them per connection. They do not change
//! how `accept` itself waits.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::net::sockopt;

/// Unanswered probes after which a connection is dropped.
pub const PROBES: u32 = 6;

/// The default idle time before the first probe.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// TCP keepalive for a server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (at least one second).
    pub idle: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: DEFAULT_KEEPALIVE,
        }
    }
}

impl Keepalive {
    /// Enables keepalive on `socket` (a listener: see the module documentation).
    ///
    /// # Errors
    ///
    /// When the kernel refuses one of the options.
    pub fn apply(self, socket: impl AsFd) -> std::io::Result<()> {
        let idle = self.idle.max(Duration::from_secs(1));
        let interval = (idle / PROBES).max(Duration::from_secs(1));
        sockopt::set_socket_keepalive(&socket, true)?;
        sockopt::set_tcp_keepidle(&socket, idle)?;
        sockopt::set_tcp_keepintvl(&socket, interval)?;
        sockopt::set_tcp_keepcnt(&socket, PROBES)?;
        Ok(())
    }
}

/// Binds a TCP listener on `addr` (`HOST:PORT`, port 0 for any free one) whose accepted
/// connections use `keepalive`.
///
/// # Errors
///
/// When `addr` cannot be bound or the options cannot be set.
pub fn listen_tcp(addr: &str, keepalive: Keepalive) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    keepalive.apply(&listener)?;
    Ok(listener)
}

/// This machine's host name (empty if it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether `url` (`http://HOST[:PORT]...`) names a loopback host: `localhost`, 127.0.0.0/8
/// or `::1` (so that a token or secret sent to it never leaves the machine). Used by
/// `sync`'s client and by the S3 backend for plain `http://` endpoints.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // `http://localhost:1@HOST/` connects to HOST: any userinfo is refused outright.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// The module's premise: accepted connections inherit the listener's options.
    #[test]
    fn accepted_connections_inherit_keepalive() {
        let keepalive = Keepalive {
            idle: Duration::from_secs(12),
        };
        let listener = listen_tcp("127.0.0.1:0", keepalive).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(sockopt::socket_keepalive(&accepted).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(&accepted).unwrap(),
            Duration::from_secs(12)
        );
        assert_eq!(
            sockopt::tcp_keepintvl(&accepted).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(sockopt::tcp_keepcnt(&accepted).unwrap(), PROBES);
    }
}
