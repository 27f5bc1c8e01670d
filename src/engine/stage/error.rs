//! Why a change of a stage did not happen: the record's refusals, its names' failures.

use super::Fate;
use crate::engine::store::StoreError;

/// Why a change no longer applies to the stage's record as it now is (someone else
/// promoted, the generation was retired, ...): said by the change itself, checked on
/// the version it replaces.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the stage has no record")]
    NoRecord,
    #[error("no generation {0}")]
    NoGeneration(u64),
    #[error("generation {number} is {} now", .fate.as_str())]
    Fate { number: u64, fate: Fate },
    #[error("the stage moved to generation {} meanwhile", .0.unwrap_or(0))]
    Moved(Option<u64>),
    #[error("the stage moved to generation {} while generation {number} was built", .to.unwrap_or(0))]
    MovedWhileBuilt { to: Option<u64>, number: u64 },
    #[error("generation {0} was retired meanwhile")]
    RetiredMeanwhile(u64),
    #[error("generation {0} was retired already")]
    RetiredAlready(u64),
    #[error("generation {0} is current again (rolled back to)")]
    CurrentAgain(u64),
    #[error("generation {0} is current after all")]
    CurrentAfterAll(u64),
}

/// Why the stage's record could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the state store: {0}")]
    Store(#[from] StoreError),
    #[error("the stage's record is damaged: {0}")]
    Damaged(#[source] serde_json::Error),
    /// The change no longer applies to the record as it now is.
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("the stage's record kept changing under this update ({0} attempts)")]
    Contended(u32),
    /// A record rehearse could not have written (see [`super::StageRecord::check`]):
    /// nothing is done with it.
    #[error(
        "refusing the stage's record {key}: {why}; rehearse never writes such a record (someone else did): inspect \
         it and remove it with the store's own tools"
    )]
    NotRehearses {
        key: String,
        #[source]
        why: super::RecordFault,
    },
}

/// Why the stable names could not be read, switched or removed.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The service or the machine that keeps them failed.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// What was asked cannot be done with them (a generation without an address for a
    /// name, a file that cannot be written): said as it is.
    #[error("{0}")]
    Refused(String),
}

impl NamesError {
    pub fn failed(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> NamesError {
        NamesError::Failed { what: what.into(), source: source.into() }
    }
}

impl From<String> for NamesError {
    fn from(why: String) -> NamesError {
        NamesError::Refused(why)
    }
}

/// Why the names could not be made to follow the record.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error(transparent)]
    Record(#[from] UpdateError),
    #[error(transparent)]
    Names(#[from] NamesError),
    #[error("the stage's record kept moving while its names were switched")]
    KeptMoving,
}
