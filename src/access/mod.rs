//! Access: who may send a request and how much. API keys ([`keys`]: hash → principal), the
//! projects they belong to and the snapshot the request path reads ([`projects`]), rate limits
//! and budgets ([`limits`]), shared between instances through Valkey/Redis ([`shared`]), and
//! the records all of it is built from ([`directory`]).
//!
//! The request path does one `ArcSwap` load of the [`Registry`]'s snapshot and never waits on
//! the database: the registry reads its [`DirectorySource`] (the store implements it) in the
//! background.

pub mod directory;
pub mod keys;
pub mod limits;
pub mod projects;
pub mod shared;

pub use directory::{
    check_id, check_name, generate_key, random_hex, ApiKey, BudgetPeriod, Directory, InvalidInput, NewKey, Project, ProjectChanges,
    KEY_PREFIX, MAX_ID, MAX_NAME,
};
pub use keys::{KeyEntry, KeySnapshot, Principal};
pub use shared::{SharedLimits, SharedSettings};
pub use projects::{check_models, Access, DirectorySource, ProjectPolicy, Registry, SourceError, CONFIG_KEY_PREFIX};
