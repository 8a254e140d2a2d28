//! `[server]`, `[server.tls]` and `[log]`: the listeners (cleartext, TLS, admin), worker
//! threads, the shutdown grace period and log output, validated into [`ServerSettings`],
//! [`LogFormat`] and the log level. These settings types live here because their only users
//! (`server`, `cli`) sit above `config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::problems::{resolve, Problems};
use super::tls;

/// `[server]`: where the gateway listens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Cleartext listeners (`127.0.0.1:8080`). Optional when `[server.tls]` is set.
    #[serde(default)]
    pub listen: Vec<String>,
    pub tls: Option<RawTls>,
    /// Admin listener (`/metrics`, `/healthz`, `/admin/…`). Default none.
    pub admin_listen: Option<String>,
    /// Worker threads of the API service, at least 1. Default: number of CPUs.
    pub threads: Option<usize>,
    /// Seconds in-flight requests may run after SIGTERM. Default 30.
    pub grace_period_s: Option<u64>,
    /// The API's base URL as clients reach it (`https://api.example.com/v1`), shown by the
    /// web console beside keys. Default: built from the first listener.
    pub public_url: Option<String>,
}

/// `[server.tls]`: a TLS listener; all three fields are required when the table is present.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub listen: Vec<String>,
    /// PEM certificate chain, leaf first; relative to the config file.
    pub cert_file: Option<String>,
    /// PEM private key; relative to the config file.
    pub key_file: Option<String>,
}

/// `[log]`: output format and level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A level or `tracing` filter (`info`, `joule=debug`). Default `info`.
    pub level: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Cleartext listeners (may be empty when TLS is configured).
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsSettings>,
    /// Admin listener (`/metrics`, `/healthz`); none disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads for the API service. Default: number of CPUs.
    pub threads: usize,
    /// How long in-flight requests may run after SIGTERM. Default 30 s.
    pub grace_period: Duration,
    /// The API base URL clients use (`…/v1`): `public_url`, else `https://` + the first TLS
    /// listener, else `http://` + the first cleartext one.
    pub api_base: String,
}

/// TLS listener settings; files are checked to exist and parse at validation time.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Validates `[server]`. Needs at least one listener (cleartext or TLS); a bad address is left
/// out, `threads = 0` becomes 1, and a TLS identity that cannot be read drops TLS — each with
/// a problem.
pub(super) fn server(p: &mut Problems, raw: &RawServer, base: &Path) -> ServerSettings {
    let listen = p.addrs("server.listen", &raw.listen);
    let tls = raw.tls.as_ref().and_then(|t| tls_settings(p, t, base));
    if raw.listen.is_empty() && raw.tls.is_none() {
        p.add("server.listen", "no listener configured: set server.listen and/or [server.tls]");
    }
    let admin_listen = raw.admin_listen.as_deref().and_then(|s| p.addr("server.admin_listen", s));
    let threads = match raw.threads {
        Some(0) => {
            p.add("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    };
    let api_base = match raw.public_url.as_deref().map(str::trim) {
        Some(u) => {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
                p.add("server.public_url", "must be an http:// or https:// URL without spaces, e.g. https://api.example.com/v1");
            }
            u.trim_end_matches('/').to_string()
        }
        None => match (tls.as_ref().and_then(|t| t.listen.first()), listen.first()) {
            (Some(a), _) => format!("https://{a}/v1"),
            (None, Some(a)) => format!("http://{a}/v1"),
            (None, None) => String::new(),
        },
    };
    ServerSettings {
        listen,
        tls,
        admin_listen,
        threads,
        grace_period: Duration::from_secs(raw.grace_period_s.unwrap_or(30)),
        api_base,
    }
}

/// Validates `[server.tls]`: at least one address, both files present, and an identity that
/// [`tls::check_identity`] accepts. `None` when either file is missing.
fn tls_settings(p: &mut Problems, t: &RawTls, base: &Path) -> Option<TlsSettings> {
    let listen = p.addrs("server.tls.listen", &t.listen);
    if t.listen.is_empty() {
        p.add("server.tls.listen", "at least one address is required when [server.tls] is present");
    }
    let mut file = |field: &str, v: &Option<String>| match v {
        Some(f) => Some(resolve(base, f)),
        None => {
            p.add(format!("server.tls.{field}"), "missing");
            None
        }
    };
    let cert = file("cert_file", &t.cert_file);
    let key = file("key_file", &t.key_file);
    if let (Some(c), Some(k)) = (&cert, &key) {
        if let Err(e) = tls::check_identity(c, k) {
            p.add("server.tls", e.to_string());
        }
    }
    Some(TlsSettings { listen, cert_file: cert?, key_file: key? })
}

/// Validates `[log]`: the format (default text) and the level (default `info`), which must
/// parse as a `tracing` filter.
pub(super) fn log(p: &mut Problems, raw: &RawLog) -> (LogFormat, String) {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.add("log.format", format!("`{other}` is not one of: text, json"));
            LogFormat::Text
        }
    };
    let level = raw.level.clone().unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.add("log.level", format!("`{level}` is not a level or filter (e.g. info, debug, joule=debug)"));
    }
    (format, level)
}
