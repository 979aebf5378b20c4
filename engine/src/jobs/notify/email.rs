//! Email targets, through `lettre`'s SMTP client.

use std::io::Read as _;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport as _};
use zeroize::Zeroizing;

use super::TIMEOUT;
use crate::jobs::file::NotifyDef;
use crate::jobs::values::Event;

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://`: none.
    Plain,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// `smtp+starttls://`: STARTTLS, required.
    StartTls,
}

/// A parsed `smtp` URL.
#[derive(Debug, Clone)]
pub struct Server {
    security: Security,
    host: String,
    port: u16,
}

impl Server {
    /// Parses `smtp://HOST[:PORT]`, `smtps://...`, `smtp+starttls://...` (`[v6]:PORT` too).
    /// Errors never repeat the URL: a mistaken `smtps://user:password@host` must not reach a
    /// log.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "smtp is not a URL (smtps://HOST[:PORT])".to_string())?;
        let (security, default_port) = match scheme {
            "smtp" => (Security::Plain, 25),
            "smtps" => (Security::Wrapper, 465),
            "smtp+starttls" => (Security::StartTls, 587),
            _ => {
                return Err(format!(
                    "smtp: the scheme {scheme:?} is none of smtps://, smtp+starttls://, smtp://"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['@', '/', '?', '#']) || authority.is_empty() {
            return Err("smtp: give only SCHEME://HOST[:PORT] (credentials go in username and password-file)".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or("smtp: an IPv6 host is written [ADDRESS]")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| "smtp: the port is not a number from 0 to 65535".to_string())?,
            None => default_port,
        };
        Ok(Self {
            security,
            host: host.to_string(),
            port,
        })
    }

    /// Whether the connection is encrypted.
    pub fn encrypted(&self) -> bool {
        self.security != Security::Plain
    }

    /// Whether the server is this machine.
    pub fn is_loopback(&self) -> bool {
        crate::net::is_loopback_url(&format!("smtp://{}", self.host))
            || crate::net::is_loopback_url(&format!("smtp://[{}]", self.host))
    }
}

/// Longest one attempt may take, however a server trickles its answers. lettre bounds each
/// read and write, not a whole conversation: the attempt runs on a thread that is given up
/// on after this long (it ends when its connection does).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`send`] within [`DEADLINE`].
pub fn send_within(
    target: &NotifyDef,
    job: &str,
    event: Event,
    summary: &str,
    doc: &serde_json::Value,
) -> Result<(), (bool, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (target, job, summary, doc) = (
        target.clone(),
        job.to_string(),
        summary.to_string(),
        doc.clone(),
    );
    std::thread::Builder::new()
        .name("smtp".into())
        .spawn(move || {
            let _ = tx.send(send(&target, &job, event, &summary, &doc));
        })
        .map_err(|e| (true, format!("starting the mail thread: {e}")))?;
    rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        Err((
            false,
            format!(
                "the mail server did not finish within {} s",
                DEADLINE.as_secs()
            ),
        ))
    })
}

/// Mails `doc` about `event` of job `job` to the target. Errors are `(transient, message)`.
fn send(
    target: &NotifyDef,
    job: &str,
    event: Event,
    summary: &str,
    doc: &serde_json::Value,
) -> Result<(), (bool, String)> {
    let permanent = |m: String| (false, m);
    let server = Server::parse(target.smtp.as_ref().map_or("", |s| s.get_ref().as_str()))
        .map_err(permanent)?;
    let from = target.from.as_ref().map_or_else(
        || format!("tessera@{}", crate::net::hostname().trim_end_matches('.')),
        |f| f.get_ref().clone(),
    );
    let mut message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| permanent(format!("from {from:?}: {e}")))?,
        )
        .subject(format!("[tessera] {job}: {}", event.as_str()))
        .header(ContentType::TEXT_PLAIN);
    for to in target.email.iter().flat_map(toml::Spanned::get_ref) {
        message = message.to(to
            .parse()
            .map_err(|e| permanent(format!("email address {to:?}: {e}")))?);
    }
    // The summary, then the run's record (SPEC.md §26.5); `stale` has the newest run.
    let run = doc.get("run").filter(|r| !r.is_null());
    let body = format!(
        "{summary}\n\n{}\n",
        run.map_or_else(
            || "(no run recorded yet)".into(),
            |r| serde_json::to_string_pretty(r).unwrap_or_default()
        )
    );
    let message = message
        .body(body)
        .map_err(|e| permanent(format!("building the message: {e}")))?;
    let tls = |host: &str| {
        TlsParameters::new(host.to_string()).map_err(|e| permanent(format!("TLS: {e}")))
    };
    let mut builder = SmtpTransport::builder_dangerous(&server.host)
        .port(server.port)
        .timeout(Some(TIMEOUT));
    builder = match server.security {
        Security::Plain => builder.tls(Tls::None),
        Security::Wrapper => builder.tls(Tls::Wrapper(tls(&server.host)?)),
        Security::StartTls => builder.tls(Tls::Required(tls(&server.host)?)),
    };
    if let (Some(user), Some(file)) = (&target.username, &target.password_file) {
        let mut password = Zeroizing::new(String::new());
        std::fs::File::open(file)
            .and_then(|f| f.take(64 * 1024).read_to_string(&mut password))
            .map_err(|e| permanent(format!("reading {}: {e}", file.display())))?;
        let first = password.lines().next().unwrap_or_default().to_string();
        builder = builder.credentials(Credentials::new(user.clone(), first));
    }
    builder
        .build()
        .send(&message)
        .map(|_| ())
        .map_err(|e| (!e.is_permanent(), format!("sending mail: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_and_errors_never_repeat_the_url() {
        let s = Server::parse("smtps://mail.example").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.encrypted()),
            ("mail.example", 465, true)
        );
        let s = Server::parse("smtp://[::1]:2525").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.is_loopback()),
            ("::1", 2525, true)
        );
        let s = Server::parse("smtp+starttls://127.0.0.1").unwrap();
        assert_eq!((s.port, s.is_loopback()), (587, true));
        for bad in [
            "smtps://user:hunter2@mail",
            "imap://hunter2",
            "hunter2",
            "smtp://h:hunter2",
        ] {
            let e = Server::parse(bad).unwrap_err();
            assert!(
                !e.contains("hunter2") || e.contains("is not a port"),
                "{bad}: {e}"
            );
        }
    }
}
