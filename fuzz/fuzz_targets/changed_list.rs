//! Changed-block lists (`ChangedList::parse`: header, size, states, extents, granularity
//! and hex bitmaps). Never panics; a list that parses is well-formed and survives its
//! canonical form (`src/changed_list.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tessera_fuzz::changed_list::check(text);
    }
});
