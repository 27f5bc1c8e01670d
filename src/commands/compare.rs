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

use super::run::{described, exit_code, rehearse, twins};

mod tool;
use super::load_or_report;

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
    /// The production backups the side was restored from (the same for both).
    backups: Vec<crate::report::model::BackupUsed>,
    measured: Measured,
    /// Why the load could not measure this side (the load command failed).
    load_error: Option<String>,
    /// Per database: its size after the migration and the suites, and the statements
    /// the load ran (`pg_stat_statements`).
    databases: BTreeMap<String, crate::compare::database::Measured>,
}

#[derive(Debug, serde::Serialize)]
struct Comparison {
    schema_version: u32,
    id: String,
    environment: String,
    baseline: Side,
    candidate: Side,
    /// What both restored, by database.
    restored_from: crate::engine::provider::Pins,
    load: serde_json::Value,
    settings: Settings,
    verdicts: Vec<Verdict>,
    score: judge::Score,
    /// One line: the outcome, naming the metrics that failed.
    reason: String,
}

fn side(release: &str, run_id: &str, report: Option<&RunReport>, ended: super::run::Ended) -> Side {
    Side {
        release: release.to_string(),
        run_id: run_id.to_string(),
        verdict: report.map(|r| r.verdict.as_str().to_string()).unwrap_or_else(|| "build-failed".into()),
        exit_code: ended.code,
        reason: report.and_then(|r| r.reason.clone()).or(ended.error),
        migration_ms: report
            .map(|r| r.steps.iter().filter(|s| s.action == "install" && s.ok).map(|s| s.duration_ms as f64).collect())
            .unwrap_or_default(),
        backups: report.map(|r| r.backups.clone()).unwrap_or_default(),
        measured: Measured::default(),
        load_error: None,
        databases: BTreeMap::new(),
    }
}

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
    let requests: Vec<load::Request> = match &spec.load.requests {
        Some(file) => match std::fs::read_to_string(loaded.resolve(file))
            .map_err(|e| e.to_string())
            .and_then(|t| load::parse_requests(&t).map_err(|e| e.to_string()))
        {
            // A seed turns where in the request file each side's schedule starts (the
            // same start for both): seeded repetitions replay different stretches.
            Ok(r) => {
                let start = args.seed.unwrap_or(0) as usize % r.len();
                r[start..].iter().chain(&r[..start]).cloned().collect()
            }
            Err(e) => {
                errln!("error: {}: {e}", loaded.resolve(file).display());
                return exit::USAGE;
            }
        },
        None => Vec::new(),
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
        // One point of production for both: pinned now, restored once.
        let (pins, golden) = match twins(&loaded, args.cold, &state::work_dir(), reporter, signals).await {
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
            pins: pins.clone(),
        };
        let (ob, oc) = (options(&args.baseline), options(&args.candidate));
        let (cb, cc) = tokio::join!(
            rehearse(g, &loaded, &ob, locks.clone(), reporter, signals),
            rehearse(g, &loaded, &oc, locks.clone(), reporter, signals),
        );
        let report =
            |o: &Options| crate::report::read_report(&state::run_dir(&o.state_root, &o.run_id).join("report")).ok();
        let (rb, rc) = (report(&ob), report(&oc));
        let mut baseline = side(&args.baseline, &ob.run_id, rb.as_ref(), cb);
        let mut candidate = side(&args.candidate, &oc.run_id, rc.as_ref(), cc);
        // The load, on both at once, on what passed its suites and stayed up.
        let connection = |o: &Options, r: Option<&RunReport>| -> Option<Connection> {
            if r.is_none_or(|r| r.verdict != RunVerdict::Passed) {
                return None;
            }
            Connection::read(&state::run_dir(&o.state_root, &o.run_id), &o.run_id).ok()
        };
        let (kb, kc) = (connection(&ob, rb.as_ref()), connection(&oc, rc.as_ref()));
        // A load command takes the URL as it is (https included); the replay speaks plain HTTP.
        let url_of = |c: &Option<Connection>| {
            let url = &c.as_ref()?.services.get(&spec.load.target)?.url;
            (spec.load.command.is_some() || load::target(url).is_some()).then(|| url.clone())
        };
        // A side that was never built leaves nothing to compare: no load at all then.
        let built = |s: &Side| s.verdict == "passed" || s.verdict == "failed";
        let targets: Vec<(usize, String)> = match built(&baseline) && built(&candidate) {
            true => [url_of(&kb), url_of(&kc)].into_iter().enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).collect(),
            false => Vec::new(),
        };
        let id = format!("c-{}", state::new_run_id().trim_start_matches("r-"));
        let dir = state_root.join("compares").join(&id);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            errln!("error: cannot create {}: {e}", dir.display());
        }
        // Each database's size and statement counters before the load, both at once.
        let (sb, sc) = tokio::join!(db_stats(kb.as_ref()), db_stats(kc.as_ref()));
        if !targets.is_empty() && signals.count() == 0 {
            errln!(
                "compare: {}{} requests a second for {} to {}",
                spec.load.command.as_ref().map(|c| format!("`{c}`: ")).unwrap_or_default(),
                spec.load.rate,
                crate::description::format_duration(spec.load.duration),
                targets
                    .iter()
                    .map(|(i, _)| if *i == 0 { "the baseline" } else { "the candidate" })
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            let measured: Vec<Result<Measured, String>> = if spec.load.command.is_some() {
                let sides: Vec<tool::Side> = targets
                    .iter()
                    .filter_map(|(i, _)| {
                        let (name, c) = if *i == 0 { ("baseline", &kb) } else { ("candidate", &kc) };
                        Some(tool::Side { name, services: &c.as_ref()?.services })
                    })
                    .collect();
                let scratch = state::work_dir().join("compares").join(&id);
                let own = [state_root.clone(), state::work_dir()];
                // Interrupted: the commands' process groups are killed as their futures drop.
                let m = tokio::select! {
                    m = tool::run_all(&spec.load, &loaded, &sides, &scratch, &dir, tool_user, &own) => m,
                    _ = signals.nth(1) => Vec::new(),
                };
                // Best effort: the tool's scratch (its HOME and results) is read already.
                #[allow(clippy::let_underscore_must_use)]
                let _ = std::fs::remove_dir_all(&scratch);
                m
            } else {
                let hosts: Vec<(String, u16)> = targets.iter().filter_map(|(_, url)| load::target(url)).collect();
                tokio::select! {
                    m = load::replay(&requests, &hosts, spec.load.rate, spec.load.duration, spec.load.timeout) => {
                        m.into_iter().map(Ok).collect()
                    }
                    _ = signals.nth(1) => Vec::new(),
                }
            };
            for ((i, _), m) in targets.iter().zip(measured) {
                let (label, side) = if *i == 0 { ("baseline", &mut baseline) } else { ("candidate", &mut candidate) };
                match m {
                    Ok(m) => side.measured = m,
                    Err(e) => {
                        errln!("compare: the {label} was not measured: {e}");
                        side.load_error = Some(e);
                    }
                }
            }
        }
        (baseline.databases, candidate.databases) =
            tokio::join!(statements_during(kb.as_ref(), sb), statements_during(kc.as_ref(), sc));
        // Both down, from their journals, whatever came of them.
        let mut left = 0;
        for o in [&ob, &oc] {
            if super::stage::down_generation(g, &o.run_id, None).await != exit::PASSED {
                left += 1;
                errln!("compare: run {} is not fully torn down: `rehearse down {}`", o.run_id, o.run_id);
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
        // A side that was never built (or was interrupted) leaves nothing to judge: the
        // comparison says why for each side, and is no verdict on the candidate.
        let unbuilt: Vec<String> = [("baseline", &baseline), ("candidate", &candidate)]
            .into_iter()
            .filter(|(_, s)| !built(s))
            .map(|(label, s)| {
                format!(
                    "the {label} {} could not be built ({}, exit {}): {}",
                    s.release,
                    s.verdict,
                    s.exit_code,
                    s.reason.as_deref().unwrap_or("no reason recorded")
                )
            })
            .collect();
        // A candidate that did not get through its build or its suites fails, said as such.
        let broken = |s: &Side| s.verdict != "passed";
        let did_not_pass = |label: &str, s: &Side, so: &str| {
            let why = s.reason.as_deref().unwrap_or_default();
            format!("the {label} {} did not pass its own rehearsal ({}){so}: {why}", s.release, s.verdict)
        };
        let reason = if !unbuilt.is_empty() {
            score.outcome = Outcome::Fail;
            format!("nothing was compared: {}", unbuilt.join("; "))
        } else if broken(&baseline) {
            score.outcome = Outcome::Fail;
            did_not_pass("baseline", &baseline, ", so there is nothing to compare against")
        } else if broken(&candidate) {
            score.outcome = Outcome::Fail;
            did_not_pass("candidate", &candidate, "")
        } else if let Some((label, e)) = [("baseline", &baseline), ("candidate", &candidate)]
            .into_iter()
            .find_map(|(l, s)| s.load_error.as_ref().map(|e| (l, e)))
        {
            score.outcome = Outcome::Fail;
            format!("the load could not measure the {label}: {e}")
        } else if score.failed.is_empty() {
            score.reason.clone()
        } else {
            format!("{}; failed: {}", score.reason, score.failed.join(", "))
        };
        let comparison = Comparison {
            schema_version: COMPARE_SCHEMA_VERSION,
            id: id.clone(),
            environment: loaded.desc.name.clone(),
            baseline,
            candidate,
            restored_from: pins,
            load: serde_json::json!({
                "requests": spec.load.requests.as_ref().map(|r| loaded.resolve(r).display().to_string()),
                "command": spec.load.command,
                "format": spec.load.command.as_ref().map(|_| spec.load.format.as_str()),
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
        match write(&dir, &comparison) {
            Ok(()) => {}
            Err(e) => {
                errln!("error: cannot write the comparison to {}: {e}", dir.display());
                return exit::BUILD_FAILED;
            }
        }
        // Exit 1 is a verdict on the candidate: both sides built, and the judge (or the
        // candidate's own rehearsal) failed it. A side never built, or a baseline that
        // failed its own rehearsal, is no such verdict: exit 3.
        let no_comparison = !unbuilt.is_empty() || broken(&comparison.baseline);
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
        outln!("open this: {}", dir.join("compare.html").display());
        if signals.count() > 0 {
            return exit::INTERRUPTED;
        }
        // As for a run: what teardown left behind comes first.
        match comparison.score.outcome {
            _ if left > 0 => exit::LEFTOVERS,
            _ if no_comparison => exit::BUILD_FAILED,
            Outcome::Pass => exit::PASSED,
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

/// A database's size before the load, and its statement counters with the database
/// of its server they were read in, or why they could not be read.
struct DbStats {
    size_bytes: Option<u64>,
    counters: Result<(String, Vec<crate::compare::database::Counters>), String>,
}

/// The release's role's statements in database `db` of the server, as
/// `pg_stat_statements` (in database `in_db`) counts them.
async fn counters(
    db: &crate::description::template::DatabaseOutputs,
    in_db: &str,
) -> Result<Vec<crate::compare::database::Counters>, String> {
    let sql = format!(
        "SELECT coalesce(json_agg(json_build_object('query', s.query, 'calls', s.calls, \
         'total_ms', s.total_exec_time)), '[]') FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{}' \
         AND s.userid = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        db.name.replace('\'', "''")
    );
    let out = psql(db, in_db, &sql).await?;
    serde_json::from_str(out.trim()).map_err(|e| format!("unexpected pg_stat_statements output: {e}"))
}

/// Before the load: every database's size and statement counters, over the kept
/// environment's connection (the release's role).
async fn db_stats(c: Option<&Connection>) -> BTreeMap<String, DbStats> {
    let Some(c) = c else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    for (name, db) in &c.databases {
        // Not reachable from here (an RDS copy inside its VPC): said once, not retried.
        let size = match psql(db, &db.name, "SELECT pg_database_size(current_database())").await {
            Ok(s) => s.trim().parse().ok(),
            Err(e) => {
                let counters = Err(format!("cannot query the copy from here: {e}"));
                out.insert(name.clone(), DbStats { size_bytes: None, counters });
                continue;
            }
        };
        // The cluster's `postgres` database, where rehearse creates the extension
        // locally; else the copy's own, where one made on RDS usually is.
        let mut found = Err(String::new());
        for in_db in ["postgres", db.name.as_str()] {
            found = counters(db, in_db).await.map(|c| (in_db.to_string(), c));
            if found.is_ok() {
                break;
            }
        }
        out.insert(name.clone(), DbStats { size_bytes: size, counters: found });
    }
    out
}

/// After the load: what it ran in each database, the counters now (read where they
/// were before) less those before.
async fn statements_during(
    c: Option<&Connection>,
    before: BTreeMap<String, DbStats>,
) -> BTreeMap<String, crate::compare::database::Measured> {
    use crate::compare::database::{during, Measured};
    let mut out = BTreeMap::new();
    for (name, b) in before {
        let statements = match (&b.counters, c.and_then(|c| c.databases.get(&name))) {
            (Ok((in_db, before)), Some(db)) => counters(db, in_db).await.map(|after| during(before, &after)),
            (Ok(_), None) => Err("not read after the load".into()),
            (Err(e), _) => Err(e.clone()),
        };
        let size_bytes = b.size_bytes;
        let m = match statements {
            Ok(statements) => Measured { size_bytes, statements, note: None },
            Err(e) => {
                Measured { size_bytes, statements: Vec::new(), note: Some(format!("no per-statement times: {e}")) }
            }
        };
        out.insert(name, m);
    }
    out
}

/// One query through `psql` with the database's libpq environment (the password
/// never on a command line), in `database` of its server; its output.
async fn psql(db: &crate::description::template::DatabaseOutputs, database: &str, sql: &str) -> Result<String, String> {
    // PostgreSQL's own psql when this machine has its server binaries; else the PATH's.
    let bin = crate::providers::local::postgres::PgBin::find()
        .map(|b| b.dir.join("psql"))
        .unwrap_or_else(|_| PathBuf::from("psql"));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .envs(db.libpq_env())
        .env("PGDATABASE", database)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| "psql took longer than 30 s".to_string())?
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().next().unwrap_or("psql failed").trim().to_string())
    }
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
