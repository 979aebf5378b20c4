//! Real receivers for what the job layer sends out (SPEC.md §26.5, §26.7), and the helpers
//! the job tests (`tests/tests/jobs_*.rs`) share.
//!
//! - [`SmtpSink`]: a real SMTP server, aiosmtpd's `SMTP` protocol with its `Mailbox` handler
//!   (each message a file of a Maildir), on 127.0.0.1; [`SmtpSink::messages`] parses the
//!   mail with Python's `email` package.
//! - [`WebhookSink`]: a Python `http.server` that keeps every POST (body, headers, the
//!   status it answered) as numbered files and answers 200, or a chosen status to the first
//!   N requests (to see retries).
//! - [`parse_metrics`]: the Prometheus text format parsed by `prometheus_client`'s own parser.
//!
//! Both servers bind port 0 on 127.0.0.1 and print the port they got (no race for a port),
//! and exit when their standard input closes: the pipe is held by the Rust value, so they
//! stop when it is dropped or when the test process dies however it dies.
//!
//! The Python is the project-local virtual environment `.deps/pytools` that
//! `scripts/ensure-deps.sh` makes; a test that cannot find it fails and names the script.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{tessera_cmd, Out};

/// The Python of `.deps/pytools` (aiosmtpd, prometheus_client).
pub fn pytools_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/pytools/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/ensure-deps.sh (it makes the .deps/pytools venv with \
         aiosmtpd and prometheus_client)",
        p.display()
    );
    p
}

/// A port on 127.0.0.1 that nothing listens on now (the kernel's choice for port 0, let go
/// at once): for a target that must be unreachable.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------
// A Python server held by a pipe
// ---------------------------------------------------------------------------------------

/// A Python server process: the first line it prints is its port; it exits when its stdin
/// closes, and is killed on drop anyway.
struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    log: PathBuf,
}

impl PyServer {
    /// Writes `script` to `dir/name` and runs it with `args`; waits for the port line.
    fn start(dir: &Path, name: &str, script: &str, args: &[&OsStr]) -> Self {
        fs::create_dir_all(dir).expect("creating the sink's directory");
        let path = dir.join(name);
        fs::write(&path, script).expect("writing the sink's script");
        let log = dir.join(format!("{name}.log"));
        let log_file = fs::File::create(&log).expect("creating the sink's log");
        let mut child = Command::new(pytools_python())
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the sink's port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not start (first line {line:?}); its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
        // It prints the port once it listens; check that it accepts.
        assert!(
            crate::wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "{name} does not accept connections on port {port}"
        );
        Self {
            child,
            stdin,
            port,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `python -c SCRIPT ARGS...` of `.deps/pytools` with `input` on stdin, to completion.
fn python_run(script: &str, args: &[&OsStr], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(pytools_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running .deps/pytools/bin/python");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for python");
    writer.join().expect("stdin writer");
    out
}

/// [`python_run`]; returns stdout, panicking with stderr unless it succeeds.
fn python_output(script: &str, args: &[&OsStr], input: &[u8]) -> String {
    let out = python_run(script, args, input);
    assert!(
        out.status.success(),
        "python failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python printed UTF-8")
}

// ---------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------

/// What `python -m aiosmtpd -n -c aiosmtpd.handlers.Mailbox MAILDIR` runs (aiosmtpd's
/// `main`: `loop.create_server(lambda: SMTP(handler), host, port)`), on port 0, stopping at
/// the end of stdin.
const SMTP_SCRIPT: &str = r#"
import asyncio, sys
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP

async def main():
    handler = Mailbox(sys.argv[1])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), host="127.0.0.1", port=0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.buffer.read)

asyncio.run(main())
"#;

/// Parses every message of a Maildir (`new/` and `cur/`, oldest first) into JSON.
const MAILDIR_PARSE: &str = r#"
import email, email.policy, json, os, sys
root = sys.argv[1]
files = []
for sub in ("new", "cur"):
    d = os.path.join(root, sub)
    if os.path.isdir(d):
        for n in os.listdir(d):
            p = os.path.join(d, n)
            files.append((os.stat(p).st_mtime_ns, n, p))
out = []
for _, _, p in sorted(files):
    with open(p, "rb") as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    body = m.get_body(preferencelist=("plain",))
    out.append({
        "subject": str(m["subject"] or ""),
        "from": str(m["from"] or ""),
        "to": [a.addr_spec for a in (m["to"].addresses if m["to"] else ())],
        "rcpt_to": str(m["X-RcptTo"] or ""),
        "content_type": m.get_content_type(),
        "body": body.get_content() if body is not None else "",
    })
json.dump(out, sys.stdout)
"#;

/// A mail the SMTP sink received.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Its decoded subject.
    pub subject: String,
    /// The `From` header.
    pub from: String,
    /// The addresses of the `To` header.
    pub to: Vec<String>,
    /// The envelope recipients (`RCPT TO`), as aiosmtpd's Mailbox records them.
    pub rcpt_to: String,
    /// The text of its (plain) body, decoded.
    pub body: String,
}

/// A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message in a Maildir.
pub struct SmtpSink {
    server: PyServer,
    maildir: PathBuf,
}

impl SmtpSink {
    /// Starts a server whose script, log and Maildir live in `dir`.
    pub fn start(dir: &Path) -> Self {
        let maildir = dir.join("maildir");
        let server = PyServer::start(dir, "smtp_sink.py", SMTP_SCRIPT, &[maildir.as_os_str()]);
        Self { server, maildir }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port())
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let text = python_output(MAILDIR_PARSE, &[self.maildir.as_os_str()], b"");
        let v: Value = serde_json::from_str(&text).expect("the Maildir parser prints JSON");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|m| Mail {
                subject: m["subject"].as_str().unwrap_or_default().to_string(),
                from: m["from"].as_str().unwrap_or_default().to_string(),
                to: m["to"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(ToString::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                rcpt_to: m["rcpt_to"].as_str().unwrap_or_default().to_string(),
                body: m["body"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// The server's log (stderr), for failure messages.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

/// Keeps each POST as `DIR/NNNNNN.body` plus `DIR/NNNNNN.meta` (JSON: path, content type,
/// the status answered), written to a temporary name and renamed, so a reader never sees
/// half a request. The first FAIL_FIRST requests are answered FAIL_STATUS, the rest 200.
const WEBHOOK_SCRIPT: &str = r#"
import http.server, json, os, sys, threading

out, fail_first, fail_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
lock = threading.Lock()
count = [0]

def read_body(h):
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        data = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return data
            data += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))

def save(n, name, data):
    tmp = os.path.join(out, ".tmp-%06d-%s" % (n, name))
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(out, "%06d.%s" % (n, name)))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = read_body(self)
        with lock:
            count[0] += 1
            n = count[0]
        status = fail_status if n <= fail_first else 200
        meta = {"path": self.path, "content_type": self.headers.get("Content-Type"),
                "status": status}
        save(n, "body", body)
        save(n, "meta", json.dumps(meta).encode())
        answer = b'{"received": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)

def watch_stdin():
    sys.stdin.buffer.read()
    os._exit(0)

threading.Thread(target=watch_stdin, daemon=True).start()
server.serve_forever()
"#;

/// One POST the webhook sink received.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The request path.
    pub path: String,
    /// Its `Content-Type` header.
    pub content_type: Option<String>,
    /// The status the sink answered.
    pub status: u16,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Hook {
    /// The body as JSON (panics, showing it, if it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A real HTTP server on 127.0.0.1 that keeps every POST.
pub struct WebhookSink {
    server: PyServer,
    dir: PathBuf,
}

impl WebhookSink {
    /// Starts a sink that answers 200 to everything, in a directory of its own under `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::start_failing(dir, 0, 200)
    }

    /// Starts a sink that answers `status` to the first `first` requests, then 200.
    pub fn start_failing(dir: &Path, first: usize, status: u16) -> Self {
        let store = dir.join("requests");
        let first = first.to_string();
        let status = status.to_string();
        let server = PyServer::start(
            dir,
            "webhook_sink.py",
            WEBHOOK_SCRIPT,
            &[store.as_os_str(), first.as_ref(), status.as_ref()],
        );
        Self { server, dir: store }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.server.port)
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Hook> {
        let mut names: Vec<String> = crate::dir_entries(&self.dir)
            .into_iter()
            .filter(|n| Path::new(n).extension().is_some_and(|e| e == "meta"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|meta_name| {
                let stem = meta_name.trim_end_matches(".meta");
                let meta: Value = serde_json::from_slice(
                    &fs::read(self.dir.join(meta_name)).expect("reading a request's meta"),
                )
                .expect("meta is JSON");
                Hook {
                    path: meta["path"].as_str().unwrap_or_default().to_string(),
                    content_type: meta["content_type"].as_str().map(ToString::to_string),
                    status: meta["status"].as_u64().unwrap_or(0) as u16,
                    body: fs::read(self.dir.join(format!("{stem}.body")))
                        .expect("reading a request's body"),
                }
            })
            .collect()
    }

    /// The bodies of every request so far, as JSON.
    #[track_caller]
    pub fn bodies(&self) -> Vec<Value> {
        self.requests().iter().map(Hook::json).collect()
    }

    /// The server's log (stderr), for failure messages.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------

const METRICS_PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "type": family.type, "labels": dict(s.labels),
                    "value": repr(float(s.value))})
json.dump(out, sys.stdout)
"#;

/// One sample of a metrics page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its family's type (`gauge`, `counter`, ... or `unknown`).
    pub kind: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses a Prometheus text-format page with `prometheus_client`'s parser (panics, showing
/// the page, if that parser refuses it).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let out = python_run(METRICS_PARSE, &[], text.as_bytes());
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the metrics page:\n{}\n--- page ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_string(),
            kind: s["type"].as_str().unwrap_or_default().to_string(),
            labels: s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            value: s["value"]
                .as_str()
                .and_then(|x| x.parse().ok())
                .expect("a float value"),
        })
        .collect()
}

/// The value of the sample `name` whose labels include every `(key, value)` of `labels`;
/// `None` if there is none, panics if several match.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "several samples {name}{labels:?}: {found:?}"
    );
    found.first().map(|s| s.value)
}

/// `GET http://ADDR/PATH` over HTTP/1.0 (so the answer is not chunked); returns the status
/// and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

// ---------------------------------------------------------------------------------------
// Job files, runs and records
// ---------------------------------------------------------------------------------------

/// `s` as a TOML basic string (quoted, with `\` and `"` escaped).
pub fn toml_str(s: impl AsRef<OsStr>) -> String {
    let s = s.as_ref().to_str().expect("a UTF-8 string");
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the job file `path`: repository `repo`, series `series`, one disk `d` of
/// `source`, then `extra` (more tables); returns `path`.
pub fn write_job(path: &Path, repo: &Path, series: &str, source: &Path, extra: &str) -> PathBuf {
    fs::write(
        path,
        format!(
            "[repository]\nlocation = {}\n\n[backup]\nseries = {}\n\n[[backup.disk]]\nname = \"d\"\nsource = {}\n{extra}",
            toml_str(repo),
            toml_str(series),
            toml_str(source)
        ),
    )
    .expect("writing a job file");
    path.to_path_buf()
}

/// Writes an executable `/bin/sh` script `DIR/NAME` with `body`; returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing a script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    path
}

/// Runs `tessera ARGS...` with `env` added, to completion.
pub fn tessera_env(args: &[&OsStr], env: &[(&str, &OsStr)]) -> Out {
    let mut cmd = tessera_cmd(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Out::of(args, &cmd.output().expect("running tessera"))
}

/// The arguments of `tessera job run FILE --state-dir STATE --json EXTRA...`.
pub fn job_run_args(file: &Path, state: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "job".into(),
        "run".into(),
        file.into(),
        "--state-dir".into(),
        state.into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    args
}

/// `tessera job run FILE --state-dir STATE --json EXTRA...`: its output and its one JSON
/// document (panics if stdout is not one).
pub fn job_run(file: &Path, state: &Path, extra: &[&str]) -> (Out, Value) {
    let out = crate::tessera(job_run_args(file, state, extra));
    let doc = out.json();
    (out, doc)
}

/// [`job_run`], asserting exit 0 and `"ok": true` with outcome `success`.
#[track_caller]
pub fn job_run_ok(file: &Path, state: &Path, extra: &[&str]) -> Value {
    let (out, doc) = job_run(file, state, extra);
    out.ok();
    assert_eq!(doc["ok"], true, "{out}");
    assert_eq!(doc["outcome"], "success", "{out}");
    doc
}

/// `tessera job history JOB --state-dir STATE --json`: the runs, newest first.
#[track_caller]
pub fn history(job: impl AsRef<OsStr>, state: &Path) -> Vec<Value> {
    let out = crate::tessera([
        OsStr::new("job"),
        "history".as_ref(),
        job.as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--json".as_ref(),
    ]);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    v["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs array in {out}"))
        .clone()
}

/// The record files `STATE/jobs/JOB/runs/*.json`, sorted by name (= start), each parsed.
#[track_caller]
pub fn record_files(state: &Path, job: &str) -> Vec<(PathBuf, Value)> {
    let dir = state.join("jobs").join(job).join("runs");
    crate::dir_entries(&dir)
        .into_iter()
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "json"))
        .map(|n| {
            let p = dir.join(&n);
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", p.display()));
            (p, v)
        })
        .collect()
}

/// The records of [`record_files`] alone.
pub fn records(state: &Path, job: &str) -> Vec<Value> {
    record_files(state, job)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// An RFC 3339 time in Unix microseconds.
#[track_caller]
pub fn rfc3339_us(s: &str) -> i64 {
    tessera_engine::time::parse_time(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// A record's start in Unix microseconds (`started_us`, checked against `started`).
#[track_caller]
pub fn started_us(r: &Value) -> i64 {
    let us = r["started_us"]
        .as_i64()
        .unwrap_or_else(|| panic!("no started_us in {r}"));
    let text = rfc3339_us(r["started"].as_str().expect("started"));
    assert!(
        (text - us).abs() < 1_000_000,
        "started and started_us disagree in {r}"
    );
    us
}

/// A finished record's end in Unix microseconds: `started_us + duration_ms`, checked
/// against `finished` (which may have second precision).
#[track_caller]
pub fn finished_us(r: &Value) -> i64 {
    let start = started_us(r);
    let ms = r["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no duration_ms in {r}"));
    let end = start + ms * 1000;
    let text = rfc3339_us(
        r["finished"]
            .as_str()
            .unwrap_or_else(|| panic!("no finished in {r}")),
    );
    assert!(
        (text - end).abs() <= 1_000_000,
        "finished does not equal started + duration_ms in {r}"
    );
    end
}

/// The step `name` of a record's `steps`, if it has one.
pub fn step<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["step"] == name))
}

/// Whether the record says step `name` ran and ended `ok` (or `damage`).
pub fn step_ran(r: &Value, name: &str) -> bool {
    step(r, name).is_some_and(|s| s["outcome"] != "skipped")
}

/// Whether process `pid` is gone (no `/proc/PID`, or a zombie).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Kills process `pid` if it still runs (cleanup of hooks a killed run left behind).
pub fn kill_if_alive(pid: u32) {
    if !process_gone(pid) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

/// The pids written one per line to `file` (empty if it does not exist yet).
pub fn pids_in(file: &Path) -> Vec<u32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Starts `tessera job run FILE --state-dir STATE`, waits until its before hook has written
/// its pid into `pidfile`, and kills the run with SIGKILL (the hook, in its own process
/// group, lives on: see [`KillPidsOnDrop`]).
pub fn kill_run_during_before_hook(file: &Path, state: &Path, pidfile: &Path) {
    let mut child = crate::tessera_cmd(job_run_args(file, state, &[]))
        .spawn()
        .expect("starting tessera job run");
    assert!(
        poll_until(Duration::from_secs(20), || !pids_in(pidfile).is_empty()),
        "the before hook never ran"
    );
    child.kill().expect("killing the run");
    child.wait().expect("reaping the run");
}

/// Kills every pid listed in `file` on drop: hooks that outlive a killed run.
pub struct KillPidsOnDrop(pub PathBuf);

impl Drop for KillPidsOnDrop {
    fn drop(&mut self) {
        for pid in pids_in(&self.0) {
            kill_if_alive(pid);
        }
    }
}

/// Waits up to `timeout` for `cond`, polling every 50 ms (for conditions that read files
/// or run processes, unlike [`crate::wait_until`]'s 2 ms).
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    crate::wait_every(timeout, Duration::from_millis(50), cond)
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(p);
            }
        }
    }
    found
}
