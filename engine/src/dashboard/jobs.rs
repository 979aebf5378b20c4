//! The jobs a dashboard knows of (`serve --jobs DIR [--state-dir DIR]`, SPEC §27.3): what
//! makes a series' newest snapshot too old, the retention its series is pruned by, and the
//! job runs with their steps and hook output. Job files are read again on each request
//! (they are a few small files), so an edited job shows without a restart; a file that does
//! not load is listed with its error, never fatal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jobs::daemon::claims;
use crate::jobs::file::{job_files, Job};
use crate::jobs::history::StateDir;
use crate::jobs::record::RunRecord;
use crate::location::RepoLocation;
use crate::ops::prune::KeepPolicy;

/// Where the dashboard finds jobs, and the age limit of series no job covers.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The job files' directory, if any.
    pub dir: Option<PathBuf>,
    /// The jobs' state directory.
    pub state: Option<StateDir>,
    /// How old a series' newest snapshot may be when no job says otherwise.
    pub default_max_age: Duration,
    /// The repository served: only jobs that write into it (their repository, or a local
    /// `[[sync]]` target) are shown. `None`: every job of the directory.
    pub served: Option<RepoLocation>,
}

/// The default of `serve --stale-after`: daily backups, with half a day of slack.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_hours needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(36 * 3600);

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            state: None,
            default_max_age: DEFAULT_MAX_AGE,
            served: None,
        }
    }
}

/// The jobs, as loaded for one request.
#[derive(Debug, Default)]
pub struct JobsView {
    /// The jobs that loaded.
    pub jobs: Vec<Job>,
    /// Files that did not load, with why.
    pub errors: Vec<(PathBuf, String)>,
}

/// How old a series' newest snapshot may be, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeLimit {
    /// Largest age, µs.
    pub max_us: i64,
    /// What set it, for the page.
    pub why: String,
}

impl JobsView {
    /// Loads the job files of `config` (none without `--jobs`).
    pub fn load(config: &JobsConfig) -> Self {
        let mut view = Self::default();
        let Some(dir) = &config.dir else {
            return view;
        };
        match job_files(dir) {
            Ok(files) => {
                for f in files {
                    match Job::load(&f) {
                        Ok(job) if writes_into(&job, config.served.as_ref()) => view.jobs.push(job),
                        Ok(_) => {}
                        Err(e) => view.errors.push((f, e.to_string())),
                    }
                }
            }
            Err(e) => view.errors.push((dir.clone(), e.to_string())),
        }
        view
    }

    /// The job backing up `series`, if any (the first, by file name, if several do).
    pub fn for_series(&self, series: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.series() == series)
    }

    /// The retention `series` is pruned by, with the job's name.
    pub fn retention(&self, series: &str) -> Option<(String, KeepPolicy)> {
        let job = self.for_series(series)?;
        let r = job.def.retention.as_ref()?;
        Some((job.name.clone(), r.get_ref().policy()))
    }

    /// How old `series`' newest snapshot may be at `now_us`: the job's `stale-after`; else,
    /// with a schedule, no older than the slot before the newest past slot (one scheduled
    /// run may be missing or still running, two may not); else the default.
    pub fn age_limit(&self, series: &str, config: &JobsConfig, now_us: i64) -> AgeLimit {
        let default = AgeLimit {
            max_us: i64::try_from(config.default_max_age.as_micros()).unwrap_or(i64::MAX),
            why: format!(
                "no job schedules this series: older than {} is stale (serve --stale-after)",
                human_span(config.default_max_age)
            ),
        };
        let Some(job) = self.for_series(series) else {
            return default;
        };
        if let Some(after) = &job.def.stale_after {
            return AgeLimit {
                max_us: after.0.us,
                why: format!(
                    "job {}: stale-after {}",
                    job.name,
                    human_span(Duration::from_micros(after.0.us.unsigned_abs()))
                ),
            };
        }
        let Some(schedule) = &job.def.schedule else {
            return default;
        };
        let last = schedule.prev_at_or_before(now_us);
        let before = last.and_then(|t| schedule.prev_at_or_before(t - 1));
        match before {
            Some(t) => AgeLimit {
                max_us: now_us - t,
                why: format!(
                    "job {}: schedule {:?}; a snapshot older than the slot before the last is stale",
                    job.name, schedule.cron.text
                ),
            },
            None => default,
        }
    }

    /// The newest `limit` runs of each job whose series `visible` accepts, newest first,
    /// with the records that could not be read.
    pub fn runs(
        &self,
        config: &JobsConfig,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<RunRecord>, Vec<String>)> {
        let Some(state) = &config.state else {
            return Vec::new();
        };
        self.jobs
            .iter()
            .filter(|j| visible(j.series()))
            .map(|j| match state.job(&j.name).history(limit) {
                Ok((runs, skipped)) => (j.name.clone(), runs, skipped),
                Err(e) => (j.name.clone(), Vec::new(), vec![e.to_string()]),
            })
            .collect()
    }
}

/// Whether `job` writes into `served` (any repository when `None`).
fn writes_into(job: &Job, served: Option<&RepoLocation>) -> bool {
    served.is_none_or(|s| {
        claims(job)
            .iter()
            .any(|w| w.repository().same_repository(s))
    })
}

/// `36 h`, `2 d 4 h`, `15 min`: a span as people read it.
pub fn human_span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => {
            let (days, hours) = (s / 86_400, (s % 86_400) / 3600);
            if hours == 0 {
                format!("{days} d")
            } else {
                format!("{days} d {hours} h")
            }
        }
    }
}

/// The state directory `serve` reads job history from, if jobs were given.
pub fn state_dir(
    jobs: Option<&Path>,
    explicit: Option<&Path>,
) -> crate::error::Result<Option<StateDir>> {
    jobs.map(|_| StateDir::resolve(explicit)).transpose()
}
