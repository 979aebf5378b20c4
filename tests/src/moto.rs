//! moto (`moto_server`), a mock of AWS S3, on loopback, one per test, for the
//! immutable-backup tests (SPEC §28); and [`Boto`], boto3 as an S3 client independent of
//! tessera's, to read back what tessera stored in moto or in SeaweedFS. Both are installed by
//! `scripts/ensure-deps.sh` into the `.deps/moto` virtual environment; a test that cannot
//! start them fails and says why (it never skips).
//!
//! moto is the enforcement check: it refuses to delete a version whose Object Lock retention
//! has not passed, as AWS does. What moto 5.2 does, checked by hand against `moto_server`:
//!
//! - A bucket created with `x-amz-bucket-object-lock-enabled: true` is versioned and
//!   answers `GET ?object-lock` with `<ObjectLockEnabled>Enabled</ObjectLockEnabled>`; any
//!   other bucket with 404 `ObjectLockConfigurationNotFoundError`.
//! - `PutObjectRetention` is stored verbatim (Content-MD5 is not required nor checked);
//!   `DeleteObject` (and `DeleteObjects`) of a retained version is refused with 403
//!   `AccessDenied` (a GOVERNANCE one is let through with the bypass header), a `DELETE`
//!   without a version id adds a delete marker.
//! - Not enforced, unlike AWS and SeaweedFS: shortening a COMPLIANCE retention or changing
//!   its mode. There is no `GetObjectRetention`: `GET KEY?retention` answers the object
//!   itself. So [`Boto`] reads retentions with `HeadObject` (`x-amz-object-lock-mode`,
//!   `x-amz-object-lock-retain-until-date`), which all of AWS, SeaweedFS and moto answer.
//! - A retain-until date other than `YYYY-MM-DDTHH:MM:SSZ` (or up to 6 fraction digits) is
//!   stored, and then every delete of that version fails with 500.
//! - Any credentials are accepted (signatures are not checked); an unsigned request is
//!   anonymous and refused on objects. A body sent as `application/x-www-form-urlencoded`
//!   is lost (Flask reads it as a form).
//!
//! The server runs as a [`Tied`] process: it cannot outlive its test.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::seaweed::{env_for, free_port, release_ports, Tied, KEY_ID, SECRET};

/// How long `moto_server` may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A program of the `.deps/moto` virtual environment (`moto_server`, `python`).
pub fn venv_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.deps/moto/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/ensure-deps.sh (it makes the .deps/moto venv with \
         moto[server] and boto3)",
        p.display()
    );
    p
}

/// A running `moto_server` with one bucket that has Object Lock enabled; stopped when dropped.
pub struct Moto {
    process: Option<Tied>,
    port: u16,
    /// Its log (`moto.log`).
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start, with Object Lock enabled.
    pub bucket: String,
}

impl Moto {
    /// Starts moto on a free port of 127.0.0.1, waits until it accepts connections, and
    /// creates `bucket` with Object Lock enabled.
    pub fn start(bucket: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tessera-moto-")
            .tempdir()
            .expect("temp dir for moto");
        let port = free_port();
        let args = [
            venv_bin("moto_server").display().to_string(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let process = Tied::spawn(&args, &[], &dir.path().join("moto.log"));
        // Held from here, so that a failure below stops the server.
        let moto = Self {
            process: Some(process),
            port,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        let up = crate::wait_every(READY_WITHIN, Duration::from_millis(100), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "moto_server did not accept connections on port {port} within {READY_WITHIN:?}; \
             its log:\n{}",
            moto.log()
        );
        moto.boto().create_bucket(bucket, true);
        moto
    }

    /// What the server logged (one line per request, and tracebacks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn location(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment variables for the `tessera` binary reaching this server (as
    /// [`crate::seaweed::Seaweed::env`]; moto accepts any credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env_for(&self.endpoint)
    }

    /// boto3 on this server.
    pub fn boto(&self) -> Boto {
        Boto::new(&self.endpoint)
    }

    /// The keys under `prefix` in the bucket (current versions: not those deleted, which
    /// only have a delete marker on top), sorted.
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        self.boto().list_keys(&self.bucket, prefix)
    }

    /// The Object Lock retention of `key` in the bucket.
    pub fn retention(&self, key: &str) -> Option<Retention> {
        self.boto().retention(&self.bucket, key)
    }

    /// The retention of every key under `prefix` in the bucket.
    pub fn retentions(&self, prefix: &str) -> BTreeMap<String, Option<Retention>> {
        self.boto().retentions(&self.bucket, prefix)
    }

    /// Deletes the current version of `key` by its version id: the enforcement probe.
    pub fn delete_version(&self, key: &str) -> Result<(), String> {
        self.boto().delete_version(&self.bucket, key)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.process.take());
        release_ports(&[self.port]);
    }
}

/// An object's Object Lock retention, as `HeadObject` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    /// The retain-until date, verbatim (RFC 3339).
    pub until: String,
}

impl Retention {
    /// The retain-until date in Unix microseconds.
    pub fn until_us(&self) -> i64 {
        crate::sinks::rfc3339_us(&self.until)
    }
}

/// boto3 (`tests/src/boto_probe.py`, run by the `.deps/moto` Python) as a client of the S3
/// server at one endpoint, with [`KEY_ID`] and [`SECRET`]; none of the caller's AWS settings.
pub struct Boto {
    endpoint: String,
}

impl Boto {
    /// A client of `endpoint` (`http://127.0.0.1:PORT`).
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
        }
    }

    /// Runs `boto_probe.py ENDPOINT ARGS...`; returns the JSON it printed.
    fn probe(&self, args: &[&str]) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/boto_probe.py");
        let out = Command::new(venv_bin("python"))
            .arg(&script)
            .arg(&self.endpoint)
            .args(args)
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("running boto_probe.py");
        assert!(
            out.status.success(),
            "boto_probe.py {} {args:?} failed: {}",
            self.endpoint,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "boto_probe.py {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates `bucket`, with Object Lock enabled (and so versioning) or without.
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        self.probe(&[
            "create-bucket",
            bucket,
            if object_lock { "lock" } else { "plain" },
        ]);
    }

    /// Enables versioning, then Object Lock, on the existing `bucket` (as for the bucket
    /// `weed mini -bucket=NAME` makes, which has neither).
    pub fn enable_object_lock(&self, bucket: &str) {
        let v = self.probe(&["enable-lock", bucket]);
        assert_eq!(v["ObjectLockEnabled"], "Enabled", "{v}");
    }

    /// The keys under `prefix` in `bucket` (current versions), sorted.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        serde_json::from_value(self.probe(&["list", bucket, prefix])).expect("a list of keys")
    }

    /// The retention of every key under `prefix` in `bucket`.
    pub fn retentions(&self, bucket: &str, prefix: &str) -> BTreeMap<String, Option<Retention>> {
        let v = self.probe(&["retentions", bucket, prefix]);
        v.as_object()
            .unwrap_or_else(|| panic!("retentions: {v}"))
            .iter()
            .map(|(key, r)| {
                let r = r.as_array().map(|pair| Retention {
                    mode: pair[0].as_str().unwrap_or_default().to_string(),
                    until: pair[1].as_str().unwrap_or_default().to_string(),
                });
                (key.clone(), r)
            })
            .collect()
    }

    /// The retention of `key` in `bucket` (`None`: it has none).
    ///
    /// # Panics
    ///
    /// When `key` does not exist.
    pub fn retention(&self, bucket: &str, key: &str) -> Option<Retention> {
        self.retentions(bucket, key)
            .remove(key)
            .unwrap_or_else(|| panic!("{key} is not in bucket {bucket}"))
    }

    /// Deletes the current version of `key` in `bucket` by its version id; `Err("CODE:
    /// message")` when the server refuses (`AccessDenied` for a retained version).
    pub fn delete_version(&self, bucket: &str, key: &str) -> Result<(), String> {
        let v = self.probe(&["delete-version", bucket, key]);
        match v["error"].as_str() {
            Some(error) => Err(error.to_string()),
            None => Ok(()),
        }
    }
}
