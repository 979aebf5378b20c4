//! TLS of `serve-nbd` (`--tls-cert`, `--tls-key`, `--tls-ca`), on the system OpenSSL like
//! `tessera serve` (SPEC.md §15 "TLS").
//!
//! The certificate chain and key are read and checked by the HTTP server's
//! [`server_config`] (both parse, the key belongs to the leaf certificate), which names a
//! wrong file with what is wrong with it; its acceptor (Mozilla's "intermediate" settings:
//! TLS 1.2 and 1.3 only, forward-secret AEAD ciphers) is what NBD connections use. With a
//! client CA the acceptor is rebuilt with the same settings, certificate and key, and asks
//! every client for a certificate: only a client whose certificate chains to a
//! certificate of that file completes the handshake (the system's roots are not trusted
//! for clients).

use std::path::Path;

use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509Name;

use crate::error::{Error, Result};
use crate::sync::http::tls::server_config;

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
    let checked = server_config(files.cert, files.key)?;
    let Some(ca) = files.client_ca else {
        return Ok(checked);
    };
    let setup = |what: &str, e: openssl::error::ErrorStack| {
        Error::InvalidArgument(format!(
            "setting up TLS client certificates with {}: {what}: {e}",
            ca.display()
        ))
    };
    std::fs::metadata(ca)
        .map_err(|e| Error::io(format!("reading the TLS client CA file {}", ca.display()), e))?;
    let ctx = checked.context();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| setup("starting", e))?;
    if let Some(leaf) = ctx.certificate() {
        b.set_certificate(leaf)
            .map_err(|e| setup("the certificate", e))?;
    }
    for extra in ctx.extra_chain_certs() {
        b.add_extra_chain_cert(extra.to_owned())
            .map_err(|e| setup("the certificate chain", e))?;
    }
    if let Some(key) = ctx.private_key() {
        b.set_private_key(key).map_err(|e| setup("the key", e))?;
    }
    b.set_ca_file(ca)
        .map_err(|e| setup("not a file of PEM certificates", e))?;
    let names = X509Name::load_client_ca_file(ca)
        .map_err(|e| setup("not a file of PEM certificates", e))?;
    if names.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the TLS client CA file {} holds no PEM certificate",
            ca.display()
        )));
    }
    b.set_client_ca_list(names);
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    // Verified sessions may only be resumed in the context that verified them.
    b.set_session_id_context(b"tessera serve-nbd")
        .map_err(|e| setup("the session context", e))?;
    Ok(b.build())
}
