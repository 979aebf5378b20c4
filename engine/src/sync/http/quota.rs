//! Per-token quotas of `tessera serve --tokens FILE` (SPEC.md §22.3): the bytes of new
//! stored data each token has added, kept in `FILE.usage` next to the tokens file.
//!
//! Format: JSON `{"format": "tessera-token-usage", "version": 1, "used": {NAME: BYTES}}`,
//! written whole through the engine's durable write (staged, fsynced, renamed, directory
//! fsynced) with mode 0600.
//!
//! Crash reasoning: a request's bytes are **charged before they are stored**. A crash between
//! the two leaves the token charged for data that was not stored (it is charged again if the
//! client sends it again): usage can only overstate what a token added, so a quota is never
//! exceeded by crashing the server at the right moment. A request that fails after its
//! charge is refunded (best effort: if that write fails too, the overstatement stays).
//! Only the serving thread writes the file; `tessera token list` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::tokens::{read_private, write_private, TokenEntry};

const FORMAT: &str = "tessera-token-usage";

/// The quota would be exceeded: the request is refused before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The token's name.
    pub name: String,
    /// Its quota.
    pub quota: u64,
    /// What it has used.
    pub used: u64,
    /// What the request would add.
    pub wanted: u64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "token {:?} has used {} of its quota of {} bytes; this request would store {} more, so nothing of it was stored (an admin can raise the quota: `tessera token remove` and `add` again, or run retention on the server)",
            self.name, self.used, self.quota, self.wanted
        )
    }
}

/// Bytes used per token, backed by a file.
#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    used: BTreeMap<String, u64>,
}

impl Usage {
    /// `FILE.usage` for the tokens file `FILE`.
    pub fn path_for(tokens: &Path) -> PathBuf {
        let mut name = tokens.as_os_str().to_owned();
        name.push(".usage");
        PathBuf::from(name)
    }

    /// The usage kept for the tokens file `tokens` (none yet when there is no file).
    pub fn load(tokens: &Path) -> Result<Self> {
        let path = Self::path_for(tokens);
        let used = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            _ => {
                let text = read_private(&path, "token usage file")?;
                parse(&text).ok_or_else(|| {
                    Error::Usage(format!(
                        "{} is not a tessera token usage file",
                        path.display()
                    ))
                })?
            }
        };
        Ok(Self { path, used })
    }

    /// Bytes `name` has added.
    pub fn used(&self, name: &str) -> u64 {
        self.used.get(name).copied().unwrap_or(0)
    }

    /// Charges `bytes` to `token`, durably, or refuses when its quota would be exceeded.
    pub fn charge(&mut self, token: &TokenEntry, bytes: u64) -> Result<Option<QuotaExceeded>> {
        let used = self.used(&token.name);
        if let Some(quota) = token.quota {
            if used.saturating_add(bytes) > quota {
                return Ok(Some(QuotaExceeded {
                    name: token.name.clone(),
                    quota,
                    used,
                    wanted: bytes,
                }));
            }
        }
        if bytes > 0 {
            self.set(&token.name, used.saturating_add(bytes))?;
        }
        Ok(None)
    }

    /// Gives back `bytes` charged to `name` for a request that then failed.
    pub fn refund(&mut self, name: &str, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let used = self.used(name).saturating_sub(bytes);
        self.set(name, used)
    }

    fn set(&mut self, name: &str, used: u64) -> Result<()> {
        let before = self.used.insert(name.to_string(), used);
        let text = serde_json::json!({ "format": FORMAT, "version": 1, "used": self.used });
        let written = write_private(&self.path, text.to_string().as_bytes());
        if written.is_err() {
            match before {
                Some(b) => self.used.insert(name.to_string(), b),
                None => self.used.remove(name),
            };
        }
        written
    }
}

fn parse(text: &str) -> Option<BTreeMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["format"] != FORMAT || v["version"] != 1 {
        return None;
    }
    v["used"]
        .as_object()?
        .iter()
        .map(|(k, n)| Some((k.clone(), n.as_u64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tokens::{Role, Tokens};
    use super::*;

    #[test]
    fn charges_persist_and_quotas_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let tokens_path = dir.path().join("tokens");
        let mut tokens = Tokens::default();
        let (small, _) = tokens.add(Role::Backup, "*", None, Some(1000)).unwrap();
        let (open, _) = tokens.add(Role::Admin, "*", None, None).unwrap();
        let mut usage = Usage::load(&tokens_path).unwrap();
        assert_eq!(usage.charge(&small, 600).unwrap(), None);
        let refused = usage.charge(&small, 401).unwrap().unwrap();
        assert_eq!((refused.used, refused.wanted), (600, 401));
        assert_eq!(usage.charge(&small, 400).unwrap(), None);
        assert_eq!(usage.charge(&open, 1 << 40).unwrap(), None);
        usage.refund(&open.name, 1 << 39).unwrap();
        let again = Usage::load(&tokens_path).unwrap();
        assert_eq!(
            (again.used(&small.name), again.used(&open.name)),
            (1000, 1 << 39)
        );
        assert!(again.charge_would_fail(&small));
    }

    impl Usage {
        fn charge_would_fail(&self, t: &TokenEntry) -> bool {
            t.quota.is_some_and(|q| self.used(&t.name) + 1 > q)
        }
    }
}
