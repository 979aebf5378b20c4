//! What `tessera serve` and its clients may trust of each other (SPEC.md §22.1, §22.3),
//! through the real binary: a compromised `backup` token cannot flood its series with
//! snapshots (one per series per `--min-publish-interval`) nor claim the future; damage the
//! server finds in its own repository reaches the client as damage (exit 4); every refusal
//! after the token was recognised names the token in the audit log; a `read` token limited
//! to some series cannot fetch the manifest pages of others; the client does not send its
//! token over plain HTTP to a host off loopback unless told to.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_engine::Repository;
use tessera_format::SnapshotId;
use tessera_tests::remote::Transport;
use tessera_tests::{
    back_up_a_damaged_victim, backup_json, init_repo, list_ids, list_json, make_image, mutate,
    seed, snapshot_id, start_serve, start_serve_args, tessera, token_add, token_file,
    token_file_named, verify, DataGen, ImageSpec, Out, Served, Value,
};

const MIB: u64 = 1 << 20;

fn request(url: &str, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    Transport::Http.request(url, method, path, Some(token), body)
}

/// `tessera --json sync SRC DST --token-file FILE EXTRA...`.
fn sync(src: &str, dst: &str, token_file: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "--json".to_string(),
        "sync".into(),
        src.into(),
        dst.into(),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    tessera(args)
}

/// `tessera serve REPO --tokens TOKENS --audit-log AUDIT EXTRA...`.
fn serve(repo: &Path, tokens: &Path, audit: &Path, extra: &[&str]) -> Served {
    let mut args: Vec<&OsStr> = vec![
        "--tokens".as_ref(),
        tokens.as_os_str(),
        "--audit-log".as_ref(),
        audit.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    start_serve_args(repo, &args)
}

/// Snapshot `id` of `repo` with its time set to `time_us` (same pages): a forged snapshot a
/// compromised client could publish without uploading anything. Returns its file.
fn retimed(repo: &Path, id: &str, time_us: i64) -> Vec<u8> {
    let r = Repository::open(repo).unwrap();
    let mut s = r.load_snapshot(id.parse::<SnapshotId>().unwrap()).unwrap();
    s.header.time_us = time_us;
    s.encode().unwrap().1
}

fn time_of(repo: &Path, id: &str) -> i64 {
    let r = Repository::open(repo).unwrap();
    r.load_snapshot(id.parse::<SnapshotId>().unwrap())
        .unwrap()
        .header
        .time_us
}

fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_micros()).unwrap()
}

/// The JSON body of a refusal: `{"kind": ..., "message": ...}`.
fn refusal(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Repository `a` with two backups of series `vm-web`, oldest first.
fn two_backups(work: &Path, gen: &mut DataGen) -> (PathBuf, String, String) {
    let a = work.join("a");
    init_repo(&a, &[]);
    let disk = work.join("web.img");
    make_image(&disk, ImageSpec::mixed(4 * MIB), gen);
    let first = snapshot_id(&backup_json(&a, "vm-web", &[("d0", &disk)]));
    mutate(&disk, gen, 4, 64 * 1024, (1, 2, 2));
    let second = snapshot_id(&backup_json(&a, "vm-web", &[("d0", &disk)]));
    (a, first, second)
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: flood, future, catch-up"
)]
fn a_backup_token_cannot_flood_its_series_or_claim_the_future() {
    let mut gen = DataGen::new(seed("serve-flood"));
    let work = tempfile::tempdir().unwrap();
    let path = |n: &str| work.path().join(n);
    let (a, first, second) = two_backups(work.path(), &mut gen);
    let a_s = a.to_str().unwrap();
    let tokens = path("tokens");
    let backup = token_add(&tokens, "backup", "vm*", "web-backup", None);
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let backup_f = token_file_named(work.path(), "backup.tok", &backup);
    let admin_f = token_file_named(work.path(), "admin.tok", &admin);
    let audit = path("audit.jsonl");
    let fresh = |name: &str| {
        let repo = path(name);
        init_repo(&repo, &[]);
        repo
    };

    // Default interval (60 s): the real first snapshot goes in; a flood of forged ones
    // microseconds newer is refused, so `prune --keep-last 1` keeps the real one.
    let flooded = fresh("b");
    {
        let server = serve(&flooded, &tokens, &audit, &[]);
        sync(a_s, &server.url, &backup_f, &["--snapshot", &first]).ok();
        let real_time = time_of(&a, &first);
        for i in 1..=3 {
            let forged = retimed(&a, &first, real_time + i);
            let (status, body) = request(&server.url, "POST", "/v1/publish", &backup, &forged);
            assert_eq!(status, 429, "forged snapshot {i}: {body}");
            let answer = refusal(&body);
            assert_eq!(answer["kind"], "refused", "{body}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("--min-publish-interval"),
                "{body}"
            );
        }
        assert_eq!(list_ids(&flooded), [first.as_str()]);
        tessera(["prune", flooded.to_str().unwrap(), "--keep-last", "1"]).ok();
        assert_eq!(
            list_ids(&flooded),
            [first.as_str()],
            "nothing forged displaced it"
        );
        // An admin token (the operator's) is not limited.
        sync(a_s, &server.url, &admin_f, &[]).ok();
        assert_eq!(list_ids(&flooded), [first.as_str(), second.as_str()]);
    }
    verify(&flooded).ok();

    // Without the interval: a snapshot claiming a time 4 minutes ahead (within an
    // operator's 5-minute skew) is refused from a client, so it cannot be `latest` and
    // refuse the real client's next snapshots for minutes.
    let ahead_repo = fresh("c");
    {
        let server = serve(
            &ahead_repo,
            &tokens,
            &audit,
            &["--min-publish-interval", "0"],
        );
        sync(a_s, &server.url, &backup_f, &["--snapshot", &first]).ok();
        let ahead = retimed(&a, &first, now_us() + 240_000_000);
        let (status, body) = request(&server.url, "POST", "/v1/publish", &backup, &ahead);
        assert_eq!(status, 422, "{body}");
        let answer = refusal(&body);
        assert_eq!(answer["kind"], "refused", "{body}");
        assert!(
            answer["message"].as_str().unwrap().contains("ahead"),
            "{body}"
        );
        sync(a_s, &server.url, &backup_f, &[]).ok();
        assert_eq!(
            list_ids(&ahead_repo).len(),
            2,
            "the real next snapshot is taken"
        );
    }

    // A catch-up push of two snapshots of one series waits out a short interval.
    let caught_up = fresh("d");
    {
        let server = serve(
            &caught_up,
            &tokens,
            &audit,
            &["--min-publish-interval", "2"],
        );
        let started = Instant::now();
        let out = sync(a_s, &server.url, &backup_f, &[]);
        out.ok();
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.json()["snapshots_copied"].as_array().unwrap().len(), 2);
        assert_eq!(list_ids(&caught_up), [first.as_str(), second.as_str()]);
    }

    // An interval longer than a client waits: the second snapshot is refused (exit 5)
    // with the server's message; the first is there, the repository verifies.
    let slow = fresh("e");
    {
        let server = serve(&slow, &tokens, &audit, &["--min-publish-interval", "3600"]);
        let started = Instant::now();
        let out = sync(a_s, &server.url, &backup_f, &[]);
        out.expect_code(5).stderr_has("--min-publish-interval");
        assert_eq!(out.json()["kind"], "refused", "{out}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(list_ids(&slow), [first.as_str()]);
        verify(&slow).ok();
    }
}

#[test]
fn damage_in_the_servers_repository_reaches_the_client_as_damage() {
    let mut gen = DataGen::new(seed("serve-damage"));
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let a = w("a");
    init_repo(&a, &[]);
    let (victim, _) = back_up_a_damaged_victim(&a, &w("victim.img"), &mut gen);
    let pulled = w("pulled");
    init_repo(&pulled, &[]);
    let token = "0123456789abcdef0123456789abcdef";
    let server = start_serve(&a, &token_file(work.path(), token), &[]);
    let out = sync(
        &server.url,
        pulled.to_str().unwrap(),
        &token_file(work.path(), token),
        &["--snapshot", &victim],
    );
    out.expect_code(4);
    assert_eq!(out.json()["kind"], "damage", "{out}");
    out.stderr_has("HTTP 500");
    assert!(list_ids(&pulled).is_empty());
    verify(&pulled).ok();
}

#[test]
fn the_audit_log_names_the_token_of_every_refusal_after_it_was_recognised() {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let repo = w("r");
    init_repo(&repo, &[]);
    let tokens = w("tokens");
    let backup = token_add(&tokens, "backup", "vm*", "web-backup", None);
    let audit = w("audit.jsonl");
    let server = serve(&repo, &tokens, &audit, &[]);
    let url = server.url.as_str();
    // 403 (a role that may not read objects), 404 (no such endpoint), 413 (a body larger
    // than the endpoint takes), 401 (no token: no name).
    assert_eq!(
        request(url, "POST", "/v1/get/chunk", &backup, &[0; 32]).0,
        403
    );
    assert_eq!(request(url, "POST", "/v1/nothing", &backup, b"").0, 404);
    assert_eq!(
        request(
            url,
            "POST",
            "/v1/have/chunk",
            &backup,
            &vec![0; 65_537 * 32]
        )
        .0,
        413
    );
    assert_eq!(
        Transport::Http.request(url, "GET", "/v1/info", None, b"").0,
        401
    );
    drop(server);
    let logged = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !logged.contains(backup.as_str()),
        "a token in the audit log"
    );
    let lines: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (path, status) in [
        ("/v1/get/chunk", 403),
        ("/v1/nothing", 404),
        ("/v1/have/chunk", 413),
    ] {
        let line = lines
            .iter()
            .find(|l| l["path"] == path && l["status"] == status)
            .unwrap_or_else(|| panic!("no line for {path} {status}: {logged}"));
        assert_eq!(line["token"], "web-backup", "{line}");
    }
    let anonymous = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert!(anonymous["token"].is_null());
}

#[test]
fn a_read_token_limited_to_some_series_cannot_fetch_other_series_pages() {
    let mut gen = DataGen::new(seed("serve-scope"));
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let a = w("a");
    init_repo(&a, &[]);
    let (web, db) = (w("web.img"), w("db.img"));
    let random = ImageSpec {
        weights: (0, 0, 1),
        ..ImageSpec::mixed(4 * MIB)
    };
    make_image(&web, random, &mut gen);
    make_image(&db, random, &mut gen);
    let web_id = snapshot_id(&backup_json(&a, "vm-web", &[("d0", &web)]));
    let db_id = snapshot_id(&backup_json(&a, "db", &[("d0", &db)]));
    let pages = |id: &str| -> Vec<[u8; 32]> {
        let r = Repository::open(&a).unwrap();
        let s = r.load_snapshot(id.parse::<SnapshotId>().unwrap()).unwrap();
        s.roots.iter().flatten().map(|p| p.0).collect()
    };
    let (web_pages, db_pages) = (pages(&web_id), pages(&db_id));
    let db_only: Vec<u8> = db_pages
        .iter()
        .filter(|p| !web_pages.contains(p))
        .flatten()
        .copied()
        .collect();
    assert!(!db_only.is_empty());
    let tokens = w("tokens");
    let read = token_add(&tokens, "read", "vm*", "web-reader", None);
    let audit = w("audit.jsonl");
    let server = serve(&a, &tokens, &audit, &[]);
    let url = server.url.as_str();

    let (status, listing) = request(url, "GET", "/v1/snapshots", &read, b"");
    assert_eq!(status, 200);
    assert!(listing.contains(&web_id) && !listing.contains(&db_id));
    let path = format!("/v1/snapshots/{db_id}");
    assert_eq!(request(url, "GET", &path, &read, b"").0, 404);
    let (status, body) = request(url, "POST", "/v1/get/page", &read, &db_only[..32]);
    assert_eq!(
        status,
        404,
        "a page only db's snapshot names ({} bytes answered)",
        body.len()
    );
    let web_page: Vec<u8> = web_pages[0].to_vec();
    assert_eq!(
        request(url, "POST", "/v1/get/page", &read, &web_page).0,
        200
    );

    // Its own series pulls and restores.
    let pulled = w("pulled");
    init_repo(&pulled, &[]);
    let read_f = token_file_named(work.path(), "read.tok", &read);
    sync(url, pulled.to_str().unwrap(), &read_f, &[]).ok();
    assert_eq!(list_ids(&pulled), [web_id.as_str()]);
    verify(&pulled).ok();
    let listed: Vec<Value> = list_json(&pulled);
    assert_eq!(listed[0]["series"], "vm-web");
}

/// The first IPv4 address of this machine that is not loopback.
fn own_address() -> IpAddr {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .find(|ip| !ip.is_loopback())
        .expect("this test needs a network interface with an IPv4 address that is not loopback")
}

#[test]
fn the_client_sends_no_token_over_plain_http_off_loopback_unless_told() {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let (repo, pulled) = (w("r"), w("pulled"));
    init_repo(&repo, &[]);
    init_repo(&pulled, &[]);
    let tokens = w("tokens");
    let read = token_add(&tokens, "read", "*", "reader", None);
    let read_f = token_file_named(work.path(), "read.tok", &read);
    let audit = w("audit.jsonl");
    let server = serve(
        &repo,
        &tokens,
        &audit,
        &["--listen", "0.0.0.0:0", "--insecure-http"],
    );
    let port = server.addr().rsplit_once(':').unwrap().1;
    let url = format!("http://{}:{port}", own_address());
    let p = pulled.to_str().unwrap();

    let refused = sync(&url, p, &read_f, &[]);
    refused.expect_code(2).stderr_has("--insecure-http");
    assert_eq!(refused.json()["kind"], "usage");
    let logged = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(logged.is_empty(), "a request reached the server: {logged}");
    // Loopback needs nothing; off loopback, --insecure-http.
    let loopback = format!("http://127.0.0.1:{port}");
    sync(&loopback, p, &read_f, &[]).ok();
    sync(&url, p, &read_f, &["--insecure-http"]).ok();
    let logged = std::fs::read_to_string(&audit).unwrap();
    assert!(logged.lines().count() >= 2, "{logged}");
}

/// A client that publishes a snapshot whose pages name a chunk it never sent is refused
/// (the client's request, exit 5 / kind `refused`), not told the server is damaged; nothing
/// is published and the server's repository still verifies.
#[test]
fn a_snapshot_naming_a_chunk_never_sent_is_refused_not_damage() {
    use tessera_engine::sync::http::wire::encode_record;
    use tessera_engine::sync::source::ObjectSource;
    use tessera_format::ObjectKind;

    let mut gen = DataGen::new(seed("serve-unsent-chunk"));
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let a = w("a");
    init_repo(&a, &[]);
    let disk = w("web.img");
    let random = ImageSpec {
        weights: (0, 0, 1),
        ..ImageSpec::mixed(2 * MIB)
    };
    make_image(&disk, random, &mut gen);
    let id = snapshot_id(&backup_json(&a, "vm-web", &[("d0", &disk)]));
    // The snapshot's pages and its file, as a client that skipped the chunks would send them.
    let (pages, file) = {
        let r = Repository::open(&a).unwrap();
        let sid = id.parse::<SnapshotId>().unwrap();
        let s = r.load_snapshot(sid).unwrap();
        let digests: Vec<[u8; 32]> = s.roots.iter().flatten().map(|p| p.0).collect();
        let mut body = Vec::new();
        for o in r.get_objects(ObjectKind::Page, &digests).unwrap() {
            encode_record(&mut body, &o).unwrap();
        }
        (body, s.encode().unwrap().1)
    };
    let server_repo = w("server");
    init_repo(&server_repo, &[]);
    let tokens = w("tokens");
    let backup = token_add(&tokens, "backup", "vm*", "web-backup", None);
    let server = serve(&server_repo, &tokens, &w("audit.jsonl"), &[]);
    let url = server.url.as_str();
    let (status, body) = request(url, "POST", "/v1/put/page", &backup, &pages);
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(url, "POST", "/v1/publish", &backup, &file);
    assert_eq!(status, 422, "{body}");
    let answer = refusal(&body);
    assert_eq!(answer["kind"], "refused", "{body}");
    assert!(
        answer["message"].as_str().unwrap().contains("never stored"),
        "{body}"
    );
    drop(server);
    assert!(list_ids(&server_repo).is_empty());
    verify(&server_repo).ok();
}
