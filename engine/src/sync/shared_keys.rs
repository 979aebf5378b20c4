//! Which secret opens both sides of a copy between two repositories (sync, `repair
//! --from`; SPEC.md §23.7). Records move verbatim, so the sides must protect them alike:
//! both plain, or both encrypted under the same keys (equal key fingerprints, which `init
//! --keys-from` gives). That is decided from the two configs before any secret is asked
//! for or anything is opened. Encrypted sides are then unlocked once, with the secret
//! given, from whichever side's key slots it opens (the operator may hold the passphrase of
//! either: the two repositories' slots are their own), and both are opened with those keys.

use crate::crypto::keyring::{unlock_any, KnownKeys, NoSecret, SecretSource};
use crate::error::{Error, Result};
use crate::location::RepoLocation;

use super::transfer::different_keys;

/// How both sides of a copy are opened.
#[derive(Debug)]
pub enum SharedKeys {
    /// Both sides plain: no secret.
    Plain(NoSecret),
    /// Both sides encrypted under these keys.
    Encrypted(KnownKeys),
}

impl SharedKeys {
    /// What opens either side ([`crate::location::RepoLocation::open`]).
    pub fn source(&self) -> &dyn SecretSource {
        match self {
            Self::Plain(none) => none,
            Self::Encrypted(keys) => keys,
        }
    }
}

/// Decides how `src` and `dst` (repositories that exist) are opened for a copy from one to
/// the other, unlocking them with `secrets` when they are encrypted; refused (exit 5,
/// nothing opened or asked for) when only one is encrypted or their keys differ.
pub fn shared_keys(
    src: &RepoLocation,
    dst: &RepoLocation,
    secrets: &dyn SecretSource,
) -> Result<SharedKeys> {
    let (src_storage, dst_storage) = (src.storage()?, dst.storage()?);
    let (src_config, dst_config) = (src_storage.read_config()?, dst_storage.read_config()?);
    let (src_fingerprint, dst_fingerprint) = (
        src_config.encryption.fingerprint(),
        dst_config.encryption.fingerprint(),
    );
    let both_encrypted = check_pairing(
        &src.to_string(),
        src_fingerprint,
        &dst.to_string(),
        dst_fingerprint,
    )?;
    match (src_fingerprint, dst_fingerprint) {
        (Some(src_fp), Some(dst_fp)) if both_encrypted => {
            let keys = unlock_any(
                &[
                    (&*src_storage.backend, src_config.repo_id, src_fp),
                    (&*dst_storage.backend, dst_config.repo_id, dst_fp),
                ],
                secrets,
            )?;
            Ok(SharedKeys::Encrypted(KnownKeys(keys)))
        }
        _ => Ok(SharedKeys::Plain(NoSecret)),
    }
}

/// Whether records can move from `src` to `dst` given their key fingerprints (`None`:
/// plain): `Ok(false)` both plain, `Ok(true)` both encrypted under the same keys, refused
/// otherwise.
pub fn check_pairing(
    src: &str,
    src_fingerprint: Option<[u8; 16]>,
    dst: &str,
    dst_fingerprint: Option<[u8; 16]>,
) -> Result<bool> {
    match (src_fingerprint, dst_fingerprint) {
        (None, None) => Ok(false),
        (Some(theirs), Some(ours)) if theirs == ours => Ok(true),
        (Some(theirs), Some(ours)) => Err(different_keys(src, &theirs, dst, &ours)),
        (Some(_), None) => Err(Error::Refused {
            reason: format!(
                "{src} is encrypted and {dst} is not: records are copied as they are stored, so the destination must be encrypted under the same keys (make it with `tessera init DST --keys-from {src}`); nothing was copied"
            ),
        }),
        (None, Some(_)) => Err(Error::Refused {
            reason: format!(
                "{src} is not encrypted and {dst} is: copying a plain repository into an encrypted one would re-encrypt every record, which is not built yet (SPEC.md §23.8); nothing was copied"
            ),
        }),
    }
}
