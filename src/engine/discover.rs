//! Discovery: what a run made, found by the marks it leaves on everything it creates
//! (tags in a cloud, its work directory and its processes' environment here) rather
//! than by its journal — for `down` when the journal is lost, and for `sweep` by
//! marks. The provider lists what carries marks ([`super::provider::Provider::discover`]);
//! the engine decides what of it is removed: only what the provider found evidence
//! that rehearse made, never what merely carries a tag anyone could set.

use chrono::{DateTime, Utc};

use super::journal::Entry;
use super::provider::{Handle, Provider};
use super::stage::StageRef;
use crate::plan::Kind;

/// A resource found by its marks, as its provider describes it: enough to remove it
/// (a journal entry's id, kind and handle) and to decide whether to (its run, expiry,
/// age, environment, stage, and the provider's doubt about having made it).
#[derive(Clone, Debug, PartialEq)]
pub struct Marked {
    /// The run whose marks it carries.
    pub run_id: String,
    /// The id a journal would give it (its plan id when its marks name one).
    pub id: String,
    pub kind: Kind,
    /// What the provider removes it by, shaped as its `create` reports it.
    pub handle: Handle,
    /// Its id at the provider, for messages (an instance id, a directory).
    pub provider_id: String,
    /// When its marks say it expires, and when it was created.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    /// The environment its marks name.
    pub environment: Option<String>,
    /// The stage generation its marks name (no TTL removes a stage's current one).
    pub stage: Option<StageRef>,
    /// Why the provider doubts rehearse made it (a tag alone is anyone's): such a
    /// resource is listed, never removed.
    pub doubt: Option<String>,
}

impl Marked {
    /// The journal entry that removes it.
    pub fn entry(&self) -> Entry {
        Entry {
            id: self.id.clone(),
            kind: self.kind,
            handle: Some(self.handle.clone()),
            key: None,
            deleted: false,
            intent_at: None,
        }
    }
}

/// What carries marks cannot be listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot list what is {marks}: {message}")]
pub struct DiscoverError {
    /// The marks looked for, in the provider's words (`tagged rehearse:run-id=…`).
    pub marks: String,
    pub message: String,
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// What a run's marks find: what its provider shows rehearse made, and what it
/// doubts (left alone, with why).
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    pub made: Vec<Marked>,
    pub doubtful: Vec<Marked>,
}

impl Discovered {
    /// Splits `marked` by the provider's doubt.
    pub fn of(marked: Vec<Marked>) -> Discovered {
        let (doubtful, made) = marked.into_iter().partition(|m| m.doubt.is_some());
        Discovered { made, doubtful }
    }
}

/// What carries `run_id`'s marks, split by evidence.
pub async fn discover<P: Provider>(provider: &P, run_id: &str) -> Result<Discovered, DiscoverError> {
    let marked = provider.discover(Some(run_id)).await?;
    Ok(Discovered::of(marked.into_iter().filter(|m| m.run_id == run_id).collect()))
}
