//! Key slot objects `keys/<slot id>.key` (SPEC.md §23.4): one wrapping of the repository's
//! keys (id key and data key) under a key-encryption key derived from a passphrase, a key
//! file or the recovery key. This module holds the byte layout only; deriving keys and
//! unwrapping are the engine's `crypto` module.
//!
//! Layout (all integers little-endian, 196 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TSRKEYS1` |
//! | 8 | 4 | format version (2) |
//! | 12 | 16 | repository id |
//! | 28 | 16 | slot id (random; the object is named after it) |
//! | 44 | 1 | slot kind: 1 = passphrase, 2 = key file, 3 = recovery key |
//! | 45 | 1 | wrap cipher: 1 = AES-256-GCM |
//! | 46 | 2 | reserved, 0 |
//! | 48 | 4 | Argon2id memory, KiB (passphrase slots; 0 otherwise) |
//! | 52 | 4 | Argon2id iterations (passphrase slots; 0 otherwise) |
//! | 56 | 4 | Argon2id parallelism (passphrase slots; 0 otherwise) |
//! | 60 | 32 | salt |
//! | 92 | 8 | created-at, Unix microseconds (i64) |
//! | 100 | 12 | nonce (random; the key-encryption key is used once) |
//! | 112 | 80 | wrapped keys: ciphertext of id key ‖ data key (64) and tag (16) |
//! | 192 | 4 | CRC-32C of bytes 0..192 |
//!
//! Bytes 0..100 are the associated data of the wrap, so a slot whose parameters, kind or
//! repository were altered does not unwrap.

use crate::codec::{checksummed, push_crc_trailer, put_i64, put_u16, put_u32, Reader};
use crate::{DecodeError, RepoId};

const WHAT: &str = "key slot";

/// Magic of a key slot object.
pub const KEYSLOT_MAGIC: &[u8; 8] = b"TSRKEYS1";
/// Encoded size of a key slot.
pub const KEYSLOT_LEN: usize = 196;
/// Length of the associated data (the header bytes the wrap authenticates).
pub const KEYSLOT_AD_LEN: usize = 100;
/// Length of the wrapped keys with their tag.
pub const WRAPPED_LEN: usize = 80;
/// Version of the slot layout (slots exist from format version 2 on).
pub const KEYSLOT_VERSION: u32 = 2;
/// Least Argon2id memory a passphrase slot may have (19 MiB, OWASP's minimum for
/// Argon2id): a slot planted with a trivial cost would make every unlock a cheap guess.
pub const MIN_KDF_MEMORY_KIB: u32 = 19 * 1024;
/// Fewest Argon2id iterations a passphrase slot may have.
pub const MIN_KDF_ITERATIONS: u32 = 2;
/// Largest Argon2id memory a slot may ask for (1 GiB), so a hostile slot cannot make
/// `open` allocate without bound.
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// Most Argon2id iterations a slot may ask for (with the memory ceiling, this bounds the
/// time one slot costs an unlock).
pub const MAX_KDF_ITERATIONS: u32 = 16;
/// Most Argon2id lanes a slot may ask for.
pub const MAX_KDF_PARALLELISM: u32 = 8;

/// What unlocks a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// A passphrase, stretched with Argon2id.
    Passphrase = 1,
    /// A key file holding 32 random bytes.
    KeyFile = 2,
    /// The recovery key printed once by `init`.
    Recovery = 3,
}

impl SlotKind {
    /// The name `key list` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passphrase => "passphrase",
            Self::KeyFile => "key-file",
            Self::Recovery => "recovery",
        }
    }
}

impl TryFrom<u8> for SlotKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Passphrase),
            2 => Ok(Self::KeyFile),
            3 => Ok(Self::Recovery),
            other => Err(DecodeError::invalid(
                WHAT,
                format!("unknown slot kind {other}"),
            )),
        }
    }
}

/// Argon2id cost parameters of a passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations (passes over memory).
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// Zero parameters, for slots whose secret needs no stretching.
    pub const NONE: Self = Self {
        memory_kib: 0,
        iterations: 0,
        parallelism: 0,
    };

    fn check(self, kind: SlotKind) -> Result<(), DecodeError> {
        let ok = match kind {
            SlotKind::Passphrase => {
                (MIN_KDF_MEMORY_KIB..=MAX_KDF_MEMORY_KIB).contains(&self.memory_kib)
                    && (MIN_KDF_ITERATIONS..=MAX_KDF_ITERATIONS).contains(&self.iterations)
                    && (1..=MAX_KDF_PARALLELISM).contains(&self.parallelism)
                    && self.memory_kib >= self.parallelism.saturating_mul(8)
            }
            SlotKind::KeyFile | SlotKind::Recovery => self == Self::NONE,
        };
        if ok {
            Ok(())
        } else {
            Err(DecodeError::invalid(
                WHAT,
                format!(
                    "Argon2id parameters m={} KiB t={} p={} are not allowed for a {} slot",
                    self.memory_kib,
                    self.iterations,
                    self.parallelism,
                    kind.as_str()
                ),
            ))
        }
    }
}

/// A key slot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlotFile {
    /// The repository the slot belongs to.
    pub repo_id: RepoId,
    /// The slot's own id.
    pub slot_id: [u8; 16],
    /// What unlocks it.
    pub kind: SlotKind,
    /// Argon2id parameters ([`KdfParams::NONE`] unless a passphrase slot).
    pub kdf: KdfParams,
    /// Salt of the key derivation.
    pub salt: [u8; 32],
    /// Creation time, Unix microseconds.
    pub created_at_us: i64,
    /// Nonce of the wrap.
    pub nonce: [u8; 12],
    /// The wrapped keys and tag.
    pub wrapped: [u8; WRAPPED_LEN],
}

impl KeySlotFile {
    /// The associated data the wrap authenticates: the encoded bytes 0..100.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEYSLOT_AD_LEN);
        out.extend_from_slice(KEYSLOT_MAGIC);
        put_u32(&mut out, KEYSLOT_VERSION);
        out.extend_from_slice(self.repo_id.as_bytes());
        out.extend_from_slice(&self.slot_id);
        out.push(self.kind as u8);
        out.push(1);
        put_u16(&mut out, 0);
        put_u32(&mut out, self.kdf.memory_kib);
        put_u32(&mut out, self.kdf.iterations);
        put_u32(&mut out, self.kdf.parallelism);
        out.extend_from_slice(&self.salt);
        put_i64(&mut out, self.created_at_us);
        out
    }

    /// Encodes the slot, refusing parameters [`KeySlotFile::decode`] would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        self.kdf.check(self.kind)?;
        let mut out = self.associated_data();
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.wrapped);
        push_crc_trailer(&mut out);
        Ok(out)
    }

    /// Decodes and checks a slot.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let ((), mut r) = checksummed(buf, WHAT, |r: &mut Reader<'_>| {
            r.magic(KEYSLOT_MAGIC)?;
            // Slots are new in format 2 and have had one layout since; the slot layout is
            // checked on its own so that slots can be tested before the repository format
            // itself moves to 2 (SPEC.md §23.5).
            match r.u32()? {
                KEYSLOT_VERSION => Ok(()),
                version => Err(DecodeError::UnsupportedVersion {
                    what: WHAT,
                    version,
                    supported: KEYSLOT_VERSION,
                }),
            }
        })?;
        let repo_id = RepoId(r.array()?);
        let slot_id = r.array()?;
        let kind = SlotKind::try_from(r.u8()?)?;
        let cipher = r.u8()?;
        if cipher != 1 {
            return Err(DecodeError::invalid(
                WHAT,
                format!("unknown wrap cipher {cipher}"),
            ));
        }
        r.reserved::<2>()?;
        let kdf = KdfParams {
            memory_kib: r.u32()?,
            iterations: r.u32()?,
            parallelism: r.u32()?,
        };
        kdf.check(kind)?;
        let salt = r.array()?;
        let created_at_us = r.i64()?;
        let nonce = r.array()?;
        let wrapped = r.array()?;
        r.finish()?;
        Ok(Self {
            repo_id,
            slot_id,
            kind,
            kdf,
            salt,
            created_at_us,
            nonce,
            wrapped,
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::{
        KdfParams, KeySlotFile, SlotKind, KEYSLOT_AD_LEN, KEYSLOT_LEN, MAX_KDF_ITERATIONS,
        MAX_KDF_MEMORY_KIB, MAX_KDF_PARALLELISM, MIN_KDF_ITERATIONS, MIN_KDF_MEMORY_KIB,
    };
    use crate::{DecodeError, RepoId};

    fn slot() -> KeySlotFile {
        KeySlotFile {
            repo_id: RepoId([7; 16]),
            slot_id: [9; 16],
            kind: SlotKind::Passphrase,
            kdf: KdfParams {
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1,
            },
            salt: [1; 32],
            created_at_us: 1_700_000_000_000_000,
            nonce: [2; 12],
            wrapped: [3; 80],
        }
    }

    #[test]
    fn round_trips_at_its_documented_size() {
        let bytes = slot().encode().unwrap();
        assert_eq!(bytes.len(), KEYSLOT_LEN);
        assert_eq!(&bytes[..KEYSLOT_AD_LEN], &slot().associated_data()[..]);
        assert_eq!(KeySlotFile::decode(&bytes).unwrap(), slot());
    }

    #[test]
    fn refuses_damage_and_hostile_parameters() {
        let mut bytes = slot().encode().unwrap();
        bytes[130] ^= 1;
        assert!(matches!(
            KeySlotFile::decode(&bytes),
            Err(DecodeError::ChecksumMismatch { .. })
        ));
        // Outside the floor (a planted cheap slot) or the ceiling (a planted costly one),
        // a passphrase slot does not decode, whatever its CRC says.
        for (m, t, p) in [
            (u32::MAX, 3, 1),
            (MAX_KDF_MEMORY_KIB + 1, 3, 1),
            (MIN_KDF_MEMORY_KIB - 1, 3, 1),
            (8, 1, 1),
            (65536, 1, 1),
            (65536, MAX_KDF_ITERATIONS + 1, 1),
            (65536, 3, MAX_KDF_PARALLELISM + 1),
        ] {
            let mut hostile = slot();
            hostile.kdf = KdfParams {
                memory_kib: m,
                iterations: t,
                parallelism: p,
            };
            assert!(hostile.encode().is_err(), "m={m} t={t} p={p}");
            let mut bytes = slot().encode().unwrap();
            bytes[48..52].copy_from_slice(&m.to_le_bytes());
            bytes[52..56].copy_from_slice(&t.to_le_bytes());
            bytes[56..60].copy_from_slice(&p.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..192]);
            bytes[192..].copy_from_slice(&crc.to_le_bytes());
            assert!(KeySlotFile::decode(&bytes).is_err(), "m={m} t={t} p={p}");
        }
        for (m, t, p) in [
            (MIN_KDF_MEMORY_KIB, MIN_KDF_ITERATIONS, 1),
            (MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS, MAX_KDF_PARALLELISM),
        ] {
            let mut edge = slot();
            edge.kdf = KdfParams {
                memory_kib: m,
                iterations: t,
                parallelism: p,
            };
            assert_eq!(KeySlotFile::decode(&edge.encode().unwrap()).unwrap(), edge);
        }
        let mut keyfile = slot();
        keyfile.kind = SlotKind::KeyFile;
        assert!(
            keyfile.encode().is_err(),
            "a key-file slot has no Argon2 cost"
        );
        for n in 0..KEYSLOT_LEN {
            assert!(KeySlotFile::decode(&slot().encode().unwrap()[..n]).is_err());
        }
    }
}
