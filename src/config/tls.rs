//! TLS identities of the listeners: a certificate chain file and its private key file read,
//! parsed and checked to belong together, with the leaf's expiry and serial. Config validation
//! uses it (a bad path or file fails start-up with a clear message instead of a listener that
//! never comes up), and so does the certificate reload (`server::tls`), so both refuse the
//! same files for the same reasons.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

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
    #[error("certificate file {cert}: the first certificate is not valid X.509: {detail}")]
    BadCert { cert: String, detail: String },
    #[error("key file {key} does not fit certificate file {cert}: {detail}")]
    Mismatch { cert: String, key: String, detail: String },
}

/// A usable certificate and key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 over both files' bytes: a reload that finds the same digest has nothing to do.
    pub digest: [u8; 32],
}

/// Both files' bytes, for [`identity_from`] (and for comparing digests before parsing).
///
/// # Errors
/// [`TlsError::Read`] naming the file.
pub fn read_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |what, p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { what, path: p.display().to_string(), source });
    Ok((read("certificate", cert)?, read("key", key)?))
}

/// The digest [`Identity::digest`] holds for these bytes.
pub fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert_pem);
    h.update([0u8]);
    h.update(key_pem);
    h.finalize().into()
}

/// Reads and checks the identity in `cert` (PEM chain, leaf first) and `key` (PEM private key).
///
/// # Errors
/// [`TlsError`] naming the file and the problem.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let (cert_pem, key_pem) = read_files(cert, key)?;
    identity_from(&cert_pem, &key_pem, cert, key)
}

/// As [`load_identity`], from the files' bytes (`cert` and `key` name them in errors).
///
/// # Errors
/// [`TlsError`] naming the file and the problem.
pub fn identity_from(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let certs: Result<Vec<CertificateDer<'static>>, _> = rustls_pemfile::certs(&mut &cert_pem[..]).collect();
    let certs = certs.map_err(|e| TlsError::Parse { what: "certificate", path: cert.display().to_string(), detail: e.to_string() })?;
    let Some(leaf) = certs.first() else { return Err(TlsError::NoCert(cert.display().to_string())) };
    let (not_after, serial) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, x)) => (x.validity().not_after.timestamp(), x.raw_serial_as_string().replace(':', "").to_ascii_lowercase()),
        Err(e) => return Err(TlsError::BadCert { cert: cert.display().to_string(), detail: e.to_string() }),
    };
    let private: PrivateKeyDer<'static> = match rustls_pemfile::private_key(&mut &key_pem[..]) {
        Ok(Some(k)) => k,
        Ok(None) => return Err(TlsError::NoKey(key.display().to_string())),
        Err(e) => return Err(TlsError::Parse { what: "key", path: key.display().to_string(), detail: e.to_string() }),
    };
    let provider = rustls::crypto::ring::default_provider();
    let mismatch = |detail: String| TlsError::Mismatch { cert: cert.display().to_string(), key: key.display().to_string(), detail };
    let certified = CertifiedKey::from_der(certs, private, &provider).map_err(|e| mismatch(e.to_string()))?;
    Ok(Identity { key: Arc::new(certified), not_after, serial, digest: digest(cert_pem, key_pem) })
}
