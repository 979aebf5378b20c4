//! Pushes through `tessera serve` racing retention on the served repository (SPEC.md §13
//! "Compaction and reader leases" and its dead objects, §22.3): a model-based test with
//! seeded random interleavings. It proves that **a push whose `have`→`publish` window is
//! shorter than the compaction grace period publishes, whatever `forget`, `compact` and
//! killed compactions run on the server's repository in between**, and that once the grace
//! has passed compaction reclaims every dead byte (nothing leaks).
//!
//! ## The race
//!
//! A push client asks the server `POST /v1/have/KIND` which objects it holds, skips those,
//! `put`s the rest and `publish`es its snapshot file. `serve` opens the repository as the
//! writer only during each request, so an operator's `forget` and `compact` may run between
//! two requests. Without two-phase deletion, an object the server said it held (live at
//! `have` time and forgotten since, or already dead at count 0) is dropped by compaction
//! and the publish is refused ("names Chunk ... which was never stored here"). With it,
//! the index records when each object died, `compact --grace G` keeps objects that died
//! less than G ago (and packs indexed less than G ago), and an object held dead is either
//! answered "not held" by `have` or has its death renewed when the server says it is held;
//! a `put` of an object held dead renews its death instead of storing it again. The test
//! checks the outcome, not which of these the server does.
//!
//! ## Shape
//!
//! - SRC, a local repository: two series, each a chain of generations of a 4 MiB image
//!   (a few random writes between generations, so consecutive snapshots share most chunks),
//!   made up front with the binary.
//! - DST, an empty repository served by `tessera serve --token-file` (an admin token).
//! - Every push is the engine's [`transfer`] of one SRC snapshot into a [`RacingSink`]: the
//!   HTTP client ([`Remote`]) wrapped so that an interference closure runs at a chosen
//!   [`Point`]: before the first `put` (after every `have` of the snapshot), or before
//!   `publish` (after every `put` has been acknowledged). Each series' generations are
//!   pushed in order (a client publishes only snapshots newer than its series' newest).
//! - Interference ([`Op`]) runs on DST through the binary: `forget` of a random published
//!   snapshot, `compact --max-unused 0% --grace G`, a compaction SIGKILLed at a random moment
//!   after it took the writer lock (the next writer's recovery, often the server's own
//!   `put` or `publish`, must clean up), and, between pushes only, sleeps past G so that
//!   packs and deaths age out of the grace. Inside a push's window nothing sleeps: the
//!   contract covers only windows shorter than G, and each window is measured.
//! - Forced interleavings, once each at a random push besides the random steps:
//!   **(a)** the series' snapshots but its newest are forgotten and G passes (every pack
//!   older than G, some objects long dead); `have` reports chunks of the newest held; it is
//!   forgotten and DST compacted before the first `put`, with no pack young enough to be
//!   left alone: a compaction deciding by pack age and counts alone drops the held chunks,
//!   and one that rewrites their packs (for the long-dead objects beside them) must copy
//!   them; **(b)** the series' published snapshots are forgotten and G passes (objects dead
//!   and packs old) before the push starts; DST is compacted between the last `put` and
//!   `publish`; **(k)** a compaction is SIGKILLed just before `publish`, so the server's
//!   publish is the writer that recovers. Each checks that it happened as meant: (a) that
//!   `have` reported chunks of the forgotten snapshots held and the compaction left no pack
//!   alone for its age, (b) that the pushed snapshot shares chunks with the forgotten ones.
//!
//! ## Model and assertions
//!
//! The model is the set of published and not forgotten DST snapshots, each with its
//! generation's SHA-256, pages and chunks. After every push: the transfer succeeded (a
//! refused publish is the bug), and `tessera list DST` equals the model. Every `have`
//! answer is compared with the model: an object some model snapshot needs must be answered
//! held (deduplication; a miss is reported when it happens and fails the test after the
//! sequence, so that a refused publish, the data loss itself, is what a broken engine
//! shows first); dead objects answered held are counted on the step's line (the server may
//! say so only if it keeps them until the publish, which the publish then proves).
//! After the sequence every model snapshot restores byte for byte and `tessera verify DST`
//! is clean. Then everything but one snapshot is forgotten, G passes, and one compaction
//! must leave exactly what a fresh repository holding only that snapshot (`tessera sync`)
//! stores: the same record bytes (pack sizes minus each pack's fixed 48-byte frame), no
//! unreferenced object, no duplicate record; the snapshot still restores exactly. And some
//! compaction of the run must have copied objects that died within the grace
//! (`plan.dying_objects` of `compact --json`): the copy half of two-phase delete ran.
//!
//! ## Knobs
//!
//! - `TESSERA_RACE_STEPS`: pushes (default 12, at least 6), split evenly between the series.
//! - `TESSERA_RACE_GRACE_SECS`: the grace G given to every compaction (default 3). A push
//!   that fails after a window longer than G is reported as inconclusive: raise G on a
//!   machine too slow to forget and compact within it.
//! - `TESSERA_SEED`: the seed of every random choice (printed at the start and in failures).
//!
//! The default run takes about 30 s of its own (four to six sleeps past G are most of it),
//! plus the support library's `cargo build -p tessera-cli` check.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tessera_engine::crypto::RepoCrypto;
use tessera_engine::repo::DEFAULT_BLOCK_SIZE;
use tessera_engine::sync::checked::CheckedObject;
use tessera_engine::sync::http::client::Remote;
use tessera_engine::sync::sink::ObjectSink;
use tessera_engine::sync::source::{Catalog, SnapshotSummary};
use tessera_engine::sync::transfer::transfer;
use tessera_engine::sync::{Selection, SyncOptions, SyncReport};
use tessera_engine::{NoProgress, Repository, SnapshotRef};
use tessera_format::{IdScheme, ObjectKind, Snapshot, SnapshotId};
use tessera_tests::{
    assert_no_duplicates, backup_json, block_digests, env_usize, finish_child, hex, init_repo,
    list_ids, lock_says, make_image, mutate, pack_bytes, restored_sha, seed, sha256_file,
    snapshot_id, start_serve, tessera, tessera_cmd, token_file, verify, wait_until, DataGen,
    ImageSpec,
};

const MIB: u64 = 1 << 20;
/// Size of every image generation.
const IMAGE_SIZE: u64 = 4 * MIB;
/// The series of SRC.
const SERIES: [&str; 2] = ["alpha", "beta"];
/// The fixed bytes of a pack besides its records and footer entries: the 16-byte header
/// and the 32-byte trailer (SPEC.md §4).
const PACK_FRAME_BYTES: u64 = 48;
/// A digest no block hashes to, asked for only to wait for the client's `put` in flight.
const SETTLE_DIGEST: [u8; 32] = [0x5e; 32];
/// How much longer than the grace a sleep "past the grace" lasts.
const GRACE_MARGIN: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// SRC: the generations to push
// ---------------------------------------------------------------------------------------

/// One generation of a series' image, backed up into SRC.
struct Generation {
    /// Index into [`SERIES`].
    series: usize,
    /// Position in its series, 0 = oldest.
    number: usize,
    /// Snapshot id (hex).
    id: String,
    /// SHA-256 of the image.
    sha: String,
    /// The manifest pages the snapshot names.
    pages: HashSet<[u8; 32]>,
    /// The chunks its pages name: the digests of the image's non-zero blocks.
    chunks: HashSet<[u8; 32]>,
}

/// SRC and what it holds.
struct Source {
    path: PathBuf,
    /// SRC opened read-only through the engine: the object source of every push.
    repo: Repository,
    gens: Vec<Generation>,
    /// Per series, its generations (indices into `gens`), oldest first.
    chains: Vec<Vec<usize>>,
}

/// Makes SRC with `counts[s]` generations of series `s` (each series one evolving image).
fn build_source(work: &Path, data: &mut DataGen, counts: &[usize]) -> Source {
    let path = work.join("src");
    init_repo(&path, &[]);
    let mut gens = Vec::new();
    let mut chains = Vec::new();
    for (series, &count) in counts.iter().enumerate() {
        let image = work.join(format!("{}.img", SERIES[series]));
        make_image(&image, ImageSpec::mixed(IMAGE_SIZE), data);
        let mut chain = Vec::new();
        for number in 0..count {
            if number > 0 {
                let writes = data.rng.gen_range(2..=6);
                mutate(&image, data, writes, 96 * 1024, (1, 3, 3));
            }
            chain.push(gens.len());
            gens.push(back_up_generation(&path, series, number, &image));
        }
        chains.push(chain);
    }
    let repo = Repository::open(&path).unwrap_or_else(|e| panic!("opening SRC read-only: {e}"));
    Source {
        path,
        repo,
        gens,
        chains,
    }
}

/// Backs `image` up into SRC as the next generation of `series`; reads back the pages its
/// snapshot file names and hashes the image's blocks for its chunks.
fn back_up_generation(src: &Path, series: usize, number: usize, image: &Path) -> Generation {
    let id = snapshot_id(&backup_json(src, SERIES[series], &[("d0", image)]));
    let file = src.join("snapshots").join(format!("{id}.snap"));
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let snapshot = Snapshot::decode(&bytes).unwrap_or_else(|e| panic!("snapshot {id}: {e}"));
    let pages = snapshot.roots.iter().flatten().map(|p| p.0).collect();
    let chunks = block_digests(image, u64::from(DEFAULT_BLOCK_SIZE))
        .into_iter()
        .filter(|b| !b.zero)
        .map(|b| b.digest)
        .collect();
    Generation {
        series,
        number,
        id,
        sha: sha256_file(image),
        pages,
        chunks,
    }
}

// ---------------------------------------------------------------------------------------
// The push client with a hook
// ---------------------------------------------------------------------------------------

/// Where in a push the interference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// Nowhere: a plain push.
    Nowhere,
    /// Before the first `put`: after every `have` of the snapshot, before anything is sent.
    BeforeFirstPut,
    /// Before `publish`: after every `put` has been acknowledged.
    BeforePublish,
}

/// The HTTP client as an [`ObjectSink`], delegating every call, that runs its interference
/// once at its [`Point`] and records every `have` answer and the `have`→`publish` window.
struct RacingSink<'a> {
    remote: Remote,
    at: Point,
    interference: Option<Box<dyn FnOnce() + 'a>>,
    answers: Vec<(ObjectKind, [u8; 32], bool)>,
    first_have: Option<Instant>,
    published: Option<Instant>,
}

/// What a [`RacingSink`] saw.
struct SinkLog {
    /// Every `have` answer: kind, digest, held.
    answers: Vec<(ObjectKind, [u8; 32], bool)>,
    /// From the first `have` to the end of `publish` (`None` if either never happened).
    window: Option<Duration>,
    /// Whether the interference ran.
    interfered: bool,
}

impl<'a> RacingSink<'a> {
    fn new(remote: Remote, at: Point, interference: Box<dyn FnOnce() + 'a>) -> Self {
        Self {
            remote,
            at,
            interference: Some(interference),
            answers: Vec::new(),
            first_have: None,
            published: None,
        }
    }

    /// Runs the interference if `point` is its point and it has not run yet. Before
    /// `publish`, first waits for the `put` the client may still have in flight (its
    /// answer, through one `have` of a digest nobody stores), so the interference never
    /// competes with the server's own writer for the lock.
    fn interfere_at(&mut self, point: Point) -> tessera_engine::Result<()> {
        if self.at == point {
            if let Some(interference) = self.interference.take() {
                if point == Point::BeforePublish {
                    self.remote
                        .contains_many(ObjectKind::Chunk, &[SETTLE_DIGEST])?;
                }
                interference();
            }
        }
        Ok(())
    }

    fn finish(self) -> SinkLog {
        SinkLog {
            window: self
                .first_have
                .zip(self.published)
                .map(|(from, to)| to.duration_since(from)),
            interfered: self.interference.is_none(),
            answers: self.answers,
        }
    }
}

impl Catalog for RacingSink<'_> {
    fn describe(&self) -> String {
        self.remote.describe()
    }

    fn id_scheme(&self) -> tessera_engine::Result<IdScheme> {
        self.remote.id_scheme()
    }

    fn key_fingerprint(&self) -> tessera_engine::Result<Option<[u8; 16]>> {
        self.remote.key_fingerprint()
    }

    fn snapshots(&self) -> tessera_engine::Result<Vec<SnapshotSummary>> {
        self.remote.snapshots()
    }
}

impl ObjectSink for RacingSink<'_> {
    fn contains_many(
        &mut self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
    ) -> tessera_engine::Result<Vec<bool>> {
        self.first_have.get_or_insert_with(Instant::now);
        let held = self.remote.contains_many(kind, digests)?;
        self.answers
            .extend(digests.iter().zip(&held).map(|(d, h)| (kind, *d, *h)));
        Ok(held)
    }

    fn put(&mut self, kind: ObjectKind, objects: Vec<CheckedObject>) -> tessera_engine::Result<()> {
        self.interfere_at(Point::BeforeFirstPut)?;
        self.remote.put(kind, objects)
    }

    fn publish(&mut self, snapshot_bytes: &[u8]) -> tessera_engine::Result<SnapshotId> {
        self.interfere_at(Point::BeforePublish)?;
        let published = self.remote.publish(snapshot_bytes);
        self.published = Some(Instant::now());
        published
    }

    fn crypto(&self) -> Arc<RepoCrypto> {
        self.remote.crypto()
    }
}

// ---------------------------------------------------------------------------------------
// DST: the served repository, the model and the interference
// ---------------------------------------------------------------------------------------

/// One interference step on DST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `tessera forget` of a random model snapshot (while a forced interleaving waits for a
    /// series with a published snapshot, each series' newest is spared).
    ForgetRandom,
    /// `tessera forget` of every model snapshot of this series.
    ForgetSeries(usize),
    /// `tessera forget` of every model snapshot of this series but its newest.
    ForgetOlder(usize),
    /// `tessera compact --max-unused 0% --grace G`.
    Compact,
    /// The same compaction, SIGKILLed a random moment after it took the writer lock.
    KillCompact,
    /// A sleep past the grace: every pack and every death so far ages out of it.
    SleepPastGrace,
}

/// Where the SIGKILLs of compactions landed.
#[derive(Debug, Default)]
struct Kills {
    /// The compaction died holding the lock: interrupted.
    inside: usize,
    /// It died after letting go of the lock.
    after_unlock: usize,
    /// It finished first.
    finished: usize,
}

/// DST, the model of what it holds, and the interference acting on it.
struct Dst<'s> {
    path: PathBuf,
    scratch: PathBuf,
    source: &'s Source,
    grace: Duration,
    seed: u64,
    /// Runtime choices (which snapshot to forget, when to kill).
    rng: StdRng,
    /// The model: published and not forgotten snapshot id → generation (index into
    /// `source.gens`).
    live: BTreeMap<String, usize>,
    /// Whether [`Op::ForgetRandom`] spares each series' newest snapshot.
    spare_newest: bool,
    /// What the current push's interference did, one line per op.
    window_log: Vec<String>,
    /// Packs the last compaction left alone for their age (`plan.packs_in_grace`).
    last_in_grace: Option<u64>,
    /// Dead objects younger than the grace that compactions copied (`plan.dying_objects`).
    dying_kept: u64,
    /// Generations the last [`Op::ForgetSeries`] forgot.
    last_forgotten: Vec<usize>,
    kills: Kills,
    /// The longest a compaction held the writer lock so far.
    lock_held: Duration,
    /// Pushes whose `have` answered "not held" for objects the model needs, one line each.
    have_mismatches: Vec<String>,
}

impl Dst<'_> {
    /// Runs `op`; returns what it did, in one line.
    fn apply(&mut self, op: Op) -> String {
        match op {
            Op::ForgetRandom => self.forget_random(),
            Op::ForgetSeries(series) => self.forget_series(series),
            Op::ForgetOlder(series) => self.forget_older(series),
            Op::Compact => self.compact(),
            Op::KillCompact => self.kill_compaction(),
            Op::SleepPastGrace => {
                std::thread::sleep(self.grace + GRACE_MARGIN);
                format!("slept {:?}", self.grace + GRACE_MARGIN)
            }
        }
    }

    /// The interference of a push: runs `ops`, recording what they did.
    fn interfere(&mut self, ops: &[Op]) {
        for &op in ops {
            assert_ne!(
                op,
                Op::SleepPastGrace,
                "a sleep inside a push's window would take it out of the contract"
            );
            let line = self.apply(op);
            self.window_log.push(line);
        }
    }

    /// `tessera forget DST IDS...`, asserting success; the model forgets them too.
    fn forget(&mut self, ids: &[String]) {
        let mut args = vec!["forget".to_string(), self.path.display().to_string()];
        args.extend(ids.iter().cloned());
        tessera(&args).ok();
        for id in ids {
            self.live.remove(id);
        }
    }

    /// Forgets one random model snapshot (see [`Op::ForgetRandom`]).
    fn forget_random(&mut self) -> String {
        let newest = self.newest_per_series();
        let candidates: Vec<String> = self
            .live
            .keys()
            .filter(|id| !(self.spare_newest && newest.contains(*id)))
            .cloned()
            .collect();
        let Some(id) = candidates.choose(&mut self.rng).cloned() else {
            return "forget: nothing to forget".into();
        };
        let gen = &self.source.gens[self.live[&id]];
        let line = format!(
            "forget {}#{} ({})",
            SERIES[gen.series],
            gen.number,
            &id[..12]
        );
        self.forget(&[id]);
        line
    }

    /// Forgets every model snapshot of `series` (there must be one).
    fn forget_series(&mut self, series: usize) -> String {
        let (ids, gens): (Vec<String>, Vec<usize>) = self
            .live
            .iter()
            .filter(|(_, g)| self.source.gens[**g].series == series)
            .map(|(id, g)| (id.clone(), *g))
            .unzip();
        assert!(
            !ids.is_empty(),
            "[seed {}] test bug: forcing an interleaving on series {} without a published snapshot",
            self.seed,
            SERIES[series]
        );
        let numbers: Vec<usize> = gens.iter().map(|g| self.source.gens[*g].number).collect();
        self.forget(&ids);
        self.last_forgotten = gens;
        format!("forget all of {}: #{numbers:?}", SERIES[series])
    }

    /// Forgets every model snapshot of `series` but the newest (if any).
    fn forget_older(&mut self, series: usize) -> String {
        let newest = self.newest_per_series();
        let older: Vec<String> = self
            .live
            .iter()
            .filter(|(id, g)| self.source.gens[**g].series == series && !newest.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if !older.is_empty() {
            self.forget(&older);
        }
        format!(
            "forget {} older snapshots of {}",
            older.len(),
            SERIES[series]
        )
    }

    /// The ids of each series' newest model snapshot.
    fn newest_per_series(&self) -> HashSet<String> {
        let mut newest: BTreeMap<usize, (usize, &String)> = BTreeMap::new();
        for (id, &g) in &self.live {
            let gen = &self.source.gens[g];
            let entry = newest.entry(gen.series).or_insert((gen.number, id));
            if gen.number > entry.0 {
                *entry = (gen.number, id);
            }
        }
        newest.values().map(|(_, id)| (*id).clone()).collect()
    }

    /// Whether the model has a snapshot of `series`.
    fn has_series(&self, series: usize) -> bool {
        self.live
            .values()
            .any(|g| self.source.gens[*g].series == series)
    }

    /// Every page and every chunk some model snapshot needs: what `have` must answer held.
    fn live_objects(&self) -> (HashSet<[u8; 32]>, HashSet<[u8; 32]>) {
        let (mut pages, mut chunks) = (HashSet::new(), HashSet::new());
        for &g in self.live.values() {
            pages.extend(&self.source.gens[g].pages);
            chunks.extend(&self.source.gens[g].chunks);
        }
        (pages, chunks)
    }

    fn compact_args(&self) -> Vec<String> {
        vec![
            "--json".into(),
            "compact".into(),
            self.path.display().to_string(),
            "--max-unused".into(),
            "0%".into(),
            "--grace".into(),
            format!("{}s", self.grace.as_secs()),
        ]
    }

    /// Spawns a compaction and waits until it holds the writer lock of DST; returns it and
    /// when it was seen holding the lock (`None` if it exited first).
    fn spawn_compaction(&self, args: &[String]) -> (Child, Option<Instant>) {
        let mut child = tessera_cmd(args).spawn().expect("spawning tessera compact");
        let pid = child.id();
        let mut exited = false;
        let seen = wait_until(Duration::from_mins(1), || {
            exited = child.try_wait().expect("polling compact").is_some();
            exited || lock_says(&self.path, pid)
        });
        assert!(seen, "compact neither took the lock nor exited within 60 s");
        (child, (!exited).then(Instant::now))
    }

    /// One compaction, asserting success; returns what it did. Remembers how long it held
    /// the writer lock: the span kills are drawn from.
    fn compact(&mut self) -> String {
        let args = self.compact_args();
        let (child, locked_at) = self.spawn_compaction(&args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = finish_child(child, &refs);
        let held = locked_at.map(|at| at.elapsed());
        out.ok();
        self.lock_held = self.lock_held.max(held.unwrap_or_default());
        let v = out.json();
        let rewritten = v["report"]["packs_rewritten"]
            .as_u64()
            .unwrap_or_else(|| panic!("no report.packs_rewritten in {out}"));
        self.last_in_grace = v["plan"]["packs_in_grace"].as_u64();
        self.dying_kept += v["plan"]["dying_objects"].as_u64().unwrap_or(0);
        format!(
            "compact: rewrote {rewritten} packs, {} left in grace, {} dying objects kept, \
             lock held {:.1?}",
            v["plan"]["packs_in_grace"],
            v["plan"]["dying_objects"],
            held.unwrap_or_default()
        )
    }

    /// A compaction SIGKILLed at a random moment of the longest time a compaction has held
    /// the writer lock so far, counted from when it took the lock (unless it finished
    /// first); classifies where the kill landed (see `tessera_tests::kill`).
    fn kill_compaction(&mut self) -> String {
        let args = self.compact_args();
        let span = u64::try_from(self.lock_held.as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(self.rng.gen_range(0..=span));
        let (mut child, locked_at) = self.spawn_compaction(&args);
        let pid = child.id();
        if let Some(at) = locked_at {
            std::thread::sleep(delay.saturating_sub(at.elapsed()));
            if child.try_wait().expect("polling compact").is_none() {
                child.kill().expect("SIGKILL to compact");
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = finish_child(child, &refs);
        let landed = match out.code {
            137 if lock_says(&self.path, pid) => {
                self.kills.inside += 1;
                "interrupted it"
            }
            137 => {
                self.kills.after_unlock += 1;
                "landed after it let go of the lock"
            }
            0 => {
                self.kills.finished += 1;
                "came after it finished"
            }
            _ => panic!("a compaction to be killed failed by itself: {out}"),
        };
        format!("compact killed {delay:.1?} after taking the lock: {landed}")
    }

    /// Sleeps past the grace.
    fn sleep_past_grace(&mut self) {
        self.apply(Op::SleepPastGrace);
    }
}

// ---------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------

/// The forced interleavings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forced {
    /// (a): held at `have`, then forgotten and compacted (packs older than G) before `put`.
    HeldThenForgotten,
    /// (b): forgotten and aged past G before the push; compacted before `publish`.
    ForgottenThenCompacted,
    /// (k): a compaction SIGKILLed before `publish`; the server's publish recovers.
    KilledBeforePublish,
}

/// What a push does around itself.
struct Plan {
    /// Ops before the push (between pushes: sleeps allowed).
    pre: Vec<Op>,
    at: Point,
    /// Ops at `at`, inside the push's window.
    during: Vec<Op>,
    forced: Option<Forced>,
}

/// When each forced interleaving is due: the first fitting push at or after its step.
struct ForcedSchedule {
    held_then_forgotten: Option<usize>,
    forgotten_then_compacted: Option<usize>,
    killed_before_publish: Option<usize>,
}

impl ForcedSchedule {
    /// Random steps in the first half of `steps`, so that enough pushes follow: every
    /// push of a series but its first fits (a) and (b) (its newest snapshot is spared by
    /// random forgets while they wait), and (k) fits any push.
    fn new(rng: &mut StdRng, steps: usize) -> Self {
        Self {
            held_then_forgotten: Some(rng.gen_range(1..steps / 2)),
            forgotten_then_compacted: Some(rng.gen_range(1..steps / 2)),
            killed_before_publish: Some(rng.gen_range(0..steps / 2)),
        }
    }

    /// Whether (a) or (b) still waits.
    fn waits_for_series(&self) -> bool {
        self.held_then_forgotten.is_some() || self.forgotten_then_compacted.is_some()
    }

    /// The forced interleaving of push `step`, if one is due (`fits`: the pushed series has
    /// a published snapshot); it is then done.
    fn take(&mut self, step: usize, fits: bool) -> Option<Forced> {
        let due = |s: &Option<usize>| s.is_some_and(|at| step >= at);
        if fits && due(&self.held_then_forgotten) {
            self.held_then_forgotten = None;
            Some(Forced::HeldThenForgotten)
        } else if fits && due(&self.forgotten_then_compacted) {
            self.forgotten_then_compacted = None;
            Some(Forced::ForgottenThenCompacted)
        } else if due(&self.killed_before_publish) {
            self.killed_before_publish = None;
            Some(Forced::KilledBeforePublish)
        } else {
            None
        }
    }

    /// Asserts that every forced interleaving happened.
    fn assert_done(&self, seed: u64) {
        assert!(
            self.held_then_forgotten.is_none()
                && self.forgotten_then_compacted.is_none()
                && self.killed_before_publish.is_none(),
            "[seed {seed}] test bug: a forced interleaving never found its push \
             (a: {:?}, b: {:?}, k: {:?} still due)",
            self.held_then_forgotten,
            self.forgotten_then_compacted,
            self.killed_before_publish
        );
    }
}

/// The plan of a forced interleaving on a push of `series`.
fn forced_plan(forced: Forced, series: usize, rng: &mut StdRng) -> Plan {
    let (pre, at, during) = match forced {
        Forced::HeldThenForgotten => (
            vec![Op::ForgetOlder(series), Op::SleepPastGrace],
            Point::BeforeFirstPut,
            vec![Op::ForgetSeries(series), Op::Compact],
        ),
        Forced::ForgottenThenCompacted => (
            vec![Op::ForgetSeries(series), Op::SleepPastGrace],
            Point::BeforePublish,
            vec![Op::Compact],
        ),
        Forced::KilledBeforePublish => (
            random_ops(rng, 0..=1, &mut 0),
            Point::BeforePublish,
            vec![Op::KillCompact],
        ),
    };
    Plan {
        pre,
        at,
        during,
        forced: Some(forced),
    }
}

/// A random plan: 0–2 ops before the push (a sleep while `sleeps_left` allows), and 1–2
/// ops (no sleep) at a random point, or none.
fn random_plan(rng: &mut StdRng, sleeps_left: &mut usize) -> Plan {
    let pre = random_ops(rng, 0..=2, sleeps_left);
    let at = *[
        Point::Nowhere,
        Point::BeforeFirstPut,
        Point::BeforeFirstPut,
        Point::BeforePublish,
        Point::BeforePublish,
    ]
    .choose(rng)
    .expect("points");
    let during = if at == Point::Nowhere {
        Vec::new()
    } else {
        random_ops(rng, 1..=2, &mut 0)
    };
    Plan {
        pre,
        at,
        during,
        forced: None,
    }
}

/// A random number (in `count`) of random ops; a sleep only while `sleeps_left > 0`.
fn random_ops(
    rng: &mut StdRng,
    count: std::ops::RangeInclusive<usize>,
    sleeps_left: &mut usize,
) -> Vec<Op> {
    let n = rng.gen_range(count);
    (0..n)
        .map(|_| {
            let may_sleep = *sleeps_left > 0;
            let roll = rng.gen_range(0..if may_sleep { 11 } else { 9 });
            match roll {
                0..=3 => Op::ForgetRandom,
                4..=7 => Op::Compact,
                8 => Op::KillCompact,
                _ => {
                    *sleeps_left -= 1;
                    Op::SleepPastGrace
                }
            }
        })
        .collect()
}

/// The order of the pushes: `steps` series indices, each series as often as the others.
fn schedule(rng: &mut StdRng, steps: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..steps).map(|i| i % SERIES.len()).collect();
    order.shuffle(rng);
    order
}

/// The server and how to reach it.
struct Server {
    url: String,
    token: String,
}

/// Pushes generation `gen` into DST through a [`RacingSink`] running `during` at `at`.
fn push(
    server: &Server,
    source: &Source,
    dst: &mut Dst,
    gen: usize,
    at: Point,
    during: Vec<Op>,
) -> (tessera_engine::Result<SyncReport>, SinkLog) {
    let remote = Remote::new(
        &server.url,
        &server.token,
        None,
        Duration::from_mins(1),
        false,
    )
    .unwrap_or_else(|e| panic!("a client for {}: {e}", server.url));
    let reference: SnapshotRef = source.gens[gen].id.parse().expect("a snapshot id");
    let selection = Selection {
        snapshots: vec![reference],
        ..Selection::default()
    };
    let mut sink = RacingSink::new(remote, at, Box::new(move || dst.interfere(&during)));
    let result = transfer(
        &source.repo,
        &mut sink,
        &selection,
        &SyncOptions::default(),
        &NoProgress,
    );
    (result, sink.finish())
}

/// Runs one step: `plan.pre`, then the push of `gen` with its interference; checks the
/// push and, for a forced interleaving, that it happened as meant.
fn run_step(server: &Server, source: &Source, dst: &mut Dst, label: &str, gen: usize, plan: Plan) {
    let pre: Vec<String> = plan.pre.iter().map(|op| dst.apply(*op)).collect();
    let expected = dst.live_objects();
    dst.window_log.clear();
    dst.last_in_grace = None;
    let (result, log) = push(server, source, dst, gen, plan.at, plan.during);
    let have = check_have_answers(dst, label, &log, &expected);
    eprintln!(
        "[retention_race] {label}{}: before {pre:?}; at {:?} {:?}; {have}; have→publish {}",
        plan.forced
            .map(|f| format!(" [forced {f:?}]"))
            .unwrap_or_default(),
        plan.at,
        dst.window_log,
        log.window
            .map_or_else(|| "never ended".into(), |w| format!("{w:.2?}"))
    );
    assert_eq!(
        log.interfered,
        plan.at != Point::Nowhere,
        "[seed {}] test bug: {label}: the interference at {:?} ran: {}",
        dst.seed,
        plan.at,
        log.interfered
    );
    check_push(dst, label, gen, result, &log);
    if let Some(forced) = plan.forced {
        check_forced(dst, label, forced, gen, &log);
    }
}

/// Proves the push published (a refused publish is the data-loss race) and that `tessera
/// list DST` shows the model with it.
fn check_push(
    dst: &mut Dst,
    label: &str,
    gen: usize,
    result: tessera_engine::Result<SyncReport>,
    log: &SinkLog,
) {
    let g = &dst.source.gens[gen];
    let seed = dst.seed;
    let report = result.unwrap_or_else(|e| {
        let verdict = match log.window {
            Some(w) if w >= dst.grace => format!(
                "its have→publish window ({w:?}) exceeded the grace ({:?}), which the \
                 contract does not cover: inconclusive, raise TESSERA_RACE_GRACE_SECS on a \
                 machine this slow",
                dst.grace
            ),
            Some(w) => format!(
                "its have→publish window ({w:?}) was shorter than the grace ({:?}): a push \
                 within the grace must publish whatever forget/compact ran meanwhile; this is \
                 the data-loss race",
                dst.grace
            ),
            None => "it failed before its publish was answered".into(),
        };
        panic!(
            "[seed {seed}] {label}: the push failed: {e}\n{verdict}\ninterference: {:?}\n\
             (reproduce with TESSERA_SEED={seed})",
            dst.window_log
        )
    });
    let id: SnapshotId = g.id.parse().expect("a snapshot id");
    assert_eq!(
        report.snapshots_copied,
        vec![id],
        "[seed {seed}] {label}: {report:?}"
    );
    dst.live.insert(g.id.clone(), gen);
    let listed: Vec<String> = sorted(list_ids(&dst.path));
    let model: Vec<String> = dst.live.keys().cloned().collect();
    assert_eq!(
        listed, model,
        "[seed {seed}] {label}: tessera list DST differs from the model"
    );
}

/// Compares every `have` answer with the model as it was when the push began: an object a
/// published, not forgotten snapshot needs must be answered held (a miss is printed and
/// kept for the end of the sequence). Returns a summary for the step's line, counting the
/// objects answered held that no model snapshot needs (dead ones).
fn check_have_answers(
    dst: &mut Dst,
    label: &str,
    log: &SinkLog,
    (pages, chunks): &(HashSet<[u8; 32]>, HashSet<[u8; 32]>),
) -> String {
    let needed = |kind: &ObjectKind, digest: &[u8; 32]| match kind {
        ObjectKind::Page => pages.contains(digest),
        ObjectKind::Chunk => chunks.contains(digest),
    };
    let missed: Vec<String> = log
        .answers
        .iter()
        .filter(|(kind, digest, held)| !held && needed(kind, digest))
        .map(|(kind, digest, _)| format!("{kind:?} {}", &hex(digest)[..12]))
        .collect();
    if !missed.is_empty() {
        let line = format!(
            "{label}: {} of {} objects the model's snapshots need were answered not held by \
             have, e.g. {:?}",
            missed.len(),
            log.answers.len(),
            &missed[..missed.len().min(3)]
        );
        eprintln!("[retention_race] {line}");
        dst.have_mismatches.push(line);
    }
    let held = log.answers.iter().filter(|(_, _, h)| *h).count();
    let dead_held = log
        .answers
        .iter()
        .filter(|(kind, digest, held)| *held && !needed(kind, digest))
        .count();
    format!(
        "have: {held} of {} held, {dead_held} of them dead",
        log.answers.len()
    )
}

/// Proves that a forced interleaving exercised what it is for: the push needs objects that
/// were dead, in packs older than the grace, when the compaction in its window ran, so a
/// compaction deciding by pack age and reference counts alone would have dropped them.
fn check_forced(dst: &Dst, label: &str, forced: Forced, gen: usize, log: &SinkLog) {
    let seed = dst.seed;
    let forgotten: HashSet<[u8; 32]> = dst
        .last_forgotten
        .iter()
        .flat_map(|g| dst.source.gens[*g].chunks.iter().copied())
        .collect();
    match forced {
        Forced::HeldThenForgotten => {
            let held_then_forgotten = log
                .answers
                .iter()
                .filter(|(k, d, held)| *k == ObjectKind::Chunk && *held && forgotten.contains(d))
                .count();
            assert!(
                held_then_forgotten > 0,
                "[seed {seed}] {label}: interleaving (a) did not happen: no chunk of the \
                 forgotten snapshots was reported held"
            );
            assert_eq!(
                dst.last_in_grace,
                Some(0),
                "[seed {seed}] {label}: interleaving (a) did not happen: the compaction in the \
                 window left packs alone for their age, which may have protected the held chunks"
            );
        }
        Forced::ForgottenThenCompacted => {
            // They died before the sleep past the grace, in packs indexed before it.
            let shared = dst.source.gens[gen].chunks.intersection(&forgotten).count();
            assert!(
                shared > 0,
                "[seed {seed}] {label}: interleaving (b) did not happen: the pushed snapshot \
                 shares no chunk with the forgotten ones"
            );
        }
        // What it proves is that the push published after the server's recovery.
        Forced::KilledBeforePublish => {}
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Whole-repository checks
// ---------------------------------------------------------------------------------------

/// Proves DST is what the model says: `have` never disagreed, `list` shows the model, every
/// model snapshot restores to its generation's bytes, and `tessera verify` is clean.
fn check_model(dst: &Dst, when: &str) {
    let seed = dst.seed;
    assert!(
        dst.have_mismatches.is_empty(),
        "[seed {seed}] {when}: the server answered have with \"not held\" for objects that \
         published snapshots need (deduplication broken):\n{}",
        dst.have_mismatches.join("\n")
    );
    let model: Vec<String> = dst.live.keys().cloned().collect();
    assert_eq!(
        sorted(list_ids(&dst.path)),
        model,
        "[seed {seed}] {when}: tessera list DST differs from the model"
    );
    for (id, &g) in &dst.live {
        let gen = &dst.source.gens[g];
        assert_eq!(
            restored_sha(&dst.path, id, &dst.scratch),
            gen.sha,
            "[seed {seed}] {when}: {}#{} ({id}) restores different bytes",
            SERIES[gen.series],
            gen.number
        );
    }
    let v = verify(&dst.path);
    assert_eq!(v.code, 0, "[seed {seed}] {when}: verify DST:\n{v}");
}

/// Record bytes of a repository's packs: their total size minus each pack's fixed frame.
fn record_bytes(repo: &Path) -> (u64, u64, usize) {
    let (bytes, packs) = pack_bytes(repo);
    let frames = PACK_FRAME_BYTES * u64::try_from(packs).expect("pack count");
    (bytes - frames, bytes, packs)
}

/// Proves that nothing leaks: everything but one model snapshot is forgotten, the grace
/// passes, and one compaction leaves exactly the records a fresh repository holding only
/// that snapshot stores, nothing unreferenced or duplicated; it still restores exactly.
fn check_reclamation(dst: &mut Dst, work: &Path) {
    let seed = dst.seed;
    let series = (0..SERIES.len())
        .filter(|s| dst.has_series(*s))
        .collect::<Vec<_>>();
    let series = *series
        .choose(&mut dst.rng)
        .unwrap_or_else(|| panic!("[seed {seed}] the model is empty after the last push"));
    let keeper = dst
        .newest_per_series()
        .into_iter()
        .find(|id| dst.source.gens[dst.live[id]].series == series)
        .expect("the newest snapshot of a series with one");
    let others: Vec<String> = dst
        .live
        .keys()
        .filter(|id| **id != keeper)
        .cloned()
        .collect();
    let before = pack_bytes(&dst.path);
    if !others.is_empty() {
        dst.forget(&others);
    }
    dst.sleep_past_grace();
    let compacted = dst.compact();
    let (records, bytes, packs) = record_bytes(&dst.path);

    let reference = work.join("reference");
    init_repo(&reference, &[]);
    tessera([
        "sync".to_string(),
        dst.source.path.display().to_string(),
        reference.display().to_string(),
        "--snapshot".to_string(),
        keeper.clone(),
    ])
    .ok();
    let (ref_records, ref_bytes, ref_packs) = record_bytes(&reference);
    eprintln!(
        "[retention_race] reclamation: forgot {} snapshots, kept {}; {compacted}; packs \
         {} B in {} -> {bytes} B in {packs}; a fresh repository with only it: {ref_bytes} B \
         in {ref_packs}",
        others.len(),
        &keeper[..12],
        before.0,
        before.1
    );
    assert_eq!(
        records, ref_records,
        "[seed {seed}] after the grace and a compaction, DST's packs hold {records} record \
         bytes where a repository with only the kept snapshot holds {ref_records}: dead data \
         leaked (or live data was lost)"
    );
    let stats = tessera([
        "--json".to_string(),
        "stats".to_string(),
        dst.path.display().to_string(),
    ]);
    stats.ok();
    assert_eq!(
        stats.json()["stats"]["unreferenced_objects"],
        0,
        "[seed {seed}] unreferenced objects left after the final compaction: {stats}"
    );
    assert_no_duplicates(&dst.path, "after the final compaction");
    check_model(dst, "after reclamation");
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn pushes_within_the_grace_publish_whatever_retention_runs_and_nothing_leaks() {
    let started = Instant::now();
    let seed = seed("retention_race");
    let steps = env_usize("TESSERA_RACE_STEPS", 12);
    assert!(
        steps >= 6,
        "TESSERA_RACE_STEPS must be at least 6 (got {steps})"
    );
    let grace_secs = env_usize("TESSERA_RACE_GRACE_SECS", 3);
    assert!(
        grace_secs >= 1,
        "TESSERA_RACE_GRACE_SECS must be at least 1"
    );
    let grace = Duration::from_secs(u64::try_from(grace_secs).expect("grace"));
    let mut rng = StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().expect("a scratch directory");

    let order = schedule(&mut rng, steps);
    let counts: Vec<usize> = (0..SERIES.len())
        .map(|s| order.iter().filter(|x| **x == s).count())
        .collect();
    let source = build_source(work.path(), &mut DataGen::new(seed), &counts);
    eprintln!(
        "[retention_race] SRC: {} generations of {counts:?} per series ({:.1}s)",
        source.gens.len(),
        started.elapsed().as_secs_f64()
    );

    let dst_path = work.path().join("dst");
    init_repo(&dst_path, &[]);
    let token = "retention-race-admin-token".to_string();
    let served = start_serve(&dst_path, &token_file(work.path(), &token), &[]);
    let endpoint = Server {
        url: served.url.clone(),
        token,
    };
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    let mut dst = Dst {
        path: dst_path,
        scratch,
        source: &source,
        grace,
        seed,
        rng: StdRng::seed_from_u64(seed ^ 0x7261_6365),
        live: BTreeMap::new(),
        spare_newest: true,
        window_log: Vec::new(),
        last_in_grace: None,
        dying_kept: 0,
        last_forgotten: Vec::new(),
        kills: Kills::default(),
        lock_held: Duration::from_millis(20),
        have_mismatches: Vec::new(),
    };

    let mut forced = ForcedSchedule::new(&mut rng, steps);
    let mut sleeps_left = (steps / 6).max(1);
    let mut next = vec![0usize; SERIES.len()];
    for (step, &series) in order.iter().enumerate() {
        let gen = source.chains[series][next[series]];
        next[series] += 1;
        dst.spare_newest = forced.waits_for_series();
        let plan = match forced.take(step, dst.has_series(series)) {
            Some(f) => forced_plan(f, series, &mut rng),
            None => random_plan(&mut rng, &mut sleeps_left),
        };
        let g = &source.gens[gen];
        let label = format!(
            "step {}/{steps}: push {}#{} ({})",
            step + 1,
            SERIES[series],
            g.number,
            &g.id[..12]
        );
        run_step(&endpoint, &source, &mut dst, &label, gen, plan);
    }
    forced.assert_done(seed);
    eprintln!(
        "[retention_race] {steps} pushes published ({:.1}s); compactions copied {} dead \
         objects younger than the grace; compaction kills: {:?}",
        started.elapsed().as_secs_f64(),
        dst.dying_kept,
        dst.kills
    );
    assert!(
        dst.dying_kept > 0,
        "[seed {seed}] no compaction of this run copied an object that died within the grace \
         (plan.dying_objects): the copy half of two-phase delete went unexercised"
    );
    check_model(&dst, "after the sequence");
    check_reclamation(&mut dst, work.path());
    drop(served);
    eprintln!(
        "[retention_race] done in {:.1}s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
}
