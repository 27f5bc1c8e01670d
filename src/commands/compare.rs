//! `rehearse compare FILE --baseline V1 --candidate V2`: two environments from the same
//! backup, built at once, the baseline release on one and the candidate on the other;
//! both run the suites, then the same load at the same time; the judge over what was
//! measured; `compare.json`, `compare.xml` (JUnit, a case a metric) and `compare.html`
//! in the comparison's directory, its path printed last; both torn down.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::{CompareArgs, Global};
use crate::compare::judge::{self, Direction, Metric, Outcome, Settings, Verdict};
use crate::compare::load::{self, Measured};
use crate::description::DestroyPolicy;
use crate::engine::connection::Connection;
use crate::engine::lifecycle::Options;
use crate::exit;
use crate::report::model::{RunReport, Verdict as RunVerdict};
use crate::sys::state;

use super::run::{described, exit_code, rehearse};
use super::{load_or_report, reporter, runtime};

/// Version of compare.json; bumped on any incompatible change.
pub const COMPARE_SCHEMA_VERSION: u32 = 1;

/// One side of the comparison, as built and measured.
#[derive(Debug, serde::Serialize)]
struct Side {
    release: String,
    run_id: String,
    verdict: String,
    exit_code: i32,
    /// Why the side could not be measured (its build or its suites failed).
    reason: Option<String>,
    /// The install steps' durations, ms (one a service with an install).
    migration_ms: Vec<f64>,
    measured: Measured,
}

#[derive(Debug, serde::Serialize)]
struct Comparison {
    schema_version: u32,
    id: String,
    environment: String,
    baseline: Side,
    candidate: Side,
    load: serde_json::Value,
    settings: Settings,
    verdicts: Vec<Verdict>,
    score: judge::Score,
    /// One line: the outcome, naming the metrics that failed.
    reason: String,
}

fn side(release: &str, run_id: &str, report: Option<&RunReport>, code: i32) -> Side {
    Side {
        release: release.to_string(),
        run_id: run_id.to_string(),
        verdict: report.map(|r| r.verdict.as_str().to_string()).unwrap_or_else(|| "build-failed".into()),
        exit_code: code,
        reason: report.and_then(|r| r.reason.clone()),
        migration_ms: report
            .map(|r| r.steps.iter().filter(|s| s.action == "install" && s.ok).map(|s| s.duration_ms as f64).collect())
            .unwrap_or_default(),
        measured: Measured::default(),
    }
}

pub(crate) fn compare(g: &Global, args: &CompareArgs) -> i32 {
    let loaded = match load_or_report(&args.file, Some(&args.baseline)) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(spec) = loaded.desc.compare.clone() else {
        eprintln!(
            "error: {} has no `compare:` section: rehearse compare needs the load both environments get \
             (`compare: {{load: {{requests: FILE, target: SERVICE}}}}`)",
            args.file.display()
        );
        return exit::USAGE;
    };
    let requests = match std::fs::read_to_string(loaded.resolve(&spec.load.requests))
        .map_err(|e| e.to_string())
        .and_then(|t| load::parse_requests(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", loaded.resolve(&spec.load.requests).display());
            return exit::USAGE;
        }
    };
    // A seed turns where in the request file each side's schedule starts (the same
    // start for both): seeded repetitions replay different stretches of traffic.
    let requests: Vec<load::Request> = {
        let start = args.seed.unwrap_or(0) as usize % requests.len();
        requests[start..].iter().chain(&requests[..start]).cloned().collect()
    };
    let g = &described(g, &loaded);
    let rt = runtime();
    let reporter = reporter(g);
    rt.block_on(async {
        let signals = match super::signals() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let super::store::Opened { shared, locks, local_root: state_root } = match super::store::open_for_runs(g).await
        {
            Ok(o) => o,
            Err(code) => return code,
        };
        let options = |release: &str| Options {
            run_id: state::new_run_id(),
            release: release.to_string(),
            // Kept after the suites for the load; torn down below, whatever happens.
            destroy: DestroyPolicy::Never,
            cold: args.cold,
            up_only: false,
            state_root: state_root.clone(),
            work_root: state::work_dir(),
            run_as: args.run_as.clone(),
            exit_code,
            name: None,
            shared: shared.clone(),
            stage: None,
        };
        let (ob, oc) = (options(&args.baseline), options(&args.candidate));
        let (cb, cc) = tokio::join!(
            rehearse(g, &loaded, &ob, locks.clone(), reporter.as_ref(), &signals),
            rehearse(g, &loaded, &oc, locks.clone(), reporter.as_ref(), &signals),
        );
        let report =
            |o: &Options| crate::report::read_report(&state::run_dir(&o.state_root, &o.run_id).join("report")).ok();
        let (rb, rc) = (report(&ob), report(&oc));
        let mut baseline = side(&args.baseline, &ob.run_id, rb.as_ref(), cb);
        let mut candidate = side(&args.candidate, &oc.run_id, rc.as_ref(), cc);
        // The load, on both at once, on what passed its suites and stayed up.
        let url_of = |o: &Options, r: Option<&RunReport>| -> Option<(String, u16)> {
            if r.is_none_or(|r| r.verdict != RunVerdict::Passed) {
                return None;
            }
            let c = Connection::read(&state::run_dir(&o.state_root, &o.run_id), &o.run_id).ok()?;
            load::target(&c.services.get(&spec.load.target)?.url)
        };
        let targets: Vec<(usize, (String, u16))> = [url_of(&ob, rb.as_ref()), url_of(&oc, rc.as_ref())]
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .collect();
        if !targets.is_empty() && signals.count() == 0 {
            eprintln!(
                "compare: {} requests a second for {} to {}",
                spec.load.rate,
                crate::description::format_duration(spec.load.duration),
                targets
                    .iter()
                    .map(|(i, _)| if *i == 0 { "the baseline" } else { "the candidate" })
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            let hosts: Vec<(String, u16)> = targets.iter().map(|(_, t)| t.clone()).collect();
            let measured = load::replay(&requests, &hosts, spec.load.rate, spec.load.duration, spec.load.timeout).await;
            for ((i, _), m) in targets.iter().zip(measured) {
                if *i == 0 {
                    baseline.measured = m;
                } else {
                    candidate.measured = m;
                }
            }
        }
        // Both down, from their journals, whatever came of them.
        let mut left = 0;
        for o in [&ob, &oc] {
            if super::stage::down_generation(g, &o.run_id).await != exit::PASSED {
                left += 1;
                eprintln!("compare: run {} is not fully torn down: `rehearse down {}`", o.run_id, o.run_id);
            }
        }
        let settings = Settings {
            confidence: spec.judge.confidence,
            tolerance: spec.judge.tolerance,
            min_samples: spec.judge.min_samples as usize,
            pass: spec.judge.pass,
            marginal: spec.judge.marginal,
        };
        let verdicts = judge_all(&baseline, &candidate, &spec.judge.critical, &settings);
        let mut score = judge::score(&verdicts, &settings);
        // A candidate that did not get through its build or its suites fails, said as such.
        let broken = |s: &Side| s.verdict != "passed";
        let reason = if broken(&candidate) {
            score.outcome = Outcome::Fail;
            format!(
                "the candidate {} did not pass its rehearsal ({}): {}",
                candidate.release,
                candidate.verdict,
                candidate.reason.clone().unwrap_or_default()
            )
        } else if broken(&baseline) {
            score.outcome = Outcome::Fail;
            format!("the baseline {} did not pass its rehearsal: nothing to compare against", baseline.release)
        } else if score.failed.is_empty() {
            score.reason.clone()
        } else {
            format!("{}; failed: {}", score.reason, score.failed.join(", "))
        };
        let id = format!("c-{}", state::new_run_id().trim_start_matches("r-"));
        let comparison = Comparison {
            schema_version: COMPARE_SCHEMA_VERSION,
            id: id.clone(),
            environment: loaded.desc.name.clone(),
            baseline,
            candidate,
            load: serde_json::json!({
                "requests": loaded.resolve(&spec.load.requests).display().to_string(),
                "target": spec.load.target,
                "rate": spec.load.rate,
                "duration": crate::description::format_duration(spec.load.duration),
                "seed": args.seed,
            }),
            settings,
            verdicts,
            score,
            reason,
        };
        let dir = state_root.join("compares").join(&id);
        match write(&dir, &comparison) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("error: cannot write the comparison to {}: {e}", dir.display());
                return exit::BUILD_FAILED;
            }
        }
        let mark = if comparison.score.outcome == Outcome::Pass { "PASSED" } else { "FAILED" };
        println!(
            "{mark}: {} {} against {}: {}",
            comparison.environment, comparison.candidate.release, comparison.baseline.release, comparison.reason
        );
        for v in comparison.verdicts.iter().filter(|v| v.classification != judge::Classification::Pass) {
            println!("  {:<7} {}: {}", v.classification.as_str(), v.metric, v.reason);
        }
        println!("open this: {}", dir.join("compare.html").display());
        if signals.count() > 0 {
            return exit::INTERRUPTED;
        }
        match (comparison.score.outcome, left) {
            (Outcome::Pass, 0) => exit::PASSED,
            (Outcome::Pass, _) => exit::LEFTOVERS,
            _ => exit::SUITES_FAILED,
        }
    })
}

/// Every metric: latency and errors per endpoint (only an increase is bad), and the
/// migration time.
fn judge_all(b: &Side, c: &Side, critical: &[String], s: &Settings) -> Vec<Verdict> {
    let mut endpoints: Vec<&String> = b.measured.latencies.keys().chain(c.measured.latencies.keys()).collect();
    endpoints.sort();
    endpoints.dedup();
    let empty: Vec<f64> = Vec::new();
    let mut out = Vec::new();
    let mut add = |name: String, base: &[f64], cand: &[f64]| {
        let critical = critical.contains(&name);
        out.push(judge::classify(
            &Metric { name: &name, baseline: base, candidate: cand, direction: Direction::Increase, critical },
            s,
        ));
    };
    for e in endpoints {
        let pick = |m: &BTreeMap<String, Vec<f64>>| m.get(e).cloned().unwrap_or_default();
        add(format!("latency {e}"), &pick(&b.measured.latencies), &pick(&c.measured.latencies));
        add(format!("errors {e}"), &pick(&b.measured.errors), &pick(&c.measured.errors));
    }
    add("migration time".into(), if b.migration_ms.is_empty() { &empty } else { &b.migration_ms }, &c.migration_ms);
    out
}

fn write(dir: &PathBuf, c: &Comparison) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("compare.json"), serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)?;
    std::fs::write(dir.join("compare.xml"), junit(c).map_err(std::io::Error::other)?)?;
    std::fs::write(dir.join("compare.html"), crate::compare::page::render(&serde_json::to_value(c)?))?;
    Ok(())
}

/// One test case a metric: Pass passes, High/Low fail, NoData is skipped (a failure
/// when the metric is critical).
fn junit(c: &Comparison) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new(format!("compare {} against {}", c.candidate.release, c.baseline.release));
    for v in &c.verdicts {
        let status = match v.classification {
            judge::Classification::Pass => TestCaseStatus::success(),
            judge::Classification::NoData if !v.critical => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(v.reason.clone());
                s
            }
            _ => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("{}: {}", v.classification.as_str(), v.reason));
                s
            }
        };
        suite.add_test_case(TestCase::new(v.metric.clone(), status));
    }
    let mut report = Report::new(format!("rehearse compare {}", c.id));
    report.add_test_suite(suite);
    report.to_string()
}
