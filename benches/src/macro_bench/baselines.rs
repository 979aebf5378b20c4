//! Same-run baselines on the image: SHA-256 on one and two cores, `zstd -3 -T2`, `cp` to a
//! new file followed by an fsync, and the same copy with `dd oflag=direct`.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use tessera_benches::measure::{run, sh, Measured};

use crate::host::{settle, warm};
use crate::image::copy_range;
use crate::report::{human, Report, Row};

pub fn checked(m: Measured, what: &str) -> Result<Measured> {
    if m.ok() {
        Ok(m)
    } else {
        bail!("{what} failed (exit {:?}): {}", m.code, m.stderr.trim())
    }
}

/// Runs `step` `repeat` times (at least once): `prepare` before each run (untimed),
/// `cleanup` and `sync` after it; keeps the fastest run.
pub fn best_of(
    repeat: u32,
    mut prepare: impl FnMut() -> Result<()>,
    mut step: impl FnMut() -> Result<Measured>,
    mut cleanup: impl FnMut() -> Result<()>,
) -> Result<Measured> {
    let mut best: Option<Measured> = None;
    for _ in 0..repeat.max(1) {
        prepare()?;
        let m = step()?;
        cleanup()?;
        settle();
        if best.as_ref().is_none_or(|b| m.wall_s < b.wall_s) {
            best = Some(m);
        }
    }
    best.ok_or_else(|| anyhow::anyhow!("nothing measured"))
}

fn push(report: &mut Report, id: &str, op: &str, m: Measured, size: u64, note: String) {
    let row = Row::new(&format!("baseline.{id}"), "baseline", op, m, size, note);
    report.push(row);
}

#[allow(clippy::unnecessary_wraps, reason = "a no-op step of best_of")]
fn nothing() -> Result<()> {
    Ok(())
}

/// All baselines, each the best of `repeat` runs.
#[allow(clippy::too_many_lines, reason = "five baselines in a row")]
pub fn run_all(
    report: &mut Report,
    work: &Path,
    image: &Path,
    size: u64,
    repeat: u32,
) -> Result<()> {
    eprintln!("baselines (warm page cache, best of {repeat}):");
    let m = best_of(
        repeat,
        || warm(image),
        || {
            checked(
                run(Command::new("openssl").args(["dgst", "-sha256"]).arg(image))?,
                "openssl",
            )
        },
        nothing,
    )?;
    push(
        report,
        "sha256_1core",
        "openssl sha256, 1 core",
        m,
        size,
        String::new(),
    );

    let (a, b) = (work.join("half-a"), work.join("half-b"));
    let half = size / 2;
    copy_range(image, 0, half, &a)?;
    copy_range(image, half, size - half, &b)?;
    settle();
    let line = format!(
        "openssl dgst -sha256 '{}' >/dev/null & openssl dgst -sha256 '{}' >/dev/null & wait",
        a.display(),
        b.display()
    );
    let m = best_of(
        repeat,
        || warm(&a).and_then(|()| warm(&b)),
        || checked(sh(&line, None)?, "openssl x2"),
        nothing,
    )?;
    let note = "two processes on pre-split halves".to_string();
    push(
        report,
        "sha256_2core",
        "openssl sha256, 2 cores (2 halves)",
        m,
        size,
        note,
    );
    fs::remove_file(&a)?;
    fs::remove_file(&b)?;
    settle();

    let out = work.join("image.zst");
    let mut zsize = 0;
    let m = best_of(
        repeat,
        || warm(image),
        || {
            let mut cmd = Command::new("zstd");
            cmd.args(["-3", "-T2", "-q", "-f", "-o"])
                .arg(&out)
                .arg(image);
            let m = checked(run(&mut cmd)?, "zstd")?;
            zsize = fs::metadata(&out).map_or(0, |m| m.len());
            Ok(m)
        },
        || Ok(fs::remove_file(&out)?),
    )?;
    let ratio = size as f64 / zsize.max(1) as f64;
    let note = format!("output {} ({ratio:.2}x)", human(zsize));
    push(report, "zstd3_t2", "zstd -3 -T2 (to a file)", m, size, note);

    let copy = work.join("image.copy");
    let line = format!(
        "cp --reflink=never '{}' '{}' && sync '{}'",
        image.display(),
        copy.display(),
        copy.display()
    );
    let m = best_of(
        repeat,
        || warm(image),
        || checked(sh(&line, None)?, "cp"),
        || Ok(fs::remove_file(&copy)?),
    )?;
    let note = "new-file write through the page cache".to_string();
    push(report, "cp_sync", "cp to a new file + fsync", m, size, note);

    // The same copy with O_DIRECT writes: the device's write speed without the page cache's
    // cost of allocating a new file's pages (which varies with memory pressure).
    let m = best_of(
        repeat,
        || warm(image),
        || {
            let mut cmd = Command::new("dd");
            cmd.arg(format!("if={}", image.display()))
                .arg(format!("of={}", copy.display()))
                .args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"]);
            checked(run(&mut cmd)?, "dd")
        },
        || Ok(fs::remove_file(&copy)?),
    )?;
    let note = "device write speed".to_string();
    push(
        report,
        "dd_direct",
        "dd bs=4M oflag=direct + fsync",
        m,
        size,
        note,
    );
    Ok(())
}
