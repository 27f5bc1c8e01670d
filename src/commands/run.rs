//! `rehearse run` and `rehearse up`: a rehearsal through the engine, its report
//! written and its exit code decided here.

use futures_util::FutureExt;

use super::load_or_report;
use crate::cli::{Destroy, Format, Global, RunArgs};
use crate::description::{DestroyPolicy, Target};
use crate::engine::events::Reporter;
use crate::engine::journal::Journal;
use crate::engine::lifecycle::{self, Options};
use crate::engine::provider::Provider;
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

/// How a rehearsal ended: its exit code and, when it ended before it had a report
/// (its lease could not be taken, its directories or files were refused), why.
pub(super) struct Ended {
    pub code: i32,
    pub error: Option<String>,
}

/// A run with its options decided: its lease taken in a shared store (other machines
/// then know it lives), its provider chosen, driven to its exit code.
pub(super) async fn rehearse(
    g: &Global,
    loaded: &crate::description::Loaded,
    opts: &Options,
    locks: std::sync::Arc<dyn crate::engine::store::ObjectStore>,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Ended {
    let run_id = &opts.run_id;
    let alive = match &opts.shared {
        Some(_) => {
            let lease = match super::store::lease() {
                Ok(l) => l,
                Err(code) => return Ended { code, error: Some("REHEARSE_LEASE is not a lease rehearse takes".into()) },
            };
            match super::lock::take(locks, &crate::engine::store::run_lease(run_id), "run", Some(run_id), lease).await {
                Ok(l) => Some(l),
                Err(code) => {
                    return Ended { code, error: Some(format!("the run's lease in the state store (exit {code})")) }
                }
            }
        }
        None => None,
    };
    let ended = match &loaded.desc.target {
        Target::Local => drive(g, &LocalProvider::new(&opts.work_root), loaded, opts, reporter, signals).await,
        Target::Aws(aws) => {
            let provider = super::aws_provider(&aws.region).await;
            drive(g, &provider, loaded, opts, reporter, signals).await
        }
    };
    if let Some(l) = alive {
        super::lock::give_back(l, &crate::engine::store::run_lease(run_id)).await;
    }
    ended
}

/// What both twins of a comparison restore: every database's source pinned now (a
/// backup landing in between changes neither). Locally, unless `cold`, the golden copy
/// is then made from the pinned backup where it is not already: one restore, which
/// both twins copy. Returns the pins and what was done to the golden copies.
pub(super) async fn twins(
    loaded: &crate::description::Loaded,
    cold: bool,
    work_root: &std::path::Path,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Result<(crate::engine::provider::Pins, Vec<String>), String> {
    match &loaded.desc.target {
        Target::Local => {
            let pins = LocalProvider::new(work_root).pin_sources(loaded).await.map_err(|e| e.message)?;
            // Nothing restored from a backup (no database, or live `url:` sources): no golden copy.
            if cold || pins.is_empty() {
                return Ok((pins, Vec::new()));
            }
            use crate::providers::local::golden::{refresh_all, Refresh};
            let lines = refresh_all(loaded, work_root, Refresh::Stale(&pins), reporter, signals).await?;
            Ok((pins, lines))
        }
        Target::Aws(aws) => {
            let provider = super::aws_provider(&aws.region).await;
            Ok((provider.pin_sources(loaded).await.map_err(|e| e.message)?, Vec::new()))
        }
    }
}

/// Runs the lifecycle with a provider and turns the outcome into output and an exit
/// code; a crash inside is caught and torn down from the journal.
async fn drive<P: Provider>(
    g: &Global,
    provider: &P,
    loaded: &crate::description::Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Ended {
    let run_state = state::run_dir(&opts.state_root, &opts.run_id);
    let result = {
        let run =
            std::panic::AssertUnwindSafe(lifecycle::run(provider, loaded, opts, reporter, signals)).catch_unwind();
        // Long runs show their logs in the shared store as they go.
        let logs = super::store::publish_logs_periodically(opts.shared.clone(), &opts.run_id, &run_state);
        tokio::pin!(logs);
        tokio::select! {
            r = run => r,
            () = &mut logs => unreachable_publisher(),
        }
    };
    let ended = finish(g, result, opts, provider, reporter, signals).await;
    super::store::publish(opts.shared.as_deref(), &opts.run_id, &run_state).await;
    ended
}

/// The periodic publisher never ends by itself; if it did, the run would be lost.
fn unreachable_publisher() -> Result<Result<lifecycle::Outcome, lifecycle::RunError>, Box<dyn std::any::Any + Send>> {
    Err(Box::new("the log publisher ended"))
}

async fn finish<P: Provider>(
    g: &Global,
    result: Result<Result<lifecycle::Outcome, lifecycle::RunError>, Box<dyn std::any::Any + Send>>,
    opts: &Options,
    provider: &P,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Ended {
    let code = |code: i32| Ended { code, error: None };
    match result {
        Ok(Ok(outcome)) => {
            let verdict = outcome.report.exit_code;
            // The report's files, written here: the engine only assembles the report.
            if let Err(e) = crate::report::write_all(&outcome.report, &outcome.report_dir) {
                let why = format!("cannot write the report to {}: {e}", outcome.report_dir.display());
                errln!("error: {why}");
                let c = if verdict == exit::PASSED { exit::BUILD_FAILED } else { verdict };
                return Ended { code: c, error: Some(why) };
            }
            match g.format {
                Format::Json => {
                    if let Err(c) = super::print_json(&outcome.report) {
                        return code(if verdict == exit::PASSED { c } else { verdict });
                    }
                }
                Format::Text | Format::Shell | Format::Dotenv => {
                    let files = crate::report::ReportFiles::in_dir(&outcome.report_dir);
                    let summary =
                        crate::report::terminal_summary(&outcome.report, &files, crate::style::Styles::stderr(g.color));
                    eprint!("{summary}"); // raw: colored; the summary makes its parts printable
                }
            }
            code(verdict)
        }
        Ok(Err(e)) => {
            let why = crate::secrets::redact(&e.to_string()).into_owned();
            errln!("error: {why}");
            // Whatever the journal says exists is removed.
            let c = down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED);
            // Suites' files that cannot be handed over are the description's to fix:
            // nothing of the copy was built.
            let c = match (&e, c) {
                (lifecycle::RunError::Bundle(_), exit::BUILD_FAILED) => exit::USAGE,
                (_, c) => c,
            };
            Ended { code: c, error: Some(why) }
        }
        Err(_) => {
            let why = "rehearse crashed (a bug: please report it); tearing down from the journal";
            errln!("error: {why}");
            let c = down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED);
            Ended { code: c, error: Some(why.into()) }
        }
    }
}

/// After an error outside the normal path: tear down whatever the run's journal lists.
async fn down_after_failure<P: Provider>(
    opts: &Options,
    provider: &P,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Option<i32> {
    let path = state::run_dir(&opts.state_root, &opts.run_id).join("journal.jsonl");
    let j = Journal::open(&path).ok()?;
    let j = match &opts.shared {
        Some(store) => super::store::mirror(j, store.clone(), &opts.run_id).await.ok()?,
        None => j,
    };
    let out =
        teardown::run(provider, &j, reporter, signals, signals.count() + 1, &crate::sys::timing::Clock::new()).await;
    super::down::close_journal(&j, out.complete()).await;
    if out.complete() {
        Some(exit::BUILD_FAILED)
    } else {
        err!("{}", teardown::leftover_text(&opts.run_id, &out.listed(&format!("rehearse down {}", opts.run_id))));
        Some(exit::LEFTOVERS)
    }
}
