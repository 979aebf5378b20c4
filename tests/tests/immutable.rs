//! Immutable backups (SPEC §28) through the `tessera` binary: a snapshot taken at `t` in a
//! repository with a period `p` is protected until `t + p`; its snapshot file and every pack
//! it uses are retained by the store at least that long, and tessera refuses what would
//! remove them before then.
//!
//! - moto, a mock of AWS S3 that enforces Object Lock as AWS does, in COMPLIANCE mode: every
//!   retention read back with boto3 (an independent client), the deletion of a retained
//!   version refused by the mock, `forget` refused.
//! - A bucket without Object Lock: `init --immutable` refused, nothing written.
//! - SeaweedFS, a real object store, in GOVERNANCE mode: the same checks.
//! - Local directories: the immutable flag (`lsattr`) and `user.tessera.retain_until` on
//!   every pack and snapshot file, `rm` refused by the kernel, `forget` refused, the period
//!   raised (dates extended) but never lowered; expired snapshots forgotten and their packs
//!   compacted; a pack a protected snapshot uses left alone by compaction (`packs_locked`).
//!
//! The local tests need `chattr +i` to work (root, or CAP_LINUX_IMMUTABLE, on ext4, XFS or
//! btrfs): where it does not they fail and say so. Their directories are `chattr -R -i`ed
//! when dropped, also when a test fails, so that they can be removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tessera_engine::time::now_us;
use tessera_tests::moto::{Boto, Moto};
use tessera_tests::seaweed::{CliClient, Seaweed};
use tessera_tests::sinks::rfc3339_us;
use tessera_tests::{
    assert_same_file, backup_json, init_repo, list_ids, list_json, make_image, mutate, pack_files,
    restore, seed, snapshot_id, tessera, verify, DataGen, ImageSpec,
};

const MIB: u64 = 1 << 20;
const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;

/// Exit code of what immutability refuses: `forget` of a protected snapshot, a shorter
/// period. The engine's `Error::Immutable` and `Error::Refused` are of kind `refused`, whose
/// code is 5 in the CLI's table (3 is `locked`: another writer, retry later).
const REFUSED: i32 = 5;
/// Exit code of `init --immutable` on a store that cannot lock (a bucket without Object
/// Lock): the engine refuses it as `Error::Refused`.
const CANNOT_LOCK: i32 = 5;

// ---------------------------------------------------------------------------------------
// Snapshots and their protection
// ---------------------------------------------------------------------------------------

/// A snapshot as `list --json` shows it (times in Unix µs).
#[derive(Debug)]
struct Listed {
    id: String,
    time_us: i64,
    /// `protected_until`.
    until_us: i64,
}

/// The snapshots of a `list --json` document's `snapshots` array.
fn listed(snapshots: &[Value]) -> Vec<Listed> {
    snapshots
        .iter()
        .map(|s| Listed {
            id: s["id"].as_str().expect("id").to_string(),
            time_us: s["time_us"].as_i64().expect("time_us"),
            until_us: rfc3339_us(
                s["protected_until"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no protected_until in {s}")),
            ),
        })
        .collect()
}

/// The one snapshot of a listing.
#[track_caller]
fn only(mut snapshots: Vec<Listed>) -> Listed {
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    snapshots.remove(0)
}

/// The snapshots of an S3 repository.
fn s3_listed(cli: &CliClient, repo: &str) -> Vec<Listed> {
    let v = cli.json(["list", repo]);
    listed(v["snapshots"].as_array().expect("snapshots"))
}

/// Asserts that `s` is protected until its time plus `period`, to the second (RFC 3339
/// dates have no fraction).
#[track_caller]
fn assert_protected_for(s: &Listed, period: i64) {
    let want = s.time_us + period;
    assert!(
        (s.until_us - want).abs() < 2 * SECOND,
        "snapshot {} taken at {} is protected until {}, not {} s later",
        s.id,
        s.time_us,
        s.until_us,
        period / SECOND
    );
}

/// Asserts that `what`, retained until `date_us`, covers snapshot `s` of a repository with
/// `period`: no earlier than its protected-until (to the minute), and not absurdly later (a
/// pack is retained a renewal of at most half the period beyond, SPEC §28.3).
#[track_caller]
fn assert_covers(what: &str, date_us: i64, s: &Listed, period: i64) {
    assert!(
        date_us >= s.time_us + period - 60 * SECOND,
        "{what} is retained until {date_us}, before snapshot {} is protected until {}",
        s.id,
        s.time_us + period
    );
    assert!(
        date_us < s.time_us + 2 * period + 60 * SECOND,
        "{what} is retained until {date_us}: more than twice the period after snapshot {}",
        s.id
    );
}

/// Sleeps until the wall clock has passed `until_us` by a second and a half (dates are
/// written to the second).
fn sleep_past(until_us: i64) {
    if let Ok(us) = u64::try_from(until_us + 3 * SECOND / 2 - now_us()) {
        std::thread::sleep(Duration::from_micros(us));
    }
}

/// A 4 MiB image of zeros, text and random data at `dir/disk.raw`.
fn small_image(dir: &Path, test: &str) -> PathBuf {
    let image = dir.join("disk.raw");
    make_image(
        &image,
        ImageSpec::mixed(4 * MIB),
        &mut DataGen::new(seed(test)),
    );
    image
}

/// An image spec of random data only: no block of it is shared with another image.
fn random(size: u64) -> ImageSpec {
    ImageSpec {
        weights: (0, 0, 1),
        ..ImageSpec::mixed(size)
    }
}

// ---------------------------------------------------------------------------------------
// S3: moto and SeaweedFS
// ---------------------------------------------------------------------------------------

/// Backs up a small image into `s3://BUCKET/vms` made with `--immutable 1d --lock-mode
/// MODE`, and checks through `boto`, an independent client: every pack and the snapshot
/// file are retained in MODE until at least the snapshot's protected-until (a day after it
/// was taken); the server refuses to delete the retained version of a pack and of the
/// snapshot file; `forget` is refused ("immutable until") and removes nothing; the snapshot
/// restores byte for byte.
fn retained_and_enforced(cli: &CliClient, boto: &Boto, bucket: &str, mode: &str, test: &str) {
    let w = tempfile::tempdir().unwrap();
    let repo = format!("s3://{bucket}/vms");
    cli.json(["init", &repo, "--immutable", "1d", "--lock-mode", mode]);
    let image = small_image(w.path(), test);
    let disk = format!("d0={}", image.display());
    let id = snapshot_id(&cli.json(["backup", &repo, "--series", "vm", &disk]));
    let s = only(s3_listed(cli, &repo));
    assert_eq!(s.id, id);
    assert_protected_for(&s, DAY);

    let keys = boto.list_keys(bucket, "vms/");
    let packs: Vec<&String> = keys
        .iter()
        .filter(|k| {
            k.starts_with("vms/packs/") && Path::new(k).extension().is_some_and(|e| e == "pack")
        })
        .collect();
    let snapshot = format!("vms/snapshots/{id}.snap");
    assert!(!packs.is_empty() && keys.contains(&snapshot), "{keys:?}");
    let retentions = boto.retentions(bucket, "vms/");
    for key in packs.iter().copied().chain([&snapshot]) {
        let r = retentions[key]
            .as_ref()
            .unwrap_or_else(|| panic!("{key} has no retention: {retentions:?}"));
        assert_eq!(r.mode, mode.to_uppercase(), "{key}");
        assert_covers(key, r.until_us(), &s, DAY);
    }
    for key in [packs[0], &snapshot] {
        let refused = boto
            .delete_version(bucket, key)
            .expect_err("the server deleted a retained version");
        assert!(refused.starts_with("AccessDenied"), "{key}: {refused}");
    }

    cli.run(["forget", &repo, &id])
        .expect_code(REFUSED)
        .stderr_has("immutable until");
    assert_eq!(
        boto.list_keys(bucket, "vms/"),
        keys,
        "forget removed objects"
    );
    assert_eq!(only(s3_listed(cli, &repo)).id, id);
    let restored = w.path().join("restored.raw");
    cli.run(["restore", &repo, &id, &restored.display().to_string()])
        .ok();
    assert_same_file(&image, &restored);
}

/// moto enforces COMPLIANCE retention as AWS does: the mock enforcement check of S3 locks
/// (see [`retained_and_enforced`]).
#[test]
fn moto_mock_enforces_compliance_locks_on_every_pack_and_snapshot() {
    let moto = Moto::start("locked");
    let cli = CliClient::with_env(moto.env());
    retained_and_enforced(
        &cli,
        &moto.boto(),
        &moto.bucket,
        "compliance",
        "immutable_moto",
    );
}

/// SeaweedFS, a real object store, stores and enforces Object Lock once its bucket has it
/// (versioning, then the lock configuration, on the bucket `weed mini` made): the same
/// checks in GOVERNANCE mode, which tessera never bypasses (see [`retained_and_enforced`]).
#[test]
fn seaweedfs_keeps_governance_locks_on_every_pack_and_snapshot() {
    let sw = Seaweed::start("locked");
    sw.boto().enable_object_lock(&sw.bucket);
    let cli = CliClient::new(&sw);
    retained_and_enforced(
        &cli,
        &sw.boto(),
        &sw.bucket,
        "governance",
        "immutable_seaweedfs",
    );
}

/// A bucket without Object Lock cannot keep anything immutable: `init --immutable` there is
/// refused, names Object Lock, and writes nothing; the same init without `--immutable` then
/// succeeds (so the refusal was the lock's, and the prefix was left empty).
#[test]
fn init_on_a_bucket_without_object_lock_is_refused_and_writes_nothing() {
    let moto = Moto::start("locked");
    moto.boto().create_bucket("plain", false);
    let cli = CliClient::with_env(moto.env());
    cli.run(["init", "s3://plain/vms", "--immutable", "1d"])
        .expect_code(CANNOT_LOCK)
        .stderr_has("Object Lock");
    assert_eq!(moto.boto().list_keys("plain", ""), Vec::<String>::new());
    cli.json(["init", "s3://plain/vms"]);
    assert!(!moto.boto().list_keys("plain", "vms/").is_empty());
}

// ---------------------------------------------------------------------------------------
// Local directories
// ---------------------------------------------------------------------------------------

/// A temporary directory whose files may be immutable: `chattr -R -i`ed before it is
/// removed (else the removal fails), also when the test fails.
struct LockedDir(TempDir);

impl LockedDir {
    /// A new one; fails the test unless `chattr +i` works in it.
    fn new() -> Self {
        let dir = Self(TempDir::new().expect("temp dir"));
        require_chattr(dir.path());
        dir
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg("-R")
            .arg("-i")
            .arg(self.0.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Fails the test, saying why, unless `chattr +i` works in `dir`.
fn require_chattr(dir: &Path) {
    let probe = dir.join("chattr-probe");
    fs::write(&probe, b"probe").expect("writing a probe file");
    let out = Command::new("chattr")
        .arg("+i")
        .arg(&probe)
        .output()
        .expect("running chattr (e2fsprogs, from scripts/ensure-deps.sh)");
    let flagged = out.status.success() && is_immutable(&probe);
    let _ = Command::new("chattr").arg("-i").arg(&probe).status();
    let _ = fs::remove_file(&probe);
    assert!(
        flagged,
        "the local immutability tests need `chattr +i` to work in {} (run them as root, or \
         with CAP_LINUX_IMMUTABLE, on ext4, XFS or btrfs); chattr said: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `path` carries the immutable flag, as `lsattr` shows it.
fn is_immutable(path: &Path) -> bool {
    let out = Command::new("lsattr")
        .arg(path)
        .output()
        .expect("running lsattr (e2fsprogs)");
    assert!(
        out.status.success(),
        "lsattr {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .is_some_and(|flags| flags.contains('i'))
}

/// `user.tessera.retain_until` of each of `files` (`None` where there is none), read with
/// Python's `os.getxattr`.
fn retain_until(files: &[PathBuf]) -> Vec<Option<String>> {
    const READ: &str = "import json, os, sys; a = 'user.tessera.retain_until'; \
        print(json.dumps([os.getxattr(p, a).decode() if a in os.listxattr(p) else None \
        for p in sys.argv[1:]]))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(READ)
        .args(files)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "reading the retention attributes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

/// The retain-until date of each of `files` (Unix µs); fails the test where a file lacks
/// the immutable flag or the date.
#[track_caller]
fn locked_until(files: &[PathBuf]) -> Vec<i64> {
    files
        .iter()
        .zip(retain_until(files))
        .map(|(f, date)| {
            assert!(is_immutable(f), "{} lacks the immutable flag", f.display());
            let date =
                date.unwrap_or_else(|| panic!("{} has no user.tessera.retain_until", f.display()));
            rfc3339_us(&date)
        })
        .collect()
}

/// The snapshot files of local repository `repo`, sorted.
fn snapshot_files(repo: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo.join("snapshots"))
        .expect("listing snapshots/")
        .map(|e| e.expect("listing snapshots/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    files
}

/// Every pack, then every snapshot file, of local repository `repo`.
fn retained_files(repo: &Path) -> Vec<PathBuf> {
    let mut files = pack_files(repo);
    files.extend(snapshot_files(repo));
    files
}

/// In a local repository made with `--immutable 1d`, every pack and snapshot file of a
/// backup carries the immutable flag and a `user.tessera.retain_until` date at least a day
/// after the snapshot was taken; the kernel refuses `rm` of a pack; `forget` is refused
/// ("immutable until") and removes nothing; `tessera immutable --period 2d` raises the
/// period, and the protected-until and every file's date move to two days; `--period 1h` is
/// refused and changes no date; the snapshot restores byte for byte.
#[test]
fn local_files_stay_immutable_and_the_period_only_grows() {
    let dir = LockedDir::new();
    let t = dir.path();
    let repo = t.join("repo");
    let r = repo.display().to_string();
    init_repo(&repo, &["--immutable", "1d"]);
    let image = small_image(t, "immutable_local");
    let id = snapshot_id(&backup_json(&repo, "vm", &[("d0", image.as_path())]));
    let s = only(listed(&list_json(&repo)));
    assert_eq!(s.id, id);
    assert_protected_for(&s, DAY);

    let files = retained_files(&repo);
    let pack = &files[0];
    assert!(pack.extension().is_some_and(|e| e == "pack"), "{files:?}");
    assert!(
        files.contains(&repo.join(format!("snapshots/{id}.snap"))),
        "{files:?}"
    );
    for (f, date) in files.iter().zip(locked_until(&files)) {
        assert_covers(&f.display().to_string(), date, &s, DAY);
    }
    let rm = Command::new("rm")
        .arg("-f")
        .arg(pack)
        .output()
        .expect("running rm");
    assert!(
        !rm.status.success() && pack.exists(),
        "rm removed {}",
        pack.display()
    );

    tessera(["forget", &r, &id])
        .expect_code(REFUSED)
        .stderr_has("immutable until");
    assert_eq!(list_ids(&repo), std::slice::from_ref(&id));
    assert!(files.iter().all(|f| f.exists()), "forget removed files");

    let raised = tessera(["--json", "immutable", &r, "--period", "2d"]);
    raised.ok();
    assert_eq!(raised.json()["period_s"], 2 * 86_400, "{raised}");
    let s = only(listed(&list_json(&repo)));
    assert_protected_for(&s, 2 * DAY);
    let dates = locked_until(&files);
    for (f, date) in files.iter().zip(&dates) {
        assert_covers(&f.display().to_string(), *date, &s, 2 * DAY);
    }

    tessera(["immutable", &r, "--period", "1h"]).expect_code(REFUSED);
    assert_eq!(
        locked_until(&files),
        dates,
        "a refused shorter period changed dates"
    );
    assert_protected_for(&only(listed(&list_json(&repo))), 2 * DAY);
    let restored = t.join("restored.raw");
    restore(&repo, &id, &restored, false).ok();
    assert_same_file(&image, &restored);
}

/// Nothing is immutable forever: once snapshot A's period (5 s) has passed, and its packs'
/// own dates (a pack is retained a renewal beyond its snapshot, SPEC §28.3), `forget A`
/// succeeds and `compact --max-unused 0 --grace 0` deletes every pack only A used (B has
/// other data), lifting their flags, with no pack reported locked. B restores and the
/// repository verifies.
#[test]
fn expired_snapshots_are_forgotten_and_their_packs_compacted() {
    let dir = LockedDir::new();
    let t = dir.path();
    let repo = t.join("repo");
    let r = repo.display().to_string();
    init_repo(&repo, &["--immutable", "5s"]);
    let mut gen = DataGen::new(seed("immutable_expired"));
    let (image_a, image_b) = (t.join("a.raw"), t.join("b.raw"));
    make_image(&image_a, random(3 * MIB), &mut gen);
    make_image(&image_b, random(3 * MIB), &mut gen);
    let a = snapshot_id(&backup_json(&repo, "vm", &[("d0", image_a.as_path())]));
    let files_a = retained_files(&repo);
    let b = snapshot_id(&backup_json(&repo, "vm", &[("d0", image_b.as_path())]));
    let last = locked_until(&files_a).into_iter().max().expect("A's files");
    sleep_past(last);

    tessera(["forget", &r, &a]).ok();
    let out = tessera(["--json", "compact", &r, "--max-unused", "0", "--grace", "0"]);
    out.ok();
    assert_eq!(out.json()["plan"]["packs_locked"], 0, "{out}");
    let left: Vec<&PathBuf> = files_a.iter().filter(|f| f.exists()).collect();
    assert!(
        left.is_empty(),
        "A's files outlived their dates: {left:?}\n{out}"
    );
    assert_eq!(list_ids(&repo), std::slice::from_ref(&b));
    let restored = t.join("restored.raw");
    restore(&repo, &b, &restored, false).ok();
    assert_same_file(&image_b, &restored);
    verify(&repo).ok();
}

/// A pack that a protected snapshot uses stays, even once the snapshot that wrote it has
/// expired and is forgotten: B, A's image with a few blocks changed, taken after A's 20 s
/// passed, extends the retention of A's packs it shares to its own protected-until; after
/// `forget A` they hold data nothing uses, yet `compact --max-unused 0 --grace 0` leaves
/// every pack still retained in place and counts it in `packs_locked`. B restores and the
/// repository verifies.
#[test]
fn compaction_leaves_alone_a_pack_a_protected_snapshot_uses() {
    let dir = LockedDir::new();
    let t = dir.path();
    let repo = t.join("repo");
    let r = repo.display().to_string();
    init_repo(&repo, &["--immutable", "20s"]);
    let mut gen = DataGen::new(seed("immutable_shared_pack"));
    let image = t.join("disk.raw");
    make_image(&image, random(4 * MIB), &mut gen);
    backup_json(&repo, "vm", &[("d0", image.as_path())]);
    let a = only(listed(&list_json(&repo)));
    let packs_a = pack_files(&repo);
    sleep_past(a.until_us);

    mutate(&image, &mut gen, 4, 64 * 1024, (0, 0, 1));
    let b_id = snapshot_id(&backup_json(&repo, "vm", &[("d0", image.as_path())]));
    let b = listed(&list_json(&repo))
        .into_iter()
        .find(|s| s.id == b_id)
        .expect("B is listed");
    assert_protected_for(&b, 20 * SECOND);
    let dates = locked_until(&packs_a);
    assert!(
        dates.iter().any(|&d| d >= b.until_us - SECOND),
        "B's publish extended none of A's packs to B's protected-until {}: {dates:?}",
        b.until_us
    );

    tessera(["forget", &r, &a.id]).ok();
    let out = tessera(["--json", "compact", &r, "--max-unused", "0", "--grace", "0"]);
    let finished = now_us();
    out.ok();
    assert!(
        finished < b.until_us,
        "too slow to conclude: B's protection ended before the compaction did\n{out}"
    );
    let locked = out.json()["plan"]["packs_locked"]
        .as_u64()
        .unwrap_or_else(|| panic!("no plan.packs_locked in {out}"));
    assert!(locked >= 1, "{out}");
    for (pack, date) in packs_a.iter().zip(&dates) {
        if *date > finished {
            assert!(
                pack.exists(),
                "{} retained until {date} was removed",
                pack.display()
            );
        }
    }
    let restored = t.join("restored.raw");
    restore(&repo, &b_id, &restored, false).ok();
    assert_same_file(&image, &restored);
    verify(&repo).ok();
}
