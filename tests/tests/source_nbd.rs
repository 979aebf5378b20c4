//! Backing up disks from NBD servers (`nbd://`, `nbd+unix://` sources; SPEC.md §22).
//!
//! Real servers: `qemu-nbd` (raw and qcow2 images, Unix socket and TCP, dirty bitmaps) and
//! `nbdkit` (memory plugin filled through `qemu-io`). Every backup is restored and compared
//! byte for byte with the image (or `qemu-img convert -O raw` of it). Dirty bitmaps are
//! compared with the ranges written, rounded to the bitmap granularity. Hostile servers are
//! written here (a thread on a loopback listener) and must give clear errors, never a hang.
//!
//! Servers listen on Unix sockets in a tempdir or on free loopback ports, and are killed
//! when their guard drops.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_engine::sources::{open_source, BlockSource, SourceSpec, STATE_KEY};
use tessera_tests::qemu::{convert_to_raw, qemu_img, qemu_io};
use tessera_tests::{
    assert_same_file, init_repo, list_ids, make_image, restore, seed, tessera, tessera_cmd,
    wait_until, DataGen, ImageSpec, Out, Value,
};

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// A server process, killed on drop.
struct Server {
    child: Option<Child>,
    /// The URL of its (default) export.
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a server should listen.
enum Listen<'a> {
    Unix(&'a Path),
    /// A loopback address: `127.0.0.1` or `::1`.
    Tcp(&'a str),
}

/// A free TCP port on loopback address `host` (bound, then released for the server).
fn free_port(host: &str) -> u16 {
    let l = TcpListener::bind((host, 0)).expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

/// Starts `program args`, then waits until `ready` holds (the server accepts).
fn spawn_server(program: &str, args: &[String], url: String, ready: impl Fn() -> bool) -> Server {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e} (run scripts/ensure-deps.sh)"));
    let mut server = Server {
        child: Some(child),
        url,
    };
    let up = wait_until(Duration::from_secs(20), || {
        ready()
            || server
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    });
    assert!(up && ready(), "{program} {args:?} did not come up");
    server
}

/// `qemu-nbd -r -t -f FORMAT [extra] IMAGE` listening as `listen` says. Without `-e N`
/// qemu-nbd serves one client at a time and does not offer multi-conn, so tessera must
/// use a single connection (otherwise its second connection would wait forever).
fn qemu_nbd(image: &Path, format: &str, listen: &Listen<'_>, extra: &[&str]) -> Server {
    let mut args: Vec<String> = ["-r", "-t", "-f", format]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(extra.iter().map(ToString::to_string));
    match listen {
        Listen::Unix(sock) => {
            args.extend(["-k".into(), sock.display().to_string()]);
            args.push(image.display().to_string());
            let sock = sock.to_path_buf();
            let url = format!("nbd+unix:///?socket={}", sock.display());
            spawn_server("qemu-nbd", &args, url, move || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            })
        }
        Listen::Tcp(host) => {
            let port = free_port(host);
            args.extend(["-b".into(), (*host).into(), "-p".into(), port.to_string()]);
            args.push(image.display().to_string());
            let url = if host.contains(':') {
                format!("nbd://[{host}]:{port}/")
            } else {
                format!("nbd://{host}:{port}/")
            };
            let host = host.to_string();
            spawn_server("qemu-nbd", &args, url, move || {
                TcpStream::connect((host.as_str(), port)).is_ok()
            })
        }
    }
}

/// `nbdkit -f -U SOCK --exit-with-parent PLUGIN ARGS...`.
fn nbdkit(sock: &Path, plugin_args: &[&str]) -> Server {
    let mut args: Vec<String> = vec![
        "-f".into(),
        "-U".into(),
        sock.display().to_string(),
        "--exit-with-parent".into(),
    ];
    args.extend(plugin_args.iter().map(ToString::to_string));
    let sock2 = sock.to_path_buf();
    spawn_server(
        "nbdkit",
        &args,
        format!("nbd+unix:///?socket={}", sock.display()),
        move || std::os::unix::net::UnixStream::connect(&sock2).is_ok(),
    )
}

// ---------------------------------------------------------------------------------------
// Backups through the CLI
// ---------------------------------------------------------------------------------------

fn backup_url(repo: &Path, url: &str, extra: &[&str]) -> Out {
    let mut args: Vec<String> = vec![
        "--json".into(),
        "backup".into(),
        repo.display().to_string(),
        "--series".into(),
        "s".into(),
        format!("disk={url}"),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    tessera(args)
}

/// Backs up `url`, restores the snapshot and compares it with `expected`; returns the
/// disk's JSON.
fn backup_and_compare(repo: &Path, url: &str, expected: &Path, scratch: &Path) -> Value {
    let out = backup_url(repo, url, &[]);
    out.ok();
    let v = out.json();
    let restored = scratch.join("restored.raw");
    let _ = std::fs::remove_file(&restored);
    restore(
        repo,
        v["snapshot"].as_str().expect("snapshot id"),
        &restored,
        false,
    )
    .ok();
    assert_same_file(expected, &restored);
    std::fs::remove_file(&restored).expect("removing restored file");
    v["disks"][0].clone()
}

fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    repo
}

// ---------------------------------------------------------------------------------------
// 1. Full reads
// ---------------------------------------------------------------------------------------

#[test]
fn sparse_raw_image_over_unix_socket_restores_identically_and_skips_holes() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("disk.raw");
    let mut gen = DataGen::new(seed("nbd-raw-unix"));
    let spec = ImageSpec {
        sparse: true,
        weights: (6, 2, 2),
        ..ImageSpec::mixed(24 * MIB + 4096)
    };
    make_image(&img, spec, &mut gen);
    let server = qemu_nbd(&img, "raw", &Listen::Unix(&dir.path().join("s.sock")), &[]);
    let repo = new_repo(dir.path());
    let disk = backup_and_compare(&repo, &server.url, &img, dir.path());
    assert_eq!(disk["size"], spec.size);
    let read = disk["bytes_read"].as_u64().unwrap();
    let allocated = tessera_tests::allocated_bytes(&img);
    assert!(
        read <= allocated + MIB && read < spec.size * 3 / 4,
        "bytes_read {read} for an image of {} with {allocated} allocated: holes were read",
        spec.size
    );
}

#[test]
fn raw_image_over_tcp_with_two_connections_restores_identically() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("disk.raw");
    make_image(
        &img,
        ImageSpec::mixed(20 * MIB),
        &mut DataGen::new(seed("nbd-raw-tcp")),
    );
    // -e 4: qemu-nbd then serves 4 clients at once and offers multi-conn.
    let server = qemu_nbd(&img, "raw", &Listen::Tcp("127.0.0.1"), &["-e", "4"]);
    let repo = new_repo(dir.path());
    let url = format!("{}?connections=2", server.url);
    let disk = backup_and_compare(&repo, &url, &img, dir.path());
    assert_eq!(disk["size"], 20 * MIB);
}

#[test]
fn ipv6_loopback_url_with_brackets_restores_identically() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("disk.raw");
    make_image(
        &img,
        ImageSpec::mixed(4 * MIB),
        &mut DataGen::new(seed("nbd-ipv6")),
    );
    let server = qemu_nbd(&img, "raw", &Listen::Tcp("::1"), &[]);
    assert!(server.url.starts_with("nbd://[::1]:"), "{}", server.url);
    let repo = new_repo(dir.path());
    backup_and_compare(&repo, &server.url, &img, dir.path());
}

#[test]
fn qcow2_image_restores_like_qemu_img_convert() {
    let dir = TempDir::new().unwrap();
    let raw = dir.path().join("src.raw");
    let spec = ImageSpec {
        sparse: true,
        ..ImageSpec::mixed(16 * MIB)
    };
    make_image(&raw, spec, &mut DataGen::new(seed("nbd-qcow2")));
    let img = dir.path().join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path(&raw),
        path(&img),
    ]);
    qemu_io("qcow2", &img, "write -P 0x5a 3M 300k");
    let expected = dir.path().join("expected.raw");
    convert_to_raw(&img, "qcow2", &expected);
    let server = qemu_nbd(
        &img,
        "qcow2",
        &Listen::Unix(&dir.path().join("q.sock")),
        &[],
    );
    let repo = new_repo(dir.path());
    backup_and_compare(&repo, &server.url, &expected, dir.path());
}

#[test]
fn nbdkit_memory_disk_written_through_qemu_io_restores_identically() {
    let dir = TempDir::new().unwrap();
    let sock = dir.path().join("k.sock");
    let server = nbdkit(&sock, &["memory", "64M"]);
    let expected = dir.path().join("expected.raw");
    std::fs::File::create(&expected)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("creating expected image");
    let writes = [
        "write -P 0x11 0 1M",
        "write -P 0x22 5M 64k",
        "write -P 0x33 33M 3M",
        "write -P 0x44 67104768 4k",
    ];
    for w in writes {
        qemu_io("raw", Path::new(&server.url), w);
        qemu_io("raw", &expected, w);
    }
    let repo = new_repo(dir.path());
    let disk = backup_and_compare(&repo, &server.url, &expected, dir.path());
    assert_eq!(disk["size"], 64 * MIB);
    // nbdkit's memory plugin reports unwritten space as holes: only what was written
    // (rounded to its 32 KiB pages) comes over the wire.
    let read = disk["bytes_read"].as_u64().unwrap();
    assert!(
        read < 8 * MIB,
        "bytes_read {read}: unwritten space was read"
    );
}

#[test]
fn a_snapshot_served_by_tessera_serve_nbd_backs_up_identically() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("disk.raw");
    let spec = ImageSpec {
        sparse: true,
        weights: (5, 3, 2),
        ..ImageSpec::mixed(12 * MIB)
    };
    make_image(&img, spec, &mut DataGen::new(seed("nbd-own-server")));
    let first = dir.path().join("first");
    init_repo(&first, &[]);
    tessera_tests::backup_json(&first, "s", &[("vda", &img)]);
    let sock = dir.path().join("serve.sock");
    let args: Vec<String> = vec![
        "serve-nbd".into(),
        first.display().to_string(),
        "latest".into(),
        "--socket".into(),
        sock.display().to_string(),
    ];
    let probe = sock.clone();
    let server = spawn_server(
        tessera_tests::tessera_bin().to_str().expect("UTF-8 path"),
        &args,
        format!("nbd+unix:///vda?socket={}", sock.display()),
        move || std::os::unix::net::UnixStream::connect(&probe).is_ok(),
    );
    let second = new_repo(dir.path());
    let disk = backup_and_compare(&second, &server.url, &img, dir.path());
    // Zero blocks are HOLE|ZERO in serve-nbd's block status: never fetched.
    let zero_bytes = disk["zero_blocks"].as_u64().unwrap() * 64 * 1024;
    let read = disk["bytes_read"].as_u64().unwrap();
    assert!(zero_bytes > 0 && read <= spec.size - zero_bytes, "{disk}");
}

#[test]
fn minimum_and_maximum_block_sizes_are_honoured() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("disk.raw");
    make_image(
        &img,
        ImageSpec::mixed(6 * MIB),
        &mut DataGen::new(seed("nbd-blocksize")),
    );
    let sock = dir.path().join("bs.sock");
    // The policy filter announces 4 KiB / 64 KiB and fails every request breaking them.
    let server = nbdkit(
        &sock,
        &[
            "-r",
            "--filter=blocksize-policy",
            "file",
            path(&img),
            "blocksize-minimum=4096",
            "blocksize-preferred=4096",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
    );
    // Unaligned reads through the engine API, as a delta's unaligned extents would ask.
    let src = open_url(&server.url);
    let want = std::fs::read(&img).expect("reading the image");
    for (offset, len) in [(1, 10), (4095, 2), (70_000, 200_000), (6 * MIB - 5, 5)] {
        let mut buf = vec![0u8; len];
        src.read_at(offset, &mut buf)
            .unwrap_or_else(|e| panic!("reading {len} bytes at {offset}: {e}"));
        let at = offset as usize;
        assert!(buf == want[at..at + len], "bytes at {offset}+{len} differ");
    }
    drop(src);
    // A full backup splits its 8 MiB batches into 64 KiB requests.
    let repo = new_repo(dir.path());
    backup_and_compare(&repo, &server.url, &img, dir.path());
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// 2. Dirty bitmaps
// ---------------------------------------------------------------------------------------

/// Expected dirty ranges: each write rounded out to `granularity`, merged.
fn rounded(writes: &[(u64, u64)], granularity: u64) -> Vec<(u64, u64)> {
    let ranges = writes
        .iter()
        .map(|&(o, l)| {
            (
                o / granularity * granularity,
                (o + l).div_ceil(granularity) * granularity,
            )
        })
        .collect();
    tessera_engine::sources::normalize_extents(ranges)
}

fn open_url(url: &str) -> Box<dyn BlockSource> {
    open_source(&SourceSpec {
        location: url.to_string(),
        format: tessera_engine::sources::SourceFormat::Auto,
        changes: None,
        allow_backing_dirs: Vec::new(),
        tls_ca: None,
    })
    .unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

fn state_of(source: &dyn BlockSource) -> Option<String> {
    source
        .identity()
        .into_iter()
        .find(|(k, _)| k == STATE_KEY)
        .map(|(_, v)| v)
}

#[test]
fn dirty_bitmap_changes_are_the_written_ranges_rounded_to_the_granularity() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&img), "32M"]);
    qemu_io("qcow2", &img, "write -P 0x01 0 32M");
    qemu_img(&["bitmap", "--add", path(&img), "b1"]);
    let sock = dir.path().join("b.sock");

    // Full read, recording that b1 tracks changes from here.
    {
        let server = qemu_nbd(&img, "qcow2", &Listen::Unix(&sock), &[]);
        let src = open_url(&format!("{}&track=b1", server.url));
        assert!(src.changes().is_none(), "no bitmap= means a full read");
        assert_eq!(state_of(src.as_ref()).as_deref(), Some("nbd-bitmap:b1"));
    }
    let writes = [
        (100 * 1024, 10 * 1024),
        (5 * MIB, 200 * 1024),
        (20 * MIB - 1, 2),
        (31 * MIB, MIB),
    ];
    for &(o, l) in &writes {
        qemu_io("qcow2", &img, &format!("write -P 0x7e {o} {l}"));
    }
    let server = qemu_nbd(&img, "qcow2", &Listen::Unix(&sock), &["--bitmap", "b1"]);
    let src = open_url(&format!("{}&bitmap=b1&track=b2", server.url));
    let changes = src.changes().expect("a bitmap source carries changes");
    assert_eq!(changes.base_state, "nbd-bitmap:b1");
    assert_eq!(changes.extents, rounded(&writes, 64 * 1024));
    assert_eq!(state_of(src.as_ref()).as_deref(), Some("nbd-bitmap:b2"));
    let id = src.identity();
    assert!(id.contains(&("nbd.export".into(), String::new())), "{id:?}");
    assert!(
        id.contains(&("nbd.size".into(), (32 * MIB).to_string())),
        "{id:?}"
    );
    // Reads inside the changed extents return the new bytes.
    let mut buf = vec![0u8; 200 * 1024];
    src.read_at(5 * MIB, &mut buf)
        .expect("reading a changed extent");
    assert!(buf.iter().all(|&b| b == 0x7e));
    // qemu-nbd without -e serves one client at a time: disconnect first.
    drop(src);
    // Without track=, the state recorded is the bitmap itself.
    let src = open_url(&format!("{}&bitmap=b1", server.url));
    assert_eq!(state_of(src.as_ref()).as_deref(), Some("nbd-bitmap:b1"));
}

// ---------------------------------------------------------------------------------------
// 3. Errors
// ---------------------------------------------------------------------------------------

/// Runs a backup of `url` that must fail within `limit`; returns its output. Nothing may
/// be stored.
fn failing_backup(repo: &Path, url: &str, timeout_secs: &str, limit: Duration) -> Out {
    let args = vec![
        "backup".to_string(),
        repo.display().to_string(),
        "--series".into(),
        "s".into(),
        format!("disk={url}"),
    ];
    let started = Instant::now();
    let mut child = tessera_cmd(&args)
        .env("TESSERA_NBD_TIMEOUT_SECS", timeout_secs)
        .spawn()
        .expect("starting tessera");
    let done = wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if !done {
        let _ = child.kill();
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tessera_tests::finish_child(child, &arg_refs);
    assert!(
        done,
        "backup of {url} hung for {:?}: {out}",
        started.elapsed()
    );
    assert_ne!(out.code, 0, "backup of {url} succeeded: {out}");
    assert!(
        list_ids(repo).is_empty(),
        "a failed backup stored a snapshot: {out}"
    );
    out
}

#[test]
fn server_not_running_is_a_clear_error_naming_the_url() {
    let dir = TempDir::new().unwrap();
    let repo = new_repo(dir.path());
    let sock = dir.path().join("nobody.sock");
    let url = format!("nbd+unix:///?socket={}", sock.display());
    failing_backup(&repo, &url, "5", Duration::from_secs(30))
        .stderr_has(&url)
        .stderr_has("connecting to socket");
    let port = free_port("127.0.0.1");
    let url = format!("nbd://127.0.0.1:{port}/x");
    failing_backup(&repo, &url, "5", Duration::from_secs(30))
        .stderr_has(&url)
        .stderr_has("refused");
}

#[test]
fn wrong_export_name_and_missing_bitmap_are_refused_clearly() {
    let dir = TempDir::new().unwrap();
    let img = dir.path().join("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&img), "4M"]);
    qemu_img(&["bitmap", "--add", path(&img), "b1"]);
    let sock = dir.path().join("e.sock");
    let server = qemu_nbd(&img, "qcow2", &Listen::Unix(&sock), &["-x", "vda"]);
    let repo = new_repo(dir.path());
    let wrong = format!("nbd+unix:///vdb?socket={}", sock.display());
    failing_backup(&repo, &wrong, "5", Duration::from_secs(30))
        .stderr_has("no export named \"vdb\"");
    // The bitmap exists in the image but the server was not told to export it.
    let url = format!("nbd+unix:///vda?socket={}&bitmap=b1", sock.display());
    failing_backup(&repo, &url, "5", Duration::from_secs(30))
        .stderr_has("server does not export dirty bitmap b1")
        .stderr_has("qemu-nbd --bitmap b1");
    // Unknown URL parameters are refused before connecting.
    let url = format!("nbd+unix:///vda?socket={}&bitmpa=b1", sock.display());
    failing_backup(&repo, &url, "5", Duration::from_secs(30))
        .stderr_has("unknown query parameter \"bitmpa\"");
    drop(server);
}

#[path = "source_nbd/fake_server.rs"]
mod fake_server;
use fake_server::{fake_byte, fake_server, Misbehave, FAKE_SIZE};

#[test]
fn several_connections_are_used_only_when_the_server_offers_multi_conn() {
    let dir = TempDir::new().unwrap();
    let repo = new_repo(dir.path());
    let expected = dir.path().join("expected.raw");
    let bytes: Vec<u8> = (0..FAKE_SIZE).map(fake_byte).collect();
    std::fs::write(&expected, bytes).expect("writing the expected disk");
    for multi_conn in [false, true] {
        let (url, stats) = fake_server(Misbehave::Honest {
            multi_conn,
            block_status: false,
        });
        let disk = backup_and_compare(
            &repo,
            &format!("{url}?connections=3"),
            &expected,
            dir.path(),
        );
        // Holes came as OFFSET_HOLE chunks: only 3 of every 4 MiB were transferred.
        assert_eq!(disk["bytes_read"], FAKE_SIZE / 4 * 3, "{disk}");
        assert!(
            stats.hole_bytes_read.load(Ordering::SeqCst) > 0,
            "no map: holes are asked for"
        );
        let n = stats.accepted.load(Ordering::SeqCst);
        if multi_conn {
            assert!(
                (2..=3).contains(&n),
                "{n} connections with connections=3 and multi-conn"
            );
        } else {
            assert_eq!(n, 1, "a server without multi-conn got {n} connections");
        }
    }
}

#[test]
fn a_server_limiting_its_clients_is_read_with_the_connections_it_accepts() {
    let dir = TempDir::new().unwrap();
    let repo = new_repo(dir.path());
    let expected = dir.path().join("expected.raw");
    let bytes: Vec<u8> = (0..FAKE_SIZE).map(fake_byte).collect();
    std::fs::write(&expected, bytes).expect("writing the expected disk");
    let (url, stats) = fake_server(Misbehave::OneClientAtATime);
    // The second connection gets no greeting; after its handshake limit (5 s, less with
    // TESSERA_NBD_TIMEOUT_SECS) the backup carries on with the first.
    let started = Instant::now();
    let out = tessera_tests::tessera_cmd([
        "--json".to_string(),
        "backup".into(),
        repo.display().to_string(),
        "--series".into(),
        "s".into(),
        format!("disk={url}?connections=4"),
    ])
    .env("TESSERA_NBD_TIMEOUT_SECS", "2")
    .output()
    .expect("running tessera");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    let restored = dir.path().join("restored.raw");
    restore(&repo, v["snapshot"].as_str().unwrap(), &restored, false).ok();
    assert_same_file(&expected, &restored);
    assert!(
        stats.accepted.load(Ordering::SeqCst) >= 2,
        "no further connection was tried"
    );
}

#[test]
fn block_status_answering_less_than_asked_still_maps_every_hole() {
    let dir = TempDir::new().unwrap();
    let repo = new_repo(dir.path());
    let expected = dir.path().join("expected.raw");
    let bytes: Vec<u8> = (0..FAKE_SIZE).map(fake_byte).collect();
    std::fs::write(&expected, bytes).expect("writing the expected disk");
    let (url, stats) = fake_server(Misbehave::Honest {
        multi_conn: true,
        block_status: true,
    });
    let disk = backup_and_compare(&repo, &url, &expected, dir.path());
    assert_eq!(disk["bytes_read"], FAKE_SIZE / 4 * 3, "{disk}");
    assert_eq!(
        stats.hole_bytes_read.load(Ordering::SeqCst),
        0,
        "zero extents from block status were read anyway"
    );
}

#[test]
fn hostile_servers_give_clear_errors_and_never_hang() {
    let dir = TempDir::new().unwrap();
    let repo = new_repo(dir.path());
    let limit = Duration::from_secs(40);
    let cases = [
        (Misbehave::BadMagic, "is this an NBD server?"),
        (Misbehave::LongRead, "outside the"),
        (Misbehave::CloseMidReply, "closed the connection"),
        (
            Misbehave::Silent,
            "no answer from the NBD server within 2 s",
        ),
        (Misbehave::ErrorChunk, "server reported EIO (5) reading"),
        (
            Misbehave::NoStructuredReplies,
            "does not support structured replies",
        ),
        (Misbehave::ZeroLengthExtent, "extent of length 0"),
        (Misbehave::ShortRead, "ended after covering up to offset"),
        (Misbehave::WrongHandle, "reply chunk for handle"),
        (Misbehave::Oldstyle, "oldstyle negotiation"),
        (Misbehave::HugeOptionReply, "announces 1073741824 bytes"),
        (
            Misbehave::HugeBlockStatus,
            "BLOCK_STATUS chunk of 4294967292 bytes",
        ),
    ];
    for (mode, needle) in cases {
        let (url, _) = fake_server(mode);
        let started = Instant::now();
        let out = failing_backup(&repo, &url, "2", limit);
        out.stderr_has(needle).stderr_has(&url);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{mode:?}: the failure took {:?}",
            started.elapsed()
        );
        assert!(!out.stderr.contains("panicked"), "{mode:?}: {out}");
    }
}

// ---------------------------------------------------------------------------------------
// 2b. Delta chains over rotated bitmaps, through the CLI
// ---------------------------------------------------------------------------------------

/// Random writes of nonzero patterns; returns the `(offset, length)` written.
fn random_writes(img: &Path, gen: &mut DataGen, count: usize, size: u64) -> Vec<(u64, u64)> {
    use rand::Rng;
    let mut done = Vec::new();
    for i in 0..count {
        let len = gen.rng.gen_range(1..=300 * 1024u64);
        let offset = gen.rng.gen_range(0..size - len);
        let pattern = 1 + (i % 250);
        qemu_io("qcow2", img, &format!("write -P {pattern} {offset} {len}"));
        done.push((offset, len));
    }
    done
}

fn disk0(out: &Out) -> Value {
    out.ok();
    out.json()["disks"][0].clone()
}

/// Restores `snapshot` and compares it with `qemu-img convert -O raw` of `img` now.
fn assert_restores_image(repo: &Path, snapshot: &str, img: &Path, scratch: &Path) {
    let expected = scratch.join("expected.raw");
    let restored = scratch.join("restored.raw");
    for f in [&expected, &restored] {
        let _ = std::fs::remove_file(f);
    }
    convert_to_raw(img, "qcow2", &expected);
    restore(repo, snapshot, &restored, false).ok();
    assert_same_file(&expected, &restored);
}

#[test]
fn rotated_bitmaps_give_delta_backups_that_restore_identically() {
    let dir = TempDir::new().unwrap();
    let size = 32 * MIB;
    let raw = dir.path().join("src.raw");
    let mut gen = DataGen::new(seed("nbd-bitmap-chain"));
    make_image(&raw, ImageSpec::mixed(size), &mut gen);
    let img = dir.path().join("vm.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path(&raw),
        path(&img),
    ]);
    qemu_img(&["bitmap", "--add", path(&img), "b1"]);
    let sock = dir.path().join("c.sock");
    let repo = new_repo(dir.path());

    // The first backup is full and records that b1 tracks changes from it.
    let out = {
        let server = qemu_nbd(&img, "qcow2", &Listen::Unix(&sock), &[]);
        backup_url(&repo, &format!("{}&track=b1", server.url), &[])
    };
    let d = disk0(&out);
    assert_eq!(d["mode"], "full", "{out}");
    assert_restores_image(
        &repo,
        out.json()["snapshot"].as_str().unwrap(),
        &img,
        dir.path(),
    );

    for round in 1..=3u32 {
        let (old, new) = (format!("b{round}"), format!("b{}", round + 1));
        let writes = random_writes(&img, &mut gen, 6, size);
        // Checkpoint: the new bitmap starts tracking at the moment of this backup.
        qemu_img(&["bitmap", "--add", path(&img), &new]);
        let out = {
            let server = qemu_nbd(&img, "qcow2", &Listen::Unix(&sock), &["--bitmap", &old]);
            backup_url(
                &repo,
                &format!("{}&bitmap={old}&track={new}", server.url),
                &["--reference", "latest"],
            )
        };
        let d = disk0(&out);
        let expected: u64 = rounded(&writes, 64 * 1024).iter().map(|(s, e)| e - s).sum();
        assert_eq!(d["mode"], "delta", "round {round}: {out}");
        assert_eq!(d["changed_bytes"], expected, "round {round}: {out}");
        let read = d["bytes_read"].as_u64().unwrap();
        assert!(
            read > 0 && read <= expected,
            "round {round}: read {read} of {expected} dirty bytes"
        );
        assert_restores_image(
            &repo,
            out.json()["snapshot"].as_str().unwrap(),
            &img,
            dir.path(),
        );
        qemu_img(&["bitmap", "--remove", path(&img), &old]);
    }

    // A key backup through the current bitmap finds no drift: the bitmap saw every write.
    random_writes(&img, &mut gen, 4, size);
    qemu_img(&["bitmap", "--add", path(&img), "b5"]);
    let server = qemu_nbd(
        &img,
        "qcow2",
        &Listen::Unix(&sock),
        &["--bitmap", "b4", "--bitmap", "b5"],
    );
    let out = backup_url(
        &repo,
        &format!("{}&bitmap=b4&track=b5", server.url),
        &["--reference", "latest", "--full"],
    );
    let d = disk0(&out);
    assert_eq!(d["mode"], "key", "{out}");
    assert_eq!(d["drift_blocks"], 0, "{out}");
    assert_restores_image(
        &repo,
        out.json()["snapshot"].as_str().unwrap(),
        &img,
        dir.path(),
    );

    wrong_bitmap_is_refused_unless_fallback_full(&repo, &server.url, &img, dir.path());
    drop(server);
    tessera_tests::verify(&repo).ok();
}

/// After a backup that recorded state `nbd-bitmap:b5`, a delta through bitmap b4 (served
/// at `url`) is refused with nothing stored, and `--fallback-full` reads the disk whole.
fn wrong_bitmap_is_refused_unless_fallback_full(
    repo: &Path,
    url: &str,
    img: &Path,
    scratch: &Path,
) {
    let size = 32 * MIB;
    // The wrong bitmap (b4 is not what the newest snapshot recorded: b5) is refused, and
    // nothing is stored.
    let before = list_ids(repo);
    let out = backup_url(
        repo,
        &format!("{url}&bitmap=b4"),
        &["--reference", "latest"],
    );
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has("nbd-bitmap:b5")
        .stderr_has("--fallback-full");
    assert_eq!(list_ids(repo), before, "a refused delta stored a snapshot");
    // With --fallback-full the disk is read whole instead.
    let out = backup_url(
        repo,
        &format!("{url}&bitmap=b4"),
        &["--reference", "latest", "--fallback-full"],
    );
    let d = disk0(&out);
    assert_eq!(d["mode"], "key", "{out}");
    assert!(d["bytes_read"].as_u64().unwrap() > size / 2, "{out}");
    assert_restores_image(repo, out.json()["snapshot"].as_str().unwrap(), img, scratch);
}
