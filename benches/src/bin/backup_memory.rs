//! Peak memory of a first backup as the disk grows (issue "Fleets": memory must not grow
//! with the disk). Each size is backed up once, through the binary, from an `nbdkit pattern`
//! source on a Unix socket (every 64 KiB block unique), into a fresh plain repository; the
//! peak resident set of the `tessera backup` process comes from `wait4`.
//!
//! `cargo run --release -p tessera-benches --bin backup-memory [-- --sizes 4G,16G,64G --tessera BIN]`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_benches::bin_args::{arg, parse_size, tessera_path};
use tessera_benches::measure::{tessera_ok, which};

fn main() -> anyhow::Result<()> {
    let tessera = tessera_path();
    if which("nbdkit").is_none() {
        bail!("nbdkit is not installed (scripts/ensure-deps.sh installs it)");
    }
    let sizes: Vec<(String, u64)> = arg("--sizes", "4G,16G,64G")
        .split(',')
        .map(|s| parse_size(s).map(|n| (s.to_string(), n)))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "first backup of an nbdkit pattern disk (every 64 KiB block unique), plain repository"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>10}",
        "disk", "wall s", "MiB/s", "peak RSS MB", "vs first"
    );
    let mut first_rss = None;
    for (label, size) in sizes {
        let dir = tempfile::Builder::new()
            .prefix("tessera-backup-memory")
            .tempdir_in("/var/tmp")?;
        let repo = dir.path().join("repo");
        let repo_s = repo.display().to_string();
        tessera_ok(&tessera, &["init", &repo_s, "--encryption", "none"])?;
        let socket = dir.path().join("nbd.sock");
        let mut server = Server(start_nbdkit(&socket, size)?);
        let source = format!("d=nbd+unix:///?socket={}", socket.display());
        let m = tessera_ok(&tessera, &["backup", &repo_s, "--series", "vm", &source])?;
        let _ = server.0.kill();
        let rss_mb = m.max_rss_kib as f64 * 1024.0 / 1e6;
        let base = *first_rss.get_or_insert(rss_mb);
        println!(
            "{label:>8} {:>10.1} {:>10.0} {rss_mb:>12.0} {:>9.2}x",
            m.wall_s,
            size as f64 / f64::from(1 << 20) / m.wall_s,
            rss_mb / base
        );
    }
    Ok(())
}

/// Kills the server when dropped (also on an error).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nbdkit -f -U SOCKET pattern size=SIZE`, once its socket exists.
fn start_nbdkit(socket: &Path, size: u64) -> anyhow::Result<Child> {
    let mut child = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(socket)
        .args(["pattern", &format!("size={size}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nbdkit")?;
    let started = Instant::now();
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("nbdkit exited: {status}");
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("nbdkit did not create {} within 20 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}
