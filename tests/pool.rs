//! A database's warm pool on the fault-injecting fake cloud, on tokio's paused clock
//! (restores take the 10–25 minutes the fake draws, boots about a minute): members made
//! as runs of their own and recorded in a fake S3 that loses answers; then twenty runs
//! at once claim from a pool of five — no member twice, fifteen restore as before — and
//! a run from the pool is ready in the time its password takes, not a restore's.
//! Everything torn down leaves nothing, and production is never touched.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rehearse::description::DestroyPolicy;
use rehearse::engine::events::Silent;
use rehearse::engine::lifecycle;
use rehearse::engine::pool::{self as members, State};
use rehearse::engine::store::ObjectStore;
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::FakeCloud;
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};
use rehearse::testkit::pool::{fill, options, provider, realistic, shop_db, Ready};

#[test]
fn twenty_runs_at_once_claim_from_a_pool_of_five_never_the_same_member_twice() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = shop_db(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let loaded = &loaded;
    rt.block_on(async {
        let cloud = FakeCloud::new(7, realistic());
        let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(7, S3Faults::chaos()));
        let production = cloud.production();
        // Five members, made at once, each a run of the database alone, recorded ready.
        let ids: Vec<String> = (0..5).map(|i| format!("r-20261207-040000-{i:06x}")).collect();
        for (id, made) in ids.iter().zip(fill(&cloud, &store, loaded, dir.path(), &ids).await) {
            // The member is the database alone: no release, no service.
            let kinds: Vec<&str> = made.report.resources.iter().map(|r| r.id.as_str()).collect();
            assert!(
                kinds.contains(&"database.db") && !kinds.iter().any(|k| k.starts_with("service.")),
                "{id}: {kinds:?}"
            );
        }
        // Twenty runs at once, each claiming from the pool.
        let started = tokio::time::Instant::now();
        // What `run`, `up` and the server do on a claim: a refill asked for, once a run.
        let refills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = (0..20u64).map(|i| {
            let p = provider(&cloud, i, dir.path()).with_pool_store(store.clone());
            let opts = options(&format!("r-20261207-050000-{i:06x}"), dir.path(), DestroyPolicy::Always, None);
            let refills = refills.clone();
            async move {
                let ready = Ready { start: started, at: std::sync::Mutex::new(None) };
                let refill = members::RefillOnClaim::new(&ready, move || {
                    refills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
                let o = lifecycle::run(&p, loaded, &opts, &refill, &Signals::none()).await.expect("starts");
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
        assert_eq!(refills.load(std::sync::atomic::Ordering::SeqCst), 5, "a refill asked for at each claim");
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
        let loaded = shop_db(dir.path());
        let loaded = &loaded;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (back, killed) = rt.block_on(async {
            let cloud = FakeCloud::new(seed, realistic());
            let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(seed, S3Faults::chaos()));
            let production = cloud.production();
            let ids: Vec<String> = (0..2).map(|i| format!("r-20261207-04{seed:04x}-{i:06x}")).collect();
            fill(&cloud, &store, loaded, dir.path(), &ids).await;
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

/// A pool kept stopped (`keep: stopped`): `pool fill`'s stop leaves its member stopped
/// (only an instance that is verifiably the member); a run claims it, starts it (the
/// minutes RDS takes, drawn by the fake) and its copy is ready once started and
/// secured; the refill is asked for at the claim, once, long before the run ends.
/// Nothing leaks, production is never touched.
#[test]
fn a_member_kept_stopped_is_started_by_its_claim_and_the_refill_starts_at_the_claim() {
    use rehearse::providers::aws::api::RdsApi;
    let dir = tempfile::tempdir().unwrap();
    let loaded = shop_db(dir.path());
    let loaded = &loaded;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let stop_start = realistic().stop_start;
        let cloud = FakeCloud::new(11, realistic());
        let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(11, S3Faults::realistic()));
        let production = cloud.production();
        let member = "r-20261207-040000-00000a".to_string();
        fill(&cloud, &store, loaded, dir.path(), std::slice::from_ref(&member)).await;
        let instance = rehearse::providers::aws::AwsProvider::<()>::rds_id(&member, "db");
        let status = |id: &str| {
            let cloud = cloud.clone();
            let ids = vec![id.to_string()];
            async move { cloud.describe_db_instances(&ids).await.unwrap().first().map(|d| d.status.clone()) }
        };
        // As `pool fill` stops a member of a pool kept stopped.
        let p = provider(&cloud, 1, dir.path());
        p.stop_member("shop-db/db", &member, &instance).await.expect("the member stops");
        assert_eq!(status(&instance).await.as_deref(), Some("stopped"));
        // Never anything that is not the member: production's instance is refused.
        let refused = p.stop_member("shop-db/db", &member, "shop-prod-db").await.unwrap_err();
        assert!(refused.contains("is not pool shop-db/db's member"), "{refused}");

        let run_id = "r-20261207-050000-00000b";
        let started = tokio::time::Instant::now();
        let ready = Ready { start: started, at: std::sync::Mutex::new(None) };
        let refills = Arc::new(std::sync::Mutex::new(Vec::new()));
        let asked = refills.clone();
        let refill = members::RefillOnClaim::new(&ready, move || asked.lock().unwrap().push(started.elapsed()));
        let p = provider(&cloud, 2, dir.path()).with_pool_store(store.clone());
        let opts = options(run_id, dir.path(), DestroyPolicy::Always, None);
        let o = lifecycle::run(&p, loaded, &opts, &refill, &Signals::none()).await.expect("starts");
        let ended = started.elapsed();
        let r = &o.report;
        assert_eq!(r.verdict, rehearse::report::model::Verdict::Passed);
        assert_eq!(r.backups[0].method, "pool");
        let step = r.steps.iter().find(|s| s.resource == "database.db" && s.action == "pool").unwrap();
        let detail = step.detail.clone().unwrap_or_default();
        assert!(detail.contains(&member) && detail.ends_with("kept stopped: started"), "{detail}");
        let starts: Vec<_> =
            cloud.calls().into_iter().filter(|c| c.op == "StartDBInstance" && c.target == instance).collect();
        assert_eq!(starts.len(), 1, "one start of the member");
        // Ready once started (2 to 8 minutes) and secured; the refill asked for at the
        // claim, before any of that.
        let at = ready.at.lock().unwrap().expect("the copy was made ready");
        let refills = refills.lock().unwrap().clone();
        assert_eq!(refills.len(), 1, "the refill is asked for once: {refills:?}");
        assert!(at >= stop_start.0 && at <= stop_start.1 + Duration::from_secs(90), "ready after {at:?}");
        assert!(refills[0] < Duration::from_secs(10) && refills[0] < at && at < ended, "{refills:?} {at:?} {ended:?}");
        println!("kept stopped: ready after {} s (virtual); refill asked at {:?}", at.as_secs(), refills[0]);

        // A second member kept stopped, claimed by a run killed while its member starts:
        // the run's teardown waits out the start (RDS deletes nothing starting) and
        // removes it.
        let second = "r-20261207-040000-00000c".to_string();
        fill(&cloud, &store, loaded, dir.path(), std::slice::from_ref(&second)).await;
        let instance2 = rehearse::providers::aws::AwsProvider::<()>::rds_id(&second, "db");
        provider(&cloud, 3, dir.path()).stop_member("shop-db/db", &second, &instance2).await.expect("stops");
        let killed_run = "r-20261207-050000-00000d";
        let p = provider(&cloud, 4, dir.path()).with_pool_store(store.clone());
        let opts = options(killed_run, dir.path(), DestroyPolicy::Always, None);
        let signals = Signals::none();
        let run = lifecycle::run(&p, loaded, &opts, &Silent, &signals);
        assert!(tokio::time::timeout(Duration::from_secs(60), run).await.is_err(), "the run ended before its kill");
        drop(p);
        assert_eq!(status(&instance2).await.as_deref(), Some("starting"));
        assert!(down(&cloud, dir.path(), killed_run).await, "the killed run's teardown left something");
        assert!(down(&cloud, dir.path(), &second).await);

        // The member's own run torn down: nothing is left, production untouched.
        assert!(down(&cloud, dir.path(), &member).await);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(cloud.leftovers(), Vec::<String>::new());
        assert_eq!(cloud.violations(), Vec::<String>::new());
        assert_eq!(cloud.production(), production);
    });
}

/// A member of a description with two databases is the one database alone: the
/// copies' ingress waits for every database, but the member's plan leaves the other
/// database and its masking out (and no dependency on them is left dangling).
#[test]
fn a_member_of_one_of_two_databases_plans_that_database_alone() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = shop_db(dir.path());
    let text = std::fs::read_to_string(&loaded.path).unwrap();
    let (head, db) = text.split_once("databases:\n").unwrap();
    // Both masked (what needs the copies' ingress and the runner).
    std::fs::write(dir.path().join("masking.sql"), "UPDATE customers SET email = 'x';\n").unwrap();
    let db = db.replace("    name: shop\n", "    name: shop\n    masking: masking.sql\n");
    let orders = db.replacen("  db:\n", "  orders:\n", 1).replace("name: shop\n", "name: orders\n");
    let two = format!("{head}databases:\n{db}{orders}");
    let path = dir.path().join("two.yaml");
    std::fs::write(&path, two).unwrap();
    let loaded = rehearse::description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()));
    let mut plan = rehearse::plan::build(&loaded, Some("v2"), Some("r-20261207-060000-000001")).unwrap();
    let all: Vec<String> = plan.resources.iter().map(|r| r.id.clone()).collect();
    assert!(all.iter().any(|id| id == "database.orders") && all.iter().any(|id| id == "mask.orders"), "{all:?}");
    plan.keep_only_database("db");
    let ids: Vec<&str> = plan.resources.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&"mask.db") && ids.contains(&"network.ingress.databases"), "{ids:?}");
    assert!(!ids.iter().any(|id| id.contains("orders")), "the other database is kept: {ids:?}");
    for r in &plan.resources {
        for d in &r.depends_on {
            assert!(ids.contains(&d.as_str()), "{} waits for {d}, which is not in the plan", r.id);
        }
    }
}

/// A member caught between states (stopping: a fill that gave up waiting for its stop)
/// is left in the pool, not taken and not dropped: the run restores and says why, and
/// the member is claimed once it has stopped.
#[test]
fn a_member_caught_stopping_is_left_in_the_pool() {
    use rehearse::providers::aws::api::RdsApi;
    let dir = tempfile::tempdir().unwrap();
    let loaded = shop_db(dir.path());
    let loaded = &loaded;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(13, realistic());
        let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(13, S3Faults::realistic()));
        let production = cloud.production();
        let member = "r-20261207-040000-0000e1".to_string();
        fill(&cloud, &store, loaded, dir.path(), std::slice::from_ref(&member)).await;
        let instance = rehearse::providers::aws::AwsProvider::<()>::rds_id(&member, "db");
        cloud.stop_db_instance(&instance).await.expect("stopping");
        let run = |run_id: &'static str, seed: u64| {
            let p = provider(&cloud, seed, dir.path()).with_pool_store(store.clone());
            let opts = options(run_id, dir.path(), DestroyPolicy::Always, None);
            async move { lifecycle::run(&p, loaded, &opts, &Silent, &Signals::none()).await.expect("starts") }
        };
        let o = run("r-20261207-050000-0000e2", 5).await;
        let step = o.report.steps.iter().find(|s| s.action == "pool").and_then(|s| s.detail.clone()).unwrap();
        assert_eq!(o.report.backups[0].method, "cold", "{step}");
        assert!(step.ends_with("is stopping; left in the pool"), "{step}");
        let (left, _) = members::members(store.as_ref(), "shop-db", "db").await.unwrap();
        assert_eq!(left.len(), 1);
        assert!(matches!(left[0].member.state, State::Ready { .. }), "{:?}", left[0].member.state);
        // Stopped by now (the restore took its minutes): the next run takes it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let o = run("r-20261207-050000-0000e3", 6).await;
        assert_eq!(o.report.backups[0].method, "pool");
        assert!(down(&cloud, dir.path(), &member).await);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(cloud.leftovers(), Vec::<String>::new());
        assert_eq!(cloud.violations(), Vec::<String>::new());
        assert_eq!(cloud.production(), production);
    });
}
