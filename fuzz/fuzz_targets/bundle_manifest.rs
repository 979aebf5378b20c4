//! Seed bundle manifests (`Manifest::decode`: the `bundle.json` envelope, its SHA-256,
//! the manifest JSON, format and version, file names). The input is tried as a whole
//! `bundle.json` and, when it is text, as the inner manifest in a correct envelope. Never
//! panics; what decodes is well-formed and re-encodes stably (`src/bundle_manifest.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::bundle_manifest::{check, enveloped};

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(text) = std::str::from_utf8(data) {
        check(&enveloped(text));
    }
});
