//! What the store calls (SPEC.md §23.3): one [`RepoCrypto`] per open repository names
//! objects under the repository's id scheme and protects their stored bytes under its
//! encryption mode. A plain repository gets SHA-256 ids and stored bytes as they are; an
//! encrypted one gets keyed ids, sealed chunks and signed pages. Nothing outside this
//! module sees a key: callers pass bytes in and get bytes or a [`CryptoError`] out.

use std::borrow::Cow;

use tessera_format::{is_all_zero, ChunkDigest, Codec, ObjectKind};

use crate::crypto::record::{
    signed_cleartext, RecordAd, RecordCipher, RecordKind, PREFIX_LEN, RECORD_OVERHEAD,
};
use crate::crypto::{CryptoError, IdHasher, RepoKeys};

/// How an object's stored bytes are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Stored as encoded (plain repositories).
    Plain,
    /// Encrypted and authenticated (chunks of encrypted repositories).
    Sealed,
    /// Authenticated, readable without the key (pages of encrypted repositories).
    Signed,
}

/// The id scheme and record protection of one open repository.
#[derive(Debug)]
pub struct RepoCrypto {
    ids: IdHasher,
    cipher: Option<RecordCipher>,
    /// The keys, for opening a repository that shares them (`repair --from`).
    keys: Option<RepoKeys>,
}

impl RepoCrypto {
    /// A plain repository: SHA-256 ids, nothing sealed.
    pub fn plain() -> Self {
        Self {
            ids: IdHasher::Plain,
            cipher: None,
            keys: None,
        }
    }

    /// An encrypted repository under `keys`, writing as a new writer (fresh writer id).
    pub fn encrypted(keys: &RepoKeys) -> Result<Self, CryptoError> {
        Ok(Self {
            ids: keys.id_hasher(),
            cipher: Some(keys.record_cipher()?),
            keys: Some(keys.clone()),
        })
    }

    /// The keys of an encrypted repository (wiped on drop, never printed).
    pub fn keys(&self) -> Option<&RepoKeys> {
        self.keys.as_ref()
    }

    /// Whether records are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Where the encoded bytes start in a slot given to [`RepoCrypto::protect_in_place`].
    pub fn payload_offset(&self) -> usize {
        if self.cipher.is_some() {
            PREFIX_LEN
        } else {
            0
        }
    }

    /// Bytes protection adds to an object's encoded bytes (0 for a plain repository).
    pub fn overhead(&self) -> usize {
        if self.cipher.is_some() {
            RECORD_OVERHEAD
        } else {
            0
        }
    }

    /// Protects in place: `slot[payload_offset()..payload_offset() + len]` holds the
    /// encoded bytes; returns the length of the stored form, which starts at `slot[0]`
    /// (`len + overhead()`; a plain repository changes nothing).
    pub fn protect_in_place(
        &self,
        kind: ObjectKind,
        codec: Codec,
        raw_len: u32,
        id: &[u8; 32],
        slot: &mut [u8],
        len: usize,
    ) -> Result<usize, CryptoError> {
        let Some(cipher) = &self.cipher else {
            return Ok(len);
        };
        let ad = ad(kind, codec, raw_len, id);
        cipher.protect_in_place(&ad, slot, len, kind == ObjectKind::Page)
    }

    /// Like [`RepoCrypto::unprotect`] for a sealed chunk stored without compression:
    /// decrypts straight into `dst` (exactly the raw length). On failure `dst` holds bytes
    /// that must be discarded.
    pub fn unprotect_into(
        &self,
        kind: ObjectKind,
        codec: Codec,
        id: &[u8; 32],
        stored: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError> {
        let raw_len = u32::try_from(dst.len()).map_err(|_| CryptoError::Length {
            expected: u32::MAX as usize,
            found: dst.len(),
        })?;
        if let (Some(cipher), ObjectKind::Chunk) = (&self.cipher, kind) {
            return cipher.open_into(&ad(kind, codec, raw_len, id), stored, dst);
        }
        let encoded = self.unprotect(kind, codec, raw_len, id, stored)?;
        if encoded.len() != dst.len() {
            return Err(CryptoError::Length {
                expected: dst.len(),
                found: encoded.len(),
            });
        }
        dst.copy_from_slice(&encoded);
        Ok(())
    }

    /// Seals a snapshot header for the index catalog under the snapshot id (a plain
    /// repository stores it as it is).
    pub fn seal_catalog(&self, id: &[u8; 32], header: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.cipher {
            None => Ok(header.to_vec()),
            Some(cipher) => cipher.seal(&catalog_ad(id, header.len())?, header),
        }
    }

    /// Opens a catalog entry sealed by [`RepoCrypto::seal_catalog`].
    pub fn open_catalog<'a>(
        &self,
        id: &[u8; 32],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, CryptoError> {
        match &self.cipher {
            None => Ok(Cow::Borrowed(stored)),
            Some(cipher) => {
                let len = stored.len().saturating_sub(RECORD_OVERHEAD);
                cipher.open(&catalog_ad(id, len)?, stored).map(Cow::Owned)
            }
        }
    }

    /// Seals the private part of a snapshot file, bound to `binding` (the SHA-256 of the
    /// file's cleartext part, SPEC.md §6a). A plain repository has no such part.
    pub fn seal_snapshot_private(
        &self,
        binding: &[u8; 32],
        private: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let cipher = self.cipher.as_ref().ok_or(CryptoError::Authentication)?;
        cipher.seal(&snapshot_ad(binding, private.len())?, private)
    }

    /// Opens the sealed private part of a snapshot file whose cleartext part hashes to
    /// `binding`: fails with [`CryptoError::Authentication`] when either part was altered
    /// or the sealed part belongs to another file.
    pub fn open_snapshot_private(
        &self,
        binding: &[u8; 32],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let cipher = self.cipher.as_ref().ok_or(CryptoError::Authentication)?;
        let len = sealed.len().saturating_sub(RECORD_OVERHEAD);
        cipher.open(&snapshot_ad(binding, len)?, sealed)
    }

    /// The id hasher.
    pub fn ids(&self) -> &IdHasher {
        &self.ids
    }

    /// The id of a data block; all-zero blocks get [`ChunkDigest::ZERO`] and are never
    /// hashed (or stored).
    pub fn chunk_id(&self, block: &[u8]) -> ChunkDigest {
        if is_all_zero(block) {
            ChunkDigest::ZERO
        } else {
            self.ids.chunk(block)
        }
    }

    /// Whether `raw` is the content `id` names.
    pub fn id_matches(&self, kind: ObjectKind, raw: &[u8], id: &[u8; 32]) -> bool {
        let _ = kind; // chunk and page ids are computed alike; kinds live in separate namespaces
        &self.ids.id(raw) == id
    }

    /// How objects of `kind` are stored in this repository.
    pub fn protection(&self, kind: ObjectKind) -> Protection {
        match (&self.cipher, kind) {
            (None, _) => Protection::Plain,
            (Some(_), ObjectKind::Chunk) => Protection::Sealed,
            (Some(_), ObjectKind::Page) => Protection::Signed,
        }
    }

    /// Protects the encoded (compressed or raw) bytes of an object and appends the stored
    /// form to `out`.
    pub fn protect(
        &self,
        kind: ObjectKind,
        codec: Codec,
        raw_len: u32,
        id: &[u8; 32],
        encoded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let Some(cipher) = &self.cipher else {
            out.extend_from_slice(encoded);
            return Ok(());
        };
        let ad = ad(kind, codec, raw_len, id);
        match kind {
            ObjectKind::Chunk => cipher.seal_into(&ad, encoded, out),
            ObjectKind::Page => cipher.sign_into(&ad, encoded, out),
        }
    }

    /// Checks and removes the protection of an object's stored bytes: the encoded bytes.
    /// Fails with [`CryptoError::Authentication`] when the stored bytes, or the header
    /// fields they are bound to, were altered or belong to another id.
    pub fn unprotect<'a>(
        &self,
        kind: ObjectKind,
        codec: Codec,
        raw_len: u32,
        id: &[u8; 32],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, CryptoError> {
        let Some(cipher) = &self.cipher else {
            return Ok(Cow::Borrowed(stored));
        };
        let ad = ad(kind, codec, raw_len, id);
        match kind {
            ObjectKind::Chunk => cipher.open(&ad, stored).map(Cow::Owned),
            ObjectKind::Page => cipher.check_signed(&ad, stored).map(Cow::Borrowed),
        }
    }
}

/// The encoded bytes of a page as a keyless holder reads them (no check of the seal): the
/// cleartext of a signed page, or the stored bytes of a plain one.
pub fn page_without_key(protection: Protection, stored: &[u8]) -> Result<&[u8], CryptoError> {
    match protection {
        Protection::Plain => Ok(stored),
        Protection::Signed => signed_cleartext(stored),
        Protection::Sealed => Err(CryptoError::Authentication),
    }
}

fn catalog_ad(id: &[u8; 32], len: usize) -> Result<RecordAd, CryptoError> {
    let mut ad = snapshot_ad(id, len)?;
    ad.kind = RecordKind::CatalogEntry;
    Ok(ad)
}

fn snapshot_ad(binding: &[u8; 32], len: usize) -> Result<RecordAd, CryptoError> {
    Ok(RecordAd {
        kind: RecordKind::SnapshotPrivate,
        codec: Codec::None as u8,
        raw_len: u32::try_from(len).map_err(|_| CryptoError::Length {
            expected: u32::MAX as usize,
            found: len,
        })?,
        id: *binding,
    })
}

fn ad(kind: ObjectKind, codec: Codec, raw_len: u32, id: &[u8; 32]) -> RecordAd {
    RecordAd {
        kind: match kind {
            ObjectKind::Chunk => RecordKind::Chunk,
            ObjectKind::Page => RecordKind::Page,
        },
        codec: codec as u8,
        raw_len,
        id: *id,
    }
}

#[cfg(test)]
mod tests {
    use super::{page_without_key, Protection, RepoCrypto};
    use crate::crypto::{CryptoError, RepoKeys};
    use tessera_format::{ChunkDigest, Codec, ObjectKind};

    #[test]
    fn plain_repositories_keep_sha256_ids_and_bytes_as_they_are() {
        let c = RepoCrypto::plain();
        assert_eq!(c.chunk_id(b"block"), ChunkDigest::of(b"block"));
        assert_eq!(c.chunk_id(&[0u8; 4096]), ChunkDigest::ZERO);
        let mut out = Vec::new();
        c.protect(
            ObjectKind::Chunk,
            Codec::None,
            5,
            &[1; 32],
            b"block",
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"block");
        assert_eq!(
            &*c.unprotect(ObjectKind::Chunk, Codec::None, 5, &[1; 32], &out)
                .unwrap(),
            b"block"
        );
    }

    /// The tamper cases of issue 16 at the codec level: a flipped ciphertext byte, a valid
    /// record presented under another id or as another kind, a truncated record, a record
    /// from a repository with other keys.
    #[test]
    fn encrypted_objects_detect_tampering_swaps_and_truncation() {
        let keys = RepoKeys::generate();
        let c = RepoCrypto::encrypted(&keys).unwrap();
        let block = b"some block content".repeat(100);
        let id = c.chunk_id(&block);
        assert_ne!(id, ChunkDigest::of(&block), "ids are keyed");
        assert!(c.id_matches(ObjectKind::Chunk, &block, &id.0));
        let mut stored = Vec::new();
        let raw_len = block.len() as u32;
        c.protect(
            ObjectKind::Chunk,
            Codec::None,
            raw_len,
            &id.0,
            &block,
            &mut stored,
        )
        .unwrap();
        assert!(
            !stored.windows(18).any(|w| w == b"some block content"),
            "encrypted"
        );
        let open = |bytes: &[u8], id: &[u8; 32], kind| {
            c.unprotect(kind, Codec::None, raw_len, id, bytes)
                .map(std::borrow::Cow::into_owned)
        };
        assert_eq!(open(&stored, &id.0, ObjectKind::Chunk).unwrap(), block);
        let mut flipped = stored.clone();
        flipped[100] ^= 0x20;
        assert_eq!(
            open(&flipped, &id.0, ObjectKind::Chunk),
            Err(CryptoError::Authentication)
        );
        let other_id = c.chunk_id(b"other");
        assert_eq!(
            open(&stored, &other_id.0, ObjectKind::Chunk),
            Err(CryptoError::Authentication)
        );
        assert!(open(&stored, &id.0, ObjectKind::Page).is_err());
        assert!(open(&stored[..stored.len() - 1], &id.0, ObjectKind::Chunk).is_err());
        assert!(open(&stored[..10], &id.0, ObjectKind::Chunk).is_err());
        let stranger = RepoCrypto::encrypted(&RepoKeys::generate()).unwrap();
        assert!(stranger
            .unprotect(ObjectKind::Chunk, Codec::None, raw_len, &id.0, &stored)
            .is_err());
    }

    #[test]
    fn pages_are_signed_and_readable_without_the_key() {
        let c = RepoCrypto::encrypted(&RepoKeys::generate()).unwrap();
        let page = b"TSRPAGE1 and its chunk ids";
        let id = c.ids().page(page);
        let mut stored = Vec::new();
        c.protect(
            ObjectKind::Page,
            Codec::None,
            page.len() as u32,
            &id.0,
            page,
            &mut stored,
        )
        .unwrap();
        assert_eq!(c.protection(ObjectKind::Page), Protection::Signed);
        assert_eq!(page_without_key(Protection::Signed, &stored).unwrap(), page);
        let mut forged = stored.clone();
        forged[30] ^= 1;
        assert_eq!(
            c.unprotect(
                ObjectKind::Page,
                Codec::None,
                page.len() as u32,
                &id.0,
                &forged
            ),
            Err(CryptoError::Authentication)
        );
    }
}
