//! Seed bundles: `tessera seed export` / `seed import`. A bundle carries a repository's
//! snapshots to a fresh repository, after which `sync` moves only what is new; a damaged,
//! tampered, incomplete or malicious bundle (path traversal, symbolic links, a block size
//! that does not match) is refused with a message naming the file, and the destination is
//! left exactly as it was.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tessera_tests::{
    backup_json, dir_entries, disk_sum, hex, init_repo, list_ids, make_image, mutate, pack_files,
    restored_sha, seed, tessera, verify, DataGen, ImageSpec, Out,
};

const MIB: u64 = 1 << 20;
const PAGE_BYTES: u64 = 12 + 32 * 512;

fn run_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = tessera(&all);
    out.ok();
    out.json()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn export(repo: &Path, bundle: &Path) -> Value {
    run_json(&["seed", "export", p(repo), p(bundle)])
}

fn import(bundle: &Path, repo: &Path) -> Out {
    tessera(["seed", "import", p(bundle), p(repo)])
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn flip_byte(path: &Path, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = dir_entries(dir)
        .into_iter()
        .filter(|n| n.ends_with(ext))
        .map(|n| dir.join(n))
        .collect();
    v.sort();
    v
}

/// Rewrites the inner manifest with `edit` and re-seals the envelope with a correct
/// checksum: what a deliberate attacker (not a bit flip) would produce.
fn rewrite_manifest(bundle: &Path, edit: impl FnOnce(&mut Value)) {
    let path = bundle.join("bundle.json");
    let env: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let mut m: Value = serde_json::from_str(env["manifest"].as_str().unwrap()).unwrap();
    edit(&mut m);
    let text = serde_json::to_string(&m).unwrap();
    let sha = hex(&Sha256::digest(text.as_bytes()));
    let env = serde_json::json!({"manifest_sha256": sha, "manifest": text});
    fs::write(&path, serde_json::to_vec(&env).unwrap()).unwrap();
}

/// Re-records one file's size and hash in the manifest after it was changed on purpose.
fn reseal_file(bundle: &Path, file: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let bytes = fs::read(file).unwrap();
    let sha = hex(&Sha256::digest(&bytes));
    rewrite_manifest(bundle, |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["name"] == name.as_str() {
                f["size"] = bytes.len().into();
                f["sha256"] = sha.clone().into();
            }
        }
    });
}

#[test]
fn seed_then_sync_moves_only_new_data() {
    let mut gen = DataGen::new(seed("seed-flow"));
    let work = tempfile::tempdir().unwrap();
    let (a, b, bundle) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("bundle"),
    );
    init_repo(&a, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(40 * MIB), &mut gen);
    backup_json(&a, "vm", &[("d0", &disk)]);
    for _ in 0..2 {
        mutate(&disk, &mut gen, 20, 256 * 1024, (1, 2, 2));
        backup_json(&a, "vm", &[("d0", &disk)]);
    }
    let exported = export(&a, &bundle);
    assert_eq!(
        exported["snapshots"].as_array().unwrap().len(),
        3,
        "{exported}"
    );
    // The import creates B (with A's block size and compression).
    let imported = import(&bundle, &b);
    imported.ok();
    assert_eq!(list_ids(&b), list_ids(&a));
    verify(&b).ok();

    let mut new_raw = 0;
    for _ in 0..3 {
        mutate(&disk, &mut gen, 10, 128 * 1024, (1, 2, 2));
        new_raw += disk_sum(&backup_json(&a, "vm", &[("d0", &disk)]), "new_raw_bytes");
    }
    let synced = run_json(&["sync", p(&a), p(&b)]);
    assert_eq!(
        synced["snapshots_copied"].as_array().unwrap().len(),
        3,
        "{synced}"
    );
    let pages = synced["pages_transferred"].as_u64().unwrap();
    assert!(pages <= 6, "{synced}");
    let raw = synced["raw_bytes_transferred"].as_u64().unwrap();
    assert!(
        raw >= new_raw && raw as f64 <= 1.05 * (new_raw + pages * PAGE_BYTES) as f64,
        "moved {raw} raw bytes for {new_raw} new + {pages} pages: {synced}"
    );
    let ids = list_ids(&a);
    assert_eq!(list_ids(&b), ids);
    for id in &ids {
        assert_eq!(
            restored_sha(&b, id, work.path()),
            restored_sha(&a, id, work.path()),
            "{id}"
        );
    }
    verify(&b).ok();
    let again = run_json(&["sync", p(&a), p(&b)]);
    assert_eq!(again["bytes_received"], 0, "{again}");
    // Importing the same bundle again adds nothing.
    let re = run_json(&["seed", "import", p(&bundle), p(&b)]);
    assert_eq!(re["snapshots_copied"].as_array().unwrap().len(), 0, "{re}");
    assert_eq!(re["raw_bytes_transferred"], 0, "{re}");
}

/// What must not change when an import is refused.
fn state(repo: &Path) -> (Vec<String>, Vec<PathBuf>, Vec<String>) {
    (
        list_ids(repo),
        pack_files(repo),
        dir_entries(&repo.join("snapshots")),
    )
}

type Tamper = Box<dyn Fn(&Path)>;

/// Each way of damaging a bundle, with the text the refusal must contain.
fn tamper_cases(outside: &Path) -> Vec<(&'static str, Tamper, &'static str)> {
    vec![
        (
            "flipped pack byte",
            Box::new(|d: &Path| {
                let pack = &files_with(d, ".pack")[0];
                flip_byte(pack, fs::metadata(pack).unwrap().len() / 2);
            }),
            ".pack",
        ),
        (
            "flipped manifest byte",
            Box::new(|d: &Path| {
                let m = d.join("bundle.json");
                flip_byte(&m, fs::metadata(&m).unwrap().len() / 2);
            }),
            "manifest",
        ),
        (
            "flipped snapshot byte",
            Box::new(|d: &Path| flip_byte(&files_with(d, ".snap")[0], 40)),
            ".snap",
        ),
        (
            "truncated pack",
            Box::new(|d: &Path| {
                let pack = &files_with(d, ".pack")[0];
                let f = fs::OpenOptions::new().write(true).open(pack).unwrap();
                f.set_len(fs::metadata(pack).unwrap().len() - 1000).unwrap();
            }),
            "truncated",
        ),
        (
            "deleted snapshot file",
            Box::new(|d: &Path| fs::remove_file(&files_with(d, ".snap")[1]).unwrap()),
            ".snap",
        ),
        (
            "deleted pack",
            Box::new(|d: &Path| fs::remove_file(&files_with(d, ".pack")[0]).unwrap()),
            ".pack",
        ),
        (
            "deleted manifest",
            Box::new(|d: &Path| fs::remove_file(d.join("bundle.json")).unwrap()),
            "manifest",
        ),
        (
            "traversal ../x",
            Box::new(|d: &Path| {
                rewrite_manifest(d, |m| {
                    m["files"][0]["name"] = "../x".into();
                });
            }),
            "../x",
        ),
        (
            "absolute /etc/passwd",
            Box::new(|d: &Path| {
                rewrite_manifest(d, |m| {
                    m["files"][0]["name"] = "/etc/passwd".into();
                });
            }),
            "/etc/passwd",
        ),
        (
            "symlinked pack",
            Box::new({
                let outside = outside.to_path_buf();
                move |d: &Path| {
                    let pack = &files_with(d, ".pack")[0];
                    fs::copy(pack, &outside).unwrap();
                    fs::remove_file(pack).unwrap();
                    std::os::unix::fs::symlink(&outside, pack).unwrap();
                }
            }),
            "symbolic link",
        ),
        (
            "pack altered and re-hashed in the manifest",
            Box::new(|d: &Path| {
                let pack = &files_with(d, ".pack")[0];
                flip_byte(pack, 16 + 56 + 100);
                reseal_file(d, pack);
            }),
            "checksum",
        ),
        (
            "snapshot dropped from the files list",
            Box::new(|d: &Path| {
                rewrite_manifest(d, |m| {
                    m["files"].as_array_mut().unwrap().retain(|f| {
                        Path::new(f["name"].as_str().unwrap()).extension() != Some("snap".as_ref())
                    });
                });
            }),
            "not listed",
        ),
    ]
}

#[test]
fn damaged_or_malicious_bundles_are_refused_and_change_nothing() {
    let mut gen = DataGen::new(seed("seed-tamper"));
    let work = tempfile::tempdir().unwrap();
    let (a, b, good) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("good"),
    );
    init_repo(&a, &[]);
    init_repo(&b, &[]);
    let disk = work.path().join("disk.img");
    make_image(&disk, ImageSpec::mixed(6 * MIB), &mut gen);
    backup_json(&b, "other", &[("d0", &disk)]);
    backup_json(&a, "vm", &[("d0", &disk)]);
    mutate(&disk, &mut gen, 10, 128 * 1024, (1, 2, 2));
    backup_json(&a, "vm", &[("d0", &disk)]);
    export(&a, &good);
    let before = state(&b);
    let outside = work.path().join("outside.pack");

    let cases = tamper_cases(&outside);
    for (i, (what, tamper, needle)) in cases.iter().enumerate() {
        let bundle = work.path().join(format!("case{i}"));
        copy_dir(&good, &bundle);
        tamper(&bundle);
        let out = import(&bundle, &b);
        // Damaged or malicious data (4).
        assert_eq!(out.code, 4, "{what}: {out}");
        out.stderr_has(needle);
        assert_eq!(state(&b), before, "{what}: destination changed");
        // Refused before a new repository is even created.
        let fresh = work.path().join(format!("fresh{i}"));
        import(&bundle, &fresh).expect_code(4);
        assert!(!fresh.exists(), "{what}: created {}", fresh.display());
    }
    verify(&b).ok();

    // A bundle whose repository parameters no repository may have: refused before a new
    // repository is created (it used to leave a directory with an index but no config).
    let odd = work.path().join("odd-block-size");
    copy_dir(&good, &odd);
    rewrite_manifest(&odd, |m| m["default_block_size"] = 3000.into());
    let fresh = work.path().join("fresh-odd");
    let out = import(&odd, &fresh);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has("block size");
    assert!(!fresh.exists(), "created {}", fresh.display());

    // Same series and disk at another block size: refused, nothing written.
    let c = work.path().join("c");
    init_repo(&c, &["--block-size", "128K"]);
    backup_json(&c, "vm", &[("d0", &disk)]);
    let before_c = state(&c);
    import(&good, &c).expect_code(5).stderr_has("block size");
    assert_eq!(state(&c), before_c);
    verify(&c).ok();

    // The untouched bundle imports fine after all that.
    import(&good, &b).ok();
    assert_eq!(list_ids(&b).len(), 3);
    verify(&b).ok();
}
