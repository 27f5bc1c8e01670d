//! The plan's steps, run as a graph: each resource is created as soon as what it
//! depends on is done, suites run as soon as what they test is up, all concurrently;
//! the first failure (or an interrupt) stops new work and gives what is in flight the
//! provider's grace period to journal what it created.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::events::{Event, Reporter};
use super::journal::Journal;
use super::provider::{Creation, Ctx, Output, Provider, RunInfo, StepError, SuiteJob};
use crate::description::template::{self, Outputs, Scope, ServiceOutputs};
use crate::description::Loaded;
use crate::plan::{Kind, Plan, Resource};
use crate::report::model::{BackupUsed, StepTiming, SuiteResult, SuiteStatus};
use crate::suites;
use crate::sys::signals::Signals;
use crate::sys::timing::Clock;

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Pending,
    Running,
    Done,
    Failed,
}

enum Done {
    Resource(Result<Output, StepError>),
    Suite(SuiteResult),
}

type NodeFuture<'a> = Pin<Box<dyn Future<Output = (usize, Done)> + 'a>>;

/// Why a run stopped before its work was done: the one answer the graph, the verdict
/// and the suites that never ran all read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// A signal (Ctrl-C, SIGTERM): no new work, what is in flight gets its grace.
    Interrupt,
    /// A second signal: what is in flight is dropped at once.
    SecondInterrupt,
    /// A step failed (`resource`, its id): the others are stopped.
    Failure { resource: String },
}

impl CancelReason {
    /// Stopped by the person running it (one signal or two), not by a failure.
    pub(crate) fn is_interrupt(&self) -> bool {
        matches!(self, CancelReason::Interrupt | CancelReason::SecondInterrupt)
    }

    /// Why the run stopped, once the graph is done: the graph's own reason, unless a
    /// signal came that the graph did not see (after its last step) — an interrupt then.
    pub(crate) fn of_run(graph: Option<&CancelReason>, signals: u32) -> Option<CancelReason> {
        match graph {
            Some(r) if r.is_interrupt() => Some(r.clone()),
            _ if signals > 1 => Some(CancelReason::SecondInterrupt),
            _ if signals > 0 => Some(CancelReason::Interrupt),
            r => r.cloned(),
        }
    }
}

pub(super) struct GraphResult {
    pub(super) failure: Option<(String, StepError)>,
    /// Why the graph stopped before its work was done, if it did.
    pub(super) cancelled: Option<CancelReason>,
    pub(super) suites: BTreeMap<String, SuiteResult>,
    pub(super) backups: Vec<BackupUsed>,
    /// Resource id → provider id (for the report).
    pub(super) created: BTreeMap<String, String>,
    pub(super) status: BTreeMap<String, &'static str>,
    /// What the created resources expose (addresses, URLs, the copies' connections).
    pub(super) outputs: Outputs,
}

impl GraphResult {
    pub(super) fn status_of(&self, id: &str) -> Option<&'static str> {
        self.status.get(id).copied()
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn execute<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    plan: &Plan,
    info: &RunInfo,
    journal: &Journal,
    clock: &Clock,
    reporter: &dyn Reporter,
    steps: &Mutex<Vec<StepTiming>>,
    signals: &Signals,
    outputs: Option<Outputs>,
    paths: Option<&super::chaos::Paths>,
) -> GraphResult {
    let g = Graph { provider, loaded, plan, info, journal, clock, reporter, steps, paths };
    let mut st = State::new(plan, info);
    // What exists already (the suites of a rehearsed deploy run after it).
    if let Some(o) = outputs {
        st.outputs = o;
    }
    let mut running: FuturesUnordered<NodeFuture<'_>> = FuturesUnordered::new();
    loop {
        if st.result.cancelled.is_none() {
            g.start_ready(&mut st, &mut running).await;
        }
        if running.is_empty() {
            break;
        }
        let (i, done) = match g.next(&mut st, &mut running, signals).await {
            Next::Finished(Some(x)) => x,
            Next::Finished(None) | Next::Abandon => break,
            Next::AbandonOnSignal => {
                st.result.cancelled = Some(CancelReason::SecondInterrupt);
                break;
            }
            // No new work; what is in flight is told to stop at its next safe point and
            // gets the provider's grace period to get there — a create whose call is on
            // its way is answered and journaled, so that teardown removes what it made
            // instead of missing it. Suites stop at once.
            Next::Interrupted => match st.stop(provider, CancelReason::Interrupt) {
                ControlFlow::Continue(()) => continue,
                ControlFlow::Break(()) => break,
            },
        };
        if g.finished(&mut st, i, done).await.is_break() {
            break;
        }
    }
    drop(running);
    st.into_result(plan)
}

/// What the graph is run with: everything a step borrows, shared by all of them.
struct Graph<'a, P> {
    provider: &'a P,
    loaded: &'a Loaded,
    plan: &'a Plan,
    info: &'a RunInfo,
    journal: &'a Journal,
    clock: &'a Clock,
    reporter: &'a dyn Reporter,
    steps: &'a Mutex<Vec<StepTiming>>,
    /// A game day's fault proxies: a service's databases, as it sees them, are theirs.
    paths: Option<&'a super::chaos::Paths>,
}

impl<P> Clone for Graph<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Graph<'_, P> {}

/// Where the graph stands: each node's status, what the done ones expose, and whether
/// (and until when) what is in flight is being stopped.
struct State<'a> {
    index: BTreeMap<&'a str, usize>,
    status: Vec<Status>,
    outputs: Outputs,
    /// Each service instance's outputs, merged per service into `outputs`.
    instances: BTreeMap<(String, u32), ServiceOutputs>,
    result: GraphResult,
    cancel_tx: tokio::sync::watch::Sender<bool>,
    cancel_rx: tokio::sync::watch::Receiver<bool>,
    grace_until: Option<tokio::time::Instant>,
}

enum Next<T> {
    Finished(Option<T>),
    Interrupted,
    Abandon,
    /// A second signal: drop what is in flight now.
    AbandonOnSignal,
}

impl<'a> State<'a> {
    fn new(plan: &'a Plan, info: &RunInfo) -> State<'a> {
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        State {
            index: plan.resources.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect(),
            status: vec![Status::Pending; plan.resources.len()],
            outputs: Outputs {
                run_id: info.run_id.clone(),
                expires_at: info.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                release_version: info.release_version.clone(),
                release_dir: String::new(),
                release_url: String::new(),
                databases: BTreeMap::new(),
                services: BTreeMap::new(),
            },
            instances: BTreeMap::new(),
            result: GraphResult {
                failure: None,
                cancelled: None,
                suites: BTreeMap::new(),
                backups: Vec::new(),
                created: BTreeMap::new(),
                status: BTreeMap::new(),
                outputs: Outputs::default(),
            },
            cancel_tx,
            cancel_rx,
            grace_until: None,
        }
    }

    /// No new work; what is in flight is told to stop at its next safe point and gets
    /// the provider's grace period to get there. Breaks when there is no grace period.
    /// An interrupt shortens a grace period already running; a failure does not.
    fn stop<P: Provider>(&mut self, provider: &P, reason: CancelReason) -> ControlFlow<()> {
        let interrupt = reason.is_interrupt();
        // An interrupt outweighs a failure before it; a failure leaves any reason as is.
        if interrupt || self.result.cancelled.is_none() {
            self.result.cancelled = Some(reason);
        }
        // (Sending fails only when no step is left to listen: nothing to stop.)
        #[allow(clippy::let_underscore_must_use)]
        let _ = self.cancel_tx.send(true);
        let grace = provider.cancel_grace();
        if grace.is_zero() {
            return ControlFlow::Break(());
        }
        let until = tokio::time::Instant::now() + grace;
        if interrupt {
            self.grace_until = Some(self.grace_until.map_or(until, |g| g.min(until)));
        } else {
            self.grace_until.get_or_insert(until);
        }
        ControlFlow::Continue(())
    }

    fn interrupted(&self) -> bool {
        self.result.cancelled.as_ref().is_some_and(CancelReason::is_interrupt)
    }

    /// Merges what a created resource exposes into the outputs later templates see.
    fn record(&mut self, id: &str, name: &str, out: Output) {
        let result = &mut self.result;
        match out {
            Output::Nothing => {}
            Output::Database { outputs: o, backup } => {
                result.created.insert(id.to_string(), o.endpoint.clone());
                self.outputs.databases.insert(name.to_string(), o);
                result.backups.push(backup);
            }
            Output::Release { dir } => {
                result.created.insert(id.to_string(), dir.display().to_string());
                self.outputs.release_dir = dir.display().to_string();
            }
            Output::Service { name, index, outputs: o } => {
                result.created.insert(id.to_string(), o.url.clone());
                self.instances.insert((name.clone(), index), o);
                let all: Vec<&ServiceOutputs> =
                    self.instances.iter().filter(|((n, _), _)| *n == name).map(|(_, o)| o).collect();
                let first = all[0].clone();
                self.outputs.services.insert(
                    name,
                    ServiceOutputs {
                        addresses: all.iter().map(|o| o.address.clone()).collect(),
                        urls: all.iter().map(|o| o.url.clone()).collect(),
                        ..first
                    },
                );
            }
        }
    }

    fn into_result(mut self, plan: &Plan) -> GraphResult {
        for (i, r) in plan.resources.iter().enumerate() {
            let s = match self.status[i] {
                Status::Pending => "pending",
                Status::Running => "cancelled",
                Status::Done => "done",
                Status::Failed => "failed",
            };
            self.result.status.insert(r.id.clone(), s);
        }
        self.result.outputs = self.outputs;
        self.result
    }
}

impl<'a, P: Provider> Graph<'a, P> {
    /// Starts every pending node whose dependencies are done: a suite, or a resource
    /// once the journal has its intent.
    async fn start_ready(self, st: &mut State<'a>, running: &mut FuturesUnordered<NodeFuture<'a>>) {
        let d = &self.loaded.desc;
        for i in 0..self.plan.resources.len() {
            if st.status[i] != Status::Pending {
                continue;
            }
            let r = &self.plan.resources[i];
            let ready = r
                .depends_on
                .iter()
                .all(|dep| st.index.get(dep.as_str()).is_some_and(|j| st.status[*j] == Status::Done));
            if !ready {
                continue;
            }
            st.status[i] = Status::Running;
            // A service's processes reach their databases through a game day's proxies.
            let proxied = match self.paths {
                Some(paths) if r.kind == Kind::LocalProcess => match paths.outputs_for(&r.name, &st.outputs).await {
                    Ok(o) => Some(o),
                    Err(e) => {
                        st.status[i] = Status::Failed;
                        st.result.failure = Some((r.id.clone(), StepError::build(e)));
                        return;
                    }
                },
                _ => None,
            };
            let tctx = template::context(
                d,
                Some(&self.plan.release.artifact),
                proxied.as_ref().unwrap_or(&st.outputs),
                Scope::Full,
            );
            if r.kind.is_suite() {
                let outputs = st.outputs.clone();
                let cancelled = st.cancel_rx.clone();
                running.push(Box::pin(async move { (i, Done::Suite(self.suite(r, tctx, outputs, cancelled).await)) }));
            } else {
                let key = self.provider.idempotency_key(r, &self.info.run_id);
                if let Err(e) = self.journal.intent(&r.id, r.kind, key.as_deref()).await {
                    st.status[i] = Status::Failed;
                    st.result.failure =
                        Some((r.id.clone(), StepError::build(format!("cannot write the journal: {e}"))));
                    return;
                }
                let cancel = st.cancel_rx.clone();
                running.push(Box::pin(async move {
                    let g = self;
                    let ctx = Ctx::new(g.info, g.loaded, g.plan, g.journal, g.clock, g.reporter, g.steps, tctx, cancel);
                    (i, Done::Resource(g.provider.create(r, &ctx).await))
                }));
            }
        }
    }

    /// The next node to finish, or a signal, or the end of the grace period.
    async fn next(
        self,
        st: &mut State<'a>,
        running: &mut FuturesUnordered<NodeFuture<'a>>,
        signals: &Signals,
    ) -> Next<(usize, Done)> {
        // After a failure, steps in flight get the provider's grace period to reach a
        // point where what they created is journaled (an API call answered), then are
        // dropped; a signal drops them at once.
        let grace_until = st.grace_until;
        let grace = async {
            match grace_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = running.next() => Next::Finished(next),
            _ = signals.nth(1), if !st.interrupted() => Next::Interrupted,
            // A second signal: the user will not wait for what is in flight.
            _ = signals.nth(2), if st.interrupted() => Next::AbandonOnSignal,
            _ = grace => Next::Abandon,
        }
    }

    /// Records a finished node; breaks when the graph is to stop at once.
    async fn finished(self, st: &mut State<'a>, i: usize, done: Done) -> ControlFlow<()> {
        let r = &self.plan.resources[i];
        match done {
            Done::Suite(s) => {
                st.status[i] = Status::Done;
                st.result.suites.insert(r.name.clone(), s);
            }
            Done::Resource(Ok(out)) => {
                st.status[i] = Status::Done;
                st.record(&r.id, &r.name, out);
            }
            Done::Resource(Err(e)) => {
                st.status[i] = Status::Failed;
                // The provider knows nothing was created: the journal says so at once,
                // so teardown does not look for what cannot exist.
                if e.creation == Creation::Nothing {
                    if let Err(je) = self.journal.deleted(&r.id).await {
                        self.reporter.event(Event::JournalUnwritable { resource: r.id.clone(), error: je.to_string() });
                    }
                }
                if st.interrupted() {
                    // Stopped by the interrupt, not a failure of its own.
                    return ControlFlow::Continue(());
                }
                self.reporter.event(Event::StepFailed { resource: r.id.clone(), message: e.message.clone() });
                if st.result.failure.is_none() {
                    st.result.failure = Some((r.id.clone(), e));
                }
                return st.stop(self.provider, CancelReason::Failure { resource: r.id.clone() });
            }
        }
        ControlFlow::Continue(())
    }

    /// Runs one suite: its command and environment rendered from the outputs so far,
    /// here or where the provider runs suites, stopped by an interrupt or another
    /// step's failure.
    async fn suite(
        self,
        r: &'a Resource,
        tctx: tera::Context,
        suite_outputs: Outputs,
        mut cancelled: tokio::sync::watch::Receiver<bool>,
    ) -> SuiteResult {
        let (loaded, info, reporter, provider, clock) =
            (self.loaded, self.info, self.reporter, self.provider, self.clock);
        let name = r.name.as_str();
        let s = &loaded.desc.suites[name];
        // A template that does not render is the suite's failure to run, said as such:
        // never the raw text, never a variable left out.
        let render = |key: String| {
            template::render(&loaded.tera, &key, &tctx).map_err(|e| format!("cannot render `{key}`: {e}"))
        };
        let command = render(format!("suites.{name}.command"));
        let env: Result<Vec<(String, String)>, String> =
            s.env.keys().map(|k| Ok((k.clone(), render(format!("suites.{name}.env.{k}"))?))).collect();
        let (command, env) = match (command, env) {
            (Ok(c), Ok(e)) => (c, e),
            (Err(why), _) | (_, Err(why)) => {
                let res = suites::not_run(name, s, &why);
                reporter.event(Event::SuiteNotRun { resource: r.id.clone(), why });
                return res;
            }
        };
        // The description's values come last: they win over the standard ones.
        let env = suites::standard_env(&info.run_id, &info.release_version, &suite_outputs)
            .into_iter()
            .chain(env)
            .collect::<Vec<_>>();
        reporter.event(Event::Started {
            resource: r.id.clone(),
            action: "suite".into(),
            detail: Some(command.clone()),
        });
        let t = Instant::now();
        let spec = suites::SuiteRun {
            name,
            suite: s,
            command: command.clone(),
            cwd: info.suites_dir.clone(),
            env: env.clone(),
            out_dir: info.state_dir.join("suites").join(name),
            scratch_parent: info.work_dir.join("suites"),
            run_as: info.release_user(),
        };
        // Inside the copy's network when the provider runs suites there, else here.
        let elsewhere = provider.runs_suites_elsewhere(loaded);
        let told = cancelled.clone();
        let run = async {
            let job = SuiteJob {
                name,
                suite: s,
                command: &command,
                env: &env,
                cwd: &loaded.dir,
                run: info,
                loaded,
                cancel: told,
            };
            match provider.run_suite(&job).await {
                None => suites::run(spec, clock).await,
                Some(Ok(done)) => suites::judge_elsewhere(&spec, done.ran, &done.output, done.junit, &done.shown_at),
                Some(Err(why)) => suites::not_run(name, s, &why.to_string()),
            }
        };
        let what = format!("suite `{name}` to finish");
        let run = super::events::announce_wait(reporter, &r.id, &what, s.timeout, run);
        // An interrupt (or another step's failure) stops a suite at once (its process
        // group is killed when the future is dropped): it creates nothing that teardown
        // would have to wait for.
        let stopped = "stopped before it finished: the run was interrupted or another step failed";
        // A suite run elsewhere is told to stop there, and waited for.
        let res = if elsewhere {
            let res = run.await;
            if *cancelled.borrow() {
                suites::not_run(name, s, stopped)
            } else {
                res
            }
        } else {
            tokio::select! {
                res = run => res,
                _ = cancelled.wait_for(|c| *c) => suites::not_run(name, s, stopped),
            }
        };
        self.suite_finished(r, t, &res);
        res
    }

    /// Says a suite finished and records its timing.
    fn suite_finished(self, r: &Resource, t: Instant, res: &SuiteResult) {
        let ok = res.status == SuiteStatus::Passed;
        let detail = Some(match &res.reason {
            Some(why) => format!("{}: {why}", res.status.as_str()),
            None => format!("{} tests, {} failed", res.tests, res.failures + res.errors),
        });
        self.reporter.event(Event::Finished {
            resource: r.id.clone(),
            action: "suite".into(),
            ok,
            elapsed: t.elapsed(),
            detail: detail.clone(),
        });
        if let Ok(mut s) = self.steps.lock() {
            s.push(StepTiming {
                resource: r.id.clone(),
                kind: "suite".into(),
                action: "suite".into(),
                start_ms: self.clock.ms(t),
                duration_ms: t.elapsed().as_millis() as u64,
                ok,
                detail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CancelReason;

    /// A signal the graph did not see still makes the run an interrupted one; a
    /// failure stays the reason when no signal came.
    #[test]
    fn why_a_run_stopped_is_one_reason() {
        let failed = CancelReason::Failure { resource: "database.db".into() };
        assert_eq!(CancelReason::of_run(Some(&failed), 0), Some(failed.clone()));
        assert_eq!(CancelReason::of_run(Some(&failed), 1), Some(CancelReason::Interrupt));
        assert_eq!(CancelReason::of_run(None, 2), Some(CancelReason::SecondInterrupt));
        assert_eq!(
            CancelReason::of_run(Some(&CancelReason::Interrupt), 2),
            Some(CancelReason::Interrupt),
            "the graph's own reason when it saw the signal"
        );
        assert_eq!(CancelReason::of_run(None, 0), None);
        assert!(!failed.is_interrupt());
    }
}
