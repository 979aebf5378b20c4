//! TLS of the NBD client (`nbds://`, `nbds+unix://`), on the system OpenSSL like the rest of
//! tessera (SPEC.md §20 "TLS").
//!
//! Verification is always on: the server's certificate must chain to a trusted root and
//! carry the expected name ([`NbdUrl::tls_hostname`], else the URL's host, else `localhost`
//! for a Unix socket); there is deliberately no switch that turns it off. Trusted roots are
//! the system's, plus the certificates of `--tls-ca FILE` and of `ca-cert.pem` in the URL's
//! `tls-certificates=DIR`. When that directory also holds `client-cert.pem` and
//! `client-key.pem` (qemu's and libnbd's layout), they are presented to servers that ask
//! for a client certificate (qemu-nbd's `tls-creds-x509` does by default). TLS 1.2 or newer
//! only (proto.md "TLS versions").

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVersion};
use openssl::x509::X509VerifyResult;

use super::url::{Endpoint, NbdUrl};
use crate::error::{Error, Result};
use crate::sync::http::tls::{certificates, identity, read_pem};

/// File names inside a `tls-certificates=` directory (qemu's and libnbd's).
const CA_FILE: &str = "ca-cert.pem";
const CLIENT_CERT_FILE: &str = "client-cert.pem";
const CLIENT_KEY_FILE: &str = "client-key.pem";

/// How one NBD source connects over TLS.
pub struct ClientTls {
    connector: SslConnector,
    /// The name the server's certificate must carry (a host name or an IP address).
    hostname: String,
    /// Where trust came from, for messages.
    trusted: String,
}

impl ClientTls {
    /// The settings for `url` (which must be a TLS URL), trusting `ca` besides the system's
    /// roots and the URL's `tls-certificates` directory.
    pub fn new(url: &NbdUrl, ca: Option<&Path>) -> Result<Self> {
        let setup = |what: String, e: openssl::error::ErrorStack| Error::Tls {
            reason: format!("{}: setting up TLS: {what}: {e}", url.display()),
        };
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| setup("starting".into(), e))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| setup("the protocol version".into(), e))?;
        let dir = url.tls_certificates.as_deref();
        let dir_ca = dir.map(|d| d.join(CA_FILE)).filter(|p| p.exists());
        let mut trusted = vec!["the system's roots".to_string()];
        for file in ca.map(Path::to_path_buf).iter().chain(&dir_ca) {
            let pem = read_pem(file, "TLS CA file")?;
            for cert in certificates(file, &pem, "TLS CA file")? {
                b.cert_store_mut()
                    .add_cert(cert)
                    .map_err(|e| setup(format!("trusting {}", file.display()), e))?;
            }
            trusted.push(file.display().to_string());
        }
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(Error::Usage(format!(
                    "{}: tls-certificates={} is not a directory",
                    url.display(),
                    dir.display()
                )));
            }
            if let Some((cert, key)) = client_identity(dir)? {
                let (chain, key) = identity(&cert, &key)?;
                let mut chain = chain.into_iter();
                if let Some(leaf) = chain.next() {
                    b.set_certificate(&leaf).map_err(|e| {
                        setup(format!("the client certificate {}", cert.display()), e)
                    })?;
                }
                for extra in chain {
                    b.add_extra_chain_cert(extra)
                        .map_err(|e| setup(format!("the chain in {}", cert.display()), e))?;
                }
                b.set_private_key(&key)
                    .map_err(|e| setup("the client key".into(), e))?;
            }
        }
        let hostname = match (&url.tls_hostname, &url.endpoint) {
            (Some(name), _) => name.clone(),
            (None, Endpoint::Tcp { host, .. }) => host.clone(),
            (None, Endpoint::Unix(_)) => "localhost".into(),
        };
        Ok(Self {
            connector: b.build(),
            hostname,
            trusted: trusted.join(", "),
        })
    }

    /// Runs the client side of the TLS handshake on `stream` (after the server
    /// acknowledged NBD_OPT_STARTTLS), verifying the server's certificate. The stream's own
    /// timeouts bound the handshake.
    pub fn connect<S: Read + Write>(&self, stream: S, url: &str) -> Result<SslStream<S>> {
        let fail = |why: String| Error::Tls {
            reason: format!("{url}: TLS handshake with the NBD server failed: {why}"),
        };
        let config = self
            .connector
            .configure()
            .map_err(|e| fail(e.to_string()))?;
        config
            .connect(&self.hostname, stream)
            .map_err(|e| match e {
                HandshakeError::SetupFailure(e) => fail(e.to_string()),
                HandshakeError::Failure(m) | HandshakeError::WouldBlock(m) => {
                    let verify = m.ssl().verify_result();
                    if verify == X509VerifyResult::OK {
                        fail(m.error().to_string())
                    } else {
                        fail(format!(
                            "the server's certificate is not trusted for {:?}: {} (trusted: {}; pass the server's CA with --tls-ca FILE or tls-certificates=DIR)",
                            self.hostname,
                            verify.error_string(),
                            self.trusted
                        ))
                    }
                }
            })
    }
}

/// `DIR/client-cert.pem` and `DIR/client-key.pem` when both exist; one without the other
/// is a usage error (a certificate that would silently not be presented).
fn client_identity(dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let (cert, key) = (dir.join(CLIENT_CERT_FILE), dir.join(CLIENT_KEY_FILE));
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Some((cert, key))),
        (false, false) => Ok(None),
        (true, false) | (false, true) => Err(Error::Usage(format!(
            "{}: a client certificate needs both {CLIENT_CERT_FILE} and {CLIENT_KEY_FILE}",
            dir.display()
        ))),
    }
}
