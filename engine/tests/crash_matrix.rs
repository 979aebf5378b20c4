//! Crash matrix: every writing operation, interrupted by a simulated power loss at *every*
//! durability step, on a repository whose objects live in the simulated filesystem
//! ([`SimFs`]). A step is every file fsync, create, rename, unlink, mkdir, directory fsync
//! and index commit; at step N that step and everything after it fail, then the disk
//! "reboots", losing what was not durable — all of it ([`Reboot::LoseAll`]), or a random
//! part of it ([`Reboot::KeepSome`]). Killing a process never loses page-cache data, so only
//! this tests fsync ordering.
//!
//! After each crash the next writer opens the repository (recovery runs), and:
//! - the catalogued snapshots are exactly the set before the operation or the set after it
//!   (no snapshot reported committed is lost, no half snapshot is visible);
//! - every catalogued snapshot restores byte for byte as the model says;
//! - a full check (every object read, every count recomputed) finds nothing wrong, except
//!   the damage a repair was started to fix;
//! - rerunning the operation succeeds and leads to the state the uninterrupted run reaches.
//!
//! `TESSERA_CRASH_KEEP_SEEDS` (default 1) sets how many `KeepSome` seeds each step is also
//! tried with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::crypto::{NoSecret, Passphrase, SecretSource, SlotSecret};
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::compact::{apply_compact, plan_compact};
use tessera_engine::ops::forget::{apply_forget, plan_forget, set_protected};
use tessera_engine::ops::prune::{plan_prune, KeepPolicy};
use tessera_engine::ops::rebuild_index::rebuild_index;
use tessera_engine::ops::repair::{repair, RepairSources};
use tessera_engine::ops::restore::restore_disk;
use tessera_engine::repo::RepoStorage;
use tessera_engine::storage::local::{Layout, LocalBackend};
use tessera_engine::storage::sim::{Reboot, SimFs};
use tessera_engine::storage::{ObjectKey, PutMode};
use tessera_engine::{InitOptions, NewKeys, NoProgress, Repository};
use tessera_format::keyslot::KdfParams;
use tessera_format::{ObjectKind, SnapshotId};

const ROOT: &str = "/sim/repo";
const BLOCK: usize = 64 * 1024;
/// Small packs, so one backup seals several and every sealing step is a crash point.
const PACK_TARGET: u64 = 256 << 10;
/// Small publishing steps, so a publication that raises more than a few chunks is
/// committed in steps and every step is a crash point.
const PUBLISH_GROUP: usize = 8;

/// A repository whose objects are in a simulated disk and whose index, ledger and locks are
/// in a real directory.
struct World {
    sim: Arc<SimFs>,
    local: tempfile::TempDir,
    images: PathBuf,
    /// The passphrase of an encrypted repository (`None`: plain).
    secret: Option<SlotSecret>,
}

impl World {
    fn storage(&self) -> RepoStorage {
        RepoStorage {
            backend: Arc::new(LocalBackend::on(
                self.sim.clone(),
                Path::new(ROOT),
                Layout::Tree,
            )),
            local_dir: self.local.path().to_path_buf(),
            crash_clock: Some(self.sim.clock()),
            pack_target: PACK_TARGET,
            publish_group: PUBLISH_GROUP,
            shared: false,
        }
    }

    fn keys(&self) -> &dyn SecretSource {
        match &self.secret {
            Some(secret) => secret,
            None => &NoSecret,
        }
    }

    fn writer(&self) -> Repository {
        Repository::open_writer_on(self.storage(), self.keys()).expect("open as writer")
    }

    /// A copy of this world: the simulated disk as it is and a copy of the local directory.
    /// (Copied in-process: a child process would inherit the lock files' descriptors until
    /// its `exec`, holding a parallel test's writer lock for that instant.)
    fn fork(&self) -> World {
        let local = tempfile::tempdir().unwrap();
        copy_tree(self.local.path(), local.path());
        World {
            sim: Arc::new(SimFs::from_image(self.sim.image())),
            local,
            images: self.images.clone(),
            secret: self.secret.clone(),
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Snapshot → the disk bytes it must restore to.
type Model = BTreeMap<SnapshotId, Vec<u8>>;

fn image(rng: &mut StdRng, blocks: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; blocks * BLOCK + 777];
    for chunk in bytes.chunks_mut(BLOCK) {
        match rng.gen_range(0..4) {
            0 => {}
            1 => chunk.fill(rng.gen()),
            _ => rng.fill(chunk),
        }
    }
    bytes
}

fn mutate(rng: &mut StdRng, bytes: &mut [u8]) {
    for _ in 0..4 {
        let at = rng.gen_range(0..bytes.len());
        let end = (at + rng.gen_range(1..2 * BLOCK)).min(bytes.len());
        rng.fill(&mut bytes[at..end]);
    }
}

fn backup_bytes(repo: &Repository, images: &Path, name: &str, bytes: &[u8]) -> SnapshotId {
    let path = images.join(name);
    std::fs::write(&path, bytes).unwrap();
    backup(
        repo,
        &BackupRequest::one_disk("vm", "d0", &path),
        &NoProgress,
    )
    .map(|o| o.id)
    .expect("backup")
}

/// A world with two snapshots (a full and a delta), and the model.
fn base_world(seed: u64) -> (World, Model, Vec<u8>) {
    base_world_with(seed, false)
}

/// [`base_world`], plain or encrypted (a passphrase slot with a cheap Argon2id cost).
fn base_world_with(seed: u64, encrypted: bool) -> (World, Model, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let images = tempfile::tempdir().unwrap().keep();
    let secret = encrypted.then(|| SlotSecret::Passphrase(Passphrase::new("crash pw".into())));
    let world = World {
        sim: Arc::new(SimFs::new(Path::new(ROOT))),
        local: tempfile::tempdir().unwrap(),
        images,
        secret: secret.clone(),
    };
    let keys = secret.map(|secret| NewKeys {
        secret,
        kdf: KdfParams {
            memory_kib: tessera_format::keyslot::MIN_KDF_MEMORY_KIB,
            iterations: tessera_format::keyslot::MIN_KDF_ITERATIONS,
            parallelism: 1,
        },
        shared: None,
    });
    // Small pages: the 25-block image spans two, so publishing raises its chunks in steps.
    let opts = InitOptions {
        page_entries: tessera_format::config::MIN_PAGE_ENTRIES,
        ..InitOptions::default()
    };
    Repository::init_on(&world.storage(), opts, keys.as_ref()).unwrap();
    let mut model = Model::new();
    let repo = world.writer();
    let mut bytes = image(&mut rng, 24);
    let a = backup_bytes(&repo, &world.images, "gen1", &bytes);
    model.insert(a, bytes.clone());
    mutate(&mut rng, &mut bytes);
    let b = backup_bytes(&repo, &world.images, "gen2", &bytes);
    model.insert(b, bytes.clone());
    mutate(&mut rng, &mut bytes);
    (world, model, bytes)
}

/// One operation under test and what it may do.
struct Case<'a> {
    name: &'a str,
    /// The state it starts from, and its model.
    base: &'a World,
    before: &'a Model,
    /// Content of the snapshot the operation creates, if it creates one.
    creates: Option<&'a [u8]>,
    /// Whether the base state holds damage the operation repairs.
    repairs: bool,
    /// Opens what it needs itself (so a writer's recovery is crash-tested too) and runs.
    op: &'a dyn Fn(&World) -> tessera_engine::Result<()>,
}

fn open_writer(world: &World) -> tessera_engine::Result<Repository> {
    Repository::open_writer_on(world.storage(), world.keys())
}

impl Case<'_> {
    /// Runs the operation once uninterrupted to count its steps, then once per step with a
    /// crash there (per reboot mode), checking each recovered state and that a rerun
    /// finishes the work.
    fn crash_at_every_step(&self) {
        let probe = self.base.fork();
        probe.sim.clock().arm(u64::MAX);
        (self.op)(&probe).unwrap_or_else(|e| panic!("{} uninterrupted: {e}", self.name));
        let steps = probe.sim.clock().steps();
        let after = self.check(&probe, false, &format!("{} uninterrupted", self.name));
        assert!(
            steps > 3,
            "{}: only {steps} steps; the crash points prove nothing",
            self.name
        );
        let keep_seeds: u64 = std::env::var("TESSERA_CRASH_KEEP_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let mut crashed = 0u64;
        for n in 1..=steps {
            let modes = std::iter::once(Reboot::LoseAll)
                .chain((0..keep_seeds).map(|s| Reboot::KeepSome(n * 1000 + s)));
            for mode in modes {
                let what = format!("{}, crash at step {n}/{steps}, {mode:?}", self.name);
                let world = self.base.fork();
                world.sim.clock().arm(n);
                let result = (self.op)(&world);
                if !world.sim.clock().crashed() {
                    // This run took fewer steps (thread timing): nothing to recover.
                    result.unwrap_or_else(|e| panic!("{what}: failed without crashing: {e}"));
                    continue;
                }
                assert!(
                    result.is_err(),
                    "{what}: reported success after the power was lost"
                );
                crashed += 1;
                world.sim.reboot(mode, Path::new(ROOT));
                let recovered = self.check(&world, self.repairs, &what);
                let ids = |m: &Model| m.keys().copied().collect::<Vec<_>>();
                let allowed = ids(&recovered) == ids(self.before)
                    || ids(&recovered) == ids(&after)
                    || self.creates.is_some() && recovered.len() == self.before.len() + 1;
                assert!(
                    allowed,
                    "{what}: catalogued {:?}, neither the set before ({:?}) nor after ({:?})",
                    ids(&recovered),
                    ids(self.before),
                    ids(&after)
                );
                (self.op)(&world)
                    .unwrap_or_else(|e| panic!("{what}: rerun after recovery failed: {e}"));
                let rerun = self.check(&world, false, &format!("{what}, rerun"));
                if self.creates.is_none() {
                    assert_eq!(ids(&rerun), ids(&after), "{what}: the rerun ends elsewhere");
                }
            }
        }
        println!("{}: {steps} steps, {crashed} crashes recovered", self.name);
        assert!(crashed >= steps, "{}: fewer crashes than steps", self.name);
    }

    /// Opens the repository as the next writer (recovery runs), checks it (see the module
    /// docs) and returns the model of what it catalogues.
    fn check(&self, world: &World, may_be_damaged: bool, what: &str) -> Model {
        let repo = world.writer();
        let mut model = Model::new();
        for (id, _) in repo.index().snapshots().unwrap() {
            let bytes = match (self.before.get(&id), self.creates) {
                (Some(b), _) => b.clone(),
                (None, Some(created)) => created.to_vec(),
                (None, None) => panic!("{what}: snapshot {id} came from nowhere"),
            };
            model.insert(id, bytes);
        }
        let report = check(&repo, true, &NoProgress).unwrap();
        if !may_be_damaged {
            assert!(
                report.is_clean(),
                "{what}: check found {} problems, first: {:?}",
                report.problems.len(),
                report.problems.iter().take(3).collect::<Vec<_>>()
            );
        }
        let damaged: Vec<SnapshotId> = report
            .damaged
            .iter()
            .flat_map(|d| d.ranges.iter().map(|r| r.snapshot))
            .collect();
        for (id, bytes) in &model {
            if damaged.contains(id) {
                continue;
            }
            let snapshot = repo.load_snapshot(*id).unwrap();
            let out = world
                .images
                .join(format!("restore-{id}-{}", rand::random::<u64>()));
            restore_disk(&repo, *id, &snapshot, "d0", &out, true, &NoProgress)
                .unwrap_or_else(|e| panic!("{what}: restoring {id}: {e}"));
            let restored = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            assert!(
                restored == *bytes,
                "{what}: snapshot {id} restores differently from the model"
            );
        }
        model
    }
}

/// Forgets those of `ids` still catalogued (so that a rerun after a crash is the same
/// request).
fn forget_present(repo: &Repository, ids: &[SnapshotId]) -> tessera_engine::Result<()> {
    let mut present = Vec::new();
    for id in ids {
        if repo.index().has_snapshot(*id)? {
            present.push(*id);
        }
    }
    let plan = plan_forget(repo, &present, false)?;
    apply_forget(repo, &plan)
}

#[test]
fn backup_survives_power_loss_at_every_step() {
    backup_case(false);
}

/// An encrypted repository: sealed records and sealed snapshot parts go through the same
/// commit order, and every recovered state restores byte for byte.
#[test]
fn encrypted_backup_survives_power_loss_at_every_step() {
    backup_case(true);
}

fn backup_case(encrypted: bool) {
    let (base, before, next) = base_world_with(1, encrypted);
    let path = base.images.join("gen3");
    std::fs::write(&path, &next).unwrap();
    Case {
        name: "backup",
        base: &base,
        before: &before,
        creates: Some(&next),
        repairs: false,
        op: &|world| {
            let repo = open_writer(world)?;
            backup(
                &repo,
                &BackupRequest::one_disk("vm", "d0", &path),
                &NoProgress,
            )
            .map(|_| ())
        },
    }
    .crash_at_every_step();
}

#[test]
fn forget_survives_power_loss_at_every_step() {
    let (base, before, _) = base_world(2);
    let oldest = *before.keys().next().unwrap();
    Case {
        name: "forget",
        base: &base,
        before: &before,
        creates: None,
        repairs: false,
        op: &|world| forget_present(&open_writer(world)?, &[oldest]),
    }
    .crash_at_every_step();
}

#[test]
fn prune_survives_power_loss_at_every_step() {
    let (base, before, _) = base_world(3);
    Case {
        name: "prune",
        base: &base,
        before: &before,
        creates: None,
        repairs: false,
        op: &|world| {
            let repo = open_writer(world)?;
            let catalog = repo.index().snapshots()?;
            let protected = repo.index().protected()?;
            let policy = KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            };
            let gone: Vec<SnapshotId> = plan_prune(&catalog, &protected, &policy, None)?
                .into_iter()
                .filter(|d| d.reasons.is_empty())
                .map(|d| d.id)
                .collect();
            forget_present(&repo, &gone)
        },
    }
    .crash_at_every_step();
}

#[test]
fn protect_and_unprotect_survive_power_loss_at_every_step() {
    let (base, before, _) = base_world(4);
    let id = *before.keys().next().unwrap();
    Case {
        name: "protect",
        base: &base,
        before: &before,
        creates: None,
        repairs: false,
        op: &|world| {
            let repo = open_writer(world)?;
            set_protected(&repo, id, true)?;
            set_protected(&repo, id, false)?;
            set_protected(&repo, id, true)
        },
    }
    .crash_at_every_step();
}

#[test]
fn compaction_survives_power_loss_at_every_step() {
    compaction_case(false);
}

/// Compaction copies sealed records verbatim (no re-encryption) through every crash point.
#[test]
fn encrypted_compaction_survives_power_loss_at_every_step() {
    compaction_case(true);
}

fn compaction_case(encrypted: bool) {
    let (base, mut before, _) = base_world_with(5, encrypted);
    // Forget the full so that most of its packs become compactable.
    let oldest = *before.keys().next().unwrap();
    forget_present(&base.writer(), &[oldest]).unwrap();
    before.remove(&oldest);
    Case {
        name: "compact",
        base: &base,
        before: &before,
        creates: None,
        repairs: false,
        op: &|world| {
            let repo = open_writer(world)?;
            let plan = plan_compact(&repo, 0.0)?;
            apply_compact(&repo, &plan, &NoProgress).map(|_| ())
        },
    }
    .crash_at_every_step();
}

#[test]
fn repair_survives_power_loss_at_every_step() {
    let (base, before, _) = base_world(6);
    // Damage one chunk of the newest snapshot inside its pack; the source image heals it.
    let newest_image = base.images.join("gen2");
    {
        let repo = base.writer();
        let mut target = None;
        repo.index()
            .for_each_object(ObjectKind::Chunk, |_, e| {
                if target.is_none() && e.refcount > 0 {
                    target = Some(e);
                }
                Ok(())
            })
            .unwrap();
        let entry = target.expect("a live chunk");
        let key = ObjectKey::pack(entry.pack);
        let mut bytes = repo.backend().get(&key).unwrap();
        let at = usize::try_from(entry.offset).unwrap() + 60;
        bytes[at] ^= 0x5a;
        repo.backend()
            .put_bytes(&key, PutMode::Replace, &bytes)
            .unwrap();
        assert!(!check(&repo, true, &NoProgress).unwrap().is_clean());
    }
    Case {
        name: "repair",
        base: &base,
        before: &before,
        creates: None,
        repairs: true,
        op: &|world| {
            let repo = open_writer(world)?;
            let report = repair(
                &repo,
                &RepairSources {
                    other: None,
                    images: vec![("d0".into(), newest_image.clone())],
                    quarantine_snapshots: false,
                },
                &NoProgress,
            )?;
            assert!(report.is_clean(), "repair left {:?}", report.problems);
            Ok(())
        },
    }
    .crash_at_every_step();
}

#[test]
fn index_rebuild_survives_power_loss_at_every_step() {
    let (base, before, _) = base_world(7);
    Case {
        name: "rebuild-index",
        base: &base,
        before: &before,
        creates: None,
        repairs: false,
        op: &|world| rebuild_index(&world.storage(), world.keys(), &NoProgress).map(|_| ()),
    }
    .crash_at_every_step();
}
