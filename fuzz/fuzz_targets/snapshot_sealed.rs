//! `snapshot_sealed::decode_public` (an encrypted repository's snapshot file, SPEC.md §6a):
//! never panics; with its sealed bytes taken as the private plaintext (the fuzzer cannot
//! produce a valid seal, so the engine's AEAD is left out), a snapshot that joins re-splits
//! to the same cleartext part and, around the same sealed bytes, to the same file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::snapshot_sealed::{decode_public, split};
use tessera_fuzz::raw_and_resealed;

fuzz_target!(|data: &[u8]| {
    raw_and_resealed(data, |bytes| {
        let Ok(public) = decode_public(bytes) else {
            return;
        };
        let _ = public.without_private();
        let Ok(snapshot) = public.join(public.sealed) else {
            return;
        };
        let parts = split(&snapshot).expect("a joined snapshot splits");
        assert_eq!(parts.binding(), public.binding);
        assert_eq!(parts.private(), public.sealed);
        let (_, again) = parts.assemble(public.sealed).expect("assembles");
        assert_eq!(again, bytes);
    });
});
