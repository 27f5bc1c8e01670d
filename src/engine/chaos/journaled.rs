//! A fault said and journaled: its start (an event, and `chaos.NAME` in the journal
//! before it does anything) and its end (journaled reverted, and said with how it went).

use tokio::time::Instant;

use super::Env;
use crate::compare::chaos::FaultReport;
use crate::description::ChaosFault;
use crate::engine::events::{Event, Reporter};
use crate::engine::provider::Provider;
use crate::plan::Kind;

/// A fault said to have started: says how it finished.
pub(super) struct Said<'e> {
    reporter: &'e dyn Reporter,
    resource: String,
    action: String,
    pub began: Instant,
}

impl Said<'_> {
    pub fn finished(&self, ok: bool, detail: impl Into<String>) {
        let (resource, action, elapsed) = (self.resource.clone(), self.action.clone(), self.began.elapsed());
        self.reporter.event(Event::Finished { resource, action, ok, elapsed, detail: Some(detail.into()) });
    }
}

/// Says fault `name` starts and journals it; `None` when the journal could not record
/// it (then it does not start: said, and in `r.skipped`).
pub(super) async fn begin<'e, P: Provider>(
    env: &'e Env<'_, P>,
    name: &str,
    f: &ChaosFault,
    r: &mut FaultReport,
) -> Option<Said<'e>> {
    let (resource, action) = (format!("chaos.{name}"), f.kind.as_str().to_string());
    let detail = Some(format!("{}: {}", r.target, r.detail));
    env.reporter.event(Event::Started { resource: resource.clone(), action: action.clone(), detail });
    let said = Said { reporter: env.reporter, resource, action, began: Instant::now() };
    if let Err(e) = journal_start(env, name, r).await {
        r.skipped = Some(e.clone());
        said.finished(false, e);
        return None;
    }
    Some(said)
}

/// What the journal says of a fault while it lasts (`chaos.NAME`).
#[derive(serde::Serialize)]
struct FaultHandle<'a> {
    kind: &'a str,
    target: &'a str,
    detail: &'a str,
}

/// Fault `name` journaled before it starts: a run stopped while it lasts lists it.
async fn journal_start<P: Provider>(env: &Env<'_, P>, name: &str, r: &FaultReport) -> Result<(), String> {
    let id = format!("chaos.{name}");
    let handle = FaultHandle { kind: &r.kind, target: &r.target, detail: &r.detail };
    let journaled = async {
        env.journal.intent(&id, Kind::Fault, None).await?;
        env.journal.created(&id, Kind::Fault, &handle).await
    };
    journaled.await.map_err(|e| format!("not started: the journal could not record it: {e}"))
}

/// Fault `name` journaled reverted.
pub(super) async fn journal_reverted<P: Provider>(env: &Env<'_, P>, name: &str) {
    if let Err(e) = env.journal.deleted(&format!("chaos.{name}")).await {
        tracing::warn!("the journal could not record that fault {name} was reverted: {e}");
    }
}
