//! Encrypted repositories that share keys (SPEC.md §23.7): `init --keys-from`, then sync
//! and `repair --from` between them through the binary. Records and snapshot files move
//! verbatim (the same snapshot ids on both sides, nothing re-encrypted), the secret of
//! either repository opens both, and what must be refused is: other keys, a wrong
//! secret (exit 6, nothing written), a source whose record was tampered with under valid
//! CRCs (damage, nothing published).

use std::fs;
use std::path::Path;

use tempfile::TempDir;
use tessera_tests::encrypted::{
    backup, init_encrypted, object_state, p, read_pack, run, write_pack, CHEAP_KDF, PASS,
};
use tessera_tests::{make_image, mutate, pack_files, seed, sha256_file, DataGen, ImageSpec, Out};

/// The second repository's own passphrase.
const PASS_B: &str = "a different passphrase for the copy";

/// `init DST --keys-from SRC`, unlocking SRC with `unlock` and giving DST `PASS_B`.
fn init_sharing(dst: &Path, src: &Path, unlock: Option<&str>, scratch: &Path) -> Out {
    let new_pass = scratch.join(format!("new-pass-{}", rand::random::<u32>()));
    fs::write(&new_pass, format!("{PASS_B}\n")).unwrap();
    let recovery = scratch.join(format!("recovery-{}", rand::random::<u32>()));
    let mut args = vec![
        "--json".to_string(),
        "init".into(),
        p(dst),
        "--keys-from".into(),
        p(src),
        "--new-passphrase-file".into(),
        p(&new_pass),
        "--recovery-key-file".into(),
        p(&recovery),
    ];
    args.extend(CHEAP_KDF.iter().map(ToString::to_string));
    run(&args, unlock)
}

fn fingerprint(repo: &Path, pass: &str) -> String {
    let out = run(&["--json", "stats", &p(repo)], Some(pass));
    out.ok();
    out.json()["stats"]["key_fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ids(repo: &Path, pass: &str) -> Vec<String> {
    let out = run(&["--json", "list", &p(repo)], Some(pass));
    out.ok();
    out.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn sync(src: &Path, dst: &Path, pass: &str) -> Out {
    run(&["--json", "sync", &p(src), &p(dst)], Some(pass))
}

fn restored_sha(repo: &Path, id: &str, pass: &str, scratch: &Path) -> String {
    let out = scratch.join(format!("restored-{}", rand::random::<u32>()));
    run(&["restore", &p(repo), id, &p(&out)], Some(pass)).ok();
    let sha = sha256_file(&out);
    fs::remove_file(&out).unwrap();
    sha
}

#[test]
fn repositories_sharing_keys_sync_and_repair_from_each_other() {
    let t = TempDir::new().unwrap();
    let mut gen = DataGen::new(seed("encryption_sharing"));
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    init_encrypted(&a, t.path());
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(3 << 20), &mut gen);
    let mut shas = vec![sha256_file(&img)];
    backup(&a, "vm", "d0", &img, &["site=main"]);
    mutate(&img, &mut gen, 8, 64 * 1024, (1, 2, 2));
    shas.push(sha256_file(&img));
    backup(&a, "vm", "d0", &img, &[]);

    // --keys-from needs the source's secret; a wrong one makes nothing.
    let wrong = init_sharing(&b, &a, Some("not the passphrase"), t.path());
    assert_eq!(wrong.code, 6, "{wrong}");
    assert!(
        !b.join("config").exists(),
        "a refused init left a repository"
    );
    let made = init_sharing(&b, &a, Some(PASS), t.path());
    made.ok();
    assert_eq!(made.json()["encryption"], "aes-256-gcm", "{made}");
    assert!(!made.stdout.contains(PASS) && !made.stdout.contains(PASS_B));
    // Its own slots: the new passphrase opens it, the source's does not; the keys are the
    // source's.
    let fp = fingerprint(&a, PASS);
    assert_eq!(fingerprint(&b, PASS_B), fp);
    assert_eq!(run(&["stats", &p(&b)], Some(PASS)).code, 6);

    // The source's passphrase opens both sides (it opens the source's slots).
    let first = sync(&a, &b, PASS);
    first.ok();
    let copied = first.json()["snapshots_copied"].as_array().unwrap().len();
    assert_eq!(copied, 2, "{first}");
    // Verbatim: the same snapshot ids, and every snapshot restores byte for byte.
    let a_ids = ids(&a, PASS);
    assert_eq!(ids(&b, PASS_B), a_ids);
    for (id, sha) in a_ids.iter().zip(&shas) {
        assert_eq!(
            &restored_sha(&b, id, PASS_B, t.path()),
            sha,
            "snapshot {id}"
        );
    }
    run(&["verify", &p(&b)], Some(PASS_B)).ok();

    // The copy's passphrase opens both too (it opens the destination's slots): a new
    // snapshot moves, the old ones are skipped.
    mutate(&img, &mut gen, 8, 64 * 1024, (1, 2, 2));
    shas.push(sha256_file(&img));
    let third = backup(&a, "vm", "d0", &img, &[]);
    let second = sync(&a, &b, PASS_B);
    second.ok();
    let doc = second.json();
    assert_eq!(
        doc["snapshots_copied"].as_array().unwrap().len(),
        1,
        "{second}"
    );
    assert_eq!(
        doc["snapshots_skipped"].as_array().unwrap().len(),
        2,
        "{second}"
    );
    assert_eq!(&restored_sha(&b, &third, PASS_B, t.path()), &shas[2]);

    // A secret that opens neither: exit 6, and the destination is untouched.
    let before = object_state(&b);
    let refused = sync(&b, &a, "opens nothing");
    assert_eq!(refused.code, 6, "{refused}");
    assert_eq!(object_state(&b), before);

    // Repositories under other keys never exchange records, whichever secret is given.
    let c = t.path().join("c");
    init_encrypted(&c, t.path());
    let c_before = object_state(&c);
    for (src, dst) in [(&a, &c), (&c, &a)] {
        let out = sync(src, dst, PASS);
        assert_eq!(out.code, 5, "{out}");
        assert!(out.stderr.contains("different keys"), "{out}");
        assert!(out.stderr.contains(&fp), "names the fingerprints: {out}");
    }
    assert_eq!(object_state(&c), c_before);
    // Refused before any secret is asked for (none is given) or recovery runs.
    let out = run(&["repair", &p(&c), "--from", &p(&a)], None);
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stderr.contains("different keys"), "{out}");

    // repair --from: a pack of the copy is lost; the original supplies its records, opened
    // with the copy's keys (the copy's passphrase alone).
    let packs = pack_files(&b);
    fs::remove_file(&packs[0]).unwrap();
    let damaged = run(&["verify", &p(&b)], Some(PASS_B));
    assert_eq!(damaged.code, 4, "{damaged}");
    run(&["repair", &p(&b), "--from", &p(&a)], Some(PASS_B)).ok();
    run(&["verify", &p(&b)], Some(PASS_B)).ok();
    for (id, sha) in ids(&b, PASS_B).iter().zip(&shas) {
        assert_eq!(
            &restored_sha(&b, id, PASS_B, t.path()),
            sha,
            "snapshot {id}"
        );
    }
}

/// A record of the source altered with every CRC recomputed (what only the AEAD catches)
/// stops the sync: damage, and no snapshot is published. (The source's own read catches it
/// first; the receiver's check of a source that sends it anyway is the unit test
/// `sync::transfer::tests::a_record_altered_in_transit_between_repositories_sharing_keys_is_refused`.)
#[test]
fn a_tampered_source_record_is_refused_by_the_copy() {
    let t = TempDir::new().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    init_encrypted(&a, t.path());
    let img = t.path().join("img");
    let mut gen = DataGen::new(seed("encryption_sharing_tamper"));
    fs::write(&img, gen.bytes(tessera_tests::Fill::Random, 8 * 65536)).unwrap();
    backup(&a, "s", "d", &img, &[]);
    init_sharing(&b, &a, Some(PASS), t.path()).ok();
    for pack in pack_files(&a) {
        let mut records = read_pack(&pack);
        for (entry, stored) in &mut records {
            if entry.info.kind == tessera_format::ObjectKind::Chunk {
                let mid = stored.len() / 2;
                stored[mid] ^= 0x01;
            }
        }
        write_pack(&pack, &records);
    }
    // The index follows the packs as they now are: every CRC and location is consistent.
    let rebuilt = run(&["repair", &p(&a), "--rebuild-index"], Some(PASS));
    assert!(rebuilt.code == 0 || rebuilt.code == 4, "{rebuilt}");
    let out = sync(&a, &b, PASS);
    assert_eq!(out.code, 4, "{out}");
    assert!(out.stderr.contains("authentication"), "{out}");
    assert!(ids(&b, PASS_B).is_empty(), "a snapshot was published");
    run(&["verify", &p(&b)], Some(PASS_B)).ok();
}

/// `init --keys-from` refuses a copy of `bundle` (whose files are `names`) with a planted
/// key slot file the manifest does not list (exit 4), and a plain repository (exit 2, no
/// secret given or asked for).
fn refusals_before_any_key_is_read(scratch: &Path, bundle: &Path, names: &[String]) {
    // A key slot file the manifest does not list is never read: the bundle is refused.
    let planted = scratch.join("planted");
    fs::create_dir(&planted).unwrap();
    for name in names {
        fs::copy(bundle.join(name), planted.join(name)).unwrap();
    }
    let slot = names
        .iter()
        .find(|n| n.strip_suffix(".key").is_some())
        .unwrap();
    fs::copy(
        bundle.join(slot),
        planted.join(format!("{}.key", "ab".repeat(16))),
    )
    .unwrap();
    let out = init_sharing(&scratch.join("from-planted"), &planted, Some(PASS), scratch);
    assert_eq!(out.code, 4, "{out}");
    assert!(out.stderr.contains("does not list"), "{out}");
    // A plain repository has no keys to share: refused before any secret is asked for.
    let plain = scratch.join("plain");
    run(&["init", &p(&plain), "--encryption", "none"], None).ok();
    let out = init_sharing(&scratch.join("from-plain"), &plain, None, scratch);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("is not encrypted"), "{out}");
}

/// Seed then ship, encrypted: the bundle carries sealed records, the key fingerprint and
/// the key slots; the off-site repository is made from the bundle alone (`init --keys-from
/// BUNDLE`) and imports it verbatim; a later bundle imports with either passphrase.
#[test]
fn an_encrypted_seed_bundle_makes_and_fills_a_repository_sharing_keys() {
    let t = TempDir::new().unwrap();
    let mut gen = DataGen::new(seed("encryption_sharing_seed"));
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    init_encrypted(&a, t.path());
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(2 << 20), &mut gen);
    let first_sha = sha256_file(&img);
    let first = backup(
        &a,
        "vm",
        "confidential-disk",
        &img,
        &["owner=confidential-tag"],
    );

    let bundle = t.path().join("bundle");
    let wrong = run(
        &["seed", "export", &p(&a), &p(&bundle)],
        Some("not the passphrase"),
    );
    assert_eq!(wrong.code, 6, "{wrong}");
    assert!(!bundle.exists(), "a refused export made its output");
    run(&["seed", "export", &p(&a), &p(&bundle)], Some(PASS)).ok();
    let names: Vec<String> = fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.strip_suffix(".key").is_some()),
        "no key slot: {names:?}"
    );
    for name in &names {
        let bytes = fs::read(bundle.join(name)).unwrap();
        for secret in [&b"confidential"[..], PASS.as_bytes()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{name} holds {:?} in the clear",
                String::from_utf8_lossy(secret)
            );
        }
    }

    refusals_before_any_key_is_read(t.path(), &bundle, &names);

    // The destination must share the keys before the import.
    let early = run(&["seed", "import", &p(&bundle), &p(&b)], Some(PASS));
    assert_eq!(early.code, 2, "{early}");
    assert!(early.stderr.contains("--keys-from"), "{early}");
    assert!(!b.exists(), "a refused import made a repository");
    init_sharing(&b, &bundle, Some(PASS), t.path()).ok();
    assert_eq!(fingerprint(&b, PASS_B), fingerprint(&a, PASS));

    // A wrong secret: exit 6, nothing written.
    let before = object_state(&b);
    let refused = run(
        &["seed", "import", &p(&bundle), &p(&b)],
        Some("opens nothing"),
    );
    assert_eq!(refused.code, 6, "{refused}");
    assert_eq!(object_state(&b), before);

    // The copy's own passphrase imports it; the snapshot keeps its id and restores.
    run(&["seed", "import", &p(&bundle), &p(&b)], Some(PASS_B)).ok();
    assert_eq!(ids(&b, PASS_B), std::slice::from_ref(&first));
    assert_eq!(restored_sha(&b, &first, PASS_B, t.path()), first_sha);
    run(&["verify", &p(&b)], Some(PASS_B)).ok();

    // A later bundle, imported with the source's passphrase (the bundle's slots open).
    mutate(&img, &mut gen, 6, 64 * 1024, (1, 2, 2));
    let second_sha = sha256_file(&img);
    let second = backup(&a, "vm", "confidential-disk", &img, &[]);
    let later = t.path().join("later");
    run(
        &["seed", "export", &p(&a), &p(&later), "--latest", "1"],
        Some(PASS),
    )
    .ok();
    let imported = run(
        &["--json", "seed", "import", &p(&later), &p(&b)],
        Some(PASS),
    );
    imported.ok();
    assert_eq!(
        imported.json()["snapshots_copied"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{imported}"
    );
    assert_eq!(ids(&b, PASS_B), [first, second.clone()]);
    assert_eq!(restored_sha(&b, &second, PASS_B, t.path()), second_sha);

    // A bundle of a repository under other keys is refused by the copy.
    let c = t.path().join("c");
    init_encrypted(&c, t.path());
    backup(&c, "other", "d", &img, &[]);
    let foreign = t.path().join("foreign");
    run(&["seed", "export", &p(&c), &p(&foreign)], Some(PASS)).ok();
    let before = object_state(&b);
    let out = run(&["seed", "import", &p(&foreign), &p(&b)], Some(PASS));
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stderr.contains("different keys"), "{out}");
    assert_eq!(object_state(&b), before);
}
