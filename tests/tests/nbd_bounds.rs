//! The bounds of `tessera serve-nbd` (SPEC.md §15 "Bounds"), through the binary: the
//! connection limit (a full server refuses with a reason, closes stalled handshakes to
//! make room, and serves a real client again once a slot frees), the handshake and idle
//! timeouts (made short here with `--handshake-timeout` / `--idle-timeout`), bounded
//! option haggling (count and size), and the refusal of plain NBD off loopback.
//!
//! The real client is qemu-img; its copies are compared byte for byte with the image.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_tests::serve_nbd::raw::{
    assert_closed, assert_closed_within, export_request, go, greet, option_reply, rd, read_range,
    request, send_option, IHAVEOPT, OPT_INFO, OPT_LIST, REP_ACK, REP_ERR_POLICY, REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN, REP_SERVER, REQUEST_MAGIC,
};
use tessera_tests::serve_nbd::NbdServer;
use tessera_tests::{
    assert_same_file, backup_json, init_repo, make_image, seed, tessera, wait_until, DataGen,
    ImageSpec,
};

/// A repository holding one snapshot of a 3 MiB mixed image `disk0`; returns (repo, image).
fn repo_with_disk(t: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let mut gen = DataGen::new(seed(name));
    let img = t.path().join("img.raw");
    make_image(&img, ImageSpec::mixed(3 << 20), &mut gen);
    let repo = t.path().join("repo");
    init_repo(&repo, &["--block-size", "64K"]);
    backup_json(&repo, "vm", &[("disk0", &img)]);
    (repo, img)
}

/// `qemu-img convert -f raw -O raw URI OUT`.
fn qemu_img_copy(uri: &str, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(out)
        .output()
        .expect("running qemu-img (scripts/ensure-deps.sh installs it)")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A raw client that chose export `disk0` (in transmission).
fn in_transmission(server: &NbdServer) -> TcpStream {
    let mut s = server.connect();
    greet(&mut s);
    assert_eq!(go(&mut s, "disk0"), REP_ACK);
    s
}

#[test]
fn a_full_server_refuses_with_a_reason_makes_room_from_stalled_handshakes_and_serves_again() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_limit");
    let server = NbdServer::tcp(&repo, "latest", &["--max-connections", "2"]);
    assert_eq!(
        server.info["limits"]["max_connections"], 2,
        "{}",
        server.info
    );
    let out = t.path().join("out.raw");

    // Two clients that connect and never negotiate hold every slot; a real client still
    // gets in: the oldest stalled handshake is closed to make room.
    let mut stalled = server.connect();
    greet(&mut stalled);
    let mut stalled2 = server.connect();
    greet(&mut stalled2);
    let copy = qemu_img_copy(&server.uri("disk0"), &out);
    assert!(
        copy.status.success(),
        "qemu-img behind stalled handshakes: {}",
        text(&copy)
    );
    assert_same_file(&img, &out);
    assert_closed(&mut stalled);
    drop(stalled2);

    // Two clients in transmission hold every slot: they are never closed for another, and
    // the next client is told why (NBD_REP_ERR_POLICY naming the limit), then closed.
    let mut a = in_transmission(&server);
    let mut b = wait_for_slot(&server);
    let mut refused = server.connect();
    greet(&mut refused);
    send_option(&mut refused, OPT_LIST, 0, &[]);
    let (kind, why) = option_reply(&mut refused, OPT_LIST);
    let why = String::from_utf8_lossy(&why).into_owned();
    assert_eq!(kind, REP_ERR_POLICY, "{why}");
    assert!(why.contains("--max-connections"), "{why}");
    let copy = qemu_img_copy(&server.uri("disk0"), &out);
    assert!(!copy.status.success(), "a client over the limit was served");
    // The two in transmission still read.
    assert_eq!(
        read_range(&mut a, 1, 0, 4096),
        std::fs::read(&img).unwrap()[..4096]
    );
    assert_eq!(
        read_range(&mut b, 2, 4096, 4096),
        std::fs::read(&img).unwrap()[4096..8192]
    );

    // Once one leaves (NBD_CMD_DISC), a real client is served again.
    request(&mut a, REQUEST_MAGIC, 2, 3, 0, 0);
    assert_closed(&mut a);
    let mut last = None;
    let got_in = wait_until(Duration::from_secs(10), || {
        let copy = qemu_img_copy(&server.uri("disk0"), &out);
        let ok = copy.status.success();
        last = Some(copy);
        ok
    });
    assert!(
        got_in,
        "no client served after a slot freed: {}",
        text(&last.unwrap())
    );
    assert_same_file(&img, &out);
    drop(b);
}

/// A client in transmission, retrying for a few seconds while the server still counts a
/// connection that just ended (its thread finishes right after the close).
fn wait_for_slot(server: &NbdServer) -> TcpStream {
    let mut got = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let mut s = server.connect();
        greet(&mut s);
        if go(&mut s, "disk0") == REP_ACK {
            got = Some(s);
            true
        } else {
            false
        }
    });
    assert!(ok, "no slot freed within 10 s");
    got.unwrap()
}

#[test]
fn clients_stalling_or_trickling_in_the_handshake_are_dropped_at_the_timeout() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_handshake_timeout");
    let server = NbdServer::tcp(&repo, "latest", &["--handshake-timeout", "1"]);
    assert_eq!(server.info["limits"]["handshake_timeout_secs"], 1);

    // Silent after the greeting.
    let mut silent = server.connect();
    greet(&mut silent);
    let took = assert_closed_within(&mut silent, Duration::from_secs(6));
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");

    // Never answering the greeting.
    let mut mute = server.connect();
    let _greeting: [u8; 18] = rd(&mut mute);
    assert_closed_within(&mut mute, Duration::from_secs(6));

    // Trickling an option one byte every 150 ms: the deadline covers the whole handshake,
    // not the silence between two bytes.
    let mut trickle = server.connect();
    greet(&mut trickle);
    let start = Instant::now();
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&OPT_LIST.to_be_bytes());
    option.extend_from_slice(&0u32.to_be_bytes());
    for byte in option.iter().cycle().take(60) {
        if trickle.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let took = start.elapsed() + assert_closed_within(&mut trickle, Duration::from_secs(6));
    assert!(
        took < Duration::from_secs(6),
        "a trickling client stayed {took:?}"
    );

    // A real client negotiates well within the time.
    let out = t.path().join("out.raw");
    let copy = qemu_img_copy(&server.uri("disk0"), &out);
    assert!(copy.status.success(), "{}", text(&copy));
    assert_same_file(&img, &out);
}

#[test]
fn a_client_idle_in_transmission_is_dropped_at_the_idle_timeout() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_idle_timeout");
    let server = NbdServer::tcp(&repo, "latest", &["--idle-timeout", "1"]);
    assert_eq!(server.info["limits"]["idle_timeout_secs"], 1);
    let bytes = std::fs::read(&img).unwrap();
    let mut s = in_transmission(&server);
    // Requests closer together than the timeout keep the connection.
    for i in 0..4u64 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            read_range(&mut s, i, i * 4096, 4096),
            bytes[(i * 4096) as usize..][..4096]
        );
    }
    let took = assert_closed_within(&mut s, Duration::from_secs(6));
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

#[test]
fn option_floods_and_oversized_options_are_refused() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_option_bounds");
    let server = NbdServer::tcp(
        &repo,
        "latest",
        &["--max-options", "8", "--max-option-bytes", "1024"],
    );

    // Eight options are answered; the ninth gets NBD_REP_ERR_POLICY and the close.
    let mut s = server.connect();
    greet(&mut s);
    for _ in 0..8 {
        send_option(&mut s, OPT_LIST, 0, &[]);
        assert_eq!(option_reply(&mut s, OPT_LIST).0, REP_SERVER);
        assert_eq!(option_reply(&mut s, OPT_LIST).0, REP_ACK);
    }
    send_option(&mut s, OPT_LIST, 0, &[]);
    let (kind, why) = option_reply(&mut s, OPT_LIST);
    assert_eq!(kind, REP_ERR_POLICY, "{}", String::from_utf8_lossy(&why));
    assert_closed(&mut s);

    // An option of exactly the limit is read and answered (no such export); one byte more
    // is refused with NBD_REP_ERR_TOO_BIG before its payload is read, then closed.
    let mut s = server.connect();
    greet(&mut s);
    let at_limit = export_request(&"x".repeat(1024 - 6));
    assert_eq!(at_limit.len(), 1024);
    send_option(&mut s, OPT_INFO, 1024, &at_limit);
    assert_eq!(option_reply(&mut s, OPT_INFO).0, REP_ERR_UNKNOWN);
    send_option(&mut s, OPT_INFO, 1025, &[]);
    let (kind, why) = option_reply(&mut s, OPT_INFO);
    assert_eq!(kind, REP_ERR_TOO_BIG);
    assert!(String::from_utf8_lossy(&why).contains("1024"), "{why:?}");
    assert_closed(&mut s);

    // The server serves the next client as before.
    let out = t.path().join("out.raw");
    let copy = qemu_img_copy(&server.uri("disk0"), &out);
    assert!(copy.status.success(), "{}", text(&copy));
    assert_same_file(&img, &out);
}

#[test]
fn plain_nbd_off_loopback_is_refused_unless_insecure() {
    let t = TempDir::new().unwrap();
    let (repo, _) = repo_with_disk(&t, "nbd_insecure");
    let repo_s = repo.display().to_string();
    let refused = tessera(["serve-nbd", &repo_s, "latest", "--listen", "0.0.0.0:0"]);
    refused
        .expect_code(2)
        .stderr_has("refusing to serve plain NBD on 0.0.0.0:")
        .stderr_has("--tls-cert")
        .stderr_has("--insecure");
    let refused = tessera([
        "--json",
        "serve-nbd",
        &repo_s,
        "latest",
        "--listen",
        "0.0.0.0:0",
    ]);
    refused.expect_code(2);
    assert_eq!(refused.json()["kind"], "usage", "{refused}");

    let server = NbdServer::spawn(
        &repo,
        "latest",
        &["--listen".into(), "0.0.0.0:0".into(), "--insecure".into()],
    );
    assert!(
        server.info["listen"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0.0:"),
        "{}",
        server.info
    );
    assert_eq!(server.info["tls"], false);
    let mut s = server.connect();
    greet(&mut s);
    assert_eq!(go(&mut s, "disk0"), REP_ACK);

    // TLS without client certificates still serves anyone who connects: refused too.
    let pki = tessera_tests::pki::Pki::new(t.path(), "nbd-offloopback");
    let (cert, key, ca) = (
        pki.server_cert().display().to_string(),
        pki.server_key().display().to_string(),
        pki.ca().display().to_string(),
    );
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let mut args = vec!["serve-nbd", &repo_s, "latest", "--listen", "0.0.0.0:0"];
    args.extend(tls);
    tessera(&args)
        .expect_code(2)
        .stderr_has("without --tls-ca")
        .stderr_has("anyone who connects");
    args.extend(["--tls-ca", ca.as_str()]);
    let authenticated = NbdServer::spawn(
        &repo,
        "latest",
        &args[3..]
            .iter()
            .map(|a| (*a).to_string())
            .collect::<Vec<_>>(),
    );
    assert_eq!(authenticated.info["tls"], true, "{}", authenticated.info);

    // Limits that would refuse everyone are usage errors too.
    tessera(["serve-nbd", &repo_s, "latest", "--max-connections", "0"]).expect_code(2);
    tessera(["serve-nbd", &repo_s, "latest", "--max-option-bytes", "100"]).expect_code(2);
}
