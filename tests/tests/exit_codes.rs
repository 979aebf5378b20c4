//! Every exit code of SPEC.md §11 from a real situation, through the binary, with and
//! without `--json` (the document then carries `"ok": false`, the error text and the
//! error's stable `"kind"`):
//!
//! | code | kind | situation here |
//! |---|---|---|
//! | 0 | | `list` |
//! | 1 | `failed` | a backup of a source file that does not exist |
//! | 2 | `usage` | a malformed snapshot reference, an unknown snapshot, a series without snapshots, an option clap does not know |
//! | 3 | `locked` | a backup while another process holds the writer lock |
//! | 4 | `damage` | a restore of a snapshot whose chunk was corrupted, and the verify that finds it |
//! | 5 | `refused` | a delta backup on the wrong base, forgetting a protected snapshot |
//! | 6 | `key` | a wrong passphrase for an encrypted repository (more cases in `encryption.rs`) |
//!
//! Exit code 70 (`internal`, a bug) cannot be provoked without a fault-injection hook; the
//! CLI's unit test `every_kind_has_its_own_documented_code` checks its mapping instead.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tessera_tests::{
    back_up_a_damaged_victim, backup_json, hold_lock, init_repo, make_image, seed, tessera,
    tessera_cmd, write_change_list, DataGen, ImageSpec, Out,
};

/// One situation and what the binary must answer.
struct Case {
    what: &'static str,
    args: Vec<String>,
    code: i32,
    kind: &'static str,
    /// A phrase of the message (the text output, and `"error"` with `--json`).
    phrase: String,
    /// Environment variables the command runs with.
    env: Vec<(&'static str, &'static str)>,
}

impl Case {
    fn new(what: &'static str, args: &[&str], code: i32, kind: &'static str, phrase: &str) -> Self {
        Self {
            what,
            args: args.iter().map(ToString::to_string).collect(),
            code,
            kind,
            phrase: phrase.to_string(),
            env: Vec::new(),
        }
    }

    fn with_env(mut self, name: &'static str, value: &'static str) -> Self {
        self.env.push((name, value));
        self
    }

    fn run(&self, args: &[String]) -> Out {
        let output = tessera_cmd(args)
            .envs(self.env.iter().copied())
            .output()
            .expect("running tessera");
        Out::of(args, &output)
    }

    /// Runs the case as text, then with `--json`.
    fn check(&self) {
        let out = self.run(&self.args);
        assert_eq!(out.code, self.code, "{}: {out}", self.what);
        // Failures say why on stderr; a verify that found problems lists them on stdout.
        assert!(
            out.stderr.contains(&self.phrase) || out.stdout.contains(&self.phrase),
            "{}: the output lacks {:?}: {out}",
            self.what,
            self.phrase
        );
        let mut json_args = vec!["--json".to_string()];
        json_args.extend(self.args.iter().cloned());
        let out = self.run(&json_args);
        assert_eq!(out.code, self.code, "{} (--json): {out}", self.what);
        let v = out.json();
        assert_eq!(v["ok"], false, "{}: {out}", self.what);
        assert_eq!(v["kind"], self.kind, "{}: {out}", self.what);
        let error = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error text in {out}", self.what));
        assert!(
            error.contains(&self.phrase),
            "{}: the error lacks {:?}: {out}",
            self.what,
            self.phrase
        );
    }
}

/// A repository with a snapshot of series `keep` (protected), one of series `cbt` taken
/// with a changed-block list (state `cbt:0`), and one of series `victim` alone in a pack
/// whose middle byte is flipped.
struct Fixture {
    t: TempDir,
    repo: PathBuf,
    /// The victim's snapshot id.
    victim: String,
}

impl Fixture {
    fn new() -> Self {
        let mut gen = DataGen::new(seed("exit_codes"));
        let t = TempDir::new().unwrap();
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        let r = repo.display().to_string();

        let keep = t.path().join("keep.img");
        make_image(&keep, ImageSpec::mixed(300_000), &mut gen);
        backup_json(&repo, "keep", &[("d", &keep)]);
        tessera(["protect", &r, "latest@keep"]).ok();

        let cbt = t.path().join("cbt.img");
        let size = 1 << 20;
        make_image(&cbt, ImageSpec::mixed(size), &mut gen);
        let list = t.path().join("changes");
        write_change_list(&list, size, "*", "cbt:0", &[(0, size)]);
        tessera([
            "backup",
            &r,
            "--series",
            "cbt",
            &format!("d={}", cbt.display()),
            "--changes",
            &format!("d={}", list.display()),
        ])
        .ok();

        let (victim, _) = back_up_a_damaged_victim(&repo, &t.path().join("victim.img"), &mut gen);
        Self { t, repo, victim }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    fn r(&self) -> String {
        self.repo.display().to_string()
    }
}

/// The failures other than a held lock (exit codes 1, 2, 4 and 5); a restore writes to
/// `out_file`.
fn failures(f: &Fixture, out_file: &Path) -> Vec<Case> {
    let r = f.r();
    let missing = f.path("no-such-image");
    let image = f.path("cbt.img");
    let wrong_list = f.path("wrong-changes");
    write_change_list(&wrong_list, 1 << 20, "cbt:7", "cbt:8", &[(0, 10)]);
    vec![
        Case::new(
            "unreadable source",
            &[
                "backup",
                &r,
                "--series",
                "s",
                &format!("d={}", missing.display()),
            ],
            1,
            "failed",
            "cannot read source",
        ),
        Case::new(
            "malformed snapshot reference",
            &["restore", &r, "zzzz", &out_file.display().to_string()],
            2,
            "usage",
            "not a snapshot reference",
        ),
        Case::new(
            "unknown snapshot",
            &["show", &r, "ffffffff"],
            2,
            "usage",
            "no snapshot matches",
        ),
        Case::new(
            "series without snapshots",
            &["verify", &r, "--series", "nobody"],
            2,
            "usage",
            "has no snapshots",
        ),
        Case::new(
            "unknown option",
            &["list", &r, "--no-such-flag"],
            2,
            "usage",
            "--no-such-flag",
        ),
        Case::new(
            "restore of a snapshot whose chunk was corrupted",
            &["restore", &r, &f.victim, &out_file.display().to_string()],
            4,
            "damage",
            "damaged",
        ),
        Case::new(
            "verify finds the corrupted chunk",
            &["verify", &r],
            4,
            "damage",
            "problems",
        ),
        Case::new(
            "delta on the wrong base",
            &[
                "backup",
                &r,
                "--series",
                "cbt",
                &format!("d={}", image.display()),
                "--changes",
                &format!("d={}", wrong_list.display()),
                "--reference",
                "latest",
            ],
            5,
            "refused",
            "cbt:7",
        ),
        Case::new(
            "forget of a protected snapshot",
            &["forget", &r, "latest@keep"],
            5,
            "refused",
            "is protected",
        ),
    ]
}

#[test]
fn every_exit_code_comes_from_a_real_situation() {
    let f = Fixture::new();
    let r = f.r();

    // 0: success, and the document says so without an error or a kind.
    let out = tessera(["--json", "list", &r]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    assert!(v.get("error").is_none() && v.get("kind").is_none(), "{out}");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3, "{out}");

    let out_file = f.path("restored");
    for case in &failures(&f, &out_file) {
        case.check();
    }
    assert!(!out_file.exists(), "a failed restore left its output");

    // 3: another process holds the writer lock (for longer than the writer waits).
    let lock = hold_lock(&f.repo.join("lock"));
    let started = std::time::Instant::now();
    Case::new(
        "second writer",
        &["forget", &r, "latest@cbt"],
        3,
        "locked",
        &format!("locked by PID {}", std::process::id()),
    )
    .with_env("TESSERA_LOCK_WAIT", "1")
    .check();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "the writers did not wait TESSERA_LOCK_WAIT seconds for the lock"
    );
    drop(lock);

    // 6: an encrypted repository and a wrong passphrase (a key file that opens nothing).
    let encrypted = f.path("encrypted");
    let wrong = f.path("wrong.key");
    let recovery = f.path("recovery");
    tessera([
        "init",
        &encrypted.display().to_string(),
        "--key-file",
        &f.path("right.key").display().to_string(),
        "--recovery-key-file",
        &recovery.display().to_string(),
    ])
    .ok();
    std::fs::write(&wrong, format!("tessera-key-v1:{}\n", "ab".repeat(32))).unwrap();
    Case::new(
        "wrong key file",
        &[
            "list",
            &encrypted.display().to_string(),
            "--key-file",
            &wrong.display().to_string(),
        ],
        6,
        "key",
        "wrong key file",
    )
    .check();

    // Nothing a refused or failed command did changed the catalog.
    let out = tessera(["--json", "list", &r]);
    assert_eq!(
        out.json()["snapshots"].as_array().unwrap().len(),
        3,
        "{out}"
    );
}
