//! The `tessera serve` / `tessera sync` scenarios that must hold over `http://` and
//! `https://` alike, each run both ways (`tessera_tests::remote::Transport`; the case's scheme
//! leads every failure message):
//!
//! - push and pull move snapshots that restore byte-identical to the images they were taken
//!   of and verify, a second push moves only the new chunks, and a pull with nothing new
//!   moves nothing;
//! - clients that vanish mid-request (power loss: no FIN, no reset) hold their request slots
//!   only until TCP keepalive finds them gone (SPEC.md §22.3);
//! - a push killed at a random moment leaves a destination that lists a prefix of the
//!   source's snapshots and verifies, and the next push completes it without storing
//!   anything twice.
//!
//! What only one scheme has is in `serve.rs` (plain HTTP) and `serve_tls.rs` (TLS).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tessera_engine::sync::http::server::MAX_REQUESTS;
use tessera_tests::kill::kill_trials;
use tessera_tests::remote::Transport;
use tessera_tests::{
    assert_no_duplicates, backup_json, disk_sum, exit_code, init_repo, list_ids, make_image,
    mutate, restored_sha, seed, sha256_file, slots_held_then_freed, tessera_cmd, token_file,
    vanish, verify, DataGen, ImageSpec, KillOnDrop,
};

const MIB: u64 = 1 << 20;
/// Encoded size of a full manifest page (512 digests).
const PAGE_BYTES: u64 = 12 + 32 * 512;

/// A case: a scratch directory and the transport made in it.
fn case(transport: fn(&Path) -> Transport) -> (TempDir, Transport) {
    let work = tempfile::tempdir().unwrap();
    let t = transport(work.path());
    (work, t)
}

fn http(_: &Path) -> Transport {
    Transport::http()
}

/// A source repository: `disk` (of `spec`) backed up `generations` times, changed before
/// each but the first; returns the SHA-256 of the disk at each backup (the oracles), in
/// snapshot order.
fn source(
    repo: &Path,
    disk: &Path,
    gen: &mut DataGen,
    spec: ImageSpec,
    generations: usize,
) -> Vec<String> {
    init_repo(repo, &[]);
    make_image(disk, spec, gen);
    let mut shas = Vec::new();
    for g in 0..generations {
        if g > 0 {
            mutate(disk, gen, 8, 2 * MIB, (1, 2, 3));
        }
        backup_json(repo, "vm", &[("d0", disk)]);
        shas.push(sha256_file(disk));
    }
    shas
}

/// Every snapshot of `repo` restores to its oracle, and `repo` lists exactly `ids`.
#[track_caller]
fn assert_restores(scheme: &str, repo: &Path, ids: &[String], shas: &[String], scratch: &Path) {
    assert_eq!(list_ids(repo), ids, "[{scheme}] {}", repo.display());
    for (id, sha) in ids.iter().zip(shas) {
        assert_eq!(
            &restored_sha(repo, id, scratch),
            sha,
            "[{scheme}] snapshot {id} restores differently from {}",
            repo.display()
        );
    }
    verify(repo).ok();
}

fn push_and_pull(transport: fn(&Path) -> Transport) {
    let (work, transport) = case(transport);
    let scheme = transport.scheme();
    let mut gen = DataGen::new(seed(&format!("push_and_pull/{scheme}")));
    let w = |name: &str| work.path().join(name);
    let (src, mid, dst, disk) = (w("a"), w("b"), w("c"), w("disk.img"));
    let mut shas = source(&src, &disk, &mut gen, ImageSpec::mixed(24 * MIB), 2);
    init_repo(&mid, &[]);
    init_repo(&dst, &[]);
    // The token file ends in a newline, which is not part of the token.
    let token = token_file(work.path(), "s3cret-token\n");
    let server = transport.serve(&mid, &token, &[]);
    let src_s = src.to_str().unwrap();

    let pushed = transport.sync(src_s, &server.url, &token);
    pushed.ok();
    let copied = pushed.json()["snapshots_copied"].as_array().map(Vec::len);
    assert_eq!(copied, Some(2), "[{scheme}] {pushed}");
    assert_restores(scheme, &mid, &list_ids(&src), &shas, work.path());

    // One more backup: the next push moves only its new chunks (and manifest pages).
    mutate(&disk, &mut gen, 5, 128 * 1024, (1, 2, 2));
    let new_raw = disk_sum(&backup_json(&src, "vm", &[("d0", &disk)]), "new_raw_bytes");
    shas.push(sha256_file(&disk));
    let again = transport.sync(src_s, &server.url, &token);
    again.ok();
    let answer = again.json();
    let copied = answer["snapshots_copied"].as_array().map(Vec::len);
    assert_eq!(copied, Some(1), "[{scheme}] {again}");
    let raw = answer["raw_bytes_transferred"].as_u64().unwrap();
    assert!(
        raw >= new_raw && raw <= new_raw + 2 * PAGE_BYTES,
        "[{scheme}] moved {raw} raw bytes for {new_raw} new ones: {again}"
    );
    let ids = list_ids(&src);
    assert_restores(scheme, &mid, &ids, &shas, work.path());

    // Pull everything from the server into C; a second pull moves nothing.
    transport
        .sync(&server.url, dst.to_str().unwrap(), &token)
        .ok();
    assert_restores(scheme, &dst, &ids, &shas, work.path());
    let nothing = transport.sync(&server.url, dst.to_str().unwrap(), &token);
    nothing.ok();
    assert_eq!(
        nothing.json()["raw_bytes_transferred"],
        0,
        "[{scheme}] {nothing}"
    );
}

#[test]
fn push_and_pull_over_http() {
    push_and_pull(http);
}

#[test]
fn push_and_pull_over_https() {
    push_and_pull(Transport::https);
}

/// Every request slot is taken by a client that then vanishes ([`vanish`]): the server turns
/// work away, then frees the slots once keepalive probes find the clients gone, long before
/// the bodies' deadlines.
fn vanished_clients_release_their_slots(transport: fn(&Path) -> Transport) {
    let (work, transport) = case(transport);
    let scheme = transport.scheme();
    let repo = work.path().join("r");
    init_repo(&repo, &[]);
    let token = token_file(work.path(), "t0ken");
    let keepalive = 4;
    let server = transport.serve(&repo, &token, &["--keepalive", &keepalive.to_string()]);
    let info = || {
        transport
            .request(&server.url, "GET", "/v1/info", Some("t0ken"), b"")
            .0
    };
    assert_eq!(info(), 200, "[{scheme}]");

    let clients: Vec<_> = (0..MAX_REQUESTS)
        .map(|_| {
            let mut conn = transport.connect(&server.url);
            conn.write_all(
                b"POST /v1/put/chunk HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer t0ken\r\nContent-Length: 1000000\r\n\r\n0123456789",
            )
            .unwrap();
            conn
        })
        .collect();
    // Past the server's delayed acknowledgements (at most 200 ms): a packet arriving after
    // a client vanished would be answered with a reset at once.
    std::thread::sleep(Duration::from_millis(300));
    for conn in clients {
        vanish(conn.tcp());
    }
    let freed = slots_held_then_freed(keepalive, info);
    eprintln!("[{scheme}] slots freed {freed:?} after the clients vanished");
    verify(&repo).ok();
}

#[test]
fn vanished_clients_release_their_slots_over_http() {
    vanished_clients_release_their_slots(http);
}

#[test]
fn vanished_clients_release_their_slots_over_https() {
    vanished_clients_release_their_slots(Transport::https);
}

/// `TESSERA_KILL_TRIALS` pushes, each to a fresh repository and killed at a random moment
/// within the first 80% of an uninterrupted push's duration; fails unless at least one kill
/// landed while the push ran.
fn killed_push_resumes_without_duplicates(transport: fn(&Path) -> Transport) {
    let (work, transport) = case(transport);
    let scheme = transport.scheme();
    let run_seed = seed(&format!("killed_push/{scheme}"));
    let mut gen = DataGen::new(run_seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed);
    let w = |name: &str| work.path().join(name);
    let spec = ImageSpec {
        weights: (1, 1, 6),
        ..ImageSpec::mixed(32 * MIB)
    };
    let shas = source(&w("a"), &w("disk.img"), &mut gen, spec, 2);
    let src = w("a").display().to_string();
    let ids = list_ids(&w("a"));
    let token = token_file(work.path(), "t");

    let fresh = |name: &str| -> (PathBuf, tessera_tests::Served) {
        let dst = w(name);
        init_repo(&dst, &[]);
        let server = transport.serve(&dst, &token, &[]);
        (dst, server)
    };
    let (_probe, server) = fresh("probe");
    let started = Instant::now();
    transport.sync(&src, &server.url, &token).ok();
    let full = started.elapsed();
    eprintln!("[{scheme}] an uninterrupted push takes {full:?}");

    let trials = kill_trials();
    let mut interrupted = 0;
    for trial in 0..trials {
        let (dst, server) = fresh(&format!("b{trial}"));
        let args = transport.sync_args(false, &src, &server.url, &token);
        let mut child = KillOnDrop(Some(tessera_cmd(&args).spawn().unwrap()));
        let delay = full.mul_f64(rng.gen_range(0.0..0.8));
        std::thread::sleep(delay);
        let c = child.0.as_mut().unwrap();
        let running = c.try_wait().unwrap().is_none();
        if running {
            c.kill().unwrap();
        }
        let code = exit_code(c.wait().unwrap());
        let at = format!("[{scheme} trial {trial}, kill after {delay:?}, exit {code}]");
        if code == 128 + 9 {
            interrupted += 1;
        } else {
            assert_eq!(code, 0, "{at} the push was not killed and failed");
        }
        let listed = list_ids(&dst);
        assert_eq!(
            listed[..],
            ids[..listed.len()],
            "{at} not a prefix of the source's snapshots"
        );
        verify(&dst).ok();
        transport.sync(&src, &server.url, &token).ok();
        assert_eq!(list_ids(&dst), ids, "{at}");
        verify(&dst).ok();
        assert_no_duplicates(&dst, &at);
        assert_eq!(
            &restored_sha(&dst, ids.last().unwrap(), work.path()),
            shas.last().unwrap(),
            "{at}"
        );
    }
    eprintln!("[{scheme}] {interrupted} of {trials} kills interrupted a running push");
    assert!(
        interrupted > 0,
        "[{scheme}] no kill of {trials} interrupted a running push: the loop proved nothing"
    );
}

#[test]
fn killed_push_resumes_without_duplicates_over_http() {
    killed_push_resumes_without_duplicates(http);
}

#[test]
fn killed_push_resumes_without_duplicates_over_https() {
    killed_push_resumes_without_duplicates(Transport::https);
}
