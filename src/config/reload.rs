//! What a config reload may change. Catalog, upstream clients, timeouts (`[limits]`),
//! telemetry settings, the default strategy, config keys and the admin token are swapped
//! while traffic flows; listeners and the store location are bound at start, so a reload
//! that changes them is refused naming the field (a renewed certificate *file* needs no reload:
//! the TLS listener re-reads its files itself). Other sections (energy feeds, plugins,
//! health probes, logging, the usage writer's tuning, `server.public_url`, `[batch]`) keep their start-up values until the
//! next start; a reload that changes them is applied and says so.

use super::Settings;

/// The restart-only fields `new` changes, each as a message naming its TOML path; empty if
/// the reload may proceed.
pub fn refused_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut changed: Vec<&str> = Vec::new();
    if o.listen != n.listen {
        changed.push("server.listen");
    }
    if o.tls != n.tls {
        changed.push("server.tls");
    }
    if o.admin_listen != n.admin_listen {
        changed.push("server.admin_listen");
    }
    if o.threads != n.threads {
        changed.push("server.threads");
    }
    if o.grace_period != n.grace_period {
        changed.push("server.grace_period_s");
    }
    if old.store.as_ref().map(|s| &s.location) != new.store.as_ref().map(|s| &s.location) {
        changed.push("store");
    }
    changed.into_iter().map(|path| format!("{path}: changes only with a restart; the running config is kept")).collect()
}

/// The sections `new` changes that keep their start-up values until the next start.
/// (Compared by their printed form, in which secrets are redacted: a changed secret alone
/// is not noticed here.)
pub fn restart_required(old: &Settings, new: &Settings) -> Vec<String> {
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut sections = Vec::new();
    if !same(&old.energy, &new.energy) {
        sections.push("energy");
    }
    if !same(&old.plugins, &new.plugins) {
        sections.push("plugins");
    }
    if !same(&old.health, &new.health) {
        sections.push("health");
    }
    if old.log_format != new.log_format || old.log_level != new.log_level {
        sections.push("log");
    }
    if old.server.api_base != new.server.api_base {
        sections.push("server.public_url");
    }
    // The URL is a secret (printed redacted): compared by digest.
    let shared = |s: &Settings| s.shared_limits.as_ref().map(|l| (crate::secret::KeyHash::of(l.url.expose()).to_hex(), l.timeout, l.sync_interval));
    if shared(old) != shared(new) {
        sections.push("limits.backend");
    }
    if !same(&old.store, &new.store) {
        sections.push("store");
    }
    if old.batch != new.batch {
        sections.push("batch");
    }
    sections.into_iter().map(|s| format!("{s}: changed; takes effect at the next start")).collect()
}
