//! The text the crate parses: hex ids (snapshot and pack file names read from directory
//! listings), compression specs and names. Never panics; a parsed id prints as the
//! lower-case form of what was parsed, and a parsed spec survives its own display.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use tessera_format::config::validate_block_size;
use tessera_format::snapshot::validate_name;
use tessera_format::{ChunkDigest, Compression, PackId, PageDigest, RepoId, SnapshotId};

fn id<T: FromStr + ToString>(s: &str) {
    if let Ok(id) = s.parse::<T>() {
        assert_eq!(id.to_string(), s.to_ascii_lowercase());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    id::<SnapshotId>(s);
    id::<PackId>(s);
    id::<ChunkDigest>(s);
    id::<PageDigest>(s);
    id::<RepoId>(s);
    if let Ok(c) = Compression::parse(s) {
        assert_eq!(Compression::parse(&c.to_string()), Ok(c));
    }
    if validate_name("name", s).is_ok() {
        assert!(!s.is_empty() && s.len() <= 128 && s.is_ascii(), "{s:?}");
    }
    if let Ok(n) = s.parse::<u64>() {
        if let Ok(size) = validate_block_size(n) {
            assert_eq!(u64::from(size), n);
        }
    }
});
