//! `tessera files` measured end to end through the release `tessera` binary (SPEC.md §24.8),
//! on ext4 images made by `mkfs.ext4 -d` and changed between generations with `debugfs -w`:
//!
//! - `files get` of one large file (+ fsync) against a full restore of its disk (which
//!   fsyncs), in MB/s of what each wrote; the goal is a ratio of at least 0.8;
//! - `files ls` of a directory in a large sparse image: seconds warm, and manifest blocks
//!   read of the disk's blocks;
//! - `files find` of one path (and of a glob) over a series of N snapshots against a series
//!   of one, each the median of five runs; the goal is at most 3x.
//!
//! `cargo run --release -p tessera-benches --bin files-bench [-- --file-mib 1024 --big-gib 20
//! --generations 30 --tessera PATH --keep]` (`--keep` leaves the repository and images in
//! /var/tmp and prints where, for profiling a command by hand).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_benches::bin_args::{arg, tessera_path};

/// Runs `cmd`, panicking with its stderr when it fails; returns seconds and stdout.
fn run(cmd: &mut Command) -> (f64, Vec<u8>) {
    let started = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (started.elapsed().as_secs_f64(), out.stdout)
}

fn json(cmd: &mut Command) -> (f64, serde_json::Value) {
    let (secs, out) = run(cmd);
    (secs, serde_json::from_slice(&out).expect("--json output"))
}

/// `mkfs.ext4 -d SRC` into a new sparse file of `size` bytes.
fn mkfs(image: &Path, src: &Path, size: u64) {
    let _ = fs::remove_file(image);
    fs::File::create(image)
        .and_then(|f| f.set_len(size))
        .expect("image");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(src)
        .arg(image));
}

/// Small configuration-like files: `etc/passwd`, `etc/NNNN.conf` and a few levels of
/// subdirectories.
fn write_etc(src: &Path, rng: &mut StdRng, files: usize) {
    let etc = src.join("etc");
    fs::create_dir_all(etc.join("sub/deeper")).expect("etc");
    fs::write(etc.join("passwd"), b"root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    for i in 0..files {
        let mut text = String::new();
        for line in 0..rng.gen_range(10..80) {
            let _ = writeln!(text, "option_{line} = {}", rng.gen::<u32>());
        }
        let dir = match i % 3 {
            0 => etc.clone(),
            1 => etc.join("sub"),
            _ => etc.join("sub/deeper"),
        };
        fs::write(dir.join(format!("{i:04}.conf")), text).expect("conf");
    }
}

fn sync_file(path: &Path) {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("sync");
}

fn tessera(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    cmd
}

#[expect(clippy::too_many_lines, reason = "one linear benchmark script")]
fn main() {
    let file_mib: u64 = arg("--file-mib", "1024").parse().expect("--file-mib");
    let big_gib: u64 = arg("--big-gib", "20").parse().expect("--big-gib");
    let generations: usize = arg("--generations", "30").parse().expect("--generations");
    let bin = tessera_path();
    let dir = tempfile::Builder::new()
        .prefix("tessera-files-bench")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let d = if std::env::args().any(|a| a == "--keep") {
        let kept = dir.keep();
        eprintln!("keeping {}", kept.display());
        kept
    } else {
        dir.path().to_path_buf()
    };
    let d = d.as_path();
    let s = |p: &Path| p.display().to_string();
    let mut rng = StdRng::seed_from_u64(1);
    let repo = d.join("repo");
    let r = s(&repo);
    run(&mut tessera(&bin, &["init", &r, "--encryption", "none"]));

    // 1. One large random file: `files get` against a full restore of the disk.
    let src = d.join("src");
    write_etc(&src, &mut rng, 300);
    let mut big = vec![0u8; (file_mib << 20) as usize];
    rng.fill(&mut big[..]);
    fs::write(src.join("big.bin"), &big).expect("big.bin");
    let disk_a = d.join("a.img");
    let size_a = (file_mib + 96) << 20;
    mkfs(&disk_a, &src, size_a);
    run(&mut tessera(
        &bin,
        &["backup", &r, "--series", "a", &format!("d0={}", s(&disk_a))],
    ));
    let restored = d.join("restored.raw");
    let (restore_secs, _) = run(&mut tessera(
        &bin,
        &["restore", &r, "latest@a", &s(&restored)],
    ));
    fs::remove_file(&restored).expect("rm");
    let got = d.join("big.out");
    let started = Instant::now();
    run(&mut tessera(
        &bin,
        &["files", "get", &r, "latest@a:/big.bin", &s(&got)],
    ));
    sync_file(&got);
    let get_secs = started.elapsed().as_secs_f64();
    assert!(
        fs::read(&got).expect("read") == big,
        "files get did not give the file back"
    );
    fs::remove_file(&got).expect("rm");
    drop(big);

    // 2. `files ls` in a large sparse image.
    let small = d.join("small");
    write_etc(&small, &mut rng, 2000);
    let disk_b = d.join("b.img");
    mkfs(&disk_b, &small, big_gib << 30);
    run(&mut tessera(
        &bin,
        &["backup", &r, "--series", "b", &format!("d0={}", s(&disk_b))],
    ));
    fs::remove_file(&disk_b).expect("rm");
    let ls = ["--json", "files", "ls", &r, "latest@b:/etc/sub"];
    let _cold = json(&mut tessera(&bin, &ls));
    let (ls_secs, listing) = json(&mut tessera(&bin, &ls));
    let entries = listing["entries"].as_array().map_or(0, Vec::len);

    // 3. `files find` over a series: every generation changes a few files; /etc/passwd
    //    every third.
    let disk_c = d.join("c.img");
    mkfs(&disk_c, &small, 256 << 20);
    let backup_c = |series: &str| {
        run(&mut tessera(
            &bin,
            &[
                "backup",
                &r,
                "--series",
                series,
                &format!("d0={}", s(&disk_c)),
            ],
        ));
    };
    backup_c("one");
    for generation in 0..generations {
        let mut script = String::new();
        for k in 0..3 {
            let name = format!("/etc/{:04}.conf", (generation * 3 + k) * 3 % 2000);
            let local = d.join(format!("new-{k}"));
            fs::write(&local, format!("generation {generation} file {k}\n")).expect("new");
            let _ = writeln!(script, "rm {name}\nwrite {} {name}", s(&local));
        }
        if generation % 3 == 0 {
            let local = d.join("passwd");
            fs::write(
                &local,
                format!("root:x:0:0:gen {generation}:/root:/bin/sh\n"),
            )
            .expect("passwd");
            let _ = writeln!(script, "rm /etc/passwd\nwrite {} /etc/passwd", s(&local));
        }
        let cmds = d.join("debugfs.cmds");
        fs::write(&cmds, script).expect("cmds");
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(&disk_c));
        backup_c("c");
    }
    // The median of five runs: a single run of a command this short is mostly noise.
    let find = |series: &str, what: &[&str]| {
        let mut args = vec!["--json", "files", "find", r.as_str(), "--series", series];
        args.extend_from_slice(what);
        let mut runs: Vec<(f64, serde_json::Value)> =
            (0..5).map(|_| json(&mut tessera(&bin, &args))).collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        runs.swap_remove(2)
    };
    let (find_one, _) = find("one", &["/etc/passwd"]);
    let (find_many, report) = find("c", &["/etc/passwd"]);
    let versions = report["versions"].as_u64().unwrap_or(0);
    let (glob_one, _) = find("one", &["--name", "*.conf"]);
    let (glob_many, glob_report) = find("c", &["--name", "*.conf"]);

    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    let restore_rate = mb(size_a, restore_secs);
    let get_rate = mb(file_mib << 20, get_secs);
    println!("{:<58} {:>9} {:>10}", "operation", "seconds", "MB/s");
    println!(
        "{:<58} {restore_secs:>9.2} {restore_rate:>10.0}",
        format!("tessera restore of the {} MiB disk (fsync)", size_a >> 20)
    );
    println!(
        "{:<58} {get_secs:>9.2} {get_rate:>10.0}",
        format!("tessera files get of a {file_mib} MiB file + fsync")
    );
    println!(
        "{:<58} {ls_secs:>9.3}",
        format!("tessera files ls of a {entries}-entry directory, {big_gib} GiB disk (warm)")
    );
    println!(
        "{:<58} {find_one:>9.2}",
        "tessera files find /etc/passwd, 1 snapshot"
    );
    println!(
        "{:<58} {find_many:>9.2}",
        format!("tessera files find /etc/passwd, {generations} snapshots ({versions} versions)")
    );
    println!(
        "{:<58} {glob_one:>9.2}",
        "tessera files find --name '*.conf', 1 snapshot"
    );
    println!(
        "{:<58} {glob_many:>9.2}",
        format!(
            "tessera files find --name '*.conf', {generations} snapshots ({} hashed, {} cache hits)",
            glob_report["hashed"], glob_report["hash_cache_hits"]
        )
    );
    println!(
        "ratios: get/restore throughput = {:.2} (goal >= 0.8); ls read {} of {} blocks; \
         find {generations}/1 = {:.2} (goal <= 3); find --name {generations}/1 = {:.2}",
        get_rate / restore_rate,
        listing["blocks_read"],
        listing["disk_blocks"],
        find_many / find_one,
        glob_many / glob_one
    );
}
