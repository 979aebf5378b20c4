//! Where the secret of an encrypted repository comes from (SPEC.md §23.4): the global
//! options `--key-file`, `--passphrase-file`, `--password-command`, the environment
//! variable `TESSERA_PASSPHRASE`, or a prompt on the terminal, in that order. Secrets never
//! come from the command line itself (it shows in process listings); they are asked for
//! only when the repository is encrypted, held in buffers that are wiped on drop, and never
//! printed.
//!
//! The options are parsed once, by clap, and kept in a process-wide cell
//! ([`set_global`]/[`global`]) rather than threaded through every subcommand's function:
//! every command that opens a repository reads them the same way.

use std::fs::OpenOptions;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tessera_engine::crypto::text::{key_file_text, parse_key_file, parse_recovery};
use tessera_engine::crypto::{Passphrase, SecretKey, SecretSource, SlotSecret};
use tessera_engine::Error;
use zeroize::Zeroizing;

pub use tessera_engine::crypto::{NEW_PASSPHRASE_ENV, PASSPHRASE_ENV};

/// Largest secret file or command output read (a passphrase is far shorter).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The key options, global to every subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// A key file (created 0600 by `init --key-file` when it does not exist), or a file
    /// holding the recovery key.
    #[arg(long, global = true, value_name = "FILE", conflicts_with_all = ["passphrase_file", "password_command"])]
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from this file (its first line).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "password_command"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Run this shell command and read the passphrase from its output (first line); for
    /// password managers.
    #[arg(long, global = true, value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Never prompt on the terminal (the daemon: a run must not wait for a human while it
    /// holds its locks).
    #[arg(skip)]
    pub no_prompt: bool,
}

static GLOBAL: OnceLock<KeyArgs> = OnceLock::new();

/// Keeps the parsed options for [`global`].
pub fn set_global(args: KeyArgs) {
    let _ = GLOBAL.set(args);
}

/// The parsed options (none before [`set_global`]).
pub fn global() -> &'static KeyArgs {
    static NONE: KeyArgs = KeyArgs {
        key_file: None,
        passphrase_file: None,
        password_command: None,
        no_prompt: false,
    };
    GLOBAL.get().unwrap_or(&NONE)
}

fn failed(what: String) -> Error {
    Error::Usage(what)
}

/// Reads at most [`MAX_SECRET_BYTES`] of `path`.
fn read_secret_file(path: &Path) -> tessera_engine::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES).read_to_string(&mut text))
        .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
    Ok(text)
}

/// The key of an encrypted Xen Orchestra remote: the first line of `path` (its 32
/// characters; the engine checks the length).
pub fn xo_remote_key(path: &Path) -> tessera_engine::Result<Zeroizing<Vec<u8>>> {
    let text = read_secret_file(path)?;
    let line = text
        .split('\n')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    Ok(Zeroizing::new(line.as_bytes().to_vec()))
}

/// The first line of `text` (without its line ending): the passphrase.
fn first_line(text: &str) -> Passphrase {
    Passphrase::new(
        text.split('\n')
            .next()
            .unwrap_or_default()
            .trim_end_matches('\r')
            .to_string(),
    )
}

/// Runs `--password-command` and takes the first line of its output. The child does not
/// inherit the passphrases of the environment (`TESSERA_PASSPHRASE`,
/// `TESSERA_NEW_PASSPHRASE`): a password manager has no business seeing them. At most
/// [`MAX_SECRET_BYTES`] of its output are read; a child printing more is killed and
/// refused, so a runaway command cannot fill memory.
fn run_password_command(command: &str) -> tessera_engine::Result<Passphrase> {
    let mut shell = Command::new("/bin/sh");
    shell.args(["-c", command]);
    for secret in tessera_engine::crypto::SECRET_ENV {
        shell.env_remove(secret);
    }
    let mut child = shell
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("--password-command: starting /bin/sh: {e}")))?;
    let mut stdout = Zeroizing::new(Vec::new());
    let read = child
        .stdout
        .take()
        .map(|out| out.take(MAX_SECRET_BYTES + 1).read_to_end(&mut stdout))
        .transpose()
        .map_err(|e| failed(format!("--password-command: reading its output: {e}")))?;
    if read.unwrap_or(0) as u64 > MAX_SECRET_BYTES {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed(format!(
            "--password-command printed more than {MAX_SECRET_BYTES} bytes; no passphrase"
        )));
    }
    let status = child
        .wait()
        .map_err(|e| failed(format!("--password-command: {e}")))?;
    if !status.success() {
        return Err(failed(format!(
            "--password-command failed ({status}); no passphrase"
        )));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| failed("--password-command printed something that is not UTF-8".into()))?;
    Ok(first_line(text))
}

/// A secret from a file given as `--key-file`: a key file, or the recovery key.
fn key_file_secret(path: &Path) -> tessera_engine::Result<SlotSecret> {
    let text = read_secret_file(path)?;
    if text.trim_start().starts_with("tessera-key-v1:") {
        return parse_key_file(&text)
            .map(SlotSecret::KeyFile)
            .map_err(|e| failed(format!("{}: {e}", path.display())));
    }
    parse_recovery(&text)
        .map(SlotSecret::Recovery)
        .map_err(|_| {
            failed(format!(
                "{} holds neither a key file (tessera-key-v1:…) nor a recovery key",
                path.display()
            ))
        })
}

/// A passphrase from the non-interactive sources, if one is given.
fn given_passphrase(args: &KeyArgs) -> tessera_engine::Result<Option<Passphrase>> {
    if let Some(path) = &args.passphrase_file {
        return Ok(Some(first_line(&read_secret_file(path)?)));
    }
    if let Some(command) = &args.password_command {
        return run_password_command(command).map(Some);
    }
    Ok(std::env::var(PASSPHRASE_ENV).ok().map(Passphrase::new))
}

fn prompt(text: &str) -> tessera_engine::Result<Passphrase> {
    rpassword::prompt_password(text)
        .map(Passphrase::new)
        .map_err(|e| failed(format!("reading the passphrase from the terminal: {e}")))
}

impl SecretSource for KeyArgs {
    fn secret(&self, location: &str) -> tessera_engine::Result<SlotSecret> {
        if let Some(path) = &self.key_file {
            return key_file_secret(path);
        }
        if let Some(pass) = given_passphrase(self)? {
            return Ok(SlotSecret::Passphrase(pass));
        }
        if !self.no_prompt && std::io::stdin().is_terminal() {
            return prompt(&format!("passphrase for {location}: ")).map(SlotSecret::Passphrase);
        }
        Err(Error::KeyRequired {
            location: location.to_string(),
        })
    }

    /// Warns on stderr about a slot object unlocking skipped (its key and why; nothing
    /// secret).
    fn skipped_slot(&self, key: &str, reason: &str) {
        eprintln!("warning: key slot {key} skipped: {reason}");
    }

    /// Warns (once per process, on stderr, naming no secret) when a secret was given
    /// explicitly for a repository whose config says plain: the user expected an encrypted
    /// repository, and a replaced config is how one would be downgraded (SPEC.md §23.5).
    fn plain_repository(&self, location: &str) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let given = if self.key_file.is_some() {
            Some("--key-file")
        } else if self.passphrase_file.is_some() {
            Some("--passphrase-file")
        } else if self.password_command.is_some() {
            Some("--password-command")
        } else if std::env::var_os(PASSPHRASE_ENV).is_some() {
            Some(PASSPHRASE_ENV)
        } else {
            None
        };
        if let Some(given) = given {
            WARNED.call_once(|| {
                eprintln!(
                    "warning: {location} is not encrypted (its config says plain), yet {given} was given; if it was made encrypted, its config has been replaced: check it before writing to it"
                );
            });
        }
    }
}

/// The first secret of a new repository (`init`): a key file (created when `--key-file`
/// names a file that does not exist), or a passphrase (asked twice on a terminal).
pub fn new_secret(args: &KeyArgs, location: &str) -> tessera_engine::Result<SlotSecret> {
    if let Some(path) = &args.key_file {
        if !path.exists() {
            let key = SecretKey::random();
            write_private(path, &key_file_text(&key))?;
            return Ok(SlotSecret::KeyFile(key));
        }
        return match key_file_secret(path)? {
            SlotSecret::Recovery(_) => Err(failed(format!(
                "{} holds a recovery key; a new repository needs a key file or a passphrase",
                path.display()
            ))),
            secret => Ok(secret),
        };
    }
    if let Some(pass) = given_passphrase(args)? {
        return Ok(SlotSecret::Passphrase(pass));
    }
    if !std::io::stdin().is_terminal() {
        return Err(failed(format!(
            "{location} would be encrypted: give a passphrase (--passphrase-file, {PASSPHRASE_ENV}, --password-command) or --key-file, or --encryption none for a plain repository"
        )));
    }
    let first = prompt(&format!("new passphrase for {location}: "))?;
    let again = prompt("the same passphrase again: ")?;
    if first.expose() != again.expose() {
        return Err(failed(
            "the two passphrases differ; nothing was created".into(),
        ));
    }
    Ok(SlotSecret::Passphrase(first))
}

/// `init --keys-from FROM`: the keys of `FROM`, unlocked with the global options' secret
/// (asked once), and the new repository's first secret: `--new-passphrase-file` or
/// `--new-key-file` when given, else the same secret (a recovery key cannot be reused:
/// every repository gets its own).
pub fn shared_keys_and_secret(
    from: &tessera_engine::location::RepoLocation,
    args: &crate::args::InitEncryptionArgs,
) -> tessera_engine::Result<(SlotSecret, Option<tessera_engine::crypto::RepoKeys>)> {
    // Asked only once SRC turned out to be encrypted, and kept for the new slot.
    let asked = AskedOnce {
        inner: global(),
        secret: std::cell::RefCell::new(None),
    };
    let keys = tessera_engine::ops::keys::keys_of(from, &asked)?;
    let secret = asked
        .secret
        .into_inner()
        .ok_or_else(|| Error::Internal("no secret was asked for".into()))?;
    let new = if args.new_passphrase_file.is_some() || args.new_key_file.is_some() {
        new_slot_secret(&crate::args::NewSecretArgs {
            new_passphrase_file: args.new_passphrase_file.clone(),
            new_key_file: args.new_key_file.clone(),
            kdf_memory_mib: args.kdf_memory_mib,
            kdf_iterations: args.kdf_iterations,
        })?
    } else if matches!(secret, SlotSecret::Recovery(_)) {
        return Err(failed(format!(
            "{from} was unlocked with its recovery key, which the new repository cannot reuse: give its secret with --new-passphrase-file or --new-key-file"
        )));
    } else {
        secret
    };
    Ok((new, Some(keys)))
}

/// [`KeyArgs`] asked at most once, the answer kept (a command that unlocks one repository
/// and gives the same secret to a new one); warnings go through.
struct AskedOnce<'a> {
    inner: &'a KeyArgs,
    secret: std::cell::RefCell<Option<SlotSecret>>,
}

impl SecretSource for AskedOnce<'_> {
    fn secret(&self, location: &str) -> tessera_engine::Result<SlotSecret> {
        if let Some(secret) = self.secret.borrow().as_ref() {
            return Ok(secret.clone());
        }
        let secret = self.inner.secret(location)?;
        *self.secret.borrow_mut() = Some(secret.clone());
        Ok(secret)
    }

    fn skipped_slot(&self, key: &str, reason: &str) {
        self.inner.skipped_slot(key, reason);
    }

    fn plain_repository(&self, location: &str) {
        self.inner.plain_repository(location);
    }
}

/// The new secret of `key add` / `key change-passphrase` (see [`crate::args::NewSecretArgs`]).
pub fn new_slot_secret(args: &crate::args::NewSecretArgs) -> tessera_engine::Result<SlotSecret> {
    if let Some(path) = &args.new_key_file {
        let key_args = KeyArgs {
            key_file: Some(path.clone()),
            ..KeyArgs::default()
        };
        return new_secret(&key_args, "the new slot");
    }
    if let Some(path) = &args.new_passphrase_file {
        return Ok(SlotSecret::Passphrase(first_line(&read_secret_file(path)?)));
    }
    if let Ok(pass) = std::env::var(NEW_PASSPHRASE_ENV) {
        return Ok(SlotSecret::Passphrase(Passphrase::new(pass)));
    }
    if !std::io::stdin().is_terminal() {
        return Err(failed(format!(
            "give the new secret: --new-passphrase-file, {NEW_PASSPHRASE_ENV} or --new-key-file"
        )));
    }
    let first = prompt("new passphrase: ")?;
    let again = prompt("the same passphrase again: ")?;
    if first.expose() != again.expose() {
        return Err(failed(
            "the two passphrases differ; nothing was changed".into(),
        ));
    }
    Ok(SlotSecret::Passphrase(first))
}

/// Writes a secret to a new file readable by its owner only (0600, never over an existing
/// file), synced ([`create_private`], then [`fill_private`]).
pub fn write_private(path: &Path, text: &str) -> tessera_engine::Result<()> {
    let file = create_private(path)?;
    fill_private(file, path, text)
}

/// Creates `path` for a secret: a new file (never over an existing one), 0600 from the
/// moment it exists. Callers that must not lose a secret open it before making the secret
/// matter (`init --recovery-key-file`), so that a bad path fails first.
pub fn create_private(path: &Path) -> tessera_engine::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(format!("creating {}: {e}", path.display())))
}

/// Writes `text` into `file` (made by [`create_private`] at `path`) and makes it durable:
/// the file and then its directory are synced. On failure the file is removed, so no
/// truncated secret is left that someone could take for the real one.
pub fn fill_private(
    mut file: std::fs::File,
    path: &Path,
    text: &str,
) -> tessera_engine::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::File::open(parent)?.sync_all());
    written.map_err(|e| {
        let _ = std::fs::remove_file(path);
        Error::io(format!("writing {}", path.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn the_passphrase_is_the_first_line_without_its_ending() {
        assert_eq!(first_line("pw\n").expose(), b"pw");
        assert_eq!(first_line("pw\r\nrest").expose(), b"pw");
        assert_eq!(first_line("no newline").expose(), b"no newline");
        assert_eq!(first_line(" spaces kept ").expose(), b" spaces kept ");
    }
}
