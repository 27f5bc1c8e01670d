//! A run torn down as `rehearse down` does it, for every command that tears one down
//! (`down`, `sweep`, a stage's rebuild, `compare`'s twins): which provider, the engine's
//! [`crate::engine::down`], and what happened said, with its exit code and — for a
//! command that must say why in its own words (a rebuild) — the outcome itself
//! ([`Down`]).

use std::path::Path;
use std::sync::Arc;

use crate::cli::Global;
use crate::description::ProviderKind;
use crate::engine::down::{self as op, DownError, DownOptions, Downed, Located, LostRun, Source};
use crate::engine::events::Reporter;
use crate::engine::journal::RunMeta;
use crate::engine::stage::StageRef;
use crate::engine::store::ObjectStore;
use crate::engine::teardown;
use crate::exit;
use crate::providers::aws::TAG_RUN;
use crate::providers::local::LocalProvider;
use crate::sys::signals::Signals;
use crate::sys::state;

/// `rehearse down RUN_ID` (`region`: for a run whose journal is lost); with
/// `generation` (a rebuild or `stage destroy` tearing down that stage's generation),
/// also a stage's current generation — and only a run whose journal says it is that
/// generation. Said; its exit code.
pub(crate) async fn down(
    g: &Global,
    run_id: &str,
    region: Option<&str>,
    generation: Option<&StageRef>,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> i32 {
    if !state::valid_run_id(run_id) {
        errln!("error: `{run_id}` is not a run id (they look like r-20261125-164001-7f3a9c); see `rehearse list`");
        return exit::USAGE;
    }
    let state_root = match crate::commands::checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(edge) = Edge::open(g, reporter, signals).await else { return exit::USAGE };
    edge.down(run_id, state_root.as_deref(), region, generation).await.code
}

/// How a `down` asked for by another command ended: said already, with its exit code,
/// and what happened, typed.
pub(crate) struct Down {
    pub(crate) code: i32,
    pub(crate) end: DownEnd,
}

/// What a `down` came to: the engine's outcome, or the edge's refusal before it.
pub(crate) enum DownEnd {
    /// The engine's `down` ran (or refused the run).
    Engine(Result<Downed, DownError>),
    /// The edge did not get as far as the engine (said above).
    Edge(EdgeRefusal),
}

/// Why the edge did not ask the engine to tear a run down.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct EdgeRefusal(String);

impl Down {
    fn edge(code: i32, why: impl Into<String>) -> Down {
        Down { code, end: DownEnd::Edge(EdgeRefusal(why.into())) }
    }

    /// The engine's outcome, said; its exit code with it.
    fn rendered(downed: Result<Downed, DownError>, region: Option<&str>) -> Down {
        Down { code: render(&downed, region), end: DownEnd::Engine(downed) }
    }
}

/// [`down`] as another command asks for it (a stage's rebuild or `destroy`, `compare`'s
/// twins): the shared store's copy of the run fetched first, said with `down`'s own
/// reporter and signal handlers.
pub(crate) async fn down_fetched(g: &Global, run_id: &str, generation: Option<&StageRef>) -> Down {
    use crate::commands::store::{self, Part};
    match store::url(g) {
        Ok(Some(state::StateUrl::S3 { .. })) => {
            if let Err(code) = store::fetch(g, run_id, &[Part::Journal, Part::Connection]).await {
                return Down::edge(code, "its journal cannot be fetched from the state store");
            }
        }
        Ok(_) => {}
        Err(code) => return Down::edge(code, "the state store's address is not usable"),
    }
    if !state::valid_run_id(run_id) {
        errln!("error: `{run_id}` is not a run id (they look like r-20261125-164001-7f3a9c); see `rehearse list`");
        return Down::edge(exit::USAGE, format!("`{run_id}` is not a run id"));
    }
    let state_root = match crate::commands::checked_state(g) {
        Ok(r) => r,
        Err(code) => return Down::edge(code, "the state directory is not usable"),
    };
    let reporter = crate::commands::reporter(g);
    // Without signal handlers, `down` still works: it only cannot be stopped early.
    let signals = Signals::install().unwrap_or_else(|_| Signals::none());
    let Some(edge) = Edge::open(g, reporter.as_ref(), &signals).await else {
        return Down::edge(exit::USAGE, "the state store cannot be opened");
    };
    edge.down(run_id, state_root.as_deref(), None, generation).await
}

/// What every `down` of a command shares: the state stores, the reporter, the signals.
pub(crate) struct Edge<'a> {
    pub(crate) g: &'a Global,
    pub(crate) shared: Option<Arc<dyn ObjectStore>>,
    pub(crate) url: Option<state::StateUrl>,
    pub(crate) reporter: &'a dyn Reporter,
    pub(crate) signals: &'a Signals,
}

/// Which provider a run's resources are found and removed by.
enum Which {
    Aws(String),
    Local,
}

impl<'a> Edge<'a> {
    pub(crate) async fn open(g: &'a Global, reporter: &'a dyn Reporter, signals: &'a Signals) -> Option<Edge<'a>> {
        let url = crate::commands::store::url(g).ok()?;
        let shared = crate::commands::store::shared_for(url.clone()).await.ok()?;
        Some(Edge { g, shared, url, reporter, signals })
    }

    /// Where stage records live, opened when asked (`None`: it cannot be).
    pub(crate) fn stages(&self) -> Option<Arc<dyn ObjectStore>> {
        crate::commands::store::stage_store(self.g, self.url.as_ref(), self.shared.clone())
    }

    /// `down RUN_ID` with `region` for a run whose journal is lost, said; its exit code
    /// and outcome.
    pub(crate) async fn down(
        &self,
        run_id: &str,
        state_root: Option<&Path>,
        region: Option<&str>,
        generation: Option<&crate::engine::stage::StageRef>,
    ) -> Down {
        let located = match op::locate(state_root, run_id) {
            Ok(l) => l,
            Err(e) => return Down { code: said(&e), end: DownEnd::Engine(Err(e)) },
        };
        let which = match &located {
            Located::Journal { meta, .. } if meta.provider == ProviderKind::Aws => {
                match meta.region.as_deref().or(region) {
                    Some(r) => Which::Aws(r.to_string()),
                    None => {
                        errln!("error: the journal of {run_id} names no region: pass --region REGION");
                        return Down::edge(exit::USAGE, format!("the journal of {run_id} names no region"));
                    }
                }
            }
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
        let root = crate::commands::store::local_root_for(self.g, self.url.as_ref());
        // What `down` knows of a run whose journal is lost, and the command that finds
        // it by its marks again.
        let opts = |lost: LostRun, by_marks: String| DownOptions {
            run_id,
            generation,
            state_root: &root,
            shared: self.shared.clone(),
            stages: &stages,
            lost,
            by_marks,
            reporter: self.reporter,
            signals: self.signals,
        };
        match which {
            Which::Aws(region) => {
                let opts = opts(
                    LostRun { provider: ProviderKind::Aws, region: Some(region.clone()), work_dir: None },
                    format!("rehearse down {run_id} --region {region}"),
                );
                let provider = crate::commands::aws_provider(&region).await;
                let provider = match &located {
                    Located::Journal { meta, .. } => match description_at_hand(meta) {
                        Some(loaded) => provider.with_runner_outputs_of(&loaded),
                        None => provider,
                    },
                    Located::Lost(_) => provider,
                };
                Down::rendered(op::down(&provider, located, &opts).await, Some(&region))
            }
            Which::Local => {
                let work = std::path::absolute(&work_root).unwrap_or_else(|_| work_root.clone());
                let work = work.join("runs").join(run_id);
                let opts = opts(
                    LostRun { provider: ProviderKind::Local, region: None, work_dir: Some(work) },
                    format!("rehearse down {run_id}"),
                );
                let provider = LocalProvider::new(&work_root);
                Down::rendered(op::down(&provider, located, &opts).await, None)
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
fn render(downed: &Result<Downed, DownError>, region: Option<&str>) -> i32 {
    let d = match (downed, region) {
        (Ok(d), _) => d,
        (Err(DownError::Discover(e)), Some(region)) => {
            errln!("error: cannot list rehearse's resources in {region}: {}", e.message);
            return exit::BUILD_FAILED;
        }
        (Err(e), _) => return said(e),
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
