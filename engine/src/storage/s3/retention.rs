//! Object Lock on S3 (SPEC §28): `GetObjectLockConfiguration` to check that the bucket
//! can lock, `HEAD` (its Object Lock headers) and `PutObjectRetention` per object. `object_store` offers
//! none of them; they go through [`super::signed`].
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

/// The URL of `key`.
fn object_url(inner: &Inner, key: &ObjectKey) -> String {
    format!(
        "{}/{}{}",
        inner.bucket_endpoint.trim_end_matches('/'),
        inner.root,
        key.as_str()
    )
}

/// The retention date of `key`, `None` if it has none: from the Object Lock headers of a
/// `HEAD` (what AWS, SeaweedFS and moto all answer; moto has no `GetObjectRetention`).
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
    let Some(date) = answer.retain_until else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(date.trim())
        .map(|d| Some(d.timestamp_micros()))
        .map_err(|_| {
            inner.classify().remote(
                what,
                super::RemoteProblem::Protocol {
                    what: format!("a retention date {date:?} that is not RFC 3339"),
                },
            )
        })
}

/// Retains `key` until `until_us` at least (see the module docs); returns its date.
pub(super) fn retain(
    inner: &Inner,
    key: &ObjectKey,
    until_us: i64,
    mode: RetentionMode,
) -> Result<i64> {
    if let Some(have) = get(inner, key)?.filter(|&have| have >= until_us) {
        return Ok(have);
    }
    // Whole seconds, rounded up: never earlier than asked.
    let until_us = crate::time::ceil_to_second(until_us);
    let body = format!(
        "<Retention xmlns=\"{NS}\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        mode.s3_name(),
        format_us(until_us)
    )
    .into_bytes();
    let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &body)
        .map_err(|e| Error::Internal(format!("MD5 of a retention request: {e}")))?;
    let request = Request {
        method: http::Method::PUT,
        url: format!("{}?retention", object_url(inner, key)),
        headers: vec![
            ("content-md5", openssl::base64::encode_block(&md5)),
            ("content-type", "application/xml".into()),
        ],
        body,
    };
    let what = format!("setting the retention of {key}");
    let answer = signed::request(inner, &request, &what)?;
    if answer.is_success() {
        return Ok(until_us);
    }
    Err(inner.classify().remote(what, answer.refusal(inner)))
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
