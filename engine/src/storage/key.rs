//! Object keys: the names a repository gives its durable objects, built and parsed only
//! here (SPEC §2). Keys are `/`-separated like object-store keys; the local backend maps
//! them to paths under the repository directory one to one, so the on-disk layout is the
//! key layout.
//!
//! | key | object |
//! |---|---|
//! | `config` | the repository config (§3) |
//! | `immutability` | the immutability policy (§28) |
//! | `packs/XY/<pack id>.pack` | a sealed pack (§4); `XY` = first two hex digits |
//! | `snapshots/<snapshot id>.snap` | a snapshot file (§6) |
//! | `snapshots/<snapshot id>.protected` | protection marker (§12) |
//! | `damage/<snapshot id>` | damage mark of one snapshot (§11a) |
//! | `damaged` | damage marks of older versions, all in one object (read, then migrated) |
//! | `quarantine/<pack id>.pack` | a pack moved aside by repair (§11b) |
//! | `quarantine/<pack id>.intent` | repair's intent to quarantine a pack (§11b) |
//! | `quarantine/<snapshot id>.snap` | a snapshot file recovery could not catalogue (§9) |
//! | `bundle.json` | a seed bundle's manifest (§22.2; flat layout only) |
//! | `doomed/<pack id>` | doom record of a pack a compaction emptied, in a shared store (§13) |
//! | `locks/series-<hash>/<generation>` | a series lease generation, in a shared store (§8; built in `series_lease.rs`) |
//! | `keys/<slot id>.key` | a key slot of an encrypted repository (§23.4) |
//! | `verified/<time µs, 16 digits>-<8 hex>` | the record of one verification run (§11a) |

use std::fmt;

use tessera_format::{PackId, SnapshotId};

/// Prefix of pack keys.
pub const PACKS: &str = "packs/";
/// Prefix of snapshot files and protection markers.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of quarantined packs and quarantine intents.
pub const QUARANTINE: &str = "quarantine/";
/// Prefix of doom records.
pub const DOOMED: &str = "doomed/";
/// Prefix of damage marks.
pub const DAMAGE: &str = "damage/";

/// Prefix of key slots.
pub const KEYS: &str = "keys/";
/// Prefix of verification records.
pub const VERIFIED: &str = "verified/";

const PACK_EXT: &str = ".pack";
const KEY_EXT: &str = ".key";
const SNAP_EXT: &str = ".snap";
const PROTECTED_EXT: &str = ".protected";
const INTENT_EXT: &str = ".intent";

/// The name of a durable object (see the module table).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

/// What a key names, for keys found by listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A sealed pack.
    Pack(PackId),
    /// A snapshot file.
    Snapshot(SnapshotId),
    /// A protection marker.
    Protection(SnapshotId),
    /// A quarantined pack.
    Quarantined(PackId),
    /// A quarantine intent.
    QuarantineIntent(PackId),
    /// A quarantined snapshot file.
    QuarantinedSnapshot(SnapshotId),
    /// A doom record.
    DoomRecord(PackId),
    /// The damage mark of a snapshot.
    DamageMark(SnapshotId),
}

impl ObjectKey {
    /// The repository config.
    pub fn config() -> Self {
        Self("config".into())
    }

    /// The immutability policy (SPEC §28).
    pub fn immutability() -> Self {
        Self("immutability".into())
    }

    /// The damage marks as older versions kept them, all in one object.
    pub fn legacy_damage_marks() -> Self {
        Self("damaged".into())
    }

    /// The damage mark of a snapshot.
    pub fn damage_mark(id: SnapshotId) -> Self {
        Self(format!("{DAMAGE}{}", id.to_hex()))
    }

    /// A seed bundle's manifest.
    pub fn bundle_manifest() -> Self {
        Self("bundle.json".into())
    }

    /// A sealed pack.
    pub fn pack(id: PackId) -> Self {
        let hex = id.to_hex();
        Self(format!("{PACKS}{}/{hex}{PACK_EXT}", &hex[..2]))
    }

    /// A snapshot file.
    pub fn snapshot(id: SnapshotId) -> Self {
        Self(format!("{SNAPSHOTS}{}{SNAP_EXT}", id.to_hex()))
    }

    /// A protection marker.
    pub fn protection(id: SnapshotId) -> Self {
        Self(format!("{SNAPSHOTS}{}{PROTECTED_EXT}", id.to_hex()))
    }

    /// A quarantined pack.
    pub fn quarantined(id: PackId) -> Self {
        Self(format!("{QUARANTINE}{}{PACK_EXT}", id.to_hex()))
    }

    /// A snapshot file recovery could not catalogue, kept aside.
    pub fn quarantined_snapshot(id: SnapshotId) -> Self {
        Self(format!("{QUARANTINE}{}{SNAP_EXT}", id.to_hex()))
    }

    /// Repair's intent to quarantine a pack.
    pub fn quarantine_intent(id: PackId) -> Self {
        Self(format!("{QUARANTINE}{}{INTENT_EXT}", id.to_hex()))
    }

    /// The doom record of a pack (see [`crate::doomed`]).
    pub fn doom_record(id: PackId) -> Self {
        Self(format!("{DOOMED}{}", id.to_hex()))
    }

    /// The record of a verification run that ended at `time_us` (its 16 digits sort the
    /// records by time), told apart from a run ending in the same microsecond by `tag`.
    pub fn verify_record(time_us: i64, tag: u32) -> Self {
        Self(format!("{VERIFIED}{:016}-{tag:08x}", time_us.max(0)))
    }

    /// A key slot (SPEC §23.4), named by its 16-byte slot id.
    pub fn key_slot(id: &[u8; 16]) -> Self {
        Self(format!("{KEYS}{}{KEY_EXT}", hex::encode(id)))
    }

    /// The slot id, if this key names a key slot.
    pub fn as_key_slot(&self) -> Option<[u8; 16]> {
        let hex = self.0.strip_prefix(KEYS)?.strip_suffix(KEY_EXT)?;
        let mut id = [0u8; 16];
        hex::decode_to_slice(hex, &mut id).ok()?;
        Some(id)
    }

    /// A key as found by listing a backend. Only the backend builds keys this way; the
    /// engine uses the typed constructors.
    pub fn from_listed(key: String) -> Self {
        Self(key)
    }

    /// The key as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the key names, if it is one of the listable kinds with a well-formed id.
    pub fn kind(&self) -> Option<KeyKind> {
        let name = |prefix: &str, ext: &str| {
            self.0
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(ext))
        };
        if let Some(rest) = name(PACKS, PACK_EXT) {
            let (shard, hex) = rest.split_once('/')?;
            let id: PackId = hex.parse().ok()?;
            return (hex.get(..2) == Some(shard)).then_some(KeyKind::Pack(id));
        }
        if let Some(hex) = name(SNAPSHOTS, SNAP_EXT) {
            return hex.parse().ok().map(KeyKind::Snapshot);
        }
        if let Some(hex) = name(SNAPSHOTS, PROTECTED_EXT) {
            return hex.parse().ok().map(KeyKind::Protection);
        }
        if let Some(hex) = name(QUARANTINE, PACK_EXT) {
            return hex.parse().ok().map(KeyKind::Quarantined);
        }
        if let Some(hex) = name(QUARANTINE, INTENT_EXT) {
            return hex.parse().ok().map(KeyKind::QuarantineIntent);
        }
        if let Some(hex) = name(QUARANTINE, SNAP_EXT) {
            return hex.parse().ok().map(KeyKind::QuarantinedSnapshot);
        }
        if let Some(hex) = name(DOOMED, "") {
            return hex.parse().ok().map(KeyKind::DoomRecord);
        }
        if let Some(hex) = name(DAMAGE, "") {
            return hex.parse().ok().map(KeyKind::DamageMark);
        }
        None
    }

    /// The pack id, if this key names a sealed pack.
    pub fn as_pack(&self) -> Option<PackId> {
        match self.kind()? {
            KeyKind::Pack(id) => Some(id),
            _ => None,
        }
    }

    /// The snapshot id, if this key names a snapshot file.
    pub fn as_snapshot(&self) -> Option<SnapshotId> {
        match self.kind()? {
            KeyKind::Snapshot(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyKind, ObjectKey};
    use tessera_format::{PackId, SnapshotId};

    #[test]
    fn every_typed_key_parses_back_to_what_built_it() {
        let pack = PackId([0xab; 16]);
        let snap = SnapshotId([7; 32]);
        assert_eq!(ObjectKey::pack(pack).kind(), Some(KeyKind::Pack(pack)));
        assert!(ObjectKey::pack(pack).as_str().starts_with("packs/ab/abab"));
        assert_eq!(
            ObjectKey::snapshot(snap).kind(),
            Some(KeyKind::Snapshot(snap))
        );
        assert_eq!(
            ObjectKey::protection(snap).kind(),
            Some(KeyKind::Protection(snap))
        );
        assert_eq!(
            ObjectKey::quarantined(pack).kind(),
            Some(KeyKind::Quarantined(pack))
        );
        assert_eq!(
            ObjectKey::quarantine_intent(pack).kind(),
            Some(KeyKind::QuarantineIntent(pack))
        );
        assert_eq!(
            ObjectKey::quarantined_snapshot(snap).kind(),
            Some(KeyKind::QuarantinedSnapshot(snap))
        );
        assert_eq!(
            ObjectKey::doom_record(pack).kind(),
            Some(KeyKind::DoomRecord(pack))
        );
    }

    #[test]
    fn malformed_listed_keys_name_nothing() {
        for bad in [
            "packs/zz/abababababababababababababababab.pack",
            "packs/ab/abab.pack",
            "packs/abababababababababababababababab.pack",
            "snapshots/xyz.snap",
            "snapshots/0707.protected",
            "config",
            "tmp/foo",
        ] {
            assert_eq!(ObjectKey::from_listed(bad.into()).kind(), None, "{bad}");
        }
    }
}
