//! VHD images (`VhdSource::from_bytes`: footer and its copy, dynamic header, BAT, sector
//! bitmaps, parent locators), as given and with their checksums recomputed. Never panics;
//! an image that opens reads consistently and as far as it promises (`src/vhd.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::vhd::{check, resealed};

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(sealed) = resealed(data) {
        check(&sealed);
    }
});
