//! Which series a VM's backups go into.
//!
//! The VM's name label (from its newest backup), with every character a series name cannot
//! hold (anything but `A-Z a-z 0-9 . _ -`) replaced by `-`, leading `.` and `-` dropped,
//! at most 100 characters. When that series already holds snapshots and none of them
//! carries this VM's `xo.vm` tag (another VM of the same name, or the operator's own
//! series), the series is `<name>-<first 8 characters of the UUID>` instead. An empty name
//! gives `vm-<UUID>`. So one VM's points always land in one series, reruns find it again,
//! and `tessera backup --series NAME` after the import continues it. A VM already imported
//! keeps the series it went into, whatever its label has become.

use tessera_format::{SnapshotHeader, SnapshotId};

use super::VM_TAG;

/// Longest name kept from a label (room for the `-<uuid8>` suffix within 128).
const MAX_LABEL: usize = 100;

/// The series for the VM `uuid` named `label`, given the repository's catalog: the series
/// of the newest snapshot already imported from this VM, if any (a VM renamed in XO stays
/// in its series), else one named after the label.
pub fn series_for(label: &str, uuid: &str, catalog: &[(SnapshotId, SnapshotHeader)]) -> String {
    if let Some((_, h)) = catalog
        .iter()
        .filter(|(_, h)| h.tags.iter().any(|(k, v)| k == VM_TAG && v == uuid))
        .max_by_key(|(_, h)| h.time_us)
    {
        return h.series.clone();
    }
    let cleaned: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']);
    let cleaned: String = cleaned.chars().take(MAX_LABEL).collect();
    let uuid_part: String = uuid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(36)
        .collect();
    if cleaned.is_empty() {
        return format!("vm-{uuid_part}");
    }
    let ours = |series: &str| {
        let mut any = false;
        for (_, h) in catalog.iter().filter(|(_, h)| h.series == series) {
            if h.tags.iter().any(|(k, v)| k == VM_TAG && v == uuid) {
                return true;
            }
            any = true;
        }
        !any
    };
    if ours(&cleaned) {
        cleaned
    } else {
        format!(
            "{cleaned}-{}",
            uuid_part.chars().take(8).collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::series_for;

    #[test]
    fn labels_become_valid_series_names() {
        assert_eq!(
            series_for("web server (prod)", "ab-cd", &[]),
            "web-server--prod-"
        );
        assert_eq!(series_for("..x", "u", &[]), "x");
        assert_eq!(series_for("", "1234-5678", &[]), "vm-12345678");
        assert_eq!(series_for("é", "u1", &[]), "vm-u1");
        tessera_format::snapshot::validate_name("series", &series_for(&"x".repeat(300), "u", &[]))
            .unwrap();
    }
}
