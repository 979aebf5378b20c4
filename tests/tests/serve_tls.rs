//! `tessera serve --tls-cert/--tls-key` and sync with `https://` URLs, against certificates
//! made by the `openssl` CLI: push and pull with `--tls-ca` restore byte-identical and
//! verify; a client that does not trust the certificate (no `--tls-ca`, another CA, a
//! certificate for another host) refuses before sending anything; a plain-HTTP client gets
//! no HTTP answer and is told so; a wrong token over TLS still gets 401; bad certificate
//! and key files are refused with a message naming the file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, mutate, pack_files, restored_sha, seed,
    sha256_file, slots_held_then_freed, start_serve, tessera, tessera_cmd, token_file, vanish,
    verify, wait_until, DataGen, ImageSpec, KillOnDrop, Out, Served,
};

const MIB: u64 = 1 << 20;

/// A self-signed certificate and its key, made by the `openssl` CLI.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

/// A self-signed certificate `name` for `subject_alt_name` (e.g. `IP:127.0.0.1,DNS:localhost`).
fn make_cert(dir: &Path, name: &str, cn: &str, subject_alt_name: &str) -> Cert {
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

fn localhost_cert(dir: &Path) -> Cert {
    make_cert(dir, "localhost", "localhost", "IP:127.0.0.1,DNS:localhost")
}

fn serve_tls(repo: &Path, token_file: &Path, cert: &Cert) -> Served {
    serve(repo, token_file, Some(cert), &[])
}

/// `tessera serve`, with TLS when `cert` is given, and `more` arguments.
fn serve(repo: &Path, token_file: &Path, cert: Option<&Cert>, more: &[&str]) -> Served {
    let mut extra: Vec<&std::ffi::OsStr> = more.iter().map(std::convert::AsRef::as_ref).collect();
    if let Some(c) = cert {
        extra.extend([
            "--tls-cert".as_ref(),
            c.cert.as_os_str(),
            "--tls-key".as_ref(),
            c.key.as_os_str(),
        ]);
    }
    let served = start_serve(repo, token_file, &extra);
    let scheme = if cert.is_some() { "https" } else { "http" };
    assert!(
        served.url.starts_with(&format!("{scheme}://127.0.0.1:")),
        "{}",
        served.url
    );
    served
}

fn sync(src: &str, dst: &str, token_file: &Path, ca: Option<&Path>) -> Out {
    let mut args = vec![
        "--json".to_string(),
        "sync".into(),
        src.into(),
        dst.into(),
        "--token-file".into(),
        token_file.to_str().unwrap().into(),
    ];
    if let Some(ca) = ca {
        args.extend(["--tls-ca".into(), ca.to_str().unwrap().into()]);
    }
    tessera(args)
}

/// Runs a command that must exit by itself (a `serve` that wrongly starts is killed after
/// 20 s and fails the test instead of hanging it).
fn run_to_exit(args: &[&std::ffi::OsStr]) -> Out {
    let mut child = KillOnDrop(Some(tessera_cmd(args).spawn().unwrap()));
    let exited = wait_until(Duration::from_secs(20), || {
        child
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some())
    });
    let names: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    assert!(exited, "`tessera {}` did not exit", names.join(" "));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    tessera_tests::finish_child(child.0.take().unwrap(), &names)
}

fn state(repo: &Path) -> (Vec<String>, Vec<PathBuf>) {
    (list_ids(repo), pack_files(repo))
}

/// A repository with two snapshots of a changing disk; returns the disk's SHA-256 at each.
fn source_repo(repo: &Path, disk: &Path, gen: &mut DataGen) -> Vec<String> {
    init_repo(repo, &[]);
    make_image(disk, ImageSpec::mixed(16 * MIB), gen);
    backup_json(repo, "vm", &[("d0", disk)]);
    let first = sha256_file(disk);
    mutate(disk, gen, 8, 256 * 1024, (1, 2, 2));
    backup_json(repo, "vm", &[("d0", disk)]);
    vec![first, sha256_file(disk)]
}

#[test]
fn push_and_pull_over_https_restore_identical() {
    let mut gen = DataGen::new(seed("serve-tls-flow"));
    let work = tempfile::tempdir().unwrap();
    let (src, mid, dst) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("c"),
    );
    let disk = work.path().join("disk.img");
    let shas = source_repo(&src, &disk, &mut gen);
    init_repo(&mid, &[]);
    init_repo(&dst, &[]);
    let token = token_file(work.path(), "tls-token\n");
    let cert = localhost_cert(work.path());
    let server = serve_tls(&mid, &token, &cert);

    let pushed = sync(src.to_str().unwrap(), &server.url, &token, Some(&cert.cert));
    pushed.ok();
    assert_eq!(
        pushed.json()["snapshots_copied"].as_array().unwrap().len(),
        2,
        "{pushed}"
    );
    let ids = list_ids(&src);
    assert_eq!(list_ids(&mid), ids);
    verify(&mid).ok();

    let pulled = sync(&server.url, dst.to_str().unwrap(), &token, Some(&cert.cert));
    pulled.ok();
    assert_eq!(list_ids(&dst), ids);
    verify(&dst).ok();
    // Byte-identical to the disk as it was at each backup (independent oracle: the image
    // files' own SHA-256), in both the pushed-to and the pulled-to repository.
    for (id, sha) in ids.iter().zip(&shas) {
        assert_eq!(&restored_sha(&mid, id, work.path()), sha, "{id} pushed");
        assert_eq!(&restored_sha(&dst, id, work.path()), sha, "{id} pulled");
    }

    // The name in the certificate works as well as the address.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    let again = sync(&by_name, dst.to_str().unwrap(), &token, Some(&cert.cert));
    again.ok();
    assert_eq!(again.json()["raw_bytes_transferred"], 0, "{again}");

    // Remote to remote, plain HTTP source to HTTPS destination: `--tls-ca` serves the
    // https:// side and does not get in the way of the http:// one.
    let last = work.path().join("e");
    init_repo(&last, &[]);
    let plain = serve(&dst, &token, None, &[]);
    let tls = serve_tls(&last, &token, &cert);
    sync(&plain.url, &tls.url, &token, Some(&cert.cert)).ok();
    assert_eq!(list_ids(&last), ids);
    assert_eq!(
        &restored_sha(&last, ids.last().unwrap(), work.path()),
        shas.last().unwrap()
    );
}

#[test]
fn untrusted_certificates_are_refused_and_nothing_is_written() {
    let mut gen = DataGen::new(seed("serve-tls-untrusted"));
    let work = tempfile::tempdir().unwrap();
    let (src, mid, dst) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("c"),
    );
    source_repo(&src, &work.path().join("disk.img"), &mut gen);
    init_repo(&mid, &[]);
    init_repo(&dst, &[]);
    let token = token_file(work.path(), "tls-token");
    let cert = localhost_cert(work.path());
    // Same names, another key: trusting it must not make the server's certificate trusted.
    let impostor = make_cert(
        work.path(),
        "impostor",
        "localhost",
        "IP:127.0.0.1,DNS:localhost",
    );
    let server = serve_tls(&mid, &token, &cert);
    let (mid_before, dst_before) = (state(&mid), state(&dst));

    for ca in [None, Some(impostor.cert.as_path())] {
        let push = sync(src.to_str().unwrap(), &server.url, &token, ca);
        push.expect_code(1)
            .stderr_has("certificate verify failed")
            .stderr_has("--tls-ca");
        let pull = sync(&server.url, dst.to_str().unwrap(), &token, ca);
        pull.expect_code(1).stderr_has("certificate verify failed");
    }
    assert_eq!(state(&mid), mid_before);
    assert_eq!(state(&dst), dst_before);

    // A trusted certificate for another host name: host-name verification refuses it.
    let other = make_cert(work.path(), "other", "other.example", "DNS:other.example");
    let other_server = serve_tls(&dst, &token, &other);
    let push = sync(
        src.to_str().unwrap(),
        &other_server.url,
        &token,
        Some(&other.cert),
    );
    push.expect_code(1).stderr_has("mismatch");
    assert_eq!(state(&dst), dst_before);

    // The server is still serving: with the right CA the push goes through.
    sync(src.to_str().unwrap(), &server.url, &token, Some(&cert.cert)).ok();
    assert_eq!(list_ids(&mid), list_ids(&src));
}

#[test]
fn plain_http_and_wrong_token_against_tls_server_fail() {
    let mut gen = DataGen::new(seed("serve-tls-plain"));
    let work = tempfile::tempdir().unwrap();
    let (src, mid) = (work.path().join("a"), work.path().join("b"));
    source_repo(&src, &work.path().join("disk.img"), &mut gen);
    init_repo(&mid, &[]);
    let token = token_file(work.path(), "right-token");
    let wrong = work.path().join("wrong");
    std::fs::write(&wrong, "wrong-token").unwrap();
    let cert = localhost_cert(work.path());
    let server = serve_tls(&mid, &token, &cert);
    let before = state(&mid);

    // A plain-HTTP client: no HTTP answer, and the error says to use https://.
    let http_url = server.url.replace("https://", "http://");
    let plain = sync(src.to_str().unwrap(), &http_url, &token, None);
    plain.expect_code(1).stderr_has("use an https:// URL");
    // The same at the byte level: a plain request gets no `HTTP/1.1` status line.
    let addr = server.url.strip_prefix("https://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right-token\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(state(&mid), before);

    // `--tls-ca` without an https:// side is a usage error rather than silently ignored.
    sync(src.to_str().unwrap(), &http_url, &token, Some(&cert.cert))
        .expect_code(2)
        .stderr_has("only to an https:// side");
    let local = work.path().join("local");
    init_repo(&local, &[]);
    sync(
        src.to_str().unwrap(),
        local.to_str().unwrap(),
        &token,
        Some(&cert.cert),
    )
    .expect_code(2)
    .stderr_has("only to an https:// side");
    assert!(list_ids(&local).is_empty());

    // Wrong token over TLS: 401, nothing stored.
    let denied = sync(src.to_str().unwrap(), &server.url, &wrong, Some(&cert.cert));
    denied.expect_code(1).stderr_has("401");
    let pulled = work.path().join("pulled");
    init_repo(&pulled, &[]);
    let pull = sync(
        &server.url,
        pulled.to_str().unwrap(),
        &wrong,
        Some(&cert.cert),
    );
    pull.expect_code(1).stderr_has("401");
    assert_eq!(state(&mid), before);
    assert!(list_ids(&pulled).is_empty());

    // The right token over TLS works.
    sync(src.to_str().unwrap(), &server.url, &token, Some(&cert.cert)).ok();
    assert_eq!(list_ids(&mid), list_ids(&src));
    verify(&mid).ok();
}

#[test]
fn bad_certificate_and_key_files_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("r");
    init_repo(&repo, &[]);
    let token = token_file(work.path(), "t");
    let cert = localhost_cert(work.path());
    let other = make_cert(work.path(), "other", "localhost", "DNS:localhost");
    let garbage = work.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let missing = work.path().join("missing.pem");

    let serve = |cert: Option<&Path>, key: Option<&Path>| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "serve".as_ref(),
            repo.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--token-file".as_ref(),
            token.as_os_str(),
        ];
        if let Some(c) = cert {
            args.extend(["--tls-cert".as_ref(), c.as_os_str()]);
        }
        if let Some(k) = key {
            args.extend(["--tls-key".as_ref(), k.as_os_str()]);
        }
        run_to_exit(&args)
    };
    // Both or neither.
    serve(Some(&cert.cert), None)
        .expect_code(2)
        .stderr_has("--tls-key");
    serve(None, Some(&cert.key))
        .expect_code(2)
        .stderr_has("--tls-cert");
    // Each wrong file is named, with what is wrong with it.
    let cases: [(&Path, &Path, &str); 5] = [
        (&missing, &cert.key, "missing.pem"),
        (&cert.cert, &missing, "missing.pem"),
        (&garbage, &cert.key, "holds no PEM certificate"),
        (
            &cert.cert,
            &cert.cert,
            "is not an unencrypted PEM private key",
        ),
        (
            &cert.cert,
            &other.key,
            "does not belong to the first certificate",
        ),
    ];
    for (c, k, says) in cases {
        let out = serve(Some(c), Some(k));
        out.expect_code(1).stderr_has(says);
        assert!(out.stdout.is_empty(), "{out}");
    }

    // A garbage --tls-ca is refused before connecting.
    let served = serve_tls(&repo, &token, &cert);
    let dst = work.path().join("x");
    init_repo(&dst, &[]);
    sync(&served.url, dst.to_str().unwrap(), &token, Some(&garbage))
        .expect_code(1)
        .stderr_has("garbage.pem");
}

/// A push over TLS killed at a random moment (mid-handshake, mid-request) leaves the server
/// serving and the repository consistent; the next push completes it.
#[test]
fn killed_push_over_tls_resumes() {
    use rand::{Rng, SeedableRng};
    let run_seed = seed("serve-tls-kill");
    let mut gen = DataGen::new(run_seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("a");
    let disk = work.path().join("disk.img");
    let shas = source_repo(&src, &disk, &mut gen);
    let ids = list_ids(&src);
    let token = token_file(work.path(), "t");
    let cert = localhost_cert(work.path());
    for trial in 0..2 {
        let dst = work.path().join(format!("b{trial}"));
        init_repo(&dst, &[]);
        let server = serve_tls(&dst, &token, &cert);
        let child = tessera_cmd([
            "sync",
            src.to_str().unwrap(),
            &server.url,
            "--token-file",
            token.to_str().unwrap(),
            "--tls-ca",
            cert.cert.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
        let mut child = KillOnDrop(Some(child));
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        if let Some(c) = child.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let listed = list_ids(&dst);
        assert_eq!(listed[..], ids[..listed.len()], "trial {trial}");
        sync(src.to_str().unwrap(), &server.url, &token, Some(&cert.cert)).ok();
        assert_eq!(list_ids(&dst), ids, "trial {trial}");
        verify(&dst).ok();
        assert_eq!(
            &restored_sha(&dst, ids.last().unwrap(), work.path()),
            shas.last().unwrap(),
            "trial {trial}"
        );
    }
}

/// Peers that connect and never finish (or never start) a TLS handshake do not keep
/// others out: a push with several of them open goes through at once.
#[test]
fn stalled_handshakes_do_not_block_other_clients() {
    let mut gen = DataGen::new(seed("serve-tls-stall"));
    let work = tempfile::tempdir().unwrap();
    let (src, mid) = (work.path().join("a"), work.path().join("b"));
    source_repo(&src, &work.path().join("disk.img"), &mut gen);
    init_repo(&mid, &[]);
    let token = token_file(work.path(), "t");
    let cert = localhost_cert(work.path());
    let server = serve_tls(&mid, &token, &cert);
    let addr = server.url.strip_prefix("https://").unwrap();
    // Silent connections, and one that sends half a TLS record header and stops.
    let mut stalled: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&[0x16, 0x03]).unwrap();
    stalled.push(half);
    std::thread::sleep(Duration::from_millis(200));

    // (A server that handshakes on its accepting thread never answers this push: it would
    // be killed after 20 s and fail the test.)
    let args = [
        "sync",
        src.to_str().unwrap(),
        &server.url,
        "--token-file",
        token.to_str().unwrap(),
        "--tls-ca",
        cert.cert.to_str().unwrap(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::convert::AsRef::as_ref).collect();
    run_to_exit(&args).ok();
    assert_eq!(list_ids(&mid), list_ids(&src));
    verify(&mid).ok();
    drop(stalled);
}

/// A TLS connection to `addr` that trusts `cert` (for `localhost`).
fn tls_connect(addr: &str, cert: &Cert) -> openssl::ssl::SslStream<TcpStream> {
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    builder.set_ca_file(&cert.cert).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    builder.build().connect("localhost", tcp).unwrap()
}

/// The status of one HTTPS request without a body.
fn https_status(addr: &str, cert: &Cert, path: &str, token: &str) -> u16 {
    let mut tls = tls_connect(addr, cert);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// A TLS client that vanished mid-body (power loss: no FIN, no reset) must free its request
/// slot as soon as TCP keepalive finds it gone, long before the body's deadline (SPEC.md
/// §22.3; the plain-HTTP case is in `serve.rs`).
#[test]
fn vanished_tls_clients_release_their_slots() {
    use tessera_engine::sync::http::server::MAX_REQUESTS;

    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("r");
    init_repo(&repo, &[]);
    let token = token_file(work.path(), "t0ken");
    let cert = localhost_cert(work.path());
    let keepalive = 4;
    let server = serve(
        &repo,
        &token,
        Some(&cert),
        &["--keepalive", &keepalive.to_string()],
    );
    let addr = server.url.strip_prefix("https://").unwrap().to_string();
    let info = || https_status(&addr, &cert, "/v1/info", "t0ken");
    assert_eq!(info(), 200);

    let clients: Vec<_> = (0..MAX_REQUESTS)
        .map(|_| {
            let mut tls = tls_connect(&addr, &cert);
            tls.write_all(
                b"POST /v1/put/chunk HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer t0ken\r\nContent-Length: 1000000\r\n\r\n0123456789",
            )
            .unwrap();
            tls
        })
        .collect();
    // Past the server's delayed acknowledgements (at most 200 ms): a packet arriving after
    // a client vanished would be answered with a reset at once.
    std::thread::sleep(Duration::from_millis(300));
    for tls in clients {
        vanish(tls.get_ref());
    }
    let freed = slots_held_then_freed(keepalive, info);
    eprintln!("slots freed {freed:?} after the TLS clients vanished");
    verify(&repo).ok();
}
