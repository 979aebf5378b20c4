//! Compaction leaves young packs alone (SPEC §13): objects uploaded by a push (or sealed by
//! an interrupted backup) are unreferenced until their snapshot is published, and must not be
//! reclaimed under the writer that is about to reference them.

use tessera_engine::ops::compact::{
    apply_compact, plan_compact, plan_compact_with_grace, DEFAULT_GRACE_US,
};
use tessera_engine::store::encode::encode_object;
use tessera_engine::store::session::WriteSession;
use tessera_engine::{InitOptions, NoProgress, Repository};
use tessera_format::{ChunkDigest, ObjectKind};

#[test]
fn unpublished_uploads_survive_compaction_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    Repository::init(&root, InitOptions::default()).unwrap();
    let repo = Repository::open_writer(&root).unwrap();
    // What a push does before it publishes: objects sealed and indexed at count 0.
    let mut session = WriteSession::new(repo.index(), repo.backend(), repo.pack_target());
    let mut digests = Vec::new();
    for i in 0..20u8 {
        let raw = vec![i; 65536];
        let digest = ChunkDigest::of(&raw);
        let (info, stored) = encode_object(
            repo.crypto(),
            ObjectKind::Chunk,
            digest,
            &raw,
            repo.config().compression,
        )
        .unwrap();
        session.add(&info, &stored).unwrap();
        digests.push(digest);
    }
    session.finish().unwrap();

    let graced = plan_compact_with_grace(&repo, 0.0, DEFAULT_GRACE_US).unwrap();
    assert!(graced.packs.is_empty(), "a young pack was selected");
    assert_eq!(graced.packs_in_grace, 1);
    apply_compact(&repo, &graced, &NoProgress).unwrap();
    for d in &digests {
        assert!(
            repo.index()
                .get_object(ObjectKind::Chunk, &d.0)
                .unwrap()
                .is_some(),
            "an unpublished upload was reclaimed within the grace period"
        );
    }

    // Without a grace period the same objects are dead weight and go.
    let eager = plan_compact(&repo, 0.0).unwrap();
    assert_eq!(eager.packs.len(), 1);
    apply_compact(&repo, &eager, &NoProgress).unwrap();
    assert!(digests.iter().all(|d| repo
        .index()
        .get_object(ObjectKind::Chunk, &d.0)
        .unwrap()
        .is_none()));
}
