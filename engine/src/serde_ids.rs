//! How typed ids and object kinds appear in reports: ids as lower-case hex strings (as in
//! file names and messages), object kinds as `chunk` / `page`. Report types keep the typed
//! values ([`SnapshotId`](tessera_format::SnapshotId), [`PackId`](tessera_format::PackId),
//! digests, [`ObjectKind`]) and name these functions in `#[serde(serialize_with = "…")]`, so
//! nothing is formatted as a string only to be parsed back.

use std::fmt::Display;

use serde::ser::{SerializeSeq, Serializer};
use tessera_format::ObjectKind;

/// `chunk` / `page`.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Chunk => "chunk",
        ObjectKind::Page => "page",
    }
}

/// The kind named `chunk` or `page`.
pub fn parse_kind(name: &str) -> Option<ObjectKind> {
    match name {
        "chunk" => Some(ObjectKind::Chunk),
        "page" => Some(ObjectKind::Page),
        _ => None,
    }
}

/// An object kind by name.
pub fn kind<S: Serializer>(kind: &ObjectKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind_name(*kind))
}

/// An id (anything whose `Display` is its hex form: the `tessera_format` id types).
pub fn hex<T: Display, S: Serializer>(id: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// A raw 32-byte digest.
pub fn hex_digest<S: Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(digest))
}

/// An optional id: hex, or `null`.
pub fn hex_opt<T: Display, S: Serializer>(id: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

/// A list of ids, each as hex.
pub fn hex_list<T: Display, S: Serializer>(ids: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(ids.len()))?;
    for id in ids {
        seq.serialize_element(&id.to_string())?;
    }
    seq.end()
}

/// An optional list of ids: a list of hex strings, or `null`.
pub fn hex_list_opt<T: Display, S: Serializer>(
    ids: &Option<Vec<T>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match ids {
        Some(ids) => hex_list(ids, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use tessera_format::{PackId, SnapshotId};

    use super::*;

    #[derive(Serialize)]
    struct Sample {
        #[serde(serialize_with = "kind")]
        kind: ObjectKind,
        #[serde(serialize_with = "hex_digest")]
        digest: [u8; 32],
        #[serde(serialize_with = "hex")]
        snapshot: SnapshotId,
        #[serde(serialize_with = "hex_opt")]
        pack: Option<PackId>,
        #[serde(serialize_with = "hex_opt")]
        none: Option<PackId>,
        #[serde(serialize_with = "hex_list")]
        packs: Vec<PackId>,
        #[serde(serialize_with = "hex_list_opt")]
        scope: Option<Vec<SnapshotId>>,
    }

    #[test]
    fn ids_serialize_as_the_hex_of_their_file_names() {
        let v = serde_json::to_value(Sample {
            kind: ObjectKind::Page,
            digest: [0xab; 32],
            snapshot: SnapshotId([1; 32]),
            pack: Some(PackId([0xc0; 16])),
            none: None,
            packs: vec![PackId([2; 16]), PackId([3; 16])],
            scope: Some(vec![SnapshotId([4; 32])]),
        })
        .unwrap();
        assert_eq!(v["kind"], "page");
        assert_eq!(v["digest"], "ab".repeat(32));
        assert_eq!(v["snapshot"], "01".repeat(32));
        assert_eq!(v["pack"], "c0".repeat(16));
        assert!(v["none"].is_null());
        assert_eq!(
            v["packs"],
            serde_json::json!(["02".repeat(16), "03".repeat(16)])
        );
        assert_eq!(v["scope"], serde_json::json!(["04".repeat(32)]));
        assert_eq!(
            parse_kind(kind_name(ObjectKind::Chunk)),
            Some(ObjectKind::Chunk)
        );
    }
}
