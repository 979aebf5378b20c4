//! Sync and seed bundles, measured end to end through the release `tessera` binary:
//!
//! - a delta sync (2 % of blocks rewritten) between two local repositories and, pushed,
//!   over the loopback HTTP server: bytes received vs the new unique data the backup
//!   reported (target ≤ 1.05);
//! - a full seed transfer (`seed export` + `seed import`) and a full local `sync`, vs
//!   `cp -r` of the source packs (+ `sync`);
//! - the same full sync and seed transfer between encrypted repositories that share keys
//!   (`init --keys-from`), whose received records are opened and re-hashed under the keys.
//!
//! `cargo run --release -p tessera-benches --bin sync-bench [-- --size-mib 512 --tessera PATH]`

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rand::Rng;
use serde_json::Value;
use tessera_benches::bin_args::{arg, scratch_with_image, tessera_path, ScratchImage};

/// The passphrase of the encrypted repositories (cheapest Argon2id cost: the unlock is not
/// what is measured).
const PASS: &str = "sync bench passphrase";

fn run_json(tessera: &Path, args: &[&str]) -> (f64, Value) {
    let started = Instant::now();
    let out = Command::new(tessera)
        .arg("--json")
        .args(args)
        .env("TESSERA_PASSPHRASE", PASS)
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs = started.elapsed().as_secs_f64();
    (secs, serde_json::from_slice(&out.stdout).expect("json"))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn disk_u64(backup: &Value, field: &str) -> u64 {
    backup["disks"][0][field].as_u64().expect(field)
}

/// Full transfers between encrypted repositories sharing keys: (local sync, seed export,
/// seed import) seconds.
fn encrypted_transfers(tessera: &Path, d: &Path, disk: &str) -> (f64, f64, f64) {
    let (ea, eb, ec) = (d.join("ea"), d.join("eb"), d.join("ec"));
    let cheap = ["--kdf-memory-mib", "19", "--kdf-iterations", "2"];
    let recovery = |name: &str| d.join(format!("{name}.recovery"));
    let ea_recovery = recovery("ea");
    let mut init_ea = vec!["init", p(&ea), "--recovery-key-file", p(&ea_recovery)];
    init_ea.extend(cheap);
    run_json(tessera, &init_ea);
    run_json(tessera, &["backup", p(&ea), "--series", "vm", disk]);
    let sharing = |dst: &Path, from: &Path, rec: &Path| {
        let mut args = vec![
            "init",
            p(dst),
            "--keys-from",
            p(from),
            "--recovery-key-file",
            p(rec),
        ];
        args.extend(cheap);
        run_json(tessera, &args);
    };
    sharing(&eb, &ea, &recovery("eb"));
    let (sync_secs, _) = run_json(tessera, &["sync", p(&ea), p(&eb)]);
    let bundle = d.join("enc-bundle");
    let (export_secs, _) = run_json(tessera, &["seed", "export", p(&ea), p(&bundle)]);
    sharing(&ec, &bundle, &recovery("ec"));
    let (import_secs, _) = run_json(tessera, &["seed", "import", p(&bundle), p(&ec)]);
    (sync_secs, export_secs, import_secs)
}

fn main() {
    let size_mib: usize = arg("--size-mib", "512").parse().expect("--size-mib");
    let tessera = tessera_path();
    let ScratchImage {
        dir,
        image,
        mut data,
        mut rng,
    } = scratch_with_image(
        "tessera-sync-bench",
        size_mib,
        b"tessera sync bench line 0123456789\n",
    );
    let d = dir.path();
    let (a, b, c, served) = (d.join("a"), d.join("b"), d.join("c"), d.join("served"));
    for r in [&a, &b, &served] {
        run_json(&tessera, &["init", p(r), "--encryption", "none"]);
    }
    let disk = format!("d0={}", image.display());
    run_json(&tessera, &["backup", p(&a), "--series", "vm", &disk]);

    // Full transfers: cp -r of the packs vs a local sync vs seed export + import.
    let started = Instant::now();
    let st = Command::new("cp")
        .arg("-r")
        .arg(a.join("packs"))
        .arg(d.join("packs-copy"))
        .status()
        .expect("cp");
    assert!(st.success());
    Command::new("sync").status().expect("sync");
    let cp_secs = started.elapsed().as_secs_f64();
    let (sync_secs, _) = run_json(&tessera, &["sync", p(&a), p(&b)]);
    let bundle = d.join("bundle");
    let (export_secs, _) = run_json(&tessera, &["seed", "export", p(&a), p(&bundle)]);
    let (import_secs, _) = run_json(&tessera, &["seed", "import", p(&bundle), p(&c)]);
    run_json(&tessera, &["sync", p(&a), p(&served)]);

    let (enc_sync_secs, enc_export_secs, enc_import_secs) = encrypted_transfers(&tessera, d, &disk);

    // A 2 % change, then delta syncs: local, and pushed over HTTP.
    let blocks = data.len() / 65536;
    for _ in 0..blocks / 50 {
        let at = rng.gen_range(0..blocks) * 65536;
        rng.fill(&mut data[at..at + 65536]);
    }
    std::fs::write(&image, &data).expect("image");
    let (_, backup) = run_json(&tessera, &["backup", p(&a), "--series", "vm", &disk]);
    let (new_raw, new_stored) = (
        disk_u64(&backup, "new_raw_bytes"),
        disk_u64(&backup, "new_stored_bytes"),
    );
    let (local_secs, local) = run_json(&tessera, &["sync", p(&a), p(&b)]);
    let token = d.join("token");
    std::fs::write(&token, "bench-token").expect("token");
    // `serve` and `sync` refuse token files that group or others may read.
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&token, private).expect("chmod 600 token");
    let mut child = Command::new(&tessera)
        .args([
            "serve",
            p(&served),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            p(&token),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    let _server = Server(child);
    let url = line.trim().trim_start_matches("listening on ").to_string();
    let (http_secs, http) = run_json(&tessera, &["sync", p(&a), &url, "--token-file", p(&token)]);

    let mib = (size_mib as f64).max(1.0);
    println!("image {size_mib} MiB (1/2 random, 1/4 zero, 1/4 text), 64 KiB blocks");
    println!(
        "full transfer: cp -r packs + sync {cp_secs:.2} s ({:.0} MiB/s of image)",
        mib / cp_secs
    );
    println!(
        "  local sync {sync_secs:.2} s ({:.2}x cp); seed export {export_secs:.2} s + import {import_secs:.2} s ({:.2}x cp)",
        sync_secs / cp_secs,
        (export_secs + import_secs) / cp_secs
    );
    println!(
        "  encrypted, sharing keys: local sync {enc_sync_secs:.2} s ({:.2}x the plain sync); seed export {enc_export_secs:.2} s + import {enc_import_secs:.2} s ({:.2}x the plain seed transfer)",
        enc_sync_secs / sync_secs,
        (enc_export_secs + enc_import_secs) / (export_secs + import_secs)
    );
    println!("delta: backup reported {new_raw} new raw bytes, {new_stored} stored");
    for (name, secs, r) in [
        ("local", local_secs, &local),
        ("http push", http_secs, &http),
    ] {
        let raw = r["raw_bytes_transferred"].as_u64().unwrap_or(0);
        let received = r["bytes_received"].as_u64().unwrap_or(0);
        println!(
            "  {name}: {secs:.2} s, raw moved / new raw = {:.3}, bytes received / new stored = {:.3}",
            raw as f64 / new_raw.max(1) as f64,
            received as f64 / new_stored.max(1) as f64
        );
    }
}
