//! A put in progress on S3 (see the parent module's docs for the protocol).
//!
//! Bytes collect in a part-sized buffer. An object that never fills one part goes up in a
//! single `PUT` at `finish`. The first full part starts a multipart upload; each full part is
//! spawned onto the backend's runtime, at most [`PARTS_IN_FLIGHT`] at once (the writer waits
//! for the oldest before starting another), so memory stays under
//! `(PARTS_IN_FLIGHT + 1) × PART_SIZE`. A part that fails after its retries fails the next
//! write or `finish`, and the writer refuses further writes (the `PreviousIo` rule).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode as StoreMode, PutOptions, PutPayload,
};
use tokio::task::JoinHandle;

use object_store::client::{HttpError, HttpErrorKind};

use super::config::Attempt;
use super::{Inner, PARTS_IN_FLIGHT, PART_SIZE};
use crate::error::{Error, Result};
use crate::storage::{ObjectKey, ObjectWriter, PutMode};

/// Longest wait for aborting an abandoned upload (what is left is cleaned up later).
const ABORT_WAIT: Duration = Duration::from_secs(10);

type PartResult = object_store::Result<()>;

pub(super) struct S3Writer {
    inner: Arc<Inner>,
    key: ObjectKey,
    mode: PutMode,
    buf: Vec<u8>,
    upload: Option<Multipart>,
    /// The first failure, reported by every later call.
    failed: Option<String>,
}

struct Multipart {
    upload: Box<dyn MultipartUpload>,
    in_flight: VecDeque<JoinHandle<PartResult>>,
    /// Bytes handed to parts so far.
    sent: u64,
}

impl S3Writer {
    pub fn new(inner: Arc<Inner>, key: ObjectKey, mode: PutMode) -> Self {
        Self {
            inner,
            key,
            mode,
            buf: Vec::new(),
            upload: None,
            failed: None,
        }
    }

    fn fail(&mut self, e: &object_store::Error, doing: &str) -> Error {
        let err = self
            .inner
            .classify()
            .error(format!("{doing} {}", self.key), e);
        self.failed = Some(err.to_string());
        err
    }

    /// Hands the buffer to a new part, starting the upload first if needed, and waits while
    /// too many parts are in flight.
    fn ship_part(&mut self) -> Result<()> {
        if self.upload.is_none() {
            let path = self.inner.path(self.key.as_str());
            let started = self.inner.run(self.inner.store.put_multipart(&path));
            let upload = started.map_err(|e| self.fail(&e, "starting the upload of"))?;
            self.upload = Some(Multipart {
                upload,
                in_flight: VecDeque::new(),
                sent: 0,
            });
        }
        let payload = PutPayload::from(std::mem::take(&mut self.buf));
        let Some(multipart) = self.upload.as_mut() else {
            return Err(Error::Internal("multipart upload vanished".into()));
        };
        multipart.sent += payload.content_length() as u64;
        let part = multipart.upload.put_part(payload);
        multipart
            .in_flight
            .push_back(self.inner.runtime.spawn(part));
        while self
            .upload
            .as_ref()
            .is_some_and(|m| m.in_flight.len() > PARTS_IN_FLIGHT)
        {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(handle) = self.upload.as_mut().and_then(|m| m.in_flight.pop_front()) else {
            return Ok(());
        };
        match self.inner.run(handle) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(&e, "uploading a part of")),
            Err(join) => {
                let err = Error::Internal(format!("a part upload of {} died: {join}", self.key));
                self.failed = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// A single `PUT` of the whole object (it never filled a part).
    fn put_whole(&mut self) -> Result<()> {
        let bytes = std::mem::take(&mut self.buf);
        let inner = &*self.inner;
        let path = inner.path(self.key.as_str());
        let opts = PutOptions {
            mode: match self.mode {
                PutMode::Create => StoreMode::Create,
                PutMode::Replace => StoreMode::Overwrite,
            },
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.clone());
        // `object_store` does not retry a create-only put whose connection broke after it
        // was sent (it is not idempotent); the read-back below makes retrying it safe.
        let put = inner.retry.retry(|| {
            match inner.run(inner.store.put_opts(&path, payload.clone(), opts.clone())) {
                Ok(_) => Attempt::Done(()),
                Err(e) if self.mode == PutMode::Create && interrupted(&e) => Attempt::Again(e),
                Err(e) => Attempt::Fail(e),
            }
        });
        match put {
            Ok(()) => Ok(()),
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                // Taken: by an earlier attempt of this put whose answer was lost (same
                // bytes), or by another writer.
                match inner.read(&self.key, None) {
                    Ok((have, _)) if have == bytes => Ok(()),
                    Ok(_) => Err(Error::ObjectExists {
                        key: self.key.to_string(),
                    }),
                    Err(_) => Err(self.fail(&e, "storing")),
                }
            }
            Err(e) => Err(self.fail(&e, "storing")),
        }
    }

    /// Uploads the last part, waits for every part, and completes the upload.
    fn complete(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.ship_part()?;
        }
        while self
            .upload
            .as_ref()
            .is_some_and(|m| !m.in_flight.is_empty())
        {
            self.wait_oldest()?;
        }
        if self.mode == PutMode::Create && self.inner.size(&self.key)?.is_some() {
            return Err(Error::ObjectExists {
                key: self.key.to_string(),
            });
        }
        let Some(mut multipart) = self.upload.take() else {
            return Err(Error::Internal("multipart upload vanished".into()));
        };
        match self.inner.run(multipart.upload.complete()) {
            Ok(_) => Ok(()),
            Err(e) => {
                // The answer may have been lost after the upload completed (a retried
                // completion then finds no upload): the object is ours if it is there with
                // exactly the bytes sent (multipart puts are only of unique pack keys).
                if self.inner.size(&self.key).ok().flatten() == Some(multipart.sent) {
                    return Ok(());
                }
                let err = self.fail(&e, "completing the upload of");
                self.upload = Some(multipart);
                Err(err)
            }
        }
    }
}

/// A transport failure after the request may have been sent (reset, timeout).
fn interrupted(e: &object_store::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Interrupted | HttpErrorKind::Timeout | HttpErrorKind::Request
            );
        }
        current = err.source();
    }
    false
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(format!(
                "an earlier upload of this object failed: {why}"
            )));
        }
        let room = PART_SIZE - self.buf.len();
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == PART_SIZE {
            self.ship_part().map_err(io::Error::other)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.failed.is_some() {
            return Err(Error::PreviousIo);
        }
        if self.upload.is_some() {
            self.complete()
        } else {
            self.put_whole()
        }
    }
}

impl Drop for S3Writer {
    /// Abandons an unfinished upload: parts in flight are cancelled and the upload aborted
    /// (waiting at most [`ABORT_WAIT`]; what remains is aborted by a later
    /// [`crate::storage::Backend::clean_staging`]).
    fn drop(&mut self) {
        if let Some(mut multipart) = self.upload.take() {
            for handle in &multipart.in_flight {
                handle.abort();
            }
            // The timer must be made inside the runtime.
            let abort = async { tokio::time::timeout(ABORT_WAIT, multipart.upload.abort()).await };
            let _ = self.inner.run(abort);
        }
    }
}
