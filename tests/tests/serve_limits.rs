//! Resource bounds of `tessera serve` and the sync client (SPEC.md §22.3), through the real
//! binary: idle connections from hundreds of addresses do not keep an authorized client
//! out; a client guessing tokens is slowed and others are not; puts of tiny zstd frames
//! that claim enormous raw sizes, and a snapshot naming one page millions of times, are
//! handled within bounded time and memory (measured here); a server that accepts and never
//! answers fails the sync within its `--io-timeout` and releases the local writer lock.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tessera_engine::store::encode::encode_object;
use tessera_engine::sync::http::limiter::{FAILURE_BURST, FAILURE_REFILL};
use tessera_engine::sync::http::server::MAX_CONNECTIONS;
use tessera_format::pack::encode_record_header;
use tessera_format::snapshot::root_digest;
use tessera_format::{
    ChunkDigest, Codec, Compression, ManifestPage, ObjectKind, PageDigest, Snapshot,
};
use tessera_tests::remote::{connect_from, Transport};
use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, peak_rss, seed, start_serve, tessera, token_file,
    verify, DataGen, ImageSpec, Served,
};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 64 << 10;

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// A repository with one 4 MiB backup, served with the admin token `t0ken`.
fn served(work: &Path, gen: &mut DataGen) -> (std::path::PathBuf, Served, std::path::PathBuf) {
    let (a, b) = (work.join("a"), work.join("b"));
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = work.join("disk.img");
    make_image(&disk, ImageSpec::mixed(4 * MIB), gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    let token = token_file(work, "t0ken");
    let server = start_serve(&b, &token, &[]);
    (a, server, token)
}

/// More idle connections than the server serves at once, each from another address: the
/// oldest idle ones are evicted, so an authorized client is answered and a push completes
/// (a server that turned new connections away when full would answer nobody).
#[test]
fn idle_connections_from_many_addresses_do_not_stop_an_authorized_client() {
    let mut gen = DataGen::new(seed("serve-idle-many"));
    let work = tempfile::tempdir().unwrap();
    let (a, server, token) = served(work.path(), &mut gen);
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 44)
        .map(|i| {
            let src = ip(1 + (i / 250) as u8, (i % 250) as u8, 1);
            connect_from(src, server.addr()).unwrap()
        })
        .collect();
    let (status, body) =
        Transport::Http.request(&server.url, "GET", "/v1/info", Some("t0ken"), b"");
    assert_eq!(status, 200, "{body}");
    let pushed = Transport::Http.sync(a.to_str().unwrap(), &server.url, &token);
    pushed.ok();
    // All of this within the 30 s an idle connection may wait for its first head, so the
    // idle ones were evicted, not timed out.
    assert!(
        opened.elapsed() < Duration::from_secs(25),
        "{:?}",
        opened.elapsed()
    );
    // An evicted connection reads as closed; one still open has nothing to read yet.
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            match (&mut &**s).read(&mut [0u8; 1]) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count();
    assert!(closed >= 44, "only {closed} idle connections were evicted");
}

/// A client guessing tokens gets 429 after a burst of 401s, also for the right token (which
/// is not even looked at), until the limit refills; another address is not affected.
#[test]
fn wrong_tokens_are_rate_limited_per_address() {
    let mut gen = DataGen::new(seed("serve-401-limit"));
    let work = tempfile::tempdir().unwrap();
    let (_a, server, _token) = served(work.path(), &mut gen);
    let ask = |src: IpAddr, token: &str| {
        Transport::Http.request_from(Some(src), &server.url, "GET", "/v1/info", Some(token), b"")
    };
    let (guesser, other) = (ip(0, 0, 2), ip(0, 0, 3));
    let mut statuses = Vec::new();
    while statuses.len() < 20 && statuses.last() != Some(&429) {
        statuses.push(ask(guesser, &format!("guess-{}", statuses.len())).0);
    }
    let burst = FAILURE_BURST as usize;
    assert!(statuses[..burst].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        statuses.len() <= burst + 2 && statuses.last() == Some(&429),
        "a guesser was not slowed: {statuses:?}"
    );
    let (status, body) = ask(guesser, "t0ken");
    assert_eq!(
        status, 429,
        "the right token from a locked-out address: {body}"
    );
    assert!(body.contains("try again in"), "{body}");
    assert_eq!(ask(other, "t0ken").0, 200, "another address is not slowed");
    assert_eq!(ask(other, "wrong").0, 401);
    std::thread::sleep(FAILURE_REFILL + Duration::from_millis(300));
    assert_eq!(ask(guesser, "t0ken").0, 200, "the limit refills");
}

/// One record of `raw` (zstd) claiming `kind` and the digest of `raw`.
fn record(kind: ObjectKind, raw: &[u8]) -> Vec<u8> {
    let digest = match kind {
        ObjectKind::Chunk => ChunkDigest::of(raw),
        ObjectKind::Page => ChunkDigest(PageDigest::of(raw).0),
    };
    let zstd = Compression {
        codec: Codec::Zstd,
        level: 19,
    };
    let (info, stored) = encode_object(
        &tessera_engine::crypto::RepoCrypto::plain(),
        kind,
        digest,
        raw,
        zstd,
    )
    .unwrap();
    assert_eq!(info.codec, Codec::Zstd);
    let mut out = encode_record_header(&info).unwrap().to_vec();
    out.extend_from_slice(&stored);
    out
}

/// Sends `body` as a put of `kind`; returns status, body and how long the answer took.
fn timed_put(server: &Served, kind: &str, body: &[u8]) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, answer) = Transport::Http.request(
        &server.url,
        "POST",
        &format!("/v1/put/{kind}"),
        Some("t0ken"),
        body,
    );
    (status, answer, started.elapsed())
}

/// 8 MiB of one byte compresses to a few hundred bytes: 20 000 such chunk records fit a
/// 10 MiB put and claim 160 GiB of raw bytes, which would take minutes to decompress and
/// hash. Pages of 8 MiB (no page is over 2 MiB) would be kept decoded. Both are refused
/// before decoding, quickly and in bounded memory.
#[test]
fn inflating_puts_are_refused_in_bounded_time_and_memory() {
    let mut gen = DataGen::new(seed("serve-inflate"));
    let work = tempfile::tempdir().unwrap();
    let (_a, server, _token) = served(work.path(), &mut gen);
    let bomb = vec![0xA5u8; 8 << 20];
    let chunk = record(ObjectKind::Chunk, &bomb);
    assert!(chunk.len() < 1024, "{}", chunk.len());
    let body = chunk.repeat(20_000);
    let (status, answer, took) = timed_put(&server, "chunk", &body);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("decode to"), "{answer}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let page = record(ObjectKind::Page, &bomb);
    let (status, answer, took) = timed_put(&server, "page", &page.repeat(30));
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains("more than the 2097164 any page has"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let rss = peak_rss(server.pid());
    assert!(rss < 1 << 30, "the server peaked at {} MiB", rss >> 20);
    let b = work.path().join("b");
    assert!(list_ids(&b).is_empty());
    verify(&b).ok();
}

/// A snapshot whose disk names one page two million times (a 64 MiB file, a 64 TiB disk):
/// publishing it reads and counts the page once. With the page stored it is a valid snapshot (of a huge
/// disk of identical blocks) and is published; with a page that is not there it is refused.
/// Either way within bounded time and memory.
#[test]
fn a_snapshot_naming_one_page_millions_of_times_is_bounded() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    init_repo(&a, &["--block-size", "64K"]);
    init_repo(&b, &["--block-size", "64K"]);
    let token = token_file(work.path(), "t0ken");
    let server = start_serve(&b, &token, &[]);
    // One full page of identical blocks: 512 × 64 KiB of one byte.
    let disk = work.path().join("disk.img");
    std::fs::write(&disk, vec![0x3Cu8; 512 * BLOCK]).unwrap();
    backup_json(&a, "vm", &[("d0", &disk)]);
    Transport::Http
        .sync(a.to_str().unwrap(), &server.url, &token)
        .ok();
    let id = list_ids(&b)[0].clone();
    let original =
        Snapshot::decode(&std::fs::read(b.join("snapshots").join(format!("{id}.snap"))).unwrap())
            .unwrap();
    assert_eq!(original.roots[0].len(), 1);
    assert_eq!(original.header.disks[0].page_entries, 512);
    let times = 2_000_000u32;
    let huge = |page: PageDigest, later_us: i64| {
        let mut s = original.clone();
        s.header.time_us += later_us;
        let d = &mut s.header.disks[0];
        d.size = u64::from(times) * 512 * BLOCK as u64;
        d.page_count = times;
        s.roots[0] = vec![page; times as usize];
        d.root_digest = root_digest(&s.roots[0]);
        s.encode().unwrap().1
    };
    let publish = |bytes: &[u8]| {
        let started = Instant::now();
        let (status, body) =
            Transport::Http.request(&server.url, "POST", "/v1/publish", Some("t0ken"), bytes);
        (status, body, started.elapsed())
    };
    let missing = PageDigest::of(&ManifestPage { digests: vec![] }.encode().unwrap());
    let (status, body, took) = publish(&huge(missing, 1_000_000));
    assert_eq!(status, 422, "{body}");
    assert!(took < Duration::from_secs(50), "took {took:?}");
    assert_eq!(list_ids(&b), std::slice::from_ref(&id));

    let (status, body, took) = publish(&huge(original.roots[0][0], 2_000_000));
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(50), "took {took:?}");
    assert_eq!(list_ids(&b).len(), 2);
    let rss = peak_rss(server.pid());
    assert!(rss < 1 << 30, "the server peaked at {} MiB", rss >> 20);
}

/// A "server" that accepts connections and never answers: a pull fails within its
/// `--io-timeout`, saying the server stalled, and releases the local writer lock; a push
/// fails the same way.
#[test]
fn a_stalled_server_fails_the_sync_within_its_timeout() {
    let mut gen = DataGen::new(seed("serve-stalled-server"));
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("local");
    init_repo(&local, &[]);
    let token = token_file(work.path(), "t0ken");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(100));
        drop(held);
    });
    let sync = |src: &str, dst: &str| {
        let started = Instant::now();
        let out = tessera([
            "sync",
            src,
            dst,
            "--token-file",
            token.to_str().unwrap(),
            "--io-timeout",
            "2",
        ]);
        (out, started.elapsed())
    };
    let (pull, took) = sync(&url, local.to_str().unwrap());
    pull.expect_code(1).stderr_has("stalled");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The writer lock is free again: a backup goes through.
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(MIB), &mut gen);
    backup_json(&local, "vm", &[("d0", &disk)]);
    let (push, took) = sync(local.to_str().unwrap(), &url);
    push.expect_code(1).stderr_has("stalled");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
