//! `tessera mount REPO MOUNTPOINT` (SPEC §24.8).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tessera_engine::location::RepoLocation;

use crate::doc::print_ok;

/// What `mount --json` prints once mounted.
#[derive(serde::Serialize)]
struct Mounted<'a> {
    mounted: &'a Path,
}

pub fn run(repo: &RepoLocation, mountpoint: &Path, json: bool) -> Result<i32> {
    let repository = Arc::new(super::open_reader(repo)?);
    let mounted = tessera_engine::mount::mount(repository, mountpoint)?;
    if json {
        print_ok(&Mounted {
            mounted: mountpoint,
        });
    } else {
        println!(
            "mounted {repo} read-only at {}; Ctrl-C unmounts",
            mountpoint.display()
        );
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    mounted.serve_until_signal(&|why| eprintln!("tessera mount: {why}"))?;
    if !json {
        eprintln!("unmounted {}", mountpoint.display());
    }
    Ok(0)
}
