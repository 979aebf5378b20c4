//! `tessera daemon` (SPEC.md §26.6): runs every job of a directory on its schedule.
//!
//! One scheduling thread owns all state; runs happen on threads of their own and report back
//! over a channel, as do the signal thread (SIGHUP, SIGTERM, SIGINT) and nothing else.
//! Concurrency rules: a job has at most one run (the scheduler's `running` flag, and the
//! job lock against a `job run` started by hand); runs that back up one series of one
//! repository, or sync into a repository another run writes, wait for each other
//! ([`Claim`]); runs backing up different series of one repository run side by side, as
//! backups from the command line do (SPEC.md §8); at most `max_parallel` runs at once.
//!
//! Shutdown: no new run or step starts; runs get `stop_grace` to finish their step; a run
//! still going is then abandoned: its record is rewritten `interrupted` and the process
//! exits, which the engine's crash safety (§9) makes invisible in the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::file::{job_files, Job};
use super::history::StateDir;
use super::metrics_server::MetricsServer;
use super::record::{Outcome, RunRecord, Trigger};
use super::run::{run, KeySources, RunRequest};
use super::values::Event;
use crate::error::{Error, Result};
use crate::location::RepoLocation;
use crate::time::{format_us, now_us};

/// How the daemon runs.
pub struct DaemonOptions {
    /// The job files' directory.
    pub jobs_dir: PathBuf,
    /// Where history goes.
    pub state: StateDir,
    /// Most runs at once.
    pub max_parallel: usize,
    /// Serve `/metrics` here.
    pub metrics_listen: Option<String>,
    /// Allow `/metrics` on a non-loopback address.
    pub metrics_insecure_http: bool,
    /// How long running steps may take to finish at shutdown.
    pub stop_grace: Duration,
}

/// How long notifications about runs abandoned at shutdown may delay the exit.
const NOTIFY_AT_EXIT: Duration = Duration::from_secs(5);

/// What reaches the scheduling thread.
enum Msg {
    Reload,
    Stop,
    Done(String),
}

struct Entry {
    job: Arc<Job>,
    /// The next slot, and when its run is due (slot + random delay).
    next: Option<(i64, i64)>,
    /// A run waiting to start: trigger and slot.
    pending: Option<(Trigger, Option<i64>)>,
    running: bool,
    /// The newest record of its running run.
    latest: Arc<Mutex<Option<RunRecord>>>,
    /// Loaded when the daemon found it (for `stale-after` without any run).
    since_us: i64,
}

/// The page the metrics thread renders, kept current by the scheduler.
#[derive(Default)]
struct Loaded {
    jobs: Vec<Job>,
    invalid: usize,
}

/// Runs the daemon until SIGTERM or SIGINT. `log` gets one line per event.
pub fn daemon(
    opts: &DaemonOptions,
    keys: Arc<dyn KeySources + Send + Sync>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<()> {
    if !opts.jobs_dir.is_dir() {
        return Err(Error::Usage(format!(
            "--jobs {}: not a directory",
            opts.jobs_dir.display()
        )));
    }
    let (tx, rx) = channel();
    spawn_signals(tx.clone())?;
    let loaded = Arc::new(Mutex::new(Loaded::default()));
    if let Some(listen) = &opts.metrics_listen {
        let server = MetricsServer::bind(listen, opts.metrics_insecure_http)?;
        log(&format!("metrics on http://{}/metrics", server.addr));
        let state = opts.state.clone();
        let loaded = Arc::clone(&loaded);
        server.spawn(Arc::new(move || {
            let l = loaded.lock().unwrap_or_else(PoisonError::into_inner);
            super::metrics::render(&state, &l.jobs, l.invalid)
        }))?;
    }
    let mut d = Daemon {
        opts,
        keys,
        log,
        tx,
        loaded,
        entries: BTreeMap::new(),
        invalid: BTreeMap::new(),
        stop: Arc::new(AtomicBool::new(false)),
        frozen: Arc::new(AtomicBool::new(false)),
        busy: Vec::new(),
        stale_sent: BTreeMap::new(),
        last_stale_check: None,
    };
    d.reload(true);
    loop {
        d.tick();
        let wait = d.wait_for();
        match rx.recv_timeout(wait) {
            Ok(Msg::Reload) => {
                (d.log)("SIGHUP: reading the job files again");
                d.reload(false);
            }
            Ok(Msg::Stop) => {
                d.shutdown(&rx);
                return Ok(());
            }
            Ok(Msg::Done(name)) => d.done(&name),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn spawn_signals(tx: Sender<Msg>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let msg = if sig == SIGHUP {
                    Msg::Reload
                } else {
                    Msg::Stop
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("starting the signal thread", e))?;
    Ok(())
}

struct Daemon<'a> {
    opts: &'a DaemonOptions,
    keys: Arc<dyn KeySources + Send + Sync>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    tx: Sender<Msg>,
    loaded: Arc<Mutex<Loaded>>,
    entries: BTreeMap<String, Entry>,
    /// Files refused at the last reading, with why.
    invalid: BTreeMap<PathBuf, String>,
    stop: Arc<AtomicBool>,
    /// Set at shutdown once running runs are abandoned: they write nothing more.
    frozen: Arc<AtomicBool>,
    /// The repositories running runs write: their own and their sync targets'.
    busy: Vec<(String, Vec<Claim>)>,
    last_stale_check: Option<Instant>,
    /// Stale episodes notified (also when `stale.json` cannot be written).
    stale_sent: BTreeMap<String, Option<i64>>,
}

/// What a run writes, for deciding which runs may go side by side.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Its own repository, where it backs up one series (under that series' lock) and
    /// prunes (taking the writer lock for a moment, waiting for it: SPEC.md §8).
    Series(RepoLocation, String),
    /// A repository (not a server) it syncs into, holding the writer lock for the whole
    /// sync.
    Whole(RepoLocation),
}

impl Claim {
    /// The repository written.
    pub(crate) fn repository(&self) -> &RepoLocation {
        match self {
            Self::Series(r, _) | Self::Whole(r) => r,
        }
    }

    /// Whether runs holding `self` and `other` must wait for each other: one series of a
    /// repository takes one backup at a time, and a sync holds its target's writer lock
    /// throughout (a backup's publish or a prune beside it would wait for all of it).
    pub(crate) fn conflicts(&self, other: &Self) -> bool {
        if !self.repository().same_repository(other.repository()) {
            return false;
        }
        match (self, other) {
            (Self::Series(_, a), Self::Series(_, b)) => a == b,
            _ => true,
        }
    }
}

/// What a run of `job` writes: the series it backs up in its own repository, and every
/// repository (not server) it syncs to.
pub(crate) fn claims(job: &Job) -> Vec<Claim> {
    let options = super::run::location_options(&job.def.repository);
    let own = RepoLocation::parse(job.def.repository.location.get_ref(), options.clone())
        .ok()
        .map(|r| Claim::Series(r, job.series().to_string()));
    own.into_iter()
        .chain(
            job.def
                .sync
                .iter()
                .map(|s| s.get_ref().to.as_str())
                .filter(|to| !crate::sync::endpoints::is_remote(to))
                .filter_map(|l| RepoLocation::parse(l, options.clone()).ok())
                .map(Claim::Whole),
        )
        .collect()
}

/// The series `job` backs up in its own repository (`None`: the location does not parse).
fn own_series(job: &Job) -> Option<Claim> {
    claims(job)
        .into_iter()
        .find(|c| matches!(c, Claim::Series(..)))
}

impl Daemon<'_> {
    fn say(&self, line: &str) {
        (self.log)(line);
    }

    /// Reads the directory; at `start`, also settles runs a previous daemon left and
    /// schedules catch-up runs (SPEC.md §26.6).
    fn reload(&mut self, start: bool) {
        let files = match job_files(&self.opts.jobs_dir) {
            Ok(f) => f,
            Err(e) => {
                self.say(&format!(
                    "error: listing {}: {e}; keeping the jobs loaded",
                    self.opts.jobs_dir.display()
                ));
                return;
            }
        };
        let mut seen = BTreeSet::new();
        self.invalid.clear();
        let now = now_us();
        for path in files {
            let job = match Job::load(&path) {
                Ok(job) => job,
                Err(e) => {
                    let kept = super::file::job_name(&path)
                        .ok()
                        .filter(|n| self.entries.contains_key(n));
                    match &kept {
                        Some(name) => {
                            seen.insert(name.clone());
                            self.say(&format!(
                                "error: {e} (job {name} keeps its last valid definition)"
                            ));
                        }
                        None => self.say(&format!("error: {e} (not run)")),
                    }
                    self.invalid.insert(path, e.to_string());
                    continue;
                }
            };
            seen.insert(job.name.clone());
            for w in &job.warnings {
                self.say(&format!("warning: job {}: {w}", job.name));
            }
            let name = job.name.clone();
            let schedule = job.def.schedule.clone();
            if let Some(entry) = self.entries.get_mut(&name) {
                // A changed schedule (expression, zone, delay), or one that was stopped
                // because the file had gone, starts again from now.
                let changed = format!("{:?}", entry.job.def.schedule) != format!("{schedule:?}");
                entry.job = Arc::new(job);
                if changed || entry.next.is_none() {
                    entry.next = schedule.as_ref().and_then(|s| next_run(s, now));
                }
            } else {
                {
                    let mut entry = Entry {
                        job: Arc::new(job),
                        next: schedule.as_ref().and_then(|s| next_run(s, now)),
                        pending: None,
                        running: false,
                        latest: Arc::new(Mutex::new(None)),
                        since_us: now,
                    };
                    if start {
                        self.settle(&entry.job);
                    }
                    if let (Some(s), true) = (&schedule, start) {
                        if let Some(slot) = self.missed_slot(&name, s, now) {
                            self.say(&format!(
                                "job {name}: the slot of {} was missed while the daemon was down: running once now",
                                format_us(slot)
                            ));
                            entry.pending = Some((Trigger::CatchUp, Some(slot)));
                        }
                    }
                    let next = entry.next.map(|(slot, _)| format_us(slot));
                    self.say(&format!(
                        "job {name}: loaded ({})",
                        next.map_or_else(|| "no schedule".into(), |n| format!("next run {n}"))
                    ));
                    self.entries.insert(name, entry);
                }
            }
        }
        self.warn_shared_series();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if self.entries.get(&name).is_some_and(|e| e.running) {
                if let Some(e) = self.entries.get_mut(&name) {
                    e.next = None;
                    e.pending = None;
                }
                self.say(&format!(
                    "job {name}: its file is gone; its running run finishes, then it is dropped"
                ));
            } else {
                self.entries.remove(&name);
                self.say(&format!(
                    "job {name}: its file is gone; no longer scheduled"
                ));
            }
        }
        self.publish();
    }

    /// Settles runs of `job` that a killed or stopped daemon left `running` (taking the job
    /// lock for a moment; a `job run` holding it is left alone), and notifies them.
    fn settle(&self, job: &Arc<Job>) {
        let js = self.opts.state.job(&job.name);
        let settled = match js.lock() {
            Ok(lock) => {
                let settled = js.settle(&lock);
                drop(lock);
                settled
            }
            Err(_) => return,
        };
        let settled = match settled {
            Ok(s) => s,
            Err(e) => {
                self.say(&format!("error: job {}: {e}", job.name));
                return;
            }
        };
        for r in &settled {
            self.say(&format!(
                "job {}: the run of {} was interrupted during {}",
                job.name,
                r.started,
                r.step.as_deref().unwrap_or("?")
            ));
        }
        if settled.is_empty() {
            return;
        }
        // Releasing (after-hooks) and notifying may take long: not on the scheduling
        // thread, and without the job's lock.
        let job = Arc::clone(job);
        let log = Arc::clone(&self.log);
        let _ = std::thread::Builder::new()
            .name(format!("settle {}", job.name))
            .spawn(move || {
                for r in settled {
                    let started = r.started.clone();
                    match super::run::finish_interrupted(&job, &js, r) {
                        Ok(true) => log(&format!(
                            "job {}: after-hook run for the interrupted run of {started}",
                            job.name
                        )),
                        Ok(false) => {}
                        Err(e) => log(&format!("error: job {}: {e}", job.name)),
                    }
                }
            });
    }

    /// Warns when two jobs back up one series of one repository: each one's retention
    /// would prune the other's snapshots.
    fn warn_shared_series(&self) {
        let jobs: Vec<&Job> = self.entries.values().map(|e| e.job.as_ref()).collect();
        for (i, a) in jobs.iter().enumerate() {
            for b in &jobs[i + 1..] {
                let same = match (own_series(a), own_series(b)) {
                    (Some(x), Some(y)) => x.conflicts(&y),
                    _ => false,
                };
                if same && (a.def.retention.is_some() || b.def.retention.is_some()) {
                    self.say(&format!(
                        "warning: jobs {} and {} back up series {} of one repository, and retention prunes the whole series: each prunes the other's snapshots; give them different series",
                        a.name,
                        b.name,
                        a.series()
                    ));
                }
            }
        }
    }

    /// The newest slot of `schedule` after the job's newest recorded run and not after
    /// `now`, if any: a run the daemon missed while it was down. A newest run that was
    /// interrupted counts as missed: its slot's backup was not made.
    fn missed_slot(
        &self,
        name: &str,
        schedule: &super::schedule::Schedule,
        now: i64,
    ) -> Option<i64> {
        let newest = self.opts.state.job(name).newest(|_| true).ok().flatten()?;
        // An interrupted run is caught up once: not when it was itself a catch-up (a run that
        // kills the daemon must not run again at every restart).
        if newest.outcome == super::record::Outcome::Interrupted
            && newest.trigger != Trigger::CatchUp
        {
            return schedule.prev_at_or_before(now).or(Some(now));
        }
        let since = newest.started_us;
        let first = schedule.next_after(since)?;
        if first > now {
            return None;
        }
        schedule.prev_at_or_before(now).or(Some(first))
    }

    fn publish(&self) {
        let mut l = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        l.jobs = self.entries.values().map(|e| (*e.job).clone()).collect();
        l.invalid = self.invalid.len();
    }

    /// How long the scheduler may sleep.
    fn wait_for(&self) -> Duration {
        let now = now_us();
        let soonest = self
            .entries
            .values()
            .filter_map(|e| e.next.map(|(_, due)| due))
            .min()
            .map_or(i64::MAX, |due| due - now);
        // Also wake for the stale check.
        Duration::from_micros(u64::try_from(soonest.clamp(10_000, 1_000_000)).unwrap_or(1_000_000))
    }

    /// Marks due runs pending, starts what may start, checks staleness.
    fn tick(&mut self) {
        let now = now_us();
        let mut skipped = Vec::new();
        for (name, e) in &mut self.entries {
            let Some((slot, due)) = e.next else { continue };
            if due > now {
                continue;
            }
            if e.running || e.pending.is_some() {
                skipped.push((name.clone(), slot));
            } else {
                e.pending = Some((Trigger::Schedule, Some(slot)));
            }
            e.next = e
                .job
                .def
                .schedule
                .as_ref()
                .and_then(|s| next_run(s, slot.max(now)));
        }
        for (name, slot) in skipped {
            self.say(&format!(
                "job {name}: slot {} skipped: its previous run has not finished",
                format_us(slot)
            ));
        }
        self.start_pending();
        if self
            .last_stale_check
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_stale_check = Some(Instant::now());
            self.check_stale();
        }
    }

    fn start_pending(&mut self) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut order: Vec<(String, i64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending.is_some() && !e.running)
            .map(|(n, e)| (n.clone(), e.pending.and_then(|p| p.1).unwrap_or(0)))
            .collect();
        order.sort_by_key(|(_, slot)| *slot);
        for (name, _) in order {
            let running = self.entries.values().filter(|e| e.running).count();
            if running >= self.opts.max_parallel.max(1) {
                return;
            }
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            let writes = claims(&e.job);
            let conflict = self
                .busy
                .iter()
                .any(|(_, held)| held.iter().any(|h| writes.iter().any(|w| w.conflicts(h))));
            if conflict {
                continue;
            }
            let Some((trigger, slot)) = e.pending.take() else {
                continue;
            };
            e.running = true;
            self.busy.push((name.clone(), writes));
            let job = Arc::clone(&e.job);
            let latest = Arc::clone(&e.latest);
            let state = self.opts.state.clone();
            let keys = Arc::clone(&self.keys);
            let stop = Arc::clone(&self.stop);
            let frozen = Arc::clone(&self.frozen);
            let tx = self.tx.clone();
            let log = Arc::clone(&self.log);
            log(&format!(
                "job {name}: run starts ({})",
                trigger_name(trigger)
            ));
            let spawned = std::thread::Builder::new()
                .name(format!("job {name}"))
                .spawn(move || {
                    let on_record = |r: &RunRecord| {
                        *latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(r.clone());
                    };
                    let req = RunRequest {
                        mode: None,
                        trigger,
                        slot_us: slot,
                        stop: Some(&stop),
                        frozen: Some(&frozen),
                        progress: &crate::progress::NoProgress,
                        on_record: Some(&on_record),
                    };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(&job, &state, &req, keys.as_ref())
                    }));
                    let record = match result {
                        Ok(Ok(finished)) => {
                            log(&finished.record.summary());
                            Some(finished.record)
                        }
                        Ok(Err(e)) => {
                            log(&format!("error: job {}: {e}", job.name));
                            None
                        }
                        Err(_) => {
                            log(&format!(
                                "error: job {}: the run panicked (a bug); see above",
                                job.name
                            ));
                            None
                        }
                    };
                    if let Some(r) = &record {
                        let _ = r;
                    }
                    let _ = tx.send(Msg::Done(job.name.clone()));
                });
            if let Err(e) = spawned {
                self.say(&format!("error: job {name}: cannot start a thread: {e}"));
                if let Some(e) = self.entries.get_mut(&name) {
                    e.running = false;
                }
                self.busy.retain(|(n, _)| *n != name);
            }
        }
    }

    fn done(&mut self, name: &str) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.running = false;
        *e.latest.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.busy.retain(|(n, _)| n != name);
        // A job whose file went away while it ran.
        let gone = !job_files(&self.opts.jobs_dir)
            .unwrap_or_default()
            .iter()
            .any(|p| super::file::job_name(p).is_ok_and(|n| n == name));
        if gone && e.next.is_none() {
            self.entries.remove(name);
            self.publish();
        }
        self.start_pending();
    }

    /// Sends `stale` for jobs without a successful run for longer than `stale-after`, once
    /// per episode (SPEC.md §26.5). An episode is named by the job's last success (or by
    /// none, for a job that never succeeded); it begins at that success, else at the oldest
    /// record kept, else when the daemon loaded the job.
    fn check_stale(&mut self) {
        let now = now_us();
        let mut sent_now = Vec::new();
        for e in self.entries.values() {
            let Some(after) = e.job.def.stale_after else {
                continue;
            };
            let js = self.opts.state.job(&e.job.name);
            let last_success = js.last_success();
            let since = last_success
                .or_else(|| js.oldest().map(|r| r.started_us))
                .unwrap_or(e.since_us);
            let notified = self.stale_sent.get(&e.job.name) == Some(&last_success)
                || js.stale_sent_for() == Some(last_success);
            if now - since < after.0.us || notified {
                continue;
            }
            let summary = format!(
                "job {}: no successful run since {} (stale-after {} s)",
                e.job.name,
                format_us(since),
                after.0.us / 1_000_000
            );
            self.say(&summary);
            // Remembered before sending (in memory too, should the state directory refuse
            // it), so a slow or dead target is tried once per episode, on a thread of its
            // own: sending may take 3 attempts of 10 s per target, which the schedule must
            // not wait for.
            if let Err(err) = js.mark_stale_sent(last_success) {
                self.say(&format!("error: job {}: {err}", e.job.name));
            }
            sent_now.push((e.job.name.clone(), last_success));
            let job = Arc::clone(&e.job);
            let log = Arc::clone(&self.log);
            let newest = js.newest(|_| true).ok().flatten();
            let _ = std::thread::Builder::new()
                .name(format!("stale {}", job.name))
                .spawn(move || {
                    let sent = super::notify::notify(&job, Event::Stale, &summary, newest.as_ref());
                    for n in sent.iter().filter(|n| !n.ok) {
                        log(&format!(
                            "warning: job {}: {} not notified: {}",
                            job.name,
                            n.target,
                            n.error.as_deref().unwrap_or("?")
                        ));
                    }
                });
        }
        self.stale_sent.extend(sent_now);
    }

    fn shutdown(&mut self, rx: &std::sync::mpsc::Receiver<Msg>) {
        self.stop.store(true, Ordering::SeqCst);
        let running = self.entries.values().filter(|e| e.running).count();
        self.say(&format!(
            "stopping: {running} runs finishing their step (at most {} s)",
            self.opts.stop_grace.as_secs()
        ));
        let deadline = Instant::now() + self.opts.stop_grace;
        while self.entries.values().any(|e| e.running) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(Msg::Done(name)) => {
                    if let Some(e) = self.entries.get_mut(&name) {
                        e.running = false;
                    }
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Runs still going are abandoned by the process exit; from now on they write
        // nothing (their records are ours). A record that already says how its run ended
        // (it was sending notifications) is left alone; the others are rewritten
        // `interrupted`, their after-hooks run and their failures notified, for at most
        // NOTIFY_AT_EXIT (an after-hook still running then was recorded as started, so the
        // next settle does not run it again).
        self.frozen.store(true, Ordering::SeqCst);
        let mut notifying = Vec::new();
        for e in self.entries.values().filter(|e| e.running) {
            let latest = e
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let Some(mut r) = latest.filter(|r| r.finished.is_none()) else {
                continue;
            };
            r.outcome = Outcome::Interrupted;
            r.warnings.push(format!(
                "abandoned during {} at shutdown after {} s of grace",
                r.step.as_deref().unwrap_or("its step"),
                self.opts.stop_grace.as_secs()
            ));
            let owes_after = super::run::owes_after_hook(&e.job, &r);
            if owes_after {
                r.step = Some("hook-after".into());
            }
            let js = self.opts.state.job(&e.job.name);
            if let Err(err) = js.write(&r) {
                self.say(&format!("error: job {}: {err}", e.job.name));
            }
            self.say(&format!(
                "job {}: abandoned during {}",
                e.job.name,
                r.step.as_deref().unwrap_or("?")
            ));
            let job = Arc::clone(&e.job);
            notifying.push(std::thread::spawn(move || {
                if owes_after {
                    r.step = None;
                    super::run::release_interrupted(&job, &mut r);
                    r.step = Some("hook-after".into());
                }
                let sent = super::notify::notify(&job, Event::Failure, &r.summary(), Some(&r));
                r.notifications.extend(sent);
                let _ = js.write(&r);
            }));
        }
        let deadline = Instant::now() + NOTIFY_AT_EXIT;
        while notifying.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.say("stopped");
    }
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Manual => "manual",
        Trigger::Schedule => "scheduled",
        Trigger::CatchUp => "catch-up",
    }
}

/// The next slot after `after_us` and when its run is due (with the random delay).
fn next_run(schedule: &super::schedule::Schedule, after_us: i64) -> Option<(i64, i64)> {
    let slot = schedule.next_after(after_us)?;
    Some((slot, slot.saturating_add(schedule.draw_delay_us())))
}
