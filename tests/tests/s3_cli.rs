//! S3 repositories through the `tessera` binary, against a real SeaweedFS started on
//! loopback by each test: every command that takes a repository, given `s3://BUCKET/PREFIX`
//! with the endpoint and credentials in the environment (`TESSERA_S3_ENDPOINT`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), or the options (`--s3-endpoint`,
//! `--s3-region`, `--s3-path-style`, `--cache-dir`), credentials from a `~/.aws` profile;
//! real clients as oracles (qemu-img reading `serve-nbd`, converting exports and building
//! qcow2 overlays); caches deleted and shared between clients; bad input with its exit code.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::Value;
use tessera_engine::location::LocationOptions;
use tessera_engine::repo::RepoStorage;
use tessera_engine::storage::PutMode;
use tessera_tests::qemu::{qemu_img, qemu_io};
use tessera_tests::seaweed::{bucket_listing, CliClient, Seaweed, KEY_ID, SECRET};
use tessera_tests::{
    assert_same_file, make_image, mutate, seed, snapshot_id, write_change_list, DataGen, ImageSpec,
};

const MIB: u64 = 1 << 20;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `backup REPO --series SERIES d0=IMAGE EXTRA...` as JSON.
fn backup(cli: &CliClient, repo: &str, series: &str, image: &Path, extra: &[&str]) -> Value {
    let disk = format!("d0={}", image.display());
    let mut args = vec!["backup", repo, "--series", series, &disk];
    args.extend_from_slice(extra);
    cli.json(args)
}

/// Restores `spec` to `scratch/NAME` (a relative name, run in `scratch`) and compares it
/// with `expected` byte for byte.
#[track_caller]
fn assert_restores(cli: &CliClient, repo: &str, spec: &str, expected: &Path, scratch: &Path) {
    let name = format!("restored-{}.raw", rand::random::<u32>());
    let out = cli
        .cmd(["restore", repo, spec, &name])
        .current_dir(scratch)
        .output()
        .expect("running restore");
    assert!(
        out.status.success(),
        "restore {repo} {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = scratch.join(&name);
    assert_same_file(expected, &restored);
    std::fs::remove_file(restored).expect("removing the restored copy");
}

#[track_caller]
fn assert_verifies(cli: &CliClient, repo: &str) -> Value {
    let v = cli.json(["verify", repo]);
    assert_eq!(v["report"]["problems"], serde_json::json!([]), "{v}");
    v
}

/// `init COPY --keys-from REPO` (a repository in a bucket), then `sync REPO COPY`: the copy
/// lists `snapshot` (the only one) and restores it as `raw`.
fn a_local_copy_shares_the_keys(cli: &CliClient, repo: &str, w: &Path, snapshot: &str, raw: &Path) {
    let local = w.join("copy");
    cli.json([
        "init",
        &path(&local),
        "--keys-from",
        repo,
        "--encryption",
        "aes-256-gcm",
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
        "--recovery-key-file",
        &path(&w.join("copy-recovery.key")),
    ]);
    let synced = cli.json(["sync", repo, &path(&local)]);
    assert_eq!(
        synced["snapshots_copied"].as_array().unwrap().len(),
        1,
        "{synced}"
    );
    assert_eq!(ids(cli, &path(&local)), [snapshot.to_string()]);
    assert_restores(cli, &path(&local), snapshot, raw, w);
}

/// `key list/add/remove` on a repository in a bucket: `cli` adds a passphrase slot for
/// "a second passphrase" (what `second_pass` gives), which then opens it and lists
/// `snapshot`, and removes it again, after which it no longer opens (exit 6).
fn key_slots_change_in_a_bucket(
    cli: &CliClient,
    second_pass: &CliClient,
    repo: &str,
    w: &Path,
    snapshot: &str,
) {
    assert_eq!(
        cli_slots(cli, repo).len(),
        2,
        "a passphrase and a recovery slot"
    );
    let new_pass = w.join("new-pass");
    std::fs::write(&new_pass, "a second passphrase\n").unwrap();
    let added = cli.json([
        "key",
        "add",
        repo,
        "--new-passphrase-file",
        &path(&new_pass),
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
    ]);
    let added_id = added["added"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(ids(second_pass, repo), [snapshot.to_string()]);
    cli.json(["key", "remove", repo, &added_id]);
    assert_eq!(cli_slots(cli, repo).len(), 2);
    second_pass.run(["list", repo]).expect_code(6);
}

/// The key slot ids `key list` shows.
fn cli_slots(cli: &CliClient, repo: &str) -> Vec<String> {
    cli.json(["key", "list", repo])["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn ids(cli: &CliClient, repo: &str) -> Vec<String> {
    cli.json(["list", repo])["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The storage of `repo` as the tests see it (engine API, own cache), for inspecting and
/// damaging objects.
fn storage(server: &Seaweed, repo: &str, cache: &Path) -> RepoStorage {
    RepoStorage::at(
        repo,
        &LocationOptions {
            s3: server.options(),
            cache_dir: Some(cache.to_path_buf()),
        },
    )
    .expect("connecting")
}

/// A running `tessera serve-nbd` on a unix socket, killed on drop.
struct NbdServer(Child);

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[expect(
    clippy::zombie_processes,
    reason = "the returned NbdServer kills and waits for it when dropped"
)]
fn serve_nbd(cli: &CliClient, repo: &str, spec: &str, socket: &Path) -> NbdServer {
    let mut child = cli
        .cmd(["--json", "serve-nbd", repo, spec, "--socket", &path(socket)])
        .spawn()
        .expect("spawning serve-nbd");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut doc = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).expect("reading serve-nbd") == 0 {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!("serve-nbd exited early: {doc}\n{err}");
        }
        doc.push_str(&line);
        if let Ok(v) = serde_json::from_str::<Value>(&doc) {
            assert_eq!(v["ok"], true, "{doc}");
            return NbdServer(child);
        }
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "one repository's life, command by command; w, a, b, q... name its parts"
)]
fn every_command_works_on_an_s3_repository() {
    let sw = Seaweed::start("cli");
    let cli = CliClient::new(&sw);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("vms/prod");
    let v = cli.json(["init", &repo]);
    assert_eq!(v["repo"], "s3://cli/vms/prod", "{v}");

    // Raw: a full backup, then a delta from a changed-block list.
    let mut gen = DataGen::new(seed("s3_cli_every_command"));
    let raw = w.join("disk.raw");
    make_image(&raw, ImageSpec::mixed(24 * MIB), &mut gen);
    let list = w.join("changes.txt");
    let changes = format!("d0={}", list.display());
    write_change_list(&list, 24 * MIB, "*", "cbt:0", &[(0, 24 * MIB)]);
    let first = backup(&cli, &repo, "raw", &raw, &["--changes", &changes]);
    assert_eq!(first["disks"][0]["mode"], "full", "{first}");
    let raw_v1 = w.join("disk-v1.raw");
    std::fs::copy(&raw, &raw_v1).unwrap();
    let rewritten = [(3 * MIB, 256 * 1024), (17 * MIB + 4096, 8192)];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for (offset, len) in rewritten {
            f.write_all_at(
                &gen.bytes(tessera_tests::Fill::Random, len as usize),
                offset,
            )
            .unwrap();
        }
    }
    write_change_list(&list, 24 * MIB, "cbt:0", "cbt:1", &rewritten);
    let delta = backup(
        &cli,
        &repo,
        "raw",
        &raw,
        &["--changes", &changes, "--reference", "latest"],
    );
    assert_eq!(delta["disks"][0]["mode"], "delta", "{delta}");
    let (a, b) = (snapshot_id(&first), snapshot_id(&delta));

    // qcow2: a full backup of a qcow2 image, then a qcow2 overlay on a raw base as a delta.
    let qcow = w.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &path(&raw_v1),
        &path(&qcow),
    ]);
    let q = backup(&cli, &repo, "qcow", &qcow, &[]);
    assert_eq!(q["disks"][0]["mode"], "full", "{q}");
    let base = w.join("base.raw");
    std::fs::copy(&raw_v1, &base).unwrap();
    backup(&cli, &repo, "overlay", &base, &[]);
    let overlay = w.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &path(&overlay),
        "24M",
    ]);
    qemu_io("qcow2", &overlay, "write -P 0x5a 1M 200k");
    qemu_io("qcow2", &overlay, "write -z 9M 64k");
    let ov = backup(&cli, &repo, "overlay", &overlay, &["--reference", "latest"]);
    assert_eq!(ov["disks"][0]["mode"], "delta", "{ov}");
    let overlay_raw = w.join("overlay-oracle.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &path(&overlay),
        &path(&overlay_raw),
    ]);

    // Restores, byte for byte.
    assert_restores(&cli, &repo, &a, &raw_v1, w);
    assert_restores(&cli, &repo, &b, &raw, w);
    assert_restores(&cli, &repo, &snapshot_id(&q), &raw_v1, w);
    assert_restores(&cli, &repo, &snapshot_id(&ov), &overlay_raw, w);
    let v = assert_verifies(&cli, &repo);
    assert!(v["report"]["objects_read"].as_u64().unwrap_or(0) > 0, "{v}");
    cli.json(["verify", &repo, "--sample", "10%"]);
    cli.json(["show", &repo, &b]);
    cli.json(["stats", &repo]);

    // Incremental restore onto a copy of the first state.
    let onto = w.join("onto.raw");
    std::fs::copy(&raw_v1, &onto).unwrap();
    cli.json(["restore", &repo, &b, "--onto", &path(&onto), "--assume", &a]);
    assert_same_file(&raw, &onto);

    // diff names exactly the changed blocks.
    let d = cli.json(["diff", &repo, &a, &b]);
    let extents: Vec<(u64, u64)> = d["disks"][0]["extents"]
        .as_array()
        .unwrap_or_else(|| panic!("{d}"))
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(extents, [(3 * MIB, 256 * 1024), (17 * MIB, 65536)], "{d}");

    // export: a full qcow2, and a delta overlay on it; qemu-img is the oracle.
    let full_q = w.join("a.qcow2");
    cli.json(["export", &repo, &a, &path(&full_q), "--format", "qcow2"]);
    let delta_q = w.join("b.qcow2");
    cli.json([
        "export",
        &repo,
        &b,
        &path(&delta_q),
        "--format",
        "qcow2",
        "--base",
        &a,
        "--backing-file",
        "a.qcow2",
    ]);
    let via_qemu = w.join("b-via-qemu.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &path(&delta_q),
        &path(&via_qemu),
    ]);
    assert_same_file(&raw, &via_qemu);
    std::fs::remove_file(&via_qemu).unwrap();

    // serve-nbd reads from the bucket; qemu-img copies and compares.
    let socket = w.join("nbd.sock");
    let server = serve_nbd(&cli, &repo, &b, &socket);
    let uri = format!("nbd+unix:///d0?socket={}", socket.display());
    let copied = w.join("nbd-copy.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, &path(&copied)]);
    assert_same_file(&raw, &copied);
    qemu_img(&["compare", "-f", "raw", "-F", "raw", &path(&raw), &uri]);
    drop(server);
    std::fs::remove_file(&copied).unwrap();

    // protect, forget, prune, compact: space comes back, what is kept still restores.
    cli.json(["protect", &repo, &a]);
    let refused = cli.run(["forget", &repo, &a]);
    refused.expect_code(5);
    cli.json(["unprotect", &repo, &a]);
    cli.json(["forget", &repo, &a]);
    let pruned = cli.json(["prune", &repo, "--series", "overlay", "--keep-last", "1"]);
    let forgotten = pruned["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("{pruned}"))
        .iter()
        .filter(|d| d["reasons"].as_array().is_some_and(Vec::is_empty))
        .count();
    assert_eq!(forgotten, 1, "{pruned}");
    // Only `b` stays: what the others alone held (the first state of the changed blocks, the
    // overlay's writes, their manifest pages) is garbage now.
    cli.json(["forget", &repo, &snapshot_id(&q), &snapshot_id(&ov)]);
    assert_eq!(ids(&cli, &repo), std::slice::from_ref(&b));
    let c = cli.json([
        "compact",
        &repo,
        "--max-unused",
        "0%",
        "--grace",
        "0",
        "--allow-short-grace",
    ]);
    assert!(
        c["report"]["packs_rewritten"].as_u64().unwrap_or(0) > 0,
        "{c}"
    );
    assert_restores(&cli, &repo, &b, &raw, w);
    assert_verifies(&cli, &repo);

    // repair: a copy synced to a local repository heals a damaged pack in the bucket
    // (verify exits 4 before, 0 after), and the bucket heals the local copy in turn.
    let local = w.join("local-copy");
    cli.json(["init", &path(&local)]);
    cli.json(["sync", &repo, &path(&local)]);
    let cache = w.join("inspect-cache");
    let st = storage(&sw, &repo, &cache);
    let pack = st.backend.list("packs/").unwrap().remove(0);
    let mut bytes = st.backend.get(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    st.backend
        .put_bytes(&pack, PutMode::Replace, &bytes)
        .unwrap();
    cli.run(["verify", &repo]).expect_code(4);
    let healed = cli.json(["repair", &repo, "--from", &path(&local)]);
    assert!(
        !healed["repaired"].as_array().unwrap().is_empty(),
        "{healed}"
    );
    assert_verifies(&cli, &repo);
    let local_pack = tessera_tests::pack_files(&local).remove(0);
    let mut bytes = std::fs::read(&local_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&local_pack, &bytes).unwrap();
    cli.run(["verify", &path(&local)]).expect_code(4);
    cli.json(["repair", &path(&local), "--from", &repo]);
    assert_verifies(&cli, &path(&local));
    cli.run(["repair", &repo, "--from", &repo])
        .expect_code(2)
        .stderr_has("names the repository being repaired");

    cli.json(["repair", &repo, "--recount"]);
    cli.json(["repair", &repo, "--rebuild-index"]);
    assert_verifies(&cli, &repo);
    assert_restores(&cli, &repo, &b, &raw, w);
}

/// The cache directories under a client's cache home (`tessera/BUCKET/HASH`).
fn cache_dirs(cli: &CliClient, bucket: &str) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(cli.cache_home().join("tessera").join(bucket)) else {
        return Vec::new();
    };
    dirs.map(|d| d.expect("cache dir entry").path()).collect()
}

#[test]
fn caches_are_rebuilt_from_the_bucket_and_clients_see_each_other() {
    let sw = Seaweed::start("caches");
    let (one, two) = (CliClient::new(&sw), CliClient::new(&sw));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("shared");
    one.json(["init", &repo]);
    let mut gen = DataGen::new(seed("s3_cli_caches"));
    let img = w.join("a.raw");
    make_image(&img, ImageSpec::mixed(12 * MIB), &mut gen);
    let first = snapshot_id(&backup(&one, &repo, "a", &img, &[]));
    let img_v1 = w.join("a-v1.raw");
    std::fs::copy(&img, &img_v1).unwrap();

    // The default cache directory is under XDG_CACHE_HOME; deleting it loses nothing.
    let dirs = cache_dirs(&one, "caches");
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(
        dirs[0].join("index").is_dir(),
        "no index in {}",
        dirs[0].display()
    );
    std::fs::remove_dir_all(&dirs[0]).unwrap();
    let listed = one.run(["list", &repo]);
    listed.ok().stderr_has("rebuilt from the bucket");
    assert!(listed.stdout.contains(&first[..16]), "{listed}");
    assert_verifies(&one, &repo);
    assert_restores(&one, &repo, &first, &img_v1, w);
    // A cache deleted before a writer opens: the backup dedups against the rebuilt index.
    std::fs::remove_dir_all(&cache_dirs(&one, "caches")[0]).unwrap();
    mutate(&img, &mut gen, 4, 64 * 1024, (0, 0, 1));
    let second = backup(&one, &repo, "a", &img, &[]);
    let new_bytes = second["disks"][0]["new_raw_bytes"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        new_bytes <= 8 * 128 * 1024,
        "the rebuilt index did not dedup: {second}"
    );

    // A second client with its own cache directory (--cache-dir) publishes; the first
    // client sees it on its next open, and the other way round.
    let two_cache = w.join("two-cache");
    let other = w.join("b.raw");
    make_image(&other, ImageSpec::mixed(6 * MIB), &mut gen);
    let cache_arg = format!("--cache-dir={}", two_cache.display());
    let from_two = snapshot_id(&two.json([
        &cache_arg,
        "backup",
        &repo,
        "--series",
        "b",
        &format!("d0={}", other.display()),
    ]));
    assert!(
        two_cache.join("cache-of").is_file(),
        "--cache-dir was not used"
    );
    assert!(
        cache_dirs(&two, "caches").is_empty(),
        "the default cache was used too"
    );
    let seen = one.run(["list", &repo]);
    seen.ok()
        .stderr_has("snapshots of other clients catalogued");
    assert!(seen.stdout.contains(&from_two[..16]), "{seen}");
    assert_restores(&one, &repo, &from_two, &other, w);
    let third = snapshot_id(&backup(&one, &repo, "a", &img_v1, &[]));
    let ids_two = ids(&two, &repo);
    assert!(ids_two.contains(&third), "{ids_two:?}");
    // Another client forgets; the first drops the snapshot from its cache and still verifies.
    two.json([&cache_arg, "forget", &repo, &first]);
    let after = one.run(["list", &repo]);
    after.ok().stderr_has("forgotten by other clients dropped");
    assert!(!after.stdout.contains(&first[..16]), "{after}");
    assert_verifies(&one, &repo);

    // One cache directory cannot serve two repositories.
    one.json(["init", &sw.location("elsewhere")]);
    let mixed = one.run([&cache_arg, "list", &sw.location("elsewhere")]);
    mixed
        .expect_code(2)
        .stderr_has("belongs to s3://caches/shared");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one way of moving snapshots per paragraph"
)]
fn seeds_and_sync_move_snapshots_between_local_s3_and_a_server_fronting_s3() {
    let sw = Seaweed::start("moves");
    let cli = CliClient::new(&sw);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut gen = DataGen::new(seed("s3_cli_moves"));
    let img = w.join("vm.raw");
    make_image(&img, ImageSpec::mixed(10 * MIB), &mut gen);

    // local → S3 (into an empty repository there), then S3 → another local one.
    let local = w.join("local");
    cli.json(["init", &path(&local)]);
    let id = snapshot_id(&backup(&cli, &path(&local), "vm", &img, &[]));
    let s3 = sw.location("synced");
    cli.json(["init", &s3]);
    let r = cli.json(["sync", &path(&local), &s3]);
    assert_eq!(
        r["snapshots_copied"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    assert_restores(&cli, &s3, &id, &img, w);
    assert_verifies(&cli, &s3);
    let back = w.join("back");
    cli.json(["init", &format!("file://{}", back.display())]);
    cli.json(["sync", &s3, &path(&back)]);
    assert_restores(&cli, &path(&back), &id, &img, w);
    // S3 → S3 (two prefixes, each its own default cache); --cache-dir would be ambiguous.
    let s3_copy = sw.location("copy");
    cli.json(["init", &s3_copy]);
    cli.json(["sync", &s3, &s3_copy]);
    assert_restores(&cli, &s3_copy, &id, &img, w);
    cli.run(["--cache-dir", &path(&w.join("c")), "sync", &s3, &s3_copy])
        .expect_code(2)
        .stderr_has("both sides are in S3");

    // Seeds: exported from S3, imported into a new S3 prefix (created by the import).
    let bundle = w.join("bundle");
    cli.json(["seed", "export", &s3, &path(&bundle)]);
    let seeded = sw.location("seeded");
    cli.json(["seed", "import", &path(&bundle), &seeded]);
    assert_restores(&cli, &seeded, &id, &img, w);
    assert_verifies(&cli, &seeded);

    // `tessera serve` fronting the S3 repository: a pull from it and a push into it.
    let token = tessera_tests::token_file(w, "s3-serve-token-1234567890");
    let mut served = cli
        .cmd([
            "serve",
            &s3,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            &path(&token),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tessera serve");
    let mut line = String::new();
    BufReader::new(served.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the banner");
    let kill = tessera_tests::KillOnDrop(Some(served));
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_string();
    let pulled = w.join("pulled");
    cli.json(["init", &path(&pulled)]);
    cli.json(["sync", &url, &path(&pulled), "--token-file", &path(&token)]);
    assert_restores(&cli, &path(&pulled), &id, &img, w);
    mutate(&img, &mut gen, 5, 100_000, (0, 1, 1));
    let pushed = snapshot_id(&backup(&cli, &path(&local), "vm", &img, &[]));
    cli.json(["sync", &path(&local), &url, "--token-file", &path(&token)]);
    assert_restores(&cli, &s3, &pushed, &img, w);
    assert_verifies(&cli, &s3);
    drop(kill);

    // The same server with a tokens file: a read token pulls from the bucket; a backup token
    // for other series is refused (403) and publishes nothing.
    let tokens = w.join("tokens");
    let read = tessera_tests::token_add(&tokens, "read", "*", "puller", None);
    let backup_db = tessera_tests::token_add(&tokens, "backup", "db*", "db-backup", None);
    let read_f = tessera_tests::token_file_named(w, "read.tok", &read);
    let backup_f = tessera_tests::token_file_named(w, "backup.tok", &backup_db);
    let mut served = cli
        .cmd([
            "serve",
            &s3,
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            &path(&tokens),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tessera serve --tokens");
    let mut line = String::new();
    BufReader::new(served.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the banner");
    let _kill = tessera_tests::KillOnDrop(Some(served));
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_string();
    let pulled = w.join("pulled-read");
    cli.json(["init", &path(&pulled)]);
    cli.json(["sync", &url, &path(&pulled), "--token-file", &path(&read_f)]);
    assert_restores(&cli, &path(&pulled), &pushed, &img, w);
    mutate(&img, &mut gen, 5, 100_000, (0, 1, 1));
    backup(&cli, &path(&local), "vm", &img, &[]);
    let bucket_before = ids(&cli, &s3);
    let denied = cli.run([
        "sync",
        &path(&local),
        &url,
        "--token-file",
        &path(&backup_f),
    ]);
    denied.expect_code(1).stderr_has("403");
    assert_eq!(ids(&cli, &s3), bucket_before, "a refused push published");
    assert_verifies(&cli, &s3);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one failure per paragraph")]
fn bad_input_fails_with_its_kind_and_writes_nothing() {
    let sw = Seaweed::start("badcli");
    let cli = CliClient::new(&sw);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("repo");
    cli.json(["init", &repo]);
    let mut gen = DataGen::new(seed("s3_cli_bad_input"));
    let img = w.join("d.raw");
    make_image(&img, ImageSpec::mixed(4 * MIB), &mut gen);
    backup(&cli, &repo, "s", &img, &[]);
    let cache = w.join("inspect");
    let st = storage(&sw, &repo, &cache);
    let before = bucket_listing(&*st.backend);
    let disk = format!("d0={}", img.display());

    // Each failure: exit code and --json kind; the secret never shows; nothing is written.
    let check = |client: &CliClient, args: &[&str], code: i32, kind: &str, needle: &str| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = client.run(&all);
        out.expect_code(code);
        let v = out.json();
        assert_eq!(v["kind"], kind, "{out}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{out}");
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "{out}"
        );
        assert_eq!(
            bucket_listing(&*st.backend),
            before,
            "{out} wrote to the bucket"
        );
    };
    let with = |endpoint: &str, key: &str, secret: &str| {
        CliClient::with_env(vec![
            ("TESSERA_S3_ENDPOINT", endpoint.to_string()),
            ("AWS_ACCESS_KEY_ID", key.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ])
    };
    let backup_args = ["backup", repo.as_str(), "--series", "s", disk.as_str()];
    check(
        &with("http://127.0.0.1:1", KEY_ID, SECRET),
        &backup_args,
        1,
        "failed",
        "cannot connect to http://127.0.0.1:1",
    );
    // Plain HTTP off loopback: refused before any request, unless --s3-insecure-http
    // (then the unroutable documentation address fails to connect instead).
    check(
        &with("http://192.0.2.1:8333", KEY_ID, SECRET),
        &backup_args,
        2,
        "usage",
        "refusing a plain-HTTP S3 endpoint that is not a loopback address",
    );
    let mut insecure = vec!["--s3-insecure-http"];
    insecure.extend_from_slice(&backup_args);
    let out = with("http://192.0.2.1:8333", KEY_ID, SECRET).run(&insecure);
    assert!(
        !out.stderr.contains("plain-HTTP"),
        "the opt-in did not lift the refusal: {out}"
    );
    check(
        &with(&sw.endpoint, KEY_ID, "wrong-secret"),
        &backup_args,
        5,
        "refused",
        "refused the credentials",
    );
    check(
        &with(&sw.endpoint, "nobody", SECRET),
        &backup_args,
        5,
        "refused",
        "refused the credentials",
    );
    check(
        &CliClient::with_env(vec![("TESSERA_S3_ENDPOINT", sw.endpoint.clone())]),
        &backup_args,
        2,
        "usage",
        "no S3 credentials found",
    );
    check(
        &cli,
        &["backup", "s3://no-such-bucket/x", "--series", "s", &disk],
        2,
        "usage",
        "bucket \"no-such-bucket\" does not exist",
    );
    check(
        &cli,
        &["list", "s3://Bad_Bucket/x"],
        2,
        "usage",
        "not an S3 repository location",
    );
    check(
        &cli,
        &["list", "ftp://host/x"],
        2,
        "usage",
        "not a repository location",
    );
    check(
        &cli,
        &["--s3-endpoint", "http://user:pw@127.0.0.1:1", "list", &repo],
        2,
        "usage",
        "without a path or user name",
    );
    // --s3-endpoint wins over the environment; --s3-path-style=false asks for
    // BUCKET.127.0.0.1, which does not resolve: it fails, naming the endpoint.
    check(
        &cli,
        &["--s3-endpoint", "http://127.0.0.1:1", "list", &repo],
        1,
        "failed",
        "cannot connect",
    );
    let out = cli.run(["--s3-path-style=false", "list", &repo]);
    assert_ne!(out.code, 0, "{out}");
    cli.run(["--s3-path-style", "--s3-region", "us-east-1", "list", &repo])
        .ok();
    // Credentials are never taken from the command line.
    let out = cli.run(["--s3-secret-access-key", SECRET, "list", &repo]);
    out.expect_code(2);

    // A prefix holding something else: not a repository (open), not empty (init).
    let foreign_st = storage(&sw, &sw.location("foreign"), &w.join("foreign-cache"));
    foreign_st
        .backend
        .put_bytes(
            &tessera_engine::storage::ObjectKey::from_listed("notes.txt".into()),
            PutMode::Create,
            b"hello",
        )
        .unwrap();
    let foreign_before = bucket_listing(&*foreign_st.backend);
    for args in [
        vec!["list", "s3://badcli/foreign"],
        vec!["backup", "s3://badcli/foreign", "--series", "s", &disk],
        vec!["init", "s3://badcli/foreign"],
    ] {
        let out = cli.run(&args);
        out.expect_code(2);
        assert!(
            out.stderr
                .contains("s3://badcli/foreign is not a tessera repository")
                || out.stderr.contains("s3://badcli/foreign already exists"),
            "{out}"
        );
        assert_eq!(
            bucket_listing(&*foreign_st.backend),
            foreign_before,
            "{out} wrote"
        );
    }

    // Credentials from a ~/.aws profile (AWS_PROFILE selects it).
    let profiled = CliClient::with_env(vec![
        ("TESSERA_S3_ENDPOINT", sw.endpoint.clone()),
        ("AWS_PROFILE", "backup".to_string()),
    ]);
    std::fs::create_dir_all(profiled.home().join(".aws")).unwrap();
    std::fs::write(
        profiled.home().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n\n[backup]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    profiled.json(["list", &repo]);

    // A truncated pack is damage named by verify; a truncated config stops every command.
    let pack = st.backend.list("packs/").unwrap().remove(0);
    let bytes = st.backend.get(&pack).unwrap();
    st.backend
        .put_bytes(&pack, PutMode::Replace, &bytes[..bytes.len() / 3])
        .unwrap();
    let out = cli.run(["--json", "verify", &repo]);
    out.expect_code(4);
    assert!(
        out.stdout.contains(&pack.as_pack().unwrap().to_hex()),
        "{out}"
    );
    let config = tessera_engine::storage::ObjectKey::config();
    let whole = st.backend.get(&config).unwrap();
    st.backend
        .put_bytes(&config, PutMode::Replace, &whole[..10])
        .unwrap();
    let damaged = bucket_listing(&*st.backend);
    for args in [vec!["list", repo.as_str()], backup_args.to_vec()] {
        let out = cli.run(&args);
        out.expect_code(4)
            .stderr_has("repository config of s3://badcli/repo is unreadable");
        assert_eq!(bucket_listing(&*st.backend), damaged, "{out} wrote");
    }
}

/// An encrypted repository in a bucket: init with a passphrase (`TESSERA_PASSPHRASE`) and
/// the recovery key in a file, backup, restore byte for byte and verify; a second client
/// with an empty cache rebuilds its index from the bucket (sealed snapshot headers) and
/// restores too; the bucket holds key slots and no snapshot in the clear; a wrong
/// passphrase exits 6 and writes nothing.
#[test]
fn an_encrypted_repository_lives_in_a_bucket() {
    let sw = Seaweed::start("enc");
    let with_passphrase = |p: &str| {
        let mut env = sw.env();
        env.push(("TESSERA_PASSPHRASE", p.to_string()));
        CliClient::with_env(env)
    };
    let cli = with_passphrase("correct horse battery staple");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("vault/vm");
    let recovery = w.join("recovery.key");
    let v = cli.json([
        "init",
        &repo,
        "--encryption",
        "aes-256-gcm",
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
        "--recovery-key-file",
        &path(&recovery),
    ]);
    assert_eq!(v["encryption"], "aes-256-gcm", "{v}");
    let mut gen = DataGen::new(seed("s3_cli_encrypted"));
    let raw = w.join("disk.raw");
    make_image(&raw, ImageSpec::mixed(12 * MIB), &mut gen);
    let disk = format!("confidential-disk={}", raw.display());
    let first = snapshot_id(&cli.json(["backup", &repo, "--series", "vm", &disk]));
    assert_restores(&cli, &repo, &first, &raw, w);
    assert_verifies(&cli, &repo);

    let inspect = storage(&sw, &repo, &w.join("inspect-cache"));
    let listing = bucket_listing(&*inspect.backend);
    assert!(
        listing.keys().any(|k| k.starts_with("keys/")),
        "no key slot in the bucket: {listing:?}"
    );
    let snapshot = listing
        .keys()
        .find(|k| k.starts_with("snapshots/"))
        .expect("a snapshot object");
    let bytes = inspect
        .backend
        .get(&tessera_engine::storage::ObjectKey::from_listed(
            snapshot.clone(),
        ))
        .unwrap();
    assert!(
        !bytes.windows(17).any(|b| b == b"confidential-disk"),
        "the disk name is in the clear in the bucket"
    );

    // Another machine: empty cache, same passphrase.
    let other = with_passphrase("correct horse battery staple");
    assert_eq!(ids(&other, &repo), std::slice::from_ref(&first));
    assert_restores(&other, &repo, &first, &raw, w);

    // It publishes a second snapshot; the first machine's existing cache catches up
    // (cataloguing a sealed snapshot) and restores it; after the other forgets the first,
    // the first machine's cache drops it and still verifies.
    mutate(&raw, &mut gen, 8, 64 * 1024, (1, 2, 2));
    let second = snapshot_id(&other.json(["backup", &repo, "--series", "vm", &disk]));
    assert_eq!(ids(&cli, &repo), [first.clone(), second.clone()]);
    assert_restores(&cli, &repo, &second, &raw, w);
    other.json(["forget", &repo, &first]);
    assert_eq!(ids(&cli, &repo), std::slice::from_ref(&second));
    assert_verifies(&cli, &repo);

    // A local copy sharing the bucket repository's keys (init --keys-from an s3://
    // location): sync moves the sealed records and snapshot files verbatim.
    a_local_copy_shares_the_keys(&cli, &repo, w, &second, &raw);

    // Key slots of a repository in a bucket: add a passphrase, open with it, remove it.
    key_slots_change_in_a_bucket(
        &cli,
        &with_passphrase("a second passphrase"),
        &repo,
        w,
        &second,
    );

    let wrong = with_passphrase("not the passphrase");
    let before = bucket_listing(&*inspect.backend);
    let out = wrong.run([
        "backup",
        &repo,
        "--series",
        "x",
        &format!("d0={}", raw.display()),
    ]);
    out.expect_code(6);
    assert!(!out.stderr.contains("not the passphrase"), "{out}");
    assert_eq!(
        bucket_listing(&*inspect.backend),
        before,
        "a wrong passphrase wrote to the bucket"
    );
}

/// `tessera files` (SPEC.md §24) on an S3 repository: a tree made by `mkfs.ext4 -d`, backed
/// up twice with one file changed (through `debugfs -w`), read back through `files ls`,
/// `cat`, `get` (large files through the parallel ranged reads) and `find`, with the local
/// cache deleted in between; the oracle is the source tree.
#[test]
fn files_inside_snapshots_of_an_s3_repository() {
    use tessera_tests::fs_images::{assert_trees_equal, debugfs_w, mkfs_ext, TreeCompare};
    let sw = Seaweed::start("files");
    let cli = CliClient::new(&sw);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let repo = sw.location("vms/files");
    cli.json(["init", &repo]);
    let mut gen = DataGen::new(seed("s3_cli_files"));
    let src = w.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("var/lib")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"s3-guest\n").unwrap();
    std::fs::write(
        src.join("var/lib/big.bin"),
        gen.bytes(tessera_tests::Fill::Random, 24 << 20),
    )
    .unwrap();
    let image = w.join("fs.img");
    mkfs_ext(&image, &src, "64M", &[]);
    backup(&cli, &repo, "fs", &image, &[]);
    let new_host = w.join("hostname-2");
    std::fs::write(&new_host, b"renamed\n").unwrap();
    debugfs_w(
        &image,
        &[
            "rm /etc/hostname".to_string(),
            format!("write {} /etc/hostname", new_host.display()),
        ],
    );
    backup(&cli, &repo, "fs", &image, &[]);
    let _ = std::fs::remove_dir_all(cli.cache_home());

    let listing = cli.json(["files", "ls", &repo, "latest@fs:/etc"]);
    assert_eq!(listing["entries"][0]["name"], "hostname", "{listing}");
    let cat = cli
        .cmd(["files", "cat", &repo, "latest@fs:/etc/hostname"])
        .output()
        .unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(cat.stdout, b"renamed\n");
    let out = w.join("out");
    cli.json(["files", "get", &repo, "latest@fs:/var", &path(&out)]);
    assert_trees_equal(&src.join("var"), &out, &TreeCompare::default());
    let found = cli.json(["files", "find", &repo, "--series", "fs", "/etc/hostname"]);
    let changes: Vec<&str> = found["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["found"][0]["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["added", "changed"], "{found}");
}
