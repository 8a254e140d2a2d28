//! Active health probes: `GET {base_url}/models` on every deployment at an interval, off the
//! request path. A probe answered with 2xx closes the deployment's breaker (readmitting it
//! without waiting for a client to be the trial); a failed probe counts like a failed request.
//! Provider routes are probed only when `health.probe_third_party` is set, since a provider
//! may bill or rate-limit them.

use futures_util::future::join_all;
use http::header::AUTHORIZATION;

use std::time::Duration;

use super::Clients;
use crate::catalog::{Catalog, DeploymentKind, ProviderApi};
use crate::telemetry::Telemetry;

/// Active health probes.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Interval between probes of each deployment; `None` disables probing. Default 5 s.
    pub probe_interval: Option<Duration>,
    /// Probe timeout. Default 2 s.
    pub probe_timeout: Duration,
    /// Probe provider routes too (they may bill or rate-limit probes). Default false.
    pub probe_third_party: bool,
}

/// Probes every eligible deployment of `catalog` once, concurrently, with its `clients`,
/// recording the outcomes in `telemetry`.
pub async fn probe_all(catalog: &Catalog, clients: &Clients, telemetry: &Telemetry, health: &HealthSettings) {
    let settings = &telemetry.settings;
    if !settings.enabled {
        return;
    }
    let mut probes = Vec::new();
    for (mi, m) in catalog.models.iter().enumerate() {
        for (di, d) in m.deployments.iter().enumerate() {
            if matches!(d.kind, DeploymentKind::Provider { .. }) && !health.probe_third_party {
                continue;
            }
            let Some(stats) = telemetry.get(mi, di) else { continue };
            let (base_url, key) = catalog.endpoint_of(d);
            let mut rb = clients.for_deployment(d).get(format!("{base_url}/models")).timeout(health.probe_timeout);
            // Each provider API lists its models with its own credentials header.
            match catalog.provider_of(d).map(|p| &p.api) {
                Some(ProviderApi::Anthropic { version }) => {
                    rb = rb.header("anthropic-version", version.as_str());
                    if let Some(k) = key {
                        rb = rb.header("x-api-key", k.expose());
                    }
                }
                _ => {
                    if let Some(k) = key {
                        rb = rb.header(AUTHORIZATION, format!("Bearer {}", k.expose()));
                    }
                }
            }
            probes.push(async move {
                let ok = matches!(rb.send().await, Ok(r) if r.status().is_success());
                if ok {
                    stats.record_success(settings);
                } else if stats.record_failure(settings) {
                    tracing::warn!(deployment = %d.id, "breaker opened by health probes");
                }
            });
        }
    }
    join_all(probes).await;
}
