//! `joule usage`: list usage records (JSON or CSV, paged) and summarise them.

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_store, print_json};
use crate::store::{Cursor, Store, UsageFilter};

/// Which usage records a command looks at.
#[derive(clap::Args)]
pub struct UsageArgs {
    #[arg(long)]
    project: Option<String>,
    /// Key id.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    status: Option<u16>,
    /// From (unix ms, inclusive).
    #[arg(long)]
    since: Option<i64>,
    /// Until (unix ms, exclusive).
    #[arg(long)]
    until: Option<i64>,
}

/// `joule usage <command>`.
#[derive(Subcommand)]
pub enum UsageCmd {
    /// Usage records, newest first.
    List {
        #[command(flatten)]
        filter: UsageArgs,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
    },
    /// Request count, tokens and cost.
    Summary {
        #[command(flatten)]
        filter: UsageArgs,
    },
}

/// The store filter for the options (a project given by name is looked up).
fn usage_filter(store: &Store, a: UsageArgs, limit: u32, cursor: Option<String>) -> anyhow::Result<UsageFilter> {
    let project_id = match a.project {
        Some(p) => Some(store.wait(store.project(&p))?.id),
        None => None,
    };
    Ok(UsageFilter {
        project_id,
        key_id: a.key,
        model: a.model,
        status: a.status,
        since_ms: a.since,
        until_ms: a.until,
        after: cursor.as_deref().map(Cursor::decode).transpose()?,
        limit,
    })
}

/// Runs a usage command on the store of `config`. `list --csv` prints CSV and, when there are
/// more records, the next page's `--cursor` on stderr; everything else prints JSON.
///
/// # Errors
/// The store cannot be opened, the project or cursor is unknown, or the query fails.
pub fn run(config: Option<PathBuf>, cmd: UsageCmd) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    match cmd {
        UsageCmd::List { filter, limit, cursor, csv } => {
            let page = store.wait(store.usage(usage_filter(&store, filter, limit, cursor)?))?;
            if csv {
                print!("{}", String::from_utf8_lossy(&crate::admin::to_csv(&page.records)));
                if let Some(c) = page.next_cursor {
                    eprintln!("next page: --cursor {c}");
                }
                Ok(())
            } else {
                print_json(&page)
            }
        }
        UsageCmd::Summary { filter } => print_json(&store.wait(store.usage_summary(usage_filter(&store, filter, 1, None)?))?),
    }
}
