//! The repository `config` file: written once by `init`, read by every command.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TSRCONF1` |
//! | 8 | 4 | format version (1 plain, 2 encrypted) |
//! | 12 | 16 | repository id |
//! | 28 | 1 | chunk id scheme (1 = plain SHA-256, 2 = HMAC-SHA-256; format 2 only) |
//! | 29 | 1 | compression codec (0 = none, 1 = zstd) |
//! | 30 | 1 | encryption (format 2: 1 = AES-256-GCM records; format 1: reserved, 0) |
//! | 31 | 1 | reserved, 0 (readers refuse any other value) |
//! | 32 | 4 | compression level (i32) |
//! | 36 | 4 | default block size in bytes |
//! | 40 | 4 | manifest page entries |
//! | 44 | 8 | created-at, Unix microseconds (i64) |
//! | 52 | 16 | format 2 only: key fingerprint (SPEC.md §23.4) |
//! | 52 or 68 | 4 | CRC-32C of the bytes before it |
//!
//! Format 1 is a plain repository (56 bytes); format 2 an encrypted one (72 bytes): keyed
//! ids and sealed records always go together, and a plain repository is still written as
//! format 1, so that releases before encryption keep reading it.

use crate::codec::{check_version, checksummed, push_crc_trailer, put_i64, put_u32};
use crate::manifest::MAX_PAGE_ENTRIES;
use crate::{Codec, DecodeError, EncodeError, RepoId};

/// Names the config file in errors.
const WHAT: &str = "config";

/// Magic of the config file.
pub const CONFIG_MAGIC: &[u8; 8] = b"TSRCONF1";
/// Smallest allowed block size (64 KiB).
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest allowed block size (8 MiB).
pub const MAX_BLOCK_SIZE: u32 = 8 * 1024 * 1024;
/// Default number of chunk digests per manifest page.
pub const DEFAULT_PAGE_ENTRIES: u32 = 512;
/// Fewest manifest page entries a repository may be configured with.
pub const MIN_PAGE_ENTRIES: u32 = 16;
/// Encoded size of a format-1 (plain) config file.
pub const CONFIG_LEN: usize = 56;
/// Encoded size of a format-2 (encrypted) config file.
pub const CONFIG_LEN_V2: usize = 72;
/// Format version of plain repositories.
pub const PLAIN_FORMAT: u32 = 1;
/// Format version of encrypted repositories.
pub const ENCRYPTED_FORMAT: u32 = 2;

/// How chunk ids are derived from content. Versioned so that keyed ids (for encryption at
/// rest) can be added without a new repository layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdScheme {
    /// `SHA-256(raw block bytes)`.
    Sha256 = 1,
    /// `HMAC-SHA-256(id key, raw block bytes)` (encrypted repositories, SPEC.md §23.2).
    HmacSha256 = 2,
}

impl TryFrom<u8> for IdScheme {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Sha256),
            2 => Ok(Self::HmacSha256),
            other => Err(DecodeError::invalid(
                WHAT,
                format!("unknown chunk id scheme {other}"),
            )),
        }
    }
}

/// How a repository's records are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// Stored as encoded (format 1).
    None,
    /// Chunks and snapshot private parts sealed, pages signed with AES-256-GCM under the
    /// repository's data key; `fingerprint` names the key pair (SPEC.md §23.3, §23.4).
    Aes256Gcm {
        /// Public fingerprint of the repository keys.
        fingerprint: [u8; 16],
    },
}

impl Encryption {
    /// Whether records are protected.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// The name `stats` and `show` print.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Aes256Gcm { .. } => "aes-256-gcm",
        }
    }

    /// The key fingerprint, if encrypted.
    pub fn fingerprint(&self) -> Option<[u8; 16]> {
        match self {
            Self::None => None,
            Self::Aes256Gcm { fingerprint } => Some(*fingerprint),
        }
    }
}

/// Compression applied to new chunks and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// Codec level (zstd: 1..=19; ignored for none).
    pub level: i32,
}

impl Compression {
    /// Parses `zstd:3`, `zstd` (level 3) or `none`.
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        match name {
            "none" if level.is_none() => Ok(Self {
                codec: Codec::None,
                level: 0,
            }),
            "zstd" => {
                let level = match level {
                    None => 3,
                    Some(l) => l.parse::<i32>().map_err(|_| {
                        DecodeError::invalid("compression", format!("level {l:?} is not a number"))
                    })?,
                };
                if !(1..=19).contains(&level) {
                    return Err(DecodeError::invalid(
                        "compression",
                        format!("zstd level {level} is outside 1..=19"),
                    ));
                }
                Ok(Self {
                    codec: Codec::Zstd,
                    level,
                })
            }
            _ => Err(DecodeError::invalid(
                "compression",
                format!("{s:?} is not one of none, zstd, zstd:LEVEL"),
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.codec {
            Codec::None => f.write_str("none"),
            Codec::Zstd => write!(f, "zstd:{}", self.level),
        }
    }
}

/// Contents of the `config` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// Format version the repository was created with.
    pub format_version: u32,
    /// Random identity of the repository.
    pub repo_id: RepoId,
    /// How chunk ids are derived.
    pub id_scheme: IdScheme,
    /// Compression for new objects.
    pub compression: Compression,
    /// Block size used when a backup does not name one.
    pub default_block_size: u32,
    /// Digests per manifest page.
    pub page_entries: u32,
    /// Creation time, Unix microseconds.
    pub created_at_us: i64,
    /// How records are protected (format 2: encrypted).
    pub encryption: Encryption,
}

/// Checks that `size` is a power of two within [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`].
pub fn validate_block_size(size: u64) -> Result<u32, DecodeError> {
    match u32::try_from(size) {
        Ok(size) if size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) => {
            Ok(size)
        }
        _ => Err(DecodeError::invalid(
            "block size",
            format!("{size} bytes is not a power of two between 64 KiB and 8 MiB"),
        )),
    }
}

impl RepoConfig {
    /// Checks every rule [`RepoConfig::decode`] enforces on the values: a supported format
    /// version, a valid block size and 16..=65536 page entries.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(WHAT, self.format_version)?;
        let consistent = match (self.format_version, self.encryption) {
            (PLAIN_FORMAT, Encryption::None) => self.id_scheme == IdScheme::Sha256,
            (ENCRYPTED_FORMAT, Encryption::Aes256Gcm { .. }) => {
                self.id_scheme == IdScheme::HmacSha256
            }
            _ => false,
        };
        if !consistent {
            return Err(DecodeError::invalid(
                WHAT,
                format!(
                    "format version {} with id scheme {} and encryption {}: format 1 is plain with SHA-256 ids, format 2 encrypted with keyed ids",
                    self.format_version,
                    self.id_scheme as u8,
                    self.encryption.name()
                ),
            ));
        }
        validate_block_size(u64::from(self.default_block_size))?;
        if !(MIN_PAGE_ENTRIES..=MAX_PAGE_ENTRIES).contains(&self.page_entries) {
            return Err(DecodeError::invalid(
                WHAT,
                format!(
                    "page entries {} outside {MIN_PAGE_ENTRIES}..={MAX_PAGE_ENTRIES}",
                    self.page_entries
                ),
            ));
        }
        Ok(())
    }

    /// Encodes the config file; refuses a config [`RepoConfig::validate`] refuses.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        let mut out = Vec::with_capacity(CONFIG_LEN_V2);
        out.extend_from_slice(CONFIG_MAGIC);
        put_u32(&mut out, self.format_version);
        out.extend_from_slice(self.repo_id.as_bytes());
        out.push(self.id_scheme as u8);
        out.push(self.compression.codec as u8);
        out.push(u8::from(self.encryption.is_encrypted()));
        out.push(0);
        put_u32(&mut out, self.compression.level.cast_unsigned());
        put_u32(&mut out, self.default_block_size);
        put_u32(&mut out, self.page_entries);
        put_i64(&mut out, self.created_at_us);
        if let Some(fingerprint) = self.encryption.fingerprint() {
            out.extend_from_slice(&fingerprint);
        }
        push_crc_trailer(&mut out);
        Ok(out)
    }

    /// Decodes and validates the config file.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (format_version, mut r) = checksummed(buf, WHAT, |r| {
            r.magic(CONFIG_MAGIC)?;
            r.version()
        })?;
        let repo_id = RepoId(r.array()?);
        let id_scheme = IdScheme::try_from(r.u8()?)?;
        let codec = Codec::try_from(r.u8()?)?;
        let encrypted = r.u8()?;
        r.reserved::<1>()?;
        let level = r.u32()?.cast_signed();
        let default_block_size = r.u32()?;
        let page_entries = r.u32()?;
        let created_at_us = r.i64()?;
        let encryption = match encrypted {
            0 => Encryption::None,
            1 => Encryption::Aes256Gcm {
                fingerprint: r.array()?,
            },
            other => {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("unknown encryption {other}"),
                ))
            }
        };
        r.finish()?;
        let config = Self {
            format_version,
            repo_id,
            id_scheme,
            compression: Compression { codec, level },
            default_block_size,
            page_entries,
            created_at_us,
            encryption,
        };
        config.validate()?;
        Ok(config)
    }
}
