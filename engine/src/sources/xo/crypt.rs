//! Encrypted Xen Orchestra remotes (`@xen-orchestra/fs`, `_encryptor.js` and
//! `docs/encryption.md`; SPEC §25).
//!
//! `encryption.json` at the remote's root is plain JSON, `{"algorithm": A}`, with A one of
//! `none`, `chacha20-poly1305` (the default since XO 5.75), `aes-256-gcm`, and the legacy
//! `aes-256-cbc`. Every other file is encrypted whole as `IV ‖ ciphertext ‖ tag` with a fresh
//! random IV: 12 bytes and a 16-byte tag for the two AEADs, a 16-byte IV, no tag and PKCS#7
//! padding for CBC. The key is the remote's 32-character key string, used as its 32 bytes.
//! `metadata.json` is an encrypted `{"random": UUID}` whose only job is to tell a wrong key:
//! it is decrypted and parsed before anything else is read.
//!
//! The ciphers are OpenSSL's (the `openssl` crate, already tessera's TLS library), the
//! same implementation Node's `crypto` module uses to write these files.

use openssl::symm::{decrypt, decrypt_aead, Cipher};
use zeroize::Zeroizing;

/// An algorithm a remote's `encryption.json` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XoAlgorithm {
    /// ChaCha20-Poly1305 (XO's default).
    Chacha20Poly1305,
    /// AES-256-GCM.
    Aes256Gcm,
    /// AES-256-CBC, without authentication (legacy remotes).
    Aes256Cbc,
}

impl XoAlgorithm {
    /// The algorithm named `name` in `encryption.json`; `Ok(None)` for `none`.
    pub fn parse(name: &str) -> Result<Option<Self>, String> {
        match name {
            "none" => Ok(None),
            "chacha20-poly1305" => Ok(Some(Self::Chacha20Poly1305)),
            "aes-256-gcm" => Ok(Some(Self::Aes256Gcm)),
            "aes-256-cbc" => Ok(Some(Self::Aes256Cbc)),
            other => Err(format!(
                "algorithm {other:?} is not one tessera reads (none, chacha20-poly1305, aes-256-gcm, aes-256-cbc)"
            )),
        }
    }

    /// The name `encryption.json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chacha20Poly1305 => "chacha20-poly1305",
            Self::Aes256Gcm => "aes-256-gcm",
            Self::Aes256Cbc => "aes-256-cbc",
        }
    }

    fn iv_len(self) -> usize {
        match self {
            Self::Chacha20Poly1305 | Self::Aes256Gcm => 12,
            Self::Aes256Cbc => 16,
        }
    }

    fn tag_len(self) -> usize {
        match self {
            Self::Chacha20Poly1305 | Self::Aes256Gcm => 16,
            Self::Aes256Cbc => 0,
        }
    }
}

/// The length of a remote key.
pub const KEY_LEN: usize = 32;

/// Decrypts a remote's files.
pub struct XoCipher {
    algorithm: XoAlgorithm,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl XoCipher {
    /// A cipher for `algorithm` with the remote key `key` (its text, exactly 32 bytes).
    pub fn new(algorithm: XoAlgorithm, key: &[u8]) -> Result<Self, String> {
        if key.len() != KEY_LEN {
            return Err(format!(
                "a Xen Orchestra remote key is {KEY_LEN} characters; the key given is {} bytes",
                key.len()
            ));
        }
        let mut copy = Zeroizing::new([0u8; KEY_LEN]);
        copy.copy_from_slice(key);
        Ok(Self {
            algorithm,
            key: copy,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> XoAlgorithm {
        self.algorithm
    }

    /// Most bytes a file's encryption adds to its content (IV, tag, a padding block).
    pub fn overhead(&self) -> u64 {
        (self.algorithm.iv_len() + self.algorithm.tag_len() + 16) as u64
    }

    /// The content of an encrypted file `data`; an error when it is too short, its tag does
    /// not authenticate it (a wrong key or damage), or its padding is wrong (CBC).
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let a = self.algorithm;
        let (iv_len, tag_len) = (a.iv_len(), a.tag_len());
        if data.len() < iv_len + tag_len {
            return Err(format!(
                "{} bytes cannot hold the {iv_len}-byte IV and {tag_len}-byte tag of {}",
                data.len(),
                a.name()
            ));
        }
        let (iv, rest) = data.split_at(iv_len);
        let (ciphertext, tag) = rest.split_at(rest.len() - tag_len);
        let key = &self.key[..];
        let out = match a {
            XoAlgorithm::Chacha20Poly1305 => decrypt_aead(
                Cipher::chacha20_poly1305(),
                key,
                Some(iv),
                &[],
                ciphertext,
                tag,
            ),
            XoAlgorithm::Aes256Gcm => {
                decrypt_aead(Cipher::aes_256_gcm(), key, Some(iv), &[], ciphertext, tag)
            }
            XoAlgorithm::Aes256Cbc => decrypt(Cipher::aes_256_cbc(), key, Some(iv), ciphertext),
        };
        out.map_err(|_| match a {
            XoAlgorithm::Aes256Cbc => {
                "the padding is wrong (a wrong key, or damaged data)".to_string()
            }
            _ => "the authentication tag does not match (a wrong key, or damaged data)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::symm::{encrypt, encrypt_aead};

    fn sealed(a: XoAlgorithm, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let iv = vec![7u8; a.iv_len()];
        let mut out = iv.clone();
        if a == XoAlgorithm::Aes256Cbc {
            out.extend(encrypt(Cipher::aes_256_cbc(), key, Some(&iv), plain).unwrap());
        } else {
            {
                let cipher = if a == XoAlgorithm::Aes256Gcm {
                    Cipher::aes_256_gcm()
                } else {
                    Cipher::chacha20_poly1305()
                };
                let mut tag = [0u8; 16];
                out.extend(encrypt_aead(cipher, key, Some(&iv), &[], plain, &mut tag).unwrap());
                out.extend(tag);
            }
        }
        out
    }

    #[test]
    fn each_algorithm_round_trips_and_refuses_a_wrong_key_or_a_flipped_bit() {
        let key = b"0123456789abcdef0123456789abcdef";
        let other = b"0123456789abcdef0123456789abcdeX";
        for a in [
            XoAlgorithm::Chacha20Poly1305,
            XoAlgorithm::Aes256Gcm,
            XoAlgorithm::Aes256Cbc,
        ] {
            let data = sealed(a, key, b"{\"random\":\"x\"}");
            let c = XoCipher::new(a, key).unwrap();
            assert_eq!(c.decrypt(&data).unwrap(), b"{\"random\":\"x\"}");
            if a != XoAlgorithm::Aes256Cbc {
                let wrong = XoCipher::new(a, other).unwrap();
                assert!(wrong.decrypt(&data).is_err(), "{a:?}");
                let mut flipped = data.clone();
                flipped[14] ^= 1;
                assert!(c.decrypt(&flipped).is_err(), "{a:?}");
            }
            assert!(c.decrypt(&data[..5]).is_err());
        }
        assert!(XoCipher::new(XoAlgorithm::Aes256Gcm, b"short").is_err());
    }
}
