//! Teardown from the journal: every resource that may exist, newest first (reverse
//! creation order, so dependants go before what they depend on). A resource already
//! gone counts as deleted; a failure to delete is retried, then reported with the
//! exact command that removes it — never reported as success.
//!
//! A removal command is printed only for what is established as the run's (the
//! provider decides: the guard passed, the path lies in the run's directory). What the
//! journal names but the provider refused as not the run's is listed as "not
//! rehearse's: left alone", with why, and no command: a journal can be wrong or
//! forged, and a person pasting `rm -rf -- /etc` because rehearse printed it is the
//! attack.

use std::time::{Duration, Instant};

use super::events::{Event, Reporter};
use super::journal::{self, Journal, State};
use super::provider::{DestroyError, DestroyErrorKind, Provider};
use crate::plan::Kind;
use crate::report::model::Leftover;
use crate::sys::signals::Signals;
use crate::sys::timing::Clock;

/// What teardown leaves, in the terms a person acts on (as bottlerocket's test system
/// reports its resources: clear, orphaned, remaining, unknown).
#[derive(Clone, Debug)]
pub enum Left {
    /// Nothing is left, as far as the journal can tell — and the journal could tell.
    Clear,
    /// Resources are left and each one's id is known: the listed commands remove them.
    Remaining(Vec<Leftover>),
    /// Among what is left are resources journaled without an id (the run stopped
    /// mid-create, and teardown could neither find nor rule them out): found only by
    /// the run's tags (`rehearse down` looks again).
    Orphaned(Vec<Leftover>),
    /// What exists cannot be told (the journal cannot be read): nothing was removed.
    Unknown(String),
    /// The run's resources would be this machine's, but this machine did not journal
    /// the run (its journal came from a shared store): nothing here is provably the
    /// run's, so nothing was touched — and no command is offered that would.
    NotHere(String),
}

impl Left {
    fn of(leftovers: Vec<Leftover>) -> Left {
        if leftovers.is_empty() {
            Left::Clear
        } else if leftovers.iter().any(|l| l.provider_id.is_none()) {
            Left::Orphaned(leftovers)
        } else {
            Left::Remaining(leftovers)
        }
    }

    /// The resources known to be left (none when clear or unknown).
    pub fn leftovers(&self) -> &[Leftover] {
        match self {
            Left::Remaining(l) | Left::Orphaned(l) => l,
            Left::Clear | Left::Unknown(_) | Left::NotHere(_) => &[],
        }
    }
}

pub struct Outcome {
    pub left: Left,
    pub interrupted: bool,
    pub duration: Duration,
    /// Every destroy attempted.
    pub destroyed: Vec<Destroyed>,
    /// What the journal names but is not the run's (the provider refused it): never
    /// removed, and no command printed that would remove it.
    pub left_alone: Vec<LeftAlone>,
}

/// A journaled resource the provider refused as not the run's.
#[derive(Clone, Debug)]
pub struct LeftAlone {
    pub id: String,
    pub kind: Kind,
    /// What the journal says it is (its handle).
    pub provider_id: Option<String>,
    pub why: String,
}

/// How a resource left alone reads where a removal command would stand (reports,
/// JUnit): a shell comment, so that pasting the list removes nothing.
pub const LEFT_ALONE: &str = "# not rehearse's: left alone";

#[derive(Clone, Debug)]
pub struct Destroyed {
    pub id: String,
    pub kind: Kind,
    pub started: Instant,
    pub took: Duration,
    pub error: Option<DestroyError>,
}

impl Outcome {
    /// Nothing is left, as far as the journal can tell — and the journal could tell,
    /// and named nothing that is not the run's.
    pub fn complete(&self) -> bool {
        matches!(self.left, Left::Clear) && self.left_alone.is_empty()
    }

    /// Adds resources found left after the journal's teardown (by the run's tags).
    pub fn add_leftovers(&mut self, more: Vec<Leftover>) {
        if more.is_empty() {
            return;
        }
        let left = std::mem::replace(&mut self.left, Left::Clear);
        self.left = match left {
            Left::Clear => Left::of(more),
            Left::Remaining(mut l) | Left::Orphaned(mut l) => {
                l.extend(more);
                Left::of(l)
            }
            kept @ (Left::Unknown(_) | Left::NotHere(_)) => kept,
        };
    }

    /// Why it is not known what exists, if it is not.
    pub fn unknown(&self) -> Option<&str> {
        match &self.left {
            Left::Unknown(why) => Some(why),
            _ => None,
        }
    }

    /// Why the run was left alone as another machine's, if it was.
    pub fn not_here(&self) -> Option<&str> {
        match &self.left {
            Left::NotHere(why) => Some(why),
            _ => None,
        }
    }

    /// What is left, as listed to a person: the leftovers, or — when the journal could
    /// not be read — one entry saying so, with `command` to find the rest by tag; then
    /// what was left alone as not the run's, with a comment where the command would be.
    pub fn listed(&self, command: &str) -> Vec<Leftover> {
        let mut out = match &self.left {
            Left::Unknown(why) => vec![Leftover {
                id: "(unknown)".into(),
                kind: "journal".into(),
                provider_id: Some(why.clone()),
                command: command.to_string(),
            }],
            left => left.leftovers().to_vec(),
        };
        out.extend(self.left_alone.iter().map(|a| Leftover {
            id: a.id.clone(),
            kind: a.kind.to_string(),
            provider_id: a.provider_id.clone(),
            command: format!("{LEFT_ALONE} ({})", one_line(&a.why)),
        }));
        out
    }
}

/// `text` on one line (a reason inside a shell comment must not end the comment).
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
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
    // Fail closed: a journal that cannot be read says nothing about what exists.
    let unknown = |why: String| Outcome {
        left: Left::Unknown(why),
        interrupted: false,
        duration: started.elapsed(),
        destroyed: Vec::new(),
        left_alone: Vec::new(),
    };
    let records = match journal::read(journal.path()) {
        Ok(r) => r,
        Err(e) => return unknown(format!("the journal {} cannot be read: {e}", journal.path().display())),
    };
    let state = State::from_records(&records);
    let Some(meta) = state.meta.clone() else {
        return unknown(format!("the journal {} has no run record", journal.path().display()));
    };
    if provider.acts_on_this_machine() {
        let dir = journal.path().parent().unwrap_or(std::path::Path::new("."));
        if let Err(why) = journal::journaled_here(dir, &meta.run_id) {
            return Outcome {
                left: Left::NotHere(why.to_string()),
                interrupted: false,
                duration: started.elapsed(),
                destroyed: Vec::new(),
                left_alone: Vec::new(),
            };
        }
    }
    for r in &state.refused {
        reporter.event(Event::JournalRefused(r.describe(&meta.run_id)));
    }
    let remaining: Vec<journal::Entry> = state.remaining().into_iter().cloned().collect();
    let w =
        destroy_in_waves(provider, &remaining, &meta, Some(journal), reporter, signals, stop_at_signal, clock).await;
    Outcome {
        left: Left::of(w.leftovers),
        interrupted: w.interrupted,
        duration: started.elapsed(),
        destroyed: w.destroyed,
        left_alone: w.left_alone,
    }
}

/// What [`destroy_in_waves`] did: what it destroyed or tried to, what is left (with
/// commands), what it left alone as not the run's, and whether a signal stopped it.
pub struct Waves {
    pub destroyed: Vec<Destroyed>,
    pub leftovers: Vec<Leftover>,
    pub left_alone: Vec<LeftAlone>,
    pub interrupted: bool,
}

/// Destroys `entries` of the run `meta` in the provider's rank order (all of a rank
/// together, each kind of a rank one batch), retrying what is worth it; each removal
/// is recorded in `journal` when there is one (a sweep by marks has none). Stops early
/// (listing the rest) at signal number `stop_at_signal`.
#[allow(clippy::too_many_arguments)]
pub async fn destroy_in_waves<P: Provider>(
    provider: &P,
    entries: &[journal::Entry],
    meta: &journal::RunMeta,
    journal: Option<&Journal>,
    reporter: &dyn Reporter,
    signals: &Signals,
    stop_at_signal: u32,
    clock: &Clock,
) -> Waves {
    let mut leftovers = Vec::new();
    let mut left_alone = Vec::new();
    let mut interrupted = false;
    let mut destroyed = Vec::new();
    for wave in waves(provider, entries) {
        if interrupted {
            leftovers.extend(wave.iter().map(|e| leftover(provider, e, meta)));
            continue;
        }
        // Within a wave, each kind is one batch for the provider; kinds run together.
        let mut kinds: Vec<Vec<&journal::Entry>> = Vec::new();
        for e in &wave {
            match kinds.iter_mut().find(|k| k[0].kind == e.kind) {
                Some(k) => k.push(e),
                None => kinds.push(vec![e]),
            }
        }
        let all = futures_util::future::join_all(
            kinds.iter().map(|batch| destroy_batch(provider, batch, meta, reporter, clock)),
        );
        let results = tokio::select! {
            r = all => Some(r),
            _ = signals.nth(stop_at_signal) => None,
        };
        match results {
            Some(results) => {
                for (batch, oks) in kinds.iter().zip(results) {
                    for (entry, d) in batch.iter().zip(oks) {
                        let refused = d.error.as_ref().filter(|e| e.kind == DestroyErrorKind::NotOurs).cloned();
                        let ok = d.error.is_none();
                        destroyed.push(d);
                        if ok {
                            // Unrecorded, the next `down` tries again, and gone counts as done.
                            if let Some(j) = journal {
                                if let Err(e) = j.deleted(&entry.id).await {
                                    reporter.event(Event::RemovalUnrecorded {
                                        resource: entry.id.clone(),
                                        error: e.to_string(),
                                    });
                                }
                            }
                        } else if let Some(e) = refused {
                            left_alone.push(LeftAlone {
                                id: entry.id.clone(),
                                kind: entry.kind,
                                provider_id: entry.handle.as_ref().map(|h| h.to_string()),
                                why: e.to_string(),
                            });
                        } else {
                            leftovers.push(leftover(provider, entry, meta));
                        }
                    }
                }
            }
            None => {
                interrupted = true;
                leftovers.extend(wave.iter().map(|e| leftover(provider, e, meta)));
            }
        }
    }
    Waves { destroyed, leftovers, left_alone, interrupted }
}

/// The order of teardown: by the provider's rank of each kind when it knows every
/// kind (all of a rank together), else consecutive entries of one kind, newest first.
fn waves<'a, P: Provider>(provider: &P, remaining: &'a [journal::Entry]) -> Vec<Vec<&'a journal::Entry>> {
    let ranks: Option<Vec<u8>> = remaining.iter().map(|e| provider.teardown_rank(e.kind)).collect();
    let mut waves: Vec<Vec<&journal::Entry>> = Vec::new();
    match ranks {
        Some(ranks) => {
            let mut order: Vec<u8> = ranks.clone();
            order.sort();
            order.dedup();
            for r in order {
                waves.push(remaining.iter().zip(&ranks).filter(|(_, k)| **k == r).map(|(e, _)| e).collect());
            }
        }
        None => {
            for e in remaining {
                match waves.last_mut() {
                    Some(w) if w[0].kind == e.kind => w.push(e),
                    _ => waves.push(vec![e]),
                }
            }
        }
    }
    waves
}

/// Destroys a batch of one kind, then retries what failed and is worth retrying (in
/// use, unavailable — not denied, not someone else's), one by one, twice with backoff;
/// reports each resource and returns what happened to each.
async fn destroy_batch<P: Provider>(
    provider: &P,
    batch: &[&journal::Entry],
    meta: &journal::RunMeta,
    reporter: &dyn Reporter,
    clock: &Clock,
) -> Vec<Destroyed> {
    let t = Instant::now();
    for e in batch {
        reporter.event(Event::Started { resource: e.id.clone(), action: "destroy".into(), detail: None });
    }
    // Waiting for processes, servers or the cloud to let go is not the tool's time.
    let _span = clock.external();
    let first = provider.destroy_many(batch, meta).await;
    let mut oks = Vec::with_capacity(batch.len());
    for (entry, result) in batch.iter().zip(first) {
        let mut result = result;
        for n in 0..2u32 {
            match &result {
                Err(e) if e.retryable() => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(n))).await;
            result = provider.destroy(entry, meta).await;
        }
        reporter.event(Event::Finished {
            resource: entry.id.clone(),
            action: "destroy".into(),
            ok: result.is_ok(),
            elapsed: t.elapsed(),
            detail: result.as_ref().err().map(ToString::to_string),
        });
        oks.push(Destroyed {
            id: entry.id.clone(),
            kind: entry.kind,
            started: t,
            took: t.elapsed(),
            error: result.err(),
        });
    }
    oks
}

fn leftover<P: Provider>(provider: &P, entry: &journal::Entry, meta: &journal::RunMeta) -> Leftover {
    Leftover {
        id: entry.id.clone(),
        kind: entry.kind.to_string(),
        provider_id: entry.handle.as_ref().map(|h| h.to_string()),
        command: provider.removal_command(entry, meta),
    }
}

/// The lines printed when something is left: each resource and the command that
/// removes it, then the one command that tries everything again; and what was left
/// alone as not the run's, with why and no command.
pub fn leftover_text(run_id: &str, leftovers: &[Leftover]) -> String {
    let (alone, left): (Vec<&Leftover>, Vec<&Leftover>) =
        leftovers.iter().partition(|l| l.command.starts_with(LEFT_ALONE));
    let retry = !left.is_empty();
    let mut out = String::new();
    if !left.is_empty() {
        out.push_str(&format!("rehearse: teardown of {run_id} is INCOMPLETE; left behind:\n"));
    }
    for l in left {
        if l.kind == "journal" {
            out.push_str(&format!(
                "  unknown: {}\n    find and remove by tag with: {}\n",
                l.provider_id.as_deref().unwrap_or("the journal cannot be read"),
                l.command
            ));
            continue;
        }
        out.push_str(&format!("  {} ({})\n    remove with: {}\n", l.id, l.kind, l.command));
    }
    if !alone.is_empty() {
        out.push_str(&format!(
            "rehearse: the journal of {run_id} names what is not the run's; not rehearse's: left alone:\n"
        ));
    }
    for l in alone {
        let why = l.command.trim_start_matches(LEFT_ALONE).trim();
        let why = why.strip_prefix('(').and_then(|w| w.strip_suffix(')')).unwrap_or(why);
        out.push_str(&format!(
            "  {} ({}{}): not rehearse's: left alone\n    why: {why}\n",
            l.id,
            l.kind,
            l.provider_id.as_deref().map(|p| format!(", journaled as {p}")).unwrap_or_default()
        ));
    }
    if retry {
        out.push_str(&format!("  or retry everything: rehearse down {run_id}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::engine::events::Silent;
    use crate::engine::journal::{Entry, Record, RunMeta};
    use crate::engine::provider::{Ctx, DestroyErrorKind, Output, StepError};
    use crate::plan::Resource;

    /// Refuses every removal with `kind`, counting the attempts.
    struct Refusing {
        kind: DestroyErrorKind,
        attempts: AtomicU32,
    }

    impl Provider for Refusing {
        async fn create(&self, _: &Resource, _: &Ctx<'_>) -> Result<Output, StepError> {
            Ok(Output::Nothing)
        }
        async fn destroy(&self, _: &Entry, _: &RunMeta) -> Result<(), DestroyError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            Err(DestroyError::new(self.kind, format!("refused: {:?}", self.kind)))
        }
        fn removal_command(&self, e: &Entry, _: &RunMeta) -> String {
            format!("remove {}", e.id)
        }
    }

    async fn attempts_and_outcome(kind: DestroyErrorKind) -> (u32, Outcome) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(&dir.path().join("journal.jsonl"), &RunMeta::sample("r-1", "local", None)).unwrap();
        j.created("x", Kind::LocalRelease, serde_json::json!({"dir": "/nowhere"})).await.unwrap();
        let p = Refusing { kind, attempts: AtomicU32::new(0) };
        let out = run(&p, &j, &Silent, &Signals::none(), 1, &Clock::new()).await;
        (p.attempts.load(Ordering::SeqCst), out)
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_in_use_is_tried_again_what_is_denied_or_not_ours_is_not() {
        for kind in [DestroyErrorKind::InUse, DestroyErrorKind::Unavailable] {
            let (n, out) = attempts_and_outcome(kind).await;
            assert_eq!(n, 3, "{kind:?}: one attempt and two retries");
            assert!(matches!(out.left, Left::Remaining(ref l) if l.len() == 1), "{kind:?}: {:?}", out.left);
        }
        for kind in [DestroyErrorKind::Denied, DestroyErrorKind::NotOurs, DestroyErrorKind::Failed] {
            let (n, out) = attempts_and_outcome(kind).await;
            assert_eq!(n, 1, "{kind:?}: asking again changes nothing");
            assert!(!out.complete(), "{kind:?}");
            let remaining = matches!(out.left, Left::Remaining(_));
            assert_eq!(remaining, kind != DestroyErrorKind::NotOurs, "{kind:?}: {:?}", out.left);
        }
    }

    /// issue 23 #4: what the provider refused as not the run's gets no removal command,
    /// in the text `down` prints or in the report's list.
    #[tokio::test(start_paused = true)]
    async fn what_is_not_the_runs_is_left_alone_with_no_removal_command() {
        let (_, out) = attempts_and_outcome(DestroyErrorKind::NotOurs).await;
        assert_eq!(out.left_alone.len(), 1);
        let listed = out.listed("rehearse down r-1");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].command.starts_with(LEFT_ALONE), "{:?}", listed[0]);
        let text = leftover_text("r-1", &listed);
        assert!(
            text.contains("x (local.release, journaled as {\"dir\":\"/nowhere\"}): not rehearse's: left alone"),
            "{text}"
        );
        assert!(text.contains("why: refused: NotOurs"), "{text}");
        assert!(!text.contains("remove with") && !text.contains("remove x") && !text.contains("retry"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resource_journaled_without_an_id_that_stays_is_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(&dir.path().join("journal.jsonl"), &RunMeta::sample("r-1", "local", None)).unwrap();
        j.intent("x", Kind::LocalRelease, None).await.unwrap();
        let p = Refusing { kind: DestroyErrorKind::Unavailable, attempts: AtomicU32::new(0) };
        let out = run(&p, &j, &Silent, &Signals::none(), 1, &Clock::new()).await;
        assert!(matches!(out.left, Left::Orphaned(ref l) if l[0].provider_id.is_none()), "{:?}", out.left);
        assert!(!out.complete());
    }

    /// A provider of this machine's resources that counts its removals.
    struct Here(AtomicU32);

    impl Provider for Here {
        async fn create(&self, _: &Resource, _: &Ctx<'_>) -> Result<Output, StepError> {
            Ok(Output::Nothing)
        }
        async fn destroy(&self, _: &Entry, _: &RunMeta) -> Result<(), DestroyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn removal_command(&self, e: &Entry, _: &RunMeta) -> String {
            format!("remove {}", e.id)
        }
        fn acts_on_this_machine(&self) -> bool {
            true
        }
    }

    /// A journal this machine did not create (fetched from a shared store) makes a
    /// local teardown do nothing and offer nothing; one it created is torn down.
    #[tokio::test]
    async fn a_journal_this_machine_did_not_write_gets_nothing_here_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let meta = RunMeta::sample("r-20261127-000000-abcdef", "local", None);
        let records = [
            Record::Run(meta.clone()),
            Record::Created {
                id: "x".into(),
                kind: Kind::LocalProcess,
                handle: serde_json::json!({}).into(),
                at: chrono::Utc::now(),
            },
        ];
        let text: String = records.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap())).collect();
        std::fs::write(&path, text).unwrap();
        let p = Here(AtomicU32::new(0));
        let out = run(&p, &Journal::open(&path).unwrap(), &Silent, &Signals::none(), 1, &Clock::new()).await;
        assert_eq!(p.0.load(Ordering::SeqCst), 0, "something was removed");
        assert!(out.not_here().is_some_and(|w| w.contains("this machine did not journal it")), "{:?}", out.left);
        assert!(out.listed("rehearse down").is_empty() && !out.complete());

        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(&dir.path().join("journal.jsonl"), &meta).unwrap();
        j.created("x", Kind::LocalProcess, serde_json::json!({})).await.unwrap();
        let out = run(&p, &j, &Silent, &Signals::none(), 1, &Clock::new()).await;
        assert_eq!(p.0.load(Ordering::SeqCst), 1);
        assert!(out.complete());
    }
}
