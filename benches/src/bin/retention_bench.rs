//! Retention cost curves: see `tessera_benches::retention`.
//!
//! `cargo run --release -p tessera-benches --bin retention-bench [-- --sizes 10,100,1000 --disk-mib 16 --compact-mib 512]`

use tessera_benches::bin_args::arg;

fn main() {
    let sizes: Vec<usize> = arg("--sizes", "10,100,1000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let disk_mib: usize = arg("--disk-mib", "16").parse().unwrap_or(16);
    let compact_mib: usize = arg("--compact-mib", "512").parse().unwrap_or(512);
    tessera_benches::retention::run_and_print(&sizes, disk_mib, compact_mib);
}
