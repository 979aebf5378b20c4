//! Xen Orchestra remotes (SPEC §25): a backup's metadata JSON, or a VhdDirectory folder
//! (chunk filters none/gzip/brotli, header, footer, bat, a block) opened as a remote and
//! read through the engine's VHD reader. Never panics; every refusal is damaged input
//! (`src/xo.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::xo::check;

fuzz_target!(|data: &[u8]| {
    check(data);
});
