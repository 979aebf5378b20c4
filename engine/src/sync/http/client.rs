//! The client side of the protocol in [`super`]: a remote repository as an
//! [`ObjectSource`] (pull) and an [`ObjectSink`] (push). Answers are bounded in size and
//! checked like any untrusted input; what a remote source sends is checked again by the
//! transfer ([`crate::sync::checked`]).
//!
//! Every wait on the server is bounded: connecting by [`CONNECT_TIMEOUT`], and each read
//! and write of a request by the I/O timeout given to [`Remote::new`] (`sync --io-timeout`),
//! so a server that accepts and then stalls fails the sync with a clear error instead of
//! holding it — and, when pulling, the local repository's writer lock — forever. The
//! timeout must cover the longest the server works on a request without answering (a
//! `publish` of a large snapshot checks all of its pages).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use tessera_format::{IdScheme, ObjectKind, SnapshotId};

use crate::error::{Error, ErrorKind, Result};
use crate::net::is_loopback_url;
use crate::sync::checked::CheckedObject;
use crate::sync::sink::ObjectSink;
use crate::sync::source::{Catalog, ObjectSource, SnapshotSummary, StoredObject, MAX_BATCH_BYTES};

use super::tls::client_connector;
use super::wire::{
    decode_records, encode_digests, encode_record, kind_name, MAX_ANSWER_BYTES, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_RAW_BYTES,
};

/// Longest a connection to the server may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a `publish` waits when the server asks it to come back later (429 with
/// `Retry-After`, e.g. `serve --min-publish-interval`); a longer wait is reported instead.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const MAX_PUBLISH_WAIT: Duration = Duration::from_secs(600);
/// The default I/O timeout: longest one read or write of a request may wait.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(600);

/// A repository served by `tessera serve`.
///
/// Pushes overlap: [`ObjectSink::put`] sends each batch of records on a thread of its own
/// and returns, so that the next batch is read and checked here while the server checks
/// and stores the previous one. At most one `put` request is in flight; every other call
/// first waits for it and reports its failure, so a snapshot is published only after
/// every object it needs has been acknowledged.
pub struct Remote {
    endpoint: Endpoint,
    in_flight: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Where and how requests go (cheap to clone: the agent shares its connection pool).
#[derive(Clone)]
struct Endpoint {
    base: String,
    token: String,
    agent: ureq::Agent,
    io_timeout: Duration,
}

impl Remote {
    /// A remote at `url` (`http://HOST:PORT` or `https://HOST:PORT`), authenticating with
    /// `token`. `tls_ca`: a PEM file of extra trusted root certificates for `https://` (see
    /// [`super::tls`]); refused with an `http://` URL, where it would silently do nothing.
    /// `io_timeout`: the longest one read or write may wait (see the module docs).
    /// An `http://` URL whose host is not a loopback address is refused unless
    /// `insecure_http`: the token would cross the network in clear.
    pub fn new(
        url: &str,
        token: &str,
        tls_ca: Option<&Path>,
        io_timeout: Duration,
        insecure_http: bool,
    ) -> Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(io_timeout)
            .timeout_write(io_timeout);
        let agent = if url.starts_with("https://") {
            agent.tls_connector(client_connector(tls_ca)?)
        } else if url.starts_with("http://") {
            if let Some(ca) = tls_ca {
                return Err(Error::Usage(format!(
                    "{url}: --tls-ca {} applies only to https:// URLs",
                    ca.display()
                )));
            }
            if !insecure_http && !is_loopback_url(url) {
                return Err(Error::Usage(format!(
                    "{url}: refusing to send the token over plain HTTP to a host that is not a loopback address: it and the backups would cross the network in clear. Use an https:// URL (serve --tls-cert/--tls-key), or give --insecure-http if the network is trusted"
                )));
            }
            agent
        } else {
            return Err(Error::Usage(format!(
                "{url}: a remote repository is an http:// or https:// URL"
            )));
        };
        Ok(Self {
            endpoint: Endpoint {
                base: url.trim_end_matches('/').to_string(),
                token: token.to_string(),
                agent: agent.build(),
                io_timeout,
            },
            in_flight: None,
        })
    }

    /// Waits for the `put` in flight, if any; its error, if it failed.
    fn settle(&mut self) -> Result<()> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(put) => put.join().unwrap_or_else(|_| {
                Err(Error::io(
                    "sending a put request",
                    std::io::Error::other("its thread panicked"),
                ))
            }),
        }
    }

    /// Sends `body` as a `put` of `kind` on a thread of its own (after the previous one).
    fn send_records(&mut self, kind: ObjectKind, body: Vec<u8>) -> Result<()> {
        self.settle()?;
        let endpoint = self.endpoint.clone();
        self.in_flight = Some(std::thread::spawn(move || {
            endpoint
                .call("POST", &format!("/v1/put/{}", kind_name(kind)), Some(&body))
                .map(drop)
        }));
        Ok(())
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.settle()?;
        self.endpoint.call(method, path, body)
    }
}

impl Endpoint {
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.call_waiting(method, path, body, Duration::ZERO)
    }

    /// [`Self::call`], which, when the server answers 429 with a `Retry-After` of at most
    /// what is left of `max_wait`, waits that long and asks again.
    fn call_waiting(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        max_wait: Duration,
    ) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let mut left = max_wait;
        let response = loop {
            let req = self
                .agent
                .request(method, &url)
                .set("Authorization", &format!("Bearer {}", self.token));
            let answer = match body {
                Some(b) => req.send_bytes(b),
                None => req.call(),
            };
            match answer {
                Ok(r) => break r,
                Err(ureq::Error::Status(429, r)) => {
                    let wait = r
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .filter(|w| *w <= left);
                    match wait {
                        Some(w) => {
                            left -= w;
                            std::thread::sleep(w);
                        }
                        None => return Err(status_error(format!("{method} {url}"), 429, r)),
                    }
                }
                Err(ureq::Error::Status(code, r)) => {
                    return Err(status_error(format!("{method} {url}"), code, r));
                }
                Err(e) => {
                    let hint = transport_hint(&url, &e, self.io_timeout);
                    return Err(Error::Network {
                        request: format!("{method} {url}"),
                        reason: format!("{e}{hint}"),
                    });
                }
            }
        };
        let mut out = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                let stalled = if is_timeout(&e) {
                    format!(
                        " (nothing for {} s: the server stalled; see --io-timeout)",
                        self.io_timeout.as_secs()
                    )
                } else {
                    String::new()
                };
                Error::Network {
                    request: format!("{method} {url}"),
                    reason: format!("reading the answer: {e}{stalled}"),
                }
            })?;
        if out.len() as u64 > MAX_ANSWER_BYTES {
            return Err(Error::UntrustedData {
                from: url,
                reason: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        Ok(out)
    }

    fn json(&self, path: &str) -> Result<serde_json::Value> {
        let body = self.call("GET", path, None)?;
        serde_json::from_slice(&body).map_err(|e| Error::UntrustedData {
            from: format!("{}{path}", self.base),
            reason: format!("answer is not JSON: {e}"),
        })
    }

    fn catalog(&self) -> Result<Vec<SnapshotSummary>> {
        let v = self.json("/v1/snapshots")?;
        let bad = || self.untrusted("malformed snapshot list".into());
        let mut out = Vec::new();
        for s in v.as_array().ok_or_else(bad)? {
            let id: SnapshotId = s["id"]
                .as_str()
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())?;
            let mut disks = Vec::new();
            for d in s["disks"].as_array().ok_or_else(bad)? {
                let name = d[0].as_str().ok_or_else(bad)?.to_string();
                let bs = d[1]
                    .as_u64()
                    .and_then(|b| u32::try_from(b).ok())
                    .ok_or_else(bad)?;
                disks.push((name, bs));
            }
            out.push(SnapshotSummary {
                id,
                series: s["series"].as_str().ok_or_else(bad)?.to_string(),
                time_us: s["time_us"].as_i64().ok_or_else(bad)?,
                disks,
            });
        }
        Ok(out)
    }

    fn scheme(&self) -> Result<IdScheme> {
        let v = self.json("/v1/info")?;
        let n = v["id_scheme"]
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| self.untrusted("malformed info".into()))?;
        IdScheme::try_from(n).map_err(|e| self.untrusted(e.to_string()))
    }

    /// The server sent `reason`-bad data.
    fn untrusted(&self, reason: String) -> Error {
        Error::UntrustedData {
            from: self.base.clone(),
            reason,
        }
    }
}

/// The error for an answer with an error status: the server's message and the kind it
/// named (its body is `{"kind": KIND|null, "message": TEXT}`; a body that is not, e.g. from
/// a proxy in between, is the message as it is, and the status decides the kind).
fn status_error(request: String, status: u16, r: ureq::Response) -> Error {
    let mut text = String::new();
    let _ = r.into_reader().take(64 * 1024).read_to_string(&mut text);
    let answer: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let (message, kind) = match answer {
        Some(v) if v["message"].is_string() => (
            v["message"].as_str().unwrap_or_default().to_string(),
            v["kind"].as_str().and_then(ErrorKind::from_name),
        ),
        _ => (text, None),
    };
    Error::RemoteStatus {
        request,
        status,
        message,
        kind,
    }
}

/// Whether a read or write failed because its timeout passed (Linux reports a socket
/// timeout as `EAGAIN`).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// What a failed request most likely means: a server that stalled (a timeout passed), and
/// the two mistakes TLS makes likely: an `http://` URL for a server that speaks TLS (it
/// drops the connection without an HTTP answer), and a server certificate the client does
/// not trust for that host.
fn transport_hint(url: &str, e: &ureq::Error, io_timeout: Duration) -> String {
    let connected = !matches!(
        e.kind(),
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns
    );
    let timed_out = match e {
        ureq::Error::Transport(t) => std::error::Error::source(t)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(is_timeout),
        ureq::Error::Status(..) => false,
    } || e.to_string().contains("timed out");
    if timed_out {
        format!(
            " (no answer within {} s: the server accepted the request but stalled, or the network is down; nothing more was sent; see --io-timeout)",
            io_timeout.as_secs()
        )
    } else if url.starts_with("http://") && connected {
        " (no HTTP answer: if the server was started with --tls-cert, use an https:// URL)".into()
    } else if e.to_string().contains("certificate verify failed") {
        " (the server's certificate is not trusted for this host name or address: give its \
         certificate or CA with --tls-ca, and use a name or address the certificate is for)"
            .into()
    } else {
        String::new()
    }
}

impl Catalog for Remote {
    fn describe(&self) -> String {
        self.endpoint.base.clone()
    }

    fn id_scheme(&self) -> Result<IdScheme> {
        self.endpoint.scheme()
    }

    fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        self.endpoint.catalog()
    }
}

impl ObjectSource for Remote {
    fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>> {
        self.endpoint
            .call("GET", &format!("/v1/snapshots/{}", id.to_hex()), None)
    }

    fn get_objects(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<StoredObject>> {
        let ask = digests
            .get(..MAX_GET_DIGESTS.min(digests.len()))
            .unwrap_or(digests);
        let body = self.endpoint.call(
            "POST",
            &format!("/v1/get/{}", kind_name(kind)),
            Some(&encode_digests(ask)),
        )?;
        decode_records(&body, kind, &self.endpoint.base)
    }
}

impl ObjectSink for Remote {
    fn contains_many(&mut self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(digests.len());
        for batch in digests.chunks(MAX_HAVE_DIGESTS) {
            let body = self.call(
                "POST",
                &format!("/v1/have/{}", kind_name(kind)),
                Some(&encode_digests(batch)),
            )?;
            out.extend(body.iter().map(|b| *b != 0));
        }
        Ok(out)
    }

    fn put(&mut self, kind: ObjectKind, objects: Vec<CheckedObject>) -> Result<()> {
        let mut body = Vec::new();
        // The raw bytes the records in `body` decode to: the server refuses a put over
        // MAX_PUT_RAW_BYTES (well compressed data reaches it before MAX_BATCH_BYTES).
        let mut raw = 0u64;
        for o in objects {
            let object_raw = u64::from(o.info.raw_len);
            if !body.is_empty() && raw + object_raw > MAX_PUT_RAW_BYTES {
                self.send_records(kind, std::mem::take(&mut body))?;
                raw = 0;
            }
            encode_record(&mut body, &(o.info, o.stored))?;
            raw += object_raw;
            if body.len() as u64 >= MAX_BATCH_BYTES {
                self.send_records(kind, std::mem::take(&mut body))?;
                raw = 0;
            }
        }
        if !body.is_empty() {
            self.send_records(kind, body)?;
        }
        Ok(())
    }

    /// A server serves plain repositories only (SPEC.md §23.8).
    fn crypto(&self) -> std::sync::Arc<crate::crypto::RepoCrypto> {
        std::sync::Arc::new(crate::crypto::RepoCrypto::plain())
    }

    fn publish(&mut self, snapshot_bytes: &[u8]) -> Result<SnapshotId> {
        self.settle()?;
        // The server may take one snapshot per series per interval from this token
        // (`serve --min-publish-interval`): come back when it says, if that is soon.
        let v = self.endpoint.call_waiting(
            "POST",
            "/v1/publish",
            Some(snapshot_bytes),
            MAX_PUBLISH_WAIT,
        )?;
        let id = SnapshotId::of(snapshot_bytes);
        let answer: serde_json::Value = serde_json::from_slice(&v).unwrap_or_default();
        if answer["id"].as_str() != Some(id.to_hex().as_str()) {
            return Err(self
                .endpoint
                .untrusted(format!("publishing {id} answered {answer}")));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use tessera_format::{ChunkDigest, Codec, Compression};

    use super::*;
    use crate::store::encode::encode_object;

    /// Reads one request (head and `Content-Length` body) of a test client; `None` at the
    /// end of the stream.
    fn read_request(r: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
        let mut target = None;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if target.is_none() {
                target = line.split(' ').nth(1).map(str::to_string);
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        Some((target?, body))
    }

    /// A server on loopback that answers every `put` with 500 and accepts every `publish`.
    fn refusing_puts() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    while let Some((target, body)) = read_request(&mut reader) {
                        let (status, answer) = if target.starts_with("/v1/put/") {
                            ("500 Internal Server Error", b"disk on fire".to_vec())
                        } else {
                            let id = SnapshotId::of(&body).to_hex();
                            (
                                "200 OK",
                                serde_json::json!({ "id": id }).to_string().into_bytes(),
                            )
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                            answer.len()
                        );
                        if out
                            .write_all(head.as_bytes())
                            .and_then(|()| out.write_all(&answer))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    /// `put` returns before the server answers; its failure must stop the next call, so
    /// that no snapshot is published without its objects.
    #[test]
    fn a_failed_put_stops_the_publish_after_it() {
        let mut remote =
            Remote::new(&refusing_puts(), "t", None, DEFAULT_IO_TIMEOUT, false).unwrap();
        let raw = vec![7u8; 4096];
        let zstd = Compression {
            codec: Codec::Zstd,
            level: 2,
        };
        let (info, stored) = encode_object(
            &crate::crypto::RepoCrypto::plain(),
            ObjectKind::Chunk,
            ChunkDigest::of(&raw),
            &raw,
            zstd,
        )
        .unwrap();
        let object = CheckedObject {
            info,
            stored: stored.into_owned(),
            raw_page: None,
        };
        remote.put(ObjectKind::Chunk, vec![object]).unwrap();
        let refused = remote.publish(b"a snapshot").unwrap_err();
        assert!(refused.to_string().contains("disk on fire"), "{refused}");
        // Reported once: with nothing in flight, the publish itself goes through.
        remote.publish(b"a snapshot").unwrap();
    }

    #[test]
    fn loopback_urls_are_told_apart_from_others() {
        for url in [
            "http://127.0.0.1:8420",
            "http://127.9.9.9:1/",
            "http://localhost:8420",
            "http://LOCALHOST",
            "http://[::1]:8420",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://192.0.2.1:8420",
            "http://backup.example:8420",
            "http://[2001:db8::1]:8420",
            "http://localhost.example.com:1",
            "http://127.0.0.1.example.com",
            "http://[::ffff:192.0.2.1]:1",
            "http://localhost:1@192.0.2.1:8420",
            "http://localhost:1@192.0.2.1/",
            "http://127.0.0.1@192.0.2.1/",
            "http://user@localhost:8420",
            "http://192.0.2.1?x=localhost:1",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
        let refused = Remote::new(
            "http://192.0.2.1:8420",
            "t",
            None,
            DEFAULT_IO_TIMEOUT,
            false,
        );
        assert!(matches!(refused, Err(Error::Usage(_))));
        assert!(Remote::new("http://192.0.2.1:8420", "t", None, DEFAULT_IO_TIMEOUT, true).is_ok());
    }

    /// A server that accepts connections and never answers: every call fails within the
    /// I/O timeout, saying that the server stalled.
    #[test]
    fn a_stalled_server_fails_the_call_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let remote = Remote::new(&url, "t", None, Duration::from_secs(1), false).unwrap();
        let started = std::time::Instant::now();
        let err = remote.snapshots().unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(err.contains("stalled"), "{err}");
    }
}
