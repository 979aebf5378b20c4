//! Bad input gets a clear error (exit code and a key phrase) and leaves earlier snapshots
//! intact: every test first takes a good snapshot, provokes the failure, then restores the
//! good snapshot and compares it byte for byte.
//!
//! Note on "unreadable source": these tests run as root, and root reads a file of mode 000
//! anyway, so `chmod 000` cannot make a source unreadable here. A directory and a FIFO are
//! used instead: both can be opened but are not disk images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tessera_tests::{
    back_up_a_damaged_victim, backup_json, dir_entries, finish_child, init_repo, list_ids,
    make_image, pack_bytes, pack_files, restore, restored_sha, seed, sha256_file, snapshot_id,
    tessera, tessera_cmd, verify, wait_until, DataGen, ImageSpec, Out,
};

/// A repository holding one good snapshot of a 1 MiB + 333 byte image.
struct Fixture {
    t: TempDir,
    repo: PathBuf,
    img: PathBuf,
    id: String,
    sha: String,
}

impl Fixture {
    fn new(test: &str) -> Self {
        let mut gen = DataGen::new(seed(test));
        let t = TempDir::new().unwrap();
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        let img = t.path().join("good.img");
        make_image(&img, ImageSpec::mixed((1 << 20) + 333), &mut gen);
        let id = snapshot_id(&backup_json(&repo, "good", &[("d", &img)]));
        let sha = sha256_file(&img);
        Self {
            t,
            repo,
            img,
            id,
            sha,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// The good snapshot is still the only one and restores identical; verify is clean.
    #[track_caller]
    fn assert_intact(&self) {
        assert_eq!(list_ids(&self.repo), vec![self.id.clone()]);
        assert_eq!(restored_sha(&self.repo, &self.id, self.t.path()), self.sha);
        verify(&self.repo).ok();
    }

    fn backup(&self, disk: &str) -> Out {
        tessera([
            "backup".as_ref(),
            self.repo.as_os_str(),
            "--series".as_ref(),
            "bad".as_ref(),
            disk.as_ref(),
        ])
    }
}

#[test]
fn missing_source_file() {
    let f = Fixture::new("missing_source");
    let packs = pack_bytes(&f.repo);
    let missing = f.path("does-not-exist.img");
    let out = f.backup(&format!("d={}", missing.display()));
    out.expect_code(1)
        .stderr_has("cannot read source")
        .stderr_has(&missing.display().to_string())
        .stderr_has("no such file");
    // The source is opened before anything is written.
    assert_eq!(pack_bytes(&f.repo), packs);
    // With several disks, one bad path fails the whole backup.
    let out = f.backup_many(&[
        format!("a={}", f.img.display()),
        format!("b={}", missing.display()),
    ]);
    out.expect_code(1).stderr_has("cannot read source");
    assert_eq!(pack_bytes(&f.repo), packs);
    f.assert_intact();
}

impl Fixture {
    fn backup_many(&self, disks: &[String]) -> Out {
        let mut args: Vec<String> = vec![
            "backup".into(),
            self.repo.display().to_string(),
            "--series".into(),
            "bad".into(),
        ];
        args.extend(disks.iter().cloned());
        tessera(args)
    }
}

#[test]
fn directory_as_source() {
    let f = Fixture::new("dir_source");
    let dir = f.path("a-directory");
    fs::create_dir(&dir).unwrap();
    f.backup(&format!("d={}", dir.display()))
        .expect_code(1)
        .stderr_has("cannot read source")
        .stderr_has("not a regular file or block device");
    f.assert_intact();
}

#[test]
fn fifo_as_source_fails_instead_of_hanging() {
    let f = Fixture::new("fifo_source");
    let fifo = f.path("a-fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo failed");
    let args = vec![
        "backup".to_string(),
        f.repo.display().to_string(),
        "--series".into(),
        "bad".into(),
        format!("d={}", fifo.display()),
    ];
    let mut child = tessera_cmd(&args).spawn().unwrap();
    // Opening a FIFO for reading blocks until a writer appears; a backup must not.
    let exited = wait_until(Duration::from_secs(5), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        child.kill().unwrap();
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = finish_child(child, &refs);
    assert!(
        exited,
        "`tessera backup` of a FIFO hung for 5 s (killed): the source is opened before its \
         type is checked, and open(2) of a FIFO blocks until a writer appears\n{out}"
    );
    out.expect_code(1)
        .stderr_has("cannot read source")
        .stderr_has("not a regular file or block device");
    f.assert_intact();
}

#[test]
fn not_a_repository() {
    let f = Fixture::new("not_a_repo");
    let empty = f.path("empty");
    fs::create_dir(&empty).unwrap();
    let nowhere = f.path("nowhere");
    for dir in [&empty, &nowhere] {
        let d = dir.display().to_string();
        let img = format!("d={}", f.img.display());
        let out_file = f.path("out").display().to_string();
        for args in [
            vec!["list", d.as_str()],
            vec!["show", d.as_str(), "latest"],
            vec!["stats", d.as_str()],
            vec!["verify", d.as_str()],
            vec!["backup", d.as_str(), "--series", "s", img.as_str()],
            vec!["restore", d.as_str(), "latest", out_file.as_str()],
            vec!["repair", d.as_str(), "--rebuild-index"],
        ] {
            // A path that holds no repository is a bad argument.
            tessera(&args)
                .expect_code(2)
                .stderr_has("is not a tessera repository")
                .stderr_has("tessera init");
        }
        // Nothing was created in (or as) the directory.
        assert!(dir_entries(dir).is_empty(), "{:?}", dir_entries(dir));
    }
    assert!(!nowhere.exists());
    f.assert_intact();
}

#[test]
fn future_format_version() {
    let f = Fixture::new("future_version");
    let config = f.repo.join("config");
    let original = fs::read(&config).unwrap();
    let mut patched = original.clone();
    patched[8..12].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&config, &patched).unwrap();
    let r = f.repo.display().to_string();
    let img = format!("d={}", f.img.display());
    let out_file = f.path("out").display().to_string();
    for args in [
        vec!["list", r.as_str()],
        vec!["backup", r.as_str(), "--series", "s", img.as_str()],
        vec!["restore", r.as_str(), "latest", out_file.as_str()],
        vec!["verify", r.as_str()],
        vec!["repair", r.as_str(), "--rebuild-index"],
    ] {
        // Refused (5): the repository is fine, this tessera is too old for it.
        tessera(&args)
            .expect_code(5)
            .stderr_has("version 99")
            .stderr_has("upgrade");
    }
    assert!(!Path::new(&out_file).exists());
    assert_eq!(
        fs::read(&config).unwrap(),
        patched,
        "the config was rewritten"
    );
    fs::write(&config, &original).unwrap();
    f.assert_intact();
}

#[test]
fn corrupted_config() {
    let f = Fixture::new("corrupt_config");
    let config = f.repo.join("config");
    let original = fs::read(&config).unwrap();
    // A flipped byte in the repository id: only the checksum can tell.
    let mut flipped = original.clone();
    flipped[20] ^= 0x40;
    fs::write(&config, &flipped).unwrap();
    tessera(["list".as_ref(), f.repo.as_os_str()])
        .expect_code(4)
        .stderr_has("config")
        .stderr_has("checksum");
    // Every single-bit flip anywhere is refused cleanly (no panic, no success): as damage
    // (4), or, when the flip lands in the version field, as a version this build refuses (5).
    for byte in 0..original.len() {
        for bit in [0u8, 7] {
            let mut damaged = original.clone();
            damaged[byte] ^= 1 << bit;
            fs::write(&config, &damaged).unwrap();
            let out = tessera(["list".as_ref(), f.repo.as_os_str()]);
            let expected = if (8..12).contains(&byte) && out.stderr.contains("upgrade") {
                5
            } else {
                4
            };
            assert_eq!(out.code, expected, "flip of byte {byte} bit {bit}: {out}");
            assert!(!out.stderr.contains("panicked"), "{out}");
            out.stderr_has("config");
        }
    }
    // A truncated config too.
    fs::write(&config, &original[..original.len() - 5]).unwrap();
    tessera(["list".as_ref(), f.repo.as_os_str()])
        .expect_code(4)
        .stderr_has("config");
    fs::write(&config, &original).unwrap();
    f.assert_intact();
}

/// Backs up a second image (series "victim") into its own pack, then cuts that pack to
/// half its length. Returns the victim's snapshot id and the pack id.
fn truncate_victim_pack(f: &Fixture) -> (String, String) {
    let mut gen = DataGen::new(seed("truncated_pack/victim"));
    let before: Vec<PathBuf> = pack_files(&f.repo);
    let other = f.path("other.img");
    make_image(
        &other,
        ImageSpec {
            weights: (0, 1, 1),
            ..ImageSpec::mixed(2 * (1 << 20) + 99)
        },
        &mut gen,
    );
    let victim_id = snapshot_id(&backup_json(&f.repo, "victim", &[("d", &other)]));
    let new_packs: Vec<PathBuf> = pack_files(&f.repo)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(
        new_packs.len(),
        1,
        "expected the second backup to write one pack"
    );
    let pack = &new_packs[0];
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    let len = fs::metadata(pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    (victim_id, pack_id)
}

#[test]
fn truncated_pack() {
    let f = Fixture::new("truncated_pack");
    let (victim_id, pack_id) = truncate_victim_pack(&f);

    // Restoring from a damaged repository is damage (4).
    let out = restore(&f.repo, &victim_id, &f.path("victim.out"), false);
    out.expect_code(4).stderr_has(&pack_id);
    assert!(
        out.stderr.contains("damaged") || out.stderr.contains("truncated"),
        "{out}"
    );
    assert!(
        !f.path("victim.out").exists(),
        "a failed restore left its output"
    );

    let v = verify(&f.repo);
    v.expect_code(4);
    assert!(
        v.stdout.contains(&pack_id),
        "verify does not name the pack: {v}"
    );

    // The snapshot that does not use the damaged pack still restores.
    assert_eq!(restored_sha(&f.repo, &f.id, f.t.path()), f.sha);
    assert_eq!(list_ids(&f.repo).len(), 2);
}

#[test]
fn failed_restore_removes_its_partial_file() {
    let f = Fixture::new("partial_cleanup");
    let (victim_id, _) = truncate_victim_pack(&f);
    restore(&f.repo, &victim_id, &f.path("victim.out"), false).expect_code(4);
    assert!(!f.path("victim.out").exists());
    // The staged `.NAME.tessera-partial` (as large as the disk) must not be left behind by
    // a restore that failed with an error (it is not a crash).
    let leftovers: Vec<String> = dir_entries(f.t.path())
        .into_iter()
        .filter(|n| n.contains("tessera-partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a restore that failed with an error left its partial file: {leftovers:?}"
    );
}

#[test]
fn flipped_byte_in_a_pack() {
    let f = Fixture::new("bitrot_pack");
    let mut gen = DataGen::new(seed("bitrot_pack/victim"));
    let (victim_id, pack_id) = back_up_a_damaged_victim(&f.repo, &f.path("other.img"), &mut gen);
    let out = restore(&f.repo, &victim_id, &f.path("victim.out"), false);
    out.expect_code(4)
        .stderr_has(&pack_id)
        .stderr_has("damaged");
    assert!(!f.path("victim.out").exists());
    let v = verify(&f.repo);
    v.expect_code(4);
    assert!(v.stdout.contains(&pack_id), "{v}");
    assert_eq!(restored_sha(&f.repo, &f.id, f.t.path()), f.sha);
}

#[test]
fn damaged_snapshot_file() {
    let f = Fixture::new("bad_snapshot_file");
    let img2 = f.path("second.img");
    let mut gen = DataGen::new(seed("bad_snapshot_file/2"));
    make_image(&img2, ImageSpec::mixed(200_000), &mut gen);
    let victim = snapshot_id(&backup_json(&f.repo, "victim", &[("d", &img2)]));
    let snap = f.repo.join("snapshots").join(format!("{victim}.snap"));
    let mut bytes = fs::read(&snap).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    fs::write(&snap, bytes).unwrap();

    restore(&f.repo, &victim, &f.path("v.out"), false)
        .expect_code(4)
        .stderr_has(&format!("snapshot {victim} is damaged"));
    assert!(!f.path("v.out").exists());
    // The catalog (index) still lists it; verify reports it.
    assert_eq!(list_ids(&f.repo).len(), 2);
    let v = verify(&f.repo);
    v.expect_code(4);
    assert!(v.stdout.contains(&victim), "{v}");
    assert_eq!(restored_sha(&f.repo, &f.id, f.t.path()), f.sha);
    // A writer keeps the damaged (published) file rather than deleting evidence.
    backup_json(&f.repo, "good", &[("d", &f.img)]);
    assert!(snap.exists());
}

#[test]
fn block_size_change_within_a_series() {
    let f = Fixture::new("series_block_size");
    let out = tessera([
        "backup",
        &f.repo.display().to_string(),
        "--series",
        "good",
        "--block-size",
        "1M",
        &format!("d={}", f.img.display()),
    ]);
    // Refused (5): the request conflicts with how the series was backed up.
    out.expect_code(5).stderr_has("block size");
    f.assert_intact();
}

#[test]
fn bad_snapshot_reference() {
    let f = Fixture::new("bad_ref");
    let out = f.path("out");
    for (spec, code, phrase) in [
        ("zzzz", 2, "not a snapshot reference"),
        ("abc", 2, "not a snapshot reference"),
        ("ffffffff", 2, "no snapshot matches"),
        ("latest@nosuchseries", 2, "no snapshot matches"),
    ] {
        restore(&f.repo, spec, &out, false)
            .expect_code(code)
            .stderr_has(phrase);
        tessera(["show".as_ref(), f.repo.as_os_str(), spec.as_ref()])
            .expect_code(code)
            .stderr_has(phrase);
        assert!(!out.exists());
    }
    f.assert_intact();
}

#[test]
fn bad_disk_spec() {
    let f = Fixture::new("bad_disk_spec");
    let img = f.img.display().to_string();
    for (spec, phrase) in [
        ("noequals".to_string(), "NAME=VALUE"),
        (format!("={img}"), "NAME=VALUE"),
        (format!("bad:name={img}"), "disk name"),
    ] {
        f.backup(&spec).expect_code(2).stderr_has(phrase);
    }
    // Same disk name twice, an invalid series name, an invalid tag.
    f.backup_many(&[format!("d={img}"), format!("d={img}")])
        .expect_code(2)
        .stderr_has("given twice");
    tessera([
        "backup",
        &f.repo.display().to_string(),
        "--series",
        "-bad",
        &format!("d={img}"),
    ])
    .expect_code(2);
    tessera([
        "backup",
        &f.repo.display().to_string(),
        "--series",
        "s",
        "--tag",
        "novalue",
        &format!("d={img}"),
    ])
    .expect_code(2)
    .stderr_has("NAME=VALUE");
    f.assert_intact();
}

#[test]
fn invalid_block_size_at_init() {
    let t = TempDir::new().unwrap();
    for bs in ["3K", "100K", "32K", "16M", "abc", "64X"] {
        let repo = t.path().join(format!("repo-{bs}"));
        let out = tessera([
            "init".as_ref(),
            repo.as_os_str(),
            "--block-size".as_ref(),
            bs.as_ref(),
        ]);
        out.expect_code(2);
        assert!(
            out.stderr.contains("power of two")
                || out.stderr.contains("not a size")
                || out.stderr.contains("unknown unit"),
            "{out}"
        );
        assert!(
            !repo.join("config").exists(),
            "init {bs} created a repository"
        );
    }
    // And at backup time.
    let f = Fixture::new("bad_block_size_backup");
    let out = tessera([
        "backup",
        &f.repo.display().to_string(),
        "--series",
        "new",
        "--block-size",
        "3K",
        &format!("d={}", f.img.display()),
    ]);
    out.expect_code(2).stderr_has("power of two");
    f.assert_intact();
}
