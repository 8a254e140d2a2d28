//! HTTP clients for upstreams: the plain-HTTP origins (`h1`), one pooled reqwest client for
//! `https://` hosted backends and one per provider (each provider may trust an extra CA).
//! Built once per catalog, off the request path.
//! reqwest resolves names on its blocking pool, so DNS never blocks the runtime and a failed
//! lookup is an ordinary connect error for failover, never a panic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Catalog, Deployment, DeploymentKind};
use super::h1::Origin;
use super::ExchangeLimits;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa { path: String, source: std::io::Error },
    #[error("CA file {path} holds no PEM certificate")]
    EmptyCa { path: String },
    #[error("CA file {path} is not valid PEM: {detail}")]
    BadCa { path: String, detail: String },
    #[error("building the HTTP client failed: {0}")]
    Build(String),
    #[error("deployment {deployment}: invalid upstream URL: {detail}")]
    Url { deployment: String, detail: String },
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// Unreadable, unparsable or empty file.
pub fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa { path: shown.clone(), source })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ClientError::BadCa { path: shown.clone(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(ClientError::EmptyCa { path: shown });
    }
    Ok(certs)
}

/// The upstream clients of one catalog, and every deployment's chat-completions URL parsed
/// once (parsing it per request showed up in profiles). `http://` deployments are spoken to
/// with [`super::h1`] (one [`Origin`] per host and port, shared by its deployments), `https://`
/// ones with reqwest.
#[derive(Debug, Clone)]
pub struct Clients {
    hosted: reqwest::Client,
    providers: Vec<reqwest::Client>,
    chat_urls: Vec<Vec<reqwest::Url>>,
    plain: Vec<Vec<Option<PlainTarget>>>,
}

/// Where a plain-HTTP deployment's chat requests go.
#[derive(Debug, Clone)]
pub struct PlainTarget {
    pub origin: Arc<Origin>,
    /// Path and query of the chat URL.
    pub path: String,
}

fn builder(limits: &ExchangeLimits) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        // Upstreams are addressed directly: ambient HTTP(S)_PROXY variables must not divert
        // traffic (or credentials) elsewhere, and redirects are not followed.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(false)
}

impl Clients {
    /// Builds the clients; certificate verification is always on.
    ///
    /// # Errors
    /// A provider CA file that cannot be read, or a TLS setup failure.
    pub fn new(catalog: &Catalog, limits: &ExchangeLimits) -> Result<Self, ClientError> {
        let hosted = builder(limits).build().map_err(|e| ClientError::Build(e.to_string()))?;
        let mut providers = Vec::with_capacity(catalog.providers.len());
        for p in &catalog.providers {
            let mut b = builder(limits);
            if let Some(ca) = &p.ca_file {
                for cert in read_ca(ca)? {
                    b = b.add_root_certificate(cert);
                }
            }
            providers.push(b.build().map_err(|e| ClientError::Build(e.to_string()))?);
        }
        let mut chat_urls = Vec::with_capacity(catalog.models.len());
        let mut plain = Vec::with_capacity(catalog.models.len());
        let mut origins: HashMap<String, Arc<Origin>> = HashMap::new();
        for m in &catalog.models {
            let mut urls = Vec::with_capacity(m.deployments.len());
            let mut targets = Vec::with_capacity(m.deployments.len());
            for d in &m.deployments {
                let (base, _) = catalog.endpoint_of(d);
                let path = match catalog.provider_of(d).map(|p| &p.api) {
                    Some(crate::catalog::ProviderApi::Anthropic { .. }) => "messages",
                    _ => "chat/completions",
                };
                let url = reqwest::Url::parse(&format!("{base}/{path}"))
                    .map_err(|e| ClientError::Url { deployment: d.id.clone(), detail: e.to_string() })?;
                targets.push(Origin::of(&url, limits.connect_timeout).map(|fresh| {
                    let origin = origins.entry(fresh.authority().to_owned()).or_insert(fresh).clone();
                    let mut path = url.path().to_owned();
                    if let Some(q) = url.query() {
                        path.push('?');
                        path.push_str(q);
                    }
                    PlainTarget { origin, path }
                }));
                urls.push(url);
            }
            chat_urls.push(urls);
            plain.push(targets);
        }
        Ok(Clients { hosted, providers, chat_urls, plain })
    }

    /// The plain-HTTP target of deployment `d` of model index `m`, if its URL is `http://`.
    pub fn plain(&self, m: usize, d: usize) -> Option<&PlainTarget> {
        self.plain.get(m)?.get(d)?.as_ref()
    }

    /// The chat-completions URL of deployment `d` of model index `m`.
    pub fn chat_url(&self, m: usize, d: usize) -> Option<&reqwest::Url> {
        self.chat_urls.get(m)?.get(d)
    }

    /// The client for a deployment.
    pub fn for_deployment(&self, d: &Deployment) -> &reqwest::Client {
        match &d.kind {
            DeploymentKind::Hosted { .. } => &self.hosted,
            DeploymentKind::Provider { provider, .. } => self.providers.get(*provider).unwrap_or(&self.hosted),
        }
    }
}
