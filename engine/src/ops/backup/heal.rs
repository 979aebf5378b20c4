//! Healing during key backups: chunks whose stored copy is damaged or missing get a fresh
//! copy, re-encoded from the source block that hashes to the same digest.
//!
//! The copies go into new packs, sealed (durable) first; then one synced index batch points
//! each object's entry at its new location, keeping its reference count. A crash before the
//! batch leaves sealed packs the next writer adopts (the index still names the damaged
//! copy, which the next key backup or `repair` heals again); after it, the damaged record is
//! dead weight in its old pack until compaction or `repair` quarantines it.

use tessera_format::ObjectInfo;

use crate::error::Result;
use crate::repo::Repository;
use crate::store::pack_sink::{PackSink, Sealed};

/// Stores `objects` in new packs and re-points their index entries. Returns how many.
pub fn rehome_objects(repo: &Repository, objects: &[(ObjectInfo, Vec<u8>)]) -> Result<u64> {
    let mut sink = PackSink::new(repo.backend(), repo.pack_target());
    for (info, stored) in objects {
        sink.append(info, stored, ())?;
        if let Some(sealed) = sink.seal_if_full()? {
            commit(repo, &sealed)?;
        }
    }
    if let Some(sealed) = sink.seal()? {
        commit(repo, &sealed)?;
    }
    Ok(objects.len() as u64)
}

/// Points the objects of a sealed pack at their new locations, keeping their counts.
fn commit(repo: &Repository, sealed: &Sealed<()>) -> Result<()> {
    let index = repo.index();
    let mut known = Vec::with_capacity(sealed.pack.entries.len());
    for fe in &sealed.pack.entries {
        known.push(index.get_object(fe.info.kind, &fe.info.digest.0)?);
    }
    let mut batch = index.batch();
    sealed.pack.index_into(&mut batch, &known);
    index.commit(batch)
}
