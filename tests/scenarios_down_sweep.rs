//! `down` without a journal and `sweep` by tags, through the engine's operations,
//! against the seeded fault-injecting fake cloud on tokio's paused clock: a run of the
//! shop is killed at a random virtual instant and its journal is lost; then either
//! `down` finds what it made by its tags ([`rehearse::engine::down`], from discovery),
//! or a sweep of the region removes it once expired ([`rehearse::engine::sweep`],
//! batched by rank). Each must leave nothing, never change what the run does not own,
//! and never touch production; a sweep before the expiry, or a dry run, removes
//! nothing. A failing seed is printed; `REHEARSE_SEED=N` reruns just that one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::down::{self, DownOptions, LostRun, Source};
use rehearse::engine::events::Silent;
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::store::ObjectStore;
use rehearse::engine::sweep::{self, Candidate, Kept, SweepOptions};
use rehearse::providers::aws::{self, AwsProvider};
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};

fn description(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.join("shop-aws.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn seeds(n: u64) -> Vec<u64> {
    match std::env::var("REHEARSE_SEED") {
        Ok(s) => vec![s.parse().expect("REHEARSE_SEED is a number")],
        Err(_) => (0..n).collect(),
    }
}

fn provider(cloud: &FakeCloud, seed: u64, state: &Path) -> AwsProvider<FakeCloud> {
    AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).seeded(seed).with_work_root(&state.join("work"))
}

/// Runs the shop against `cloud` (its journal under `state/lost`, which the scenario
/// then forgets) and kills it at a random virtual instant; then lets creates in flight
/// land. Returns the run id and whether it was killed (some seeds finish first).
async fn killed_run(cloud: &FakeCloud, seed: u64, loaded: &description::Loaded, state: &Path) -> (String, bool) {
    let run_id = format!("r-20261125-000000-{seed:06x}");
    let p = provider(cloud, seed, state);
    let opts = Options {
        run_id: run_id.clone(),
        release: "v2".into(),
        // Kept when it finishes: then only a sweep or `down` removes it.
        destroy: DestroyPolicy::Never,
        cold: false,
        up_only: false,
        state_root: state.join("lost"),
        work_root: state.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
        pins: Default::default(),
        change: None,
        member: None,
        from: None,
        twin: None,
        deploy_twin: false,
        chaos: None,
    };
    let signals = Signals::none();
    let run = Box::pin(lifecycle::run(&p, loaded, &opts, &Silent, &signals));
    let kill_at = Duration::from_secs(seed.wrapping_mul(2_654_435_761) % 2400);
    let killed = tokio::time::timeout(kill_at, run).await.is_err();
    drop(p);
    // Creates in flight when it died answer within a minute.
    tokio::time::sleep(Duration::from_secs(120)).await;
    (run_id, killed)
}

/// What a scenario may leave: nothing — unless the provider doubted rehearse made
/// something (a database restored with deletion protection on, the run killed before
/// it turned it off): that is left alone, and with it the groups it still uses.
/// `Ok(true)`: something was doubted and left.
fn only_the_doubted_left(left: &[String], doubted: &[String]) -> Result<bool, String> {
    if left.is_empty() {
        return Ok(false);
    }
    let explained = |l: &String| {
        doubted.iter().any(|d| l.ends_with(&format!(" {d}"))) || l.starts_with("sg ") || l.starts_with("subnet-group ")
    };
    if doubted.is_empty() || !left.iter().all(explained) {
        return Err(format!("left behind: {left:?} (doubted: {doubted:?})"));
    }
    if !doubted.iter().all(|d| left.iter().any(|l| l.ends_with(&format!(" {d}")))) {
        return Err(format!("a doubted resource was removed: {doubted:?}, left {left:?}"));
    }
    Ok(true)
}

fn no_stages() -> Option<Arc<dyn ObjectStore>> {
    None
}

/// `rehearse down RUN --region R` with the journal lost: the run's tags find what it
/// made; an operator runs it again while it reports leftovers (faults hit teardown
/// too) — the second time from the journal the first one rebuilt.
fn down_scenario(seed: u64, loaded: &description::Loaded, state: &Path) -> Result<(bool, bool), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(seed, Faults::chaos());
        let production = cloud.production();
        let (run_id, killed) = killed_run(&cloud, seed, loaded, state).await;
        let had = !cloud.leftovers().is_empty();
        let p = provider(&cloud, !seed, state);
        let here = state.join("here");
        let signals = Signals::none();
        let opts = DownOptions {
            run_id: &run_id,
            generation: None,
            state_root: &here,
            shared: None,
            stages: &no_stages,
            lost: LostRun {
                provider: rehearse::description::ProviderKind::Aws,
                region: Some("eu-west-1".into()),
                work_dir: None,
            },
            by_marks: format!("rehearse down {run_id} --region eu-west-1"),
            reporter: &Silent,
            signals: &signals,
        };
        let mut complete = false;
        let mut sources = Vec::new();
        let mut doubted: Vec<String> = Vec::new();
        for _ in 0..6 {
            let located = down::locate(Some(&here), &run_id).map_err(|e| e.to_string())?;
            match down::down(&p, located, &opts).await {
                Ok(d) => {
                    if std::env::var("REHEARSE_SEED").is_ok() {
                        for m in &d.doubtful {
                            eprintln!("doubtful {} {}: {:?}", m.kind, m.provider_id, m.doubt);
                        }
                        for s in &d.still_marked {
                            eprintln!("still marked {} {}: {:?}", s.marked.kind, s.marked.provider_id, s.error);
                        }
                        if let Some(t) = &d.teardown {
                            for x in &t.destroyed {
                                eprintln!("destroy {} {}: {:?}", x.kind, x.id, x.error);
                            }
                        }
                    }
                    sources.push(d.source);
                    doubted.extend(d.doubtful.iter().map(|m| m.provider_id.clone()));
                    if d.complete() {
                        complete = true;
                        break;
                    }
                }
                // The listing failed (an outage): the operator tries again.
                Err(e) if !e.refused() => sources.push(Source::Nothing),
                Err(e) => return Err(format!("down refused: {e}")),
            }
        }
        // The first `down` had no journal: it found the run by its tags, or nothing.
        match sources.first() {
            Some(Source::Marks(n)) if had && *n > 0 => {}
            Some(Source::Nothing) if !had => {}
            Some(Source::Nothing) => {} // the listing failed first: the next one found it
            other => return Err(format!("the first down came from {other:?} (something left: {had})")),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        doubted.sort();
        doubted.dedup();
        let left = cloud.leftovers();
        let kept = only_the_doubted_left(&left, &doubted).map_err(|e| format!("{e}; sources {sources:?}"))?;
        if !kept && !complete {
            return Err(format!("nothing left, but down never said complete (sources {sources:?})"));
        }
        let violations = cloud.violations();
        if !violations.is_empty() {
            return Err(format!("violations: {violations:?}"));
        }
        if cloud.production() != production {
            return Err("production changed".into());
        }
        Ok((killed, kept))
    })
}

#[test]
fn down_without_a_journal_removes_what_the_runs_tags_find_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let seeds = seeds(24);
    let n = seeds.len();
    let (mut failures, mut killed, mut kept) = (Vec::new(), 0, 0);
    for seed in seeds {
        match down_scenario(seed, &loaded, &dir.path().join(format!("s{seed}"))) {
            Ok((k, d)) => {
                killed += usize::from(k);
                kept += usize::from(d);
            }
            Err(e) => failures.push(format!(
                "seed {seed}: {e} (rerun: REHEARSE_SEED={seed} cargo test --test scenarios_down_sweep down_)"
            )),
        }
    }
    assert!(failures.is_empty(), "{} failing scenario(s):\n{}", failures.len(), failures.join("\n"));
    if n >= 10 {
        assert!(killed > 0, "no run was killed mid-way");
        assert!(kept < n / 2, "{kept} of {n} left a doubted resource: too few removed completely");
    }
}

/// `rehearse sweep --region R`: before the run's expiry nothing is selected; after it,
/// a dry run removes nothing, and `--yes` removes everything the run left, batched by
/// rank (run again while something is left: faults hit teardown too).
fn sweep_scenario(seed: u64, loaded: &description::Loaded, state: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(seed, Faults::chaos());
        let production = cloud.production();
        let (run_id, _) = killed_run(&cloud, seed, loaded, state).await;
        let before = cloud.leftovers();
        let p = provider(&cloud, !seed, state);
        let signals = Signals::none();
        let lost = LostRun {
            provider: rehearse::description::ProviderKind::Aws,
            region: Some("eu-west-1".into()),
            work_dir: None,
        };
        let now = SweepOptions { min_age: None, environment: None, now: chrono::Utc::now() };
        // Within its TTL, nothing of it is a candidate (listing faults aside).
        if let Ok((sel, _)) = sweep::sweep_marked(&p, &now, &no_stages, None).await {
            if let Some(c) = sel.candidates.first() {
                return Err(format!("swept before its expiry: {c:?}"));
            }
        }
        let later = SweepOptions { now: chrono::Utc::now() + chrono::Duration::days(30), ..now.clone() };
        // Of another environment, nothing either.
        let elsewhere = SweepOptions { environment: Some("not-the-shop".into()), ..later.clone() };
        if let Ok((sel, _)) = sweep::sweep_marked(&p, &elsewhere, &no_stages, None).await {
            if !sel.candidates.is_empty() {
                return Err("swept another environment's resources".into());
            }
        }
        // A dry run lists and removes nothing.
        if let Ok((sel, swept)) = sweep::sweep_marked(&p, &later, &no_stages, None).await {
            if !swept.is_empty() || cloud.leftovers() != before {
                return Err("a dry run removed something".into());
            }
            if sel.candidates.iter().any(|c| c.run_id() != run_id || !matches!(c, Candidate::Marked(_))) {
                return Err(format!("a candidate not of {run_id}: {:?}", sel.candidates));
            }
        }
        let mut rounds = 0;
        let mut doubted: Vec<String> = Vec::new();
        loop {
            rounds += 1;
            let done = sweep::sweep_marked(&p, &later, &no_stages, Some((&lost, &Silent, &signals))).await;
            if let Ok((sel, _)) = &done {
                doubted.extend(sel.kept.iter().filter_map(|k| match k {
                    Kept::Doubtful(m) => Some(m.provider_id.clone()),
                    _ => None,
                }));
            }
            let clear = matches!(&done, Ok((sel, swept)) if sel.candidates.is_empty()
                || swept.iter().all(|s| s.error.is_none()));
            tokio::time::sleep(Duration::from_secs(600)).await;
            if (clear && cloud.leftovers().is_empty()) || rounds == 6 || (clear && !doubted.is_empty()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        doubted.sort();
        doubted.dedup();
        let left = cloud.leftovers();
        only_the_doubted_left(&left, &doubted).map_err(|e| format!("{e} after {rounds} sweep(s)"))?;
        let violations = cloud.violations();
        if !violations.is_empty() {
            return Err(format!("violations: {violations:?}"));
        }
        if cloud.production() != production {
            return Err("production changed".into());
        }
        Ok(())
    })
}

#[test]
fn a_sweep_by_tags_removes_an_expired_runs_resources_only_once_expired() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let mut failures = Vec::new();
    for seed in seeds(24) {
        if let Err(e) = sweep_scenario(seed, &loaded, &dir.path().join(format!("s{seed}"))) {
            failures.push(format!(
                "seed {seed}: {e} (rerun: REHEARSE_SEED={seed} cargo test --test scenarios_down_sweep a_sweep)"
            ));
        }
    }
    assert!(failures.is_empty(), "{} failing scenario(s):\n{}", failures.len(), failures.join("\n"));
}
