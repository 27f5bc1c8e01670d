//! The extend operation: a kept environment's expiry pushed out, up to its `max_ttl`
//! from its start (and a caller's own limit: a server's rule). The provider moves what
//! carries the expiry on the resources first (AWS tags, which `sweep --region` reads),
//! then the journal says it; `list`, `sweep` and a server honour the journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::journal::{self, State};
use super::provider::Provider;
use super::store::ObjectStore;
use crate::sys::state;

/// What was extended.
#[derive(Debug)]
pub struct Extended {
    pub was: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// How many resources' expiry marks the provider moved.
    pub marks_moved: usize,
}

/// Why a run's expiry was not moved.
#[derive(Debug, thiserror::Error)]
pub enum ExtendError {
    #[error("cannot read the journal of {run_id} ({}): {source}", .path.display())]
    Journal {
        run_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal of {0} has no run record")]
    NoRunRecord(String),
    #[error("run {0} is torn down already: there is nothing to extend")]
    TornDown(String),
    #[error("the journal of {run_id} says it expires {current}: past any time rehearse can extend to")]
    Unreachable { run_id: String, current: DateTime<Utc> },
    /// Past the latest time allowed (`max_ttl` from its start, or the caller's limit).
    #[error(
        "run {run_id} may live until {} at most ({why}); it expires {} now",
        .latest.format("%Y-%m-%d %H:%M UTC"),
        .current.format("%Y-%m-%d %H:%M UTC")
    )]
    OverMax { run_id: String, latest: DateTime<Utc>, why: String, current: DateTime<Utc> },
    #[error("cannot move the expiry marks of {run_id}: {source}; its expiry is unchanged")]
    Marks {
        run_id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write the journal {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The run's state from its journal under `state_root`.
pub fn read_state(state_root: &Path, run_id: &str) -> Result<State, ExtendError> {
    let path = state::run_dir(state_root, run_id).join("journal.jsonl");
    journal::read(&path).map(|records| State::from_records(&records)).map_err(|source| ExtendError::Journal {
        run_id: run_id.to_string(),
        path,
        source,
    })
}

/// Pushes run `run_id`'s expiry out by `by` from now or its current expiry, whichever is
/// later, in whole seconds; refused past its `max_ttl` from its start or past `limit`
/// (the caller says why in `limit`'s text). The journal is mirrored to `shared` when
/// there is one.
pub async fn extend<P: Provider>(
    provider: &P,
    state_root: &Path,
    run_id: &str,
    by: chrono::Duration,
    limit: Option<(DateTime<Utc>, String)>,
    shared: Option<Arc<dyn ObjectStore>>,
) -> Result<Extended, ExtendError> {
    let st = read_state(state_root, run_id)?;
    let Some(meta) = st.meta.clone() else {
        return Err(ExtendError::NoRunRecord(run_id.to_string()));
    };
    if st.torn_down == Some(true) && st.remaining().is_empty() {
        return Err(ExtendError::TornDown(run_id.to_string()));
    }
    let current = st.expires_at().unwrap_or(meta.expires_at);
    let wanted = match current.max(Utc::now()).checked_add_signed(by) {
        Some(t) => chrono::SubsecRound::trunc_subsecs(t, 0),
        None => return Err(ExtendError::Unreachable { run_id: run_id.to_string(), current }),
    };
    let max =
        std::time::Duration::from_secs(meta.max_ttl_secs.unwrap_or(crate::description::default_max_ttl().as_secs()));
    let mut latest =
        (meta.latest_expiry(), format!("`max_ttl` {} from its start", crate::description::format_duration(max)));
    if let Some((l, why)) = limit {
        if l < latest.0 {
            latest = (l, why);
        }
    }
    if wanted > latest.0 {
        return Err(ExtendError::OverMax { run_id: run_id.to_string(), latest: latest.0, why: latest.1, current });
    }
    let marks_moved = provider
        .move_expiry(run_id, wanted)
        .await
        .map_err(|source| ExtendError::Marks { run_id: run_id.to_string(), source })?;
    let path = state::run_dir(state_root, run_id).join("journal.jsonl");
    let write = |source| ExtendError::Write { path: path.clone(), source };
    let mut j = journal::Journal::open(&path).map_err(write)?;
    if let Some(store) = shared {
        j = super::down::mirror(j, store, run_id).await.map_err(write)?;
    }
    j.append(&journal::Record::Extended { expires_at: wanted, at: Utc::now() }).await.map_err(write)?;
    Ok(Extended { was: current, now: wanted, marks_moved })
}
