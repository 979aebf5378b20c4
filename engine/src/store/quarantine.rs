//! Moving damaged packs aside, never deleting them (SPEC §11b): a quarantined pack is kept
//! under `quarantine/<id>.pack` for forensics, where no index entry points and no command
//! reads. Object stores have no rename, so a move is a copy (a finished put) followed by the
//! delete of the original: a crash between the two leaves both, and the next move finds
//! the copy already there.

use tessera_format::PackId;

use crate::error::Result;
use crate::storage::{key, Backend, ObjectKey, PutMode};

/// What became of a pack asked to move into quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantined {
    /// The pack is now in quarantine (moved now or by an earlier, interrupted move).
    Moved,
    /// There was no such pack, in place or in quarantine.
    Missing,
}

/// Moves pack `id` into quarantine (see module docs).
pub fn quarantine_pack(backend: &dyn Backend, id: PackId) -> Result<Quarantined> {
    let from = ObjectKey::pack(id);
    let to = ObjectKey::quarantined(id);
    match backend.get_if_exists(&from)? {
        Some(bytes) => {
            backend.put_bytes(&to, PutMode::Replace, &bytes)?;
            // A retained pack (SPEC §28) stays in place until its retention passes; its
            // copy is in quarantine and the catalog drops it, as for any other.
            backend.delete_unless_retained(&from)?;
            Ok(Quarantined::Moved)
        }
        None if backend.size(&to)?.is_some() => Ok(Quarantined::Moved),
        None => Ok(Quarantined::Missing),
    }
}

/// Records the intent to quarantine `id`, durably, before the index stops using it.
pub fn write_intent(backend: &dyn Backend, id: PackId) -> Result<()> {
    backend.put_bytes(&ObjectKey::quarantine_intent(id), PutMode::Replace, b"")
}

/// Removes a quarantine intent (the pack is in quarantine and out of the catalog).
pub fn clear_intent(backend: &dyn Backend, id: PackId) -> Result<()> {
    backend.delete(&ObjectKey::quarantine_intent(id))
}

/// Packs an interrupted repair had marked for quarantine.
pub fn intents(backend: &dyn Backend) -> Result<Vec<PackId>> {
    Ok(backend
        .list(key::QUARANTINE)?
        .iter()
        .filter_map(|k| match k.kind() {
            Some(key::KeyKind::QuarantineIntent(id)) => Some(id),
            _ => None,
        })
        .collect())
}
