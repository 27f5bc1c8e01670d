//! `rehearse compare FILE --baseline V1 --candidate V2`: the arguments read, the twins'
//! backups pinned (the provider's), the comparison run by the engine
//! ([`crate::engine::compare`]), its outcome said and its exit code decided here.

use std::sync::Arc;

use crate::cli::{CompareArgs, Global};
use crate::compare::judge::{self, Outcome};
use crate::description::Loaded;
use crate::engine::compare::{self as engine_compare, CompareOptions, CompareOutcome, Edge, Note};
use crate::engine::events::Reporter;
use crate::engine::lifecycle::Options;
use crate::engine::run::RunOutcome;
use crate::engine::store::ObjectStore;
use crate::exit;
use crate::sys::signals::Signals;
use crate::sys::state;

use super::edge::run::{described, exit_code};
use super::load_or_report;

pub(crate) fn compare(g: &Global, args: &CompareArgs) -> i32 {
    let loaded = match load_or_report(&args.file, Some(&args.baseline)) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(spec) = loaded.desc.compare.clone() else {
        errln!(
            "error: {} has no `compare:` section: rehearse compare needs the load both environments get \
             (`compare: {{load: {{requests: FILE, target: SERVICE}}}}`)",
            args.file.display()
        );
        return exit::USAGE;
    };
    if args.deploy {
        if let Err((code, why)) = crate::engine::deploy::refusal(&loaded, &args.baseline, &args.candidate) {
            errln!("error: {why}");
            return code;
        }
    }
    let requests = match engine_compare::schedule(&loaded, &spec, args.seed) {
        Ok(r) => r,
        Err(e) => {
            errln!("error: {e}");
            return exit::USAGE;
        }
    };
    // The load command runs as the release's user when rehearse runs as root.
    let tool_user = match crate::sys::process::Users::resolve(args.run_as.as_deref(), false) {
        Ok(u) => u.release,
        Err(e) => {
            errln!("error: {e}");
            return exit::USAGE;
        }
    };
    let g = &described(g, &loaded);
    super::with_signals(g, async |reporter, signals| {
        let super::store::Opened { shared, locks, local_root: state_root } = match super::store::open_for_runs(g).await
        {
            Ok(o) => o,
            Err(code) => return code,
        };
        // The runs' leases are taken in a shared store only.
        let lease = match &shared {
            Some(_) => match super::store::lease() {
                Ok(l) => l,
                Err(code) => return code,
            },
            None => super::edge::run::NO_LEASE,
        };
        // One point of production for both: pinned now, restored once.
        let (pins, golden) =
            match crate::providers::pin_twins(&loaded, args.cold, &state::work_dir(), reporter, signals).await {
                Ok(t) => t,
                Err(e) if signals.count() > 0 => {
                    errln!("rehearse: interrupted before the twins were built ({e})");
                    return exit::INTERRUPTED;
                }
                Err(e) => {
                    errln!("error: cannot fix the backup both environments restore: {e}");
                    return exit::BUILD_FAILED;
                }
            };
        for (db, pin) in &pins {
            errln!("compare: both environments restore `{db}` from {pin}");
        }
        for (db, d) in loaded.desc.databases.iter().filter(|(n, _)| !pins.contains_key(n.as_str())) {
            let why = match &d.source {
                crate::description::DatabaseSource::AuroraCluster(_) => {
                    "both clone the live cluster, started at once (RDS makes no copy-on-write clone of a fixed time)"
                }
                _ => "each side dumps the live source on its own (a live database cannot be pinned)",
            };
            errln!("compare: `{db}` is not pinned: {why}; the twins differ by what it wrote in between");
        }
        for line in golden {
            errln!("compare: {line}");
        }
        let opts = CompareOptions {
            baseline: args.baseline.clone(),
            candidate: args.candidate.clone(),
            seed: args.seed,
            requests,
            cold: args.cold,
            run_as: args.run_as.clone(),
            tool_user,
            state_root,
            work_root: state::work_dir(),
            shared,
            pins,
            psql: crate::providers::psql(),
            exit_code,
            change: super::edge::run::change_of(g),
            deploy: args.deploy,
        };
        let edge = Cli { g, loaded: &loaded, locks, lease, reporter, signals };
        let outcome = engine_compare::compare(&loaded, &spec, &opts, &edge, signals).await;
        said(&outcome, signals)
    })
}

/// What the command does for the comparison: each side built with a provider of its
/// own and rendered like a run, torn down like `rehearse down`, and what happens said.
struct Cli<'a> {
    g: &'a Global,
    loaded: &'a Loaded,
    locks: Arc<dyn ObjectStore>,
    /// The runs' leases in a shared store.
    lease: std::time::Duration,
    reporter: &'a dyn Reporter,
    signals: &'a Signals,
}

impl Edge for Cli<'_> {
    async fn rehearse(&self, opts: &Options) -> (RunOutcome, i32) {
        super::edge::run::outcome(
            self.g,
            self.loaded,
            opts,
            self.locks.clone(),
            self.lease,
            self.reporter,
            self.signals,
        )
        .await
    }

    async fn down(&self, run_id: &str) -> bool {
        super::edge::down::down_fetched(self.g, run_id, None).await.code == exit::PASSED
    }

    fn note(&self, note: Note<'_>) {
        match note {
            Note::NoDirectory { dir, error } => errln!("error: cannot create {}: {error}", dir.display()),
            Note::Load { command, rate, duration, sides } => errln!(
                "compare: {}{} requests a second for {} to {}",
                command.map(|c| format!("`{c}`: ")).unwrap_or_default(),
                rate,
                crate::description::format_duration(duration),
                sides.iter().map(|s| format!("the {s}")).collect::<Vec<_>>().join(" and ")
            ),
            Note::NotMeasured { side, error } => errln!("compare: the {side} was not measured: {error}"),
            Note::NotTornDown { run_id } => {
                errln!("compare: run {run_id} is not fully torn down: `rehearse down {run_id}`")
            }
        }
    }
}

/// Says the comparison's outcome (its mark and reason, the metrics that did not pass,
/// its page) and returns the exit code.
fn said(outcome: &CompareOutcome, signals: &Signals) -> i32 {
    if let Some(e) = &outcome.unwritten {
        errln!("error: cannot write the comparison to {}: {e}", outcome.dir.display());
        return exit::BUILD_FAILED;
    }
    let comparison = &outcome.comparison;
    let no_comparison = outcome.no_comparison;
    let mark = match (comparison.score.outcome, no_comparison) {
        (_, true) => "ERROR",
        (Outcome::Pass, _) => "PASSED",
        _ => "FAILED",
    };
    outln!(
        "{mark}: {} {} against {}: {}",
        comparison.environment,
        comparison.candidate.release,
        comparison.baseline.release,
        comparison.reason
    );
    if !no_comparison {
        for v in comparison.verdicts.iter().filter(|v| v.classification != judge::Classification::Pass) {
            outln!("  {:<7} {}: {}", v.classification.as_str(), v.metric, v.reason);
        }
    }
    outln!("open this: {}", outcome.dir.join("compare.html").display());
    outcome.exit_code(signals.count() > 0)
}
