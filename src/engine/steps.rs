//! The plan's steps, run as a graph: each resource is created as soon as what it
//! depends on is done, suites run as soon as what they test is up, all concurrently;
//! the first failure (or an interrupt) stops new work and gives what is in flight the
//! provider's grace period to journal what it created.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::events::{Event, Reporter};
use super::journal::Journal;
use super::provider::{Creation, Ctx, Output, Provider, RunInfo, StepError, SuiteJob};
use crate::description::template::{self, Outputs, Scope, ServiceOutputs};
use crate::description::Loaded;
use crate::plan::Plan;
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

pub(super) struct GraphResult {
    pub(super) failure: Option<(String, StepError)>,
    pub(super) interrupted: bool,
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
) -> GraphResult {
    let d = &loaded.desc;
    let n = plan.resources.len();
    let index: BTreeMap<&str, usize> = plan.resources.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
    let mut status = vec![Status::Pending; n];
    let mut outputs = Outputs {
        run_id: info.run_id.clone(),
        expires_at: info.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        release_version: info.release_version.clone(),
        release_dir: String::new(),
        release_url: String::new(),
        databases: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    let mut instances: BTreeMap<(String, u32), ServiceOutputs> = BTreeMap::new();
    let mut result = GraphResult {
        failure: None,
        interrupted: false,
        suites: BTreeMap::new(),
        backups: Vec::new(),
        created: BTreeMap::new(),
        status: BTreeMap::new(),
        outputs: Outputs::default(),
    };
    let mut running: FuturesUnordered<NodeFuture<'_>> = FuturesUnordered::new();
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        if result.failure.is_none() && !result.interrupted {
            for i in 0..n {
                if status[i] != Status::Pending {
                    continue;
                }
                let r = &plan.resources[i];
                let ready =
                    r.depends_on.iter().all(|dep| index.get(dep.as_str()).is_some_and(|j| status[*j] == Status::Done));
                if !ready {
                    continue;
                }
                status[i] = Status::Running;
                let tctx = template::context(d, Some(&plan.release.artifact), &outputs, Scope::Full);
                if r.kind.is_suite() {
                    let suite_outputs = outputs.clone();
                    let mut cancelled = cancel_rx.clone();
                    running.push(Box::pin(async move {
                        let name = r.name.as_str();
                        let s = &d.suites[name];
                        // A template that does not render is the suite's failure to run,
                        // said as such: never the raw text, never a variable left out.
                        let render = |key: String| {
                            template::render(&loaded.tera, &key, &tctx)
                                .map_err(|e| format!("cannot render `{key}`: {e}"))
                        };
                        let command = render(format!("suites.{name}.command"));
                        let env: Result<Vec<(String, String)>, String> =
                            s.env.keys().map(|k| Ok((k.clone(), render(format!("suites.{name}.env.{k}"))?))).collect();
                        let (command, env) = match (command, env) {
                            (Ok(c), Ok(e)) => (c, e),
                            (Err(why), _) | (_, Err(why)) => {
                                let res = suites::not_run(name, s, &why);
                                reporter.event(Event::Note(format!("{}: {why}", r.id)));
                                return (i, Done::Suite(res));
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
                        // Inside the copy's network when the provider runs suites there,
                        // else here.
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
                                Some(Ok(done)) => {
                                    suites::judge_elsewhere(&spec, done.ran, &done.output, done.junit, &done.shown_at)
                                }
                                Some(Err(why)) => suites::not_run(name, s, &why.to_string()),
                            }
                        };
                        let what = format!("suite `{name}` to finish");
                        let run = super::events::announce_wait(reporter, &r.id, &what, s.timeout, run);
                        // An interrupt (or another step's failure) stops a suite at once
                        // (its process group is killed when the future is dropped): it
                        // creates nothing that teardown would have to wait for.
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
                        let ok = res.status == SuiteStatus::Passed;
                        let detail = Some(match &res.reason {
                            Some(why) => format!("{}: {why}", res.status.as_str()),
                            None => format!("{} tests, {} failed", res.tests, res.failures + res.errors),
                        });
                        reporter.event(Event::Finished {
                            resource: r.id.clone(),
                            action: "suite".into(),
                            ok,
                            elapsed: t.elapsed(),
                            detail: detail.clone(),
                        });
                        if let Ok(mut s) = steps.lock() {
                            s.push(StepTiming {
                                resource: r.id.clone(),
                                kind: "suite".into(),
                                action: "suite".into(),
                                start_ms: clock.ms(t),
                                duration_ms: t.elapsed().as_millis() as u64,
                                ok,
                                detail,
                            });
                        }
                        (i, Done::Suite(res))
                    }));
                } else {
                    let key = provider.idempotency_key(r, &info.run_id);
                    if let Err(e) = journal.intent(&r.id, r.kind, key.as_deref()).await {
                        status[i] = Status::Failed;
                        result.failure =
                            Some((r.id.clone(), StepError::build(format!("cannot write the journal: {e}"))));
                        break;
                    }
                    let cancel = cancel_rx.clone();
                    running.push(Box::pin(async move {
                        let ctx = Ctx::new(info, loaded, plan, journal, clock, reporter, steps, tctx, cancel);
                        (i, Done::Resource(provider.create(r, &ctx).await))
                    }));
                }
            }
        }
        if running.is_empty() {
            break;
        }
        // After a failure, steps in flight get the provider's grace period to reach a
        // point where what they created is journaled (an API call answered), then are
        // dropped; a signal drops them at once.
        let grace = async {
            match grace_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        enum Next<T> {
            Finished(Option<T>),
            Interrupted,
            Abandon,
        }
        let next = tokio::select! {
            next = running.next() => Next::Finished(next),
            _ = signals.nth(1), if !result.interrupted => Next::Interrupted,
            // A second signal: the user will not wait for what is in flight.
            _ = signals.nth(2), if result.interrupted => Next::Abandon,
            _ = grace => Next::Abandon,
        };
        let (i, done) = match next {
            Next::Finished(Some(x)) => x,
            Next::Finished(None) | Next::Abandon => break,
            Next::Interrupted => {
                // No new work; what is in flight is told to stop at its next safe point
                // and gets the provider's grace period to get there — a create whose
                // call is on its way is answered and journaled, so that teardown
                // removes what it made instead of missing it. Suites stop at once.
                result.interrupted = true;
                // (Sending fails only when no step is left to listen: nothing to stop.)
                #[allow(clippy::let_underscore_must_use)]
                let _ = cancel_tx.send(true);
                let grace = provider.cancel_grace();
                if grace.is_zero() {
                    break;
                }
                let until = tokio::time::Instant::now() + grace;
                grace_until = Some(grace_until.map_or(until, |g| g.min(until)));
                continue;
            }
        };
        let r = &plan.resources[i];
        match done {
            Done::Suite(s) => {
                status[i] = Status::Done;
                result.suites.insert(r.name.clone(), s);
            }
            Done::Resource(Ok(out)) => {
                status[i] = Status::Done;
                match out {
                    Output::Nothing => {}
                    Output::Database { outputs: o, backup } => {
                        result.created.insert(r.id.clone(), o.endpoint.clone());
                        outputs.databases.insert(r.name.clone(), o);
                        result.backups.push(backup);
                    }
                    Output::Release { dir } => {
                        result.created.insert(r.id.clone(), dir.display().to_string());
                        outputs.release_dir = dir.display().to_string();
                    }
                    Output::Service { name, index, outputs: o } => {
                        result.created.insert(r.id.clone(), o.url.clone());
                        instances.insert((name.clone(), index), o);
                        let all: Vec<&ServiceOutputs> =
                            instances.iter().filter(|((n, _), _)| *n == name).map(|(_, o)| o).collect();
                        let first = all[0].clone();
                        outputs.services.insert(
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
            Done::Resource(Err(e)) => {
                status[i] = Status::Failed;
                // The provider knows nothing was created: the journal says so at once,
                // so teardown does not look for what cannot exist.
                if e.creation == Creation::Nothing {
                    if let Err(je) = journal.deleted(&r.id).await {
                        reporter.event(Event::Note(format!("{}: cannot write the journal: {je}", r.id)));
                    }
                }
                if result.interrupted {
                    // Stopped by the interrupt, not a failure of its own.
                    continue;
                }
                reporter.event(Event::Note(format!("{} failed: {}", r.id, e.message)));
                if result.failure.is_none() {
                    result.failure = Some((r.id.clone(), e));
                }
                // No new work; what is in flight is told to stop, and dropped when the
                // provider's grace period is over. (Sending fails only when no step is
                // left to listen.)
                #[allow(clippy::let_underscore_must_use)]
                let _ = cancel_tx.send(true);
                let grace = provider.cancel_grace();
                if grace.is_zero() {
                    break;
                }
                grace_until.get_or_insert(tokio::time::Instant::now() + grace);
            }
        }
    }
    drop(running);
    for (i, r) in plan.resources.iter().enumerate() {
        let s = match status[i] {
            Status::Pending => "pending",
            Status::Running => "cancelled",
            Status::Done => "done",
            Status::Failed => "failed",
        };
        result.status.insert(r.id.clone(), s);
    }
    result.outputs = outputs;
    result
}
