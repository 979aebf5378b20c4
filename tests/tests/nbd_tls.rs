//! NBD over TLS both ways (SPEC.md §15 "TLS", §20 "TLS"), with certificates made by the
//! `openssl` CLI ([`Pki`]):
//!
//! - `tessera serve-nbd --tls-cert/--tls-key [--tls-ca]` read by real clients (qemu-img
//!   with `tls-creds-x509`, libnbd's nbdinfo and nbdcopy with `nbds://`) and by tessera's
//!   own client, byte for byte; clients that do not start TLS, trust another CA or lack a
//!   client certificate are refused, and the server goes on serving the next client;
//! - `tessera backup` from `qemu-nbd --tls-creds` (which asks for a client certificate by
//!   default) with a dirty bitmap, full then delta, each restored byte-identical to
//!   `qemu-img convert` of the image.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tessera_tests::pki::Pki;
use tessera_tests::qemu::{convert_to_raw, qemu_img, qemu_io};
use tessera_tests::serve_nbd::raw::{
    assert_closed, assert_closed_within, export_request, go, greet, option_reply, rd, send_option,
    OPT_EXPORT_NAME, OPT_INFO, OPT_LIST, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK,
    REP_ERR_INVALID, REP_ERR_TLS_REQD,
};
use tessera_tests::serve_nbd::NbdServer;
use tessera_tests::{
    assert_same_file, backup_json, init_repo, list_ids, make_image, restore, seed, tessera, verify,
    wait_until, DataGen, ImageSpec, Out,
};

/// A repository with one snapshot of a mixed image `disk0` (a multiple of 512 bytes, as
/// qemu rounds NBD sizes up to sectors); returns (repo, image).
fn repo_with_disk(t: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let mut gen = DataGen::new(seed(name));
    let img = t.path().join("img.raw");
    make_image(&img, ImageSpec::mixed(4 * (1 << 20) + 4096), &mut gen);
    let repo = t.path().join("repo");
    init_repo(&repo, &["--block-size", "64K"]);
    backup_json(&repo, "vm", &[("disk0", &img)]);
    (repo, img)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `serve-nbd` of `repo`'s latest snapshot with `pki`'s server certificate.
fn serve_tls(repo: &Path, pki: &Pki, extra: &[&str]) -> NbdServer {
    let (cert, key) = (pki.server_cert(), pki.server_key());
    let mut args = vec!["--tls-cert", s(&cert), "--tls-key", s(&key)];
    args.extend_from_slice(extra);
    let server = NbdServer::tcp(repo, "latest", &args);
    assert_eq!(server.info["tls"], true, "{}", server.info);
    assert!(
        server.info["uris"][0]
            .as_str()
            .unwrap()
            .starts_with("nbds://"),
        "{}",
        server.info
    );
    server
}

/// `qemu-img convert` of export `export` at `127.0.0.1:port` over TLS with the
/// credentials in `dir` (qemu's layout), to `out`.
fn qemu_img_tls_copy(port: u16, export: &str, dir: &Path, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    Command::new("qemu-img")
        .arg("convert")
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            dir.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0"
        ))
        .args(["-O", "raw"])
        .arg(out)
        .output()
        .expect("running qemu-img (scripts/ensure-deps.sh installs it)")
}

/// Runs `program args`; returns its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (run scripts/ensure-deps.sh)"))
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tessera --json backup REPO --series S disk0=URL EXTRA...`.
fn backup_url(repo: &Path, series: &str, url: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "--json".to_string(),
        "backup".into(),
        repo.display().to_string(),
        "--series".into(),
        series.into(),
        format!("disk0={url}"),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    tessera(args)
}

/// Restores the snapshot `backup` made and compares it with `expected`.
fn assert_restores(repo: &Path, backup: &Out, expected: &Path, scratch: &Path) {
    backup.ok();
    let restored = scratch.join("restored.raw");
    let _ = std::fs::remove_file(&restored);
    let id = backup.json()["snapshot"].as_str().unwrap().to_string();
    restore(repo, &id, &restored, false).ok();
    assert_same_file(expected, &restored);
}

// ---------------------------------------------------------------------------------------
// serve-nbd with TLS
// ---------------------------------------------------------------------------------------

#[test]
fn qemu_img_libnbd_and_tessera_read_a_snapshot_over_tls_byte_for_byte() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_tls_read");
    let pki = Pki::new(&t.path().join("pki"), "tessera test CA");
    let ca_only = pki.client_dir(&t.path().join("client"), false);
    let server = serve_tls(&repo, &pki, &[]);
    let port = server.port();

    // qemu-img (GnuTLS, tls-creds-x509).
    let out = t.path().join("qemu.raw");
    let copy = qemu_img_tls_copy(port, "disk0", &ca_only, &out);
    assert!(copy.status.success(), "{}", text(&copy));
    assert_same_file(&img, &out);

    // libnbd: nbdinfo lists over TLS, nbdcopy copies with four connections.
    let certs = format!("tls-certificates={}", ca_only.display());
    let list = run(
        "nbdinfo",
        &["--list", &format!("{}?{certs}", server.tls_uri(""))],
    );
    let listing = text(&list);
    assert!(list.status.success(), "{listing}");
    assert!(listing.contains("with TLS"), "{listing}");
    assert!(listing.contains("export=\"disk0\""), "{listing}");
    let out = t.path().join("nbdcopy.raw");
    let copy = run(
        "nbdcopy",
        &[
            "--connections=4",
            &format!("{}?{certs}", server.tls_uri("disk0")),
            s(&out),
        ],
    );
    assert!(copy.status.success(), "{}", text(&copy));
    assert_same_file(&img, &out);

    // tessera's own client, trusting the CA with --tls-ca.
    let b = backup_url(
        &repo,
        "copy",
        &server.tls_uri("disk0"),
        &["--tls-ca", s(&pki.ca())],
    );
    assert_restores(&repo, &b, &img, t.path());

    // The same over a Unix socket: nbds+unix:// (the certificate names localhost).
    let sock = t.path().join("nbd.sock");
    let unix = NbdServer::spawn(
        &repo,
        "latest",
        &[
            "--socket".into(),
            s(&sock).into(),
            "--tls-cert".into(),
            s(&pki.server_cert()).into(),
            "--tls-key".into(),
            s(&pki.server_key()).into(),
        ],
    );
    assert_eq!(unix.info["tls"], true);
    let url = format!("nbds+unix:///disk0?socket={}", sock.display());
    let b = backup_url(&repo, "copy", &url, &["--tls-ca", s(&pki.ca())]);
    assert_restores(&repo, &b, &img, t.path());
    verify(&repo).ok();
}

#[test]
fn clients_that_do_not_start_tls_are_refused() {
    let t = TempDir::new().unwrap();
    let (repo, _) = repo_with_disk(&t, "nbd_tls_required");
    let pki = Pki::new(&t.path().join("pki"), "tessera test CA");
    let server = serve_tls(&repo, &pki, &["--handshake-timeout", "2"]);

    // Every option but STARTTLS gets NBD_REP_ERR_TLS_REQD: no export name or size crosses
    // the network in clear.
    let mut c = server.connect();
    greet(&mut c);
    assert_eq!(go(&mut c, "disk0"), REP_ERR_TLS_REQD);
    send_option(&mut c, OPT_LIST, 0, &[]);
    let (kind, why) = option_reply(&mut c, OPT_LIST);
    assert_eq!(kind, REP_ERR_TLS_REQD);
    assert!(
        String::from_utf8_lossy(&why).contains("STARTTLS"),
        "{why:?}"
    );
    let info = export_request("disk0");
    send_option(&mut c, OPT_INFO, info.len() as u32, &info);
    assert_eq!(option_reply(&mut c, OPT_INFO).0, REP_ERR_TLS_REQD);
    send_option(&mut c, OPT_STRUCTURED_REPLY, 0, &[]);
    assert_eq!(
        option_reply(&mut c, OPT_STRUCTURED_REPLY).0,
        REP_ERR_TLS_REQD
    );
    // STARTTLS with a payload is invalid; EXPORT_NAME (which cannot be refused) closes.
    send_option(&mut c, OPT_STARTTLS, 3, b"abc");
    assert_eq!(option_reply(&mut c, OPT_STARTTLS).0, REP_ERR_INVALID);
    send_option(&mut c, OPT_EXPORT_NAME, 5, b"disk0");
    assert_closed(&mut c);

    // A client without fixed newstyle cannot use TLS: closed at once.
    let mut old = server.connect();
    let _greeting: [u8; 18] = rd(&mut old);
    std::io::Write::write_all(&mut old, &0u32.to_be_bytes()).unwrap();
    assert_closed(&mut old);

    // STARTTLS acknowledged, then no TLS handshake: dropped at the handshake timeout.
    let mut stall = server.connect();
    greet(&mut stall);
    send_option(&mut stall, OPT_STARTTLS, 0, &[]);
    assert_eq!(option_reply(&mut stall, OPT_STARTTLS).0, REP_ACK);
    assert_closed_within(&mut stall, Duration::from_secs(8));
    // STARTTLS acknowledged, then plaintext instead of a TLS hello: closed.
    let mut garbage = server.connect();
    greet(&mut garbage);
    send_option(&mut garbage, OPT_STARTTLS, 0, &[]);
    assert_eq!(option_reply(&mut garbage, OPT_STARTTLS).0, REP_ACK);
    send_option(&mut garbage, OPT_LIST, 0, &[]);
    assert_closed(&mut garbage);

    // Real clients asking for plain NBD fail, and say why.
    let qemu = run("qemu-img", &["info", &server.uri("disk0")]);
    assert!(!qemu.status.success(), "{}", text(&qemu));
    assert!(text(&qemu).contains("TLS"), "{}", text(&qemu));
    let nbdinfo = run("nbdinfo", &[&server.uri("disk0")]);
    assert!(!nbdinfo.status.success(), "{}", text(&nbdinfo));
    backup_url(&repo, "plain", &server.uri("disk0"), &[])
        .expect_code(1)
        .stderr_has("the server requires TLS")
        .stderr_has("nbds://");
    assert_eq!(
        list_ids(&repo).len(),
        1,
        "a refused backup stored a snapshot"
    );
}

#[test]
fn a_wrong_ca_or_a_missing_client_certificate_fails_cleanly_and_the_next_client_is_served() {
    let t = TempDir::new().unwrap();
    let (repo, img) = repo_with_disk(&t, "nbd_tls_wrong_ca");
    let pki = Pki::new(&t.path().join("pki"), "tessera test CA");
    let other = Pki::new(&t.path().join("other"), "some other CA");
    // Client certificates signed by pki's CA are required.
    let server = serve_tls(&repo, &pki, &["--tls-ca", s(&pki.ca())]);
    assert_eq!(server.info["client_certificates"], true);
    let port = server.port();
    let good = pki.client_dir(&t.path().join("good"), true);
    let no_cert = pki.client_dir(&t.path().join("no-cert"), false);
    let wrong_ca = other.client_dir(&t.path().join("wrong-ca"), false);
    // Trusts the right CA but presents a certificate of another.
    let foreign_cert = t.path().join("foreign-cert");
    other.client_dir(&foreign_cert, true);
    std::fs::copy(pki.ca(), foreign_cert.join("ca-cert.pem")).unwrap();
    let out = t.path().join("out.raw");

    for (dir, why) in [
        (&wrong_ca, "a server certificate from an untrusted CA"),
        (&no_cert, "no client certificate"),
        (&foreign_cert, "a client certificate from another CA"),
    ] {
        let q = qemu_img_tls_copy(port, "disk0", dir, &out);
        assert!(!q.status.success(), "qemu-img with {why}: {}", text(&q));
        let url = format!(
            "{}?tls-certificates={}",
            server.tls_uri("disk0"),
            dir.display()
        );
        let n = run("nbdinfo", &[&url]);
        assert!(!n.status.success(), "nbdinfo with {why}: {}", text(&n));
        let b = backup_url(&repo, "tls", &url, &[]);
        b.expect_code(1);
        assert!(
            b.stderr.contains("TLS") && !b.stderr.contains("panicked"),
            "tessera with {why}: {b}"
        );
    }
    // tessera names what is wrong.
    backup_url(
        &repo,
        "tls",
        &server.tls_uri("disk0"),
        &["--tls-ca", s(&other.ca())],
    )
    .expect_code(1)
    .stderr_has("certificate is not trusted")
    .stderr_has("--tls-ca");
    let url = format!(
        "{}?tls-certificates={}",
        server.tls_uri("disk0"),
        no_cert.display()
    );
    backup_url(&repo, "tls", &url, &[])
        .expect_code(1)
        .stderr_has("client certificate");

    // The server serves the next client with the right credentials.
    let q = qemu_img_tls_copy(port, "disk0", &good, &out);
    assert!(q.status.success(), "{}", text(&q));
    assert_same_file(&img, &out);
    let url = format!(
        "{}?tls-certificates={}",
        server.tls_uri("disk0"),
        good.display()
    );
    let b = backup_url(&repo, "tls", &url, &[]);
    assert_restores(&repo, &b, &img, t.path());
    assert_eq!(
        list_ids(&repo).len(),
        2,
        "only the good backup adds a snapshot"
    );
    verify(&repo).ok();
}

// ---------------------------------------------------------------------------------------
// Backing up from qemu-nbd with TLS
// ---------------------------------------------------------------------------------------

/// `qemu-nbd` serving `image` (qcow2) as export `vm` on 127.0.0.1 with TLS from `pki`'s
/// directory (server certificate and key, and the CA its clients' certificates must chain
/// to: qemu's `verify-peer` is on by default), killed on drop.
struct QemuNbd {
    child: Child,
    port: u16,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QemuNbd {
    fn start(image: &Path, pki: &Pki, extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("qemu-nbd")
            .arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server",
                pki.dir.display()
            ))
            .args(["--tls-creds", "tls0", "-r", "-t", "-f", "qcow2", "-x", "vm"])
            .args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting qemu-nbd (scripts/ensure-deps.sh installs qemu-utils)");
        let mut server = Self { child, port };
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || server.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            up && server.child.try_wait().ok().flatten().is_none(),
            "qemu-nbd did not come up"
        );
        server
    }

    fn url(&self, query: &str) -> String {
        format!("nbds://127.0.0.1:{}/vm?{query}", self.port)
    }
}

#[test]
fn backup_from_a_tls_qemu_nbd_export_with_a_dirty_bitmap_restores_byte_identical() {
    let t = TempDir::new().unwrap();
    let mut gen = DataGen::new(seed("nbd_tls_qemu_nbd"));
    let pki = Pki::new(&t.path().join("pki"), "tessera test CA");
    let client = pki.client_dir(&t.path().join("client"), true);
    let certs = format!("tls-certificates={}", client.display());
    let raw = t.path().join("src.raw");
    let size = 24u64 << 20;
    make_image(&raw, ImageSpec::mixed(size), &mut gen);
    let img = t.path().join("vm.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&img)]);
    qemu_img(&["bitmap", "--add", s(&img), "b1"]);
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let expected = t.path().join("expected.raw");

    // Full backup over TLS, recording that b1 tracks changes from it.
    let full = {
        let server = QemuNbd::start(&img, &pki, &[]);
        // Plain NBD to a TLS export is refused, naming the fix.
        backup_url(
            &repo,
            "vm",
            &server.url("").replace("nbds://", "nbd://"),
            &[],
        )
        .expect_code(1)
        .stderr_has("requires TLS");
        backup_url(&repo, "vm", &server.url(&format!("{certs}&track=b1")), &[])
    };
    assert_eq!(full.json()["disks"][0]["mode"], "full", "{full}");
    convert_to_raw(&img, "qcow2", &expected);
    assert_restores(&repo, &full, &expected, t.path());

    // Writes through qemu-io, then a delta over TLS through bitmap b1.
    let mut written = 0;
    for i in 0..5u64 {
        let offset = (i * 4 + 1) << 20;
        qemu_io(
            "qcow2",
            &img,
            &format!("write -P {} {offset} 200k", 0x11 * (i + 1)),
        );
        written += 200 * 1024;
    }
    qemu_img(&["bitmap", "--add", s(&img), "b2"]);
    let delta = {
        let server = QemuNbd::start(&img, &pki, &["--bitmap", "b1"]);
        backup_url(
            &repo,
            "vm",
            &server.url(&format!("{certs}&bitmap=b1&track=b2")),
            &["--reference", "latest"],
        )
    };
    let d = &delta.json()["disks"][0];
    assert_eq!(d["mode"], "delta", "{delta}");
    let read = d["bytes_read"].as_u64().unwrap();
    assert!(
        read >= written && read < size / 4,
        "a delta read {read} bytes for {written} written: {delta}"
    );
    convert_to_raw(&img, "qcow2", &expected);
    std::fs::remove_file(t.path().join("restored.raw")).ok();
    assert_restores(&repo, &delta, &expected, t.path());

    // --tls-ca where no disk uses TLS is a usage error.
    backup_url(&repo, "vm", s(&raw), &["--tls-ca", s(&pki.ca())])
        .expect_code(2)
        .stderr_has("--tls-ca");
    verify(&repo).ok();
}
