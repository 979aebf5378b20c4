//! Repair from other copies: one fault is injected into a repository with several snapshots,
//! `verify --json` must name exactly the damaged objects, and `repair` (from another
//! repository that backed up the same images, or from the source images) must bring every
//! snapshot back byte-identical, quarantining damaged packs. What nothing can recover is
//! reported with its snapshot ranges (exit 4), and the rest stays intact. `kill -9` during
//! a repair (at least one kill must land while it holds the writer lock) is finished by a
//! rerun.
//!
//! Knobs: `TESSERA_KILL_TRIALS` (default `tessera_tests::kill::DEFAULT_KILL_TRIALS`),
//! `TESSERA_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use rand::Rng;
use tempfile::TempDir;
use tessera_engine::Repository;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ObjectKind, SnapshotId};
use tessera_tests::kill::{kill_trials, KillLoop};
use tessera_tests::{
    backup_json, block_digests, dir_entries, init_repo, make_image, mutate, pack_files,
    restored_sha, seed, sha256_file, snapshot_id, tessera, verify, DataGen, ImageSpec, Out, Value,
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
    /// `(snapshot, disk, copy of the image it backed up)`: the oracle for damaged ranges.
    images: Vec<(String, String, PathBuf)>,
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
        let mut images = Vec::new();
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
            for (disk, img) in [("a", &a), ("b", &b)] {
                let copy = t.path().join(format!("{disk}-{round}.img"));
                fs::copy(img, &copy).unwrap();
                images.push((id.clone(), disk.to_string(), copy));
            }
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
            images,
            gen,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// Every snapshot restores byte-identical, verify is clean, and no snapshot is marked
    /// damaged any more.
    #[track_caller]
    fn assert_all_restore(&self) {
        verify(&self.repo).ok();
        assert!(damaged_in_list(&self.repo).is_empty());
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
    let mut f = Fixture::new("repair_kill");
    let args: Vec<String> = vec![
        "repair".into(),
        f.repo.display().to_string(),
        "--from".into(),
        f.other.display().to_string(),
    ];
    // Kill moments are drawn from the span a complete repair of one flipped chunk holds the
    // lock, so that they land in every phase: check, copy, index batch, quarantine.
    f.flip_chunk(0);
    let (mut kills, _) = KillLoop::calibrate("repair", &f.repo, &args);
    verify(&f.repo).ok();
    for trial in 0..kill_trials() {
        // A fresh fault per trial: a flipped chunk, or a deleted pack every third trial.
        if trial % 3 == 2 {
            let packs = pack_files(&f.repo);
            let victim = packs[f.gen.rng.gen_range(0..packs.len())].clone();
            fs::remove_file(victim).unwrap();
        } else {
            f.flip_chunk(trial + 1);
        }
        let kill = kills.kill(trial, &f.repo, &args);
        let at = format!("[repair trial {trial}, {:?}]", kill.landed);
        tessera(&args).ok();
        let v = verify(&f.repo);
        assert_eq!(v.code, 0, "{at} verify after the rerun:\n{v}");
        let intents: Vec<String> = dir_entries(&f.repo.join("quarantine"))
            .into_iter()
            .filter(|n| n.ends_with(".intent"))
            .collect();
        assert!(
            intents.is_empty(),
            "{at} intent files left behind: {intents:?}"
        );
    }
    kills.finish();
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

/// `(snapshot, disk, offset, length)` of a damaged range.
type Range = (String, String, u64, u64);

/// `(kind, digest)` of damaged objects → their ranges.
type ObjectRanges = BTreeMap<(String, String), BTreeSet<Range>>;

/// Snapshots `tessera list --json` marks as damaged.
fn damaged_in_list(repo: &Path) -> BTreeSet<String> {
    let out = tessera([OsStr::new("--json"), "list".as_ref(), repo.as_os_str()]);
    out.ok();
    out.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["damaged"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `verify --json` (exit 4): the report's damaged objects with their ranges, and its
/// damaged packs.
fn damage_report(repo: &Path) -> (ObjectRanges, Vec<String>) {
    let out = tessera([OsStr::new("--json"), "verify".as_ref(), repo.as_os_str()]);
    out.expect_code(4);
    let report = out.json()["report"].clone();
    let objects = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let ranges = d["ranges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["snapshot"].as_str().unwrap().to_string(),
                        r["disk"].as_str().unwrap().to_string(),
                        r["offset"].as_u64().unwrap(),
                        r["length"].as_u64().unwrap(),
                    )
                })
                .collect();
            (
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["digest"].as_str().unwrap().to_string(),
                ),
                ranges,
            )
        })
        .collect();
    let packs = report["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pack"].as_str().unwrap().to_string())
        .collect();
    (objects, packs)
}

impl Fixture {
    /// The ranges each of `objects` must be reported with, from the images themselves: a
    /// page covers its whole disk (one page per disk here); a chunk covers each block that
    /// holds its bytes, except in disks whose page is damaged too (those blocks cannot be
    /// located); contiguous blocks form one range.
    fn expected_ranges(
        &self,
        objects: &BTreeSet<(String, String)>,
    ) -> BTreeMap<(String, String), BTreeSet<Range>> {
        let repo = Repository::open(&self.repo).unwrap();
        let mut out: BTreeMap<(String, String), BTreeSet<Range>> = objects
            .iter()
            .map(|o| (o.clone(), BTreeSet::new()))
            .collect();
        for (snap, disk, img) in &self.images {
            let Ok(snapshot) = repo.load_snapshot(snap.parse::<SnapshotId>().unwrap()) else {
                continue;
            };
            let nth = snapshot
                .header
                .disks
                .iter()
                .position(|d| &d.name == disk)
                .unwrap();
            let size = snapshot.header.disks[nth].size;
            assert_eq!(snapshot.roots[nth].len(), 1, "one page per disk");
            let page = ("page".to_string(), snapshot.roots[nth][0].to_hex());
            if let Some(set) = out.get_mut(&page) {
                set.insert((snap.clone(), disk.clone(), 0, size));
                continue;
            }
            let mut run: Option<(u64, u64, String)> = None;
            let close =
                |run: &mut Option<(u64, u64, String)>,
                 out: &mut BTreeMap<(String, String), BTreeSet<Range>>| {
                    if let Some((start, len, digest)) = run.take() {
                        out.get_mut(&("chunk".to_string(), digest))
                            .unwrap()
                            .insert((snap.clone(), disk.clone(), start, len));
                    }
                };
            for (n, b) in block_digests(img, BLOCK).into_iter().enumerate() {
                let key = ("chunk".to_string(), tessera_tests::hex(&b.digest));
                let offset = n as u64 * BLOCK;
                let extends = matches!(&run, Some((start, len, digest)) if *digest == key.1 && start + len == offset);
                if extends {
                    if let Some((_, len, _)) = &mut run {
                        *len += b.len;
                    }
                } else {
                    close(&mut run, &mut out);
                    if !b.zero && out.contains_key(&key) {
                        run = Some((offset, b.len, key.1));
                    }
                }
            }
            close(&mut run, &mut out);
        }
        out
    }

    /// Verify names exactly `objects` (with exactly their ranges) and exactly `packs`;
    /// `list` marks exactly the snapshots those ranges belong to.
    #[track_caller]
    fn assert_damage_exactly(&self, objects: &BTreeSet<(String, String)>, packs: &[String]) {
        let (found, found_packs) = damage_report(&self.repo);
        assert_eq!(
            found.keys().cloned().collect::<BTreeSet<_>>(),
            *objects,
            "damaged objects"
        );
        let expected = self.expected_ranges(objects);
        for (obj, ranges) in &expected {
            assert_eq!(&found[obj], ranges, "ranges of {obj:?}");
        }
        assert_eq!(found_packs, packs, "damaged packs");
        let hurt: BTreeSet<String> = expected
            .values()
            .flatten()
            .map(|(s, _, _, _)| s.clone())
            .collect();
        assert_eq!(
            damaged_in_list(&self.repo),
            hurt,
            "snapshots marked damaged"
        );
    }

    /// The newest pack (written by the last backup) and its live objects.
    fn newest_pack(&self) -> (PathBuf, String) {
        let new: Vec<PathBuf> = pack_files(&self.repo)
            .into_iter()
            .filter(|p| !self.packs_before_last.contains(p))
            .collect();
        assert_eq!(new.len(), 1, "the last backup should write one pack");
        let id = new[0].file_stem().unwrap().to_string_lossy().into_owned();
        (new[0].clone(), id)
    }
}

/// Offset of the footer and its entry count, from the trailer.
fn footer_of(pack: &Path) -> (u64, u64) {
    let bytes = fs::read(pack).unwrap();
    let t = &bytes[bytes.len() - 32..];
    (
        u64::from_le_bytes(t[..8].try_into().unwrap()),
        u64::from(u32::from_le_bytes(t[8..12].try_into().unwrap())),
    )
}

fn live_set(repo: &Path, pack: &str) -> BTreeSet<(String, String)> {
    live_in_pack(repo, pack)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn record_header_bit_flip_names_exactly_its_chunk() {
    let mut f = Fixture::new("repair_record_header");
    let blocks: Vec<_> = block_digests(&f.a, BLOCK)
        .into_iter()
        .filter(|b| !b.zero)
        .collect();
    let block = blocks[f.gen.rng.gen_range(0..blocks.len())];
    let entry = {
        let r = Repository::open(&f.repo).unwrap();
        r.index()
            .get_object(ObjectKind::Chunk, &block.digest)
            .unwrap()
            .unwrap()
    };
    // A bit of the raw-length field (header bytes 40..44): only the header CRC notices.
    flip_byte(&pack_path(&f.repo, &entry.pack.to_hex()), entry.offset + 41);
    let digest = tessera_tests::hex(&block.digest);
    f.assert_damage_exactly(&one("chunk", &digest), &[]);
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(repaired_from(&v).len(), 1, "{out}");
    assert_eq!(
        v["quarantined"],
        serde_json::json!([entry.pack.to_hex()]),
        "{out}"
    );
    assert_eq!(v["damage_marks_updated"], true, "{out}");
    f.assert_all_restore();
}

#[test]
fn footer_and_trailer_bit_flips_are_pack_damage_and_repaired() {
    let f = Fixture::new("repair_footer");
    // 1. A bit in the middle of the newest pack's footer: every record is intact.
    let (path, id) = f.newest_pack();
    let live = live_in_pack(&f.repo, &id).len() as u64;
    let (footer, count) = footer_of(&path);
    flip_byte(&path, footer + 56 * (count / 2) + 12);
    f.assert_damage_exactly(&BTreeSet::new(), std::slice::from_ref(&id));
    let text = verify(&f.repo);
    text.expect_code(4);
    assert!(
        text.stdout.contains(&format!("damaged pack {id}")),
        "{text}"
    );
    // Every snapshot still restores before the repair: no data is lost.
    for (spec, sha) in &f.expect {
        assert_eq!(&restored_sha(&f.repo, spec, f.t.path()), sha, "{spec}");
    }
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(v["damaged_found"], 0, "{out}");
    assert_eq!(v["damaged_packs_found"][0]["pack"], id.as_str(), "{out}");
    assert!(
        v["damaged_packs_found"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("footer"),
        "{out}"
    );
    assert_eq!(v["quarantined"], serde_json::json!([id.clone()]), "{out}");
    assert_eq!(v["rehomed"], live, "{out}");
    assert_eq!(repaired_from(&v), vec![], "{out}");
    assert!(!pack_path(&f.repo, &id).exists());
    f.assert_all_restore();

    // 2. A bit of another pack's trailer (its entry count), repaired with no other copy at
    //    all (`--quarantine`): nothing needs fetching.
    let victim = pack_files(&f.repo)
        .into_iter()
        .find(|p| f.packs_before_last.contains(p))
        .unwrap();
    let vid = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let len = fs::metadata(&victim).unwrap().len();
    flip_byte(&victim, len - 32 + 9);
    f.assert_damage_exactly(&BTreeSet::new(), std::slice::from_ref(&vid));
    let out = f.repair(&[OsStr::new("--quarantine")]);
    out.ok();
    assert_eq!(out.json()["quarantined"], serde_json::json!([vid]), "{out}");
    f.assert_all_restore();
    verify(&f.repo).ok();
}

#[test]
fn pack_replaced_by_another_pack() {
    let f = Fixture::new("repair_replaced_pack");
    let (path, id) = f.newest_pack();
    let other_pack = f.packs_before_last[0].clone();
    let expected = live_set(&f.repo, &id);
    assert!(!expected.is_empty());
    let untouched = live_set(&f.repo, &other_pack.file_stem().unwrap().to_string_lossy());
    fs::copy(&other_pack, &path).unwrap();
    // Exactly the objects the index places in the replaced pack; the copied pack's own
    // objects are intact where the index expects them.
    f.assert_damage_exactly(&expected, std::slice::from_ref(&id));
    assert!(untouched.is_disjoint(&expected));
    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(repaired_from(&v).len(), expected.len(), "{out}");
    assert_eq!(v["quarantined"], serde_json::json!([id]), "{out}");
    f.assert_all_restore();
}

#[test]
fn snapshot_naming_a_missing_page_is_reported_unrecoverable() {
    let f = Fixture::new("repair_missing_page");
    let (last, _) = f.expect.last().unwrap().0.split_once(':').unwrap();
    // A valid snapshot file whose disk `a` root names a page that exists nowhere: the last
    // snapshot with one page digest replaced, its root digest fixed and the file named
    // after its new SHA-256; catalogued by an index rebuild (which recomputes the counts
    // and reports the missing page).
    let forged = {
        let r = Repository::open(&f.repo).unwrap();
        let mut s = r
            .load_snapshot(last.parse::<SnapshotId>().unwrap())
            .unwrap();
        s.header.time_us += 1;
        s.roots[0][0] = tessera_format::PageDigest([0x5a; 32]);
        s.header.disks[0].root_digest = tessera_format::snapshot::root_digest(&s.roots[0]);
        let (id, bytes) = s.encode().unwrap();
        let hex = id.to_hex();
        fs::write(f.repo.join("snapshots").join(format!("{hex}.snap")), bytes).unwrap();
        hex
    };
    tessera([
        OsStr::new("repair"),
        f.repo.as_os_str(),
        "--rebuild-index".as_ref(),
    ])
    .expect_code(4);
    let bogus = tessera_tests::hex(&[0x5a; 32]);
    let out = tessera([OsStr::new("--json"), "verify".as_ref(), f.repo.as_os_str()]);
    out.expect_code(4);
    let (found, packs) = damage_report(&f.repo);
    assert!(packs.is_empty());
    let size_a = fs::metadata(&f.a).unwrap().len();
    assert_eq!(
        found,
        BTreeMap::from([(
            ("page".to_string(), bogus.clone()),
            BTreeSet::from([(forged.clone(), "a".to_string(), 0, size_a)])
        )])
    );
    assert_eq!(damaged_in_list(&f.repo), BTreeSet::from([forged.clone()]));

    let out = f.repair(&[OsStr::new("--from"), f.other.as_os_str()]);
    out.expect_code(4);
    let v = out.json();
    let unrecoverable = v["unrecoverable"].as_array().unwrap();
    assert_eq!(unrecoverable.len(), 1, "{out}");
    assert_eq!(unrecoverable[0]["digest"], bogus.as_str());
    assert_eq!(unrecoverable[0]["ranges"][0]["snapshot"], forged.as_str());
    // Still marked after the repair; `show` counts its damaged range.
    assert_eq!(damaged_in_list(&f.repo), BTreeSet::from([forged.clone()]));
    let show = tessera([
        OsStr::new("--json"),
        "show".as_ref(),
        f.repo.as_os_str(),
        forged.as_ref(),
    ]);
    show.ok();
    let sv = show.json();
    assert_eq!(sv["damaged"], true, "{show}");
    assert_eq!(sv["damage"]["ranges"], 1, "{show}");
    assert_eq!(sv["damage"]["bytes"], size_a, "{show}");
    // Everything else restores byte-identical; the forged disk `b` too.
    for (spec, sha) in &f.expect {
        assert_eq!(&restored_sha(&f.repo, spec, f.t.path()), sha, "{spec}");
    }
    let b_sha = &f.expect.last().unwrap().1;
    assert_eq!(
        &restored_sha(&f.repo, &format!("{forged}:b"), f.t.path()),
        b_sha
    );
    tessera([
        OsStr::new("restore"),
        f.repo.as_os_str(),
        format!("{forged}:a").as_ref(),
        f.path("forged-a").as_os_str(),
    ])
    .expect_code(4);
}
