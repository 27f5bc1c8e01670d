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
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use super::assemble::{journaled, phase_of, phase_timings, provider_id, redact_logs, redacted};
use super::connection::Connection;
use super::events::{Event, Redacting, Reporter};
use super::journal::{Journal, Record, RunMeta};
use super::provider::{Blame, Provider, RunInfo};
use super::steps::{execute, GraphResult};
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
    Users(String),
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
    let run = prepare(provider, loaded, opts, reporter, started_at).await?;
    let steps: Mutex<Vec<StepTiming>> = Mutex::new(Vec::new());

    // Up, install, health and suites: the graph.
    let graph = execute(provider, loaded, &run.plan, &run.info, &run.journal, &clock, reporter, &steps, signals).await;
    let interrupted = graph.interrupted || signals.count() > 0;
    let suite_results = suite_results(loaded, opts, &graph, interrupted);
    let (verdict, reason) = verdict(opts, &graph, &suite_results, interrupted);

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
    journaled(
        reporter,
        run.journal
            .append(&Record::Finished { verdict: verdict.as_str().into(), exit_code, kept: keep, at: Utc::now() })
            .await,
    );

    // A step that panicked while holding the lock left the timings before it intact.
    let steps = steps.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let judged = Judged { verdict, reason, exit_code, keep, suites: suite_results };
    let report = report(loaded, opts, &run, &graph, &clock, steps, judged, down, reporter);
    // Secrets stay out of what outlives the run: the logs (their writers have stopped,
    // unless the environment is kept and its services still write theirs) and the
    // report in all its formats.
    if !keep {
        redact_logs(&run.state_dir);
    }
    let report = redacted(report)?;
    Ok(Outcome { report, report_dir: run.report_dir })
}

/// A run whose journal and workspace exist: what the later phases need of it.
struct Prepared {
    plan: plan::Plan,
    started_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    state_dir: PathBuf,
    logs_dir: PathBuf,
    report_dir: PathBuf,
    journal: Journal,
    info: RunInfo,
}

/// Everything before the first resource: the plan, the users, the suites' files, the
/// state and work directories, the journal (mirrored to a shared store), the workspace
/// and the suites' copy of their files.
async fn prepare<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    started_at: chrono::DateTime<Utc>,
) -> Result<Prepared, RunError> {
    let d = &loaded.desc;
    let run_id = opts.run_id.clone();
    let mut plan = plan::build(loaded, Some(&opts.release), Some(&run_id))?;
    if opts.up_only {
        plan.resources.retain(|r| !r.kind.is_suite());
    }
    let ttl = chrono::Duration::from_std(d.ttl).map_err(|_| RunError::Ttl(format_duration(d.ttl)))?;
    // Whole seconds, as the AWS tags carry it: journal and tags say the same instant.
    let expires_at = chrono::SubsecRound::trunc_subsecs(started_at + ttl, 0);
    // Who the copy and the release run as (rehearse as root): decided before anything
    // exists, and refused when the users are missing.
    let users = Users::resolve(opts.run_as.as_deref(), d.provider() == ProviderKind::Local).map_err(RunError::Users)?;
    // The suites' files, listed and checked before anything exists; copied for the
    // suites' user once the run's work directory is there (on a runner elsewhere, the
    // provider packs its own).
    let suites_here = !opts.up_only && !d.suites.is_empty() && !provider.runs_suites_elsewhere(loaded);
    let bundle = match suites_here {
        true => Some(crate::sys::bundle::list(
            &loaded.dir,
            d.bundle.as_deref().unwrap_or(&[PathBuf::new()]),
            &[opts.state_root.clone(), opts.work_root.clone()],
        )?),
        false => None,
    };

    // Directories and the journal exist before the first create: the state directory
    // private to this user, the work directory traversable (never listable) by the
    // users the copy and the release run as; each checked, so that no other user can
    // have placed or redirected them.
    let work_root = state::traversable_dir(&opts.work_root)?;
    let work_runs = state::traversable_dir(&work_root.join("runs"))?;
    let state_root = state::private_dir(&opts.state_root)?;
    let runs_root = state::private_dir(&state::runs_dir(&state_root))?;
    let run_state = runs_root.join(&run_id);
    let create =
        |path: &PathBuf| std::fs::create_dir(path).map_err(|source| RunError::Create { path: path.clone(), source });
    create(&run_state)?;
    let logs_dir = run_state.join("logs");
    let report_dir = run_state.join("report");
    create(&logs_dir)?;
    let work_dir = work_runs.join(&run_id);
    let meta = run_meta(loaded, opts, started_at, expires_at, &work_dir);
    let journal = open_journal(opts, &run_state, &meta).await?;
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
    journal.intent("workspace", Kind::Workspace, None).await.map_err(RunError::Journal)?;
    let home = work_dir.join("home");
    workspace(&work_runs, &run_id, users)?;
    journal.created("workspace", Kind::Workspace, json!({"dir": work_dir})).await.map_err(RunError::Journal)?;
    let suites_dir = match &bundle {
        Some(listing) => copy_bundle(loaded, listing, &work_dir, users, reporter)?,
        None => loaded.dir.clone(),
    };

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
        password: opts.stage.as_ref().map(|s| s.password.clone()),
        stage: meta.stage.clone(),
        pins: opts.pins.clone(),
        suites_dir,
    };
    Ok(Prepared { plan, started_at, expires_at, state_dir: run_state, logs_dir, report_dir, journal, info })
}

/// What the journal's first record says of the run.
fn run_meta(
    loaded: &Loaded,
    opts: &Options,
    started_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    work_dir: &std::path::Path,
) -> RunMeta {
    let d = &loaded.desc;
    RunMeta {
        run_id: opts.run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider().as_str().into(),
        // Absolute: `down` on this machine may read it again, from anywhere, for what
        // a journal must not decide (the runner's outputs bucket).
        description: std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone()).display().to_string(),
        release: opts.release.clone(),
        owner: d.owner.clone(),
        started_at,
        expires_at,
        destroy: opts.destroy.as_str().into(),
        work_dir: Some(work_dir.display().to_string()),
        region: d.region().map(str::to_string),
        pid: std::process::id(),
        pid_start: process::start_time(std::process::id() as i32).unwrap_or(0),
        name: opts.name.clone(),
        user: Some(process::user_name(nix::unistd::geteuid().as_raw())),
        max_ttl_secs: Some(d.max_ttl.as_secs()),
        host: Some(process::host_name()),
        stage: opts.stage.as_ref().map(|s| super::stage::StageRef { stage: s.stage.clone(), generation: s.generation }),
    }
}

/// Creates the run's journal; with a shared state store, the journal is there too
/// before anything is created.
async fn open_journal(opts: &Options, run_state: &std::path::Path, meta: &RunMeta) -> Result<Journal, RunError> {
    let journal = Journal::create(&run_state.join("journal.jsonl"), meta).map_err(RunError::Journal)?;
    match &opts.shared {
        Some(store) => journal
            .mirror_to(crate::engine::store::records::RemoteJournal::new(store.clone(), &opts.run_id))
            .await
            .map_err(RunError::Journal),
        None => Ok(journal),
    }
}

/// The suites run from the description's directory inside a copy of their own, owned
/// by their user: they never need the operator's tree. Returns where the description's
/// directory is in the copy.
fn copy_bundle(
    loaded: &Loaded,
    listing: &crate::sys::bundle::Listing,
    work_dir: &std::path::Path,
    users: Users,
    reporter: &dyn Reporter,
) -> Result<PathBuf, RunError> {
    let t = Instant::now();
    let owner = users.release.map(|u| (u.uid, u.gid));
    let copy = crate::sys::bundle::copy(listing, work_dir, "bundle", owner)?;
    let (files, bytes) = (listing.items.len(), listing.bytes);
    let listed = match &loaded.desc.bundle {
        Some(paths) => paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        None => ".".into(),
    };
    reporter.event(Event::Note(format!(
        "suites' files (bundle: [{listed}]): {files} entries, {} KiB, copied for the suites in {} ms",
        bytes.div_ceil(1024),
        t.elapsed().as_millis()
    )));
    Ok(crate::sys::bundle::inside(listing, &loaded.dir, &copy)?)
}

/// Each suite's result, and why a suite that did not run did not.
fn suite_results(loaded: &Loaded, opts: &Options, graph: &GraphResult, interrupted: bool) -> Vec<SuiteResult> {
    let mut suite_results: Vec<SuiteResult> = Vec::new();
    if opts.up_only {
        return suite_results;
    }
    for (name, s) in &loaded.desc.suites {
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
    suite_results
}

/// The run's verdict and why. A stage's generation that did not pass leaves the stage
/// as it was: its reason says what still serves.
fn verdict(
    opts: &Options,
    graph: &GraphResult,
    suite_results: &[SuiteResult],
    interrupted: bool,
) -> (Verdict, Option<String>) {
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
    status: String,
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
        reporter.event(Event::Note(match (&opts.stage, verdict) {
            (Some(s), Verdict::Passed) => format!(
                "keeping generation {} of stage `{}`: it passed its acceptance and is promoted next",
                s.generation, s.stage
            ),
            _ => format!(
                "keeping the environment until {} (its TTL); remove it with `rehearse down {run_id}`",
                run.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }));
        return Down {
            status: "kept".to_string(),
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
        (_, true) => "interrupted",
        (Left::Clear, _) if out.complete() => "complete",
        (Left::Clear, _) => "incomplete",
        (Left::Unknown(_) | Left::NotHere(_), _) => "unknown",
        (Left::Remaining(_) | Left::Orphaned(_), _) => "incomplete",
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
        status: if leftovers.is_empty() { "ok".into() } else { "failed".into() },
    };
    Down {
        status: status.to_string(),
        leftovers,
        duration_ms: out.duration.as_millis() as u64,
        steps,
        unknown,
        phase: Some(phase),
        command,
    }
}

/// The run's judgement, decided before the report.
struct Judged {
    verdict: Verdict,
    reason: Option<String>,
    exit_code: i32,
    keep: bool,
    suites: Vec<SuiteResult>,
}

/// The run's report (not yet redacted); a kept environment's connection file is written
/// next to it.
#[allow(clippy::too_many_arguments)]
fn report(
    loaded: &Loaded,
    opts: &Options,
    run: &Prepared,
    graph: &GraphResult,
    clock: &Clock,
    mut steps: Vec<StepTiming>,
    judged: Judged,
    down: Down,
    reporter: &dyn Reporter,
) -> RunReport {
    let d = &loaded.desc;
    let Judged { verdict, reason, exit_code, keep, suites } = judged;
    let run_id = &opts.run_id;
    let mut phases = phase_timings(&steps, graph.failure.as_ref().map(|f| f.0.as_str()));
    phases.extend(down.phase);
    steps.extend(down.steps);
    let resources = resource_records(&run.plan, &run.journal, graph, &down.leftovers, keep);
    let failure = graph.failure.as_ref().map(|(id, e)| Failure {
        phase: phase_of(run.plan.resource(id).map(|r| r.kind), e),
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
        artifact: run.plan.release.artifact.clone(),
        started_at: run.started_at,
        finished_at: Utc::now(),
        verdict,
        exit_code,
        reason,
        failure,
        backups: graph.backups.clone(),
        phases,
        steps,
        suites,
        resources,
        teardown: Teardown {
            policy: opts.destroy.as_str().into(),
            status: down.status,
            duration_ms: down.duration_ms,
            leftovers: down.leftovers,
            expires_at: keep.then_some(run.expires_at),
        },
        total_ms: total.as_millis() as u64,
        overhead_ms: total.saturating_sub(clock.external_total()).as_millis() as u64,
        access: None,
    };
    // A kept environment says how to reach it: addresses in the report, secrets only
    // in the owner's private connection file.
    if keep {
        let connection = Connection {
            run_id: run_id.clone(),
            databases: graph.outputs.databases.clone(),
            services: graph.outputs.services.clone(),
        };
        match connection.write(&run.state_dir) {
            Ok(()) => report.access = Some(access(&connection, run_id, run.expires_at, &run.logs_dir)),
            Err(e) => reporter.event(Event::Note(format!("warning: cannot keep the connection details: {e}"))),
        }
    }
    report.phases.push(PhaseTiming {
        phase: "report".into(),
        start_ms: clock.ms(report_phase_start),
        duration_ms: 0,
        status: "ok".into(),
    });
    report
}

/// What became of each resource of the plan, named by its provider. A journal that
/// cannot be read here was reported by teardown already (the run is "unknown"); the
/// report then names resources by the outputs the steps returned.
fn resource_records(
    plan: &plan::Plan,
    journal: &Journal,
    graph: &GraphResult,
    leftovers: &[Leftover],
    keep: bool,
) -> Vec<ResourceRecord> {
    let handles: BTreeMap<String, String> = super::journal::read(journal.path())
        .map(|records| super::journal::State::from_records(&records).entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.id, provider_id(e.handle.as_ref()?)?)))
        .collect();
    plan.resources
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
        .collect()
}

/// How to reach a kept environment, without its secrets.
fn access(c: &Connection, run_id: &str, expires_at: chrono::DateTime<Utc>, logs_dir: &std::path::Path) -> Access {
    let databases: BTreeMap<String, DatabaseAccess> = c
        .databases
        .iter()
        .map(|(name, d)| {
            let d = DatabaseAccess {
                host: d.host.clone(),
                port: d.port.clone(),
                name: d.name.clone(),
                user: d.user.clone(),
            };
            (name.clone(), d)
        })
        .collect();
    let mut commands = vec![format!("rehearse env {run_id}")];
    if let Some(db) = databases.keys().next() {
        commands.push(format!("rehearse psql {run_id} {db}"));
    }
    if let Some(service) = c.services.keys().next() {
        commands.push(format!("rehearse logs {run_id} {service}"));
    }
    commands.push(format!("rehearse down {run_id}"));
    Access {
        expires_at,
        logs_dir: logs_dir.display().to_string(),
        services: c.services.iter().map(|(name, s)| (name.clone(), s.urls.clone())).collect(),
        databases,
        commands,
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
