//! The stage's database password: made once, kept in the store, the same for every
//! generation (a client configured once keeps working).

use serde::{Deserialize, Serialize};

use super::secret_key;
use crate::engine::store::{put_checked, retrying, Condition, ObjectStore, StoreError};

/// Why the stage's password could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Someone else made it first, and theirs does not read as a password.
    #[error("the stage's password object is damaged: {0}")]
    Damaged(#[source] serde_json::Error),
    #[error("the stage's password cannot be written: {0}")]
    Encode(#[source] serde_json::Error),
}

#[derive(Serialize, Deserialize)]
struct Secret {
    password: String,
}

/// The stage's password, made now if it has none: of two made at once, the first
/// written is the stage's (compare-and-swap: written only where none is).
pub async fn password(store: &dyn ObjectStore, stage: &str) -> Result<String, PasswordError> {
    let key = secret_key(stage);
    if let Some(o) = retrying(|| store.get(&key)).await? {
        if let Ok(s) = serde_json::from_slice::<Secret>(&o.body) {
            return Ok(s.password);
        }
    }
    let mine = Secret { password: crate::secrets::generate() };
    let body = serde_json::to_vec(&mine).map_err(PasswordError::Encode)?;
    match put_checked(store, &key, &body, Condition::Absent).await {
        Ok(_) => Ok(mine.password),
        // Someone else made it first: theirs is the stage's.
        Err(StoreError::PreconditionFailed) => {
            let o = retrying(|| store.get(&key)).await?.ok_or(StoreError::PreconditionFailed)?;
            serde_json::from_slice::<Secret>(&o.body).map(|s| s.password).map_err(PasswordError::Damaged)
        }
        Err(e) => Err(e.into()),
    }
}
