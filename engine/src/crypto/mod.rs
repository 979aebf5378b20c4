//! Encryption at rest (SPEC.md §23): keyed object ids, the AEAD record codec and key slots.
//! The store calls this module; nothing else sees a key.
//!
//! Key hierarchy:
//!
//! ```text
//! passphrase ──Argon2id──┐
//! key file ─────HKDF─────┼─▶ KEK ──AES-256-GCM──▶ slot keys/<slot>.key
//! recovery key ──HKDF────┘                                 │ wraps
//!                                      id key (32) ‖ data key (32)  = RepoKeys
//!                                        │                  │
//!                    HMAC-SHA-256 ids ◀──┘                  └──▶ AES-256-GCM records
//!                                                            (HKDF subkey per writer)
//! ```
//!
//! The two repository keys are generated once by `init` (or copied by `init --keys-from`)
//! and never change; slots can be added and removed without touching any data.

pub mod aead;
pub mod ids;
pub mod keyring;
pub mod objects;
pub mod record;
pub mod secret;
pub mod slot;
pub mod text;

use hkdf::Hkdf;
use sha2::Sha256;

/// The environment variable holding a passphrase (read by the CLI).
pub const PASSPHRASE_ENV: &str = "TESSERA_PASSPHRASE";

/// The environment variable holding the new passphrase of `key add`/`change-passphrase`.
pub const NEW_PASSPHRASE_ENV: &str = "TESSERA_NEW_PASSPHRASE";

/// Variables a child process (a password command, a job's hook) must not inherit.
pub const SECRET_ENV: [&str; 2] = [PASSPHRASE_ENV, NEW_PASSPHRASE_ENV];

pub use ids::IdHasher;
pub use keyring::{NoSecret, SecretSource};
pub use objects::{Protection, RepoCrypto};
pub use record::{RecordAd, RecordCipher, RecordKind, RECORD_OVERHEAD};
pub use secret::{Passphrase, SecretKey};
pub use slot::SlotSecret;

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext, its tag, or what it is bound to (id, kind, codec, length) was altered.
    #[error("authentication failed: the ciphertext or what it is bound to was altered")]
    Authentication,
    /// The passphrase, key file or recovery key does not open the slot.
    #[error("wrong passphrase, key file or recovery key")]
    WrongSecret,
    /// A buffer has the wrong length.
    #[error("expected {expected} bytes, found {found}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// A text form (key file, recovery key) could not be parsed.
    #[error("{0}")]
    BadText(String),
    /// The cryptographic library failed (allocation, a broken build).
    #[error("cryptographic library: {0}")]
    Library(String),
}

/// The repository's two keys. `Debug` shows neither; both are wiped on drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoKeys {
    /// Keys the HMAC-SHA-256 object ids.
    pub id_key: SecretKey,
    /// Seals records.
    pub data_key: SecretKey,
}

impl RepoKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        Self {
            id_key: SecretKey::random(),
            data_key: SecretKey::random(),
        }
    }

    /// `id key ‖ data key`, the plaintext a slot wraps.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 64]> {
        let mut out = zeroize::Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.id_key.expose());
        out[32..].copy_from_slice(self.data_key.expose());
        out
    }

    /// The inverse of [`RepoKeys::to_bytes`].
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let (id, data) = bytes.split_at(32);
        let mut id_key = [0u8; 32];
        id_key.copy_from_slice(id);
        let mut data_key = [0u8; 32];
        data_key.copy_from_slice(data);
        Self {
            id_key: SecretKey::from_bytes(id_key),
            data_key: SecretKey::from_bytes(data_key),
        }
    }

    /// A public 16-byte fingerprint of the key pair, stored in the config: two repositories
    /// can exchange objects without re-encryption exactly when their fingerprints are equal.
    /// HKDF output under a fixed label: it reveals nothing about either key.
    pub fn fingerprint(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let ikm = self.to_bytes();
        // 16 bytes is far below HKDF-SHA-256's 8160-byte limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, &ikm[..]).expand(b"tessera key fingerprint", &mut out);
        out
    }

    /// The object-id hasher under these keys.
    pub fn id_hasher(&self) -> IdHasher {
        IdHasher::keyed(&self.id_key)
    }

    /// The record cipher under these keys, with a fresh writer id.
    pub fn record_cipher(&self) -> Result<RecordCipher, CryptoError> {
        RecordCipher::new(self.data_key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::RepoKeys;

    #[test]
    fn keys_round_trip_and_fingerprints_tell_key_pairs_apart() {
        let keys = RepoKeys::generate();
        assert_eq!(RepoKeys::from_bytes(&keys.to_bytes()), keys);
        assert_eq!(keys.fingerprint(), keys.clone().fingerprint());
        assert_ne!(keys.fingerprint(), RepoKeys::generate().fingerprint());
        assert!(!format!("{keys:?}").contains(&hex::encode(keys.id_key.expose())));
    }
}
