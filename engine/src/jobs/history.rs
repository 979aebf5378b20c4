//! Where runs are recorded (SPEC.md §26.4):
//! `STATE/jobs/NAME/{lock,runs/ID.json,stale.json,verify.json,success.json}`.
//!
//! Crash reasoning: a record is replaced whole through the durable-write protocol
//! (`storage::durable`), so after a crash at any moment it is the last version written: the
//! run's start, or its last completed step. A record that still says `running` when its
//! job's lock is free belongs to a process that died (the kernel drops a `flock` with its
//! holder); whoever takes the lock next rewrites it as `interrupted` ([`JobState::settle`]).

use std::path::{Path, PathBuf};

use super::record::{Outcome, RunRecord};
use crate::error::{Error, IoContext as _, Result};
use crate::lock::WriterLock;
use crate::storage::durable;
use crate::storage::fs::OsFs;
use crate::storage::PutMode;

/// Replaces `DIR/NAME` with `bytes` through the durable-write protocol, staged under a name
/// unique to this write (`.NAME.PID-N.tmp`: a daemon's scheduler may settle a record its run
/// is rewriting).
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = dir.join(name);
    let staged = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    durable::write_file(&OsFs, &staged, &target, bytes, PutMode::Replace)
        .ctx(|| format!("writing {}", target.display()))
}

/// The state directory of root (and of the systemd unit).
pub const ROOT_STATE_DIR: &str = "/var/lib/tessera";

/// Records kept per job.
pub const KEEP_RECORDS: usize = 1000;

/// Largest record read back (a record is a few KiB; a larger file is not ours).
const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Whether process `pid` exists and is not a zombie (a killed holder its parent has not
/// reaped yet holds no lock any more).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`: COMM may hold spaces and parentheses; STATE follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `explicit`, else `$TESSERA_STATE_DIR`, else `$XDG_STATE_HOME/tessera`, else for root
    /// `/var/lib/tessera` (the systemd unit's, so that `sudo tessera job run` and the
    /// daemon share one lock and one history), else `~/.local/state/tessera`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(p) = explicit {
            return Ok(Self(p.to_path_buf()));
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = env("TESSERA_STATE_DIR") {
            return Ok(Self(p));
        }
        if let Some(p) = env("XDG_STATE_HOME") {
            return Ok(Self(p.join("tessera")));
        }
        if rustix::process::geteuid().is_root() {
            return Ok(Self(PathBuf::from(ROOT_STATE_DIR)));
        }
        env("HOME")
            .map(|h| Self(h.join(".local/state/tessera")))
            .ok_or_else(|| {
                Error::Usage(
                    "no state directory: give --state-dir or set TESSERA_STATE_DIR (HOME is not set)"
                        .into(),
                )
            })
    }

    /// One job's state.
    pub fn job(&self, name: &str) -> JobState {
        JobState {
            name: name.to_string(),
            dir: self.0.join("jobs").join(name),
        }
    }
}

/// One job's part of the state directory.
#[derive(Debug, Clone)]
pub struct JobState {
    /// The job.
    pub name: String,
    /// `STATE/jobs/NAME`.
    pub dir: PathBuf,
}

impl JobState {
    fn runs(&self) -> PathBuf {
        self.dir.join("runs")
    }

    /// Takes the job's lock, or fails with [`Error::JobRunning`] (exit 3).
    pub fn lock(&self) -> Result<WriterLock> {
        durable::create_dir_all(&OsFs, &self.runs())
            .ctx(|| format!("creating {}", self.runs().display()))?;
        WriterLock::acquire_at(&self.dir.join("lock")).map_err(|e| match e {
            Error::Locked { pid, host, since } => Error::JobRunning {
                job: self.name.clone(),
                pid,
                host,
                since,
            },
            other => other,
        })
    }

    /// Whether a run holds the lock now, judged without touching the lock (a reader that
    /// took it, even shared and briefly, could make a starting run fail as "running"): the
    /// holder writes its PID into the lock file and clears it when done; a killed holder's
    /// PID is left, so the process must also still exist.
    pub fn is_running(&self) -> bool {
        let text = std::fs::read_to_string(self.dir.join("lock")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(process_alive)
    }

    /// Writes `record` durably (replacing its previous version).
    pub fn write(&self, record: &RunRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::Internal(format!("encoding a run record: {e}")))?;
        replace(&self.runs(), &format!("{}.json", record.id), &bytes)
    }

    /// Record file names, oldest first (staged files and strangers are ignored).
    fn record_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let dir = match std::fs::read_dir(self.runs()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(Error::io(format!("listing {}", self.runs().display()), e)),
        };
        for entry in dir {
            let entry = entry.ctx(|| format!("listing {}", self.runs().display()))?;
            if let Some(name) = entry.file_name().to_str() {
                let json = Path::new(name).extension().is_some_and(|e| e == "json");
                if !name.starts_with('.') && json {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_record(&self, name: &str) -> Result<RunRecord> {
        use std::io::Read as _;
        let path = self.runs().join(name);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_RECORD_BYTES).read_to_end(&mut bytes))
            .ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                format!("reading {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a run record: {e}"),
                ),
            )
        })
    }

    /// Up to `limit` records, newest first; a `running` one whose lock is free is shown as
    /// `interrupted`. Unreadable records are skipped with a warning in `skipped`.
    pub fn history(&self, limit: usize) -> Result<(Vec<RunRecord>, Vec<String>)> {
        let running = self.is_running();
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for name in self.record_names()?.iter().rev() {
            if out.len() >= limit {
                break;
            }
            match self.read_record(name) {
                Ok(mut r) => {
                    if r.outcome == Outcome::Running && !running {
                        r.outcome = Outcome::Interrupted;
                    }
                    out.push(r);
                }
                Err(e) => skipped.push(e.to_string()),
            }
        }
        Ok((out, skipped))
    }

    /// The newest record satisfying `pred` (read newest first, one at a time; unreadable
    /// ones skipped).
    pub fn newest(&self, pred: impl Fn(&RunRecord) -> bool) -> Result<Option<RunRecord>> {
        for name in self.record_names()?.iter().rev() {
            if let Ok(r) = self.read_record(name) {
                if pred(&r) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// The oldest record kept, if readable.
    pub fn oldest(&self) -> Option<RunRecord> {
        let names = self.record_names().ok()?;
        self.read_record(names.first()?).ok()
    }

    /// Rewrites records left `running` as `interrupted` (call with the lock held) and
    /// returns them; removes records beyond the newest [`KEEP_RECORDS`].
    pub fn settle(&self, _lock: &WriterLock) -> Result<Vec<RunRecord>> {
        let names = self.record_names()?;
        let mut settled = Vec::new();
        for name in names.iter().rev().take(16) {
            let Ok(mut r) = self.read_record(name) else {
                continue;
            };
            if r.outcome == Outcome::Running {
                r.outcome = Outcome::Interrupted;
                self.write(&r)?;
                settled.push(r);
            }
        }
        if names.len() > KEEP_RECORDS {
            for name in &names[..names.len() - KEEP_RECORDS] {
                let _ = std::fs::remove_file(self.runs().join(name));
            }
        }
        // Staged records of killed writers (nobody else writes here while we hold the lock).
        if let Ok(dir) = std::fs::read_dir(self.runs()) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(settled)
    }

    /// A small JSON summary file of the job (`stale.json`, `verify.json`), if readable.
    fn summary(&self, file: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(file)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces a summary file durably (creating the job's directory if need be).
    fn write_summary(&self, file: &str, body: &serde_json::Value) -> Result<()> {
        durable::create_dir_all(&OsFs, &self.dir)
            .ctx(|| format!("creating {}", self.dir.display()))?;
        replace(&self.dir, file, body.to_string().as_bytes())
    }

    /// The stale episode a notification was last sent for: `Some(last success)` (`None`
    /// inside: the job never succeeded), or `None` if none was sent (SPEC.md §26.5).
    pub fn stale_sent_for(&self) -> Option<Option<i64>> {
        let v = self.summary("stale.json")?;
        Some(v.get("last_success_us")?.as_i64())
    }

    /// Remembers that `stale` was sent for the episode after `last_success_us`.
    pub fn mark_stale_sent(&self, last_success_us: Option<i64>) -> Result<()> {
        self.write_summary(
            "stale.json",
            &serde_json::json!({
                "last_success_us": last_success_us,
                "sent": crate::time::now_rfc3339(),
            }),
        )
    }

    /// When the newest successful run started (µs), kept beside the records (which are
    /// pruned); else the newest successful record's.
    pub fn last_success(&self) -> Option<i64> {
        self.summary("success.json")
            .and_then(|v| v.get("started_us")?.as_i64())
            .or_else(|| {
                self.newest(|r| r.outcome.succeeded())
                    .ok()
                    .flatten()
                    .map(|r| r.started_us)
            })
    }

    /// Records a successful run that started at `us`.
    pub fn mark_success(&self, us: i64) -> Result<()> {
        self.write_summary("success.json", &serde_json::json!({ "started_us": us }))
    }

    /// When the newest verify of each kind ran (µs): `(sample, full)`. Kept beside the
    /// history, so the verify policy holds beyond the records kept.
    pub fn verified(&self) -> (Option<i64>, Option<i64>) {
        let v = self.summary("verify.json");
        let at = |k: &str| v.as_ref().and_then(|v| v.get(k)?.as_i64());
        (at("sample_us"), at("full_us"))
    }

    /// Records a verify of `kind` (`sample` or `full`) at `us`.
    pub fn mark_verified(&self, kind: &str, us: i64) -> Result<()> {
        let (mut sample, mut full) = self.verified();
        if kind == "full" {
            full = Some(us);
        } else {
            sample = Some(us);
        }
        self.write_summary(
            "verify.json",
            &serde_json::json!({ "sample_us": sample, "full_us": full }),
        )
    }
}
