//! `joule projects`: create, list, show, update and delete projects in the configured store.

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_store, print_json};
use crate::store::{BudgetPeriod, ProjectChanges, StoreError};

/// The options a project is created or updated with (only the given ones change).
#[derive(clap::Args)]
pub struct ProjectArgs {
    /// Allowed models, comma-separated (default: all models).
    #[arg(long, value_delimiter = ',', conflicts_with = "all_models")]
    models: Option<Vec<String>>,
    /// Allow every model.
    #[arg(long)]
    all_models: bool,
    /// Default strategy, e.g. `price` or `latency@price`.
    #[arg(long)]
    strategy: Option<String>,
    /// Requests per minute (0: no limit).
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute (0: no limit).
    #[arg(long)]
    tpm: Option<u32>,
    /// Budget in USD per period (negative: no budget).
    #[arg(long, allow_hyphen_values = true)]
    budget: Option<f64>,
    /// Budget period: day or month.
    #[arg(long)]
    budget_period: Option<String>,
}

/// `joule projects <command>`.
#[derive(Subcommand)]
pub enum ProjectsCmd {
    /// Create a project.
    Create {
        name: String,
        #[command(flatten)]
        args: ProjectArgs,
    },
    /// List projects.
    List,
    /// Show one project.
    Show { name: String },
    /// Change a project (only the given options change).
    Update {
        name: String,
        /// New name.
        #[arg(long)]
        rename: Option<String>,
        /// Remove the default strategy (use the config default).
        #[arg(long, conflicts_with = "strategy")]
        no_strategy: bool,
        #[command(flatten)]
        args: ProjectArgs,
    },
    /// Delete a project without active keys.
    Delete { name: String },
}

/// The store changes the options ask for: 0 limits and negative budgets mean "none".
fn changes(args: ProjectArgs, clear_strategy: bool) -> anyhow::Result<ProjectChanges> {
    let limit = |v: Option<u32>| v.map(|n| (n > 0).then_some(n));
    Ok(ProjectChanges {
        name: None,
        allowed_models: if args.all_models { Some(None) } else { args.models.map(Some) },
        default_strategy: if clear_strategy { Some(None) } else { args.strategy.map(Some) },
        rpm: limit(args.rpm),
        tpm: limit(args.tpm),
        budget_usd: args.budget.map(|b| (b >= 0.0).then_some(b)),
        budget_period: args.budget_period.as_deref().map(BudgetPeriod::parse).transpose()?,
    })
}

/// Runs a projects command on the store of `config`; prints the project(s) as JSON.
///
/// # Errors
/// The store cannot be opened, the changes are invalid (unknown models included), or the
/// store refuses them.
pub fn run(config: Option<PathBuf>, cmd: ProjectsCmd) -> anyhow::Result<()> {
    let (settings, store) = open_store(config)?;
    let checked = |c: ProjectChanges| -> Result<ProjectChanges, StoreError> {
        c.validate()?;
        crate::access::check_models(&settings.catalog, &c)?;
        Ok(c)
    };
    match cmd {
        ProjectsCmd::Create { name, args } => {
            let c = checked(changes(args, false)?)?;
            print_json(&store.wait(store.create_project(&name, c))?)
        }
        ProjectsCmd::List => print_json(&store.wait(store.projects())?),
        ProjectsCmd::Show { name } => print_json(&store.wait(store.project(&name))?),
        ProjectsCmd::Update { name, rename, no_strategy, args } => {
            let c = checked(ProjectChanges { name: rename, ..changes(args, no_strategy)? })?;
            print_json(&store.wait(store.update_project(&name, c))?)
        }
        ProjectsCmd::Delete { name } => {
            store.wait(store.delete_project(&name))?;
            println!("deleted project {name}");
            Ok(())
        }
    }
}
