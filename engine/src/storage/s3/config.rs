//! Where an S3 repository lives and how to reach it: the location string, the connection
//! options, and where credentials and region come from (SPEC §2a, "S3 backend").
//!
//! Resolution order, the AWS CLI's:
//! - endpoint: the option, then `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`, else AWS;
//! - region: the option, then `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in
//!   `~/.aws/config` (`AWS_CONFIG_FILE`), else `us-east-1`;
//! - credentials: the option, then `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
//!   then the profile (the option, `AWS_PROFILE`, else `default`) in `~/.aws/credentials`
//!   (`AWS_SHARED_CREDENTIALS_FILE`). Nothing else: no instance-metadata lookup, which would
//!   send requests to a link-local address the operator never named.
//!
//! The secret key and session token live only in [`Credentials`], whose `Debug` redacts them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// `s3://BUCKET/PREFIX`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the repository, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`. The bucket follows S3's naming rules (3–63 characters
    /// of `a-z 0-9 . -`); the prefix has no empty, `.` or `..` segments.
    pub fn parse(location: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{location:?} is not an S3 repository location ({why}); write s3://BUCKET/PREFIX"
            ))
        };
        let rest = location
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 characters of a-z 0-9 . -",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.contains('\\'))
        {
            return Err(bad("the prefix has an empty, `.` or `..` segment"));
        }
        if prefix.len() > 512 || prefix.chars().any(char::is_control) {
            return Err(bad(
                "the prefix is over 512 bytes or holds control characters",
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `s3://BUCKET/PREFIX`: what [`crate::storage::Backend::describe`] says.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How to reach the object store. Every field is optional; see the module docs for the
/// defaults.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:8333`).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`) instead of virtual-hosted
    /// (`BUCKET.ENDPOINT/KEY`). Default: on with a custom endpoint, off for AWS.
    pub path_style: Option<bool>,
    /// Profile of `~/.aws/credentials` and `~/.aws/config`.
    pub profile: Option<String>,
    /// Credentials to use instead of the environment's and the profile's.
    pub credentials: Option<Credentials>,
    /// Retry and timeout bounds.
    pub retry: RetryBounds,
    /// Allow a plain `http://` endpoint whose host is not a loopback address (requests are
    /// signed, not encrypted: the data would cross the network in clear).
    pub insecure_http: bool,
}

/// Bounds of the retries (exponential backoff with jitter, on 5xx, 429, `SlowDown`, timeouts
/// and dropped connections) and of each request.
///
/// `object_store` draws each wait at random between `first_backoff` and twice the previous
/// wait (at most `max_backoff`), so its waits stay around one to three times
/// `first_backoff`: the defaults (0.5 s, 40 retries, 2 minutes) ride out a server that is
/// away for about half a minute (a restart), and give up within 2 minutes. Connecting
/// retries once only (see [`super::S3Backend::connect`]).
#[derive(Debug, Clone, Copy)]
pub struct RetryBounds {
    /// Retries of one request at most.
    pub max_retries: usize,
    /// No retry starts after this long since the first attempt.
    pub max_elapsed: Duration,
    /// First backoff; each next one is drawn at random up to twice the previous.
    pub first_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// A whole request (connect, send, answer, body) at most.
    pub request_timeout: Duration,
    /// Connecting at most.
    pub connect_timeout: Duration,
}

impl Default for RetryBounds {
    fn default() -> Self {
        Self {
            max_retries: 40,
            max_elapsed: Duration::from_mins(2),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_mins(2),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What one attempt of a request came to (see [`RetryBounds::retry`]).
pub(super) enum Attempt<T, E> {
    /// It succeeded.
    Done(T),
    /// It failed in a way another attempt may not.
    Again(E),
    /// It failed for good.
    Fail(E),
}

impl RetryBounds {
    /// Runs `attempt` until it is done or fails for good, sleeping between attempts with
    /// exponential backoff and jitter (each wait drawn from `[b, 2b)`, `b` doubling from
    /// `first_backoff`, at most `max_backoff`); gives up with the last failure after
    /// `max_retries` retries or once `max_elapsed` has passed. For the few requests tessera
    /// retries itself: `object_store` retries its own.
    pub(super) fn retry<T, E>(&self, mut attempt: impl FnMut() -> Attempt<T, E>) -> Result<T, E> {
        let started = std::time::Instant::now();
        let mut backoff = self.first_backoff;
        let mut retries = 0;
        loop {
            match attempt() {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Again(e) => {
                    if retries >= self.max_retries || started.elapsed() > self.max_elapsed {
                        return Err(e);
                    }
                }
            }
            retries += 1;
            let wait = backoff.mul_f64(1.0 + rand::random::<f64>());
            std::thread::sleep(wait.min(self.max_backoff));
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

/// An access key. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id (not a secret: it names the key).
    pub key_id: String,
    pub(super) secret: String,
    pub(super) token: Option<String>,
}

impl Credentials {
    /// An access key and its secret.
    pub fn new(key_id: String, secret: String, token: Option<String>) -> Self {
        Self {
            key_id,
            secret,
            token,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the options and the environment resolve to.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials: Option<Credentials>,
}

/// Largest profile file read (they are a few lines).
const MAX_PROFILE_FILE: u64 = 1 << 20;

/// Reads an environment variable.
type VarFn<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The process environment and home directory, replaceable in tests.
pub(super) struct Env<'a> {
    pub var: Box<VarFn<'a>>,
    pub home: Option<PathBuf>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.var)(name).filter(|v| !v.is_empty())
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        self.get(var)
            .map(PathBuf::from)
            .or_else(|| self.home.as_ref().map(|h| h.join(default)))
    }
}

/// The real environment.
pub(super) fn process_env() -> Env<'static> {
    Env {
        var: Box::new(|name| std::env::var(name).ok()),
        home: std::env::var_os("HOME").map(PathBuf::from),
    }
}

/// Resolves endpoint, region, addressing and credentials (see the module docs).
pub(super) fn resolve(options: &S3Options, env: &Env<'_>) -> Result<Resolved> {
    let profile = options
        .profile
        .clone()
        .or_else(|| env.get("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| env.get("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env.get("AWS_ENDPOINT_URL"));
    if let Some(url) = &endpoint {
        check_endpoint(url, options.insecure_http)?;
    }
    let config_file = env.file("AWS_CONFIG_FILE", ".aws/config");
    let config_section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let region = match options
        .region
        .clone()
        .or_else(|| env.get("AWS_REGION"))
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
    {
        Some(r) => r,
        None => match &config_file {
            Some(path) => profile_value(path, &config_section, "region")?,
            None => None,
        }
        .unwrap_or_else(|| "us-east-1".into()),
    };
    let credentials = match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        _ if options.credentials.is_some() => options.credentials.clone(),
        (Some(key_id), Some(secret)) => Some(Credentials::new(
            key_id,
            secret,
            env.get("AWS_SESSION_TOKEN"),
        )),
        _ => match env.file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
            Some(path) => profile_credentials(&path, &profile)?,
            None => None,
        },
    };
    Ok(Resolved {
        path_style: options.path_style.unwrap_or(endpoint.is_some()),
        endpoint,
        region,
        credentials,
    })
}

/// An endpoint is `http(s)://HOST[:PORT][/]`, without user info (a secret in a URL would
/// end up in messages); a plain `http://` one only on a loopback host unless
/// `insecure_http` ([`crate::net::is_loopback_url`], the rule of `sync`'s client too).
fn check_endpoint(url: &str, insecure_http: bool) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.trim_end_matches('/'));
    match host {
        Some(h) if !h.is_empty() && !h.contains(['@', '/', '?', '#', ' ']) => {}
        _ => return Err(Error::InvalidArgument(
            "the S3 endpoint must be http://HOST[:PORT] or https://HOST[:PORT], without a path or user name".into(),
        )),
    }
    if url.starts_with("http://") && !insecure_http && !crate::net::is_loopback_url(url) {
        return Err(Error::Usage(format!(
            "{url}: refusing a plain-HTTP S3 endpoint that is not a loopback address: the backups would cross the network in clear. Use an https:// endpoint, or give --s3-insecure-http if the network is trusted"
        )));
    }
    Ok(())
}

fn profile_credentials(path: &Path, profile: &str) -> Result<Option<Credentials>> {
    let Some(sections) = read_ini(path)? else {
        return Ok(None);
    };
    let value = |key: &str| lookup(&sections, profile, key);
    Ok(
        match (value("aws_access_key_id"), value("aws_secret_access_key")) {
            (Some(key_id), Some(secret)) => {
                Some(Credentials::new(key_id, secret, value("aws_session_token")))
            }
            _ => None,
        },
    )
}

fn profile_value(path: &Path, section: &str, key: &str) -> Result<Option<String>> {
    Ok(read_ini(path)?.and_then(|sections| lookup(&sections, section, key)))
}

type Ini = Vec<(String, Vec<(String, String)>)>;

fn lookup(sections: &Ini, section: &str, key: &str) -> Option<String> {
    sections
        .iter()
        .filter(|(name, _)| name == section)
        .flat_map(|(_, entries)| entries.iter())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Reads an AWS profile file (`[section]` headers, `key = value` lines, `#`/`;` comments);
/// `None` if there is none. A file over 1 MiB or not UTF-8 is refused, naming the file.
fn read_ini(path: &Path) -> Result<Option<Ini>> {
    let refuse = |why: &str| {
        Error::InvalidArgument(format!(
            "cannot use the AWS profile file {}: {why}",
            path.display()
        ))
    };
    let bytes = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        Ok(m) if m.len() > MAX_PROFILE_FILE => return Err(refuse("it is larger than 1 MiB")),
        Ok(_) => {
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| refuse("it is not UTF-8"))?;
    Ok(Some(parse_ini(&text)))
}

fn parse_ini(text: &str) -> Ini {
    let mut out: Ini = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.trim().to_string(), Vec::new()));
        } else if let (Some((k, v)), Some((_, entries))) = (line.split_once('='), out.last_mut()) {
            entries.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{resolve, Credentials, Env, S3Location, S3Options};
    use std::collections::HashMap;

    #[test]
    fn locations_parse_and_print_back() {
        let l = S3Location::parse("s3://my-bucket/backups/vm1/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("my-bucket", "backups/vm1")
        );
        assert_eq!(l.url(), "s3://my-bucket/backups/vm1");
        assert_eq!(S3Location::parse("s3://abc").unwrap().url(), "s3://abc");
        for bad in [
            "s3:/x/y",
            "s3://A_B/x",
            "s3://ab/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "file:///x",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    fn env_of<'a>(vars: &'a HashMap<&str, String>, home: &std::path::Path) -> Env<'a> {
        Env {
            var: Box::new(move |name: &str| vars.get(name).cloned()),
            home: Some(home.to_path_buf()),
        }
    }

    #[test]
    fn environment_wins_over_profiles_and_profiles_are_read() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "# comment\n[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cr3t\n\n[other]\naws_access_key_id=AKIOTHER\naws_secret_access_key=x\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[profile other]\nregion = eu-west-3\n",
        )
        .unwrap();
        let mut vars = HashMap::new();
        let r = resolve(&S3Options::default(), &env_of(&vars, home.path())).unwrap();
        assert_eq!(
            r.credentials,
            Some(Credentials::new("AKIDEFAULT".into(), "s3cr3t".into(), None))
        );
        assert_eq!(r.region, "us-east-1");
        assert!(!r.path_style);
        vars.insert("AWS_PROFILE", "other".to_string());
        let r = resolve(&S3Options::default(), &env_of(&vars, home.path())).unwrap();
        assert_eq!(r.credentials.as_ref().unwrap().key_id, "AKIOTHER");
        assert_eq!(
            r.credentials.as_ref().unwrap().token.as_deref(),
            Some("tok")
        );
        assert_eq!(r.region, "eu-west-3");
        vars.insert("AWS_ACCESS_KEY_ID", "ENVKEY".to_string());
        vars.insert("AWS_SECRET_ACCESS_KEY", "envsecret".to_string());
        vars.insert("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_string());
        let r = resolve(&S3Options::default(), &env_of(&vars, home.path())).unwrap();
        assert_eq!(r.credentials.as_ref().unwrap().key_id, "ENVKEY");
        assert!(r.path_style);
        let shown = format!("{:?}", r.credentials);
        assert!(!shown.contains("envsecret"), "{shown}");
    }

    #[test]
    fn endpoints_with_user_info_or_paths_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let vars = HashMap::new();
        for bad in [
            "http://key:secret@host:1",
            "ftp://host",
            "http://host/path",
            "http://",
        ] {
            let opts = S3Options {
                endpoint: Some(bad.into()),
                ..S3Options::default()
            };
            let err = resolve(&opts, &env_of(&vars, home.path())).unwrap_err();
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn plain_http_endpoints_only_on_loopback_unless_allowed() {
        let home = tempfile::tempdir().unwrap();
        let mut vars = HashMap::new();
        let with = |endpoint: &str, insecure_http: bool| S3Options {
            endpoint: Some(endpoint.into()),
            insecure_http,
            ..S3Options::default()
        };
        for fine in [
            "http://127.0.0.1:8333",
            "http://localhost:8333/",
            "http://[::1]:8333",
            "https://s3.example.com",
            "https://192.0.2.1:9000",
        ] {
            resolve(&with(fine, false), &env_of(&vars, home.path()))
                .unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
        for clear in [
            "http://192.0.2.1:8333",
            "http://minio.example.com",
            "http://localhost.example.com:1",
        ] {
            let err = resolve(&with(clear, false), &env_of(&vars, home.path())).unwrap_err();
            assert!(
                err.to_string().contains("--s3-insecure-http"),
                "{clear}: {err}"
            );
            assert_eq!(err.kind(), crate::error::ErrorKind::Usage, "{clear}");
            resolve(&with(clear, true), &env_of(&vars, home.path()))
                .unwrap_or_else(|e| panic!("{clear} with the opt-in: {e}"));
        }
        // The environment's endpoint is held to the same rule.
        vars.insert("AWS_ENDPOINT_URL", "http://192.0.2.1:9".to_string());
        assert!(resolve(&S3Options::default(), &env_of(&vars, home.path())).is_err());
    }
}
