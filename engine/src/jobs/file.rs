//! Job files (SPEC.md §26.1): one TOML file per job, parsed into [`JobDef`] with every value
//! checked where it is read, and every error reported as `FILE: line L, column C: KEY:
//! message` (a usage error).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::schedule::Schedule;
use super::values::{Argv, Dur, Event, Name, Rate, RefMode, Sample, Within};
use crate::error::{Error, Result};
use crate::ops::prune::KeepPolicy;

/// Largest job file read (a job file is a page of text).
const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// A whole job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobDef {
    /// Notify `stale` when no run succeeded for longer than this.
    pub stale_after: Option<Dur>,
    /// Where the backups go.
    pub repository: RepositoryDef,
    /// What is backed up, and how.
    pub backup: Spanned<BackupDef>,
    /// Prune of the series after each successful backup.
    pub retention: Option<Spanned<RetentionDef>>,
    /// Verification after each run.
    pub verify: Option<Spanned<VerifyDef>>,
    /// Off-site copies.
    #[serde(default)]
    pub sync: Vec<Spanned<SyncDef>>,
    /// Commands around the backup.
    #[serde(default)]
    pub hooks: HooksDef,
    /// When the daemon runs the job.
    pub schedule: Option<Schedule>,
    /// Who is told.
    #[serde(default)]
    pub notify: Vec<Spanned<NotifyDef>>,
}

/// `[repository]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RepositoryDef {
    /// A path or `s3://BUCKET/PREFIX`.
    pub location: Spanned<String>,
    /// A key file or the recovery key.
    pub key_file: Option<PathBuf>,
    /// A file holding the passphrase.
    pub passphrase_file: Option<PathBuf>,
    /// A command printing the passphrase.
    pub password_command: Option<String>,
    /// As `--s3-endpoint`.
    pub s3_endpoint: Option<String>,
    /// As `--s3-region`.
    pub s3_region: Option<String>,
    /// As `--s3-path-style`.
    pub s3_path_style: Option<bool>,
    /// As `--s3-insecure-http`.
    #[serde(default)]
    pub s3_insecure_http: bool,
    /// As `--cache-dir`.
    pub cache_dir: Option<PathBuf>,
    /// A `tessera serve` repository: the local (plain) repository backups go into first,
    /// then are pushed from.
    pub staging: Option<PathBuf>,
    /// A `tessera serve` repository: the token (a `backup` token suffices).
    pub token_file: Option<PathBuf>,
    /// A `tessera serve` repository: CA certificates for its https:// certificate.
    pub tls_ca: Option<PathBuf>,
    /// A `tessera serve` repository: allow http:// to a host that is not loopback.
    #[serde(default)]
    pub insecure_http: bool,
}

impl RepositoryDef {
    /// Whether the repository is a `tessera serve` server.
    pub fn is_server(&self) -> bool {
        crate::sync::endpoints::is_remote(self.location.get_ref())
    }
}

/// `[backup]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupDef {
    /// The series (default: the job's name).
    pub series: Option<Name>,
    /// Which snapshot deltas apply on.
    #[serde(default)]
    pub mode: RefMode,
    /// Every Nth backup is a key backup.
    #[serde(default = "default_key_interval")]
    pub key_interval: u32,
    /// How to read the disks.
    #[serde(default = "default_format")]
    pub format: Spanned<String>,
    /// Read a disk in full when its delta does not apply.
    #[serde(default = "yes")]
    pub fallback_full: bool,
    /// Directories backing files and parents may be opened from.
    #[serde(default)]
    pub allow_backing_dirs: Vec<PathBuf>,
    /// CA certificates for nbds:// sources.
    pub tls_ca: Option<PathBuf>,
    /// Tags of every snapshot.
    #[serde(default)]
    pub tags: BTreeMap<Name, String>,
    /// The disks.
    #[serde(default)]
    pub disk: Vec<Spanned<DiskDef>>,
}

fn default_key_interval() -> u32 {
    crate::ops::backup::DeltaOptions::default().key_interval
}

fn default_format() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}

fn yes() -> bool {
    true
}

/// `[[backup.disk]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskDef {
    /// Disk name within the snapshot.
    pub name: Spanned<Name>,
    /// Image, block device or NBD URL.
    pub source: String,
    /// A changed-block list.
    pub changes: Option<PathBuf>,
}

/// `[retention]`: as `tessera prune`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[expect(
    clippy::struct_field_names,
    reason = "the keys of the file, as `tessera prune` names them"
)]
pub struct RetentionDef {
    #[serde(default)]
    keep_last: u32,
    #[serde(default)]
    keep_hourly: u32,
    #[serde(default)]
    keep_daily: u32,
    #[serde(default)]
    keep_weekly: u32,
    #[serde(default)]
    keep_monthly: u32,
    #[serde(default)]
    keep_yearly: u32,
    keep_within: Option<Within>,
}

impl RetentionDef {
    /// The policy `prune` applies.
    pub fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.map(|w| w.0),
        }
    }
}

/// `[verify]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyDef {
    /// The sampled verify.
    pub sample: Option<Sample>,
    /// At most one sampled verify per span.
    pub sample_every: Option<Dur>,
    /// A full verify when the last one is older.
    pub full_every: Option<Dur>,
    /// Skip objects verified within this span.
    pub skip_verified_within: Option<Within>,
}

/// `[[sync]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncDef {
    /// A path, `s3://` location, or `tessera serve` URL.
    pub to: String,
    /// The server's token.
    pub token_file: Option<PathBuf>,
    /// CA certificates for the server.
    pub tls_ca: Option<PathBuf>,
    /// Bytes per second.
    pub bwlimit: Option<Rate>,
    /// Allow http:// to a non-loopback server.
    #[serde(default)]
    pub insecure_http: bool,
    /// Per-request network timeout (default 600 s, as `sync`'s).
    pub io_timeout: Option<Dur>,
}

/// `[hooks]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksDef {
    /// Before the backup.
    pub before: Option<HookDef>,
    /// Right after the backup.
    pub after: Option<HookDef>,
}

/// One hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookDef {
    /// Program and arguments.
    pub command: Argv,
    /// Killed after this long (default 10 min).
    pub timeout: Option<Dur>,
}

/// `[[notify]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotifyDef {
    /// POST the event here.
    pub webhook: Option<Spanned<String>>,
    /// Mail the event to these addresses.
    pub email: Option<Spanned<Vec<String>>>,
    /// The mail server (`smtp://`, `smtps://`, `smtp+starttls://`).
    pub smtp: Option<Spanned<String>>,
    /// The sender.
    pub from: Option<Spanned<String>>,
    /// SMTP user.
    pub username: Option<String>,
    /// File holding the SMTP password.
    pub password_file: Option<PathBuf>,
    /// Which events.
    pub on: Option<Vec<Event>>,
    /// Allow http:// or smtp:// to a non-loopback host.
    #[serde(default)]
    pub insecure: bool,
}

impl NotifyDef {
    /// The events this target gets.
    pub fn events(&self) -> Vec<Event> {
        self.on.clone().unwrap_or_else(|| Event::DEFAULT.to_vec())
    }
}

/// A job: its name, its file, its definition.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file's stem.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What it says.
    pub def: JobDef,
    /// Paths it names that do not exist now (reported, not refused: a before-hook may
    /// make them).
    pub warnings: Vec<String>,
    /// The `tessera serve` server the job's repository is, when it is one (its `location`
    /// is then the staging repository, and the server its first sync target).
    pub server: Option<String>,
}

impl Job {
    /// The series backed up.
    pub fn series(&self) -> &str {
        self.def
            .backup
            .get_ref()
            .series
            .as_ref()
            .map_or(&self.name, |s| &s.0)
    }

    /// Reads and checks the job file `path` (SPEC.md §26.1).
    pub fn load(path: &Path) -> Result<Self> {
        let name = job_name(path)?;
        check_permissions(path)?;
        let text = read_bounded(path)?;
        Self::parse(&name, path, &text)
    }

    /// Checks `text` as the job file `path` of job `name`.
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Self> {
        let located = |span: Option<Range<usize>>, message: &str| {
            Error::Usage(locate(path, text, span, message))
        };
        let def: JobDef = toml::from_str(text).map_err(|e| located(e.span(), e.message()))?;
        check(&def).map_err(|(span, message)| located(Some(span), &message))?;
        let server = def
            .repository
            .is_server()
            .then(|| def.repository.location.get_ref().clone());
        let def = through_staging(def);
        let mut job = Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            def,
            warnings: Vec::new(),
            server,
        };
        job.warnings = missing_paths(&job.def);
        Ok(job)
    }
}

/// The job files of `dir` (`*.toml`, regular files), sorted.
pub fn job_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A job on a `tessera serve` repository is run as a job on its staging repository whose
/// first `[[sync]]` target is the server: the backup, retention and verify happen in the
/// staging repository (a backup token cannot prune or read the server), then the push
/// (SPEC.md §26.1).
fn through_staging(mut def: JobDef) -> JobDef {
    let r = &mut def.repository;
    let Some(staging) = r.staging.take() else {
        return def;
    };
    let server = std::mem::replace(
        &mut r.location,
        Spanned::new(0..0, staging.display().to_string()),
    );
    let push = SyncDef {
        to: server.into_inner(),
        token_file: r.token_file.take(),
        tls_ca: r.tls_ca.take(),
        bwlimit: None,
        insecure_http: std::mem::take(&mut r.insecure_http),
        io_timeout: None,
    };
    def.sync.insert(0, Spanned::new(0..0, push));
    def
}

/// The job's name from its file name: the stem, under the rule of series names.
pub fn job_name(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|_| path.extension().is_some_and(|e| e == "toml"))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: a job file is named NAME.toml (the job's name is NAME)",
                path.display()
            ))
        })?;
    tessera_format::snapshot::validate_name("job name", stem).map_err(|e| {
        Error::Usage(format!(
            "{}: {e} (the job's name is its file name without .toml)",
            path.display()
        ))
    })?;
    Ok(stem.to_string())
}

/// Refuses a job file others may write: its hooks and password command run with the
/// daemon's rights (root, usually), so whoever can edit it can run anything (sshd's
/// StrictModes reasoning).
fn check_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta =
        std::fs::metadata(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{}: writable by group or others (mode {:o}); its hooks run with this process's rights, so only its owner may write it: chmod go-w {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::Usage(format!(
            "{}: owned by uid {}, neither this user (uid {me}) nor root; its hooks would run as this user",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    let file =
        std::fs::File::open(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let n = file
        .take(MAX_JOB_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    if n as u64 > MAX_JOB_FILE_BYTES {
        return Err(Error::Usage(format!(
            "{}: larger than {MAX_JOB_FILE_BYTES} bytes; this is not a job file",
            path.display()
        )));
    }
    Ok(text)
}

/// `FILE: line L, column C: KEY: message` (or `FILE: message` without a span).
fn locate(path: &Path, text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let message = message.trim_end();
    let Some(span) = span else {
        return format!("{}: {message}", path.display());
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    let key = super::keys::key_at(text, span.start);
    match key {
        Some(key) => format!(
            "{}: line {line}, column {column}: {key}: {message}",
            path.display()
        ),
        None => format!(
            "{}: line {line}, column {column}: {message}",
            path.display()
        ),
    }
}

type Problem = (Range<usize>, String);

/// The checks no single value can make alone.
fn check(def: &JobDef) -> std::result::Result<(), Problem> {
    let location = &def.repository.location;
    let r = &def.repository;
    if r.is_server() {
        check_server_repository(r).map_err(|m| (location.span(), m))?;
    } else if r.staging.is_some() || r.token_file.is_some() || r.tls_ca.is_some() || r.insecure_http
    {
        return Err((
            location.span(),
            "staging, token-file, tls-ca and insecure-http belong to a `tessera serve` repository (an http:// or https:// location)".into(),
        ));
    } else {
        crate::location::RepoLocation::parse(
            location.get_ref(),
            crate::location::LocationOptions::default(),
        )
        .map_err(|e| (location.span(), e.to_string()))?;
    }
    let secrets = [
        def.repository.key_file.is_some(),
        def.repository.passphrase_file.is_some(),
        def.repository.password_command.is_some(),
    ];
    if secrets.iter().filter(|&&s| s).count() > 1 {
        return Err((
            location.span(),
            "give at most one of key-file, passphrase-file, password-command".into(),
        ));
    }
    let backup = def.backup.get_ref();
    let format = &backup.format;
    format
        .get_ref()
        .parse::<crate::sources::SourceFormat>()
        .map_err(|e| (format.span(), e.to_string()))?;
    if backup.disk.is_empty() {
        return Err((
            def.backup.span(),
            "no [[backup.disk]]: name at least one disk (name and source)".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for disk in &backup.disk {
        let name = &disk.get_ref().name;
        if !names.insert(name.get_ref()) {
            return Err((
                name.span(),
                format!("disk name {:?} is given twice", name.get_ref().0),
            ));
        }
        if disk.get_ref().source.is_empty() {
            return Err((disk.span(), "the disk's source is empty".into()));
        }
    }
    if let Some(r) = &def.retention {
        if r.get_ref().policy().is_empty() {
            return Err((
                r.span(),
                "[retention] has no keep rule: give at least one of keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly, keep-within (without [retention] nothing is pruned)".into(),
            ));
        }
    }
    for n in &def.notify {
        super::notify::check_target(n.get_ref())
            .map_err(|(span, m)| (span.unwrap_or_else(|| n.span()), m))?;
    }
    if let Some(v) = &def.verify {
        let v = v.get_ref();
        if v.sample.is_none() && v.full_every.is_none() {
            return Err((
                def.verify.as_ref().map_or(0..0, Spanned::span),
                "[verify] says neither `sample` nor `full-every`: it would never verify (leave it out, or say what to verify)".into(),
            ));
        }
        if v.sample_every.is_some() && v.sample.is_none() {
            return Err((
                def.verify.as_ref().map_or(0..0, Spanned::span),
                "`sample-every` without `sample`".into(),
            ));
        }
    }
    for s in &def.sync {
        check_sync_target(s.get_ref(), def).map_err(|m| (s.span(), m))?;
    }
    if let Some(s) = &def.schedule {
        if s.next_after(crate::time::now_us()).is_none() {
            return Err((
                def.backup.span().start..def.backup.span().start,
                format!("[schedule] cron {:?} never fires", s.cron.text),
            ));
        }
    }
    Ok(())
}

/// A `tessera serve` repository: backups go into `staging` (a local plain repository) and
/// are pushed to the server with its token (SPEC.md §26.1).
fn check_server_repository(r: &RepositoryDef) -> std::result::Result<(), String> {
    let url = r.location.get_ref();
    match &r.staging {
        None => return Err("a `tessera serve` repository needs `staging = DIR`: a local plain repository (`tessera init DIR --encryption none`) the backups go into first, then are pushed from".into()),
        Some(dir) if !dir.is_absolute() || dir.to_string_lossy().contains("://") => {
            return Err("`staging` is the absolute path of a local directory (the daemon runs in /, a shell elsewhere)".into());
        }
        Some(_) => {}
    }
    if r.token_file.is_none() {
        return Err(
            "a `tessera serve` repository needs `token-file` (a `backup` token suffices)".into(),
        );
    }
    if url.starts_with("http://") && !r.insecure_http && !crate::net::is_loopback_url(url) {
        return Err("a server over plain http:// must be on a loopback address: use https://, or say `insecure-http = true` if the network is trusted".into());
    }
    if r.key_file.is_some() || r.passphrase_file.is_some() || r.password_command.is_some() {
        return Err(
            "a `tessera serve` server takes plain repositories: its staging repository has no key"
                .into(),
        );
    }
    Ok(())
}

/// A `[[sync]]` target: a path, `s3://`, or an `http(s)://` server (plain http only on
/// loopback unless `insecure-http`), as `sync` would accept it.
fn check_sync_target(s: &SyncDef, def: &JobDef) -> std::result::Result<(), String> {
    let to = s.to.as_str();
    if to.starts_with("http://") || to.starts_with("https://") {
        if to.starts_with("http://") && !s.insecure_http && !crate::net::is_loopback_url(to) {
            return Err("a server over plain http:// must be on a loopback address: use https://, or say `insecure-http = true` if the network is trusted".into());
        }
        if s.token_file.is_none() {
            return Err("a server target needs `token-file`".into());
        }
        return Ok(());
    }
    if s.tls_ca.is_some() {
        return Err("`tls-ca` applies to https:// targets only".into());
    }
    let target =
        crate::location::RepoLocation::parse(to, crate::location::LocationOptions::default())
            .map_err(|e| e.to_string())?;
    if target.is_s3()
        && def.repository.cache_dir.is_some()
        && def.repository.location.get_ref().starts_with("s3://")
    {
        return Err("[repository] cache-dir names the cache of one S3 repository, and this target is in S3 too: leave cache-dir out (each gets its own cache)".into());
    }
    Ok(())
}

/// Paths the job names that do not exist now.
fn missing_paths(def: &JobDef) -> Vec<String> {
    let mut paths: Vec<(&str, &Path)> = Vec::new();
    let r = &def.repository;
    for (what, p) in [
        ("repository.key-file", &r.key_file),
        ("repository.passphrase-file", &r.passphrase_file),
        ("backup.tls-ca", &def.backup.get_ref().tls_ca),
    ] {
        if let Some(p) = p {
            paths.push((what, p));
        }
    }
    for d in &def.backup.get_ref().disk {
        let d = d.get_ref();
        if !d.source.contains("://") {
            paths.push(("backup.disk.source", Path::new(&d.source)));
        }
        if let Some(c) = &d.changes {
            paths.push(("backup.disk.changes", c));
        }
    }
    for s in &def.sync {
        let s = s.get_ref();
        if let Some(t) = &s.token_file {
            paths.push(("sync.token-file", t));
        }
        if let Some(t) = &s.tls_ca {
            paths.push(("sync.tls-ca", t));
        }
    }
    for n in &def.notify {
        if let Some(p) = &n.get_ref().password_file {
            paths.push(("notify.password-file", p));
        }
    }
    for (what, h) in [
        ("hooks.before", &def.hooks.before),
        ("hooks.after", &def.hooks.after),
    ] {
        if let Some(h) = h {
            let program = Path::new(&h.command.0[0]);
            if program.is_absolute() {
                paths.push((what, program));
            }
        }
    }
    paths
        .into_iter()
        .filter(|(_, p)| !p.exists())
        .map(|(what, p)| format!("{what}: {} does not exist (yet)", p.display()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"stale-after = "36h"
[repository]
location = "/srv/tessera"
key-file = "/etc/tessera/vm1.key"

[backup]
mode = "differential"
tags = { site = "paris" }
[[backup.disk]]
name = "xvda"
source = "/var/lib/vm/vm1.qcow2"
[[backup.disk]]
name = "xvdb"
source = "nbd://127.0.0.1:10809/disk"

[retention]
keep-last = 7
keep-within = "6m"

[verify]
sample = "5%"
full-every = "7d"

[[sync]]
to = "https://backup.example:8443"
token-file = "/etc/tessera/offsite.token"
bwlimit = "50M"

[hooks.before]
command = ["/bin/true"]
timeout = "5min"

[schedule]
cron = "30 2 * * *"
timezone = "Europe/Paris"
random-delay = "15min"

[[notify]]
webhook = "https://hooks.example/x"
[[notify]]
email = ["ops@example.com"]
smtp = "smtp+starttls://mail.example"
on = ["failure", "success"]
"#;

    fn parse(text: &str) -> Result<Job> {
        Job::parse("vm1", Path::new("vm1.toml"), text)
    }

    #[test]
    fn a_full_file_parses() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.series(), "vm1");
        assert_eq!(job.def.backup.get_ref().disk.len(), 2);
        assert_eq!(job.def.retention.unwrap().get_ref().policy().last, 7);
        assert_eq!(
            job.def.hooks.before.unwrap().timeout.unwrap().0.us,
            300_000_000
        );
        assert_eq!(
            job.def.notify[1].get_ref().events(),
            vec![Event::Failure, Event::Success]
        );
    }

    /// Each broken variant of [`GOOD`] is refused with its line and key.
    #[test]
    fn errors_name_the_line_and_the_key() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("keep-last = 7", "kep-last = 7", "line 17,", "kep-last"),
            (
                "cron = \"30 2 * * *\"",
                "cron = \"61 2 * * *\"",
                "line 34,",
                "[schedule].cron",
            ),
            (
                "\"Europe/Paris\"",
                "\"Mars/Olympus\"",
                "line 35,",
                "[schedule].timezone",
            ),
            (
                "\"15min\"",
                "\"15m\"",
                "line 36,",
                "[schedule].random-delay",
            ),
            (
                "name = \"xvdb\"",
                "name = \"xvda\"",
                "line 1",
                "duplicate disk",
            ),
            (
                "keep-last = 7\nkeep-within = \"6m\"",
                "",
                "line 16,",
                "[retention]",
            ),
            (
                "webhook = \"https://hooks.example/x\"",
                "on = [\"failure\"]",
                "line 3",
                "[[notify]]#1",
            ),
            (
                "sample = \"5%\"",
                "sample = \"0%\"",
                "line 21,",
                "[verify].sample",
            ),
            (
                "name = \"xvda\"",
                "name = \"../x\"",
                "line 10,",
                "[[backup.disk]]#1.name",
            ),
            (
                "mode = \"differential\"",
                "mode = \"sometimes\"",
                "line 7,",
                "[backup].mode",
            ),
        ];
        for (from, to, line, key) in cases {
            let text = GOOD.replacen(from, to, 1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("vm1.toml: "), "{err}");
            assert!(err.contains(line), "{from} -> {to}: {err}");
            let expected = if *key == "duplicate disk" {
                "given twice"
            } else {
                key
            };
            assert!(err.contains(expected), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn job_names_follow_the_series_rule() {
        assert_eq!(job_name(Path::new("/etc/jobs/vm-1.toml")).unwrap(), "vm-1");
        for bad in ["bad name.toml", ".hidden.toml", "vm1.yaml", "-x.toml"] {
            assert!(job_name(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
