//! TLS identity checks for the listener: the certificate chain and private key files must
//! exist and parse, so a bad path or file fails start-up with a clear message instead of a
//! listener that never comes up.

use std::path::Path;

/// Why a TLS identity is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("{what} file {path} is not valid PEM: {detail}")]
    Parse { what: &'static str, path: String, detail: String },
    #[error("certificate file {0} holds no certificate")]
    NoCert(String),
    #[error("key file {0} holds no private key")]
    NoKey(String),
}

/// Checks that `cert` holds at least one PEM certificate and `key` a PEM private key.
///
/// # Errors
/// [`TlsError`] naming the file and the problem.
pub fn check_identity(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let read = |what, p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read { what, path: p.display().to_string(), source })
    };
    let cert_pem = read("certificate", cert)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect();
    let certs = certs.map_err(|e| TlsError::Parse { what: "certificate", path: cert.display().to_string(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    let key_pem = read("key", key)?;
    match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(TlsError::NoKey(key.display().to_string())),
        Err(e) => Err(TlsError::Parse { what: "key", path: key.display().to_string(), detail: e.to_string() }),
    }
}
