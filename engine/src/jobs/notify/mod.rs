//! Notifications (SPEC.md §26.5): each `[[notify]]` target of a job gets the events in its
//! `on` list, as a webhook POST or an email. Sending is bounded in time and attempts and
//! never changes a run's outcome; what happened is returned for the run's record. Targets
//! are named by their place in the file (`webhook #1`), never by their URL, which may carry
//! a token.

mod email;
mod webhook;

use std::time::Duration;

use super::file::{Job, NotifyDef};
use super::record::{NotificationRecord, RunRecord};
use super::values::Event;
use crate::net::is_loopback_url;

/// Attempts per notification.
const ATTEMPTS: u32 = 3;

/// Per-attempt timeout (connect, each read and write).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before the 2nd, 3rd... attempt.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(u64::from(attempt))
}

/// The one document both kinds of target carry.
fn payload(
    job: &Job,
    event: Event,
    summary: &str,
    record: Option<&RunRecord>,
) -> serde_json::Value {
    serde_json::json!({
        "event": event.as_str(),
        "job": job.name,
        "series": job.series(),
        "host": crate::net::hostname(),
        "time": crate::time::now_rfc3339(),
        "summary": summary,
        "run": record,
    })
}

/// Refuses a target that could not work: neither or both kinds, a bad URL, mail without a
/// server, plain text to a remote host without `insecure`.
pub fn check_target(n: &NotifyDef) -> Result<(), String> {
    match (&n.webhook, &n.email) {
        (None, None) => {
            Err("a [[notify]] target needs `webhook = URL` or `email = [ADDRESSES]`".into())
        }
        (Some(_), Some(_)) => {
            Err("a [[notify]] target is either a webhook or an email: make two targets".into())
        }
        (Some(url), None) => {
            if n.smtp.is_some()
                || n.from.is_some()
                || n.username.is_some()
                || n.password_file.is_some()
            {
                return Err(
                    "smtp, from, username and password-file belong to email targets".into(),
                );
            }
            if url.starts_with("https://") {
                Ok(())
            } else if url.starts_with("http://") {
                if is_loopback_url(url) || n.insecure {
                    Ok(())
                } else {
                    Err("a webhook over plain http:// must be on a loopback address: use https://, or say `insecure = true` if the network is trusted".into())
                }
            } else {
                // Not echoed: a webhook URL often carries its token.
                Err("webhook is not an http:// or https:// URL".into())
            }
        }
        (None, Some(to)) => {
            if to.is_empty() {
                return Err("email = [] names no address".into());
            }
            for a in to {
                a.parse::<lettre::Address>()
                    .map_err(|e| format!("email address {a:?}: {e}"))?;
            }
            if let Some(from) = &n.from {
                from.parse::<lettre::message::Mailbox>()
                    .map_err(|e| format!("from {from:?}: {e}"))?;
            }
            let Some(smtp) = &n.smtp else {
                return Err("an email target needs `smtp = \"smtps://HOST\"` (or smtp+starttls://, or smtp:// on loopback)".into());
            };
            let server = email::Server::parse(smtp)?;
            if !server.encrypted() && !n.insecure && !server.is_loopback() {
                return Err("smtp:// sends mail (and any password) in clear: use smtps:// or smtp+starttls://, or say `insecure = true` if the network is trusted".into());
            }
            if n.username.is_some() != n.password_file.is_some() {
                return Err("give both username and password-file, or neither".into());
            }
            Ok(())
        }
    }
}

/// Sends `event` about `record` (or, for `stale`, about the job's newest run) to every
/// target of `job` that wants it.
pub fn notify(
    job: &Job,
    event: Event,
    summary: &str,
    record: Option<&RunRecord>,
) -> Vec<NotificationRecord> {
    let doc = payload(job, event, summary, record);
    let mut sent = Vec::new();
    for (i, target) in job.def.notify.iter().enumerate() {
        let target = target.get_ref();
        if !target.events().contains(&event) {
            continue;
        }
        let (name, result) = if let Some(url) = &target.webhook {
            (
                format!("webhook #{}", i + 1),
                attempt(|| webhook::post(url, &doc)),
            )
        } else {
            (
                format!("email #{}", i + 1),
                attempt(|| email::send_within(target, &job.name, event, summary, &doc)),
            )
        };
        sent.push(NotificationRecord {
            target: name,
            event: event.as_str().to_string(),
            ok: result.1.is_none(),
            attempts: result.0,
            error: result.1,
        });
    }
    sent
}

/// Tries `send` up to [`ATTEMPTS`] times while it fails transiently; returns the attempts
/// made and the last error.
fn attempt(mut send: impl FnMut() -> Result<(), (bool, String)>) -> (u32, Option<String>) {
    let mut last = None;
    for n in 1..=ATTEMPTS {
        match send() {
            Ok(()) => return (n, None),
            Err((transient, e)) => {
                last = Some(e);
                if !transient || n == ATTEMPTS {
                    return (n, last);
                }
                std::thread::sleep(backoff(n));
            }
        }
    }
    (ATTEMPTS, last)
}
