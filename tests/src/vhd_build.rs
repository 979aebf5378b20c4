//! A small, independent VHD writer for tests: dynamic and differencing disks laid out per
//! Microsoft's "Virtual Hard Disk Image Format Specification" 1.0, with sector-granular
//! writes (so blocks are partly present and bitmaps matter) and any parent locators.
//! It deliberately shares no code with the engine's VHD reader or writer.
//!
//! Layout: footer copy (0), dynamic header (512), locator data (1536, each padded to 512),
//! BAT (padded to 512), allocated blocks in disk order (bitmap padded to 512, then data),
//! footer. Creator application `tsts`, so qemu would use the current size.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Offset of the dynamic header in images this module writes.
pub const HEADER_AT: u64 = 512;
/// Offset of the footer checksum field.
pub const FOOTER_CHECKSUM: usize = 64;
/// Offset of the dynamic header checksum field (within the header).
pub const HEADER_CHECKSUM: usize = 36;

/// One's complement of the byte sum.
pub fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

/// Recomputes the checksum stored at `field` of the structure `bytes`.
pub fn fix_checksum(bytes: &mut [u8], field: usize) {
    bytes[field..field + 4].fill(0);
    let sum = checksum(bytes);
    bytes[field..field + 4].copy_from_slice(&sum.to_be_bytes());
}

/// The unique id in the footer (last 512 bytes) of the VHD at `path`.
pub fn footer_uuid(path: &Path) -> [u8; 16] {
    let b = fs::read(path).expect("reading VHD");
    let f = &b[b.len() - 512..];
    assert_eq!(&f[..8], b"conectix", "{} has no VHD footer", path.display());
    f[68..84].try_into().expect("16 bytes")
}

/// The current size in the footer of the VHD at `path`.
pub fn footer_size(path: &Path) -> u64 {
    let b = fs::read(path).expect("reading VHD");
    let f = &b[b.len() - 512..];
    u64::from_be_bytes(f[48..56].try_into().expect("8 bytes"))
}

/// Lowercase, dashed form of a unique id (stored byte order).
pub fn uuid_text(id: &[u8; 16]) -> String {
    let h = crate::hex(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A parent locator: platform code and data.
pub type Locator = ([u8; 4], Vec<u8>);

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// `W2ku`: absolute path, UTF-16LE.
pub fn w2ku(path: &Path) -> Locator {
    (*b"W2ku", utf16le(&path.display().to_string()))
}

/// `W2ru`: path relative to the child's directory, UTF-16LE (written with backslashes).
pub fn w2ru(relative: &str) -> Locator {
    (
        *b"W2ru",
        utf16le(&format!(".\\{}", relative.replace('/', "\\"))),
    )
}

/// `MacX`: a `file://` URL, UTF-8 (spaces percent-encoded).
pub fn macx(path: &Path) -> Locator {
    (
        *b"MacX",
        format!("file://{}", path.display().to_string().replace(' ', "%20")).into_bytes(),
    )
}

/// What a differencing disk records about its parent.
#[derive(Debug, Clone)]
pub struct ParentSpec {
    /// Parent unique id.
    pub uuid: [u8; 16],
    /// Parent unicode name.
    pub name: String,
    /// Locators, in entry order.
    pub locators: Vec<Locator>,
}

/// A VhdDirectory's header, footer and blocks (index, bitmap ‖ data).
pub type DirectoryParts = ([u8; 1024], [u8; 512], Vec<(u64, Vec<u8>)>);

/// A dynamic or differencing VHD being built.
#[derive(Debug, Clone)]
pub struct VhdImage {
    /// Disk size (current size).
    pub size: u64,
    /// Block size.
    pub block_size: u64,
    /// Unique id.
    pub uuid: [u8; 16],
    /// The parent, for a differencing disk.
    pub parent: Option<ParentSpec>,
    /// Allocated blocks: index → (sector bitmap, data).
    blocks: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
}

impl VhdImage {
    /// An empty dynamic disk.
    pub fn dynamic(size: u64, block_size: u64, uuid: [u8; 16]) -> Self {
        assert!(size.is_multiple_of(SECTOR) && block_size.is_power_of_two());
        Self {
            size,
            block_size,
            uuid,
            parent: None,
            blocks: BTreeMap::new(),
        }
    }

    /// An empty differencing disk over `parent`.
    pub fn differencing(size: u64, block_size: u64, uuid: [u8; 16], parent: ParentSpec) -> Self {
        Self {
            parent: Some(parent),
            ..Self::dynamic(size, block_size, uuid)
        }
    }

    /// Writes `data` at `offset` (both sector-aligned), allocating blocks and setting bits.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(offset.is_multiple_of(SECTOR) && (data.len() as u64).is_multiple_of(SECTOR));
        assert!(
            offset + data.len() as u64 <= self.size,
            "write past the disk end"
        );
        let bs = self.block_size;
        let bitmap_len = (bs / SECTOR / 8).next_multiple_of(SECTOR) as usize;
        for (i, sector) in data.chunks(SECTOR as usize).enumerate() {
            let pos = offset + i as u64 * SECTOR;
            let (bitmap, block) = self
                .blocks
                .entry(pos / bs)
                .or_insert_with(|| (vec![0u8; bitmap_len], vec![0u8; bs as usize]));
            let s = (pos % bs) / SECTOR;
            bitmap[(s / 8) as usize] |= 0x80 >> (s % 8);
            let at = (pos % bs) as usize;
            block[at..at + SECTOR as usize].copy_from_slice(sector);
        }
    }

    /// Sectors written so far, in bytes.
    pub fn written_bytes(&self) -> u64 {
        self.blocks
            .values()
            .map(|(bm, _)| u64::from(bm.iter().map(|b| b.count_ones()).sum::<u32>()) * SECTOR)
            .sum()
    }

    fn footer(&self) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[0..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&HEADER_AT.to_be_bytes());
        f[28..32].copy_from_slice(b"tsts");
        f[36..40].copy_from_slice(b"Wi2k");
        f[40..48].copy_from_slice(&self.size.to_be_bytes());
        f[48..56].copy_from_slice(&self.size.to_be_bytes());
        f[56..60].copy_from_slice(&[0xff, 0xff, 16, 255]);
        let disk_type: u32 = if self.parent.is_some() { 4 } else { 3 };
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        f[68..84].copy_from_slice(&self.uuid);
        fix_checksum(&mut f, FOOTER_CHECKSUM);
        f
    }

    /// The dynamic header without table offset, locators and checksum: cookie, version,
    /// entries, block size, and the parent's id and name.
    fn header_fields(&self) -> [u8; 1024] {
        let entries = self.size.div_ceil(self.block_size);
        let mut hdr = [0u8; 1024];
        hdr[0..8].copy_from_slice(b"cxsparse");
        hdr[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        hdr[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        hdr[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
        hdr[32..36].copy_from_slice(&(self.block_size as u32).to_be_bytes());
        if let Some(p) = &self.parent {
            hdr[40..56].copy_from_slice(&p.uuid);
            let name: Vec<u8> = p
                .name
                .encode_utf16()
                .take(256)
                .flat_map(u16::to_be_bytes)
                .collect();
            hdr[64..64 + name.len()].copy_from_slice(&name);
        }
        hdr
    }

    /// The parts a Xen Orchestra VhdDirectory stores (`vhd-lib/Vhd/VhdDirectory.js`):
    /// the 1024-byte header (table offset 1536, no locators), the footer (data offset 512),
    /// and each allocated block as its bitmap (padded to 512 bytes) followed by its data.
    pub fn directory_parts(&self) -> DirectoryParts {
        let bitmap_len = (self.block_size / SECTOR / 8).next_multiple_of(SECTOR) as usize;
        let mut hdr = self.header_fields();
        hdr[16..24].copy_from_slice(&1536u64.to_be_bytes());
        fix_checksum(&mut hdr, HEADER_CHECKSUM);
        let blocks = self
            .blocks
            .iter()
            .map(|(i, (bitmap, data))| {
                let mut full = bitmap.clone();
                full.resize(bitmap_len, 0);
                full.extend_from_slice(data);
                (*i, full)
            })
            .collect();
        (hdr, self.footer(), blocks)
    }

    /// The image's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let bs = self.block_size;
        let entries = self.size.div_ceil(bs);
        let bitmap_len = (bs / SECTOR / 8).next_multiple_of(SECTOR);
        let mut out = vec![0u8; 1536];
        let mut hdr = self.header_fields();
        if let Some(p) = &self.parent {
            for (i, (code, data)) in p.locators.iter().enumerate() {
                let at = out.len() as u64;
                out.extend_from_slice(data);
                out.resize((out.len() as u64).next_multiple_of(SECTOR) as usize, 0);
                let e = 576 + i * 24;
                hdr[e..e + 4].copy_from_slice(code);
                let space = (data.len() as u64).next_multiple_of(SECTOR) as u32;
                hdr[e + 4..e + 8].copy_from_slice(&space.to_be_bytes());
                hdr[e + 8..e + 12].copy_from_slice(&(data.len() as u32).to_be_bytes());
                hdr[e + 16..e + 24].copy_from_slice(&at.to_be_bytes());
            }
        }
        let bat_at = out.len() as u64;
        hdr[16..24].copy_from_slice(&bat_at.to_be_bytes());
        fix_checksum(&mut hdr, HEADER_CHECKSUM);
        out[512..1536].copy_from_slice(&hdr);
        let mut bat = vec![0xffu8; (entries * 4) as usize];
        out.resize((bat_at + entries * 4).next_multiple_of(SECTOR) as usize, 0);
        for (index, (bitmap, data)) in &self.blocks {
            let at = out.len() as u64;
            let e = (*index * 4) as usize;
            bat[e..e + 4].copy_from_slice(&((at / SECTOR) as u32).to_be_bytes());
            out.extend_from_slice(bitmap);
            out.resize((at + bitmap_len) as usize, 0);
            out.extend_from_slice(data);
        }
        out[bat_at as usize..(bat_at + entries * 4) as usize].copy_from_slice(&bat);
        let footer = self.footer();
        out[..512].copy_from_slice(&footer);
        out.extend_from_slice(&footer);
        out
    }

    /// Writes the image to `path`.
    pub fn save(&self, path: &Path) {
        fs::write(path, self.to_bytes()).expect("writing VHD");
    }
}
