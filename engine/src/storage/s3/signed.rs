//! Requests `object_store` does not offer (listing incomplete uploads, Object Lock
//! retention), signed with its public SigV4 signer and retried like its own requests:
//! transport failures, 429 and 5xx again with backoff, within [`super::RetryBounds`].
//! Every answer body is bounded ([`MAX_ANSWER`]).

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;

use super::config::Attempt;
use super::error::{s3_code, RemoteProblem};
use super::Inner;
use crate::error::Result;

/// Largest answer read (an S3 listing page of 1000 uploads is about 300 KiB).
const MAX_ANSWER: usize = 8 << 20;

/// A request: method, full URL, body and extra headers (signed with the rest).
pub(super) struct Request {
    pub method: http::Method,
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// Read the answer's body only if it is XML (a server that ignores a subresource such
    /// as `?retention` answers with the object itself, which is not read).
    pub xml_only: bool,
}

impl Request {
    pub fn get(url: String) -> Self {
        Self {
            method: http::Method::GET,
            url,
            body: Vec::new(),
            headers: Vec::new(),
            xml_only: false,
        }
    }
}

/// An answer that is not worth retrying: a success or a refusal.
pub(super) struct Answer {
    pub status: u16,
    /// The S3 error code of a refusal.
    pub code: Option<String>,
    pub text: String,
    /// The server's `Date`, if valid.
    pub date: Option<DateTime<Utc>>,
    /// `x-amz-object-lock-retain-until-date`, if present (a `HEAD` of a retained object).
    pub retain_until: Option<String>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// What a refusal means, for the common codes.
    pub fn refusal(&self, inner: &Inner) -> RemoteProblem {
        let code = || {
            self.code
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", self.status))
        };
        match (self.status, self.code.as_deref()) {
            (404, Some("NoSuchBucket")) => RemoteProblem::NoSuchBucket {
                bucket: inner.location.bucket.clone(),
            },
            (401 | 403, Some("AccessDenied")) => RemoteProblem::AccessDenied,
            (401 | 403, _) => RemoteProblem::CredentialsRefused { code: code() },
            (s, _) => RemoteProblem::Protocol {
                what: format!("HTTP {s} {}", self.code.as_deref().unwrap_or("")),
            },
        }
    }
}

/// Sends `request`, retrying what is worth it; `what` names it in errors.
pub(super) fn request(inner: &Inner, request: &Request, what: &str) -> Result<Answer> {
    inner
        .retry
        .retry(|| match inner.run(send(inner, request)) {
            Ok(Ok(answer)) => Attempt::Done(answer),
            Ok(Err(problem)) => Attempt::Again(problem),
            Err(problem) => Attempt::Fail(problem),
        })
        .map_err(|problem| inner.classify().remote(what, problem))
}

/// One attempt. `Ok(Err(_))` is a failure worth retrying, `Err(_)` one that is not.
async fn send(
    inner: &Inner,
    request: &Request,
) -> std::result::Result<std::result::Result<Answer, RemoteProblem>, RemoteProblem> {
    let bad = |what: &str| RemoteProblem::Protocol { what: what.into() };
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(&request.url);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let mut http_request = builder
        .body(HttpRequestBody::from(request.body.clone()))
        .map_err(|_| bad("the request URL or a header is invalid"))?;
    AwsAuthorizer::new(&inner.credential, "s3", &inner.region)
        .try_authorize(&mut http_request, None)
        .map_err(|_| bad("the request could not be signed"))?;
    let response = match inner.http.execute(http_request).await {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            return Ok(Err(match e.kind() {
                object_store::client::HttpErrorKind::Connect => RemoteProblem::Unreachable {
                    endpoint: inner.endpoint.clone(),
                    reason: "connection failed".into(),
                },
                kind if reason.contains("://") => RemoteProblem::Unavailable {
                    last: format!("{kind:?}"),
                },
                kind => RemoteProblem::Unavailable {
                    last: format!("{kind:?}: {reason}"),
                },
            }));
        }
    };
    let status = response.status().as_u16();
    let date = response
        .headers()
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
        .map(|d| d.with_timezone(&Utc));
    let retain_until = response
        .headers()
        .get("x-amz-object-lock-retain-until-date")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let xml = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml"));
    let mut body = Vec::new();
    let mut stream = response.into_body().bytes_stream();
    if request.xml_only && !xml && status < 300 {
        return Ok(Ok(Answer {
            status,
            code: None,
            text: String::new(),
            date,
            retain_until,
        }));
    }
    while let Some(piece) = stream.next().await {
        let Ok(piece) = piece else {
            return Ok(Err(RemoteProblem::Unavailable {
                last: "the connection broke while reading the answer".into(),
            }));
        };
        if body.len() + piece.len() > MAX_ANSWER {
            return Err(bad("an answer over 8 MiB"));
        }
        body.extend_from_slice(&piece);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let code = s3_code(&text).map(str::to_string);
    if status == 429 || status >= 500 {
        return Ok(Err(RemoteProblem::Unavailable {
            last: format!("HTTP {status} {}", code.as_deref().unwrap_or("")),
        }));
    }
    Ok(Ok(Answer {
        status,
        code,
        text,
        date,
        retain_until,
    }))
}
