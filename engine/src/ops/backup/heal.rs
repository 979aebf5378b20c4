//! Healing during key backups: chunks whose stored copy is damaged or missing get a fresh
//! copy, re-encoded from the source block that hashes to the same digest.
//!
//! The copies go into new packs, sealed (durable) while the backup stores, a pack's worth at
//! a time; when it publishes, under the writer lock, one synced index batch per pack points
//! each object's entry at its new location, keeping its reference count. A crash before the
//! batch leaves sealed packs the next writer adopts (the index still names the damaged
//! copy, which the next key backup or `repair` heals again); after it, the damaged record is
//! dead weight in its old pack until compaction or `repair` quarantines it.

use tessera_format::ObjectInfo;

use crate::error::Result;
use crate::repo::Repository;
use crate::store::pack_sink::PackSink;
use crate::store::pack_writer::SealedPack;

/// Stores `objects` in new packs (sealed, durable) and adds them to `sealed`, without
/// indexing them: a backup stores without the writer lock (SPEC.md §8), so the re-pointing
/// waits for [`repoint`] under the writer that publishes.
pub fn store_copies(
    repo: &Repository,
    objects: &[(ObjectInfo, Vec<u8>)],
    sealed: &mut Vec<SealedPack>,
) -> Result<()> {
    let mut sink = PackSink::new(repo.backend(), repo.pack_target());
    for (info, stored) in objects {
        sink.append(info, stored, ())?;
        if let Some(full) = sink.seal_if_full()? {
            sealed.push(full.pack);
        }
    }
    if let Some(last) = sink.seal()? {
        sealed.push(last.pack);
    }
    Ok(())
}

/// Points the objects of the sealed packs at their new locations, keeping their counts: one
/// synced batch per pack. `writer` holds the writer lock. A pack another writer's recovery
/// adopted meanwhile (all its objects were known elsewhere, so it held nothing live) and a
/// compaction then doomed is left alone: pointing objects into it would lose them when it is
/// deleted. Those objects keep their damaged copy, which the next key backup or `repair`
/// heals again.
pub fn repoint(writer: &Repository, sealed: &[SealedPack]) -> Result<()> {
    let index = writer.index();
    let doomed: std::collections::HashSet<_> = index
        .doomed_packs_since()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let policy = crate::ops::immutable::effective_policy(writer.index(), writer.backend())?;
    for pack in sealed.iter().filter(|p| !doomed.contains(&p.id)) {
        let mut known = Vec::with_capacity(pack.entries.len());
        for fe in &pack.entries {
            known.push(index.get_object(fe.info.kind, &fe.info.digest.0)?);
        }
        let mut batch = index.batch();
        if let Some(policy) = &policy {
            // The copies take the retention of what they replace (SPEC §28.3).
            let sources: Vec<_> = known.iter().flatten().map(|e| e.pack).collect();
            crate::ops::immutable::carry_over(writer, &mut batch, pack.id, &sources, policy)?;
        }
        pack.index_into(&mut batch, &known);
        index.commit(batch)?;
    }
    Ok(())
}
