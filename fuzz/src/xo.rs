//! The `xo` target's checks (see `fuzz_targets/xo.rs`): a Xen Orchestra backup's metadata
//! JSON, and a VhdDirectory folder (SPEC §25) opened through `VhdDirectoryFile` and the
//! engine's VHD reader.
//!
//! Input: byte 0 picks the mode. Even: the rest is a metadata file. Odd: a VhdDirectory
//! whose chunk filter is `(byte 0 >> 1) % 3` (none, gzip, brotli); then `header`, `footer`
//! and `bat` chunks, each a big-endian u16 length and its bytes, and the rest is block 0.
//! With no filter, a 1024-byte header and a 512-byte footer get their checksums
//! recomputed, so mutations reach the fields behind them. The files are written to a
//! scratch folder of this process and opened as a remote.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_engine::formats::vhd::{checksum_without_field, dynamic, footer};
use tessera_engine::sources::vhd::{Layer, VhdSource};
use tessera_engine::sources::xo::metadata::BackupMetadata;
use tessera_engine::sources::xo::remote::{RemotePath, XoRemote};
use tessera_engine::sources::xo::vhd_directory::VhdDirectoryFile;
use tessera_engine::sources::BlockSource;

use crate::checks::assert_input_error;

/// Runs the checks on `data`.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        metadata(rest);
    } else {
        directory((mode >> 1) % 3, rest);
    }
}

/// A metadata file parses or not; what parses lists its disks or says why not.
fn metadata(bytes: &[u8]) {
    if let Ok(m) = BackupMetadata::parse(bytes) {
        let _ = m.time_ms();
        if let Ok(disks) = m.disks() {
            assert!(!disks.is_empty());
            for d in disks {
                assert!(d.name.starts_with("xvd") && d.name.len() == 4, "{}", d.name);
            }
        }
    }
}

fn take_chunk(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let (len, tail) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
    let (chunk, tail) = tail.split_at(len);
    *rest = tail;
    Some(chunk.to_vec())
}

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("tessera-fuzz-xo-{}", std::process::id()))
}

/// A VhdDirectory opens or is refused as damaged input; one that opens reads its first
/// and last 4 MiB without panicking, and a read that fails is damaged input too.
fn directory(filter: u8, mut rest: &[u8]) {
    let (Some(mut header), Some(mut foot), Some(bat)) = (
        take_chunk(&mut rest),
        take_chunk(&mut rest),
        take_chunk(&mut rest),
    ) else {
        return;
    };
    if filter == 0 {
        if header.len() == 1024 {
            seal(&mut header, dynamic::CHECKSUM);
        }
        if foot.len() == 512 {
            seal(&mut foot, footer::CHECKSUM);
        }
    }
    let root = scratch();
    let dir = root.join("d");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(dir.join("blocks/0")).expect("scratch folder");
    let filters = ["[]", "[\"gzip\"]", "[\"brotli\"]"][usize::from(filter)];
    std::fs::write(dir.join("chunk-filters.json"), filters).expect("write");
    std::fs::write(dir.join("header"), &header).expect("write");
    std::fs::write(dir.join("footer"), &foot).expect("write");
    std::fs::write(dir.join("bat"), &bat).expect("write");
    std::fs::write(dir.join("blocks/0/0"), rest).expect("write");
    let remote = Arc::new(XoRemote::new(&root, None).expect("scratch remote"));
    let path = RemotePath::root().join("d", "folder").expect("path");
    let file = match VhdDirectoryFile::open(remote, &path) {
        Ok(f) => f,
        Err(e) => return assert_input_error(&e),
    };
    let len = file.len();
    let layer = match Layer::decode(&dir, Box::new(file), len) {
        Ok(l) => l,
        Err(e) => return assert_input_error(&e),
    };
    let source = match VhdSource::from_layers(&dir, vec![Arc::new(layer)]) {
        Ok(s) => s,
        Err(e) => return assert_input_error(&e),
    };
    let size = source.size();
    let window = 4u64 << 20;
    for at in [0, size.saturating_sub(window)] {
        let n = window.min(size - at) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = source.read_at(at, &mut buf) {
            assert_input_error(&e);
        }
    }
}

fn seal(structure: &mut [u8], field: usize) {
    let sum = checksum_without_field(structure, field);
    structure[field..field + 4].copy_from_slice(&sum.to_be_bytes());
}
