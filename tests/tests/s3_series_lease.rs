//! One backup of a series at a time across machines sharing an S3 repository
//! (engine/src/series_lease.rs, SPEC §8 "Series leases"), against a real SeaweedFS. Each
//! "machine" is a client with its own cache directory, so the local series lock (a file
//! lock in the cache) never sees the other: only the lease in the bucket does.
//!
//! - A second machine's backup of the series is refused, naming the holder, for as long as
//!   the first runs (renewals keep the lease alive past its lease time), while another
//!   series goes ahead; once the first lets go, the second takes it.
//! - A holder killed without letting go (its lease record left "held", never renewed)
//!   blocks the series for one lease time only (the holder's own), also through the binary
//!   (exit 3).
//! - A holder whose lease another machine took over (after it went unrenewed) refuses to
//!   publish: nothing of its backup becomes visible.
//! - A holder of the same machine and cache that died holding the lease (its record still
//!   fresh) is taken over at once by the next backup there, which holds the local series
//!   lock; another machine's fresh record still refuses.
//!
//! The lease time is shortened to 4 s (`TESSERA_SERIES_LEASE`) for this test binary.

use std::time::Duration;

use tessera_engine::crypto::NoSecret;
use tessera_engine::error::Error;
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::storage::{Backend, ObjectKey, PutMode};
use tessera_engine::{NoProgress, Repository};
use tessera_tests::seaweed::{CliClient, Client, Seaweed};
use tessera_tests::{make_image, DataGen, ImageSpec};

const MIB: u64 = 1 << 20;
/// The lease time of this test binary, in seconds.
const LEASE_S: u64 = 4;
/// The lease time of the records this test leaves as another machine's that must stay
/// fresh while the binary starts and looks, under load (the holder's own time counts).
const LONG_LEASE_S: u64 = 300;

fn short_leases() {
    std::env::set_var("TESSERA_SERIES_LEASE", LEASE_S.to_string());
}

/// Opens a backup of `series` on `client`'s machine.
fn open_backup(client: &Client, series: &str) -> Result<Repository, Error> {
    Repository::open_backup_on(client.storage(), &NoSecret, series)
}

/// A lease record as another machine's backup writes it (with lease time `lease_s`), left
/// behind when it was killed.
fn leave_held_record(backend: &dyn Backend, series: &str, generation: u64, lease_s: u64) {
    let key = ObjectKey::from_listed(format!(
        "{}{generation:020}",
        tessera_engine::series_lease::prefix_of(series)
    ));
    let record = format!(
        r#"{{"host":"elsewhere","pid":4242,"since":"2026-12-08T00:00:00Z","held":true,"nonce":"00","lease_s":{lease_s},"place":"another machine"}}"#
    );
    let record = record.as_bytes();
    backend.put_bytes(&key, PutMode::Create, record).unwrap();
}

#[track_caller]
fn assert_locked_by(result: Result<Repository, Error>, pid: &str, host: &str) {
    match result {
        Err(Error::SeriesLocked {
            pid: got_pid,
            host: got_host,
            ..
        }) => {
            assert_eq!(got_pid, pid);
            assert_eq!(got_host, host);
        }
        Err(e) => panic!("expected the series to be locked by {pid} on {host}, got: {e}"),
        Ok(_) => panic!("a second backup of the series was let in"),
    }
}

#[test]
fn a_second_machine_waits_for_the_first_and_other_series_go_ahead() {
    short_leases();
    let sw = Seaweed::start("leases");
    let location = sw.location("repo");
    let a = Client::new(&location, sw.options());
    a.init();
    let b = Client::new(&location, sw.options());

    let first = open_backup(&a, "vm").unwrap();
    let host = tessera_engine::net::hostname().trim().to_string();
    let pid = std::process::id().to_string();
    assert_locked_by(open_backup(&b, "vm"), &pid, &host);
    drop(open_backup(&b, "db").expect("another series is not held"));
    // Past the lease time, renewals keep it held.
    std::thread::sleep(Duration::from_secs(LEASE_S + 2));
    assert_locked_by(open_backup(&b, "vm"), &pid, &host);
    drop(first);
    let second = open_backup(&b, "vm").expect("the lease was let go");
    drop(second);
}

#[test]
fn a_killed_holder_blocks_the_series_for_one_lease_time() {
    short_leases();
    let sw = Seaweed::start("killed");
    let location = sw.location("repo");
    let a = Client::new(&location, sw.options());
    a.init();
    leave_held_record(&*a.storage().backend, "vm", 7, LONG_LEASE_S);
    assert_locked_by(open_backup(&a, "vm"), "4242", "elsewhere");

    // Through the binary, on a machine of its own: exit 3, naming the holder.
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("d0.img");
    make_image(&image, ImageSpec::mixed(2 * MIB), &mut DataGen::new(1));
    let cli = CliClient::new(&sw);
    let out = cli.run([
        "backup",
        &location,
        "--series",
        "vm",
        &format!("d0={}", image.display()),
    ]);
    out.expect_code(3);
    assert!(
        out.stderr.contains("4242") && out.stderr.contains("elsewhere"),
        "{out}"
    );

    // The next holder, also killed, with a short lease time: it blocks for that long only.
    leave_held_record(&*a.storage().backend, "vm", 8, LEASE_S);
    assert_locked_by(open_backup(&a, "vm"), "4242", "elsewhere");
    std::thread::sleep(Duration::from_secs(LEASE_S + 1));
    let taken = open_backup(&a, "vm").expect("a stale lease is taken over");
    let keys = a
        .storage()
        .backend
        .list(&tessera_engine::series_lease::prefix_of("vm"))
        .unwrap();
    assert_eq!(
        keys.len(),
        1,
        "the taker keeps only its own generation: {keys:?}"
    );
    assert!(
        keys[0].as_str().ends_with(&format!("{:020}", 9)),
        "{keys:?}"
    );
    drop(taken);
}

#[test]
fn a_holder_that_lost_its_lease_publishes_nothing() {
    short_leases();
    let sw = Seaweed::start("lost");
    let location = sw.location("repo");
    let a = Client::new(&location, sw.options());
    a.init();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("d0.img");
    make_image(&image, ImageSpec::mixed(4 * MIB), &mut DataGen::new(2));

    let repo = open_backup(&a, "vm").unwrap();
    // Another machine found it unrenewed and took over: the next generation.
    leave_held_record(&*a.storage().backend, "vm", 2, LONG_LEASE_S);
    let Err(err) = backup(
        &repo,
        &BackupRequest::one_disk("vm", "d0", &image),
        &NoProgress,
    ) else {
        panic!("a backup that lost its lease must not publish");
    };
    assert!(err.to_string().contains("lost its lease"), "{err}");
    drop(repo);
    let reader = a.reader();
    assert!(reader.index().snapshots().unwrap().is_empty());
    assert_no_snapshot_files(&*a.storage().backend);
}

fn assert_no_snapshot_files(backend: &dyn Backend) {
    let files = backend.list("snapshots/").unwrap();
    assert!(files.is_empty(), "{files:?}");
}

#[test]
fn the_same_machine_takes_over_its_own_dead_holder_at_once() {
    short_leases();
    let sw = Seaweed::start("own");
    let location = sw.location("repo");
    let a = Client::new(&location, sw.options());
    a.init();
    let backend = a.storage().backend;
    let prefix = tessera_engine::series_lease::prefix_of("vm");
    // Learn this machine's place from a lease it took and let go.
    drop(open_backup(&a, "vm").unwrap());
    let keys = backend.list(&prefix).unwrap();
    let released: serde_json::Value =
        serde_json::from_slice(&backend.get(keys.last().unwrap()).unwrap()).unwrap();
    assert_eq!(released["held"], false, "{released}");
    // A backup of this machine and cache that died holding it (kill -9, Ctrl-C): fresh,
    // held, and long-lived, so only recognising the place lets the next one in.
    let dead = serde_json::json!({
        "host": released["host"], "pid": 99999, "since": "2026-12-08T00:00:00Z",
        "held": true, "nonce": "dead", "lease_s": 3600, "place": released["place"],
    });
    let key = ObjectKey::from_listed(format!("{prefix}{:020}", 99));
    backend
        .put_bytes(&key, PutMode::Create, &serde_json::to_vec(&dead).unwrap())
        .unwrap();
    drop(open_backup(&a, "vm").expect("this machine's own dead holder is taken over"));
    // Another machine still waits for it.
    let other = serde_json::json!({
        "host": "elsewhere", "pid": 4242, "since": "2026-12-08T00:00:00Z",
        "held": true, "nonce": "other", "lease_s": 3600, "place": "another machine",
    });
    let key = ObjectKey::from_listed(format!("{prefix}{:020}", 200));
    backend
        .put_bytes(&key, PutMode::Create, &serde_json::to_vec(&other).unwrap())
        .unwrap();
    assert_locked_by(open_backup(&a, "vm"), "4242", "elsewhere");
}
