//! Xen Orchestra backup remotes, read for `tessera import xo` (SPEC §25). Everything here
//! reads only; nothing needs a repository.
//!
//! - `remote`: the remote's folder, with every path confined to it.
//! - `crypt`: encrypted remotes (`encryption.json`, `metadata.json`, per-file AEAD).
//! - `metadata`: a backup's `<date>.json`.
//! - `vhd_directory`: a VhdDirectory presented as a VHD file to the engine's VHD reader.
//! - `chain`: a backup's disk with its ancestors, found by the header's parent name.
//! - [`scan`]: what the remote holds: each VM's backups, and what is not imported and why.

pub mod chain;
pub mod crypt;
pub mod metadata;
pub mod remote;
pub mod vhd_directory;

use std::path::Path;

use self::crypt::{XoAlgorithm, XoCipher};
use self::metadata::{BackupMetadata, MAX_METADATA};
use self::remote::{EntryKind, RemotePath, XoRemote};
use crate::error::{Error, Result};

/// The folder of VM backups under a remote's root.
pub const BACKUP_DIR: &str = "xo-vm-backups";

/// A remote's metadata or layout is damaged or hostile: named by its path in the remote.
pub(crate) fn xo_error(path: &str, reason: String) -> Error {
    Error::BadImage {
        path: if path.is_empty() {
            "the remote's root".into()
        } else {
            path.into()
        },
        format: "Xen Orchestra remote",
        reason,
    }
}

/// `encryption.json`.
#[derive(serde::Deserialize)]
struct Desc {
    algorithm: String,
}

/// Opens the remote at `root`. An encrypted remote (its `encryption.json` names an
/// algorithm) needs `key`, which is checked by decrypting `metadata.json` before anything
/// else is read; a key given for a plain remote is a usage error.
pub fn open_remote(root: &Path, key: Option<&[u8]>) -> Result<XoRemote> {
    let plain = XoRemote::new(root, None)?;
    let desc = RemotePath::root().join("encryption.json", "encryption.json")?;
    let algorithm = if plain.kind(&desc)?.is_none() {
        None
    } else {
        {
            let bytes = plain.read(&desc, 64 << 10, "encryption.json")?;
            let d: Desc = serde_json::from_slice(&bytes).map_err(|e| {
                xo_error(
                    "encryption.json",
                    format!("is not {{\"algorithm\": …}} JSON: {e}"),
                )
            })?;
            XoAlgorithm::parse(&d.algorithm).map_err(|why| xo_error("encryption.json", why))?
        }
    };
    match (algorithm, key) {
        (None, None) => Ok(plain),
        (None, Some(_)) => Err(Error::Usage(format!(
            "{}: the remote is not encrypted (its encryption.json names no algorithm, or there is none); drop --encryption-key-file",
            root.display()
        ))),
        (Some(a), None) => Err(Error::Usage(format!(
            "{}: the remote is encrypted with {}; give its key with --encryption-key-file",
            root.display(),
            a.name()
        ))),
        (Some(a), Some(key)) => {
            let cipher = XoCipher::new(a, key).map_err(Error::Usage)?;
            let remote = XoRemote::new(root, Some(cipher))?;
            let check = RemotePath::root().join("metadata.json", "metadata.json")?;
            let wrong = |reason: String| Error::XoWrongKey { reason };
            let bytes = remote.read(&check, 64 << 10, "metadata.json").map_err(|e| match e {
                Error::BadImage { reason, .. } => wrong(reason),
                other => other,
            })?;
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|_| wrong("metadata.json decrypts to something that is not JSON".into()))?;
            Ok(remote)
        }
    }
}

/// One backup found in the remote.
#[derive(Debug, Clone)]
pub struct RemoteBackup {
    /// Its metadata file.
    pub file: RemotePath,
    /// `<VM UUID>/<file name>`: the id recorded in the snapshot's `xo.backup` tag.
    pub id: String,
    /// Its metadata.
    pub metadata: BackupMetadata,
}

/// Something the remote holds that is not imported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    /// Its path in the remote.
    pub path: String,
    /// Why.
    pub reason: String,
    /// Whether it is damaged or hostile (rather than skipped by design: full backups,
    /// caches, temporary files, merges in progress).
    pub damaged: bool,
}

/// One VM's folder.
#[derive(Debug, Clone)]
pub struct VmFolder {
    /// The VM's UUID (the folder's name).
    pub uuid: String,
    /// Its incremental backups, oldest first.
    pub backups: Vec<RemoteBackup>,
    /// VHD names in its VDI folders (files, folders, aliases, and `data/` entries).
    pub vhds: Vec<RemotePath>,
    /// VDI folders with a merge in progress (`.<name>.merge.json`).
    pub merging: Vec<RemotePath>,
    /// Whether XO held the VM's lock (`<VM UUID>.lock`) when the remote was scanned.
    pub locked: bool,
}

/// Whether XO holds the lock of the VM `uuid` (`xo-vm-backups/<uuid>.lock` exists).
pub fn locked(remote: &XoRemote, uuid: &str) -> Result<bool> {
    let lock = RemotePath::root()
        .join(BACKUP_DIR, "backup folder")?
        .join(&format!("{uuid}.lock"), "lock")?;
    Ok(remote.kind(&lock)?.is_some())
}

/// Whether the VDI folder `dir` holds a merge's state file (`.<name>.merge.json`).
pub fn merging(remote: &XoRemote, dir: &RemotePath) -> Result<bool> {
    Ok(remote
        .list(dir)?
        .iter()
        .any(|(n, _)| n.starts_with('.') && n.to_ascii_lowercase().ends_with(".merge.json")))
}

/// What a remote holds.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The VMs, by UUID.
    pub vms: Vec<VmFolder>,
    /// What is not imported, and why.
    pub skipped: Vec<Skipped>,
}

/// Lists the remote's VMs (only `only`, when not empty) and their backups.
pub fn scan(remote: &XoRemote, only: &[String]) -> Result<Scan> {
    let base = RemotePath::root().join(BACKUP_DIR, "backup folder")?;
    if remote.kind(&base)? != Some(EntryKind::Dir) {
        return Err(Error::Usage(format!(
            "{}: no {BACKUP_DIR}/ folder; give the remote's root (the folder holding {BACKUP_DIR}/)",
            remote.local(&RemotePath::root()).display()
        )));
    }
    let mut out = Scan::default();
    let entries = remote.list(&base)?;
    for (name, kind) in &entries {
        let (name, kind) = (name.as_str(), *kind);
        let path = base.join(name, "VM folder")?;
        if let Some(vm) = name.strip_suffix(".lock") {
            // XO's lock on a VM folder (`handler.lock`, proper-lockfile): a backup, merge or
            // cleanup of that VM is running; its import waits for a rerun.
            if !entries.iter().any(|(n, _)| n == vm) {
                out.skipped.push(skip(&path, "a lock", true));
            }
            continue;
        }
        if kind != EntryKind::Dir {
            if name != "index.json" {
                out.skipped
                    .push(skip(&path, "not a VM folder", name.starts_with('.')));
            }
            continue;
        }
        if !only.iter().any(|o| o == name) && !only.is_empty() {
            continue;
        }
        let mut vm = scan_vm(remote, &path, name, &mut out.skipped)?;
        vm.locked = locked(remote, name).unwrap_or(true);
        out.vms.push(vm);
    }
    for want in only {
        if !out.vms.iter().any(|v| &v.uuid == want) {
            return Err(Error::Usage(format!(
                "--vm {want}: the remote holds no backup of that VM"
            )));
        }
    }
    Ok(out)
}

fn skip(path: &RemotePath, reason: &str, benign: bool) -> Skipped {
    Skipped {
        path: path.to_string(),
        reason: reason.into(),
        damaged: !benign,
    }
}

#[expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "XO writes these names in lower case; anything else is not one of its files"
)]
fn scan_vm(
    remote: &XoRemote,
    dir: &RemotePath,
    uuid: &str,
    skipped: &mut Vec<Skipped>,
) -> Result<VmFolder> {
    let mut vm = VmFolder {
        uuid: uuid.into(),
        backups: Vec::new(),
        vhds: Vec::new(),
        merging: Vec::new(),
        locked: false,
    };
    for (name, kind) in remote.list(dir)? {
        let path = dir.join(&name, "entry")?;
        if name.starts_with('.') || name.ends_with(".lock") {
            skipped.push(skip(&path, "a lock or an unfinished upload", true));
        } else if name == "cache.json.gz" {
            skipped.push(skip(
                &path,
                "XO's cache of the metadata files (the .json files are read instead)",
                true,
            ));
        } else if name == "vdis" && kind == EntryKind::Dir {
            scan_vdis(remote, &path, &mut vm, skipped)?;
        } else if name.ends_with(".json") && kind == EntryKind::File {
            match read_backup(remote, &path, uuid) {
                Ok(b) if b.metadata.mode == "delta" => vm.backups.push(b),
                Ok(b) => skipped.push(skip(&path, &format!("a backup of mode {:?} (an XVA export); tessera imports incremental (delta) backups", b.metadata.mode), true)),
                Err(e) => skipped.push(skip(&path, &e.to_string(), false)),
            }
        } else if name.ends_with(".xva") || name.ends_with(".xva.checksum") {
            // Belongs to a full backup, reported with its .json.
        } else {
            skipped.push(skip(&path, "not part of an XO backup", false));
        }
    }
    vm.backups.sort_by(|a, b| {
        a.metadata
            .timestamp
            .total_cmp(&b.metadata.timestamp)
            .then(a.id.cmp(&b.id))
    });
    Ok(vm)
}

fn read_backup(remote: &XoRemote, path: &RemotePath, uuid: &str) -> Result<RemoteBackup> {
    let bytes = remote.read(path, MAX_METADATA, "backup metadata")?;
    let metadata = BackupMetadata::parse(&bytes).map_err(|why| xo_error(path.as_str(), why))?;
    if metadata.vm.uuid != uuid {
        return Err(xo_error(
            path.as_str(),
            format!(
                "names VM {} but lies in the folder of VM {uuid}",
                metadata.vm.uuid
            ),
        ));
    }
    Ok(RemoteBackup {
        id: format!("{uuid}/{}", path.file_name()),
        file: path.clone(),
        metadata,
    })
}

/// `vdis/<job>/<VDI>/`: VHD names, merge markers, temporary files.
#[expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "XO writes these names in lower case; anything else is not one of its files"
)]
fn scan_vdis(
    remote: &XoRemote,
    vdis: &RemotePath,
    vm: &mut VmFolder,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    for (job, kind) in remote.list(vdis)? {
        let job_dir = vdis.join(&job, "job folder")?;
        if kind != EntryKind::Dir {
            skipped.push(skip(&job_dir, "not a job folder", job.starts_with('.')));
            continue;
        }
        for (vdi, kind) in remote.list(&job_dir)? {
            let vdi_dir = job_dir.join(&vdi, "VDI folder")?;
            if kind != EntryKind::Dir {
                skipped.push(skip(&vdi_dir, "not a VDI folder", vdi.starts_with('.')));
                continue;
            }
            for (name, kind) in remote.list(&vdi_dir)? {
                let path = vdi_dir.join(&name, "entry")?;
                if name.starts_with('.') && name.ends_with(".merge.json") {
                    vm.merging.push(vdi_dir.clone());
                } else if name.starts_with('.') || name.ends_with(".lock") {
                    skipped.push(skip(&path, "a lock or an unfinished upload", true));
                } else if name == "data" && kind == EntryKind::Dir {
                    for (d, _) in remote.list(&path)? {
                        vm.vhds.push(path.join(&d, "data entry")?);
                    }
                } else if name.ends_with(".vhd") {
                    vm.vhds.push(path);
                } else {
                    skipped.push(skip(&path, "not a VHD", false));
                }
            }
        }
    }
    Ok(())
}
