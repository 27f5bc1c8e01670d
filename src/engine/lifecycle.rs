//! The lifecycle of one run: up → prepare data → install → health → suites → report →
//! down, driven by the plan's dependency graph.
//!
//! Every resource (and suite) starts as soon as everything it depends on is ready, so
//! independent work runs concurrently. The journal gets the intent before each create.
//! The first failure stops new work and cancels work in flight (dropping a step kills
//! its process group); the first SIGINT/SIGTERM does the same. Teardown then runs from
//! the journal — on success, failure, interrupt and panic alike — unless the destroy
//! policy keeps the environment (never for a build failure or an interrupt).
//!
//! This file runs the phases in order and judges the run (suite results, verdict, down);
//! the first phase is `lifecycle/prepare.rs`, the report `lifecycle/report.rs`, the
//! graph [`super::steps`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use chrono::Utc;

use super::assemble::{journaled, phase_of, phase_timings, redact_logs, redacted};
use super::connection::Connection;
use super::events::{Event, Redacting, Reporter};
use super::journal::{Journal, Record, RunMeta};
use super::provider::{Blame, Provider, RunInfo};
use super::steps::{execute, CancelReason, GraphResult};
use super::teardown::{self, Left};
use crate::description::{format_duration, DestroyPolicy, Loaded, ProviderKind};
use crate::plan::{self, Kind};
use crate::report::model::*;
use crate::suites;
use crate::sys::process::{self, Users};
use crate::sys::secure_fs::{Dir, FsError};
use crate::sys::signals::Signals;
use crate::sys::state;
use crate::sys::timing::Clock;

mod prepare;
mod report;
use prepare::{prepare, Prepared};
use report::{report, Judged};

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
    /// [`crate::sys::process::RELEASE_USER`]).
    pub run_as: Option<String>,
    /// The process's exit code for a verdict and the number of resources teardown
    /// left: the command decides it, the engine records it in the journal and the
    /// report.
    pub exit_code: fn(Verdict, usize) -> i32,
    /// The name the run goes by besides its id (`up --name`), unique among the live
    /// runs of this state directory (the command checks).
    pub name: Option<String>,
    /// The shared state store (`s3://`), where every journal record is also made
    /// durable before `append` returns.
    pub shared: Option<std::sync::Arc<dyn crate::engine::store::ObjectStore>>,
    /// The stage generation the run builds (`rehearse rebuild`): kept when it passes.
    pub stage: Option<super::stage::StageRun>,
    /// What each database restores from, fixed by the caller (`compare` pins both twins
    /// to one backup); a database not named here restores from its newest.
    pub pins: super::provider::Pins,
    /// The change rehearsed, when known: recorded in the report.
    pub change: Option<crate::report::model::Change>,
    /// A pool member being made (`rehearse pool fill`), not a rehearsal.
    pub member: Option<super::pool::MemberRun>,
    /// A rehearsed deploy (`run --from OLD`): the release that serves first; `release`
    /// is deployed over it under the description's load ([`super::deploy`]).
    pub from: Option<String>,
    /// In a compared deploy, the baseline twin that gets the same load meanwhile.
    pub twin: Option<super::deploy::Twin>,
    /// This run is the baseline twin of a compared deploy: its copy is made as the
    /// deploy's is (WAL written as production writes it).
    pub deploy_twin: bool,
    /// A game day (`run --chaos [NAME…]`): these faults of the description's `chaos:`
    /// (all of them when empty) under its load, then the suites ([`super::chaos`]).
    pub chaos: Option<Vec<String>>,
}

/// Why a run could not start, or could not assemble its report: nothing of the
/// copy exists yet (or teardown has run already); the command says it and tears down
/// whatever the journal lists.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("ttl {0} is too long")]
    Ttl(String),
    #[error("{0}")]
    Users(process::UsersError),
    #[error(transparent)]
    Directory(#[from] FsError),
    #[error("cannot create {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the journal: {0}")]
    Journal(#[source] std::io::Error),
    /// The suites' files cannot be handed to the suites (`bundle:`): nothing is built.
    #[error(transparent)]
    Bundle(#[from] crate::sys::bundle::BundleError),
    #[error("cannot serialize the report: {0}")]
    Report(#[from] serde_json::Error),
    /// A game day asked of faults the description does not have: nothing is built.
    #[error("{0}")]
    Chaos(String),
}

/// A finished run: its report (redacted), and where its files belong — the command
/// that ran it writes them.
pub struct Outcome {
    pub report: RunReport,
    pub report_dir: PathBuf,
}

/// Runs a whole rehearsal. Errors only for problems before anything exists (the state
/// directory cannot be written, ...); everything after is in the outcome.
///
/// The phases: [`prepare`] (plan, directories, journal, workspace), the graph (up,
/// install, health and suites, [`execute`]), the [`verdict`], [`down`] per the destroy
/// policy, and the [`report`].
pub async fn run<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Result<Outcome, RunError> {
    let clock = Clock::new();
    let started_at = Utc::now();
    let redacting = Redacting(reporter);
    let reporter: &dyn Reporter = &redacting;
    // A game day's faults (the proxies on their paths from the start, below).
    let faults = match &opts.chaos {
        // Its callers refused names the description does not have, before anything
        // was built; a game day is never run without the faults it was asked.
        Some(names) => super::chaos::selected(loaded, names).map_err(RunError::Chaos)?,
        None => Vec::new(),
    };
    let run = prepare(provider, loaded, opts, reporter, started_at).await?;
    let steps: Mutex<Vec<StepTiming>> = Mutex::new(Vec::new());

    let seed =
        opts.run_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let paths = opts.chaos.as_ref().map(|_| super::chaos::Paths::of(&faults, seed));

    // Up, install, health and suites: the graph.
    let mut graph = execute(
        provider,
        loaded,
        &run.plan,
        &run.info,
        &run.journal,
        &clock,
        reporter,
        &steps,
        signals,
        None,
        paths.as_ref(),
    )
    .await;
    // A rehearsed deploy: the new release over the old one under load, then the suites.
    let deploy = match &opts.from {
        // Boxed: its state (the load, the sampler, the new release's steps) stays off
        // the stack of the thread that polls the run (the server's are small).
        Some(from) => {
            Box::pin(deploy_phase(provider, loaded, opts, &run, &clock, reporter, &steps, signals, from, &mut graph))
                .await
        }
        None => None,
    };
    // A game day: the faults under the load, then the suites.
    let chaos = match &paths {
        Some(paths) => {
            Box::pin(chaos_phase(provider, loaded, &run, &clock, reporter, &steps, signals, paths, &faults, &mut graph))
                .await
        }
        None => None,
    };
    let cancelled = CancelReason::of_run(graph.cancelled.as_ref(), signals.count());
    let suite_results = suite_results(loaded, opts, &graph, cancelled.as_ref());
    // A game day that does not expect the suites to pass judges by its expectations.
    let judged_suites = match &chaos {
        Some(c) if !c.suites_judged => &[][..],
        _ => &suite_results[..],
    };
    let (verdict, reason) = verdict(opts, &graph, judged_suites, cancelled.as_ref());
    let (verdict, reason) = match &deploy {
        Some(d) if verdict == Verdict::Passed && !d.passed() => {
            let failed: Vec<&str> = d.limits.iter().filter(|l| !l.passed).map(|l| l.reason.as_str()).collect();
            (Verdict::Failed, Some(format!("the deploy failed its limits: {}", failed.join("; "))))
        }
        Some(d) if verdict == Verdict::Failed && !d.passed() => {
            let failed: Vec<&str> = d.limits.iter().filter(|l| !l.passed).map(|l| l.reason.as_str()).collect();
            (
                verdict,
                Some(format!("the deploy failed its limits: {}; {}", failed.join("; "), reason.unwrap_or_default())),
            )
        }
        _ => (verdict, reason),
    };
    let (verdict, reason) = match &chaos {
        Some(c) if matches!(verdict, Verdict::Passed | Verdict::Failed) && !c.passed() => {
            let broken = format!("the game day failed its expectations: {}", c.broken().join("; "));
            match (verdict, reason) {
                (Verdict::Failed, Some(r)) => (Verdict::Failed, Some(format!("{broken}; {r}"))),
                _ => (Verdict::Failed, Some(broken)),
            }
        }
        _ => (verdict, reason),
    };

    // Down: per the destroy policy; a build failure or an interrupt always tears down.
    let keep = match verdict {
        Verdict::Interrupted | Verdict::BuildFailed => false,
        // A stage's generation that passed its acceptance is what the stage promotes.
        Verdict::Passed => opts.destroy == DestroyPolicy::Never || opts.stage.is_some(),
        Verdict::Failed => opts.destroy != DestroyPolicy::Always,
    };
    let down = down(provider, loaded, opts, &run, reporter, signals, &clock, verdict, keep).await;
    let reason = down.reason(verdict, reason, &opts.run_id);

    let exit_code = (opts.exit_code)(verdict, down.leftovers.len());
    journaled(reporter, run.journal.append(&Record::Finished { verdict, exit_code, kept: keep, at: Utc::now() }).await);

    // A step that panicked while holding the lock left the timings before it intact.
    let steps = steps.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let judged = Judged { verdict, reason, exit_code, keep, suites: suite_results, deploy, chaos };
    let report = report(provider, loaded, opts, &run, &graph, &clock, steps, judged, down, reporter);
    // Secrets stay out of what outlives the run: the logs (their writers have stopped,
    // unless the environment is kept and its services still write theirs) and the
    // report in all its formats.
    if !keep {
        redact_logs(&run.state_dir);
    }
    let report = redacted(report)?;
    Ok(Outcome { report, report_dir: run.report_dir })
}

/// A rehearsed deploy over the environment the graph built with the old release
/// (`from`): a baseline that could not be built is the build's failure (exit 3); the
/// deploy's own failure (the new release's install) is the release's; the held suites
/// run against the new release once the deploy is done.
#[allow(clippy::too_many_arguments)]
async fn deploy_phase<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    run: &Prepared,
    clock: &Clock,
    reporter: &dyn Reporter,
    steps: &Mutex<Vec<StepTiming>>,
    signals: &Signals,
    from: &str,
    graph: &mut GraphResult,
) -> Option<DeployReport> {
    if let Some((_, e)) = &mut graph.failure {
        e.blame = Blame::Build;
        e.message = format!("the baseline release {from} could not be built: {}", e.message);
        return None;
    }
    if graph.cancelled.is_some() || signals.count() > 0 {
        return None;
    }
    let env = super::deploy::Env {
        provider,
        twin: opts.twin.as_ref(),
        loaded,
        info: &run.info,
        plan: &run.plan,
        journal: &run.journal,
        clock,
        reporter,
        steps,
        signals,
    };
    let d = super::deploy::rehearse(&env, &opts.release, &graph.outputs).await;
    graph.outputs = d.outputs.clone();
    if let Some(f) = d.failure {
        graph.failure = Some(f);
    }
    if graph.failure.is_none() && !d.interrupted && !run.held_suites.resources.is_empty() {
        let info = RunInfo { release_version: opts.release.clone(), ..run.info.clone() };
        let outputs = Some(graph.outputs.clone());
        let s = execute(
            provider,
            loaded,
            &run.held_suites,
            &info,
            &run.journal,
            clock,
            reporter,
            steps,
            signals,
            outputs,
            None,
        )
        .await;
        graph.suites.extend(s.suites);
        graph.status.extend(s.status);
        if graph.cancelled.is_none() {
            graph.cancelled = s.cancelled;
        }
    }
    Some(d.report)
}

/// A game day over the environment the graph built: nothing when the graph failed or
/// was interrupted (the build's failure stands); else the faults under the load, then
/// the held suites while the load goes on.
#[allow(clippy::too_many_arguments)]
async fn chaos_phase<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    run: &Prepared,
    clock: &Clock,
    reporter: &dyn Reporter,
    steps: &Mutex<Vec<StepTiming>>,
    signals: &Signals,
    paths: &super::chaos::Paths,
    faults: &[(String, crate::description::ChaosFault)],
    graph: &mut GraphResult,
) -> Option<crate::compare::chaos::ChaosReport> {
    if graph.failure.is_some() || graph.cancelled.is_some() || signals.count() > 0 {
        return None;
    }
    let outputs = graph.outputs.clone();
    let env = super::chaos::Env {
        provider,
        journal: &run.journal,
        info: &run.info,
        clock,
        loaded,
        plan: &run.plan,
        steps,
        outputs: Mutex::new(outputs),
        paths,
        reporter,
        signals,
    };
    let suites = |held| async {
        execute(
            provider,
            loaded,
            &run.held_suites,
            &run.info,
            &run.journal,
            clock,
            reporter,
            steps,
            signals,
            Some(held),
            None,
        )
        .await
    };
    let played = super::chaos::rehearse(&env, faults, suites).await;
    // The services as the game day left them (an instance started again moved).
    graph.outputs = env.outputs();
    if let Some(s) = played.suites {
        graph.suites.extend(s.suites);
        graph.status.extend(s.status);
        if graph.cancelled.is_none() {
            graph.cancelled = s.cancelled;
        }
    }
    Some(played.report)
}

/// Each suite's result, and why a suite that did not run did not.
fn suite_results(
    loaded: &Loaded,
    opts: &Options,
    graph: &GraphResult,
    cancelled: Option<&CancelReason>,
) -> Vec<SuiteResult> {
    let mut suite_results: Vec<SuiteResult> = Vec::new();
    if opts.up_only {
        return suite_results;
    }
    for (name, s) in &loaded.desc.suites {
        match graph.suites.get(name) {
            Some(r) => suite_results.push(r.clone()),
            None => {
                let why = if cancelled.is_some_and(CancelReason::is_interrupt) {
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
    suite_results
}

/// The run's verdict and why. A stage's generation that did not pass leaves the stage
/// as it was: its reason says what still serves.
fn verdict(
    opts: &Options,
    graph: &GraphResult,
    suite_results: &[SuiteResult],
    cancelled: Option<&CancelReason>,
) -> (Verdict, Option<String>) {
    let (verdict, reason) = if cancelled.is_some_and(CancelReason::is_interrupt) {
        (Verdict::Interrupted, Some("interrupted by a signal; the environment was torn down".to_string()))
    } else if let Some((_, e)) = &graph.failure {
        match e.blame {
            Blame::Build => (Verdict::BuildFailed, Some(format!("the environment could not be built: {}", e.message))),
            Blame::Release => {
                (Verdict::Failed, Some(format!("the release failed on the copy of production: {}", e.message)))
            }
        }
    } else if !opts.up_only && suite_results.is_empty() && opts.chaos.is_none() {
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
    let reason = match (&opts.stage, verdict, reason) {
        (Some(s), v, Some(r)) if v != Verdict::Passed => Some(match &s.serving {
            Some(serving) => format!("{r}; stage `{}` still on {serving}", s.stage),
            None => format!("{r}; stage `{}` has no generation serving yet", s.stage),
        }),
        (_, _, r) => r,
    };
    (verdict, reason)
}

/// What the down phase did: kept the environment, or tore it down (and what it left).
struct Down {
    status: TeardownStatus,
    leftovers: Vec<Leftover>,
    duration_ms: u64,
    steps: Vec<StepTiming>,
    /// Teardown could not tell what exists: why.
    unknown: Option<String>,
    /// The down phase's timing, when it tore down.
    phase: Option<PhaseTiming>,
    command: String,
}

impl Down {
    /// The run's reason, with what teardown could not do.
    fn reason(&self, verdict: Verdict, reason: Option<String>, run_id: &str) -> Option<String> {
        let down_command = &self.command;
        match (verdict, self.leftovers.len()) {
            (_, _) if self.unknown.is_some() => Some(format!(
                "{}teardown could not tell what exists ({}): what the run created may still be there — find and \
                 remove it by its tags with `{down_command}`",
                reason.map(|r| format!("{r}; ")).unwrap_or_default(),
                self.unknown.as_deref().unwrap_or_default()
            )),
            (Verdict::Interrupted, n) if n > 0 => Some(format!(
                "interrupted by a signal; teardown was stopped by a second signal and left {n} resource(s) — remove them with `rehearse down {run_id}`"
            )),
            (_, n) if n > 0 => Some(format!(
                "{}teardown left {n} resource(s) behind — remove them with `rehearse down {run_id}`",
                reason.map(|r| format!("{r}; ")).unwrap_or_default()
            )),
            _ => reason,
        }
    }
}

/// Keeps the environment (saying until when), or tears it down from the journal.
#[allow(clippy::too_many_arguments)]
async fn down<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    run: &Prepared,
    reporter: &dyn Reporter,
    signals: &Signals,
    clock: &Clock,
    verdict: Verdict,
    keep: bool,
) -> Down {
    let run_id = &opts.run_id;
    let command = match loaded.desc.aws() {
        Some(aws) => format!("rehearse down {run_id} --region {}", aws.region),
        None => format!("rehearse down {run_id}"),
    };
    if keep {
        reporter.event(match (&opts.stage, verdict) {
            (Some(s), Verdict::Passed) => {
                Event::GenerationKept { stage: s.stage.to_string(), generation: s.generation }
            }
            _ => Event::Kept { run_id: run_id.to_string(), until: run.expires_at },
        });
        return Down {
            status: TeardownStatus::Kept,
            leftovers: Vec::new(),
            duration_ms: 0,
            steps: Vec::new(),
            unknown: None,
            phase: None,
            command,
        };
    }
    let down_start = Instant::now();
    let stop_at = signals.count() + 1;
    let out = teardown::run(provider, &run.journal, reporter, signals, stop_at.max(2), clock).await;
    let status = match (&out.left, out.interrupted) {
        (_, true) => TeardownStatus::Interrupted,
        (Left::Clear, _) if out.complete() => TeardownStatus::Complete,
        (Left::Clear, _) => TeardownStatus::Incomplete,
        (Left::Unknown(_) | Left::NotHere(_), _) => TeardownStatus::Unknown,
        (Left::Remaining(_) | Left::Orphaned(_), _) => TeardownStatus::Incomplete,
    };
    let unknown = out.unknown().or(out.not_here()).map(str::to_string);
    journaled(reporter, run.journal.append(&Record::TornDown { complete: out.complete(), at: Utc::now() }).await);
    let steps = out
        .destroyed
        .iter()
        .map(|d| StepTiming {
            resource: d.id.clone(),
            kind: d.kind.to_string(),
            action: "destroy".into(),
            start_ms: clock.ms(d.started),
            duration_ms: d.took.as_millis() as u64,
            ok: d.error.is_none(),
            detail: d.error.as_ref().map(ToString::to_string),
        })
        .collect();
    let leftovers = out.listed(&command);
    let down_end = Instant::now();
    let phase = PhaseTiming {
        phase: "down".into(),
        start_ms: clock.ms(down_start),
        duration_ms: (down_end - down_start).as_millis() as u64,
        status: if leftovers.is_empty() { PhaseStatus::Ok } else { PhaseStatus::Failed },
    };
    Down {
        status,
        leftovers,
        duration_ms: out.duration.as_millis() as u64,
        steps,
        unknown,
        phase: Some(phase),
        command,
    }
}
