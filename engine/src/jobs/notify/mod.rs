//! Notifications (SPEC.md §26.5): each `[[notify]]` target of a job gets the events in its
//! `on` list, as a webhook POST or an email. Sending is bounded in time and attempts and
//! never changes a run's outcome; what happened is returned for the run's record. Targets
//! are named by their place in the file (`webhook #1`), never by their URL, which may carry
//! a token.

mod email;
mod webhook;

use std::ops::Range;
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
/// server, plain text to a remote host without `insecure`. The error carries the span of
/// the value at fault, when one is.
pub fn check_target(n: &NotifyDef) -> Result<(), (Option<Range<usize>>, String)> {
    let whole = |m: &str| (None, m.to_string());
    match (&n.webhook, &n.email) {
        (None, None) => Err(whole(
            "a [[notify]] target needs `webhook = URL` or `email = [ADDRESSES]`",
        )),
        (Some(_), Some(_)) => Err(whole(
            "a [[notify]] target is either a webhook or an email: make two targets",
        )),
        (Some(url), None) => {
            if n.smtp.is_some()
                || n.from.is_some()
                || n.username.is_some()
                || n.password_file.is_some()
            {
                return Err(whole(
                    "smtp, from, username and password-file belong to email targets",
                ));
            }
            let at = |m: &str| (Some(url.span()), m.to_string());
            let url = url.get_ref();
            if url.starts_with("https://") {
                Ok(())
            } else if url.starts_with("http://") {
                if is_loopback_url(url) || n.insecure {
                    Ok(())
                } else {
                    Err(at("a webhook over plain http:// must be on a loopback address: use https://, or say `insecure = true` if the network is trusted"))
                }
            } else {
                // Not echoed: a webhook URL often carries its token.
                Err(at("webhook is not an http:// or https:// URL"))
            }
        }
        (None, Some(to)) => {
            let at_to = |m: String| (Some(to.span()), m);
            if to.get_ref().is_empty() {
                return Err(at_to("email = [] names no address".into()));
            }
            for a in to.get_ref() {
                a.parse::<lettre::Address>()
                    .map_err(|e| at_to(format!("email address {a:?}: {e}")))?;
            }
            if let Some(from) = &n.from {
                from.get_ref()
                    .parse::<lettre::message::Mailbox>()
                    .map_err(|e| (Some(from.span()), format!("from {:?}: {e}", from.get_ref())))?;
            }
            let Some(smtp) = &n.smtp else {
                return Err(whole("an email target needs `smtp = \"smtps://HOST\"` (or smtp+starttls://, or smtp:// on loopback)"));
            };
            let at_smtp = |m: String| (Some(smtp.span()), m);
            let server = email::Server::parse(smtp.get_ref()).map_err(at_smtp)?;
            if !server.encrypted() && !n.insecure && !server.is_loopback() {
                return Err(at_smtp("smtp:// sends mail (and any password) in clear: use smtps:// or smtp+starttls://, or say `insecure = true` if the network is trusted".into()));
            }
            if n.username.is_some() != n.password_file.is_some() {
                return Err(whole("give both username and password-file, or neither"));
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
                attempt(|| webhook::post(url.get_ref(), &doc)),
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
