//! Teardown from the journal: every resource that may exist, newest first (reverse
//! creation order, so dependants go before what they depend on). A resource already
//! gone counts as deleted; a failure to delete is retried, then reported with the
//! exact command that removes it — never reported as success.

use std::time::{Duration, Instant};

use super::events::{Event, Reporter};
use super::journal::{self, Journal, State};
use super::signals::Signals;
use super::timing::Clock;
use crate::providers::Provider;
use crate::report::model::Leftover;

pub struct Outcome {
    pub leftovers: Vec<Leftover>,
    pub interrupted: bool,
    pub duration: Duration,
}

impl Outcome {
    pub fn complete(&self) -> bool {
        self.leftovers.is_empty()
    }
}

/// Destroys everything the journal says may exist. Stops early (listing the rest) when
/// a second signal arrives.
pub async fn run<P: Provider>(
    provider: &P,
    journal: &Journal,
    reporter: &dyn Reporter,
    signals: &Signals,
    stop_at_signal: u32,
    clock: &Clock,
) -> Outcome {
    let started = Instant::now();
    let records = journal::read(journal.path()).unwrap_or_default();
    let state = State::from_records(&records);
    let Some(meta) = state.meta.clone() else {
        return Outcome { leftovers: Vec::new(), interrupted: false, duration: started.elapsed() };
    };
    let mut leftovers = Vec::new();
    let mut interrupted = false;
    let remaining: Vec<journal::Entry> = state.remaining().into_iter().cloned().collect();
    // Waves: consecutive entries (newest first) of one kind go together — instances,
    // processes — since none of them uses another of its kind; kinds stay in reverse
    // creation order, so users go before what they use.
    let mut waves: Vec<Vec<&journal::Entry>> = Vec::new();
    for e in &remaining {
        match waves.last_mut() {
            Some(w) if w[0].kind == e.kind => w.push(e),
            _ => waves.push(vec![e]),
        }
    }
    for wave in waves {
        if interrupted {
            leftovers.extend(wave.iter().map(|e| leftover(provider, e, &meta)));
            continue;
        }
        let all = futures_util::future::join_all(
            wave.iter().map(|entry| destroy_one(provider, entry, &meta, reporter, clock)),
        );
        let results = tokio::select! {
            r = all => Some(r),
            _ = signals.nth(stop_at_signal) => None,
        };
        match results {
            Some(results) => {
                for (entry, ok) in wave.iter().zip(results) {
                    if ok {
                        let _ = journal.deleted(&entry.id);
                    } else {
                        leftovers.push(leftover(provider, entry, &meta));
                    }
                }
            }
            None => {
                interrupted = true;
                leftovers.extend(wave.iter().map(|e| leftover(provider, e, &meta)));
            }
        }
    }
    Outcome { leftovers, interrupted, duration: started.elapsed() }
}

/// Destroys one resource, retrying twice with backoff; reports and returns success.
async fn destroy_one<P: Provider>(
    provider: &P,
    entry: &journal::Entry,
    meta: &journal::RunMeta,
    reporter: &dyn Reporter,
    clock: &Clock,
) -> bool {
    reporter.event(Event::Started { resource: entry.id.clone(), action: "destroy".into(), detail: None });
    let t = Instant::now();
    // Waiting for processes, servers or the cloud to let go is not the tool's time.
    let _span = clock.external();
    let mut last = String::new();
    for n in 0..3u32 {
        match provider.destroy(entry, meta).await {
            Ok(()) => {
                reporter.event(Event::Finished {
                    resource: entry.id.clone(),
                    action: "destroy".into(),
                    ok: true,
                    elapsed: t.elapsed(),
                    detail: None,
                });
                return true;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(n))).await;
    }
    reporter.event(Event::Finished {
        resource: entry.id.clone(),
        action: "destroy".into(),
        ok: false,
        elapsed: t.elapsed(),
        detail: Some(last),
    });
    false
}

fn leftover<P: Provider>(provider: &P, entry: &journal::Entry, meta: &journal::RunMeta) -> Leftover {
    Leftover {
        id: entry.id.clone(),
        kind: entry.kind.clone(),
        provider_id: entry.handle.as_ref().map(|h| h.to_string()),
        command: provider.removal_command(entry, meta),
    }
}

/// The lines printed when something is left: each resource and the command that
/// removes it, then the one command that tries everything again.
pub fn leftover_text(run_id: &str, leftovers: &[Leftover]) -> String {
    let mut out = format!("rehearse: teardown of {run_id} is INCOMPLETE; left behind:\n");
    for l in leftovers {
        out.push_str(&format!("  {} ({})\n    remove with: {}\n", l.id, l.kind, l.command));
    }
    out.push_str(&format!("  or retry everything: rehearse down {run_id}\n"));
    out
}
