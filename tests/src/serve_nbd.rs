//! `tessera serve-nbd` from tests: a server process ([`NbdServer`], on a free loopback port
//! or a Unix socket, killed on drop) and a hand-written NBD client ([`raw`]) for the
//! messages no real client sends (malformed, stalled, flooding, refusing TLS).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::{tessera_cmd, Value};

/// A running `tessera serve-nbd`, killed on drop.
pub struct NbdServer {
    child: Child,
    /// TCP port, if serving TCP.
    pub port: Option<u16>,
    /// The `--json` document it printed.
    pub info: Value,
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NbdServer {
    /// Starts `tessera --json serve-nbd REPO SPEC EXTRA...` and reads its announcement.
    ///
    /// # Panics
    ///
    /// When the server exits before announcing itself (with its stderr).
    pub fn spawn(repo: &Path, spec: &str, extra: &[String]) -> Self {
        let mut args = vec![
            "--json".to_string(),
            "serve-nbd".into(),
            repo.display().to_string(),
            spec.into(),
        ];
        args.extend_from_slice(extra);
        let mut server = Self {
            child: tessera_cmd(&args).spawn().expect("spawning serve-nbd"),
            port: None,
            info: Value::Null,
        };
        let mut out = BufReader::new(server.child.stdout.take().expect("stdout"));
        let mut doc = String::new();
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("reading serve-nbd output");
            if n == 0 {
                let mut err = String::new();
                let _ = server
                    .child
                    .stderr
                    .take()
                    .expect("stderr")
                    .read_to_string(&mut err);
                panic!("serve-nbd {args:?} exited early: {doc}\n{err}");
            }
            doc.push_str(&line);
            if let Ok(info) = serde_json::from_str::<Value>(&doc) {
                assert_eq!(info["ok"], true, "{doc}");
                server.port = info["listen"]
                    .as_str()
                    .and_then(|l| l.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok());
                server.info = info;
                return server;
            }
        }
    }

    /// Serves `spec` of `repo` on a free port of 127.0.0.1, with `extra` arguments.
    pub fn tcp(repo: &Path, spec: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--listen".to_string(), "127.0.0.1:0".into()];
        args.extend(extra.iter().map(ToString::to_string));
        let s = Self::spawn(repo, spec, &args);
        assert!(s.port.is_some(), "no TCP port in {}", s.info);
        s
    }

    /// Serves `spec` of `repo` on the Unix socket `socket`.
    pub fn unix(repo: &Path, spec: &str, socket: &Path) -> Self {
        Self::spawn(
            repo,
            spec,
            &["--socket".into(), socket.display().to_string()],
        )
    }

    /// The port it listens on.
    ///
    /// # Panics
    ///
    /// For a Unix-socket server.
    pub fn port(&self) -> u16 {
        self.port.expect("a TCP server")
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port())
    }

    /// `nbds://127.0.0.1:PORT/EXPORT`.
    pub fn tls_uri(&self, export: &str) -> String {
        format!("nbds://127.0.0.1:{}/{export}", self.port())
    }

    /// A new TCP connection to it, with a 20 s read timeout.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port())).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

/// A hand-written NBD client over any byte stream: just enough of proto.md to send what
/// the tests need and check what comes back. Every helper panics on a mismatch.
pub mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// `IHAVEOPT`.
    pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
    /// Option reply magic.
    pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    /// `NBD_OPT_EXPORT_NAME`.
    pub const OPT_EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_LIST`.
    pub const OPT_LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const OPT_STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const OPT_INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const OPT_GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const OPT_STRUCTURED_REPLY: u32 = 8;
    /// `NBD_REP_ACK`.
    pub const REP_ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const REP_SERVER: u32 = 2;
    /// `NBD_REP_ERR_UNSUP`.
    pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;
    /// Request magic.
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    /// Simple reply magic.
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    /// `EPERM`.
    pub const EPERM: u32 = 1;
    /// `EINVAL`.
    pub const EINVAL: u32 = 22;

    /// Reads exactly `N` bytes.
    pub fn rd<const N: usize>(s: &mut impl Read) -> [u8; N] {
        let mut b = [0u8; N];
        s.read_exact(&mut b).expect("reading from the server");
        b
    }

    /// Reads the greeting and sends fixed-newstyle + no-zeroes client flags.
    pub fn greet<S: Read + Write>(s: &mut S) {
        let hello: [u8; 18] = rd(s);
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(hello[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]) & 3, 3);
        s.write_all(&3u32.to_be_bytes()).unwrap();
    }

    /// Sends option `opt` announcing `len` bytes of payload, followed by `data`.
    pub fn send_option(s: &mut impl Write, opt: u32, len: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
        s.write_all(&b).unwrap();
    }

    /// One option reply: (type, data).
    pub fn option_reply(s: &mut impl Read, opt: u32) -> (u32, Vec<u8>) {
        let h: [u8; 20] = rd(s);
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        (kind, data)
    }

    /// The payload of an INFO or GO for export `name`, asking for nothing in particular.
    pub fn export_request(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    /// GO to `name`; returns the final reply type (ACK, or an error).
    pub fn go<S: Read + Write>(s: &mut S, name: &str) -> u32 {
        let d = export_request(name);
        send_option(s, OPT_GO, d.len() as u32, &d);
        loop {
            let (kind, _) = option_reply(s, OPT_GO);
            if kind == REP_ACK || kind & (1 << 31) != 0 {
                return kind;
            }
        }
    }

    /// Sends a request header.
    pub fn request(s: &mut impl Write, magic: u32, cmd: u16, cookie: u64, offset: u64, len: u32) {
        let mut b = magic.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        s.write_all(&b).unwrap();
    }

    /// A simple reply's error code, checking the cookie.
    pub fn simple_reply(s: &mut impl Read, cookie: u64) -> u32 {
        let h: [u8; 16] = rd(s);
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        assert_eq!(u64::from_be_bytes(h[8..].try_into().unwrap()), cookie);
        u32::from_be_bytes(h[4..8].try_into().unwrap())
    }

    /// READ `len` bytes at `offset` with simple replies.
    pub fn read_range<S: Read + Write>(s: &mut S, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        request(s, REQUEST_MAGIC, 0, cookie, offset, len);
        assert_eq!(simple_reply(s, cookie), 0, "read {offset}+{len} failed");
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        data
    }

    /// The server closed the connection: EOF (or a reset) on read within 5 s, with no
    /// byte before it.
    pub fn assert_closed(s: &mut TcpStream) {
        assert_closed_within(s, Duration::from_secs(5));
    }

    /// Like [`assert_closed`], waiting at most `limit`; returns how long it took.
    pub fn assert_closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
        let start = Instant::now();
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the connection closed, got {n} bytes: {:?}",
                &b[..n.min(64)]
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the server kept the connection open for {limit:?}"
            ),
        }
        start.elapsed()
    }
}
