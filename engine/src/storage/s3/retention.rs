//! Object Lock on S3 (SPEC §28): `GetObjectLockConfiguration` to check that the bucket
//! can lock; per object, `HEAD` (its Object Lock headers) or `GetObjectRetention` to read a
//! retention, `PutObjectRetention` to set one, and `PutObject` with the Object Lock headers
//! for a snapshot file retained from the start. `object_store` offers none of them; they go
//! through [`super::signed`].
//!
//! [`retain`] reads the retention first and sends a new one only when it is earlier than
//! asked, so it never tries to shorten one (COMPLIANCE refuses that anyway; GOVERNANCE would
//! need a bypass permission tessera never asks for).

use chrono::DateTime;

use super::signed::{self, Request};
use super::Inner;
use crate::error::{Error, Result};
use crate::storage::{ObjectKey, RetentionMode};
use crate::time::format_us;

const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Checks that the bucket has Object Lock enabled.
pub(super) fn check(inner: &Inner) -> Result<()> {
    const WHAT: &str = "reading the bucket's Object Lock configuration";
    let url = format!(
        "{}?object-lock",
        inner.bucket_endpoint.trim_end_matches('/')
    );
    let answer = signed::request(inner, &Request::get(url), WHAT)?;
    let enabled =
        answer.is_success() && element(&answer.text, "ObjectLockEnabled") == Some("Enabled");
    if enabled {
        return Ok(());
    }
    if answer.is_success() || answer.status == 404 && answer.code.as_deref() != Some("NoSuchBucket")
    {
        return Err(Error::Refused {
            reason: format!(
                "bucket {} has no Object Lock enabled ({}): immutable backups need a bucket created with Object Lock (`aws s3api create-bucket --object-lock-enabled-for-bucket`, or enable it with versioning on the existing bucket)",
                inner.location.bucket,
                answer.code.as_deref().unwrap_or("ObjectLockEnabled is not Enabled")
            ),
        });
    }
    Err(inner.classify().remote(WHAT, answer.refusal(inner)))
}

/// The URL of `key`, each path segment percent-encoded.
fn object_url(inner: &Inner, key: &ObjectKey) -> String {
    let path: Vec<String> = format!("{}{}", inner.root, key.as_str())
        .split('/')
        .map(super::uploads::encode)
        .collect();
    format!(
        "{}/{}",
        inner.bucket_endpoint.trim_end_matches('/'),
        path.join("/")
    )
}

/// The retention date of `key`, `None` if it has none. A `HEAD`'s Object Lock headers
/// answer when present; they are sent only to callers allowed `s3:GetObjectRetention`, so
/// without them `GetObjectRetention` decides: no retention (404), or refused (403, an error
/// naming the permission). A server that ignores `?retention` (moto answers with the
/// object, not read) has no other way to tell: the `HEAD` stands.
pub(super) fn get(inner: &Inner, key: &ObjectKey) -> Result<Option<i64>> {
    let what = format!("reading the retention of {key}");
    let head = Request {
        method: http::Method::HEAD,
        ..Request::get(object_url(inner, key))
    };
    let answer = signed::request(inner, &head, &what)?;
    if answer.status == 404 {
        return Ok(None);
    }
    if !answer.is_success() {
        return Err(inner.classify().remote(what, answer.refusal(inner)));
    }
    if let Some(date) = &answer.retain_until {
        return parse_date(inner, &what, date).map(Some);
    }
    let ask = Request {
        xml_only: true,
        ..Request::get(format!("{}?retention=", object_url(inner, key)))
    };
    let answer = signed::request(inner, &ask, &what)?;
    // No retention: AWS says NoSuchObjectLockConfiguration (404), MinIO the same code with
    // 400, SeaweedFS ObjectLockConfigurationNotFoundError.
    if matches!(
        answer.code.as_deref(),
        Some(
            "NoSuchObjectLockConfiguration" | "ObjectLockConfigurationNotFoundError" | "NoSuchKey"
        )
    ) {
        return Ok(None);
    }
    match answer.status {
        404 => Ok(None),
        200..=299 => match element(&answer.text, "RetainUntilDate") {
            Some(date) => parse_date(inner, &what, date).map(Some),
            None => Ok(None),
        },
        401 | 403 if answer.code.as_deref() == Some("AccessDenied") => Err(Error::Refused {
            reason: format!(
                "{what}: access denied. Immutable backups need s3:GetObjectRetention and s3:PutObjectRetention on {}",
                inner.url
            ),
        }),
        _ => Err(inner.classify().remote(what, answer.refusal(inner))),
    }
}

fn parse_date(inner: &Inner, what: &str, date: &str) -> Result<i64> {
    DateTime::parse_from_rfc3339(date.trim())
        .map(|d| d.timestamp_micros())
        .map_err(|_| {
            inner.classify().remote(
                what,
                super::RemoteProblem::Protocol {
                    what: format!("a retention date {date:?} that is not RFC 3339"),
                },
            )
        })
}

/// Retains `key` until `at_least_us` at least, extending it to `until_us` when short (see
/// [`crate::storage::Backend::retain`]); returns its date.
pub(super) fn retain(
    inner: &Inner,
    key: &ObjectKey,
    at_least_us: i64,
    until_us: i64,
    mode: RetentionMode,
) -> Result<i64> {
    if let Some(have) = get(inner, key)?.filter(|&have| have >= at_least_us) {
        return Ok(have);
    }
    // Whole seconds, rounded up: never earlier than asked.
    let until_us = crate::time::ceil_to_second(until_us.max(at_least_us));
    let body = format!(
        "<Retention xmlns=\"{NS}\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        mode.s3_name(),
        format_us(until_us)
    )
    .into_bytes();
    let request = Request {
        method: http::Method::PUT,
        url: format!("{}?retention=", object_url(inner, key)),
        headers: vec![
            ("content-md5", content_md5(&body)?),
            ("content-type", "application/xml".into()),
        ],
        body,
        xml_only: false,
    };
    let what = format!("setting the retention of {key}");
    let answer = signed::request(inner, &request, &what)?;
    if answer.is_success() {
        return Ok(until_us);
    }
    // Another machine may have extended it meanwhile (then this request would shorten it,
    // which the store refuses): what counts is the date it has now.
    if let Some(have) = get(inner, key)?.filter(|&have| have >= at_least_us) {
        return Ok(have);
    }
    Err(inner.classify().remote(what, answer.refusal(inner)))
}

/// Stores `bytes` under `key` create-only, retained from the start (`PutObject` with the
/// Object Lock headers, so there is no moment the object exists unretained). An object
/// already there with the same bytes (an earlier attempt, or another writer of the same
/// content-addressed object) counts, and is retained as asked; other bytes are
/// [`Error::ObjectExists`].
pub(super) fn put_retained(
    inner: &Inner,
    key: &ObjectKey,
    bytes: &[u8],
    until_us: i64,
    mode: RetentionMode,
) -> Result<i64> {
    let until_us = crate::time::ceil_to_second(until_us);
    let request = Request {
        method: http::Method::PUT,
        url: object_url(inner, key),
        headers: vec![
            ("content-md5", content_md5(bytes)?),
            ("if-none-match", "*".into()),
            ("x-amz-object-lock-mode", mode.s3_name().into()),
            ("x-amz-object-lock-retain-until-date", format_us(until_us)),
        ],
        body: bytes.to_vec(),
        xml_only: false,
    };
    let what = format!("storing {key}");
    let answer = signed::request(inner, &request, &what)?;
    match answer.status {
        200..=299 => Ok(until_us),
        409 | 412 => match inner.read(key, None) {
            Ok((have, _)) if have == bytes => retain(inner, key, until_us, until_us, mode),
            Ok(_) => Err(Error::ObjectExists {
                key: key.to_string(),
            }),
            Err(e) => Err(e),
        },
        _ => Err(inner.classify().remote(what, answer.refusal(inner))),
    }
}

fn content_md5(body: &[u8]) -> Result<String> {
    let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), body)
        .map_err(|e| Error::Internal(format!("MD5 of a request body: {e}")))?;
    Ok(openssl::base64::encode_block(&md5))
}

/// The text of the first `<name>` element of `xml` (S3's answers here are flat).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::element;

    #[test]
    fn elements_are_found_or_not() {
        let xml = "<Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>2026-12-09T00:00:00Z</RetainUntilDate></Retention>";
        assert_eq!(element(xml, "Mode"), Some("COMPLIANCE"));
        assert_eq!(
            element(xml, "RetainUntilDate"),
            Some("2026-12-09T00:00:00Z")
        );
        assert_eq!(element(xml, "Missing"), None);
        assert_eq!(element("<Mode>open", "Mode"), None);
    }
}
