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

/// Reads the hook's output on a thread, keeping the last [`KEEP_OUTPUT`] bytes.
fn collect_output(
    mut reader: std::io::PipeReader,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<VecDeque<u8>>>) {
    let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
    let kept = Arc::clone(&tail);
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut t = kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.extend(&buf[..n]);
            let excess = t.len().saturating_sub(KEEP_OUTPUT);
            t.drain(..excess);
        }
    });
    (handle, tail)
}

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
    // A hook is not told the repository's passphrase.
    for k in crate::crypto::SECRET_ENV {
        command.env_remove(k);
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
    let (collector, tail) = collect_output(reader);
    let (status, timed_out) = match wait_or_kill(&mut child, timeout) {
        Ok(r) => r,
        Err(e) => {
            return (
                record,
                Err(Error::Hook(format!("hook {phase}: waiting: {e}"))),
            )
        }
    };
    record.timed_out = timed_out;
    let waited = Instant::now();
    while !collector.is_finished() && waited.elapsed() < OUTPUT_GRACE {
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let t = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (a, b) = t.as_slices();
        record.output = String::from_utf8_lossy(&[a, b].concat()).into_owned();
    }
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
    }
}
