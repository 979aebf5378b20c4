//! `tessera files parts|ls|stat|cat|get|find`.

use std::io::BufWriter;
use std::sync::Arc;

use anyhow::Result;
use tessera_engine::explore::{FileKind, Timestamp};
use tessera_engine::location::RepoLocation;
use tessera_engine::ops::files::find::{find, FindOptions, FindQuery, FindReport};
use tessera_engine::ops::files::get::{get, GetReport};
use tessera_engine::ops::files::query::{cat, ls, stat};
use tessera_engine::ops::files::tar_stream::{get_tar, get_tar_file};
use tessera_engine::ops::files::{parts, EntryInfo, PartsReport, VolumeRef};
use tessera_engine::time::format_us;
use tessera_engine::ErrorKind;

use crate::doc::{print_doc, print_ok};
use crate::files_args::FilesCommand;
use crate::output::{bytes, Bars};

pub fn run(
    cmd: &FilesCommand,
    at: &dyn Fn(&str) -> tessera_engine::Result<RepoLocation>,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let open = |repo: &str| -> Result<Arc<tessera_engine::Repository>> {
        Ok(Arc::new(super::open_reader(&at(repo)?)?))
    };
    match cmd {
        FilesCommand::Parts { repo, disk } => {
            let r = parts(&open(repo)?, &disk.snapshot, disk.disk.as_deref())?;
            if json {
                print_ok(&r);
                return Ok(0);
            }
            print_parts(&r);
        }
        FilesCommand::Ls { repo, path, long } => {
            let r = ls(&open(repo)?, path)?;
            if json {
                print_ok(&r);
                return Ok(0);
            }
            if let Some(w) = &r.warning {
                eprintln!("warning: {w}");
            }
            for e in &r.entries {
                if *long {
                    println!("{}", long_line(e));
                } else {
                    println!("{}", printable(&e.name));
                }
            }
            eprintln!(
                "({} entries; read {} of the disk's {} blocks)",
                r.entries.len(),
                r.blocks_read,
                r.disk_blocks
            );
        }
        FilesCommand::Stat { repo, path } => {
            let e = stat(&open(repo)?, path)?;
            if json {
                print_ok(&e);
                return Ok(0);
            }
            println!("{}", long_line(&e));
            println!(
                "inode {}  links {}  mtime {}  atime {}  ctime {}",
                e.stat.ino,
                e.stat.nlink,
                time(e.stat.mtime),
                time(e.stat.atime),
                time(e.stat.ctime)
            );
        }
        FilesCommand::Cat { repo, path } => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            cat(&open(repo)?, path, &mut out)?;
        }
        FilesCommand::Get {
            repo,
            path,
            dest,
            tar,
            force,
        } => {
            let repo = open(repo)?;
            let r = if *tar && dest.as_os_str() == "-" {
                let stdout = std::io::stdout();
                let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
                get_tar(&repo, path, &mut out, "-")?
            } else if *tar {
                get_tar_file(&repo, path, dest, *force)?
            } else {
                get(&repo, path, dest, *force, bars)?
            };
            print_get(&r, json, *tar && dest.as_os_str() == "-");
        }
        FilesCommand::Find { .. } => return run_find(cmd, at, json, bars),
    }
    Ok(0)
}

/// `files find`.
fn run_find(
    cmd: &FilesCommand,
    at: &dyn Fn(&str) -> tessera_engine::Result<RepoLocation>,
    json: bool,
    bars: &Bars,
) -> Result<i32> {
    let FilesCommand::Find {
        repo,
        series,
        disk,
        part,
        lv,
        name,
        path,
        all,
    } = cmd
    else {
        unreachable!("run_find is called for files find only");
    };
    let query = match (name, path) {
        (Some(glob), _) => FindQuery::Name(glob.clone()),
        (None, Some(p)) => FindQuery::Path(p.clone()),
        (None, None) => unreachable!("clap requires a path or --name"),
    };
    let which = VolumeRef {
        disk: disk.clone(),
        part: part.clone(),
        lv: lv.clone(),
    };
    let options = FindOptions {
        list_unchanged: *all || path.is_some(),
    };
    let repo = Arc::new(super::open_reader(&at(repo)?)?);
    let r = find(&repo, series, &which, &query, options, bars)?;
    Ok(print_find(&r, json))
}

/// Prints `files parts`.
fn print_parts(r: &PartsReport) {
    let table = r.table.map_or("no partition table".to_string(), |t| {
        format!("{t:?} table").to_uppercase()
    });
    println!("{}:{}: {table}", &r.snapshot.to_hex()[..16], r.disk);
    for v in &r.volumes {
        match &v.partition {
            Some(p) => println!(
                "  {:>3}  {:>12}  {:>10}  type {}  {}{}  holds {}",
                p.number,
                p.start,
                bytes(p.len),
                p.type_id,
                p.name,
                if p.uuid.is_empty() {
                    String::new()
                } else {
                    format!(" {}", p.uuid)
                },
                v.holds.name()
            ),
            None => println!("  whole disk holds {}", v.holds.name()),
        }
        if let Some(why) = &v.lvm_problem {
            println!("       its volume group cannot be read: {why}");
        }
        for l in &v.logical_volumes {
            let what = match (&l.lv.unreadable, l.holds) {
                (Some(why), _) => format!("not readable: {why}"),
                (None, Some(kind)) => format!("holds {}", kind.name()),
                (None, None) => "unreadable".to_string(),
            };
            println!("       LV {}  {}  {what}", l.lv.name, bytes(l.lv.size));
        }
    }
}

/// Prints `files find`'s report; returns the exit code (1 when a snapshot could not be searched).
fn print_find(r: &FindReport, json: bool) -> i32 {
    let problems = (r.errors > 0).then(|| {
        (
            ErrorKind::Failed,
            format!(
                "{} of {} snapshots could not be searched",
                r.errors,
                r.snapshots.len()
            ),
        )
    });
    let failed = problems.is_some();
    if json {
        print_doc(r, problems);
    } else {
        for s in &r.snapshots {
            let id = &s.snapshot.to_hex()[..16];
            if let Some(e) = &s.error {
                println!("{}  {id}  error: {}", s.time, printable(e));
                continue;
            }
            if s.found.is_empty() && s.removed.is_empty() {
                if s.unchanged == 0 {
                    println!("{}  {id}  (not present)", s.time);
                } else {
                    println!("{}  {id}  no changes ({} unchanged)", s.time, s.unchanged);
                }
            }
            for f in &s.found {
                println!(
                    "{}  {id}  {:<9}  {}  {}  mtime {}  {}",
                    s.time,
                    f.change,
                    printable(&f.path),
                    bytes(f.size),
                    time(f.mtime),
                    f.sha256.as_deref().map_or("", |h| &h[..16])
                );
            }
            for p in &s.removed {
                println!("{}  {id}  removed    {}", s.time, printable(p));
            }
        }
        eprintln!(
            "{} snapshots, {} versions; {} files hashed, {} from the cache",
            r.snapshots.len(),
            r.versions,
            r.hashed,
            r.hash_cache_hits
        );
        if let Some((_, msg)) = &problems {
            eprintln!("error: {msg}");
        }
    }
    i32::from(failed)
}

fn print_get(r: &GetReport, json: bool, tar_on_stdout: bool) {
    if json && !tar_on_stdout {
        print_ok(r);
        return;
    }
    if let Some(w) = &r.warning {
        eprintln!("warning: {w}");
    }
    for s in &r.skipped {
        eprintln!("skipped {}: {}", printable(&s.path), s.reason);
    }
    eprintln!(
        "restored to {}: {} files ({}, {} written), {} directories, {} symlinks, {} hard links, {} special{}",
        r.dest,
        r.files,
        bytes(r.logical_bytes),
        bytes(r.bytes_written),
        r.dirs,
        r.symlinks,
        r.hard_links,
        r.special,
        if r.owners_restored { "; owners restored" } else { "" }
    );
}

fn time(t: Timestamp) -> String {
    format_us(t.secs.saturating_mul(1_000_000) + i64::from(t.nanos / 1000))
}

/// `ls -l`'s line: mode, links, owner, group, size, mtime, name (and a symlink's target).
fn long_line(e: &EntryInfo) -> String {
    let s = &e.stat;
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {}",
        mode_string(s.kind, s.mode),
        s.nlink,
        s.uid,
        s.gid,
        s.size,
        time(s.mtime),
        printable(&e.name)
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(&printable(t));
    }
    line
}

/// A name from a guest's filesystem as it is safe to print on a terminal: control
/// characters (escape sequences, newlines) as `\u{..}` escapes, like `ls` quoting them.
/// `--json` keeps the exact name.
fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().any(char::is_control) {
        name.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        name.into()
    }
}

fn mode_string(kind: FileKind, mode: u32) -> String {
    let mut out = String::with_capacity(10);
    out.push(kind.ls_letter());
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}
