//! Counting the HTTP requests sent to the object store, by kind: what a backup costs in
//! requests (SPEC §2a; the macro benchmark prints it for a delta backup). Every attempt is
//! counted, retries included: it is what the server sees, and what a provider bills.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

/// Requests sent so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// `GET` of an object (whole or a range).
    pub get: u64,
    /// `GET` of a listing (objects or incomplete uploads).
    pub list: u64,
    /// `HEAD` of an object.
    pub head: u64,
    /// `PUT` of an object or of one part of a multipart upload.
    pub put: u64,
    /// `POST`: starting or completing a multipart upload.
    pub post: u64,
    /// `DELETE` of an object or of an incomplete upload.
    pub delete: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.list + self.head + self.put + self.post + self.delete
    }

    /// The requests of `self` made since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            get: self.get - earlier.get,
            list: self.list - earlier.list,
            head: self.head - earlier.head,
            put: self.put - earlier.put,
            post: self.post - earlier.post,
            delete: self.delete - earlier.delete,
        }
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub(super) struct Counters([AtomicU64; 6]);

impl Counters {
    fn note(&self, request: &HttpRequest) {
        let query = request.uri().query().unwrap_or_default();
        let listing = query.contains("list-type=") || query.starts_with("uploads");
        let slot = match *request.method() {
            http::Method::GET if listing => 1,
            http::Method::GET => 0,
            http::Method::HEAD => 2,
            http::Method::PUT => 3,
            http::Method::POST => 4,
            _ => 5,
        };
        self.0[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn read(&self) -> RequestCounts {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        RequestCounts {
            get: n(0),
            list: n(1),
            head: n(2),
            put: n(3),
            post: n(4),
            delete: n(5),
        }
    }
}

/// An HTTP client that counts each request, then sends it with reqwest.
#[derive(Debug)]
struct Counting {
    inner: HttpClient,
    counters: Arc<Counters>,
}

#[async_trait]
impl HttpService for Counting {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.counters.note(&request);
        self.inner.execute(request).await
    }
}

/// Makes counting clients (for `object_store` and for tessera's own signed requests).
#[derive(Debug)]
pub(super) struct CountingConnector(pub Arc<Counters>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Counting {
            inner: ReqwestConnector::default().connect(options)?,
            counters: self.0.clone(),
        }))
    }
}
