//! TLS for the mock upstream: server identities ([`TlsIdentity`]), a throw-away certificate
//! authority for tests ([`TestCa`]), and the rustls server configuration built from them
//! (explicitly on the `ring` provider, never on a process-wide default).

use std::fmt;
use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors from building TLS material for the mock upstream.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM document could not be read.
    #[error("invalid PEM: {0}")]
    Pem(#[from] io::Error),
    /// The certificate chain PEM holds no certificate.
    #[error("no certificate in the certificate chain PEM")]
    NoCertificate,
    /// The key PEM holds no private key.
    #[error("no private key in the key PEM")]
    NoPrivateKey,
    /// rustls rejected the configuration (e.g. key and certificate do not match).
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Pem(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidInput, other),
        }
    }
}

/// A server identity: a PEM certificate chain (leaf first) and its PEM private key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// PEM certificates, leaf first.
    pub cert_chain_pem: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// Builds a rustls server configuration serving this identity over HTTP/1.1 (ALPN
    /// `http/1.1`) with the `ring` provider and its safe default protocol versions.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let certs = rustls_pemfile::certs(&mut self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut self.key_pem.as_bytes())?
                .ok_or(TlsError::NoPrivateKey)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A throw-away certificate authority for tests of upstreams over TLS: trust
/// [`ca_cert_pem`](Self::ca_cert_pem) in the client, serve an identity from
/// [`issue`](Self::issue).
pub struct TestCa {
    /// The CA certificate, PEM; add it as a trusted root in clients.
    pub ca_cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates a fresh CA (ECDSA P-256).
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "joule mock test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_cert_pem: cert.pem(),
            cert,
            key,
        })
    }

    /// Issues a server identity for `names` (DNS names or IP addresses, e.g.
    /// `["localhost", "127.0.0.1"]`), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Result<TlsIdentity, TlsError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(TlsIdentity {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the usual identity for a local test server: `localhost` and `127.0.0.1`.
    pub fn issue_localhost(&self) -> Result<TlsIdentity, TlsError> {
        self.issue(&["localhost", "127.0.0.1"])
    }
}
