//! Text forms of the secrets a user keeps: key files and the recovery key.
//!
//! A key file is one line, `tessera-key-v1:` followed by 64 hex digits of 32 random bytes;
//! it is created with mode 0600. The recovery key is the same 32 bytes of a different
//! secret printed as eight groups of eight hex digits (`1a2b3c4d-…`), easy to copy by hand;
//! parsing ignores case, spaces and dashes.

use crate::crypto::secret::SecretKey;
use crate::crypto::CryptoError;
use zeroize::Zeroizing;

const KEY_FILE_PREFIX: &str = "tessera-key-v1:";

/// The content of a key file holding `key`.
pub fn key_file_text(key: &SecretKey) -> Zeroizing<String> {
    Zeroizing::new(format!("{KEY_FILE_PREFIX}{}\n", hex::encode(key.expose())))
}

/// Parses a key file's content.
pub fn parse_key_file(text: &str) -> Result<SecretKey, CryptoError> {
    let body = text
        .trim()
        .strip_prefix(KEY_FILE_PREFIX)
        .ok_or_else(|| CryptoError::BadText(format!("a key file starts with {KEY_FILE_PREFIX}")))?;
    parse_hex32(body, "key file")
}

/// The recovery key as printed once by `init`.
pub fn recovery_text(key: &SecretKey) -> Zeroizing<String> {
    let hex = Zeroizing::new(hex::encode(key.expose()));
    let groups: Vec<&str> = (0..8).map(|i| &hex[i * 8..i * 8 + 8]).collect();
    Zeroizing::new(groups.join("-"))
}

/// Parses a recovery key as typed back.
pub fn parse_recovery(text: &str) -> Result<SecretKey, CryptoError> {
    let digits: Zeroizing<String> = Zeroizing::new(
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    );
    parse_hex32(&digits, "recovery key")
}

fn parse_hex32(digits: &str, what: &str) -> Result<SecretKey, CryptoError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(digits, &mut bytes[..])
        .map_err(|_| CryptoError::BadText(format!("a {what} is 64 hex digits")))?;
    Ok(SecretKey::from_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::{key_file_text, parse_key_file, parse_recovery, recovery_text};
    use crate::crypto::secret::SecretKey;

    #[test]
    fn text_forms_round_trip_and_refuse_garbage() {
        let key = SecretKey::random();
        assert_eq!(parse_key_file(&key_file_text(&key)).unwrap(), key);
        let printed = recovery_text(&key);
        assert_eq!(printed.len(), 71);
        assert_eq!(parse_recovery(&printed).unwrap(), key);
        assert_eq!(
            parse_recovery(&printed.to_uppercase().replace('-', " ")).unwrap(),
            key
        );
        assert!(parse_key_file("tessera-key-v1:abcd").is_err());
        assert!(parse_key_file(&printed).is_err());
        assert!(parse_recovery("zz").is_err());
    }
}
