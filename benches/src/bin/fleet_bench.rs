//! Many writers at once: see `tessera_benches::fleet`.
//!
//! `cargo run --release -p tessera-benches --bin fleet-bench [-- --clients 4 --size 256M --seed 1 --tessera BIN]`

use tessera_benches::bin_args::{arg, parse_size, tessera_path};

fn main() -> anyhow::Result<()> {
    let clients: usize = arg("--clients", "4").parse()?;
    let size = parse_size(&arg("--size", "256M"))?;
    let seed: u64 = arg("--seed", "1").parse()?;
    let dir = tempfile::Builder::new()
        .prefix("tessera-fleet-bench")
        .tempdir_in("/var/tmp")?;
    let figures =
        tessera_benches::fleet::measure(&tessera_path(), dir.path(), clients, size, seed)?;
    tessera_benches::fleet::print(&figures);
    Ok(())
}
