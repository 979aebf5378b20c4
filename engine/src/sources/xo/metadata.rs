//! A backup's metadata file, `xo-vm-backups/<VM UUID>/<YYYYMMDD>T<HHmmss>Z.json`, as
//! `@xen-orchestra/backups` writes it (`IncrementalRemoteWriter.mjs`, version `2.0.0`).
//! Only the fields tessera uses are read; the rest is ignored.
//!
//! - `mode`: `delta` for incremental backups (the ones imported), `full` for XVA exports.
//! - `timestamp`: milliseconds since the Unix epoch.
//! - `jobId`, `scheduleId`: the XO job and schedule.
//! - `vm`: the VM record (`uuid`, `name_label`).
//! - `vbds`: VBD records by reference; a disk is one with `type` `Disk` (or no type), its
//!   `VDI` the reference of its VDI and `userdevice` its position (`"0"` = first disk).
//! - `vdis`: VDI records by reference: `uuid` (the snapshot VDI's, which is the VHD's unique
//!   id), `$snapshot_of$uuid` (the VM's VDI, which names the folder), `name_label`.
//! - `vhds`: for each VDI reference, the path of the backup's VHD relative to the VM's
//!   folder: `vdis/<job>/<VDI UUID>/<date>.vhd` or `….alias.vhd`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Largest metadata file read.
pub const MAX_METADATA: u64 = 16 << 20;

/// What tessera reads of a backup's metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupMetadata {
    /// `delta` or `full`.
    pub mode: String,
    /// Milliseconds since the epoch.
    pub timestamp: f64,
    /// The XO job.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The XO schedule.
    #[serde(default)]
    pub schedule_id: Option<String>,
    /// The VM.
    pub vm: VmRecord,
    /// VBDs by reference.
    #[serde(default)]
    pub vbds: BTreeMap<String, VbdRecord>,
    /// VDIs by reference.
    #[serde(default)]
    pub vdis: BTreeMap<String, VdiRecord>,
    /// VHD paths (relative to the VM's folder) by VDI reference.
    #[serde(default)]
    pub vhds: BTreeMap<String, String>,
}

/// The VM of a backup.
#[derive(Debug, Clone, Deserialize)]
pub struct VmRecord {
    /// Its UUID.
    pub uuid: String,
    /// Its name.
    #[serde(default)]
    pub name_label: String,
}

/// A VBD: how a VDI is attached to the VM.
#[derive(Debug, Clone, Deserialize)]
pub struct VbdRecord {
    /// The VDI's reference (a key of `vdis` and `vhds`).
    #[serde(rename = "VDI", default)]
    pub vdi: Option<String>,
    /// Its position: `"0"`, `"1"`, ….
    #[serde(default, deserialize_with = "text_or_number")]
    pub userdevice: Option<String>,
    /// `Disk` or `CD`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// A VDI of a backup.
#[derive(Debug, Clone, Deserialize)]
pub struct VdiRecord {
    /// The snapshot VDI's UUID (the VHD's unique id).
    #[serde(default)]
    pub uuid: Option<String>,
    /// The VM's VDI it is a snapshot of.
    #[serde(rename = "$snapshot_of$uuid", default)]
    pub snapshot_of: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name_label: Option<String>,
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(u64),
    }
    Ok(Option::<TextOrNumber>::deserialize(d)?.map(|v| match v {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    }))
}

/// One disk of a backup, ready to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDisk {
    /// The snapshot's disk name: `xvd` + a letter from the VBD's userdevice (`xvda` for 0).
    pub name: String,
    /// The VHD path as the metadata gives it (relative to the VM's folder).
    pub vhd: String,
    /// The VM's VDI (`$snapshot_of$uuid`).
    pub vdi: String,
    /// The snapshot VDI's UUID.
    pub snapshot_vdi: String,
}

impl BackupMetadata {
    /// Parses a metadata file's content.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not backup metadata JSON: {e}"))?;
        if !m.timestamp.is_finite() || m.timestamp < 0.0 || m.timestamp > 1.0e16 {
            return Err(format!("timestamp {} is not a time", m.timestamp));
        }
        Ok(m)
    }

    /// Milliseconds since the epoch.
    #[expect(
        clippy::cast_sign_loss,
        reason = "parse checked the timestamp is finite and in 0..=1e16"
    )]
    pub fn time_ms(&self) -> u64 {
        self.timestamp.max(0.0).round() as u64
    }

    /// The backup's disks (one per VBD of type Disk), in userdevice order; an error naming
    /// the first inconsistency (a VBD whose VDI has no VHD, two VBDs on one position, …).
    pub fn disks(&self) -> Result<Vec<BackupDisk>, String> {
        let mut out: Vec<(u64, BackupDisk)> = Vec::new();
        for (vbd_ref, vbd) in &self.vbds {
            if vbd.kind.as_deref().is_some_and(|k| k != "Disk") {
                continue;
            }
            let Some(vdi_ref) = vbd.vdi.as_deref() else {
                continue;
            };
            let position: u64 = vbd
                .userdevice
                .as_deref()
                .and_then(|u| u.parse().ok())
                .filter(|&u| u < 26)
                .ok_or_else(|| {
                    format!(
                        "VBD {vbd_ref}: userdevice {:?} is not 0 to 25",
                        vbd.userdevice
                    )
                })?;
            let vdi = self.vdis.get(vdi_ref).ok_or_else(|| {
                format!("VBD {vbd_ref} names VDI {vdi_ref}, which the backup does not list")
            })?;
            let vhd = self
                .vhds
                .get(vdi_ref)
                .ok_or_else(|| format!("VDI {vdi_ref} (VBD {vbd_ref}) has no VHD in the backup"))?;
            let name = format!("xvd{}", char::from(b'a' + position as u8));
            if out.iter().any(|(p, _)| *p == position) {
                return Err(format!("two VBDs use userdevice {position}"));
            }
            out.push((
                position,
                BackupDisk {
                    name,
                    vhd: vhd.clone(),
                    vdi: vdi.snapshot_of.clone().unwrap_or_default(),
                    snapshot_vdi: vdi.uuid.clone().unwrap_or_default(),
                },
            ));
        }
        if out.is_empty() {
            return Err("the backup lists no disk".into());
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }
}
