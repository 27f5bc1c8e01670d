//! A comparison asked of the server (`rehearse compare` on request): the twins pinned to
//! one point of production, both built at once through the engine's run operation, the
//! same load on both, the judge's verdict, both torn down; compare.html for the portal.

use chrono::Utc;

use super::queue::{run_with_provider, Stream};
use super::Shared;
use crate::description::Loaded;
use crate::engine::compare::{self as engine_compare, CompareOptions, Edge, Note};
use crate::engine::lifecycle::Options;
use crate::engine::requests::State;
use crate::engine::run::{Ended, RunOutcome};
use crate::report::model::Verdict;
use crate::sys::signals::Signals;

/// What the server does for the engine's comparison: each side a run with the
/// description's provider, torn down from its journal, and what happens said on the
/// request's stream.
struct ServerEdge<'a> {
    shared: &'a Shared,
    loaded: &'a Loaded,
    stream: &'a Stream,
    signals: &'a Signals,
}

impl Edge for ServerEdge<'_> {
    async fn rehearse(&self, opts: &Options) -> (RunOutcome, i32) {
        let outcome = run_with_provider(self.shared, self.loaded, opts, self.stream, self.signals).await;
        let code = match &outcome.ended {
            Ended::Reported { report, unwritten: None, .. } => report.exit_code,
            _ => crate::exit::BUILD_FAILED,
        };
        (outcome, code)
    }

    async fn down(&self, run_id: &str) -> bool {
        let environment = &self.loaded.desc.name;
        super::kept::tear_down(self.shared, environment, run_id, self.stream, self.signals)
            .await
            .is_ok_and(|d| d.complete())
    }

    fn note(&self, note: Note<'_>) {
        let line = match note {
            Note::NoDirectory { dir, error } => format!("error: cannot create {}: {error}", dir.display()),
            Note::Load { rate, duration, sides, .. } => format!(
                "compare: {rate} requests a second for {} to {}",
                crate::description::format_duration(duration),
                sides.iter().map(|s| format!("the {s}")).collect::<Vec<_>>().join(" and ")
            ),
            Note::NotMeasured { side, error } => format!("compare: the {side} was not measured: {error}"),
            Note::NotTornDown { run_id } => {
                format!("compare: run {run_id} is not fully torn down: `rehearse down {run_id}`")
            }
        };
        self.stream.say(crate::sys::text::printable(&crate::secrets::redact(&line)));
    }
}

/// Compares `candidate` against `baseline` on `loaded` (loaded with the baseline); the
/// request's final state.
pub(crate) async fn compare(
    shared: &Shared,
    loaded: &Loaded,
    (baseline, candidate, deploy): (&str, &str, bool),
    change: Option<&crate::report::model::Change>,
    stream: &Stream,
    signals: &Signals,
) -> State {
    let change = change.cloned();
    let started_at = Some(Utc::now());
    let finished =
        |verdict: Option<Verdict>, exit_code: i32, error: Option<String>, comparison: Option<String>| State::Finished {
            run_id: None,
            started_at,
            verdict,
            exit_code,
            error: error.map(|e| crate::sys::text::printable(&crate::secrets::redact(&e))),
            ended_at: Utc::now(),
            comparison,
        };
    let Some(spec) = loaded.desc.compare.clone() else {
        let why = format!("{} has no `compare:` section: a comparison needs the load both sides get", loaded.desc.name);
        return finished(None, crate::exit::USAGE, Some(why), None);
    };
    let requests = match engine_compare::schedule(loaded, &spec, None) {
        Ok(r) => r,
        Err(e) => return finished(None, crate::exit::USAGE, Some(e.to_string()), None),
    };
    let tool_user = match crate::sys::process::Users::resolve(None, false) {
        Ok(u) => u.release,
        Err(e) => return finished(None, crate::exit::USAGE, Some(e.to_string()), None),
    };
    let (pins, golden) = match crate::providers::pin_twins(loaded, false, &shared.work_root, stream, signals).await {
        Ok(t) => t,
        Err(e) => {
            let why = format!("cannot fix the backup both environments restore: {e}");
            return finished(None, crate::exit::BUILD_FAILED, Some(why), None);
        }
    };
    for (db, pin) in &pins {
        stream.say(format!("compare: both environments restore `{db}` from {pin}"));
    }
    for line in golden {
        stream.say(format!("compare: {line}"));
    }
    let opts = CompareOptions {
        baseline: baseline.to_string(),
        candidate: candidate.to_string(),
        seed: None,
        requests,
        cold: false,
        run_as: None,
        tool_user,
        state_root: shared.state_root.clone(),
        work_root: shared.work_root.clone(),
        shared: shared.replicated.clone(),
        pins,
        psql: crate::providers::psql(),
        exit_code: Verdict::exit_code,
        change: change.clone(),
        deploy,
    };
    let edge = ServerEdge { shared, loaded, stream, signals };
    let outcome = engine_compare::compare(loaded, &spec, &opts, &edge, signals).await;
    let id = outcome.dir.file_name().and_then(|n| n.to_str()).map(str::to_string);
    if let Some(e) = &outcome.unwritten {
        let why = format!("cannot write the comparison to {}: {e}", outcome.dir.display());
        return finished(None, crate::exit::BUILD_FAILED, Some(why), None);
    }
    let c = &outcome.comparison;
    let verdict = outcome.verdict();
    stream.say(format!(
        "verdict: {} — {} against {}: {}",
        verdict.as_str(),
        c.candidate.release,
        c.baseline.release,
        c.reason
    ));
    for v in c.verdicts.iter().filter(|v| v.classification != crate::compare::judge::Classification::Pass) {
        stream.say(format!("  {:<7} {}: {}", v.classification.as_str(), v.metric, v.reason));
    }
    let exit_code = outcome.exit_code(signals.count() > 0);
    let error = (exit_code != crate::exit::PASSED).then(|| c.reason.clone());
    finished(Some(verdict), exit_code, error, id)
}
