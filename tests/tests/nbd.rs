//! `tessera serve-nbd` against real NBD clients (qemu-img, nbdinfo, nbdcopy) and against a
//! hand-written client sending malformed messages. Every copy is compared byte for byte
//! with the image that was backed up; block status is compared with the image's own zero
//! blocks. `scripts/ensure-deps.sh` installs the clients; a missing one fails the test.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tessera_tests::serve_nbd::raw::{
    assert_closed, go, greet, option_reply, read_range, request, send_option, simple_reply, EINVAL,
    EPERM, OPT_GO, REP_ACK, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REQUEST_MAGIC,
};
use tessera_tests::serve_nbd::NbdServer;
use tessera_tests::{
    assert_same_file, backup_json, block_digests, init_repo, make_image, seed, DataGen, ImageSpec,
    Value,
};

const BS: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (run scripts/ensure-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serve_tcp(repo: &Path, spec: &str) -> NbdServer {
    let s = NbdServer::tcp(repo, spec, &[]);
    // It printed after binding, so it accepts now.
    TcpStream::connect(("127.0.0.1", s.port())).expect("server accepts");
    s
}

fn serve_unix(repo: &Path, spec: &str, socket: &Path) -> NbdServer {
    NbdServer::unix(repo, spec, socket)
}

/// A repository with one snapshot of the given disks (64 KiB blocks).
fn repo_with(t: &TempDir, disks: &[(&str, &Path)]) -> PathBuf {
    let repo = t.path().join("repo");
    init_repo(&repo, &["--block-size", "64K"]);
    backup_json(&repo, "vm", disks);
    repo
}

/// An image with zero, text and random regions whose size is a multiple of 512 (qemu
/// rounds NBD sizes up to sectors) but not of the block size, with zero blocks.
fn mixed_image(path: &Path, gen: &mut DataGen, size: u64) {
    let spec = ImageSpec {
        max_region: 256 * 1024,
        ..ImageSpec::mixed(size)
    };
    make_image(path, spec, gen);
    let blocks = block_digests(path, BS);
    assert!(blocks.iter().any(|b| b.zero), "the image needs zero blocks");
    assert!(
        blocks.iter().any(|b| !b.zero),
        "the image needs data blocks"
    );
}

// ---------------------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------------------

#[test]
fn qemu_img_reads_maps_and_compares_over_tcp_and_unix_socket() {
    let mut gen = DataGen::new(seed("nbd_qemu"));
    let t = TempDir::new().unwrap();
    let img = t.path().join("img.raw");
    let size = 6 * (1 << 20) + 3 * 4096 + 512;
    assert_ne!(size % BS, 0);
    mixed_image(&img, &mut gen, size);
    let repo = repo_with(&t, &[("disk0", &img)]);

    let server = serve_tcp(&repo, "latest");
    assert_eq!(server.info["exports"][0]["name"], "disk0");
    assert_eq!(server.info["exports"][0]["size"], size);
    let uri = server.uri("disk0");

    // Byte-for-byte copy.
    let out = t.path().join("out.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&out),
    );
    assert_same_file(&img, &out);

    // qemu-img compare against the original.
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&img)
            .arg(&uri),
    );

    // qemu-img info sees the export's exact size.
    let info: Value = serde_json::from_str(&run_ok(Command::new("qemu-img").args([
        "info",
        "--output=json",
        "-f",
        "raw",
        &uri,
    ])))
    .expect("qemu-img info JSON");
    assert_eq!(
        info["virtual-size"],
        std::fs::metadata(&img).unwrap().len(),
        "qemu-img info over NBD: {info}"
    );

    // Block status: all-zero blocks are zero, every other block is data.
    let map: Value = serde_json::from_str(&run_ok(Command::new("qemu-img").args([
        "map",
        "--output=json",
        "-f",
        "raw",
        &uri,
    ])))
    .expect("qemu-img map JSON");
    let entries = map.as_array().expect("map array");
    let blocks = block_digests(&img, BS);
    for (i, b) in blocks.iter().enumerate() {
        let start = i as u64 * BS;
        let e = entries
            .iter()
            .find(|e| {
                let s = e["start"].as_u64().unwrap();
                s <= start && start < s + e["length"].as_u64().unwrap()
            })
            .unwrap_or_else(|| panic!("no map entry covers offset {start}: {map}"));
        if b.zero {
            assert_eq!(e["zero"], true, "zero block at {start} mapped as {e}");
            assert_eq!(e["data"], false, "zero block at {start} mapped as {e}");
        } else {
            assert_eq!(e["data"], true, "data block at {start} mapped as {e}");
            assert_eq!(e["zero"], false, "data block at {start} mapped as {e}");
        }
    }
    drop(server);

    // The same over a unix socket, replacing a stale socket file.
    let sock = t.path().join("nbd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = serve_unix(&repo, "latest:disk0", &sock);
    assert_eq!(server.info["socket"], sock.display().to_string().as_str());
    let out2 = t.path().join("out2.raw");
    let uri = format!("nbd+unix:///disk0?socket={}", sock.display());
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&out2),
    );
    assert_same_file(&img, &out2);
    // The default export (empty name) is the disk too.
    let out3 = t.path().join("out3.raw");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&out3),
    );
    assert_same_file(&img, &out3);
}

#[test]
fn nbdinfo_lists_every_disk_and_nbdcopy_copies_with_four_connections() {
    let mut gen = DataGen::new(seed("nbd_multi"));
    let t = TempDir::new().unwrap();
    let a = t.path().join("a.raw");
    let b = t.path().join("b.raw");
    mixed_image(&a, &mut gen, 5 * (1 << 20) + 4096);
    // Any size at all for nbdcopy.
    make_image(&b, ImageSpec::mixed(3 * (1 << 20) + 12345), &mut gen);
    let repo = repo_with(&t, &[("alpha", &a), ("beta", &b)]);
    let server = serve_tcp(&repo, "latest");

    let list = run_ok(Command::new("nbdinfo").args(["--list", &server.uri("")]));
    assert!(list.contains("export=\"alpha\""), "{list}");
    assert!(list.contains("export=\"beta\""), "{list}");
    assert!(list.contains("base:allocation"), "{list}");
    assert!(list.contains("is_read_only: true"), "{list}");

    for (name, img) in [("alpha", &a), ("beta", &b)] {
        let out = t.path().join(format!("{name}.copy"));
        run_ok(
            Command::new("nbdcopy")
                .args(["--connections=4", &server.uri(name)])
                .arg(&out),
        );
        assert_same_file(img, &out);
    }
}

// ---------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_client_messages_only_end_that_connection() {
    let mut gen = DataGen::new(seed("nbd_malformed"));
    let t = TempDir::new().unwrap();
    let img = t.path().join("img.raw");
    let size = 2 * (1 << 20) + 1000;
    make_image(&img, ImageSpec::mixed(size), &mut gen);
    let bytes = std::fs::read(&img).unwrap();
    let repo = repo_with(&t, &[("disk0", &img)]);
    let server = serve_tcp(&repo, "latest");

    // Bad option magic: closed.
    let mut s = server.connect();
    greet(&mut s);
    s.write_all(&[0xAB; 16]).unwrap();
    assert_closed(&mut s);

    // Oversized option length: NBD_REP_ERR_TOO_BIG, then closed.
    let mut s = server.connect();
    greet(&mut s);
    send_option(&mut s, OPT_GO, 0x4000_0000, &[]);
    let (kind, _) = option_reply(&mut s, OPT_GO);
    assert_eq!(kind, REP_ERR_TOO_BIG);
    assert_closed(&mut s);

    // Unknown export: NBD_REP_ERR_UNKNOWN, and haggling goes on.
    let mut s = server.connect();
    greet(&mut s);
    assert_eq!(go(&mut s, "nope"), REP_ERR_UNKNOWN);
    assert_eq!(go(&mut s, "disk0"), REP_ACK);
    // Reads past the end and oversized reads: EINVAL; the connection goes on.
    request(&mut s, REQUEST_MAGIC, 0, 1, size - 10, 11);
    assert_eq!(simple_reply(&mut s, 1), EINVAL);
    request(&mut s, REQUEST_MAGIC, 0, 2, u64::MAX - 5, 10);
    assert_eq!(simple_reply(&mut s, 2), EINVAL);
    request(&mut s, REQUEST_MAGIC, 0, 3, 0, 64 << 20);
    assert_eq!(simple_reply(&mut s, 3), EINVAL);
    // WRITE (with its payload): EPERM; TRIM: EPERM.
    request(&mut s, REQUEST_MAGIC, 1, 4, 0, 4096);
    s.write_all(&[0x55; 4096]).unwrap();
    assert_eq!(simple_reply(&mut s, 4), EPERM);
    request(&mut s, REQUEST_MAGIC, 4, 5, 0, 4096);
    assert_eq!(simple_reply(&mut s, 5), EPERM);
    // FLUSH succeeds; reads still work, the end of the disk included.
    request(&mut s, REQUEST_MAGIC, 3, 6, 0, 0);
    assert_eq!(simple_reply(&mut s, 6), 0);
    assert_eq!(read_range(&mut s, 7, 0, 100_000), bytes[..100_000]);
    let tail = read_range(&mut s, 8, size - 70_000, 70_000);
    assert_eq!(tail, bytes[(size - 70_000) as usize..]);
    // Bad request magic: closed.
    request(&mut s, 0xdead_beef, 0, 9, 0, 512);
    assert_closed(&mut s);

    // Another client still reads everything correctly.
    let mut s = server.connect();
    greet(&mut s);
    assert_eq!(go(&mut s, ""), REP_ACK);
    let mut all = Vec::new();
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(300_001) as u32;
        all.extend(read_range(&mut s, off, off, n));
        off += u64::from(n);
    }
    assert!(all == bytes, "the whole disk read back differs");
    request(&mut s, REQUEST_MAGIC, 2, 99, 0, 0);
    assert_closed(&mut s);
}
