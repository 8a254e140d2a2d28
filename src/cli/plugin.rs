//! `joule plugin`: build strategy crates into components ([`super::toolchain`]) and check a
//! component against the contract ([`super::plugin_check`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::plugin_check::{check, CheckOptions};
use super::toolchain::{build, BuildRequest};

/// `joule plugin <command>`.
// The variants' doc comments are the `--help` text, where `OUT/<package>.wasm` is no HTML tag.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Build strategy crates (a crate or a workspace directory) into components
    /// (wasm32-unknown-unknown + componentise); writes OUT/<package>.wasm.
    Build {
        /// Crate or workspace directory.
        dir: PathBuf,
        /// Output directory.
        #[arg(long, short)]
        out: PathBuf,
        /// Packages to build (default: the crate at DIR, or every cdylib of a workspace).
        #[arg(long = "package", short = 'p')]
        packages: Vec<String>,
        /// Require an up-to-date Cargo.lock.
        #[arg(long)]
        locked: bool,
    },
    /// Validate a component against the strategy world and run the conformance checks;
    /// exit status 0 when every check passes, 1 otherwise.
    Check {
        file: PathBuf,
        /// Fuel budget per call.
        #[arg(long, default_value_t = CheckOptions::default().fuel)]
        fuel: u64,
    },
}

/// Runs a plugin command: `build` prints `<package>: <path>` per component, `check` prints
/// the file name and the report.
///
/// # Errors
/// The build failed, the file cannot be read, or a check failed (exit status 1).
pub fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Build { dir, out, packages, locked } => {
            let req = BuildRequest { manifest_dir: dir, packages, out_dir: out, locked, quiet: false };
            for b in build(&req)? {
                println!("{}: {}", b.package, b.path.display());
            }
        }
        PluginCommand::Check { file, fuel } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = check(&bytes, &CheckOptions { fuel, ..CheckOptions::default() });
            println!("{}", file.display());
            print!("{}", report.render());
            if !report.passed() {
                anyhow::bail!("{} failed the plugin checks", file.display());
            }
        }
    }
    Ok(())
}
