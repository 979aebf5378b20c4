//! Exploring and restoring fast, measured end to end through the release `tessera` binary:
//!
//! - full restore of the latest snapshot vs `cp` of the raw image (+ fsync each);
//! - reading the snapshot over NBD with `qemu-img convert -O raw nbd://…` vs the restore;
//! - incremental restore (`--onto --assume`) vs full restore for a 1 % change.
//!
//! `cargo run --release -p tessera-benches --bin explore-bench [-- --size-mib 1024 --tessera PATH]`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use tessera_benches::bin_args::{arg, scratch_with_image, tessera_path, ScratchImage};

fn run(cmd: &mut Command) -> f64 {
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

fn sync_file(path: &Path) {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("sync");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[expect(clippy::too_many_lines, reason = "one linear benchmark script")]
fn main() {
    let size_mib: usize = arg("--size-mib", "1024").parse().expect("--size-mib");
    let tessera = tessera_path();
    // Half random, a quarter zeros, a quarter repetitive text.
    let ScratchImage {
        dir,
        image,
        mut data,
        mut rng,
    } = scratch_with_image(
        "tessera-explore-bench",
        size_mib,
        b"tessera explore bench line 0123456789\n",
    );
    let d = dir.path();
    let repo = d.join("repo");
    run(Command::new(&tessera)
        .arg("init")
        .arg(&repo)
        .args(["--encryption", "none"]));
    run(Command::new(&tessera)
        .arg("backup")
        .arg(&repo)
        .args(["--series", "b"])
        .arg(format!("d0={}", image.display())));
    let old_copy = d.join("old.raw");
    std::fs::copy(&image, &old_copy).expect("copy");
    // 1 % of the 64 KiB blocks rewritten.
    let blocks = data.len() / 65536;
    for _ in 0..blocks / 100 {
        let at = rng.gen_range(0..blocks) * 65536;
        rng.fill(&mut data[at..at + 65536]);
    }
    std::fs::write(&image, &data).expect("image");
    run(Command::new(&tessera)
        .arg("backup")
        .arg(&repo)
        .args(["--series", "b"])
        .arg(format!("d0={}", image.display())));
    let list = Command::new(&tessera)
        .args(["--json", "list"])
        .arg(&repo)
        .output()
        .expect("list");
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list json");
    let first = listed["snapshots"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let cp_out = d.join("cp.raw");
    let started = Instant::now();
    std::fs::copy(&image, &cp_out).expect("cp");
    sync_file(&cp_out);
    let cp = started.elapsed().as_secs_f64();
    std::fs::remove_file(&cp_out).expect("rm");

    let restored = d.join("restored.raw");
    let full = run(Command::new(&tessera)
        .arg("restore")
        .arg(&repo)
        .arg("latest")
        .arg(&restored));
    std::fs::remove_file(&restored).expect("rm");

    let port = 20000 + rng.gen_range(0..30000);
    let server = Server(
        Command::new(&tessera)
            .arg("serve-nbd")
            .arg(&repo)
            .arg("latest")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve-nbd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let nbd_out = d.join("nbd.raw");
    let started = Instant::now();
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd://127.0.0.1:{port}/d0"))
        .arg(&nbd_out));
    sync_file(&nbd_out);
    let nbd = started.elapsed().as_secs_f64();
    drop(server);
    std::fs::remove_file(&nbd_out).expect("rm");

    // Incremental: the target holds the newest snapshot; roll it back to the first.
    let target = d.join("target.raw");
    std::fs::copy(&image, &target).expect("copy");
    sync_file(&target);
    let incremental = run(Command::new(&tessera)
        .arg("restore")
        .arg(&repo)
        .arg(&first)
        .arg("--onto")
        .arg(&target)
        .args(["--assume", "latest"]));
    let same = std::fs::read(&target).expect("read") == std::fs::read(&old_copy).expect("read");
    assert!(
        same,
        "incremental restore did not produce the first snapshot"
    );

    let mb = (size_mib << 20) as f64 / 1e6;
    println!("{size_mib} MiB image (1/2 random, 1/4 zero, 1/4 text), 1 % of 64 KiB blocks changed");
    println!("{:<44} {:>9} {:>10}", "operation", "seconds", "MB/s");
    for (name, secs) in [
        ("cp of the raw image + fsync", cp),
        ("tessera restore (full, sparse) + fsync", full),
        ("qemu-img convert from tessera serve-nbd", nbd),
        ("tessera restore --onto (1 % change)", incremental),
    ] {
        println!("{name:<44} {secs:>9.2} {:>10.0}", mb / secs);
    }
    println!("ratios: NBD read / restore = {:.2}; restore / cp = {:.2}; incremental / full restore time = {:.3}", full / nbd, cp / full, incremental / full);
}
