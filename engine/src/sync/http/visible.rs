//! Which manifest pages a series-scoped token may fetch, kept between requests.
//!
//! A token limited to some series may `get` only the pages that snapshots of those series
//! name (SPEC.md §22.3). Working that out means reading the snapshot files; doing it on
//! every request would let one client make the single serving thread re-read every
//! snapshot file of its series per request. So the serving thread keeps, per series
//! pattern, the snapshots it has read and the pages they name: each request only lists the
//! catalog (an index scan) and reads the snapshot files it has not seen yet, so each file
//! is read once per server process. When a snapshot the set was built from is gone
//! (forgotten), the set is rebuilt, so pages only a forgotten snapshot named stop being
//! visible.
//!
//! Memory: one entry per distinct page of the covered series (unchanged pages are shared
//! between snapshots), per distinct pattern among the tokens file's tokens.

use std::collections::{HashMap, HashSet};

use tessera_format::SnapshotId;

use crate::error::Result;
use crate::repo::Repository;

use super::tokens::TokenEntry;

/// The pages visible to each series pattern, as of the snapshots each set was built from.
#[derive(Debug, Default)]
pub struct VisiblePages {
    by_pattern: HashMap<String, PatternPages>,
    files_read: u64,
}

#[derive(Debug, Default)]
struct PatternPages {
    snapshots: HashSet<SnapshotId>,
    pages: HashSet<[u8; 32]>,
}

impl VisiblePages {
    /// The first of `digests` that no snapshot of a series `token` covers names, if any.
    pub fn first_hidden(
        &mut self,
        repo: &Repository,
        token: &TokenEntry,
        digests: &[[u8; 32]],
    ) -> Result<Option<[u8; 32]>> {
        let covered: HashSet<SnapshotId> = repo
            .index()
            .snapshots()?
            .into_iter()
            .filter(|(_, header)| token.covers(&header.series))
            .map(|(id, _)| id)
            .collect();
        let set = self.by_pattern.entry(token.series.clone()).or_default();
        if !set.snapshots.is_subset(&covered) {
            *set = PatternPages::default();
        }
        let unseen: Vec<SnapshotId> = covered.difference(&set.snapshots).copied().collect();
        for id in unseen {
            let snapshot = repo.load_snapshot(id)?;
            self.files_read += 1;
            set.pages
                .extend(snapshot.roots.iter().flatten().map(|p| p.0));
            set.snapshots.insert(id);
        }
        Ok(digests.iter().find(|d| !set.pages.contains(*d)).copied())
    }

    /// How many snapshot files have been read since this server started (the bound's
    /// witness in tests).
    pub fn files_read(&self) -> u64 {
        self.files_read
    }
}

#[cfg(test)]
mod tests {
    use super::VisiblePages;
    use crate::ops::backup::{backup, BackupRequest};
    use crate::ops::forget::forget;
    use crate::repo::{InitOptions, Repository};
    use crate::snapshot_ref::SnapshotRef;
    use crate::sync::http::tokens::{Role, TokenEntry};
    use crate::NoProgress;

    fn token(series: &str) -> TokenEntry {
        TokenEntry {
            name: "t".into(),
            role: Role::Read,
            series: series.into(),
            quota: None,
            hash: [0; 32],
        }
    }

    #[test]
    fn each_snapshot_file_is_read_once_and_a_forgotten_one_stops_counting() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        Repository::init(&root, InitOptions::default()).unwrap();
        let image = dir.path().join("image");
        let mut ids = Vec::new();
        for fill in [1u8, 2] {
            std::fs::write(&image, vec![fill; 300_000]).unwrap();
            let repo = Repository::open_writer(&root).unwrap();
            let report = backup(
                &repo,
                &BackupRequest::one_disk("vm-a", "d0", &image),
                &NoProgress,
            )
            .unwrap();
            ids.push(report.id);
        }
        let repo = Repository::open(&root).unwrap();
        let pages_of = |i: usize| -> Vec<[u8; 32]> {
            let s = repo.load_snapshot(ids[i]).unwrap();
            s.roots.iter().flatten().map(|p| p.0).collect()
        };
        let (first, second) = (pages_of(0), pages_of(1));
        assert!(!first.is_empty() && first != second);
        let mut visible = VisiblePages::default();
        let t = token("vm-*");
        for _ in 0..50 {
            assert_eq!(visible.first_hidden(&repo, &t, &first).unwrap(), None);
        }
        assert_eq!(
            visible.files_read(),
            2,
            "each snapshot file is read once, not per request"
        );
        assert_eq!(
            visible
                .first_hidden(&repo, &token("other"), &first)
                .unwrap(),
            Some(first[0]),
            "a token for another series sees none of them"
        );
        drop(repo);
        {
            let writer = Repository::open_writer(&root).unwrap();
            let id = SnapshotRef::Prefix(ids[0].to_hex());
            forget(&writer, &[id], false).unwrap();
        }
        let repo = Repository::open(&root).unwrap();
        let only_first: Vec<_> = first
            .iter()
            .filter(|d| !second.contains(d))
            .copied()
            .collect();
        assert!(!only_first.is_empty());
        assert_eq!(
            visible.first_hidden(&repo, &t, &only_first).unwrap(),
            Some(only_first[0]),
            "a page only a forgotten snapshot named is no longer visible"
        );
        assert_eq!(visible.first_hidden(&repo, &t, &second).unwrap(), None);
    }
}
