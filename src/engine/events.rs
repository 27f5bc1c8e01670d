//! What the engine tells the outside world while it works. The engine only emits
//! typed events; how they look (progress spinners on a terminal, plain lines in CI
//! logs, nothing with `-q`) is the reporter's business.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::style::{paint, Styles};

#[derive(Clone, Debug)]
pub enum Event {
    /// A step on a resource began (`restore` of `database.db`).
    Started { resource: String, action: String, detail: Option<String> },
    /// A step ended.
    Finished { resource: String, action: String, ok: bool, elapsed: Duration, detail: Option<String> },
    /// A step has been waiting a while (see [`announce_wait`]): for what, and until
    /// when at most.
    Waiting { resource: String, what: String, until: chrono::DateTime<chrono::Utc> },
    /// A run began: its id, the description's name, the release, the provider.
    RunStarted { run_id: String, description: String, release: String, provider: String },
    /// A warning from planning the run (the plan words it).
    PlanWarning(String),
    /// The suites' files were copied: the description's `bundle` paths, how many
    /// entries and bytes, in how long.
    BundleCopied { paths: Vec<String>, entries: usize, bytes: u64, elapsed: Duration },
    /// A step failed: the first failure stops the run.
    StepFailed { resource: String, message: String },
    /// A suite could not be run (its command or environment did not render).
    SuiteNotRun { resource: String, why: String },
    /// The environment is kept until its TTL (`--keep`, or a failure kept for study).
    Kept { run_id: String, until: chrono::DateTime<chrono::Utc> },
    /// A stage's generation passed its acceptance: kept, to be promoted next.
    GenerationKept { stage: String, generation: u64 },
    /// A journal entry refused on reading (the journal's own wording of why).
    JournalRefused(String),
    /// The journal could not record that `resource` was never created.
    JournalUnwritable { resource: String, error: String },
    /// The journal could not record that `resource` was removed.
    RemovalUnrecorded { resource: String, error: String },
    /// The journal's closing record could not be written after teardown.
    ClosingRecordUnwritable { error: String },
    /// A kept environment's connection details could not be written.
    ConnectionUnkept { error: String },
    /// An instance's console output could not be read (said once per watch).
    ConsoleUnreadable { resource: String, error: String },
    /// A database's golden copy is being refreshed: this run restores cold.
    GoldenRefreshing { database: String },
    /// A database's golden copy no longer matches its backup or masking: this run
    /// restores cold.
    GoldenStale { database: String, description: String },
    /// The copy of `database` is a member of its warm pool, taken for this run: the
    /// pool is one short from now (what refills it listens for this).
    PoolClaimed { database: String, member: String },
    /// What a stage's rebuild or `stage destroy` does to its generations.
    Stage(StageEvent),
}

/// What a stage's rebuild or `stage destroy` does to its generations, as it happens.
/// Names and run ids may come from the store's record: the terminal shows them printable.
#[derive(Clone, Debug)]
pub enum StageEvent {
    /// The generation cannot be retired now (the record refused the change): why.
    NotRetiring { generation: u64, why: String },
    /// The generation is being torn down after its drain.
    Retiring { generation: u64, run_id: String },
    /// A generation a rebuild that ended left mid-build is torn down.
    LeftMidBuild { generation: u64, run_id: String },
    /// A new generation is being built; `beside`: the one that serves meanwhile.
    Building { stage: String, generation: u64, release: String, beside: Option<String> },
    /// Every stable name now points at `current`.
    Switched { stage: String, current: String },
    /// The previous generation drains until `until`, then is retired.
    Draining { generation: u64, until: chrono::DateTime<chrono::Utc>, drain: Duration },
    /// Interrupted while the previous generation drained: the next rebuild retires it.
    InterruptedDraining { generation: u64 },
    /// `stage destroy` removes a generation.
    Removing { generation: u64, run_id: String, fate: String },
}

impl StageEvent {
    /// The event with `f` applied to each of its texts.
    fn map_text(self, f: impl Fn(String) -> String) -> StageEvent {
        use StageEvent::*;
        match self {
            NotRetiring { generation, why } => NotRetiring { generation, why: f(why) },
            Retiring { generation, run_id } => Retiring { generation, run_id: f(run_id) },
            LeftMidBuild { generation, run_id } => LeftMidBuild { generation, run_id: f(run_id) },
            Building { stage, generation, release, beside } => {
                Building { stage: f(stage), generation, release: f(release), beside: beside.map(&f) }
            }
            Switched { stage, current } => Switched { stage: f(stage), current: f(current) },
            Draining { .. } | InterruptedDraining { .. } => self,
            Removing { generation, run_id, fate } => Removing { generation, run_id: f(run_id), fate: f(fate) },
        }
    }

    /// The line a person reads.
    fn line(&self) -> String {
        match self {
            StageEvent::NotRetiring { generation, why } => format!("not retiring generation {generation}: {why}"),
            StageEvent::Retiring { generation, run_id } => format!("retiring generation {generation} ({run_id})"),
            StageEvent::LeftMidBuild { generation, run_id } => format!(
                "generation {generation} ({run_id}) was left mid-build by a rebuild that ended; tearing it down"
            ),
            StageEvent::Building { stage, generation, release, beside: Some(cur) } => format!(
                "stage `{stage}`: building generation {generation} (release {release}) beside {cur}, which serves meanwhile"
            ),
            StageEvent::Building { stage, generation, release, beside: None } => {
                format!("stage `{stage}`: building generation {generation} (release {release})")
            }
            StageEvent::Switched { stage, current } => {
                format!("stage `{stage}` now on {current}: every stable name switched")
            }
            StageEvent::Draining { generation, until, drain } => format!(
                "generation {generation} drains until {} (drain {}), then is retired",
                until.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::description::format_duration(*drain)
            ),
            StageEvent::InterruptedDraining { generation } => {
                format!("interrupted while generation {generation} drains; the next rebuild retires it")
            }
            StageEvent::Removing { generation, run_id, fate } => {
                format!("removing generation {generation} ({run_id}, {fate})")
            }
        }
    }
}

/// How long a wait goes on before it is announced: shorter ones pass unsaid.
pub const WAIT_NOTICE: Duration = Duration::from_secs(5);

/// Awaits `fut`; if it has not finished after [`WAIT_NOTICE`], says once (in every
/// output, plain lines included) what `resource` waits for and until when at most
/// (`bound` from the wait's start), then goes on waiting. On tokio's clock, so a
/// paused test clock sees the same.
pub async fn announce_wait<T>(
    reporter: &dyn Reporter,
    resource: &str,
    what: &str,
    bound: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let until = chrono::Utc::now() + chrono::Duration::from_std(bound).unwrap_or(chrono::Duration::MAX);
    // On the heap: the waits it wraps (a whole restore, a suite) are large futures, and
    // a run's steps are polled together on one stack.
    let mut fut = Box::pin(fut);
    tokio::select! {
        out = &mut fut => return out,
        () = tokio::time::sleep(WAIT_NOTICE) => {}
    }
    reporter.event(Event::Waiting { resource: resource.to_string(), what: what.to_string(), until });
    fut.await
}

/// "waiting for X, until 14:05:03 UTC (in 39m55s)".
fn waiting_line(resource: &str, what: &str, until: chrono::DateTime<chrono::Utc>) -> String {
    let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    let left = Duration::from_secs(left.as_secs());
    format!(
        "{resource}: waiting for {what}, until {} at the latest (in {})",
        until.format("%Y-%m-%d %H:%M:%S UTC"),
        crate::description::format_duration(left)
    )
}

impl Event {
    /// The event with `f` applied to each of its texts (the resource, the detail, the note).
    pub fn map_text(self, f: impl Fn(String) -> String) -> Event {
        match self {
            Event::Started { resource, action, detail } => {
                Event::Started { resource: f(resource), action, detail: detail.map(&f) }
            }
            Event::Finished { resource, action, ok, elapsed, detail } => {
                Event::Finished { resource: f(resource), action, ok, elapsed, detail: detail.map(&f) }
            }
            Event::Stage(s) => Event::Stage(s.map_text(f)),
            Event::Waiting { resource, what, until } => Event::Waiting { resource: f(resource), what: f(what), until },
            Event::RunStarted { run_id, description, release, provider } => Event::RunStarted {
                run_id: f(run_id),
                description: f(description),
                release: f(release),
                provider: f(provider),
            },
            Event::PlanWarning(w) => Event::PlanWarning(f(w)),
            Event::BundleCopied { paths, entries, bytes, elapsed } => {
                Event::BundleCopied { paths: paths.into_iter().map(&f).collect(), entries, bytes, elapsed }
            }
            Event::StepFailed { resource, message } => Event::StepFailed { resource: f(resource), message: f(message) },
            Event::SuiteNotRun { resource, why } => Event::SuiteNotRun { resource: f(resource), why: f(why) },
            Event::Kept { run_id, until } => Event::Kept { run_id: f(run_id), until },
            Event::GenerationKept { stage, generation } => Event::GenerationKept { stage: f(stage), generation },
            Event::JournalRefused(why) => Event::JournalRefused(f(why)),
            Event::JournalUnwritable { resource, error } => {
                Event::JournalUnwritable { resource: f(resource), error: f(error) }
            }
            Event::RemovalUnrecorded { resource, error } => {
                Event::RemovalUnrecorded { resource: f(resource), error: f(error) }
            }
            Event::ClosingRecordUnwritable { error } => Event::ClosingRecordUnwritable { error: f(error) },
            Event::ConnectionUnkept { error } => Event::ConnectionUnkept { error: f(error) },
            Event::ConsoleUnreadable { resource, error } => {
                Event::ConsoleUnreadable { resource: f(resource), error: f(error) }
            }
            Event::GoldenRefreshing { database } => Event::GoldenRefreshing { database: f(database) },
            Event::GoldenStale { database, description } => {
                Event::GoldenStale { database: f(database), description: f(description) }
            }
            Event::PoolClaimed { database, member } => Event::PoolClaimed { database: f(database), member: f(member) },
        }
    }

    /// The event's line for the person watching, worded here for every reporter; `None`
    /// for a step's start and end, which each reporter draws its own way.
    pub fn line(&self) -> Option<String> {
        Some(match self {
            Event::Started { .. } | Event::Finished { .. } => return None,
            Event::Waiting { resource, what, until } => waiting_line(resource, what, *until),
            Event::RunStarted { run_id, description, release, provider } => {
                format!("run {run_id}: rehearsing `{description}` release {release} on {provider}")
            }
            Event::PlanWarning(w) | Event::JournalRefused(w) => format!("warning: {w}"),
            Event::BundleCopied { paths, entries, bytes, elapsed } => format!(
                "suites' files (bundle: [{}]): {entries} entries, {} KiB, copied for the suites in {} ms",
                paths.join(", "),
                bytes.div_ceil(1024),
                elapsed.as_millis()
            ),
            Event::StepFailed { resource, message } => format!("{resource} failed: {message}"),
            Event::SuiteNotRun { resource, why } => format!("{resource}: {why}"),
            Event::Kept { run_id, until } => format!(
                "keeping the environment until {} (its TTL); remove it with `rehearse down {run_id}`",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Event::GenerationKept { stage, generation } => format!(
                "keeping generation {generation} of stage `{stage}`: it passed its acceptance and is promoted next"
            ),
            Event::JournalUnwritable { resource, error } => format!("{resource}: cannot write the journal: {error}"),
            Event::RemovalUnrecorded { resource, error } => format!("{resource}: cannot record its removal: {error}"),
            Event::ClosingRecordUnwritable { error } => {
                format!("warning: cannot write the journal's closing record: {error}")
            }
            Event::ConnectionUnkept { error } => format!("warning: cannot keep the connection details: {error}"),
            Event::ConsoleUnreadable { resource, error } => format!("{resource}: cannot read its console output: {error}"),
            Event::GoldenRefreshing { database } => {
                format!("golden copy of `{database}` is being refreshed (`rehearse warm`); restoring cold")
            }
            Event::GoldenStale { database, description } => format!(
                "golden copy of `{database}` is stale (backup or masking changed); restoring cold — refresh it with `rehearse warm {description}`"
            ),
            Event::PoolClaimed { database, member } => {
                format!("`{database}`: pool member {member} taken for this run; restore and masking skipped")
            }
            Event::Stage(s) => s.line(),
        })
    }

    /// The event as a terminal may show it: its texts made printable. The terminal
    /// reporters apply it themselves, whoever sends them events (the engine through
    /// [`Redacting`], a stage's rebuild with names read from the store).
    fn printable(self) -> Event {
        self.map_text(|s| crate::sys::text::printable(&s))
    }
}

pub trait Reporter: Send + Sync {
    fn event(&self, ev: Event);
}

/// Discards everything (`-q`, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _ev: Event) {}
}

/// One line per finished step, for CI logs and pipes.
pub struct Lines {
    pub start: std::time::Instant,
    pub styles: Styles,
}

impl Reporter for Lines {
    fn event(&self, ev: Event) {
        let t = self.start.elapsed().as_secs_f64();
        let line = match ev.printable() {
            Event::Started { .. } => return,
            Event::Finished { resource, action, ok, elapsed, detail } => format!(
                "[{t:7.2}s] {} {resource} {action}{} ({:.2}s)",
                if ok { paint(self.styles.pass, "ok  ") } else { paint(self.styles.fail, "FAIL") },
                detail.map(|d| format!(": {d}")).unwrap_or_default(),
                elapsed.as_secs_f64()
            ),
            other => match other.line() {
                Some(l) => format!("[{t:7.2}s] {l}"),
                None => return,
            },
        };
        // Best effort: progress on a closed terminal: nowhere else to show it.
        #[allow(clippy::let_underscore_must_use)]
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Spinners for the steps under way, finished steps printed above them.
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<Vec<(String, ProgressBar)>>,
    start: std::time::Instant,
    styles: Styles,
}

impl Progress {
    pub fn new(styles: Styles) -> Self {
        Progress { multi: MultiProgress::new(), bars: Mutex::new(Vec::new()), start: std::time::Instant::now(), styles }
    }
}

impl Reporter for Progress {
    fn event(&self, ev: Event) {
        let Ok(mut bars) = self.bars.lock() else { return };
        match ev.printable() {
            Event::Started { resource, action, detail } => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(format!("{resource} {action}{}", detail.map(|d| format!(" ({d})")).unwrap_or_default()));
                pb.enable_steady_tick(Duration::from_millis(100));
                bars.push((format!("{resource}/{action}"), pb));
            }
            Event::Finished { resource, action, ok, elapsed, detail } => {
                let key = format!("{resource}/{action}");
                if let Some(i) = bars.iter().position(|(k, _)| *k == key) {
                    let (_, pb) = bars.remove(i);
                    pb.finish_and_clear();
                    self.multi.remove(&pb);
                }
                let s = &self.styles;
                let mark = if ok { paint(s.pass, "✔") } else { paint(s.fail, "✘") };
                // Best effort: progress on a closed terminal: nowhere else to show it.
                #[allow(clippy::let_underscore_must_use)]
                let _ = self.multi.println(format!(
                    "  {mark} {resource} {action}{} {}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default(),
                    paint(s.dim, format_args!("{:.2}s", elapsed.as_secs_f64()))
                ));
            }
            other => {
                let Some(line) = other.line() else { return };
                let at = paint(self.styles.dim, format_args!("[{:6.2}s]", self.start.elapsed().as_secs_f64()));
                // Best effort: progress on a closed terminal: nowhere else to show it.
                #[allow(clippy::let_underscore_must_use)]
                let _ = self.multi.println(format!("{at} {line}"));
            }
        }
    }
}

/// Passes events on with every registered secret redacted and terminal control
/// sequences removed from their text (details carry commands and program output).
pub struct Redacting<'a>(pub &'a dyn Reporter);

impl Reporter for Redacting<'_> {
    fn event(&self, ev: Event) {
        self.0.event(ev.map_text(|s| crate::secrets::redact(&crate::sys::text::printable(&s)).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events may carry names read from a shared store (a stage's generations): the
    /// terminal reporters show them printable, whoever sent them.
    #[test]
    fn a_terminal_reporter_shows_every_text_of_an_event_printable() {
        let evil = "gen\u{1b}]0;pwned\u{7}\u{9b}2J r-1";
        let ev = Event::Finished {
            resource: evil.into(),
            action: "retire".into(),
            ok: true,
            elapsed: Duration::ZERO,
            detail: Some(evil.into()),
        };
        let Event::Finished { resource, detail, .. } = ev.printable() else { panic!("still a Finished") };
        assert_eq!((resource.as_str(), detail.as_deref()), ("gen r-1", Some("gen r-1")));
        let ev = Event::Stage(StageEvent::Retiring { generation: 3, run_id: evil.into() }).printable();
        let Event::Stage(StageEvent::Retiring { run_id, .. }) = &ev else { panic!("still a Stage") };
        assert_eq!(run_id, "gen r-1");
        assert_eq!(ev.line().as_deref(), Some("retiring generation 3 (gen r-1)"));
        let Event::Waiting { what, .. } =
            Event::Waiting { resource: "db".into(), what: evil.into(), until: chrono::Utc::now() }.printable()
        else {
            panic!("still a Waiting")
        };
        assert_eq!(what, "gen r-1");
    }

    /// The facts' wording lives in [`Event::line`], the same for every reporter, and
    /// every text a fact carries is made printable like a step's.
    #[test]
    fn a_fact_is_worded_once_and_its_texts_are_made_printable() {
        let evil = "db\u{1b}[2J";
        let until = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&chrono::Utc);
        let kept = Event::Kept { run_id: evil.into(), until }.printable();
        assert_eq!(
            kept.line().as_deref(),
            Some("keeping the environment until 2026-01-02T03:04:05Z (its TTL); remove it with `rehearse down db`")
        );
        let failed = Event::StepFailed { resource: "database.db".into(), message: evil.into() }.printable();
        assert_eq!(failed.line().as_deref(), Some("database.db failed: db"));
        let bundle = Event::BundleCopied {
            paths: vec!["tests".into(), "fixtures".into()],
            entries: 3,
            bytes: 1025,
            elapsed: Duration::from_millis(7),
        };
        assert_eq!(
            bundle.line().as_deref(),
            Some("suites' files (bundle: [tests, fixtures]): 3 entries, 2 KiB, copied for the suites in 7 ms")
        );
        let step = Event::Started { resource: "db".into(), action: "restore".into(), detail: None };
        assert_eq!(step.line(), None, "a step's start and end are drawn by each reporter");
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<Event>>);

    impl Reporter for Seen {
        fn event(&self, ev: Event) {
            self.0.lock().unwrap().push(ev);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_wait_that_goes_on_is_announced_and_only_once() {
        let seen = Seen::default();
        let quick = announce_wait(&seen, "db", "a quick thing", Duration::from_secs(60), async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            1
        })
        .await;
        assert_eq!((quick, seen.0.lock().unwrap().len()), (1, 0));
        let started = tokio::time::Instant::now();
        let slow = announce_wait(&seen, "db", "RDS", Duration::from_secs(600), async {
            tokio::time::sleep(Duration::from_secs(120)).await;
            2
        })
        .await;
        assert_eq!(slow, 2);
        assert_eq!(tokio::time::Instant::now() - started, Duration::from_secs(120), "the wait itself is not changed");
        let events = seen.0.lock().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let Event::Waiting { resource, what, until } = &events[0] else { panic!("{events:?}") };
        assert_eq!((resource.as_str(), what.as_str()), ("db", "RDS"));
        let line = waiting_line(resource, what, *until);
        assert!(line.starts_with("db: waiting for RDS, until ") && line.contains(" UTC at the latest (in "), "{line}");
    }
}
