//! What went wrong talking to S3, as facts the operator can act on.
//!
//! `object_store` reports failures as its own error type whose text carries the request URL
//! and the server's response body. Neither is shown: the body of a refused signature echoes
//! the string that was signed, and a URL may name more than the operator asked about. Only
//! the HTTP status, the S3 error code (`<Code>…</Code>`, a short identifier) and the transport
//! failure kind are kept. Credentials never reach an error: the request headers that carry
//! the signature are not part of any `object_store` error.

use std::fmt;
use std::io;

use object_store::client::{HttpError, HttpErrorKind};

use crate::error::Error;

/// Why a request to the object store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteProblem {
    /// No connection could be made to the endpoint.
    Unreachable {
        /// The endpoint URL.
        endpoint: String,
        /// The transport's reason (`Connection refused`).
        reason: String,
    },
    /// No credentials were found.
    NoCredentials,
    /// The server refused the credentials (unknown key, wrong secret, expired token).
    CredentialsRefused {
        /// The S3 error code (`InvalidAccessKeyId`, `SignatureDoesNotMatch`, …).
        code: String,
    },
    /// The credentials are valid but lack permission.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket {
        /// Its name.
        bucket: String,
    },
    /// The server kept failing (5xx, `SlowDown`, timeouts, dropped connections) until the
    /// retries ran out.
    Unavailable {
        /// The last failure.
        last: String,
    },
    /// An object is larger than tessera ever reads in one piece.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The server answered something the S3 protocol does not allow here.
    Protocol {
        /// What was unexpected.
        what: String,
    },
}

impl fmt::Display for RemoteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { endpoint, reason } => write!(
                f,
                "cannot connect to {endpoint} ({reason}); check the endpoint URL and that the server is running"
            ),
            Self::NoCredentials => f.write_str(
                "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE)",
            ),
            Self::CredentialsRefused { code } => write!(
                f,
                "the server refused the credentials ({code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the ~/.aws profile"
            ),
            Self::AccessDenied => f.write_str(
                "access denied; the credentials lack permission on this bucket or prefix",
            ),
            Self::NoSuchBucket { bucket } => write!(
                f,
                "bucket {bucket:?} does not exist; create it first, or check the name, the endpoint and the region"
            ),
            Self::Unavailable { last } => write!(
                f,
                "the server kept failing until the retries ran out (last: {last}); nothing was half-written, try again later"
            ),
            Self::TooLarge { size, limit } => write!(
                f,
                "the object holds {size} bytes, more than the {limit} tessera reads in one piece; it is not a tessera object"
            ),
            Self::Protocol { what } => write!(f, "unexpected answer from the server: {what}"),
        }
    }
}

impl RemoteProblem {
    /// Which kind of failure this is: the caller's settings (no credentials, no bucket) are
    /// usage; refused credentials and missing permission a refusal; an object too large to
    /// be tessera's damage; an unreachable or failing server a failed operation.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::NoCredentials | Self::NoSuchBucket { .. } => ErrorKind::Usage,
            Self::CredentialsRefused { .. } | Self::AccessDenied => ErrorKind::Refused,
            Self::TooLarge { .. } => ErrorKind::Damage,
            Self::Unreachable { .. } | Self::Unavailable { .. } | Self::Protocol { .. } => {
                ErrorKind::Failed
            }
        }
    }
}

/// How an `object_store` failure maps onto the engine's errors.
pub(super) struct Classify<'a> {
    /// `s3://BUCKET/PREFIX`.
    pub location: &'a str,
    /// The endpoint URL, for "cannot connect".
    pub endpoint: &'a str,
    /// The bucket, for "no such bucket".
    pub bucket: &'a str,
}

impl Classify<'_> {
    /// Maps a failure of `context` (`reading packs/ab/….pack`). A missing object becomes an
    /// I/O error of kind `NotFound` ([`Error::is_not_found`]); a create-only put that found
    /// the key taken is left to the caller ([`object_store::Error::AlreadyExists`] and
    /// `Precondition` map to [`Error::ObjectExists`] here only as a fallback).
    pub fn error(&self, context: impl Into<String>, e: &object_store::Error) -> Error {
        let context = context.into();
        let text = e.to_string();
        let problem = match e {
            object_store::Error::NotFound { .. } if s3_code(&text) == Some("NoSuchBucket") => {
                self.no_such_bucket()
            }
            object_store::Error::NotFound { .. } => {
                return Error::io(
                    format!("{context} in {}", self.location),
                    io::Error::new(io::ErrorKind::NotFound, "no such object"),
                )
            }
            object_store::Error::AlreadyExists { path, .. }
            | object_store::Error::Precondition { path, .. } => {
                return Error::ObjectExists { key: path.clone() }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => permission(&text),
            _ => self.other(e, &text),
        };
        self.remote(context, problem)
    }

    /// An error of this repository with `problem`.
    pub fn remote(&self, context: impl Into<String>, problem: RemoteProblem) -> Error {
        Error::Remote {
            location: self.location.to_string(),
            context: context.into(),
            problem,
        }
    }

    fn no_such_bucket(&self) -> RemoteProblem {
        RemoteProblem::NoSuchBucket {
            bucket: self.bucket.to_string(),
        }
    }

    fn other(&self, e: &object_store::Error, text: &str) -> RemoteProblem {
        if let Some(http) = find_source::<HttpError>(e) {
            let reason = innermost(http);
            return match http.kind() {
                HttpErrorKind::Connect => RemoteProblem::Unreachable {
                    endpoint: self.endpoint.to_string(),
                    reason,
                },
                kind => RemoteProblem::Unavailable {
                    last: format!("{kind:?}: {reason}"),
                },
            };
        }
        let status = http_status(text);
        match (status, s3_code(text)) {
            (_, Some("NoSuchBucket")) => self.no_such_bucket(),
            (Some(401 | 403), _) => permission(text),
            (Some(s), code) if s >= 500 || s == 429 || s == 408 => RemoteProblem::Unavailable {
                last: describe_status(s, code),
            },
            (Some(s), code) => RemoteProblem::Protocol {
                what: describe_status(s, code),
            },
            (None, Some(code)) => RemoteProblem::Unavailable {
                last: format!("S3 error {code}"),
            },
            (None, None) => RemoteProblem::Protocol {
                what: generic_reason(e),
            },
        }
    }
}

fn describe_status(status: u16, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("HTTP {status} {code}"),
        None => format!("HTTP {status}"),
    }
}

/// 401/403: refused credentials or missing permission, told apart by the S3 error code.
fn permission(text: &str) -> RemoteProblem {
    match s3_code(text) {
        Some(
            code @ ("InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "TokenRefreshRequired"
            | "AuthorizationHeaderMalformed"),
        ) => RemoteProblem::CredentialsRefused {
            code: code.to_string(),
        },
        // A HEAD answer has no body to carry a code.
        None => RemoteProblem::CredentialsRefused {
            code: "HTTP 403 without an error code".into(),
        },
        Some(_) => RemoteProblem::AccessDenied,
    }
}

/// The S3 error code in a response body quoted by `text`: a short identifier, or `None`.
pub(super) fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let rest = text.get(start..)?;
    let code = rest.get(..rest.find("</Code>")?)?;
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(code)
}

/// The status in `object_store`'s "…status code: 503 Service Unavailable…".
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// Which kind of failure a generic error was, without its text (which may quote a URL).
fn generic_reason(e: &object_store::Error) -> String {
    match e {
        object_store::Error::Generic { .. } => "a request failed".into(),
        object_store::Error::NotSupported { .. } => "an operation is not supported".into(),
        object_store::Error::NotImplemented { .. } => "an operation is not implemented".into(),
        object_store::Error::InvalidPath { .. } => "an invalid object path".into(),
        _ => "an unclassified failure".into(),
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// The innermost cause of a transport error (`Connection refused (os error 111)`), which
/// names no URL.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = last.to_string();
    if text.contains("://") {
        "transport error".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::{http_status, permission, s3_code, RemoteProblem};

    #[test]
    fn codes_and_statuses_are_read_from_object_store_texts() {
        let body = "Server returned non-2xx status code: 503 Service Unavailable: <?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>x</Message></Error>";
        assert_eq!(http_status(body), Some(503));
        assert_eq!(s3_code(body), Some("SlowDown"));
        assert_eq!(s3_code("<Code>bad code with spaces</Code>"), None);
        assert_eq!(s3_code("<Code>Unterminated"), None);
        assert_eq!(http_status("status code: 5"), None);
    }

    #[test]
    fn refused_credentials_are_told_from_missing_permission() {
        assert!(matches!(
            permission("<Code>SignatureDoesNotMatch</Code>"),
            RemoteProblem::CredentialsRefused { .. }
        ));
        assert_eq!(
            permission("<Code>AccessDenied</Code>"),
            RemoteProblem::AccessDenied
        );
    }
}
