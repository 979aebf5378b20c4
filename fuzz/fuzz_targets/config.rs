//! `RepoConfig::decode`: never panics; a decoded config re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::RepoConfig;
use tessera_fuzz::raw_and_resealed;

fuzz_target!(|data: &[u8]| {
    raw_and_resealed(data, |bytes| {
        if let Ok(config) = RepoConfig::decode(bytes) {
            let again = config.encode().expect("a decoded config encodes");
            assert_eq!(again, bytes, "{config:?} re-encodes differently");
        }
    });
});
