//! `/metrics` of the daemon (SPEC.md §26.7): the Prometheus text format (0.0.4), computed
//! from the run history at each scrape, so that it is right after a restart and needs no
//! repository (nor its key) to answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::file::Job;
use super::history::StateDir;
use super::record::{Outcome, RunRecord};

/// The Content-Type of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the metrics need of one job.
struct JobFigures {
    job: String,
    series: String,
    last: Option<RunRecord>,
    last_success: Option<RunRecord>,
    last_backup: Option<RunRecord>,
    /// When the newest sampled and full verify ran (`verify.json`).
    last_verify: [Option<i64>; 2],
    /// Damaged objects the newest verify found.
    last_damage: Option<u64>,
}

fn seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

/// The page for `jobs` (valid ones) and `invalid` refused files.
pub fn render(state: &StateDir, jobs: &[Job], invalid: usize) -> String {
    let figures = figures(state, jobs);
    let mut out = String::new();
    run_families(&mut out, &figures);
    backup_and_verify_families(&mut out, &figures);
    repository_families(&mut out, &figures);
    let name = "tessera_daemon_jobs";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Job files loaded (valid) and refused (invalid).",
    );
    f.sample(name, &[("state", "valid")], jobs.len() as f64);
    f.sample(name, &[("state", "invalid")], invalid as f64);
    out
}

/// Each job's figures, from its newest records: read newest first and only as far back as
/// each figure needs (usually the newest record answers all), so a scrape costs a few
/// record reads per job, not its whole history.
fn figures(state: &StateDir, jobs: &[Job]) -> Vec<JobFigures> {
    jobs.iter()
        .map(|job| {
            let js = state.job(&job.name);
            let find = |pred: &dyn Fn(&RunRecord) -> bool| js.newest(pred).ok().flatten();
            let (sample_us, full_us) = js.verified();
            // Only a job that verifies has a verify to look back for.
            let last_damage = job
                .def
                .verify
                .as_ref()
                .and_then(|_| find(&|r| r.verify.is_some()))
                .and_then(|r| r.verify.map(|v| v.damaged_objects));
            let last = find(&|_| true).map(|mut r| {
                if r.outcome == Outcome::Running && !js.is_running() {
                    r.outcome = Outcome::Interrupted;
                }
                r
            });
            JobFigures {
                job: job.name.clone(),
                series: job.series().to_string(),
                last,
                last_success: find(&|r| r.outcome.succeeded()),
                last_backup: find(&|r| r.backup.is_some()),
                last_verify: [sample_us, full_us],
                last_damage,
            }
        })
        .collect()
}

/// One gauge per job, labelled with the job and its series.
fn per_job(
    out: &mut String,
    figures: &[JobFigures],
    (name, help): (&str, &str),
    value: &dyn Fn(&JobFigures) -> Option<f64>,
) {
    let mut f = Family::new(out, name, "gauge", help);
    for j in figures {
        if let Some(v) = value(j) {
            f.sample(name, &[("job", &j.job), ("series", &j.series)], v);
        }
    }
}

fn run_families(out: &mut String, figures: &[JobFigures]) {
    per_job(
        out,
        figures,
        (
            "tessera_job_last_run_timestamp_seconds",
            "Start of the job's newest run.",
        ),
        &|j| j.last.as_ref().map(|r| seconds(r.started_us)),
    );
    per_job(
        out,
        figures,
        (
            "tessera_job_last_run_duration_seconds",
            "Duration of the job's newest run.",
        ),
        &|j| j.last.as_ref().map(|r| r.duration_ms as f64 / 1000.0),
    );
    let name = "tessera_job_last_run_outcome";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "1 for the outcome of the job's newest run, 0 for the others.",
    );
    for j in figures {
        if let Some(r) = &j.last {
            for o in Outcome::ALL {
                let v = if o == r.outcome { 1.0 } else { 0.0 };
                f.sample(
                    name,
                    &[
                        ("job", &j.job),
                        ("series", &j.series),
                        ("outcome", o.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    per_job(
        out,
        figures,
        (
            "tessera_job_last_success_timestamp_seconds",
            "Start of the job's newest successful run (success or warning).",
        ),
        &|j| j.last_success.as_ref().map(|r| seconds(r.started_us)),
    );
    per_job(
        out,
        figures,
        (
            "tessera_job_last_success_duration_seconds",
            "Duration of the job's newest successful run.",
        ),
        &|j| {
            j.last_success
                .as_ref()
                .map(|r| r.duration_ms as f64 / 1000.0)
        },
    );
}

fn backup_and_verify_families(out: &mut String, figures: &[JobFigures]) {
    let bytes = |j: &JobFigures| j.last_backup.as_ref().and_then(RunRecord::backup_bytes);
    per_job(
        out,
        figures,
        (
            "tessera_job_last_backup_read_bytes",
            "Bytes the newest backup read from its sources.",
        ),
        &|j| bytes(j).map(|b| b.0 as f64),
    );
    per_job(
        out,
        figures,
        (
            "tessera_job_last_backup_stored_bytes",
            "Bytes the newest backup added to packs.",
        ),
        &|j| bytes(j).map(|b| b.1 as f64),
    );
    per_job(
        out,
        figures,
        (
            "tessera_job_last_backup_deduplicated_bytes",
            "Bytes the newest backup read that the repository already held (zeros included).",
        ),
        &|j| bytes(j).map(|b| b.2 as f64),
    );
    let name = "tessera_job_last_verify_timestamp_seconds";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Start of the run that did the newest verify of each kind.",
    );
    for j in figures {
        for (kind, at) in ["sample", "full"].iter().zip(&j.last_verify) {
            if let Some(at) = at {
                f.sample(
                    name,
                    &[("job", &j.job), ("series", &j.series), ("kind", kind)],
                    seconds(*at),
                );
            }
        }
    }
    per_job(
        out,
        figures,
        (
            "tessera_job_last_verify_damaged_objects",
            "Damaged objects or packs the newest verify found.",
        ),
        &|j| j.last_damage.map(|n| n as f64),
    );
}

/// Repository figures, from the newest run of any job on each repository that recorded
/// them.
fn repository_families(out: &mut String, figures: &[JobFigures]) {
    let mut repos: BTreeMap<&str, &RunRecord> = BTreeMap::new();
    for j in figures {
        let newest = [&j.last, &j.last_success, &j.last_backup]
            .into_iter()
            .flatten()
            .filter(|r| r.repository_stats.is_some())
            .max_by_key(|r| r.started_us);
        if let Some(r) = newest {
            let e = repos.entry(r.repository.as_str()).or_insert(r);
            if r.started_us > e.started_us {
                *e = r;
            }
        }
    }
    for (name, field, help) in [
        (
            "tessera_repository_stored_bytes",
            "pack_bytes",
            "Bytes of the repository's pack files.",
        ),
        (
            "tessera_repository_unique_bytes",
            "live_raw_bytes",
            "Raw bytes of the chunks the repository's snapshots reference.",
        ),
        (
            "tessera_repository_logical_bytes",
            "logical_bytes",
            "Sum of the disk sizes of every snapshot.",
        ),
        (
            "tessera_repository_snapshots",
            "snapshots",
            "Published snapshots.",
        ),
    ] {
        let mut f = Family::new(out, name, "gauge", help);
        for (repo, r) in &repos {
            let value = r
                .repository_stats
                .as_ref()
                .and_then(|s| s.get(field))
                .and_then(serde_json::Value::as_u64);
            if let Some(v) = value {
                f.sample(name, &[("repository", repo)], v as f64);
            }
        }
    }
}

/// The page `tessera serve` answers `GET /metrics` with (SPEC.md §26.7): per series, from the
/// catalog (no index scan), the snapshots a token may see.
pub fn render_repository(snapshots: &[crate::ops::catalog::ListedSnapshot]) -> String {
    #[derive(Default)]
    struct Series {
        count: u64,
        damaged: u64,
        newest_us: i64,
        newest_bytes: u64,
    }
    type Figure = fn(&Series) -> f64;
    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    for s in snapshots {
        let e = series.entry(s.series.as_str()).or_default();
        e.count += 1;
        e.damaged += u64::from(s.damaged);
        if e.count == 1 || s.time_us >= e.newest_us {
            e.newest_us = s.time_us;
            e.newest_bytes = s.logical_bytes;
        }
    }
    let mut out = String::new();
    let name = "tessera_repository_snapshots";
    Family::new(
        &mut out,
        name,
        "gauge",
        "Published snapshots (of the series the token covers).",
    )
    .sample(name, &[], snapshots.len() as f64);
    let families: [(&str, &str, Figure); 4] = [
        (
            "tessera_series_snapshots",
            "Snapshots of the series.",
            |s| s.count as f64,
        ),
        (
            "tessera_series_last_snapshot_timestamp_seconds",
            "Time of the series' newest snapshot.",
            |s| seconds(s.newest_us),
        ),
        (
            "tessera_series_last_snapshot_logical_bytes",
            "Disk sizes of the series' newest snapshot.",
            |s| s.newest_bytes as f64,
        ),
        (
            "tessera_series_damaged_snapshots",
            "Snapshots the last verification found damaged.",
            |s| s.damaged as f64,
        ),
    ];
    for (name, help, value) in families {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for (s, figures) in &series {
            f.sample(name, &[("series", s)], value(figures));
        }
    }
    out
}
