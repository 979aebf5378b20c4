//! `tessera serve --tokens FILE` with tokens made by `tessera token` (SPEC.md §22.3): what
//! each role may and may not do, through the real binary; the tokens file holds no token;
//! a removed token stops working on a running server; the audit log names tokens, never
//! shows them; a quota refuses before storing and leaves a repository that verifies; unsafe
//! setups (readable token files, plain HTTP off loopback) are refused.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_tests::remote::Transport;
use tessera_tests::{
    backup_json, init_repo, list_ids, list_json, make_image, restored_sha, seed, sha256_file,
    start_serve_args, tessera, token_add, token_file_named, verify, wait_until, DataGen, ImageSpec,
    KillOnDrop, Out, Served, Value,
};

const MIB: u64 = 1 << 20;

fn serve_tokens(repo: &Path, tokens: &Path, audit: &Path) -> Served {
    start_serve_args(
        repo,
        &[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--audit-log".as_ref(),
            audit.as_os_str(),
        ],
    )
}

fn request(url: &str, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    Transport::Http.request(url, method, path, Some(token), body)
}

/// `tessera --json sync SRC DST --token-file FILE [--series S]`.
fn sync(src: &str, dst: &str, token_file: &Path, series: Option<&str>) -> Out {
    let mut args = vec![
        "--json".to_string(),
        "sync".into(),
        src.into(),
        dst.into(),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    if let Some(s) = series {
        args.extend(["--series".into(), s.into()]);
    }
    tessera(args)
}

/// Repository `a` with one backup of series `vm-web` and one of `db`; returns the image
/// digests by series.
fn two_series(work: &Path, gen: &mut DataGen) -> (PathBuf, String, String) {
    let a = work.join("a");
    init_repo(&a, &[]);
    let (web, db) = (work.join("web.img"), work.join("db.img"));
    make_image(&web, ImageSpec::mixed(4 * MIB), gen);
    make_image(&db, ImageSpec::mixed(4 * MIB), gen);
    backup_json(&a, "vm-web", &[("d0", &web)]);
    backup_json(&a, "db", &[("d0", &db)]);
    (a, sha256_file(&web), sha256_file(&db))
}

fn snapshot_of(repo: &Path, series: &str) -> String {
    list_json(repo)
        .into_iter()
        .find(|s| s["series"] == series)
        .and_then(|s| s["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no snapshot of {series} in {}", repo.display()))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, role by role")]
fn roles_series_and_the_audit_log() {
    let mut gen = DataGen::new(seed("serve-roles"));
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let (a, web_sha, _) = two_series(work.path(), &mut gen);
    let (b, pulled) = (w("b"), w("pulled"));
    init_repo(&b, &[]);
    init_repo(&pulled, &[]);
    let tokens = w("tokens");
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let backup = token_add(&tokens, "backup", "vm*", "web-backup", None);
    let read = token_add(&tokens, "read", "*", "puller", None);
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the tokens file is made private");
    let text = std::fs::read_to_string(&tokens).unwrap();
    for t in [&admin, &backup, &read] {
        assert!(!text.contains(t.as_str()), "a token is stored in the file");
    }
    let listed = tessera(["--json", "token", "list", tokens.to_str().unwrap()]);
    listed.ok();
    let names: Vec<(String, String, String)> = listed.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap().to_string();
            (s("name"), s("role"), s("series"))
        })
        .collect();
    assert_eq!(
        names,
        [
            ("ops".into(), "admin".into(), "*".into()),
            ("web-backup".into(), "backup".into(), "vm*".into()),
            ("puller".into(), "read".into(), "*".into())
        ]
    );
    for t in [&admin, &backup, &read] {
        assert!(!listed.stdout.contains(t.as_str()));
    }
    let file = |name: &str, token: &str| token_file_named(work.path(), name, token);
    let (admin_f, backup_f, read_f) = (
        file("admin.tok", &admin),
        file("backup.tok", &backup),
        file("read.tok", &read),
    );
    let audit = w("audit.jsonl");
    let server = serve_tokens(&b, &tokens, &audit);
    let url = server.url.as_str();
    let a_s = a.to_str().unwrap();

    // backup: pushes its own series; another series is refused and nothing is published.
    sync(a_s, url, &backup_f, Some("vm-web")).ok();
    let denied = sync(a_s, url, &backup_f, Some("db"));
    denied
        .expect_code(1)
        .stderr_has("403")
        .stderr_has("may publish only into series matching");
    let on_b: Vec<Value> = list_json(&b);
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0]["series"], "vm-web");
    verify(&b).ok();
    // admin pushes everything.
    sync(a_s, url, &admin_f, None).ok();
    assert_eq!(list_ids(&b).len(), 2);
    let (web_id, db_id) = (snapshot_of(&b, "vm-web"), snapshot_of(&b, "db"));

    // backup sees only its series' catalogue entries and snapshot files, reads no objects.
    let (status, listing) = request(url, "GET", "/v1/snapshots", &backup, b"");
    assert_eq!(status, 200);
    assert!(
        listing.contains(&web_id) && !listing.contains(&db_id),
        "{listing}"
    );
    assert_eq!(
        request(url, "GET", &format!("/v1/snapshots/{web_id}"), &backup, b"").0,
        200
    );
    assert_eq!(
        request(url, "GET", &format!("/v1/snapshots/{db_id}"), &backup, b"").0,
        404
    );
    let (status, body) = request(url, "POST", "/v1/get/chunk", &backup, &[0u8; 32]);
    assert_eq!(status, 403, "{body}");
    let snap_db = std::fs::read(a.join("snapshots").join(format!("{db_id}.snap"))).unwrap();
    let (status, body) = request(url, "POST", "/v1/publish", &backup, &snap_db);
    assert_eq!(status, 403, "{body}");
    // Its own series cannot be pulled either: the objects are not readable with it.
    sync(url, pulled.to_str().unwrap(), &backup_f, None)
        .expect_code(1)
        .stderr_has("403");
    assert!(list_ids(&pulled).is_empty());

    // read: no put, publish or have; pulls everything, which restores.
    for (method, path) in [
        ("POST", "/v1/put/chunk"),
        ("POST", "/v1/publish"),
        ("POST", "/v1/have/chunk"),
    ] {
        let (status, body) = request(url, method, path, &read, b"");
        assert_eq!(status, 403, "{path}: {body}");
    }
    sync(url, pulled.to_str().unwrap(), &read_f, None).ok();
    assert_eq!(list_ids(&pulled).len(), 2);
    assert_eq!(restored_sha(&pulled, &web_id, work.path()), web_sha);

    // No token, a wrong one: 401. No endpoint removes anything, for any token.
    assert_eq!(
        Transport::Http
            .request(url, "GET", "/v1/snapshots", None, b"")
            .0,
        401
    );
    assert_eq!(request(url, "GET", "/v1/info", &"0".repeat(64), b"").0, 401);
    for path in [
        "/v1/forget",
        "/v1/prune",
        "/v1/compact",
        "/v1/snapshots/x/forget",
    ] {
        for t in [&admin, &backup] {
            let status = request(url, "POST", path, t, b"").0;
            assert!(status == 404 || status == 400, "{path}: {status}");
        }
    }

    // A removed token is refused by the running server.
    tessera(["token", "remove", tokens.to_str().unwrap(), "puller"]).ok();
    assert_eq!(request(url, "GET", "/v1/info", &read, b"").0, 401);
    assert_eq!(request(url, "GET", "/v1/info", &admin, b"").0, 200);

    // A tokens file that no longer loads (a slip while editing it) fails closed: no token
    // works until it loads again.
    let good = std::fs::read(&tokens).unwrap();
    let mut broken = good.clone();
    broken.extend_from_slice(b"this line is not a token entry\n");
    std::fs::write(&tokens, &broken).unwrap();
    assert_eq!(request(url, "GET", "/v1/info", &admin, b"").0, 401);
    std::fs::write(&tokens, &good).unwrap();
    assert_eq!(request(url, "GET", "/v1/info", &admin, b"").0, 200);

    // The audit log: one JSON line per request, token names, never tokens.
    let logged = std::fs::read_to_string(&audit).unwrap();
    for t in [&admin, &backup, &read] {
        assert!(!logged.contains(t.as_str()), "a token in the audit log");
    }
    let lines: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Event lines (SPEC §22: `renew`, `recovery`) carry time, event and note; here the
    // admin's push renews the pages the refused backup push left unreferenced.
    let (events, lines): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|l| l.get("event").is_some());
    for e in &events {
        for field in ["time", "event", "note"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "renew" && e["note"].as_str().unwrap().contains("\"ops\"")),
        "no renew event for the admin's push: {events:?}"
    );
    for l in &lines {
        for field in [
            "time",
            "peer",
            "token",
            "method",
            "path",
            "bytes_in",
            "bytes_out",
            "status",
            "duration_ms",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
    }
    let has = |token: Value, path: &str, status: u16| {
        lines
            .iter()
            .any(|l| l["token"] == token && l["path"] == path && l["status"] == status)
    };
    assert!(has("web-backup".into(), "/v1/publish", 403));
    assert!(has("web-backup".into(), "/v1/publish", 200));
    assert!(has("puller".into(), "/v1/get/chunk", 200));
    assert!(has(Value::Null, "/v1/snapshots", 401));
    let put = lines
        .iter()
        .find(|l| l["path"] == "/v1/put/chunk" && l["status"] == 200)
        .unwrap();
    assert!(put["bytes_in"].as_u64().unwrap() > MIB, "{put}");
    assert!(put["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    verify(&b).ok();
}

/// A backup token over its quota is refused (507, with what it used) before anything of the
/// refused request is stored; the repository verifies, the usage is kept across restarts,
/// and another token is not affected.
#[test]
fn a_quota_refuses_before_storing_and_the_repository_verifies() {
    let mut gen = DataGen::new(seed("serve-quota"));
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let (a, b) = (w("a"), w("b"));
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = w("disk.img");
    // Random data (incompressible): 3 MiB stored, then 4 MiB more.
    let random = |size| ImageSpec {
        weights: (0, 0, 1),
        ..ImageSpec::mixed(size)
    };
    make_image(&disk, random(3 * MIB), &mut gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    let tokens = w("tokens");
    let small = token_add(&tokens, "backup", "*", "small", Some("5M"));
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let (small_f, admin_f) = (
        token_file_named(work.path(), "small.tok", &small),
        token_file_named(work.path(), "admin.tok", &admin),
    );
    let audit = w("audit.jsonl");
    let used = || {
        let out = tessera(["--json", "token", "list", tokens.to_str().unwrap()]);
        out.ok();
        out.json()["tokens"][0]["used"].as_u64().unwrap()
    };
    let a_s = a.to_str().unwrap();
    let first = {
        let server = serve_tokens(&b, &tokens, &audit);
        sync(a_s, &server.url, &small_f, None).ok();
        let first = list_ids(&b);
        assert_eq!(first, list_ids(&a));
        let after_first = used();
        assert!(
            after_first > 3 * MIB && after_first < 4 * MIB,
            "used {after_first}"
        );
        make_image(&disk, random(4 * MIB), &mut gen);
        backup_json(&a, "vm", &[("d0", &disk)]);
        let refused = sync(a_s, &server.url, &small_f, None);
        refused
            .expect_code(1)
            .stderr_has("507")
            .stderr_has("quota of 5242880 bytes");
        assert_eq!(list_ids(&b), first);
        assert_eq!(used(), after_first, "a refused put is not charged");
        verify(&b).ok();
        first
    };
    // Counted across a restart; an unlimited token completes the push.
    let server = serve_tokens(&b, &tokens, &audit);
    let before = used();
    sync(a_s, &server.url, &small_f, None).expect_code(1);
    assert_eq!(used(), before);
    assert_eq!(list_ids(&b), first);
    sync(a_s, &server.url, &admin_f, None).ok();
    assert_eq!(list_ids(&b), list_ids(&a));
    verify(&b).ok();
}

/// Runs `tessera ARGS` that must exit by itself within 20 s.
fn run_to_exit(args: &[std::ffi::OsString]) -> Out {
    let mut child = KillOnDrop(Some(tessera_tests::tessera_cmd(args).spawn().unwrap()));
    let exited = wait_until(Duration::from_secs(20), || {
        child
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some())
    });
    assert!(exited, "tessera {args:?} did not exit");
    let names: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    tessera_tests::finish_child(child.0.take().unwrap(), &names)
}

#[test]
fn unsafe_setups_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("r");
    init_repo(&repo, &[]);
    let tokens = work.path().join("tokens");
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let token = token_file_named(work.path(), "t", &admin);
    let serve = |extra: &[&OsStr]| {
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), repo.clone().into()];
        args.extend(extra.iter().map(|a| a.to_os_string()));
        run_to_exit(&args)
    };

    // Token files that group or others may read: refused (exit 5).
    for f in [&tokens, &token] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for flag in ["--tokens", "--token-file"] {
        let file = if flag == "--tokens" { &tokens } else { &token };
        let out = serve(&[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            flag.as_ref(),
            file.as_os_str(),
        ]);
        out.expect_code(5).stderr_has("chmod 600");
        assert!(out.stdout.is_empty(), "{out}");
    }
    let client = sync(repo.to_str().unwrap(), "http://127.0.0.1:9", &token, None);
    client.expect_code(5).stderr_has("chmod 600");
    tessera(["token", "list", tokens.to_str().unwrap()])
        .expect_code(5)
        .stderr_has("chmod 600");
    for f in [&tokens, &token] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A private file in a directory others may write: they could swap in their own file.
    let open_dir = work.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exposed = open_dir.join("tokens");
    std::fs::copy(&tokens, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o600)).unwrap();
    serve(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tokens".as_ref(),
        exposed.as_os_str(),
    ])
    .expect_code(5)
    .stderr_has("group or others may write");

    // Plain HTTP on an address that is not loopback: a usage error (exit 2).
    let open = serve(&[
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--tokens".as_ref(),
        tokens.as_os_str(),
    ]);
    open.expect_code(2)
        .stderr_has("not a loopback address")
        .stderr_has("--tls-cert")
        .stderr_has("--insecure-http");
    let insecure = start_serve_args(
        &repo,
        &[
            "--listen".as_ref(),
            "0.0.0.0:0".as_ref(),
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--insecure-http".as_ref(),
        ],
    );
    assert!(
        insecure.url.starts_with("http://0.0.0.0:"),
        "{}",
        insecure.url
    );

    // Exactly one of --tokens and --token-file.
    serve(&["--listen".as_ref(), "127.0.0.1:0".as_ref()]).expect_code(2);
    serve(&[
        "--tokens".as_ref(),
        tokens.as_os_str(),
        "--token-file".as_ref(),
        token.as_os_str(),
    ])
    .expect_code(2);
}
