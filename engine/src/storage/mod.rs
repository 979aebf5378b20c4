//! The storage seam: every durable object of a repository (config, packs, snapshot files,
//! protection markers, damage marks, quarantined packs) goes through [`Backend`], a trait
//! shaped like an object store. Only the backends know where bytes physically live; the rest
//! of the engine names objects by [`ObjectKey`].
//!
//! # Contract of [`Backend`]
//!
//! - **Put is whole-object and atomic.** [`Backend::put`] returns a writer; nothing is visible
//!   under the key until [`ObjectWriter::finish`] returns `Ok`, and then the whole object is.
//!   Dropping an unfinished writer abandons the put (nothing becomes visible). A reader never
//!   sees a partial object.
//! - **Durable on return.** When `finish` returns `Ok`, the object survives a crash or power
//!   loss. When [`Backend::delete`] returns `Ok`, the deletion does too. Nothing else is
//!   promised about durability: there is no rename and no fsync in this contract (the local
//!   backend performs write → fsync → rename → directory fsync inside its own `finish`,
//!   see [`durable`]).
//! - **Create-only puts.** With [`PutMode::Create`], `finish` fails with
//!   [`Error::ObjectExists`] if an object already exists under the key, atomically (two
//!   racing creators: exactly one wins). [`PutMode::Replace`] atomically replaces: readers
//!   see the old object or the new one.
//! - **Reads.** [`Backend::get_range`] reads a byte range of a finished object; a range past
//!   its end is an error of kind [`std::io::ErrorKind::UnexpectedEof`]; a missing object is
//!   [`Error::is_not_found`]. Reads of finished objects may run concurrently with anything.
//! - **List.** [`Backend::list`] returns the keys under a prefix (sorted): every object whose
//!   put finished before the call started and that was not deleted before it started; objects
//!   put or deleted during the call may or may not appear. Unfinished puts never appear.
//! - **Staging.** [`Backend::clean_staging`] discards what unfinished puts of crashed
//!   processes left behind (staged files, incomplete multipart uploads). A writer's open
//!   calls it, under the writer lock; since backups store without that lock (SPEC.md §8),
//!   it must leave every put that can still finish: the local backend keeps staged files of
//!   live processes and of this process's open puts ([`staging`]), the S3 backend uploads
//!   younger than the grace period.
//!
//! Implementations: [`local::LocalBackend`] on a POSIX directory (through the [`fs::Fs`]
//! seam, so that [`sim::SimFs`] can simulate power loss under it), in two layouts: the
//! repository tree and the flat layout of a seed bundle; [`s3::S3Backend`] on an
//! S3-compatible bucket and key prefix.

pub mod durable;
pub mod fs;
pub mod immutable_file;
pub mod key;
pub mod local;
pub mod s3;
pub mod sim;
pub mod staging;

use std::io::Write;

pub use key::ObjectKey;

use crate::error::{Error, Result};

/// What a put does when the key already holds an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`Error::ObjectExists`] (atomically: of two racing creators one wins).
    Create,
    /// Replace the object atomically.
    Replace,
}

/// How an S3 store enforces a retention (a local directory has one way: `chattr +i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// No one can shorten or remove it, not even the account's root user.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can; tessera never asks to.
    Governance,
}

impl RetentionMode {
    /// The name S3 uses.
    pub fn s3_name(self) -> &'static str {
        match self {
            Self::Compliance => "COMPLIANCE",
            Self::Governance => "GOVERNANCE",
        }
    }
}

/// An object being written (see the module contract).
pub trait ObjectWriter: Write + Send {
    /// Makes the object visible and durable under its key.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Object storage: atomic whole-object put, ranged get, list by prefix, delete.
pub trait Backend: Send + Sync {
    /// Starts a put of `key` (see the module contract).
    fn put(&self, key: &ObjectKey, mode: PutMode) -> Result<Box<dyn ObjectWriter>>;
    /// Reads `len` bytes at `offset` of `key`.
    fn get_range(&self, key: &ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Reads a whole object.
    fn get(&self, key: &ObjectKey) -> Result<Vec<u8>>;
    /// Size of an object in bytes, `None` if there is none under `key`.
    fn size(&self, key: &ObjectKey) -> Result<Option<u64>>;
    /// Keys under `prefix` (one of the prefixes of [`key`]), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>>;
    /// Deletes an object; deleting a missing object is not an error. Durable on return.
    fn delete(&self, key: &ObjectKey) -> Result<()>;
    /// Discards the leftovers of crashed puts; returns how many (see the module contract).
    fn clean_staging(&self) -> Result<usize>;
    /// Where the objects live, for messages (a path or a URL).
    fn describe(&self) -> String;

    /// The keys under `prefix` with the time each object was stored, by the store's own
    /// clock (Unix microseconds). Only stores that several machines share answer it (their
    /// clock is the one every client agrees on, SPEC §13); the default refuses.
    fn list_stamped(&self, prefix: &str) -> Result<Vec<(ObjectKey, i64)>> {
        Err(Error::Internal(format!(
            "{} keeps no storage times (listing {prefix})",
            self.describe()
        )))
    }

    /// Reads several ranges (`key`, offset, length), each as [`Self::get_range`]; a remote
    /// store runs several at once. The answers are in the order asked.
    fn get_ranges(&self, ranges: &[(ObjectKey, u64, usize)]) -> Vec<Result<Vec<u8>>> {
        ranges
            .iter()
            .map(|(key, offset, len)| self.get_range(key, *offset, *len))
            .collect()
    }

    /// Whether each read is a request over a network (S3): then nearby records are read
    /// together ([`crate::store::reader::fetch_records`]) rather than one by one.
    fn is_remote(&self) -> bool {
        false
    }

    /// The requests sent to a remote store so far by this process, by kind; `None` for a
    /// store reached without requests (a directory).
    fn requests(&self) -> Option<s3::RequestCounts> {
        None
    }

    /// The store's clock now (Unix microseconds), the clock of [`Self::list_stamped`].
    fn clock_us(&self) -> Result<i64> {
        Err(Error::Internal(format!(
            "{} has no clock of its own",
            self.describe()
        )))
    }

    /// Whether objects can be made immutable here: an S3 bucket with Object Lock enabled,
    /// a directory whose filesystem takes `chattr +i` from this process. The error names
    /// what is missing (SPEC §28).
    fn check_retention(&self) -> Result<()> {
        Err(Error::Refused {
            reason: format!("{} cannot make objects immutable", self.describe()),
        })
    }

    /// Makes `key` immutable until `at_least_us` (Unix µs) at least, in `mode` where the
    /// store has modes: an object retained that long already keeps its date (never
    /// shortened); otherwise it is retained until `until_us` (no earlier than
    /// `at_least_us`). Returns the date the object is retained until now.
    fn retain(
        &self,
        key: &ObjectKey,
        at_least_us: i64,
        until_us: i64,
        mode: RetentionMode,
    ) -> Result<i64> {
        let _ = (at_least_us, until_us, mode);
        Err(Error::Refused {
            reason: format!("{} cannot make {key} immutable", self.describe()),
        })
    }

    /// The date `key` is retained until (Unix µs), `None` if it has no retention.
    fn retention(&self, key: &ObjectKey) -> Result<Option<i64>> {
        let _ = key;
        Ok(None)
    }

    /// Stores `bytes` under `key` as [`Self::put_content_addressed`] does, retained until
    /// `until_us` at least; returns the date. A store that can retain an object as it is
    /// written (S3) leaves no moment it exists unretained; the default retains it right
    /// after.
    fn put_retained(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        until_us: i64,
        mode: RetentionMode,
    ) -> Result<i64> {
        self.put_content_addressed(key, bytes)?;
        self.retain(key, until_us, until_us, mode)
    }

    /// Deletes `key` unless it is retained ([`Error::Immutable`]): returns whether it is
    /// gone. For paths that must not fail on what immutability keeps (it goes later).
    fn delete_unless_retained(&self, key: &ObjectKey) -> Result<bool> {
        match self.delete(key) {
            Ok(()) => Ok(true),
            Err(Error::Immutable { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Puts a whole object from memory.
    fn put_bytes(&self, key: &ObjectKey, mode: PutMode, bytes: &[u8]) -> Result<()> {
        let mut writer = self.put(key, mode)?;
        writer
            .write_all(bytes)
            .map_err(|e| Error::io(format!("writing {key}"), e))?;
        writer.finish()
    }

    /// Puts a content-addressed object: an existing object under `key` with the same bytes
    /// counts as success; one with other bytes (damaged) is replaced.
    fn put_content_addressed(&self, key: &ObjectKey, bytes: &[u8]) -> Result<()> {
        match self.put_bytes(key, PutMode::Create, bytes) {
            Err(Error::ObjectExists { .. }) => {
                if self.get(key).is_ok_and(|have| have == bytes) {
                    Ok(())
                } else {
                    self.put_bytes(key, PutMode::Replace, bytes)
                }
            }
            other => other,
        }
    }

    /// Reads a whole object, `None` if there is none.
    fn get_if_exists(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>> {
        match self.get(key) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
