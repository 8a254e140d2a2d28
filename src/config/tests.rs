//! Validation problems of broken configs: every message, its TOML path and the order they
//! are reported in, as `joule check-config` prints them. Paths in messages are relative to an
//! empty base (a config in the working directory).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{parse, LogFormat};
use crate::routing::tags::StrategySet;
use crate::store::StoreLocation;

/// The `path: message` lines of the problems `text` has, with no environment variables set.
fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new(""), &|_| None) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect(),
    }
}

/// Every area broken at once: the areas in validation order, each with its problems in file order.
#[test]
fn every_section_reports_in_order() {
    let text = r#"default_strategy = "nope@price"
[server]
listen = ["bad", "127.0.0.1:1"]
admin_listen = "x"
threads = 0
[server.tls]
listen = []
[limits]
max_body_bytes = 0
connect_timeout_ms = 0
request_timeout_ms = 0
[log]
format = "xml"
level = "=[bad"
[telemetry]
alpha = 2.0
prior_weight = -1
[health]
failure_threshold = 0
open_base_ms = 5000
open_max_ms = 100
probe_timeout_ms = 0
[[data_centers]]
id = "a"
price_node = "CAISO"
pue = -1
[[data_centers]]
id = "a"
[[data_centers]]
id = ""
price_node = "X/Y"
[[providers]]
id = "p"
base_url = "ftp://x"
api_key_env = "NOPE_ENV_X"
ca_file = "missing.pem"
routing_fee = 2
[[providers]]
id = "p"
base_url = "not a url"
[[models]]
id = "m 1@x"
category = "weird"
ttft_timeout_ms = 0
[[models]]
id = "m 1@x"
category = "third-party"
[[models.deployments]]
id = "d1"
data_center = "zzz"
list_price_input = 1
base_price_input = -1
gpu = { node_kw = -2 }
floor_price_input = -3
ttft_ms = 0
tokens_per_s = -1
[[models.deployments]]
id = "d1"
data_center = "a"
url = "http://h/v1"
base_price_input = 1
base_price_output = 1
[[models.deployments]]
id = "d2"
provider = "q"
url = "http://x"
gpu = { node_kw = 1, prefill_tokens_per_s = 1, decode_tokens_per_s = 1 }
[[models.deployments]]
id = "d3"
provider = "p"
data_center = "a"
[[models.deployments]]
id = "d4"
[[models]]
id = "m3"
category = "free"
[[keys]]
name = "k"
sha256 = "zz"
[[keys]]
name = "k2"
sha256 = "017a2bc7482766424325a1b42336497095c54cd5a948464332135e38ca44fd85"
project = "bad name!!"
[[keys]]
name = "k3"
sha256 = "017a2bc7482766424325a1b42336497095c54cd5a948464332135e38ca44fd85"
[energy]
min_usd_per_mwh = 100
max_usd_per_mwh = nan
stale_fallback_usd_per_mwh = inf
refresh_s = 0
history_days = 3
[energy.replay]
files = ["nofile.csv"]
speed = 0
start = "yesterday"
[[energy.poll]]
url = "gopher://x"
format = "xml"
interval_s = 0
timeout_ms = 0
[energy.push]
token_env = "NOPE_PUSH"
[store]
backend = "sqlite"
url = "x"
queue_capacity = 0
batch_size = 100000
flush_interval_ms = 0
budget_sync_interval_ms = 0
[admin]
token_env = "A"
token_sha256 = "b"
[plugins]
dir = "nodir"
call_timeout_ms = 0
memory_limit_mib = 5000
disable_after = 0
"#;
    let expected = [
        "server.listen[0]: `bad` is not an address like 127.0.0.1:8080",
        "server.tls.listen: at least one address is required when [server.tls] is present",
        "server.tls.cert_file: missing",
        "server.tls.key_file: missing",
        "server.admin_listen: `x` is not an address like 127.0.0.1:8080",
        "server.threads: must be at least 1",
        "limits.max_body_bytes: must be > 0",
        "limits.connect_timeout_ms: must be > 0",
        "limits.request_timeout_ms: must be > 0",
        "log.format: `xml` is not one of: text, json",
        "log.level: `=[bad` is not a level or filter (e.g. info, debug, joule=debug)",
        "telemetry.alpha: must be in (0, 1], got 2",
        "telemetry.prior_weight: must be a finite number >= 0, got -1",
        "health.failure_threshold: must be at least 1",
        "health.open_max_ms: must be >= health.open_base_ms",
        "health.probe_timeout_ms: must be > 0",
        "data_centers[0].pue: must be a finite number > 0, got -1",
        "data_centers[0].price_node: `CAISO` must be `ISO/location`, e.g. `CAISO/SP-15`",
        "data_centers[1].id: duplicate data center id `a`",
        "data_centers[2].id: must not be empty",
        "providers[0].base_url: `ftp://x` must be an http:// or https:// URL with a host",
        "providers[0].api_key_env: environment variable `NOPE_ENV_X` is not set",
        "providers[0].ca_file: cannot read CA file missing.pem: No such file or directory (os error 2)",
        "providers[0].routing_fee: must be between 0 and 1, got 2",
        "providers[1].id: duplicate provider id `p`",
        "providers[1].base_url: `not a url` is not a URL: relative URL without a base",
        "models[0].id: `m 1@x` must be non-empty without `@` or spaces",
        "models[0].category: `weird` is not one of: free, hosted, third-party",
        "models[0].deployments: a model needs at least one deployment",
        "models[0].ttft_timeout_ms: must be > 0",
        "models[1].id: duplicate model id `m 1@x`",
        "models[1].id: `m 1@x` must be non-empty without `@` or spaces",
        "models[1].deployments[0].ttft_ms: must be a finite number > 0, got 0",
        "models[1].deployments[0].tokens_per_s: must be a finite number > 0, got -1",
        "models[1].deployments[0].data_center: unknown data center `zzz`",
        "models[1].deployments[0].url: a hosted deployment needs the backend url",
        "models[1].deployments[0]: list_price_* is for provider routes; hosted deployments use base_price_*",
        "models[1].deployments[0].base_price_input: must be a finite number >= 0, got -1",
        "models[1].deployments[0].base_price_output: missing ($ per million tokens)",
        "models[1].deployments[0].gpu.node_kw: must be a finite number > 0, got -2",
        "models[1].deployments[0].gpu.prefill_tokens_per_s: missing",
        "models[1].deployments[0].gpu.decode_tokens_per_s: missing",
        "models[1].deployments[0].floor_price_input: must be a finite number >= 0, got -3",
        "models[1].deployments[0]: a third-party model is served by provider routes only",
        "models[1].deployments[1].id: duplicate deployment id `d1`",
        "models[1].deployments[1].gpu: the data center has a price_node: set gpu = { node_kw, prefill_tokens_per_s, decode_tokens_per_s }",
        "models[1].deployments[1]: a third-party model is served by provider routes only",
        "models[1].deployments[2].provider: unknown provider `q`",
        "models[1].deployments[2]: url/api_key_env belong to the provider for provider routes",
        "models[1].deployments[2]: gpu and floor_price_* are for hosted deployments",
        "models[1].deployments[2].list_price_input: missing ($ per million tokens)",
        "models[1].deployments[2].list_price_output: missing ($ per million tokens)",
        "models[1].deployments[3]: set either data_center (hosted) or provider (third-party), not both",
        "models[1].deployments[4]: set data_center (hosted) or provider (third-party)",
        "models[2].deployments: a model needs at least one deployment",
        "keys[0].sha256: must be 64 hex characters (see `joule hash-key`)",
        "keys[1].project: project: `bad name!!` must be 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        "keys[2].sha256: duplicate key hash",
        "energy.max_usd_per_mwh: must be a finite number, got NaN",
        "energy.stale_fallback_usd_per_mwh: must be a finite number, got inf",
        "energy.refresh_s: must be at least 1",
        "energy.history_days: must be at least 7 (the 7d window), got 3",
        "energy.replay.files[0]: `nofile.csv` is not a readable file",
        "energy.replay.speed: must be a finite number > 0, got 0",
        "energy.replay.start: `yesterday` is neither an RFC 3339 time nor an offset like 36h or 2d",
        "energy.poll[0].url: `gopher://x` must be an http:// or https:// URL with a host",
        "energy.poll[0].format: `xml` is not one of: json, csv",
        "energy.poll[0].interval_s: must be > 0",
        "energy.poll[0].timeout_ms: must be > 0",
        "energy.push.token_env: environment variable `NOPE_PUSH` is not set",
        "store: url/url_env are for backend = \"postgres\"",
        "store.queue_capacity: must be between 1 and 10000000, got 0",
        "store.batch_size: must be between 1 and 10000, got 100000",
        "store.flush_interval_ms: must be > 0",
        "store.budget_sync_interval_ms: must be > 0",
        "admin: set token_env or token_sha256, not both",
        "plugins.dir: `nodir` is not a directory",
        "plugins.call_timeout_ms: must be 1 to 10000, got 0",
        "plugins.memory_limit_mib: must be 1 to 4096, got 5000",
        "plugins.disable_after: must be at least 1",
    ];
    assert_eq!(problems(text), expected);
}

/// A TLS identity that cannot be read, a hosted deployment at a priced site without a GPU profile, history over a year, sqlite fields on postgres, a short admin token hash.
#[test]
fn tls_files_history_cap_postgres_fields_and_token_hash() {
    let text = r#"[server]
[server.tls]
listen = ["0.0.0.0:1"]
cert_file = "nocert.pem"
key_file = "nokey.pem"
[energy]
history_days = 400
[[energy.poll]]
url = "http://ok/x"
[store]
backend = "postgres"
path = "x.db"
url = "postgres://a@b/c"
url_env = "Y"
[admin]
token_sha256 = "12"
[[data_centers]]
id = "dc"
price_node = "A/B"
[[models]]
id = "m"
category = "hosted"
[[models.deployments]]
id = "d"
data_center = "dc"
url = "http://x"
base_price_input = 1
base_price_output = 1
"#;
    let expected = [
        "server.tls: cannot read certificate file nocert.pem: No such file or directory (os error 2)",
        "models[0].deployments[0].gpu: the data center has a price_node: set gpu = { node_kw, prefill_tokens_per_s, decode_tokens_per_s }",
        "energy.history_days: must be at most 366, got 400",
        "store.path: path is for backend = \"sqlite\"",
        "store.url: set exactly one of url or url_env for backend = \"postgres\"",
        "admin.token_sha256: must be 64 hex characters (see `joule hash-key`)",
    ];
    assert_eq!(problems(text), expected);
}

/// TLS without files, an inverted energy range, unset environment variables.
#[test]
fn missing_tls_files_inverted_range_and_unset_env() {
    let text = r#"[server]
listen = ["127.0.0.1:9"]
[server.tls]
listen = ["0.0.0.0:1"]
[store]
backend = "postgres"
url_env = "NOPE_DB"
[admin]
token_env = "NOPE_ADMIN"
[energy]
max_usd_per_mwh = -2000
"#;
    let expected = [
        "server.tls.cert_file: missing",
        "server.tls.key_file: missing",
        "energy.max_usd_per_mwh: must be above energy.min_usd_per_mwh (-1000), got -2000",
        "store.url_env: environment variable `NOPE_DB` is not set",
        "admin.token_env: environment variable `NOPE_ADMIN` is not set",
    ];
    assert_eq!(problems(text), expected);
}

/// An empty replay list, feeds without a priced data center, an unknown backend.
#[test]
fn empty_replay_feeds_without_nodes_unknown_backend() {
    let text = r#"[server]
listen = ["127.0.0.1:9"]
[store]
backend = "mysql"
[energy.replay]
files = []
start = "36h"
"#;
    let expected = [
        "energy.replay.files: list at least one CSV file",
        "energy: feeds are configured but no data center has a price_node",
        "store.backend: `mysql` is not one of: sqlite, postgres, none",
    ];
    assert_eq!(problems(text), expected);
}

/// A provider route with hosted-only fields and a bad list price, a connection string that does not parse.
#[test]
fn provider_route_with_hosted_fields_and_bad_postgres_url() {
    let text = r#"[server]
listen = ["127.0.0.1:9"]
[store]
backend = "postgres"
url = "::::not pg"
[[providers]]
id = "p"
base_url = "https://x/v1/"
[[models]]
id = "m"
category = "hosted"
[[models.deployments]]
id = "d"
provider = "p"
list_price_input = -1
floor_price_output = 1
"#;
    let expected = [
        "models[0].deployments[0]: gpu and floor_price_* are for hosted deployments",
        "models[0].deployments[0].list_price_input: must be a finite number >= 0, got -1",
        "models[0].deployments[0].list_price_output: missing ($ per million tokens)",
        "store.url: not a PostgreSQL connection string (postgres://user@host/db or host=… dbname=…)",
    ];
    assert_eq!(problems(text), expected);
}

/// `[[server.tls.certificates]]`: names well formed and claimed once, files required.
#[test]
fn tls_certificates_need_good_names_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
    let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let (c, k) = (c.display(), k.display());
    let text = format!(
        "[server.tls]\nlisten = [\"127.0.0.1:9\"]\n\
         [[server.tls.certificates]]\nserver_names = [\"A.test\", \"*.b.test\"]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n\
         [[server.tls.certificates]]\nserver_names = [\"a.test\", \"bad name\", \"*.*.x\", \"-x.test\"]\ncert_file = \"{c}\"\n\
         [[server.tls.certificates]]\nname = \"a.test\"\nserver_names = []\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "server.tls.certificates[1].server_names: `a.test` is already served by another certificate",
            "server.tls.certificates[1].server_names: `bad name` is not a host name or a one-label wildcard (api.example.com, *.example.com)",
            "server.tls.certificates[1].server_names: `*.*.x` is not a host name or a one-label wildcard (api.example.com, *.example.com)",
            "server.tls.certificates[1].server_names: `-x.test` is not a host name or a one-label wildcard (api.example.com, *.example.com)",
            "server.tls.certificates[1].key_file: missing",
            "server.tls.certificates[2].server_names: at least one server name is required",
            "server.tls.certificates[2].name: `a.test` names another certificate too",
        ]
    );
    let ok = format!("[server.tls]\nlisten = [\"127.0.0.1:9\"]\nreload_interval_ms = 250\n[[server.tls.certificates]]\nserver_names = [\"A.test\"]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n");
    let tls = parse(&ok, Path::new(""), &|_| None).unwrap().server.tls.unwrap();
    assert_eq!((tls.certificates.len(), tls.certificates[0].name.as_str(), tls.certificates[0].server_names.as_slice()), (1, "a.test", &["a.test".to_string()][..]));
    assert_eq!(tls.reload_interval, Duration::from_millis(250));
}

/// `[limits] backend = "redis"`: one URL, a URL the client takes, no TLS.
#[test]
fn shared_limits_need_one_usable_url() {
    let base = "[server]\nlisten = [\"127.0.0.1:9\"]\n[limits]\n";
    assert_eq!(problems(&format!("{base}backend = \"memcached\"\n")), ["limits.backend: `memcached` is not one of: local, redis (or its alias valkey)"]);
    assert_eq!(problems(&format!("{base}backend = \"redis\"\n")), ["limits.url: set exactly one of url or url_env for backend = \"redis\""]);
    assert_eq!(
        problems(&format!("{base}backend = \"redis\"\nurl = \"rediss://h:6380\"\n")),
        ["limits.url: not a redis://, valkey:// or unix:// URL (TLS, rediss://, is not supported: use a private network or a Unix socket)"]
    );
    assert_eq!(problems(&format!("{base}url = \"redis://h\"\n")), ["limits: url/url_env are for backend = \"redis\""]);
    assert_eq!(problems(&format!("{base}backend = \"redis\"\nurl_env = \"NOPE\"\n")), ["limits.url_env: environment variable `NOPE` is not set"]);
    let ok = parse(&format!("{base}backend = \"redis\"\nurl = \"unix:///run/valkey.sock\"\nsync_interval_ms = 50\n"), Path::new(""), &|_| None).unwrap();
    let shared = ok.shared_limits.unwrap();
    assert_eq!((shared.timeout, shared.sync_interval), (Duration::from_millis(250), Duration::from_millis(50)));
    assert!(!format!("{shared:?}").contains("valkey.sock"), "the URL is a secret: {shared:?}");
}

/// `public_url` is the console's API base; without it the first listener's URL is.
#[test]
fn public_url_must_be_an_http_url() {
    let text = "[server]\nlisten = [\"127.0.0.1:9\"]\npublic_url = \"api.example.com/v1\"\n";
    assert_eq!(problems(text), ["server.public_url: must be an http:// or https:// URL without spaces, e.g. https://api.example.com/v1"]);
    let ok = |extra: &str| parse(&format!("[server]\nlisten = [\"127.0.0.1:9\"]\n{extra}"), Path::new(""), &|_| None).map(|s| s.server.api_base).map_err(|e| e.to_string());
    assert_eq!(ok("public_url = \"https://api.example.com/v1/\"\n").as_deref(), Ok("https://api.example.com/v1"));
    assert_eq!(ok("").as_deref(), Ok("http://127.0.0.1:9/v1"));
}

/// An unknown field is one problem at its line, naming the fields allowed there.
#[test]
fn unknown_field_names_its_line() {
    let text = "[server]\nlisten = [\"127.0.0.1:9\"]\nunknown = 1\n";
    assert_eq!(
        problems(text),
        ["line 3: unknown field `unknown`, expected one of `listen`, `tls`, `admin_listen`, `threads`, `grace_period_s`, `public_url`, `upgrade_sock`"]
    );
}

/// A config with nothing but a listener runs on the documented defaults.
#[test]
fn defaults() {
    let s = parse("[server]\nlisten = [\"127.0.0.1:9\"]\n", Path::new("base"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!((s.server.admin_listen, s.server.grace_period, s.log_format, s.log_level.as_str()), (None, secs(30), LogFormat::Text, "info"));
    let l = &s.limits;
    assert_eq!(l.max_body_bytes, 16 << 20);
    assert_eq!([l.connect_timeout, l.first_byte_timeout, l.stream_idle_timeout, l.request_timeout, l.client_body_timeout], [ms(2_000), ms(30_000), ms(120_000), ms(600_000), ms(30_000)]);
    let t = &s.telemetry;
    assert_eq!((t.enabled, t.alpha, t.prior_weight, t.failure_threshold, t.open_base, t.open_max), (true, 0.2, 2.0, 3, secs(1), secs(60)));
    assert_eq!((s.health.probe_interval, s.health.probe_timeout, s.health.probe_third_party), (Some(ms(5_000)), ms(2_000), false));
    assert_eq!(s.default_strategy, StrategySet::default_price());
    let e = &s.energy;
    assert_eq!((e.min_usd_per_mwh, e.max_usd_per_mwh, e.stale_fallback_usd_per_mwh, e.refresh), (-1000.0, 10_000.0, 150.0, secs(10)));
    assert_eq!((e.history.retention_days, e.history.data_dir.is_none(), e.replay.is_none(), e.polls.len(), e.push.is_none()), (7, true, true, 0, true));
    let store = s.store.unwrap_or_else(|| panic!("sqlite store by default"));
    assert!(matches!(&store.location, StoreLocation::Sqlite(p) if p == Path::new("base/joule.db")));
    let u = &store.usage;
    assert_eq!((u.queue_capacity, u.batch_size, u.flush_interval, u.retry_interval, store.budget_sync), (65_536, 500, ms(200), secs(1), secs(2)));
    assert_eq!(u.spill_path, PathBuf::from("base/joule.db.usage-spill.jsonl"));
    let pl = &s.plugins;
    assert_eq!((pl.dir.is_none(), pl.watch, pl.decision_log.is_none()), (true, true, true));
    assert_eq!((pl.host.call_timeout, pl.host.memory_limit, pl.host.disable_after), (ms(10), 16 << 20, 5));
    assert!(s.keys.is_empty() && s.admin_token.is_none() && s.catalog.models.is_empty());
}

/// `limits.max_answer_bytes`: 32 MiB unless set, and never 0.
#[test]
fn max_answer_bytes() {
    let base = "[server]\nlisten = [\"127.0.0.1:9\"]\n";
    let limit = |extra: &str| parse(&format!("{base}{extra}"), Path::new(""), &|_| None).map(|s| s.limits.max_answer_bytes).ok();
    assert_eq!(limit(""), Some(32 << 20));
    assert_eq!(limit("[limits]\nmax_answer_bytes = 4096\n"), Some(4096));
    assert_eq!(problems(&format!("{base}[limits]\nmax_answer_bytes = 0\n")), ["limits.max_answer_bytes: must be > 0"]);
}

/// Provider wire formats: `api` is openai or anthropic, `anthropic_version` only for the
/// latter (default 2023-06-01), a route's `max_tokens` > 0 and only on provider routes.
#[test]
fn provider_api_and_max_tokens() {
    let text = |api: &str, version: &str, max: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:9\"]\n[[data_centers]]\nid = \"dc\"\nname = \"DC\"\n[[providers]]\nid = \"p\"\nbase_url = \"https://x/v1\"\n{api}{version}\n[[models]]\nid = \"m\"\ncategory = \"hosted\"\n[[models.deployments]]\nid = \"d\"\nprovider = \"p\"\nlist_price_input = 1\nlist_price_output = 1\n{max}\n[[models.deployments]]\nid = \"h\"\ndata_center = \"dc\"\nurl = \"http://127.0.0.1:1/v1\"\nbase_price_input = 1\nbase_price_output = 1\n"
        )
    };
    let settings = parse(&text("api = \"anthropic\"\n", "", ""), Path::new(""), &|_| None).unwrap();
    let p = &settings.catalog.providers[0];
    assert_eq!(p.api, crate::catalog::ProviderApi::Anthropic { version: "2023-06-01".into() });
    let d = &settings.catalog.models[0].deployments[0];
    assert!(matches!(d.kind, crate::catalog::DeploymentKind::Provider { default_max_tokens: 4096, .. }));
    assert_eq!(problems(&text("", "", "max_tokens = 100\n")), Vec::<String>::new());
    assert_eq!(problems(&text("api = \"gemini\"\n", "", "")), ["providers[0].api: unknown API `gemini`; expected openai or anthropic"]);
    assert_eq!(problems(&text("", "anthropic_version = \"2023-06-01\"\n", "")), ["providers[0].anthropic_version: only for api = \"anthropic\""]);
    assert_eq!(
        problems(&text("api = \"anthropic\"\n", "anthropic_version = \"a b\"\n", "max_tokens = 0\n")),
        ["providers[0].anthropic_version: must be a non-empty header value without spaces", "models[0].deployments[0].max_tokens: must be > 0"]
    );
    // Cache prices: one set defaults the other to the input price; bad values name the field.
    let settings = parse(&text("", "", "list_price_cache_read = 0.1
"), Path::new(""), &|_| None).unwrap();
    let d = &settings.catalog.models[0].deployments[0];
    let want = Some(crate::catalog::CachePrice { read: 0.1, write: 1.0 });
    assert!(matches!(d.kind, crate::catalog::DeploymentKind::Provider { cache_price, .. } if cache_price == want), "{:?}", d.kind);
    assert_eq!(
        problems(&text("", "", "list_price_cache_write = -2
")),
        ["models[0].deployments[0].list_price_cache_write: must be a finite number >= 0, got -2"]
    );
    let hosted = text("", "", "").replace("base_price_output = 1\n", "base_price_output = 1\nlist_price_cache_read = 1\n");
    assert_eq!(problems(&hosted), ["models[0].deployments[1]: list_price_* is for provider routes; hosted deployments use base_price_*"]);
}
