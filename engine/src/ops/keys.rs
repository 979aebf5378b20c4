//! `tessera key …`: the key slots of an encrypted repository (SPEC.md §23.4). Slots are
//! objects of their own: adding, removing or replacing one rewrites no data, and the
//! repository keys they wrap never change.
//!
//! Every change unlocks the repository first (the caller proves it holds a secret) and
//! needs no writer lock: a slot is put create-only under a fresh random id, and a removal
//! deletes one object, so slot changes cannot conflict with a backup. Changes hold the
//! key-slot lock (`REPO/keys.lock`, [`WriterLock::acquire_keys`]) from before reading the
//! slots until done, so that two concurrent commands cannot each pass the "not the last
//! everyday slot" check and together remove every everyday slot. Crash reasoning: a
//! replacement (change-passphrase, a new recovery key) adds the new slot *before* removing
//! the old one, so a crash in between leaves both, never neither.

use serde::Serialize;
use tessera_format::keyslot::{KdfParams, SlotKind};
use tessera_format::RepoConfig;

use crate::crypto::keyring::{self, DamagedSlot, SecretSource, SlotInfo};
use crate::crypto::{RepoKeys, SecretKey, SlotSecret};
use crate::error::{Error, Result};
use crate::location::RepoLocation;
use crate::lock::WriterLock;
use crate::repo::RepoStorage;

/// One slot as `key list` shows it (nothing secret).
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    /// Slot id (hex), as `key remove` takes it.
    pub id: String,
    /// `passphrase`, `key-file` or `recovery`.
    pub kind: &'static str,
    /// Argon2id memory, KiB (passphrase slots).
    pub kdf_memory_kib: u32,
    /// Argon2id passes (passphrase slots).
    pub kdf_iterations: u32,
    /// When it was added (RFC 3339).
    pub created: String,
}

impl From<&DamagedSlot> for DamagedSlotView {
    fn from(d: &DamagedSlot) -> Self {
        Self {
            id: hex::encode(d.id),
            reason: d.reason.clone(),
        }
    }
}

impl From<&SlotInfo> for SlotView {
    fn from(s: &SlotInfo) -> Self {
        Self {
            id: s.id_hex(),
            kind: s.kind.as_str(),
            kdf_memory_kib: s.kdf.memory_kib,
            kdf_iterations: s.kdf.iterations,
            created: crate::time::format_us(s.created_at_us),
        }
    }
}

/// A slot object that cannot be used (it does not decode or belongs elsewhere).
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSlotView {
    /// Slot id (hex, from the object's name), as `key remove` takes it.
    pub id: String,
    /// Why it cannot be used.
    pub reason: String,
}

/// What a `key` command did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyReport {
    /// Slots added.
    pub added: Vec<SlotView>,
    /// Slots removed.
    pub removed: Vec<SlotView>,
    /// Damaged slot objects removed (by id).
    pub removed_damaged: Vec<DamagedSlotView>,
    /// The slots now (for `key list`, and after every change).
    pub slots: Vec<SlotView>,
    /// Slot objects that cannot be used, now (unlocking skips them; `key remove` removes
    /// them).
    pub damaged: Vec<DamagedSlotView>,
}

/// The repository at `location` (a directory or `s3://BUCKET/PREFIX`), which must be
/// encrypted.
fn encrypted(location: &RepoLocation) -> Result<(RepoStorage, RepoConfig)> {
    let storage = location.storage()?;
    let config = storage.read_config()?;
    if !config.encryption.is_encrypted() {
        keyring::refuse_plain_downgrade(&*storage.backend)?;
        return Err(Error::Usage(format!(
            "{location} is not encrypted (format {}): it has no key slots",
            config.format_version
        )));
    }
    Ok((storage, config))
}

/// The keys of the encrypted repository at `location`, or of the encrypted repository a
/// seed bundle at `location` was exported from (it carries the repository's key slots),
/// unlocked with `source` (`init --keys-from`: a new repository that shares them exchanges
/// records with that one).
pub fn keys_of(location: &RepoLocation, source: &dyn SecretSource) -> Result<RepoKeys> {
    // A directory with a manifest and no config is a seed bundle; a repository's config
    // wins (a manifest planted in a repository does not replace its own slots and config).
    if let Some(bundle) = location.local_path().filter(|dir| {
        dir.join(crate::sync::bundle_manifest::MANIFEST_NAME)
            .is_file()
            && !dir.join("config").exists()
    }) {
        return crate::sync::bundle::bundle_keys(bundle, source);
    }
    let (storage, config) = encrypted(location)?;
    let fingerprint = config
        .encryption
        .fingerprint()
        .ok_or_else(|| Error::Internal("unlocking a plain repository".into()))?;
    keyring::unlock_any(&[(&*storage.backend, config.repo_id, fingerprint)], source)
}

/// Unlocks the repository's keys with `source`; the slot that opened them.
fn unlock(
    storage: &RepoStorage,
    config: &RepoConfig,
    source: &dyn SecretSource,
) -> Result<(RepoKeys, SlotInfo)> {
    let fingerprint = config
        .encryption
        .fingerprint()
        .ok_or_else(|| Error::Internal("unlocking a plain repository".into()))?;
    let secret = source.secret(&storage.backend.describe())?;
    keyring::unlock(
        &*storage.backend,
        config.repo_id,
        fingerprint,
        &secret,
        source,
    )
}

fn finish(storage: &RepoStorage, config: &RepoConfig, mut report: KeyReport) -> Result<KeyReport> {
    let stored = keyring::load_slots(&*storage.backend, config.repo_id)?;
    report.slots = stored
        .sound
        .iter()
        .map(|s| SlotView::from(&SlotInfo::of(s)))
        .collect();
    report.damaged = stored.damaged.iter().map(DamagedSlotView::from).collect();
    Ok(report)
}

/// `key list`: the slots (needs no secret: kinds, costs and times are not secret).
pub fn list(location: &RepoLocation) -> Result<KeyReport> {
    let (storage, config) = encrypted(location)?;
    finish(&storage, &config, KeyReport::default())
}

/// Where a new slot's secret comes from: asked only after the repository was unlocked, so
/// a wrong secret neither prompts for a new one nor creates a new key file.
pub type NewSecret<'a> = &'a mut dyn FnMut() -> Result<SlotSecret>;

/// `key add`: a slot that the secret `new` gives opens, after unlocking with `source`.
pub fn add(
    location: &RepoLocation,
    source: &dyn SecretSource,
    new: NewSecret<'_>,
    kdf: KdfParams,
) -> Result<KeyReport> {
    let (storage, config) = encrypted(location)?;
    let _slots = WriterLock::acquire_keys(&storage.local_dir)?;
    let (keys, _) = unlock(&storage, &config, source)?;
    let new = new()?;
    refuse_empty(&new)?;
    let added = keyring::add(&*storage.backend, config.repo_id, &keys, &new, kdf)?;
    finish(
        &storage,
        &config,
        KeyReport {
            added: vec![SlotView::from(&added)],
            ..KeyReport::default()
        },
    )
}

/// `key remove`: the slot whose id starts with `prefix` (refused for the last sound slot
/// that is not a recovery slot), after unlocking with `source`. A damaged slot object
/// (see [`KeyReport::damaged`]) is removed by its id the same way.
pub fn remove(
    location: &RepoLocation,
    source: &dyn SecretSource,
    prefix: &str,
) -> Result<KeyReport> {
    let (storage, config) = encrypted(location)?;
    let _slots = WriterLock::acquire_keys(&storage.local_dir)?;
    unlock(&storage, &config, source)?;
    let stored = keyring::load_slots(&*storage.backend, config.repo_id)?;
    let prefix = prefix.to_ascii_lowercase();
    let sound: Vec<SlotInfo> = stored.sound.iter().map(SlotInfo::of).collect();
    let ids = sound
        .iter()
        .map(|s| s.id)
        .chain(stored.damaged.iter().map(|d| d.id));
    let matching: Vec<[u8; 16]> = ids
        .filter(|id| !prefix.is_empty() && hex::encode(id).starts_with(&prefix))
        .collect();
    let target = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::Usage(format!(
                "no key slot id starts with {prefix:?} (see `tessera key list`)"
            )))
        }
        more => {
            return Err(Error::Usage(format!(
                "{} key slots start with {prefix:?}; give more digits",
                more.len()
            )))
        }
    };
    keyring::remove(&*storage.backend, config.repo_id, &target)?;
    let mut report = KeyReport::default();
    if let Some(slot) = sound.iter().find(|s| s.id == target) {
        report.removed.push(SlotView::from(slot));
    }
    if let Some(bad) = stored.damaged.iter().find(|d| d.id == target) {
        report.removed_damaged.push(DamagedSlotView::from(bad));
    }
    finish(&storage, &config, report)
}

/// `key change-passphrase`: a new passphrase slot, then the passphrase slot that `source`
/// opened is removed.
pub fn change_passphrase(
    location: &RepoLocation,
    source: &dyn SecretSource,
    new: NewSecret<'_>,
    kdf: KdfParams,
) -> Result<KeyReport> {
    let (storage, config) = encrypted(location)?;
    let _slots = WriterLock::acquire_keys(&storage.local_dir)?;
    let (keys, opened) = unlock(&storage, &config, source)?;
    if opened.kind != SlotKind::Passphrase {
        return Err(Error::Usage(
            "unlock with the passphrase to change (or use `key add` and `key remove`)".into(),
        ));
    }
    let new = new()?;
    if new.kind() != SlotKind::Passphrase {
        return Err(Error::Usage("the new secret must be a passphrase".into()));
    }
    refuse_empty(&new)?;
    let added = keyring::add(&*storage.backend, config.repo_id, &keys, &new, kdf)?;
    keyring::remove(&*storage.backend, config.repo_id, &opened.id)?;
    finish(
        &storage,
        &config,
        KeyReport {
            added: vec![SlotView::from(&added)],
            removed: vec![SlotView::from(&opened)],
            ..KeyReport::default()
        },
    )
}

/// `key export-recovery`: a new recovery key — the recovery key itself is stored nowhere,
/// so a new one is what can be exported. Order: the new slot is added, then `deliver`
/// hands the key to the user (writes and syncs its file, or prints and flushes it), and
/// only once delivered are the older recovery slots removed. If delivery fails, the new
/// slot is removed instead and the old recovery key keeps working; a crash in between
/// leaves both slots, never a repository whose only recovery key nobody has.
pub fn new_recovery(
    location: &RepoLocation,
    source: &dyn SecretSource,
    deliver: &mut dyn FnMut(&SecretKey) -> Result<()>,
) -> Result<KeyReport> {
    let (storage, config) = encrypted(location)?;
    let _slots = WriterLock::acquire_keys(&storage.local_dir)?;
    let (keys, _) = unlock(&storage, &config, source)?;
    let recovery = SecretKey::random();
    let added = keyring::add(
        &*storage.backend,
        config.repo_id,
        &keys,
        &SlotSecret::Recovery(recovery.clone()),
        KdfParams::NONE,
    )?;
    if let Err(e) = deliver(&recovery) {
        // Never delivered: the new slot must not outlive the key. The old ones stay.
        keyring::remove(&*storage.backend, config.repo_id, &added.id)?;
        return Err(e);
    }
    let mut removed = Vec::new();
    for old in keyring::list(&*storage.backend, config.repo_id)? {
        if old.kind == SlotKind::Recovery && old.id != added.id {
            keyring::remove(&*storage.backend, config.repo_id, &old.id)?;
            removed.push(SlotView::from(&old));
        }
    }
    finish(
        &storage,
        &config,
        KeyReport {
            added: vec![SlotView::from(&added)],
            removed,
            ..KeyReport::default()
        },
    )
}

fn refuse_empty(secret: &SlotSecret) -> Result<()> {
    match secret {
        SlotSecret::Passphrase(p) if p.is_empty() => {
            Err(Error::Usage("an empty passphrase protects nothing".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{new_recovery, remove};
    use crate::crypto::{Passphrase, SecretKey, SlotSecret};
    use crate::error::{Error, ErrorKind};
    use crate::lock::WriterLock;
    use crate::{InitOptions, NewKeys, Repository};
    use tessera_format::keyslot::{KdfParams, MIN_KDF_ITERATIONS, MIN_KDF_MEMORY_KIB};

    fn pass() -> SlotSecret {
        SlotSecret::Passphrase(Passphrase::new("pw".into()))
    }

    fn encrypted_repository(root: &std::path::Path) {
        let keys = NewKeys {
            secret: pass(),
            kdf: KdfParams {
                memory_kib: MIN_KDF_MEMORY_KIB,
                iterations: MIN_KDF_ITERATIONS,
                parallelism: 1,
            },
            shared: None,
        };
        Repository::init_with(root, InitOptions::default(), Some(&keys)).unwrap();
    }

    /// Slot changes hold the key-slot lock: while another command holds it, a removal is
    /// refused as locked (exit 3) before it reads or deletes anything.
    #[test]
    fn slot_changes_wait_for_the_key_slot_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        encrypted_repository(&root);
        let before = std::fs::read_dir(root.join("keys")).unwrap().count();
        let held = WriterLock::acquire_keys(&root).unwrap();
        let location = crate::location::RepoLocation::local(&root);
        let err = remove(&location, &pass(), "0").unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Locked);
        let err = new_recovery(&location, &pass(), &mut |_: &SecretKey| Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
        drop(held);
        assert_eq!(
            std::fs::read_dir(root.join("keys")).unwrap().count(),
            before
        );
        // Released: the same export goes through.
        new_recovery(&location, &pass(), &mut |_: &SecretKey| Ok(())).unwrap();
    }
}
