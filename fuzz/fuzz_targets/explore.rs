//! Disk images as `tessera files` reads them: partition tables, ext2/3/4, FAT and NTFS, walked
//! whole (`src/explore.rs`). Never panics; what opens is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::explore::check;

fuzz_target!(|data: &[u8]| {
    check(data);
});
