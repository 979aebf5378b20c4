//! S3 repositories through the engine API, against a real SeaweedFS started on loopback by
//! each test ([`Seaweed`]): the whole life of a repository (init, full and delta backups,
//! byte-for-byte restores, verify, forget, compaction, repair, index rebuild), several
//! clients with their own index caches, create-only races, stale multipart uploads, and bad
//! input (wrong endpoint, refused credentials, missing bucket, foreign and truncated
//! objects), each failing with a message that names the problem and writing nothing.
//!
//! A test that cannot start SeaweedFS fails (it is installed by `scripts/ensure-deps.sh`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tessera_engine::location::LocationOptions;
use tessera_engine::ops::backup::{backup, BackupRequest, DiskSpec};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::ops::rebuild_index::rebuild_index;
use tessera_engine::ops::repair::{repair, RepairSources};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::repo::RepoStorage;
use tessera_engine::storage::s3::{S3Backend, S3Location, PART_SIZE};
use tessera_engine::storage::{Backend, ObjectKey, PutMode};
use tessera_engine::{Error, InitOptions, NoProgress, Repository};
use tessera_format::{ObjectKind, SnapshotId};
use tessera_tests::seaweed::{bucket_listing, options_for, Client, Seaweed, KEY_ID, SECRET};
use tessera_tests::{make_image, DataGen, ImageSpec};

const MIB: u64 = 1 << 20;

fn backup_disk(repo: &Repository, disk: DiskSpec) -> SnapshotId {
    let mut req = BackupRequest::one_disk("vm", &disk.name, &disk.path);
    req.disks = vec![disk];
    backup(repo, &req, &NoProgress)
        .unwrap_or_else(|e| panic!("backup to {}: {e}", repo.describe()))
        .id
}

fn backup_image(repo: &Repository, path: &Path) -> SnapshotId {
    backup_disk(repo, DiskSpec::new("d0", path))
}

/// Restores disk `d0` of `id` and asserts it equals the file `image` byte for byte.
#[track_caller]
fn assert_restores(repo: &Repository, id: SnapshotId, image: &Path, scratch: &Path) {
    let snapshot = repo.load_snapshot(id).expect("loading the snapshot");
    let out = scratch.join(format!("restore-{id}"));
    restore_disk(repo, id, &snapshot, "d0", &out, true, &NoProgress)
        .unwrap_or_else(|e| panic!("restoring {id}: {e}"));
    tessera_tests::assert_same_file(image, &out);
    std::fs::remove_file(&out).expect("removing the restored copy");
}

#[track_caller]
fn assert_clean(repo: &Repository, what: &str) {
    let report = check(repo, true, &NoProgress).expect("check");
    assert!(
        report.is_clean(),
        "{what}: check found {:?}",
        report.problems.iter().take(5).collect::<Vec<_>>()
    );
}

fn snapshot_ids(repo: &Repository) -> Vec<SnapshotId> {
    repo.index()
        .snapshots()
        .expect("catalog")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn forget(repo: &Repository, ids: &[SnapshotId]) {
    let plan = plan_forget(repo, ids, false).expect("plan forget");
    apply_forget(repo, &plan).expect("forget");
}

fn compact_all(repo: &Repository) -> usize {
    let plan = plan_compact(repo, 0.0).expect("plan compaction");
    apply_compact(repo, &plan, &NoProgress).expect("compaction");
    plan.packs.len()
}

/// A 48 MiB mixed image (its packs are larger than one upload part).
fn image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    make_image(&path, ImageSpec::mixed(48 * MIB), &mut DataGen::new(seed));
    path
}

/// A changed-block list in tessera's text format.
fn changed_list(path: &Path, size: u64, base: &str, state: &str, extents: &[(u64, u64)]) {
    let mut text =
        format!("tessera-changed-blocks v1\nsize {size}\nbase-state {base}\nstate {state}\n");
    for (off, len) in extents {
        text = format!("{text}extent {off} {len}\n");
    }
    std::fs::write(path, text).expect("writing the changed-block list");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one repository's life in order: each step starts from the state the last left"
)]
fn a_repository_lives_its_whole_life_on_s3() {
    let sw = Seaweed::start("life");
    let work = tempfile::tempdir().unwrap();
    let client = Client::new(&sw.location("vm/one"), sw.options());
    client.init();
    assert!(
        client.cache_dir().join("index").exists(),
        "init made no index in the cache directory"
    );
    let repo = client.writer();
    assert_eq!(repo.describe(), "s3://life/vm/one");

    // Full backup through an allocation map, then a delta through a changed-block list.
    let img = image(work.path(), "disk.img", 1);
    let size = 48 * MIB;
    let list1 = work.path().join("full.list");
    changed_list(&list1, size, "*", "cbt:1", &[(0, size)]);
    let full = backup_disk(
        &repo,
        DiskSpec {
            changes: Some(list1),
            ..DiskSpec::new("d0", &img)
        },
    );
    let full_copy = work.path().join("full.img");
    std::fs::copy(&img, &full_copy).unwrap();
    let mut gen = DataGen::new(2);
    let writes = [(5 * MIB, 300_000), (20 * MIB + 7, 70_000), (41 * MIB, MIB)];
    {
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        for (off, len) in writes {
            let data = gen.bytes(tessera_tests::Fill::Random, len as usize);
            std::os::unix::fs::FileExt::write_all_at(&f, &data, off).unwrap();
        }
    }
    let list2 = work.path().join("delta.list");
    changed_list(&list2, size, "cbt:1", "cbt:2", &writes);
    let delta = backup_disk(
        &repo,
        DiskSpec {
            changes: Some(list2),
            ..DiskSpec::new("d0", &img)
        },
    );
    let header = repo
        .index()
        .snapshot(delta)
        .unwrap()
        .expect("delta catalogued");
    assert_eq!(
        header.disks[0]
            .identity
            .iter()
            .find(|(k, _)| k == "backup.mode")
            .map(|(_, v)| v.as_str()),
        Some("delta"),
        "the second backup was not a delta: {:?}",
        header.disks[0].identity
    );
    assert!(
        header.disks[0].stats.bytes_read < 3 * MIB,
        "the delta read {} bytes",
        header.disks[0].stats.bytes_read
    );
    let objects = bucket_listing(repo.backend());
    let big_pack = objects
        .iter()
        .filter(|(k, _)| k.starts_with("packs/"))
        .map(|(_, size)| *size)
        .max()
        .expect("packs in the bucket");
    assert!(
        big_pack > PART_SIZE as u64,
        "no pack larger than a part ({big_pack}): multipart uploads untested"
    );
    assert_restores(&repo, full, &full_copy, work.path());
    assert_restores(&repo, delta, &img, work.path());
    assert_clean(&repo, "after two backups");

    // A reader sees both.
    drop(repo);
    let reader = client.reader();
    assert_eq!(snapshot_ids(&reader).len(), 2);
    drop(reader);

    // Forget the full, compact, and everything left still restores.
    let repo = client.writer();
    forget(&repo, &[full]);
    let compacted = compact_all(&repo);
    assert!(
        compacted > 0,
        "compaction rewrote no pack after the full was forgotten"
    );
    drop(repo);
    let repo = client.writer();
    assert_eq!(snapshot_ids(&repo), vec![delta]);
    assert!(
        repo.backend()
            .size(&ObjectKey::snapshot(full))
            .unwrap()
            .is_none(),
        "the forgotten snapshot's file is still in the bucket"
    );
    assert_clean(&repo, "after forget and compaction");
    assert_restores(&repo, delta, &img, work.path());

    // Damage a live chunk inside its pack; verify names it; repair heals it from the image.
    let mut victim = None;
    repo.index()
        .for_each_object(ObjectKind::Chunk, |_, e| {
            if victim.is_none() && e.refcount > 0 && e.stored_len > 64 {
                victim = Some(e);
            }
            Ok(())
        })
        .unwrap();
    let victim = victim.expect("a live chunk");
    let key = ObjectKey::pack(victim.pack);
    let mut bytes = repo.backend().get(&key).unwrap();
    bytes[usize::try_from(victim.offset).unwrap() + 60] ^= 0x5a;
    repo.backend()
        .put_bytes(&key, PutMode::Replace, &bytes)
        .unwrap();
    let report = check(&repo, true, &NoProgress).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&victim.pack.to_hex())),
        "check did not name the damaged pack: {:?}",
        report.problems
    );
    let repaired = repair(
        &repo,
        &RepairSources {
            other: None,
            images: vec![("d0".into(), img.clone())],
            quarantine_snapshots: false,
        },
        &NoProgress,
    )
    .expect("repair");
    assert!(repaired.is_clean(), "repair left {:?}", repaired.problems);
    drop(repo);
    let repo = client.writer();
    assert_clean(&repo, "after repair");
    assert_restores(&repo, delta, &img, work.path());
    drop(repo);

    // Rebuild the index from the bucket alone.
    let report = rebuild_index(
        &client.storage(),
        &tessera_engine::crypto::NoSecret,
        &NoProgress,
    )
    .expect("rebuild");
    assert_eq!(report.snapshots, 1, "{report:?}");
    assert!(
        report.bad_snapshots.is_empty() && report.missing.is_empty(),
        "{report:?}"
    );
    let repo = client.writer();
    assert_eq!(snapshot_ids(&repo), vec![delta]);
    assert_clean(&repo, "after rebuilding the index");
    assert_restores(&repo, delta, &img, work.path());
    let leftovers = S3Backend::connect(S3Location::parse(&client.location).unwrap(), &sw.options())
        .unwrap()
        .incomplete_uploads()
        .unwrap();
    assert!(
        leftovers.is_empty(),
        "incomplete uploads left: {leftovers:?}"
    );
}

#[test]
fn clients_with_their_own_caches_see_each_other() {
    let sw = Seaweed::start("shared");
    let work = tempfile::tempdir().unwrap();
    let location = sw.location("team");
    let a = Client::new(&location, sw.options());
    a.init();
    let img1 = image(work.path(), "one.img", 10);
    let first = backup_image(&a.writer(), &img1);

    // B starts with an empty cache: opening rebuilds it from the bucket.
    let b = Client::new(&location, sw.options());
    let reader = b.reader();
    assert_eq!(snapshot_ids(&reader), vec![first]);
    let refresh = reader.recovery.cache.clone().expect("a cache refresh");
    assert!(refresh.rebuilt.is_some(), "{refresh:?}");
    assert_restores(&reader, first, &img1, work.path());
    drop(reader);

    // Keep an old copy of A's cache, then A backs up again and forgets the first.
    let old_copy = work.path().join("old-cache");
    copy_tree(&a.cache_dir(), &old_copy);
    let img2 = image(work.path(), "two.img", 11);
    let second = backup_image(&a.writer(), &img2);
    {
        let repo = a.writer();
        forget(&repo, &[first]);
    }

    // B's cache learns both changes on open: the new one catalogued, the forgotten dropped.
    let repo = b.writer();
    assert_eq!(snapshot_ids(&repo), vec![second]);
    let refresh = repo.recovery.cache.clone().expect("a cache refresh");
    assert_eq!(refresh.snapshots_catalogued, 1, "{refresh:?}");
    assert_eq!(
        refresh.snapshots_dropped,
        vec![first.to_hex()],
        "{refresh:?}"
    );
    assert!(refresh.rebuilt.is_none(), "{refresh:?}");
    assert_clean(&repo, "B after A's backup and forget");
    assert_restores(&repo, second, &img2, work.path());
    drop(repo);

    // The old copy of A's cache, put back, is brought up to date the same way.
    let stale = Client::new(&location, sw.options());
    copy_tree(&old_copy, &stale.cache_dir());
    let repo = stale.reader();
    assert_eq!(snapshot_ids(&repo), vec![second]);
    assert_clean(&repo, "the stale cache after its refresh");
    drop(repo);

    // A compacts: packs B's cache knows vanish, so B rebuilds rather than trust it.
    compact_all(&a.writer());
    let repo = b.writer();
    let refresh = repo.recovery.cache.clone().expect("a cache refresh");
    assert!(
        refresh
            .rebuilt
            .as_deref()
            .is_some_and(|w| w.contains("gone from the bucket")),
        "{refresh:?}"
    );
    assert_clean(&repo, "B after A's compaction");
    assert_restores(&repo, second, &img2, work.path());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn create_only_puts_race_and_exactly_one_wins() {
    let sw = Seaweed::start("race");
    let backend = Arc::new(
        S3Backend::connect(S3Location::parse(&sw.location("r")).unwrap(), &sw.options()).unwrap(),
    );
    for round in 0..5 {
        let key = ObjectKey::from_listed(format!("snapshots/race-{round}"));
        let racers = 6;
        let barrier = Arc::new(Barrier::new(racers));
        let outcomes: Vec<(Vec<u8>, Result<(), Error>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..racers)
                .map(|i| {
                    let (backend, barrier, key) = (backend.clone(), barrier.clone(), key.clone());
                    s.spawn(move || {
                        let bytes = format!("racer {i} of round {round}").into_bytes();
                        barrier.wait();
                        let r = backend.put_bytes(&key, PutMode::Create, &bytes);
                        (bytes, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Vec<u8>> = outcomes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(b, _)| b)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} winners: {:?}",
            winners.len(),
            outcomes
                .iter()
                .map(|(_, r)| r.as_ref().err().map(ToString::to_string))
                .collect::<Vec<_>>()
        );
        for (_, r) in &outcomes {
            if let Err(e) = r {
                assert!(
                    matches!(e, Error::ObjectExists { .. }),
                    "round {round}: {e}"
                );
            }
        }
        assert_eq!(&backend.get(&key).unwrap(), winners[0], "round {round}");
    }
    // A replacing put replaces; a create-only one with the same bytes as the object is the
    // retry of a put that landed, and succeeds.
    let key = ObjectKey::from_listed("snapshots/replace".into());
    backend.put_bytes(&key, PutMode::Create, b"one").unwrap();
    backend.put_bytes(&key, PutMode::Create, b"one").unwrap();
    assert!(matches!(
        backend.put_bytes(&key, PutMode::Create, b"two"),
        Err(Error::ObjectExists { .. })
    ));
    backend.put_bytes(&key, PutMode::Replace, b"two").unwrap();
    assert_eq!(backend.get(&key).unwrap(), b"two");
}

#[test]
fn reads_are_ranged_bounded_and_report_missing_objects_and_short_ranges() {
    let sw = Seaweed::start("reads");
    let backend =
        S3Backend::connect(S3Location::parse(&sw.location("p")).unwrap(), &sw.options()).unwrap();
    let key = ObjectKey::from_listed("snapshots/blob".into());
    let bytes: Vec<u8> = (0..3 * PART_SIZE + 12345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut w = backend.put(&key, PutMode::Create).unwrap();
    for piece in bytes.chunks(100_000) {
        std::io::Write::write_all(&mut w, piece).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(backend.size(&key).unwrap(), Some(bytes.len() as u64));
    assert_eq!(backend.get(&key).unwrap(), bytes);
    let at = PART_SIZE as u64 - 5;
    assert_eq!(
        backend.get_range(&key, at, 1000).unwrap(),
        &bytes[at as usize..at as usize + 1000]
    );
    assert_eq!(backend.get_range(&key, 3, 0).unwrap(), Vec::<u8>::new());
    for (offset, len) in [(bytes.len() as u64 - 10, 20), (bytes.len() as u64 + 5, 1)] {
        let e = backend.get_range(&key, offset, len).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "reading past the end: {e}"
        );
    }
    let missing = ObjectKey::from_listed("snapshots/none".into());
    assert!(backend.get(&missing).unwrap_err().is_not_found());
    assert!(backend
        .get_range(&missing, 0, 10)
        .unwrap_err()
        .is_not_found());
    assert_eq!(backend.size(&missing).unwrap(), None);
    backend
        .delete(&missing)
        .expect("deleting a missing object is not an error");
    // Listing pages through more keys than one page holds (1000).
    for i in 0..1005 {
        backend
            .put_bytes(
                &ObjectKey::from_listed(format!("quarantine/{i:05}.intent")),
                PutMode::Replace,
                b"",
            )
            .unwrap();
    }
    let listed = backend.list("quarantine/").unwrap();
    assert_eq!(listed.len(), 1005);
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "listing not sorted");
    assert_eq!(backend.list("snapshots/").unwrap(), vec![key]);
}

#[test]
fn abandoned_uploads_are_aborted_by_clean_staging_only_when_old() {
    let sw = Seaweed::start("staging");
    let location = S3Location::parse(&sw.location("st")).unwrap();
    let backend = S3Backend::connect(location.clone(), &sw.options()).unwrap();
    // A writer that crashed mid-pack: two parts uploaded, never finished nor aborted.
    let key = ObjectKey::pack(tessera_format::PackId([7; 16]));
    let mut w = backend.put(&key, PutMode::Create).unwrap();
    std::io::Write::write_all(&mut w, &vec![1u8; 2 * PART_SIZE + 10]).unwrap();
    std::mem::forget(w);
    // A dropped writer aborts its own upload.
    let mut dropped = backend
        .put(
            &ObjectKey::pack(tessera_format::PackId([8; 16])),
            PutMode::Create,
        )
        .unwrap();
    std::io::Write::write_all(&mut dropped, &vec![2u8; PART_SIZE + 10]).unwrap();
    drop(dropped);
    let pending = backend.incomplete_uploads().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].0, key.as_str());
    assert!(pending[0].1 < Duration::from_mins(10), "{pending:?}");
    assert!(
        backend.list("packs/").unwrap().is_empty(),
        "an unfinished pack is visible"
    );
    assert_eq!(
        backend.clean_staging().unwrap(),
        0,
        "a young upload was aborted"
    );
    assert_eq!(backend.incomplete_uploads().unwrap().len(), 1);
    assert_eq!(backend.abort_uploads_older_than(Duration::ZERO).unwrap(), 1);
    assert!(backend.incomplete_uploads().unwrap().is_empty());
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let sw = Seaweed::start("bad");
    let work = tempfile::tempdir().unwrap();
    let location = sw.location("repo");
    let good = Client::new(&location, sw.options());
    good.init();
    let img = image(work.path(), "disk.img", 20);
    backup_image(&good.writer(), &img);
    let backend = good.storage().backend;
    let before = bucket_listing(&*backend);

    let attempt = |location: &str, options: tessera_engine::storage::s3::S3Options| {
        let cache = work.path().join(format!("cache-{}", rand::random::<u32>()));
        let opts = LocationOptions {
            s3: options,
            cache_dir: Some(cache.clone()),
        };
        let err = RepoStorage::at(location, &opts)
            .and_then(|s| Repository::open_on(s, &tessera_engine::crypto::NoSecret))
            .err()
            .unwrap_or_else(|| panic!("{location} opened"));
        assert!(
            !cache.exists(),
            "a failed connection created the cache directory"
        );
        err.to_string()
    };
    // Nothing listens on port 1.
    let msg = attempt(&location, options_for("http://127.0.0.1:1", KEY_ID, SECRET));
    assert!(
        msg.contains("cannot connect to http://127.0.0.1:1"),
        "{msg}"
    );
    let msg = attempt(
        &location,
        options_for(&sw.endpoint, KEY_ID, "wrong-secret-value"),
    );
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("wrong-secret-value"),
        "the secret leaked: {msg}"
    );
    let msg = attempt(&location, options_for(&sw.endpoint, "unknown-key", SECRET));
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(!msg.contains(SECRET), "the secret leaked: {msg}");
    let msg = attempt("s3://no-such-bucket/repo", sw.options());
    assert!(
        msg.contains("bucket \"no-such-bucket\" does not exist"),
        "{msg}"
    );
    let msg = attempt("s3://Bad_Bucket/x", sw.options());
    assert!(msg.contains("not an S3 repository location"), "{msg}");

    // A prefix holding something else is not a repository, and init refuses it.
    let foreign = sw.location("other");
    let other = Client::new(&foreign, sw.options());
    other
        .storage()
        .backend
        .put_bytes(
            &ObjectKey::from_listed("notes.txt".into()),
            PutMode::Create,
            b"hello",
        )
        .unwrap();
    let msg = Repository::open_on(other.storage(), &tessera_engine::crypto::NoSecret)
        .err()
        .expect("opened")
        .to_string();
    assert!(
        msg.contains("s3://bad/other is not a tessera repository"),
        "{msg}"
    );
    let msg = Repository::init_at(&foreign, &other.options, InitOptions::default(), None)
        .err()
        .expect("init over a foreign object")
        .to_string();
    assert!(msg.contains("s3://bad/other already exists"), "{msg}");
    assert_eq!(
        bucket_listing(&*other.storage().backend).len(),
        1,
        "init wrote next to the foreign object"
    );
    // And init refuses an existing repository.
    assert!(Repository::init_at(&location, &good.options, InitOptions::default(), None).is_err());
    assert_eq!(
        bucket_listing(&*backend),
        before,
        "a failed attempt wrote to the bucket"
    );
}

#[test]
fn truncated_objects_are_named_and_opening_them_writes_nothing() {
    let sw = Seaweed::start("trunc");
    let work = tempfile::tempdir().unwrap();
    let location = sw.location("repo");
    let good = Client::new(&location, sw.options());
    good.init();
    backup_image(&good.writer(), &image(work.path(), "disk.img", 21));
    let backend = good.storage().backend;
    // A truncated pack is named by verify; a truncated config stops every open.
    let pack = backend.list("packs/").unwrap().remove(0);
    let bytes = backend.get(&pack).unwrap();
    backend
        .put_bytes(&pack, PutMode::Replace, &bytes[..bytes.len() / 2])
        .unwrap();
    let repo = good.writer();
    let report = check(&repo, true, &NoProgress).unwrap();
    let name = pack.as_pack().unwrap().to_hex();
    assert!(
        report.problems.iter().any(|p| p.contains(&name)),
        "check did not name the truncated pack {name}: {:?}",
        report.problems
    );
    drop(repo);
    let truncated = bucket_listing(&*backend);
    let config = backend.get(&ObjectKey::config()).unwrap();
    backend
        .put_bytes(&ObjectKey::config(), PutMode::Replace, &config[..20])
        .unwrap();
    let fresh = Client::new(&location, sw.options());
    let msg = Repository::open_on(fresh.storage(), &tessera_engine::crypto::NoSecret)
        .err()
        .expect("opened")
        .to_string();
    assert!(
        msg.contains("repository config of s3://trunc/repo is unreadable"),
        "{msg}"
    );
    let mut after = bucket_listing(&*backend);
    after.insert("config".into(), truncated["config"]);
    assert_eq!(
        after, truncated,
        "opening a damaged repository wrote to the bucket"
    );
}
