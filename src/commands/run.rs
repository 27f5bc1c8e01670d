//! `rehearse run` and `rehearse up`: a rehearsal through the engine, its report
//! written and its exit code decided here.

use futures_util::FutureExt;

use super::{load_or_report, reporter, runtime};
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
        eprintln!(
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
        if let Err(code) = super::inventory::check_name_free(g, name) {
            return code;
        }
    }
    let opts = Options {
        run_id: state::new_run_id(),
        release,
        destroy,
        cold: args.cold,
        up_only,
        state_root: state::state_dir(g.state_dir.as_deref()),
        work_root: state::work_dir(),
        run_as: args.run_as.clone(),
        exit_code,
        name: args.name.clone(),
    };
    let rt = runtime();
    let reporter = reporter(g);
    rt.block_on(async {
        let signals = match super::signals() {
            Ok(s) => s,
            Err(code) => return code,
        };
        match &loaded.desc.target {
            Target::Local => {
                drive(g, &LocalProvider::new(&opts.work_root), &loaded, &opts, reporter.as_ref(), &signals).await
            }
            Target::Aws(aws) => {
                let provider = super::aws_provider(&aws.region).await;
                drive(g, &provider, &loaded, &opts, reporter.as_ref(), &signals).await
            }
        }
    })
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
) -> i32 {
    let result =
        std::panic::AssertUnwindSafe(lifecycle::run(provider, loaded, opts, reporter, signals)).catch_unwind().await;
    match result {
        Ok(Ok(outcome)) => {
            let code = outcome.report.exit_code;
            // The report's files, written here: the engine only assembles the report.
            if let Err(e) = crate::report::write_all(&outcome.report, &outcome.report_dir) {
                eprintln!("error: cannot write the report to {}: {e}", outcome.report_dir.display());
                return if code == exit::PASSED { exit::BUILD_FAILED } else { code };
            }
            match g.format {
                Format::Json => {
                    if let Err(c) = super::print_json(&outcome.report) {
                        return if code == exit::PASSED { c } else { code };
                    }
                }
                Format::Text | Format::Shell | Format::Dotenv => {
                    let files = crate::report::ReportFiles::in_dir(&outcome.report_dir);
                    eprint!(
                        "{}",
                        crate::report::terminal_summary(&outcome.report, &files, crate::style::Styles::stderr(g.color))
                    );
                }
            }
            code
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", crate::secrets::redact(&e.to_string()));
            // Whatever the journal says exists is removed.
            down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED)
        }
        Err(_) => {
            eprintln!("error: rehearse crashed (a bug: please report it); tearing down from the journal");
            down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED)
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
    let out =
        teardown::run(provider, &j, reporter, signals, signals.count() + 1, &crate::sys::timing::Clock::new()).await;
    super::down::close_journal(&j, out.complete());
    if out.complete() {
        Some(exit::BUILD_FAILED)
    } else {
        eprint!("{}", teardown::leftover_text(&opts.run_id, &out.listed(&format!("rehearse down {}", opts.run_id))));
        Some(exit::LEFTOVERS)
    }
}
