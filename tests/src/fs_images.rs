//! Real filesystem images for the `tessera files` tests (`tests/tests/files_explore.rs`,
//! `tests/tests/files_fat.rs`): made with the distribution's own tools (`mkfs.ext4 -d`,
//! `debugfs -w`, `sfdisk`, `sgdisk`, `mkfs.xfs`, `mkfs.ntfs`, `mkfs.vfat` and mtools), never
//! by mounting; and the oracles that compare what `files get` wrote with the source tree,
//! check a `files get --tar` stream while `tar x` unpacks it, and damage one chosen chunk in
//! a repository's packs.
//!
//! Every tool is installed by `scripts/ensure-deps.sh`; a missing one fails the test with a
//! message naming the script.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use crate::{exit_code, hex, tessera_cmd};

// ---------------------------------------------------------------------------------------
// Running tools
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to completion and asserts that it succeeded; returns its output.
#[track_caller]
pub fn run_tool(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {shown}: {e} (install the test tools with scripts/ensure-deps.sh)")
    });
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mkfs.ext4 -q -F EXTRA... -d SRC IMAGE SIZE` (`EXTRA` may hold `-t ext2`, `-b 1024`,
/// `-O inline_data`...): a new image file populated from `src` without mounting.
pub fn mkfs_ext(image: &Path, src: &Path, size: &str, extra: &[&str]) {
    let _ = fs::remove_file(image);
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(extra)
            .arg("-d")
            .arg(src)
            .arg(image)
            .arg(size),
    );
}

/// `debugfs -R REQUEST IMAGE` (read-only): its stdout.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = run_tool(Command::new("debugfs").arg("-R").arg(request).arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `commands` in one `debugfs -w -f FILE IMAGE`, asserting that none reported an error
/// (debugfs exits 0 regardless; its errors go to stderr, after its version banner).
#[track_caller]
pub fn debugfs_w(image: &Path, commands: &[String]) {
    let script = image.with_extension("debugfs-cmds");
    fs::write(&script, commands.join("\n") + "\n").expect("writing the debugfs script");
    let out = run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    assert!(
        errors.is_empty(),
        "debugfs -w {} reported errors for {commands:?}: {errors:?}",
        image.display()
    );
    let _ = fs::remove_file(&script);
}

/// The block size of the ext filesystem in `image` (from `dumpe2fs -h`).
pub fn ext_block_size(image: &Path) -> u64 {
    let out = run_tool(Command::new("dumpe2fs").arg("-h").arg(image));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block size in dumpe2fs -h {}", image.display()))
}

/// The byte offset, inside `image`, of the inode record of `path` (`debugfs imap`).
pub fn inode_offset(image: &Path, path: &str) -> u64 {
    let text = debugfs(image, &format!("imap {path}"));
    let (block, offset) = text
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("located at block ")?;
            let (block, offset) = rest.split_once(", offset ")?;
            Some((
                block.parse::<u64>().ok()?,
                u64::from_str_radix(offset.trim().trim_start_matches("0x"), 16).ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("unexpected `debugfs imap {path}` output: {text:?}"));
    block * ext_block_size(image) + offset
}

/// The filesystem block holding logical block `logical` of `path` (`debugfs bmap`).
pub fn bmap(image: &Path, path: &str, logical: u64) -> u64 {
    let text = debugfs(image, &format!("bmap {path} {logical}"));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("unexpected `debugfs bmap {path} {logical}` output: {text:?}"))
}

/// Overwrites `bytes` at `offset` of the file at `path` (like `dd conv=notrunc`).
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all_at(bytes, offset)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `len` bytes of the file at `path` from `offset`.
pub fn peek(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    buf
}

/// Sets a path's access and modification times to `secs` (not following a symlink:
/// `touch -h`, which also never opens a FIFO).
pub fn set_mtime(path: &Path, secs: i64) {
    run_tool(
        Command::new("touch")
            .arg("-h")
            .arg("-d")
            .arg(format!("@{secs}"))
            .arg(path),
    );
}

/// Whether this process runs as root (owners are restored, device nodes can be made).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------------------
// Running tessera with binary output
// ---------------------------------------------------------------------------------------

/// A finished run of the binary with its stdout as bytes (`files cat`).
#[derive(Debug, Clone)]
pub struct RawOut {
    /// The arguments (for messages).
    pub args: Vec<String>,
    /// Exit code; `128 + signal` if it died of a signal.
    pub code: i32,
    /// Standard output, as written.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl RawOut {
    /// Panics, showing the command and stderr, unless the exit code is `code`; also
    /// whenever stderr shows a panic.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_no_panic(&self.stderr, &self.args);
        assert_eq!(
            self.code,
            code,
            "`tessera {}` exit {} (stdout {} bytes)\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout.len(),
            self.stderr
        );
        self
    }
}

/// Runs the binary to completion, keeping stdout as bytes.
pub fn tessera_raw<I, S>(args: I) -> RawOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = tessera_cmd(&args).output().expect("running tessera");
    RawOut {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        code: exit_code(output.status),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Panics if `stderr` shows a Rust panic (or a crash) of the command `args`.
#[track_caller]
pub fn assert_no_panic(stderr: &str, args: &[String]) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "`tessera {}` panicked:\n{stderr}",
        args.join(" ")
    );
}

// ---------------------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------------------

/// What one name in a tree is, as `lstat` sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its absolute path.
    pub path: PathBuf,
    /// `lstat`.
    pub meta: fs::Metadata,
    /// A symlink's target.
    pub target: Option<PathBuf>,
}

/// Every name under `root` (not `root` itself), keyed by its path relative to `root` as
/// bytes, without following symlinks.
pub fn scan_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        {
            let path = entry.expect("listing").path();
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let target = meta
                .file_type()
                .is_symlink()
                .then(|| fs::read_link(&path).expect("readlink"));
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .as_os_str()
                .as_bytes()
                .to_vec();
            let is_dir = meta.is_dir();
            out.insert(
                rel,
                Node {
                    path: path.clone(),
                    meta,
                    target,
                },
            );
            if is_dir {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The kind of a file as a word, for messages.
pub fn kind_name(t: fs::FileType) -> &'static str {
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else if t.is_socket() {
        "socket"
    } else {
        "other"
    }
}

/// What [`assert_trees_equal`] compares and skips.
#[derive(Debug, Clone, Default)]
pub struct TreeCompare<'a> {
    /// Relative paths left out on both sides (and everything below them).
    pub ignore: &'a [&'a str],
    /// Relative paths that only the actual tree has (`lost+found`), and everything below.
    pub only_in_actual: &'a [&'a str],
    /// Compare owners (uid, gid).
    pub owners: bool,
    /// Compare symlinks' own mtimes.
    pub symlink_times: bool,
}

fn under(rel: &[u8], prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        let p = p.as_bytes();
        rel == p || (rel.starts_with(p) && rel.get(p.len()) == Some(&b'/'))
    })
}

/// Asserts that the tree at `actual` holds what the tree at `expected` holds: the same
/// names, kinds, bytes, permission bits (with set-id and sticky bits), mtimes (seconds),
/// symlink targets, device numbers, owners (when asked) and hard-link structure (names that
/// are one inode in `expected` are one inode in `actual`, with the same link count, and
/// different inodes stay different).
#[track_caller]
pub fn assert_trees_equal(expected: &Path, actual: &Path, how: &TreeCompare<'_>) {
    let want: BTreeMap<Vec<u8>, Node> = scan_tree(expected)
        .into_iter()
        .filter(|(rel, _)| !under(rel, how.ignore))
        .collect();
    let got: BTreeMap<Vec<u8>, Node> = scan_tree(actual)
        .into_iter()
        .filter(|(rel, _)| !under(rel, how.ignore) && !under(rel, how.only_in_actual))
        .collect();
    let show = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let missing: Vec<String> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .map(show)
        .collect();
    let extra: Vec<String> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(show)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} vs {}: missing {missing:?}, unexpected {extra:?}",
        actual.display(),
        expected.display()
    );
    for (rel, w) in &want {
        let g = &got[rel];
        let name = show(rel);
        let (wt, gt) = (w.meta.file_type(), g.meta.file_type());
        assert_eq!(kind_name(wt), kind_name(gt), "kind of {name}");
        if !wt.is_symlink() {
            assert_eq!(
                format!("{:o}", w.meta.mode() & 0o7777),
                format!("{:o}", g.meta.mode() & 0o7777),
                "permission bits of {name}"
            );
        }
        if !wt.is_symlink() || how.symlink_times {
            assert_eq!(w.meta.mtime(), g.meta.mtime(), "mtime (seconds) of {name}");
        }
        if how.owners {
            assert_eq!(
                (w.meta.uid(), w.meta.gid()),
                (g.meta.uid(), g.meta.gid()),
                "owner of {name}"
            );
        }
        if wt.is_file() {
            crate::assert_same_file(&w.path, &g.path);
        }
        if wt.is_symlink() {
            assert_eq!(w.target, g.target, "symlink target of {name}");
        }
        if wt.is_char_device() || wt.is_block_device() {
            assert_eq!(w.meta.rdev(), g.meta.rdev(), "device number of {name}");
        }
    }
    // Hard links: group the expected names by inode; each group must be one inode in the
    // actual tree with the same link count, and different groups different inodes.
    let mut groups: BTreeMap<u64, Vec<&Vec<u8>>> = BTreeMap::new();
    for (rel, w) in &want {
        if w.meta.is_file() {
            groups.entry(w.meta.ino()).or_default().push(rel);
        }
    }
    let mut seen: HashMap<u64, String> = HashMap::new();
    for names in groups.values() {
        let first = &got[names[0]];
        for n in names {
            let g = &got[*n];
            assert_eq!(
                g.meta.ino(),
                first.meta.ino(),
                "{} and {} are one file in the source, not in {}",
                show(n),
                show(names[0]),
                actual.display()
            );
            assert_eq!(
                g.meta.nlink(),
                want[*n].meta.nlink(),
                "link count of {}",
                show(n)
            );
        }
        if let Some(other) = seen.insert(first.meta.ino(), show(names[0])) {
            panic!(
                "{} and {other} are different files in the source but one inode in {}",
                show(names[0]),
                actual.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A tar stream checked on its way to `tar x`
// ---------------------------------------------------------------------------------------

/// One member of a tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// Its name (the GNU long name when there is one).
    pub name: Vec<u8>,
    /// The type flag (`b'0'` file, `b'1'` hard link, `b'2'` symlink, `b'5'` directory...).
    pub kind: u8,
    /// The size in the header.
    pub size: u64,
    /// SHA-256 of a regular member's data (hex), unless it was compared with a source file.
    pub sha256: Option<String>,
}

/// A reader that copies everything it reads into `sink`.
/// A sink that went away (`tar` exited early) is noted, not an error: the caller reports
/// `tar`'s own failure.
struct Tee<R, W> {
    inner: R,
    sink: Option<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sink) = &mut self.sink {
            match sink.write_all(&buf[..n]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.sink = None,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

fn parse_octal(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        // GNU base-256.
        let mut v = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = (v << 8) | u64::from(*b);
        }
        return v;
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        0
    } else {
        u64::from_str_radix(text, 8).unwrap_or_else(|_| panic!("bad octal tar field {text:?}"))
    }
}

fn cstr(field: &[u8]) -> Vec<u8> {
    field.iter().take_while(|b| **b != 0).copied().collect()
}

/// Runs `tessera ARGS` (a `files get ... --tar -`), pipes its stdout into
/// `tar -x -f - -C DEST EXTRA...`, and parses the stream on the way: every header's checksum
/// is checked, and the data of the member named `compare.0` is compared byte for byte with
/// the file `compare.1` (so a member that `EXTRA` excludes from extraction is still checked).
/// Returns tessera's exit code and stderr, and the members.
pub fn tar_through(
    args: &[OsString],
    dest: &Path,
    extra: &[&str],
    compare: Option<(&str, &Path)>,
) -> (i32, String, Vec<TarMember>) {
    let errs = tempfile::NamedTempFile::new().expect("temp file");
    let mut producer = tessera_cmd(args)
        .stderr(Stdio::from(errs.reopen().expect("reopen")))
        .spawn()
        .expect("starting tessera");
    let tar_errs = tempfile::NamedTempFile::new().expect("temp file");
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(dest)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(tar_errs.reopen().expect("reopen")))
        .spawn()
        .expect("starting tar (install it with scripts/ensure-deps.sh)");
    let mut tee = Tee {
        inner: producer.stdout.take().expect("piped stdout"),
        sink: Some(tar.stdin.take().expect("piped stdin")),
    };
    let members = read_tar(&mut tee, compare);
    // The end: two zero blocks and the rest of the record, all copied to tar.
    io::copy(&mut tee, &mut io::sink()).expect("copying the end of the stream");
    drop(tee);
    let tar_status = tar.wait().expect("waiting for tar");
    let status = producer.wait().expect("waiting for tessera");
    let stderr = fs::read_to_string(errs.path()).unwrap_or_default();
    assert!(
        tar_status.success(),
        "tar -x failed ({tar_status}): {}\n(tessera stderr: {stderr})",
        fs::read_to_string(tar_errs.path()).unwrap_or_default()
    );
    (exit_code(status), stderr, members)
}

#[expect(
    clippy::too_many_lines,
    reason = "one pass over a tar: parse each header kind and check it against the source"
)]
fn read_tar(input: &mut impl Read, compare: Option<(&str, &Path)>) -> Vec<TarMember> {
    let mut members = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut header = [0u8; 512];
    let mut buf = vec![0u8; 1 << 20];
    let mut other = vec![0u8; 1 << 20];
    loop {
        if let Err(e) = input.read_exact(&mut header) {
            panic!("the tar stream ends inside a header or before its end blocks: {e}");
        }
        if header.iter().all(|b| *b == 0) {
            return members;
        }
        let stored = parse_octal(&header[148..156]);
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        assert_eq!(
            stored,
            sum,
            "tar header checksum of member {}",
            members.len()
        );
        let kind = header[156];
        let size = parse_octal(&header[124..136]);
        let padded = size.div_ceil(512) * 512;
        if kind == b'L' || kind == b'K' {
            let mut data = vec![0u8; usize::try_from(padded).expect("small")];
            input
                .read_exact(&mut data)
                .expect("reading a GNU long name");
            if kind == b'L' {
                long_name = Some(cstr(&data[..size as usize]));
            }
            continue;
        }
        let name = long_name.take().unwrap_or_else(|| cstr(&header[..100]));
        let mut member = TarMember {
            name,
            kind,
            size,
            sha256: None,
        };
        let has_data = matches!(kind, b'0' | 0 | b'7');
        if has_data {
            let watched = compare.filter(|(n, _)| member.name == n.as_bytes());
            let mut source = watched.map(|(_, p)| {
                File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
            });
            let mut hasher = Sha256::new();
            let mut left = size;
            let mut at = 0u64;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                input.read_exact(&mut buf[..n]).unwrap_or_else(|e| {
                    panic!(
                        "the tar stream ends inside {:?}: {e}",
                        String::from_utf8_lossy(&member.name)
                    )
                });
                match &mut source {
                    Some(src) => {
                        src.read_exact(&mut other[..n]).unwrap_or_else(|e| {
                            panic!(
                                "the member {:?} is longer than its source: {e}",
                                String::from_utf8_lossy(&member.name)
                            )
                        });
                        if buf[..n] != other[..n] {
                            let i = buf[..n]
                                .iter()
                                .zip(&other[..n])
                                .position(|(a, b)| a != b)
                                .unwrap_or(0);
                            panic!(
                                "tar member {:?} differs from its source first at byte {}",
                                String::from_utf8_lossy(&member.name),
                                at + i as u64
                            );
                        }
                    }
                    None => hasher.update(&buf[..n]),
                }
                left -= n as u64;
                at += n as u64;
            }
            if let Some(src) = &mut source {
                let mut one = [0u8; 1];
                assert_eq!(
                    src.read(&mut one).expect("reading the source"),
                    0,
                    "the member {:?} is shorter than its source",
                    String::from_utf8_lossy(&member.name)
                );
            } else {
                member.sha256 = Some(hex(&hasher.finalize()));
            }
            let mut pad = vec![0u8; (padded - size) as usize];
            input.read_exact(&mut pad).expect("reading padding");
        } else {
            assert_eq!(
                size,
                0,
                "a non-file member {:?} with data",
                String::from_utf8_lossy(&member.name)
            );
        }
        members.push(member);
    }
}

// ---------------------------------------------------------------------------------------
// Damaging one chunk
// ---------------------------------------------------------------------------------------

/// SHA-256 of the bytes `start..start+len` of `image` (clipped at its end): the digest a
/// plain repository stores that disk block under.
pub fn block_digest(image: &Path, start: u64, len: u64) -> [u8; 32] {
    let size = fs::metadata(image).expect("image metadata").len();
    let len = len.min(size - start);
    Sha256::digest(peek(image, start, len as usize)).into()
}

/// Flips a byte in the middle of the stored bytes of every pack record (SPEC.md §4) whose
/// digest is `digest`, walking each pack's records from its header to its footer; returns
/// how many records were damaged.
pub fn damage_chunk(repo: &Path, digest: &[u8; 32]) -> usize {
    let mut damaged = 0;
    for pack in crate::pack_files(repo) {
        let mut bytes = fs::read(&pack).expect("reading a pack");
        let len = bytes.len();
        let footer =
            u64::from_le_bytes(bytes[len - 32..len - 24].try_into().expect("8 bytes")) as usize;
        let mut at = 16usize;
        let mut changed = false;
        while at + 56 <= footer {
            assert_eq!(
                &bytes[at..at + 4],
                b"TREC",
                "a record header at {at} of {}",
                pack.display()
            );
            let stored =
                u32::from_le_bytes(bytes[at + 44..at + 48].try_into().expect("4 bytes")) as usize;
            if bytes[at + 8..at + 40] == digest[..] {
                bytes[at + 56 + stored / 2] ^= 0x5a;
                damaged += 1;
                changed = true;
            }
            at += 56 + stored;
        }
        if changed {
            fs::write(&pack, bytes).expect("writing a pack");
        }
    }
    damaged
}

// ---------------------------------------------------------------------------------------
// Running `tessera files`
// ---------------------------------------------------------------------------------------

/// `tessera files ARGS...`, checked for panics.
pub fn files(args: &[&str]) -> crate::Out {
    let mut all = vec!["files"];
    all.extend_from_slice(args);
    let out = crate::tessera(&all);
    assert_no_panic(&out.stderr, &out.args);
    out
}

/// `tessera files ARGS... --json`, asserting success; the document.
#[track_caller]
pub fn files_json(args: &[&str]) -> crate::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = files(&all);
    out.ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out}");
    v
}

/// Names of the `entries` of a `files ls --json` document, in order.
pub fn entry_names(listing: &crate::Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {listing}"))
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

/// Names in a source directory, sorted by their bytes (the order `files ls` promises).
pub fn source_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("listing").file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| String::from_utf8(n).expect("utf-8 test names"))
        .collect()
}

/// How long one `tessera files` command on the tests' small volumes may take before it
/// counts as a hang.
pub const FILES_LIMIT: std::time::Duration = std::time::Duration::from_mins(2);

/// `tessera files ARGS...` with stdout as bytes, killed (and failed) if it runs longer
/// than [`FILES_LIMIT`].
#[track_caller]
pub fn files_raw(args: &[&str]) -> RawOut {
    let mut all = vec!["files"];
    all.extend_from_slice(args);
    tessera_raw_within(FILES_LIMIT, all)
}

/// The bytes `tessera files cat REPO FILE` gives, asserting success.
#[track_caller]
pub fn files_cat_ok(repo: &Path, file: &str) -> Vec<u8> {
    let out = files_raw(&["cat", &repo.display().to_string(), file]);
    out.expect_code(0);
    out.stdout
}

/// Runs the binary like [`tessera_raw`], but kills it and panics when it has not finished
/// within `limit` (a reader that loops on a crafted image hangs instead of failing).
#[track_caller]
pub fn tessera_raw_within<I, S>(limit: std::time::Duration, args: I) -> RawOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = tessera_cmd(&args).spawn().expect("running tessera");
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut status = None;
    let finished = crate::wait_until(limit, || {
        status = child.try_wait().expect("waiting for tessera");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`tessera {}` still ran after {limit:?}: a hang",
            shown.join(" ")
        );
    }
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    RawOut {
        args: shown,
        code: exit_code(status.expect("finished")),
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------
// FAT images: dosfstools and mtools
// ---------------------------------------------------------------------------------------

/// `mkfs.vfat -F BITS EXTRA...` on a new image file of `bytes` bytes (`BITS` 12, 16 or 32;
/// `EXTRA` may hold `-S 4096` (sector size), `-s 1` (sectors per cluster), `-f 1` (FATs),
/// `-R 7` (reserved sectors), `-r 16` (root directory entries)...).
pub fn mkfs_fat(image: &Path, bits: u8, bytes: u64, extra: &[&str]) {
    let _ = fs::remove_file(image);
    File::create(image)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
    run_tool(
        Command::new("mkfs.vfat")
            .arg("-F")
            .arg(bits.to_string())
            .args(extra)
            .arg(image),
    );
}

/// An mtools command (`mcopy`, `mmd`, `mdel`, `mattrib`...) to run on an image named with
/// `-i`: in the `C.UTF-8` locale (long names are converted from the locale's charset to
/// UTF-16) and with `TZ=UTC`, so FAT's local times are UTC times (override `TZ` with
/// `.env` to store another zone's local time).
pub fn mtools(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("LC_ALL", "C.UTF-8")
        .env("LANG", "C.UTF-8")
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Copies every name in the directory `src` into the directory `to` (`::/` is the root) of
/// the FAT image, recursively and with their modification times (`mcopy -s -m`).
pub fn mcopy_tree(image: &Path, src: &Path, to: &str) {
    let mut names: Vec<PathBuf> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("listing {}: {e}", src.display()))
        .map(|e| e.expect("listing").path())
        .collect();
    names.sort();
    if names.is_empty() {
        return;
    }
    run_tool(
        mtools("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(image)
            .args(&names)
            .arg(to),
    );
}

/// The layout of a FAT volume, as `minfo` reads it from the boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatGeometry {
    /// 12, 16 or 32, from the boot sector's file system type label.
    pub bits: u8,
    /// Bytes per sector.
    pub sector_bytes: u64,
    /// Bytes per cluster.
    pub cluster_bytes: u64,
    /// Reserved sectors before the first FAT.
    pub reserved_sectors: u64,
    /// How many copies of the FAT there are.
    pub fats: u64,
    /// Sectors of one FAT.
    pub fat_sectors: u64,
    /// Entries of the fixed root directory (0 on FAT32).
    pub root_entries: u64,
    /// Sectors of the volume.
    pub total_sectors: u64,
}

impl FatGeometry {
    /// The byte offset in the volume of FAT copy `copy` (from 0).
    pub fn fat_offset(&self, copy: u64) -> u64 {
        (self.reserved_sectors + copy * self.fat_sectors) * self.sector_bytes
    }

    /// The byte offset in the volume of cluster 2, the first data cluster.
    pub fn data_offset(&self) -> u64 {
        self.fat_offset(self.fats)
            + (self.root_entries * 32).div_ceil(self.sector_bytes) * self.sector_bytes
    }

    /// How many data clusters there are (numbered from 2).
    pub fn clusters(&self) -> u64 {
        (self.total_sectors * self.sector_bytes - self.data_offset()) / self.cluster_bytes
    }
}

/// The geometry of the FAT volume in `image` (`minfo -i IMAGE ::`).
pub fn fat_geometry(image: &Path) -> FatGeometry {
    let out = run_tool(mtools("minfo").arg("-i").arg(image).arg("::"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(name)?;
            v.split_whitespace().next()?.parse().ok()
        })
    };
    let need = |name: &str| field(name).unwrap_or_else(|| panic!("no {name:?} in minfo: {text}"));
    let sector_bytes = need("sector size:");
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("disk type=\""))
        .unwrap_or_else(|| panic!("no disk type in minfo: {text}"));
    let bits = match label.trim_end_matches('"').trim() {
        "FAT12" => 12,
        "FAT16" => 16,
        "FAT32" => 32,
        other => panic!("minfo: disk type {other:?}"),
    };
    // FAT32 keeps its FAT length in the extended BPB ("Big fatlen"); "sectors per fat" is 0.
    let fat_sectors = match field("sectors per fat:") {
        Some(n) if n > 0 => n,
        _ => need("Big fatlen="),
    };
    let total_sectors = match field("small size:") {
        Some(n) if n > 0 => n,
        _ => need("big size:"),
    };
    FatGeometry {
        bits,
        sector_bytes,
        cluster_bytes: need("cluster size:") * sector_bytes,
        reserved_sectors: need("reserved (boot) sectors:"),
        fats: need("fats:"),
        fat_sectors,
        root_entries: need("max available root directory slots:"),
        total_sectors,
    }
}

/// The clusters of `path` in the FAT image, in chain order (`mshowfat`, which prints runs
/// such as `<5-7> <9-15>`).
pub fn fat_chain(image: &Path, path: &str) -> Vec<u32> {
    let out = run_tool(mtools("mshowfat").arg("-i").arg(image).arg(path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut clusters = Vec::new();
    for run in text.split('<').skip(1) {
        let run = run.split('>').next().unwrap_or_default();
        let (a, b) = run.split_once('-').unwrap_or((run, run));
        let parse = |v: &str| -> u32 {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("unexpected mshowfat output for {path}: {text:?}"))
        };
        clusters.extend(parse(a)..=parse(b));
    }
    clusters
}

/// Sets the FAT entry of `cluster` to `value` in every copy of the FAT of `image` (FAT12
/// entries packed in 12 bits, FAT32's top 4 bits kept); returns what the first copy held.
pub fn set_fat_entry(image: &Path, geom: &FatGeometry, cluster: u32, value: u32) -> u32 {
    let mut old = None;
    for copy in 0..geom.fats {
        let fat = geom.fat_offset(copy);
        let c = u64::from(cluster);
        let was = match geom.bits {
            12 => {
                let at = fat + c + c / 2;
                let b = peek(image, at, 2);
                let pair = u16::from_le_bytes([b[0], b[1]]);
                let v = (value & 0xfff) as u16;
                let (was, new) = if cluster % 2 == 1 {
                    (pair >> 4, (pair & 0x000f) | (v << 4))
                } else {
                    (pair & 0x0fff, (pair & 0xf000) | v)
                };
                poke(image, at, &new.to_le_bytes());
                u32::from(was)
            }
            16 => {
                let at = fat + 2 * c;
                let b = peek(image, at, 2);
                poke(image, at, &((value & 0xffff) as u16).to_le_bytes());
                u32::from(u16::from_le_bytes([b[0], b[1]]))
            }
            32 => {
                let at = fat + 4 * c;
                let b = peek(image, at, 4);
                let cur = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                poke(
                    image,
                    at,
                    &((cur & 0xf000_0000) | (value & 0x0fff_ffff)).to_le_bytes(),
                );
                cur & 0x0fff_ffff
            }
            other => panic!("a FAT{other}?"),
        };
        old.get_or_insert(was);
    }
    old.expect("at least one FAT")
}

// ---------------------------------------------------------------------------------------
// NTFS images: ntfs-3g (mkfs.ntfs, FUSE mounts, ntfsinfo)
// ---------------------------------------------------------------------------------------

/// `mkfs.ntfs -F -Q -q` on a new image file of `bytes` bytes.
pub fn mkfs_ntfs(image: &Path, bytes: u64) {
    let _ = fs::remove_file(image);
    File::create(image)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
    run_tool(
        Command::new("mkfs.ntfs")
            .args(["-F", "-Q", "-q"])
            .arg(image),
    );
}

/// An NTFS image mounted with `ntfs-3g` (FUSE, as root) on a directory; unmounted when
/// dropped, also when the test panics, so no mount outlives its test.
pub struct NtfsMount {
    dir: PathBuf,
    mounted: bool,
}

impl NtfsMount {
    /// Mounts `image` on `dir` (made if missing), read-only when `read_only`. Fails the test
    /// when ntfs-3g or FUSE is not there: the NTFS tests need them (scripts/ensure-deps.sh).
    #[track_caller]
    pub fn new(image: &Path, dir: &Path, read_only: bool) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("making {}: {e}", dir.display()));
        let mut cmd = Command::new("ntfs-3g");
        if read_only {
            cmd.args(["-o", "ro"]);
        }
        run_tool(cmd.arg(image).arg(dir));
        Self {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts it now (ntfs-3g writes everything back before `umount` returns).
    #[track_caller]
    pub fn unmount(mut self) {
        assert!(self.try_unmount(), "cannot unmount {}", self.dir.display());
    }

    fn try_unmount(&mut self) -> bool {
        if !self.mounted {
            return true;
        }
        for _ in 0..100 {
            for tool in [
                &["umount"][..],
                &["fusermount3", "-u"],
                &["fusermount", "-u"],
            ] {
                let ok = Command::new(tool[0])
                    .args(&tool[1..])
                    .arg(&self.dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    self.mounted = false;
                    return true;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        if !self.try_unmount() {
            eprintln!("warning: {} is still mounted", self.dir.display());
        }
    }
}

/// Sets the NTFS file attributes of a file on an ntfs-3g mount (`system.ntfs_attrib_be`:
/// 0x01 read-only, 0x800 compressed, ...), through Python's `os.setxattr`.
pub fn set_ntfs_attributes(path: &Path, attributes: u32) {
    run_tool(
        Command::new("python3")
            .arg("-c")
            .arg("import os, sys; os.setxattr(sys.argv[1], 'system.ntfs_attrib_be', int(sys.argv[2]).to_bytes(4, 'big'))")
            .arg(path)
            .arg(attributes.to_string()),
    );
}

/// `ntfsinfo -v -F PATH IMAGE` (the image not mounted).
pub fn ntfsinfo(image: &Path, path: &str) -> String {
    let out = run_tool(Command::new("ntfsinfo").args(["-v", "-F", path]).arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many data runs the last attribute ntfsinfo dumps for `path` has ("Total runs: N").
pub fn ntfs_runs(image: &Path, path: &str) -> usize {
    let text = ntfsinfo(image, path);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Total runs:"))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no runs in ntfsinfo of {path}: {text}"))
}

/// The byte offset in `image` of the MFT record of `path`: the record number ntfsinfo
/// gives ("Dumping Inode N"), placed with the boot sector's MFT cluster and record size
/// (a new volume's MFT is contiguous); checked by the record's own number at 0x2C.
pub fn ntfs_record_offset(image: &Path, path: &str) -> u64 {
    let text = ntfsinfo(image, path);
    let number: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Dumping Inode ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no inode in ntfsinfo of {path}: {text}"));
    let boot = peek(image, 0, 512);
    let sector = u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    let cluster = sector * u64::from(boot[13]);
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().expect("8 bytes")) * cluster;
    let info = boot[0x40].cast_signed();
    let record = if info > 0 {
        cluster * u64::from(info.unsigned_abs())
    } else {
        1 << info.unsigned_abs()
    };
    let at = mft + number * record;
    let head = peek(image, at, 0x30);
    assert_eq!(&head[..4], b"FILE", "no FILE record at {at} for {path}");
    assert_eq!(
        u64::from(u32::from_le_bytes(
            head[0x2c..0x30].try_into().expect("4 bytes")
        )),
        number,
        "the record at {at} is not record {number} ({path})"
    );
    at
}
