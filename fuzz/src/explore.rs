//! Disk images as `tessera files` reads them (`explore`: MBR/GPT tables, LVM2 logical
//! volumes, ext2/3/4, FAT and NTFS): the partition table, then every volume's (and every linear
//! LV's) filesystem, walked whole with every file's
//! extents, symlink and content read. Never panics, never allocates without bound; what
//! opens must be self-consistent: a walk never visits a directory twice, extents cover each
//! file's size exactly in order, and inline data is as long as its extent says.

use std::sync::Arc;

use tessera_engine::explore::content::{stream, Piece};
use tessera_engine::explore::detect::{detect, open, VolumeKind};
use tessera_engine::explore::lvm::read_volume_group;
use tessera_engine::explore::partition::read_table;
use tessera_engine::explore::path::resolve;
use tessera_engine::explore::walk::walk;
use tessera_engine::explore::{ExtentData, FileKind, Image, Slice};

/// Content read from one input at most: a crafted file may claim terabytes of extents.
const MAX_CONTENT: u64 = 64 << 20;

/// Opens `data` as a disk and reads everything in it.
pub fn check(data: &[u8]) {
    let disk: Arc<dyn Image> = Arc::new(data.to_vec());
    let volumes: Vec<Arc<dyn Image>> = match read_table(disk.as_ref()) {
        Ok(Some(table)) => table
            .partitions
            .iter()
            .filter_map(|p| {
                assert!(p.start + p.len <= disk.len(), "a partition past the disk");
                Slice::new(disk.clone(), p.start, p.len).ok()
            })
            .map(|s| Arc::new(s) as Arc<dyn Image>)
            .collect(),
        Ok(None) => vec![disk.clone()],
        Err(_) => return,
    };
    for volume in volumes {
        read_logical_volumes(&volume);
        read_volume(volume);
    }
}

/// When `volume` is an LVM2 PV: every logical volume it lists, checked to lie inside the PV
/// and read like any volume.
fn read_logical_volumes(volume: &Arc<dyn Image>) {
    if detect(volume.as_ref()).ok() != Some(VolumeKind::Lvm2) {
        return;
    }
    let Ok(vg) = read_volume_group(volume.as_ref()) else {
        return;
    };
    for lv in &vg.logical_volumes {
        let Ok((image, described)) = vg.open(volume.clone(), &lv.name) else {
            continue;
        };
        let mut end = 0;
        for (lv_at, pv_at, len) in described.segments() {
            assert_eq!(*lv_at, end, "LV segments with a gap or overlap");
            assert!(pv_at + len <= volume.len(), "an LV segment past the PV");
            end += len; // No overflow: the segments are contiguous from 0 below 2^64.
        }
        assert_eq!(image.len(), end, "an LV's size is not its segments'");
        read_volume(image);
    }
}

fn read_volume(volume: Arc<dyn Image>) {
    let Ok(fs) = open(volume.clone()) else {
        return;
    };
    let _ = resolve(fs.as_ref(), b"/a/../b/./c", true);
    let Ok(root_stat) = fs.stat(fs.root()) else {
        return;
    };
    let mut budget = MAX_CONTENT;
    let _ = walk(fs.as_ref(), fs.root(), root_stat, &mut |v| {
        match v.stat.kind {
            FileKind::Symlink => {
                let _ = fs.read_link(v.stat.ino);
            }
            FileKind::File => {
                let extents = fs.extents(v.stat.ino)?;
                let mut pos = 0u64;
                for e in &extents {
                    assert_eq!(e.offset, pos, "extents out of order or with a gap");
                    if let ExtentData::Inline(bytes) = &e.data {
                        assert!(bytes.len() as u64 >= e.len, "inline data shorter than its extent");
                    }
                    pos += e.len;
                }
                assert!(extents.is_empty() || pos == v.stat.size, "extents do not cover the file");
                if v.stat.size <= budget {
                    budget -= v.stat.size;
                    let _ = stream(volume.as_ref(), &extents, &mut |piece| {
                        if let Piece::Data(offset, bytes) = piece {
                            assert!(offset + bytes.len() as u64 <= v.stat.size, "data past the file's end");
                        }
                        Ok(())
                    });
                }
            }
            _ => {}
        }
        Ok(true)
    });
}
