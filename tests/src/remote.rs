//! `tessera serve` and `tessera sync` over plain HTTP or over TLS, for the scenarios that must
//! hold both ways: a [`Transport`] starts the server (with a certificate made by the `openssl`
//! CLI for `https`), runs `sync` against it (trusting that certificate), and opens raw client
//! connections ([`Conn`]) for requests written by hand.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslStream};

use crate::{start_serve, tessera, Out, Served};

/// A self-signed certificate and its key, made by the `openssl` CLI.
#[derive(Debug, Clone)]
pub struct Cert {
    /// The certificate (PEM); also what a client passes to `--tls-ca` to trust it.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Makes a self-signed certificate `DIR/NAME.crt.pem` (key `DIR/NAME.key.pem`) with common
/// name `cn` for `subject_alt_name` (e.g. `IP:127.0.0.1,DNS:localhost`).
///
/// # Panics
///
/// When `openssl` is missing or fails.
pub fn make_cert(dir: &Path, name: &str, cn: &str, subject_alt_name: &str) -> Cert {
    let (cert, key) = (
        dir.join(format!("{name}.crt.pem")),
        dir.join(format!("{name}.key.pem")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName={subject_alt_name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (scripts/ensure-deps.sh installs it)");
    assert!(out.status.success(), "openssl req: {out:?}");
    Cert { cert, key }
}

/// A certificate for `localhost` and `127.0.0.1`, where the tests' servers listen.
pub fn localhost_cert(dir: &Path) -> Cert {
    make_cert(dir, "localhost", "localhost", "IP:127.0.0.1,DNS:localhost")
}

/// How clients reach a server: which scheme, and for `https` the certificate it serves.
pub enum Transport {
    /// `http://`.
    Http,
    /// `https://` with this certificate (for `localhost`), which clients trust.
    Https(Cert),
}

impl Transport {
    /// Plain HTTP.
    pub fn http() -> Self {
        Self::Http
    }

    /// TLS, with a `localhost` certificate made in `dir`.
    pub fn https(dir: &Path) -> Self {
        Self::Https(localhost_cert(dir))
    }

    /// `http` or `https`: the URL scheme, and the case's name in messages.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https(_) => "https",
        }
    }

    /// The certificate clients must trust, if any.
    pub fn ca(&self) -> Option<&Path> {
        match self {
            Self::Http => None,
            Self::Https(c) => Some(&c.cert),
        }
    }

    /// Starts `tessera serve REPO --token-file TOKEN MORE...` (with the certificate for
    /// `https`); asserts that the URL it prints has this scheme.
    pub fn serve(&self, repo: &Path, token_file: &Path, more: &[&str]) -> Served {
        let mut extra: Vec<&OsStr> = more.iter().map(OsStr::new).collect();
        if let Self::Https(c) = self {
            extra.extend([
                OsStr::new("--tls-cert"),
                c.cert.as_os_str(),
                OsStr::new("--tls-key"),
                c.key.as_os_str(),
            ]);
        }
        let served = start_serve(repo, token_file, &extra);
        let prefix = format!("{}://127.0.0.1:", self.scheme());
        assert!(served.url.starts_with(&prefix), "{}", served.url);
        served
    }

    /// Arguments of `tessera [--json] sync SRC DST --token-file TOKEN`, with `--tls-ca` for
    /// `https`.
    pub fn sync_args(&self, json: bool, src: &str, dst: &str, token_file: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if json {
            args.push("--json".to_string());
        }
        args.extend([
            "sync".to_string(),
            src.into(),
            dst.into(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]);
        if let Some(ca) = self.ca() {
            args.extend(["--tls-ca".into(), ca.display().to_string()]);
        }
        args
    }

    /// `tessera --json sync SRC DST --token-file TOKEN` (trusting the certificate).
    pub fn sync(&self, src: &str, dst: &str, token_file: &Path) -> Out {
        tessera(self.sync_args(true, src, dst, token_file))
    }

    /// A client connection to the server at `url`; reads time out after 30 s.
    ///
    /// # Panics
    ///
    /// When the connection or the TLS handshake fails.
    pub fn connect(&self, url: &str) -> Conn {
        self.connect_from(None, url)
    }

    /// [`Transport::connect`] from the local address `src` (any of 127.0.0.0/8 works on
    /// loopback), or the system's choice.
    ///
    /// # Panics
    ///
    /// When the connection or the TLS handshake fails.
    pub fn connect_from(&self, src: Option<IpAddr>, url: &str) -> Conn {
        let addr = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .trim_end_matches('/');
        let tcp = match src {
            Some(ip) => connect_from(ip, addr),
            None => TcpStream::connect(addr),
        }
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        match self {
            Self::Http => Conn::Plain(tcp),
            Self::Https(c) => {
                let mut builder = SslConnector::builder(SslMethod::tls()).expect("TLS client");
                builder
                    .set_ca_file(&c.cert)
                    .expect("trusting the certificate");
                let tls = builder
                    .build()
                    .connect("localhost", tcp)
                    .unwrap_or_else(|e| panic!("TLS handshake with {url}: {e}"));
                Conn::Tls(Box::new(tls))
            }
        }
    }

    /// One request with `Connection: close`, written by hand; returns the status and body.
    ///
    /// # Panics
    ///
    /// When the answer has no status line.
    pub fn request(
        &self,
        url: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        self.request_from(None, url, method, path, token, body)
    }

    /// [`Transport::request`] from the local address `src`.
    ///
    /// # Panics
    ///
    /// When the answer has no status line.
    pub fn request_from(
        &self,
        src: Option<IpAddr>,
        url: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let mut conn = self.connect_from(src, url);
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The server may answer (401, 413) and close before it has read the whole body.
        let _ = conn
            .write_all(head.as_bytes())
            .and_then(|()| conn.write_all(body));
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in the answer {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

/// A TCP connection to `addr` (`HOST:PORT`) from the local IPv4 address `src` (port chosen
/// by the system).
///
/// # Errors
///
/// When binding or connecting fails.
pub fn connect_from(src: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    };
    let to: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match (SocketAddr::new(src, 0), to) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            bind(raw, &SockaddrIn::from(from))?;
            connect(raw, &SockaddrIn::from(to))?;
        }
        (SocketAddr::V6(from), SocketAddr::V6(to)) => {
            bind(raw, &SockaddrIn6::from(from))?;
            connect(raw, &SockaddrIn6::from(to))?;
        }
        _ => return Err(std::io::Error::other("mixed address families")),
    }
    Ok(TcpStream::from(fd))
}

/// A client connection, plain or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<SslStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath (e.g. for [`crate::vanish`]).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}
