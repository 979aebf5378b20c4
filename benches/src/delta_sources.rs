//! Delta sources against full reads (issue "delta sources"): on one image, for each kind of
//! change information — a qcow2 overlay made by `qemu-img create -b`, a QEMU dirty bitmap
//! exported by `qemu-nbd --bitmap`, a VHD differencing disk (made by `tessera export
//! --base --format vhd`, the shape Xen Orchestra exports) and a changed-block list — time
//! the full backup of the base and the delta backup of the same writes (~`percent` % of the
//! 64 KiB blocks, random), and report delta time / full time and bytes read.
//!
//! Every delta snapshot is restored and compared (SHA-256) with an independent rendering of
//! the changed disk (`qemu-img convert -O raw`, or the raw image the writes went into), so a
//! fast but wrong delta cannot pass.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::datagen::Rng;
use crate::measure::{run, Measured};

/// One source's full and delta backups.
#[derive(Debug, Clone)]
pub struct DeltaRow {
    /// `qcow2 overlay`, `NBD dirty bitmap`, `VHD differencing`, `changed-block list`.
    pub source: &'static str,
    /// The full backup of the base.
    pub full: Measured,
    /// Bytes the full backup read.
    pub full_read: u64,
    /// The delta backup.
    pub delta: Measured,
    /// Bytes the delta backup read.
    pub delta_read: u64,
    /// Bytes the delta said changed.
    pub changed: u64,
}

impl DeltaRow {
    /// The row as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "source": self.source,
            "full_s": self.full.wall_s, "full_bytes_read": self.full_read,
            "delta_s": self.delta.wall_s, "delta_bytes_read": self.delta_read,
            "changed_bytes": self.changed,
            "time_ratio": self.delta.wall_s / self.full.wall_s.max(1e-9),
            "read_ratio": self.delta_read as f64 / self.full_read.max(1) as f64,
            "delta_max_rss_kib": self.delta.max_rss_kib,
        })
    }
}

/// The random writes: 64 KiB at block-aligned offsets, plus a few unaligned small ones.
#[allow(
    clippy::cast_sign_loss,
    reason = "the share is clamped to be non-negative"
)]
pub fn plan_writes(size: u64, percent: f64, seed: u64) -> Vec<(u64, u64)> {
    let blocks = size / 65536;
    let n = ((blocks as f64 * percent.max(0.0) / 100.0).round() as u64).max(1);
    let mut rng = Rng::new(seed ^ 0xde17a);
    let mut writes: Vec<(u64, u64)> = (0..n).map(|_| (rng.below(blocks) * 65536, 65536)).collect();
    for _ in 0..8 {
        let off = rng.below(size - 4096) / 512 * 512;
        writes.push((off, 1536));
    }
    writes.sort_unstable();
    writes.dedup();
    writes
}

/// Pattern byte of write `i` (never 0, so a write is never a zero block).
fn pattern(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

fn tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (install qemu-utils)"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies the writes to a qemu image with `qemu-io` (batched commands).
fn qemu_io_writes(format: &str, image: &Path, writes: &[(u64, u64)]) -> Result<()> {
    for (batch_no, batch) in writes.chunks(200).enumerate() {
        let mut args: Vec<String> = vec!["-f".into(), format.into()];
        for (i, (off, len)) in batch.iter().enumerate() {
            args.push("-c".into());
            args.push(format!(
                "write -P {} {off} {len}",
                pattern(batch_no * 200 + i)
            ));
        }
        args.push(image.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tool("qemu-io", &refs)?;
    }
    Ok(())
}

/// Applies the writes to a raw file directly (same bytes as [`qemu_io_writes`]).
fn raw_writes(image: &Path, writes: &[(u64, u64)]) -> Result<()> {
    let f = fs::OpenOptions::new().write(true).open(image)?;
    for (i, (off, len)) in writes.iter().enumerate() {
        f.write_all_at(&vec![pattern(i); *len as usize], *off)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Runs `tessera ARGS --json`, measured; fails unless it succeeds.
fn tessera(bin: &Path, args: &[&str]) -> Result<(Measured, Value)> {
    let mut cmd = Command::new(bin);
    cmd.args(args).arg("--json");
    let m = run(&mut cmd)?;
    if !m.ok() {
        bail!("tessera {args:?} failed: {}{}", m.stdout, m.stderr);
    }
    let v: Value = serde_json::from_str(&m.stdout).context("tessera --json output")?;
    Ok((m, v))
}

fn backup(
    bin: &Path,
    repo: &Path,
    series: &str,
    disk: &str,
    extra: &[&str],
) -> Result<(Measured, Value)> {
    let repo_s = repo.display().to_string();
    let disk_arg = format!("d={disk}");
    let mut args = vec![
        "backup",
        repo_s.as_str(),
        "--series",
        series,
        disk_arg.as_str(),
    ];
    args.extend_from_slice(extra);
    tessera(bin, &args)
}

fn disk_field(v: &Value, field: &str) -> u64 {
    v["disks"][0][field].as_u64().unwrap_or(0)
}

/// Restores `snapshot` and checks it equals `expected` (SHA-256 through openssl).
fn check_restore(
    bin: &Path,
    repo: &Path,
    snapshot: &str,
    expected: &Path,
    scratch: &Path,
) -> Result<()> {
    let out = scratch.join("check.raw");
    let _ = fs::remove_file(&out);
    tessera(
        bin,
        &[
            "restore",
            &repo.display().to_string(),
            snapshot,
            &out.display().to_string(),
        ],
    )?;
    let digest = |p: &Path| -> Result<String> {
        let s = tool("openssl", &["dgst", "-sha256", &p.display().to_string()])?;
        Ok(s.rsplit(' ').next().unwrap_or_default().trim().to_string())
    };
    let (a, b) = (digest(&out)?, digest(expected)?);
    fs::remove_file(&out)?;
    if a != b {
        bail!(
            "snapshot {snapshot} does not restore to {}",
            expected.display()
        );
    }
    Ok(())
}

fn row(
    source: &'static str,
    full: (Measured, Value),
    delta: (Measured, Value),
) -> Result<DeltaRow> {
    let mode = delta.1["disks"][0]["mode"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if mode != "delta" {
        bail!(
            "{source}: the delta backup ran in mode {mode:?}: {}",
            delta.1
        );
    }
    Ok(DeltaRow {
        source,
        full_read: disk_field(&full.1, "bytes_read"),
        delta_read: disk_field(&delta.1, "bytes_read"),
        changed: disk_field(&delta.1, "changed_bytes"),
        full: full.0,
        delta: delta.0,
    })
}

/// A `qemu-nbd` serving an image on a unix socket; killed on drop.
struct NbdServer(Child);

impl NbdServer {
    fn start(socket: &Path, image: &Path, bitmap: Option<&str>) -> Result<Self> {
        let _ = fs::remove_file(socket);
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-r", "-t", "-f", "qcow2", "-k"]).arg(socket);
        if let Some(b) = bitmap {
            cmd.args(["-B", b]);
        }
        cmd.arg(image).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().context("starting qemu-nbd")?;
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("qemu-nbd did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self(child))
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs every source on `image` (a raw file of the benchmark) in `work`.
pub fn run_all(
    bin: &Path,
    image: &Path,
    work: &Path,
    percent: f64,
    seed: u64,
) -> Result<Vec<DeltaRow>> {
    let size = fs::metadata(image)?.len();
    let writes = plan_writes(size, percent, seed);
    let mut rows = Vec::new();
    let ctx = Ctx {
        bin,
        image,
        work,
        size,
        writes: &writes,
    };
    rows.push(qcow2_overlay(&ctx)?);
    rows.push(nbd_bitmap(&ctx)?);
    let (vhd, changed) = vhd_differencing(&ctx)?;
    rows.push(vhd);
    rows.push(changed_list(&ctx, &changed)?);
    Ok(rows)
}

/// What every source's run needs.
struct Ctx<'a> {
    bin: &'a Path,
    image: &'a Path,
    work: &'a Path,
    size: u64,
    writes: &'a [(u64, u64)],
}

impl Ctx<'_> {
    fn dir(&self, name: &str) -> Result<PathBuf> {
        let p = self.work.join(name);
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    fn init(&self, repo: &Path) -> Result<()> {
        tessera(
            self.bin,
            &["init", &repo.display().to_string(), "--encryption", "none"],
        )
        .map(|_| ())
    }
}

/// A qcow2 overlay made by `qemu-img create -b` on the image converted to qcow2.
fn qcow2_overlay(ctx: &Ctx<'_>) -> Result<DeltaRow> {
    let (bin, image, writes) = (ctx.bin, ctx.image, ctx.writes);
    let init = |r: &Path| ctx.init(r);
    let dir = |n: &str| ctx.dir(n);
    let d = dir("delta-qcow2")?;
    let base = d.join("base.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &image.display().to_string(),
            &base.display().to_string(),
        ],
    )?;
    let repo = d.join("repo");
    init(&repo)?;
    let full = backup(bin, &repo, "q", &base.display().to_string(), &[])?;
    let overlay = d.join("overlay.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &overlay.display().to_string(),
        ],
    )?;
    qemu_io_writes("qcow2", &overlay, writes)?;
    let delta = backup(
        bin,
        &repo,
        "q",
        &overlay.display().to_string(),
        &["--reference", "latest"],
    )?;
    let expected = d.join("expected.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &overlay.display().to_string(),
            &expected.display().to_string(),
        ],
    )?;
    check_restore(
        bin,
        &repo,
        delta.1["snapshot"].as_str().unwrap_or_default(),
        &expected,
        &d,
    )?;
    row("qcow2 overlay", full, delta)
}

/// A persistent QEMU dirty bitmap on a qcow2 image, exported by `qemu-nbd --bitmap`.
fn nbd_bitmap(ctx: &Ctx<'_>) -> Result<DeltaRow> {
    let (bin, writes) = (ctx.bin, ctx.writes);
    let init = |r: &Path| ctx.init(r);
    let d = ctx.dir("delta-qcow2")?;
    let base = d.join("base.qcow2");
    let expected = d.join("expected.raw");
    let img = d.join("bitmap.qcow2");
    fs::copy(&base, &img)?;
    tool(
        "qemu-img",
        &["bitmap", "--add", &img.display().to_string(), "b0"],
    )?;
    let socket = d.join("nbd.sock");
    let repo_n = d.join("repo-nbd");
    init(&repo_n)?;
    let url_full = format!("nbd+unix:///?socket={}&track=b0", socket.display());
    let full = {
        let _server = NbdServer::start(&socket, &img, None)?;
        backup(bin, &repo_n, "n", &url_full, &[])?
    };
    qemu_io_writes("qcow2", &img, writes)?;
    let url_delta = format!("nbd+unix:///?socket={}&bitmap=b0", socket.display());
    let delta = {
        let _server = NbdServer::start(&socket, &img, Some("b0"))?;
        backup(bin, &repo_n, "n", &url_delta, &["--reference", "latest"])?
    };
    check_restore(
        bin,
        &repo_n,
        delta.1["snapshot"].as_str().unwrap_or_default(),
        &expected,
        &d,
    )?;
    fs::remove_file(&img)?;
    row("NBD dirty bitmap", full, delta)
}

/// A VHD differencing disk, as `tessera export --base` writes it (Xen Orchestra's delta
/// shape). Returns the row and the changed raw image.
fn vhd_differencing(ctx: &Ctx<'_>) -> Result<(DeltaRow, PathBuf)> {
    let (bin, image, writes) = (ctx.bin, ctx.image, ctx.writes);
    let init = |r: &Path| ctx.init(r);
    let dir = |n: &str| ctx.dir(n);
    let v = dir("delta-vhd")?;
    let scratch_repo = v.join("raw-repo");
    init(&scratch_repo)?;
    let s0 = backup(bin, &scratch_repo, "raw", &image.display().to_string(), &[])?.1["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let changed = v.join("changed.raw");
    tool(
        "cp",
        &[
            "--sparse=always",
            &image.display().to_string(),
            &changed.display().to_string(),
        ],
    )?;
    raw_writes(&changed, writes)?;
    let s1 = backup(
        bin,
        &scratch_repo,
        "raw",
        &changed.display().to_string(),
        &[],
    )?
    .1["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let base_vhd = v.join("base.vhd");
    let child_vhd = v.join("child.vhd");
    let sr = scratch_repo.display().to_string();
    tessera(
        bin,
        &[
            "export",
            &sr,
            &s0,
            &base_vhd.display().to_string(),
            "--format",
            "vhd",
        ],
    )?;
    tessera(
        bin,
        &[
            "export",
            &sr,
            &s1,
            &child_vhd.display().to_string(),
            "--format",
            "vhd",
            "--base",
            &s0,
            "--backing-file",
            "base.vhd",
        ],
    )?;
    let repo_v = v.join("repo");
    init(&repo_v)?;
    let full = backup(bin, &repo_v, "v", &base_vhd.display().to_string(), &[])?;
    let delta = backup(
        bin,
        &repo_v,
        "v",
        &child_vhd.display().to_string(),
        &["--reference", "latest"],
    )?;
    check_restore(
        bin,
        &repo_v,
        delta.1["snapshot"].as_str().unwrap_or_default(),
        &changed,
        &v,
    )?;
    Ok((row("VHD differencing", full, delta)?, changed))
}

/// A changed-block list next to the raw image.
fn changed_list(ctx: &Ctx<'_>, changed: &Path) -> Result<DeltaRow> {
    let (bin, image, writes, size) = (ctx.bin, ctx.image, ctx.writes, ctx.size);
    let init = |r: &Path| ctx.init(r);
    let v = ctx.dir("delta-vhd")?;
    let repo_l = v.join("repo-list");
    init(&repo_l)?;
    let list0 = v.join("list0.txt");
    fs::write(
        &list0,
        format!(
            "tessera-changed-blocks v1\nsize {size}\nbase-state *\nstate cbt:0\nextent 0 {size}\n"
        ),
    )?;
    let cbt_image = v.join("cbt.raw");
    tool(
        "cp",
        &[
            "--sparse=always",
            &image.display().to_string(),
            &cbt_image.display().to_string(),
        ],
    )?;
    let changes0 = format!("d={}", list0.display());
    let full = backup(
        bin,
        &repo_l,
        "l",
        &cbt_image.display().to_string(),
        &["--changes", &changes0],
    )?;
    raw_writes(&cbt_image, writes)?;
    let mut list =
        format!("tessera-changed-blocks v1\nsize {size}\nbase-state cbt:0\nstate cbt:1\n");
    for (off, len) in writes {
        let _ = writeln!(list, "extent {off} {len}");
    }
    let list1 = v.join("list1.txt");
    fs::write(&list1, list)?;
    let changes1 = format!("d={}", list1.display());
    let delta = backup(
        bin,
        &repo_l,
        "l",
        &cbt_image.display().to_string(),
        &["--changes", &changes1, "--reference", "latest"],
    )?;
    check_restore(
        bin,
        &repo_l,
        delta.1["snapshot"].as_str().unwrap_or_default(),
        changed,
        &v,
    )?;
    row("changed-block list", full, delta)
}

/// The rows as a text table.
pub fn table(rows: &[DeltaRow]) -> String {
    let mut out = String::from(
        "source               full backup  delta backup  delta/full time  read full   read delta  delta/full read\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:>9.2} s  {:>10.3} s  {:>15.4}  {:>7.0} MiB  {:>7.1} MiB  {:>15.4}",
            r.source,
            r.full.wall_s,
            r.delta.wall_s,
            r.delta.wall_s / r.full.wall_s.max(1e-9),
            r.full_read as f64 / 1_048_576.0,
            r.delta_read as f64 / 1_048_576.0,
            r.delta_read as f64 / r.full_read.max(1) as f64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plan_writes;

    #[test]
    fn writes_are_about_the_asked_share_and_inside_the_image() {
        let size = 1 << 30;
        let w = plan_writes(size, 1.0, 7);
        let aligned = w.iter().filter(|(_, l)| *l == 65536).count() as f64;
        assert!((aligned / 16384.0 - 0.01).abs() < 0.002, "{aligned}");
        assert!(w.iter().all(|(o, l)| o + l <= size));
        assert_eq!(w, plan_writes(size, 1.0, 7));
    }
}
