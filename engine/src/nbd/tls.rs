//! TLS of `serve-nbd` (`--tls-cert`, `--tls-key`, `--tls-ca`), on the system OpenSSL like
//! `tessera serve` (SPEC.md §15 "TLS").
//!
//! The certificate chain and key are read and checked by the HTTP server's
//! [`server_builder`] (both parse, the key belongs to the leaf certificate), which names a
//! wrong file with what is wrong with it; its settings (Mozilla's "intermediate": TLS 1.2
//! and 1.3 only, forward-secret AEAD ciphers) are what NBD connections use. With a client
//! CA file every client must present a certificate that chains to a certificate of that
//! file: the system's roots are not trusted for clients, only that file.

use std::path::Path;

use openssl::ssl::{SslAcceptor, SslVerifyMode};

use crate::error::{Error, Result};
use crate::sync::http::tls::{certificates, read_pem, server_builder};

/// Where the server's TLS material is.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// PEM certificate chain, leaf first.
    pub cert: &'a Path,
    /// PEM private key of the leaf (unencrypted).
    pub key: &'a Path,
    /// PEM certificates of the CAs that sign client certificates; with it, every client
    /// must present a certificate signed by one of them.
    pub client_ca: Option<&'a Path>,
}

/// The acceptor for `files`.
pub fn acceptor(files: &TlsFiles<'_>) -> Result<SslAcceptor> {
    let mut b = server_builder(files.cert, files.key)?;
    let Some(ca) = files.client_ca else {
        return Ok(b.build());
    };
    let setup = |what: &str, e: openssl::error::ErrorStack| Error::Tls {
        reason: format!(
            "setting up TLS client certificates with {}: {what}: {e}",
            ca.display()
        ),
    };
    let pem = read_pem(ca, "TLS client CA file")?;
    for cert in certificates(ca, &pem, "TLS client CA file")? {
        b.add_client_ca(&cert)
            .map_err(|e| setup("naming the CA to clients", e))?;
        b.cert_store_mut()
            .add_cert(cert)
            .map_err(|e| setup("trusting the CA", e))?;
    }
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    // Verified sessions may only be resumed in the context that verified them.
    b.set_session_id_context(b"tessera serve-nbd")
        .map_err(|e| setup("the session context", e))?;
    Ok(b.build())
}
