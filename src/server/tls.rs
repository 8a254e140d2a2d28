//! The TLS listeners' certificates: chosen per handshake by the client's server name (SNI),
//! and renewed without a restart.
//!
//! [`Certificates`] is the rustls certificate resolver. Each handshake does one `ArcSwap`
//! load and at most two hash lookups: the exact name, then the wildcard one label up
//! (`*.example.com` answers `api.example.com`, not `example.com` nor `a.b.example.com`), else the
//! default certificate (the first configured) — also for clients that send no SNI.
//!
//! [`Certificates::reload`] re-reads every certificate's files (the reload service calls it
//! every `reload_interval`; polling, so a replaced file, a moved one or a swapped symlink as
//! certbot and cert-manager do it are all seen). Unchanged files (same digest) are left alone; a
//! changed pair that loads replaces that certificate for new handshakes (connections already
//! open keep theirs); one that does not load — unreadable, not PEM, key and certificate not
//! matching, as when a renewal has replaced only one of the two files yet — leaves the previous
//! certificate serving, is logged once per distinct content and counted in
//! `joule_tls_certificate_reloads_total{result="failure"}`, and is tried again next time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::tls::{self, Identity, TlsError};
use crate::config::CertificateSettings;
use crate::metrics::Metrics;

/// What a handshake chooses from.
#[derive(Debug)]
struct Table {
    /// Loaded identities in configuration order; `[0]` is the default.
    keys: Vec<Arc<CertifiedKey>>,
    /// Exact names and wildcard suffixes (`example.com` for `*.example.com`) → index.
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

/// The certificate resolver and its reload state.
pub struct Certificates {
    table: ArcSwap<Table>,
    specs: Vec<CertificateSettings>,
    /// Per certificate: the digest of the files now serving, and of the last refused content
    /// (so a bad file is reported once, not every poll).
    state: Mutex<Vec<([u8; 32], Option<[u8; 32]>)>>,
    metrics: Metrics,
}

impl Certificates {
    /// Loads every certificate.
    ///
    /// # Errors
    /// The first certificate that does not load (start-up refuses what validation would).
    pub fn load(specs: &[CertificateSettings], metrics: Metrics) -> Result<Self, TlsError> {
        let mut keys = Vec::with_capacity(specs.len());
        let mut state = Vec::with_capacity(specs.len());
        for s in specs {
            let id = tls::load_identity(&s.cert_file, &s.key_file)?;
            metrics.tls_expiry.with_label_values(&[&s.name]).set(id.not_after);
            tracing::info!(certificate = %s.name, serial = %id.serial, not_after = id.not_after, "TLS certificate loaded");
            state.push((id.digest, None));
            keys.push(id.key);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            for n in &s.server_names {
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        Ok(Certificates { table: ArcSwap::from_pointee(Table { keys, exact, wildcard }), specs: specs.to_vec(), state: Mutex::new(state), metrics })
    }

    /// Re-reads every certificate's files and swaps in those that changed and load (module
    /// docs). Blocking file I/O: call it off the request workers.
    pub fn reload(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        let mut replaced: Vec<(String, Identity)> = Vec::new();
        for (s, (serving, refused)) in self.specs.iter().zip(state.iter_mut()) {
            // What the files hold now, or why they cannot be read; either is reported once.
            let (seen, loaded) = match tls::read_files(&s.cert_file, &s.key_file) {
                Ok((c, k)) => {
                    let d = tls::digest(&c, &k);
                    if d == *serving {
                        *refused = None;
                        continue;
                    }
                    (d, if Some(d) == *refused { None } else { Some(tls::identity_from(&c, &k, &s.cert_file, &s.key_file)) })
                }
                Err(e) => {
                    let d = tls::digest(b"unreadable", e.to_string().as_bytes());
                    (d, if Some(d) == *refused { None } else { Some(Err(e)) })
                }
            };
            match loaded {
                None => {}
                Some(Ok(id)) => {
                    *serving = id.digest;
                    *refused = None;
                    self.metrics.tls_expiry.with_label_values(&[&s.name]).set(id.not_after);
                    self.metrics.tls_reloads.with_label_values(&[&s.name, "success"]).inc();
                    tracing::info!(certificate = %s.name, serial = %id.serial, not_after = id.not_after, "TLS certificate renewed");
                    replaced.push((s.name.clone(), id));
                }
                Some(Err(e)) => {
                    *refused = Some(seen);
                    self.metrics.tls_reloads.with_label_values(&[&s.name, "failure"]).inc();
                    tracing::warn!(certificate = %s.name, error = %e, "renewed TLS certificate refused; the previous one keeps serving");
                }
            }
        }
        if replaced.is_empty() {
            return;
        }
        let old = self.table.load();
        let mut keys = old.keys.clone();
        for (name, id) in replaced {
            if let Some(i) = self.specs.iter().position(|s| s.name == name) {
                keys[i] = id.key;
            }
        }
        self.table.store(Arc::new(Table { keys, exact: old.exact.clone(), wildcard: old.wildcard.clone() }));
    }

    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let t = self.table.load();
        let index = server_name.map(str::to_ascii_lowercase).and_then(|n| {
            t.exact.get(&n).or_else(|| n.split_once('.').and_then(|(_, parent)| t.wildcard.get(parent))).copied()
        });
        t.keys.get(index.unwrap_or(0)).cloned()
    }
}

/// pingora's TLS settings for a listener served by `certs`: TLS 1.2 and 1.3 only (pingora's
/// rustls builder), the provider's default cipher suites (AEAD with forward secrecy only), ALPN
/// h2 then http/1.1, the certificate chosen per handshake by `certs`.
///
/// # Errors
/// None today; pingora's constructor returns a `Result`.
pub fn listener_settings(certs: &Arc<Certificates>) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
    let mut tls = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(NoCallbacks))?;
    tls.set_cert_resolver(certs.clone());
    tls.enable_h2();
    Ok(tls)
}

/// Checks the certificate files for renewals every `interval` until shutdown.
pub struct Renewal {
    pub certs: Arc<Certificates>,
    pub interval: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Renewal {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let certs = self.certs.clone();
                    // File reads and key parsing: off the runtime's workers.
                    if tokio::task::spawn_blocking(move || certs.reload()).await.is_err() {
                        tracing::error!("TLS certificate reload panicked");
                    }
                }
            }
        }
    }
}

/// pingora asks for handshake callbacks to take a resolver; joule needs none.
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("names", &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>()).finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_identity(dir: &std::path::Path, name: &str, hosts: &[&str]) -> CertificateSettings {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap().self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        CertificateSettings { name: name.into(), server_names: hosts.iter().map(|h| h.to_string()).collect(), cert_file, key_file }
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn names_choose_their_certificate_and_others_get_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut default = write_identity(dir.path(), "default", &["localhost"]);
        default.server_names.clear();
        let api = write_identity(dir.path(), "api", &["api.example.com"]);
        let wild = write_identity(dir.path(), "wild", &["*.example.org"]);
        let certs = Certificates::load(&[default, api, wild], Metrics::new().unwrap()).unwrap();
        let t = certs.table.load();
        let which = |n: Option<&str>| {
            let k = certs.choose(n).unwrap();
            t.keys.iter().position(|x| leaf(x) == leaf(&k)).unwrap()
        };
        assert_eq!(which(Some("api.example.com")), 1);
        assert_eq!(which(Some("API.Example.COM")), 1);
        assert_eq!(which(Some("a.example.org")), 2);
        assert_eq!(which(Some("example.org")), 0, "a wildcard does not cover its parent");
        assert_eq!(which(Some("a.b.example.org")), 0, "nor two labels");
        assert_eq!(which(Some("other.test")), 0);
        assert_eq!(which(None), 0);
    }

    #[test]
    fn a_renewal_is_picked_up_and_a_bad_file_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_identity(dir.path(), "api", &["api.example.com"]);
        let metrics = Metrics::new().unwrap();
        let certs = Certificates::load(std::slice::from_ref(&spec), metrics.clone()).unwrap();
        let first = leaf(&certs.choose(None).unwrap());
        certs.reload();
        assert_eq!(leaf(&certs.choose(None).unwrap()), first, "unchanged files: nothing happens");
        assert_eq!(metrics.tls_reloads.with_label_values(&["api", "success"]).get(), 0);

        // Only the certificate replaced (the key not yet): refused, reported once.
        let other = write_identity(dir.path(), "next", &["api.example.com"]);
        std::fs::copy(&other.cert_file, &spec.cert_file).unwrap();
        certs.reload();
        certs.reload();
        assert_eq!(leaf(&certs.choose(None).unwrap()), first);
        assert_eq!(metrics.tls_reloads.with_label_values(&["api", "failure"]).get(), 1);

        // Then the key: the new pair serves.
        std::fs::copy(&other.key_file, &spec.key_file).unwrap();
        certs.reload();
        let renewed = leaf(&certs.choose(Some("api.example.com")).unwrap());
        assert_ne!(renewed, first);
        assert_eq!(renewed, std::fs::read(&other.cert_file).map(|pem| rustls_pemfile::certs(&mut &pem[..]).next().unwrap().unwrap().to_vec()).unwrap());
        assert_eq!(metrics.tls_reloads.with_label_values(&["api", "success"]).get(), 1);

        // Garbage and a missing file: the renewed certificate stays.
        std::fs::write(&spec.cert_file, "not pem").unwrap();
        certs.reload();
        std::fs::remove_file(&spec.key_file).unwrap();
        certs.reload();
        assert_eq!(leaf(&certs.choose(None).unwrap()), renewed);
        assert_eq!(metrics.tls_reloads.with_label_values(&["api", "failure"]).get(), 3);
    }
}
