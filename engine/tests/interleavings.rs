//! Model-based random interleavings of writers through the engine (SPEC.md §8, §13):
//! backups of several series at once, each paused between storing its last block and
//! publishing; compactions in steps, paused between steps; forgets; crashes of paused
//! backups and compactions; and restores, in an order a seeded generator picks, against a
//! model of the published snapshots and the image each holds.
//!
//! Every operation that pauses runs on a thread of its own and waits at its pause point
//! until the scheduler lets it go on, so exactly one operation runs at a time and a seed
//! gives one interleaving. Images draw their blocks from a small pool, so backups deduplicate
//! against each other's new blocks and against the dead blocks of forgotten snapshots, and
//! compactions (no grace period) reclaim what backups in flight looked up.
//!
//! What must hold: a backup publishes, or fails only because a compaction reclaimed an
//! object it deduplicated against (SPEC.md §13, race 6), a crash, or its series being busy;
//! nothing published is ever lost: after every step the catalog is the model's, and at the
//! end `check` recomputes every count from scratch, a compaction reclaims everything
//! unreferenced, and every snapshot of the model restores byte for byte.
//!
//! `TESSERA_INTERLEAVE_STEPS` (default 150) and `TESSERA_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use common::{assert_restores, assert_sound, catalog, raw_source, writer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::crypto::NoSecret;
use tessera_engine::ops::backup::{backup_sources, BackupRequest};
use tessera_engine::ops::compact::compact;
use tessera_engine::ops::forget::{apply_forget, plan_forget};
use tessera_engine::repo::RepoStorage;
use tessera_engine::{Error, InitOptions, NoProgress, Progress, Repository};
use tessera_format::SnapshotId;

mod common;

const BLOCK: usize = 64 << 10;
const POOL: u64 = 24;
const SERIES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Block `n` of the pool: incompressible, distinct for distinct `n`.
fn pool_block(n: u64) -> Vec<u8> {
    let mut x = (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(BLOCK);
    while out.len() < BLOCK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// What the scheduler tells a paused operation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Go {
    On,
    Crash,
}

/// What an operation's thread tells the scheduler.
enum Event {
    Paused,
    Done(Result<Option<SnapshotId>, String>),
}

/// The pause point of one operation.
struct Gate {
    events: Sender<Event>,
    go: Mutex<Receiver<Go>>,
}

impl Gate {
    /// Tells the scheduler this operation paused; returns what it said to do.
    fn pause(&self) -> Go {
        self.events.send(Event::Paused).unwrap();
        self.go.lock().unwrap().recv().unwrap_or(Go::Crash)
    }
}

/// A compaction's progress: pauses after every old pack it drained (between steps).
struct StepGate<'g>(&'g Gate);

/// How a crash of a compaction between two steps is simulated: the thread unwinds from the
/// pause point, running no more of the compaction (nothing after it commits).
struct CompactionCrash;

impl Progress for StepGate<'_> {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _n: u64) {
        if self.0.pause() == Go::Crash {
            std::panic::resume_unwind(Box::new(CompactionCrash));
        }
    }
    fn finish(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Backup,
    Compaction,
}

struct Op {
    kind: Kind,
    series: Option<&'static str>,
    image: Option<PathBuf>,
    go: Sender<Go>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Op {
    /// Waits for the operation's next event.
    fn next(&mut self) -> Event {
        let event = self
            .events
            .recv()
            .unwrap_or(Event::Done(Err("the thread ended without a word".into())));
        if matches!(event, Event::Done(_)) {
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
        event
    }
}

fn spawn(
    kind: Kind,
    series: Option<&'static str>,
    image: Option<PathBuf>,
    store: &RepoStorage,
) -> Op {
    let (events_tx, events) = channel();
    let (go, go_rx) = channel();
    let store = store.clone();
    let (s, img) = (series, image.clone());
    let thread = std::thread::spawn(move || {
        let gate = Gate {
            events: events_tx.clone(),
            go: Mutex::new(go_rx),
        };
        let outcome = match kind {
            Kind::Backup => run_backup(&store, s.unwrap(), img.as_deref().unwrap(), &gate),
            Kind::Compaction => {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    compact(writer(&store), 0.0, 0, false, false, &StepGate(&gate))
                }));
                match run {
                    Ok(Ok(_)) => Ok(None),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(p) if p.is::<CompactionCrash>() => Err("crashed".into()),
                    Err(p) => std::panic::resume_unwind(p),
                }
            }
        };
        let _ = events_tx.send(Event::Done(outcome));
    });
    Op {
        kind,
        series,
        image,
        go,
        events,
        thread: Some(thread),
    }
}

fn run_backup(
    store: &RepoStorage,
    series: &str,
    img: &Path,
    gate: &Gate,
) -> Result<Option<SnapshotId>, String> {
    let repo =
        Repository::open_backup_on(store.clone(), &NoSecret, series).map_err(|e| e.to_string())?;
    let hook = || match gate.pause() {
        Go::On => Ok(()),
        Go::Crash => Err(Error::Hook("crashed".into())),
    };
    let req = BackupRequest::one_disk(series, "d0", img);
    backup_sources(
        &repo,
        &req,
        &[raw_source(img)],
        None,
        Some(&hook),
        &NoProgress,
    )
    .map(|o| Some(o.id))
    .map_err(|e| e.to_string())
}

fn reader(store: &RepoStorage) -> Repository {
    Repository::open_on(store.clone(), &NoSecret).unwrap()
}

/// Asserts that the catalog is the model's.
fn assert_catalog(store: &RepoStorage, model: &BTreeMap<SnapshotId, PathBuf>, step: usize) {
    let expected: BTreeSet<SnapshotId> = model.keys().copied().collect();
    assert_eq!(
        catalog(&reader(store)),
        expected,
        "step {step}: the catalog is not the model's"
    );
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one model-based scenario: the scheduler's choices and the model's checks read together"
)]
fn random_interleavings_of_backups_compactions_forgets_and_crashes() {
    let seed = std::env::var("TESSERA_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (reproduce with TESSERA_SEED={seed})");
    let steps = env_u64("TESSERA_INTERLEAVE_STEPS", 150) as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    let store = common::storage(&root, 256 << 10);
    let out = dir.path().join("restored");

    let mut model: BTreeMap<SnapshotId, PathBuf> = BTreeMap::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut images = 0usize;
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    // Whether a compaction ran since each in-flight backup started: only then may it fail
    // with "reclaimed meanwhile" (race 6).
    let mut compacted_during: Vec<bool> = Vec::new();

    let settle = |op: &Op,
                  event: Event,
                  compacted: bool,
                  model: &mut BTreeMap<SnapshotId, PathBuf>,
                  tally: &mut BTreeMap<&str, usize>,
                  others_same_series: bool,
                  other_compaction: bool|
     -> bool {
        match event {
            Event::Paused => true,
            Event::Done(Ok(Some(id))) => {
                model.insert(id, op.image.clone().unwrap());
                *tally.entry("backups published").or_default() += 1;
                false
            }
            Event::Done(Ok(None)) => {
                *tally.entry("compactions finished").or_default() += 1;
                false
            }
            Event::Done(Err(e)) => {
                let why = if e.contains("crashed") {
                    "crashed"
                } else if op.kind == Kind::Backup && compacted && e.contains("reclaimed it") {
                    "backups refused: reclaimed meanwhile (race 6)"
                } else if op.kind == Kind::Backup
                    && others_same_series
                    && e.contains("is being backed up")
                {
                    "backups refused: series busy"
                } else if op.kind == Kind::Compaction
                    && other_compaction
                    && e.contains("a compaction is running")
                {
                    "compactions refused: another runs"
                } else {
                    panic!("{:?} of {:?} failed: {e}", op.kind, op.series)
                };
                *tally.entry(why).or_default() += 1;
                false
            }
        }
    };

    for step in 0..steps {
        let choice = rng.gen_range(0..100);
        match choice {
            // Start a backup of a random series.
            0..=29 => {
                let series = SERIES[rng.gen_range(0..SERIES.len())];
                let blocks = rng.gen_range(4..16);
                let mut bytes = Vec::with_capacity(blocks * BLOCK);
                for _ in 0..blocks {
                    bytes.extend(pool_block(rng.gen_range(0..POOL)));
                }
                let img = dir.path().join(format!("img{images}"));
                images += 1;
                std::fs::write(&img, bytes).unwrap();
                let same = ops.iter().any(|o| o.series == Some(series));
                let mut op = spawn(Kind::Backup, Some(series), Some(img), &store);
                let event = op.next();
                if settle(&op, event, false, &mut model, &mut tally, same, false) {
                    ops.push(op);
                    compacted_during.push(false);
                }
                *tally.entry("backups started").or_default() += 1;
            }
            // Start a compaction.
            30..=44 => {
                let other = ops.iter().any(|o| o.kind == Kind::Compaction);
                if other && rng.gen_bool(0.8) {
                    continue;
                }
                let mut op = spawn(Kind::Compaction, None, None, &store);
                let event = op.next();
                compacted_during.fill(true);
                if settle(&op, event, true, &mut model, &mut tally, false, other) {
                    ops.push(op);
                    compacted_during.push(true);
                }
                *tally.entry("compactions started").or_default() += 1;
            }
            // Let a paused operation go on, or crash it.
            45..=79 if !ops.is_empty() => {
                let i = rng.gen_range(0..ops.len());
                let crash = rng.gen_bool(0.15);
                let go = if crash { Go::Crash } else { Go::On };
                if ops[i].kind == Kind::Compaction {
                    compacted_during.fill(true);
                }
                ops[i].go.send(go).unwrap();
                let event = ops[i].next();
                let compacted = compacted_during[i];
                let op = ops.remove(i);
                compacted_during.remove(i);
                if settle(&op, event, compacted, &mut model, &mut tally, false, false) {
                    ops.insert(i, op);
                    compacted_during.insert(i, compacted);
                }
                if crash {
                    *tally.entry("crashes").or_default() += 1;
                }
            }
            // Forget a published snapshot.
            80..=91 if !model.is_empty() => {
                let id = *model.keys().nth(rng.gen_range(0..model.len())).unwrap();
                let w = writer(&store);
                let plan = plan_forget(&w, &[id], false).unwrap();
                apply_forget(&w, &plan).unwrap();
                model.remove(&id);
                *tally.entry("forgets").or_default() += 1;
            }
            // Restore a published snapshot while the others are paused.
            _ if !model.is_empty() => {
                let (id, img) = model.iter().nth(rng.gen_range(0..model.len())).unwrap();
                assert_restores(&reader(&store), *id, img, &out);
                *tally.entry("restores").or_default() += 1;
            }
            _ => {}
        }
        assert_catalog(&store, &model, step);
    }
    // Let everything still paused finish.
    while let Some(mut op) = ops.pop() {
        let compacted = compacted_during.pop().unwrap();
        loop {
            op.go.send(Go::On).unwrap();
            let event = op.next();
            if !settle(
                &op,
                event,
                compacted || op.kind == Kind::Compaction,
                &mut model,
                &mut tally,
                false,
                false,
            ) {
                break;
            }
        }
    }
    assert_catalog(&store, &model, steps);
    eprintln!("seed {seed}: {tally:?}");

    let expect: Vec<(SnapshotId, &Path)> =
        model.iter().map(|(id, img)| (*id, img.as_path())).collect();
    assert_sound(&store, &expect);
    assert!(
        tally.get("backups published").copied().unwrap_or(0) > 0,
        "no backup published: {tally:?}"
    );
}
