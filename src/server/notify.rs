//! Telling where a request came from how it ended: each request's `notify` targets (a
//! webhook's callback) are told once its run has ended (or its dry run is kept). What
//! was told is recorded in the store (`notify/REQUEST_ID.json`, compare-and-swap), so a
//! restart between the run's end and the telling still tells, and never twice: a
//! target that answered is not called again. A target that cannot be reached now is
//! tried again with backoff (doubling from a second, at most five minutes, or what its
//! `Retry-After` says); one that refuses (a 4xx) is recorded as refused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderName, HeaderValue, Method};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::outbound::{backoff, Call, Outcome};
use super::Shared;
use crate::engine::requests::{self, Notify, Read, Request, State};
use crate::engine::store::{self, Condition, Etag};
use crate::sys::signals::Signals;

/// How often the outbox is looked at without being told.
const POLL: Duration = Duration::from_secs(1);

/// What was told of one request, target by target (by index in its `notify`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Told {
    targets: HashMap<usize, Telling>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Telling {
    /// The state told (`finished`, `kept`).
    state: String,
    at: DateTime<Utc>,
    /// The answer's status; `None` while unanswered.
    status: Option<u16>,
    refused: bool,
}

fn key(id: &str) -> String {
    format!("notify/{id}.json")
}

/// The outbox's memory: requests told of all they will be told, and when to try a
/// target again.
#[derive(Default)]
struct Memory {
    done: HashSet<String>,
    next: HashMap<(String, usize), (u32, Instant)>,
}

/// Starts the outbox's loop, until a signal.
pub(crate) fn start(shared: Arc<Shared>, signals: Signals) {
    tokio::spawn(async move {
        let mut memory = Memory::default();
        loop {
            if signals.count() > 0 {
                return;
            }
            look(&shared, &mut memory).await;
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = signals.nth(1) => return,
            }
        }
    });
}

/// The state a request's targets are told of, once it is reached.
fn final_state(r: &Request) -> Option<&'static str> {
    match r.state {
        State::Finished { .. } => Some("finished"),
        State::Kept { .. } => Some("kept"),
        State::Queued | State::Running { .. } => None,
    }
}

async fn look(shared: &Arc<Shared>, memory: &mut Memory) {
    let Ok((found, _)) = requests::list_known(shared.store.as_ref(), &shared.finished).await else { return };
    for read in found {
        let r = &read.request;
        if r.notify.is_empty() || memory.done.contains(&r.id) {
            continue;
        }
        let Some(state) = final_state(r) else { continue };
        let (mut told, etag) = match load(shared, &r.id).await {
            Some(t) => t,
            None => continue,
        };
        let mut changed = false;
        for (i, target) in r.notify.iter().enumerate() {
            let already = told.targets.get(&i).is_some_and(|t| t.state == state && (t.status.is_some() || t.refused));
            if already {
                continue;
            }
            let slot = (r.id.clone(), i);
            if memory.next.get(&slot).is_some_and(|(_, at)| Instant::now() < *at) {
                continue;
            }
            match tell(shared, &read, target, state).await {
                Ok((status, refused)) => {
                    told.targets
                        .insert(i, Telling { state: state.into(), at: Utc::now(), status: Some(status), refused });
                    memory.next.remove(&slot);
                    changed = true;
                }
                Err(after) => {
                    let failures = memory.next.get(&slot).map_or(0, |(n, _)| *n) + 1;
                    memory.next.insert(slot, (failures, Instant::now() + backoff(failures, after)));
                }
            }
        }
        if changed && !save(shared, &r.id, &told, etag).await {
            continue;
        }
        let all = (0..r.notify.len()).all(|i| told.targets.get(&i).is_some_and(|t| t.state == "finished"));
        if all {
            memory.done.insert(r.id.clone());
        }
    }
}

async fn load(shared: &Shared, id: &str) -> Option<(Told, Option<Etag>)> {
    let k = key(id);
    match store::retrying(|| shared.store.get(&k)).await {
        Ok(None) => Some((Told::default(), None)),
        // A record that does not read is the server's own gone wrong: told again.
        Ok(Some(o)) => Some((serde_json::from_slice(&o.body).unwrap_or_default(), Some(o.etag))),
        Err(_) => None,
    }
}

/// Records what was told; `false` when another replica recorded first (it told too:
/// the next look reads its record).
async fn save(shared: &Shared, id: &str, told: &Told, etag: Option<Etag>) -> bool {
    let body = serde_json::to_vec(told).expect("a record serializes");
    let condition = match etag {
        Some(e) => Condition::Matches(e),
        None => Condition::Absent,
    };
    store::put_checked(shared.store.as_ref(), &key(id), &body, condition).await.is_ok()
}

/// Tells `target` that `read`'s request reached `state`: the answer's status and
/// whether it refused, or when to try again.
async fn tell(shared: &Shared, read: &Read, target: &Notify, state: &str) -> Result<(u16, bool), Duration> {
    let Notify::Callback { hook, url } = target;
    let Some(secret) = shared.hook_secrets.get(hook) else {
        // The hook is gone from the configuration: nothing can sign it.
        return Ok((0, true));
    };
    let body = serde_json::to_vec(&outcome(shared, &read.request, state)).expect("an outcome serializes");
    let signature = super::hooks::signature::sign(secret, Utc::now().timestamp(), &body);
    let value = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("-"));
    let call = Call {
        method: Method::POST,
        url: url.clone(),
        headers: vec![
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (HeaderName::from_static("x-rehearse-signature"), value(&signature)),
            (HeaderName::from_static("x-rehearse-delivery"), value(&format!("{}.{state}", read.request.id))),
            (HeaderName::from_static("x-rehearse-event"), value(&format!("request.{state}"))),
        ],
        body,
        what: &format!("callback of hook {hook} for request {}", read.request.id),
    };
    match shared.outbound.send(shared.store.as_ref(), &call).await {
        Outcome::Done { status, .. } => Ok((status.as_u16(), false)),
        Outcome::Refused { status, .. } => Ok((status.as_u16(), true)),
        Outcome::Later { after, .. } => Err(after),
    }
}

/// What a callback says of a request: its state, verdict and exit code, the change, and
/// the links to its pages.
pub(crate) fn outcome(shared: &Shared, r: &Request, state: &str) -> serde_json::Value {
    let base = shared.public_url.trim_end_matches('/');
    let mut links = json!({ "request": format!("{base}/requests/{}", r.id) });
    let (verdict, exit_code, error, run_id, comparison) = match &r.state {
        State::Finished { verdict, exit_code, error, run_id, comparison, .. } => {
            (verdict.map(|v| v.as_str()), Some(*exit_code), error.clone(), run_id.clone(), comparison.clone())
        }
        State::Kept { verdict, run_id, .. } => (Some(verdict.as_str()), None, None, Some(run_id.clone()), None),
        _ => (None, None, None, None, None),
    };
    if let Some(run) = &run_id {
        links["report"] = json!(format!("{base}/runs/{run}/report.html"));
    }
    if let Some(c) = &comparison {
        links["compare"] = json!(format!("{base}/compares/{c}/compare.html"));
    }
    json!({
        "request": r.id, "environment": r.environment, "ask": r.ask, "user": r.user,
        "state": state, "verdict": verdict, "exit_code": exit_code, "error": error,
        "run_id": run_id, "change": r.change, "links": links,
    })
}
