//! The AEAD record codec (SPEC.md §23.3): how a record's stored bytes are sealed under the
//! data key and bound to the id and kind that name them.
//!
//! ```text
//! sealed    = writer[16] counter:u64 ciphertext tag[16]   chunks, snapshot private parts
//! signed    = writer[16] counter:u64 cleartext  tag[16]   manifest pages (readable keyless)
//! subkey    = HKDF-SHA-256(ikm = data key, salt = writer, info = "tessera record aes-256-gcm")
//! nonce     = counter:u64 (LE) ‖ 00 00 00 00
//! ad        = "TSR-REC2" kind:u8 codec:u8 raw_len:u32 id[32]          (46 bytes)
//! ```
//!
//! The AEAD is AES-256-GCM (§23.3 gives the measurement that chose it over XChaCha20-
//! Poly1305). GCM's 96-bit nonce is too short to draw at random for billions of records, so
//! nonces are counted instead, under a key no other writer uses: every [`RecordCipher`]
//! (one per process that opens a repository) draws a random 128-bit *writer id* from the
//! operating system and derives its own subkey from it. Nonce reuse would need two
//! writers to draw the same 128-bit id (probability below 2^-64 for 2^32 writers) or one
//! writer to count past 2^64; a crash loses the counter and the id with it, and the next
//! process draws a new id, so nothing is persisted and nothing can be replayed. Readers
//! derive (and cache) the subkey of whatever writer sealed a record.
//!
//! A *signed* record is the same AEAD with an empty plaintext and the cleartext appended to
//! the associated data: a keyless holder reads the cleartext, only a key holder can check
//! or forge it.
//!
//! The associated data names the record's kind, codec, raw length and id, so a valid
//! record moved under another id (or relabelled as another kind, or with its codec field
//! changed) fails authentication instead of decrypting to data that belongs elsewhere.
//! Compaction and sync copy records verbatim: their id and header travel with them, so
//! the seal stays valid and nothing is re-encrypted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hkdf::Hkdf;
use sha2::Sha256;

use crate::crypto::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::crypto::secret::SecretKey;
use crate::crypto::CryptoError;

/// Length of the writer id.
const WRITER_LEN: usize = 16;
/// Length of the writer id and counter that start every envelope.
pub const PREFIX_LEN: usize = WRITER_LEN + 8;
/// Bytes a sealed or signed record adds to its plaintext.
pub const RECORD_OVERHEAD: usize = PREFIX_LEN + TAG_LEN;
const _: () = assert!(RECORD_OVERHEAD == tessera_format::pack::SEALED_OVERHEAD as usize);
/// Subkeys of other writers a reader keeps; past this the cache starts over.
const SUBKEY_CACHE: usize = 256;

const DOMAIN: &[u8; 8] = b"TSR-REC2";

/// What a record's seal is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A data block (encrypted).
    Chunk = 1,
    /// An encoded manifest page (signed: its chunk ids stay readable without the key).
    Page = 2,
    /// The private part of a snapshot file (encrypted); its id is the SHA-256 of the
    /// snapshot's cleartext part.
    SnapshotPrivate = 3,
    /// A snapshot's header in the local index's catalog (encrypted); its id is the
    /// snapshot id.
    CatalogEntry = 4,
}

/// The associated data of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAd {
    /// The kind of record.
    pub kind: RecordKind,
    /// Its codec byte (0 none, 1 zstd): the plaintext is the compressed form.
    pub codec: u8,
    /// Its raw (decoded) length.
    pub raw_len: u32,
    /// The id that names it.
    pub id: [u8; 32],
}

impl RecordAd {
    fn encode(&self) -> [u8; 46] {
        let mut out = [0u8; 46];
        out[..8].copy_from_slice(DOMAIN);
        out[8] = self.kind as u8;
        out[9] = self.codec;
        out[10..14].copy_from_slice(&self.raw_len.to_le_bytes());
        out[14..].copy_from_slice(&self.id);
        out
    }
}

/// Seals and opens records under a repository's data key. One per process: it is this
/// process's writer identity (see the module docs).
pub struct RecordCipher {
    data_key: SecretKey,
    writer: [u8; WRITER_LEN],
    writer_key: Arc<AeadKey>,
    next: AtomicU64,
    others: Mutex<HashMap<[u8; WRITER_LEN], Arc<AeadKey>>>,
}

impl std::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordCipher(<redacted>)")
    }
}

fn subkey(data_key: &SecretKey, writer: &[u8; WRITER_LEN]) -> Result<AeadKey, CryptoError> {
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(writer), data_key.expose())
        .expand(b"tessera record aes-256-gcm", &mut okm[..])
        .map_err(|e| CryptoError::Library(format!("HKDF: {e}")))?;
    AeadKey::new(&SecretKey::from_bytes(*okm))
}

/// The subkey, nonce and body (ciphertext or cleartext, then tag) of one envelope.
type Opening<'a> = (Arc<AeadKey>, [u8; NONCE_LEN], &'a [u8]);

fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n
}

impl RecordCipher {
    /// A cipher under `data_key` with a fresh writer id.
    pub fn new(data_key: SecretKey) -> Result<Self, CryptoError> {
        let mut writer = [0u8; WRITER_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut writer);
        let writer_key = Arc::new(subkey(&data_key, &writer)?);
        Ok(Self {
            data_key,
            writer,
            writer_key,
            next: AtomicU64::new(0),
            others: Mutex::new(HashMap::new()),
        })
    }

    /// Appends this writer's id and a counter never used before, and returns the nonce.
    fn next_prefix(&self, out: &mut Vec<u8>) -> Result<[u8; NONCE_LEN], CryptoError> {
        // Never wraps: once the counter is spent every later call fails too (a plain
        // fetch_add would return 0 again after u64::MAX and repeat a nonce).
        let counter = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|_| {
                CryptoError::Library(
                    "this writer sealed 2^64 - 1 records; open the repository again".into(),
                )
            })?;
        out.extend_from_slice(&self.writer);
        out.extend_from_slice(&counter.to_le_bytes());
        Ok(nonce(counter))
    }

    /// The subkey of the writer that sealed `envelope`, and its nonce and body.
    fn key_for<'a>(&self, envelope: &'a [u8]) -> Result<Opening<'a>, CryptoError> {
        if envelope.len() < RECORD_OVERHEAD {
            return Err(CryptoError::Length {
                expected: RECORD_OVERHEAD,
                found: envelope.len(),
            });
        }
        let (prefix, body) = envelope.split_at(PREFIX_LEN);
        let (writer, counter) = prefix.split_at(WRITER_LEN);
        let writer: [u8; WRITER_LEN] =
            writer.try_into().map_err(|_| CryptoError::Authentication)?;
        let counter = u64::from_le_bytes(
            counter
                .try_into()
                .map_err(|_| CryptoError::Authentication)?,
        );
        let key = if writer == self.writer {
            Arc::clone(&self.writer_key)
        } else {
            let mut others = self
                .others
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(key) = others.get(&writer) {
                Arc::clone(key)
            } else {
                if others.len() >= SUBKEY_CACHE {
                    others.clear();
                }
                let key = Arc::new(subkey(&self.data_key, &writer)?);
                others.insert(writer, Arc::clone(&key));
                key
            }
        };
        Ok((key, nonce(counter), body))
    }

    /// Encrypts `plaintext` and appends `writer ‖ counter ‖ ciphertext ‖ tag` to `out`.
    pub fn seal_into(
        &self,
        ad: &RecordAd,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        out.reserve(plaintext.len() + RECORD_OVERHEAD);
        let nonce = self.next_prefix(out)?;
        self.writer_key
            .seal_into(nonce, &ad.encode(), plaintext, out)
    }

    /// [`RecordCipher::seal_into`] into a new buffer of exactly the sealed length.
    pub fn seal(&self, ad: &RecordAd, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + RECORD_OVERHEAD);
        self.seal_into(ad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Seals in place: `slot[PREFIX_LEN..PREFIX_LEN + len]` holds the plaintext; writes the
    /// envelope around it and returns its length (`len + RECORD_OVERHEAD`). With
    /// `signed`, the bytes stay cleartext and are authenticated only ([`Self::sign_into`]).
    pub fn protect_in_place(
        &self,
        ad: &RecordAd,
        slot: &mut [u8],
        len: usize,
        signed: bool,
    ) -> Result<usize, CryptoError> {
        let total = len + RECORD_OVERHEAD;
        if slot.len() < total {
            return Err(CryptoError::Length {
                expected: total,
                found: slot.len(),
            });
        }
        let mut prefix = Vec::with_capacity(PREFIX_LEN);
        let nonce = self.next_prefix(&mut prefix)?;
        slot[..PREFIX_LEN].copy_from_slice(&prefix);
        let body = &mut slot[PREFIX_LEN..PREFIX_LEN + len];
        let tag = if signed {
            let full_ad = [&ad.encode()[..], body].concat();
            self.writer_key.seal_in_place(nonce, &full_ad, &mut [])?
        } else {
            self.writer_key.seal_in_place(nonce, &ad.encode(), body)?
        };
        slot[PREFIX_LEN + len..total].copy_from_slice(&tag);
        Ok(total)
    }

    /// Decrypts a sealed record into `dst`, which must be exactly as long as its plaintext.
    /// On failure `dst` holds bytes that must be discarded (the tag is checked at the end):
    /// every caller turns the error into "damaged" before anything reaches a disk.
    pub fn open_into(
        &self,
        ad: &RecordAd,
        sealed: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (key, nonce, body) = self.key_for(sealed)?;
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        if ciphertext.len() != dst.len() {
            return Err(CryptoError::Length {
                expected: dst.len(),
                found: ciphertext.len(),
            });
        }
        key.open_into(nonce, &ad.encode(), ciphertext, tag, dst)
    }

    /// Decrypts a sealed record into a new buffer.
    pub fn open(&self, ad: &RecordAd, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let len = sealed.len().saturating_sub(RECORD_OVERHEAD);
        let mut out = vec![0u8; len];
        self.open_into(ad, sealed, &mut out)?;
        Ok(out)
    }

    /// Signs `cleartext`: appends `writer ‖ counter ‖ cleartext ‖ tag` to `out`.
    pub fn sign_into(
        &self,
        ad: &RecordAd,
        cleartext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        out.reserve(cleartext.len() + RECORD_OVERHEAD);
        let nonce = self.next_prefix(out)?;
        out.extend_from_slice(cleartext);
        let full_ad = [&ad.encode()[..], cleartext].concat();
        self.writer_key.seal_into(nonce, &full_ad, &[], out)
    }

    /// Checks a signed record and returns its cleartext.
    pub fn check_signed<'a>(
        &self,
        ad: &RecordAd,
        signed: &'a [u8],
    ) -> Result<&'a [u8], CryptoError> {
        let (key, nonce, body) = self.key_for(signed)?;
        let (cleartext, tag) = body.split_at(body.len() - TAG_LEN);
        let full_ad = [&ad.encode()[..], cleartext].concat();
        key.open_into(nonce, &full_ad, &[], tag, &mut [])?;
        Ok(cleartext)
    }
}

/// The cleartext of a signed record, without checking its tag: what a keyless holder
/// (serve, forget, prune) reads. Only a key holder can tell whether it is authentic.
pub fn signed_cleartext(signed: &[u8]) -> Result<&[u8], CryptoError> {
    if signed.len() < RECORD_OVERHEAD {
        return Err(CryptoError::Length {
            expected: RECORD_OVERHEAD,
            found: signed.len(),
        });
    }
    Ok(&signed[PREFIX_LEN..signed.len() - TAG_LEN])
}

#[cfg(test)]
mod tests {
    use super::{signed_cleartext, RecordAd, RecordCipher, RecordKind, RECORD_OVERHEAD};
    use crate::crypto::secret::SecretKey;
    use crate::crypto::CryptoError;
    use proptest::prelude::*;

    fn ad(id: u8) -> RecordAd {
        RecordAd {
            kind: RecordKind::Chunk,
            codec: 1,
            raw_len: 65536,
            id: [id; 32],
        }
    }

    fn cipher() -> RecordCipher {
        RecordCipher::new(SecretKey::from_bytes([0x42; 32])).unwrap()
    }

    /// The nonce counter never wraps: the last counter is used once, then every seal fails
    /// (it would otherwise start again at 0 and repeat nonces under the same subkey).
    #[test]
    fn the_nonce_counter_never_wraps() {
        let c = cipher();
        c.next
            .store(u64::MAX - 1, std::sync::atomic::Ordering::Relaxed);
        let sealed = c.seal(&ad(1), b"last").unwrap();
        assert_eq!(c.open(&ad(1), &sealed).unwrap(), b"last");
        for _ in 0..3 {
            assert!(c.seal(&ad(1), b"again").is_err());
            let mut out = Vec::new();
            assert!(c.sign_into(&ad(2), b"page", &mut out).is_err());
        }
    }

    #[test]
    fn nonces_count_up_within_a_writer_and_writers_differ() {
        let c = cipher();
        let a = c.seal(&ad(1), b"same bytes").unwrap();
        let b = c.seal(&ad(1), b"same bytes").unwrap();
        assert_eq!(a[..16], b[..16], "one writer id per cipher");
        assert_eq!((a[16], b[16]), (0, 1), "the counter counts");
        assert_ne!(a, b);
        let other = cipher();
        let c2 = other.seal(&ad(1), b"same bytes").unwrap();
        assert_ne!(a[..16], c2[..16], "another process draws another writer id");
        assert_eq!(
            other.open(&ad(1), &a).unwrap(),
            b"same bytes",
            "readers derive any writer's subkey"
        );
        assert_eq!(c.open(&ad(1), &c2).unwrap(), b"same bytes");
    }

    #[test]
    fn every_bound_field_is_checked() {
        let c = cipher();
        let sealed = c.seal(&ad(1), b"block").unwrap();
        let mut moved = ad(1);
        moved.id[31] ^= 1;
        let mut relabelled = ad(1);
        relabelled.kind = RecordKind::SnapshotPrivate;
        let mut recoded = ad(1);
        recoded.codec = 0;
        let mut resized = ad(1);
        resized.raw_len = 5;
        for wrong in [moved, relabelled, recoded, resized] {
            assert_eq!(c.open(&wrong, &sealed), Err(CryptoError::Authentication));
        }
        let other_key = RecordCipher::new(SecretKey::from_bytes([0x43; 32])).unwrap();
        assert_eq!(
            other_key.open(&ad(1), &sealed),
            Err(CryptoError::Authentication)
        );
        assert!(c.open(&ad(1), &sealed[..RECORD_OVERHEAD - 1]).is_err());
    }

    #[test]
    fn signed_pages_read_keyless_and_check_with_the_key() {
        let c = cipher();
        let mut page = ad(5);
        page.kind = RecordKind::Page;
        let mut signed = Vec::new();
        c.sign_into(&page, b"page of ids", &mut signed).unwrap();
        assert_eq!(signed_cleartext(&signed).unwrap(), b"page of ids");
        assert_eq!(c.check_signed(&page, &signed).unwrap(), b"page of ids");
        let mut forged = signed.clone();
        forged[24] ^= 1;
        assert_eq!(signed_cleartext(&forged).unwrap()[0], b'p' ^ 1);
        assert_eq!(
            c.check_signed(&page, &forged),
            Err(CryptoError::Authentication)
        );
    }

    /// Sealing and signing in place (the backup arena's path) give envelopes the ordinary
    /// openers accept, and refuse a slot too short for the envelope.
    #[test]
    fn in_place_envelopes_open_like_the_others() {
        let c = cipher();
        let data = b"block bytes in the arena";
        let mut slot = vec![0u8; data.len() + RECORD_OVERHEAD + 7];
        slot[super::PREFIX_LEN..super::PREFIX_LEN + data.len()].copy_from_slice(data);
        let n = c
            .protect_in_place(&ad(9), &mut slot, data.len(), false)
            .unwrap();
        assert_eq!(n, data.len() + RECORD_OVERHEAD);
        assert_ne!(
            &slot[super::PREFIX_LEN..super::PREFIX_LEN + data.len()],
            data
        );
        assert_eq!(c.open(&ad(9), &slot[..n]).unwrap(), data);
        let mut page = ad(9);
        page.kind = RecordKind::Page;
        slot[super::PREFIX_LEN..super::PREFIX_LEN + data.len()].copy_from_slice(data);
        let n = c
            .protect_in_place(&page, &mut slot, data.len(), true)
            .unwrap();
        assert_eq!(c.check_signed(&page, &slot[..n]).unwrap(), data);
        assert!(c
            .protect_in_place(&ad(9), &mut slot[..data.len() + 10], data.len(), false)
            .is_err());
    }

    proptest! {
        #[test]
        fn seal_open_round_trips_and_any_flipped_bit_fails(
            data in proptest::collection::vec(any::<u8>(), 0..9000),
            id in any::<u8>(),
            flip in any::<usize>(),
        ) {
            let c = cipher();
            let sealed = c.seal(&ad(id), &data).unwrap();
            prop_assert_eq!(sealed.len(), data.len() + RECORD_OVERHEAD);
            prop_assert_eq!(&c.open(&ad(id), &sealed).unwrap(), &data);
            let mut dst = vec![0u8; data.len()];
            c.open_into(&ad(id), &sealed, &mut dst).unwrap();
            prop_assert_eq!(&dst, &data);
            let mut tampered = sealed.clone();
            let bit = flip % (tampered.len() * 8);
            tampered[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(c.open(&ad(id), &tampered), Err(CryptoError::Authentication));
        }
    }
}
