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
    for (i, entry) in remaining.iter().enumerate() {
        if interrupted {
            leftovers.push(leftover(provider, entry, &meta));
            continue;
        }
        reporter.event(Event::Started { resource: entry.id.clone(), action: "destroy".into(), detail: None });
        let t = Instant::now();
        let attempt = async {
            // Waiting for processes, servers or the cloud to let go is not the tool's time.
            let _span = clock.external();
            let mut last = String::new();
            for n in 0..3u32 {
                match provider.destroy(entry, &meta).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(n))).await;
            }
            Err(last)
        };
        let result = tokio::select! {
            r = attempt => Some(r),
            _ = signals.nth(stop_at_signal) => None,
        };
        match result {
            Some(Ok(())) => {
                let _ = journal.deleted(&entry.id);
                reporter.event(Event::Finished {
                    resource: entry.id.clone(),
                    action: "destroy".into(),
                    ok: true,
                    elapsed: t.elapsed(),
                    detail: None,
                });
            }
            Some(Err(e)) => {
                reporter.event(Event::Finished {
                    resource: entry.id.clone(),
                    action: "destroy".into(),
                    ok: false,
                    elapsed: t.elapsed(),
                    detail: Some(e),
                });
                leftovers.push(leftover(provider, entry, &meta));
            }
            None => {
                interrupted = true;
                leftovers.push(leftover(provider, entry, &meta));
                let _ = i;
            }
        }
    }
    Outcome { leftovers, interrupted, duration: started.elapsed() }
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
