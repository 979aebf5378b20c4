//! S3 under faults: a real SeaweedFS behind a fault-injecting proxy ([`FaultProxy`]) that
//! answers chosen requests with 500 `InternalError` or 503 `SlowDown`, resets connections
//! halfway through an upload, loses the answer to a request the server carried out, or
//! answers slowly (some answers after the client's request timeout); and the server itself
//! killed (SIGKILL) and restarted in the middle of a backup through the binary. Backups
//! either complete after retries or fail with a message that says what happened; nothing is
//! ever half-visible, and verify is clean afterwards.

use std::path::{Path, PathBuf};

use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::storage::s3::{S3Backend, S3Location};
use tessera_engine::storage::Backend;
use tessera_engine::{NoProgress, Repository};
use tessera_format::SnapshotId;
use tessera_tests::fault_proxy::{Fault, FaultProxy, Request};
use tessera_tests::seaweed::{bucket_listing, options_for, Client, Seaweed, KEY_ID, SECRET};
use tessera_tests::{make_image, DataGen, ImageSpec};

const MIB: u64 = 1 << 20;

/// A SeaweedFS, a proxy in front of it, and a client going through the proxy.
struct World {
    _sw: Seaweed,
    proxy: FaultProxy,
    client: Client,
    work: tempfile::TempDir,
}

fn world(bucket: &str) -> World {
    let sw = Seaweed::start(bucket);
    let proxy = FaultProxy::start(&sw.endpoint);
    let client = Client::new(
        &sw.location("faulty"),
        options_for(&proxy.endpoint, KEY_ID, SECRET),
    );
    client.init();
    World {
        _sw: sw,
        proxy,
        client,
        work: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn image(&self, name: &str, seed: u64) -> PathBuf {
        let path = self.work.path().join(name);
        make_image(&path, ImageSpec::mixed(40 * MIB), &mut DataGen::new(seed));
        path
    }

    fn backup(&self, image: &Path) -> tessera_engine::Result<SnapshotId> {
        let repo = self.client.writer();
        backup(
            &repo,
            &BackupRequest::one_disk("vm", "d0", image),
            &NoProgress,
        )
        .map(|o| o.id)
    }

    /// With the faults off: verify is clean, every snapshot in `expect` restores to its
    /// image, the catalog is exactly `expect`, and no upload is left incomplete.
    fn assert_sound(&self, expect: &[(SnapshotId, &Path)]) {
        self.proxy.set_rule(Box::new(|_| None));
        let repo = self.client.writer();
        let report = check(&repo, true, &NoProgress).unwrap();
        assert!(report.is_clean(), "check: {:?}", report.problems);
        let mut ids: Vec<SnapshotId> = expect.iter().map(|(id, _)| *id).collect();
        ids.sort();
        let mut catalog: Vec<SnapshotId> = repo
            .index()
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        catalog.sort();
        assert_eq!(catalog, ids, "catalog");
        for (id, image) in expect {
            assert_restores(&repo, *id, image, self.work.path());
        }
        let backend = S3Backend::connect(
            S3Location::parse(&self.client.location).unwrap(),
            &self.client.options.s3,
        )
        .unwrap();
        let pending = backend.incomplete_uploads().unwrap();
        assert!(pending.is_empty(), "incomplete uploads left: {pending:?}");
    }
}

fn assert_restores(repo: &Repository, id: SnapshotId, image: &Path, scratch: &Path) {
    let snapshot = repo.load_snapshot(id).unwrap();
    let out = scratch.join("restored");
    restore_disk(repo, id, &snapshot, "d0", &out, true, &NoProgress)
        .unwrap_or_else(|e| panic!("restoring {id}: {e}"));
    tessera_tests::assert_same_file(image, &out);
}

fn is_part(r: &Request) -> bool {
    r.method == "PUT" && r.target.contains("partNumber=")
}

fn kinds(injected: &[(Request, Fault)]) -> Vec<String> {
    injected
        .iter()
        .map(|(r, f)| format!("{f:?} {} {}", r.method, r.target))
        .collect()
}

#[test]
fn server_errors_and_slowdowns_are_retried_until_the_backup_completes() {
    let w = world("flaky");
    // Every distinct request fails once, alternately with 503 SlowDown and 500 InternalError:
    // each kind of request (list, head, get, put, part, complete, list uploads) meets a
    // failure and has to be retried.
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    w.proxy.set_rule(Box::new(move |r| {
        let mut seen = seen.lock().unwrap();
        let first = seen.insert((r.method.clone(), r.target.clone()));
        match (first, seen.len() % 2) {
            (false, _) => None,
            (true, 0) => Some(Fault::Status(503, "SlowDown")),
            (true, _) => Some(Fault::Status(500, "InternalError")),
        }
    }));
    let img1 = w.image("one.img", 1);
    let first = w.backup(&img1).expect("backup through 5xx answers");
    let img2 = w.image("two.img", 2);
    let second = w.backup(&img2).expect("second backup through 5xx answers");
    let injected = w.proxy.injected();
    assert!(
        injected.len() > 20,
        "only {} faults injected",
        injected.len()
    );
    assert!(
        injected.iter().any(|(r, _)| is_part(r)),
        "no part upload was failed: {:?}",
        kinds(&injected)
    );
    assert!(
        injected
            .iter()
            .any(|(r, _)| r.method == "POST" && r.target.contains("uploadId=")),
        "no upload completion was failed: {:?}",
        kinds(&injected)
    );
    w.assert_sound(&[(first, &img1), (second, &img2)]);
}

#[test]
fn connections_reset_mid_upload_or_before_the_answer_are_survived() {
    let w = world("resets");
    let parts = std::sync::atomic::AtomicUsize::new(0);
    let completes = std::sync::atomic::AtomicUsize::new(0);
    let snapshots = std::sync::atomic::AtomicUsize::new(0);
    w.proxy.set_rule(Box::new(move |r| {
        use std::sync::atomic::Ordering::Relaxed;
        let first_complete = r.method == "POST"
            && r.target.contains("uploadId=")
            && completes.fetch_add(1, Relaxed) == 0;
        let first_snapshot = r.method == "PUT"
            && r.target.contains("/snapshots/")
            && snapshots.fetch_add(1, Relaxed) == 0;
        if is_part(r) && parts.fetch_add(1, Relaxed).is_multiple_of(3) {
            Some(Fault::ResetMidBody)
        } else if first_complete || first_snapshot {
            Some(Fault::ResetAfterForward)
        } else {
            None
        }
    }));
    let img = w.image("one.img", 3);
    let id = w.backup(&img).expect("backup through connection resets");
    let injected = w.proxy.injected();
    let count = |f: Fault| injected.iter().filter(|(_, g)| *g == f).count();
    assert!(count(Fault::ResetMidBody) >= 2, "{:?}", kinds(&injected));
    assert_eq!(count(Fault::ResetAfterForward), 2, "{:?}", kinds(&injected));
    w.assert_sound(&[(id, &img)]);
}

#[test]
fn a_server_that_keeps_failing_fails_the_backup_clearly_and_leaves_nothing_visible() {
    let w = world("down");
    let img1 = w.image("one.img", 4);
    let first = w.backup(&img1).expect("backup before the outage");
    let before = bucket_listing(&*w.client.storage().backend);
    // Every write fails from now on; reads still work.
    w.proxy.set_rule(Box::new(|r| {
        (r.method == "PUT" || r.method == "POST").then_some(Fault::Status(503, "SlowDown"))
    }));
    let img2 = w.image("two.img", 5);
    let err = w
        .backup(&img2)
        .expect_err("a backup while every write fails");
    let msg = err.to_string();
    assert!(
        msg.contains("kept failing") && msg.contains("503 SlowDown"),
        "unclear message: {msg}"
    );
    assert!(
        msg.contains("s3://down/faulty"),
        "the message names no repository: {msg}"
    );
    w.proxy.set_rule(Box::new(|_| None));
    let after = bucket_listing(&*w.client.storage().backend);
    assert_eq!(after, before, "a failed backup left objects behind");
    // The same happens mid-pack: the upload starts, then its parts keep failing.
    let started = std::sync::atomic::AtomicBool::new(false);
    w.proxy.set_rule(Box::new(move |r| {
        if r.method == "POST" && r.target.contains("uploads") {
            started.store(true, std::sync::atomic::Ordering::Relaxed);
            None
        } else {
            is_part(r).then_some(Fault::Status(500, "InternalError"))
        }
    }));
    let err = w
        .backup(&img2)
        .expect_err("a backup whose parts keep failing");
    assert!(err.to_string().contains("500 InternalError"), "{err}");
    w.proxy.set_rule(Box::new(|_| None));
    assert_eq!(
        bucket_listing(&*w.client.storage().backend),
        before,
        "a failed multipart upload became visible"
    );
    w.assert_sound(&[(first, &img1)]);
}

#[test]
fn an_answer_without_a_date_is_refused_never_replaced_by_the_local_clock() {
    let w = world("nodate");
    let img = w.image("one.img", 6);
    let first = w.backup(&img).expect("backup");
    // The upload listing (clock and staging) comes back without its Date header.
    w.proxy.set_rule(Box::new(|r| {
        (r.method == "GET" && r.target.contains("uploads")).then_some(Fault::DropHeader("date"))
    }));
    let Err(err) =
        Repository::open_writer_on(w.client.storage(), &tessera_engine::crypto::NoSecret)
    else {
        panic!("a writer opened although the server's clock could not be read");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("without a valid Date header"),
        "unclear message: {msg}"
    );
    assert_eq!(
        err.kind(),
        tessera_engine::ErrorKind::Failed,
        "{msg}: a protocol failure, not the caller's fault"
    );
    assert!(!w.proxy.injected().is_empty());
    w.assert_sound(&[(first, &img)]);
}

#[test]
fn a_store_failing_during_verify_stops_it_and_marks_nothing_damaged() {
    let w = world("verify");
    let img = w.image("one.img", 11);
    let first = w.backup(&img).expect("backup");
    let repo = w.client.writer();
    // Every read of a pack's bytes fails, after the client's retries. The structural check
    // reads the manifest pages to recompute the counts: it stops, rather than reporting the
    // pages damaged and their chunks unreferenced.
    w.proxy.set_rule(Box::new(|r| {
        (r.method == "GET" && r.target.contains("/packs/"))
            .then_some(Fault::Status(503, "SlowDown"))
    }));
    match check(&repo, false, &NoProgress) {
        Ok(report) => panic!(
            "a check whose page reads all failed finished: {:?}",
            report.problems.iter().take(3).collect::<Vec<_>>()
        ),
        Err(e) => assert_eq!(e.kind(), tessera_engine::ErrorKind::Failed, "{e}"),
    }
    // Only the long (coalesced) reads of the data fail: the pages read, the data does not.
    w.proxy.set_rule(Box::new(|r| {
        (r.method == "GET" && r.target.contains("/packs/") && r.range_len > Some(MIB))
            .then_some(Fault::Status(503, "SlowDown"))
    }));
    let outcome = tessera_engine::ops::check::verify(
        &repo,
        &tessera_engine::ops::check::VerifyOptions {
            read_data: true,
            scope: None,
            sample: None,
            skip_verified_within_us: None,
            use_ledger: true,
        },
        &NoProgress,
    );
    w.proxy.set_rule(Box::new(|_| None));
    assert!(!w.proxy.injected().is_empty());
    let err = match outcome {
        Ok(report) => panic!(
            "a verify whose data reads all failed finished: {:?} {:?}",
            report.problems.iter().take(3).collect::<Vec<_>>(),
            report.damaged.len()
        ),
        Err(e) => e,
    };
    assert_eq!(err.kind(), tessera_engine::ErrorKind::Failed, "{err}");
    assert!(err.to_string().contains("503 SlowDown"), "{err}");
    assert!(
        tessera_engine::damage_marks::load_damage_marks(repo.backend())
            .unwrap()
            .is_empty(),
        "damage marks stored for an outage"
    );
    drop(repo);
    w.assert_sound(&[(first, &img)]);
}

/// Whether `r` lists incomplete multipart uploads (cleaning staging, or reading the clock).
fn lists_uploads(r: &Request) -> bool {
    r.method == "GET" && r.target.contains("uploads")
}

#[test]
fn readers_never_touch_other_clients_uploads() {
    let sw = Seaweed::start("readers");
    let proxy = FaultProxy::start(&sw.endpoint);
    let location = sw.location("shared");
    let direct = Client::new(&location, sw.options());
    direct.init();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("a.img");
    make_image(&img, ImageSpec::mixed(8 * MIB), &mut DataGen::new(9));
    let backup_one = |seed: u64| {
        make_image(&img, ImageSpec::mixed(8 * MIB), &mut DataGen::new(seed));
        backup(
            &direct.writer(),
            &BackupRequest::one_disk("vm", "d0", &img),
            &NoProgress,
        )
        .expect("backup")
    };
    backup_one(9);
    // A reader through the proxy: every upload listing is logged (and passed through).
    let reader = Client::new(&location, options_for(&proxy.endpoint, KEY_ID, SECRET));
    proxy.set_rule(Box::new(|r| {
        lists_uploads(r).then_some(Fault::Delay(std::time::Duration::ZERO))
    }));
    // Its first open rebuilds the cache; after another client's backup, one catches up.
    let repo = reader.reader();
    assert!(repo.recovery.cache.as_ref().unwrap().rebuilt.is_some());
    drop(repo);
    backup_one(10);
    let repo = reader.reader();
    let refresh = repo.recovery.cache.clone().unwrap();
    assert_eq!(refresh.snapshots_catalogued, 1, "{refresh:?}");
    drop(repo);
    assert_eq!(
        kinds(&proxy.injected()),
        Vec::<String>::new(),
        "a reader listed (to abort) incomplete uploads"
    );
    // A writer's open does clean staging.
    drop(reader.writer());
    assert!(
        !proxy.injected().is_empty(),
        "the writer cleaned no staging"
    );
}

#[test]
fn slow_answers_are_waited_for_or_retried_past_the_request_timeout() {
    let sw = Seaweed::start("slow");
    let proxy = FaultProxy::start(&sw.endpoint);
    let mut options = options_for(&proxy.endpoint, KEY_ID, SECRET);
    options.retry.request_timeout = std::time::Duration::from_secs(3);
    let client = Client::new(&sw.location("slow"), options);
    client.init();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("one.img");
    make_image(&img, ImageSpec::mixed(40 * MIB), &mut DataGen::new(6));
    // Every third part and the first snapshot put are answered after the request timeout
    // (the client gives up, the change happened: the retry must cope); everything else
    // after 200 ms, well within it.
    let parts = std::sync::atomic::AtomicUsize::new(0);
    let snapshots = std::sync::atomic::AtomicUsize::new(0);
    proxy.set_rule(Box::new(move |r| {
        use std::sync::atomic::Ordering::Relaxed;
        let late = std::time::Duration::from_secs(5);
        let late_part = is_part(r) && parts.fetch_add(1, Relaxed).is_multiple_of(3);
        let late_snapshot = r.method == "PUT"
            && r.target.contains("/snapshots/")
            && snapshots.fetch_add(1, Relaxed) == 0;
        if late_part || late_snapshot {
            Some(Fault::Delay(late))
        } else {
            Some(Fault::Delay(std::time::Duration::from_millis(200)))
        }
    }));
    let repo = client.writer();
    let id = backup(
        &repo,
        &BackupRequest::one_disk("vm", "d0", &img),
        &NoProgress,
    )
    .expect("backup through slow answers")
    .id;
    drop(repo);
    let injected = proxy.injected();
    let late = injected
        .iter()
        .filter(|(_, f)| *f == Fault::Delay(std::time::Duration::from_secs(5)))
        .count();
    assert!(late >= 2, "{:?}", kinds(&injected));
    proxy.set_rule(Box::new(|_| None));
    let repo = client.writer();
    let report = check(&repo, true, &NoProgress).unwrap();
    assert!(report.is_clean(), "check: {:?}", report.problems);
    assert_eq!(repo.index().snapshots().unwrap().len(), 1);
    assert_restores(&repo, id, &img, work.path());
}

#[test]
fn a_server_killed_and_restarted_mid_backup_loses_nothing() {
    use tessera_tests::seaweed::CliClient;
    let mut sw = Seaweed::start("restart");
    let cli = CliClient::new(&sw);
    let work = tempfile::tempdir().unwrap();
    let repo = sw.location("repo");
    cli.json(["init", &repo]);
    let first_img = work.path().join("first.img");
    make_image(&first_img, ImageSpec::mixed(8 * MIB), &mut DataGen::new(7));
    let disk = |p: &Path| format!("d0={}", p.display());
    cli.json(["backup", &repo, "--series", "vm", &disk(&first_img)]);
    let img = work.path().join("big.img");
    make_image(&img, ImageSpec::mixed(160 * MIB), &mut DataGen::new(8));
    let watcher = S3Backend::connect(S3Location::parse(&repo).unwrap(), &sw.options()).unwrap();
    let packs_before = watcher.list("packs/").unwrap().len();

    let child = cli
        .cmd(["--json", "backup", &repo, "--series", "vm", &disk(&img)])
        .spawn()
        .expect("starting the backup");
    // Kill the server once the backup is uploading (a part in flight or a pack sealed).
    let uploading = tessera_tests::wait_until(std::time::Duration::from_mins(2), || {
        watcher.incomplete_uploads().is_ok_and(|u| !u.is_empty())
            || watcher.list("packs/").is_ok_and(|p| p.len() > packs_before)
    });
    assert!(uploading, "the backup never started uploading");
    sw.kill();
    std::thread::sleep(std::time::Duration::from_secs(1));
    sw.restart();
    let out = tessera_tests::finish_child(child, &["backup", "(server killed mid-way)"]);
    eprintln!(
        "backup across the restart: exit {}: {}",
        out.code,
        out.stderr.trim()
    );
    let ids = |cli: &CliClient| -> usize {
        cli.json(["list", &repo])["snapshots"]
            .as_array()
            .map_or(0, Vec::len)
    };
    if out.code == 0 {
        let id = tessera_tests::snapshot_id(&out.json());
        assert_eq!(ids(&cli), 2, "{out}");
        let restored = work.path().join("restored.img");
        cli.run(["restore", &repo, &id, &restored.display().to_string()])
            .ok();
        tessera_tests::assert_same_file(&img, &restored);
    } else {
        // Failing is allowed if it says why and nothing is half-visible; a rerun completes.
        out.expect_code(1);
        assert!(
            out.stderr.contains("kept failing") || out.stderr.contains("cannot connect"),
            "unclear failure: {out}"
        );
        assert_eq!(ids(&cli), 1, "a failed backup published: {out}");
        cli.json(["backup", &repo, "--series", "vm", &disk(&img)]);
        assert_eq!(ids(&cli), 2);
    }
    let v = cli.json(["verify", &repo]);
    assert_eq!(v["report"]["problems"], serde_json::json!([]), "{v}");
}
