//! The `bundle_manifest` target's checks (see `fuzz_targets/bundle_manifest.rs`).

use sha2::{Digest, Sha256};
use tessera_engine::sync::bundle_manifest::{is_bundle_file_name, Manifest};

/// `manifest` (the inner JSON text) in a well-formed envelope with its correct SHA-256,
/// so that mutations of the text reach the manifest's own parsing and checks.
pub fn enveloped(manifest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "manifest_sha256": hex::encode(Sha256::digest(manifest.as_bytes())),
        "manifest": manifest,
    }))
    .expect("a JSON value serializes")
}

/// Decodes `bytes` as `bundle.json`. What decodes lists only plain, distinct pack and
/// snapshot file names, and re-encodes to bytes that decode to a manifest encoding the
/// same way (encoding is a fixpoint after one round).
pub fn check(bytes: &[u8]) {
    let Ok(m) = Manifest::decode(bytes) else {
        return;
    };
    let mut names = std::collections::HashSet::new();
    for f in &m.files {
        assert!(is_bundle_file_name(&f.name), "{:?}", f.name);
        assert!(names.insert(f.name.clone()), "{:?} twice", f.name);
    }
    let encoded = m.encode();
    let again = Manifest::decode(&encoded).expect("an encoded manifest decodes");
    assert_eq!(again.encode(), encoded);
}
