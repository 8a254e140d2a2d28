//! `joule keys`: create, list and revoke API keys in the configured store.

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_store, print_json};
use crate::store::NewKey;

/// `joule keys <command>`.
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key; it is printed once and never stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        project: Option<String>,
        /// Requests per minute for this key.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute for this key.
        #[arg(long)]
        tpm: Option<u32>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a key by id or name.
    Revoke { key: String },
}

/// Runs a keys command on the store of `config`. `create` prints the key record as JSON and
/// then the key itself on its own line (the notice that it is shown once goes to stderr).
///
/// # Errors
/// The store cannot be opened or refuses the change.
pub fn run(config: Option<PathBuf>, cmd: KeysCmd) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    match cmd {
        KeysCmd::Create { name, project, rpm, tpm } => {
            let (key, secret) = store.wait(store.create_key(NewKey { name, project, rpm, tpm }))?;
            print_json(&key)?;
            eprintln!("This key is shown once; only its hash is stored:");
            println!("{}", secret.expose());
            Ok(())
        }
        KeysCmd::List { project } => print_json(&store.wait(store.keys(project.as_deref()))?),
        KeysCmd::Revoke { key } => print_json(&store.wait(store.revoke_key(&key))?),
    }
}
