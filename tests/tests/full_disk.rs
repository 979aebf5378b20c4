//! A full filesystem: the write that fails says "no space left" (never a later, vaguer error,
//! nor advice to rebuild an index that is not damaged), the failed run leaves no staged or
//! partial file behind and no snapshot, the repository stays intact, and once space comes
//! back the next backup works.
//!
//! Each case mounts a 24 MiB tmpfs of its own. Mounting needs root (the tests run as root);
//! a failed mount fails the test, it does not skip it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tessera_tests::{
    backup_json, dir_entries, init_repo, list_ids, make_image, pack_files, restore, restored_sha,
    seed, sha256_file, snapshot_id, tessera, verify, DataGen, ImageSpec, Out,
};

/// Size of each case's tmpfs.
const TMPFS_MIB: u64 = 24;

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of [`TMPFS_MIB`] at the new directory `at`.
    fn new(at: PathBuf) -> Self {
        fs::create_dir(&at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_MIB}m"), "tmpfs"])
            .arg(&at)
            .output()
            .expect("running mount");
        assert!(
            mounted.status.success(),
            "cannot mount a tmpfs at {} ({}): the full-disk tests need root",
            at.display(),
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        Self(at)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.0).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Where a case keeps its repository.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RepoOn {
    /// On the tmpfs that fills up.
    FullDisk,
    /// Beside it, on the temp dir's filesystem.
    Elsewhere,
}

/// One case: a tmpfs, and a repository holding one good snapshot of a 1 MiB image.
struct FullDisk {
    /// The case's name, in every failure message.
    case: &'static str,
    /// Declared before `work`: unmounted before the temp dir goes.
    mount: Mount,
    work: TempDir,
    repo: PathBuf,
    small: PathBuf,
    small_sha: String,
    good: String,
    gen: DataGen,
}

impl FullDisk {
    fn new(case: &'static str, repo_on: RepoOn) -> Self {
        let mut gen = DataGen::new(seed(case));
        let work = TempDir::new().unwrap();
        let mount = Mount::new(work.path().join("tmpfs"));
        let repo = match repo_on {
            RepoOn::FullDisk => mount.0.join("repo"),
            RepoOn::Elsewhere => work.path().join("repo"),
        };
        init_repo(&repo, &[]);
        let small = work.path().join("small.img");
        make_image(&small, ImageSpec::mixed((1 << 20) + 5), &mut gen);
        let small_sha = sha256_file(&small);
        let good = snapshot_id(&backup_json(&repo, "small", &[("d", &small)]));
        Self {
            case,
            mount,
            work,
            repo,
            small,
            small_sha,
            good,
            gen,
        }
    }

    /// The tmpfs.
    fn mnt(&self) -> &Path {
        &self.mount.0
    }

    /// An image of `size` bytes (random data: it does not compress) beside the tmpfs.
    fn image(&mut self, name: &str, size: u64, random: bool) -> PathBuf {
        let path = self.work.path().join(name);
        let weights = if random { (0, 0, 1) } else { (2, 4, 4) };
        make_image(
            &path,
            ImageSpec {
                weights,
                ..ImageSpec::mixed(size)
            },
            &mut self.gen,
        );
        path
    }

    /// `tessera backup REPO --series SERIES d=IMG`.
    fn backup(&self, series: &str, img: &Path) -> Out {
        tessera([
            "backup".as_ref(),
            self.repo.as_os_str(),
            "--series".as_ref(),
            series.as_ref(),
            format!("d={}", img.display()).as_ref(),
        ])
    }

    /// `out` failed because the disk is full, says so, and does not blame the index.
    #[track_caller]
    fn assert_full_disk_error(&self, out: &Out) {
        let case = self.case;
        assert_eq!(out.code, 1, "[{case}] expected a failure: {out}");
        assert!(
            out.stderr.contains("no space left"),
            "[{case}] the error does not say the disk is full: {out}"
        );
        assert!(
            !out.stderr.contains("rebuild"),
            "[{case}] a full disk is reported as a damaged index (advice to rebuild it): {out}"
        );
    }

    /// The failed run left no staged file and no snapshot; the good snapshot restores, the
    /// repository verifies, and a new backup works and restores.
    #[track_caller]
    fn assert_intact_and_writable(&self) {
        let case = self.case;
        let staged = dir_entries(&self.repo.join("tmp"));
        assert!(staged.is_empty(), "[{case}] staged files left: {staged:?}");
        assert_eq!(list_ids(&self.repo), vec![self.good.clone()], "[{case}]");
        assert_eq!(
            restored_sha(&self.repo, &self.good, self.work.path()),
            self.small_sha,
            "[{case}] the good snapshot restores differently"
        );
        verify(&self.repo).ok();
        let again = snapshot_id(&backup_json(&self.repo, "small", &[("d", &self.small)]));
        assert_eq!(
            restored_sha(&self.repo, &again, self.work.path()),
            self.small_sha,
            "[{case}] the backup after the space came back restores differently"
        );
        verify(&self.repo).ok();
    }
}

#[test]
fn backup_larger_than_the_disk() {
    let mut f = FullDisk::new("backup_larger_than_the_disk", RepoOn::FullDisk);
    let big = f.image("big.img", (TMPFS_MIB + 16) << 20, true);
    let out = f.backup("big", &big);
    f.assert_full_disk_error(&out);
    f.assert_intact_and_writable();
}

/// Fills the tmpfs, then gives back `slack` bytes; returns the filler file.
fn fill_leaving(mnt: &Path, slack: u64) -> PathBuf {
    let filler = mnt.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0x5a_u8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    let len = fs::metadata(&filler).unwrap().len();
    assert!(len > slack, "the filler holds only {len} bytes");
    f.set_len(len - slack).unwrap();
    filler
}

/// A tiny backup with little room left: RocksDB's writes (its log, options and table files
/// when the index opens, the batch when the backup publishes) meet the full disk before or
/// instead of the pack writes. The room left grows step by step until the backup fits; every
/// failure on the way must be a clean full-disk error, and at least one of them must come
/// from the index.
#[test]
fn index_writes_on_a_full_disk() {
    const STEP: u64 = 16 << 10;
    const MAX_STEPS: u64 = 64;
    let mut f = FullDisk::new("index_writes_on_a_full_disk", RepoOn::FullDisk);
    let tiny = f.image("tiny.img", 20_000, false);
    let mut index_failures = 0;
    let mut fitted = None;
    for step in 0..MAX_STEPS {
        let slack = step * STEP;
        let filler = fill_leaving(f.mnt(), slack);
        let packs = pack_files(&f.repo);
        let out = f.backup("tiny", &tiny);
        fs::remove_file(&filler).unwrap();
        eprintln!(
            "[{}] {} KiB free: exit {}: {}",
            f.case,
            slack >> 10,
            out.code,
            out.stderr.trim()
        );
        if out.code == 0 {
            fitted = Some(slack);
            break;
        }
        f.assert_full_disk_error(&out);
        if out.stderr.contains("the index") {
            index_failures += 1;
        }
        assert_eq!(
            list_ids(&f.repo),
            vec![f.good.clone()],
            "[{}] a failed backup with {slack} bytes free changed the catalog: {out}",
            f.case
        );
        // A backup that ran out of space when it came to publish has sealed packs no snapshot
        // references (it stores before it takes the writer lock, SPEC.md §8): the next
        // writer adopts them and a compaction reclaims them, leaving the packs of before.
        if pack_files(&f.repo) != packs {
            tessera([
                "compact".as_ref(),
                f.repo.as_os_str(),
                "--grace".as_ref(),
                "0".as_ref(),
                "--max-unused".as_ref(),
                "0".as_ref(),
            ])
            .ok();
        }
        assert_eq!(
            pack_files(&f.repo),
            packs,
            "[{}] a failed backup with {slack} bytes free left a pack that compaction did not reclaim: {out}",
            f.case
        );
        verify(&f.repo).ok();
    }
    let fitted = fitted.unwrap_or_else(|| {
        panic!(
            "[{}] the tiny backup never fitted, with up to {} KiB free",
            f.case,
            (MAX_STEPS * STEP) >> 10
        )
    });
    assert!(
        index_failures > 0,
        "[{}] no failure came from the index (the backup fitted with {} KiB free)",
        f.case,
        fitted >> 10
    );
    // Leave the repository as the other cases do: only the good snapshot.
    let tiny_id = list_ids(&f.repo).pop().unwrap();
    assert_ne!(tiny_id, f.good, "[{}]", f.case);
    tessera(["forget".as_ref(), f.repo.as_os_str(), tiny_id.as_ref()]).ok();
    f.assert_intact_and_writable();
}

/// A restore onto a full filesystem fails with the write error, stops early, and leaves no
/// partial file.
#[test]
fn restore_onto_a_full_disk() {
    let mut f = FullDisk::new("restore_onto_a_full_disk", RepoOn::Elsewhere);
    let big = f.image("big.img", (TMPFS_MIB + 16) << 20, true);
    let id = snapshot_id(&backup_json(&f.repo, "big", &[("d", &big)]));
    let out = restore(&f.repo, &id, &f.mnt().join("out.raw"), false);
    f.assert_full_disk_error(&out);
    let left = dir_entries(f.mnt());
    assert!(
        left.is_empty(),
        "[{}] a failed restore left files on the full disk: {left:?}",
        f.case
    );
    tessera(["forget".as_ref(), f.repo.as_os_str(), id.as_ref()]).ok();
    f.assert_intact_and_writable();
}
