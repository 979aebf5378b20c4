//! The record of one run (SPEC.md §26.3, §26.4): what `job run --json` prints, what the
//! history keeps, what notifications carry and what the metrics are computed from.

use serde::{Deserialize, Serialize};

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Still running (or killed: see [`RunRecord::settled`]).
    Running,
    /// Every step succeeded.
    Success,
    /// Every step succeeded, with warnings.
    Warning,
    /// Verify found damage.
    Damage,
    /// A step failed.
    Failure,
    /// The process ended during the run.
    Interrupted,
}

impl Outcome {
    /// The name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Damage => "damage",
            Self::Failure => "failure",
            Self::Interrupted => "interrupted",
        }
    }

    /// Every outcome, for the metrics' state set.
    pub const ALL: [Self; 6] = [
        Self::Running,
        Self::Success,
        Self::Warning,
        Self::Damage,
        Self::Failure,
        Self::Interrupted,
    ];

    /// Success or warning: the backup is there and everything asked for was done.
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Success | Self::Warning)
    }
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `job run`.
    Manual,
    /// The daemon, at a slot.
    Schedule,
    /// The daemon, once for slots missed while it was down.
    CatchUp,
}

/// A step's fate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// `hook-before`, `backup`, `hook-after`, `prune`, `verify`, `sync`, `stats`.
    pub step: String,
    /// `ok`, `failed`, `skipped` or `damage`.
    pub outcome: String,
    /// How long it took.
    pub duration_ms: u64,
    /// One line on what it did.
    pub detail: String,
}

/// The failing step and its error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The step.
    pub step: String,
    /// The error's kind (SPEC.md §11).
    pub kind: String,
    /// The error's message.
    pub message: String,
}

/// What a hook did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRecord {
    /// `before` or `after`.
    pub phase: String,
    /// Its exit code (`None`: killed by a signal, timed out, or not started).
    pub exit_code: Option<i32>,
    /// Whether it was killed at its timeout.
    pub timed_out: bool,
    /// The last 4 KiB of its stdout and stderr.
    pub output: String,
}

/// What verify did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// `sample` or `full`.
    pub kind: String,
    /// Objects read.
    pub objects_read: u64,
    /// Problems found.
    pub problems: u64,
    /// Damaged objects.
    pub damaged_objects: u64,
}

/// What prune did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneRecord {
    /// Snapshots kept.
    pub kept: u64,
    /// Snapshots forgotten.
    pub forgotten: u64,
    /// Their ids.
    pub forgotten_ids: Vec<String>,
}

/// What one sync did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The target, as written in the job file.
    pub to: String,
    /// Snapshots copied.
    pub snapshots_copied: u64,
    /// Snapshots the target had.
    pub snapshots_skipped: u64,
}

/// One notification sent (or not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// `webhook #N` or `email #N` (its place in the file; never its URL, which may hold a
    /// token).
    pub target: String,
    /// The event.
    pub event: String,
    /// Whether it was delivered.
    pub ok: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: Option<String>,
}

/// The first 16 characters of an id (all of a shorter or odd one: records are read back
/// from disk).
pub fn short(id: &str) -> &str {
    id.char_indices().nth(16).map_or(id, |(i, _)| &id[..i])
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job.
    pub job: String,
    /// Its series.
    pub series: String,
    /// Its repository.
    pub repository: String,
    /// The run's id: its UTC start time, sortable.
    pub id: String,
    /// Why it ran.
    pub trigger: Trigger,
    /// The slot a scheduled run was for.
    pub slot: Option<String>,
    /// The reference mode used.
    pub mode: String,
    /// Start (RFC 3339).
    pub started: String,
    /// Start (µs since the epoch).
    pub started_us: i64,
    /// End (RFC 3339).
    pub finished: Option<String>,
    /// How long it took (so far).
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The step running, or the one that failed.
    pub step: Option<String>,
    /// The failing step and its error.
    pub failure: Option<Failure>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Every step so far.
    pub steps: Vec<StepRecord>,
    /// The backup's report (as `tessera backup --json`).
    pub backup: Option<serde_json::Value>,
    /// What prune did.
    pub prune: Option<PruneRecord>,
    /// What verify did.
    pub verify: Option<VerifyRecord>,
    /// What each sync did.
    pub sync: Vec<SyncRecord>,
    /// The repository's figures after the run (as `tessera stats --json`).
    pub repository_stats: Option<serde_json::Value>,
    /// What the hooks did.
    pub hooks: Vec<HookRecord>,
    /// Notifications sent about this run.
    pub notifications: Vec<NotificationRecord>,
    /// The process that ran it.
    pub pid: u32,
}

impl RunRecord {
    /// The one-line summary notifications and logs use.
    pub fn summary(&self) -> String {
        match (&self.failure, self.outcome) {
            (Some(f), _) => format!(
                "job {}: {} failed ({}): {}",
                self.job, f.step, f.kind, f.message
            ),
            (None, Outcome::Warning) => format!(
                "job {}: succeeded with warnings: {}",
                self.job,
                self.warnings.join("; ")
            ),
            (None, Outcome::Interrupted) => format!(
                "job {}: interrupted{}",
                self.job,
                self.step
                    .as_deref()
                    .map(|s| format!(" during {s}"))
                    .unwrap_or_default()
            ),
            (None, o) => {
                let snapshot = self
                    .snapshot()
                    .map(|s| format!(", snapshot {}", short(s)))
                    .unwrap_or_default();
                format!(
                    "job {}: {} in {:.1} s{snapshot}",
                    self.job,
                    o.as_str(),
                    self.duration_ms as f64 / 1000.0
                )
            }
        }
    }

    /// The snapshot the run's backup made (hex), if it made one.
    pub fn snapshot(&self) -> Option<&str> {
        self.backup.as_ref()?.get("snapshot")?.as_str()
    }

    /// Bytes the backup read, added to packs, and found already stored.
    pub fn backup_bytes(&self) -> Option<(u64, u64, u64)> {
        let disks = self.backup.as_ref()?.get("disks")?.as_array()?;
        let sum = |field: &str| {
            disks
                .iter()
                .filter_map(|d| d.get(field).and_then(serde_json::Value::as_u64))
                .sum::<u64>()
        };
        let read = sum("bytes_read");
        Some((
            read,
            sum("new_stored_bytes"),
            read.saturating_sub(sum("new_raw_bytes")),
        ))
    }
}
