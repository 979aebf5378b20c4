//! One run of a job (SPEC.md §26.3): hook before → backup → hook after → prune → verify →
//! repository figures → sync, stopping at the first failure, recorded step by step.
//!
//! Crash reasoning: the record is rewritten durably before each step (naming it) and after
//! the run, so a killed run is found `running` at a known step and settled as
//! `interrupted` by the next holder of the job's lock ([`super::history`]). Each step is one
//! engine operation with its own crash safety (§9): a killed backup publishes nothing, a
//! killed prune forgets whole snapshots or none, a killed sync leaves whole snapshots.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::file::{Job, RepositoryDef};
use super::history::{JobState, StateDir};
use super::hooks::{run_hook, DEFAULT_TIMEOUT};
use super::notify;
use super::record::{
    Failure, Outcome, PruneRecord, RunRecord, StepRecord, SyncRecord, Trigger, VerifyRecord,
};
use super::values::{Dur, Event, RefMode};
use crate::crypto::SecretSource;
use crate::error::{Error, ErrorKind, Result};
use crate::location::{LocationOptions, RepoLocation};
use crate::ops::backup::{BackupRequest, DeltaOptions, DiskSpec, ReferenceChoice};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::storage::s3::S3Options;
use crate::time::{format_us, now_us};

/// Where the secrets of a job's repository come from: the caller (the CLI) turns the
/// repository's `key-file`/`passphrase-file`/`password-command` into a source.
pub trait KeySources: Sync {
    /// The secret source for `repository`.
    fn for_repository(&self, repository: &RepositoryDef) -> Box<dyn SecretSource>;
}

/// A sync target's per-request network timeout when its file gives none (as `sync`'s).
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
const SYNC_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// How to run.
pub struct RunRequest<'a> {
    /// Overrides the file's `mode` for this run.
    pub mode: Option<RefMode>,
    /// Why.
    pub trigger: Trigger,
    /// The slot a scheduled run is for.
    pub slot_us: Option<i64>,
    /// Set by the daemon at shutdown: no further step starts.
    pub stop: Option<&'a AtomicBool>,
    /// Progress of the long steps.
    pub progress: &'a dyn Progress,
    /// Set by the daemon when it has abandoned the run at shutdown and written its record:
    /// from then on the run writes nothing more.
    pub frozen: Option<&'a AtomicBool>,
    /// Called with the record after each durable write (the daemon keeps the latest, to
    /// settle it if it must abandon the run).
    pub on_record: Option<&'a (dyn Fn(&RunRecord) + Sync)>,
}

/// A finished run.
pub struct Finished {
    /// Its record (as written).
    pub record: RunRecord,
    /// The kind of the error that failed it, if one did.
    pub error_kind: Option<ErrorKind>,
}

/// The job's location options (`[repository]` S3 and cache settings).
pub fn location_options(r: &RepositoryDef) -> LocationOptions {
    LocationOptions {
        s3: S3Options {
            endpoint: r.s3_endpoint.clone(),
            region: r.s3_region.clone(),
            path_style: r.s3_path_style,
            insecure_http: r.s3_insecure_http,
            ..Default::default()
        },
        cache_dir: r.cache_dir.clone(),
    }
}

/// Runs `job` once. Fails only when the run cannot start (its lock is held: exit 3) or its
/// record cannot be written; a failing step is an outcome in the returned record.
pub fn run(
    job: &Job,
    state: &StateDir,
    req: &RunRequest<'_>,
    keys: &dyn KeySources,
) -> Result<Finished> {
    let job_state = state.job(&job.name);
    let lock = job_state.lock()?;
    for old in job_state.settle(&lock)? {
        finish_interrupted(job, &job_state, old)?;
    }
    let started_us = now_us();
    let mode = req.mode.unwrap_or(job.def.backup.get_ref().mode);
    let record = RunRecord {
        job: job.name.clone(),
        series: job.series().to_string(),
        repository: job.def.repository.location.get_ref().clone(),
        id: run_id(started_us),
        trigger: req.trigger,
        slot: req.slot_us.map(format_us),
        mode: mode.as_str().to_string(),
        started: format_us(started_us),
        started_us,
        finished: None,
        duration_ms: 0,
        outcome: Outcome::Running,
        step: None,
        failure: None,
        warnings: Vec::new(),
        steps: Vec::new(),
        backup: None,
        prune: None,
        verify: None,
        sync: Vec::new(),
        repository_stats: None,
        hooks: Vec::new(),
        notifications: Vec::new(),
        pid: std::process::id(),
    };
    let mut run = Run {
        job,
        state: &job_state,
        req,
        keys,
        record,
        started: Instant::now(),
        error_kind: None,
        // Without a before-hook there is nothing to wait for: the after-hook is owed.
        before_ok: job.def.hooks.before.is_none(),
        after_ran: false,
    };
    let mut result = run.save().and_then(|()| run.steps(mode));
    // The after-hook releases what the before-hook took (a hypervisor snapshot): it runs
    // whenever the before-hook succeeded, also when a record could not be written.
    if run.before_ok && !run.after_ran {
        let _ = run.hook("after");
    }
    result = result.and_then(|()| run.finish());
    if let Err(e) = &result {
        // The history could not be written (a full state disk): say so to whoever listens,
        // since nothing else will.
        let summary = format!("job {}: cannot record its run: {e}", job.name);
        notify::notify(job, Event::Failure, &summary, Some(&run.record));
    }
    result?;
    drop(lock);
    Ok(Finished {
        record: run.record,
        error_kind: run.error_kind,
    })
}

/// Runs `job`'s hook of `phase` (`before`/`after`) for the run `record`, adding what it did
/// to the record. For `after`, `TESSERA_OUTCOME` says whether the backup succeeded (its
/// report is recorded only then).
fn run_job_hook(job: &Job, record: &mut RunRecord, phase: &str) -> StepResult {
    let hooks = &job.def.hooks;
    let Some(hook) = (if phase == "before" {
        &hooks.before
    } else {
        &hooks.after
    }) else {
        return Ok(String::new());
    };
    let mut env = vec![
        ("TESSERA_JOB", job.name.clone()),
        ("TESSERA_SERIES", job.series().to_string()),
        ("TESSERA_REPOSITORY", record.repository.clone()),
        ("TESSERA_PHASE", phase.to_string()),
    ];
    if phase == "after" {
        let ok = record.backup.is_some() && record.outcome != Outcome::Interrupted;
        env.push((
            "TESSERA_OUTCOME",
            if ok { "success" } else { "failure" }.into(),
        ));
        env.push((
            "TESSERA_SNAPSHOT",
            record.snapshot().unwrap_or_default().to_string(),
        ));
    }
    let timeout = hook.timeout.map_or(DEFAULT_TIMEOUT, Dur::as_std);
    let (done, result) = run_hook(phase, &hook.command.0, &env, timeout);
    let detail = format!(
        "{:?} exited {}",
        hook.command.0[0],
        done.exit_code
            .map_or_else(|| "by a signal".to_string(), |c| c.to_string())
    );
    record.hooks.push(done);
    result.map(|()| detail)
}

/// Whether the interrupted run `record` still owes its after-hook: its before-hook
/// succeeded (or there is none, and the run got as far as the backup) and the after-hook
/// neither ran nor was running when the process ended.
pub fn owes_after_hook(job: &Job, record: &RunRecord) -> bool {
    if job.def.hooks.after.is_none()
        || record.hooks.iter().any(|h| h.phase == "after")
        || record.step.as_deref() == Some("hook-after")
    {
        return false;
    }
    match &job.def.hooks.before {
        Some(_) => record
            .hooks
            .iter()
            .any(|h| h.phase == "before" && h.exit_code == Some(0) && !h.timed_out),
        None => {
            record.steps.iter().any(|s| s.step == "backup")
                || record.step.as_deref() == Some("backup")
        }
    }
}

/// Settles an interrupted run's after-hook (SPEC.md §26.3): runs it if the run owed it
/// (with `TESSERA_OUTCOME=failure`), recording it. The process that ran the backup is gone,
/// so what the before-hook took is no longer being read. Returns whether it ran.
pub fn release_interrupted(job: &Job, record: &mut RunRecord) -> bool {
    if !owes_after_hook(job, record) {
        return false;
    }
    let done = run_job_hook(job, record, "after");
    record.warnings.push(match done {
        Ok(_) => "the after-hook ran when the interrupted run was settled".into(),
        Err(e) => format!("the after-hook, run when the interrupted run was settled: {e}"),
    });
    true
}

/// A settled run of `job` died: releases what its before-hook took, tells whoever wants
/// failures, and records both. Returns whether the after-hook ran.
pub fn finish_interrupted(job: &Job, state: &JobState, mut record: RunRecord) -> Result<bool> {
    let released = release_interrupted(job, &mut record);
    let sent = notify::notify(job, Event::Failure, &record.summary(), Some(&record));
    if released || !sent.is_empty() {
        record.notifications.extend(sent);
        state.write(&record)?;
    }
    Ok(released)
}

/// A run's id: its UTC start time to the microsecond, sortable as text.
fn run_id(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |t| t.format("%Y%m%dT%H%M%S%.6fZ").to_string(),
    )
}

struct Run<'a> {
    job: &'a Job,
    state: &'a JobState,
    req: &'a RunRequest<'a>,
    keys: &'a dyn KeySources,
    record: RunRecord,
    started: Instant,
    error_kind: Option<ErrorKind>,
    /// The before-hook succeeded (so the after-hook must run).
    before_ok: bool,
    /// The after-hook ran.
    after_ran: bool,
}

/// The verify a run owes: its kind (`full`, `sample`) and the sample's size.
type VerifyDue = (&'static str, Option<crate::ops::check::SampleSize>);

/// A step's result: its detail line, or the error that failed it.
type StepResult = Result<String>;

impl Run<'_> {
    fn save(&mut self) -> Result<()> {
        if self.req.frozen.is_some_and(|f| f.load(Ordering::SeqCst)) {
            return Ok(());
        }
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        self.state.write(&self.record)?;
        if let Some(f) = self.req.on_record {
            f(&self.record);
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.req.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Runs one step: records that it runs, runs it, records how it went. Returns whether
    /// the run goes on.
    fn step(&mut self, name: &str, body: impl FnOnce(&mut Self) -> StepResult) -> Result<bool> {
        // The after-hook is cleanup: it runs at shutdown too.
        if self.stopping() && name != "hook-after" {
            self.record.outcome = Outcome::Interrupted;
            self.record.step = Some(name.to_string());
            self.record.warnings.push(format!(
                "stopped before {name}: the daemon is shutting down"
            ));
            return Ok(false);
        }
        self.record.step = Some(name.to_string());
        self.save()?;
        let t = Instant::now();
        let result = body(self);
        let duration_ms = t.elapsed().as_millis() as u64;
        let (outcome, detail, go_on) = match result {
            Ok(detail) => ("ok", detail, true),
            Err(e) => {
                // Damage found by verify, or damaged data met by any step.
                let damage =
                    self.record.outcome == Outcome::Damage || e.kind() == ErrorKind::Damage;
                if damage {
                    self.record.outcome = Outcome::Damage;
                }
                if !damage {
                    self.record.outcome = Outcome::Failure;
                }
                self.error_kind = Some(if damage { ErrorKind::Damage } else { e.kind() });
                self.record.failure = Some(Failure {
                    step: name.to_string(),
                    kind: self
                        .error_kind
                        .unwrap_or(ErrorKind::Failed)
                        .as_str()
                        .to_string(),
                    message: e.to_string(),
                });
                (
                    if damage { "damage" } else { "failed" },
                    e.to_string(),
                    false,
                )
            }
        };
        self.record.steps.push(StepRecord {
            step: name.to_string(),
            outcome: outcome.to_string(),
            duration_ms,
            detail,
        });
        if go_on {
            self.record.step = None;
        }
        self.save()?;
        Ok(go_on)
    }

    fn skipped(&mut self, name: &str, why: &str) {
        self.record.steps.push(StepRecord {
            step: name.to_string(),
            outcome: "skipped".into(),
            duration_ms: 0,
            detail: why.to_string(),
        });
    }

    fn hook(&mut self, phase: &str) -> StepResult {
        if phase == "after" {
            self.after_ran = true;
        }
        let result = run_job_hook(self.job, &mut self.record, phase);
        if phase == "before" && result.is_ok() {
            self.before_ok = true;
        }
        result
    }

    /// Whether the job's previous run got to a sync that failed (or was interrupted in one).
    fn previous_sync_failed(&self) -> bool {
        if self.job.def.sync.is_empty() {
            return false;
        }
        let id = self.record.id.clone();
        self.state
            .newest(|r| r.id != id)
            .ok()
            .flatten()
            .is_some_and(|r| {
                r.failure.as_ref().is_some_and(|f| f.step == "sync")
                    || (r.outcome == Outcome::Interrupted && r.step.as_deref() == Some("sync"))
            })
    }

    fn location(&self) -> Result<RepoLocation> {
        let def = &self.job.def.repository;
        RepoLocation::parse(def.location.get_ref(), location_options(def))
    }

    fn open(&self) -> Result<Repository> {
        let def = &self.job.def.repository;
        self.location()?
            .open_writer(self.keys.for_repository(def).as_ref())
    }

    fn open_reader(&self) -> Result<Repository> {
        let def = &self.job.def.repository;
        self.location()?
            .open(self.keys.for_repository(def).as_ref())
    }

    /// Opens for the backup: under the series' lock, beside other jobs' backups (SPEC §8).
    fn open_for_backup(&self) -> Result<Repository> {
        let def = &self.job.def.repository;
        self.location()?
            .open_backup(self.keys.for_repository(def).as_ref(), self.job.series())
    }

    fn steps(&mut self, mode: RefMode) -> Result<()> {
        let has_before = self.job.def.hooks.before.is_some();
        if has_before && !self.step("hook-before", |r| r.hook("before"))? {
            return Ok(());
        }
        // Each step opens the repository as it needs it (SPEC §8): the backup under its
        // series' lock, prune as the writer, verify and stats as readers that see the new
        // snapshot; a failure to open is that step's.
        let backed_up = self.step("backup", |r| r.backup(&r.open_for_backup()?, mode))?;
        if self.job.def.hooks.after.is_some() {
            let backup_failure = self.record.failure.take();
            let backup_kind = self.error_kind.take();
            let backup_outcome = self.record.outcome;
            let after_ok = self.step("hook-after", |r| r.hook("after"))?;
            if let Some(f) = backup_failure {
                // The backup's failure is the run's; the after-hook's, if any, is a warning.
                if let Some(after) = self.record.failure.replace(f) {
                    self.record
                        .warnings
                        .push(format!("hook after: {}", after.message));
                }
                self.error_kind = backup_kind;
                // `damage` stays `damage`.
                self.record.outcome = backup_outcome;
                self.record.step = Some("backup".into());
                self.save()?;
            } else if !after_ok {
                return Ok(());
            }
        }
        if !backed_up {
            return Ok(());
        }
        match &self.job.def.retention {
            Some(_) if self.previous_sync_failed() => {
                let why = "the previous run's sync failed: retention waits until the off-site copies have caught up, so that nothing is forgotten before it was copied";
                self.record.warnings.push(format!("prune skipped: {why}"));
                self.skipped("prune", why);
            }
            Some(_) => {
                if !self.step("prune", |r| r.prune(&r.open()?))? {
                    return Ok(());
                }
            }
            None => self.skipped("prune", "no [retention]"),
        }
        match (self.verify_due(), &self.job.def.verify) {
            (Some(due), _) => {
                if !self.step("verify", |r| r.verify(&r.open_reader()?, due))? {
                    return Ok(());
                }
            }
            (None, None) => self.skipped("verify", "no [verify]"),
            (None, Some(_)) => self.skipped("verify", "not due"),
        }
        // The figures feed the metrics only: their failure is a warning, and the off-site
        // copies still go.
        if !self.step("stats", |r| Ok(r.stats()))? {
            return Ok(());
        }
        for (i, _) in self.job.def.sync.iter().enumerate() {
            if !self.step("sync", |r| r.sync(i))? {
                return Ok(());
            }
        }
        Ok(())
    }

    fn backup(&mut self, repo: &Repository, mode: RefMode) -> StepResult {
        let def = self.job.def.backup.get_ref();
        let mut disks = Vec::new();
        for d in &def.disk {
            let d = d.get_ref();
            let mut spec = DiskSpec::new(&d.name.get_ref().0, Path::new(&d.source));
            spec.changes.clone_from(&d.changes);
            disks.push(spec);
        }
        let req = BackupRequest {
            series: self.job.series().to_string(),
            disks,
            tags: def
                .tags
                .iter()
                .map(|(k, v)| (k.0.clone(), v.clone()))
                .chain([("job".to_string(), self.job.name.clone())])
                .collect(),
            block_size: None,
            delta: DeltaOptions {
                reference: match mode {
                    RefMode::Differential => ReferenceChoice::LatestFull,
                    RefMode::Incremental | RefMode::Full => ReferenceChoice::Auto,
                },
                fallback_full: def.fallback_full,
                force_key: mode == RefMode::Full,
                key_interval: def.key_interval,
                format: def.format.get_ref().parse()?,
                allow_backing_dirs: def.allow_backing_dirs.clone(),
                tls_ca: def.tls_ca.clone(),
            },
        };
        let outcome = crate::ops::backup::backup(repo, &req, self.req.progress)?;
        let report = outcome.report();
        for d in &report.disks {
            if let Some(n) = d.drift_blocks.filter(|&n| n > 0) {
                self.record.warnings.push(format!(
                    "disk {}: drift: {n} blocks changed although no delta said so (changed-block tracking is unreliable)",
                    d.name
                ));
            }
            if d.healed_chunks > 0 {
                self.record.warnings.push(format!(
                    "disk {}: {} damaged stored chunks were rewritten from the source",
                    d.name, d.healed_chunks
                ));
            }
            if let Some(note) = d
                .note
                .as_ref()
                .filter(|n| n.ends_with(crate::ops::backup::READ_IN_FULL_NOTE))
            {
                self.record
                    .warnings
                    .push(format!("disk {}: {note}", d.name));
            }
        }
        let modes: Vec<String> = report
            .disks
            .iter()
            .map(|d| format!("{} {}", d.name, d.mode.as_str()))
            .collect();
        let detail = format!(
            "snapshot {} ({})",
            &report.snapshot.to_hex()[..16],
            modes.join(", ")
        );
        self.record.backup = Some(
            serde_json::to_value(&report)
                .map_err(|e| Error::Internal(format!("encoding the backup report: {e}")))?,
        );
        Ok(detail)
    }

    fn prune(&mut self, repo: &Repository) -> StepResult {
        let Some(retention) = &self.job.def.retention else {
            return Ok(String::new());
        };
        let policy = retention.get_ref().policy();
        let report = crate::ops::prune::prune(repo, &policy, Some(self.job.series()), false)?;
        let forgotten: Vec<String> = report
            .decisions
            .iter()
            .filter(|d| !d.keep())
            .map(|d| d.id.to_hex())
            .collect();
        let kept = report.decisions.len() - forgotten.len();
        let detail = format!("kept {kept}, forgot {}", forgotten.len());
        self.record.prune = Some(PruneRecord {
            kept: kept as u64,
            forgotten: forgotten.len() as u64,
            forgotten_ids: forgotten,
        });
        Ok(detail)
    }

    /// The verify this run owes (SPEC.md §26.3): full when the last full one is older than
    /// `full-every`, else a sample when the last of any kind is older than `sample-every`.
    fn verify_due(&self) -> Option<VerifyDue> {
        let v = self.job.def.verify.as_ref()?.get_ref();
        let now = self.record.started_us;
        let (sample_at, full_at) = self.state.verified();
        let older =
            |at: Option<i64>, every: super::values::Dur| at.is_none_or(|t| now - t >= every.0.us);
        if v.full_every.is_some_and(|every| older(full_at, every)) {
            return Some(("full", None));
        }
        let sample = v.sample?;
        let due = v
            .sample_every
            .is_none_or(|every| older(sample_at.max(full_at), every));
        due.then_some(("sample", Some(sample.0)))
    }

    fn verify(&mut self, repo: &Repository, (kind, sample): VerifyDue) -> StepResult {
        let request = crate::ops::verify::VerifyRequest {
            series: Some(self.job.series().to_string()),
            sample,
            skip_verified_within: self
                .job
                .def
                .verify
                .as_ref()
                .and_then(|v| v.get_ref().skip_verified_within)
                .map(|w| w.0),
            ..Default::default()
        };
        // Runs of other series of this repository may verify right now (the daemon runs them
        // side by side, SPEC.md §26.6), and the ledger takes one verify at a time: wait for
        // it, unless the daemon is stopping.
        let report = loop {
            match crate::ops::verify::run(repo, &request, self.req.progress) {
                Err(Error::VerifyRunning { .. }) if !self.stopping() => {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        if let Err(e) = self.state.mark_verified(kind, self.record.started_us) {
            self.record.warnings.push(format!(
                "the verify policy could not record this verify: {e}"
            ));
        }
        let damaged = report.damaged.len() as u64 + report.damaged_packs.len() as u64;
        self.record.verify = Some(VerifyRecord {
            kind: kind.to_string(),
            objects_read: report.objects_read,
            problems: report.problems.len() as u64,
            damaged_objects: damaged,
        });
        if report.is_clean() {
            Ok(format!(
                "{kind}: read {} objects, no problems",
                report.objects_read
            ))
        } else {
            self.record.outcome = Outcome::Damage;
            Err(Error::Refused {
                reason: format!(
                    "verify ({kind}) found {} problems ({damaged} damaged objects or packs): see `tessera verify` and `tessera repair`",
                    report.problems.len()
                ),
            })
        }
    }

    fn stats(&mut self) -> String {
        let s = match self
            .open_reader()
            .and_then(|repo| crate::ops::stats::stats(&repo))
        {
            Ok(s) => s,
            Err(e) => {
                self.record
                    .warnings
                    .push(format!("repository figures for the metrics: {e}"));
                return format!("not computed: {e}");
            }
        };
        let detail = format!(
            "{} snapshots, {} unique bytes in {} pack bytes",
            s.snapshots, s.live_raw_bytes, s.pack_bytes
        );
        self.record.repository_stats = serde_json::to_value(&s).ok();
        detail
    }

    fn sync(&mut self, i: usize) -> StepResult {
        let target = self.job.def.sync[i].get_ref();
        let def = &self.job.def.repository;
        let access = crate::sync::endpoints::RemoteAccess {
            token_file: target.token_file.as_deref(),
            tls_ca: target.tls_ca.as_deref(),
            io_timeout: target.io_timeout.map_or(SYNC_IO_TIMEOUT, Dur::as_std),
            insecure_http: target.insecure_http,
        };
        let selection = crate::sync::Selection {
            series: Some(self.job.series().to_string()),
            snapshots: Vec::new(),
            latest: None,
        };
        let opts = crate::sync::SyncOptions {
            dry_run: false,
            bwlimit: target.bwlimit.map(|r| r.0),
            jobs: None,
            every_page: false,
        };
        let keys = self.keys.for_repository(def);
        let report = crate::sync::endpoints::sync_between(
            def.location.get_ref(),
            &target.to,
            access,
            &location_options(def),
            &selection,
            &opts,
            self.req.progress,
            &|_| {},
            keys.as_ref(),
        )?;
        self.record.sync.push(SyncRecord {
            to: target.to.clone(),
            snapshots_copied: report.snapshots_copied.len() as u64,
            snapshots_skipped: report.snapshots_skipped.len() as u64,
        });
        Ok(format!(
            "to {}: copied {} snapshots ({} already there)",
            target.to,
            report.snapshots_copied.len(),
            report.snapshots_skipped.len()
        ))
    }

    /// Settles the outcome, writes the final record and sends the notifications.
    fn finish(&mut self) -> Result<()> {
        if self.req.frozen.is_some_and(|f| f.load(Ordering::SeqCst)) {
            // Abandoned at shutdown: the daemon has recorded and notified the run.
            return Ok(());
        }
        if self.record.outcome == Outcome::Running {
            self.record.outcome = if self.record.warnings.is_empty() {
                Outcome::Success
            } else {
                Outcome::Warning
            };
        }
        let now = now_us();
        self.record.finished = Some(format_us(now));
        self.save()?;
        if self.record.outcome.succeeded() {
            // Kept beside the records, which are pruned: the `stale` episodes need it.
            let _ = self.state.mark_success(self.record.started_us);
        }
        let event = match self.record.outcome {
            Outcome::Success => Event::Success,
            Outcome::Warning => Event::Warning,
            Outcome::Damage => Event::Damage,
            Outcome::Failure | Outcome::Interrupted | Outcome::Running => Event::Failure,
        };
        let sent = notify::notify(self.job, event, &self.record.summary(), Some(&self.record));
        if !sent.is_empty() {
            self.record.notifications.extend(sent);
            self.state.write(&self.record)?;
        }
        Ok(())
    }
}
