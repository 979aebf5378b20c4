//! The machine interface: with `--json` every command prints exactly one JSON document on
//! stdout, `"ok": true` on success and `"ok": false` with an `"error"` string and the
//! error's `"kind"` on failure, with the documented exit codes; and no progress bars when
//! stderr is not a terminal.

use std::fs;
use std::path::Path;

use tempfile::TempDir;
use tessera_tests::{
    backup_json, init_repo, make_image, pack_files, seed, tessera, DataGen, ImageSpec, Out, Value,
};

fn run_json(args: &[&str]) -> (Out, Value) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = tessera(&full);
    let v = out.json();
    (out, v)
}

#[track_caller]
fn assert_success(args: &[&str]) -> Value {
    let (out, v) = run_json(args);
    out.ok();
    assert_eq!(v["ok"], true, "{out}");
    assert!(v.get("error").is_none(), "{out}");
    assert_eq!(out.stderr, "", "stderr not empty on success: {out}");
    v
}

/// The kind `--json` names for each exit code (SPEC.md §11).
fn kind_of_code(code: i32) -> &'static str {
    match code {
        1 => "failed",
        2 => "usage",
        3 => "locked",
        4 => "damage",
        5 => "refused",
        70 => "internal",
        other => panic!("no kind has exit code {other}"),
    }
}

#[track_caller]
fn assert_failure(args: &[&str], code: i32) -> Value {
    let (out, v) = run_json(args);
    out.expect_code(code);
    assert_eq!(v["ok"], false, "{out}");
    let err = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {out}"));
    assert!(!err.is_empty(), "{out}");
    assert_eq!(v["kind"], kind_of_code(code), "{out}");
    v
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn every_command_succeeds_with_json() {
    let mut gen = DataGen::new(seed("json_ok"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let r = repo.display().to_string();
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(777_777), &mut gen);
    let disk = format!("d={}", img.display());

    let v = assert_success(&[
        "init",
        &r,
        "--encryption",
        "none",
        "--block-size",
        "128K",
        "--compression",
        "zstd:5",
    ]);
    assert!(is_hex(v["repository_id"].as_str().unwrap(), 32), "{v}");
    assert_eq!(v["block_size"], 128 * 1024);
    assert_eq!(v["compression"], "zstd:5");

    let v = assert_success(&["backup", &r, "--series", "s", "--tag", "k=v", &disk]);
    let id = v["snapshot"].as_str().unwrap().to_string();
    assert!(is_hex(&id, 64), "{v}");
    assert_eq!(v["series"], "s");
    assert_eq!(v["disks"][0]["name"], "d");
    assert_eq!(v["disks"][0]["size"], 777_777);
    assert_eq!(v["disks"][0]["block_size"], 128 * 1024);

    let v = assert_success(&["list", &r]);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(v["snapshots"][0]["id"], id.as_str());
    assert_eq!(v["snapshots"][0]["tags"]["k"], "v");
    let v = assert_success(&["list", &r, "--series", "nothing"]);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 0);

    let v = assert_success(&["show", &r, &id[..6]]);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["disks"][0]["size"], 777_777);

    let v = assert_success(&["stats", &r]);
    assert_eq!(v["stats"]["snapshots"], 1);
    assert_eq!(v["stats"]["logical_bytes"], 777_777);

    let out = t.path().join("out");
    let v = assert_success(&["restore", &r, "latest", &out.display().to_string()]);
    assert_eq!(v["snapshot"], id.as_str());
    assert_eq!(v["disks"][0]["size"], 777_777);
    assert_eq!(v["disks"][0]["path"], out.display().to_string());
    tessera_tests::assert_same_file(&img, &out);

    let v = assert_success(&["verify", &r]);
    assert_eq!(v["report"]["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["report"]["snapshots"], 1);
    assert!(v["report"]["objects_read"].as_u64().unwrap() > 0);
    let v = assert_success(&["verify", &r, "--metadata-only"]);
    assert_eq!(v["report"]["objects_read"], 0);

    let v = assert_success(&["repair", &r, "--rebuild-index"]);
    assert_eq!(v["snapshots"], 1);
    assert_eq!(v["packs"], pack_files(&repo).len());
}

#[test]
fn every_command_fails_with_json() {
    let mut gen = DataGen::new(seed("json_err"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let r = repo.display().to_string();
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(100_000), &mut gen);
    backup_json(&repo, "s", &[("d", &img)]);
    let not_repo = t.path().join("empty");
    fs::create_dir(&not_repo).unwrap();
    let n = not_repo.display().to_string();
    let existing = img.display().to_string();
    let missing = format!("d={}", t.path().join("missing").display());

    let v = assert_failure(&["init", &r], 2);
    assert!(v["error"].as_str().unwrap().contains("not empty"), "{v}");
    assert_failure(
        &[
            "init",
            &t.path().join("new").display().to_string(),
            "--block-size",
            "3K",
        ],
        2,
    );
    assert_failure(
        &[
            "init",
            &t.path().join("new2").display().to_string(),
            "--compression",
            "lz9",
        ],
        2,
    );
    let v = assert_failure(&["backup", &r, "--series", "s", &missing], 1);
    assert!(
        v["error"].as_str().unwrap().contains("cannot read source"),
        "{v}"
    );
    assert_failure(&["backup", &r, "--series", "s", "noequals"], 2);
    assert_failure(
        &["backup", &n, "--series", "s", &format!("d={existing}")],
        2,
    );
    assert_failure(&["list", &n], 2);
    assert_failure(&["show", &r, "zzzz"], 2);
    assert_failure(&["show", &r, "ffffffff"], 2);
    assert_failure(&["stats", &n], 2);
    let v = assert_failure(&["restore", &r, "latest", &existing], 2);
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    assert_failure(
        &[
            "restore",
            &r,
            "latest:nodisk",
            &t.path().join("o").display().to_string(),
        ],
        2,
    );
    assert_failure(&["verify", &n], 2);
    assert_failure(&["repair", &r], 2);
    assert_failure(&["repair", &n, "--rebuild-index"], 2);
}

#[test]
fn verify_with_problems_reports_ok_false() {
    let mut gen = DataGen::new(seed("json_verify"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(300_000), &mut gen);
    backup_json(&repo, "s", &[("d", &img)]);
    let pack = &pack_files(&repo)[0];
    let len = fs::metadata(pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (out, v) = run_json(&["verify", &repo.display().to_string()]);
    out.expect_code(4);
    assert_eq!(v["ok"], false, "{out}");
    assert_eq!(v["kind"], "damage", "{out}");
    assert!(v["error"].as_str().unwrap().contains("problems"), "{out}");
    assert!(
        !v["report"]["problems"].as_array().unwrap().is_empty(),
        "{out}"
    );
}

#[test]
fn usage_errors_print_json_too() {
    // `--json` promises one JSON document "(errors too)"; a command line clap rejects is
    // an error as well, and a script parsing stdout must not get an empty string.
    for args in [
        vec!["--json", "list"],
        vec!["--json", "backup", "/nonexistent-repo"],
        vec!["--json", "frobnicate"],
        vec!["--json", "list", "/r", "--no-such-flag"],
    ] {
        let out = tessera(&args);
        out.expect_code(2);
        let v = out.json();
        assert_eq!(v["ok"], false, "{out}");
        assert!(v["error"].is_string(), "{out}");
        assert_eq!(v["kind"], "usage", "{out}");
    }
}

fn quiet_stderr(args: &[&str]) -> Out {
    let out = tessera(args);
    out.ok();
    assert_eq!(out.stderr, "", "something was printed on stderr: {out}");
    assert!(!out.stdout.is_empty(), "{out}");
    out
}

#[test]
fn no_progress_output_when_stderr_is_not_a_terminal() {
    let mut gen = DataGen::new(seed("no_bars"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let r = repo.display().to_string();
    // Big enough that a progress bar would draw at least once.
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(48 << 20), &mut gen);
    let disk = format!("d={}", img.display());
    quiet_stderr(&["init", &r, "--encryption", "none"]);
    for json in [false, true] {
        let j: &[&str] = if json { &["--json"] } else { &[] };
        let with = |args: &[&str]| -> Vec<String> {
            j.iter().chain(args).map(ToString::to_string).collect()
        };
        let out = t.path().join(format!("out-{json}"));
        let o = out.display().to_string();
        for args in [
            with(&["backup", &r, "--series", "s", &disk]),
            with(&["restore", &r, "latest", &o]),
            with(&["verify", &r]),
            with(&["repair", &r, "--rebuild-index"]),
            with(&["list", &r]),
            with(&["stats", &r]),
        ] {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            quiet_stderr(&refs);
        }
        tessera_tests::assert_same_file(&img, Path::new(&out));
    }
}

/// Runs `tessera ARGS` under a pseudo-terminal (util-linux `script`, package bsdutils, which
/// `scripts/ensure-deps.sh` installs); returns the exit code and the merged terminal output.
fn on_a_terminal(args: &[&str]) -> (i32, String) {
    let cmd = std::iter::once(tessera_tests::tessera_bin().display().to_string())
        .chain(args.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("running `script` (util-linux) for a terminal: {e} (run scripts/ensure-deps.sh)")
        });
    (
        tessera_tests::exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[test]
fn progress_bars_only_on_a_terminal_and_never_with_json_or_quiet() {
    // Positive control for the test above: on a terminal the bars do appear, so their
    // absence without one is not an accident of the test setup.
    let mut gen = DataGen::new(seed("tty_bars"));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    let r = repo.display().to_string();
    init_repo(&repo, &[]);
    let img = t.path().join("img");
    make_image(&img, ImageSpec::mixed(48 << 20), &mut gen);
    let disk = format!("d={}", img.display());
    let (code, shown) = on_a_terminal(&["backup", &r, "--series", "s", &disk]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("ETA") && shown.contains("backup d"),
        "no progress bar on a terminal: {shown:?}"
    );
    for extra in [["--quiet"], ["--json"]] {
        let args = [extra[0], "backup", &r, "--series", "s", &disk];
        let (code, shown) = on_a_terminal(&args);
        assert_eq!(code, 0, "{shown}");
        assert!(
            !shown.contains("ETA") && !shown.contains('\u{1b}'),
            "{extra:?}: {shown:?}"
        );
        if extra[0] == "--json" {
            let v: Value =
                serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown:?}"));
            assert_eq!(v["ok"], true);
        }
    }
}
