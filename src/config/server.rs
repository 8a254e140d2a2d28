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
    /// Unix socket through which a running joule hands its listening sockets to a new one
    /// (`joule serve --upgrade`). Default `/tmp/joule_upgrade.sock`; relative to the config file.
    pub upgrade_sock: Option<String>,
}

/// `[server.tls]`: TLS listeners and their certificates — `cert_file` + `key_file` (the
/// default certificate), `[[server.tls.certificates]]` chosen by SNI, or both.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub listen: Vec<String>,
    /// PEM certificate chain, leaf first; relative to the config file.
    pub cert_file: Option<String>,
    /// PEM private key; relative to the config file.
    pub key_file: Option<String>,
    /// Certificates chosen by the client's server name (SNI).
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// How often the certificate files are checked for a renewal, in ms. Default 5000.
    pub reload_interval_ms: Option<u64>,
}

/// `[[server.tls.certificates]]`: one certificate and the server names it answers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// Label in logs and metrics. Default: its first server name.
    pub name: Option<String>,
    /// Host names (`api.example.com`) or wildcards of one label (`*.example.com`).
    #[serde(default)]
    pub server_names: Vec<String>,
    pub cert_file: Option<String>,
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
    /// Where the listening sockets are handed over on a zero-downtime upgrade.
    pub upgrade_sock: PathBuf,
}

/// TLS listener settings; files are checked to exist and parse at validation time.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    /// At least one; the first is the default, answered to clients without SNI or with a name
    /// no certificate lists.
    pub certificates: Vec<CertificateSettings>,
    /// How often the files are checked for a renewal.
    pub reload_interval: Duration,
}

/// One certificate of the TLS listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSettings {
    /// Label in logs and metrics (`default` for the top-level `cert_file`).
    pub name: String,
    /// Lower-case host names, wildcards as `*.example.com`; empty for the top-level default.
    pub server_names: Vec<String>,
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
        upgrade_sock: raw.upgrade_sock.as_deref().map_or_else(|| PathBuf::from("/tmp/joule_upgrade.sock"), |s| resolve(base, s)),
    }
}

/// Validates `[server.tls]`: at least one address; a certificate (top-level or listed), each
/// with both files and an identity [`tls::load_identity`] accepts; server names well formed and
/// not claimed twice. `None` when no certificate is usable.
fn tls_settings(p: &mut Problems, t: &RawTls, base: &Path) -> Option<TlsSettings> {
    let listen = p.addrs("server.tls.listen", &t.listen);
    if t.listen.is_empty() {
        p.add("server.tls.listen", "at least one address is required when [server.tls] is present");
    }
    let mut certificates = Vec::new();
    let mut names_seen = std::collections::HashSet::new();
    if t.cert_file.is_some() || t.key_file.is_some() || t.certificates.is_empty() {
        if let Some(c) = certificate(p, "server.tls", "default".into(), Vec::new(), &t.cert_file, &t.key_file, base) {
            certificates.push(c);
        }
    }
    for (i, c) in t.certificates.iter().enumerate() {
        let at = format!("server.tls.certificates[{i}]");
        if c.server_names.is_empty() {
            p.add(format!("{at}.server_names"), "at least one server name is required");
        }
        let mut server_names = Vec::new();
        for n in &c.server_names {
            let lower = n.trim().to_ascii_lowercase();
            if !valid_server_name(&lower) {
                p.add(format!("{at}.server_names"), format!("`{n}` is not a host name or a one-label wildcard (api.example.com, *.example.com)"));
            } else if !names_seen.insert(lower.clone()) {
                p.add(format!("{at}.server_names"), format!("`{n}` is already served by another certificate"));
            } else {
                server_names.push(lower);
            }
        }
        let name = c.name.clone().or_else(|| server_names.first().cloned()).unwrap_or_else(|| format!("certificate-{i}"));
        if certificates.iter().any(|x: &CertificateSettings| x.name == name) {
            p.add(format!("{at}.name"), format!("`{name}` names another certificate too"));
        }
        if let Some(c) = certificate(p, &at, name, server_names, &c.cert_file, &c.key_file, base) {
            certificates.push(c);
        }
    }
    let reload_interval = Duration::from_millis(t.reload_interval_ms.unwrap_or(5000));
    if t.reload_interval_ms == Some(0) {
        p.add("server.tls.reload_interval_ms", "must be at least 1");
    }
    (!certificates.is_empty()).then_some(TlsSettings { listen, certificates, reload_interval })
}

/// One certificate's files, resolved and checked.
fn certificate(p: &mut Problems, at: &str, name: String, server_names: Vec<String>, cert: &Option<String>, key: &Option<String>, base: &Path) -> Option<CertificateSettings> {
    let mut file = |field: &str, v: &Option<String>| match v {
        Some(f) => Some(resolve(base, f)),
        None => {
            p.add(format!("{at}.{field}"), "missing");
            None
        }
    };
    let cert_file = file("cert_file", cert);
    let key_file = file("key_file", key);
    let (cert_file, key_file) = (cert_file?, key_file?);
    if let Err(e) = tls::load_identity(&cert_file, &key_file) {
        p.add(at, e.to_string());
    }
    Some(CertificateSettings { name, server_names, cert_file, key_file })
}

/// A DNS host name (letters, digits, `-`; labels of 1–63; at most 253) or `*.` and one.
fn valid_server_name(n: &str) -> bool {
    let host = n.strip_prefix("*.").unwrap_or(n);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
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
