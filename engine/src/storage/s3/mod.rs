//! [`Backend`] on an S3 bucket and key prefix, through `object_store` (SPEC §2a, "S3 backend").
//!
//! The engine is synchronous; the backend owns one small tokio runtime (two worker threads)
//! and runs each call with `block_on`. Part uploads are spawned onto it, so several are in
//! flight while the engine keeps compressing the next records.
//!
//! How the contract of [`super`] is met:
//! - **Atomic put.** An object smaller than one part goes up in one `PUT` at `finish`; a
//!   larger one (packs) as a multipart upload whose `CompleteMultipartUpload` at `finish`
//!   makes it visible whole. An unfinished writer aborts its upload when dropped; what a
//!   crash leaves is an incomplete upload, invisible to readers and listings, which
//!   [`Backend::clean_staging`] (run only when a writer opens) aborts once it is
//!   [`STALE_UPLOAD`] (a week) old.
//! - **Create-only.** Single puts send `If-None-Match: *` (S3 and SeaweedFS answer 412 when
//!   the key is taken). A 412 is checked by reading the object back: the same bytes mean an
//!   earlier attempt of this very put landed and its answer was lost (a retried request), so
//!   the put succeeded; other bytes mean another writer won ([`Error::ObjectExists`]).
//!   Multipart puts cannot carry the condition everywhere; they are used only for objects
//!   larger than a part, which are packs, named by a random 128-bit id, so no two writers
//!   ever create the same pack key. A `HEAD` just before completing refuses a taken key
//!   anyway. On a server that ignores `If-None-Match`, create-only stays correct for every
//!   key tessera creates except `config` (content-addressed snapshot files and fixed-content
//!   markers are the same bytes whoever writes them; packs are unique): see SPEC §2a.
//! - **Durable on return.** S3 acknowledges a `PUT`, a completed upload or a `DELETE` only
//!   once it is stored.
//! - **Bounded.** Retries (exponential backoff with jitter on 5xx, 429, `SlowDown`, timeouts
//!   and dropped connections) are bounded in count and in time ([`RetryBounds`]); every
//!   request has a timeout; a whole-object read refuses objects over [`MAX_OBJECT`] and never
//!   buffers more than the object's announced size; a ranged read never more than asked.

mod config;
mod counting;
mod error;
mod retention;
mod signed;
mod uploads;
mod writer;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential, S3ConditionalPut};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};

pub use config::{Credentials, RetryBounds, S3Location, S3Options};
pub use counting::RequestCounts;
use counting::{Counters, CountingConnector};
pub use error::RemoteProblem;

use super::{Backend, ObjectKey, ObjectWriter, PutMode, RetentionMode};
use crate::error::{Error, Result};
use error::Classify;

/// Largest object read whole: a pack is about 32 MiB, a snapshot file of 1024 disks of
/// 1 TiB at 64 KiB blocks about 1 GiB.
pub const MAX_OBJECT: u64 = 1 << 30;

/// Size of a multipart upload's parts (S3 wants at least 5 MiB but for the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one object uploading at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Ranged reads of one [`Backend::get_ranges`] call running at once: a single `GET` on
/// loopback SeaweedFS moves ~100 MiB/s, several together several times that.
pub const READS_IN_FLIGHT: usize = 8;
/// Incomplete uploads younger than this are never aborted: another client sharing the
/// bucket may be uploading them now. It is the default grace period of shared stores
/// (`ops::compact::DEFAULT_GRACE_US`, asserted there), whose contract is that every operation
/// finishes within it of its open (SPEC §13): an upload is younger than the operation that
/// started it, so one older than this belongs to an operation that crashed or broke the
/// contract. The price is that a crashed writer's upload is billed for up to a week.
pub const STALE_UPLOAD: Duration = Duration::from_hours(7 * 24);

/// See the module docs.
pub struct S3Backend {
    inner: Arc<Inner>,
}

/// What a backend and its writers share.
struct Inner {
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
    location: S3Location,
    url: String,
    /// `PREFIX/`, or empty.
    root: String,
    /// The endpoint as given, or AWS's, for messages.
    endpoint: String,
    /// Base URL of bucket-level requests (`ENDPOINT/BUCKET` or `BUCKET.ENDPOINT`).
    bucket_endpoint: String,
    region: String,
    credential: AwsCredential,
    http: HttpClient,
    retry: RetryBounds,
    /// Every HTTP request sent, by kind.
    counters: Arc<Counters>,
}

impl S3Backend {
    /// Connects to `location` and checks, with one listing request, that the endpoint
    /// answers, the credentials are accepted and the bucket exists, so that a wrong endpoint,
    /// refused credentials or a missing bucket fail here, naming what is wrong.
    pub fn connect(location: S3Location, options: &S3Options) -> Result<Self> {
        let resolved = config::resolve(options, &config::process_env())?;
        let url = location.url();
        let endpoint = resolved
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", resolved.region));
        let bucket = &location.bucket;
        let bucket_endpoint = bucket_endpoint(&endpoint, bucket, resolved.path_style);
        let counters = Arc::new(Counters::default());
        let classify = Classify {
            location: &url,
            endpoint: &endpoint,
            bucket,
        };
        let credentials = resolved
            .credentials
            .ok_or_else(|| classify.remote("connecting", RemoteProblem::NoCredentials))?;
        let client_options = ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(options.retry.request_timeout)
            .with_connect_timeout(options.retry.connect_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: options.retry.first_backoff,
                max_backoff: options.retry.max_backoff,
                base: 2.0,
            },
            max_retries: options.retry.max_retries,
            retry_timeout: options.retry.max_elapsed,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&resolved.region)
            .with_endpoint(&bucket_endpoint)
            .with_virtual_hosted_style_request(true)
            .with_access_key_id(&credentials.key_id)
            .with_secret_access_key(&credentials.secret)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(client_options.clone())
            .with_http_connector(CountingConnector(counters.clone()))
            .with_retry(retry.clone());
        if let Some(token) = &credentials.token {
            builder = builder.with_token(token);
        }
        let setup = |e: &object_store::Error| {
            classify.remote(
                "setting up the S3 client",
                RemoteProblem::Protocol {
                    what: format!(
                        "invalid client settings ({})",
                        error::s3_code(&e.to_string()).unwrap_or("see the endpoint and region")
                    ),
                },
            )
        };
        // The probe of `connect` retries once only: a wrong endpoint or a server that is
        // down fails at once, before anything is written, instead of after the long retries
        // that ride out a restart in the middle of a backup.
        let probe_store = builder
            .clone()
            .with_retry(RetryConfig {
                max_retries: 1,
                ..retry.clone()
            })
            .build()
            .map_err(|e| setup(&e))?;
        let store = builder.build().map_err(|e| setup(&e))?;
        let http = CountingConnector(counters.clone())
            .connect(&client_options)
            .map_err(|e| setup(&e))?;
        let backend = Self {
            inner: Arc::new(Inner {
                store,
                runtime: runtime()?,
                root: if location.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", location.prefix)
                },
                location,
                url,
                endpoint,
                bucket_endpoint,
                region: resolved.region,
                credential: AwsCredential {
                    key_id: credentials.key_id.clone(),
                    secret_key: credentials.secret.clone(),
                    token: credentials.token.clone(),
                },
                http,
                retry: options.retry,
                counters,
            }),
        };
        backend.probe(&probe_store)?;
        Ok(backend)
    }

    /// One listing request under the prefix (see [`Self::connect`]), through `store`.
    fn probe(&self, store: &AmazonS3) -> Result<()> {
        let inner = &*self.inner;
        let prefix = inner.path("");
        inner
            .run(store.list_with_delimiter(Some(&prefix)))
            .map(|_| ())
            .map_err(|e| inner.classify().error("checking the bucket", &e))
    }

    /// Whether no object at all lies under the prefix (tessera's or not).
    pub fn is_empty(&self) -> Result<bool> {
        let inner = &*self.inner;
        let prefix = inner.path("");
        let mut listing = inner.store.list(Some(&prefix));
        match inner.run(listing.next()) {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(inner.classify().error("listing the prefix", &e)),
        }
    }

    /// The incomplete multipart uploads of tessera keys under the prefix: each key (without
    /// the prefix) and how long ago, by the server's clock, it started.
    pub fn incomplete_uploads(&self) -> Result<Vec<(String, Duration)>> {
        Ok(uploads::list(&self.inner)?
            .into_iter()
            .map(|u| (u.key, u.age))
            .collect())
    }

    /// Aborts the incomplete uploads of tessera keys started at least `age` ago; returns how
    /// many. [`Backend::clean_staging`] does this with [`STALE_UPLOAD`].
    pub fn abort_uploads_older_than(&self, age: Duration) -> Result<usize> {
        uploads::abort_older_than(&self.inner, age)
    }

    /// The bucket and prefix.
    pub fn location(&self) -> &S3Location {
        &self.inner.location
    }

    /// The endpoint URL requests go to (no credentials in it).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }
}

impl Inner {
    fn classify(&self) -> Classify<'_> {
        Classify {
            location: &self.url,
            endpoint: &self.endpoint,
            bucket: &self.location.bucket,
        }
    }

    fn path(&self, key: &str) -> StorePath {
        StorePath::from(format!("{}{key}", self.root))
    }

    /// Runs `future` on the backend's runtime, from a short-lived thread that blocks SIGPIPE
    /// ([`block_sigpipe`]: the future may write to a connection itself), and which is
    /// outside any other runtime (where `block_on` is not allowed). A thread costs tens of
    /// microseconds, a request to the store at least a round trip.
    fn run<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                block_sigpipe();
                self.runtime.block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Reads `key` (a range of it, or all of it up to [`MAX_OBJECT`]), buffering at most
    /// `limit` bytes. Returns the bytes and the object's size.
    fn read(&self, key: &ObjectKey, range: Option<(u64, usize)>) -> Result<(Vec<u8>, u64)> {
        let context = || match range {
            Some((offset, len)) => format!("reading {len} bytes at {offset} of {key}"),
            None => format!("reading {key}"),
        };
        // The offset comes from the index or a pack's footer: untrusted, it may not fit.
        let end = match range {
            Some((offset, len)) => match offset.checked_add(len as u64) {
                Some(end) => Some(end),
                None => return Err(past_end(context(), "the range ends past 2^64".into())),
            },
            None => None,
        };
        let options = GetOptions {
            range: range
                .zip(end)
                .map(|((offset, _), end)| GetRange::Bounded(offset..end)),
            ..GetOptions::default()
        };
        let path = self.path(key.as_str());
        let read = async {
            let got = self.store.get_opts(&path, options).await?;
            let size = got.meta.size;
            let limit = match range {
                Some((_, len)) => len as u64,
                None => size,
            };
            if limit > MAX_OBJECT {
                return Ok(Err(RemoteProblem::TooLarge {
                    size,
                    limit: MAX_OBJECT,
                }));
            }
            let mut out = Vec::with_capacity(limit.min(64 << 20) as usize);
            let mut stream = got.into_stream();
            while let Some(piece) = stream.next().await {
                let piece: Bytes = piece?;
                if out.len() as u64 + piece.len() as u64 > limit {
                    return Ok(Err(RemoteProblem::Protocol {
                        what: format!("more than the {limit} bytes announced"),
                    }));
                }
                out.extend_from_slice(&piece);
            }
            Ok(Ok((out, size)))
        };
        match self.run(read) {
            Ok(Ok((bytes, size))) => match range {
                Some((offset, len)) if bytes.len() != len => Err(past_end(
                    context(),
                    format!(
                        "the object ends at {size}, before {}",
                        offset.saturating_add(len as u64)
                    ),
                )),
                None if bytes.len() as u64 != size => Err(self.classify().remote(
                    context(),
                    RemoteProblem::Protocol {
                        what: format!("{} bytes of the {size} announced", bytes.len()),
                    },
                )),
                _ => Ok((bytes, size)),
            },
            Ok(Err(problem)) => Err(self.classify().remote(context(), problem)),
            Err(e) => {
                let err = self.classify().error(context(), &e);
                // A range starting past the end is refused by the server (416): say so the
                // way the contract asks, if the object exists and is that short.
                match (range, &err) {
                    (Some((offset, len)), Error::Remote { .. }) => match self.size(key) {
                        Ok(Some(size)) if offset.saturating_add(len as u64) > size => {
                            Err(past_end(context(), format!("the object ends at {size}")))
                        }
                        _ => Err(err),
                    },
                    _ => Err(err),
                }
            }
        }
    }

    fn size(&self, key: &ObjectKey) -> Result<Option<u64>> {
        match self.run(self.store.head(&self.path(key.as_str()))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) => match self.classify().error(format!("inspecting {key}"), &e) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }
}

/// The base URL of bucket-level requests: `ENDPOINT/BUCKET` (path style) or
/// `SCHEME://BUCKET.HOST` (virtual-hosted).
fn bucket_endpoint(endpoint: &str, bucket: &str, path_style: bool) -> String {
    if path_style {
        format!("{}/{bucket}", endpoint.trim_end_matches('/'))
    } else {
        match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
            None => endpoint.to_string(),
        }
    }
}

/// The backend's runtime: two worker threads, SIGPIPE blocked in each.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tessera-s3")
        .on_thread_start(block_sigpipe)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the S3 client's runtime", e))
}

/// Blocks SIGPIPE in the calling thread (each of the runtime's threads, where the HTTP
/// connections write). A front end may restore SIGPIPE's default action so that a closed
/// standard output ends it quietly (the CLI does), but the HTTP stack writes requests with
/// `writev`, which raises SIGPIPE on a connection the server reset: that would kill the
/// whole process instead of failing one request that the retries then repeat. Blocked, the
/// write fails with `EPIPE` and the signal stays pending on that thread, never delivered.
fn block_sigpipe() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    // Cannot fail with a valid `how` and set.
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

fn past_end(context: String, why: String) -> Error {
    Error::io(context, io::Error::new(io::ErrorKind::UnexpectedEof, why))
}

impl Backend for S3Backend {
    fn put(&self, key: &ObjectKey, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(writer::S3Writer::new(
            self.inner.clone(),
            key.clone(),
            mode,
        )))
    }

    fn get_range(&self, key: &ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return match self.inner.size(key)? {
                Some(size) if offset <= size => Ok(Vec::new()),
                Some(size) => Err(past_end(
                    format!("reading 0 bytes at {offset} of {key}"),
                    format!("the object ends at {size}"),
                )),
                None => Err(self.inner.classify().error(
                    format!("reading {key}"),
                    &object_store::Error::NotFound {
                        path: key.to_string(),
                        source: "HEAD found no object".into(),
                    },
                )),
            };
        }
        self.inner.read(key, Some((offset, len))).map(|(b, _)| b)
    }

    fn get(&self, key: &ObjectKey) -> Result<Vec<u8>> {
        self.inner.read(key, None).map(|(b, _)| b)
    }

    fn get_ranges(&self, ranges: &[(ObjectKey, u64, usize)]) -> Vec<Result<Vec<u8>>> {
        crate::in_flight::map_in_flight(ranges, READS_IN_FLIGHT, |(key, offset, len)| {
            self.get_range(key, *offset, *len)
        })
    }

    fn size(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.inner.size(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        let inner = &*self.inner;
        let base = inner.path(prefix.trim_end_matches('/'));
        let listed = inner.run(async {
            let mut out = Vec::new();
            let mut stream = inner.store.list(Some(&base));
            while let Some(meta) = stream.next().await {
                out.push(meta?.location);
            }
            Ok::<_, object_store::Error>(out)
        });
        let paths = listed.map_err(|e| inner.classify().error(format!("listing {prefix}"), &e))?;
        let mut keys: Vec<ObjectKey> = paths
            .into_iter()
            .filter_map(|p| {
                let key = p.as_ref().strip_prefix(inner.root.as_str())?.to_string();
                key.starts_with(prefix).then(|| ObjectKey::from_listed(key))
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &ObjectKey) -> Result<()> {
        let inner = &*self.inner;
        match inner.run(inner.store.delete(&inner.path(key.as_str()))) {
            Ok(()) => Ok(()),
            Err(e) => match inner.classify().error(format!("deleting {key}"), &e) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }

    fn clean_staging(&self) -> Result<usize> {
        uploads::abort_older_than(&self.inner, STALE_UPLOAD)
    }

    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    fn list_stamped(&self, prefix: &str) -> Result<Vec<(ObjectKey, i64)>> {
        let inner = &*self.inner;
        let base = inner.path(prefix.trim_end_matches('/'));
        let listed = inner.run(async {
            let mut out = Vec::new();
            let mut stream = inner.store.list(Some(&base));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                out.push((meta.location, meta.last_modified.timestamp_micros()));
            }
            Ok::<_, object_store::Error>(out)
        });
        let listed = listed.map_err(|e| inner.classify().error(format!("listing {prefix}"), &e))?;
        let mut keys: Vec<(ObjectKey, i64)> = listed
            .into_iter()
            .filter_map(|(p, at)| {
                let key = p.as_ref().strip_prefix(inner.root.as_str())?.to_string();
                key.starts_with(prefix)
                    .then(|| (ObjectKey::from_listed(key), at))
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn clock_us(&self) -> Result<i64> {
        uploads::server_time(&self.inner).map(|t| t.timestamp_micros())
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn check_retention(&self) -> Result<()> {
        retention::check(&self.inner)
    }

    fn retain(
        &self,
        key: &ObjectKey,
        at_least_us: i64,
        until_us: i64,
        mode: RetentionMode,
    ) -> Result<i64> {
        retention::retain(&self.inner, key, at_least_us, until_us, mode)
    }

    fn retention(&self, key: &ObjectKey) -> Result<Option<i64>> {
        retention::get(&self.inner, key)
    }

    fn put_retained(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        until_us: i64,
        mode: RetentionMode,
    ) -> Result<i64> {
        retention::put_retained(&self.inner, key, bytes, until_us, mode)
    }

    fn requests(&self) -> Option<RequestCounts> {
        Some(self.inner.counters.read())
    }
}
