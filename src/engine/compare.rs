//! The compare operation (`rehearse compare`): two environments from the same pinned
//! backup, built at once, the baseline release on one and the candidate on the other;
//! both run the suites, then the same load at the same time; the judge over what was
//! measured; `compare.json`, `compare.xml` and `compare.html` written ([`report`]);
//! both torn down. Prints nothing: the caller builds each side with a provider of its
//! own, renders what happens ([`Note`]) and the [`CompareOutcome`].

pub mod report;
pub(crate) mod tool;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::connection::Connection;
use super::lifecycle::Options;
use super::provider::Pins;
use super::run::RunOutcome;
use super::store::ObjectStore;
use crate::compare::database::Psql;
use crate::compare::judge::{self, Direction, Metric, Outcome, Settings, Verdict};
use crate::compare::load::{self, Measured};
use crate::description::{Compare, DestroyPolicy, Loaded};
use crate::report::model::RunReport;
use crate::sys::process::RunAs;
use crate::sys::signals::Signals;
use crate::sys::state;
use report::{Comparison, Side, WriteError, COMPARE_SCHEMA_VERSION};

/// What a comparison is asked to do.
pub struct CompareOptions {
    pub baseline: String,
    pub candidate: String,
    /// Where in the request file both schedules start (recorded in compare.json).
    pub seed: Option<u64>,
    /// The request file's requests, already turned to start where the seed says.
    pub requests: Vec<load::Request>,
    pub cold: bool,
    pub run_as: Option<String>,
    /// The user the load command runs as (the release's, when rehearse runs as root).
    pub tool_user: Option<RunAs>,
    pub state_root: PathBuf,
    pub work_root: PathBuf,
    pub shared: Option<Arc<dyn ObjectStore>>,
    /// What both twins restore, pinned by the caller.
    pub pins: Pins,
    /// The psql that reads each copy's statistics.
    pub psql: Psql,
    /// A run's exit code for its verdict and leftovers (see [`Options::exit_code`]).
    pub exit_code: fn(crate::report::model::Verdict, usize) -> i32,
    /// The change compared (the candidate's), when known: recorded in compare.json.
    pub change: Option<crate::report::model::Change>,
    /// A compared deploy (`--deploy`): both twins built with the baseline; the
    /// candidate deployed over it under load ([`super::deploy`]) while the baseline twin
    /// gets the same load without the migration.
    pub deploy: bool,
}

/// What the caller does for the comparison: what needs a provider (one a side: a
/// provider holds one run's state), and the rendering of what happens.
#[allow(async_fn_in_trait)]
pub trait Edge {
    /// Builds one side to its end (its outcome rendered by the caller): the outcome and
    /// the exit code its run has.
    async fn rehearse(&self, opts: &Options) -> (RunOutcome, i32);
    /// Tears a side down from its journal: whether nothing of it is left.
    async fn down(&self, run_id: &str) -> bool;
    /// Something the comparison did, as it happens.
    fn note(&self, note: Note<'_>);
}

/// What happens during a comparison, for its caller to say.
pub enum Note<'a> {
    /// The comparison's directory cannot be made (its files are tried again at the end).
    NoDirectory { dir: &'a std::path::Path, error: &'a std::io::Error },
    /// The load starts: the command (if it is one), its rate, for how long, on which sides.
    Load { command: Option<&'a str>, rate: f64, duration: std::time::Duration, sides: Vec<&'static str> },
    /// A side the load could not measure.
    NotMeasured { side: &'static str, error: &'a str },
    /// A side teardown did not fully remove.
    NotTornDown { run_id: &'a str },
}

/// How a comparison ended.
pub struct CompareOutcome {
    pub comparison: Comparison,
    /// Where its files are.
    pub dir: PathBuf,
    /// The files could not be written.
    pub unwritten: Option<WriteError>,
    /// Sides teardown left something of.
    pub left: usize,
    /// A side never built, or a baseline that failed its own rehearsal: no verdict on
    /// the candidate.
    pub no_comparison: bool,
}

impl CompareOutcome {
    /// The comparison's exit code (README, "Exit codes"). Exit 1 is a verdict on the
    /// candidate: both sides built, and the judge (or the candidate's own rehearsal)
    /// failed it. A side never built, or a baseline that failed its own rehearsal, is no
    /// such verdict: exit 3. As for a run: what teardown left behind comes first.
    pub fn exit_code(&self, interrupted: bool) -> i32 {
        use crate::compare::judge::Outcome;
        if interrupted {
            return crate::exit::INTERRUPTED;
        }
        match self.comparison.score.outcome {
            _ if self.left > 0 => crate::exit::LEFTOVERS,
            _ if self.no_comparison => crate::exit::BUILD_FAILED,
            Outcome::Pass => crate::exit::PASSED,
            _ => crate::exit::SUITES_FAILED,
        }
    }

    /// The comparison's verdict on the candidate, as a run's.
    pub fn verdict(&self) -> crate::report::model::Verdict {
        use crate::report::model::Verdict;
        match (self.comparison.score.outcome, self.no_comparison) {
            (_, true) => Verdict::BuildFailed,
            (crate::compare::judge::Outcome::Pass, _) => Verdict::Passed,
            _ => Verdict::Failed,
        }
    }
}

/// Why a comparison's load schedule cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", .path.display())]
pub struct ScheduleError {
    pub path: PathBuf,
    pub why: String,
}

/// The requests both sides get: the description's request file, turned by `seed` to
/// where both schedules start (seeded repetitions replay different stretches); none
/// when the load is a command of its own.
pub fn schedule(loaded: &Loaded, spec: &Compare, seed: Option<u64>) -> Result<Vec<load::Request>, ScheduleError> {
    let Some(file) = &spec.load.requests else { return Ok(Vec::new()) };
    let path = loaded.resolve(file);
    let err = |why: String| ScheduleError { path: path.clone(), why };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let r = load::parse_requests(&text).map_err(|e| err(e.to_string()))?;
    if r.is_empty() {
        return Ok(r);
    }
    let start = seed.unwrap_or(0) as usize % r.len();
    Ok(r[start..].iter().chain(&r[..start]).cloned().collect())
}

/// Runs a comparison of `loaded` under `spec`.
pub async fn compare(
    loaded: &Loaded,
    spec: &Compare,
    opts: &CompareOptions,
    edge: &impl Edge,
    signals: &Signals,
) -> CompareOutcome {
    let options = |release: &str| Options {
        run_id: state::new_run_id(),
        release: release.to_string(),
        // Kept after the suites for the load; torn down below, whatever happens.
        destroy: DestroyPolicy::Never,
        cold: opts.cold,
        up_only: false,
        state_root: opts.state_root.clone(),
        work_root: opts.work_root.clone(),
        run_as: opts.run_as.clone(),
        exit_code: opts.exit_code,
        name: None,
        shared: opts.shared.clone(),
        stage: None,
        pins: opts.pins.clone(),
        change: opts.change.clone(),
        member: None,
        from: None,
        twin: None,
        deploy_twin: false,
        chaos: None,
    };
    let (mut ob, mut oc) = (options(&opts.baseline), options(&opts.candidate));
    ob.deploy_twin = opts.deploy;
    // A compared deploy: the candidate's copy starts with the baseline and waits, its
    // load ready, for the baseline twin to be up.
    let ready = opts.deploy.then(|| {
        let (ready, twin) = super::deploy::Twin::new();
        (oc.from, oc.twin) = (Some(opts.baseline.clone()), Some(twin));
        ready
    });
    let baseline_run = async {
        let (rb, cb) = edge.rehearse(&ob).await;
        let (b, kb) = side(&opts.baseline, &ob, &rb, cb);
        if let Some(ready) = &ready {
            ready.say(twin_state(loaded, &b, kb.as_ref()));
        }
        (b, kb)
    };
    let ((mut baseline, kb), (rc, cc)) = tokio::join!(baseline_run, edge.rehearse(&oc));
    drop(ready);
    let (mut candidate, kc) = side(&opts.candidate, &oc, &rc, cc);
    let id = format!("c-{}", state::new_run_id().trim_start_matches("r-"));
    let dir = opts.state_root.join("compares").join(&id);
    if let Err(error) = std::fs::create_dir_all(&dir) {
        edge.note(Note::NoDirectory { dir: &dir, error: &error });
    }
    let sides = [kb.as_ref(), kc.as_ref()];
    // Each database's size and statement counters before the load, both at once.
    let (sb, sc) = tokio::join!(opts.psql.before(databases(sides[0])), opts.psql.before(databases(sides[1])));
    let measure = Load { loaded, spec, opts, dir: &dir, id: &id, edge, signals };
    measure.run(&mut baseline, &mut candidate, sides).await;
    (baseline.databases, candidate.databases) =
        tokio::join!(opts.psql.during(databases(sides[0]), sb), opts.psql.during(databases(sides[1]), sc));
    // Both down, from their journals, whatever came of them.
    let mut left = 0;
    for o in [&ob, &oc] {
        if !edge.down(&o.run_id).await {
            left += 1;
            edge.note(Note::NotTornDown { run_id: &o.run_id });
        }
    }
    let comparison = judged(loaded, spec, opts, id, baseline, candidate);
    let no_comparison = !comparison.baseline.built() || !comparison.candidate.built() || comparison.baseline.broken();
    let unwritten = report::write(&dir, &comparison).err();
    CompareOutcome { comparison, dir, unwritten, left, no_comparison }
}

fn databases(c: Option<&Connection>) -> Option<&BTreeMap<String, crate::description::template::DatabaseOutputs>> {
    c.map(|c| &c.databases)
}

/// What the deploy's load finds of the baseline twin: its address, or why there is none.
fn twin_state(loaded: &Loaded, b: &Side, kept: Option<&Connection>) -> super::deploy::TwinState {
    use super::deploy::TwinState;
    let target = super::deploy::settings(loaded).and_then(|s| s.load).map(|l| l.target).unwrap_or_default();
    match kept.and_then(|c| c.services.get(&target)).and_then(|s| load::target(&s.url)) {
        Some((host, port)) => TwinState::Serving(host, port),
        None if b.broken() => {
            TwinState::Gone(format!("the baseline {} did not pass its own rehearsal ({})", b.release, b.verdict))
        }
        None => TwinState::Gone(format!("the baseline's `{target}` has no address for the load")),
    }
}

/// One side as its run left it, and its connection when it passed and stays up for
/// the load. What cannot be read is the side's reason, never dropped.
fn side(release: &str, o: &Options, outcome: &RunOutcome, code: i32) -> (Side, Option<Connection>) {
    let report: Option<&RunReport> = outcome.report();
    let mut side = Side {
        release: release.to_string(),
        run_id: o.run_id.clone(),
        verdict: report.map(|r| r.verdict.as_str().to_string()).unwrap_or_else(|| "build-failed".into()),
        exit_code: code,
        reason: report.and_then(|r| r.reason.clone()).or_else(|| outcome.error_text()),
        migration_ms: report
            .map(|r| r.steps.iter().filter(|s| s.action == "install" && s.ok).map(|s| s.duration_ms as f64).collect())
            .unwrap_or_default(),
        backups: report.map(|r| r.backups.clone()).unwrap_or_default(),
        measured: Measured::default(),
        load_error: None,
        databases: BTreeMap::new(),
        deploy: report.and_then(|r| r.deploy.clone()),
    };
    let kept = kept(&mut side, &o.state_root);
    (side, kept)
}

/// The connection of a side that passed and stays up for the load; one that cannot be
/// read is why the load could not measure the side.
fn kept(side: &mut Side, state_root: &std::path::Path) -> Option<Connection> {
    if side.broken() {
        return None;
    }
    match Connection::read(&state::run_dir(state_root, &side.run_id), &side.run_id) {
        Ok(c) => Some(c),
        Err(e) => {
            side.load_error = Some(format!("its connection details cannot be read: {e}"));
            None
        }
    }
}

/// The load, on both sides at once, on what passed its suites and stayed up.
struct Load<'a, E: Edge> {
    loaded: &'a Loaded,
    spec: &'a Compare,
    opts: &'a CompareOptions,
    dir: &'a std::path::Path,
    id: &'a str,
    edge: &'a E,
    signals: &'a Signals,
}

impl<E: Edge> Load<'_, E> {
    async fn run(&self, baseline: &mut Side, candidate: &mut Side, kept: [Option<&Connection>; 2]) {
        let load = &self.spec.load;
        // A load command takes the URL as it is (https included); the replay speaks plain HTTP.
        let url_of = |c: Option<&Connection>| {
            let url = &c?.services.get(&load.target)?.url;
            (load.command.is_some() || load::target(url).is_some()).then(|| url.clone())
        };
        // A side that was never built leaves nothing to compare: no load at all then.
        let targets: Vec<(usize, String)> = match baseline.built() && candidate.built() {
            true => kept.iter().map(|c| url_of(*c)).enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).collect(),
            false => Vec::new(),
        };
        if targets.is_empty() || self.signals.count() > 0 {
            return;
        }
        let names = ["baseline", "candidate"];
        self.edge.note(Note::Load {
            command: load.command.as_deref(),
            rate: load.rate,
            duration: load.duration,
            sides: targets.iter().map(|(i, _)| names[*i]).collect(),
        });
        let measured = match load.command.is_some() {
            true => self.command(&targets, kept).await,
            false => {
                let hosts: Vec<(String, u16)> = targets.iter().filter_map(|(_, url)| load::target(url)).collect();
                tokio::select! {
                    m = load::replay(&self.opts.requests, &hosts, load.rate, load.duration, load.timeout) => {
                        m.into_iter().map(Ok).collect()
                    }
                    _ = self.signals.nth(1) => Vec::new(),
                }
            }
        };
        for ((i, _), m) in targets.iter().zip(measured) {
            let side = if *i == 0 { &mut *baseline } else { &mut *candidate };
            match m {
                Ok(m) => side.measured = m,
                Err(e) => {
                    let e = e.to_string();
                    self.edge.note(Note::NotMeasured { side: names[*i], error: &e });
                    side.load_error = Some(e);
                }
            }
        }
    }

    /// The description's own load command, once a side.
    async fn command(
        &self,
        targets: &[(usize, String)],
        kept: [Option<&Connection>; 2],
    ) -> Vec<Result<Measured, tool::ToolError>> {
        let sides: Vec<tool::Side> = targets
            .iter()
            .filter_map(|(i, _)| {
                let name = if *i == 0 { "baseline" } else { "candidate" };
                Some(tool::Side { name, services: &kept[*i]?.services })
            })
            .collect();
        let scratch = self.opts.work_root.join("compares").join(self.id);
        let own = [self.opts.state_root.clone(), self.opts.work_root.clone()];
        // Interrupted: the commands' process groups are killed as their futures drop.
        let m = tokio::select! {
            m = tool::run_all(&self.spec.load, self.loaded, &sides, &scratch, self.dir, self.opts.tool_user, &own) => m,
            _ = self.signals.nth(1) => Vec::new(),
        };
        // Best effort: the tool's scratch (its HOME and results) is read already.
        #[allow(clippy::let_underscore_must_use)]
        let _ = std::fs::remove_dir_all(&scratch);
        m
    }
}

/// The judge over both sides, and the comparison's one-line reason.
fn judged(
    loaded: &Loaded,
    spec: &Compare,
    opts: &CompareOptions,
    id: String,
    baseline: Side,
    candidate: Side,
) -> Comparison {
    let settings = Settings {
        confidence: spec.judge.confidence,
        tolerance: spec.judge.tolerance,
        min_samples: spec.judge.min_samples as usize,
        pass: spec.judge.pass,
        marginal: spec.judge.marginal,
    };
    let mut verdicts = judge_all(&baseline, &candidate, &spec.judge.critical, &settings);
    // A compared deploy: the traffic during the migration against the baseline twin's.
    if let Some(twin) = candidate.deploy.as_ref().and_then(|d| d.twin.as_ref()) {
        verdicts.extend(twin.verdicts.iter().cloned());
    }
    let mut score = judge::score(&verdicts, &settings);
    let reason = match why_no_verdict(&baseline, &candidate) {
        Some(why) => {
            score.outcome = Outcome::Fail;
            why
        }
        None if score.failed.is_empty() => score.reason.clone(),
        None => format!("{}; failed: {}", score.reason, score.failed.join(", ")),
    };
    let load = &spec.load;
    Comparison {
        schema_version: COMPARE_SCHEMA_VERSION,
        id,
        environment: loaded.desc.name.clone(),
        baseline,
        candidate,
        restored_from: opts.pins.clone(),
        load: serde_json::json!({
            "requests": load.requests.as_ref().map(|r| loaded.resolve(r).display().to_string()),
            "command": load.command,
            "format": load.command.as_ref().map(|_| load.format.as_str()),
            "target": load.target,
            "rate": load.rate,
            "duration": crate::description::format_duration(load.duration),
            "seed": opts.seed,
        }),
        settings,
        verdicts,
        score,
        reason,
        change: opts.change.clone(),
    }
}

/// Why the comparison fails whatever the judge says: a side never built (or
/// interrupted) leaves nothing to judge, a side that did not pass its own rehearsal
/// fails it, and so does a load that could not measure a side.
fn why_no_verdict(baseline: &Side, candidate: &Side) -> Option<String> {
    let sides = [("baseline", baseline), ("candidate", candidate)];
    let unbuilt: Vec<String> = sides
        .iter()
        .filter(|(_, s)| !s.built())
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
    let did_not_pass = |label: &str, s: &Side, so: &str| {
        let why = s.reason.as_deref().unwrap_or_default();
        format!("the {label} {} did not pass its own rehearsal ({}){so}: {why}", s.release, s.verdict)
    };
    if !unbuilt.is_empty() {
        Some(format!("nothing was compared: {}", unbuilt.join("; ")))
    } else if baseline.broken() {
        Some(did_not_pass("baseline", baseline, ", so there is nothing to compare against"))
    } else if candidate.broken() {
        Some(did_not_pass("candidate", candidate, ""))
    } else {
        let (label, e) = sides.iter().find_map(|(l, s)| s.load_error.as_ref().map(|e| (l, e)))?;
        Some(format!("the load could not measure the {label}: {e}"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::run::{AfterFailure, Ended, RunFailure};

    fn passed(release: &str) -> Side {
        Side {
            release: release.into(),
            run_id: "r-20261126-000000-0a0a0a".into(),
            verdict: "passed".into(),
            exit_code: 0,
            reason: None,
            migration_ms: Vec::new(),
            backups: Vec::new(),
            measured: Measured::default(),
            load_error: None,
            databases: BTreeMap::new(),
            deploy: None,
        }
    }

    #[test]
    fn a_side_whose_connection_cannot_be_read_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut baseline = passed("v2");
        assert!(kept(&mut baseline, dir.path()).is_none());
        let why = baseline.load_error.clone().unwrap_or_default();
        assert!(why.starts_with("its connection details cannot be read: "), "{why}");
        let reason = why_no_verdict(&baseline, &passed("v3")).unwrap_or_default();
        assert!(reason.starts_with("the load could not measure the baseline: its connection details"), "{reason}");
    }

    #[test]
    fn a_side_without_a_report_says_why() {
        let outcome = RunOutcome {
            run_id: "r-20261126-000000-0b0b0b".into(),
            took_over: None,
            ended: Ended::Failed { error: RunFailure::Crashed, teardown: AfterFailure::NothingStarted },
            unpublished: Vec::new(),
        };
        let o = Options {
            run_id: outcome.run_id.clone(),
            release: "v3".into(),
            destroy: DestroyPolicy::Never,
            cold: false,
            up_only: false,
            state_root: std::env::temp_dir(),
            work_root: std::env::temp_dir(),
            run_as: None,
            exit_code: |_, _| 3,
            name: None,
            shared: None,
            stage: None,
            pins: Pins::default(),
            change: None,
            member: None,
            from: None,
            twin: None,
            deploy_twin: false,
            chaos: None,
        };
        let (candidate, kept) = side("v3", &o, &outcome, 3);
        assert!(kept.is_none());
        assert_eq!(candidate.verdict, "build-failed");
        let reason = why_no_verdict(&passed("v2"), &candidate).unwrap_or_default();
        assert!(
            reason.contains("the candidate v3 could not be built (build-failed, exit 3): rehearse crashed"),
            "{reason}"
        );
    }
}
