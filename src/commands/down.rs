//! `rehearse down` and `rehearse sweep`: the command side of [`crate::engine::down`]
//! and [`crate::engine::sweep`] — which provider, then what happened, said, and its
//! exit code. A sweep of this machine's runs is `down` of each expired one, all in
//! this process's one runtime.

use std::path::Path;

use chrono::Utc;

use super::edge::{self, down::Edge};
use super::{checked_state, reporter, runtime};
use crate::cli::Global;
use crate::engine::down::LostRun;
use crate::engine::sweep::{self, Candidate, Kept, SweepOptions};
use crate::exit;
use crate::sys::signals::Signals;
use crate::sys::state;

pub(crate) fn down(g: &Global, run_id: &str, region: Option<&str>) -> i32 {
    let reporter = reporter(g);
    runtime().block_on(async {
        // Without signal handlers, `down` still works: it only cannot be stopped early.
        let signals = Signals::install().unwrap_or_else(|_| Signals::none());
        edge::down::down(g, run_id, region, None, reporter.as_ref(), &signals).await
    })
}

/// `rehearse sweep`: this machine's expired runs from their journals, or with
/// `region`, the expired resources rehearse tagged there.
pub(crate) fn sweep(
    g: &Global,
    yes: bool,
    older_than: Option<std::time::Duration>,
    environment: Option<&str>,
    region: Option<&str>,
) -> i32 {
    let min_age = older_than.map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
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
    // Copy-on-write generations left mounted, or old and unused.
    // With no state directory here, no copy is said to have lost its journal.
    let journaled = |run_id: &str| state_root.is_none_or(|s| state::run_dir(s, run_id).exists());
    let golden = state::work_dir().join("golden");
    let generations = crate::providers::local::cow::sweep(&golden, &journaled, yes).await;
    for l in &generations {
        outln!("{l}");
    }
    if runs.is_empty() {
        if generations.is_empty() {
            outln!("nothing to sweep: no expired rehearse environment on this machine");
        }
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
        let c = edge.down(&r.run_id, state_root, None, None).await.code;
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
    let lost =
        LostRun { provider: crate::description::ProviderKind::Aws, region: Some(region.to_string()), work_dir: None };
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
