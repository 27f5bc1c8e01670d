//! A database's warm pool on the fault-injecting fake cloud, on tokio's paused clock
//! (restores take the 10–25 minutes the fake draws, boots about a minute): members made
//! as runs of their own and recorded in a fake S3 that loses answers; then twenty runs
//! at once claim from a pool of five — no member twice, fifteen restore as before — and
//! a run from the pool is ready in the time its password takes, not a restore's.
//! Everything torn down leaves nothing, and production is never touched.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::Silent;
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::pool::{self as members, Member, MemberRun, State};
use rehearse::engine::provider::{Pin, Provider};
use rehearse::engine::store::ObjectStore;
use rehearse::providers::aws::{self, AwsProvider};
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};

fn description(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-db-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    assert!(text.contains("pool:") && !text.contains("masking:"));
    let path = dir.join("shop-db-aws.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn options(run_id: &str, dir: &Path, destroy: DestroyPolicy, member: Option<MemberRun>) -> Options {
    Options {
        run_id: run_id.to_string(),
        release: "v2".into(),
        destroy,
        cold: false,
        up_only: true,
        state_root: dir.join(format!("state-{run_id}")),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
        pins: Default::default(),
        change: None,
        member,
    }
}

/// The virtual instant the run's copy was ready (its `secure` step ended: private, its
/// own password), from the start of the runs.
struct Ready {
    start: tokio::time::Instant,
    at: std::sync::Mutex<Option<Duration>>,
}

impl rehearse::engine::events::Reporter for Ready {
    fn event(&self, ev: rehearse::engine::events::Event) {
        if let rehearse::engine::events::Event::Finished { resource, action, ok: true, .. } = ev {
            if resource == "database.db" && action == "secure" {
                *self.at.lock().unwrap() = Some(self.start.elapsed());
            }
        }
    }
}

/// The fake's realistic timings, with a modification (the new password, the run's
/// group) taking 20 to 60 s as on RDS.
fn realistic() -> Faults {
    Faults { modify: (Duration::from_secs(20), Duration::from_secs(60)), ..Faults::none() }
}

fn provider(cloud: &FakeCloud, seed: u64, dir: &Path) -> AwsProvider<FakeCloud> {
    AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).seeded(seed).with_work_root(&dir.join("work"))
}

#[test]
fn twenty_runs_at_once_claim_from_a_pool_of_five_never_the_same_member_twice() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let loaded = &loaded;
    rt.block_on(async {
        let cloud = FakeCloud::new(7, realistic());
        let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(7, S3Faults::chaos()));
        let production = cloud.production();
        let p = provider(&cloud, 0, dir.path());
        let Some(Pin::Snapshot(snapshot)) = p.pin_sources(loaded).await.unwrap().get("db").cloned() else {
            panic!("no snapshot")
        };

        // Five members, made at once, each a run of the database alone, recorded ready.
        let ids: Vec<String> = (0..5).map(|i| format!("r-20261207-040000-{i:06x}")).collect();
        let makes = ids.iter().map(|id| {
            let p = provider(&cloud, 100, dir.path());
            let member = MemberRun { database: "db".into(), keep_for: Duration::from_secs(24 * 3600) };
            let opts = options(id, dir.path(), DestroyPolicy::Never, Some(member));
            async move { lifecycle::run(&p, loaded, &opts, &Silent, &Signals::none()).await.expect("starts") }
        });
        let made = futures_util::future::join_all(makes).await;
        for (id, m) in ids.iter().zip(&made) {
            assert_eq!(m.report.verdict, rehearse::report::model::Verdict::Passed, "{id}");
            // The member is the database alone: no release, no service.
            let kinds: Vec<&str> = m.report.resources.iter().map(|r| r.id.as_str()).collect();
            assert!(kinds.contains(&"database.db") && !kinds.iter().any(|k| k.starts_with("service.")), "{kinds:?}");
            let record = Member {
                member: id.clone(),
                instance: AwsProvider::<()>::rds_id(id, "db"),
                snapshot: snapshot.clone(),
                taken_at: None,
                masking: None,
                class: "db.t3.medium".into(),
                made_at: chrono::Utc::now(),
                state: State::Ready { ready_at: chrono::Utc::now() },
            };
            members::write(store.as_ref(), &members::key("shop-db", "db", id), &record, None).await.unwrap();
        }

        // (The fake's listings lag a few seconds behind its writes; a fill is long done
        // when runs claim.)
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Twenty runs at once, each claiming from the pool.
        let started = tokio::time::Instant::now();
        let runs = (0..20u64).map(|i| {
            let p = provider(&cloud, i, dir.path()).with_pool_store(store.clone());
            let opts = options(&format!("r-20261207-050000-{i:06x}"), dir.path(), DestroyPolicy::Always, None);
            async move {
                let ready = Ready { start: started, at: std::sync::Mutex::new(None) };
                let o = lifecycle::run(&p, loaded, &opts, &ready, &Signals::none()).await.expect("starts");
                let at = ready.at.lock().unwrap().expect("the copy was made ready");
                (o, at)
            }
        });
        let outcomes = futures_util::future::join_all(runs).await;
        let mut claimed = Vec::new();
        let (mut pooled_ready, mut restored_ready) = (Vec::new(), Vec::new());
        for (o, at) in &outcomes {
            let r = &o.report;
            assert_eq!(r.verdict, rehearse::report::model::Verdict::Passed, "{}", r.run_id);
            let step = |a: &str| r.steps.iter().find(|s| s.resource == "database.db" && s.action == a);
            let pool = step("pool").and_then(|s| s.detail.clone()).unwrap_or_default();
            let ready = at.as_secs();
            match r.backups[0].method.as_str() {
                "pool" => {
                    let m = ids.iter().find(|id| pool.contains(id.as_str())).expect("the pool step names its member");
                    claimed.push(m.clone());
                    assert!(step("restore").is_none(), "{}: restored as well", r.run_id);
                    pooled_ready.push(ready);
                }
                "cold" => {
                    assert!(pool.starts_with("restoring: no member free"), "{}: {pool}", r.run_id);
                    restored_ready.push(ready);
                }
                other => panic!("{}: method {other}", r.run_id),
            }
        }
        claimed.sort();
        let n = claimed.len();
        claimed.dedup();
        assert_eq!((n, claimed.len(), restored_ready.len()), (5, 5, 15), "a member claimed twice, or not five claims");
        // A copy from the pool is ready in the time its group change and password take
        // (the modification's minute, and the poll that sees it end: at most 10 s).
        let max_pooled = *pooled_ready.iter().max().unwrap();
        let min_restored = *restored_ready.iter().min().unwrap();
        assert!(max_pooled <= 75, "a run from the pool took {max_pooled} s to its copy");
        assert!(min_restored >= 10 * 60, "a restore took only {min_restored} s");
        pooled_ready.sort();
        restored_ready.sort();
        println!("ready (virtual seconds): from the pool {pooled_ready:?}; restored {restored_ready:?}");
        // Every member left the pool with its run.
        let (left, forged) = members::members(store.as_ref(), "shop-db", "db").await.unwrap();
        assert!(
            left.is_empty() && forged.is_empty(),
            "records left: {:?}",
            left.iter().map(|r| &r.key).collect::<Vec<_>>()
        );

        // The members' own runs, torn down: their groups go; the instances were the runs'.
        for id in &ids {
            let path = dir.path().join(format!("state-{id}")).join("runs").join(id).join("journal.jsonl");
            let journal = rehearse::engine::journal::Journal::open(&path).unwrap();
            let p = provider(&cloud, 200, dir.path());
            let clock = rehearse::sys::timing::Clock::new();
            let out = rehearse::engine::teardown::run(&p, &journal, &Silent, &Signals::none(), 1, &clock).await;
            assert!(out.complete(), "{id}: its teardown left something");
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(cloud.leftovers(), Vec::<String>::new());
        assert_eq!(cloud.violations(), Vec::<String>::new());
        assert_eq!(cloud.production(), production);
    });
}

/// Makes `n` members of the pool as runs of their own, records them ready, and lets
/// the fake's listings catch up. Their ids.
async fn filled(
    cloud: &FakeCloud,
    store: &Arc<dyn ObjectStore>,
    loaded: &description::Loaded,
    dir: &Path,
    n: usize,
    tag: u64,
) -> Vec<String> {
    let p = provider(cloud, 0, dir);
    let Some(Pin::Snapshot(snapshot)) = p.pin_sources(loaded).await.unwrap().get("db").cloned() else {
        panic!("no snapshot")
    };
    let ids: Vec<String> = (0..n).map(|i| format!("r-20261207-04{tag:04x}-{i:06x}")).collect();
    for id in &ids {
        let p = provider(cloud, 100, dir);
        let member = MemberRun { database: "db".into(), keep_for: Duration::from_secs(24 * 3600) };
        let opts = options(id, dir, DestroyPolicy::Never, Some(member));
        let made = lifecycle::run(&p, loaded, &opts, &Silent, &Signals::none()).await.expect("starts");
        assert_eq!(made.report.verdict, rehearse::report::model::Verdict::Passed, "{id}");
        let record = Member {
            member: id.clone(),
            instance: AwsProvider::<()>::rds_id(id, "db"),
            snapshot: snapshot.clone(),
            taken_at: None,
            masking: None,
            class: "db.t3.medium".into(),
            made_at: chrono::Utc::now(),
            state: State::Ready { ready_at: chrono::Utc::now() },
        };
        members::write(store.as_ref(), &members::key("shop-db", "db", id), &record, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    ids
}

/// Tears a run down from its journal (a fresh provider, as `rehearse down` would be),
/// up to six times while the fake's faults refuse.
async fn down(cloud: &FakeCloud, dir: &Path, run_id: &str) -> bool {
    let path = dir.join(format!("state-{run_id}")).join("runs").join(run_id).join("journal.jsonl");
    let Ok(journal) = rehearse::engine::journal::Journal::open(&path) else { return true };
    let p = provider(cloud, 200, dir);
    let clock = rehearse::sys::timing::Clock::new();
    for _ in 0..6 {
        if rehearse::engine::teardown::run(&p, &journal, &Silent, &Signals::none(), 1, &clock).await.complete() {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    false
}

/// A run claiming from the pool, killed at a random virtual instant (seeded: its first
/// 2.5 s, where the claim, the retag and the group change happen on the fake), then torn
/// down from its journal; the pool settled after the claim's lease: no record is left
/// claimed, a member that was never handed over is back in the pool and still the
/// pool's, one that was is gone with the run; nothing leaks once the members' own runs
/// are torn down, and production is never touched. `REHEARSE_SEED=N` reruns one seed.
#[test]
fn runs_killed_while_claiming_leave_no_claim_and_nothing_behind() {
    let seeds: Vec<u64> = match std::env::var("REHEARSE_SEED") {
        Ok(s) => vec![s.parse().expect("REHEARSE_SEED is a number")],
        Err(_) if std::env::var_os("REHEARSE_TEST_FULL").is_some() => (0..200).collect(),
        Err(_) => (0..50).collect(),
    };
    let (mut handed_back, mut killed_runs) = (0, 0);
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let loaded = description(dir.path());
        let loaded = &loaded;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (back, killed) = rt.block_on(async {
            let cloud = FakeCloud::new(seed, realistic());
            let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(seed, S3Faults::chaos()));
            let production = cloud.production();
            let ids = filled(&cloud, &store, loaded, dir.path(), 2, seed).await;
            let run_id = format!("r-20261207-050000-{seed:06x}");
            let p = provider(&cloud, seed, dir.path()).with_pool_store(store.clone());
            let opts = options(&run_id, dir.path(), DestroyPolicy::Never, None);
            let kill_at = Duration::from_millis(seed.wrapping_mul(2_654_435_761) % 2_500);
            let killed =
                tokio::time::timeout(kill_at, lifecycle::run(&p, loaded, &opts, &Silent, &Signals::none())).await;
            drop(p);
            // What was in flight lands; then `rehearse down` from the journal.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(down(&cloud, dir.path(), &run_id).await, "seed {seed}: the run's teardown left something");
            // After the claim's lease, the pool settled as `pool fill` settles it.
            let later = chrono::Utc::now() + chrono::Duration::minutes(16);
            let (all, forged) = members::members(store.as_ref(), "shop-db", "db").await.unwrap();
            assert!(forged.is_empty());
            let settler = provider(&cloud, 300, dir.path());
            let live = settler.settle_pool(store.as_ref(), all, later).await.unwrap();
            let mut back = 0;
            for r in &live {
                assert!(
                    matches!(r.member.state, State::Ready { .. }),
                    "seed {seed} (killed at {kill_at:?}, finished: {}): {} is {:?}",
                    killed.is_ok(),
                    r.member.member,
                    r.member.state
                );
                back += 1;
            }
            // A member in the pool is its own still: its run's tag, not the killed run's.
            for r in &live {
                let left = cloud.leftovers_by_run();
                let theirs = left.get(&r.member.member).cloned().unwrap_or_default();
                assert!(
                    theirs.iter().any(|l| l.contains(&r.member.instance)),
                    "seed {seed}: {} {left:?}",
                    r.member.member
                );
            }
            for id in &ids {
                assert!(down(&cloud, dir.path(), id).await, "seed {seed}: member {id}'s teardown left something");
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert_eq!(cloud.leftovers(), Vec::<String>::new(), "seed {seed} (killed at {kill_at:?})");
            assert_eq!(cloud.violations(), Vec::<String>::new(), "seed {seed}");
            assert_eq!(cloud.production(), production, "seed {seed}");
            (usize::from(back == 2), usize::from(killed.is_err()))
        });
        handed_back += back;
        killed_runs += killed;
    }
    eprintln!("{killed_runs} runs killed before they finished; {handed_back} left both members in the pool");
    // Some kills come before any claim: both members are still in the pool then.
    assert!(handed_back > 0, "no seed killed the run before its claim");
    assert!(killed_runs > handed_back, "no seed killed the run after its claim");
}
