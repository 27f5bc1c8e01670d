//! The lifecycle of one run: up → prepare data → install → health → suites → report →
//! down, driven by the plan's dependency graph.
//!
//! Every resource (and suite) starts as soon as everything it depends on is ready, so
//! independent work runs concurrently. The journal gets the intent before each create.
//! The first failure stops new work and cancels work in flight (dropping a step kills
//! its process group); the first SIGINT/SIGTERM does the same. Teardown then runs from
//! the journal — on success, failure, interrupt and panic alike — unless the destroy
//! policy keeps the environment (never for a build failure or an interrupt).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

use super::events::{Event, Redacting, Reporter};
use super::journal::{Journal, Record, RunMeta};
use super::process::{self, Users};
use super::secure_fs::{Dir, FsError};
use super::signals::Signals;
use super::timing::Clock;
use super::{state, teardown};
use crate::description::template::{self, Outputs, Scope, ServiceOutputs};
use crate::description::{DestroyPolicy, Loaded, ProviderKind};
use crate::exit;
use crate::plan::{self, Kind, Plan};
use crate::providers::{Blame, Ctx, Output, Provider, RunInfo, StepError};
use crate::report::model::*;
use crate::secrets;
use crate::suites;

pub struct Options {
    /// Chosen by the caller, so that even a panic can be cleaned up from its journal.
    pub run_id: String,
    pub release: String,
    pub destroy: DestroyPolicy,
    pub cold: bool,
    /// `rehearse up`: build and keep, no suites.
    pub up_only: bool,
    pub state_root: PathBuf,
    pub work_root: PathBuf,
    /// The user the release runs as when rehearse runs as root (`--run-as`; default
    /// [`super::process::RELEASE_USER`]).
    pub run_as: Option<String>,
}

pub struct Outcome {
    pub report: RunReport,
    pub report_dir: PathBuf,
    pub exit_code: i32,
}

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

/// Runs a whole rehearsal. Errors only for problems before anything exists (the state
/// directory cannot be written, ...); everything after is in the outcome.
pub async fn run<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Result<Outcome, String> {
    let clock = Clock::new();
    let started_at = Utc::now();
    let d = &loaded.desc;
    let run_id = opts.run_id.clone();
    let mut plan = plan::build(loaded, Some(&opts.release), Some(&run_id)).map_err(|e| e.to_string())?;
    if opts.up_only {
        plan.resources.retain(|r| !r.kind.is_suite());
    }
    let expires_at = started_at + chrono::Duration::from_std(d.ttl).unwrap_or_else(|_| chrono::Duration::hours(2));
    // Who the copy and the release run as (rehearse as root): decided before anything
    // exists, and refused when the users are missing.
    let users = Users::resolve(opts.run_as.as_deref(), d.provider() == ProviderKind::Local)?;
    let redacting = Redacting(reporter);
    let reporter: &dyn Reporter = &redacting;

    // Directories and the journal exist before the first create: the state directory
    // private to this user, the work directory traversable (never listable) by the
    // users the copy and the release run as; each checked, so that no other user can
    // have placed or redirected them.
    let dir_err = |e: super::secure_fs::FsError| e.to_string();
    let work_root = state::traversable_dir(&opts.work_root).map_err(dir_err)?;
    let work_runs = state::traversable_dir(&work_root.join("runs")).map_err(dir_err)?;
    let state_root = state::private_dir(&opts.state_root).map_err(dir_err)?;
    let runs_root = state::private_dir(&state::runs_dir(&state_root)).map_err(dir_err)?;
    let run_state = runs_root.join(&run_id);
    std::fs::create_dir(&run_state).map_err(|e| format!("cannot create {}: {e}", run_state.display()))?;
    let logs_dir = run_state.join("logs");
    let report_dir = run_state.join("report");
    std::fs::create_dir(&logs_dir).map_err(|e| format!("cannot create {}: {e}", logs_dir.display()))?;
    let work_dir = work_runs.join(&run_id);
    let meta = RunMeta {
        run_id: run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider().as_str().into(),
        description: loaded.path.display().to_string(),
        release: opts.release.clone(),
        owner: d.owner.clone(),
        started_at,
        expires_at,
        destroy: opts.destroy.as_str().into(),
        work_dir: Some(work_dir.display().to_string()),
        region: d.region().map(str::to_string),
        pid: std::process::id(),
        pid_start: process::start_time(std::process::id() as i32).unwrap_or(0),
    };
    let journal = Journal::create(&run_state.join("journal.jsonl"), &meta)
        .map_err(|e| format!("cannot create the journal: {e}"))?;
    reporter.event(Event::Note(format!(
        "run {run_id}: rehearsing `{}` release {} on {}",
        d.name,
        opts.release,
        d.provider().as_str()
    )));
    for w in &plan.warnings {
        reporter.event(Event::Note(format!("warning: {w}")));
    }

    // The run's own corner of the work directory: the local copy, the release, the
    // suites' scratch directories, the HOME of the release's user.
    journal.intent("workspace", "local.workspace", None).map_err(|e| e.to_string())?;
    let home = work_dir.join("home");
    workspace(&work_runs, &run_id, users).map_err(dir_err)?;
    journal.created("workspace", "local.workspace", json!({"dir": work_dir})).map_err(|e| e.to_string())?;
    if let Some(u) = users.release {
        if !opts.up_only && !d.suites.is_empty() && !process::can_enter(&loaded.dir, u) {
            return Err(format!(
                "the suites run from {} as the unprivileged user {} (uid {}), who cannot enter it; make the \
                 directory and its parents traversable (chmod o+x), or pass --run-as with a user who can",
                loaded.dir.display(),
                process::user_name(u.uid),
                u.uid
            ));
        }
    }

    let info = RunInfo {
        run_id: run_id.clone(),
        state_dir: run_state.clone(),
        logs_dir: logs_dir.clone(),
        work_dir: work_dir.clone(),
        golden_root: work_root.join("golden"),
        release_version: opts.release.clone(),
        expires_at,
        users,
        home,
        cold: opts.cold,
    };
    let steps: Mutex<Vec<StepTiming>> = Mutex::new(Vec::new());

    // Up, install, health and suites: the graph.
    let graph = execute(provider, loaded, &plan, &info, &journal, &clock, reporter, &steps, signals).await;
    let interrupted = graph.interrupted || signals.count() > 0;

    let mut suite_results: Vec<SuiteResult> = Vec::new();
    if !opts.up_only {
        for (name, s) in &d.suites {
            match graph.suites.get(name) {
                Some(r) => suite_results.push(r.clone()),
                None => {
                    let why = if interrupted {
                        "interrupted before it could run".to_string()
                    } else if let Some(f) = &graph.failure {
                        f.1.message.clone()
                    } else {
                        "the environment never became ready".to_string()
                    };
                    suite_results.push(suites::not_run(name, s, &why));
                }
            }
        }
    }

    let (verdict, reason) = if interrupted {
        (Verdict::Interrupted, Some("interrupted by a signal; the environment was torn down".to_string()))
    } else if let Some((_, e)) = &graph.failure {
        match e.blame {
            Blame::Build => (Verdict::BuildFailed, Some(format!("the environment could not be built: {}", e.message))),
            Blame::Release => {
                (Verdict::Failed, Some(format!("the release failed on the copy of production: {}", e.message)))
            }
        }
    } else if !opts.up_only && suite_results.is_empty() {
        (Verdict::Failed, Some("the description has no suites: nothing judged the release".to_string()))
    } else if let Some(bad) = suite_results.iter().find(|s| s.status != SuiteStatus::Passed) {
        let n = suite_results.iter().filter(|s| s.status != SuiteStatus::Passed).count();
        let why = bad
            .reason
            .clone()
            .unwrap_or_else(|| format!("{} of {} tests failed", bad.failures + bad.errors, bad.tests));
        (Verdict::Failed, Some(format!("{n} suite(s) did not pass; `{}` {}: {why}", bad.name, bad.status.as_str())))
    } else {
        (Verdict::Passed, None)
    };

    // Down: per the destroy policy; a build failure or an interrupt always tears down.
    let keep = match verdict {
        Verdict::Interrupted | Verdict::BuildFailed => false,
        Verdict::Passed => opts.destroy == DestroyPolicy::Never,
        Verdict::Failed => opts.destroy != DestroyPolicy::Always,
    };
    let down_start = Instant::now();
    let mut destroy_steps: Vec<StepTiming> = Vec::new();
    let down_command = match d.region() {
        Some(region) if d.provider() == ProviderKind::Aws => format!("rehearse down {run_id} --region {region}"),
        _ => format!("rehearse down {run_id}"),
    };
    let mut unknown: Option<String> = None;
    let (teardown_status, leftovers, teardown_ms) = if keep {
        reporter.event(Event::Note(format!(
            "keeping the environment until {} (its TTL); remove it with `rehearse down {run_id}`",
            expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
        ("kept".to_string(), Vec::new(), 0)
    } else {
        let stop_at = signals.count() + 1;
        let out = teardown::run(provider, &journal, reporter, signals, stop_at.max(2), &clock).await;
        let status = if out.interrupted {
            "interrupted"
        } else if out.complete() {
            "complete"
        } else if out.unknown.is_some() {
            "unknown"
        } else {
            "incomplete"
        };
        unknown = out.unknown.clone();
        let _ = journal.append(&Record::TornDown { complete: out.complete(), at: Utc::now() });
        destroy_steps = out
            .destroyed
            .iter()
            .map(|d| StepTiming {
                resource: d.id.clone(),
                kind: d.kind.clone(),
                action: "destroy".into(),
                start_ms: clock.ms(d.started),
                duration_ms: d.took.as_millis() as u64,
                ok: d.error.is_none(),
                detail: d.error.clone(),
            })
            .collect();
        (status.to_string(), out.left(&down_command), out.duration.as_millis() as u64)
    };
    let down_end = Instant::now();
    let reason = match (verdict, leftovers.len()) {
        (_, _) if unknown.is_some() => Some(format!(
            "{}teardown could not tell what exists ({}): what the run created may still be there — find and \
             remove it by its tags with `{down_command}`",
            reason.map(|r| format!("{r}; ")).unwrap_or_default(),
            unknown.as_deref().unwrap_or_default()
        )),
        (Verdict::Interrupted, n) if n > 0 => Some(format!(
            "interrupted by a signal; teardown was stopped by a second signal and left {n} resource(s) — remove them with `rehearse down {run_id}`"
        )),
        (_, n) if n > 0 => Some(format!(
            "{}teardown left {n} resource(s) behind — remove them with `rehearse down {run_id}`",
            reason.map(|r| format!("{r}; ")).unwrap_or_default()
        )),
        _ => reason,
    };

    let mut exit_code = match verdict {
        Verdict::Passed => exit::PASSED,
        Verdict::Failed => exit::SUITES_FAILED,
        Verdict::BuildFailed => exit::BUILD_FAILED,
        Verdict::Interrupted => exit::INTERRUPTED,
    };
    if !leftovers.is_empty() {
        exit_code = exit::LEFTOVERS;
    }
    let _ =
        journal.append(&Record::Finished { verdict: verdict.as_str().into(), exit_code, kept: keep, at: Utc::now() });

    let mut steps = steps.into_inner().unwrap_or_default();
    let mut phases = phase_timings(&steps, &clock, graph.failure.as_ref().map(|f| f.0.as_str()), &plan);
    if !keep {
        phases.push(PhaseTiming {
            phase: "down".into(),
            start_ms: clock.ms(down_start),
            duration_ms: (down_end - down_start).as_millis() as u64,
            status: if leftovers.is_empty() { "ok".into() } else { "failed".into() },
        });
    }
    steps.extend(destroy_steps);
    // What each resource is called by its provider, from the journal's handles.
    let handles: BTreeMap<String, String> = super::journal::read(journal.path())
        .map(|records| super::journal::State::from_records(&records).entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.id, provider_id(e.handle.as_ref()?)?)))
        .collect();
    let resources = plan
        .resources
        .iter()
        .filter(|r| !r.kind.is_suite())
        .map(|r| {
            let created = handles.get(&r.id).cloned().or_else(|| graph.created.get(&r.id).cloned());
            let status = if created.is_none() && graph.status_of(&r.id) == Some("pending") {
                "never-created"
            } else if leftovers.iter().any(|l| l.id == r.id) {
                "left-behind"
            } else if keep {
                "kept"
            } else {
                "destroyed"
            };
            ResourceRecord {
                id: r.id.clone(),
                kind: r.kind.as_str().into(),
                provider_id: created,
                status: status.into(),
            }
        })
        .collect();
    let failure = graph.failure.as_ref().map(|(id, e)| Failure {
        phase: phase_of(plan.resource(id).map(|r| r.kind), e),
        resource: Some(id.clone()),
        message: e.message.clone(),
        log_tail: e.log_tail.clone(),
        log: e.log.as_ref().map(|p| p.display().to_string()),
    });
    let total = clock.elapsed();
    let report_phase_start = Instant::now();
    let mut report = RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider().as_str().into(),
        description: loaded.path.display().to_string(),
        release: opts.release.clone(),
        artifact: plan.release.artifact.clone(),
        started_at,
        finished_at: Utc::now(),
        verdict,
        exit_code,
        reason,
        failure,
        backups: graph.backups.clone(),
        phases,
        steps,
        suites: suite_results,
        resources,
        teardown: Teardown {
            policy: opts.destroy.as_str().into(),
            status: teardown_status,
            duration_ms: teardown_ms,
            leftovers,
            expires_at: keep.then_some(expires_at),
        },
        total_ms: total.as_millis() as u64,
        overhead_ms: total.saturating_sub(clock.external_total()).as_millis() as u64,
    };
    report.phases.push(PhaseTiming {
        phase: "report".into(),
        start_ms: clock.ms(report_phase_start),
        duration_ms: 0,
        status: "ok".into(),
    });
    // Secrets stay out of what outlives the run: the logs (their writers have stopped,
    // unless the environment is kept and its services still write theirs) and the
    // report in all its formats.
    if !keep {
        redact_logs(&run_state);
    }
    let report = redacted(report)?;
    crate::report::write_all(&report, &report_dir)
        .map_err(|e| format!("cannot write the report to {}: {e}", report_dir.display()))?;
    Ok(Outcome { report, report_dir, exit_code })
}

struct GraphResult {
    failure: Option<(String, StepError)>,
    interrupted: bool,
    suites: BTreeMap<String, SuiteResult>,
    backups: Vec<BackupUsed>,
    /// Resource id → provider id (for the report).
    created: BTreeMap<String, String>,
    status: BTreeMap<String, &'static str>,
}

impl GraphResult {
    fn status_of(&self, id: &str) -> Option<&'static str> {
        self.status.get(id).copied()
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute<P: Provider>(
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
                        let render = |key: &str| template::render(&loaded.tera, key, &tctx);
                        let command = render(&format!("suites.{name}.command")).unwrap_or_else(|_| s.command.clone());
                        let mut env = suites::standard_env(&info.run_id, &info.release_version, &suite_outputs);
                        for k in s.env.keys() {
                            if let Ok(v) = render(&format!("suites.{name}.env.{k}")) {
                                env.push((k.clone(), v));
                            }
                        }
                        reporter.event(Event::Started {
                            resource: r.id.clone(),
                            action: "suite".into(),
                            detail: Some(command.clone()),
                        });
                        let t = Instant::now();
                        let run = suites::run(
                            suites::SuiteRun {
                                name,
                                suite: s,
                                command,
                                cwd: loaded.dir.clone(),
                                env,
                                out_dir: info.state_dir.join("suites").join(name),
                                scratch_parent: info.work_dir.join("suites"),
                                run_as: info.release_user(),
                            },
                            clock,
                        );
                        // An interrupt (or another step's failure) stops a suite at once
                        // (its process group is killed when the future is dropped): it
                        // creates nothing that teardown would have to wait for.
                        let stopped = "stopped before it finished: the run was interrupted or another step failed";
                        let res = tokio::select! {
                            res = run => res,
                            _ = cancelled.wait_for(|c| *c) => suites::not_run(name, s, stopped),
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
                    if let Err(e) = journal.intent(&r.id, r.kind.as_str(), key.as_deref()) {
                        status[i] = Status::Failed;
                        result.failure =
                            Some((r.id.clone(), StepError::build(format!("cannot write the journal: {e}"))));
                        break;
                    }
                    let cancel = cancel_rx.clone();
                    running.push(Box::pin(async move {
                        let ctx = Ctx { run: info, loaded, plan, journal, clock, reporter, steps, tctx, cancel };
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
                if result.interrupted {
                    // Stopped by the interrupt, not a failure of its own.
                    continue;
                }
                reporter.event(Event::Note(format!("{} failed: {}", r.id, e.message)));
                if result.failure.is_none() {
                    result.failure = Some((r.id.clone(), e));
                }
                // No new work; what is in flight is told to stop, and dropped when the
                // provider's grace period is over.
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
    result
}

/// The report with every registered secret redacted, in every field.
fn redacted(report: RunReport) -> Result<RunReport, String> {
    let mut v = serde_json::to_value(&report).map_err(|e| format!("cannot serialize the report: {e}"))?;
    secrets::redact_json(&mut v);
    serde_json::from_value(v).map_err(|e| format!("cannot serialize the report: {e}"))
}

/// Rewrites the run's logs (`logs/`, `suites/*/`) with secrets redacted. A log that
/// cannot be rewritten is reported, not fatal: it is private to this user anyway.
fn redact_logs(run_state: &std::path::Path) {
    let mut dirs = vec![run_state.join("logs")];
    if let Ok(rd) = std::fs::read_dir(run_state.join("suites")) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for f in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
            if let Err(e) = secrets::redact_file(&f.path()) {
                tracing::warn!("cannot redact {}: {e}", f.path().display());
            }
        }
    }
}

/// Creates the run's work directory (`WORK/runs/RUN_ID`, traversable) with the release
/// user's HOME and the parent of the suites' scratch directories inside.
fn workspace(runs: &std::path::Path, run_id: &str, users: Users) -> Result<(), FsError> {
    let dir = Dir::open(runs)?.create_dir(std::ffi::OsStr::new(run_id), state::TRAVERSABLE)?;
    let home = dir.create_dir(std::ffi::OsStr::new("home"), 0o700)?;
    if let Some(u) = users.release {
        home.chown(u.uid, u.gid)?;
    }
    dir.create_dir(std::ffi::OsStr::new("suites"), state::TRAVERSABLE)?;
    Ok(())
}

/// A short provider id from a journal handle: an instance or DB id, a group, a PID, a
/// directory.
fn provider_id(h: &serde_json::Value) -> Option<String> {
    for key in ["instance_id", "db_instance_id", "db_cluster_id", "group_id", "name", "dir"] {
        if let Some(v) = h.get(key).and_then(|v| v.as_str()) {
            return Some(v.to_string());
        }
    }
    if let Some(pid) = h.get("process").and_then(|p| p.get("pid")).and_then(|p| p.as_i64()) {
        let port = h.get("port").and_then(|p| p.as_u64()).map(|p| format!(" on 127.0.0.1:{p}")).unwrap_or_default();
        return Some(format!("pid {pid}{port}"));
    }
    if let Some(c) = h.get("cluster") {
        let base = c.get("base").and_then(|b| b.as_str()).unwrap_or_default();
        let port = c.get("port").and_then(|p| p.as_u64()).unwrap_or(0);
        return Some(format!("PostgreSQL on 127.0.0.1:{port} in {base}"));
    }
    None
}

/// The phase a step belongs to.
fn phase_for(kind: &str, action: &str) -> &'static str {
    match (kind, action) {
        (_, "suite") => "suites",
        (_, "mask") => "prepare-data",
        (_, "install") => "install",
        ("local.process", _) | ("aws.ec2.instance", "health") => "health",
        _ => "up",
    }
}

fn phase_of(kind: Option<Kind>, e: &StepError) -> String {
    match (kind, e.blame) {
        (Some(Kind::LocalInstall), _) => "install".into(),
        (Some(Kind::LocalProcess), _) => "health".into(),
        (_, Blame::Release) => "install".into(),
        _ => "up".into(),
    }
}

/// Phase spans from the steps, in lifecycle order.
fn phase_timings(steps: &[StepTiming], _clock: &Clock, failed: Option<&str>, plan: &Plan) -> Vec<PhaseTiming> {
    let order = ["up", "prepare-data", "install", "health", "suites"];
    let failed_phase = failed
        .and_then(|id| steps.iter().rev().find(|s| s.resource == id && !s.ok))
        .map(|s| phase_for(&s.kind, &s.action));
    let _ = plan;
    order
        .iter()
        .map(|phase| {
            let mine: Vec<&StepTiming> = steps.iter().filter(|s| phase_for(&s.kind, &s.action) == *phase).collect();
            if mine.is_empty() {
                return PhaseTiming { phase: phase.to_string(), start_ms: 0, duration_ms: 0, status: "skipped".into() };
            }
            let start = mine.iter().map(|s| s.start_ms).min().unwrap_or(0);
            let end = mine.iter().map(|s| s.start_ms + s.duration_ms).max().unwrap_or(start);
            let status = if failed_phase == Some(*phase) || mine.iter().any(|s| !s.ok && s.kind != "suite") {
                "failed"
            } else {
                "ok"
            };
            PhaseTiming { phase: phase.to_string(), start_ms: start, duration_ms: end - start, status: status.into() }
        })
        .collect()
}
