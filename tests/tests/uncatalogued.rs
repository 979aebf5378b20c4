//! A sound snapshot file the index does not list, naming objects the repository lacks right
//! now (a pack on a disk that came back late, an index restored from an older copy while a
//! pack is unreadable): the writer's recovery keeps it in place and says so, `verify` reports
//! it as damage, `compact` refuses to run (the objects it does find are at count 0), and
//! once the pack is back the next writer catalogues it and it restores byte for byte. Only
//! `repair --quarantine` moves it away, on the operator's word. (Before, recovery moved such
//! a file to quarantine at once and compaction then reclaimed its objects.)

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tessera_tests::{
    backup_json, init_repo, list_ids, make_image, pack_files, restored_sha, seed, snapshot_id,
    tessera, verify, DataGen, ImageSpec,
};

/// A repository with one snapshot, plus a second snapshot's file and all but one of its new
/// packs carried in from a twin (as a crash before cataloguing would leave them, with one
/// pack missing). Returns the scratch dir, the repository, the withheld pack (path in the
/// twin, path in the repository), the uncatalogued snapshot's id and its image's SHA-256.
struct Setup {
    t: TempDir,
    repo: PathBuf,
    withheld: (PathBuf, PathBuf),
    lost: String,
    sha_b: String,
    first: String,
}

fn setup(name: &str) -> Setup {
    setup_withholding(name, |_, _, _| 0)
}

/// The packs (by file stem) of `twin` holding a chunk of snapshot `id` that a page in
/// another pack names: withholding one leaves a page present whose chunks are not.
fn packs_with_chunks_named_from_elsewhere(twin: &Path, id: &str) -> Vec<String> {
    use tessera_engine::store::reader::read_page;
    use tessera_format::ObjectKind;
    let r = tessera_engine::Repository::open(twin).unwrap();
    let snapshot = r.load_snapshot(id.parse().unwrap()).unwrap();
    let mut out = Vec::new();
    for (disk, roots) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = disk.size.div_ceil(u64::from(disk.block_size));
        for (no, page) in roots.iter().enumerate() {
            let page_pack = r
                .index()
                .get_object(ObjectKind::Page, page.as_bytes())
                .unwrap()
                .unwrap()
                .pack;
            let chunks = read_page(
                r.index(),
                r.backend(),
                r.crypto(),
                *page,
                blocks,
                disk.page_entries,
                no as u64,
            )
            .unwrap();
            for c in chunks.iter().filter(|c| !c.is_zero()) {
                let pack = r
                    .index()
                    .get_object(ObjectKind::Chunk, &c.0)
                    .unwrap()
                    .unwrap()
                    .pack;
                if pack != page_pack {
                    out.push(pack.to_hex());
                }
            }
        }
    }
    out
}

/// [`setup`], withholding the new pack `pick` chooses (an index into the sorted new packs).
fn setup_withholding(name: &str, pick: impl Fn(&Path, &str, &[PathBuf]) -> usize) -> Setup {
    let mut gen = DataGen::new(seed(name));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let a = t.path().join("a");
    make_image(&a, ImageSpec::mixed(3 << 20), &mut gen);
    let first = snapshot_id(&backup_json(&repo, "vm", &[("d", &a)]));

    let (twin, _, lost, sha_b) = tessera_tests::back_up_in_a_twin(t.path(), &repo, &mut gen);
    let old_packs = pack_files(&repo);
    let mut new_packs: Vec<PathBuf> = pack_files(&twin)
        .into_iter()
        .filter(|p| !old_packs.contains(&repo.join(p.strip_prefix(&twin).unwrap())))
        .collect();
    new_packs.sort();
    assert!(new_packs.len() >= 2, "expected several new packs");
    let held = new_packs.remove(pick(&twin, &lost, &new_packs));
    for p in &new_packs {
        let to = repo.join(p.strip_prefix(&twin).unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(p, to).unwrap();
    }
    let snap = format!("snapshots/{lost}.snap");
    fs::copy(twin.join(&snap), repo.join(&snap)).unwrap();
    let held_to = repo.join(held.strip_prefix(&twin).unwrap());
    Setup {
        t,
        repo,
        withheld: (held, held_to),
        lost,
        sha_b,
        first,
    }
}

/// `compact` rewriting every pack with any unused byte, no grace.
fn compact_everything(repo: &Path, json: bool) -> tessera_tests::Out {
    let mut args = vec![
        "compact".as_ref(),
        repo.as_os_str(),
        "--max-unused".as_ref(),
        "0%".as_ref(),
        "--grace".as_ref(),
        "0".as_ref(),
    ];
    if json {
        args.insert(0, "--json".as_ref());
    }
    tessera(args)
}

fn snapshot_file(repo: &Path, id: &str) -> PathBuf {
    repo.join(format!("snapshots/{id}.snap"))
}

/// Runs a writer command (a forget of nothing: `prune` keeping everything would do too).
fn open_as_writer(repo: &Path) -> tessera_tests::Out {
    tessera([
        "--json".as_ref(),
        "protect".as_ref(),
        repo.as_os_str(),
        "latest@vm".as_ref(),
    ])
}

#[test]
fn an_incomplete_snapshot_is_kept_blocks_compaction_and_is_catalogued_when_its_pack_returns() {
    let s = setup("uncatalogued_kept");
    let repo = &s.repo;

    let out = open_as_writer(repo);
    out.ok();
    out.stderr_has("1 snapshot files naming objects the repository lacks (kept");
    assert!(
        snapshot_file(repo, &s.lost).is_file(),
        "recovery moved a sound snapshot file away"
    );
    assert_eq!(list_ids(repo), vec![s.first.clone()]);

    let v = tessera(["verify".as_ref(), repo.as_os_str()]);
    v.expect_code(4);
    assert!(v.stdout.contains("stored but not catalogued"), "{v}");

    let packs_before = pack_files(repo);
    let c = compact_everything(repo, true);
    c.expect_code(4);
    assert_eq!(c.json()["kind"], "damage", "{}", c.stdout);
    assert!(c.stdout.contains("not catalogued"), "{}", c.stdout);
    assert_eq!(pack_files(repo), packs_before, "compaction touched packs");

    // A pack the index does not know but that holds none of the missing objects (here one
    // from another repository) excuses nothing.
    let other = s.t.path().join("other");
    init_repo(&other, &[]);
    let small = s.t.path().join("small");
    fs::write(&small, vec![9u8; 1 << 20]).unwrap();
    backup_json(&other, "vm", &[("d", &small)]);
    let stray = pack_files(&other).remove(0);
    let stray_to = repo.join(stray.strip_prefix(&other).unwrap());
    fs::create_dir_all(stray_to.parent().unwrap()).unwrap();
    fs::copy(&stray, &stray_to).unwrap();
    let v = tessera(["verify".as_ref(), repo.as_os_str()]);
    v.expect_code(4);
    assert!(v.stdout.contains("stored but not catalogued"), "{v}");
    fs::remove_file(&stray_to).unwrap();

    // The pack comes back: before any writer, verify sees that the pack recovery will adopt
    // holds what the file names; the next writer adopts it and catalogues the snapshot.
    fs::create_dir_all(s.withheld.1.parent().unwrap()).unwrap();
    fs::copy(&s.withheld.0, &s.withheld.1).unwrap();
    let v = tessera(["verify".as_ref(), repo.as_os_str()]);
    v.ok();
    let out = open_as_writer(repo);
    out.ok();
    out.stderr_has("1 stored snapshots catalogued");
    let ids = list_ids(repo);
    assert!(ids.contains(&s.lost), "{ids:?}");
    verify(repo).ok();
    compact_everything(repo, false).ok();
    verify(repo).ok();
    assert_eq!(restored_sha(repo, &s.lost, s.t.path()), s.sha_b);
}

#[test]
fn repair_quarantine_moves_an_incomplete_snapshot_away_on_request() {
    let s = setup("uncatalogued_quarantined");
    let repo = &s.repo;
    let r = tessera([
        "--json".as_ref(),
        "repair".as_ref(),
        repo.as_os_str(),
        "--quarantine".as_ref(),
    ]);
    r.ok();
    let quarantined = r.json()["snapshots_quarantined"].clone();
    assert_eq!(quarantined, serde_json::json!([s.lost]), "{}", r.stdout);
    assert!(!snapshot_file(repo, &s.lost).exists());
    assert!(
        fs::read_dir(repo.join("quarantine")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(&s.lost)),
        "the file is not in quarantine/"
    );
    verify(repo).ok();
    compact_everything(repo, false).ok();
    verify(repo).ok();
    assert_eq!(list_ids(repo), vec![s.first]);
}

/// `serve` opens the repository as a writer per put and publish: its recovery's note goes to
/// the audit log, and a lasting finding (this incomplete file) is told once, not per request.
#[test]
fn serve_tells_a_lasting_recovery_finding_once_in_its_audit_log() {
    let s = setup("uncatalogued_served");
    let tokens = s.t.path().join("tokens");
    let admin = tessera_tests::token_add(&tokens, "admin", "*", "ops", None);
    let audit = s.t.path().join("audit.jsonl");
    let server = tessera_tests::start_serve_args(
        &s.repo,
        &[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--audit-log".as_ref(),
            audit.as_os_str(),
        ],
    );
    let body = fs::read(snapshot_file(&s.repo, &s.first)).unwrap();
    for _ in 0..3 {
        let (status, answer) = tessera_tests::remote::Transport::Http.request(
            &server.url,
            "POST",
            "/v1/publish",
            Some(&admin),
            &body,
        );
        assert_eq!(status, 200, "{answer}");
    }
    drop(server);
    let logged = fs::read_to_string(&audit).unwrap();
    let events: Vec<tessera_tests::Value> = logged
        .lines()
        .map(|l| serde_json::from_str::<tessera_tests::Value>(l).unwrap())
        .filter(|l| l["event"] == "recovery")
        .collect();
    assert_eq!(events.len(), 1, "{logged}");
    let note = events[0]["note"].as_str().unwrap();
    assert!(
        note.contains("naming objects the repository lacks"),
        "{note}"
    );
}

/// `repair --from OTHER` completes an incomplete file from a repository that catalogues the
/// snapshot (before, it fetched only for damage the check listed, and this file stayed).
#[test]
fn repair_from_another_repository_completes_an_incomplete_snapshot() {
    // The withheld pack holds chunks only, while the pages naming them are in packs the
    // writer adopts: a page present does not mean its chunks are.
    let s = setup_withholding("uncatalogued_completed", |twin, lost, packs| {
        let wanted = packs_with_chunks_named_from_elsewhere(twin, lost);
        packs
            .iter()
            .position(|p| wanted.contains(&p.file_stem().unwrap().to_string_lossy().into_owned()))
            .expect("a new pack whose chunks a page in another pack names")
    });
    let repo = &s.repo;
    let twin = s.t.path().join("twin");
    let r = tessera([
        "--json".as_ref(),
        "repair".as_ref(),
        repo.as_os_str(),
        "--from".as_ref(),
        twin.as_os_str(),
    ]);
    r.ok();
    assert_eq!(
        r.json()["snapshots_completed"],
        serde_json::json!([s.lost]),
        "{}",
        r.stdout
    );
    let ids = list_ids(repo);
    assert!(ids.contains(&s.lost) && ids.contains(&s.first), "{ids:?}");
    verify(repo).ok();
    compact_everything(repo, false).ok();
    verify(repo).ok();
    assert_eq!(restored_sha(repo, &s.lost, s.t.path()), s.sha_b);
}
