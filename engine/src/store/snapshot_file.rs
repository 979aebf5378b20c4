//! Snapshot files as a repository stores them: the plain layout (SPEC.md §6) in a plain
//! repository, the cleartext part plus sealed private part (§6a) in an encrypted one. A
//! repository reads only its own layout, so a plain file planted in an encrypted
//! repository (which nothing authenticates) is refused as damage.

use tessera_format::snapshot_sealed::{decode_public, split};
use tessera_format::{Snapshot, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};

/// Encodes `snapshot` as `crypto`'s repository stores it, with its id.
pub fn encode(crypto: &RepoCrypto, snapshot: &Snapshot) -> Result<(SnapshotId, Vec<u8>)> {
    let unencodable = |source| Error::Unencodable {
        what: format!("snapshot of series {:?}", snapshot.header.series),
        source,
    };
    if !crypto.is_encrypted() {
        return snapshot.encode().map_err(unencodable);
    }
    let parts = split(snapshot).map_err(unencodable)?;
    let sealed = crypto
        .seal_snapshot_private(&parts.binding(), parts.private())
        .map_err(|e| Error::Internal(format!("sealing a snapshot: {e}")))?;
    parts.assemble(&sealed).map_err(unencodable)
}

/// Decodes a snapshot file of `crypto`'s repository, checking its structure and, when
/// encrypted, that its private part opens under the repository's key and belongs to this
/// file's cleartext part. Returns the reason it is unusable otherwise.
pub fn decode(crypto: &RepoCrypto, bytes: &[u8]) -> std::result::Result<Snapshot, String> {
    if !crypto.is_encrypted() {
        return Snapshot::decode(bytes).map_err(|e| e.to_string());
    }
    let public = decode_public(bytes).map_err(|e| e.to_string())?;
    let private = crypto
        .open_snapshot_private(&public.binding, public.sealed)
        .map_err(|e| format!("private part: {e}"))?;
    public.join(&private).map_err(|e| e.to_string())
}

/// Decodes a snapshot file received from elsewhere ([`decode`]) and checks that it is in
/// canonical form: exactly the bytes this repository's encoding of the decoded snapshot
/// gives (plain), or, when encrypted, whose cleartext part and private plaintext are
/// exactly that encoding's (the sealed envelope itself is random, so it is kept as
/// received). A file that is not would be stored under an id no writer here produces.
pub fn decode_canonical(
    crypto: &RepoCrypto,
    bytes: &[u8],
) -> std::result::Result<Snapshot, String> {
    let not_canonical =
        || "not in canonical form (it would be stored under another id)".to_string();
    if !crypto.is_encrypted() {
        let snapshot = Snapshot::decode(bytes).map_err(|e| e.to_string())?;
        return match snapshot.encode() {
            Ok((again, _)) if again == SnapshotId::of(bytes) => Ok(snapshot),
            _ => Err(not_canonical()),
        };
    }
    let public = decode_public(bytes).map_err(|e| e.to_string())?;
    let private = crypto
        .open_snapshot_private(&public.binding, public.sealed)
        .map_err(|e| format!("private part: {e}"))?;
    let snapshot = public.join(&private).map_err(|e| e.to_string())?;
    let parts = split(&snapshot).map_err(|e| e.to_string())?;
    if parts.private() != private.as_slice() {
        return Err(not_canonical());
    }
    match parts.assemble(public.sealed) {
        Ok((again, _)) if again == SnapshotId::of(bytes) => Ok(snapshot),
        _ => Err(not_canonical()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{decode, encode};
    use crate::crypto::{RepoCrypto, RepoKeys};
    use tessera_format::snapshot::root_digest;
    use tessera_format::{DiskEntry, DiskStats, PageDigest, Snapshot, SnapshotHeader, SnapshotId};

    /// A small valid snapshot of `series` (also for other modules' tests).
    pub(crate) fn snapshot(series: &str) -> Snapshot {
        let roots = vec![vec![PageDigest([3; 32])]];
        Snapshot {
            header: SnapshotHeader {
                series: series.into(),
                time_us: 1,
                duration_ms: 2,
                tags: vec![("k".into(), "v".into())],
                disks: vec![DiskEntry {
                    name: "d0".into(),
                    size: 65536,
                    block_size: 65536,
                    page_entries: 512,
                    page_count: 1,
                    root_digest: root_digest(&roots[0]),
                    identity: vec![],
                    stats: DiskStats::default(),
                }],
            },
            roots,
        }
    }

    /// A snapshot's private part does not open under another key, in another file (a
    /// sealed part spliced onto another cleartext part), or after any flipped byte; a
    /// plain file is refused by an encrypted repository and the other way round.
    #[test]
    fn sealed_snapshots_refuse_tampering_splicing_and_the_other_layout() {
        let keys = RepoKeys::generate();
        let crypto = RepoCrypto::encrypted(&keys).unwrap();
        let (id, file) = encode(&crypto, &snapshot("vm1")).unwrap();
        assert_eq!(SnapshotId::of(&file), id);
        assert_eq!(decode(&crypto, &file).unwrap(), snapshot("vm1"));
        let stranger = RepoCrypto::encrypted(&RepoKeys::generate()).unwrap();
        assert!(decode(&stranger, &file).is_err());
        let (_, other) = encode(&crypto, &snapshot("vm2")).unwrap();
        // Splice: vm2's cleartext part with vm1's sealed part (CRC recomputed). A file is
        // cleartext ‖ sealed_len:u32 ‖ sealed ‖ crc:u32.
        let cleartext_end = |f: &[u8]| {
            let sealed = tessera_format::snapshot_sealed::decode_public(f)
                .unwrap()
                .sealed
                .len();
            f.len() - 4 - sealed - 4
        };
        let cut_other = cleartext_end(&other);
        let cut_file = cleartext_end(&file);
        let mut spliced = other[..cut_other].to_vec();
        spliced.extend_from_slice(&file[cut_file..file.len() - 4]);
        let crc = crc32c::crc32c(&spliced);
        spliced.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&crypto, &spliced).unwrap_err();
        assert!(err.contains("authentication"), "{err}");
        for i in [0, 20, file.len() / 2, file.len() - 10] {
            let mut flipped = file.clone();
            flipped[i] ^= 1;
            assert!(decode(&crypto, &flipped).is_err(), "byte {i}");
        }
        let (_, plain) = encode(&RepoCrypto::plain(), &snapshot("vm1")).unwrap();
        assert!(decode(&crypto, &plain).is_err());
        assert!(decode(&RepoCrypto::plain(), &file).is_err());
    }
}
