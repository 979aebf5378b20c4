//! `tessera key list|add|remove|change-passphrase|export-recovery`.

use std::io::Write as _;

use anyhow::Result;
use tessera_engine::crypto::text::recovery_text;
use tessera_engine::crypto::SecretKey;
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::keys::{self, KeyReport};
use tessera_format::keyslot::KdfParams;

use crate::args::{KeyCommand, NewSecretArgs, UsageError};
use crate::doc::print_ok;
use crate::keys::{global, new_slot_secret, write_private};

fn kdf(new: &NewSecretArgs) -> KdfParams {
    KdfParams {
        memory_kib: new.kdf_memory_mib * 1024,
        iterations: new.kdf_iterations,
        parallelism: 1,
    }
}

pub fn run(
    cmd: &KeyCommand,
    at: &dyn Fn(&str) -> tessera_engine::Result<RepoLocation>,
    json: bool,
) -> Result<i32> {
    let report = match cmd {
        KeyCommand::List { repo } => keys::list(&at(repo)?)?,
        // The new secret is asked for (and a new key file created) only once the
        // repository is unlocked.
        KeyCommand::Add { repo, new } => {
            keys::add(&at(repo)?, global(), &mut || new_slot_secret(new), kdf(new))?
        }
        KeyCommand::Remove { repo, slot } => keys::remove(&at(repo)?, global(), slot)?,
        KeyCommand::ChangePassphrase { repo, new } => {
            keys::change_passphrase(&at(repo)?, global(), &mut || new_slot_secret(new), kdf(new))?
        }
        KeyCommand::ExportRecovery {
            repo,
            recovery_key_file,
        } => {
            if json && recovery_key_file.is_none() {
                return Err(UsageError(
                    "with --json, give --recovery-key-file FILE: the recovery key is never printed in JSON".into(),
                )
                .into());
            }
            if let Some(path) = recovery_key_file {
                if path.exists() {
                    return Err(UsageError(format!(
                        "{} exists; the recovery key goes into a new file",
                        path.display()
                    ))
                    .into());
                }
            }
            // Delivered before the old recovery slots go (and the new slot removed if
            // delivery fails): the file is created 0600 and synced, or the key printed
            // and flushed.
            let mut deliver = |key: &SecretKey| -> tessera_engine::Result<()> {
                let text = recovery_text(key);
                if let Some(path) = recovery_key_file {
                    return write_private(path, &format!("{}\n", text.as_str()));
                }
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "new recovery key (shown once, stored nowhere; the old one no longer opens the repository):\n  {}",
                    text.as_str()
                )
                .and_then(|()| out.flush())
                .map_err(|e| tessera_engine::Error::io("printing the recovery key", e))
            };
            let report = keys::new_recovery(&at(repo)?, global(), &mut deliver)?;
            if let (Some(path), false) = (recovery_key_file, json) {
                println!("new recovery key written to {} (0600)", path.display());
            }
            report
        }
    };
    if json {
        print_ok(&report);
    } else {
        print_report(&report);
    }
    Ok(0)
}

fn print_report(r: &KeyReport) {
    for s in &r.added {
        println!("added {} slot {}", s.kind, s.id);
    }
    for s in &r.removed {
        println!("removed {} slot {}", s.kind, s.id);
    }
    for d in &r.removed_damaged {
        println!("removed damaged slot {}", d.id);
    }
    println!("{:<34} {:<11} {:>14}  created", "slot", "kind", "argon2id");
    for s in &r.slots {
        let cost = if s.kdf_memory_kib > 0 {
            format!("{} MiB x{}", s.kdf_memory_kib / 1024, s.kdf_iterations)
        } else {
            "-".into()
        };
        println!("{:<34} {:<11} {:>14}  {}", s.id, s.kind, cost, s.created);
    }
    for d in &r.damaged {
        println!("{:<34} {:<11} {:>14}  ({})", d.id, "damaged", "-", d.reason);
    }
}
