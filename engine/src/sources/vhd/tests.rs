//! Unit tests: hand-built images (sector-level bitmaps, chains, cycles, depth) and loops
//! showing that random bytes and random mutations of valid images never panic.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::VhdSource;
use crate::formats::vhd::{checksum, format_uuid};
use crate::sources::BlockSource;

const BS: u64 = 4096;

/// A dynamic (no parent) or differencing VHD with 4 KiB blocks; `writes` = (sector, fill
/// byte) pairs; the parent locator is a W2ku absolute path.
fn image(size: u64, uuid: u8, parent: Option<(u8, &Path)>, writes: &[(u64, u8)]) -> Vec<u8> {
    let entries = size.div_ceil(BS);
    let mut foot = [0u8; 512];
    foot[0..8].copy_from_slice(b"conectix");
    foot[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    foot[16..24].copy_from_slice(&512u64.to_be_bytes());
    foot[48..56].copy_from_slice(&size.to_be_bytes());
    foot[60..64].copy_from_slice(&(if parent.is_some() { 4u32 } else { 3 }).to_be_bytes());
    foot[68..84].fill(uuid);
    let sum = checksum(&foot);
    foot[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut out = vec![0u8; 1536];
    let mut hdr = [0u8; 1024];
    hdr[0..8].copy_from_slice(b"cxsparse");
    hdr[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    hdr[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
    hdr[32..36].copy_from_slice(&(BS as u32).to_be_bytes());
    if let Some((pid, ppath)) = parent {
        hdr[40..56].fill(pid);
        let data: Vec<u8> = ppath
            .display()
            .to_string()
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        hdr[576..580].copy_from_slice(b"W2ku");
        hdr[584..588].copy_from_slice(&(data.len() as u32).to_be_bytes());
        hdr[592..600].copy_from_slice(&(out.len() as u64).to_be_bytes());
        out.extend_from_slice(&data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    let bat_at = out.len();
    hdr[16..24].copy_from_slice(&(bat_at as u64).to_be_bytes());
    let sum = checksum(&hdr);
    hdr[36..40].copy_from_slice(&sum.to_be_bytes());
    out[512..1536].copy_from_slice(&hdr);
    out.resize((bat_at + entries as usize * 4).next_multiple_of(512), 0);
    let mut bat = vec![u32::MAX; entries as usize];
    for &(sector, fill) in writes {
        let b = (sector * 512 / BS) as usize;
        if bat[b] == u32::MAX {
            bat[b] = (out.len() / 512) as u32;
            out.resize(out.len() + 512 + BS as usize, 0);
        }
        let start = bat[b] as usize * 512;
        let s = (sector % (BS / 512)) as usize;
        out[start] |= 0x80 >> s;
        let at = start + 512 + s * 512;
        out[at..at + 512].fill(fill);
    }
    for (i, e) in bat.iter().enumerate() {
        out[bat_at + i * 4..bat_at + i * 4 + 4].copy_from_slice(&e.to_be_bytes());
    }
    out[..512].copy_from_slice(&foot);
    out.extend_from_slice(&foot);
    out
}

fn read_all(src: &VhdSource) -> crate::error::Result<Vec<u8>> {
    let mut buf = vec![0u8; src.size() as usize];
    src.read_at(0, &mut buf)?;
    Ok(buf)
}

#[test]
fn sectors_come_from_the_child_the_parent_or_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, c) = (dir.path().join("p.vhd"), dir.path().join("c.vhd"));
    std::fs::write(
        &p,
        image(32768, 1, None, &[(0, 0x11), (1, 0x12), (9, 0x13)]),
    )
    .expect("write");
    std::fs::write(
        &c,
        image(32768, 2, Some((1, &p)), &[(1, 0x21), (3, 0x23), (20, 0x24)]),
    )
    .expect("write");
    let src = VhdSource::open(&c).expect("open");
    assert!(src.reads_full());
    let changes = src.changes().expect("delta");
    assert_eq!(
        changes.extents,
        vec![(512, 1024), (1536, 2048), (10240, 10752)]
    );
    assert_eq!(changes.base_state, format!("vhd:{}", format_uuid(&[1; 16])));
    let id = src.identity();
    assert!(id.contains(&("state".into(), format!("vhd:{}", format_uuid(&[2; 16])))));
    let all = read_all(&src).expect("read");
    let sector = |s: usize| all[s * 512];
    let expect = [
        (0, 0x11),
        (1, 0x21),
        (2, 0),
        (3, 0x23),
        (9, 0x13),
        (20, 0x24),
        (21, 0),
    ];
    for (s, v) in expect {
        assert_eq!(sector(s), v, "sector {s}");
    }
    // Unaligned reads across runs; bytes read count only file bytes.
    let mut buf = vec![0u8; 1500];
    let n = src.read_at(300, &mut buf).expect("read");
    assert_eq!(&buf[..212], &[0x11; 212][..]);
    assert_eq!(&buf[212..724], &[0x21; 512][..]);
    assert_eq!(&buf[724..1236], &[0; 512][..]);
    assert_eq!(n, 212 + 512 + 264);
}

#[test]
fn parent_cycles_and_deep_chains_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.vhd"), dir.path().join("b.vhd"));
    std::fs::write(&a, image(8192, 1, Some((2, &b)), &[])).expect("write");
    std::fs::write(&b, image(8192, 2, Some((1, &a)), &[])).expect("write");
    let err = VhdSource::open(&a).err().expect("a cycle").to_string();
    assert!(err.contains("loops"), "{err}");

    let mut prev = dir.path().join("n0.vhd");
    std::fs::write(&prev, image(8192, 0, None, &[])).expect("write");
    for i in 1..=33u8 {
        let next = dir.path().join(format!("n{i}.vhd"));
        std::fs::write(&next, image(8192, i, Some((i - 1, &prev)), &[])).expect("write");
        if i == 31 {
            assert!(VhdSource::open(&next).is_ok(), "32 files are fine");
        }
        prev = next;
    }
    let err = VhdSource::open(&prev).err().expect("too deep").to_string();
    assert!(err.contains("deeper than 32"), "{err}");
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = dir.path().join("p.vhd");
    std::fs::write(&parent, image(40960, 1, None, &[(0, 1), (15, 2), (40, 3)])).expect("write");
    let good = image(40960, 2, Some((1, &parent)), &[(1, 4), (2, 5), (70, 6)]);
    let seed: u64 = std::env::var("TESSERA_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    // Shown when the test fails (a panic included): reproduce with TESSERA_SEED.
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let path = dir.path().join("m.vhd");
    let mut opened = 0;
    for round in 0..2000 {
        let mut bytes = good.clone();
        match round % 4 {
            0 => {
                // Random bytes, sometimes with a valid footer cookie at the end.
                bytes = vec![0u8; rng.gen_range(0..20_000)];
                rng.fill_bytes(&mut bytes);
                if bytes.len() >= 512 && rng.gen_bool(0.5) {
                    let at = bytes.len() - 512;
                    bytes[at..at + 8].copy_from_slice(b"conectix");
                }
            }
            1 => bytes.truncate(rng.gen_range(0..good.len())),
            _ => {
                // Mutate header fields (then fix both checksums so the mutation is seen).
                for _ in 0..rng.gen_range(1..6) {
                    let at = if rng.gen_bool(0.7) {
                        rng.gen_range(0..2048)
                    } else {
                        rng.gen_range(0..bytes.len())
                    };
                    bytes[at] = rng.gen();
                }
                if rng.gen_bool(0.8) {
                    for (start, field) in [(512usize, 36usize), (0, 64)] {
                        let s = &mut bytes[start..start + if start == 0 { 512 } else { 1024 }];
                        s[field..field + 4].fill(0);
                        let sum = checksum(s);
                        s[field..field + 4].copy_from_slice(&sum.to_be_bytes());
                    }
                    let n = bytes.len();
                    let copy: Vec<u8> = bytes[..512].to_vec();
                    bytes[n - 512..].copy_from_slice(&copy);
                }
            }
        }
        std::fs::write(&path, &bytes).expect("write");
        if let Ok(src) = VhdSource::open(&path) {
            opened += 1;
            let _ = src.identity();
            if src.size() <= 1 << 20 {
                let _ = read_all(&src);
            }
        }
    }
    // Some mutations leave the image valid (e.g. a changed data byte): the read path runs.
    assert!(
        opened > 0,
        "seed {seed}: no mutation produced an openable image"
    );
}

#[test]
fn fixed_disk_with_a_511_byte_footer_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.vhd");
    let mut foot = [0u8; 512];
    foot[0..8].copy_from_slice(b"conectix");
    foot[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    foot[16..24].fill(0xff);
    foot[48..56].copy_from_slice(&4096u64.to_be_bytes());
    foot[60..64].copy_from_slice(&2u32.to_be_bytes());
    let sum = checksum(&foot);
    foot[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let data = bytes.clone();
    bytes.extend_from_slice(&foot[..511]);
    std::fs::write(&path, &bytes).expect("write");
    let src = VhdSource::open(&path).expect("open");
    assert_eq!(src.size(), 4096);
    assert!(src.changes().is_none());
    assert_eq!(read_all(&src).expect("read"), data);
    // One byte less of data: the fixed disk no longer fits before its footer.
    std::fs::write(&path, &bytes[1..]).expect("write");
    let err = VhdSource::open(&path).err().expect("truncated").to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_fixed_parent_smaller_than_its_child_reads_as_zeros_beyond_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, c) = (dir.path().join("p.vhd"), dir.path().join("c.vhd"));
    let mut foot = [0u8; 512];
    foot[0..8].copy_from_slice(b"conectix");
    foot[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    foot[48..56].copy_from_slice(&1024u64.to_be_bytes());
    foot[60..64].copy_from_slice(&2u32.to_be_bytes());
    foot[68..84].fill(7);
    let sum = checksum(&foot);
    foot[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut parent = vec![0x70u8; 1024];
    parent.extend_from_slice(&foot);
    std::fs::write(&p, parent).expect("write");
    std::fs::write(&c, image(8192, 8, Some((7, &p)), &[(1, 0x81)])).expect("write");
    let src = VhdSource::open(&c).expect("open");
    let all = read_all(&src).expect("read");
    assert_eq!(&all[..512], &[0x70; 512][..]);
    assert_eq!(&all[512..1024], &[0x81; 512][..]);
    assert!(all[1024..].iter().all(|&b| b == 0));
    assert!(src
        .identity()
        .iter()
        .any(|(k, v)| k == "vhd.parent_path" && v.ends_with("p.vhd")));
}

/// The `vhd` fuzz target's seeds (qemu-made fixed and dynamic disks, a differencing disk
/// from `tessera export`): each opens from memory exactly as from its file, and the
/// kinds the corpus promises are all there, so the target starts from valid images.
#[test]
fn fuzz_seeds_decode_from_bytes_as_from_their_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vhd");
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let from_file = VhdSource::open(&path).unwrap();
        let from_bytes = VhdSource::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(from_file.size(), from_bytes.size(), "{}", path.display());
        let changes = |s: &VhdSource| {
            s.changes()
                .map(|c| (c.base_state.clone(), c.extents.clone()))
        };
        assert_eq!(
            changes(&from_file),
            changes(&from_bytes),
            "{}",
            path.display()
        );
        assert_eq!(from_file.reads_full(), from_bytes.reads_full());
        let ranges = from_bytes
            .changes()
            .map_or_else(|| vec![(0, from_bytes.size())], |c| c.extents.clone());
        for (s, e) in ranges {
            let (mut a, mut b) = (vec![0u8; (e - s) as usize], vec![1u8; (e - s) as usize]);
            assert_eq!(
                from_file.read_at(s, &mut a).unwrap(),
                from_bytes.read_at(s, &mut b).unwrap()
            );
            assert!(a == b, "{}: [{s}, {e}) differs", path.display());
        }
        kinds.insert(from_bytes.identity()[2].1.clone());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["differencing", "dynamic", "fixed"]
    );
}
