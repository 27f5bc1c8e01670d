//! `sweep` as an operation: what has expired, as one list of candidates whichever
//! way it was found — whole runs from this machine's journals ([`super::inventory`]),
//! or resources found by the marks a provider lists ([`super::discover`]) — filtered
//! by the same rules (expired or crashed, old enough, of the environment asked for;
//! never a run in progress, another machine's local run, a stage's current
//! generation, or what the provider doubts rehearse made). Runs go through
//! [`super::down`]; resources found by marks are removed in the provider's rank order,
//! each run's kinds batched ([`super::teardown::destroy_in_waves`]), runs at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::discover::{DiscoverError, Marked};
use super::down::{lost_meta, LostRun};
use super::events::Reporter;
use super::inventory::{current_generation_of, NotHere, RunRow, RunStatus};
use super::provider::{DestroyError, DestroyErrorKind, Provider};
use super::stage::StageRef;
use super::store::ObjectStore;
use crate::sys::signals::Signals;
use crate::sys::timing::Clock;

/// What is swept.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Only what was started (or created) at least this long ago.
    pub min_age: Option<chrono::Duration>,
    /// Only what belongs to this environment.
    pub environment: Option<String>,
    pub now: DateTime<Utc>,
}

/// Something a sweep would remove.
#[derive(Clone, Debug)]
pub enum Candidate {
    /// A run torn down from its journal.
    Run(RunRow),
    /// A resource found by its marks.
    Marked(Marked),
}

impl Candidate {
    pub fn run_id(&self) -> &str {
        match self {
            Candidate::Run(r) => &r.run_id,
            Candidate::Marked(m) => &m.run_id,
        }
    }

    fn stage(&self) -> Option<&StageRef> {
        match self {
            Candidate::Run(r) => r.stage.as_ref(),
            Candidate::Marked(m) => m.stage.as_ref(),
        }
    }
}

/// Why an expired candidate is left alone.
#[derive(Clone, Debug)]
pub enum Kept {
    /// A local run this machine did not journal.
    NotHere { run_id: String, not_here: NotHere },
    /// A stage's current generation: no TTL removes it.
    CurrentGeneration { candidate: Candidate, stage: String },
    /// Its provider doubts rehearse made it (`Marked::doubt`).
    Doubtful(Marked),
}

/// What a sweep would remove, and what it leaves alone with why (in the order found).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub candidates: Vec<Candidate>,
    pub kept: Vec<Kept>,
}

/// Whether something started or created at `born`, expiring at `expires`, of
/// `environment`, is for this sweep (crashed runs count as expired).
fn due(opts: &SweepOptions, expired: bool, born: Option<DateTime<Utc>>, environment: Option<&str>) -> bool {
    expired
        && opts.min_age.is_none_or(|age| born.is_some_and(|b| opts.now - b >= age))
        && opts.environment.as_deref().is_none_or(|e| environment == Some(e))
}

/// The expired runs of `rows` (from [`super::inventory::scan`]).
pub async fn select_runs(
    rows: Vec<RunRow>,
    opts: &SweepOptions,
    stages: &(dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
) -> Selection {
    let mut sel = Selection::default();
    let due_runs = rows.into_iter().filter(|r| r.remaining > 0 && r.status != RunStatus::Running).filter(|r| {
        let expired = r.expires_at <= opts.now || r.status == RunStatus::Crashed;
        due(opts, expired, Some(r.started_at), Some(&r.environment))
    });
    let mut runs = Vec::new();
    // A local run this machine did not journal (its journal came from the store) names
    // nothing here that is provably its own: left alone, whatever its journal says.
    for r in due_runs {
        match &r.not_here {
            Some(n) => sel.kept.push(Kept::NotHere { run_id: r.run_id.clone(), not_here: n.clone() }),
            None => runs.push(Candidate::Run(r)),
        }
    }
    protect(runs, stages, &mut sel).await;
    sel
}

/// The expired resources of `marked` (from [`Provider::discover`]).
pub async fn select_marked(
    marked: Vec<Marked>,
    opts: &SweepOptions,
    stages: &(dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
) -> Selection {
    let mut sel = Selection::default();
    let due_marked: Vec<Candidate> = marked
        .into_iter()
        .filter(|m| due(opts, m.expires_at.is_some_and(|e| e <= opts.now), m.created_at, m.environment.as_deref()))
        .map(Candidate::Marked)
        .collect();
    let mut kept = Selection::default();
    protect(due_marked, stages, &mut kept).await;
    sel.kept = kept.kept;
    // Tags anyone may set are not enough: only what the provider shows rehearse made
    // is swept; the rest is listed, never touched.
    for c in kept.candidates {
        match c {
            Candidate::Marked(m) if m.doubt.is_some() => sel.kept.push(Kept::Doubtful(m)),
            c => sel.candidates.push(c),
        }
    }
    sel
}

/// Moves a stage's current generation from `candidates` to what `sel` keeps (each
/// run's stage asked once); the rest to its candidates.
async fn protect(
    candidates: Vec<Candidate>,
    stages: &(dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
    sel: &mut Selection,
) {
    let mut serving: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut store: Option<Option<Arc<dyn ObjectStore>>> = None;
    for c in candidates {
        let Some(stage) = c.stage().cloned() else {
            sel.candidates.push(c);
            continue;
        };
        let run = c.run_id().to_string();
        if !serving.contains_key(&run) {
            let store = store.get_or_insert_with(stages);
            serving.insert(run.clone(), current_generation_of(store.as_deref(), &run, &stage).await);
        }
        match serving.get(&run).cloned().flatten() {
            Some(stage) => sel.kept.push(Kept::CurrentGeneration { candidate: c, stage }),
            None => sel.candidates.push(c),
        }
    }
}

/// Why a sweep by marks did not get to removing anything.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
}

/// A resource a sweep by marks removed, or failed to.
#[derive(Debug)]
pub struct Swept {
    pub marked: Marked,
    pub error: Option<DestroyError>,
}

/// The expired resources `provider` finds by their marks (any run's); removed when
/// `remove` (else only selected), through [`remove_marked`].
pub async fn sweep_marked<P: Provider>(
    provider: &P,
    opts: &SweepOptions,
    stages: &(dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
    remove: Option<(&LostRun, &dyn Reporter, &Signals)>,
) -> Result<(Selection, Vec<Swept>), SweepError> {
    let all = provider.discover(None).await?;
    let sel = select_marked(all, opts, stages).await;
    let swept = match remove {
        Some((lost, reporter, signals)) => {
            let marked = sel.candidates.iter().filter_map(|c| match c {
                Candidate::Marked(m) => Some(m.clone()),
                Candidate::Run(_) => None,
            });
            remove_marked(provider, marked.collect(), lost, reporter, signals).await
        }
        None => Vec::new(),
    };
    Ok((sel, swept))
}

/// Removes resources found by marks: each run's through the guard of that run, in the
/// provider's rank order with each kind batched; runs at once. In the order given.
pub async fn remove_marked<P: Provider>(
    provider: &P,
    marked: Vec<Marked>,
    lost: &LostRun,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Vec<Swept> {
    let mut runs: BTreeMap<&str, Vec<&Marked>> = BTreeMap::new();
    for m in &marked {
        runs.entry(m.run_id.as_str()).or_default().push(m);
    }
    let clock = Clock::new();
    let waves = futures_util::future::join_all(runs.iter().map(|(run_id, ms)| {
        let entries: Vec<_> = ms.iter().map(|m| m.entry()).collect();
        let meta = lost_meta(run_id, lost);
        let clock = &clock;
        async move {
            super::teardown::destroy_in_waves(
                provider,
                &entries,
                &meta,
                None,
                reporter,
                signals,
                signals.count() + 1,
                clock,
            )
            .await
        }
    }))
    .await;
    let done: Vec<(&str, super::teardown::Waves)> = runs.keys().copied().zip(waves).collect();
    marked
        .iter()
        .map(|m| {
            let attempt = done
                .iter()
                .filter(|(run, _)| *run == m.run_id)
                .flat_map(|(_, w)| w.destroyed.iter())
                .find(|d| d.id == m.id && d.kind == m.kind);
            let error = match attempt {
                Some(d) => d.error.clone(),
                None => Some(DestroyError::new(DestroyErrorKind::Unavailable, "not attempted: the sweep was stopped")),
            };
            Swept { marked: m.clone(), error }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The local sweep and the local `down` without a journal, through the engine,
    //! with the local provider on a state directory and its directory store (where
    //! stage records live).
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::engine::down::{self, DownOptions, Located, Source};
    use crate::engine::events::Silent;
    use crate::engine::journal::{Journal, RunMeta};
    use crate::engine::stage::{Generation, StageRecord};
    use crate::engine::store::file::FileStore;
    use crate::plan::Kind;
    use crate::providers::local::LocalProvider;

    /// A run of `id` whose process died (crashed), expired, with a workspace holding a
    /// file; `stage`: the generation it is; `here`: journaled by this machine.
    async fn crashed(root: &Path, work: &Path, id: &str, stage: Option<StageRef>, here: bool) -> PathBuf {
        let ws = work.join("runs").join(id);
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("file"), "x").unwrap();
        let dir = crate::sys::state::run_dir(root, id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut meta = RunMeta::sample(id, "local", Some(ws.to_str().unwrap()));
        meta.pid = 999_999_999;
        meta.expires_at = Utc::now() - chrono::Duration::hours(1);
        meta.stage = stage;
        let j = Journal::create(&dir.join("journal.jsonl"), &meta).unwrap();
        j.created("workspace", Kind::Workspace, serde_json::json!({ "dir": ws })).await.unwrap();
        if !here {
            std::fs::remove_file(dir.join(crate::engine::journal::HERE)).unwrap();
        }
        ws
    }

    fn opts<'a>(
        run_id: &'a str,
        root: &'a Path,
        work: &Path,
        stages: &'a (dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
        signals: &'a Signals,
    ) -> DownOptions<'a> {
        DownOptions {
            run_id,
            generation: None,
            state_root: root,
            shared: None,
            stages,
            lost: LostRun {
                provider: crate::description::ProviderKind::Local,
                region: None,
                work_dir: Some(std::path::absolute(work).unwrap().join("runs").join(run_id)),
            },
            by_marks: format!("rehearse down {run_id}"),
            reporter: &Silent,
            signals,
        }
    }

    #[tokio::test]
    async fn a_local_sweep_removes_expired_runs_only_and_keeps_a_stages_current_generation_and_others_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("state"), dir.path().join("work"));
        let (a, b, c) = ("r-20261125-000000-00000a", "r-20261125-000000-00000b", "r-20261125-000000-00000c");
        let serving = StageRef { stage: "staging".into(), generation: 2 };
        let ws_a = crashed(&root, &work, a, None, true).await;
        let ws_b = crashed(&root, &work, b, Some(serving.clone()), true).await;
        let ws_c = crashed(&root, &work, c, None, false).await;
        // The stage's record (in the directory store) says run b is its current generation.
        let store = Arc::new(FileStore::open(&root).unwrap()) as Arc<dyn ObjectStore>;
        let mut record = StageRecord::new("staging", "shop", "local", Default::default());
        record.generations.push(Generation::building(2, b, "v2", Utc::now()));
        record.current = Some(2);
        let body = serde_json::to_vec(&record).unwrap();
        store
            .put(&crate::engine::stage::record_key("staging"), body, crate::engine::store::Condition::Always)
            .await
            .unwrap();
        let stages = || Some(store.clone());

        let sweep_opts = SweepOptions { min_age: None, environment: None, now: Utc::now() };
        let rows = crate::engine::inventory::scan(&root);
        assert!(rows.iter().all(|r| r.status == RunStatus::Crashed), "{rows:?}");
        let sel = select_runs(rows, &sweep_opts, &stages).await;
        let ids: Vec<&str> = sel.candidates.iter().map(Candidate::run_id).collect();
        assert_eq!(ids, [a]);
        assert!(
            matches!(&sel.kept[..], [Kept::NotHere { run_id, .. }, Kept::CurrentGeneration { stage, .. }]
                if run_id == c && stage == "staging"),
            "{:?}",
            sel.kept
        );
        // Older than asked for, or of another environment: nothing.
        let older = SweepOptions { min_age: Some(chrono::Duration::days(1)), ..sweep_opts.clone() };
        assert!(select_runs(crate::engine::inventory::scan(&root), &older, &stages).await.candidates.is_empty());
        let other = SweepOptions { environment: Some("other".into()), ..sweep_opts.clone() };
        assert!(select_runs(crate::engine::inventory::scan(&root), &other, &stages).await.candidates.is_empty());

        // Each candidate goes through `down`, which refuses the others as well.
        let provider = LocalProvider::new(&work);
        let signals = Signals::none();
        let located = down::locate(Some(&root), a).unwrap();
        assert!(matches!(located, Located::Journal { .. }));
        let done = down::down(&provider, located, &opts(a, &root, &work, &stages, &signals)).await.unwrap();
        assert!(done.complete() && done.source == Source::Journal);
        assert!(!ws_a.exists(), "the swept run's workspace is still there");
        for (run, why) in [(b, "current generation"), (c, "not this host's run")] {
            let located = down::locate(Some(&root), run).unwrap();
            let refused = down::down(&provider, located, &opts(run, &root, &work, &stages, &signals)).await;
            assert!(matches!(&refused, Err(e) if e.refused() && e.to_string().contains(why)), "{run}");
        }
        assert!(ws_b.exists() && ws_c.exists());
        // A record that cannot be read protects the generation too.
        let none = || None;
        let sel = select_runs(crate::engine::inventory::scan(&root), &sweep_opts, &none).await;
        assert!(sel
            .kept
            .iter()
            .any(|k| matches!(k, Kept::CurrentGeneration { stage, .. } if stage.contains("cannot be read"))));
    }

    #[tokio::test]
    async fn a_local_down_without_a_journal_removes_the_runs_workspace_found_by_its_marks() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("state"), dir.path().join("work"));
        let id = "r-20261125-000000-00000d";
        let ws = work.join("runs").join(id);
        std::fs::create_dir_all(ws.join("db")).unwrap();
        let provider = LocalProvider::new(&work);
        let signals = Signals::none();
        let stages = || None;
        let located = down::locate(Some(&root), id).unwrap();
        assert!(matches!(located, Located::Lost(None)));
        let done = down::down(&provider, located, &opts(id, &root, &work, &stages, &signals)).await.unwrap();
        assert_eq!(done.source, Source::Marks(1));
        assert!(done.complete(), "{:?}", done.teardown.as_ref().map(|t| t.listed("")));
        assert!(!ws.exists());
        // The rebuilt journal says so; a second `down` has nothing left to find.
        let located = down::locate(Some(&root), id).unwrap();
        assert!(matches!(located, Located::Journal { .. }));
        let again = down::down(&provider, Located::Lost(None), &opts(id, &root, &work, &stages, &signals)).await;
        assert!(matches!(again, Ok(d) if d.source == Source::Nothing));
    }
}
