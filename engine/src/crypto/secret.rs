//! Secret key material: 32-byte keys that are wiped when dropped and never printed.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret key. Its bytes are zeroed when it is dropped (best effort: copies the
/// compiler or a cipher library made are out of reach), and `Debug` prints no byte of it,
/// so a key can never end up in a log line or `--json` output by way of `{:?}`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// A fresh key from the operating system's random number generator.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        Self(key)
    }

    /// Takes ownership of key bytes (the caller zeroes its own copy if it keeps one).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Copies a key out of a slice of exactly [`Self::LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The key bytes, for handing to a cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A passphrase or other secret text, wiped when dropped and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// Wraps a passphrase. A trailing newline (from a file or a command's output) is the
    /// caller's to strip; the bytes are used as given.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The passphrase bytes, for the key derivation function.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether the passphrase is empty (refused by `init` and `key add`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::{Passphrase, SecretKey};

    #[test]
    fn debug_output_names_no_secret_byte() {
        let key = SecretKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        let pass = Passphrase::new("hunter2-secret".into());
        assert!(!format!("{pass:?}").contains("hunter2"));
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(SecretKey::random(), SecretKey::random());
    }
}
