//! AES-256-GCM through `ring` (chosen by measurement, SPEC.md §23.3). This file holds the
//! raw AEAD calls; nonce discipline is the caller's ([`crate::crypto::record`] derives a
//! fresh subkey per writer and counts; key slots use a fresh key per slot).
//!
//! Known-answer tests check it against the GCM specification's AES-256 test case and,
//! as a property, against OpenSSL's independent AES-256-GCM.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

use crate::crypto::secret::SecretKey;
use crate::crypto::CryptoError;

/// Nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length.
pub const TAG_LEN: usize = 16;

/// An expanded AES-256-GCM key.
pub struct AeadKey(LessSafeKey);

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(<redacted>)")
    }
}

impl AeadKey {
    /// Expands `key`.
    pub fn new(key: &SecretKey) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
            .map_err(|_| CryptoError::Library("AES-256-GCM key setup failed".into()))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Encrypts `plaintext` and appends `ciphertext ‖ tag` to `out`. `nonce` must never
    /// have been used with this key before.
    pub fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(ad),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Library("AES-256-GCM seal failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Encrypts `buf` in place and returns the tag. `nonce` must never have been used
    /// with this key before.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(ad), buf)
            .map_err(|_| CryptoError::Library("AES-256-GCM seal failed".into()))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `ciphertext` into `dst` (exactly as long). On failure
    /// `dst` holds bytes that must be discarded.
    pub fn open_into(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError> {
        if dst.len() != ciphertext.len() {
            return Err(CryptoError::Length {
                expected: ciphertext.len(),
                found: dst.len(),
            });
        }
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Length {
            expected: TAG_LEN,
            found: tag.len(),
        })?;
        dst.copy_from_slice(ciphertext);
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(ad),
                tag,
                dst,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Authentication)
    }
}

/// 96 random bits from the operating system (for single-use keys: key slots).
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::{AeadKey, NONCE_LEN};
    use crate::crypto::secret::SecretKey;
    use crate::crypto::CryptoError;
    use openssl::symm::{encrypt_aead, Cipher};
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16 (AES-256,
    /// 60-byte plaintext, 20-byte associated data).
    #[test]
    fn matches_the_gcm_specification_test_case_16() {
        let key = SecretKey::from_slice(&unhex(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        ))
        .unwrap();
        let plaintext = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let ad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let nonce: [u8; NONCE_LEN] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aead = AeadKey::new(&key).unwrap();
        let mut out = Vec::new();
        aead.seal_into(nonce, &ad, &plaintext, &mut out).unwrap();
        let (ct, tag) = out.split_at(plaintext.len());
        assert_eq!(
            hex::encode(ct),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        );
        assert_eq!(hex::encode(tag), "76fc6ece0f4e1768cddf8853bb2d551b");
        let mut back = vec![0u8; ct.len()];
        aead.open_into(nonce, &ad, ct, tag, &mut back).unwrap();
        assert_eq!(back, plaintext);
    }

    proptest! {
        /// ring's AES-256-GCM agrees with OpenSSL's, and refuses a flipped tag bit.
        #[test]
        fn agrees_with_openssl(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            ad in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let aead = AeadKey::new(&SecretKey::from_bytes(key)).unwrap();
            let mut ours = Vec::new();
            aead.seal_into(nonce, &ad, &data, &mut ours).unwrap();
            let mut tag = [0u8; 16];
            let ct = encrypt_aead(Cipher::aes_256_gcm(), &key, Some(&nonce), &ad, &data, &mut tag)
                .unwrap();
            prop_assert_eq!(&ours[..data.len()], &ct[..]);
            prop_assert_eq!(&ours[data.len()..], &tag[..]);
            let mut back = vec![0u8; data.len()];
            aead.open_into(nonce, &ad, &ct, &tag, &mut back).unwrap();
            prop_assert_eq!(&back, &data);
            tag[15] ^= 1;
            prop_assert_eq!(
                aead.open_into(nonce, &ad, &ct, &tag, &mut back),
                Err(CryptoError::Authentication)
            );
        }
    }
}
