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

use super::assemble::{journaled, phase_of, phase_timings, redact_logs, redacted};
use super::connection::Connection;
use super::events::{Event, Redacting, Reporter};
use super::journal::{Journal, Record, RunMeta};
use super::provider::{Blame, Handle, Provider, RunInfo, WorkspaceHandle};
use super::steps::execute;
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
pub async fn run<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Result<Outcome, RunError> {
    let clock = Clock::new();
    let started_at = Utc::now();
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
    let redacting = Redacting(reporter);
    let reporter: &dyn Reporter = &redacting;
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
    let meta = RunMeta {
        run_id: run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider(),
        // Absolute: `down` on this machine may read it again, from anywhere, for what
        // a journal must not decide (the runner's outputs bucket).
        description: std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone()).display().to_string(),
        release: opts.release.clone(),
        owner: d.owner.clone(),
        started_at,
        expires_at,
        destroy: opts.destroy,
        work_dir: Some(work_dir.display().to_string()),
        region: d.region().map(str::to_string),
        pid: std::process::id(),
        pid_start: process::start_time(std::process::id() as i32).unwrap_or(0),
        name: opts.name.clone(),
        user: Some(process::user_name(nix::unistd::geteuid().as_raw())),
        max_ttl_secs: Some(d.max_ttl.as_secs()),
        host: Some(process::host_name()),
        stage: opts.stage.as_ref().map(|s| super::stage::StageRef { stage: s.stage.clone(), generation: s.generation }),
    };
    let journal = Journal::create(&run_state.join("journal.jsonl"), &meta).map_err(RunError::Journal)?;
    // With a shared state store, the journal is there too before anything is created.
    let journal = match &opts.shared {
        Some(store) => journal
            .mirror_to(crate::engine::store::records::RemoteJournal::new(store.clone(), &run_id))
            .await
            .map_err(RunError::Journal)?,
        None => journal,
    };
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
    let workspace = Handle::of(&WorkspaceHandle { dir: work_dir.clone() }).map_err(|e| RunError::Journal(e.into()))?;
    journal.created("workspace", Kind::Workspace, workspace).await.map_err(RunError::Journal)?;
    // The suites run from the description's directory inside a copy of their own,
    // owned by their user: they never need the operator's tree.
    let suites_dir = match &bundle {
        Some(listing) => {
            let t = Instant::now();
            let owner = users.release.map(|u| (u.uid, u.gid));
            let copy = crate::sys::bundle::copy(listing, &work_dir, "bundle", owner)?;
            let (files, bytes) = (listing.items.len(), listing.bytes);
            let listed = match &d.bundle {
                Some(paths) => paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                None => ".".into(),
            };
            reporter.event(Event::Note(format!(
                "suites' files (bundle: [{listed}]): {files} entries, {} KiB, copied for the suites in {} ms",
                bytes.div_ceil(1024),
                t.elapsed().as_millis()
            )));
            crate::sys::bundle::inside(listing, &loaded.dir, &copy)?
        }
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

    // A stage's generation that did not pass leaves the stage as it was: its report says
    // what still serves.
    let reason = match (&opts.stage, verdict, reason) {
        (Some(s), v, Some(r)) if v != Verdict::Passed => Some(match &s.serving {
            Some(serving) => format!("{r}; stage `{}` still on {serving}", s.stage),
            None => format!("{r}; stage `{}` has no generation serving yet", s.stage),
        }),
        (_, _, r) => r,
    };

    // Down: per the destroy policy; a build failure or an interrupt always tears down.
    let keep = match verdict {
        Verdict::Interrupted | Verdict::BuildFailed => false,
        // A stage's generation that passed its acceptance is what the stage promotes.
        Verdict::Passed => opts.destroy == DestroyPolicy::Never || opts.stage.is_some(),
        Verdict::Failed => opts.destroy != DestroyPolicy::Always,
    };
    let down_start = Instant::now();
    let mut destroy_steps: Vec<StepTiming> = Vec::new();
    let down_command = match d.aws() {
        Some(aws) => format!("rehearse down {run_id} --region {}", aws.region),
        None => format!("rehearse down {run_id}"),
    };
    let mut unknown: Option<String> = None;
    let (teardown_status, leftovers, teardown_ms) = if keep {
        reporter.event(Event::Note(match (&opts.stage, verdict) {
            (Some(s), Verdict::Passed) => format!(
                "keeping generation {} of stage `{}`: it passed its acceptance and is promoted next",
                s.generation, s.stage
            ),
            _ => format!(
                "keeping the environment until {} (its TTL); remove it with `rehearse down {run_id}`",
                expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }));
        (TeardownStatus::Kept, Vec::new(), 0)
    } else {
        let stop_at = signals.count() + 1;
        let out = teardown::run(provider, &journal, reporter, signals, stop_at.max(2), &clock).await;
        let status = match (&out.left, out.interrupted) {
            (_, true) => TeardownStatus::Interrupted,
            (Left::Clear, _) if out.complete() => TeardownStatus::Complete,
            (Left::Clear, _) => TeardownStatus::Incomplete,
            (Left::Unknown(_) | Left::NotHere(_), _) => TeardownStatus::Unknown,
            (Left::Remaining(_) | Left::Orphaned(_), _) => TeardownStatus::Incomplete,
        };
        unknown = out.unknown().or(out.not_here()).map(str::to_string);
        journaled(reporter, journal.append(&Record::TornDown { complete: out.complete(), at: Utc::now() }).await);
        destroy_steps = out
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
        (status, out.listed(&down_command), out.duration.as_millis() as u64)
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

    let exit_code = (opts.exit_code)(verdict, leftovers.len());
    journaled(reporter, journal.append(&Record::Finished { verdict, exit_code, kept: keep, at: Utc::now() }).await);

    // A step that panicked while holding the lock left the timings before it intact.
    let mut steps = steps.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut phases = phase_timings(&steps, graph.failure.as_ref().map(|f| f.0.as_str()));
    if !keep {
        phases.push(PhaseTiming {
            phase: "down".into(),
            start_ms: clock.ms(down_start),
            duration_ms: (down_end - down_start).as_millis() as u64,
            status: if leftovers.is_empty() { PhaseStatus::Ok } else { PhaseStatus::Failed },
        });
    }
    steps.extend(destroy_steps);
    // What each resource is called by its provider, from the journal's handles. A
    // journal that cannot be read here was reported by teardown already (the run is
    // "unknown"); the report then names resources by the outputs the steps returned.
    let handles: BTreeMap<String, String> = super::journal::read(journal.path())
        .map(|records| super::journal::State::from_records(&records).entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.id.clone(), provider.provider_id(&e)?)))
        .collect();
    let resources = plan
        .resources
        .iter()
        .filter(|r| !r.kind.is_suite())
        .map(|r| {
            let created = handles.get(&r.id).cloned().or_else(|| graph.created.get(&r.id).cloned());
            let status = if created.is_none() && graph.status_of(&r.id) == Some("pending") {
                ResourceStatus::NeverCreated
            } else if leftovers.iter().any(|l| l.id == r.id) {
                ResourceStatus::LeftBehind
            } else if keep {
                ResourceStatus::Kept
            } else {
                ResourceStatus::Destroyed
            };
            ResourceRecord { id: r.id.clone(), kind: r.kind.as_str().into(), provider_id: created, status }
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
        provider: d.provider(),
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
            policy: opts.destroy,
            status: teardown_status,
            duration_ms: teardown_ms,
            leftovers,
            expires_at: keep.then_some(expires_at),
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
        match connection.write(&run_state) {
            Ok(()) => report.access = Some(access(&connection, &run_id, expires_at, &logs_dir)),
            Err(e) => reporter.event(Event::Note(format!("warning: cannot keep the connection details: {e}"))),
        }
    }
    report.phases.push(PhaseTiming {
        phase: "report".into(),
        start_ms: clock.ms(report_phase_start),
        duration_ms: 0,
        status: PhaseStatus::Ok,
    });
    // Secrets stay out of what outlives the run: the logs (their writers have stopped,
    // unless the environment is kept and its services still write theirs) and the
    // report in all its formats.
    if !keep {
        redact_logs(&run_state);
    }
    let report = redacted(report)?;
    Ok(Outcome { report, report_dir })
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
