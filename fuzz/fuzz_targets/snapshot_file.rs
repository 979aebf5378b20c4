//! `Snapshot::decode`: never panics; a decoded snapshot re-encodes to the same bytes (so
//! to the same id), and its header alone to the header bytes the file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::{Snapshot, SnapshotHeader, SnapshotId};
use tessera_fuzz::raw_and_resealed;

fuzz_target!(|data: &[u8]| {
    raw_and_resealed(data, |bytes| {
        let Ok(snapshot) = Snapshot::decode(bytes) else {
            return;
        };
        let (id, again) = snapshot.encode().expect("a decoded snapshot encodes");
        assert_eq!(again, bytes);
        assert_eq!(id, SnapshotId::of(bytes));
        let header = snapshot.header.encode().expect("a decoded header encodes");
        assert_eq!(header, bytes[16..16 + header.len()]);
        assert_eq!(
            SnapshotHeader::decode(&header).as_ref(),
            Ok(&snapshot.header)
        );
    });
});
