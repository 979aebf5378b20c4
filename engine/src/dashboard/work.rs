//! The dashboard's repository work, done on the serving thread one request at a time like
//! every request of `tessera serve` ([`crate::sync::http::routes::serving_loop`]): pages
//! read the repository as a reader; protect, unprotect and forget open it as the writer
//! (and so wait for no one: a local backup holding the writer lock makes them answer 409).
//!
//! A forget is done only with the confirmation of a page that showed its figures
//! ([`super::session`]): the plan is made again and applied only if it frees exactly the
//! bytes that page showed; if anything changed in between (another snapshot published or
//! forgotten), nothing is done and the browser is sent back to look again.

use std::collections::{HashMap, HashSet};

use tessera_format::SnapshotId;

use super::data::{catalogue, Caches, Catalogue};
use super::jobs::{JobsConfig, JobsView};
use super::pages::{self, Viewer};
use super::route::Page;
use crate::crypto::NoSecret;
use crate::error::{Error, Result};
use crate::ops::diff::diff_disks;
use crate::ops::disk_reader::DiskView;
use crate::ops::forget::{apply_forget, plan_forget, set_protected};
use crate::ops::prune::plan_prune;
use crate::repo::{RepoStorage, Repository};
use crate::storage::key::QUARANTINE;
use crate::sync::http::routes::{status_of, ServingState};
use crate::sync::http::tokens::TokenEntry;
use crate::verify_log::{verify_records, VerifyRecord};

/// Verification runs shown on the health page.
pub const VERIFY_RUNS_SHOWN: usize = 30;
/// Quarantined objects listed (with their sizes: one request each on object storage).
pub const QUARANTINE_SHOWN: usize = 200;
/// Runs shown per job.
pub const JOB_RUNS_SHOWN: usize = 20;

/// What a dashboard request asks the serving thread.
#[derive(Debug, Clone)]
pub enum Work {
    /// Render a page.
    Page(Page),
    /// Protect or unprotect a snapshot.
    Protect(SnapshotId, bool),
    /// Forget a snapshot, if that still frees `expected` stored bytes.
    Forget {
        /// The snapshot.
        id: SnapshotId,
        /// What the confirmation page showed.
        expected: u64,
    },
}

/// What the serving thread answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A page, with its status.
    Html(u16, String),
    /// Go there (303).
    Redirect(String),
    /// The forget confirmation page, and what it showed (to remember in the session).
    Confirm {
        /// The page.
        html: String,
        /// The snapshot.
        snapshot: SnapshotId,
        /// The bytes it said are freed.
        freed: u64,
    },
}

/// One dashboard request for the serving thread.
pub struct UiJob {
    /// What to do.
    pub work: Work,
    /// Who asks (the token as it is now).
    pub token: TokenEntry,
    /// Who asks, for the page.
    pub viewer: Viewer,
    /// The confirmation token a forget confirmation page carries.
    pub confirm: String,
    /// A line about what was just done, for the page.
    pub notice: Option<String>,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// What the dashboard keeps on the serving thread.
#[derive(Debug, Default)]
pub struct DashboardState {
    /// Figures that cost a pass over the repository.
    pub caches: Caches,
    /// Where jobs are.
    pub jobs: JobsConfig,
    /// The repository as the commands shown on pages name it.
    pub repository: String,
}

/// Does `job` (see the module docs).
pub fn handle(job: &UiJob, root: &RepoStorage, state: &mut ServingState) -> Outcome {
    let failed = |status: u16, message: &str| {
        Outcome::Html(
            status,
            pages::error_page(Some(&job.viewer), "That did not work", message),
        )
    };
    let engine = |e: &Error| {
        let status = match e {
            Error::SeriesNotFound { .. } => 404,
            Error::Protected { .. } => 409,
            _ => status_of(e),
        };
        // The engine's message may name paths and other series: only for tokens of every
        // series. Others learn what the status says.
        let message = match status {
            404 => "There is no such series or snapshot for this token.".to_string(),
            _ if job.token.covers_all() => e.to_string(),
            _ => format!("The server could not do that (status {status}); its operator can find out why with a token of every series."),
        };
        failed(status, &message)
    };
    match &job.work {
        Work::Page(page) => Repository::open_on(root.clone(), &NoSecret)
            .and_then(|repo| render(&repo, page, job, &mut state.dashboard))
            .unwrap_or_else(|e| engine(&e)),
        Work::Protect(id, on) => match state.open_writer(root) {
            Ok(repo) => {
                state.dashboard.caches.clear();
                protect(&repo, &job.token, *id, *on).unwrap_or_else(|e| engine(&e))
            }
            Err(refusal) => failed(refusal.status, &refusal.message),
        },
        Work::Forget { id, expected } => match state.open_writer(root) {
            Ok(repo) => {
                state.dashboard.caches.clear();
                forget(&repo, &job.token, *id, *expected).unwrap_or_else(|e| engine(&e))
            }
            Err(refusal) => failed(refusal.status, &refusal.message),
        },
    }
}

/// The snapshot `id`, if `token` may see it.
fn visible(cat: &Catalogue, id: SnapshotId) -> Result<&super::data::Snap> {
    cat.get(id)
        .ok_or_else(|| Error::SnapshotNotFound { query: id.to_hex() })
}

/// What a page needs besides the repository.
struct Ctx<'a> {
    cat: Catalogue,
    job: &'a UiJob,
    now_us: i64,
}

fn render(
    repo: &Repository,
    page: &Page,
    job: &UiJob,
    state: &mut DashboardState,
) -> Result<Outcome> {
    let ctx = Ctx {
        cat: catalogue(repo, &job.token)?,
        job,
        now_us: crate::time::now_us(),
    };
    let html = match page {
        Page::Overview => overview(repo, &ctx, state)?,
        Page::Series(name) => series(repo, &ctx, state, name)?,
        Page::Snapshot(id) => snapshot(repo, &ctx, state, *id)?,
        Page::ConfirmForget(id) => return confirm_forget(repo, &ctx, *id),
        Page::Health => health(repo, &ctx, state)?,
    };
    Ok(Outcome::Html(200, html))
}

fn overview(repo: &Repository, ctx: &Ctx<'_>, state: &mut DashboardState) -> Result<String> {
    let jobs = JobsView::load(&state.jobs);
    let limits = ctx
        .cat
        .by_series()
        .keys()
        .map(|s| ((*s).to_string(), jobs.age_limit(s, &state.jobs, ctx.now_us)))
        .collect();
    // The newest run that covered everything: a run of some snapshots says nothing about
    // the series it did not read.
    let verifies = verify_records(repo.backend(), VERIFY_RUNS_SHOWN)?;
    let last_verify = verifies.iter().find(|v| v.scope_snapshots.is_none());
    let totals = if ctx.cat.whole {
        Some(state.caches.stats(repo, ctx.cat.fingerprint)?)
    } else {
        None
    };
    Ok(pages::overview::page(
        &ctx.job.viewer,
        &pages::overview::Overview {
            catalogue: &ctx.cat,
            limits,
            last_verify,
            notice: ctx.job.notice.clone(),
            stats: totals,
            now_us: ctx.now_us,
        },
    ))
}

fn series(
    repo: &Repository,
    ctx: &Ctx<'_>,
    state: &mut DashboardState,
    name: &str,
) -> Result<String> {
    let snaps = ctx.cat.series(name);
    if snaps.is_empty() {
        return Err(Error::SeriesNotFound {
            series: name.to_string(),
        });
    }
    let (exclusive, at) = state.caches.exclusive(repo, ctx.cat.fingerprint)?;
    let jobs = JobsView::load(&state.jobs);
    let retention = match jobs.retention(name) {
        Some((job_name, policy)) => {
            let headers: Vec<_> = snaps.iter().map(|s| (s.id, s.header.clone())).collect();
            let protected: HashSet<SnapshotId> =
                snaps.iter().filter(|s| s.protected).map(|s| s.id).collect();
            plan_prune(&headers, &protected, &policy, Some(name))
                .map(|d| (job_name, d.into_iter().map(|d| (d.id, d)).collect::<HashMap<_, _>>()))
                .map_err(|e| e.to_string())
        }
        None if state.jobs.dir.is_some() => Err("No job prunes this series.".to_string()),
        None => Err("No retention is configured here: start tessera serve with --jobs DIR to show what the jobs' retention would keep.".to_string()),
    };
    Ok(pages::series::page(
        &ctx.job.viewer,
        &pages::series::SeriesView {
            name,
            snaps,
            exclusive: (exclusive, at),
            retention,
            now_us: ctx.now_us,
            notice: ctx.job.notice.clone(),
        },
    ))
}

fn snapshot(
    repo: &Repository,
    ctx: &Ctx<'_>,
    state: &mut DashboardState,
    id: SnapshotId,
) -> Result<String> {
    let snap = visible(&ctx.cat, id)?;
    let verifies = verify_records(repo.backend(), VERIFY_RUNS_SHOWN)?;
    let hex = id.to_hex();
    // Ranges only while the snapshot is marked damaged (a later clean run or a repair
    // cleared the mark: the old ranges are history).
    let ranges = verifies
        .iter()
        .filter(|_| snap.damage.is_some())
        .find(|v| v.damaged_snapshots.contains(&hex))
        .map(|v| {
            v.damaged_ranges
                .iter()
                .filter(|r| r.snapshot == hex)
                .collect()
        })
        .unwrap_or_default();
    // From the cache of every snapshot's exclusive bytes: a page must not cost a pass over
    // a whole disk's manifest.
    let (exclusive, at) = state.caches.exclusive(repo, ctx.cat.fingerprint)?;
    Ok(pages::snapshot::page(
        &ctx.job.viewer,
        &pages::snapshot::SnapshotView {
            snap,
            freed: (exclusive.get(&id).copied(), at),
            changes: changes(repo, &ctx.cat, snap),
            damaged_ranges: ranges,
            repository: state.repository.clone(),
            now_us: ctx.now_us,
            notice: ctx.job.notice.clone(),
        },
    ))
}

fn confirm_forget(repo: &Repository, ctx: &Ctx<'_>, id: SnapshotId) -> Result<Outcome> {
    let snap = visible(&ctx.cat, id)?;
    if snap.protected {
        return Err(Error::Protected { snapshot: id });
    }
    let plan = plan_forget(repo, &[id], false)?;
    let html = pages::forget::page(
        &ctx.job.viewer,
        snap,
        plan.freed_stored_bytes,
        plan.freed_objects,
        &ctx.job.confirm,
        ctx.job.notice.as_deref(),
        ctx.now_us,
    );
    Ok(Outcome::Confirm {
        html,
        snapshot: id,
        freed: plan.freed_stored_bytes,
    })
}

fn health(repo: &Repository, ctx: &Ctx<'_>, state: &DashboardState) -> Result<String> {
    let verifies: Vec<VerifyRecord> = verify_records(repo.backend(), VERIFY_RUNS_SHOWN)?;
    let jobs = JobsView::load(&state.jobs);
    let quarantine = if ctx.cat.whole {
        let keys = repo.backend().list(QUARANTINE)?;
        let mut out = Vec::with_capacity(keys.len().min(QUARANTINE_SHOWN));
        for k in keys.iter().take(QUARANTINE_SHOWN) {
            let size = repo.backend().size(k)?.unwrap_or(0);
            out.push((k.to_string(), size));
        }
        Some((out, keys.len()))
    } else {
        None
    };
    let runs = jobs.runs(&state.jobs, JOB_RUNS_SHOWN, |s| ctx.job.token.covers(s));
    Ok(pages::health::page(
        &ctx.job.viewer,
        &pages::health::HealthView {
            catalogue: &ctx.cat,
            verifies: &verifies,
            quarantine,
            jobs: runs,
            // A job file that does not load may be any series': only for tokens of every series.
            job_errors: jobs
                .errors
                .iter()
                .filter(|_| ctx.cat.whole)
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect(),
            jobs_configured: state.jobs.dir.is_some(),
            repository: state.repository.clone(),
            now_us: ctx.now_us,
        },
    ))
}

/// The changes of `snap`'s disks since the previous snapshot of its series.
fn changes(
    repo: &Repository,
    cat: &Catalogue,
    snap: &super::data::Snap,
) -> std::result::Result<(String, Vec<pages::snapshot::DiskChanges>), String> {
    let series = cat.series(snap.series());
    let at = series.iter().position(|s| s.id == snap.id).unwrap_or(0);
    let Some(prev) = at.checked_sub(1).and_then(|i| series.get(i)) else {
        return Err("This is the first snapshot of its series.".into());
    };
    let run = || -> Result<Vec<pages::snapshot::DiskChanges>> {
        let a = repo.load_snapshot(prev.id)?;
        let b = repo.load_snapshot(snap.id)?;
        let mut out = Vec::new();
        for d in &b.header.disks {
            if !a.header.disks.iter().any(|x| x.name == d.name) {
                continue;
            }
            let diff = diff_disks(repo, DiskView::of(&a, &d.name)?, DiskView::of(&b, &d.name)?)?;
            out.push(pages::snapshot::DiskChanges {
                name: d.name.clone(),
                size: d.size,
                extents: diff.extents(),
            });
        }
        Ok(out)
    };
    run()
        .map(|d| (prev.id.to_hex(), d))
        .map_err(|e| e.to_string())
}

fn protect(repo: &Repository, token: &TokenEntry, id: SnapshotId, on: bool) -> Result<Outcome> {
    let cat = catalogue(repo, token)?;
    visible(&cat, id)?;
    set_protected(repo, id, on)?;
    let done = if on { "protected" } else { "unprotected" };
    Ok(Outcome::Redirect(format!(
        "/ui/snapshot/{}?done={done}",
        id.to_hex()
    )))
}

fn forget(repo: &Repository, token: &TokenEntry, id: SnapshotId, expected: u64) -> Result<Outcome> {
    let cat = catalogue(repo, token)?;
    let series = visible(&cat, id)?.series().to_string();
    let plan = plan_forget(repo, &[id], false)?;
    if plan.freed_stored_bytes != expected {
        // Something changed since the page was shown: show the figures again.
        return Ok(Outcome::Redirect(format!(
            "/ui/snapshot/{}/forget?changed=1",
            id.to_hex()
        )));
    }
    apply_forget(repo, &plan)?;
    // Back to the series, or to the overview when that was its last snapshot.
    let to = if cat.series(&series).len() > 1 {
        format!("/ui/series/{series}")
    } else {
        "/ui/".to_string()
    };
    Ok(Outcome::Redirect(format!(
        "{to}?done=forgotten&id={}&freed={}",
        id.to_hex(),
        plan.freed_stored_bytes
    )))
}
