//! Encrypted repositories through the binary (SPEC.md §23): every command that opens one
//! with each source of the secret, byte-for-byte restores, nothing readable in the stored
//! files, a wrong or missing secret (exit 6, nothing written), and tampering a keyless
//! attacker can do while keeping every CRC valid — a flipped ciphertext byte, a valid record
//! moved under another id, a forged page, a truncated or swapped snapshot file — reported
//! as damage (exit 4) by verify and restore, which never writes the disk.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tessera_format::pack::FooterEntry;
use tessera_format::ObjectKind;
use tessera_tests::encrypted::{
    all_files, backup, crc32c, init_encrypted, object_state, p, read_pack, restore_to, run,
    write_pack, CHEAP_KDF, PASS,
};
use tessera_tests::{
    exit_code, make_image, pack_files, seed, sha256_file, tessera_cmd, DataGen, ImageSpec, Value,
};

#[test]
fn an_encrypted_repository_works_end_to_end_and_stores_nothing_readable() {
    let t = TempDir::new().unwrap();
    let mut gen = DataGen::new(seed("encryption_e2e"));
    let repo = t.path().join("repo");
    let recovery = init_encrypted(&repo, t.path());
    // A disk whose content, name, tag and path are all recognizable.
    let marker = b"TESSERA-PLAINTEXT-MARKER ".repeat(8192);
    let img1 = t.path().join("secret-source-path.img");
    make_image(&img1, ImageSpec::mixed(3 << 20), &mut gen);
    let mut bytes = fs::read(&img1).unwrap();
    bytes[..marker.len()].copy_from_slice(&marker);
    fs::write(&img1, &bytes).unwrap();
    let first = backup(
        &repo,
        "vm1",
        "confidential-disk",
        &img1,
        &["owner=secret-team"],
    );
    // A second generation: most blocks shared (dedup works under keyed ids).
    bytes[2 << 20..(2 << 20) + 5000].fill(0x5a);
    let img2 = t.path().join("gen2.img");
    fs::write(&img2, &bytes).unwrap();
    let second = backup(&repo, "vm1", "confidential-disk", &img2, &[]);
    let third = backup(&repo, "vm2", "confidential-disk", &img1, &[]);

    for f in all_files(&repo) {
        let data = fs::read(&f).unwrap();
        for needle in [
            &b"TESSERA-PLAINTEXT-MARKER"[..],
            b"confidential-disk",
            b"secret-team",
            b"secret-source-path",
            PASS.as_bytes(),
        ] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?} in clear",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }

    let show = run(&["--json", "show", &p(&repo), &first], Some(PASS));
    show.ok();
    let v = show.json();
    assert_eq!(v["encryption"], "aes-256-gcm");
    assert_eq!(v["disks"][0]["name"], "confidential-disk");
    assert_eq!(v["tags"]["owner"], "secret-team");
    let stats = run(&["--json", "stats", &p(&repo)], Some(PASS));
    stats.ok();
    let s = stats.json();
    assert_eq!(s["stats"]["encryption"], "aes-256-gcm");
    assert_eq!(s["stats"]["format_version"], 2);
    // vm2 is img1 again: deduplicated entirely, so the unique data is about gen1 plus the
    // one changed block of gen2.
    assert!(
        s["stats"]["live_raw_bytes"].as_u64().unwrap() < (3 << 20) + (256 << 10),
        "{s}"
    );

    // Every source of the secret opens it: file, command, environment, key file holding
    // the recovery key.
    let pass_file = t.path().join("pass");
    fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let rec_file = t.path().join("recovery-copy");
    fs::write(&rec_file, &recovery).unwrap();
    let command = format!("printf '%s\\n' '{PASS}'");
    for (how, extra) in [
        (
            "--passphrase-file",
            vec!["--passphrase-file".to_string(), p(&pass_file)],
        ),
        (
            "--password-command",
            vec!["--password-command".into(), command],
        ),
        (
            "--key-file with the recovery key",
            vec!["--key-file".into(), p(&rec_file)],
        ),
    ] {
        let mut args = vec!["list".to_string(), p(&repo)];
        args.extend(extra);
        let out = run(&args, None);
        assert_eq!(out.code, 0, "{how}: {out}");
        assert!(out.stdout.contains(&first[..16]), "{how}: {out}");
    }

    for (id, image) in [(&first, &img1), (&second, &img2), (&third, &img1)] {
        let out = t.path().join(format!("restored-{id}"));
        restore_to(&repo, id, &out).ok();
        assert_eq!(sha256_file(&out), sha256_file(image), "restore of {id}");
    }
    run(&["verify", &p(&repo)], Some(PASS)).ok();

    // Retention: forget, then compact copies sealed records verbatim; what is left verifies
    // and restores.
    run(&["forget", &p(&repo), &first], Some(PASS)).ok();
    run(
        &["compact", &p(&repo), "--max-unused", "0", "--grace", "0"],
        Some(PASS),
    )
    .ok();
    run(&["verify", &p(&repo)], Some(PASS)).ok();
    let out = t.path().join("after-compact");
    restore_to(&repo, &second, &out).ok();
    assert_eq!(sha256_file(&out), sha256_file(&img2));
}

#[test]
fn a_key_file_repository_and_private_key_files() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let key = t.path().join("repo.key");
    let out = run(&["init", &p(&repo), "--key-file", &p(&key)], None);
    out.ok();
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "a created key file is private"
    );
    let text = fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("tessera-key-v1:"));
    // Printed once: the recovery key, never the key file's secret.
    assert!(out.stdout.contains("recovery key"), "{out}");
    assert!(!out.stdout.contains(text.trim()), "{out}");
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("keyfile")),
    );
    let b = run(
        &[
            "--json",
            "backup",
            &p(&repo),
            "--key-file",
            &p(&key),
            "--series",
            "s",
            &format!("d={}", img.display()),
        ],
        None,
    );
    b.ok();
    assert!(!b.stdout.contains(text.trim()));
    let id = b.json()["snapshot"].as_str().unwrap().to_string();
    let restored = t.path().join("r");
    run(
        &[
            "restore",
            &p(&repo),
            &id,
            &p(&restored),
            "--key-file",
            &p(&key),
        ],
        None,
    )
    .ok();
    assert_eq!(sha256_file(&restored), sha256_file(&img));
    // A passphrase does not open a repository that has only a key-file slot: the secret
    // opens nothing, exit 6 (as a wrong one), not a usage error.
    let out = run(&["--json", "list", &p(&repo)], Some(PASS));
    out.expect_code(6);
    assert_eq!(out.json()["kind"], "key", "{out}");
}

#[test]
fn a_wrong_or_missing_secret_is_exit_6_and_writes_nothing() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("wrongpass")),
    );
    let id = backup(&repo, "s", "d", &img, &[]);
    let before = object_state(&repo);
    let disk = format!("d={}", img.display());
    let out_file = t.path().join("out");
    for (what, args, pass, phrase) in [
        (
            "backup, wrong",
            vec!["backup", &p(&repo), "--series", "s", &disk],
            Some("wrong"),
            "wrong passphrase",
        ),
        (
            "forget, wrong",
            vec!["forget", &p(&repo), &id],
            Some("wrong"),
            "wrong passphrase",
        ),
        (
            "restore, wrong",
            vec!["restore", &p(&repo), &id, &p(&out_file)],
            Some("wrong"),
            "wrong passphrase",
        ),
        ("list, none", vec!["list", &p(&repo)], None, "is encrypted"),
        (
            "backup, none",
            vec!["backup", &p(&repo), "--series", "s", &disk],
            None,
            "is encrypted",
        ),
    ] {
        let out = run(&args, pass);
        assert_eq!(out.code, 6, "{what}: {out}");
        assert!(out.stderr.contains(phrase), "{what}: {out}");
        let mut json = vec!["--json"];
        json.extend(args.iter().copied());
        let out = run(&json, pass);
        assert_eq!(out.code, 6, "{what} --json: {out}");
        assert_eq!(out.json()["kind"], "key", "{what}: {out}");
        assert!(!out.stdout.contains("wrong\""), "no secret echoed: {out}");
    }
    assert!(!out_file.exists(), "a refused restore writes nothing");
    assert_eq!(
        object_state(&repo),
        before,
        "a refused command changed the repository"
    );
    // Still opens with the right passphrase and verifies.
    run(&["verify", &p(&repo)], Some(PASS)).ok();
}

#[test]
fn init_refuses_json_without_a_recovery_key_file_and_plain_says_so() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let out = run(&["--json", "init", &p(&repo)], Some(PASS));
    out.expect_code(2);
    assert!(out.json()["error"]
        .as_str()
        .unwrap()
        .contains("--recovery-key-file"));
    assert!(!repo.join("config").exists());
    // Without a terminal and without a passphrase, init refuses instead of hanging.
    run(&["init", &p(&repo)], None).expect_code(2);
    assert!(!repo.join("config").exists());
    let plain = run(&["--json", "init", &p(&repo), "--encryption", "none"], None);
    plain.ok();
    assert_eq!(plain.json()["encryption"], "none");
    assert_eq!(plain.json()["format_version"], 1);
    let stats = run(&["stats", &p(&repo)], None);
    stats.ok();
    assert!(
        stats.stdout.contains("encryption           none"),
        "{stats}"
    );
}

// ---------------------------------------------------------------------------------------
// Tampering with every CRC kept valid (what only the AEAD can catch)
// ---------------------------------------------------------------------------------------

/// A repository of one snapshot of a mostly random image (so that chunks are stored
/// uncompressed, at equal lengths), with its index rebuilt after `tamper` changed packs.
struct Tampered {
    _t: TempDir,
    repo: PathBuf,
    id: String,
    out: PathBuf,
}

fn tampered(name: &str, tamper: impl FnOnce(&Path, &[PathBuf])) -> Tampered {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    let img = t.path().join("img");
    let mut gen = DataGen::new(seed(name));
    fs::write(&img, gen.bytes(tessera_tests::Fill::Random, 8 * 65536)).unwrap();
    let id = backup(&repo, "s", "d", &img, &[]);
    run(&["verify", &p(&repo)], Some(PASS)).ok();
    tamper(&repo, &pack_files(&repo));
    // The index follows the packs as they now are: every CRC and location is consistent.
    // (A rebuild reads every page to count references: a forged page is damage already.)
    let rebuilt = run(&["repair", &p(&repo), "--rebuild-index"], Some(PASS));
    assert!(rebuilt.code == 0 || rebuilt.code == 4, "{rebuilt}");
    let out = t.path().join("restored");
    Tampered {
        repo,
        id,
        out,
        _t: t,
    }
}

/// verify and restore both report damage, and the restore leaves no output file.
fn assert_damage_detected(t: &Tampered, phrase: &str) {
    let v = run(&["--json", "verify", &p(&t.repo)], Some(PASS));
    assert_eq!(v.code, 4, "verify: {v}");
    let doc: Value = v.json();
    assert!(
        doc.to_string().contains(phrase),
        "verify names {phrase:?}: {v}"
    );
    let r = restore_to(&t.repo, &t.id, &t.out);
    assert_eq!(r.code, 4, "restore: {r}");
    assert!(!t.out.exists(), "a failed restore left {}", t.out.display());
    let staged: Vec<_> = fs::read_dir(t.out.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(staged.is_empty(), "a staged restore file was left behind");
}

fn chunks(records: &[(FooterEntry, Vec<u8>)]) -> Vec<usize> {
    (0..records.len())
        .filter(|&i| records[i].0.info.kind == ObjectKind::Chunk)
        .collect()
}

#[test]
fn a_flipped_ciphertext_byte_with_valid_crcs_is_damage() {
    let t = tampered("tamper_flip", |_, packs| {
        let mut records = read_pack(&packs[0]);
        let i = chunks(&records)[0];
        let mid = records[i].1.len() / 2;
        records[i].1[mid] ^= 0x01;
        write_pack(&packs[0], &records);
    });
    assert_damage_detected(&t, "authentication");
}

#[test]
fn a_valid_record_moved_to_another_id_is_damage() {
    let t = tampered("tamper_move", |_, packs| {
        let mut records = read_pack(&packs[0]);
        let c = chunks(&records);
        assert!(c.len() >= 2, "two chunks in the first pack");
        assert_eq!(
            records[c[0]].1.len(),
            records[c[1]].1.len(),
            "equal stored lengths"
        );
        // Chunk 1's record now carries chunk 0's sealed bytes: valid ciphertext, valid
        // CRC, wrong id.
        records[c[1]].1 = records[c[0]].1.clone();
        write_pack(&packs[0], &records);
    });
    assert_damage_detected(&t, "authentication");
}

#[test]
fn a_forged_page_is_damage() {
    let t = tampered("tamper_page", |_, packs| {
        for pack in packs {
            let mut records = read_pack(pack);
            let Some(i) = (0..records.len()).find(|&i| records[i].0.info.kind == ObjectKind::Page)
            else {
                continue;
            };
            // A signed page's chunk ids are cleartext after the 24-byte envelope prefix and
            // the page's 12-byte header (eight random ids do not compress: codec none).
            assert_eq!(records[i].0.info.codec, tessera_format::Codec::None);
            let at = 24 + 12;
            records[i].1[at] ^= 0x80;
            write_pack(pack, &records);
            return;
        }
        panic!("no page found");
    });
    assert_damage_detected(&t, "authentication");
}

#[test]
fn a_truncated_or_swapped_snapshot_file_is_damage() {
    for case in ["truncated", "swapped"] {
        let t = TempDir::new().unwrap();
        let repo = t.path().join("repo");
        init_encrypted(&repo, t.path());
        let img = t.path().join("img");
        make_image(
            &img,
            ImageSpec::mixed(1 << 20),
            &mut DataGen::new(seed("tamper_snap")),
        );
        let victim = backup(&repo, "s", "d", &img, &[]);
        let other = backup(&repo, "t", "d", &img, &[]);
        let file = |id: &str| repo.join("snapshots").join(format!("{id}.snap"));
        match case {
            "truncated" => {
                let bytes = fs::read(file(&victim)).unwrap();
                fs::write(file(&victim), &bytes[..bytes.len() - 20]).unwrap();
            }
            _ => {
                // A valid snapshot file of the same repository, under another name.
                fs::copy(file(&other), file(&victim)).unwrap();
            }
        }
        let v = run(&["verify", &p(&repo)], Some(PASS));
        assert_eq!(v.code, 4, "{case}: {v}");
        let out = t.path().join("out");
        let r = restore_to(&repo, &victim, &out);
        assert_eq!(r.code, 4, "{case}: {r}");
        assert!(
            !out.exists(),
            "{case}: a failed restore wrote {}",
            out.display()
        );
        // The untouched snapshot still restores.
        let ok = t.path().join("ok");
        restore_to(&repo, &other, &ok).ok();
        assert_eq!(sha256_file(&ok), sha256_file(&img));
    }
}

/// [`object_state`] without the key slots: the data.
fn data_state(repo: &Path) -> Vec<(PathBuf, (u64, std::time::SystemTime))> {
    object_state(repo)
        .into_iter()
        .filter(|(f, _)| !f.starts_with(repo.join("keys")))
        .collect()
}

/// `tessera key …` changes slots only: packs and snapshot files stay byte for byte, every
/// new secret opens the repository, every replaced one stops opening it (exit 6), and the
/// last everyday slot cannot go (exit 5).
#[test]
fn key_slots_change_without_rewriting_data() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let old_recovery = init_encrypted(&repo, t.path());
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("key_slots")),
    );
    let id = backup(&repo, "s", "d", &img, &[]);
    let before = data_state(&repo);
    let r = p(&repo);
    let kdf = CHEAP_KDF;

    // A key file slot, created 0600.
    let key = t.path().join("second.key");
    let mut args = vec!["--json", "key", "add", &r];
    let key_s = p(&key);
    args.extend(["--new-key-file", &key_s]);
    let added = run(&args, Some(PASS));
    added.ok();
    assert_eq!(added.json()["added"][0]["kind"], "key-file", "{added}");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_text = fs::read_to_string(&key).unwrap();
    assert!(!added.stdout.contains(key_text.trim()));
    run(&["list", &r, "--key-file", &key_s], None).ok();

    // A new passphrase replaces the old one.
    let mut cmd = tessera_cmd(
        ["--json", "key", "change-passphrase", &r]
            .iter()
            .chain(kdf.iter()),
    );
    cmd.env("TESSERA_PASSPHRASE", PASS)
        .env("TESSERA_NEW_PASSPHRASE", "a new passphrase");
    let out = cmd.output().unwrap();
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("a new passphrase") && !stdout.contains(PASS));
    run(&["list", &r], Some(PASS)).expect_code(6);
    run(&["list", &r], Some("a new passphrase")).ok();

    // A new recovery key replaces the old one.
    let old_rec = t.path().join("old-recovery");
    fs::write(&old_rec, &old_recovery).unwrap();
    run(&["list", &r, "--key-file", &p(&old_rec)], None).ok();
    let new_rec = t.path().join("new-recovery");
    let exported = run(
        &[
            "--json",
            "key",
            "export-recovery",
            &r,
            "--recovery-key-file",
            &p(&new_rec),
        ],
        Some("a new passphrase"),
    );
    exported.ok();
    let new_text = fs::read_to_string(&new_rec).unwrap();
    assert!(!exported.stdout.contains(new_text.trim()));
    assert_eq!(
        fs::metadata(&new_rec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    run(&["list", &r, "--key-file", &p(&old_rec)], None).expect_code(6);
    run(&["list", &r, "--key-file", &p(&new_rec)], None).ok();

    // Removing the key file slot works; the last everyday slot (the passphrase) cannot go.
    let slots = run(&["--json", "key", "list", &r], None);
    slots.ok();
    let id_of = |kind: &str| -> String {
        slots.json()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    run(
        &["key", "remove", &r, &id_of("key-file")[..8]],
        Some("a new passphrase"),
    )
    .ok();
    // The repository has no key-file slot left: the key file opens nothing (exit 6).
    run(&["list", &r, "--key-file", &key_s], None).expect_code(6);
    run(
        &["key", "remove", &r, &id_of("passphrase")],
        Some("a new passphrase"),
    )
    .expect_code(5);

    assert_eq!(data_state(&repo), before, "a key command rewrote data");
    let out = t.path().join("restored");
    run(&["restore", &r, &id, &p(&out)], Some("a new passphrase")).ok();
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

/// Sync, seed import and `repair --from` between a plain and an encrypted repository, and
/// `serve` of an encrypted one, are refused (exit 5, SPEC.md §23.8) before anything is
/// copied or served, even with the right passphrase. (Between repositories that share keys:
/// `encryption_sharing.rs`.)
#[test]
fn copies_between_plain_and_encrypted_and_serving_encrypted_are_refused() {
    let t = TempDir::new().unwrap();
    let enc = t.path().join("enc");
    init_encrypted(&enc, t.path());
    let plain = t.path().join("plain");
    run(&["init", &p(&plain), "--encryption", "none"], None).ok();
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(300_000),
        &mut DataGen::new(seed("enc_refusals")),
    );
    backup(&enc, "s", "d", &img, &[]);
    let before = object_state(&plain);
    let bundle = t.path().join("bundle");
    for (what, phrase, args) in [
        (
            "sync from encrypted",
            "is encrypted and",
            vec!["sync".to_string(), p(&enc), p(&plain)],
        ),
        (
            "sync into encrypted",
            "would re-encrypt every record",
            vec!["sync".into(), p(&plain), p(&enc)],
        ),
        (
            "repair --from",
            "is encrypted and",
            vec!["repair".into(), p(&plain), "--from".into(), p(&enc)],
        ),
        (
            "serve",
            "not built for encrypted repositories",
            vec![
                "serve".into(),
                p(&enc),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--token-file".into(),
                p(&tessera_tests::token_file(
                    t.path(),
                    "a-token-of-thirty-two-characters-or-more",
                )),
            ],
        ),
    ] {
        let out = run(&args, Some(PASS));
        assert_eq!(out.code, 5, "{what}: {out}");
        assert!(out.stderr.contains(phrase), "{what}: {out}");
        assert!(
            !out.stdout.contains("listening"),
            "{what} listened first: {out}"
        );
    }
    // A bundle of the plain repository does not go into the encrypted one.
    run(&["seed", "export", &p(&plain), &p(&bundle)], None).ok();
    let out = run(&["seed", "import", &p(&bundle), &p(&enc)], Some(PASS));
    assert_eq!(out.code, 5, "{out}");
    assert!(
        out.stderr.contains("would re-encrypt every record"),
        "{out}"
    );
    assert_eq!(
        object_state(&plain),
        before,
        "the plain repository was written"
    );
}

/// The config of `repo` rewritten as a valid plain (format 1) config of the same
/// repository: what someone who can write the repository could do to downgrade it.
fn plain_config_of(repo: &Path) -> Vec<u8> {
    let mut config =
        tessera_format::RepoConfig::decode(&fs::read(repo.join("config")).unwrap()).unwrap();
    config.format_version = tessera_format::config::PLAIN_FORMAT;
    config.id_scheme = tessera_format::IdScheme::Sha256;
    config.encryption = tessera_format::Encryption::None;
    config.encode().unwrap()
}

fn files_under(dir: &Path) -> usize {
    if dir.exists() {
        all_files(dir).len()
    } else {
        0
    }
}

/// An encrypted repository whose config is replaced by a plain one is refused (exit 4,
/// nothing written, nothing quarantined), whether its key slots are still there, were moved
/// away (its sealed snapshot files betray it), or both slots and snapshot files were moved
/// away (the index recorded the encryption); with the original config back, everything is
/// intact. A secret given for a genuinely plain repository draws a warning.
#[test]
fn a_config_downgraded_to_plain_is_refused_and_nothing_is_quarantined() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("downgrade")),
    );
    let id = backup(&repo, "s", "d", &img, &[]);
    let original = fs::read(repo.join("config")).unwrap();
    let r = p(&repo);
    fs::write(repo.join("config"), plain_config_of(&repo)).unwrap();
    let before = object_state(&repo);
    let img2 = t.path().join("img2");
    make_image(
        &img2,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("downgrade2")),
    );
    let attempt = |phrase: &str| {
        for pass in [None, Some(PASS)] {
            let out = run(
                &[
                    "--json",
                    "backup",
                    &r,
                    "--series",
                    "s",
                    &format!("d={}", p(&img2)),
                ],
                pass,
            );
            out.expect_code(4);
            assert_eq!(out.json()["kind"], "damage", "{out}");
            assert!(out.stdout.contains(phrase), "{out}");
            run(&["verify", &r], pass).expect_code(4);
            run(&["list", &r], pass).expect_code(4);
        }
        assert_eq!(
            files_under(&repo.join("quarantine")),
            0,
            "something was quarantined"
        );
    };
    // Slots still there.
    attempt("key slot");
    assert_eq!(object_state(&repo), before, "a refused command wrote");
    // Slots moved away: the first snapshot file is sealed.
    fs::rename(repo.join("keys"), t.path().join("keys.aside")).unwrap();
    attempt("is sealed");
    // Slots and snapshot files moved away: the index recorded the encryption.
    fs::rename(repo.join("snapshots"), t.path().join("snapshots.aside")).unwrap();
    fs::create_dir(repo.join("snapshots")).unwrap();
    attempt("index was made for encryption aes-256-gcm");
    fs::remove_dir(repo.join("snapshots")).unwrap();
    fs::rename(t.path().join("snapshots.aside"), repo.join("snapshots")).unwrap();
    fs::rename(t.path().join("keys.aside"), repo.join("keys")).unwrap();
    assert_eq!(object_state(&repo), before, "a refused command wrote");

    // The original config back: the repository is whole.
    fs::write(repo.join("config"), &original).unwrap();
    run(&["verify", &r], Some(PASS)).ok();
    let out = t.path().join("restored");
    restore_to(&repo, &id, &out).ok();
    assert_eq!(sha256_file(&out), sha256_file(&img));

    // A genuinely plain repository opened with a passphrase given: a warning, no secret.
    let plain = t.path().join("plain");
    run(&["init", &p(&plain), "--encryption", "none"], None).ok();
    let listed = run(&["list", &p(&plain)], Some(PASS));
    listed.ok();
    assert!(
        listed.stderr.contains("warning") && listed.stderr.contains("TESSERA_PASSPHRASE"),
        "{listed}"
    );
    assert!(!listed.stderr.contains(PASS));
    run(&["list", &p(&plain)], None).ok();
    assert!(!run(&["list", &p(&plain)], None).stderr.contains("warning"));
}

fn slot_ids(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(repo.join("keys"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".key")
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// Slots someone who can write the repository adds — one under the right passphrase
/// wrapping other keys, a damaged copy of the real one, another repository's slot — neither
/// lock the owner out (each is skipped with a warning naming no secret) nor make a wrong
/// passphrase look different; `key list` shows the unusable ones and `key remove` removes
/// them by id; below the Argon2id floor, a slot does not even decode.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, slot by slot")]
fn planted_damaged_and_foreign_slots_do_not_lock_the_owner_out() {
    use tessera_engine::crypto::slot::{wrap, SlotSecret};
    use tessera_engine::crypto::{Passphrase, RepoKeys};
    use tessera_format::keyslot::{KdfParams, MIN_KDF_ITERATIONS, MIN_KDF_MEMORY_KIB};

    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    // Slot ids are random and slots are tried in id order; a repository whose slot ids all
    // sort after "4" leaves room for a planted id before them (found in a few tries below).
    for attempt in 0.. {
        init_encrypted(&repo, t.path());
        if slot_ids(&repo).iter().all(|id| id.as_str() >= "4") {
            break;
        }
        assert!(attempt < 40, "no repository with late slot ids in 40 inits");
        fs::remove_dir_all(&repo).unwrap();
    }
    let img = t.path().join("img");
    make_image(
        &img,
        ImageSpec::mixed(1 << 20),
        &mut DataGen::new(seed("planted")),
    );
    let id = backup(&repo, "s", "d", &img, &[]);
    let r = p(&repo);
    let real_ids = slot_ids(&repo);
    let config =
        tessera_format::RepoConfig::decode(&fs::read(repo.join("config")).unwrap()).unwrap();
    let plant = |kdf: KdfParams| {
        let slot = wrap(
            &RepoKeys::generate(),
            config.repo_id,
            &SlotSecret::Passphrase(Passphrase::new(PASS.into())),
            kdf,
            0,
        )
        .unwrap();
        let name: String = slot.slot_id.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        (name, slot)
    };
    // Slots are tried in the order of their ids: the planted one must come before the real
    // ones to be tried (and warned about) at all, as an attacker would choose it.
    let (planted, slot) = std::iter::repeat_with(|| {
        plant(KdfParams {
            memory_kib: MIN_KDF_MEMORY_KIB,
            iterations: MIN_KDF_ITERATIONS,
            parallelism: 1,
        })
    })
    .take(200)
    .find(|(name, _)| real_ids.iter().all(|real| name < real))
    .expect("a slot id sorting before the real ones");
    fs::write(
        repo.join("keys").join(format!("{planted}.key")),
        slot.encode().unwrap(),
    )
    .unwrap();
    // A cheap slot (1 MiB, one pass) would make guessing cheap: it does not decode.
    let (cheap, mut weak) = plant(KdfParams {
        memory_kib: MIN_KDF_MEMORY_KIB,
        iterations: MIN_KDF_ITERATIONS,
        parallelism: 1,
    });
    weak.kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let mut weak_bytes = weak.associated_data();
    weak_bytes.extend_from_slice(&weak.nonce);
    weak_bytes.extend_from_slice(&weak.wrapped);
    weak_bytes.extend_from_slice(&crc32c(&weak_bytes).to_le_bytes());
    fs::write(repo.join("keys").join(format!("{cheap}.key")), &weak_bytes).unwrap();
    // A damaged copy of a real slot, under a new name.
    let mut damaged_bytes =
        fs::read(repo.join("keys").join(format!("{}.key", real_ids[0]))).unwrap();
    damaged_bytes[150] ^= 1;
    let damaged = "0".repeat(31) + "1";
    fs::write(
        repo.join("keys").join(format!("{damaged}.key")),
        &damaged_bytes,
    )
    .unwrap();
    // Another repository's slot under the same passphrase.
    let other = t.path().join("other");
    init_encrypted(&other, t.path());
    let foreign = slot_ids(&other)[0].clone();
    fs::copy(
        other.join("keys").join(format!("{foreign}.key")),
        repo.join("keys").join(format!("{foreign}.key")),
    )
    .unwrap();

    let listed = run(&["list", &r], Some(PASS));
    listed.ok();
    for name in [&planted, &cheap, &damaged, &foreign] {
        assert!(
            listed.stderr.contains(name.as_str()),
            "{name} not warned about: {listed}"
        );
    }
    assert!(!listed.stderr.contains(PASS), "{listed}");
    assert!(listed.stderr.contains("Argon2id parameters"), "{listed}");
    // A wrong passphrase: exit 4 while unusable slots are there (the right slot may be
    // among them), 6 once they are gone, opening the planted slot or not.
    run(&["list", &r], Some("not the passphrase")).expect_code(4);

    let keys_json = run(&["--json", "key", "list", &r], None);
    keys_json.ok();
    let unusable: Vec<String> = keys_json.json()["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let mut expected = vec![cheap.clone(), damaged.clone(), foreign.clone()];
    expected.sort();
    let mut got = unusable.clone();
    got.sort();
    assert_eq!(got, expected, "{keys_json}");
    for name in &unusable {
        let removed = run(&["--json", "key", "remove", &r, name], Some(PASS));
        removed.ok();
        assert_eq!(
            removed.json()["removed_damaged"][0]["id"],
            name.as_str(),
            "{removed}"
        );
    }
    let mut left = slot_ids(&repo);
    left.retain(|n| !real_ids.contains(n));
    assert_eq!(left, vec![planted.clone()]);
    for wrong in [PASS.to_string() + "!", "x".to_string()] {
        run(&["list", &r], Some(&wrong)).expect_code(6);
    }
    let out = t.path().join("restored");
    restore_to(&repo, &id, &out).ok();
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

fn recovery_slots(repo: &Path) -> Vec<String> {
    let listed = run(&["--json", "key", "list", &p(repo)], None);
    listed.ok();
    listed.json()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "recovery")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `key export-recovery` delivers the new key before it removes the old recovery slot: when
/// the new key cannot be written, the new slot is removed and the old key still opens.
#[test]
fn export_recovery_keeps_the_old_key_when_the_new_one_cannot_be_delivered() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let old = init_encrypted(&repo, t.path());
    let old_file = t.path().join("old-recovery");
    fs::write(&old_file, &old).unwrap();
    let r = p(&repo);
    let before = recovery_slots(&repo);
    assert_eq!(before.len(), 1);
    let nowhere = t.path().join("no such directory").join("recovery");
    let out = run(
        &[
            "key",
            "export-recovery",
            &r,
            "--recovery-key-file",
            &p(&nowhere),
        ],
        Some(PASS),
    );
    assert_ne!(out.code, 0, "{out}");
    assert!(!nowhere.exists());
    assert_eq!(recovery_slots(&repo), before, "the old recovery slot went");
    run(&["list", &r, "--key-file", &p(&old_file)], None).ok();
    // Delivered: then the old one goes.
    let new_file = t.path().join("new-recovery");
    run(
        &[
            "key",
            "export-recovery",
            &r,
            "--recovery-key-file",
            &p(&new_file),
        ],
        Some(PASS),
    )
    .ok();
    assert_eq!(recovery_slots(&repo).len(), 1);
    assert_ne!(recovery_slots(&repo), before);
    run(&["list", &r, "--key-file", &p(&new_file)], None).ok();
    run(&["list", &r, "--key-file", &p(&old_file)], None).expect_code(6);
}

/// `init --recovery-key-file` creates the file before the repository: a path that cannot
/// be written fails with no repository made, and a failed init removes the file.
#[test]
fn init_creates_the_recovery_key_file_first_and_removes_what_it_made_when_init_fails() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let init = |recovery: &Path, pass: &str| {
        let mut args = vec![
            "init".to_string(),
            p(&repo),
            "--recovery-key-file".into(),
            p(recovery),
        ];
        args.extend(CHEAP_KDF.iter().map(ToString::to_string));
        run(&args, Some(pass))
    };
    let nowhere = t.path().join("no such directory").join("recovery");
    let out = init(&nowhere, PASS);
    assert_ne!(out.code, 0, "{out}");
    assert!(
        !repo.join("config").exists(),
        "a repository was made: {out}"
    );
    // A key file the failed init made for the first slot is removed too.
    let key_file = t.path().join("new.key");
    let out = run(
        &[
            "init",
            &p(&repo),
            "--key-file",
            &p(&key_file),
            "--recovery-key-file",
            &p(&nowhere),
        ],
        None,
    );
    assert_ne!(out.code, 0, "{out}");
    assert!(!key_file.exists(), "the key file of a failed init was left");
    // An empty passphrase fails inside init, after the file was created: it is removed.
    let file = t.path().join("recovery");
    init(&file, "").expect_code(2);
    assert!(
        !file.exists(),
        "the recovery key file of a failed init was left"
    );
    assert!(!repo.join("config").exists());
    init(&file, PASS).ok();
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::write(t.path().join("rk"), fs::read(&file).unwrap()).unwrap();
    run(
        &["list", &p(&repo), "--key-file", &p(&t.path().join("rk"))],
        None,
    )
    .ok();
}

/// `keys/` is 0700 and every slot 0600, from init and from `key add`.
#[test]
fn key_slots_are_private_to_their_owner() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    let key = t.path().join("second.key");
    run(
        &["key", "add", &p(&repo), "--new-key-file", &p(&key)],
        Some(PASS),
    )
    .ok();
    let mode = |f: &Path| fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&repo.join("keys")), 0o700);
    let slots = all_files(&repo.join("keys"));
    assert_eq!(slots.len(), 3);
    for slot in &slots {
        assert_eq!(mode(slot), 0o600, "{}", slot.display());
    }
}

/// `--password-command` does not hand the environment's passphrases to the command, and
/// its output is bounded; `key add --new-key-file` creates nothing until the repository is
/// unlocked.
#[test]
fn the_password_command_sees_no_passphrase_and_key_add_creates_nothing_before_unlocking() {
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_encrypted(&repo, t.path());
    let r = p(&repo);
    // The command prints the passphrase only if neither variable reached it.
    let command = format!(
        "if [ -n \"$TESSERA_PASSPHRASE$TESSERA_NEW_PASSPHRASE\" ]; then echo leaked; else echo '{PASS}'; fi"
    );
    let mut cmd = tessera_cmd(["list", &r, "--password-command", &command]);
    cmd.env("TESSERA_PASSPHRASE", PASS)
        .env("TESSERA_NEW_PASSPHRASE", "new");
    let out = cmd.output().unwrap();
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Endless output is cut off and refused, not read into memory.
    let flood = run(&["list", &r, "--password-command", "yes"], None);
    flood.expect_code(2);
    assert!(flood.stderr.contains("more than"), "{flood}");

    let key = t.path().join("new.key");
    run(
        &["key", "add", &r, "--new-key-file", &p(&key)],
        Some("not the passphrase"),
    )
    .expect_code(6);
    assert!(!key.exists(), "a key file was created before unlocking");
    run(&["key", "add", &r, "--new-key-file", &p(&key)], Some(PASS)).ok();
    run(&["list", &r, "--key-file", &p(&key)], None).ok();
}
