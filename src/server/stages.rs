//! The stages of the environments offered (`stage:` in a description, rebuilt by
//! `rehearse rebuild`): each one's record from the store the server's runs use (the
//! replicas' shared store, or the state directory's), read as `rehearse stage status`
//! reads it — its current generation, where its stable names point, every
//! generation's fate. No secret is in a record (the stage's password is kept apart).

use serde::Serialize;

use super::Shared;
use crate::engine::stage::{self, StageRecord};
use crate::engine::store::file::FileStore;
use crate::engine::store::ObjectStore;

/// One offered environment's stage.
#[derive(Serialize)]
pub(crate) struct Shown {
    pub environment: String,
    pub stage: String,
    /// `None`: never rebuilt yet.
    pub record: Option<StageRecord>,
    /// Why its record cannot be shown.
    pub error: Option<String>,
}

/// The stages of `environments` (the offered ones), by name.
pub(crate) async fn all(shared: &Shared, environments: &[String]) -> Vec<Shown> {
    let local;
    let store: &dyn ObjectStore = match &shared.replicated {
        Some(s) => s.as_ref(),
        None => match FileStore::open(&shared.state_root) {
            Ok(s) => {
                local = s;
                &local
            }
            Err(e) => {
                return vec![Shown {
                    environment: String::new(),
                    stage: String::new(),
                    record: None,
                    error: Some(format!("the stages' store cannot be opened: {e}")),
                }]
            }
        },
    };
    let mut shown = Vec::new();
    for env in environments {
        let path = shared.config.environments.join(format!("{env}.yaml"));
        let Ok(loaded) = crate::description::load(&path, None) else { continue };
        let Some(s) = &loaded.desc.stage else { continue };
        let name = s.name.to_string();
        let (record, error) = match stage::load(store, &name).await {
            Ok(r) => (r.map(|(record, _)| record), None),
            Err(e) => (None, Some(crate::sys::text::printable(&e.to_string()))),
        };
        shown.push(Shown { environment: env.clone(), stage: name, record, error });
    }
    shown
}
