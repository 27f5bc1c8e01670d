//! The queue: at most `max_running` rehearsals at once; when a slot frees, the queued
//! request of the user with the fewest running goes next (oldest first among equals),
//! claimed by compare-and-swap on its record. Each run's events are kept (the last
//! [`MAX_LINES`]) and streamed to whoever watches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, Notify};

use super::Shared;
use crate::description::Target;
use crate::engine::events::{Event, Reporter};
use crate::engine::lifecycle::Options;
use crate::engine::requests::{self, Ask, Read, State};
use crate::engine::run::{self as engine_run, Ended};
use crate::sys::signals::Signals;

/// The most lines of a run's events kept for a watcher who arrives late.
pub(crate) const MAX_LINES: usize = 5_000;

/// The finished runs whose events stay in memory (the newest): an older run's page shows
/// its state and report, not its lines.
pub(crate) const KEPT_FINISHED: usize = 100;

/// How often the queue looks at the store without being told (another server's
/// request, a slot freed by a crash).
const POLL: Duration = Duration::from_secs(2);

pub(crate) struct Queue {
    max_running: usize,
    /// Request id → its user, for the runs of this server under way.
    running: Mutex<HashMap<String, String>>,
    /// Request id → its events.
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// The finished ones among them, oldest first.
    finished: Mutex<std::collections::VecDeque<String>>,
    /// The kept dry runs being torn down (a second destroy waits for nothing).
    pub(crate) tearing: Mutex<std::collections::HashSet<String>>,
    wake: Notify,
    idle: Notify,
    /// Told when a stream opens (a watcher waits for its request's run to start).
    pub(crate) opened: Notify,
}

/// One run's events: what was said so far (and whether the run has ended) and the live
/// feed.
pub(crate) struct Stream {
    said: Mutex<Said>,
    live: broadcast::Sender<Line>,
    start: std::time::Instant,
}

#[derive(Default)]
struct Said {
    lines: std::collections::VecDeque<String>,
    ended: bool,
}

/// One item of a run's feed.
#[derive(Clone, Debug)]
pub(crate) enum Line {
    Text(String),
    /// The run ended: the request's final state is in the store.
    End,
}

impl Stream {
    fn new() -> Stream {
        Stream { said: Mutex::default(), live: broadcast::channel(1024).0, start: std::time::Instant::now() }
    }

    pub(crate) fn say(&self, line: String) {
        let mut said = self.said.lock().expect("not poisoned");
        if said.lines.len() >= MAX_LINES {
            said.lines.pop_front();
        }
        said.lines.push_back(line.clone());
        // Nobody watching is fine.
        #[allow(clippy::let_underscore_must_use)]
        let _ = self.live.send(Line::Text(line));
    }

    pub(crate) fn end(&self) {
        let mut said = self.said.lock().expect("not poisoned");
        said.ended = true;
        // Nobody watching is fine.
        #[allow(clippy::let_underscore_must_use)]
        let _ = self.live.send(Line::End);
    }

    /// What was said so far, and the feed from here on (`None` when the run has ended),
    /// taken under one lock: no line is lost or said twice between the two.
    pub(crate) fn watch(&self) -> (Vec<String>, Option<broadcast::Receiver<Line>>) {
        let said = self.said.lock().expect("not poisoned");
        let live = (!said.ended).then(|| self.live.subscribe());
        (said.lines.iter().cloned().collect(), live)
    }
}

impl Reporter for Stream {
    fn event(&self, ev: Event) {
        let t = self.start.elapsed().as_secs_f64();
        let line = match ev {
            Event::Started { resource, action, .. } => format!("[{t:7.2}s] start {resource} {action}"),
            Event::Finished { resource, action, ok, elapsed, detail } => format!(
                "[{t:7.2}s] {} {resource} {action}{} ({:.2}s)",
                if ok { "ok  " } else { "FAIL" },
                detail.map(|d| format!(": {d}")).unwrap_or_default(),
                elapsed.as_secs_f64()
            ),
            other => match other.line() {
                Some(l) => format!("[{t:7.2}s] {l}"),
                None => return,
            },
        };
        // What reaches a browser is printable and redacted, whoever wrote it.
        self.say(crate::sys::text::printable(&crate::secrets::redact(&line)));
    }
}

impl Queue {
    pub(crate) fn new(max_running: usize) -> Queue {
        Queue {
            max_running,
            running: Mutex::default(),
            streams: Mutex::default(),
            finished: Mutex::default(),
            tearing: Mutex::default(),
            wake: Notify::new(),
            idle: Notify::new(),
            opened: Notify::new(),
        }
    }

    /// Tells the queue a request was recorded.
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }

    /// A new stream for request `id` (its run starts, or its recovery).
    pub(crate) fn open_stream(&self, id: &str) -> Arc<Stream> {
        let stream = Arc::new(Stream::new());
        self.streams.lock().expect("not poisoned").insert(id.to_string(), stream.clone());
        self.opened.notify_waiters();
        stream
    }

    /// Request `id`'s run has ended: its stream is kept among the newest
    /// [`KEPT_FINISHED`], the oldest one beyond them forgotten.
    pub(crate) fn ended(&self, id: &str) {
        let mut finished = self.finished.lock().expect("not poisoned");
        finished.push_back(id.to_string());
        while finished.len() > KEPT_FINISHED {
            if let Some(old) = finished.pop_front() {
                self.streams.lock().expect("not poisoned").remove(&old);
            }
        }
    }

    /// Request `id`'s stream, said on again (a kept dry run's teardown follows its
    /// build's lines), or a new one if it was forgotten.
    pub(crate) fn stream_to_resume(&self, id: &str) -> Arc<Stream> {
        match self.stream(id) {
            Some(s) => {
                s.said.lock().expect("not poisoned").ended = false;
                self.opened.notify_waiters();
                s
            }
            None => self.open_stream(id),
        }
    }

    pub(crate) fn stream(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.lock().expect("not poisoned").get(id).cloned()
    }

    pub(crate) fn running_now(&self) -> usize {
        self.running.lock().expect("not poisoned").len()
    }

    /// Resolves when no run of this server is under way.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.running_now() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Starts the queue's loop: claims what fits, until a signal.
pub(crate) fn start(shared: Arc<Shared>, signals: Signals) {
    tokio::spawn(async move {
        // What a killed server left running first: torn down and finished.
        super::recover::recover(&shared, &signals).await;
        loop {
            if signals.count() > 0 {
                return;
            }
            fill(&shared, &signals).await;
            tokio::select! {
                () = shared.queue.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = signals.nth(1) => return,
            }
        }
    });
}

/// Claims queued requests while slots are free, fairest first.
async fn fill(shared: &Arc<Shared>, signals: &Signals) {
    let queued = match requests::list_known(shared.store.as_ref(), &shared.finished).await {
        Ok((found, _refused)) => found,
        Err(e) => {
            let line = format!("rehearse serve: warning: cannot read the queue: {e}");
            eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
            return;
        }
    };
    super::kept::expire(shared, &queued, signals);
    // A dead replica's runs: torn down here once their leases lapse.
    super::recover::orphans(shared, &queued, signals).await;
    let mut queued: Vec<Read> = queued.into_iter().filter(|r| r.request.state == State::Queued).collect();
    while shared.queue.running_now() < shared.queue.max_running && !queued.is_empty() {
        let per_user: BTreeMap<String, usize> =
            shared.queue.running.lock().expect("not poisoned").values().fold(BTreeMap::new(), |mut m, u| {
                *m.entry(u.clone()).or_default() += 1;
                m
            });
        // Fewest running first, then the oldest (ids sort by time).
        let next = (0..queued.len())
            .min_by_key(|&i| {
                (per_user.get(&queued[i].request.user).copied().unwrap_or(0), queued[i].request.id.clone())
            })
            .expect("not empty");
        let read = queued.remove(next);
        let run_id = crate::sys::state::new_run_id();
        let running = State::Running { run_id: run_id.clone(), server: shared.name.clone(), since: Utc::now() };
        let claimed = match requests::claim(shared.store.as_ref(), &read, running).await {
            Ok(c) => c,
            // Another server took it, or the store failed: the next look decides.
            Err(_) => continue,
        };
        let stream = shared.queue.open_stream(&read.request.id);
        shared.queue.running.lock().expect("not poisoned").insert(read.request.id.clone(), read.request.user.clone());
        let (shared2, signals2) = (shared.clone(), signals.clone());
        // A thread and a runtime of its own for each run: the engine's run is one task
        // that drives its steps together (not `Send`), as in the CLI.
        std::thread::spawn(move || {
            let id = claimed.request.id.clone();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let state = match &rt {
                Ok(rt) => rt.block_on(rehearse(&shared2, &claimed, &run_id, &stream, &signals2)),
                Err(e) => State::Finished {
                    run_id: None,
                    started_at: None,
                    verdict: None,
                    exit_code: crate::exit::BUILD_FAILED,
                    error: Some(format!("cannot start the run's runtime: {e}")),
                    ended_at: Utc::now(),
                    comparison: None,
                },
            };
            if let Ok(rt) = &rt {
                if let Err(e) = rt.block_on(requests::change(shared2.store.as_ref(), &claimed, state)) {
                    stream.say(format!("warning: cannot record how the request ended: {e}"));
                }
            }
            stream.end();
            shared2.queue.ended(&id);
            shared2.queue.running.lock().expect("not poisoned").remove(&id);
            shared2.queue.idle.notify_waiters();
            shared2.queue.poke();
        });
    }
}

/// One run of `loaded` through the engine's run operation, with its description's
/// provider; its lease in the server's store.
pub(crate) async fn run_with_provider(
    shared: &Shared,
    loaded: &crate::description::Loaded,
    opts: &Options,
    stream: &Stream,
    signals: &Signals,
) -> engine_run::RunOutcome {
    let (locks, lease) = (shared.store.clone(), shared.lease);
    let quiet = |_: &engine_run::RunFailure| {};
    // A pool one short after a claim is refilled at once, by a `rehearse pool fill` of
    // the same description and store.
    // Without a shared store, the pool's records are in the server's own (`STATE/server`):
    // the fill's state directory is that one.
    let store = shared.config.store.clone();
    let state_root = match &store {
        Some(_) => shared.state_root.clone(),
        None => shared.state_root.join("server"),
    };
    let (file, log) = (loaded.path.clone(), shared.state_root.join("pool-fill.log"));
    let refill = crate::engine::pool::RefillOnClaim::new(stream, move || {
        match crate::sys::process::refill_pools(store.as_deref(), Some(&state_root), &file, &log) {
            Ok(pid) => tracing::info!("refilling the pool of {} (pid {pid}; {})", file.display(), log.display()),
            Err(e) => tracing::warn!("cannot start `rehearse pool fill {}` to refill its pool: {e}", file.display()),
        }
    });
    let stream = &refill;
    match &loaded.desc.target {
        Target::Local => {
            let provider = crate::providers::local::LocalProvider::new(&opts.work_root);
            engine_run::run(&provider, loaded, opts, locks, lease, stream, signals, &quiet).await
        }
        Target::Aws(aws) => {
            let sdk = crate::providers::aws::sdk::Sdk::new(&aws.region).await;
            let provider = crate::providers::aws::AwsProvider::new(
                sdk,
                crate::providers::aws::POLL_FIRST,
                crate::providers::aws::POLL_MAX,
            )
            .with_pool_store(locks.clone());
            engine_run::run(&provider, loaded, opts, locks, lease, stream, signals, &quiet).await
        }
    }
}

/// Runs the request through the engine; its final state.
async fn rehearse(shared: &Shared, read: &Read, run_id: &str, stream: &Stream, signals: &Signals) -> State {
    let started = Utc::now();
    let started_at = Some(started);
    let finished = |verdict, exit_code, error: Option<String>| State::Finished {
        run_id: Some(run_id.to_string()),
        started_at,
        verdict,
        exit_code,
        error: error.map(|e| crate::sys::text::printable(&crate::secrets::redact(&e))),
        ended_at: Utc::now(),
        comparison: None,
    };
    let release = read.request.ask.release();
    // A comparison loads its description with the baseline, as `rehearse compare` does.
    let loaded_with = match &read.request.ask {
        Ask::Compare { baseline, .. } => baseline,
        _ => release,
    };
    let path = shared.config.environments.join(format!("{}.yaml", read.request.environment));
    let mut loaded = match crate::description::load(&path, Some(loaded_with)) {
        Ok(l) => l,
        Err(d) => return finished(None, crate::exit::USAGE, Some(d.render())),
    };
    // A game day, checked again as it runs: the description may have changed since it
    // was asked, and the record comes from the store.
    let chaos = match &read.request.ask {
        Ask::Rehearse { chaos: Some(names), from, .. } => {
            if let Err((code, why)) = crate::engine::chaos::refusal(&loaded, names, from.is_some(), false) {
                return finished(None, code, Some(why));
            }
            Some(names.clone())
        }
        _ => None,
    };
    // A dry run is `up`: built, the release installed, kept for its ttl.
    let dry_run = match &read.request.ask {
        Ask::Compare { baseline, candidate, deploy } => {
            return super::comparison::compare(
                shared,
                &loaded,
                (baseline, candidate, *deploy),
                read.request.change.as_ref(),
                stream,
                signals,
            )
            .await
        }
        Ask::Rehearse { .. } => false,
        Ask::DryRun { ttl_secs, .. } => {
            loaded.desc.ttl = Duration::from_secs(*ttl_secs);
            true
        }
    };
    let opts = Options {
        run_id: run_id.to_string(),
        release: release.to_string(),
        // A game day is always torn down: its services reach their databases through
        // proxies that end with the run.
        destroy: match (dry_run, &chaos) {
            (_, Some(_)) => crate::description::DestroyPolicy::Always,
            (true, None) => crate::description::DestroyPolicy::Never,
            (false, None) => loaded.desc.destroy,
        },
        cold: false,
        up_only: dry_run,
        state_root: shared.state_root.clone(),
        work_root: shared.work_root.clone(),
        run_as: None,
        exit_code: crate::report::model::Verdict::exit_code,
        name: None,
        shared: shared.replicated.clone(),
        stage: None,
        pins: Default::default(),
        change: read.request.change.clone(),
        member: None,
        from: match &read.request.ask {
            Ask::Rehearse { from, .. } => from.clone(),
            _ => None,
        },
        twin: None,
        deploy_twin: false,
        chaos,
    };
    let outcome = run_with_provider(shared, &loaded, &opts, stream, signals).await;
    match &outcome.ended {
        Ended::Reported { report, unwritten: None, .. }
            if report.teardown.status == crate::report::model::TeardownStatus::Kept =>
        {
            let expires_at = crate::engine::extend::read_state(&shared.state_root, run_id)
                .ok()
                .and_then(|st| st.expires_at())
                .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(loaded.desc.ttl.as_secs() as i64));
            stream.say(format!(
                "verdict: {} — kept until {}",
                report.verdict.as_str(),
                expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            ));
            State::Kept {
                run_id: run_id.to_string(),
                server: shared.name.clone(),
                started_at: started,
                expires_at,
                verdict: report.verdict,
            }
        }
        Ended::Reported { report, unwritten: None, .. } => {
            stream.say(format!("verdict: {} (exit {})", report.verdict.as_str(), report.exit_code));
            finished(Some(report.verdict), report.exit_code, None)
        }
        _ => {
            let error = outcome.error_text().unwrap_or_else(|| "the run ended without a report".into());
            stream.say(format!("error: {error}"));
            finished(None, crate::exit::BUILD_FAILED, Some(error))
        }
    }
}
