//! `tessera job run` (SPEC.md §26.2–§26.4): one run is backup → prune → verify → sync with
//! hooks around the backup, one report and one durable record.
//!
//! - a qcow2 image (made by qemu-img, changed by qemu-io) backed up three times: the snapshots
//!   restore to what `qemu-img convert` reads, retention keeps the two newest, history lists
//!   three successes newest first, and the printed document is the record on disk;
//! - hooks: order (the before hook makes the source the backup reads), environment, own
//!   process group, output in the record; a before hook that fails or times out fails the run
//!   with nothing backed up and no after hook, and its whole process group is killed; an after
//!   hook that fails fails the run but the snapshot stays and prune does not run;
//! - a failed backup: the run fails with the backup's own exit code and prune never runs;
//! - reference modes with changed-block lists: incremental applies on the newest snapshot,
//!   differential on the newest full one, a delta on the wrong base is read in full (warning),
//!   `--full` makes a key backup;
//! - verify: a full verify when due, a sample otherwise (bounded by `sample-every`), damage
//!   makes outcome `damage` (exit 4) and stops before sync;
//! - sync to two local repositories, of the job's series only;
//! - a second run of a running job is refused (exit 3, locked);
//! - `kill -9` of a run: history shows it interrupted, the next run rewrites it so;
//! - an encrypted repository opened with `passphrase-file`: the passphrase shows nowhere.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: set up, run, check the record and the world"
)]

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_tests::qemu::{convert_to_raw, qemu_img, qemu_io};
use tessera_tests::sinks::{
    files_containing, history, job_run, job_run_args, job_run_ok, kill_if_alive, pids_in,
    poll_until, process_gone, record_files, records, script, step, step_ran, toml_str,
    KillPidsOnDrop, WebhookSink,
};
use tessera_tests::{
    assert_same_file, exit_code, init_repo, list_json, make_image, mutate, restore, seed, tessera,
    tessera_cmd, write_change_list, DataGen, ImageSpec, KillOnDrop, Out, Value,
};

const MIB: u64 = 1 << 20;

/// A scratch directory with a plain repository `repo` and a state directory `state`.
struct Setup {
    t: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        let state = t.path().join("state");
        Self { t, repo, state }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// Writes `DIR/NAME.toml`: the repository, series `series`, one disk `d` of `source`,
    /// then `extra` (more tables).
    fn job(&self, name: &str, series: &str, source: &Path, extra: &str) -> PathBuf {
        tessera_tests::sinks::write_job(
            &self.path(&format!("{name}.toml")),
            &self.repo,
            series,
            source,
            extra,
        )
    }
}

/// Ids of the snapshots of `series` in `repo`, oldest first.
fn series_ids(repo: &Path, series: &str) -> Vec<String> {
    list_json(repo)
        .iter()
        .filter(|s| s["series"] == series)
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The snapshot a run's record names.
#[track_caller]
fn run_snapshot(doc: &Value) -> String {
    doc["backup"]["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup.snapshot in {doc:#}"))
        .to_string()
}

/// The record minus the keys `job run --json` adds to it.
fn without_doc_keys(doc: &Value) -> Value {
    let mut v = doc.clone();
    let map = v.as_object_mut().expect("an object");
    map.remove("ok");
    map.remove("error");
    map.remove("kind");
    v
}

/// Checks the fields every finished record has (SPEC §26.3, the run record's contract).
#[track_caller]
fn assert_finished_record(r: &Value, job: &str, series: &str, repo: &Path) {
    assert_eq!(r["job"], job, "{r:#}");
    assert_eq!(r["series"], series, "{r:#}");
    assert_eq!(r["repository"], repo.display().to_string(), "{r:#}");
    assert!(r["id"].as_str().is_some_and(|s| !s.is_empty()), "{r:#}");
    assert_eq!(r["trigger"], "manual", "{r:#}");
    assert!(r["slot"].is_null(), "a manual run has no slot: {r:#}");
    let start = tessera_tests::sinks::started_us(r);
    let end = tessera_tests::sinks::finished_us(r);
    assert!(end >= start, "{r:#}");
    assert!(r["warnings"].is_array(), "{r:#}");
    assert!(r["steps"].is_array(), "{r:#}");
    assert!(r["hooks"].is_array(), "{r:#}");
    assert!(r["notifications"].is_array(), "{r:#}");
    assert!(r["sync"].is_array(), "{r:#}");
    if r["outcome"] == "success" {
        assert!(r["step"].is_null(), "{r:#}");
        assert!(r["failure"].is_null(), "{r:#}");
        for s in r["steps"].as_array().unwrap() {
            assert!(
                s["outcome"] == "ok" || s["outcome"] == "skipped",
                "a successful run with a step {s}: {r:#}"
            );
        }
    }
}

#[test]
fn a_qcow2_job_three_times_with_retention_and_history() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_qcow2"));
    let seed_raw = s.path("seed.raw");
    make_image(&seed_raw, ImageSpec::mixed(8 * MIB), &mut gen);
    let img = s.path("vm1.qcow2");
    let (seed_s, img_s) = (seed_raw.to_str().unwrap(), img.to_str().unwrap());
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", seed_s, img_s]);
    let file = s.job("vm1", "vm1", &img, "\n[retention]\nkeep-last = 2\n");

    let mut docs = Vec::new();
    let mut raws = Vec::new();
    for (i, writes) in [
        &[][..],
        &["write -P 0x5a 1M 256k", "write -P 0x17 7M 64k"][..],
        &[
            "write -P 0xa5 5M 64k",
            "write -z 2M 128k",
            "write -P 0x33 100k 3k",
        ][..],
    ]
    .iter()
    .enumerate()
    {
        for w in *writes {
            qemu_io("qcow2", &img, w);
        }
        let raw = s.path(&format!("gen{i}.raw"));
        convert_to_raw(&img, "qcow2", &raw);
        raws.push(raw);
        let doc = job_run_ok(&file, &s.state, &[]);
        assert_finished_record(&doc, "vm1", "vm1", &s.repo);
        assert!(step_ran(&doc, "backup"), "{doc:#}");
        assert!(step_ran(&doc, "prune"), "{doc:#}");
        assert_eq!(doc["backup"]["series"], "vm1", "{doc:#}");
        assert_eq!(doc["backup"]["disks"][0]["name"], "d", "{doc:#}");
        docs.push(doc);
    }
    let snaps: Vec<String> = docs.iter().map(run_snapshot).collect();

    // Retention keep-last = 2 after each run: the two newest remain.
    assert_eq!(series_ids(&s.repo, "vm1"), snaps[1..].to_vec());
    // Every snapshot a job makes carries the tag job=NAME (SPEC §26.1).
    for snap in list_json(&s.repo) {
        assert_eq!(snap["tags"]["job"], "vm1", "{snap:#}");
    }
    let prune = &docs[2]["prune"];
    assert_eq!(prune["kept"], 2, "{prune}");
    assert_eq!(prune["forgotten"], 1, "{prune}");
    assert_eq!(
        prune["forgotten_ids"],
        serde_json::json!([snaps[0]]),
        "{prune}"
    );
    assert_eq!(docs[0]["prune"]["forgotten"], 0, "{:#}", docs[0]);

    // The snapshots restore to what qemu reads from the image at each point.
    for (i, id) in snaps.iter().enumerate().skip(1) {
        let out = s.path(&format!("restored{i}"));
        restore(&s.repo, id, &out, false).ok();
        assert_same_file(&raws[i], &out);
    }

    // History by name: three successes, newest first, equal to the records on disk.
    let runs = history("vm1", &s.state);
    let ids: Vec<&Value> = docs.iter().rev().map(|d| &d["id"]).collect();
    assert_eq!(
        runs.iter().map(|r| &r["id"]).collect::<Vec<_>>(),
        ids,
        "history is not the three runs newest first: {runs:#?}"
    );
    assert!(runs.iter().all(|r| r["outcome"] == "success"), "{runs:#?}");
    let files = record_files(&s.state, "vm1");
    assert_eq!(files.len(), 3, "{files:#?}");
    for (path, rec) in &files {
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            rec["id"].as_str().unwrap(),
            "a record file is named by its id"
        );
    }
    assert_eq!(
        files[2].1,
        without_doc_keys(&docs[2]),
        "the printed document is not the record on disk"
    );
    // Record ids sort by start.
    let mut sorted: Vec<String> = docs
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    sorted.sort();
    assert_eq!(
        sorted,
        docs.iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );

    // History by file, state directory from TESSERA_STATE_DIR, with --limit.
    let out = tessera_tests::sinks::tessera_env(
        &[
            OsStr::new("job"),
            "history".as_ref(),
            file.as_os_str(),
            "--limit".as_ref(),
            "2".as_ref(),
            "--json".as_ref(),
        ],
        &[("TESSERA_STATE_DIR", s.state.as_os_str())],
    );
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    assert_eq!(v["job"], "vm1", "{out}");
    assert_eq!(
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["id"])
            .collect::<Vec<_>>(),
        ids[..2].to_vec(),
        "{out}"
    );

    // The repository figures are the `stats` object of `tessera stats --json` at the end
    // of the run (SPEC §26.3 step 6).
    let stats = tessera(["--json", "stats", s.repo.to_str().unwrap()]);
    stats.ok();
    let stats = stats.json();
    let rs = &docs[2]["repository_stats"];
    assert_eq!(
        rs, &stats["stats"],
        "repository_stats of the last run vs `tessera stats --json`: {rs:#}"
    );
    assert_eq!(rs["snapshots"], 2, "{rs:#}");
}

/// A before hook that makes the source the backup reads, and an after hook that removes it:
/// the order, the environment, the process group and the output in the record.
#[test]
fn hooks_run_around_the_backup_with_their_environment() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_hooks"));
    let prepared = s.path("prepared.raw");
    make_image(&prepared, ImageSpec::mixed(MIB), &mut gen);
    let source = s.path("source.raw");
    let marker = s.path("before.marker");
    let after_out = s.path("after.out");
    let before = script(
        s.t.path(),
        "before.sh",
        &format!(
            "echo before-output-line\n\
             cp {prep} {src}\n\
             pgid=$(cut -d' ' -f5 /proc/$$/stat)\n\
             printf '%s\\n' \"$TESSERA_PHASE\" \"$TESSERA_JOB\" \"$TESSERA_SERIES\" \"$TESSERA_REPOSITORY\" \"$$\" \"$pgid\" \"${{TESSERA_OUTCOME-unset}}\" > {marker}",
            prep = prepared.display(),
            src = source.display(),
            marker = marker.display()
        ),
    );
    let after = script(
        s.t.path(),
        "after.sh",
        &format!(
            "echo after-output-line\n\
             rm -f {src}\n\
             printf '%s|%s|%s\\n' \"$TESSERA_PHASE\" \"$TESSERA_OUTCOME\" \"$TESSERA_SNAPSHOT\" >> {out}",
            src = source.display(),
            out = after_out.display()
        ),
    );
    let file = s.job(
        "hooks",
        "hs",
        &source,
        &format!(
            "\n[hooks.before]\ncommand = [{}]\ntimeout = \"30s\"\n\n[hooks.after]\ncommand = [{}]\n",
            toml_str(&before),
            toml_str(&after)
        ),
    );
    assert!(!source.exists());
    let doc = job_run_ok(&file, &s.state, &[]);
    let snap = run_snapshot(&doc);

    let lines: Vec<String> = fs::read_to_string(&marker)
        .expect("the before hook ran")
        .lines()
        .map(ToString::to_string)
        .collect();
    assert_eq!(lines[0], "before", "TESSERA_PHASE: {lines:?}");
    assert_eq!(lines[1], "hooks", "TESSERA_JOB: {lines:?}");
    assert_eq!(lines[2], "hs", "TESSERA_SERIES: {lines:?}");
    assert_eq!(
        lines[3],
        s.repo.display().to_string(),
        "TESSERA_REPOSITORY: {lines:?}"
    );
    assert_eq!(
        lines[4], lines[5],
        "the hook leads its own process group: {lines:?}"
    );
    assert_eq!(
        lines[6], "unset",
        "TESSERA_OUTCOME in the before hook: {lines:?}"
    );
    assert_eq!(
        fs::read_to_string(&after_out).unwrap(),
        format!("after|success|{snap}\n")
    );
    assert!(!source.exists(), "the after hook ran after the backup");

    // The backup read what the before hook put in place.
    let out = s.path("restored");
    restore(&s.repo, &snap, &out, false).ok();
    assert_same_file(&prepared, &out);

    let hooks = doc["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 2, "{doc:#}");
    assert_eq!(hooks[0]["phase"], "before", "{doc:#}");
    assert_eq!(hooks[0]["exit_code"], 0, "{doc:#}");
    assert_eq!(hooks[0]["timed_out"], false, "{doc:#}");
    assert!(
        hooks[0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("before-output-line")),
        "{doc:#}"
    );
    assert_eq!(hooks[1]["phase"], "after", "{doc:#}");
    assert!(
        hooks[1]["output"]
            .as_str()
            .is_some_and(|o| o.contains("after-output-line")),
        "{doc:#}"
    );
    for (name, outcome) in [
        ("hook-before", "ok"),
        ("backup", "ok"),
        ("hook-after", "ok"),
    ] {
        assert_eq!(
            step(&doc, name).map(|x| &x["outcome"]),
            Some(&Value::from(outcome)),
            "step {name}: {doc:#}"
        );
    }
    let order: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["step"].as_str().unwrap())
        .collect();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(
        pos("hook-before") < pos("backup") && pos("backup") < pos("hook-after"),
        "{order:?}"
    );
}

/// A before hook that exits non-zero, then one that outlives its timeout: the run fails at
/// `hook-before`, nothing is backed up, the after hook does not run, and at the timeout the
/// hook's whole process group (a grandchild included) is killed.
#[test]
fn a_failing_or_hanging_before_hook_fails_the_run_and_is_killed() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_hook_timeout"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let after_marker = s.path("after.marker");
    let after = script(
        s.t.path(),
        "after.sh",
        &format!("touch {}", after_marker.display()),
    );
    let failing = script(s.t.path(), "fail.sh", "echo about to fail\nexit 3");
    let pidfile = s.path("grandchild.pid");
    let _cleanup = KillPidsOnDrop(pidfile.clone());
    let hanging = script(
        s.t.path(),
        "hang.sh",
        &format!("sleep 30 &\necho $! > {}\nwait", pidfile.display()),
    );
    let job_with = |before: &Path| {
        s.job(
            "hook",
            "hook",
            &image,
            &format!(
                "\n[hooks.before]\ncommand = [{}]\ntimeout = \"1s\"\n\n[hooks.after]\ncommand = [{}]\n",
                toml_str(before),
                toml_str(&after)
            ),
        )
    };

    let file = job_with(&failing);
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.expect_code(1);
    assert_eq!(doc["ok"], false, "{out}");
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(doc["step"], "hook-before", "{out}");
    assert_eq!(doc["failure"]["step"], "hook-before", "{out}");
    assert_eq!(doc["hooks"][0]["exit_code"], 3, "{out}");
    assert!(
        doc["hooks"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("about to fail")),
        "{out}"
    );
    assert!(doc["backup"].is_null(), "{out}");
    assert!(!step_ran(&doc, "backup"), "{out}");
    assert!(list_json(&s.repo).is_empty(), "something was backed up");
    assert!(
        !after_marker.exists(),
        "the after hook ran after a failed before hook"
    );

    let file = job_with(&hanging);
    let started = Instant::now();
    let (out, doc) = job_run(&file, &s.state, &[]);
    let took = started.elapsed();
    out.expect_code(1);
    assert!(
        took < Duration::from_secs(15),
        "a 1 s hook timeout took {took:?}"
    );
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(doc["kind"], "failed", "{out}");
    assert_eq!(doc["failure"]["step"], "hook-before", "{out}");
    assert_eq!(doc["hooks"][0]["timed_out"], true, "{out}");
    assert!(doc["hooks"][0]["exit_code"].is_null(), "{out}");
    assert!(list_json(&s.repo).is_empty(), "something was backed up");
    assert!(
        !after_marker.exists(),
        "the after hook ran after a failed before hook"
    );
    let grandchild = *pids_in(&pidfile)
        .first()
        .expect("the hook wrote its grandchild's pid");
    assert!(
        poll_until(Duration::from_secs(5), || process_gone(grandchild)),
        "the hook's grandchild {grandchild} (sleep 30) survived the timeout: the process \
         group was not killed"
    );
    assert_eq!(history("hook", &s.state).len(), 2);
}

/// An after hook that fails makes the run a failure, but the snapshot stays, and prune
/// (which comes later) does not run.
#[test]
fn a_failing_after_hook_fails_the_run_but_the_backup_stays() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_after_fails"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let file = s.job("after", "after", &image, "\n[retention]\nkeep-last = 1\n");
    let first = run_snapshot(&job_run_ok(&file, &s.state, &[]));
    mutate(&image, &mut gen, 3, 100_000, (0, 1, 1));
    let failing = script(s.t.path(), "after.sh", "echo cleanup failed >&2\nexit 1");
    let file = s.job(
        "after",
        "after",
        &image,
        &format!(
            "\n[retention]\nkeep-last = 1\n\n[hooks.after]\ncommand = [{}]\n",
            toml_str(&failing)
        ),
    );
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.expect_code(1);
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(doc["failure"]["step"], "hook-after", "{out}");
    assert_eq!(doc["hooks"][0]["phase"], "after", "{out}");
    assert_eq!(doc["hooks"][0]["exit_code"], 1, "{out}");
    let second = run_snapshot(&doc);
    assert_eq!(
        series_ids(&s.repo, "after"),
        vec![first, second],
        "the backup must stay and prune (keep-last = 1) must not run"
    );
    assert!(doc["prune"].is_null(), "{out}");
    assert!(!step_ran(&doc, "prune"), "{out}");
}

/// A backup that fails (its source is gone): the run fails with the backup's own error and
/// exit code, the after hook sees `failure`, and prune does not run.
#[test]
fn a_failed_backup_fails_the_run_and_prune_does_not_run() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_backup_fails"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let file = s.job("fails", "fails", &image, "\n[retention]\nkeep-last = 3\n");
    let a = run_snapshot(&job_run_ok(&file, &s.state, &[]));
    mutate(&image, &mut gen, 3, 100_000, (0, 1, 1));
    let b = run_snapshot(&job_run_ok(&file, &s.state, &[]));

    let missing = s.path("gone.raw");
    // What `tessera backup` itself says of that source.
    let direct = tessera([
        "--json",
        "backup",
        s.repo.to_str().unwrap(),
        "--series",
        "probe",
        &format!("d={}", missing.display()),
    ]);
    assert_ne!(direct.code, 0, "{direct}");
    let direct_kind = direct.json()["kind"].clone();

    let after_out = s.path("after.out");
    let after = script(
        s.t.path(),
        "after.sh",
        &format!(
            "printf '%s|%s\\n' \"$TESSERA_OUTCOME\" \"$TESSERA_SNAPSHOT\" > {}",
            after_out.display()
        ),
    );
    let file = s.job(
        "fails",
        "fails",
        &missing,
        &format!(
            "\n[retention]\nkeep-last = 1\n\n[hooks.after]\ncommand = [{}]\n",
            toml_str(&after)
        ),
    );
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.expect_code(direct.code);
    assert_eq!(doc["ok"], false, "{out}");
    assert_eq!(doc["kind"], direct_kind, "{out}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("gone.raw")),
        "{out}"
    );
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(doc["step"], "backup", "{out}");
    assert_eq!(doc["failure"]["step"], "backup", "{out}");
    assert_eq!(doc["failure"]["kind"], direct_kind, "{out}");
    assert!(doc["backup"].is_null(), "{out}");
    assert!(
        doc["prune"].is_null(),
        "prune ran after a failed backup: {out}"
    );
    assert!(!step_ran(&doc, "prune"), "{out}");
    assert_eq!(
        series_ids(&s.repo, "fails"),
        vec![a, b],
        "prune must never run after a failed backup"
    );
    assert_eq!(
        fs::read_to_string(&after_out).expect("the after hook runs after a failed backup"),
        "failure|\n"
    );
    let runs = history("fails", &s.state);
    assert_eq!(
        runs.iter()
            .map(|r| r["outcome"].clone())
            .collect::<Vec<_>>(),
        ["failure", "success", "success"]
    );
}

/// Reference modes with a changed-block list (SPEC §26.2): incremental applies on the newest
/// snapshot, differential on the newest full one, a list on another base is read in full
/// with a warning, and `--full` makes a key backup.
#[test]
fn incremental_differential_and_full_runs_pick_their_reference() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_modes"));
    let image = s.path("disk.raw");
    let size = 2 * MIB;
    make_image(&image, ImageSpec::mixed(size), &mut gen);
    let list = s.path("disk.cbt");
    let write = |gen: &mut DataGen, off: u64, len: u64| {
        let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &gen.bytes(tessera_tests::Fill::Random, len as usize),
            off,
        )
        .unwrap();
        (off, len)
    };
    // The job file with `mode = MODE` in [backup].
    let job_mode = |mode: &str| {
        let file = s.job(
            "modes",
            "modes",
            &image,
            &format!("changes = {}\n", toml_str(&list)),
        );
        let text = fs::read_to_string(&file).unwrap().replace(
            "series = \"modes\"\n",
            &format!("series = \"modes\"\nmode = \"{mode}\"\n"),
        );
        fs::write(&file, text).unwrap();
        file
    };
    let disk0 = |doc: &Value| doc["backup"]["disks"][0].clone();
    let copy = |i: usize| {
        let p = s.path(&format!("gen{i}"));
        fs::copy(&image, &p).unwrap();
        p
    };

    // 1: an allocation map (`base-state *`): a full backup recording state cbt:1.
    write_change_list(&list, size, "*", "cbt:1", &[(0, size)]);
    let file = job_mode("incremental");
    let r1 = job_run_ok(&file, &s.state, &[]);
    let s1 = run_snapshot(&r1);
    assert_eq!(disk0(&r1)["mode"], "full", "{r1:#}");
    let g1 = copy(1);

    // 2: incremental, changes since cbt:1 = the newest snapshot's state: a delta on it.
    let e2 = [write(&mut gen, 100_000, 70_000), write(&mut gen, MIB, 4096)];
    write_change_list(&list, size, "cbt:1", "cbt:2", &e2);
    let r2 = job_run_ok(&file, &s.state, &[]);
    let s2 = run_snapshot(&r2);
    assert_eq!(disk0(&r2)["mode"], "delta", "{r2:#}");
    assert_eq!(disk0(&r2)["reference"], s1.as_str(), "{r2:#}");
    let g2 = copy(2);

    // 3: differential, changes since cbt:1 (the last full), though cbt:2 is newer.
    let e3 = write(&mut gen, 1_500_000, 100_000);
    write_change_list(&list, size, "cbt:1", "cbt:3", &[e2[0], e2[1], e3]);
    let file = job_mode("differential");
    let r3 = job_run_ok(&file, &s.state, &[]);
    let s3 = run_snapshot(&r3);
    assert_eq!(disk0(&r3)["mode"], "delta", "{r3:#}");
    assert_eq!(
        disk0(&r3)["reference"],
        s1.as_str(),
        "a differential applies on the last full snapshot: {r3:#}"
    );
    let g3 = copy(3);

    // 4: `--incremental` overrides the file; the list (relative to cbt:1) does not apply on
    // the newest snapshot (cbt:3): read in full, the run warns.
    let e4 = write(&mut gen, 10, 10);
    write_change_list(&list, size, "cbt:1", "cbt:4", &[e2[0], e2[1], e3, e4]);
    let (out, r4) = job_run(&file, &s.state, &["--incremental"]);
    out.ok();
    assert_eq!(r4["ok"], true, "{out}");
    assert_eq!(r4["outcome"], "warning", "{out}");
    assert!(
        r4["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{out}"
    );
    assert_ne!(disk0(&r4)["mode"], "delta", "{out}");
    let s4 = run_snapshot(&r4);
    let g4 = copy(4);

    // 5: `--full` with a list that would apply: a key backup, no drift.
    write_change_list(&list, size, "cbt:4", "cbt:5", &[]);
    let r5 = job_run_ok(&file, &s.state, &["--full"]);
    let s5 = run_snapshot(&r5);
    assert_eq!(disk0(&r5)["mode"], "key", "{r5:#}");
    assert_eq!(disk0(&r5)["drift_blocks"], 0, "{r5:#}");

    for (id, g) in [(&s1, &g1), (&s2, &g2), (&s3, &g3), (&s4, &g4), (&s5, &g4)] {
        let out = s.path(&format!("restored-{id}"));
        restore(&s.repo, id, &out, false).ok();
        assert_same_file(g, &out);
    }
    assert_eq!(history("modes", &s.state).len(), 5);
}

/// A verify step waits while another verify holds the repository's verify ledger (the
/// daemon runs jobs of other series of one repository side by side, SPEC.md §26.6), instead
/// of failing the run.
#[test]
fn a_verify_step_waits_for_another_verify_of_the_repository() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_verify_wait"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(2 * MIB), &mut gen);
    let file = s.job(
        "waits",
        "waits",
        &image,
        "\n[verify]\nfull-every = \"7d\"\n",
    );
    // Another verify holds the ledger for 3 s from before the run starts.
    let held = tessera_tests::hold_lock(&s.repo.join("ledger.lock"));
    let started = Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let r = job_run_ok(&file, &s.state, &[]);
    release.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the run ended before the other verify let go of the ledger: {r:#}"
    );
    assert_eq!(r["verify"]["kind"], "full", "{r:#}");
    assert_eq!(r["verify"]["problems"], 0, "{r:#}");
}

/// `[verify]`: a full verify when the last is older than `full-every` (never: the first
/// run), nothing more without `sample`, then a sample (every run by default), then none
/// within `sample-every` of the last sample.
#[test]
fn verify_is_full_when_due_and_sampled_otherwise() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_verify"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(2 * MIB), &mut gen);
    let file = s.job("ver", "ver", &image, "\n[verify]\nfull-every = \"7d\"\n");
    let r1 = job_run_ok(&file, &s.state, &[]);
    assert_eq!(r1["verify"]["kind"], "full", "{r1:#}");
    assert_eq!(r1["verify"]["problems"], 0, "{r1:#}");
    assert!(r1["verify"]["objects_read"].as_u64().unwrap() > 0, "{r1:#}");
    assert_eq!(
        step(&r1, "verify").map(|x| &x["outcome"]),
        Some(&"ok".into())
    );

    mutate(&image, &mut gen, 2, 100_000, (0, 1, 1));
    let r2 = job_run_ok(&file, &s.state, &[]);
    assert!(
        r2["verify"].is_null(),
        "the full verify is not due and no sample is configured: {r2:#}"
    );

    let file = s.job(
        "ver",
        "ver",
        &image,
        "\n[verify]\nfull-every = \"7d\"\nsample = \"5%\"\n",
    );
    let r3 = job_run_ok(&file, &s.state, &[]);
    assert_eq!(
        r3["verify"]["kind"], "sample",
        "a sample without sample-every runs every time: {r3:#}"
    );
    assert!(r3["verify"]["objects_read"].as_u64().unwrap() > 0, "{r3:#}");

    let file = s.job(
        "ver",
        "ver",
        &image,
        "\n[verify]\nfull-every = \"7d\"\nsample = \"5%\"\nsample-every = \"1d\"\n",
    );
    let r4 = job_run_ok(&file, &s.state, &[]);
    assert!(
        r4["verify"].is_null(),
        "a sample within sample-every = 1d of the last: {r4:#}"
    );
}

/// A verify that finds damage: outcome `damage`, exit 4, and sync does not run.
#[test]
fn damage_found_by_verify_stops_the_run_before_sync() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_damage"));
    let image = s.path("disk.raw");
    make_image(
        &image,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(2 * MIB)
        },
        &mut gen,
    );
    // A snapshot of the image in the job's series, then a flipped byte in its pack: the
    // job's backup of the same image stores nothing new and references the damaged chunk.
    let before = tessera_tests::pack_files(&s.repo);
    tessera_tests::backup_json(&s.repo, "dmg", &[("d", &image)]);
    let pack = tessera_tests::pack_files(&s.repo)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("a new pack");
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    let target = s.path("offsite");
    init_repo(&target, &[]);
    let file = s.job(
        "dmg",
        "dmg",
        &image,
        &format!(
            "\n[verify]\nfull-every = \"7d\"\n\n[[sync]]\nto = {}\n",
            toml_str(&target)
        ),
    );
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.expect_code(4);
    assert_eq!(doc["ok"], false, "{out}");
    assert_eq!(doc["kind"], "damage", "{out}");
    assert_eq!(doc["outcome"], "damage", "{out}");
    assert_eq!(doc["verify"]["kind"], "full", "{out}");
    assert!(doc["verify"]["problems"].as_u64().unwrap() > 0, "{out}");
    assert!(
        doc["verify"]["damaged_objects"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(
        step(&doc, "verify").map(|x| &x["outcome"]),
        Some(&"damage".into()),
        "{out}"
    );
    assert!(!step_ran(&doc, "sync"), "sync ran after damage: {out}");
    assert!(doc["sync"].as_array().is_some_and(Vec::is_empty), "{out}");
    assert!(list_json(&target).is_empty(), "damaged data was synced");
    assert_eq!(history("dmg", &s.state)[0]["outcome"], "damage");
}

/// A count that is a number or an array (of ids).
#[track_caller]
fn count(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_array().map(|a| a.len() as u64))
        .unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Two `[[sync]]` targets receive the job's series, and only it, after each run.
#[test]
fn sync_copies_the_series_to_each_target() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_sync"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(2 * MIB), &mut gen);
    let other = s.path("other.raw");
    make_image(&other, ImageSpec::mixed(MIB), &mut gen);
    tessera_tests::backup_json(&s.repo, "not-mine", &[("d", &other)]);
    let (t1, t2) = (s.path("copy1"), s.path("copy2"));
    init_repo(&t1, &[]);
    init_repo(&t2, &[]);
    let file = s.job(
        "syn",
        "syn",
        &image,
        &format!(
            "\n[[sync]]\nto = {}\n\n[[sync]]\nto = {}\n",
            toml_str(&t1),
            toml_str(&t2)
        ),
    );
    let r1 = job_run_ok(&file, &s.state, &[]);
    mutate(&image, &mut gen, 3, 100_000, (0, 1, 1));
    let r2 = job_run_ok(&file, &s.state, &[]);
    let snaps = vec![run_snapshot(&r1), run_snapshot(&r2)];
    for t in [&t1, &t2] {
        assert_eq!(series_ids(t, "syn"), snaps, "target {}", t.display());
        assert!(
            series_ids(t, "not-mine").is_empty(),
            "another series was synced to {}",
            t.display()
        );
        let out = s.path("restored");
        let _ = fs::remove_file(&out);
        restore(t, &snaps[1], &out, false).ok();
        assert_same_file(&image, &out);
    }
    let sync = r2["sync"].as_array().expect("sync");
    assert_eq!(sync.len(), 2, "{r2:#}");
    for (entry, t) in sync.iter().zip([&t1, &t2]) {
        assert_eq!(entry["to"], t.display().to_string(), "{r2:#}");
        assert_eq!(count(&entry["snapshots_copied"]), 1, "{r2:#}");
    }
    assert_eq!(count(&r1["sync"][0]["snapshots_copied"]), 1, "{r1:#}");
    assert_eq!(count(&r1["sync"][1]["snapshots_copied"]), 1, "{r1:#}");
}

/// A second `job run` while the first holds the job's lock fails at once with exit 3; the
/// running record says `running` with its step.
#[test]
fn a_second_run_of_a_running_job_is_locked_out() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_locked"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let sleeper = script(s.t.path(), "sleep.sh", "sleep 3");
    let file = s.job(
        "busy",
        "busy",
        &image,
        &format!("\n[hooks.before]\ncommand = [{}]\n", toml_str(&sleeper)),
    );
    let args = job_run_args(&file, &s.state, &[]);
    let mut first = KillOnDrop(Some(tessera_cmd(&args).spawn().unwrap()));
    assert!(
        poll_until(Duration::from_secs(20), || records(&s.state, "busy")
            .first()
            .is_some_and(|r| r["outcome"] == "running")),
        "no running record appeared"
    );
    let running = records(&s.state, "busy").remove(0);
    assert_eq!(running["step"], "hook-before", "{running:#}");
    assert!(running["finished"].is_null(), "{running:#}");

    let started = Instant::now();
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.expect_code(3);
    assert_eq!(doc["ok"], false, "{out}");
    assert_eq!(doc["kind"], "locked", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the locked run waited instead of failing at once"
    );

    let child = first.0.take().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = history("busy", &s.state);
    assert!(runs.iter().any(|r| r["outcome"] == "success"), "{runs:#?}");
    assert_eq!(list_json(&s.repo).len(), 1);
}

/// `kill -9` of a run during its before hook: `job history` shows the run interrupted at
/// once, the record file keeps `running` until the next run takes the lock and rewrites it.
#[test]
fn a_killed_run_is_recorded_as_interrupted() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_killed"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let pidfile = s.path("hook.pid");
    let _cleanup = KillPidsOnDrop(pidfile.clone());
    let hook = script(
        s.t.path(),
        "hook.sh",
        &format!("echo $$ >> {}\nexec sleep 20", pidfile.display()),
    );
    let file = s.job(
        "kil",
        "kil",
        &image,
        &format!("\n[hooks.before]\ncommand = [{}]\n", toml_str(&hook)),
    );
    tessera_tests::sinks::kill_run_during_before_hook(&file, &s.state, &pidfile);

    // The hook (in its own process group) may still run; the lock is free all the same.
    let runs = history("kil", &s.state);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["outcome"], "interrupted", "{runs:#?}");
    let files = record_files(&s.state, "kil");
    assert_eq!(
        files[0].1["outcome"], "running",
        "the record file is rewritten only by the next lock holder"
    );
    assert_eq!(files[0].1["step"], "hook-before");

    let file = s.job("kil", "kil", &image, "");
    let doc = job_run_ok(&file, &s.state, &[]);
    let files = record_files(&s.state, "kil");
    assert_eq!(files.len(), 2);
    let old = files
        .iter()
        .find(|(_, r)| r["id"] != doc["id"])
        .expect("the killed run's record");
    assert_eq!(old.1["outcome"], "interrupted", "{:#}", old.1);
    let runs = history("kil", &s.state);
    assert_eq!(
        runs.iter()
            .map(|r| r["outcome"].clone())
            .collect::<Vec<_>>(),
        ["success", "interrupted"]
    );
    for pid in pids_in(&pidfile) {
        kill_if_alive(pid);
    }
}

/// An encrypted repository opened with the job's `passphrase-file`: the run succeeds and the
/// passphrase is nowhere in its output, the state directory or a webhook's body; without
/// a secret the run fails with the key error (exit 6).
#[test]
fn an_encrypted_repository_with_a_passphrase_file_leaks_no_secret() {
    const PASS: &str = "job-secret Pz7-qq horse 9931";
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let pass_file = t.path().join("pass");
    fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let mut init = tessera_cmd([
        OsStr::new("init"),
        repo.as_os_str(),
        "--passphrase-file".as_ref(),
        pass_file.as_os_str(),
        "--recovery-key-file".as_ref(),
        t.path().join("recovery").as_os_str(),
        "--kdf-memory-mib".as_ref(),
        "19".as_ref(),
        "--kdf-iterations".as_ref(),
        "2".as_ref(),
    ]);
    init.env_remove("TESSERA_PASSPHRASE");
    let st = init.output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let mut gen = DataGen::new(seed("jobs_run_encrypted"));
    let image = t.path().join("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let sink = WebhookSink::start(&t.path().join("sink"));
    let state = t.path().join("state");
    let job = |secret: &str| {
        let file = t.path().join("enc.toml");
        fs::write(
            &file,
            format!(
                "[repository]\nlocation = {}\n{secret}\n[backup]\nseries = \"enc\"\n\n[[backup.disk]]\nname = \"d\"\nsource = {}\n\n[[notify]]\nwebhook = {}\non = [\"success\", \"failure\"]\n",
                toml_str(&repo),
                toml_str(&image),
                toml_str(sink.url())
            ),
        )
        .unwrap();
        file
    };
    let run = |file: &Path| {
        let args = job_run_args(file, &state, &[]);
        let mut cmd = tessera_cmd(&args);
        cmd.env_remove("TESSERA_PASSPHRASE");
        let o = cmd.output().unwrap();
        Out {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            code: exit_code(o.status),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };

    let file = job(&format!("passphrase-file = {}\n", toml_str(&pass_file)));
    let out = run(&file);
    out.ok();
    let doc = out.json();
    assert_eq!(doc["outcome"], "success", "{out}");
    let snap = run_snapshot(&doc);

    // No secret: the key error, exit 6.
    let out_nokey = run(&job(""));
    out_nokey.expect_code(6);
    let v = out_nokey.json();
    assert_eq!(v["kind"], "key", "{out_nokey}");
    assert_eq!(v["failure"]["kind"], "key", "{out_nokey}");

    // A wrong passphrase: exit 6 too.
    let wrong = t.path().join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    run(&job(&format!("passphrase-file = {}\n", toml_str(&wrong)))).expect_code(6);

    assert!(
        poll_until(Duration::from_secs(20), || sink.requests().len() >= 3),
        "the webhook did not get the three runs' notifications: {}",
        sink.log()
    );
    for o in [&out, &out_nokey] {
        assert!(
            !o.stdout.contains(PASS) && !o.stderr.contains(PASS),
            "the passphrase shows in the output: {o}"
        );
    }
    let leaked = files_containing(&state, PASS.as_bytes());
    assert!(leaked.is_empty(), "the passphrase is in {leaked:?}");
    for h in sink.requests() {
        assert!(
            !String::from_utf8_lossy(&h.body).contains(PASS),
            "the passphrase is in a webhook body"
        );
    }
    let out_file = t.path().join("restored");
    let mut r = tessera_cmd([
        OsStr::new("restore"),
        repo.as_os_str(),
        snap.as_ref(),
        out_file.as_os_str(),
        "--passphrase-file".as_ref(),
        pass_file.as_os_str(),
    ]);
    assert!(r.output().unwrap().status.success());
    assert_same_file(&image, &out_file);
}

/// `job list --jobs DIR`: every job with its schedule, next slot and last run; an invalid
/// file is listed with its error.
#[test]
fn job_list_shows_schedules_next_slots_and_last_runs() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_list"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(MIB), &mut gen);
    let jobs = s.path("jobs");
    fs::create_dir(&jobs).unwrap();
    let body = |series: &str| {
        format!(
            "[repository]\nlocation = {}\n\n[backup]\nseries = {}\n\n[[backup.disk]]\nname = \"d\"\nsource = {}\n",
            toml_str(&s.repo),
            toml_str(series),
            toml_str(&image)
        )
    };
    let nightly = jobs.join("nightly.toml");
    fs::write(
        &nightly,
        format!(
            "{}\n[schedule]\ncron = \"0 3 * * *\"\ntimezone = \"UTC\"\n",
            body("night")
        ),
    )
    .unwrap();
    fs::write(jobs.join("manual.toml"), body("man")).unwrap();
    fs::write(
        jobs.join("broken.toml"),
        format!(
            "{}\n[schedule]\ncron = \"0 3 * * *\"\nwhen = 1\n",
            body("brk")
        ),
    )
    .unwrap();
    fs::write(jobs.join("notes.txt"), "not a job").unwrap();
    let run = job_run_ok(&nightly, &s.state, &[]);

    let out = tessera([
        OsStr::new("job"),
        "list".as_ref(),
        "--jobs".as_ref(),
        jobs.as_os_str(),
        "--state-dir".as_ref(),
        s.state.as_os_str(),
        "--json".as_ref(),
    ]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    let list = v["jobs"].as_array().unwrap_or_else(|| panic!("{out}"));
    let names: Vec<&str> = list.iter().map(|j| j["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["broken", "manual", "nightly"], "{out}");
    let get = |n: &str| list.iter().find(|j| j["name"] == n).unwrap();

    let j = get("nightly");
    assert_eq!(j["valid"], true, "{j:#}");
    assert!(j["error"].is_null(), "{j:#}");
    assert_eq!(j["series"], "night", "{j:#}");
    assert_eq!(j["repository"], s.repo.display().to_string(), "{j:#}");
    assert_eq!(j["file"], nightly.display().to_string(), "{j:#}");
    assert!(
        j["schedule"].to_string().contains("0 3 * * *"),
        "the schedule is not shown: {j:#}"
    );
    let next = tessera_tests::sinks::rfc3339_us(j["next"].as_str().expect("next"));
    let now = tessera_engine::time::now_us();
    let day = 86_400 * 1_000_000;
    assert!(
        next > now && next <= now + day,
        "next slot {next} vs now {now}: {j:#}"
    );
    assert_eq!(
        next % day,
        3 * 3600 * 1_000_000,
        "next is not 03:00 UTC: {j:#}"
    );
    assert_eq!(
        j["last_run"]["id"], run["id"],
        "last_run is not the run just made: {j:#}"
    );
    assert_eq!(j["last_run"]["outcome"], "success", "{j:#}");

    let j = get("manual");
    assert_eq!(j["valid"], true, "{j:#}");
    assert!(
        j["next"].is_null(),
        "a job without schedule has no next slot: {j:#}"
    );
    assert!(j["last_run"].is_null(), "{j:#}");

    let j = get("broken");
    assert_eq!(j["valid"], false, "{j:#}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("line ") && e.contains("when")),
        "{j:#}"
    );
}

/// Whether this process runs as root (from `/proc/self/status`: the workspace forbids the
/// `unsafe` of `libc::getuid`).
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .expect("a Uid line")
}

/// Removes `STATE/jobs/NAME` on drop, and `STATE` itself if it did not exist before (a run
/// as root without any state option writes the system's `/var/lib/tessera`).
struct RemoveJobState {
    state: PathBuf,
    job: String,
    state_existed: bool,
}

impl Drop for RemoveJobState {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.state.join("jobs").join(&self.job));
        if !self.state_existed {
            let _ = fs::remove_dir(self.state.join("jobs"));
            let _ = fs::remove_dir(&self.state);
        }
    }
}

/// The state directory: `--state-dir`, else `$TESSERA_STATE_DIR`, else
/// `$XDG_STATE_HOME/tessera`, else `/var/lib/tessera` for root and `~/.local/state/tessera`
/// for others (SPEC §26.4).
#[test]
fn the_state_directory_is_found_in_order() {
    let s = Setup::new();
    let mut gen = DataGen::new(seed("jobs_run_state_dir"));
    let image = s.path("disk.raw");
    make_image(&image, ImageSpec::mixed(256 * 1024), &mut gen);
    // A name of its own: the last case may write the system's state directory.
    let job = format!("where-{:016x}", rand::random::<u64>());
    let file = s.job(&job, &job, &image, "");
    let (home, xdg, env_dir, flag) = (
        s.path("home"),
        s.path("xdg"),
        s.path("env-state"),
        s.path("flag-state"),
    );
    fs::create_dir_all(&home).unwrap();
    let default_dir = if running_as_root() {
        PathBuf::from("/var/lib/tessera")
    } else {
        home.join(".local/state/tessera")
    };
    let _cleanup = RemoveJobState {
        state_existed: default_dir.exists(),
        state: default_dir.clone(),
        job: job.clone(),
    };
    let run = |with_flag: bool, env: &[(&str, Option<PathBuf>)]| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "job".into(),
            "run".into(),
            file.clone().into(),
            "--json".into(),
        ];
        if with_flag {
            args.extend(["--state-dir".into(), flag.clone().into()]);
        }
        let mut cmd = tessera_cmd(&args);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let all = |tsd: Option<PathBuf>, x: Option<PathBuf>| {
        [
            ("HOME", Some(home.clone())),
            ("TESSERA_STATE_DIR", tsd),
            ("XDG_STATE_HOME", x),
        ]
    };
    run(true, &all(Some(env_dir.clone()), Some(xdg.clone())));
    run(false, &all(Some(env_dir.clone()), Some(xdg.clone())));
    run(false, &all(None, Some(xdg.clone())));
    run(false, &all(None, None));
    for (dir, what) in [
        (flag, "--state-dir"),
        (env_dir, "TESSERA_STATE_DIR"),
        (xdg.join("tessera"), "XDG_STATE_HOME/tessera"),
        (
            default_dir,
            "the default (/var/lib/tessera for root, else ~/.local/state/tessera)",
        ),
    ] {
        assert_eq!(
            record_files(&dir, &job).len(),
            1,
            "{what}: one record expected under {}",
            dir.display()
        );
    }
}
