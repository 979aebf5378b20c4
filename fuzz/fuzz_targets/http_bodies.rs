//! Request bodies of `tessera serve` (`have`/`get` digest lists, `put` record streams for
//! chunks and pages, raw and with their CRCs recomputed), decoded and checked as the
//! handlers do before the repository is opened. The first byte picks the endpoint. Never
//! panics; what decodes re-encodes to the body; refusals are `UntrustedData`; decompression
//! stays within the records' claimed sizes (`src/http_bodies.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_fuzz::http_bodies::check(data));
