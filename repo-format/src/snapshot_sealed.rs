//! Snapshot files of encrypted repositories (format 2, SPEC.md §6a): a cleartext part that
//! a keyless holder needs for retention and reference counts, and a sealed private part.
//!
//! ```text
//! file    = "TSRSNAP1" version:u32 (2) public_len:u32 public roots sealed_len:u32 sealed crc32c:u32
//! public  = series:str time_us:i64 count:u32 disk*
//! disk    = size:u64 block_size:u32 page_entries:u32 page_count:u32 root_digest[32]
//! roots   = for each disk in order: page_count page digests (32 bytes each)
//! sealed  = the AEAD envelope (SPEC.md §23.3, record kind 3, codec 0) of `private`,
//!           bound to the id SHA-256(file bytes from 0 to the end of roots)
//! private = duration_ms:u64 tags:kv then for each disk in order: name:str identity:kv
//!           bytes_read:u64 zero_blocks:u64 new_chunks:u64 new_raw:u64 new_stored:u64
//! ```
//!
//! The file is still named by the SHA-256 of all its bytes and ends in a CRC-32C, so a
//! keyless holder checks it as it checks a plain one. This crate does no cryptography: it
//! cuts a [`Snapshot`] into the two parts ([`split`]), assembles the file around the sealed
//! bytes the engine produces ([`SealedParts::assemble`]), and decodes the cleartext part
//! ([`decode_public`]) and, once the engine has opened the seal, joins the private part
//! back ([`PublicSnapshot::join`]). Every rule of a plain snapshot holds for the joined one.

use sha2::{Digest as _, Sha256};

use crate::codec::{
    checksummed, push_crc_trailer, put_i64, put_len, put_string, put_u32, put_u64, Reader,
};
use crate::config::ENCRYPTED_FORMAT;
use crate::snapshot::{
    check_disk_count, put_kv, read_kv, DiskEntry, DiskStats, SnapshotHeader, FILE_WHAT,
    SNAPSHOT_MAGIC,
};
use crate::{DecodeError, EncodeError, PageDigest, Snapshot, SnapshotId};

/// Encoded size of one public disk entry.
const PUBLIC_DISK_LEN: usize = 52;
/// Names the private part in errors.
const PRIVATE_WHAT: &str = "snapshot private part";

/// The two parts of an encrypted snapshot file before sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedParts {
    /// The file's bytes from its start to the end of the root lists.
    cleartext: Vec<u8>,
    /// The private part's plaintext.
    private: Vec<u8>,
}

impl SealedParts {
    /// The id the seal is bound to: SHA-256 of the cleartext part.
    pub fn binding(&self) -> [u8; 32] {
        Sha256::digest(&self.cleartext).into()
    }

    /// The plaintext to seal.
    pub fn private(&self) -> &[u8] {
        &self.private
    }

    /// The whole file around `sealed` (the envelope of [`SealedParts::private`]), and its id.
    pub fn assemble(self, sealed: &[u8]) -> Result<(SnapshotId, Vec<u8>), EncodeError> {
        let mut out = self.cleartext;
        put_len(&mut out, FILE_WHAT, "sealed bytes", sealed.len())?;
        out.extend_from_slice(sealed);
        push_crc_trailer(&mut out);
        Ok((SnapshotId::of(&out), out))
    }
}

/// Cuts `snapshot` into its cleartext and private parts; refuses a snapshot that
/// [`Snapshot::validate`] refuses.
pub fn split(snapshot: &Snapshot) -> Result<SealedParts, EncodeError> {
    snapshot.validate()?;
    let h = &snapshot.header;
    let mut public = Vec::new();
    put_string(&mut public, FILE_WHAT, &h.series)?;
    put_i64(&mut public, h.time_us);
    put_len(&mut public, FILE_WHAT, "disks", h.disks.len())?;
    for d in &h.disks {
        put_u64(&mut public, d.size);
        put_u32(&mut public, d.block_size);
        put_u32(&mut public, d.page_entries);
        put_u32(&mut public, d.page_count);
        public.extend_from_slice(&d.root_digest);
    }
    let mut cleartext = Vec::with_capacity(public.len().saturating_add(64));
    cleartext.extend_from_slice(SNAPSHOT_MAGIC);
    put_u32(&mut cleartext, ENCRYPTED_FORMAT);
    put_len(&mut cleartext, FILE_WHAT, "public bytes", public.len())?;
    cleartext.extend_from_slice(&public);
    for root in &snapshot.roots {
        for p in root {
            cleartext.extend_from_slice(p.as_bytes());
        }
    }
    let mut private = Vec::new();
    put_u64(&mut private, h.duration_ms);
    put_kv(&mut private, "tags", &h.tags)?;
    for d in &h.disks {
        put_string(&mut private, PRIVATE_WHAT, &d.name)?;
        put_kv(&mut private, "identity entries", &d.identity)?;
        let s = &d.stats;
        for v in [
            s.bytes_read,
            s.zero_blocks,
            s.new_chunks,
            s.new_raw_bytes,
            s.new_stored_bytes,
        ] {
            put_u64(&mut private, v);
        }
    }
    Ok(SealedParts { cleartext, private })
}

/// What a keyless holder reads of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicDisk {
    /// Size in bytes.
    pub size: u64,
    /// Block size.
    pub block_size: u32,
    /// Digests per page.
    pub page_entries: u32,
    /// Number of pages.
    pub page_count: u32,
    /// SHA-256 of the concatenated page digests.
    pub root_digest: [u8; 32],
}

/// The cleartext part of an encrypted snapshot file, with its still-sealed private part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicSnapshot<'a> {
    /// Series name.
    pub series: String,
    /// Backup start time, Unix microseconds.
    pub time_us: i64,
    /// The disks, in order.
    pub disks: Vec<PublicDisk>,
    /// `roots[i]` lists the pages of `disks[i]`.
    pub roots: Vec<Vec<PageDigest>>,
    /// The id the seal must be bound to (SHA-256 of the cleartext part).
    pub binding: [u8; 32],
    /// The sealed private part.
    pub sealed: &'a [u8],
}

/// The format version of a snapshot file (1 plain, 2 encrypted), after checking its magic
/// and that the version is one this build reads.
pub fn snapshot_format(buf: &[u8]) -> Result<u32, DecodeError> {
    let mut r = Reader::new(buf, FILE_WHAT);
    r.magic(SNAPSHOT_MAGIC)?;
    r.version()
}

/// Decodes the cleartext part of an encrypted snapshot file: checks its checksum, its
/// structure, every disk's geometry and every root list against its root digest. The
/// private part stays sealed.
pub fn decode_public(buf: &[u8]) -> Result<PublicSnapshot<'_>, DecodeError> {
    let ((), mut r) = checksummed(buf, FILE_WHAT, |r| {
        r.magic(SNAPSHOT_MAGIC)?;
        match r.version()? {
            ENCRYPTED_FORMAT => Ok(()),
            other => Err(DecodeError::invalid(
                FILE_WHAT,
                format!("a format-{other} (plain) snapshot file where an encrypted one belongs"),
            )),
        }
    })?;
    let public_len = r.u32()? as usize;
    let mut p = Reader::new(r.take(public_len)?, FILE_WHAT);
    let series = p.string()?;
    crate::snapshot::validate_name("series name", &series)?;
    let time_us = p.i64()?;
    let ndisks = p.count(PUBLIC_DISK_LEN)?;
    check_disk_count(ndisks)?;
    let mut disks = Vec::with_capacity(ndisks);
    for i in 0..ndisks {
        let disk = PublicDisk {
            size: p.u64()?,
            block_size: p.u32()?,
            page_entries: p.u32()?,
            page_count: p.u32()?,
            root_digest: p.array()?,
        };
        // The geometry rules of a disk entry, under a placeholder name.
        placeholder_entry(i, &disk).validate()?;
        disks.push(disk);
    }
    p.finish()?;
    let roots = disks
        .iter()
        .map(|d| {
            // Cannot overflow: `page_count < 2^32`, so `32 n < 2^37`.
            let bytes = r.take((d.page_count as usize).saturating_mul(PageDigest::LEN))?;
            let root = bytes
                .chunks_exact(PageDigest::LEN)
                .map(PageDigest::from_slice)
                .collect::<Result<Vec<_>, _>>()?;
            if crate::snapshot::root_digest(&root) != d.root_digest {
                return Err(DecodeError::invalid(
                    FILE_WHAT,
                    "a root list does not match its root digest",
                ));
            }
            Ok(root)
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let cleartext_len = r.position();
    let sealed_len = r.u32()? as usize;
    let sealed = r.take(sealed_len)?;
    r.finish()?;
    let cleartext = buf.get(..cleartext_len).ok_or(DecodeError::Truncated {
        what: FILE_WHAT,
        needed: cleartext_len,
        available: buf.len(),
    })?;
    Ok(PublicSnapshot {
        series,
        time_us,
        disks,
        roots,
        binding: Sha256::digest(cleartext).into(),
        sealed,
    })
}

fn placeholder_entry(i: usize, d: &PublicDisk) -> DiskEntry {
    DiskEntry {
        name: format!("disk{i}"),
        size: d.size,
        block_size: d.block_size,
        page_entries: d.page_entries,
        page_count: d.page_count,
        root_digest: d.root_digest,
        identity: Vec::new(),
        stats: DiskStats::default(),
    }
}

impl PublicSnapshot<'_> {
    /// The whole snapshot, from the private part's plaintext (which the engine opened from
    /// [`PublicSnapshot::sealed`]); checks every rule of [`Snapshot::validate`].
    pub fn join(&self, private: &[u8]) -> Result<Snapshot, DecodeError> {
        let mut r = Reader::new(private, PRIVATE_WHAT);
        let duration_ms = r.u64()?;
        let tags = read_kv(&mut r)?;
        let mut disks = Vec::with_capacity(self.disks.len());
        for d in &self.disks {
            disks.push(DiskEntry {
                name: r.string()?,
                size: d.size,
                block_size: d.block_size,
                page_entries: d.page_entries,
                page_count: d.page_count,
                root_digest: d.root_digest,
                identity: read_kv(&mut r)?,
                stats: DiskStats {
                    bytes_read: r.u64()?,
                    zero_blocks: r.u64()?,
                    new_chunks: r.u64()?,
                    new_raw_bytes: r.u64()?,
                    new_stored_bytes: r.u64()?,
                },
            });
        }
        r.finish()?;
        let snapshot = Snapshot {
            header: SnapshotHeader {
                series: self.series.clone(),
                time_us: self.time_us,
                duration_ms,
                tags,
                disks,
            },
            roots: self.roots.clone(),
        };
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// What a keyless holder can catalogue: the snapshot with placeholder disk names
    /// (`disk0`, `disk1`, …), no tags, identity or statistics.
    pub fn without_private(&self) -> Snapshot {
        Snapshot {
            header: SnapshotHeader {
                series: self.series.clone(),
                time_us: self.time_us,
                duration_ms: 0,
                tags: Vec::new(),
                disks: self
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| placeholder_entry(i, d))
                    .collect(),
            },
            roots: self.roots.clone(),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::{decode_public, snapshot_format, split};
    use crate::snapshot::root_digest;
    use crate::{DiskEntry, DiskStats, PageDigest, Snapshot, SnapshotHeader, SnapshotId};

    fn sample() -> Snapshot {
        let roots = vec![vec![PageDigest([7; 32]), PageDigest([8; 32])]];
        Snapshot {
            header: SnapshotHeader {
                series: "vm1".into(),
                time_us: 42,
                duration_ms: 9,
                tags: vec![("owner".into(), "secret-team".into())],
                disks: vec![DiskEntry {
                    name: "private-disk-name".into(),
                    size: 600 * 65536,
                    block_size: 65536,
                    page_entries: 512,
                    page_count: 2,
                    root_digest: root_digest(&roots[0]),
                    identity: vec![("source.path".into(), "/srv/secret.img".into())],
                    stats: DiskStats {
                        bytes_read: 1,
                        zero_blocks: 2,
                        new_chunks: 3,
                        new_raw_bytes: 4,
                        new_stored_bytes: 5,
                    },
                }],
            },
            roots,
        }
    }

    #[test]
    fn split_assemble_decode_join_round_trips_and_hides_the_private_part() {
        let snap = sample();
        let parts = split(&snap).unwrap();
        let binding = parts.binding();
        // Stand-in for the engine's seal: the private bytes reversed.
        let sealed: Vec<u8> = parts.private().iter().rev().copied().collect();
        let (id, file) = parts.assemble(&sealed).unwrap();
        assert_eq!(SnapshotId::of(&file), id);
        assert_eq!(snapshot_format(&file).unwrap(), 2);
        for secret in [
            &b"private-disk-name"[..],
            b"secret-team",
            b"/srv/secret.img",
        ] {
            assert!(!file.windows(secret.len()).any(|w| w == secret));
        }
        let public = decode_public(&file).unwrap();
        assert_eq!(public.binding, binding);
        assert_eq!(public.sealed, &sealed[..]);
        assert_eq!(public.roots, snap.roots);
        let private: Vec<u8> = public.sealed.iter().rev().copied().collect();
        assert_eq!(public.join(&private).unwrap(), snap);
        assert_eq!(public.without_private().header.disks[0].name, "disk0");
        assert!(
            Snapshot::decode(&file).is_err(),
            "not a plain snapshot file"
        );
        let (_, plain) = snap.encode().unwrap();
        assert!(decode_public(&plain).is_err(), "not an encrypted one");
    }

    #[test]
    fn damaged_or_short_files_and_private_parts_are_refused() {
        let snap = sample();
        let parts = split(&snap).unwrap();
        let private = parts.private().to_vec();
        let (_, file) = parts.assemble(b"sealed").unwrap();
        for cut in [0, 10, 20, file.len() - 1] {
            assert!(decode_public(&file[..cut]).is_err());
        }
        let mut flipped = file.clone();
        flipped[30] ^= 1;
        assert!(decode_public(&flipped).is_err());
        let public = decode_public(&file).unwrap();
        assert!(public.join(&private[..private.len() - 1]).is_err());
        assert!(public.join(&[private.clone(), vec![0]].concat()).is_err());
    }
}
