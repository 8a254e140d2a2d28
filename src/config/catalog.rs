//! `[[data_centers]]`, `[[providers]]` and `[[models]]` with their `[[models.deployments]]`
//! (and GPU profiles), validated into the [`Catalog`]. References between them (a deployment's
//! data center or provider) are checked here; ids must be unique per kind.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::problems::{resolve, Env, Problems};
use crate::catalog::{
    CachePrice, Catalog, Category, DataCenter, Deployment, DeploymentKind, GpuProfile, Model, Prior, Provider, ProviderApi,
    TokenPrice,
};

/// `[[data_centers]]`: a site of ours.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataCenter {
    /// Unique, non-empty.
    pub id: String,
    /// Display name. Default: the id.
    pub name: Option<String>,
    /// Key in the energy feed, `ISO/location`. Default none (no energy pricing).
    pub price_node: Option<String>,
    /// Power usage effectiveness, > 0. Default 1.2.
    pub pue: Option<f64>,
}

/// `[[providers]]`: a third-party API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Unique.
    pub id: String,
    /// http(s) URL up to and including the version segment.
    pub base_url: String,
    /// Environment variable holding the credential; it must be set. Default none.
    pub api_key_env: Option<String>,
    /// Extra trusted CAs (PEM), relative to the config file. Default none.
    pub ca_file: Option<String>,
    /// Fraction added to list prices, 0 to 1. Default 0.05.
    pub routing_fee: Option<f64>,
    /// `openai` (default) or `anthropic`.
    pub api: Option<String>,
    /// `anthropic-version` header of an `anthropic` provider. Default `2023-06-01`.
    pub anthropic_version: Option<String>,
}

/// `[[models]]`: a public model id and its deployments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Unique, non-empty, without `@` or white space.
    pub id: String,
    /// `free`, `hosted` or `third-party`.
    pub category: String,
    /// Default `joule`.
    pub owned_by: Option<String>,
    /// Unix seconds shown in `/v1/models`. Default 1730000000.
    pub created: Option<u64>,
    /// First content token deadline of streams, > 0. Default: `limits.first_byte_timeout_ms`.
    pub ttft_timeout_ms: Option<u64>,
    /// At least one.
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
}

/// `[[models.deployments]]`: hosted (`data_center` + `url`) or a provider route (`provider`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// Unique across all models.
    pub id: String,
    pub data_center: Option<String>,
    /// Backend base URL of a hosted deployment (required there).
    pub url: Option<String>,
    /// Backend credential of a hosted deployment. Default none.
    pub api_key_env: Option<String>,
    pub provider: Option<String>,
    /// Model id upstream. Default: the public id.
    pub upstream_model: Option<String>,
    /// Hosted: $/Mtok before energy (required).
    pub base_price_input: Option<f64>,
    pub base_price_output: Option<f64>,
    /// Provider route: the provider's $/Mtok (required).
    pub list_price_input: Option<f64>,
    pub list_price_output: Option<f64>,
    /// Provider route: $/Mtok of prompt tokens read from the provider's cache. Default: cache
    /// tokens are priced as input unless either cache price is set; then the other defaults to
    /// `list_price_input`.
    pub list_price_cache_read: Option<f64>,
    /// Provider route: $/Mtok of prompt tokens written into the provider's cache.
    pub list_price_cache_write: Option<f64>,
    /// Prior time to first token, > 0. Default 500.
    pub ttft_ms: Option<f64>,
    /// Prior decode rate, > 0. Default 50.
    pub tokens_per_s: Option<f64>,
    /// GPU profile of a hosted deployment (energy part of its token price); required when the
    /// data center has a price node.
    pub gpu: Option<RawGpu>,
    /// Hosted: lowest $/Mtok when energy is negative. Default 0.
    pub floor_price_input: Option<f64>,
    pub floor_price_output: Option<f64>,
    /// Provider route: `max_tokens` sent when the client names none, for APIs that require it
    /// (Anthropic), > 0. Default 4096.
    pub max_tokens: Option<u32>,
}

/// A GPU profile: every field required, > 0.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    /// Node power in kW, before PUE.
    pub node_kw: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
}

/// What a deployment may refer to, and where its credentials come from.
struct Scope<'a> {
    data_centers: &'a [DataCenter],
    providers: &'a [Provider],
    env: Env<'a>,
}

/// Validates data centers, providers and models, in that order, into the catalog. A bad entry
/// is reported and kept with stand-in values (or, for a deployment that is neither hosted nor
/// a provider route, left out), so later references still resolve.
pub(super) fn catalog(
    p: &mut Problems,
    data_centers: &[RawDataCenter],
    providers: &[RawProvider],
    models: &[RawModel],
    base: &Path,
    env: Env<'_>,
) -> Catalog {
    let data_centers = self::data_centers(p, data_centers);
    let providers = self::providers(p, providers, base, env);
    let scope = Scope { data_centers: &data_centers, providers: &providers, env };
    let mut seen_models = HashSet::new();
    let mut seen_deployments = HashSet::new();
    let models = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = format!("models[{i}]");
            if !seen_models.insert(m.id.clone()) {
                p.add(format!("{path}.id"), format!("duplicate model id `{}`", m.id));
            }
            model(p, &path, m, &scope, &mut seen_deployments)
        })
        .collect();
    Catalog::new(models, data_centers, providers)
}

fn data_centers(p: &mut Problems, raw: &[RawDataCenter]) -> Vec<DataCenter> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, dc) in raw.iter().enumerate() {
        let path = format!("data_centers[{i}]");
        if !seen.insert(dc.id.clone()) {
            p.add(format!("{path}.id"), format!("duplicate data center id `{}`", dc.id));
        }
        if dc.id.is_empty() {
            p.add(format!("{path}.id"), "must not be empty");
        }
        let pue = p.positive(&format!("{path}.pue"), dc.pue, 1.2);
        if let Some(node) = &dc.price_node {
            if node.split_once('/').is_none_or(|(iso, loc)| iso.is_empty() || loc.is_empty()) {
                p.add(format!("{path}.price_node"), format!("`{node}` must be `ISO/location`, e.g. `CAISO/SP-15`"));
            }
        }
        out.push(DataCenter {
            id: dc.id.clone(),
            name: dc.name.clone().unwrap_or_else(|| dc.id.clone()),
            price_node: dc.price_node.clone(),
            pue,
        });
    }
    out
}

fn providers(p: &mut Problems, raw: &[RawProvider], base: &Path, env: Env<'_>) -> Vec<Provider> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, pr) in raw.iter().enumerate() {
        let path = format!("providers[{i}]");
        if !seen.insert(pr.id.clone()) {
            p.add(format!("{path}.id"), format!("duplicate provider id `{}`", pr.id));
        }
        let base_url = p.url(&format!("{path}.base_url"), &pr.base_url).unwrap_or_default();
        let api_key = p.secret_env(&format!("{path}.api_key_env"), &pr.api_key_env, env);
        let ca_file = pr.ca_file.as_ref().map(|c| resolve(base, c));
        if let Some(ca) = &ca_file {
            if let Err(e) = crate::upstream::client::read_ca(ca) {
                p.add(format!("{path}.ca_file"), e.to_string());
            }
        }
        let fee = pr.routing_fee.unwrap_or(0.05);
        if !(fee.is_finite() && (0.0..=1.0).contains(&fee)) {
            p.add(format!("{path}.routing_fee"), format!("must be between 0 and 1, got {fee}"));
        }
        let api = match pr.api.as_deref() {
            None | Some("openai") => {
                if pr.anthropic_version.is_some() {
                    p.add(format!("{path}.anthropic_version"), "only for api = \"anthropic\"");
                }
                ProviderApi::OpenAi
            }
            Some("anthropic") => {
                let version = pr.anthropic_version.clone().unwrap_or_else(|| "2023-06-01".into());
                if version.is_empty() || !version.bytes().all(|b| b.is_ascii_graphic()) {
                    p.add(format!("{path}.anthropic_version"), "must be a non-empty header value without spaces");
                }
                ProviderApi::Anthropic { version }
            }
            Some(other) => {
                p.add(format!("{path}.api"), format!("unknown API `{other}`; expected openai or anthropic"));
                ProviderApi::OpenAi
            }
        };
        out.push(Provider { id: pr.id.clone(), base_url, api_key, ca_file, routing_fee: fee, api });
    }
    out
}

/// One model at `path` (its id already checked for duplicates) and its deployments.
fn model(p: &mut Problems, path: &str, m: &RawModel, scope: &Scope<'_>, seen: &mut HashSet<String>) -> Model {
    if m.id.is_empty() || m.id.contains('@') || m.id.chars().any(char::is_whitespace) {
        p.add(format!("{path}.id"), format!("`{}` must be non-empty without `@` or spaces", m.id));
    }
    let category = match m.category.as_str() {
        "free" => Category::Free,
        "hosted" => Category::Hosted,
        "third-party" => Category::ThirdParty,
        other => {
            p.add(format!("{path}.category"), format!("`{other}` is not one of: free, hosted, third-party"));
            Category::Hosted
        }
    };
    if m.deployments.is_empty() {
        p.add(format!("{path}.deployments"), "a model needs at least one deployment");
    }
    let deployments = m
        .deployments
        .iter()
        .enumerate()
        .filter_map(|(j, d)| deployment(p, &format!("{path}.deployments[{j}]"), m, &category, d, scope, seen))
        .collect();
    Model {
        id: m.id.clone(),
        category,
        owned_by: m.owned_by.clone().unwrap_or_else(|| "joule".into()),
        created: m.created.unwrap_or(1_730_000_000),
        ttft_timeout: match m.ttft_timeout_ms {
            Some(0) => {
                p.add(format!("{path}.ttft_timeout_ms"), "must be > 0");
                None
            }
            v => v.map(Duration::from_millis),
        },
        deployments,
    }
}

/// One deployment of model `m` at `dpath`; `None` when it names both or neither of
/// `data_center` and `provider`.
fn deployment(
    p: &mut Problems,
    dpath: &str,
    m: &RawModel,
    category: &Category,
    d: &RawDeployment,
    scope: &Scope<'_>,
    seen: &mut HashSet<String>,
) -> Option<Deployment> {
    if !seen.insert(d.id.clone()) {
        p.add(format!("{dpath}.id"), format!("duplicate deployment id `{}`", d.id));
    }
    let prior = Prior {
        ttft_ms: p.positive(&format!("{dpath}.ttft_ms"), d.ttft_ms, 500.0),
        tokens_per_s: p.positive(&format!("{dpath}.tokens_per_s"), d.tokens_per_s, 50.0),
    };
    let upstream_model = d.upstream_model.clone().unwrap_or_else(|| m.id.clone());
    let kind = match (&d.data_center, &d.provider) {
        (Some(dc), None) => hosted(p, dpath, dc, d, scope),
        (None, Some(pr)) => provider_route(p, dpath, pr, d, scope),
        (Some(_), Some(_)) => {
            p.add(dpath, "set either data_center (hosted) or provider (third-party), not both");
            return None;
        }
        (None, None) => {
            p.add(dpath, "set data_center (hosted) or provider (third-party)");
            return None;
        }
    };
    if matches!((category, &kind), (Category::ThirdParty, DeploymentKind::Hosted { .. })) {
        p.add(dpath, "a third-party model is served by provider routes only");
    }
    Some(Deployment { id: d.id.clone(), upstream_model, prior, kind })
}

/// A hosted deployment in data center `dc`: backend URL, base prices, GPU profile (required
/// when the data center has a price node), floor prices, backend credential.
fn hosted(p: &mut Problems, dpath: &str, dc: &str, d: &RawDeployment, scope: &Scope<'_>) -> DeploymentKind {
    let dc_index = scope.data_centers.iter().position(|x| x.id == dc);
    if dc_index.is_none() {
        p.add(format!("{dpath}.data_center"), format!("unknown data center `{dc}`"));
    }
    let url = match &d.url {
        Some(u) => p.url(&format!("{dpath}.url"), u),
        None => {
            p.add(format!("{dpath}.url"), "a hosted deployment needs the backend url");
            None
        }
    };
    if d.max_tokens.is_some() {
        p.add(format!("{dpath}.max_tokens"), "is for provider routes (an API that requires max_tokens)");
    }
    if d.list_price_input.is_some() || d.list_price_output.is_some() || d.list_price_cache_read.is_some() || d.list_price_cache_write.is_some() {
        p.add(dpath, "list_price_* is for provider routes; hosted deployments use base_price_*");
    }
    let base_price = TokenPrice {
        input: p.price(&format!("{dpath}.base_price_input"), d.base_price_input),
        output: p.price(&format!("{dpath}.base_price_output"), d.base_price_output),
    };
    let gpu = d.gpu.as_ref().map(|g| GpuProfile {
        node_kw: p.required_positive(&format!("{dpath}.gpu.node_kw"), g.node_kw),
        prefill_tokens_per_s: p.required_positive(&format!("{dpath}.gpu.prefill_tokens_per_s"), g.prefill_tokens_per_s),
        decode_tokens_per_s: p.required_positive(&format!("{dpath}.gpu.decode_tokens_per_s"), g.decode_tokens_per_s),
    });
    let priced = dc_index.and_then(|i| scope.data_centers.get(i)).is_some_and(|x| x.price_node.is_some());
    if priced && gpu.is_none() {
        p.add(
            format!("{dpath}.gpu"),
            "the data center has a price_node: set gpu = { node_kw, prefill_tokens_per_s, decode_tokens_per_s }",
        );
    }
    let floor = TokenPrice {
        input: p.optional_price(&format!("{dpath}.floor_price_input"), d.floor_price_input),
        output: p.optional_price(&format!("{dpath}.floor_price_output"), d.floor_price_output),
    };
    DeploymentKind::Hosted {
        data_center: dc_index.unwrap_or(0),
        base_url: url.unwrap_or_default(),
        api_key: p.secret_env(&format!("{dpath}.api_key_env"), &d.api_key_env, scope.env),
        base_price,
        gpu,
        floor,
    }
}

/// A provider route through provider `pr`: list prices only (URL, credential, GPU profile and
/// floor prices belong elsewhere).
fn provider_route(p: &mut Problems, dpath: &str, pr: &str, d: &RawDeployment, scope: &Scope<'_>) -> DeploymentKind {
    let idx = scope.providers.iter().position(|x| x.id == pr);
    if idx.is_none() {
        p.add(format!("{dpath}.provider"), format!("unknown provider `{pr}`"));
    }
    if d.url.is_some() || d.api_key_env.is_some() {
        p.add(dpath, "url/api_key_env belong to the provider for provider routes");
    }
    if d.gpu.is_some() || d.floor_price_input.is_some() || d.floor_price_output.is_some() {
        p.add(dpath, "gpu and floor_price_* are for hosted deployments");
    }
    let list_price = TokenPrice {
        input: p.price(&format!("{dpath}.list_price_input"), d.list_price_input),
        output: p.price(&format!("{dpath}.list_price_output"), d.list_price_output),
    };
    if d.max_tokens == Some(0) {
        p.add(format!("{dpath}.max_tokens"), "must be > 0");
    }
    let cache_price = (d.list_price_cache_read.is_some() || d.list_price_cache_write.is_some()).then(|| CachePrice {
        read: p.price(&format!("{dpath}.list_price_cache_read"), d.list_price_cache_read.or(d.list_price_input)),
        write: p.price(&format!("{dpath}.list_price_cache_write"), d.list_price_cache_write.or(d.list_price_input)),
    });
    DeploymentKind::Provider { provider: idx.unwrap_or(0), list_price, cache_price, default_max_tokens: d.max_tokens.unwrap_or(4096) }
}
