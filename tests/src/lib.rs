//! Shared support for tessera's end-to-end tests (the files under `tests/tests/`).
//!
//! - [`tessera_bin`] finds (and first brings up to date) the `tessera` binary.
//! - [`tessera`] / [`tessera_cmd`] run it and capture exit code, stdout and stderr.
//! - [`DataGen`], [`make_image`], [`mutate`] produce seeded disk images: zero regions,
//!   compressible text-like data and random data, optionally sparse with real holes.
//! - [`sha256_file`], [`assert_same_file`], [`block_digests`] are the oracles.
//! - [`write_change_list`] and [`back_up_a_damaged_victim`] set up a delta source and a
//!   snapshot with a corrupted chunk.
//! - [`kill::KillLoop`] kills writers inside their operation and proves it did.
//! - [`remote::Transport`] runs `serve`/`sync` scenarios over `http://` or `https://`.
//! - [`pki::Pki`] makes a CA with server and client certificates for qemu and libnbd.
//! - [`serve_nbd::NbdServer`] runs `serve-nbd`; [`serve_nbd::raw`] is a hand-written client.
//! - [`qemu`], [`libvhdi`] and [`vhd_build`] are the independent image tools.
//! - [`seaweed::Seaweed`] runs a real SeaweedFS (S3) on loopback for one test;
//!   [`fault_proxy::FaultProxy`] sits in front of it and breaks chosen requests.
//! - [`moto::Moto`] runs moto, a mock of AWS S3 that enforces Object Lock, on loopback;
//!   [`moto::Boto`] is boto3, an independent S3 client, reading back what tessera stored.
//!
//! Every tool the tests use is installed by `scripts/ensure-deps.sh`; a test never skips
//! because one is missing, it fails and names the script.
//!
//! ## How the binary is found
//!
//! Integration tests of *this* package do not get `CARGO_BIN_EXE_tessera`: the binary
//! belongs to `tessera-cli`, and Cargo builds a package's binaries automatically only for
//! that same package's integration tests. `cargo test --workspace` does **not** build
//! `target/debug/tessera`: it builds the CLI's *unit-test* harness (`deps/tessera-<hash>`)
//! only. (Checked with `cargo test --workspace --no-run --unit-graph`: the only unit of the
//! `tessera` bin target has mode `test`, none has mode `build`.) So on a clean target
//! directory the binary would be missing, and on a warm one it could be stale.
//!
//! Therefore the first call in each test process runs
//! `cargo build -p tessera-cli --bin tessera` (guarded by a `OnceLock`; a no-op of ~0.1 s
//! when up to date) with the `cargo` that runs the tests (`$CARGO`), into the target
//! directory the test executable lives in (from `current_exe()`: `TARGET/PROFILE/deps/NAME`
//! → `TARGET`, so `CARGO_TARGET_DIR` is honoured), with the same profile. Cargo releases its
//! build-directory lock before it runs test executables, so this does not deadlock (it may
//! wait while another cargo process builds into the same directory).
//!
//! Overrides: `TESSERA_BIN=/path/to/tessera` uses that binary and builds nothing;
//! `TESSERA_NO_BUILD=1` skips the build and only looks for `TARGET/PROFILE/tessera`.

#![allow(
    clippy::missing_panics_doc,
    reason = "test support: every helper panics with a message on failure, by design"
)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

pub use serde_json::Value;

pub mod browser;
pub mod encrypted;
pub mod fault_proxy;
pub mod fs_images;
pub mod kill;
pub mod libvhdi;
pub mod moto;
pub mod pki;
pub mod qemu;
pub mod remote;
pub mod seaweed;
pub mod serve_nbd;
pub mod sinks;
pub mod vhd_build;
pub mod xo_build;

// ---------------------------------------------------------------------------------------
// Locating and running the binary
// ---------------------------------------------------------------------------------------

/// Path of the `tessera` binary under test (see the module docs).
pub fn tessera_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_or_build)
}

fn locate_or_build() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TESSERA_BIN={} does not name an existing file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // TARGET/PROFILE/deps/NAME-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in TARGET/PROFILE/deps")
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("profile directory has a parent")
        .to_path_buf();
    let profile_name = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("debug")
        .to_string();
    let bin = profile_dir.join("tessera");
    if std::env::var_os("TESSERA_NO_BUILD").is_none() {
        let cargo = std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(Into::into))
            .unwrap_or_else(|| "cargo".into());
        let profile = match profile_name.as_str() {
            "debug" => "dev",
            other => other,
        };
        let started = Instant::now();
        let out = Command::new(&cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "tessera-cli", "--bin", "tessera", "--profile", profile])
            .arg("--target-dir")
            .arg(&target_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} to build the tessera binary: {e}; run `cargo build -p tessera-cli` \
                     first and set TESSERA_NO_BUILD=1 (or TESSERA_BIN=path)",
                    Path::new(&cargo).display()
                )
            });
        assert!(
            out.status.success(),
            "`cargo build -p tessera-cli` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "[support] cargo build -p tessera-cli: up to date after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    assert!(
        bin.is_file(),
        "the tessera binary is missing at {}: run `cargo build -p tessera-cli` first \
         (with the same CARGO_TARGET_DIR and profile as the tests)",
        bin.display()
    );
    bin
}

/// A finished run of the binary.
#[derive(Debug, Clone)]
pub struct Out {
    /// The arguments (for messages).
    pub args: Vec<String>,
    /// Exit code; `128 + signal` if it died of a signal.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// The outcome of a finished `tessera ARGS...`.
    pub fn of<A: AsRef<std::ffi::OsStr>>(args: &[A], output: &std::process::Output) -> Self {
        Self {
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            code: exit_code(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics, showing everything, unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code of {self}");
        self
    }

    /// Panics unless the exit code is 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// Parses stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}) in {self}"))
    }

    /// Panics unless stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr lacks {needle:?} in {self}"
        );
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`tessera {}` exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// A `Command` for the binary with `args`; stdin null, stdout/stderr piped.
pub fn tessera_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(tessera_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the binary to completion: (exit code, stdout, stderr) in an [`Out`].
pub fn tessera<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    Out::of(
        &args,
        &tessera_cmd(&args).output().expect("running tessera"),
    )
}

/// Exit code, or `128 + signal` for a process killed by a signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Collects a spawned child's output.
pub fn finish_child(child: Child, args: &[&str]) -> Out {
    Out::of(
        args,
        &child.wait_with_output().expect("waiting for tessera"),
    )
}

/// Sends a signal by name (`STOP`, `CONT`, ...) with the `kill` utility (the workspace
/// forbids `unsafe`, so no `libc::kill`). `Child::kill` covers SIGKILL.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Polls `cond` every 2 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_every(timeout, Duration::from_millis(2), cond)
}

/// Polls `cond` every `interval` until it holds or `timeout` passes; returns whether it held.
pub fn wait_every(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(interval);
    }
}

// ---------------------------------------------------------------------------------------
// Repository helpers through the CLI
// ---------------------------------------------------------------------------------------

/// `tessera init REPO [extra...]`, asserting success: a plain repository unless `extra`
/// names `--encryption` (the tests of other features do not need a passphrase).
pub fn init_repo(repo: &Path, extra: &[&str]) {
    let mut args: Vec<&OsStr> = vec!["init".as_ref(), repo.as_os_str()];
    if !extra.contains(&"--encryption") {
        args.extend([OsStr::new("--encryption"), OsStr::new("none")]);
    }
    args.extend(extra.iter().map(OsStr::new));
    tessera(args).ok();
}

/// Writes `token` to `DIR/token` for `tessera serve --token-file` / `sync --token-file`;
/// returns the path.
///
/// # Panics
///
/// When the file cannot be written.
pub fn token_file(dir: &Path, token: &str) -> PathBuf {
    token_file_named(dir, "token", token)
}

/// Writes `token` to `DIR/NAME` with mode 600 (servers and clients refuse token files that
/// group or others may read); returns the path.
pub fn token_file_named(dir: &Path, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, token).expect("writing the token file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// `tessera --json backup REPO --series S NAME=PATH...`, asserting success; returns the JSON.
pub fn backup_json(repo: &Path, series: &str, disks: &[(&str, &Path)]) -> Value {
    let out = tessera(backup_args(repo, series, disks));
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    v
}

/// Arguments of `tessera --json backup REPO --series S NAME=PATH...`.
pub fn backup_args(repo: &Path, series: &str, disks: &[(&str, &Path)]) -> Vec<String> {
    let mut args = vec![
        "--json".to_string(),
        "backup".into(),
        repo.display().to_string(),
        "--series".into(),
        series.into(),
    ];
    for (name, path) in disks {
        args.push(format!("{name}={}", path.display()));
    }
    args
}

/// The snapshot id of a backup's JSON.
pub fn snapshot_id(backup: &Value) -> String {
    backup["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot id in {backup}"))
        .to_string()
}

/// Sum of a per-disk field of a backup's JSON.
pub fn disk_sum(backup: &Value, field: &str) -> u64 {
    backup["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("no disks in {backup}"))
        .iter()
        .map(|d| {
            d[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in {d}"))
        })
        .sum()
}

/// `tessera --json list REPO`, asserting success; returns the snapshots array.
pub fn list_json(repo: &Path) -> Vec<Value> {
    let out = tessera([OsStr::new("--json"), "list".as_ref(), repo.as_os_str()]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    v["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots array in {out}"))
        .clone()
}

/// Ids of `list --json`, oldest first.
pub fn list_ids(repo: &Path) -> Vec<String> {
    list_json(repo)
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// `tessera restore REPO SPEC OUT [--force]`.
pub fn restore(repo: &Path, spec: &str, out: &Path, force: bool) -> Out {
    let mut args: Vec<&OsStr> = vec![
        "restore".as_ref(),
        repo.as_os_str(),
        spec.as_ref(),
        out.as_os_str(),
    ];
    if force {
        args.push("--force".as_ref());
    }
    tessera(args)
}

/// `tessera verify REPO`.
pub fn verify(repo: &Path) -> Out {
    tessera([OsStr::new("verify"), repo.as_os_str()])
}

/// Restores `spec` to a fresh file in `scratch`, returns its SHA-256 and removes it.
pub fn restored_sha(repo: &Path, spec: &str, scratch: &Path) -> String {
    let out = scratch.join(format!("restored-{}", spec.replace([':', '@', '/'], "_")));
    let _ = fs::remove_file(&out);
    restore(repo, spec, &out, false).ok();
    let sha = sha256_file(&out);
    fs::remove_file(&out).expect("removing restored file");
    sha
}

/// Total size of the pack files under `REPO/packs`, and their count.
pub fn pack_bytes(repo: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    for p in pack_files(repo) {
        total += fs::metadata(&p).expect("pack metadata").len();
        count += 1;
    }
    (total, count)
}

/// Every `*.pack` file under `REPO/packs`, sorted.
pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(repo.join("packs")) else {
        return out;
    };
    for shard in shards {
        let shard = shard.expect("listing packs").path();
        if !shard.is_dir() {
            continue;
        }
        for f in fs::read_dir(&shard).expect("listing pack shard") {
            let p = f.expect("listing pack shard").path();
            if p.extension().is_some_and(|e| e == "pack") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Records in every pack file of `repo`, from the pack trailers (SPEC.md §4).
pub fn pack_records(repo: &Path) -> u64 {
    pack_files(repo)
        .iter()
        .map(|p| {
            let bytes = fs::read(p).expect("reading pack");
            let trailer = &bytes[bytes.len() - 32..];
            u64::from(u32::from_le_bytes(
                trailer[8..12].try_into().expect("4 bytes"),
            ))
        })
        .sum()
}

/// Every record of `repo`'s packs is an object of its index exactly once: nothing was
/// stored twice (`context` leads the failure message).
#[track_caller]
pub fn assert_no_duplicates(repo: &Path, context: &str) {
    let out = tessera([OsStr::new("--json"), "stats".as_ref(), repo.as_os_str()]);
    out.ok();
    let s = &out.json()["stats"];
    let count = |field: &str| {
        s[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{context}: no {field} in {s}"))
    };
    let indexed = count("live_chunks") + count("live_pages") + count("unreferenced_objects");
    assert_eq!(
        pack_records(repo),
        indexed,
        "{context}: pack records vs objects in the index: {s}"
    );
}

/// Backs up `image` (written here: 2 MiB + 99 bytes of random data, from `gen`) as series
/// `victim`, into a pack of its own, then flips one byte in the middle of that pack: inside
/// some chunk's stored bytes. Returns the snapshot id and the pack id.
pub fn back_up_a_damaged_victim(repo: &Path, image: &Path, gen: &mut DataGen) -> (String, String) {
    let before = pack_files(repo);
    make_image(
        image,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(2 * (1 << 20) + 99)
        },
        gen,
    );
    let id = snapshot_id(&backup_json(repo, "victim", &[("d", image)]));
    let pack = pack_files(repo)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("the victim's backup wrote a pack of its own");
    let mut bytes = fs::read(&pack).expect("reading the victim's pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&pack, bytes).expect("writing the victim's pack");
    let pack_id = pack
        .file_stem()
        .expect("a pack file name")
        .to_string_lossy()
        .into_owned();
    (id, pack_id)
}

/// What a crash just before cataloguing leaves, made deterministically: a copy of `repo` at
/// `DIR/twin` with one more backup (series `vm`, disk `d`) of a new 48 MiB image `DIR/b` made
/// in it, so that its new packs and snapshot file can be carried into `repo`. Returns the
/// twin, the image, the new snapshot's id and the image's SHA-256.
pub fn back_up_in_a_twin(
    dir: &Path,
    repo: &Path,
    gen: &mut DataGen,
) -> (PathBuf, PathBuf, String, String) {
    let twin = dir.join("twin");
    let st = Command::new("cp")
        .arg("-a")
        .arg(repo)
        .arg(&twin)
        .status()
        .unwrap();
    assert!(st.success());
    let b = dir.join("b");
    make_image(
        &b,
        ImageSpec {
            weights: (1, 2, 7),
            ..ImageSpec::mixed((48 << 20) + 1)
        },
        gen,
    );
    let sha_b = sha256_file(&b);
    let lost = snapshot_id(&backup_json(&twin, "vm", &[("d", &b)]));
    (twin, b, lost, sha_b)
}

/// Writes a changed-block list (SPEC.md §14b, `backup --changes DISK=FILE`): a disk of
/// `size` bytes whose `extents` (offset, length) changed since the state `base`, now in the
/// state `state` (`*` as `base`: the whole disk, no base).
pub fn write_change_list(path: &Path, size: u64, base: &str, state: &str, extents: &[(u64, u64)]) {
    use std::fmt::Write as _;
    let mut text =
        format!("tessera-changed-blocks v1\nsize {size}\nbase-state {base}\nstate {state}\n");
    for (o, l) in extents {
        writeln!(text, "extent {o} {l}").expect("writing to a String");
    }
    fs::write(path, text).expect("writing the changed-block list");
}

/// Names of the entries of a directory (empty if it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Seeds and knobs
// ---------------------------------------------------------------------------------------

/// The seed of a randomized test: `TESSERA_SEED` if set, else a fresh random one. Printed
/// (shown when the test fails) so that any failure can be reproduced.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("TESSERA_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TESSERA_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("[{test}] seed {seed} (reproduce with TESSERA_SEED={seed})");
    seed
}

/// An integer knob from the environment.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Image generation
// ---------------------------------------------------------------------------------------

/// What a region of an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// All zero (a hole in sparse images).
    Zero,
    /// Text-like, compressible bytes (unique per region, but compressing ~3-4x).
    Text,
    /// Incompressible random bytes.
    Random,
}

/// Seeded data source. Text regions are cut from a pool of generated text at random byte
/// offsets, so they compress well yet two blocks are almost never identical.
pub struct DataGen {
    /// The generator; use it for any other random choice so one seed fixes everything.
    pub rng: StdRng,
    pool: Vec<u8>,
}

const WORDS: &[&str] = &[
    "block", "disk", "sector", "the", "of", "and", "kernel", "inode", "journal", "commit", "write",
    "read", "tessera", "snapshot", "backup", "restore", "page", "chunk", "pack", "index", "error",
    "warning", "info", "user", "root", "var", "log", "etc", "usr", "lib", "GET", "POST",
    "HTTP/1.1", "200", "404", "request", "response", "session", "cache",
];

impl DataGen {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pool = Vec::with_capacity(1 << 20);
        let mut line = 0u64;
        while pool.len() < (1 << 20) {
            line += 1;
            write!(
                pool,
                "{:08} {:>5} ",
                line * 7919 % 100_000_000,
                rng.gen_range(0..65536u32)
            )
            .expect("vec write");
            for _ in 0..rng.gen_range(3..14) {
                pool.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
                pool.push(b' ');
            }
            pool.push(b'\n');
        }
        Self { rng, pool }
    }

    /// Fills `buf` with data of `kind`.
    pub fn fill(&mut self, kind: Fill, buf: &mut [u8]) {
        match kind {
            Fill::Zero => buf.fill(0),
            Fill::Random => self.rng.fill_bytes(buf),
            Fill::Text => {
                let mut done = 0;
                while done < buf.len() {
                    let start = self.rng.gen_range(0..self.pool.len());
                    let n = (self.pool.len() - start)
                        .min(buf.len() - done)
                        .min(self.rng.gen_range(4096..=256 * 1024));
                    buf[done..done + n].copy_from_slice(&self.pool[start..start + n]);
                    done += n;
                }
            }
        }
    }

    /// A random fill kind with the given weights (zero, text, random).
    pub fn pick(&mut self, weights: (u32, u32, u32)) -> Fill {
        let (z, t, r) = weights;
        let x = self.rng.gen_range(0..z + t + r);
        if x < z {
            Fill::Zero
        } else if x < z + t {
            Fill::Text
        } else {
            Fill::Random
        }
    }

    /// `len` bytes of data of `kind`.
    pub fn bytes(&mut self, kind: Fill, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(kind, &mut v);
        v
    }
}

/// How to build an image.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    /// Size in bytes.
    pub size: u64,
    /// Weights of zero, text and random regions.
    pub weights: (u32, u32, u32),
    /// Region lengths are drawn from `1..=max_region`.
    pub max_region: u64,
    /// Leave zero regions as holes (the file is created with `set_len`), else write zeros.
    pub sparse: bool,
}

impl ImageSpec {
    /// A mixed image: 20% zero, 40% text, 40% random regions of up to 512 KiB, not sparse.
    pub fn mixed(size: u64) -> Self {
        Self {
            size,
            weights: (2, 4, 4),
            max_region: 512 * 1024,
            sparse: false,
        }
    }
}

/// Writes an image following `spec` to `path` (replacing it).
pub fn make_image(path: &Path, spec: ImageSpec, gen: &mut DataGen) {
    let f = File::create(path).expect("creating image");
    if spec.sparse {
        f.set_len(spec.size).expect("sizing image");
    }
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < spec.size {
        let len = gen.rng.gen_range(1..=spec.max_region).min(spec.size - pos);
        let kind = gen.pick(spec.weights);
        if !(spec.sparse && kind == Fill::Zero) {
            buf.resize(len as usize, 0);
            gen.fill(kind, &mut buf);
            f.write_all_at(&buf, pos).expect("writing image");
        }
        pos += len;
    }
    f.sync_all().expect("syncing image");
    assert_eq!(f.metadata().expect("metadata").len(), spec.size);
}

/// `writes` random writes into the file at `path` without changing its size: random
/// offsets, lengths `1..=max_len`, data of random kind (zero included).
pub fn mutate(
    path: &Path,
    gen: &mut DataGen,
    writes: usize,
    max_len: u64,
    weights: (u32, u32, u32),
) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening image");
    let size = f.metadata().expect("metadata").len();
    if size == 0 {
        return;
    }
    for _ in 0..writes {
        let off = gen.rng.gen_range(0..size);
        let len = gen.rng.gen_range(1..=max_len).min(size - off);
        let kind = gen.pick(weights);
        let data = gen.bytes(kind, len as usize);
        f.write_all_at(&data, off).expect("writing image");
    }
    f.sync_all().expect("syncing image");
}

// ---------------------------------------------------------------------------------------
// Oracles
// ---------------------------------------------------------------------------------------

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of a file's content, in hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("reading for sha256");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// Asserts that two files have identical size and bytes; names the first difference.
#[track_caller]
pub fn assert_same_file(expected: &Path, actual: &Path) {
    let expected_len = fs::metadata(expected)
        .unwrap_or_else(|e| panic!("{}: {e}", expected.display()))
        .len();
    let actual_len = fs::metadata(actual)
        .unwrap_or_else(|e| panic!("{}: {e}", actual.display()))
        .len();
    assert_eq!(
        expected_len,
        actual_len,
        "size of {} differs from {}",
        actual.display(),
        expected.display()
    );
    let mut fa = File::open(expected).expect("open expected");
    let mut fb = File::open(actual).expect("open actual");
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(n, m, "short read comparing at {pos}");
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{} differs from {} first at byte {} (expected {:#04x}, got {:#04x})",
                actual.display(),
                expected.display(),
                pos + i as u64,
                ba[i],
                bb[i]
            );
        }
        pos += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read(&mut buf[done..]).expect("read");
        if n == 0 {
            break;
        }
        done += n;
    }
    done
}

/// One block of an image as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockInfo {
    /// SHA-256 of the block's bytes.
    pub digest: [u8; 32],
    /// Its length (the last block may be short).
    pub len: u64,
    /// Whether every byte is zero (such blocks are never stored).
    pub zero: bool,
}

/// The blocks of a file cut at `block_size`, with their digests.
pub fn block_digests(path: &Path, block_size: u64) -> Vec<BlockInfo> {
    let mut f = File::open(path).expect("open image");
    let mut buf = vec![0u8; block_size as usize];
    let mut out = Vec::new();
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            break;
        }
        let b = &buf[..n];
        out.push(BlockInfo {
            digest: Sha256::digest(b).into(),
            len: n as u64,
            zero: b.iter().all(|&x| x == 0),
        });
        if n < buf.len() {
            break;
        }
    }
    out
}

/// Bytes actually allocated to a file (`st_blocks * 512`).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").blocks() * 512
}

// ---------------------------------------------------------------------------------------
// Writers held still
// ---------------------------------------------------------------------------------------

/// Whether `REPO/lock` names `pid` as the writer holding it.
pub fn lock_says(repo: &Path, pid: u32) -> bool {
    fs::read_to_string(repo.join("lock"))
        .is_ok_and(|s| s.lines().any(|l| l == format!("pid={pid}")))
}

/// Whether `repo/tmp` holds a staged pack of process `pid` (`packs%….<pid>.<random>.tmp`,
/// SPEC.md §2a): the process is storing blocks, past its open and before its publish.
pub fn stages_pack(repo: &Path, pid: u32) -> bool {
    let marker = format!(".{pid}.");
    fs::read_dir(repo.join("tmp")).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("packs%") && name.contains(&marker)
        })
    })
}

/// Starts a backup of `img` as `series` and stops it (SIGSTOP) while it stages a pack: past
/// its open (it holds its series lock, not the writer lock) and before its publish.
pub fn frozen_backup(repo: &Path, series: &str, img: &Path) -> KillOnDrop {
    for _ in 0..20 {
        let child = tessera_cmd(backup_args(repo, series, &[("d", img)]))
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut child = KillOnDrop(Some(child));
        let staging = wait_every(Duration::from_secs(30), Duration::from_millis(1), || {
            stages_pack(repo, pid)
        });
        assert!(staging, "the backup of {series} never staged a pack");
        signal(pid, "STOP");
        if stages_pack(repo, pid) {
            return child;
        }
        signal(pid, "CONT");
        finish_child(child.0.take().unwrap(), &[]).ok();
    }
    panic!("could not stop the backup of {series} while it staged a pack");
}

/// Takes the `flock` on the lock file `path` and records this process as its holder, as
/// tessera's locks do (SPEC.md §8); held until the file is dropped.
pub fn hold_lock(path: &Path) -> File {
    use std::io::Write as _;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("opening the lock file");
    file.lock().expect("taking the lock");
    file.set_len(0).expect("clearing the lock file");
    write!(file, "pid={}\nhost=test\nsince=now\n", std::process::id())
        .expect("writing the lock file");
    file
}

/// Whether a series lock file of `repo` names `pid` as its holder (a backup holds its
/// series' lock for its whole run, SPEC.md §8).
pub fn series_lock_says(repo: &Path, pid: u32) -> bool {
    fs::read_dir(repo.join("locks")).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            fs::read_to_string(e.path()).is_ok_and(|s| s.lines().any(|l| l == format!("pid={pid}")))
        })
    })
}

/// A child process that is SIGKILLed when dropped (e.g. if the test fails while it is
/// frozen), so no stopped writer outlives the test.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes the connection of `socket` vanish the way a client machine that loses power does:
/// once the caller drops `socket`, it is gone here without a FIN or a reset (`TCP_REPAIR`,
/// which needs CAP_NET_ADMIN: run the tests as root), so the server learns of it only by
/// probing (TCP keepalive), and then gets a reset, as from a rebooted machine. Bytes still
/// queued are never sent: write the last ones with `set_nodelay(true)` and give them a moment.
///
/// # Panics
///
/// When the kernel refuses repair mode.
pub fn vanish(socket: &std::net::TcpStream) {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::TcpRepair, &1)
        .expect("TCP_REPAIR (needs CAP_NET_ADMIN: run the tests as root)");
}

/// After clients that hold every request slot of a server started with `--keepalive
/// keepalive_secs` have vanished ([`vanish`]): asserts that the server turns work away
/// (`status()` = 503) before the first keepalive probe, then answers again (200) within six
/// times the keepalive time; returns how long that took.
///
/// # Panics
///
/// When either does not happen.
pub fn slots_held_then_freed(keepalive_secs: u64, status: impl Fn() -> u16) -> Duration {
    let vanished = Instant::now();
    let held = loop {
        let code = status();
        if code == 503 || vanished.elapsed() > Duration::from_secs(keepalive_secs - 1) {
            break code;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        held, 503,
        "the vanished clients never held the request slots"
    );
    let deadline = Duration::from_secs(6 * keepalive_secs);
    while status() != 200 {
        assert!(
            vanished.elapsed() < deadline,
            "slots still held {deadline:?} after the clients vanished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vanished.elapsed()
}

/// A running `tessera serve`, killed on drop.
pub struct Served {
    child: KillOnDrop,
    /// The URL it printed (`http://` or `https://127.0.0.1:PORT`).
    pub url: String,
}

impl Served {
    /// The server's process id.
    ///
    /// # Panics
    ///
    /// Never (the child is held until drop).
    pub fn pid(&self) -> u32 {
        self.child.0.as_ref().expect("the server").id()
    }

    /// `HOST:PORT` of the URL.
    pub fn addr(&self) -> &str {
        self.url.split_once("://").map_or(&self.url, |(_, a)| a)
    }
}

/// Starts `tessera serve REPO --listen 127.0.0.1:0 --token-file TOKEN EXTRA...` and waits for
/// its first line, `listening on URL`.
pub fn start_serve(repo: &Path, token_file: &Path, extra: &[&OsStr]) -> Served {
    let mut args: Vec<&OsStr> = vec!["--token-file".as_ref(), token_file.as_os_str()];
    args.extend_from_slice(extra);
    start_serve_args(repo, &args)
}

/// Starts `tessera serve REPO --listen 127.0.0.1:0 ARGS...` (`--listen` only if ARGS have none;
/// stderr, where the audit log goes by default, discarded) and waits for its first line, `listening on URL`.
///
/// # Panics
///
/// When the server does not start.
pub fn start_serve_args(repo: &Path, args: &[&OsStr]) -> Served {
    let mut all: Vec<&OsStr> = vec!["serve".as_ref(), repo.as_os_str()];
    if !args.contains(&OsStr::new("--listen")) {
        all.extend([OsStr::new("--listen"), OsStr::new("127.0.0.1:0")]);
    }
    all.extend_from_slice(args);
    let mut child = tessera_cmd(all)
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tessera serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped stdout")),
        &mut line,
    )
    .expect("reading the serve banner");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Served {
        child: KillOnDrop(Some(child)),
        url,
    }
}

/// `tessera token add FILE --role ROLE --series SERIES --name NAME [--quota QUOTA]`: returns
/// the token it printed.
///
/// # Panics
///
/// When the command fails or prints anything but one token.
pub fn token_add(file: &Path, role: &str, series: &str, name: &str, quota: Option<&str>) -> String {
    let mut args = vec![
        "token".to_string(),
        "add".into(),
        file.display().to_string(),
        "--role".into(),
        role.into(),
        "--series".into(),
        series.into(),
        "--name".into(),
        name.into(),
    ];
    if let Some(q) = quota {
        args.extend(["--quota".into(), q.into()]);
    }
    let out = tessera(args);
    out.ok();
    let token = out.stdout.trim().to_string();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    token
}

/// The peak resident memory (`VmHWM`) of process `pid`, in bytes.
///
/// # Panics
///
/// When `/proc/PID/status` has no `VmHWM` line.
pub fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Stored bytes `tessera forget REPO ID --dry-run --json` says forgetting `id` frees.
pub fn forget_freed(repo: &Path, id: &str) -> u64 {
    let out = tessera([
        OsStr::new("--json"),
        "forget".as_ref(),
        repo.as_os_str(),
        id.as_ref(),
        "--dry-run".as_ref(),
    ]);
    out.ok();
    out.json()["freed"]["stored_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no freed.stored_bytes in {out}"))
}
