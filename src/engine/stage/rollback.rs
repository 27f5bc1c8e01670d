//! `rehearse stage rollback`: the stage back on the generation it replaced last, while
//! that one still drains. A promotion like a rebuild's — by compare-and-swap, on the
//! record as it was read — and the names then follow the record.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{converge, retire_at, update, ConvergeError, Fate, Refusal, StableNames, StageRecord, UpdateError};
use crate::engine::store::ObjectStore;

/// Why a stage was not rolled back.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// No generation drains behind the current one: nothing to return to.
    #[error(
        "stage `{stage}` has no generation to roll back to: the one before {} was retired (a rollback is possible \
         while the replaced generation drains: `rebuild --drain`)",
        .current.map_or("the first".to_string(), |c| format!("generation {c}"))
    )]
    NothingToReturnTo { stage: String, current: Option<u64> },
    /// The record moved since it was read (a rebuild promoted, the generation was retired).
    #[error("cannot roll stage `{stage}` back: {source}")]
    Refused {
        stage: String,
        #[source]
        source: Refusal,
    },
    #[error("cannot roll back: {0}")]
    Record(#[source] UpdateError),
    /// The record says the generation rolled back to is current; the names lag behind
    /// it (the next rebuild or rollback points them again).
    #[error("rolled back in the stage's record, but the stable names could not be switched: {0}")]
    NotSwitched(#[source] ConvergeError),
}

/// The rollback a stage's record allows: from its current generation to the newest
/// one still draining before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub from: u64,
    pub to: u64,
}

/// What a rollback did.
#[derive(Debug)]
pub struct RolledBack {
    /// The record as the rollback wrote it (its current generation the one returned to).
    pub record: StageRecord,
    /// The generation rolled back from: it drains until `retire_at`.
    pub from: u64,
    pub retire_at: DateTime<Utc>,
}

impl Rollback {
    /// The rollback `record` allows, or why there is none.
    pub fn of(record: &StageRecord) -> Result<Rollback, RollbackError> {
        match (record.current, record.previous().map(|p| p.number)) {
            (Some(from), Some(to)) => Ok(Rollback { from, to }),
            (current, _) => Err(RollbackError::NothingToReturnTo { stage: record.stage.clone(), current }),
        }
    }

    /// Promotes `to` again — only while `from` is still current and `to` still drains —
    /// and points the names at it. `from` drains for the stage's drain from `now`.
    pub async fn run(
        self,
        store: &dyn ObjectStore,
        names: &dyn StableNames,
        stage: &str,
        drain: Duration,
        now: DateTime<Utc>,
    ) -> Result<RolledBack, RollbackError> {
        let Rollback { from, to } = self;
        let retire_at = retire_at(now, drain);
        let rolled = update(store, stage, |r| {
            let mut r = r.ok_or(Refusal::NoRecord)?;
            if r.current != Some(from) {
                return Err(Refusal::Moved(r.current));
            }
            match r.generation(to) {
                Some(p) if p.fate == Fate::Draining => {}
                _ => return Err(Refusal::RetiredMeanwhile(to)),
            }
            r.promote(to, now, retire_at);
            Ok(r)
        })
        .await;
        let record = match rolled {
            Ok(r) => r,
            Err(UpdateError::Refused(source)) => {
                return Err(RollbackError::Refused { stage: stage.to_string(), source })
            }
            Err(e) => return Err(RollbackError::Record(e)),
        };
        converge(store, stage, names).await.map_err(RollbackError::NotSwitched)?;
        Ok(RolledBack { record, from, retire_at })
    }
}
