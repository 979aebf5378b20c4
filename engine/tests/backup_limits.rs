//! Backups that the snapshot format could not hold are refused before anything is read or
//! written: more than 1024 disks, or a tag value longer than a format string. (The format
//! crate's encoders refuse them too, but only after every pack had been written.)

use std::path::Path;

use tessera_engine::ops::backup::{backup, BackupRequest, DiskSpec};
use tessera_engine::{Error, InitOptions, NoProgress, Repository};
use tessera_format::codec::MAX_STRING_LEN;
use tessera_format::snapshot::MAX_DISKS;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn refused(req: &BackupRequest, repo: &Path) -> String {
    let writer = Repository::open_writer(repo).unwrap();
    let err = backup(&writer, req, &NoProgress).unwrap_err();
    drop(writer);
    assert!(files_under(&repo.join("packs")).is_empty(), "packs written");
    assert!(
        files_under(&repo.join("snapshots")).is_empty(),
        "snapshot written"
    );
    match err {
        Error::Usage(message) => message,
        other => panic!("expected a usage error, got {other}"),
    }
}

#[test]
fn a_backup_of_more_than_1024_disks_is_refused_up_front() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    Repository::init(&repo, InitOptions::default()).unwrap();
    // Real, non-zero images: without the up-front check each would be read and stored.
    let disks: Vec<DiskSpec> = (0..=MAX_DISKS)
        .map(|i| {
            let path = work.path().join(format!("img{i}"));
            std::fs::write(&path, (i as u32).to_le_bytes()).unwrap();
            DiskSpec::new(&format!("d{i}"), &path)
        })
        .collect();
    let mut req = BackupRequest::one_disk("vm", "d0", &disks[0].path);
    req.disks = disks;
    let message = refused(&req, &repo);
    assert!(
        message.contains("1025 disks") && message.contains("at most 1024"),
        "{message}"
    );
}

#[test]
fn a_tag_value_longer_than_a_format_string_is_refused_up_front() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    Repository::init(&repo, InitOptions::default()).unwrap();
    let image = work.path().join("img");
    std::fs::write(&image, [1u8; 4096]).unwrap();
    let mut req = BackupRequest::one_disk("vm", "d0", &image);
    req.tags = vec![("note".into(), "x".repeat(MAX_STRING_LEN + 1))];
    let message = refused(&req, &repo);
    assert!(message.contains("tag \"note\""), "{message}");
}
