//! Facts about the machine and the tools, and page-cache helpers.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

/// Flushes dirty pages (untimed), so that the next step starts without pending write-back.
pub fn settle() {
    let _ = Command::new("sync").status();
}

/// First line a program prints for `args` (stdout, else stderr), or `?`.
pub fn version_of(program: &Path, args: &[&str]) -> String {
    Command::new(program).args(args).output().ok().map_or_else(
        || "?".into(),
        |o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let s = if s.trim().is_empty() {
                String::from_utf8_lossy(&o.stderr).into_owned()
            } else {
                s
            };
            s.lines().next().unwrap_or("").trim().to_string()
        },
    )
}

/// The workspace's git revision, `-dirty` when it has uncommitted changes.
pub fn git_revision() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = out(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "?".into(),
    }
}

/// CPU model name.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Reads a file once; returns seconds.
pub fn read_through(path: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(t.elapsed().as_secs_f64())
}

/// Reads a file, or every file under a directory, so that it is in the page cache.
///
/// Done (untimed) right before every measurement that reads it: warming once at the start
/// is not enough on machines whose kernel pages out memory left unused for a while (these
/// VMs run DAMON-based proactive reclaim).
pub fn warm(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in fs::read_dir(path)? {
            warm(&e?.path())?;
        }
    } else if meta.is_file() {
        read_through(path)?;
    }
    Ok(())
}
