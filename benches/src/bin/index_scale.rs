//! Index scale (issue: object storage, "index scale"): fills a fresh index with N chunk
//! entries as backups do (batches of one pack's worth of new chunks, each commit synced),
//! then measures what a backup and a restore ask of it at that size: batched presence checks
//! of new digests (all absent: the bloom filters answer) and of stored ones, and batched
//! location lookups of stored ones; the index's size on disk, the time to reopen it, and
//! this process's peak RSS. SPEC §2a extrapolates from these figures to 10^10 chunks.
//!
//! `cargo run --release -p tessera-benches --bin index-scale -- [--entries 100000000]
//! [--dir /var/tmp] [--lookups 2000000] [--json]`
//!
//! Digests are pseudo-random (SHA-256 output is): the worst case for locality, which is what
//! a first backup of unique data produces.

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_benches::bin_args::arg;
use tessera_engine::index::{Index, ObjectEntry};
use tessera_format::{Codec, ObjectKind, PackId, RepoId};

/// New chunks per commit: a 32 MiB pack of 64 KiB blocks compressed ~2:1 holds about this many.
const PER_COMMIT: u64 = 1024;
/// Digests per batched lookup (backup checks a group of blocks at once).
const LOOKUP_BATCH: usize = 1024;

fn main() -> anyhow::Result<()> {
    let entries: u64 = arg("--entries", "10000000").parse()?;
    let lookups: usize = arg("--lookups", "2000000").parse()?;
    let parent = arg("--dir", "/var/tmp");
    let json = std::env::args().any(|a| a == "--json");
    let dir = tempfile::Builder::new()
        .prefix("tessera-index-scale")
        .tempdir_in(&parent)?;
    let path = dir.path().join("index");
    let repo_id = RepoId([7; 16]);

    let index = Index::create(&path, repo_id)?;
    let started = Instant::now();
    let mut progress = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let mut offset = 0u64;
    let mut pack = PackId(rng.gen());
    let mut written = 0u64;
    while written < entries {
        let n = PER_COMMIT.min(entries - written);
        let mut batch = index.batch();
        for i in 0..n {
            let entry = ObjectEntry {
                pack,
                offset,
                stored_len: 32 << 10,
                raw_len: 64 << 10,
                codec: Codec::Zstd,
                stored_crc: 0,
                refcount: 1,
                dead_since_us: 0,
            };
            offset += 32 << 10;
            batch.put_object(ObjectKind::Chunk, &digest(written + i), &entry);
        }
        index.commit(batch)?;
        written += n;
        pack = PackId(rng.gen());
        offset = 0;
        if progress.elapsed().as_secs() >= 10 {
            progress = Instant::now();
            eprintln!(
                "{written} entries, {:.0} /s",
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let fill_s = started.elapsed().as_secs_f64();
    drop(index);

    let reopen = Instant::now();
    let index = Index::open(&path, repo_id, false)?;
    let reopen_s = reopen.elapsed().as_secs_f64();

    // Absent digests: what a first backup of new data asks.
    let absent: Vec<[u8; 32]> = (0..lookups as u64).map(|i| digest(entries + i)).collect();
    let t = Instant::now();
    let mut found = 0usize;
    for group in absent.chunks(LOOKUP_BATCH) {
        found += index
            .contains_many(ObjectKind::Chunk, group)?
            .into_iter()
            .filter(|x| *x)
            .count();
    }
    let absent_rate = lookups as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(found == 0, "{found} absent digests were found");

    // Present digests, at random: a backup of unchanged data, and a restore's locations.
    let present: Vec<[u8; 32]> = (0..lookups)
        .map(|_| digest(rng.gen_range(0..entries)))
        .collect();
    let t = Instant::now();
    for group in present.chunks(LOOKUP_BATCH) {
        let hits = index.contains_many(ObjectKind::Chunk, group)?;
        anyhow::ensure!(hits.iter().all(|x| *x), "a stored digest was not found");
    }
    let present_rate = lookups as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for group in present.chunks(LOOKUP_BATCH) {
        let got = index.get_many(ObjectKind::Chunk, group)?;
        anyhow::ensure!(got.iter().all(Option::is_some), "a location was missing");
    }
    let locate_rate = lookups as f64 / t.elapsed().as_secs_f64();
    drop(index);

    let report = Report {
        entries,
        fill_s,
        index_bytes: dir_size(&path)?,
        reopen_s,
        absent_rate,
        present_rate,
        locate_rate,
        peak_rss_kib: peak_rss_kib(),
    };
    report.print(json);
    Ok(())
}

/// What one run measured.
struct Report {
    entries: u64,
    fill_s: f64,
    index_bytes: u64,
    reopen_s: f64,
    absent_rate: f64,
    present_rate: f64,
    locate_rate: f64,
    peak_rss_kib: u64,
}

impl Report {
    fn print(&self, json: bool) {
        let per_entry = self.index_bytes as f64 / self.entries as f64;
        let fill_rate = self.entries as f64 / self.fill_s;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "entries": self.entries,
                    "fill_s": self.fill_s,
                    "fill_per_s": fill_rate,
                    "index_bytes": self.index_bytes,
                    "bytes_per_entry": per_entry,
                    "reopen_s": self.reopen_s,
                    "absent_lookups_per_s": self.absent_rate,
                    "present_lookups_per_s": self.present_rate,
                    "locate_per_s": self.locate_rate,
                    "peak_rss_kib": self.peak_rss_kib,
                })
            );
            return;
        }
        println!(
            "index scale: {} chunk entries (pseudo-random digests)",
            self.entries
        );
        println!(
            "  fill            {:>10.1} s  ({fill_rate:.0} entries/s, a commit per {PER_COMMIT})",
            self.fill_s
        );
        println!(
            "  size on disk    {:>10.1} MiB ({per_entry:.1} bytes/entry)",
            self.index_bytes as f64 / f64::from(1 << 20)
        );
        println!("  reopen          {:>10.2} s", self.reopen_s);
        println!(
            "  absent lookups  {:>10.0} /s (batches of {LOOKUP_BATCH})",
            self.absent_rate
        );
        println!("  present lookups {:>10.0} /s", self.present_rate);
        println!("  locations       {:>10.0} /s", self.locate_rate);
        println!(
            "  peak RSS        {:>10.1} MiB",
            self.peak_rss_kib as f64 / 1024.0
        );
    }
}

/// The `i`-th pseudo-random digest (SHA-256 of `i`, as content digests are).
fn digest(i: u64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(i.to_le_bytes()).into()
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Peak resident memory of this process.
#[allow(unsafe_code)]
fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}
