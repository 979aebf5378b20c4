//! `SnapshotHeader::decode` (the index's catalog entries): never panics; a decoded header
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::SnapshotHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SnapshotHeader::decode(data) {
        let again = header.encode().expect("a decoded header encodes");
        assert_eq!(again, data);
    }
});
