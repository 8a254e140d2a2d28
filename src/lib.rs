//! joule: an energy-smart, Wasm-extensible, OpenAI-compatible LLM gateway on pingora.
//! Module map and vocabulary: `DESIGN.md` (shared) and the README.

pub mod access;
pub mod admin;
pub mod api;
pub mod batch;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod demo;
pub mod metrics;
pub mod mock;
pub mod pricing;
pub mod proxy;
pub mod routing;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod store;
pub mod translate;
pub mod upstream;
pub mod usage;

/// Every joule process (the gateway, its tools, tests and benchmarks) allocates with mimalloc:
/// a request's decision, relay and logging make dozens of short-lived allocations, which
/// glibc's allocator served at a measurably higher cost (see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
