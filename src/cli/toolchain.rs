//! Builds strategy crates into components: `cargo build --release --target
//! wasm32-unknown-unknown`, then componentising the core module with `wit-component` (the WIT
//! world travels inside the module as the custom section `wit-bindgen` emits). No WASI adapter
//! is involved, so the result imports nothing. Used by `joule plugin build`,
//! `scripts/build-plugins` and the tests; never by the gateway at run time.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::routing::wasm::registry::write_atomically;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// A crate or a workspace directory (with `Cargo.toml`).
    pub manifest_dir: PathBuf,
    /// Packages to build; empty: the crate at `manifest_dir`, or for a virtual workspace
    /// every member with a `cdylib` target.
    pub packages: Vec<String>,
    /// Where `<package>.wasm` components are written (created if missing).
    pub out_dir: PathBuf,
    /// Pass `--locked` to cargo (the repository's own plugins have a lock file).
    pub locked: bool,
    /// Capture cargo's output instead of showing it (tests); it is included in errors.
    pub quiet: bool,
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The cargo package it was built from.
    pub package: String,
    /// Where the component was written (`OUT/<package>.wasm`).
    pub path: PathBuf,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A cargo step (`metadata` or `build`) could not run or failed.
    #[error("cargo {step} failed: {message}")]
    Cargo { step: &'static str, message: String },
    /// A requested package is not a cdylib of the workspace.
    #[error("no package `{0}` with a cdylib target in the workspace")]
    UnknownPackage(String),
    /// No package was asked for and the directory holds no cdylib.
    #[error("nothing to build: no cdylib crate at {0}")]
    Nothing(String),
    /// The core module could not be wrapped into a component.
    #[error("componentising {package}: {message}")]
    Componentize { package: String, message: String },
    /// Reading the core module or writing the component failed.
    #[error("{0}")]
    Io(String),
}

/// Wraps a `wasm32-unknown-unknown` core module built with `wit-bindgen` into a component.
///
/// # Errors
/// The module lacks the world's metadata, imports something outside it, or does not validate.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(core)
        .and_then(|e| e.encode())
        .map_err(|e| format!("{e:#}"))
}

fn cargo() -> Command {
    // Inside `cargo test`/`cargo run`, CARGO names the running cargo.
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(mut cmd: Command, step: &'static str, quiet: bool) -> Result<Vec<u8>, BuildError> {
    cmd.stdout(Stdio::piped());
    if quiet {
        cmd.stderr(Stdio::piped());
    }
    let out = cmd.output().map_err(|e| BuildError::Cargo { step, message: format!("cannot run cargo: {e}") })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        let message = if quiet { tail.into_iter().rev().collect::<Vec<_>>().join("\n") } else { format!("exit status {}", out.status) };
        return Err(BuildError::Cargo { step, message });
    }
    Ok(out.stdout)
}

struct Package {
    name: String,
    lib: String,
    manifest: PathBuf,
}

/// Builds the requested crates and writes one component per package.
///
/// # Errors
/// [`BuildError`] naming the failing step.
pub fn build(req: &BuildRequest) -> Result<Vec<Built>, BuildError> {
    let manifest = req.manifest_dir.join("Cargo.toml");
    let mut meta = cargo();
    meta.args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"]).arg(&manifest);
    if req.locked {
        meta.arg("--locked");
    }
    let meta: serde_json::Value = serde_json::from_slice(&run(meta, "metadata", true)?)
        .map_err(|e| BuildError::Cargo { step: "metadata", message: e.to_string() })?;
    let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    let cdylibs: Vec<Package> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let lib = p["targets"].as_array()?.iter().find(|t| {
                t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"))
            })?;
            Some(Package {
                name: p["name"].as_str()?.to_string(),
                lib: lib["name"].as_str()?.replace('-', "_"),
                manifest: PathBuf::from(p["manifest_path"].as_str()?),
            })
        })
        .collect();
    let chosen: Vec<&Package> = if !req.packages.is_empty() {
        req.packages
            .iter()
            .map(|n| cdylibs.iter().find(|p| &p.name == n).ok_or_else(|| BuildError::UnknownPackage(n.clone())))
            .collect::<Result<_, _>>()?
    } else {
        let canonical = manifest.canonicalize().unwrap_or(manifest.clone());
        match cdylibs.iter().find(|p| p.manifest.canonicalize().unwrap_or(p.manifest.clone()) == canonical) {
            Some(p) => vec![p],
            None => cdylibs.iter().collect(),
        }
    };
    if chosen.is_empty() {
        return Err(BuildError::Nothing(req.manifest_dir.display().to_string()));
    }
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", "wasm32-unknown-unknown", "--manifest-path"]).arg(&manifest);
    if req.locked {
        cmd.arg("--locked");
    }
    for p in &chosen {
        cmd.args(["-p", &p.name]);
    }
    run(cmd, "build", req.quiet)?;
    std::fs::create_dir_all(&req.out_dir).map_err(|e| BuildError::Io(format!("{}: {e}", req.out_dir.display())))?;
    let mut built = Vec::new();
    for p in chosen {
        let core_path = target_dir.join("wasm32-unknown-unknown/release").join(format!("{}.wasm", p.lib));
        let core = std::fs::read(&core_path).map_err(|e| BuildError::Io(format!("{}: {e}", core_path.display())))?;
        let component = componentize(&core).map_err(|message| BuildError::Componentize { package: p.name.clone(), message })?;
        let path = req.out_dir.join(format!("{}.wasm", p.name));
        write_atomically(&path, &component).map_err(|e| BuildError::Io(format!("{}: {e}", path.display())))?;
        built.push(Built { package: p.name.clone(), path });
    }
    Ok(built)
}
