//! The generated image: writing it, describing it, changing it for the delta backup, and
//! checking restored copies against it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tessera_benches::datagen::{delta_writes, Kind, Layout};

use crate::report::human;

/// What the run prints and records about the image.
pub struct ImageFacts {
    pub zero_blocks: u64,
    pub blocks: u64,
    pub os_ratio: f64,
    pub json: Value,
}

/// Describes the generated image: shares of each kind, all-zero blocks, and the zstd-3
/// ratio of OS-like 64 KiB blocks (256 sampled evenly).
pub fn describe(layout: &Layout, block_size: u64) -> ImageFacts {
    let by_kind = layout.bytes_by_kind();
    let blocks = layout.size.div_ceil(block_size);
    let mut zero_blocks = 0;
    let mut os_blocks = Vec::new();
    for r in &layout.regions {
        let first = r.offset.div_ceil(block_size);
        let end = (r.offset + r.len) / block_size;
        if end > first {
            match r.kind {
                Kind::Zero => zero_blocks += end - first,
                Kind::Os => os_blocks.extend((first..end).map(|b| b * block_size)),
                Kind::Random => {}
            }
        }
    }
    let sample = 256.min(os_blocks.len());
    let (mut raw, mut packed) = (0usize, 0usize);
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..sample {
        let off = os_blocks[i * os_blocks.len() / sample];
        layout.fill(off, &mut buf);
        raw += buf.len();
        packed += zstd::bulk::compress(&buf, 3).map_or(buf.len(), |c| c.len());
    }
    let os_ratio = raw as f64 / packed.max(1) as f64;
    let share = |i: usize| by_kind[i] as f64 / layout.size as f64;
    let json = json!({
        "size": layout.size, "seed": layout.seed, "regions": layout.regions.len(),
        "zero_share": share(0), "os_like_share": share(1), "random_share": share(2),
        "block_size": block_size, "blocks": blocks, "zero_blocks": zero_blocks,
        "os_like_zstd3_ratio_64k": os_ratio,
    });
    ImageFacts {
        zero_blocks,
        blocks,
        os_ratio,
        json,
    }
}

/// One line describing the image.
pub fn summary(layout: &Layout, facts: &ImageFacts, block_size: u64) -> String {
    let by_kind = layout.bytes_by_kind();
    let pct = |n: u64| 100.0 * n as f64 / layout.size as f64;
    format!(
        "{} (seed {}), {} regions: {:.1} % zero / {:.1} % os-like ({:.2}x zstd-3 per 64 KiB) / \
         {:.1} % random; {} of {} {} KiB blocks all-zero ({:.1} %)",
        human(layout.size),
        layout.seed,
        layout.regions.len(),
        pct(by_kind[0]),
        pct(by_kind[1]),
        facts.os_ratio,
        pct(by_kind[2]),
        facts.zero_blocks,
        facts.blocks,
        block_size / 1024,
        100.0 * facts.zero_blocks as f64 / facts.blocks.max(1) as f64
    )
}

/// Copies `len` bytes at `offset` of `src` into a new file `dst` (untimed preparation).
pub fn copy_range(src: &Path, offset: u64, len: u64, dst: &Path) -> Result<()> {
    let input = File::open(src)?;
    let out = File::create(dst)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        input.read_exact_at(&mut buf[..n], offset + done)?;
        out.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    out.sync_all()?;
    Ok(())
}

/// SHA-256 of a file.
pub fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// What the delta did to the image.
pub struct Delta {
    pub writes: u64,
    pub bytes: u64,
    pub blocks_hit: u64,
    pub blocks: u64,
}

/// Rewrites `percent` % of the image's 64 KiB blocks' worth of data: that many 64 KiB
/// random writes at random 4 KiB-aligned offsets, then fsync.
#[allow(clippy::cast_sign_loss, reason = "a negative percent gives no writes")]
pub fn apply_delta(image: &Path, size: u64, seed: u64, percent: f64) -> Result<Delta> {
    const W: u64 = 64 << 10;
    let count = ((size / W) as f64 * percent / 100.0).round().max(0.0) as u64;
    let writes = delta_writes(size, seed, count, W);
    let f = OpenOptions::new().write(true).open(image)?;
    let mut hit = HashSet::new();
    let mut bytes = 0;
    for (off, data) in &writes {
        f.write_all_at(data, *off)?;
        bytes += data.len() as u64;
        for b in off / W..=(off + data.len() as u64 - 1) / W {
            hit.insert(b);
        }
    }
    f.sync_all()?;
    Ok(Delta {
        writes: count,
        bytes,
        blocks_hit: hit.len() as u64,
        blocks: size.div_ceil(W),
    })
}
