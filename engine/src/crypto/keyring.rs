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

    /// Told when unlocking skipped the slot object `key` for `reason` (damaged, foreign, or
    /// opening other keys); never told anything secret. The CLI warns on stderr.
    fn skipped_slot(&self, _key: &str, _reason: &str) {}

    /// Keys already unlocked (from another repository that shares them, `init
    /// --keys-from`): a repository whose config names their fingerprint opens with them, no
    /// slot tried and no secret asked for.
    fn known_keys(&self) -> Option<&RepoKeys> {
        None
    }
}

/// Keys in hand ([`SecretSource::known_keys`]): opens the repositories whose config names
/// their fingerprint, and no other (asking for a secret fails with [`Error::KeyRequired`]).
#[derive(Debug, Clone)]
pub struct KnownKeys(pub RepoKeys);

impl SecretSource for KnownKeys {
    fn secret(&self, location: &str) -> Result<SlotSecret> {
        Err(Error::KeyRequired {
            location: location.to_string(),
        })
    }

    fn known_keys(&self) -> Option<&RepoKeys> {
        Some(&self.0)
    }
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
    if let Some(keys) = source
        .known_keys()
        .filter(|k| k.fingerprint() == fingerprint)
    {
        return RepoCrypto::encrypted(keys).map_err(|e| library(&e));
    }
    let secret = source.secret(&backend.describe())?;
    let (keys, _) = unlock(backend, config.repo_id, fingerprint, &secret, source)?;
    RepoCrypto::encrypted(&keys).map_err(|e| library(&e))
}

/// The keys that `source`'s secret (asked once) unlocks in the first of `repositories`
/// whose slots it opens. Each is given as its slot storage, repository id (slots are bound
/// to it) and key fingerprint: repositories sharing keys, or a seed bundle carrying a
/// repository's slots. For commands that read one and write another (sync, seed import,
/// `repair --from`), where the operator may hold the secret of either. When none opens,
/// the first error is returned, except that damage to a slot wins over a wrong secret (as
/// in [`unlock`]).
pub fn unlock_any(
    repositories: &[(&dyn Backend, RepoId, [u8; 16])],
    source: &dyn SecretSource,
) -> Result<RepoKeys> {
    let mut first_error: Option<Error> = None;
    let mut secret = None;
    for (backend, repo_id, fingerprint) in repositories {
        if let Some(keys) = source
            .known_keys()
            .filter(|k| k.fingerprint() == *fingerprint)
        {
            return Ok(keys.clone());
        }
        let secret = match &secret {
            Some(s) => s,
            None => secret.insert(source.secret(&backend.describe())?),
        };
        match unlock(*backend, *repo_id, *fingerprint, secret, source) {
            Ok((keys, _)) => return Ok(keys),
            Err(e) => {
                let damage = matches!(e, Error::KeySlotDamaged { .. });
                let first_is_damage = matches!(first_error, Some(Error::KeySlotDamaged { .. }));
                if first_error.is_none() || damage && !first_is_damage {
                    first_error = Some(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| Error::Internal("unlocking no repository".into())))
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
    pub(crate) fn of(slot: &KeySlotFile) -> Self {
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

/// Most slots of the presented kind one unlock tries (each passphrase slot costs one
/// Argon2id run, at most [`tessera_format::keyslot::MAX_KDF_MEMORY_KIB`] and
/// [`tessera_format::keyslot::MAX_KDF_ITERATIONS`]), so planted slots bound the time an
/// unlock takes.
pub const MAX_SLOTS_TRIED: usize = 16;

/// A slot object that cannot be used: it does not decode, or names another slot or
/// repository. Skipped when unlocking; `key list` shows it and `key remove` removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSlot {
    /// Slot id, from the object's name.
    pub id: [u8; 16],
    /// Why it cannot be used.
    pub reason: String,
}

impl DamagedSlot {
    /// The object key, as warnings name it.
    pub fn key(&self) -> String {
        ObjectKey::key_slot(&self.id).to_string()
    }
}

/// The slot objects of a repository: those that decode and belong to it, in slot-id
/// order, and the others.
#[derive(Debug, Default)]
pub struct StoredSlots {
    /// Sound slots.
    pub sound: Vec<KeySlotFile>,
    /// Slot objects that cannot be used.
    pub damaged: Vec<DamagedSlot>,
}

/// Every slot object of the repository `repo_id`. One that does not decode, or names
/// another slot or repository, is set aside in [`StoredSlots::damaged`] (one bad slot must
/// not lock the owner out, nor be impossible to remove).
pub fn load_slots(backend: &dyn Backend, repo_id: RepoId) -> Result<StoredSlots> {
    let mut slots = StoredSlots::default();
    for key in backend.list(KEYS)? {
        let Some(id) = key.as_key_slot() else {
            continue;
        };
        let bytes = backend.get(&key)?;
        match KeySlotFile::decode(&bytes) {
            Ok(slot) if slot.slot_id == id && slot.repo_id == repo_id => slots.sound.push(slot),
            Ok(_) => slots.damaged.push(DamagedSlot {
                id,
                reason: "it names another slot or another repository".into(),
            }),
            Err(e) => slots.damaged.push(DamagedSlot {
                id,
                reason: e.to_string(),
            }),
        }
    }
    Ok(slots)
}

/// The sound slots, for listing.
pub fn list(backend: &dyn Backend, repo_id: RepoId) -> Result<Vec<SlotInfo>> {
    Ok(load_slots(backend, repo_id)?
        .sound
        .iter()
        .map(SlotInfo::of)
        .collect())
}

/// Opens the repository keys with `secret`, trying each sound slot of its kind (at most
/// [`MAX_SLOTS_TRIED`]; each passphrase slot costs one Argon2id run) until one opens keys
/// with the config's `fingerprint`. Returns the keys and the slot that opened them. Writes
/// nothing.
///
/// A slot that opens other keys (planted by someone who can write the repository, under a
/// passphrase they guessed), a slot that does not decode or belongs elsewhere, and one
/// whose key derivation fails are skipped, each told to `source`
/// ([`SecretSource::skipped_slot`]), so that neither blocks the real slot. A slot that
/// opens other keys counts as a wrong secret in the final answer: otherwise the exit code
/// would tell the planter whether the guess was right. When no slot opens, the error is
/// damage if a skipped slot was unusable (the right slot may be among them), else a wrong
/// secret.
pub fn unlock(
    backend: &dyn Backend,
    repo_id: RepoId,
    fingerprint: [u8; 16],
    secret: &SlotSecret,
    source: &dyn SecretSource,
) -> Result<(RepoKeys, SlotInfo)> {
    let slots = load_slots(backend, repo_id)?;
    for bad in &slots.damaged {
        source.skipped_slot(&bad.key(), &bad.reason);
    }
    let kind = secret.kind();
    let candidates: Vec<&KeySlotFile> = slots.sound.iter().filter(|s| s.kind == kind).collect();
    if candidates.is_empty() {
        if !slots.damaged.is_empty() {
            return Err(unusable(&slots.damaged));
        }
        let mut kinds: Vec<&str> = slots.sound.iter().map(|s| what(s.kind)).collect();
        kinds.sort_unstable();
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
    let mut failed = slots.damaged.clone();
    for slot in candidates.iter().take(MAX_SLOTS_TRIED) {
        match unwrap(slot, secret) {
            Ok(keys) if keys.fingerprint() == fingerprint => {
                return Ok((keys, SlotInfo::of(slot)));
            }
            Ok(_) => source.skipped_slot(
                &ObjectKey::key_slot(&slot.slot_id).to_string(),
                "it opens keys other than the ones the config names (planted?)",
            ),
            Err(CryptoError::WrongSecret) => {}
            Err(e) => {
                let bad = DamagedSlot {
                    id: slot.slot_id,
                    reason: e.to_string(),
                };
                source.skipped_slot(&bad.key(), &bad.reason);
                failed.push(bad);
            }
        }
    }
    if !failed.is_empty() {
        return Err(unusable(&failed));
    }
    let untried = candidates.len().saturating_sub(MAX_SLOTS_TRIED);
    Err(Error::WrongSecret {
        what: what(kind),
        tried: candidates.len().min(MAX_SLOTS_TRIED),
        untried,
    })
}

/// No slot opened and some could not be used: damage naming the first.
fn unusable(damaged: &[DamagedSlot]) -> Error {
    let first = &damaged[0];
    Error::KeySlotDamaged {
        key: first.key(),
        reason: format!(
            "{}; no other slot opened with the secret given ({} slot(s) unusable)",
            first.reason,
            damaged.len()
        ),
    }
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

/// Removes slot `id`, sound or damaged. Refuses to remove the last sound slot that is not a
/// recovery slot (the recovery key is kept for emergencies, not for daily use).
pub fn remove(backend: &dyn Backend, repo_id: RepoId, id: &[u8; 16]) -> Result<()> {
    let slots = load_slots(backend, repo_id)?;
    let daily = |s: &&KeySlotFile| s.kind != SlotKind::Recovery;
    match slots.sound.iter().find(|s| &s.slot_id == id) {
        Some(target) if daily(&target) && slots.sound.iter().filter(daily).count() == 1 => {
            return Err(Error::LastKeySlot {
                slot: hex::encode(id),
            });
        }
        Some(_) => {}
        None if slots.damaged.iter().any(|d| &d.id == id) => {}
        None => {
            return Err(Error::InvalidArgument(format!(
                "the repository has no key slot {}",
                hex::encode(id)
            )))
        }
    }
    backend.delete(&ObjectKey::key_slot(id))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::{
        add, create, list, load_slots, remove, unlock, NoSecret, SecretSource, MAX_SLOTS_TRIED,
    };
    use crate::crypto::secret::{Passphrase, SecretKey};
    use crate::crypto::slot::{wrap, SlotSecret};
    use crate::crypto::RepoKeys;
    use crate::error::{Error, ErrorKind, Result};
    use crate::storage::local::LocalBackend;
    use crate::storage::{Backend, ObjectKey, PutMode};
    use tessera_format::keyslot::{KdfParams, SlotKind, MIN_KDF_ITERATIONS, MIN_KDF_MEMORY_KIB};
    use tessera_format::RepoId;

    /// The cheapest cost a stored passphrase slot may have.
    const CHEAP: KdfParams = KdfParams {
        memory_kib: MIN_KDF_MEMORY_KIB,
        iterations: MIN_KDF_ITERATIONS,
        parallelism: 1,
    };
    const REPO: RepoId = RepoId([3; 16]);

    fn pass(s: &str) -> SlotSecret {
        SlotSecret::Passphrase(Passphrase::new(s.into()))
    }

    /// Records the slots unlocking skipped.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl SecretSource for Recorder {
        fn secret(&self, location: &str) -> Result<SlotSecret> {
            NoSecret.secret(location)
        }
        fn skipped_slot(&self, key: &str, reason: &str) {
            self.0.borrow_mut().push(format!("{key}: {reason}"));
        }
    }

    fn open(backend: &LocalBackend, keys: &RepoKeys, secret: &SlotSecret) -> Result<RepoKeys> {
        unlock(backend, REPO, keys.fingerprint(), secret, &NoSecret).map(|(k, _)| k)
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
        assert_eq!(open(&backend, &keys, &pass("old")).unwrap(), keys);
        let wrong = open(&backend, &keys, &pass("bad")).unwrap_err();
        assert!(
            matches!(wrong, Error::WrongSecret { tried: 1, .. }),
            "{wrong}"
        );
        assert_eq!(wrong.kind(), ErrorKind::Key);
        let none = open(&backend, &keys, &SlotSecret::KeyFile(SecretKey::random())).unwrap_err();
        // No slot of that kind: the secret opens nothing (exit 6), like a wrong one.
        assert!(matches!(none, Error::NoSuchSlot { .. }), "{none}");
        assert_eq!(none.kind(), ErrorKind::Key, "{none}");
        // The last daily slot cannot go; change-passphrase is add then remove.
        assert_eq!(
            remove(&backend, REPO, &first.id).unwrap_err().kind(),
            ErrorKind::Refused
        );
        add(&backend, REPO, &keys, &pass("new"), CHEAP).unwrap();
        remove(&backend, REPO, &first.id).unwrap();
        assert!(open(&backend, &keys, &pass("old")).is_err());
        assert_eq!(open(&backend, &keys, &pass("new")).unwrap(), keys);
        assert_eq!(
            open(&backend, &keys, &SlotSecret::Recovery(recovery)).unwrap(),
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

    /// A slot someone planted under the right passphrase (guessed) wrapping other keys is
    /// skipped with a warning, and the real slot still opens, whichever is tried first; a
    /// wrong passphrase is a wrong secret (exit 6) whether or not it opens the planted slot,
    /// so the exit code tells the planter nothing about the guess.
    #[test]
    fn a_planted_slot_under_the_right_passphrase_does_not_stop_the_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let keys = RepoKeys::generate();
        let real = add(&backend, REPO, &keys, &pass("pw"), CHEAP).unwrap();
        let foreign = RepoKeys::generate();
        // Planted slots sorting before the real one, so that they are tried first.
        for guess in ["pw", "other"] {
            let planted = loop {
                let slot = wrap(&foreign, REPO, &pass(guess), CHEAP, 0).unwrap();
                if slot.slot_id < real.id {
                    break slot;
                }
            };
            backend
                .put_bytes(
                    &ObjectKey::key_slot(&planted.slot_id),
                    PutMode::Create,
                    &planted.encode().unwrap(),
                )
                .unwrap();
        }
        let seen = Recorder::default();
        let (opened, info) =
            unlock(&backend, REPO, keys.fingerprint(), &pass("pw"), &seen).unwrap();
        assert_eq!(opened, keys);
        assert_eq!(info.id, real.id);
        let warnings = seen.0.borrow();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("other than the ones the config names"));
        assert!(!warnings[0].contains("pw"));
        for guess in ["other", "neither"] {
            let err = open(&backend, &keys, &pass(guess)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Key, "{guess}: {err}");
        }
    }

    /// At most [`MAX_SLOTS_TRIED`] slots are tried per unlock (each may cost an Argon2id
    /// run); the error says how many were left.
    #[test]
    fn at_most_sixteen_slots_are_tried() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let keys = RepoKeys::generate();
        for _ in 0..=MAX_SLOTS_TRIED {
            let file = SlotSecret::KeyFile(SecretKey::random());
            add(&backend, REPO, &keys, &file, KdfParams::NONE).unwrap();
        }
        let err = open(&backend, &keys, &SlotSecret::KeyFile(SecretKey::random())).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongSecret {
                    tried: MAX_SLOTS_TRIED,
                    untried: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("1 more were not tried"), "{err}");
    }

    /// A damaged or foreign slot object is skipped with a warning (the others still open)
    /// and removable by id; only when no slot opens is it damage.
    #[test]
    fn a_damaged_or_foreign_slot_is_skipped_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let keys = RepoKeys::generate();
        let info = add(&backend, REPO, &keys, &pass("pw"), CHEAP).unwrap();
        let key = ObjectKey::key_slot(&info.id);
        let mut bytes = backend.get(&key).unwrap();
        bytes[150] ^= 1;
        std::fs::write(dir.path().join(key.as_str()), &bytes).unwrap();
        // The only slot is damaged: damage, for every secret.
        assert_eq!(
            open(&backend, &keys, &pass("pw")).unwrap_err().kind(),
            ErrorKind::Damage
        );
        // Another repository's slot, copied in: foreign.
        let other = tempfile::tempdir().unwrap();
        let other_backend = LocalBackend::new(other.path());
        let stranger = add(&other_backend, RepoId([4; 16]), &keys, &pass("pw"), CHEAP).unwrap();
        let stranger_key = ObjectKey::key_slot(&stranger.id);
        backend
            .put_bytes(
                &stranger_key,
                PutMode::Create,
                &other_backend.get(&stranger_key).unwrap(),
            )
            .unwrap();
        // A sound slot beside them opens; both bad ones are told.
        let good = add(&backend, REPO, &keys, &pass("pw2"), CHEAP).unwrap();
        let seen = Recorder::default();
        let (opened, _) = unlock(&backend, REPO, keys.fingerprint(), &pass("pw2"), &seen).unwrap();
        assert_eq!(opened, keys);
        assert_eq!(seen.0.borrow().len(), 2, "{:?}", seen.0.borrow());
        let stored = load_slots(&backend, REPO).unwrap();
        assert_eq!(stored.sound.len(), 1);
        assert_eq!(stored.damaged.len(), 2);
        // Damaged slots are removed by id; the last sound daily slot still cannot go.
        remove(&backend, REPO, &info.id).unwrap();
        remove(&backend, REPO, &stranger.id).unwrap();
        assert!(load_slots(&backend, REPO).unwrap().damaged.is_empty());
        assert_eq!(
            remove(&backend, REPO, &good.id).unwrap_err().kind(),
            ErrorKind::Refused
        );
    }
}
