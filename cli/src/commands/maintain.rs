//! `tessera init`.

use anyhow::Result;
use tessera_engine::crypto::text::recovery_text;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::immutable::Policy;
use tessera_engine::ops::init::init as init_repository;
use tessera_engine::storage::RetentionMode;
use tessera_engine::{InitOptions, NewKeys};
use tessera_format::config::validate_block_size;
use tessera_format::keyslot::KdfParams;
use tessera_format::Compression;

use crate::args::{parse_size, ImmutabilityArgs, InitEncryptionArgs, UsageError};
use crate::doc::print_ok;
use crate::keys;
use crate::output::bytes;

pub fn init(
    repo: &RepoLocation,
    keys_from: Option<&RepoLocation>,
    block_size: &str,
    compression: &str,
    encryption: &InitEncryptionArgs,
    immutability: &ImmutabilityArgs,
    json: bool,
) -> Result<i32> {
    let opts = init_options(block_size, compression, immutability)?;
    if let Some(path) = repo.local_path() {
        tessera_engine::Repository::check_init_target(path)?;
    }
    // A key file this init creates for the new repository's first slot is removed again if
    // the init then fails (the recovery key file likewise, below).
    let mut created_key_file = Unmade(
        match keys_from {
            None => keys::global().key_file.as_ref(),
            Some(_) => encryption.new_key_file.as_ref(),
        }
        .filter(|path| encryption.encryption != "none" && !path.exists())
        .cloned(),
    );
    let new_keys = if encryption.encryption == "none" {
        if keys_from.is_some() {
            return Err(UsageError(
                "--keys-from makes an encrypted repository; leave out --encryption none".into(),
            )
            .into());
        }
        None
    } else {
        if json && encryption.recovery_key_file.is_none() {
            return Err(UsageError(
                "with --json, give --recovery-key-file FILE: the recovery key is never printed in JSON".into(),
            )
            .into());
        }
        if let Some(path) = &encryption.recovery_key_file {
            if path.exists() {
                return Err(UsageError(format!(
                    "{} exists; the recovery key goes into a new file",
                    path.display()
                ))
                .into());
            }
        }
        let (secret, shared) = match keys_from {
            None => (keys::new_secret(keys::global(), &repo.to_string())?, None),
            Some(from) => keys::shared_keys_and_secret(from, encryption)?,
        };
        Some(NewKeys {
            secret,
            kdf: KdfParams {
                memory_kib: encryption.kdf_memory_mib * 1024,
                iterations: encryption.kdf_iterations,
                parallelism: 1,
            },
            shared,
        })
    };
    // The recovery key file is created (0600, create-only) before the repository, so a path
    // that cannot be written fails before anything exists; it is removed if init fails.
    let recovery_file = match (&new_keys, &encryption.recovery_key_file) {
        (Some(_), Some(path)) => Some((keys::create_private(path)?, path)),
        _ => None,
    };
    let (r, recovery) = match init_repository(repo, opts, new_keys.as_ref()) {
        Ok(created) => created,
        Err(e) => {
            if let Some((file, path)) = recovery_file {
                drop(file);
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    created_key_file.0 = None;
    let recovery = recovery.map(|key| recovery_text(&key));
    if let (Some(text), Some((file, path))) = (&recovery, recovery_file) {
        keys::fill_private(file, path, &format!("{}\n", text.as_str()))?;
    }
    if json {
        print_ok(&r);
        return Ok(0);
    }
    println!(
        "created repository {} (id {}, {} blocks, {}, encryption {})",
        r.repo,
        r.repository_id,
        bytes(u64::from(r.block_size)),
        r.compression,
        r.encryption
    );
    match (&recovery, &encryption.recovery_key_file) {
        (Some(_), Some(path)) => println!(
            "recovery key written to {} (0600): keep it apart from the repository; it opens the repository if the passphrase or key file is lost",
            path.display()
        ),
        (Some(text), None) => println!(
            "recovery key (shown once, stored nowhere; write it down and keep it apart from the repository):\n  {}",
            text.as_str()
        ),
        _ => println!("the repository is not encrypted: anyone who can read its files reads the backed-up disks"),
    }
    Ok(0)
}

/// A file to remove when dropped, unless taken out first (it was made for a repository
/// whose creation then failed).
struct Unmade(Option<std::path::PathBuf>);

impl Drop for Unmade {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The `--lock-mode` value (clap allows only the two).
pub fn parse_lock_mode(mode: &str) -> RetentionMode {
    if mode == "governance" {
        RetentionMode::Governance
    } else {
        RetentionMode::Compliance
    }
}

/// The new repository's parameters, checked.
fn init_options(
    block_size: &str,
    compression: &str,
    immutability: &ImmutabilityArgs,
) -> Result<InitOptions> {
    let opts = InitOptions {
        block_size: validate_block_size(parse_size(block_size)?)
            .map_err(|e| UsageError(e.to_string()))?,
        compression: Compression::parse(compression).map_err(|e| UsageError(e.to_string()))?,
        immutability: policy_of(immutability)?,
        ..InitOptions::default()
    };
    opts.validate()?;
    Ok(opts)
}

/// The policy `--immutable` and `--lock-mode` ask for, if any.
fn policy_of(args: &ImmutabilityArgs) -> Result<Option<Policy>> {
    let Some(period) = args.immutable.as_deref() else {
        return Ok(None);
    };
    Ok(Some(Policy::new(
        period.parse()?,
        parse_lock_mode(&args.lock_mode),
    )))
}
