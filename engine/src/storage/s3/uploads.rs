//! Staging on S3: incomplete multipart uploads. A crashed writer leaves its pack's upload
//! incomplete: invisible, but billed. [`abort_stale`] lists the uploads under the prefix
//! (`ListMultipartUploads`, which `object_store` does not offer: the request is signed with
//! its public SigV4 signer) and aborts those of tessera keys started long enough ago by the
//! server's clock (its `Date` header, so a skewed local clock cannot make a young upload look
//! old); [`super::Backend::clean_staging`] waits [`super::STALE_UPLOAD`]. An answer without
//! a valid `Date` is a protocol error, never replaced by the local clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::multipart::MultipartStore;
use serde::Deserialize;

use super::error::RemoteProblem;
use super::{signed, Inner};
use crate::error::{Error, Result};
use crate::storage::ObjectKey;

/// Most pages followed (10 million uploads).
const MAX_PAGES: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPage {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[expect(
    clippy::struct_field_names,
    reason = "the field names are S3's XML element names"
)]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

/// One incomplete upload: its key (without the prefix), id and age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    pub key: String,
    pub upload_id: String,
    pub age: Duration,
}

/// Aborts the uploads of tessera keys started at least `age` ago; returns how many.
pub(super) fn abort_older_than(inner: &Inner, age: Duration) -> Result<usize> {
    let mut aborted = 0;
    for upload in list(inner)? {
        if upload.age < age {
            continue;
        }
        let path = inner.path(&upload.key);
        let id = upload.upload_id.clone();
        match inner.run(inner.store.abort_multipart(&path, &id)) {
            Ok(()) => aborted += 1,
            Err(e) => match inner
                .classify()
                .error(format!("aborting the stale upload of {}", upload.key), &e)
            {
                err if err.is_not_found() => {}
                err => return Err(err),
            },
        }
    }
    Ok(aborted)
}

/// Every incomplete upload of a tessera key under the prefix, with its age by the server's
/// clock.
pub(super) fn list(inner: &Inner) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let mut markers: Option<(String, String)> = None;
    for _ in 0..MAX_PAGES {
        let mut query = format!("uploads=&prefix={}", encode(&inner.root));
        if let Some((key, id)) = &markers {
            query = format!(
                "{query}&key-marker={}&upload-id-marker={}",
                encode(key),
                encode(id)
            );
        }
        let (body, now) = get_signed(inner, &query)?;
        let page: ListPage = quick_xml::de::from_str(&body)
            .map_err(|e| protocol(inner, format!("an unreadable upload listing ({e})")))?;
        for upload in page.upload {
            let Some(key) = upload.key.strip_prefix(inner.root.as_str()) else {
                continue;
            };
            if !is_tessera_key(key) {
                continue;
            }
            let initiated = DateTime::parse_from_rfc3339(&upload.initiated)
                .map_err(|_| protocol(inner, "an upload without a valid start time".into()))?;
            let age = (now - initiated.with_timezone(&Utc))
                .to_std()
                .unwrap_or_default();
            out.push(Pending {
                key: key.to_string(),
                upload_id: upload.upload_id,
                age,
            });
        }
        match (
            page.is_truncated,
            page.next_key_marker,
            page.next_upload_id_marker,
        ) {
            (true, Some(key), id) => {
                let next = (key, id.unwrap_or_default());
                if markers.as_ref() == Some(&next) {
                    return Err(protocol(inner, "a listing that does not advance".into()));
                }
                markers = Some(next);
            }
            (true, None, _) => {
                return Err(protocol(
                    inner,
                    "a truncated listing without a marker".into(),
                ))
            }
            (false, _, _) => return Ok(out),
        }
    }
    Err(protocol(
        inner,
        format!("more than {MAX_PAGES} pages of uploads"),
    ))
}

/// Whether `key` (under the prefix) is one tessera writes: other uploads under the same
/// prefix belong to someone else and are never touched.
fn is_tessera_key(key: &str) -> bool {
    ObjectKey::from_listed(key.to_string()).kind().is_some()
        || [ObjectKey::config(), ObjectKey::legacy_damage_marks()]
            .iter()
            .any(|k| k.as_str() == key)
}

fn protocol(inner: &Inner, what: String) -> Error {
    inner.classify().remote(
        "listing incomplete uploads",
        RemoteProblem::Protocol { what },
    )
}

/// The server's clock now: the `Date` of its answer to a one-entry upload listing (the
/// cheapest signed request whose answer tessera reads itself).
pub(super) fn server_time(inner: &Inner) -> Result<DateTime<Utc>> {
    let query = format!("uploads=&max-uploads=1&prefix={}", encode(&inner.root));
    get_signed(inner, &query).map(|(_, now)| now)
}

/// A signed `GET` of the bucket with `query`; returns the body and the server's `Date`.
fn get_signed(inner: &Inner, query: &str) -> Result<(String, DateTime<Utc>)> {
    const WHAT: &str = "listing incomplete uploads";
    let url = format!("{}?{query}", inner.bucket_endpoint.trim_end_matches('/'));
    let answer = signed::request(inner, &signed::Request::get(url), WHAT)?;
    if !answer.is_success() {
        return Err(inner.classify().remote(WHAT, answer.refusal(inner)));
    }
    // Never the local clock instead: ages of uploads and doom records must be measured by
    // the one clock every client sharing the bucket agrees on.
    match answer.date {
        Some(date) => Ok((answer.text, date)),
        None => Err(protocol(inner, "an answer without a valid Date header (tessera measures ages by the server's clock, never the local one)".into())),
    }
}

/// Percent-encodes a query value as SigV4 wants (all but `A-Z a-z 0-9 - . _ ~`).
pub(super) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out = format!("{out}%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{encode, ListPage};

    #[test]
    fn listing_pages_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/packs/ab/x.pack</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/packs/ab/x.pack</Key><UploadId>id1</UploadId><Initiated>2024-01-02T03:04:05.000Z</Initiated></Upload>
  <Upload><Key>p/config</Key><UploadId>id2</UploadId><Initiated>2024-01-02T03:04:06Z</Initiated><StorageClass>STANDARD</StorageClass></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListPage = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(page.upload.len(), 2);
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        assert_eq!(page.upload[1].key, "p/config");
        let empty: ListPage = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.upload.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b/c~d"), "a%20b%2Fc~d");
    }
}
