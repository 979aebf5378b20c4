//! `tessera import xo` against a plain `tessera backup` of the same data (issue 22's goal:
//! import throughput at 80 % or more of a VHD backup's), and the repository's size after a
//! 10-point chain against the remote's.
//!
//! A generated image (mixed zero, OS-like and random regions) is the key backup of one VM;
//! nine differencing backups follow, each rewriting `--percent` of the disk in random
//! 64 KiB–1 MiB runs. Two remotes hold the same chain: VHD files, and brotli VhdDirectories
//! behind aliases (XO's `useVhdDirectory` layout). Measured: the first point's import
//! against `tessera backup` of the key VHD file; the nine deltas' import; and sizes.
//!
//! `cargo run --release -p tessera-benches --bin xo-import-bench -- [--size-mib 1024] [--percent 2]`

use std::fs::File;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use tessera_benches::bin_args::{arg, tessera_path};
use tessera_benches::datagen::Layout;
use tessera_benches::measure::{tessera_ok as tessera, tree_size, Measured};
use tessera_tests::xo_build::{write_metadata, Disk, Remote, Storage};

const T0: i64 = 1_767_225_600;

#[expect(clippy::too_many_lines, reason = "the benchmark's steps in order")]
fn main() -> Result<()> {
    let size_mib: u64 = arg("--size-mib", "1024").parse()?;
    let percent: u64 = arg("--percent", "2").parse()?;
    let seed: u64 = arg("--seed", "1").parse()?;
    let bin = tessera_path();
    let work = tempfile::Builder::new()
        .prefix("tessera-xo-bench-")
        .tempdir_in("/var/tmp")?;
    let image = work.path().join("image.raw");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Layout::new(size_mib << 20, seed).write_to(&File::create(&image)?, cores, false)?;
    let raw = std::fs::read(&image)?;
    std::fs::remove_file(&image)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deltas: Vec<Vec<(u64, Vec<u8>)>> = (0..9)
        .map(|_| {
            let mut left = (size_mib << 20) * percent / 100;
            let mut w = Vec::new();
            while left > 0 {
                let len = (rng.gen_range(64u64..=1024) << 10)
                    .min(left)
                    .next_multiple_of(512);
                let at = rng.gen_range(0..((size_mib << 20) - len) / 512) * 512;
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data[..]);
                w.push((at, data));
                left = left.saturating_sub(len);
            }
            w
        })
        .collect();
    eprintln!("{size_mib} MiB image, 9 deltas of {percent} % each");
    println!("| remote layout | first point: import | `tessera backup` of the key VHD | import / backup throughput | 9 deltas: import | remote size | repository size | repo / remote |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, storage) in [
        ("VHD files", Storage::File),
        ("VhdDirectory (brotli)", Storage::Directory(Some("brotli"))),
    ] {
        let dir = work.path().join(label.replace([' ', '(', ')'], ""));
        let remote = Remote::new(&dir.join("remote"), None);
        let vm = tessera_tests::vhd_build::uuid_text(&rand::random());
        let mut disk = Disk::new(0, "job", storage, size_mib << 20);
        disk.keep_raw = false;
        disk.point(&remote, &vm, T0, &[(0, raw.clone())], false);
        write_metadata(&remote, &vm, "bench", T0, "job", "s", &[&disk]);
        // Baseline: the key VHD backed up by `tessera backup` (VHD files only: a
        // VhdDirectory is not something `tessera backup` reads).
        let key_vhd = remote.vm_dir(&vm).join(&disk.points[0].vhd);
        let baseline = if storage == Storage::File {
            let repo = dir.join("repo-backup");
            tessera(
                &bin,
                &[
                    "init",
                    repo.to_str().unwrap_or_default(),
                    "--encryption",
                    "none",
                ],
            )?;
            Some(tessera(
                &bin,
                &[
                    "backup",
                    repo.to_str().unwrap_or_default(),
                    "--series",
                    "b",
                    &format!("xvda={}", key_vhd.display()),
                ],
            )?)
        } else {
            None
        };
        let repo = dir.join("repo-import");
        tessera(
            &bin,
            &[
                "init",
                repo.to_str().unwrap_or_default(),
                "--encryption",
                "none",
            ],
        )?;
        let first = tessera(
            &bin,
            &[
                "import",
                "xo",
                remote.root.to_str().unwrap_or_default(),
                repo.to_str().unwrap_or_default(),
            ],
        )?;
        for (i, w) in (1i64..).zip(&deltas) {
            disk.point(&remote, &vm, T0 + 3600 * i, w, false);
            write_metadata(&remote, &vm, "bench", T0 + 3600 * i, "job", "s", &[&disk]);
        }
        let rest = tessera(
            &bin,
            &[
                "import",
                "xo",
                remote.root.to_str().unwrap_or_default(),
                repo.to_str().unwrap_or_default(),
            ],
        )?;
        let remote_size = tree_size(&remote.root);
        let repo_size = tree_size(&repo);
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let rate = |m: &Measured| {
            format!(
                "{:.2} s ({:.0} MiB/s)",
                m.wall_s,
                size_mib as f64 / m.wall_s
            )
        };
        println!(
            "| {label} | {} | {} | {} | {:.2} s | {:.0} MiB | {:.0} MiB | {:.2} |",
            rate(&first),
            baseline.as_ref().map_or("–".into(), rate),
            baseline.as_ref().map_or("–".into(), |b| format!(
                "{:.0} %",
                100.0 * b.wall_s / first.wall_s
            )),
            rest.wall_s,
            mib(remote_size),
            mib(repo_size),
            repo_size as f64 / remote_size as f64
        );
    }
    Ok(())
}
