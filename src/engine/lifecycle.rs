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

use super::events::{Event, Reporter};
use super::journal::{Journal, Record, RunMeta};
use super::signals::Signals;
use super::state;
use super::teardown;
use super::timing::Clock;
use crate::description::template::{self, Outputs, Scope, ServiceOutputs};
use crate::description::{DestroyPolicy, Loaded, ProviderKind};
use crate::exit;
use crate::plan::{self, Kind, Plan};
use crate::providers::{Blame, Ctx, Output, Provider, RunInfo, StepError};
use crate::report::model::*;
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

    // Directories and the journal exist before the first create.
    let run_state = state::run_dir(&opts.state_root, &run_id);
    let logs_dir = run_state.join("logs");
    let report_dir = run_state.join("report");
    std::fs::create_dir_all(&logs_dir).map_err(|e| format!("cannot create {}: {e}", logs_dir.display()))?;
    let work_dir = opts.work_root.join("runs").join(&run_id);
    let meta = RunMeta {
        run_id: run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider.as_str().into(),
        description: loaded.path.display().to_string(),
        release: opts.release.clone(),
        owner: d.owner.clone(),
        started_at,
        expires_at,
        destroy: opts.destroy.as_str().into(),
        work_dir: (d.provider == ProviderKind::Local).then(|| work_dir.display().to_string()),
        region: d.region.clone(),
        pid: std::process::id(),
    };
    let journal = Journal::create(&run_state.join("journal.jsonl"), &meta)
        .map_err(|e| format!("cannot create the journal: {e}"))?;
    reporter.event(Event::Note(format!(
        "run {run_id}: rehearsing `{}` release {} on {}",
        d.name,
        opts.release,
        d.provider.as_str()
    )));

    if d.provider == ProviderKind::Local {
        journal.intent("workspace", "local.workspace", None).map_err(|e| e.to_string())?;
        state::ensure_traversable_dir(&opts.work_root.join("runs"))
            .map_err(|e| format!("cannot create {}: {e}", opts.work_root.display()))?;
        state::ensure_traversable_dir(&work_dir).map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
        journal.created("workspace", "local.workspace", json!({"dir": work_dir})).map_err(|e| e.to_string())?;
    }

    let info = RunInfo {
        run_id: run_id.clone(),
        state_dir: run_state.clone(),
        logs_dir: logs_dir.clone(),
        work_dir: work_dir.clone(),
        golden_root: opts.work_root.join("golden"),
        release_version: opts.release.clone(),
        expires_at,
        pg_user: crate::engine::process::RunAs::for_postgres(),
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
        } else {
            "incomplete"
        };
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
        (status.to_string(), out.leftovers, out.duration.as_millis() as u64)
    };
    let down_end = Instant::now();
    let reason = match (verdict, leftovers.len()) {
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
        provider: d.provider.as_str().into(),
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
                        let res = suites::run(
                            suites::SuiteRun {
                                name,
                                suite: s,
                                command,
                                cwd: loaded.dir.clone(),
                                env,
                                out_dir: info.state_dir.join("suites").join(name),
                            },
                            clock,
                        )
                        .await;
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
        let next = tokio::select! {
            next = running.next() => next,
            _ = signals.nth(1), if !result.interrupted => {
                result.interrupted = true;
                None
            }
            _ = grace => None,
        };
        let Some((i, done)) = next else {
            // Interrupted or out of grace: dropping the futures in flight cancels them.
            break;
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
