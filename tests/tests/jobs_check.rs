//! `tessera job check FILE` (SPEC.md §26.1): a full-featured job file passes, with the
//! paths that do not exist yet named as warnings and no repository touched; every kind of
//! mistake is refused with exit 2 and a message naming the file, the line and column and the
//! key, in text and in `--json`.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: set up, run, check the record and the world"
)]

use std::fs;
use std::path::{Path, PathBuf};

use tessera_tests::sinks::toml_str;
use tessera_tests::{tessera, Out, Value};

/// `tessera job check FILE [--json]`.
fn check(file: &Path, json: bool) -> Out {
    let mut args = vec![
        "job".to_string(),
        "check".into(),
        file.display().to_string(),
    ];
    if json {
        args.push("--json".into());
    }
    tessera(args)
}

/// Writes `text` as `DIR/NAME`.
fn job_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// The 1-based (line, column) of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the job file"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// The 1-based line of the last occurrence of `needle` in `text`.
fn last_line(text: &str, needle: &str) -> usize {
    let at = text
        .rfind(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the job file"));
    text[..at].matches('\n').count() + 1
}

/// The line number that `msg` gives as `line N`.
fn reported_line(msg: &str) -> usize {
    let rest = msg
        .split_once("line ")
        .unwrap_or_else(|| panic!("no `line N` in {msg:?}"))
        .1;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after `line ` in {msg:?}"))
}

/// The column number that `msg` gives as `column N`.
fn reported_column(msg: &str) -> usize {
    let rest = msg
        .split_once("column ")
        .unwrap_or_else(|| panic!("no `column N` in {msg:?}"))
        .1;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after `column ` in {msg:?}"))
}

/// A minimal valid job (repository, one disk) that the cases below extend or break.
fn minimal(dir: &Path) -> String {
    format!(
        "[repository]\nlocation = {}\n\n[backup]\nseries = \"vm1\"\n\n[[backup.disk]]\nname = \"xvda\"\nsource = {}\n",
        toml_str(dir.join("repo")),
        toml_str(dir.join("vm1.raw")),
    )
}

/// A job file exercising every key of SPEC §26.1, with hooks, key and token files that do
/// not exist.
fn full_featured(dir: &Path) -> String {
    format!(
        r#"stale-after = "36h"

[repository]
location = {repo}
key-file = {key}

[backup]
series = "vm1"
mode = "differential"
key-interval = 20
format = "auto"
fallback-full = true
allow-backing-dirs = [{backing}]
tls-ca = {nbd_ca}
tags = {{ site = "paris", owner = "ops" }}

[[backup.disk]]
name = "xvda"
source = {xvda}
changes = {cbt}

[[backup.disk]]
name = "xvdb"
source = "nbd://127.0.0.1:10809/xvdb"

[retention]
keep-last = 7
keep-hourly = 24
keep-daily = 14
keep-weekly = 8
keep-monthly = 12
keep-yearly = 3
keep-within = "2d"

[verify]
sample = "5%"
sample-every = "1d"
full-every = "7d"
skip-verified-within = "30d"

[[sync]]
to = "https://backup.example:8443"
token-file = {token}
tls-ca = {sync_ca}
bwlimit = "50M"
io-timeout = "60s"

[[sync]]
to = {local_copy}

[hooks.before]
command = [{before}, "create", "vm1"]
timeout = "5min"

[hooks.after]
command = [{after}, "release", "vm1"]

[schedule]
cron = "30 2 * * *"
timezone = "Europe/Paris"
random-delay = "15min"

[[notify]]
webhook = "https://hooks.example/tessera"
on = ["failure", "damage", "warning", "stale"]

[[notify]]
email = ["ops@example.com", "oncall@example.com"]
smtp = "smtps://mail.example:465"
from = "tessera@host.example"
username = "tessera"
password-file = {smtp_pass}
on = ["success", "failure"]
"#,
        repo = toml_str(dir.join("no-repo-here")),
        key = toml_str(dir.join("missing-vm1.key")),
        backing = toml_str(dir),
        nbd_ca = toml_str(dir.join("missing-nbd-ca.pem")),
        xvda = toml_str(dir.join("vm1.raw")),
        cbt = toml_str(dir.join("vm1.cbt")),
        token = toml_str(dir.join("missing-offsite.token")),
        sync_ca = toml_str(dir.join("missing-offsite-ca.pem")),
        local_copy = toml_str(dir.join("copy")),
        before = toml_str(dir.join("missing-vm-snapshot")),
        after = toml_str(dir.join("missing-vm-release")),
        smtp_pass = toml_str(dir.join("missing-smtp.pass")),
    )
}

#[test]
fn a_full_featured_file_passes_with_missing_paths_as_warnings() {
    let t = tempfile::tempdir().unwrap();
    let text = full_featured(t.path());
    let file = job_file(t.path(), "vm1.toml", &text);

    let out = check(&file, false);
    out.ok();

    let out = check(&file, true);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    assert_eq!(v["name"], "vm1", "the job's name is the file's stem: {out}");
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings array: {out}"))
        .iter()
        .map(|w| w.as_str().expect("warnings are strings"))
        .collect();
    // SPEC §26.1: paths that do not exist (hooks, key and token files) are warnings.
    for missing in [
        "missing-vm1.key",
        "missing-offsite.token",
        "missing-vm-snapshot",
        "missing-vm-release",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(missing)),
            "no warning names the missing {missing}: {warnings:?}"
        );
    }
    // It touches no repository: the location that does not exist is not created.
    assert!(
        !t.path().join("no-repo-here").exists(),
        "job check created the repository's location"
    );
    assert!(
        !t.path().join("copy").exists(),
        "job check created a sync target"
    );

    // A minimal file passes too, without warnings about paths that exist.
    fs::write(t.path().join("vm1.raw"), [0u8; 4096]).unwrap();
    let out = check(&job_file(t.path(), "small.toml", &minimal(t.path())), true);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    assert_eq!(v["name"], "small", "{out}");
    assert!(v["warnings"].is_array(), "{out}");
}

/// One broken job file: how to break [`minimal`] or [`full_featured`], and what the message
/// must say.
struct Case {
    /// The case's name and the file's stem.
    name: &'static str,
    /// The file's text.
    text: String,
    /// The line the error must name: a line in `lines`.
    lines: std::ops::RangeInclusive<usize>,
    /// The column the error must name, when it is determined (the offending value or key).
    column: Option<usize>,
    /// Text the message must contain (the key, the bad value).
    needles: Vec<&'static str>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let base = minimal(dir);
    let mut cases = Vec::new();

    // An unknown key: a typo never silently means "default".
    let text = base.replace("series = \"vm1\"", "seires = \"vm1\"");
    let (l, c) = position(&text, "seires");
    cases.push(Case {
        name: "typo",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["seires", "[backup]"],
    });

    // A cron expression croner refuses (minute 61); the column is the value's (SPEC's
    // example: `line 12, column 8: [schedule].cron`).
    let text = format!("{base}\n[schedule]\ncron = \"61 2 * * *\"\n");
    let (l, c) = position(&text, "\"61 2");
    cases.push(Case {
        name: "bad_cron",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[schedule].cron"],
    });

    // An unknown time zone.
    let text = format!("{base}\n[schedule]\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Pariss\"\n");
    let (l, c) = position(&text, "\"Europe/Pariss\"");
    cases.push(Case {
        name: "bad_timezone",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[schedule].timezone", "Europe/Pariss"],
    });

    // A duration that is not one.
    let text =
        format!("{base}\n[hooks.before]\ncommand = [\"/bin/true\"]\ntimeout = \"five minutes\"\n");
    let (l, c) = position(&text, "\"five minutes\"");
    cases.push(Case {
        name: "bad_duration",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[hooks.before].timeout"],
    });

    // A bad duration at the top level.
    let text = format!("stale-after = \"36 hours\"\n{base}");
    cases.push(Case {
        name: "bad_stale_after",
        text,
        lines: 1..=1,
        column: Some(15),
        needles: vec!["stale-after"],
    });

    // A bare `m` is ambiguous (minutes or months): refused (SPEC §26.1).
    let text = format!("{base}\n[hooks.before]\ncommand = [\"/bin/true\"]\ntimeout = \"5m\"\n");
    let (l, c) = position(&text, "\"5m\"");
    cases.push(Case {
        name: "bare_m",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[hooks.before].timeout"],
    });

    // A share that is not one.
    let text = format!("{base}\n[verify]\nsample = \"5 percent\"\n");
    let (l, c) = position(&text, "\"5 percent\"");
    cases.push(Case {
        name: "bad_share",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[verify].sample"],
    });

    // A value of the wrong type.
    let text = format!("{base}\n[retention]\nkeep-last = \"seven\"\n");
    let (l, c) = position(&text, "\"seven\"");
    cases.push(Case {
        name: "wrong_type",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["keep-last"],
    });

    // [backup] without any disk: the error is on the [backup] table.
    let text = format!(
        "[repository]\nlocation = {}\n\n[backup]\nseries = \"vm1\"\n",
        toml_str(dir.join("repo"))
    );
    let l = position(&text, "[backup]").0;
    cases.push(Case {
        name: "no_disk",
        text,
        lines: l..=l + 1,
        column: None,
        needles: vec!["disk"],
    });

    // Two disks of one name: the error is on the second one.
    let text = format!(
        "{base}\n[[backup.disk]]\nname = \"xvda\"\nsource = {}\n",
        toml_str(dir.join("other.raw"))
    );
    let second = last_line(&text, "[[backup.disk]]");
    cases.push(Case {
        name: "duplicate_disk",
        text,
        lines: second..=second + 2,
        column: None,
        needles: vec!["[[backup.disk]]#2.name", "xvda"],
    });

    // A retention policy without any rule.
    let text = format!("{base}\n[retention]\n");
    let l = position(&text, "[retention]").0;
    cases.push(Case {
        name: "retention_without_rule",
        text,
        lines: l..=l,
        column: None,
        needles: vec!["[retention]"],
    });

    // A [[notify]] with neither a webhook nor an email.
    let text = format!("{base}\n[[notify]]\non = [\"failure\"]\n");
    let l = position(&text, "[[notify]]").0;
    cases.push(Case {
        name: "notify_without_target",
        text,
        lines: l..=l + 1,
        column: None,
        needles: vec!["[[notify]]#1"],
    });

    // An unknown event name.
    let text = format!(
        "{base}\n[[notify]]\nwebhook = \"https://hooks.example/t\"\non = [\"failure\", \"sucess\"]\n"
    );
    let l = position(&text, "on = [").0;
    cases.push(Case {
        name: "unknown_event",
        text,
        lines: l..=l,
        column: None,
        needles: vec!["[[notify]]#1", "on", "sucess"],
    });

    // A webhook URL of a scheme it cannot be.
    let text = format!("{base}\n[[notify]]\nwebhook = \"ftp://hooks.example/t\"\n");
    let (l, c) = position(&text, "\"ftp://");
    cases.push(Case {
        name: "bad_scheme",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[[notify]]#1.webhook"],
    });

    // TOML that does not parse (an unclosed string).
    let text = base.replace("series = \"vm1\"", "series = \"vm1");
    let l = position(&text, "series = ").0;
    cases.push(Case {
        name: "syntax",
        text,
        lines: l..=l,
        column: None,
        needles: vec![],
    });

    // A `tessera serve` URL as the repository: it is a sync target, not one to back up into
    // (SPEC §26.9).
    let text = base.replacen(
        &format!("location = {}", toml_str(dir.join("repo"))),
        "location = \"https://backup.example:8443\"",
        1,
    );
    let (l, c) = position(&text, "\"https://backup");
    cases.push(Case {
        name: "served_location",
        text,
        lines: l..=l,
        column: Some(c),
        needles: vec!["[repository].location"],
    });

    // No [repository].location.
    let text = base.replace("location = ", "# location = ");
    let l = position(&text, "[repository]").0;
    cases.push(Case {
        name: "no_location",
        text,
        lines: l..=l + 1,
        column: None,
        needles: vec!["location"],
    });

    cases
}

#[test]
fn each_mistake_is_refused_with_its_line_column_and_key() {
    let t = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in cases(t.path()) {
        let file_name = format!("{}.toml", case.name);
        let file = job_file(t.path(), &file_name, &case.text);
        let out = check(&file, false);
        let msg = out.stderr.clone();
        let mut problems = Vec::new();
        if out.code != 2 {
            problems.push(format!("exit {} instead of 2", out.code));
        }
        if !msg.contains(&file_name) {
            problems.push(format!("the message does not name {file_name}"));
        }
        if msg.contains("line ") {
            let line = reported_line(&msg);
            if !case.lines.contains(&line) {
                problems.push(format!("line {line}, expected {:?}", case.lines));
            }
        } else {
            problems.push("no `line N`".into());
        }
        if msg.contains("column ") {
            let col = reported_column(&msg);
            if let Some(c) = case.column {
                if col != c {
                    problems.push(format!("column {col}, expected {c}"));
                }
            }
        } else {
            problems.push("no `column N`".into());
        }
        for needle in &case.needles {
            if !msg.contains(needle) {
                problems.push(format!("the message lacks {needle:?}"));
            }
        }
        // --json: one document, ok false, kind usage, the same message.
        let out_json = check(&file, true);
        if out_json.code != 2 {
            problems.push(format!("--json: exit {} instead of 2", out_json.code));
        }
        match serde_json::from_str::<Value>(&out_json.stdout) {
            Ok(v) => {
                if v["ok"] != false || v["kind"] != "usage" {
                    problems.push(format!("--json: not ok false / kind usage: {v}"));
                }
                if !v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&file_name) && e.contains("line "))
                {
                    problems.push(format!("--json: error lacks the file and line: {v}"));
                }
            }
            Err(e) => problems.push(format!("--json: stdout is not JSON ({e})")),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case {}: {}\n--- file ---\n{}--- stderr ---\n{msg}",
                case.name,
                problems.join("; "),
                case.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn bad_job_file_names_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let text = minimal(t.path());
    // Job names follow series names (SPEC §26.1, §6): 1-128 of A-Z a-z 0-9 . _ -, not
    // starting with `.` or `-`.
    let long = format!("{}.toml", "j".repeat(129));
    for name in [
        "bad name.toml",
        ".hidden.toml",
        "-dash.toml",
        "caf\u{e9}.toml",
        long.as_str(),
    ] {
        let file = job_file(t.path(), name, &text);
        let out = check(&file, false);
        assert_eq!(out.code, 2, "{name:?} is not a job name: {out}");
        assert!(
            out.stderr.contains(name),
            "the message does not name the file {name:?}: {out}"
        );
        let out = check(&file, true);
        assert_eq!(out.code, 2, "{out}");
        let v = out.json();
        assert_eq!(v["ok"], false, "{out}");
        assert_eq!(v["kind"], "usage", "{out}");
    }
    // The longest name and every allowed character pass.
    let ok = format!(
        "{}.toml",
        "A-z_0.9".repeat(19).chars().take(128).collect::<String>()
    );
    let out = check(&job_file(t.path(), &ok, &text), true);
    out.ok();
    assert_eq!(out.json()["name"], ok.trim_end_matches(".toml"), "{out}");
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let out = check(&t.path().join("nope.toml"), true);
    assert_eq!(out.code, 2, "{out}");
    let v = out.json();
    assert_eq!(v["ok"], false, "{out}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("nope.toml")),
        "{out}"
    );
}

/// Plain http:// webhooks and smtp:// servers must be on loopback unless the target says
/// `insecure = true` (SPEC §26.5).
#[test]
fn plain_targets_off_loopback_need_insecure() {
    let t = tempfile::tempdir().unwrap();
    let base = minimal(t.path());
    for target in [
        "webhook = \"http://192.0.2.10/hook\"",
        "email = [\"ops@example.com\"]\nsmtp = \"smtp://192.0.2.10:25\"\nfrom = \"t@example.com\"",
    ] {
        let text = format!("{base}\n[[notify]]\n{target}\n");
        let file = job_file(t.path(), "plain.toml", &text);
        let out = check(&file, false);
        assert_eq!(out.code, 2, "a plain target off loopback: {out}");
        assert!(out.stderr.contains("[[notify]]#1"), "{out}");
        let line = reported_line(&out.stderr);
        let header = position(&text, "[[notify]]").0;
        assert!(
            (header..=text.lines().count()).contains(&line),
            "line {line} is not in the [[notify]] table: {out}"
        );
        let text = format!("{base}\n[[notify]]\n{target}\ninsecure = true\n");
        let out = check(&job_file(t.path(), "plain.toml", &text), false);
        out.ok();
    }
    // On loopback, no `insecure` is needed.
    let text = format!(
        "{base}\n[[notify]]\nwebhook = \"http://127.0.0.1:9/hook\"\n\n[[notify]]\nemail = [\"ops@example.com\"]\nsmtp = \"smtp://[::1]:25\"\nfrom = \"t@example.com\"\n"
    );
    check(&job_file(t.path(), "loop.toml", &text), false).ok();
}
