//! The Wasm strategy host: every routing strategy — the built-ins included — is a WebAssembly
//! component of the `joule:strategy@0.2.0` world (`wit/strategy.wit`), run by wasmtime in a
//! sandbox and swappable while traffic flows.
//!
//! - [`host`]: the engine (built once), load-time validation, the per-call sandbox.
//! - [`plugin`]: one loaded strategy with its counters and the disable rule.
//! - [`registry`]: the current [`PluginSet`] behind `ArcSwap`; scan, upload, list, rollback.
//! - [`watch`]: the plugins directory watcher.
//! - [`rank()`]: a decision through the plugins, with native fallback.
//! - [`explain`]: decision logging, explain payloads, replay.
//! - [`PluginSettings`]: the validated `[plugins]` config section.
//!
//! Building guest crates into components and the conformance checks of `joule plugin check`
//! are tools, not runtime: they live with the command line (the `cli` module, which the
//! runtime never imports).

mod bindings;
pub mod explain;
pub mod host;
pub mod plugin;
pub mod rank;
pub mod registry;
mod settings;
pub mod watch;

pub use host::{CallOutcome, Fault, Host, HostConfig, InstanceMode, LoadError};
pub use plugin::{FaultKind, Info, Plugin, PluginSummary};
pub use rank::rank;
pub use registry::{FileOutcome, PluginRegistry, PluginSet, RegistryError, ScanReport};
pub use settings::PluginSettings;
pub use watch::{watch, PluginWatcher};
