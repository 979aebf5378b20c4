//! The NBD server's side of a connection, fed a client's bytes: two in-memory exports, a
//! server with or without TLS, an in-memory socket whose reads are the input and whose
//! writes are kept, then checks on what the server wrote.
//!
//! Checks (besides "no panic, no hang"):
//! - the server greets first (fixed newstyle);
//! - a server that requires TLS never names an export or tells its size in clear (the
//!   fuzzer cannot complete a TLS handshake, so nothing it sees may hold them);
//! - without TLS, every option reply is well formed and an export size it tells is one of
//!   the exports'; after an export is chosen with structured replies negotiated, every
//!   reply is a well-formed structured chunk, OFFSET_DATA and OFFSET_HOLE lie inside the
//!   export and carry exactly its bytes (zeros for holes), and BLOCK_STATUS payloads are
//!   the context id and whole extents.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::{X509NameBuilder, X509};
use tessera_engine::formats::nbd::{
    NBDMAGIC, OPT_GO, OPT_STRUCTURED_REPLY, REPLY_MAGIC, REPLY_TYPE_BLOCK_STATUS,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REP_ACK, REP_INFO, STRUCTURED_REPLY_MAGIC,
};
use tessera_engine::nbd::{Limits, MemoryExport, Server, Socket};

/// Most bytes the in-memory client takes from the server; writes past it fail as if the
/// client had hung up (this bounds the time a run of large READs takes).
pub const MAX_OUTPUT: usize = 4 << 20;

/// The exports' names: distinctive, so the TLS check can look for them.
pub const NAMES: [&str; 2] = ["fuzz-export-alpha", "fuzz-export-beta"];

/// The exports' bytes: the first of 4 blocks of 64 KiB (data, zeros, data, zeros), the
/// second of 40_000 bytes in blocks of 4 KiB, the last one partial.
pub fn export_bytes() -> [Vec<u8>; 2] {
    let mut a = vec![0u8; 256 * 1024];
    for (i, b) in a[..64 * 1024].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    a[128 * 1024 + 17] = 0x5a;
    let mut b = vec![0u8; 40_000];
    for (i, x) in b.iter_mut().enumerate().skip(8192) {
        *x = (i % 13) as u8;
    }
    [a, b]
}

fn exports() -> Vec<MemoryExport> {
    let [a, b] = export_bytes();
    vec![
        MemoryExport::new(NAMES[0], a, 64 * 1024).expect("block size"),
        MemoryExport::new(NAMES[1], b, 4096).expect("block size"),
    ]
}

/// A self-signed certificate and key made once, for the TLS server.
fn acceptor() -> &'static SslAcceptor {
    static ACCEPTOR: OnceLock<SslAcceptor> = OnceLock::new();
    ACCEPTOR.get_or_init(|| {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "localhost").expect("cn");
        let name = name.build();
        let mut cert = X509::builder().expect("cert");
        cert.set_version(2).expect("version");
        cert.set_subject_name(&name).expect("subject");
        cert.set_issuer_name(&name).expect("issuer");
        cert.set_pubkey(&key).expect("pubkey");
        cert.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("not before");
        cert.set_not_after(&Asn1Time::days_from_now(1).expect("time"))
            .expect("not after");
        cert.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = cert.build();
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_private_key(&key).expect("key");
        b.set_certificate(&cert).expect("certificate");
        b.build()
    })
}

/// The servers: plain, and requiring TLS; both with few options allowed, so the option
/// bound is reached too.
fn servers() -> &'static [Server<MemoryExport>; 2] {
    static SERVERS: OnceLock<[Server<MemoryExport>; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let limits = Limits {
            max_options: 24,
            handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let plain = Server::new(exports()).expect("server");
        let tls = Server::new(exports()).expect("server");
        [
            plain.with_limits(limits.clone()).expect("limits"),
            tls.with_limits(limits)
                .expect("limits")
                .with_tls(acceptor().clone()),
        ]
    })
}

/// An in-memory connection: reads return the client's bytes, then EOF; writes are kept.
struct Memory {
    input: io::Cursor<Vec<u8>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let room = MAX_OUTPUT - out.len();
        if room == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(room);
        out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for Memory {
    fn read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn duplicate(&self) -> io::Result<Self> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn shut(&self) {}
}

/// Serves `client` (the client's bytes) on the plain or the TLS server; returns what the
/// server wrote.
pub fn serve(client: &[u8], tls: bool) -> Vec<u8> {
    let output = Arc::new(Mutex::new(Vec::new()));
    let sock = Memory {
        input: io::Cursor::new(client.to_vec()),
        output: Arc::clone(&output),
    };
    // Failures (EOF, protocol errors, the TLS handshake) are the client's: any is fine.
    let _ = servers()[usize::from(tls)].serve_stream(sock);
    let out = output.lock().unwrap_or_else(PoisonError::into_inner);
    out.clone()
}

/// Checks what a server requiring TLS wrote to a client that cannot finish TLS.
pub fn check_tls(out: &[u8]) {
    assert!(out.starts_with(&NBDMAGIC.to_be_bytes()), "no greeting");
    for name in NAMES {
        assert!(
            !out.windows(name.len()).any(|w| w == name.as_bytes()),
            "export name {name} sent before TLS"
        );
    }
    for bytes in export_bytes() {
        let size = (bytes.len() as u64).to_be_bytes();
        assert!(
            !out.windows(8).any(|w| w == size),
            "an export size sent before TLS"
        );
    }
}

/// A big-endian reader over the server's output; `None` when it ends (the output may stop
/// anywhere: the client's bytes ran out, or the output cap was reached).
struct Out<'a>(&'a [u8]);

impl<'a> Out<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (n <= self.0.len()).then(|| {
            let (h, t) = self.0.split_at(n);
            self.0 = t;
            h
        })
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    }
}

/// Checks what the plain server wrote (see the module's list).
pub fn check_plain(out: &[u8]) {
    assert!(out.starts_with(&NBDMAGIC.to_be_bytes()), "no greeting");
    let exports = export_bytes();
    let sizes = exports.each_ref().map(|e| e.len() as u64);
    let mut o = Out(&out[18.min(out.len())..]);
    let mut structured = false;
    let mut chosen = None;
    // Option replies until an export is chosen: GO's acknowledgement (after all its
    // INFO replies) or the answer to EXPORT_NAME.
    loop {
        let Some(head) = o.take(8) else { return };
        let magic = u64::from_be_bytes(head.try_into().unwrap());
        if magic != REPLY_MAGIC {
            // The answer to EXPORT_NAME: size, flags (and maybe 124 zero bytes).
            assert!(
                sizes.contains(&magic),
                "EXPORT_NAME answered with size {magic}"
            );
            chosen = sizes.iter().position(|&s| s == magic);
            let Some(_flags) = o.u16() else { return };
            // Without NO_ZEROES the answer ends in 124 zeros; a structured reply or
            // nothing follows, and a structured reply starts with a non-zero magic.
            if o.0.len() >= 124 && o.0[..124].iter().all(|&b| b == 0) {
                o.take(124);
            }
            break;
        }
        let (Some(option), Some(kind), Some(len)) = (o.u32(), o.u32(), o.u32()) else {
            return;
        };
        assert!(len <= 64 * 1024, "option reply of {len} bytes");
        let Some(data) = o.take(len as usize) else {
            return;
        };
        if kind == REP_INFO && data.len() >= 10 && data[..2] == [0, 0] {
            let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
            assert!(sizes.contains(&size), "INFO tells size {size}");
            if option == OPT_GO {
                chosen = sizes.iter().position(|&s| s == size);
            }
        }
        if option == OPT_STRUCTURED_REPLY && kind == REP_ACK {
            structured = true;
        }
        if option == OPT_GO && kind == REP_ACK {
            assert!(
                chosen.is_some(),
                "GO acknowledged without the export's INFO"
            );
            break;
        }
        if option == OPT_GO && kind != REP_INFO {
            chosen = None;
        }
    }
    let Some(export) = chosen.map(|i| &exports[i]) else {
        return;
    };
    if structured {
        check_chunks(&mut o, export);
    }
}

/// Every reply after the handshake is a structured chunk consistent with `export`.
fn check_chunks(o: &mut Out<'_>, export: &[u8]) {
    loop {
        let (Some(magic), Some(_flags), Some(kind), Some(_cookie), Some(len)) =
            (o.u32(), o.u16(), o.u16(), o.u64(), o.u32())
        else {
            return;
        };
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "not a structured reply");
        let Some(data) = o.take(len as usize) else {
            return;
        };
        let mut d = Out(data);
        match kind {
            REPLY_TYPE_OFFSET_DATA => {
                let offset = d.u64().expect("OFFSET_DATA without offset");
                let end = offset as usize + d.0.len();
                assert!(
                    end <= export.len() && !d.0.is_empty(),
                    "data past the export"
                );
                assert_eq!(d.0, &export[offset as usize..end], "data not the export's");
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let offset = d.u64().expect("OFFSET_HOLE without offset");
                let n = d.u32().expect("OFFSET_HOLE without length") as usize;
                assert!(d.0.is_empty(), "OFFSET_HOLE too long");
                let end = offset as usize + n;
                assert!(n > 0 && end <= export.len(), "hole past the export");
                assert!(
                    export[offset as usize..end].iter().all(|&b| b == 0),
                    "hole over data"
                );
            }
            REPLY_TYPE_BLOCK_STATUS => {
                assert_eq!(d.u32(), Some(1), "block status of another context");
                assert!(!d.0.is_empty() && d.0.len() % 8 == 0, "partial extents");
            }
            _ => {}
        }
    }
}
