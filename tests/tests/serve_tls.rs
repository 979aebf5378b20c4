//! `tessera serve --tls-cert/--tls-key` and sync with `https://` URLs, against certificates
//! made by the `openssl` CLI (push and pull, vanished clients and killed pushes run over both
//! schemes in `serve_both.rs`): the certificate's name works as well as the address, and
//! `--tls-ca` serves the https:// side of a server-to-server sync; a client that does not trust the certificate (no `--tls-ca`, another CA, a
//! certificate for another host) refuses before sending anything; a plain-HTTP client gets
//! no HTTP answer and is told so; a wrong token over TLS still gets 401; bad certificate
//! and key files are refused with a message naming the file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_tests::remote::{localhost_cert, make_cert, Cert, Transport};
use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, mutate, pack_files, restored_sha, seed,
    sha256_file, tessera, tessera_cmd, token_file, token_file_named, verify, wait_until, DataGen,
    ImageSpec, KillOnDrop, Out, Served,
};

const MIB: u64 = 1 << 20;

/// `tessera serve` with TLS, serving `cert`.
fn serve_tls(repo: &Path, token_file: &Path, cert: &Cert) -> Served {
    Transport::Https(cert.clone()).serve(repo, token_file, &[])
}

/// `tessera --json sync SRC DST --token-file TOKEN`, trusting `ca` if given.
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

/// Over TLS, the name in the certificate works as well as the address, and `--tls-ca`
/// serves the https:// side of a sync between two servers without getting in the way of
/// the http:// one. (Push and pull themselves are in `serve_both.rs`.)
#[test]
fn host_name_and_server_to_server_over_https() {
    let mut gen = DataGen::new(seed("serve-tls-names"));
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name);
    let (src, mid, dst, last) = (w("a"), w("b"), w("c"), w("e"));
    let shas = source_repo(&src, &w("disk.img"), &mut gen);
    let ids = list_ids(&src);
    for r in [&mid, &dst, &last] {
        init_repo(r, &[]);
    }
    let token = token_file(work.path(), "tls-token");
    let cert = localhost_cert(work.path());
    let server = serve_tls(&mid, &token, &cert);
    sync(src.to_str().unwrap(), &server.url, &token, Some(&cert.cert)).ok();

    // Pulled by the name in the certificate rather than the address.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    assert_ne!(by_name, server.url);
    sync(&by_name, dst.to_str().unwrap(), &token, Some(&cert.cert)).ok();
    assert_eq!(list_ids(&dst), ids);

    // Remote to remote, plain HTTP source to HTTPS destination.
    let plain = Transport::Http.serve(&dst, &token, &[]);
    let tls = serve_tls(&last, &token, &cert);
    sync(&plain.url, &tls.url, &token, Some(&cert.cert)).ok();
    assert_eq!(list_ids(&last), ids);
    for (id, sha) in ids.iter().zip(&shas) {
        assert_eq!(&restored_sha(&last, id, work.path()), sha, "{id}");
    }
    verify(&last).ok();
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
    let wrong = token_file_named(work.path(), "wrong", "wrong-token");
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
