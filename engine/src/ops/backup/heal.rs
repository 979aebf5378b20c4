//! Healing during key backups: chunks whose stored copy is damaged or missing get a fresh
//! copy, re-encoded from the source block that hashes to the same digest.
//!
//! The copies go into new packs, sealed (durable) first; then one synced index batch points
//! each object's entry at its new location, keeping its reference count. A crash before the
//! batch leaves sealed packs the next writer adopts (the index still names the damaged
//! copy, which the next key backup or `repair` heals again); after it, the damaged record is
//! dead weight in its old pack until compaction or `repair` quarantines it.

use rocksdb::WriteBatch;
use tessera_format::ObjectInfo;

use crate::error::Result;
use crate::repo::Repository;
use crate::store::pack_writer::PackWriter;
use crate::store::session::{object_entry, TARGET_PACK_SIZE};

/// Stores `objects` in new packs and re-points their index entries. Returns how many.
pub fn rehome_objects(repo: &Repository, objects: &[(ObjectInfo, Vec<u8>)]) -> Result<u64> {
    let mut rest = objects;
    while !rest.is_empty() {
        let mut writer = PackWriter::create(repo.backend())?;
        let mut taken = 0;
        for (info, stored) in rest {
            writer.append(info, stored)?;
            taken += 1;
            if writer.len() >= TARGET_PACK_SIZE {
                break;
            }
        }
        rest = &rest[taken..];
        let sealed = writer.finish()?;
        let index = repo.index();
        let mut batch = WriteBatch::default();
        for fe in &sealed.entries {
            let kind = fe.info.kind;
            let entry = match index.get_object(kind, &fe.info.digest.0)? {
                Some(old) => old.relocated(sealed.id, fe),
                None => object_entry(sealed.id, fe),
            };
            index.put_object(&mut batch, kind, &fe.info.digest.0, &entry);
        }
        index.put_pack(&mut batch, sealed.id, sealed.catalog_entry());
        index.write(batch)?;
    }
    Ok(objects.len() as u64)
}
