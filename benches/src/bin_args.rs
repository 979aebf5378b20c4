//! The tiny command-line handling the small benchmark binaries share.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A generated benchmark image in a scratch directory.
pub struct ScratchImage {
    /// The directory under /var/tmp (removed when dropped).
    pub dir: tempfile::TempDir,
    /// `DIR/image`.
    pub image: PathBuf,
    /// Its content.
    pub data: Vec<u8>,
    /// The generator, for later changes to the image.
    pub rng: StdRng,
}

/// A scratch directory under /var/tmp holding `image`: `size_mib` MiB, half random (seed 1),
/// a quarter zeros, a quarter of `line` repeated.
///
/// # Panics
///
/// When the directory or the image cannot be written.
pub fn scratch_with_image(prefix: &str, size_mib: usize, line: &[u8]) -> ScratchImage {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let image = dir.path().join("image");
    let mut rng = StdRng::seed_from_u64(1);
    let mut data = vec![0u8; size_mib << 20];
    let quarter = data.len() / 4;
    rng.fill(&mut data[..2 * quarter]);
    for (i, b) in data[3 * quarter..].iter_mut().enumerate() {
        *b = line[i % line.len()];
    }
    std::fs::write(&image, &data).expect("image");
    ScratchImage {
        dir,
        image,
        data,
        rng,
    }
}

/// The `tessera` binary to measure: `--tessera PATH`, else the one beside this executable.
///
/// # Panics
///
/// When the path of the running executable cannot be determined.
pub fn tessera_path() -> PathBuf {
    let given = arg("--tessera", "");
    if given.is_empty() {
        std::env::current_exe()
            .expect("current exe")
            .parent()
            .expect("exe dir")
            .join("tessera")
    } else {
        PathBuf::from(given)
    }
}

/// Parses a size with an optional binary unit: `512M`, `2G`, `64K`, `64KiB` or bytes.
///
/// # Errors
///
/// When `s` is not a number with a known unit, or overflows.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    use anyhow::{bail, Context};

    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size"))?;
    let unit = unit.to_ascii_lowercase();
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("{s:?}: unknown unit (use K, M, G or T)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?} is too large"))
}
