//! The transfer of selected snapshots from an [`ObjectSource`] into an [`ObjectSink`], the
//! one code path behind `sync`, `seed import` and push/pull over HTTP.
//!
//! Per snapshot, in this order:
//! 1. its file is fetched, hashed (the id must match) and decoded; block sizes are
//!    compared with what the destination already has for the same series and disk;
//! 2. the destination is asked which of its pages it lacks (batches of
//!    [`QUERY_BATCH`] digests); those are fetched, checked (decoded and hashed here, in
//!    parallel) and decoded to learn their chunk digests;
//! 3. the destination is asked which of those chunks it lacks; they are fetched, checked
//!    and appended;
//! 4. the new pages are appended *after* their chunks, so that a sealed page implies its
//!    chunks were sealed no later (a rerun after a kill that finds the page present may
//!    skip its chunks safely);
//! 5. the sink seals, checks the snapshot's objects, stages counts and publishes it.
//!
//! A kill at any point leaves at most sealed packs at count 0 (adopted by the next
//! writer) and no half-published snapshot; a rerun fetches only what is still missing.

use std::collections::HashSet;

use tessera_format::{ChunkDigest, IdScheme, ManifestPage, ObjectKind, PageDigest, SnapshotId};

use crate::error::{Error, Result};
use crate::progress::Progress;

use super::bwlimit::TokenBucket;
use super::checked::{check_batch, CheckedObject};
use super::sink::{block_sizes, check_block_sizes, decode_snapshot, ObjectSink};
use super::source::{ObjectSource, SnapshotSummary};
use super::{Selection, SyncOptions, SyncReport};

/// Digests per "which do you have" query.
pub const QUERY_BATCH: usize = 4096;
/// Digests per object request (the source may return fewer).
pub const FETCH_BATCH: usize = 1024;

/// Serving an encrypted repository over HTTP (`tessera serve`, sync with an `http(s)://`
/// side) is not built yet (SPEC.md §23.8): refused before anything is copied or served.
pub fn encrypted_not_supported(location: &str) -> Error {
    Error::Refused {
        reason: format!(
            "{location} is encrypted: serving it over HTTP (serve, sync with an http(s):// side) is not built for encrypted repositories yet (SPEC.md §23.8; sync, seed bundles and repair --from between repositories that share keys are); nothing was copied"
        ),
    }
}

/// Refuses the repository at `location` if it is encrypted ([`encrypted_not_supported`]),
/// before anything asks for its key; a location that is not a repository (or cannot be
/// read now) is left for the open that follows to report.
pub fn refuse_encrypted(location: &crate::location::RepoLocation) -> Result<()> {
    match location.storage().and_then(|s| s.read_config()) {
        Ok(config) if config.encryption.is_encrypted() => {
            Err(encrypted_not_supported(&location.to_string()))
        }
        _ => Ok(()),
    }
}

/// Refuses to exchange records between encrypted sides unless both are repositories that
/// say they share keys (equal fingerprints): a record sealed under one key set is damage
/// under another. A server does not say (it serves plain repositories only, §23.8).
fn check_shared_keys(src: &dyn ObjectSource, dst: &dyn ObjectSink) -> Result<()> {
    match (src.key_fingerprint()?, dst.key_fingerprint()?) {
        (Some(theirs), Some(ours)) if theirs == ours => Ok(()),
        (Some(theirs), Some(ours)) => Err(different_keys(
            &src.describe(),
            &theirs,
            &dst.describe(),
            &ours,
        )),
        (None, _) => Err(encrypted_not_supported(&src.describe())),
        (_, None) => Err(encrypted_not_supported(&dst.describe())),
    }
}

/// Two encrypted repositories whose keys differ: refused (SPEC.md §23.7).
pub fn different_keys(src: &str, theirs: &[u8; 16], dst: &str, ours: &[u8; 16]) -> Error {
    Error::Refused {
        reason: format!(
            "{src} (key fingerprint {}) and {dst} (key fingerprint {}) are encrypted under different keys: their records cannot move between them without re-encrypting every record and changing every id; make the destination with `tessera init DST --keys-from SRC` so both share keys; nothing was copied",
            hex::encode(theirs),
            hex::encode(ours)
        ),
    }
}

/// Copies the selected snapshots (see the module docs).
pub fn transfer(
    src: &dyn ObjectSource,
    dst: &mut dyn ObjectSink,
    selection: &Selection,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let (src_scheme, dst_scheme) = (src.id_scheme()?, dst.id_scheme()?);
    if src_scheme != dst_scheme {
        return Err(Error::IncompatibleRepositories {
            ours: dst.describe(),
            our_scheme: dst_scheme,
            theirs: src.describe(),
            their_scheme: src_scheme,
        });
    }
    if src_scheme == IdScheme::HmacSha256 {
        check_shared_keys(src, dst)?;
    }
    let selected = selection.select(&src.snapshots()?)?;
    let dst_catalog = dst.snapshots()?;
    let mut known_sizes = block_sizes(&dst_catalog);
    let present: HashSet<SnapshotId> = dst_catalog.iter().map(|s| s.id).collect();
    // Refuse block-size mismatches before copying anything.
    for s in selected.iter().filter(|s| !present.contains(&s.id)) {
        check_block_sizes(&known_sizes, s)?;
        known_sizes.extend(block_sizes(std::slice::from_ref(s)));
    }
    let mut run = Run {
        src,
        crypto: dst.crypto(),
        from: src.describe(),
        bucket: opts.bwlimit.map(TokenBucket::new),
        report: SyncReport {
            dry_run: opts.dry_run,
            ..SyncReport::default()
        },
        progress,
        count_only: opts.dry_run,
        every_page: opts.every_page,
        pool: super::pool(opts.jobs)?,
    };
    for summary in &selected {
        if present.contains(&summary.id) {
            run.report.snapshots_skipped.push(summary.id);
            continue;
        }
        run.copy_snapshot(dst, summary)?;
    }
    Ok(run.report)
}

struct Run<'a> {
    src: &'a dyn ObjectSource,
    /// The destination's protection, which every received object is checked under.
    crypto: std::sync::Arc<crate::crypto::RepoCrypto>,
    from: String,
    bucket: Option<TokenBucket>,
    report: SyncReport,
    progress: &'a dyn Progress,
    count_only: bool,
    every_page: bool,
    pool: Option<rayon::ThreadPool>,
}

impl Run<'_> {
    fn copy_snapshot(&mut self, dst: &mut dyn ObjectSink, summary: &SnapshotSummary) -> Result<()> {
        let bytes = self.src.snapshot_bytes(summary.id)?;
        self.count_transfer(bytes.len() as u64);
        let (id, snapshot) = decode_snapshot(&self.from, &self.crypto, &bytes)?;
        if id != summary.id {
            return Err(Error::UntrustedData {
                from: self.from.clone(),
                reason: format!(
                    "snapshot {} has content hashing to {id}; nothing was copied from it",
                    summary.id
                ),
            });
        }
        // What is delivered must be what was listed (and selected by series, time and
        // disks): a source must not slip a snapshot of another series in under a listed id.
        let delivered = SnapshotSummary::of(id, &snapshot.header);
        if delivered != *summary {
            return Err(Error::UntrustedData {
                from: self.from.clone(),
                reason: format!(
                "snapshot {id} was listed as series {:?} at {} with disks {:?}, but its file says series {:?} at {} with disks {:?}; nothing was copied from it",
                summary.series,
                crate::time::format_us(summary.time_us),
                summary.disks,
                delivered.series,
                crate::time::format_us(delivered.time_us),
                delivered.disks
            ),
            });
        }
        let mut seen = HashSet::new();
        let pages: Vec<[u8; 32]> = snapshot
            .roots
            .iter()
            .flatten()
            .map(|p| p.0)
            .filter(|p| seen.insert(*p))
            .collect();
        let missing_pages = self.missing(dst, ObjectKind::Page, &pages)?;
        let mut read_pages = Vec::new();
        let to_read = if self.every_page {
            &pages
        } else {
            &missing_pages
        };
        self.fetch(ObjectKind::Page, to_read, &mut |got| {
            read_pages.extend(got);
            Ok(())
        })?;
        let mut seen_chunks = HashSet::new();
        let mut chunks = Vec::new();
        for page in &read_pages {
            let raw = page.raw_page.as_deref().unwrap_or_default();
            let decoded = ManifestPage::decode(raw).map_err(|e| Error::UntrustedData {
                from: self.from.clone(),
                reason: format!(
                    "page {} does not decode: {e}",
                    PageDigest(page.info.digest.0)
                ),
            })?;
            chunks.extend(
                decoded
                    .digests
                    .iter()
                    .filter(|d| !d.is_zero() && seen_chunks.insert(**d))
                    .map(|d: &ChunkDigest| d.0),
            );
        }
        let missing_chunks = self.missing(dst, ObjectKind::Chunk, &chunks)?;
        // Progress in raw bytes; the total assumes full blocks (the last one may be short).
        let block = snapshot
            .header
            .disks
            .iter()
            .map(|d| u64::from(d.block_size))
            .max()
            .unwrap_or(0);
        self.progress.start(
            &format!("snapshot {}", &summary.id.to_hex()[..8]),
            missing_chunks.len() as u64 * block,
        );
        if self.count_only {
            // Pages were fetched (their chunk lists are needed); chunks are only counted.
            self.report.chunks_transferred += missing_chunks.len() as u64;
        } else {
            let progress = self.progress;
            self.fetch(ObjectKind::Chunk, &missing_chunks, &mut |got| {
                progress.advance(got.iter().map(|c| u64::from(c.info.raw_len)).sum());
                dst.put(ObjectKind::Chunk, got)
            })?;
            let lacking: HashSet<[u8; 32]> = missing_pages.into_iter().collect();
            let new_pages = read_pages
                .into_iter()
                .filter(|p| lacking.contains(&p.info.digest.0))
                .collect();
            dst.put(ObjectKind::Page, new_pages)?;
            dst.publish(&bytes)?;
        }
        self.progress.finish();
        self.report.snapshots_copied.push(id);
        Ok(())
    }

    /// The digests of `all` the destination lacks, asked in batches.
    fn missing(
        &mut self,
        dst: &mut dyn ObjectSink,
        kind: ObjectKind,
        all: &[[u8; 32]],
    ) -> Result<Vec<[u8; 32]>> {
        let mut out = Vec::new();
        for batch in all.chunks(QUERY_BATCH) {
            let have = dst.contains_many(kind, batch)?;
            if have.len() != batch.len() {
                return Err(Error::UntrustedData {
                    from: dst.describe(),
                    reason: format!(
                        "answered a query for {} digests with {}",
                        batch.len(),
                        have.len()
                    ),
                });
            }
            for (d, h) in batch.iter().zip(have) {
                if h {
                    self.report.objects_skipped += 1;
                } else {
                    out.push(*d);
                }
            }
        }
        Ok(out)
    }

    /// Fetches and checks `digests`, handing each checked batch (bounded by what the
    /// source returns per call) to `sink`, so memory stays bounded.
    fn fetch(
        &mut self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
        sink: &mut dyn FnMut(Vec<CheckedObject>) -> Result<()>,
    ) -> Result<()> {
        let mut rest = digests;
        while !rest.is_empty() {
            let ask = rest.get(..FETCH_BATCH.min(rest.len())).unwrap_or(rest);
            let got = self.src.get_objects(kind, ask)?;
            let n = got.len();
            if n == 0 || n > ask.len() {
                return Err(Error::UntrustedData {
                    from: self.from.clone(),
                    reason: format!("answered a request for {} objects with {n}", ask.len()),
                });
            }
            let stored: u64 = got.iter().map(|(i, _)| u64::from(i.stored_len)).sum();
            self.count_transfer(stored);
            let asked = ask.get(..n).unwrap_or(ask);
            let from = self.from.as_str();
            let checked = match &self.pool {
                Some(pool) => pool.install(|| check_batch(from, &self.crypto, kind, asked, got))?,
                None => check_batch(from, &self.crypto, kind, asked, got)?,
            };
            for c in &checked {
                self.report.raw_bytes_transferred += u64::from(c.info.raw_len);
                match kind {
                    ObjectKind::Chunk => self.report.chunks_transferred += 1,
                    ObjectKind::Page => self.report.pages_transferred += 1,
                }
            }
            self.report.stored_bytes_transferred += stored;
            sink(checked)?;
            rest = rest.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    fn count_transfer(&mut self, bytes: u64) {
        self.report.bytes_received += bytes;
        if let Some(b) = self.bucket.as_mut() {
            b.take(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{transfer, ObjectSource, SnapshotSummary};
    use crate::crypto::keyring::KnownKeys;
    use crate::crypto::SlotSecret;
    use crate::error::Result;
    use crate::location::RepoLocation;
    use crate::ops::backup::{backup, BackupRequest};
    use crate::repo::{InitOptions, NewKeys, RepoStorage, Repository};
    use crate::sync::sink::{LocalSink, Publisher};
    use crate::sync::source::{Catalog, StoredObject};
    use crate::sync::{Selection, SyncOptions};
    use crate::NoProgress;
    use tessera_format::{IdScheme, ObjectKind, SnapshotId};

    /// A source that lists its snapshots under another series than their files say.
    struct Relabelling<'a>(&'a Repository);

    impl Catalog for Relabelling<'_> {
        fn describe(&self) -> String {
            "a relabelling source".into()
        }
        fn id_scheme(&self) -> Result<IdScheme> {
            self.0.id_scheme()
        }
        fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
            let mut list = Catalog::snapshots(self.0)?;
            for s in &mut list {
                s.series = "trusted-series".into();
            }
            Ok(list)
        }
    }

    impl ObjectSource for Relabelling<'_> {
        fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>> {
            self.0.snapshot_bytes(id)
        }
        fn get_objects(&self, kind: ObjectKind, d: &[[u8; 32]]) -> Result<Vec<StoredObject>> {
            self.0.get_objects(kind, d)
        }
    }

    #[test]
    fn a_snapshot_delivered_under_another_listing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
        Repository::init(&src_path, InitOptions::default()).unwrap();
        Repository::init(&dst_path, InitOptions::default()).unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, vec![7u8; 200_000]).unwrap();
        {
            let src = Repository::open_writer(&src_path).unwrap();
            backup(
                &src,
                &BackupRequest::one_disk("other-series", "d0", &image),
                &NoProgress,
            )
            .unwrap();
        }
        let src = Repository::open(&src_path).unwrap();
        let dst = Repository::open_writer(&dst_path).unwrap();
        let mut sink = LocalSink::new(&dst, Publisher::Operator);
        let selection = Selection {
            series: Some("trusted-series".into()),
            ..Selection::default()
        };
        let err = transfer(
            &Relabelling(&src),
            &mut sink,
            &selection,
            &SyncOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(err.to_string().contains("was listed as series"), "{err}");
        assert!(dst.index().snapshots().unwrap().is_empty());
    }

    /// A source that alters one byte of every chunk it hands over and recomputes the CRC
    /// (a hostile or broken side between repositories that share keys).
    struct Altering<'a>(&'a Repository);

    impl Catalog for Altering<'_> {
        fn describe(&self) -> String {
            "an altering source".into()
        }
        fn id_scheme(&self) -> Result<IdScheme> {
            self.0.id_scheme()
        }
        fn key_fingerprint(&self) -> Result<Option<[u8; 16]>> {
            self.0.key_fingerprint()
        }
        fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
            Catalog::snapshots(self.0)
        }
    }

    impl ObjectSource for Altering<'_> {
        fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>> {
            self.0.snapshot_bytes(id)
        }
        fn get_objects(&self, kind: ObjectKind, d: &[[u8; 32]]) -> Result<Vec<StoredObject>> {
            let mut objects = self.0.get_objects(kind, d)?;
            if kind == ObjectKind::Chunk {
                for (info, stored) in &mut objects {
                    let mid = stored.len() / 2;
                    stored[mid] ^= 1;
                    info.stored_crc = crc32c::crc32c(stored);
                }
            }
            Ok(objects)
        }
    }

    fn encrypted(root: &std::path::Path, shared: Option<crate::crypto::RepoKeys>) -> SlotSecret {
        let secret = SlotSecret::KeyFile(crate::crypto::SecretKey::random());
        let keys = NewKeys {
            secret: secret.clone(),
            kdf: tessera_format::keyslot::KdfParams::NONE,
            shared,
        };
        Repository::init_with(root, InitOptions::default(), Some(&keys)).unwrap();
        secret
    }

    #[test]
    fn a_record_altered_in_transit_between_repositories_sharing_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let secret = encrypted(&a, None);
        let keys = crate::ops::keys::keys_of(&RepoLocation::local(&a), &secret).unwrap();
        encrypted(&b, Some(keys.clone()));
        let c_secret = encrypted(&c, None);
        let image = dir.path().join("image");
        let random: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&image, random).unwrap();
        let known = KnownKeys(keys);
        let open =
            |root: &std::path::Path| Repository::open_writer_on(RepoStorage::local(root), &known);
        {
            let src = open(&a).unwrap();
            backup(
                &src,
                &BackupRequest::one_disk("s", "d0", &image),
                &NoProgress,
            )
            .unwrap();
        }
        let src = Repository::open_on(RepoStorage::local(&a), &known).unwrap();
        let dst = open(&b).unwrap();
        let mut sink = LocalSink::new(&dst, Publisher::Operator);
        let err = transfer(
            &Altering(&src),
            &mut sink,
            &Selection::default(),
            &SyncOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(err, crate::Error::UntrustedData { .. }), "{err}");
        assert!(err.to_string().contains("authentication"), "{err}");
        assert!(dst.index().snapshots().unwrap().is_empty());
        drop(sink);
        // Unaltered, the same records go through verbatim: same snapshot id.
        let mut sink = LocalSink::new(&dst, Publisher::Operator);
        let report = transfer(
            &src,
            &mut sink,
            &Selection::default(),
            &SyncOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(
            report.snapshots_copied,
            vec![src.index().snapshots().unwrap()[0].0]
        );
        // Other keys: refused before anything moves.
        let other = Repository::open_writer_on(RepoStorage::local(&c), &c_secret).unwrap();
        let mut sink = LocalSink::new(&other, Publisher::Operator);
        let err = transfer(
            &src,
            &mut sink,
            &Selection::default(),
            &SyncOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(err.to_string().contains("different keys"), "{err}");
        assert!(other.index().snapshots().unwrap().is_empty());
    }
}
