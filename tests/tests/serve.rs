//! `tessera serve` and sync with `http://` URLs (push and pull, vanished clients and killed
//! pushes run over both schemes in `serve_both.rs`): requests without the right bearer token
//! get 401 and change nothing; an object whose bytes do not hash to its digest, and a
//! snapshot whose objects are not there, are refused and change nothing; stalled clients and
//! bursts of connections do not keep others out, and one address cannot take every
//! connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_format::pack::encode_record_header;
use tessera_format::{ChunkDigest, Codec, ObjectInfo, ObjectKind};
use tessera_tests::remote::Transport;
use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, pack_files, seed, token_file, token_file_named,
    verify, DataGen, ImageSpec, Out, Served,
};

const MIB: u64 = 1 << 20;

fn serve(repo: &Path, token_file: &Path) -> Served {
    Transport::Http.serve(repo, token_file, &[])
}

fn sync(src: &str, dst: &str, token_file: &Path) -> Out {
    Transport::Http.sync(src, dst, token_file)
}

/// A scratch directory with repository `a` holding one 4 MiB backup, an empty repository
/// `b` served over HTTP, and the token file (content `token`).
fn pushed_pair(test: &str, token: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Served) {
    let mut gen = DataGen::new(seed(test));
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(4 * MIB), &mut gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    let token_path = token_file(work.path(), token);
    let server = serve(&b, &token_path);
    (work, a, b, token_path, server)
}

/// One raw HTTP/1.1 request; returns the status code and body.
fn http(url: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    Transport::Http.request(url, method, path, token, body)
}

/// CRC-32C (Castagnoli), bitwise: an independent implementation for building records.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn record(digest: [u8; 32], stored: &[u8]) -> Vec<u8> {
    let info = ObjectInfo {
        kind: ObjectKind::Chunk,
        codec: Codec::None,
        digest: ChunkDigest(digest),
        raw_len: stored.len() as u32,
        stored_len: stored.len() as u32,
        stored_crc: crc32c(stored),
    };
    let mut out = encode_record_header(&info).unwrap().to_vec();
    out.extend_from_slice(stored);
    out
}

fn state(repo: &Path) -> (Vec<String>, Vec<PathBuf>) {
    (list_ids(repo), pack_files(repo))
}

#[test]
fn unauthorized_and_forged_requests_change_nothing() {
    let (work, a, b, _token, server) = pushed_pair("serve-refuse", "right-token");
    let wrong = token_file_named(work.path(), "wrong", "wrong-token");
    let before = state(&b);

    // Wrong token through the CLI: refused with 401, nothing copied.
    let out = sync(a.to_str().unwrap(), &server.url, &wrong);
    out.expect_code(1).stderr_has("401");
    assert_eq!(state(&b), before);

    // A valid object without a token, or with a wrong one: 401, not stored.
    let data = b"some chunk bytes".repeat(100);
    let good = record(Sha256::digest(&data).into(), &data);
    for t in [None, Some("wrong-token"), Some("right-token-but-longer")] {
        let (status, _) = http(&server.url, "POST", "/v1/put/chunk", t, &good);
        assert_eq!(status, 401, "token {t:?}");
        let (status, _) = http(&server.url, "GET", "/v1/snapshots", t, b"");
        assert_eq!(status, 401, "token {t:?}");
    }
    assert_eq!(state(&b), before);

    // Bytes that do not hash to the digest they are sent under: refused, nothing stored,
    // even alongside a good object in the same request.
    let mut forged = good.clone();
    forged.extend(record([7; 32], &data));
    let (status, body) = http(
        &server.url,
        "POST",
        "/v1/put/chunk",
        Some("right-token"),
        &forged,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("hashes to"), "{body}");
    assert_eq!(state(&b), before);

    // A snapshot whose objects were never sent cannot be published.
    let id = &list_ids(&a)[0];
    let snap = std::fs::read(a.join("snapshots").join(format!("{id}.snap"))).unwrap();
    let (status, body) = http(
        &server.url,
        "POST",
        "/v1/publish",
        Some("right-token"),
        &snap,
    );
    assert!(status == 422 || status == 404, "{status} {body}");
    assert_eq!(list_ids(&b), before.0);

    // A body over the limit is refused without being read.
    let (status, _) = http(
        &server.url,
        "POST",
        "/v1/have/chunk",
        Some("right-token"),
        &vec![0u8; 65_537 * 32],
    );
    assert_eq!(status, 413);

    // The good object alone is accepted; the repository still verifies.
    let (status, body) = http(
        &server.url,
        "POST",
        "/v1/put/chunk",
        Some("right-token"),
        &good,
    );
    assert_eq!(status, 200, "{body}");
    verify(&b).ok();
}

/// A client with the token cannot plant a snapshot that outranks real ones in retention
/// (SPEC §22.1): one from the future (year 9999) or one older than the series' newest is
/// refused; a genuinely newer one is accepted.
#[test]
fn forged_snapshot_times_are_refused() {
    let (_work, a, b, token_path, server) = pushed_pair("serve-forged-time", "right-token");
    sync(a.to_str().unwrap(), &server.url, &token_path).ok();
    let real = list_ids(&b);
    assert_eq!(real.len(), 1);
    let bytes = std::fs::read(a.join("snapshots").join(format!("{}.snap", real[0]))).unwrap();
    let original = tessera_format::Snapshot::decode(&bytes).unwrap();
    // (The duration differs too, so that no forgery is byte-identical to the real file.)
    let with_time = |time_us: i64| {
        let mut s = original.clone();
        s.header.time_us = time_us;
        s.header.duration_ms += 1;
        s.encode().unwrap().1
    };
    let year_9999 = 253_402_214_400_000_000;
    let day = 86_400_000_000;
    for (time_us, why) in [
        (year_9999, "ahead of this machine's clock"),
        (original.header.time_us - day, "only add snapshots newer"),
        (original.header.time_us, "only add snapshots newer"),
    ] {
        let (status, body) = http(
            &server.url,
            "POST",
            "/v1/publish",
            Some("right-token"),
            &with_time(time_us),
        );
        assert_ne!(status, 200, "time {time_us} was accepted: {body}");
        assert!(body.contains(why), "time {time_us}: {status} {body}");
        assert_eq!(list_ids(&b), real);
    }
    let (status, body) = http(
        &server.url,
        "POST",
        "/v1/publish",
        Some("right-token"),
        &with_time(original.header.time_us + 1_000_000),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(list_ids(&b).len(), 2);
    verify(&b).ok();
}

/// Clients that stop in the middle of a request body (with and without the token) hold their
/// own connections only: other clients are served meanwhile, and a push completes; the
/// server closes each stalled connection once its deadline has passed, also one that
/// trickles bytes (SPEC.md §22.3).
#[test]
fn stalled_clients_do_not_block_others() {
    let (_work, a, b, token, server) = pushed_pair("serve-stall", "t0ken");
    let addr = server.url.strip_prefix("http://").unwrap().to_string();

    // Headers promising 80 kB, then 10 bytes, then silence (the connection stays open).
    let mut stalled_body = TcpStream::connect(&addr).unwrap();
    write!(
        stalled_body,
        "POST /v1/put/chunk HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0ken\r\nContent-Length: 80000\r\n\r\n0123456789"
    )
    .unwrap();
    // The same without the token (refused with 401, but its body is never sent).
    let mut stalled_stranger = TcpStream::connect(&addr).unwrap();
    write!(
        stalled_stranger,
        "POST /v1/put/chunk HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000\r\n\r\n0123456789"
    )
    .unwrap();

    // A client without the token that trickles a request head, a byte every 2 s: never
    // silent for 30 s, but the head has 30 s in all.
    let trickler = TcpStream::connect(&addr).unwrap();
    let mut trickle = trickler.try_clone().unwrap();
    std::thread::spawn(move || {
        for b in b"POST /v1/put/chunk HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if trickle.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    });

    // Bounded waits: a blocked server must fail the test, not hang it.
    let (done, finished) = std::sync::mpsc::channel();
    let url = server.url.clone();
    let token_path = token.clone();
    let source = a.to_str().unwrap().to_string();
    std::thread::spawn(move || {
        let info = http(&url, "GET", "/v1/info", Some("t0ken"), b"");
        let pushed = sync(&source, &url, &token_path);
        let _ = done.send((info, pushed.code));
    });
    let (info, code) = finished
        .recv_timeout(std::time::Duration::from_secs(90))
        .expect("the server answered nobody while a client stalled");
    assert_eq!(info.0, 200, "{info:?}");
    assert_eq!(code, 0, "push failed");
    assert_eq!(list_ids(&a), list_ids(&b));
    verify(&b).ok();

    // None keeps its connection: the server gives up on the body 30 s + 80 kB at 8 KiB/s
    // after its head, on the refused stranger 5 s after its answer, on the trickled head 30 s
    // after the connection (the read below would wait 70 s for a server that does not).
    for mut stalled in [stalled_body, stalled_stranger, trickler] {
        let started = std::time::Instant::now();
        stalled
            .set_read_timeout(Some(std::time::Duration::from_secs(70)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = stalled.read_to_end(&mut rest);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(50),
            "a stalled connection was kept open: {closed:?}"
        );
    }
}

/// Connections that arrive together are all served: a quick request that comes in a burst
/// with others that stay open (stalled bodies) is answered at once. (`tiny_http`, which this
/// server replaced, could leave such a connection queued unanswered until another closed.)
#[test]
fn connections_arriving_in_a_burst_are_all_answered() {
    use std::time::{Duration, Instant};

    let (_work, _a, b, token, _server) = pushed_pair("serve-burst", "t0ken");
    // A fresh server each time: the first burst a server sees is the hardest for a pool.
    for trial in 0..10 {
        let server = serve(&b, &token);
        let addr = server.url.strip_prefix("http://").unwrap().to_string();
        let mut burst: Vec<TcpStream> = (0..12)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        let mut quick = burst.pop().unwrap();
        for stalled in &mut burst {
            let head = format!(
                "POST /v1/put/chunk HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0ken\r\nContent-Length: 1000000\r\n\r\n0123"
            );
            stalled.write_all(head.as_bytes()).unwrap();
        }
        let asked = Instant::now();
        write!(
            quick,
            "GET /v1/info HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0ken\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        quick
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = quick.read_to_string(&mut answer);
        // 200, or 503 when the stalled requests hold every slot: either way, an answer.
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
            "trial {trial}: no answer after {:?}: {answer:?}",
            asked.elapsed()
        );
    }
}

/// One address cannot take every connection: beyond 32 from one IP address, new connections
/// are closed at once (SPEC.md §22.3), and served again once that address holds fewer.
#[test]
fn one_address_cannot_take_every_connection() {
    use std::time::{Duration, Instant};
    use tessera_engine::sync::http::server::MAX_PER_ADDRESS;

    let (_work, _a, _b, _token, server) = pushed_pair("serve-per-address", "t0ken");
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    // The raw answer to GET /v1/info on a new connection; empty when it is closed unanswered.
    let ask = || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(
            s,
            "GET /v1/info HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0ken\r\nConnection: close\r\n\r\n"
        );
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    };
    let idle: Vec<TcpStream> = (0..MAX_PER_ADDRESS)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Until the server has counted them all, one more may still be served.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let answer = ask();
        if answer.is_empty() || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused.is_empty(),
        "connection {} from one address was served: {}",
        MAX_PER_ADDRESS + 1,
        String::from_utf8_lossy(&refused)
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ask().starts_with(b"HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "not served after the idle connections closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the hand-written HTTP/1.1 code's unit tests covered, now against hyper through the
/// binary: a head over 16 KiB or with more than 32 headers gets 431, a malformed one 400,
/// a method other than GET and POST 405 with `Allow`, a chunked body 411; each is answered
/// and the connection closed.
#[test]
fn malformed_and_oversized_heads_are_refused() {
    use std::time::Duration;

    let (_work, _a, _b, _token, server) = pushed_pair("serve-heads", "t0ken");
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    let raw = |request: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let auth = "Authorization: Bearer t0ken\r\n";
    let long = format!(
        "GET /v1/info HTTP/1.1\r\n{auth}X-Long: {}\r\n\r\n",
        "a".repeat(17 << 10)
    );
    let many = format!(
        "GET /v1/info HTTP/1.1\r\n{auth}{}\r\n",
        "X-Many: y\r\n".repeat(40)
    );
    for (request, status) in [
        (long.as_str(), "431"),
        (many.as_str(), "431"),
        ("GARBAGE\r\n\r\n", "400"),
        ("GET /v1/info HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
        (
            &format!("PUT /v1/info HTTP/1.1\r\n{auth}\r\n") as &str,
            "405",
        ),
        (
            &format!(
                "POST /v1/have/chunk HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ) as &str,
            "411",
        ),
    ] {
        let answer = raw(request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:.60?}: {answer:?}"
        );
        if status == "405" {
            assert!(
                answer.to_ascii_lowercase().contains("allow: get, post"),
                "{answer}"
            );
        }
    }
}
