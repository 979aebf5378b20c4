//! One backup of a series at a time across machines sharing an S3 repository
//! (engine/src/series_lease.rs, SPEC §8 "Series leases"), against a real SeaweedFS. Each
//! "machine" is a client with its own cache directory, so the local series lock (a file
//! lock in the cache) never sees the other: only the lease in the bucket does.
//!
//! - A second machine's backup of the series is refused, naming the holder, for as long as
//!   the first runs (renewals keep the lease alive past its lease time), while another
//!   series goes ahead; once the first lets go, the second takes it.
//! - A holder killed without letting go (its lease record left "held", never renewed)
//!   blocks the series for one lease time only, also through the binary (exit 3).
//! - A holder whose lease another machine took over (after it went unrenewed) refuses to
//!   publish: nothing of its backup becomes visible.
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

fn short_leases() {
    std::env::set_var("TESSERA_SERIES_LEASE", LEASE_S.to_string());
}

/// Opens a backup of `series` on `client`'s machine.
fn open_backup(client: &Client, series: &str) -> Result<Repository, Error> {
    Repository::open_backup_on(client.storage(), &NoSecret, series)
}

/// A lease record as another machine's backup writes it, left behind when it was killed.
fn leave_held_record(backend: &dyn Backend, series: &str, generation: u64) {
    let key = ObjectKey::from_listed(format!(
        "{}{generation:020}",
        tessera_engine::series_lease::prefix_of(series)
    ));
    let record = br#"{"host":"elsewhere","pid":4242,"since":"2026-12-08T00:00:00Z","held":true,"nonce":"00","lease_s":4,"place":"another machine"}"#;
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
    leave_held_record(&*a.storage().backend, "vm", 7);
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
        keys[0].as_str().ends_with(&format!("{:020}", 8)),
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
    leave_held_record(&*a.storage().backend, "vm", 2);
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
