//! A server's start after it was killed: the requests it was running when it died have
//! no process any more, but their copies may still stand (PostgreSQL, services, a
//! release's children: nothing of them dies with the server). Each is torn down from
//! its run's journal, as `rehearse down RUN_ID` does, and finished with what the
//! teardown did; a run that had ended but was not recorded as ended gets its report's
//! verdict. Queued requests stay queued: the queue runs them. None runs twice.

use std::sync::Arc;

use chrono::Utc;

use super::queue::Stream;
use super::Shared;
use crate::engine::requests::{self, Read, State};
use crate::report::model::Verdict;
use crate::sys::signals::Signals;

/// Finishes every request left running by a server that died; how many.
pub(crate) async fn recover(shared: &Arc<Shared>, signals: &Signals) -> usize {
    let found = match requests::list_known(shared.store.as_ref(), &shared.finished).await {
        Ok((found, _)) => found,
        Err(e) => {
            let line = format!("rehearse serve: warning: cannot read the requests to recover: {e}");
            eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
            return 0;
        }
    };
    // Replicas: only the runs whose server died (their leases lapsed) are orphans.
    if shared.replicated.is_some() {
        return orphans(shared, &found, signals).await;
    }
    let mut n = 0;
    for read in found {
        let State::Running { run_id, since, .. } = &read.request.state else { continue };
        let stream = shared.queue.open_stream(&read.request.id);
        stream.say(format!("the server stopped while run {run_id} ran; tearing it down from its journal"));
        let state = finish(shared, &read, run_id, *since, &stream, signals).await;
        if let Err(e) = requests::change(shared.store.as_ref(), &read, state).await {
            stream.say(format!("warning: cannot record how the request ended: {e}"));
        }
        stream.end();
        shared.queue.ended(&read.request.id);
        n += 1;
    }
    n
}

async fn finish(
    shared: &Shared,
    read: &Read,
    run_id: &str,
    since: chrono::DateTime<Utc>,
    stream: &Stream,
    signals: &Signals,
) -> State {
    let ended = |verdict: Option<Verdict>, exit_code: i32, error: Option<String>| State::Finished {
        run_id: Some(run_id.to_string()),
        started_at: Some(since),
        verdict,
        exit_code,
        error,
        ended_at: Utc::now(),
        comparison: None,
    };
    // A run that ended before the server died: its report says how.
    let report = shared.state_root.join("runs").join(run_id).join("report");
    if let Ok(r) = crate::report::read_report(&report) {
        stream.say(format!("the run had ended: {}", r.verdict.as_str()));
        return ended(Some(r.verdict), r.exit_code, None);
    }
    let downed = super::kept::tear_down(shared, &read.request.environment, run_id, stream, signals).await;
    let why = "the server stopped while it ran";
    match downed {
        Ok(d) if d.complete() => {
            stream.say("torn down: nothing is left".into());
            ended(Some(Verdict::Interrupted), crate::exit::INTERRUPTED, Some(format!("{why}; torn down, nothing left")))
        }
        Ok(_) => {
            let text = format!("{why}; its teardown left resources: `rehearse down {run_id}` removes them");
            stream.say(text.clone());
            ended(Some(Verdict::Interrupted), crate::exit::LEFTOVERS, Some(text))
        }
        Err(e) => {
            let text = format!("{why}; cannot tear it down: {e}; `rehearse down {run_id}` removes what is left");
            stream.say(text.clone());
            ended(Some(Verdict::Interrupted), crate::exit::LEFTOVERS, Some(crate::sys::text::printable(&text)))
        }
    }
}

/// Among replicas on a shared store: the running requests of servers that died, found
/// by their runs' leases (no holder, or a lease run out), each claimed by this server
/// (compare-and-swap: one replica recovers it), torn down from its journal in the store
/// and finished; how many. A claim younger than two leases is left to its server, which
/// may not have taken its run's lease yet.
pub(crate) async fn orphans(shared: &Arc<Shared>, found: &[Read], signals: &Signals) -> usize {
    let Some(store) = shared.replicated.clone() else { return 0 };
    let grace = chrono::Duration::from_std(shared.lease * 2).unwrap_or(chrono::Duration::minutes(2));
    let mut n = 0;
    for read in found {
        let State::Running { run_id, server, since } = &read.request.state else { continue };
        if *server == shared.name || Utc::now() - *since < grace {
            continue;
        }
        let lease = crate::engine::store::run_lease(run_id);
        match crate::engine::store::lock::holder(store.as_ref(), &lease).await {
            Ok(Some((info, _))) if info.lease_until > Utc::now() => continue,
            Ok(_) => {}
            // Unknown: left for the next look.
            Err(_) => continue,
        }
        let mine = State::Running { run_id: run_id.clone(), server: shared.name.clone(), since: *since };
        let Ok(claimed) = requests::claim(store.as_ref(), read, mine).await else { continue };
        let stream = shared.queue.open_stream(&read.request.id);
        stream.say(format!(
            "its server {server} stopped while run {run_id} ran (its lease lapsed); tearing it down from its journal"
        ));
        let state = finish(shared, &claimed, run_id, *since, &stream, signals).await;
        if let Err(e) = requests::change(store.as_ref(), &claimed, state).await {
            stream.say(format!("warning: cannot record how the request ended: {e}"));
        }
        stream.end();
        shared.queue.ended(&read.request.id);
        n += 1;
    }
    n
}
