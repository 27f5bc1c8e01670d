//! Dry runs kept for their owners: what a kept environment offers (its endpoints; its
//! secrets to its owner alone, on a deliberate reveal), its extension (up to the rule's
//! `max_ttl` and the description's), its destruction on the owner's word or at its
//! expiry — each a call of the engine, each tear-down from the run's journal as
//! `rehearse down RUN_ID` does it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::queue::Stream;
use super::Shared;
use crate::description::{ProviderKind, Target};
use crate::engine::connection::{Connection, ConnectionError};
use crate::engine::down::{self, DownError, DownOptions, Downed, Located, LostRun};
use crate::engine::extend::{self as engine_extend, ExtendError};
use crate::engine::requests::{self, Read, RequestError, State};
use crate::sys::signals::Signals;

/// Why a kept dry run could not be extended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeptError {
    #[error("request {0} is not a kept dry run")]
    NotKept(String),
    #[error(transparent)]
    Extend(#[from] ExtendError),
    #[error("extended, but the request's record says otherwise: {0}")]
    Record(#[from] RequestError),
}

/// The provider of `environment`'s description (or, without it, of the run's journal):
/// the region when it is AWS.
fn region_of(shared: &Shared, environment: &str, located: Option<&Located>) -> Option<String> {
    let path = shared.config.environments.join(format!("{environment}.yaml"));
    match crate::description::load(&path, None) {
        Ok(l) => match &l.desc.target {
            Target::Local => None,
            Target::Aws(aws) => Some(aws.region.clone()),
        },
        Err(_) => match located {
            Some(Located::Journal { meta, .. }) if meta.provider == ProviderKind::Aws => meta.region.clone(),
            _ => None,
        },
    }
}

async fn aws(region: &str) -> crate::providers::aws::AwsProvider<crate::providers::aws::sdk::Sdk> {
    let sdk = crate::providers::aws::sdk::Sdk::new(region).await;
    crate::providers::aws::AwsProvider::new(sdk, crate::providers::aws::POLL_FIRST, crate::providers::aws::POLL_MAX)
}

/// Tears run `run_id` of `environment` down from its journal (or, lost, by its marks).
pub(crate) async fn tear_down(
    shared: &Shared,
    environment: &str,
    run_id: &str,
    stream: &Stream,
    signals: &Signals,
) -> Result<Downed, DownError> {
    // Another replica's run: its journal is in the shared store.
    if let Some(store) = &shared.replicated {
        let run_dir = crate::sys::state::run_dir(&shared.state_root, run_id);
        if let Err(e) = crate::engine::store::sync::pull_journal(store.as_ref(), run_id, &run_dir).await {
            stream.say(format!("warning: cannot fetch the journal of {run_id} from {}: {e}", store.url()));
        }
    }
    let located = down::locate(Some(&shared.state_root), run_id)?;
    let region = region_of(shared, environment, Some(&located));
    let work = shared.work_root.join("runs").join(run_id);
    let stages = || None;
    let opts = |lost: LostRun| DownOptions {
        run_id,
        generation: None,
        state_root: &shared.state_root,
        shared: shared.replicated.clone(),
        stages: &stages,
        lost,
        by_marks: format!("rehearse down {run_id}"),
        reporter: stream,
        signals,
    };
    match &region {
        None => {
            let provider = crate::providers::local::LocalProvider::new(&shared.work_root);
            let lost = LostRun { provider: ProviderKind::Local, region: None, work_dir: Some(work) };
            down::down(&provider, located, &opts(lost)).await
        }
        Some(region) => {
            let provider = aws(region).await;
            let lost = LostRun { provider: ProviderKind::Aws, region: Some(region.clone()), work_dir: None };
            down::down(&provider, located, &opts(lost)).await
        }
    }
}

/// How to reach a kept dry run, secrets included (the caller shows them to its owner
/// alone); another replica's run's from the shared store (checked as it is read).
pub(crate) async fn connection(shared: &Shared, run_id: &str) -> Result<Connection, ConnectionError> {
    let dir = crate::sys::state::run_dir(&shared.state_root, run_id);
    match Connection::read(&dir, run_id) {
        Err(ConnectionError::Missing(_)) if shared.replicated.is_some() => {
            if let Some(store) = &shared.replicated {
                // Missing stays missing when the store has none either.
                let _pulled = crate::engine::store::sync::pull_connection(store.as_ref(), run_id, &dir).await;
            }
            Connection::read(&dir, run_id)
        }
        other => other,
    }
}

/// Another replica's run: its journal from the shared store, before reading it here.
pub(crate) async fn fetch_journal(shared: &Shared, run_id: &str) {
    if let Some(store) = &shared.replicated {
        let run_dir = crate::sys::state::run_dir(&shared.state_root, run_id);
        // Unfetched, the local copy (if any) is what there is; the caller says what fails.
        let _pulled = crate::engine::store::sync::pull_journal(store.as_ref(), run_id, &run_dir).await;
    }
}

/// The latest a dry run of `environment` started at `started_at` may live, by the
/// server's rule, and why.
pub(crate) fn rule_limit(
    shared: &Shared,
    environment: &str,
    started_at: DateTime<Utc>,
) -> Option<(DateTime<Utc>, String)> {
    let max = shared.config.rule(environment).max_ttl?;
    let latest = started_at.checked_add_signed(chrono::Duration::from_std(max).ok()?)?;
    let why = format!(
        "this server keeps dry runs of {environment} {} from their start (rules.max_ttl)",
        crate::description::format_duration(max)
    );
    Some((latest, why))
}

/// Extends the kept dry run `read` by `by`; the request as it now is.
pub(crate) async fn extend(shared: &Shared, read: &Read, by: std::time::Duration) -> Result<Read, KeptError> {
    let State::Kept { run_id, started_at, .. } = &read.request.state else {
        return Err(KeptError::NotKept(read.request.id.clone()));
    };
    let by = chrono::Duration::seconds(by.as_secs() as i64);
    let limit = rule_limit(shared, &read.request.environment, *started_at);
    fetch_journal(shared, run_id).await;
    let root = &shared.state_root;
    let extended = match region_of(shared, &read.request.environment, None) {
        None => {
            let provider = crate::providers::local::LocalProvider::new(&shared.work_root);
            engine_extend::extend(&provider, root, run_id, by, limit, shared.replicated.clone()).await?
        }
        Some(region) => {
            engine_extend::extend(&aws(&region).await, root, run_id, by, limit, shared.replicated.clone()).await?
        }
    };
    let mut state = read.request.state.clone();
    if let State::Kept { expires_at, .. } = &mut state {
        *expires_at = extended.now;
    }
    // The journal is the truth (list and sweep read it); the record follows it. Another
    // change in between (a destroy) wins.
    Ok(requests::change(shared.store.as_ref(), read, state).await?)
}

/// Destroys the kept dry run `read` in a task of its own (its owner asked, or it
/// expired); its request then ends as finished, with how the teardown went. `false`
/// when it is being torn down already.
pub(crate) fn destroy(shared: &Arc<Shared>, read: Read, why: String, signals: &Signals) -> bool {
    let State::Kept { run_id, started_at, verdict, .. } = read.request.state.clone() else {
        return false;
    };
    let id = read.request.id.clone();
    if !shared.queue.tearing.lock().expect("not poisoned").insert(id.clone()) {
        return false;
    }
    let stream = shared.queue.stream_to_resume(&id);
    stream.say(format!("{why}: tearing run {run_id} down from its journal"));
    let (shared, signals) = (shared.clone(), signals.clone());
    tokio::spawn(async move {
        let downed = tear_down(&shared, &read.request.environment, &run_id, &stream, &signals).await;
        let (exit_code, error) = match downed {
            Ok(d) if d.complete() => {
                stream.say("torn down: nothing is left".into());
                (verdict.exit_code(0), None)
            }
            Ok(_) => {
                let text = format!("its teardown left resources: `rehearse down {run_id}` removes them");
                stream.say(text.clone());
                (crate::exit::LEFTOVERS, Some(text))
            }
            Err(e) => {
                let text = format!("cannot tear it down: {e}; `rehearse down {run_id}` removes what is left");
                stream.say(text.clone());
                (crate::exit::LEFTOVERS, Some(crate::sys::text::printable(&text)))
            }
        };
        let done = State::Finished {
            run_id: Some(run_id.clone()),
            started_at: Some(started_at),
            verdict: Some(verdict),
            exit_code,
            error: Some(error.unwrap_or_else(|| format!("{why}; torn down, nothing left"))),
            ended_at: Utc::now(),
            comparison: None,
        };
        // The record may have moved (an extension) since it was read: the newest.
        let mut current = read;
        for _ in 0..3 {
            match requests::change(shared.store.as_ref(), &current, done.clone()).await {
                Ok(_) => break,
                Err(RequestError::Lost { .. }) => match requests::read(shared.store.as_ref(), &id).await {
                    Ok(Some(r)) if !r.request.finished() => current = r,
                    _ => break,
                },
                Err(e) => {
                    stream.say(format!("warning: cannot record how the request ended: {e}"));
                    break;
                }
            }
        }
        stream.end();
        shared.queue.ended(&id);
        shared.queue.tearing.lock().expect("not poisoned").remove(&id);
    });
    true
}

/// Destroys this server's kept dry runs that have expired (by their journals, which an
/// extension moves).
pub(crate) fn expire(shared: &Arc<Shared>, found: &[Read], signals: &Signals) {
    let now = Utc::now();
    for read in found {
        let State::Kept { run_id, expires_at, server, .. } = &read.request.state else { continue };
        // Replicas each expire their own (a restarted server, alone, all).
        if *expires_at > now || (shared.replicated.is_some() && *server != shared.name) {
            continue;
        }
        // The journal's expiry is the truth: an extension lands there first.
        let journal = engine_extend::read_state(&shared.state_root, run_id).ok().and_then(|st| st.expires_at());
        if journal.is_some_and(|t| t > now) {
            continue;
        }
        let why = format!("it expired at {}", expires_at.format("%Y-%m-%d %H:%M:%S UTC"));
        destroy(shared, read.clone(), why, signals);
    }
}
