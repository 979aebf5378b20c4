//! `kill -9` of a writer at a random moment *inside* its operation, with proof that the kills
//! landed there: a kill loop whose kills all land after the process exited proves nothing.
//!
//! Every writer holds a lock from the start of its operation to its end — a backup its
//! series' lock (`REPO/locks/series-*.lock`), the others the writer lock `REPO/lock` (SPEC.md
//! §8): it writes `pid=PID` into the file when it takes the lock and clears the file when it
//! lets go (engine `lock.rs`), which a process killed by SIGKILL never does. So a kill
//! *interrupted the operation* exactly when the process died of the signal and a lock file
//! still names it afterwards: a test made after the fact, which no race can fool.
//!
//! [`KillLoop`] measures how long an uninterrupted run holds the lock, kills each trial's run
//! at a random moment of that span after it took the lock, classifies each kill ([`Landed`]),
//! and at the end prints the tally and fails unless at least one kill interrupted the
//! operation. The number of trials is [`kill_trials`] (`TESSERA_KILL_TRIALS`).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    env_usize, finish_child, lock_says, seed, series_lock_says, tessera_cmd, wait_until, Out,
};

/// Whether `pid` holds the lock of its operation on `repo` (see the module docs).
fn holds_its_lock(repo: &Path, pid: u32) -> bool {
    series_lock_says(repo, pid) || lock_says(repo, pid)
}

/// Trials of each kill loop unless `TESSERA_KILL_TRIALS` says otherwise.
pub const DEFAULT_KILL_TRIALS: usize = 4;

/// The number of trials of a kill loop: `TESSERA_KILL_TRIALS`, else
/// [`DEFAULT_KILL_TRIALS`]. At least one: a kill loop without kills proves nothing.
pub fn kill_trials() -> usize {
    let trials = env_usize("TESSERA_KILL_TRIALS", DEFAULT_KILL_TRIALS);
    assert!(trials > 0, "TESSERA_KILL_TRIALS must be at least 1");
    trials
}

/// Where a kill landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// The writer died of the signal while it held the lock: the kill interrupted it.
    Inside,
    /// The writer died of the signal after it had let go of the lock (while it exited).
    AfterUnlock,
    /// The writer finished by itself first (successfully: [`KillLoop::kill`] checks).
    Finished,
}

/// One kill of a trial.
#[derive(Debug)]
pub struct Kill {
    /// Where it landed.
    pub landed: Landed,
    /// How long after the writer was seen holding the lock the signal was sent.
    pub delay: Duration,
    /// The writer's exit code and output.
    pub out: Out,
}

/// A kill loop in progress: the span to draw kill moments from, and the tally.
pub struct KillLoop {
    name: String,
    window: Duration,
    rng: StdRng,
    landed: Vec<Landed>,
}

/// Spawns `tessera ARGS`, a writer on `repo`, and waits until it holds the lock of `repo`;
/// `None` if it exited first (its child is returned either way).
fn spawn_until_locked(repo: &Path, args: &[String]) -> (Child, Option<Instant>) {
    let mut child = tessera_cmd(args).spawn().expect("spawning tessera");
    let pid = child.id();
    let mut exited = false;
    let seen = wait_until(Duration::from_mins(1), || {
        exited = child.try_wait().expect("polling the writer").is_some();
        exited || holds_its_lock(repo, pid)
    });
    assert!(
        seen,
        "`tessera {}` neither took the lock of {} nor exited within 60 s",
        args.join(" "),
        repo.display()
    );
    let locked_at = Instant::now();
    (child, (!exited).then_some(locked_at))
}

impl KillLoop {
    /// Runs `tessera ARGS` (a writer on `repo`) to completion, measuring how long it holds
    /// the lock; returns the loop and the run's output (asserted successful).
    ///
    /// # Panics
    ///
    /// When the run fails, or exits before it is seen holding the lock (an operation that
    /// short cannot be interrupted on purpose: give it more work).
    pub fn calibrate(name: &str, repo: &Path, args: &[String]) -> (Self, Out) {
        let (child, locked_at) = spawn_until_locked(repo, args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = finish_child(child, &refs);
        let window = locked_at.map(|at| at.elapsed());
        out.ok();
        let window = window.unwrap_or_else(|| {
            panic!("[{name}] the uninterrupted run exited before it was seen holding the lock")
        });
        eprintln!("[{name}] an uninterrupted run holds its lock for {window:?}");
        let this = Self {
            name: name.to_string(),
            window,
            rng: StdRng::seed_from_u64(seed(&format!("{name}/kill moments"))),
            landed: Vec::new(),
        };
        (this, out)
    }

    /// Runs `tessera ARGS` (a writer on `repo`) and, at a random moment of the calibrated
    /// span after it took the lock, SIGKILLs it, unless it finished first; records and
    /// returns where the kill landed.
    ///
    /// # Panics
    ///
    /// When the writer finished by itself but failed, or died of anything but the signal.
    pub fn kill(&mut self, trial: usize, repo: &Path, args: &[String]) -> Kill {
        let name = &self.name;
        let micros = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(self.rng.gen_range(0..micros.max(1)));
        let (mut child, locked_at) = spawn_until_locked(repo, args);
        let pid = child.id();
        if let Some(at) = locked_at {
            std::thread::sleep(delay.saturating_sub(at.elapsed()));
            if child.try_wait().expect("polling the writer").is_none() {
                child.kill().expect("sending SIGKILL");
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = finish_child(child, &refs);
        let landed = if out.code == 128 + 9 {
            if holds_its_lock(repo, pid) {
                Landed::Inside
            } else {
                Landed::AfterUnlock
            }
        } else {
            assert_eq!(
                out.code, 0,
                "[{name} trial {trial}] the writer was not killed and failed: {out}"
            );
            Landed::Finished
        };
        eprintln!("[{name} trial {trial}] kill {delay:?} after it took the lock: {landed:?}");
        self.landed.push(landed);
        Kill { landed, delay, out }
    }

    /// Prints the tally and asserts that at least one kill interrupted the operation.
    ///
    /// # Panics
    ///
    /// When none did.
    pub fn finish(self) {
        let count = |l: Landed| self.landed.iter().filter(|&&x| x == l).count();
        let (inside, after, finished) = (
            count(Landed::Inside),
            count(Landed::AfterUnlock),
            count(Landed::Finished),
        );
        let name = &self.name;
        let tally = format!(
            "[{name}] {inside} of {} kills interrupted the running operation ({after} landed \
             after it let go of the lock, {finished} after it finished; lock held {:?})",
            self.landed.len(),
            self.window
        );
        eprintln!("{tally}");
        assert!(inside > 0, "{tally}: the kill loop proved nothing");
    }
}
