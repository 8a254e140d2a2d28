//! The project and key records the access layer is built from, and the rules their fields
//! follow: [`Project`], [`ApiKey`], [`ProjectChanges`], the [`Directory`] a snapshot is built
//! from, [`BudgetPeriod`], name and identifier checks, and key generation. The store persists
//! these types; the admin API and the CLI validate input with them.

use serde::{Deserialize, Serialize};

use crate::routing::tags::StrategySet;
use crate::secret::Secret;

/// A field of a project, key or filter has a value its rules refuse; the message names the
/// field. The store and the admin API answer it as 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Longest accepted project or key name.
pub const MAX_NAME: usize = 64;
/// Longest accepted identifier in a filter or model list (model ids, key ids).
pub const MAX_ID: usize = 128;
/// How long a budget's spend accumulates before it starts again at 0 (UTC calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    #[default]
    Month,
}

impl BudgetPeriod {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    /// Parses `day` or `month`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            other => Err(InvalidInput(format!("budget_period `{}` is not one of: day, month", clip(other)))),
        }
    }

    /// Start and end (unix ms) of the period containing `now_ms`: its UTC day, or its UTC
    /// calendar month. (A time chrono cannot represent, beyond ±262,000 years, is clamped to
    /// its range.)
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
        let now = DateTime::from_timestamp_millis(now_ms).unwrap_or(if now_ms < 0 { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC });
        let day = now.date_naive();
        let (start, end) = match self {
            BudgetPeriod::Day => (day, day.succ_opt()),
            BudgetPeriod::Month => {
                let first = day.with_day(1).unwrap_or(day);
                (first, first.checked_add_months(Months::new(1)))
            }
        };
        let ms = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc().timestamp_millis();
        (ms(start), end.map_or(i64::MAX, ms))
    }
}

/// A project: a group of API keys, allowed models, limits, budget and usage records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    /// `None`: every model of the catalog.
    pub allowed_models: Option<Vec<String>>,
    /// Strategy set (`latency@price`) for requests without tags; `None`: the config default.
    pub default_strategy: Option<String>,
    /// Requests per minute over all the project's keys; `None`: unlimited.
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute over all the project's keys; `None`: unlimited.
    pub tpm: Option<u32>,
    /// USD the project may spend per period; `None`: unlimited.
    pub budget_usd: Option<f64>,
    pub budget_period: BudgetPeriod,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fields to set on a project; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectChanges {
    pub name: Option<String>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub default_strategy: Option<Option<String>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub budget_usd: Option<Option<f64>>,
    pub budget_period: Option<BudgetPeriod>,
}

impl ProjectChanges {
    /// Checks every field's form (names, identifiers, strategies, numbers). Whether allowed
    /// models exist in the catalog is checked by the caller, which has the catalog.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(n) = &self.name {
            check_name("name", n)?;
        }
        if let Some(Some(models)) = &self.allowed_models {
            if models.len() > 1000 {
                return Err(InvalidInput("allowed_models: at most 1000 models".into()));
            }
            for m in models {
                check_id("allowed_models", m)?;
            }
        }
        if let Some(Some(s)) = &self.default_strategy {
            if s.len() > MAX_ID {
                return Err(InvalidInput(format!("default_strategy: longer than {MAX_ID} characters")));
            }
            StrategySet::parse_list(s).map_err(|e| InvalidInput(format!("default_strategy: {e}")))?;
        }
        for (field, v) in [("rpm", self.rpm), ("tpm", self.tpm)] {
            if let Some(Some(0)) = v {
                return Err(InvalidInput(format!("{field}: must be at least 1 (omit it for no limit)")));
            }
        }
        if let Some(Some(b)) = self.budget_usd {
            if !(b.is_finite() && (0.0..=1e12).contains(&b)) {
                return Err(InvalidInput(format!("budget_usd: must be a finite number between 0 and 1e12, got {b}")));
            }
        }
        Ok(())
    }

    /// Applies the changes to `p`.
    pub fn apply(&self, p: &mut Project) {
        if let Some(n) = &self.name {
            p.name.clone_from(n);
        }
        if let Some(m) = &self.allowed_models {
            p.allowed_models = m.clone().map(|mut v| {
                v.sort();
                v.dedup();
                v
            });
        }
        if let Some(s) = &self.default_strategy {
            // Stored canonically, so `price@latency` and `latency@price` read back the same.
            p.default_strategy = s.as_ref().map(|s| StrategySet::parse_list(s).map_or_else(|_| s.clone(), |set| set.to_string().replace('+', "@")));
        }
        if let Some(v) = self.rpm {
            p.rpm = v;
        }
        if let Some(v) = self.tpm {
            p.tpm = v;
        }
        if let Some(v) = self.budget_usd {
            p.budget_usd = v;
        }
        if let Some(v) = self.budget_period {
            p.budget_period = v;
        }
    }
}

/// An API key as the store keeps it: never the key itself, only its SHA-256 and a prefix to
/// recognise it by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The first characters of the key (`sk-joule-3fa9c2d1`), for people to recognise it.
    pub prefix: String,
    pub project_id: Option<String>,
    /// The project's name (joined at read time).
    pub project: Option<String>,
    /// Requests per minute for this key alone; `None`: unlimited (the project's limits apply).
    pub rpm: Option<u32>,
    /// Tokens per minute for this key alone.
    pub tpm: Option<u32>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Lower-case hex SHA-256 of the key.
    #[serde(skip)]
    pub hash: String,
}

/// What a new key needs.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    /// Project name.
    pub project: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

/// Projects and keys at one change sequence: what the in-memory snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub seq: i64,
    pub projects: Vec<Project>,
    /// Active (non-revoked) keys only.
    pub keys: Vec<ApiKey>,
}

/// The first 64 characters of `s`, for echoing input in messages.
pub fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a project or key name: 1–64 characters, letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit.
///
/// # Errors
/// [`InvalidInput`] naming `field`.
pub fn check_name(field: &str, s: &str) -> Result<(), InvalidInput> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else if s.len() > MAX_NAME {
        Err(InvalidInput(format!("{field}: longer than {MAX_NAME} characters")))
    } else {
        Err(InvalidInput(format!(
            "{field}: `{}` must be 1-{MAX_NAME} letters, digits, `.`, `_` or `-`, starting with a letter or digit",
            clip(s)
        )))
    }
}

/// Checks an identifier (model id, key id) used in a filter or list: 1–128 printable ASCII
/// characters without spaces, quotes, `;` or `\`.
///
/// # Errors
/// [`InvalidInput`] naming `field`.
pub fn check_id(field: &str, s: &str) -> Result<(), InvalidInput> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'\'' | b'"' | b';' | b'\\' | b'`'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput(format!("{field}: `{}` is not a valid identifier", clip(s))))
    }
}

/// `bytes` random bytes from the OS, in lower-case hex (ids and keys).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The prefix every generated API key starts with.
pub const KEY_PREFIX: &str = "sk-joule-";

/// Generates an API key: [`KEY_PREFIX`] followed by 192 random bits in hex.
pub fn generate_key() -> Secret<String> {
    Secret::new(format!("{KEY_PREFIX}{}", random_hex(24)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_utc_calendar() {
        // 2024-02-29T13:00:00Z
        let t = 1_709_211_600_000;
        let (s, e) = BudgetPeriod::Day.bounds(t);
        assert_eq!((s, e), (1_709_164_800_000, 1_709_251_200_000));
        let (s, e) = BudgetPeriod::Month.bounds(t);
        assert_eq!(s, 1_706_745_600_000, "2024-02-01");
        assert_eq!(e, 1_709_251_200_000, "2024-03-01");
        // December rolls into the next year.
        let (s, e) = BudgetPeriod::Month.bounds(1_734_000_000_000);
        assert_eq!((s, e), (1_733_011_200_000, 1_735_689_600_000));
    }

    #[test]
    fn periods_before_the_epoch_and_at_the_extremes() {
        // 1969-12-31T12:00:00Z: December 1969, which ends where 1970 starts.
        assert_eq!(BudgetPeriod::Month.bounds(-43_200_000), (-2_678_400_000, 0));
        assert_eq!(BudgetPeriod::Day.bounds(-1), (-86_400_000, 0));
        for t in [i64::MIN, i64::MAX] {
            for p in [BudgetPeriod::Day, BudgetPeriod::Month] {
                let (s, e) = p.bounds(t);
                assert!(s < e, "{p:?} at {t}: {s}..{e}");
            }
        }
    }

    #[test]
    fn names_and_ids_are_checked() {
        assert!(check_name("name", "dev-key").is_ok());
        assert!(check_name("name", "n8n_workflow.v2").is_ok());
        for bad in ["", "-x", "a b", "x'; DROP TABLE projects; --", "é", &"a".repeat(65)] {
            assert!(matches!(check_name("name", bad), Err(InvalidInput(_))), "{bad}");
        }
        assert!(check_id("model", "llama-3.1-8b-instruct").is_ok());
        assert!(check_id("model", "' OR 1=1 --").is_err());
        assert!(check_id("model", "x;y").is_err());
    }

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 48, "192 bits in hex");
        assert_ne!(a.expose(), b.expose());
    }
}
