//! TLS for `tessera serve` and remote sync (SPEC.md §22.3), on the system OpenSSL.
//!
//! Server: `--tls-cert` (PEM, the leaf certificate first, then any intermediates) and
//! `--tls-key` (PEM private key, PKCS#8 or traditional) are checked here before the server
//! starts, so a wrong file is named with what is wrong with it (no certificate in it, not a
//! key, a key that does not belong to the certificate) instead of a bare OpenSSL error
//! stack. They make an acceptor with Mozilla's "intermediate" settings (TLS 1.2 and 1.3),
//! used by each connection's thread in [`super::server`] (handshakes bounded by its
//! timeouts: one silent peer cannot hold up the others).
//!
//! Client: `https://` URLs go through `native-tls` (OpenSSL on Linux) with certificate and
//! host-name verification always on, TLS 1.2 or newer. The trusted roots are the system's,
//! plus the certificates of `--tls-ca` (for a self-signed server certificate); there is
//! deliberately no switch that disables verification.

use std::path::Path;
use std::sync::Arc;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslAcceptorBuilder, SslMethod};
use openssl::x509::X509;
use ureq::native_tls::{Certificate, Protocol, TlsConnector};

use crate::error::{Error, Result};

/// Largest certificate or key file read (a PEM chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

pub(crate) fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(Error::Tls {
            reason: format!(
                "the {what} {} has {len} bytes, more than the {MAX_PEM_BYTES} a PEM file may have",
                path.display()
            ),
        });
    }
    std::fs::read(path).map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))
}

pub(crate) fn certificates(path: &Path, pem: &[u8], what: &str) -> Result<Vec<X509>> {
    let certs = X509::stack_from_pem(pem).map_err(|e| Error::Tls {
        reason: format!(
            "the {what} {} is not a PEM certificate: {e}",
            path.display()
        ),
    })?;
    if certs.is_empty() {
        return Err(Error::Tls {
            reason: format!(
                "the {what} {} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        });
    }
    Ok(certs)
}

/// A certificate chain (leaf first) and its private key, checked: both parse, and the key
/// is the private half of the leaf certificate. Used by the servers and by clients that
/// present a certificate.
pub(crate) fn identity(cert_path: &Path, key_path: &Path) -> Result<(Vec<X509>, PKey<Private>)> {
    let certificate = read_pem(cert_path, "TLS certificate")?;
    let private_key = read_pem(key_path, "TLS private key")?;
    let certs = certificates(cert_path, &certificate, "TLS certificate")?;
    let key = PKey::private_key_from_pem(&private_key).map_err(|e| Error::Tls {
        reason: format!(
            "the TLS private key {} is not an unencrypted PEM private key: {e}",
            key_path.display()
        ),
    })?;
    let leaf_key = certs
        .first()
        .and_then(|c| c.public_key().ok())
        .ok_or_else(|| Error::Tls {
            reason: format!(
                "the first certificate in {} has no usable public key",
                cert_path.display()
            ),
        })?;
    if !leaf_key.public_eq(&key) {
        return Err(Error::Tls {
            reason: format!(
                "the TLS private key {} does not belong to the first certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        });
    }
    Ok((certs, key))
}

/// The TLS acceptor of `tessera serve`: the certificate chain and private key, checked
/// ([`identity`]).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<SslAcceptor> {
    Ok(server_builder(cert_path, key_path)?.build())
}

/// The settings of [`server_config`], for a server that adds its own (`serve-nbd`'s client
/// certificates).
pub(crate) fn server_builder(cert_path: &Path, key_path: &Path) -> Result<SslAcceptorBuilder> {
    let (certs, key) = identity(cert_path, key_path)?;
    let setup = |e: openssl::error::ErrorStack| Error::Tls {
        reason: format!(
            "setting up TLS with {} and {}: {e}",
            cert_path.display(),
            key_path.display()
        ),
    };
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(setup)?;
    let mut chain = certs.into_iter();
    if let Some(leaf) = chain.next() {
        builder.set_certificate(&leaf).map_err(setup)?;
    }
    for intermediate in chain {
        builder.add_extra_chain_cert(intermediate).map_err(setup)?;
    }
    builder.set_private_key(&key).map_err(setup)?;
    builder.check_private_key().map_err(setup)?;
    Ok(builder)
}

/// The client's TLS settings: system roots plus every certificate in `ca` (if given).
pub fn client_connector(ca: Option<&Path>) -> Result<Arc<TlsConnector>> {
    let mut builder = TlsConnector::builder();
    builder.min_protocol_version(Some(Protocol::Tlsv12));
    if let Some(path) = ca {
        let pem = read_pem(path, "TLS CA file")?;
        for cert in certificates(path, &pem, "TLS CA file")? {
            let der = cert.to_der().map_err(|e| Error::Tls {
                reason: format!("a certificate in {}: {e}", path.display()),
            })?;
            let cert = Certificate::from_der(&der).map_err(|e| Error::Tls {
                reason: format!("a certificate in {}: {e}", path.display()),
            })?;
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder.build().map_err(|e| Error::Tls {
        reason: format!("setting up TLS: {e}"),
    })?;
    Ok(Arc::new(connector))
}
