//! Backing up one disk: the parts every mode shares (finding and storing new chunks,
//! cutting manifest pages, key-backup store checks) and the full read.
//!
//! Full read: a window of 8 MiB batches is read and hashed on every core at once (holes of
//! sparse sources are not read); digests equal to the reference's at the same position, or
//! already in the index, are known; the rest are compressed in parallel and appended to
//! packs. Digests are cut into manifest pages as they come, so memory is bounded by a few
//! batches plus the root list.

use std::collections::HashSet;

use rayon::prelude::*;
use tessera_format::{
    ChunkDigest, Codec, Compression, DiskStats, ManifestPage, ObjectInfo, ObjectKind, PageDigest,
};

use crate::error::{Error, Result};
use crate::ops::backup::plan::Mode;
use crate::ops::backup::reference::ReferenceManifest;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sources::BlockSource;
use crate::store::encode::{compress_into, encode_object, stored_info};
use crate::store::reader::read_object;
use crate::store::session::WriteSession;

/// Bytes read and hashed by one worker at a time (rounded to whole blocks).
pub const BATCH_BYTES: u64 = 8 << 20;

/// Drift offsets kept in the report and the snapshot record (the count is always exact).
pub const MAX_DRIFT_OFFSETS: usize = 64;

/// One block with its content, ready to be stored.
pub struct BlockItem<'b> {
    /// Block number.
    pub block: u64,
    /// Its digest.
    pub digest: ChunkDigest,
    /// Its content.
    pub data: &'b [u8],
    /// What the reference has at this position.
    pub reference: Option<ChunkDigest>,
}

/// Blocks whose content differs from the reference although no delta said so.
#[derive(Debug, Default, Clone)]
pub struct Drift {
    /// How many.
    pub blocks: u64,
    /// The first [`MAX_DRIFT_OFFSETS`] byte offsets.
    pub offsets: Vec<u64>,
}

/// The state of one disk's backup.
pub struct DiskBackup<'a, 'r> {
    pub repo: &'r Repository,
    pub session: &'a mut WriteSession<'r>,
    /// Pages already named by this backup (each is looked up and stored once).
    pub seen_pages: &'a mut HashSet<PageDigest>,
    /// Damaged chunks found by a key backup, re-encoded from the source; shared by disks.
    pub heal: &'a mut Vec<(ObjectInfo, Vec<u8>)>,
    /// Packs of healed copies already stored, re-pointed when the backup publishes.
    pub healed_packs: &'a mut Vec<crate::store::pack_writer::SealedPack>,
    /// Damaged chunks this disk rewrote (queued or already re-homed).
    pub healed: u64,
    /// Chunks a key backup has already checked (shared by disks).
    pub checked: &'a super::checked::CheckedChunks,
    pub block_size: u32,
    /// Key backup: check the stored copy of every referenced chunk.
    pub key: bool,
    pub roots: Vec<PageDigest>,
    pub page: Vec<ChunkDigest>,
    pub stats: DiskStats,
    pub drift: Drift,
    /// The compression arena of [`DiskBackup::store`], reused from call to call.
    pub arena: Vec<u8>,
}

impl DiskBackup<'_, '_> {
    /// Backs up disk `name` in `mode`: a delta reads `delta_extents` on `reference`; full
    /// and key backups read everything (a key backup of a delta that applies reports drift
    /// outside `drift_extents`).
    #[expect(
        clippy::too_many_arguments,
        reason = "the disk's whole plan, spelled out"
    )]
    pub fn run(
        &mut self,
        name: &str,
        mode: Mode,
        source: &dyn BlockSource,
        reference: Option<ReferenceManifest<'_>>,
        delta_extents: Option<&[(u64, u64)]>,
        drift_extents: Option<&[(u64, u64)]>,
        progress: &dyn Progress,
    ) -> Result<()> {
        match (mode, reference) {
            (Mode::Delta, Some(mut reference)) => {
                let extents = delta_extents.unwrap_or_default();
                self.run_delta(name, source, extents, &mut reference, progress)
            }
            (Mode::Delta, None) => Err(Error::Internal(format!(
                "disk {name:?}: planned as a delta without a reference snapshot"
            ))),
            (_, reference) => {
                let label = if mode == Mode::Key {
                    "key backup"
                } else {
                    "backup"
                };
                progress.start(&format!("{label} {name}"), source.size());
                self.run_full(source, reference, drift_extents, progress)
            }
        }
    }

    pub fn find_drift(
        &mut self,
        items: &[BlockItem<'_>],
        extents: &[(u64, u64)],
        reference: &ReferenceManifest<'_>,
    ) {
        let bs = u64::from(self.block_size);
        for it in items {
            let Some(expected) = it.reference else {
                continue;
            };
            let start = it.block * bs;
            let len = it.data.len() as u64;
            if expected == it.digest
                || reference.block_len(it.block) != len
                || overlaps(extents, start, start + len)
            {
                continue;
            }
            self.drift.blocks += 1;
            if self.drift.offsets.len() < MAX_DRIFT_OFFSETS {
                self.drift.offsets.push(start);
            }
        }
    }

    /// Stores the blocks' chunks that the store lacks. In a key backup, also reads back the
    /// stored copy of every chunk the blocks reference and queues damaged ones for healing.
    pub fn store(&mut self, items: &[BlockItem<'_>]) -> Result<()> {
        let (session, checked) = (&*self.session, self.checked);
        let prepared = prepare_chunks(
            self.repo,
            items,
            (self.key, Cores::All),
            |d| Ok(checked.contains(d)? || session.is_pending(ObjectKind::Chunk, &d.0)?),
            std::mem::take(&mut self.arena),
        )?;
        self.absorb(items, &prepared)?;
        self.arena = prepared.arena;
        Ok(())
    }

    /// Takes in what [`prepare_chunks`] found for `items`: appends the new chunks to the
    /// session (skipping any another batch appended meanwhile), counts, and queues damaged
    /// chunks for healing.
    pub fn absorb(&mut self, items: &[BlockItem<'_>], prepared: &PreparedChunks) -> Result<()> {
        let compression = self.repo.config().compression;
        self.stats.zero_blocks += prepared.zero_blocks;
        for chunk in &prepared.encoded {
            let info = &chunk.info;
            if self.session.add(info, prepared.stored(chunk, items))? {
                self.stats.new_chunks += 1;
                self.stats.new_raw_bytes += u64::from(info.raw_len);
                self.stats.new_stored_bytes += u64::from(info.stored_len);
            }
        }
        for &i in &prepared.damaged {
            let Some(it) = items.get(i) else { continue };
            if self.checked.insert(it.digest)? {
                let (info, stored) = encode_object(
                    self.repo.crypto(),
                    ObjectKind::Chunk,
                    it.digest,
                    it.data,
                    compression,
                )?;
                self.heal.push((info, stored.into_owned()));
                self.healed += 1;
            }
        }
        self.checked.extend(&prepared.checked)?;
        // Re-home a pack's worth at a time: a lost pack must not be held in memory whole.
        let queued: usize = self.heal.iter().map(|(_, s)| s.len()).sum();
        if queued as u64 >= crate::store::session::TARGET_PACK_SIZE {
            crate::ops::backup::heal::store_copies(self.repo, self.heal, self.healed_packs)?;
            self.heal.clear();
        }
        Ok(())
    }

    /// Appends one digest to the manifest, cutting a page when it is full.
    pub fn push_digest(&mut self, digest: ChunkDigest) -> Result<()> {
        self.page.push(digest);
        if self.page.len() == self.repo.config().page_entries as usize {
            self.finish_page()?;
        }
        Ok(())
    }

    /// Cuts the last, partial page (if any).
    pub fn finish_partial_page(&mut self) -> Result<()> {
        if self.page.is_empty() {
            Ok(())
        } else {
            self.finish_page()
        }
    }

    /// Cuts the current page: names it, stores it if new, and records its references.
    pub fn finish_page(&mut self) -> Result<()> {
        let page = ManifestPage {
            digests: std::mem::take(&mut self.page),
        };
        let bytes = page
            .encode()
            .map_err(|e| Error::Internal(format!("encoding a manifest page: {e}")))?;
        let digest = self.repo.crypto().ids().page(&bytes);
        if self.first_sight(digest)? {
            let (info, stored) = encode_object(
                self.repo.crypto(),
                ObjectKind::Page,
                ChunkDigest(digest.0),
                &bytes,
                self.repo.config().compression,
            )?;
            self.session.add(&info, &stored)?;
        }
        self.roots.push(digest);
        Ok(())
    }

    /// Appends a page that already exists (the reference's, unchanged) to the root list.
    pub fn push_existing_page(&mut self, digest: PageDigest) -> Result<()> {
        if self.first_sight(digest)? {
            return Err(Error::ObjectMissing {
                kind: ObjectKind::Page,
                digest: digest.to_hex(),
            });
        }
        self.roots.push(digest);
        Ok(())
    }

    /// Whether page `digest` must be stored: named for the first time in this backup, and
    /// neither in the index nor written in this session. (Its count and its chunks' are
    /// derived when the snapshot is published, from the index as it is then.)
    fn first_sight(&mut self, digest: PageDigest) -> Result<bool> {
        if !self.seen_pages.insert(digest) {
            return Ok(false);
        }
        let indexed = self
            .repo
            .index()
            .contains_many(ObjectKind::Page, &[digest.0])?
            .first()
            .copied()
            .unwrap_or(false);
        Ok(!indexed
            && !self
                .session
                .is_pending(ObjectKind::Page, digest.as_bytes())?)
    }
}

/// One new chunk, encoded: its record header and where its stored bytes are.
pub struct EncodedChunk {
    /// The record header.
    pub info: ObjectInfo,
    /// The item (block) it encodes.
    pub item: usize,
    /// Its stored bytes in [`PreparedChunks::arena`] (compressed, and sealed in an
    /// encrypted repository); `None`: stored raw (the item's
    /// own bytes, not copied).
    pub compressed: Option<std::ops::Range<usize>>,
}

/// What [`prepare_chunks`] found for a set of blocks.
#[derive(Default)]
pub struct PreparedChunks {
    /// Chunks the index does not have, encoded for storage.
    pub encoded: Vec<EncodedChunk>,
    /// The compressed bytes of `encoded`, one block-sized slot per chunk. Reused across
    /// batches (see [`prepare_chunks`]): a fresh allocation per chunk cost a page fault per
    /// 4 KiB written and a copy of every incompressible block.
    pub arena: Vec<u8>,
    /// All-zero blocks.
    pub zero_blocks: u64,
    /// Key backups: items whose stored chunk is damaged or missing.
    pub damaged: Vec<usize>,
    /// Key backups: digests whose stored copy was read back intact.
    pub checked: Vec<ChunkDigest>,
}

impl PreparedChunks {
    /// The stored bytes of `chunk`, one of `self.encoded` for `items`.
    pub fn stored<'s>(&'s self, chunk: &EncodedChunk, items: &[BlockItem<'s>]) -> &'s [u8] {
        match &chunk.compressed {
            Some(range) => self.arena.get(range.clone()).unwrap_or_default(),
            None => items.get(chunk.item).map_or(&[][..], |it| it.data),
        }
    }
}

/// Which threads [`prepare_chunks`] works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// Spread the work over the thread pool: the caller is a single thread (delta backups).
    All,
    /// Only the calling thread: the caller already runs batches side by side on every core
    /// (full reads). Splitting each batch again made a worker that finished its half wait
    /// for the other's: 1.71 → 1.87 cores busy, 2.43–2.52 → 2.30–2.43 s for a 2 GiB image.
    One,
}

impl Cores {
    /// The `with_min_len` that gives this behaviour to a parallel iterator.
    fn min_len(self) -> usize {
        match self {
            Cores::All => 1,
            Cores::One => usize::MAX,
        }
    }
}

/// The thread-safe part of storing blocks: finds (one batched index lookup) which chunks
/// the store lacks and encodes them; in a key backup also reads back the stored copy of
/// every other chunk with every check. `skip` names digests already handled elsewhere
/// (pending in the session, already checked). `arena` is a buffer to reuse for the
/// compressed bytes (its contents do not matter). Writes nothing.
pub fn prepare_chunks(
    repo: &Repository,
    items: &[BlockItem<'_>],
    (key, cores): (bool, Cores),
    skip: impl Fn(&ChunkDigest) -> Result<bool>,
    arena: Vec<u8>,
) -> Result<PreparedChunks> {
    let compression = repo.config().compression;
    let mut out = PreparedChunks {
        arena,
        ..PreparedChunks::default()
    };
    let mut seen = HashSet::new();
    let mut candidates: Vec<usize> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let d = it.digest;
        if d.is_zero() {
            out.zero_blocks += 1;
            continue;
        }
        // Known live through the reference (a key backup checks those too).
        if (!key && it.reference == Some(d)) || skip(&d)? || !seen.insert(d) {
            continue;
        }
        candidates.push(i);
    }
    let keys: Vec<[u8; 32]> = candidates.iter().map(|&i| items[i].digest.0).collect();
    let entries = repo.index().get_many(ObjectKind::Chunk, &keys)?;
    let (known, new): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .zip(entries)
        .partition(|(_, e)| e.is_some());
    if key {
        let backend = repo.backend();
        let results: Vec<Result<(usize, bool)>> = known
            .par_iter()
            .with_min_len(cores.min_len())
            .filter_map(|(i, entry)| entry.as_ref().map(|e| (*i, e)))
            .map(|(i, entry)| {
                match read_object(
                    backend,
                    repo.crypto(),
                    ObjectKind::Chunk,
                    &items[i].digest.0,
                    entry,
                ) {
                    Ok(_) => Ok((i, true)),
                    Err(
                        Error::ObjectCorrupt { .. }
                        | Error::ObjectMissing { .. }
                        | Error::Io { .. }
                        | Error::PackCorrupt { .. },
                    ) => Ok((i, false)),
                    Err(e) => Err(e),
                }
            })
            .collect();
        for r in results {
            match r? {
                (i, true) => out.checked.push(items[i].digest),
                (i, false) => out.damaged.push(i),
            }
        }
    }
    // One slot per new chunk, as long as the longest block plus the envelope of an
    // encrypted repository: jobs compress (and seal) side by side.
    let longest = items.iter().map(|it| it.data.len()).max().unwrap_or(0);
    let slot = (longest + repo.crypto().overhead()).max(1);
    let needed = slot * new.len();
    if out.arena.len() < needed {
        out.arena.resize(needed, 0);
    }
    out.encoded = out.arena[..needed]
        .par_chunks_mut(slot)
        .with_min_len(cores.min_len())
        .zip(new.par_iter())
        .enumerate()
        .map(|(n, (room, (i, _)))| {
            encode_new(repo, compression, &items[*i], *i, room, (n * slot, longest))
        })
        .collect::<Result<_>>()?;
    Ok(out)
}

/// Encodes new chunk `it` (item `item`) into its arena slot `room`, which starts at
/// `start` in the arena and has room for the `longest` block plus the envelope: compressed
/// when that helps, sealed in place in an encrypted repository.
fn encode_new(
    repo: &Repository,
    compression: Compression,
    it: &BlockItem<'_>,
    item: usize,
    room: &mut [u8],
    (start, longest): (usize, usize),
) -> Result<EncodedChunk> {
    let crypto = repo.crypto();
    let at = crypto.payload_offset();
    let compressed = compress_into(it.data, compression, &mut room[at..at + longest]);
    let codec = if compressed.is_some() {
        Codec::Zstd
    } else {
        Codec::None
    };
    if !crypto.is_encrypted() {
        let stored = compressed.map_or(it.data, |len| &room[..len]);
        let info = stored_info(ObjectKind::Chunk, it.digest, it.data.len(), codec, stored);
        return Ok(EncodedChunk {
            info,
            item,
            compressed: compressed.map(|len| start..start + len),
        });
    }
    // Encrypted: the encoded bytes go into the slot after the envelope's prefix and are
    // sealed in place; the stored form is always in the arena.
    let len = compressed.unwrap_or_else(|| {
        room[at..at + it.data.len()].copy_from_slice(it.data);
        it.data.len()
    });
    let raw_len = it.data.len() as u32;
    let stored_len = crypto
        .protect_in_place(ObjectKind::Chunk, codec, raw_len, &it.digest.0, room, len)
        .map_err(|e| Error::Internal(format!("sealing chunk {}: {e}", it.digest)))?;
    let info = stored_info(
        ObjectKind::Chunk,
        it.digest,
        it.data.len(),
        codec,
        &room[..stored_len],
    );
    Ok(EncodedChunk {
        info,
        item,
        compressed: Some(start..start + stored_len),
    })
}

/// Whether `[start, end)` overlaps any of the sorted, disjoint `extents`.
pub fn overlaps(extents: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = extents.partition_point(|&(_, e)| e <= start);
    extents.get(i).is_some_and(|&(s, _)| s < end)
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn overlap_queries() {
        let ex = [(10, 20), (30, 40)];
        assert!(!overlaps(&ex, 0, 10));
        assert!(overlaps(&ex, 0, 11));
        assert!(overlaps(&ex, 19, 25));
        assert!(!overlaps(&ex, 20, 30));
        assert!(overlaps(&ex, 35, 36));
        assert!(!overlaps(&ex, 40, 100));
    }
}
