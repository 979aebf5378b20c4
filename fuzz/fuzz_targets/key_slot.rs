//! `KeySlotFile::decode` (SPEC.md §23.4): never panics; a decoded slot re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::keyslot::KeySlotFile;
use tessera_fuzz::raw_and_resealed;

fuzz_target!(|data: &[u8]| {
    raw_and_resealed(data, |bytes| {
        let Ok(slot) = KeySlotFile::decode(bytes) else {
            return;
        };
        assert_eq!(slot.encode().expect("a decoded slot encodes"), bytes);
    });
});
