//! Full verification against its same-run baseline (the integrity issue's goal: verify at
//! least 0.8x the speed of `zstd -d | openssl dgst -sha256`, i.e. decompress + hash, the
//! work a verify must do, on both cores: one per process). Shared by `verify-bench` (on a
//! one-snapshot repository of incompressible + text data) and `macro-bench` (on the
//! repository its backups built). Both inputs are read once right before their measurement
//! (warm page cache), and both rates are computed from the same byte count.

use std::path::Path;

use crate::measure::{run, sh, Measured};

/// One verify measurement and its baseline.
#[derive(Debug, Clone)]
pub struct VerifyFigures {
    /// `tessera verify REPO` (every object read back and checked).
    pub verify: Measured,
    /// `zstd -d -c IMAGE.zst | openssl dgst -sha256`.
    pub baseline: Measured,
    /// The bytes both rates are computed from (the image size).
    pub bytes: u64,
}

impl VerifyFigures {
    /// Verify rate, MB/s.
    pub fn verify_mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.verify.wall_s.max(1e-9)
    }

    /// Baseline rate, MB/s.
    pub fn baseline_mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.baseline.wall_s.max(1e-9)
    }

    /// Verify rate over baseline rate (goal: at least 0.80).
    pub fn ratio(&self) -> f64 {
        self.verify_mb_s() / self.baseline_mb_s().max(1e-9)
    }
}

fn checked(m: Measured, what: &str) -> std::io::Result<Measured> {
    if m.ok() {
        Ok(m)
    } else {
        Err(std::io::Error::other(format!(
            "{what} failed (exit {:?}): {}",
            m.code,
            m.stderr.trim()
        )))
    }
}

/// Compresses `image` into `zst` with `zstd -3 -T2` (untimed input of the baseline).
pub fn prepare_baseline(image: &Path, zst: &Path) -> std::io::Result<()> {
    let line = format!(
        "zstd -q -3 -T2 -f -o '{}' '{}'",
        zst.display(),
        image.display()
    );
    checked(sh(&line, None)?, "zstd -3")?;
    Ok(())
}

/// Times `zstd -d -c ZST | openssl dgst -sha256`, after reading `zst` once.
pub fn time_baseline(zst: &Path) -> std::io::Result<Measured> {
    checked(
        sh(&format!("cat '{}' > /dev/null", zst.display()), None)?,
        "cat",
    )?;
    let line = format!("zstd -q -d -c '{}' | openssl dgst -sha256", zst.display());
    checked(sh(&line, None)?, "zstd -d | openssl dgst -sha256")
}

/// Times `tessera verify REPO` (exit 0 required: damage would make the figure meaningless),
/// after reading the repository's packs once.
pub fn time_verify(tessera: &Path, repo: &Path) -> std::io::Result<Measured> {
    let warm = format!("cat '{}'/packs/*/* > /dev/null", repo.display());
    checked(sh(&warm, None)?, "cat packs")?;
    let mut cmd = std::process::Command::new(tessera);
    // The macro benchmark's passphrase, read only by an encrypted repository.
    cmd.arg("verify")
        .arg(repo)
        .env("TESSERA_PASSPHRASE", "tessera-bench");
    checked(run(&mut cmd)?, "tessera verify")
}

/// Measures verify and its baseline on `image` (the data the repository holds): the
/// compressed baseline input is written into `work` and removed afterwards.
pub fn measure(
    tessera: &Path,
    repo: &Path,
    image: &Path,
    work: &Path,
) -> std::io::Result<VerifyFigures> {
    let bytes = std::fs::metadata(image)?.len();
    let zst = work.join("verify-baseline.zst");
    prepare_baseline(image, &zst)?;
    let baseline = time_baseline(&zst);
    let _ = std::fs::remove_file(&zst);
    let baseline = baseline?;
    let verify = time_verify(tessera, repo)?;
    Ok(VerifyFigures {
        verify,
        baseline,
        bytes,
    })
}
