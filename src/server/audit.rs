//! The audit log: every request the server answers and every decision, allowed or
//! refused and why, one object a line under `audit/DAY/` in the server's store,
//! written create-only (never overwritten, never removed by the server).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::store::{self, Condition, ObjectStore};

pub(crate) const PREFIX: &str = "audit/";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub at: DateTime<Utc>,
    /// Who asked, when the request said who (checked), else `None`.
    pub user: Option<String>,
    pub peer: String,
    pub method: String,
    pub path: String,
    pub decision: Decision,
    /// Why it was refused, or what was done.
    pub why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decision {
    Allowed,
    Refused,
}

/// Records `entry`. A log that cannot be written is said on the server's stderr: the
/// answer has been decided; the operator must know the log has a hole.
pub(crate) async fn record(store: &dyn ObjectStore, entry: &Entry) {
    let mut nonce = [0u8; 4];
    // Best effort: without randomness the nanoseconds still order the entries.
    #[allow(clippy::let_underscore_must_use)]
    let _ = getrandom::fill(&mut nonce);
    let key = format!(
        "{PREFIX}{}/{}-{:02x}{:02x}{:02x}{:02x}.json",
        entry.at.format("%Y%m%d"),
        entry.at.format("%H%M%S%.9f"),
        nonce[0],
        nonce[1],
        nonce[2],
        nonce[3]
    );
    let body = serde_json::to_vec(entry).expect("an audit entry serializes");
    if let Err(e) = store::put_checked(store, &key, &body, Condition::Absent).await {
        let line = format!("rehearse serve: warning: cannot write the audit entry {key}: {e}");
        eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
    }
}

/// The newest `limit` entries, newest first (the admins' page and the tests): day by
/// day from the newest, so that a long log's listing stays one day's.
pub(crate) async fn newest(store: &dyn ObjectStore, limit: usize) -> Result<Vec<Entry>, store::StoreError> {
    let mut days = store::retrying(|| store.list_dirs(PREFIX)).await?;
    days.sort_unstable();
    let mut out = Vec::new();
    for day in days.iter().rev() {
        let prefix = format!("{PREFIX}{day}/");
        let mut keys = store::retrying(|| store.list(&prefix)).await?;
        keys.sort_unstable();
        for k in keys.iter().rev() {
            if out.len() >= limit {
                return Ok(out);
            }
            let key = format!("{prefix}{k}");
            if let Some(o) = store::retrying(|| store.get(&key)).await? {
                // An entry that does not read is not shown: the log is the server's own.
                if let Ok(e) = serde_json::from_slice::<Entry>(&o.body) {
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}
