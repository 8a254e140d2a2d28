//! The catalog: models, their deployments, data centers and providers, as validated from the
//! config. Immutable once built; the gateway swaps whole catalogs, never edits one in place.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::secret::Secret;

/// A model's category, as shown in `/v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Costs the client nothing; still routed by the gateway's own cost.
    Free,
    /// Served from our data centers (possibly with provider routes as overflow).
    Hosted,
    /// Served by third-party providers only.
    ThirdParty,
}

impl Category {
    /// The config/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Free => "free",
            Category::Hosted => "hosted",
            Category::ThirdParty => "third-party",
        }
    }
}

/// $ per million tokens, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenPrice {
    pub input: f64,
    pub output: f64,
}

/// $/Mtok of prompt tokens a provider serves from its prompt cache (`read`) or writes into it
/// (`write`), where it prices them apart from other input tokens (Anthropic does).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CachePrice {
    pub read: f64,
    pub write: f64,
}

/// What a client pays for cached prompt tokens, and the routing-fee part of it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CacheQuote {
    pub price: CachePrice,
    pub fee: CachePrice,
}

/// A hosted deployment's hardware, for the energy part of its token price (DESIGN.md, Pricing):
/// the node's power draw and its throughput per token direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuProfile {
    /// Electrical power of the serving node, kW (IT load; the data center's PUE is applied on top).
    pub node_kw: f64,
    /// Input (prefill) tokens per second the node processes.
    pub prefill_tokens_per_s: f64,
    /// Output (decode) tokens per second the node generates.
    pub decode_tokens_per_s: f64,
}

/// What the gateway assumes about a deployment before it has measured anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    pub ttft_ms: f64,
    pub tokens_per_s: f64,
}

/// A site of ours.
#[derive(Debug, Clone)]
pub struct DataCenter {
    pub id: String,
    pub name: String,
    /// Key in the energy feed (`ISO/location`), if priced by energy.
    pub price_node: Option<String>,
    pub pue: f64,
}

/// A third-party API.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    /// Base URL up to and including the version segment, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    pub api_key: Option<Secret<String>>,
    /// Extra CA certificates (PEM) trusted for this provider, besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// Fraction added to list prices (default 0.05).
    pub routing_fee: f64,
    /// The wire format it speaks.
    pub api: ProviderApi,
}

/// The wire format of a provider's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderApi {
    /// OpenAI chat completions at `{base_url}/chat/completions`, `Authorization: Bearer`.
    OpenAi,
    /// Anthropic Messages at `{base_url}/messages`, `x-api-key` and `anthropic-version`
    /// (default `2023-06-01`); requests and answers are translated (`crate::translate`).
    Anthropic { version: String },
}

/// Where a deployment runs.
#[derive(Debug, Clone)]
pub enum DeploymentKind {
    Hosted {
        /// Index into [`Catalog::data_centers`].
        data_center: usize,
        base_url: String,
        api_key: Option<Secret<String>>,
        base_price: TokenPrice,
        /// Energy profile; required when the data center has a price node.
        gpu: Option<GpuProfile>,
        /// Lowest token price, $/Mtok per direction (default 0): negative energy prices lower
        /// the price down to here, never below.
        floor: TokenPrice,
    },
    Provider {
        /// Index into [`Catalog::providers`].
        provider: usize,
        list_price: TokenPrice,
        /// The provider's cache prices, when configured; otherwise cached prompt tokens are
        /// priced as input.
        cache_price: Option<CachePrice>,
        /// `max_tokens` sent when the client names none, for APIs that require it
        /// (Anthropic). Default 4096.
        default_max_tokens: u32,
    },
}

/// One concrete place that serves a model.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    /// The model id sent upstream in place of the public id.
    pub upstream_model: String,
    pub prior: Prior,
    pub kind: DeploymentKind,
}

/// A public model id with its deployments.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub category: Category,
    pub owned_by: String,
    pub created: u64,
    /// Limit on a stream's first content token; past it the next deployment is tried.
    /// `None`: the first-byte timeout applies.
    pub ttft_timeout: Option<std::time::Duration>,
    pub deployments: Vec<Deployment>,
}

/// Itemised token price of a deployment for the client.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quote {
    /// What the client pays, $/Mtok.
    pub price: TokenPrice,
    /// The routing-fee part of `price` (provider routes only).
    pub fee: TokenPrice,
    /// What the deployment costs us, $/Mtok; what the price strategy ranks free models by.
    pub cost: TokenPrice,
    /// The energy part of `price` (hosted only): `price - base`, which is the energy $/Mtok of
    /// the formula unless the floor binds. Negative when energy prices are negative.
    pub energy: TokenPrice,
    /// The energy price behind this quote is stale (see `crate::pricing::energy`).
    pub stale: bool,
    /// Cached prompt tokens priced apart (provider routes with cache prices); `None`: they
    /// cost what other input tokens cost.
    pub cache: Option<CacheQuote>,
}

impl Quote {
    /// The quote with `share` (0..1) taken off what the client pays — every part of the price,
    /// the fee and the cache prices alike; what the deployment costs us is unchanged.
    pub fn discounted(mut self, share: f64) -> Quote {
        let f = 1.0 - share;
        let scale = |t: TokenPrice| TokenPrice { input: t.input * f, output: t.output * f };
        self.price = scale(self.price);
        self.fee = scale(self.fee);
        self.energy = scale(self.energy);
        if let Some(c) = &mut self.cache {
            c.price = CachePrice { read: c.price.read * f, write: c.price.write * f };
            c.fee = CachePrice { read: c.fee.read * f, write: c.fee.write * f };
        }
        self
    }
}

/// The validated catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub models: Vec<Model>,
    pub data_centers: Vec<DataCenter>,
    pub providers: Vec<Provider>,
    by_id: HashMap<String, usize>,
    /// Distinct for every catalog built in this process (clones share it): what indexes into
    /// the catalog (price books) are checked against.
    version: u64,
}

impl Catalog {
    /// Builds the lookup index. Inputs come validated from [`crate::config`].
    pub fn new(models: Vec<Model>, data_centers: Vec<DataCenter>, providers: Vec<Provider>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let by_id = models.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect();
        let version = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Catalog { models, data_centers, providers, by_id, version }
    }

    /// This catalog's version (see the field).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The model with this public id.
    pub fn model(&self, id: &str) -> Option<&Model> {
        self.model_indexed(id).map(|(_, m)| m)
    }

    /// The model with this public id and its index in [`Catalog::models`].
    pub fn model_indexed(&self, id: &str) -> Option<(usize, &Model)> {
        self.by_id.get(id).and_then(|&i| self.models.get(i).map(|m| (i, m)))
    }

    /// Position of the model with this public id in [`Catalog::models`].
    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.model_indexed(id).map(|(i, _)| i)
    }

    /// The data center of a hosted deployment.
    pub fn data_center_of(&self, d: &Deployment) -> Option<&DataCenter> {
        match &d.kind {
            DeploymentKind::Hosted { data_center, .. } => self.data_centers.get(*data_center),
            DeploymentKind::Provider { .. } => None,
        }
    }

    /// The provider of a provider route.
    pub fn provider_of(&self, d: &Deployment) -> Option<&Provider> {
        match &d.kind {
            DeploymentKind::Provider { provider, .. } => self.providers.get(*provider),
            DeploymentKind::Hosted { .. } => None,
        }
    }

    /// The upstream base URL and credential of a deployment.
    pub fn endpoint_of<'a>(&'a self, d: &'a Deployment) -> (&'a str, Option<&'a Secret<String>>) {
        match &d.kind {
            DeploymentKind::Hosted { base_url, api_key, .. } => (base_url, api_key.as_ref()),
            DeploymentKind::Provider { provider, .. } => match self.providers.get(*provider) {
                Some(p) => (&p.base_url, p.api_key.as_ref()),
                None => ("", None),
            },
        }
    }

    /// The current token price of a deployment of `model`.
    ///
    /// This is the quote without energy: hosted deployments at their base price (floored).
    /// The live price including energy comes from `crate::pricing::PriceBook`, which falls
    /// back to this. Provider routes: list price plus the routing fee. Free models: 0 to the
    /// client, the deployment's cost still reported for routing.
    pub fn quote(&self, model: &Model, d: &Deployment) -> Quote {
        let mut cache = None;
        let (cost, fee) = match &d.kind {
            DeploymentKind::Hosted { base_price, floor, .. } => (
                TokenPrice { input: base_price.input.max(floor.input), output: base_price.output.max(floor.output) },
                TokenPrice::default(),
            ),
            DeploymentKind::Provider { provider, list_price, cache_price, .. } => {
                let rate = self.providers.get(*provider).map_or(0.0, |p| p.routing_fee);
                cache = cache_price.map(|c| CacheQuote {
                    price: CachePrice { read: c.read * (1.0 + rate), write: c.write * (1.0 + rate) },
                    fee: CachePrice { read: c.read * rate, write: c.write * rate },
                });
                (
                    TokenPrice { input: list_price.input * (1.0 + rate), output: list_price.output * (1.0 + rate) },
                    TokenPrice { input: list_price.input * rate, output: list_price.output * rate },
                )
            }
        };
        if model.category == Category::Free {
            return Quote { cost, ..Quote::default() };
        }
        Quote { price: cost, fee, cost, cache, ..Quote::default() }
    }
}
