//! A rehearsal as every command that runs one does it (`run`, `up`, a stage's rebuild,
//! `compare`'s twins): its provider chosen, driven by the engine to its outcome, said,
//! and its exit code decided.

use crate::cli::{Format, Global};
use crate::description::Target;
use crate::engine::events::Reporter;
use crate::engine::lifecycle::{self, Options};
use crate::engine::run::{self as engine_run, AfterFailure, Ended as Ended_, RunFailure, RunOutcome};
use crate::engine::teardown;
use crate::exit;
use crate::providers::local::LocalProvider;
use crate::report::model::Verdict;
use crate::sys::signals::Signals;

/// The exit code of a run: its verdict, unless teardown left something behind.
pub fn exit_code(verdict: Verdict, leftovers: usize) -> i32 {
    verdict.exit_code(leftovers)
}

/// The global options with the description's `state:` where the command line names no
/// store: every step (names, locks, the journal) then uses that store.
pub(crate) fn described(g: &Global, loaded: &crate::description::Loaded) -> Global {
    match (&g.state, &loaded.desc.state) {
        (None, Some(s)) => Global { state: Some(s.clone()), ..g.clone() },
        _ => g.clone(),
    }
}

/// How a rehearsal ended: its exit code (its outcome is said already; [`outcome`]
/// returns the engine's outcome itself).
pub(crate) struct Ended {
    pub code: i32,
}

/// A run with its options decided: its provider chosen, driven by the engine to its
/// outcome, rendered, and its exit code (see [`outcome`]).
pub(crate) async fn rehearse(
    g: &Global,
    loaded: &crate::description::Loaded,
    opts: &Options,
    locks: std::sync::Arc<dyn crate::engine::store::ObjectStore>,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Ended {
    // The run's lease is taken in a shared store only.
    let lease = match &opts.shared {
        Some(_) => match crate::commands::store::lease() {
            Ok(l) => l,
            Err(code) => return Ended { code },
        },
        None => NO_LEASE,
    };
    let (_, code) = outcome(g, loaded, opts, locks, lease, reporter, signals).await;
    Ended { code }
}

/// The lease of a run without a shared store (none is taken).
pub(crate) const NO_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`rehearse`] with its lease decided, returning the engine's outcome and the exit code.
pub(crate) async fn outcome(
    g: &Global,
    loaded: &crate::description::Loaded,
    opts: &Options,
    locks: std::sync::Arc<dyn crate::engine::store::ObjectStore>,
    lease: std::time::Duration,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> (RunOutcome, i32) {
    let refill = crate::engine::pool::RefillOnClaim::new(reporter, pool_refill(g, &loaded.path, &opts.state_root));
    let reporter: &dyn Reporter = &refill;
    let outcome = match &loaded.desc.target {
        Target::Local => {
            let provider = LocalProvider::new(&opts.work_root);
            engine_run::run(&provider, loaded, opts, locks, lease, reporter, signals, &said_first).await
        }
        Target::Aws(aws) => {
            let provider = crate::commands::aws_provider(&aws.region).await.with_pool_store(locks.clone());
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
                if let Err(c) = crate::commands::print_json(report) {
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
        RunFailure::Lifecycle(lifecycle::RunError::Bundle(_) | lifecycle::RunError::Chaos(_)) => exit::USAGE,
        _ => exit::BUILD_FAILED,
    }
}

/// Refuses a name (checked by its grammar as the argument was parsed) already taken by
/// a live run (`Err`: the exit code, said).
pub(crate) fn check_name_free(g: &Global, name: &crate::cli::value::Name) -> Result<(), i32> {
    let name = name.as_str();
    let rows = crate::commands::checked_state(g)?.map(|root| crate::engine::inventory::scan(&root)).unwrap_or_default();
    if let Some(r) = crate::engine::inventory::live_named(&rows, name).first() {
        errln!(
            "error: the name `{name}` is taken by the live run {} ({}); pick another or `rehearse down {name}`",
            r.run_id,
            r.status
        );
        return Err(exit::USAGE);
    }
    Ok(())
}

/// The change rehearsed: `--change` fields, over what the CI that runs rehearse says
/// (below).
///
/// From CI: GitHub Actions
/// (`GITHUB_SHA`, `GITHUB_ACTOR`, `GITHUB_REF` = `refs/pull/N/merge`) or GitLab CI
/// (`CI_COMMIT_SHA`, `GITLAB_USER_LOGIN`, `CI_MERGE_REQUEST_IID`,
/// `CI_MERGE_REQUEST_TITLE`); or `REHEARSE_CHANGE_COMMIT`, `_AUTHOR`, `_PR`, `_TITLE` and
/// `_URL` set by hand. What does not fit its grammar is left out.
pub(crate) fn change_of(g: &Global) -> Option<crate::report::model::Change> {
    let mut c = change_from_ci().unwrap_or_default();
    // `--change` fields, checked as they were parsed, over what CI says.
    for (k, v) in &g.change {
        match k.as_str() {
            "commit" => c.commit = Some(v.clone()),
            "author" => c.author = Some(v.clone()),
            "pr" => c.pull_request = v.parse().ok(),
            "title" => c.title = Some(v.clone()),
            "url" => c.url = Some(v.clone()),
            _ => {}
        }
    }
    (c != crate::report::model::Change::default()).then_some(c)
}

fn change_from_ci() -> Option<crate::report::model::Change> {
    let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()));
    let pr = var(&["REHEARSE_CHANGE_PR", "CI_MERGE_REQUEST_IID"]).or_else(|| {
        var(&["GITHUB_REF"])
            .and_then(|r| r.strip_prefix("refs/pull/").and_then(|r| r.split('/').next()).map(str::to_string))
    });
    let change = crate::report::model::Change {
        commit: var(&["REHEARSE_CHANGE_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA"]),
        author: var(&["REHEARSE_CHANGE_AUTHOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN"]),
        pull_request: pr.and_then(|p| p.trim().parse().ok()),
        title: var(&["REHEARSE_CHANGE_TITLE", "CI_MERGE_REQUEST_TITLE"]),
        url: var(&["REHEARSE_CHANGE_URL"]),
    };
    // Field by field: one bad value drops itself, not the rest.
    let keep = |c: crate::report::model::Change| c.check().is_ok();
    let c = crate::report::model::Change {
        commit: change
            .commit
            .filter(|v| keep(crate::report::model::Change { commit: Some(v.clone()), ..Default::default() })),
        author: change
            .author
            .filter(|v| keep(crate::report::model::Change { author: Some(v.clone()), ..Default::default() })),
        pull_request: change.pull_request,
        title: change
            .title
            .filter(|v| keep(crate::report::model::Change { title: Some(v.clone()), ..Default::default() })),
        url: change.url.filter(|v| keep(crate::report::model::Change { url: Some(v.clone()), ..Default::default() })),
    };
    (c != crate::report::model::Change::default()).then_some(c)
}

/// What refills a description's pools once a run took a member: `rehearse pool fill
/// FILE` started in the background (its own process group, its output in
/// `STATE/pool-fill.log`), so the pool is refilled while the run's copy is used. Fills
/// take the pool's lock: of several at once, one fills.
pub(crate) fn pool_refill(g: &Global, file: &std::path::Path, state_root: &std::path::Path) -> impl Fn() + Send + Sync {
    let (state, state_dir, file) = (g.state.clone(), g.state_dir.clone(), file.to_path_buf());
    let log = state_root.join("pool-fill.log");
    move || match crate::sys::process::refill_pools(state.as_deref(), state_dir.as_deref(), &file, &log) {
        Ok(pid) => errln!("rehearse: refilling the pool in the background (pid {pid}; {})", log.display()),
        Err(e) => errln!("rehearse: warning: cannot start `rehearse pool fill` to refill the pool: {e}"),
    }
}
