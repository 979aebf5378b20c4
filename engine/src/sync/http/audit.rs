//! The audit log of `tessera serve` (SPEC.md §22.3): one JSON line per request, written
//! when the request ends (its answer handed to the connection, or the connection lost), to
//! `--audit-log FILE` (appended, created with mode 0600) or stderr.
//!
//! Fields: `time` (RFC 3339 UTC, milliseconds, when the request's head had arrived), `peer`
//! (`IP:PORT`), `token` (the token's name, `null` when none was accepted; never the token),
//! `method`, `path`, `bytes_in` (request body bytes read), `bytes_out` (answer body bytes
//! handed to the connection), `status` (`null` when the connection ended before an answer:
//! the client vanished or missed a deadline), `duration_ms`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{SecondsFormat, Utc};

use crate::error::{Error, Result};

/// Where audit lines go. Each line is written with one `write_all` under a lock.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl AuditLog {
    /// Lines to stderr.
    pub fn stderr() -> Self {
        Self::to(Box::new(std::io::stderr()))
    }

    /// Lines appended to `path` (created with mode 0600 if missing).
    pub fn file(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("opening the audit log {}", path.display()), e))?;
        Ok(Self::to(Box::new(file)))
    }

    /// Lines to `out` (tests).
    pub fn to(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// A line that is not a request's: `{"time", "event", "note"}` (for example what a
    /// writer's recovery did).
    pub fn event(&self, event: &str, note: &str) {
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        self.write(&serde_json::json!({ "time": time, "event": event, "note": note }));
    }

    fn write(&self, line: &serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // A full disk must not stop the serving; the line is lost.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

/// One request's audit line, written when it is dropped (whatever ended the request).
pub struct Record {
    log: AuditLog,
    time: String,
    started: Instant,
    peer: SocketAddr,
    /// The accepted token's name.
    pub token: Option<String>,
    method: String,
    path: String,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Answer body bytes handed to the connection.
    pub bytes_out: u64,
    /// The answer's status, once there is one.
    pub status: Option<u16>,
}

impl Record {
    /// A request from `peer` whose head has just arrived.
    pub fn start(log: &AuditLog, peer: SocketAddr, method: &str, path: &str) -> Self {
        Self {
            log: log.clone(),
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            started: Instant::now(),
            peer,
            token: None,
            method: method.into(),
            path: path.into(),
            bytes_in: 0,
            bytes_out: 0,
            status: None,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.log.write(&serde_json::json!({
            "time": self.time,
            "peer": self.peer.to_string(),
            "token": self.token,
            "method": self.method,
            "path": self.path,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "status": self.status,
            "duration_ms": self.started.elapsed().as_millis() as u64,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_json_line_per_record_with_every_field() {
        let sink = Shared::default();
        let log = AuditLog::to(Box::new(sink.clone()));
        let peer: SocketAddr = "[::1]:4000".parse().unwrap();
        let mut r = Record::start(&log, peer, "POST", "/v1/put/chunk");
        r.token = Some("vm-backup".into());
        r.bytes_in = 10;
        r.bytes_out = 13;
        r.status = Some(200);
        drop(r);
        drop(Record::start(&log, peer, "GET", "/v1/info\"\n"));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["peer"], "[::1]:4000");
        assert_eq!(first["token"], "vm-backup");
        assert_eq!(
            (&first["bytes_in"], &first["bytes_out"], &first["status"]),
            (&10.into(), &13.into(), &200.into())
        );
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert!(first["duration_ms"].is_u64());
        assert!(lines[1]["status"].is_null() && lines[1]["token"].is_null());
        assert_eq!(lines[1]["path"], "/v1/info\"\n");
    }
}
