//! `tessera verify` beyond the full check: scope (`--snapshot`, `--series`), seeded samples
//! (`--sample`, `--seed`), the verification ledger (`--skip-verified-within`), running next
//! to a writer, and bad input.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tessera_format::ObjectKind;
use tessera_tests::{
    backup_args, backup_json, block_digests, finish_child, init_repo, lock_says, make_image,
    mutate, seed, signal, snapshot_id, tessera, tessera_cmd, wait_until, DataGen, ImageSpec,
    KillOnDrop, Out, Value,
};

const BLOCK: u64 = 64 * 1024;
/// Blocks per manifest page.
const PAGE_ENTRIES: u64 = 512;

/// `tessera --json verify REPO extra...`.
fn verify_json(repo: &Path, extra: &[&str]) -> (Out, Value) {
    let mut args = vec![
        "--json".to_string(),
        "verify".into(),
        repo.display().to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let out = tessera(&args);
    let v = out.json();
    (out, v)
}

/// Runs verify expecting `code`; returns the report.
#[track_caller]
fn report(repo: &Path, extra: &[&str], code: i32) -> Value {
    let (out, v) = verify_json(repo, extra);
    out.expect_code(code);
    assert_eq!(v["ok"], code == 0, "{out}");
    assert_eq!(v.get("error").is_some(), code != 0, "{out}");
    v["report"].clone()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// Objects a one-disk snapshot of `img` must reference: its distinct non-zero blocks and
/// (as an upper bound) its pages.
fn distinct_blocks(img: &Path) -> (HashSet<[u8; 32]>, u64) {
    let blocks = block_digests(img, BLOCK);
    let pages = (blocks.len() as u64).div_ceil(PAGE_ENTRIES);
    (
        blocks
            .iter()
            .filter(|b| !b.zero)
            .map(|b| b.digest)
            .collect(),
        pages,
    )
}

/// Flips one byte in the middle of the stored bytes of chunk `digest`.
fn flip_chunk(repo: &Path, digest: &[u8; 32]) {
    let (pack, offset, len) = {
        let r = tessera_engine::Repository::open(repo).unwrap();
        let e = r
            .index()
            .get_object(ObjectKind::Chunk, digest)
            .unwrap()
            .expect("chunk is in the index");
        (e.pack.to_hex(), e.offset, u64::from(e.stored_len))
    };
    let path = repo
        .join("packs")
        .join(&pack[..2])
        .join(format!("{pack}.pack"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = offset + 56 + len / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

fn damaged_digests(report: &Value) -> Vec<String> {
    report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

struct Fixture {
    t: TempDir,
    repo: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let t = TempDir::new().unwrap();
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        Self { t, repo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }
}

#[test]
fn scope_reads_only_what_the_snapshots_reference() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_scope"));
    let img_a = f.path("img_a.img");
    make_image(&img_a, ImageSpec::mixed(3 << 20), &mut gen);
    let a0 = f.path("a0.img");
    fs::copy(&img_a, &a0).unwrap();
    let snap_x = snapshot_id(&backup_json(&f.repo, "a", &[("d", &img_a)]));
    mutate(&img_a, &mut gen, 6, 200_000, (1, 2, 2));
    let snap_x2 = snapshot_id(&backup_json(&f.repo, "a", &[("d", &img_a)]));
    let img_b = f.path("img_b.img");
    make_image(
        &img_b,
        ImageSpec {
            weights: (0, 1, 1),
            ..ImageSpec::mixed(2 << 20)
        },
        &mut gen,
    );
    let snap_y = snapshot_id(&backup_json(&f.repo, "b", &[("d", &img_b)]));

    let full = report(&f.repo, &[], 0);
    assert!(full["scope"]["snapshots"].is_null(), "{full}");
    let full_read = num(&full, "objects_read");

    // Exactly X's distinct non-zero blocks plus its page(s).
    let (x_blocks, x_pages) = distinct_blocks(&a0);
    let rx = report(&f.repo, &["--snapshot", &snap_x], 0);
    assert_eq!(
        rx["scope"]["snapshots"],
        serde_json::json!([snap_x.clone()]),
        "{rx}"
    );
    let read = num(&rx, "objects_read");
    assert_eq!(read, x_blocks.len() as u64 + x_pages, "{rx}");
    assert_eq!(num(&rx["scope"], "objects"), read, "{rx}");
    assert!(read < full_read, "scoped {read} vs full {full_read}");
    // The structural checks still cover every snapshot.
    assert_eq!(num(&rx, "snapshots"), 3);

    // A series: the union of its snapshots, less than everything.
    let ra = report(&f.repo, &["--series", "a"], 0);
    let (a_blocks, _) = distinct_blocks(&img_a);
    let union: HashSet<_> = x_blocks.union(&a_blocks).collect();
    assert!(num(&ra, "objects_read") >= union.len() as u64, "{ra}");
    assert!(num(&ra, "objects_read") < full_read, "{ra}");
    assert_eq!(ra["scope"]["snapshots"].as_array().unwrap().len(), 2);
    // Repeated and combined references are de-duplicated.
    let rxx = report(
        &f.repo,
        &[
            "--snapshot",
            &snap_x,
            "--snapshot",
            &snap_x[..12],
            "--snapshot",
            &snap_x2,
        ],
        0,
    );
    assert_eq!(num(&rxx, "objects_read"), num(&ra, "objects_read"), "{rxx}");

    // Damage img_a chunk only Y uses.
    let only_y = block_digests(&img_b, BLOCK)
        .into_iter()
        .find(|blk| !blk.zero && !x_blocks.contains(&blk.digest) && !a_blocks.contains(&blk.digest))
        .expect("img_a block only in b");
    flip_chunk(&f.repo, &only_y.digest);
    let victim = tessera_tests::hex(&only_y.digest);
    let rx = report(&f.repo, &["--snapshot", &snap_x], 0);
    assert!(damaged_digests(&rx).is_empty(), "{rx}");
    report(&f.repo, &["--series", "a"], 0);
    let all = report(&f.repo, &[], 4);
    assert_eq!(damaged_digests(&all), vec![victim.clone()], "{all}");
    let ry = report(&f.repo, &["--snapshot", "latest@b"], 4);
    assert_eq!(damaged_digests(&ry), vec![victim.clone()], "{ry}");
    assert!(
        ry["damaged"][0]["ranges"][0]["snapshot"] == Value::String(snap_y.clone()),
        "{ry}"
    );
    // Text output too.
    let out = tessera([
        "verify",
        &f.repo.display().to_string(),
        "--snapshot",
        &snap_y,
    ]);
    out.expect_code(4);
    assert!(out.stdout.contains(&victim), "{out}");
    assert!(
        out.stdout.contains("scope: objects of 1 snapshots"),
        "{out}"
    );
}

#[test]
fn samples_are_seeded_and_sized() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_sample"));
    let img = f.path("img");
    make_image(
        &img,
        ImageSpec {
            weights: (0, 1, 1),
            ..ImageSpec::mixed(16 << 20)
        },
        &mut gen,
    );
    backup_json(&f.repo, "s", &[("d", &img)]);
    let full = report(&f.repo, &[], 0);
    let n = num(&full, "objects_read");
    assert!(n >= 200, "{full}");

    let s7 = report(&f.repo, &["--sample", "10%", "--seed", "7"], 0);
    let s7b = report(&f.repo, &["--sample", "10%", "--seed", "7"], 0);
    let s8 = report(&f.repo, &["--sample", "10%", "--seed", "8"], 0);
    for s in [&s7, &s7b, &s8] {
        let read = num(s, "objects_read");
        assert!(
            read.abs_diff(n / 10) <= 1 + n / 100,
            "read {read} of {n}: {s}"
        );
        assert_eq!(num(&s["sample"], "candidates"), n, "{s}");
        assert_eq!(num(&s["sample"], "objects_chosen"), read, "{s}");
    }
    assert_eq!(s7["sample"]["seed"], 7);
    assert_eq!(s7["sample"]["fingerprint"], s7b["sample"]["fingerprint"]);
    assert_eq!(num(&s7, "bytes_read"), num(&s7b, "bytes_read"));
    assert_ne!(s7["sample"]["fingerprint"], s8["sample"]["fingerprint"]);
    assert_ne!(num(&s7, "bytes_read"), num(&s8, "bytes_read"));

    // Without --seed a seed is drawn and reported; repeating with it reads the same.
    let drawn = report(&f.repo, &["--sample", "10%"], 0);
    let seed = drawn["sample"]["seed"]
        .as_u64()
        .expect("a reported seed")
        .to_string();
    let again = report(&f.repo, &["--sample", "10%", "--seed", &seed], 0);
    assert_eq!(
        drawn["sample"]["fingerprint"],
        again["sample"]["fingerprint"]
    );
    let text = tessera(["verify", &f.repo.display().to_string(), "--sample", "5%"]);
    text.ok();
    assert!(text.stdout.contains("seed "), "{text}");

    // A byte budget: at least the budget, far less than everything.
    let full_bytes = num(&full, "bytes_read");
    let sb = report(&f.repo, &["--sample", "1MiB", "--seed", "3"], 0);
    let got = num(&sb, "bytes_read");
    assert!(((1 << 20)..(1 << 20) + 2 * BLOCK).contains(&got), "{sb}");
    assert!(got < full_bytes / 4, "{sb}");
    assert_eq!(num(&sb["sample"], "bytes"), 1 << 20);
}

#[test]
fn ledger_skips_recently_verified_objects() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_ledger"));
    let img = f.path("img");
    make_image(&img, ImageSpec::mixed(4 << 20), &mut gen);
    backup_json(&f.repo, "s", &[("d", &img)]);
    let first = report(&f.repo, &[], 0);
    let n = num(&first, "objects_read");
    assert!(n > 0);
    assert_eq!(num(&first, "ledger_recorded"), n, "{first}");
    assert!(f.repo.join("ledger").is_dir());

    let skip = ["--skip-verified-within", "1d"];
    let second = report(&f.repo, &skip, 0);
    assert_eq!(num(&second, "objects_read"), 0, "{second}");
    assert_eq!(num(&second, "bytes_read"), 0, "{second}");
    assert_eq!(
        num(&second, "objects_skipped_recently_verified"),
        n,
        "{second}"
    );

    // New data: only the new objects are read.
    let (old_blocks, _) = distinct_blocks(&img);
    mutate(&img, &mut gen, 5, 150_000, (0, 1, 1));
    let (new_blocks, _) = distinct_blocks(&img);
    let fresh = new_blocks.difference(&old_blocks).count() as u64;
    assert!(fresh > 0);
    backup_json(&f.repo, "s", &[("d", &img)]);
    let third = report(&f.repo, &skip, 0);
    let read = num(&third, "objects_read");
    assert_eq!(
        num(&third, "objects_skipped_recently_verified"),
        n,
        "{third}"
    );
    assert_eq!(read + n, num(&third["scope"], "objects"), "{third}");
    // The new chunks plus the new snapshot's page(s).
    assert_eq!(read, fresh + 1, "read {read}, {fresh} new blocks: {third}");
    let fourth = report(&f.repo, &skip, 0);
    assert_eq!(num(&fourth, "objects_read"), 0, "{fourth}");
    let total = num(&fourth, "objects_skipped_recently_verified");

    // The ledger is a cache: without it everything is read again.
    fs::remove_dir_all(f.repo.join("ledger")).unwrap();
    let fifth = report(&f.repo, &skip, 0);
    assert_eq!(num(&fifth, "objects_read"), total, "{fifth}");
    assert_eq!(
        num(&fifth, "objects_skipped_recently_verified"),
        0,
        "{fifth}"
    );

    // A damaged object is never recorded: found on every run.
    fs::remove_dir_all(f.repo.join("ledger")).unwrap();
    let victim = new_blocks.difference(&old_blocks).next().unwrap();
    flip_chunk(&f.repo, victim);
    let hex = tessera_tests::hex(victim);
    let r1 = report(&f.repo, &[], 4);
    assert_eq!(damaged_digests(&r1), vec![hex.clone()], "{r1}");
    assert_eq!(num(&r1, "ledger_recorded"), total - 1, "{r1}");
    for _ in 0..2 {
        let r = report(&f.repo, &skip, 4);
        assert_eq!(damaged_digests(&r), vec![hex.clone()], "{r}");
        assert_eq!(num(&r, "objects_read"), 1, "{r}");
    }
}

#[test]
fn verify_runs_next_to_a_writer() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_next_to_writer"));
    let small = f.path("small");
    make_image(&small, ImageSpec::mixed(1 << 20), &mut gen);
    backup_json(&f.repo, "small", &[("d", &small)]);
    let big = f.path("big");
    make_image(
        &big,
        ImageSpec {
            weights: (0, 1, 3),
            ..ImageSpec::mixed(64 << 20)
        },
        &mut gen,
    );

    let mut holder = KillOnDrop(None);
    for attempt in 0..5 {
        let mut child = tessera_cmd(backup_args(&f.repo, "big", &[("d", &big)]))
            .spawn()
            .unwrap();
        let pid = child.id();
        let held = wait_until(Duration::from_secs(30), || {
            lock_says(&f.repo, pid) || child.try_wait().unwrap().is_some()
        });
        assert!(held, "the backup never wrote its pid into REPO/lock");
        signal(pid, "STOP");
        if child.try_wait().unwrap().is_none() && lock_says(&f.repo, pid) {
            holder.0 = Some(child);
            break;
        }
        eprintln!("attempt {attempt}: the writer finished before it could be frozen");
        signal(pid, "CONT");
        let _ = child.wait();
    }
    let child = holder
        .0
        .as_ref()
        .expect("could not catch a backup holding the lock");
    let pid = child.id();

    let r = report(&f.repo, &[], 0);
    assert_eq!(num(&r, "snapshots"), 1, "{r}");
    let before = num(&r, "objects_read");
    assert!(before > 0);
    let r = report(&f.repo, &["--skip-verified-within", "1d"], 0);
    assert_eq!(num(&r, "objects_read"), 0, "{r}");
    assert!(
        lock_says(&f.repo, pid),
        "verify disturbed the writer's lock"
    );

    signal(pid, "CONT");
    let out = finish_child(holder.0.take().unwrap(), &[]);
    assert_eq!(out.code, 0, "{out}");
    let r = report(&f.repo, &["--skip-verified-within", "1d"], 0);
    assert_eq!(num(&r, "snapshots"), 2, "{r}");
    assert!(num(&r, "objects_read") > 0, "{r}");
    assert_eq!(num(&r, "objects_skipped_recently_verified"), before, "{r}");
}

#[test]
fn bad_verify_arguments() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_bad_args"));
    let img = f.path("img");
    make_image(&img, ImageSpec::mixed(300_000), &mut gen);
    backup_json(&f.repo, "s", &[("d", &img)]);
    let repo = f.repo.display().to_string();
    for (args, phrase) in [
        (vec!["--sample", "150%"], "outside 0%..100%"),
        (vec!["--sample", "abc"], "neither a share"),
        (vec!["--sample", "0%"], "would read nothing"),
        (vec!["--skip-verified-within", "3x"], "is not a duration"),
        (vec!["--snapshot", "zzzz"], "not a snapshot reference"),
        (vec!["--snapshot", "abcdef"], "no snapshot matches"),
        (vec!["--series", "nope"], "has no snapshots"),
        (vec!["--seed", "3"], "--seed only applies to --sample"),
        (vec!["--metadata-only", "--sample", "5%"], "--metadata-only"),
    ] {
        let mut a = vec!["verify", repo.as_str()];
        a.extend(&args);
        tessera(&a).expect_code(2).stderr_has(phrase);
        let mut j = vec!["--json"];
        j.extend(&a);
        let out = tessera(&j);
        out.expect_code(2);
        let v = out.json();
        assert_eq!(v["ok"], false, "{out}");
        assert!(v["error"].as_str().unwrap().contains(phrase), "{out}");
    }
    // Nothing was read or recorded by the refused runs.
    assert!(!f.repo.join("ledger").exists());
}

#[test]
fn a_second_verify_is_refused_while_one_holds_the_ledger() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_ledger_lock"));
    let img = f.path("img");
    make_image(&img, ImageSpec::mixed(300_000), &mut gen);
    backup_json(&f.repo, "s", &[("d", &img)]);
    // Hold the ledger's lock the way a running verify does.
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(f.repo.join("ledger.lock"))
        .unwrap();
    held.try_lock().unwrap();
    let repo = f.repo.display().to_string();
    // Locked (3): retry later.
    tessera(["verify", &repo])
        .expect_code(3)
        .stderr_has("another `tessera verify` is running");
    // Metadata-only runs do not use the ledger.
    tessera(["verify", &repo, "--metadata-only"]).ok();
    drop(held);
    report(&f.repo, &[], 0);
}

/// `tessera --json list REPO`: id → damaged flag.
fn list_damaged(repo: &Path) -> Vec<(String, bool)> {
    let out = tessera(["--json", "list", &repo.display().to_string()]);
    out.ok();
    out.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["damaged"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn show_json(repo: &Path, id: &str) -> Value {
    let out = tessera(["--json", "show", &repo.display().to_string(), id]);
    out.ok();
    out.json()
}

#[test]
fn damaged_snapshots_are_marked_until_verified_clean() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_marks"));
    let img = f.path("img");
    make_image(&img, ImageSpec::mixed(3 << 20), &mut gen);
    let (first_blocks, _) = distinct_blocks(&img);
    let s1 = snapshot_id(&backup_json(&f.repo, "s", &[("d", &img)]));
    mutate(&img, &mut gen, 4, 150_000, (0, 1, 1));
    let s2 = snapshot_id(&backup_json(&f.repo, "s", &[("d", &img)]));
    let repo = f.repo.display().to_string();
    assert_eq!(
        list_damaged(&f.repo),
        vec![(s1.clone(), false), (s2.clone(), false)]
    );

    // A chunk only the second snapshot has, at a known number of places.
    let blocks = block_digests(&img, BLOCK);
    let victim = blocks
        .iter()
        .find(|b| !b.zero && !first_blocks.contains(&b.digest))
        .unwrap()
        .digest;
    let places = blocks.iter().filter(|b| b.digest == victim).count() as u64;
    flip_chunk(&f.repo, &victim);
    report(&f.repo, &[], 4);
    assert_eq!(
        list_damaged(&f.repo),
        vec![(s1.clone(), false), (s2.clone(), true)]
    );
    let text = tessera(["list", &repo]);
    text.ok();
    assert_eq!(text.stdout.matches("DAMAGED").count(), 1, "{text}");
    let v = show_json(&f.repo, &s2);
    assert_eq!(v["damaged"], true, "{v}");
    // Places of one chunk are single blocks unless adjacent; count merged runs.
    let mut runs = 0;
    let mut prev = false;
    for b in &blocks {
        let hit = b.digest == victim;
        if hit && !prev {
            runs += 1;
        }
        prev = hit;
    }
    assert_eq!(v["damage"]["ranges"], runs, "{v}");
    assert_eq!(v["damage"]["bytes"], places * BLOCK, "{v}");
    assert_eq!(show_json(&f.repo, &s1)["damaged"], false);
    let text = tessera(["show", &repo, &s2]);
    text.ok();
    assert!(
        text.stdout
            .contains(&format!("DAMAGED  {runs} byte ranges")),
        "{text}"
    );

    // A run that did not cover the snapshot, or only sampled it, leaves the mark.
    report(&f.repo, &["--snapshot", &s1], 0);
    assert_eq!(show_json(&f.repo, &s2)["damaged"], true);
    flip_chunk(&f.repo, &victim); // flips the same bit back: intact again
    report(&f.repo, &["--sample", "100%", "--seed", "1"], 0);
    assert_eq!(show_json(&f.repo, &s2)["damaged"], true);
    tessera(["verify", &repo, "--metadata-only"]).ok();
    assert_eq!(show_json(&f.repo, &s2)["damaged"], true);
    // A run that covers it and finds it clean clears the mark.
    report(&f.repo, &["--snapshot", &s2], 0);
    assert_eq!(
        list_damaged(&f.repo),
        vec![(s1.clone(), false), (s2.clone(), false)]
    );
    assert!(!f.repo.join("damaged").exists());
}

/// Entries of the ledger (opened directly, as no verify runs).
fn ledger_entries(repo: &Path) -> u64 {
    let r = tessera_engine::Repository::open(repo).unwrap();
    let ledger = tessera_engine::ledger::Ledger::open(repo, r.config().repo_id).unwrap();
    ledger.entry_count().unwrap()
}

/// Objects in the index, of both kinds.
fn index_objects(repo: &Path) -> u64 {
    let r = tessera_engine::Repository::open(repo).unwrap();
    let mut n = 0;
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        r.index()
            .for_each_object(kind, |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap();
    }
    n
}

#[test]
fn ledger_entries_of_forgotten_and_compacted_objects_are_pruned() {
    let f = Fixture::new();
    let mut gen = DataGen::new(seed("verify_ledger_prune"));
    let img = f.path("img");
    let spec = ImageSpec {
        weights: (0, 1, 1),
        ..ImageSpec::mixed(2 << 20)
    };
    make_image(&img, spec, &mut gen);
    let s1 = snapshot_id(&backup_json(&f.repo, "s", &[("d", &img)]));
    make_image(&img, spec, &mut gen);
    backup_json(&f.repo, "s", &[("d", &img)]);
    let first = report(&f.repo, &[], 0);
    let all = index_objects(&f.repo);
    assert_eq!(num(&first, "ledger_recorded"), all, "{first}");
    assert_eq!(ledger_entries(&f.repo), all);
    assert_eq!(num(&first, "ledger_pruned"), 0, "{first}");

    let repo = f.repo.display().to_string();
    tessera(["forget", &repo, &s1]).ok();
    // Forgotten but not compacted: the objects are still in the index, nothing is pruned.
    let r = report(&f.repo, &["--skip-verified-within", "1d"], 0);
    assert_eq!(num(&r, "ledger_pruned"), 0, "{r}");
    tessera(["compact", &repo, "--max-unused", "0%", "--grace", "0"]).ok();
    let left = index_objects(&f.repo);
    assert!(left < all, "compaction removed nothing");
    let r = report(&f.repo, &["--skip-verified-within", "1d"], 0);
    assert_eq!(num(&r, "ledger_pruned"), all - left, "{r}");
    assert_eq!(ledger_entries(&f.repo), left);
    let r = report(&f.repo, &[], 0);
    assert_eq!(num(&r, "ledger_pruned"), 0, "{r}");
}
