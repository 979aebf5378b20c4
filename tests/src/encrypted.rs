//! Helpers for the tests of encrypted repositories through the binary: a passphrase in the
//! environment, repositories made with the cheapest Argon2id cost, and packs read and
//! rewritten with every CRC recomputed (tampering that only the AEAD can catch).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tessera_format::pack::{
    decode_footer, decode_trailer, encode_footer, encode_record_header, FooterEntry,
    PACK_HEADER_LEN, TRAILER_LEN,
};

use crate::{tessera_cmd, Out};

pub const PASS: &str = "correct horse battery staple";
/// A cheap Argon2id cost: the tests open repositories dozens of times.
/// The cheapest Argon2id cost a passphrase slot may have (SPEC.md §23.4).
pub const CHEAP_KDF: [&str; 4] = ["--kdf-memory-mib", "19", "--kdf-iterations", "2"];

/// Runs the binary with `TESSERA_PASSPHRASE` set to `pass` (unset when `None`).
pub fn run<S: AsRef<OsStr>>(args: &[S], pass: Option<&str>) -> Out {
    let mut cmd = tessera_cmd(args);
    cmd.env_remove("TESSERA_PASSPHRASE");
    if let Some(pass) = pass {
        cmd.env("TESSERA_PASSPHRASE", pass);
    }
    Out::of(args, &cmd.output().expect("running tessera"))
}

pub fn p(path: &Path) -> String {
    path.display().to_string()
}

/// An encrypted repository with the passphrase [`PASS`]; returns the recovery key text.
pub fn init_encrypted(repo: &Path, scratch: &Path) -> String {
    let recovery = scratch.join(format!("recovery-{}", rand::random::<u32>()));
    let mut args = vec![
        "--json".to_string(),
        "init".into(),
        p(repo),
        "--recovery-key-file".into(),
        p(&recovery),
    ];
    args.extend(CHEAP_KDF.iter().map(ToString::to_string));
    let out = run(&args, Some(PASS));
    out.ok();
    let v = out.json();
    assert_eq!(v["encryption"], "aes-256-gcm", "{out}");
    assert_eq!(v["format_version"], 2, "{out}");
    let text = fs::read_to_string(&recovery).unwrap();
    assert_eq!(
        fs::metadata(&recovery).unwrap().permissions().mode() & 0o777,
        0o600,
        "the recovery key file is private"
    );
    assert!(!out.stdout.contains(text.trim()) && !out.stderr.contains(text.trim()));
    text.trim().to_string()
}

pub fn backup(repo: &Path, series: &str, disk: &str, image: &Path, tags: &[&str]) -> String {
    let mut args = vec![
        "--json".to_string(),
        "backup".into(),
        p(repo),
        "--series".into(),
        series.into(),
    ];
    for t in tags {
        args.extend(["--tag".into(), (*t).to_string()]);
    }
    args.push(format!("{disk}={}", image.display()));
    let out = run(&args, Some(PASS));
    out.ok();
    assert!(!out.stdout.contains(PASS) && !out.stderr.contains(PASS));
    out.json()["snapshot"].as_str().unwrap().to_string()
}

/// Restores `id` to `out` with the passphrase; the exit code.
pub fn restore_to(repo: &Path, id: &str, out: &Path) -> Out {
    run(&["restore", &p(repo), id, &p(out)], Some(PASS))
}

pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Path, size and modification time of every file of the repository's objects (what a
/// command that must write nothing may not change).
pub fn object_state(repo: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    ["config", "keys", "packs", "snapshots"]
        .iter()
        .map(|d| repo.join(d))
        .filter(|d| d.exists())
        .flat_map(|d| if d.is_dir() { all_files(&d) } else { vec![d] })
        .map(|f| {
            let m = fs::metadata(&f).unwrap();
            (f, (m.len(), m.modified().unwrap()))
        })
        .collect()
}

/// A pack's records as (footer entry, stored bytes).
pub fn read_pack(path: &Path) -> Vec<(FooterEntry, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let trailer = decode_trailer(&bytes[bytes.len() - TRAILER_LEN..], bytes.len() as u64).unwrap();
    let footer = decode_footer(
        &bytes[trailer.footer_offset as usize..bytes.len() - TRAILER_LEN],
        &trailer,
    )
    .unwrap();
    footer
        .into_iter()
        .map(|e| {
            let start = e.data_offset() as usize;
            (e, bytes[start..start + e.info.stored_len as usize].to_vec())
        })
        .collect()
}

/// Writes a pack holding `records` (headers, CRCs, footer and trailer all recomputed).
pub fn write_pack(path: &Path, records: &[(FooterEntry, Vec<u8>)]) {
    let mut out = fs::read(path).unwrap()[..PACK_HEADER_LEN].to_vec();
    let mut entries = Vec::new();
    for (e, stored) in records {
        let mut info = e.info;
        info.stored_len = stored.len() as u32;
        info.stored_crc = crc32c(stored);
        let offset = out.len() as u64;
        out.extend_from_slice(&encode_record_header(&info).unwrap());
        out.extend_from_slice(stored);
        entries.push(FooterEntry { info, offset });
    }
    let footer_offset = out.len() as u64;
    out.extend_from_slice(&encode_footer(&entries, footer_offset).unwrap());
    fs::write(path, out).unwrap();
}

pub fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: the tests crate does not depend on the crc32c crate.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
