//! `rehearse run` and `rehearse up`: a rehearsal through the engine, its report
//! written and its exit code decided here.

use super::load_or_report;
use crate::cli::{Destroy, Format, Global, RunArgs};
use crate::description::{DestroyPolicy, Target};
use crate::engine::events::Reporter;
use crate::engine::lifecycle::{self, Options};
use crate::engine::run::{self as engine_run, AfterFailure, Ended as Ended_, RunFailure, RunOutcome};
use crate::engine::teardown;
use crate::exit;
use crate::providers::local::LocalProvider;
use crate::report::model::Verdict;
use crate::sys::signals::Signals;
use crate::sys::state;

/// The exit code of a run: its verdict, unless teardown left something behind.
pub fn exit_code(verdict: Verdict, leftovers: usize) -> i32 {
    if leftovers > 0 {
        return exit::LEFTOVERS;
    }
    match verdict {
        Verdict::Passed => exit::PASSED,
        Verdict::Failed => exit::SUITES_FAILED,
        Verdict::BuildFailed => exit::BUILD_FAILED,
        Verdict::Interrupted => exit::INTERRUPTED,
    }
}

pub(crate) fn run(g: &Global, args: &RunArgs, up_only: bool) -> i32 {
    let loaded = match load_or_report(&args.file, args.release.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(release) = loaded.release_version(args.release.as_deref()) else {
        errln!(
            "error: no release version: pass `--release VERSION` or set `release.version` in {}",
            args.file.display()
        );
        return exit::USAGE;
    };
    let destroy = if args.keep {
        DestroyPolicy::Never
    } else {
        match args.destroy {
            Some(Destroy::Always) => DestroyPolicy::Always,
            Some(Destroy::Passing) => DestroyPolicy::Passing,
            Some(Destroy::Never) => DestroyPolicy::Never,
            None if up_only => DestroyPolicy::Never,
            None => loaded.desc.destroy,
        }
    };
    if let Some(name) = &args.name {
        if let Err(why) = crate::description::decode::KeyRule::Identifier.check(name) {
            errln!("error: --name `{name}`: {why}");
            return exit::USAGE;
        }
    }
    let g = &described(g, &loaded);
    let run_id = state::new_run_id();
    super::with_signals(g, async |reporter, signals| {
        let super::store::Opened { shared, locks, local_root } = match super::store::open_for_runs(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let lease = match super::store::lease() {
            Ok(l) => l,
            Err(code) => return code,
        };
        // A name is claimed under its lock: of two runs asking for the same name at
        // once, one waits for nothing and the other is told who has it.
        let name_lock = match &args.name {
            Some(name) => {
                let verb = if up_only { "up" } else { "run" };
                let held = match super::lock::take(
                    locks.clone(),
                    name,
                    &format!("rehearse {verb} --name {name}"),
                    Some(&run_id),
                    lease,
                )
                .await
                {
                    Ok(l) => l,
                    Err(code) => return code,
                };
                let free = match super::store::fetch_all(g).await {
                    Ok(()) => super::inventory::check_name_free(g, name),
                    Err(code) => Err(code),
                };
                if let Err(code) = free {
                    super::lock::give_back(held, name).await;
                    return code;
                }
                Some((held, name.clone()))
            }
            None => None,
        };
        let opts = Options {
            run_id: run_id.clone(),
            release,
            destroy,
            cold: args.cold,
            up_only,
            state_root: local_root,
            work_root: state::work_dir(),
            run_as: args.run_as.clone(),
            exit_code,
            name: args.name.clone(),
            shared,
            stage: None,
            pins: Default::default(),
        };
        let code = rehearse(g, &loaded, &opts, locks, reporter, signals).await.code;
        if let Some((l, name)) = name_lock {
            super::lock::give_back(l, &name).await;
        }
        code
    })
}

/// The global options with the description's `state:` where the command line names no
/// store: every step (names, locks, the journal) then uses that store.
pub(super) fn described(g: &Global, loaded: &crate::description::Loaded) -> Global {
    match (&g.state, &loaded.desc.state) {
        (None, Some(s)) => Global { state: Some(s.clone()), ..g.clone() },
        _ => g.clone(),
    }
}

/// How a rehearsal ended: its exit code (its outcome is said already; [`outcome`]
/// returns the engine's outcome itself).
pub(super) struct Ended {
    pub code: i32,
}

/// A run with its options decided: its provider chosen, driven by the engine to its
/// outcome, rendered, and its exit code (see [`outcome`]).
pub(super) async fn rehearse(
    g: &Global,
    loaded: &crate::description::Loaded,
    opts: &Options,
    locks: std::sync::Arc<dyn crate::engine::store::ObjectStore>,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Ended {
    // The run's lease is taken in a shared store only.
    let lease = match &opts.shared {
        Some(_) => match super::store::lease() {
            Ok(l) => l,
            Err(code) => return Ended { code },
        },
        None => NO_LEASE,
    };
    let (_, code) = outcome(g, loaded, opts, locks, lease, reporter, signals).await;
    Ended { code }
}

/// The lease of a run without a shared store (none is taken).
pub(super) const NO_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`rehearse`] with its lease decided, returning the engine's outcome and the exit code.
pub(super) async fn outcome(
    g: &Global,
    loaded: &crate::description::Loaded,
    opts: &Options,
    locks: std::sync::Arc<dyn crate::engine::store::ObjectStore>,
    lease: std::time::Duration,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> (RunOutcome, i32) {
    let outcome = match &loaded.desc.target {
        Target::Local => {
            let provider = LocalProvider::new(&opts.work_root);
            engine_run::run(&provider, loaded, opts, locks, lease, reporter, signals, &said_first).await
        }
        Target::Aws(aws) => {
            let provider = super::aws_provider(&aws.region).await;
            engine_run::run(&provider, loaded, opts, locks, lease, reporter, signals, &said_first).await
        }
    };
    let code = render(g, &outcome);
    (outcome, code)
}

/// Says how a run ended (its summary or JSON, its errors, what it left) and returns its
/// exit code.
fn render(g: &Global, outcome: &RunOutcome) -> i32 {
    if let Some(stale) = &outcome.took_over {
        errln!(
            "rehearse: took over the lock `{}`: its lease ran out at {} ({})",
            stale.name,
            stale.lease_until.format("%Y-%m-%d %H:%M:%SZ"),
            stale.refusal()
        );
    }
    let mut code = outcome_exit_code(outcome);
    match &outcome.ended {
        Ended_::Reported { report_dir, unwritten: Some(e), .. } => {
            errln!("error: cannot write the report to {}: {e}", report_dir.display())
        }
        Ended_::Reported { report, report_dir, unwritten: None } => {
            if g.format == Format::Json {
                if let Err(c) = super::print_json(report) {
                    code = if code == exit::PASSED { c } else { code };
                }
            } else {
                render_report(g, report, report_dir);
            }
        }
        Ended_::Failed { error, teardown } => render_failure(&outcome.run_id, error, teardown),
    }
    for e in &outcome.unpublished {
        errln!("rehearse: warning: {e}");
    }
    code
}

/// The report's summary, for a terminal.
fn render_report(g: &Global, report: &crate::report::model::RunReport, report_dir: &std::path::Path) {
    let files = crate::report::ReportFiles::in_dir(report_dir);
    let summary = crate::report::terminal_summary(report, &files, crate::style::Styles::stderr(g.color));
    eprint!("{summary}"); // raw: colored; the summary makes its parts printable
}

/// A run that ended before its report: why, and what teardown from the journal did.
fn render_failure(run_id: &str, error: &RunFailure, teardown: &AfterFailure) {
    match error {
        RunFailure::LeaseHeld { .. } | RunFailure::Lease { .. } => {
            errln!("error: {error}");
            return;
        }
        // Said before the teardown began (see [`said_first`]).
        RunFailure::Lifecycle(_) | RunFailure::Crashed => {}
    }
    let unrecorded = match teardown {
        AfterFailure::Complete { unrecorded } | AfterFailure::Left { unrecorded, .. } => unrecorded.as_ref(),
        _ => None,
    };
    if let Some(e) = unrecorded {
        errln!("rehearse: warning: cannot record the teardown in the journal of {run_id}: {e}");
    }
    match teardown {
        AfterFailure::Left { leftovers, .. } => err!("{}", teardown::leftover_text(run_id, leftovers)),
        AfterFailure::Unreopened { error, command } => {
            errln!(
                "error: {error}; nothing was torn down: what run {run_id} created may be left; `{command}` removes it"
            )
        }
        AfterFailure::NothingStarted | AfterFailure::Complete { .. } => {}
    }
}

/// A run that failed after it started: the error said at once, before the teardown's
/// progress.
fn said_first(error: &RunFailure) {
    errln!("error: {}", crate::secrets::redact(&error.to_string()));
}

/// The exit code of a run's outcome: its report's (a build failure when its files
/// could not be written); for a run that ended before its report, leftovers — or a
/// journal that could not be reopened — first.
pub fn outcome_exit_code(outcome: &RunOutcome) -> i32 {
    let (error, teardown) = match &outcome.ended {
        Ended_::Reported { report, unwritten: Some(_), .. } if report.exit_code == exit::PASSED => {
            return exit::BUILD_FAILED
        }
        Ended_::Reported { report, .. } => return report.exit_code,
        Ended_::Failed { error, teardown } => (error, teardown),
    };
    match error {
        RunFailure::LeaseHeld { .. } => return exit::LOCKED,
        RunFailure::Lease { .. } => return exit::BUILD_FAILED,
        RunFailure::Lifecycle(_) | RunFailure::Crashed => {}
    }
    if teardown.left() {
        return exit::LEFTOVERS;
    }
    // Suites' files that cannot be handed over are the description's to fix: nothing
    // of the copy was built.
    match error {
        RunFailure::Lifecycle(lifecycle::RunError::Bundle(_)) => exit::USAGE,
        _ => exit::BUILD_FAILED,
    }
}
