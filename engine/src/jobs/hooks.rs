//! A job's hooks (SPEC.md §26.3): a program run without a shell, stdin closed, in its own
//! process group, killed with the whole group at its timeout.

use std::collections::VecDeque;
use std::io::Read as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::record::HookRecord;
use crate::error::{Error, Result};

/// Output kept per hook.
const KEEP_OUTPUT: usize = 4096;

/// A hook's timeout when its file gives none.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the output of an exited hook is still collected (a child it left behind may
/// hold the pipe open for ever).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The hook's output, collected on a thread that keeps the last [`KEEP_OUTPUT`] bytes.
struct Collector {
    handle: std::thread::JoinHandle<()>,
    tail: Arc<Mutex<VecDeque<u8>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Collector {
    /// Starts reading `reader`. The thread polls, so that [`Self::finish`] can stop it even
    /// when a process the hook left behind keeps the pipe open for ever.
    fn start(mut reader: std::io::PipeReader) -> Self {
        use std::os::fd::AsFd as _;
        use std::sync::atomic::Ordering;
        let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopped) = (Arc::clone(&tail), Arc::clone(&stop));
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::SeqCst) {
                let mut fds = [nix::poll::PollFd::new(
                    reader.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut t = kept
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        t.extend(&buf[..n]);
                        let excess = t.len().saturating_sub(KEEP_OUTPUT);
                        t.drain(..excess);
                    }
                }
            }
        });
        Self { handle, tail, stop }
    }

    /// Waits at most [`OUTPUT_GRACE`] for the end of the output, stops the thread, and
    /// returns what was kept.
    fn finish(self) -> String {
        let waited = Instant::now();
        while !self.handle.is_finished() && waited.elapsed() < OUTPUT_GRACE {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.handle.join();
        let t = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (a, b) = t.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// The variables of this process a hook keeps: what programs need to run, nothing more
/// (no passphrase, no S3 or other credentials the daemon was given).
const KEPT_ENV: [&str; 9] = [
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR",
];

/// Waits for `child` at most `timeout`, then kills its whole process group. Returns its
/// status (if it could be had) and whether it timed out.
fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, bool)> {
    let started = Instant::now();
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let kill = || nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((Some(status), false)),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = kill();
                return Ok((child.wait().ok(), true));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    }
}

/// Runs `argv` with `env` added, for at most `timeout`. Returns what happened; a hook that
/// failed, hung or could not start is an [`Error::Hook`] carrying the same record.
pub fn run_hook(
    phase: &str,
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> (HookRecord, Result<()>) {
    let mut record = HookRecord {
        phase: phase.to_string(),
        exit_code: None,
        timed_out: false,
        output: String::new(),
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return (
                record,
                Err(Error::Hook(format!("hook {phase}: creating a pipe: {e}"))),
            )
        }
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return (record, Err(Error::Hook(format!("hook {phase}: {e}")))),
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    // A hook gets a clean environment: the repository's passphrase and the S3 credentials
    // of the daemon are none of its business.
    command.env_clear();
    for k in KEPT_ENV {
        if let Some(v) = std::env::var_os(k) {
            command.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                record,
                Err(Error::Hook(format!(
                    "hook {phase}: cannot start {:?}: {e}",
                    argv[0]
                ))),
            )
        }
    };
    // The command holds the write ends; drop ours so the reader sees EOF when the group is
    // done with them.
    drop(command);
    let collector = Collector::start(reader);
    let (status, timed_out) = match wait_or_kill(&mut child, timeout) {
        Ok(r) => r,
        Err(e) => {
            record.output = collector.finish();
            return (
                record,
                Err(Error::Hook(format!("hook {phase}: waiting: {e}"))),
            );
        }
    };
    record.timed_out = timed_out;
    record.output = collector.finish();
    record.exit_code = status.and_then(|s| s.code());
    let result = if record.timed_out {
        Err(Error::Hook(format!(
            "hook {phase} ({:?}) did not finish within {} s and was killed with its process group",
            argv[0],
            timeout.as_secs()
        )))
    } else {
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(Error::Hook(match (s.code(), s.signal()) {
                (Some(code), _) => {
                    format!("hook {phase} ({:?}) exited with status {code}", argv[0])
                }
                (None, Some(sig)) => {
                    format!("hook {phase} ({:?}) was killed by signal {sig}", argv[0])
                }
                _ => format!("hook {phase} ({:?}) failed: {s}", argv[0]),
            })),
            None => Err(Error::Hook(format!("hook {phase}: its status was lost"))),
        }
    };
    (record, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_exit_codes_env_and_timeouts() {
        let (r, res) = run_hook(
            "before",
            &sh("echo hi $X; exit 3"),
            &[("X", "there".into())],
            DEFAULT_TIMEOUT,
        );
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output.trim(), "hi there");
        assert!(res.unwrap_err().to_string().contains("status 3"));
        let (r, res) = run_hook(
            "before",
            &sh("sleep 30 & sleep 30"),
            &[],
            Duration::from_millis(300),
        );
        assert!(r.timed_out);
        assert!(res.unwrap_err().to_string().contains("did not finish"));
        let (_, res) = run_hook(
            "after",
            &["/nonexistent/hook".to_string()],
            &[],
            DEFAULT_TIMEOUT,
        );
        assert!(res.unwrap_err().to_string().contains("cannot start"));
        let (r, res) = run_hook(
            "after",
            &sh("head -c 10000 /dev/zero | tr '\\0' x"),
            &[],
            DEFAULT_TIMEOUT,
        );
        assert!(res.is_ok());
        assert_eq!(r.output.len(), KEEP_OUTPUT);
        // A child left behind holding the output open does not keep the hook waiting.
        let t = Instant::now();
        let (_, res) = run_hook("after", &sh("sleep 5 & echo started"), &[], DEFAULT_TIMEOUT);
        assert!(res.is_ok());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Variables of this process (passphrases, credentials) do not reach a hook.
        std::env::set_var("TESSERA_HOOK_TEST_SECRET", "s3cr3t");
        let (r, _) = run_hook(
            "before",
            &sh("echo \"[$TESSERA_HOOK_TEST_SECRET]\" \"$PATH\""),
            &[],
            DEFAULT_TIMEOUT,
        );
        assert!(r.output.starts_with("[] /"), "{}", r.output);
    }
}
