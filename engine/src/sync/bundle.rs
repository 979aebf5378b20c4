//! Seed bundles (SPEC.md §22.2): a directory carrying selected snapshots and exactly the
//! objects they need, for moving a repository's data on a removable disk.
//!
//! Export writes **new packs** holding exactly the needed objects (copied verbatim,
//! stored bytes and all, with the pack writer), never whole source packs: a source pack
//! usually also holds objects of other snapshots or dead ones. Then the snapshot files,
//! then the manifest, last (see [`super::bundle_manifest`]).
//!
//! A bundle of an encrypted repository (manifest version 2) carries the sealed records and
//! snapshot files verbatim, the key fingerprint and the repository's key slots: the
//! destination is made from it with `init --keys-from BUNDLE` and then imports it like a
//! sync between repositories that share keys (SPEC.md §23.7).
//!
//! Import trusts nothing in the bundle. Before the destination is touched (or even
//! created) it checks the manifest, every listed file (plain name, regular file — not a
//! symbolic link —, size, SHA-256), every pack's footer, every object (decoded and hashed),
//! every snapshot file (hashes to its name, decodes), and that the bundle holds every page
//! and chunk its snapshots need. Only then does the ordinary transfer path run
//! ([`super::transfer`]), which checks each object once more as it appends it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use tessera_format::keyslot::KEYSLOT_LEN;
use tessera_format::pack::FooterEntry;
use tessera_format::{Compression, IdScheme, ManifestPage, ObjectKind, PackId, SnapshotId};

use crate::crypto::keyring::{unlock_any, KnownKeys, NoSecret, SecretSource};
use crate::crypto::{RepoCrypto, RepoKeys};
use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::location::RepoLocation;
use crate::progress::Progress;
use crate::repo::{InitOptions, Repository};
use crate::storage::local::LocalBackend;
use crate::storage::{key, Backend, ObjectKey, PutMode};
use crate::store::pack_scan::read_pack_contents;
use crate::store::pack_sink::PackSink;
use crate::store::reader::{read_object, read_stored};
use crate::store::session::TARGET_PACK_SIZE;

use super::bundle_manifest::{
    hash_file, is_key_slot_file, BundleBlockSize, BundleFile, Manifest, BUNDLE_FORMAT,
    BUNDLE_VERSION, ENCRYPTED_BUNDLE_VERSION, MANIFEST_NAME,
};
use super::shared_keys::{check_pairing, SharedKeys};
use super::sink::{block_sizes, decode_snapshot, LocalSink, Publisher};
use super::source::{Catalog, ObjectSource, SnapshotSummary, StoredObject, MAX_BATCH_BYTES};
use super::{Selection, SyncOptions, SyncReport};

/// What an export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    /// The snapshots, oldest first.
    #[serde(serialize_with = "crate::serde_ids::hex_list")]
    pub snapshots: Vec<SnapshotId>,
    /// Objects written (chunks and pages).
    pub objects: u64,
    /// Pack files written.
    pub packs: u64,
    /// Bytes of all files, manifest excluded.
    pub bytes: u64,
}

/// Writes a bundle of the selected snapshots of `repo` into `out` (which must not exist,
/// or be an empty directory).
pub fn export(
    repo: &Repository,
    out: &Path,
    selection: &Selection,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let occupied = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if occupied {
        return Err(Error::AlreadyExists {
            path: out.to_path_buf(),
        });
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let flat = LocalBackend::flat(out);
    let selected = selection.select(&Catalog::snapshots(repo)?)?;
    let mut w = BundleWriter {
        repo,
        sink: PackSink::new(&flat, TARGET_PACK_SIZE),
        seen: HashSet::new(),
        report: ExportReport::default(),
    };
    for s in &selected {
        progress.start(&format!("snapshot {}", &s.id.to_hex()[..8]), 0);
        w.snapshot(s.id)?;
        progress.finish();
        w.report.snapshots.push(s.id);
    }
    w.seal()?;
    let mut report = w.report;
    let mut files = Vec::new();
    for key in flat.list(key::PACKS)? {
        if let Some(id) = key.as_pack() {
            files.push(format!("{id}.pack"));
        }
    }
    for s in &selected {
        let key = ObjectKey::snapshot(s.id);
        let bytes = repo.backend().get(&key)?;
        flat.put_bytes(&key, PutMode::Create, &bytes)?;
        files.push(format!("{}.snap", s.id.to_hex()));
    }
    let config = repo.config();
    let fingerprint = config.encryption.fingerprint();
    if fingerprint.is_some() {
        // The key slots travel with the sealed records, so that the destination can be made
        // with the source's keys from the bundle alone (`init --keys-from BUNDLE`); a courier
        // learns nothing from them that the records themselves do not hide (SPEC.md §23.7).
        for key in repo.backend().list(key::KEYS)? {
            if let Some(id) = key.as_key_slot() {
                // Named canonically (a store may list the key with upper-case hex).
                let bytes = repo.backend().get(&key)?;
                flat.put_bytes(&ObjectKey::key_slot(&id), PutMode::Create, &bytes)?;
                files.push(format!("{}.key", hex::encode(id)));
            }
        }
    }
    let mut listed = Vec::new();
    for name in files {
        let (size, sha256) = hash_file(&out.join(&name))?;
        report.bytes += size;
        listed.push(BundleFile { name, size, sha256 });
    }
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        version: if fingerprint.is_some() {
            ENCRYPTED_BUNDLE_VERSION
        } else {
            BUNDLE_VERSION
        },
        source_repo: config.repo_id.to_string(),
        id_scheme: config.id_scheme as u8,
        default_block_size: config.default_block_size,
        compression: config.compression.to_string(),
        // Disk names are private in an encrypted repository (SPEC.md §23.1): not listed.
        block_sizes: block_sizes(&selected)
            .into_iter()
            .filter(|_| fingerprint.is_none())
            .map(|((series, disk), block_size)| BundleBlockSize {
                series,
                disk,
                block_size,
            })
            .collect(),
        snapshots: report.snapshots.iter().map(SnapshotId::to_hex).collect(),
        files: listed,
        key_fingerprint: fingerprint.map(hex::encode),
    };
    // The manifest goes last: a bundle without it is incomplete and refused by import.
    flat.put_bytes(
        &ObjectKey::bundle_manifest(),
        PutMode::Create,
        &manifest.encode(),
    )?;
    Ok(report)
}

struct BundleWriter<'a> {
    repo: &'a Repository,
    sink: PackSink<'a, ()>,
    seen: HashSet<(ObjectKind, [u8; 32])>,
    report: ExportReport,
}

impl BundleWriter<'_> {
    /// Appends the pages of snapshot `id` not written yet, each after its chunks.
    fn snapshot(&mut self, id: SnapshotId) -> Result<()> {
        let snapshot = self.repo.load_snapshot(id)?;
        for page in snapshot.roots.iter().flatten() {
            if self.seen.contains(&(ObjectKind::Page, page.0)) {
                continue;
            }
            let raw = self.repo.read_object(ObjectKind::Page, page.as_bytes())?;
            let decoded = ManifestPage::decode(&raw).map_err(|e| Error::ObjectCorrupt {
                kind: ObjectKind::Page,
                digest: page.to_hex(),
                pack: PackId([0; 16]),
                offset: 0,
                reason: e.to_string(),
            })?;
            let chunks: Vec<[u8; 32]> = decoded
                .digests
                .iter()
                .filter(|d| !d.is_zero())
                .map(|d| d.0)
                .filter(|d| self.seen.insert((ObjectKind::Chunk, *d)))
                .collect();
            self.copy(ObjectKind::Chunk, &chunks)?;
            self.seen.insert((ObjectKind::Page, page.0));
            self.copy(ObjectKind::Page, &[page.0])?;
        }
        Ok(())
    }

    fn copy(&mut self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<()> {
        let entries = self.repo.index().get_many(kind, digests)?;
        let backend = self.repo.backend();
        let objects: Vec<StoredObject> = digests
            .par_iter()
            .zip(entries)
            .map(|(d, e)| {
                let e = e.ok_or_else(|| Error::ObjectMissing {
                    kind,
                    digest: hex::encode(d),
                })?;
                read_stored(backend, self.repo.crypto(), kind, d, &e)
            })
            .collect::<Result<_>>()?;
        for (info, stored) in objects {
            self.sink.append(&info, &stored, ())?;
            self.report.objects += 1;
            if self.sink.seal_if_full()?.is_some() {
                self.report.packs += 1;
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if self.sink.seal()?.is_some() {
            self.report.packs += 1;
        }
        Ok(())
    }
}

/// A bundle that passed every check of the module docs, usable as an [`ObjectSource`].
pub struct Bundle {
    dir: PathBuf,
    flat: LocalBackend,
    /// The receiving repository's protection, which every object was checked under.
    crypto: Arc<RepoCrypto>,
    manifest: Manifest,
    objects: HashMap<(ObjectKind, [u8; 32]), (PackId, FooterEntry)>,
    snapshots: Vec<(SnapshotSummary, Vec<u8>)>,
}

impl Bundle {
    /// Opens and checks the bundle at `dir` (see the module docs) under `crypto`, the
    /// receiving repository's protection: plain for a bundle from a plain repository, else
    /// the keys whose fingerprint the manifest names.
    pub fn open(dir: &Path, crypto: Arc<RepoCrypto>, progress: &dyn Progress) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let bad = |name: &str, reason: String| bundle_error(dir, name, &reason);
        check_opened_for(dir, &manifest, &crypto)?;
        check_files(dir, &manifest, progress)?;
        let flat = LocalBackend::flat(dir);
        let mut objects = HashMap::new();
        for (f, stem) in manifest
            .files
            .iter()
            .filter_map(|f| Some((f, f.name.strip_suffix(".pack")?)))
        {
            let id: PackId = stem
                .parse()
                .map_err(|e| bad(&f.name, format!("not a pack id: {e}")))?;
            let contents = read_pack_contents(&flat, id)?;
            if let Some(problem) = contents.footer_problem {
                return Err(bad(&f.name, format!("pack footer is damaged: {problem}")));
            }
            for e in contents.entries {
                objects.insert((e.info.kind, e.info.digest.0), (id, e));
            }
        }
        // Every object decodes and hashes to its digest; pages are kept to check completeness.
        let page_digests = check_objects(dir, &flat, &crypto, &objects)?;
        let listed: HashSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        let mut snapshots = Vec::new();
        for id_hex in &manifest.snapshots {
            let name = format!("{id_hex}.snap");
            if !listed.contains(name.as_str()) {
                return Err(bad(
                    &name,
                    "snapshot named by the manifest is not listed among its files".into(),
                ));
            }
            let snapshot_id: SnapshotId = id_hex
                .parse()
                .map_err(|e| bad(&name, format!("not a snapshot id: {e}")))?;
            let bytes = flat.get(&ObjectKey::snapshot(snapshot_id))?;
            let (id, snapshot) = decode_snapshot(&dir.display().to_string(), &crypto, &bytes)?;
            if &id.to_hex() != id_hex {
                return Err(bad(&name, format!("content hashes to {id}")));
            }
            for page in snapshot.roots.iter().flatten() {
                let chunks = page_digests.get(&page.0).ok_or_else(|| {
                    bad(
                        &name,
                        format!("needs page {page}, which no pack of the bundle holds"),
                    )
                })?;
                if let Some(c) = chunks
                    .iter()
                    .find(|c| !objects.contains_key(&(ObjectKind::Chunk, **c)))
                {
                    return Err(bad(
                        &name,
                        format!(
                            "needs chunk {}, which no pack of the bundle holds",
                            hex::encode(c)
                        ),
                    ));
                }
            }
            snapshots.push((SnapshotSummary::of(id, &snapshot.header), bytes));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            flat,
            crypto,
            manifest,
            objects,
            snapshots,
        })
    }

    /// The checked manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// Reads every object of the bundle with every check under `crypto` (decoded, opened,
/// hashed to its digest); returns each page's non-zero chunk digests.
fn check_objects(
    dir: &Path,
    flat: &LocalBackend,
    crypto: &RepoCrypto,
    objects: &HashMap<(ObjectKind, [u8; 32]), (PackId, FooterEntry)>,
) -> Result<HashMap<[u8; 32], Vec<[u8; 32]>>> {
    let bad = |name: &str, reason: String| bundle_error(dir, name, &reason);
    let all: Vec<(PackId, FooterEntry)> = objects.values().copied().collect();
    Ok(all
        .par_iter()
        .map(|(pack, e)| {
            let name = format!("{pack}.pack");
            let raw = read_object(
                flat,
                crypto,
                e.info.kind,
                &e.info.digest.0,
                &ObjectEntry::found(*pack, e),
            )
            .map_err(|err| bad(&name, err.to_string()))?;
            if e.info.kind != ObjectKind::Page {
                return Ok(None);
            }
            let page = ManifestPage::decode(&raw)
                .map_err(|err| bad(&name, format!("page {}: {err}", e.info.digest)))?;
            Ok(Some((
                e.info.digest.0,
                page.digests
                    .iter()
                    .filter(|d| !d.is_zero())
                    .map(|d| d.0)
                    .collect(),
            )))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// Refuses a manifest whose key fingerprint is not the one of `crypto`, the keys the
/// bundle is opened under (none for a plain bundle).
fn check_opened_for(dir: &Path, manifest: &Manifest, crypto: &RepoCrypto) -> Result<()> {
    let bad = |reason: String| bundle_error(dir, MANIFEST_NAME, &reason);
    if manifest.fingerprint().map_err(bad)? != crypto.keys().map(RepoKeys::fingerprint) {
        return Err(bad(
            "its key fingerprint is not the one the bundle was opened for (changed meanwhile?)"
                .into(),
        ));
    }
    Ok(())
}

fn bundle_error(dir: &Path, name: &str, reason: &str) -> Error {
    Error::UntrustedData {
        from: format!("seed bundle {}", dir.display()),
        reason: format!("file {name}: {reason}; nothing was imported"),
    }
}

/// Checks every listed file: a regular file (not a symbolic link) of the listed size and
/// SHA-256.
fn check_files(dir: &Path, manifest: &Manifest, progress: &dyn Progress) -> Result<()> {
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    progress.start("checking bundle", total);
    for f in &manifest.files {
        check_file(dir, f)?;
        progress.advance(f.size);
    }
    progress.finish();
    Ok(())
}

/// Checks one listed file: a regular file (not a symbolic link) of the listed size and
/// SHA-256.
fn check_file(dir: &Path, f: &BundleFile) -> Result<()> {
    let bad = |reason: String| bundle_error(dir, &f.name, &reason);
    let path = dir.join(&f.name);
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| bad(format!("missing or unreadable ({e})")))?;
    if meta.file_type().is_symlink() {
        return Err(bad("is a symbolic link".into()));
    }
    if !meta.file_type().is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() != f.size {
        return Err(bad(format!(
            "is {} bytes, the manifest says {} (truncated or altered)",
            meta.len(),
            f.size
        )));
    }
    let (len, sha) = hash_file(&path)?;
    if len != f.size || sha != f.sha256 {
        return Err(bad(format!(
            "content hashes to {sha}, the manifest says {} (altered)",
            f.sha256
        )));
    }
    Ok(())
}

impl Catalog for Bundle {
    fn describe(&self) -> String {
        format!("seed bundle {}", self.dir.display())
    }

    fn id_scheme(&self) -> Result<IdScheme> {
        IdScheme::try_from(self.manifest.id_scheme).map_err(|e| Error::UntrustedData {
            from: self.describe(),
            reason: e.to_string(),
        })
    }

    fn key_fingerprint(&self) -> Result<Option<[u8; 16]>> {
        self.manifest
            .fingerprint()
            .map_err(|reason| Error::UntrustedData {
                from: self.describe(),
                reason,
            })
    }

    fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        Ok(self.snapshots.iter().map(|(s, _)| s.clone()).collect())
    }
}

impl ObjectSource for Bundle {
    fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>> {
        self.snapshots
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| Error::SnapshotNotFound { query: id.to_hex() })
    }

    fn get_objects(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<StoredObject>> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for d in digests {
            let (pack, e) = self
                .objects
                .get(&(kind, *d))
                .ok_or_else(|| Error::ObjectMissing {
                    kind,
                    digest: format!("{} (in {})", hex::encode(d), self.describe()),
                })?;
            if !out.is_empty() && bytes + u64::from(e.info.stored_len) > MAX_BATCH_BYTES {
                break;
            }
            bytes += u64::from(e.info.stored_len);
            out.push(read_stored(
                &self.flat,
                &self.crypto,
                kind,
                d,
                &ObjectEntry::found(*pack, e),
            )?);
        }
        Ok(out)
    }
}

/// The keys of the encrypted repository the bundle at `dir` was exported from, unlocked with
/// `source` from the key slots it carries (`init --keys-from BUNDLE`). A slot is bound to
/// its repository id and must open keys of the manifest's fingerprint, so a planted slot
/// is skipped like one planted in a repository.
pub fn bundle_keys(dir: &Path, source: &dyn SecretSource) -> Result<RepoKeys> {
    let manifest = Manifest::read(dir)?;
    let bad = |reason: String| bundle_error(dir, MANIFEST_NAME, &reason);
    let Some(fingerprint) = manifest.fingerprint().map_err(bad)? else {
        return Err(Error::Usage(format!(
            "the seed bundle {} comes from a plain repository: it has no keys to share (import it into a plain repository)",
            dir.display()
        )));
    };
    let repo_id = manifest.source_repo_id().map_err(bad)?;
    check_key_files(dir, &manifest)?;
    unlock_any(&[(&LocalBackend::flat(dir), repo_id, fingerprint)], source)
}

/// Checks the key slot files of a bundle before any is read for unlocking (the rest of the
/// bundle is checked later, by [`Bundle::open`]): each listed one a regular file of a
/// slot's size and its listed SHA-256, and no `.key` file in the directory that the
/// manifest does not list (a planted, huge or blocking file is never opened).
fn check_key_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    let bad = |name: &str, reason: String| bundle_error(dir, name, &reason);
    let listed: HashSet<&str> = manifest
        .files
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| is_key_slot_file(n))
        .collect();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_key_slot_file(&name) && !listed.contains(name.as_str()) {
            return Err(bad(
                &name,
                "is a key slot file the manifest does not list".into(),
            ));
        }
    }
    for f in manifest
        .files
        .iter()
        .filter(|f| listed.contains(f.name.as_str()))
    {
        if f.size != KEYSLOT_LEN as u64 {
            return Err(bad(
                &f.name,
                format!(
                    "is listed with {} bytes; a key slot has {KEYSLOT_LEN}",
                    f.size
                ),
            ));
        }
        check_file(dir, f)?;
    }
    Ok(())
}

/// Imports a bundle into the repository at `repo`. A bundle from a plain repository
/// creates it (with the source's default block size and compression) when it does not
/// exist; one from an encrypted repository needs it made first with `init --keys-from`
/// (the bundle or the source), so that both share keys, and `secrets` unlocks it (the
/// secret may open the destination's slots or those the bundle carries). The bundle is
/// checked in full before the repository is created or opened as the writer.
pub fn import(
    bundle_dir: &Path,
    repo: &RepoLocation,
    opts: &SyncOptions,
    progress: &dyn Progress,
    recovered: &dyn Fn(&crate::recovery::Recovery),
    secrets: &dyn SecretSource,
) -> Result<SyncReport> {
    let manifest = Manifest::read(bundle_dir)?;
    let bad = |reason: String| bundle_error(bundle_dir, MANIFEST_NAME, &reason);
    let fingerprint = manifest.fingerprint().map_err(bad)?;
    let described = format!("seed bundle {}", bundle_dir.display());
    let exists = repo.exists()?;
    let keys = if exists {
        let storage = repo.storage()?;
        let config = storage.read_config()?;
        let ours = config.encryption.fingerprint();
        check_pairing(&described, fingerprint, &repo.to_string(), ours)?;
        match (fingerprint, ours) {
            (Some(theirs), Some(ours)) => {
                let source_id = manifest.source_repo_id().map_err(bad)?;
                check_key_files(bundle_dir, &manifest)?;
                let flat = LocalBackend::flat(bundle_dir);
                let keys = unlock_any(
                    &[
                        (&*storage.backend, config.repo_id, ours),
                        (&flat, source_id, theirs),
                    ],
                    secrets,
                )?;
                SharedKeys::Encrypted(KnownKeys(keys))
            }
            _ => SharedKeys::Plain(NoSecret),
        }
    } else if fingerprint.is_some() {
        return Err(Error::Usage(format!(
            "the {described} comes from an encrypted repository: make the destination first with `tessera init {repo} --keys-from {}` (it takes the keys from the bundle, unlocked with the source's passphrase or key file); nothing was imported",
            bundle_dir.display()
        )));
    } else {
        SharedKeys::Plain(NoSecret)
    };
    let crypto = match &keys {
        SharedKeys::Encrypted(KnownKeys(k)) => {
            RepoCrypto::encrypted(k).map_err(|e| Error::Internal(format!("record cipher: {e}")))?
        }
        SharedKeys::Plain(_) => RepoCrypto::plain(),
    };
    let bundle = Bundle::open(bundle_dir, Arc::new(crypto), progress)?;
    if !exists {
        let m = bundle.manifest();
        let compression = Compression::parse(&m.compression).map_err(|e| Error::UntrustedData {
            from: bundle.describe(),
            reason: format!("compression {:?}: {e}", m.compression),
        })?;
        let opts = InitOptions {
            block_size: m.default_block_size,
            compression,
            ..InitOptions::default()
        };
        opts.validate().map_err(|e| Error::UntrustedData {
            from: bundle.describe(),
            reason: format!(
                "the bundle's repository parameters are unusable ({e}); nothing was created"
            ),
        })?;
        repo.init(opts, None)?;
    }
    let repo = repo.open_writer(keys.source())?;
    recovered(&repo.recovery);
    let mut sink = LocalSink::new(&repo, Publisher::Operator);
    super::transfer::transfer(&bundle, &mut sink, &Selection::default(), opts, progress)
}
