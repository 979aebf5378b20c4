//! Repair from other copies: one fault is injected into a repository with several snapshots,
//! `verify --json` must name exactly the damaged objects, and `repair` (from another
//! repository that backed up the same images, or from the source images) must bring every
//! snapshot back byte-identical, quarantining damaged packs. What nothing can recover is
//! reported with its snapshot ranges (exit 4), and the rest stays intact. `kill -9` during
//! a repair is finished by a rerun.
//!
//! Knobs: `TESSERA_KILL_TRIALS` (default 3), `TESSERA_SEED`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use tempfile::TempDir;
use tessera_engine::Repository;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ObjectKind, SnapshotId};
use tessera_tests::{
    backup_json, block_digests, dir_entries, env_usize, finish_child, init_repo, make_image,
    mutate, pack_files, restored_sha, seed, sha256_file, snapshot_id, tessera, tessera_cmd, verify,
    DataGen, ImageSpec, Out, Value,
};

const BLOCK: u64 = 64 * 1024;

/// A repository and a second one that backed up the same images at the same moments.
struct Fixture {
    t: TempDir,
    repo: PathBuf,
    other: PathBuf,
    /// The images, in their latest state (disk names `a` and `b`).
    a: PathBuf,
    b: PathBuf,
    /// `SNAPSHOT:DISK` → SHA-256 it must restore to.
    expect: Vec<(String, String)>,
    /// Packs present before the last backup round.
    packs_before_last: Vec<PathBuf>,
    gen: DataGen,
}

impl Fixture {
    fn new(test: &str) -> Self {
        let mut gen = DataGen::new(seed(test));
        let t = TempDir::new().unwrap();
        let repo = t.path().join("repo");
        let other = t.path().join("other");
        init_repo(&repo, &[]);
        init_repo(&other, &[]);
        let a = t.path().join("a.img");
        let b = t.path().join("b.img");
        make_image(
            &a,
            ImageSpec {
                weights: (1, 2, 4),
                ..ImageSpec::mixed(2 * (1 << 20) + 4321)
            },
            &mut gen,
        );
        make_image(
            &b,
            ImageSpec {
                weights: (1, 2, 4),
                ..ImageSpec::mixed((1 << 20) + 77)
            },
            &mut gen,
        );
        let mut expect = Vec::new();
        let mut packs_before_last = Vec::new();
        for round in 0..3 {
            if round == 2 {
                packs_before_last = pack_files(&repo);
            }
            let (sa, sb) = (sha256_file(&a), sha256_file(&b));
            let id = snapshot_id(&backup_json(&repo, "vm", &[("a", &a), ("b", &b)]));
            backup_json(&other, "vm", &[("a", &a), ("b", &b)]);
            expect.push((format!("{id}:a"), sa));
            expect.push((format!("{id}:b"), sb));
            if round < 2 {
                mutate(&a, &mut gen, 6, 200_000, (1, 1, 3));
                mutate(&b, &mut gen, 3, 100_000, (1, 1, 3));
            }
        }
        Self {
            t,
            repo,
            other,
            a,
            b,
            expect,
            packs_before_last,
            gen,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// Every snapshot restores byte-identical and verify is clean.
    #[track_caller]
    fn assert_all_restore(&self) {
        verify(&self.repo).ok();
        for (spec, sha) in &self.expect {
            assert_eq!(
                &restored_sha(&self.repo, spec, self.t.path()),
                sha,
                "{spec}"
            );
        }
    }

    /// `tessera --json repair REPO extra...`.
    fn repair(&self, extra: &[&OsStr]) -> Out {
        let mut args: Vec<&OsStr> =
            vec!["--json".as_ref(), "repair".as_ref(), self.repo.as_os_str()];
        args.extend_from_slice(extra);
        tessera(args)
    }

    /// Flips one byte in the middle of the stored bytes of the chunk of a non-zero block of
    /// the latest image `a` (the `nth` such block, counting from a random start). Returns
    /// its digest (hex).
    fn flip_chunk(&mut self, nth: usize) -> String {
        let blocks: Vec<_> = block_digests(&self.a, BLOCK)
            .into_iter()
            .filter(|b| !b.zero)
            .collect();
        let mut seen = BTreeSet::new();
        let distinct: Vec<_> = blocks
            .into_iter()
            .filter(|b| seen.insert(b.digest))
            .collect();
        let start = self.gen.rng.gen_range(0..distinct.len());
        let block = distinct[(start + nth) % distinct.len()];
        let entry = {
            let r = Repository::open(&self.repo).unwrap();
            r.index()
                .get_object(ObjectKind::Chunk, &block.digest)
                .unwrap()
                .expect("the block is stored")
        };
        let at = entry.offset + RECORD_HEADER_LEN as u64 + u64::from(entry.stored_len) / 2;
        flip_byte(&pack_path(&self.repo, &entry.pack.to_hex()), at);
        tessera_tests::hex(&block.digest)
    }
}

fn pack_path(repo: &Path, pack: &str) -> PathBuf {
    repo.join("packs")
        .join(&pack[..2])
        .join(format!("{pack}.pack"))
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

/// `verify --json`: exit 4 and the set of damaged `(kind, digest)`.
fn damaged_set(repo: &Path) -> BTreeSet<(String, String)> {
    let out = tessera([OsStr::new("--json"), "verify".as_ref(), repo.as_os_str()]);
    out.expect_code(4);
    out.json()["report"]["damaged"]
        .as_array()
        .unwrap_or_else(|| panic!("no damaged list in {out}"))
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Live objects the index places in `pack`, as `(kind, digest)`; and for each its record end.
fn live_in_pack(repo: &Path, pack: &str) -> Vec<((String, String), u64)> {
    let r = Repository::open(repo).unwrap();
    let mut out = Vec::new();
    for (kind, name) in [(ObjectKind::Chunk, "chunk"), (ObjectKind::Page, "page")] {
        r.index()
            .for_each_object(kind, |digest, e| {
                if e.refcount > 0 && e.pack.to_hex() == pack {
                    out.push((
                        (name.to_string(), tessera_tests::hex(&digest)),
                        e.offset + RECORD_HEADER_LEN as u64 + u64::from(e.stored_len),
                    ));
                }
                Ok(())
            })
            .unwrap();
    }
    out
}

fn one(kind: &str, digest: &str) -> BTreeSet<(String, String)> {
    BTreeSet::from([(kind.to_string(), digest.to_string())])
}

fn repaired_from(v: &Value) -> Vec<(String, String)> {
    v["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["digest"].as_str().unwrap().to_string(),
                r["from"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn quarantined(repo: &Path) -> Vec<String> {
    dir_entries(&repo.join("quarantine"))
}

#[test]
fn bit_flip_repaired_from_another_repository() {
    let mut f = Fixture::new("repair_flip_other");
    let digest = f.flip_chunk(0);
    assert_eq!(damaged_set(&f.repo), one("chunk", &digest));
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    let rep = repaired_from(&v);
    assert_eq!(rep.len(), 1, "{out}");
    assert_eq!(rep[0].0, digest);
    assert!(rep[0].1.starts_with("repository "), "{out}");
    let q = v["quarantined"].as_array().unwrap();
    assert_eq!(q.len(), 1, "{out}");
    let pack = q[0].as_str().unwrap();
    assert_eq!(quarantined(&f.repo), vec![format!("{pack}.pack")]);
    assert!(!pack_path(&f.repo, pack).exists());
    assert!(v["rehomed"].as_u64().unwrap() > 0, "{out}");
    f.assert_all_restore();
}

#[test]
fn bit_flip_repaired_from_the_source_image() {
    let mut f = Fixture::new("repair_flip_source");
    let digest = f.flip_chunk(0);
    assert_eq!(damaged_set(&f.repo), one("chunk", &digest));
    let src = format!("a={}", f.a.display());
    let out = f.repair(&[OsStr::new("--from-source"), src.as_ref()]);
    out.ok();
    let rep = repaired_from(&out.json());
    assert_eq!(rep.len(), 1, "{out}");
    assert_eq!(rep[0].0, digest);
    assert_eq!(rep[0].1, format!("source {src}"));
    assert_eq!(quarantined(&f.repo).len(), 1);
    f.assert_all_restore();
}

#[test]
fn deleted_pack_restored_from_another_repository() {
    let f = Fixture::new("repair_deleted_pack");
    let packs = pack_files(&f.repo);
    let victim = &packs[f.gen.rng.clone().gen_range(0..packs.len())];
    let id = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let expected: BTreeSet<_> = live_in_pack(&f.repo, &id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(!expected.is_empty());
    fs::remove_file(victim).unwrap();
    assert_eq!(damaged_set(&f.repo), expected);
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(repaired_from(&v).len(), expected.len(), "{out}");
    assert_eq!(v["missing_packs"], serde_json::json!([id]), "{out}");
    f.assert_all_restore();
}

#[test]
fn truncated_pack_quarantined_and_completed_from_sources() {
    let f = Fixture::new("repair_truncated");
    let new: Vec<PathBuf> = pack_files(&f.repo)
        .into_iter()
        .filter(|p| !f.packs_before_last.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "the last backup should write one pack");
    let victim = &new[0];
    let id = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let len = fs::metadata(victim).unwrap().len();
    let cut = len / 2;
    let live = live_in_pack(&f.repo, &id);
    let expected: BTreeSet<_> = live
        .iter()
        .filter(|(_, end)| *end > cut)
        .map(|(k, _)| k.clone())
        .collect();
    let intact = live.len() - expected.len();
    assert!(!expected.is_empty() && intact > 0);
    fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(cut)
        .unwrap();
    assert_eq!(damaged_set(&f.repo), expected);

    let (sa, sb) = (
        format!("a={}", f.a.display()),
        format!("b={}", f.b.display()),
    );
    let out = f.repair(&[
        OsStr::new("--from-source"),
        sa.as_ref(),
        "--from-source".as_ref(),
        sb.as_ref(),
    ]);
    out.ok();
    let v = out.json();
    assert_eq!(v["rehomed"], intact as u64, "{out}");
    assert_eq!(repaired_from(&v).len(), expected.len(), "{out}");
    assert!(repaired_from(&v)
        .iter()
        .all(|(_, from)| from.starts_with("source ")));
    assert_eq!(quarantined(&f.repo), vec![format!("{id}.pack")]);
    assert_eq!(
        fs::metadata(f.repo.join("quarantine").join(format!("{id}.pack")))
            .unwrap()
            .len(),
        cut
    );
    f.assert_all_restore();
}

#[test]
fn corrupted_manifest_page_repaired_from_another_repository() {
    let f = Fixture::new("repair_page");
    let (id, _) = f.expect.last().unwrap().0.split_once(':').unwrap();
    let (page, entry) = {
        let r = Repository::open(&f.repo).unwrap();
        let s = r.load_snapshot(id.parse::<SnapshotId>().unwrap()).unwrap();
        let page = s.roots[0][0];
        let e = r
            .index()
            .get_object(ObjectKind::Page, page.as_bytes())
            .unwrap()
            .unwrap();
        (page.to_hex(), e)
    };
    let at = entry.offset + RECORD_HEADER_LEN as u64 + u64::from(entry.stored_len) / 2;
    flip_byte(&pack_path(&f.repo, &entry.pack.to_hex()), at);
    assert_eq!(damaged_set(&f.repo), one("page", &page));
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let rep = repaired_from(&out.json());
    assert_eq!(rep.len(), 1, "{out}");
    assert_eq!(rep[0].0, page);
    f.assert_all_restore();
}

#[test]
fn nothing_to_repair_changes_nothing() {
    let f = Fixture::new("repair_nothing");
    let before = pack_files(&f.repo);
    let src = format!("a={}", f.a.display());
    let out = f.repair(&[
        OsStr::new("--from"),
        f.other.as_os_str(),
        "--from-source".as_ref(),
        src.as_ref(),
    ]);
    out.ok();
    let v = out.json();
    assert_eq!(v["damaged_found"], 0, "{out}");
    assert_eq!(v["repaired"], serde_json::json!([]));
    assert_eq!(pack_files(&f.repo), before);
    assert!(!f.repo.join("quarantine").exists());
    f.assert_all_restore();
}

#[test]
fn damage_without_a_good_copy_is_reported_with_its_ranges() {
    let mut f = Fixture::new("repair_unrecoverable");
    // A repository that never saw these images.
    let stranger = f.path("stranger");
    init_repo(&stranger, &[]);
    let img = f.path("unrelated.img");
    make_image(&img, ImageSpec::mixed(300_000), &mut f.gen);
    backup_json(&stranger, "x", &[("a", &img)]);
    let digest = f.flip_chunk(0);
    let out = f.repair(&[
        OsStr::new("--from"),
        stranger.as_os_str(),
        "--from-source".as_ref(),
        format!("a={}", img.display()).as_ref(),
    ]);
    out.expect_code(4);
    let v = out.json();
    assert_eq!(v["ok"], false);
    let lost = v["unrecoverable"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{out}");
    assert_eq!(lost[0]["digest"], digest.as_str());
    let ranges = lost[0]["ranges"].as_array().unwrap();
    assert!(!ranges.is_empty(), "{out}");
    let hurt: BTreeSet<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["snapshot"].as_str().unwrap(),
                r["disk"].as_str().unwrap()
            )
        })
        .collect();
    assert!(ranges.iter().all(|r| r["length"].as_u64().unwrap() > 0));
    assert!(hurt.iter().any(|h| h.ends_with(":a")), "{out}");
    // Only that object is still damaged; every snapshot that does not need it restores.
    assert_eq!(damaged_set(&f.repo), one("chunk", &digest));
    let mut restored = 0;
    for (spec, sha) in &f.expect {
        if !hurt.contains(spec) {
            restored += 1;
            assert_eq!(&restored_sha(&f.repo, spec, f.t.path()), sha, "{spec}");
        }
    }
    assert!(restored > 0);
    // Later, a good copy repairs it.
    f.repair(&[OsStr::new("--from"), f.other.as_os_str()]).ok();
    f.assert_all_restore();
}

#[test]
fn kill_during_repair_then_rerun() {
    let trials = env_usize("TESSERA_KILL_TRIALS", 3);
    let mut f = Fixture::new("repair_kill");
    let args: Vec<String> = vec![
        "repair".into(),
        f.repo.display().to_string(),
        "--from".into(),
        f.other.display().to_string(),
    ];
    // Kill moments are drawn from the duration of the last complete repair (measured on
    // the way), so that they land in every phase: check, copy, index batch, quarantine.
    let mut duration = Duration::from_millis(100);
    for trial in 0..trials {
        // A fresh fault per trial: a flipped chunk, or a deleted pack every third trial.
        if trial % 3 == 2 {
            let packs = pack_files(&f.repo);
            let victim = packs[f.gen.rng.gen_range(0..packs.len())].clone();
            fs::remove_file(victim).unwrap();
        } else {
            f.flip_chunk(trial);
        }
        let delay = Duration::from_micros(f.gen.rng.gen_range(0..duration.as_micros() as u64 + 1));
        let started = Instant::now();
        let mut child = tessera_cmd(&args).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
        }
        let out = finish_child(child, &[]);
        if finished {
            duration = started.elapsed();
        }
        eprintln!(
            "trial {trial}: killed after {delay:?} (finished: {finished}, exit {})",
            out.code
        );
        let rerun_started = Instant::now();
        let rerun = tessera(&args);
        rerun.ok();
        if !finished {
            duration = rerun_started.elapsed();
        }
        verify(&f.repo).ok();
        assert!(
            !dir_entries(&f.repo.join("quarantine"))
                .iter()
                .any(|n| n.ends_with(".intent")),
            "an intent file was left behind"
        );
    }
    f.assert_all_restore();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut f = Fixture::new("repair_bad_input");
    let digest = f.flip_chunk(0);
    let before = pack_files(&f.repo);
    let not_repo = f.path("not-a-repo");
    fs::create_dir(&not_repo).unwrap();
    let src = format!("a={}", f.a.display());
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["--from".into(), not_repo.display().to_string()],
            2,
            "not a tessera repository",
        ),
        (
            vec!["--from-source".into(), f.a.display().to_string()],
            2,
            "DISK=PATH",
        ),
        (
            vec![
                "--from-source".into(),
                format!("nosuchdisk={}", f.a.display()),
            ],
            2,
            "no snapshot has a disk named",
        ),
        (
            vec![
                "--from-source".into(),
                format!("a={}", f.path("missing.img").display()),
            ],
            1,
            "missing.img",
        ),
        (
            vec![
                "--from".into(),
                f.other.display().to_string(),
                "--recount".into(),
            ],
            2,
            "cannot be combined",
        ),
    ];
    for (extra, code, msg) in cases {
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        let out = f.repair(&extra);
        out.expect_code(code).stderr_has(msg);
        assert!(!out.stderr.contains("panicked"), "{out}");
        assert_eq!(pack_files(&f.repo), before, "{out}");
        assert!(!f.repo.join("quarantine").exists(), "{out}");
        assert_eq!(damaged_set(&f.repo), one("chunk", &digest));
    }
    // The same fault with a correct argument is repaired.
    f.repair(&[OsStr::new("--from-source"), src.as_ref()]).ok();
    f.assert_all_restore();
}

#[test]
fn rerun_finishes_an_interrupted_quarantine() {
    let mut f = Fixture::new("repair_intent");
    f.flip_chunk(0);
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let pack = out.json()["quarantined"][0].as_str().unwrap().to_string();
    // The state of a kill after the index batch, before the rename: the pack file back in
    // packs/ and in the catalog (a writer's recovery adopts it), its intent file present.
    let qdir = f.repo.join("quarantine");
    fs::rename(qdir.join(format!("{pack}.pack")), pack_path(&f.repo, &pack)).unwrap();
    fs::write(qdir.join(format!("{pack}.intent")), b"").unwrap();
    let catalogued = |repo: &Path| {
        let r = Repository::open(repo).unwrap();
        let packs = r.index().packs().unwrap();
        packs.iter().any(|(id, _)| id.to_hex() == pack)
    };
    drop(Repository::open_writer(&f.repo).unwrap());
    assert!(catalogued(&f.repo));
    verify(&f.repo).ok();

    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    assert_eq!(
        out.json()["quarantined"],
        serde_json::json!([pack]),
        "{out}"
    );
    assert_eq!(quarantined(&f.repo), vec![format!("{pack}.pack")]);
    assert!(!pack_path(&f.repo, &pack).exists());
    assert!(!catalogued(&f.repo));
    f.assert_all_restore();
}
