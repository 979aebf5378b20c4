//! Intact copies of damaged objects from the source images (`--from-source DISK=PATH`):
//! for a chunk, the block at each snapshot range that needs it; for a page, the page
//! recomputed from the image's blocks. Only a copy whose digest matches is ever returned.

use std::path::PathBuf;

use tessera_format::manifest::{block_count, entries_in_page};
use tessera_format::{ChunkDigest, ManifestPage, ObjectInfo, ObjectKind, Snapshot, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::ops::damage::DamagedRange;
use crate::repo::Repository;
use crate::sources::raw::RawSource;
use crate::sources::BlockSource;
use crate::store::encode::encode_object;

/// Tries to rebuild `digest` from the source images at the ranges that need it.
pub(super) fn from_images(
    repo: &Repository,
    images: &[(String, PathBuf, RawSource)],
    kind: ObjectKind,
    digest: &[u8; 32],
    ranges: &[DamagedRange],
    snapshots: &[(SnapshotId, Snapshot)],
) -> Option<(ObjectInfo, Vec<u8>, String)> {
    for range in ranges {
        let Some((disk_name, path, source)) = images.iter().find(|(d, _, _)| *d == range.disk)
        else {
            continue;
        };
        let Some((_, snapshot)) = snapshots.iter().find(|(id, _)| *id == range.snapshot) else {
            continue;
        };
        let Some(disk) = snapshot.header.disks.iter().find(|d| d.name == range.disk) else {
            continue;
        };
        let bs = u64::from(disk.block_size);
        let raw = match kind {
            ObjectKind::Chunk => {
                let len = bs.min(disk.size.saturating_sub(range.offset));
                if len == 0 || range.offset + len > source.size() {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                if source.read_at(range.offset, &mut buf).is_err()
                    || repo.crypto().chunk_id(&buf).0 != *digest
                {
                    continue;
                }
                buf
            }
            ObjectKind::Page => {
                let Some(encoded) = page_from_image(
                    repo.crypto(),
                    source,
                    disk.size,
                    disk.block_size,
                    disk.page_entries,
                    range.offset,
                ) else {
                    continue;
                };
                if repo.crypto().ids().page(&encoded).0 != *digest {
                    continue;
                }
                encoded
            }
        };
        let Ok((info, stored)) = encode_object(
            repo.crypto(),
            kind,
            ChunkDigest(*digest),
            &raw,
            repo.config().compression,
        ) else {
            continue;
        };
        return Some((
            info,
            stored.into_owned(),
            format!("source {disk_name}={}", path.display()),
        ));
    }
    None
}

/// Recomputes the encoded manifest page starting at byte `offset` of a disk from an image.
fn page_from_image(
    crypto: &RepoCrypto,
    source: &RawSource,
    size: u64,
    block_size: u32,
    page_entries: u32,
    offset: u64,
) -> Option<Vec<u8>> {
    let bs = u64::from(block_size);
    let blocks = block_count(size, block_size);
    let first = offset / bs;
    let pe = u64::from(page_entries);
    if !first.is_multiple_of(pe) || size > source.size() {
        return None;
    }
    let page_no = first / pe;
    let n = entries_in_page(blocks, page_entries, page_no);
    let mut digests = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; block_size as usize];
    for b in first..first + n {
        let at = b * bs;
        let len = bs.min(size - at) as usize;
        source.read_at(at, &mut buf[..len]).ok()?;
        let block = &buf[..len];
        digests.push(crypto.chunk_id(block));
    }
    ManifestPage { digests }.encode().ok()
}
