//! Running external commands and measuring them: wall time, CPU time (user and system, the
//! child and every descendant it waited for) and peak resident memory, via `wait4`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one command run cost.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Wall-clock seconds from spawn to exit.
    pub wall_s: f64,
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// Peak resident set size of the largest process, KiB.
    pub max_rss_kib: u64,
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

impl Measured {
    /// Whether the command exited with 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// CPU seconds over wall seconds (2.0 = both cores busy all the time).
    pub fn cpu_util(&self) -> f64 {
        (self.user_s + self.sys_s) / self.wall_s.max(1e-9)
    }

    /// Adds another measured step run right after this one (wall and CPU add up, peak
    /// memory is the larger).
    #[must_use]
    pub fn then(mut self, other: &Measured) -> Measured {
        self.wall_s += other.wall_s;
        self.user_s += other.user_s;
        self.sys_s += other.sys_s;
        self.max_rss_kib = self.max_rss_kib.max(other.max_rss_kib);
        if self.ok() {
            self.code = other.code;
        }
        self
    }
}

/// Runs `tessera ARGS` with the binary `bin`, measured; fails with its stderr unless it
/// exits 0.
pub fn tessera_ok(bin: &Path, args: &[&str]) -> anyhow::Result<Measured> {
    let m = run(Command::new(bin).args(args))?;
    if !m.ok() {
        anyhow::bail!("tessera {} failed: {}", args.join(" "), m.stderr);
    }
    Ok(m)
}

/// Runs `cmd` to completion (stdin empty, stdout and stderr captured) and measures it.
pub fn run(cmd: &mut Command) -> std::io::Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (stdout, stderr, waited) = std::thread::scope(|s| {
        let o = s.spawn(move || {
            let mut v = Vec::new();
            if let Some(p) = out.as_mut() {
                let _ = p.read_to_end(&mut v);
            }
            v
        });
        let e = s.spawn(move || {
            let mut v = Vec::new();
            if let Some(p) = err.as_mut() {
                let _ = p.read_to_end(&mut v);
            }
            v
        });
        let waited = wait4(child.id());
        (
            o.join().unwrap_or_default(),
            e.join().unwrap_or_default(),
            waited,
        )
    });
    let wall_s = started.elapsed().as_secs_f64();
    let (status, ru) = waited?;
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured {
        wall_s,
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
        code: if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else {
            None
        },
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs a shell command line with `sh -c` and measures it.
pub fn sh(line: &str, cwd: Option<&Path>) -> std::io::Result<Measured> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    run(&mut cmd)
}

/// Waits for `pid` and returns its wait status and resource usage. The resource usage
/// covers the child and all descendants it waited for (Linux semantics of `wait4`).
#[allow(unsafe_code)]
fn wait4(pid: u32) -> std::io::Result<(i32, libc::rusage)> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    let mut status = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers point to live, writable locals of the right types.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether a program is on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Apparent size (sum of file lengths) of everything under `dir`.
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| tree_size(&e.path()))
            .sum()
    })
}
