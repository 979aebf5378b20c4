//! Xen Orchestra backup remotes for tests, laid out as `@xen-orchestra/backups` and
//! `vhd-lib` write them (SPEC §25 names the sources): `xo-vm-backups/<VM>/<date>.json`,
//! `vdis/<job>/<VDI>/<date>.vhd` files or `<date>.alias.vhd` aliases to VhdDirectory folders
//! under `data/`, with brotli or gzip chunk filters, and encrypted remotes
//! (`encryption.json`, `metadata.json`, every other file `IV ‖ ciphertext ‖ tag`).
//!
//! VHDs come from the independent writer in [`crate::vhd_build`]. Every disk keeps a raw
//! model of its content at each point, so an import can be compared byte for byte.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use openssl::symm::{encrypt, encrypt_aead, Cipher};
use serde_json::json;

use crate::vhd_build::{ParentSpec, VhdImage};

/// XO's VHD block size.
pub const BLOCK: u64 = 2 << 20;

/// A remote being written.
pub struct Remote {
    /// Its root (holding `xo-vm-backups/`).
    pub root: PathBuf,
    key: Option<(&'static str, Vec<u8>)>,
}

impl Remote {
    /// A new remote at `root`; `encryption` is (algorithm, 32-byte key).
    pub fn new(root: &Path, encryption: Option<(&'static str, &[u8])>) -> Self {
        fs::create_dir_all(root.join("xo-vm-backups")).expect("creating remote");
        let remote = Self {
            root: root.to_path_buf(),
            key: encryption.map(|(a, k)| (a, k.to_vec())),
        };
        if let Some((algorithm, _)) = &remote.key {
            fs::write(
                root.join("encryption.json"),
                json!({ "algorithm": algorithm }).to_string(),
            )
            .expect("encryption.json");
            remote.put(
                "metadata.json",
                br#"{"random":"5b3f0b4e-8c43-4a5e-b0a4-1f2b8d6e9c01"}"#,
            );
        }
        remote
    }

    /// Writes `bytes` at `rel`, encrypted when the remote is.
    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, self.seal(bytes)).expect("writing remote file");
    }

    /// `bytes` as the remote stores them.
    pub fn seal(&self, bytes: &[u8]) -> Vec<u8> {
        let Some((algorithm, key)) = &self.key else {
            return bytes.to_vec();
        };
        let iv_len = if *algorithm == "aes-256-cbc" { 16 } else { 12 };
        let iv: Vec<u8> = (0..iv_len).map(|_| rand::random::<u8>()).collect();
        let mut out = iv.clone();
        match *algorithm {
            "aes-256-cbc" => {
                out.extend(encrypt(Cipher::aes_256_cbc(), key, Some(&iv), bytes).expect("cbc"));
            }
            a => {
                let cipher = if a == "aes-256-gcm" {
                    Cipher::aes_256_gcm()
                } else {
                    Cipher::chacha20_poly1305()
                };
                let mut tag = [0u8; 16];
                out.extend(
                    encrypt_aead(cipher, key, Some(&iv), &[], bytes, &mut tag).expect("aead"),
                );
                out.extend(tag);
            }
        }
        out
    }

    /// The folder of VM `vm`.
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("xo-vm-backups").join(vm)
    }
}

/// How a VDI's VHDs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `<date>.vhd` files.
    File,
    /// `<date>.alias.vhd` → `data/<uuid>.vhd/` folders, chunks compressed with this filter.
    Directory(Option<&'static str>),
}

/// One point of a disk.
#[derive(Debug, Clone)]
pub struct Point {
    /// The VHD's path relative to the VM's folder.
    pub vhd: String,
    /// The VHD's unique id.
    pub uuid: [u8; 16],
    /// The disk's content at this point.
    pub raw: Vec<u8>,
    /// The name its VhdDirectory's folder under `data/` is given (directory storage).
    pub data_name: String,
}

/// A VDI of a VM and its chain of backups.
pub struct Disk {
    /// The VM's VDI UUID (the folder's name).
    pub vdi: String,
    /// Its VBD position.
    pub userdevice: u32,
    /// The job writing it.
    pub job: String,
    /// How its VHDs are stored.
    pub storage: Storage,
    /// Its size.
    pub size: u64,
    /// Its points, oldest first.
    pub points: Vec<Point>,
    /// Whether points keep a copy of the content (false for benchmarks of large disks:
    /// [`Point::raw`] is then empty).
    pub keep_raw: bool,
    raw: Vec<u8>,
}

/// A random UUID's bytes.
pub fn new_uuid() -> [u8; 16] {
    rand::random()
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time in seconds (XO's `formatFilenameDate`).
pub fn file_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Disk {
    /// A VDI of `size` bytes (a multiple of 512), all zeros before its first point.
    pub fn new(userdevice: u32, job: &str, storage: Storage, size: u64) -> Self {
        Self {
            vdi: crate::vhd_build::uuid_text(&new_uuid()),
            userdevice,
            job: job.into(),
            storage,
            size,
            points: Vec::new(),
            keep_raw: true,
            raw: vec![0; size as usize],
        }
    }

    fn folder(&self) -> String {
        format!("vdis/{}/{}", self.job, self.vdi)
    }

    /// Writes the point taken at `secs` after applying `writes` (sector-aligned) to the
    /// model: a key backup (a dynamic VHD of every non-zero block) when `key` or when it is
    /// the first point, else a differencing VHD holding exactly the written sectors, whose
    /// parent is the previous point.
    pub fn point(
        &mut self,
        remote: &Remote,
        vm: &str,
        secs: i64,
        writes: &[(u64, Vec<u8>)],
        key: bool,
    ) -> Point {
        for (at, data) in writes {
            self.raw[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        let uuid = new_uuid();
        let date = file_date(secs);
        let name = match self.storage {
            Storage::File => format!("{date}.vhd"),
            Storage::Directory(_) => format!("{date}.alias.vhd"),
        };
        let image = match self.points.last() {
            Some(parent) if !key => {
                let mut img = VhdImage::differencing(
                    self.size,
                    BLOCK,
                    uuid,
                    ParentSpec {
                        uuid: parent.uuid,
                        name: parent.vhd.rsplit('/').next().expect("name").to_string(),
                        locators: Vec::new(),
                    },
                );
                for (at, data) in writes {
                    img.write(*at, data);
                }
                img
            }
            _ => full_image(&self.raw, uuid),
        };
        let vhd = format!("{}/{name}", self.folder());
        let data_name = crate::vhd_build::uuid_text(&uuid);
        self.store(remote, vm, &vhd, &image, &data_name);
        let point = Point {
            vhd,
            uuid,
            data_name,
            raw: if self.keep_raw {
                self.raw.clone()
            } else {
                Vec::new()
            },
        };
        self.points.push(point.clone());
        point
    }

    /// Writes `image` as the VHD named `vhd` (relative to the VM folder).
    fn store(&self, remote: &Remote, vm: &str, vhd: &str, image: &VhdImage, data_name: &str) {
        let vm_rel = format!("xo-vm-backups/{vm}");
        match self.storage {
            Storage::File => remote.put(&format!("{vm_rel}/{vhd}"), &image.to_bytes()),
            Storage::Directory(filter) => {
                let data_rel = format!("data/{data_name}.vhd");
                let dir = format!("{vm_rel}/{}/{data_rel}", self.folder());
                write_directory(remote, &dir, image, filter);
                remote.put(&format!("{vm_rel}/{vhd}"), data_rel.as_bytes());
            }
        }
    }

    /// XO's merge after retention removed the oldest backup: the oldest point's VHD absorbs
    /// the next one, takes its unique id and its name, and the absorbed VHD is removed
    /// (`vhd-lib/merge.js`). The result here is a dynamic VHD of the second point's content.
    pub fn merge_oldest(&mut self, remote: &Remote, vm: &str) {
        let oldest = self.points.remove(0);
        let next = self.points.first().expect("a second point").clone();
        let vm_dir = remote.vm_dir(vm);
        let merged = full_image(&next.raw, next.uuid);
        match self.storage {
            Storage::File => {
                fs::remove_file(vm_dir.join(&oldest.vhd)).expect("removing oldest");
                remote.put(
                    &format!("xo-vm-backups/{vm}/{}", next.vhd),
                    &merged.to_bytes(),
                );
            }
            Storage::Directory(_) => {
                // The oldest alias's data folder holds the merge and the alias is renamed
                // to the next one's name; the next one's data folder is deleted.
                let folder = vm_dir.join(self.folder());
                let old_target = folder.join(format!("data/{}.vhd", oldest.data_name));
                let next_target = folder.join(format!("data/{}.vhd", next.data_name));
                fs::remove_dir_all(&old_target).expect("old data");
                fs::remove_dir_all(&next_target).expect("next data");
                fs::remove_file(vm_dir.join(&oldest.vhd)).expect("old alias");
                self.store(remote, vm, &next.vhd, &merged, &oldest.data_name);
                self.points[0].data_name = oldest.data_name;
            }
        }
    }
}

/// A dynamic VHD holding every non-zero block of `raw`.
pub fn full_image(raw: &[u8], uuid: [u8; 16]) -> VhdImage {
    let mut img = VhdImage::dynamic(raw.len() as u64, BLOCK, uuid);
    for (i, block) in raw.chunks(BLOCK as usize).enumerate() {
        if block.iter().any(|&b| b != 0) {
            img.write(i as u64 * BLOCK, block);
        }
    }
    img
}

/// Writes `image` as a VhdDirectory at `dir` (relative to the remote's root).
pub fn write_directory(remote: &Remote, dir: &str, image: &VhdImage, filter: Option<&str>) {
    let (header, footer, blocks) = image.directory_parts();
    let squeeze = |bytes: &[u8]| -> Vec<u8> {
        match filter {
            None => bytes.to_vec(),
            Some("gzip") => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(bytes).expect("gzip");
                e.finish().expect("gzip")
            }
            Some("brotli") => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
                    w.write_all(bytes).expect("brotli");
                }
                out
            }
            Some(other) => panic!("unknown filter {other}"),
        }
    };
    if let Some(f) = filter {
        remote.put(
            &format!("{dir}/chunk-filters.json"),
            json!([f]).to_string().as_bytes(),
        );
    }
    remote.put(&format!("{dir}/header"), &squeeze(&header));
    remote.put(&format!("{dir}/footer"), &squeeze(&footer));
    let entries = image.size.div_ceil(image.block_size) as usize;
    let mut bat = vec![0u8; entries.max(1)];
    for (i, block) in &blocks {
        bat[(*i / 8) as usize] |= 0x80 >> (i % 8);
        remote.put(
            &format!("{dir}/blocks/{}/{}", i / 1000, i % 1000),
            &squeeze(block),
        );
    }
    remote.put(&format!("{dir}/bat"), &squeeze(&bat));
}

/// A backup's metadata file, as `IncrementalRemoteWriter` writes it, for `disks` at their
/// newest point; written to `<VM>/<date>.json`. Returns its path relative to the remote.
pub fn write_metadata(
    remote: &Remote,
    vm: &str,
    vm_name: &str,
    secs: i64,
    job: &str,
    schedule: &str,
    disks: &[&Disk],
) -> String {
    let mut vbds = serde_json::Map::new();
    let mut vdis = serde_json::Map::new();
    let mut vhd_paths = serde_json::Map::new();
    let mut differencing = serde_json::Map::new();
    for (n, d) in disks.iter().enumerate() {
        let point = d.points.last().expect("a point");
        let vdi_ref = format!("OpaqueRef:vdi-{n}-{}", d.vdi);
        vbds.insert(
            format!("OpaqueRef:vbd-{n}"),
            json!({ "VDI": vdi_ref, "userdevice": d.userdevice.to_string(), "type": "Disk", "device": "" }),
        );
        vdis.insert(
            vdi_ref.clone(),
            json!({
                "uuid": crate::vhd_build::uuid_text(&point.uuid),
                "$snapshot_of$uuid": d.vdi,
                "name_label": format!("disk {n}"),
                "virtual_size": d.size,
                "type": "user",
            }),
        );
        vhd_paths.insert(vdi_ref.clone(), json!(point.vhd));
        differencing.insert(vdi_ref, json!(d.points.len() > 1));
    }
    let meta = json!({
        "jobId": job,
        "mode": "delta",
        "scheduleId": schedule,
        "timestamp": secs * 1000,
        "version": "2.0.0",
        "vm": { "uuid": vm, "name_label": vm_name },
        "vmSnapshot": { "uuid": "snapshot-of-vm" },
        "vbds": vbds,
        "vdis": vdis,
        "vhds": vhd_paths,
        "isVhdDifferencing": differencing,
        "vifs": {},
    });
    let rel = format!("xo-vm-backups/{vm}/{}.json", file_date(secs));
    remote.put(&rel, meta.to_string().as_bytes());
    rel
}
