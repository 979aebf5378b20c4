//! The backup tools under test, driven through their command lines: tessera (always), and
//! optionally tessera on S3 (`--s3`, a SeaweedFS on loopback) and restic and borg as peers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tessera_benches::measure::{run, Measured};

/// Which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tessera,
    /// tessera with its repository in a SeaweedFS bucket.
    TesseraS3,
    Restic,
    Borg,
}

/// How `tessera-s3` reaches its bucket.
pub struct S3Access {
    /// Environment: endpoint and credentials.
    pub env: Vec<(String, String)>,
    /// The server's data directory (what its repository occupies on disk).
    pub data_dir: PathBuf,
}

/// One tool with its repository in the work directory.
pub struct Tool {
    pub kind: Kind,
    pub bin: PathBuf,
    pub repo: PathBuf,
    base: PathBuf,
    /// Extra arguments of `tessera init` (ignored for the peers).
    init_args: Vec<String>,
    /// tessera only: an encrypted repository (AES-256-GCM, SPEC.md §23) instead of a plain one.
    encrypted: bool,
    backups: u32,
    /// `tessera-s3` only.
    s3: Option<S3Access>,
    /// `tessera-s3`: repositories created so far (each reset starts a new prefix).
    generation: u32,
}

/// A measured step and what the tool said about it.
pub struct Step {
    pub m: Measured,
    pub info: Value,
}

fn check(m: Measured, what: &str) -> Result<Measured> {
    if m.ok() {
        Ok(m)
    } else {
        bail!(
            "{what} failed (exit {:?}):\n{}\n{}",
            m.code,
            m.stdout.trim(),
            m.stderr.trim()
        )
    }
}

/// Restic's and borg's restores do not fsync; make them as durable as tessera's (which
/// fsyncs the file before renaming it into place) with `sync FILE` (an fsync of that file).
fn fsync_file(path: &Path) -> Result<Measured> {
    let m = run(Command::new("sync").arg(path))?;
    check(m, "sync")
}

impl Tool {
    pub fn new(kind: Kind, bin: PathBuf, work: &Path, init_args: Vec<String>) -> Self {
        let mut tool = Self {
            kind,
            bin,
            repo: PathBuf::new(),
            base: PathBuf::new(),
            init_args,
            encrypted: false,
            backups: 0,
            s3: None,
            generation: 0,
        };
        tool.place(work);
        tool
    }

    /// tessera with an encrypted repository (its own row in the report: `tessera-enc`).
    pub fn tessera_encrypted(bin: PathBuf, work: &Path, init_args: Vec<String>) -> Self {
        let mut tool = Self::new(Kind::Tessera, bin, work, init_args);
        tool.encrypted = true;
        tool.place(work);
        tool
    }

    fn place(&mut self, work: &Path) {
        let name = self.name();
        self.repo = work.join(format!("repo-{name}"));
        self.base = work.join(format!("{name}-home"));
    }

    /// tessera with its repository in the bucket `access` reaches.
    pub fn on_s3(bin: PathBuf, work: &Path, init_args: Vec<String>, access: S3Access) -> Self {
        let mut tool = Self::new(Kind::TesseraS3, bin, work, init_args);
        tool.repo.clone_from(&access.data_dir);
        tool.s3 = Some(access);
        tool
    }

    pub fn name(&self) -> &'static str {
        if self.encrypted {
            "tessera-enc"
        } else {
            kind_name(self.kind)
        }
    }

    /// The repository argument of tessera's commands: the directory, or `s3://BUCKET/PREFIX`.
    pub fn location(&self) -> std::ffi::OsString {
        match self.kind {
            Kind::TesseraS3 => {
                format!("s3://{}/repo-{}", super::s3::BUCKET, self.generation).into()
            }
            _ => self.repo.clone().into_os_string(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        match self.kind {
            Kind::Tessera => {
                // Read only by an encrypted repository.
                c.env("TESSERA_PASSPHRASE", "tessera-bench");
            }
            Kind::TesseraS3 => {
                if let Some(s3) = &self.s3 {
                    c.envs(s3.env.iter().map(|(k, v)| (k, v)));
                }
                c.env("TESSERA_PASSPHRASE", "tessera-bench");
                c.arg("--cache-dir")
                    .arg(self.base.join(format!("cache-{}", self.generation)));
            }
            Kind::Restic => {
                c.env("RESTIC_REPOSITORY", &self.repo)
                    .env("RESTIC_PASSWORD", "tessera-bench")
                    .env("RESTIC_CACHE_DIR", self.base.join("cache"))
                    .env("RESTIC_PROGRESS_FPS", "0.1");
            }
            Kind::Borg => {
                c.env("BORG_REPO", &self.repo)
                    .env("BORG_BASE_DIR", &self.base)
                    .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
                    .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
            }
        }
        c
    }

    /// Creates the repository.
    pub fn init(&mut self) -> Result<Step> {
        std::fs::create_dir_all(&self.base)?;
        let mut c = self.cmd();
        match self.kind {
            Kind::Tessera | Kind::TesseraS3 => {
                c.arg("--json").arg("init").arg(self.location());
                c.args(&self.init_args);
                if self.encrypted {
                    // The default Argon2id cost: what a user pays to unlock, per command.
                    c.arg("--recovery-key-file")
                        .arg(self.base.join("recovery-key"));
                } else {
                    c.args(["--encryption", "none"]);
                }
            }
            Kind::Restic => {
                c.arg("init");
            }
            Kind::Borg => {
                c.args(["init", "--encryption", "none"]);
            }
        }
        let m = check(run(&mut c)?, &format!("{} init", self.name()))?;
        let info = parse_json(self.kind, &m.stdout);
        Ok(Step { m, info })
    }

    /// Backs up `image` (a full read every time: restic gets `--force` and borg
    /// `--files-cache disabled`, so neither skips the file because its metadata is unchanged).
    pub fn backup(&mut self, image: &Path) -> Result<Step> {
        self.backups += 1;
        let mut c = self.cmd();
        match self.kind {
            Kind::Tessera | Kind::TesseraS3 => {
                c.arg("--json")
                    .arg("backup")
                    .arg(self.location())
                    .args(["--series", "bench"])
                    .arg(format!("disk={}", image.display()));
            }
            Kind::Restic => {
                c.args(["backup", "--force", "--quiet"]).arg(image);
            }
            Kind::Borg => {
                c.args([
                    "create",
                    "--compression",
                    "zstd,3",
                    "--files-cache",
                    "disabled",
                ])
                .arg(format!("::b{}", self.backups))
                .arg(image);
            }
        }
        let m = check(run(&mut c)?, &format!("{} backup", self.name()))?;
        let info = parse_json(self.kind, &m.stdout);
        Ok(Step { m, info })
    }

    /// Restores the latest backup of `image` into `out_dir`; returns the step and the
    /// restored file.
    pub fn restore(&mut self, image: &Path, out_dir: &Path) -> Result<(Step, PathBuf)> {
        self.restore_backup(image, out_dir, false)
    }

    /// The id of the repository's oldest backup, in the tool's own terms.
    fn first_backup_id(&self) -> Result<String> {
        let mut c = self.cmd();
        match self.kind {
            Kind::Tessera | Kind::TesseraS3 => {
                c.arg("--json").arg("list").arg(self.location());
            }
            Kind::Restic => {
                c.args(["snapshots", "--json"]);
            }
            Kind::Borg => return Ok("b1".into()),
        }
        let m = check(run(&mut c)?, &format!("{} list", self.name()))?;
        let v: Value = serde_json::from_str(&m.stdout).context("list output")?;
        let list = if self.is_tessera() {
            &v["snapshots"]
        } else {
            &v
        };
        list[0]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{}: no backup to restore", self.name()))
    }

    /// Restores the latest backup of `image` (or, with `first`, the repository's oldest)
    /// into `out_dir`; returns the step and the restored file.
    pub fn restore_backup(
        &mut self,
        image: &Path,
        out_dir: &Path,
        first: bool,
    ) -> Result<(Step, PathBuf)> {
        let which = if first {
            Some(self.first_backup_id()?)
        } else {
            None
        };
        std::fs::create_dir_all(out_dir)?;
        let image = std::fs::canonicalize(image)?;
        let relative = image.strip_prefix("/").unwrap_or(&image).to_path_buf();
        let mut c = self.cmd();
        let restored = match self.kind {
            Kind::Tessera | Kind::TesseraS3 => {
                let out = out_dir.join("restored.raw");
                c.arg("--json")
                    .arg("restore")
                    .arg(self.location())
                    .arg(which.as_deref().unwrap_or("latest"))
                    .arg(&out);
                out
            }
            Kind::Restic => {
                c.args(["restore", which.as_deref().unwrap_or("latest"), "--target"])
                    .arg(out_dir);
                out_dir.join(&relative)
            }
            Kind::Borg => {
                c.arg("extract")
                    .arg(format!(
                        "::{}",
                        which.unwrap_or_else(|| format!("b{}", self.backups))
                    ))
                    .current_dir(out_dir);
                out_dir.join(&relative)
            }
        };
        let mut m = check(run(&mut c)?, &format!("{} restore", self.name()))?;
        if !self.is_tessera() {
            m = m.then(&fsync_file(&restored)?);
        }
        let info = parse_json(self.kind, &m.stdout);
        if !restored.is_file() {
            bail!(
                "{} restore did not produce {}",
                self.name(),
                restored.display()
            );
        }
        Ok((Step { m, info }, restored))
    }

    /// Deletes the repository (and the tool's cache) so that `init` can run again; on S3 the
    /// next repository gets a new prefix.
    pub fn reset(&mut self) -> Result<()> {
        if self.kind == Kind::TesseraS3 {
            if self.backups > 0 || self.generation > 0 {
                self.generation += 1;
            }
            self.backups = 0;
            return Ok(());
        }
        for d in [&self.repo, &self.base] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
        }
        self.backups = 0;
        Ok(())
    }

    /// Whether this is tessera (local or on S3).
    pub fn is_tessera(&self) -> bool {
        matches!(self.kind, Kind::Tessera | Kind::TesseraS3)
    }

    /// Apparent size of the repository; on S3 the bytes of its packs (`tessera stats`).
    pub fn repo_size(&self) -> u64 {
        if self.kind == Kind::TesseraS3 {
            let mut c = self.cmd();
            c.arg("--json").arg("stats").arg(self.location());
            return run(&mut c)
                .ok()
                .and_then(|m| serde_json::from_str::<Value>(&m.stdout).ok())
                .and_then(|v| v["stats"]["pack_bytes"].as_u64())
                .unwrap_or(0);
        }
        tessera_benches::measure::tree_size(&self.repo)
    }

    /// `tessera verify` of every object (either tessera kind).
    pub fn verify(&self) -> Result<Measured> {
        let mut c = self.cmd();
        c.arg("verify").arg(self.location());
        check(run(&mut c)?, &format!("{} verify", self.name()))
    }

    /// For tessera: bytes in packs, index and snapshots.
    pub fn breakdown(&self) -> Option<(u64, u64, u64)> {
        (self.kind == Kind::Tessera).then(|| {
            let s = |d: &str| tessera_benches::measure::tree_size(&self.repo.join(d));
            (s("packs"), s("index"), s("snapshots"))
        })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Tessera => "tessera",
        Kind::TesseraS3 => "tessera-s3",
        Kind::Restic => "restic",
        Kind::Borg => "borg",
    }
}

fn parse_json(kind: Kind, stdout: &str) -> Value {
    if matches!(kind, Kind::Tessera | Kind::TesseraS3) {
        serde_json::from_str(stdout).unwrap_or(Value::Null)
    } else {
        Value::Null
    }
}

/// Finds the tessera binary: `--tessera`, else beside this program when it is a release
/// build (both are built into the same target directory), else `$CARGO_TARGET_DIR/release/tessera`, else
/// `target/release/tessera` of the workspace.
pub fn find_tessera(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--tessera {}: no such file", p.display());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Only a release build: a debug tessera would measure the wrong thing.
        if let Some(dir) = exe.parent().filter(|d| d.ends_with("release")) {
            candidates.push(dir.join("tessera"));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release").join("tessera"));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("release")
            .join("tessera"),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no tessera binary found (looked at {}); build it with \
                 `cargo build --release -p tessera-cli` or pass --tessera PATH",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
