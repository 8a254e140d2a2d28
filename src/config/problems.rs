//! The problem list: every problem validation finds, each with the TOML path it concerns, and
//! the small checks the area files share (addresses, numbers, prices, URLs, environment
//! variables, relative paths). A check that fails adds a problem and returns a harmless
//! stand-in value, so validation goes on and reports everything in one pass.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

/// How validation looks up environment variables (injected so tests need not mutate the
/// process environment).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One problem found in a config, with the TOML path it concerns (`models[0].deployments[1].url`,
/// or `line N` for a TOML syntax error).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a config, in the order validation found it. Its `Display` lists one
/// problem per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

/// A [`ConfigError`] of one problem (unreadable file, TOML syntax).
pub(super) fn single(path: &str, message: String) -> ConfigError {
    ConfigError { problems: vec![ConfigProblem { path: path.into(), message }] }
}

/// The problems found so far; the area files add to it in validation order.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    /// Adds a problem at `path`.
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem { path: path.into(), message: message.into() });
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub(super) fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.0.is_empty() { Ok(value()) } else { Err(ConfigError { problems: self.0 }) }
    }

    /// A socket address like `127.0.0.1:8080`; `None` (and a problem) otherwise.
    pub(super) fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(path, format!("`{s}` is not an address like 127.0.0.1:8080"));
                None
            }
        }
    }

    /// Each entry of a list of socket addresses at `path[i]`; bad ones are left out.
    pub(super) fn addrs(&mut self, path: &str, list: &[String]) -> Vec<SocketAddr> {
        list.iter().enumerate().filter_map(|(i, s)| self.addr(&format!("{path}[{i}]"), s)).collect()
    }

    /// A finite number > 0; `default` when unset or bad.
    pub(super) fn positive(&mut self, path: &str, v: Option<f64>, default: f64) -> f64 {
        match v {
            None => default,
            Some(x) if x.is_finite() && x > 0.0 => x,
            Some(x) => {
                self.add(path, format!("must be a finite number > 0, got {x}"));
                default
            }
        }
    }

    /// A finite number > 0 that must be set; 1 when missing or bad.
    pub(super) fn required_positive(&mut self, path: &str, v: Option<f64>) -> f64 {
        if v.is_none() {
            self.add(path, "missing");
            return 1.0;
        }
        self.positive(path, v, 1.0)
    }

    /// A price ($/Mtok) >= 0 that may be unset (then 0).
    pub(super) fn optional_price(&mut self, path: &str, v: Option<f64>) -> f64 {
        match v {
            None => 0.0,
            some => self.price(path, some),
        }
    }

    /// A price ($/Mtok) >= 0 that must be set; 0 when missing or bad.
    pub(super) fn price(&mut self, path: &str, v: Option<f64>) -> f64 {
        match v {
            None => {
                self.add(path, "missing ($ per million tokens)");
                0.0
            }
            Some(x) if x.is_finite() && x >= 0.0 => x,
            Some(x) => {
                self.add(path, format!("must be a finite number >= 0, got {x}"));
                0.0
            }
        }
    }

    /// A problem `must be > 0` at `section.name` for every `(name, value)` set to 0.
    pub(super) fn nonzero(&mut self, section: &str, fields: &[(&str, Option<u64>)]) {
        for (name, v) in fields {
            if *v == Some(0) {
                self.add(format!("{section}.{name}"), "must be > 0");
            }
        }
    }

    /// The value of the environment variable named by `name` (the field at `path`); `None`
    /// when the field is unset, and a problem too when the variable is unset or empty.
    pub(super) fn secret_env(&mut self, path: &str, name: &Option<String>, env: Env<'_>) -> Option<Secret<String>> {
        let name = name.as_ref()?;
        match env(name) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                self.add(path, format!("environment variable `{name}` is not set"));
                None
            }
        }
    }

    /// A secret given as exactly one of a literal (`{section}.url`) and an environment variable
    /// (`{section}.url_env`); `missing` is the problem when there is neither or both.
    pub(super) fn url_or_env(&mut self, section: &str, url: &Option<String>, url_env: &Option<String>, env: Env<'_>, missing: &str) -> Option<Secret<String>> {
        match (url, url_env) {
            (Some(u), None) => Some(Secret::new(u.clone())),
            (None, Some(_)) => self.secret_env(&format!("{section}.url_env"), url_env, env),
            _ => {
                self.add(format!("{section}.url"), missing);
                None
            }
        }
    }

    /// An absolute http(s) URL with a host, without trailing slashes; `None` (and a problem)
    /// otherwise.
    pub(super) fn url(&mut self, path: &str, url: &str) -> Option<String> {
        match reqwest::Url::parse(url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
                Some(url.trim_end_matches('/').to_string())
            }
            Ok(_) => {
                self.add(path, format!("`{url}` must be an http:// or https:// URL with a host"));
                None
            }
            Err(e) => {
                self.add(path, format!("`{url}` is not a URL: {e}"));
                None
            }
        }
    }
}

/// `v` milliseconds, or `default` when unset.
pub(super) fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// `p` relative to `base` (the config file's directory) unless it is absolute.
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}
