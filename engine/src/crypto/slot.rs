//! Key slots (SPEC.md §23.4): the repository keys wrapped under a key-encryption key (KEK)
//! derived from what the user holds.
//!
//! | slot kind | KEK |
//! |---|---|
//! | passphrase | Argon2id(passphrase, salt, m, t, p), 32 bytes, parameters stored in the slot |
//! | key file | HKDF-SHA-256(ikm = the file's 32 random bytes, salt, info "tessera key file slot") |
//! | recovery key | HKDF-SHA-256(ikm = the recovery key's 32 bytes, salt, info "tessera recovery slot") |
//!
//! The KEK seals `id key ‖ data key` with AES-256-GCM under a random nonce; the
//! slot's header bytes (repository id, slot id, kind, KDF parameters, salt, time) are the
//! associated data. A wrong secret fails the tag: that is how a wrong passphrase is told
//! apart from damage (a slot that fails its CRC is damage; one that decodes but does not
//! open is a wrong secret). Key files and recovery keys hold 256 random bits, so they
//! need no stretching; only passphrases pay Argon2id.

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use tessera_format::keyslot::{KdfParams, KeySlotFile, SlotKind, WRAPPED_LEN};
use tessera_format::RepoId;
use zeroize::Zeroizing;

use crate::crypto::aead::{self, AeadKey, TAG_LEN};
use crate::crypto::secret::{Passphrase, SecretKey};
use crate::crypto::{CryptoError, RepoKeys};

/// Default Argon2id cost for new passphrase slots: 64 MiB, 3 passes, 1 lane (RFC 9106's
/// second recommended option, with one lane since the machines have two cores and the
/// backup itself runs next to it). Measured in SPEC.md §23.4.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    memory_kib: 64 * 1024,
    iterations: 3,
    parallelism: 1,
};

/// What the user presents to unlock (or to protect) a slot.
#[derive(Debug, Clone)]
pub enum SlotSecret {
    /// A passphrase.
    Passphrase(Passphrase),
    /// The 32 bytes of a key file.
    KeyFile(SecretKey),
    /// The 32 bytes of the recovery key.
    Recovery(SecretKey),
}

impl SlotSecret {
    /// The kind of slot this secret opens.
    pub fn kind(&self) -> SlotKind {
        match self {
            Self::Passphrase(_) => SlotKind::Passphrase,
            Self::KeyFile(_) => SlotKind::KeyFile,
            Self::Recovery(_) => SlotKind::Recovery,
        }
    }
}

/// Derives the key-encryption key of a slot.
fn kek(secret: &SlotSecret, kdf: KdfParams, salt: &[u8; 32]) -> Result<SecretKey, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    match secret {
        SlotSecret::Passphrase(pass) => {
            let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
                .map_err(|e| CryptoError::Library(format!("Argon2id parameters: {e}")))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(pass.expose(), salt, &mut out[..])
                .map_err(|e| CryptoError::Library(format!("Argon2id: {e}")))?;
        }
        SlotSecret::KeyFile(key) | SlotSecret::Recovery(key) => {
            let info: &[u8] = match secret {
                SlotSecret::KeyFile(_) => b"tessera key file slot",
                _ => b"tessera recovery slot",
            };
            Hkdf::<Sha256>::new(Some(salt), key.expose())
                .expand(info, &mut out[..])
                .map_err(|e| CryptoError::Library(format!("HKDF: {e}")))?;
        }
    }
    Ok(SecretKey::from_bytes(*out))
}

/// Wraps `keys` in a new slot of `repo_id` opened by `secret` (`kdf` is used for
/// passphrase slots only).
pub fn wrap(
    keys: &RepoKeys,
    repo_id: RepoId,
    secret: &SlotSecret,
    kdf: KdfParams,
    created_at_us: i64,
) -> Result<KeySlotFile, CryptoError> {
    let kind = secret.kind();
    let mut slot = KeySlotFile {
        repo_id,
        slot_id: rand::random(),
        kind,
        kdf: if kind == SlotKind::Passphrase {
            kdf
        } else {
            KdfParams::NONE
        },
        salt: rand::random(),
        created_at_us,
        nonce: aead::random_nonce(),
        wrapped: [0; WRAPPED_LEN],
    };
    let kek = kek(secret, slot.kdf, &slot.salt)?;
    let plain = keys.to_bytes();
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    AeadKey::new(&kek)?.seal_into(slot.nonce, &slot.associated_data(), &plain[..], &mut out)?;
    slot.wrapped = out
        .try_into()
        .map_err(|_| CryptoError::Library("wrapped keys have the wrong length".into()))?;
    Ok(slot)
}

/// Opens `slot` with `secret`: the repository keys, or [`CryptoError::WrongSecret`] when
/// the secret is not the one the slot was made with (or is for another kind of slot).
pub fn unwrap(slot: &KeySlotFile, secret: &SlotSecret) -> Result<RepoKeys, CryptoError> {
    if slot.kind != secret.kind() {
        return Err(CryptoError::WrongSecret);
    }
    let kek = kek(secret, slot.kdf, &slot.salt)?;
    let (ct, tag) = slot.wrapped.split_at(WRAPPED_LEN - TAG_LEN);
    let mut plain = Zeroizing::new([0u8; WRAPPED_LEN - TAG_LEN]);
    AeadKey::new(&kek)?
        .open_into(slot.nonce, &slot.associated_data(), ct, tag, &mut plain[..])
        .map_err(|e| match e {
            CryptoError::Authentication => CryptoError::WrongSecret,
            other => other,
        })?;
    Ok(RepoKeys::from_bytes(&plain))
}

#[cfg(test)]
mod tests {
    use super::{unwrap, wrap, SlotSecret};
    use crate::crypto::secret::{Passphrase, SecretKey};
    use crate::crypto::{CryptoError, RepoKeys};
    use tessera_format::keyslot::{KdfParams, KeySlotFile};
    use tessera_format::RepoId;

    /// The cheapest cost a stored passphrase slot may have.
    const CHEAP: KdfParams = KdfParams {
        memory_kib: tessera_format::keyslot::MIN_KDF_MEMORY_KIB,
        iterations: tessera_format::keyslot::MIN_KDF_ITERATIONS,
        parallelism: 1,
    };
    /// The cost of the reference vector (below the floor of stored slots).
    const KAT: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn pass(s: &str) -> SlotSecret {
        SlotSecret::Passphrase(Passphrase::new(s.into()))
    }

    #[test]
    fn each_kind_of_slot_opens_with_its_secret_only() {
        let keys = RepoKeys::generate();
        let file = SecretKey::random();
        let recovery = SecretKey::random();
        for secret in [
            pass("correct horse"),
            SlotSecret::KeyFile(file.clone()),
            SlotSecret::Recovery(recovery.clone()),
        ] {
            let slot = wrap(&keys, RepoId([1; 16]), &secret, CHEAP, 0).unwrap();
            let decoded = KeySlotFile::decode(&slot.encode().unwrap()).unwrap();
            assert_eq!(unwrap(&decoded, &secret).unwrap(), keys);
            for wrong in [
                pass("wrong horse"),
                SlotSecret::KeyFile(SecretKey::random()),
                SlotSecret::Recovery(SecretKey::random()),
            ] {
                assert_eq!(unwrap(&decoded, &wrong), Err(CryptoError::WrongSecret));
            }
        }
    }

    #[test]
    fn a_slot_moved_to_another_repository_or_weakened_does_not_open() {
        let keys = RepoKeys::generate();
        let secret = pass("pw");
        let slot = wrap(&keys, RepoId([1; 16]), &secret, CHEAP, 0).unwrap();
        let mut moved = slot.clone();
        moved.repo_id = RepoId([2; 16]);
        assert_eq!(unwrap(&moved, &secret), Err(CryptoError::WrongSecret));
        let mut weakened = slot.clone();
        weakened.kdf.memory_kib = 32;
        assert!(unwrap(&weakened, &secret).is_err());
    }

    /// Known answer for the Argon2id KEK: RFC 9106 §5.3 uses secret and associated data,
    /// which slots do not; this vector was computed with the reference `argon2` CLI
    /// (`echo -n password | argon2 somesaltsomesaltsomesaltsomesalt -id -m 6 -t 1 -p 1 -l 32 -r`).
    #[test]
    fn passphrase_kek_matches_reference_argon2id() {
        let kek = super::kek(&pass("password"), KAT, b"somesaltsomesaltsomesaltsomesalt").unwrap();
        assert_eq!(
            hex::encode(kek.expose()),
            include_str!("testdata/argon2id_password.hex")
        );
    }
}
