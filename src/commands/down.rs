//! `rehearse down` and `rehearse sweep`: the command side of [`crate::engine::down`]
//! and [`crate::engine::sweep`] — which provider, then what happened, said, and its
//! exit code. A sweep of this machine's runs is `down` of each expired one, all in
//! this process's one runtime.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::{checked_state, reporter, runtime};
use crate::cli::Global;
use crate::engine::down::{self as op, DownError, DownOptions, Downed, Located, LostRun, Source};
use crate::engine::events::Reporter;
use crate::engine::journal::RunMeta;
use crate::engine::store::ObjectStore;
use crate::engine::sweep::{self, Candidate, Kept, SweepOptions};
use crate::engine::teardown;
use crate::exit;
use crate::providers::aws::TAG_RUN;
use crate::providers::local::LocalProvider;
use crate::sys::signals::Signals;
use crate::sys::state;

pub(crate) fn down(g: &Global, run_id: &str, region: Option<&str>) -> i32 {
    down_run(g, run_id, region, None)
}

/// `down`; with `generation` (a rebuild or `stage destroy` tearing down that stage's
/// generation), also a stage's current generation — and only a run whose journal says
/// it is that generation.
pub(crate) fn down_run(
    g: &Global,
    run_id: &str,
    region: Option<&str>,
    generation: Option<&crate::engine::stage::StageRef>,
) -> i32 {
    if !state::valid_run_id(run_id) {
        errln!("error: `{run_id}` is not a run id (they look like r-20261125-164001-7f3a9c); see `rehearse list`");
        return exit::USAGE;
    }
    let state_root = match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let reporter = reporter(g);
    runtime().block_on(async {
        // Without signal handlers, `down` still works: it only cannot be stopped early.
        let signals = Signals::install().unwrap_or_else(|_| Signals::none());
        let Some(edge) = Edge::open(g, reporter.as_ref(), &signals).await else { return exit::USAGE };
        edge.down(run_id, state_root.as_deref(), region, generation).await
    })
}

/// What every `down` of a command shares: the state stores, the reporter, the signals.
struct Edge<'a> {
    g: &'a Global,
    shared: Option<Arc<dyn ObjectStore>>,
    url: Option<state::StateUrl>,
    reporter: &'a dyn Reporter,
    signals: &'a Signals,
}

/// Which provider a run's resources are found and removed by.
enum Which {
    Aws(String),
    Local,
}

impl<'a> Edge<'a> {
    async fn open(g: &'a Global, reporter: &'a dyn Reporter, signals: &'a Signals) -> Option<Edge<'a>> {
        let url = super::store::url(g).ok()?;
        let shared = super::store::shared_for(url.clone()).await.ok()?;
        Some(Edge { g, shared, url, reporter, signals })
    }

    /// Where stage records live, opened when asked (`None`: it cannot be).
    fn stages(&self) -> Option<Arc<dyn ObjectStore>> {
        super::store::stage_store(self.g, self.url.as_ref(), self.shared.clone())
    }

    /// `down RUN_ID` with `region` for a run whose journal is lost, said; its exit code.
    async fn down(
        &self,
        run_id: &str,
        state_root: Option<&Path>,
        region: Option<&str>,
        generation: Option<&crate::engine::stage::StageRef>,
    ) -> i32 {
        let located = match op::locate(state_root, run_id) {
            Ok(l) => l,
            Err(e) => return said(&e),
        };
        let which = match &located {
            Located::Journal { meta, .. } if meta.provider == "aws" => match meta.region.as_deref().or(region) {
                Some(r) => Which::Aws(r.to_string()),
                None => {
                    errln!("error: the journal of {run_id} names no region: pass --region REGION");
                    return exit::USAGE;
                }
            },
            Located::Journal { .. } => Which::Local,
            Located::Lost(lost) => {
                if let Some(lost) = lost {
                    errln!("rehearse: {lost}; looking for what is tagged with {run_id} instead");
                }
                match region {
                    Some(r) => Which::Aws(r.to_string()),
                    None => Which::Local,
                }
            }
        };
        let work_root = state::work_dir();
        let stages = || self.stages();
        let root = super::store::local_root_for(self.g, self.url.as_ref());
        let mut opts = DownOptions {
            run_id,
            generation,
            state_root: &root,
            shared: self.shared.clone(),
            stages: &stages,
            lost: LostRun::default(),
            by_marks: String::new(),
            reporter: self.reporter,
            signals: self.signals,
        };
        match which {
            Which::Aws(region) => {
                opts.lost = LostRun { provider: "aws".into(), region: Some(region.clone()), work_dir: None };
                opts.by_marks = format!("rehearse down {run_id} --region {region}");
                let provider = super::aws_provider(&region).await;
                let provider = match &located {
                    Located::Journal { meta, .. } => match description_at_hand(meta) {
                        Some(loaded) => provider.with_runner_outputs_of(&loaded),
                        None => provider,
                    },
                    Located::Lost(_) => provider,
                };
                render(op::down(&provider, located, &opts).await, Some(&region))
            }
            Which::Local => {
                let work = std::path::absolute(&work_root).unwrap_or_else(|_| work_root.clone());
                let work = work.join("runs").join(run_id);
                opts.lost = LostRun { provider: "local".into(), region: None, work_dir: Some(work) };
                opts.by_marks = format!("rehearse down {run_id}");
                let provider = LocalProvider::new(&work_root);
                render(op::down(&provider, located, &opts).await, None)
            }
        }
    }
}

/// A refusal or failure of `down`, said; its exit code.
fn said(e: &DownError) -> i32 {
    match e {
        DownError::NotHere { .. } | DownError::NotHereAtTeardown { .. } => errln!("rehearse: {e}"),
        _ => errln!("error: {e}"),
    }
    if e.refused() {
        exit::USAGE
    } else {
        exit::BUILD_FAILED
    }
}

/// What `down` did, said; its exit code. `region`: an AWS run's.
fn render(downed: Result<Downed, DownError>, region: Option<&str>) -> i32 {
    let d = match (downed, region) {
        (Ok(d), _) => d,
        (Err(DownError::Discover(e)), Some(region)) => {
            errln!("error: cannot list rehearse's resources in {region}: {}", e.message);
            return exit::BUILD_FAILED;
        }
        (Err(e), _) => return said(&e),
    };
    let run_id = d.run_id.as_str();
    for m in &d.doubtful {
        errln!(
            "rehearse: not removing {} {} although it is tagged {TAG_RUN}={run_id}: {}",
            m.kind,
            m.provider_id,
            m.doubt.as_deref().unwrap_or_default()
        );
    }
    match (d.source, region) {
        (Source::Nothing, Some(region)) => {
            errln!("rehearse: no journal and nothing tagged {TAG_RUN}={run_id} in {region}: nothing to remove");
            return exit::PASSED;
        }
        (Source::Nothing, None) => {
            errln!(
                "rehearse: no journal and nothing tagged with {run_id} on this machine: nothing to remove \
                 (an AWS run? pass --region)"
            );
            return exit::PASSED;
        }
        (Source::Marks(n), Some(region)) => {
            errln!("rehearse: no journal for {run_id}; removing the {n} resource(s) tagged with it in {region}")
        }
        (Source::Marks(_), None) => errln!("rehearse: no journal for {run_id}; removing what is tagged with it"),
        (Source::Journal, _) => {}
    }
    if !d.still_marked.is_empty() {
        errln!(
            "rehearse: {} resource(s) still tagged {TAG_RUN}={run_id} after the teardown from its journal (which \
             says they are gone, or does not name them): removing them",
            d.still_marked.len()
        );
    }
    for s in &d.still_marked {
        match &s.error {
            None => errln!("rehearse: removed {} {} (tagged {TAG_RUN}={run_id})", s.marked.kind, s.marked.provider_id),
            Some(e) => errln!("rehearse: cannot remove {} {}: {e}", s.marked.kind, s.marked.provider_id),
        }
    }
    for w in &d.warnings {
        errln!("rehearse: warning: {w}");
    }
    match &d.teardown {
        Some(out) if !out.complete() => {
            err!(
                "{}",
                teardown::leftover_text(
                    run_id,
                    &out.listed(&format!("rehearse down {run_id} (--region REGION for an AWS run)"))
                )
            );
            exit::LEFTOVERS
        }
        _ => {
            outln!("{run_id}: torn down, nothing left");
            exit::PASSED
        }
    }
}

/// The run's description, read again from this machine's disk, for what a journal
/// must not decide (the runner's outputs bucket): only if it is there, no one but its
/// owners could have written it (as for masking SQL), and it loads. The path is the
/// journal's word, but what it names is a file this machine already trusts or nothing.
fn description_at_hand(meta: &RunMeta) -> Option<crate::description::Loaded> {
    let path = Path::new(&meta.description);
    if meta.description.is_empty() || !path.is_absolute() || !path.is_file() {
        return None;
    }
    if let Err(e) = crate::sys::secure_fs::check_input(path) {
        errln!("rehearse: not reading the run's description again: {e}");
        return None;
    }
    crate::description::load(path, Some(&meta.release)).ok()
}

/// `sweep --older-than`: from nothing to ten years (older is older than rehearse).
const MIN_AGE: std::time::Duration = std::time::Duration::ZERO;
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3650 * 86400);

/// `rehearse sweep`: this machine's expired runs from their journals, or with
/// `region`, the expired resources rehearse tagged there.
pub(crate) fn sweep(
    g: &Global,
    yes: bool,
    older_than: Option<&str>,
    environment: Option<&str>,
    region: Option<&str>,
) -> i32 {
    let min_age = match older_than.map(|t| crate::description::bounded_duration("--older-than", t, MIN_AGE, MAX_AGE)) {
        None => None,
        Some(Ok(d)) => Some(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
        Some(Err(why)) => {
            errln!("error: {why}");
            return exit::USAGE;
        }
    };
    let opts = SweepOptions { min_age, environment: environment.map(str::to_string), now: Utc::now() };
    let state_root = match region {
        Some(_) => None,
        None => match checked_state(g) {
            Ok(r) => r,
            Err(code) => return code,
        },
    };
    let reporter = reporter(g);
    runtime().block_on(async {
        let signals = Signals::install().unwrap_or_else(|_| Signals::none());
        let Some(edge) = Edge::open(g, reporter.as_ref(), &signals).await else { return exit::USAGE };
        match region {
            Some(region) => sweep_region(&edge, region, yes, &opts).await,
            None => sweep_here(&edge, state_root.as_deref(), yes, &opts).await,
        }
    })
}

/// `sweep`: the expired runs of this machine's state directory, each `down` in turn.
async fn sweep_here(edge: &Edge<'_>, state_root: Option<&Path>, yes: bool, opts: &SweepOptions) -> i32 {
    let rows = state_root.map(crate::engine::inventory::scan).unwrap_or_default();
    let stages = || edge.stages();
    let sel = sweep::select_runs(rows, opts, &stages).await;
    for k in &sel.kept {
        match k {
            Kept::NotHere { run_id, not_here } => {
                outln!("{run_id}: not this host's run: left alone ({}{})", not_here.why, not_here.claim())
            }
            Kept::CurrentGeneration { candidate, stage } => {
                outln!("keeping {}: the current generation of stage `{stage}`", candidate.run_id())
            }
            Kept::Doubtful(_) => {}
        }
    }
    let runs: Vec<_> = sel
        .candidates
        .iter()
        .filter_map(|c| match c {
            Candidate::Run(r) => Some(r),
            Candidate::Marked(_) => None,
        })
        .collect();
    if runs.is_empty() {
        outln!("nothing to sweep: no expired rehearse environment on this machine");
        return exit::PASSED;
    }
    for r in &runs {
        outln!(
            "{} {} ({}, release {}, {}, expired {})",
            if yes { "removing" } else { "would remove" },
            r.run_id,
            r.environment,
            r.release,
            r.status,
            r.expires_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    if !yes {
        outln!("dry run: {} environment(s); run `rehearse sweep --yes` to remove them", runs.len());
        return exit::PASSED;
    }
    let mut code = exit::PASSED;
    for r in &runs {
        let c = edge.down(&r.run_id, state_root, None, None).await;
        if c != exit::PASSED {
            code = c;
        }
    }
    code
}

/// `sweep --region`: every resource tagged by rehearse in the region whose
/// `rehearse:expires-at` has passed (and matching the filters); listed, and with
/// `--yes` removed through the guard. Untagged resources are never considered, and an
/// unexpired one (a run in progress, a kept environment within its TTL) never matches.
async fn sweep_region(edge: &Edge<'_>, region: &str, yes: bool, opts: &SweepOptions) -> i32 {
    let provider = super::aws_provider(region).await;
    let stages = || edge.stages();
    let lost = LostRun { provider: "aws".into(), region: Some(region.to_string()), work_dir: None };
    let remove = yes.then_some((&lost, edge.reporter, edge.signals));
    let (sel, swept) = match sweep::sweep_marked(&provider, opts, &stages, remove).await {
        Ok(done) => done,
        Err(sweep::SweepError::Discover(e)) => {
            errln!("error: cannot list rehearse's resources in {region}: {}", e.message);
            return exit::BUILD_FAILED;
        }
    };
    for k in &sel.kept {
        match k {
            Kept::CurrentGeneration { candidate: Candidate::Marked(m), stage } => {
                outln!("keeping {} {}: the current generation of stage `{stage}`", m.kind, m.provider_id)
            }
            Kept::Doubtful(m) => outln!(
                "not sweeping {} {}: it carries rehearse's tags, but {}",
                m.kind,
                m.provider_id,
                m.doubt.as_deref().unwrap_or_default()
            ),
            _ => {}
        }
    }
    if sel.candidates.is_empty() {
        outln!("nothing to sweep: no expired rehearse resource in {region}");
        return exit::PASSED;
    }
    let expires = |m: &crate::engine::discover::Marked| {
        m.expires_at.map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
    };
    if !yes {
        for c in &sel.candidates {
            if let Candidate::Marked(m) = c {
                outln!("would remove {} {} (run {}, expired {})", m.kind, m.provider_id, m.run_id, expires(m));
            }
        }
        outln!(
            "dry run: {} resource(s); run `rehearse sweep --region {region} --yes` to remove them",
            sel.candidates.len()
        );
        return exit::PASSED;
    }
    let mut code = exit::PASSED;
    for s in &swept {
        let m = &s.marked;
        match &s.error {
            None => outln!("removed {} {} (run {}, expired {})", m.kind, m.provider_id, m.run_id, expires(m)),
            Some(e) => {
                errln!("error: could not remove {} {}: {e}", m.kind, m.provider_id);
                code = exit::LEFTOVERS;
            }
        }
    }
    code
}
