//! The manifest of a seed bundle, `bundle.json` (SPEC.md §22.2).
//!
//! The file is an envelope `{"manifest_sha256": HEX, "manifest": STRING}` whose `manifest`
//! is the JSON text of [`Manifest`] and `manifest_sha256` its SHA-256: any changed byte of
//! the file either breaks the JSON or the checksum, so a tampered manifest is always
//! recognised. The manifest is written last (temporary name, fsync, rename, directory
//! fsync): a bundle without it is incomplete.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the manifest inside the bundle directory.
pub const MANIFEST_NAME: &str = "bundle.json";
/// `format` of a seed bundle manifest.
pub const BUNDLE_FORMAT: &str = "tessera-seed-bundle";
/// Version of the manifest layout of a bundle from a plain repository.
pub const BUNDLE_VERSION: u32 = 1;
/// Version of the manifest layout of a bundle from an encrypted repository (it carries the
/// key fingerprint and the repository's key slots; a release that reads only version 1
/// refuses it instead of taking its sealed records for damage).
pub const ENCRYPTED_BUNDLE_VERSION: u32 = 2;
/// Largest manifest read (files are listed at ~150 bytes each).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    manifest_sha256: String,
    manifest: String,
}

/// One file of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleFile {
    /// Plain file name inside the bundle directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// Block size of one series' disk, as the source repository has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleBlockSize {
    /// Series.
    pub series: String,
    /// Disk.
    pub disk: String,
    /// Block size in bytes.
    pub block_size: u32,
}

/// See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_VERSION`].
    pub version: u32,
    /// Repository id of the source (hex).
    pub source_repo: String,
    /// Chunk id scheme of every digest in the bundle (1 = SHA-256).
    pub id_scheme: u8,
    /// Default block size of the source, used when the import creates the repository.
    pub default_block_size: u32,
    /// Compression of the source (`zstd:3`, `none`), likewise.
    pub compression: String,
    /// Block size of each series' disk.
    pub block_sizes: Vec<BundleBlockSize>,
    /// Snapshot ids, oldest first.
    pub snapshots: Vec<String>,
    /// Every file of the bundle except the manifest.
    pub files: Vec<BundleFile>,
    /// Public fingerprint of the source repository's keys (hex), when it is encrypted
    /// (version [`ENCRYPTED_BUNDLE_VERSION`]); its key slots are then among the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

/// Opens a file for reading without following a symbolic link in its last component.
pub fn open_nofollow(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            Error::io(
                format!("opening {} (symbolic links are refused)", path.display()),
                e,
            )
        })
}

/// SHA-256 of a file read through `O_NOFOLLOW`, with its length.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = open_nofollow(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    Ok((len, hex::encode(h.finalize())))
}

impl Manifest {
    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let manifest = serde_json::to_string_pretty(self).unwrap_or_default();
        let env = Envelope {
            manifest_sha256: hex::encode(Sha256::digest(manifest.as_bytes())),
            manifest,
        };
        serde_json::to_vec_pretty(&env).unwrap_or_default()
    }

    /// Reads and checks the manifest of the bundle at `dir`: envelope checksum, format,
    /// version, and that every listed name is a plain file name of a pack or snapshot
    /// (no directories, no `..`, no absolute paths), listed once.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} is not a directory: give the directory `tessera seed export` wrote",
                dir.display()
            )));
        }
        let path = dir.join(MANIFEST_NAME);
        let bad = |reason: String| Error::UntrustedData {
            from: format!("seed bundle {}", path.display()),
            reason: format!("{reason}; nothing was imported"),
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|e| {
            bad(format!(
                "cannot read the manifest ({e}); the bundle is incomplete or not a bundle"
            ))
        })?;
        if !meta.file_type().is_file() {
            return Err(bad("the manifest is not a regular file".into()));
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "the manifest is {} bytes, more than {MAX_MANIFEST_BYTES}",
                meta.len()
            )));
        }
        let mut bytes = Vec::new();
        open_nofollow(&path)?
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::decode(&bytes).map_err(bad)
    }

    /// Decodes and checks the bytes of a `bundle.json` (everything [`Manifest::read`]
    /// checks but the file itself); the error is the reason, for the caller to place.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
        let actual = hex::encode(Sha256::digest(env.manifest.as_bytes()));
        if actual != env.manifest_sha256 {
            return Err(format!(
                "the manifest hashes to {actual}, not to the recorded {}",
                env.manifest_sha256
            ));
        }
        let m: Self = serde_json::from_str(&env.manifest)
            .map_err(|e| format!("the manifest does not parse: {e}"))?;
        if m.format != BUNDLE_FORMAT
            || ![BUNDLE_VERSION, ENCRYPTED_BUNDLE_VERSION].contains(&m.version)
        {
            return Err(format!(
                "format {:?} version {} is not {BUNDLE_FORMAT:?} version {BUNDLE_VERSION} or {ENCRYPTED_BUNDLE_VERSION}",
                m.format, m.version
            ));
        }
        if (m.version == ENCRYPTED_BUNDLE_VERSION) != m.key_fingerprint.is_some() {
            return Err(format!(
                "version {} with{} a key fingerprint",
                m.version,
                if m.key_fingerprint.is_some() {
                    ""
                } else {
                    "out"
                }
            ));
        }
        m.fingerprint()?;
        let mut names = HashSet::new();
        for f in &m.files {
            if !is_bundle_file_name(&f.name) {
                return Err(format!(
                    "entry {:?} is not a plain file name of a pack (<32 hex>.pack), snapshot (<64 hex>.snap) or key slot (<32 hex>.key) inside the bundle",
                    f.name
                ));
            }
            if is_key_slot_file(&f.name) && m.version != ENCRYPTED_BUNDLE_VERSION {
                return Err(format!(
                    "entry {:?} is a key slot in a bundle of a plain repository",
                    f.name
                ));
            }
            if !names.insert(f.name.as_str()) {
                return Err(format!("entry {:?} is listed twice", f.name));
            }
        }
        Ok(m)
    }

    /// The key fingerprint of an encrypted bundle's source.
    pub fn fingerprint(&self) -> std::result::Result<Option<[u8; 16]>, String> {
        let Some(text) = &self.key_fingerprint else {
            return Ok(None);
        };
        let mut fp = [0u8; 16];
        hex::decode_to_slice(text, &mut fp)
            .map_err(|e| format!("key fingerprint {text:?}: {e}"))?;
        Ok(Some(fp))
    }

    /// The source repository's id.
    pub fn source_repo_id(&self) -> std::result::Result<tessera_format::RepoId, String> {
        self.source_repo
            .parse()
            .map_err(|e| format!("source repository id {:?}: {e}", self.source_repo))
    }
}

/// Whether `name` is a key slot's file (`….key`) of a bundle.
pub fn is_key_slot_file(name: &str) -> bool {
    name.strip_suffix(".key").is_some()
}

/// `<32 hex>.pack`, `<64 hex>.snap` or `<32 hex>.key`, lower-case: nothing else may appear
/// in a manifest.
pub fn is_bundle_file_name(name: &str) -> bool {
    let hex_of = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match (
        name.strip_suffix(".pack"),
        name.strip_suffix(".snap"),
        name.strip_suffix(".key"),
    ) {
        (Some(stem), _, _) | (_, _, Some(stem)) => hex_of(stem, 32),
        (_, Some(stem), _) => hex_of(stem, 64),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_bundle_file_name;

    #[test]
    fn only_plain_names_pass() {
        assert!(is_bundle_file_name(&format!("{}.pack", "ab".repeat(16))));
        assert!(is_bundle_file_name(&format!("{}.snap", "0f".repeat(32))));
        assert!(is_bundle_file_name(&format!("{}.key", "0f".repeat(16))));
        for bad in [
            "../x",
            "/etc/passwd",
            "a/b.pack",
            ".pack",
            "bundle.json",
            &format!("../{}.pack", "ab".repeat(15)),
            &format!("{}.pack", "AB".repeat(16)),
            &format!("{}.key", "0f".repeat(32)),
            "../x.key",
        ] {
            assert!(!is_bundle_file_name(bad), "{bad}");
        }
    }
}
