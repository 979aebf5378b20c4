//! The two sides of `tessera sync SRC DST` (SPEC.md §22.1): each a repository location (a
//! directory, `file://PATH` or `s3://BUCKET/PREFIX`, [`crate::location`]) or a server
//! (`http://HOST:PORT`, `https://HOST:PORT`). [`sync_between`] opens them — the source as a
//! reader, a repository destination as the writer — and runs the one transfer path. A remote side needs the bearer token of a token file ([`read_token`]);
//! extra trusted roots (`--tls-ca`) apply only to `https://` sides.

use std::path::Path;

use crate::error::{Error, Result};
use crate::location::{LocationOptions, RepoLocation};
use crate::progress::Progress;
use crate::recovery::Recovery;

use super::http::client::Remote;
use super::source::ObjectSource;
use super::transfer::transfer;
use super::{Selection, SyncOptions, SyncReport};

/// Whether `location` names a server rather than a directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

fn is_https(location: &str) -> bool {
    location.starts_with("https://")
}

/// How to reach the remote side(s).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAccess<'a> {
    /// The file holding the bearer token (needed when a side is remote).
    pub token_file: Option<&'a Path>,
    /// PEM roots to trust for `https://` sides, besides the system's.
    pub tls_ca: Option<&'a Path>,
    /// Longest a remote may stay silent within one request before the sync fails (so a
    /// stalled server cannot hold the local writer lock forever).
    pub io_timeout: std::time::Duration,
    /// Send the token over plain `http://` to a host that is not loopback.
    pub insecure_http: bool,
}

/// The bearer token in `path` (surrounding whitespace removed; must not be empty). The
/// file must be readable by its owner only.
pub fn read_token(path: &Path) -> Result<String> {
    let token = super::http::tokens::read_private(path, "token file")?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Usage(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// Syncs the selected snapshots of `src` into `dst` (see the module docs); repository sides
/// are reached with `locations`. Refused before anything is opened: `--tls-ca` without an
/// `https://` side, a remote side without a token file, a plain `http://` side that is not
/// loopback without `insecure_http`, one cache directory named for two S3 sides (each
/// repository needs its own). When a repository `dst` is opened as the writer, `recovered`
/// gets what its recovery did (before the transfer, so the operator learns it also when the
/// transfer fails). Two repository sides must both be plain or share keys, and `secrets`
/// unlocks them ([`super::shared_keys`]); a repository side of a server must be plain.
#[expect(
    clippy::too_many_arguments,
    reason = "the two sides, how each kind of side is reached and unlocked, what and how to copy, and who hears"
)]
pub fn sync_between(
    src: &str,
    dst: &str,
    access: RemoteAccess<'_>,
    locations: &LocationOptions,
    selection: &Selection,
    opts: &SyncOptions,
    progress: &dyn Progress,
    recovered: &dyn Fn(&Recovery),
    secrets: &dyn crate::crypto::SecretSource,
) -> Result<SyncReport> {
    if access.tls_ca.is_some() && !is_https(src) && !is_https(dst) {
        return Err(Error::Usage(
            "--tls-ca applies only to an https:// side".into(),
        ));
    }
    let repository = |location: &str| RepoLocation::parse(location, locations.clone());
    if !is_remote(src) && !is_remote(dst) && locations.cache_dir.is_some() {
        let (a, b) = (repository(src)?, repository(dst)?);
        if a.is_s3() && b.is_s3() {
            return Err(Error::Usage(
                "--cache-dir names the cache of one S3 repository, and both sides are in S3: leave it out (each side gets its own cache under $XDG_CACHE_HOME)".into(),
            ));
        }
    }
    let token = if is_remote(src) || is_remote(dst) {
        let path = access
            .token_file
            .ok_or_else(|| Error::Usage("a remote side needs --token-file FILE".into()))?;
        read_token(path)?
    } else {
        String::new()
    };
    let remote = |url: &str| {
        Remote::new(
            url,
            &token,
            access.tls_ca.filter(|_| is_https(url)),
            access.io_timeout,
            access.insecure_http,
        )
    };
    if !is_remote(src) && !is_remote(dst) {
        let (src, dst) = (repository(src)?, repository(dst)?);
        let keys = super::shared_keys::shared_keys(&src, &dst, secrets)?;
        let source = src.open(keys.source())?;
        let dst = dst.open_writer(keys.source())?;
        recovered(&dst.recovery);
        return super::sync(&source, &dst, selection, opts, progress);
    }
    // A server serves plain repositories only (SPEC.md §23.8).
    let local_src;
    let remote_src;
    let source: &dyn ObjectSource = if is_remote(src) {
        remote_src = remote(src)?;
        &remote_src
    } else {
        let src = repository(src)?;
        super::transfer::refuse_encrypted(&src)?;
        local_src = src.open(&crate::crypto::NoSecret)?;
        &local_src
    };
    if is_remote(dst) {
        transfer(source, &mut remote(dst)?, selection, opts, progress)
    } else {
        let dst = repository(dst)?;
        super::transfer::refuse_encrypted(&dst)?;
        let dst = dst.open_writer(&crate::crypto::NoSecret)?;
        recovered(&dst.recovery);
        super::sync(source, &dst, selection, opts, progress)
    }
}
