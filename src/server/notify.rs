//! Telling where a request came from how it ended: each request's `notify` targets (a
//! webhook's callback) are told once its run has ended (or its dry run is kept). What
//! was told is recorded in the store (`notify/REQUEST_ID.json`, compare-and-swap), so a
//! restart between the run's end and the telling still tells, and never twice: a
//! target that answered is not called again. A target that cannot be reached now is
//! tried again with backoff (doubling from a second, at most five minutes, or what its
//! `Retry-After` says); one that refuses (a 4xx) is recorded as refused. Replicas on one
//! store claim a request's telling first (compare-and-swap on its record, two minutes):
//! one tells, the others read what it told.

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

/// Tries of one target before it is given up (backoff reaches five minutes at the
/// ninth: about two hours in all).
const MAX_TRIES: u32 = 32;

/// How often the outbox is looked at without being told.
const POLL: Duration = Duration::from_secs(1);

/// What was told of one request, target by target (by index in its `notify`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Told {
    targets: HashMap<usize, Telling>,
    /// The server telling now (replicas: one tells, the others wait for its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claim {
    by: String,
    /// Past this, the claim is a dead server's: another may tell.
    until: DateTime<Utc>,
}

/// How long a claim to tell lasts (a call takes at most its timeout, 20 s, a few times).
const CLAIM: chrono::Duration = chrono::Duration::seconds(120);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Telling {
    /// The state told (`queued`, `running`, `kept`, `finished`).
    state: String,
    at: DateTime<Utc>,
    /// The answer's status; `None` while unanswered.
    status: Option<u16>,
    refused: bool,
    /// A pull request's check run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check_run: Option<u64>,
}

/// The states a request goes through, in order.
const STATES: [&str; 4] = ["queued", "running", "kept", "finished"];

fn state_name(r: &Request) -> &'static str {
    match r.state {
        State::Queued => "queued",
        State::Running { .. } => "running",
        State::Kept { .. } => "kept",
        State::Finished { .. } => "finished",
    }
}

/// The next state `target` is to be told of `r`, if any: a callback, the end only; a
/// pull request, every state in order (a state passed between two looks is still told).
fn next_state(r: &Request, target: &Notify, told: Option<&Telling>) -> Option<&'static str> {
    if told.is_some_and(|t| t.refused) {
        return None;
    }
    let at = |s: &str| STATES.iter().position(|x| *x == s);
    let told_at = told.filter(|t| t.status.is_some()).and_then(|t| at(&t.state));
    match target {
        Notify::Callback { .. } => {
            let end = final_state(r)?;
            (told_at < at(end)).then_some(end)
        }
        Notify::GitHub { .. } | Notify::Slack { .. } => {
            let now = state_name(r);
            let now_at = at(now)?;
            let mut next = told_at.map_or(0, |i| i + 1);
            // A request that was never kept skips `kept`.
            if next == 2 && now != "kept" {
                next = 3;
            }
            (next <= now_at).then(|| STATES[next])
        }
    }
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
        // A callback waits for the end; a pull request is told every state.
        if final_state(r).is_none() && r.notify.iter().all(|n| matches!(n, Notify::Callback { .. })) {
            continue;
        }
        let (mut told, etag) = match load(shared, &r.id).await {
            Some(t) => t,
            None => continue,
        };
        // Another replica is telling it: its record will say what it told. (One server
        // alone claims nothing: a claim left by its killed predecessor is its own.)
        let now = Utc::now();
        let replicated = shared.replicated.is_some();
        if replicated && told.claim.as_ref().is_some_and(|c| c.by != shared.name && c.until > now) {
            continue;
        }
        let waiting = |i: usize| memory.next.get(&(r.id.clone(), i)).is_some_and(|(_, at)| Instant::now() < *at);
        let pending =
            r.notify.iter().enumerate().any(|(i, t)| !waiting(i) && next_state(r, t, told.targets.get(&i)).is_some());
        let etag = if pending && replicated {
            // Claimed first (compare-and-swap): of two replicas, one tells.
            told.claim = Some(Claim { by: shared.name.clone(), until: now + CLAIM });
            match save(shared, &r.id, &told, etag).await {
                Some(e) => Some(e),
                None => continue,
            }
        } else {
            etag
        };
        told.claim = None;
        let mut changed = pending;
        for (i, target) in r.notify.iter().enumerate() {
            let slot = (r.id.clone(), i);
            // Each state in order, as far as the request has gone.
            while let Some(state) = next_state(r, target, told.targets.get(&i)) {
                if memory.next.get(&slot).is_some_and(|(_, at)| Instant::now() < *at) {
                    break;
                }
                let check_run = told.targets.get(&i).and_then(|t| t.check_run);
                match tell(shared, &read, target, state, check_run).await {
                    Ok((status, refused, check_run)) => {
                        let t =
                            Telling { state: state.into(), at: Utc::now(), status: Some(status), refused, check_run };
                        told.targets.insert(i, t);
                        memory.next.remove(&slot);
                        changed = true;
                    }
                    Err((after, made)) => {
                        // A check run made before the failure is kept: the retry edits it.
                        if let Some(id) = made {
                            let t = told.targets.entry(i).or_insert_with(|| Telling {
                                state: String::new(),
                                at: Utc::now(),
                                status: None,
                                refused: false,
                                check_run: None,
                            });
                            if t.check_run != Some(id) {
                                t.check_run = Some(id);
                                changed = true;
                            }
                        }
                        let failures = memory.next.get(&slot).map_or(0, |(n, _)| *n) + 1;
                        if failures > MAX_TRIES {
                            // Given up (about two hours of tries): recorded as refused.
                            let t = Telling {
                                state: state.into(),
                                at: Utc::now(),
                                status: Some(0),
                                refused: true,
                                check_run: made,
                            };
                            told.targets.insert(i, t);
                            memory.next.remove(&slot);
                            changed = true;
                            break;
                        }
                        memory.next.insert(slot.clone(), (failures, Instant::now() + backoff(failures, after)));
                        break;
                    }
                }
            }
        }
        if changed && save(shared, &r.id, &told, etag).await.is_none() {
            continue;
        }
        let all = (0..r.notify.len()).all(|i| told.targets.get(&i).is_some_and(|t| t.state == "finished" || t.refused));
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

/// Records what was told (or a claim to tell), if the record is still the version
/// read; its new version, `None` when another replica wrote first.
async fn save(shared: &Shared, id: &str, told: &Told, etag: Option<Etag>) -> Option<Etag> {
    let body = serde_json::to_vec(told).expect("a record serializes");
    let condition = match etag {
        Some(e) => Condition::Matches(e),
        None => Condition::Absent,
    };
    store::put_checked(shared.store.as_ref(), &key(id), &body, condition).await.ok()
}

/// Tells `target` that `read`'s request reached `state`: the answer's status, whether
/// it refused, and a pull request's check run; or when to try again.
async fn tell(
    shared: &Shared,
    read: &Read,
    target: &Notify,
    state: &str,
    check_run: Option<u64>,
) -> Result<(u16, bool, Option<u64>), (Duration, Option<u64>)> {
    let (hook, url) = match target {
        Notify::Callback { hook, url } => (hook, url),
        Notify::Slack { .. } => {
            return match super::slack::tell(shared, read, target, state).await {
                Ok(status) => Ok((status, !(200..300).contains(&status), None)),
                Err(after) => Err((after, None)),
            }
        }
        Notify::GitHub { .. } => {
            return match super::github::tell(shared, read, target, state, check_run).await {
                Ok(id) => Ok((200, false, id)),
                Err((made, super::github::Failed::Refused(status))) => Ok((status.as_u16(), true, made)),
                Err((made, super::github::Failed::Later(after, why))) => {
                    let line = format!("rehearse serve: GitHub, request {}: {why}; again later", read.request.id);
                    eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
                    Err((after, made))
                }
            };
        }
    };
    let Some(secret) = shared.hook_secrets.get(hook) else {
        // The hook is gone from the configuration: nothing can sign it.
        return Ok((0, true, None));
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
        Outcome::Done { status, .. } => Ok((status.as_u16(), false, None)),
        Outcome::Refused { status, .. } => Ok((status.as_u16(), true, None)),
        Outcome::Later { after, .. } => Err((after, None)),
    }
}

/// The report of `r`'s run, when it has one here.
pub(crate) fn report_json(shared: &Shared, r: &Request) -> Option<crate::report::model::RunReport> {
    let run = r.run_id()?;
    crate::report::read_report(&crate::sys::state::run_dir(&shared.state_root, run).join("report")).ok()
}

/// `r`'s report page and its summary.md, when its run has a report.
pub(crate) fn report_of(shared: &Shared, r: &Request) -> Option<(String, Option<String>)> {
    let run = r.run_id()?;
    let dir = crate::sys::state::run_dir(&shared.state_root, run).join("report");
    if !dir.join("report.json").is_file() {
        return None;
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).ok().map(|s| crate::sys::text::printable_text(&s));
    Some((format!("{}/runs/{run}/report.html", shared.public_url.trim_end_matches('/')), summary))
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
