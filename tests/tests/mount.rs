//! `tessera mount` (SPEC §24.8) through the real kernel: FUSE (`/dev/fuse`, `fusermount3`),
//! then loop mounts of the files it shows. A disk with an MBR table holding an XFS
//! partition (a filesystem tessera has no reader of: the mount path is how its files are
//! reached) and an ext4 one is backed up; the mounted disk file must equal the image byte
//! for byte, each partition file must loop-mount read-only with its files intact, a
//! snapshot forgotten and compacted away while mounted must keep reading (the mount's
//! reader lease), and SIGINT must unmount cleanly. Needs root (loop mounts), as the
//! suite does everywhere here; fails rather than skips without it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_tests::fs_images::{mkfs_ext, poke, run_tool, running_as_root};
use tessera_tests::{
    back_up_a_damaged_victim, init_repo, sha256_file, signal, snapshot_id, tessera, tessera_cmd,
    wait_until, DataGen, KillOnDrop,
};

const MIB: u64 = 1 << 20;

/// Whether `path` is a mountpoint now.
fn mounted(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == path.to_str())
}

/// Unmounts a loop mount when dropped, so a failing test leaves no mount behind.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(file: &Path, at: &Path, options: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        run_tool(
            Command::new("mount")
                .args(["-o", options])
                .arg(file)
                .arg(at),
        );
        Self(at.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An XFS filesystem image of `bytes` holding `files` (made through a loop mount).
fn xfs_image(dir: &Path, bytes: u64, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let img = dir.join("xfs.img");
    fs::File::create(&img).unwrap().set_len(bytes).unwrap();
    run_tool(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img));
    {
        let m = LoopMount::new(&img, &dir.join("xfs-rw"), "loop");
        for (name, data) in files {
            fs::write(m.0.join(name), data).unwrap();
        }
    }
    img
}

/// Writes the partition table `table` (an `sfdisk` script) onto `disk`.
fn sfdisk(disk: &Path, table: &str) {
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (install it with scripts/ensure-deps.sh)");
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), table.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
}

/// How the mount in `guard` ended, which it must within 10 s of `what`.
fn exited_within_10s(guard: &mut KillOnDrop, what: &str) -> std::process::ExitStatus {
    let child = guard.0.as_mut().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "tessera mount kept running after {what}"
    );
    child.wait().unwrap()
}

/// The directory of the first snapshot of `series` under `mnt`.
fn first_snapshot(mnt: &Path, series: &str) -> PathBuf {
    fs::read_dir(mnt.join(series))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Partition sizes of [`partitioned_disk`]: XFS (300 MiB, its least) and ext4.
const XFS_LEN: u64 = 300 * MIB;
const EXT_LEN: u64 = 8 * MIB;

/// A disk with an MBR table: partition 1 XFS holding `hello.txt` and `big.bin` (returned),
/// partition 2 ext4 holding `etc/hostname`.
fn partitioned_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (xfs_start, xfs_len) = (MIB, XFS_LEN);
    let (ext_start, ext_len) = (xfs_start + xfs_len, EXT_LEN);
    let disk = dir.join("disk.img");
    fs::File::create(&disk)
        .unwrap()
        .set_len(ext_start + ext_len + MIB)
        .unwrap();
    let table = format!(
        "label: dos\nstart={}, size={}, type=83\nstart={}, size={}, type=83\n",
        xfs_start / 512,
        xfs_len / 512,
        ext_start / 512,
        ext_len / 512
    );
    sfdisk(&disk, &table);
    let big: Vec<u8> = (0..3 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    let xfs = xfs_image(
        dir,
        xfs_len,
        &[
            ("hello.txt", b"hello from xfs\n".to_vec()),
            ("big.bin", big.clone()),
        ],
    );
    poke(&disk, xfs_start, &fs::read(&xfs).unwrap());
    let src = dir.join("ext-src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"vm1\n").unwrap();
    let ext = dir.join("ext.img");
    mkfs_ext(&ext, &src, &format!("{}k", ext_len / 1024), &[]);
    poke(&disk, ext_start, &fs::read(&ext).unwrap());
    (disk, big)
}

#[test]
fn snapshots_mount_as_files_that_loop_mount_and_survive_a_forget() {
    assert!(
        running_as_root(),
        "this test loop-mounts images: run the suite as root (scripts/test.sh does here)"
    );
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (disk, big) = partitioned_disk(dir);
    let disk_sha = sha256_file(&disk);

    let (repo, id) = backed_up(dir, &disk);
    let mnt = dir.join("mnt");
    let mut guard = start_mount(&repo, &mnt, "vm");
    let pid = guard.0.as_ref().unwrap().id();
    let snaps: Vec<String> = fs::read_dir(mnt.join("vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].ends_with(&id[..12]), "{snaps:?} names {id}");
    let snap_dir = mnt.join("vm").join(&snaps[0]);
    let mut names: Vec<String> = fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["d.part1.raw", "d.part2.raw", "d.raw"]);
    assert_eq!(
        sha256_file(&snap_dir.join("d.raw")),
        disk_sha,
        "the mounted disk equals the image"
    );
    assert_eq!(
        fs::metadata(snap_dir.join("d.part1.raw")).unwrap().len(),
        XFS_LEN
    );
    assert_eq!(
        fs::metadata(snap_dir.join("d.part2.raw")).unwrap().len(),
        EXT_LEN
    );
    assert!(
        fs::write(snap_dir.join("d.raw"), b"x").is_err(),
        "the mount is read-only"
    );

    // Kernel filesystems from the partition files: XFS (no in-process reader) and ext4.
    {
        let x = LoopMount::new(&snap_dir.join("d.part1.raw"), &dir.join("x"), "loop,ro");
        assert_eq!(
            fs::read(x.0.join("hello.txt")).unwrap(),
            b"hello from xfs\n"
        );
        assert_eq!(fs::read(x.0.join("big.bin")).unwrap(), big);
        let e = LoopMount::new(&snap_dir.join("d.part2.raw"), &dir.join("e"), "loop,ro");
        assert_eq!(fs::read(e.0.join("etc/hostname")).unwrap(), b"vm1\n");
    }

    // Forgotten and compacted away while mounted: the mount's lease keeps it readable.
    tessera(["forget", repo.to_str().unwrap(), &id]).ok();
    tessera([
        "compact",
        repo.to_str().unwrap(),
        "--grace",
        "0",
        "--max-unused",
        "0",
    ])
    .ok();
    assert!(tessera_tests::list_ids(&repo).is_empty());
    assert_eq!(
        sha256_file(&snap_dir.join("d.raw")),
        disk_sha,
        "a snapshot forgotten while mounted keeps reading"
    );

    // While a loop device still reads from it, SIGINT unmounts nothing: the mount keeps
    // serving (cutting it off would wreck the loop-mounted filesystem), and says why.
    {
        let e = LoopMount::new(&snap_dir.join("d.part2.raw"), &dir.join("e2"), "loop,ro");
        signal(pid, "INT");
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            guard.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "tessera mount exited while its mountpoint was busy"
        );
        assert!(mounted(&mnt));
        assert_eq!(fs::read(e.0.join("etc/hostname")).unwrap(), b"vm1\n");
    }
    // Not busy any more: SIGINT unmounts and exits 0.
    signal(pid, "INT");
    let status = guard.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "tessera mount exited {status}");
    assert!(!mounted(&mnt), "still mounted after SIGINT");
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0);
}

/// A new repository `DIR/repo` with one backup of `disk` (series `vm`, disk `d`), and the
/// snapshot's id.
fn backed_up(dir: &Path, disk: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    let disk_arg = format!("d={}", disk.display());
    let out = tessera([
        "--json",
        "backup",
        repo.to_str().unwrap(),
        "--series",
        "vm",
        &disk_arg,
    ]);
    out.ok();
    let id = snapshot_id(&out.json());
    (repo, id)
}

/// Starts `tessera mount REPO MNT` and waits until `MNT/SERIES` shows.
fn start_mount(repo: &Path, mnt: &Path, series: &str) -> KillOnDrop {
    start_mount_logging(repo, mnt, series, Stdio::inherit())
}

/// [`start_mount`] with the mount's stderr sent to `stderr`.
fn start_mount_logging(repo: &Path, mnt: &Path, series: &str, stderr: Stdio) -> KillOnDrop {
    fs::create_dir_all(mnt).unwrap();
    let child = tessera_cmd(["mount".as_ref(), repo.as_os_str(), mnt.as_os_str()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting tessera mount");
    let guard = KillOnDrop(Some(child));
    assert!(
        wait_until(Duration::from_secs(30), || mnt.join(series).is_dir()),
        "tessera mount never showed {series}"
    );
    guard
}

#[test]
fn a_snapshot_forgotten_before_it_was_opened_is_gone_and_an_outside_unmount_ends_the_mount() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let img = dir.join("small.img");
    fs::write(&img, (0..MIB).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).unwrap();
    let (repo, id) = backed_up(dir, &img);
    let mnt = dir.join("mnt");
    let mut guard = start_mount(&repo, &mnt, "vm");
    let snap = first_snapshot(&mnt, "vm");
    tessera(["forget", repo.to_str().unwrap(), &id]).ok();
    let err = fs::read_dir(&snap)
        .and_then(|mut d| d.next().transpose())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");

    // Unmounted from outside: the process ends by itself (and with it its reader lease).
    run_tool(Command::new("fusermount3").arg("-u").arg(&mnt));
    let status = exited_within_10s(&mut guard, "an outside unmount");
    assert!(status.success(), "tessera mount exited {status}");
}

#[test]
fn a_mountpoint_that_is_not_a_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let file = t.path().join("file");
    fs::write(&file, b"").unwrap();
    let out = tessera(["mount", repo.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("not a directory"), "{out}");
}

/// `lseek(SEEK_DATA / SEEK_HOLE)` on `file` from `offset`: the offset found, or the errno.
fn seek(file: &fs::File, offset: u64, whence: nix::unistd::Whence) -> Result<u64, nix::Error> {
    nix::unistd::lseek(file, i64::try_from(offset).unwrap(), whence)
        .map(|at| u64::try_from(at).unwrap())
}

/// Data and holes of a file as `qemu-img map` sees them (it asks with SEEK_DATA/SEEK_HOLE):
/// `(start, length, data)` runs, neighbours of one kind merged.
fn qemu_map(file: &Path) -> Vec<(u64, u64, bool)> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(file)
        .output()
        .expect("qemu-img (install it with scripts/ensure-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for m in map {
        let (start, len, data) = (
            m["start"].as_u64().unwrap(),
            m["length"].as_u64().unwrap(),
            m["data"].as_bool().unwrap(),
        );
        match runs.last_mut() {
            Some(last) if last.2 == data && last.0 + last.1 == start => last.1 += len,
            _ => runs.push((start, len, data)),
        }
    }
    runs
}

#[test]
fn mounted_disks_and_partitions_show_their_unstored_zero_blocks_as_holes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // A disk of 64 MiB + 4 KiB (its last 64 KiB block is short) with an MBR partition from
    // 1 MiB to 41 MiB + 512 (ending inside a block). Stored (non-zero) 64 KiB blocks: the
    // table's, 1 MiB + [0, 64 KiB) and 1 MiB + [20 MiB, 20 MiB + 100 KiB) (two blocks)
    // inside the partition, and the disk's short last block.
    let size = 64 * MIB + 4096;
    let disk = dir.join("sparse.img");
    fs::File::create(&disk).unwrap().set_len(size).unwrap();
    sfdisk(&disk, "label: dos\nstart=2048, size=81921, type=83\n");
    let part_len = 40 * MIB + 512;
    let ones = |n: u64| vec![0x5a_u8; n as usize];
    poke(&disk, MIB, &ones(64 << 10));
    poke(&disk, 21 * MIB, &ones(100 << 10));
    poke(&disk, size - 10, &ones(10));
    let (repo, _) = backed_up(dir, &disk);
    let mnt = dir.join("mnt");
    let _guard = start_mount(&repo, &mnt, "vm");
    let snap = first_snapshot(&mnt, "vm");
    let whole = snap.join("d.raw");
    let part = snap.join("d.part1.raw");
    assert_eq!(
        sha256_file(&whole),
        sha256_file(&disk),
        "the disk reads back"
    );

    let k64 = 64 << 10;
    let f = fs::File::open(&whole).unwrap();
    let (data, hole) = (nix::unistd::Whence::SeekData, nix::unistd::Whence::SeekHole);
    assert_eq!(seek(&f, 0, data), Ok(0));
    assert_eq!(seek(&f, 0, hole), Ok(k64), "the table's block is stored");
    assert_eq!(seek(&f, k64, data), Ok(MIB));
    assert_eq!(seek(&f, MIB + 5, hole), Ok(MIB + k64));
    assert_eq!(seek(&f, MIB + k64, data), Ok(21 * MIB));
    assert_eq!(seek(&f, 21 * MIB, hole), Ok(21 * MIB + 2 * k64));
    assert_eq!(seek(&f, 21 * MIB + 2 * k64, data), Ok(64 * MIB));
    assert_eq!(
        seek(&f, 64 * MIB, data),
        Ok(64 * MIB),
        "inside data: the offset"
    );
    assert_eq!(seek(&f, size - 1, hole), Ok(size), "the end is a hole");
    assert_eq!(seek(&f, size, data), Err(nix::Error::ENXIO));
    assert_eq!(seek(&f, size, hole), Err(nix::Error::ENXIO));

    // The partition's offsets are its own.
    let p = fs::File::open(&part).unwrap();
    assert_eq!(seek(&p, 0, data), Ok(0));
    assert_eq!(seek(&p, 0, hole), Ok(k64));
    assert_eq!(seek(&p, k64, data), Ok(20 * MIB));
    assert_eq!(
        seek(&p, 20 * MIB + 2 * k64, data),
        Err(nix::Error::ENXIO),
        "none after"
    );
    assert_eq!(seek(&p, 20 * MIB + 2 * k64, hole), Ok(20 * MIB + 2 * k64));
    assert_eq!(seek(&p, part_len - 1, hole), Ok(part_len - 1));
    assert_eq!(seek(&p, part_len, hole), Err(nix::Error::ENXIO));

    // A real client: qemu-img's map of the mounted files.
    assert_eq!(
        qemu_map(&whole),
        [
            (0, k64, true),
            (k64, MIB - k64, false),
            (MIB, k64, true),
            (MIB + k64, 20 * MIB - k64, false),
            (21 * MIB, 2 * k64, true),
            (21 * MIB + 2 * k64, 43 * MIB - 2 * k64, false),
            (64 * MIB, 4096, true),
        ]
    );
    assert_eq!(
        qemu_map(&part),
        [
            (0, k64, true),
            (k64, 20 * MIB - k64, false),
            (20 * MIB, 2 * k64, true),
            (20 * MIB + 2 * k64, 20 * MIB - 2 * k64 + 512, false),
        ]
    );
}

#[test]
fn a_directory_longer_than_one_readdir_reply_lists_every_entry_once() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // 300 disks in one snapshot: about 70 names fit one reply, so the kernel asks again
    // and again from the offsets the previous replies gave.
    let img = dir.join("tiny.img");
    fs::write(&img, vec![7u8; 4096]).unwrap();
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    let mut args = vec![
        "backup".to_string(),
        repo.to_str().unwrap().to_string(),
        "--series".to_string(),
        "vm".to_string(),
    ];
    let names: Vec<String> = (0..300)
        .map(|i| format!("disk-with-a-long-name-{i:03}"))
        .collect();
    args.extend(names.iter().map(|n| format!("{n}={}", img.display())));
    tessera(&args).ok();
    let mnt = dir.join("mnt");
    let _guard = start_mount(&repo, &mnt, "vm");
    let snap = first_snapshot(&mnt, "vm");
    let mut listed: Vec<String> = fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let want: Vec<String> = names.iter().map(|n| format!("{n}.raw")).collect();
    assert_eq!(listed, want);
    assert_eq!(
        fs::read(snap.join("disk-with-a-long-name-299.raw")).unwrap(),
        vec![7u8; 4096]
    );
}

#[test]
fn failed_reads_of_a_damaged_chunk_fail_with_eio_and_are_not_all_logged() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    back_up_a_damaged_victim(&repo, &dir.join("victim.img"), &mut DataGen::new(18));
    let log = dir.join("mount.log");
    let mnt = dir.join("mnt");
    let mut guard = start_mount_logging(
        &repo,
        &mnt,
        "victim",
        Stdio::from(fs::File::create(&log).unwrap()),
    );
    let disk = first_snapshot(&mnt, "victim").join("d.raw");
    for _ in 0..30 {
        let err = fs::read(&disk).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    signal(guard.0.as_ref().unwrap().id(), "INT");
    exited_within_10s(&mut guard, "SIGINT");
    let text = fs::read_to_string(&log).unwrap();
    let failures = text
        .lines()
        .filter(|l| l.starts_with("tessera mount: ") && !l.contains("further failed reads"))
        .count();
    assert!(
        (1..=10).contains(&failures),
        "{failures} failed reads logged of at least 30:\n{text}"
    );
    assert!(
        text.contains("further failed reads this minute are counted, not shown"),
        "{text}"
    );
}
