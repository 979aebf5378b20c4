//! Seeded, position-addressable synthetic disk content.
//!
//! An image is a [`Layout`]: a list of regions of three kinds, each a whole number of 4 KiB
//! pages (the last region may end mid-page):
//!
//! - [`Kind::Zero`]: free space, all zeros (about 25 % of the bytes);
//! - [`Kind::Os`]: compressible "OS-like" content: syslog-style text lines, CSV/config-like
//!   records and packed binary records (inode-table-like), drawing words from a small
//!   Zipf-skewed vocabulary and mixing in hex ids and counters, so that a 64 KiB block
//!   compresses about 3x with zstd level 3 (about 40 % of the bytes);
//! - [`Kind::Random`]: incompressible data such as media or already-compressed files
//!   (about 35 % of the bytes).
//!
//! Every 4 KiB page is generated from its own seed (region seed, absolute page number), so
//! any part of the image can be produced independently and in parallel, and the same seed
//! always gives the same bytes on every machine.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Granularity of the generator, and alignment of regions.
pub const PAGE: usize = 4096;

/// xoshiro256** seeded through splitmix64: fast, small, and identical everywhere.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

/// splitmix64 step; also used to derive seeds.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a seed from two values.
pub fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b.wrapping_add(0x5851_F42D_4C95_7F2D)))
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            splitmix(s)
        };
        Self([next(), next(), next(), next()])
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in chunks.by_ref() {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Kind of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// All zeros.
    Zero,
    /// Compressible OS-like content.
    Os,
    /// Incompressible random bytes.
    Random,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 3] = [Kind::Zero, Kind::Os, Kind::Random];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Zero => "zero",
            Kind::Os => "os-like",
            Kind::Random => "random",
        }
    }

    /// Target share of the image's bytes.
    pub fn target_share(self) -> f64 {
        match self {
            Kind::Zero => 0.25,
            Kind::Os => 0.40,
            Kind::Random => 0.35,
        }
    }

    /// Region length range in bytes (log-uniform between the two).
    fn len_range(self) -> (f64, f64) {
        match self {
            // Free-space extents: mostly large, some small holes inside files.
            Kind::Zero => (8.0 * 1024.0, 48.0 * 1024.0 * 1024.0),
            Kind::Os => (4.0 * 1024.0, 16.0 * 1024.0 * 1024.0),
            Kind::Random => (4.0 * 1024.0, 32.0 * 1024.0 * 1024.0),
        }
    }

    fn mean_len(self) -> f64 {
        let (a, b) = self.len_range();
        (b - a) / (b / a).ln()
    }
}

/// One region of an image.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// What it holds.
    pub kind: Kind,
    /// Start offset (a multiple of [`PAGE`]).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Seed of its pages; for [`Kind::Os`] it also picks the style.
    pub seed: u64,
}

/// The vocabulary the OS-like content draws words from.
#[derive(Clone, Debug)]
pub struct Vocab {
    words: Vec<Vec<u8>>,
    hosts: Vec<Vec<u8>>,
    procs: Vec<Vec<u8>>,
}

impl Vocab {
    /// The vocabulary for `seed`.
    pub fn new(seed: u64) -> Self {
        const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz_-.";
        let mut rng = Rng::new(mix(seed, 0x0076_6f63_6162));
        let word = |rng: &mut Rng, min: u64, max: u64| -> Vec<u8> {
            let len = min + rng.below(max - min + 1);
            (0..len)
                .map(|_| {
                    // Skew towards frequent letters, like real text.
                    let i = rng.below(LETTERS.len() as u64) * rng.below(LETTERS.len() as u64)
                        / LETTERS.len() as u64;
                    LETTERS[i as usize]
                })
                .collect()
        };
        let words = (0..768).map(|_| word(&mut rng, 2, 11)).collect();
        let hosts = (0..8)
            .map(|i| {
                let mut h = word(&mut rng, 4, 8);
                h.extend_from_slice(format!("{:02}", i + 1).as_bytes());
                h
            })
            .collect();
        let procs = (0..40).map(|_| word(&mut rng, 3, 12)).collect();
        Self {
            words,
            hosts,
            procs,
        }
    }

    /// A word, Zipf-like skewed towards the first ones.
    fn word(&self, rng: &mut Rng) -> &[u8] {
        let n = self.words.len() as u64;
        let i = rng.below(n) * rng.below(n) / n;
        &self.words[i as usize]
    }
}

/// An image: its regions and vocabulary.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Image size in bytes.
    pub size: u64,
    /// The seed.
    pub seed: u64,
    /// Regions in offset order, covering `0..size` without gaps.
    pub regions: Vec<Region>,
    /// Vocabulary of OS-like regions.
    pub vocab: Vocab,
}

impl Layout {
    /// Lays out an image of `size` bytes: region kinds are drawn with weights that give each
    /// kind its target share of bytes on average, and a kind that is already 1 % over its
    /// share is not drawn until the others catch up.
    #[allow(
        clippy::cast_sign_loss,
        reason = "lengths are positive by construction"
    )]
    pub fn new(size: u64, seed: u64) -> Self {
        let mut rng = Rng::new(mix(seed, 0x6c61_796f_7574));
        let mut regions = Vec::new();
        let mut have = [0u64; 3];
        let mut offset = 0u64;
        while offset < size {
            let written = offset as f64;
            let weights: Vec<f64> = Kind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let over = written > 0.0 && have[i] as f64 / written > k.target_share() + 0.01;
                    if over {
                        0.0
                    } else {
                        k.target_share() / k.mean_len()
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let mut pick = rng.unit() * total;
            let mut idx = 0;
            for (i, w) in weights.iter().enumerate() {
                if pick < *w {
                    idx = i;
                    break;
                }
                pick -= w;
                idx = i;
            }
            let kind = Kind::ALL[idx];
            let (a, b) = kind.len_range();
            let len = (a * (b / a).powf(rng.unit())) as u64;
            let len = (len / PAGE as u64).max(1) * PAGE as u64;
            let len = len.min(size - offset);
            // Merge with a previous region of the same kind (keeps the list short).
            match regions.last_mut() {
                Some(Region {
                    kind: k, len: l, ..
                }) if *k == kind => *l += len,
                _ => regions.push(Region {
                    kind,
                    offset,
                    len,
                    seed: rng.next_u64(),
                }),
            }
            have[idx] += len;
            offset += len;
        }
        Self {
            size,
            seed,
            regions,
            vocab: Vocab::new(seed),
        }
    }

    /// Bytes of each kind, in [`Kind::ALL`] order.
    pub fn bytes_by_kind(&self) -> [u64; 3] {
        let mut out = [0u64; 3];
        for r in &self.regions {
            let i = Kind::ALL.iter().position(|k| *k == r.kind).unwrap_or(0);
            out[i] += r.len;
        }
        out
    }

    /// Fills `buf` with the image's bytes at `offset`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self.regions.partition_point(|r| r.offset + r.len <= offset);
        let mut page = [0u8; PAGE];
        for r in self.regions.iter().skip(first) {
            if r.offset >= end {
                break;
            }
            let lo = r.offset.max(offset);
            let hi = (r.offset + r.len).min(end);
            if r.kind == Kind::Zero {
                buf[(lo - offset) as usize..(hi - offset) as usize].fill(0);
                continue;
            }
            let mut pos = lo;
            while pos < hi {
                let page_no = pos / PAGE as u64;
                let page_start = page_no * PAGE as u64;
                let from = (pos - page_start) as usize;
                let to = ((hi - page_start) as usize).min(PAGE);
                let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + (to - from)];
                if from == 0 && to == PAGE {
                    fill_page(r, &self.vocab, page_no, dst);
                } else {
                    fill_page(r, &self.vocab, page_no, &mut page);
                    dst.copy_from_slice(&page[from..to]);
                }
                pos = page_start + to as u64;
            }
        }
    }

    /// Writes the image to `file` (which should be empty), using `threads` threads. With
    /// `sparse`, zero regions are left as holes instead of being written.
    pub fn write_to(&self, file: &File, threads: usize, sparse: bool) -> std::io::Result<()> {
        const WINDOW: u64 = 8 << 20;
        file.set_len(0)?;
        let windows = self.size.div_ceil(WINDOW);
        let next = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    scope.spawn(|| -> std::io::Result<()> {
                        let mut buf = vec![0u8; WINDOW as usize];
                        loop {
                            let w = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if w >= windows {
                                return Ok(());
                            }
                            let off = w * WINDOW;
                            let len = WINDOW.min(self.size - off) as usize;
                            let buf = &mut buf[..len];
                            self.fill(off, buf);
                            if sparse {
                                self.write_non_zero(file, off, buf)?;
                            } else {
                                file.write_all_at(buf, off)?;
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| std::io::Error::other("generator thread panicked"))??;
            }
            Ok::<(), std::io::Error>(())
        })?;
        file.set_len(self.size)?;
        file.sync_all()
    }

    fn write_non_zero(&self, file: &File, off: u64, buf: &[u8]) -> std::io::Result<()> {
        let end = off + buf.len() as u64;
        let first = self.regions.partition_point(|r| r.offset + r.len <= off);
        for r in self.regions.iter().skip(first) {
            if r.offset >= end {
                break;
            }
            if r.kind == Kind::Zero {
                continue;
            }
            let lo = r.offset.max(off);
            let hi = (r.offset + r.len).min(end);
            file.write_all_at(&buf[(lo - off) as usize..(hi - off) as usize], lo)?;
        }
        Ok(())
    }
}

/// Generates page `page_no` of region `r` into `out` (`out.len() <= PAGE`).
fn fill_page(r: &Region, vocab: &Vocab, page_no: u64, out: &mut [u8]) {
    let mut rng = Rng::new(mix(r.seed, page_no));
    match r.kind {
        Kind::Zero => out.fill(0),
        Kind::Random => rng.fill(out),
        Kind::Os => match r.seed % 4 {
            0 | 1 => text_lines(&mut rng, vocab, page_no, out),
            2 => config_records(&mut rng, vocab, page_no, out),
            _ => binary_records(&mut rng, vocab, page_no, out),
        },
    }
}

fn push_num(buf: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = tmp.len() - i;
    for _ in digits..width {
        buf.push(b'0');
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_hex(buf: &mut Vec<u8>, rng: &mut Rng, nibbles: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = rng.next_u64();
    for i in 0..nibbles {
        if i % 16 == 15 {
            bits = rng.next_u64();
        }
        buf.push(HEX[(bits & 15) as usize]);
        bits >>= 4;
    }
}

/// Syslog-like lines.
fn text_lines(rng: &mut Rng, vocab: &Vocab, page_no: u64, out: &mut [u8]) {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let mut buf = Vec::with_capacity(PAGE + 512);
    let mut t = page_no * 37 + rng.below(30);
    while buf.len() < out.len() {
        t += rng.below(4);
        buf.extend_from_slice(MONTHS[((t / 2_600_000) % 12) as usize]);
        buf.push(b' ');
        push_num(&mut buf, (t / 86_400) % 28 + 1, 2);
        buf.push(b' ');
        push_num(&mut buf, (t / 3600) % 24, 2);
        buf.push(b':');
        push_num(&mut buf, (t / 60) % 60, 2);
        buf.push(b':');
        push_num(&mut buf, t % 60, 2);
        buf.push(b' ');
        buf.extend_from_slice(&vocab.hosts[rng.below(2) as usize]);
        buf.push(b' ');
        let p = rng.below(vocab.procs.len() as u64) * rng.below(vocab.procs.len() as u64)
            / vocab.procs.len() as u64;
        buf.extend_from_slice(&vocab.procs[p as usize]);
        buf.push(b'[');
        push_num(&mut buf, 300 + p * 97, 0);
        buf.extend_from_slice(b"]: ");
        let words = 3 + rng.below(9);
        for w in 0..words {
            if w > 0 {
                buf.push(b' ');
            }
            match rng.below(16) {
                0 => {
                    buf.extend_from_slice(b"id=");
                    push_hex(&mut buf, rng, 8);
                }
                1 => push_num(&mut buf, rng.below(100_000), 0),
                _ => buf.extend_from_slice(vocab.word(rng)),
            }
        }
        buf.push(b'\n');
    }
    out.copy_from_slice(&buf[..out.len()]);
}

/// `key = value` / CSV-like records.
fn config_records(rng: &mut Rng, vocab: &Vocab, page_no: u64, out: &mut [u8]) {
    let mut buf = Vec::with_capacity(PAGE + 512);
    let mut row = page_no * 24;
    while buf.len() < out.len() {
        row += 1;
        push_num(&mut buf, row, 0);
        buf.push(b',');
        buf.extend_from_slice(vocab.word(rng));
        buf.push(b'/');
        buf.extend_from_slice(vocab.word(rng));
        buf.push(b',');
        push_num(&mut buf, 1000 + rng.below(4) * 1000, 0);
        buf.push(b',');
        push_num(&mut buf, 0o644 + rng.below(2) * 0o111, 0);
        buf.push(b',');
        push_num(&mut buf, 1_700_000_000 + row * 13 + rng.below(10), 0);
        buf.push(b',');
        push_num(&mut buf, rng.below(1 << 20), 0);
        buf.push(b',');
        push_hex(&mut buf, rng, 10);
        buf.push(b',');
        buf.extend_from_slice(vocab.word(rng));
        buf.push(b'\n');
    }
    out.copy_from_slice(&buf[..out.len()]);
}

/// Packed 64-byte binary records, like an inode table or a database page.
fn binary_records(rng: &mut Rng, vocab: &Vocab, page_no: u64, out: &mut [u8]) {
    let mut buf = Vec::with_capacity(PAGE);
    let mut ino = page_no * 64;
    while buf.len() < out.len() {
        ino += 1;
        let start = buf.len();
        buf.extend_from_slice(&ino.to_le_bytes());
        buf.extend_from_slice(&(0o100_644u32 + rng.below(2) as u32 * 0o111).to_le_bytes());
        buf.extend_from_slice(&(1000u32 + rng.below(3) as u32).to_le_bytes());
        buf.extend_from_slice(&(1_700_000_000u64 + ino * 7 + rng.below(5)).to_le_bytes());
        buf.extend_from_slice(&(rng.below(1 << 22)).to_le_bytes());
        let mut h = [0u8; 6];
        rng.fill(&mut h);
        buf.extend_from_slice(&h);
        let name = vocab.word(rng);
        let n = name.len().min(64 - (buf.len() - start));
        buf.extend_from_slice(&name[..n]);
        buf.resize(start + 64, 0);
    }
    out.copy_from_slice(&buf[..out.len()]);
}

/// A mixed block of `len` bytes for micro-benchmarks: its first half is OS-like text, its
/// second half random bytes.
pub fn mixed_block(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let vocab = Vocab::new(seed);
    let half = (len / 2 / PAGE).max(1) * PAGE;
    let os = Region {
        kind: Kind::Os,
        offset: 0,
        len: len as u64,
        seed: mix(seed, 1) & !3,
    };
    let rnd = Region {
        kind: Kind::Random,
        seed: mix(seed, 2),
        ..os
    };
    for (i, chunk) in out.chunks_mut(PAGE).enumerate() {
        let r = if i * PAGE < half { &os } else { &rnd };
        fill_page(r, &vocab, i as u64, chunk);
    }
    out
}

/// A block of `len` bytes of one kind (for micro-benchmarks).
pub fn block_of(kind: Kind, style: u64, seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let vocab = Vocab::new(seed);
    let r = Region {
        kind,
        offset: 0,
        len: len as u64,
        seed: (mix(seed, 3) & !3) | (style & 3),
    };
    for (i, chunk) in out.chunks_mut(PAGE).enumerate() {
        fill_page(&r, &vocab, i as u64, chunk);
    }
    out
}

/// The delta workload: `count` rewrites of `write_len` random bytes at 4 KiB-aligned
/// offsets drawn uniformly over the image (they may overlap and straddle blocks).
pub fn delta_writes(size: u64, seed: u64, count: u64, write_len: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng::new(mix(seed, 0x64_656c_7461));
    let slots = (size.saturating_sub(write_len)) / PAGE as u64 + 1;
    (0..count)
        .map(|_| {
            let off = rng.below(slots) * PAGE as u64;
            let len = write_len.min(size - off) as usize;
            let mut data = vec![0u8; len];
            Rng::new(rng.next_u64()).fill(&mut data);
            (off, data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_image_and_hits_shares() {
        let size = 512 << 20;
        let l = Layout::new(size, 7);
        let mut off = 0;
        for r in &l.regions {
            assert_eq!(r.offset, off);
            off += r.len;
        }
        assert_eq!(off, size);
        let b = l.bytes_by_kind();
        for (i, k) in Kind::ALL.iter().enumerate() {
            let share = b[i] as f64 / size as f64;
            assert!((share - k.target_share()).abs() < 0.05, "{k:?} {share}");
        }
    }

    #[test]
    fn fill_is_position_independent() {
        let l = Layout::new(16 << 20, 3);
        let mut whole = vec![0u8; 16 << 20];
        l.fill(0, &mut whole);
        let mut part = vec![0u8; 100_000];
        l.fill(1_234_567, &mut part);
        assert_eq!(&whole[1_234_567..1_334_567], &part[..]);
    }
}
