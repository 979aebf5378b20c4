//! Full reads as a pipeline: every batch (8 MiB of consecutive blocks) is read, hashed,
//! looked up in the index and compressed by one rayon job, while this thread appends the
//! finished batches to packs and manifest pages in disk order.
//!
//! Why: with separate phases (read + hash everything in a window, then compress, then
//! append) the cores wait at each phase's end for the slowest batch, and compression waited
//! for hashing. Here up to `2 × threads + 1` batches are in flight and the only serial work
//! is appending already-encoded bytes.
//!
//! Memory: at most `in flight + 1` batch buffers (8 MiB each), each with an arena of the
//! same size for its compressed chunks; both are reused from batch to batch.
//!
//! Correctness: a job decides "new" from the index alone; two jobs may both encode a chunk
//! that appears in both their batches, and [`crate::store::session::WriteSession::add`]
//! keeps only the first. Batches are absorbed strictly in order, so manifest pages come out
//! exactly as a sequential read would produce them. After an error no more jobs are started,
//! the running ones are drained, and the first error is returned.

use std::collections::BTreeMap;

use tessera_format::manifest::block_count;
use tessera_format::ChunkDigest;

use crate::error::{Error, Result};
use crate::ops::backup::disk::{
    prepare_chunks, BlockItem, Cores, DiskBackup, PreparedChunks, BATCH_BYTES,
};
use crate::ops::backup::reference::ReferenceManifest;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sources::BlockSource;

/// One batch after its job.
struct Prepared {
    first_block: u64,
    buf: Vec<u8>,
    read: u64,
    digests: Vec<ChunkDigest>,
    references: Vec<Option<ChunkDigest>>,
    chunks: PreparedChunks,
}

/// A batch's job: read, hash, look up, compress (and in a key backup, read back).
fn prepare_batch(
    repo: &Repository,
    source: &dyn BlockSource,
    key: bool,
    (first_block, offset, bs): (u64, u64, u64),
    (mut buf, arena): (Vec<u8>, Vec<u8>),
    references: Vec<Option<ChunkDigest>>,
) -> Result<Prepared> {
    let read = source.read_at(offset, &mut buf)?;
    let ids = repo.crypto();
    let digests: Vec<ChunkDigest> = buf.chunks(bs as usize).map(|b| ids.chunk_id(b)).collect();
    let chunks = {
        let items = items_of(first_block, bs, &buf, &digests, &references);
        prepare_chunks(repo, &items, (key, Cores::One), |_| Ok(false), arena)?
    };
    Ok(Prepared {
        first_block,
        buf,
        read,
        digests,
        references,
        chunks,
    })
}

fn items_of<'b>(
    first_block: u64,
    bs: u64,
    buf: &'b [u8],
    digests: &[ChunkDigest],
    references: &[Option<ChunkDigest>],
) -> Vec<BlockItem<'b>> {
    buf.chunks(bs as usize)
        .zip(digests)
        .enumerate()
        .map(|(i, (data, digest))| BlockItem {
            block: first_block + i as u64,
            digest: *digest,
            data,
            reference: references.get(i).copied().flatten(),
        })
        .collect()
}

impl DiskBackup<'_, '_> {
    /// Reads the whole disk. With `drift_extents` (a key backup of a delta source whose
    /// delta applies on the reference), blocks that differ from the reference outside those
    /// extents are reported as drift.
    pub fn run_full(
        &mut self,
        source: &dyn BlockSource,
        mut reference: Option<ReferenceManifest<'_>>,
        drift_extents: Option<&[(u64, u64)]>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let size = source.size();
        let bs = u64::from(self.block_size);
        let blocks = block_count(size, self.block_size);
        let batch_blocks = (BATCH_BYTES / bs).max(1);
        let max_in_flight = 2 * rayon::current_num_threads() as u64 + 1;
        let (repo, key) = (self.repo, self.key);
        let (tx, rx) = std::sync::mpsc::channel::<(u64, Result<Prepared>)>();
        let mut pool: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut ready: BTreeMap<u64, Result<Prepared>> = BTreeMap::new();
        let outcome: Result<()> = rayon::in_place_scope(|scope| {
            let mut outcome = Ok(());
            let (mut submitted, mut absorbed, mut block) = (0u64, 0u64, 0u64);
            loop {
                while outcome.is_ok() && block < blocks && submitted - absorbed < max_in_flight {
                    let n = batch_blocks.min(blocks - block);
                    let offset = block * bs;
                    // The reference only saves lookups: if it cannot be read, do without —
                    // unless drift is being measured against it, which would then be wrong.
                    let mut references: Vec<Option<ChunkDigest>> = Vec::with_capacity(n as usize);
                    for b in block..block + n {
                        references.push(match reference.as_mut().map(|r| r.digest_at(b)) {
                            Some(Ok(d)) => d,
                            Some(Err(e)) if drift_extents.is_some() => {
                                outcome = Err(e);
                                break;
                            }
                            Some(Err(_)) => {
                                reference = None;
                                None
                            }
                            None => None,
                        });
                    }
                    if outcome.is_err() {
                        break;
                    }
                    let (mut buf, arena) = pool.pop().unwrap_or_default();
                    buf.resize((n * bs).min(size - offset) as usize, 0);
                    let tx = tx.clone();
                    let seq = submitted;
                    scope.spawn(move |_| {
                        // Every job must send, or the loop below would wait forever.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            prepare_batch(repo, source, key, (block, offset, bs), (buf, arena), references)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::Internal(format!(
                                "reading or encoding the blocks at offset {offset} panicked; nothing was committed"
                            )))
                        });
                        // The receiver outlives every job (it is drained below).
                        let _ = tx.send((seq, r));
                    });
                    submitted += 1;
                    block += n;
                }
                if absorbed == submitted {
                    break;
                }
                let Ok((seq, r)) = rx.recv() else {
                    if outcome.is_ok() {
                        outcome = Err(Error::Internal("a backup worker vanished".into()));
                    }
                    break;
                };
                ready.insert(seq, r);
                while let Some(r) = ready.remove(&absorbed) {
                    absorbed += 1;
                    if outcome.is_ok() {
                        outcome = r.and_then(|p| {
                            let buffers =
                                self.absorb_batch(p, drift_extents, reference.as_ref(), progress)?;
                            pool.push(buffers);
                            Ok(())
                        });
                    }
                }
            }
            outcome
        });
        outcome?;
        self.finish_partial_page()
    }

    /// Takes in one finished batch, in disk order; returns its buffers for reuse.
    fn absorb_batch(
        &mut self,
        p: Prepared,
        drift_extents: Option<&[(u64, u64)]>,
        reference: Option<&ReferenceManifest<'_>>,
        progress: &dyn Progress,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let bs = u64::from(self.block_size);
        self.stats.bytes_read += p.read;
        let items = items_of(p.first_block, bs, &p.buf, &p.digests, &p.references);
        if let (Some(extents), Some(r)) = (drift_extents, reference) {
            self.find_drift(&items, extents, r);
        }
        self.absorb(&items, &p.chunks)?;
        for d in &p.digests {
            self.push_digest(*d)?;
        }
        progress.advance(p.buf.len() as u64);
        Ok((p.buf, p.chunks.arena))
    }
}
