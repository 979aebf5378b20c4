//! Key slots stored as repository objects `keys/<slot id>.key` (SPEC.md §23.4): listing,
//! unlocking, adding and removing them. These change slot objects only, never data: the
//! repository keys they wrap never change.
//!
//! Crash reasoning: a slot is put create-only under a fresh random id, so a crash leaves
//! either no new slot or a complete one; a removal deletes one object. Changing a
//! passphrase adds the new slot *before* removing the old one, so a crash in between leaves
//! both (either passphrase opens the repository), never neither.

use tessera_format::keyslot::{KdfParams, KeySlotFile, SlotKind};
use tessera_format::{Encryption, RepoConfig, RepoId};

use crate::crypto::slot::{unwrap, wrap, SlotSecret};
use crate::crypto::{CryptoError, RepoCrypto, RepoKeys, SecretKey};
use crate::error::{Error, Result};
use crate::storage::key::KEYS;
use crate::storage::{Backend, ObjectKey, PutMode};

/// Where the secret that unlocks an encrypted repository comes from. Asked only when the
/// repository is encrypted, so a plain repository never prompts for anything.
pub trait SecretSource {
    /// The secret for the repository at `location` (a path or URL, for a prompt).
    fn secret(&self, location: &str) -> Result<SlotSecret>;

    /// Told when the repository at `location` turned out to be plain, so no secret was
    /// asked for. A source the user gave explicitly may warn: a repository the user
    /// believes encrypted but whose config says plain may have had its config replaced.
    fn plain_repository(&self, _location: &str) {}
}

/// No secret: opens plain repositories; an encrypted one fails with [`Error::KeyRequired`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecret;

impl SecretSource for NoSecret {
    fn secret(&self, location: &str) -> Result<SlotSecret> {
        Err(Error::KeyRequired {
            location: location.to_string(),
        })
    }
}

/// A secret already in hand.
impl SecretSource for SlotSecret {
    fn secret(&self, _location: &str) -> Result<SlotSecret> {
        Ok(self.clone())
    }
}

/// The id scheme and record protection of the repository `config` describes: plain, or
/// encrypted under the keys `source`'s secret unlocks. The keys must have the fingerprint
/// the config records (a slot that opens other keys was planted: damage). A plain config
/// over a repository that holds key slots or sealed snapshot files is refused
/// ([`refuse_plain_downgrade`]). Writes nothing.
pub fn open_crypto(
    backend: &dyn Backend,
    config: &RepoConfig,
    source: &dyn SecretSource,
) -> Result<RepoCrypto> {
    let Encryption::Aes256Gcm { fingerprint } = config.encryption else {
        refuse_plain_downgrade(backend)?;
        source.plain_repository(&backend.describe());
        return Ok(RepoCrypto::plain());
    };
    let secret = source.secret(&backend.describe())?;
    let (keys, slot) = unlock(backend, config.repo_id, &secret)?;
    if keys.fingerprint() != fingerprint {
        return Err(Error::KeySlotDamaged {
            key: ObjectKey::key_slot(&slot.id).to_string(),
            reason: "it opens keys other than the ones the config names (fingerprint differs)"
                .into(),
        });
    }
    RepoCrypto::encrypted(&keys).map_err(|e| library(&e))
}

/// Refuses a plain config over an encrypted repository. The config is not authenticated:
/// whoever can write the repository could replace an encrypted repository's config with a
/// valid plain one, so that backups would be written in clear text and recovery would take
/// every sealed snapshot file for damage. A plain repository never has key slots, and never
/// a sealed (format 2) snapshot file, so either is proof of a replaced config. Only the
/// first snapshot file is looked at (its first 12 bytes), to keep opening cheap; recovery
/// checks every file it would quarantine ([`crate::recovery`]).
pub fn refuse_plain_downgrade(backend: &dyn Backend) -> Result<()> {
    let mismatch = |reason: String| Error::EncryptionMismatch {
        location: backend.describe(),
        reason,
    };
    let slots = backend
        .list(KEYS)?
        .iter()
        .filter(|k| k.as_key_slot().is_some())
        .count();
    if slots > 0 {
        return Err(mismatch(format!(
            "the config says the repository is not encrypted, yet it holds {slots} key slot(s) in keys/"
        )));
    }
    let first = backend
        .list(crate::storage::key::SNAPSHOTS)?
        .iter()
        .find_map(ObjectKey::as_snapshot);
    if let Some(id) = first {
        if is_sealed_snapshot(backend, id)? {
            return Err(mismatch(format!(
                "the config says the repository is not encrypted, yet snapshot file {id} is sealed (format 2)"
            )));
        }
    }
    Ok(())
}

/// Whether the stored snapshot file `id` is a sealed (format 2) one, by its first 12 bytes.
/// A file too short to tell, or gone, is not.
pub fn is_sealed_snapshot(backend: &dyn Backend, id: tessera_format::SnapshotId) -> Result<bool> {
    let key = ObjectKey::snapshot(id);
    let Some(size) = backend.size(&key)? else {
        return Ok(false);
    };
    if size < 12 {
        return Ok(false);
    }
    let head = backend.get_range(&key, 0, 12)?;
    Ok(matches!(
        tessera_format::snapshot_sealed::snapshot_format(&head),
        Ok(tessera_format::config::ENCRYPTED_FORMAT)
    ))
}

/// One stored slot, as `key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot id (names the object).
    pub id: [u8; 16],
    /// What opens it.
    pub kind: SlotKind,
    /// Argon2id cost (passphrase slots).
    pub kdf: KdfParams,
    /// Creation time, Unix microseconds.
    pub created_at_us: i64,
}

impl SlotInfo {
    fn of(slot: &KeySlotFile) -> Self {
        Self {
            id: slot.slot_id,
            kind: slot.kind,
            kdf: slot.kdf,
            created_at_us: slot.created_at_us,
        }
    }

    /// The slot id in hex, as commands name it.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

fn what(kind: SlotKind) -> &'static str {
    match kind {
        SlotKind::Passphrase => "passphrase",
        SlotKind::KeyFile => "key file",
        SlotKind::Recovery => "recovery key",
    }
}

fn library(e: &CryptoError) -> Error {
    Error::Internal(format!("key slot cryptography: {e}"))
}

/// Every slot of the repository `repo_id`, in slot-id order. A slot that does not decode,
/// or names another repository, is damage.
pub fn load_slots(backend: &dyn Backend, repo_id: RepoId) -> Result<Vec<KeySlotFile>> {
    let mut slots = Vec::new();
    for key in backend.list(KEYS)? {
        let Some(id) = key.as_key_slot() else {
            continue;
        };
        let damaged = |reason: String| Error::KeySlotDamaged {
            key: key.to_string(),
            reason,
        };
        let bytes = backend.get(&key)?;
        let slot = KeySlotFile::decode(&bytes).map_err(|e| damaged(e.to_string()))?;
        if slot.slot_id != id || slot.repo_id != repo_id {
            return Err(damaged(
                "it names another slot or another repository".into(),
            ));
        }
        slots.push(slot);
    }
    Ok(slots)
}

/// The slots, for listing.
pub fn list(backend: &dyn Backend, repo_id: RepoId) -> Result<Vec<SlotInfo>> {
    Ok(load_slots(backend, repo_id)?
        .iter()
        .map(SlotInfo::of)
        .collect())
}

/// Opens the repository keys with `secret`, trying each slot of its kind (each passphrase
/// slot costs one Argon2id run). Returns the keys and the slot that opened. Writes nothing.
pub fn unlock(
    backend: &dyn Backend,
    repo_id: RepoId,
    secret: &SlotSecret,
) -> Result<(RepoKeys, SlotInfo)> {
    let slots = load_slots(backend, repo_id)?;
    let kind = secret.kind();
    let candidates: Vec<&KeySlotFile> = slots.iter().filter(|s| s.kind == kind).collect();
    if candidates.is_empty() {
        let mut kinds: Vec<&str> = slots.iter().map(|s| what(s.kind)).collect();
        kinds.dedup();
        return Err(Error::NoSuchSlot {
            what: what(kind),
            available: if kinds.is_empty() {
                "nothing (the repository has no key slots)".into()
            } else {
                kinds.join(", ")
            },
        });
    }
    for slot in &candidates {
        match unwrap(slot, secret) {
            Ok(keys) => return Ok((keys, SlotInfo::of(slot))),
            Err(CryptoError::WrongSecret) => {}
            Err(e) => return Err(library(&e)),
        }
    }
    Err(Error::WrongSecret {
        what: what(kind),
        tried: candidates.len(),
    })
}

/// Adds a slot wrapping `keys` that `secret` opens.
pub fn add(
    backend: &dyn Backend,
    repo_id: RepoId,
    keys: &RepoKeys,
    secret: &SlotSecret,
    kdf: KdfParams,
) -> Result<SlotInfo> {
    let slot = wrap(keys, repo_id, secret, kdf, crate::time::now_us()).map_err(|e| library(&e))?;
    let bytes = slot.encode().map_err(|source| Error::Unencodable {
        what: "key slot".into(),
        source,
    })?;
    backend.put_bytes(&ObjectKey::key_slot(&slot.slot_id), PutMode::Create, &bytes)?;
    Ok(SlotInfo::of(&slot))
}

/// Creates the keys of a new repository (or adopts `shared`, the keys of another
/// repository for `init --keys-from`), a first slot that `secret` opens and a recovery
/// slot. Returns the keys and the recovery key, which the caller shows once and forgets.
pub fn create(
    backend: &dyn Backend,
    repo_id: RepoId,
    shared: Option<RepoKeys>,
    secret: &SlotSecret,
    kdf: KdfParams,
) -> Result<(RepoKeys, SecretKey)> {
    let keys = shared.unwrap_or_else(RepoKeys::generate);
    let recovery = SecretKey::random();
    add(backend, repo_id, &keys, secret, kdf)?;
    add(
        backend,
        repo_id,
        &keys,
        &SlotSecret::Recovery(recovery.clone()),
        kdf,
    )?;
    Ok((keys, recovery))
}

/// Removes slot `id`. Refuses to remove the last slot that is not a recovery slot (the
/// recovery key is kept for emergencies, not for daily use).
pub fn remove(backend: &dyn Backend, repo_id: RepoId, id: &[u8; 16]) -> Result<()> {
    let slots = load_slots(backend, repo_id)?;
    let Some(target) = slots.iter().find(|s| &s.slot_id == id) else {
        return Err(Error::InvalidArgument(format!(
            "the repository has no key slot {}",
            hex::encode(id)
        )));
    };
    let daily = |s: &&KeySlotFile| s.kind != SlotKind::Recovery;
    if daily(&target) && slots.iter().filter(daily).count() == 1 {
        return Err(Error::LastKeySlot {
            slot: hex::encode(id),
        });
    }
    backend.delete(&ObjectKey::key_slot(id))
}

#[cfg(test)]
mod tests {
    use super::{add, create, list, remove, unlock};
    use crate::crypto::secret::{Passphrase, SecretKey};
    use crate::crypto::slot::SlotSecret;
    use crate::crypto::RepoKeys;
    use crate::error::{Error, ErrorKind};
    use crate::storage::local::LocalBackend;
    use crate::storage::{Backend, ObjectKey};
    use tessera_format::keyslot::{KdfParams, SlotKind};
    use tessera_format::RepoId;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    const REPO: RepoId = RepoId([3; 16]);

    fn pass(s: &str) -> SlotSecret {
        SlotSecret::Passphrase(Passphrase::new(s.into()))
    }

    #[test]
    fn slots_unlock_change_and_refuse_the_last_removal() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let (keys, recovery) = create(&backend, REPO, None, &pass("old"), CHEAP).unwrap();
        let first = list(&backend, REPO)
            .unwrap()
            .into_iter()
            .find(|s| s.kind == SlotKind::Passphrase)
            .unwrap();
        assert_eq!(unlock(&backend, REPO, &pass("old")).unwrap().0, keys);
        let wrong = unlock(&backend, REPO, &pass("bad")).unwrap_err();
        assert!(
            matches!(wrong, Error::WrongSecret { tried: 1, .. }),
            "{wrong}"
        );
        assert_eq!(wrong.kind(), ErrorKind::Key);
        let none = unlock(&backend, REPO, &SlotSecret::KeyFile(SecretKey::random())).unwrap_err();
        assert_eq!(none.kind(), ErrorKind::Usage, "{none}");
        // The last daily slot cannot go; change-passphrase is add then remove.
        assert_eq!(
            remove(&backend, REPO, &first.id).unwrap_err().kind(),
            ErrorKind::Refused
        );
        add(&backend, REPO, &keys, &pass("new"), CHEAP).unwrap();
        remove(&backend, REPO, &first.id).unwrap();
        assert!(unlock(&backend, REPO, &pass("old")).is_err());
        assert_eq!(unlock(&backend, REPO, &pass("new")).unwrap().0, keys);
        assert_eq!(
            unlock(&backend, REPO, &SlotSecret::Recovery(recovery))
                .unwrap()
                .0,
            keys
        );
        let kinds: Vec<SlotKind> = list(&backend, REPO)
            .unwrap()
            .iter()
            .map(|s| s.kind)
            .collect();
        assert_eq!(kinds.len(), 2);
        assert!(kinds.contains(&SlotKind::Recovery) && kinds.contains(&SlotKind::Passphrase));
    }

    #[test]
    fn a_damaged_or_foreign_slot_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let keys = RepoKeys::generate();
        let info = add(&backend, REPO, &keys, &pass("pw"), CHEAP).unwrap();
        let key = ObjectKey::key_slot(&info.id);
        let mut bytes = backend.get(&key).unwrap();
        bytes[150] ^= 1;
        std::fs::write(dir.path().join(key.as_str()), &bytes).unwrap();
        assert_eq!(
            unlock(&backend, REPO, &pass("pw")).unwrap_err().kind(),
            ErrorKind::Damage
        );
        assert_eq!(
            unlock(&backend, RepoId([4; 16]), &pass("pw"))
                .unwrap_err()
                .kind(),
            ErrorKind::Damage
        );
    }
}
