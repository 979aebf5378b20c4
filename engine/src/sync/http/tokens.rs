//! The tokens file of `tessera serve --tokens FILE` and `tessera token` (SPEC.md §22.3).
//!
//! A token is 32 random bytes written as 64 lowercase hex digits. It is printed once, when
//! made, and never stored: the file keeps its SHA-256 only, so a copy of the file (a backup
//! of `/etc`, a leaked config) grants nothing. A presented token is hashed and compared with
//! every entry's hash in constant time (no early exit, no comparison that stops at the first
//! differing byte).
//!
//! Format (UTF-8, one entry per line, fields separated by one space):
//!
//! ```text
//! tessera-tokens 1
//! NAME ROLE SERIES QUOTA SHA256
//! ```
//!
//! `#` lines and empty lines are ignored; the first other line is the header. NAME is 1–64 of
//! `A-Z a-z 0-9 . _ -` (not starting with `.` or `-`), unique; ROLE `backup`, `read` or
//! `admin`; SERIES a pattern of the same characters plus `*` (any run of characters), `*`
//! for every series; QUOTA decimal bytes or `-` for none; SHA256 64 lowercase hex digits.
//!
//! The file must not be readable or writable by group or others ([`check_private`]): it is
//! not the tokens, but it says who may do what. It is rewritten whole, staged as
//! `.NAME.tmp` with mode 0600, fsynced and renamed over the old one (the engine's durable
//! write), so a crash leaves the old file or the new one.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The header line of format 1.
pub const HEADER: &str = "tessera-tokens 1";
/// Largest tokens file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest name and series pattern.
pub const MAX_NAME_LEN: usize = 64;

/// What a token may do (see SPEC.md §22.3 for the endpoints of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Append-only pushes into its series: put objects, ask what exists, publish, list and
    /// read its own series' catalogue entries. No object reads, no other series.
    Backup,
    /// List and pull (restore or sync from the server) its series.
    Read,
    /// Everything the server offers.
    Admin,
}

impl Role {
    /// `backup`, `read`, `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    /// The role called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "backup" => Some(Self::Backup),
            "read" => Some(Self::Read),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// One token: who it is, what it may do, and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// Its name, in the audit log and `token list`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The series it may see and publish into (`*`: all).
    pub series: String,
    /// Most bytes of new stored data it may add, if limited.
    pub quota: Option<u64>,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

impl TokenEntry {
    /// Whether this token may see (and, with a role that publishes, publish into) `series`.
    pub fn covers(&self, series: &str) -> bool {
        self.role == Role::Admin || series_matches(&self.series, series)
    }

    /// Whether this token sees every series (an admin token, or the pattern `*`).
    pub fn covers_all(&self) -> bool {
        self.role == Role::Admin || self.series == "*"
    }
}

/// Whether `series` matches `pattern`, where `*` stands for any run of characters.
pub fn series_matches(pattern: &str, series: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), series.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and where in `series` its run currently ends.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if Some(c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

/// A name or pattern of 1–64 of `A-Z a-z 0-9 . _ -` (and `*` in a pattern), not starting
/// with `.` or `-`.
fn check_word(what: &str, word: &str, star: bool) -> Result<()> {
    let ok = !word.is_empty()
        && word.len() <= MAX_NAME_LEN
        && !word.starts_with(['.', '-'])
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || (star && b == b'*')
        });
    if ok {
        Ok(())
    } else {
        let extra = if star { " *" } else { "" };
        Err(Error::Usage(format!(
            "{what} {word:?} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -{extra} and not start with . or -"
        )))
    }
}

/// The SHA-256 of a presented token.
pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether two hashes are equal, in time independent of where they differ.
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a file that group or others may read or write (`chmod 600` it), one owned by
/// another user than the one running tessera (or root), and one in a directory that group
/// or others may write: whoever can write the directory can rename their own file into
/// its place (the server reloads the tokens file when it changes).
pub fn check_private(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;

    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Refused { reason: format!(
            "the {what} {} has mode {mode:04o}: group or others may read it; run `chmod 600 {}` (and keep it owned by the user that runs tessera)",
            path.display(),
            path.display()
        )});
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::Refused {
            reason: format!(
                "the {what} {} belongs to user id {}, not to the user running tessera ({me}) or root; chown it",
                path.display(),
                meta.uid()
            ),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("reading the directory {}", dir.display()), e))?;
    if dir_meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::Refused {
            reason: format!(
                "the {what} {} is in {}, which group or others may write (mode {:04o}): they could put their own file in its place; keep it in a directory only its owner can write",
                path.display(),
                dir.display(),
                dir_meta.permissions().mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Reads a small secret or config file after [`check_private`], refusing one over
/// [`MAX_FILE_BYTES`].
pub fn read_private(path: &Path, what: &str) -> Result<String> {
    check_private(path, what)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Error::Usage(format!(
            "the {what} {} has {len} bytes, more than {MAX_FILE_BYTES}",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))
}

/// The entries of a tokens file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// In file order.
    pub entries: Vec<TokenEntry>,
}

impl Tokens {
    /// A single admin token named `name` (for `serve --token-file`).
    pub fn single_admin(name: &str, token: &str) -> Self {
        Self {
            entries: vec![TokenEntry {
                name: name.into(),
                role: Role::Admin,
                series: "*".into(),
                quota: None,
                hash: hash_token(token.as_bytes()),
            }],
        }
    }

    /// Parses the text of a tokens file (`from` names it in messages).
    pub fn parse(text: &str, from: &str) -> Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, HEADER)) => {}
            other => {
                return Err(Error::Usage(format!(
                    "{from}: the first line must be {HEADER:?}, not {:?}",
                    other.map_or("", |(_, l)| l)
                )))
            }
        }
        let mut out = Self::default();
        for (no, line) in lines {
            let entry = parse_entry(line)
                .map_err(|why| Error::Usage(format!("{from} line {}: {why}", no + 1)))?;
            if out.get(&entry.name).is_some() {
                return Err(Error::Usage(format!(
                    "{from} line {}: the name {:?} is used twice",
                    no + 1,
                    entry.name
                )));
            }
            out.entries.push(entry);
        }
        Ok(out)
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "# tessera tokens file (SPEC.md §22.3); change it with `tessera token`\n{HEADER}\n"
        );
        for e in &self.entries {
            let quota = e.quota.map_or_else(|| "-".to_string(), |q| q.to_string());
            let _ = writeln!(
                out,
                "{} {} {} {quota} {}",
                e.name,
                e.role.name(),
                e.series,
                hex::encode(e.hash)
            );
        }
        out
    }

    /// Reads `path` (which must be private, see [`check_private`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_private(path, "tokens file")?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`Tokens::load`], or no tokens when `path` does not exist.
    pub fn load_or_new(path: &Path) -> Result<Self> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            _ => Self::load(path),
        }
    }

    /// Writes the file durably with mode 0600 (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_private(path, self.encode().as_bytes())
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&TokenEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The entry whose hash is `hash`, comparing with every entry in constant time.
    pub fn find(&self, hash: &[u8; 32]) -> Option<&TokenEntry> {
        let mut found = None;
        for e in &self.entries {
            if hashes_equal(&e.hash, hash) {
                found = Some(e);
            }
        }
        found
    }

    /// Adds a new token; returns its entry and the token itself (to be shown once).
    /// Without `name`, the entry is called `ROLE-N` with the first free N.
    pub fn add(
        &mut self,
        role: Role,
        series: &str,
        name: Option<&str>,
        quota: Option<u64>,
    ) -> Result<(TokenEntry, String)> {
        check_word("the series pattern", series, true)?;
        let name = match name {
            Some(n) => {
                check_word("the token name", n, false)?;
                if self.get(n).is_some() {
                    return Err(Error::Usage(format!(
                        "a token called {n:?} exists already; remove it first or choose another --name"
                    )));
                }
                n.to_string()
            }
            // Among len + 1 names one is free.
            None => (1..=self.entries.len() + 1)
                .map(|n| format!("{}-{n}", role.name()))
                .find(|n| self.get(n).is_none())
                .unwrap_or_default(),
        };
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let token = hex::encode(secret);
        let entry = TokenEntry {
            name,
            role,
            series: series.into(),
            quota,
            hash: hash_token(token.as_bytes()),
        };
        self.entries.push(entry.clone());
        Ok((entry, token))
    }

    /// Removes the entry called `name`.
    pub fn remove(&mut self, name: &str) -> Result<TokenEntry> {
        let at = self
            .entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| Error::Usage(format!("no token is called {name:?}")))?;
        Ok(self.entries.remove(at))
    }
}

fn parse_entry(line: &str) -> std::result::Result<TokenEntry, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [name, role, series, quota, hash] = fields.as_slice() else {
        return Err(format!(
            "{} fields where NAME ROLE SERIES QUOTA SHA256 are 5",
            fields.len()
        ));
    };
    check_word("the token name", name, false).map_err(|e| e.to_string())?;
    check_word("the series pattern", series, true).map_err(|e| e.to_string())?;
    let role = Role::parse(role).ok_or_else(|| format!("unknown role {role:?}"))?;
    let quota = match *quota {
        "-" => None,
        q => Some(q.parse().map_err(|_| format!("quota {q:?} is not bytes"))?),
    };
    let mut digest = [0u8; 32];
    let well_formed = hash.len() == 64
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && hex::decode_to_slice(hash, &mut digest).is_ok();
    if !well_formed {
        return Err("the hash is not 64 lowercase hex digits".into());
    }
    Ok(TokenEntry {
        name: (*name).into(),
        role,
        series: (*series).into(),
        quota,
        hash: digest,
    })
}

/// `DIR/.NAME.tmp`, where `path` = `DIR/NAME` is staged before it is renamed into place.
fn staged_name(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} does not name a file", path.display())))?;
    let mut staged = std::ffi::OsString::from(".");
    staged.push(name);
    staged.push(".tmp");
    Ok(path.with_file_name(staged))
}

/// Writes `bytes` to `path` with mode 0600 through the engine's durable write (staged,
/// fsynced, renamed, directory fsynced).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let staged = staged_name(path)?;
    let failed = |e| Error::io(format!("writing {}", path.display()), e);
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&staged)
        .map_err(failed)?;
    let written = std::io::Write::write_all(&mut &file, bytes)
        .and_then(|()| crate::storage::durable::install_written(&file, &staged, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(failed(e));
    }
    Ok(())
}

/// What identifies a version of a file cheaply: device, inode, size and modification time
/// (seconds, nanoseconds).
pub type FileStamp = (u64, u64, u64, i64, i64);

/// The [`FileStamp`] of `path`, `None` when it cannot be read.
pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (p, s, m) in [
            ("*", "anything", true),
            ("vm*", "vm", true),
            ("vm*", "vm-web", true),
            ("vm*", "db", false),
            ("*-web", "vm-web", true),
            ("*-web", "vm-web2", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYc2", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
        ] {
            assert_eq!(series_matches(p, s), m, "{p} {s}");
        }
    }

    #[test]
    fn round_trip_and_lookup() {
        let mut t = Tokens::default();
        let (b, backup_token) = t.add(Role::Backup, "vm*", None, Some(1 << 30)).unwrap();
        let (r, read_token) = t.add(Role::Read, "*", Some("puller"), None).unwrap();
        assert_eq!((b.name.as_str(), r.name.as_str()), ("backup-1", "puller"));
        assert_eq!(backup_token.len(), 64);
        let text = t.encode();
        assert!(!text.contains(&backup_token) && !text.contains(&read_token));
        let again = Tokens::parse(&text, "t").unwrap();
        assert_eq!(again, t);
        let found = again.find(&hash_token(backup_token.as_bytes())).unwrap();
        assert_eq!((found.role, found.quota), (Role::Backup, Some(1 << 30)));
        assert!(again.find(&hash_token(b"nope")).is_none());
        assert!(t.add(Role::Admin, "*", Some("puller"), None).is_err());
        assert!(t.add(Role::Admin, "bad pattern", None, None).is_err());
        t.remove("puller").unwrap();
        assert!(t.remove("puller").is_err());
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        let h = "0".repeat(64);
        for (text, says) in [
            ("nothing\n", "first line"),
            (
                &format!("{HEADER}\na admin * - {h} extra\n") as &str,
                "line 2",
            ),
            (&format!("{HEADER}\na boss * - {h}\n"), "unknown role"),
            (&format!("{HEADER}\na admin * lots {h}\n"), "quota"),
            (
                &format!("{HEADER}\na admin * - {}\n", "G".repeat(64)),
                "hash",
            ),
            (
                &format!("{HEADER}\na admin * - {h}\na read * - {h}\n"),
                "twice",
            ),
            (&format!("{HEADER}\n../x admin * - {h}\n"), "name"),
        ] {
            let err = Tokens::parse(text, "f").unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn saved_files_are_private_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let mut t = Tokens::default();
        t.add(Role::Admin, "*", None, None).unwrap();
        t.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Tokens::load(&path).unwrap(), t);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Tokens::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
