//! The `Read + Seek` the `ntfs` crate reads through: a cursor over an [`Image`] that keeps the
//! first error of the image (a damaged chunk stays [`FsError::Image`], exit 4, instead of
//! becoming an `io::Error` string) and stops after a budget of bytes, so a crafted structure
//! that makes the crate read in a loop (an index node that names itself as its own child)
//! ends in an error instead of running on.

use std::io::{self, Read, Seek, SeekFrom};

use crate::explore::image::Image;
use crate::explore::FsError;

/// A cursor over a volume for one operation of the reader.
pub(super) struct Reader<'a> {
    volume: &'a dyn Image,
    pos: u64,
    /// Bytes that may still be read.
    budget: u64,
    /// The budget it started with (for messages).
    limit: u64,
    /// The first failure of the image, or the budget running out.
    failure: Option<Failure>,
}

/// Why a read failed, kept for the error the caller returns.
pub(super) enum Failure {
    /// The image could not be read there.
    Image(FsError),
    /// More than the budget was read.
    Budget(u64),
}

impl<'a> Reader<'a> {
    /// A cursor at 0 that reads at most `budget` bytes.
    pub(super) fn new(volume: &'a dyn Image, budget: u64) -> Self {
        Self {
            volume,
            pos: 0,
            budget,
            limit: budget,
            failure: None,
        }
    }

    /// Lets it read `more` bytes more (a directory's index allocation, once).
    pub(super) fn allow(&mut self, more: u64) {
        self.budget = self.budget.saturating_add(more);
        self.limit = self.limit.saturating_add(more);
    }

    /// The failure that made a read fail, if one did (taken: a second call gives `None`).
    pub(super) fn take_failure(&mut self) -> Option<Failure> {
        self.failure.take()
    }
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.volume.len();
        if self.pos >= len || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(len - self.pos);
        if n > self.budget {
            self.failure.get_or_insert(Failure::Budget(self.limit));
            return Err(io::Error::other("the NTFS read budget is spent"));
        }
        let n_usize = n as usize;
        if let Err(e) = self.volume.read_at(self.pos, &mut buf[..n_usize]) {
            let shown = e.to_string();
            self.failure.get_or_insert(Failure::Image(e));
            return Err(io::Error::other(shown));
        }
        self.budget -= n;
        self.pos += n;
        Ok(n_usize)
    }
}

impl Seek for Reader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.volume.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a seek before the start of the volume or past 2^64",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_budget_and_keep_why() {
        let volume: Vec<u8> = (0..=255).collect();
        let mut r = Reader::new(&volume, 100);
        let mut buf = [0u8; 60];
        r.seek(SeekFrom::Start(10)).unwrap();
        assert_eq!(r.read(&mut buf).unwrap(), 60);
        assert_eq!(buf[0], 10);
        assert!(r.read(&mut buf).is_err());
        assert!(matches!(r.take_failure(), Some(Failure::Budget(100))));
        r.seek(SeekFrom::Start(250)).unwrap();
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 4);
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 2);
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        assert!(r.seek(SeekFrom::Current(-1000)).is_err());
    }
}
