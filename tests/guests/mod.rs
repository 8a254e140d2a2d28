//! Strategy components for tests, built from source (plugins/) by the test run itself: the
//! built-ins, the `green` example, and the misbehaving guests of plugins/testing. Built once
//! per test binary with the same toolchain as `joule plugin build`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use joule::cli::toolchain::{build, BuildRequest};

/// Every guest package the tests use.
pub const PACKAGES: &[&str] = &[
    "price", "latency", "tokenrate", "green", "spin", "panics", "membomb", "wrongcount", "nan", "stateful", "versioned", "clock", "mismatch",
];

/// The directory holding `<package>.wasm` for every package in [`PACKAGES`].
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
        let req = BuildRequest {
            manifest_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"),
            packages: PACKAGES.iter().map(|p| p.to_string()).collect(),
            out_dir: out.clone(),
            locked: true,
            quiet: true,
        };
        if let Err(e) = build(&req) {
            panic!("building the test guests failed (is the wasm32-unknown-unknown target installed? scripts/setup adds it): {e}");
        }
        out
    })
}

/// The component bytes of a guest package.
pub fn bytes(package: &str) -> Vec<u8> {
    std::fs::read(dir().join(format!("{package}.wasm"))).expect("guest built")
}

/// `bytes` with the single occurrence of `from` replaced by `to` (same length), to make new
/// versions of one build (the version string sits verbatim in the data segment).
pub fn patched(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from.as_bytes()).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "`{from}` must occur exactly once in the component");
    let mut out = bytes.to_vec();
    out[hits[0]..hits[0] + to.len()].copy_from_slice(to.as_bytes());
    out
}

/// The `versioned` guest (tag `price`) reporting version `1.0.0-swap.{n:06}`.
pub fn price_version(n: u32) -> Vec<u8> {
    patched(&bytes("versioned"), "1.0.0-swap.000000", &format!("1.0.0-swap.{n:06}"))
}
