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
    /// Parses `smtp://HOST[:PORT]`, `smtps://...`, `smtp+starttls://...`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("smtp {url:?} is not a URL (smtps://HOST[:PORT])"))?;
        let (security, default_port) = match scheme {
            "smtp" => (Security::Plain, 25),
            "smtps" => (Security::Wrapper, 465),
            "smtp+starttls" => (Security::StartTls, 587),
            _ => {
                return Err(format!(
                    "smtp {url:?}: the scheme is smtps://, smtp+starttls:// or smtp://"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['@', '/', '?', '#']) || authority.is_empty() {
            return Err(format!(
                "smtp {url:?}: give only HOST[:PORT] (credentials go in username and password-file)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("smtp {url:?}: {p:?} is not a port"))?,
            ),
            _ => (authority.to_string(), default_port),
        };
        Ok(Self {
            security,
            host,
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

/// Mails `doc` about `event` of job `job` to the target. Errors are `(transient, message)`.
pub fn send(
    target: &NotifyDef,
    job: &str,
    event: Event,
    summary: &str,
    doc: &serde_json::Value,
) -> Result<(), (bool, String)> {
    let permanent = |m: String| (false, m);
    let server = Server::parse(target.smtp.as_deref().unwrap_or_default()).map_err(permanent)?;
    let from = target
        .from
        .clone()
        .unwrap_or_else(|| format!("tessera@{}", super::hostname().trim_end_matches('.')));
    let mut message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| permanent(format!("from {from:?}: {e}")))?,
        )
        .subject(format!("[tessera] {job}: {}", event.as_str()))
        .header(ContentType::TEXT_PLAIN);
    for to in target.email.iter().flatten() {
        message = message.to(to
            .parse()
            .map_err(|e| permanent(format!("email address {to:?}: {e}")))?);
    }
    let body = format!(
        "{summary}\n\n{}\n",
        serde_json::to_string_pretty(doc).unwrap_or_default()
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
