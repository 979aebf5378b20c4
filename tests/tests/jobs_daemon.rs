//! `tessera daemon` (SPEC.md §26.6, §26.7): scheduled runs of a directory of jobs.
//!
//! - three jobs every 2 s on two repositories plus an invalid file: each runs several times,
//!   runs of one job never overlap, runs of different series of one repository and runs on
//!   different repositories do run side by side (SPEC.md §8), the invalid file is logged and
//!   stops nothing, and `/metrics` (parsed by prometheus_client) agrees with the history;
//! - two jobs backing up one series of one repository never run at once;
//! - SIGHUP: a new file starts running, a file that became invalid keeps its old definition
//!   (and is logged), a removed file stops; `--max-parallel 1` runs one job at a time;
//! - SIGTERM during a run: exit 0 within the grace, the run recorded as interrupted; the
//!   next daemon catches that run up at start; SIGINT of an idle daemon: exit 0;
//! - `kill -9` during a run: the restarted daemon rewrites the record as interrupted and runs
//!   on;
//! - catch-up: several slots missed while no daemon ran make exactly one run at start;
//! - stale: one notification per episode without a successful run.
//!
//! How long the first test watches the schedule: `TESSERA_JOBS_DAEMON_SECS` (default 15).

#![allow(
    clippy::too_many_lines,
    reason = "each test is one end-to-end scenario: set up, run, check the record and the world"
)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_tests::sinks::{
    finished_us, http_get, job_run_ok, kill_if_alive, metric, parse_metrics, pids_in, poll_until,
    record_files, records, rfc3339_us, script, started_us, toml_str, KillPidsOnDrop, Sample,
    WebhookSink,
};
use tessera_tests::{
    env_usize, exit_code, init_repo, make_image, seed, signal, tessera_cmd, DataGen, ImageSpec,
    Value,
};

const KIB: u64 = 1024;

/// A running `tessera daemon`: its stderr lines are collected (and echoed with a prefix);
/// killed on drop.
struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// `127.0.0.1:PORT` of `/metrics`, when started with `--metrics-listen`.
    metrics: Option<String>,
}

impl Daemon {
    /// `tessera daemon --jobs JOBS --state-dir STATE EXTRA...`; with `metrics`, also
    /// `--metrics-listen 127.0.0.1:0`, and waits for the line that gives the port.
    fn start(jobs: &Path, state: &Path, metrics: bool, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec![
            "daemon".into(),
            "--jobs".into(),
            jobs.into(),
            "--state-dir".into(),
            state.into(),
        ];
        if metrics {
            args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(Into::into));
        let mut child = tessera_cmd(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting tessera daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let pid = child.id();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[daemon {pid}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut d = Self {
            child: Some(child),
            lines,
            reader: Some(reader),
            metrics: None,
        };
        if metrics {
            let mut addr = None;
            let found = poll_until(Duration::from_secs(30), || {
                addr = d.lines().iter().find_map(|l| {
                    l.split_once("metrics on http://")
                        .and_then(|(_, rest)| rest.split_once("/metrics"))
                        .map(|(a, _)| a.to_string())
                });
                addr.is_some() || d.exited()
            });
            assert!(
                found && addr.is_some(),
                "the daemon printed no `metrics on http://127.0.0.1:PORT/metrics` line:\n{}",
                d.stderr()
            );
            d.metrics = addr;
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.lines().join("\n")
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Sends `sig` (`HUP`, `TERM`, `INT`).
    fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits up to `timeout` for the process to exit; its exit code and how long it took.
    fn wait_exit(&mut self, timeout: Duration) -> (i32, Duration) {
        let started = Instant::now();
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (exit_code(st), started.elapsed());
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// SIGTERM; asserts exit 0 within 10 s.
    fn stop(&mut self) {
        self.signal("TERM");
        let (code, _) = self.wait_exit(Duration::from_secs(40));
        assert_eq!(
            code,
            0,
            "the daemon's exit code; stderr:\n{}",
            self.stderr()
        );
    }

    /// Scrapes `/metrics` (status 200, parsed by prometheus_client).
    fn scrape(&self) -> Vec<Sample> {
        let addr = self.metrics.as_ref().expect("started with metrics");
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        parse_metrics(&body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch directory with a jobs directory and a state directory.
struct Setup {
    t: tempfile::TempDir,
    jobs: PathBuf,
    state: PathBuf,
    gen: DataGen,
}

impl Setup {
    fn new(test: &str) -> Self {
        let t = tempfile::tempdir().unwrap();
        let jobs = t.path().join("jobs");
        fs::create_dir(&jobs).unwrap();
        let state = t.path().join("state");
        Self {
            t,
            jobs,
            state,
            gen: DataGen::new(seed(test)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// A new plain repository `DIR/NAME`.
    fn repo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        init_repo(&p, &[]);
        p
    }

    /// A new 256 KiB image `DIR/NAME`.
    fn image(&mut self, name: &str) -> PathBuf {
        let p = self.path(name);
        make_image(&p, ImageSpec::mixed(256 * KIB), &mut self.gen);
        p
    }
}

/// The text of a job: repository, series, one disk, schedule (UTC), then `extra`.
fn job_text(repo: &Path, series: &str, source: &Path, cron: &str, extra: &str) -> String {
    format!(
        "[repository]\nlocation = {}\n\n[backup]\nseries = {}\n\n[[backup.disk]]\nname = \"d\"\nsource = {}\n\n[schedule]\ncron = {}\ntimezone = \"UTC\"\n{extra}",
        toml_str(repo),
        toml_str(series),
        toml_str(source),
        toml_str(cron)
    )
}

/// Writes `JOBS/NAME.toml`.
fn write_job(jobs: &Path, name: &str, text: &str) -> PathBuf {
    let p = jobs.join(format!("{name}.toml"));
    // Written beside and renamed, so the daemon never reads half a file.
    let tmp = jobs.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, &p).unwrap();
    p
}

/// Finished records of `job` (outcome not `running`), oldest first.
fn finished(state: &Path, job: &str) -> Vec<Value> {
    records(state, job)
        .into_iter()
        .filter(|r| r["outcome"] != "running")
        .collect()
}

/// A run's start and end (µs) and its name.
type Interval = (i64, i64, String);

/// `[start, end]` in µs of the records that have finished, sorted by start.
fn intervals(recs: &[Value]) -> Vec<Interval> {
    let mut v: Vec<Interval> = recs
        .iter()
        .filter(|r| !r["finished"].is_null())
        .map(|r| {
            (
                started_us(r),
                finished_us(r),
                format!("{}/{}", r["job"], r["id"]),
            )
        })
        .collect();
    v.sort();
    v
}

/// Asserts that no two of the intervals overlap (1 ms of rounding allowed).
#[track_caller]
fn assert_no_overlap(what: &str, iv: &[Interval]) {
    for w in iv.windows(2) {
        assert!(
            w[0].1 <= w[1].0 + 1000,
            "{what}: run {} [{}, {}] overlaps run {} starting at {}",
            w[0].2,
            w[0].0,
            w[0].1,
            w[1].2,
            w[1].0
        );
    }
}

fn sum_bytes_read(r: &Value) -> f64 {
    r["backup"]["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("no backup.disks in {r:#}"))
        .iter()
        .map(|d| d["bytes_read"].as_u64().expect("bytes_read"))
        .sum::<u64>() as f64
}

#[test]
fn three_jobs_on_two_repositories_run_on_schedule_side_by_side() {
    let mut s = Setup::new("jobs_daemon_schedule");
    let (repo_a, repo_b) = (s.repo("repo-a"), s.repo("repo-b"));
    let jobs = [("a1", &repo_a), ("a2", &repo_a), ("b1", &repo_b)];
    for (name, repo) in jobs {
        let image = s.image(&format!("{name}.raw"));
        write_job(
            &s.jobs,
            name,
            &job_text(repo, &format!("s-{name}"), &image, "*/2 * * * * *", ""),
        );
    }
    let broken_image = s.image("broken.raw");
    write_job(
        &s.jobs,
        "broken",
        &job_text(&repo_b, "s-broken", &broken_image, "not a cron", ""),
    );

    let mut d = Daemon::start(&s.jobs, &s.state, true, &["--max-parallel", "3"]);
    let secs = env_usize("TESSERA_JOBS_DAEMON_SECS", 15) as u64;
    std::thread::sleep(Duration::from_secs(secs));

    // Metrics and history that agree: a scrape, the records, the same scrape again.
    let mut consistent = None;
    for _ in 0..10 {
        let before = d.scrape();
        let recs: Vec<Vec<Value>> = jobs.iter().map(|(n, _)| records(&s.state, n)).collect();
        let after = d.scrape();
        let key = |m: &[Sample]| {
            jobs.iter()
                .map(|(n, _)| {
                    (
                        metric(
                            m,
                            "tessera_job_last_success_timestamp_seconds",
                            &[("job", n)],
                        ),
                        metric(m, "tessera_job_last_backup_read_bytes", &[("job", n)]),
                    )
                })
                .collect::<Vec<_>>()
        };
        if key(&before) == key(&after) {
            consistent = Some((after, recs));
            break;
        }
    }
    let (samples, recs) = consistent.expect("the metrics never held still between two scrapes");
    d.stop();
    let log = d.stderr();

    // The invalid file is logged and stopped nothing.
    assert!(
        log.contains("broken"),
        "the invalid job file is not named on stderr:\n{log}"
    );
    assert!(
        records(&s.state, "broken").is_empty(),
        "the invalid job ran"
    );

    let mut all: Vec<(String, Vec<Interval>)> = Vec::new();
    for ((name, _), at_scrape) in jobs.iter().zip(&recs) {
        let done = finished(&s.state, name);
        let ok = done.iter().filter(|r| r["outcome"] == "success").count();
        assert!(
            ok >= 3,
            "{name} succeeded {ok} times in {secs} s of a 2 s schedule: {done:#?}\n{log}"
        );
        for r in &done {
            assert_ne!(r["outcome"], "running");
            assert_eq!(r["trigger"], "schedule", "{r:#}");
            assert!(r["slot"].as_str().is_some(), "{r:#}");
            assert_eq!(r["series"], format!("s-{name}"), "{r:#}");
        }
        assert!(
            records(&s.state, name)
                .iter()
                .all(|r| r["outcome"] != "running"),
            "a record was left running by SIGTERM"
        );
        let iv = intervals(&done);
        assert_no_overlap(&format!("job {name}"), &iv);
        all.push(((*name).to_string(), iv));

        // Metrics of the newest success at the scrape.
        let newest_ok = at_scrape
            .iter()
            .filter(|r| r["outcome"] == "success" || r["outcome"] == "warning")
            .max_by_key(|r| started_us(r))
            .unwrap_or_else(|| panic!("{name}: no success at the scrape"));
        let labels = [("job", *name), ("series", &format!("s-{name}"))];
        let ts = metric(
            &samples,
            "tessera_job_last_success_timestamp_seconds",
            &labels,
        )
        .unwrap_or_else(|| panic!("no last_success_timestamp of {name}: {samples:#?}"));
        let expected = started_us(newest_ok) as f64 / 1e6;
        assert!(
            (ts - expected).abs() <= 1.0,
            "{name}: last success at {ts}, the history says {expected}"
        );
        assert_eq!(
            metric(&samples, "tessera_job_last_backup_read_bytes", &labels),
            Some(sum_bytes_read(newest_ok)),
            "{name}: bytes read"
        );
        let outcomes: Vec<f64> = samples
            .iter()
            .filter(|x| {
                x.name == "tessera_job_last_run_outcome"
                    && x.labels.get("job").is_some_and(|j| j == name)
            })
            .map(|x| x.value)
            .collect();
        assert!(
            outcomes
                .iter()
                .all(|v| v.abs() < 1e-9 || (v - 1.0).abs() < 1e-9)
                && (outcomes.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{name}: last_run_outcome must be 1 for one outcome, 0 for the others: {outcomes:?}"
        );
        let last_run = metric(&samples, "tessera_job_last_run_timestamp_seconds", &labels)
            .unwrap_or_else(|| panic!("no last_run_timestamp of {name}"));
        assert!(
            last_run >= ts - 1e-6,
            "{name}: last run before last success"
        );
    }
    // Jobs of different series of one repository run side by side: each backup holds its
    // series' lock, not the repository (SPEC.md §8).
    let overlaps =
        |x: &[Interval], y: &[Interval]| x.iter().any(|a| y.iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(
        overlaps(&all[0].1, &all[1].1),
        "no run of a1 ever overlapped a run of a2 (one repository, two series), though both \
         are due at the same slots: {all:#?}"
    );

    // Jobs on different repositories run side by side (max-parallel 3).
    let b1 = &all[2].1;
    let side_by_side = all[..2]
        .iter()
        .flat_map(|(_, iv)| iv.iter())
        .any(|a| b1.iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(
        side_by_side,
        "no run of b1 (repository b) ever overlapped a run on repository a, though all are due \
         at the same slots: {all:#?}"
    );

    assert_eq!(
        metric(&samples, "tessera_daemon_jobs", &[("state", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&samples, "tessera_daemon_jobs", &[("state", "valid")]),
        Some(3.0)
    );
    for repo in [&repo_a, &repo_b] {
        let n = metric(
            &samples,
            "tessera_repository_snapshots",
            &[("repository", &repo.display().to_string())],
        )
        .unwrap_or_else(|| panic!("no tessera_repository_snapshots of {}", repo.display()));
        assert!(n >= 1.0, "{}: {n}", repo.display());
    }
}

#[test]
fn two_jobs_of_one_series_never_run_at_once() {
    // Both are due at every slot; the second waits for the first, as its backup would fail on
    // the series lock (one series takes one backup at a time, SPEC.md §8).
    let mut s = Setup::new("jobs_daemon_series");
    let repo = s.repo("repo");
    for name in ["first", "second"] {
        let image = s.image(&format!("{name}.raw"));
        write_job(
            &s.jobs,
            name,
            &job_text(&repo, "shared", &image, "*/2 * * * * *", ""),
        );
    }
    let mut d = Daemon::start(&s.jobs, &s.state, false, &["--max-parallel", "2"]);
    let enough = |name| finished(&s.state, name).len() >= 2;
    assert!(
        poll_until(Duration::from_secs(30), || enough("first")
            && enough("second")),
        "both jobs did not run twice in 30 s:\n{}",
        d.stderr()
    );
    d.stop();
    let mut both = finished(&s.state, "first");
    both.extend(finished(&s.state, "second"));
    for r in &both {
        assert_eq!(r["outcome"], "success", "{r:#}");
    }
    assert_no_overlap("one series, two jobs", &intervals(&both));
}

#[test]
fn sighup_adds_keeps_and_removes_jobs() {
    let mut s = Setup::new("jobs_daemon_reload");
    let (repo_x, repo_y) = (s.repo("repo-x"), s.repo("repo-y"));
    let (img1, img2) = (s.image("j1.raw"), s.image("j2.raw"));
    let j1_text = job_text(&repo_x, "s-j1", &img1, "*/2 * * * * *", "");
    write_job(&s.jobs, "j1", &j1_text);
    let mut d = Daemon::start(&s.jobs, &s.state, false, &["--max-parallel", "1"]);
    assert!(
        poll_until(Duration::from_secs(15), || !finished(&s.state, "j1")
            .is_empty()),
        "j1 never ran:\n{}",
        d.stderr()
    );

    // A new file, then SIGHUP: it runs.
    write_job(
        &s.jobs,
        "j2",
        &job_text(&repo_y, "s-j2", &img2, "*/2 * * * * *", ""),
    );
    d.signal("HUP");
    assert!(
        poll_until(Duration::from_secs(15), || !finished(&s.state, "j2")
            .is_empty()),
        "j2 never ran after SIGHUP:\n{}",
        d.stderr()
    );

    // j1 becomes invalid (and names another series): logged, and the old definition runs on.
    let lines_before = d.lines().len();
    write_job(
        &s.jobs,
        "j1",
        &j1_text
            .replace("s-j1", "s-j1-new")
            .replace("[schedule]\n", "[schedule]\nbogus-key = 1\n"),
    );
    let hup_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    d.signal("HUP");
    assert!(
        poll_until(Duration::from_secs(10), || d.lines()[lines_before..]
            .iter()
            .any(|l| l.contains("j1") && l.contains("bogus-key"))),
        "the invalid j1.toml is not logged with its error after SIGHUP:\n{}",
        d.stderr()
    );
    assert!(
        poll_until(Duration::from_secs(15), || finished(&s.state, "j1")
            .iter()
            .any(|r| started_us(r) > hup_at)),
        "j1 stopped running when its file became invalid:\n{}",
        d.stderr()
    );
    for r in finished(&s.state, "j1") {
        assert_eq!(
            r["series"], "s-j1",
            "the invalid definition was used: {r:#}"
        );
    }

    // j2 removed: no new runs.
    fs::remove_file(s.jobs.join("j2.toml")).unwrap();
    d.signal("HUP");
    std::thread::sleep(Duration::from_secs(2));
    let n = records(&s.state, "j2").len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        records(&s.state, "j2").len(),
        n,
        "j2 still runs after its file was removed"
    );
    d.stop();

    // --max-parallel 1: no two runs at once, even on different repositories.
    let mut both = finished(&s.state, "j1");
    both.extend(finished(&s.state, "j2"));
    assert_no_overlap("--max-parallel 1", &intervals(&both));
}

#[test]
fn sigterm_during_a_run_exits_within_the_grace_and_records_it_interrupted() {
    let mut s = Setup::new("jobs_daemon_sigterm");
    let repo = s.repo("repo");
    let image = s.image("slow.raw");
    let pidfile = s.path("hook.pid");
    let _cleanup = KillPidsOnDrop(pidfile.clone());
    let hook = script(
        s.t.path(),
        "hook.sh",
        &format!("echo $$ >> {}\nexec sleep 6", pidfile.display()),
    );
    write_job(
        &s.jobs,
        "slow",
        &job_text(
            &repo,
            "slow",
            &image,
            "*/2 * * * * *",
            &format!("\n[hooks.before]\ncommand = [{}]\n", toml_str(&hook)),
        ),
    );
    let mut d = Daemon::start(&s.jobs, &s.state, false, &["--stop-grace", "2"]);
    assert!(
        poll_until(Duration::from_secs(15), || !pids_in(&pidfile).is_empty()),
        "no run started:\n{}",
        d.stderr()
    );
    d.signal("TERM");
    let (code, took) = d.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "exit code after SIGTERM:\n{}", d.stderr());
    assert!(
        took <= Duration::from_secs(2 + 5),
        "SIGTERM with --stop-grace 2 took {took:?}"
    );
    let recs = records(&s.state, "slow");
    assert!(!recs.is_empty());
    assert!(
        recs.iter().all(|r| r["outcome"] != "running"),
        "a record was left running: {recs:#?}"
    );
    let last = recs.last().unwrap();
    assert_eq!(
        last["outcome"], "interrupted",
        "the run abandoned at the grace: {last:#}"
    );

    // SIGINT of an idle daemon: exit 0.
    for p in pids_in(&pidfile) {
        kill_if_alive(p);
    }
    write_job(
        &s.jobs,
        "slow",
        &job_text(&repo, "slow", &image, "0 0 1 1 *", ""),
    );
    // The newest run was interrupted: the next daemon catches it up at once (SPEC §26.6),
    // then has nothing to do until January.
    let mut d = Daemon::start(&s.jobs, &s.state, true, &[]);
    assert!(
        poll_until(Duration::from_secs(15), || records(&s.state, "slow")
            .iter()
            .any(|r| r["trigger"] == "catch-up" && r["outcome"] == "success")),
        "the interrupted run was not caught up at start: {:#?}\n{}",
        records(&s.state, "slow"),
        d.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    d.signal("INT");
    let (code, took) = d.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "exit code after SIGINT:\n{}", d.stderr());
    assert!(
        took < Duration::from_secs(5),
        "SIGINT of an idle daemon took {took:?}"
    );
}

#[test]
fn a_daemon_killed_during_a_run_marks_it_interrupted_at_restart() {
    let mut s = Setup::new("jobs_daemon_kill9");
    let repo = s.repo("repo");
    let image = s.image("k.raw");
    let pidfile = s.path("hook.pid");
    let _cleanup = KillPidsOnDrop(pidfile.clone());
    let hook = script(
        s.t.path(),
        "hook.sh",
        &format!("echo $$ >> {}\nexec sleep 8", pidfile.display()),
    );
    write_job(
        &s.jobs,
        "k",
        &job_text(
            &repo,
            "k",
            &image,
            "*/2 * * * * *",
            &format!("\n[hooks.before]\ncommand = [{}]\n", toml_str(&hook)),
        ),
    );
    let mut d = Daemon::start(&s.jobs, &s.state, false, &[]);
    assert!(
        poll_until(Duration::from_secs(15), || !pids_in(&pidfile).is_empty()),
        "no run started:\n{}",
        d.stderr()
    );
    d.kill9();
    let files = record_files(&s.state, "k");
    let (_, killed) = files
        .iter()
        .find(|(_, r)| r["outcome"] == "running")
        .unwrap_or_else(|| panic!("no running record after kill -9: {files:#?}"));
    let killed_id = killed["id"].clone();

    write_job(
        &s.jobs,
        "k",
        &job_text(&repo, "k", &image, "*/2 * * * * *", ""),
    );
    let restarted = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut d = Daemon::start(&s.jobs, &s.state, false, &[]);
    assert!(
        poll_until(Duration::from_secs(20), || {
            let recs = records(&s.state, "k");
            recs.iter()
                .any(|r| r["id"] == killed_id && r["outcome"] == "interrupted")
                && recs
                    .iter()
                    .any(|r| r["outcome"] == "success" && started_us(r) > restarted)
        }),
        "after the restart the killed run is not interrupted or no run succeeded: {:#?}\n{}",
        records(&s.state, "k"),
        d.stderr()
    );
    d.stop();
    for p in pids_in(&pidfile) {
        kill_if_alive(p);
    }
}

/// Now, in whole Unix seconds.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn missed_slots_make_one_catch_up_run_at_start() {
    let mut s = Setup::new("jobs_daemon_catch_up");
    let repo = s.repo("repo");
    let (img_cu, img_no) = (s.image("cu.raw"), s.image("nocu.raw"));
    // Three slots a few seconds from now, then none for a minute.
    let t0 = now_secs();
    let mut secs: Vec<u64> = (4..=6).map(|d| (t0 + d) % 60).collect();
    secs.sort_unstable();
    let cron = format!(
        "{} * * * * *",
        secs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let cu = write_job(&s.jobs, "cu", &job_text(&repo, "cu", &img_cu, &cron, ""));
    let nocu = write_job(
        &s.jobs,
        "nocu",
        &job_text(&repo, "nocu", &img_no, &cron, ""),
    );

    // cu's newest run is before the slots; nocu's after them.
    job_run_ok(&cu, &s.state, &[]);
    assert!(
        now_secs() < t0 + 4,
        "the manual run of cu took too long to end before the slots"
    );
    while now_secs() < t0 + 7 {
        std::thread::sleep(Duration::from_millis(100));
    }
    job_run_ok(&nocu, &s.state, &[]);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut d = Daemon::start(&s.jobs, &s.state, false, &[]);
    assert!(
        poll_until(Duration::from_secs(10), || finished(&s.state, "cu").len()
            >= 2),
        "no catch-up run of cu at start:\n{}",
        d.stderr()
    );
    // Give a per-slot implementation the time to make its other runs.
    std::thread::sleep(Duration::from_secs(4));
    d.stop();
    let cu_runs = records(&s.state, "cu");
    let catch_up: Vec<&Value> = cu_runs
        .iter()
        .filter(|r| r["trigger"] == "catch-up")
        .collect();
    assert_eq!(
        catch_up.len(),
        1,
        "three missed slots must make exactly one catch-up run: {cu_runs:#?}"
    );
    assert_eq!(cu_runs.len(), 2, "{cu_runs:#?}");
    let r = catch_up[0];
    assert_eq!(r["outcome"], "success", "{r:#}");
    assert!(started_us(r) >= started, "{r:#}");
    let slot = rfc3339_us(
        r["slot"]
            .as_str()
            .unwrap_or_else(|| panic!("no slot: {r:#}")),
    );
    let t0_us = i64::try_from(t0).unwrap() * 1_000_000;
    let (first, last) = (t0_us + 4_000_000, t0_us + 6_000_000);
    assert!(
        slot >= first && slot <= last,
        "the catch-up's slot {slot} is not one of the missed slots [{first}, {last}]: {r:#}"
    );
    let no_runs = records(&s.state, "nocu");
    assert_eq!(
        no_runs.len(),
        1,
        "nocu ran after its slots, so it has nothing to catch up: {no_runs:#?}"
    );
}

#[test]
fn stale_is_notified_once_per_episode() {
    let mut s = Setup::new("jobs_daemon_stale");
    let repo = s.repo("repo");
    let image = s.image("st.raw");
    let keep = s.path("st.keep");
    fs::copy(&image, &keep).unwrap();
    let sink = WebhookSink::start(&s.path("hook"));
    let text = format!(
        "stale-after = \"3s\"\n{}",
        job_text(
            &repo,
            "st",
            &image,
            "*/2 * * * * *",
            &format!(
                "\n[[notify]]\nwebhook = {}\non = [\"stale\"]\n",
                toml_str(sink.url())
            ),
        )
    );
    let file = write_job(&s.jobs, "st", &text);
    job_run_ok(&file, &s.state, &[]);
    fs::remove_file(&image).unwrap();
    let mut d = Daemon::start(&s.jobs, &s.state, false, &[]);
    let stale_count = || {
        sink.bodies()
            .iter()
            .filter(|b| b["event"] == "stale")
            .count()
    };
    assert!(
        poll_until(Duration::from_secs(12), || stale_count() >= 1),
        "no stale notification after 3 s without success: {:#?}\n{}",
        sink.bodies(),
        d.stderr()
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(stale_count(), 1, "stale is sent once per episode");
    let body = sink.bodies().remove(0);
    assert_eq!(body["job"], "st", "{body:#}");
    assert!(
        s.state.join("jobs/st/stale.json").is_file(),
        "STATE/jobs/st/stale.json is missing"
    );
    assert!(
        sink.bodies().iter().all(|b| b["event"] == "stale"),
        "events outside the target's on list were sent"
    );

    // A success ends the episode; the next one is notified again.
    fs::copy(&keep, &image).unwrap();
    assert!(
        poll_until(Duration::from_secs(10), || finished(&s.state, "st")
            .iter()
            .filter(|r| r["outcome"] == "success")
            .count()
            >= 2),
        "no success after the source came back:\n{}",
        d.stderr()
    );
    fs::remove_file(&image).unwrap();
    assert!(
        poll_until(Duration::from_secs(12), || stale_count() >= 2),
        "no stale notification in the second episode:\n{}",
        d.stderr()
    );
    d.stop();
}

/// One raw HTTP/1.0 request to `addr`: the status, the `Set-Cookie` value (name=value) if
/// any, and the body.
fn http(addr: &str, request: &str) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the daemon's server");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_string);
    (status, cookie, body.to_string())
}

#[test]
fn the_daemon_serves_the_dashboard_with_its_job_runs() {
    let mut s = Setup::new("jobs_daemon_dashboard");
    let repo = s.repo("repo");
    let img = s.image("vm.raw");
    write_job(
        &s.jobs,
        "nightly",
        &job_text(
            &repo,
            "vm",
            &img,
            "*/2 * * * * *",
            "[retention]\nkeep-last = 2\n",
        ),
    );
    let tokens = s.path("tokens");
    let token = tessera_tests::token_add(&tokens, "read", "*", "viewer", None);
    let (repo_arg, tokens_arg) = (repo.to_str().unwrap(), tokens.to_str().unwrap());
    let mut d = Daemon::start(
        &s.jobs,
        &s.state,
        false,
        &[
            "--serve",
            repo_arg,
            "--tokens",
            tokens_arg,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let mut addr = None;
    assert!(
        poll_until(Duration::from_secs(30), || {
            addr = d.lines().iter().find_map(|l| {
                l.split_once("serving ")?
                    .1
                    .split_once(" on http://")
                    .map(|(_, a)| a.trim().to_string())
            });
            addr.is_some() || d.exited()
        }) && addr.is_some(),
        "the daemon printed no `serving REPO on http://ADDR` line:\n{}",
        d.stderr()
    );
    let addr = addr.unwrap();
    assert!(
        poll_until(Duration::from_secs(30), || finished(&s.state, "nightly")
            .iter()
            .any(|r| r["outcome"] == "success")),
        "the job never succeeded:\n{}",
        d.stderr()
    );
    let form = format!("token={token}");
    let (status, cookie, _) = http(
        &addr,
        &format!(
            "POST /ui/login HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "login through the daemon's server");
    let cookie = cookie.expect("a session cookie");
    let get = |path: &str| {
        http(
            &addr,
            &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"),
        )
    };
    let (status, _, health) = get("/ui/health");
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains(r#"data-job="nightly""#) && health.contains(r#"data-outcome="success""#),
        "the health page shows the daemon's job runs:\n{health}"
    );
    let (status, _, overview) = get("/ui/");
    assert_eq!(status, 200);
    assert!(overview.contains(r#"data-series="vm""#), "{overview}");
    let (status, _, series) = get("/ui/series/vm");
    assert_eq!(status, 200);
    assert!(
        series.contains("Retention of job") && series.contains("nightly"),
        "the series page shows the job's retention:\n{series}"
    );
    // The sync API is served too (a read token lists the snapshots).
    let (status, _, list) = http(
        &addr,
        &format!(
            "GET /v1/snapshots HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{list}");
    assert!(list.contains(r#""series":"vm""#), "{list}");
}
